// NF4 and f16/f32 weight kernels (see weight_formats.hpp). Every float step of the NF4 quantization and
// decoding that must match src/quant bit for bit is written with explicit round-to-nearest intrinsics
// (__fmul_rn, __fadd_rn, __fdiv_rn), which nvcc never contracts into a fused multiply-add.
#include <cuda_fp16.h>

#include <cfloat>
#include <type_traits>

#include "ops/cuda/device_math.cuh"
#include "ops/cuda/pdl.cuh"
#include "ops/cuda/weight_formats.hpp"

namespace mv::cuda {
namespace {

static_assert(kGemvMaxRows >= 1 && kGemvMaxRows <= 8, "the GEMV kernels are instantiated for 1..8 rows");

constexpr int kWarps = 8;  // warps per block of the GEMV and quantization kernels

__constant__ float kThresholds[15] = {
    -0.8480964004993439f,  -0.6106329262256622f,  -0.4599952697753906f,   -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f,   0.2035212516784668f,   0.2920137718319893f,    0.3893125355243683f,
    0.5016634166240692f,   0.6427869200706482f,   0.8614784181118011f,
};

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void put(float* p, float v) { *p = v; }
__device__ __forceinline__ void put(bf16* p, float v) { *p = __float2bfloat16(v); }

// ---- GEMV inputs (GemvIn) ------------------------------------------------------------------------------

// Element j of input row i as the GEMV multiplies it; kRmsNorm adds the raw value's square to ss.
template <GemvIn IN>
__device__ __forceinline__ float input_elem(const float* x, std::int64_t k, int i, std::int64_t j,
                                            const float* nw, float& ss) {
  if constexpr (IN == GemvIn::kSiluMul) {
    return silu_times(__ldg(x + 2 * i * k + j), __ldg(x + 2 * i * k + k + j));
  } else {
    const float a = __ldg(x + i * k + j);
    if constexpr (IN == GemvIn::kRmsNorm) {
      ss = fmaf(a, a, ss);
      return a * __ldg(nw + j);
    }
    return a;
  }
}
// Pair p (elements 2p, 2p + 1) of input row i; k even.
template <GemvIn IN>
__device__ __forceinline__ float2 input_pair(const float* x, std::int64_t k, int i, std::int64_t p,
                                             const float* nw, float& ss) {
  if constexpr (IN == GemvIn::kSiluMul) {
    const float2 g = __ldg(reinterpret_cast<const float2*>(x + 2 * i * k) + p);
    const float2 u = __ldg(reinterpret_cast<const float2*>(x + 2 * i * k + k) + p);
    return make_float2(silu_times(g.x, u.x), silu_times(g.y, u.y));
  } else {
    float2 a = __ldg(reinterpret_cast<const float2*>(x + i * k) + p);
    if constexpr (IN == GemvIn::kRmsNorm) {
      ss = fmaf(a.x, a.x, ss);
      ss = fmaf(a.y, a.y, ss);
      const float2 w = __ldg(reinterpret_cast<const float2*>(nw) + p);
      a.x *= w.x;
      a.y *= w.y;
    }
    return a;
  }
}
// The factor a kRmsNorm row's dot products are multiplied by.
__device__ __forceinline__ float rms_factor(float ss, std::int64_t k, float eps) {
  return rsqrtf(ss / static_cast<float>(k) + eps);
}

unsigned grid_for(std::int64_t n, int threads) {
  const std::int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 * 8 ? 65535 * 8 : b));
}

// Number of NF4 thresholds below x (NaN: 0) = quant::nf4_encode.
__device__ __forceinline__ unsigned nf4_encode(float x) {
  unsigned c = 0;
#pragma unroll
  for (int i = 0; i < 15; ++i) c += x > kThresholds[i] ? 1u : 0u;
  return c;
}

