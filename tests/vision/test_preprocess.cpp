// Qwen2.5-VL preprocessing: smart_resize rules (spec §3.2), patchification order (spec §3.4), the config
// loader, and parity with transformers 5.17's Qwen2VLImageProcessor on the fixtures made by
// tools/reference/make_preprocess_fixtures.py (tests/fixtures/preprocess).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "common/random_image.hpp"
#include "common/temp_dir.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "core/thread_pool.hpp"
#include "io/image.hpp"
#include "vision/preprocess.hpp"

// stb_image with internal linkage, to read the fixtures' reference PNGs independently of io/image.
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#include <stb_image.h>

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const fs::path kFixtures = fs::path(MV_FIXTURES_DIR) / "preprocess";

json load_index() { return json::parse(mv::read_file(kFixtures / "index.json")); }

// 8-bit RGB PNG -> ImageRGB8 through stb_image (the fixtures' reference pixels).
mv::ImageRGB8 read_png_stb(const fs::path& path) {
  const std::string bytes = mv::read_file(path);
  int w = 0, h = 0, n = 0;
  stbi_uc* data = stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()),
                                        static_cast<int>(bytes.size()), &w, &h, &n, 3);
  if (data == nullptr) throw std::runtime_error("stb_image cannot read " + path.string());
  mv::ImageRGB8 img;
  img.width = w;
  img.height = h;
  img.pixels.assign(data, data + static_cast<std::size_t>(w) * h * 3);
  stbi_image_free(data);
  return img;
}

std::vector<float> read_f32(const fs::path& path) {
  const std::string bytes = mv::read_file(path);
  std::vector<float> v(bytes.size() / sizeof(float));
  std::memcpy(v.data(), bytes.data(), v.size() * sizeof(float));
  return v;
}

std::string sha_of(const void* data, std::size_t size) {
  return mv::sha256_hex(std::string_view(static_cast<const char*>(data), size));
}

mv::PreprocessConfig config_for(std::int64_t min_pixels, std::int64_t max_pixels) {
  mv::PreprocessConfig cfg;
  cfg.min_pixels = min_pixels;
  cfg.max_pixels = max_pixels;
  return cfg;
}

using mv::test::random_image;

// The value transformers computes for pixel value v of channel c (float32, fused rescale+normalize).
float normalized(const mv::PreprocessConfig& cfg, int c, std::uint8_t v) {
  const float inv = static_cast<float>(1.0 / cfg.rescale_factor);
  return (static_cast<float>(v) - cfg.mean[c] * inv) / (cfg.std[c] * inv);
}

// Result of comparing our pixel_values with the reference for one fixture case.
struct CaseResult {
  double max_abs = 0.0;       // over every value we could compare
  std::int64_t compared = 0;  // number of values compared
  bool bit_exact = false;     // SHA-256 of the whole pixel_values equals the reference's
};

