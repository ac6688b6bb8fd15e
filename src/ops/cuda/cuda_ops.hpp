// CUDA ops of the Qwen2.5-VL engine: bf16 storage, fp32 accumulation. Kernels live in the .cu files of
// this folder; this header is plain C++17 so that both nvcc and the C++20 model code include it.
//
// Conventions: row-major; a weight matrix is [out, in] bf16 as nn.Linear stores it; y = x·Wᵀ (+ bias).
// Residual streams and GEMM outputs are fp32, GEMM inputs and the KV cache are bf16. Every launcher runs
// on the given stream and checks the launch (mv::Error on failure).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace mv::cuda {

using bf16 = __nv_bfloat16;

// Throws mv::Error (kInternal) naming `what` when `e` is not cudaSuccess.
void check(cudaError_t e, const char* what);
// Checks the last launch on this thread.
void check_launch(const char* what);

// Device memory accounting (bytes): what the engine holds now, its peak, and the device's view.
struct MemoryStats {
  std::uint64_t allocated = 0;       // live cudaMalloc'd bytes (weights, caches, workspaces)
  std::uint64_t peak_allocated = 0;  // highest `allocated` since start / reset
  std::uint64_t weights = 0;         // of which weights
  std::uint64_t device_used = 0;     // total − free as the driver reports it (all processes)
  std::uint64_t device_total = 0;
};
MemoryStats memory_stats();
void reset_peak();

// Owning device allocation, counted in memory_stats().
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(std::size_t bytes) { resize(bytes); }
  ~Buffer() { release(); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : p_(o.p_), n_(o.n_) {
    o.p_ = nullptr;
    o.n_ = 0;
  }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = o.p_;
      n_ = o.n_;
      o.p_ = nullptr;
      o.n_ = 0;
    }
    return *this;
  }
  // Reallocates (contents lost) when `bytes` exceeds the current size.
  void ensure(std::size_t bytes) {
    if (bytes > n_) resize(bytes);
  }
  void resize(std::size_t bytes);
  void release();
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }
  void* data() const { return p_; }
  std::size_t size() const { return n_; }

 private:
  void* p_ = nullptr;
  std::size_t n_ = 0;
};

// ---- GEMM (cuBLASLt) -------------------------------------------------------------------------------
// y[m, n] = x[m, k] · W[n, k]ᵀ + bias[n] (+ y when accumulate). x, W bf16; y, bias fp32.
// ldx = k and ldy = n unless given.
class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;
  void run(cudaStream_t s, const bf16* x, std::int64_t m, const bf16* w, std::int64_t n, std::int64_t k,
           const float* bias, float* y, bool accumulate);
  // The same with x and W both f16 (kF16) or both fp32 (kF32: full fp32 arithmetic, no TF32).
  enum class Operands { kBF16, kF16, kF32 };
  void run_typed(cudaStream_t s, Operands type, const void* x, std::int64_t m, const void* w, std::int64_t n,
                 std::int64_t k, const float* bias, float* y, bool accumulate);

 private:
  struct Impl;
  Impl* impl_;
};

// Few-row product for decoding (m <= kGemvMaxRows): y[m, n] = x[m, k] · W[n, k]ᵀ + bias (+ y), with x fp32
// (no rounding of activations) and W bf16 read once with 16-byte loads; memory-bandwidth bound. Row i of
// the result does not depend on m (the same lanes add the same products in the same order).
constexpr int kGemvMaxRows = 8;
void gemv(cudaStream_t s, const float* x, int m, const bf16* w, std::int64_t n, std::int64_t k,
          const float* bias, float* y, bool accumulate);

// ---- element-wise and row ops ----------------------------------------------------------------------
// y[r] = bf16(weight ⊙ x[r] / sqrt(mean(x[r]²) + eps)); x fp32 rows of `dim`, row stride x_stride.
void rms_norm(cudaStream_t s, const float* x, std::int64_t rows, std::int64_t dim, std::int64_t x_stride,
              const float* weight, float eps, bf16* y);
