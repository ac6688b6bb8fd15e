// Element-wise and row kernels of the CUDA engine (see cuda_ops.hpp).
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <string_view>

#include "ops/cuda/cuda_ops.hpp"
#include "ops/cuda/device_math.cuh"
#include "ops/cuda/pdl.cuh"
#include "ops/cuda/weight_formats.hpp"

namespace mv::cuda {
namespace {

// Block-wide sum for blockDim.x a multiple of 32 (≤ 1024); every thread gets the result.
__device__ float block_sum(float v) {
  __shared__ float part[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  float t = lane < warps ? part[lane] : 0.0f;
  return warp_sum(t);
}

__device__ __forceinline__ void store(bf16* p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }

template <typename T>
__global__ void rms_norm_kernel(const float* x, std::int64_t dim, std::int64_t x_stride, const float* w,
                                float eps, T* y) {
  const float* xr = x + blockIdx.x * x_stride;
  T* yr = y + blockIdx.x * dim;
  float ss = 0.0f;
  for (std::int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  ss = block_sum(ss);
  const float inv = rsqrtf(ss / static_cast<float>(dim) + eps);
  for (std::int64_t i = threadIdx.x; i < dim; i += blockDim.x) store(yr + i, w[i] * (xr[i] * inv));
}

// out[r][c] = silu(g)·u for c < inter, 0 for inter <= c < ldo (the zero padding a GEMM with an aligned
// inner dimension reads). Grid (column blocks, row blocks); a thread takes 4 consecutive columns.

template <typename T>
__global__ void silu_mul_kernel(const float* gu, std::int64_t rows, std::int64_t inter, std::int64_t ldo,
                                T* out) {
  const std::int64_t c0 = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 4;
  if (c0 >= ldo) return;
  const bool vec = (inter & 3) == 0;
  for (std::int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float* g = gu + r * 2 * inter;
    const float* u = g + inter;
    T* o = out + r * ldo;
    if (vec && c0 + 4 <= inter) {
      const float4 gv = *reinterpret_cast<const float4*>(g + c0);
      const float4 uv = *reinterpret_cast<const float4*>(u + c0);
      store(o + c0, silu_times(gv.x, uv.x));
      store(o + c0 + 1, silu_times(gv.y, uv.y));
      store(o + c0 + 2, silu_times(gv.z, uv.z));
      store(o + c0 + 3, silu_times(gv.w, uv.w));
    } else {
      for (std::int64_t c = c0; c < c0 + 4 && c < ldo; ++c)
        store(o + c, c < inter ? silu_times(g[c], u[c]) : 0.0f);
    }
  }
}

template <typename T>
void launch_silu_mul(cudaStream_t s, const float* gu, std::int64_t rows, std::int64_t inter, std::int64_t ldo,
                     T* out) {
  if (rows <= 0 || inter <= 0) return;
  const auto cols = static_cast<unsigned>((ldo + 1023) / 1024);
  const auto ry = static_cast<unsigned>(std::min<std::int64_t>(rows, 65535));
  silu_mul_kernel<<<dim3(cols, ry), 256, 0, s>>>(gu, rows, inter, ldo, out);
}

__global__ void gelu_kernel(const float* x, std::int64_t n, bf16* out) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float v = x[i];
    out[i] = __float2bfloat16(0.5f * v * (1.0f + erff(v * 0.70710678118654752f)));
  }
}

__global__ void f32_to_bf16_kernel(const float* src, std::int64_t n, bf16* dst) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    dst[i] = __float2bfloat16(src[i]);
}

// hi = bf16(x), lo = bf16(x − hi): hi + lo carries about 16 significant bits of x.
__global__ void split_bf16_kernel(const float* src, std::int64_t n, bf16* hi, bf16* lo) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float x = src[i];
    const bf16 h = __float2bfloat16(x);
    hi[i] = h;
    lo[i] = __float2bfloat16(x - __bfloat162float(h));
  }
}

