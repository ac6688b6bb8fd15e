// PNG through libpng's classic API, converted to RGB the way PIL's PngImagePlugin + convert("RGB") does:
//   gray 1/2/4/8-bit  -> "1"/"L;2"/"L;4"/"L": values scaled to 0..255 (x255, x85, x17), replicated
//   gray 16-bit       -> "I;16" then I16_RGB: min(value, 255), i.e. any value over 255 is white
//                        (PIL's behaviour, kept on purpose for parity; not the high byte)
//   RGB/RGBA 16-bit   -> "RGB;16B"/"RGBA;16B": the high byte of each sample
//   gray+alpha 8/16   -> "LA"/"LA;16B": gray (high byte at 16 bits) replicated, alpha dropped
//   RGBA              -> alpha dropped (no compositing)
//   palette 1/2/4/8   -> PLTE lookup; indices past the PLTE entries give black (PIL's zeroed palette);
//                        tRNS is ignored
// No gamma, sBIT or colour-profile transform is applied. Orientation comes from an eXIf chunk (or a
// "Raw profile type exif" text chunk), else from XMP (iTXt "XML:com.adobe.xmp"), as PIL's getexif().
//
// libpng reports errors by longjmp. Every function that calls into libpng sets its own jump buffer and
// holds no C++ object with a destructor, so the jump skips nothing; the error text is copied into a plain
// buffer and turned into mv::Error after that function has returned.
#include <png.h>

#include <csetjmp>
#include <cstdio>
#include <cstring>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "io/image_internal.hpp"

namespace mv {

namespace {

struct PngState {
  const std::uint8_t* data = nullptr;
  std::size_t size = 0;
  std::size_t pos = 0;
  char error[256] = {};
};

void on_png_error(png_structp png, png_const_charp message) {
  auto* state = static_cast<PngState*>(png_get_error_ptr(png));
  if (state != nullptr) std::snprintf(state->error, sizeof(state->error), "%s", message ? message : "error");
  png_longjmp(png, 1);
}

void on_png_warning(png_structp, png_const_charp message) {
  spdlog::trace("libpng warning: {}", message ? message : "");
}

void on_png_read(png_structp png, png_bytep out, size_t length) {
  auto* state = static_cast<PngState*>(png_get_io_ptr(png));
  if (length > state->size - state->pos) png_error(png, "unexpected end of file (truncated data)");
  std::memcpy(out, state->data + state->pos, length);
  state->pos += length;
}

struct PngReader {
  png_structp png = nullptr;
  png_infop info = nullptr;
  png_infop end_info = nullptr;
  PngReader() = default;
  PngReader(const PngReader&) = delete;
  PngReader& operator=(const PngReader&) = delete;
  ~PngReader() {
    if (png != nullptr) png_destroy_read_struct(&png, info ? &info : nullptr, end_info ? &end_info : nullptr);
  }
};

struct PngHeader {
  png_uint_32 width = 0;
  png_uint_32 height = 0;
  int bit_depth = 0;
  int color_type = 0;
  int interlace = 0;
};

// Phase 1: signature, IHDR and every chunk before the first IDAT.
bool read_png_header(png_structp png, png_infop info, PngState* state, PngHeader* header) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_read_fn(png, state, on_png_read);
  png_set_user_limits(png, 0x7fffffffL, 0x7fffffffL);  // our own limits were checked from IHDR already
  png_read_info(png, info);
  int compression = 0, filter = 0;
  png_get_IHDR(png, info, &header->width, &header->height, &header->bit_depth, &header->color_type,
               &header->interlace, &compression, &filter);
  return true;
}

// Phase 2: the transforms (sub-byte samples unpacked to one byte each, nothing else).
bool set_png_transforms(png_structp png, png_infop info, const PngHeader* header, int* passes) {
  if (setjmp(png_jmpbuf(png))) return false;
  if (header->bit_depth < 8) png_set_packing(png);
  *passes = header->interlace != PNG_INTERLACE_NONE ? png_set_interlace_handling(png) : 1;
  png_read_update_info(png, info);
  return true;
}

struct RowConverter {
  int color_type = 0;
  int bit_depth = 0;
  std::uint8_t palette[256 * 3] = {};

