// Decode attention (flash-decoding, cuda::decode_attention) against the CPU attention: sequences of
// different lengths and cache capacities in one call, GQA, several head dims, graph replay with new
// lengths in device memory; with MV_GPU_TIMINGS=1 its time at the 7B decode shape. Skipped without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <span>
#include <vector>

#include "common/numeric.hpp"
#include "core/error.hpp"
#include "gpu/gpu_test_util.hpp"
#include "model/qwen25vl/model.hpp"
#include "ops/ops.hpp"

#if MEDVISION_HAS_CUDA
#include "ops/cuda/cuda_ops.hpp"
#endif

using namespace mv;

namespace {

#if MEDVISION_HAS_CUDA

using mv::test::bf16_round;
using mv::test::download;
using mv::test::random_bf16;
using mv::test::rel_l2;
using mv::test::to_bf16;
using mv::test::upload;

constexpr int kLayers = 2;  // caches hold two layers; the tests attend at layer 1
constexpr int kLayer = 1;

// One sequence's cache: [kLayers][n_kv][capacity][hd] on the host (fp32 of bf16 values), and paged on the
// device (pages in shuffled order).
struct Cache {
  std::int64_t capacity;
  std::vector<float> k, v;
  mv::test::PagedCache paged;
};

struct Shape {
  int hd, heads, kv;
};

Cache make_cache(const Shape& s, std::int64_t capacity, std::mt19937& rng) {
  Cache c;
  c.capacity = capacity;
  const auto n = static_cast<std::size_t>(kLayers * s.kv * capacity * s.hd);
  c.k = random_bf16(n, rng);
  c.v = random_bf16(n, rng);
  c.paged = mv::test::make_paged(c.k, c.v, kLayers, s.kv, capacity, s.hd, rng);
  return c;
}

// CPU reference: query row q (n_heads·hd) against keys [0, len) of the cache at kLayer.
std::vector<float> reference(const Shape& s, const Cache& c, const float* q, std::int32_t len) {
  const std::int64_t nq = static_cast<std::int64_t>(s.heads) * s.hd, hs = c.capacity * s.hd;
  const std::size_t layer_off = static_cast<std::size_t>(kLayer * s.kv * hs);
  std::vector<float> out(static_cast<std::size_t>(nq));
  ops::attention_causal(q, 1, nq, s.heads, s.kv, s.hd, c.k.data() + layer_off, c.v.data() + layer_off, hs,
                        len - 1, out.data(), nq, nullptr);
  return out;
}

// Runs decode_attention for the given sequences (cache index, length) and returns [batch][nq] fp32.
struct Launch {
  Shape s;
  std::vector<cuda::DecodeSeq> seqs;
  cuda::Buffer dseqs, dq, dout, dwork;
  cuda::DecodeAttnArgs args{};
};

void prepare(Launch& L, const Shape& s, const std::vector<Cache>& caches, const std::vector<int>& which,
             const std::vector<std::int32_t>& lens, const std::vector<float>& q) {
  L.s = s;
  const int batch = static_cast<int>(which.size());
  const std::int64_t nq = static_cast<std::int64_t>(s.heads) * s.hd;
  L.seqs.clear();
  for (int b = 0; b < batch; ++b) {
    const Cache& c = caches[static_cast<std::size_t>(which[static_cast<std::size_t>(b)])];
    L.seqs.push_back({c.paged.table_ptr(), lens[static_cast<std::size_t>(b)], 0});
  }
  L.dseqs = upload(L.seqs);
  L.dq = upload(to_bf16(q));
  L.dout.resize(static_cast<std::size_t>(batch * nq) * sizeof(float));
  L.dwork.resize(std::max<std::size_t>(1, cuda::decode_attention_workspace(s.heads, s.kv, s.hd, batch)));
  cuda::check(cudaMemset(L.dwork.data(), 0, L.dwork.size()), "test workspace");
  L.args = cuda::DecodeAttnArgs{L.dq.as<cuda::bf16>(),
                                nq,
                                L.dseqs.as<cuda::DecodeSeq>(),
                                kLayer,
                                cuda::KvPageGeometry{kLayers, s.kv, s.hd},
                                L.dout.as<float>(),
                                nq,
                                s.heads,
                                s.kv,
                                s.hd,
                                batch,
                                L.dwork.data(),
                                batch};
}

// Checks every sequence of a launch against the CPU reference; a sequence of length 0 must give zeros.
void expect_matches(const Launch& L, const std::vector<Cache>& caches, const std::vector<int>& which,
                    const std::vector<std::int32_t>& lens, const std::vector<float>& q, const char* what) {
  const std::int64_t nq = static_cast<std::int64_t>(L.s.heads) * L.s.hd;
  const auto got = download<float>(L.dout, which.size() * static_cast<std::size_t>(nq));
  for (std::size_t b = 0; b < which.size(); ++b) {
    const std::span<const float> g(got.data() + b * nq, static_cast<std::size_t>(nq));
    if (lens[b] == 0) {
      for (float x : g) ASSERT_EQ(x, 0.0f) << what << ": sequence " << b << " has no keys";
      continue;
    }
    const auto want = reference(L.s, caches[static_cast<std::size_t>(which[b])], q.data() + b * nq, lens[b]);
    const double e = rel_l2(g, want);
    // The tensor-core kernel rounds the probabilities to bf16 before P·V (about 1e-3 relative, measured
    // up to 1.5e-3 at hd 128); the scalar kernel keeps fp32.
    const bool tc = cuda::decode_attention_tensor_cores(L.s.heads, L.s.kv, L.s.hd);
    EXPECT_LE(e, tc ? 3e-3 : 1e-3) << what << (tc ? " (tensor cores)" : " (scalar)") << ": hd " << L.s.hd
                                   << " heads " << L.s.heads << "/" << L.s.kv << " sequence " << b << " of "
                                   << which.size() << ", " << lens[b] << " keys";
  }
}

#endif

}  // namespace

