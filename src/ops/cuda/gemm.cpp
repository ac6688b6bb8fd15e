// cuBLASLt GEMM of the CUDA engine: bf16 operands (or f16 / fp32 ones), fp32 accumulation and output,
// optional fp32 bias in the epilogue and accumulation into the output (beta = 1, used for residual adds).
// Row-major y = x·Wᵀ is the column-major product yᵀ[n, m] = W[k, n]ᵀ · xᵀ[k, m]. The heuristic's choice is
// cached per shape.
#if MEDVISION_HAS_CUDA
#include <cublasLt.h>

#include <map>
#include <mutex>
#include <set>
#include <tuple>

#include "core/error.hpp"
#include "ops/cuda/cublaslt_api.hpp"
#include "ops/cuda/cuda_ops.hpp"
#include "ops/cuda/weight_formats.hpp"

namespace mv::cuda {

namespace {

void check_lt(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    fail(Errc::kInternal, "cuBLASLt: {}: status {}", what, static_cast<int>(st));
}

constexpr std::size_t kWorkspace = std::size_t{32} << 20;

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

}  // namespace

struct Gemm::Impl {
  const CublasLtApi& lt = cublaslt();  // first: opens the library (or throws) before anything else
  cublasLtHandle_t handle = nullptr;
  Buffer workspace;
  std::mutex mutex;
  std::map<std::tuple<std::int64_t, std::int64_t, std::int64_t, bool, int>, Plan> plans;
  // Shapes whose bias epilogue has no algorithm (the bias is then added by a kernel after the GEMM).
  std::set<std::tuple<std::int64_t, std::int64_t, std::int64_t, int>> no_bias_epilogue;

  Plan& plan(std::int64_t m, std::int64_t n, std::int64_t k, bool bias, Gemm::Operands type) {
    auto key = std::make_tuple(m, n, k, bias, static_cast<int>(type));
    const cudaDataType_t ab = type == Gemm::Operands::kF32   ? CUDA_R_32F
                              : type == Gemm::Operands::kF16 ? CUDA_R_16F
                                                             : CUDA_R_16BF;
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
    Plan p;
    check_lt(lt.desc_create(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "descriptor");
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    check_lt(lt.desc_set_attribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "transa");
    check_lt(lt.desc_set_attribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "transb");
    if (bias) {
      const cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
      const cudaDataType_t bt = CUDA_R_32F;
      check_lt(lt.desc_set_attribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep), "epilogue");
      check_lt(lt.desc_set_attribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt), "bias type");
    }
    check_lt(lt.layout_create(&p.a, ab, static_cast<std::uint64_t>(k), static_cast<std::uint64_t>(n), k),
             "layout A");
    check_lt(lt.layout_create(&p.b, ab, static_cast<std::uint64_t>(k), static_cast<std::uint64_t>(m), k),
             "layout B");
    check_lt(
        lt.layout_create(&p.c, CUDA_R_32F, static_cast<std::uint64_t>(n), static_cast<std::uint64_t>(m), n),
        "layout C");
    cublasLtMatmulPreference_t pref = nullptr;
    check_lt(lt.preference_create(&pref), "preference");
    const std::uint64_t ws = kWorkspace;
    check_lt(lt.preference_set_attribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws),
             "workspace");
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    const cublasStatus_t st = lt.algo_get_heuristic(handle, p.op, p.a, p.b, p.c, p.c, pref, 1, &res, &found);
    lt.preference_destroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || found == 0)
      fail(Errc::kInternal, "cuBLASLt: no algorithm for a {}x{}x{} {} GEMM (status {})", m, n, k,
           type == Gemm::Operands::kF32   ? "fp32"
           : type == Gemm::Operands::kF16 ? "f16"
                                          : "bf16",
           static_cast<int>(st));
    p.algo = res.algo;
    return plans.emplace(key, p).first->second;
  }
};

Gemm::Gemm() : impl_(new Impl) {
  const CublasLtApi& lt = impl_->lt;
  check_lt(lt.create(&impl_->handle), "create");
  impl_->workspace.resize(kWorkspace);
}

Gemm::~Gemm() {
  const CublasLtApi& lt = impl_->lt;
  for (auto& [key, p] : impl_->plans) {
    lt.layout_destroy(p.a);
    lt.layout_destroy(p.b);
    lt.layout_destroy(p.c);
    lt.desc_destroy(p.op);
  }
  lt.destroy(impl_->handle);
  delete impl_;
}

void Gemm::run(cudaStream_t s, const bf16* x, std::int64_t m, const bf16* w, std::int64_t n, std::int64_t k,
               const float* bias, float* y, bool accumulate) {
  run_typed(s, Operands::kBF16, x, m, w, n, k, bias, y, accumulate);
}

void Gemm::run_typed(cudaStream_t s, Operands type, const void* x, std::int64_t m, const void* w,
                     std::int64_t n, std::int64_t k, const float* bias, float* y, bool accumulate) {
  if (m <= 0) return;
  std::lock_guard lock(impl_->mutex);
  const CublasLtApi& lt = impl_->lt;
  const auto shape = std::make_tuple(m, n, k, static_cast<int>(type));
  Plan* p = nullptr;
  if (bias && !impl_->no_bias_epilogue.count(shape)) {
    try {
      p = &impl_->plan(m, n, k, true, type);
    } catch (const Error&) {  // no algorithm with the bias epilogue for these operand types
      impl_->no_bias_epilogue.insert(shape);
    }
  }
  const bool bias_after = bias != nullptr && p == nullptr;
  if (!p) p = &impl_->plan(m, n, k, false, type);
  if (bias && !bias_after)
    check_lt(lt.desc_set_attribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias),
             "bias pointer");
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  check_lt(lt.matmul(impl_->handle, p->op, &alpha, w, p->a, x, p->b, &beta, y, p->c, y, p->c, &p->algo,
                     impl_->workspace.data(), kWorkspace, s),
           "matmul");
  if (bias_after) add_bias_rows(s, y, m, n, bias);
}

}  // namespace mv::cuda
#endif
