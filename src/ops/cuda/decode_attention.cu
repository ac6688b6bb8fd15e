// Decode attention (flash-decoding) of the CUDA engine; see cuda_ops.hpp and docs/design/cuda-engine.md.
//
// Grid (splits, n_kv · head groups, batch): block (s, g, b) takes split s of sequence b's keys for the query
// heads of kv head g (up to kGroup of them, so K/V are read once per step). The split count is a function
// of the batch size, the head counts and the device only; the keys of a split are computed on the device
// from the sequence's length, so a captured CUDA graph serves every step. The cache is paged
// (cuda_ops.hpp): a tile of 32 keys is 32 contiguous rows of one page. Each block stages tiles of 32
// keys of K and V in shared memory (cp.async, kStages deep), warp i scores query head i (lane j: key j)
// and keeps that head's running max and sum, then all warps accumulate P·V over their share of the tile's
// keys. A block writes its unnormalised output, max and sum (fp32) to the workspace; the last block of a
// (sequence, kv head) to arrive (a counter in the workspace, reset by that block) merges the splits,
// rescaling each by 2^(m_s − m).
#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <set>
#include <string_view>
#include <utility>

#include "ops/cuda/cuda_ops.hpp"
#include "ops/cuda/device_math.cuh"
#include "ops/cuda/mma_utils.cuh"
#include "ops/cuda/pdl.cuh"

namespace mv::cuda {
namespace {

constexpr int kTileKeys = 32;  // keys per shared-memory tile (= warp size: lane j scores key j)
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kGroup = kWarps;  // query heads per block: warp i scores head i
constexpr int kMinChunk =
    64;  // fewest keys of a split (H100, 2048 keys, batch 1: 15.9 us; 32: 19.3, 128: 20.1)
constexpr int kMaxSplits = 64;
static_assert(kKvPageTokens % kTileKeys == 0, "a tile of keys lies in one page of the cache");
constexpr int kMaxHeadDim = 256;

__host__ __device__ constexpr int round_up(int x, int m) { return (x + m - 1) / m * m; }

// Row stride (bf16 elements) of a shared K/V tile: 16-byte rows whose count of 16-byte units is odd, so
// that the 8 lanes of a quarter warp reading 16 bytes of 8 different rows hit 8 different bank groups.
__host__ __device__ constexpr int tile_stride(int hd) {
  const int s = round_up(hd, 8);
  return (s / 8) % 2 == 0 ? s + 8 : s;
}

struct Params {
  float scale;  // 1/sqrt(hd) · log2(e): scores are kept in the log2 domain (exp2)
  int group;    // query heads per kv head
  int hgroups;  // blocks per kv head (ceil(group / kGroup))
  int splits;
  int stride;          // tile_stride(hd)
  int hd8;             // hd rounded up to 8
  unsigned* counters;  // [work_batch][n_kv][hgroups]
  float* part_o;       // [batch][n_heads][splits][hd]
  float* part_ml;      // [batch][n_heads][splits][2]
  int mma_min_keys;    // fewest keys of a split of the tensor-core kernel
};

template <int kN>
__device__ __forceinline__ void load_bf16(const bf16* p, float (&f)[kN]) {
  static_assert(kN == 2 || kN == 4 || kN == 8, "lane width");
  if constexpr (kN == 2) {
    const float2 x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
    f[0] = x.x;
    f[1] = x.y;
  } else if constexpr (kN == 4) {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);
    const auto* h2 = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const float2 x = __bfloat1622float2(h2[u]);
      f[2 * u] = x.x;
      f[2 * u + 1] = x.y;
    }
  } else {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const auto* h2 = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const float2 x = __bfloat1622float2(h2[u]);
      f[2 * u] = x.x;
      f[2 * u + 1] = x.y;
    }
  }
}

// The last block of a (sequence b, blockIdx.y) to arrive — every split has written its unnormalised output,
// max and sum — merges the splits into out (query heads h0 … h0 + nh − 1): out = Σ_s 2^(m_s − M)·o_s / L with
// M = max_s m_s and L = Σ_s 2^(m_s − M)·l_s. wts: shared [nh][kMaxSplits + 1]. Every thread of the block
// calls it.
template <int kNT>
__device__ void merge_if_last(const DecodeAttnArgs& a, const Params& p, int b, int h0, int nh, int n_used,
                              float* out, float* wts) {
  __shared__ int is_last;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    unsigned* c = p.counters + (static_cast<std::size_t>(b) * gridDim.y + blockIdx.y);
    const unsigned prev = atomicAdd(c, 1u);
    is_last = prev == static_cast<unsigned>(p.splits - 1);
    if (is_last) atomicExch(c, 0u);  // every split has arrived: ready for the next launch
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  const int hd = a.hd;
  const std::int64_t row0 = (static_cast<std::int64_t>(b) * a.n_heads + h0) * p.splits;
  for (int i = warp; i < nh; i += kNT / 32) {
    const float* ml = p.part_ml + 2 * (row0 + static_cast<std::int64_t>(i) * p.splits);
    float M = -FLT_MAX;
    for (int s = lane; s < n_used; s += 32) M = fmaxf(M, __ldcg(ml + 2 * s));
    M = warp_max(M);
    float L = 0.0f;
    for (int s = lane; s < n_used; s += 32) {
      const float w = exp2f(__ldcg(ml + 2 * s) - M);
      wts[i * (kMaxSplits + 1) + s] = w;
      L += w * __ldcg(ml + 2 * s + 1);
    }
    L = warp_sum(L);
    if (lane == 0) wts[i * (kMaxSplits + 1) + kMaxSplits] = L > 0.0f ? 1.0f / L : 0.0f;
  }
  __syncthreads();
  for (int idx = tid; idx < nh * hd; idx += kNT) {
    const int i = idx / hd, d = idx - i * hd;
    const float* w = wts + i * (kMaxSplits + 1);
    const float* po = p.part_o + (row0 + static_cast<std::int64_t>(i) * p.splits) * hd + d;
    float o = 0.0f;
#pragma unroll 8
    for (int s = 0; s < n_used; ++s) o += w[s] * __ldcg(po + static_cast<std::int64_t>(s) * hd);
    out[idx] = n_used > 0 ? o * w[kMaxSplits] : 0.0f;
  }
}

