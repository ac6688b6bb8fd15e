#include "model/qwen25vl/random_checkpoint.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "core/progress.hpp"
#include "model/qwen25vl/rng.hpp"
#include "text/tokenizer.hpp"

namespace mv::qwen25vl {

namespace {

// Added tokens of Qwen2.5-VL end at 151664; the Qwen3 vocabulary adds 151665-151668.
constexpr std::int64_t kFirstQwen3OnlyId = 151665;
constexpr std::int64_t kLastQwen3OnlyId = 151668;
constexpr std::int64_t kTokenizerSize = 151665;

// The processor chat template of the Qwen2-VL / Qwen2.5-VL Instruct releases (chat_template.json).
constexpr const char* kChatTemplate =
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in "
    "messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful "
    "assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string "
    "%}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}{% if "
    "content['type'] == 'image' or 'image' in content or 'image_url' in content %}{% set image_count.value = "
    "image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif "
    "%}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content "
    "%}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value "
    "}}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ "
    "content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt "
    "%}<|im_start|>assistant\n{% endif %}";

// Presets in the released config.json layout (flat text fields + vision_config).
constexpr const char* kPreset3B = R"({
  "model_type": "qwen2_5_vl", "hidden_size": 2048, "num_hidden_layers": 36, "num_attention_heads": 16,
  "num_key_value_heads": 2, "intermediate_size": 11008, "vocab_size": 151936, "tie_word_embeddings": true,
  "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "max_position_embeddings": 128000, "hidden_act": "silu",
  "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
  "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
    "in_chans": 3, "patch_size": 14, "temporal_patch_size": 2, "spatial_merge_size": 2, "window_size": 112,
    "out_hidden_size": 2048, "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
    "hidden_act": "silu"}
})";
constexpr const char* kPreset7B = R"({
  "model_type": "qwen2_5_vl", "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
  "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064, "tie_word_embeddings": false,
  "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "max_position_embeddings": 128000, "hidden_act": "silu",
  "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
  "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
    "in_chans": 3, "patch_size": 14, "temporal_patch_size": 2, "spatial_merge_size": 2, "window_size": 112,
    "out_hidden_size": 3584, "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
    "hidden_act": "silu"}
})";
constexpr const char* kPresetTiny = R"({
  "model_type": "qwen2_5_vl", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 151936, "tie_word_embeddings": true,
  "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "max_position_embeddings": 128000, "hidden_act": "silu",
  "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
  "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
    "in_chans": 3, "patch_size": 14, "temporal_patch_size": 2, "spatial_merge_size": 2, "window_size": 112,
    "out_hidden_size": 64, "fullatt_block_indexes": [1], "tokens_per_second": 2, "hidden_act": "silu"}
})";

const char* hf_dtype_name(DType dt) {
  switch (dt) {
    case DType::kBF16:
      return "bfloat16";
    case DType::kF16:
      return "float16";
    case DType::kF32:
      return "float32";
    default:
      fail(Errc::kUsage, "random checkpoints are written in bf16, f16 or f32, not {}", dtype_name(dt));
  }
}

