// GPU discovery for `medvision doctor`: properties, memory, versions, and a tiny kernel that proves
// the device runs code built by this binary.
#include <cuda_runtime.h>

#include <string>

#include "core/error.hpp"
#include "core/system_info.hpp"
#include "ops/cuda/cublaslt_api.hpp"

namespace mv {

namespace {

__global__ void saxpy_check_kernel(int n, float a, const float* x, float* y) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}

bool run_test_kernel() {
  constexpr int kN = 1000;
  float hx[kN], hy[kN];
  for (int i = 0; i < kN; ++i) {
    hx[i] = static_cast<float>(i % 17) - 8.0f;
    hy[i] = static_cast<float>(i % 5);
  }
  float *dx = nullptr, *dy = nullptr;
  bool ok = cudaMalloc(&dx, sizeof hx) == cudaSuccess && cudaMalloc(&dy, sizeof hy) == cudaSuccess &&
            cudaMemcpy(dx, hx, sizeof hx, cudaMemcpyHostToDevice) == cudaSuccess &&
            cudaMemcpy(dy, hy, sizeof hy, cudaMemcpyHostToDevice) == cudaSuccess;
  if (ok) {
    saxpy_check_kernel<<<(kN + 255) / 256, 256>>>(kN, 3.0f, dx, dy);
    ok = cudaGetLastError() == cudaSuccess && cudaDeviceSynchronize() == cudaSuccess;
  }
  float out[kN];
  ok = ok && cudaMemcpy(out, dy, sizeof out, cudaMemcpyDeviceToHost) == cudaSuccess;
  for (int i = 0; ok && i < kN; ++i) ok = out[i] == 3.0f * hx[i] + hy[i];
  cudaFree(dx);
  cudaFree(dy);
  return ok;
}

}  // namespace

GpuReport query_gpus() {
  GpuReport r;
  r.built_with_cuda = true;
  cudaRuntimeGetVersion(&r.runtime_version);
  cudaDriverGetVersion(&r.driver_version);
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    r.error = std::string("no usable GPU: ") + cudaGetErrorString(err);
    cudaGetLastError();
    return r;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    GpuInfo g;
    g.index = i;
    g.name = p.name;
    g.cc_major = p.major;
    g.cc_minor = p.minor;
    g.multiprocessors = p.multiProcessorCount;
    g.vram_total = p.totalGlobalMem;
    if (cudaSetDevice(i) == cudaSuccess) {
      size_t free_b = 0, total_b = 0;
      if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
        g.vram_free = free_b;
        g.vram_total = total_b;
      }
      g.kernel_ok = run_test_kernel();
      if (i == 0) {
        try {
          const std::size_t v = cuda::cublaslt().get_version();
          r.cublas_version = std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." +
                             std::to_string(v % 100);
        } catch (const Error&) {
          r.cublas_version = "not found";
        }
      }
    }
    r.gpus.push_back(g);
  }
  if (count == 0) r.error = "no GPU found";
  return r;
}

}  // namespace mv
