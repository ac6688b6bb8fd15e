#include "model/qwen25vl/lora.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cblas.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <pcre2.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "model/qwen25vl/random_checkpoint.hpp"
#include "ops/cpu/simd.hpp"

namespace mv::qwen25vl {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kPrefix = "base_model.model.";
constexpr std::string_view kLoraA = ".lora_A.weight";
constexpr std::string_view kLoraB = ".lora_B.weight";

std::string shape_str(const std::vector<std::int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

struct Pcre2Deleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
using Regex = std::unique_ptr<pcre2_code, Pcre2Deleter>;

// Compiles a Python-style regular expression (the subset PEFT configs use is the same in PCRE2).
Regex compile_regex(const std::string& pattern, std::uint32_t options, const std::string& where) {
  int err = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options,
                                   &err, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail(Errc::kInvalidInput, "{}: invalid regular expression '{}' at offset {}: {}", where, pattern, offset,
         reinterpret_cast<const char*>(msg));
  }
  return Regex(code);
}

bool regex_matches(const pcre2_code* code, const std::string& s) {
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), 0, 0, md, nullptr);
  pcre2_match_data_free(md);
  return rc >= 0;
}

// re.fullmatch(pattern, s)
bool full_match(const std::string& pattern, const std::string& s) {
  const Regex r = compile_regex(pattern, PCRE2_ANCHORED | PCRE2_ENDANCHORED, "adapter_config.json");
  return regex_matches(r.get(), s);
}

// PEFT's get_pattern_key: re.match(rf"(.*\.)?({key})$", module)
bool pattern_key_matches(const std::string& key, const std::string& module) {
  const Regex r = compile_regex("(.*\\.)?(" + key + ")$", PCRE2_ANCHORED, "adapter_config.json");
  return regex_matches(r.get(), module);
}

// The first integer group of re.match(pattern, s), or nullopt.
std::optional<int> match_index(const std::string& pattern, const std::string& s) {
  const Regex r = compile_regex(pattern, PCRE2_ANCHORED, "adapter_config.json");
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(r.get(), nullptr);
  const int rc = pcre2_match(r.get(), reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), 0, 0, md, nullptr);
  std::optional<int> out;
  if (rc >= 2) {
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    out = std::stoi(s.substr(ov[2], ov[3] - ov[2]));
  }
  pcre2_match_data_free(md);
  return out;
}

bool suffix_match(const std::string& name, const std::string& entry) {
  return name == entry || (name.size() > entry.size() && name.ends_with("." + entry));
}

bool truthy(const nlohmann::json& j) {
  if (j.is_null()) return false;
  if (j.is_boolean()) return j.get<bool>();
  if (j.is_array() || j.is_object() || j.is_string()) return !j.empty() && j != "";
  if (j.is_number()) return j.get<double>() != 0;
  return true;
}

