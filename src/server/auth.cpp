#include "server/auth.hpp"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <sstream>
#include <string>

#include "core/error.hpp"
#include "core/file.hpp"

namespace mv::server {

namespace {
std::array<std::uint8_t, 32> digest(std::string_view key) {
  std::array<std::uint8_t, 32> d{};
  SHA256(reinterpret_cast<const unsigned char*>(key.data()), key.size(), d.data());
  return d;
}
}  // namespace

ApiKeys ApiKeys::load(const std::filesystem::path& file) {
  const std::string text = read_file(file);
  ApiKeys keys;
  std::istringstream in(text);
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const auto first = line.find_first_not_of(" \t");
    if (first == std::string::npos || line[first] == '#') continue;
    const auto last = line.find_last_not_of(" \t");
    const std::string key = line.substr(first, last - first + 1);
    if (key.find_first_of(" \t") != std::string::npos)
      fail(Errc::kInvalidInput, "{}:{}: an API key must not contain spaces", file.string(), number);
    keys.digests_.push_back(digest(key));
  }
  if (keys.digests_.empty()) fail(Errc::kInvalidInput, "{}: no API key in the file", file.string());
  return keys;
}

ApiKeys ApiKeys::from_keys(const std::vector<std::string_view>& list) {
  ApiKeys keys;
  for (auto k : list)
    if (!k.empty()) keys.digests_.push_back(digest(k));
  return keys;
}

bool ApiKeys::accepts(std::string_view key) const {
  if (key.empty()) return false;
  const auto d = digest(key);
  bool ok = false;
  for (const auto& k : digests_) ok |= CRYPTO_memcmp(k.data(), d.data(), d.size()) == 0;  // no early exit
  return ok;
}

}  // namespace mv::server