void validate(const ModelConfig& c) {
  const TextConfig& t = c.text;
  const VisionConfig& v = c.vision;
  auto positive = [](const char* what, long long x) {
    if (x <= 0) fail(Errc::kInvalidInput, "config: {} must be > 0, is {}", what, x);
  };
  positive("hidden_size", t.hidden_size);
  positive("num_hidden_layers", t.num_hidden_layers);
  positive("num_attention_heads", t.num_attention_heads);
  positive("num_key_value_heads", t.num_key_value_heads);
  positive("intermediate_size", t.intermediate_size);
  positive("vocab_size", t.vocab_size);
  positive("vision_config.depth", v.depth);
  positive("vision_config.hidden_size", v.hidden_size);
  positive("vision_config.num_heads", v.num_heads);
  positive("vision_config.intermediate_size", v.intermediate_size);
  positive("vision_config.in_channels", v.in_channels);
  positive("vision_config.patch_size", v.patch_size);
  positive("vision_config.temporal_patch_size", v.temporal_patch_size);
  positive("vision_config.spatial_merge_size", v.spatial_merge_size);
  positive("vision_config.out_hidden_size", v.out_hidden_size);
  if (t.hidden_size % t.num_attention_heads != 0)
    fail(Errc::kInvalidInput, "config: hidden_size {} is not a multiple of num_attention_heads {}",
         t.hidden_size, t.num_attention_heads);
  if (t.num_attention_heads % t.num_key_value_heads != 0)
    fail(Errc::kInvalidInput, "config: num_attention_heads {} is not a multiple of num_key_value_heads {}",
         t.num_attention_heads, t.num_key_value_heads);
  const int sections = t.mrope_section[0] + t.mrope_section[1] + t.mrope_section[2];
  if (2 * sections != t.head_dim())
    fail(Errc::kInvalidInput, "config: mrope_section [{}, {}, {}] must add up to head_dim/2 = {}",
         t.mrope_section[0], t.mrope_section[1], t.mrope_section[2], t.head_dim() / 2);
  if (v.hidden_size % v.num_heads != 0 || v.head_dim() % 4 != 0)
    fail(Errc::kInvalidInput,
         "config: vision hidden_size {} / num_heads {} must give a head_dim that is a multiple of 4",
         v.hidden_size, v.num_heads);
  if (v.out_hidden_size != t.hidden_size)
    fail(Errc::kInvalidInput, "config: vision out_hidden_size {} differs from the text hidden_size {}",
         v.out_hidden_size, t.hidden_size);
  for (int i : v.fullatt_block_indexes)
    if (i < 0 || i >= v.depth)
      fail(Errc::kInvalidInput, "config: fullatt_block_indexes entry {} is outside 0..{}", i, v.depth - 1);
  if (v.window_size < v.spatial_merge_size * v.patch_size)
    fail(Errc::kInvalidInput, "config: window_size {} is smaller than one merged patch ({} px)",
         v.window_size, v.spatial_merge_size * v.patch_size);
}

std::uint64_t tensor_key(std::uint64_t seed, std::string_view name) {
  return splitmix64_mix(fnv1a64(name.data(), name.size()) + splitmix64_mix(seed));
}

struct InitScale {
  double center, amplitude;
};
// Weights: U(-a, a) with a = std * sqrt(3) (so the standard deviation is `std`); biases: U(-std, std);
// RMSNorm weights: 1 + U(-0.05, 0.05). sqrt is correctly rounded (IEEE 754), so this is exact everywhere.
InitScale init_scale(InitKind kind, double std) {
  switch (kind) {
    case InitKind::kBias:
      return {0.0, std};
    case InitKind::kNorm:
      return {1.0, 0.05};
    case InitKind::kWeight:
    default:
      return {0.0, std * std::sqrt(3.0)};
  }
}

// Uniform in (-1, 1) from the top 24 bits, exactly representable in double; one IEEE rounding to float
// at the end, so the value does not depend on the platform's math library.
inline float init_value(std::uint64_t key, InitScale s, std::uint64_t index) {
  const std::uint64_t r = splitmix64_at(key, index) >> 40;
  const double u = (static_cast<double>(r) - 8388607.5) * 0x1.0p-23;
  return static_cast<float>(s.center + s.amplitude * u);
}

