// Qwen2.5-VL config.json in both layouts (spec §1): legacy (text fields at the top level, rope_scaling,
// torch_dtype) and transformers-5 (nested text_config, rope_parameters, dtype). Missing vision keys take
// transformers' class defaults, as re-saved configs drop keys equal to the default.
#include "io/model_config.hpp"

#include <algorithm>
#include <limits>
#include <numeric>
#include <optional>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"

namespace mv {

namespace {

using nlohmann::json;

// A value from one of several objects, tried in order; JSON null counts as absent.
struct Lookup {
  std::vector<std::pair<const json*, std::string>> scopes;  // object, prefix used in messages

  std::optional<std::pair<const json*, std::string>> find(std::initializer_list<const char*> keys) const {
    for (const auto& [obj, prefix] : scopes) {
      if (obj == nullptr || !obj->is_object()) continue;
      for (const char* k : keys) {
        auto it = obj->find(k);
        if (it != obj->end() && !it->is_null()) return std::make_pair(&*it, prefix + k);
      }
    }
    return std::nullopt;
  }
};

int as_int(const json& v, const std::string& field) {
  if (v.is_number_integer()) {
    const auto x = v.get<std::int64_t>();
    if (x < std::numeric_limits<int>::min() || x > std::numeric_limits<int>::max())
      fail(Errc::kInvalidInput, "config field '{}': {} is out of range", field, x);
    return static_cast<int>(x);
  }
  if (v.is_number_unsigned()) {
    const auto x = v.get<std::uint64_t>();
    if (x > static_cast<std::uint64_t>(std::numeric_limits<int>::max()))
      fail(Errc::kInvalidInput, "config field '{}': {} is out of range", field, x);
    return static_cast<int>(x);
  }
  fail(Errc::kInvalidInput, "config field '{}': expected an integer, got {}", field, v.dump());
}

double as_double(const json& v, const std::string& field) {
  if (!v.is_number())
    fail(Errc::kInvalidInput, "config field '{}': expected a number, got {}", field, v.dump());
  return v.get<double>();
}

bool as_bool(const json& v, const std::string& field) {
  if (!v.is_boolean())
    fail(Errc::kInvalidInput, "config field '{}': expected true or false, got {}", field, v.dump());
  return v.get<bool>();
}

std::string as_string(const json& v, const std::string& field) {
  if (!v.is_string())
    fail(Errc::kInvalidInput, "config field '{}': expected a string, got {}", field, v.dump());
  return v.get<std::string>();
}

std::vector<int> as_int_list(const json& v, const std::string& field) {
  if (!v.is_array()) fail(Errc::kInvalidInput, "config field '{}': expected a list of integers", field);
  std::vector<int> out;
  for (std::size_t i = 0; i < v.size(); ++i) out.push_back(as_int(v[i], fmt::format("{}[{}]", field, i)));
  return out;
}

// eos_token_id: an integer or a list of integers.
std::vector<std::int32_t> as_token_ids(const json& v, const std::string& field) {
  if (v.is_array()) {
    std::vector<std::int32_t> out;
    for (std::size_t i = 0; i < v.size(); ++i) out.push_back(as_int(v[i], fmt::format("{}[{}]", field, i)));
    return out;
  }
  return {as_int(v, field)};
}

template <typename T, typename F>
void read(const Lookup& l, std::initializer_list<const char*> keys, T& out, F convert) {
  if (auto hit = l.find(keys)) out = convert(*hit->first, hit->second);
}

void require_positive(int v, const char* field) {
  if (v <= 0) fail(Errc::kInvalidInput, "config field '{}': must be positive, got {}", field, v);
}

void require_token_id(std::int32_t v, const char* field) {
  if (v < 0) fail(Errc::kInvalidInput, "config field '{}': token id {} is negative", field, v);
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& j) {
  if (!j.is_object()) fail(Errc::kInvalidInput, "config: not a JSON object");
  ModelConfig c;
  c.raw = j;

  const json* text_cfg = nullptr;
  if (auto it = j.find("text_config"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) fail(Errc::kInvalidInput, "config field 'text_config': expected an object");
    text_cfg = &*it;
  }
  const json* vision_cfg = nullptr;
  if (auto it = j.find("vision_config"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) fail(Errc::kInvalidInput, "config field 'vision_config': expected an object");
    vision_cfg = &*it;
  }
  // rope_parameters (v5) or rope_scaling (legacy), nested first.
  const Lookup text{{{text_cfg, "text_config."}, {&j, ""}}};
  const json* rope = nullptr;
  std::string rope_field;
  if (auto hit = text.find({"rope_parameters", "rope_scaling"})) {
    if (!hit->first->is_object())
      fail(Errc::kInvalidInput, "config field '{}': expected an object", hit->second);
    rope = hit->first;
    rope_field = hit->second;
  }
  c.v5_layout = text_cfg != nullptr || j.contains("rope_parameters") || j.contains("dtype");

  const Lookup top{{{&j, ""}}};
  read(top, {"model_type"}, c.model_type, as_string);
  if (c.model_type != "qwen2_5_vl")
    fail(Errc::kUnsupported, "config field 'model_type': '{}' is not supported (expected 'qwen2_5_vl')",
         c.model_type);

  // Text model.
  TextConfig& t = c.text;
  read(text, {"hidden_size"}, t.hidden_size, as_int);
  read(text, {"num_hidden_layers"}, t.num_hidden_layers, as_int);
  read(text, {"num_attention_heads"}, t.num_attention_heads, as_int);
  read(text, {"num_key_value_heads"}, t.num_key_value_heads, as_int);
  read(text, {"intermediate_size"}, t.intermediate_size, as_int);
  read(text, {"vocab_size"}, t.vocab_size, as_int);
  read(text, {"rms_norm_eps"}, t.rms_norm_eps, as_double);
  read(text, {"tie_word_embeddings"}, t.tie_word_embeddings, as_bool);
  read(text, {"max_position_embeddings"}, t.max_position_embeddings, as_int);
  read(text, {"hidden_act"}, t.hidden_act, as_string);
  // rope_theta: inside rope_parameters (v5), else text_config / top level.
  const Lookup rope_l{{{rope, rope_field + "."}}};
  if (auto hit = rope_l.find({"rope_theta"}))
    t.rope_theta = as_double(*hit->first, hit->second);
  else
    read(text, {"rope_theta"}, t.rope_theta, as_double);
  std::string mrope_field = "mrope_section";
  if (auto hit = rope_l.find({"mrope_section"})) {
    mrope_field = hit->second;
    const auto sec = as_int_list(*hit->first, hit->second);
    if (sec.size() != 3)
      fail(Errc::kInvalidInput, "config field '{}': expected 3 integers (temporal, height, width), got {}",
           hit->second, sec.size());
    t.mrope_section = {sec[0], sec[1], sec[2]};
  }
  if (rope != nullptr) {
    // "mrope" (legacy) and "default" (re-saved) both mean M-RoPE without scaling for this model.
    for (const char* k : {"rope_type", "type"}) {
      auto it = rope->find(k);
      if (it == rope->end() || it->is_null()) continue;
      const std::string type = as_string(*it, rope_field + "." + k);
      if (type != "mrope" && type != "default")
        fail(Errc::kUnsupported,
             "config field '{}.{}': rope type '{}' is not supported (expected mrope/default)", rope_field, k,
             type);
    }
  }

  // Dtype: v5 "dtype", legacy "torch_dtype".
  read(Lookup{{{&j, ""}, {text_cfg, "text_config."}}}, {"dtype", "torch_dtype"}, c.dtype, as_string);

  // Token ids (top level; nested copies as a fallback).
  const Lookup ids{{{&j, ""}, {text_cfg, "text_config."}}};
  read(ids, {"bos_token_id"}, c.bos_token_id, as_int);
  read(ids, {"eos_token_id"}, c.eos_token_ids, as_token_ids);
  read(ids, {"image_token_id"}, c.image_token_id, as_int);
  read(ids, {"video_token_id"}, c.video_token_id, as_int);
  read(ids, {"vision_start_token_id"}, c.vision_start_token_id, as_int);
  read(ids, {"vision_end_token_id"}, c.vision_end_token_id, as_int);
  read(ids, {"vision_token_id"}, c.vision_token_id, as_int);

  // Vision tower: every missing key keeps the class default.
  VisionConfig& v = c.vision;
  const Lookup vis{{{vision_cfg, "vision_config."}}};
  read(vis, {"depth"}, v.depth, as_int);
  read(vis, {"hidden_size"}, v.hidden_size, as_int);
  read(vis, {"intermediate_size"}, v.intermediate_size, as_int);
  read(vis, {"num_heads"}, v.num_heads, as_int);
  read(vis, {"in_channels", "in_chans"}, v.in_channels, as_int);
  read(vis, {"patch_size", "spatial_patch_size"}, v.patch_size, as_int);
  read(vis, {"temporal_patch_size"}, v.temporal_patch_size, as_int);
  read(vis, {"spatial_merge_size"}, v.spatial_merge_size, as_int);
  read(vis, {"window_size"}, v.window_size, as_int);
  read(vis, {"out_hidden_size"}, v.out_hidden_size, as_int);
  read(vis, {"fullatt_block_indexes"}, v.fullatt_block_indexes, as_int_list);
  read(vis, {"tokens_per_second"}, v.tokens_per_second, as_int);
  read(vis, {"hidden_act"}, v.hidden_act, as_string);

  // Validation.
  require_positive(t.hidden_size, "hidden_size");
  require_positive(t.num_hidden_layers, "num_hidden_layers");
  require_positive(t.num_attention_heads, "num_attention_heads");
  require_positive(t.num_key_value_heads, "num_key_value_heads");
  require_positive(t.intermediate_size, "intermediate_size");
  require_positive(t.vocab_size, "vocab_size");
  require_positive(t.max_position_embeddings, "max_position_embeddings");
  if (!(t.rms_norm_eps > 0.0))
    fail(Errc::kInvalidInput, "config field 'rms_norm_eps': must be positive, got {}", t.rms_norm_eps);
  if (!(t.rope_theta > 0.0))
    fail(Errc::kInvalidInput, "config field 'rope_theta': must be positive, got {}", t.rope_theta);
  if (t.hidden_size % t.num_attention_heads != 0)
    fail(Errc::kInvalidInput, "config field 'hidden_size': {} is not divisible by num_attention_heads {}",
         t.hidden_size, t.num_attention_heads);
  if (t.num_attention_heads % t.num_key_value_heads != 0)
    fail(Errc::kInvalidInput,
         "config field 'num_key_value_heads': num_attention_heads {} is not divisible by {}",
         t.num_attention_heads, t.num_key_value_heads);
  for (int s : t.mrope_section)
    if (s < 0) fail(Errc::kInvalidInput, "config field '{}': negative entry {}", mrope_field, s);
  const int sec_sum = t.mrope_section[0] + t.mrope_section[1] + t.mrope_section[2];
  if (t.head_dim() % 2 != 0 || sec_sum != t.head_dim() / 2)
    fail(Errc::kInvalidInput, "config field '{}': [{}, {}, {}] sums to {}, expected head_dim/2 = {}/2",
         mrope_field, t.mrope_section[0], t.mrope_section[1], t.mrope_section[2], sec_sum, t.head_dim());
  if (t.hidden_act != "silu")
    fail(Errc::kUnsupported, "config field 'hidden_act': '{}' is not supported (expected silu)",
         t.hidden_act);

  require_positive(v.depth, "vision_config.depth");
  require_positive(v.hidden_size, "vision_config.hidden_size");
  require_positive(v.intermediate_size, "vision_config.intermediate_size");
  require_positive(v.num_heads, "vision_config.num_heads");
  require_positive(v.in_channels, "vision_config.in_channels");
  require_positive(v.patch_size, "vision_config.patch_size");
  require_positive(v.temporal_patch_size, "vision_config.temporal_patch_size");
  require_positive(v.spatial_merge_size, "vision_config.spatial_merge_size");
  require_positive(v.window_size, "vision_config.window_size");
  require_positive(v.out_hidden_size, "vision_config.out_hidden_size");
  require_positive(v.tokens_per_second, "vision_config.tokens_per_second");
  if (v.hidden_size % v.num_heads != 0)
    fail(Errc::kInvalidInput, "config field 'vision_config.hidden_size': {} is not divisible by num_heads {}",
         v.hidden_size, v.num_heads);
  for (int b : v.fullatt_block_indexes)
    if (b < 0)
      fail(Errc::kInvalidInput, "config field 'vision_config.fullatt_block_indexes': negative index {}", b);
  if (v.out_hidden_size != t.hidden_size)
    fail(Errc::kInvalidInput,
         "config field 'vision_config.out_hidden_size': {} differs from the text hidden_size {}",
         v.out_hidden_size, t.hidden_size);
  if (v.hidden_act != "silu")
    fail(Errc::kUnsupported, "config field 'vision_config.hidden_act': '{}' is not supported (expected silu)",
         v.hidden_act);

  if (c.eos_token_ids.empty()) fail(Errc::kInvalidInput, "config field 'eos_token_id': empty list");
  for (auto id : c.eos_token_ids) require_token_id(id, "eos_token_id");
  require_token_id(c.bos_token_id, "bos_token_id");
  require_token_id(c.image_token_id, "image_token_id");
  require_token_id(c.video_token_id, "video_token_id");
  require_token_id(c.vision_start_token_id, "vision_start_token_id");
  require_token_id(c.vision_end_token_id, "vision_end_token_id");
  require_token_id(c.vision_token_id, "vision_token_id");
  return c;
}

ModelConfig ModelConfig::load(const std::filesystem::path& model_dir) {
  std::error_code ec;
  const bool is_file = fs::is_regular_file(model_dir, ec);
  if (!is_file && !fs::is_directory(model_dir, ec))
    fail(Errc::kNotFound, "{}: no such model directory", model_dir.string());
  const fs::path config_path = is_file ? model_dir : model_dir / "config.json";
  const fs::path dir = is_file ? model_dir.parent_path() : model_dir;
  if (!fs::exists(config_path, ec))
    fail(Errc::kNotFound, "{}: no config.json in the model directory", dir.string());

  auto parse = [](const fs::path& p) {
    const std::string text = read_file(p);
    try {
      return json::parse(text);
    } catch (const json::exception& e) {
      fail(Errc::kInvalidInput, "{}: not valid JSON: {}", p.string(), e.what());
    }
  };
  ModelConfig c;
  try {
    c = from_json(parse(config_path));
  } catch (const Error& e) {
    if (std::string_view(e.what()).starts_with(config_path.string())) throw;
    throw Error(e.code(), fmt::format("{}: {}", config_path.string(), e.what()));
  }

  // generation_config.json adds stop ids (the published one lists [151645, 151643]).
  const fs::path gen_path = dir / "generation_config.json";
  if (fs::exists(gen_path, ec)) {
    const json g = parse(gen_path);
    if (!g.is_object()) fail(Errc::kInvalidInput, "{}: not a JSON object", gen_path.string());
    if (auto it = g.find("eos_token_id"); it != g.end() && !it->is_null()) {
      std::vector<std::int32_t> extra;
      try {
        extra = as_token_ids(*it, "eos_token_id");
        for (auto id : extra) require_token_id(id, "eos_token_id");
      } catch (const Error& e) {
        throw Error(e.code(), fmt::format("{}: {}", gen_path.string(), e.what()));
      }
      for (auto id : extra)
        if (std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) == c.eos_token_ids.end())
          c.eos_token_ids.push_back(id);
    }
    spdlog::debug("model config: {} read, {} stop ids", gen_path.string(), c.eos_token_ids.size());
  }
  return c;
}

nlohmann::json ModelConfig::summary() const {
  json j;
  j["model_type"] = model_type;
  j["dtype"] = dtype;
  j["config_layout"] = v5_layout ? "v5" : "legacy";
  j["text"] = {
      {"hidden_size", text.hidden_size},
      {"num_hidden_layers", text.num_hidden_layers},
      {"num_attention_heads", text.num_attention_heads},
      {"num_key_value_heads", text.num_key_value_heads},
      {"head_dim", text.head_dim()},
      {"intermediate_size", text.intermediate_size},
      {"vocab_size", text.vocab_size},
      {"rms_norm_eps", text.rms_norm_eps},
      {"rope_theta", text.rope_theta},
      {"mrope_section", text.mrope_section},
      {"tie_word_embeddings", text.tie_word_embeddings},
      {"max_position_embeddings", text.max_position_embeddings},
      {"hidden_act", text.hidden_act},
  };
  j["vision"] = {
      {"depth", vision.depth},
      {"hidden_size", vision.hidden_size},
      {"head_dim", vision.head_dim()},
      {"intermediate_size", vision.intermediate_size},
      {"num_heads", vision.num_heads},
      {"in_channels", vision.in_channels},
      {"patch_size", vision.patch_size},
      {"temporal_patch_size", vision.temporal_patch_size},
      {"spatial_merge_size", vision.spatial_merge_size},
      {"window_size", vision.window_size},
      {"out_hidden_size", vision.out_hidden_size},
      {"fullatt_block_indexes", vision.fullatt_block_indexes},
      {"tokens_per_second", vision.tokens_per_second},
      {"hidden_act", vision.hidden_act},
  };
  j["tokens"] = {
      {"bos_token_id", bos_token_id},
      {"eos_token_ids", eos_token_ids},
      {"image_token_id", image_token_id},
      {"video_token_id", video_token_id},
      {"vision_start_token_id", vision_start_token_id},
      {"vision_end_token_id", vision_end_token_id},
      {"vision_token_id", vision_token_id},
  };
  return j;
}

const char* key_layout_name(KeyLayout k) noexcept {
  switch (k) {
    case KeyLayout::kLegacy:
      return "legacy";
    case KeyLayout::kNested:
      return "nested";
  }
  return "?";
}

std::string canonical_key(const std::string& key) {
  static constexpr std::string_view kVisual = "model.visual.";
  static constexpr std::string_view kLanguage = "model.language_model.";
  if (key.starts_with(kVisual)) return key.substr(6);  // drop "model."
  if (key.starts_with(kLanguage)) return "model." + key.substr(kLanguage.size());
  return key;
}

KeyLayout detect_key_layout(const std::vector<std::string>& keys) {
  for (const auto& k : keys)
    if (k.starts_with("model.language_model.") || k.starts_with("model.visual.")) return KeyLayout::kNested;
  return KeyLayout::kLegacy;
}

}  // namespace mv
