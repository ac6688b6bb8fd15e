// Random-initialised Qwen2.5-VL checkpoints, laid out exactly as published ones (legacy key names,
// config.json, tokenizer and processor files), so that the engine, benchmarks and parity tests with
// transformers can run without downloading weights. Weights are a pure function of (seed, tensor name,
// element index) through integer arithmetic, so every machine writes the same bytes.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "io/model_config.hpp"
#include "io/safetensors.hpp"

namespace mv::qwen25vl {

// How a tensor is initialised: weights ~ U(-a, a) with standard deviation `init_std` (0.02 by default, as
// transformers initialises), biases ~ U(-init_std, init_std), RMSNorm weights ~ 1 + U(-0.05, 0.05).
enum class InitKind { kWeight, kBias, kNorm };

struct TensorSpec {
  std::string name;  // legacy checkpoint key
  std::vector<std::int64_t> shape;
  InitKind init = InitKind::kWeight;
  std::int64_t numel() const;
};

// Every tensor of a checkpoint for `config`, in the order they are written (language model, then
// lm_head unless tied, then the vision tower). Throws kInvalidInput for inconsistent shapes.
std::vector<TensorSpec> checkpoint_tensors(const ModelConfig& config);

// "3b", "7b" (the released shapes), "tiny" (a small model with the real vocabulary), or a path to a
// config.json (legacy or nested layout). Returns the parsed config.
ModelConfig random_checkpoint_config(std::string_view preset_or_path);

// config.json for `config` as transformers 5.x loads it: nested text_config and vision_config, text
// fields repeated at the top level (as transformers 4.5x writes them), token ids.
nlohmann::json hf_config_json(const ModelConfig& config, DType dtype);

struct RandomCheckpointOptions {
  std::uint64_t seed = 0;
  DType dtype = DType::kBF16;                        // kBF16, kF16 or kF32
  std::uint64_t max_shard_bytes = 4'000'000'000ull;  // larger checkpoints are sharded with an index
  std::filesystem::path tokenizer_json;              // empty: mv::default_tokenizer_json()
  int threads = 0;                                   // 0: all hardware threads
  // Standard deviation of the weights. Tiny parity models use a larger one so that their layers, not
  // the embedding alone, decide the next token.
  double init_std = 0.02;
};

struct RandomCheckpointInfo {
  std::vector<std::filesystem::path> files;  // every file written
  std::vector<std::filesystem::path> weight_files;
  std::uint64_t parameters = 0;
  std::uint64_t weight_bytes = 0;
  std::size_t tensors = 0;
};

// Writes config.json, model.safetensors (or model-0000K-of-0000N.safetensors + index), tokenizer.json,
// tokenizer_config.json, chat_template.json, preprocessor_config.json and generation_config.json into
// `out_dir` (created when missing; earlier weight files there are removed). Shows progress.
RandomCheckpointInfo write_random_checkpoint(const ModelConfig& config, const std::filesystem::path& out_dir,
                                             const RandomCheckpointOptions& options);

// Value of element `index` of a tensor, before conversion to the storage dtype (exposed for tests).
float random_init_value(std::uint64_t seed, std::string_view tensor_name, InitKind init, std::uint64_t index,
                        double init_std = 0.02);

}  // namespace mv::qwen25vl
