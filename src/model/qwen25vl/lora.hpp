// PEFT LoRA adapters for Qwen2.5-VL (docs/design/lora.md; spec: shared/reference/nf4-peft-spec.md part B).
//
// An adapter folder holds adapter_config.json and adapter_model.safetensors. LoraAdapter::load parses and
// validates both against the model's config: every `base_model.model.<module>.lora_A/B.weight` key of
// either key layout (transformers < 4.52: model.layers.* / visual.*; >= 4.52: model.language_model.* /
// model.visual.*) must name one of the model's Linear layers, match target_modules, and have the shapes
// [r, in] / [out, r] with the module's rank (rank_pattern); every targeted module must have both keys.
//
// The engine applies an adapter at load by merging it, as PEFT's merge_and_unload does:
// W' = W + s·(B·A), s = alpha/r (alpha/√r with use_rslora), the delta computed in fp32 and added to W
// in fp32, then rounded once to W's dtype (round to nearest even). NF4 weights are dequantized, rounded
// to their original dtype, merged and quantized again (PEFT's Linear4bit.merge).
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/thread_pool.hpp"
#include "io/model_config.hpp"
#include "io/safetensors.hpp"

namespace mv::qwen25vl {

// The fields of adapter_config.json the engine needs; unknown fields are ignored.
struct LoraConfig {
  int r = 8;
  double lora_alpha = 8;
  bool use_rslora = false;
  bool fan_in_fan_out = false;  // always treated as false: every target is an nn.Linear (as PEFT does)
  // target_modules: a list of names (a module matches when its name equals an entry or ends with
  // "." + entry), or a regular expression the whole module name must match.
  std::vector<std::string> target_modules;
  std::optional<std::string> target_regex;
  std::vector<std::string> exclude_modules;
  std::optional<std::string> exclude_regex;
  std::vector<std::string> modules_to_save;
  std::vector<int> layers_to_transform;     // empty: all layers (applies to list target_modules only)
  std::vector<std::string> layers_pattern;  // empty: PEFT's default layer index rule
  std::vector<std::pair<std::string, int>> rank_pattern;      // in file order; first match wins
  std::vector<std::pair<std::string, double>> alpha_pattern;  // in file order; first match wins
  std::string base_model_name_or_path;

  // Throws kInvalidInput / kUnsupported naming `where` and the field.
  static LoraConfig from_json(const nlohmann::json& j, const std::string& where);

  // PEFT's check_target_module_exists on a module name as the adapter's model named it.
  bool targets(const std::string& module) const;
  int rank_for(const std::string& module) const;      // rank_pattern, else r
  double alpha_for(const std::string& module) const;  // alpha_pattern, else lora_alpha
  // alpha/r (alpha/√r with use_rslora) in double, then to float as torch multiplies a float32 tensor by
  // a Python float.
  float scale_for(const std::string& module) const;
};

// One LoRA-adapted Linear layer.
struct LoraModule {
  std::string module;  // engine (legacy) name, e.g. "model.layers.0.self_attn.q_proj"
  std::string name;    // name in the adapter file, without "base_model.model."
  std::int64_t out = 0, in = 0;
  int rank = 0;
  float scale = 0;
  TensorView a;  // lora_A.weight [rank, in]
  TensorView b;  // lora_B.weight [out, rank]
};

class LoraAdapter {
 public:
  // Reads <dir>/adapter_config.json and <dir>/adapter_model.safetensors and checks them against `model`.
  static std::shared_ptr<const LoraAdapter> load(const std::filesystem::path& dir, const ModelConfig& model);

  const std::filesystem::path& dir() const { return dir_; }
  const LoraConfig& config() const { return config_; }
  KeyLayout layout() const { return layout_; }
  const std::vector<LoraModule>& modules() const { return modules_; }  // sorted by engine name
  const LoraModule* find(const std::string& module) const;             // by engine name; null when absent
  // modules_to_save: full tensors that replace the model's (engine key, e.g. "lm_head.weight").
  const std::map<std::string, TensorView>& saved_tensors() const { return saved_; }
  std::uint64_t lora_parameters() const;

 private:
  LoraAdapter() = default;
  std::filesystem::path dir_;
  LoraConfig config_;
  KeyLayout layout_ = KeyLayout::kLegacy;
  TensorStore store_;
  std::vector<LoraModule> modules_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, TensorView> saved_;
};

// A Linear layer of the model that LoRA can target: engine name and [out, in].
struct LinearModuleSpec {
  std::string module;
  std::int64_t out = 0, in = 0;
};
// Every Linear layer of Qwen2.5-VL for `config` (text projections, vision blocks, merger, lm_head).
std::vector<LinearModuleSpec> lora_linear_modules(const ModelConfig& config);
// An engine (legacy) module name as the given key layout writes it.
std::string module_name_in_layout(const std::string& module, KeyLayout layout);

// w (m.out × m.in, row-major fp32, holding W) += fl(fl(B·A)·scale): B·A in fp32 (SGEMM), then one
// product and one sum, each rounded to fp32, as PEFT's get_delta_weight and `weight += delta` do.
// Parallel over row panels; `pool` may be null.
void add_lora_delta(const LoraModule& m, std::span<float> w, ThreadPool* pool);

// `medvision debug random-adapter`: a PEFT-format adapter for a model folder with random, non-zero A
// and B. A ~ U(±1/√in) (PEFT's kaiming-uniform initialisation), B ~ U(-b, b) with standard deviation
// `b_std`. Deterministic for a seed.
struct RandomAdapterOptions {
  int rank = 8;
  double alpha = 16;
  bool use_rslora = false;
  std::vector<std::string> targets = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                      "gate_proj", "up_proj", "down_proj"};
  std::optional<std::string> target_regex;  // instead of `targets`
  KeyLayout layout = KeyLayout::kNested;    // key names as transformers >= 4.52 writes them
  DType dtype = DType::kF32;                // F32 (PEFT's default for saved adapters) or BF16
  double b_std = 0.02;
  std::uint64_t seed = 0;
  std::vector<std::pair<std::string, int>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
};
struct RandomAdapterInfo {
  std::size_t modules = 0;
  std::uint64_t parameters = 0;
  std::filesystem::path config_file, weights_file;
};
RandomAdapterInfo write_random_adapter(const std::filesystem::path& model_dir,
                                       const std::filesystem::path& out_dir,
                                       const RandomAdapterOptions& options);

}  // namespace mv::qwen25vl
