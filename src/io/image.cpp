// Format sniffing, limits, EXIF orientation and the public entry points of io/image.hpp. The per-format
// decoders live in image_png.cpp, image_jpeg.cpp, image_tiff.cpp, image_webp.cpp, image_bmp.cpp and pdf.cpp.
#include "io/image.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <new>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "io/image_internal.hpp"

namespace mv {

namespace {

constexpr std::array<std::uint8_t, 8> kPngMagic{0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
constexpr std::array<std::uint8_t, 3> kJpegMagic{0xFF, 0xD8, 0xFF};

bool starts_with(std::span<const std::uint8_t> data, std::span<const std::uint8_t> magic) {
  return data.size() >= magic.size() && std::memcmp(data.data(), magic.data(), magic.size()) == 0;
}

bool starts_with(std::span<const std::uint8_t> data, std::string_view magic) {
  return data.size() >= magic.size() && std::memcmp(data.data(), magic.data(), magic.size()) == 0;
}

// poppler accepts a PDF header anywhere in the first kilobyte (some producers prepend junk).
bool has_pdf_header(std::span<const std::uint8_t> head) {
  const std::size_t n = std::min<std::size_t>(head.size(), 1024);
  constexpr std::string_view kPdf = "%PDF-";
  if (n < kPdf.size()) return false;
  for (std::size_t i = 0; i + kPdf.size() <= n; ++i) {
    if (std::memcmp(head.data() + i, kPdf.data(), kPdf.size()) == 0) return true;
  }
  return false;
}

// True when `data` is shorter than a known signature and equal to its beginning: a file cut inside its
// magic number is truncated, not of an unknown format.
bool is_truncated_signature(std::span<const std::uint8_t> data) {
  auto prefix_of = [&](const void* magic, std::size_t size) {
    return data.size() < size && std::memcmp(data.data(), magic, data.size()) == 0;
  };
  if (prefix_of(kPngMagic.data(), kPngMagic.size()) || prefix_of(kJpegMagic.data(), kJpegMagic.size()) ||
      prefix_of("II*\0", 4) || prefix_of("MM\0*", 4) || prefix_of("%PDF-", 5) || prefix_of("BM", 2)) {
    return true;
  }
  // RIFF, a 4-byte size, WEBP: cut anywhere in the first 12 bytes.
  if (data.size() >= 12 || std::memcmp(data.data(), "RIFF", std::min<std::size_t>(data.size(), 4)) != 0) {
    return false;
  }
  return data.size() <= 8 || std::memcmp(data.data() + 8, "WEBP", data.size() - 8) == 0;
}

std::vector<ImageRGB8> decode_pages(std::span<const std::uint8_t> data, const std::string& name,
                                    const ImageLimits& limits, int max_pages) {
  using namespace image_detail;
  if (data.empty()) fail(Errc::kInvalidInput, "{}: empty file, not an image", name);
  const ImageFormat format = sniff_image_format(data);
  std::vector<ImageRGB8> pages;
  switch (format) {
    case ImageFormat::kPng:
      pages.push_back(decode_png(data, name, limits));
      break;
    case ImageFormat::kJpeg:
      pages.push_back(decode_jpeg(data, name, limits));
      break;
    case ImageFormat::kWebp:
      pages.push_back(decode_webp(data, name, limits));
      break;
    case ImageFormat::kBmp:
      pages.push_back(decode_bmp(data, name, limits));
      break;
    case ImageFormat::kTiff:
      pages = decode_tiff(data, name, limits, max_pages);
      break;
    case ImageFormat::kPdf:
      pages = decode_pdf(data, name, limits, max_pages);
      break;
    case ImageFormat::kUnknown:
      if (is_truncated_signature(data)) {
        fail(Errc::kInvalidInput, "{}: truncated file ({} bytes, cut inside the format signature)", name,
             data.size());
      }
      fail(Errc::kUnsupported,
           "{}: unsupported or unrecognised image format (expected PNG, JPEG, TIFF, WebP, BMP or PDF)", name);
  }
  spdlog::debug("decoded {} ({}, {} bytes): {} page(s), first {}x{}", name, image_format_name(format),
                data.size(), pages.size(), pages.empty() ? 0 : pages[0].width,
                pages.empty() ? 0 : pages[0].height);
  return pages;
}

std::uint32_t read_u32(const std::uint8_t* p, bool big_endian) {
  return big_endian
             ? (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3]
             : (std::uint32_t{p[3]} << 24) | (std::uint32_t{p[2]} << 16) | (std::uint32_t{p[1]} << 8) | p[0];
}

std::uint16_t read_u16(const std::uint8_t* p, bool big_endian) {
  return static_cast<std::uint16_t>(big_endian ? (p[0] << 8) | p[1] : (p[1] << 8) | p[0]);
}

}  // namespace

ImageFormat sniff_image_format(std::span<const std::uint8_t> head) noexcept {
  if (starts_with(head, std::span<const std::uint8_t>(kPngMagic))) return ImageFormat::kPng;
  if (starts_with(head, std::span<const std::uint8_t>(kJpegMagic))) return ImageFormat::kJpeg;
  if (starts_with(head, std::string_view("II*\0", 4)) || starts_with(head, std::string_view("MM\0*", 4)) ||
      starts_with(head, std::string_view("II+\0", 4)) || starts_with(head, std::string_view("MM\0+", 4))) {
    return ImageFormat::kTiff;
  }
  if (head.size() >= 12 && starts_with(head, std::string_view("RIFF")) &&
      std::memcmp(head.data() + 8, "WEBP", 4) == 0) {
    return ImageFormat::kWebp;
  }
  if (starts_with(head, std::string_view("BM"))) return ImageFormat::kBmp;
  if (has_pdf_header(head)) return ImageFormat::kPdf;
  return ImageFormat::kUnknown;
}

const char* image_format_name(ImageFormat f) noexcept {
  switch (f) {
    case ImageFormat::kPng:
      return "png";
    case ImageFormat::kJpeg:
      return "jpeg";
    case ImageFormat::kTiff:
      return "tiff";
    case ImageFormat::kWebp:
      return "webp";
    case ImageFormat::kBmp:
      return "bmp";
    case ImageFormat::kPdf:
      return "pdf";
    case ImageFormat::kUnknown:
      break;
  }
  return "unknown";
}

std::vector<ImageRGB8> decode_image_pages(std::span<const std::uint8_t> data, const std::string& name,
                                          const ImageLimits& limits) {
  return decode_pages(data, name, limits, limits.max_pages);
}

std::vector<ImageRGB8> load_image_pages(const std::filesystem::path& path, const ImageLimits& limits) {
  const MappedFile file(path);
  return decode_pages(file.bytes(), path.string(), limits, limits.max_pages);
}

ImageRGB8 load_image(const std::filesystem::path& path, const ImageLimits& limits) {
  const MappedFile file(path);
  auto pages = decode_pages(file.bytes(), path.string(), limits, 1);
  MV_CHECK(!pages.empty(), "decoder returned no page for {}", path.string());
  return std::move(pages.front());
}

int count_pages(const std::filesystem::path& path, const ImageLimits& limits) {
  const MappedFile file(path);
  const auto data = file.bytes();
  const std::string name = path.string();
  if (data.empty()) fail(Errc::kInvalidInput, "{}: empty file, not an image", name);
  switch (sniff_image_format(data)) {
    case ImageFormat::kTiff:
      return image_detail::count_tiff_pages(data, name, limits);
    case ImageFormat::kPdf:
      return image_detail::count_pdf_pages(data, name, limits);
    case ImageFormat::kUnknown:
      if (is_truncated_signature(data)) fail(Errc::kInvalidInput, "{}: truncated file", name);
      fail(Errc::kUnsupported,
           "{}: unsupported or unrecognised image format (expected PNG, JPEG, TIFF, WebP, BMP or PDF)", name);
    default:
      return 1;
  }
}

namespace image_detail {

void check_dimensions(std::uint64_t width, std::uint64_t height, const ImageLimits& limits,
                      const std::string& name, std::string_view what) {
  if (width == 0 || height == 0) {
    fail(Errc::kInvalidInput, "{}: {} has an empty size {}x{}", name, what, width, height);
  }
  if (width > kMaxSide || height > kMaxSide) {
    fail(Errc::kInvalidInput, "{}: {} claims an absurd size {}x{} (more than {} pixels on a side)", name,
         what, width, height, kMaxSide);
  }
  const std::uint64_t pixels = width * height;  // both <= 2^24: no overflow
  if (pixels > limits.max_pixels_per_page) {
    fail(Errc::kTooLarge, "{}: {} is {}x{} = {} pixels, over the limit of {} pixels per page", name, what,
         width, height, pixels, limits.max_pixels_per_page);
  }
}

void check_page_count(std::uint64_t pages, const ImageLimits& limits, const std::string& name,
                      std::string_view what) {
  if (pages == 0) fail(Errc::kInvalidInput, "{}: {} has no pages", name, what);
  if (limits.max_pages < 0 || pages > static_cast<std::uint64_t>(limits.max_pages)) {
    fail(Errc::kTooLarge, "{}: {} has {} pages, over the limit of {}", name, what, pages, limits.max_pages);
  }
}

ImageRGB8 make_image(int width, int height, const std::string& name) {
  ImageRGB8 image;
  image.width = width;
  image.height = height;
  try {
    image.pixels.resize(static_cast<std::size_t>(width) * static_cast<std::size_t>(height) * 3);
  } catch (const std::bad_alloc&) {
    fail(Errc::kTooLarge, "{}: not enough memory for a {}x{} image", name, width, height);
  }
  return image;
}

std::optional<int> exif_orientation(std::span<const std::uint8_t> exif) {
  // Exif.load strips every leading "Exif\0\0", then reads a TIFF header and IFD0.
  constexpr std::string_view kPrefix("Exif\0\0", 6);
  while (exif.size() >= kPrefix.size() && std::memcmp(exif.data(), kPrefix.data(), kPrefix.size()) == 0) {
    exif = exif.subspan(kPrefix.size());
  }
  if (exif.size() < 8) return std::nullopt;
  bool big_endian;
  if (std::memcmp(exif.data(), "II*\0", 4) == 0) {
    big_endian = false;
  } else if (std::memcmp(exif.data(), "MM\0*", 4) == 0) {
    big_endian = true;
  } else {
    return std::nullopt;  // not a classic TIFF header (PIL raises here; we ignore the broken block)
  }
  const std::uint8_t* base = exif.data();
  const std::size_t size = exif.size();
  const std::uint64_t ifd = read_u32(base + 4, big_endian);
  if (ifd > size || size - ifd < 2) return std::nullopt;
  const unsigned entries = read_u16(base + ifd, big_endian);
  std::optional<int> result;
  for (unsigned i = 0; i < entries; ++i) {
    const std::uint64_t at = ifd + 2 + 12ull * i;
    if (at + 12 > size) break;  // PIL stops at a truncated directory and keeps what it has read
    const std::uint8_t* e = base + at;
    const unsigned tag = read_u16(e, big_endian);
    const unsigned type = read_u16(e + 2, big_endian);
    const std::uint64_t count = read_u32(e + 4, big_endian);
    if (tag != 0x0112) continue;
    // Unit sizes of the TIFF field types PIL knows; others are skipped (not stored).
    unsigned unit = 0;
    switch (type) {
      case 1:
      case 2:
      case 6:
      case 7:
        unit = 1;
        break;
      case 3:
      case 8:
        unit = 2;
        break;
      case 4:
      case 9:
      case 11:
      case 13:
        unit = 4;
        break;
      case 5:
      case 10:
      case 12:
      case 16:
      case 17:
      case 18:
        unit = 8;
        break;
      default:
        continue;
    }
    const std::uint64_t bytes = count * unit;
    if (bytes == 0) continue;  // empty values are not stored either
    const std::uint8_t* value = e + 8;
    if (bytes > 4) {
      const std::uint64_t offset = read_u32(e + 8, big_endian);
      if (offset > size || size - offset < bytes) continue;  // PIL warns and skips a value past the end
      value = base + offset;
    }
    // The tag is specified with one value: PIL keeps the first of several.
    int v = 0;
    switch (type) {
      case 1:
        v = value[0];
        break;
      case 6:
        v = static_cast<std::int8_t>(value[0]);
        break;
      case 3:
        v = read_u16(value, big_endian);
        break;
      case 8:
        v = static_cast<std::int16_t>(read_u16(value, big_endian));
        break;
      case 4:
      case 13: {
        const std::uint32_t u = read_u32(value, big_endian);
        v = u <= 8 ? static_cast<int>(u) : 0;
        break;
      }
      case 9: {
        const auto s = static_cast<std::int32_t>(read_u32(value, big_endian));
        v = s >= 0 && s <= 8 ? s : 0;
        break;
      }
      case 5:
      case 10: {  // a rational equal to an integer compares equal to it in PIL's lookup
        const std::uint32_t num = read_u32(value, big_endian), den = read_u32(value + 4, big_endian);
        if (type == 5) {
          v = den != 0 && num % den == 0 && num / den <= 8 ? static_cast<int>(num / den) : 0;
        } else {
          const auto sn = static_cast<std::int32_t>(num), sd = static_cast<std::int32_t>(den);
          v = sd > 0 && sn >= 0 && sn % sd == 0 && sn / sd <= 8 ? sn / sd : 0;
        }
        break;
      }
      default:
        v = 0;
        break;  // strings, bytes, floats, 64-bit values: no transpose
    }
    result = v < 0 ? 0 : v;  // a later duplicate entry replaces an earlier one, as in PIL
  }
  return result;
}

std::optional<int> xmp_orientation(std::string_view xmp) {
  constexpr std::string_view kKey = "tiff:Orientation";
  std::size_t pos = 0;
  while ((pos = xmp.find(kKey, pos)) != std::string_view::npos) {
    const std::size_t after = pos + kKey.size();
    auto digit_at = [&](std::size_t i) { return i < xmp.size() && xmp[i] >= '0' && xmp[i] <= '9'; };
    if (after + 1 < xmp.size() && xmp[after] == '=' && xmp[after + 1] == '"' && digit_at(after + 2)) {
      return xmp[after + 2] - '0';
    }
    if (after < xmp.size() && xmp[after] == '>' && digit_at(after + 1)) return xmp[after + 1] - '0';
    pos += 1;
  }
  return std::nullopt;
}

int resolve_orientation(std::optional<int> exif, std::optional<int> xmp) {
  if (exif) return *exif;
  if (xmp) return *xmp;
  return 1;
}

ImageRGB8 apply_orientation(ImageRGB8 image, int orientation) {
  if (orientation < 2 || orientation > 8) return image;
  const int w = image.width, h = image.height;
  const bool swap = orientation >= 5;
  ImageRGB8 out;
  out.width = swap ? h : w;
  out.height = swap ? w : h;
  out.pixels.resize(image.pixels.size());
  // For each output pixel (x, y), the source pixel (sx, sy) per PIL's Geometry.c transposes.
  for (int y = 0; y < out.height; ++y) {
    std::uint8_t* dst = out.row(y);
    for (int x = 0; x < out.width; ++x) {
      int sx = x, sy = y;
      switch (orientation) {
        case 2:
          sx = w - 1 - x;
          sy = y;
          break;  // FLIP_LEFT_RIGHT
        case 3:
          sx = w - 1 - x;
          sy = h - 1 - y;
          break;  // ROTATE_180
        case 4:
          sx = x;
          sy = h - 1 - y;
          break;  // FLIP_TOP_BOTTOM
        case 5:
          sx = y;
          sy = x;
          break;  // TRANSPOSE
        case 6:
          sx = y;
          sy = h - 1 - x;
          break;  // ROTATE_270 (90 degrees clockwise)
        case 7:
          sx = w - 1 - y;
          sy = h - 1 - x;
          break;  // TRANSVERSE
        case 8:
          sx = w - 1 - y;
          sy = x;
          break;  // ROTATE_90 (counter-clockwise)
      }
      const std::uint8_t* src = image.row(sy) + static_cast<std::size_t>(sx) * 3;
      dst[x * 3 + 0] = src[0];
      dst[x * 3 + 1] = src[1];
      dst[x * 3 + 2] = src[2];
    }
  }
  return out;
}

}  // namespace image_detail

}  // namespace mv
