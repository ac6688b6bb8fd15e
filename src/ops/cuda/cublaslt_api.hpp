#pragma once
// cuBLASLt, opened on first use instead of linked: the library's static initialisation costs about half a
// second at every process start (measured with perf on `medvision --version`), and most commands never
// touch the GPU. Only the entry points the engine calls are resolved.
#include <cublasLt.h>

namespace mv::cuda {

struct CublasLtApi {
  decltype(&::cublasLtCreate) create = nullptr;
  decltype(&::cublasLtDestroy) destroy = nullptr;
  decltype(&::cublasLtGetVersion) get_version = nullptr;
  decltype(&::cublasLtMatmul) matmul = nullptr;
  decltype(&::cublasLtMatmulAlgoGetHeuristic) algo_get_heuristic = nullptr;
  decltype(&::cublasLtMatmulDescCreate) desc_create = nullptr;
  decltype(&::cublasLtMatmulDescDestroy) desc_destroy = nullptr;
  decltype(&::cublasLtMatmulDescSetAttribute) desc_set_attribute = nullptr;
  decltype(&::cublasLtMatmulPreferenceCreate) preference_create = nullptr;
  decltype(&::cublasLtMatmulPreferenceDestroy) preference_destroy = nullptr;
  decltype(&::cublasLtMatmulPreferenceSetAttribute) preference_set_attribute = nullptr;
  decltype(&::cublasLtMatrixLayoutCreate) layout_create = nullptr;
  decltype(&::cublasLtMatrixLayoutDestroy) layout_destroy = nullptr;
};

// Opens libcublasLt.so.<major> (the major version the build was compiled against) once, thread-safely.
// Throws mv::Error (Errc::kFailure) naming the library and the loader's message when it cannot be
// opened or lacks an entry point.
const CublasLtApi& cublaslt();

}  // namespace mv::cuda
