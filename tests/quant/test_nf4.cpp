// NF4 blockwise quantization and double quantization (bitsandbytes' format): code table and thresholds,
// exact codes on hand-made blocks (ties, zeros, all-equal blocks, odd sizes), the dynamic 8-bit map and
// its binary search, round-trip error bounds, the quant_state JSON, and the NF4 linear kernels.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "core/file.hpp"
#include "core/thread_pool.hpp"
#include "ops/ops.hpp"
#include "quant/nf4.hpp"

using namespace mv;
using namespace mv::quant;

namespace {

Nf4Tensor quantize_f32(const std::vector<float>& v, std::vector<std::int64_t> shape, bool dq,
                       ThreadPool* pool = nullptr) {
  QuantizeOptions o;
  o.double_quant = dq;
  return quantize_nf4(v.data(), DType::kF32, std::move(shape), o, pool);
}

std::vector<std::uint8_t> codes_of(const Nf4Tensor& t) {
  std::vector<std::uint8_t> c(static_cast<std::size_t>(t.numel));
  const Nf4View v = t.view();
  for (std::int64_t e = 0; e < t.numel; ++e) c[static_cast<std::size_t>(e)] = v.code_at(e);
  return c;
}

std::vector<float> random_normal(std::size_t n, std::uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Brute-force nearest entry of a sorted map (for checking the binary search away from exact ties).
int nearest(const std::array<float, 256>& map, float x) {
  int best = 0;
  for (int i = 1; i < 256; ++i)
    if (std::fabs(map[i] - x) < std::fabs(map[best] - x)) best = i;
  return best;
}

}  // namespace

TEST(Nf4Code, TableAndThresholds) {
  for (int i = 0; i + 1 < 16; ++i) {
    EXPECT_LT(kNf4Code[i], kNf4Code[i + 1]);
    // Each threshold is the midpoint of its neighbours (to float precision).
    EXPECT_NEAR(kNf4Thresholds[i], 0.5 * (double(kNf4Code[i]) + kNf4Code[i + 1]), 1e-7) << i;
  }
  EXPECT_EQ(kNf4Code[0], -1.0f);
  EXPECT_EQ(kNf4Code[7], 0.0f);
  EXPECT_EQ(kNf4Code[15], 1.0f);
}

TEST(Nf4Code, EncodeRoundsToNearestTiesDown) {
  for (int c = 0; c < 16; ++c) EXPECT_EQ(nf4_encode(kNf4Code[c]), c);
  for (int i = 0; i < 15; ++i) {
    const float t = kNf4Thresholds[i];
    EXPECT_EQ(nf4_encode(t), i) << "a value on the threshold goes to the lower code";
    EXPECT_EQ(nf4_encode(std::nextafter(t, 2.0f)), i + 1);
    EXPECT_EQ(nf4_encode(std::nextafter(t, -2.0f)), i);
  }
  EXPECT_EQ(nf4_encode(std::numeric_limits<float>::quiet_NaN()), 0);
  EXPECT_EQ(nf4_encode(-5.0f), 0);
  EXPECT_EQ(nf4_encode(5.0f), 15);
  EXPECT_EQ(nf4_encode(0.0f), 7);
  EXPECT_EQ(nf4_encode(-0.0f), 7);
}

TEST(Nf4Quantize, HandMadeBlockExactCodesAndNibbleOrder) {
  // absmax 2 (a power of two): x·(1/2) is exact, so the codes are the table indices used.
  std::vector<float> v(64);
  for (int i = 0; i < 64; ++i) v[i] = 2.0f * kNf4Code[(i * 7 + 3) % 16];
  v[10] = -2.0f;
  v[11] = 2.0f;
  const Nf4Tensor t = quantize_f32(v, {64}, false);
  ASSERT_EQ(t.absmax.size(), 1u);
  EXPECT_EQ(t.absmax[0], 2.0f);
  ASSERT_EQ(t.packed.size(), 32u);
  for (int k = 0; k < 32; ++k) {
    const int c0 = nf4_encode(v[2 * k] / 2.0f), c1 = nf4_encode(v[2 * k + 1] / 2.0f);
    EXPECT_EQ(t.packed[k], (c0 << 4) | c1) << "byte " << k << ": even element in the high nibble";
  }
  EXPECT_EQ(t.packed[5], (0 << 4) | 15);  // -2 -> code 0, +2 -> code 15
  std::vector<float> back(64);
  dequantize(t.view(), back);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(back[i], v[i]) << i;  // the levels themselves come back exactly
}

TEST(Nf4Quantize, TiesOnThresholdsGoDown) {
  // absmax 1: x̂ = x exactly; put every threshold (and its upper neighbour) in one block.
  std::vector<float> v;
  for (float t : kNf4Thresholds) {
    v.push_back(t);
    v.push_back(std::nextafter(t, 2.0f));
  }
  v.push_back(1.0f);
  v.push_back(-0.25f);
  const Nf4Tensor t = quantize_f32(v, {static_cast<std::int64_t>(v.size())}, false);
  const auto c = codes_of(t);
  for (int i = 0; i < 15; ++i) {
    EXPECT_EQ(c[2 * i], i);
    EXPECT_EQ(c[2 * i + 1], i + 1);
  }
  EXPECT_EQ(c[30], 15);
}

TEST(Nf4Quantize, ZeroBlockGivesCodeZeroAndDecodesToZero) {
  std::vector<float> v(128, 0.0f);
  for (int i = 64; i < 128; ++i) v[i] = (i % 2 ? 0.5f : -0.25f);
  for (bool dq : {false, true}) {
    const Nf4Tensor t = quantize_f32(v, {2, 64}, dq);
    for (int k = 0; k < 32; ++k) EXPECT_EQ(t.packed[k], 0x00) << "0·(1/0) is NaN, which encodes as code 0";
    if (!dq) EXPECT_EQ(t.absmax[0], 0.0f);
    std::vector<float> back(128);
    dequantize(t.view(), back);
    if (!dq) {
      for (int i = 0; i < 64; ++i) EXPECT_EQ(back[i], 0.0f);
    } else {
      // With double quantization block 0's scale is D[q]·s + mean, close to 0 but not exactly.
      const float s0 = t.view().scale(0);
      EXPECT_LE(std::fabs(s0), 0.0071f * t.nested_absmax[0] + 1e-7f);
    }
  }
}

TEST(Nf4Quantize, AllEqualBlocks) {
  std::vector<float> v(192);
  for (int i = 0; i < 64; ++i) v[i] = 0.5f;
  for (int i = 64; i < 128; ++i) v[i] = -0.5f;
  for (int i = 128; i < 192; ++i) v[i] = 3.0f;
  const Nf4Tensor t = quantize_f32(v, {192}, false);
  const auto c = codes_of(t);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(c[i], 15);
  for (int i = 64; i < 128; ++i) EXPECT_EQ(c[i], 0);
  for (int i = 128; i < 192; ++i) EXPECT_EQ(c[i], 15);
  std::vector<float> back(192);
  dequantize(t.view(), back);
  for (int i = 0; i < 192; ++i) EXPECT_EQ(back[i], v[i]);
}

TEST(Nf4Quantize, SizesNotMultipleOf64AndOdd) {
  for (std::int64_t n : {1, 2, 63, 65, 127, 129, 1000, 4097}) {
    const auto v = random_normal(static_cast<std::size_t>(n), 7u + static_cast<std::uint32_t>(n), 0.02f);
    const Nf4Tensor t = quantize_f32(v, {n}, false);
    EXPECT_EQ(static_cast<std::int64_t>(t.packed.size()), (n + 1) / 2);
    EXPECT_EQ(static_cast<std::int64_t>(t.absmax.size()), (n + 63) / 64);
    // The partial last block's absmax uses only its valid elements.
    const std::int64_t last = (n - 1) / 64;
    float amax = 0;
    for (std::int64_t e = last * 64; e < n; ++e) amax = std::max(amax, std::fabs(v[e]));
    EXPECT_EQ(t.absmax.back(), amax);
    if (n % 2) EXPECT_EQ(t.packed.back() & 0x0f, 7) << "odd n: the pad element is 0, code 7";
    std::vector<float> back(static_cast<std::size_t>(n));
    dequantize(t.view(), back);
    for (std::int64_t e = 0; e < n; ++e) {
      const float a = t.absmax[static_cast<std::size_t>(e / 64)];
      // Round to nearest: error at most half the widest gap of the table (between -1 and -0.6961928).
      EXPECT_LE(std::fabs(back[e] - v[e]), 0.15191f * a + 1e-9f) << "n=" << n << " e=" << e;
    }
  }
}

TEST(Nf4Quantize, AsymmetricInputAndBf16Input) {
  // BF16 input is converted exactly; the result equals quantizing the same values given as F32.
  auto f = random_normal(777, 3, 0.05f);
  std::vector<std::uint16_t> b(f.size());
  for (std::size_t i = 0; i < f.size(); ++i) {
    b[i] = f32_to_bf16(f[i]);
    f[i] = bf16_to_f32(b[i]);
  }
  const Nf4Tensor tf = quantize_nf4(f.data(), DType::kF32, {7, 111});
  const Nf4Tensor tb = quantize_nf4(b.data(), DType::kBF16, {7, 111});
  EXPECT_EQ(tf.packed, tb.packed);
  EXPECT_EQ(tf.absmax_q, tb.absmax_q);
  EXPECT_EQ(tf.nested_absmax, tb.nested_absmax);
  EXPECT_EQ(tb.dtype, DType::kBF16);
}

TEST(DynamicMap, ShapeAndLandmarks) {
  const auto& d = dynamic_map();
  for (int i = 0; i + 1 < 256; ++i) EXPECT_LT(d[i], d[i + 1]) << i;
  EXPECT_EQ(d[127], 0.0f);
  EXPECT_EQ(d[255], 1.0f);
  EXPECT_NEAR(d[0], -0.99296875, 1e-7);
  EXPECT_NEAR(d[254], 0.99296875, 1e-7);
  EXPECT_NEAR(d[128], 5.5e-7, 1e-12);
  EXPECT_NEAR(d[129], 3.25e-6, 1e-12);
  EXPECT_NEAR(d[130], 7.75e-6, 1e-12);
  for (int i = 0; i < 127; ++i) EXPECT_EQ(d[i], -d[254 - i]) << i;  // negatives mirror the positives
  // The top decade holds 64 levels per sign, 0.0140625 apart.
  EXPECT_NEAR(d[254] - d[253], 0.0140625, 1e-6);
}

TEST(DynamicMap, BitIdenticalToTorch) {
  // The map as PyTorch builds it on x86-64 (tests/fixtures/nf4/torch_dynamic_map.json, recorded with torch
  // on an AVX-512 Xeon, AVX2 and baseline kernels).
  const auto j =
      nlohmann::json::parse(read_file(std::string(MV_FIXTURES_DIR) + "/nf4/torch_dynamic_map.json"));
  const auto fused = j["avx2_avx512"].get<std::vector<float>>();
  const auto plain = j["default"].get<std::vector<float>>();
  ASSERT_EQ(fused.size(), 256u);
  const auto a = make_dynamic_map(true), b = make_dynamic_map(false);
  int differ = 0;
  for (int i = 0; i < 256; ++i) {
    EXPECT_EQ(a[i], fused[i]) << i;
    EXPECT_EQ(b[i], plain[i]) << i;
    EXPECT_EQ(dynamic_map()[i], a[i]);
    differ += a[i] != b[i];
  }
  EXPECT_GT(differ, 0) << "the two kernels' maps differ in the last bit of some entries";
}

TEST(DynamicMap, BinarySearchFindsNearest) {
  const auto& d = dynamic_map();
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int k = 0; k < 20000; ++k) {
    float x = u(rng);
    if (k % 4 == 1) x *= 1e-3f;
    if (k % 4 == 2) x *= 1e-6f;
    EXPECT_EQ(dynamic_encode(d.data(), x), nearest(d, x)) << x;
  }
  for (int i = 0; i < 256; ++i) EXPECT_EQ(dynamic_encode(d.data(), d[i]), i);
  EXPECT_EQ(dynamic_encode(d.data(), 1.0f), 255);
  EXPECT_EQ(dynamic_encode(d.data(), -1.0f), 0);
  EXPECT_EQ(dynamic_encode(d.data(), std::numeric_limits<float>::quiet_NaN()), 0);
}

