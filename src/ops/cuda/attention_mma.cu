// Register-resident flash attention for prefill and the vision tower (see cuda_ops.hpp, AttnArgs).
//
// One block of 4 warps per (work item, head); each warp owns 16 of the item's 64 query rows. The Q
// fragments are loaded once (ldmatrix) and stay in registers for the whole key loop. Keys go in tiles of
// 64: K and V are staged in shared memory by cp.async, double buffered (tile t + 1 loads while tile t is
// computed), rows padded by 16 bytes so that ldmatrix reads 8 rows from 8 different bank groups. Per
// tile and warp: S = Q·Kᵀ on mma.sync m16n8k16 (bf16 in, fp32 accumulators in registers), the online
// softmax on those registers (running max and sum per row, exp2 of scores pre-multiplied by
// scale·log2 e), P packed to bf16 A-fragments in registers (the S accumulator layout is the A-fragment
// layout of the next product), and O += P·V with V read by ldmatrix.trans. The output goes through the
// warp's own Q rows in shared memory so that each row is written with 16-byte stores.
// Fragment layouts: ops/cuda/mma_utils.cuh.
#include <cstdint>

#include "ops/cuda/attention_kernels.hpp"
#include "ops/cuda/mma_utils.cuh"

namespace mv::cuda::detail {
namespace {

using mma::cp_async16;
using mma::cp_async_commit;
using mma::cp_async_wait_all;
using mma::ldmatrix_x4;
using mma::pack_bf16;
using mma::smem_u32;

constexpr int kBQ = kAttnBlockQ;  // query rows per block
constexpr int kBK = 64;           // keys per tile
constexpr int kThreads = 128;     // 4 warps × 16 rows
static_assert(kBQ == 64, "the kernel maps 4 warps × 16 query rows onto one item");
constexpr float kLog2e = 1.4426950408889634f;

template <int HD>
struct MmaSmem {
  static_assert(HD % 16 == 0 && HD >= 16 && HD <= 128, "head dim: multiple of 16 up to 128");
  // Row pitch in elements: 2·HD + 16 bytes is an odd multiple of 16 bytes, so the 8 row addresses of an
  // ldmatrix 8×8 matrix fall into 8 distinct 16-byte bank groups.
  static constexpr int kPitch = HD + 8;
  static constexpr int kTile = 64 * kPitch;                       // elements per 64-row tile
  static constexpr std::size_t bytes = sizeof(bf16) * kTile * 5;  // Q, K × 2, V × 2
};

template <int HD>
__global__ void __launch_bounds__(kThreads) attention_mma_kernel(AttnArgs a, float scale_log2) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // mma.sync bf16 and cp.async need sm_80; attention_mma_supports() keeps older GPUs away
#else
  using L = MmaSmem<HD>;
  constexpr int P = L::kPitch;
  constexpr int kChunks = HD / 8;   // 16-byte chunks per row
  constexpr int kKSteps = HD / 16;  // k-steps of Q·Kᵀ
  constexpr int kDTiles = HD / 8;   // 8-wide n-tiles of O
  constexpr int kSTiles = kBK / 8;  // 8-wide n-tiles of S
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* Ks = Qs + L::kTile;      // 2 buffers
  bf16* Vs = Ks + 2 * L::kTile;  // 2 buffers

  const AttnItem it = a.items[blockIdx.x];
  const int h = blockIdx.y;
  const int g = h / (a.n_heads / a.n_kv);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int r0 = warp * 16;            // first of this warp's 16 rows (local to the item)
  const int row_a = r0 + (lane >> 2);  // this thread's rows in C fragments: row_a and row_a + 8
  const int tq = lane & 3;
  const int k_end = max(0, it.causal >= 0 ? min(it.kn, it.causal + it.qn) : it.kn);
  const int n_tiles = (k_end + kBK - 1) / kBK;
  const bf16* kbase = a.k + static_cast<std::int64_t>(g) * a.kv_head_stride +
                      static_cast<std::int64_t>(it.k0) * a.kv_row_stride;
  const bf16* vbase = a.v + static_cast<std::int64_t>(g) * a.kv_head_stride +
                      static_cast<std::int64_t>(it.k0) * a.kv_row_stride;

  // Q tile (rows past qn zero-filled) and the first K/V tile: one group.
  for (int i = tid; i < kBQ * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i - r * kChunks;
    const bool ok = r < it.qn;
    const bf16* src = ok ? a.q + static_cast<std::int64_t>(it.q0 + r) * a.q_stride + h * HD + c * 8 : a.q;
    cp_async16(smem_u32(Qs + r * P + c * 8), src, ok);
  }
  auto load_kv = [&](int t) {
    const int kt = t * kBK;
    bf16* kd = Ks + (t & 1) * L::kTile;
    bf16* vd = Vs + (t & 1) * L::kTile;
    for (int i = tid; i < kBK * kChunks; i += kThreads) {
      const int j = i / kChunks, c = i - j * kChunks;
      const bool ok = kt + j < k_end;  // keys past the end are zeros (V must not hold NaN garbage)
      const std::int64_t off = ok ? static_cast<std::int64_t>(kt + j) * a.kv_row_stride + c * 8 : 0;
      cp_async16(smem_u32(kd + j * P + c * 8), kbase + off, ok);
      cp_async16(smem_u32(vd + j * P + c * 8), vbase + off, ok);
    }
  };
  if (n_tiles > 0) load_kv(0);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();

