// CUDA engine tests (label gpu): kernels against the CPU ops on random data at the real head sizes, and
// the whole model against the CPU engine on every fixture of tests/fixtures/model (last-position logits
// and every teacher-forced decode step within relative L2 2e-2). Skipped when no GPU is present.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "common/numeric.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "gpu/gpu_test_util.hpp"
#include "model/qwen25vl/model.hpp"
#include "model/qwen25vl/random_checkpoint.hpp"
#include "ops/ops.hpp"

#if MEDVISION_HAS_CUDA
#include <cuda_fp16.h>

#include "ops/cuda/cuda_ops.hpp"
#include "ops/cuda/weight_formats.hpp"
#endif

namespace fs = std::filesystem;
using namespace mv;
using namespace mv::qwen25vl;

namespace {

constexpr double kModelRelL2 = 2e-2;

using mv::test::rel_l2;

#if MEDVISION_HAS_CUDA
using mv::test::download;
using mv::test::from_bf16;
using mv::test::to_bf16;
using mv::test::upload;

std::vector<float> random_vec(std::size_t n, std::mt19937& rng, float scale = 1.0f) {
  return test::random_bf16(n, rng, scale);
}
#endif

}  // namespace

#if MEDVISION_HAS_CUDA

TEST(CudaOps, GemmWithBiasAndAccumulate) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(7);
  for (auto [m, n, k] : {std::array<std::int64_t, 3>{1, 3584, 3584}, {37, 200, 96}, {300, 1280, 1176}}) {
    const auto x = random_vec(static_cast<std::size_t>(m * k), rng),
               w = random_vec(static_cast<std::size_t>(n * k), rng, 0.05f),
               bias = random_vec(static_cast<std::size_t>(n), rng),
               y0 = random_vec(static_cast<std::size_t>(m * n), rng);
    std::vector<float> want = y0, tmp(static_cast<std::size_t>(m * n));
    ops::linear(x.data(), m, ops::Matrix{w.data(), DType::kF32, n, k}, bias.data(), tmp.data(), nullptr);
    for (std::size_t i = 0; i < want.size(); ++i) want[i] += tmp[i];
    auto dx = upload(to_bf16(x)), dw = upload(to_bf16(w)), db = upload(bias), dy = upload(y0);
    cuda::Gemm g;
    g.run(nullptr, dx.as<cuda::bf16>(), m, dw.as<cuda::bf16>(), n, k, db.as<float>(), dy.as<float>(), true);
    cuda::check(cudaDeviceSynchronize(), "gemm");
    const auto got = download<float>(dy, want.size());
    EXPECT_LE(rel_l2(got, want), 1e-5) << m << "x" << n << "x" << k;
  }
}

TEST(CudaOps, GemvMatchesCpuInFp32) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(9);
  for (auto [m, n, k] : {std::array<std::int64_t, 3>{1, 4608, 3584},
                         {4, 37, 1000},
                         {2, 64, 36},
                         {8, 300, 1024},
                         {7, 50, 72}}) {
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> x(static_cast<std::size_t>(m * k));
    for (auto& v : x) v = d(rng);  // not rounded: the GEMV keeps fp32 activations
    const auto w = random_vec(static_cast<std::size_t>(n * k), rng, 0.05f),
               bias = random_vec(static_cast<std::size_t>(n), rng),
               y0 = random_vec(static_cast<std::size_t>(m * n), rng);
    std::vector<float> want = y0, tmp(static_cast<std::size_t>(m * n));
    ops::linear(x.data(), m, ops::Matrix{w.data(), DType::kF32, n, k}, bias.data(), tmp.data(), nullptr);
    for (std::size_t i = 0; i < want.size(); ++i) want[i] += tmp[i];
    auto dx = upload(x), dw = upload(to_bf16(w)), db = upload(bias), dy = upload(y0);
    cuda::gemv(nullptr, dx.as<float>(), static_cast<int>(m), dw.as<cuda::bf16>(), n, k, db.as<float>(),
               dy.as<float>(), true);
    cuda::check(cudaDeviceSynchronize(), "gemv");
    EXPECT_LE(rel_l2(download<float>(dy, want.size()), want), 1e-5) << m << "x" << n << "x" << k;
  }
}

// The decode GEMV's fused inputs (cuda::GemvInput) against the separate kernels they replace: RMSNorm
// (rms_norm_f32, then the plain GEMV) and the SwiGLU product (silu_mul_f32, then the plain GEMV), for every
// dense weight type, 1..4 rows, the 16-byte path and the element path (k not a multiple of 8), with bias
// and accumulation.
TEST(CudaOps, GemvFusedInputsMatchSeparateKernels) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(33);
  for (auto [n, k] : {std::array<std::int64_t, 2>{77, 3584}, {40, 1002}, {9, 36}}) {
    for (auto type : {cuda::ElemType::kBF16, cuda::ElemType::kF16, cuda::ElemType::kF32}) {
      const auto w = random_vec(static_cast<std::size_t>(n * k), rng, 0.05f);
      cuda::Buffer dw;
      if (type == cuda::ElemType::kBF16) {
        dw = upload(to_bf16(w));
      } else if (type == cuda::ElemType::kF16) {
        std::vector<__half> h(w.size());
        for (std::size_t i = 0; i < w.size(); ++i) h[i] = __float2half(w[i]);
        dw = upload(h);
      } else {
        dw = upload(w);
      }
      const auto bias = random_vec(static_cast<std::size_t>(n), rng),
                 nw = random_vec(static_cast<std::size_t>(k), rng);
      auto db = upload(bias), dnw = upload(nw);
      for (int m = 1; m <= cuda::kGemvFusedMaxRows; ++m) {
        const auto x = random_vec(static_cast<std::size_t>(m * k), rng, 3.0f);
        const auto gu = random_vec(static_cast<std::size_t>(m * 2 * k), rng, 2.0f);
        const auto y0 = random_vec(static_cast<std::size_t>(m * n), rng);
        auto dx = upload(x), dgu = upload(gu);
        cuda::Buffer tmp(static_cast<std::size_t>(m * k) * sizeof(float));
        // RMSNorm.
        auto want = upload(y0), got = upload(y0);
        cuda::rms_norm_f32(nullptr, dx.as<float>(), m, k, k, dnw.as<float>(), 1e-6f, tmp.as<float>());
        cuda::gemv_typed(nullptr, tmp.as<float>(), m, dw.data(), type, n, k, db.as<float>(), want.as<float>(),
                         n, true);
        cuda::gemv_typed(nullptr, dx.as<float>(), m, dw.data(), type, n, k, db.as<float>(), got.as<float>(),
                         n, true, cuda::GemvInput{cuda::GemvIn::kRmsNorm, dnw.as<float>(), 1e-6f});
        const auto a = download<float>(want, y0.size()), b = download<float>(got, y0.size());
        EXPECT_LE(rel_l2(b, a), 1e-6) << "rms norm, m=" << m << " " << n << "x" << k;
        // SwiGLU product.
        auto want2 = upload(y0), got2 = upload(y0);
        cuda::silu_mul_f32(nullptr, dgu.as<float>(), m, k, tmp.as<float>());
        cuda::gemv_typed(nullptr, tmp.as<float>(), m, dw.data(), type, n, k, db.as<float>(),
                         want2.as<float>(), n, true);
        cuda::gemv_typed(nullptr, dgu.as<float>(), m, dw.data(), type, n, k, db.as<float>(), got2.as<float>(),
                         n, true, cuda::GemvInput{cuda::GemvIn::kSiluMul});
        const auto c = download<float>(want2, y0.size()), d = download<float>(got2, y0.size());
        EXPECT_LE(rel_l2(d, c), 1e-6) << "silu, m=" << m << " " << n << "x" << k;
        EXPECT_GT(rel_l2(b, d), 1e-2);  // the two inputs really differ (the check above can fail)
      }
    }
  }
}

