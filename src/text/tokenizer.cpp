// Byte-level BPE tokenizer (Qwen2 family) read from a Hugging Face tokenizer.json.
//
// Pipeline of encode(), mirroring the `tokenizers` library:
//   1. added tokens whose `normalized` flag is false are found in the raw text (leftmost match, longest
//      at that position, like aho-corasick's LeftmostLongest), honouring single_word / lstrip / rstrip;
//   2. every other segment is NFC-normalized, then searched for the added tokens with normalized=true;
//   3. the remaining pieces are split by the pre-tokenizer regex (behaviour Isolated: matches and gaps
//      both become pieces), each piece's bytes are mapped through the GPT-2 byte alphabet and run
//      through the rank-based BPE merge loop (cached per piece).
#include "text/tokenizer.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <unordered_map>
#include <utility>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"

namespace mv {

namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------------
// UTF-8 helpers

// What Unicode table 3-7 allows after the lead byte `c` of a multi-byte sequence: the sequence's length
// (0 when `c` cannot start one) and the range of its second byte (later bytes are 0x80..0xBF).
struct Utf8Lead {
  std::size_t len = 0;
  unsigned lo = 0x80, hi = 0xBF;
};

Utf8Lead utf8_lead(unsigned c) {
  if (c >= 0xC2 && c <= 0xDF) return {2, 0x80, 0xBF};
  if (c >= 0xE0 && c <= 0xEF) return {3, c == 0xE0 ? 0xA0u : 0x80u, c == 0xED ? 0x9Fu : 0xBFu};
  if (c >= 0xF0 && c <= 0xF4) return {4, c == 0xF0 ? 0x90u : 0x80u, c == 0xF4 ? 0x8Fu : 0xBFu};
  return {};
}

// Length of the well-formed UTF-8 sequence at s[i] (Unicode table 3-7), or 0 when it is ill-formed.
std::size_t utf8_sequence_length(std::string_view s, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const std::size_t n = s.size();
  const unsigned c = b(i);
  if (c < 0x80) return 1;
  const Utf8Lead lead = utf8_lead(c);
  const std::size_t len = lead.len;
  if (len == 0 || i + len > n) return 0;
  if (b(i + 1) < lead.lo || b(i + 1) > lead.hi) return 0;
  for (std::size_t k = 2; k < len; ++k) {
    if (b(i + k) < 0x80 || b(i + k) > 0xBF) return 0;
  }
  return len;
}

// Offset of the first ill-formed byte, or npos when the whole string is valid UTF-8.
std::size_t find_invalid_utf8(std::string_view s) {
  std::size_t i = 0;
  const std::size_t n = s.size();
  while (i < n) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= n) {
      std::uint64_t w;
      std::memcpy(&w, s.data() + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    const std::size_t len = utf8_sequence_length(s, i);
    if (len == 0) return i;
    i += len;
  }
  return std::string_view::npos;
}

// Decodes the code point at s[i] of a string already known to be valid UTF-8; advances i.
char32_t next_code_point(std::string_view s, std::size_t& i) {
  const auto b = [&](std::size_t k) { return static_cast<char32_t>(static_cast<unsigned char>(s[k])); };
  const char32_t c = b(i);
  if (c < 0x80) {
    i += 1;
    return c;
  }
  if (c < 0xE0) {
    const char32_t cp = ((c & 0x1F) << 6) | (b(i + 1) & 0x3F);
    i += 2;
    return cp;
  }
  if (c < 0xF0) {
    const char32_t cp = ((c & 0x0F) << 12) | ((b(i + 1) & 0x3F) << 6) | (b(i + 2) & 0x3F);
    i += 3;
    return cp;
  }
  const char32_t cp =
      ((c & 0x07) << 18) | ((b(i + 1) & 0x3F) << 12) | ((b(i + 2) & 0x3F) << 6) | (b(i + 3) & 0x3F);
  i += 4;
  return cp;
}

// The code point that ends at s[end-1] (valid UTF-8); its start is stored in *start.
char32_t prev_code_point(std::string_view s, std::size_t end, std::size_t* start) {
  std::size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  *start = i;
  std::size_t j = i;
  return next_code_point(s, j);
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Unicode White_Space (what `\s` means in the Rust regex crate and in Oniguruma).
bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// `\w` of the Rust regex crate: alphabetic, marks, decimal numbers, connector punctuation, joiners.
bool is_word_char(char32_t c) {
  if (c == 0x200C || c == 0x200D) return true;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

// ---------------------------------------------------------------------------------------------------
// The GPT-2 byte <-> unicode alphabet: printable bytes map to themselves, the others to U+0100.. in order.

struct ByteAlphabet {
  std::array<char32_t, 256> byte_to_cp{};
  std::array<std::int16_t, 324> cp_to_byte{};  // -1 when the code point is not in the alphabet

  ByteAlphabet() {
    cp_to_byte.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      byte_to_cp[b] = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + extra++);
      cp_to_byte[byte_to_cp[b]] = static_cast<std::int16_t>(b);
    }
  }

  // Bytes of a byte-level token string; nullopt when some character is outside the alphabet.
  std::optional<std::string> to_bytes(std::string_view token) const {
    if (find_invalid_utf8(token) != std::string_view::npos) return std::nullopt;
    std::string out;
    out.reserve(token.size());
    std::size_t i = 0;
    while (i < token.size()) {
      const char32_t cp = next_code_point(token, i);
      if (cp >= cp_to_byte.size() || cp_to_byte[cp] < 0) return std::nullopt;
      out.push_back(static_cast<char>(cp_to_byte[cp]));
    }
    return out;
  }
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

// ---------------------------------------------------------------------------------------------------
// Added tokens: a byte trie, searched leftmost-first / longest-at-that-position.

struct AddedToken {
  std::int32_t id = -1;
  std::string content;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

class AddedTokenMatcher {
 public:
  struct Match {
    std::size_t start = 0, end = 0;
    std::int32_t token = -1;  // index into the tokens passed to add()
  };

  void add(std::string_view pattern, std::int32_t token) {
    if (pattern.empty()) return;
    std::int32_t node = 0;
    for (const char ch : pattern) {
      const auto byte = static_cast<unsigned char>(ch);
      std::int32_t child = find_child(node, byte);
      if (child < 0) {
        child = static_cast<std::int32_t>(nodes_.size());
        nodes_[node].children.emplace_back(byte, child);
        nodes_.emplace_back();
      }
      node = child;
    }
    if (nodes_[node].token < 0) nodes_[node].token = token;  // first definition wins
    first_byte_[static_cast<unsigned char>(pattern[0])] = true;
    empty_ = false;
  }

  bool empty() const { return empty_; }

  // First match starting at or after `from`; the longest one among those starting there.
  std::optional<Match> find(std::string_view text, std::size_t from) const {
    if (empty_) return std::nullopt;
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    const std::size_t n = text.size();
    for (std::size_t i = from; i < n; ++i) {
      if (!first_byte_[p[i]]) continue;
      std::int32_t node = 0;
      Match best;
      for (std::size_t j = i; j < n; ++j) {
        node = find_child(node, p[j]);
        if (node < 0) break;
        if (nodes_[node].token >= 0) {
          best.start = i;
          best.end = j + 1;
          best.token = nodes_[node].token;
        }
      }
      if (best.token >= 0) return best;
    }
    return std::nullopt;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, std::int32_t>> children;
    std::int32_t token = -1;
  };

  std::int32_t find_child(std::int32_t node, unsigned char byte) const {
    for (const auto& [b, child] : nodes_[node].children) {
      if (b == byte) return child;
    }
    return -1;
  }

  std::vector<Node> nodes_ = std::vector<Node>(1);
  std::array<bool, 256> first_byte_{};
  bool empty_ = true;
};

// ---------------------------------------------------------------------------------------------------
// The pre-tokenizer regex (PCRE2, Unicode). `\s`/`\S` are rewritten to the White_Space property so that
// they mean what they mean in Oniguruma (PCRE2's \s also matches U+180E).

std::string translate_regex(std::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 32);
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[i + 1];
      if (e == 's') {
        out += "\\p{White_Space}";
      } else if (e == 'S') {
        out += "\\P{White_Space}";
      } else {
        out += c;
        out += e;
      }
      ++i;
    } else {
      out += c;
    }
  }
  return out;
}

