// Decode attention (flash-decoding) of the CUDA engine; see cuda_ops.hpp and docs/design/cuda-engine.md.
//
// Grid (splits, n_kv · head groups, batch): block (s, g, b) takes split s of sequence b's keys for the query
// heads of kv head g (up to kGroup of them, so K/V are read once per step). The split count is a function
// of the batch size, the head counts and the device only; the keys of a split are computed on the device
// from the sequence's length, so a captured CUDA graph serves every step. Each block stages tiles of 32
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
#include <mutex>
#include <set>
#include <utility>

#include "ops/cuda/cuda_ops.hpp"
#include "ops/cuda/device_math.cuh"
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
};

// 16-byte global → shared copy (cp.async, L2 only); zero-fills the 16 bytes instead when !valid.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const auto s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kN>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kN) : "memory");
}

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

// kPL: head dims per lane in P·V (32 · kPL ≥ hd); kStages: shared-memory tiles in flight.
template <int kPL, int kStages>
__global__ void __launch_bounds__(kThreads, 2) decode_attn_kernel(const DecodeAttnArgs a, const Params p) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int is_last;
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

    const std::int64_t off = (static_cast<std::int64_t>(a.layer) * a.n_kv + g) * sq.head_stride;
    const bf16* kb = sq.k + off;
    const bf16* vb = sq.v + off;
    const bool vec =
        (hd & 7) == 0 && (a.kv_row_stride & 7) == 0 &&
        ((reinterpret_cast<std::uintptr_t>(kb) | reinterpret_cast<std::uintptr_t>(vb)) & 15) == 0;
    const int ntiles = (k1 - k0 + kTileKeys - 1) / kTileKeys;

    // Stages tile t (keys k0 + 32t …) of K and V; rows past k1 and columns past hd are zero.
    auto load_tile = [&](int t, int stage) {
      bf16* dst0 = tiles + stage * 2 * tile_elems;
      const int key0 = k0 + t * kTileKeys;
      if (vec) {
        const int chunks = hd >> 3;  // 16-byte pieces of a row
        for (int c = tid; c < 2 * kTileKeys * chunks; c += kThreads) {
          const int kv = c / (kTileKeys * chunks), r = c - kv * kTileKeys * chunks;
          const int row = r / chunks, col = (r - row * chunks) * 8;
          const int key = key0 + row;
          const bf16* src =
              (kv ? vb : kb) + static_cast<std::int64_t>(min(key, k1 - 1)) * a.kv_row_stride + col;
          cp_async16(dst0 + kv * tile_elems + row * stride + col, src, key < k1);
        }
      } else {
        for (int e = tid; e < 2 * kTileKeys * hd8; e += kThreads) {
          const int kv = e / (kTileKeys * hd8), r = e - kv * kTileKeys * hd8;
          const int row = r / hd8, col = r - row * hd8;
          const int key = key0 + row;
          const bf16* src = (kv ? vb : kb) + static_cast<std::int64_t>(key) * a.kv_row_stride + col;
          dst0[kv * tile_elems + row * stride + col] = key < k1 && col < hd ? *src : __float2bfloat16(0.0f);
        }
      }
    };

#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < ntiles) load_tile(s, s);
      cp_async_commit();
    }
    float m = -FLT_MAX, l = 0.0f;  // running max / sum of head `warp` (warps < nh)
    float acc[kGroup][kPL];
#pragma unroll
    for (int i = 0; i < kGroup; ++i)
