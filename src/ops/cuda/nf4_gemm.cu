// Fused NF4 GEMM for decode batches (see weight_formats.hpp, nf4_gemm, and docs/design/nf4.md):
// y[m, n] = x[m, k] · W'[n, k]ᵀ (+ bias) (+ y) with W NF4, on mma.sync m16n8k16 (bf16 operands, fp32
// accumulators), each packed byte read once per call.
//
// Operands. The weights are the mma's A operand (16 weight rows × 16 k per fragment), the activations its
// B operand (16 k × 8 sequences), so the batch is padded to a multiple of 8 rows (16, 32, 48 or 64). In
// the A fragment layout (PTX ISA, lane = 4·g + t) each 32-bit register is one pair of consecutive k of one
// weight row: exactly one packed byte. The sum over k does not depend on the order of k, so each 64-element
// NF4 block is read in a permuted order in which every register is a byte the lane already holds: lane
// (g, t) loads bytes 8t .. 8t + 7 of the block of rows g and g + 8 (8-byte loads; the warp reads 8 rows ×
// 32 contiguous bytes per load), and k-step s (0..3) of the block takes byte 2(s&1) (pairs t) and byte
// 2(s&1) + 1 (pairs t + 4) of word s>>1. Logical pair L = 8s + p of a block is physical pair
//   P(L) = 8(p&3) + 4(s>>1) + 2(s&1) + (p>>2),
// and the activations are written in that order (bf16) by a small first kernel, so that the B fragments
// come from shared memory by ldmatrix as in any GEMM.
//
// Decoding. Every k-step lies in one NF4 block, so the mma multiplies the unscaled levels and the block's
// four k-steps are accumulated apart, then multiplied by the scale a' of each weight row (fp32) and added
// to the accumulators: w = bf16(level) · a' instead of bf16(level · a'), both within half a bf16 ulp of w'
// (2^-8 relative); on Gaussian weights 1.4e-3 relative L2 against 1.7e-3 for bf16(w').
// A byte becomes its two bf16 levels (one register of the A fragment) by one load from a 256-entry table
// in shared memory that holds 32 copies, copy c in bank c, so that a warp's 32 lookups never conflict.
// The scales a' (8-bit code, nested scale, offset: Nf4Ref) are computed one per lane per 16-row tile and
// step, for row half t&1 and block t>>1, and shared in the quad by shuffles.
//
// Work. A block of 8 warps owns 256 weight rows (32 per warp: two 16-row tiles) of one part and a range
// of k (split-K when the row tiles alone cannot fill the GPU); each step covers 128 k (two NF4 blocks).
// The activation tile of a step (padded rows × 128 bf16) is copied by cp.async into one of three
// shared-memory stages; the weight bytes and scale codes of the next step are loaded into registers
// while the current step is computed. With one split the block writes y (+ bias, + y); with several, each
// split writes its partial sums to a workspace, and the last block of each row tile (1-2 sequences) or a
// third kernel (more) adds them in split order (deterministic)
// with the bias and the old y.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <utility>

#include "ops/cuda/device_math.cuh"
#include "ops/cuda/mma_utils.cuh"
#include "ops/cuda/pdl.cuh"
#include "ops/cuda/weight_formats.hpp"

namespace mv::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kMTiles = 2;                     // 16-row weight tiles per warp
constexpr int kWarpRows = 16 * kMTiles;        // 32
constexpr int kTileRows = kWarps * kWarpRows;  // 256 weight rows per block
constexpr int kStages = 3;                     // shared-memory stages of the activation tile
constexpr int kStepK = 128;                    // k per step: two NF4 blocks of 64
constexpr int kPitch = kStepK + 8;             // bf16 per staged row: +16 bytes, so that the 8 rows of
                                               // an ldmatrix 8×8 matrix lie in 8 distinct bank groups
constexpr int kTabStride = 64;                 // words per table entry: 32 copies, then 32 unused, so
                                               // that one byte permute forms a lane's address (lookup)
constexpr int kTabWords = 256 * kTabStride;    // byte -> bf16 pair, copy c in bank c
constexpr std::size_t kTabBytes = kTabWords * 4;
constexpr std::size_t kTablesBytes = kTabBytes + 256 * 4 + 16 * 4;  // + nested map + 16 levels
static_assert(kTablesBytes % 16 == 0, "the activation stages must be 16-byte aligned");

// One 8-sequence tile (T = 1) whose k range has at most kXAllK elements stages the whole range once
// (XALL: no barrier per step). Row pitch kXAllK + 8: ldmatrix rows in distinct bank groups.
constexpr int kXAllK = 1152;
constexpr int kXAllPitch = kXAllK + 8;
template <int T, bool XALL>
constexpr std::size_t smem_bytes() {
  return kTablesBytes + sizeof(bf16) * (XALL ? 8 * T * kXAllPitch : kStages * 8 * T * kPitch);
}

