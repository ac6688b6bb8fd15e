// Linear layers on the CPU: y = x·Wᵀ + b with W in F32/F16/BF16 read in place.
//   * m <= kGemvMaxRows (decode): a threaded GEMV over output rows that converts weights on the fly
//     (AVX2/F16C when available, portable scalar otherwise); memory-bandwidth bound.
//   * more rows (prefill, vision): each task converts a panel of weight rows to fp32 in per-thread
//     scratch and calls single-threaded SGEMM on it; tasks run on the ThreadPool.
#include <cblas.h>

#include <algorithm>

#include "core/error.hpp"
#include "ops/cpu/simd.hpp"
#include "ops/ops.hpp"
#include "quant/nf4_linear.hpp"

namespace mv::ops {
namespace {

constexpr std::int64_t kGemvMaxRows = 4;
constexpr std::size_t kMaxJobs = 8;

void check_matrix(const Matrix& w) {
  MV_CHECK(w.data != nullptr && w.rows > 0 && w.cols > 0, "linear: empty weight");
  if (w.nf4) {
    MV_CHECK(w.nf4->numel == w.rows * w.cols, "linear: NF4 weight holds {} elements, not {}x{}", w.nf4->numel,
             w.rows, w.cols);
    return;
  }
  MV_CHECK(w.dtype == DType::kF32 || w.dtype == DType::kF16 || w.dtype == DType::kBF16,
           "linear: weight dtype #{} is not a float type", static_cast<int>(w.dtype));
}

// ---- GEMV (few rows) ------------------------------------------------------------------------------

// Rows [r0, r1) of W against the m inputs; writes y[i*ldy + r].
void gemv_scalar(const float* x, std::int64_t m, const Matrix& w, std::int64_t r0, std::int64_t r1,
                 const float* bias, float* y, std::int64_t ldy) {
  const std::int64_t k = w.cols;
  float* row = cpu::thread_scratch(1, static_cast<std::size_t>(k));
  for (std::int64_t r = r0; r < r1; ++r) {
    const float* wr;
    if (w.dtype == DType::kF32) {
      wr = static_cast<const float*>(w.data) + r * k;
    } else {
      const auto* s = static_cast<const std::uint16_t*>(w.data) + r * k;
      if (w.dtype == DType::kBF16) {
        for (std::int64_t c = 0; c < k; ++c) row[c] = cpu::bf16_bits_to_f32(s[c]);
      } else {
        for (std::int64_t c = 0; c < k; ++c) row[c] = cpu::f16_bits_to_f32(s[c]);
      }
      wr = row;
    }
    for (std::int64_t i = 0; i < m; ++i) {
      const float* xi = x + i * k;
      float acc[4] = {0, 0, 0, 0};
      std::int64_t c = 0;
      for (; c + 4 <= k; c += 4) {
        acc[0] += xi[c] * wr[c];
        acc[1] += xi[c + 1] * wr[c + 1];
        acc[2] += xi[c + 2] * wr[c + 2];
        acc[3] += xi[c + 3] * wr[c + 3];
      }
      for (; c < k; ++c) acc[0] += xi[c] * wr[c];
      float s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
      if (bias) s += bias[r];
      y[i * ldy + r] = s;
    }
  }
}

#if MV_X86
template <DType DT>
MV_TARGET_AVX2 static inline __m256 load8(const void* base, std::int64_t idx) {
  if constexpr (DT == DType::kF32) {
    return _mm256_loadu_ps(static_cast<const float*>(base) + idx);
  } else if constexpr (DT == DType::kBF16) {
    const __m128i raw =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const std::uint16_t*>(base) + idx));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
  } else {
    const __m128i raw =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const std::uint16_t*>(base) + idx));
    return _mm256_cvtph_ps(raw);
  }
}

template <DType DT>
static inline float load1(const void* base, std::int64_t idx) {
  if constexpr (DT == DType::kF32) {
    return static_cast<const float*>(base)[idx];
  } else if constexpr (DT == DType::kBF16) {
    return cpu::bf16_bits_to_f32(static_cast<const std::uint16_t*>(base)[idx]);
  } else {
    return cpu::f16_bits_to_f32(static_cast<const std::uint16_t*>(base)[idx]);
  }
}

MV_TARGET_AVX2 static inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  const __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 shuf = _mm_movehdup_ps(lo);
  __m128 sums = _mm_add_ps(lo, shuf);
  shuf = _mm_movehl_ps(shuf, sums);
  sums = _mm_add_ss(sums, shuf);
  return _mm_cvtss_f32(sums);
}

