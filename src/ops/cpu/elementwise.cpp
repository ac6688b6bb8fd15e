// Row-wise and element-wise CPU ops: RMSNorm, SwiGLU, GELU, add, softmax, rotary, M-RoPE tables.
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.hpp"
#include "ops/cpu/simd.hpp"
#include "ops/ops.hpp"

namespace mv::ops {
namespace {

template <typename F>
void run(ThreadPool* pool, std::int64_t n, std::int64_t grain, F&& body) {
  if (pool) {
    pool->parallel_for(n, body, grain);
  } else if (n > 0) {
    body(std::int64_t{0}, n);
  }
}

}  // namespace

void rms_norm(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps, float* y,
              ThreadPool* pool) {
  run(pool, rows, 8, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t r = b; r < e; ++r) {
      const float* xr = x + r * dim;
      float* yr = y + r * dim;
      double ss = 0.0;
      for (std::int64_t i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
      const float var = static_cast<float>(ss / static_cast<double>(dim));
      const float inv = static_cast<float>(1.0 / std::sqrt(static_cast<double>(var + eps)));
      for (std::int64_t i = 0; i < dim; ++i) yr[i] = weight[i] * (xr[i] * inv);
    }
  });
}

void silu_mul(const float* gate, const float* up, float* out, std::int64_t n, ThreadPool* pool) {
  constexpr std::int64_t kBlock = 512;
  run(pool, (n + kBlock - 1) / kBlock, 4, [&](std::int64_t b, std::int64_t e) {
    float t[kBlock];
    for (std::int64_t blk = b; blk < e; ++blk) {
      const std::int64_t i0 = blk * kBlock, len = std::min(kBlock, n - i0);
      for (std::int64_t i = 0; i < len; ++i) t[i] = -gate[i0 + i];
      cpu::exp_inplace(t, len);
      for (std::int64_t i = 0; i < len; ++i) {
        const float g = gate[i0 + i];
        out[i0 + i] = g / (1.0f + t[i]) * up[i0 + i];
      }
    }
  });
}

void gelu(float* x, std::int64_t n, ThreadPool* pool) {
  run(pool, n, 4096, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) {
      const double v = x[i];
      x[i] = static_cast<float>(0.5 * v * (1.0 + std::erf(v * 0.70710678118654752440)));
    }
  });
}

void add(float* y, const float* x, std::int64_t n, ThreadPool* pool) {
  run(pool, n, 1 << 14, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) y[i] += x[i];
  });
}

void softmax(float* x, std::int64_t rows, std::int64_t cols, ThreadPool* pool) {
  run(pool, rows, 4, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t r = b; r < e; ++r) {
      float* xr = x + r * cols;
      float mx = -std::numeric_limits<float>::infinity();
      for (std::int64_t i = 0; i < cols; ++i) mx = std::max(mx, xr[i]);
      if (mx == -std::numeric_limits<float>::infinity()) {  // fully masked row
        for (std::int64_t i = 0; i < cols; ++i) xr[i] = 0.0f;
        continue;
      }
      for (std::int64_t i = 0; i < cols; ++i) xr[i] -= mx;
      cpu::exp_inplace(xr, cols);
      double s = 0.0;
      for (std::int64_t i = 0; i < cols; ++i) s += xr[i];
      const float inv = static_cast<float>(1.0 / s);
      for (std::int64_t i = 0; i < cols; ++i) xr[i] *= inv;
    }
  });
}

void rotary(float* x, std::int64_t rows, std::int64_t row_stride, int heads, int head_dim, const float* cos,
            const float* sin, ThreadPool* pool) {
  MV_CHECK(head_dim % 2 == 0, "rotary: odd head_dim {}", head_dim);
  const int half = head_dim / 2;
  run(pool, rows, 16, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t r = b; r < e; ++r) {
      const float* c = cos + r * half;
      const float* s = sin + r * half;
      for (int h = 0; h < heads; ++h) {
        float* v = x + r * row_stride + static_cast<std::int64_t>(h) * head_dim;
        for (int j = 0; j < half; ++j) {
          const float a = v[j], bb = v[j + half];
          v[j] = a * c[j] - bb * s[j];
          v[j + half] = bb * c[j] + a * s[j];
        }
      }
    }
  });
}

void mrope_tables(const std::int64_t* t, const std::int64_t* h, const std::int64_t* w, std::int64_t rows,
                  int head_dim, double theta, const int sections[3], float* cos, float* sin) {
  const int half = head_dim / 2;
  MV_CHECK(head_dim % 2 == 0 && sections[0] >= 0 && sections[1] >= 0 && sections[2] >= 0 &&
               sections[0] + sections[1] + sections[2] == half,
           "mrope_tables: sections [{}, {}, {}] do not sum to head_dim/2 = {}", sections[0], sections[1],
           sections[2], half);
  // inv_freq in float32 as the reference computes it: 1 / theta^(float(2j)/head_dim).
  float inv_freq[1024];
  MV_CHECK(half <= 1024, "mrope_tables: head_dim {} too large", head_dim);
  for (int j = 0; j < half; ++j) {
    const float expo = static_cast<float>(2 * j) / static_cast<float>(head_dim);
    inv_freq[j] = 1.0f / std::pow(static_cast<float>(theta), expo);
  }
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t p[3] = {t[r], h[r], w[r]};
    int stream = 0, end = sections[0];
    for (int j = 0; j < half; ++j) {
      while (j >= end && stream < 2) end += sections[++stream];
      const float angle = static_cast<float>(p[stream]) * inv_freq[j];
      cos[r * half + j] = static_cast<float>(std::cos(static_cast<double>(angle)));
      sin[r * half + j] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
}

}  // namespace mv::ops
