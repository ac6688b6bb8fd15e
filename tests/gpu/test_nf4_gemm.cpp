// The fused NF4 GEMM for decode batches (cuda::nf4_gemm; label gpu, skipped without a GPU): against an
// exact emulation of its arithmetic (x and the 16 levels rounded to bf16, the block scale a' applied in
// fp32) to fp32 accumulation error, and against the CPU NF4 linear on bf16-rounded activations within the
// bf16 rounding of the weights; every padded row count, partial row tiles, an odd number of 64-element
// blocks, several k ranges (split-K), parts, bias, accumulation, output row stride, determinism, and the
// DLinear::gemm_f32 dispatch. Nf4GemmTiming (MV_GPU_TIMINGS=1) times it at the 7B shapes against what
// gemm_f32 did before (dequantize to bf16 + cuBLASLt GEMM on the [hi; lo] split of x).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <sstream>
#include <vector>

#include "common/numeric.hpp"
#include "gpu/gpu_test_util.hpp"
#include "ops/ops.hpp"
#include "quant/nf4.hpp"

#if MEDVISION_HAS_CUDA
#include "model/qwen25vl/cuda_linear.hpp"
#include "ops/cuda/weight_formats.hpp"
#include "quant/nf4_cuda.hpp"
#endif

using namespace mv;
using mv::test::bf16_round;
using mv::test::rel_l2;

#if MEDVISION_HAS_CUDA

namespace {

using mv::test::download;
using mv::test::upload;

// One NF4 weight [rows, k] quantized on the CPU from bf16 values, with its device copy.
struct Weight {
  std::int64_t rows = 0, k = 0;
  std::vector<std::uint16_t> bits;  // the bf16 source
  quant::Nf4Tensor q;
  quant::Nf4View view;
  quant::Nf4Device dev;
  ops::Matrix matrix() const { return ops::Matrix{q.packed.data(), DType::kU8, rows, k, &view}; }
};

std::uint16_t bf16_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<std::uint16_t>(u >> 16);
}

std::unique_ptr<Weight> make_weight(std::int64_t rows, std::int64_t k, std::mt19937& rng) {
  auto w = std::make_unique<Weight>();
  w->rows = rows;
  w->k = k;
  std::normal_distribution<float> g(0.0f, 0.05f);
  w->bits.resize(static_cast<std::size_t>(rows * k));
  for (std::size_t i = 0; i < w->bits.size(); ++i) {
    float v = g(rng);
    if (i % 997 == 5) v *= 8.0f;  // some large block maxima: scales differ from block to block
    w->bits[i] = bf16_bits(v);
  }
  w->q = quant::quantize_nf4(w->bits.data(), DType::kBF16, {rows, k});
  w->view = w->q.view();
  w->dev = quant::upload_nf4(nullptr, w->view);
  return w;
}

// The kernel's arithmetic on the CPU in double: y = Σ bf16(x) · bf16(level) · a'.
std::vector<float> emulate(const std::vector<float>& xr, int m, const Weight& w) {
  std::vector<double> lv16(16);
  for (int c = 0; c < 16; ++c) lv16[static_cast<std::size_t>(c)] = bf16_round(w.view.code[c]);
  std::vector<float> y(static_cast<std::size_t>(m * w.rows));
  for (std::int64_t r = 0; r < w.rows; ++r)
    for (int i = 0; i < m; ++i) {
      double s = 0;
      for (std::int64_t b = 0; b < w.k; b += 64) {
        const std::int64_t e0 = r * w.k + b;
        double part = 0;
        for (std::int64_t j = 0; j < 64; ++j)
          part += lv16[w.view.code_at(e0 + j)] * xr[static_cast<std::size_t>(i * w.k + b + j)];
        s += part * w.view.scale(e0 / w.view.blocksize);
      }
      y[static_cast<std::size_t>(i * w.rows + r)] = static_cast<float>(s);
    }
  return y;
}

