// CPU op helpers: SIMD dispatch, vector exp, conversions, per-thread scratch, BLAS threading.
#include <cblas.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <mutex>

#include "core/error.hpp"
#include "ops/cpu/simd.hpp"
#include "ops/ops.hpp"

namespace mv::ops {
namespace cpu {

namespace {

bool detect_simd() {
#if MV_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

const bool g_has_simd = detect_simd();
std::atomic<bool> g_force_scalar{false};

#if MV_X86
MV_TARGET_AVX2 void exp_avx2(float* x, std::int64_t n) {
  const __m256 kHi = _mm256_set1_ps(88.3762626647949f);
  const __m256 kLo = _mm256_set1_ps(-87.33654475f);  // below: result 0 (ln of the smallest normal)
  const __m256 kLog2e = _mm256_set1_ps(1.44269504088896341f);
  const __m256 kC1 = _mm256_set1_ps(0.693359375f);
  const __m256 kC2 = _mm256_set1_ps(-2.12194440e-4f);
  const __m256 kHalf = _mm256_set1_ps(0.5f);
  const __m256 kOne = _mm256_set1_ps(1.0f);
  const __m256 p0 = _mm256_set1_ps(1.9875691500e-4f);
  const __m256 p1 = _mm256_set1_ps(1.3981999507e-3f);
  const __m256 p2 = _mm256_set1_ps(8.3334519073e-3f);
  const __m256 p3 = _mm256_set1_ps(4.1665795894e-2f);
  const __m256 p4 = _mm256_set1_ps(1.6666665459e-1f);
  const __m256 p5 = _mm256_set1_ps(5.0000001201e-1f);
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    const __m256 under = _mm256_cmp_ps(v, kLo, _CMP_LT_OQ);
    v = _mm256_min_ps(v, kHi);
    v = _mm256_max_ps(v, kLo);
    __m256 fx = _mm256_fmadd_ps(v, kLog2e, kHalf);
    fx = _mm256_floor_ps(fx);
    v = _mm256_fnmadd_ps(fx, kC1, v);
    v = _mm256_fnmadd_ps(fx, kC2, v);
    const __m256 z = _mm256_mul_ps(v, v);
    __m256 y = p0;
    y = _mm256_fmadd_ps(y, v, p1);
    y = _mm256_fmadd_ps(y, v, p2);
    y = _mm256_fmadd_ps(y, v, p3);
    y = _mm256_fmadd_ps(y, v, p4);
    y = _mm256_fmadd_ps(y, v, p5);
    y = _mm256_fmadd_ps(y, z, v);
    y = _mm256_add_ps(y, kOne);
    __m256i e = _mm256_cvttps_epi32(fx);
    e = _mm256_add_epi32(e, _mm256_set1_epi32(127));
    e = _mm256_slli_epi32(e, 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    y = _mm256_andnot_ps(under, y);
    _mm256_storeu_ps(x + i, y);
  }
  for (; i < n; ++i) x[i] = std::exp(x[i]);
}
#endif

}  // namespace

bool simd_enabled() { return g_has_simd && !g_force_scalar.load(std::memory_order_relaxed); }

void exp_inplace(float* x, std::int64_t n) {
#if MV_X86
  if (simd_enabled()) {
    exp_avx2(x, n);
    return;
  }
#endif
  for (std::int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}

#if MV_X86
MV_TARGET_AVX2 void convert_half_avx2(const std::uint16_t* s, bool bf16, std::int64_t n, float* dst) {
  std::int64_t i = 0;
  if (bf16) {
    for (; i + 8 <= n; i += 8) {
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
      _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16)));
    }
    for (; i < n; ++i) dst[i] = bf16_bits_to_f32(s[i]);
  } else {
    for (; i + 8 <= n; i += 8) {
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(raw));
    }
    for (; i < n; ++i) dst[i] = f16_bits_to_f32(s[i]);
  }
}
#endif

float* thread_scratch(int slot, std::size_t floats) {
  constexpr int kSlots = 8;
  thread_local std::array<std::vector<float>, kSlots> buffers;
  MV_CHECK(slot >= 0 && slot < kSlots, "scratch slot {}", slot);
  auto& b = buffers[static_cast<std::size_t>(slot)];
  if (b.size() < floats) b.resize(std::max(floats, b.size() * 2));
  return b.data();
}

void init_blas_once() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

}  // namespace cpu

bool cpu_has_simd() { return cpu::simd_enabled(); }

bool set_force_scalar(bool force) { return cpu::g_force_scalar.exchange(force); }

void convert_to_f32(const void* src, DType dtype, std::int64_t n, float* dst) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<std::size_t>(n) * 4);
      return;
    case DType::kBF16:
    case DType::kF16: {
      const auto* s = static_cast<const std::uint16_t*>(src);
#if MV_X86
      if (cpu::simd_enabled()) {
        cpu::convert_half_avx2(s, dtype == DType::kBF16, n, dst);
        return;
      }
#endif
      if (dtype == DType::kBF16) {
        for (std::int64_t i = 0; i < n; ++i) dst[i] = cpu::bf16_bits_to_f32(s[i]);
      } else {
        for (std::int64_t i = 0; i < n; ++i) dst[i] = cpu::f16_bits_to_f32(s[i]);
      }
      return;
    }
    default:
      fail(Errc::kUnsupported, "convert_to_f32: dtype #{} is not a float type", static_cast<int>(dtype));
  }
}

}  // namespace mv::ops
