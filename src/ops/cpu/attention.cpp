// Attention on the CPU: blocks of up to kQueryBlock query rows of one head against keys in chunks of
// kKeyChunk, with an online (streaming) softmax, so memory does not grow with the sequence length.
// Scores and the value accumulation use single-threaded SGEMM; (head, query block) tasks run on the
// ThreadPool.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.hpp"
#include "ops/cpu/simd.hpp"
#include "ops/ops.hpp"

namespace mv::ops {
namespace {

constexpr int kQueryBlock = 64;
constexpr int kKeyChunk = 256;

// R query rows (stride ldq) attend keys [0, key_end[r]) (all `keys` when key_end is null); keys and
// values are rows of head_dim floats at strides ldk / ldv. Writes R rows of head_dim at stride ldo.
void attend(const float* q, std::int64_t ldq, int R, int hd, const float* k, std::int64_t ldk, const float* v,
            std::int64_t ldv, std::int64_t keys, const std::int64_t* key_end, float scale, float* out,
            std::int64_t ldo) {
  float* s = cpu::thread_scratch(2, static_cast<std::size_t>(R) * kKeyChunk);
  float* acc = cpu::thread_scratch(3, static_cast<std::size_t>(R) * hd);
  float* stats = cpu::thread_scratch(4, static_cast<std::size_t>(R) * 2);
  float* mx = stats;
  float* sum = stats + R;
  const float kNegInf = -std::numeric_limits<float>::infinity();
  std::fill(acc, acc + static_cast<std::size_t>(R) * hd, 0.0f);
  std::fill(mx, mx + R, kNegInf);
  std::fill(sum, sum + R, 0.0f);

  std::int64_t limit = keys;
  if (key_end) {
    limit = 0;
    for (int r = 0; r < R; ++r) limit = std::max(limit, key_end[r]);
  }
  for (std::int64_t c0 = 0; c0 < limit; c0 += kKeyChunk) {
    const int kc = static_cast<int>(std::min<std::int64_t>(kKeyChunk, limit - c0));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, kc, hd, scale, q, static_cast<int>(ldq),
                k + c0 * ldk, static_cast<int>(ldk), 0.0f, s, kKeyChunk);
    for (int r = 0; r < R; ++r) {
      float* sr = s + static_cast<std::size_t>(r) * kKeyChunk;
      int valid = kc;
      if (key_end) valid = static_cast<int>(std::clamp<std::int64_t>(key_end[r] - c0, 0, kc));
      if (valid == 0) {
        std::fill(sr, sr + kc, 0.0f);
        continue;
      }
      float row_max = kNegInf;
      for (int j = 0; j < valid; ++j) row_max = std::max(row_max, sr[j]);
      const float m_new = std::max(mx[r], row_max);
      const float corr = mx[r] == kNegInf ? 0.0f : std::exp(mx[r] - m_new);
      for (int j = 0; j < valid; ++j) sr[j] -= m_new;
      cpu::exp_inplace(sr, valid);
      std::fill(sr + valid, sr + kc, 0.0f);
      float rs = 0.0f;
      for (int j = 0; j < valid; ++j) rs += sr[j];
      sum[r] = sum[r] * corr + rs;
      mx[r] = m_new;
      if (corr != 1.0f) {
        float* ar = acc + static_cast<std::size_t>(r) * hd;
        for (int d = 0; d < hd; ++d) ar[d] *= corr;
      }
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, hd, kc, 1.0f, s, kKeyChunk, v + c0 * ldv,
                static_cast<int>(ldv), 1.0f, acc, hd);
  }
  for (int r = 0; r < R; ++r) {
    const float inv = sum[r] > 0.0f ? 1.0f / sum[r] : 0.0f;
    const float* ar = acc + static_cast<std::size_t>(r) * hd;
    float* o = out + r * ldo;
    for (int d = 0; d < hd; ++d) o[d] = ar[d] * inv;
  }
}

template <typename F>
void run(ThreadPool* pool, std::int64_t n, F&& body) {
  if (pool) {
    pool->parallel_for(n, body, 1);
  } else if (n > 0) {
    body(std::int64_t{0}, n);
  }
}

}  // namespace

