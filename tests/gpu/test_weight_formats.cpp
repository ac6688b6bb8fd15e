// Weight formats of the CUDA engine (label gpu, skipped without a GPU): NF4 quantization on the device
// against src/quant's CPU code bit for bit (codes, 8-bit scales, nested scales, offset, dequantized
// values), the NF4 GEMV and GEMM against the CPU NF4 linear, f16/f32 GEMV and GEMM against fp32, the
// NF4 model on the GPU against the NF4 model on the CPU, and `medvision quantize --device cuda` against
// the CPU command byte for byte.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "common/numeric.hpp"
#include "core/file.hpp"
#include "gpu/gpu_test_util.hpp"
#include "io/safetensors.hpp"
#include "model/qwen25vl/model.hpp"
#include "model/qwen25vl/random_checkpoint.hpp"
#include "ops/ops.hpp"
#include "quant/nf4.hpp"
#include "quant/nf4_checkpoint.hpp"

#if MEDVISION_HAS_CUDA
#include "model/qwen25vl/cuda_linear.hpp"
#include "ops/cuda/weight_formats.hpp"
#include "quant/nf4_cuda.hpp"
#endif

namespace fs = std::filesystem;
using namespace mv;
using namespace mv::qwen25vl;
using mv::test::rel_l2;

