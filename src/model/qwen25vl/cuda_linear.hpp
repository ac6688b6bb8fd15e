// Linear layers of the CUDA engine: how a checkpoint's weight matrices are uploaded and multiplied.
// Every weight keeps a storage format (bf16, f16 or f32 as the checkpoint holds it, or NF4), the format
// decides which kernels run, and the model calls only gemm() for many rows (prefill, vision) and gemv()
// for a few rows (decode), so the forward passes do not depend on how a weight is stored.
// See docs/design/cuda-engine.md (weight formats) and docs/design/nf4.md (CUDA part).
#pragma once
#if MEDVISION_HAS_CUDA
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "model/qwen25vl/weights.hpp"
#include "ops/cuda/cuda_ops.hpp"
#include "ops/cuda/weight_formats.hpp"
#include "quant/nf4_cuda.hpp"

namespace mv::qwen25vl::cudaeng {

using cuda::bf16;
using cuda::Buffer;

// How a weight matrix is held on the device.
enum class WeightFormat {
  kBF16,  // bf16 [out, in]: cuBLASLt bf16 GEMM, bf16 GEMV
  kF16,   // f16 [out, in]: activations converted to f16 for a cuBLASLt f16 GEMM; f16 GEMV
  kF32,   // f32 [out, in]: activations converted to fp32 for a cuBLASLt fp32 GEMM (no TF32); f32 GEMV
  kNF4,   // NF4 parts (see Nf4Part): fused NF4 GEMV; GEMM on a bf16 dequantization in the scratch buffer
          // (up to kNf4GemvGemmRows rows: the GEMV in groups)
};
const char* format_name(WeightFormat f);

// What a linear layer needs besides its weights: the stream, the GEMM handle and a scratch buffer
// (grown on demand) for converted activations or dequantized weights.
struct LinearContext {
  cudaStream_t stream = nullptr;
  cuda::Gemm* gemm = nullptr;
  Buffer* scratch = nullptr;
};

// Output rows [row0, row0 + rows) of an NF4 linear layer. Fused layers (q/k/v, gate/up) keep each
// part's own quantization (its blocks, scales and offset, as the checkpoint holds them), so a part is
// either an NF4 tensor or, when the part was left unquantized (--skip), bf16 rows.
struct Nf4Part {
  std::int64_t row0 = 0, rows = 0;
  quant::Nf4Device q;  // empty when `dense` holds the part
  cuda::Nf4Ref ref;
  Buffer dense;  // bf16 [rows, in] for an unquantized part
};

// NF4 gemm() calls with at most this many rows run the fused GEMV in groups of kGemvMaxRows rows.
inline constexpr std::int64_t kNf4GemvGemmRows = 64;

struct DLinear {
  WeightFormat format = WeightFormat::kBF16;
  Buffer w;                    // dense formats: the weight [out, in] in `format`
  std::vector<Nf4Part> parts;  // kNF4
  Buffer b;                    // fp32 bias [out] (empty when none)
  std::int64_t out = 0, in = 0;
  std::int64_t in_pad = 0;  // NF4 after pad_in: the GEMM's inner size (its bf16 dequantization is padded)

  // Row length of the activations gemm() reads: `in`, or the padded size after pad_in.
  std::int64_t lda() const { return in_pad > in ? in_pad : in; }

  const float* bias() const { return b.size() ? b.as<float>() : nullptr; }
  // bf16 weight rows (kBF16 only).
  const bf16* bf16_rows() const;
  // Weight bytes on the device (packed codes and scales for NF4).
  std::uint64_t weight_bytes() const;