template <DType DT>
MV_TARGET_AVX2 void gemv_avx2(const float* x, std::int64_t m, const Matrix& w, std::int64_t r0,
                              std::int64_t r1, const float* bias, float* y, std::int64_t ldy) {
  const std::int64_t k = w.cols;
  constexpr std::size_t esize = DT == DType::kF32 ? 4 : 2;
  const auto* base = static_cast<const std::uint8_t*>(w.data);
  std::int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    const void* w0 = base + static_cast<std::size_t>(r * k) * esize;
    const void* w1 = base + static_cast<std::size_t>((r + 1) * k) * esize;
    const void* w2 = base + static_cast<std::size_t>((r + 2) * k) * esize;
    const void* w3 = base + static_cast<std::size_t>((r + 3) * k) * esize;
    for (std::int64_t i = 0; i < m; ++i) {
      const float* xi = x + i * k;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
             a3 = _mm256_setzero_ps();
      __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(), b2 = _mm256_setzero_ps(),
             b3 = _mm256_setzero_ps();
      std::int64_t c = 0;
      for (; c + 16 <= k; c += 16) {
        const __m256 x0 = _mm256_loadu_ps(xi + c);
        const __m256 x1 = _mm256_loadu_ps(xi + c + 8);
        a0 = _mm256_fmadd_ps(load8<DT>(w0, c), x0, a0);
        b0 = _mm256_fmadd_ps(load8<DT>(w0, c + 8), x1, b0);
        a1 = _mm256_fmadd_ps(load8<DT>(w1, c), x0, a1);
        b1 = _mm256_fmadd_ps(load8<DT>(w1, c + 8), x1, b1);
        a2 = _mm256_fmadd_ps(load8<DT>(w2, c), x0, a2);
        b2 = _mm256_fmadd_ps(load8<DT>(w2, c + 8), x1, b2);
        a3 = _mm256_fmadd_ps(load8<DT>(w3, c), x0, a3);
        b3 = _mm256_fmadd_ps(load8<DT>(w3, c + 8), x1, b3);
      }
      for (; c + 8 <= k; c += 8) {
        const __m256 x0 = _mm256_loadu_ps(xi + c);
        a0 = _mm256_fmadd_ps(load8<DT>(w0, c), x0, a0);
        a1 = _mm256_fmadd_ps(load8<DT>(w1, c), x0, a1);
        a2 = _mm256_fmadd_ps(load8<DT>(w2, c), x0, a2);
        a3 = _mm256_fmadd_ps(load8<DT>(w3, c), x0, a3);
      }
      float s0 = hsum(_mm256_add_ps(a0, b0)), s1 = hsum(_mm256_add_ps(a1, b1)),
            s2 = hsum(_mm256_add_ps(a2, b2)), s3 = hsum(_mm256_add_ps(a3, b3));
      for (; c < k; ++c) {
        s0 += xi[c] * load1<DT>(w0, c);
        s1 += xi[c] * load1<DT>(w1, c);
        s2 += xi[c] * load1<DT>(w2, c);
        s3 += xi[c] * load1<DT>(w3, c);
      }
      if (bias) {
        s0 += bias[r];
        s1 += bias[r + 1];
        s2 += bias[r + 2];
        s3 += bias[r + 3];
      }
      float* yi = y + i * ldy + r;
      yi[0] = s0;
      yi[1] = s1;
      yi[2] = s2;
      yi[3] = s3;
    }
  }
  for (; r < r1; ++r) {
    const void* w0 = base + static_cast<std::size_t>(r * k) * esize;
    for (std::int64_t i = 0; i < m; ++i) {
      const float* xi = x + i * k;
      __m256 a0 = _mm256_setzero_ps(), b0 = _mm256_setzero_ps();
      std::int64_t c = 0;
      for (; c + 16 <= k; c += 16) {
        a0 = _mm256_fmadd_ps(load8<DT>(w0, c), _mm256_loadu_ps(xi + c), a0);
        b0 = _mm256_fmadd_ps(load8<DT>(w0, c + 8), _mm256_loadu_ps(xi + c + 8), b0);
      }
      for (; c + 8 <= k; c += 8) a0 = _mm256_fmadd_ps(load8<DT>(w0, c), _mm256_loadu_ps(xi + c), a0);
      float s0 = hsum(_mm256_add_ps(a0, b0));
      for (; c < k; ++c) s0 += xi[c] * load1<DT>(w0, c);
      if (bias) s0 += bias[r];
      y[i * ldy + r] = s0;
    }
  }
}
#endif

void gemv_rows(const float* x, std::int64_t m, const Matrix& w, std::int64_t r0, std::int64_t r1,
               const float* bias, float* y) {
  const std::int64_t ldy = w.rows;
  if (w.nf4) return quant::nf4_gemv_rows(x, m, *w.nf4, w.cols, r0, r1, bias, y, ldy, cpu::simd_enabled());
#if MV_X86
  if (cpu::simd_enabled()) {
    switch (w.dtype) {
      case DType::kF32:
        return gemv_avx2<DType::kF32>(x, m, w, r0, r1, bias, y, ldy);
      case DType::kBF16:
        return gemv_avx2<DType::kBF16>(x, m, w, r0, r1, bias, y, ldy);
      case DType::kF16:
        return gemv_avx2<DType::kF16>(x, m, w, r0, r1, bias, y, ldy);
      default:
        break;
    }
  }
#endif
  gemv_scalar(x, m, w, r0, r1, bias, y, ldy);
}

// ---- SGEMM on converted panels (many rows) --------------------------------------------------------