struct Pcre2CodeDeleter {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};

// Per-thread match state: match data for one pair of offsets and a JIT stack large enough for long
// whitespace or symbol runs.
struct MatchState {
  pcre2_match_data* data = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
  pcre2_match_context* context = nullptr;

  MatchState() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (context && jit_stack) pcre2_jit_stack_assign(context, nullptr, jit_stack);
  }
  ~MatchState() {
    if (data) pcre2_match_data_free(data);
    if (context) pcre2_match_context_free(context);
    if (jit_stack) pcre2_jit_stack_free(jit_stack);
  }
  MatchState(const MatchState&) = delete;
  MatchState& operator=(const MatchState&) = delete;
};

MatchState& thread_match_state() {
  thread_local MatchState state;
  if (!state.data || !state.context) fail(Errc::kInternal, "tokenizer: out of memory for regex match data");
  return state;
}

// ---------------------------------------------------------------------------------------------------
// BPE piece cache: sharded, bounded hash maps (a full shard is cleared), safe for concurrent encode().

// A fast 64-bit hash for short byte strings (multiply-xorshift over 8-byte words).
std::uint64_t piece_hash(std::string_view s) noexcept {
  constexpr std::uint64_t kMul = 0x9E3779B97F4A7C15ull;
  std::uint64_t h = 0x243F6A8885A308D3ull ^ (s.size() * kMul);
  const char* p = s.data();
  std::size_t n = s.size();
  while (n >= 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * kMul;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  if (n > 0) {
    std::uint64_t w = 0;
    std::memcpy(&w, p, n);
    h = (h ^ w) * kMul;
    h ^= h >> 29;
  }
  h *= 0xBF58476D1CE4E5B9ull;
  return h ^ (h >> 32);
}

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return piece_hash(s); }
};

class PieceCache {
 public:
  static constexpr std::size_t kShards = 16;
  static constexpr std::size_t kMaxEntriesPerShard = 8192;
  static constexpr std::size_t kMaxKeyBytes = 128;

  // Appends the cached ids of `piece` to `out`; false when absent.
  bool lookup(std::string_view piece, std::size_t hash, std::vector<std::int32_t>& out) {
    Shard& shard = shards_[hash % kShards];
    std::lock_guard<std::mutex> lock(shard.mutex);
    const auto it = shard.map.find(piece);
    if (it == shard.map.end()) return false;
    out.insert(out.end(), it->second.begin(), it->second.end());
    return true;
  }

  void insert(std::string_view piece, std::size_t hash, std::span<const std::int32_t> ids) {
    if (piece.size() > kMaxKeyBytes) return;
    Shard& shard = shards_[hash % kShards];
    std::lock_guard<std::mutex> lock(shard.mutex);
    if (shard.map.size() >= kMaxEntriesPerShard) shard.map.clear();
    shard.map.emplace(std::string(piece), std::vector<std::int32_t>(ids.begin(), ids.end()));
  }