// Compares pv (computed from `rgb`) with the reference data of `c`.
CaseResult compare_case(const json& c, const mv::ImageRGB8& rgb, const mv::PixelValues& pv) {
  CaseResult res;
  const std::string name = c["name"];
  EXPECT_EQ(pv.grid_thw[0], c["grid_thw"][0].get<std::int64_t>()) << name;
  EXPECT_EQ(pv.grid_thw[1], c["grid_thw"][1].get<std::int64_t>()) << name;
  EXPECT_EQ(pv.grid_thw[2], c["grid_thw"][2].get<std::int64_t>()) << name;
  EXPECT_EQ(pv.rows, c["shape"][0].get<std::int64_t>()) << name;
  EXPECT_EQ(pv.cols, c["shape"][1].get<std::int64_t>()) << name;
  if (pv.rows != c["shape"][0].get<std::int64_t>() || pv.cols != c["shape"][1].get<std::int64_t>()) {
    res.max_abs = INFINITY;
    return res;
  }
  res.bit_exact = sha_of(pv.data.data(), pv.data.size() * sizeof(float)) == c["pixel_values_sha256"];

  auto compare_rows = [&](const std::vector<float>& ref, std::int64_t rows) {
    EXPECT_EQ(ref.size(), static_cast<std::size_t>(rows * pv.cols)) << name;
    const std::size_t n = std::min(ref.size(), pv.data.size());
    for (std::size_t i = 0; i < n; ++i) {
      res.max_abs = std::max(res.max_abs, static_cast<double>(std::abs(pv.data[i] - ref[i])));
    }
    res.compared += static_cast<std::int64_t>(n);
  };
  if (c.contains("full")) {
    compare_rows(read_f32(kFixtures / c["full"].get<std::string>()), pv.rows);
  } else {
    // The first rows exactly as transformers wrote them ...
    compare_rows(read_f32(kFixtures / c["head"].get<std::string>()), c["head_rows"].get<std::int64_t>());
    // ... and every value against the reference's resized image (the Python side asserted that
    // normalising it reproduces transformers' pixel_values, bit for bit with the fused formula).
    const mv::ImageRGB8 ref_resized = read_png_stb(kFixtures / c["resized_png"].get<std::string>());
    EXPECT_EQ(sha_of(ref_resized.pixels.data(), ref_resized.pixels.size()), c["resized_sha256"]) << name;
    mv::PreprocessConfig cfg = config_for(c["min_pixels"], c["max_pixels"]);
    const mv::PixelValues ref = mv::normalize_and_patchify(ref_resized, cfg);
    EXPECT_EQ(ref.data.size(), pv.data.size()) << name;
    const std::size_t n = std::min(ref.data.size(), pv.data.size());
    for (std::size_t i = 0; i < n; ++i) {
      res.max_abs = std::max(res.max_abs, static_cast<double>(std::abs(pv.data[i] - ref.data[i])));
    }
    res.compared += static_cast<std::int64_t>(n);
  }
  return res;
}

int run_cli(const std::string& args, std::string* out) {
  const std::string cmd = std::string(MV_BINARY) + " " + args + " 2>/dev/null";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) return -1;
  std::array<char, 4096> buf{};
  out->clear();
  std::size_t n = 0;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) out->append(buf.data(), n);
  const int status = ::pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

using mv::test::TempDir;

}  // namespace

// ------------------------------------------------------------------------------------------------
// smart_resize

TEST(SmartResize, SpecTable) {
  constexpr std::int64_t kMin = 3136, kJsonMax = 12845056, kClassMax = 1003520;
  struct Row {
    int h, w;
    std::int64_t max;
    int eh, ew;
  };
  const Row rows[] = {
      {480, 640, kJsonMax, 476, 644},     {1080, 1920, kJsonMax, 1092, 1932},
      {4000, 3000, kJsonMax, 4004, 2996}, {224, 224, kJsonMax, 224, 224},
      {42, 70, kJsonMax, 56, 56},         {20, 20, kJsonMax, 56, 56},
      {1080, 1920, kClassMax, 728, 1316},
  };
  for (const Row& r : rows) {
    const auto [h, w] = mv::smart_resize(r.h, r.w, 28, kMin, r.max);
    EXPECT_EQ(h, r.eh) << r.h << "x" << r.w;
    EXPECT_EQ(w, r.ew) << r.h << "x" << r.w;
  }
}

TEST(SmartResize, BankersRounding) {
  // 42/28 = 1.5 -> 2 and 70/28 = 2.5 -> 2 under round-half-even (half-away-from-zero gives 56x84).
  EXPECT_EQ(mv::smart_resize(42, 70, 28, 3136, 12845056), std::make_pair(56, 56));
  EXPECT_EQ(mv::smart_resize(70, 42, 28, 3136, 12845056), std::make_pair(56, 56));
  EXPECT_EQ(mv::smart_resize(98, 126, 28, 3136, 12845056), std::make_pair(112, 112));  // 3.5 -> 4, 4.5 -> 4
}

