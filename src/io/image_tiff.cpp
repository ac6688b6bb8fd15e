// TIFF through libtiff, read from memory. Every directory (IFD) is a page. Pixels come from libtiff's RGBA
// interface (TIFFReadRGBAImageOriented) asked for the file's own orientation, which gives the rows as stored
// (what PIL decodes); the Orientation tag is then applied as ImageOps.exif_transpose does for PIL, which
// reads it from the TIFF's own IFD (XMP tiff:Orientation when the tag is absent).
//
// Known differences from PIL for less common TIFFs (libtiff's RGBA interface converts them itself):
// 16-bit samples are rounded to 8 bits (PIL: high byte for RGB, clipping for 16-bit gray), 16-bit colour
// maps are scaled with rounding (PIL: value // 256), unassociated alpha is premultiplied before we drop it,
// and subsampled YCbCr is converted by libtiff rather than by libjpeg.
//
// libtiff's error and warning text goes to per-handle handlers (libtiff >= 4.5), never to stderr; a
// failing call becomes an mv::Error carrying the first error message.
#include <tiffio.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "core/error.hpp"
#include "core/log.hpp"
#include "io/image_internal.hpp"

namespace mv {

namespace {

using namespace image_detail;

constexpr tmsize_t kMaxLibtiffAllocation = tmsize_t{1} << 30;  // one strip/tile buffer, 1 GiB

struct TiffSource {
  const std::uint8_t* data = nullptr;
  std::uint64_t size = 0;
  std::uint64_t pos = 0;
  std::string error;  // first error reported by libtiff for this handle
};

tmsize_t tiff_read(thandle_t handle, void* buffer, tmsize_t size) {
  auto* src = static_cast<TiffSource*>(handle);
  if (size <= 0 || src->pos >= src->size) return 0;
  const std::uint64_t n = std::min<std::uint64_t>(static_cast<std::uint64_t>(size), src->size - src->pos);
  std::memcpy(buffer, src->data + src->pos, n);
  src->pos += n;
  return static_cast<tmsize_t>(n);
}

tmsize_t tiff_write(thandle_t, void*, tmsize_t) { return 0; }

toff_t tiff_seek(thandle_t handle, toff_t offset, int whence) {
  auto* src = static_cast<TiffSource*>(handle);
  if (whence == SEEK_SET) {
    src->pos = offset;
    return offset;
  }
  if (whence != SEEK_CUR && whence != SEEK_END) return static_cast<toff_t>(-1);
  const std::uint64_t base = whence == SEEK_CUR ? src->pos : src->size;
  // A relative offset may be negative (passed as a wrapped unsigned value).
  const auto delta = static_cast<std::int64_t>(offset);
  if (delta < 0 && static_cast<std::uint64_t>(-(delta + 1)) + 1 > base) return static_cast<toff_t>(-1);
  src->pos = base + static_cast<std::uint64_t>(delta);
  return src->pos;
}

int tiff_close(thandle_t) { return 0; }

toff_t tiff_size(thandle_t handle) { return static_cast<TiffSource*>(handle)->size; }

int tiff_map(thandle_t handle, void** base, toff_t* size) {
  auto* src = static_cast<TiffSource*>(handle);
  *base = const_cast<std::uint8_t*>(src->data);
  *size = src->size;
  return 1;
}

void tiff_unmap(thandle_t, void*, toff_t) {}

int on_tiff_error(TIFF*, void* user_data, const char* module, const char* format, va_list args) {
  auto* src = static_cast<TiffSource*>(user_data);
  char message[512];
  std::vsnprintf(message, sizeof(message), format, args);
  if (src != nullptr && src->error.empty()) {
    src->error = module != nullptr && *module ? fmt::format("{}: {}", module, message) : message;
  }
  return 1;  // handled: libtiff does not call the global (stderr) handler
}

int on_tiff_warning(TIFF*, void*, const char* module, const char* format, va_list args) {
  char message[512];
  std::vsnprintf(message, sizeof(message), format, args);
  spdlog::trace("libtiff warning: {}: {}", module ? module : "", message);
  return 1;
}

// Messages libtiff still sends through the process-wide handlers (no TIFF* at hand) go to the debug log.
void global_tiff_handler(const char* module, const char* format, va_list args) {
  char message[512];
  std::vsnprintf(message, sizeof(message), format, args);
  spdlog::debug("libtiff: {}: {}", module ? module : "", message);
}

void install_global_tiff_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    TIFFSetErrorHandler(global_tiff_handler);
    TIFFSetWarningHandler(global_tiff_handler);
  });
}

