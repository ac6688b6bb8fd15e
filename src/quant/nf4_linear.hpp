// NF4 matrix-vector products on the CPU (the decode path of the engine's linear op): each packed byte and
// each block scale is read once for all m <= 4 input rows; codes are turned into floats in registers and
// the block's partial dot product is scaled once per block.
#pragma once
#include <cstdint>

#include "quant/nf4.hpp"

namespace mv::quant {

inline constexpr std::int64_t kNf4GemvMaxRows = 4;

// For weight rows r in [r0, r1) of the [rows, k] matrix stored in `w` (flat row-major, as bitsandbytes
// stores it) and input rows i < m (x: [m, k]): y[i*ldy + r] = Σ_c x[i, c]·W'[r, c] + bias[r].
// bias may be null. simd: use the AVX2/FMA kernel (the caller checks the CPU).
void nf4_gemv_rows(const float* x, std::int64_t m, const Nf4View& w, std::int64_t k, std::int64_t r0,
                   std::int64_t r1, const float* bias, float* y, std::int64_t ldy, bool simd);

}  // namespace mv::quant