// The same with fp32 output (decode path).
void rms_norm_f32(cudaStream_t s, const float* x, std::int64_t rows, std::int64_t dim, std::int64_t x_stride,
                  const float* weight, float eps, float* y);
// out[r][i] = bf16(silu(gu[r][i]) · gu[r][I + i]) for gu rows of 2I (gate then up); output rows of ldo
// (0: I) elements, columns I..ldo−1 set to 0 (the padding of a weight whose inner dimension was aligned).
void silu_mul(cudaStream_t s, const float* gu, std::int64_t rows, std::int64_t inter, bf16* out,
              std::int64_t ldo = 0);
void silu_mul_f32(cudaStream_t s, const float* gu, std::int64_t rows, std::int64_t inter, float* out);
// out[i] = bf16(exact GELU(x[i])).
void gelu(cudaStream_t s, const float* x, std::int64_t n, bf16* out);
// dst[i] = bf16(src[i]) for fp32 / fp16 sources.
void f32_to_bf16(cudaStream_t s, const float* src, std::int64_t n, bf16* dst);
void f16_to_bf16(cudaStream_t s, const std::uint16_t* src, std::int64_t n, bf16* dst);
// Two-term bf16 split of fp32 values: hi[i] = bf16(x[i]), lo[i] = bf16(x[i] − hi[i]) (about 16 significant
// bits together), so that a bf16 tensor-core GEMM over [hi; lo] computes x·Wᵀ nearly unrounded.
void split_bf16(cudaStream_t s, const float* src, std::int64_t n, bf16* hi, bf16* lo);
// out[r] (+)= y2[r] + y2[rows + r] + bias for rows of n (sums the two halves of a split GEMM).
void add_row_halves(cudaStream_t s, const float* y2, std::int64_t rows, std::int64_t n, const float* bias,
                    float* out, bool accumulate);
// Row permutation of fp32 rows of `cols`: dst[i] = src[idx[i]] (gather) or dst[idx[i]] = src[i] (scatter).
void gather_rows(cudaStream_t s, const float* src, const std::int64_t* idx, std::int64_t rows,
                 std::int64_t cols, float* dst);
void scatter_rows(cudaStream_t s, const float* src, const std::int64_t* idx, std::int64_t rows,
                  std::int64_t cols, float* dst);

// x[i] = fp32 embed[ids[i]] for text tokens, or features[feature_row[i]] when feature_row[i] >= 0.
void embed_rows(cudaStream_t s, const bf16* embed, std::int64_t hidden, const std::int32_t* ids,
                const std::int32_t* feature_row, const float* features, std::int64_t rows, float* x);

// M-RoPE tables: cos/sin [rows][half] from positions pos[3][rows] (t, h, w), inv_freq[half] and the
// stream of each pair (0 = t, 1 = h, 2 = w). Angles in fp32, cos/sin evaluated in double.
void mrope_tables(cudaStream_t s, const std::int64_t* pos, std::int64_t rows, const float* inv_freq,
                  const std::int8_t* stream, int half, float* cos, float* sin);

// Splits fused qkv rows (fp32, row stride qkv_stride: n_heads·hd of q, then n_kv·hd of k, then of v),
// applies rotary (tables [rows][hd/2]) to q and k, and writes bf16: q → q_out[r][h][d]; k/v row r of
// kv head g → k_out + g·kv_head_stride + (kv_row0 + r)·kv_row_stride (same for v).
struct QkvSplit {
  const float* qkv;
  std::int64_t qkv_stride;
  std::int64_t rows;
  int n_heads, n_kv, hd;
  const float* cos;
  const float* sin;
  bf16* q_out;
  bf16* k_out;
  bf16* v_out;
  std::int64_t kv_head_stride, kv_row_stride, kv_row0;
};
void rope_split_qkv(cudaStream_t s, const QkvSplit& a);