// Row i of a GEMV with m rows equals the same row computed alone, bit for bit (the same products added in
// the same order for every m), with n not a multiple of the rows per block and both k paths.
TEST(CudaOps, GemvRowsDoNotDependOnBatchSize) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(21);
  for (auto [n, k] : {std::array<std::int64_t, 2>{77, 3584}, {13, 1000}, {45, 36}}) {
    const int M = cuda::kGemvMaxRows;
    const auto x = random_vec(static_cast<std::size_t>(M * k), rng),
               w = random_vec(static_cast<std::size_t>(n * k), rng, 0.05f),
               bias = random_vec(static_cast<std::size_t>(n), rng),
               y0 = random_vec(static_cast<std::size_t>(M * n), rng);
    auto dx = upload(x), dw = upload(to_bf16(w)), db = upload(bias);
    // Each row alone.
    std::vector<float> single(static_cast<std::size_t>(M * n));
    for (int i = 0; i < M; ++i) {
      auto dy = upload(std::vector<float>(y0.begin() + i * n, y0.begin() + (i + 1) * n));
      cuda::gemv(nullptr, dx.as<float>() + i * k, 1, dw.as<cuda::bf16>(), n, k, db.as<float>(),
                 dy.as<float>(), true);
      const auto got = download<float>(dy, static_cast<std::size_t>(n));
      std::copy(got.begin(), got.end(), single.begin() + i * n);
    }
    for (int m = 2; m <= M; ++m) {
      auto dy = upload(std::vector<float>(y0.begin(), y0.begin() + m * n));
      cuda::gemv(nullptr, dx.as<float>(), m, dw.as<cuda::bf16>(), n, k, db.as<float>(), dy.as<float>(), true);
      const auto got = download<float>(dy, static_cast<std::size_t>(m * n));
      for (std::int64_t j = 0; j < m * n; ++j)
        ASSERT_EQ(got[static_cast<std::size_t>(j)], single[static_cast<std::size_t>(j)])
            << "m=" << m << " row " << j / n << " col " << j % n << " (" << n << "x" << k << ")";
    }
  }
}