void fill(std::uint64_t key, InitScale s, DType dtype, std::uint64_t begin, std::uint64_t end,
          std::uint8_t* out) {
  switch (dtype) {
    case DType::kF32: {
      for (std::uint64_t i = begin; i < end; ++i) {
        const float v = init_value(key, s, i);
        std::memcpy(out + (i - begin) * 4, &v, 4);
      }
      break;
    }
    case DType::kBF16: {
      for (std::uint64_t i = begin; i < end; ++i) {
        const std::uint16_t v = f32_to_bf16(init_value(key, s, i));
        std::memcpy(out + (i - begin) * 2, &v, 2);
      }
      break;
    }
    case DType::kF16: {
      for (std::uint64_t i = begin; i < end; ++i) {
        const std::uint16_t v = f32_to_f16(init_value(key, s, i));
        std::memcpy(out + (i - begin) * 2, &v, 2);
      }
      break;
    }
    default:
      fail(Errc::kInternal, "unexpected dtype {}", dtype_name(dtype));
  }
}

// Fills one tensor's bytes with several threads; each element depends only on its index.
void fill_parallel(std::uint64_t key, InitScale s, DType dtype, std::span<std::uint8_t> out, int threads) {
  const std::size_t esize = dtype_size(dtype);
  const std::uint64_t n = out.size() / esize;
  constexpr std::uint64_t kMinPerThread = 1 << 16;
  const std::uint64_t want = std::max<std::uint64_t>(1, std::min<std::uint64_t>(threads, n / kMinPerThread));
  if (want <= 1) {
    fill(key, s, dtype, 0, n, out.data());
    return;
  }
  std::vector<std::jthread> pool;
  pool.reserve(want - 1);
  const std::uint64_t chunk = (n + want - 1) / want;
  for (std::uint64_t t = 1; t < want; ++t) {
    const std::uint64_t b = std::min(n, t * chunk), e = std::min(n, (t + 1) * chunk);
    pool.emplace_back([=] { fill(key, s, dtype, b, e, out.data() + b * esize); });
  }
  fill(key, s, dtype, 0, std::min(n, chunk), out.data());
}

void remove_old_weights(const fs::path& dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    const bool shard = name.starts_with("model-") && name.ends_with(".safetensors");
    if (name == "model.safetensors" || name == "model.safetensors.index.json" || shard) {
      fs::remove(entry.path(), ec);
      if (ec)
        fail(Errc::kIo, "{}: cannot remove the earlier weight file: {}", entry.path().string(), ec.message());
    }
  }
}

void write_json(const fs::path& path, const nlohmann::json& j) { write_file(path, j.dump(2) + "\n"); }

// The cached Qwen vocabulary without the four Qwen3-only added tokens; also returns the remaining
// added tokens for tokenizer_config.json.
nlohmann::json qwen25vl_tokenizer_json(const fs::path& source) {
  nlohmann::json tok;
  try {
    tok = nlohmann::json::parse(read_file(source));
  } catch (const nlohmann::json::exception& e) {
    fail(Errc::kInvalidInput, "{}: not valid JSON: {}", source.string(), e.what());
  }
  if (!tok.is_object() || !tok.contains("added_tokens") || !tok["added_tokens"].is_array() ||
      !tok.contains("model") || !tok["model"].is_object())
    fail(Errc::kInvalidInput, "{}: not a tokenizer.json (no added_tokens list or model)", source.string());
  nlohmann::json kept = nlohmann::json::array();
  bool has_image_pad = false;
  for (const auto& t : tok["added_tokens"]) {
    if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() || !t.contains("content") ||
        !t["content"].is_string())
      fail(Errc::kInvalidInput, "{}: an added token has no integer id or string content", source.string());
    const std::int64_t id = t["id"].get<std::int64_t>();
    if (id >= kFirstQwen3OnlyId && id <= kLastQwen3OnlyId) continue;
    if (id >= kFirstQwen3OnlyId)
      fail(Errc::kInvalidInput, "{}: added token id {} is beyond the Qwen2.5-VL vocabulary", source.string(),
           id);
    if (id == 151655 && t["content"] == "<|image_pad|>") has_image_pad = true;
    kept.push_back(t);
  }
  if (!has_image_pad)
    fail(Errc::kInvalidInput, "{}: not a Qwen vocabulary (no <|image_pad|> at id 151655)", source.string());
  tok["added_tokens"] = std::move(kept);
  if (tok["model"].contains("vocab") && tok["model"]["vocab"].is_object()) {
    auto& vocab = tok["model"]["vocab"];
    for (auto it = vocab.begin(); it != vocab.end();) {
      if (it->is_number_integer() && it->get<std::int64_t>() >= kFirstQwen3OnlyId)
        it = vocab.erase(it);
      else
        ++it;
    }
  }
  return tok;
}