// kPL: head dims per lane in P·V (32 · kPL ≥ hd); kStages: shared-memory tiles in flight.
template <int kPL, int kStages>
__global__ void __launch_bounds__(kThreads, 2) decode_attn_kernel(const DecodeAttnArgs a, const Params p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int split = blockIdx.x, g = blockIdx.y / p.hgroups, hg = blockIdx.y - g * p.hgroups, b = blockIdx.z;
  const int h0 = g * p.group + hg * kGroup;           // first query head of this block
  const int nh = min(kGroup, p.group - hg * kGroup);  // its query heads
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int hd = a.hd, hd8 = p.hd8, stride = p.stride;
  pdl_trigger();  // the next kernel (the o projection's GEMV) may start loading its weights
  const DecodeSeq sq = a.seqs[b];
  const int len = max(sq.len, 0);
  // Keys of this split: chunks of at least kMinChunk keys, whole tiles, at most `splits` of them.
  const int chunk = max(kMinChunk, round_up((len + p.splits - 1) / p.splits, kTileKeys));
  const int n_used = (len + chunk - 1) / chunk;
  const int k0 = split * chunk, k1 = min(len, k0 + chunk);

  const int tile_elems = kTileKeys * stride;
  bf16* tiles = reinterpret_cast<bf16*>(smem);  // [kStages][K, V][kTileKeys][stride]
  float* qs =
      reinterpret_cast<float*>(smem + static_cast<std::size_t>(kStages) * 2 * tile_elems * sizeof(bf16));
  float* ps = qs + kGroup * hd8;          // [kTileKeys][kGroup] probabilities of the tile
  float* corr = ps + kTileKeys * kGroup;  // [kGroup] rescale of the accumulators for this tile
  float* mls = corr + kGroup;             // [2][kGroup] final max and sum per head
  float* wts = mls + 2 * kGroup;          // [kGroup][kMaxSplits + 1] merge weights and 1 / sum

  float* out = a.out + static_cast<std::int64_t>(b) * a.out_stride + static_cast<std::int64_t>(h0) * hd;

  if (split < n_used) {
    const bf16* qrow = a.q + static_cast<std::int64_t>(b) * a.q_stride + static_cast<std::int64_t>(h0) * hd;
    for (int i = tid; i < kGroup * hd8; i += kThreads) {
      const int h = i / hd8, d = i - h * hd8;
      qs[i] = h < nh && d < hd ? __bfloat162float(qrow[h * hd + d]) * p.scale : 0.0f;
    }
    for (int i = tid; i < kTileKeys * kGroup; i += kThreads) ps[i] = 0.0f;
    if (tid < kGroup) corr[tid] = 1.0f;

    // Paged cache: tile t (keys k0 + 32t …) lies in one page (chunks are whole tiles, pages are whole tiles),
    // its rows contiguous at hd elements apart.
    const std::int64_t head_off = (static_cast<std::int64_t>(a.layer) * a.n_kv + g) * kKvPageTokens * hd;
    const std::int64_t v_off = a.geo.v_offset();
    const bool vec = (hd & 7) == 0;  // pages are 16-byte aligned (cuda_ops.hpp)
    const int ntiles = (k1 - k0 + kTileKeys - 1) / kTileKeys;

    // Stages tile t of K and V; rows past k1 and columns past hd are zero.
    auto load_tile = [&](int t, int stage) {
      bf16* dst0 = tiles + stage * 2 * tile_elems;
      const int key0 = k0 + t * kTileKeys;
      const bf16* kb =
          sq.pages[key0 / kKvPageTokens] + head_off + static_cast<std::int64_t>(key0 % kKvPageTokens) * hd;
      const bf16* vb = kb + v_off;
      const int rows = min(kTileKeys, k1 - key0);
      if (vec) {
        const int chunks = hd >> 3;  // 16-byte pieces of a row
        for (int c = tid; c < 2 * kTileKeys * chunks; c += kThreads) {
          const int kv = c / (kTileKeys * chunks), r = c - kv * kTileKeys * chunks;
          const int row = r / chunks, col = (r - row * chunks) * 8;
          const bf16* src = (kv ? vb : kb) + static_cast<std::int64_t>(min(row, rows - 1)) * hd + col;
          mma::cp_async16(mma::smem_u32(dst0 + kv * tile_elems + row * stride + col), src, row < rows);
        }
      } else {
        for (int e = tid; e < 2 * kTileKeys * hd8; e += kThreads) {
          const int kv = e / (kTileKeys * hd8), r = e - kv * kTileKeys * hd8;
          const int row = r / hd8, col = r - row * hd8;
          const bf16* src = (kv ? vb : kb) + static_cast<std::int64_t>(row) * hd + col;
          dst0[kv * tile_elems + row * stride + col] = row < rows && col < hd ? *src : __float2bfloat16(0.0f);
        }
      }
    };

#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < ntiles) load_tile(s, s);
      mma::cp_async_commit();
    }
    float m = -FLT_MAX, l = 0.0f;  // running max / sum of head `warp` (warps < nh)
    float acc[kGroup][kPL];
#pragma unroll
    for (int i = 0; i < kGroup; ++i)
#pragma unroll
      for (int e = 0; e < kPL; ++e) acc[i][e] = 0.0f;
    const bool lane_dims = lane * kPL < hd;

    for (int t = 0; t < ntiles; ++t) {
      mma::cp_async_wait<kStages - 2>();
      __syncthreads();  // tile t is in place for all threads; tile t − 1's stage is free
      if (t + kStages - 1 < ntiles) load_tile(t + kStages - 1, (t + kStages - 1) % kStages);
      mma::cp_async_commit();
      const bf16* kt = tiles + (t % kStages) * 2 * tile_elems;
      const bf16* vt = kt + tile_elems;
      const int nk = min(kTileKeys, k1 - (k0 + t * kTileKeys));
      if (warp < nh) {
        const float* qh = qs + warp * hd8;
        const bf16* kr = kt + lane * stride;
        float dot0 = 0.0f, dot1 = 0.0f;  // two chains: half the dependent-add latency
#pragma unroll 4
        for (int d = 0; d < hd8; d += 8) {
          float kf[8];
          load_bf16<8>(kr + d, kf);
          const float4 qa = *reinterpret_cast<const float4*>(qh + d);
          const float4 qb = *reinterpret_cast<const float4*>(qh + d + 4);
          dot0 = fmaf(kf[0], qa.x, dot0);
          dot1 = fmaf(kf[1], qa.y, dot1);
          dot0 = fmaf(kf[2], qa.z, dot0);
          dot1 = fmaf(kf[3], qa.w, dot1);
          dot0 = fmaf(kf[4], qb.x, dot0);
          dot1 = fmaf(kf[5], qb.y, dot1);
          dot0 = fmaf(kf[6], qb.z, dot0);
          dot1 = fmaf(kf[7], qb.w, dot1);
        }
        const float dot = dot0 + dot1;
        const bool valid = lane < nk;
        const float sc = valid ? dot : -FLT_MAX;
        const float m_new = fmaxf(m, warp_max(sc));
        const float c = exp2f(m - m_new);
        const float pj = valid ? exp2f(sc - m_new) : 0.0f;
        l = l * c + warp_sum(pj);
        m = m_new;
        ps[lane * kGroup + warp] = pj;
        if (lane == 0) corr[warp] = c;
      }
      __syncthreads();
      {
        const float4 ca = *reinterpret_cast<const float4*>(corr);
        const float4 cb = *reinterpret_cast<const float4*>(corr + 4);
        const float cr[kGroup] = {ca.x, ca.y, ca.z, ca.w, cb.x, cb.y, cb.z, cb.w};
#pragma unroll
        for (int i = 0; i < kGroup; ++i)
#pragma unroll
          for (int e = 0; e < kPL; ++e) acc[i][e] *= cr[i];
      }
      if (lane_dims) {
        for (int j = warp; j < nk; j += kWarps) {
          const float4 pa = *reinterpret_cast<const float4*>(ps + j * kGroup);
          const float4 pb = *reinterpret_cast<const float4*>(ps + j * kGroup + 4);
          const float pr[kGroup] = {pa.x, pa.y, pa.z, pa.w, pb.x, pb.y, pb.z, pb.w};
          float vf[kPL];
          load_bf16<kPL>(vt + j * stride + lane * kPL, vf);
#pragma unroll
          for (int i = 0; i < kGroup; ++i)
#pragma unroll
            for (int e = 0; e < kPL; ++e) acc[i][e] += pr[i] * vf[e];
        }
      }
    }
    mma::cp_async_wait<0>();
    __syncthreads();  // every warp is done with the tiles: their space holds the warps' partial sums now

    float* red = reinterpret_cast<float*>(smem);  // [kWarps][kGroup][hd8]
    if (lane_dims) {
#pragma unroll
      for (int i = 0; i < kGroup; ++i)
#pragma unroll
        for (int e = 0; e < kPL; ++e)
          if (i < nh) red[(warp * kGroup + i) * hd8 + lane * kPL + e] = acc[i][e];
    }
    if (warp < nh && lane == 0) {
      mls[warp] = m;
      mls[kGroup + warp] = l;
    }
    __syncthreads();
    for (int idx = tid; idx < nh * hd; idx += kThreads) {
      const int i = idx / hd, d = idx - i * hd;
      float o = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) o += red[(w * kGroup + i) * hd8 + d];
      if (p.splits == 1) {
        const float li = mls[kGroup + i];
        out[idx] = li > 0.0f ? o / li : 0.0f;
      } else {
        const std::int64_t row = (static_cast<std::int64_t>(b) * a.n_heads + h0 + i) * p.splits + split;
        __stcg(p.part_o + row * hd + d, o);
        if (d == 0) {
          __stcg(p.part_ml + 2 * row, mls[i]);
          __stcg(p.part_ml + 2 * row + 1, mls[kGroup + i]);
        }
      }
    }
  } else if (p.splits == 1) {
    for (int idx = tid; idx < nh * hd; idx += kThreads) out[idx] = 0.0f;  // no keys
  }
  if (p.splits == 1) return;

  merge_if_last<kThreads>(a, p, b, h0, nh, n_used, out, wts);
}