// Prefill attention (causal over a cache with earlier tokens, GQA) and vision varlen attention against
// the CPU kernels on the same bf16-rounded inputs.
TEST(CudaOps, AttentionMatchesCpu) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(11);
  struct Case {
    int hd, heads, kv;
    std::int64_t past, m;
  };
  for (const Case c :
       {Case{128, 28, 4, 0, 150}, Case{128, 8, 2, 70, 90}, Case{80, 16, 16, 0, 200}, Case{8, 4, 1, 3, 67}}) {
    const std::int64_t keys = c.past + c.m, nq = c.heads * c.hd;
    const auto q = random_vec(static_cast<std::size_t>(c.m * nq), rng);
    // Cache layout [kv][keys][hd].
    const auto k = random_vec(static_cast<std::size_t>(c.kv * keys * c.hd), rng);
    const auto v = random_vec(static_cast<std::size_t>(c.kv * keys * c.hd), rng);
    std::vector<float> want(static_cast<std::size_t>(c.m * nq));
    ops::attention_causal(q.data(), c.m, nq, c.heads, c.kv, c.hd, k.data(), v.data(), keys * c.hd, c.past,
                          want.data(), nq, nullptr);
    std::vector<cuda::AttnItem> items;
    for (std::int64_t q0 = 0; q0 < c.m; q0 += cuda::kAttnBlockQ)
      items.push_back({static_cast<int>(q0), static_cast<int>(std::min<std::int64_t>(64, c.m - q0)), 0,
                       static_cast<int>(keys), static_cast<int>(c.past + q0)});
    auto dq = upload(to_bf16(q)), dk = upload(to_bf16(k)), dv = upload(to_bf16(v)), di = upload(items);
    cuda::Buffer dout(want.size() * sizeof(cuda::bf16));
    cuda::AttnArgs a{dq.as<cuda::bf16>(),
                     nq,
                     dk.as<cuda::bf16>(),
                     dv.as<cuda::bf16>(),
                     keys * c.hd,
                     c.hd,
                     dout.as<cuda::bf16>(),
                     nq,
                     c.heads,
                     c.kv,
                     c.hd,
                     di.as<cuda::AttnItem>(),
                     static_cast<int>(items.size())};
    cuda::attention(nullptr, a);
    cuda::check(cudaDeviceSynchronize(), "attention");
    const auto got = from_bf16(download<cuda::bf16>(dout, want.size()));
    const double e = rel_l2(got, want);
    EXPECT_LE(e, 1e-2) << "hd " << c.hd << " past " << c.past << " m " << c.m;
    std::printf("[ cuda ops ] causal attention hd %d heads %d/%d past %lld m %lld: rel L2 %.2e\n", c.hd,
                c.heads, c.kv, static_cast<long long>(c.past), static_cast<long long>(c.m), e);

    // Decode: the last query row alone.
    if (c.m >= 1) {
      const std::int64_t last = c.m - 1;
      std::vector<float> want1(want.begin() + last * nq, want.begin() + (last + 1) * nq);
      // As one sequence of a batch of two: the other sequence (a shorter view of the same cache) must not
      // disturb it, and its own result is the causal attention of an earlier row.
      const std::int32_t len = static_cast<std::int32_t>(keys);
      const std::int32_t len2 = static_cast<std::int32_t>(std::max<std::int64_t>(1, keys - 5));
      // The same keys in the paged layout (one layer).
      const auto paged = mv::test::make_paged(k, v, 1, c.kv, keys, c.hd, rng);
      std::vector<cuda::DecodeSeq> seqs{{paged.table_ptr(), len, 0}, {paged.table_ptr(), len2, 0}};
      auto dseq = upload(seqs);
      // Both sequences ask with the last query row.
      std::vector<float> q2(q.begin() + last * nq, q.begin() + (last + 1) * nq);
      q2.insert(q2.end(), q.begin() + last * nq, q.begin() + (last + 1) * nq);
      auto dq2 = upload(to_bf16(q2));
      cuda::Buffer dout1(static_cast<std::size_t>(2 * nq) * sizeof(float));
      cuda::Buffer dwork(cuda::decode_attention_workspace(c.heads, c.kv, c.hd, 2));
      cuda::check(cudaMemset(dwork.data(), 0, dwork.size()), "decode workspace");
      cuda::DecodeAttnArgs d{dq2.as<cuda::bf16>(),
                             nq,
                             dseq.as<cuda::DecodeSeq>(),
                             0,
                             paged.geo,
                             dout1.as<float>(),
                             nq,
                             c.heads,
                             c.kv,
                             c.hd,
                             2,
                             dwork.data(),
                             2};
      cuda::decode_attention(nullptr, d);
      cuda::check(cudaDeviceSynchronize(), "decode attention");
      const auto got1 = download<float>(dout1, static_cast<std::size_t>(2 * nq));
      const double e1 = rel_l2(std::vector<float>(got1.begin(), got1.begin() + nq), want1);
      EXPECT_LE(e1, 1e-2) << "decode hd " << c.hd;
      // The second sequence: the same query against the first len2 keys only (CPU reference).
      std::vector<float> want2(static_cast<std::size_t>(nq));
      ops::attention_causal(q.data() + last * nq, 1, nq, c.heads, c.kv, c.hd, k.data(), v.data(), keys * c.hd,
                            len2 - 1, want2.data(), nq, nullptr);
      const double e2 = rel_l2(std::vector<float>(got1.begin() + nq, got1.end()), want2);
      EXPECT_LE(e2, 1e-2) << "decode (second sequence, " << len2 << " keys) hd " << c.hd;
    }
  }
  // Varlen (vision): segments of 64 (windows, some partial) and one long segment.
  for (const std::vector<std::int64_t>& cu :
       {std::vector<std::int64_t>{0, 64, 128, 160, 224, 240}, std::vector<std::int64_t>{0, 700}}) {
    const int hd = 80, heads = 16;
    const std::int64_t N = cu.back(), D = heads * hd;
    const auto q = random_vec(static_cast<std::size_t>(N * 3 * D), rng);
    std::vector<float> want(static_cast<std::size_t>(N * D));
    ops::attention_varlen(q.data(), q.data() + D, q.data() + 2 * D, 3 * D, heads, hd, cu, want.data(), D,
                          nullptr);
    std::vector<cuda::AttnItem> items;
    for (std::size_t s = 0; s + 1 < cu.size(); ++s)
      for (std::int64_t q0 = cu[s]; q0 < cu[s + 1]; q0 += 64)
        items.push_back({static_cast<int>(q0), static_cast<int>(std::min<std::int64_t>(64, cu[s + 1] - q0)),
                         static_cast<int>(cu[s]), static_cast<int>(cu[s + 1] - cu[s]), -1});
    auto dqkv = upload(to_bf16(q)), di = upload(items);
    cuda::Buffer dout(want.size() * sizeof(cuda::bf16));
    const cuda::bf16* base = dqkv.as<cuda::bf16>();
    cuda::AttnArgs a{base,
                     3 * D,
                     base + D,
                     base + 2 * D,
                     hd,
                     3 * D,
                     dout.as<cuda::bf16>(),
                     D,
                     heads,
                     heads,
                     hd,
                     di.as<cuda::AttnItem>(),
                     static_cast<int>(items.size())};
    cuda::attention(nullptr, a);
    cuda::check(cudaDeviceSynchronize(), "varlen attention");
    const double e = rel_l2(from_bf16(download<cuda::bf16>(dout, want.size())), want);
    EXPECT_LE(e, 1e-2) << "varlen segments " << cu.size() - 1;
    std::printf("[ cuda ops ] varlen attention hd 80, %zu segments: rel L2 %.2e\n", cu.size() - 1, e);
  }
}

TEST(CudaOps, RmsNormSiluRope) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(3);
  const std::int64_t rows = 5, dim = 3584, inter = 300;
  const auto x = random_vec(static_cast<std::size_t>(rows * dim), rng),
             w = random_vec(static_cast<std::size_t>(dim), rng);
  std::vector<float> want(x.size());
  ops::rms_norm(x.data(), rows, dim, w.data(), 1e-6f, want.data(), nullptr);
  auto dx = upload(x), dw = upload(w);
  cuda::Buffer dy(x.size() * sizeof(cuda::bf16));
  cuda::rms_norm(nullptr, dx.as<float>(), rows, dim, dim, dw.as<float>(), 1e-6f, dy.as<cuda::bf16>());
  const auto gu = random_vec(static_cast<std::size_t>(rows * 2 * inter), rng);
  std::vector<float> g(static_cast<std::size_t>(rows * inter)), u(g.size()), want_s(g.size());
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = 0; i < inter; ++i) {
      g[static_cast<std::size_t>(r * inter + i)] = gu[static_cast<std::size_t>(r * 2 * inter + i)];
      u[static_cast<std::size_t>(r * inter + i)] = gu[static_cast<std::size_t>(r * 2 * inter + inter + i)];
    }
  ops::silu_mul(g.data(), u.data(), want_s.data(), static_cast<std::int64_t>(g.size()), nullptr);
  auto dgu = upload(gu);
  cuda::Buffer ds(g.size() * sizeof(cuda::bf16));
  cuda::silu_mul(nullptr, dgu.as<float>(), rows, inter, ds.as<cuda::bf16>());
  cuda::check(cudaDeviceSynchronize(), "ops");
  EXPECT_LE(rel_l2(from_bf16(download<cuda::bf16>(dy, x.size())), want), 5e-3);
  EXPECT_LE(rel_l2(from_bf16(download<cuda::bf16>(ds, g.size())), want_s), 5e-3);
}