std::vector<float> rows_of(const std::vector<float>& y, int m, std::int64_t n, std::int64_t ldy,
                           std::int64_t col0 = 0) {
  std::vector<float> out(static_cast<std::size_t>(m * n));
  for (int i = 0; i < m; ++i)
    for (std::int64_t r = 0; r < n; ++r)
      out[static_cast<std::size_t>(i * n + r)] = y[static_cast<std::size_t>(i * ldy + col0 + r)];
  return out;
}

std::string fmt_shape(int m, std::int64_t n, std::int64_t k, int splits, bool acc) {
  return fmt::format("{}x{}x{} splits={}{}", m, n, k, splits, acc ? " +bias +y" : "");
}

}  // namespace

TEST(Nf4Gemm, MatchesEmulationAndCpuNf4Linear) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(11);
  std::normal_distribution<float> g(0.0f, 1.0f);
  // 300 rows: a partial second row tile (warps without rows); k = 192: three 64-element blocks (a last step
  // of one block); 40 x 4096: many steps and several k ranges.
  for (auto [n, k] : {std::array<std::int64_t, 2>{300, 192}, {40, 4096}, {520, 1024}}) {
    const auto w = make_weight(n, k, rng);
    ASSERT_TRUE(cuda::nf4_gemm_supports(w->dev.ref(), k));
    const cuda::Nf4GemmPart part{w->dev.ref(), 0, n};
    std::vector<float> bias(static_cast<std::size_t>(n));
    for (auto& v : bias) v = g(rng);
    auto dbias = upload(bias);
    for (int m : {1, 2, 5, 8, 9, 16, 17, 31, 32, 40, 48, 64}) {
      std::vector<float> x(static_cast<std::size_t>(m * k)), xr(x.size());
      for (std::size_t i = 0; i < x.size(); ++i) {
        x[i] = g(rng) * (i % 101 == 0 ? 30.0f : 1.0f);
        xr[i] = bf16_round(x[i]);
      }
      const std::int64_t ldy = n + 5;
      std::vector<float> y0(static_cast<std::size_t>(m * ldy));
      for (auto& v : y0) v = g(rng);
      // References: the emulation (exact arithmetic of the kernel) and the CPU NF4 linear (fp32 w').
      const std::vector<float> emu = emulate(xr, m, *w);
      std::vector<float> cpu(static_cast<std::size_t>(m * n));
      ops::linear(xr.data(), m, w->matrix(), nullptr, cpu.data(), nullptr);
      auto dx = upload(x);
      for (int splits : {0, 1, 3}) {
        for (const bool acc : {false, true}) {
          const std::size_t wsb = cuda::nf4_gemm_workspace(m, &part, 1, n, k, splits);
          cuda::Buffer ws(wsb);
          auto dy = upload(y0);
          cuda::nf4_gemm(nullptr, dx.as<float>(), m, &part, 1, n, k, acc ? dbias.as<float>() : nullptr,
                         dy.as<float>(), ldy, acc, ws.data(), wsb, splits);
          const auto all = download<float>(dy, y0.size());
          std::vector<float> got = rows_of(all, m, n, ldy), base = rows_of(y0, m, n, ldy);
          // Compare the product alone: remove what bias and accumulation added.
          if (acc)
            for (int i = 0; i < m; ++i)
              for (std::int64_t r = 0; r < n; ++r)
                got[static_cast<std::size_t>(i * n + r)] -=
                    base[static_cast<std::size_t>(i * n + r)] + bias[static_cast<std::size_t>(r)];
          const std::string what = fmt_shape(m, n, k, splits, acc);
          EXPECT_LE(rel_l2(got, emu), 1e-5) << what << " vs emulation";
          EXPECT_LE(rel_l2(got, cpu), 2e-3) << what << " vs the CPU NF4 linear";
          for (int i = 0; i < m; ++i)  // the output's padding columns are untouched
            for (std::int64_t r = n; r < ldy; ++r)
              ASSERT_EQ(all[static_cast<std::size_t>(i * ldy + r)], y0[static_cast<std::size_t>(i * ldy + r)])
                  << what;
          // Deterministic: the same call gives the same bits.
          auto dy2 = upload(y0);
          cuda::nf4_gemm(nullptr, dx.as<float>(), m, &part, 1, n, k, acc ? dbias.as<float>() : nullptr,
                         dy2.as<float>(), ldy, acc, ws.data(), wsb, splits);
          const auto all2 = download<float>(dy2, y0.size());
          EXPECT_EQ(std::memcmp(all.data(), all2.data(), all.size() * 4), 0) << what << " not deterministic";
        }
      }
    }
  }
}

