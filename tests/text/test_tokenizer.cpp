// Tokenizer and chat template: parity with the Hugging Face `tokenizers` library on the fixture corpus
// (tests/fixtures/tokenizer/expected.json, made by tools/reference/make_tokenizer_fixtures.py), hand-made
// tokenizers for the merge loop and added-token rules, UTF-8 replacement, errors, and the CLI.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "bench/tokenizer_bench.hpp"
#include "cli/run_cli.hpp"
#include "common/expect_error.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "text/chat_template.hpp"
#include "text/tokenizer.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;
using Ids = std::vector<std::int32_t>;

namespace {

const fs::path kFixtures = fs::path(MV_FIXTURES_DIR) / "tokenizer";

// The cached Qwen tokenizer (scripts/setup.sh). Loading throws a clear kNotFound error when it is absent.
const mv::Tokenizer& qwen() {
  static std::unique_ptr<mv::Tokenizer> tok;
  if (!tok) tok = std::make_unique<mv::Tokenizer>(mv::Tokenizer::load(mv::default_tokenizer_json()));
  return *tok;
}

const json& expected() {
  static std::unique_ptr<json> doc;
  if (!doc) doc = std::make_unique<json>(json::parse(mv::read_file(kFixtures / "expected.json")));
  return *doc;
}

Ids ids_of(const json& j) { return j.get<Ids>(); }

std::string show(const std::string& s) { return json(s).dump(); }  // escaped, for failure messages

// Bytes -> ids of the single-byte tokens, to build ill-formed UTF-8 sequences.
Ids byte_ids(std::initializer_list<int> bytes) {
  Ids out;
  for (const int b : bytes) {
    // The id whose token is exactly this one byte (searched over the whole vocabulary).
    static std::array<std::int32_t, 256> table = [] {
      std::array<std::int32_t, 256> t{};
      t.fill(-1);
      for (std::int32_t id = 0; id < static_cast<std::int32_t>(qwen().vocab_size()); ++id) {
        const std::string s = qwen().token_bytes(id);
        if (s.size() == 1 && t[static_cast<unsigned char>(s[0])] < 0)
          t[static_cast<unsigned char>(s[0])] = id;
      }
      return t;
    }();
    out.push_back(table[static_cast<std::size_t>(b)]);
  }
  return out;
}

using mv::testing::CliResult;
using mv::testing::run_cli;

fs::path temp_dir(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("mv_tok_" + std::to_string(::getpid()) + "_" + name);
  fs::create_directories(dir);
  return dir;
}

// A small byte-level BPE tokenizer.json for hand-checked cases.
json tiny_tokenizer_json(bool bc_first, bool merges_as_pairs) {
  json vocab = {{"a", 0},   {"b", 1},        {"c", 2}, {"ab", 3}, {"bc", 4},
                {"abc", 5}, {"\xC4\xA0", 6},  // "Ġ" = space
                {"x", 7},   {"y", 8},        {"<", 9}, {">", 10}, {"m", 11}};
  std::vector<std::pair<std::string, std::string>> merges = {{"a", "b"}, {"b", "c"}, {"ab", "c"}};
  if (bc_first) std::swap(merges[0], merges[1]);
  json jm = json::array();
  for (const auto& [l, r] : merges) {
    if (merges_as_pairs) {
      jm.push_back(json::array({l, r}));
    } else {
      jm.push_back(l + " " + r);
    }
  }
  const auto added = [](int id, const char* content, bool special, bool lstrip, bool rstrip,
                        bool single_word) {
    return json{{"id", id},         {"content", content},  {"single_word", single_word}, {"lstrip", lstrip},
                {"rstrip", rstrip}, {"normalized", false}, {"special", special}};
  };
  return {
      {"version", "1.0"},
      {"added_tokens",
       json::array({added(20, "<m>", true, true, true, false), added(21, "<m><m>", true, false, false, false),
                    added(22, "xy", false, false, false, true)})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers", json::array({{{"type", "Split"},
                                        {"pattern", {{"Regex", " ?[a-z]+|\\s+|[^\\sa-z]+"}}},
                                        {"behavior", "Isolated"},
                                        {"invert", false}},
                                       {{"type", "ByteLevel"},
                                        {"add_prefix_space", false},
                                        {"trim_offsets", false},
                                        {"use_regex", false}}})}}},
      {"decoder",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"vocab", vocab}, {"merges", jm}}},
  };
}

