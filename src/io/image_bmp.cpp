// BMP through stb_image (compiled here with internal linkage, BMP only). The headers are read and checked
// here first: the size against the limits, and the file length against the pixel data the header
// promises, because stb_image pads a truncated file with zeros instead of failing (PIL reports it).
// Uncompressed and bit-field BMPs of 1/4/8/16/24/32 bits; RLE-compressed BMPs are not supported by
// stb_image. 16-bit (5-5-5/5-6-5) samples are widened by stb_image's bit replication, which can differ
// from PIL's by one level.
#include <climits>
#include <cstdlib>
#include <cstring>

#include "core/error.hpp"
#include "io/image_internal.hpp"

#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_BMP
#define STBI_NO_STDIO
#define STBI_NO_LINEAR
#define STBI_NO_HDR
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#endif
#include <stb_image.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace mv {

namespace {

std::uint32_t le32(const std::uint8_t* p) {
  return std::uint32_t{p[0]} | (std::uint32_t{p[1]} << 8) | (std::uint32_t{p[2]} << 16) |
         (std::uint32_t{p[3]} << 24);
}

std::uint16_t le16(const std::uint8_t* p) { return static_cast<std::uint16_t>(p[0] | (p[1] << 8)); }

struct BmpHeader {
  std::uint64_t width = 0;
  std::uint64_t height = 0;
  unsigned bits = 0;
  std::uint32_t compression = 0;
  std::uint32_t data_offset = 0;
};

BmpHeader read_bmp_header(std::span<const std::uint8_t> data, const std::string& name) {
  if (data.size() < 26) fail(Errc::kInvalidInput, "{}: truncated BMP header ({} bytes)", name, data.size());
  BmpHeader h;
  h.data_offset = le32(data.data() + 10);
  const std::uint32_t dib = le32(data.data() + 14);
  if (dib == 12) {  // OS/2 BITMAPCOREHEADER
    h.width = le16(data.data() + 18);
    h.height = le16(data.data() + 20);
    h.bits = le16(data.data() + 24);
  } else if (dib >= 40 && dib <= 124) {
    if (data.size() < 14 + 40)
      fail(Errc::kInvalidInput, "{}: truncated BMP header ({} bytes)", name, data.size());
    const auto w = static_cast<std::int32_t>(le32(data.data() + 18));
    const auto ht = static_cast<std::int32_t>(le32(data.data() + 22));
    if (w <= 0 || ht == 0 || ht == INT32_MIN) {
      fail(Errc::kInvalidInput, "{}: BMP header has an invalid size {}x{}", name, w, ht);
    }
    h.width = static_cast<std::uint64_t>(w);
    h.height =
        static_cast<std::uint64_t>(ht < 0 ? -static_cast<std::int64_t>(ht) : ht);  // negative: top-down
    h.bits = le16(data.data() + 28);
    h.compression = le32(data.data() + 30);
  } else {
    fail(Errc::kInvalidInput, "{}: invalid BMP (unknown header size {})", name, dib);
  }
  return h;
}

}  // namespace

namespace image_detail {

ImageRGB8 decode_bmp(std::span<const std::uint8_t> data, const std::string& name, const ImageLimits& limits) {
  const BmpHeader h = read_bmp_header(data, name);
  check_dimensions(h.width, h.height, limits, name, "BMP image");
  if (h.compression != 0 && h.compression != 3 && h.compression != 6) {
    fail(Errc::kUnsupported, "{}: compressed BMP (compression type {}) is not supported", name,
         h.compression);
  }
  if (h.bits != 1 && h.bits != 4 && h.bits != 8 && h.bits != 16 && h.bits != 24 && h.bits != 32) {
    fail(Errc::kInvalidInput, "{}: BMP with {} bits per pixel is not valid", name, h.bits);
  }
  const std::uint64_t stride = (h.width * h.bits + 31) / 32 * 4;
  const std::uint64_t needed = std::uint64_t{h.data_offset} + stride * h.height;
  if (data.size() < needed) {
    fail(Errc::kInvalidInput, "{}: truncated BMP: {} bytes, the header needs {}", name, data.size(), needed);
  }
  if (data.size() > static_cast<std::size_t>(INT_MAX)) fail(Errc::kTooLarge, "{}: BMP file over 2 GiB", name);

  int w = 0, ht = 0, comp = 0;
  const int length = static_cast<int>(data.size());
  if (stbi_info_from_memory(data.data(), length, &w, &ht, &comp) == 0) {
    fail(Errc::kInvalidInput, "{}: invalid BMP: {}", name, stbi_failure_reason());
  }
  // stb_image reports a top-down BMP's height as stored (negative).
  if (static_cast<std::uint64_t>(w) != h.width ||
      static_cast<std::uint64_t>(std::abs(std::int64_t{ht})) != h.height) {
    fail(Errc::kInvalidInput, "{}: invalid BMP: inconsistent size", name);
  }
  ImageRGB8 image = make_image(static_cast<int>(h.width), static_cast<int>(h.height), name);
  stbi_uc* pixels = stbi_load_from_memory(data.data(), length, &w, &ht, &comp, 3);
  if (pixels == nullptr) fail(Errc::kInvalidInput, "{}: corrupt BMP: {}", name, stbi_failure_reason());
  if (static_cast<std::uint64_t>(w) != h.width || static_cast<std::uint64_t>(ht) != h.height) {
    stbi_image_free(pixels);
    fail(Errc::kInvalidInput, "{}: invalid BMP: inconsistent size", name);
  }
  std::memcpy(image.pixels.data(), pixels, image.pixels.size());
  stbi_image_free(pixels);
  return image;
}

}  // namespace image_detail

}  // namespace mv
