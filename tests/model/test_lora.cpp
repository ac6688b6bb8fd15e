// LoRA adapters merged at load (src/model/qwen25vl/lora.*): on the tiny fixture models, one layer's merged
// weight against y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ computed here in double; the logits of base + adapter
// against a checkpoint into which this test merged the adapter itself; both key layouts; rsLoRA and
// rank/alpha patterns; NF4 (quantized at load and NF4 checkpoints); and clear errors for bad adapters.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/numeric.hpp"
#include "common/temp_dir.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "io/image.hpp"
#include "model/qwen25vl/lora.hpp"
#include "model/qwen25vl/model.hpp"
#include "model/qwen25vl/random_checkpoint.hpp"
#include "model/qwen25vl/weights.hpp"
#include "ops/ops.hpp"
#include "quant/nf4_checkpoint.hpp"
#include "vision/preprocess.hpp"

namespace fs = std::filesystem;
using namespace mv;
using namespace mv::qwen25vl;
using mv::test::rel_l2;

namespace {

const fs::path kFixtures = fs::path(MV_FIXTURES_DIR) / "model";

using mv::test::TempDir;

// A fixture's checkpoint (seed, dtype, init std of tests/fixtures/model/<name>/fixture.json).
ModelConfig write_fixture(const std::string& name, const fs::path& dir) {
  const fs::path fdir = kFixtures / name;
  const auto fixture = nlohmann::json::parse(read_file(fdir / "fixture.json"));
  RandomCheckpointOptions opt;
  opt.seed = fixture["seed"].get<std::uint64_t>();
  const std::string dt = fixture["dtype"].get<std::string>();
  opt.dtype = dt == "bf16" ? DType::kBF16 : dt == "f16" ? DType::kF16 : DType::kF32;
  opt.init_std = fixture.value("init_std", 0.02);
  opt.threads = 2;
  const ModelConfig config = random_checkpoint_config((fdir / "config.json").string());
  write_random_checkpoint(config, dir, opt);
  return config;
}

std::vector<double> to_f64(const TensorView& v) {
  const std::vector<float> f = to_f32(v);
  return {f.begin(), f.end()};
}

// The adapter's A [r, in] and B [out, r] of one module, read straight from the file.
struct AB {
  std::vector<double> a, b;
  std::int64_t r = 0;
};
AB read_ab(const fs::path& adapter, const std::string& key_module) {
  const TensorStore s = TensorStore::open(adapter / "adapter_model.safetensors");
  AB ab;
  const TensorView a = s.view("base_model.model." + key_module + ".lora_A.weight");
  ab.a = to_f64(a);
  ab.b = to_f64(s.view("base_model.model." + key_module + ".lora_B.weight"));
  ab.r = a.shape()[0];
  return ab;
}

std::vector<float> matrix_f32(const ops::Matrix& m) {
  std::vector<float> out(static_cast<std::size_t>(m.rows * m.cols));
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (m.dtype == DType::kF32)
      out[i] = static_cast<const float*>(m.data)[i];
    else if (m.dtype == DType::kBF16)
      out[i] = bf16_to_f32(static_cast<const std::uint16_t*>(m.data)[i]);
    else
      out[i] = f16_to_f32(static_cast<const std::uint16_t*>(m.data)[i]);
  }
  return out;
}

// Copies a checkpoint folder with every adapted Linear weight replaced by W + s·B·A, computed here in
// double from the files (then rounded once to the weight's dtype).
void write_merged_reference(const fs::path& src, const fs::path& adapter_dir, const fs::path& dst,
                            const ModelConfig& config) {
  fs::create_directories(dst);
  const auto adapter = LoraAdapter::load(adapter_dir, config);
  const TensorStore store = TensorStore::open(src);
  SafetensorsWriter w;
  std::vector<std::vector<std::uint8_t>> keep;
  for (const auto& name : store.names()) {
    const TensorView v = store.view(name);
    const std::string module = name.ends_with(".weight") ? name.substr(0, name.size() - 7) : name;
    const LoraModule* m = adapter->find(module);
    if (!m) {
      w.add(name, v.dtype(), v.shape(), v.bytes);
      continue;
    }
    const AB ab = read_ab(adapter_dir, m->name);
    const std::vector<double> base = to_f64(v);
    const double s = m->scale;
    auto& bytes = keep.emplace_back(base.size() * dtype_size(v.dtype()));
    for (std::int64_t o = 0; o < m->out; ++o)
      for (std::int64_t i = 0; i < m->in; ++i) {
        double d = 0;
        for (std::int64_t k = 0; k < ab.r; ++k)
          d += ab.b[static_cast<std::size_t>(o * ab.r + k)] * ab.a[static_cast<std::size_t>(k * m->in + i)];
        const auto e = static_cast<std::size_t>(o * m->in + i);
        const float merged = static_cast<float>(base[e]) + static_cast<float>(static_cast<float>(d) * s);
        if (v.dtype() == DType::kF32) {
          std::memcpy(bytes.data() + 4 * e, &merged, 4);
        } else {
          const std::uint16_t h = v.dtype() == DType::kBF16 ? f32_to_bf16(merged) : f32_to_f16(merged);
          std::memcpy(bytes.data() + 2 * e, &h, 2);
        }
      }
    w.add(name, v.dtype(), v.shape(), bytes);
  }
  w.write(dst / "model.safetensors");
  for (const auto& e : fs::directory_iterator(src))
    if (e.is_regular_file() && !e.path().string().ends_with(".safetensors"))
      fs::copy_file(e.path(), dst / e.path().filename(), fs::copy_options::overwrite_existing);
}

