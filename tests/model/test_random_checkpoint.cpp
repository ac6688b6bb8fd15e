// Random checkpoints: released shapes and parameter counts, deterministic bytes, dtypes, sharding with
// an index, the derived tokenizer/config files, and the CLI.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>

#include "common/expect_error.hpp"
#include "common/temp_dir.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "io/model_config.hpp"
#include "io/safetensors.hpp"
#include "model/qwen25vl/random_checkpoint.hpp"
#include "text/tokenizer.hpp"

namespace fs = std::filesystem;
using namespace mv::qwen25vl;

namespace {

using mv::test::error_code_of;

using mv::test::TempDir;

// A small config with the real vocabulary (the embedding dominates: 151936 x 16).
const char* kSmallConfig = R"({
  "model_type": "qwen2_5_vl", "vocab_size": 151936, "hidden_size": 16, "intermediate_size": 24,
  "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": false,
  "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
  "vision_config": {"depth": 2, "hidden_size": 16, "intermediate_size": 20, "num_heads": 2, "window_size": 112,
    "out_hidden_size": 16, "fullatt_block_indexes": [1], "patch_size": 14, "temporal_patch_size": 2,
    "spatial_merge_size": 2, "in_chans": 3}
})";

mv::ModelConfig small_config() { return mv::ModelConfig::from_json(nlohmann::json::parse(kSmallConfig)); }

std::uint64_t total_params(const mv::ModelConfig& c) {
  std::uint64_t n = 0;
  for (const auto& t : checkpoint_tensors(c)) n += static_cast<std::uint64_t>(t.numel());
  return n;
}

std::string run(const std::string& cmd, int* status) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int rc = ::pclose(p);
  *status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  return out;
}

}  // namespace

