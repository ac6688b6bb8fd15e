// medvision info --model DIR [--json]: what a checkpoint folder holds (config, key layout, parameter
// counts per part from the tensors actually present, dtypes, shards, tied embeddings).
#include <charconv>
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "io/model_config.hpp"
#include "io/safetensors.hpp"

namespace mv::cli {

namespace {

constexpr std::string_view kNf4State = ".quant_state.bitsandbytes__nf4";
constexpr std::string_view kFp4State = ".quant_state.bitsandbytes__fp4";
constexpr const char* kQuantAux[] = {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"};

std::string group_digits(std::uint64_t v) {
  const std::string digits = std::to_string(v);
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

std::string human_bytes(std::uint64_t b) {
  const double gib = static_cast<double>(b) / (1024.0 * 1024.0 * 1024.0);
  if (gib >= 1.0) return fmt::format("{:.2f} GiB ({} bytes)", gib, group_digits(b));
  const double mib = static_cast<double>(b) / (1024.0 * 1024.0);
  if (mib >= 1.0) return fmt::format("{:.2f} MiB ({} bytes)", mib, group_digits(b));
  return fmt::format("{} bytes", group_digits(b));
}

std::string part_of(const std::string& canonical) {
  if (canonical.starts_with("visual.")) return "vision";
  if (canonical.starts_with("model.embed_tokens.")) return "embed_tokens";
  if (canonical.starts_with("lm_head.")) return "lm_head";
  if (canonical.starts_with("model.")) return "language_model";
  return "other";
}

// Index N of "<prefix>N." in a key, or -1.
long layer_index(const std::string& key, std::string_view prefix) {
  if (!key.starts_with(prefix)) return -1;
  const char* b = key.data() + prefix.size();
  const char* e = key.data() + key.size();
  long v = -1;
  auto [p, ec] = std::from_chars(b, e, v);
  if (ec != std::errc() || p == b || p == e || *p != '.') return -1;
  return v;
}

// Element count of a bitsandbytes-quantized weight, read from its quant_state JSON tensor.
std::uint64_t quantized_numel(const TensorStore& store, const std::string& state_name) {
  const TensorView v = store.view(state_name);
  if (v.dtype() != DType::kU8)
    fail(Errc::kInvalidInput, "tensor '{}': quant_state must be U8, is {}", state_name,
         dtype_name(v.dtype()));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(v.bytes.begin(), v.bytes.end());
  } catch (const nlohmann::json::exception& e) {
    fail(Errc::kInvalidInput, "tensor '{}': quant_state is not valid JSON: {}", state_name, e.what());
  }
  if (!j.is_object() || !j.contains("shape") || !j["shape"].is_array())
    fail(Errc::kInvalidInput, "tensor '{}': quant_state has no \"shape\" list", state_name);
  std::uint64_t n = 1;
  for (const auto& d : j["shape"]) {
    if (!d.is_number_unsigned())
      fail(Errc::kInvalidInput, "tensor '{}': quant_state shape is not non-negative integers", state_name);
    if (__builtin_mul_overflow(n, d.get<std::uint64_t>(), &n))
      fail(Errc::kInvalidInput, "tensor '{}': quant_state shape overflows", state_name);
  }
  return n;
}

nlohmann::json describe(const fs::path& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) fail(Errc::kNotFound, "{}: no such model directory", dir.string());
  if (!fs::is_directory(dir, ec)) fail(Errc::kInvalidInput, "{}: not a directory", dir.string());
  const ModelConfig config = ModelConfig::load(dir);
  const TensorStore store = TensorStore::open(dir);
  const std::vector<std::string> names = store.names();
  const KeyLayout layout = detect_key_layout(names);

  // Quantized weights: "<w>.quant_state.bitsandbytes__nf4" marks <w> as packed, with aux tensors.
  std::map<std::string, std::uint64_t> quantized;  // weight name -> real element count
  std::set<std::string> aux;
  for (const auto& n : names) {
    for (std::string_view suffix : {kNf4State, kFp4State}) {
      if (!n.ends_with(suffix)) continue;
      const std::string base = n.substr(0, n.size() - suffix.size());
      quantized[base] = quantized_numel(store, n);
      aux.insert(n);
      for (const char* a : kQuantAux)
        if (store.contains(base + a)) aux.insert(base + a);
    }
  }

  std::map<std::string, std::uint64_t> params{
      {"vision", 0}, {"language_model", 0}, {"embed_tokens", 0}, {"lm_head", 0}, {"other", 0}};
  std::map<std::string, nlohmann::json> dtypes;
  std::set<std::string> canonical_seen;
  std::set<long> llm_layers, vision_blocks;
  std::vector<std::string> warnings;
  std::uint64_t data_bytes = 0;
  bool mixed_layout = false;
  for (const auto& n : names) {
    const TensorView v = store.view(n);
    auto& d = dtypes[dtype_name(v.dtype())];
    if (d.is_null()) d = {{"tensors", 0}, {"elements", 0}, {"bytes", 0}};
    d["tensors"] = d["tensors"].get<std::uint64_t>() + 1;
    d["elements"] = d["elements"].get<std::uint64_t>() + static_cast<std::uint64_t>(v.numel());
    d["bytes"] = d["bytes"].get<std::uint64_t>() + v.bytes.size();
    data_bytes += v.bytes.size();
    if (aux.count(n)) continue;
    const std::string c = canonical_key(n);
    if (!canonical_seen.insert(c).second) mixed_layout = true;
    auto q = quantized.find(n);
    params[part_of(c)] += q != quantized.end() ? q->second : static_cast<std::uint64_t>(v.numel());
    if (long i = layer_index(c, "model.layers."); i >= 0) llm_layers.insert(i);
    if (long i = layer_index(c, "visual.blocks."); i >= 0) vision_blocks.insert(i);
  }
  std::uint64_t total = 0;
  for (const auto& [k, v] : params) total += v;
  std::uint64_t file_bytes = 0;
  for (const auto& f : store.files()) {
    const auto size = fs::file_size(f, ec);
    if (ec) fail(Errc::kIo, "{}: cannot read the size: {}", f.string(), ec.message());
    file_bytes += size;
  }

  const bool has_lm_head = canonical_seen.count("lm_head.weight") != 0;
  const bool tied = config.text.tie_word_embeddings;
  if (mixed_layout) warnings.push_back("the checkpoint holds the same tensor under both key layouts");
  if (!tied && !has_lm_head) warnings.push_back("tie_word_embeddings is false but lm_head.weight is missing");
  if (tied && has_lm_head)
    warnings.push_back("tie_word_embeddings is true; lm_head.weight is present and ignored");
  if (canonical_seen.count("model.embed_tokens.weight") == 0)
    warnings.push_back("model.embed_tokens.weight is missing");
  if (static_cast<long>(llm_layers.size()) != config.text.num_hidden_layers)
    warnings.push_back(fmt::format("{} decoder layers in the weights, config says num_hidden_layers {}",
                                   llm_layers.size(), config.text.num_hidden_layers));
  if (static_cast<long>(vision_blocks.size()) != config.vision.depth)
    warnings.push_back(fmt::format("{} vision blocks in the weights, config says depth {}",
                                   vision_blocks.size(), config.vision.depth));

  nlohmann::json j;
  j["model_dir"] = dir.string();
  j["config"] = config.summary();
  j["key_layout"] = key_layout_name(layout);
  j["tied_embeddings"] = tied;
  j["lm_head_present"] = has_lm_head;
  j["shards"] = store.files().size();
  j["sharded_index"] = store.has_index();
  j["tensors"] = names.size();
  j["bytes"] = file_bytes;
  j["data_bytes"] = data_bytes;
  j["parameters"] = params;
  j["parameters"]["total"] = total;
  j["quantized_weights"] = quantized.size();
  j["dtypes"] = dtypes;
  j["warnings"] = warnings;
  return j;
}

void print_text(const nlohmann::json& j) {
  const auto& c = j["config"];
  const auto& t = c["text"];
  const auto& v = c["vision"];
  const auto& p = j["parameters"];
  auto line = [](const char* key, const std::string& value) {
    std::printf("%-12s %s\n", key, value.c_str());
  };
  auto count = [&](const char* part) { return group_digits(p[part].get<std::uint64_t>()); };
  line("model", j["model_dir"].get<std::string>());
  line("config", fmt::format("{} ({} layout), dtype {}", c["model_type"].get<std::string>(),
                             c["config_layout"].get<std::string>(), c["dtype"].get<std::string>()));
  line("text",
       fmt::format("hidden {}, layers {}, heads {} (kv {}, head_dim {}), intermediate {}, vocab {}",
                   t["hidden_size"].get<int>(), t["num_hidden_layers"].get<int>(),
                   t["num_attention_heads"].get<int>(), t["num_key_value_heads"].get<int>(),
                   t["head_dim"].get<int>(), t["intermediate_size"].get<int>(), t["vocab_size"].get<int>()));
  line("", fmt::format("rope_theta {}, mrope_section {}, rms_norm_eps {}, max_positions {}",
                       t["rope_theta"].get<double>(), t["mrope_section"].dump(),
                       t["rms_norm_eps"].get<double>(), t["max_position_embeddings"].get<int>()));
  line("vision", fmt::format("depth {}, hidden {}, heads {} (head_dim {}), intermediate {}, out {}",
                             v["depth"].get<int>(), v["hidden_size"].get<int>(), v["num_heads"].get<int>(),
                             v["head_dim"].get<int>(), v["intermediate_size"].get<int>(),
                             v["out_hidden_size"].get<int>()));
  line("", fmt::format("patch {}x{} (temporal {}), merge {}, window {}, full attention in {}",
                       v["patch_size"].get<int>(), v["patch_size"].get<int>(),
                       v["temporal_patch_size"].get<int>(), v["spatial_merge_size"].get<int>(),
                       v["window_size"].get<int>(), v["fullatt_block_indexes"].dump()));
  line("keys", j["key_layout"].get<std::string>() == "legacy"
                   ? "legacy (model.* / visual.*)"
                   : "nested (model.language_model.* / model.visual.*)");
  line("files", fmt::format("{} shard{}{}, {}", j["shards"].get<std::size_t>(),
                            j["shards"].get<std::size_t>() == 1 ? "" : "s",
                            j["sharded_index"].get<bool>() ? " (index)" : "",
                            human_bytes(j["bytes"].get<std::uint64_t>())));
  line("tensors", group_digits(j["tensors"].get<std::uint64_t>()));
  line("parameters", fmt::format("total {}", count("total")));
  line("", fmt::format("vision {}, language model {}, embeddings {}, lm_head {}", count("vision"),
                       count("language_model"), count("embed_tokens"), count("lm_head")));
  if (p["other"].get<std::uint64_t>() > 0) line("", fmt::format("other {}", count("other")));
  if (j["quantized_weights"].get<std::size_t>() > 0)
    line("quantized",
         fmt::format("{} weights (4-bit, bitsandbytes layout)", j["quantized_weights"].get<std::size_t>()));
  std::string dt;
  for (const auto& [name, d] : j["dtypes"].items())
    dt += fmt::format("{}{} {} tensors / {}", dt.empty() ? "" : "; ", name, d["tensors"].get<std::uint64_t>(),
                      human_bytes(d["bytes"].get<std::uint64_t>()));
  line("dtypes", dt);
  line("tied", fmt::format("{} (lm_head.weight {})", j["tied_embeddings"].get<bool>() ? "yes" : "no",
                           j["lm_head_present"].get<bool>() ? "present" : "absent"));
  for (const auto& w : j["warnings"]) line("warning", w.get<std::string>());
}

}  // namespace

void add_info_command(CLI::App& app) {
  auto* cmd =
      app.add_subcommand("info", "Describe a checkpoint folder: config, key layout, parameters, dtypes");
  auto model = std::make_shared<std::string>();
  auto as_json = std::make_shared<bool>(false);
  cmd->add_option("--model", *model, "checkpoint folder (config.json + *.safetensors)")->required();
  cmd->add_flag("--json", *as_json, "print JSON");
  cmd->callback([model, as_json] {
    const nlohmann::json j = describe(fs::path(*model));
    if (*as_json)
      print_json(j);
    else
      print_text(j);
  });
}

}  // namespace mv::cli