// out[r][j] (+)= y2[r][j] + y2[rows + r][j] + bias[j].
__global__ void add_row_halves_kernel(const float* y2, std::int64_t rows, std::int64_t n, const float* bias,
                                      float* out, bool accumulate) {
  const std::int64_t total = rows * n;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    float v = y2[i] + y2[total + i];
    if (bias) v += bias[i % n];
    out[i] = accumulate ? out[i] + v : v;
  }
}

__global__ void f16_to_bf16_kernel(const std::uint16_t* src, std::int64_t n, bf16* dst) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    __half h;
    *reinterpret_cast<std::uint16_t*>(&h) = src[i];
    dst[i] = __float2bfloat16(__half2float(h));
  }
}

__global__ void permute_rows_kernel(const float* src, const std::int64_t* idx, std::int64_t cols, float* dst,
                                    bool scatter) {
  const std::int64_t r = blockIdx.x;
  const std::int64_t from = scatter ? r : idx[r], to = scatter ? idx[r] : r;
  for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) dst[to * cols + c] = src[from * cols + c];
}

__global__ void embed_kernel(const bf16* embed, std::int64_t hidden, const std::int32_t* ids,
                             const std::int32_t* feature_row, const float* features, float* x) {
  const std::int64_t r = blockIdx.x;
  float* xr = x + r * hidden;
  const std::int32_t f = feature_row ? feature_row[r] : -1;
  if (f >= 0) {
    const float* src = features + static_cast<std::int64_t>(f) * hidden;
    for (std::int64_t c = threadIdx.x; c < hidden; c += blockDim.x) xr[c] = src[c];
  } else {
    const bf16* src = embed + static_cast<std::int64_t>(ids[r]) * hidden;
    for (std::int64_t c = threadIdx.x; c < hidden; c += blockDim.x) xr[c] = __bfloat162float(src[c]);
  }
}

__global__ void mrope_tables_kernel(const std::int64_t* pos, std::int64_t rows, const float* inv_freq,
                                    const std::int8_t* stream, int half, float* cos_out, float* sin_out) {
  const std::int64_t n = rows * half;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = i / half;
    const int j = static_cast<int>(i - r * half);
    const float p = static_cast<float>(pos[stream[j] * rows + r]);
    const float angle = p * inv_freq[j];
    cos_out[i] = static_cast<float>(cos(static_cast<double>(angle)));
    sin_out[i] = static_cast<float>(sin(static_cast<double>(angle)));
  }
}

// One fused qkv row: rotary on q and k, bf16 out. k_row/v_row point at kv head 0 of the destination row;
// kv head g lies kv_head_stride elements further. Threads of the block go over (head, pair) of q and k,
// then over v.
// Item t of the row goes to thread t0 + t·step of the blocks that share the row (t0 = this thread's index
// among them, step = their thread count).
__device__ void rope_split_row(const float* row, const float* c, const float* s, int n_heads, int n_kv,
                               int hd, bf16* q_row, bf16* k_row, bf16* v_row, std::int64_t kv_head_stride,
                               int t0, int step) {
  const int half = hd / 2;
  const int qpairs = n_heads * half, kpairs = n_kv * half;
  for (int t = t0; t < qpairs + kpairs; t += step) {
    const bool is_q = t < qpairs;
    const int u = is_q ? t : t - qpairs;
    const int h = u / half, j = u - h * half;
    const float* src = row + (is_q ? 0 : n_heads * hd) + h * hd;
    const float x0 = src[j], x1 = src[j + half];
    const float y0 = x0 * c[j] - x1 * s[j], y1 = x1 * c[j] + x0 * s[j];
    bf16* dst = is_q ? q_row + h * hd : k_row + h * kv_head_stride;
    dst[j] = __float2bfloat16(y0);
    dst[j + half] = __float2bfloat16(y1);
  }
  const float* vsrc = row + (n_heads + n_kv) * hd;
  for (int t = t0; t < n_kv * hd; t += step) {
    const int g = t / hd, d = t - g * hd;
    v_row[g * kv_head_stride + d] = __float2bfloat16(vsrc[t]);
  }
}