TEST(DoubleQuant, NestedBlocksNotMultipleOf256) {
  for (std::int64_t nb : {1, 255, 257, 300, 513}) {
    std::mt19937 rng(static_cast<std::uint32_t>(nb));
    std::uniform_real_distribution<float> u(0.001f, 0.08f);
    std::vector<float> a(static_cast<std::size_t>(nb));
    double sum = 0;
    for (auto& x : a) {
      x = u(rng);
      sum += x;
    }
    Nf4Tensor t;
    double_quantize(a, t);
    EXPECT_EQ(t.offset, static_cast<float>(sum / nb));
    ASSERT_EQ(static_cast<std::int64_t>(t.nested_absmax.size()), (nb + 255) / 256);
    ASSERT_EQ(static_cast<std::int64_t>(t.absmax_q.size()), nb);
    const Nf4View v = t.view();
    for (std::int64_t j = 0; j < (nb + 255) / 256; ++j) {
      float s = 0;
      for (std::int64_t i = j * 256; i < std::min(nb, (j + 1) * 256); ++i)
        s = std::max(s, std::fabs(a[i] - t.offset));
      EXPECT_EQ(t.nested_absmax[j], s);
      for (std::int64_t i = j * 256; i < std::min(nb, (j + 1) * 256); ++i) {
        const float x = (a[i] - t.offset) * (1.0f / s);
        EXPECT_EQ(t.absmax_q[i], nearest(dynamic_map(), x));
        // Scale error: at most half the widest gap of the map (0.0140625 / 2) times s.
        EXPECT_LE(std::fabs(v.scale(i) - a[i]), 0.00704f * s + 1e-8f);
        EXPECT_EQ(v.scale(i), dynamic_map()[t.absmax_q[i]] * s + t.offset);
      }
    }
  }
}

