// CUDA runtime helpers of the engine: error checks, counted device allocations, memory statistics.
#if MEDVISION_HAS_CUDA
#include <atomic>

#include "core/error.hpp"
#include "ops/cuda/cuda_ops.hpp"

namespace mv::cuda {

namespace {
std::atomic<std::uint64_t> g_allocated{0};
std::atomic<std::uint64_t> g_peak{0};
}  // namespace

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail(Errc::kInternal, "CUDA: {}: {}", what, cudaGetErrorString(e));
}

void check_launch(const char* what) { check(cudaGetLastError(), what); }

void Buffer::resize(std::size_t bytes) {
  release();
  if (bytes == 0) return;
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();
    fail(Errc::kTooLarge, "CUDA: cannot allocate {:.1f} MiB of device memory ({})",
         static_cast<double>(bytes) / (1 << 20), cudaGetErrorString(e));
  }
  p_ = p;
  n_ = bytes;
  const std::uint64_t now = g_allocated.fetch_add(bytes) + bytes;
  std::uint64_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
}

void Buffer::release() {
  if (p_) {
    cudaFree(p_);
    g_allocated.fetch_sub(n_);
  }
  p_ = nullptr;
  n_ = 0;
}

MemoryStats memory_stats() {
  MemoryStats m;
  m.allocated = g_allocated.load();
  m.peak_allocated = g_peak.load();
  std::size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
    m.device_total = total_b;
    m.device_used = total_b - free_b;
  }
  return m;
}

void reset_peak() { g_peak.store(g_allocated.load()); }

}  // namespace mv::cuda
#endif
