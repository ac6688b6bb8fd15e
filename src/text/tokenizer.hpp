// Byte-level BPE tokenizer read from a Hugging Face tokenizer.json (Qwen2 family): NFC normalizer,
// added tokens matched before the pre-tokenizer split, the Split regex (PCRE2, Unicode), GPT-2 byte map.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mv {

class Tokenizer {
 public:
  // Throws kNotFound / kInvalidInput, or kUnsupported for a tokenizer.json that is not byte-level BPE.
  static Tokenizer load(const std::filesystem::path& tokenizer_json);
  static Tokenizer from_model_dir(const std::filesystem::path& model_dir);  // <dir>/tokenizer.json
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Same ids as Hugging Face tokenizers' encode(text, add_special_tokens=False): added/special tokens
  // recognised in the text, NFC, regex split, byte-level BPE. Throws kInvalidInput when `text` is not
  // valid UTF-8. Safe to call from several threads at once (the piece cache is shared).
  std::vector<std::int32_t> encode(std::string_view text) const;
  // Invalid UTF-8 in the decoded bytes is replaced by U+FFFD (like errors="replace", maximal subparts).
  // Throws kInvalidInput for an id outside the vocabulary.
  std::string decode(std::span<const std::int32_t> ids, bool skip_special_tokens = false) const;
  // Bytes of one token (no UTF-8 repair) for streaming decoders; empty for unknown ids.
  std::string token_bytes(std::int32_t id) const;

  std::int32_t token_id(std::string_view token) const;  // -1 when absent (regular or added token)
  std::size_t vocab_size() const;                       // highest id + 1
  bool is_special(std::int32_t id) const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The locally cached tokenizer.json fetched by scripts/setup.sh ($MEDVISION_CACHE or ~/.cache/medvision).
std::filesystem::path default_tokenizer_json();

}  // namespace mv