std::int64_t panel_rows(const Matrix& w, int threads) {
  // ~2 MiB of fp32 per panel, and at least two panels per thread when the matrix allows it.
  std::int64_t nb = std::max<std::int64_t>(16, (std::int64_t{1} << 19) / w.cols);
  const std::int64_t per_thread = (w.rows + 2 * threads - 1) / (2 * threads);
  nb = std::min(nb, std::max<std::int64_t>(8, (per_thread + 7) / 8 * 8));
  return std::min(nb, w.rows);
}

void gemm_panel(const float* x, std::int64_t m, const LinearJob& job, std::int64_t j0, std::int64_t j1) {
  const Matrix& w = job.w;
  const std::int64_t k = w.cols, n = w.rows, nb = j1 - j0;
  const float* wp;
  if (w.nf4) {
    float* panel = cpu::thread_scratch(0, static_cast<std::size_t>(nb * k));
    quant::dequantize_range(*w.nf4, j0 * k, j1 * k, panel);
    wp = panel;
  } else if (w.dtype == DType::kF32) {
    wp = static_cast<const float*>(w.data) + j0 * k;
  } else {
    float* panel = cpu::thread_scratch(0, static_cast<std::size_t>(nb * k));
    convert_to_f32(static_cast<const std::uint16_t*>(w.data) + j0 * k, w.dtype, nb * k, panel);
    wp = panel;
  }
  float beta = 0.0f;
  if (job.bias) {
    for (std::int64_t i = 0; i < m; ++i) std::copy(job.bias + j0, job.bias + j1, job.y + i * n + j0);
    beta = 1.0f;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(nb),
              static_cast<int>(k), 1.0f, x, static_cast<int>(k), wp, static_cast<int>(k), beta, job.y + j0,
              static_cast<int>(n));
}

}  // namespace

void linear_multi(const float* x, std::int64_t m, std::span<const LinearJob> jobs, ThreadPool* pool) {
  if (m <= 0 || jobs.empty()) return;
  MV_CHECK(jobs.size() <= kMaxJobs, "linear_multi: {} jobs (max {})", jobs.size(), kMaxJobs);
  const std::int64_t k = jobs[0].w.cols;
  for (const auto& j : jobs) {
    check_matrix(j.w);
    MV_CHECK(j.w.cols == k, "linear_multi: in-features differ ({} vs {})", j.w.cols, k);
    MV_CHECK(j.y != nullptr && j.y != x, "linear_multi: bad output");
  }
  const int threads = pool ? pool->size() : 1;

  if (m <= kGemvMaxRows) {
    std::int64_t start[kMaxJobs + 1] = {0};
    for (std::size_t j = 0; j < jobs.size(); ++j) start[j + 1] = start[j] + jobs[j].w.rows;
    const std::int64_t total = start[jobs.size()];
    auto body = [&](std::int64_t b, std::int64_t e) {
      for (std::size_t j = 0; j < jobs.size() && b < e; ++j) {
        const std::int64_t lo = std::max(b, start[j]), hi = std::min(e, start[j + 1]);
        if (lo >= hi) continue;
        gemv_rows(x, m, jobs[j].w, lo - start[j], hi - start[j], jobs[j].bias, jobs[j].y);
      }
    };
    if (pool) {
      pool->parallel_for(total, body, 32);
    } else {
      body(0, total);
    }
    return;
  }

  cpu::init_blas_once();
  std::int64_t nb[kMaxJobs], start[kMaxJobs + 1] = {0};
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    nb[j] = panel_rows(jobs[j].w, threads);
    start[j + 1] = start[j] + (jobs[j].w.rows + nb[j] - 1) / nb[j];
  }
  auto body = [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t t = b; t < e; ++t) {
      std::size_t j = 0;
      while (t >= start[j + 1]) ++j;
      const std::int64_t p = t - start[j];
      const std::int64_t j0 = p * nb[j], j1 = std::min(jobs[j].w.rows, j0 + nb[j]);
      gemm_panel(x, m, jobs[j], j0, j1);
    }
  };
  const std::int64_t total = start[jobs.size()];
  if (pool) {
    pool->parallel_for(total, body, 1);
  } else {
    body(0, total);
  }
}

void linear(const float* x, std::int64_t m, const Matrix& w, const float* bias, float* y, ThreadPool* pool) {
  const LinearJob job{w, bias, y};
  linear_multi(x, m, std::span<const LinearJob>(&job, 1), pool);
}

void embedding(const Matrix& table, const std::int32_t* ids, std::int64_t n, float* out, ThreadPool* pool) {
  check_matrix(table);
  MV_CHECK(table.nf4 == nullptr, "embedding: an NF4 table is not supported");
  const std::size_t esize = cpu::float_dtype_size(table.dtype);
  auto body = [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) {
      const std::int64_t id = ids[i];
      MV_CHECK(id >= 0 && id < table.rows, "embedding: id {} out of range [0, {})", id, table.rows);
      const auto* src =
          static_cast<const std::uint8_t*>(table.data) + static_cast<std::size_t>(id * table.cols) * esize;
      convert_to_f32(src, table.dtype, table.cols, out + i * table.cols);
    }
  };
  if (pool) {
    pool->parallel_for(n, body, 16);
  } else {
    body(0, n);
  }
}

}  // namespace mv::ops