struct Prompt {
  std::vector<std::int32_t> ids;
  std::vector<PixelValues> images;
  std::vector<std::int32_t> next = {151645, 198, 151644};
};

Prompt make_prompt(const fs::path& model_dir, const ModelConfig& config, bool image) {
  Prompt p;
  p.ids = {151644, 872, 198, 2610, 525, 264};
  if (image) {
    const PreprocessConfig pre = PreprocessConfig::load(model_dir);
    p.images.push_back(preprocess_image(load_image(kFixtures / "images" / "form_150x120.png"), pre));
    p.ids.push_back(config.vision_start_token_id);
    for (std::int64_t k = 0; k < p.images.back().merged_tokens(); ++k) p.ids.push_back(config.image_token_id);
    p.ids.push_back(config.vision_end_token_id);
  }
  for (std::int32_t t : {8948, 13, 10950, 17847}) p.ids.push_back(t);
  return p;
}

std::vector<std::vector<float>> run(const fs::path& dir, const LoadOptions& options, const Prompt& p) {
  auto model = Model::load(dir, options);
  const auto V = static_cast<std::size_t>(model->config().text.vocab_size);
  auto session = model->new_session(static_cast<std::int64_t>(p.ids.size() + p.next.size() + 4));
  std::vector<std::vector<float>> out;
  out.emplace_back(V);
  model->prefill(*session, p.ids, p.images, out.back());
  for (auto t : p.next) {
    out.emplace_back(V);
    model->decode(*session, t, out.back());
  }
  return out;
}

RandomAdapterOptions adapter_options(std::uint64_t seed) {
  RandomAdapterOptions o;
  o.rank = 4;
  o.alpha = 8;
  o.seed = seed;
  o.b_std = 0.05;
  return o;
}

// y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ in double, W from the base checkpoint, A and B from the adapter file.
std::vector<double> reference_linear(const std::vector<float>& x, std::int64_t m, const std::vector<float>& w,
                                     const std::vector<float>& bias, const AB& ab, double s, std::int64_t out,
                                     std::int64_t in) {
  std::vector<double> y(static_cast<std::size_t>(m * out));
  for (std::int64_t r = 0; r < m; ++r) {
    std::vector<double> xa(static_cast<std::size_t>(ab.r));
    for (std::int64_t k = 0; k < ab.r; ++k)
      for (std::int64_t i = 0; i < in; ++i)
        xa[static_cast<std::size_t>(k)] +=
            double(x[static_cast<std::size_t>(r * in + i)]) * ab.a[static_cast<std::size_t>(k * in + i)];
    for (std::int64_t o = 0; o < out; ++o) {
      double acc = bias.empty() ? 0.0 : bias[static_cast<std::size_t>(o)];
      for (std::int64_t i = 0; i < in; ++i)
        acc += double(x[static_cast<std::size_t>(r * in + i)]) * w[static_cast<std::size_t>(o * in + i)];
      double lora = 0;
      for (std::int64_t k = 0; k < ab.r; ++k)
        lora += xa[static_cast<std::size_t>(k)] * ab.b[static_cast<std::size_t>(o * ab.r + k)];
      y[static_cast<std::size_t>(r * out + o)] = acc + s * lora;
    }
  }
  return y;
}

double rel_l2_f64(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / den);
}

// Rewrites an adapter folder: `edit_config` on adapter_config.json, `edit_tensors` on the name -> tensor map.
struct Tensor {
  DType dtype;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> bytes;
};
void rewrite_adapter(const fs::path& src, const fs::path& dst,
                     const std::function<void(nlohmann::json&)>& edit_config,
                     const std::function<void(std::map<std::string, Tensor>&)>& edit_tensors) {
  fs::create_directories(dst);
  auto cfg = nlohmann::json::parse(read_file(src / "adapter_config.json"));
  if (edit_config) edit_config(cfg);
  write_file(dst / "adapter_config.json", cfg.dump(2));
  std::map<std::string, Tensor> tensors;
  {
    const TensorStore s = TensorStore::open(src / "adapter_model.safetensors");
    for (const auto& n : s.names()) {
      const TensorView v = s.view(n);
      tensors[n] = {v.dtype(), v.shape(), {v.bytes.begin(), v.bytes.end()}};
    }
  }
  if (edit_tensors) edit_tensors(tensors);
  SafetensorsWriter w;
  for (const auto& [n, t] : tensors) w.add(n, t.dtype, t.shape, t.bytes);
  w.write(dst / "adapter_model.safetensors");
}