  // y[rows, out] = a[rows, in]·Wᵀ + bias (+ y when accumulate); a is bf16, y fp32.
  void gemm(const LinearContext& c, const bf16* a, std::int64_t rows, float* y, bool accumulate) const;
  // The same for a few rows (rows <= cuda::kGemvMaxRows) with fp32 activations (no rounding); `input` says
  // how x is read (plain, RMS-normalised, or the SwiGLU product of a gate/up output: cuda::GemvInput; the
  // fused kinds take rows <= cuda::kGemvFusedMaxRows). NF4 weights with nf4_gemm_usable() take up to
  // cuda::kNf4GemmMaxRows rows of any kind, by the fused NF4 GEMM (x rounded to bf16).
  void gemv(const LinearContext& c, const float* x, int rows, float* y, bool accumulate,
            const cuda::GemvInput& input = {}) const;
  // Any number of rows with fp32 activations, nearly unrounded (decode batches above kGemvMaxRows):
  // bf16 weights run one tensor-core GEMM over the two-term bf16 split of x ([hi; lo], 2·rows rows, so the
  // weight is still read once) and sum the halves; NF4 above kGemvMaxRows rows does the same on a bf16
  // dequantization of the weight (unless the fused NF4 GEMM takes it: nf4_gemm_parts); other formats (and
  // NF4 up to kGemvMaxRows) run the fp32 GEMV in groups.
  void gemm_f32(const LinearContext& c, const float* x, std::int64_t rows, float* y, bool accumulate) const;
  // NF4: y = (x as `input` forms it)·Wᵀ by the fused NF4 GEMM (cuda::nf4_gemm, in launches of up to 64
  // rows) when nf4_gemm_usable(); false (nothing done) otherwise.
  // The GEMM's workspace lies in the scratch buffer from byte `reserve` on (x may lie below it: the caller
  // has sized the buffer with nf4_gemm_scratch()).
  bool nf4_gemm_parts(const LinearContext& c, const float* x, std::int64_t rows, float* y, bool accumulate,
                      const cuda::GemvInput& input = {}, std::size_t reserve = 0) const;
  // Workspace bytes nf4_gemm_parts needs for `rows` rows (256-byte multiple).
  std::size_t nf4_gemm_scratch(std::int64_t rows) const;
  // Every part is NF4 and qualifies for the fused GEMM (cuda::nf4_gemm_supports), and MV_NF4_GEMM is not 0.
  bool nf4_gemm_usable() const;
  // Makes gemm() multiply over new_in columns, the weight's columns from `in` on being zero, so that the
  // GEMM's inner dimension is 16-byte aligned: cuBLASLt picks its fast kernels only then (the vision MLP's
  // 3420 is not). Callers then pass activation rows of lda() = new_in elements whose padding is finite
  // (e.g. zero). Dense formats widen the stored weight (`in` becomes new_in); NF4 keeps its codes and pads
  // the bf16 dequantization that gemm() makes (in_pad). No-op when new_in <= in.
  void pad_in(cudaStream_t s, std::int64_t new_in);
  // Embedding lookup (cuda::embed_rows) from this matrix as a table [vocab, hidden] (dense formats).
  void embed_rows(cudaStream_t s, const std::int32_t* ids, const std::int32_t* feature_row,
                  const float* features, std::int64_t rows, float* x) const;
};

// Host → device copies of mapped tensors through two pinned staging buffers (the copy of one chunk
// overlaps the host memcpy of the next); sources are copied as they are or converted to bf16 on the device.
class Uploader {
 public:
  explicit Uploader(cudaStream_t s);
  ~Uploader();
  Uploader(const Uploader&) = delete;
  Uploader& operator=(const Uploader&) = delete;
  // Writes m (F32/F16/BF16) as bf16 at dst.
  void put_bf16(const ops::Matrix& m, bf16* dst);
  // Writes m's elements unchanged (its own dtype) at dst.
  void put_raw(const ops::Matrix& m, void* dst);
  // Quantizes the 16/32-bit matrix m to NF4 on the device (block 64, double quantization; the same codes
  // and scales as quant::quantize_nf4).
  quant::Nf4Device quantize_nf4(const ops::Matrix& m);
  std::uint64_t bytes() const { return bytes_; }
  cudaStream_t stream() const { return s_; }

 private:
  void put(const ops::Matrix& m, void* dst, bool to_bf16);
  static constexpr std::size_t kStage = std::size_t{64} << 20;
  cudaStream_t s_;
  void* pinned_[2] = {nullptr, nullptr};
  cudaEvent_t ev_[2] = {nullptr, nullptr};
  Buffer scratch_[2];
  Buffer raw_;  // a whole weight in its own dtype, before quantizing it
  int cur_ = 0;
  std::uint64_t bytes_ = 0;
};

Buffer upload_vec(const std::vector<float>& v);

// Several linear layers over the same input as one layer with the rows concatenated and one bias.
// Format: NF4 when any part is NF4 in the checkpoint or marked for quantization at load
// (Linear::nf4_at_load, quantized here on the device); otherwise the parts' common dtype (bf16, f16 or
// f32), or bf16 when they differ.
DLinear fuse(Uploader& up, std::initializer_list<const Linear*> parts);
inline DLinear single(Uploader& up, const Linear& l) { return fuse(up, {&l}); }
// A bare matrix (embeddings, lm_head, patch embedding) in its checkpoint dtype.
DLinear matrix(Uploader& up, const ops::Matrix& m);
// The same, always bf16.
DLinear matrix_bf16(Uploader& up, const ops::Matrix& m);

}  // namespace mv::qwen25vl::cudaeng
#endif
