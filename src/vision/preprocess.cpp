// Qwen2.5-VL image preprocessing (spec §3), bit-exact with transformers 5.17's Qwen2VLImageProcessor.
//
// Resampling reproduces torch's CPU uint8 antialiased bicubic (upsample_bicubic2d_aa on uint8, which
// torchvision's resize calls directly for uint8 + BICUBIC on CPU):
//  * per axis, scale = in/out (double); support = 2*scale when downscaling, else 2; each output index i
//    covers input [xmin, xmin+xsize) with center = scale*(i+0.5), xmin = max(trunc(center-support+0.5), 0),
//    xsize = min(trunc(center+support+0.5), in) - xmin; weights are the Keys cubic (a = -0.5) at
//    (j + xmin - center + 0.5) / max(scale, 1), normalised to sum 1, all in double;
//  * weights are then quantised to int16 at the largest precision p <= 22 for which the axis's largest
//    weight still rounds below 2^15, rounding half away from zero;
//  * the horizontal pass runs first (when the width changes), its uint8 output feeds the vertical pass
//    (when the height changes); each sample is (2^(p-1) + sum w*x) >> p clamped to [0, 255].
// The AVX2/AVX-512 and generic kernels compute exactly this integer arithmetic (verified on the
// reference machine: ATEN_CPU_CAPABILITY=default/avx2/avx512 give identical images).
#include "vision/preprocess.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "core/thread_pool.hpp"