// ---- attention -------------------------------------------------------------------------------------
// One tile of work for the tensor-core attention: queries [q0, q0 + qn) against keys [k0, k0 + kn).
// causal >= 0: local query i sees local keys [0, causal + i] (causal = keys before the first query).
struct AttnItem {
  std::int32_t q0, qn, k0, kn, causal;
};
// q: bf16 [rows][n_heads][hd] (row stride q_stride); k/v: element (row j, kv head g) at
// base + g·head_stride + j·row_stride; out: bf16 [rows][n_heads][hd] at row stride out_stride.
// items: device array of n_items; every item has qn <= 64.
struct AttnArgs {
  const bf16* q;
  std::int64_t q_stride;
  const bf16* k;
  const bf16* v;
  std::int64_t kv_head_stride, kv_row_stride;
  bf16* out;
  std::int64_t out_stride;
  int n_heads, n_kv, hd;
  const AttnItem* items;
  int n_items;
};
constexpr int kAttnBlockQ = 64;
// Which kernel runs: kMma is the register-resident flash kernel (mma.sync m16n8k16, sm_80+) for head
// dims that are multiples of 16 up to 128 with 16-byte aligned rows (attention_mma_supports); kWmma the
// older WMMA kernel (any head dim up to 128). kAuto takes kMma where supported, kWmma elsewhere, and
// follows the environment variable MV_ATTN (auto | mma | wmma) when it is set.
enum class AttnKernel { kAuto, kMma, kWmma };
bool attention_mma_supports(const AttnArgs& a);
// Throws mv::Error on bad arguments (head counts, head dim) or when kMma is asked for arguments it does
// not support.
void attention(cudaStream_t s, const AttnArgs& a, AttnKernel kernel = AttnKernel::kAuto);

// ---- paged KV cache ---------------------------------------------------------------------------------
// The decode-time KV cache is paged: a page holds kKvPageTokens consecutive positions of one sequence for
// every layer and kv head, K first, then V: element (layer l, kv head g, slot j, dim d) of K at
// page + ((l·n_kv + g)·kKvPageTokens + j)·hd + d, and of V at the same place + v_offset, with
// v_offset = layers·n_kv·kKvPageTokens·hd. Position t of a sequence lies in page table[t / kKvPageTokens],
// slot t % kKvPageTokens. A page of 32 positions is one shared-memory tile of decode attention.
constexpr int kKvPageTokens = 32;
struct KvPageGeometry {
  int layers = 0, n_kv = 0, hd = 0;
  // Elements from a page's K part to its V part.
  __host__ __device__ std::int64_t v_offset() const {
    return static_cast<std::int64_t>(layers) * n_kv * kKvPageTokens * hd;
  }
  // Bytes of one page (K and V, bf16).
  std::size_t page_bytes() const { return static_cast<std::size_t>(2 * v_offset()) * sizeof(bf16); }
};

// Copies positions [pos0, pos0 + rows) of layer `layer` between a sequence's pages (device table `pages`)
// and a contiguous bf16 staging cache (element (kv head g, row j, dim d) at k + g·head_stride + j·hd + d,
// v likewise; row j = position j). to_pages: staging → pages, else pages → staging. The prompt pass writes
// its new keys into the staging cache, fills the older ones from the pages, attends there, and stores the
// new ones into the pages.
struct KvPageCopy {
  bf16* const* pages;  // device array: page i covers positions [32i, 32i + 32)
  KvPageGeometry geo;
  int layer;
  bf16* k;
  bf16* v;
  std::int64_t head_stride;
  std::int64_t pos0, rows;
  bool to_pages;
};
void kv_page_copy(cudaStream_t s, const KvPageCopy& a);

// One sequence of a decode step, as the kernels read it from device memory (so that a captured CUDA graph
// serves every step: only these values change).
struct DecodeSeq {
  bf16* const* pages;  // device array of the sequence's pages (at least ceil(len / kKvPageTokens))
  std::int32_t len;    // keys after this step: the new token is written at position len − 1 and attended to
  std::int32_t pad;
};