  void convert(const std::uint8_t* in, std::uint8_t* out, std::size_t width) const {
    switch (color_type) {
      case PNG_COLOR_TYPE_GRAY:
        if (bit_depth == 16) {
          for (std::size_t x = 0; x < width; ++x, in += 2, out += 3) {
            const std::uint8_t v = in[0] == 0 ? in[1] : 255;  // big-endian sample: in[0] is the high byte
            out[0] = out[1] = out[2] = v;
          }
        } else {
          const unsigned scale = bit_depth == 1 ? 255 : bit_depth == 2 ? 85 : bit_depth == 4 ? 17 : 1;
          for (std::size_t x = 0; x < width; ++x, ++in, out += 3) {
            const auto v = static_cast<std::uint8_t>(in[0] * scale);
            out[0] = out[1] = out[2] = v;
          }
        }
        break;
      case PNG_COLOR_TYPE_GRAY_ALPHA: {
        const std::size_t step = bit_depth == 16 ? 4 : 2;
        for (std::size_t x = 0; x < width; ++x, in += step, out += 3) out[0] = out[1] = out[2] = in[0];
        break;
      }
      case PNG_COLOR_TYPE_RGB:
      case PNG_COLOR_TYPE_RGB_ALPHA: {
        const std::size_t channels = color_type == PNG_COLOR_TYPE_RGB ? 3 : 4;
        const std::size_t bytes = bit_depth == 16 ? 2 : 1;
        const std::size_t step = channels * bytes;
        for (std::size_t x = 0; x < width; ++x, in += step, out += 3) {
          out[0] = in[0];
          out[1] = in[bytes];
          out[2] = in[2 * bytes];
        }
        break;
      }
      case PNG_COLOR_TYPE_PALETTE:
        for (std::size_t x = 0; x < width; ++x, ++in, out += 3) {
          const std::uint8_t* c = palette + std::size_t{in[0]} * 3;
          out[0] = c[0];
          out[1] = c[1];
          out[2] = c[2];
        }
        break;
    }
  }
};

// Phase 3: the pixels. Non-interlaced images go row by row through `row`; interlaced ones are read whole
// into `rows` (libpng needs every pass) and converted afterwards by the caller.
bool read_png_rows(png_structp png, PngState*, const RowConverter* conv, ImageRGB8* image, std::uint8_t* row,
                   png_bytepp rows, bool interlaced) {
  if (setjmp(png_jmpbuf(png))) return false;
  if (interlaced) {
    png_read_image(png, rows);
  } else {
    for (int y = 0; y < image->height; ++y) {
      png_read_row(png, row, nullptr);
      conv->convert(row, image->row(y), static_cast<std::size_t>(image->width));
    }
  }
  return true;
}

// Phase 4: chunks after the image data (eXIf and text may come there). PIL stops quietly at a broken or
// truncated tail once the pixels are complete, and so do we.
bool read_png_end(png_structp png, png_infop end_info) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_end(png, end_info);
  return true;
}

struct PngMeta {
  std::optional<int> exif;
  std::optional<int> xmp;
  bool has_exif_chunk = false;
};

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// ImageMagick's "Raw profile type exif" text: a header of three lines, then the EXIF block in hex.
std::optional<std::vector<std::uint8_t>> raw_profile_exif(std::string_view text) {
  std::size_t pos = 0;
  for (int i = 0; i < 3; ++i) {
    pos = text.find('\n', pos);
    if (pos == std::string_view::npos) return std::nullopt;
    ++pos;
  }
  std::vector<std::uint8_t> bytes;
  int high = -1;
  for (; pos < text.size(); ++pos) {
    const char c = text[pos];
    if (c == '\n' || (high < 0 && (c == ' ' || c == '\t' || c == '\r'))) continue;
    const int v = hex_value(c);
    if (v < 0) return std::nullopt;  // bytes.fromhex would raise
    if (high < 0) {
      high = v;
    } else {
      bytes.push_back(static_cast<std::uint8_t>(high * 16 + v));
      high = -1;
    }
  }
  if (high >= 0) return std::nullopt;
  return bytes;
}

