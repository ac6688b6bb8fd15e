// Prefill / vision attention (cuda::attention, label gpu): the mma.sync kernel and the WMMA kernel against
// an fp32 softmax attention computed on the host from the same bf16 inputs, and against each other, on
// the work items the engine builds (causal prefill over a cache with a past, GQA, vision windows and
// full segments) and on edge cases (partial tiles, rows with a single key, items with no key). The
// output is poisoned (NaN) before each run: every row an item covers must be written, no other row.
// Skipped when no GPU is present.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/numeric.hpp"
#include "core/error.hpp"
#include "gpu/gpu_test_util.hpp"
#include "model/qwen25vl/model.hpp"

#if MEDVISION_HAS_CUDA
#include "ops/cuda/cuda_ops.hpp"

using namespace mv;

namespace {

constexpr double kAttnRelL2 = 1e-2;

float round_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  u &= 0xffff0000u;
  std::memcpy(&f, &u, 4);
  return f;
}

// q, k and v live in one host array `mem` (bf16-representable values) at the given element offsets;
// the device copy has the same layout, so the AttnArgs pointers are base + offset.
struct Problem {
  std::string name;
  int heads = 0, kv = 0, hd = 0;
  std::int64_t rows = 0;  // query / output rows
  std::vector<float> mem;
  std::int64_t q_off = 0, q_stride = 0, k_off = 0, v_off = 0, kv_head_stride = 0, kv_row_stride = 0;
  std::vector<cuda::AttnItem> items;
};

void fill_random(std::vector<float>& v, std::mt19937& rng, float scale) {
  std::normal_distribution<float> d(0.0f, scale);
  for (auto& x : v) x = round_bf16(d(rng));
}

// Causal prefill of m rows after `past` cached rows: q [m][heads·hd]; cache [kv][past + m][hd]; items of
// kAttnBlockQ rows over keys [0, past + m) as the engine builds them.
Problem causal_problem(const std::string& name, int hd, int heads, int kv, std::int64_t past, std::int64_t m,
                       std::mt19937& rng) {
  Problem p;
  p.name = name;
  p.heads = heads, p.kv = kv, p.hd = hd, p.rows = m;
  const std::int64_t nq = heads * hd, keys = past + m;
  p.mem.resize(static_cast<std::size_t>(m * nq + 2 * kv * keys * hd));
  fill_random(p.mem, rng, 1.0f);
  p.q_off = 0, p.q_stride = nq;
  p.k_off = m * nq, p.v_off = p.k_off + kv * keys * hd;
  p.kv_head_stride = keys * hd, p.kv_row_stride = hd;
  for (std::int64_t q0 = 0; q0 < m; q0 += cuda::kAttnBlockQ)
    p.items.push_back({static_cast<std::int32_t>(q0),
                       static_cast<std::int32_t>(std::min<std::int64_t>(cuda::kAttnBlockQ, m - q0)), 0,
                       static_cast<std::int32_t>(keys), static_cast<std::int32_t>(past + q0)});
  return p;
}

// Vision tower: fused rows [N][q | k | v] of heads·hd each; segments cu[s]..cu[s+1] attend within
// themselves (no mask), in items of kAttnBlockQ rows.
Problem varlen_problem(const std::string& name, int hd, int heads, const std::vector<std::int64_t>& cu,
                       std::mt19937& rng) {
  Problem p;
  p.name = name;
  p.heads = heads, p.kv = heads, p.hd = hd, p.rows = cu.back();
  const std::int64_t D = heads * hd;
  p.mem.resize(static_cast<std::size_t>(p.rows * 3 * D));
  fill_random(p.mem, rng, 1.0f);
  p.q_off = 0, p.q_stride = 3 * D, p.k_off = D, p.v_off = 2 * D;
  p.kv_head_stride = hd, p.kv_row_stride = 3 * D;
  for (std::size_t s = 0; s + 1 < cu.size(); ++s)
    for (std::int64_t q0 = cu[s]; q0 < cu[s + 1]; q0 += cuda::kAttnBlockQ)
      p.items.push_back({static_cast<std::int32_t>(q0),
                         static_cast<std::int32_t>(std::min<std::int64_t>(cuda::kAttnBlockQ, cu[s + 1] - q0)),
                         static_cast<std::int32_t>(cu[s]), static_cast<std::int32_t>(cu[s + 1] - cu[s]), -1});
  return p;
}

