#include "ops/cuda/cublaslt_api.hpp"

#include <dlfcn.h>

#include <mutex>
#include <string>

#include "core/error.hpp"

namespace mv::cuda {
namespace {

template <typename F>
void resolve(void* lib, const std::string& name, const char* symbol, F& out) {
  void* p = dlsym(lib, symbol);
  if (p == nullptr) fail(Errc::kFailure, "{} has no entry point {}", name, symbol);
  out = reinterpret_cast<F>(p);
}

}  // namespace

const CublasLtApi& cublaslt() {
  static CublasLtApi api;
  static std::string error;
  static std::once_flag once;
  std::call_once(once, [] {
    const std::string name = "libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR);
    void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      const char* why = dlerror();
      error = "cannot open " + name + " (CUDA " + std::to_string(CUBLAS_VER_MAJOR) +
              "'s cuBLAS; add its folder to LD_LIBRARY_PATH): " + (why != nullptr ? why : "unknown error");
      return;
    }
    try {
      CublasLtApi a;
      resolve(lib, name, "cublasLtCreate", a.create);
      resolve(lib, name, "cublasLtDestroy", a.destroy);
      resolve(lib, name, "cublasLtGetVersion", a.get_version);
      resolve(lib, name, "cublasLtMatmul", a.matmul);
      resolve(lib, name, "cublasLtMatmulAlgoGetHeuristic", a.algo_get_heuristic);
      resolve(lib, name, "cublasLtMatmulDescCreate", a.desc_create);
      resolve(lib, name, "cublasLtMatmulDescDestroy", a.desc_destroy);
      resolve(lib, name, "cublasLtMatmulDescSetAttribute", a.desc_set_attribute);
      resolve(lib, name, "cublasLtMatmulPreferenceCreate", a.preference_create);
      resolve(lib, name, "cublasLtMatmulPreferenceDestroy", a.preference_destroy);
      resolve(lib, name, "cublasLtMatmulPreferenceSetAttribute", a.preference_set_attribute);
      resolve(lib, name, "cublasLtMatrixLayoutCreate", a.layout_create);
      resolve(lib, name, "cublasLtMatrixLayoutDestroy", a.layout_destroy);
      api = a;
    } catch (const Error& e) {
      error = e.what();
    }
  });
  if (!error.empty()) fail(Errc::kFailure, "{}", error);
  return api;
}

}  // namespace mv::cuda
