// Internal helpers of the CPU ops: run-time SIMD dispatch, element conversions, per-thread scratch.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "io/safetensors.hpp"  // DType

#if defined(__x86_64__) || defined(__i386__)
#define MV_X86 1
#include <immintrin.h>
#define MV_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define MV_X86 0
#define MV_TARGET_AVX2
#endif

namespace mv::ops::cpu {

// True when AVX2+FMA+F16C are available and not disabled by set_force_scalar.
bool simd_enabled();

inline float bf16_bits_to_f32(std::uint16_t v) {
  const std::uint32_t bits = static_cast<std::uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float f16_bits_to_f32(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t man = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do {
        ++e;
        man <<= 1;
      } while ((man & 0x400u) == 0);
      man &= 0x3ffu;
      bits = sign | static_cast<std::uint32_t>(127 - 15 - e) << 23 | man << 13;
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | man << 13;  // inf / nan
  } else {
    bits = sign | (exp + 127 - 15) << 23 | man << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Bytes per element of F32/F16/BF16 (0 for other dtypes); local so ops do not need the io library.
inline std::size_t float_dtype_size(DType dt) {
  return dt == DType::kF32 ? 4 : (dt == DType::kF16 || dt == DType::kBF16) ? 2 : 0;
}

// exp(x) for n floats in place (accurate to a few ulp; SIMD when enabled).
void exp_inplace(float* x, std::int64_t n);

#if MV_X86
// bf16 (bf16 = true) or f16 bits to fp32 with AVX2/F16C; callers check simd_enabled() first.
MV_TARGET_AVX2 void convert_half_avx2(const std::uint16_t* s, bool bf16, std::int64_t n, float* dst);
#endif

// A per-thread growable buffer (one per slot and thread); grows geometrically and is never shrunk,
// so steady-state use allocates nothing.
float* thread_scratch(int slot, std::size_t floats);

// Sets the number of OpenBLAS threads to 1 once: all parallelism comes from the ThreadPool.
void init_blas_once();

}  // namespace mv::ops::cpu