// ---- tensor-core kernel (head dims multiple of 16 up to 128, up to 16 query heads per kv head, sm_80+) ----
//
// Block (s, g, b) = split s of sequence b's keys for all query heads of kv head g, which form the 16 rows of
// one mma tile (rows past the group are zero). Each of the kMmaWarps warps takes every kMmaWarps-th tile of
// 32 keys (= one page) of the split, double-buffered in its own shared memory (cp.async, no block barrier
// in the key loop), and keeps its own online softmax: S = Q·Kᵀ and O += P·V on mma.sync m16n8k16 as in the
// prefill kernel (attention_mma.cu). The warps' (o, m, l) are then combined in shared memory; the block
// writes the normalised output (one split) or its partial for merge_if_last.
constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = kMmaWarps * 32;
constexpr int kMmaRows = 16;  // query heads per block (one m16 tile)
constexpr int kMmaMinTiles =
    8;  // fewest 32-key tiles of a split (H100, 2048 keys, batch 1: 13.0 us; 2: 16.7, 4: 13.8, 16: 18.9)

template <int HD>
struct DecodeMmaSmem {
  static constexpr int kPitch = HD + 8;             // odd multiple of 16 bytes: conflict-free ldmatrix
  static constexpr int kTile = kTileKeys * kPitch;  // elements of one K or V tile
  static constexpr int kWarpElems = 2 * 2 * kTile;  // 2 stages × (K, V)
  static constexpr int kQElems = kMmaRows * kPitch;
  static constexpr std::size_t kWarpBytes = sizeof(bf16) * kWarpElems;
  static_assert(kWarpBytes >= sizeof(float) * (kMmaRows * HD + 2 * kMmaRows), "combine scratch fits");
  static constexpr std::size_t bytes =
      sizeof(bf16) * (kMmaWarps * kWarpElems + kQElems) + sizeof(float) * kMmaRows * (kMaxSplits + 1);
};