nlohmann::json tokenizer_config_json(const nlohmann::json& added_tokens) {
  nlohmann::json decoder = nlohmann::json::object();
  nlohmann::json extra = nlohmann::json::array();
  for (const auto& t : added_tokens) {
    const std::string content = t["content"].get<std::string>();
    const bool special = t.value("special", false);
    decoder[std::to_string(t["id"].get<std::int64_t>())] = {{"content", content},
                                                            {"lstrip", t.value("lstrip", false)},
                                                            {"normalized", t.value("normalized", false)},
                                                            {"rstrip", t.value("rstrip", false)},
                                                            {"single_word", t.value("single_word", false)},
                                                            {"special", special}};
    if (special && content != "<|endoftext|>") extra.push_back(content);
  }
  return {{"add_bos_token", false},
          {"add_prefix_space", false},
          {"added_tokens_decoder", decoder},
          {"additional_special_tokens", extra},
          {"bos_token", nullptr},
          {"chat_template", kChatTemplate},
          {"clean_up_tokenization_spaces", false},
          {"eos_token", "<|im_end|>"},
          {"errors", "replace"},
          {"model_max_length", 131072},
          {"pad_token", "<|endoftext|>"},
          {"split_special_tokens", false},
          {"tokenizer_class", "Qwen2Tokenizer"},
          {"unk_token", nullptr}};
}

nlohmann::json preprocessor_config_json(const ModelConfig& c) {
  constexpr std::int64_t kMinPixels = 3136, kMaxPixels = 12845056;
  return {{"image_processor_type", "Qwen2VLImageProcessor"},
          {"processor_class", "Qwen2_5_VLProcessor"},
          {"min_pixels", kMinPixels},
          {"max_pixels", kMaxPixels},
          {"size", {{"shortest_edge", kMinPixels}, {"longest_edge", kMaxPixels}}},
          {"patch_size", c.vision.patch_size},
          {"temporal_patch_size", c.vision.temporal_patch_size},
          {"merge_size", c.vision.spatial_merge_size},
          {"image_mean", {0.48145466, 0.4578275, 0.40821073}},
          {"image_std", {0.26862954, 0.26130258, 0.27577711}}};
}

nlohmann::json generation_config_json(const ModelConfig& c) {
  return {{"bos_token_id", c.bos_token_id},
          {"pad_token_id", c.bos_token_id},
          {"do_sample", true},
          {"eos_token_id", c.eos_token_ids},
          {"repetition_penalty", 1.05},
          {"temperature", 0.1},
          {"top_k", 1},
          {"top_p", 0.001}};
}

}  // namespace