struct PartsArg {
  Nf4Ref q[kNf4GemmMaxParts];
  std::int64_t row0[kNf4GemmMaxParts];
  std::int64_t rows[kNf4GemmMaxParts];
  int tile_end[kNf4GemmMaxParts];  // one past the last row tile of each part (prefix sums)
  int count;
};

// Physical pair of logical pair l (0..31) of a 64-element block (see the file comment).
__host__ __device__ constexpr int phys_pair(int l) {
  return (l & 3) * 8 + ((l >> 3) >> 1) * 4 + ((l >> 3) & 1) * 2 + ((l & 7) >> 2);
}

using mma::cp_async16;
using mma::cp_async_commit;
using mma::cp_async_wait;
using mma::ldmatrix_x4;
using mma::mma_bf16;
using mma::pack_bf16;
using mma::smem_u32;

// The two bf16 levels of byte J of word w from this lane's copy of the pair table: entry e, copy c at byte
// 256·e + 4·c, so one byte permute puts the address together from the code byte and lane4 = 4·lane
// (whose bytes 1..3 are zero).
template <int J>
__device__ __forceinline__ std::uint32_t lookup(const char* tab, std::uint32_t lane4, std::uint32_t w) {
  const std::uint32_t off = __byte_perm(w, lane4, 0x5504u | (J << 4));
  return *reinterpret_cast<const std::uint32_t*>(tab + off);
}

// y[tok, r] = Σ_s ws[s][tok][r] in split order, + bias[r], + the old y when accumulating: the split-K sums
// of both paths (the last block of a row tile, nf4_gemm_reduce_kernel), so they give the same bits.
__device__ __forceinline__ void store_split_sum(const float* ws, int splits, std::int64_t total, std::int64_t n,
                                                std::int64_t tok, std::int64_t r, const float* bias, float* y,
                                                std::int64_t ldy, bool accumulate) {
  const std::int64_t i = tok * n + r;
  float v = __ldcg(ws + i);
  for (int sp = 1; sp < splits; ++sp) v += __ldcg(ws + sp * total + i);
  if (bias) v += bias[r];
  if (accumulate) v += y[tok * ldy + r];
  y[tok * ldy + r] = v;
}

constexpr int kPrepNormThreads = 1024;

// x [m, k] fp32 (formed as IN says) → xb [mpad, k] bf16 in the permuted order, rows m .. mpad − 1 zero;
// also zeroes the split counters of the GEMM that follows. Plain and SwiGLU inputs: a grid-stride loop
// over element pairs; RMS-normalised inputs: one block per padded row (the block sums the row's squares).
template <GemvIn IN>
__global__ void __launch_bounds__(IN == GemvIn::kRmsNorm ? kPrepNormThreads : 256)
    nf4_gemm_prep_kernel(const float* __restrict__ x, int m, int mpad, std::int64_t k,
                         const float* __restrict__ norm_w, float eps, std::uint32_t* xb, unsigned* counters,
                         int ncounters) {
  pdl_wait();  // x comes from the previous kernel, and xb may still be read by the one before
  pdl_trigger();
  if (blockIdx.x == 0)
    for (int i = threadIdx.x; i < ncounters; i += blockDim.x) counters[i] = 0u;
  const std::int64_t half = k >> 1;
  if constexpr (IN == GemvIn::kRmsNorm) {
    // Launched with kPrepNormThreads threads; the loads of a thread are independent (unrolled), so the
    // block waits for about two rounds of memory latency, not one per element.
    __shared__ float part[kPrepNormThreads / 32];
    const int row = blockIdx.x;
    if (row >= mpad) return;
    std::uint32_t* dst = xb + row * half;
    if (row >= m) {
      for (std::int64_t l = threadIdx.x; l < half; l += blockDim.x) dst[l] = 0u;
      return;
    }
    const float2* xr = reinterpret_cast<const float2*>(x + row * k);
    float ss = 0.0f;
#pragma unroll 4
    for (std::int64_t l = threadIdx.x; l < half; l += blockDim.x) {
      const float2 v = __ldg(xr + l);
      ss += v.x * v.x + v.y * v.y;
    }
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    ss = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) ss += part[w];
    const float inv = rsqrtf(ss / static_cast<float>(k) + eps);
    const float2* nw = reinterpret_cast<const float2*>(norm_w);
#pragma unroll 4
    for (std::int64_t l = threadIdx.x; l < half; l += blockDim.x) {
      const std::int64_t p2 = (l >> 5) * 32 + phys_pair(static_cast<int>(l & 31));  // pair index in x
      const float2 v = __ldg(xr + p2), w = __ldg(nw + p2);
      dst[l] = pack_bf16(w.x * (v.x * inv), w.y * (v.y * inv));  // rms_norm_f32's order
    }
  } else {
    const std::int64_t total = static_cast<std::int64_t>(mpad) * half;
    for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
      const std::int64_t row = i / half, l = i - row * half;
      float a = 0.0f, b = 0.0f;
      if (row < m) {
        const std::int64_t j = (l >> 5) * 64 + 2 * phys_pair(static_cast<int>(l & 31));
        if constexpr (IN == GemvIn::kPlain) {
          const float2 v = __ldg(reinterpret_cast<const float2*>(x + row * k + j));
          a = v.x;
          b = v.y;
        } else {  // kSiluMul: gate and up side by side in a row of 2k
          const float* gr = x + row * 2 * k;
          a = silu_times(gr[j], gr[k + j]);
          b = silu_times(gr[j + 1], gr[k + j + 1]);
        }
      }
      xb[i] = pack_bf16(a, b);
    }
  }
}

