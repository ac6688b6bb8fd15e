// CPU ops against naive float64 references on fresh random inputs, for F32/F16/BF16 weights, on the
// SIMD and the portable scalar paths, serial and on a thread pool.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "common/bf16.hpp"
#include "core/error.hpp"
#include "core/thread_pool.hpp"
#include "ops/ops.hpp"

namespace {

using mv::DType;

// ---- independent element encodings --------------------------------------------------------------

using mv::test::from_bf16;
using mv::test::to_bf16;
// f16 decode by the definition (sign, 5-bit exponent, 10-bit mantissa).
double from_f16(std::uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v;
  if (e == 0) {
    v = std::ldexp(m / 1024.0, -14);
  } else if (e == 31) {
    v = m ? NAN : INFINITY;
  } else {
    v = std::ldexp(1.0 + m / 1024.0, e - 15);
  }
  return s ? -v : v;
}
// A random f16 with magnitude around 2^-6..2^3, sometimes subnormal or zero.
std::uint16_t random_f16(std::mt19937& rng) {
  std::uniform_int_distribution<int> mant(0, 1023), ex(9, 18), sign(0, 1), rare(0, 49);
  const int r = rare(rng);
  const int e = r == 0 ? 0 : ex(rng);  // 2% subnormals
  return static_cast<std::uint16_t>(sign(rng) << 15 | e << 10 | mant(rng));
}

struct Weights {
  DType dtype;
  std::int64_t rows, cols;
  std::vector<float> f32;
  std::vector<std::uint16_t> half;
  std::vector<double> ref;  // the exact values the op must see
  mv::ops::Matrix matrix() const {
    return {dtype == DType::kF32 ? static_cast<const void*>(f32.data()) : half.data(), dtype, rows, cols};
  }
};

Weights random_weights(DType dt, std::int64_t rows, std::int64_t cols, std::mt19937& rng) {
  Weights w{dt, rows, cols, {}, {}, {}};
  std::normal_distribution<float> nd(0.0f, 0.5f);
  const auto n = static_cast<std::size_t>(rows * cols);
  w.ref.resize(n);
  if (dt == DType::kF32) {
    w.f32.resize(n);
    for (std::size_t i = 0; i < n; ++i) w.ref[i] = w.f32[i] = nd(rng);
  } else {
    w.half.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      if (dt == DType::kBF16) {
        w.half[i] = to_bf16(nd(rng));
        w.ref[i] = from_bf16(w.half[i]);
      } else {
        w.half[i] = random_f16(rng);
        w.ref[i] = from_f16(w.half[i]);
      }
    }
  }
  return w;
}

std::vector<float> random_vec(std::size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// Runs a test body on the SIMD path (when the CPU has it) and on the scalar path.
class OpsTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (!GetParam() && !mv::ops::cpu_has_simd()) GTEST_SKIP() << "CPU has no AVX2/FMA/F16C";
    previous_ = mv::ops::set_force_scalar(GetParam());
  }
  void TearDown() override { mv::ops::set_force_scalar(previous_); }
  bool previous_ = false;
  mv::ThreadPool pool_{3};
};

// Checks y ≈ x·Wᵀ + b elementwise against float64, relative to Σ|x·w| (the conditioning of the sum).
void check_linear(const std::vector<float>& x, std::int64_t m, const Weights& w,
                  const std::vector<float>* bias, const std::vector<float>& y, double tol,
                  const std::string& what) {
  const std::int64_t k = w.cols, n = w.rows;
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < n; ++j) {
      double s = bias ? (*bias)[static_cast<std::size_t>(j)] : 0.0, mag = std::abs(s);
      for (std::int64_t c = 0; c < k; ++c) {
        const double p = static_cast<double>(x[static_cast<std::size_t>(i * k + c)]) *
                         w.ref[static_cast<std::size_t>(j * k + c)];
        s += p;
        mag += std::abs(p);
      }
      const double got = y[static_cast<std::size_t>(i * n + j)];
      ASSERT_LE(std::abs(got - s), tol * (mag + 1e-30)) << what << " at (" << i << "," << j << ") ref " << s;
    }
  }
}