 private:
  struct Shard {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<std::int32_t>, StringHash, std::equal_to<>> map;
  };
  std::array<Shard, kShards> shards_;
};

// Per-thread, direct-mapped first-level cache in front of PieceCache: no lock, no allocation on a hit.
// Entries are tagged with the owning tokenizer's serial number, so several tokenizers can share a thread.
class ThreadPieceCache {
 public:
  static constexpr std::size_t kEntries = 8192;  // power of two
  static constexpr std::size_t kMaxKey = 23;
  static constexpr std::size_t kMaxIds = 8;

  // Appends the ids of `piece` to `out` when cached; false otherwise.
  bool lookup(std::uint64_t owner, std::string_view piece, std::uint64_t hash,
              std::vector<std::int32_t>& out) const {
    const Entry& e = entries_[hash & (kEntries - 1)];
    if (e.hash != hash || e.owner != owner || e.key_len != piece.size() ||
        std::memcmp(e.key, piece.data(), piece.size()) != 0) {
      return false;
    }
    out.insert(out.end(), e.ids, e.ids + e.n_ids);
    return true;
  }

  void insert(std::uint64_t owner, std::string_view piece, std::uint64_t hash,
              std::span<const std::int32_t> ids) {
    if (piece.size() > kMaxKey || ids.size() > kMaxIds) return;
    Entry& e = entries_[hash & (kEntries - 1)];
    e.hash = hash;
    e.owner = owner;
    e.key_len = static_cast<std::uint8_t>(piece.size());
    e.n_ids = static_cast<std::uint8_t>(ids.size());
    std::memcpy(e.key, piece.data(), piece.size());
    std::copy(ids.begin(), ids.end(), e.ids);
  }

 private:
  struct Entry {
    std::uint64_t hash = 0;
    std::uint64_t owner = 0;  // 0: empty
    std::uint8_t key_len = 0;
    std::uint8_t n_ids = 0;
    char key[kMaxKey] = {};
    std::int32_t ids[kMaxIds] = {};
  };
  std::vector<Entry> entries_ = std::vector<Entry>(kEntries);
};

ThreadPieceCache& thread_piece_cache() {
  thread_local std::unique_ptr<ThreadPieceCache> cache = std::make_unique<ThreadPieceCache>();
  return *cache;
}

std::atomic<std::uint64_t> g_tokenizer_serial{0};

// Scratch buffers of the merge loop, reused across pieces on one thread.
struct BpeScratch {
  struct Symbol {
    std::int32_t id;
    std::int32_t prev;
    std::int32_t next;
    std::int32_t len;  // bytes covered; 0 once merged into its left neighbour
  };
  struct Candidate {
    std::int32_t rank;
    std::int32_t pos;
    std::int32_t new_id;
  };
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
  std::vector<std::int32_t> ids;
};

BpeScratch& thread_bpe_scratch() {
  thread_local BpeScratch scratch;
  return scratch;
}

std::uint64_t pair_key(std::int32_t a, std::int32_t b) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
}

// SAX reader for tokenizer.json: model.vocab and model.merges (hundreds of thousands of entries) are
// streamed into flat vectors instead of a DOM; everything else is built as a DOM by nlohmann's own builder
// (where model.vocab / model.merges appear as an empty object / array).
class TokenizerJsonReader {
 public:
  using number_integer_t = json::number_integer_t;
  using number_unsigned_t = json::number_unsigned_t;
  using number_float_t = json::number_float_t;
  using string_t = json::string_t;
  using binary_t = json::binary_t;

  json doc;
  std::vector<std::pair<std::string, std::int64_t>> vocab;
  std::vector<std::pair<std::string, std::string>> merges;
  std::string error;  // set when the structure of vocab/merges is wrong

  bool null() { return zone() == Zone::kNone ? dom_.null() : bad("null"); }
  bool boolean(bool v) { return zone() == Zone::kNone ? dom_.boolean(v) : bad("a boolean"); }
  bool number_integer(number_integer_t v) { return integer(v); }
  bool number_unsigned(number_unsigned_t v) {
    return integer(v > static_cast<number_unsigned_t>(INT64_MAX) ? INT64_MAX : static_cast<std::int64_t>(v));
  }
  bool number_float(number_float_t v, const string_t& s) {
    return zone() == Zone::kNone ? dom_.number_float(v, s) : bad("a number that is not an integer");
  }
  bool binary(binary_t& v) { return zone() == Zone::kNone ? dom_.binary(v) : bad("binary data"); }
  bool string(string_t& v) {
    switch (zone()) {
      case Zone::kNone:
        return dom_.string(v);
      case Zone::kVocab:
        return bad("a string where a token id was expected");
      case Zone::kMerges: {
        const auto space = v.find(' ', 1);
        if (space == std::string::npos) return bad("a merge that is not two tokens separated by a space");
        merges.emplace_back(v.substr(0, space), v.substr(space + 1));
        return true;
      }
      case Zone::kMergePair:
        pair_.push_back(std::move(v));
        return true;
    }
    return false;
  }
  bool start_object(std::size_t n) {
    if (zone() != Zone::kNone) return bad("an object");
    stack_.push_back({true, {}});
    return dom_.start_object(n);
  }
  bool key(string_t& k) {
    if (zone() == Zone::kVocab) {
      pending_key_ = std::move(k);
      return true;
    }
    stack_.back().key = k;
    return dom_.key(k);
  }
  bool end_object() {
    stack_.pop_back();
    return dom_.end_object();
  }
  bool start_array(std::size_t n) {
    const Zone z = zone();
    if (z == Zone::kMerges) {
      stack_.push_back({false, {}});
      pair_.clear();
      return true;
    }
    if (z != Zone::kNone) return bad("an array");
    stack_.push_back({false, {}});
    return dom_.start_array(n);
  }
  bool end_array() {
    if (zone() == Zone::kMergePair) {
      stack_.pop_back();
      if (pair_.size() != 2) return bad("a merge that is not a pair [a, b]");
      merges.emplace_back(std::move(pair_[0]), std::move(pair_[1]));
      return true;
    }
    stack_.pop_back();
    return dom_.end_array();
  }
  bool parse_error(std::size_t position, const std::string& token, const nlohmann::detail::exception& e) {
    error = fmt::format("not valid JSON at byte {}: {}", position, e.what());
    return false;
  }