// T: 8-sequence tiles of the batch; D: steps of weight bytes held in registers ahead of the one computed;
// XALL: the block's whole activation range is staged once (see kXAllK).
// (One 16-row tile per warp, with three blocks per SM, was measured slower on the H100: 37888×3584 at one
// row 0.0563 against 0.0515 ms.)
template <int T, int D, bool XALL>
__global__ void __launch_bounds__(kThreads, T <= 2 ? 2 : 1)
    nf4_gemm_kernel(const __grid_constant__ PartsArg P, const std::uint32_t* __restrict__ xb, std::int64_t k,
                    int m, std::int64_t n, int blocks_per_split, const float* __restrict__ bias, float* y,
                    std::int64_t ldy, bool accumulate, float* ws, unsigned* counters) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // mma.sync bf16, ldmatrix and cp.async need sm_80; nf4_gemm_supports() keeps older GPUs away
#else
  constexpr int MP = 8 * T;  // padded activation rows
  static_assert(D >= 1 && D <= 3, "one to three register stages ahead");
  struct Stage {
    uint2 c[kMTiles][2][2];  // [tile][row g / g + 8][block]: this lane's 8 bytes of codes
    float f[kMTiles];        // the scale row/block of this lane: nested scale (or the fp32 scale)
    unsigned q[kMTiles];     // its 8-bit scale code
  };
  extern __shared__ __align__(16) unsigned char smem[];
  auto* tab = reinterpret_cast<std::uint32_t*>(smem);
  auto* ncode = reinterpret_cast<float*>(smem + kTabBytes);
  float* lv = ncode + 256;
  auto* xs = reinterpret_cast<bf16*>(smem + kTablesBytes);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
  int p = 0;
  while (p + 1 < P.count && static_cast<int>(blockIdx.x) >= P.tile_end[p]) ++p;
  const Nf4Ref& q = P.q[p];
  const std::uint8_t* packed = q.packed;
  const std::uint8_t* aq = q.absmax_q;
  const bool dq = aq != nullptr;
  const float* af = dq ? q.nested_absmax : q.absmax;
  const int bshift = q.block_shift, nshift = q.nested_shift;
  const float off = q.offset;
  const std::int64_t nrows = P.rows[p], grow0 = P.row0[p];
  const std::int64_t wrow =
      static_cast<std::int64_t>(static_cast<int>(blockIdx.x) - (p ? P.tile_end[p - 1] : 0)) * kTileRows +
      warp * kWarpRows;             // this warp's first row (part-local)
  const bool idle = wrow >= nrows;  // the last tile of a part: a warp without rows only helps with copies
  const std::int64_t kb = k >> 6;
  const std::int64_t b_begin = static_cast<std::int64_t>(blockIdx.y) * blocks_per_split;
  const std::int64_t b_end = b_begin + blocks_per_split < kb ? b_begin + blocks_per_split : kb;
  const int nsteps = static_cast<int>((b_end - b_begin + 1) >> 1);

  // Tables (the weights' own, independent of the previous kernel).
  if (tid < 16) lv[tid] = q.code[tid];
  if (dq) ncode[tid] = q.nested_code[tid];
  __syncthreads();
  for (int e = tid; e < kTabWords / 4; e += kThreads) {  // 16-byte stores: 4 copies of one entry
    if ((e & (kTabStride / 4 - 1)) >= 8) continue;          // the unused half of the entry
    const int byte = e / (kTabStride / 4);  // the even element (lower k) is the high nibble: the low half
    const std::uint32_t v = pack_bf16(lv[byte >> 4], lv[byte & 15]);
    reinterpret_cast<uint4*>(tab)[e] = make_uint4(v, v, v, v);
  }

  // This lane's code pointers (rows g and g + 8 of each 16-row tile, bytes 8t..) and the element index of
  // the row and block whose scale it computes (row half t&1, block t>>1 of a step). Rows past the part's
  // end read its last row and are never stored.
  // Offsets are 32-bit (nf4_gemm checks that a part has fewer than 2^32 codes).
  const std::uint8_t* wbase = packed + 8 * t;
  std::uint32_t wo[kMTiles][2];  // byte offset of the row's codes
  std::uint32_t sb[kMTiles];     // index of the row's first 64-element group, + block t>>1