namespace {

std::uint16_t f32_to_bf16_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return static_cast<std::uint16_t>((u >> 16) | 0x40);
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<std::uint16_t>(u >> 16);
}
float bf16_bits_to_f32(std::uint16_t b) {
  const std::uint32_t u = std::uint32_t{b} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
float bf16_round(float f) { return bf16_bits_to_f32(f32_to_bf16_bits(f)); }

// Host array of `n` values of dtype dt from fp32 values (bf16 / f16 rounded to nearest even).
std::vector<std::uint8_t> encode(const std::vector<float>& v, DType dt) {
  std::vector<std::uint8_t> out(v.size() * dtype_size(dt));
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (dt == DType::kF32) {
      std::memcpy(out.data() + 4 * i, &v[i], 4);
    } else {
      const std::uint16_t h = dt == DType::kBF16 ? f32_to_bf16_bits(v[i]) : f32_to_f16(v[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

bool same_bits(const void* a, const void* b, std::size_t n) { return n == 0 || std::memcmp(a, b, n) == 0; }

}  // namespace

#if MEDVISION_HAS_CUDA

namespace {

using mv::test::download;
using mv::test::upload;

// Quantizes `values` (stored as dt) on the CPU and on the GPU and checks every output bit.
void expect_identical_quantization(const std::vector<float>& values, DType dt, const std::string& what) {
  const auto host = encode(values, dt);
  const auto n = static_cast<std::int64_t>(values.size());
  const quant::Nf4Tensor cpu = quant::quantize_nf4(host.data(), dt, {n});
  auto src = upload(host);
  const quant::Nf4Device dev = quant::quantize_nf4_device(nullptr, src.data(), dt, n);
  const quant::Nf4Tensor gpu = quant::download_nf4(nullptr, dev, {n}, dt);
  ASSERT_EQ(gpu.packed.size(), cpu.packed.size()) << what;
  EXPECT_TRUE(same_bits(gpu.packed.data(), cpu.packed.data(), cpu.packed.size())) << what << ": codes differ";
  ASSERT_EQ(gpu.absmax_q.size(), cpu.absmax_q.size()) << what;
  EXPECT_TRUE(same_bits(gpu.absmax_q.data(), cpu.absmax_q.data(), cpu.absmax_q.size()))
      << what << ": 8-bit scales differ";
  ASSERT_EQ(gpu.nested_absmax.size(), cpu.nested_absmax.size()) << what;
  EXPECT_TRUE(same_bits(gpu.nested_absmax.data(), cpu.nested_absmax.data(), 4 * cpu.nested_absmax.size()))
      << what << ": nested scales differ";
  EXPECT_TRUE(same_bits(&gpu.offset, &cpu.offset, 4))
      << what << ": offset " << gpu.offset << " vs " << cpu.offset;
  // Dequantized values: fp32 bit for bit; bf16 = the CPU's fp32 rounded to nearest even.
  std::vector<float> want(static_cast<std::size_t>(n));
  quant::dequantize(cpu.view(), want);
  cuda::Buffer out32(static_cast<std::size_t>(std::max<std::int64_t>(n, 1)) * 4),
      out16(static_cast<std::size_t>(std::max<std::int64_t>(n, 1)) * 2);
  cuda::nf4_dequantize(nullptr, dev.ref(), out32.as<float>());
  cuda::nf4_dequantize(nullptr, dev.ref(), out16.as<cuda::bf16>());
  const auto got32 = download<float>(out32, want.size());
  const auto got16 = download<std::uint16_t>(out16, want.size());
  std::size_t bad32 = 0, bad16 = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    bad32 += same_bits(&got32[i], &want[i], 4) ? 0 : 1;
    bad16 += got16[i] == f32_to_bf16_bits(want[i]) ? 0 : 1;
  }
  EXPECT_EQ(bad32, 0u) << what << ": fp32 dequantized values differ";
  EXPECT_EQ(bad16, 0u) << what << ": bf16 dequantized values differ";
  // The checkpoint's own tables uploaded as they are decode the same way.
  const quant::Nf4Device up = quant::upload_nf4(nullptr, cpu.view());
  cuda::nf4_dequantize(nullptr, up.ref(), out32.as<float>());
  EXPECT_TRUE(same_bits(download<float>(out32, want.size()).data(), want.data(), 4 * want.size())) << what;
}

}  // namespace

TEST(Nf4Cuda, HandMadeBlocksBitIdentical) {
  SKIP_WITHOUT_GPU();
  const auto& t = quant::kNf4Thresholds;
  // Thresholds exactly (absmax 1: x̂ = w, ties go down), and one ulp on either side.
  std::vector<float> ties{1.0f};
  for (float th : t) {
    ties.push_back(th);
    ties.push_back(std::nextafter(th, 2.0f));
    ties.push_back(std::nextafter(th, -2.0f));
  }
  ties.resize(64, 0.25f);
  std::vector<float> zeros(64, 0.0f), equal(64, -0.75f), mixed(130, 0.0f);
  for (std::size_t i = 0; i < mixed.size(); ++i)
    mixed[i] = (i % 3 == 0) ? -1.5f : 0.5f * static_cast<float>(i % 7);
  std::vector<float> nans(64, 0.3f);
  nans[5] = std::numeric_limits<float>::quiet_NaN();
  nans[6] = -2.0f;
  std::vector<float> all_nan(64, std::numeric_limits<float>::quiet_NaN());
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    const std::string d = dtype_name(dt);
    expect_identical_quantization(ties, dt, d + " ties");
    expect_identical_quantization(zeros, dt, d + " zeros");
    expect_identical_quantization(equal, dt, d + " all equal");
    expect_identical_quantization(mixed, dt, d + " mixed 130");
    expect_identical_quantization(nans, dt, d + " NaN element");
    expect_identical_quantization(all_nan, dt, d + " all NaN");
  }
}

TEST(Nf4Cuda, SizesAndRandomMatrixBitIdentical) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(5);
  std::normal_distribution<float> g(0.0f, 0.02f);
  for (std::int64_t n : {1, 2, 63, 65, 127, 129, 1000, 4097, 6144, 64 * 256 + 13, 64 * 257, 300 * 3420}) {
    std::vector<float> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = g(rng);
    if (n > 200) v[100] = 0.5f;  // one large block maximum moves the offset and the nested scales
    for (DType dt : {DType::kBF16, DType::kF32, DType::kF16})
      expect_identical_quantization(v, dt, fmt::format("{} n={}", dtype_name(dt), n));
  }
}

namespace {

// CPU NF4 linear of bf16-stored weights [n, k] vs the device: the fused GEMV (every row count up to
// kGemvMaxRows, bias and accumulation, output row stride) and the GEMM through a DLinear.
void check_nf4_linear(std::int64_t n, std::int64_t k, std::mt19937& rng) {
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> w(static_cast<std::size_t>(n * k)), bias(static_cast<std::size_t>(n));
  for (auto& v : w) v = bf16_round(0.05f * g(rng));
  for (auto& v : bias) v = g(rng);
  const auto wb = encode(w, DType::kBF16);
  const quant::Nf4Tensor q = quant::quantize_nf4(wb.data(), DType::kBF16, {n, k});
  const quant::Nf4View view = q.view();
  const ops::Matrix mq{q.packed.data(), DType::kU8, n, k, &view};
  const quant::Nf4Device dev = quant::upload_nf4(nullptr, view);
  const std::int64_t M = cuda::kGemvMaxRows, ldy = n + 3;
  std::vector<float> x(static_cast<std::size_t>(M * k)), y0(static_cast<std::size_t>(M * ldy));
  for (auto& v : x) v = g(rng);
  for (auto& v : y0) v = g(rng);
  auto dx = upload(x), db = upload(bias);
  for (int m = 1; m <= M; ++m) {
    std::vector<float> want(static_cast<std::size_t>(m * n));
    ops::linear(x.data(), m, mq, bias.data(), want.data(), nullptr);
    for (int i = 0; i < m; ++i)
      for (std::int64_t r = 0; r < n; ++r)
        want[static_cast<std::size_t>(i * n + r)] += y0[static_cast<std::size_t>(i * ldy + r)];
    auto dy = upload(y0);
    cuda::nf4_gemv(nullptr, dx.as<float>(), m, dev.ref(), n, k, db.as<float>(), dy.as<float>(), ldy, true);
    const auto got_all = download<float>(dy, y0.size());
    std::vector<float> got(want.size());
    for (int i = 0; i < m; ++i)
      for (std::int64_t r = 0; r < n; ++r)
        got[static_cast<std::size_t>(i * n + r)] = got_all[static_cast<std::size_t>(i * ldy + r)];
    EXPECT_LE(rel_l2(got, want), 1e-5) << "nf4 gemv " << m << "x" << n << "x" << k;
    for (int i = 0; i < m; ++i)  // the padding columns of the output rows are untouched
      for (std::int64_t r = n; r < ldy; ++r)
        EXPECT_EQ(got_all[static_cast<std::size_t>(i * ldy + r)], y0[static_cast<std::size_t>(i * ldy + r)]);
  }
  // GEMM through a DLinear, on bf16 activations. Up to kNf4GemvGemmRows rows (decode batches) it runs the
  // fused NF4 GEMM where it is usable (w = bf16(level)·a', within half a bf16 ulp of w': against the CPU
  // NF4 linear the bf16 rounding bounds the difference; tests/gpu/test_nf4_gemm.cpp checks its exact
  // arithmetic), else the fused GEMV in groups: exact up to fp32 rounding against the CPU NF4 linear.
  // Above, it dequantizes to bf16 and runs a bf16 GEMM: exact up to fp32 rounding against the CPU on the
  // same bf16 operands, and against the CPU NF4 linear (fp32 w') the bf16 rounding of w' (<= 2^-9
  // relative) bounds the difference.
  cudaStream_t s = nullptr;
  cuda::Gemm gemm;
  cuda::Buffer scratch;
  cudaeng::LinearContext lc{s, &gemm, &scratch};
  qwen25vl::Linear lin;
  lin.w = mq;
  lin.bias = bias;
  cudaeng::DLinear dl;
  {
    cudaeng::Uploader up(s);
    dl = cudaeng::single(up, lin);
  }
  ASSERT_EQ(dl.format, cudaeng::WeightFormat::kNF4);
  std::vector<float> wq(w.size()), wq16(w.size());
  quant::dequantize(view, wq);
  for (std::size_t i = 0; i < wq.size(); ++i) wq16[i] = bf16_round(wq[i]);
  for (const std::int64_t rows : {std::int64_t{37}, cudaeng::kNf4GemvGemmRows + 5}) {
    std::vector<float> xa(static_cast<std::size_t>(rows * k));
    for (auto& v : xa) v = bf16_round(g(rng));
    std::vector<float> want(static_cast<std::size_t>(rows * n)), want16(want.size()), y0(want.size());
    for (auto& v : y0) v = 0.1f * g(rng);  // small: the residual must not hide the product's error
    ops::linear(xa.data(), rows, mq, bias.data(), want.data(), nullptr);
    ops::linear(xa.data(), rows, ops::Matrix{wq16.data(), DType::kF32, n, k}, bias.data(), want16.data(),
                nullptr);
    for (std::size_t i = 0; i < want.size(); ++i) {  // accumulate = true
      want[i] += y0[i];
      want16[i] += y0[i];
    }
    std::vector<cuda::bf16> xb(xa.size());
    for (std::size_t i = 0; i < xa.size(); ++i) xb[i] = __float2bfloat16(xa[i]);
    auto dxa = upload(xb);
    auto dy = upload(y0);
    dl.gemm(lc, dxa.as<cuda::bf16>(), rows, dy.as<float>(), true);
    const auto got = download<float>(dy, want.size());
    const double e16 = rel_l2(got, want16), e = rel_l2(got, want);
    std::printf(
        "[ nf4      ] gemm %lldx%lldx%lld: rel L2 %.2e vs CPU on bf16 w', %.2e vs the CPU NF4 linear\n",
        static_cast<long long>(rows), static_cast<long long>(n), static_cast<long long>(k), e16, e);
    if (rows <= cudaeng::kNf4GemvGemmRows) {
      if (dl.nf4_gemm_usable())
        EXPECT_LE(e, 4e-3) << "fused NF4 GEMM path, " << rows << " rows";
      else
        EXPECT_LE(e, 1e-5) << "grouped GEMV path, " << rows << " rows";
    } else {
      EXPECT_LE(e16, 1e-5) << "bf16 GEMM path, " << rows << " rows";
      EXPECT_LE(e, 4e-3) << "bf16 GEMM path, " << rows << " rows";
    }
  }
  // The DLinear GEMV (one part): the fused NF4 GEMM on x rounded to bf16 where usable (the bound as above),
  // else the NF4 GEMV, exact up to fp32 rounding.
  std::vector<float> want1(static_cast<std::size_t>(n)), x16(x.begin(), x.begin() + k);
  for (auto& v : x16) v = bf16_round(v);
  const bool fused = dl.nf4_gemm_usable();
  ops::linear(fused ? x16.data() : x.data(), 1, mq, bias.data(), want1.data(), nullptr);
  cuda::Buffer dy1(static_cast<std::size_t>(n) * 4);
  dl.gemv(lc, dx.as<float>(), 1, dy1.as<float>(), false);
  EXPECT_LE(rel_l2(download<float>(dy1, want1.size()), want1), fused ? 4e-3 : 1e-5);
}

}  // namespace

TEST(Nf4Cuda, GemvAndGemmMatchCpuNf4Linear) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(3);
  // 3584 / 18944 / 2048 / 96: the 16-byte path (teams of 4, 8, 2 and 1 warps; 70 and 45 rows end inside
  // a team and leave whole teams of the last block without rows); 3420 (vision down_proj): blocks
  // straddle rows; 45: odd shapes.
  for (auto [n, k] :
       {std::array<std::int64_t, 2>{64, 3584}, {40, 18944}, {70, 2048}, {37, 3420}, {45, 96}, {33, 45}})
    check_nf4_linear(n, k, rng);
}