// quant::dynamic_encode: bitsandbytes' 7-step binary search with its tie rules.
__device__ unsigned dynamic_encode(const float* code, float x) {
  int pivot = 127, upper_pivot = 255, lower_pivot = 0;
  float lower = -1.0f, upper = 1.0f;
  float val = code[pivot];
  for (int i = 64; i > 0; i >>= 1) {
    if (x > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = code[pivot];
  }
  if (upper_pivot == 255) upper = code[upper_pivot];
  if (lower_pivot == 0) lower = code[lower_pivot];
  if (x > val) {
    const float mid = __fmul_rn(__fadd_rn(upper, val), 0.5f);
    return static_cast<unsigned>(x > mid ? upper_pivot : pivot);
  }
  const float mid = __fmul_rn(__fadd_rn(lower, val), 0.5f);
  return static_cast<unsigned>(x < mid ? lower_pivot : pivot);
}

// One warp per block of 2^shift elements.
template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
    nf4_quantize_kernel(const T* __restrict__ src, std::int64_t numel, int shift, std::uint8_t* packed,
                        float* absmax) {
  const int lane = threadIdx.x & 31;
  const std::int64_t b = static_cast<std::int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const std::int64_t bs = std::int64_t{1} << shift, nb = (numel + bs - 1) >> shift;
  if (b >= nb) return;
  const std::int64_t e0 = b << shift, cnt = numel - e0 < bs ? numel - e0 : bs;
  float amax = -FLT_MAX;  // fmaxf ignores a NaN element, as the CPU's fmax / maxps do
  for (std::int64_t j = lane; j < cnt; j += 32) amax = fmaxf(amax, fabsf(to_f32(src[e0 + j])));
  amax = warp_max(amax);
  const float inv = __fdiv_rn(1.0f, amax);
  const std::int64_t pairs = (cnt + 1) >> 1;
  for (std::int64_t p = lane; p < pairs; p += 32) {
    const std::int64_t j = 2 * p;
    const float x0 = __fmul_rn(to_f32(src[e0 + j]), inv);
    const float x1 = __fmul_rn(j + 1 < cnt ? to_f32(src[e0 + j + 1]) : 0.0f, inv);  // odd tail: 0 · inv
    packed[(e0 >> 1) + p] = static_cast<std::uint8_t>(nf4_encode(x0) << 4 | nf4_encode(x1));
  }
  if (lane == 0) absmax[b] = amax;
}

// One block of 256 threads per nested block of 256 scales.
__global__ void __launch_bounds__(256)
    nf4_nested_kernel(const float* __restrict__ absmax, std::int64_t nb, float offset, const float* map,
                      std::uint8_t* absmax_q, float* nested_absmax) {
  __shared__ float code[256];
  __shared__ float part[8];
  const int t = threadIdx.x;
  code[t] = map[t];
  const std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * 256 + t;
  const bool valid = idx < nb;
  const float r = valid ? __fsub_rn(absmax[idx], offset) : 0.0f;
  float m = warp_max(valid ? fabsf(r) : -FLT_MAX);
  if ((t & 31) == 0) part[t >> 5] = m;
  __syncthreads();
  m = part[0];
  for (int w = 1; w < 8; ++w) m = fmaxf(m, part[w]);
  if (t == 0) nested_absmax[blockIdx.x] = m;
  const float inv = __fdiv_rn(1.0f, m);
  if (valid) absmax_q[idx] = static_cast<std::uint8_t>(dynamic_encode(code, __fmul_rn(r, inv)));
}

// a' of block b: D[q]·s, then + offset, each rounded (quant::Nf4View::scale).
__device__ __forceinline__ float nf4_scale(const Nf4Ref& q, const float* ncode, std::int64_t b) {
  if (q.absmax_q == nullptr) return q.absmax[b];
  return __fadd_rn(__fmul_rn(ncode[q.absmax_q[b]], q.nested_absmax[b >> q.nested_shift]), q.offset);
}

// Loads the 16 levels and the 256-entry nested map into shared memory (all threads of the block).
__device__ __forceinline__ void load_tables(const Nf4Ref& q, float* lut, float* ncode) {
  for (int t = threadIdx.x; t < 256; t += blockDim.x) {
    if (t < 16) lut[t] = q.code[t];
    ncode[t] = q.nested_code ? q.nested_code[t] : 0.0f;
  }
  __syncthreads();
}

template <typename T>
__global__ void __launch_bounds__(256) nf4_dequant_kernel(Nf4Ref q, T* dst) {
  __shared__ float lut[16];
  __shared__ float ncode[256];
  load_tables(q, lut, ncode);
  const std::int64_t bytes = (q.numel + 1) >> 1;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < bytes;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const unsigned byte = q.packed[i];
    const std::int64_t e = 2 * i;
    put(dst + e, __fmul_rn(lut[byte >> 4], nf4_scale(q, ncode, e >> q.block_shift)));
    if (e + 1 < q.numel)
      put(dst + e + 1, __fmul_rn(lut[byte & 15], nf4_scale(q, ncode, (e + 1) >> q.block_shift)));
  }
}

// bf16 dequantization, 16 packed bytes (32 elements, one scale when blocks hold >= 32) per thread and
// step: one 16-byte load and four 16-byte stores instead of a byte load and two 2-byte stores per byte. The
// same products as nf4_dequant_kernel (level · a', rounded to bf16), so the same bits.
__global__ void __launch_bounds__(256) nf4_dequant_bf16_vec_kernel(Nf4Ref q, bf16* dst) {
  __shared__ float lut[16];
  __shared__ float ncode[256];
  load_tables(q, lut, ncode);
  const std::int64_t chunks = q.numel >> 5;
  for (std::int64_t c = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; c < chunks;
       c += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(q.packed) + c);
    const float sc = nf4_scale(q, ncode, (c << 5) >> q.block_shift);
    const unsigned words[4] = {raw.x, raw.y, raw.z, raw.w};
    unsigned out[16];
#pragma unroll
    for (int w = 0; w < 4; ++w)
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const unsigned byte = (words[w] >> (8 * b)) & 255u;  // the even element is the high nibble
        const __nv_bfloat162 v =
            __floats2bfloat162_rn(__fmul_rn(lut[byte >> 4], sc), __fmul_rn(lut[byte & 15u], sc));
        out[4 * w + b] = *reinterpret_cast<const unsigned*>(&v);
      }
    uint4* d = reinterpret_cast<uint4*>(dst + (c << 5));