mv::Tokenizer tiny(bool bc_first = false, bool merges_as_pairs = false) {
  const auto dir = temp_dir("tiny");
  const auto path =
      dir / (std::string("tok_") + (bc_first ? "1" : "0") + (merges_as_pairs ? "1" : "0") + ".json");
  mv::write_file(path, tiny_tokenizer_json(bc_first, merges_as_pairs).dump());
  return mv::Tokenizer::load(path);
}

using mv::test::error_code_of;

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Parity with the Hugging Face tokenizers library

TEST(TokenizerParity, FixturesMatchTheFilesInUse) {
  const json& e = expected();
  EXPECT_EQ(e.at("tokenizer_sha256").get<std::string>(), mv::sha256_file_hex(mv::default_tokenizer_json()))
      << "the cached tokenizer.json differs from the one the fixtures were made with";
  EXPECT_EQ(e.at("corpus_sha256").get<std::string>(), mv::sha256_file_hex(kFixtures / "corpus.txt"))
      << "corpus.txt changed: rerun tools/reference/make_tokenizer_fixtures.py";
  // The line cases are the corpus lines split on '\n' (CR kept), plus the empty string.
  const std::string corpus = mv::read_file(kFixtures / "corpus.txt");
  std::vector<std::string> lines;
  std::size_t pos = 0;
  while (pos < corpus.size()) {
    const auto nl = corpus.find('\n', pos);
    lines.push_back(corpus.substr(pos, nl - pos));
    if (nl == std::string::npos) break;
    pos = nl + 1;
  }
  const auto& cases = e.at("line_cases");
  ASSERT_EQ(cases.size(), lines.size() + 1);
  EXPECT_GE(lines.size(), 300u);
  for (std::size_t i = 0; i < lines.size(); ++i) EXPECT_EQ(cases[i].at("text").get<std::string>(), lines[i]);
}

TEST(TokenizerParity, EveryCorpusLineEncodesLikeHuggingFace) {
  const auto& tok = qwen();
  std::size_t n = 0, bad = 0;
  for (const auto& c : expected().at("line_cases")) {
    const std::string text = c.at("text").get<std::string>();
    const Ids got = tok.encode(text);
    const Ids want = ids_of(c.at("ids"));
    ++n;
    if (got != want) {
      ++bad;
      ADD_FAILURE() << "line " << n - 1 << " " << show(text) << "\n  got  " << json(got).dump() << "\n  want "
                    << json(want).dump();
    }
  }
  EXPECT_EQ(bad, 0u) << "of " << n << " lines";
}

TEST(TokenizerParity, MultiLineDocumentsEncodeLikeHuggingFace) {
  const auto& tok = qwen();
  std::size_t k = 0;
  for (const auto& c : expected().at("doc_cases")) {
    const std::string text = c.at("text").get<std::string>();
    const Ids got = tok.encode(text);
    const Ids want = ids_of(c.at("ids"));
    EXPECT_EQ(got.size(), want.size()) << "doc " << k;
    if (got != want) {
      std::size_t i = 0;
      while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
      ADD_FAILURE() << "doc " << k << " (" << text.size() << " bytes) first differs at token " << i;
    }
    ++k;
  }
  EXPECT_GE(k, 10u);
}

TEST(TokenizerParity, DecodeOfEncodedCasesMatches) {
  const auto& tok = qwen();
  for (const char* set : {"line_cases", "doc_cases"}) {
    std::size_t k = 0;
    for (const auto& c : expected().at(set)) {
      const Ids ids = ids_of(c.at("ids"));
      EXPECT_EQ(tok.decode(ids), c.at("decoded").get<std::string>()) << set << " " << k;
      if (c.contains("decoded_skip")) {
        EXPECT_EQ(tok.decode(ids, true), c.at("decoded_skip").get<std::string>()) << set << " " << k;
      }
      ++k;
    }
  }
}

