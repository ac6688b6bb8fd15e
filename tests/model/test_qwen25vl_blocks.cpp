// Qwen2.5-VL CPU engine, block by block and end to end, against small cases computed independently here:
// the spec's worked examples (17×23 window partition, rope_delta −368), hand-derived M-RoPE positions,
// and a naive float64 reference of the whole model that works in raster (pixel_values) order with
// attention masks instead of the engine's window permutation.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <new>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "common/bf16.hpp"
#include "common/expect_error.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "io/safetensors.hpp"
#include "model/qwen25vl/model.hpp"
#include "model/qwen25vl/vision.hpp"

namespace fs = std::filesystem;
using mv::qwen25vl::Grid;

// Counts C++ heap allocations (all threads) while g_count_allocations is set.
static std::atomic<bool> g_count_allocations{false};
static std::atomic<long> g_allocations{0};
void* operator new(std::size_t n) {
  if (g_count_allocations.load(std::memory_order_relaxed)) g_allocations.fetch_add(1);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace {

using mv::test::error_code_of;

// ---- window partition, patch positions, vision rotary ---------------------------------------------

mv::VisionConfig default_vision() { return mv::VisionConfig{}; }  // patch 14, merge 2, window 112

TEST(VisionLayout, SpecWorkedExample17x23) {
  const std::vector<Grid> grids = {{1, 34, 46}};
  const auto L = mv::qwen25vl::vision_layout(default_vision(), grids);
  ASSERT_EQ(L.cu_window_seqlens.size(), 31u);  // 30 windows
  const std::vector<std::int64_t> head = {0,  1,  2,  3,  23, 24, 25, 26, 46, 47,
                                          48, 49, 69, 70, 71, 72, 4,  5,  6,  7};
  ASSERT_EQ(L.window_index.size(), 391u);
  for (std::size_t i = 0; i < head.size(); ++i) EXPECT_EQ(L.window_index[i], head[i]) << i;
  const std::vector<std::int64_t> cu_head = {0, 64, 128, 192, 256, 320, 368};
  for (std::size_t i = 0; i < cu_head.size(); ++i) EXPECT_EQ(L.cu_window_seqlens[i], cu_head[i]) << i;
  EXPECT_EQ(L.cu_window_seqlens[28], 1536);
  EXPECT_EQ(L.cu_window_seqlens[29], 1552);
  EXPECT_EQ(L.cu_window_seqlens[30], 1564);
  EXPECT_EQ(L.cu_seqlens, (std::vector<std::int64_t>{0, 1564}));
  // A permutation of the merged tokens, and every window holds tokens of one 4×4 tile only.
  std::vector<int> seen(391, 0);
  for (auto id : L.window_index) seen[static_cast<std::size_t>(id)]++;
  for (int s : seen) ASSERT_EQ(s, 1);
  for (std::size_t w = 0; w + 1 < L.cu_window_seqlens.size(); ++w) {
    const std::int64_t a = L.cu_window_seqlens[w] / 4, b = L.cu_window_seqlens[w + 1] / 4;
    ASSERT_GT(b, a);
    const std::int64_t tile = (L.window_index[a] / 23) / 4 * 100 + (L.window_index[a] % 23) / 4;
    for (std::int64_t p = a; p < b; ++p)
      ASSERT_EQ((L.window_index[p] / 23) / 4 * 100 + (L.window_index[p] % 23) / 4, tile) << "window " << w;
  }
}

TEST(VisionLayout, SeveralImagesFramesAndExactMultiples) {
  // Image 0: 8×8 merged (a multiple of 4: no empty windows); image 1: 2 frames of 3×5 merged.
  const std::vector<Grid> grids = {{1, 16, 16}, {2, 6, 10}};
  const auto L = mv::qwen25vl::vision_layout(default_vision(), grids);
  EXPECT_EQ(L.cu_seqlens, (std::vector<std::int64_t>{0, 256, 316, 376}));
  // Windows: 4 for image 0, then per frame of image 1 two windows (4 and 1 wide, 3 high).
  EXPECT_EQ(L.cu_window_seqlens,
            (std::vector<std::int64_t>{0, 64, 128, 192, 256, 256 + 48, 256 + 60, 316 + 48, 316 + 60}));
  ASSERT_EQ(L.window_index.size(), 64u + 30u);
  EXPECT_EQ(L.window_index[64], 64);  // image 1 frame 0 starts after image 0's 64 tokens
  EXPECT_EQ(L.window_index[64 + 4], 64 + 5);
  EXPECT_EQ(L.window_index[64 + 12], 64 + 4);   // second window: column 4
  EXPECT_EQ(L.window_index[64 + 15], 64 + 15);  // frame 1 starts at token 64 + 15
  // A single partial window (tiny image).
  const std::vector<Grid> tiny = {{1, 2, 2}};
  const auto T = mv::qwen25vl::vision_layout(default_vision(), tiny);
  EXPECT_EQ(T.cu_window_seqlens, (std::vector<std::int64_t>{0, 4}));
  EXPECT_EQ(T.window_index, (std::vector<std::int64_t>{0}));
}

TEST(VisionLayout, RejectsBadGrids) {
  const std::vector<Grid> odd = {{1, 5, 4}};
  EXPECT_THROW(mv::qwen25vl::vision_layout(default_vision(), odd), mv::Error);
  const std::vector<Grid> zero = {{0, 4, 4}};
  EXPECT_THROW(mv::qwen25vl::vision_layout(default_vision(), zero), mv::Error);
}

TEST(VisionLayout, PatchPositionsFollowMergeBlocks) {
  const std::vector<Grid> grids = {{1, 4, 6}};
  const auto pos = mv::qwen25vl::vision_patch_positions(default_vision(), grids);
  ASSERT_EQ(pos.size(), 24u);
  const std::vector<std::array<std::int64_t, 2>> head = {{0, 0}, {0, 1}, {1, 0}, {1, 1}, {0, 2}, {0, 3},
                                                         {1, 2}, {1, 3}, {0, 4}, {0, 5}, {1, 4}, {1, 5},
                                                         {2, 0}, {2, 1}, {3, 0}, {3, 1}};
  for (std::size_t i = 0; i < head.size(); ++i) EXPECT_EQ(pos[i], head[i]) << i;
  // Row r = ((bh·(gw/2) + bw)·2 + mh)·2 + mw (spec §3.4).
  for (std::int64_t r = 0; r < 24; ++r) {
    const std::int64_t mw = r % 2, mh = (r / 2) % 2, bw = (r / 4) % 3, bh = r / 12;
    EXPECT_EQ(pos[r][0], 2 * bh + mh);
    EXPECT_EQ(pos[r][1], 2 * bw + mw);
  }
}

TEST(VisionLayout, RotaryTableAngles) {
  mv::VisionConfig c;
  c.hidden_size = 1280;
  c.num_heads = 16;  // head_dim 80: 40 angles, 20 per axis
  const std::vector<std::array<std::int64_t, 2>> pos = {{0, 0}, {3, 17}, {33, 45}};
  std::vector<float> cs(3 * 40), sn(3 * 40);
  mv::qwen25vl::vision_rotary_tables(c, pos, cs.data(), sn.data());
  for (int n = 0; n < 3; ++n) {
    for (int i = 0; i < 40; ++i) {
      const double p = i < 20 ? pos[n][0] : pos[n][1];
      const double angle = p * std::pow(10000.0, -(i % 20) / 20.0);
      EXPECT_NEAR(cs[n * 40 + i], std::cos(angle), 2e-6 * (1 + angle)) << n << "," << i;
      EXPECT_NEAR(sn[n * 40 + i], std::sin(angle), 2e-6 * (1 + angle)) << n << "," << i;
    }
  }
}

// ---- get_rope_index -------------------------------------------------------------------------------

TEST(RopeIndex, TwoImagesAndTextAfter) {
  mv::ModelConfig c;  // ids: image 151655, vision start 151652, end 151653
  const std::int32_t T = 100, VS = 151652, VE = 151653, P = 151655;
  std::vector<std::int32_t> ids = {T, T, VS};
  for (int i = 0; i < 6; ++i) ids.push_back(P);  // image 1: grid (1, 4, 6) -> 2×3 merged
  ids.insert(ids.end(), {VE, T, VS});
  for (int i = 0; i < 6; ++i) ids.push_back(P);  // image 2: grid (1, 6, 4) -> 3×2 merged
  ids.insert(ids.end(), {VE, T, T, T});
  const std::vector<Grid> grids = {{1, 4, 6}, {1, 6, 4}};
  const auto r = mv::qwen25vl::get_rope_index(c, ids, grids);
  // Hand-derived: text 0,1,2; image 1 at s=3: (3, 3+row, 3+col), next = 3 + max(2,3) = 6; VE 6, T 7, VS 8;
  // image 2 at s=9: (9, 9+row, 9+col), next = 9 + 3 = 12; VE 12, then 13, 14, 15.
  const std::vector<std::int64_t> t = {0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7, 8, 9, 9, 9, 9, 9, 9, 12, 13, 14, 15};
  const std::vector<std::int64_t> h = {0, 1, 2, 3,  3,  3,  4,  4,  4,  6,  7,
                                       8, 9, 9, 10, 10, 11, 11, 12, 13, 14, 15};
  const std::vector<std::int64_t> w = {0, 1, 2,  3, 4,  5, 3,  4,  5,  6,  7,
                                       8, 9, 10, 9, 10, 9, 10, 12, 13, 14, 15};
  EXPECT_EQ(r.t, t);
  EXPECT_EQ(r.h, h);
  EXPECT_EQ(r.w, w);
  EXPECT_EQ(r.rope_delta, 16 - 22);
}

TEST(RopeIndex, SpecWorkedExampleAndTextOnly) {
  mv::ModelConfig c;
  std::vector<std::int32_t> ids(15, 42);
  ids[14] = 151652;
  ids.insert(ids.end(), 391, 151655);
  ids.push_back(151653);
  ids.push_back(42);
  const std::vector<Grid> grids = {{1, 34, 46}};
  const auto r = mv::qwen25vl::get_rope_index(c, ids, grids);
  EXPECT_EQ(r.t[15], 15);
  EXPECT_EQ(r.h[15 + 390], 15 + 16);
  EXPECT_EQ(r.w[15 + 390], 15 + 22);
  EXPECT_EQ(r.t[406], 38);  // <|vision_end|>
  EXPECT_EQ(r.h[407], 39);
  EXPECT_EQ(r.rope_delta, -368);
  const std::vector<std::int32_t> text = {1, 2, 3};
  const auto q = mv::qwen25vl::get_rope_index(c, text, {});
  EXPECT_EQ(q.t, (std::vector<std::int64_t>{0, 1, 2}));
  EXPECT_EQ(q.rope_delta, 0);
}

TEST(RopeIndex, RejectsMismatchedImages) {
  mv::ModelConfig c;
  std::vector<std::int32_t> ids = {1, 151652, 151655, 151655, 151655, 151653};
  const std::vector<Grid> four = {{1, 4, 4}};  // needs 4 pads, 3 given
  EXPECT_THROW(mv::qwen25vl::get_rope_index(c, ids, four), mv::Error);
  const std::vector<Grid> none;
  EXPECT_THROW(mv::qwen25vl::get_rope_index(c, ids, none), mv::Error);
  const std::vector<Grid> two = {{1, 2, 6}, {1, 2, 2}};  // 3 pads match the first, no run for the second
  EXPECT_THROW(mv::qwen25vl::get_rope_index(c, ids, two), mv::Error);
}

// ---- tiny checkpoints and a naive float64 reference --------------------------------------------

using mv::test::from_bf16;
using mv::test::to_bf16;

struct Spec {
  int H = 32, layers = 2, nh = 4, nkv = 2, I = 48, V = 151936;
  std::array<int, 3> sections{1, 1, 2};
  int D = 32, depth = 3, vh = 4, Iv = 40, window = 56, merge = 2, patch = 14, tp = 2, C = 3;
  std::vector<int> full{1};
  bool tied = false;
  bool nested = false;     // model.language_model.* / model.visual.* keys
  bool v5_config = false;  // text_config + rope_parameters
  mv::DType dtype = mv::DType::kBF16;
  std::int32_t image_token = 151655, vs = 151652, ve = 151653;
};

using Tensor = std::vector<double>;

struct Checkpoint {
  Spec s;
  fs::path dir;
  std::map<std::string, Tensor> t;  // legacy names, exact values the engine sees
  const Tensor& operator[](const std::string& k) const { return t.at(k); }
};

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("mv_eng_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

Checkpoint make_checkpoint(const Spec& s, const std::string& name, unsigned seed,
                           const std::string& skip_tensor = "", const std::string& bad_shape_tensor = "") {
  Checkpoint ck{s, temp_dir(name), {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  mv::SafetensorsWriter writer;
  std::map<std::string, std::vector<std::uint8_t>> bytes;
  auto add = [&](const std::string& key, std::vector<std::int64_t> shape, float scale, float offset) {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    Tensor vals(static_cast<std::size_t>(n));
    std::vector<std::uint8_t> raw;
    if (s.dtype == mv::DType::kF32) {
      raw.resize(static_cast<std::size_t>(n) * 4);
      for (std::int64_t i = 0; i < n; ++i) {
        const float f = offset + scale * nd(rng);
        vals[i] = f;
        std::memcpy(raw.data() + i * 4, &f, 4);
      }
    } else {
      raw.resize(static_cast<std::size_t>(n) * 2);
      for (std::int64_t i = 0; i < n; ++i) {
        const std::uint16_t b = to_bf16(offset + scale * nd(rng));
        vals[i] = from_bf16(b);
        std::memcpy(raw.data() + i * 2, &b, 2);
      }
    }
    ck.t[key] = vals;
    if (key == skip_tensor) return;
    if (key == bad_shape_tensor) {  // one extra row
      raw.resize(raw.size() + static_cast<std::size_t>(n / shape[0]) * (s.dtype == mv::DType::kF32 ? 4 : 2));
      shape[0] += 1;
    }
    std::string file_key = key;
    if (s.nested) {
      if (key.rfind("model.", 0) == 0) file_key = "model.language_model." + key.substr(6);
      if (key.rfind("visual.", 0) == 0) file_key = "model." + key;
    }
    writer.add(file_key, s.dtype, shape, raw);
  };
  const std::int64_t hd = s.H / s.nh, unit = std::int64_t{s.merge} * s.merge;
  add("model.embed_tokens.weight", {s.V, s.H}, 0.5f, 0.0f);
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {s.H}, 0.1f, 1.0f);
    add(p + "self_attn.q_proj.weight", {s.nh * hd, s.H}, 0.2f, 0.0f);
    add(p + "self_attn.q_proj.bias", {s.nh * hd}, 0.2f, 0.0f);
    add(p + "self_attn.k_proj.weight", {s.nkv * hd, s.H}, 0.2f, 0.0f);
    add(p + "self_attn.k_proj.bias", {s.nkv * hd}, 0.2f, 0.0f);
    add(p + "self_attn.v_proj.weight", {s.nkv * hd, s.H}, 0.2f, 0.0f);
    add(p + "self_attn.v_proj.bias", {s.nkv * hd}, 0.2f, 0.0f);
    add(p + "self_attn.o_proj.weight", {s.H, s.nh * hd}, 0.2f, 0.0f);
    add(p + "post_attention_layernorm.weight", {s.H}, 0.1f, 1.0f);
    add(p + "mlp.gate_proj.weight", {s.I, s.H}, 0.2f, 0.0f);
    add(p + "mlp.up_proj.weight", {s.I, s.H}, 0.2f, 0.0f);
    add(p + "mlp.down_proj.weight", {s.H, s.I}, 0.2f, 0.0f);
  }
  add("model.norm.weight", {s.H}, 0.1f, 1.0f);
  if (!s.tied) add("lm_head.weight", {s.V, s.H}, 0.2f, 0.0f);
  add("visual.patch_embed.proj.weight", {s.D, s.C, s.tp, s.patch, s.patch}, 0.05f, 0.0f);
  for (int j = 0; j < s.depth; ++j) {
    const std::string p = "visual.blocks." + std::to_string(j) + ".";
    add(p + "norm1.weight", {s.D}, 0.1f, 1.0f);
    add(p + "norm2.weight", {s.D}, 0.1f, 1.0f);
    add(p + "attn.qkv.weight", {3 * s.D, s.D}, 0.2f, 0.0f);
    add(p + "attn.qkv.bias", {3 * s.D}, 0.2f, 0.0f);
    add(p + "attn.proj.weight", {s.D, s.D}, 0.2f, 0.0f);
    add(p + "attn.proj.bias", {s.D}, 0.2f, 0.0f);
    add(p + "mlp.gate_proj.weight", {s.Iv, s.D}, 0.2f, 0.0f);
    add(p + "mlp.gate_proj.bias", {s.Iv}, 0.2f, 0.0f);
    add(p + "mlp.up_proj.weight", {s.Iv, s.D}, 0.2f, 0.0f);
    add(p + "mlp.up_proj.bias", {s.Iv}, 0.2f, 0.0f);
    add(p + "mlp.down_proj.weight", {s.D, s.Iv}, 0.2f, 0.0f);
    add(p + "mlp.down_proj.bias", {s.D}, 0.2f, 0.0f);
  }
  add("visual.merger.ln_q.weight", {s.D}, 0.1f, 1.0f);
  add("visual.merger.mlp.0.weight", {s.D * unit, s.D * unit}, 0.1f, 0.0f);
  add("visual.merger.mlp.0.bias", {s.D * unit}, 0.1f, 0.0f);
  add("visual.merger.mlp.2.weight", {s.H, s.D * unit}, 0.1f, 0.0f);
  add("visual.merger.mlp.2.bias", {s.H}, 0.1f, 0.0f);
  writer.write(ck.dir / "model.safetensors");

  nlohmann::json vision = {{"depth", s.depth},
                           {"hidden_size", s.D},
                           {"intermediate_size", s.Iv},
                           {"num_heads", s.vh},
                           {"in_chans", s.C},
                           {"patch_size", s.patch},
                           {"temporal_patch_size", s.tp},
                           {"spatial_merge_size", s.merge},
                           {"window_size", s.window},
                           {"out_hidden_size", s.H},
                           {"fullatt_block_indexes", s.full},
                           {"hidden_act", "silu"}};
  nlohmann::json text = {
      {"hidden_size", s.H},           {"num_hidden_layers", s.layers}, {"num_attention_heads", s.nh},
      {"num_key_value_heads", s.nkv}, {"intermediate_size", s.I},      {"vocab_size", s.V},
      {"rms_norm_eps", 1e-6},         {"hidden_act", "silu"},          {"tie_word_embeddings", s.tied}};
  nlohmann::json cfg = {
      {"model_type", "qwen2_5_vl"},      {"architectures", {"Qwen2_5_VLForConditionalGeneration"}},
      {"image_token_id", s.image_token}, {"vision_start_token_id", s.vs},
      {"vision_end_token_id", s.ve},     {"vision_config", vision}};
  const std::vector<int> sec(s.sections.begin(), s.sections.end());
  if (s.v5_config) {
    text["rope_parameters"] = {{"rope_type", "default"}, {"mrope_section", sec}, {"rope_theta", 1000000.0}};
    cfg["text_config"] = text;
    cfg["tie_word_embeddings"] = s.tied;
    cfg["dtype"] = "bfloat16";
  } else {
    for (auto& [k, v] : text.items()) cfg[k] = v;
    cfg["rope_theta"] = 1000000.0;
    cfg["rope_scaling"] = {{"type", "mrope"}, {"mrope_section", sec}};
    cfg["torch_dtype"] = "bfloat16";
  }
  mv::write_file(ck.dir / "config.json", cfg.dump(2));
  return ck;
}

// y[m×n] = x[m×k]·Wᵀ + b
Tensor ref_linear(const Tensor& x, std::int64_t m, const Tensor& w, const Tensor* b, std::int64_t n) {
  const std::int64_t k = static_cast<std::int64_t>(w.size()) / n;
  Tensor y(static_cast<std::size_t>(m * n));
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      double s = b ? (*b)[j] : 0.0;
      for (std::int64_t c = 0; c < k; ++c) s += x[i * k + c] * w[j * k + c];
      y[i * n + j] = s;
    }
  return y;
}

Tensor ref_rms(const Tensor& x, std::int64_t m, const Tensor& w) {
  const std::int64_t d = static_cast<std::int64_t>(w.size());
  Tensor y(x.size());
  for (std::int64_t i = 0; i < m; ++i) {
    double ss = 0;
    for (std::int64_t c = 0; c < d; ++c) ss += x[i * d + c] * x[i * d + c];
    const double inv = 1.0 / std::sqrt(ss / d + 1e-6);
    for (std::int64_t c = 0; c < d; ++c) y[i * d + c] = w[c] * x[i * d + c] * inv;
  }
  return y;
}

double silu(double v) { return v / (1.0 + std::exp(-v)); }

// Rotate-half on one head vector with per-pair angles.
void ref_rotate(double* v, int hd, const std::vector<double>& angle) {
  const int half = hd / 2;
  for (int j = 0; j < half; ++j) {
    const double a = v[j], b = v[j + half], c = std::cos(angle[j]), s = std::sin(angle[j]);
    v[j] = a * c - b * s;
    v[j + half] = b * c + a * s;
  }
}

// Softmax attention of query i over the keys j with allowed(i, j); q/k/v rows [n][heads][hd] at `stride`.
void ref_attention(const Tensor& q, const Tensor& k, const Tensor& v, std::int64_t n, int heads, int kv_heads,
                   int hd, const std::function<bool(std::int64_t, std::int64_t)>& allowed, Tensor& out) {
  out.assign(static_cast<std::size_t>(n * heads * hd), 0.0);
  const int group = heads / kv_heads;
  for (std::int64_t i = 0; i < n; ++i)
    for (int h = 0; h < heads; ++h) {
      const int g = h / group;
      std::vector<double> sc(static_cast<std::size_t>(n), -INFINITY);
      double mx = -INFINITY;
      for (std::int64_t j = 0; j < n; ++j) {
        if (!allowed(i, j)) continue;
        double d = 0;
        for (int c = 0; c < hd; ++c) d += q[(i * heads + h) * hd + c] * k[(j * kv_heads + g) * hd + c];
        sc[j] = d / std::sqrt(double(hd));
        mx = std::max(mx, sc[j]);
      }
      double s = 0;
      for (auto& e : sc) s += (e = std::isinf(e) ? 0.0 : std::exp(e - mx));
      for (std::int64_t j = 0; j < n; ++j)
        for (int c = 0; c < hd; ++c)
          out[(i * heads + h) * hd + c] += sc[j] / s * v[(j * kv_heads + g) * hd + c];
    }
}

// The vision tower in raster (pixel_values) order: windows and per-frame segments as attention masks.
Tensor ref_vision(const Checkpoint& ck, const std::vector<mv::PixelValues>& images) {
  const Spec& s = ck.s;
  const std::int64_t D = s.D, hd = D / s.vh, m = s.merge, unit = m * m, vw = s.window / s.merge / s.patch;
  Tensor px;
  struct Patch {
    std::int64_t img, frame, hp, wp;
  };
  std::vector<Patch> patches;
  for (std::size_t k = 0; k < images.size(); ++k) {
    const auto& im = images[k];
    for (float f : im.data) px.push_back(f);
    const std::int64_t lw = im.grid_thw[2] / m, per_frame = im.grid_thw[1] * im.grid_thw[2];
    for (std::int64_t r = 0; r < im.rows; ++r) {
      const std::int64_t f = r / per_frame, q = r % per_frame;
      const std::int64_t mw = q % m, mh = (q / m) % m, bw = (q / unit) % lw, bh = q / unit / lw;
      patches.push_back({static_cast<std::int64_t>(k), f, bh * m + mh, bw * m + mw});
    }
  }
  const std::int64_t N = static_cast<std::int64_t>(patches.size());
  Tensor x = ref_linear(px, N, ck["visual.patch_embed.proj.weight"], nullptr, D);
  // Rotary angles: first hd/4 pairs by row, the rest by column, inv_freq = 10000^(-i/(hd/4)).
  const int qn = static_cast<int>(hd / 4);
  std::vector<std::vector<double>> ang(static_cast<std::size_t>(N), std::vector<double>(hd / 2));
  for (std::int64_t i = 0; i < N; ++i)
    for (int j = 0; j < qn; ++j) {
      const double inv = std::pow(10000.0, -double(j) / qn);
      ang[i][j] = patches[i].hp * inv;
      ang[i][qn + j] = patches[i].wp * inv;
    }
  auto same_frame = [&](std::int64_t a, std::int64_t b) {
    return patches[a].img == patches[b].img && patches[a].frame == patches[b].frame;
  };
  auto same_window = [&](std::int64_t a, std::int64_t b) {
    return same_frame(a, b) && patches[a].hp / m / vw == patches[b].hp / m / vw &&
           patches[a].wp / m / vw == patches[b].wp / m / vw;
  };
  for (int j = 0; j < s.depth; ++j) {
    const std::string p = "visual.blocks." + std::to_string(j) + ".";
    const bool full = std::find(s.full.begin(), s.full.end(), j) != s.full.end();
    Tensor u = ref_rms(x, N, ck[p + "norm1.weight"]);
    Tensor qkv = ref_linear(u, N, ck[p + "attn.qkv.weight"], &ck[p + "attn.qkv.bias"], 3 * D);
    Tensor q(N * D), k(N * D), v(N * D);
    for (std::int64_t i = 0; i < N; ++i)
      for (std::int64_t c = 0; c < D; ++c) {
        q[i * D + c] = qkv[i * 3 * D + c];
        k[i * D + c] = qkv[i * 3 * D + D + c];
        v[i * D + c] = qkv[i * 3 * D + 2 * D + c];
      }
    for (std::int64_t i = 0; i < N; ++i)
      for (int h = 0; h < s.vh; ++h) {
        ref_rotate(&q[i * D + h * hd], static_cast<int>(hd), ang[i]);
        ref_rotate(&k[i * D + h * hd], static_cast<int>(hd), ang[i]);
      }
    Tensor a;
    if (full) {
      ref_attention(q, k, v, N, s.vh, s.vh, static_cast<int>(hd), same_frame, a);
    } else {
      ref_attention(q, k, v, N, s.vh, s.vh, static_cast<int>(hd), same_window, a);
    }
    Tensor o = ref_linear(a, N, ck[p + "attn.proj.weight"], &ck[p + "attn.proj.bias"], D);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    u = ref_rms(x, N, ck[p + "norm2.weight"]);
    Tensor g = ref_linear(u, N, ck[p + "mlp.gate_proj.weight"], &ck[p + "mlp.gate_proj.bias"], s.Iv);
    Tensor up = ref_linear(u, N, ck[p + "mlp.up_proj.weight"], &ck[p + "mlp.up_proj.bias"], s.Iv);
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = silu(g[i]) * up[i];
    o = ref_linear(g, N, ck[p + "mlp.down_proj.weight"], &ck[p + "mlp.down_proj.bias"], D);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += o[i];
  }
  Tensor z = ref_rms(x, N, ck["visual.merger.ln_q.weight"]);  // [N, D] == [N/unit, unit·D] row-major
  Tensor h1 =
      ref_linear(z, N / unit, ck["visual.merger.mlp.0.weight"], &ck["visual.merger.mlp.0.bias"], unit * D);
  for (auto& e : h1) e = 0.5 * e * (1.0 + std::erf(e / std::sqrt(2.0)));
  return ref_linear(h1, N / unit, ck["visual.merger.mlp.2.weight"], &ck["visual.merger.mlp.2.bias"], s.H);
}

// Position ids by the rule of spec §5.4 (written independently of the engine's function).
std::array<std::vector<std::int64_t>, 3> ref_positions(const Spec& s, const std::vector<std::int32_t>& ids,
                                                       const std::vector<Grid>& grids) {
  std::array<std::vector<std::int64_t>, 3> p;
  std::int64_t next = 0;
  std::size_t img = 0;
  for (std::size_t i = 0; i < ids.size();) {
    if (ids[i] != s.image_token) {
      for (auto& v : p) v.push_back(next);
      ++next;
      ++i;
      continue;
    }
    const std::int64_t lh = grids[img][1] / s.merge, lw = grids[img][2] / s.merge;
    for (std::int64_t r = 0; r < lh; ++r)
      for (std::int64_t c = 0; c < lw; ++c) {
        p[0].push_back(next);
        p[1].push_back(next + r);
        p[2].push_back(next + c);
      }
    next += std::max(lh, lw);
    i += static_cast<std::size_t>(lh * lw);
    ++img;
  }
  return p;
}

// Logits at the last position of `ids` (image-pad rows replaced by `features` in order).
Tensor ref_text(const Checkpoint& ck, const std::vector<std::int32_t>& ids, const Tensor& features,
                const std::vector<Grid>& grids) {
  const Spec& s = ck.s;
  const std::int64_t n = static_cast<std::int64_t>(ids.size()), H = s.H, hd = H / s.nh;
  const auto pos = ref_positions(s, ids, grids);
  Tensor x(static_cast<std::size_t>(n * H));
  const Tensor& E = ck["model.embed_tokens.weight"];
  std::int64_t row = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const bool image = ids[i] == s.image_token;
    for (std::int64_t c = 0; c < H; ++c)
      x[i * H + c] = image ? features[row * H + c] : E[static_cast<std::size_t>(ids[i]) * H + c];
    row += image ? 1 : 0;
  }
  // Per-token angles: pair j uses stream 0 for j < sec0, 1 for j < sec0 + sec1, else 2.
  std::vector<std::vector<double>> ang(static_cast<std::size_t>(n), std::vector<double>(hd / 2));
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < hd / 2; ++j) {
      const int stream = j < s.sections[0] ? 0 : j < s.sections[0] + s.sections[1] ? 1 : 2;
      ang[i][j] = pos[stream][i] * std::pow(1000000.0, -2.0 * j / hd);
    }
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Tensor u = ref_rms(x, n, ck[p + "input_layernorm.weight"]);
    Tensor q =
        ref_linear(u, n, ck[p + "self_attn.q_proj.weight"], &ck[p + "self_attn.q_proj.bias"], s.nh * hd);
    Tensor k =
        ref_linear(u, n, ck[p + "self_attn.k_proj.weight"], &ck[p + "self_attn.k_proj.bias"], s.nkv * hd);
    Tensor v =
        ref_linear(u, n, ck[p + "self_attn.v_proj.weight"], &ck[p + "self_attn.v_proj.bias"], s.nkv * hd);
    for (std::int64_t i = 0; i < n; ++i) {
      for (int h = 0; h < s.nh; ++h) ref_rotate(&q[(i * s.nh + h) * hd], static_cast<int>(hd), ang[i]);
      for (int h = 0; h < s.nkv; ++h) ref_rotate(&k[(i * s.nkv + h) * hd], static_cast<int>(hd), ang[i]);
    }
    Tensor a;
    ref_attention(
        q, k, v, n, s.nh, s.nkv, static_cast<int>(hd), [](std::int64_t i, std::int64_t j) { return j <= i; },
        a);
    Tensor o = ref_linear(a, n, ck[p + "self_attn.o_proj.weight"], nullptr, H);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    u = ref_rms(x, n, ck[p + "post_attention_layernorm.weight"]);
    Tensor g = ref_linear(u, n, ck[p + "mlp.gate_proj.weight"], nullptr, s.I);
    Tensor up = ref_linear(u, n, ck[p + "mlp.up_proj.weight"], nullptr, s.I);
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = silu(g[i]) * up[i];
    o = ref_linear(g, n, ck[p + "mlp.down_proj.weight"], nullptr, H);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += o[i];
  }
  const Tensor last(x.end() - H, x.end());
  const Tensor h = ref_rms(last, 1, ck["model.norm.weight"]);
  return ref_linear(h, 1, s.tied ? E : ck["lm_head.weight"], nullptr, s.V);
}