#pragma unroll
  for (int i = 0; i < kMTiles; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const std::int64_t r0 = wrow + 16 * i + 8 * h + g, r = r0 < nrows ? r0 : nrows - 1;
      wo[i][h] = static_cast<std::uint32_t>((r * k) >> 1);
    }
    const std::int64_t rs0 = wrow + 16 * i + 8 * (t & 1) + g, rs = rs0 < nrows ? rs0 : nrows - 1;
    sb[i] = static_cast<std::uint32_t>(((rs * k) >> 6) + (t >> 1));
  }
  const int gshift = bshift - 6;  // 64-element groups per NF4 block: 2^gshift

  // Weight bytes and scale codes of step st.
  auto load_w = [&](int st, Stage& w) {
    const auto blk0 = static_cast<std::uint32_t>(b_begin + 2 * st);
    const bool two = blk0 + 1 < b_end;
#pragma unroll
    for (int i = 0; i < kMTiles; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const std::uint8_t* src = wbase + (wo[i][h] + blk0 * 32u);
        w.c[i][h][0] = __ldg(reinterpret_cast<const uint2*>(src));
        w.c[i][h][1] = two ? __ldg(reinterpret_cast<const uint2*>(src + 32)) : make_uint2(0, 0);
      }
      const bool ok = (t >> 1) == 0 || two;
      const std::uint32_t bi = (sb[i] + blk0) >> gshift;
      w.q[i] = ok && dq ? static_cast<unsigned>(__ldg(aq + bi)) : 0u;
      w.f[i] = ok ? __ldg(af + (dq ? bi >> nshift : bi)) : 0.0f;
    }
  };
  // Activation tile of step st into stage `stage` (pieces past the last block zero-filled).
  auto load_x = [&](int st, int stage) {
    const std::int64_t blk0 = b_begin + 2 * st;
    const int pieces = blk0 + 1 < b_end ? 16 : 8;
    bf16* dst = xs + stage * (MP * kPitch);
    const auto* src = reinterpret_cast<const bf16*>(xb);
    for (int i = tid; i < MP * 16; i += kThreads) {
      const int r = i >> 4, c = i & 15;
      const bool ok = c < pieces;
      cp_async16(smem_u32(dst + r * kPitch + c * 8), ok ? src + r * k + blk0 * 64 + c * 8 : src, ok);
    }
  };

  // Register stages: the step being computed (rs[0]) and the next D − 1.
  Stage rs[D];
