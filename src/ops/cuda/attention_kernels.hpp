// The two prefill/vision attention kernels behind cuda::attention (attention_select.cpp chooses one).
// Both take AttnArgs as documented in cuda_ops.hpp and launch on stream `s`.
#pragma once
#include "ops/cuda/cuda_ops.hpp"

namespace mv::cuda::detail {

// WMMA kernel (attention.cu): any head dim up to 128, any alignment; scores and P in shared memory.
void attention_wmma(cudaStream_t s, const AttnArgs& a);
// Register-resident mma.sync kernel (attention_mma.cu): head dims that are multiples of 16 up to 128,
// 16-byte aligned rows (see attention_mma_supports). The caller checks support.
void attention_mma(cudaStream_t s, const AttnArgs& a);

}  // namespace mv::cuda::detail
