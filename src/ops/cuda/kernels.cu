// Element-wise and row kernels of the CUDA engine (see cuda_ops.hpp).
#include <cuda_fp16.h>

#include <cfloat>
#include <cmath>

#include "ops/cuda/cuda_ops.hpp"

namespace mv::cuda {
namespace {

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

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

template <typename T>
__global__ void silu_mul_kernel(const float* gu, std::int64_t rows, std::int64_t inter, T* out) {
  const std::int64_t n = rows * inter;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = i / inter, c = i - r * inter;
    const float g = gu[r * 2 * inter + c], u = gu[r * 2 * inter + inter + c];
    store(out + i, g / (1.0f + __expf(-g)) * u);
  }
}

// GEMV: a block of kGemvWarps warps computes gemv_rows_per_block<m>() output rows for all m inputs, the k
// dimension split over its threads in chunks of 8 (16-byte weight loads, one per output row and chunk, so
// that many loads are in flight per thread). Each x chunk is loaded once per thread and reused for
// every output row of the block, which keeps the activation traffic at 2m/(rows per block) bytes per
// weight byte (2m with one warp per row). The partial sums are reduced by a warp reduce-scatter and
// then across warps in a fixed order. Thread t always takes chunks t, t + 256, ... and adds each chunk's
// 8 products in order with fmaf, and the reduction tree does not depend on m, so output row i of a call
// with m rows equals the same row computed alone.
constexpr int kGemvWarps = 8;
constexpr int kGemvThreads = kGemvWarps * 32;
// Output rows per block: 8 up to 4 inputs, 4 above (the accumulators then fill the registers).
template <int M>
__host__ __device__ constexpr int gemv_rows_per_block() {
  return M <= 4 ? 8 : 4;
}

__device__ __forceinline__ float bf16_lo(unsigned v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16_hi(unsigned v) { return __uint_as_float(v & 0xffff0000u); }

// Sums V values (V a multiple of 32) over the warp: afterwards lane L holds in v[0..V/32) the sums of
// values L·V/32 + j. Every sum is the same addition tree as warp_sum's, whatever V is.
template <int O, int V>
__device__ __forceinline__ void warp_reduce_scatter_step(float (&v)[V], int lane) {
  if constexpr (O >= 1) {
    constexpr int half = (V * O) / 32;  // values still held at this step: 2 * half
    const bool up = (lane & O) != 0;
#pragma unroll
    for (int j = 0; j < half; ++j) {
      const float lo = v[j], hi = v[j + half];
      const float send = up ? lo : hi;
      const float keep = up ? hi : lo;
      v[j] = keep + __shfl_xor_sync(0xffffffffu, send, O);
    }
    warp_reduce_scatter_step<O / 2>(v, lane);
  }
}

template <int V>
__device__ __forceinline__ void warp_reduce_scatter(float (&v)[V], int lane) {
  static_assert(V % 32 == 0, "V must be a multiple of 32");
  warp_reduce_scatter_step<16>(v, lane);
}

template <int M>
__global__ void __launch_bounds__(kGemvThreads, 2)
    gemv_kernel(const float* __restrict__ x, const bf16* __restrict__ w, std::int64_t n, std::int64_t k,
                const float* bias, float* y, bool accumulate) {
  constexpr int R = gemv_rows_per_block<M>();
  constexpr int V = ((R * M + 31) / 32) * 32;  // accumulators, padded for the reduce-scatter
  __shared__ float red[kGemvWarps][V];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const std::int64_t row0 = static_cast<std::int64_t>(blockIdx.x) * R;
  float acc[V];  // acc[r * M + i]: output row row0 + r, input i
#pragma unroll
  for (int j = 0; j < V; ++j) acc[j] = 0.0f;
  // Rows past n (last block) load row n - 1 and are not stored.
  const bf16* wb = w + row0 * k;
  const int last = static_cast<int>(n - 1 - row0 < R - 1 ? n - 1 - row0 : R - 1);
  if ((k & 7) == 0) {
    const std::int64_t k8 = k >> 3;
    for (std::int64_t c = tid; c < k8; c += kGemvThreads) {
      uint4 raw[R];
#pragma unroll
      for (int r = 0; r < R; ++r)
        raw[r] = __ldg(reinterpret_cast<const uint4*>(wb) + (r < last ? r : last) * k8 + c);
#pragma unroll
      for (int h = 0; h < 4; ++h) {  // elements 2h, 2h + 1 of the chunk
        float wf[R][2];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const unsigned p = h == 0 ? raw[r].x : h == 1 ? raw[r].y : h == 2 ? raw[r].z : raw[r].w;
          wf[r][0] = bf16_lo(p);
          wf[r][1] = bf16_hi(p);
        }
#pragma unroll
        for (int i = 0; i < M; ++i) {
          const float2 a = __ldg(reinterpret_cast<const float2*>(x + i * k) + 4 * c + h);
#pragma unroll
          for (int r = 0; r < R; ++r) {
            float s = acc[r * M + i];
            s = fmaf(wf[r][0], a.x, s);
            s = fmaf(wf[r][1], a.y, s);
            acc[r * M + i] = s;
          }
        }
      }
    }
  } else {
    for (std::int64_t c = tid; c < k; c += kGemvThreads) {
      float xv[M];
#pragma unroll
      for (int i = 0; i < M; ++i) xv[i] = __ldg(x + i * k + c);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float wv = __bfloat162float(wb[(r < last ? r : last) * k + c]);
#pragma unroll
        for (int i = 0; i < M; ++i) acc[r * M + i] = fmaf(wv, xv[i], acc[r * M + i]);
      }
    }
  }
  warp_reduce_scatter(acc, lane);
  constexpr int per_lane = V / 32;
#pragma unroll
  for (int j = 0; j < per_lane; ++j) red[warp][lane * per_lane + j] = acc[j];
  __syncthreads();
  if (tid < R * M) {
    const int r = tid / M, i = tid - r * M;
    const std::int64_t row = row0 + r;
    if (row < n) {
      float v = red[0][tid];
#pragma unroll
      for (int q = 1; q < kGemvWarps; ++q) v += red[q][tid];
      if (bias) v += bias[row];
      if (accumulate) v += y[i * n + row];
      y[i * n + row] = v;
    }
  }
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
__device__ void rope_split_row(const float* row, const float* c, const float* s, int n_heads, int n_kv,
                               int hd, bf16* q_row, bf16* k_row, bf16* v_row, std::int64_t kv_head_stride) {
  const int half = hd / 2;
  const int qpairs = n_heads * half, kpairs = n_kv * half;
  for (int t = threadIdx.x; t < qpairs + kpairs; t += blockDim.x) {
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
  for (int t = threadIdx.x; t < n_kv * hd; t += blockDim.x) {
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
                 a.q_out + r * a.n_heads * a.hd, a.k_out + kv_off, a.v_out + kv_off, a.kv_head_stride);
}

// One block per sequence (= row); the destination row comes from the sequence's length.
__global__ void rope_split_decode_kernel(QkvDecodeSplit a) {
  const std::int64_t r = blockIdx.x;
  const int half = a.hd / 2;
  const DecodeSeq sq = a.seqs[r];
  const std::int64_t kv_off = static_cast<std::int64_t>(a.layer) * a.n_kv * sq.head_stride +
                              static_cast<std::int64_t>(sq.len - 1) * a.kv_row_stride;
  rope_split_row(a.qkv + r * a.qkv_stride, a.cos + r * half, a.sin + r * half, a.n_heads, a.n_kv, a.hd,
                 a.q_out + r * a.n_heads * a.hd, sq.k + kv_off, sq.v + kv_off, sq.head_stride);
}

__global__ void argmax_kernel(const float* logits, std::int64_t cols, std::int32_t* out) {
  const float* x = logits + blockIdx.x * cols;
  float best = -INFINITY;
  std::int64_t bi = cols;
  int nan = 0;
  for (std::int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const float v = x[i];
    if (isnan(v)) nan = 1;
    if (v > best) {  // i only grows within a thread: the first index of the maximum is kept
      best = v;
      bi = i;
    }
  }
  nan = __syncthreads_or(nan);
  __shared__ float sv[1024];
  __shared__ std::int64_t si[1024];
  sv[threadIdx.x] = best;
  si[threadIdx.x] = bi;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) {
      const float v2 = sv[threadIdx.x + o];
      const std::int64_t i2 = si[threadIdx.x + o];
      if (v2 > sv[threadIdx.x] || (v2 == sv[threadIdx.x] && i2 < si[threadIdx.x])) {
        sv[threadIdx.x] = v2;
        si[threadIdx.x] = i2;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = nan || si[0] >= cols ? -1 : static_cast<std::int32_t>(si[0]);
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

void silu_mul(cudaStream_t s, const float* gu, std::int64_t rows, std::int64_t inter, bf16* out) {
  silu_mul_kernel<<<grid_for(rows * inter, 256), 256, 0, s>>>(gu, rows, inter, out);
  check_launch("silu_mul");
}

void silu_mul_f32(cudaStream_t s, const float* gu, std::int64_t rows, std::int64_t inter, float* out) {
  silu_mul_kernel<<<grid_for(rows * inter, 256), 256, 0, s>>>(gu, rows, inter, out);
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
  if (m <= 0) return;

  switch (m) {
#define MV_GEMV_CASE(M)                                                                                    \
  case M:                                                                                                  \
    gemv_kernel<M><<<static_cast<unsigned>((n + gemv_rows_per_block<M>() - 1) / gemv_rows_per_block<M>()), \
                     kGemvThreads, 0, s>>>(x, w, n, k, bias, y, accumulate);                               \
    break;
    MV_GEMV_CASE(1)
    MV_GEMV_CASE(2)
    MV_GEMV_CASE(3)
    MV_GEMV_CASE(4)
    MV_GEMV_CASE(5)
    MV_GEMV_CASE(6)
    MV_GEMV_CASE(7)
    MV_GEMV_CASE(8)
#undef MV_GEMV_CASE
    default:
      check(cudaErrorInvalidValue, "gemv: more than kGemvMaxRows rows");
  }
  check_launch("gemv");
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
  rope_split_decode_kernel<<<static_cast<unsigned>(a.rows), 256, 0, s>>>(a);
  check_launch("rope_split_qkv_decode");
}

void argmax_rows(cudaStream_t s, const float* logits, std::int64_t rows, std::int64_t cols,
                 std::int32_t* out) {
  if (rows <= 0) return;
  argmax_kernel<<<static_cast<unsigned>(rows), 1024, 0, s>>>(logits, cols, out);
  check_launch("argmax_rows");
}

}  // namespace mv::cuda