#pragma unroll
    for (int i = 0; i < 4; ++i) d[i] = make_uint4(out[4 * i], out[4 * i + 1], out[4 * i + 2], out[4 * i + 3]);
  }
}

// Fused NF4 GEMV, general shapes: one warp per output row, element by element with the block of each
// element (rows that start inside a block or a byte, e.g. in = 3420). nf4_gemv_rows_kernel below is the
// fast path.
template <int M>
__global__ void __launch_bounds__(kWarps * 32)
    nf4_gemv_kernel(const float* __restrict__ x, Nf4Ref q, std::int64_t n, std::int64_t k,
                    const float* __restrict__ bias, float* y, std::int64_t ldy, bool accumulate) {
  __shared__ float lut[16];
  __shared__ float ncode[256];
  load_tables(q, lut, ncode);
  pdl_trigger();
  pdl_wait();
  const int lane = threadIdx.x & 31;
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= n) return;
  const std::int64_t e0 = row * k;
  float acc[M];
#pragma unroll
  for (int i = 0; i < M; ++i) acc[i] = 0.0f;
  {
    for (std::int64_t j = lane; j < k; j += 32) {
      const std::int64_t e = e0 + j;
      const unsigned byte = q.packed[e >> 1];
      const float w =
          __fmul_rn(lut[(e & 1) ? (byte & 15u) : (byte >> 4)], nf4_scale(q, ncode, e >> q.block_shift));
#pragma unroll
      for (int i = 0; i < M; ++i) acc[i] += w * x[i * k + j];
    }
  }
#pragma unroll
  for (int i = 0; i < M; ++i) {
    const float v = warp_sum(acc[i]);
    if (lane == 0) {
      float r = v + (bias ? bias[row] : 0.0f);
      if (accumulate) r += y[i * ldy + row];
      y[i * ldy + row] = r;
    }
  }
}