std::int64_t TensorSpec::numel() const {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::vector<TensorSpec> checkpoint_tensors(const ModelConfig& config) {
  validate(config);
  const TextConfig& t = config.text;
  const VisionConfig& v = config.vision;
  const std::int64_t h = t.hidden_size, hd = t.head_dim(),
                     q = static_cast<std::int64_t>(t.num_attention_heads) * hd,
                     kv = static_cast<std::int64_t>(t.num_key_value_heads) * hd, inter = t.intermediate_size,
                     vocab = t.vocab_size;
  std::vector<TensorSpec> out;
  auto add = [&](std::string name, std::vector<std::int64_t> shape, InitKind init) {
    out.push_back({std::move(name), std::move(shape), init});
  };
  add("model.embed_tokens.weight", {vocab, h}, InitKind::kWeight);
  for (int i = 0; i < t.num_hidden_layers; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    add(p + "input_layernorm.weight", {h}, InitKind::kNorm);
    add(p + "self_attn.q_proj.weight", {q, h}, InitKind::kWeight);
    add(p + "self_attn.q_proj.bias", {q}, InitKind::kBias);
    add(p + "self_attn.k_proj.weight", {kv, h}, InitKind::kWeight);
    add(p + "self_attn.k_proj.bias", {kv}, InitKind::kBias);
    add(p + "self_attn.v_proj.weight", {kv, h}, InitKind::kWeight);
    add(p + "self_attn.v_proj.bias", {kv}, InitKind::kBias);
    add(p + "self_attn.o_proj.weight", {h, q}, InitKind::kWeight);
    add(p + "post_attention_layernorm.weight", {h}, InitKind::kNorm);
    add(p + "mlp.gate_proj.weight", {inter, h}, InitKind::kWeight);
    add(p + "mlp.up_proj.weight", {inter, h}, InitKind::kWeight);
    add(p + "mlp.down_proj.weight", {h, inter}, InitKind::kWeight);
  }
  add("model.norm.weight", {h}, InitKind::kNorm);
  if (!t.tie_word_embeddings) add("lm_head.weight", {vocab, h}, InitKind::kWeight);

  const std::int64_t vh = v.hidden_size, vi = v.intermediate_size,
                     merged = vh * v.spatial_merge_size * v.spatial_merge_size;
  add("visual.patch_embed.proj.weight",
      {vh, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size}, InitKind::kWeight);
  for (int j = 0; j < v.depth; ++j) {
    const std::string p = fmt::format("visual.blocks.{}.", j);
    add(p + "norm1.weight", {vh}, InitKind::kNorm);
    add(p + "norm2.weight", {vh}, InitKind::kNorm);
    add(p + "attn.qkv.weight", {3 * vh, vh}, InitKind::kWeight);
    add(p + "attn.qkv.bias", {3 * vh}, InitKind::kBias);
    add(p + "attn.proj.weight", {vh, vh}, InitKind::kWeight);
    add(p + "attn.proj.bias", {vh}, InitKind::kBias);
    add(p + "mlp.gate_proj.weight", {vi, vh}, InitKind::kWeight);
    add(p + "mlp.gate_proj.bias", {vi}, InitKind::kBias);
    add(p + "mlp.up_proj.weight", {vi, vh}, InitKind::kWeight);
    add(p + "mlp.up_proj.bias", {vi}, InitKind::kBias);
    add(p + "mlp.down_proj.weight", {vh, vi}, InitKind::kWeight);
    add(p + "mlp.down_proj.bias", {vh}, InitKind::kBias);
  }
  add("visual.merger.ln_q.weight", {vh}, InitKind::kNorm);
  add("visual.merger.mlp.0.weight", {merged, merged}, InitKind::kWeight);
  add("visual.merger.mlp.0.bias", {merged}, InitKind::kBias);
  add("visual.merger.mlp.2.weight", {v.out_hidden_size, merged}, InitKind::kWeight);
  add("visual.merger.mlp.2.bias", {v.out_hidden_size}, InitKind::kBias);
  return out;
}

ModelConfig random_checkpoint_config(std::string_view preset_or_path) {
  const char* preset = nullptr;
  if (preset_or_path == "3b") preset = kPreset3B;
  if (preset_or_path == "7b") preset = kPreset7B;
  if (preset_or_path == "tiny") preset = kPresetTiny;
  if (preset) return ModelConfig::from_json(nlohmann::json::parse(preset));
  const fs::path path{std::string(preset_or_path)};
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    fail(Errc::kNotFound, "{}: no such config file (presets are 3b, 7b, tiny)", path.string());
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail(Errc::kInvalidInput, "{}: not valid JSON: {}", path.string(), e.what());
  }
  try {
    return ModelConfig::from_json(j);
  } catch (const Error& e) {
    fail(e.code(), "{}: {}", path.string(), e.what());
  }
}