// q/k/v-like parts in one DLinear: gemm_f32 above kGemvMaxRows rows (the fused GEMM unless MV_NF4_GEMM=0,
// in launches of up to 64 rows) against the CPU NF4 linear of each part on bf16-rounded activations.
TEST(Nf4Gemm, DLinearPartsThroughGemmF32) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(12);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const std::int64_t k = 320;
  const std::int64_t rows[3] = {384, 64, 72};
  std::vector<std::unique_ptr<Weight>> w;
  std::vector<qwen25vl::Linear> lin(3);
  for (int p = 0; p < 3; ++p) {
    w.push_back(make_weight(rows[p], k, rng));
    lin[static_cast<std::size_t>(p)].w = w.back()->matrix();
    lin[static_cast<std::size_t>(p)].bias.resize(static_cast<std::size_t>(rows[p]));
    for (auto& v : lin[static_cast<std::size_t>(p)].bias) v = g(rng);
  }
  qwen25vl::cudaeng::DLinear dl;
  {
    qwen25vl::cudaeng::Uploader up(nullptr);
    dl = qwen25vl::cudaeng::fuse(up, {&lin[0], &lin[1], &lin[2]});
  }
  ASSERT_EQ(dl.format, qwen25vl::cudaeng::WeightFormat::kNF4);
  ASSERT_EQ(dl.parts.size(), 3u);
  const std::int64_t n = dl.out;
  cuda::Gemm gemm;
  cuda::Buffer scratch;
  const qwen25vl::cudaeng::LinearContext lc{nullptr, &gemm, &scratch};
  for (const std::int64_t m : {std::int64_t{37}, std::int64_t{70}}) {
    std::vector<float> x(static_cast<std::size_t>(m * k)), xr(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
      x[i] = g(rng);
      xr[i] = bf16_round(x[i]);
    }
    std::vector<float> y0(static_cast<std::size_t>(m * n)), want(y0.size());
    for (auto& v : y0) v = 0.1f * g(rng);
    std::int64_t row0 = 0;
    for (int p = 0; p < 3; ++p) {
      std::vector<float> yp(static_cast<std::size_t>(m * rows[p]));
      ops::linear(xr.data(), m, lin[static_cast<std::size_t>(p)].w, lin[static_cast<std::size_t>(p)].b(),
                  yp.data(), nullptr);
      for (std::int64_t i = 0; i < m; ++i)
        for (std::int64_t r = 0; r < rows[p]; ++r)
          want[static_cast<std::size_t>(i * n + row0 + r)] =
              yp[static_cast<std::size_t>(i * rows[p] + r)] + y0[static_cast<std::size_t>(i * n + row0 + r)];
      row0 += rows[p];
    }
    auto dx = upload(x);
    auto dy = upload(y0);
    dl.gemm_f32(lc, dx.as<float>(), m, dy.as<float>(), true);
    const auto got = download<float>(dy, want.size());
    const double e = rel_l2(got, want);
    std::printf("[ nf4 gemm ] DLinear %lldx%lldx%lld (3 parts): rel L2 %.2e vs the CPU NF4 linear\n",
                static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k), e);
    EXPECT_LE(e, 2e-3) << m << " rows";
  }
}