// Fused NF4 GEMV, fast path (k % 32 == 0, blocks of >= 32 elements). A team of G warps (G = 1, 2, 4 or 8,
// chosen by the launch so that short rows keep every SM busy) takes kNf4Rows output rows; each lane loads
// 16 bytes = 32 codes per row per step, which always lie in one block, so the block scale a' is computed
// once per 16 bytes. The lanes of the team walk the row's 32-code chunks together (chunk = lane index in
// the team + step · 32G). Decoding: the nibbles of a 32-bit word are masked once into byte offsets of the
// 16-entry level table in shared memory (4 · code), so each level costs one byte extraction and one
// shared load. The 8 levels of each row are decoded first, then each activation row's 8 values (two
// 16-byte loads) serve all kNf4Rows weight rows. With M <= 4 rows the chunk's partial sums are multiplied
// by a' once; with more rows the decoded levels are multiplied by a' instead (fewer registers). Warp sums
// of a team meet in shared memory and are added in warp order.
constexpr int kNf4Rows = 4;
template <int M, int G>
__global__ void __launch_bounds__(kWarps * 32, 2)
    nf4_gemv_rows_kernel(const float* __restrict__ x, Nf4Ref q, std::int64_t n, std::int64_t k,
                         const float* __restrict__ bias, float* y, std::int64_t ldy, bool accumulate) {
  static_assert(kWarps % G == 0, "a team is a divisor of the block's warps");
  constexpr bool kScaleLevels = M > 4;
  __shared__ float lut[16];
  __shared__ float ncode[256];
  __shared__ float red[G > 1 ? kWarps : 1][kNf4Rows][M];
  load_tables(q, lut, ncode);  // weights: independent of the previous kernel
  pdl_trigger();
  pdl_wait();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int team = warp / G, wt = warp % G;
  const std::int64_t row0 = (static_cast<std::int64_t>(blockIdx.x) * (kWarps / G) + team) * kNf4Rows;
  const std::int64_t chunks = k >> 5;
  const char* lb = reinterpret_cast<const char*>(lut);
  std::int64_t base[kNf4Rows];  // first code of each row; rows past n read row 0's codes, never written
#pragma unroll
  for (int r = 0; r < kNf4Rows; ++r) base[r] = (row0 + r < n ? row0 + r : (row0 < n ? row0 : 0)) * k;
  float acc[kNf4Rows][M];
#pragma unroll
  for (int r = 0; r < kNf4Rows; ++r)
#pragma unroll
    for (int i = 0; i < M; ++i) acc[r][i] = 0.0f;
  for (std::int64_t c = wt * 32 + lane; c < chunks; c += 32 * G) {
    uint4 raw[kNf4Rows];
    float s[kNf4Rows];
#pragma unroll
    for (int r = 0; r < kNf4Rows; ++r)
      raw[r] = __ldg(reinterpret_cast<const uint4*>(q.packed + ((base[r] + (c << 5)) >> 1)));
#pragma unroll
    for (int r = 0; r < kNf4Rows; ++r) s[r] = nf4_scale(q, ncode, (base[r] + (c << 5)) >> q.block_shift);
    float part[kNf4Rows][M];  // unused (and removed by the compiler) when the levels carry a'
#pragma unroll
    for (int r = 0; r < kNf4Rows; ++r)
#pragma unroll
      for (int i = 0; i < M; ++i) part[r][i] = 0.0f;
    const float* xc = x + (c << 5);
#pragma unroll 1
    // One 32-bit word (8 codes) of each row per pass, not unrolled: the words move down one place per
    // pass (raw[r].x is always the current one), which keeps the decoded levels of one pass in registers.
    for (int wi = 0; wi < 4; ++wi) {
      float wv[kNf4Rows][8];
#pragma unroll
      for (int r = 0; r < kNf4Rows; ++r) {
        const unsigned word = raw[r].x;
        raw[r].x = raw[r].y;
        raw[r].y = raw[r].z;
        raw[r].z = raw[r].w;
        const unsigned hi = (word >> 2) & 0x3c3c3c3cu;  // byte b: 4 · code of element 2b (high nibble)
        const unsigned lo = (word << 2) & 0x3c3c3c3cu;  // byte b: 4 · code of element 2b + 1
#pragma unroll
        for (int b = 0; b < 4; ++b) {  // little endian: the lowest byte holds elements 0 and 1
          wv[r][2 * b] = *reinterpret_cast<const float*>(lb + __byte_perm(hi, 0u, 0x4440u | b));
          wv[r][2 * b + 1] = *reinterpret_cast<const float*>(lb + __byte_perm(lo, 0u, 0x4440u | b));
        }
        if constexpr (kScaleLevels) {
#pragma unroll
          for (int j = 0; j < 8; ++j) wv[r][j] *= s[r];
        }
      }
#pragma unroll
      for (int i = 0; i < M; ++i) {
        const float4* xv = reinterpret_cast<const float4*>(xc + i * k + wi * 8);
        const float4 xa = __ldg(xv), xb = __ldg(xv + 1);
#pragma unroll
        for (int r = 0; r < kNf4Rows; ++r) {
          const float d = wv[r][0] * xa.x + wv[r][1] * xa.y + wv[r][2] * xa.z + wv[r][3] * xa.w +
                          wv[r][4] * xb.x + wv[r][5] * xb.y + wv[r][6] * xb.z + wv[r][7] * xb.w;
          if constexpr (kScaleLevels)
            acc[r][i] += d;
          else
            part[r][i] += d;
        }
      }
    }
    if constexpr (!kScaleLevels) {
#pragma unroll
      for (int r = 0; r < kNf4Rows; ++r)
#pragma unroll
        for (int i = 0; i < M; ++i) acc[r][i] += part[r][i] * s[r];
    }
  }
#pragma unroll
  for (int r = 0; r < kNf4Rows; ++r)
#pragma unroll
    for (int i = 0; i < M; ++i) acc[r][i] = warp_sum(acc[r][i]);
  if constexpr (G > 1) {
    if (lane == 0) {
#pragma unroll
      for (int r = 0; r < kNf4Rows; ++r)
#pragma unroll
        for (int i = 0; i < M; ++i) red[warp][r][i] = acc[r][i];
    }
    __syncthreads();
    if (wt != 0 || lane >= kNf4Rows * M) return;
    const int r = lane / M, i = lane % M;
    float v = red[warp][r][i];
    for (int g = 1; g < G; ++g) v += red[warp + g][r][i];
    const std::int64_t row = row0 + r;
    if (row < n) {
      float o = v + (bias ? bias[row] : 0.0f);
      if (accumulate) o += y[i * ldy + row];
      y[i * ldy + row] = o;
    }
  } else {
    if (lane != 0) return;
#pragma unroll
    for (int r = 0; r < kNf4Rows; ++r) {
      const std::int64_t row = row0 + r;
      if (row >= n) continue;
#pragma unroll
      for (int i = 0; i < M; ++i) {
        float o = acc[r][i] + (bias ? bias[row] : 0.0f);
        if (accumulate) o += y[i * ldy + row];
        y[i * ldy + row] = o;
      }
    }
  }
}