TEST(TokenizerParity, DecodeCasesMatch) {
  const auto& tok = qwen();
  const auto& lines = expected().at("line_cases");
  std::size_t k = 0, cut = 0, bytes = 0;
  for (const auto& c : expected().at("decode_cases")) {
    Ids ids;
    bool skip = false;
    if (c.contains("ids")) {
      ids = ids_of(c.at("ids"));
      skip = c.at("skip_special").get<bool>();
      bytes += c.value("kind", "") == "bytes" ? 1 : 0;
    } else {
      const Ids all = ids_of(lines.at(c.at("line").get<std::size_t>()).at("ids"));
      skip = true;  // prefix/suffix cases were decoded with skip_special_tokens=True
      if (c.contains("prefix")) {
        ids.assign(all.begin(), all.begin() + c.at("prefix").get<std::ptrdiff_t>());
      } else {
        ids.assign(all.begin() + c.at("suffix").get<std::ptrdiff_t>(), all.end());
      }
      ++cut;
    }
    EXPECT_EQ(tok.decode(ids, skip), c.at("text").get<std::string>())
        << "decode case " << k << " " << c.dump();
    ++k;
  }
  EXPECT_GT(cut, 100u);
  EXPECT_GT(bytes, 20u);
}

TEST(TokenizerParity, ChatTemplateMatchesTransformers) {
  const auto& tok = qwen();
  std::size_t k = 0;
  for (const auto& c : expected().at("chat_cases")) {
    std::vector<mv::ChatMessage> messages;
    std::size_t images = 0;
    for (const auto& m : c.at("messages")) {
      mv::ChatMessage msg;
      msg.role = m.at("role").get<std::string>();
      const auto& content = m.at("content");
      if (content.is_string()) {
        msg = mv::ChatMessage::text(msg.role, content.get<std::string>());
      } else {
        for (const auto& part : content) {
          if (part.at("type") == "image") {
            msg.parts.push_back({mv::ChatPart::Kind::kImage, ""});
            ++images;
          } else {
            msg.parts.push_back({mv::ChatPart::Kind::kText, part.at("text").get<std::string>()});
          }
        }
      }
      messages.push_back(std::move(msg));
    }
    const bool gen = c.at("add_generation_prompt").get<bool>();
    EXPECT_EQ(mv::render_chat(messages, gen), c.at("text").get<std::string>()) << "chat case " << k;
    const Ids want = ids_of(c.at("ids"));
    EXPECT_EQ(mv::encode_chat(tok, messages, std::vector<std::int64_t>(images, 1), gen), want)
        << "chat case " << k;
    // With several tokens per image, each pad is repeated in place.
    std::vector<std::int64_t> counts;
    for (std::size_t i = 0; i < images; ++i) counts.push_back(static_cast<std::int64_t>(3 + 2 * i));
    Ids expanded;
    std::size_t img = 0;
    for (const auto id : want) {
      if (id == 151655) {
        expanded.insert(expanded.end(), static_cast<std::size_t>(counts[img++]), 151655);
      } else {
        expanded.push_back(id);
      }
    }
    EXPECT_EQ(mv::encode_chat(tok, messages, counts, gen), expanded) << "chat case " << k;
    ++k;
  }
  EXPECT_GE(k, 5u);
}

TEST(TokenizerParity, BenchmarkTextMatchesHuggingFaceDigest) {
  // 8 MB of varied clinical text (the bench-tokenizer buffer) encoded by HF tokenizers on the GPU machine
  // (tools/reference/bench_hf_tokenizer.py): same token count and same SHA-256 of the ids.
  const json ref = json::parse(mv::read_file(kFixtures / "bench_reference.json"));
  const mv::bench::TokenizerBenchOptions defaults;
  const auto lines = mv::bench::clinical_corpus_lines(mv::read_file(kFixtures / "corpus.txt"));
  const std::string text = mv::bench::build_clinical_text(lines, defaults.target_bytes, defaults.seed);
  if (mv::sha256_hex(text) != ref.at("text_sha256").get<std::string>()) {
    GTEST_SKIP() << "the benchmark text differs here (std::shuffle of another standard library?)";
  }
  const Ids ids = qwen().encode(text);
  EXPECT_EQ(ids.size(), ref.at("tokens").get<std::size_t>());
  std::string le;
  for (const auto id : ids) {
    for (int k = 0; k < 4; ++k)
      le.push_back(static_cast<char>((static_cast<std::uint32_t>(id) >> (8 * k)) & 0xFF));
  }
  EXPECT_EQ(mv::sha256_hex(le), ref.at("ids_sha256").get<std::string>());
}

// ---------------------------------------------------------------------------------------------------
// Known ids and the spec §6 prompt