// The fused inputs (cuda::GemvInput) through DLinear::gemv, which takes NF4 weights to the fused GEMM:
// its first kernel RMS-normalises x or forms silu(gate)·up, as rms_norm_f32 / silu_mul_f32 do, then
// rounds to bf16. Against the CPU NF4 linear on the input formed in fp32 on the CPU and rounded to bf16.
TEST(Nf4Gemm, FusedInputsThroughDLinearGemv) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(13);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const std::int64_t k = 448, n = 200;
  qwen25vl::Linear lin;
  const auto w = make_weight(n, k, rng);
  lin.w = w->matrix();
  qwen25vl::cudaeng::DLinear dl;
  {
    qwen25vl::cudaeng::Uploader up(nullptr);
    dl = qwen25vl::cudaeng::fuse(up, {&lin});
  }
  if (!dl.nf4_gemm_usable()) GTEST_SKIP() << "the fused NF4 GEMM is off (MV_NF4_GEMM=0) or unsupported";
  cuda::Gemm gemm;
  cuda::Buffer scratch;
  const qwen25vl::cudaeng::LinearContext lc{nullptr, &gemm, &scratch};
  std::vector<float> norm_w(static_cast<std::size_t>(k));
  for (auto& v : norm_w) v = 1.0f + 0.3f * g(rng);
  auto dnorm = upload(norm_w);
  const float eps = 1e-6f;
  for (const int m : {1, 3, 12}) {
    for (const cuda::GemvIn kind : {cuda::GemvIn::kRmsNorm, cuda::GemvIn::kSiluMul}) {
      const std::int64_t ldx = kind == cuda::GemvIn::kSiluMul ? 2 * k : k;
      std::vector<float> x(static_cast<std::size_t>(m * ldx));
      for (auto& v : x) v = 3.0f * g(rng);
      std::vector<float> in(static_cast<std::size_t>(m * k));
      for (int i = 0; i < m; ++i) {
        const float* xr = x.data() + i * ldx;
        double ss = 0;
        for (std::int64_t j = 0; j < k; ++j) ss += static_cast<double>(xr[j]) * xr[j];
        const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(k) + eps));
        for (std::int64_t j = 0; j < k; ++j) {
          const float v = kind == cuda::GemvIn::kRmsNorm
                              ? norm_w[static_cast<std::size_t>(j)] * (xr[j] * inv)
                              : xr[j] / (1.0f + std::exp(-xr[j])) * xr[k + j];
          in[static_cast<std::size_t>(i * k + j)] = bf16_round(v);
        }
      }
      std::vector<float> want(static_cast<std::size_t>(m * n));
      ops::linear(in.data(), m, lin.w, nullptr, want.data(), nullptr);
      auto dx = upload(x);
      cuda::Buffer dy(static_cast<std::size_t>(m * n) * 4);
      dl.gemv(lc, dx.as<float>(), m, dy.as<float>(), false,
              cuda::GemvInput{kind, kind == cuda::GemvIn::kRmsNorm ? dnorm.as<float>() : nullptr, eps});
      const auto got = download<float>(dy, want.size());
      // Rounding of the formed input to bf16 may differ in the last place where the CPU's fp32 input does.
      EXPECT_LE(rel_l2(got, want), 4e-3) << m << " rows, input kind " << static_cast<int>(kind);
    }
  }
}

