#include "quant/nf4_checkpoint.hpp"

#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <regex>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "core/progress.hpp"
#include "core/thread_pool.hpp"
#include "io/model_config.hpp"

namespace mv::quant {

namespace {

std::string legacy_name(std::string_view module) { return canonical_key(std::string(module)); }

// transformers' in-memory name of a legacy module name (model.layers.* -> model.language_model.layers.*).
std::string nested_name(const std::string& legacy) {
  if (legacy.starts_with("visual.")) return "model." + legacy;
  if (legacy.starts_with("model.")) return "model.language_model." + legacy.substr(6);
  return legacy;
}

bool matches_one(std::string_view name, std::string_view entry) {
  if (entry.empty()) return false;
  const auto dot = name.rfind('.');
  const std::string_view last = dot == std::string_view::npos ? name : name.substr(dot + 1);
  if (last == entry || name == entry) return true;
  return name.find(std::string(entry) + ".") != std::string_view::npos;
}

std::string shape_str(const std::vector<std::int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

template <typename T>
void put_bytes(std::span<std::uint8_t> out, const T* src, std::size_t count) {
  MV_CHECK(out.size() == count * sizeof(T), "NF4 writer: {} bytes for {} items", out.size(), count);
  if (count) std::memcpy(out.data(), src, out.size());
}

}  // namespace

bool is_linear_module(std::string_view module) {
  static const std::regex re(
      R"(lm_head|model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)|)"
      R"(visual\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(gate|up|down)_proj)|visual\.merger\.mlp\.(0|2))");
  const std::string legacy = legacy_name(module);
  return std::regex_match(legacy, re);
}

bool matches_skip(std::string_view module, std::span<const std::string> skip) {
  const std::string legacy = legacy_name(module), nested = nested_name(legacy);
  for (const auto& e : skip)
    if (matches_one(module, e) || matches_one(legacy, e) || matches_one(nested, e)) return true;
  return false;
}

std::vector<std::string> effective_skip(std::span<const std::string> user_skip) {
  std::vector<std::string> out{"lm_head"};
  for (const auto& entry : user_skip) {
    std::size_t start = 0;
    while (start <= entry.size()) {
      const auto comma = entry.find(',', start);
      std::string part = entry.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      part.erase(0, part.find_first_not_of(" \t"));
      part.erase(part.find_last_not_of(" \t") + 1);
      if (part.empty()) {
        fail(Errc::kUsage, "--skip: empty module name in '{}'", entry);
      }
      if (std::find(out.begin(), out.end(), part) == out.end()) out.push_back(part);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  return out;
}

bool should_quantize(std::string_view module, std::span<const std::string> skip) {
  return is_linear_module(module) && !matches_skip(module, skip);
}

// ---- reading -------------------------------------------------------------------------------------

bool has_nf4_weight(const TensorStore& store, const std::string& weight_key) {
  if (store.contains(weight_key + std::string(kFp4StateSuffix)))
    fail(Errc::kUnsupported, "tensor '{}' is quantized to FP4; only NF4 is supported", weight_key);
  return store.contains(weight_key + std::string(kNf4StateSuffix));
}

std::unique_ptr<Nf4Weight> load_nf4_weight(const TensorStore& store, const std::string& key) {
  auto w = std::make_unique<Nf4Weight>();
  auto bad = [&](const std::string& what) -> void {
    fail(Errc::kInvalidInput, "NF4 weight '{}': {}", key, what);
  };
  auto get = [&](const std::string& suffix, DType dtype) {
    const std::string name = key + suffix;
    if (!store.contains(name)) bad(fmt::format("tensor '{}' is missing", name));
    TensorView v = store.view(name);
    if (v.dtype() != dtype)
      bad(fmt::format("tensor '{}' has dtype {}, expected {}", name, dtype_name(v.dtype()),
                      dtype_name(dtype)));
    return v;
  };

  const TensorView state = get(std::string(kNf4StateSuffix), DType::kU8);
  nlohmann::json js;
  try {
    js = nlohmann::json::parse(state.bytes.begin(), state.bytes.end());
  } catch (const nlohmann::json::exception& e) {
    bad(fmt::format("quant_state is not valid JSON: {}", e.what()));
  }
  std::int64_t blocksize = 0, nested_blocksize = 0;
  double offset = 0;
  bool nested = false;
  try {
    if (js.value("quant_type", std::string()) != "nf4")
      fail(Errc::kUnsupported, "NF4 weight '{}': quant_type '{}' is not supported", key,
           js.value("quant_type", std::string("?")));
    blocksize = js.at("blocksize").get<std::int64_t>();
    w->dtype = dtype_from_torch_name(js.at("dtype").get<std::string>());
    w->shape = js.at("shape").get<std::vector<std::int64_t>>();
    nested = js.contains("nested_blocksize");
    if (nested) {
      nested_blocksize = js.at("nested_blocksize").get<std::int64_t>();
      offset = js.at("nested_offset").get<double>();
      if (js.value("nested_dtype", std::string("float32")) != "float32")
        bad(fmt::format("nested_dtype '{}' is not float32", js.value("nested_dtype", std::string())));
    }
  } catch (const nlohmann::json::exception& e) {
    bad(fmt::format("quant_state field missing or of the wrong type: {}", e.what()));
  }
  if (blocksize < 2 || blocksize > 4096 || (blocksize & (blocksize - 1)))
    bad(fmt::format("blocksize {} is not a power of two in [2, 4096]", blocksize));
  if (nested && (nested_blocksize < 1 || nested_blocksize > (1 << 20)))
    bad(fmt::format("nested_blocksize {} is out of range", nested_blocksize));
  std::int64_t n = 1;
  for (auto d : w->shape) {
    if (d < 0 || (d > 0 && n > (std::int64_t{1} << 50) / d)) bad("quant_state shape is out of range");
    n *= d;
  }
  const std::int64_t nb = (n + blocksize - 1) / blocksize;

  const TensorView packed = get("", DType::kU8);
  if (packed.numel() != (n + 1) / 2)
    bad(fmt::format("packed weight has {} bytes, expected {} for shape {}", packed.numel(), (n + 1) / 2,
                    shape_str(w->shape)));
  const TensorView code = get(".quant_map", DType::kF32);
  if (code.numel() != 16) bad(fmt::format("quant_map has {} entries, expected 16", code.numel()));
  w->code = to_f32(code);

  Nf4View& v = w->view;
  v.packed = packed.bytes.data();
  v.numel = n;
  v.blocksize = blocksize;
  v.code = w->code.data();
  if (nested) {
    const TensorView q = get(".absmax", DType::kU8);
    if (q.numel() != nb) bad(fmt::format("absmax has {} entries, expected {}", q.numel(), nb));
    const TensorView s = get(".nested_absmax", DType::kF32);
    const std::int64_t nb2 = (nb + nested_blocksize - 1) / nested_blocksize;
    if (s.numel() != nb2) bad(fmt::format("nested_absmax has {} entries, expected {}", s.numel(), nb2));
    const TensorView nc = get(".nested_quant_map", DType::kF32);
    if (nc.numel() != 256) bad(fmt::format("nested_quant_map has {} entries, expected 256", nc.numel()));
    w->nested_absmax = to_f32(s);
    w->nested_code = to_f32(nc);
    v.absmax_q = q.bytes.data();
    v.nested_absmax = w->nested_absmax.data();
    v.nested_code = w->nested_code.data();
    v.nested_blocksize = nested_blocksize;
    v.offset = static_cast<float>(offset);
  } else {
    const TensorView a = get(".absmax", DType::kF32);
    if (a.numel() != nb) bad(fmt::format("absmax has {} entries, expected {}", a.numel(), nb));
    w->absmax = to_f32(a);
    v.absmax = w->absmax.data();
  }
  return w;
}

// ---- writing -------------------------------------------------------------------------------------

void add_nf4_float_tensors(SafetensorsWriter& w, const std::string& key, std::shared_ptr<const Nf4Tensor> t) {
  w.add(key + ".quant_map", DType::kF32, {16},
        [t](std::span<std::uint8_t> out) { put_bytes(out, t->code.data(), 16); });
  if (t->nested) {
    w.add(key + ".nested_absmax", DType::kF32, {static_cast<std::int64_t>(t->nested_absmax.size())},
          [t](std::span<std::uint8_t> out) {
            put_bytes(out, t->nested_absmax.data(), t->nested_absmax.size());
          });
    w.add(key + ".nested_quant_map", DType::kF32, {256},
          [t](std::span<std::uint8_t> out) { put_bytes(out, t->nested_code.data(), 256); });
  } else {
    w.add(key + ".absmax", DType::kF32, {static_cast<std::int64_t>(t->absmax.size())},
          [t](std::span<std::uint8_t> out) { put_bytes(out, t->absmax.data(), t->absmax.size()); });
  }
}

void add_nf4_byte_tensors(SafetensorsWriter& w, const std::string& key, std::shared_ptr<const Nf4Tensor> t) {
  w.add(key, DType::kU8, {static_cast<std::int64_t>(t->packed.size()), 1},
        [t](std::span<std::uint8_t> out) { put_bytes(out, t->packed.data(), t->packed.size()); });
  if (t->nested)
    w.add(key + ".absmax", DType::kU8, {static_cast<std::int64_t>(t->absmax_q.size())},
          [t](std::span<std::uint8_t> out) { put_bytes(out, t->absmax_q.data(), t->absmax_q.size()); });
  auto json = std::make_shared<const std::string>(t->quant_state_json());
  w.add(key + std::string(kNf4StateSuffix), DType::kU8, {static_cast<std::int64_t>(json->size())},
        [json](std::span<std::uint8_t> out) { put_bytes(out, json->data(), json->size()); });
}

nlohmann::ordered_json quantization_config_json(DType compute_dtype, std::span<const std::string> skip) {
  nlohmann::ordered_json q = nlohmann::ordered_json::object();
  q["_load_in_4bit"] = true;
  q["_load_in_8bit"] = false;
  q["bnb_4bit_compute_dtype"] = torch_dtype_name(compute_dtype);
  q["bnb_4bit_quant_storage"] = "uint8";
  q["bnb_4bit_quant_type"] = "nf4";
  q["bnb_4bit_use_double_quant"] = true;
  q["llm_int8_enable_fp32_cpu_offload"] = false;
  q["llm_int8_has_fp16_weight"] = false;
  if (skip.empty()) {
    q["llm_int8_skip_modules"] = nullptr;
  } else {
    q["llm_int8_skip_modules"] = std::vector<std::string>(skip.begin(), skip.end());
  }
  q["llm_int8_threshold"] = 6.0;
  q["load_in_4bit"] = true;
  q["load_in_8bit"] = false;
  q["quant_method"] = "bitsandbytes";
  return q;
}

nlohmann::json QuantizeCheckpointInfo::to_json() const {
  std::vector<std::string> f;
  for (const auto& p : files) f.push_back(p.string());
  return {{"quantized_weights", quantized},
          {"kept_tensors", kept},
          {"quantized_params", quantized_params},
          {"input_bytes", input_bytes},
          {"output_bytes", output_bytes},
          {"files", f},
          {"seconds", seconds}};
}

QuantizeCheckpointInfo quantize_checkpoint(const fs::path& model_dir, const fs::path& out_dir,
                                           const QuantizeCheckpointOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  QuantizeCheckpointInfo info;
  const fs::path config_path = model_dir / "config.json";
  if (!fs::is_regular_file(config_path))
    fail(Errc::kNotFound, "{}: no config.json (expected a Hugging Face model folder)", model_dir.string());
  nlohmann::ordered_json config;
  try {
    config = nlohmann::ordered_json::parse(read_file(config_path));
  } catch (const nlohmann::json::exception& e) {
    fail(Errc::kInvalidInput, "{}: not valid JSON: {}", config_path.string(), e.what());
  }
  if (!config.is_object()) fail(Errc::kInvalidInput, "{}: not a JSON object", config_path.string());
  if (config.contains("quantization_config"))
    fail(Errc::kInvalidInput, "{}: the checkpoint is already quantized (quantization_config is present)",
         config_path.string());
  (void)ModelConfig::load(model_dir);  // the engine's validation of the architecture fields

  std::error_code ec;
  if (fs::exists(out_dir, ec)) {
    if (fs::equivalent(out_dir, model_dir, ec))
      fail(Errc::kUsage, "--out must differ from --model ({})", out_dir.string());
    if (!fs::is_directory(out_dir))
      fail(Errc::kUsage, "--out {} exists and is not a folder", out_dir.string());
    if (!options.overwrite && !fs::is_empty(out_dir))
      fail(Errc::kUsage, "--out {} is not empty (pass --overwrite to replace its files)", out_dir.string());
  }
  fs::create_directories(out_dir, ec);
  if (ec) fail(Errc::kIo, "{}: cannot create the folder: {}", out_dir.string(), ec.message());

  const std::vector<std::string> skip = effective_skip(options.skip);
  const TensorStore store = TensorStore::open(model_dir);
  for (const auto& name : store.names())
    if (name.ends_with(kNf4StateSuffix) || name.ends_with(kFp4StateSuffix))
      fail(Errc::kInvalidInput, "{}: tensor '{}' is already quantized", model_dir.string(), name);
  const std::vector<fs::path> shards = store.files();
  std::uint64_t total = 0;
  for (const auto& p : shards) total += fs::file_size(p);
  info.input_bytes = total;

  ThreadPool pool(options.threads);
  Progress progress("quantize", total, "B");
  std::map<std::string, std::string> weight_map;
  std::uint64_t tensor_bytes = 0;
  DType compute = DType::kBF16;
  bool compute_set = false;

  for (const auto& shard_path : shards) {
    SafetensorsFile in(shard_path);
    std::vector<const TensorInfo*> kept;
    std::vector<std::pair<std::string, std::shared_ptr<const Nf4Tensor>>> quantized;
    for (const auto& t : in.tensors()) {
      const bool candidate = t.name.ends_with(".weight") && t.shape.size() == 2 &&
                             (t.dtype == DType::kF32 || t.dtype == DType::kF16 || t.dtype == DType::kBF16);
      const std::string module = t.name.substr(0, t.name.size() - (candidate ? 7 : 0));
      if (candidate && should_quantize(module, skip)) {
        const TensorView v = in.view(t);
        auto q = std::make_shared<Nf4Tensor>(options.quantizer
                                                 ? options.quantizer(v.bytes.data(), t.dtype, t.shape)
                                                 : quantize_nf4(v.bytes.data(), t.dtype, t.shape, {}, &pool));
        if (!compute_set) {
          compute = t.dtype;
          compute_set = true;
        }
        info.quantized_params += static_cast<std::uint64_t>(q->numel);
        quantized.emplace_back(t.name, std::move(q));
        ++info.quantized;
      } else {
        kept.push_back(&t);
        ++info.kept;
      }
      progress.advance(t.nbytes());
    }

    // Tensors ordered by element size so that every float tensor stays aligned in the file.
    SafetensorsWriter w;
    for (const auto& [k, v] : in.metadata()) w.set_metadata(k, v);
    if (!in.metadata().count("format")) w.set_metadata("format", "pt");
    auto add_kept = [&](std::size_t esize) {
      for (const TensorInfo* t : kept) {
        if (dtype_size(t->dtype) != esize) continue;
        const TensorView v = in.view(*t);
        w.add(t->name, t->dtype, t->shape,
              [v](std::span<std::uint8_t> out) { put_bytes(out, v.bytes.data(), v.bytes.size()); });
      }
    };
    add_kept(8);
    add_kept(4);
    for (const auto& [key, q] : quantized) add_nf4_float_tensors(w, key, q);
    add_kept(2);
    add_kept(1);
    for (const auto& [key, q] : quantized) add_nf4_byte_tensors(w, key, q);

    const fs::path out_path = out_dir / shard_path.filename();
    w.write(out_path);
    SafetensorsFile written(out_path);  // re-open: validates what was written and lists its tensors
    for (const auto& t : written.tensors()) {
      weight_map[t.name] = out_path.filename().string();
      tensor_bytes += t.nbytes();
    }
    info.output_bytes += fs::file_size(out_path);
    info.files.push_back(out_path);
  }
  progress.finish();

  if (store.has_index()) {
    nlohmann::ordered_json index = nlohmann::ordered_json::object();
    index["metadata"] = {{"total_size", tensor_bytes}};
    nlohmann::ordered_json wm = nlohmann::ordered_json::object();
    for (const auto& [k, v] : weight_map) wm[k] = v;
    index["weight_map"] = std::move(wm);
    write_file(out_dir / "model.safetensors.index.json", index.dump(2) + "\n");
  }

  if (config.contains("torch_dtype") && config["torch_dtype"].is_string()) {
    compute = dtype_from_torch_name(config["torch_dtype"].get<std::string>());
  } else if (config.contains("dtype") && config["dtype"].is_string()) {
    compute = dtype_from_torch_name(config["dtype"].get<std::string>());
  }
  std::vector<std::string> recorded;
  if (!options.skip.empty()) recorded = skip;  // else null: transformers' default (lm_head)
  config["quantization_config"] = quantization_config_json(compute, recorded);
  write_file(out_dir / "config.json", config.dump(2) + "\n");

  // Tokenizer, processor, chat template, generation config: every other file of the folder.
  for (const auto& entry : fs::directory_iterator(model_dir)) {
    if (!entry.is_regular_file()) continue;
    const std::string name = entry.path().filename().string();
    if (name == "config.json" || name == "model.safetensors.index.json" || name.ends_with(".safetensors"))
      continue;
    fs::copy_file(entry.path(), out_dir / name, fs::copy_options::overwrite_existing, ec);
    if (ec)
      fail(Errc::kIo, "cannot copy {} to {}: {}", entry.path().string(), out_dir.string(), ec.message());
  }
  info.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  spdlog::info("quantize: {} weights to NF4, {} tensors kept, {} -> {} in {:.1f} s", info.quantized,
               info.kept, format_bytes(static_cast<double>(info.input_bytes)),
               format_bytes(static_cast<double>(info.output_bytes)), info.seconds);
  return info;
}

}  // namespace mv::quant