// q/k/v as separate NF4 parts in one layer, one part left in 16 bits: each part keeps its own blocks.
TEST(Nf4Cuda, FusedPartsKeepTheirOwnQuantization) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(4);
  std::normal_distribution<float> g(0.0f, 0.05f);
  const std::int64_t k = 96;
  const std::int64_t rows[3] = {64, 16, 16};
  std::vector<std::vector<float>> w(3);
  std::vector<std::vector<std::uint8_t>> wb(3);
  std::vector<quant::Nf4Tensor> q;
  std::vector<quant::Nf4View> views(3);
  std::vector<qwen25vl::Linear> lin(3);
  for (int p = 0; p < 3; ++p) {
    w[p].resize(static_cast<std::size_t>(rows[p] * k));
    for (auto& v : w[p]) v = bf16_round(g(rng));
    wb[p] = encode(w[p], DType::kBF16);
    lin[p].bias.assign(static_cast<std::size_t>(rows[p]), 0.1f * static_cast<float>(p + 1));
  }
  for (int p = 0; p < 2; ++p) q.push_back(quant::quantize_nf4(wb[p].data(), DType::kBF16, {rows[p], k}));
  for (int p = 0; p < 2; ++p) {
    views[p] = q[p].view();
    lin[p].w = ops::Matrix{q[p].packed.data(), DType::kU8, rows[p], k, &views[p]};
  }
  lin[2].w = ops::Matrix{wb[2].data(), DType::kBF16, rows[2], k};  // left unquantized
  std::vector<float> x(static_cast<std::size_t>(2 * k));
  for (auto& v : x) v = g(rng) * 20.0f;
  std::vector<float> want;
  for (int i = 0; i < 2; ++i)
    for (int p = 0; p < 3; ++p) {
      std::vector<float> y(static_cast<std::size_t>(rows[p]));
      ops::linear(x.data() + i * k, 1, lin[p].w, lin[p].b(), y.data(), nullptr);
      want.insert(want.end(), y.begin(), y.end());
    }
  cudaeng::DLinear dl;
  {
    cudaeng::Uploader up(nullptr);
    dl = cudaeng::fuse(up, {&lin[0], &lin[1], &lin[2]});
  }
  ASSERT_EQ(dl.format, cudaeng::WeightFormat::kNF4);
  ASSERT_EQ(dl.parts.size(), 3u);
  cuda::Gemm gemm;
  cuda::Buffer scratch;
  cudaeng::LinearContext lc{nullptr, &gemm, &scratch};
  auto dx = upload(x);
  cuda::Buffer dy(want.size() * 4);
  dl.gemv(lc, dx.as<float>(), 2, dy.as<float>(), false);
  EXPECT_LE(rel_l2(download<float>(dy, want.size()), want), 1e-5);
}

