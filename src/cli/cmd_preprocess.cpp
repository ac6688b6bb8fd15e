// medvision preprocess: one image -> Qwen2.5-VL pixel_values (float32, little-endian, row-major [N, 1176]),
// equal to transformers' Qwen2VLImageProcessor; prints {"grid_thw", "shape", "resized", ...} as JSON.
#include <bit>
#include <cstddef>
#include <memory>
#include <span>
#include <string>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "core/thread_pool.hpp"
#include "io/image.hpp"
#include "vision/preprocess.hpp"

namespace mv::cli {

namespace {

struct PreprocessArgs {
  std::string model_dir;
  std::string image;
  std::string out;
  std::int64_t min_pixels = 0;
  std::int64_t max_pixels = 0;
  bool json = false;
};

void run_preprocess(const PreprocessArgs& a) {
  static_assert(std::endian::native == std::endian::little, "the .f32 output is defined as little-endian");
  PreprocessConfig config = a.model_dir.empty() ? PreprocessConfig{} : PreprocessConfig::load(a.model_dir);
  if (a.min_pixels > 0) config.min_pixels = a.min_pixels;
  if (a.max_pixels > 0) config.max_pixels = a.max_pixels;

  const ImageRGB8 image = load_image(a.image);
  ThreadPool pool;
  const PixelValues pv = preprocess_image(image, config, &pool);
  spdlog::debug("preprocess: {}x{} -> grid {}x{}x{} ({} rows)", image.width, image.height, pv.grid_thw[0],
                pv.grid_thw[1], pv.grid_thw[2], pv.rows);

  write_file(a.out, std::as_bytes(std::span<const float>(pv.data)));

  const std::int64_t resized_h = pv.grid_thw[1] * config.patch_size;
  const std::int64_t resized_w = pv.grid_thw[2] * config.patch_size;
  print_json({
      {"grid_thw", {pv.grid_thw[0], pv.grid_thw[1], pv.grid_thw[2]}},
      {"shape", {pv.rows, pv.cols}},
      {"resized", {resized_h, resized_w}},
      {"original", {image.height, image.width}},
      {"merged_tokens", pv.merged_tokens(config.merge_size)},
      {"min_pixels", config.min_pixels},
      {"max_pixels", config.max_pixels},
      {"dtype", "float32"},
      {"out", a.out},
  });
}

}  // namespace

void add_preprocess_command(CLI::App& app) {
  auto args = std::make_shared<PreprocessArgs>();
  auto* cmd = app.add_subcommand(
      "preprocess",
      "Turn an image into Qwen2.5-VL pixel_values (float32 [N, 1176]) exactly as transformers' "
      "Qwen2VLImageProcessor does");
  cmd->add_option("--model", args->model_dir,
                  "model folder with preprocessor_config.json (optional; without it: transformers' class "
                  "defaults, max_pixels 1003520)");
  cmd->add_option("--image", args->image, "input image (PNG, JPEG, TIFF, WebP, BMP; first page of PDF/TIFF)")
      ->required();
  cmd->add_option("--out", args->out, "output file: little-endian float32, row-major [N, 1176]")->required();
  cmd->add_option("--min-pixels", args->min_pixels, "override the minimum resized area (pixels)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 40));
  cmd->add_option("--max-pixels", args->max_pixels, "override the maximum resized area (pixels)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 40));
  cmd->add_flag("--json", args->json, "print the report as JSON (always on)");
  cmd->callback([args] { run_preprocess(*args); });
}

}  // namespace mv::cli