TEST(CudaOps, ArgmaxFirstOnTies) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(5);
  std::vector<float> l = random_vec(151936 * 2, rng);
  l[1234] = 50.0f;
  l[99999] = 50.0f;
  l[151936 + 151935] = 60.0f;
  auto dl = upload(l);
  cuda::Buffer out(2 * sizeof(std::int32_t));
  cuda::Buffer work(cuda::argmax_workspace(3, 151936));
  cuda::argmax_rows(nullptr, dl.as<float>(), 2, 151936, out.as<std::int32_t>(), work.data());
  const auto got = download<std::int32_t>(out, 2);
  EXPECT_EQ(got[0], 1234);
  EXPECT_EQ(got[1], 151935);
  // A NaN anywhere, or nothing above -inf: -1 (the engine then throws, as the host sampler does).
  std::vector<float> bad(3 * 1000, 0.5f);
  bad[777] = std::nanf("");
  std::fill(bad.begin() + 1000, bad.begin() + 2000, -INFINITY);
  bad[2000 + 999] = 2.0f;
  bad[2000 + 998] = INFINITY;
  auto db = upload(bad);
  cuda::Buffer out3(3 * sizeof(std::int32_t));
  cuda::argmax_rows(nullptr, db.as<float>(), 3, 1000, out3.as<std::int32_t>(), work.data());
  const auto got3 = download<std::int32_t>(out3, 3);
  EXPECT_EQ(got3[0], -1);
  EXPECT_EQ(got3[1], -1);
  EXPECT_EQ(got3[2], 998);
}

#endif  // MEDVISION_HAS_CUDA

// ---- whole model: CUDA vs CPU on the fixtures ----------------------------------------------------------

namespace {

const fs::path kFixtures = fs::path(MV_FIXTURES_DIR) / "model";

struct Pair {
  fs::path dir;
  nlohmann::json expected;
  std::vector<float> data;
  std::unique_ptr<Model> cpu, gpu;
  std::span<const float> array(const char* key) const {
    const auto& d = expected["data"];
    const auto off = d[key]["offset"].get<std::size_t>(), n = d[key]["count"].get<std::size_t>();
    return {data.data() + off, n};
  }
  ~Pair() {
    cpu.reset();
    gpu.reset();
    std::error_code ec;
    if (!dir.empty()) fs::remove_all(dir, ec);
  }
};

Pair& pair_for(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Pair>> cache;
  auto& slot = cache[name];
  if (slot) return *slot;
  auto p = std::make_unique<Pair>();
  const fs::path fdir = kFixtures / name;
  const auto fixture = nlohmann::json::parse(read_file(fdir / "fixture.json"));
  p->expected = nlohmann::json::parse(read_file(fdir / "expected.json"));
  const std::string blob = read_file(fdir / p->expected["data_file"].get<std::string>());
  p->data.resize(blob.size() / sizeof(float));
  std::memcpy(p->data.data(), blob.data(), p->data.size() * sizeof(float));
  p->dir = fs::temp_directory_path() / fmt::format("mv-gpu-{}-{}", name, ::getpid());
  RandomCheckpointOptions opt;
  opt.seed = fixture["seed"].get<std::uint64_t>();
  const std::string dt = fixture["dtype"].get<std::string>();
  opt.dtype = dt == "bf16" ? DType::kBF16 : dt == "f16" ? DType::kF16 : DType::kF32;
  opt.init_std = fixture.value("init_std", 0.02);
  write_random_checkpoint(random_checkpoint_config((fdir / "config.json").string()), p->dir, opt);
  p->cpu = Model::load(p->dir);
  LoadOptions g;
  g.device = "cuda";
  p->gpu = Model::load(p->dir, g);
  slot = std::move(p);
  return *slot;
}

std::vector<PixelValues> pixels(const Pair& p) {
  std::vector<PixelValues> out;
  const auto& grids = p.expected["image_grid_thw"];
  if (!grids.is_array() || grids.empty()) return out;
  const auto all = p.array("pixel_values");
  std::size_t off = 0;
  for (const auto& g : p.expected["image_grid_thw"]) {
    PixelValues px;
    px.grid_thw = {g[0].get<std::int64_t>(), g[1].get<std::int64_t>(), g[2].get<std::int64_t>()};
    px.rows = px.grid_thw[0] * px.grid_thw[1] * px.grid_thw[2];
    px.cols = p.expected["pixel_values"]["shape"][1].get<std::int64_t>();
    const auto n = static_cast<std::size_t>(px.rows * px.cols);
    px.data.assign(all.begin() + static_cast<std::ptrdiff_t>(off),
                   all.begin() + static_cast<std::ptrdiff_t>(off + n));
    off += n;
    out.push_back(std::move(px));
  }
  return out;
}

class CudaParity : public ::testing::TestWithParam<std::string> {};

// Rows the decode GEMV takes (batches above it go through cuBLASLt).
int cuda_gemv_rows() {
#if MEDVISION_HAS_CUDA
  return cuda::kGemvMaxRows;
#else
  return 8;
#endif
}

}  // namespace

TEST_P(CudaParity, VisionFeatures) {
  SKIP_WITHOUT_GPU();
  auto& p = pair_for(GetParam());
  const auto px = pixels(p);
  if (px.empty()) GTEST_SKIP() << "text-only fixture";
  const auto want = p.cpu->encode_images(px);
  const auto got = p.gpu->encode_images(px);
  ASSERT_EQ(got.size(), want.size());
  const double e = rel_l2(got, want);
  std::printf("[ cuda     ] %s: vision features rel L2 vs CPU %.2e\n", GetParam().c_str(), e);
  EXPECT_LE(e, kModelRelL2);
}

