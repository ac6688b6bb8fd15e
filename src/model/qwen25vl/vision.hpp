// Qwen2.5-VL vision tower (spec §4): patch embedding, 2-D rotary, window partition and ordering,
// window/full-attention blocks, patch merger, reverse ordering.
#pragma once
#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "core/thread_pool.hpp"
#include "io/model_config.hpp"
#include "model/qwen25vl/weights.hpp"
#include "vision/preprocess.hpp"

namespace mv::qwen25vl {

using Grid = std::array<std::int64_t, 3>;  // (t, h, w) in patches

// Checks grids against the config (positive, h and w multiples of the merge size, sizes in bounds);
// throws kInvalidInput naming the image. Returns the total number of patches.
std::int64_t check_grids(const VisionConfig& config, std::span<const Grid> grids);

// Checks each image's pixel rows against its grid and the config (row width, row count, buffer size),
// appends the grids to `grids`, and returns the total number of pixel rows (patches). Throws
// kInvalidInput naming the image.
std::int64_t check_pixel_values(const VisionConfig& config, std::span<const PixelValues> images,
                                std::vector<Grid>& grids);

// Index bookkeeping of one ViT call over several images (spec §4.3).
struct VisionLayout {
  // Merged-token ids (raster t, row, col; offset by the tokens of earlier images) in window order.
  std::vector<std::int64_t> window_index;
  // Window boundaries in patches, in window order, without empty windows: [0, ..., N].
  std::vector<std::int64_t> cu_window_seqlens;
  // Full-attention segments in patches: one per frame of each image: [0, ..., N].
  std::vector<std::int64_t> cu_seqlens;
};
VisionLayout vision_layout(const VisionConfig& config, std::span<const Grid> grids);

// (row, col) patch coordinates of every patch row of pixel_values, in its order (merge blocks of
// spatial_merge_size² consecutive rows), repeated per frame.
std::vector<std::array<std::int64_t, 2>> vision_patch_positions(const VisionConfig& config,
                                                                std::span<const Grid> grids);

// Rotary tables for patch positions: [n][head_dim/2]; the first head_dim/4 angles follow the row, the
// others the column, with inv_freq[i] = 10000^(−i/(head_dim/4)).
void vision_rotary_tables(const VisionConfig& config, std::span<const std::array<std::int64_t, 2>> positions,
                          float* cos, float* sin);

class VisionEncoder {
 public:
  VisionEncoder(const VisionConfig& config, const VisionWeights& weights) : config_(config), w_(weights) {}
  // pixels: [rows, in_channels·temporal_patch_size·patch_size²] for all images (rows = Σ t·h·w).
  // Returns the merged features in raster order: [rows / merge², out_hidden_size].
  std::vector<float> forward(const float* pixels, std::int64_t rows, std::span<const Grid> grids,
                             ThreadPool* pool) const;

 private:
  const VisionConfig& config_;
  const VisionWeights& w_;
};

}  // namespace mv::qwen25vl