// Timings at the 7B decode shapes (printed, never asserted; only with MV_GPU_TIMINGS=1): the fused GEMM
// (chosen k ranges, and a few forced ones) against what gemm_f32 did before it, dequantizing every part to
// bf16 and running one cuBLASLt GEMM on the [hi; lo] bf16 split of x (2·m rows) plus the half sum. GB/s
// counts the NF4 bytes (codes and 8-bit scales) read once.
TEST(Nf4GemmTiming, At7BShapes) {
  SKIP_WITHOUT_GPU();
  if (!std::getenv("MV_GPU_TIMINGS")) GTEST_SKIP() << "set MV_GPU_TIMINGS=1";
  using mv::test::time_ms;
  struct Shape {
    const char* name;
    std::vector<std::int64_t> parts;  // rows of each NF4 part
    std::int64_t k;
  };
  const Shape shapes[] = {{"qkv", {3584, 512, 512}, 3584},
                          {"o", {3584}, 3584},
                          {"gate+up", {18944, 18944}, 3584},
                          {"down", {3584}, 18944}};
  std::uint32_t lcg = 12345u;
  cuda::Gemm gemm;
  for (const Shape& sh : shapes) {
    std::vector<quant::Nf4Device> dev;
    std::vector<cuda::Nf4GemmPart> parts;
    std::int64_t n = 0;
    double bytes = 0;
    for (const std::int64_t rows : sh.parts) {
      std::vector<std::uint16_t> host(static_cast<std::size_t>(rows * sh.k));
      for (auto& h : host) {  // bf16 of uniform values in about ±0.03
        lcg = lcg * 1664525u + 1013904223u;
        h = bf16_bits((static_cast<float>(lcg >> 8) * (1.0f / 16777216.0f) - 0.5f) * 0.06f);
      }
      auto src = upload(host);
      dev.push_back(quant::quantize_nf4_device(nullptr, src.data(), DType::kBF16, rows * sh.k));
      bytes += static_cast<double>(dev.back().packed.size() + dev.back().absmax_q.size());
    }
    for (std::size_t p = 0; p < dev.size(); ++p) {
      parts.push_back(cuda::Nf4GemmPart{dev[p].ref(), n, sh.parts[p]});
      n += sh.parts[p];
    }
    const std::int64_t k = sh.k;
    const int np = static_cast<int>(parts.size());
    std::vector<float> xv(static_cast<std::size_t>(64 * k));
    for (auto& v : xv) {
      lcg = lcg * 1664525u + 1013904223u;
      v = static_cast<float>(lcg >> 8) * (1.0f / 16777216.0f) - 0.5f;
    }
    auto x = upload(xv);
    cuda::Buffer y(static_cast<std::size_t>(64 * n) * 4), y2(static_cast<std::size_t>(128 * n) * 4);
    cuda::Buffer wb(static_cast<std::size_t>(n * k) * 2), hl(static_cast<std::size_t>(128 * k) * 2);
    std::vector<int> row_counts{16, 32};  // MV_NF4_GEMM_ROWS="1 8 16" overrides
    if (const char* e = std::getenv("MV_NF4_GEMM_ROWS")) {
      row_counts.clear();
      for (std::istringstream in(e); in;) {
        int r = 0;
        if (in >> r && r >= 1 && r <= 64) row_counts.push_back(r);
      }
    }
    for (int m : row_counts) {
      const int auto_splits = cuda::nf4_gemm_splits(m, parts.data(), np, n, k);
      cuda::Buffer ws(std::max(cuda::nf4_gemm_workspace(m, parts.data(), np, n, k, 0),
                               cuda::nf4_gemm_workspace(m, parts.data(), np, n, k, 16)));
      auto fused = [&](int splits) {
        return time_ms(
            [&] {
              cuda::nf4_gemm(nullptr, x.as<float>(), m, parts.data(), np, n, k, nullptr, y.as<float>(), n,
                             false, ws.data(), ws.size(), splits);
            },
            50);
      };
      const float ms = fused(0);
      const float old_ms = time_ms(
          [&] {
            for (std::size_t p = 0; p < dev.size(); ++p)
              cuda::nf4_dequantize(nullptr, parts[p].q, wb.as<cuda::bf16>() + parts[p].row0 * k);
            cuda::split_bf16(nullptr, x.as<float>(), m * k, hl.as<cuda::bf16>(), hl.as<cuda::bf16>() + m * k);
            gemm.run(nullptr, hl.as<cuda::bf16>(), 2 * m, wb.as<cuda::bf16>(), n, k, nullptr, y2.as<float>(),
                     false);
            cuda::add_row_halves(nullptr, y2.as<float>(), m, n, nullptr, y.as<float>(), false);
          },
          20);
      std::string others;
      for (int s : {1, 2, 4, 8, 16})
        if (s != auto_splits) others += fmt::format(" s={}: {:.4f}", s, fused(s));
      std::printf(
          "[ timing   ] nf4 gemm %-7s %lldx%lld, %d rows: fused %.4f ms %5.0f GB/s (splits %d) | dequantize "
          "+ "
          "cuBLASLt %.4f ms %5.0f GB/s | %.2fx | other splits (ms):%s\n",
          sh.name, static_cast<long long>(n), static_cast<long long>(k), m, ms, bytes / ms / 1e6, auto_splits,
          old_ms, bytes / old_ms / 1e6, old_ms / ms, others.c_str());
    }
  }
}

#endif  // MEDVISION_HAS_CUDA