// Decode variant of rope_split_qkv: row r belongs to sequence r, and its k/v go to position seqs[r].len − 1
// of that sequence's pages at `layer`.
struct QkvDecodeSplit {
  const float* qkv;
  std::int64_t qkv_stride;
  std::int64_t rows;
  int n_heads, n_kv, hd;
  const float* cos;
  const float* sin;
  bf16* q_out;  // [rows][n_heads][hd]
  const DecodeSeq* seqs;
  int layer;
  KvPageGeometry geo;
};
void rope_split_qkv_decode(cudaStream_t s, const QkvDecodeSplit& a);

// Decode attention: for each sequence b, one query row q[b] (bf16 [n_heads][hd], row stride q_stride)
// against positions [0, seqs[b].len) of its paged cache at `layer`; a sequence of length 0 gives zeros.
// Flash-decoding: each sequence's keys are split over several blocks (the split count depends only on
// n_heads, n_kv, hd, batch and the device, never on the lengths, so the launch can be captured in a graph
// and replayed for other lengths) and merged exactly on the device. `work` is a device workspace of
// decode_attention_workspace(n_heads, n_kv, hd, work_batch) bytes for batches up to work_batch,
// zero-filled once before its first use (the launches leave its counters at zero again); one workspace
// serves launches on one stream at a time. head_dim 1..256; n_heads a multiple of n_kv.
struct DecodeAttnArgs {
  const bf16* q;
  std::int64_t q_stride;
  const DecodeSeq* seqs;  // device array [batch]
  int layer;
  KvPageGeometry geo;  // geo.n_kv and geo.hd equal n_kv and hd
  float* out;          // fp32 (it feeds the fp32 decode GEMV)
  std::int64_t out_stride;
  int n_heads, n_kv, hd, batch;
  void* work;
  int work_batch;
  // Optional: rope/split fused in (the tensor-core kernel only, see decode_attention_tensor_cores). When qkv
  // is set, q is not read: each block rotates its query heads from sequence b's fp32 qkv row (q | k | v, row
  // stride qkv_stride; cos/sin [batch][hd/2], as rope_split_qkv_decode takes them), and the block whose keys
  // hold position len − 1 first writes that position's rotated k and its v into the pages, so that the
  // separate rope_split_qkv_decode launch is not needed.
  const float* qkv = nullptr;
  std::int64_t qkv_stride = 0;
  const float* cos = nullptr;
  const float* sin = nullptr;
};
std::size_t decode_attention_workspace(int n_heads, int n_kv, int hd, int max_batch);
// Blocks per (sequence, kv head) that decode_attention uses on the current device (for reports).
int decode_attention_splits(int n_heads, int n_kv, int hd, int batch);
// Whether decode_attention runs its tensor-core kernel for these heads on the current device (head dims that
// are multiples of 16 up to 128, up to 16 query heads per kv head, sm_80+, 16-byte aligned q rows, and
// MV_DECODE_ATTN not "scalar"). That kernel rounds the probabilities to bf16 before P·V, as the prefill
// kernel does (about 1e-3 relative); the scalar kernel keeps them in fp32.
bool decode_attention_tensor_cores(int n_heads, int n_kv, int hd);
void decode_attention(cudaStream_t s, const DecodeAttnArgs& a);

// out[b] = argmax of logits row b (first index on ties, as torch.argmax); −1 when the row holds a NaN or
// no value above −inf (the host sampler rejects both). Each row is split over several blocks, whose
// winners go to `work` (argmax_workspace(rows, cols) bytes on the device).
std::size_t argmax_workspace(std::int64_t rows, std::int64_t cols);
void argmax_rows(cudaStream_t s, const float* logits, std::int64_t rows, std::int64_t cols, std::int32_t* out,
                 void* work);

}  // namespace mv::cuda