#pragma unroll
  for (int d = 0; d < D; ++d) {
    rs[d] = Stage{};
    if (!idle && d < nsteps) load_w(d, rs[d]);
  }
  pdl_wait();  // the activations are written by the preparation kernel
  if constexpr (XALL) {
    const int chunks = static_cast<int>((b_end - b_begin) * 8);  // 16-byte pieces of a row
    const auto* src = reinterpret_cast<const bf16*>(xb) + b_begin * 64;
    for (int i = tid; i < MP * chunks; i += kThreads) {
      const int r = i / chunks, c = i - r * chunks;
      cp_async16(smem_u32(xs + r * kXAllPitch + c * 8), src + r * k + c * 8, true);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
  } else {
    load_x(0, 0);
    cp_async_commit();
    if (nsteps > 1) load_x(1, 1);
    cp_async_commit();
  }

  float acc[kMTiles][T][4];
#pragma unroll
  for (int i = 0; i < kMTiles; ++i)
#pragma unroll
    for (int j = 0; j < T; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;
  const char* tab_bytes = reinterpret_cast<const char*>(tab);
  const std::uint32_t lane4 = 4u * static_cast<std::uint32_t>(lane);

  for (int st = 0; st < nsteps; ++st) {
    Stage nw{};  // step st + D
    if (st + D < nsteps && !idle) load_w(st + D, nw);
    if constexpr (!XALL) {
      cp_async_wait<1>();  // step st's activations have landed for this thread ...
      __syncthreads();     // ... and for all; every warp is done with step st − 1's stage
      if (st + 2 < nsteps) load_x(st + 2, (st + 2) % kStages);
      cp_async_commit();
    }
    constexpr int XP = XALL ? kXAllPitch : kPitch;  // row pitch of the staged activations
    if (!idle) {
      const bf16* xst = XALL ? xs + st * kStepK : xs + (st % kStages) * (MP * kPitch);
      const bool two = b_begin + 2 * st + 1 < b_end;
      float own[kMTiles];  // the scale of row half t&1, block t>>1 of each tile
#pragma unroll
      for (int i = 0; i < kMTiles; ++i)
        own[i] = dq ? __fadd_rn(__fmul_rn(ncode[rs[0].q[i]], rs[0].f[i]), off) : rs[0].f[i];
#pragma unroll
      for (int b = 0; b < 2; ++b) {
        if (b == 1 && !two) break;
        float sc[kMTiles][2];  // [tile][row half] of block b
#pragma unroll
        for (int i = 0; i < kMTiles; ++i)
#pragma unroll
          for (int h = 0; h < 2; ++h) sc[i][h] = __shfl_sync(0xffffffffu, own[i], (lane & ~3) | h | (b << 1));
        constexpr int IG = kMTiles;  // tiles decoded together share each B fragment load
#pragma unroll
        for (int i0 = 0; i0 < kMTiles; i0 += IG) {
          std::uint32_t a[IG][4][4];
#pragma unroll
          for (int ii = 0; ii < IG; ++ii) {
#pragma unroll
            for (int s = 0; s < 4; ++s) {
              const std::uint32_t w0 = (s >> 1) ? rs[0].c[i0 + ii][0][b].y : rs[0].c[i0 + ii][0][b].x;
              const std::uint32_t w1 = (s >> 1) ? rs[0].c[i0 + ii][1][b].y : rs[0].c[i0 + ii][1][b].x;
              if (s & 1) {
                a[ii][s][0] = lookup<2>(tab_bytes, lane4, w0);
                a[ii][s][1] = lookup<2>(tab_bytes, lane4, w1);
                a[ii][s][2] = lookup<3>(tab_bytes, lane4, w0);
                a[ii][s][3] = lookup<3>(tab_bytes, lane4, w1);
              } else {
                a[ii][s][0] = lookup<0>(tab_bytes, lane4, w0);
                a[ii][s][1] = lookup<0>(tab_bytes, lane4, w1);
                a[ii][s][2] = lookup<1>(tab_bytes, lane4, w0);
                a[ii][s][3] = lookup<1>(tab_bytes, lane4, w1);
              }
            }
          }
#pragma unroll
          for (int j = 0; j < T; ++j) {
            // B fragments of the block's 4 k-steps for sequences 8j..8j+7: matrix lane>>3 of each x4 is
            // (k-step 2·x4 + (lane>>4), half (lane>>3)&1).
            std::uint32_t bf[8];
            const bf16* base =
                xst + (8 * j + (lane & 7)) * XP + b * 64 + 8 * ((lane >> 3) & 1) + 16 * (lane >> 4);
            ldmatrix_x4(smem_u32(base), bf);
            ldmatrix_x4(smem_u32(base + 32), bf + 4);
#pragma unroll
            for (int ii = 0; ii < IG; ++ii) {
              const int i = i0 + ii;
              float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
              for (int s = 0; s < 4; ++s) mma_bf16(d, a[ii][s], bf[2 * s], bf[2 * s + 1]);
              acc[i][j][0] = fmaf(d[0], sc[i][0], acc[i][j][0]);
              acc[i][j][1] = fmaf(d[1], sc[i][0], acc[i][j][1]);
              acc[i][j][2] = fmaf(d[2], sc[i][1], acc[i][j][2]);
              acc[i][j][3] = fmaf(d[3], sc[i][1], acc[i][j][3]);
            }
          }
        }
      }
    }
#pragma unroll
    for (int d = 0; d + 1 < D; ++d) rs[d] = rs[d + 1];
    rs[D - 1] = nw;
  }
  cp_async_wait<0>();
  pdl_trigger();
  // C fragment: c0, c1 = (row g, sequences 2t, 2t + 1), c2, c3 = (row g + 8, the same sequences).
  const bool split = gridDim.y > 1;
  if (!idle) {
#pragma unroll
    for (int i = 0; i < kMTiles; ++i)
#pragma unroll
      for (int j = 0; j < T; ++j)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const std::int64_t r = wrow + 16 * i + g + 8 * (c >> 1);
          const int tok = 8 * j + 2 * t + (c & 1);
          if (r >= nrows || tok >= m) continue;
          const std::int64_t gr = grow0 + r;
          float v = acc[i][j][c];
          if (split) {
            ws[(static_cast<std::int64_t>(blockIdx.y) * m + tok) * n + gr] = v;
          } else {
            if (bias) v += bias[gr];
            if (accumulate) v += y[tok * ldy + gr];
            y[tok * ldy + gr] = v;
          }
        }
  }
  if (!split || counters == nullptr) return;  // without counters, nf4_gemm_reduce_kernel adds the splits
  // Split-K: the block of this row tile that finishes last adds the partial sums of all k ranges in
  // split order (deterministic whatever the order of arrival), then the bias and the old y.
  __shared__ bool last;
  __threadfence();  // this block's partial sums are visible before its arrival is counted
  __syncthreads();
  if (tid == 0) last = atomicAdd(counters + blockIdx.x, 1u) == gridDim.y - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  const std::int64_t trow0 = wrow - warp * kWarpRows;  // the tile's first row (part-local)
  const int splits = static_cast<int>(gridDim.y);
  const std::int64_t total = static_cast<std::int64_t>(m) * n;
  for (int e = tid; e < kTileRows * m; e += kThreads) {
    const int tok = e / kTileRows;
    const std::int64_t r = trow0 + (e - tok * kTileRows);
    if (r >= nrows) continue;
    store_split_sum(ws, splits, total, n, tok, grow0 + r, bias, y, ldy, accumulate);
  }
#endif
}

