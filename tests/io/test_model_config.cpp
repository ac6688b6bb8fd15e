// ModelConfig (legacy and transformers-5 config.json), key layouts, and `medvision info`.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "cli/run_cli.hpp"
#include "common/expect_error.hpp"
#include "common/temp_dir.hpp"
#include "core/error.hpp"
#include "io/model_config.hpp"
#include "io/safetensors.hpp"

namespace mv {
namespace {

using nlohmann::json;

using mv::test::expect_error;
using mv::test::TempDir;

// The released Qwen2.5-VL-7B-Instruct config.json (spec §1.1/1.2).
json legacy_7b() {
  return json::parse(R"({
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
    "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 3584,
    "initializer_range": 0.02, "intermediate_size": 18944, "max_position_embeddings": 128000,
    "max_window_layers": 28, "model_type": "qwen2_5_vl", "num_attention_heads": 28, "num_hidden_layers": 28,
    "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.41.2",
    "use_cache": true, "use_sliding_window": false,
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
      "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
      "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
      "tokens_per_second": 2, "temporal_patch_size": 2},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 152064
  })");
}

// A 3B config re-saved by transformers 5: nested text_config with rope_parameters, dtype, and a
// vision_config holding only the keys that differ from the class defaults. Top-level duplicates are
// deliberately stale to show that text_config wins.
json v5_3b() {
  return json::parse(R"({
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "dtype": "bfloat16", "model_type": "qwen2_5_vl",
    "image_token_id": 151655, "video_token_id": 151656,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "hidden_size": 9999, "num_hidden_layers": 1,
    "text_config": {
      "model_type": "qwen2_5_vl_text", "bos_token_id": 151643, "eos_token_id": [151645, 151643],
      "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 11008, "max_position_embeddings": 128000,
      "num_attention_heads": 16, "num_hidden_layers": 36, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
      "rope_parameters": {"mrope_section": [16, 24, 24], "rope_theta": 1000000.0, "rope_type": "default"},
      "tie_word_embeddings": true, "vocab_size": 151936, "dtype": "bfloat16"
    },
    "vision_config": {"hidden_size": 1280, "in_chans": 3, "spatial_patch_size": 14, "tokens_per_second": 2,
      "out_hidden_size": 2048},
    "transformers_version": "5.17.0"
  })");
}

void expect_invalid_field(const json& j, const std::string& field, Errc code = Errc::kInvalidInput) {
  try {
    ModelConfig::from_json(j);
    FAIL() << "accepted a config with a bad " << field;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
  }
}

TEST(ModelConfig, Legacy7B) {
  const ModelConfig c = ModelConfig::from_json(legacy_7b());
  EXPECT_FALSE(c.v5_layout);
  EXPECT_EQ(c.text.hidden_size, 3584);
  EXPECT_EQ(c.text.num_hidden_layers, 28);
  EXPECT_EQ(c.text.num_attention_heads, 28);
  EXPECT_EQ(c.text.num_key_value_heads, 4);
  EXPECT_EQ(c.text.head_dim(), 128);
  EXPECT_EQ(c.text.intermediate_size, 18944);
  EXPECT_EQ(c.text.vocab_size, 152064);
  EXPECT_DOUBLE_EQ(c.text.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.text.rope_theta, 1e6);
  EXPECT_EQ(c.text.mrope_section, (std::array<int, 3>{16, 24, 24}));
  EXPECT_FALSE(c.text.tie_word_embeddings);
  EXPECT_EQ(c.dtype, "bfloat16");
  EXPECT_EQ(c.eos_token_ids, std::vector<std::int32_t>{151645});
  EXPECT_EQ(c.image_token_id, 151655);
  EXPECT_EQ(c.vision.hidden_size, 1280);
  EXPECT_EQ(c.vision.head_dim(), 80);
  EXPECT_EQ(c.vision.tokens_per_second, 2);
  EXPECT_EQ(c.vision.out_hidden_size, 3584);
  EXPECT_EQ(c.vision.fullatt_block_indexes, (std::vector<int>{7, 15, 23, 31}));
  const json s = c.summary();
  EXPECT_EQ(s["text"]["hidden_size"], 3584);
  EXPECT_EQ(s["vision"]["head_dim"], 80);
  EXPECT_EQ(s["config_layout"], "legacy");
}

