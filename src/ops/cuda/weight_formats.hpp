// Kernels for weights that are not bf16 on the device: NF4 (bitsandbytes layout, quantized on the device
// bit-identically to src/quant's CPU code, decoded in a fused GEMV or to a bf16 scratch for cuBLASLt) and
// f16 / f32 weights kept in their own precision (GEMV templated on the weight type, embedding lookup,
// activation conversions for the cuBLASLt f16 / f32 GEMMs). Plain C++17 like cuda_ops.hpp.
// See docs/design/nf4.md (CUDA part) and docs/design/cuda-engine.md (weight formats).
#pragma once
#include <cstdint>

#include "ops/cuda/cuda_ops.hpp"

namespace mv::cuda {

// Element type of a dense weight or activation array.
enum class ElemType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };
inline std::size_t elem_size(ElemType t) { return t == ElemType::kF32 ? 4 : 2; }

// Device pointers of one NF4 tensor (flat numel elements, row-major, blocks of 2^block_shift).
struct Nf4Ref {
  const std::uint8_t* packed = nullptr;  // ceil(numel/2) bytes, even element in the high nibble
  std::int64_t numel = 0;
  int block_shift = 6;                     // blocksize = 1 << block_shift
  const float* code = nullptr;             // 16 levels
  const float* absmax = nullptr;           // fp32 scales (no double quantization), else null
  const std::uint8_t* absmax_q = nullptr;  // 8-bit scale codes (double quantization)
  const float* nested_absmax = nullptr;    // one per 2^nested_shift blocks
  const float* nested_code = nullptr;      // 256 entries
  int nested_shift = 8;
  float offset = 0.0f;
};

// How a GEMV reads its m input rows (the decode step fuses the RMSNorm before a linear layer and the SwiGLU
// product before the down projection into the GEMV instead of running them as kernels of their own).
enum class GemvIn : int {
  kPlain = 0,    // x[i·k + j]
  kRmsNorm = 1,  // x[i·k + j]·norm_w[j], the sum times rsqrt(mean_j x[i·k + j]² + eps): rms_norm_f32 then
                 // the plain GEMV, up to rounding; each block takes the sum of squares itself
  kSiluMul = 2,  // silu(g)·u with g = x[i·2k + j], u = x[i·2k + k + j]: silu_mul_f32's values exactly
};
struct GemvInput {
  GemvIn kind = GemvIn::kPlain;
  const float* norm_w = nullptr;  // kRmsNorm: [k] fp32
  float eps = 0.0f;               // kRmsNorm
};
// The fused inputs (kRmsNorm, kSiluMul) are instantiated for up to this many rows.
inline constexpr int kGemvFusedMaxRows = 4;

// ---- NF4 quantization (bit-identical to quant::quantize_nf4) -----------------------------------------
// Codes and fp32 absmax of every block of numel elements of src (type t).
void nf4_quantize_blocks(cudaStream_t s, const void* src, ElemType t, std::int64_t numel, int block_shift,
                         std::uint8_t* packed, float* absmax);
// Double quantization of nb fp32 absmax values with the given offset (the mean, computed by the caller):
// nested blocks of 256, 8-bit codes by the dynamic map's binary search (map: 256 device floats).
void nf4_double_quantize(cudaStream_t s, const float* absmax, std::int64_t nb, float offset,
                         const float* nested_map, std::uint8_t* absmax_q, float* nested_absmax);

// ---- NF4 decoding ------------------------------------------------------------------------------------
// dst[e] = code[c_e] · a'(block of e) for e < numel (fp32, exactly as quant::dequantize), or that rounded
// to bf16.
void nf4_dequantize(cudaStream_t s, const Nf4Ref& q, float* dst);
void nf4_dequantize(cudaStream_t s, const Nf4Ref& q, bf16* dst);
// Fused NF4 GEMV for m <= kGemvMaxRows rows: y[i·ldy + r] = Σ_j x[i·k + j] · W'[r, j] + bias[r]
// (+ y when accumulate), W' = the dequantized [n, k] weight. Each packed byte is read once for all rows.
void nf4_gemv(cudaStream_t s, const float* x, int m, const Nf4Ref& q, std::int64_t n, std::int64_t k,
              const float* bias, float* y, std::int64_t ldy, bool accumulate);