TEST_P(OpsTest, LinearAllDtypesAndShapes) {
  std::mt19937 rng(1234);
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (std::int64_t m : {1, 2, 4, 5, 19}) {
      for (std::int64_t k : {1, 7, 16, 33, 200}) {
        for (std::int64_t n : {1, 3, 37, 130}) {
          for (int with_bias = 0; with_bias < 2; ++with_bias) {
            const Weights w = random_weights(dt, n, k, rng);
            const auto x = random_vec(static_cast<std::size_t>(m * k), rng);
            const auto b = random_vec(static_cast<std::size_t>(n), rng);
            for (int use_pool = 0; use_pool < 2; ++use_pool) {
              std::vector<float> y(static_cast<std::size_t>(m * n), NAN);
              mv::ops::linear(x.data(), m, w.matrix(), with_bias ? b.data() : nullptr, y.data(),
                              use_pool ? &pool_ : nullptr);
              check_linear(x, m, w, with_bias ? &b : nullptr, y, 2e-6,
                           "dtype " + std::to_string(static_cast<int>(dt)) + " m=" + std::to_string(m) +
                               " k=" + std::to_string(k) + " n=" + std::to_string(n));
            }
          }
        }
      }
    }
  }
}

TEST_P(OpsTest, LinearLargePanels) {
  // Big enough for several SGEMM panels per thread and weight rows over the GEMV unroll.
  std::mt19937 rng(99);
  for (DType dt : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (std::int64_t m : {1, 3, 40}) {
      const std::int64_t k = 300, n = 1100;
      const Weights w = random_weights(dt, n, k, rng);
      const auto x = random_vec(static_cast<std::size_t>(m * k), rng);
      const auto b = random_vec(static_cast<std::size_t>(n), rng);
      std::vector<float> y(static_cast<std::size_t>(m * n), NAN);
      mv::ops::linear(x.data(), m, w.matrix(), b.data(), y.data(), &pool_);
      check_linear(x, m, w, &b, y, 2e-6, "large");
    }
  }
}

TEST_P(OpsTest, LinearMultiMatchesSeparate) {
  std::mt19937 rng(7);
  for (std::int64_t m : {1, 9}) {
    const std::int64_t k = 48;
    const Weights wq = random_weights(DType::kBF16, 64, k, rng);
    const Weights wk = random_weights(DType::kF16, 16, k, rng);
    const Weights wv = random_weights(DType::kF32, 17, k, rng);
    const auto bq = random_vec(64, rng), bk = random_vec(16, rng);
    const auto x = random_vec(static_cast<std::size_t>(m * k), rng);
    std::vector<float> yq(static_cast<std::size_t>(m * 64)), yk(static_cast<std::size_t>(m * 16)),
        yv(static_cast<std::size_t>(m * 17));
    const mv::ops::LinearJob jobs[] = {{wq.matrix(), bq.data(), yq.data()},
                                       {wk.matrix(), bk.data(), yk.data()},
                                       {wv.matrix(), nullptr, yv.data()}};
    mv::ops::linear_multi(x.data(), m, jobs, &pool_);
    check_linear(x, m, wq, &bq, yq, 2e-6, "q");
    check_linear(x, m, wk, &bk, yk, 2e-6, "k");
    check_linear(x, m, wv, nullptr, yv, 2e-6, "v");
  }
}