TEST(ModelConfig, V5NestedWithDefaults) {
  const ModelConfig c = ModelConfig::from_json(v5_3b());
  EXPECT_TRUE(c.v5_layout);
  EXPECT_EQ(c.text.hidden_size, 2048);  // text_config wins over the stale top-level 9999
  EXPECT_EQ(c.text.num_hidden_layers, 36);
  EXPECT_EQ(c.text.num_attention_heads, 16);
  EXPECT_EQ(c.text.num_key_value_heads, 2);
  EXPECT_EQ(c.text.vocab_size, 151936);
  EXPECT_TRUE(c.text.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.text.rope_theta, 1e6);
  EXPECT_EQ(c.text.mrope_section, (std::array<int, 3>{16, 24, 24}));
  EXPECT_EQ(c.eos_token_ids, (std::vector<std::int32_t>{151645, 151643}));
  EXPECT_EQ(c.dtype, "bfloat16");
  // Given keys.
  EXPECT_EQ(c.vision.hidden_size, 1280);
  EXPECT_EQ(c.vision.tokens_per_second, 2);
  EXPECT_EQ(c.vision.out_hidden_size, 2048);
  EXPECT_EQ(c.vision.patch_size, 14);
  // Class defaults (spec §1.2) for the missing ones.
  EXPECT_EQ(c.vision.depth, 32);
  EXPECT_EQ(c.vision.intermediate_size, 3420);
  EXPECT_EQ(c.vision.num_heads, 16);
  EXPECT_EQ(c.vision.in_channels, 3);
  EXPECT_EQ(c.vision.temporal_patch_size, 2);
  EXPECT_EQ(c.vision.spatial_merge_size, 2);
  EXPECT_EQ(c.vision.window_size, 112);
  EXPECT_EQ(c.vision.fullatt_block_indexes, (std::vector<int>{7, 15, 23, 31}));
  EXPECT_EQ(c.vision.hidden_act, "silu");
  EXPECT_EQ(c.summary()["config_layout"], "v5");
}

TEST(ModelConfig, FieldAliasesAndPrecedence) {
  json j = legacy_7b();
  j["vision_config"].erase("in_chans");
  j["vision_config"]["in_channels"] = 1;
  j["vision_config"].erase("patch_size");
  j["vision_config"]["spatial_patch_size"] = 16;
  j["rope_scaling"] = {{"rope_type", "default"}, {"type", "default"}, {"mrope_section", {32, 16, 16}}};
  j["rope_theta"] = 5e5;
  j["eos_token_id"] = json::array({7, 8});
  const ModelConfig c = ModelConfig::from_json(j);
  EXPECT_EQ(c.vision.in_channels, 1);
  EXPECT_EQ(c.vision.patch_size, 16);
  EXPECT_EQ(c.text.mrope_section, (std::array<int, 3>{32, 16, 16}));
  EXPECT_DOUBLE_EQ(c.text.rope_theta, 5e5);
  EXPECT_EQ(c.eos_token_ids, (std::vector<std::int32_t>{7, 8}));

  // rope_theta inside rope_parameters beats the top-level one; null values count as absent.
  json v = v5_3b();
  v["rope_theta"] = 1.0;
  v["text_config"]["rope_parameters"]["rope_theta"] = 2e6;
  v["text_config"]["vocab_size"] = nullptr;
  v["vocab_size"] = 1000;
  const ModelConfig c5 = ModelConfig::from_json(v);
  EXPECT_DOUBLE_EQ(c5.text.rope_theta, 2e6);
  EXPECT_EQ(c5.text.vocab_size, 1000);
}