TEST(SmartResize, AspectRatioOver200IsAnError) {
  EXPECT_EQ(mv::smart_resize(2, 400, 28, 3136, 12845056), std::make_pair(28, 812));  // exactly 200: allowed
  for (auto [h, w] : {std::pair{2, 401}, {1, 201}, {600, 2}, {3, 700}}) {
    try {
      mv::smart_resize(h, w, 28, 3136, 12845056);
      ADD_FAILURE() << h << "x" << w << " did not throw";
    } catch (const mv::Error& e) {
      EXPECT_EQ(e.code(), mv::Errc::kInvalidInput);
      EXPECT_NE(std::string(e.what()).find("aspect ratio"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(mv::smart_resize(0, 10, 28, 3136, 12845056), mv::Error);
}

TEST(SmartResize, MatchesTransformersTable) {
  const json index = load_index();
  int n = 0;
  for (const auto& row : index["smart_resize_table"]) {
    const auto [h, w] = mv::smart_resize(row[0].get<int>(), row[1].get<int>(), 28, row[2].get<std::int64_t>(),
                                         row[3].get<std::int64_t>());
    EXPECT_EQ(h, row[4].get<int>()) << row.dump();
    EXPECT_EQ(w, row[5].get<int>()) << row.dump();
    ++n;
  }
  EXPECT_GE(n, 500);
  for (const auto& row : index["aspect_errors"]) {
    const bool raises = row[2].get<bool>();
    bool threw = false;
    try {
      mv::smart_resize(row[0].get<int>(), row[1].get<int>(), 28, 3136, 12845056);
    } catch (const mv::Error& e) {
      threw = e.code() == mv::Errc::kInvalidInput;
    }
    EXPECT_EQ(threw, raises) << row.dump();
  }
}

// ------------------------------------------------------------------------------------------------
// Patchification order (spec §3.4)

TEST(Patchify, MatchesSpecFormula) {
  const mv::PreprocessConfig cfg;                     // patch 14, merge 2, temporal 2
  const mv::ImageRGB8 img = random_image(84, 56, 7);  // multiples of 28, inside the budget: no resize
  const mv::PixelValues pv = mv::preprocess_image(img, cfg);
  ASSERT_EQ(pv.grid_thw, (std::array<std::int64_t, 3>{1, 4, 6}));
  ASSERT_EQ(pv.rows, 24);
  ASSERT_EQ(pv.cols, 1176);
  const int gh = 4, gw = 6;
  for (int bh = 0; bh < gh / 2; ++bh)
    for (int bw = 0; bw < gw / 2; ++bw)
      for (int mh = 0; mh < 2; ++mh)
        for (int mw = 0; mw < 2; ++mw) {
          const int r = ((bh * (gw / 2) + bw) * 2 + mh) * 2 + mw;
          const int y0 = (2 * bh + mh) * 14, x0 = (2 * bw + mw) * 14;
          for (int c = 0; c < 3; ++c)
            for (int tau = 0; tau < 2; ++tau)
              for (int y = 0; y < 14; ++y)
                for (int x = 0; x < 14; ++x) {
                  const int col = ((c * 2 + tau) * 14 + y) * 14 + x;
                  const std::uint8_t v = img.row(y0 + y)[(x0 + x) * 3 + c];
                  ASSERT_EQ(pv.data[static_cast<std::size_t>(r) * 1176 + col], normalized(cfg, c, v))
                      << "r " << r << " col " << col;
                }
        }
  EXPECT_EQ(pv.merged_tokens(), 6);
}

TEST(Patchify, GeneralSizes) {
  mv::PreprocessConfig cfg;
  cfg.patch_size = 4;
  cfg.merge_size = 3;
  cfg.temporal_patch_size = 3;
  cfg.min_pixels = 1;
  cfg.max_pixels = 1 << 20;
  const mv::ImageRGB8 img = random_image(24, 36, 11);  // factor 12: 3x2 merge blocks of 3x3 patches
  const mv::PixelValues pv = mv::preprocess_image(img, cfg);
  const int p = 4, m = 3, t = 3, gh = 9, gw = 6;
  ASSERT_EQ(pv.grid_thw, (std::array<std::int64_t, 3>{1, gh, gw}));
  ASSERT_EQ(pv.cols, 3 * t * p * p);
  for (int bh = 0; bh < gh / m; ++bh)
    for (int bw = 0; bw < gw / m; ++bw)
      for (int mh = 0; mh < m; ++mh)
        for (int mw = 0; mw < m; ++mw) {
          const int r = ((bh * (gw / m) + bw) * m + mh) * m + mw;
          for (int c = 0; c < 3; ++c)
            for (int tau = 0; tau < t; ++tau)
              for (int y = 0; y < p; ++y)
                for (int x = 0; x < p; ++x) {
                  const int col = ((c * t + tau) * p + y) * p + x;
                  const std::uint8_t v = img.row((bh * m + mh) * p + y)[((bw * m + mw) * p + x) * 3 + c];
                  ASSERT_EQ(pv.data[static_cast<std::size_t>(r) * pv.cols + col], normalized(cfg, c, v));
                }
        }
}

TEST(Patchify, RejectsSizesNotMultipleOfFactor) {
  EXPECT_THROW(mv::normalize_and_patchify(random_image(30, 28, 1), mv::PreprocessConfig{}), mv::Error);
}

// ------------------------------------------------------------------------------------------------
// Resampling

TEST(ResizeBicubic, SameSizeIsIdentityAndConstantStaysClose) {
  const mv::ImageRGB8 img = random_image(37, 23, 3);
  EXPECT_EQ(mv::resize_bicubic(img, 37, 23).pixels, img.pixels);
  mv::ImageRGB8 flat = random_image(50, 40, 4);
  std::fill(flat.pixels.begin(), flat.pixels.end(), std::uint8_t{200});
  for (auto [w, h] : {std::pair{13, 7}, {50, 97}, {311, 40}, {3, 2}}) {
    const mv::ImageRGB8 out = mv::resize_bicubic(flat, w, h);
    ASSERT_EQ(out.width, w);
    ASSERT_EQ(out.height, h);
    for (std::uint8_t v : out.pixels) ASSERT_NEAR(v, 200, 1);  // int16 weights sum to 2^p within rounding
  }
}

TEST(ResizeBicubic, CloseToFloatReference) {
  // An independent float64 separable antialiased Keys-cubic resize, rounded once per pass: the fixed-point
  // kernel must stay within 1 per pass of it.
  auto keys = [](double x) {
    x = std::abs(x);
    if (x < 1) return (1.5 * x - 2.5) * x * x + 1;
    if (x < 2) return ((-0.5 * x + 2.5) * x - 4) * x + 2;
    return 0.0;
  };
  auto pass = [&](const std::vector<double>& src, int n_in, int n_out, int lines, bool horizontal) {
    std::vector<double> dst(static_cast<std::size_t>(n_out) * lines);
    const double scale = static_cast<double>(n_in) / n_out, fs = std::max(scale, 1.0);
    for (int o = 0; o < n_out; ++o) {
      const double center = (o + 0.5) * scale;
      std::vector<double> w(static_cast<std::size_t>(n_in), 0.0);
      double total = 0;
      for (int i = 0; i < n_in; ++i) total += (w[i] = keys((i + 0.5 - center) / fs));
      for (int l = 0; l < lines; ++l) {
        double acc = 0;
        for (int i = 0; i < n_in; ++i) acc += w[i] / total * src[horizontal ? l * n_in + i : i * lines + l];
        dst[horizontal ? l * n_out + o : o * lines + l] = std::clamp(std::round(acc), 0.0, 255.0);
      }
    }
    return dst;
  };
  const mv::ImageRGB8 img = random_image(45, 31, 9);
  for (auto [w, h] : {std::pair{20, 13}, {90, 70}, {17, 62}}) {
    const mv::ImageRGB8 out = mv::resize_bicubic(img, w, h);
    for (int c = 0; c < 3; ++c) {
      std::vector<double> plane(static_cast<std::size_t>(img.width) * img.height);
      for (int y = 0; y < img.height; ++y)
        for (int x = 0; x < img.width; ++x) plane[y * img.width + x] = img.row(y)[x * 3 + c];
      const auto hpass = pass(plane, img.width, w, img.height, true);
      const auto ref = pass(hpass, img.height, h, w, false);
      for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) ASSERT_NEAR(out.row(y)[x * 3 + c], ref[y * w + x], 2.0) << w << "x" << h;
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Parity with transformers (fixtures)

TEST(Parity, FixturePixelsMatchTransformers) {
  const json index = load_index();
  ASSERT_GE(index["cases"].size(), 12u);
  for (const auto& c : index["cases"]) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    // The exact RGB pixels PIL gave the processor (exif_transpose + convert("RGB")), read with stb_image.
    const mv::ImageRGB8 rgb = read_png_stb(kFixtures / c["rgb"].get<std::string>());
    ASSERT_EQ(sha_of(rgb.pixels.data(), rgb.pixels.size()), c["rgb_sha256"]);
    const mv::PixelValues pv = mv::preprocess_image(rgb, config_for(c["min_pixels"], c["max_pixels"]));
    const CaseResult res = compare_case(c, rgb, pv);
    std::printf("  %-44s grid %lldx%lld  max|diff| %.3g over %lld values  bit-exact %s\n", name.c_str(),
                static_cast<long long>(pv.grid_thw[1]), static_cast<long long>(pv.grid_thw[2]), res.max_abs,
                static_cast<long long>(res.compared), res.bit_exact ? "yes" : "NO");
    EXPECT_LE(res.max_abs, 1e-4);
    EXPECT_GT(res.compared, 0);
    EXPECT_TRUE(res.bit_exact) << "pixel_values differ from transformers' (SHA-256)";
  }
}

TEST(Parity, ResizedImageMatchesTorchExactly) {
  const json index = load_index();
  for (const auto& c : index["cases"]) {
    if (!c.contains("resized_png")) continue;
    SCOPED_TRACE(c["name"].get<std::string>());
    const mv::ImageRGB8 rgb = read_png_stb(kFixtures / c["rgb"].get<std::string>());
    const mv::ImageRGB8 ref = read_png_stb(kFixtures / c["resized_png"].get<std::string>());
    const mv::ImageRGB8 out = mv::resize_bicubic(rgb, ref.width, ref.height);
    ASSERT_EQ(out.pixels.size(), ref.pixels.size());
    std::size_t differing = 0;
    int max_diff = 0;
    for (std::size_t i = 0; i < out.pixels.size(); ++i) {
      const int d = std::abs(int{out.pixels[i]} - int{ref.pixels[i]});
      differing += d != 0;
      max_diff = std::max(max_diff, d);
    }
    EXPECT_EQ(differing, 0u) << "max |diff| " << max_diff;
  }
}

TEST(Parity, ThreadPoolGivesTheSameResult) {
  const json index = load_index();
  mv::ThreadPool* no_pool = nullptr;
  for (const auto& c : index["cases"]) {
    if (c["name"].get<std::string>().rfind("large_2400x1800__min3136_max1003520", 0) != 0) continue;
    const mv::ImageRGB8 rgb = read_png_stb(kFixtures / c["rgb"].get<std::string>());
    mv::ThreadPool pool(4);
    const auto cfg = config_for(c["min_pixels"], c["max_pixels"]);
    const mv::PixelValues a = mv::preprocess_image(rgb, cfg, &pool);
    const mv::PixelValues b = mv::preprocess_image(rgb, cfg, no_pool);
    EXPECT_EQ(a.data, b.data);
    EXPECT_EQ(sha_of(a.data.data(), a.data.size() * sizeof(float)), c["pixel_values_sha256"]);
  }
}

// End to end through io/image's decoder (PNG, JPEG with EXIF orientation, gray, RGBA, palette).
TEST(Parity, LoadImageThenPreprocessMatchesTransformers) {
  const json index = load_index();
  for (const auto& c : index["cases"]) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    const mv::ImageRGB8 img = mv::load_image(kFixtures / c["image"].get<std::string>());
    EXPECT_EQ(img.width, c["width"].get<int>());
    EXPECT_EQ(img.height, c["height"].get<int>());
    EXPECT_EQ(sha_of(img.pixels.data(), img.pixels.size()), c["rgb_sha256"])
        << "load_image decodes differently from Pillow (io/image), preprocessing not at fault";
    const mv::PixelValues pv = mv::preprocess_image(img, config_for(c["min_pixels"], c["max_pixels"]));
    const CaseResult res = compare_case(c, img, pv);
    std::printf("  %-44s load_image -> max|diff| %.3g bit-exact %s\n", name.c_str(), res.max_abs,
                res.bit_exact ? "yes" : "NO");
    EXPECT_LE(res.max_abs, 1e-4);
  }
}

// ------------------------------------------------------------------------------------------------
// preprocessor_config.json

namespace {
mv::PreprocessConfig load_json(const std::string& name, const std::string& text) {
  const TempDir tmp(name);
  std::ofstream(tmp.path() / "preprocessor_config.json") << text;
  return mv::PreprocessConfig::load(tmp.path());
}
mv::Errc load_json_error(const std::string& name, const std::string& text) {
  try {
    load_json(name, text);
  } catch (const mv::Error& e) {
    return e.code();
  }
  return mv::Errc::kInternal;
}
}  // namespace

TEST(PreprocessConfig, DefaultsAreTransformersClassDefaults) {
  const mv::PreprocessConfig d;
  EXPECT_EQ(d.min_pixels, 3136);
  EXPECT_EQ(d.max_pixels, 1003520);
  EXPECT_EQ(d.patch_dim(), 1176);
  EXPECT_EQ(d.factor(), 28);
  // The fixture run recorded the class defaults of transformers itself.
  const json checks = load_index()["checks"];
  EXPECT_EQ(checks["class_default_size"]["shortest_edge"].get<std::int64_t>(), d.min_pixels);
  EXPECT_EQ(checks["class_default_size"]["longest_edge"].get<std::int64_t>(), d.max_pixels);
  // A folder without preprocessor_config.json -> the same defaults.
  const mv::PreprocessConfig e = mv::PreprocessConfig::load(TempDir("empty").path());
  EXPECT_EQ(e.max_pixels, 1003520);
  EXPECT_EQ(mv::PreprocessConfig::load("").max_pixels, 1003520);
}

TEST(PreprocessConfig, ReadsReleasedAndSizeVariants) {
  const json checks = load_index()["checks"];
  const mv::PreprocessConfig r =
      load_json("released",
                R"({"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
          "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
          "image_std": [0.26862954, 0.26130258, 0.27577711], "image_processor_type": "Qwen2VLImageProcessor",
          "processor_class": "Qwen2_5_VLProcessor"})");
  EXPECT_EQ(r.min_pixels, checks["released_json_size"]["shortest_edge"].get<std::int64_t>());
  EXPECT_EQ(r.max_pixels, checks["released_json_size"]["longest_edge"].get<std::int64_t>());
  EXPECT_EQ(r.mean[0], 0.48145466f);
  EXPECT_EQ(r.std[2], 0.27577711f);
  // "size" plus a top-level max_pixels: max_pixels wins (as transformers' __init__).
  const mv::PreprocessConfig s = load_json(
      "size_plus", R"({"size": {"shortest_edge": 1234, "longest_edge": 567890}, "max_pixels": 765432})");
  EXPECT_EQ(s.min_pixels, checks["size_dict_plus_max_pixels_json_size"]["shortest_edge"].get<std::int64_t>());
  EXPECT_EQ(s.max_pixels, checks["size_dict_plus_max_pixels_json_size"]["longest_edge"].get<std::int64_t>());
  const mv::PreprocessConfig o =
      load_json("size_only", R"({"size": {"shortest_edge": 4321, "longest_edge": 98765}})");
  EXPECT_EQ(o.min_pixels, checks["size_dict_only_json_size"]["shortest_edge"].get<std::int64_t>());
  EXPECT_EQ(o.max_pixels, checks["size_dict_only_json_size"]["longest_edge"].get<std::int64_t>());
}

TEST(PreprocessConfig, BadInputHasClearErrors) {
  EXPECT_EQ(load_json_error("bad_json", "{not json"), mv::Errc::kInvalidInput);
  EXPECT_EQ(load_json_error("array", "[1, 2]"), mv::Errc::kInvalidInput);
  EXPECT_EQ(load_json_error("neg", R"({"max_pixels": -5})"), mv::Errc::kInvalidInput);
  EXPECT_EQ(load_json_error("str", R"({"min_pixels": "3136"})"), mv::Errc::kInvalidInput);
  EXPECT_EQ(load_json_error("mean", R"({"image_mean": [0.5, 0.5]})"), mv::Errc::kInvalidInput);
  EXPECT_EQ(load_json_error("std0", R"({"image_std": [0.5, 0.0, 0.5]})"), mv::Errc::kInvalidInput);
  EXPECT_EQ(load_json_error("patch0", R"({"patch_size": 0})"), mv::Errc::kInvalidInput);
  EXPECT_EQ(load_json_error("no_norm", R"({"do_normalize": false})"), mv::Errc::kUnsupported);
  EXPECT_EQ(load_json_error("bilinear", R"({"resample": 2})"), mv::Errc::kUnsupported);
  try {
    mv::PreprocessConfig::load("/nonexistent/medvision/model");
    ADD_FAILURE() << "no error for a missing folder";
  } catch (const mv::Error& e) {
    EXPECT_EQ(e.code(), mv::Errc::kNotFound);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/medvision/model"), std::string::npos);
  }
}

// ------------------------------------------------------------------------------------------------
// CLI

TEST(PreprocessCli, WritesPixelValuesAndPrintsGrid) {
  const json index = load_index();
  const TempDir tmp("cli");
  const fs::path& dir = tmp.path();
  for (const auto& c : index["cases"]) {
    if (c["name"] != "photo_640x480__min3136_max12845056") continue;
    const fs::path out = dir / "pixels.f32";
    std::string stdout_text;
    const int rc = run_cli("preprocess --image " + (kFixtures / c["image"].get<std::string>()).string() +
                               " --out " + out.string() + " --min-pixels 3136 --max-pixels 12845056",
                           &stdout_text);
    ASSERT_EQ(rc, 0) << stdout_text;
    const json j = json::parse(stdout_text);
    EXPECT_EQ(j["grid_thw"], c["grid_thw"]);
    EXPECT_EQ(j["shape"], c["shape"]);
    EXPECT_EQ(j["resized"], c["resized"]);
    const std::string bytes = mv::read_file(out);
    EXPECT_EQ(bytes.size(), c["shape"][0].get<std::size_t>() * 1176 * sizeof(float));
    EXPECT_EQ(mv::sha256_hex(bytes), c["pixel_values_sha256"]);

    // --model with the released config gives the same budget; without it the class default applies.
    std::ofstream(dir / "preprocessor_config.json") << R"({"min_pixels": 3136, "max_pixels": 12845056})";
    ASSERT_EQ(run_cli("preprocess --model " + dir.string() + " --image " +
                          (kFixtures / c["image"].get<std::string>()).string() + " --out " + out.string(),
                      &stdout_text),
              0);
    EXPECT_EQ(json::parse(stdout_text)["grid_thw"], c["grid_thw"]);
  }
}

TEST(PreprocessCli, ErrorsExitWithCode3) {
  const TempDir tmp("cli_err");
  const fs::path& dir = tmp.path();
  std::string text;
  EXPECT_EQ(
      run_cli("preprocess --image " + (dir / "missing.png").string() + " --out " + (dir / "o.f32").string(),
              &text),
      3);
  std::ofstream(dir / "notes.txt") << "this is not an image\n";
  EXPECT_EQ(
      run_cli("preprocess --image " + (dir / "notes.txt").string() + " --out " + (dir / "o.f32").string(),
              &text),
      3);
  mv::ImageRGB8 thin;  // 402x2: aspect ratio 201
  thin.width = 402;
  thin.height = 2;
  thin.pixels.assign(402 * 2 * 3, 128);
  mv::save_png(thin, dir / "thin.png");
  EXPECT_EQ(
      run_cli("preprocess --image " + (dir / "thin.png").string() + " --out " + (dir / "o.f32").string(),
              &text),
      3);
  EXPECT_FALSE(fs::exists(dir / "o.f32"));
  EXPECT_EQ(run_cli("preprocess --model " + (dir / "no_such_model").string() + " --image " +
                        (dir / "thin.png").string() + " --out " + (dir / "o.f32").string(),
                    &text),
            3);
}