// Dense GEMV on a weight of type T, laid out like the bf16 GEMV in kernels.cu: a block of kWarps warps
// computes gemv_typed_rows<M>() output rows for all m inputs, k split over its threads in chunks of 16
// bytes of weights (one load per output row and chunk), each x piece loaded once per thread and reused
// for every row of the block. Thread t always takes chunks t, t + 256, ... and adds the products in order
// with fmaf, and the reduction tree does not depend on m, so row i of a call with m rows equals the same
// row computed alone.
template <int M>
__host__ __device__ constexpr int gemv_typed_rows() {
  return M <= 4 ? 8 : 4;
}

template <int O, int V>
__device__ __forceinline__ void reduce_scatter_step(float (&v)[V], int lane) {
  if constexpr (O >= 1) {
    constexpr int half = (V * O) / 32;
    const bool up = (lane & O) != 0;
#pragma unroll
    for (int j = 0; j < half; ++j) {
      const float lo = v[j], hi = v[j + half];
      const float send = up ? lo : hi;
      const float keep = up ? hi : lo;
      v[j] = keep + __shfl_xor_sync(0xffffffffu, send, O);
    }
    reduce_scatter_step<O / 2>(v, lane);
  }
}

// Pair h of the 16 bytes of weights as floats.
__device__ __forceinline__ unsigned word(const uint4& raw, int h) {
  return h == 0 ? raw.x : h == 1 ? raw.y : h == 2 ? raw.z : raw.w;
}
__device__ __forceinline__ float2 weight_pair(const uint4& raw, int h, const float*) {
  return make_float2(__uint_as_float(word(raw, 2 * h)), __uint_as_float(word(raw, 2 * h + 1)));
}
__device__ __forceinline__ float2 weight_pair(const uint4& raw, int h, const __half*) {
  const unsigned p = word(raw, h);
  return __half22float2(*reinterpret_cast<const __half2*>(&p));
}
__device__ __forceinline__ float2 weight_pair(const uint4& raw, int h, const bf16*) {
  const unsigned p = word(raw, h);
  return make_float2(__uint_as_float(p << 16), __uint_as_float(p & 0xffff0000u));
}

template <typename T, int M, GemvIn IN, int R>
__global__ void __launch_bounds__(kWarps * 32, 2)
    gemv_typed_kernel(const float* __restrict__ x, const T* __restrict__ w, std::int64_t n, std::int64_t k,
                      const float* __restrict__ bias, float* y, std::int64_t ldy, bool accumulate,
                      const float* __restrict__ nw, float eps) {
  constexpr int E = 16 / sizeof(T);  // weights per 16 bytes
  constexpr int P = E / 2;           // pairs per 16 bytes
  constexpr int V = ((R * M + 31) / 32) * 32;
  constexpr int kThreads = kWarps * 32;
  __shared__ float red[kWarps][V];
  __shared__ float ssred[IN == GemvIn::kRmsNorm ? kWarps : 1][M];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const std::int64_t row0 = static_cast<std::int64_t>(blockIdx.x) * R;
  float acc[V];  // acc[r * M + i]: output row row0 + r, input i
  float ss[M];   // kRmsNorm: this thread's share of each input row's sum of squares
#pragma unroll
  for (int j = 0; j < V; ++j) acc[j] = 0.0f;
#pragma unroll
  for (int i = 0; i < M; ++i) ss[i] = 0.0f;
  // Rows past n (last block) load row n - 1 and are not stored.
  const T* wb = w + row0 * k;
  const int last = static_cast<int>(n - 1 - row0 < R - 1 ? n - 1 - row0 : R - 1);
  if (k % E == 0) {
    const std::int64_t kv = k / E;
    // Programmatic dependent launch: this kernel may start before the previous one ends, and waits for it
    // here. (Loading the first weights before the wait, measured on the H100, made the loop below slower
    // than it saved.)
    pdl_trigger();
    pdl_wait();
    for (std::int64_t c = tid; c < kv; c += kThreads) {
      uint4 raw[R];
#pragma unroll
      for (int r = 0; r < R; ++r)
        raw[r] = __ldg(reinterpret_cast<const uint4*>(wb) + (r < last ? r : last) * kv + c);
#pragma unroll
      for (int h = 0; h < P; ++h) {
        float2 wf[R];
#pragma unroll
        for (int r = 0; r < R; ++r) wf[r] = weight_pair(raw[r], h, static_cast<const T*>(nullptr));
#pragma unroll
        for (int i = 0; i < M; ++i) {
          const float2 a = input_pair<IN>(x, k, i, P * c + h, nw, ss[i]);
#pragma unroll
          for (int r = 0; r < R; ++r) {
            float s = acc[r * M + i];
            s = fmaf(wf[r].x, a.x, s);
            s = fmaf(wf[r].y, a.y, s);
            acc[r * M + i] = s;
          }
        }
      }
    }
  } else {
    pdl_trigger();
    pdl_wait();
    for (std::int64_t c = tid; c < k; c += kThreads) {
      float xv[M];
#pragma unroll
      for (int i = 0; i < M; ++i) xv[i] = input_elem<IN>(x, k, i, c, nw, ss[i]);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float wv = to_f32(wb[(r < last ? r : last) * k + c]);
#pragma unroll
        for (int i = 0; i < M; ++i) acc[r * M + i] = fmaf(wv, xv[i], acc[r * M + i]);
      }
    }
  }
  reduce_scatter_step<16>(acc, lane);  // lane L now holds the warp's sums of values L * V / 32 + j
  constexpr int per_lane = V / 32;