nlohmann::json hf_config_json(const ModelConfig& c, DType dtype) {
  const TextConfig& t = c.text;
  const VisionConfig& v = c.vision;
  const nlohmann::json rope = {{"type", "mrope"}, {"mrope_section", t.mrope_section}};
  nlohmann::json text = {{"model_type", "qwen2_5_vl_text"},
                         {"vocab_size", t.vocab_size},
                         {"hidden_size", t.hidden_size},
                         {"intermediate_size", t.intermediate_size},
                         {"num_hidden_layers", t.num_hidden_layers},
                         {"num_attention_heads", t.num_attention_heads},
                         {"num_key_value_heads", t.num_key_value_heads},
                         {"hidden_act", t.hidden_act},
                         {"max_position_embeddings", t.max_position_embeddings},
                         {"initializer_range", 0.02},
                         {"rms_norm_eps", t.rms_norm_eps},
                         {"use_cache", true},
                         {"tie_word_embeddings", t.tie_word_embeddings},
                         {"rope_theta", t.rope_theta},
                         {"rope_scaling", rope},
                         {"use_sliding_window", false},
                         {"sliding_window", 32768},
                         {"max_window_layers", t.num_hidden_layers},
                         {"attention_dropout", 0.0},
                         {"bos_token_id", c.bos_token_id},
                         {"eos_token_id", c.eos_token_ids.empty() ? 151645 : c.eos_token_ids.front()}};
  nlohmann::json vision = {{"model_type", "qwen2_5_vl"},
                           {"depth", v.depth},
                           {"hidden_size", v.hidden_size},
                           {"intermediate_size", v.intermediate_size},
                           {"num_heads", v.num_heads},
                           {"in_channels", v.in_channels},
                           {"in_chans", v.in_channels},
                           {"patch_size", v.patch_size},
                           {"spatial_patch_size", v.patch_size},
                           {"temporal_patch_size", v.temporal_patch_size},
                           {"spatial_merge_size", v.spatial_merge_size},
                           {"window_size", v.window_size},
                           {"out_hidden_size", v.out_hidden_size},
                           {"fullatt_block_indexes", v.fullatt_block_indexes},
                           {"tokens_per_second", v.tokens_per_second},
                           {"hidden_act", v.hidden_act},
                           {"initializer_range", 0.02}};
  nlohmann::json j = text;  // the text fields repeated at the top level, as transformers 4.5x writes them
  j.erase("model_type");
  j["architectures"] = {"Qwen2_5_VLForConditionalGeneration"};
  j["model_type"] = "qwen2_5_vl";
  j["torch_dtype"] = hf_dtype_name(dtype);
  j["image_token_id"] = c.image_token_id;
  j["video_token_id"] = c.video_token_id;
  j["vision_start_token_id"] = c.vision_start_token_id;
  j["vision_end_token_id"] = c.vision_end_token_id;
  j["vision_token_id"] = c.vision_token_id;
  j["text_config"] = std::move(text);
  j["vision_config"] = std::move(vision);
  return j;
}

float random_init_value(std::uint64_t seed, std::string_view tensor_name, InitKind init, std::uint64_t index,
                        double init_std) {
  return init_value(tensor_key(seed, tensor_name), init_scale(init, init_std), index);
}