TEST(CudaDense, F16AndF32WeightsKeepTheirPrecision) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(8);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (DType dt : {DType::kF16, DType::kF32}) {
    for (auto [n, k] : {std::array<std::int64_t, 2>{4608, 3584}, {37, 1000}, {64, 36}, {19, 45}}) {
      std::vector<float> w(static_cast<std::size_t>(n * k)), bias(static_cast<std::size_t>(n));
      for (auto& v : w) v = 0.05f * g(rng);
      if (dt == DType::kF16)
        for (auto& v : w) v = f16_to_f32(f32_to_f16(v));
      for (auto& v : bias) v = g(rng);
      const auto wraw = encode(w, dt);
      qwen25vl::Linear lin;
      lin.w = ops::Matrix{wraw.data(), dt, n, k};
      lin.bias = bias;
      cudaeng::DLinear dl;
      {
        cudaeng::Uploader up(nullptr);
        dl = cudaeng::single(up, lin);
      }
      EXPECT_EQ(dl.format, dt == DType::kF16 ? cudaeng::WeightFormat::kF16 : cudaeng::WeightFormat::kF32);
      cuda::Gemm gemm;
      cuda::Buffer scratch;
      cudaeng::LinearContext lc{nullptr, &gemm, &scratch};
      const int M = cuda::kGemvMaxRows;
      std::vector<float> x(static_cast<std::size_t>(M * k));
      for (auto& v : x) v = g(rng);
      auto dx = upload(x);
      for (int m : {1, M}) {  // fp32 activations, weights in their own precision: fp32 rounding only
        std::vector<float> want(static_cast<std::size_t>(m * n));
        ops::linear(x.data(), m, ops::Matrix{w.data(), DType::kF32, n, k}, bias.data(), want.data(), nullptr);
        cuda::Buffer dy(want.size() * 4);
        dl.gemv(lc, dx.as<float>(), m, dy.as<float>(), false);
        EXPECT_LE(rel_l2(download<float>(dy, want.size()), want), 1e-5)
            << dtype_name(dt) << " gemv " << m << "x" << n << "x" << k;
      }
      // GEMM on bf16 activations: converted exactly to f16 / fp32, so only fp32 accumulation differs.
      const std::int64_t rows = 33;
      std::vector<float> xa(static_cast<std::size_t>(rows * k));
      std::vector<cuda::bf16> xb(xa.size());
      for (std::size_t i = 0; i < xa.size(); ++i) {
        xa[i] = bf16_round(g(rng));
        xb[i] = __float2bfloat16(xa[i]);
      }
      std::vector<float> want(static_cast<std::size_t>(rows * n));
      ops::linear(xa.data(), rows, ops::Matrix{w.data(), DType::kF32, n, k}, bias.data(), want.data(),
                  nullptr);
      auto dxb = upload(xb);
      cuda::Buffer dy(want.size() * 4);
      dl.gemm(lc, dxb.as<cuda::bf16>(), rows, dy.as<float>(), false);
      EXPECT_LE(rel_l2(download<float>(dy, want.size()), want), 1e-5)
          << dtype_name(dt) << " gemm " << n << "x" << k;
    }
  }
}