 private:
  enum class Zone { kNone, kVocab, kMerges, kMergePair };
  struct Frame {
    bool object;
    std::string key;
  };

  Zone zone() const {
    const std::size_t n = stack_.size();
    if (n < 3 || !stack_[0].object || stack_[0].key != "model" || !stack_[1].object) return Zone::kNone;
    if (stack_[1].key == "vocab" && n == 3 && stack_[2].object) return Zone::kVocab;
    if (stack_[1].key == "merges" && !stack_[2].object) {
      if (n == 3) return Zone::kMerges;
      if (n == 4 && !stack_[3].object) return Zone::kMergePair;
    }
    return Zone::kNone;
  }
  bool integer(std::int64_t v) {
    switch (zone()) {
      case Zone::kNone:
        return dom_.number_integer(v);
      case Zone::kVocab:
        vocab.emplace_back(std::move(pending_key_), v);
        return true;
      default:
        return bad("a number inside model.merges");
    }
  }
  bool bad(const char* what) {
    error = fmt::format("unexpected {} in {}", what, zone() == Zone::kVocab ? "model.vocab" : "model.merges");
    return false;
  }

  nlohmann::detail::json_sax_dom_parser<json> dom_{doc, false};
  std::vector<Frame> stack_;
  std::string pending_key_;
  std::vector<std::string> pair_;
};

