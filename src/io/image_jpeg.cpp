// JPEG through libjpeg-turbo's libjpeg API with PIL's settings (islow IDCT, fancy upsampling, libjpeg's own
// YCbCr->RGB), so the pixels equal PIL.Image.open(...).convert("RGB"):
//   1 component   -> "L", replicated
//   3 components  -> libjpeg converts to RGB (YCbCr or Adobe RGB as libjpeg detects it)
//   4 components  -> PIL always reads CMYK JPEGs as "CMYK;I" (Adobe inverted, whatever the APP14 says) and
//                    converts with cmyk2rgb: nk = 255 - K', out = nk - MULDIV255(C', nk), C' = 255 - C.
//                    libjpeg itself turns YCCK into CMYK first.
// EXIF orientation: the first APP1 "Exif\0\0" block (PIL keeps the first), IFD0 tag 0x0112, else an XMP
// APP1 block (the last one, as PIL) with tiff:Orientation; applied as ImageOps.exif_transpose.
//
// libjpeg reports errors through error_exit, which here longjmps back into the function that called
// libjpeg; those functions hold no C++ object with a destructor. "Premature end of JPEG file" is only a
// warning to libjpeg (it pads with gray); PIL fails on a truncated file, so we make it an error.
#include <cstdio>
// clang-format off
#include <jpeglib.h>
#include <jerror.h>
// clang-format on

#include <csetjmp>
#include <cstring>

#include "core/error.hpp"
#include "core/log.hpp"
#include "io/image_internal.hpp"

namespace mv {

namespace {

constexpr int kMaxProgressiveScans = 1000;  // a real file has ~10; thousands of scans is a decoding bomb

struct JpegError {
  jpeg_error_mgr mgr;  // first member: libjpeg hands back a pointer to it
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX + 64];
};

[[noreturn]] void on_jpeg_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

void on_jpeg_message(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
    auto* err = reinterpret_cast<JpegError*>(cinfo->err);
    std::snprintf(err->message, sizeof(err->message), "premature end of data (the file is truncated)");
    std::longjmp(err->jump, 1);
  }
  // Other warnings (extraneous bytes, corrupt segments) are ignored as PIL ignores them.
}

void on_jpeg_output(j_common_ptr) {}

void on_jpeg_progress(j_common_ptr cinfo) {
  if (!cinfo->is_decompressor) return;
  auto* dinfo = reinterpret_cast<j_decompress_ptr>(cinfo);
  if (dinfo->input_scan_number > kMaxProgressiveScans) {
    auto* err = reinterpret_cast<JpegError*>(cinfo->err);
    std::snprintf(err->message, sizeof(err->message), "more than %d progressive scans", kMaxProgressiveScans);
    std::longjmp(err->jump, 1);
  }
}

struct JpegDecoder {
  jpeg_decompress_struct cinfo{};
  JpegError err{};
  jpeg_progress_mgr progress{};
  bool created = false;
  JpegDecoder() = default;
  JpegDecoder(const JpegDecoder&) = delete;
  JpegDecoder& operator=(const JpegDecoder&) = delete;
  ~JpegDecoder() {
    if (created) jpeg_destroy_decompress(&cinfo);
  }
};

bool read_jpeg_header(JpegDecoder* d, const std::uint8_t* data, std::size_t size) {
  d->cinfo.err = jpeg_std_error(&d->err.mgr);
  d->err.mgr.error_exit = on_jpeg_error_exit;
  d->err.mgr.emit_message = on_jpeg_message;
  d->err.mgr.output_message = on_jpeg_output;
  if (setjmp(d->err.jump)) return false;
  jpeg_create_decompress(&d->cinfo);
  d->created = true;
  d->progress.progress_monitor = on_jpeg_progress;
  d->cinfo.progress = &d->progress;
  jpeg_mem_src(&d->cinfo, data, static_cast<unsigned long>(size));
  jpeg_save_markers(&d->cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&d->cinfo, TRUE);
  return true;
}

void convert_jpeg_row(const std::uint8_t* in, std::uint8_t* out, std::size_t width, int components) {
  switch (components) {
    case 1:
      for (std::size_t x = 0; x < width; ++x, out += 3) out[0] = out[1] = out[2] = in[x];
      break;
    case 3:
      std::memcpy(out, in, width * 3);
      break;
    case 4:
      for (std::size_t x = 0; x < width; ++x, in += 4, out += 3) {
        const int nk = in[3];  // 255 - (255 - K)
        for (int c = 0; c < 3; ++c) {
          const int tmp = (255 - in[c]) * nk + 128;  // MULDIV255(C', nk)
          const int v = nk - (((tmp >> 8) + tmp) >> 8);
          out[c] = static_cast<std::uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
        }
      }
      break;
  }
}