// fp32 softmax attention on the host (double sums); rows no item covers stay NaN.
std::vector<float> host_attention(const Problem& p) {
  const std::int64_t D = p.heads * p.hd;
  std::vector<float> out(static_cast<std::size_t>(p.rows * D), std::numeric_limits<float>::quiet_NaN());
  const float scale = 1.0f / std::sqrt(static_cast<float>(p.hd));
  std::vector<double> sc, acc(static_cast<std::size_t>(p.hd));
  for (const auto& it : p.items)
    for (int h = 0; h < p.heads; ++h) {
      const int g = h / (p.heads / p.kv);
      for (int i = 0; i < it.qn; ++i) {
        const float* q = p.mem.data() + p.q_off + (it.q0 + i) * p.q_stride + h * p.hd;
        int limit = it.kn;
        if (it.causal >= 0) limit = std::min(limit, it.causal + i + 1);
        limit = std::max(limit, 0);
        sc.assign(static_cast<std::size_t>(limit), 0.0);
        double mx = -INFINITY;
        for (int j = 0; j < limit; ++j) {
          const float* k = p.mem.data() + p.k_off + g * p.kv_head_stride +
                           static_cast<std::int64_t>(it.k0 + j) * p.kv_row_stride;
          float s = 0.0f;
          for (int d = 0; d < p.hd; ++d) s += q[d] * k[d];
          sc[j] = static_cast<double>(s) * scale;
          mx = std::max(mx, sc[j]);
        }
        double sum = 0.0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int j = 0; j < limit; ++j) {
          const double e = std::exp(sc[j] - mx);
          sum += e;
          const float* v = p.mem.data() + p.v_off + g * p.kv_head_stride +
                           static_cast<std::int64_t>(it.k0 + j) * p.kv_row_stride;
          for (int d = 0; d < p.hd; ++d) acc[d] += e * v[d];
        }
        float* o = out.data() + (it.q0 + i) * D + h * p.hd;
        for (int d = 0; d < p.hd; ++d) o[d] = limit > 0 ? static_cast<float>(acc[d] / sum) : 0.0f;
      }
    }
  return out;
}

struct Device {
  cuda::Buffer mem, items, out;
};

Device upload(const Problem& p) {
  Device d;
  std::vector<cuda::bf16> b(p.mem.size());
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = __float2bfloat16(p.mem[i]);
  d.mem.resize(b.size() * sizeof(cuda::bf16));
  cuda::check(cudaMemcpy(d.mem.data(), b.data(), d.mem.size(), cudaMemcpyHostToDevice), "test upload");
  d.items.resize(std::max<std::size_t>(p.items.size(), 1) * sizeof(cuda::AttnItem));
  cuda::check(cudaMemcpy(d.items.data(), p.items.data(), p.items.size() * sizeof(cuda::AttnItem),
                         cudaMemcpyHostToDevice),
              "test upload");
  d.out.resize(static_cast<std::size_t>(p.rows * p.heads * p.hd) * sizeof(cuda::bf16));
  return d;
}

cuda::AttnArgs args_for(const Problem& p, const Device& d) {
  const cuda::bf16* base = d.mem.as<cuda::bf16>();
  return cuda::AttnArgs{base + p.q_off,
                        p.q_stride,
                        base + p.k_off,
                        base + p.v_off,
                        p.kv_head_stride,
                        p.kv_row_stride,
                        d.out.as<cuda::bf16>(),
                        static_cast<std::int64_t>(p.heads) * p.hd,
                        p.heads,
                        p.kv,
                        p.hd,
                        d.items.as<cuda::AttnItem>(),
                        static_cast<int>(p.items.size())};
}

