// Device helpers shared by the CUDA kernels: warp reductions and the SwiGLU product. One definition,
// so that kernels which must give the same values (silu_mul and the GEMV's fused SwiGLU input) do.
#pragma once
#include <cuda_runtime.h>

namespace mv::cuda {

// Sum / maximum over the 32 lanes of a warp; every lane gets the result.
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// silu(g)·u as the reference computes it (g·sigmoid(g), then times u).
__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.0f + __expf(-g)) * u; }

}  // namespace mv::cuda
