// NF4 checkpoints in bitsandbytes' serialized layout (spec: shared/reference/nf4-peft-spec.md §A.4):
// which Qwen2.5-VL modules are quantized, reading one quantized weight from a checkpoint, writing one,
// and converting a whole 16-bit checkpoint shard by shard (`medvision quantize`).
//
// Per quantized Linear `<m>` the checkpoint holds <m>.weight (U8 [ceil(n/2), 1]), <m>.weight.absmax (U8 [nb]
// with double quantization, else F32), <m>.weight.quant_map (F32 [16]), <m>.weight.nested_absmax
// (F32 [ceil(nb/256)]), <m>.weight.nested_quant_map (F32 [256]) and
// <m>.weight.quant_state.bitsandbytes__nf4 (U8, the JSON bytes); config.json carries quantization_config.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/safetensors.hpp"
#include "quant/nf4.hpp"

namespace mv::quant {

inline constexpr std::string_view kNf4StateSuffix = ".quant_state.bitsandbytes__nf4";
inline constexpr std::string_view kFp4StateSuffix = ".quant_state.bitsandbytes__fp4";

// True when `module` (legacy key layout without ".weight", e.g. "model.layers.3.mlp.up_proj") is one of
// Qwen2.5-VL's nn.Linear layers: attention and MLP projections of the language model and the vision
// blocks, the vision merger's MLP, and lm_head. Embeddings, norms and the Conv3d patch embedding are not.
bool is_linear_module(std::string_view module);

// bitsandbytes' llm_int8_skip_modules rule: skipped when the module's last component equals an entry,
// or its full name equals an entry or contains entry + ".". Tried on the legacy name and on transformers'
// nested name (model.language_model.*, model.visual.*).
bool matches_skip(std::string_view module, std::span<const std::string> skip);

// The modules left in 16 bits: lm_head always, plus the user's entries (comma-separated entries are split).
std::vector<std::string> effective_skip(std::span<const std::string> user_skip);

// is_linear_module && !matches_skip(effective skip list).
bool should_quantize(std::string_view module, std::span<const std::string> skip);

// One quantized weight read from a checkpoint: packed codes and 8-bit scales stay in the mapped file, the
// small float tables are copied (so their alignment in the file does not matter).
struct Nf4Weight {
  Nf4View view;
  std::vector<std::int64_t> shape;  // quant_state "shape"
  DType dtype = DType::kBF16;       // quant_state "dtype"
  std::vector<float> code, absmax, nested_absmax, nested_code;
};

// True when `store` holds `<weight_key>.quant_state.bitsandbytes__nf4`. Throws kUnsupported when it holds
// the FP4 variant instead.
bool has_nf4_weight(const TensorStore& store, const std::string& weight_key);
// Reads and validates every tensor of one quantized weight (names the tensor and the problem on error).
std::unique_ptr<Nf4Weight> load_nf4_weight(const TensorStore& store, const std::string& weight_key);

// Adds the six tensors of `t` under `weight_key` ("...q_proj.weight") to `w`; their bytes are produced
// from `t` when the file is written. Float tensors first (for alignment), see nf4_checkpoint.cpp.
void add_nf4_float_tensors(SafetensorsWriter& w, const std::string& weight_key,
                           std::shared_ptr<const Nf4Tensor> t);
void add_nf4_byte_tensors(SafetensorsWriter& w, const std::string& weight_key,
                          std::shared_ptr<const Nf4Tensor> t);

// config.json's quantization_config as transformers' BitsAndBytesConfig.to_dict writes it.
// skip: null when empty (transformers then applies its own default, lm_head), else the list.
nlohmann::ordered_json quantization_config_json(DType compute_dtype, std::span<const std::string> skip);

struct QuantizeCheckpointOptions {
  std::vector<std::string> skip;  // user's entries (lm_head is always kept in 16 bits)
  int threads = 0;                // 0: all hardware threads
  bool overwrite = false;         // allow writing into a non-empty output folder
  // Quantizes one tensor (data, dtype, shape) when set, e.g. on the GPU (CudaQuantizer); must give the
  // same result as quantize_nf4 with the default options. Unset: quantize_nf4 on the CPU threads.
  std::function<Nf4Tensor(const void*, DType, const std::vector<std::int64_t>&)> quantizer;
};

struct QuantizeCheckpointInfo {
  std::size_t quantized = 0;  // weights quantized
  std::size_t kept = 0;       // tensors copied unchanged
  std::uint64_t input_bytes = 0, output_bytes = 0;
  std::uint64_t quantized_params = 0;
  std::vector<std::filesystem::path> files;  // weight files written
  double seconds = 0;
  nlohmann::json to_json() const;
};

// Reads <model_dir> (config.json + safetensors, 16/32-bit) shard by shard and writes an NF4 checkpoint with
// the same shard names into out_dir, plus config.json with quantization_config and every other file of
// model_dir (tokenizer, processor, generation config). Shows progress.
QuantizeCheckpointInfo quantize_checkpoint(const std::filesystem::path& model_dir,
                                           const std::filesystem::path& out_dir,
                                           const QuantizeCheckpointOptions& options);

}  // namespace mv::quant