// ---- fused NF4 GEMM for decode batches (nf4_gemm.cu) ---------------------------------------------------
// y[i·ldy + r] = Σ_j x[i·k + j] · w[r, j] + bias[r] (+ y when accumulate) for m <= kNf4GemmMaxRows rows on
// tensor cores (mma.sync, fp32 accumulators): x is rounded to bf16, w = bf16(code level) · a' of its block
// (within half a bf16 ulp of W', like a bf16 dequantization), each packed byte read once. `input` forms x
// as the GEMV's does (kSiluMul: x holds [m, 2k], gate then up), in the GEMM's first kernel. The output rows
// [0, n) are the parts in order (up to kNf4GemmMaxParts NF4 tensors, e.g. q/k/v, each with its own blocks).
// Needs nf4_gemm_supports() for every part and a device workspace of nf4_gemm_workspace() bytes (256-byte
// aligned). splits > 0 forces the number of k ranges (0: chosen from the shape and the GPU); with several,
// the partial sums are added in a fixed order, so results are deterministic for a given GPU.
inline constexpr int kNf4GemmMaxRows = 64;
inline constexpr int kNf4GemmMaxParts = 4;
struct Nf4GemmPart {
  Nf4Ref q;
  std::int64_t row0 = 0, rows = 0;
};
// k % 64 == 0, block size >= 64, 8-byte aligned codes, scales present, compute capability >= 8.0.
bool nf4_gemm_supports(const Nf4Ref& q, std::int64_t k);
std::size_t nf4_gemm_workspace(int m, const Nf4GemmPart* parts, int nparts, std::int64_t n, std::int64_t k,
                               int splits = 0);
// The number of k ranges nf4_gemm chooses for this shape (splits = 0).
int nf4_gemm_splits(int m, const Nf4GemmPart* parts, int nparts, std::int64_t n, std::int64_t k);
void nf4_gemm(cudaStream_t s, const float* x, int m, const Nf4GemmPart* parts, int nparts, std::int64_t n,
              std::int64_t k, const float* bias, float* y, std::int64_t ldy, bool accumulate, void* workspace,
              std::size_t workspace_bytes, int splits = 0, const GemvInput& input = {});

// ---- dense weights in their own type -----------------------------------------------------------------
// GEMV with a weight of type wt (f32, f16 or bf16) and output row stride ldy; `in` says how x is read
// (m <= kGemvFusedMaxRows unless plain).
void gemv_typed(cudaStream_t s, const float* x, int m, const void* w, ElemType wt, std::int64_t n,
                std::int64_t k, const float* bias, float* y, std::int64_t ldy, bool accumulate,
                const GemvInput& in = {});
// embed_rows (cuda_ops.hpp) for an embedding table of type t.
void embed_rows_typed(cudaStream_t s, const void* embed, ElemType t, std::int64_t hidden,
                      const std::int32_t* ids, const std::int32_t* feature_row, const float* features,
                      std::int64_t rows, float* x);
// bf16 activations to f16 (values beyond ±65504 saturate to ±65504) or to fp32 (exact).
void bf16_to_f16(cudaStream_t s, const bf16* src, std::int64_t n, std::uint16_t* dst);
void bf16_to_f32(cudaStream_t s, const bf16* src, std::int64_t n, float* dst);
// y[r][c] += bias[c] for rows of n (used where a GEMM has no bias epilogue).
void add_bias_rows(cudaStream_t s, float* y, std::int64_t rows, std::int64_t n, const float* bias);

}  // namespace mv::cuda
