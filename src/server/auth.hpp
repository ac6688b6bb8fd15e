// API keys: a file with one key per line ('#' starts a comment, blank lines are skipped). Clients send
// "Authorization: Bearer KEY" or "X-API-Key: KEY". Only SHA-256 digests are kept in memory and they are
// compared in constant time.
#pragma once
#include <array>
#include <cstdint>
#include <filesystem>
#include <string_view>
#include <vector>

namespace mv::server {

class ApiKeys {
 public:
  ApiKeys() = default;
  // Throws kNotFound / kInvalidInput (a file with no key, a key with spaces) naming the file and line.
  static ApiKeys load(const std::filesystem::path& file);
  static ApiKeys from_keys(const std::vector<std::string_view>& keys);

  bool enabled() const { return !digests_.empty(); }
  std::size_t size() const { return digests_.size(); }
  bool accepts(std::string_view key) const;

 private:
  std::vector<std::array<std::uint8_t, 32>> digests_;
};

}  // namespace mv::server