#endif  // MEDVISION_HAS_CUDA

// ---- the NF4 model on the GPU vs on the CPU --------------------------------------------------------------

namespace {

const fs::path kFixtures = fs::path(MV_FIXTURES_DIR) / "model";

// Random checkpoints of the fixtures, written once per process and removed at exit.
struct Made {
  std::map<std::string, fs::path> dirs;
  ~Made() {
    std::error_code ec;
    for (const auto& [name, p] : dirs) fs::remove_all(p, ec);
  }
};

fs::path fixture_checkpoint(const std::string& name) {
  static Made made;
  auto& p = made.dirs[name];
  if (!p.empty()) return p;
  const fs::path fdir = kFixtures / name;
  const auto fixture = nlohmann::json::parse(read_file(fdir / "fixture.json"));
  RandomCheckpointOptions opt;
  opt.seed = fixture["seed"].get<std::uint64_t>();
  const std::string dt = fixture["dtype"].get<std::string>();
  opt.dtype = dt == "bf16" ? DType::kBF16 : dt == "f16" ? DType::kF16 : DType::kF32;
  opt.init_std = fixture.value("init_std", 0.02);
  p = fs::temp_directory_path() / fmt::format("mv-gpu-nf4-{}-{}", name, ::getpid());
  write_random_checkpoint(random_checkpoint_config((fdir / "config.json").string()), p, opt);
  return p;
}

struct Expected {
  nlohmann::json j;
  std::vector<float> data;
  std::span<const float> array(const char* key) const {
    const auto off = j["data"][key]["offset"].get<std::size_t>(),
               n = j["data"][key]["count"].get<std::size_t>();
    return {data.data() + off, n};
  }
};

Expected expected_for(const std::string& name) {
  Expected e;
  const fs::path fdir = kFixtures / name;
  e.j = nlohmann::json::parse(read_file(fdir / "expected.json"));
  const std::string blob = read_file(fdir / e.j["data_file"].get<std::string>());
  e.data.resize(blob.size() / sizeof(float));
  std::memcpy(e.data.data(), blob.data(), e.data.size() * sizeof(float));
  return e;
}

std::vector<PixelValues> pixels(const Expected& e) {
  std::vector<PixelValues> out;
  const auto& grids = e.j["image_grid_thw"];
  if (!grids.is_array() || grids.empty()) return out;
  const auto all = e.array("pixel_values");
  std::size_t off = 0;
  for (const auto& g : grids) {
    PixelValues px;
    px.grid_thw = {g[0].get<std::int64_t>(), g[1].get<std::int64_t>(), g[2].get<std::int64_t>()};
    px.rows = px.grid_thw[0] * px.grid_thw[1] * px.grid_thw[2];
    px.cols = e.j["pixel_values"]["shape"][1].get<std::int64_t>();
    const auto n = static_cast<std::size_t>(px.rows * px.cols);
    px.data.assign(all.begin() + static_cast<std::ptrdiff_t>(off),
                   all.begin() + static_cast<std::ptrdiff_t>(off + n));
    off += n;
    out.push_back(std::move(px));
  }
  return out;
}

// Last-position logits and every teacher-forced step: GPU vs CPU within 2e-2.
void compare_models(Model& cpu, Model& gpu, const Expected& e, const std::string& what) {
  const auto ids = e.j["input_ids"].get<std::vector<std::int32_t>>();
  const auto tokens = e.j["greedy_tokens"].get<std::vector<std::int32_t>>();
  const auto px = pixels(e);
  const auto V = static_cast<std::size_t>(cpu.config().text.vocab_size);
  auto sc = cpu.new_session(static_cast<std::int64_t>(ids.size() + tokens.size()));
  auto sg = gpu.new_session(static_cast<std::int64_t>(ids.size() + tokens.size()));
  std::vector<float> lc(V), lg(V);
  cpu.prefill(*sc, ids, px, lc);
  gpu.prefill(*sg, ids, px, lg);
  double worst = rel_l2(lg, lc);
  EXPECT_LE(worst, 2e-2) << what << " prefill";
  for (std::size_t s = 0; s + 1 < tokens.size(); ++s) {
    cpu.decode(*sc, tokens[s], lc);
    gpu.decode(*sg, tokens[s], lg);
    const double d = rel_l2(lg, lc);
    EXPECT_LE(d, 2e-2) << what << " step " << s + 1;
    worst = std::max(worst, d);
  }
  std::printf("[ nf4      ] %s: worst rel L2 GPU vs CPU over prefill + %zu steps %.2e\n", what.c_str(),
              tokens.size(), worst);
}

class Nf4ModelParity : public ::testing::TestWithParam<std::string> {};

}  // namespace