TEST(Nf4Quantize, DoubleQuantRoundTripAndThreadIndependence) {
  const auto v = random_normal(64 * 600 + 17, 5, 0.02f);  // 601 blocks: 3 nested blocks, odd n
  ThreadPool pool(3);
  const Nf4Tensor a = quantize_f32(v, {static_cast<std::int64_t>(v.size())}, true);
  const Nf4Tensor b = quantize_f32(v, {static_cast<std::int64_t>(v.size())}, true, &pool);
  EXPECT_EQ(a.packed, b.packed);
  EXPECT_EQ(a.absmax_q, b.absmax_q);
  EXPECT_EQ(a.nested_absmax, b.nested_absmax);
  EXPECT_EQ(a.offset, b.offset);
  const Nf4Tensor plain = quantize_f32(v, {static_cast<std::int64_t>(v.size())}, false);
  EXPECT_EQ(a.packed, plain.packed) << "the 4-bit codes do not depend on double quantization";
  std::vector<float> back(v.size()), back_pool(v.size());
  dequantize(a.view(), back);
  dequantize(a.view(), back_pool, &pool);
  EXPECT_EQ(back, back_pool);
  double err2 = 0, ref2 = 0;
  for (std::size_t e = 0; e < v.size(); ++e) {
    const std::size_t blk = e / 64;
    const float s = a.view().scale(static_cast<std::int64_t>(blk));
    EXPECT_EQ(back[e], a.code[a.view().code_at(static_cast<std::int64_t>(e))] * s);
    EXPECT_LE(std::fabs(back[e] - v[e]),
              0.15191f * plain.absmax[blk] + std::fabs(s - plain.absmax[blk]) + 1e-7f);
    err2 += double(back[e] - v[e]) * (back[e] - v[e]);
    ref2 += double(v[e]) * v[e];
  }
  // Gaussian weights: NF4's relative RMS error is about 0.1 (information-theoretic optimum for 4 bits).
  const double rel = std::sqrt(err2 / ref2);
  EXPECT_GT(rel, 0.05);
  EXPECT_LT(rel, 0.12);
}

