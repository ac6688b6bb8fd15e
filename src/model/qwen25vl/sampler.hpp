// Next-token selection with the semantics of transformers' generate(): the logits processors run in
// HF's order — repetition penalty → temperature → top-k → top-p — then greedy (argmax) or multinomial
// sampling with a seedable, platform-independent RNG. All buffers are allocated once, at construction:
// choosing a token allocates nothing.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "model/qwen25vl/rng.hpp"

namespace mv::qwen25vl {

struct SamplingParams {
  bool do_sample = false;           // false: greedy (argmax after the repetition penalty)
  float temperature = 1.0f;         // > 0; sampling only
  int top_k = 0;                    // 0 = off; sampling only
  float top_p = 1.0f;               // (0, 1]; 1 = off; sampling only
  float repetition_penalty = 1.0f;  // > 0; 1 = off; greedy and sampling
  std::uint64_t seed = 0;
  void validate() const;  // throws kUsage naming the bad value
};

class Sampler {
 public:
  Sampler(const SamplingParams& params, std::size_t vocab_size);
  const SamplingParams& params() const { return params_; }
  std::size_t vocab_size() const { return vocab_; }

  // Forgets the history and restarts the RNG from the seed.
  void reset();
  // Token ids that count for the repetition penalty (the prompt, then every chosen token). Ids outside
  // [0, vocab) are ignored (they cannot have a logit).
  void add_history(std::span<const std::int32_t> ids);
  void add_history(std::int32_t id);

  // Applies the processors to `logits` in place, exactly as HF's list for these params does:
  // filtered-out tokens become -inf. With do_sample == false only the repetition penalty runs.
  void process(std::span<float> logits);

  // process() then pick: argmax (first index on ties, like torch.argmax) or a draw from the softmax of
  // the processed logits. The chosen token joins the history. Throws kInternal when no logit is finite.
  std::int32_t sample(std::span<float> logits);

 private:
  void check_size(std::span<const float> logits) const;
  void apply_repetition_penalty(std::span<float> logits) const;
  void apply_top_k(std::span<float> logits);
  void apply_top_p(std::span<float> logits);
  std::int32_t argmax(std::span<const float> logits) const;
  std::int32_t draw(std::span<const float> logits);

  SamplingParams params_;
  std::size_t vocab_;
  std::vector<std::uint8_t> seen_;      // [vocab] 1 when the id is in the history
  std::vector<std::int32_t> seen_ids_;  // distinct history ids, capacity vocab
  std::vector<float> scratch_;          // [vocab] top-k selection
  std::vector<std::int32_t> order_;     // [vocab] top-p candidates
  std::vector<float> probs_;            // [vocab] softmax
  Xoshiro256 rng_;
};

}  // namespace mv::qwen25vl
