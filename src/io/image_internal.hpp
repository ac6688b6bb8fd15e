// Internal to src/io/image*.cpp and src/io/pdf.cpp: per-format decoders, limit checks and the EXIF
// orientation helpers shared by them. Not part of the public io/image.hpp interface.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/image.hpp"

namespace mv::image_detail {

// Throws kInvalidInput for zero or absurd sizes (either side 0 or over kMaxSide) and kTooLarge when
// width*height exceeds limits.max_pixels_per_page. `what` names the format (and page) in the message.
inline constexpr std::uint64_t kMaxSide = 1u << 24;
void check_dimensions(std::uint64_t width, std::uint64_t height, const ImageLimits& limits,
                      const std::string& name, std::string_view what);
// Throws kTooLarge when pages > limits.max_pages, kInvalidInput when there are none.
void check_page_count(std::uint64_t pages, const ImageLimits& limits, const std::string& name,
                      std::string_view what);

// EXIF orientation as PIL's Image.getexif() reads it from an EXIF blob (optionally starting with any
// number of "Exif\0\0" prefixes, then a TIFF header): nullopt when IFD0 has no usable 0x0112 entry,
// otherwise the first value (0 when the tag is present but not an integer, which means "no transpose").
std::optional<int> exif_orientation(std::span<const std::uint8_t> exif);
// PIL's XMP fallback: the first match of `tiff:Orientation(="|>)([0-9])`; nullopt when none.
std::optional<int> xmp_orientation(std::string_view xmp);
// EXIF first, XMP only when EXIF has no orientation tag; 1 when neither has one.
int resolve_orientation(std::optional<int> exif, std::optional<int> xmp);
// ImageOps.exif_transpose: 2 FLIP_LEFT_RIGHT, 3 ROTATE_180, 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE, 6 ROTATE_270,
// 7 TRANSVERSE, 8 ROTATE_90; anything else leaves the image as it is.
ImageRGB8 apply_orientation(ImageRGB8 image, int orientation);

// Allocates width*height*3 bytes (dimensions must have passed check_dimensions); kTooLarge on bad_alloc.
ImageRGB8 make_image(int width, int height, const std::string& name);

// Decoders. `max_pages` bounds how many pages are decoded (load_image wants only the first);
// page-count limits are checked against the whole file before anything is decoded.
ImageRGB8 decode_png(std::span<const std::uint8_t> data, const std::string& name, const ImageLimits& limits);
ImageRGB8 decode_jpeg(std::span<const std::uint8_t> data, const std::string& name, const ImageLimits& limits);
ImageRGB8 decode_webp(std::span<const std::uint8_t> data, const std::string& name, const ImageLimits& limits);
ImageRGB8 decode_bmp(std::span<const std::uint8_t> data, const std::string& name, const ImageLimits& limits);
std::vector<ImageRGB8> decode_tiff(std::span<const std::uint8_t> data, const std::string& name,
                                   const ImageLimits& limits, int max_pages);
std::vector<ImageRGB8> decode_pdf(std::span<const std::uint8_t> data, const std::string& name,
                                  const ImageLimits& limits, int max_pages);
int count_tiff_pages(std::span<const std::uint8_t> data, const std::string& name, const ImageLimits& limits);
int count_pdf_pages(std::span<const std::uint8_t> data, const std::string& name, const ImageLimits& limits);

}  // namespace mv::image_detail
