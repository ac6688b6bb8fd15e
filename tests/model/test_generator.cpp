// Generator: UTF-8-safe streaming, and the decode loop (stop ids, ignore_eos, max tokens, prompt
// logits, history for the repetition penalty) over a scripted stand-in model and the real tokenizer.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "model/qwen25vl/generator.hpp"

using mv::qwen25vl::GenerateOptions;
using mv::qwen25vl::Utf8Stream;

namespace {

std::string stream_all(const std::vector<std::string>& pieces, std::vector<std::string>* emitted = nullptr) {
  Utf8Stream s;
  std::string out;
  for (const auto& p : pieces) {
    std::string piece;
    s.push(p, piece);
    if (emitted) emitted->push_back(piece);
    out += piece;
  }
  std::string tail;
  s.finish(tail);
  if (emitted) emitted->push_back(tail);
  return out + tail;
}

const std::string kFffd = "\xEF\xBF\xBD";

}  // namespace

TEST(Utf8Stream, PassesValidTextThrough) {
  EXPECT_EQ(stream_all({"abc", " d\xC3\xA9", "\xE2\x82\xAC"}), "abc d\xC3\xA9\xE2\x82\xAC");
}

TEST(Utf8Stream, HoldsBackSplitSequences) {
  std::vector<std::string> emitted;
  const std::string out = stream_all({"x\xF0\x9F", "\x98", "\x80y"}, &emitted);
  EXPECT_EQ(out, "x\xF0\x9F\x98\x80y");
  ASSERT_EQ(emitted.size(), 4u);
  EXPECT_EQ(emitted[0], "x");  // the emoji's first two bytes wait
  EXPECT_EQ(emitted[1], "");
  EXPECT_EQ(emitted[2], "\xF0\x9F\x98\x80y");
  EXPECT_EQ(emitted[3], "");
}

TEST(Utf8Stream, ReplacesLikePythonErrorsReplace) {
  // Expected strings are what bytes.decode("utf-8", errors="replace") gives.
  EXPECT_EQ(stream_all({"\xE2\x82", "A"}), kFffd + "A");
  EXPECT_EQ(stream_all({"\xF0\x80\x80"}), kFffd + kFffd + kFffd);
  EXPECT_EQ(stream_all({"\xED\xA0\x80"}), kFffd + kFffd + kFffd);  // surrogate
  EXPECT_EQ(stream_all({"\xC0\xAF"}), kFffd + kFffd);              // overlong
  EXPECT_EQ(stream_all({"\xF4\x90\x80\x80"}), kFffd + kFffd + kFffd + kFffd);
  EXPECT_EQ(stream_all({"a\xFF", "b"}), "a" + kFffd + "b");
  EXPECT_EQ(stream_all({"ok\xE2\x82"}), "ok" + kFffd);  // cut at the end: one replacement
}

namespace {

// A stand-in model for the decode loop: the next token after `t` is script[t % script.size()] (the
// prefill's next token is script[0]). Logits are one-hot-ish so greedy follows the script.
class ScriptedSession : public mv::qwen25vl::Session {
 public:
  explicit ScriptedSession(std::int64_t cap) : cap_(cap) {}
  std::int64_t length() const override { return len_; }
  std::int64_t capacity() const override { return cap_; }
  std::int64_t rope_delta() const override { return 0; }
  void reset() override { len_ = 0; }
  std::int64_t len_ = 0, cap_;
};

class ScriptedModel : public mv::qwen25vl::Model {
 public:
  explicit ScriptedModel(std::vector<std::int32_t> script) : script_(std::move(script)) {
    config_.text.vocab_size = 151936;
  }
  const mv::ModelConfig& config() const override { return config_; }
  std::unique_ptr<mv::qwen25vl::Session> new_session(std::int64_t max_tokens) const override {
    return std::make_unique<ScriptedSession>(max_tokens);
  }
  std::vector<float> encode_images(std::span<const mv::PixelValues>) override { return {}; }
  void prefill(mv::qwen25vl::Session& s, std::span<const std::int32_t> ids, std::span<const mv::PixelValues>,
               std::span<float> logits) override {
    prefill_with_features(s, ids, {}, {}, logits);
  }
  void prefill_with_features(mv::qwen25vl::Session& s, std::span<const std::int32_t> ids,
                             std::span<const std::array<std::int64_t, 3>>, std::span<const float>,
                             std::span<float> logits) override {
    auto& session = static_cast<ScriptedSession&>(s);
    session.len_ += static_cast<std::int64_t>(ids.size());
    ASSERT_LE(session.len_, session.cap_);
    step_ = 0;
    emit(logits);
  }
  void decode(mv::qwen25vl::Session& s, std::int32_t token, std::span<float> logits) override {
    auto& session = static_cast<ScriptedSession&>(s);
    ++session.len_;
    ASSERT_LE(session.len_, session.cap_);
    decoded.push_back(token);
    emit(logits);
  }
  std::vector<std::int32_t> decoded;