std::vector<std::string> string_list(const nlohmann::json& j, const std::string& where, const char* field) {
  std::vector<std::string> out;
  if (j.is_null()) return out;
  if (!j.is_array()) fail(Errc::kInvalidInput, "{}: {} must be a list of strings or null", where, field);
  for (const auto& e : j) {
    if (!e.is_string()) fail(Errc::kInvalidInput, "{}: {} must hold only strings", where, field);
    out.push_back(e.get<std::string>());
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// adapter_config.json

LoraConfig LoraConfig::from_json(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) fail(Errc::kInvalidInput, "{}: expected a JSON object", where);
  LoraConfig c;
  if (!j.contains("peft_type") || !j["peft_type"].is_string())
    fail(Errc::kInvalidInput, "{}: peft_type is missing (a PEFT adapter config names its method)", where);
  const std::string peft_type = j["peft_type"].get<std::string>();
  if (peft_type != "LORA")
    fail(Errc::kUnsupported, "{}: peft_type is '{}'; only LORA adapters are supported", where, peft_type);

  auto number = [&](const char* field, double def) {
    if (!j.contains(field) || j[field].is_null()) return def;
    if (!j[field].is_number()) fail(Errc::kInvalidInput, "{}: {} must be a number", where, field);
    return j[field].get<double>();
  };
  auto flag = [&](const char* field) {
    if (!j.contains(field) || j[field].is_null()) return false;
    if (!j[field].is_boolean()) fail(Errc::kInvalidInput, "{}: {} must be true or false", where, field);
    return j[field].get<bool>();
  };
  if (j.contains("r") && !j["r"].is_number_integer())
    fail(Errc::kInvalidInput, "{}: r must be an integer", where);
  c.r = static_cast<int>(number("r", 8));
  if (c.r <= 0) fail(Errc::kInvalidInput, "{}: r = {} must be positive", where, c.r);
  c.lora_alpha = number("lora_alpha", 8);
  c.use_rslora = flag("use_rslora");
  if (flag("use_dora"))
    fail(Errc::kUnsupported,
         "{}: use_dora is true; DoRA adapters (a magnitude vector per module) are not supported, only plain "
         "LoRA",
         where);
  for (const char* f : {"use_qalora", "use_bdlora"})
    if (j.contains(f) && truthy(j[f]))
      fail(Errc::kUnsupported, "{}: {} is set; this LoRA variant is not supported", where, f);
  for (const char* f : {"alora_invocation_tokens", "arrow_config", "trainable_token_indices",
                        "layer_replication", "target_parameters"})
    if (j.contains(f) && truthy(j[f]))
      fail(Errc::kUnsupported, "{}: {} is set; adapters that use it are not supported", where, f);
  if (flag("lora_bias"))
    fail(Errc::kUnsupported, "{}: lora_bias is true; LoRA with a bias on lora_B is not supported", where);
  if (j.contains("bias") && !j["bias"].is_null()) {
    if (!j["bias"].is_string()) fail(Errc::kInvalidInput, "{}: bias must be a string", where);
    const std::string bias = j["bias"].get<std::string>();
    if (bias != "none")
      fail(Errc::kUnsupported,
           "{}: bias is '{}'; only \"none\" is supported (trained biases are not applied)", where, bias);
  }
  c.fan_in_fan_out = flag("fan_in_fan_out");
  if (c.fan_in_fan_out)
    spdlog::warn(
        "{}: fan_in_fan_out is true but every target is an nn.Linear; treated as false, as PEFT does", where);

  if (!j.contains("target_modules") || j["target_modules"].is_null())
    fail(Errc::kInvalidInput, "{}: target_modules is missing", where);
  if (j["target_modules"].is_string()) {
    c.target_regex = j["target_modules"].get<std::string>();
    if (*c.target_regex != "all-linear")
      compile_regex(*c.target_regex, PCRE2_ANCHORED | PCRE2_ENDANCHORED, where + ": target_modules");
  } else {
    c.target_modules = string_list(j["target_modules"], where, "target_modules");
    if (c.target_modules.empty()) fail(Errc::kInvalidInput, "{}: target_modules is empty", where);
  }
  if (j.contains("exclude_modules") && j["exclude_modules"].is_string()) {
    c.exclude_regex = j["exclude_modules"].get<std::string>();
    compile_regex(*c.exclude_regex, PCRE2_ANCHORED | PCRE2_ENDANCHORED, where + ": exclude_modules");
  } else if (j.contains("exclude_modules")) {
    c.exclude_modules = string_list(j["exclude_modules"], where, "exclude_modules");
  }
  if (j.contains("modules_to_save"))
    c.modules_to_save = string_list(j["modules_to_save"], where, "modules_to_save");
  if (j.contains("layers_to_transform") && !j["layers_to_transform"].is_null()) {
    const auto& l = j["layers_to_transform"];
    if (l.is_number_integer()) {
      c.layers_to_transform.push_back(l.get<int>());
    } else if (l.is_array()) {
      for (const auto& e : l) {
        if (!e.is_number_integer())
          fail(Errc::kInvalidInput, "{}: layers_to_transform must hold integers", where);
        c.layers_to_transform.push_back(e.get<int>());
      }
    } else {
      fail(Errc::kInvalidInput, "{}: layers_to_transform must be an integer or a list of integers", where);
    }
  }
  if (j.contains("layers_pattern") && !j["layers_pattern"].is_null()) {
    if (j["layers_pattern"].is_string())
      c.layers_pattern.push_back(j["layers_pattern"].get<std::string>());
    else
      c.layers_pattern = string_list(j["layers_pattern"], where, "layers_pattern");
  }
  for (const char* field : {"rank_pattern", "alpha_pattern"}) {
    if (!j.contains(field) || j[field].is_null()) continue;
    if (!j[field].is_object()) fail(Errc::kInvalidInput, "{}: {} must be an object", where, field);
    for (const auto& [key, value] : j[field].items()) {
      compile_regex("(.*\\.)?(" + key + ")$", PCRE2_ANCHORED, fmt::format("{}: {} key", where, field));
      if (std::string_view(field) == "rank_pattern") {
        if (!value.is_number_integer() || value.get<int>() <= 0)
          fail(Errc::kInvalidInput, "{}: rank_pattern['{}'] must be a positive integer", where, key);
        c.rank_pattern.emplace_back(key, value.get<int>());
      } else {
        if (!value.is_number())
          fail(Errc::kInvalidInput, "{}: alpha_pattern['{}'] must be a number", where, key);
        c.alpha_pattern.emplace_back(key, value.get<double>());
      }
    }
  }
  if (j.contains("base_model_name_or_path") && j["base_model_name_or_path"].is_string())
    c.base_model_name_or_path = j["base_model_name_or_path"].get<std::string>();
  return c;
}

bool LoraConfig::targets(const std::string& module) const {
  if (exclude_regex) {
    if (full_match(*exclude_regex, module)) return false;
  } else {
    for (const auto& e : exclude_modules)
      if (suffix_match(module, e)) return false;
  }
  if (target_regex) {
    if (*target_regex == "all-linear") return !module.ends_with("lm_head");  // every Linear but the output
    return full_match(*target_regex, module);
  }
  bool found = false;
  for (const auto& t : target_modules) found = found || suffix_match(module, t);
  if (!found || layers_to_transform.empty()) return found;
  std::optional<int> index;
  if (layers_pattern.empty()) {
    index = match_index(R"(.*\.[^.]*\.(\d+)\.)", module);
  } else {
    for (const auto& p : layers_pattern) {
      index = match_index(".*\\.(?:" + p + ")\\.(\\d+)\\.", module);
      if (index) break;
    }
  }
  if (!index) return false;
  return std::find(layers_to_transform.begin(), layers_to_transform.end(), *index) !=
         layers_to_transform.end();
}

int LoraConfig::rank_for(const std::string& module) const {
  for (const auto& [key, r] : rank_pattern)
    if (pattern_key_matches(key, module)) return r;
  return this->r;
}

double LoraConfig::alpha_for(const std::string& module) const {
  for (const auto& [key, a] : alpha_pattern)
    if (pattern_key_matches(key, module)) return a;
  return lora_alpha;
}

float LoraConfig::scale_for(const std::string& module) const {
  const double r = rank_for(module), a = alpha_for(module);
  return static_cast<float>(use_rslora ? a / std::sqrt(r) : a / r);
}

// ---------------------------------------------------------------------------------------------------------
// Modules

std::vector<LinearModuleSpec> lora_linear_modules(const ModelConfig& c) {
  const TextConfig& t = c.text;
  const VisionConfig& v = c.vision;
  const std::int64_t H = t.hidden_size, I = t.intermediate_size, hd = t.head_dim(),
                     nq = std::int64_t{t.num_attention_heads} * hd,
                     nkv = std::int64_t{t.num_key_value_heads} * hd;
  std::vector<LinearModuleSpec> out;
  for (int i = 0; i < t.num_hidden_layers; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    out.push_back({p + "self_attn.q_proj", nq, H});
    out.push_back({p + "self_attn.k_proj", nkv, H});
    out.push_back({p + "self_attn.v_proj", nkv, H});
    out.push_back({p + "self_attn.o_proj", H, nq});
    out.push_back({p + "mlp.gate_proj", I, H});
    out.push_back({p + "mlp.up_proj", I, H});
    out.push_back({p + "mlp.down_proj", H, I});
  }
  out.push_back({"lm_head", t.vocab_size, H});
  const std::int64_t D = v.hidden_size, Iv = v.intermediate_size,
                     unit = std::int64_t{v.spatial_merge_size} * v.spatial_merge_size;
  for (int j = 0; j < v.depth; ++j) {
    const std::string p = fmt::format("visual.blocks.{}.", j);
    out.push_back({p + "attn.qkv", 3 * D, D});
    out.push_back({p + "attn.proj", D, D});
    out.push_back({p + "mlp.gate_proj", Iv, D});
    out.push_back({p + "mlp.up_proj", Iv, D});
    out.push_back({p + "mlp.down_proj", D, Iv});
  }
  out.push_back({"visual.merger.mlp.0", D * unit, D * unit});
  out.push_back({"visual.merger.mlp.2", v.out_hidden_size, D * unit});
  return out;
}

std::string module_name_in_layout(const std::string& module, KeyLayout layout) {
  if (layout == KeyLayout::kLegacy) return module;
  if (module.starts_with("model.")) return "model.language_model." + module.substr(6);
  if (module.starts_with("visual.")) return "model." + module;
  return module;  // lm_head
}

// ---------------------------------------------------------------------------------------------------------
// Loading

const LoraModule* LoraAdapter::find(const std::string& module) const {
  auto it = index_.find(module);
  return it == index_.end() ? nullptr : &modules_[it->second];
}

std::uint64_t LoraAdapter::lora_parameters() const {
  std::uint64_t n = 0;
  for (const auto& m : modules_) n += static_cast<std::uint64_t>(m.a.numel() + m.b.numel());
  return n;
}

std::shared_ptr<const LoraAdapter> LoraAdapter::load(const fs::path& dir, const ModelConfig& model) {
  if (!fs::is_directory(dir))
    fail(Errc::kNotFound,
         "adapter {}: not a folder (expected adapter_config.json and adapter_model.safetensors)",
         dir.string());
  const fs::path config_path = dir / "adapter_config.json";
  const fs::path weights_path = dir / "adapter_model.safetensors";
  if (!fs::exists(config_path))
    fail(Errc::kNotFound, "adapter {}: adapter_config.json is missing", dir.string());
  if (!fs::exists(weights_path)) {
    if (fs::exists(dir / "adapter_model.bin"))
      fail(Errc::kUnsupported,
           "adapter {}: only adapter_model.bin (a pickled PyTorch file) is present; pickles are not loaded. "
           "Save the adapter with safe_serialization=True (adapter_model.safetensors)",
           dir.string());
    fail(Errc::kNotFound, "adapter {}: adapter_model.safetensors is missing", dir.string());
  }
  std::shared_ptr<LoraAdapter> a(new LoraAdapter());
  a->dir_ = dir;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(config_path));
  } catch (const nlohmann::json::exception& e) {
    fail(Errc::kInvalidInput, "{}: not valid JSON: {}", config_path.string(), e.what());
  }
  // rank_pattern / alpha_pattern keys are tried in sorted order: PEFT writes the file with sorted keys.
  a->config_ = LoraConfig::from_json(j, config_path.string());
  const LoraConfig& cfg = a->config_;
  const std::string where = weights_path.string();
  a->store_ = TensorStore::open(weights_path);
  const std::vector<std::string> keys = a->store_.names();
  if (keys.empty()) fail(Errc::kInvalidInput, "{}: holds no tensors", where);

  // Key layout of the adapter (the module names of the model it was trained on).
  bool nested = false, legacy = false;
  for (const auto& k : keys) {
    if (!k.starts_with(kPrefix))
      fail(Errc::kInvalidInput, "{}: tensor '{}' does not start with '{}' (not a PEFT adapter key)", where, k,
           kPrefix);
    const std::string rest = k.substr(kPrefix.size());
    if (rest.starts_with("model.language_model.") || rest.starts_with("model.visual."))
      nested = true;
    else if (rest.starts_with("model.layers.") || rest.starts_with("visual.") ||
             rest.starts_with("model.embed_tokens") || rest.starts_with("model.norm"))
      legacy = true;
  }
  if (nested && legacy)
    fail(Errc::kInvalidInput,
         "{}: mixes both key layouts (model.language_model.* / model.visual.* and "
         "model.layers.* / visual.*)",
         where);
  a->layout_ = nested ? KeyLayout::kNested : KeyLayout::kLegacy;

  std::map<std::string, LinearModuleSpec> linear;
  for (auto& s : lora_linear_modules(model)) linear.emplace(s.module, s);
  std::map<std::string, std::vector<std::int64_t>> tensors;
  for (const auto& s : checkpoint_tensors(model)) tensors.emplace(s.name, s.shape);
  if (!tensors.count("lm_head.weight"))
    tensors.emplace("lm_head.weight",
                    std::vector<std::int64_t>{model.text.vocab_size, model.text.hidden_size});

  struct Pending {
    std::optional<TensorView> a, b;
    std::string name;
  };
  std::map<std::string, Pending> pending;  // engine module name -> tensors
  for (const auto& k : keys) {
    const std::string rest = k.substr(kPrefix.size());
    auto ends = [&](std::string_view s) { return rest.ends_with(s); };
    if (ends(".lora_magnitude_vector") || rest.find(".lora_magnitude_vector.") != std::string::npos)
      fail(Errc::kUnsupported, "{}: tensor '{}' is a DoRA magnitude vector; DoRA adapters are not supported",
           where, k);
    if (rest.find(".lora_embedding_A") != std::string::npos ||
        rest.find(".lora_embedding_B") != std::string::npos)
      fail(Errc::kUnsupported, "{}: tensor '{}' is a LoRA on an embedding; only Linear layers are supported",
           where, k);
    if (ends(".lora_B.bias"))
      fail(Errc::kUnsupported, "{}: tensor '{}' is a lora_B bias (lora_bias); not supported", where, k);
    const bool is_a = ends(kLoraA), is_b = ends(kLoraB);
    if (is_a || is_b) {
      const std::string name = rest.substr(0, rest.size() - kLoraA.size());
      const std::string module = canonical_key(name);
      if (!linear.count(module))
        fail(Errc::kInvalidInput,
             "{}: tensor '{}' names module '{}', which is not a Linear layer of this model", where, k, name);
      auto& p = pending[module];
      p.name = name;
      (is_a ? p.a : p.b) = a->store_.view(k);
      continue;
    }
    if (rest.find(".lora_") != std::string::npos)
      fail(Errc::kInvalidInput, "{}: tensor '{}' is not a LoRA key this engine knows (lora_A/lora_B.weight)",
           where, k);
    // modules_to_save: a full copy of a module's parameter.
    const auto dot = rest.rfind('.');
    const std::string module = dot == std::string::npos ? rest : rest.substr(0, dot);
    bool saved = false;
    for (const auto& m : cfg.modules_to_save) saved = saved || suffix_match(module, m);
    if (!saved)
      fail(Errc::kInvalidInput,
           "{}: tensor '{}' is neither a LoRA weight nor part of a module listed in modules_to_save", where,
           k);
    const std::string canon = canonical_key(rest);
    auto t = tensors.find(canon);
    if (t == tensors.end())
      fail(Errc::kInvalidInput, "{}: tensor '{}' (modules_to_save) is not a tensor of this model", where, k);
    TensorView v = a->store_.view(k);
    if (v.shape() != t->second)
      fail(Errc::kInvalidInput, "{}: tensor '{}' has shape {}, the model's '{}' is {}", where, k,
           shape_str(v.shape()), canon, shape_str(t->second));
    if (v.dtype() != DType::kF32 && v.dtype() != DType::kF16 && v.dtype() != DType::kBF16)
      fail(Errc::kUnsupported, "{}: tensor '{}' has dtype {}; only F32, F16 and BF16 are supported", where, k,
           dtype_name(v.dtype()));
    if (model.text.tie_word_embeddings && canon == "model.embed_tokens.weight")
      fail(Errc::kUnsupported,
           "{}: modules_to_save replaces embed_tokens of a model with tied embeddings; not supported", where);
    a->saved_.emplace(canon, v);
  }

  // Every module target_modules selects must have both tensors; every tensor's module must be selected.
  for (const auto& [module, spec] : linear) {
    const std::string name = module_name_in_layout(module, a->layout_);
    const bool targeted = cfg.targets(name);
    auto p = pending.find(module);
    if (p == pending.end()) {
      if (targeted && !(module == "lm_head" && model.text.tie_word_embeddings))
        fail(Errc::kInvalidInput, "{}: key '{}{}{}' is missing (target_modules selects module '{}')", where,
             kPrefix, name, kLoraA, name);
      continue;
    }
    if (!targeted)
      fail(Errc::kInvalidInput, "{}: holds LoRA weights for '{}', which target_modules does not select",
           where, p->second.name);
    if (module == "lm_head" && model.text.tie_word_embeddings)
      fail(Errc::kUnsupported,
           "{}: LoRA on lm_head of a model with tied embeddings (merging would change the embeddings too) is "
           "not supported",
           where);
    for (const auto& s : a->saved_)
      if (s.first.starts_with(module + "."))
        fail(Errc::kInvalidInput, "{}: module '{}' has both LoRA weights and a modules_to_save copy", where,
             p->second.name);
    const char* missing = !p->second.a ? kLoraA.data() : !p->second.b ? kLoraB.data() : nullptr;
    if (missing)
      fail(Errc::kInvalidInput, "{}: key '{}{}{}' is missing", where, kPrefix, p->second.name, missing);
    LoraModule m;
    m.module = module;
    m.name = p->second.name;
    m.out = spec.out;
    m.in = spec.in;
    m.rank = cfg.rank_for(name);
    m.scale = cfg.scale_for(name);
    m.a = *p->second.a;
    m.b = *p->second.b;
    for (const TensorView* v : {&m.a, &m.b}) {
      if (v->dtype() != DType::kF32 && v->dtype() != DType::kF16 && v->dtype() != DType::kBF16)
        fail(Errc::kUnsupported, "{}: tensor '{}' has dtype {}; only F32, F16 and BF16 are supported", where,
             v->info->name, dtype_name(v->dtype()));
    }
    const std::vector<std::int64_t> want_a{m.rank, m.in}, want_b{m.out, m.rank};
    if (m.a.shape() != want_a)
      fail(Errc::kInvalidInput,
           "{}: tensor '{}' has shape {}, expected {} (rank {} from adapter_config.json, {} "
           "input features)",
           where, m.a.info->name, shape_str(m.a.shape()), shape_str(want_a), m.rank, m.in);
    if (m.b.shape() != want_b)
      fail(Errc::kInvalidInput,
           "{}: tensor '{}' has shape {}, expected {} ({} output features, rank {} from "
           "adapter_config.json)",
           where, m.b.info->name, shape_str(m.b.shape()), shape_str(want_b), m.out, m.rank);
    a->modules_.push_back(std::move(m));
  }
  std::sort(a->modules_.begin(), a->modules_.end(),
            [](const LoraModule& x, const LoraModule& y) { return x.module < y.module; });
  for (std::size_t i = 0; i < a->modules_.size(); ++i) a->index_.emplace(a->modules_[i].module, i);
  if (a->modules_.empty() && a->saved_.empty())
    fail(Errc::kInvalidInput, "{}: no LoRA weights and no modules_to_save tensors", where);
  return a;
}

