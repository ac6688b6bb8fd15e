// NF4 quantization on the CPU. Every floating-point step is written as a separate float32 operation in the
// order bitsandbytes performs it; this file is compiled with -ffp-contract=off (CMakeLists.txt) so that no
// product and sum are fused into one rounding.
#include "quant/nf4.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "core/error.hpp"

namespace mv::quant {

const std::array<float, 16> kNf4Code = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

const std::array<float, 15> kNf4Thresholds = {
    -0.8480964004993439f,  -0.6106329262256622f,  -0.4599952697753906f,   -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f,   0.2035212516784668f,   0.2920137718319893f,    0.3893125355243683f,
    0.5016634166240692f,   0.6427869200706482f,   0.8614784181118011f,
};

namespace {

// torch.linspace(start, end, steps, dtype=float32) on the CPU: step = (end − start)/(steps − 1), then
// start + step·i for the first half and end − step·(steps − 1 − i) for the rest. PyTorch's AVX2 and
// AVX-512 kernels (what x86-64 machines with a GPU run) evaluate both with one rounding (fused multiply-add);
// its baseline kernel rounds the product and the sum separately. `fused` picks the former.
std::vector<float> torch_linspace_f32(float start, float end, int steps, bool fused) {
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int half = steps / 2;
  std::vector<float> out;
  out.reserve(static_cast<std::size_t>(steps));
  for (int i = 0; i < steps; ++i) {
    const bool first_half = i < half;
    const auto k = static_cast<float>(first_half ? i : steps - i - 1);
    const float base = first_half ? start : end, signed_step = first_half ? step : -step;
    if (fused) {
      out.push_back(std::fma(signed_step, k, base));
    } else {
      const float d = signed_step * k;
      out.push_back(base + d);
    }
  }
  return out;
}

}  // namespace

std::array<float, 256> make_dynamic_map(bool fused_linspace) {
  std::vector<float> data;
  constexpr int kMaxExponentBits = 7;
  for (int i = 0; i < kMaxExponentBits; ++i) {
    const int items = (1 << i) + 1;  // signed: 2^(i + non_sign_bits − max_exponent_bits) + 1
    const std::vector<float> b = torch_linspace_f32(0.1f, 1.0f, items, fused_linspace);
    const auto scale = static_cast<float>(std::pow(10.0, -(kMaxExponentBits - 1) + i));
    std::vector<float> means;
    for (int j = 0; j + 1 < items; ++j) {
      const float s = b[j] + b[j + 1];
      means.push_back(s / 2.0f);
    }
    for (float m : means) data.push_back(scale * m);
    for (float m : means) data.push_back(-scale * m);
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  MV_CHECK(data.size() == 256, "dynamic map has {} entries", data.size());
  std::sort(data.begin(), data.end());
  std::array<float, 256> out{};
  std::copy(data.begin(), data.end(), out.begin());
  return out;
}

namespace {

void check_blocksize(std::int64_t bs, const char* what) {
  if (bs < 2 || bs > 4096 || (bs & (bs - 1)) != 0)
    fail(Errc::kInvalidInput, "NF4: {} {} is not a power of two in [2, 4096]", what, bs);
}

// Loads n elements of a floating array starting at element `first` into fp32.
void load_f32(const void* data, DType dt, std::int64_t first, std::int64_t n, float* out) {
  switch (dt) {
    case DType::kF32:
      std::memcpy(out, static_cast<const float*>(data) + first, static_cast<std::size_t>(n) * 4);
      return;
    case DType::kBF16: {
      const auto* s = static_cast<const std::uint16_t*>(data) + first;
      for (std::int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::kF16: {
      const auto* s = static_cast<const std::uint16_t*>(data) + first;
      for (std::int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(s[i]);
      return;
    }
    default:
      fail(Errc::kUnsupported, "NF4: cannot quantize a {} tensor (F32, F16 or BF16 only)", dtype_name(dt));
  }
}

// Encodes one block of `n` (<= bs) fp32 values; returns absmax. bytes: the block's ceil(n/2) bytes.
// The SSE2 path (every x86-64 CPU) counts thresholds exceeded with packed compares: same results as
// nf4_encode (NaN compares false), no data-dependent branches.
float quantize_block(const float* v, std::int64_t n, std::uint8_t* bytes) {
  std::int64_t i = 0;
  float amax = -3.4028234663852886e38f;  // -FLT_MAX, then fmaxf (a NaN element is ignored)
#if defined(__SSE2__)
  {
    const __m128 sign = _mm_set1_ps(-0.0f);
    __m128 acc = _mm_set1_ps(amax);
    for (; i + 4 <= n; i += 4)
      acc = _mm_max_ps(_mm_andnot_ps(sign, _mm_loadu_ps(v + i)), acc);  // NaN: keeps acc
    alignas(16) float lanes[4];
    _mm_store_ps(lanes, acc);
    for (float l : lanes) amax = std::fmax(amax, l);
  }
#endif
  for (; i < n; ++i) amax = std::fmax(amax, std::fabs(v[i]));
  const float inv = 1.0f / amax;
  i = 0;
#if defined(__SSE2__)
  {
    const __m128 vinv = _mm_set1_ps(inv);
    for (; i + 8 <= n; i += 8) {
      __m128i c0 = _mm_setzero_si128(), c1 = _mm_setzero_si128();
      const __m128 x0 = _mm_mul_ps(_mm_loadu_ps(v + i), vinv), x1 = _mm_mul_ps(_mm_loadu_ps(v + i + 4), vinv);
      for (float t : kNf4Thresholds) {
        const __m128 tv = _mm_set1_ps(t);
        c0 = _mm_sub_epi32(c0, _mm_castps_si128(_mm_cmpgt_ps(x0, tv)));
        c1 = _mm_sub_epi32(c1, _mm_castps_si128(_mm_cmpgt_ps(x1, tv)));
      }
      alignas(16) std::int32_t c[8];
      _mm_store_si128(reinterpret_cast<__m128i*>(c), c0);
      _mm_store_si128(reinterpret_cast<__m128i*>(c + 4), c1);
      for (int k = 0; k < 4; ++k)
        bytes[(i >> 1) + k] = static_cast<std::uint8_t>(c[2 * k] << 4 | c[2 * k + 1]);
    }
  }
#endif
  for (; i + 1 < n; i += 2) {
    const float x0 = v[i] * inv, x1 = v[i + 1] * inv;
    bytes[i >> 1] = static_cast<std::uint8_t>(nf4_encode(x0) << 4 | nf4_encode(x1));
  }
  if (i < n) {  // odd tail: the missing element is loaded as 0
    const float x0 = v[i] * inv, pad = 0.0f * inv;
    bytes[i >> 1] = static_cast<std::uint8_t>(nf4_encode(x0) << 4 | nf4_encode(pad));
  }
  return amax;
}

// Appends the shortest round-trip digits of v (>0, finite) and its decimal exponent: v = 0.d1d2... × 10^exp.
void shortest_digits(double v, std::string& digits, int& exp10) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  const std::string s(buf, r.ptr);
  const auto e = s.find('e');
  const std::string mant = s.substr(0, e);
  const int ex = std::stoi(s.substr(e + 1));
  digits.clear();
  for (char c : mant)
    if (c != '.') digits.push_back(c);
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  exp10 = ex + 1;  // d.ddd × 10^ex = 0.dddd × 10^(ex+1)
}

}  // namespace

const std::array<float, 256>& dynamic_map() {
  static const std::array<float, 256> map = make_dynamic_map(true);
  return map;
}

std::uint8_t dynamic_encode(const float* code, float x) {
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
    const float s = upper + val;
    const float mid = s * 0.5f;
    return static_cast<std::uint8_t>(x > mid ? upper_pivot : pivot);
  }
  const float s = lower + val;
  const float mid = s * 0.5f;
  return static_cast<std::uint8_t>(x < mid ? lower_pivot : pivot);
}

float Nf4View::scale(std::int64_t b) const {
  if (!absmax_q) return absmax[b];
  const float p = nested_code[absmax_q[b]] * nested_absmax[b / nested_blocksize];
  return p + offset;
}

Nf4View Nf4Tensor::view() const {
  Nf4View v;
  v.packed = packed.data();
  v.numel = numel;
  v.blocksize = blocksize;
  v.code = code.data();
  if (nested) {
    v.absmax_q = absmax_q.data();
    v.nested_absmax = nested_absmax.data();
    v.nested_code = nested_code.data();
    v.nested_blocksize = kNestedBlockSize;
    v.offset = offset;
  } else {
    v.absmax = absmax.data();
  }
  return v;
}

std::string Nf4Tensor::quant_state_json() const {
  std::string s = fmt::format(R"({{"quant_type": "nf4", "blocksize": {}, "dtype": "{}", "shape": [)",
                              blocksize, torch_dtype_name(dtype));
  for (std::size_t i = 0; i < shape.size(); ++i) s += fmt::format("{}{}", i ? ", " : "", shape[i]);
  s += "]";
  if (nested)
    s += fmt::format(R"(, "nested_blocksize": {}, "nested_dtype": "float32", "nested_offset": {})",
                     kNestedBlockSize, python_float_repr(static_cast<double>(offset)));
  s += "}";
  return s;
}

void double_quantize(std::span<const float> absmax, Nf4Tensor& t) {
  const auto nb = static_cast<std::int64_t>(absmax.size());
  t.nested = true;
  t.nested_code = dynamic_map();
  double sum = 0.0;
  for (float a : absmax) sum += a;
  t.offset = nb > 0 ? static_cast<float>(sum / static_cast<double>(nb)) : 0.0f;
  const std::int64_t nb2 = (nb + kNestedBlockSize - 1) / kNestedBlockSize;
  t.absmax_q.assign(static_cast<std::size_t>(nb), 0);
  t.nested_absmax.assign(static_cast<std::size_t>(nb2), 0.0f);
  float r[kNestedBlockSize];
  for (std::int64_t j = 0; j < nb2; ++j) {
    const std::int64_t b0 = j * kNestedBlockSize, n = std::min(kNestedBlockSize, nb - b0);
    float amax = -3.4028234663852886e38f;
    for (std::int64_t i = 0; i < n; ++i) {
      r[i] = absmax[static_cast<std::size_t>(b0 + i)] - t.offset;
      amax = std::fmax(amax, std::fabs(r[i]));
    }
    t.nested_absmax[static_cast<std::size_t>(j)] = amax;
    const float inv = 1.0f / amax;
    for (std::int64_t i = 0; i < n; ++i) {
      const float x = r[i] * inv;
      t.absmax_q[static_cast<std::size_t>(b0 + i)] = dynamic_encode(t.nested_code.data(), x);
    }
  }
}

Nf4Tensor quantize_nf4(const void* data, DType dtype, std::vector<std::int64_t> shape,
                       const QuantizeOptions& options, ThreadPool* pool) {
  check_blocksize(options.blocksize, "blocksize");
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16)
    fail(Errc::kUnsupported, "NF4: cannot quantize a {} tensor (F32, F16 or BF16 only)", dtype_name(dtype));
  Nf4Tensor t;
  t.dtype = dtype;
  t.numel = 1;
  for (auto d : shape) {
    if (d < 0) fail(Errc::kInvalidInput, "NF4: negative dimension {}", d);
    t.numel *= d;
  }
  t.shape = std::move(shape);
  t.blocksize = options.blocksize;
  const std::int64_t bs = t.blocksize, n = t.numel, nb = (n + bs - 1) / bs;
  t.packed.assign(static_cast<std::size_t>((n + 1) / 2), 0);
  std::vector<float> absmax(static_cast<std::size_t>(nb));
  auto body = [&](std::int64_t b0, std::int64_t b1) {
    std::vector<float> buf(static_cast<std::size_t>(bs));
    for (std::int64_t b = b0; b < b1; ++b) {
      const std::int64_t e0 = b * bs, cnt = std::min(bs, n - e0);
      load_f32(data, dtype, e0, cnt, buf.data());
      absmax[static_cast<std::size_t>(b)] = quantize_block(buf.data(), cnt, t.packed.data() + e0 / 2);
    }
  };
  const std::int64_t grain = std::max<std::int64_t>(1, 16384 / bs);
  if (pool && nb > grain) {
    pool->parallel_for(nb, body, grain);
  } else {
    body(0, nb);
  }
  if (options.double_quant) {
    double_quantize(absmax, t);
  } else {
    t.nested = false;
    t.absmax = std::move(absmax);
  }
  return t;
}

void dequantize_range(const Nf4View& v, std::int64_t begin, std::int64_t end, float* out) {
  std::int64_t e = begin;
  while (e < end) {
    const std::int64_t b = e / v.blocksize, stop = std::min(end, (b + 1) * v.blocksize);
    const float s = v.scale(b);
    for (; e < stop; ++e) *out++ = v.code[v.code_at(e)] * s;
  }
}

void dequantize(const Nf4View& v, std::span<float> out, ThreadPool* pool) {
  MV_CHECK(static_cast<std::int64_t>(out.size()) == v.numel, "dequantize: output of {} for {} elements",
           out.size(), v.numel);
  auto body = [&](std::int64_t b0, std::int64_t b1) {
    const std::int64_t e0 = b0 * v.blocksize, e1 = std::min(v.numel, b1 * v.blocksize);
    dequantize_range(v, e0, e1, out.data() + e0);
  };
  if (pool) {
    pool->parallel_for(v.blocks(), body, 256);
  } else {
    body(0, v.blocks());
  }
}

std::string python_float_repr(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";  // json.dumps spelling
  if (v == 0.0) return std::signbit(v) ? "-0.0" : "0.0";
  std::string sign = v < 0 ? "-" : "";
  std::string d;
  int x = 0;  // v = 0.d × 10^x
  shortest_digits(std::fabs(v), d, x);
  const int decpt = x;  // position of the decimal point relative to the digits
  const int exp = decpt - 1;
  if (exp < -4 || exp >= 16) {
    std::string m = d.substr(0, 1);
    if (d.size() > 1) m += "." + d.substr(1);
    return fmt::format("{}{}e{}{:02d}", sign, m, exp < 0 ? "-" : "+", std::abs(exp));
  }
  std::string s;
  if (decpt <= 0) {
    s = "0." + std::string(static_cast<std::size_t>(-decpt), '0') + d;
  } else if (decpt >= static_cast<int>(d.size())) {
    s = d + std::string(static_cast<std::size_t>(decpt) - d.size(), '0') + ".0";
  } else {
    s = d.substr(0, static_cast<std::size_t>(decpt)) + "." + d.substr(static_cast<std::size_t>(decpt));
  }
  return sign + s;
}

const char* torch_dtype_name(DType dt) {
  switch (dt) {
    case DType::kBF16:
      return "bfloat16";
    case DType::kF16:
      return "float16";
    case DType::kF32:
      return "float32";
    default:
      fail(Errc::kUnsupported, "NF4: dtype {} has no torch floating name", dtype_name(dt));
  }
}

DType dtype_from_torch_name(const std::string& name) {
  std::string n = name;
  if (n.starts_with("torch.")) n = n.substr(6);
  if (n == "bfloat16") return DType::kBF16;
  if (n == "float16" || n == "half") return DType::kF16;
  if (n == "float32" || n == "float") return DType::kF32;
  fail(Errc::kUnsupported, "NF4: quant_state dtype '{}' is not supported (bfloat16, float16, float32)", name);
}

}  // namespace mv::quant