TEST_P(Nf4ModelParity, QuantizeAtLoadGpuMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const fs::path dir = fixture_checkpoint(GetParam());
  LoadOptions c, g;
  c.quantize = g.quantize = "nf4";
  g.device = "cuda";
  auto cpu = Model::load(dir, c);
  auto gpu = Model::load(dir, g);
  compare_models(*cpu, *gpu, expected_for(GetParam()), GetParam() + " --quantize nf4");
}

TEST_P(Nf4ModelParity, Nf4CheckpointGpuMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const fs::path dir = fixture_checkpoint(GetParam());
  const fs::path out = dir.string() + "-nf4";
  quant::QuantizeCheckpointOptions o;
  o.overwrite = true;
  quant::quantize_checkpoint(dir, out, o);
  LoadOptions g;
  g.device = "cuda";
  auto cpu = Model::load(out);
  auto gpu = Model::load(out, g);
  compare_models(*cpu, *gpu, expected_for(GetParam()), GetParam() + " NF4 checkpoint");
  std::error_code ec;
  fs::remove_all(out, ec);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Nf4ModelParity,
                         ::testing::Values("tied_bf16_image", "untied_f16_two_images", "text_only_f32"),
                         [](const auto& info) { return info.param; });

#if MEDVISION_HAS_CUDA
// `medvision quantize --device cuda` writes the same bytes as the CPU command.
TEST(Nf4Cuda, QuantizeCommandOnGpuWritesTheSameFiles) {
  SKIP_WITHOUT_GPU();
  const fs::path dir = fixture_checkpoint("untied_f16_two_images");
  const fs::path a = dir.string() + "-cpu", b = dir.string() + "-gpu";
  quant::QuantizeCheckpointOptions o;
  o.overwrite = true;
  quant::quantize_checkpoint(dir, a, o);
  quant::CudaQuantizer q(0);
  o.quantizer = [&q](const void* data, DType dt, const std::vector<std::int64_t>& shape) {
    return q.quantize(data, dt, shape);
  };
  quant::quantize_checkpoint(dir, b, o);
  std::size_t files = 0;
  for (const auto& e : fs::directory_iterator(a)) {
    if (e.path().extension() != ".safetensors") continue;
    ++files;
    EXPECT_EQ(read_file(e.path()), read_file(b / e.path().filename())) << e.path().filename();
  }
  EXPECT_GT(files, 0u);
  std::error_code ec;
  fs::remove_all(a, ec);
  fs::remove_all(b, ec);
}
#endif