TEST(ModelConfig, Validation) {
  auto with = [](auto edit) {
    json j = legacy_7b();
    edit(j);
    return j;
  };
  expect_invalid_field(with([](json& j) { j["hidden_size"] = 3585; }), "hidden_size");
  expect_invalid_field(with([](json& j) { j["num_attention_heads"] = 0; }), "num_attention_heads");
  expect_invalid_field(with([](json& j) { j["num_key_value_heads"] = 5; }), "num_key_value_heads");
  expect_invalid_field(with([](json& j) {
                         j["rope_scaling"]["mrope_section"] = {16, 24, 25};
                       }),
                       "mrope_section");
  expect_invalid_field(with([](json& j) { j["rope_scaling"]["mrope_section"] = {32, 32}; }), "mrope_section");
  expect_invalid_field(with([](json& j) { j["intermediate_size"] = -1; }), "intermediate_size");
  expect_invalid_field(with([](json& j) { j["vocab_size"] = "many"; }), "vocab_size");
  expect_invalid_field(with([](json& j) { j["vocab_size"] = 1.5; }), "vocab_size");
  expect_invalid_field(with([](json& j) { j["rms_norm_eps"] = 0; }), "rms_norm_eps");
  expect_invalid_field(with([](json& j) { j["tie_word_embeddings"] = "no"; }), "tie_word_embeddings");
  expect_invalid_field(with([](json& j) { j["vision_config"]["num_heads"] = 3; }),
                       "vision_config.hidden_size");
  expect_invalid_field(with([](json& j) { j["vision_config"]["depth"] = 0; }), "vision_config.depth");
  expect_invalid_field(with([](json& j) { j["vision_config"]["out_hidden_size"] = 2048; }),
                       "vision_config.out_hidden_size");
  expect_invalid_field(with([](json& j) { j["vision_config"] = 3; }), "vision_config");
  expect_invalid_field(with([](json& j) { j["eos_token_id"] = json::array(); }), "eos_token_id");
  expect_invalid_field(with([](json& j) { j["hidden_size"] = 1ll << 40; }), "hidden_size");
  expect_invalid_field(with([](json& j) { j["model_type"] = "llama"; }), "model_type", Errc::kUnsupported);
  expect_invalid_field(with([](json& j) { j["rope_scaling"]["type"] = "yarn"; }), "rope_scaling",
                       Errc::kUnsupported);
  expect_invalid_field(json::array(), "config");
  json v = v5_3b();
  v["text_config"]["rope_parameters"]["mrope_section"] = {8, 8, 8};
  expect_invalid_field(v, "text_config.rope_parameters.mrope_section");
}

TEST(ModelConfig, LoadWithGenerationConfig) {
  TempDir dir("cfg");
  std::ofstream(dir / "config.json") << legacy_7b().dump();
  std::ofstream(dir / "generation_config.json")
      << R"({"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643})";
  const ModelConfig c = ModelConfig::load(dir.path());
  EXPECT_EQ(c.eos_token_ids, (std::vector<std::int32_t>{151645, 151643}));
  EXPECT_EQ(c.text.hidden_size, 3584);

  std::ofstream(dir / "generation_config.json", std::ios::trunc) << R"({"eos_token_id": 7})";
  EXPECT_EQ(ModelConfig::load(dir.path()).eos_token_ids, (std::vector<std::int32_t>{151645, 7}));
  std::ofstream(dir / "generation_config.json", std::ios::trunc) << R"({"eos_token_id": "x"})";
  expect_error([&] { ModelConfig::load(dir.path()); }, Errc::kInvalidInput, "generation_config.json");
  fs::remove(dir / "generation_config.json");

  std::ofstream(dir / "config.json", std::ios::trunc) << "{\"hidden_size\": ";
  expect_error([&] { ModelConfig::load(dir.path()); }, Errc::kInvalidInput, "config.json");
  json bad = legacy_7b();
  bad["num_key_value_heads"] = 3;
  std::ofstream(dir / "config.json", std::ios::trunc) << bad.dump();
  try {
    ModelConfig::load(dir.path());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kInvalidInput);
    const std::string msg = e.what();
    EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("num_key_value_heads"), std::string::npos) << msg;
  }
  expect_error([&] { ModelConfig::load(dir / "nope"); }, Errc::kNotFound);
  fs::remove(dir / "config.json");
  expect_error([&] { ModelConfig::load(dir.path()); }, Errc::kNotFound, "config.json");
}