// y = Σ_s ws[s] (in split order) + bias (+ y): the split sums of larger batches, where one block per row
// tile adding them at the end of the GEMM would take longer than a kernel of its own.
__global__ void __launch_bounds__(256)
    nf4_gemm_reduce_kernel(const float* __restrict__ ws, int splits, int m, std::int64_t n,
                           const float* __restrict__ bias, float* y, std::int64_t ldy, bool accumulate) {
  pdl_wait();
  pdl_trigger();
  const std::int64_t total = static_cast<std::int64_t>(m) * n;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t tok = i / n;
    store_split_sum(ws, splits, total, n, tok, i - tok * n, bias, y, ldy, accumulate);
  }
}

// Batches up to this many sequences add their split sums in the GEMM (the last block of each row tile),
// larger ones in nf4_gemm_reduce_kernel (H100: 16 rows of the 7B q/k/v in 14 splits took 0.0265 ms with
// the in-kernel sums against 0.0125 ms with the separate kernel).
constexpr int kInKernelSplitRows = 2;

struct Plan {
  int T = 0;          // 8-sequence tiles (padded rows / 8)
  int D = 1;          // register stages of weight bytes ahead
  bool xall = false;  // T = 1 and the k range fits kXAllK: staged once per block
  int tiles = 0;      // 256-row tiles over all parts
  int splits = 1;     // k ranges
  int per_split = 0;  // 64-element blocks per k range (even)
  std::size_t xb_bytes = 0, ws_bytes = 0, counter_bytes = 0;
};

int multiprocessors() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0)
    return 132;
  return sms;
}

// Register stages ahead for T sequence tiles: MV_NF4_GEMM_DEPTH (1..3) overrides the default for 8 and 16
// sequences (a tuning knob; the default is the measured best).
int depth_for(int T) {
  static const int env = [] {
    const char* e = std::getenv("MV_NF4_GEMM_DEPTH");
    const int v = e ? std::atoi(e) : 0;
    return v >= 1 && v <= 3 ? v : 0;
  }();
  if (T <= 2) return env ? env : 1;
  return (T == 4 || T == 6) ? 2 : 1;
}

// MV_NF4_GEMM_XALL=0 keeps the per-step activation stages for one 8-sequence tile too (a tuning knob).
bool xall_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("MV_NF4_GEMM_XALL");
    return e == nullptr || e[0] != '0';
  }();
  return on;
}

Plan make_plan(int m, const Nf4GemmPart* parts, int nparts, std::int64_t n, std::int64_t k, int splits) {
  Plan pl;
  pl.T = m <= 8 ? 1 : m <= 16 ? 2 : m <= 32 ? 4 : m <= 48 ? 6 : 8;
  pl.D = depth_for(pl.T);
  for (int i = 0; i < nparts; ++i) pl.tiles += static_cast<int>((parts[i].rows + kTileRows - 1) / kTileRows);
  const std::int64_t kb = k / 64;
  // Number of k ranges: the one that minimizes an estimate of the bytes moved: the NF4 bytes times the
  // fraction of block slots left idle by the last wave (one block per SM from 17 rows on: registers), plus
  // the partial sums written and read again (8·m·n bytes per range). At least two steps per range.
  auto ranges = [&](std::int64_t s) {
    std::int64_t per = (kb + s - 1) / s;
    per += per & 1;
    return std::pair<std::int64_t, std::int64_t>{(kb + per - 1) / per, per};
  };
  std::int64_t s = splits;
  if (s <= 0) {
    const std::int64_t slots = static_cast<std::int64_t>(multiprocessors()) * (pl.T <= 2 ? 2 : 1);
    const double wbytes = static_cast<double>(n) * static_cast<double>(k) * (0.5 + 1.0 / 64.0);
    double best = 0;
    for (std::int64_t c = 1; c <= std::max<std::int64_t>(1, std::min<std::int64_t>(kb / 4, 32)); ++c) {
      const std::int64_t sc = ranges(c).first, blocks = pl.tiles * sc;
      const double waves = static_cast<double>((blocks + slots - 1) / slots);
      const double cost = wbytes * waves * static_cast<double>(slots) / static_cast<double>(blocks) +
                          (sc > 1 ? 8.0 * static_cast<double>(sc) * m * static_cast<double>(n) : 0.0);
      if (c == 1 || cost < best) {
        best = cost;
        s = c;
      }
    }
  }
  s = std::clamp<std::int64_t>(s, 1, kb);
  const auto [count, per] = ranges(s);
  pl.per_split = static_cast<int>(per);
  pl.splits = static_cast<int>(count);
  pl.xall = pl.T == 1 && per * 64 <= kXAllK && xall_enabled();
  pl.xb_bytes = (static_cast<std::size_t>(8 * pl.T) * static_cast<std::size_t>(k) * sizeof(bf16) + 255) &
                ~std::size_t{255};
  pl.ws_bytes = pl.splits > 1 ? (static_cast<std::size_t>(pl.splits) * static_cast<std::size_t>(m) *
                                     static_cast<std::size_t>(n) * sizeof(float) +
                                 255) &
                                    ~std::size_t{255}
                              : 0;
  pl.counter_bytes =
      pl.splits > 1 && m <= kInKernelSplitRows ? static_cast<std::size_t>(pl.tiles) * sizeof(unsigned) : 0;
  return pl;
}

