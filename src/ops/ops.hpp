// Operator signatures in one place (forward, fp32 activations). ops/cpu implements them; a CUDA backend
// implements the same free functions over device pointers. Shapes are given explicitly; every matrix is
// row-major. `pool` may be null (serial).
//
// Conventions:
//   * A weight matrix is [rows = out_features, cols = in_features] as PyTorch's nn.Linear stores it, in
//     F32, F16 or BF16; y = x·Wᵀ + b with fp32 accumulation.
//   * Attention tensors are [tokens][heads][head_dim]; scale = 1/sqrt(head_dim).
//   * Rotary uses the rotate-half (NeoX) convention: for pair j < head_dim/2,
//     x'[j] = x[j]·cos[j] − x[j+h]·sin[j],  x'[j+h] = x[j+h]·cos[j] + x[j]·sin[j]  (h = head_dim/2).
#pragma once
#include <cstdint>
#include <span>

#include "core/thread_pool.hpp"
#include "io/safetensors.hpp"  // DType
#include "quant/nf4.hpp"        // Nf4View

namespace mv::ops {

// A weight matrix viewed in place (e.g. inside a mapped checkpoint). `data` must be aligned to the
// element size. An NF4 matrix (bitsandbytes layout) has `nf4` set, data = its packed bytes, dtype kU8.
struct Matrix {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  std::int64_t rows = 0;  // out features
  std::int64_t cols = 0;  // in features
  const quant::Nf4View* nf4 = nullptr;
};

// One output of a fused linear layer: y[m, w.rows] = x[m, w.cols]·wᵀ + bias (bias may be null).
struct LinearJob {
  Matrix w;
  const float* bias = nullptr;
  float* y = nullptr;
};

// y = x·Wᵀ + b. x: [m, w.cols], y: [m, w.rows] (must not alias x). Few rows (decode) read the weight
// directly in its dtype (SIMD where the CPU has it); many rows convert weight panels to fp32 and use
// SGEMM.
void linear(const float* x, std::int64_t m, const Matrix& w, const float* bias, float* y, ThreadPool* pool);
// Several linear layers over the same input in one parallel pass (q/k/v, gate/up). All jobs must have
// the same w.cols.
void linear_multi(const float* x, std::int64_t m, std::span<const LinearJob> jobs, ThreadPool* pool);

// y[r] = weight ⊙ x[r] / sqrt(mean(x[r]²) + eps) for each of `rows` rows of `dim` floats. y may alias x.
void rms_norm(const float* x, std::int64_t rows, std::int64_t dim, const float* weight, float eps, float* y,
              ThreadPool* pool);

// out[i] = silu(gate[i]) · up[i] (SwiGLU). out may alias gate or up.
void silu_mul(const float* gate, const float* up, float* out, std::int64_t n, ThreadPool* pool);
// x[i] = 0.5·x·(1 + erf(x/√2)) in place (exact GELU, nn.GELU()).
void gelu(float* x, std::int64_t n, ThreadPool* pool);
// y[i] += x[i].
void add(float* y, const float* x, std::int64_t n, ThreadPool* pool);
// Row-wise softmax in place over `rows` rows of `cols` floats.
void softmax(float* x, std::int64_t rows, std::int64_t cols, ThreadPool* pool);

// Rotary embedding in place. x: `rows` rows, each starting `row_stride` floats after the previous, with
// `heads` heads of `head_dim` floats; cos/sin: [rows][head_dim/2] (the same angles for every head).
void rotary(float* x, std::int64_t rows, std::int64_t row_stride, int heads, int head_dim, const float* cos,
            const float* sin, ThreadPool* pool);

// Multimodal rotary tables (Qwen2-VL M-RoPE): for token r with positions (t[r], h[r], w[r]) and pair
// j < head_dim/2, angle = p_sel(j)[r] · inv_freq[j] with inv_freq[j] = theta^(−2j/head_dim) and p_sel the
// stream whose section (sections[0] pairs temporal, then sections[1] height, sections[2] width) holds j.
// Writes cos/sin [rows][head_dim/2]. sections must sum to head_dim/2.
void mrope_tables(const std::int64_t* t, const std::int64_t* h, const std::int64_t* w, std::int64_t rows,
                  int head_dim, double theta, const int sections[3], float* cos, float* sin);

// Causal attention with grouped KV heads over a cache. q: m rows (row stride q_stride) of n_heads·head_dim;
// query i sits at absolute position past + i and attends keys [0, past + i]. Keys/values of kv head g
// are rows of head_dim floats starting at k_cache + g·cache_head_stride (same for v). Query head h uses
// kv head h / (n_heads / n_kv_heads). out: m rows (stride out_stride) of n_heads·head_dim.
void attention_causal(const float* q, std::int64_t m, std::int64_t q_stride, int n_heads, int n_kv_heads,
                      int head_dim, const float* k_cache, const float* v_cache,
                      std::int64_t cache_head_stride, std::int64_t past, float* out, std::int64_t out_stride,
                      ThreadPool* pool);

// Non-causal attention inside segments [cu_seqlens[s], cu_seqlens[s+1]) (block-diagonal, "varlen"):
// rows of q, k, v are `stride` floats apart (e.g. views into one packed qkv buffer), each with n_heads
// heads of head_dim. out: rows of n_heads·head_dim, out_stride apart.
void attention_varlen(const float* q, const float* k, const float* v, std::int64_t stride, int n_heads,
                      int head_dim, std::span<const std::int64_t> cu_seqlens, float* out,
                      std::int64_t out_stride, ThreadPool* pool);

// out[i] = table row ids[i] converted to fp32 ([n, table.cols]). Ids must be in range (checked by callers).
void embedding(const Matrix& table, const std::int32_t* ids, std::int64_t n, float* out, ThreadPool* pool);

// Converts n elements of a floating dtype (F32/F16/BF16) to fp32.
void convert_to_f32(const void* src, DType dtype, std::int64_t n, float* dst);

// Sizes every pool thread's scratch for decoding (GEMV rows up to max_cols floats, attention with
// head_dim), so that the decode loop allocates nothing, not even on a thread's first task.
void reserve_decode_scratch(ThreadPool* pool, std::int64_t max_cols, int head_dim);

// True when the SIMD (AVX2+FMA+F16C) paths are in use on this CPU.
bool cpu_has_simd();
// Forces the portable scalar paths (tests compare both); returns the previous setting.
bool set_force_scalar(bool force);

}  // namespace mv::ops