// The error Model::load gives for an adapter (empty when it loads).
std::pair<Errc, std::string> load_error(const fs::path& model, const fs::path& adapter) {
  LoadOptions lo;
  lo.threads = 2;
  lo.adapter = adapter;
  try {
    Model::load(model, lo);
  } catch (const Error& e) {
    return {e.code(), e.what()};
  }
  return {Errc::kInternal, ""};
}

// The fixture checkpoints and their adapters are written on first use (each test runs in its own process
// under CTest, so a test writes only what it needs).
class LoraTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { tmp_ = new TempDir("suite"); }
  static void TearDownTestSuite() {
    delete f32_config_;
    delete bf16_config_;
    delete tmp_;
    f32_config_ = bf16_config_ = nullptr;
  }
  static const ModelConfig& f32() {
    if (!f32_config_) {
      f32_config_ = new ModelConfig(write_fixture("text_only_f32", tmp_->path() / "f32"));
      write_random_adapter(tmp_->path() / "f32", tmp_->path() / "f32-adapter", adapter_options(11));
    }
    return *f32_config_;
  }
  static const ModelConfig& bf16() {
    if (!bf16_config_) {
      bf16_config_ = new ModelConfig(write_fixture("tied_bf16_image", tmp_->path() / "bf16"));
      write_random_adapter(tmp_->path() / "bf16", tmp_->path() / "bf16-adapter", adapter_options(12));
    }
    return *bf16_config_;
  }
  static fs::path dir(const std::string& name) { return tmp_->path() / name; }
  static TempDir* tmp_;
  static ModelConfig* f32_config_;
  static ModelConfig* bf16_config_;
};
TempDir* LoraTest::tmp_ = nullptr;
ModelConfig* LoraTest::f32_config_ = nullptr;
ModelConfig* LoraTest::bf16_config_ = nullptr;

TEST_F(LoraTest, MergedLayerEqualsExplicitLowRankReference) {
  const ModelConfig& c = f32();
  WeightOptions plain, with;
  plain.threads = with.threads = 2;
  with.adapter = LoraAdapter::load(dir("f32-adapter"), c);
  const auto base = Weights::load(dir("f32"), c, plain);
  const auto merged = Weights::load(dir("f32"), c, with);
  // 7 per text layer (q,k,v,o,gate,up,down) and the vision MLP's gate/up/down per block: the default
  // target names hit both towers.
  EXPECT_EQ(merged->lora_merged, static_cast<std::size_t>(7 * c.text.num_hidden_layers + 3 * c.vision.depth));
  struct Case {
    const Linear& b;
    const Linear& m;
    std::string key;  // module name in the adapter file (nested layout)
  };
  const Case cases[] = {
      {base->text.layers[0].q, merged->text.layers[0].q, "model.language_model.layers.0.self_attn.q_proj"},
      {base->text.layers[1].down, merged->text.layers[1].down, "model.language_model.layers.1.mlp.down_proj"},
      {base->vision.blocks[0].up, merged->vision.blocks[0].up, "model.visual.blocks.0.mlp.up_proj"},
  };
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (const auto& cs : cases) {
    const std::int64_t out = cs.b.w.rows, in = cs.b.w.cols, m = 3;
    std::vector<float> x(static_cast<std::size_t>(m * in));
    for (auto& v : x) v = nd(rng);
    const AB ab = read_ab(dir("f32-adapter"), cs.key);
    const double s = 8.0 / 4.0;
    const auto want = reference_linear(x, m, matrix_f32(cs.b.w), cs.b.bias, ab, s, out, in);
    std::vector<float> got(static_cast<std::size_t>(m * out)), plain_y(got.size());
    ops::linear(x.data(), m, cs.m.w, cs.m.b(), got.data(), nullptr);
    ops::linear(x.data(), m, cs.b.w, cs.b.b(), plain_y.data(), nullptr);
    EXPECT_LT(rel_l2_f64(got, want), 1e-5) << cs.key;
    EXPECT_GT(rel_l2_f64(plain_y, want), 1e-3) << cs.key << ": the adapter must change the layer";
  }
  // Not targeted: the vision attention and the merger keep the checkpoint's weights.
  EXPECT_EQ(matrix_f32(base->vision.blocks[0].qkv.w), matrix_f32(merged->vision.blocks[0].qkv.w));
  EXPECT_EQ(matrix_f32(base->vision.mlp0.w), matrix_f32(merged->vision.mlp0.w));
  EXPECT_NE(matrix_f32(base->vision.blocks[0].up.w), matrix_f32(merged->vision.blocks[0].up.w));
}