// One block per row.
__global__ void rope_split_kernel(QkvSplit a) {
  const std::int64_t r = blockIdx.x;
  const int half = a.hd / 2;
  const std::int64_t kv_off = (a.kv_row0 + r) * a.kv_row_stride;
  rope_split_row(a.qkv + r * a.qkv_stride, a.cos + r * half, a.sin + r * half, a.n_heads, a.n_kv, a.hd,
                 a.q_out + r * a.n_heads * a.hd, a.k_out + kv_off, a.v_out + kv_off, a.kv_head_stride,
                 threadIdx.x, blockDim.x);
}

// gridDim.y blocks per sequence (= row; a decode row is small, so it is spread over several blocks for
// latency); the destination is position len − 1 of the sequence's pages.
__global__ void rope_split_decode_kernel(QkvDecodeSplit a) {
  const std::int64_t r = blockIdx.x;
  const int half = a.hd / 2;
  const DecodeSeq sq = a.seqs[r];
  const int t = sq.len - 1;
  bf16* page = sq.pages[t / kKvPageTokens];
  bf16* k_row =
      page + (static_cast<std::int64_t>(a.layer) * a.n_kv * kKvPageTokens + t % kKvPageTokens) * a.hd;
  rope_split_row(a.qkv + r * a.qkv_stride, a.cos + r * half, a.sin + r * half, a.n_heads, a.n_kv, a.hd,
                 a.q_out + r * a.n_heads * a.hd, k_row, k_row + a.geo.v_offset(),
                 static_cast<std::int64_t>(kKvPageTokens) * a.hd, blockIdx.y * blockDim.x + threadIdx.x,
                 gridDim.y * blockDim.x);
}

// Block (row, kv head, K or V) copies one position's head vector between the staging cache and its page,
// 16 bytes per thread when the head dim allows it.
__global__ void kv_page_copy_kernel(KvPageCopy a) {
  const std::int64_t j = a.pos0 + blockIdx.x;
  const int g = blockIdx.y, is_v = blockIdx.z, hd = a.geo.hd;
  bf16* page = a.pages[j / kKvPageTokens];
  bf16* pv = page + (is_v ? a.geo.v_offset() : 0) +
             ((static_cast<std::int64_t>(a.layer) * a.geo.n_kv + g) * kKvPageTokens + j % kKvPageTokens) * hd;
  bf16* sv = (is_v ? a.v : a.k) + g * a.head_stride + j * hd;
  bf16* dst = a.to_pages ? pv : sv;
  const bf16* src = a.to_pages ? sv : pv;
  if ((hd & 7) == 0) {
    for (int c = threadIdx.x; c < hd / 8; c += blockDim.x)
      reinterpret_cast<uint4*>(dst)[c] = reinterpret_cast<const uint4*>(src)[c];
  } else {
    for (int d = threadIdx.x; d < hd; d += blockDim.x) dst[d] = src[d];
  }
}

// Argmax in two steps: block (s, b) takes slice s of row b (first index of the maximum in the slice, or
// `cols` when no value is above −inf, or −1 when it holds a NaN); then one warp per row picks among the
// slices' winners (larger value, then smaller index).
constexpr int kArgmaxThreads = 1024;

// (best, bi) ← (v, i) when v is larger, or equal with a smaller index.
__device__ __forceinline__ void argmax_merge(float& best, std::int64_t& bi, float v, std::int64_t i) {
  if (v > best || (v == best && i < bi)) {
    best = v;
    bi = i;
  }
}
// The warp's winner in every lane.
__device__ __forceinline__ void warp_argmax(float& best, std::int64_t& bi) {
  for (int o = 16; o > 0; o >>= 1) {
    const float v = __shfl_xor_sync(0xffffffffu, best, o);
    const std::int64_t i = __shfl_xor_sync(0xffffffffu, bi, o);
    argmax_merge(best, bi, v, i);
  }
}
constexpr int kArgmaxMaxSlices = 64;