TEST(Tokenizer, KnownTokens) {
  const auto& tok = qwen();
  EXPECT_EQ(tok.vocab_size(), 151669u);
  EXPECT_EQ(tok.token_id("<|endoftext|>"), 151643);
  EXPECT_EQ(tok.token_id("<|im_start|>"), 151644);
  EXPECT_EQ(tok.token_id("<|im_end|>"), 151645);
  EXPECT_EQ(tok.token_id("<|image_pad|>"), 151655);
  EXPECT_EQ(tok.token_id("</think>"), 151668);
  EXPECT_EQ(tok.token_id("system"), 8948);
  EXPECT_EQ(tok.token_id("\xC4\x8A"), 198);  // "Ċ" = "\n"
  EXPECT_EQ(tok.token_id("no such token at all"), -1);
  EXPECT_TRUE(tok.is_special(151644));
  EXPECT_TRUE(tok.is_special(151655));
  EXPECT_FALSE(tok.is_special(151657));  // <tool_call> is an added token but not special
  EXPECT_FALSE(tok.is_special(8948));
  EXPECT_FALSE(tok.is_special(-1));
  EXPECT_EQ(tok.token_bytes(198), "\n");
  EXPECT_EQ(tok.token_bytes(151644), "<|im_start|>");
  EXPECT_EQ(tok.token_bytes(1 << 30), "");
  EXPECT_EQ(tok.encode("system"), (Ids{8948}));
  EXPECT_EQ(tok.encode("You are a helpful assistant."), (Ids{2610, 525, 264, 10950, 17847, 13}));
}

TEST(Tokenizer, ByteAlphabetCoversEveryByteOnce) {
  const auto& tok = qwen();
  std::array<int, 256> seen{};
  for (int b = 0; b < 256; ++b) {
    const Ids id = byte_ids({b});
    ASSERT_GE(id[0], 0) << "byte " << b;
    const std::string bytes = tok.token_bytes(id[0]);
    ASSERT_EQ(bytes.size(), 1u);
    ++seen[static_cast<unsigned char>(bytes[0])];
  }
  for (int b = 0; b < 256; ++b) EXPECT_EQ(seen[b], 1) << "byte " << b;
  // Printable ASCII maps to itself; space and newline to "Ġ" and "Ċ".
  EXPECT_EQ(tok.token_id("A"), byte_ids({'A'})[0]);
  EXPECT_EQ(tok.token_id("\xC4\xA0"), byte_ids({' '})[0]);
  EXPECT_EQ(tok.token_id("\xC4\x8A"), byte_ids({'\n'})[0]);
}

TEST(ChatTemplate, SpecExamplePromptBytesAndIds) {
  const auto& tok = qwen();
  mv::ChatMessage user;
  user.role = "user";
  user.parts.push_back({mv::ChatPart::Kind::kImage, ""});
  user.parts.push_back({mv::ChatPart::Kind::kText, "What is in this image?"});
  const std::vector<mv::ChatMessage> messages = {user};
  EXPECT_EQ(
      mv::render_chat(messages),
      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
      "<|vision_start|><|image_pad|><|vision_end|>What is in this image?<|im_end|>\n<|im_start|>assistant\n");
  // A 640x480 image gives 391 merged tokens (spec §6).
  const Ids ids = mv::encode_chat(tok, messages, {391});
  const Ids prefix = {151644, 8948,   198, 2610,   525, 264, 10950,  17847,
                      13,     151645, 198, 151644, 872, 198, 151652, 151655};
  ASSERT_GT(ids.size(), prefix.size() + 390);
  EXPECT_EQ(Ids(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(prefix.size())), prefix);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 151655), 391);
  const auto first_pad = std::find(ids.begin(), ids.end(), 151655);
  EXPECT_TRUE(std::all_of(first_pad, first_pad + 391, [](std::int32_t id) { return id == 151655; }));
  EXPECT_EQ(*(first_pad + 391), 151653);
  const Ids question = tok.encode("What is in this image?");
  const Ids suffix_tail = {151645, 198, 151644, 77091, 198};
  Ids want_suffix = {151653};
  want_suffix.insert(want_suffix.end(), question.begin(), question.end());
  want_suffix.insert(want_suffix.end(), suffix_tail.begin(), suffix_tail.end());
  EXPECT_EQ(Ids(first_pad + 391, ids.end()), want_suffix);
}