 protected:
  void emit(std::span<float> logits) {
    std::fill(logits.begin(), logits.end(), 0.0f);
    logits[static_cast<std::size_t>(script_[step_ % script_.size()])] = 10.0f;
    logits[7] = 9.0f;  // the runner-up, for the repetition-penalty test
    ++step_;
  }
  mv::ModelConfig config_;
  std::vector<std::int32_t> script_;
  std::size_t step_ = 0;
};

// The same script, picked "on the device": decode_batch_greedy returns the next token without logits.
class DeviceGreedyModel : public ScriptedModel {
 public:
  using ScriptedModel::ScriptedModel;
  bool greedy_on_device() const override { return true; }
  void decode_batch_greedy(std::span<mv::qwen25vl::Session* const> sessions,
                           std::span<const std::int32_t> tokens, std::span<std::int32_t> next) override {
    ASSERT_EQ(sessions.size(), 1u);
    ASSERT_EQ(next.size(), 1u);
    ++static_cast<ScriptedSession&>(*sessions[0]).len_;
    greedy_decoded.push_back(tokens[0]);
    next[0] = script_[step_ % script_.size()];
    ++step_;
  }
  std::vector<std::int32_t> greedy_decoded;
};

mv::Tokenizer& tokenizer() {
  static mv::Tokenizer tok = mv::Tokenizer::load(mv::default_tokenizer_json());
  return tok;
}

}  // namespace

TEST(Generator, StopsAtTheStopTokenAndStreamsText) {
  const auto& tok = tokenizer();
  // "é" as two byte-level tokens (0xC3 -> "Ã", 0xA9 -> "©"), then "ok", then <|im_end|>.
  const std::int32_t c3 = tok.token_id("\xC3\x83"), a9 = tok.token_id("\xC2\xA9"), ok = tok.token_id("ok");
  ASSERT_GE(c3, 0);
  ASSERT_GE(a9, 0);
  ASSERT_GE(ok, 0);
  ScriptedModel model({c3, a9, ok, 151645, ok});
  GenerateOptions opt;
  opt.max_new_tokens = 10;
  opt.keep_prompt_logits = true;
  std::vector<std::string> pieces;
  opt.on_text = [&](std::string_view p) { pieces.emplace_back(p); };
  const std::vector<std::int32_t> prompt{151644, 872, 198};
  const auto r = mv::qwen25vl::generate_from_ids(model, tok, prompt, {}, opt);
  EXPECT_EQ(r.generated_ids, (std::vector<std::int32_t>{c3, a9, ok, 151645}));
  EXPECT_EQ(r.finish_reason, "stop");
  EXPECT_EQ(r.text, "\xC3\xA9ok");
  EXPECT_EQ(pieces, (std::vector<std::string>{"\xC3\xA9", "ok"}));  // the half character was held back
  EXPECT_EQ(r.text, tok.decode(r.generated_ids, true));
  EXPECT_EQ(r.prompt_ids, prompt);
  ASSERT_EQ(r.prompt_logits.size(), 151936u);
  EXPECT_EQ(r.prompt_logits[static_cast<std::size_t>(c3)], 10.0f);
  EXPECT_EQ(model.decoded, (std::vector<std::int32_t>{c3, a9, ok}));  // no decode after the stop token
  EXPECT_EQ(r.timings.decode_steps, 3);
  EXPECT_EQ(r.timings.generated_tokens, 4);
  EXPECT_EQ(r.timings.prompt_tokens, 3);
  EXPECT_GT(r.timings.peak_rss_bytes, 0u);
}