TEST(Nf4Format, QuantStateJsonAsPythonWritesIt) {
  std::vector<float> v(63, 0.5f);
  Nf4Tensor t = quantize_f32(v, {3, 21}, true);
  t.dtype = DType::kBF16;
  t.offset = 0.0123456789f;
  EXPECT_EQ(t.quant_state_json(),
            R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [3, 21], )"
            R"("nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.012345679104328156})");
  Nf4Tensor p = quantize_f32(v, {63}, false);
  EXPECT_EQ(p.quant_state_json(),
            R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [63]})");
}

TEST(Nf4Format, PythonFloatRepr) {
  EXPECT_EQ(python_float_repr(0.1), "0.1");
  EXPECT_EQ(python_float_repr(1e-05), "1e-05");
  EXPECT_EQ(python_float_repr(2.5e-05), "2.5e-05");
  EXPECT_EQ(python_float_repr(0.0001), "0.0001");
  EXPECT_EQ(python_float_repr(1e16), "1e+16");
  EXPECT_EQ(python_float_repr(123456789012345678.0), "1.2345678901234568e+17");
  EXPECT_EQ(python_float_repr(1.5e-7), "1.5e-07");
  EXPECT_EQ(python_float_repr(100.0), "100.0");
  EXPECT_EQ(python_float_repr(1234.5), "1234.5");
  EXPECT_EQ(python_float_repr(1.0), "1.0");
  EXPECT_EQ(python_float_repr(-0.5), "-0.5");
  EXPECT_EQ(python_float_repr(0.0), "0.0");
  EXPECT_EQ(python_float_repr(static_cast<double>(0.0123456789f)), "0.012345679104328156");
}