TEST(ChatTemplate, Rules) {
  // Default system prompt only when the first message is not a system message; no generation prompt.
  std::vector<mv::ChatMessage> m = {mv::ChatMessage::text("system", "S"), mv::ChatMessage::text("user", "U")};
  EXPECT_EQ(mv::render_chat(m, false), "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n");
  std::vector<mv::ChatMessage> a = {mv::ChatMessage::text("assistant", "A")};
  EXPECT_EQ(
      mv::render_chat(a, false),
      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n");
  EXPECT_EQ(mv::render_chat({}, true), "<|im_start|>assistant\n");
}

TEST(ChatTemplate, ImageCountErrors) {
  const auto& tok = qwen();
  mv::ChatMessage user;
  user.role = "user";
  user.parts.push_back({mv::ChatPart::Kind::kImage, ""});
  EXPECT_EQ(error_code_of([&] { mv::encode_chat(tok, {user}, {}); }), mv::Errc::kInvalidInput);
  EXPECT_EQ(error_code_of([&] { mv::encode_chat(tok, {user}, {4, 4}); }), mv::Errc::kInvalidInput);
  EXPECT_EQ(error_code_of([&] { mv::encode_chat(tok, {user}, {0}); }), mv::Errc::kInvalidInput);
  // A literal <|image_pad|> in the text would shift the image features: refused.
  user.parts.push_back({mv::ChatPart::Kind::kText, "see <|image_pad|>"});
  EXPECT_EQ(error_code_of([&] { mv::encode_chat(tok, {user}, {4}); }), mv::Errc::kInvalidInput);
}

// ---------------------------------------------------------------------------------------------------
// Hand-made tokenizers: merge order, pair-format merges, added-token rules

TEST(TokenizerBpe, MergesFollowRankOrder) {
  const auto t = tiny();  // merges: a b (0), b c (1), ab c (2)
  EXPECT_EQ(t.encode("abc"), (Ids{5}));
  EXPECT_EQ(t.encode("abab"), (Ids{3, 3}));
  EXPECT_EQ(t.encode("cab"), (Ids{2, 3}));
  EXPECT_EQ(t.encode(" abc"), (Ids{6, 5}));
  EXPECT_EQ(t.encode("abc abc"), (Ids{5, 6, 5}));
  const auto u = tiny(true, true);          // merges as [a, b] pairs: b c (0), a b (1), ab c (2)
  EXPECT_EQ(u.encode("abc"), (Ids{0, 4}));  // b+c first, then no merge for (a, bc)
  EXPECT_EQ(u.encode("ab"), (Ids{3}));
  EXPECT_EQ(u.encode("abbc"), (Ids{3, 4}));
  EXPECT_EQ(t.decode(Ids{5, 6, 0, 4}), "abc abc");
  EXPECT_EQ(t.token_id("abc"), 5);
  EXPECT_EQ(t.token_id("<m>"), 20);
}

TEST(TokenizerAddedTokens, LongestMatchStripAndSingleWord) {
  const auto t = tiny();
  // lstrip/rstrip on <m> swallow the spaces around it.
  EXPECT_EQ(t.encode("x <m> y"), (Ids{7, 20, 8}));
  // The longest token at the leftmost position wins: <m><m> over <m>.
  EXPECT_EQ(t.encode("x<m><m>y"), (Ids{7, 21, 8}));
  EXPECT_EQ(t.encode("<m><m><m>"), (Ids{21, 20}));
  // Incomplete tokens are plain text.
  EXPECT_EQ(t.encode("<m"), (Ids{9, 11}));
  // single_word: "xy" only as a whole word.
  EXPECT_EQ(t.encode("xy"), (Ids{22}));
  EXPECT_EQ(t.encode(" xy "), (Ids{6, 22, 6}));
  EXPECT_EQ(t.encode("axy"), (Ids{0, 7, 8}));
  EXPECT_TRUE(t.is_special(20));
  EXPECT_FALSE(t.is_special(22));
  EXPECT_EQ(t.decode(Ids{7, 20, 8}), "x<m>y");
  EXPECT_EQ(t.decode(Ids{7, 20, 22}, true), "xxy");
}

TEST(TokenizerAddedTokens, QwenSpecialTokensAreNeverSplit) {
  const auto& tok = qwen();
  EXPECT_EQ(tok.encode("<|im_start|><|im_end|>"), (Ids{151644, 151645}));
  EXPECT_EQ(tok.encode("a<|endoftext|>b"), (Ids{tok.encode("a")[0], 151643, tok.encode("b")[0]}));
  // NFC is not applied across an added token: the mark after <|im_end|> stays a separate character.
  const Ids ids = tok.encode("e<|im_end|>\xCC\x81");
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids[1], 151645);
  EXPECT_EQ(tok.decode(ids), "e<|im_end|>\xCC\x81");
}