__global__ void __launch_bounds__(kArgmaxThreads)
    argmax_slice_kernel(const float* logits, std::int64_t cols, std::int64_t chunk, float* part_v,
                        std::int32_t* part_i) {
  const int sl = blockIdx.x, b = blockIdx.y;
  const float* x = logits + b * cols;
  const std::int64_t c0 = sl * chunk, c1 = min(cols, c0 + chunk);
  float best = -INFINITY;
  std::int64_t bi = cols;
  int nan = 0;
  for (std::int64_t i = c0 + threadIdx.x; i < c1; i += blockDim.x) {
    const float v = x[i];
    if (isnan(v)) nan = 1;
    if (v > best) {  // i only grows within a thread: the first index of the maximum is kept
      best = v;
      bi = i;
    }
  }
  nan = __syncthreads_or(nan);
  // Warp, then block: larger value wins, then the smaller index.
  warp_argmax(best, bi);
  __shared__ float sv[kArgmaxThreads / 32];
  __shared__ std::int64_t si[kArgmaxThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sv[warp] = best;
    si[warp] = bi;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) argmax_merge(best, bi, sv[w], si[w]);
  part_v[b * gridDim.x + sl] = best;
  part_i[b * gridDim.x + sl] = nan ? -1 : static_cast<std::int32_t>(bi);
}

__global__ void argmax_pick_kernel(const float* part_v, const std::int32_t* part_i, int slices,
                                   std::int64_t cols, std::int32_t* out) {
  const int b = blockIdx.x, lane = threadIdx.x;
  float best = -INFINITY;
  std::int64_t bi = cols;
  int nan = 0;
  for (int s = lane; s < slices; s += 32) {
    const float v = part_v[b * slices + s];
    const std::int32_t i = part_i[b * slices + s];
    if (i < 0) nan = 1;
    if (i >= 0 && i < cols) argmax_merge(best, bi, v, i);
  }
  nan = __any_sync(0xffffffffu, nan);
  warp_argmax(best, bi);
  if (lane == 0) out[b] = nan || bi >= cols ? -1 : static_cast<std::int32_t>(bi);
}

int argmax_slices(std::int64_t cols) {
  return static_cast<int>(std::clamp<std::int64_t>((cols + 4095) / 4096, 1, kArgmaxMaxSlices));
}

int grid_for(std::int64_t n, int threads) {
  const std::int64_t blocks = (n + threads - 1) / threads;
  return static_cast<int>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

}  // namespace

void rms_norm(cudaStream_t s, const float* x, std::int64_t rows, std::int64_t dim, std::int64_t x_stride,
              const float* weight, float eps, bf16* y) {
  if (rows <= 0) return;
  rms_norm_kernel<<<static_cast<unsigned>(rows), 256, 0, s>>>(x, dim, x_stride, weight, eps, y);
  check_launch("rms_norm");
}

void silu_mul(cudaStream_t s, const float* gu, std::int64_t rows, std::int64_t inter, bf16* out,
              std::int64_t ldo) {
  if (ldo == 0) ldo = inter;
  if (ldo < inter) check(cudaErrorInvalidValue, "silu_mul: output row stride below the width");
  launch_silu_mul(s, gu, rows, inter, ldo, out);
  check_launch("silu_mul");
}

void silu_mul_f32(cudaStream_t s, const float* gu, std::int64_t rows, std::int64_t inter, float* out) {
  launch_silu_mul(s, gu, rows, inter, inter, out);
  check_launch("silu_mul_f32");
}