void collect_png_meta(png_structp png, png_infop info, PngMeta& meta) {
  if (info == nullptr) return;
#ifdef PNG_eXIf_SUPPORTED
  png_uint_32 exif_size = 0;
  png_bytep exif = nullptr;
  if (png_get_eXIf_1(png, info, &exif_size, &exif) != 0 && exif != nullptr) {
    meta.has_exif_chunk = true;
    meta.exif = image_detail::exif_orientation({exif, exif_size});
  }
#endif
  png_textp text = nullptr;
  int count = 0;
  if (png_get_text(png, info, &text, &count) > 0 && text != nullptr) {
    for (int i = 0; i < count; ++i) {
      if (text[i].key == nullptr || text[i].text == nullptr) continue;
      const std::string_view key(text[i].key);
      const std::string_view value(text[i].text);  // libpng keeps every text NUL-terminated
      if (key == "XML:com.adobe.xmp") {
        meta.xmp = image_detail::xmp_orientation(value);  // the last chunk with the key wins, as in PIL
      } else if (key == "Raw profile type exif" && !meta.has_exif_chunk) {
        if (auto bytes = raw_profile_exif(value)) meta.exif = image_detail::exif_orientation(*bytes);
      }
    }
  }
}

// From IHDR directly, so the limits hold before libpng allocates anything for the image.
void check_ihdr(std::span<const std::uint8_t> data, const std::string& name, const ImageLimits& limits) {
  if (data.size() < 24 || std::memcmp(data.data() + 12, "IHDR", 4) != 0) return;  // libpng reports it
  auto be32 = [&](std::size_t at) {
    return (std::uint32_t{data[at]} << 24) | (std::uint32_t{data[at + 1]} << 16) |
           (std::uint32_t{data[at + 2]} << 8) | data[at + 3];
  };
  image_detail::check_dimensions(be32(16), be32(20), limits, name, "PNG image");
}

void write_png_data(png_structp png, png_bytep data, size_t length) {
  auto* out = static_cast<std::string*>(png_get_io_ptr(png));
  bool ok = true;
  try {
    out->append(reinterpret_cast<const char*>(data), length);
  } catch (...) {
    ok = false;
  }
  if (!ok) png_error(png, "out of memory while encoding");
}

void flush_png_data(png_structp) {}

bool encode_png(png_structp png, png_infop info, const ImageRGB8* image, std::string* out) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_write_fn(png, out, write_png_data, flush_png_data);
  png_set_IHDR(png, info, static_cast<png_uint_32>(image->width), static_cast<png_uint_32>(image->height), 8,
               PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < image->height; ++y) png_write_row(png, const_cast<png_bytep>(image->row(y)));
  png_write_end(png, info);
  return true;
}

}  // namespace

namespace image_detail {

ImageRGB8 decode_png(std::span<const std::uint8_t> data, const std::string& name, const ImageLimits& limits) {
  check_ihdr(data, name, limits);
  PngState state;
  state.data = data.data();
  state.size = data.size();
  PngReader reader;
  reader.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &state, on_png_error, on_png_warning);
  if (reader.png == nullptr) fail(Errc::kFailure, "{}: cannot initialise libpng", name);
  reader.info = png_create_info_struct(reader.png);
  reader.end_info = png_create_info_struct(reader.png);
  if (reader.info == nullptr || reader.end_info == nullptr)
    fail(Errc::kFailure, "{}: libpng out of memory", name);

  PngHeader header;
  if (!read_png_header(reader.png, reader.info, &state, &header)) {
    fail(Errc::kInvalidInput, "{}: invalid PNG: {}", name, state.error);
  }
  check_dimensions(header.width, header.height, limits, name, "PNG image");