TEST_F(LoraTest, LogitsEqualACheckpointMergedByTheTest) {
  struct Case {
    const char* name;
    const ModelConfig* config;
    bool image;
    double tolerance;
  };
  for (const Case& c : {Case{"f32", &f32(), false, 1e-5}, Case{"bf16", &bf16(), true, 1e-4}}) {
    SCOPED_TRACE(c.name);
    const fs::path model = dir(c.name), adapter = dir(std::string(c.name) + "-adapter"),
                   ref = dir(std::string(c.name) + "-merged-ref");
    write_merged_reference(model, adapter, ref, *c.config);
    const Prompt p = make_prompt(model, *c.config, c.image);
    LoadOptions lo;
    lo.threads = 2;
    const auto plain = run(model, lo, p);
    const auto want = run(ref, lo, p);
    lo.adapter = adapter;
    const auto got = run(model, lo, p);
    for (std::size_t s = 0; s < got.size(); ++s) {
      EXPECT_LT(rel_l2(got[s], want[s]), c.tolerance) << "step " << s;
      EXPECT_GT(rel_l2(plain[s], got[s]), 1e-3) << "step " << s << ": the adapter must change the logits";
    }
  }
}

TEST_F(LoraTest, Bf16MergeRoundsOnceToNearestEven) {
  const ModelConfig& c = bf16();
  WeightOptions plain, with;
  plain.threads = with.threads = 2;
  with.adapter = LoraAdapter::load(dir("bf16-adapter"), c);
  const auto base = Weights::load(dir("bf16"), c, plain);
  const auto merged = Weights::load(dir("bf16"), c, with);
  const ops::Matrix& b = base->text.layers[1].gate.w;
  const ops::Matrix& m = merged->text.layers[1].gate.w;
  ASSERT_EQ(m.dtype, DType::kBF16);
  const AB ab = read_ab(dir("bf16-adapter"), "model.language_model.layers.1.mlp.gate_proj");
  const auto* wb = static_cast<const std::uint16_t*>(b.data);
  const auto* wm = static_cast<const std::uint16_t*>(m.data);
  std::size_t exact = 0, changed = 0;
  const std::size_t n = static_cast<std::size_t>(b.rows * b.cols);
  for (std::int64_t o = 0; o < b.rows; ++o)
    for (std::int64_t i = 0; i < b.cols; ++i) {
      double d = 0;
      for (std::int64_t k = 0; k < ab.r; ++k)
        d += ab.b[static_cast<std::size_t>(o * ab.r + k)] * ab.a[static_cast<std::size_t>(k * b.cols + i)];
      const auto e = static_cast<std::size_t>(o * b.cols + i);
      const float want_f = bf16_to_f32(wb[e]) + static_cast<float>(static_cast<float>(d) * 2.0f);
      const std::uint16_t want = f32_to_bf16(want_f);
      exact += wm[e] == want;
      changed += wm[e] != wb[e];
      // Never more than one bf16 step away (the fp32 sum order of B·A may differ by an ulp).
      EXPECT_LE(std::abs(int(wm[e]) - int(want)), 1) << "element " << e;
    }
  EXPECT_GE(double(exact), 0.999 * double(n));
  EXPECT_GT(double(changed), 0.5 * double(n));
}

TEST_F(LoraTest, BothKeyLayoutsMergeTheSameWeights) {
  const ModelConfig& c = f32();
  // The nested adapter renamed to transformers < 4.52 names.
  rewrite_adapter(dir("f32-adapter"), dir("f32-legacy"), nullptr, [](std::map<std::string, Tensor>& t) {
    std::map<std::string, Tensor> out;
    for (auto& [n, v] : t) {
      std::string k = n;
      const std::string p = "base_model.model.";
      std::string rest = k.substr(p.size());
      if (rest.starts_with("model.language_model."))
        rest = "model." + rest.substr(21);
      else if (rest.starts_with("model.visual."))
        rest = rest.substr(6);
      out[p + rest] = std::move(v);
    }
    t = std::move(out);
  });
  const auto legacy = LoraAdapter::load(dir("f32-legacy"), c);
  const auto nested = LoraAdapter::load(dir("f32-adapter"), c);
  EXPECT_EQ(legacy->layout(), KeyLayout::kLegacy);
  EXPECT_EQ(nested->layout(), KeyLayout::kNested);
  ASSERT_EQ(legacy->modules().size(), nested->modules().size());
  for (std::size_t i = 0; i < legacy->modules().size(); ++i)
    EXPECT_EQ(legacy->modules()[i].module, nested->modules()[i].module);
  EXPECT_EQ(legacy->find("visual.blocks.1.mlp.down_proj")->name, "visual.blocks.1.mlp.down_proj");
  EXPECT_EQ(nested->find("visual.blocks.1.mlp.down_proj")->name, "model.visual.blocks.1.mlp.down_proj");
  const Prompt p = make_prompt(dir("f32"), c, false);
  LoadOptions lo;
  lo.threads = 2;
  lo.adapter = dir("f32-legacy");
  const auto a = run(dir("f32"), lo, p);
  lo.adapter = dir("f32-adapter");
  const auto b = run(dir("f32"), lo, p);
  for (std::size_t s = 0; s < a.size(); ++s) EXPECT_EQ(a[s], b[s]) << "step " << s;
}