// Runs one kernel on a NaN-poisoned output and returns the output as floats.
std::vector<float> run(const Problem& p, const Device& d, cuda::AttnKernel kernel) {
  cuda::check(cudaMemset(d.out.data(), 0xff, d.out.size()), "poison");  // bf16 0xffff is a NaN
  cuda::attention(nullptr, args_for(p, d), kernel);
  cuda::check(cudaDeviceSynchronize(), "attention");
  std::vector<cuda::bf16> b(d.out.size() / sizeof(cuda::bf16));
  cuda::check(cudaMemcpy(b.data(), d.out.data(), d.out.size(), cudaMemcpyDeviceToHost), "test download");
  std::vector<float> f(b.size());
  for (std::size_t i = 0; i < b.size(); ++i) f[i] = __bfloat162float(b[i]);
  return f;
}

// Checks that `got` is finite exactly where `want` is (covered rows) and NaN elsewhere (untouched), and
// returns the relative L2 distance over the covered elements.
double compare(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  std::vector<float> g, w;
  std::size_t unwritten = 0, stray = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    if (std::isnan(want[i])) {
      if (!std::isnan(got[i])) ++stray;
      continue;
    }
    if (!std::isfinite(got[i])) ++unwritten;
    g.push_back(got[i]);
    w.push_back(want[i]);
  }
  EXPECT_EQ(unwritten, 0u) << what << ": covered elements not written (or not finite)";
  EXPECT_EQ(stray, 0u) << what << ": elements outside every item were written";
  EXPECT_FALSE(w.empty()) << what;
  return unwritten ? INFINITY : test::rel_l2(g, w);
}

// Both kernels (the mma one where it supports the head dim) against the host and each other.
void check_problem(const Problem& p) {
  SCOPED_TRACE(p.name);
  const auto want = host_attention(p);
  Device d = upload(p);
  const bool mma = cuda::attention_mma_supports(args_for(p, d));
  EXPECT_EQ(mma, p.hd % 16 == 0) << p.name << ": aligned rows, so support follows the head dim";
  const auto wmma_out = run(p, d, cuda::AttnKernel::kWmma);
  const double e_wmma = compare(wmma_out, want, p.name + " (wmma)");
  EXPECT_LE(e_wmma, kAttnRelL2);
  double e_mma = -1, e_pair = -1;
  if (mma) {
    const auto mma_out = run(p, d, cuda::AttnKernel::kMma);
    e_mma = compare(mma_out, want, p.name + " (mma)");
    EXPECT_LE(e_mma, kAttnRelL2);
    e_pair = compare(mma_out, wmma_out, p.name + " (mma vs wmma)");
    EXPECT_LE(e_pair, kAttnRelL2);
    // Same inputs, same result: a difference between two runs would mean a race.
    const auto again = run(p, d, cuda::AttnKernel::kMma);
    EXPECT_EQ(0, std::memcmp(again.data(), mma_out.data(), again.size() * sizeof(float)))
        << p.name << ": two runs of the mma kernel differ";
  }
  // kAuto takes the mma kernel where supported (unless MV_ATTN says otherwise): it must match one of them.
  const double e_auto = compare(run(p, d, cuda::AttnKernel::kAuto), want, p.name + " (auto)");
  EXPECT_LE(e_auto, kAttnRelL2);
  std::printf("[ attention ] %-44s rel L2: mma %.2e, wmma %.2e, mma vs wmma %.2e\n", p.name.c_str(), e_mma,
              e_wmma, e_pair);
}

}  // namespace

TEST(CudaAttention, CausalPrefillWithPastAndGqa) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(101);
  // Past offset, partial query and key tiles (150 rows = 64 + 64 + 22; 220 keys = 3 · 64 + 28), GQA 7:1.
  check_problem(causal_problem("causal hd128 28/4 past 70 m 150", 128, 28, 4, 70, 150, rng));
  // A prefill chunk of 1000+ rows from an empty cache (the first row sees a single key).
  check_problem(causal_problem("causal hd128 7/1 past 0 m 1100", 128, 7, 1, 0, 1100, rng));
  check_problem(causal_problem("causal hd80 16/16 past 5 m 64", 80, 16, 16, 5, 64, rng));
  check_problem(causal_problem("causal hd128 4/2 decode-like m 1 past 130", 128, 4, 2, 130, 1, rng));
}