TEST_P(CudaParity, TeacherForcedLogitsEveryStep) {
  SKIP_WITHOUT_GPU();
  auto& p = pair_for(GetParam());
  const auto ids = p.expected["input_ids"].get<std::vector<std::int32_t>>();
  const auto tokens = p.expected["greedy_tokens"].get<std::vector<std::int32_t>>();
  const auto px = pixels(p);
  const std::size_t V = static_cast<std::size_t>(p.cpu->config().text.vocab_size);
  auto sc = p.cpu->new_session(static_cast<std::int64_t>(ids.size() + tokens.size()));
  auto sg = p.gpu->new_session(static_cast<std::int64_t>(ids.size() + tokens.size()));
  std::vector<float> lc(V), lg(V);
  p.cpu->prefill(*sc, ids, px, lc);
  p.gpu->prefill(*sg, ids, px, lg);
  EXPECT_EQ(sg->length(), sc->length());
  EXPECT_EQ(sg->rope_delta(), sc->rope_delta());
  const double e0 = rel_l2(lg, lc);
  const double ref = rel_l2(lg, p.array("last_logits"));
  std::printf("[ cuda     ] %s: last logits rel L2 vs CPU %.2e, vs transformers fp32 %.2e\n",
              GetParam().c_str(), e0, ref);
  EXPECT_LE(e0, kModelRelL2);
  double worst = e0;
  for (std::size_t s = 0; s + 1 < tokens.size(); ++s) {
    p.cpu->decode(*sc, tokens[s], lc);
    p.gpu->decode(*sg, tokens[s], lg);
    const double e = rel_l2(lg, lc);
    EXPECT_LE(e, kModelRelL2) << "step " << s + 1;
    worst = std::max(worst, e);
  }
  std::printf("[ cuda     ] %s: teacher-forced over %zu steps, worst rel L2 vs CPU %.2e\n",
              GetParam().c_str(), tokens.size(), worst);
}

// The fixture's prompt and images, and the last-position logits of prefill() with the images.
struct PromptPass {
  std::vector<std::int32_t> ids;
  std::vector<PixelValues> px;
  std::vector<std::array<std::int64_t, 3>> grids;
  std::vector<float> logits;
};
PromptPass prompt_pass(Pair& p) {
  PromptPass r;
  r.ids = p.expected["input_ids"].get<std::vector<std::int32_t>>();
  r.px = pixels(p);
  for (const auto& x : r.px) r.grids.push_back(x.grid_thw);
  r.logits.resize(static_cast<std::size_t>(p.gpu->config().text.vocab_size));
  auto s = p.gpu->new_session(static_cast<std::int64_t>(r.ids.size()));
  p.gpu->prefill(*s, r.ids, r.px, r.logits);
  return r;
}

// A prompt given in two prefill calls on one session (the second continues at the session's length, as a
// second turn does) gives the logits of one call: the second call's attention reads the first call's keys
// back from the paged cache (kv_page_copy into the staging cache), at positions that continue the first's.
TEST_P(CudaParity, PrefillInTwoCallsMatchesOneCall) {
  SKIP_WITHOUT_GPU();
  auto& p = pair_for(GetParam());
  const PromptPass q = prompt_pass(p);
  const auto& [ids, px, grids, a] = q;
  // Split after the last image-pad token (the images go with the first call), in the text that follows.
  const std::int32_t pad = p.gpu->config().image_token_id;
  std::size_t last_pad = 0;
  for (std::size_t i = 0; i < ids.size(); ++i)
    if (ids[i] == pad) last_pad = i + 1;
  const std::size_t cut = std::max(last_pad, ids.size() / 2);
  ASSERT_LT(cut, ids.size()) << "the prompt ends with its images";
  const std::vector<std::int32_t> first(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(cut));
  const std::vector<std::int32_t> second(ids.begin() + static_cast<std::ptrdiff_t>(cut), ids.end());
  auto s = p.gpu->new_session(static_cast<std::int64_t>(ids.size()));
  std::vector<float> l1(a.size()), b(a.size());
  p.gpu->prefill(*s, first, px, l1);
  p.gpu->prefill(*s, second, {}, b);
  EXPECT_EQ(s->length(), static_cast<std::int64_t>(ids.size()));
  const double e = rel_l2(b, a);
  std::printf("[ cuda     ] %s: prompt in two calls (%zu + %zu tokens) vs one call: rel L2 %.2e\n",
              GetParam().c_str(), first.size(), second.size(), e);
  EXPECT_LE(e, 1e-2);
  // And the CPU engine, given the prompt in the same two calls, agrees: within twice the parity bound, since
  // the f16 fixture's one-call distance (2.2e-2) already exceeds it; a continuation read from the wrong
  // positions differs by O(1).
  auto sc = p.cpu->new_session(static_cast<std::int64_t>(ids.size()));
  std::vector<float> c(a.size());
  p.cpu->prefill(*sc, first, px, c);
  p.cpu->prefill(*sc, second, {}, c);
  const double ec = rel_l2(b, c);
  std::printf("[ cuda     ] %s: prompt in two calls, GPU vs CPU: rel L2 %.2e\n", GetParam().c_str(), ec);
  EXPECT_LE(ec, 2 * kModelRelL2);
}

TEST_P(CudaParity, PrefillWithHostFeaturesMatchesPrefill) {
  SKIP_WITHOUT_GPU();
  auto& p = pair_for(GetParam());
  const PromptPass q = prompt_pass(p);
  const auto& [ids, px, grids, a] = q;
  const std::size_t V = a.size();
  auto s2 = p.gpu->new_session(static_cast<std::int64_t>(ids.size()));
  std::vector<float> b(V);
  p.gpu->prefill_with_features(*s2, ids, grids, p.gpu->encode_images(px), b);
  EXPECT_LE(rel_l2(b, a), 1e-6);
}

// Features left on the GPU (encode_images_resident) give the prefill of the in-one-call path, and their
// host copy equals encode_images.
TEST_P(CudaParity, PrefillWithResidentFeaturesMatchesPrefill) {
  SKIP_WITHOUT_GPU();
  auto& p = pair_for(GetParam());
  const PromptPass q = prompt_pass(p);
  const auto& [ids, px, grids, a] = q;
  const std::size_t V = a.size();
  auto s2 = p.gpu->new_session(static_cast<std::int64_t>(ids.size()));
  std::vector<float> b(V);
  const auto features = p.gpu->encode_images_resident(px);
  p.gpu->prefill_with_features(*s2, ids, grids, *features, b);
  EXPECT_LE(rel_l2(b, a), 1e-6);
  const auto host = features->host();
  const auto direct = p.gpu->encode_images(px);
  ASSERT_EQ(host.size(), direct.size());
  EXPECT_TRUE(std::equal(host.begin(), host.end(), direct.begin()));
  EXPECT_EQ(features->rows() * p.gpu->config().vision.out_hidden_size,
            static_cast<std::int64_t>(host.size()));
}

