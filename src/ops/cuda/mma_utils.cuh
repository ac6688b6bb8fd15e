// Warp-level tensor-core helpers shared by the attention kernels (sm_80+): shared-memory addresses,
// cp.async, ldmatrix, mma.sync m16n8k16 (bf16 in, fp32 accumulate), bf16 packing and exp2.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16): lane = 4·g + t. A (16×16): a0 = (g, 2t..2t+1),
// a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..). B (16×8): b0 = (k 2t..2t+1, n g),
// b1 = (k 2t+8.., n g). C (16×8): c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1).
#pragma once
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

namespace mv::cuda::mma {

__device__ __forceinline__ std::uint32_t smem_u32(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte asynchronous copy global → shared; with valid == false the destination is zero-filled and
// nothing is read.
__device__ __forceinline__ void cp_async16(std::uint32_t dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
template <int kN>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kN) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(std::uint32_t addr, std::uint32_t* r) {  // r[0..3]
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t addr, std::uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// d += a·b for one 16×8 tile (bf16 operands, fp32 accumulators).
__device__ __forceinline__ void mma_bf16(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                         std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats → one register of two bf16, `lo` in the low half (the lower column index).
__device__ __forceinline__ std::uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const std::uint32_t*>(&v);
}

__device__ __forceinline__ float fast_exp2(float x) {  // 2^x; 2^-inf = +0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// ---- one warp's flash-attention step over a tile of kKeys keys (16 query rows: rows lane/4 and lane/4 + 8
// of the C fragments), shared by the prefill and decode kernels ----

// s[kKeys/8][4] += Q·Kᵀ: qf holds the Q A-fragments of the HD/16 k-steps, kb the tile's keys as rows of
// `pitch` bf16 in shared memory (one ldmatrix.x4 gives the B fragments of two 8-key n-tiles).
template <int kKeys, int HD>
__device__ __forceinline__ void qk_tile(const std::uint32_t (&qf)[HD / 16][4], const __nv_bfloat16* kb,
                                        int pitch, int lane, float (&s)[kKeys / 8][4]) {
  const int key = (lane & 7) + ((lane >> 4) << 3), dof = ((lane >> 3) & 1) * 8;
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk)
#pragma unroll
    for (int np = 0; np < kKeys / 16; ++np) {
      std::uint32_t b[4];
      ldmatrix_x4(smem_u32(kb + (np * 16 + key) * pitch + kk * 16 + dof), b);
      mma_bf16(s[2 * np], qf[kk], b[0], b[1]);
      mma_bf16(s[2 * np + 1], qf[kk], b[2], b[3]);
    }
}

// Online softmax on the registers: s holds scores in log2 units (masked ones −inf); updates the running max
// m_run and this thread's share of the row sums l_run, turns s into 2^(s − max) and rescales the o
// accumulators by 2^(old max − new max). A row that has seen no key yet keeps base 0.
template <int kN, int kD>
__device__ __forceinline__ void online_softmax(float (&s)[kN][4], float (&m_run)[2], float (&l_run)[2],
                                               float (&o)[kD][4]) {
  float mx[2] = {m_run[0], m_run[1]};
#pragma unroll
  for (int n = 0; n < kN; ++n) {
    mx[0] = fmaxf(mx[0], fmaxf(s[n][0], s[n][1]));
    mx[1] = fmaxf(mx[1], fmaxf(s[n][2], s[n][3]));
  }
  float base[2], corr[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {  // the 4 lanes of a quad share the row
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
    mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
    base[i] = mx[i] == -INFINITY ? 0.0f : mx[i];
    corr[i] = fast_exp2(m_run[i] - base[i]);
    m_run[i] = mx[i];
  }
  float rs[2] = {0.0f, 0.0f};
#pragma unroll
  for (int n = 0; n < kN; ++n) {
    s[n][0] = fast_exp2(s[n][0] - base[0]);
    s[n][1] = fast_exp2(s[n][1] - base[0]);
    s[n][2] = fast_exp2(s[n][2] - base[1]);
    s[n][3] = fast_exp2(s[n][3] - base[1]);
    rs[0] += s[n][0] + s[n][1];
    rs[1] += s[n][2] + s[n][3];
  }
  l_run[0] = l_run[0] * corr[0] + rs[0];
  l_run[1] = l_run[1] * corr[1] + rs[1];
#pragma unroll
  for (int d = 0; d < kD; ++d) {
    o[d][0] *= corr[0];
    o[d][1] *= corr[0];
    o[d][2] *= corr[1];
    o[d][3] *= corr[1];
  }
}

// o += P·V, 16 keys per step: P's A fragment is two S accumulator tiles packed to bf16, V rows (`pitch` bf16)
// in shared memory read by ldmatrix.trans.
template <int kKeys, int HD>
__device__ __forceinline__ void pv_tile(const float (&p)[kKeys / 8][4], const __nv_bfloat16* vb, int pitch,
                                        int lane, float (&o)[HD / 8][4]) {
  const int key = (lane & 7) + ((lane >> 3) & 1) * 8, dof = (lane >> 4) * 8;
#pragma unroll
  for (int ks = 0; ks < kKeys / 16; ++ks) {
    const std::uint32_t pa[4] = {pack_bf16(p[2 * ks][0], p[2 * ks][1]), pack_bf16(p[2 * ks][2], p[2 * ks][3]),
                                 pack_bf16(p[2 * ks + 1][0], p[2 * ks + 1][1]),
                                 pack_bf16(p[2 * ks + 1][2], p[2 * ks + 1][3])};
#pragma unroll
    for (int dp = 0; dp < HD / 16; ++dp) {
      std::uint32_t b[4];
      ldmatrix_x4_trans(smem_u32(vb + (ks * 16 + key) * pitch + dp * 16 + dof), b);
      mma_bf16(o[2 * dp], pa, b[0], b[1]);
      mma_bf16(o[2 * dp + 1], pa, b[2], b[3]);
    }
  }
}

}  // namespace mv::cuda::mma