TEST_P(OpsTest, RmsNorm) {
  std::mt19937 rng(3);
  for (std::int64_t dim : {1, 8, 33, 1280}) {
    const std::int64_t rows = 13;
    const auto x = random_vec(static_cast<std::size_t>(rows * dim), rng, 3.0f);
    const auto w = random_vec(static_cast<std::size_t>(dim), rng);
    std::vector<float> y(x.size());
    mv::ops::rms_norm(x.data(), rows, dim, w.data(), 1e-6f, y.data(), &pool_);
    for (std::int64_t r = 0; r < rows; ++r) {
      double ss = 0;
      for (std::int64_t i = 0; i < dim; ++i) ss += double(x[r * dim + i]) * x[r * dim + i];
      const double inv = 1.0 / std::sqrt(ss / dim + 1e-6);
      for (std::int64_t i = 0; i < dim; ++i) {
        const double ref = w[i] * x[r * dim + i] * inv;
        ASSERT_NEAR(y[r * dim + i], ref, 1e-6 * (std::abs(ref) + 1e-3)) << r << "," << i;
      }
    }
    // In place gives the same result.
    std::vector<float> z = x;
    mv::ops::rms_norm(z.data(), rows, dim, w.data(), 1e-6f, z.data(), nullptr);
    EXPECT_EQ(z, y);
  }
}

TEST_P(OpsTest, SiluMulGeluAdd) {
  std::mt19937 rng(5);
  const std::int64_t n = 5000;
  auto g = random_vec(n, rng, 6.0f), u = random_vec(n, rng, 2.0f);
  g[0] = -100.0f;  // exp overflow side
  g[1] = 100.0f;
  g[2] = 0.0f;
  std::vector<float> out(n);
  mv::ops::silu_mul(g.data(), u.data(), out.data(), n, &pool_);
  for (std::int64_t i = 0; i < n; ++i) {
    const double ref = double(g[i]) / (1.0 + std::exp(-double(g[i]))) * u[i];
    ASSERT_NEAR(out[i], ref, 1e-6 * (std::abs(ref) + 1e-6)) << "silu " << g[i];
  }
  auto x = random_vec(n, rng, 3.0f);
  auto y = x;
  mv::ops::gelu(y.data(), n, &pool_);
  for (std::int64_t i = 0; i < n; ++i) {
    const double ref = 0.5 * x[i] * (1.0 + std::erf(double(x[i]) / std::sqrt(2.0)));
    ASSERT_NEAR(y[i], ref, 1e-6 * (std::abs(ref) + 1e-6)) << "gelu " << x[i];
  }
  auto a = random_vec(n, rng), b = random_vec(n, rng);
  auto c = a;
  mv::ops::add(c.data(), b.data(), n, &pool_);
  for (std::int64_t i = 0; i < n; ++i) ASSERT_EQ(c[i], a[i] + b[i]);
}

TEST_P(OpsTest, Softmax) {
  std::mt19937 rng(11);
  const std::int64_t rows = 7, cols = 301;
  auto x = random_vec(rows * cols, rng, 20.0f);
  x[5] = 1000.0f;  // stability
  auto y = x;
  mv::ops::softmax(y.data(), rows, cols, &pool_);
  for (std::int64_t r = 0; r < rows; ++r) {
    double mx = -1e300, s = 0;
    for (std::int64_t i = 0; i < cols; ++i) mx = std::max(mx, double(x[r * cols + i]));
    for (std::int64_t i = 0; i < cols; ++i) s += std::exp(double(x[r * cols + i]) - mx);
    for (std::int64_t i = 0; i < cols; ++i) {
      const double d = double(x[r * cols + i]) - mx;
      const double ref = std::exp(d) / s;
      // x − max is rounded to fp32: a relative error of up to 2^-24·|x − max| in the exponent.
      ASSERT_NEAR(y[r * cols + i], ref, (2e-6 + 1.2e-7 * std::abs(d)) * ref + 1e-30);
    }
  }
}