struct TiffFile {
  TiffSource src;
  TIFF* tif = nullptr;
  TiffFile() = default;
  TiffFile(const TiffFile&) = delete;
  TiffFile& operator=(const TiffFile&) = delete;
  ~TiffFile() {
    if (tif != nullptr) TIFFClose(tif);
  }
  std::string take_error(std::string_view fallback) {
    std::string e = src.error.empty() ? std::string(fallback) : src.error;
    src.error.clear();
    return e;
  }
};

void open_tiff(TiffFile& file, std::span<const std::uint8_t> data, const std::string& name) {
  install_global_tiff_handlers();
  file.src.data = data.data();
  file.src.size = data.size();
  TIFFOpenOptions* options = TIFFOpenOptionsAlloc();
  if (options == nullptr) fail(Errc::kFailure, "{}: libtiff out of memory", name);
  TIFFOpenOptionsSetErrorHandlerExtR(options, on_tiff_error, &file.src);
  TIFFOpenOptionsSetWarningHandlerExtR(options, on_tiff_warning, &file.src);
  TIFFOpenOptionsSetMaxSingleMemAlloc(options, kMaxLibtiffAllocation);
  file.tif = TIFFClientOpenExt(name.c_str(), "r", &file.src, tiff_read, tiff_write, tiff_seek, tiff_close,
                               tiff_size, tiff_map, tiff_unmap, options);
  TIFFOpenOptionsFree(options);
  if (file.tif == nullptr) {
    fail(Errc::kInvalidInput, "{}: invalid TIFF: {}", name, file.take_error("cannot read the header"));
  }
}

// Walks the directory chain up to one past the limit (so a file with a million pages costs nothing) and
// returns to the first directory.
std::uint64_t count_directories(TiffFile& file, const ImageLimits& limits, const std::string& name) {
  std::uint64_t pages = 1;  // TIFFClientOpen has read the first directory
  const std::uint64_t stop = limits.max_pages < 0 ? 1 : static_cast<std::uint64_t>(limits.max_pages) + 1;
  while (pages < stop && TIFFReadDirectory(file.tif) != 0) ++pages;
  if (!file.src.error.empty()) {  // the chain does not end with a zero link: a broken or cut-off file
    fail(Errc::kInvalidInput, "{}: corrupt or truncated TIFF after page {}: {}", name, pages,
         file.take_error(""));
  }
  check_page_count(pages, limits, name, "TIFF file");
  if (TIFFSetDirectory(file.tif, 0) == 0) {
    fail(Errc::kInvalidInput, "{}: invalid TIFF: {}", name,
         file.take_error("cannot return to the first page"));
  }
  return pages;
}

struct PageInfo {
  std::uint32_t width = 0;
  std::uint32_t height = 0;
  int orientation = 1;       // what exif_transpose will apply
  std::uint16_t stored = 0;  // the Orientation tag as stored (0 when absent)
};

