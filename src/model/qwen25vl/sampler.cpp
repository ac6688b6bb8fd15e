#include "model/qwen25vl/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.hpp"

namespace mv::qwen25vl {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
}

void SamplingParams::validate() const {
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty))
    fail(Errc::kUsage, "repetition penalty must be a finite number > 0, got {}", repetition_penalty);
  if (!do_sample) return;
  if (!(temperature > 0.0f) || !std::isfinite(temperature))
    fail(Errc::kUsage, "temperature must be a finite number > 0, got {} (use greedy decoding instead of 0)",
         temperature);
  if (top_k < 0) fail(Errc::kUsage, "top-k must be >= 0 (0 = off), got {}", top_k);
  if (!(top_p > 0.0f && top_p <= 1.0f)) fail(Errc::kUsage, "top-p must be in (0, 1], got {}", top_p);
}

Sampler::Sampler(const SamplingParams& params, std::size_t vocab_size)
    : params_(params), vocab_(vocab_size), rng_(params.seed) {
  params_.validate();
  if (vocab_ == 0 || vocab_ > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()))
    fail(Errc::kInvalidInput, "sampler: vocabulary size {} is out of range", vocab_);
  seen_.assign(vocab_, 0);
  seen_ids_.reserve(vocab_);
  if (params_.do_sample) {
    if (params_.top_k > 0 && static_cast<std::size_t>(params_.top_k) < vocab_) scratch_.resize(vocab_);
    if (params_.top_p < 1.0f) order_.resize(vocab_);
    probs_.resize(vocab_);
  }
}

void Sampler::reset() {
  for (std::int32_t id : seen_ids_) seen_[static_cast<std::size_t>(id)] = 0;
  seen_ids_.clear();
  rng_.reseed(params_.seed);
}

void Sampler::add_history(std::int32_t id) {
  if (id < 0 || static_cast<std::size_t>(id) >= vocab_) return;
  if (seen_[static_cast<std::size_t>(id)]) return;
  seen_[static_cast<std::size_t>(id)] = 1;
  seen_ids_.push_back(id);  // never reallocates: capacity is vocab and ids are distinct
}

void Sampler::add_history(std::span<const std::int32_t> ids) {
  for (std::int32_t id : ids) add_history(id);
}

void Sampler::check_size(std::span<const float> logits) const {
  if (logits.size() != vocab_)
    fail(Errc::kInternal, "sampler: got {} logits for a vocabulary of {}", logits.size(), vocab_);
}

// HF RepetitionPenaltyLogitsProcessor: for every id in the sequence, a negative logit is multiplied by
// the penalty, any other divided by it (so a penalty > 1 always makes a seen token less likely).
void Sampler::apply_repetition_penalty(std::span<float> logits) const {
  const float p = params_.repetition_penalty;
  if (p == 1.0f) return;
  for (std::int32_t id : seen_ids_) {
    float& v = logits[static_cast<std::size_t>(id)];
    v = v < 0.0f ? v * p : v / p;
  }
}

// HF TopKLogitsWarper: removes every logit strictly below the k-th largest, so ties with the k-th
// value are all kept.
void Sampler::apply_top_k(std::span<float> logits) {
  const std::size_t k = static_cast<std::size_t>(params_.top_k);
  if (k == 0 || k >= vocab_) return;
  std::copy(logits.begin(), logits.end(), scratch_.begin());
  std::nth_element(scratch_.begin(), scratch_.begin() + static_cast<std::ptrdiff_t>(k - 1), scratch_.end(),
                   std::greater<float>());
  const float threshold = scratch_[k - 1];
  for (float& v : logits)
    if (v < threshold) v = kNegInf;
}