bool read_jpeg_pixels(JpegDecoder* d, ImageRGB8* image, std::uint8_t* row, int* components) {
  if (setjmp(d->err.jump)) return false;
  jpeg_start_decompress(&d->cinfo);
  *components = d->cinfo.output_components;
  if (static_cast<int>(d->cinfo.output_width) != image->width ||
      static_cast<int>(d->cinfo.output_height) != image->height ||
      (*components != 1 && *components != 3 && *components != 4)) {
    std::snprintf(d->err.message, sizeof(d->err.message),
                  "unexpected decoder output %ux%u with %d components", d->cinfo.output_width,
                  d->cinfo.output_height, *components);
    return false;
  }
  JSAMPROW rows[1] = {row};
  while (d->cinfo.output_scanline < d->cinfo.output_height) {
    const int y = static_cast<int>(d->cinfo.output_scanline);
    if (jpeg_read_scanlines(&d->cinfo, rows, 1) != 1) {
      std::snprintf(d->err.message, sizeof(d->err.message), "decoder stopped at row %d", y);
      return false;
    }
    convert_jpeg_row(row, image->row(y), static_cast<std::size_t>(image->width), *components);
  }
  // jpeg_finish_decompress is not called: the pixels are complete, and like PIL we accept a missing EOI.
  return true;
}

}  // namespace

namespace image_detail {

ImageRGB8 decode_jpeg(std::span<const std::uint8_t> data, const std::string& name,
                      const ImageLimits& limits) {
  JpegDecoder d;
  if (!read_jpeg_header(&d, data.data(), data.size())) {
    fail(Errc::kInvalidInput, "{}: invalid JPEG: {}", name, d.err.message);
  }
  jpeg_decompress_struct& cinfo = d.cinfo;
  check_dimensions(cinfo.image_width, cinfo.image_height, limits, name, "JPEG image");
  switch (cinfo.jpeg_color_space) {
    case JCS_GRAYSCALE:
      cinfo.out_color_space = JCS_GRAYSCALE;
      break;
    case JCS_YCbCr:
    case JCS_RGB:
      cinfo.out_color_space = JCS_RGB;
      break;
    case JCS_CMYK:
    case JCS_YCCK:
      cinfo.out_color_space = JCS_CMYK;
      break;
    default:
      fail(Errc::kUnsupported, "{}: JPEG with {} colour components is not supported", name,
           cinfo.num_components);
  }
  cinfo.dct_method = JDCT_ISLOW;
  cinfo.do_fancy_upsampling = TRUE;
  cinfo.scale_num = 1;
  cinfo.scale_denom = 1;

  // Orientation from the saved APP1 markers (they live in libjpeg's pool until the decoder is destroyed).
  std::optional<int> exif;
  std::optional<int> xmp;
  bool have_exif = false;
  constexpr std::string_view kExif("Exif\0\0", 6);
  constexpr std::string_view kXmp("http://ns.adobe.com/xap/1.0/\0", 29);
  for (jpeg_saved_marker_ptr m = cinfo.marker_list; m != nullptr; m = m->next) {
    if (m->marker != JPEG_APP0 + 1 || m->data == nullptr) continue;
    const std::string_view payload(reinterpret_cast<const char*>(m->data), m->data_length);
    if (!have_exif && payload.substr(0, kExif.size()) == kExif) {
      have_exif = true;
      exif = exif_orientation({m->data, m->data_length});
    } else if (payload.substr(0, kXmp.size()) == kXmp) {
      xmp = xmp_orientation(payload.substr(kXmp.size()));
    }
  }

  ImageRGB8 image =
      make_image(static_cast<int>(cinfo.image_width), static_cast<int>(cinfo.image_height), name);
  std::vector<std::uint8_t> row;
  try {
    row.resize(static_cast<std::size_t>(cinfo.image_width) * 4);
  } catch (const std::bad_alloc&) {
    fail(Errc::kTooLarge, "{}: not enough memory to decode the JPEG", name);
  }
  int components = 0;
  if (!read_jpeg_pixels(&d, &image, row.data(), &components)) {
    fail(Errc::kInvalidInput, "{}: corrupt or truncated JPEG: {}", name, d.err.message);
  }
  return apply_orientation(std::move(image), resolve_orientation(exif, xmp));
}

}  // namespace image_detail

}  // namespace mv