void reserve_decode_scratch(ThreadPool* pool, std::int64_t max_cols, int head_dim) {
  auto reserve = [&] {
    cpu::thread_scratch(1, static_cast<std::size_t>(max_cols));
    cpu::thread_scratch(2, static_cast<std::size_t>(kQueryBlock) * kKeyChunk);
    cpu::thread_scratch(3, static_cast<std::size_t>(kQueryBlock) * head_dim);
    cpu::thread_scratch(4, static_cast<std::size_t>(kQueryBlock) * 2);
  };
  if (pool == nullptr) {
    reserve();
  } else {
    pool->for_each_thread(reserve);
  }
}

void attention_causal(const float* q, std::int64_t m, std::int64_t q_stride, int n_heads, int n_kv_heads,
                      int head_dim, const float* k_cache, const float* v_cache,
                      std::int64_t cache_head_stride, std::int64_t past, float* out, std::int64_t out_stride,
                      ThreadPool* pool) {
  MV_CHECK(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0, "attention: heads {} / kv heads {}",
           n_heads, n_kv_heads);
  if (m <= 0) return;
  cpu::init_blas_once();
  const int group = n_heads / n_kv_heads;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  const std::int64_t blocks = (m + kQueryBlock - 1) / kQueryBlock;
  run(pool, blocks * n_heads, [&](std::int64_t b, std::int64_t e) {
    std::int64_t key_end[kQueryBlock];
    for (std::int64_t t = b; t < e; ++t) {
      const int h = static_cast<int>(t % n_heads);
      const std::int64_t i0 = (t / n_heads) * kQueryBlock;
      const int R = static_cast<int>(std::min<std::int64_t>(kQueryBlock, m - i0));
      for (int r = 0; r < R; ++r) key_end[r] = past + i0 + r + 1;
      const int g = h / group;
      attend(q + i0 * q_stride + static_cast<std::int64_t>(h) * head_dim, q_stride, R, head_dim,
             k_cache + g * cache_head_stride, head_dim, v_cache + g * cache_head_stride, head_dim,
             past + i0 + R, key_end, scale, out + i0 * out_stride + static_cast<std::int64_t>(h) * head_dim,
             out_stride);
    }
  });
}

void attention_varlen(const float* q, const float* k, const float* v, std::int64_t stride, int n_heads,
                      int head_dim, std::span<const std::int64_t> cu_seqlens, float* out,
                      std::int64_t out_stride, ThreadPool* pool) {
  MV_CHECK(cu_seqlens.size() >= 1 && cu_seqlens[0] == 0, "attention_varlen: cu_seqlens must start at 0");
  const std::size_t segments = cu_seqlens.size() - 1;
  std::vector<std::int64_t> first_block(segments + 1, 0);
  for (std::size_t s = 0; s < segments; ++s) {
    const std::int64_t len = cu_seqlens[s + 1] - cu_seqlens[s];
    MV_CHECK(len >= 0, "attention_varlen: cu_seqlens not increasing at {}", s);
    first_block[s + 1] = first_block[s] + (len + kQueryBlock - 1) / kQueryBlock;
  }
  cpu::init_blas_once();
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  const std::int64_t blocks = first_block[segments];
  run(pool, blocks * n_heads, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t t = b; t < e; ++t) {
      const int h = static_cast<int>(t % n_heads);
      const std::int64_t blk = t / n_heads;
      const auto seg = static_cast<std::size_t>(
          std::upper_bound(first_block.begin(), first_block.end(), blk) - first_block.begin() - 1);
      const std::int64_t s0 = cu_seqlens[seg], s1 = cu_seqlens[seg + 1];
      const std::int64_t i0 = s0 + (blk - first_block[seg]) * kQueryBlock;
      const int R = static_cast<int>(std::min<std::int64_t>(kQueryBlock, s1 - i0));
      const std::int64_t hoff = static_cast<std::int64_t>(h) * head_dim;
      attend(q + i0 * stride + hoff, stride, R, head_dim, k + s0 * stride + hoff, stride,
             v + s0 * stride + hoff, stride, s1 - s0, nullptr, scale, out + i0 * out_stride + hoff,
             out_stride);
    }
  });
}

}  // namespace mv::ops