template <int HD>
__global__ void __launch_bounds__(kMmaThreads)
    decode_attn_mma_kernel(const DecodeAttnArgs a, const Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // mma.sync bf16 needs sm_80; decode_attention() keeps older GPUs on the scalar kernel
#else
  using L = DecodeMmaSmem<HD>;
  constexpr int P = L::kPitch;
  constexpr int kChunks = HD / 8;         // 16-byte pieces of a row
  constexpr int kKSteps = HD / 16;        // k-steps of Q·Kᵀ
  constexpr int kDTiles = HD / 8;         // 8-wide n-tiles of O
  constexpr int kSTiles = kTileKeys / 8;  // 8-wide n-tiles of S
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* warp_base = reinterpret_cast<bf16*>(smem_raw);
  bf16* Qs = warp_base + kMmaWarps * L::kWarpElems;
  float* wts = reinterpret_cast<float*>(Qs + L::kQElems);

  const int split = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
  const int h0 = g * p.group, nh = p.group;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, tq = lane & 3;
  pdl_trigger();  // the next kernel (the o projection's GEMV) may start loading its weights
  const DecodeSeq sq = a.seqs[b];
  const int len = max(sq.len, 0);
  const int chunk = max(p.mma_min_keys, round_up((len + p.splits - 1) / p.splits, kTileKeys));
  const int n_used = (len + chunk - 1) / chunk;
  const int k0 = split * chunk, k1 = min(len, k0 + chunk);
  float* out = a.out + static_cast<std::int64_t>(b) * a.out_stride + static_cast<std::int64_t>(h0) * HD;

  if (split >= n_used) {
    if (p.splits == 1)
      for (int idx = tid; idx < nh * HD; idx += kMmaThreads) out[idx] = 0.0f;  // no keys at all
    if (p.splits > 1) merge_if_last<kMmaThreads>(a, p, b, h0, nh, n_used, out, wts);
    return;
  }

  const std::int64_t head_off = (static_cast<std::int64_t>(a.layer) * a.n_kv + g) * kKvPageTokens * HD;
  const std::int64_t v_off = a.geo.v_offset();
  if (a.qkv != nullptr) {
    // Fused rope/split: the rotations of rope_split_row (kernels.cu), same expressions.
    constexpr int half = HD / 2;
    const float* row = a.qkv + static_cast<std::int64_t>(b) * a.qkv_stride;
    const float* cs = a.cos + static_cast<std::int64_t>(b) * half;
    const float* sn = a.sin + static_cast<std::int64_t>(b) * half;
    if (split == n_used - 1) {  // this block's keys hold position len − 1: store its k and v first
      const int t = len - 1;
      bf16* krow = sq.pages[t / kKvPageTokens] + head_off + static_cast<std::int64_t>(t % kKvPageTokens) * HD;
      const float* ksrc = row + static_cast<std::int64_t>(a.n_heads + g) * HD;
      const float* vsrc = row + static_cast<std::int64_t>(a.n_heads + a.n_kv + g) * HD;
      for (int j = tid; j < half; j += kMmaThreads) {
        const float x0 = ksrc[j], x1 = ksrc[j + half];
        const float y0 = x0 * cs[j] - x1 * sn[j], y1 = x1 * cs[j] + x0 * sn[j];
        krow[j] = __float2bfloat16(y0);
        krow[j + half] = __float2bfloat16(y1);
      }
      for (int d = tid; d < HD; d += kMmaThreads) krow[v_off + d] = __float2bfloat16(vsrc[d]);
    }
    for (int i = tid; i < kMmaRows * half; i += kMmaThreads) {
      const int r = i / half, j = i - r * half;
      float y0 = 0.0f, y1 = 0.0f;
      if (r < nh) {
        const float* src = row + static_cast<std::int64_t>(h0 + r) * HD;
        const float x0 = src[j], x1 = src[j + half];
        y0 = x0 * cs[j] - x1 * sn[j];
        y1 = x1 * cs[j] + x0 * sn[j];
      }
      Qs[r * P + j] = __float2bfloat16(y0);
      Qs[r * P + j + half] = __float2bfloat16(y1);
    }
    __syncthreads();  // the new k/v are stored before any warp's cp.async reads them
  } else {
    // Q rows (query heads of the group; rows past nh zero), in the same group as the first K/V tile.
    const bf16* qrow = a.q + static_cast<std::int64_t>(b) * a.q_stride + static_cast<std::int64_t>(h0) * HD;
    for (int i = tid; i < kMmaRows * kChunks; i += kMmaThreads) {
      const int r = i / kChunks, c = i - r * kChunks;
      const bool ok = r < nh;
      mma::cp_async16(mma::smem_u32(Qs + r * P + c * 8), ok ? qrow + r * HD + c * 8 : qrow, ok);
    }
  }
  const int ntiles = (k1 - k0 + kTileKeys - 1) / kTileKeys;
  bf16* wk = warp_base + warp * L::kWarpElems;  // [stage][K, V][32][P]
  auto load_tile = [&](int t, int stage) {      // tile t of the split (keys k0 + 32t …), by this warp
    const int key0 = k0 + t * kTileKeys;
    const bf16* kb =
        sq.pages[key0 / kKvPageTokens] + head_off + static_cast<std::int64_t>(key0 % kKvPageTokens) * HD;
    const int rows = min(kTileKeys, k1 - key0);
    bf16* kd = wk + stage * 2 * L::kTile;
#pragma unroll
    for (int i = lane; i < kTileKeys * kChunks; i += 32) {
      const int r = i / kChunks, c = i - r * kChunks;
      const bool ok = r < rows;  // keys past the end are zeros (V must not hold garbage)
      const bf16* src = kb + (ok ? r * HD + c * 8 : 0);
      mma::cp_async16(mma::smem_u32(kd + r * P + c * 8), src, ok);
      mma::cp_async16(mma::smem_u32(kd + L::kTile + r * P + c * 8), src + v_off, ok);
    }
  };
  if (warp < ntiles) load_tile(warp, 0);
  mma::cp_async_commit();
  mma::cp_async_wait_all();
  __syncthreads();  // Q is in place for every warp

  std::uint32_t qf[kKSteps][4];
  {
    const int row = lane & 15, col = (lane >> 4) * 8;
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk)
      mma::ldmatrix_x4(mma::smem_u32(Qs + row * P + kk * 16 + col), qf[kk]);
  }
  float o[kDTiles][4];