#pragma unroll
  for (int j = 0; j < per_lane; ++j) red[warp][lane * per_lane + j] = acc[j];
  if constexpr (IN == GemvIn::kRmsNorm) {
#pragma unroll
    for (int i = 0; i < M; ++i) {
      const float t = warp_sum(ss[i]);
      if (lane == 0) ssred[warp][i] = t;
    }
  }
  __syncthreads();
  if (tid < R * M) {
    const int r = tid / M, i = tid - r * M;
    const std::int64_t row = row0 + r;
    if (row < n) {
      float v = red[0][tid];
#pragma unroll
      for (int q = 1; q < kWarps; ++q) v += red[q][tid];
      if constexpr (IN == GemvIn::kRmsNorm) {
        float t = ssred[0][i];
#pragma unroll
        for (int q = 1; q < kWarps; ++q) t += ssred[q][i];
        v *= rms_factor(t, k, eps);
      }
      if (bias) v += bias[row];
      if (accumulate) v += y[i * ldy + row];
      y[i * ldy + row] = v;
    }
  }
}

template <typename T>
__global__ void embed_typed_kernel(const T* embed, std::int64_t hidden, const std::int32_t* ids,
                                   const std::int32_t* feature_row, const float* features, float* x) {
  const std::int64_t r = blockIdx.x;
  float* xr = x + r * hidden;
  const std::int32_t f = feature_row ? feature_row[r] : -1;
  if (f >= 0) {
    const float* src = features + static_cast<std::int64_t>(f) * hidden;
    for (std::int64_t c = threadIdx.x; c < hidden; c += blockDim.x) xr[c] = src[c];
  } else {
    const T* src = embed + static_cast<std::int64_t>(ids[r]) * hidden;
    for (std::int64_t c = threadIdx.x; c < hidden; c += blockDim.x) xr[c] = to_f32(src[c]);
  }
}

__global__ void bf16_to_f16_kernel(const bf16* src, std::int64_t n, __half* dst) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    float v = __bfloat162float(src[i]);
    if (v > 65504.0f) v = 65504.0f;
    if (v < -65504.0f) v = -65504.0f;
    dst[i] = __float2half_rn(v);
  }
}

__global__ void bf16_to_f32_kernel(const bf16* src, std::int64_t n, float* dst) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    dst[i] = __bfloat162float(src[i]);
}

__global__ void add_bias_kernel(float* y, std::int64_t total, std::int64_t n, const float* bias) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    y[i] += bias[i % n];
}

unsigned warp_blocks(std::int64_t n) { return static_cast<unsigned>((n + kWarps - 1) / kWarps); }

}  // namespace

void nf4_quantize_blocks(cudaStream_t s, const void* src, ElemType t, std::int64_t numel, int block_shift,
                         std::uint8_t* packed, float* absmax) {
  if (numel <= 0) return;
  const std::int64_t nb = (numel + (std::int64_t{1} << block_shift) - 1) >> block_shift;
  const unsigned blocks = warp_blocks(nb);
  switch (t) {
    case ElemType::kF32:
      nf4_quantize_kernel<<<blocks, kWarps * 32, 0, s>>>(static_cast<const float*>(src), numel, block_shift,
                                                         packed, absmax);
      break;
    case ElemType::kF16:
      nf4_quantize_kernel<<<blocks, kWarps * 32, 0, s>>>(static_cast<const __half*>(src), numel, block_shift,
                                                         packed, absmax);
      break;
    case ElemType::kBF16:
      nf4_quantize_kernel<<<blocks, kWarps * 32, 0, s>>>(static_cast<const bf16*>(src), numel, block_shift,
                                                         packed, absmax);
      break;
  }
  check_launch("nf4_quantize_blocks");
}