TEST_P(OpsTest, Rotary) {
  std::mt19937 rng(13);
  const int heads = 3, hd = 10, half = hd / 2;
  const std::int64_t rows = 9, stride = heads * hd + 4;  // padded rows
  auto x = random_vec(rows * stride, rng);
  auto ang = random_vec(rows * half, rng, 4.0f);
  std::vector<float> c(ang.size()), s(ang.size());
  for (std::size_t i = 0; i < ang.size(); ++i) {
    c[i] = std::cos(ang[i]);
    s[i] = std::sin(ang[i]);
  }
  auto y = x;
  mv::ops::rotary(y.data(), rows, stride, heads, hd, c.data(), s.data(), &pool_);
  for (std::int64_t r = 0; r < rows; ++r) {
    for (int h = 0; h < heads; ++h) {
      for (int d = 0; d < hd; ++d) {
        const std::int64_t base = r * stride + h * hd;
        // q·cos + rotate_half(q)·sin with rotate_half(q) = [-q2, q1].
        const int j = d % half;
        const double rot = d < half ? -double(x[base + d + half]) : double(x[base + d - half]);
        const double ref = x[base + d] * double(c[r * half + j]) + rot * s[r * half + j];
        ASSERT_NEAR(y[base + d], ref, 1e-6);
      }
    }
    for (std::int64_t p = heads * hd; p < stride; ++p) ASSERT_EQ(y[r * stride + p], x[r * stride + p]);
  }
}

TEST(OpsCpu, MropeTablesSections) {
  const int hd = 16, half = 8;
  const int sections[3] = {2, 3, 3};
  const std::int64_t t[] = {0, 5, 100}, h[] = {0, 7, 120}, w[] = {0, 9, 130};
  std::vector<float> c(3 * half), s(3 * half);
  mv::ops::mrope_tables(t, h, w, 3, hd, 10000.0, sections, c.data(), s.data());
  for (int r = 0; r < 3; ++r) {
    for (int j = 0; j < half; ++j) {
      const std::int64_t p = j < 2 ? t[r] : j < 5 ? h[r] : w[r];
      const double angle = double(p) * std::pow(10000.0, -2.0 * j / hd);
      EXPECT_NEAR(c[r * half + j], std::cos(angle), 1e-6 * (1 + angle)) << r << "," << j;
      EXPECT_NEAR(s[r * half + j], std::sin(angle), 1e-6 * (1 + angle)) << r << "," << j;
    }
  }
  const int bad[3] = {2, 3, 2};
  EXPECT_THROW(mv::ops::mrope_tables(t, h, w, 3, hd, 10000.0, bad, c.data(), s.data()), mv::Error);
}

// Naive float64 attention for one query row against keys [0, n).
void naive_attend(const float* q, const float* k, std::int64_t ldk, const float* v, std::int64_t ldv,
                  std::int64_t n, int hd, std::vector<double>& out) {
  std::vector<double> sc(static_cast<std::size_t>(n));
  double mx = -1e300;
  for (std::int64_t j = 0; j < n; ++j) {
    double d = 0;
    for (int c = 0; c < hd; ++c) d += double(q[c]) * k[j * ldk + c];
    sc[j] = d / std::sqrt(double(hd));
    mx = std::max(mx, sc[j]);
  }
  double s = 0;
  for (auto& e : sc) s += (e = std::exp(e - mx));
  out.assign(static_cast<std::size_t>(hd), 0.0);
  for (std::int64_t j = 0; j < n; ++j)
    for (int c = 0; c < hd; ++c) out[c] += sc[j] / s * v[j * ldv + c];
}

TEST_P(OpsTest, AttentionCausalGqaOverCache) {
  std::mt19937 rng(17);
  struct Case {
    int nh, nkv, hd;
    std::int64_t past, m;
  };
  for (const Case cs : {Case{4, 2, 8, 0, 1}, Case{4, 2, 8, 0, 5}, Case{4, 1, 16, 3, 70},
                        Case{6, 3, 8, 250, 20}, Case{2, 2, 32, 0, 300}, Case{8, 2, 8, 600, 1}}) {
    const std::int64_t cap = cs.past + cs.m + 3;
    const std::int64_t qs = cs.nh * cs.hd;
    auto q = random_vec(cs.m * qs, rng, 1.5f);
    auto kc = random_vec(cs.nkv * cap * cs.hd, rng, 1.5f);
    auto vc = random_vec(cs.nkv * cap * cs.hd, rng);
    std::vector<float> out(cs.m * qs, NAN);
    mv::ops::attention_causal(q.data(), cs.m, qs, cs.nh, cs.nkv, cs.hd, kc.data(), vc.data(), cap * cs.hd,
                              cs.past, out.data(), qs, &pool_);
    std::vector<double> ref;
    for (std::int64_t i = 0; i < cs.m; ++i) {
      for (int h = 0; h < cs.nh; ++h) {
        const int g = h / (cs.nh / cs.nkv);
        naive_attend(q.data() + i * qs + h * cs.hd, kc.data() + g * cap * cs.hd, cs.hd,
                     vc.data() + g * cap * cs.hd, cs.hd, cs.past + i + 1, cs.hd, ref);
        for (int c = 0; c < cs.hd; ++c)
          ASSERT_NEAR(out[i * qs + h * cs.hd + c], ref[c], 2e-5)
              << "past " << cs.past << " i " << i << " h " << h;
      }
    }
  }
}

