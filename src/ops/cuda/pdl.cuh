// Programmatic dependent launch (Hopper and later): a kernel launched with launch_pdl() may start while
// the previous kernel of its stream is still running; it must call pdl_wait() before it reads anything
// that kernel writes (or writes anything that kernel reads), and may do independent work before (the
// decode GEMV loads its first weights). Kernels call pdl_trigger() once every block has started the part
// that the next kernel does not depend on, letting that kernel's blocks take the multiprocessors they
// free. On older GPUs, or with MV_PDL=0, launch_pdl() is an ordinary launch and both calls do nothing.
#pragma once
#include <cuda_runtime.h>

namespace mv::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// True when the current device runs programmatic dependent launches (compute capability 9.0 or later)
// and MV_PDL is not 0.
bool pdl_enabled();

template <typename... KArgs, typename... Args>
void launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, std::size_t smem, cudaStream_t s,
                Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...);
}

}  // namespace mv::cuda