#if MEDVISION_HAS_CUDA

// Lengths 1, 31, 32, 33, 1000 and 4096 (and 0) in one call, each sequence with its own paged cache;
// head dims 128, 80 and small ones (16 on the 16-byte path, 6 on the element path); GQA 7:1, MHA and a
// group of 12 query heads (two blocks per kv head). With every sequence once (many splits per sequence),
// six times (a few splits) and 40 times (one split where the device has up to 140 SMs at 28/4 heads).
TEST(CudaDecodeAttention, MatchesCpuAcrossLengthsHeadDimsAndBatches) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(7);
  const std::vector<std::int32_t> lengths{1, 31, 32, 33, 1000, 4096, 0};
  for (const Shape s : {Shape{128, 28, 4}, Shape{80, 14, 2}, Shape{16, 7, 1}, Shape{6, 4, 2},
                        Shape{64, 24, 2}, Shape{128, 4, 4}}) {
    std::vector<Cache> caches;
    for (std::int32_t len : lengths)
      caches.push_back(make_cache(s, len + 1 + static_cast<int>(rng() % 40), rng));
    const std::int64_t nq = static_cast<std::int64_t>(s.heads) * s.hd;
    for (const int repeat : {1, 6, 40}) {
      std::vector<int> which;
      std::vector<std::int32_t> lens;
      for (int r = 0; r < repeat; ++r)
        for (std::size_t i = 0; i < lengths.size(); ++i) {
          which.push_back(static_cast<int>(i));
          lens.push_back(lengths[i]);
        }
      const auto q = random_bf16(which.size() * static_cast<std::size_t>(nq), rng);
      Launch L;
      prepare(L, s, caches, which, lens, q);
      cuda::decode_attention(nullptr, L.args);
      cuda::check(cudaDeviceSynchronize(), "decode attention");
      std::printf("[ decode   ] hd %d heads %d/%d batch %zu: %d splits, %s kernel\n", s.hd, s.heads, s.kv,
                  which.size(),
                  cuda::decode_attention_splits(s.heads, s.kv, s.hd, static_cast<int>(which.size())),
                  cuda::decode_attention_tensor_cores(s.heads, s.kv, s.hd) ? "tensor-core" : "scalar");
      expect_matches(L, caches, which, lens, q, "first launch");
      // A second launch on the same workspace (its merge counters must be back at zero) gives the same bits.
      const auto first = download<float>(L.dout, which.size() * static_cast<std::size_t>(nq));
      cuda::check(cudaMemset(L.dout.data(), 0xff, L.dout.size()), "poison output");
      cuda::decode_attention(nullptr, L.args);
      cuda::check(cudaDeviceSynchronize(), "decode attention");
      const auto second = download<float>(L.dout, first.size());
      ASSERT_EQ(std::memcmp(first.data(), second.data(), first.size() * sizeof(float)), 0)
          << "hd " << s.hd << ": a repeated launch differs";
    }
  }
}