TEST(TokenizerNormalization, NfcIsApplied) {
  const auto& tok = qwen();
  EXPECT_EQ(tok.encode("cafe\xCC\x81"), tok.encode("caf\xC3\xA9"));  // e + U+0301 -> é
  EXPECT_EQ(tok.encode("\xE2\x84\xAB"), tok.encode("\xC3\x85"));     // Angstrom sign -> Å
  EXPECT_NE(tok.encode("\xEF\xAC\x81"), tok.encode("fi"));           // NFC keeps the ligature
  EXPECT_EQ(tok.decode(tok.encode("A\xCC\x8A")), "\xC3\x85");
}

// ---------------------------------------------------------------------------------------------------
// UTF-8 replacement on decode

TEST(TokenizerDecode, ReplacementFollowsMaximalSubparts) {
  const auto& tok = qwen();
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(tok.decode(byte_ids({0xE2, 0x82, 0xAC})), "\xE2\x82\xAC");
  EXPECT_EQ(tok.decode(byte_ids({0xE2, 0x82})), r);  // truncated: one replacement
  EXPECT_EQ(tok.decode(byte_ids({0xF0, 0x9F, 0x98})), r);
  EXPECT_EQ(tok.decode(byte_ids({0xED, 0xA0, 0x80})), r + r + r);  // surrogate: each byte
  EXPECT_EQ(tok.decode(byte_ids({0xC0, 0x80})), r + r);            // overlong lead
  EXPECT_EQ(tok.decode(byte_ids({0xF4, 0x90, 0x80, 0x80})), r + r + r + r);
  EXPECT_EQ(tok.decode(byte_ids({0xE2, 0x28, 0xA1})), r + "(" + r);
  EXPECT_EQ(tok.decode(byte_ids({0x41, 0xE2, 0x42})), "A" + r + "B");
  EXPECT_EQ(tok.decode(byte_ids({0xFF, 0x80})), r + r);
  EXPECT_EQ(tok.decode(byte_ids({0xF1, 0x80, 0x80})), r);
}

TEST(TokenizerDecode, SkipSpecialAndErrors) {
  const auto& tok = qwen();
  const Ids ids = {151644, 8948, 198, 151657, 151655, 151645};
  EXPECT_EQ(tok.decode(ids), "<|im_start|>system\n<tool_call><|image_pad|><|im_end|>");
  EXPECT_EQ(tok.decode(ids, true), "system\n<tool_call>");
  EXPECT_EQ(error_code_of([&] { tok.decode(Ids{1, -1}); }), mv::Errc::kInvalidInput);
  EXPECT_EQ(error_code_of([&] { tok.decode(Ids{151669}); }), mv::Errc::kInvalidInput);
}

// ---------------------------------------------------------------------------------------------------
// Errors, robustness

TEST(TokenizerErrors, BadInputAndFiles) {
  const auto& tok = qwen();
  EXPECT_EQ(error_code_of([&] { tok.encode("ok \xC3"); }), mv::Errc::kInvalidInput);
  EXPECT_EQ(error_code_of([&] { tok.encode("\xED\xA0\x80"); }), mv::Errc::kInvalidInput);
  EXPECT_TRUE(tok.encode("").empty());

  const auto dir = temp_dir("errors");
  EXPECT_EQ(error_code_of([&] { mv::Tokenizer::load(dir / "missing.json"); }), mv::Errc::kNotFound);
  EXPECT_EQ(error_code_of([&] { mv::Tokenizer::from_model_dir(dir / "nodir"); }), mv::Errc::kNotFound);
  EXPECT_EQ(error_code_of([&] { mv::Tokenizer::from_model_dir(dir); }), mv::Errc::kNotFound);
  mv::write_file(dir / "bad.json", "{\"model\": [1, 2");
  EXPECT_EQ(error_code_of([&] { mv::Tokenizer::load(dir / "bad.json"); }), mv::Errc::kInvalidInput);
  mv::write_file(dir / "nomodel.json", "{\"added_tokens\": []}");
  EXPECT_EQ(error_code_of([&] { mv::Tokenizer::load(dir / "nomodel.json"); }), mv::Errc::kInvalidInput);
  json j = tiny_tokenizer_json(false, false);
  j["model"]["merges"].push_back("a zz");
  mv::write_file(dir / "badmerge.json", j.dump());
  EXPECT_EQ(error_code_of([&] { mv::Tokenizer::load(dir / "badmerge.json"); }), mv::Errc::kInvalidInput);
  j = tiny_tokenizer_json(false, false);
  j["model"]["type"] = "Unigram";
  mv::write_file(dir / "unigram.json", j.dump());
  EXPECT_EQ(error_code_of([&] { mv::Tokenizer::load(dir / "unigram.json"); }), mv::Errc::kUnsupported);
  j = tiny_tokenizer_json(false, false);
  j["model"]["vocab"]["a"] = "zero";
  mv::write_file(dir / "badvocab.json", j.dump());
  EXPECT_EQ(error_code_of([&] { mv::Tokenizer::load(dir / "badvocab.json"); }), mv::Errc::kInvalidInput);
}