TEST(KeyLayout, CanonicalKeys) {
  EXPECT_EQ(canonical_key("model.visual.blocks.0.attn.qkv.weight"), "visual.blocks.0.attn.qkv.weight");
  EXPECT_EQ(canonical_key("model.language_model.layers.3.mlp.up_proj.weight"),
            "model.layers.3.mlp.up_proj.weight");
  EXPECT_EQ(canonical_key("model.language_model.embed_tokens.weight"), "model.embed_tokens.weight");
  EXPECT_EQ(canonical_key("model.language_model.norm.weight"), "model.norm.weight");
  EXPECT_EQ(canonical_key("lm_head.weight"), "lm_head.weight");
  // Legacy keys are already canonical.
  EXPECT_EQ(canonical_key("visual.merger.mlp.0.weight"), "visual.merger.mlp.0.weight");
  EXPECT_EQ(canonical_key("model.layers.0.self_attn.q_proj.bias"), "model.layers.0.self_attn.q_proj.bias");
  EXPECT_EQ(canonical_key("model.embed_tokens.weight"), "model.embed_tokens.weight");
  EXPECT_EQ(canonical_key("model.visualx.y"), "model.visualx.y");

  EXPECT_EQ(detect_key_layout(
                {"lm_head.weight", "model.layers.0.mlp.up_proj.weight", "visual.blocks.0.norm1.weight"}),
            KeyLayout::kLegacy);
  EXPECT_EQ(detect_key_layout({"lm_head.weight", "model.language_model.layers.0.mlp.up_proj.weight",
                               "model.visual.blocks.0.norm1.weight"}),
            KeyLayout::kNested);
  EXPECT_EQ(detect_key_layout({"model.visual.patch_embed.proj.weight"}), KeyLayout::kNested);
  EXPECT_EQ(detect_key_layout({}), KeyLayout::kLegacy);
  EXPECT_STREQ(key_layout_name(KeyLayout::kLegacy), "legacy");
  EXPECT_STREQ(key_layout_name(KeyLayout::kNested), "nested");
}

// ---- medvision info on a tiny checkpoint -------------------------------------------------------

// Tiny Qwen2.5-VL: text hidden 32 (2 heads of 16, 1 kv head), 2 layers, vocab 64; vision depth 2,
// hidden 16, 2 heads, intermediate 24, patch 14, merge 2.
json tiny_config(bool tied) {
  return json{{"model_type", "qwen2_5_vl"},
              {"hidden_size", 32},
              {"num_hidden_layers", 2},
              {"num_attention_heads", 2},
              {"num_key_value_heads", 1},
              {"intermediate_size", 48},
              {"vocab_size", 64},
              {"rms_norm_eps", 1e-6},
              {"rope_theta", 1e6},
              {"rope_scaling", {{"type", "mrope"}, {"mrope_section", {2, 3, 3}}}},
              {"tie_word_embeddings", tied},
              {"torch_dtype", "bfloat16"},
              {"vision_config",
               {{"depth", 2},
                {"hidden_size", 16},
                {"num_heads", 2},
                {"intermediate_size", 24},
                {"out_hidden_size", 32},
                {"fullatt_block_indexes", {1}}}}};
}

struct TinyTensor {
  std::string name;  // legacy name
  std::vector<std::int64_t> shape;
};