const json* find_member(const json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------

struct Tokenizer::Impl {
  std::string source;  // path, for error messages

  // Vocabulary.
  std::unordered_map<std::string, std::int32_t, StringHash, std::equal_to<>> token_to_id;  // file form
  std::vector<std::string> id_bytes;  // decoded bytes per id
  std::vector<std::uint8_t> id_kind;  // 0 none, 1 model token, 2 added token, 3 special added token
  std::array<std::int32_t, 256> byte_id{};
  std::unordered_map<std::uint64_t, std::pair<std::int32_t, std::int32_t>> merges;  // -> (rank, new id)

  // Added tokens.
  std::vector<AddedToken> added;
  AddedTokenMatcher raw_matcher;         // normalized == false: matched in the raw text
  AddedTokenMatcher normalized_matcher;  // normalized == true: matched in the NFC text

  bool nfc = false;
  std::unique_ptr<pcre2_code, Pcre2CodeDeleter> split_regex;
  bool split_jit = false;

  mutable PieceCache cache;
  std::uint64_t serial = ++g_tokenizer_serial;  // tags this tokenizer's entries in the thread caches

  // --- encode stages ---

  void encode_raw(std::string_view text, std::vector<std::int32_t>& out) const;
  void encode_normalized(std::string_view text, std::vector<std::int32_t>& out) const;
  void split_and_bpe(std::string_view text, std::vector<std::int32_t>& out) const;
  void bpe(std::string_view piece, std::vector<std::int32_t>& out) const;
  void bpe_uncached(std::string_view piece, std::vector<std::int32_t>& out) const;

  template <typename Segment, typename Token>
  void split_added(std::string_view text, const AddedTokenMatcher& matcher, Segment&& on_segment,
                   Token&& on_token) const;
};

// Splits `text` on the added tokens of `matcher` (the rules of tokenizers' AddedVocabulary::find_matches).
template <typename Segment, typename Token>
void Tokenizer::Impl::split_added(std::string_view text, const AddedTokenMatcher& matcher,
                                  Segment&& on_segment, Token&& on_token) const {
  std::size_t emitted = 0;  // end of what was already handed out
  std::size_t search = 0;   // where the trie search resumes (the end of the previous raw match)
  while (search < text.size()) {
    const auto m = matcher.find(text, search);
    if (!m) break;
    search = m->end;
    const AddedToken& tok = added[static_cast<std::size_t>(m->token)];
    std::size_t start = m->start, stop = m->end;
    if (tok.single_word) {
      bool start_ok = true, stop_ok = true;
      if (start > 0) {
        std::size_t s;
        start_ok = !is_word_char(prev_code_point(text, start, &s));
      }
      if (stop < text.size()) {
        std::size_t i = stop;
        stop_ok = !is_word_char(next_code_point(text, i));
      }
      if (!start_ok || !stop_ok) continue;
    }
    if (tok.lstrip) {
      std::size_t s = start;
      while (s > 0) {
        std::size_t prev_start;
        if (!is_white_space(prev_code_point(text, s, &prev_start))) break;
        s = prev_start;
      }
      start = std::max(s, emitted);
    }
    if (tok.rstrip) {
      std::size_t i = stop;
      while (i < text.size()) {
        std::size_t j = i;
        if (!is_white_space(next_code_point(text, j))) break;
        i = j;
      }
      stop = i;
    }
    start = std::max(start, emitted);  // never hand out the same bytes twice
    if (emitted < start) on_segment(text.substr(emitted, start - emitted));
    on_token(tok.id);
    emitted = std::max(emitted, stop);
  }
  if (emitted < text.size()) on_segment(text.substr(emitted));
}

void Tokenizer::Impl::encode_raw(std::string_view text, std::vector<std::int32_t>& out) const {
  split_added(
      text, raw_matcher, [&](std::string_view segment) { encode_normalized(segment, out); },
      [&](std::int32_t id) { out.push_back(id); });
}

void Tokenizer::Impl::encode_normalized(std::string_view segment, std::vector<std::int32_t>& out) const {
  std::string normalized;
  std::string_view text = segment;
  if (nfc) {
    // Only code points outside ASCII can change under NFC, and an ASCII character is a safe boundary
    // (canonical class 0, never the second half of a composition), so each run of non-ASCII bytes is
    // normalized together with the one character before it. The text is copied only from the first run
    // that NFC actually changes.
    std::size_t i = 0;
    const std::size_t n = segment.size();
    bool changed = false;
    std::size_t copied = 0;  // segment[0, copied) is already in `normalized` (when changed)
    while (i < n) {
      if (static_cast<unsigned char>(segment[i]) < 0x80) {
        ++i;
        continue;
      }
      std::size_t run_start = i;
      while (i < n && static_cast<unsigned char>(segment[i]) >= 0x80) ++i;
      if (run_start > 0) --run_start;  // include the preceding ASCII character
      utf8proc_uint8_t* mapped = nullptr;
      const auto len = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(segment.data() + run_start),
                                    static_cast<utf8proc_ssize_t>(i - run_start), &mapped,
                                    static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
      if (len < 0) {
        std::free(mapped);
        fail(Errc::kInvalidInput, "tokenizer: NFC normalization failed: {}", utf8proc_errmsg(len));
      }
      const std::string_view run = segment.substr(run_start, i - run_start);
      const std::string_view nfc_run(reinterpret_cast<const char*>(mapped), static_cast<std::size_t>(len));
      if (changed || nfc_run != run) {
        if (!changed) {
          normalized.reserve(n + 16);
          changed = true;
        }
        normalized.append(segment.substr(copied, run_start - copied));
        normalized.append(nfc_run);
        copied = i;
      }
      std::free(mapped);
    }
    if (changed) {
      normalized.append(segment.substr(copied));
      text = normalized;
    }
  }
  if (normalized_matcher.empty()) {
    split_and_bpe(text, out);
    return;
  }
  split_added(
      text, normalized_matcher, [&](std::string_view piece) { split_and_bpe(piece, out); },
      [&](std::int32_t id) { out.push_back(id); });
}

void Tokenizer::Impl::split_and_bpe(std::string_view text, std::vector<std::int32_t>& out) const {
  if (text.empty()) return;
  if (!split_regex) {
    bpe(text, out);
    return;
  }
  MatchState& st = thread_match_state();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const std::size_t n = text.size();
  std::size_t pos = 0;   // start of the next search
  std::size_t done = 0;  // end of what was already tokenized
  while (pos < n) {
    int rc;
    if (split_jit) {
      rc = pcre2_jit_match(split_regex.get(), subject, n, pos, PCRE2_NO_UTF_CHECK, st.data, st.context);
      if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {  // e.g. JIT stack exhausted: retry interpreted
        rc = pcre2_match(split_regex.get(), subject, n, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, st.data,
                         st.context);
      }
    } else {
      rc = pcre2_match(split_regex.get(), subject, n, pos, PCRE2_NO_UTF_CHECK, st.data, st.context);
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      fail(Errc::kInvalidInput, "tokenizer: pre-tokenizer regex failed at byte {} of a {}-byte segment: {}",
           pos, n, reinterpret_cast<const char*>(message));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.data);
    const std::size_t ms = ov[0], me = ov[1];
    if (me == ms) {  // empty match: step over one character
      std::size_t i = ms;
      if (i >= n) break;
      next_code_point(text, i);
      pos = i;
      continue;
    }
    if (ms > done) bpe(text.substr(done, ms - done), out);
    bpe(text.substr(ms, me - ms), out);
    done = me;
    pos = me;
  }
  if (done < n) bpe(text.substr(done), out);
}

void Tokenizer::Impl::bpe(std::string_view piece, std::vector<std::int32_t>& out) const {
  if (piece.size() == 1) {
    const std::int32_t id = byte_id[static_cast<unsigned char>(piece[0])];
    if (id >= 0) out.push_back(id);
    return;
  }
  const std::uint64_t hash = piece_hash(piece);
  ThreadPieceCache& local = thread_piece_cache();
  if (local.lookup(serial, piece, hash, out)) return;
  const std::size_t before = out.size();
  if (!cache.lookup(piece, hash, out)) {
    bpe_uncached(piece, out);
    cache.insert(piece, hash, std::span<const std::int32_t>(out.data() + before, out.size() - before));
  }
  local.insert(serial, piece, hash, std::span<const std::int32_t>(out.data() + before, out.size() - before));
}

// The merge loop of tokenizers' BPE (Word::merge_all): a min-heap of candidate merges ordered by rank
// then position; a popped candidate is applied when its pair still yields the same merged token.
void Tokenizer::Impl::bpe_uncached(std::string_view piece, std::vector<std::int32_t>& out) const {
  BpeScratch& sc = thread_bpe_scratch();
  auto& syms = sc.symbols;
  auto& heap = sc.heap;
  syms.clear();
  heap.clear();
  const auto n = static_cast<std::int32_t>(piece.size());
  for (std::int32_t i = 0; i < n; ++i) {
    syms.push_back({byte_id[static_cast<unsigned char>(piece[static_cast<std::size_t>(i)])], i - 1,
                    i + 1 < n ? i + 1 : -1, 1});
  }
  const auto worse = [](const BpeScratch::Candidate& a, const BpeScratch::Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  const auto push = [&](std::int32_t pos, std::int32_t left, std::int32_t right) {
    if (left < 0 || right < 0) return;
    const auto it = merges.find(pair_key(left, right));
    if (it == merges.end()) return;
    heap.push_back({it->second.first, pos, it->second.second});
    std::push_heap(heap.begin(), heap.end(), worse);
  };
  for (std::int32_t i = 0; i + 1 < n; ++i) push(i, syms[i].id, syms[i + 1].id);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), worse);
    const BpeScratch::Candidate top = heap.back();
    heap.pop_back();
    auto& cur = syms[static_cast<std::size_t>(top.pos)];
    if (cur.len == 0 || cur.next < 0) continue;
    const std::int32_t next = cur.next;
    auto& right = syms[static_cast<std::size_t>(next)];
    if (cur.id < 0 || right.id < 0) continue;
    const auto it = merges.find(pair_key(cur.id, right.id));
    if (it == merges.end() || it->second.second != top.new_id) continue;
    cur.id = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    right.len = 0;
    if (cur.next >= 0) syms[static_cast<std::size_t>(cur.next)].prev = top.pos;
    if (cur.prev >= 0) push(cur.prev, syms[static_cast<std::size_t>(cur.prev)].id, cur.id);
    if (cur.next >= 0) push(top.pos, cur.id, syms[static_cast<std::size_t>(cur.next)].id);
  }
  for (std::int32_t i = 0; i >= 0 && i < n; i = syms[static_cast<std::size_t>(i)].next) {
    if (syms[static_cast<std::size_t>(i)].id >= 0) out.push_back(syms[static_cast<std::size_t>(i)].id);
  }
}

