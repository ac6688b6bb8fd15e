// Qwen2.5-VL config.json (legacy and transformers-5 layouts) and checkpoint key layouts.
#pragma once
#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mv {

struct VisionConfig {  // defaults = transformers' class defaults (spec §1.2), filled where keys are absent
  int depth = 32;
  int hidden_size = 3584;  // class default; released checkpoints say 1280
  int intermediate_size = 3420;
  int num_heads = 16;
  int in_channels = 3;
  int patch_size = 14;
  int temporal_patch_size = 2;
  int spatial_merge_size = 2;
  int window_size = 112;
  int out_hidden_size = 3584;
  std::vector<int> fullatt_block_indexes{7, 15, 23, 31};
  int tokens_per_second = 4;
  std::string hidden_act = "silu";
  int head_dim() const { return hidden_size / num_heads; }
};

struct TextConfig {
  int hidden_size = 3584;
  int num_hidden_layers = 28;
  int num_attention_heads = 28;
  int num_key_value_heads = 4;
  int intermediate_size = 18944;
  int vocab_size = 152064;
  double rms_norm_eps = 1e-6;
  double rope_theta = 1000000.0;
  std::array<int, 3> mrope_section{16, 24, 24};
  bool tie_word_embeddings = false;
  int max_position_embeddings = 128000;
  std::string hidden_act = "silu";
  int head_dim() const { return hidden_size / num_attention_heads; }
};

struct ModelConfig {
  std::string model_type = "qwen2_5_vl";
  TextConfig text;
  VisionConfig vision;
  std::int32_t bos_token_id = 151643;
  std::vector<std::int32_t> eos_token_ids{151645, 151643};
  std::int32_t image_token_id = 151655;
  std::int32_t video_token_id = 151656;
  std::int32_t vision_start_token_id = 151652;
  std::int32_t vision_end_token_id = 151653;
  std::int32_t vision_token_id = 151654;
  std::string dtype = "bfloat16";  // torch_dtype / dtype
  bool v5_layout = false;          // true when the file nests text_config / uses rope_parameters
  nlohmann::json raw;

  static ModelConfig from_json(const nlohmann::json& j);  // throws kInvalidInput naming the bad field
  static ModelConfig load(const std::filesystem::path& model_dir);  // <dir>/config.json
  nlohmann::json summary() const;
};

enum class KeyLayout { kLegacy, kNested };  // model.* / visual.*  vs  model.language_model.* / model.visual.*
const char* key_layout_name(KeyLayout k) noexcept;
// Maps a checkpoint key of either layout to the legacy names used inside the engine
// ("model.layers.0...", "visual.blocks.0...", "lm_head.weight").
std::string canonical_key(const std::string& key);
KeyLayout detect_key_layout(const std::vector<std::string>& keys);

}  // namespace mv