TEST_F(LoraTest, RsLoraAndPatternsSetRankAndScale) {
  const ModelConfig& c = f32();
  RandomAdapterOptions o = adapter_options(21);
  o.use_rslora = true;
  o.rank = 4;
  o.alpha = 6;
  o.rank_pattern = {{"q_proj", 2}};
  o.alpha_pattern = {{"mlp.down_proj", 3}};
  write_random_adapter(dir("f32"), dir("rs"), o);
  const auto a = LoraAdapter::load(dir("rs"), c);
  const LoraModule* q = a->find("model.layers.0.self_attn.q_proj");
  const LoraModule* k = a->find("model.layers.0.self_attn.k_proj");
  const LoraModule* d = a->find("model.layers.1.mlp.down_proj");
  const LoraModule* vd = a->find("visual.blocks.0.mlp.down_proj");
  ASSERT_TRUE(q && k && d && vd);
  EXPECT_EQ(q->rank, 2);
  EXPECT_EQ(q->a.shape(), (std::vector<std::int64_t>{2, c.text.hidden_size}));
  EXPECT_FLOAT_EQ(q->scale, static_cast<float>(6.0 / std::sqrt(2.0)));
  EXPECT_EQ(k->rank, 4);
  EXPECT_FLOAT_EQ(k->scale, static_cast<float>(6.0 / 2.0));  // alpha / sqrt(4)
  EXPECT_FLOAT_EQ(d->scale, static_cast<float>(3.0 / 2.0));
  EXPECT_FLOAT_EQ(vd->scale, static_cast<float>(3.0 / 2.0));  // "mlp.down_proj" matches the vision MLP too

  // The merged layer uses alpha/sqrt(r), not alpha/r.
  WeightOptions plain, with;
  plain.threads = with.threads = 2;
  with.adapter = a;
  const auto base = Weights::load(dir("f32"), c, plain);
  const auto merged = Weights::load(dir("f32"), c, with);
  const Linear& lb = base->text.layers[0].k;
  const Linear& lm = merged->text.layers[0].k;
  std::vector<float> x(static_cast<std::size_t>(2 * lb.w.cols));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.7 * double(i));
  const AB ab = read_ab(dir("rs"), "model.language_model.layers.0.self_attn.k_proj");
  const auto want =
      reference_linear(x, 2, matrix_f32(lb.w), lb.bias, ab, 6.0 / std::sqrt(4.0), lb.w.rows, lb.w.cols);
  const auto wrong = reference_linear(x, 2, matrix_f32(lb.w), lb.bias, ab, 6.0 / 4.0, lb.w.rows, lb.w.cols);
  std::vector<float> got(want.size());
  ops::linear(x.data(), 2, lm.w, lm.b(), got.data(), nullptr);
  EXPECT_LT(rel_l2_f64(got, want), 1e-5);
  EXPECT_GT(rel_l2_f64(got, wrong), 1e-4);
}

TEST_F(LoraTest, QuantizeAtLoadMergesFirstThenQuantizesOnce) {
  const ModelConfig& c = f32();
  write_merged_reference(dir("f32"), dir("f32-adapter"), dir("f32-merged-nf4ref"), c);
  const Prompt p = make_prompt(dir("f32"), c, false);
  LoadOptions lo;
  lo.threads = 2;
  lo.quantize = "nf4";
  const auto want = run(dir("f32-merged-nf4ref"), lo, p);
  lo.adapter = dir("f32-adapter");
  const auto got = run(dir("f32"), lo, p);
  // Same merged fp32 weights up to the last bit or so, so the same NF4 codes almost everywhere.
  for (std::size_t s = 0; s < got.size(); ++s) EXPECT_LT(rel_l2(got[s], want[s]), 1e-3) << "step " << s;
}