TEST(CudaAttention, EveryHeadDim) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(102);
  for (const int hd : {16, 32, 48, 64, 80, 96, 112, 128})
    check_problem(
        causal_problem("causal hd" + std::to_string(hd) + " 4/2 past 9 m 77", hd, 4, 2, 9, 77, rng));
  // Head dims that are multiples of 8 only: the WMMA kernel serves them.
  check_problem(causal_problem("causal hd8 4/1 past 3 m 67", 8, 4, 1, 3, 67, rng));
  check_problem(causal_problem("causal hd40 2/2 past 0 m 70", 40, 2, 2, 0, 70, rng));
}

TEST(CudaAttention, VisionWindowsAndFullSegments) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(103);
  std::vector<std::int64_t> w64;
  for (std::int64_t s = 0; s <= 64 * 6; s += 64) w64.push_back(s);
  check_problem(varlen_problem("vision windows of 64, hd80 16 heads", 80, 16, w64, rng));
  // Windows of varying length: a single row (one key), partial and multi-item segments.
  check_problem(varlen_problem("vision windows 64/36/1/63/100/129/7, hd80", 80, 16,
                               {0, 64, 100, 101, 164, 264, 393, 400}, rng));
  check_problem(varlen_problem("vision full segment 1100 rows, hd80 4 heads", 80, 4, {0, 1100}, rng));
  check_problem(varlen_problem("varlen hd64 two segments", 64, 3, {0, 130, 200}, rng));
}

TEST(CudaAttention, RowsWithOneOrNoKey) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(104);
  Problem p = causal_problem("edge items hd64", 64, 4, 2, 0, 150, rng);
  // Rows 0..9 see no key (output zeros); rows 10..49 see exactly key 7 (output = that key's v);
  // rows 50..149: causal items with a past of 0 (row 50 sees one key).
  p.items = {{0, 10, 0, 0, -1}, {10, 40, 7, 1, -1}, {50, 64, 0, 150, 0}, {114, 36, 0, 150, 64}};
  check_problem(p);
  Device d = upload(p);
  const std::int64_t D = p.heads * p.hd;
  for (const auto kernel : {cuda::AttnKernel::kMma, cuda::AttnKernel::kWmma}) {
    const auto out = run(p, d, kernel);
    std::size_t bad_zero = 0, bad_single = 0;
    for (std::int64_t r = 0; r < 10; ++r)
      for (std::int64_t i = 0; i < D; ++i) bad_zero += out[r * D + i] != 0.0f;
    for (std::int64_t r = 10; r < 50; ++r)
      for (int h = 0; h < p.heads; ++h) {
        const int g = h / (p.heads / p.kv);
        for (int i = 0; i < p.hd; ++i)  // softmax of one key is 1, so the output is v exactly
          bad_single +=
              out[r * D + h * p.hd + i] != p.mem[p.v_off + g * p.kv_head_stride + 7 * p.kv_row_stride + i];
      }
    EXPECT_EQ(bad_zero, 0u) << "rows with no key must be zeros";
    EXPECT_EQ(bad_single, 0u) << "rows with one key must equal that key's value row";
  }
}

TEST(CudaAttention, MmaRejectsWhatItCannotServe) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(105);
  // Rows 8 bytes apart from 16-byte alignment: q row stride of 4·80 + 4 elements.
  Problem p = causal_problem("unaligned", 80, 4, 4, 0, 20, rng);
  p.q_stride = 4 * 80 + 4;
  p.mem.resize(p.mem.size() + 4 * 20);
  Device d = upload(p);
  const cuda::AttnArgs a = args_for(p, d);
  EXPECT_FALSE(cuda::attention_mma_supports(a));
  EXPECT_THROW(cuda::attention(nullptr, a, cuda::AttnKernel::kMma), mv::Error);
  cuda::AttnArgs bad = a;
  bad.n_kv = 3;  // 4 heads over 3 kv heads
  EXPECT_THROW(cuda::attention(nullptr, bad), mv::Error);
  bad = a;
  bad.hd = 144;
  EXPECT_THROW(cuda::attention(nullptr, bad), mv::Error);
}

#endif
