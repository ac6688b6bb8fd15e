// Sampler: HF logits-processor semantics on hand-checked cases, and seeded determinism.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <vector>

#include "core/error.hpp"
#include "model/qwen25vl/sampler.hpp"

using mv::qwen25vl::Sampler;
using mv::qwen25vl::SamplingParams;

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Logits whose softmax is exactly proportional to `probs` (log of each).
std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(p > 0 ? static_cast<float>(std::log(p)) : kNegInf);
  return l;
}

std::vector<bool> kept(const std::vector<float>& l) {
  std::vector<bool> k;
  for (float v : l) k.push_back(v != kNegInf);
  return k;
}

SamplingParams sampling(float temperature = 1.0f, int top_k = 0, float top_p = 1.0f) {
  SamplingParams p;
  p.do_sample = true;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  return p;
}

}  // namespace

TEST(Sampler, GreedyPicksFirstMaximum) {
  Sampler s(SamplingParams{}, 5);
  std::vector<float> l{0.5f, 2.0f, -1.0f, 2.0f, 1.0f};
  EXPECT_EQ(s.sample(l), 1);  // tie between 1 and 3: the first, like torch.argmax
}

TEST(Sampler, GreedyIgnoresTemperatureTopKTopP) {
  SamplingParams p;
  p.do_sample = false;
  p.temperature = 0.5f;
  p.top_k = 1;
  p.top_p = 0.1f;
  Sampler s(p, 3);
  std::vector<float> l{1.0f, 3.0f, 2.0f};
  s.process(l);
  EXPECT_EQ(l, (std::vector<float>{1.0f, 3.0f, 2.0f}));
}

TEST(Sampler, RepetitionPenaltySigns) {
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  Sampler s(p, 6);
  const std::vector<std::int32_t> history{0, 1, 2, 2, 5};  // duplicates count once
  s.add_history(history);
  std::vector<float> l{4.0f, -4.0f, 0.0f, 3.0f, -3.0f, 1.0f};
  s.process(l);
  // positive / p, negative * p, zero stays zero; ids 3, 4 are not in the history.
  EXPECT_EQ(l, (std::vector<float>{2.0f, -8.0f, 0.0f, 3.0f, -3.0f, 0.5f}));
}

TEST(Sampler, RepetitionPenaltyChangesTheGreedyChoiceAndTracksOutput) {
  SamplingParams p;
  p.repetition_penalty = 1.5f;
  Sampler s(p, 3);
  std::vector<float> l{3.0f, 2.5f, 1.0f};
  EXPECT_EQ(s.sample(l), 0);  // nothing seen yet
  l = {3.0f, 2.5f, 1.0f};
  EXPECT_EQ(s.sample(l), 1);  // 3 / 1.5 = 2 < 2.5: the chosen token joined the history
  l = {3.0f, 2.5f, 1.0f};
  EXPECT_EQ(s.sample(l), 0);  // 2.0 vs 2.5 / 1.5
  s.reset();
  l = {3.0f, 2.5f, 1.0f};
  EXPECT_EQ(s.sample(l), 0);
}

TEST(Sampler, RepetitionPenaltyRunsBeforeTopK) {
  // Penalty first: 3 / 2 = 1.5 < 2.5, so top-1 keeps id 1. (Top-k first would keep id 0.)
  SamplingParams p = sampling(0.5f, 1);
  p.repetition_penalty = 2.0f;
  Sampler s(p, 3);
  s.add_history(0);
  std::vector<float> l{3.0f, 2.5f, -1.0f};
  s.process(l);
  EXPECT_EQ(kept(l), (std::vector<bool>{false, true, false}));
  EXPECT_FLOAT_EQ(l[1], 5.0f);  // and the temperature applied: 2.5 / 0.5
  std::vector<float> again{3.0f, 2.5f, -1.0f};
  EXPECT_EQ(s.sample(again), 1);
}

TEST(Sampler, TemperatureDivides) {
  Sampler s(sampling(0.25f), 3);
  std::vector<float> l{1.0f, -2.0f, 0.5f};
  s.process(l);
  EXPECT_EQ(l, (std::vector<float>{4.0f, -8.0f, 2.0f}));
}