double rel_l2(const float* got, const double* ref, std::size_t n) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < n; ++i) {
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

mv::PixelValues random_image(const Spec& s, Grid g, std::mt19937& rng) {
  mv::PixelValues p;
  p.grid_thw = g;
  p.rows = g[0] * g[1] * g[2];
  p.cols = std::int64_t{s.C} * s.tp * s.patch * s.patch;
  std::normal_distribution<float> nd(0.0f, 1.0f);
  p.data.resize(static_cast<std::size_t>(p.rows * p.cols));
  for (auto& v : p.data) v = nd(rng);
  return p;
}

std::vector<std::int32_t> prompt_with_images(const Spec& s, const std::vector<Grid>& grids) {
  std::vector<std::int32_t> ids = {11, 12, 13, s.vs};
  for (std::size_t k = 0; k < grids.size(); ++k) {
    const std::int64_t n = grids[k][0] * grids[k][1] * grids[k][2] / (s.merge * s.merge);
    ids.insert(ids.end(), static_cast<std::size_t>(n), s.image_token);
    ids.push_back(s.ve);
    if (k + 1 < grids.size()) ids.insert(ids.end(), {14, s.vs});
  }
  ids.insert(ids.end(), {15, 16, 17});
  return ids;
}

struct EndToEnd : ::testing::TestWithParam<int> {};

// Vision features, prefill logits (chunked and not) and several decode steps against the reference, for
// both key layouts, both config layouts, tied and untied heads, BF16 and F32 weights.
TEST_P(EndToEnd, MatchesFloat64Reference) {
  Spec s;
  const int variant = GetParam();
  s.nested = variant == 1 || variant == 3;
  s.v5_config = variant == 1;
  s.tied = variant == 2 || variant == 3;
  s.dtype = variant == 3 ? mv::DType::kF32 : mv::DType::kBF16;
  if (variant == 2) s.full = {0, 2};
  const Checkpoint ck = make_checkpoint(s, "e2e" + std::to_string(variant), 100 + variant);
  std::mt19937 rng(7 + variant);
  // 3×5 merged (partial windows with window side 2), 2×2 merged, and a single merged token.
  const std::vector<Grid> grids = {{1, 6, 10}, {1, 4, 4}, {1, 2, 2}};
  std::vector<mv::PixelValues> images;
  for (const auto& g : grids) images.push_back(random_image(s, g, rng));

  for (std::int64_t chunk : {256, 5}) {
    mv::qwen25vl::LoadOptions opt;
    opt.threads = 2;
    opt.prefill_chunk = chunk;
    auto model = mv::qwen25vl::Model::load(ck.dir, opt);
    const std::vector<float> feats = model->encode_images(images);
    const Tensor ref_feats = ref_vision(ck, images);
    ASSERT_EQ(feats.size(), ref_feats.size());
    EXPECT_LT(rel_l2(feats.data(), ref_feats.data(), feats.size()), 1e-5) << "vision features";

    std::vector<std::int32_t> ids = prompt_with_images(s, grids);
    auto session = model->new_session(static_cast<std::int64_t>(ids.size()) + 8);
    std::vector<float> logits(static_cast<std::size_t>(s.V));
    model->prefill(*session, ids, images, logits);
    EXPECT_EQ(session->length(), static_cast<std::int64_t>(ids.size()));
    const auto rope = mv::qwen25vl::get_rope_index(model->config(), ids, grids);
    EXPECT_EQ(session->rope_delta(), rope.rope_delta);
    Tensor ref = ref_text(ck, ids, ref_feats, grids);
    const std::size_t V = static_cast<std::size_t>(s.V);
    EXPECT_LT(rel_l2(logits.data(), ref.data(), V), 1e-5) << "prefill chunk " << chunk;

    for (std::int32_t tok : {21, 151643, 5}) {
      model->decode(*session, tok, logits);
      ids.push_back(tok);
      ref = ref_text(ck, ids, ref_feats, grids);
      EXPECT_LT(rel_l2(logits.data(), ref.data(), V), 1e-5) << "decode " << tok;
    }

    // Same prompt through prefill_with_features on a reset session.
    session->reset();
    ids = prompt_with_images(s, grids);
    model->prefill_with_features(*session, ids, grids, feats, logits);
    ref = ref_text(ck, ids, ref_feats, grids);
    EXPECT_LT(rel_l2(logits.data(), ref.data(), V), 1e-5) << "with features";
  }
  fs::remove_all(ck.dir);
}

INSTANTIATE_TEST_SUITE_P(Variants, EndToEnd, ::testing::Values(0, 1, 2, 3));

TEST(Model, MultiTurnWithImageInLaterChunk) {
  Spec s;
  s.V = 400;
  s.image_token = 390, s.vs = 388, s.ve = 389;
  const Checkpoint ck = make_checkpoint(s, "turns", 31);
  std::mt19937 rng(3);
  const std::vector<Grid> grids = {{1, 4, 6}};
  std::vector<mv::PixelValues> images = {random_image(s, grids[0], rng)};
  mv::qwen25vl::LoadOptions opt;
  opt.threads = 3;
  auto model = mv::qwen25vl::Model::load(ck.dir, opt);
  auto session = model->new_session(64);
  std::vector<float> logits(static_cast<std::size_t>(s.V));
  const std::vector<std::int32_t> turn1 = {1, 2, 3, 4};
  model->prefill(*session, turn1, {}, logits);
  model->decode(*session, 7, logits);
  std::vector<std::int32_t> turn2 = {8, s.vs};
  turn2.insert(turn2.end(), 6, s.image_token);
  turn2.insert(turn2.end(), {s.ve, 9, 10});
  model->prefill(*session, turn2, images, logits);
  std::vector<std::int32_t> all = turn1;
  all.push_back(7);
  all.insert(all.end(), turn2.begin(), turn2.end());
  const Tensor feats = ref_vision(ck, images);
  Tensor ref = ref_text(ck, all, feats, grids);
  EXPECT_LT(rel_l2(logits.data(), ref.data(), static_cast<std::size_t>(s.V)), 1e-5);
  EXPECT_EQ(session->rope_delta(), 3 - 6);
  model->decode(*session, 11, logits);
  all.push_back(11);
  ref = ref_text(ck, all, feats, grids);
  EXPECT_LT(rel_l2(logits.data(), ref.data(), static_cast<std::size_t>(s.V)), 1e-5);
  fs::remove_all(ck.dir);
}

TEST(Model, DecodeDoesNotAllocate) {
  Spec s;
  s.V = 400;
  s.image_token = 390, s.vs = 388, s.ve = 389;
  const Checkpoint ck = make_checkpoint(s, "noalloc", 5);
  mv::qwen25vl::LoadOptions opt;
  opt.threads = 2;
  auto model = mv::qwen25vl::Model::load(ck.dir, opt);
  auto session = model->new_session(32);
  std::vector<float> logits(static_cast<std::size_t>(s.V));
  const std::vector<std::int32_t> prompt = {1, 2, 3, 4, 5};
  model->prefill(*session, prompt, {}, logits);
  model->decode(*session, 6, logits);  // first use of per-thread scratch
  g_allocations = 0;
  g_count_allocations = true;
  for (std::int32_t t = 7; t < 17; ++t) model->decode(*session, t, logits);
  g_count_allocations = false;
  EXPECT_EQ(g_allocations.load(), 0);
  EXPECT_EQ(session->length(), 16);
  fs::remove_all(ck.dir);
}

TEST(Model, ClearErrors) {
  Spec s;
  s.V = 400;
  s.image_token = 390, s.vs = 388, s.ve = 389;
  {
    const Checkpoint ck = make_checkpoint(s, "missing", 1, "model.layers.1.mlp.up_proj.weight");
    try {
      mv::qwen25vl::Model::load(ck.dir);
      FAIL() << "no error";
    } catch (const mv::Error& e) {
      EXPECT_EQ(e.code(), mv::Errc::kNotFound);
      EXPECT_NE(std::string(e.what()).find("model.layers.1.mlp.up_proj.weight"), std::string::npos)
          << e.what();
    }
    fs::remove_all(ck.dir);
  }
  {
    const Checkpoint ck = make_checkpoint(s, "shape", 1, "", "visual.blocks.2.attn.qkv.weight");
    try {
      mv::qwen25vl::Model::load(ck.dir);
      FAIL() << "no error";
    } catch (const mv::Error& e) {
      EXPECT_EQ(e.code(), mv::Errc::kInvalidInput);
      EXPECT_NE(std::string(e.what()).find("visual.blocks.2.attn.qkv.weight"), std::string::npos) << e.what();
    }
    fs::remove_all(ck.dir);
  }
  const Checkpoint ck = make_checkpoint(s, "errors", 2);
  auto model = mv::qwen25vl::Model::load(ck.dir);
  auto session = model->new_session(8);
  std::vector<float> logits(static_cast<std::size_t>(s.V));
  const std::vector<std::int32_t> bad_id = {1, 400};
  EXPECT_EQ(error_code_of([&] { model->prefill(*session, bad_id, {}, logits); }), mv::Errc::kInvalidInput);
  const std::vector<std::int32_t> pads = {1, s.image_token, s.image_token};
  EXPECT_EQ(error_code_of([&] { model->prefill(*session, pads, {}, logits); }), mv::Errc::kInvalidInput);
  const std::vector<std::int32_t> long_prompt(9, 5);
  EXPECT_EQ(error_code_of([&] { model->prefill(*session, long_prompt, {}, logits); }), mv::Errc::kTooLarge);
  std::vector<float> small(10);
  EXPECT_EQ(error_code_of([&] { model->prefill(*session, std::vector<std::int32_t>{1}, {}, small); }),
            mv::Errc::kInvalidInput);
  EXPECT_EQ(session->length(), 0);  // nothing was appended by the failed calls
  mv::PixelValues wrong;
  wrong.grid_thw = {1, 4, 4};
  wrong.rows = 15;
  wrong.cols = 3 * 2 * 14 * 14;
  wrong.data.resize(static_cast<std::size_t>(wrong.rows * wrong.cols));
  EXPECT_EQ(error_code_of([&] { model->encode_images(std::vector<mv::PixelValues>{wrong}); }),
            mv::Errc::kInvalidInput);
  const std::vector<std::int32_t> eight(8, 5);
  model->prefill(*session, eight, {}, logits);
  EXPECT_EQ(error_code_of([&] { model->decode(*session, 5, logits); }), mv::Errc::kTooLarge);
  fs::remove_all(ck.dir);
}

}  // namespace
