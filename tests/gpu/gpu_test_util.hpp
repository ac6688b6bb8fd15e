// Helpers shared by the GPU tests: the skip when no GPU is usable, bf16 rounding of test data, and device
// buffers from and to host vectors.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "common/bf16.hpp"
#include "model/qwen25vl/model.hpp"

#if MEDVISION_HAS_CUDA
#include "ops/cuda/cuda_ops.hpp"
#endif

#define SKIP_WITHOUT_GPU() \
  if (!mv::qwen25vl::cuda_available()) GTEST_SKIP() << "no usable GPU (or built without CUDA)"

namespace mv::test {

// f rounded to the nearest bf16 value (ties to even).
inline float bf16_round(float f) { return static_cast<float>(from_bf16(to_bf16(f))); }

// n values drawn from N(0, scale²), each rounded to bf16.
inline std::vector<float> random_bf16(std::size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = bf16_round(d(rng));
  return v;
}

#if MEDVISION_HAS_CUDA
inline std::vector<cuda::bf16> to_bf16(const std::vector<float>& v) {
  std::vector<cuda::bf16> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = __float2bfloat16(v[i]);
  return out;
}

inline std::vector<float> from_bf16(const std::vector<cuda::bf16>& v) {
  std::vector<float> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = __bfloat162float(v[i]);
  return out;
}

// A device buffer holding v (at least one byte, so an empty vector gives a valid buffer).
template <typename T>
cuda::Buffer upload(const std::vector<T>& v) {
  cuda::Buffer b(std::max<std::size_t>(v.size() * sizeof(T), 1));
  if (!v.empty())
    cuda::check(cudaMemcpy(b.data(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), "test upload");
  return b;
}

template <typename T>
std::vector<T> download(const cuda::Buffer& b, std::size_t n) {
  std::vector<T> v(n);
  if (n) cuda::check(cudaMemcpy(v.data(), b.data(), n * sizeof(T), cudaMemcpyDeviceToHost), "test download");
  return v;
}

// Mean milliseconds per call of fn over `reps` calls on the default stream, after one warm-up call (CUDA
// events; for the timing tests, which print and never assert).
template <typename F>
float time_ms(F&& fn, int reps) {
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  fn();
  cudaEventRecord(e0);
  for (int i = 0; i < reps; ++i) fn();
  cudaEventRecord(e1);
  cudaEventSynchronize(e1);
  float ms = 0;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return ms / static_cast<float>(reps);
}

// A sequence's KV cache in the engine's paged layout (cuda_ops.hpp), made from contiguous host caches
// k/v [layers][n_kv][cap][hd] (positions past cap are zero): its pages lie in one device buffer in a
// shuffled order, so a kernel that ignored the page table would read the wrong positions.
struct PagedCache {
  cuda::KvPageGeometry geo;
  cuda::Buffer pool;   // the pages
  cuda::Buffer table;  // device array of page addresses, in position order
  std::int64_t pages = 0;
  cuda::bf16* const* table_ptr() const { return table.as<cuda::bf16* const>(); }
};

inline PagedCache make_paged(const std::vector<float>& k, const std::vector<float>& v, int layers, int n_kv,
                             std::int64_t cap, int hd, std::mt19937& rng) {
  PagedCache c;
  c.geo = cuda::KvPageGeometry{layers, n_kv, hd};
  const std::int64_t P = cuda::kKvPageTokens;
  c.pages = std::max<std::int64_t>(1, (cap + P - 1) / P);
  const std::int64_t page_elems = 2 * c.geo.v_offset();
  std::vector<cuda::bf16> host(static_cast<std::size_t>(c.pages * page_elems), __float2bfloat16(0.0f));
  std::vector<std::int64_t> slot(static_cast<std::size_t>(c.pages));  // position page i → pool slot
  for (std::int64_t i = 0; i < c.pages; ++i) slot[static_cast<std::size_t>(i)] = i;
  std::shuffle(slot.begin(), slot.end(), rng);
  for (int l = 0; l < layers; ++l)
    for (int g = 0; g < n_kv; ++g)
      for (std::int64_t j = 0; j < cap; ++j)
        for (int d = 0; d < hd; ++d) {
          const std::size_t src = ((static_cast<std::size_t>(l) * n_kv + g) * cap + j) * hd + d;
          const std::int64_t base = slot[static_cast<std::size_t>(j / P)] * page_elems +
                                    ((static_cast<std::int64_t>(l) * n_kv + g) * P + j % P) * hd + d;
          host[static_cast<std::size_t>(base)] = __float2bfloat16(k[src]);
          host[static_cast<std::size_t>(base + c.geo.v_offset())] = __float2bfloat16(v[src]);
        }
  c.pool = upload(host);
  std::vector<cuda::bf16*> table(static_cast<std::size_t>(c.pages));
  for (std::int64_t i = 0; i < c.pages; ++i)
    table[static_cast<std::size_t>(i)] =
        c.pool.as<cuda::bf16>() + slot[static_cast<std::size_t>(i)] * page_elems;
  c.table = upload(table);
  return c;
}
#endif

}  // namespace mv::test