#pragma unroll
  for (int d = 0; d < kDTiles; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY};  // rows lane/4 and lane/4 + 8, log2 units
  float l_run[2] = {0.0f, 0.0f};            // this thread's share of the row sums

  int stage = 0;
  for (int t = warp; t < ntiles; t += kMmaWarps, stage ^= 1) {
    if (t + kMmaWarps < ntiles) load_tile(t + kMmaWarps, stage ^ 1);
    mma::cp_async_commit();
    mma::cp_async_wait<1>();  // tile t has landed (for this lane) ...
    __syncwarp();             // ... and for the warp
    const bf16* kb = wk + stage * 2 * L::kTile;
    const bf16* vb = kb + L::kTile;
    const int key0 = k0 + t * kTileKeys;

    float s[kSTiles][4];
#pragma unroll
    for (int n = 0; n < kSTiles; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
    mma::qk_tile<kTileKeys, HD>(qf, kb, P, lane, s);
#pragma unroll
    for (int n = 0; n < kSTiles; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = key0 + n * 8 + tq * 2 + (e & 1);
        s[n][e] = col < k1 ? s[n][e] * p.scale : -INFINITY;
      }
    mma::online_softmax(s, m_run, l_run, o);
    mma::pv_tile<kTileKeys, HD>(s, vb, P, lane, o);
    __syncwarp();  // every lane is done with this stage before the next load overwrites it
  }
  mma::cp_async_wait_all();

  // Each warp leaves (o, m, l) of its rows in its own shared memory: [16][HD] o, then m[16], l[16].
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 1);
    l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 2);
  }
  __syncwarp();
  float* wo = reinterpret_cast<float*>(wk);
  float* wm = wo + kMmaRows * HD;
  const int ra = lane >> 2;
