// Qwen2.5-VL weights: matrices stay mapped in their checkpoint dtype (F32/F16/BF16); the small vectors
// (norm weights, biases) are converted to fp32 at load. Every tensor's shape is checked against the
// config. Both key layouts are accepted (see canonical_key).
#pragma once
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "io/model_config.hpp"
#include "io/safetensors.hpp"
#include "model/qwen25vl/lora.hpp"
#include "ops/ops.hpp"
#include "quant/nf4_checkpoint.hpp"

namespace mv::qwen25vl {

struct Linear {
  ops::Matrix w;
  std::vector<float> bias;  // empty when the layer has none
  // Set when WeightOptions::quantize_on_device: the engine quantizes this 16/32-bit weight to NF4 itself.
  bool nf4_at_load = false;
  const float* b() const { return bias.empty() ? nullptr : bias.data(); }
};

struct VisionBlockWeights {
  std::vector<float> norm1, norm2;
  Linear qkv, proj, gate, up, down;
};

struct VisionWeights {
  ops::Matrix patch_embed;  // Conv3d [hidden, C, T, P, P] viewed as [hidden, C*T*P*P]
  std::vector<VisionBlockWeights> blocks;
  std::vector<float> ln_q;
  Linear mlp0, mlp2;
};

struct TextLayerWeights {
  std::vector<float> input_norm, post_norm;
  Linear q, k, v, o, gate, up, down;
};

struct TextWeights {
  ops::Matrix embed;  // [vocab, hidden]
  std::vector<TextLayerWeights> layers;
  std::vector<float> norm;
  ops::Matrix lm_head;  // lm_head.weight, or embed when the embeddings are tied
  bool tied = false;
};

// Checks the config values the engine depends on (head dims, M-RoPE sections, window size, ...);
// throws kInvalidInput / kUnsupported naming the field.
void validate_config(const ModelConfig& config, const std::string& where);

// How weights are held. NF4 weights in the checkpoint (bitsandbytes layout) are always used as they are.
struct WeightOptions {
  bool quantize_nf4 = false;      // quantize the 16/32-bit Linear weights to NF4 at load (load_in_4bit)
  std::vector<std::string> skip;  // modules kept as they are besides lm_head (bitsandbytes' matching)
  int threads = 0;                // threads for quantizing and merging at load (0 = all)
  // A LoRA adapter merged into the weights at load (W' = W + s·B·A, see lora.hpp); its modules_to_save
  // tensors replace the checkpoint's. Null: none.
  std::shared_ptr<const LoraAdapter> adapter;
  // With quantize_nf4: leave the weights as they are and mark them (Linear::nf4_at_load); the CUDA
  // engine quantizes them on the GPU while uploading.
  bool quantize_on_device = false;
};

class Weights {
 public:
  // Opens <dir> (safetensors shards) and binds every tensor the config needs.
  static std::unique_ptr<Weights> load(const std::filesystem::path& dir, const ModelConfig& config,
                                       const WeightOptions& options = {});

  TextWeights text;
  VisionWeights vision;
  std::string dtype_summary;  // e.g. "BF16" or "BF16+F32"
  std::uint64_t mapped_bytes = 0;
  std::size_t nf4_weights = 0;         // Linear weights held in NF4
  std::uint64_t nf4_owned_bytes = 0;   // bytes of NF4 weights quantized at load
  std::size_t lora_merged = 0;         // Linear weights with a LoRA adapter merged in
  std::size_t lora_merged_nf4 = 0;     // of those, NF4 weights of the checkpoint (re-quantized)
  std::size_t lora_saved = 0;          // tensors replaced by the adapter's modules_to_save
  std::uint64_t lora_owned_bytes = 0;  // bytes of merged 16/32-bit weight copies

 private:
  Weights() = default;
  TensorStore store_;
  std::vector<std::vector<float>> owned_;  // copies of tensors whose data was misaligned in the file
  std::vector<std::vector<std::uint16_t>> owned16_;            // merged BF16/F16 weights (LoRA)
  std::shared_ptr<const LoraAdapter> adapter_;                 // keeps modules_to_save tensors mapped
  std::vector<std::unique_ptr<quant::Nf4Weight>> nf4_mapped_;  // NF4 weights read from the checkpoint
  std::vector<std::unique_ptr<quant::Nf4Tensor>> nf4_owned_;   // NF4 weights quantized at load
  std::vector<std::unique_ptr<quant::Nf4View>> nf4_views_;     // views the matrices point to
  friend class WeightBinder;
};

}  // namespace mv::qwen25vl