TEST(Generator, IgnoreEosRunsToTheLimit) {
  const auto& tok = tokenizer();
  ScriptedModel model({151645, 151643});
  GenerateOptions opt;
  opt.max_new_tokens = 5;
  opt.ignore_eos = true;
  const auto r = mv::qwen25vl::generate_from_ids(model, tok, {151644}, {}, opt);
  EXPECT_EQ(r.generated_ids, (std::vector<std::int32_t>{151645, 151643, 151645, 151643, 151645}));
  EXPECT_EQ(r.finish_reason, "length");
  EXPECT_EQ(r.text, "");  // special tokens are not text
  EXPECT_EQ(model.decoded.size(), 4u);
}

TEST(Generator, RepetitionPenaltyCoversThePrompt) {
  const auto& tok = tokenizer();
  // The scripted favourite (id 5, logit 10) is in the prompt; penalty 2 makes it 5 < 9 (id 7).
  ScriptedModel model({5});
  GenerateOptions opt;
  opt.max_new_tokens = 1;
  opt.sampling.repetition_penalty = 2.0f;
  const auto r = mv::qwen25vl::generate_from_ids(model, tok, {5, 6}, {}, opt);
  EXPECT_EQ(r.generated_ids, (std::vector<std::int32_t>{7}));
}

TEST(Generator, RejectsImagePadMismatch) {
  const auto& tok = tokenizer();
  ScriptedModel model({1});
  GenerateOptions opt;
  EXPECT_THROW(mv::qwen25vl::generate_from_ids(model, tok, {151652, 151655, 151653}, {}, opt), mv::Error);
  opt.max_new_tokens = 0;
  EXPECT_THROW(mv::qwen25vl::generate_from_ids(model, tok, {1}, {}, opt), mv::Error);
}

TEST(Generator, GreedyPicksOnTheDeviceWhenTheEngineCan) {
  const auto& tok = tokenizer();
  const std::vector<std::int32_t> script{11, 12, 13, 151645};
  DeviceGreedyModel model(script);
  GenerateOptions opt;
  opt.max_new_tokens = 10;
  const auto r = mv::qwen25vl::generate_from_ids(model, tok, {151644}, {}, opt);
  EXPECT_EQ(r.generated_ids, script);  // the first token from the prefill logits, then the device's picks
  EXPECT_EQ(model.greedy_decoded, (std::vector<std::int32_t>{11, 12, 13}));
  EXPECT_TRUE(model.decoded.empty());  // no logits were downloaded
  EXPECT_EQ(r.timings.decode_steps, 3);
  EXPECT_EQ(r.finish_reason, "stop");

  // A repetition penalty or sampling needs the logits on the host: plain decode then.
  DeviceGreedyModel penalised(script);
  opt.sampling.repetition_penalty = 1.5f;
  const auto r2 = mv::qwen25vl::generate_from_ids(penalised, tok, {151644}, {}, opt);
  EXPECT_EQ(r2.generated_ids, script);
  EXPECT_TRUE(penalised.greedy_decoded.empty());
  EXPECT_EQ(penalised.decoded, (std::vector<std::int32_t>{11, 12, 13}));
  DeviceGreedyModel sampled(script);
  opt.sampling.repetition_penalty = 1.0f;
  opt.sampling.do_sample = true;
  opt.sampling.top_k = 1;
  const auto r3 = mv::qwen25vl::generate_from_ids(sampled, tok, {151644}, {}, opt);
  EXPECT_EQ(r3.generated_ids, script);
  EXPECT_TRUE(sampled.greedy_decoded.empty());
}
