// Image decoding to 8-bit RGB: PNG, JPEG (EXIF orientation applied), TIFF (multi-page), WebP, BMP, and
// PDF pages (poppler). Limits are checked from the headers before any pixel is decoded.
// Colour conversion follows PIL's convert("RGB") (what the reference processor uses): alpha is dropped,
// grayscale is replicated, palettes are expanded.
#pragma once
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace mv {

struct ImageRGB8 {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> pixels;  // row-major, RGB interleaved, size = width*height*3
  std::uint8_t* row(int y) { return pixels.data() + static_cast<std::size_t>(y) * width * 3; }
  const std::uint8_t* row(int y) const { return pixels.data() + static_cast<std::size_t>(y) * width * 3; }
};

struct ImageLimits {
  std::uint64_t max_pixels_per_page = 40'000'000;
  int max_pages = 64;
  double pdf_dpi = 200.0;
};

enum class ImageFormat { kUnknown, kPng, kJpeg, kTiff, kWebp, kBmp, kPdf };
ImageFormat sniff_image_format(std::span<const std::uint8_t> head) noexcept;  // by magic bytes
const char* image_format_name(ImageFormat f) noexcept;

// Every page of a file (one for single-image formats). Throws kUnsupported for unknown formats,
// kInvalidInput for corrupt/truncated data, kTooLarge over the limits; messages name the file.
std::vector<ImageRGB8> load_image_pages(const std::filesystem::path& path, const ImageLimits& limits = {});
std::vector<ImageRGB8> decode_image_pages(std::span<const std::uint8_t> data, const std::string& name,
                                          const ImageLimits& limits = {});
ImageRGB8 load_image(const std::filesystem::path& path, const ImageLimits& limits = {});  // first page
int count_pages(const std::filesystem::path& path, const ImageLimits& limits = {});

void save_png(const ImageRGB8& image, const std::filesystem::path& path);

}  // namespace mv