TEST(TokenizerErrors, DefaultPathNamesSetupScript) {
  const char* old = std::getenv("MEDVISION_CACHE");
  const std::string saved = old ? old : "";
  const auto dir = temp_dir("emptycache");
  ::setenv("MEDVISION_CACHE", dir.c_str(), 1);
  try {
    mv::default_tokenizer_json();
    ADD_FAILURE() << "expected kNotFound";
  } catch (const mv::Error& e) {
    EXPECT_EQ(e.code(), mv::Errc::kNotFound);
    EXPECT_NE(std::string(e.what()).find("scripts/setup.sh"), std::string::npos) << e.what();
  }
  if (old) {
    ::setenv("MEDVISION_CACHE", saved.c_str(), 1);
  } else {
    ::unsetenv("MEDVISION_CACHE");
  }
}

TEST(TokenizerRobustness, LongPiecesAndThreads) {
  const auto& tok = qwen();
  // One 200 kB piece with no split point runs through the heap-based merge loop.
  const std::string letters(200000, 'a');
  const Ids ids = tok.encode(letters);
  EXPECT_LT(ids.size(), letters.size() / 4);
  EXPECT_EQ(tok.decode(ids), letters);
  const std::string spaces = std::string(100000, ' ') + "x" + std::string(50000, '\n');
  EXPECT_EQ(tok.decode(tok.encode(spaces)), spaces);
  const std::string symbols(100000, '=');
  EXPECT_EQ(tok.decode(tok.encode(symbols)), symbols);

  // Concurrent encodes share the piece cache and must agree with a single-threaded run.
  const std::string text = mv::read_file(kFixtures / "corpus.txt");
  const Ids want = tok.encode(text);
  std::vector<Ids> got(4);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < got.size(); ++i) {
    threads.emplace_back([&, i] {
      for (int r = 0; r < 3; ++r) got[i] = tok.encode(text);
    });
  }
  for (auto& th : threads) th.join();
  for (const auto& g : got) EXPECT_EQ(g, want);
}

TEST(TokenizerRobustness, RandomTextRoundTrips) {
  // Random strings over a palette of NFC-stable fragments (so decode(encode(s)) == s), including partial
  // and complete special tokens, unusual spaces, astral characters and long runs.
  const auto& tok = qwen();
  const std::vector<std::string> palette = {"a",
                                            "Z",
                                            "7",
                                            " ",
                                            "  ",
                                            "\t",
                                            "\n",
                                            "\r\n",
                                            "'s",
                                            "'LL",
                                            "<|im_start|>",
                                            "<|im_end|>",
                                            "<|im",
                                            "|>",
                                            "<",
                                            "<|image_pad|>",
                                            "<think>",
                                            "\xC3\xA9",
                                            "\xC2\xB5g",
                                            "\xE2\x89\xA5",
                                            "\xE6\x82\xA3",
                                            "\xF0\x9F\x98\x80",
                                            "\xE2\x80\x8D",
                                            "\xE1\xA0\x8E",
                                            "\xC2\x85",
                                            "\xE3\x80\x80",
                                            "\xC2\xA0",
                                            "mg/dL",
                                            "38.2",
                                            "!!",
                                            "\xD9\xA3"};
  std::uint64_t state = 12345;
  const auto next = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<std::size_t>(state >> 33);
  };
  for (int round = 0; round < 400; ++round) {
    std::string s;
    const std::size_t parts = next() % 40;
    for (std::size_t i = 0; i < parts; ++i) {
      const std::string& frag = palette[next() % palette.size()];
      const std::size_t reps = next() % 8 == 0 ? 1 + next() % 30 : 1;
      for (std::size_t r = 0; r < reps; ++r) s += frag;
    }
    const Ids ids = tok.encode(s);
    ASSERT_EQ(tok.decode(ids), s) << show(s);
  }
  // Random bytes: either valid UTF-8 that round-trips, or a clean kInvalidInput error.
  for (int round = 0; round < 400; ++round) {
    std::string s;
    const std::size_t n = next() % 24;
    for (std::size_t i = 0; i < n; ++i) s.push_back(static_cast<char>(next() % 256));
    try {
      const Ids ids = tok.encode(s);
      const std::string back = tok.decode(ids);
      EXPECT_EQ(tok.encode(back), ids) << show(s);
    } catch (const mv::Error& e) {
      EXPECT_EQ(e.code(), mv::Errc::kInvalidInput);
    }
  }
}

