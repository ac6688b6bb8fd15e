// Image decoding to 8-bit RGB: PNG, JPEG, TIFF (multi-page), WebP, BMP, and PDF pages (poppler).
// Limits are checked from the headers before any pixel is decoded. The format comes from the magic bytes,
// never from the file name.
// The pixels equal what the reference processor sees: PIL.Image.open -> ImageOps.exif_transpose ->
// convert("RGB"). Alpha is dropped (not composited), grayscale replicated, palettes expanded through the
// PLTE (indices past it are black); 16-bit RGB/RGBA/LA samples keep their high byte; 16-bit grayscale is
// clipped (any value over 255 becomes 255, PIL's "I;16" -> RGB rule); CMYK JPEGs are read as Adobe-inverted
// CMYK and converted with PIL's formula; the EXIF orientation (JPEG APP1, PNG eXIf, WebP EXIF, TIFF's own
// tag; XMP tiff:Orientation as fallback) is applied with the same eight transposes.
// docs/design/image-decoding.md lists the choices and the known differences for rare formats.
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