namespace mv {

namespace {

// ---------------------------------------------------------------------------------------------
// Weights of one axis.

struct AxisWeights {
  int taps = 0;                 // weights stored per output index (torch's max_interp_size)
  unsigned precision = 0;       // fixed-point bits of the int16 weights
  std::vector<int> start;       // first input index per output index
  std::vector<int> count;       // number of input samples per output index (<= taps)
  std::vector<std::int16_t> w;  // [out, taps]
};

// Keys cubic convolution kernel with a = -0.5 (torch's HelperInterpCubic::aa_filter<double, true>).
double keys_cubic(double x) {
  constexpr double a = -0.5;
  x = std::abs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
  return 0.0;
}

AxisWeights compute_axis_weights(int in_size, int out_size) {
  AxisWeights ax;
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  const double support = scale >= 1.0 ? 2.0 * scale : 2.0;  // interp_size (4) * 0.5, widened when downscaling
  const double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
  ax.taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  const auto taps = static_cast<std::size_t>(ax.taps);
  ax.start.resize(static_cast<std::size_t>(out_size));
  ax.count.resize(static_cast<std::size_t>(out_size));
  std::vector<double> wf(static_cast<std::size_t>(out_size) * taps, 0.0);

  double wt_max = 0.0;
  for (int i = 0; i < out_size; ++i) {
    const double center = scale * (static_cast<double>(i) + 0.5);
    const std::int64_t xmin = std::max(static_cast<std::int64_t>(center - support + 0.5), std::int64_t{0});
    std::int64_t xsize =
        std::min(static_cast<std::int64_t>(center + support + 0.5), std::int64_t{in_size}) - xmin;
    xsize = std::clamp(xsize, std::int64_t{0}, static_cast<std::int64_t>(ax.taps));
    double* w = wf.data() + static_cast<std::size_t>(i) * taps;
    double total = 0.0;
    for (std::int64_t j = 0; j < xsize; ++j) {
      const double v = keys_cubic((static_cast<double>(j + xmin) - center + 0.5) * invscale);
      w[j] = v;
      total += v;
    }
    if (total != 0.0) {
      for (std::int64_t j = 0; j < xsize; ++j) {
        w[j] /= total;
        wt_max = std::max(wt_max, w[j]);
      }
    }
    ax.start[static_cast<std::size_t>(i)] = static_cast<int>(xmin);
    ax.count[static_cast<std::size_t>(i)] = static_cast<int>(xsize);
  }

  // Largest precision (<= 22) at which the largest weight still fits in int16.
  unsigned precision = 0;
  for (precision = 0; precision < 22; ++precision) {
    const int next = static_cast<int>(0.5 + wt_max * static_cast<double>(1 << (precision + 1)));
    if (next >= (1 << 15)) break;
  }
  ax.precision = precision;
  MV_CHECK(precision > 0, "resize weights precision is 0 ({} -> {})", in_size, out_size);

  ax.w.resize(wf.size());
  const double mul = static_cast<double>(1 << precision);
  for (std::size_t k = 0; k < wf.size(); ++k) {
    const double v = wf[k] * mul;
    ax.w[k] = static_cast<std::int16_t>(v < 0 ? static_cast<int>(-0.5 + v) : static_cast<int>(0.5 + v));
  }
  return ax;
}

inline std::uint8_t clamp_shift(int acc, unsigned precision) {
  return static_cast<std::uint8_t>(std::clamp(acc >> precision, 0, 255));
}

template <typename F>
void for_rows(ThreadPool* pool, std::int64_t n, std::int64_t grain, F&& fn) {
  if (pool != nullptr && n > grain) {
    pool->parallel_for(n, fn, grain);
  } else {
    fn(std::int64_t{0}, n);
  }
}

// Resamples each row of src (RGB8) to out_width columns.
ImageRGB8 resize_horizontal(const ImageRGB8& src, int out_width, ThreadPool* pool) {
  const AxisWeights ax = compute_axis_weights(src.width, out_width);
  ImageRGB8 dst;
  dst.width = out_width;
  dst.height = src.height;
  dst.pixels.resize(static_cast<std::size_t>(out_width) * static_cast<std::size_t>(src.height) * 3);
  const int half = 1 << (ax.precision - 1);
  for_rows(pool, src.height, 16, [&](std::int64_t y_begin, std::int64_t y_end) {
    for (std::int64_t y = y_begin; y < y_end; ++y) {
      const std::uint8_t* in = src.row(static_cast<int>(y));
      std::uint8_t* out = dst.row(static_cast<int>(y));
      for (int x = 0; x < out_width; ++x) {
        const std::int16_t* w = ax.w.data() + static_cast<std::size_t>(x) * static_cast<std::size_t>(ax.taps);
        const std::uint8_t* p = in + static_cast<std::size_t>(ax.start[static_cast<std::size_t>(x)]) * 3;
        const int n = ax.count[static_cast<std::size_t>(x)];
        int r = half, g = half, b = half;
        for (int k = 0; k < n; ++k, p += 3) {
          const int wk = w[k];
          r += p[0] * wk;
          g += p[1] * wk;
          b += p[2] * wk;
        }
        out[3 * x + 0] = clamp_shift(r, ax.precision);
        out[3 * x + 1] = clamp_shift(g, ax.precision);
        out[3 * x + 2] = clamp_shift(b, ax.precision);
      }
    }
  });
  return dst;
}

// Resamples each column of src (RGB8) to out_height rows.
ImageRGB8 resize_vertical(const ImageRGB8& src, int out_height, ThreadPool* pool) {
  const AxisWeights ax = compute_axis_weights(src.height, out_height);
  ImageRGB8 dst;
  dst.width = src.width;
  dst.height = out_height;
  const std::size_t row_len = static_cast<std::size_t>(src.width) * 3;
  dst.pixels.resize(row_len * static_cast<std::size_t>(out_height));
  const int half = 1 << (ax.precision - 1);
  for_rows(pool, out_height, 8, [&](std::int64_t y_begin, std::int64_t y_end) {
    std::vector<int> acc(row_len);
    for (std::int64_t y = y_begin; y < y_end; ++y) {
      const std::int16_t* w = ax.w.data() + static_cast<std::size_t>(y) * static_cast<std::size_t>(ax.taps);
      const int y0 = ax.start[static_cast<std::size_t>(y)];
      const int n = ax.count[static_cast<std::size_t>(y)];
      std::fill(acc.begin(), acc.end(), half);
      for (int k = 0; k < n; ++k) {
        const std::uint8_t* in = src.row(y0 + k);
        const int wk = w[k];
        for (std::size_t i = 0; i < row_len; ++i) acc[i] += in[i] * wk;
      }
      std::uint8_t* out = dst.row(static_cast<int>(y));
      for (std::size_t i = 0; i < row_len; ++i) out[i] = clamp_shift(acc[i], ax.precision);
    }
  });
  return dst;
}

void check_image(const ImageRGB8& image, const char* what) {
  if (image.width <= 0 || image.height <= 0) {
    fail(Errc::kInvalidInput, "{}: empty image ({}x{})", what, image.width, image.height);
  }
  const auto expected =
      static_cast<std::uint64_t>(image.width) * static_cast<std::uint64_t>(image.height) * 3;
  if (image.pixels.size() != expected) {
    fail(Errc::kInvalidInput, "{}: image buffer holds {} bytes, {}x{} RGB needs {}", what,
         image.pixels.size(), image.width, image.height, expected);
  }
}

// ---------------------------------------------------------------------------------------------
// preprocessor_config.json

using nlohmann::json;

std::int64_t json_int(const json& j, const char* key, std::int64_t lo, std::int64_t hi,
                      const std::string& file) {
  const json& v = j.at(key);
  std::int64_t out = 0;
  if (v.is_number_integer()) {
    out = v.get<std::int64_t>();
  } else if (v.is_number_float() && std::isfinite(v.get<double>()) &&
             v.get<double>() == std::floor(v.get<double>()) && std::abs(v.get<double>()) < 9.0e15) {
    out = static_cast<std::int64_t>(v.get<double>());
  } else {
    fail(Errc::kInvalidInput, "{}: \"{}\" must be an integer, got {}", file, key, v.dump());
  }
  if (out < lo || out > hi)
    fail(Errc::kInvalidInput, "{}: \"{}\" = {} is out of range [{}, {}]", file, key, out, lo, hi);
  return out;
}

double json_number(const json& j, const char* key, const std::string& file) {
  const json& v = j.at(key);
  if (!v.is_number() || !std::isfinite(v.get<double>())) {
    fail(Errc::kInvalidInput, "{}: \"{}\" must be a finite number, got {}", file, key, v.dump());
  }
  return v.get<double>();
}

std::array<float, 3> json_triplet(const json& j, const char* key, const std::string& file) {
  const json& v = j.at(key);
  std::array<float, 3> out{};
  if (v.is_number()) {
    out.fill(static_cast<float>(json_number(j, key, file)));
  } else if (v.is_array() && v.size() == 3) {
    for (std::size_t c = 0; c < 3; ++c) {
      if (!v[c].is_number() || !std::isfinite(v[c].get<double>())) {
        fail(Errc::kInvalidInput, "{}: \"{}\"[{}] must be a finite number, got {}", file, key, c,
             v[c].dump());
      }
      out[c] = static_cast<float>(v[c].get<double>());
    }
  } else {
    fail(Errc::kInvalidInput, "{}: \"{}\" must be a number or an array of 3 numbers, got {}", file, key,
         v.dump());
  }
  return out;
}

void require_true(const json& j, const char* key, const std::string& file) {
  if (!j.contains(key) || j.at(key).is_null()) return;
  const json& v = j.at(key);
  if (!v.is_boolean())
    fail(Errc::kInvalidInput, "{}: \"{}\" must be true or false, got {}", file, key, v.dump());
  if (!v.get<bool>())
    fail(Errc::kUnsupported, "{}: \"{}\": false is not supported (medvision always does it)", file, key);
}

}  // namespace

// -----------------------------------------------------------------------------------------------

PreprocessConfig PreprocessConfig::load(const std::filesystem::path& model_dir) {
  PreprocessConfig cfg;
  if (model_dir.empty()) return cfg;
  std::error_code ec;
  if (!std::filesystem::exists(model_dir, ec)) {
    fail(Errc::kNotFound, "{}: model folder does not exist", model_dir.string());
  }
  // A folder holding preprocessor_config.json, or that file itself.
  const std::filesystem::path file =
      std::filesystem::is_directory(model_dir, ec) ? model_dir / "preprocessor_config.json" : model_dir;
  if (!std::filesystem::is_regular_file(file, ec)) {
    spdlog::info(
        "{}: no preprocessor_config.json; using transformers' class defaults (min_pixels {}, max_pixels {})",
        model_dir.string(), cfg.min_pixels, cfg.max_pixels);
    return cfg;
  }
  const std::string name = file.string();
  const json j = json::parse(read_file(file), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) fail(Errc::kInvalidInput, "{}: not valid JSON", name);
  if (!j.is_object()) fail(Errc::kInvalidInput, "{}: expected a JSON object", name);

  constexpr std::int64_t kMaxBudget = std::int64_t{1} << 40;
  auto has = [](const json& o, const char* key) { return o.contains(key) && !o.at(key).is_null(); };
  // transformers: size = {shortest_edge, longest_edge}; then min_pixels / max_pixels override it.
  if (has(j, "size")) {
    const json& size = j.at("size");
    if (!size.is_object())
      fail(Errc::kInvalidInput, "{}: \"size\" must be an object, got {}", name, size.dump());
    // Older configs spell the budget min_pixels/max_pixels inside "size"; the v5 names win when both exist.
    if (has(size, "min_pixels")) cfg.min_pixels = json_int(size, "min_pixels", 1, kMaxBudget, name);
    if (has(size, "max_pixels")) cfg.max_pixels = json_int(size, "max_pixels", 1, kMaxBudget, name);
    if (has(size, "shortest_edge")) cfg.min_pixels = json_int(size, "shortest_edge", 1, kMaxBudget, name);
    if (has(size, "longest_edge")) cfg.max_pixels = json_int(size, "longest_edge", 1, kMaxBudget, name);
  }
  if (has(j, "min_pixels")) cfg.min_pixels = json_int(j, "min_pixels", 1, kMaxBudget, name);
  if (has(j, "max_pixels")) cfg.max_pixels = json_int(j, "max_pixels", 1, kMaxBudget, name);
  if (has(j, "patch_size")) cfg.patch_size = static_cast<int>(json_int(j, "patch_size", 1, 1024, name));
  if (has(j, "temporal_patch_size")) {
    cfg.temporal_patch_size = static_cast<int>(json_int(j, "temporal_patch_size", 1, 64, name));
  }
  if (has(j, "merge_size")) cfg.merge_size = static_cast<int>(json_int(j, "merge_size", 1, 64, name));
  if (has(j, "rescale_factor")) {
    cfg.rescale_factor = json_number(j, "rescale_factor", name);
    if (!(cfg.rescale_factor > 0.0))
      fail(Errc::kInvalidInput, "{}: \"rescale_factor\" must be positive", name);
  }
  if (has(j, "image_mean")) cfg.mean = json_triplet(j, "image_mean", name);
  if (has(j, "image_std")) {
    cfg.std = json_triplet(j, "image_std", name);
    for (float s : cfg.std) {
      if (s == 0.0f) fail(Errc::kInvalidInput, "{}: \"image_std\" has a zero entry", name);
    }
  }
  require_true(j, "do_resize", name);
  require_true(j, "do_rescale", name);
  require_true(j, "do_normalize", name);
  if (has(j, "resample")) {
    const std::int64_t resample = json_int(j, "resample", 0, 5, name);
    if (resample != 3) {
      fail(Errc::kUnsupported, "{}: \"resample\" = {} is not supported (only 3 = BICUBIC)", name, resample);
    }
  }
  if (static_cast<std::int64_t>(cfg.patch_dim()) > (std::int64_t{1} << 24)) {
    fail(Errc::kInvalidInput, "{}: patch_size {} x temporal_patch_size {} is too large", name, cfg.patch_size,
         cfg.temporal_patch_size);
  }
  spdlog::debug("{}: min_pixels {} max_pixels {} patch {} merge {} temporal {}", name, cfg.min_pixels,
                cfg.max_pixels, cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
  return cfg;
}

std::pair<int, int> smart_resize(int height, int width, int factor, std::int64_t min_pixels,
                                 std::int64_t max_pixels) {
  if (height <= 0 || width <= 0)
    fail(Errc::kInvalidInput, "cannot resize an empty image ({}x{})", width, height);
  if (factor <= 0) fail(Errc::kInvalidInput, "smart_resize: factor must be positive, got {}", factor);
  if (max_pixels <= 0)
    fail(Errc::kInvalidInput, "smart_resize: max_pixels must be positive, got {}", max_pixels);
  if (min_pixels < 0)
    fail(Errc::kInvalidInput, "smart_resize: min_pixels must not be negative, got {}", min_pixels);
  const double ratio =
      static_cast<double>(std::max(height, width)) / static_cast<double>(std::min(height, width));
  if (ratio > 200.0) {
    fail(Errc::kInvalidInput, "image of {}x{} pixels: absolute aspect ratio must be at most 200, got {:.2f}",
         width, height, ratio);
  }
  const double h = height;
  const double w = width;
  const double f = factor;
  const double hw = static_cast<double>(static_cast<std::int64_t>(height) * width);
  // Python's round() is round-half-to-even: nearbyint in the default rounding mode.
  double h_bar = std::nearbyint(h / f) * f;
  double w_bar = std::nearbyint(w / f) * f;
  if (h_bar * w_bar > static_cast<double>(max_pixels)) {
    const double beta = std::sqrt(hw / static_cast<double>(max_pixels));
    h_bar = std::max(f, std::floor(h / beta / f) * f);
    w_bar = std::max(f, std::floor(w / beta / f) * f);
  } else if (h_bar * w_bar < static_cast<double>(min_pixels)) {
    const double beta = std::sqrt(static_cast<double>(min_pixels) / hw);
    h_bar = std::ceil(h * beta / f) * f;
    w_bar = std::ceil(w * beta / f) * f;
  }
  constexpr double kMaxSide = static_cast<double>(std::numeric_limits<int>::max());
  if (!(h_bar <= kMaxSide) || !(w_bar <= kMaxSide)) {
    fail(Errc::kTooLarge, "image of {}x{} pixels: resized size {}x{} is too large (min_pixels {})", width,
         height, w_bar, h_bar, min_pixels);
  }
  return {static_cast<int>(h_bar), static_cast<int>(w_bar)};
}

ImageRGB8 resize_bicubic(const ImageRGB8& src, int out_width, int out_height, ThreadPool* pool) {
  check_image(src, "resize_bicubic");
  if (out_width <= 0 || out_height <= 0) {
    fail(Errc::kInvalidInput, "resize_bicubic: output size {}x{} is empty", out_width, out_height);
  }
  if (static_cast<std::int64_t>(out_width) * out_height > kMaxResizedPixels) {
    fail(Errc::kTooLarge, "resize_bicubic: output size {}x{} is over the limit of {} pixels", out_width,
         out_height, kMaxResizedPixels);
  }
  // Same order as the reference: horizontal pass (within rows) first, then vertical; a pass whose size does
  // not change is skipped (its weights would be the identity anyway).
  if (out_width == src.width && out_height == src.height) return src;
  if (out_width == src.width) return resize_vertical(src, out_height, pool);
  ImageRGB8 tmp = resize_horizontal(src, out_width, pool);
  if (out_height == src.height) return tmp;
  return resize_vertical(tmp, out_height, pool);
}

PixelValues normalize_and_patchify(const ImageRGB8& resized, const PreprocessConfig& config) {
  check_image(resized, "normalize_and_patchify");
  const int p = config.patch_size;
  const int m = config.merge_size;
  const int t = config.temporal_patch_size;
  if (p <= 0 || m <= 0 || t <= 0) {
    fail(Errc::kInvalidInput,
         "preprocess: patch_size {}, merge_size {}, temporal_patch_size {} must be positive", p, m, t);
  }
  const int factor = p * m;
  if (resized.height % factor != 0 || resized.width % factor != 0) {
    fail(Errc::kInvalidInput, "preprocess: image of {}x{} is not a multiple of {} (patch {} x merge {})",
         resized.width, resized.height, factor, p, m);
  }
  // Fused rescale + normalize, float32 as the reference: mean and std scaled by 1/rescale_factor in float,
  // then (x - mean') / std' per value. A table per channel holds all 256 results.
  const float inv_rescale = static_cast<float>(1.0 / config.rescale_factor);
  std::array<std::array<float, 256>, 3> lut{};
  for (int c = 0; c < 3; ++c) {
    const float mean = config.mean[static_cast<std::size_t>(c)] * inv_rescale;
    const float sd = config.std[static_cast<std::size_t>(c)] * inv_rescale;
    if (sd == 0.0f || !std::isfinite(sd) || !std::isfinite(mean)) {
      fail(Errc::kInvalidInput, "preprocess: invalid normalisation for channel {} (mean {}, std {})", c,
           config.mean[static_cast<std::size_t>(c)], config.std[static_cast<std::size_t>(c)]);
    }
    for (int v = 0; v < 256; ++v) {
      lut[static_cast<std::size_t>(c)][static_cast<std::size_t>(v)] = (static_cast<float>(v) - mean) / sd;
    }
  }

  const int gh = resized.height / p;
  const int gw = resized.width / p;
  PixelValues out;
  out.rows = static_cast<std::int64_t>(gh) * gw;
  out.cols = static_cast<std::int64_t>(3) * t * p * p;
  out.grid_thw = {1, gh, gw};  // one image = one temporal group (the frame is repeated t times)
  out.data.resize(static_cast<std::size_t>(out.rows * out.cols));

  const std::size_t up = static_cast<std::size_t>(p);
  const std::size_t cols = static_cast<std::size_t>(out.cols);
  std::size_t r = 0;
  for (int bh = 0; bh < gh / m; ++bh) {
    for (int bw = 0; bw < gw / m; ++bw) {
      for (int mh = 0; mh < m; ++mh) {
        for (int mw = 0; mw < m; ++mw, ++r) {
          const int y0 = (bh * m + mh) * p;
          const int x0 = (bw * m + mw) * p;
          float* row = out.data.data() + r * cols;
          for (int c = 0; c < 3; ++c) {
            const auto& table = lut[static_cast<std::size_t>(c)];
            for (int y = 0; y < p; ++y) {
              const std::uint8_t* src = resized.row(y0 + y) + static_cast<std::size_t>(x0) * 3 + c;
              float* dst0 = row + ((static_cast<std::size_t>(c) * t) * up + y) * up;
              for (std::size_t x = 0; x < up; ++x) dst0[x] = table[src[3 * x]];
              for (int tau = 1; tau < t; ++tau) {
                std::copy(dst0, dst0 + up, row + ((static_cast<std::size_t>(c) * t + tau) * up + y) * up);
              }
            }
          }
        }
      }
    }
  }
  return out;
}

PixelValues preprocess_image(const ImageRGB8& image, const PreprocessConfig& config, ThreadPool* pool) {
  check_image(image, "preprocess");
  const auto [h, w] =
      smart_resize(image.height, image.width, config.factor(), config.min_pixels, config.max_pixels);
  if (h <= 0 || w <= 0) {
    fail(Errc::kInvalidInput,
         "preprocess: image of {}x{} resizes to an empty image (min_pixels {}, max_pixels {})", image.width,
         image.height, config.min_pixels, config.max_pixels);
  }
  if (static_cast<std::int64_t>(h) * w > kMaxResizedPixels) {
    fail(Errc::kTooLarge, "preprocess: image of {}x{} would be resized to {}x{}, over the limit of {} pixels",
         image.width, image.height, w, h, kMaxResizedPixels);
  }
  if (h == image.height && w == image.width) return normalize_and_patchify(image, config);
  return normalize_and_patchify(resize_bicubic(image, w, h, pool), config);
}

}  // namespace mv
