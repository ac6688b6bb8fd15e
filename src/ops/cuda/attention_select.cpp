// cuda::attention: argument checks and the choice between the mma.sync and WMMA kernels.
#if MEDVISION_HAS_CUDA
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "core/error.hpp"
#include "ops/cuda/attention_kernels.hpp"

namespace mv::cuda {

namespace {

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// MV_ATTN, read once: "" / "auto" → kAuto, "mma" → kMma, "wmma" → kWmma.
AttnKernel env_kernel() {
  static const AttnKernel k = [] {
    const char* v = std::getenv("MV_ATTN");
    const std::string_view s = v ? v : "";
    if (s.empty() || s == "auto") return AttnKernel::kAuto;
    if (s == "mma") return AttnKernel::kMma;
    if (s == "wmma") return AttnKernel::kWmma;
    fail(Errc::kUsage, "MV_ATTN='{}': unknown attention kernel (expected auto, mma or wmma)", s);
  }();
  return k;
}

}  // namespace

bool attention_mma_supports(const AttnArgs& a) {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return major >= 8 && a.hd >= 16 && a.hd <= 128 && a.hd % 16 == 0 && aligned16(a.q) && aligned16(a.k) &&
         aligned16(a.v) && aligned16(a.out) && a.q_stride % 8 == 0 && a.kv_head_stride % 8 == 0 &&
         a.kv_row_stride % 8 == 0 && a.out_stride % 8 == 0;
}

void attention(cudaStream_t s, const AttnArgs& a, AttnKernel kernel) {
  if (a.n_heads <= 0 || a.n_kv <= 0 || a.n_heads % a.n_kv != 0)
    fail(Errc::kInvalidInput, "attention: {} query heads cannot be grouped over {} kv heads", a.n_heads,
         a.n_kv);
  if (a.hd <= 0 || a.hd > 128) fail(Errc::kUnsupported, "attention: head_dim {} is not in 1..128", a.hd);
  if (a.n_items <= 0) return;
  if (kernel == AttnKernel::kAuto) kernel = env_kernel();
  if (kernel == AttnKernel::kAuto) kernel = attention_mma_supports(a) ? AttnKernel::kMma : AttnKernel::kWmma;
  if (kernel == AttnKernel::kMma) {
    if (!attention_mma_supports(a))
      fail(Errc::kUnsupported,
           "attention: the mma kernel needs an sm_80+ GPU, a head_dim that is a multiple of 16 up to 128 "
           "(got {}) and 16-byte aligned rows; unset MV_ATTN or set it to wmma",
           a.hd);
    detail::attention_mma(s, a);
  } else {
    detail::attention_wmma(s, a);
  }
}

}  // namespace mv::cuda
#endif
