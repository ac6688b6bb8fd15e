// WMMA attention for prefill and the vision tower (see cuda_ops.hpp, AttnArgs): the fallback behind
// cuda::attention for head dims that are not multiples of 16 or rows that are not 16-byte aligned, and
// the kernel chosen by MV_ATTN=wmma (attention_mma.cu holds the default kernel).
//
// One block (4 warps) per (work item, head): 64 query rows against the item's keys in tiles of 64,
// flash-style. Q, K, V tiles are bf16 in shared memory (head dim zero-padded to a multiple of 16);
// S = Q·Kᵀ and O += P·V run on WMMA bf16 fragments with fp32 accumulation; the online softmax (running
// max and sum per row) works on the fp32 scores in shared memory. Each warp owns 16 query rows, so only
// the K/V tile loads need block-wide barriers. Causal items mask keys past each row's position; varlen
// segments are separate items, so the attention is truly block-diagonal.
#include <mma.h>

#include <cfloat>

#include "ops/cuda/attention_kernels.hpp"
#include "ops/cuda/device_math.cuh"

namespace mv::cuda {
namespace {

using namespace nvcuda;

constexpr int kBQ = kAttnBlockQ;  // query rows per block
constexpr int kBK = 64;           // keys per tile
constexpr int kThreads = 128;     // 4 warps × 16 rows

template <int HDP>
struct Smem {
  static constexpr int kLdH = HDP + 8;  // bf16 row pitch (multiple of 8 for WMMA)
  static constexpr int kLdO = HDP + 4;  // fp32 pitch (multiple of 4)
  static constexpr int kLdS = kBK + 4;
  static constexpr int kLdP = kBK + 8;
  static constexpr std::size_t q = 0;
  static constexpr std::size_t k = q + sizeof(bf16) * kBQ * kLdH;
  static constexpr std::size_t v = k + sizeof(bf16) * kBK * kLdH;
  static constexpr std::size_t s = v + sizeof(bf16) * kBK * kLdH;
  static constexpr std::size_t p = s + sizeof(float) * kBQ * kLdS;
  static constexpr std::size_t o = p + sizeof(bf16) * kBQ * kLdP;
  static constexpr std::size_t stats = o + sizeof(float) * kBQ * kLdO;
  static constexpr std::size_t bytes = stats + sizeof(float) * kBQ * 3;
};

template <int HDP>
__global__ void __launch_bounds__(kThreads) flash_attention_kernel(AttnArgs a, float scale) {
  using L = Smem<HDP>;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* Qs = reinterpret_cast<bf16*>(smem + L::q);
  bf16* Ks = reinterpret_cast<bf16*>(smem + L::k);
  bf16* Vs = reinterpret_cast<bf16*>(smem + L::v);
  float* Ss = reinterpret_cast<float*>(smem + L::s);
  bf16* Ps = reinterpret_cast<bf16*>(smem + L::p);
  float* Os = reinterpret_cast<float*>(smem + L::o);
  float* row_m = reinterpret_cast<float*>(smem + L::stats);
  float* row_l = row_m + kBQ;
  float* row_c = row_l + kBQ;

  const AttnItem it = a.items[blockIdx.x];
  const int h = blockIdx.y;
  const int g = h / (a.n_heads / a.n_kv);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int hd = a.hd;
  const bf16 zero = __float2bfloat16(0.0f);

  // Q tile and accumulators.
  for (int i = tid; i < kBQ * HDP; i += kThreads) {
    const int r = i / HDP, d = i - r * HDP;
    bf16 val = zero;
    if (r < it.qn && d < hd) val = a.q[static_cast<std::int64_t>(it.q0 + r) * a.q_stride + h * hd + d];
    Qs[r * L::kLdH + d] = val;
  }
  for (int i = tid; i < kBQ * HDP; i += kThreads) {
    const int r = i / HDP, d = i - r * HDP;
    Os[r * L::kLdO + d] = 0.0f;
  }
  if (tid < kBQ) {
    row_m[tid] = -FLT_MAX;
    row_l[tid] = 0.0f;
  }

  const int k_end = it.causal >= 0 ? min(it.kn, it.causal + it.qn) : it.kn;
  const bf16* kbase = a.k + static_cast<std::int64_t>(g) * a.kv_head_stride;
  const bf16* vbase = a.v + static_cast<std::int64_t>(g) * a.kv_head_stride;
  const int r0 = warp * 16;  // this warp's rows

  for (int kt = 0; kt < k_end; kt += kBK) {
    __syncthreads();  // previous tile's K/V fully consumed
    for (int i = tid; i < kBK * HDP; i += kThreads) {
      const int j = i / HDP, d = i - j * HDP;
      bf16 kv = zero, vv = zero;
      if (kt + j < k_end && d < hd) {
        const std::int64_t off = static_cast<std::int64_t>(it.k0 + kt + j) * a.kv_row_stride + d;
        kv = kbase[off];
        vv = vbase[off];
      }
      Ks[j * L::kLdH + d] = kv;
      Vs[j * L::kLdH + d] = vv;
    }
    __syncthreads();

    // S[16 rows × 64 keys] = Q·Kᵀ for this warp.
    {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kBK / 16];
#pragma unroll
      for (int n = 0; n < kBK / 16; ++n) wmma::fill_fragment(acc[n], 0.0f);
#pragma unroll
      for (int kk = 0; kk < HDP; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fa;
        wmma::load_matrix_sync(fa, Qs + r0 * L::kLdH + kk, L::kLdH);
#pragma unroll
        for (int n = 0; n < kBK / 16; ++n) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> fb;
          wmma::load_matrix_sync(fb, Ks + (n * 16) * L::kLdH + kk, L::kLdH);
          wmma::mma_sync(acc[n], fa, fb, acc[n]);
        }
      }
#pragma unroll
      for (int n = 0; n < kBK / 16; ++n)
        wmma::store_matrix_sync(Ss + r0 * L::kLdS + n * 16, acc[n], L::kLdS, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax over this warp's rows (lanes over 2 key columns each).
    for (int rr = 0; rr < 16; ++rr) {
      const int r = r0 + rr;
      int limit = k_end - kt;  // keys of this tile visible to row r
      if (it.causal >= 0) limit = min(limit, it.causal + r + 1 - kt);
      if (r >= it.qn) limit = 0;
      float s0 = lane < limit ? Ss[r * L::kLdS + lane] * scale : -FLT_MAX;
      float s1 = lane + 32 < limit ? Ss[r * L::kLdS + lane + 32] * scale : -FLT_MAX;
      const float mx = warp_max(fmaxf(s0, s1));
      const float m_old = row_m[r];
      const float m_new = fmaxf(m_old, mx);
      float p0 = 0.0f, p1 = 0.0f, corr = 1.0f;
      if (limit > 0) {
        p0 = lane < limit ? __expf(s0 - m_new) : 0.0f;
        p1 = lane + 32 < limit ? __expf(s1 - m_new) : 0.0f;
        corr = __expf(m_old - m_new);
      }
      const float ps = warp_sum(p0 + p1);
      Ps[r * L::kLdP + lane] = __float2bfloat16(p0);
      Ps[r * L::kLdP + lane + 32] = __float2bfloat16(p1);
      if (lane == 0) {
        if (limit > 0) {
          row_l[r] = row_l[r] * corr + ps;
          row_m[r] = m_new;
        }
        row_c[r] = corr;
      }
    }
    __syncwarp();
    for (int i = lane; i < 16 * HDP; i += 32) {
      const int r = r0 + i / HDP, d = i % HDP;
      Os[r * L::kLdO + d] *= row_c[r];
    }
    __syncwarp();

    // O[16 rows × HDP] += P·V.
#pragma unroll
    for (int n = 0; n < HDP / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, Os + r0 * L::kLdO + n * 16, L::kLdO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kBK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> fb;
        wmma::load_matrix_sync(fa, Ps + r0 * L::kLdP + kk, L::kLdP);
        wmma::load_matrix_sync(fb, Vs + kk * L::kLdH + n * 16, L::kLdH);
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(Os + r0 * L::kLdO + n * 16, acc, L::kLdO, wmma::mem_row_major);
    }
    __syncwarp();
  }
  __syncwarp();
  for (int i = lane; i < 16 * hd; i += 32) {
    const int r = r0 + i / hd, d = i % hd;
    if (r >= it.qn) continue;
    const float l = row_l[r];
    const float val = l > 0.0f ? Os[r * L::kLdO + d] / l : 0.0f;
    a.out[static_cast<std::int64_t>(it.q0 + r) * a.out_stride + h * hd + d] = __float2bfloat16(val);
  }
}

template <int HDP>
void launch(cudaStream_t s, const AttnArgs& a, float scale) {
  const std::size_t bytes = Smem<HDP>::bytes;
  static bool configured = false;  // per instantiation; the attribute is per function
  if (!configured) {
    check(cudaFuncSetAttribute(flash_attention_kernel<HDP>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(bytes)),
          "attention: shared memory attribute");
    configured = true;
  }
  flash_attention_kernel<HDP><<<dim3(a.n_items, a.n_heads), kThreads, bytes, s>>>(a, scale);
  check_launch("attention");
}

}  // namespace

void detail::attention_wmma(cudaStream_t s, const AttnArgs& a) {
  if (a.n_items <= 0) return;
  const float scale = 1.0f / sqrtf(static_cast<float>(a.hd));
  const int hdp = (a.hd + 15) / 16 * 16;
  switch (hdp) {
    case 16:
      return launch<16>(s, a, scale);
    case 32:
      return launch<32>(s, a, scale);
    case 48:
      return launch<48>(s, a, scale);
    case 64:
      return launch<64>(s, a, scale);
    case 80:
      return launch<80>(s, a, scale);
    case 96:
      return launch<96>(s, a, scale);
    case 112:
      return launch<112>(s, a, scale);
    case 128:
      return launch<128>(s, a, scale);
    default:
      check(cudaErrorInvalidValue, "attention: head_dim above 128 is not supported");
  }
}

}  // namespace mv::cuda
