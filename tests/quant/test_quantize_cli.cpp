// `medvision quantize` on a tiny checkpoint: the serialized layout (keys, dtypes, shapes, JSON), the
// config, copied files, --skip, errors; then the independent numpy checker (tools/reference/nf4_reference.py)
// on the result, skipped when no python3 with numpy is found.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "../cli/run_cli.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "io/safetensors.hpp"
#include "model/qwen25vl/model.hpp"
#include "model/qwen25vl/random_checkpoint.hpp"
#include "quant/nf4_checkpoint.hpp"

namespace fs = std::filesystem;
using namespace mv;

namespace {

const fs::path kRepo = fs::path(MV_FIXTURES_DIR).parent_path().parent_path();

struct Fixture {
  fs::path root, model;
  Fixture() {
    root = fs::temp_directory_path() / fmt::format("mv-quantize-cli-{}", ::getpid());
    fs::remove_all(root);
    model = root / "model";
    qwen25vl::RandomCheckpointOptions opt;
    opt.seed = 5;
    opt.dtype = DType::kBF16;
    opt.threads = 2;
    // Untied lm_head, nested 3420-like vision MLP: the 7B-style fixture config.
    qwen25vl::write_random_checkpoint(
        qwen25vl::random_checkpoint_config(
            (fs::path(MV_FIXTURES_DIR) / "model" / "untied_f16_two_images" / "config.json").string()),
        model, opt);
  }
  ~Fixture() {
    std::error_code ec;
    fs::remove_all(root, ec);
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

std::string python_with_numpy() {
  for (const char* py : {"/usr/bin/python3", "python3"}) {
    const std::string cmd = std::string(py) + " -c 'import numpy' >/dev/null 2>&1";
    if (std::system(cmd.c_str()) == 0) return py;
  }
  return "";
}

}  // namespace

TEST(QuantizeCli, WritesBitsandbytesLayout) {
  const auto& f = fixture();
  const fs::path out = f.root / "nf4";
  const auto r = mv::testing::run_cli(
      fmt::format("-q quantize --model {} --out {} --threads 2", f.model.string(), out.string()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto info = nlohmann::json::parse(r.out);
  const auto config = ModelConfig::load(f.model);
  const int expected = 7 * config.text.num_hidden_layers + 5 * config.vision.depth + 2;
  EXPECT_EQ(info["quantized_weights"].get<int>(), expected);

  const TensorStore in = TensorStore::open(f.model), q = TensorStore::open(out);
  // One weight in detail: q_proj of layer 0.
  const std::string key = "model.layers.0.self_attn.q_proj.weight";
  const auto shape = in.view(key).shape();
  const std::int64_t n = shape[0] * shape[1], nb = (n + 63) / 64;
  auto expect = [&](const std::string& name, DType dt, std::vector<std::int64_t> s) {
    ASSERT_TRUE(q.contains(name)) << name;
    EXPECT_EQ(q.view(name).dtype(), dt) << name;
    EXPECT_EQ(q.view(name).shape(), s) << name;
  };
  expect(key, DType::kU8, {(n + 1) / 2, 1});
  expect(key + ".absmax", DType::kU8, {nb});
  expect(key + ".quant_map", DType::kF32, {16});
  expect(key + ".nested_absmax", DType::kF32, {(nb + 255) / 256});
  expect(key + ".nested_quant_map", DType::kF32, {256});
  const TensorView js = q.view(key + ".quant_state.bitsandbytes__nf4");
  const std::string json_text(js.bytes.begin(), js.bytes.end());
  EXPECT_TRUE(json_text.starts_with(
      fmt::format(R"({{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [{}, {}], )"
                  R"("nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": )",
                  shape[0], shape[1])))
      << json_text;
  // The codes are those of quantizing the input tensor.
  const TensorView orig = in.view(key);
  const auto ref = quant::quantize_nf4(orig.bytes.data(), orig.dtype(), shape);
  const TensorView packed = q.view(key);
  EXPECT_TRUE(std::equal(ref.packed.begin(), ref.packed.end(), packed.bytes.begin()));
  // Kept in 16 bits: embeddings, lm_head, norms, biases, patch embedding.
  for (const char* k : {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                        "model.layers.0.self_attn.q_proj.bias", "visual.patch_embed.proj.weight"}) {
    ASSERT_TRUE(q.contains(k)) << k;
    EXPECT_EQ(q.view(k).dtype(), in.view(k).dtype()) << k;
    EXPECT_FALSE(q.contains(std::string(k) + ".quant_state.bitsandbytes__nf4")) << k;
  }
  EXPECT_TRUE(q.contains("visual.blocks.0.mlp.down_proj.weight.quant_state.bitsandbytes__nf4"));
  EXPECT_TRUE(q.contains("visual.merger.mlp.2.weight.quant_state.bitsandbytes__nf4"));

  const auto cfg = nlohmann::json::parse(read_file(out / "config.json"));
  ASSERT_TRUE(cfg.contains("quantization_config"));
  const auto& qc = cfg["quantization_config"];
  EXPECT_EQ(qc["quant_method"], "bitsandbytes");
  EXPECT_EQ(qc["bnb_4bit_quant_type"], "nf4");
  EXPECT_EQ(qc["bnb_4bit_use_double_quant"], true);
  EXPECT_EQ(qc["load_in_4bit"], true);
  EXPECT_TRUE(qc["llm_int8_skip_modules"].is_null());
  for (const char* file : {"tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
                           "chat_template.json", "generation_config.json"})
    EXPECT_EQ(fs::exists(f.model / file), fs::exists(out / file)) << file;
  EXPECT_TRUE(fs::exists(out / "tokenizer.json"));

  // The independent numpy reference checker.
  const std::string py = python_with_numpy();
  if (py.empty()) GTEST_SKIP() << "no python3 with numpy: reference check skipped";
  const std::string cmd = fmt::format("{} {} --quantized {} --original {} --expect-skip '' 2>&1", py,
                                      (kRepo / "tools" / "reference" / "nf4_reference.py").string(),
                                      out.string(), f.model.string());
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string text;
  char buf[4096];
  std::size_t got;
  while ((got = std::fread(buf, 1, sizeof(buf), p)) > 0) text.append(buf, got);
  const int status = ::pclose(p);
  EXPECT_EQ(WEXITSTATUS(status), 0) << text;
  const auto summary = nlohmann::json::parse(text);
  EXPECT_TRUE(summary["ok"].get<bool>()) << text;
  EXPECT_EQ(summary["quantized_weights"].get<int>(), expected);
  EXPECT_GT(summary["codes_checked"].get<std::int64_t>(), 0);
}

TEST(QuantizeCli, SkipVisualAndErrors) {
  const auto& f = fixture();
  const fs::path out = f.root / "nf4-novis";
  auto r = mv::testing::run_cli(fmt::format("-q quantize --model {} --out {} --skip visual --threads 1",
                                            f.model.string(), out.string()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto config = ModelConfig::load(f.model);
  EXPECT_EQ(nlohmann::json::parse(r.out)["quantized_weights"].get<int>(), 7 * config.text.num_hidden_layers);
  const TensorStore q = TensorStore::open(out);
  EXPECT_EQ(q.view("visual.blocks.0.attn.qkv.weight").dtype(), DType::kBF16);
  EXPECT_EQ(q.view("model.layers.1.mlp.up_proj.weight").dtype(), DType::kU8);
  const auto cfg = nlohmann::json::parse(read_file(out / "config.json"));
  EXPECT_EQ(cfg["quantization_config"]["llm_int8_skip_modules"], nlohmann::json({"lm_head", "visual"}));

  // Output folder not empty.
  r = mv::testing::run_cli(fmt::format("-q quantize --model {} --out {}", f.model.string(), out.string()));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("not empty"), std::string::npos) << r.err;
  // Already quantized input.
  r = mv::testing::run_cli(
      fmt::format("-q quantize --model {} --out {}", out.string(), (f.root / "x").string()));
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("already quantized"), std::string::npos) << r.err;
  // Without a GPU, --device cuda is rejected clearly (tests/gpu checks it where one is present).
  if (!mv::qwen25vl::cuda_available()) {
    r = mv::testing::run_cli(fmt::format("-q quantize --model {} --out {} --device cuda", f.model.string(),
                                         (f.root / "y").string()));
    EXPECT_EQ(r.exit_code, 3);
    EXPECT_NE(r.err.find("cuda"), std::string::npos) << r.err;
  }
  // An unknown device is a usage error.
  r = mv::testing::run_cli(fmt::format("-q quantize --model {} --out {} --device tpu", f.model.string(),
                                       (f.root / "y2").string()));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("tpu"), std::string::npos) << r.err;
  // Missing model folder.
  r = mv::testing::run_cli(
      fmt::format("-q quantize --model {} --out {}", (f.root / "none").string(), (f.root / "z").string()));
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("config.json"), std::string::npos) << r.err;
}

TEST(QuantizeRules, ModulesAndSkipMatching) {
  using quant::is_linear_module;
  using quant::should_quantize;
  EXPECT_TRUE(is_linear_module("model.layers.12.self_attn.q_proj"));
  EXPECT_TRUE(is_linear_module("model.language_model.layers.0.mlp.down_proj"));
  EXPECT_TRUE(is_linear_module("visual.blocks.31.attn.qkv"));
  EXPECT_TRUE(is_linear_module("model.visual.blocks.3.mlp.gate_proj"));
  EXPECT_TRUE(is_linear_module("visual.merger.mlp.0"));
  EXPECT_TRUE(is_linear_module("lm_head"));
  EXPECT_FALSE(is_linear_module("model.embed_tokens"));
  EXPECT_FALSE(is_linear_module("visual.patch_embed.proj"));
  EXPECT_FALSE(is_linear_module("model.layers.0.input_layernorm"));
  EXPECT_FALSE(is_linear_module("visual.merger.ln_q"));
  EXPECT_FALSE(is_linear_module("visual.merger.mlp.1"));

  const std::vector<std::string> none;
  const auto dflt = quant::effective_skip(none);
  EXPECT_EQ(dflt, std::vector<std::string>{"lm_head"});
  EXPECT_FALSE(should_quantize("lm_head", dflt));
  EXPECT_TRUE(should_quantize("visual.blocks.0.attn.proj", dflt));
  const auto vis = quant::effective_skip(std::vector<std::string>{"visual, model.layers.1"});
  EXPECT_EQ(vis, (std::vector<std::string>{"lm_head", "visual", "model.layers.1"}));
  EXPECT_FALSE(should_quantize("visual.blocks.0.attn.proj", vis));
  EXPECT_FALSE(should_quantize("model.visual.merger.mlp.2", vis));
  EXPECT_FALSE(should_quantize("model.layers.1.mlp.up_proj", vis));
  EXPECT_FALSE(should_quantize("model.language_model.layers.1.mlp.up_proj", vis));
  EXPECT_TRUE(should_quantize("model.layers.11.mlp.up_proj", vis)) << "'model.layers.1.' is not in it";
  // Short-name match, as bitsandbytes: "o_proj" skips every o_proj.
  const auto o = quant::effective_skip(std::vector<std::string>{"o_proj"});
  EXPECT_FALSE(should_quantize("model.layers.4.self_attn.o_proj", o));
  EXPECT_TRUE(should_quantize("model.layers.4.self_attn.q_proj", o));
  EXPECT_THROW(quant::effective_skip(std::vector<std::string>{"visual,,x"}), Error);
}