// ---------------------------------------------------------------------------------------------------
// Loading

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_model_dir(const std::filesystem::path& model_dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(model_dir, ec)) {
    fail(Errc::kNotFound, "{}: model directory does not exist", model_dir.string());
  }
  const auto path = model_dir / "tokenizer.json";
  if (!std::filesystem::exists(path, ec)) {
    fail(Errc::kNotFound, "{}: no tokenizer.json in the model directory", model_dir.string());
  }
  return load(path);
}

Tokenizer Tokenizer::load(const std::filesystem::path& tokenizer_json) {
  const std::string where = tokenizer_json.string();
  TokenizerJsonReader reader;
  {
    const std::string text = read_file(tokenizer_json);
    if (!json::sax_parse(text, &reader) || !reader.error.empty()) {
      fail(Errc::kInvalidInput, "{}: {}", where, reader.error.empty() ? "not valid JSON" : reader.error);
    }
  }
  const json& doc = reader.doc;
  if (!doc.is_object()) fail(Errc::kInvalidInput, "{}: the top level is not a JSON object", where);

  auto impl = std::make_unique<Impl>();
  impl->source = where;
  const ByteAlphabet& alphabet = byte_alphabet();

  try {
    // --- model ---
    const json* model = find_member(doc, "model");
    if (!model || !model->is_object()) fail(Errc::kInvalidInput, "{}: missing \"model\" object", where);
    if (const json* type = find_member(*model, "type"); type && type->get<std::string>() != "BPE") {
      fail(Errc::kUnsupported, "{}: model type \"{}\" is not supported (only BPE)", where,
           type->get<std::string>());
    }
    if (const json* dropout = find_member(*model, "dropout"); dropout && dropout->get<double>() > 0.0) {
      fail(Errc::kUnsupported, "{}: BPE dropout is not supported", where);
    }
    if (const json* bf = find_member(*model, "byte_fallback"); bf && bf->get<bool>()) {
      fail(Errc::kUnsupported, "{}: BPE byte_fallback is not supported", where);
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (const json* v = find_member(*model, key); v && !v->get<std::string>().empty()) {
        fail(Errc::kUnsupported, "{}: BPE {} is not supported", where, key);
      }
    }
    const json* vocab = find_member(*model, "vocab");
    if (!vocab || !vocab->is_object()) fail(Errc::kInvalidInput, "{}: missing model.vocab object", where);
    std::int64_t max_id = -1;
    for (const auto& [token, id] : reader.vocab) {
      if (id < 0 || id > (1 << 24)) fail(Errc::kInvalidInput, "{}: vocab id {} out of range", where, id);
      max_id = std::max(max_id, id);
    }
    if (reader.vocab.empty()) fail(Errc::kInvalidInput, "{}: model.vocab is empty", where);
    const json* added = find_member(doc, "added_tokens");
    if (added && !added->is_array()) fail(Errc::kInvalidInput, "{}: added_tokens is not an array", where);
    if (added) {
      for (const auto& t : *added) {
        const json* id = find_member(t, "id");
        if (!id || !id->is_number_integer())
          fail(Errc::kInvalidInput, "{}: added token without an id", where);
        const auto v = id->get<std::int64_t>();
        if (v < 0 || v > (1 << 24)) fail(Errc::kInvalidInput, "{}: added token id {} out of range", where, v);
        max_id = std::max(max_id, v);
      }
    }
    impl->id_bytes.assign(static_cast<std::size_t>(max_id + 1), std::string());
    impl->id_kind.assign(static_cast<std::size_t>(max_id + 1), 0);
    impl->token_to_id.reserve(reader.vocab.size() + 64);
    for (auto& [token, id64] : reader.vocab) {
      const auto id = static_cast<std::int32_t>(id64);
      auto bytes = alphabet.to_bytes(token);
      impl->id_bytes[static_cast<std::size_t>(id)] = bytes ? std::move(*bytes) : token;
      impl->id_kind[static_cast<std::size_t>(id)] = 1;
      impl->token_to_id.emplace(std::move(token), id);
    }
    for (int b = 0; b < 256; ++b) {
      std::string single;
      append_utf8(single, alphabet.byte_to_cp[static_cast<std::size_t>(b)]);
      const auto it = impl->token_to_id.find(single);
      impl->byte_id[static_cast<std::size_t>(b)] = it == impl->token_to_id.end() ? -1 : it->second;
    }
    if (std::count(impl->byte_id.begin(), impl->byte_id.end(), -1) > 0) {
      spdlog::warn("tokenizer {}: some bytes have no token; they will be dropped when encoding", where);
    }

    const json* merges = find_member(*model, "merges");
    if (!merges || !merges->is_array()) fail(Errc::kInvalidInput, "{}: missing model.merges array", where);
    impl->merges.reserve(reader.merges.size() * 2);
    std::int32_t rank = 0;
    std::string joined;
    for (const auto& [left, right] : reader.merges) {
      joined.assign(left).append(right);
      const auto l = impl->token_to_id.find(left);
      const auto r = impl->token_to_id.find(right);
      const auto merged = impl->token_to_id.find(joined);
      if (l == impl->token_to_id.end() || r == impl->token_to_id.end() || merged == impl->token_to_id.end()) {
        fail(Errc::kInvalidInput, "{}: merge #{} uses a token missing from the vocabulary", where, rank);
      }
      impl->merges.insert_or_assign(pair_key(l->second, r->second), std::make_pair(rank, merged->second));
      ++rank;
    }

    // --- added tokens ---
    if (added) {
      for (const auto& t : *added) {
        AddedToken tok;
        tok.id = t.at("id").get<std::int32_t>();
        tok.content = t.at("content").get<std::string>();
        const auto flag = [&](const char* key, bool fallback) {
          const json* v = find_member(t, key);
          return v ? v->get<bool>() : fallback;
        };
        tok.special = flag("special", false);
        tok.single_word = flag("single_word", false);
        tok.lstrip = flag("lstrip", false);
        tok.rstrip = flag("rstrip", false);
        tok.normalized = flag("normalized", !tok.special);
        if (tok.content.empty()) continue;
        if (find_invalid_utf8(tok.content) != std::string::npos) {
          fail(Errc::kInvalidInput, "{}: added token {} is not valid UTF-8", where, tok.id);
        }
        // The ByteLevel decoder maps a token's characters back to bytes when all of them belong to the
        // byte alphabet, and otherwise keeps the token's own UTF-8.
        auto bytes = alphabet.to_bytes(tok.content);
        impl->id_bytes[static_cast<std::size_t>(tok.id)] = bytes ? std::move(*bytes) : tok.content;
        impl->id_kind[static_cast<std::size_t>(tok.id)] = tok.special ? 3 : 2;
        impl->token_to_id.insert_or_assign(tok.content, tok.id);
        impl->added.push_back(std::move(tok));
      }
    }

    // --- normalizer ---
    if (const json* normalizer = find_member(doc, "normalizer")) {
      const auto type = normalizer->at("type").get<std::string>();
      if (type == "NFC") {
        impl->nfc = true;
      } else if (type == "Sequence" && find_member(*normalizer, "normalizers") &&
                 normalizer->at("normalizers").empty()) {
        impl->nfc = false;
      } else {
        fail(Errc::kUnsupported, "{}: normalizer \"{}\" is not supported (only NFC)", where, type);
      }
    }
    // Added tokens are matched against their normalized form in the normalized text.
    for (std::size_t k = 0; k < impl->added.size(); ++k) {
      const AddedToken& tok = impl->added[k];
      if (!tok.normalized) {
        impl->raw_matcher.add(tok.content, static_cast<std::int32_t>(k));
        continue;
      }
      std::string pattern = tok.content;
      if (impl->nfc) {
        utf8proc_uint8_t* mapped = nullptr;
        const auto len = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(tok.content.data()),
                                      static_cast<utf8proc_ssize_t>(tok.content.size()), &mapped,
                                      static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
        if (len >= 0) pattern.assign(reinterpret_cast<const char*>(mapped), static_cast<std::size_t>(len));
        std::free(mapped);
      }
      impl->normalized_matcher.add(pattern, static_cast<std::int32_t>(k));
    }

    // --- pre-tokenizer ---
    std::string regex;
    bool byte_level = false;
    const auto handle_pre = [&](const json& p, auto& self) -> void {
      const auto type = p.at("type").get<std::string>();
      if (type == "Sequence") {
        for (const auto& sub : p.at("pretokenizers")) self(sub, self);
      } else if (type == "Split") {
        if (!regex.empty()) fail(Errc::kUnsupported, "{}: more than one Split pre-tokenizer", where);
        const json& pattern = p.at("pattern");
        if (!pattern.contains("Regex")) {
          fail(Errc::kUnsupported, "{}: Split pre-tokenizer without a Regex pattern", where);
        }
        const auto behavior = p.value("behavior", std::string("Isolated"));
        if (behavior != "Isolated") {
          fail(Errc::kUnsupported, "{}: Split behavior \"{}\" is not supported (only Isolated)", where,
               behavior);
        }
        if (p.value("invert", false)) fail(Errc::kUnsupported, "{}: inverted Split is not supported", where);
        regex = pattern.at("Regex").get<std::string>();
        if (regex.empty()) fail(Errc::kInvalidInput, "{}: empty Split regex", where);
      } else if (type == "ByteLevel") {
        if (p.value("add_prefix_space", false)) {
          fail(Errc::kUnsupported, "{}: ByteLevel add_prefix_space is not supported", where);
        }
        if (p.value("use_regex", true)) {
          fail(Errc::kUnsupported, "{}: ByteLevel use_regex=true is not supported", where);
        }
        byte_level = true;
      } else {
        fail(Errc::kUnsupported, "{}: pre-tokenizer \"{}\" is not supported", where, type);
      }
    };
    if (const json* pre = find_member(doc, "pre_tokenizer")) handle_pre(*pre, handle_pre);
    if (!byte_level) fail(Errc::kUnsupported, "{}: only byte-level BPE tokenizers are supported", where);
    if (const json* decoder = find_member(doc, "decoder");
        decoder && decoder->at("type").get<std::string>() != "ByteLevel") {
      fail(Errc::kUnsupported, "{}: decoder \"{}\" is not supported (only ByteLevel)", where,
           decoder->at("type").get<std::string>());
    }
    if (!regex.empty()) {
      const std::string translated = translate_regex(regex);
      int error = 0;
      PCRE2_SIZE offset = 0;
      pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                                       PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
      if (!code) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(error, message, sizeof(message));
        fail(Errc::kUnsupported, "{}: cannot compile the pre-tokenizer regex at offset {}: {}", where, offset,
             reinterpret_cast<const char*>(message));
      }
      impl->split_regex.reset(code);
      impl->split_jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
      if (!impl->split_jit) spdlog::debug("tokenizer: PCRE2 JIT unavailable, using the interpreter");
    }
  } catch (const json::exception& e) {
    fail(Errc::kInvalidInput, "{}: unexpected tokenizer.json structure: {}", where, e.what());
  }
  spdlog::debug("tokenizer: loaded {} ({} ids, {} merges, {} added tokens)", where, impl->id_bytes.size(),
                impl->merges.size(), impl->added.size());
  return Tokenizer(std::move(impl));
}