// Captured once in a CUDA graph, the launch follows the lengths (and caches) in device memory on replay.
TEST(CudaDecodeAttention, GraphReplayReadsLengthsFromDevice) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(3);
  const Shape s{128, 28, 4};
  std::vector<Cache> caches;
  caches.push_back(make_cache(s, 3100, rng));
  caches.push_back(make_cache(s, 64, rng));
  const std::int64_t nq = static_cast<std::int64_t>(s.heads) * s.hd;
  const auto q = random_bf16(static_cast<std::size_t>(2 * nq), rng);
  Launch L;
  prepare(L, s, caches, {0, 1}, {40, 64}, q);
  cudaStream_t st;
  cuda::check(cudaStreamCreate(&st), "stream");
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  cuda::check(cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed), "capture");
  cuda::decode_attention(st, L.args);
  cuda::check(cudaStreamEndCapture(st, &graph), "end capture");
  cuda::check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
  for (const auto& [which, lens] : {std::pair{std::vector<int>{0, 1}, std::vector<std::int32_t>{40, 64}},
                                    std::pair{std::vector<int>{0, 1}, std::vector<std::int32_t>{3000, 7}},
                                    std::pair{std::vector<int>{1, 0}, std::vector<std::int32_t>{33, 2500}}}) {
    std::vector<cuda::DecodeSeq> seqs;
    for (std::size_t b = 0; b < 2; ++b) {
      const Cache& c = caches[static_cast<std::size_t>(which[b])];
      seqs.push_back({c.paged.table_ptr(), lens[b], 0});
    }
    cuda::check(cudaMemcpy(L.dseqs.data(), seqs.data(), seqs.size() * sizeof(cuda::DecodeSeq),
                           cudaMemcpyHostToDevice),
                "new lengths");
    cuda::check(cudaGraphLaunch(exec, st), "replay");
    cuda::check(cudaStreamSynchronize(st), "replay");
    expect_matches(L, caches, which, lens, q, "graph replay");
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(st);
}

TEST(CudaDecodeAttention, RejectsBadArguments) {
  SKIP_WITHOUT_GPU();
  cuda::DecodeAttnArgs a{};
  a.batch = 1;
  a.n_heads = 28;
  a.n_kv = 4;
  a.hd = 300;
  EXPECT_THROW(cuda::decode_attention(nullptr, a), mv::Error);  // head dim above 256
  a.hd = 128;
  a.n_heads = 30;
  EXPECT_THROW(cuda::decode_attention(nullptr, a), mv::Error);  // heads not a multiple of kv heads
  a.n_heads = 28;
  if (cuda::decode_attention_splits(28, 4, 128, 1) > 1)
    EXPECT_THROW(cuda::decode_attention(nullptr, a), mv::Error);  // no workspace
}