void rms_norm_f32(cudaStream_t s, const float* x, std::int64_t rows, std::int64_t dim, std::int64_t x_stride,
                  const float* weight, float eps, float* y) {
  if (rows <= 0) return;
  rms_norm_kernel<<<static_cast<unsigned>(rows), 256, 0, s>>>(x, dim, x_stride, weight, eps, y);
  check_launch("rms_norm_f32");
}

void gemv(cudaStream_t s, const float* x, int m, const bf16* w, std::int64_t n, std::int64_t k,
          const float* bias, float* y, bool accumulate) {
  // One GEMV kernel serves every dense weight type (weight_formats.cu); output rows are contiguous here.
  gemv_typed(s, x, m, w, ElemType::kBF16, n, k, bias, y, n, accumulate);
}

void gelu(cudaStream_t s, const float* x, std::int64_t n, bf16* out) {
  gelu_kernel<<<grid_for(n, 256), 256, 0, s>>>(x, n, out);
  check_launch("gelu");
}

void f32_to_bf16(cudaStream_t s, const float* src, std::int64_t n, bf16* dst) {
  f32_to_bf16_kernel<<<grid_for(n, 256), 256, 0, s>>>(src, n, dst);
  check_launch("f32_to_bf16");
}

void split_bf16(cudaStream_t s, const float* src, std::int64_t n, bf16* hi, bf16* lo) {
  if (n <= 0) return;
  split_bf16_kernel<<<grid_for(n, 256), 256, 0, s>>>(src, n, hi, lo);
  check_launch("split_bf16");
}

void add_row_halves(cudaStream_t s, const float* y2, std::int64_t rows, std::int64_t n, const float* bias,
                    float* out, bool accumulate) {
  if (rows <= 0 || n <= 0) return;
  add_row_halves_kernel<<<grid_for(rows * n, 256), 256, 0, s>>>(y2, rows, n, bias, out, accumulate);
  check_launch("add_row_halves");
}

void f16_to_bf16(cudaStream_t s, const std::uint16_t* src, std::int64_t n, bf16* dst) {
  f16_to_bf16_kernel<<<grid_for(n, 256), 256, 0, s>>>(src, n, dst);
  check_launch("f16_to_bf16");
}

void gather_rows(cudaStream_t s, const float* src, const std::int64_t* idx, std::int64_t rows,
                 std::int64_t cols, float* dst) {
  if (rows <= 0) return;
  permute_rows_kernel<<<static_cast<unsigned>(rows), 256, 0, s>>>(src, idx, cols, dst, false);
  check_launch("gather_rows");
}

void scatter_rows(cudaStream_t s, const float* src, const std::int64_t* idx, std::int64_t rows,
                  std::int64_t cols, float* dst) {
  if (rows <= 0) return;
  permute_rows_kernel<<<static_cast<unsigned>(rows), 256, 0, s>>>(src, idx, cols, dst, true);
  check_launch("scatter_rows");
}

void embed_rows(cudaStream_t s, const bf16* embed, std::int64_t hidden, const std::int32_t* ids,
                const std::int32_t* feature_row, const float* features, std::int64_t rows, float* x) {
  if (rows <= 0) return;
  embed_kernel<<<static_cast<unsigned>(rows), 256, 0, s>>>(embed, hidden, ids, feature_row, features, x);
  check_launch("embed_rows");
}

void mrope_tables(cudaStream_t s, const std::int64_t* pos, std::int64_t rows, const float* inv_freq,
                  const std::int8_t* stream, int half, float* cos_out, float* sin_out) {
  mrope_tables_kernel<<<grid_for(rows * half, 256), 256, 0, s>>>(pos, rows, inv_freq, stream, half, cos_out,
                                                                 sin_out);
  check_launch("mrope_tables");
}

