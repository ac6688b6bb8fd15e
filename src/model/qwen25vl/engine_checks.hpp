// Argument checks shared by the CPU and CUDA engines (errors name the problem, never token content).
#pragma once
#include <cstdint>
#include <span>

#include "core/error.hpp"

namespace mv::qwen25vl {

inline void check_logits_size(std::span<const float> logits, std::int64_t vocab) {
  if (static_cast<std::int64_t>(logits.size()) < vocab)
    fail(Errc::kInvalidInput, "logits buffer holds {} floats, the vocabulary has {}", logits.size(), vocab);
}

inline void check_token_ids(std::span<const std::int32_t> ids, std::int64_t vocab) {
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab)
      fail(Errc::kInvalidInput, "token id {} at index {} is outside the vocabulary [0, {})", ids[i], i,
           vocab);
  }
}

}  // namespace mv::qwen25vl
