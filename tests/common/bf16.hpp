// bfloat16 encoding written out by its definition, independent of the library's conversions, for tests that
// build checkpoints or check kernels against it.
#pragma once
#include <cstdint>
#include <cstring>

namespace mv::test {

// Round-to-nearest-even fp32 -> bf16 bits.
inline std::uint16_t to_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

// bf16 bits -> their exact value.
inline double from_bf16(std::uint16_t b) {
  const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace mv::test