void validate(int m, const Nf4GemmPart* parts, int nparts, std::int64_t n, std::int64_t k) {
  if (m < 1 || m > kNf4GemmMaxRows) check(cudaErrorInvalidValue, "nf4_gemm: 1 to 64 rows per call");
  if (nparts < 1 || nparts > kNf4GemmMaxParts) check(cudaErrorInvalidValue, "nf4_gemm: 1 to 4 parts");
  std::int64_t row = 0;
  for (int i = 0; i < nparts; ++i) {
    if (parts[i].row0 != row || parts[i].rows <= 0)
      check(cudaErrorInvalidValue, "nf4_gemm: the parts must cover the output rows in order");
    if (!nf4_gemm_supports(parts[i].q, k) || parts[i].q.numel != parts[i].rows * k ||
        parts[i].q.numel >= (std::int64_t{1} << 32))
      check(cudaErrorInvalidValue, "nf4_gemm: unsupported NF4 part (see nf4_gemm_supports)");
    row += parts[i].rows;
  }
  if (row != n) check(cudaErrorInvalidValue, "nf4_gemm: the parts must cover the output rows in order");
}

template <int T, int D, bool XALL = false>
void launch(cudaStream_t s, const Plan& pl, const PartsArg& pa, const std::uint32_t* xb, std::int64_t k,
            int m, std::int64_t n, const float* bias, float* y, std::int64_t ldy, bool accumulate,
            float* ws, unsigned* counters) {
  constexpr std::size_t bytes = smem_bytes<T, XALL>();
  static const bool configured = [] {
    check(cudaFuncSetAttribute(nf4_gemm_kernel<T, D, XALL>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(bytes)),
          "nf4_gemm: shared memory attribute");
    return true;
  }();
  (void)configured;
  launch_pdl(nf4_gemm_kernel<T, D, XALL>, dim3(static_cast<unsigned>(pl.tiles), static_cast<unsigned>(pl.splits)),
             dim3(kThreads), bytes, s, pa, xb, k, m, n, pl.per_split, bias, y, ldy, accumulate, ws, counters);
}

template <int T>
void launch_depth(cudaStream_t s, const Plan& pl, const PartsArg& pa, const std::uint32_t* xb, std::int64_t k,
                  int m, std::int64_t n, const float* bias, float* y, std::int64_t ldy, bool accumulate,
                  float* ws, unsigned* counters) {
  if constexpr (T == 1) {
    if (pl.xall) {
      if (pl.D == 2) return launch<T, 2, true>(s, pl, pa, xb, k, m, n, bias, y, ldy, accumulate, ws, counters);
      return launch<T, 1, true>(s, pl, pa, xb, k, m, n, bias, y, ldy, accumulate, ws, counters);
    }
  }
  if constexpr (T <= 2) {
    if (pl.D == 3) return launch<T, 3>(s, pl, pa, xb, k, m, n, bias, y, ldy, accumulate, ws, counters);
    if (pl.D == 2) return launch<T, 2>(s, pl, pa, xb, k, m, n, bias, y, ldy, accumulate, ws, counters);
    return launch<T, 1>(s, pl, pa, xb, k, m, n, bias, y, ldy, accumulate, ws, counters);
  } else {
    constexpr int kD = (T == 4 || T == 6) ? 2 : 1;
    launch<T, kD>(s, pl, pa, xb, k, m, n, bias, y, ldy, accumulate, ws, counters);
  }
}

}  // namespace

bool nf4_gemm_supports(const Nf4Ref& q, std::int64_t k) {
  if (k < 64 || k % 64 != 0 || q.block_shift < 6 || q.packed == nullptr || q.code == nullptr) return false;
  if (reinterpret_cast<std::uintptr_t>(q.packed) % 8 != 0) return false;
  if (q.absmax_q ? (q.nested_absmax == nullptr || q.nested_code == nullptr) : q.absmax == nullptr)
    return false;
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
    return false;
  return major >= 8;
}

std::size_t nf4_gemm_workspace(int m, const Nf4GemmPart* parts, int nparts, std::int64_t n, std::int64_t k,
                               int splits) {
  const Plan pl = make_plan(std::clamp(m, 1, kNf4GemmMaxRows), parts, nparts, n, k, splits);
  return pl.xb_bytes + pl.ws_bytes + pl.counter_bytes;
}

int nf4_gemm_splits(int m, const Nf4GemmPart* parts, int nparts, std::int64_t n, std::int64_t k) {
  return make_plan(std::clamp(m, 1, kNf4GemmMaxRows), parts, nparts, n, k, 0).splits;
}