TEST_F(LoraTest, Nf4CheckpointIsDequantizedMergedAndRequantized) {
  const ModelConfig& c = bf16();
  quant::QuantizeCheckpointOptions qo;
  qo.threads = 2;
  quant::quantize_checkpoint(dir("bf16"), dir("bf16-nf4"), qo);
  WeightOptions plain, with;
  plain.threads = with.threads = 2;
  with.adapter = LoraAdapter::load(dir("bf16-adapter"), c);
  const auto base = Weights::load(dir("bf16-nf4"), c, plain);
  const auto merged = Weights::load(dir("bf16-nf4"), c, with);
  EXPECT_EQ(merged->lora_merged, with.adapter->modules().size());
  EXPECT_EQ(merged->lora_merged_nf4, with.adapter->modules().size());
  const ops::Matrix& b = base->text.layers[0].up.w;
  const ops::Matrix& m = merged->text.layers[0].up.w;
  ASSERT_TRUE(b.nf4 && m.nf4);
  const std::size_t n = static_cast<std::size_t>(b.rows * b.cols);
  std::vector<float> wb(n), wm(n);
  quant::dequantize(*b.nf4, wb);
  quant::dequantize(*m.nf4, wm);
  const AB ab = read_ab(dir("bf16-adapter"), "model.language_model.layers.0.mlp.up_proj");
  double err = 0, norm = 0, delta_norm = 0;
  for (std::int64_t o = 0; o < b.rows; ++o)
    for (std::int64_t i = 0; i < b.cols; ++i) {
      double d = 0;
      for (std::int64_t k = 0; k < ab.r; ++k)
        d += ab.b[static_cast<std::size_t>(o * ab.r + k)] * ab.a[static_cast<std::size_t>(k * b.cols + i)];
      const auto e = static_cast<std::size_t>(o * b.cols + i);
      const double target = bf16_to_f32(f32_to_bf16(wb[e])) + 2.0 * d;
      err += (wm[e] - target) * (wm[e] - target);
      norm += target * target;
      delta_norm += 4.0 * d * d;
    }
  // Re-quantized: NF4's own relative error (0.05-0.12 for Gaussian weights), and the merged weight moved.
  EXPECT_LT(std::sqrt(err / norm), 0.12);
  EXPECT_GT(std::sqrt(delta_norm / norm), 0.01);
  EXPECT_NE(std::memcmp(b.nf4->packed, m.nf4->packed, n / 2), 0);
}