TEST(Sampler, TopKKeepsTies) {
  Sampler s(sampling(1.0f, 2), 6);
  std::vector<float> l{1.0f, 5.0f, 3.0f, 3.0f, 0.0f, 3.0f};
  s.process(l);
  // k = 2: threshold is the 2nd largest (3.0); every logit equal to it stays.
  EXPECT_EQ(kept(l), (std::vector<bool>{false, true, true, true, false, true}));
  EXPECT_EQ(l[1], 5.0f);
}

TEST(Sampler, TopKLargerThanVocabKeepsAll) {
  Sampler s(sampling(1.0f, 10), 4);
  std::vector<float> l{1.0f, 2.0f, 3.0f, 4.0f};
  s.process(l);
  EXPECT_EQ(kept(l), (std::vector<bool>{true, true, true, true}));
}

TEST(Sampler, TopPBoundaries) {
  // probabilities 0.5, 0.3, 0.15, 0.05 (ids 2, 0, 3, 1)
  const std::vector<double> probs{0.3, 0.05, 0.5, 0.15};
  struct Case {
    float top_p;
    std::vector<bool> expect;
  };
  const std::vector<Case> cases{
      {0.49f, {false, false, true, false}},  // the top token alone crosses 0.49
      {0.51f, {true, false, true, false}},   // 0.5 < 0.51: the next token is needed (and kept)
      {0.79f, {true, false, true, false}},  {0.81f, {true, false, true, true}},
      {0.94f, {true, false, true, true}},   {0.96f, {true, true, true, true}},
      {1e-6f, {false, false, true, false}},  // the most likely token always stays
  };
  for (const auto& c : cases) {
    Sampler s(sampling(1.0f, 0, c.top_p), probs.size());
    std::vector<float> l = logits_of(probs);
    s.process(l);
    EXPECT_EQ(kept(l), c.expect) << "top_p " << c.top_p;
  }
}

TEST(Sampler, TopPAfterTopKAndTemperature) {
  // Logits 2, 1, 0, -1 at temperature 0.5 -> 4, 2, 0, -2; top-k 3 drops id 3; softmax of (4, 2, 0) is
  // (0.867, 0.117, 0.016): top-p 0.9 keeps ids 0 and 1, top-p 0.8 keeps id 0 only.
  {
    Sampler s(sampling(0.5f, 3, 0.9f), 4);
    std::vector<float> l{2.0f, 1.0f, 0.0f, -1.0f};
    s.process(l);
    EXPECT_EQ(kept(l), (std::vector<bool>{true, true, false, false}));
    EXPECT_FLOAT_EQ(l[0], 4.0f);
    EXPECT_FLOAT_EQ(l[1], 2.0f);
  }
  {
    Sampler s(sampling(0.5f, 3, 0.8f), 4);
    std::vector<float> l{2.0f, 1.0f, 0.0f, -1.0f};
    s.process(l);
    EXPECT_EQ(kept(l), (std::vector<bool>{true, false, false, false}));
  }
}

TEST(Sampler, TopPOverALargeFlatTail) {
  // One token with 0.4 and 10000 tokens sharing 0.6: top-p 0.5 keeps the first and ~1667 tail tokens
  // (0.4 + n * 0.00006 must pass 0.5: n = ceil(0.1 / 0.00006) = 1667, give or take float rounding).
  const std::size_t n = 10001;
  std::vector<double> probs(n, 0.6 / 10000);
  probs[0] = 0.4;
  Sampler s(sampling(1.0f, 0, 0.5f), n);
  std::vector<float> l = logits_of(probs);
  s.process(l);
  std::size_t count = 0;
  for (float v : l) count += v != kNegInf;
  EXPECT_TRUE(l[0] != kNegInf);
  EXPECT_NEAR(static_cast<double>(count), 1668.0, 3.0);
  // Among equal logits the lower ids are the ones kept.
  EXPECT_TRUE(l[1] != kNegInf);
  EXPECT_TRUE(l[n - 1] == kNegInf);
}

TEST(Sampler, SamplingFollowsTheDistribution) {
  Sampler s(sampling(), 3);
  std::map<int, int> counts;
  const int draws = 20000;
  for (int i = 0; i < draws; ++i) {
    std::vector<float> l = logits_of({0.2, 0.5, 0.3});
    ++counts[s.sample(l)];
  }
  EXPECT_NEAR(counts[0] / double(draws), 0.2, 0.015);
  EXPECT_NEAR(counts[1] / double(draws), 0.5, 0.015);
  EXPECT_NEAR(counts[2] / double(draws), 0.3, 0.015);
}