// At the 7B shapes (GPU machine only, set MV_NF4_7B=<bf16 checkpoint> and MV_NF4_7B_Q=<its NF4 copy>;
// MV_NF4_JSON names the report): the NF4 model (the checkpoint, and quantizing at load) against the bf16
// model, teacher-forced over the bf16 model's greedy tokens after a fixed text prompt: relative L2 of
// the logits and top-1 agreement at every position. Printed and written, bounded loosely (NF4 is lossy).
TEST(Nf4At7B, LogitsAgainstBf16) {
  SKIP_WITHOUT_GPU();
  const char* base = std::getenv("MV_NF4_7B");
  const char* qdir = std::getenv("MV_NF4_7B_Q");
  if (!base || !qdir) GTEST_SKIP() << "set MV_NF4_7B and MV_NF4_7B_Q";
  LoadOptions g;
  g.device = "cuda";
  auto ref = Model::load(base, g);
  auto nf4 = Model::load(qdir, g);
  LoadOptions gq = g;
  gq.quantize = "nf4";
  auto at_load = Model::load(base, gq);
  const auto V = static_cast<std::size_t>(ref->config().text.vocab_size);
  std::mt19937 rng(17);
  std::uniform_int_distribution<std::int32_t> tok(0, 150000);
  std::vector<std::int32_t> ids(128);
  for (auto& t : ids) t = tok(rng);
  const int steps = 64;
  auto s0 = ref->new_session(static_cast<std::int64_t>(ids.size()) + steps + 1);
  auto s1 = nf4->new_session(static_cast<std::int64_t>(ids.size()) + steps + 1);
  auto s2 = at_load->new_session(static_cast<std::int64_t>(ids.size()) + steps + 1);
  std::vector<float> l0(V), l1(V), l2(V);
  ref->prefill(*s0, ids, {}, l0);
  nf4->prefill(*s1, ids, {}, l1);
  at_load->prefill(*s2, ids, {}, l2);
  auto argmax = [](const std::vector<float>& v) {
    return static_cast<std::int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
  };
  std::vector<double> rel;
  int agree = 0;
  double at_load_vs_file = 0.0;
  for (int s = 0;; ++s) {
    rel.push_back(rel_l2(l1, l0));
    agree += argmax(l1) == argmax(l0) ? 1 : 0;
    at_load_vs_file = std::max(at_load_vs_file, rel_l2(l2, l1));
    if (s == steps) break;
    const std::int32_t next = argmax(l0);  // teacher forcing on the bf16 model's greedy token
    ref->decode(*s0, next, l0);
    nf4->decode(*s1, next, l1);
    at_load->decode(*s2, next, l2);
  }
  std::vector<double> sorted = rel;
  std::sort(sorted.begin(), sorted.end());
  nlohmann::json j;
  j["positions"] = rel.size();
  j["rel_l2_last_prompt_position"] = rel.front();
  j["rel_l2_median"] = sorted[sorted.size() / 2];
  j["rel_l2_max"] = sorted.back();
  j["top1_agreement"] = static_cast<double>(agree) / static_cast<double>(rel.size());
  j["quantize_at_load_vs_checkpoint_rel_l2_max"] = at_load_vs_file;
  std::printf("[ nf4 7B   ] %s\n", j.dump().c_str());
  if (const char* out = std::getenv("MV_NF4_JSON")) write_file(out, j.dump(2) + "\n");
  EXPECT_LE(at_load_vs_file, 1e-5);  // the same codes and scales either way
  // NF4 vs bf16 is reported, not bounded: with random weights a 28-layer network decorrelates under 4-bit
  // weight noise (measured ~1.0 relative L2 on the H100), so no bound here would say anything about a
  // trained model. The kernels' exactness is checked against the CPU on these shapes (Nf4Cuda.*).
}