TEST_F(LoraTest, BadAdaptersGiveClearErrors) {
  f32();
  const fs::path model = dir("f32"), good = dir("f32-adapter");
  auto expect = [&](const std::string& name, Errc code, std::vector<std::string> parts,
                    const std::function<void(nlohmann::json&)>& cfg,
                    const std::function<void(std::map<std::string, Tensor>&)>& tensors) {
    SCOPED_TRACE(name);
    const fs::path d = dir("bad-" + name);
    rewrite_adapter(good, d, cfg, tensors);
    const auto [got, message] = load_error(model, d);
    ASSERT_FALSE(message.empty()) << "loaded without error";
    EXPECT_EQ(got, code) << message;
    for (const auto& p : parts) EXPECT_NE(message.find(p), std::string::npos) << message;
  };
  const std::string q0 = "base_model.model.model.language_model.layers.0.self_attn.q_proj";
  expect(
      "peft-type", Errc::kUnsupported, {"peft_type", "PREFIX_TUNING"},
      [](nlohmann::json& j) { j["peft_type"] = "PREFIX_TUNING"; }, nullptr);
  expect(
      "dora", Errc::kUnsupported, {"use_dora", "DoRA"}, [](nlohmann::json& j) { j["use_dora"] = true; },
      nullptr);
  expect(
      "bias", Errc::kUnsupported, {"bias", "lora_only"}, [](nlohmann::json& j) { j["bias"] = "lora_only"; },
      nullptr);
  expect("missing-key", Errc::kInvalidInput, {q0 + ".lora_B.weight", "missing"}, nullptr,
         [&](std::map<std::string, Tensor>& t) { t.erase(q0 + ".lora_B.weight"); });
  expect("missing-module", Errc::kInvalidInput, {q0 + ".lora_A.weight", "missing", "target_modules"}, nullptr,
         [&](std::map<std::string, Tensor>& t) {
           t.erase(q0 + ".lora_A.weight");
           t.erase(q0 + ".lora_B.weight");
         });
  expect(
      "wrong-rank", Errc::kInvalidInput, {"lora_A.weight", "has shape [4, ", "expected [8, ", "rank 8"},
      [](nlohmann::json& j) { j["r"] = 8; }, nullptr);
  expect("unknown-module", Errc::kInvalidInput, {"self_attn.x_proj", "not a Linear layer"}, nullptr,
         [&](std::map<std::string, Tensor>& t) {
           t["base_model.model.model.language_model.layers.0.self_attn.x_proj.lora_A.weight"] =
               t[q0 + ".lora_A.weight"];
         });
  expect("layer-out-of-range", Errc::kInvalidInput, {"layers.7.self_attn.q_proj", "not a Linear layer"},
         nullptr, [&](std::map<std::string, Tensor>& t) {
           t["base_model.model.model.language_model.layers.7.self_attn.q_proj.lora_A.weight"] =
               t[q0 + ".lora_A.weight"];
         });
  expect(
      "not-targeted", Errc::kInvalidInput, {"k_proj", "does not select"},
      [](nlohmann::json& j) {
        j["target_modules"] = {"q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
      },
      nullptr);
  expect(
      "dora-tensor", Errc::kUnsupported, {"lora_magnitude_vector"}, nullptr,
      [&](std::map<std::string, Tensor>& t) { t[q0 + ".lora_magnitude_vector"] = t[q0 + ".lora_A.weight"]; });
  expect("mixed-layouts", Errc::kInvalidInput, {"both key layouts"}, nullptr,
         [&](std::map<std::string, Tensor>& t) {
           auto v = t[q0 + ".lora_A.weight"];
           t.erase(q0 + ".lora_A.weight");
           t["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] = v;
         });
  expect("no-prefix", Errc::kInvalidInput,
         {"model.layers.0.self_attn.q_proj.lora_A.weight", "base_model.model."}, nullptr,
         [&](std::map<std::string, Tensor>& t) {
           auto v = t[q0 + ".lora_A.weight"];
           t.erase(q0 + ".lora_A.weight");
           t["model.layers.0.self_attn.q_proj.lora_A.weight"] = v;
         });
  expect(
      "bad-regex", Errc::kInvalidInput, {"target_modules", "regular expression"},
      [](nlohmann::json& j) { j["target_modules"] = ".*(q_proj"; }, nullptr);

  // A pickled adapter is refused with a clear message; a missing folder names it.
  const fs::path bin = dir("bad-bin");
  fs::create_directories(bin);
  fs::copy_file(good / "adapter_config.json", bin / "adapter_config.json",
                fs::copy_options::overwrite_existing);
  write_file(bin / "adapter_model.bin", "not a pickle");
  auto [code, message] = load_error(model, bin);
  EXPECT_EQ(code, Errc::kUnsupported);
  EXPECT_NE(message.find("adapter_model.bin"), std::string::npos) << message;
  EXPECT_NE(message.find("safetensors"), std::string::npos) << message;
  std::tie(code, message) = load_error(model, dir("no-such-adapter"));
  EXPECT_EQ(code, Errc::kNotFound);
  EXPECT_NE(message.find("no-such-adapter"), std::string::npos) << message;
}

TEST_F(LoraTest, ModulesToSaveReplaceWholeTensors) {
  const ModelConfig& c = f32();
  const std::int64_t V = c.text.vocab_size, H = c.text.hidden_size;
  Tensor head{DType::kF32, {V, H}, std::vector<std::uint8_t>(static_cast<std::size_t>(V * H) * 4)};
  for (std::int64_t i = 0; i < V * H; ++i) {
    const float v = static_cast<float>(std::cos(0.001 * double(i)));
    std::memcpy(head.bytes.data() + 4 * i, &v, 4);
  }
  rewrite_adapter(
      dir("f32-adapter"), dir("saved"), [](nlohmann::json& j) { j["modules_to_save"] = {"lm_head"}; },
      [&](std::map<std::string, Tensor>& t) { t["base_model.model.lm_head.weight"] = head; });
  WeightOptions with;
  with.threads = 2;
  with.adapter = LoraAdapter::load(dir("saved"), c);
  const auto w = Weights::load(dir("f32"), c, with);
  EXPECT_EQ(w->lora_saved, 1u);
  EXPECT_FALSE(w->text.tied);  // PEFT wraps a copy of lm_head: it no longer follows the embeddings
  const auto got = matrix_f32(w->text.lm_head);
  ASSERT_EQ(got.size(), static_cast<std::size_t>(V * H));
  EXPECT_EQ(std::memcmp(got.data(), head.bytes.data(), head.bytes.size()), 0);
  // The same tensor without modules_to_save naming it is an unknown key.
  rewrite_adapter(
      dir("saved"), dir("saved-bad"), [](nlohmann::json& j) { j["modules_to_save"] = nullptr; }, nullptr);
  const auto [code, message] = load_error(dir("f32"), dir("saved-bad"));
  EXPECT_EQ(code, Errc::kInvalidInput);
  EXPECT_NE(message.find("base_model.model.lm_head.weight"), std::string::npos) << message;
  EXPECT_NE(message.find("modules_to_save"), std::string::npos) << message;
}

struct CliResult {
  int exit_code = -1;
  std::string out;
};
// Runs the medvision binary (stderr merged into the output).
CliResult run_cli(const std::string& args) {
  CliResult r;
  const std::string cmd = std::string(MV_BINARY) + " -q " + args + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  std::size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

TEST_F(LoraTest, CommandLineWritesAndAppliesAdapters) {
  f32();
  const fs::path model = dir("f32"), ad = dir("cli-adapter");
  auto r = run_cli(
      fmt::format("debug random-adapter --model {} --out {} --rank 2 --alpha 4 --targets q_proj,v_proj "
                  "--layout legacy --seed 3 --json",
                  model.string(), ad.string()));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const auto info = nlohmann::json::parse(r.out.substr(r.out.find('{')));
  EXPECT_EQ(info["modules"], 2 * f32().text.num_hidden_layers);  // q and v of each text layer
  const auto cfg = nlohmann::json::parse(read_file(ad / "adapter_config.json"));
  EXPECT_EQ(cfg["peft_type"], "LORA");
  EXPECT_EQ(cfg["r"], 2);
  const TensorStore st = TensorStore::open(ad / "adapter_model.safetensors");
  ASSERT_TRUE(st.contains("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"));
  for (const auto& n : st.names()) {  // both A and B random and non-zero
    const auto v = to_f32(st.view(n));
    double sum = 0;
    for (float x : v) sum += std::abs(x);
    EXPECT_GT(sum / double(v.size()), 1e-3) << n;
  }

  const fs::path with = dir("cli-with.f32");
  const std::string gen = fmt::format(
      "generate --model {} --prompt hello --max-new-tokens 1 --device cpu --json ", model.string());
  r = run_cli(gen + "--adapter " + ad.string() + " --logits-out " + with.string());
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const auto ids =
      nlohmann::json::parse(r.out.substr(r.out.find('{')))["prompt_ids"].get<std::vector<std::int32_t>>();
  auto read_f32 = [](const fs::path& f) {
    const std::string b = read_file(f);
    std::vector<float> v(b.size() / 4);
    std::memcpy(v.data(), b.data(), v.size() * 4);
    return v;
  };
  const auto a = read_f32(with);
  ASSERT_EQ(a.size(), static_cast<std::size_t>(f32().text.vocab_size));
  // The command's logits are the engine's with the adapter merged, not the base model's.
  auto prefill = [&](const fs::path& adapter) {
    LoadOptions lo;
    lo.threads = 2;
    lo.adapter = adapter;
    auto m = Model::load(model, lo);
    auto session = m->new_session(static_cast<std::int64_t>(ids.size() + 1));
    std::vector<float> logits(a.size());
    m->prefill(*session, ids, {}, logits);
    return logits;
  };
  EXPECT_LT(rel_l2(a, prefill(ad)), 1e-6);
  EXPECT_GT(rel_l2(prefill({}), a), 1e-3);

  // The other commands pass the adapter to the engine (its error shows), and check their options.
  const fs::path missing = dir("no-adapter-here");
  r = run_cli(fmt::format("extract {} --model {} --adapter {}",
                          (kFixtures / "images" / "form_150x120.png").string(), model.string(),
                          missing.string()));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.out.find("no-adapter-here"), std::string::npos) << r.out;
  r = run_cli("serve --port 0 --adapter " + ad.string());
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("--adapter needs --model"), std::string::npos) << r.out;
  r = run_cli(fmt::format("extract {} --adapter {}", (kFixtures / "images" / "form_150x120.png").string(),
                          ad.string()));
  EXPECT_EQ(r.exit_code, 2) << r.out;
}

TEST(LoraConfigTest, TargetRulesFollowPeft) {
  LoraConfig c = LoraConfig::from_json(
      {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"target_modules", {"q_proj", "mlp.down_proj"}}},
      "t");
  EXPECT_TRUE(c.targets("model.language_model.layers.3.self_attn.q_proj"));
  EXPECT_TRUE(c.targets("q_proj"));
  EXPECT_FALSE(c.targets("model.language_model.layers.3.self_attn.xq_proj"));
  EXPECT_TRUE(c.targets("model.visual.blocks.0.mlp.down_proj"));
  c.layers_to_transform = {1, 2};
  EXPECT_FALSE(c.targets("model.language_model.layers.3.self_attn.q_proj"));
  EXPECT_TRUE(c.targets("model.language_model.layers.2.self_attn.q_proj"));
  EXPECT_TRUE(c.targets("model.visual.blocks.1.mlp.down_proj"));  // PEFT's default rule: any "<name>.<n>."
  c.layers_pattern = {"layers"};
  EXPECT_FALSE(c.targets("model.visual.blocks.1.mlp.down_proj"));
  c.exclude_modules = {"layers.2.self_attn.q_proj"};
  EXPECT_FALSE(c.targets("model.language_model.layers.2.self_attn.q_proj"));
  const LoraConfig r = LoraConfig::from_json({{"peft_type", "LORA"},
                                              {"r", 4},
                                              {"target_modules", R"(.*language_model.*\.(q|v)_proj)"},
                                              {"rank_pattern", {{"layers.0.self_attn.q_proj", 16}}}},
                                             "t");
  EXPECT_TRUE(r.targets("model.language_model.layers.0.self_attn.v_proj"));
  EXPECT_FALSE(r.targets("model.language_model.layers.0.self_attn.k_proj"));
  EXPECT_FALSE(r.targets("model.visual.blocks.0.attn.q_proj"));
  EXPECT_EQ(r.rank_for("model.language_model.layers.0.self_attn.q_proj"), 16);
  EXPECT_EQ(r.rank_for("model.language_model.layers.10.self_attn.q_proj"), 4);  // needs a "." before "layers"
  EXPECT_FLOAT_EQ(r.scale_for("model.language_model.layers.1.self_attn.q_proj"), 2.0f);  // default alpha 8
}

}  // namespace