void rope_split_qkv(cudaStream_t s, const QkvSplit& a) {
  if (a.rows <= 0) return;
  rope_split_kernel<<<static_cast<unsigned>(a.rows), 256, 0, s>>>(a);
  check_launch("rope_split_qkv");
}

void rope_split_qkv_decode(cudaStream_t s, const QkvDecodeSplit& a) {
  if (a.rows <= 0) return;
  // About one (q or k) rotation pair per thread.
  const int pairs = (a.n_heads + a.n_kv) * (a.hd / 2);
  const unsigned slices = static_cast<unsigned>(std::max(1, std::min(16, (pairs + 255) / 256)));
  rope_split_decode_kernel<<<dim3(static_cast<unsigned>(a.rows), slices), 256, 0, s>>>(a);
  check_launch("rope_split_qkv_decode");
}

void kv_page_copy(cudaStream_t s, const KvPageCopy& a) {
  if (a.rows <= 0) return;
  if (a.pages == nullptr || a.geo.n_kv <= 0 || a.geo.n_kv > 65535 || a.geo.hd <= 0 || a.pos0 < 0 ||
      a.rows > INT32_MAX)
    check(cudaErrorInvalidValue, "kv_page_copy: bad arguments");
  const int threads =
      (a.geo.hd & 7) == 0 ? std::max(32, std::min(256, a.geo.hd / 8)) : std::min(256, a.geo.hd);
  kv_page_copy_kernel<<<dim3(static_cast<unsigned>(a.rows), static_cast<unsigned>(a.geo.n_kv), 2),
                        static_cast<unsigned>(threads), 0, s>>>(a);
  check_launch("kv_page_copy");
}

std::size_t argmax_workspace(std::int64_t rows, std::int64_t cols) {
  return static_cast<std::size_t>(std::max<std::int64_t>(rows, 0)) * argmax_slices(cols) *
         (sizeof(float) + sizeof(std::int32_t));
}

void argmax_rows(cudaStream_t s, const float* logits, std::int64_t rows, std::int64_t cols, std::int32_t* out,
                 void* work) {
  if (rows <= 0) return;
  if (work == nullptr || cols <= 0 || cols > INT32_MAX || rows > 65535)
    check(cudaErrorInvalidValue, "argmax_rows: no workspace, or rows/cols out of range");
  const int slices = argmax_slices(cols);
  const std::int64_t chunk = (cols + slices - 1) / slices;
  auto* part_v = static_cast<float*>(work);
  auto* part_i = reinterpret_cast<std::int32_t*>(part_v + rows * slices);
  argmax_slice_kernel<<<dim3(static_cast<unsigned>(slices), static_cast<unsigned>(rows)), kArgmaxThreads, 0,
                        s>>>(logits, cols, chunk, part_v, part_i);
  argmax_pick_kernel<<<static_cast<unsigned>(rows), 32, 0, s>>>(part_v, part_i, slices, cols, out);
  check_launch("argmax_rows");
}

bool pdl_enabled() {
  static std::atomic<int> cache[64];  // per device: 0 unknown, 1 off, 2 on
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  std::atomic<int>* slot = dev >= 0 && dev < 64 ? &cache[dev] : nullptr;
  if (slot) {
    const int v = slot->load(std::memory_order_relaxed);
    if (v != 0) return v == 2;
  }
  int major = 0;
  const char* env = std::getenv("MV_PDL");
  // The kernels must also have been compiled for compute capability 9.0 or later (a build for sm_80 only,
  // run through the driver's PTX compiler on a newer GPU, has no dependency waits in its kernels).
  cudaFuncAttributes fa{};
  const bool on = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                  major >= 9 && cudaFuncGetAttributes(&fa, argmax_pick_kernel) == cudaSuccess &&
                  fa.ptxVersion >= 90 && !(env && std::string_view(env) == "0");
  cudaGetLastError();
  if (slot) slot->store(on ? 2 : 1, std::memory_order_relaxed);
  return on;
}

}  // namespace mv::cuda