void nf4_double_quantize(cudaStream_t s, const float* absmax, std::int64_t nb, float offset,
                         const float* nested_map, std::uint8_t* absmax_q, float* nested_absmax) {
  if (nb <= 0) return;
  nf4_nested_kernel<<<static_cast<unsigned>((nb + 255) / 256), 256, 0, s>>>(absmax, nb, offset, nested_map,
                                                                            absmax_q, nested_absmax);
  check_launch("nf4_double_quantize");
}

void nf4_dequantize(cudaStream_t s, const Nf4Ref& q, float* dst) {
  if (q.numel <= 0) return;
  nf4_dequant_kernel<<<grid_for((q.numel + 1) / 2, 256), 256, 0, s>>>(q, dst);
  check_launch("nf4_dequantize");
}

void nf4_dequantize(cudaStream_t s, const Nf4Ref& q, bf16* dst) {
  if (q.numel <= 0) return;
  if (q.numel % 32 == 0 && q.block_shift >= 5 && reinterpret_cast<std::uintptr_t>(q.packed) % 16 == 0 &&
      reinterpret_cast<std::uintptr_t>(dst) % 16 == 0) {
    nf4_dequant_bf16_vec_kernel<<<grid_for(q.numel / 32, 256), 256, 0, s>>>(q, dst);
    check_launch("nf4_dequantize");
    return;
  }
  nf4_dequant_kernel<<<grid_for((q.numel + 1) / 2, 256), 256, 0, s>>>(q, dst);
  check_launch("nf4_dequantize");
}

namespace {
// Compile-time dispatch of the GEMV launches: f(RowsC<M>) for M = m (1..8).
template <int M>
using RowsC = std::integral_constant<int, M>;
template <GemvIn IN>
using InC = std::integral_constant<GemvIn, IN>;

template <typename F>
void with_rows(int m, F&& f) {
  switch (m) {
    case 1:
      f(RowsC<1>{});
      break;
    case 2:
      f(RowsC<2>{});
      break;
    case 3:
      f(RowsC<3>{});
      break;
    case 4:
      f(RowsC<4>{});
      break;
    case 5:
      f(RowsC<5>{});
      break;
    case 6:
      f(RowsC<6>{});
      break;
    case 7:
      f(RowsC<7>{});
      break;
    case 8:
      f(RowsC<8>{});
      break;
    default:
      check(cudaErrorInvalidValue, "gemv: more than 8 rows");
  }
}
// f(RowsC<M>, InC<IN>) for the requested rows and input kind.
template <typename F>
void with_rows_input(int m, GemvIn in, F&& f) {
  if (in != GemvIn::kPlain && m > kGemvFusedMaxRows)
    check(cudaErrorInvalidValue, "gemv: a fused input (norm or SwiGLU) takes at most 4 rows");
  with_rows(m, [&](auto mc) {
    constexpr int M = decltype(mc)::value;
    if constexpr (M <= kGemvFusedMaxRows) {
      if (in == GemvIn::kRmsNorm) return f(mc, InC<GemvIn::kRmsNorm>{});
      if (in == GemvIn::kSiluMul) return f(mc, InC<GemvIn::kSiluMul>{});
    }
    f(mc, InC<GemvIn::kPlain>{});
  });
}
}  // namespace

void nf4_gemv(cudaStream_t s, const float* x, int m, const Nf4Ref& q, std::int64_t n, std::int64_t k,
              const float* bias, float* y, std::int64_t ldy, bool accumulate) {
  if (m <= 0 || n <= 0) return;
  // Plain inputs only: the NF4 GEMV is bound by instruction issue, and a norm or SwiGLU product formed in
  // every block made it slower (7B decode 181 -> 144 tok/s on the H100); DLinear forms it once instead.
  const bool fast = (k & 31) == 0 && q.block_shift >= 5;
  if (!fast) {
    const unsigned blocks = warp_blocks(n);
    with_rows(m, [&](auto mc) {
      launch_pdl(nf4_gemv_kernel<decltype(mc)::value>, dim3(blocks), dim3(kWarps * 32), 0, s, x, q, n, k,
                 bias, y, ldy, accumulate);
    });
    check_launch("nf4_gemv");
    return;
  }
  // Team size: more warps per row group while there are too few warps to fill the GPU (about 32 per SM
  // on 132 SMs) and the row still has chunks for the extra lanes.
  const std::int64_t groups = (n + kNf4Rows - 1) / kNf4Rows, chunks = k >> 5;
  int g = 1;
  while (g < kWarps && groups * g < 4096 && chunks > 32 * g) g *= 2;
  const std::int64_t per_block = kWarps / g;
  const auto blocks = static_cast<unsigned>((groups + per_block - 1) / per_block);
  with_rows(m, [&](auto mc) {
    constexpr int M = decltype(mc)::value;
    if (g == 1)
      launch_pdl(nf4_gemv_rows_kernel<M, 1>, dim3(blocks), dim3(kWarps * 32), 0, s, x, q, n, k, bias, y, ldy,
                 accumulate);
    else if (g == 2)
      launch_pdl(nf4_gemv_rows_kernel<M, 2>, dim3(blocks), dim3(kWarps * 32), 0, s, x, q, n, k, bias, y, ldy,
                 accumulate);
    else if (g == 4)
      launch_pdl(nf4_gemv_rows_kernel<M, 4>, dim3(blocks), dim3(kWarps * 32), 0, s, x, q, n, k, bias, y, ldy,
                 accumulate);
    else
      launch_pdl(nf4_gemv_rows_kernel<M, 8>, dim3(blocks), dim3(kWarps * 32), 0, s, x, q, n, k, bias, y, ldy,
                 accumulate);
  });
  check_launch("nf4_gemv");
}