// HF TopPLogitsWarper: with the tokens sorted by ascending logit and the cumulative softmax taken in
// that order, every token whose cumulative probability is <= 1 - top_p is removed; the most likely
// token always stays. Tokens whose probability is at most (1 - top_p) / V are certainly removed (all
// tokens at or below them add up to at most 1 - top_p), so only the others are sorted; the mass of the
// skipped ones starts the running sum.
void Sampler::apply_top_p(std::span<float> logits) {
  if (params_.top_p >= 1.0f) return;
  const float threshold = static_cast<float>(1.0 - static_cast<double>(params_.top_p));
  float max_logit = kNegInf;
  for (float v : logits) max_logit = std::max(max_logit, v);
  if (!std::isfinite(max_logit)) return;
  double sum = 0.0;
  for (std::size_t i = 0; i < vocab_; ++i) {
    const float e = logits[i] == kNegInf ? 0.0f : std::exp(logits[i] - max_logit);
    probs_[i] = e;
    sum += e;
  }
  const float inv = static_cast<float>(1.0 / sum);
  const float certain = threshold / static_cast<float>(vocab_);
  std::size_t n = 0;
  float skipped_mass = 0.0f;
  for (std::size_t i = 0; i < vocab_; ++i) {
    probs_[i] *= inv;
    if (probs_[i] > certain)
      order_[n++] = static_cast<std::int32_t>(i);
    else
      skipped_mass += probs_[i];
  }
  if (n == 0) return;  // cannot happen: the largest probability is >= 1/V > certain
  // Ascending by logit; among equal logits the higher id first, so the lowest id ranks as most likely
  // (the order argmax uses).
  std::sort(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(n),
            [&](std::int32_t a, std::int32_t b) {
              const float la = logits[static_cast<std::size_t>(a)], lb = logits[static_cast<std::size_t>(b)];
              return la < lb || (la == lb && a > b);
            });
  for (std::size_t i = 0; i < vocab_; ++i)
    if (probs_[i] <= certain) logits[i] = kNegInf;
  float cumulative = skipped_mass;
  for (std::size_t j = 0; j + 1 < n; ++j) {  // the last (most likely) token is always kept
    const std::size_t id = static_cast<std::size_t>(order_[j]);
    cumulative += probs_[id];
    if (cumulative <= threshold)
      logits[id] = kNegInf;
    else
      break;  // the running sum only grows: every later token is kept
  }
}

void Sampler::process(std::span<float> logits) {
  check_size(logits);
  apply_repetition_penalty(logits);
  if (!params_.do_sample) return;
  if (params_.temperature != 1.0f) {
    const float t = params_.temperature;
    for (float& v : logits) v /= t;
  }
  apply_top_k(logits);
  apply_top_p(logits);
}

std::int32_t Sampler::argmax(std::span<const float> logits) const {
  std::size_t best = vocab_;
  float best_v = kNegInf;
  for (std::size_t i = 0; i < vocab_; ++i) {
    const float v = logits[i];
    if (std::isnan(v)) fail(Errc::kInternal, "sampler: logit {} is NaN", i);
    if (v > best_v) {
      best = i;
      best_v = v;
    }
  }
  if (best == vocab_) fail(Errc::kInternal, "sampler: every logit is -inf");
  return static_cast<std::int32_t>(best);
}

std::int32_t Sampler::draw(std::span<const float> logits) {
  const std::int32_t top = argmax(logits);  // also rejects NaN / all -inf
  const float max_logit = logits[static_cast<std::size_t>(top)];
  double sum = 0.0;
  for (std::size_t i = 0; i < vocab_; ++i) {
    const float e = logits[i] == kNegInf ? 0.0f : std::exp(logits[i] - max_logit);
    probs_[i] = e;
    sum += e;
  }
  const double target = rng_.uniform() * sum;
  double acc = 0.0;
  std::size_t last_positive = static_cast<std::size_t>(top);
  for (std::size_t i = 0; i < vocab_; ++i) {
    if (probs_[i] <= 0.0f) continue;
    acc += probs_[i];
    last_positive = i;
    if (target < acc) return static_cast<std::int32_t>(i);
  }
  return static_cast<std::int32_t>(last_positive);  // rounding at the very top end
}

std::int32_t Sampler::sample(std::span<float> logits) {
  process(logits);
  const std::int32_t id = params_.do_sample ? draw(logits) : argmax(logits);
  add_history(id);
  return id;
}

}  // namespace mv::qwen25vl