void nf4_gemm(cudaStream_t s, const float* x, int m, const Nf4GemmPart* parts, int nparts, std::int64_t n,
              std::int64_t k, const float* bias, float* y, std::int64_t ldy, bool accumulate, void* workspace,
              std::size_t workspace_bytes, int splits, const GemvInput& input) {
  validate(m, parts, nparts, n, k);
  if (reinterpret_cast<std::uintptr_t>(x) % 8 != 0)
    check(cudaErrorInvalidValue, "nf4_gemm: x not 8-byte aligned");
  if (input.kind == GemvIn::kRmsNorm && input.norm_w == nullptr)
    check(cudaErrorInvalidValue, "nf4_gemm: RMS-normalised input without norm weights");
  const Plan pl = make_plan(m, parts, nparts, n, k, splits);
  if (workspace == nullptr || workspace_bytes < pl.xb_bytes + pl.ws_bytes + pl.counter_bytes ||
      reinterpret_cast<std::uintptr_t>(workspace) % 256 != 0)
    check(cudaErrorInvalidValue, "nf4_gemm: workspace too small or not 256-byte aligned");
  PartsArg pa{};
  pa.count = nparts;
  int tiles = 0;
  for (int i = 0; i < nparts; ++i) {
    pa.q[i] = parts[i].q;
    pa.row0[i] = parts[i].row0;
    pa.rows[i] = parts[i].rows;
    tiles += static_cast<int>((parts[i].rows + kTileRows - 1) / kTileRows);
    pa.tile_end[i] = tiles;
  }
  auto* base = static_cast<char*>(workspace);
  auto* xb = reinterpret_cast<std::uint32_t*>(base);
  float* ws = pl.ws_bytes ? reinterpret_cast<float*>(base + pl.xb_bytes) : nullptr;
  auto* counters =
      pl.counter_bytes ? reinterpret_cast<unsigned*>(base + pl.xb_bytes + pl.ws_bytes) : nullptr;
  const int ncounters = pl.counter_bytes ? pl.tiles : 0;
  {
    const int mpad = 8 * pl.T;
    const std::int64_t total = static_cast<std::int64_t>(mpad) * (k / 2);
    const auto blocks = static_cast<unsigned>(std::min<std::int64_t>((total + 255) / 256, 1024));
    switch (input.kind) {
      case GemvIn::kRmsNorm:
        if (reinterpret_cast<std::uintptr_t>(input.norm_w) % 8 != 0)
          check(cudaErrorInvalidValue, "nf4_gemm: norm weights not 8-byte aligned");
        launch_pdl(nf4_gemm_prep_kernel<GemvIn::kRmsNorm>, dim3(static_cast<unsigned>(mpad)),
                   dim3(kPrepNormThreads), 0, s,
                   x, m, mpad, k, input.norm_w, input.eps, xb, counters, ncounters);
        break;
      case GemvIn::kSiluMul:
        launch_pdl(nf4_gemm_prep_kernel<GemvIn::kSiluMul>, dim3(blocks), dim3(256), 0, s, x, m, mpad, k,
                   static_cast<const float*>(nullptr), 0.0f, xb, counters, ncounters);
        break;
      default:
        launch_pdl(nf4_gemm_prep_kernel<GemvIn::kPlain>, dim3(blocks), dim3(256), 0, s, x, m, mpad, k,
                   static_cast<const float*>(nullptr), 0.0f, xb, counters, ncounters);
        break;
    }
    check_launch("nf4_gemm (activations)");
  }
  switch (pl.T) {
    case 1:
      launch_depth<1>(s, pl, pa, xb, k, m, n, bias, y, ldy, accumulate, ws, counters);
      break;
    case 2:
      launch_depth<2>(s, pl, pa, xb, k, m, n, bias, y, ldy, accumulate, ws, counters);
      break;
    case 4:
      launch_depth<4>(s, pl, pa, xb, k, m, n, bias, y, ldy, accumulate, ws, counters);
      break;
    case 6:
      launch_depth<6>(s, pl, pa, xb, k, m, n, bias, y, ldy, accumulate, ws, counters);
      break;
    default:
      launch_depth<8>(s, pl, pa, xb, k, m, n, bias, y, ldy, accumulate, ws, counters);
      break;
  }
  check_launch("nf4_gemm");
  if (pl.splits > 1 && counters == nullptr) {
    const std::int64_t total = static_cast<std::int64_t>(m) * n;
    const auto blocks = static_cast<unsigned>(std::min<std::int64_t>((total + 255) / 256, 4096));
    launch_pdl(nf4_gemm_reduce_kernel, dim3(blocks), dim3(256), 0, s, static_cast<const float*>(ws),
               pl.splits, m, n, bias, y, ldy, accumulate);
    check_launch("nf4_gemm (split sum)");
  }
}

}  // namespace mv::cuda