#pragma unroll
  for (int d = 0; d < kDTiles; ++d) {
    wo[ra * HD + d * 8 + tq * 2] = o[d][0];
    wo[ra * HD + d * 8 + tq * 2 + 1] = o[d][1];
    wo[(ra + 8) * HD + d * 8 + tq * 2] = o[d][2];
    wo[(ra + 8) * HD + d * 8 + tq * 2 + 1] = o[d][3];
  }
  if (tq == 0) {
    wm[ra] = m_run[0];
    wm[ra + 8] = m_run[1];
    wm[kMmaRows + ra] = l_run[0];
    wm[kMmaRows + ra + 8] = l_run[1];
  }
  __syncthreads();
  const float* base0 = reinterpret_cast<const float*>(warp_base);
  constexpr int kWarpFloats = static_cast<int>(L::kWarpBytes / sizeof(float));
  for (int idx = tid; idx < nh * HD; idx += kMmaThreads) {
    const int i = idx / HD, d = idx - i * HD;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kMmaWarps; ++w) M = fmaxf(M, base0[w * kWarpFloats + kMmaRows * HD + i]);
    float Lsum = 0.0f, O = 0.0f;
#pragma unroll
    for (int w = 0; w < kMmaWarps; ++w) {
      const float* f = base0 + w * kWarpFloats;
      const float mw = f[kMmaRows * HD + i];
      const float e = mw == -INFINITY ? 0.0f : exp2f(mw - M);
      Lsum += e * f[kMmaRows * HD + kMmaRows + i];
      O += e * f[i * HD + d];
    }
    if (p.splits == 1) {
      out[idx] = Lsum > 0.0f ? O / Lsum : 0.0f;
    } else {
      const std::int64_t row = (static_cast<std::int64_t>(b) * a.n_heads + h0 + i) * p.splits + split;
      __stcg(p.part_o + row * HD + d, O);
      if (d == 0) {
        __stcg(p.part_ml + 2 * row, M);
        __stcg(p.part_ml + 2 * row + 1, Lsum);
      }
    }
  }
  if (p.splits > 1) merge_if_last<kMmaThreads>(a, p, b, h0, nh, n_used, out, wts);
#endif
}

struct Geometry {
  int group, hgroups, splits, stride, hd8, stages, pl;
  std::size_t smem;
  bool mma;  // the tensor-core kernel (shape and device allow it)
};