// ---------------------------------------------------------------------------------------------------
// Public API

std::vector<std::int32_t> Tokenizer::encode(std::string_view text) const {
  const std::size_t bad = find_invalid_utf8(text);
  if (bad != std::string_view::npos) {
    fail(Errc::kInvalidInput, "tokenizer: input is not valid UTF-8 (byte offset {})", bad);
  }
  std::vector<std::int32_t> ids;
  ids.reserve(text.size() / 3 + 8);
  impl_->encode_raw(text, ids);
  return ids;
}

std::string Tokenizer::decode(std::span<const std::int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (const std::int32_t id : ids) {
    if (id < 0 || static_cast<std::size_t>(id) >= impl_->id_kind.size() ||
        impl_->id_kind[static_cast<std::size_t>(id)] == 0) {
      fail(Errc::kInvalidInput, "tokenizer: token id {} is not in the vocabulary (0..{})", id,
           impl_->id_kind.size() - 1);
    }
    if (skip_special_tokens && impl_->id_kind[static_cast<std::size_t>(id)] == 3) continue;
    bytes += impl_->id_bytes[static_cast<std::size_t>(id)];
  }
  // UTF-8 repair with the "maximal subpart" rule (what Python's errors="replace" and Rust's
  // from_utf8_lossy do): each maximal prefix of a well-formed sequence, or a single bad byte, becomes
  // one U+FFFD.
  std::string out;
  out.reserve(bytes.size());
  std::size_t i = 0;
  const std::size_t n = bytes.size();
  const auto u = [&](std::size_t k) { return static_cast<unsigned char>(bytes[k]); };
  while (i < n) {
    const std::size_t len = utf8_sequence_length(bytes, i);
    if (len > 0) {
      out.append(bytes, i, len);
      i += len;
      continue;
    }
    const Utf8Lead lead = utf8_lead(u(i));  // u(i) >= 0x80 here: ASCII is always well-formed
    const std::size_t need = lead.len == 0 ? 0 : lead.len - 1;
    std::size_t k = i + 1;
    for (std::size_t t = 0; t < need && k < n; ++t, ++k) {
      const unsigned b = u(k);
      const unsigned tlo = t == 0 ? lead.lo : 0x80, thi = t == 0 ? lead.hi : 0xBF;
      if (b < tlo || b > thi) break;
    }
    out += "\xEF\xBF\xBD";
    i = k;
  }
  return out;
}

