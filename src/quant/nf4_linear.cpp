#include "quant/nf4_linear.hpp"

#include <algorithm>

#include "core/error.hpp"

#if defined(__x86_64__) || defined(__i386__)
#define MV_NF4_X86 1
#include <immintrin.h>
#define MV_NF4_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define MV_NF4_X86 0
#endif

namespace mv::quant {
namespace {

template <int M>
void gemv_scalar(const float* x, const Nf4View& w, std::int64_t k, std::int64_t r0, std::int64_t r1,
                 const float* bias, float* y, std::int64_t ldy) {
  const float* code = w.code;
  for (std::int64_t r = r0; r < r1; ++r) {
    const std::int64_t begin = r * k, end = begin + k;
    float tot[M] = {};
    std::int64_t e = begin;
    while (e < end) {
      const std::int64_t b = e / w.blocksize, stop = std::min(end, (b + 1) * w.blocksize);
      float part[M] = {};
      for (; e < stop; ++e) {
        const float c = code[w.code_at(e)];
        for (int i = 0; i < M; ++i) part[i] += c * x[i * k + (e - begin)];
      }
      const float s = w.scale(b);
      for (int i = 0; i < M; ++i) tot[i] += part[i] * s;
    }
    for (int i = 0; i < M; ++i) y[i * ldy + r] = tot[i] + (bias ? bias[r] : 0.0f);
  }
}

#if MV_NF4_X86
MV_NF4_AVX2 inline __m256 lut8(__m256i idx, __m256 lo, __m256 hi) {
  const __m256 a = _mm256_permutevar8x32_ps(lo, idx);
  const __m256 b = _mm256_permutevar8x32_ps(hi, idx);
  return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

MV_NF4_AVX2 inline float hsum8(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  __m128 shuf = _mm_movehdup_ps(lo);
  __m128 sums = _mm_add_ps(lo, shuf);
  shuf = _mm_movehl_ps(shuf, sums);
  return _mm_cvtss_f32(_mm_add_ss(sums, shuf));
}

template <int M>
MV_NF4_AVX2 void gemv_avx2(const float* x, const Nf4View& w, std::int64_t k, std::int64_t r0, std::int64_t r1,
                           const float* bias, float* y, std::int64_t ldy) {
  const float* code = w.code;
  const __m256 tab_lo = _mm256_loadu_ps(code), tab_hi = _mm256_loadu_ps(code + 8);
  const __m128i low4 = _mm_set1_epi8(0x0f);
  for (std::int64_t r = r0; r < r1; ++r) {
    const std::int64_t begin = r * k, end = begin + k;
    __m256 tot[M];
    float tail[M];
    for (int i = 0; i < M; ++i) {
      tot[i] = _mm256_setzero_ps();
      tail[i] = 0.0f;
    }
    std::int64_t e = begin;
    while (e < end) {
      const std::int64_t b = e / w.blocksize, stop = std::min(end, (b + 1) * w.blocksize);
      __m256 part[M];
      float spart[M];
      for (int i = 0; i < M; ++i) {
        part[i] = _mm256_setzero_ps();
        spart[i] = 0.0f;
      }
      if (e & 1) {  // a row that starts in the low nibble (odd in_features)
        const float c = code[w.code_at(e)];
        for (int i = 0; i < M; ++i) spart[i] += c * x[i * k + (e - begin)];
        ++e;
      }
      for (; e + 16 <= stop; e += 16) {
        const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.packed + (e >> 1)));
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low4);
        const __m128i lo = _mm_and_si128(bytes, low4);
        const __m128i codes = _mm_unpacklo_epi8(hi, lo);  // element order: high nibble first
        const __m256 w0 = lut8(_mm256_cvtepu8_epi32(codes), tab_lo, tab_hi);
        const __m256 w1 = lut8(_mm256_cvtepu8_epi32(_mm_srli_si128(codes, 8)), tab_lo, tab_hi);
        const float* xo = x + (e - begin);
        for (int i = 0; i < M; ++i) {
          part[i] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xo + i * k), part[i]);
          part[i] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xo + i * k + 8), part[i]);
        }
      }
      for (; e < stop; ++e) {
        const float c = code[w.code_at(e)];
        for (int i = 0; i < M; ++i) spart[i] += c * x[i * k + (e - begin)];
      }
      const float s = w.scale(b);
      const __m256 sv = _mm256_set1_ps(s);
      for (int i = 0; i < M; ++i) {
        tot[i] = _mm256_fmadd_ps(part[i], sv, tot[i]);
        tail[i] += spart[i] * s;
      }
    }
    for (int i = 0; i < M; ++i) y[i * ldy + r] = hsum8(tot[i]) + tail[i] + (bias ? bias[r] : 0.0f);
  }
}
#endif

template <int M>
void gemv_m(const float* x, const Nf4View& w, std::int64_t k, std::int64_t r0, std::int64_t r1,
            const float* bias, float* y, std::int64_t ldy, bool simd) {
#if MV_NF4_X86
  if (simd) return gemv_avx2<M>(x, w, k, r0, r1, bias, y, ldy);
#endif
  gemv_scalar<M>(x, w, k, r0, r1, bias, y, ldy);
}

}  // namespace

void nf4_gemv_rows(const float* x, std::int64_t m, const Nf4View& w, std::int64_t k, std::int64_t r0,
                   std::int64_t r1, const float* bias, float* y, std::int64_t ldy, bool simd) {
  MV_CHECK(w.packed && w.code && k > 0 && r1 * k <= w.numel, "nf4_gemv_rows: bad view");
  switch (m) {
    case 1:
      return gemv_m<1>(x, w, k, r0, r1, bias, y, ldy, simd);
    case 2:
      return gemv_m<2>(x, w, k, r0, r1, bias, y, ldy, simd);
    case 3:
      return gemv_m<3>(x, w, k, r0, r1, bias, y, ldy, simd);
    case 4:
      return gemv_m<4>(x, w, k, r0, r1, bias, y, ldy, simd);
    default:
      MV_CHECK(false, "nf4_gemv_rows: m = {} (1..4)", m);
  }
}

}  // namespace mv::quant