TEST(RandomCheckpoint, ReleasedShapesHaveThePublishedParameterCounts) {
  // shared/reference/qwen25vl-spec.md §9.
  const auto c3 = random_checkpoint_config("3b");
  const auto c7 = random_checkpoint_config("7b");
  EXPECT_EQ(total_params(c3), 3'754'622'976ull);
  EXPECT_EQ(total_params(c7), 8'292'166'656ull);
  auto has = [](const mv::ModelConfig& c, const std::string& name) {
    for (const auto& t : checkpoint_tensors(c))
      if (t.name == name) return true;
    return false;
  };
  EXPECT_FALSE(has(c3, "lm_head.weight"));
  EXPECT_TRUE(has(c7, "lm_head.weight"));
  EXPECT_TRUE(has(c7, "visual.merger.mlp.2.bias"));
  for (const auto& t : checkpoint_tensors(c7)) {
    if (t.name == "visual.patch_embed.proj.weight")
      EXPECT_EQ(t.shape, (std::vector<std::int64_t>{1280, 3, 2, 14, 14}));
    if (t.name == "model.layers.0.self_attn.k_proj.weight")
      EXPECT_EQ(t.shape, (std::vector<std::int64_t>{512, 3584}));
    if (t.name == "visual.merger.mlp.2.weight") EXPECT_EQ(t.shape, (std::vector<std::int64_t>{3584, 5120}));
  }
  EXPECT_NO_THROW(random_checkpoint_config("tiny"));
}

TEST(RandomCheckpoint, InitValuesArePinnedAndScaled) {
  // Pinned: any change to the generator changes every checkpoint (and the fixtures' sha256).
  EXPECT_EQ(random_init_value(0, "model.embed_tokens.weight", InitKind::kWeight, 0),
            random_init_value(0, "model.embed_tokens.weight", InitKind::kWeight, 0));
  EXPECT_NE(random_init_value(0, "a", InitKind::kWeight, 0), random_init_value(1, "a", InitKind::kWeight, 0));
  EXPECT_NE(random_init_value(0, "a", InitKind::kWeight, 0), random_init_value(0, "b", InitKind::kWeight, 0));
  double sum = 0, sq = 0;
  const int n = 200000;
  float lo = 1, hi = -1;
  for (int i = 0; i < n; ++i) {
    const float v = random_init_value(7, "w", InitKind::kWeight, static_cast<std::uint64_t>(i));
    sum += v;
    sq += double(v) * v;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  const double mean = sum / n, std = std::sqrt(sq / n - mean * mean);
  EXPECT_NEAR(mean, 0.0, 3e-4);
  EXPECT_NEAR(std, 0.02, 3e-4);
  EXPECT_GE(lo, -0.0347f);
  EXPECT_LE(hi, 0.0347f);
  for (int i = 0; i < 1000; ++i) {
    const float b = random_init_value(7, "b", InitKind::kBias, static_cast<std::uint64_t>(i));
    const float g = random_init_value(7, "g", InitKind::kNorm, static_cast<std::uint64_t>(i));
    EXPECT_TRUE(b >= -0.02f && b <= 0.02f && b != 0.0f);
    EXPECT_TRUE(g >= 0.95f && g <= 1.05f);
  }
}

TEST(RandomCheckpoint, WritesALoadableDeterministicCheckpoint) {
  TempDir a("a"), b("b"), c("c");
  const auto config = small_config();
  RandomCheckpointOptions opt;
  opt.seed = 5;
  opt.dtype = mv::DType::kF32;
  const auto info = write_random_checkpoint(config, a.path(), opt);
  EXPECT_EQ(info.weight_files.size(), 1u);
  EXPECT_EQ(info.parameters, total_params(config));
  write_random_checkpoint(config, b.path(), opt);
  opt.seed = 6;
  write_random_checkpoint(config, c.path(), opt);
  const auto sha_a = mv::sha256_file_hex(a.path() / "model.safetensors");
  EXPECT_EQ(sha_a, mv::sha256_file_hex(b.path() / "model.safetensors"));
  EXPECT_NE(sha_a, mv::sha256_file_hex(c.path() / "model.safetensors"));

  // Tensors: names, shapes, dtype and values as the generator defines them.
  const auto store = mv::TensorStore::open(a.path());
  const auto specs = checkpoint_tensors(config);
  EXPECT_EQ(store.size(), specs.size());
  for (const auto& s : specs) {
    const auto v = store.view(s.name);
    EXPECT_EQ(v.dtype(), mv::DType::kF32) << s.name;
    EXPECT_EQ(v.shape(), s.shape) << s.name;
    const auto values = mv::to_f32(v);
    for (std::uint64_t i : {std::uint64_t{0}, static_cast<std::uint64_t>(values.size() - 1)})
      EXPECT_EQ(values[i], random_init_value(5, s.name, s.init, i)) << s.name << "[" << i << "]";
  }

  // config.json reads back to the same model.
  const auto back = mv::ModelConfig::load(a.path());
  EXPECT_EQ(back.text.hidden_size, 16);
  EXPECT_EQ(back.text.num_key_value_heads, 1);
  EXPECT_EQ(back.text.vocab_size, 151936);
  EXPECT_FALSE(back.text.tie_word_embeddings);
  EXPECT_EQ(back.text.mrope_section, (std::array<int, 3>{1, 1, 2}));
  EXPECT_EQ(back.vision.hidden_size, 16);
  EXPECT_EQ(back.vision.out_hidden_size, 16);
  EXPECT_EQ(back.vision.fullatt_block_indexes, (std::vector<int>{1}));
  EXPECT_EQ(back.dtype, "float32");
  const auto j = nlohmann::json::parse(mv::read_file(a.path() / "config.json"));
  EXPECT_EQ(j["model_type"], "qwen2_5_vl");
  EXPECT_EQ(j["text_config"]["hidden_size"], 16);
  EXPECT_EQ(j["vision_config"]["depth"], 2);
  EXPECT_EQ(j["architectures"][0], "Qwen2_5_VLForConditionalGeneration");

  // The tokenizer is exactly Qwen2.5-VL's: added tokens 151643..151664, no Qwen3 extras.
  const auto tj = nlohmann::json::parse(mv::read_file(a.path() / "tokenizer.json"));
  ASSERT_EQ(tj["added_tokens"].size(), 22u);
  EXPECT_EQ(tj["added_tokens"].front()["id"], 151643);
  EXPECT_EQ(tj["added_tokens"].back()["id"], 151664);
  const auto tok = mv::Tokenizer::from_model_dir(a.path());
  EXPECT_EQ(tok.vocab_size(), 151665u);
  EXPECT_EQ(tok.token_id("<think>"), -1);
  EXPECT_EQ(tok.token_id("<|image_pad|>"), 151655);
  const auto tc = nlohmann::json::parse(mv::read_file(a.path() / "tokenizer_config.json"));
  EXPECT_EQ(tc["added_tokens_decoder"].size(), 22u);
  EXPECT_EQ(tc["eos_token"], "<|im_end|>");
  const auto pc = nlohmann::json::parse(mv::read_file(a.path() / "preprocessor_config.json"));
  EXPECT_EQ(pc["max_pixels"], 12845056);
  EXPECT_EQ(pc["processor_class"], "Qwen2_5_VLProcessor");
  const auto gc = nlohmann::json::parse(mv::read_file(a.path() / "generation_config.json"));
  EXPECT_EQ(gc["eos_token_id"], (nlohmann::json{151645, 151643}));
  EXPECT_TRUE(fs::exists(a.path() / "chat_template.json"));
}

TEST(RandomCheckpoint, NarrowDtypesRoundTheSameValues) {
  TempDir d("dt");
  const auto config = small_config();
  RandomCheckpointOptions opt;
  opt.seed = 9;
  for (auto dtype : {mv::DType::kBF16, mv::DType::kF16}) {
    opt.dtype = dtype;
    write_random_checkpoint(config, d.path(), opt);
    const auto store = mv::TensorStore::open(d.path());
    const auto v = store.view("model.layers.1.mlp.down_proj.weight");
    ASSERT_EQ(v.dtype(), dtype);
    const auto* raw = reinterpret_cast<const std::uint16_t*>(v.bytes.data());
    for (std::uint64_t i = 0; i < 64; ++i) {
      const float f = random_init_value(9, "model.layers.1.mlp.down_proj.weight", InitKind::kWeight, i);
      std::uint16_t bits;
      std::memcpy(&bits, raw + i, 2);
      EXPECT_EQ(bits, dtype == mv::DType::kBF16 ? mv::f32_to_bf16(f) : mv::f32_to_f16(f));
    }
    EXPECT_EQ(nlohmann::json::parse(mv::read_file(d.path() / "config.json"))["torch_dtype"],
              dtype == mv::DType::kBF16 ? "bfloat16" : "float16");
  }
}

TEST(RandomCheckpoint, ShardsWithAnIndexAndReplacesOldWeights) {
  TempDir d("shard");
  const auto config = small_config();
  RandomCheckpointOptions opt;
  opt.dtype = mv::DType::kBF16;
  write_random_checkpoint(config, d.path(), opt);  // single file first
  ASSERT_TRUE(fs::exists(d.path() / "model.safetensors"));
  opt.max_shard_bytes = 3'000'000;  // the 4.9 MB embedding alone overflows: it gets a shard of its own
  const auto info = write_random_checkpoint(config, d.path(), opt);
  EXPECT_FALSE(fs::exists(d.path() / "model.safetensors"));
  ASSERT_GE(info.weight_files.size(), 3u);
  EXPECT_EQ(info.weight_files[0].filename().string(),
            fmt::format("model-00001-of-{:05d}.safetensors", info.weight_files.size()));
  const auto index = nlohmann::json::parse(mv::read_file(d.path() / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"].get<std::uint64_t>(), info.weight_bytes);
  EXPECT_EQ(index["weight_map"].size(), checkpoint_tensors(config).size());
  EXPECT_EQ(index["weight_map"]["model.embed_tokens.weight"],
            "model-00001-of-" + fmt::format("{:05d}", info.weight_files.size()) + ".safetensors");
  std::uint64_t bytes = 0;
  for (const auto& f : info.weight_files) {
    const mv::SafetensorsFile file(f);
    for (const auto& t : file.tensors()) bytes += t.nbytes();
    if (file.tensors().size() > 1) EXPECT_LE(fs::file_size(f), opt.max_shard_bytes + 4096) << f;
  }
  EXPECT_EQ(bytes, info.weight_bytes);
  const auto store = mv::TensorStore::open(d.path());
  EXPECT_EQ(store.size(), checkpoint_tensors(config).size());
}

TEST(RandomCheckpoint, RejectsBadInput) {
  TempDir d("bad");
  EXPECT_EQ(error_code_of([] { random_checkpoint_config("/nonexistent/config.json"); }), mv::Errc::kNotFound);
  auto j = nlohmann::json::parse(kSmallConfig);
  j["rope_scaling"]["mrope_section"] = {2, 2, 2};  // 6 != head_dim/2 = 4
  EXPECT_EQ(error_code_of([&] { checkpoint_tensors(mv::ModelConfig::from_json(j)); }),
            mv::Errc::kInvalidInput);
  j = nlohmann::json::parse(kSmallConfig);
  j["vocab_size"] = 1000;
  EXPECT_EQ(error_code_of([&] { write_random_checkpoint(mv::ModelConfig::from_json(j), d.path(), {}); }),
            mv::Errc::kInvalidInput);
  j = nlohmann::json::parse(kSmallConfig);
  j["vision_config"]["out_hidden_size"] = 32;
  EXPECT_EQ(error_code_of([&] { checkpoint_tensors(mv::ModelConfig::from_json(j)); }),
            mv::Errc::kInvalidInput);
  RandomCheckpointOptions opt;
  opt.tokenizer_json = d.path() / "missing-tokenizer.json";
  EXPECT_EQ(error_code_of([&] { write_random_checkpoint(small_config(), d.path(), opt); }),
            mv::Errc::kNotFound);
  mv::write_file(d.path() / "not-a-tokenizer.json", "{\"added_tokens\": [], \"model\": {}}");
  opt.tokenizer_json = d.path() / "not-a-tokenizer.json";
  EXPECT_EQ(error_code_of([&] { write_random_checkpoint(small_config(), d.path(), opt); }),
            mv::Errc::kInvalidInput);
  opt = {};
  opt.dtype = mv::DType::kI8;
  EXPECT_EQ(error_code_of([&] { write_random_checkpoint(small_config(), d.path(), opt); }), mv::Errc::kUsage);
  EXPECT_FALSE(fs::exists(d.path() / "model.safetensors"));  // nothing written on failure
}

TEST(RandomCheckpoint, CommandLine) {
  TempDir d("cli");
  mv::write_file(d.path() / "config.json", kSmallConfig);
  int status = -1;
  const std::string out = run(std::string(MV_BINARY) + " -q debug random-checkpoint --config " +
                                  (d.path() / "config.json").string() + " --out " +
                                  (d.path() / "ckpt").string() + " --seed 3 --dtype f16 --json",
                              &status);
  ASSERT_EQ(status, 0) << out;
  const auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j["dtype"], "F16");
  EXPECT_EQ(j["parameters"].get<std::uint64_t>(), total_params(small_config()));
  EXPECT_TRUE(fs::exists(d.path() / "ckpt" / "model.safetensors"));
  run(std::string(MV_BINARY) + " -q debug random-checkpoint --config " + (d.path() / "nope.json").string() +
          " --out " + (d.path() / "x").string() + " 2>/dev/null",
      &status);
  EXPECT_EQ(status, 3);  // not found
  run(std::string(MV_BINARY) + " -q debug random-checkpoint --config tiny --dtype q4 --out " +
          (d.path() / "x").string() + " 2>/dev/null",
      &status);
  EXPECT_EQ(status, 2);  // usage
}