TEST(TokenizerBench, ClinicalTextBuilder) {
  const std::string corpus =
      "## clinical: a\nK+ 3.2 mmol/L\n\n## other\nnot clinical\n## clinical: b\nHb 9.8 g/dL\n";
  const auto lines = mv::bench::clinical_corpus_lines(corpus);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], "K+ 3.2 mmol/L");
  EXPECT_EQ(lines[1], "Hb 9.8 g/dL");
  const std::string text = mv::bench::build_clinical_text(lines, 10000, 7);
  EXPECT_GE(text.size(), 10000u);
  EXPECT_EQ(text, mv::bench::build_clinical_text(lines, 10000, 7));
  EXPECT_EQ(text.find("not clinical"), std::string::npos);
  EXPECT_EQ(mv::bench::clinical_corpus_lines(mv::read_file(kFixtures / "corpus.txt")).size() >= 150, true);
}

// ---------------------------------------------------------------------------------------------------
// CLI

TEST(TokenizeCli, EncodeDecodeAndErrors) {
  const auto& tok = qwen();
  const auto dir = temp_dir("cli");
  const std::string text = "Hb 9.8 g/dL \xE2\x86\x93\n<|im_start|>user\ncaf\xC3\xA9\n";  // final newline kept
  mv::write_file(dir / "in.txt", text);
  auto r = run_cli("tokenize --text-file " + (dir / "in.txt").string() + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json out = json::parse(r.out);
  EXPECT_EQ(out.at("ids").get<Ids>(), tok.encode(text));
  EXPECT_EQ(out.at("n").get<std::size_t>(), tok.encode(text).size());

  mv::write_file(dir / "ids.json", out.at("ids").dump());
  r = run_cli("tokenize --decode --text-file " + (dir / "ids.json").string() + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out).at("text").get<std::string>(), text);

  r = run_cli("tokenize --decode --skip-special --ids '[151644, 872, 198]' --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out).at("text").get<std::string>(), "user\n");

  const std::string model_dir = fs::path(mv::default_tokenizer_json()).parent_path().string();
  r = run_cli("tokenize --model " + model_dir + " --text-file " + (dir / "in.txt").string() + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out).at("ids").get<Ids>(), tok.encode(text));

  r = run_cli("tokenize --decode --ids '[1, 2' --json");
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.err.find("JSON"), std::string::npos) << r.err;
  r = run_cli("tokenize --decode --ids '[1, 9999999]'");
  EXPECT_EQ(r.exit_code, 3) << r.err;
  r = run_cli("tokenize --decode --ids '[1, \"x\"]'");
  EXPECT_EQ(r.exit_code, 3) << r.err;
  mv::write_file(dir / "bad.txt", std::string("bad \xFF utf8"));
  r = run_cli("tokenize --text-file " + (dir / "bad.txt").string());
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.err.find("bad.txt"), std::string::npos) << r.err;
  r = run_cli("tokenize --text-file " + (dir / "missing.txt").string());
  EXPECT_EQ(r.exit_code, 3) << r.err;
  r = run_cli("tokenize --model " + (dir / "nomodel").string() + " --text abc");
  EXPECT_EQ(r.exit_code, 3) << r.err;
}