// ---------------------------------------------------------------------------------------------------------
// Merging

void add_lora_delta(const LoraModule& m, std::span<float> w, ThreadPool* pool) {
  MV_CHECK(w.size() == static_cast<std::size_t>(m.out * m.in), "LoRA merge of {}: {} floats for [{}, {}]",
           m.module, w.size(), m.out, m.in);
  ops::cpu::init_blas_once();
  const std::vector<float> a = to_f32(m.a), b = to_f32(m.b);
  const std::int64_t r = m.rank, in = m.in;
  const float s = m.scale;
  // Row panels of ~1 MiB of delta each.
  const std::int64_t panel =
      std::max<std::int64_t>(1, (std::int64_t{1} << 18) / std::max<std::int64_t>(1, in));
  const std::int64_t panels = (m.out + panel - 1) / panel;
  auto work = [&](std::int64_t p0, std::int64_t p1) {
    std::vector<float> tmp(static_cast<std::size_t>(std::min(panel, m.out) * in));
    for (std::int64_t p = p0; p < p1; ++p) {
      const std::int64_t row0 = p * panel, rows = std::min(panel, m.out - row0);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(rows), static_cast<int>(in),
                  static_cast<int>(r), 1.0f, b.data() + row0 * r, static_cast<int>(r), a.data(),
                  static_cast<int>(in), 0.0f, tmp.data(), static_cast<int>(in));
      float* dst = w.data() + row0 * in;
      const std::int64_t n = rows * in;
      for (std::int64_t i = 0; i < n; ++i) {
        const float delta = tmp[static_cast<std::size_t>(i)] * s;  // rounded to fp32 before the sum
        dst[i] = dst[i] + delta;
      }
    }
  };
  if (pool)
    pool->parallel_for(panels, work);
  else
    work(0, panels);
}

