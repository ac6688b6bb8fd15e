// Qwen2.5-VL image preprocessing, equal to transformers' Qwen2VLImageProcessor (spec §3):
// smart_resize, bicubic antialiased resampling on uint8 (the reference's CPU path), rescale,
// normalize, patchify into [grid_t*gh*gw, 3*2*14*14] rows in the reference order.
//
// The reference is transformers 5.17's default `Qwen2VLImageProcessor`, i.e. the TorchvisionBackend:
// PIL image -> convert("RGB") -> uint8 CHW tensor -> torchvision resize (BICUBIC, antialias=True), which on
// CPU runs torch's native uint8 antialiased bicubic (int16 fixed-point weights, horizontal pass then
// vertical pass, uint8 in between) -> float32 (x - mean*255) / (std*255) -> patchify. Our output equals it
// bit for bit on the fixtures in tests/fixtures/preprocess (see tools/reference/make_preprocess_fixtures.py).
#pragma once
#include <array>
#include <cstdint>
#include <filesystem>
#include <utility>
#include <vector>

#include "io/image.hpp"

namespace mv {

class ThreadPool;

struct PreprocessConfig {
  // Defaults are what transformers uses when a model folder has NO preprocessor_config.json: the class
  // defaults of Qwen2VLImageProcessor, size = {shortest_edge: 56*56, longest_edge: 28*28*1280}. Note that
  // max_pixels is then 1 003 520 (1280 merged tokens), NOT the 12 845 056 of the released
  // preprocessor_config.json of every Qwen2.5-VL checkpoint (spec §3.1); load() reads that file when present.
  std::int64_t min_pixels = 56 * 56;         // 3136 (size.shortest_edge)
  std::int64_t max_pixels = 28 * 28 * 1280;  // 1003520 (size.longest_edge)
  int patch_size = 14;
  int temporal_patch_size = 2;
  int merge_size = 2;
  double rescale_factor = 1.0 / 255.0;
  std::array<float, 3> mean{0.48145466f, 0.4578275f, 0.40821073f};  // OpenAI CLIP constants
  std::array<float, 3> std{0.26862954f, 0.26130258f, 0.27577711f};

  // Reads <model_dir>/preprocessor_config.json when present (model_dir may also be that file itself), as
  // transformers' from_pretrained + __init__ do:
  // `size` {shortest_edge, longest_edge} first, then top-level `min_pixels` / `max_pixels` override it;
  // image_mean/image_std, rescale_factor, patch_size, temporal_patch_size, merge_size. Without the file
  // (or with an empty path) the defaults above. Throws kNotFound when model_dir does not exist,
  // kInvalidInput for malformed JSON or out-of-range values, kUnsupported for settings we do not implement
  // (do_resize/do_rescale/do_normalize false, resample other than BICUBIC); do_convert_rgb is moot (images
  // are always decoded to RGB).
  static PreprocessConfig load(const std::filesystem::path& model_dir);

  int factor() const { return patch_size * merge_size; }
  int patch_dim() const { return 3 * temporal_patch_size * patch_size * patch_size; }  // 1176
};

// (height, width), both multiples of factor. Python-exact (round-half-even, double arithmetic, the v5 clamp
// to >= factor in the max branch). Throws kInvalidInput for aspect ratio > 200 or empty images.
std::pair<int, int> smart_resize(int height, int width, int factor, std::int64_t min_pixels,
                                 std::int64_t max_pixels);

// Antialiased bicubic resize of an RGB8 image, identical to the reference's uint8 path (torch's
// upsample_bicubic2d_aa on uint8: AVX and generic paths agree). Same size returns a copy.
ImageRGB8 resize_bicubic(const ImageRGB8& src, int out_width, int out_height, ThreadPool* pool = nullptr);

struct PixelValues {
  std::vector<float> data;  // [rows, cols] row-major
  std::int64_t rows = 0;
  std::int64_t cols = 0;  // 3 * temporal_patch_size * patch_size^2 = 1176
  std::array<std::int64_t, 3> grid_thw{0, 0, 0};
  std::int64_t merged_tokens(int merge_size = 2) const { return rows / (merge_size * merge_size); }
};

// smart_resize + resize_bicubic + normalize_and_patchify. Throws kInvalidInput for empty/inconsistent
// images or aspect ratio > 200, kTooLarge when the resized image would exceed kMaxResizedPixels.
PixelValues preprocess_image(const ImageRGB8& image, const PreprocessConfig& config,
                             ThreadPool* pool = nullptr);

// Rescale + normalize (float32, fused as the reference: (x - mean*(1/rescale)) / (std*(1/rescale))) and
// patchify an image whose sides are already multiples of config.factor(). Row order (t, bh, bw, mh, mw),
// column order (c, tau, y, x); the single frame is repeated temporal_patch_size times (spec §3.4).
PixelValues normalize_and_patchify(const ImageRGB8& resized, const PreprocessConfig& config);

// Upper bound on the resized image (h*w) preprocess_image accepts: 64 Mpx = 1.5 GB of pixel values.
inline constexpr std::int64_t kMaxResizedPixels = 64LL << 20;

}  // namespace mv