#pragma unroll
      for (int e = 0; e < kPL; ++e) acc[i][e] = 0.0f;
    const bool lane_dims = lane * kPL < hd;

    for (int t = 0; t < ntiles; ++t) {
      cp_async_wait<kStages - 2>();
      __syncthreads();  // tile t is in place for all threads; tile t − 1's stage is free
      if (t + kStages - 1 < ntiles) load_tile(t + kStages - 1, (t + kStages - 1) % kStages);
      cp_async_commit();
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
    cp_async_wait<0>();
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

  // The last block of this (sequence, kv head, head group) merges the splits.
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
  const std::int64_t row0 = (static_cast<std::int64_t>(b) * a.n_heads + h0) * p.splits;
  if (warp < nh) {
    const float* ml = p.part_ml + 2 * (row0 + static_cast<std::int64_t>(warp) * p.splits);
    float M = -FLT_MAX;
    for (int s = lane; s < n_used; s += 32) M = fmaxf(M, __ldcg(ml + 2 * s));
    M = warp_max(M);
    float L = 0.0f;
    for (int s = lane; s < n_used; s += 32) {
      const float w = exp2f(__ldcg(ml + 2 * s) - M);
      wts[warp * (kMaxSplits + 1) + s] = w;
      L += w * __ldcg(ml + 2 * s + 1);
    }
    L = warp_sum(L);
    if (lane == 0) wts[warp * (kMaxSplits + 1) + kMaxSplits] = L > 0.0f ? 1.0f / L : 0.0f;
  }
  __syncthreads();
  for (int idx = tid; idx < nh * hd; idx += kThreads) {
    const int i = idx / hd, d = idx - i * hd;
    const float* w = wts + i * (kMaxSplits + 1);
    const float* po = p.part_o + (row0 + static_cast<std::int64_t>(i) * p.splits) * hd + d;
    float o = 0.0f;
#pragma unroll 8
    for (int s = 0; s < n_used; ++s) o += w[s] * __ldcg(po + static_cast<std::int64_t>(s) * hd);
    out[idx] = n_used > 0 ? o * w[kMaxSplits] : 0.0f;
  }
}

struct Geometry {
  int group, hgroups, splits, stride, hd8, stages, pl;
  std::size_t smem;
};

// Multiprocessor count (which = 0) or opt-in shared memory per block (which = 1) of the current device,
// read once per device.
int device_attr(int which) {
  static std::atomic<int> cache[2][64];
  int dev = 0;
  check(cudaGetDevice(&dev), "decode_attention: cudaGetDevice");
  std::atomic<int>* slot = dev >= 0 && dev < 64 ? &cache[which][dev] : nullptr;
  if (slot) {
    const int v = slot->load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int v = 0;
  check(cudaDeviceGetAttribute(
            &v, which == 0 ? cudaDevAttrMultiProcessorCount : cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
        "decode_attention: device attribute");
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

Geometry geometry(int n_heads, int n_kv, int hd, int batch) {
  if (n_heads <= 0 || n_kv <= 0 || n_heads % n_kv != 0)
    check(cudaErrorInvalidValue,
          "decode_attention: head counts (query heads must be a multiple of kv heads)");
  if (hd <= 0 || hd > kMaxHeadDim) check(cudaErrorInvalidValue, "decode_attention: head_dim outside 1..256");
  Geometry G{};
  G.group = n_heads / n_kv;
  G.hgroups = (G.group + kGroup - 1) / kGroup;
  G.splits = splits_for(n_kv * G.hgroups * std::max(batch, 1), device_attr(0));
  G.stride = tile_stride(hd);
  G.hd8 = round_up(hd, 8);
  G.pl = hd <= 64 ? 2 : hd <= 128 ? 4 : 8;
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

}  // namespace

int decode_attention_splits(int n_heads, int n_kv, int hd, int batch) {
  return geometry(n_heads, n_kv, hd, batch).splits;
}

std::size_t decode_attention_workspace(int n_heads, int n_kv, int hd, int max_batch) {
  if (max_batch <= 0) return 0;
  const Geometry G = geometry(n_heads, n_kv, hd, 1);
  const int sms = device_attr(0);
  std::size_t partials = 0;
  for (int B = 1; B <= max_batch; ++B) {
    const int S = splits_for(n_kv * G.hgroups * B, sms);
    if (S > 1)
      partials = std::max(partials, static_cast<std::size_t>(B) * n_heads * S * (hd + 2) * sizeof(float));
  }
  const std::size_t counters =
      align256(static_cast<std::size_t>(max_batch) * n_kv * G.hgroups * sizeof(unsigned));
  return counters + partials + 256;
}

void decode_attention(cudaStream_t s, const DecodeAttnArgs& a) {
  if (a.batch <= 0) return;
  const Geometry G = geometry(a.n_heads, a.n_kv, a.hd, a.batch);
  Params p{};
  p.scale = 1.4426950408889634f / sqrtf(static_cast<float>(a.hd));
  p.group = G.group;
  p.hgroups = G.hgroups;
  p.splits = G.splits;
  p.stride = G.stride;
  p.hd8 = G.hd8;
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
  if (G.stages == 3) {
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
