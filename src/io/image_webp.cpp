// WebP through libwebp: WebPGetFeatures for the size (checked before decoding), WebPDecodeRGBInto for the
// pixels (alpha dropped; RGB as stored, not premultiplied, which is what PIL's RGBA decode then
// convert("RGB") gives). Orientation from the first EXIF chunk (else XMP) of an extended (VP8X) file, as
// PIL reads them through WebPDemux. Animated WebP is not supported (PIL would take the first frame).
#include <webp/decode.h>

#include <cstring>

#include "core/error.hpp"
#include "io/image_internal.hpp"

namespace mv {

namespace {

std::uint32_t le32(const std::uint8_t* p) {
  return std::uint32_t{p[0]} | (std::uint32_t{p[1]} << 8) | (std::uint32_t{p[2]} << 16) |
         (std::uint32_t{p[3]} << 24);
}

// The first chunk with the given FourCC in a RIFF/WEBP container, bounds-checked; empty when absent.
std::span<const std::uint8_t> find_chunk(std::span<const std::uint8_t> data, const char* fourcc) {
  std::size_t pos = 12;
  // The RIFF size bounds the chunks; a file may carry trailing bytes after it.
  const std::size_t riff_end = std::min<std::size_t>(data.size(), std::size_t{le32(data.data() + 4)} + 8);
  while (pos + 8 <= riff_end) {
    const std::size_t size = le32(data.data() + pos + 4);
    const std::size_t payload = pos + 8;
    if (size > riff_end - payload) break;
    if (std::memcmp(data.data() + pos, fourcc, 4) == 0) return data.subspan(payload, size);
    pos = payload + size + (size & 1);
  }
  return {};
}

}  // namespace

namespace image_detail {

ImageRGB8 decode_webp(std::span<const std::uint8_t> data, const std::string& name,
                      const ImageLimits& limits) {
  WebPBitstreamFeatures features;
  const VP8StatusCode status = WebPGetFeatures(data.data(), data.size(), &features);
  switch (status) {
    case VP8_STATUS_OK:
      break;
    case VP8_STATUS_NOT_ENOUGH_DATA:
      fail(Errc::kInvalidInput, "{}: truncated WebP header", name);
    case VP8_STATUS_UNSUPPORTED_FEATURE:
      fail(Errc::kUnsupported, "{}: WebP feature not supported", name);
    default:
      fail(Errc::kInvalidInput, "{}: invalid WebP (libwebp status {})", name, static_cast<int>(status));
  }
  if (features.has_animation) {
    fail(Errc::kUnsupported, "{}: animated WebP is not supported; save a single frame as PNG or JPEG", name);
  }
  if (features.width <= 0 || features.height <= 0) {
    fail(Errc::kInvalidInput, "{}: WebP image has an empty size {}x{}", name, features.width,
         features.height);
  }
  check_dimensions(static_cast<std::uint64_t>(features.width), static_cast<std::uint64_t>(features.height),
                   limits, name, "WebP image");
  ImageRGB8 image = make_image(features.width, features.height, name);
  const int stride = features.width * 3;
  if (WebPDecodeRGBInto(data.data(), data.size(), image.pixels.data(), image.pixels.size(), stride) ==
      nullptr) {
    fail(Errc::kInvalidInput, "{}: corrupt or truncated WebP", name);
  }

  // VP8X flags: 0x08 EXIF present, 0x04 XMP present (WebPDemux only exposes flagged chunks).
  int orientation = 1;
  const auto vp8x = find_chunk(data, "VP8X");
  if (!vp8x.empty()) {
    const std::uint8_t flags = vp8x[0];
    std::optional<int> exif;
    std::optional<int> xmp;
    if (flags & 0x08) {
      const auto chunk = find_chunk(data, "EXIF");
      if (!chunk.empty()) exif = exif_orientation(chunk);
    }
    if (flags & 0x04) {
      const auto chunk = find_chunk(data, "XMP ");
      if (!chunk.empty()) xmp = xmp_orientation({reinterpret_cast<const char*>(chunk.data()), chunk.size()});
    }
    orientation = resolve_orientation(exif, xmp);
  }
  return apply_orientation(std::move(image), orientation);
}

}  // namespace image_detail

}  // namespace mv