TEST_P(OpsTest, AttentionVarlenSegments) {
  std::mt19937 rng(19);
  const int nh = 3, hd = 8;
  const std::vector<std::int64_t> cu = {0,   64,  64, 100,
                                        101, 500, 530};  // an empty segment, one of 1, long ones
  const std::int64_t n = cu.back(), stride = 3 * nh * hd;
  auto qkv = random_vec(n * stride, rng, 1.5f);
  std::vector<float> out(n * nh * hd, NAN);
  mv::ops::attention_varlen(qkv.data(), qkv.data() + nh * hd, qkv.data() + 2 * nh * hd, stride, nh, hd, cu,
                            out.data(), nh * hd, &pool_);
  std::vector<double> ref;
  for (std::size_t s = 0; s + 1 < cu.size(); ++s) {
    for (std::int64_t i = cu[s]; i < cu[s + 1]; ++i) {
      for (int h = 0; h < nh; ++h) {
        naive_attend(qkv.data() + i * stride + h * hd, qkv.data() + cu[s] * stride + nh * hd + h * hd, stride,
                     qkv.data() + cu[s] * stride + 2 * nh * hd + h * hd, stride, cu[s + 1] - cu[s], hd, ref);
        for (int c = 0; c < hd; ++c)
          ASSERT_NEAR(out[i * nh * hd + h * hd + c], ref[c], 2e-5) << i << "," << h;
      }
    }
  }
}

TEST_P(OpsTest, EmbeddingAndConvert) {
  std::mt19937 rng(23);
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    const Weights table = random_weights(dt, 50, 21, rng);
    const std::int32_t ids[] = {0, 49, 7, 7, 31};
    std::vector<float> out(5 * 21);
    mv::ops::embedding(table.matrix(), ids, 5, out.data(), &pool_);
    for (int i = 0; i < 5; ++i)
      for (int c = 0; c < 21; ++c) ASSERT_EQ(double(out[i * 21 + c]), table.ref[ids[i] * 21 + c]);
    std::vector<float> all(50 * 21);
    mv::ops::convert_to_f32(
        dt == DType::kF32 ? static_cast<const void*>(table.f32.data()) : table.half.data(), dt, 50 * 21,
        all.data());
    for (std::size_t i = 0; i < all.size(); ++i) ASSERT_EQ(double(all[i]), table.ref[i]);
  }
  // Every f16 bit pattern decodes as the definition says (subnormals, inf, signed zero).
  std::vector<std::uint16_t> bits(65536);
  for (int i = 0; i < 65536; ++i) bits[i] = static_cast<std::uint16_t>(i);
  std::vector<float> dec(65536);
  mv::ops::convert_to_f32(bits.data(), DType::kF16, 65536, dec.data());
  for (int i = 0; i < 65536; ++i) {
    const double ref = from_f16(bits[i]);
    if (std::isnan(ref)) {
      ASSERT_TRUE(std::isnan(dec[i])) << i;
    } else {
      ASSERT_EQ(double(dec[i]), ref) << i;
      ASSERT_EQ(std::signbit(dec[i]), std::signbit(ref)) << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, OpsTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? "Scalar" : "Simd"; });

}  // namespace