  std::uint32_t qf[kKSteps][4];
  {
    const int row = r0 + (lane & 15), col = (lane >> 4) * 8;
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) ldmatrix_x4(smem_u32(Qs + row * P + kk * 16 + col), qf[kk]);
  }

  float o[kDTiles][4];
#pragma unroll
  for (int d = 0; d < kDTiles; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY};  // running max of scaled scores (log2 units), rows a, a+8
  float l_run[2] = {0.0f, 0.0f};            // this thread's share of the running sums
  const bool warp_idle = r0 >= it.qn;       // all 16 rows are padding

  for (int t = 0; t < n_tiles; ++t) {
    if (t > 0) {
      cp_async_wait_all();  // tile t (issued during t − 1) has landed for this thread ...
      __syncthreads();      // ... and for all; every warp is also done with tile t − 1's buffers
    }
    if (t + 1 < n_tiles) load_kv(t + 1);
    cp_async_commit();
    const int kt = t * kBK;
    // Tiles whose every key lies after this warp's last row change nothing for it.
    if (warp_idle || (it.causal >= 0 && kt > it.causal + r0 + 15)) continue;
    const bf16* kb = Ks + (t & 1) * L::kTile;
    const bf16* vb = Vs + (t & 1) * L::kTile;

    // S[16 × 64] = Q·Kᵀ.
    float s[kSTiles][4];
#pragma unroll
    for (int n = 0; n < kSTiles; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
    mma::qk_tile<kBK, HD>(qf, kb, P, lane, s);

    // Online softmax on the registers.
#pragma unroll
    for (int n = 0; n < kSTiles; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] *= scale_log2;
    const bool need_mask = kt + kBK > k_end || (it.causal >= 0 && kt + kBK - 1 > it.causal + r0);
    if (need_mask) {
#pragma unroll
      for (int n = 0; n < kSTiles; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = kt + n * 8 + tq * 2 + (e & 1);
          const int row = row_a + (e >> 1) * 8;
          if (col >= k_end || (it.causal >= 0 && col > it.causal + row)) s[n][e] = -INFINITY;
        }
    }
    mma::online_softmax(s, m_run, l_run, o);
    // O += P·V.
    mma::pv_tile<kBK, HD>(s, vb, P, lane, o);
  }
  cp_async_wait_all();  // the last (empty) group

  // Row sums across the quad, normalise, stage the warp's 16 rows in its own Q rows, write 16 bytes a lane.
  float inv[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 1);
    l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 2);
    inv[i] = l_run[i] > 0.0f ? 1.0f / l_run[i] : 0.0f;  // a row that sees no key gives zeros
  }
  __syncwarp();
  bf16* os = Qs + r0 * P;
#pragma unroll
  for (int d = 0; d < kDTiles; ++d) {
    *reinterpret_cast<std::uint32_t*>(os + (lane >> 2) * P + d * 8 + tq * 2) =
        pack_bf16(o[d][0] * inv[0], o[d][1] * inv[0]);
    *reinterpret_cast<std::uint32_t*>(os + ((lane >> 2) + 8) * P + d * 8 + tq * 2) =
        pack_bf16(o[d][2] * inv[1], o[d][3] * inv[1]);
  }
  __syncwarp();
  for (int i = lane; i < 16 * kChunks; i += 32) {
    const int rr = i / kChunks, c = i - rr * kChunks;
    if (r0 + rr >= it.qn) continue;
    *reinterpret_cast<uint4*>(a.out + static_cast<std::int64_t>(it.q0 + r0 + rr) * a.out_stride + h * HD +
                              c * 8) = *reinterpret_cast<const uint4*>(os + rr * P + c * 8);
  }
#endif
}

template <int HD>
void launch(cudaStream_t s, const AttnArgs& a) {
  constexpr std::size_t bytes = MmaSmem<HD>::bytes;
  // Once per instantiation (the attribute belongs to the function); a function-local static is
  // initialised once even when several threads launch.
  static const bool configured = [] {
    check(cudaFuncSetAttribute(attention_mma_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(bytes)),
          "attention (mma): shared memory attribute");
    return true;
  }();
  (void)configured;
  const float scale_log2 = kLog2e / sqrtf(static_cast<float>(HD));
  attention_mma_kernel<HD><<<dim3(a.n_items, a.n_heads), kThreads, bytes, s>>>(a, scale_log2);
  check_launch("attention (mma)");
}

}  // namespace

void attention_mma(cudaStream_t s, const AttnArgs& a) {
  switch (a.hd) {
    case 16:
      return launch<16>(s, a);
    case 32:
      return launch<32>(s, a);
    case 48:
      return launch<48>(s, a);
    case 64:
      return launch<64>(s, a);
    case 80:
      return launch<80>(s, a);
    case 96:
      return launch<96>(s, a);
    case 112:
      return launch<112>(s, a);
    case 128:
      return launch<128>(s, a);
    default:
      check(cudaErrorInvalidValue, "attention (mma): head_dim must be a multiple of 16 up to 128");
  }
}

}  // namespace mv::cuda::detail
