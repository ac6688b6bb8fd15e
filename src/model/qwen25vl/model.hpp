// Qwen2.5-VL on the CPU (fp32 compute from bf16/f16/f32 weights): the reference engine every faster
// path is checked against. Spec: shared/reference/qwen25vl-spec.md §4–5.
#pragma once
#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "io/model_config.hpp"
#include "vision/preprocess.hpp"

namespace mv::qwen25vl {

struct LoadOptions {
  int threads = 0;                         // 0 = all hardware threads
  std::int64_t prefill_chunk = 256;        // prompt rows per forward pass (bounds activation memory)
  std::string quantize;                    // "nf4": quantize 16-bit Linear weights at load ("" = as stored)
  std::vector<std::string> quantize_skip;  // modules kept unquantized besides lm_head (e.g. "visual")
  // "cpu", "cuda" (= cuda:0), "cuda:N", or "auto" (cuda:0 when a GPU is usable, else cpu).
  std::string device = "cpu";
  // A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors), merged into the weights
  // at load (see lora.hpp). Empty: none.
  std::filesystem::path adapter;
};

// Key/value cache and position bookkeeping of one sequence. Sized at creation; no allocation while
// decoding. M-RoPE: after the prompt, text position of token n is n + rope_delta (spec §5.4).
class Session {
 public:
  virtual ~Session() = default;
  virtual std::int64_t length() const = 0;    // tokens in the cache
  virtual std::int64_t capacity() const = 0;  // max tokens
  virtual std::int64_t rope_delta() const = 0;
  virtual void reset() = 0;
};

// Position ids [3][n] (temporal, height, width) for a prompt and its images, plus the rope delta,
// as transformers' get_rope_index does for images (spec §5.4).
struct RopeIndex {
  std::vector<std::int64_t> t, h, w;
  std::int64_t rope_delta = 0;
};
RopeIndex get_rope_index(const ModelConfig& config, std::span<const std::int32_t> ids,
                         std::span<const std::array<std::int64_t, 3>> image_grids_thw);

// Image features as Model::encode_images_resident returns them: on the host (CPU engine), or kept on the
// device of the CUDA engine that computed them, so that its prefill reads them in place instead of
// through host memory (a 1692-token page's features are 24 MB).
class ImageFeatures {
 public:
  virtual ~ImageFeatures() = default;
  virtual std::int64_t rows() const = 0;
  // [rows, out_hidden_size] row-major on the host; a device copy is downloaded on the first call.
  virtual std::span<const float> host() const = 0;
};

class Model {
 public:
  static std::unique_ptr<Model> load(const std::filesystem::path& model_dir, const LoadOptions& options = {});
  virtual ~Model() = default;
  virtual const ModelConfig& config() const = 0;
  virtual std::unique_ptr<Session> new_session(std::int64_t max_tokens) const = 0;

  // Vision tower over several images; returns the merged features of all images concatenated in order,
  // [sum_k grid_t*gh*gw/4, out_hidden_size] row-major.
  virtual std::vector<float> encode_images(std::span<const PixelValues> images) = 0;
  // The same, left where the engine computed them (for prefill_with_features below).
  virtual std::unique_ptr<ImageFeatures> encode_images_resident(std::span<const PixelValues> images);

  // Runs the prompt (ids may contain image-pad tokens; their count must equal the images' merged
  // tokens) and appends it to the session's cache. Writes the logits of the last position
  // (config().text.vocab_size floats).
  virtual void prefill(Session& session, std::span<const std::int32_t> ids,
                       std::span<const PixelValues> images, std::span<float> logits) = 0;
  // Same, with image features already computed by encode_images.
  virtual void prefill_with_features(Session& session, std::span<const std::int32_t> ids,
                                     std::span<const std::array<std::int64_t, 3>> image_grids_thw,
                                     std::span<const float> image_features, std::span<float> logits) = 0;
  // Same, with features from encode_images_resident (of this model or another; the default reads host()).
  virtual void prefill_with_features(Session& session, std::span<const std::int32_t> ids,
                                     std::span<const std::array<std::int64_t, 3>> image_grids_thw,
                                     const ImageFeatures& image_features, std::span<float> logits);
  // One token: appends it to the cache and writes the next-token logits.
  virtual void decode(Session& session, std::int32_t token, std::span<float> logits) = 0;
  // One decode step for several sequences: tokens[i] is appended to sessions[i] (all distinct, all made
  // by this model) and the next-token logits of sequence i go to logits[i·vocab, (i+1)·vocab). Engines
  // that can batch override it (one pass over the weights for every sequence); the default decodes the
  // sequences one after the other.
  virtual void decode_batch(std::span<Session* const> sessions, std::span<const std::int32_t> tokens,
                            std::span<float> logits);
  // The same step for greedy decoding: writes the argmax of sequence i's next-token logits to next[i]
  // (first index on ties, as torch.argmax; throws kInternal when a row is NaN or all -inf, as the
  // sampler does). Engines that pick on the device override it so that only the token ids leave it; the
  // default runs decode_batch and picks on the host.
  virtual void decode_batch_greedy(std::span<Session* const> sessions, std::span<const std::int32_t> tokens,
                                   std::span<std::int32_t> next);
  // True when decode_batch_greedy picks on the device: the generator then uses it for greedy decoding
  // without a repetition penalty instead of downloading the logits.
  virtual bool greedy_on_device() const { return false; }
};

// True when this build has the CUDA engine and a usable GPU is present.
bool cuda_available();
// LoadOptions::device → GPU index, or -1 for the CPU ("auto" picks GPU 0 when cuda_available()).
// Throws kUsage for an unknown name and kUnsupported for cuda in a build without CUDA.
int parse_device(const std::string& device);
class Weights;
// The CUDA engine over weights already bound (they are uploaded; the caller may drop them after).
std::unique_ptr<Model> load_cuda_model(const ModelConfig& config, const Weights& weights, int device);

// Device memory of a model on the CUDA engine (bytes); nullopt for the CPU engine.
struct GpuMemory {
  std::uint64_t allocated = 0;       // held by the engine now (weights, caches, workspaces)
  std::uint64_t peak_allocated = 0;  // highest `allocated` since load or reset_gpu_peak
  std::uint64_t weights = 0;
  std::uint64_t device_used = 0;  // total − free as the driver reports it (the CUDA context included)
  std::uint64_t device_total = 0;
};
std::optional<GpuMemory> gpu_memory(const Model& model);
void reset_gpu_peak(const Model& model);

}  // namespace mv::qwen25vl