// Multiprocessor count (which = 0), opt-in shared memory per block (1) or compute capability major (2) of the
// current device,
// read once per device.
int device_attr(int which) {
  static std::atomic<int> cache[3][64];
  int dev = 0;
  check(cudaGetDevice(&dev), "decode_attention: cudaGetDevice");
  std::atomic<int>* slot = dev >= 0 && dev < 64 ? &cache[which][dev] : nullptr;
  if (slot) {
    const int v = slot->load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int v = 0;
  const cudaDeviceAttr attr = which == 0   ? cudaDevAttrMultiProcessorCount
                              : which == 1 ? cudaDevAttrMaxSharedMemoryPerBlockOptin
                                           : cudaDevAttrComputeCapabilityMajor;
  check(cudaDeviceGetAttribute(&v, attr, dev), "decode_attention: device attribute");
  if (slot) slot->store(v, std::memory_order_relaxed);
  return v;
}

std::size_t smem_bytes(int stages, int hd) {
  const int hd8 = round_up(hd, 8);
  return static_cast<std::size_t>(stages) * 2 * kTileKeys * tile_stride(hd) * sizeof(bf16) +
         static_cast<std::size_t>(kGroup * hd8 + kTileKeys * kGroup + 3 * kGroup +
                                  kGroup * (kMaxSplits + 1)) *
             sizeof(float);
}

int splits_for(int units, int sms) { return std::clamp((2 * sms + units - 1) / units, 1, kMaxSplits); }
// The tensor-core kernel runs one block per SM (its shared memory): a split per SM for the (sequence, kv
// head) pairs, at least one.
int mma_splits_for(int units, int sms) { return std::clamp(sms / std::max(units, 1), 1, kMaxSplits); }

std::size_t mma_smem_bytes(int hd) {
  const std::size_t pitch = static_cast<std::size_t>(hd) + 8;
  return sizeof(bf16) * (kMmaWarps * 2 * 2 * kTileKeys * pitch + kMmaRows * pitch) +
         sizeof(float) * kMmaRows * (kMaxSplits + 1);
}

// MV_DECODE_ATTN=scalar keeps every launch on the scalar kernel (for comparisons); read once.
bool mma_allowed_by_env() {
  static const bool allowed = [] {
    const char* e = std::getenv("MV_DECODE_ATTN");
    return !(e && std::string_view(e) == "scalar");
  }();
  return allowed;
}

// Fewest 32-key tiles of a tensor-core split: kMmaMinTiles, or MV_DECODE_ATTN_MIN_TILES (1..64, a tuning
// knob); read once.
int mma_min_tiles() {
  static const int tiles = [] {
    const char* e = std::getenv("MV_DECODE_ATTN_MIN_TILES");
    const int v = e ? std::atoi(e) : 0;
    return v >= 1 && v <= 64 ? v : kMmaMinTiles;
  }();
  return tiles;
}

bool mma_shape(int group, int hd) {
  return hd % 16 == 0 && hd >= 16 && hd <= 128 && group <= kMmaRows && device_attr(2) >= 8 &&
         mma_smem_bytes(hd) <= static_cast<std::size_t>(device_attr(1)) && mma_allowed_by_env();
}

Geometry geometry(int n_heads, int n_kv, int hd, int batch, bool allow_mma = true) {
  if (n_heads <= 0 || n_kv <= 0 || n_heads % n_kv != 0)
    check(cudaErrorInvalidValue,
          "decode_attention: head counts (query heads must be a multiple of kv heads)");
  if (hd <= 0 || hd > kMaxHeadDim) check(cudaErrorInvalidValue, "decode_attention: head_dim outside 1..256");
  Geometry G{};
  G.group = n_heads / n_kv;
  G.stride = tile_stride(hd);
  G.hd8 = round_up(hd, 8);
  G.pl = hd <= 64 ? 2 : hd <= 128 ? 4 : 8;
  G.mma = allow_mma && mma_shape(G.group, hd);
  if (G.mma) {
    G.hgroups = 1;
    G.splits = mma_splits_for(n_kv * std::max(batch, 1), device_attr(0));
    G.smem = mma_smem_bytes(hd);
    return G;
  }
  G.hgroups = (G.group + kGroup - 1) / kGroup;
  G.splits = splits_for(n_kv * G.hgroups * std::max(batch, 1), device_attr(0));
  const auto limit = static_cast<std::size_t>(device_attr(1));
  G.stages = smem_bytes(3, hd) <= limit ? 3 : 2;
  G.smem = smem_bytes(G.stages, hd);
  if (G.smem > limit) check(cudaErrorInvalidValue, "decode_attention: shared memory limit too small");
  return G;
}

std::size_t align256(std::size_t n) { return (n + 255) / 256 * 256; }

template <int kPL, int kStages>
void launch(cudaStream_t s, const DecodeAttnArgs& a, const Geometry& G, const Params& p) {
  auto* fn = decode_attn_kernel<kPL, kStages>;
  if (G.smem > 48 * 1024) {
    // Raised once per device and instantiation (the call is not a stream operation).
    static std::mutex mu;
    static std::set<std::pair<int, std::size_t>> raised;
    int dev = 0;
    check(cudaGetDevice(&dev), "decode_attention: cudaGetDevice");
    std::lock_guard<std::mutex> lock(mu);
    if (raised.insert({dev, G.smem}).second)
      check(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(G.smem)),
            "decode_attention: shared memory attribute");
  }
  const dim3 grid(static_cast<unsigned>(G.splits), static_cast<unsigned>(a.n_kv * G.hgroups),
                  static_cast<unsigned>(a.batch));
  fn<<<grid, kThreads, G.smem, s>>>(a, p);
}

template <int HD>
void launch_mma(cudaStream_t s, const DecodeAttnArgs& a, const Geometry& G, const Params& p) {
  auto* fn = decode_attn_mma_kernel<HD>;
  static std::mutex mu;
  static std::set<int> raised;  // devices whose attribute is set
  int dev = 0;
  check(cudaGetDevice(&dev), "decode_attention: cudaGetDevice");
  {
    std::lock_guard<std::mutex> lock(mu);
    if (raised.insert(dev).second)
      check(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(DecodeMmaSmem<HD>::bytes)),
            "decode_attention: shared memory attribute");
  }
  const dim3 grid(static_cast<unsigned>(G.splits), static_cast<unsigned>(a.n_kv),
                  static_cast<unsigned>(a.batch));
  fn<<<grid, kMmaThreads, DecodeMmaSmem<HD>::bytes, s>>>(a, p);
}

}  // namespace