// Sessions of different lengths and rope deltas for batched decode: sequence i is the fixture's prompt
// (with its images) followed by i teacher-forced tokens, except sequence 1, a text-only prefix of the
// prompt (rope delta 0, shorter). Built the same way on any model, so that engines can be compared.
std::vector<std::unique_ptr<Session>> batch_sessions(Model& m, const Pair& p, int count, int extra_steps) {
  const auto ids = p.expected["input_ids"].get<std::vector<std::int32_t>>();
  const auto tokens = p.expected["greedy_tokens"].get<std::vector<std::int32_t>>();
  const auto px = pixels(p);
  const std::size_t V = static_cast<std::size_t>(m.config().text.vocab_size);
  std::vector<float> logits(V);
  std::vector<std::unique_ptr<Session>> out;
  for (int i = 0; i < count; ++i) {
    const auto cap = static_cast<std::int64_t>(ids.size()) + count + extra_steps + 2;
    auto s = m.new_session(cap);
    if (i == 1) {
      // Text before the first image (or the first half of a text-only prompt).
      std::size_t n = ids.size() / 2;
      const auto img = std::find(ids.begin(), ids.end(), m.config().image_token_id);
      const auto before = static_cast<std::size_t>(img - ids.begin());  // tokens before the first pad
      if (img != ids.end()) n = before > 1 ? before - 1 : 1;            // without <|vision_start|>
      m.prefill(*s, std::span<const std::int32_t>(ids.data(), n), {}, logits);
    } else {
      m.prefill(*s, ids, px, logits);
      for (int j = 0; j < i; ++j) m.decode(*s, tokens[static_cast<std::size_t>(j) % tokens.size()], logits);
    }
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<Session*> raw(const std::vector<std::unique_ptr<Session>>& v) {
  std::vector<Session*> out;
  for (const auto& s : v) out.push_back(s.get());
  return out;
}

// `steps` batched steps over `count` sequences on the GPU, against (a) the same sequences decoded one at a
// time on the GPU and (b) the CPU engine; returns the worst distances (batched vs one-at-a-time, vs CPU).
std::pair<double, double> batched_vs_sequential(Pair& p, int count, int steps) {
  const auto tokens = p.expected["greedy_tokens"].get<std::vector<std::int32_t>>();
  const std::size_t V = static_cast<std::size_t>(p.gpu->config().text.vocab_size);
  auto gb = batch_sessions(*p.gpu, p, count, steps);
  auto gs = batch_sessions(*p.gpu, p, count, steps);
  auto cs = batch_sessions(*p.cpu, p, count, steps);
  for (int i = 0; i < count; ++i) {
    EXPECT_EQ(gb[static_cast<std::size_t>(i)]->length(), cs[static_cast<std::size_t>(i)]->length());
    EXPECT_EQ(gb[static_cast<std::size_t>(i)]->rope_delta(), cs[static_cast<std::size_t>(i)]->rope_delta());
  }
  const auto rb = raw(gb);
  std::vector<float> lb(V * static_cast<std::size_t>(count)), ls(V), lc(V);
  double worst_seq = 0, worst_cpu = 0;
  for (int step = 0; step < steps; ++step) {
    std::vector<std::int32_t> tok(static_cast<std::size_t>(count));
    for (int i = 0; i < count; ++i)
      tok[static_cast<std::size_t>(i)] = tokens[static_cast<std::size_t>(step + 3 * i) % tokens.size()];
    p.gpu->decode_batch(rb, tok, lb);
    for (int i = 0; i < count; ++i) {
      const auto ui = static_cast<std::size_t>(i);
      p.gpu->decode(*gs[ui], tok[ui], ls);
      p.cpu->decode(*cs[ui], tok[ui], lc);
      const std::vector<float> row(lb.begin() + static_cast<std::ptrdiff_t>(ui * V),
                                   lb.begin() + static_cast<std::ptrdiff_t>((ui + 1) * V));
      worst_seq = std::max(worst_seq, rel_l2(row, ls));
      worst_cpu = std::max(worst_cpu, rel_l2(row, lc));
      EXPECT_EQ(gb[ui]->length(), cs[ui]->length());
    }
  }
  return {worst_seq, worst_cpu};
}

TEST_P(CudaParity, DecodeBatchMatchesOneAtATime) {
  SKIP_WITHOUT_GPU();
  auto& p = pair_for(GetParam());
  // 3 sequences: the GEMV path, whose rows do not depend on the batch (same operations in the same order;
  // the bound leaves room only for a different contraction into FMAs between the kernel's instances).
  const auto [seq, cpu] = batched_vs_sequential(p, 3, 4);
  std::printf("[ cuda     ] %s: decode_batch of 3, worst rel L2 vs one at a time %.2e, vs CPU %.2e\n",
              GetParam().c_str(), seq, cpu);
  EXPECT_LE(seq, 1e-5);
  EXPECT_LE(cpu, kModelRelL2);
}

TEST_P(CudaParity, DecodeBatchAboveGemvRowsMatchesCpu) {
  SKIP_WITHOUT_GPU();
  auto& p = pair_for(GetParam());
  // 11 sequences: cuBLASLt on bf16 activations, so only the engine bound holds against either reference.
  const auto [seq, cpu] = batched_vs_sequential(p, cuda_gemv_rows() + 3, 3);
  std::printf("[ cuda     ] %s: decode_batch of %d, worst rel L2 vs one at a time %.2e, vs CPU %.2e\n",
              GetParam().c_str(), cuda_gemv_rows() + 3, seq, cpu);
  EXPECT_LE(seq, kModelRelL2);
  EXPECT_LE(cpu, kModelRelL2);
}

// The decode step replayed from a CUDA graph gives the same bits as the same step launched kernel by
// kernel (MV_CUDA_GRAPHS=0), for one sequence and for a batch, over enough steps that the graph is
// captured (the first step of a shape runs directly, the second captures, later ones replay).
TEST_P(CudaParity, GraphAndDirectDecodeIdentical) {
  SKIP_WITHOUT_GPU();
  auto& p = pair_for(GetParam());
  setenv("MV_CUDA_GRAPHS", "0", 1);
  LoadOptions g;
  g.device = "cuda";
  auto direct = Model::load(p.dir, g);
  unsetenv("MV_CUDA_GRAPHS");
  const auto tokens = p.expected["greedy_tokens"].get<std::vector<std::int32_t>>();
  const std::size_t V = static_cast<std::size_t>(direct->config().text.vocab_size);
  for (const int count : {1, 3, cuda_gemv_rows() + 2}) {
    auto a = batch_sessions(*p.gpu, p, count, 5);
    auto b = batch_sessions(*direct, p, count, 5);
    const auto ra = raw(a), rb = raw(b);
    std::vector<float> la(V * static_cast<std::size_t>(count)), lb(la.size());
    std::vector<std::int32_t> na(static_cast<std::size_t>(count)), nb(na.size());
    for (int step = 0; step < 5; ++step) {
      std::vector<std::int32_t> tok(static_cast<std::size_t>(count));
      for (int i = 0; i < count; ++i)
        tok[static_cast<std::size_t>(i)] = tokens[static_cast<std::size_t>(step + i) % tokens.size()];
      if (step % 2 == 0) {
        p.gpu->decode_batch(ra, tok, la);
        direct->decode_batch(rb, tok, lb);
        const auto diff = std::mismatch(la.begin(), la.end(), lb.begin());
        ASSERT_TRUE(diff.first == la.end())
            << count << " sequences, step " << step << ": logit " << (diff.first - la.begin()) << " differs ("
            << *diff.first << " with the graph, " << *diff.second << " without)";
      } else {
        p.gpu->decode_batch_greedy(ra, tok, na);
        direct->decode_batch_greedy(rb, tok, nb);
        ASSERT_EQ(na, nb) << count << " sequences, step " << step;
      }
    }
  }
}

// Greedy picking on the device equals the host argmax of the logits of the same step.
TEST_P(CudaParity, GreedyOnDeviceEqualsHostArgmax) {
  SKIP_WITHOUT_GPU();
  auto& p = pair_for(GetParam());
  ASSERT_TRUE(p.gpu->greedy_on_device());
  const auto tokens = p.expected["greedy_tokens"].get<std::vector<std::int32_t>>();
  const std::size_t V = static_cast<std::size_t>(p.gpu->config().text.vocab_size);
  const int count = 3;
  auto a = batch_sessions(*p.gpu, p, count, 4);
  auto b = batch_sessions(*p.gpu, p, count, 4);
  const auto ra = raw(a), rb = raw(b);
  std::vector<float> logits(V * count);
  std::vector<std::int32_t> next(count);
  for (int step = 0; step < 4; ++step) {
    std::vector<std::int32_t> tok(count);
    for (int i = 0; i < count; ++i)
      tok[static_cast<std::size_t>(i)] = tokens[static_cast<std::size_t>(step + i) % tokens.size()];
    p.gpu->decode_batch_greedy(ra, tok, next);
    p.gpu->decode_batch(rb, tok, logits);
    for (int i = 0; i < count; ++i) {
      const auto row = logits.begin() + static_cast<std::ptrdiff_t>(i) * static_cast<std::ptrdiff_t>(V);
      const auto want =
          static_cast<std::int32_t>(std::max_element(row, row + static_cast<std::ptrdiff_t>(V)) - row);
      EXPECT_EQ(next[static_cast<std::size_t>(i)], want) << "sequence " << i << " step " << step;
    }
  }
}

TEST_P(CudaParity, DecodeBatchRejectsBadInput) {
  SKIP_WITHOUT_GPU();
  auto& p = pair_for(GetParam());
  const std::size_t V = static_cast<std::size_t>(p.gpu->config().text.vocab_size);
  auto s = batch_sessions(*p.gpu, p, 2, 1);
  auto cpu_s = batch_sessions(*p.cpu, p, 1, 1);
  std::vector<float> logits(2 * V);
  const std::vector<std::int32_t> tok{1, 2};
  const std::vector<Session*> dup{s[0].get(), s[0].get()}, with_null{s[0].get(), nullptr},
      foreign{s[0].get(), cpu_s[0].get()};
  EXPECT_THROW(p.gpu->decode_batch(dup, tok, logits), Error);
  EXPECT_THROW(p.gpu->decode_batch(with_null, tok, logits), Error);
  EXPECT_THROW(p.gpu->decode_batch(foreign, tok, logits), Error);
  const std::vector<Session*> ok{s[0].get(), s[1].get()};
  std::vector<float> small(V);
  EXPECT_THROW(p.gpu->decode_batch(ok, tok, small), Error);
  EXPECT_THROW(p.gpu->decode_batch(ok, std::vector<std::int32_t>{1}, logits), Error);
  const auto len0 = s[0]->length(), len1 = s[1]->length();
  EXPECT_THROW(p.gpu->decode_batch(ok, std::vector<std::int32_t>{1, -5}, logits), Error);
  EXPECT_EQ(s[0]->length(), len0);  // nothing was appended by the failed calls
  EXPECT_EQ(s[1]->length(), len1);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaParity,
                         ::testing::Values("tied_bf16_image", "untied_f16_two_images", "text_only_f32"),
                         [](const auto& info) { return info.param; });

#if MEDVISION_HAS_CUDA
// Kernel timings at the 7B shapes (printed, never asserted); only with MV_GPU_TIMINGS=1.
TEST(CudaTimings, KernelsAt7BShapes) {
  SKIP_WITHOUT_GPU();
  if (!std::getenv("MV_GPU_TIMINGS")) GTEST_SKIP() << "set MV_GPU_TIMINGS=1";
  std::mt19937 rng(1);
  using mv::test::time_ms;
  // Vision attention: 6768 patches, 16 heads of 80; windows of 64 and one full segment.
  const int hd = 80, heads = 16;
  const std::int64_t N = 6768, D = heads * hd;
  auto qkv = upload(to_bf16(random_vec(static_cast<std::size_t>(N * 3 * D), rng)));
  cuda::Buffer out(static_cast<std::size_t>(N * D) * sizeof(cuda::bf16));
  for (const std::int64_t seg : {std::int64_t{64}, N}) {
    std::vector<cuda::AttnItem> items;
    for (std::int64_t s0 = 0; s0 < N; s0 += seg)
      for (std::int64_t q0 = s0; q0 < std::min(N, s0 + seg); q0 += 64)
        items.push_back({static_cast<int>(q0),
                         static_cast<int>(std::min<std::int64_t>(64, std::min(N, s0 + seg) - q0)),
                         static_cast<int>(s0), static_cast<int>(std::min(N, s0 + seg) - s0), -1});
    auto di = upload(items);
    const cuda::bf16* b = qkv.as<cuda::bf16>();
    cuda::AttnArgs a{b,
                     3 * D,
                     b + D,
                     b + 2 * D,
                     hd,
                     3 * D,
                     out.as<cuda::bf16>(),
                     D,
                     heads,
                     heads,
                     hd,
                     di.as<cuda::AttnItem>(),
                     static_cast<int>(items.size())};
    const double flops = 4.0 * N * static_cast<double>(std::min(seg, N)) * D;
    for (const auto [kernel, name] :
         {std::pair{cuda::AttnKernel::kMma, "mma"}, std::pair{cuda::AttnKernel::kWmma, "wmma"}}) {
      const float ms = time_ms([&] { cuda::attention(nullptr, a, kernel); }, seg == N ? 10 : 20);
      std::printf("[ timing   ] vision attention (%s), segments of %lld: %.3f ms (%.1f TFLOP/s)\n", name,
                  static_cast<long long>(seg), ms, flops / ms / 1e9);
    }
  }
  // Causal prefill attention: 1727 tokens, 28 heads / 4 kv heads of 128.
  {
    const std::int64_t n = 1727, nq = 28 * 128;
    auto q = upload(to_bf16(random_vec(static_cast<std::size_t>(n * nq), rng)));
    auto kv = upload(to_bf16(random_vec(static_cast<std::size_t>(4 * n * 128), rng)));
    std::vector<cuda::AttnItem> items;
    for (std::int64_t q0 = 0; q0 < n; q0 += 64)
      items.push_back({static_cast<int>(q0), static_cast<int>(std::min<std::int64_t>(64, n - q0)), 0,
                       static_cast<int>(n), static_cast<int>(q0)});
    auto di = upload(items);
    cuda::Buffer o(static_cast<std::size_t>(n * nq) * sizeof(cuda::bf16));
    cuda::AttnArgs a{q.as<cuda::bf16>(),
                     nq,
                     kv.as<cuda::bf16>(),
                     kv.as<cuda::bf16>(),
                     n * 128,
                     128,
                     o.as<cuda::bf16>(),
                     nq,
                     28,
                     4,
                     128,
                     di.as<cuda::AttnItem>(),
                     static_cast<int>(items.size())};
    const double flops = 4.0 * 128 * 28 * (static_cast<double>(n) * (n + 1) / 2);  // visible (q, k) pairs
    for (const auto [kernel, name] :
         {std::pair{cuda::AttnKernel::kMma, "mma"}, std::pair{cuda::AttnKernel::kWmma, "wmma"}}) {
      const float ms = time_ms([&] { cuda::attention(nullptr, a, kernel); }, 20);
      std::printf(
          "[ timing   ] causal prefill attention (%s) 1727 tokens, 28/4 heads x 128: %.3f ms (%.1f "
          "TFLOP/s)\n",
          name, ms, flops / ms / 1e9);
    }
  }
  // Decode GEMV at the MLP shapes: bytes of weights over time.
  for (auto [n, k] :
       {std::array<std::int64_t, 2>{37888, 3584}, {3584, 18944}, {4608, 3584}, {151936, 3584}}) {
    cuda::Buffer w(static_cast<std::size_t>(n * k) * sizeof(cuda::bf16));
    cudaMemset(w.data(), 0x3f, w.size());
    auto x = upload(random_vec(static_cast<std::size_t>(k), rng));
    cuda::Buffer y(static_cast<std::size_t>(n) * sizeof(float));
    const float ms = time_ms(
        [&] {
          cuda::gemv(nullptr, x.as<float>(), 1, w.as<cuda::bf16>(), n, k, nullptr, y.as<float>(), false);
        },
        20);
    cuda::Gemm g;
    cuda::Buffer xb(static_cast<std::size_t>(k) * sizeof(cuda::bf16));
    cudaMemset(xb.data(), 0x3f, xb.size());
    const float ms2 = time_ms(
        [&] {
          g.run(nullptr, xb.as<cuda::bf16>(), 1, w.as<cuda::bf16>(), n, k, nullptr, y.as<float>(), false);
        },
        20);
    std::printf("[ timing   ] decode %lldx%lld: gemv %.3f ms (%.0f GB/s), cuBLASLt m=1 %.3f ms (%.0f GB/s)\n",
                static_cast<long long>(n), static_cast<long long>(k), ms, w.size() / ms / 1e6, ms2,
                w.size() / ms2 / 1e6);
  }
  // Decode GEMV with several rows at 37888x3584: the weights are read once whatever m is, so the time
  // should stay near the m = 1 time.
  {
    const std::int64_t n = 37888, k = 3584;
    cuda::Buffer w(static_cast<std::size_t>(n * k) * sizeof(cuda::bf16));
    cudaMemset(w.data(), 0x3f, w.size());
    auto x = upload(random_vec(static_cast<std::size_t>(8 * k), rng));
    cuda::Buffer y(static_cast<std::size_t>(8 * n) * sizeof(float));
    for (const int m : {1, 2, 4, 8}) {
      const float ms = time_ms(
          [&] {
            cuda::gemv(nullptr, x.as<float>(), m, w.as<cuda::bf16>(), n, k, nullptr, y.as<float>(), false);
          },
          20);
      std::printf("[ timing   ] decode gemv %lldx%lld, m=%d: %.3f ms (%.0f GB/s of weights)\n",
                  static_cast<long long>(n), static_cast<long long>(k), m, ms, w.size() / ms / 1e6);
    }
  }
  // Prefill GEMM: 1727 x 37888 x 3584.
  {
    const std::int64_t m = 1727, n = 37888, k = 3584;
    cuda::Buffer w(static_cast<std::size_t>(n * k) * 2), x(static_cast<std::size_t>(m * k) * 2),
        y(static_cast<std::size_t>(m * n) * 4);
    cudaMemset(w.data(), 0x3c, w.size());
    cudaMemset(x.data(), 0x3c, x.size());
    cuda::Gemm g;
    const float ms = time_ms(
        [&] {
          g.run(nullptr, x.as<cuda::bf16>(), m, w.as<cuda::bf16>(), n, k, nullptr, y.as<float>(), false);
        },
        10);
    std::printf("[ timing   ] prefill GEMM %lldx%lldx%lld: %.3f ms (%.0f TFLOP/s)\n",
                static_cast<long long>(m), static_cast<long long>(n), static_cast<long long>(k), ms,
                2.0 * m * n * k / ms / 1e9);
  }
}
#endif
