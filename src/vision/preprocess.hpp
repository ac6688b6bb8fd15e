// Qwen2.5-VL image preprocessing, equal to transformers' Qwen2VLImageProcessor (spec §3):
// smart_resize, bicubic antialiased resampling on uint8 (the reference's CPU path), rescale,
// normalize, patchify into [grid_t*gh*gw, 3*2*14*14] rows in the reference order.
#pragma once
#include <array>
#include <cstdint>
#include <filesystem>
#include <utility>
#include <vector>

#include "io/image.hpp"

namespace mv {

struct PreprocessConfig {
  std::int64_t min_pixels = 3136;
  std::int64_t max_pixels = 12845056;
  int patch_size = 14;
  int temporal_patch_size = 2;
  int merge_size = 2;
  std::array<float, 3> mean{0.48145466f, 0.4578275f, 0.40821073f};
  std::array<float, 3> std{0.26862954f, 0.26130258f, 0.27577711f};
  // <dir>/preprocessor_config.json when present (min_pixels/max_pixels or size.shortest_edge/longest_edge),
  // else the defaults above.
  static PreprocessConfig load(const std::filesystem::path& model_dir);
};

// (height, width), both multiples of factor. Throws kInvalidInput for aspect ratio > 200 or empty images.
std::pair<int, int> smart_resize(int height, int width, int factor, std::int64_t min_pixels, std::int64_t max_pixels);

// Antialiased bicubic resize of an RGB8 image, identical to the reference's uint8 path.
ImageRGB8 resize_bicubic(const ImageRGB8& src, int out_width, int out_height);

struct PixelValues {
  std::vector<float> data;  // [rows, cols] row-major
  std::int64_t rows = 0;
  std::int64_t cols = 0;    // 3 * temporal_patch_size * patch_size^2 = 1176
  std::array<std::int64_t, 3> grid_thw{0, 0, 0};
  std::int64_t merged_tokens(int merge_size = 2) const { return rows / (merge_size * merge_size); }
};

PixelValues preprocess_image(const ImageRGB8& image, const PreprocessConfig& config);

}  // namespace mv