std::vector<TinyTensor> tiny_tensors(bool with_lm_head) {
  std::vector<TinyTensor> t{{"model.embed_tokens.weight", {64, 32}}, {"model.norm.weight", {32}}};
  for (int i = 0; i < 2; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    t.push_back({p + "input_layernorm.weight", {32}});
    t.push_back({p + "self_attn.q_proj.weight", {32, 32}});
    t.push_back({p + "self_attn.q_proj.bias", {32}});
    t.push_back({p + "self_attn.k_proj.weight", {16, 32}});
    t.push_back({p + "self_attn.k_proj.bias", {16}});
    t.push_back({p + "self_attn.v_proj.weight", {16, 32}});
    t.push_back({p + "self_attn.v_proj.bias", {16}});
    t.push_back({p + "self_attn.o_proj.weight", {32, 32}});
    t.push_back({p + "post_attention_layernorm.weight", {32}});
    t.push_back({p + "mlp.gate_proj.weight", {48, 32}});
    t.push_back({p + "mlp.up_proj.weight", {48, 32}});
    t.push_back({p + "mlp.down_proj.weight", {32, 48}});
    const std::string v = "visual.blocks." + std::to_string(i) + ".";
    t.push_back({v + "norm1.weight", {16}});
    t.push_back({v + "norm2.weight", {16}});
    t.push_back({v + "attn.qkv.weight", {48, 16}});
    t.push_back({v + "attn.qkv.bias", {48}});
    t.push_back({v + "attn.proj.weight", {16, 16}});
    t.push_back({v + "attn.proj.bias", {16}});
    t.push_back({v + "mlp.gate_proj.weight", {24, 16}});
    t.push_back({v + "mlp.up_proj.weight", {24, 16}});
    t.push_back({v + "mlp.down_proj.weight", {16, 24}});
  }
  t.push_back({"visual.patch_embed.proj.weight", {16, 3, 2, 14, 14}});
  t.push_back({"visual.merger.ln_q.weight", {16}});
  t.push_back({"visual.merger.mlp.0.weight", {64, 64}});
  t.push_back({"visual.merger.mlp.0.bias", {64}});
  t.push_back({"visual.merger.mlp.2.weight", {32, 64}});
  t.push_back({"visual.merger.mlp.2.bias", {32}});
  if (with_lm_head) t.push_back({"lm_head.weight", {64, 32}});
  return t;
}

std::int64_t numel(const std::vector<std::int64_t>& s) {
  std::int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

std::string nested_name(const std::string& legacy) {
  if (legacy.starts_with("visual.")) return "model." + legacy;
  if (legacy.starts_with("model.")) return "model.language_model." + legacy.substr(6);
  return legacy;
}

// Writes a checkpoint: nested keys in two shards with an index, or legacy keys in one file.
void write_tiny_checkpoint(const fs::path& dir, bool nested, bool tied) {
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << tiny_config(tied).dump(2);
  const auto tensors = tiny_tensors(!tied);
  SafetensorsWriter shard[2];
  json weight_map = json::object();
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    const std::string name = nested ? nested_name(t.name) : t.name;
    const int s = nested ? static_cast<int>(i % 2) : 0;
    const auto n = static_cast<std::size_t>(numel(t.shape));
    shard[s].add(name, DType::kBF16, t.shape, [n](std::span<std::uint8_t> out) {
      for (std::size_t k = 0; k < n; ++k) {
        const std::uint16_t v = f32_to_bf16(0.01f * static_cast<float>(k % 17));
        std::memcpy(out.data() + 2 * k, &v, 2);
      }
    });
    weight_map[name] = fmt::format("model-0000{}-of-00002.safetensors", s + 1);
  }
  if (nested) {
    shard[0].write(dir / "model-00001-of-00002.safetensors");
    shard[1].write(dir / "model-00002-of-00002.safetensors");
    std::ofstream(dir / "model.safetensors.index.json") << json{{"weight_map", weight_map}}.dump();
  } else {
    shard[0].write(dir / "model.safetensors");
  }
}

using mv::testing::run_cli;

