// Linear layers of the CUDA engine: how a checkpoint's weight matrices are uploaded and multiplied.
// Every weight keeps a storage format (bf16 today; the format decides which kernels run), and the
// model calls only gemm() for many rows (prefill, vision) and gemv() for a few rows (decode), so the
// forward passes do not depend on how a weight is stored. See docs/design/cuda-engine.md.
#pragma once
#if MEDVISION_HAS_CUDA
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "model/qwen25vl/weights.hpp"
#include "ops/cuda/cuda_ops.hpp"

namespace mv::qwen25vl::cudaeng {

using cuda::bf16;
using cuda::Buffer;

// How a weight matrix is held on the device.
enum class WeightFormat {
  kBF16,  // bf16 [out, in]
};
const char* format_name(WeightFormat f);

// What a linear layer needs besides its weights: the stream, the GEMM handle and a scratch buffer
// (grown on demand) for converted activations or dequantized weights.
struct LinearContext {
  cudaStream_t stream = nullptr;
  cuda::Gemm* gemm = nullptr;
  Buffer* scratch = nullptr;
};

struct DLinear {
  WeightFormat format = WeightFormat::kBF16;
  Buffer w;  // the weight in `format`
  Buffer b;  // fp32 bias [out] (empty when none)
  std::int64_t out = 0, in = 0;

  const float* bias() const { return b.size() ? b.as<float>() : nullptr; }
  // bf16 weight rows (formats that are bf16 on the device only; embeddings use this).
  const bf16* bf16_rows() const;

  // y[rows, out] = a[rows, in]·Wᵀ + bias (+ y when accumulate); a is bf16, y fp32.
  void gemm(const LinearContext& c, const bf16* a, std::int64_t rows, float* y, bool accumulate) const;
  // The same for a few rows (rows <= cuda::kGemvMaxRows) with fp32 activations (no rounding).
  void gemv(const LinearContext& c, const float* x, int rows, float* y, bool accumulate) const;
};

// Host → device copies of mapped tensors through two pinned staging buffers (the copy of one chunk
// overlaps the host memcpy of the next); F32/F16 sources are converted to bf16 on the device.
class Uploader {
 public:
  explicit Uploader(cudaStream_t s);
  ~Uploader();
  Uploader(const Uploader&) = delete;
  Uploader& operator=(const Uploader&) = delete;
  // Writes m (F32/F16/BF16) as bf16 at dst.
  void put_bf16(const ops::Matrix& m, bf16* dst);
  std::uint64_t bytes() const { return bytes_; }
  cudaStream_t stream() const { return s_; }

 private:
  static constexpr std::size_t kStage = std::size_t{64} << 20;
  cudaStream_t s_;
  void* pinned_[2] = {nullptr, nullptr};
  cudaEvent_t ev_[2] = {nullptr, nullptr};
  Buffer scratch_[2];
  int cur_ = 0;
  std::uint64_t bytes_ = 0;
};

Buffer upload_vec(const std::vector<float>& v);

// Several linear layers over the same input as one weight [Σ out, in] (rows concatenated) and one bias.
DLinear fuse(Uploader& up, std::initializer_list<const Linear*> parts);
inline DLinear single(Uploader& up, const Linear& l) { return fuse(up, {&l}); }
// A bare matrix (embeddings, lm_head, patch embedding) in bf16.
DLinear matrix_bf16(Uploader& up, const ops::Matrix& m);

}  // namespace mv::qwen25vl::cudaeng
#endif