TEST(Sampler, SamplingNeverPicksFilteredTokens) {
  Sampler s(sampling(2.0f, 2), 5);
  for (int i = 0; i < 2000; ++i) {
    std::vector<float> l{0.0f, 1.0f, 0.9f, -5.0f, 0.95f};
    const int id = s.sample(l);
    EXPECT_TRUE(id == 1 || id == 4) << id;
  }
}

TEST(Sampler, SeedsAreDeterministic) {
  auto run = [](std::uint64_t seed) {
    SamplingParams p = sampling(1.0f, 0, 0.95f);
    p.seed = seed;
    p.repetition_penalty = 1.1f;
    Sampler s(p, 50);
    std::vector<std::int32_t> out;
    for (int i = 0; i < 200; ++i) {
      std::vector<float> l(50);
      for (int j = 0; j < 50; ++j) l[j] = static_cast<float>((j * 37 + i * 11) % 17) * 0.1f;
      out.push_back(s.sample(l));
    }
    return out;
  };
  const auto a = run(42), b = run(42), c = run(43);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  // reset() restarts the same stream.
  SamplingParams p = sampling();
  p.seed = 7;
  Sampler s(p, 4);
  std::vector<std::int32_t> first, second;
  for (int pass = 0; pass < 2; ++pass) {
    auto& out = pass == 0 ? first : second;
    for (int i = 0; i < 50; ++i) {
      std::vector<float> l{0.1f, 0.2f, 0.3f, 0.4f};
      out.push_back(s.sample(l));
    }
    s.reset();
  }
  EXPECT_EQ(first, second);
}

TEST(Sampler, XoshiroStreamIsFixed) {
  // Pins the generator so a seed means the same draws on every platform and in later versions.
  mv::qwen25vl::Xoshiro256 rng(0);
  const std::uint64_t a = rng.next(), b = rng.next();
  mv::qwen25vl::Xoshiro256 again(0);
  EXPECT_EQ(again.next(), a);
  EXPECT_EQ(again.next(), b);
  EXPECT_EQ(mv::qwen25vl::splitmix64_at(0, 0), 0xE220A8397B1DCDAFull);  // the reference SplitMix64 output
}

TEST(Sampler, RejectsBadParameters) {
  auto make = [](SamplingParams p) { Sampler s(p, 10); };
  SamplingParams p = sampling(0.0f);
  EXPECT_THROW(make(p), mv::Error);
  p = sampling(1.0f, -1);
  EXPECT_THROW(make(p), mv::Error);
  p = sampling(1.0f, 0, 0.0f);
  EXPECT_THROW(make(p), mv::Error);
  p = sampling(1.0f, 0, 1.5f);
  EXPECT_THROW(make(p), mv::Error);
  p = SamplingParams{};
  p.repetition_penalty = 0.0f;
  EXPECT_THROW(make(p), mv::Error);
  try {
    make(sampling(-1.0f));
  } catch (const mv::Error& e) {
    EXPECT_EQ(e.code(), mv::Errc::kUsage);
  }
}

TEST(Sampler, RejectsBadLogits) {
  Sampler s(SamplingParams{}, 3);
  std::vector<float> wrong_size(4, 0.0f);
  EXPECT_THROW(s.sample(wrong_size), mv::Error);
  std::vector<float> nan{0.0f, std::numeric_limits<float>::quiet_NaN(), 1.0f};
  EXPECT_THROW(s.sample(nan), mv::Error);
  std::vector<float> none{kNegInf, kNegInf, kNegInf};
  EXPECT_THROW(s.sample(none), mv::Error);
}

TEST(Sampler, HistoryIgnoresOutOfRangeIds) {
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  Sampler s(p, 3);
  const std::vector<std::int32_t> ids{-1, 3, 151655, 1};
  s.add_history(ids);
  std::vector<float> l{1.0f, 1.0f, 1.0f};
  s.process(l);
  EXPECT_EQ(l, (std::vector<float>{1.0f, 0.5f, 1.0f}));
}