std::string Tokenizer::token_bytes(std::int32_t id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= impl_->id_bytes.size()) return {};
  return impl_->id_bytes[static_cast<std::size_t>(id)];
}

std::int32_t Tokenizer::token_id(std::string_view token) const {
  const auto it = impl_->token_to_id.find(token);
  return it == impl_->token_to_id.end() ? -1 : it->second;
}

std::size_t Tokenizer::vocab_size() const { return impl_->id_bytes.size(); }

bool Tokenizer::is_special(std::int32_t id) const {
  return id >= 0 && static_cast<std::size_t>(id) < impl_->id_kind.size() &&
         impl_->id_kind[static_cast<std::size_t>(id)] == 3;
}

std::filesystem::path default_tokenizer_json() {
  std::filesystem::path dir;
  if (const char* cache = std::getenv("MEDVISION_CACHE"); cache && *cache) {
    dir = cache;
  } else if (const char* home = std::getenv("HOME"); home && *home) {
    dir = std::filesystem::path(home) / ".cache" / "medvision";
  } else {
    fail(Errc::kNotFound, "tokenizer.json: neither MEDVISION_CACHE nor HOME is set; run scripts/setup.sh");
  }
  auto path = dir / "tokenizer.json";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    fail(Errc::kNotFound, "{}: the cached tokenizer.json is missing; run scripts/setup.sh to fetch it",
         path.string());
  }
  return path;
}

}  // namespace mv