// ---------------------------------------------------------------------------------------------------------
// Random adapters

RandomAdapterInfo write_random_adapter(const fs::path& model_dir, const fs::path& out_dir,
                                       const RandomAdapterOptions& o) {
  if (o.rank <= 0) fail(Errc::kUsage, "random-adapter: --rank must be positive, got {}", o.rank);
  if (!(o.b_std > 0.0 && o.b_std <= 1.0)) fail(Errc::kUsage, "random-adapter: B std must be in (0, 1]");
  if (o.dtype != DType::kF32 && o.dtype != DType::kBF16)
    fail(Errc::kUsage, "random-adapter: dtype must be F32 or BF16");
  if (!o.target_regex && o.targets.empty()) fail(Errc::kUsage, "random-adapter: no target modules given");
  const ModelConfig model = ModelConfig::load(model_dir);

  nlohmann::json cfg = {
      {"alpha_pattern", nlohmann::json::object()},
      {"auto_mapping", nullptr},
      {"base_model_name_or_path", fs::absolute(model_dir).lexically_normal().string()},
      {"bias", "none"},
      {"corda_config", nullptr},
      {"eva_config", nullptr},
      {"exclude_modules", nullptr},
      {"fan_in_fan_out", false},
      {"inference_mode", true},
      {"init_lora_weights", true},
      {"layer_replication", nullptr},
      {"layers_pattern", nullptr},
      {"layers_to_transform", nullptr},
      {"loftq_config", nlohmann::json::object()},
      {"lora_alpha", o.alpha},
      {"lora_bias", false},
      {"lora_dropout", 0.0},
      {"megatron_config", nullptr},
      {"megatron_core", "megatron.core"},
      {"modules_to_save", nullptr},
      {"peft_type", "LORA"},
      {"qalora_group_size", 16},
      {"r", o.rank},
      {"rank_pattern", nlohmann::json::object()},
      {"revision", nullptr},
      {"target_modules", o.target_regex ? nlohmann::json(*o.target_regex) : nlohmann::json(o.targets)},
      {"target_parameters", nullptr},
      {"task_type", "CAUSAL_LM"},
      {"trainable_token_indices", nullptr},
      {"use_dora", false},
      {"use_qalora", false},
      {"use_rslora", o.use_rslora},
  };
  for (const auto& [k, v] : o.rank_pattern) cfg["rank_pattern"][k] = v;
  for (const auto& [k, v] : o.alpha_pattern) cfg["alpha_pattern"][k] = v;
  if (std::floor(o.alpha) == o.alpha && std::abs(o.alpha) < 1e9)
    cfg["lora_alpha"] = static_cast<std::int64_t>(o.alpha);
  const LoraConfig lc = LoraConfig::from_json(cfg, "random-adapter");

  RandomAdapterInfo info;
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  const bool tied = model.text.tie_word_embeddings;
  for (const auto& spec : lora_linear_modules(model)) {
    const std::string name = module_name_in_layout(spec.module, o.layout);
    if (!lc.targets(name) || (spec.module == "lm_head" && tied)) continue;
    const int r = lc.rank_for(name);
    for (int which = 0; which < 2; ++which) {
      const std::string key = fmt::format("{}{}{}", kPrefix, name, which == 0 ? kLoraA : kLoraB);
      const std::vector<std::int64_t> shape =
          which == 0 ? std::vector<std::int64_t>{r, spec.in} : std::vector<std::int64_t>{spec.out, r};
      const double std = which == 0 ? 1.0 / std::sqrt(3.0 * static_cast<double>(spec.in)) : o.b_std;
      const std::size_t n = static_cast<std::size_t>(shape[0] * shape[1]);
      std::vector<std::uint8_t> bytes(n * dtype_size(o.dtype));
      for (std::size_t i = 0; i < n; ++i) {
        const float v = random_init_value(o.seed, key, InitKind::kWeight, i, std);
        if (o.dtype == DType::kF32) {
          std::memcpy(bytes.data() + 4 * i, &v, 4);
        } else {
          const std::uint16_t h = f32_to_bf16(v);
          std::memcpy(bytes.data() + 2 * i, &h, 2);
        }
      }
      info.parameters += n;
      w.add(key, o.dtype, shape, bytes);
    }
    ++info.modules;
  }
  if (info.modules == 0)
    fail(Errc::kUsage, "random-adapter: the targets select no Linear layer of {}", model_dir.string());
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) fail(Errc::kIo, "{}: cannot create the directory: {}", out_dir.string(), ec.message());
  info.config_file = out_dir / "adapter_config.json";
  info.weights_file = out_dir / "adapter_model.safetensors";
  w.write(info.weights_file);
  write_file(info.config_file, cfg.dump(2) + "\n");
  return info;
}

}  // namespace mv::qwen25vl