int decode_attention_splits(int n_heads, int n_kv, int hd, int batch) {
  return geometry(n_heads, n_kv, hd, batch).splits;
}

bool decode_attention_tensor_cores(int n_heads, int n_kv, int hd) {
  return geometry(n_heads, n_kv, hd, 1).mma;
}

std::size_t decode_attention_workspace(int n_heads, int n_kv, int hd, int max_batch) {
  if (max_batch <= 0) return 0;
  // Room for either kernel (a launch whose arguments the tensor-core kernel does not take runs the scalar
  // one).
  const Geometry G = geometry(n_heads, n_kv, hd, 1, false);
  const bool mma = geometry(n_heads, n_kv, hd, 1).mma;
  const int sms = device_attr(0);
  std::size_t partials = 0;
  for (int B = 1; B <= max_batch; ++B) {
    int S = splits_for(n_kv * G.hgroups * B, sms);
    if (mma) S = std::max(S, mma_splits_for(n_kv * B, sms));
    if (S > 1)
      partials = std::max(partials, static_cast<std::size_t>(B) * n_heads * S * (hd + 2) * sizeof(float));
  }
  const std::size_t counters =
      align256(static_cast<std::size_t>(max_batch) * n_kv * G.hgroups * sizeof(unsigned));
  return counters + partials + 256;
}

void decode_attention(cudaStream_t s, const DecodeAttnArgs& a) {
  if (a.batch <= 0) return;
  if (a.geo.n_kv != a.n_kv || a.geo.hd != a.hd || a.layer < 0 || a.layer >= a.geo.layers)
    check(cudaErrorInvalidValue, "decode_attention: the page geometry does not match the heads or layer");
  // The tensor-core kernel reads q rows with 16-byte copies (or forms them itself from qkv).
  const bool q_aligned =
      a.qkv != nullptr || (a.q_stride % 8 == 0 && (reinterpret_cast<std::uintptr_t>(a.q) & 15) == 0);
  const Geometry G = geometry(a.n_heads, a.n_kv, a.hd, a.batch, q_aligned);
  if (a.qkv != nullptr && (!G.mma || a.cos == nullptr || a.sin == nullptr))
    check(cudaErrorInvalidValue,
          "decode_attention: the fused rope/split needs the tensor-core kernel and cos/sin tables");
  Params p{};
  p.scale = 1.4426950408889634f / sqrtf(static_cast<float>(a.hd));
  p.group = G.group;
  p.hgroups = G.hgroups;
  p.splits = G.splits;
  p.stride = G.stride;
  p.hd8 = G.hd8;
  p.mma_min_keys = kTileKeys * mma_min_tiles();
  if (G.splits > 1) {
    if (a.work == nullptr || a.work_batch < a.batch)
      check(cudaErrorInvalidValue, "decode_attention: workspace missing or sized for a smaller batch");
    auto* base = static_cast<unsigned char*>(a.work);
    const std::size_t counters =
        align256(static_cast<std::size_t>(a.work_batch) * a.n_kv * G.hgroups * sizeof(unsigned));
    const std::size_t po =
        align256(static_cast<std::size_t>(a.batch) * a.n_heads * G.splits * a.hd * sizeof(float));
    p.counters = reinterpret_cast<unsigned*>(base);
    p.part_o = reinterpret_cast<float*>(base + counters);
    p.part_ml = reinterpret_cast<float*>(base + counters + po);
  }
  if (G.mma) {
    switch (a.hd) {
      case 16:
        launch_mma<16>(s, a, G, p);
        break;
      case 32:
        launch_mma<32>(s, a, G, p);
        break;
      case 48:
        launch_mma<48>(s, a, G, p);
        break;
      case 64:
        launch_mma<64>(s, a, G, p);
        break;
      case 80:
        launch_mma<80>(s, a, G, p);
        break;
      case 96:
        launch_mma<96>(s, a, G, p);
        break;
      case 112:
        launch_mma<112>(s, a, G, p);
        break;
      default:
        launch_mma<128>(s, a, G, p);
        break;
    }
  } else if (G.stages == 3) {
    if (G.pl == 2)
      launch<2, 3>(s, a, G, p);
    else if (G.pl == 4)
      launch<4, 3>(s, a, G, p);
    else
      launch<8, 3>(s, a, G, p);
  } else {
    if (G.pl == 2)
      launch<2, 2>(s, a, G, p);
    else if (G.pl == 4)
      launch<4, 2>(s, a, G, p);
    else
      launch<8, 2>(s, a, G, p);
  }
  check_launch("decode_attention");
}

}  // namespace mv::cuda