PageInfo read_page_info(TiffFile& file, tdir_t page, const ImageLimits& limits, const std::string& name) {
  if (TIFFSetDirectory(file.tif, page) == 0) {
    fail(Errc::kInvalidInput, "{}: invalid TIFF page {}: {}", name, page + 1, file.take_error("unreadable"));
  }
  PageInfo info;
  if (TIFFGetField(file.tif, TIFFTAG_IMAGEWIDTH, &info.width) == 0 ||
      TIFFGetField(file.tif, TIFFTAG_IMAGELENGTH, &info.height) == 0) {
    fail(Errc::kInvalidInput, "{}: invalid TIFF page {}: no image size", name, page + 1);
  }
  check_dimensions(info.width, info.height, limits, name, fmt::format("TIFF page {}", page + 1));
  std::uint16_t orientation = 0;
  if (TIFFGetField(file.tif, TIFFTAG_ORIENTATION, &orientation) != 0) {
    info.stored = orientation;
    info.orientation = orientation;
  } else {
    std::uint32_t count = 0;
    void* xmp = nullptr;
    std::optional<int> from_xmp;
    if (TIFFGetField(file.tif, TIFFTAG_XMLPACKET, &count, &xmp) != 0 && xmp != nullptr) {
      from_xmp = xmp_orientation(std::string_view(static_cast<const char*>(xmp), count));
    }
    info.orientation = resolve_orientation(std::nullopt, from_xmp);
  }
  return info;
}

ImageRGB8 read_page(TiffFile& file, tdir_t page, const PageInfo& info, const std::string& name) {
  if (TIFFSetDirectory(file.tif, page) == 0) {
    fail(Errc::kInvalidInput, "{}: invalid TIFF page {}: {}", name, page + 1, file.take_error("unreadable"));
  }
  char reason[1024] = {};
  if (TIFFRGBAImageOK(file.tif, reason) == 0) {
    file.src.error.clear();
    fail(Errc::kUnsupported, "{}: TIFF page {} is not supported: {}", name, page + 1, reason);
  }
  ImageRGB8 image = make_image(static_cast<int>(info.width), static_cast<int>(info.height), name);
  std::vector<std::uint32_t> raster;
  try {
    raster.resize(static_cast<std::size_t>(info.width) * info.height);
  } catch (const std::bad_alloc&) {
    fail(Errc::kTooLarge, "{}: not enough memory for TIFF page {}", name, page + 1);
  }
  // Asking for the stored orientation makes libtiff return the rows as stored, top row first.
  const int wanted = info.stored >= 1 && info.stored <= 8 ? info.stored : ORIENTATION_TOPLEFT;
  if (TIFFReadRGBAImageOriented(file.tif, info.width, info.height, raster.data(), wanted, 1) == 0) {
    fail(Errc::kInvalidInput, "{}: corrupt or truncated TIFF page {}: {}", name, page + 1,
         file.take_error("cannot decode the pixels"));
  }
  const std::size_t count = raster.size();
  std::uint8_t* out = image.pixels.data();
  for (std::size_t i = 0; i < count; ++i, out += 3) {
    const std::uint32_t p = raster[i];
    out[0] = static_cast<std::uint8_t>(TIFFGetR(p));
    out[1] = static_cast<std::uint8_t>(TIFFGetG(p));
    out[2] = static_cast<std::uint8_t>(TIFFGetB(p));
  }
  return apply_orientation(std::move(image), info.orientation);
}

}  // namespace

namespace image_detail {

std::vector<ImageRGB8> decode_tiff(std::span<const std::uint8_t> data, const std::string& name,
                                   const ImageLimits& limits, int max_pages) {
  TiffFile file;
  open_tiff(file, data, name);
  const std::uint64_t pages = count_directories(file, limits, name);
  const auto wanted = static_cast<tdir_t>(std::min<std::uint64_t>(pages, max_pages < 1 ? 1 : max_pages));
  std::vector<PageInfo> infos;
  for (tdir_t page = 0; page < wanted; ++page) infos.push_back(read_page_info(file, page, limits, name));
  std::vector<ImageRGB8> images;
  images.reserve(wanted);
  for (tdir_t page = 0; page < wanted; ++page) images.push_back(read_page(file, page, infos[page], name));
  return images;
}

int count_tiff_pages(std::span<const std::uint8_t> data, const std::string& name, const ImageLimits& limits) {
  TiffFile file;
  open_tiff(file, data, name);
  return static_cast<int>(count_directories(file, limits, name));
}

}  // namespace image_detail

}  // namespace mv