  RowConverter conv;
  conv.color_type = header.color_type;
  conv.bit_depth = header.bit_depth;
  if (header.color_type == PNG_COLOR_TYPE_PALETTE) {
    png_colorp plte = nullptr;
    int entries = 0;
    if (png_get_PLTE(reader.png, reader.info, &plte, &entries) == 0 || plte == nullptr) {
      fail(Errc::kInvalidInput, "{}: invalid PNG: palette image without a PLTE chunk", name);
    }
    for (int i = 0; i < entries && i < 256; ++i) {
      conv.palette[i * 3 + 0] = plte[i].red;
      conv.palette[i * 3 + 1] = plte[i].green;
      conv.palette[i * 3 + 2] = plte[i].blue;
    }
  }

  int passes = 1;
  if (!set_png_transforms(reader.png, reader.info, &header, &passes)) {
    fail(Errc::kInvalidInput, "{}: invalid PNG: {}", name, state.error);
  }
  const std::size_t rowbytes = png_get_rowbytes(reader.png, reader.info);
  const std::size_t width = header.width;
  const std::size_t min_rowbytes = width * (header.bit_depth == 16 ? 2 : 1) *
                                   (header.color_type == PNG_COLOR_TYPE_RGB_ALPHA    ? 4
                                    : header.color_type == PNG_COLOR_TYPE_RGB        ? 3
                                    : header.color_type == PNG_COLOR_TYPE_GRAY_ALPHA ? 2
                                                                                     : 1);
  MV_CHECK(rowbytes >= min_rowbytes, "libpng row of {} bytes, expected at least {}", rowbytes, min_rowbytes);

  ImageRGB8 image = make_image(static_cast<int>(header.width), static_cast<int>(header.height), name);
  const bool interlaced = passes > 1;
  std::vector<std::uint8_t> buffer;
  std::vector<png_bytep> rows;
  try {
    buffer.resize(interlaced ? rowbytes * header.height : rowbytes);
    if (interlaced) {
      rows.resize(header.height);
      for (std::size_t y = 0; y < header.height; ++y) rows[y] = buffer.data() + y * rowbytes;
    }
  } catch (const std::bad_alloc&) {
    fail(Errc::kTooLarge, "{}: not enough memory to decode a {}x{} PNG", name, header.width, header.height);
  }
  if (!read_png_rows(reader.png, &state, &conv, &image, buffer.data(), rows.empty() ? nullptr : rows.data(),
                     interlaced)) {
    fail(Errc::kInvalidInput, "{}: corrupt or truncated PNG: {}", name, state.error);
  }
  if (interlaced) {
    for (std::size_t y = 0; y < header.height; ++y)
      conv.convert(rows[y], image.row(static_cast<int>(y)), width);
  }

  const bool tail_ok = read_png_end(reader.png, reader.end_info);
  if (!tail_ok) spdlog::debug("{}: ignoring a broken PNG tail after the image data: {}", name, state.error);
  PngMeta meta;
  collect_png_meta(reader.png, reader.info, meta);
  if (tail_ok) collect_png_meta(reader.png, reader.end_info, meta);
  return apply_orientation(std::move(image), resolve_orientation(meta.exif, meta.xmp));
}

}  // namespace image_detail

void save_png(const ImageRGB8& image, const std::filesystem::path& path) {
  if (image.width <= 0 || image.height <= 0 ||
      image.pixels.size() !=
          static_cast<std::size_t>(image.width) * static_cast<std::size_t>(image.height) * 3) {
    fail(Errc::kInvalidInput, "{}: cannot save an image of {}x{} with {} bytes of pixels", path.string(),
         image.width, image.height, image.pixels.size());
  }
  PngState state;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &state, on_png_error, on_png_warning);
  if (png == nullptr) fail(Errc::kFailure, "{}: cannot initialise libpng", path.string());
  png_infop info = png_create_info_struct(png);
  std::string encoded;
  const bool ok = info != nullptr && encode_png(png, info, &image, &encoded);
  png_destroy_write_struct(&png, info ? &info : nullptr);
  if (!ok) fail(Errc::kFailure, "{}: PNG encoding failed: {}", path.string(), state.error);
  write_file(path, encoded);
}

}  // namespace mv