RandomCheckpointInfo write_random_checkpoint(const ModelConfig& config, const fs::path& out_dir,
                                             const RandomCheckpointOptions& options) {
  hf_dtype_name(options.dtype);  // rejects unsupported dtypes up front
  if (!(options.init_std > 0.0 && options.init_std <= 1.0))
    fail(Errc::kUsage, "init std must be in (0, 1], got {}", options.init_std);
  const std::vector<TensorSpec> tensors = checkpoint_tensors(config);
  if (config.text.vocab_size < kTokenizerSize)
    fail(Errc::kInvalidInput, "config: vocab_size {} is smaller than the Qwen tokenizer's {} tokens",
         config.text.vocab_size, kTokenizerSize);
  const fs::path tokenizer_src =
      options.tokenizer_json.empty() ? default_tokenizer_json() : options.tokenizer_json;
  // Read the tokenizer first: a missing vocabulary fails before gigabytes are written.
  const nlohmann::json tokenizer = qwen25vl_tokenizer_json(tokenizer_src);

  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) fail(Errc::kIo, "{}: cannot create the directory: {}", out_dir.string(), ec.message());
  remove_old_weights(out_dir);

  RandomCheckpointInfo info;
  info.tensors = tensors.size();
  const std::size_t esize = dtype_size(options.dtype);
  // Shards: tensors in order, a new shard when the next tensor would overflow a non-empty one.
  std::vector<std::vector<const TensorSpec*>> shards(1);
  std::uint64_t shard_bytes = 0;
  for (const auto& t : tensors) {
    const std::uint64_t bytes = static_cast<std::uint64_t>(t.numel()) * esize;
    info.parameters += static_cast<std::uint64_t>(t.numel());
    info.weight_bytes += bytes;
    if (!shards.back().empty() && shard_bytes + bytes > options.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(&t);
    shard_bytes += bytes;
  }

  const int threads = options.threads > 0
                          ? options.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  Progress progress("random checkpoint", info.weight_bytes, "B");
  nlohmann::json weight_map = nlohmann::json::object();
  for (std::size_t s = 0; s < shards.size(); ++s) {
    const std::string file = shards.size() == 1
                                 ? std::string("model.safetensors")
                                 : fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards.size());
    SafetensorsWriter writer;
    writer.set_metadata("format", "pt");
    for (const TensorSpec* t : shards[s]) {
      const std::uint64_t key = tensor_key(options.seed, t->name);
      const InitScale scale = init_scale(t->init, options.init_std);
      const DType dtype = options.dtype;
      writer.add(t->name, dtype, t->shape,
                 [key, scale, dtype, threads, &progress](std::span<std::uint8_t> out) {
                   fill_parallel(key, scale, dtype, out, threads);
                   progress.advance(out.size());
                 });
      weight_map[t->name] = file;
    }
    writer.write(out_dir / file);
    info.weight_files.push_back(out_dir / file);
  }
  progress.finish();
  if (shards.size() > 1) {
    const nlohmann::json index = {{"metadata", {{"total_size", info.weight_bytes}}},
                                  {"weight_map", weight_map}};
    write_json(out_dir / "model.safetensors.index.json", index);
    info.files.push_back(out_dir / "model.safetensors.index.json");
  }
  info.files.insert(info.files.end(), info.weight_files.begin(), info.weight_files.end());

  write_json(out_dir / "config.json", hf_config_json(config, options.dtype));
  write_file(out_dir / "tokenizer.json", tokenizer.dump(2, ' ', false) + "\n");
  write_json(out_dir / "tokenizer_config.json", tokenizer_config_json(tokenizer["added_tokens"]));
  write_json(out_dir / "chat_template.json", {{"chat_template", kChatTemplate}});
  write_json(out_dir / "preprocessor_config.json", preprocessor_config_json(config));
  write_json(out_dir / "generation_config.json", generation_config_json(config));
  for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.json",
                        "preprocessor_config.json", "generation_config.json"})
    info.files.push_back(out_dir / f);
  spdlog::info("random checkpoint: {} tensors, {} parameters, {} bytes of {} weights in {} file(s) at {}",
               info.tensors, info.parameters, info.weight_bytes, dtype_name(options.dtype),
               info.weight_files.size(), out_dir.string());
  return info;
}

}  // namespace mv::qwen25vl