#if MEDVISION_HAS_CUDA
// NF4 kernel timings at the 7B shapes (printed, never asserted); only with MV_GPU_TIMINGS=1.
TEST(Nf4Timings, KernelsAt7BShapes) {
  SKIP_WITHOUT_GPU();
  if (!std::getenv("MV_GPU_TIMINGS")) GTEST_SKIP() << "set MV_GPU_TIMINGS=1";
  using mv::test::time_ms;
  std::mt19937 rng(2);
  std::normal_distribution<float> g(0.0f, 0.02f);
  for (auto [n, k] : {std::array<std::int64_t, 2>{37888, 3584}, {3584, 18944}, {4608, 3584}, {1280, 3420}}) {
    std::vector<float> w(static_cast<std::size_t>(n * k));
    for (auto& v : w) v = g(rng);
    auto src = upload(encode(w, DType::kBF16));
    quant::Nf4Device d;
    const float qms =
        time_ms([&] { d = quant::quantize_nf4_device(nullptr, src.data(), DType::kBF16, n * k); }, 3);
    const cuda::Nf4Ref ref = d.ref();
    const double bytes = static_cast<double>(d.packed.size() + d.absmax_q.size());
    std::vector<float> xv(static_cast<std::size_t>(8 * k));
    for (auto& v : xv) v = g(rng);
    auto x = upload(xv);
    cuda::Buffer y(static_cast<std::size_t>(8 * n) * sizeof(float)), wb(static_cast<std::size_t>(n * k) * 2);
    for (int m : {1, 4, cuda::kGemvMaxRows}) {
      const float ms = time_ms(
          [&] { cuda::nf4_gemv(nullptr, x.as<float>(), m, ref, n, k, nullptr, y.as<float>(), n, false); },
          20);
      std::printf("[ timing   ] nf4 gemv %lldx%lld, %d rows: %.3f ms (%.0f GB/s of codes and scales)\n",
                  static_cast<long long>(n), static_cast<long long>(k), m, ms, bytes / ms / 1e6);
    }
    const float dms = time_ms([&] { cuda::nf4_dequantize(nullptr, ref, wb.as<cuda::bf16>()); }, 10);
    std::printf(
        "[ timing   ] nf4 %lldx%lld: quantize %.2f ms (with the host offset sum), dequantize to bf16 %.3f "
        "ms\n",
        static_cast<long long>(n), static_cast<long long>(k), qms, dms);
  }
}
#endif