// Decode attention at the 7B shape (28 query / 4 kv heads of 128, 2048 keys per sequence), batch 1 and 32:
// time and K/V bytes read per second (printed, never asserted); only with MV_GPU_TIMINGS=1.
TEST(CudaTimings, DecodeAttentionAt7BShapes) {
  SKIP_WITHOUT_GPU();
  if (!std::getenv("MV_GPU_TIMINGS")) GTEST_SKIP() << "set MV_GPU_TIMINGS=1";
  std::mt19937 rng(5);
  const Shape s{128, 28, 4};
  const std::int32_t keys = 2048;
  const std::int64_t nq = static_cast<std::int64_t>(s.heads) * s.hd;
  for (const int batch : {1, 32}) {
    // One paged cache of 28 layers per sequence, launch i attending at layer i as the decode step does, so
    // that K/V come from device memory, not from L2. The values do not matter for the time.
    const int layers = 28;
    const cuda::KvPageGeometry geo{layers, s.kv, s.hd};
    const std::int64_t pages = keys / cuda::kKvPageTokens, page_elems = 2 * geo.v_offset();
    cuda::Buffer pool(static_cast<std::size_t>(batch * pages * page_elems) * sizeof(cuda::bf16));
    cudaMemset(pool.data(), 0x3c, pool.size());
    std::vector<cuda::bf16*> table(static_cast<std::size_t>(batch * pages));
    for (std::size_t i = 0; i < table.size(); ++i)
      table[i] = pool.as<cuda::bf16>() + static_cast<std::int64_t>(i) * page_elems;
    auto dtable = upload(table);
    std::vector<cuda::DecodeSeq> seqs;
    for (int b = 0; b < batch; ++b) seqs.push_back({dtable.as<cuda::bf16*>() + b * pages, keys, 0});
    auto dseqs = upload(seqs);
    auto dq = upload(to_bf16(random_bf16(static_cast<std::size_t>(batch * nq), rng)));
    cuda::Buffer out(static_cast<std::size_t>(batch * nq) * sizeof(float));
    cuda::Buffer work(cuda::decode_attention_workspace(s.heads, s.kv, s.hd, batch));
    cudaMemset(work.data(), 0, work.size());
    const cuda::DecodeAttnArgs a{dq.as<cuda::bf16>(),
                                 nq,
                                 dseqs.as<cuda::DecodeSeq>(),
                                 kLayer,
                                 geo,
                                 out.as<float>(),
                                 nq,
                                 s.heads,
                                 s.kv,
                                 s.hd,
                                 batch,
                                 work.data(),
                                 batch};
    // Timed as the decode step runs it: launches replayed from a CUDA graph (no host launch overhead).
    cudaStream_t st;
    cuda::check(cudaStreamCreate(&st), "stream");
    cuda::decode_attention(st, a);
    const int per_graph = layers, replays = 20;
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    cuda::check(cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed), "capture");
    for (int i = 0; i < per_graph; ++i) {
      cuda::DecodeAttnArgs ai = a;
      ai.layer = i % layers;
      cuda::decode_attention(st, ai);
    }
    cuda::check(cudaStreamEndCapture(st, &graph), "end capture");
    cuda::check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
    cuda::check(cudaGraphLaunch(exec, st), "warm-up");
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    cudaEventRecord(e0, st);
    for (int i = 0; i < replays; ++i) cudaGraphLaunch(exec, st);
    cudaEventRecord(e1, st);
    cuda::check(cudaEventSynchronize(e1), "timing");
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    ms /= static_cast<float>(per_graph * replays);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(st);
    const double bytes = 2.0 * batch * s.kv * static_cast<double>(keys) * s.hd * sizeof(cuda::bf16);
    std::printf(
        "[ timing   ] decode attention 28/4 heads x 128, %d keys, batch %d (%d splits): %.4f ms (%.0f GB/s "
        "of "
        "K/V)\n",
        keys, batch, cuda::decode_attention_splits(s.heads, s.kv, s.hd, batch), ms, bytes / ms / 1e6);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
  }
}

#endif