// ---- linear op over NF4 weights -----------------------------------------------------------------

namespace {

void check_linear(std::int64_t rows, std::int64_t cols, std::int64_t m, bool scalar, bool pooled, bool dq) {
  const auto w = random_normal(static_cast<std::size_t>(rows * cols),
                               static_cast<std::uint32_t>(rows * 131 + cols), 0.05f);
  QuantizeOptions o;
  o.double_quant = dq;
  const Nf4Tensor t = quantize_nf4(w.data(), DType::kF32, {rows, cols}, o);
  const Nf4View view = t.view();
  std::vector<float> wd(w.size());
  dequantize(view, wd);
  const auto x = random_normal(static_cast<std::size_t>(m * cols), 99, 1.0f);
  const auto bias = random_normal(static_cast<std::size_t>(rows), 98, 0.1f);
  std::vector<float> y(static_cast<std::size_t>(m * rows), -1.0f);
  ops::Matrix mat{view.packed, DType::kU8, rows, cols, &view};
  const bool prev = ops::set_force_scalar(scalar);
  ThreadPool pool(2);
  ops::linear(x.data(), m, mat, bias.data(), y.data(), pooled ? &pool : nullptr);
  ops::set_force_scalar(prev);
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t r = 0; r < rows; ++r) {
      double ref = bias[r], mag = std::fabs(bias[r]);
      for (std::int64_t c = 0; c < cols; ++c) {
        ref += double(x[i * cols + c]) * wd[r * cols + c];
        mag += std::fabs(double(x[i * cols + c]) * wd[r * cols + c]);
      }
      ASSERT_NEAR(y[i * rows + r], ref, 2e-6 * mag + 1e-6)
          << rows << "x" << cols << " m=" << m << " scalar=" << scalar << " row " << r;
    }
  }
}

}  // namespace

TEST(Nf4Linear, GemvAndGemmMatchDequantizedWeights) {
  struct Shape {
    std::int64_t rows, cols;
  };
  // Row lengths: multiple of 64; even but not (blocks straddle rows); odd (rows start mid-byte).
  for (Shape s : {Shape{64, 256}, Shape{37, 150}, Shape{9, 63}, Shape{5, 3420 / 10}, Shape{3, 17}}) {
    for (std::int64_t m : {1, 2, 3, 4, 7}) {
      for (bool scalar : {false, true}) {
        check_linear(s.rows, s.cols, m, scalar, m % 2 == 1, m != 3);
      }
    }
  }
}
