// NF4 (4-bit NormalFloat) blockwise quantization with double quantization of the block scales, in the
// format bitsandbytes uses for `load_in_4bit` (quant_type "nf4", compress_statistics / "double quant").
// Spec: shared/reference/nf4-peft-spec.md part A.
//
//   * Weights are flattened row-major; block b holds elements [64b, 64b+64). absmax[b] = max |w| (fp32).
//   * code = number of NF4 midpoint thresholds t with w·(1/absmax) > t (ties go to the lower code; an
//     all-zero block gives NaN and code 0). Two codes per byte, the even element in the high nibble.
//   * Double quantization: c = mean(absmax); r = absmax − c in blocks of 256; s = max |r| per block;
//     q = nearest entry of the signed dynamic 8-bit map to r·(1/s) (bitsandbytes' binary search).
//   * Dequantization: a' = D[q]·s + c, w' = NF4[code]·a' (fp32 products, no fused multiply-add).
#pragma once
#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/thread_pool.hpp"
#include "io/safetensors.hpp"

namespace mv::quant {

inline constexpr std::int64_t kNf4BlockSize = 64;
inline constexpr std::int64_t kNestedBlockSize = 256;

// The 16 NF4 levels (index = code) and the 15 decision thresholds, as bitsandbytes hard-codes them.
extern const std::array<float, 16> kNf4Code;
extern const std::array<float, 15> kNf4Thresholds;

// bitsandbytes' signed dynamic map (create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)),
// 256 ascending float32 values, computed with PyTorch's float32 linspace arithmetic as its AVX2/AVX-512
// CPU kernels do it (fused_linspace = true: the map in checkpoints made on x86-64 GPU machines) or as its
// baseline kernel does (false); the two differ in the last bit of 42 entries.
const std::array<float, 256>& dynamic_map();  // make_dynamic_map(true), computed once
std::array<float, 256> make_dynamic_map(bool fused_linspace);

// Code of one normalized value (NaN gives 0).
inline std::uint8_t nf4_encode(float x) {
  const auto& t = kNf4Thresholds;
  std::uint8_t c = 0;
  if (x > t[7]) c = 8;
  if (x > t[c + 3]) c += 4;
  if (x > t[c + 1]) c += 2;
  if (x > t[c]) c += 1;
  return c;
}

// Index of the entry of a sorted 256-entry map nearest to x, by bitsandbytes' 7-step binary search with
// its tie rules (the non-stochastic dQuantize).
std::uint8_t dynamic_encode(const float* code256, float x);

// A quantized tensor, non-owning (points into a mapped checkpoint or an Nf4Tensor).
struct Nf4View {
  const std::uint8_t* packed = nullptr;  // ceil(numel/2) bytes
  std::int64_t numel = 0;
  std::int64_t blocksize = kNf4BlockSize;
  const float* code = nullptr;  // 16 levels (the checkpoint's quant_map)
  // Block scales: either fp32 (no double quantization) ...
  const float* absmax = nullptr;
  // ... or 8-bit codes with a second level.
  const std::uint8_t* absmax_q = nullptr;
  const float* nested_absmax = nullptr;
  const float* nested_code = nullptr;  // 256 entries
  std::int64_t nested_blocksize = kNestedBlockSize;
  float offset = 0.0f;

  std::int64_t blocks() const { return (numel + blocksize - 1) / blocksize; }
  bool nested() const { return absmax_q != nullptr; }
  // Scale of block b exactly as bitsandbytes dequantizes it: D[q]·s (fp32), then + offset (fp32).
  float scale(std::int64_t b) const;
  std::uint8_t code_at(std::int64_t e) const {
    const std::uint8_t byte = packed[e >> 1];
    return (e & 1) ? (byte & 0x0f) : (byte >> 4);
  }
};

// Owning quantized tensor in bitsandbytes' layout.
struct Nf4Tensor {
  std::vector<std::int64_t> shape;  // the original shape ([out, in] for a Linear weight)
  DType dtype = DType::kBF16;       // the original dtype (quant_state "dtype")
  std::int64_t numel = 0;
  std::int64_t blocksize = kNf4BlockSize;
  std::vector<std::uint8_t> packed;
  bool nested = true;
  std::vector<float> absmax;           // fp32 scales when !nested
  std::vector<std::uint8_t> absmax_q;  // nested: 8-bit codes, one per block
  std::vector<float> nested_absmax;    // nested: one per 256 blocks
  float offset = 0.0f;                 // nested: mean of the fp32 absmax
  std::array<float, 16> code = kNf4Code;
  std::array<float, 256> nested_code{};

  Nf4View view() const;
  // quant_state.bitsandbytes__nf4 JSON, byte-for-byte as Python's json.dumps writes it.
  std::string quant_state_json() const;
};

struct QuantizeOptions {
  std::int64_t blocksize = kNf4BlockSize;  // power of two, 32..4096 (bitsandbytes' choices)
  bool double_quant = true;
};

// Quantizes numel elements of a F32/F16/BF16 array. `pool` may be null (serial). Deterministic: the
// result does not depend on the number of threads.
Nf4Tensor quantize_nf4(const void* data, DType dtype, std::vector<std::int64_t> shape,
                       const QuantizeOptions& options = {}, ThreadPool* pool = nullptr);

// Only the double quantization of an fp32 absmax vector (exposed for tests): fills absmax_q,
// nested_absmax, offset and nested_code of `t` from `absmax`.
void double_quantize(std::span<const float> absmax, Nf4Tensor& t);

// Dequantizes flat elements [begin, end) to fp32 (w' = NF4[code]·scale).
void dequantize_range(const Nf4View& v, std::int64_t begin, std::int64_t end, float* out);
void dequantize(const Nf4View& v, std::span<float> out, ThreadPool* pool = nullptr);

// Python repr() of a double (shortest round-trip digits, Python's choice of fixed or exponent form).
std::string python_float_repr(double v);

// torch dtype name ("bfloat16", "float16", "float32") of a floating dtype.
const char* torch_dtype_name(DType dt);
DType dtype_from_torch_name(const std::string& name);  // throws kUnsupported

}  // namespace mv::quant
