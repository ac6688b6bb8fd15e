// Helpers shared by the GPU tests: the skip when no GPU is usable, bf16 rounding of test data, and device
// buffers from and to host vectors.
#pragma once
#include <algorithm>
#include <cstddef>
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
#endif

}  // namespace mv::test