TEST(InfoCommand, NestedShardedCheckpoint) {
  TempDir dir("cfg");
  write_tiny_checkpoint(dir / "ckpt", /*nested=*/true, /*tied=*/false);
  std::uint64_t vision = 0, lm = 0, embed = 0, head = 0;
  for (const auto& t : tiny_tensors(true)) {
    const auto n = static_cast<std::uint64_t>(numel(t.shape));
    if (t.name.starts_with("visual."))
      vision += n;
    else if (t.name == "model.embed_tokens.weight")
      embed += n;
    else if (t.name == "lm_head.weight")
      head += n;
    else
      lm += n;
  }
  const auto r = run_cli("info --json --model '" + (dir / "ckpt").string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["key_layout"], "nested");
  EXPECT_EQ(j["shards"], 2);
  EXPECT_EQ(j["sharded_index"], true);
  EXPECT_EQ(j["tensors"], tiny_tensors(true).size());
  EXPECT_EQ(j["parameters"]["vision"], vision);
  EXPECT_EQ(j["parameters"]["language_model"], lm);
  EXPECT_EQ(j["parameters"]["embed_tokens"], embed);
  EXPECT_EQ(j["parameters"]["lm_head"], head);
  EXPECT_EQ(j["parameters"]["other"], 0);
  EXPECT_EQ(j["parameters"]["total"], vision + lm + embed + head);
  EXPECT_EQ(j["dtypes"]["BF16"]["tensors"], tiny_tensors(true).size());
  EXPECT_EQ(j["dtypes"]["BF16"]["bytes"], 2 * (vision + lm + embed + head));
  EXPECT_EQ(j["tied_embeddings"], false);
  EXPECT_EQ(j["lm_head_present"], true);
  EXPECT_EQ(j["config"]["text"]["hidden_size"], 32);
  EXPECT_EQ(j["config"]["text"]["head_dim"], 16);
  EXPECT_EQ(j["config"]["vision"]["depth"], 2);
  EXPECT_EQ(j["config"]["vision"]["window_size"], 112);  // class default filled in
  EXPECT_EQ(j["warnings"].size(), 0u) << j["warnings"].dump();
  std::uint64_t file_bytes = 0;
  for (const auto& f : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"})
    file_bytes += fs::file_size(dir / "ckpt" / f);
  EXPECT_EQ(j["bytes"], file_bytes);

  const auto text = run_cli("info --model '" + (dir / "ckpt").string() + "'");
  ASSERT_EQ(text.exit_code, 0);
  EXPECT_NE(text.out.find("nested"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("parameters"), std::string::npos) << text.out;
}

TEST(InfoCommand, LegacyTiedCheckpoint) {
  TempDir dir("cfg");
  write_tiny_checkpoint(dir / "ckpt", /*nested=*/false, /*tied=*/true);
  const auto r = run_cli("info --json --model '" + (dir / "ckpt").string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["key_layout"], "legacy");
  EXPECT_EQ(j["shards"], 1);
  EXPECT_EQ(j["tied_embeddings"], true);
  EXPECT_EQ(j["lm_head_present"], false);
  EXPECT_EQ(j["parameters"]["lm_head"], 0);
  EXPECT_EQ(j["parameters"]["embed_tokens"], 64 * 32);
}

TEST(InfoCommand, ErrorsExitWithThree) {
  TempDir dir("cfg");
  EXPECT_EQ(run_cli("info --model '" + (dir / "missing").string() + "'").exit_code, 3);
  fs::create_directories(dir / "noconfig");
  EXPECT_EQ(run_cli("info --json --model '" + (dir / "noconfig").string() + "'").exit_code, 3);
  write_tiny_checkpoint(dir / "broken", true, false);
  {
    std::ofstream(dir / "broken" / "model-00002-of-00002.safetensors", std::ios::trunc) << "garbage!garbage!";
  }
  EXPECT_EQ(run_cli("info --model '" + (dir / "broken").string() + "'").exit_code, 3);
  write_tiny_checkpoint(dir / "badcfg", false, false);
  std::ofstream(dir / "badcfg" / "config.json", std::ios::trunc)
      << R"({"hidden_size": 33, "num_attention_heads": 2})";
  EXPECT_EQ(run_cli("info --model '" + (dir / "badcfg").string() + "'").exit_code, 3);
  EXPECT_EQ(run_cli("info").exit_code, 2);  // --model is required
}

}  // namespace
}  // namespace mv