namespace {
template <typename T>
void gemv_typed_launch(cudaStream_t s, const float* x, int m, const T* w, std::int64_t n, std::int64_t k,
                       const float* bias, float* y, std::int64_t ldy, bool accumulate, const GemvInput& in) {
  // (2-row blocks for the layers whose 8-row blocks fill 1.7 or 2.2 waves were measured on the H100: every
  // such GEMV got slower, 12.8 -> 17.3 us for o, 50.7 -> 70.7 us for down.)
  with_rows_input(m, in.kind, [&](auto mc, auto ic) {
    constexpr int M = decltype(mc)::value;
    constexpr int R = gemv_typed_rows<M>();
    launch_pdl(gemv_typed_kernel<T, M, decltype(ic)::value, R>, dim3(static_cast<unsigned>((n + R - 1) / R)),
               dim3(kWarps * 32), 0, s, x, w, n, k, bias, y, ldy, accumulate, in.norm_w, in.eps);
  });
}
}  // namespace

void gemv_typed(cudaStream_t s, const float* x, int m, const void* w, ElemType wt, std::int64_t n,
                std::int64_t k, const float* bias, float* y, std::int64_t ldy, bool accumulate,
                const GemvInput& in) {
  if (m <= 0 || n <= 0) return;
  if (in.kind == GemvIn::kRmsNorm && in.norm_w == nullptr)
    check(cudaErrorInvalidValue, "gemv_typed: RMSNorm input without norm weights");
  switch (wt) {
    case ElemType::kF32:
      gemv_typed_launch(s, x, m, static_cast<const float*>(w), n, k, bias, y, ldy, accumulate, in);
      break;
    case ElemType::kF16:
      gemv_typed_launch(s, x, m, static_cast<const __half*>(w), n, k, bias, y, ldy, accumulate, in);
      break;
    case ElemType::kBF16:
      gemv_typed_launch(s, x, m, static_cast<const bf16*>(w), n, k, bias, y, ldy, accumulate, in);
      break;
  }
  check_launch("gemv_typed");
}

void embed_rows_typed(cudaStream_t s, const void* embed, ElemType t, std::int64_t hidden,
                      const std::int32_t* ids, const std::int32_t* feature_row, const float* features,
                      std::int64_t rows, float* x) {
  if (rows <= 0) return;
  const auto g = static_cast<unsigned>(rows);
  switch (t) {
    case ElemType::kF32:
      embed_typed_kernel<<<g, 256, 0, s>>>(static_cast<const float*>(embed), hidden, ids, feature_row,
                                           features, x);
      break;
    case ElemType::kF16:
      embed_typed_kernel<<<g, 256, 0, s>>>(static_cast<const __half*>(embed), hidden, ids, feature_row,
                                           features, x);
      break;
    case ElemType::kBF16:
      embed_typed_kernel<<<g, 256, 0, s>>>(static_cast<const bf16*>(embed), hidden, ids, feature_row,
                                           features, x);
      break;
  }
  check_launch("embed_rows_typed");
}

void bf16_to_f16(cudaStream_t s, const bf16* src, std::int64_t n, std::uint16_t* dst) {
  if (n <= 0) return;
  bf16_to_f16_kernel<<<grid_for(n, 256), 256, 0, s>>>(src, n, reinterpret_cast<__half*>(dst));
  check_launch("bf16_to_f16");
}

void add_bias_rows(cudaStream_t s, float* y, std::int64_t rows, std::int64_t n, const float* bias) {
  if (rows <= 0 || n <= 0) return;
  add_bias_kernel<<<grid_for(rows * n, 256), 256, 0, s>>>(y, rows * n, n, bias);
  check_launch("add_bias_rows");
}

void bf16_to_f32(cudaStream_t s, const bf16* src, std::int64_t n, float* dst) {
  if (n <= 0) return;
  bf16_to_f32_kernel<<<grid_for(n, 256), 256, 0, s>>>(src, n, dst);
  check_launch("bf16_to_f32");
}

}  // namespace mv::cuda
