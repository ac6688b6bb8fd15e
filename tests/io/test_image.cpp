// Image decoding: every input is generated here (libpng, libjpeg, libtiff and libwebp encoders, hand-written
// BMP/PDF/PNG headers and EXIF blocks) and decoded through io/image.hpp. Lossless formats are checked pixel
// for pixel against the values PIL's convert("RGB") produces; JPEG against a plain libjpeg decode (exact)
// and the source (tolerance); errors for their code and for the file name in the message.
#include <gtest/gtest.h>
#include <png.h>
#include <tiffio.h>
#include <unistd.h>
#include <webp/decode.h>
#include <webp/encode.h>
#include <zlib.h>

#include <array>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>
// clang-format off
#include <jpeglib.h>
// clang-format on

#include "common/expect_error.hpp"
#include "common/random_image.hpp"
#include "common/temp_dir.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "io/image.hpp"

namespace {

namespace fs = std::filesystem;
using mv::Errc;
using mv::ImageLimits;
using mv::ImageRGB8;
using Pixel = std::array<int, 3>;

std::span<const std::uint8_t> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

std::vector<ImageRGB8> decode_all(const std::string& data, const std::string& name = "memory.img",
                                  const ImageLimits& limits = {}) {
  return mv::decode_image_pages(as_bytes(data), name, limits);
}

ImageRGB8 decode_one(const std::string& data, const std::string& name = "memory.img",
                     const ImageLimits& limits = {}) {
  auto pages = decode_all(data, name, limits);
  EXPECT_EQ(pages.size(), 1u);
  return pages.at(0);
}

Pixel px(const ImageRGB8& im, int x, int y) {
  const std::uint8_t* p = im.row(y) + static_cast<std::size_t>(x) * 3;
  return {p[0], p[1], p[2]};
}

void expect_near(const Pixel& got, const Pixel& want, int tolerance, const std::string& where) {
  for (int c = 0; c < 3; ++c) {
    EXPECT_LE(std::abs(got[c] - want[c]), tolerance)
        << where << " channel " << c << ": got " << got[c] << ", want " << want[c];
  }
}

using mv::test::expect_error;

using mv::test::random_image;

// The eight EXIF orientations as forward maps (source pixel -> destination), written independently of the
// decoder's inverse maps: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse,
// 8 rotate 90 counter-clockwise.
ImageRGB8 reference_orient(const ImageRGB8& in, int orientation) {
  const int w = in.width, h = in.height;
  ImageRGB8 out;
  const bool swap = orientation >= 5 && orientation <= 8;
  out.width = swap ? h : w;
  out.height = swap ? w : h;
  out.pixels.resize(in.pixels.size());
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      int dx = x, dy = y;
      switch (orientation) {
        case 2:
          dx = w - 1 - x;
          break;
        case 3:
          dx = w - 1 - x;
          dy = h - 1 - y;
          break;
        case 4:
          dy = h - 1 - y;
          break;
        case 5:
          dx = y;
          dy = x;
          break;
        case 6:
          dx = h - 1 - y;
          dy = x;
          break;
        case 7:
          dx = h - 1 - y;
          dy = w - 1 - x;
          break;
        case 8:
          dx = y;
          dy = w - 1 - x;
          break;
        default:
          break;
      }
      std::memcpy(out.row(dy) + dx * 3, in.row(y) + x * 3, 3);
    }
  }
  return out;
}

void expect_same(const ImageRGB8& got, const ImageRGB8& want, const std::string& what) {
  ASSERT_EQ(got.width, want.width) << what;
  ASSERT_EQ(got.height, want.height) << what;
  ASSERT_EQ(got.pixels.size(), want.pixels.size()) << what;
  std::size_t diffs = 0, first = 0;
  for (std::size_t i = 0; i < got.pixels.size(); ++i) {
    if (got.pixels[i] != want.pixels[i] && diffs++ == 0) first = i;
  }
  EXPECT_EQ(diffs, 0u) << what << ": first difference at byte " << first;
}

using mv::test::TempDir;

// ---------------------------------------------------------------------------------------------- PNG

struct PngSpec {
  int width = 0;
  int height = 0;
  int bit_depth = 8;
  int color_type = PNG_COLOR_TYPE_RGB;
  bool interlace = false;
  std::vector<png_color> palette;
  std::vector<std::uint8_t> trns;
  bool gray_trns = false;  // tRNS with a gray key of 9
  std::vector<std::uint8_t> exif;
  std::vector<std::vector<std::uint8_t>> rows;  // raw rows in PNG sample layout (packed, big-endian)
};

void png_append(png_structp png, png_bytep data, size_t n) {
  static_cast<std::string*>(png_get_io_ptr(png))->append(reinterpret_cast<const char*>(data), n);
}
void png_noflush(png_structp) {}

bool png_encode(png_structp png, png_infop info, const PngSpec* s, std::string* out) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_write_fn(png, out, png_append, png_noflush);
  png_set_IHDR(png, info, s->width, s->height, s->bit_depth, s->color_type,
               s->interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (!s->palette.empty()) png_set_PLTE(png, info, s->palette.data(), static_cast<int>(s->palette.size()));
  if (!s->trns.empty()) png_set_tRNS(png, info, s->trns.data(), static_cast<int>(s->trns.size()), nullptr);
  png_color_16 key{};
  key.gray = 9;
  if (s->gray_trns) png_set_tRNS(png, info, nullptr, 0, &key);
  if (!s->exif.empty())
    png_set_eXIf_1(png, info, static_cast<png_uint_32>(s->exif.size()),
                   const_cast<png_bytep>(s->exif.data()));
  png_write_info(png, info);
  png_set_check_for_invalid_index(png, 1);  // allow indices past the palette (a decoder test)
  png_set_benign_errors(png, 1);
  const int passes = s->interlace ? png_set_interlace_handling(png) : 1;
  for (int pass = 0; pass < passes; ++pass) {
    for (int y = 0; y < s->height; ++y) png_write_row(png, const_cast<png_bytep>(s->rows[y].data()));
  }
  png_write_end(png, info);
  return true;
}

std::string make_png(const PngSpec& spec) {
  std::string out;
  // Warnings (an index past the palette, on purpose) stay quiet.
  png_structp png =
      png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, [](png_structp, png_const_charp) {});
  png_infop info = png_create_info_struct(png);
  const bool ok = png_encode(png, info, &spec, &out);
  png_destroy_write_struct(&png, &info);
  EXPECT_TRUE(ok);
  return out;
}

// Packs sample values (each < 2^bits) MSB first, as PNG stores sub-byte samples; 16-bit big-endian.
std::vector<std::uint8_t> pack(const std::vector<unsigned>& values, int bits) {
  std::vector<std::uint8_t> out;
  if (bits == 16) {
    for (unsigned v : values) {
      out.push_back(static_cast<std::uint8_t>(v >> 8));
      out.push_back(static_cast<std::uint8_t>(v & 0xFF));
    }
    return out;
  }
  out.assign((values.size() * bits + 7) / 8, 0);
  for (std::size_t i = 0; i < values.size(); ++i) {
    const std::size_t bit = i * bits;
    out[bit / 8] |= static_cast<std::uint8_t>(values[i] << (8 - bits - bit % 8));
  }
  return out;
}

TEST(ImagePng, SavePngRoundTrip) {
  TempDir dir("image");
  const ImageRGB8 im = random_image(37, 23, 1);
  const fs::path p = dir / "round.png";
  mv::save_png(im, p);
  const ImageRGB8 back = mv::load_image(p);
  expect_same(back, im, "save_png -> load_image");
  EXPECT_EQ(mv::count_pages(p), 1);
}

TEST(ImagePng, SavePngRejectsInconsistentImage) {
  TempDir dir("image");
  ImageRGB8 bad;
  bad.width = 4;
  bad.height = 4;
  bad.pixels.resize(5);
  expect_error([&] { mv::save_png(bad, dir / "bad.png"); }, Errc::kInvalidInput, "bad.png");
}

TEST(ImagePng, GrayscaleAllBitDepths) {
  for (int bits : {1, 2, 4, 8}) {
    const int w = 13, h = 3;
    PngSpec s;
    s.width = w;
    s.height = h;
    s.bit_depth = bits;
    s.color_type = PNG_COLOR_TYPE_GRAY;
    const unsigned max = (1u << bits) - 1;
    std::vector<std::vector<unsigned>> values(h);
    for (int y = 0; y < h; ++y) {
      for (int x = 0; x < w; ++x) values[y].push_back((x * 7 + y * 3) % (max + 1));
      s.rows.push_back(pack(values[y], bits));
    }
    const ImageRGB8 im = decode_one(make_png(s));
    ASSERT_EQ(im.width, w);
    ASSERT_EQ(im.height, h);
    for (int y = 0; y < h; ++y) {
      for (int x = 0; x < w; ++x) {
        const int v = static_cast<int>(values[y][x] * 255 / max);  // 1-bit 255, 2-bit x85, 4-bit x17
        EXPECT_EQ(px(im, x, y), (Pixel{v, v, v})) << bits << "-bit gray at " << x << "," << y;
      }
    }
  }
}

TEST(ImagePng, Gray16ClipsLikePil) {
  // PIL opens 16-bit gray as "I;16" and converts to RGB by clipping at 255, not by taking the high byte.
  PngSpec s;
  s.width = 6;
  s.height = 1;
  s.bit_depth = 16;
  s.color_type = PNG_COLOR_TYPE_GRAY;
  s.rows.push_back(pack({0x0000, 0x00AB, 0x00FF, 0x0100, 0x1234, 0xFFFF}, 16));
  const ImageRGB8 im = decode_one(make_png(s));
  const int want[] = {0, 0xAB, 255, 255, 255, 255};
  for (int x = 0; x < 6; ++x) EXPECT_EQ(px(im, x, 0), (Pixel{want[x], want[x], want[x]})) << x;
}

TEST(ImagePng, SixteenBitColourTakesHighByte) {
  PngSpec rgb;
  rgb.width = 2;
  rgb.height = 1;
  rgb.bit_depth = 16;
  rgb.color_type = PNG_COLOR_TYPE_RGB;
  rgb.rows.push_back(pack({0x1234, 0xABCD, 0xFF00, 0x00FF, 0x8080, 0x7FFF}, 16));
  ImageRGB8 im = decode_one(make_png(rgb));
  EXPECT_EQ(px(im, 0, 0), (Pixel{0x12, 0xAB, 0xFF}));
  EXPECT_EQ(px(im, 1, 0), (Pixel{0x00, 0x80, 0x7F}));

  PngSpec rgba = rgb;
  rgba.color_type = PNG_COLOR_TYPE_RGB_ALPHA;
  rgba.rows = {pack({0x1234, 0xABCD, 0xFF00, 0x0000, 0x00FF, 0x8080, 0x7FFF, 0x8000}, 16)};
  im = decode_one(make_png(rgba));
  EXPECT_EQ(px(im, 0, 0), (Pixel{0x12, 0xAB, 0xFF}));  // alpha 0: dropped, not composited
  EXPECT_EQ(px(im, 1, 0), (Pixel{0x00, 0x80, 0x7F}));

  PngSpec ga;
  ga.width = 2;
  ga.height = 1;
  ga.bit_depth = 16;
  ga.color_type = PNG_COLOR_TYPE_GRAY_ALPHA;
  ga.rows = {pack({0x3456, 0x0000, 0x00FF, 0xFFFF}, 16)};
  im = decode_one(make_png(ga));
  EXPECT_EQ(px(im, 0, 0), (Pixel{0x34, 0x34, 0x34}));  // "LA;16B": high byte
  EXPECT_EQ(px(im, 1, 0), (Pixel{0x00, 0x00, 0x00}));
}

TEST(ImagePng, AlphaIsDroppedNotComposited) {
  PngSpec rgba;
  rgba.width = 3;
  rgba.height = 1;
  rgba.color_type = PNG_COLOR_TYPE_RGB_ALPHA;
  rgba.rows = {{10, 20, 30, 0, 40, 50, 60, 128, 70, 80, 90, 255}};
  ImageRGB8 im = decode_one(make_png(rgba));
  EXPECT_EQ(px(im, 0, 0), (Pixel{10, 20, 30}));
  EXPECT_EQ(px(im, 1, 0), (Pixel{40, 50, 60}));
  EXPECT_EQ(px(im, 2, 0), (Pixel{70, 80, 90}));

  PngSpec la;
  la.width = 2;
  la.height = 1;
  la.color_type = PNG_COLOR_TYPE_GRAY_ALPHA;
  la.rows = {{200, 0, 7, 255}};
  im = decode_one(make_png(la));
  EXPECT_EQ(px(im, 0, 0), (Pixel{200, 200, 200}));
  EXPECT_EQ(px(im, 1, 0), (Pixel{7, 7, 7}));

  // tRNS on a gray image is ignored by convert("RGB").
  PngSpec gray;
  gray.width = 2;
  gray.height = 1;
  gray.color_type = PNG_COLOR_TYPE_GRAY;
  gray.rows = {{5, 9}};
  gray.gray_trns = true;
  im = decode_one(make_png(gray));
  EXPECT_EQ(px(im, 0, 0), (Pixel{5, 5, 5}));
  EXPECT_EQ(px(im, 1, 0), (Pixel{9, 9, 9}));
}

TEST(ImagePng, PaletteExpandsThroughPlte) {
  for (int bits : {1, 2, 4, 8}) {
    PngSpec s;
    s.width = 9;
    s.height = 2;
    s.bit_depth = bits;
    s.color_type = PNG_COLOR_TYPE_PALETTE;
    const unsigned entries = bits == 8 ? 5 : (1u << bits) - (bits == 1 ? 0 : 1);  // one index past the PLTE
    for (unsigned i = 0; i < entries; ++i) {
      s.palette.push_back({static_cast<png_byte>(10 + i * 20), static_cast<png_byte>(200 - i * 7),
                           static_cast<png_byte>(i * 3)});
    }
    s.trns = {0, 128};  // transparency is ignored by convert("RGB")
    const unsigned max_index = bits == 8 ? 6 : (1u << bits) - 1;
    std::vector<std::vector<unsigned>> idx(2);
    for (int y = 0; y < 2; ++y) {
      for (int x = 0; x < 9; ++x) idx[y].push_back((x + y * 4) % (max_index + 1));
      s.rows.push_back(pack(idx[y], bits));
    }
    const ImageRGB8 im = decode_one(make_png(s));
    for (int y = 0; y < 2; ++y) {
      for (int x = 0; x < 9; ++x) {
        const unsigned i = idx[y][x];
        const Pixel want = i < entries ? Pixel{s.palette[i].red, s.palette[i].green, s.palette[i].blue}
                                       : Pixel{0, 0, 0};  // past the PLTE: black, as PIL's zeroed palette
        EXPECT_EQ(px(im, x, y), want) << bits << "-bit palette index " << i;
      }
    }
  }
}

TEST(ImagePng, InterlacedMatchesNonInterlaced) {
  const ImageRGB8 src = random_image(33, 17, 7);
  PngSpec s;
  s.width = src.width;
  s.height = src.height;
  s.color_type = PNG_COLOR_TYPE_RGB;
  for (int y = 0; y < src.height; ++y) s.rows.emplace_back(src.row(y), src.row(y) + src.width * 3);
  s.interlace = true;
  expect_same(decode_one(make_png(s)), src, "Adam7 RGB");

  PngSpec p;
  p.width = 21;
  p.height = 11;
  p.bit_depth = 1;
  p.color_type = PNG_COLOR_TYPE_PALETTE;
  p.palette = {{1, 2, 3}, {250, 251, 252}};
  p.interlace = true;
  ImageRGB8 want;
  want.width = p.width;
  want.height = p.height;
  want.pixels.resize(p.width * p.height * 3);
  for (int y = 0; y < p.height; ++y) {
    std::vector<unsigned> row;
    for (int x = 0; x < p.width; ++x) {
      const unsigned i = (x * y + x) % 3 == 0;
      row.push_back(i);
      const png_color c = p.palette[i];
      want.row(y)[x * 3] = c.red;
      want.row(y)[x * 3 + 1] = c.green;
      want.row(y)[x * 3 + 2] = c.blue;
    }
    p.rows.push_back(pack(row, 1));
  }
  expect_same(decode_one(make_png(p)), want, "Adam7 1-bit palette");
}

// A TIFF-structured EXIF block with IFD0 holding Orientation (SHORT), in either byte order.
std::vector<std::uint8_t> exif_block(int orientation, bool big_endian, bool with_prefix) {
  std::vector<std::uint8_t> b;
  if (with_prefix) b = {'E', 'x', 'i', 'f', 0, 0};
  auto u16 = [&](unsigned v) {
    if (big_endian) {
      b.push_back(static_cast<std::uint8_t>(v >> 8));
      b.push_back(static_cast<std::uint8_t>(v));
    } else {
      b.push_back(static_cast<std::uint8_t>(v));
      b.push_back(static_cast<std::uint8_t>(v >> 8));
    }
  };
  auto u32 = [&](std::uint32_t v) {
    if (big_endian) {
      u16(v >> 16);
      u16(v & 0xFFFF);
    } else {
      u16(v & 0xFFFF);
      u16(v >> 16);
    }
  };
  if (big_endian) {
    b.insert(b.end(), {'M', 'M', 0, 42});
  } else {
    b.insert(b.end(), {'I', 'I', 42, 0});
  }
  u32(8);  // IFD0 right after the header
  u16(2);  // two entries: Make (ASCII, 4 bytes inline) and Orientation
  u16(0x010F);
  u16(2);
  u32(4);
  b.insert(b.end(), {'M', 'V', 'X', 0});
  u16(0x0112);
  u16(3);
  u32(1);
  u16(static_cast<unsigned>(orientation));
  u16(0);
  u32(0);  // no next IFD
  return b;
}

TEST(ImagePng, ExifChunkOrientation) {
  const ImageRGB8 src = random_image(7, 4, 3);
  for (int orientation = 1; orientation <= 8; ++orientation) {
    PngSpec s;
    s.width = src.width;
    s.height = src.height;
    for (int y = 0; y < src.height; ++y) s.rows.emplace_back(src.row(y), src.row(y) + src.width * 3);
    s.exif = exif_block(orientation, orientation % 2 == 0, false);
    expect_same(decode_one(make_png(s)), reference_orient(src, orientation),
                "PNG eXIf orientation " + std::to_string(orientation));
  }
}

std::uint32_t be32(const std::string& s, std::size_t at) {
  return (std::uint32_t{static_cast<std::uint8_t>(s[at])} << 24) |
         (std::uint32_t{static_cast<std::uint8_t>(s[at + 1])} << 16) |
         (std::uint32_t{static_cast<std::uint8_t>(s[at + 2])} << 8) | static_cast<std::uint8_t>(s[at + 3]);
}

// Signature + IHDR (with a correct CRC) + IEND: a header claiming any size, with no pixel data.
std::string png_header_only(std::uint32_t width, std::uint32_t height) {
  std::string ihdr = "IHDR";
  for (std::uint32_t v : {width, height}) {
    for (int s = 24; s >= 0; s -= 8) ihdr.push_back(static_cast<char>((v >> s) & 0xFF));
  }
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);
  std::string png = "\x89PNG\r\n\x1a\n";
  png += std::string("\x00\x00\x00\x0d", 4) + ihdr;
  const uLong crc = crc32(0, reinterpret_cast<const Bytef*>(ihdr.data()), static_cast<uInt>(ihdr.size()));
  for (int s = 24; s >= 0; s -= 8) png.push_back(static_cast<char>((crc >> s) & 0xFF));
  png += std::string("\x00\x00\x00\x00IEND\xae\x42\x60\x82", 12);
  return png;
}

TEST(ImagePng, HugeHeaderIsRejectedBeforeDecoding) {
  // 100000 x 100000 = 10^10 pixels: refused from the header (30 GB would be needed otherwise).
  expect_error([] { decode_all(png_header_only(100000, 100000), "huge.png"); }, Errc::kTooLarge, "huge.png");
  expect_error([] { decode_all(png_header_only(0, 10), "zero.png"); }, Errc::kInvalidInput, "zero.png");
  expect_error([] { decode_all(png_header_only(0x7FFFFFFF, 1), "absurd.png"); }, Errc::kInvalidInput,
               "absurd.png");
  ImageLimits small;
  small.max_pixels_per_page = 100;
  PngSpec s;
  s.width = 11;
  s.height = 10;
  s.color_type = PNG_COLOR_TYPE_GRAY;
  s.rows.assign(10, std::vector<std::uint8_t>(11, 0));
  expect_error([&] { decode_all(make_png(s), "limit.png", small); }, Errc::kTooLarge, "limit.png");
  s.width = 10;
  for (auto& r : s.rows) r.resize(10);
  EXPECT_EQ(decode_one(make_png(s), "limit.png", small).width, 10);
}

TEST(ImagePng, TruncatedAndCorrupt) {
  const ImageRGB8 src = random_image(40, 30, 11);
  PngSpec s;
  s.width = src.width;
  s.height = src.height;
  for (int y = 0; y < src.height; ++y) s.rows.emplace_back(src.row(y), src.row(y) + src.width * 3);
  for (bool interlace : {false, true}) {
    s.interlace = interlace;
    const std::string png = make_png(s);
    const std::size_t image_end = png.size() - 12;  // IEND; PIL also accepts a file cut inside it
    for (std::size_t cut : {std::size_t{5}, std::size_t{8}, std::size_t{20}, std::size_t{33}, std::size_t{45},
                            image_end / 2, image_end * 3 / 4, image_end - 5}) {
      SCOPED_TRACE("cut at " + std::to_string(cut));
      expect_error([&] { decode_all(png.substr(0, cut), "cut.png"); }, Errc::kInvalidInput, "cut.png");
    }
    // A flipped byte inside the compressed data: zlib or the CRC check refuses it.
    std::string bad = png;
    bad[image_end / 2] = static_cast<char>(bad[image_end / 2] ^ 0x5A);
    expect_error([&] { decode_all(bad, "flip.png"); }, Errc::kInvalidInput, "flip.png");
  }
}

// --------------------------------------------------------------------------------------------- JPEG

std::string make_jpeg(const std::vector<std::uint8_t>& samples, int w, int h, int components,
                      J_COLOR_SPACE space, int quality, bool full_chroma) {
  jpeg_compress_struct cinfo{};
  jpeg_error_mgr jerr{};
  cinfo.err = jpeg_std_error(&jerr);
  jpeg_create_compress(&cinfo);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = static_cast<JDIMENSION>(w);
  cinfo.image_height = static_cast<JDIMENSION>(h);
  cinfo.input_components = components;
  cinfo.in_color_space = space;
  jpeg_set_defaults(&cinfo);
  if (space == JCS_CMYK) jpeg_set_colorspace(&cinfo, JCS_CMYK);
  jpeg_set_quality(&cinfo, quality, TRUE);
  if (full_chroma && components == 3) {
    for (int c = 0; c < 3; ++c) cinfo.comp_info[c].h_samp_factor = cinfo.comp_info[c].v_samp_factor = 1;
  }
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row =
        const_cast<JSAMPROW>(samples.data() + static_cast<std::size_t>(cinfo.next_scanline) * w * components);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  std::string out(reinterpret_cast<const char*>(buffer), size);
  std::free(buffer);
  return out;
}

// A straightforward libjpeg decode to RGB with the library defaults (what PIL runs).
ImageRGB8 plain_libjpeg_rgb(const std::string& data) {
  jpeg_decompress_struct cinfo{};
  jpeg_error_mgr jerr{};
  cinfo.err = jpeg_std_error(&jerr);
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, reinterpret_cast<const unsigned char*>(data.data()), data.size());
  jpeg_read_header(&cinfo, TRUE);
  cinfo.out_color_space = JCS_RGB;
  jpeg_start_decompress(&cinfo);
  ImageRGB8 im;
  im.width = static_cast<int>(cinfo.output_width);
  im.height = static_cast<int>(cinfo.output_height);
  im.pixels.resize(static_cast<std::size_t>(im.width) * im.height * 3);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = im.row(static_cast<int>(cinfo.output_scanline));
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return im;
}

std::vector<std::uint8_t> gradient_rgb(int w, int h) {
  std::vector<std::uint8_t> v(static_cast<std::size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      std::uint8_t* p = v.data() + (static_cast<std::size_t>(y) * w + x) * 3;
      p[0] = static_cast<std::uint8_t>(x * 255 / (w - 1));
      p[1] = static_cast<std::uint8_t>(y * 255 / (h - 1));
      p[2] = static_cast<std::uint8_t>((x + y) * 255 / (w + h - 2));
    }
  }
  return v;
}

// Four flat 16x8 quadrants: red (top left), green (top right), blue (bottom left), white (bottom right).
std::vector<std::uint8_t> quadrants_rgb() {
  std::vector<std::uint8_t> v(32 * 16 * 3);
  for (int y = 0; y < 16; ++y) {
    for (int x = 0; x < 32; ++x) {
      std::uint8_t* p = v.data() + (y * 32 + x) * 3;
      const int q = (y >= 8) * 2 + (x >= 16);
      const Pixel c = q == 0   ? Pixel{255, 0, 0}
                      : q == 1 ? Pixel{0, 255, 0}
                      : q == 2 ? Pixel{0, 0, 255}
                               : Pixel{255, 255, 255};
      p[0] = static_cast<std::uint8_t>(c[0]);
      p[1] = static_cast<std::uint8_t>(c[1]);
      p[2] = static_cast<std::uint8_t>(c[2]);
    }
  }
  return v;
}

// Inserts an APP1 segment right after SOI.
std::string with_app1(const std::string& jpeg, const std::vector<std::uint8_t>& payload) {
  const std::size_t length = payload.size() + 2;
  std::string seg = {'\xFF', '\xE1', static_cast<char>(length >> 8), static_cast<char>(length & 0xFF)};
  seg.append(reinterpret_cast<const char*>(payload.data()), payload.size());
  return jpeg.substr(0, 2) + seg + jpeg.substr(2);
}

TEST(ImageJpeg, RgbEqualsLibjpegDefaultsAndIsCloseToSource) {
  const int w = 64, h = 48;
  const auto src = gradient_rgb(w, h);
  for (bool full_chroma : {false, true}) {
    const std::string jpeg = make_jpeg(src, w, h, 3, JCS_RGB, 95, full_chroma);
    const ImageRGB8 im = decode_one(jpeg, "photo.jpg");
    expect_same(im, plain_libjpeg_rgb(jpeg), full_chroma ? "4:4:4 JPEG" : "4:2:0 JPEG");
    int worst = 0;
    for (std::size_t i = 0; i < src.size(); ++i)
      worst = std::max(worst, std::abs(int{im.pixels[i]} - src[i]));
    EXPECT_LE(worst, 12) << "JPEG q95 of a smooth gradient";
  }
}

TEST(ImageJpeg, GrayscaleReplicated) {
  const int w = 40, h = 24;
  std::vector<std::uint8_t> gray(w * h);
  for (int i = 0; i < w * h; ++i) gray[i] = static_cast<std::uint8_t>((i % w) * 6);
  const std::string jpeg = make_jpeg(gray, w, h, 1, JCS_GRAYSCALE, 95, false);
  const ImageRGB8 im = decode_one(jpeg);
  ASSERT_EQ(im.width, w);
  ASSERT_EQ(im.height, h);
  const ImageRGB8 ref = plain_libjpeg_rgb(jpeg);
  expect_same(im, ref, "grayscale JPEG");
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      const Pixel p = px(im, x, y);
      EXPECT_EQ(p[0], p[1]);
      EXPECT_EQ(p[1], p[2]);
      EXPECT_LE(std::abs(p[0] - gray[y * w + x]), 6);
    }
  }
}

TEST(ImageJpeg, CmykConvertedLikePil) {
  // PIL reads every 4-component JPEG as inverted ("CMYK;I") CMYK, then cmyk2rgb. Raw samples
  // (C,M,Y,K) = (255,0,255,255) are C'=0, M'=255, Y'=0, K'=0: magenta; (0,0,0,0) is K'=255: black;
  // (255,255,255,128): C'=M'=Y'=0, K'=127 -> nk=128 -> gray 128.
  const int w = 16, h = 24;
  std::vector<std::uint8_t> cmyk(w * h * 4);
  const std::array<std::array<std::uint8_t, 4>, 3> bands = {
      {{255, 0, 255, 255}, {0, 0, 0, 0}, {255, 255, 255, 128}}};
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) std::memcpy(&cmyk[(y * w + x) * 4], bands[y / 8].data(), 4);
  }
  const ImageRGB8 im = decode_one(make_jpeg(cmyk, w, h, 4, JCS_CMYK, 100, false));
  expect_near(px(im, 8, 4), {255, 0, 255}, 2, "magenta band");
  expect_near(px(im, 8, 12), {0, 0, 0}, 2, "black band");
  expect_near(px(im, 8, 20), {128, 128, 128}, 2, "gray band");
}

TEST(ImageJpeg, ExifOrientationAllValuesBothByteOrders) {
  const std::string plain = make_jpeg(quadrants_rgb(), 32, 16, 3, JCS_RGB, 90, false);
  const ImageRGB8 upright = decode_one(plain);
  for (bool big_endian : {false, true}) {
    for (int orientation = 1; orientation <= 8; ++orientation) {
      const std::string jpeg = with_app1(plain, exif_block(orientation, big_endian, true));
      expect_same(decode_one(jpeg), reference_orient(upright, orientation),
                  "EXIF orientation " + std::to_string(orientation) + (big_endian ? " MM" : " II"));
    }
  }
  // Orientation 6 (rotate 90 clockwise): red top-left moves to the top right, blue bottom-left to top left.
  const ImageRGB8 r6 = decode_one(with_app1(plain, exif_block(6, false, true)));
  ASSERT_EQ(r6.width, 16);
  ASSERT_EQ(r6.height, 32);
  expect_near(px(r6, 12, 4), {255, 0, 0}, 12, "orientation 6 top right");
  expect_near(px(r6, 4, 4), {0, 0, 255}, 12, "orientation 6 top left");
  expect_near(px(r6, 12, 28), {0, 255, 0}, 12, "orientation 6 bottom right");
  expect_near(px(r6, 4, 28), {255, 255, 255}, 12, "orientation 6 bottom left");
  // Orientation 3 (rotate 180): white comes to the top left.
  const ImageRGB8 r3 = decode_one(with_app1(plain, exif_block(3, true, true)));
  ASSERT_EQ(r3.width, 32);
  expect_near(px(r3, 4, 4), {255, 255, 255}, 12, "orientation 3 top left");
  expect_near(px(r3, 28, 12), {255, 0, 0}, 12, "orientation 3 bottom right");
}

TEST(ImageJpeg, ExifPrecedenceAndXmpFallback) {
  const std::string plain = make_jpeg(quadrants_rgb(), 32, 16, 3, JCS_RGB, 90, false);
  const ImageRGB8 upright = decode_one(plain);
  auto xmp = [](const std::string& body) {
    std::string s = std::string("http://ns.adobe.com/xap/1.0/\0", 29) + body;
    return std::vector<std::uint8_t>(s.begin(), s.end());
  };
  // The first Exif block wins (PIL keeps the first).
  std::string two = with_app1(with_app1(plain, exif_block(6, false, true)), exif_block(3, false, true));
  expect_same(decode_one(two), reference_orient(upright, 3), "first of two EXIF blocks");
  // XMP is used only when EXIF has no orientation.
  expect_same(decode_one(with_app1(plain, xmp("<x:xmpmeta tiff:Orientation=\"8\"/>"))),
              reference_orient(upright, 8), "XMP attribute");
  expect_same(decode_one(with_app1(plain, xmp("<tiff:Orientation>5</tiff:Orientation>"))),
              reference_orient(upright, 5), "XMP element");
  expect_same(
      decode_one(with_app1(with_app1(plain, xmp("tiff:Orientation=\"8\"")), exif_block(1, false, true))),
      upright, "EXIF 1 beats XMP 8");
  // Out-of-range values and broken blocks leave the image as stored.
  expect_same(decode_one(with_app1(plain, exif_block(9, false, true))), upright, "orientation 9");
  std::vector<std::uint8_t> broken = exif_block(6, false, true);
  broken.resize(20);  // the IFD entry is cut off
  expect_same(decode_one(with_app1(plain, broken)), upright, "truncated EXIF");
}

TEST(ImageJpeg, TruncatedAndHugeAndCorrupt) {
  const std::string jpeg = make_jpeg(gradient_rgb(64, 48), 64, 48, 3, JCS_RGB, 90, false);
  for (std::size_t cut : {std::size_t{2}, std::size_t{3}, std::size_t{10}, std::size_t{100}, jpeg.size() / 2,
                          jpeg.size() * 3 / 4, jpeg.size() - 3}) {
    SCOPED_TRACE("cut at " + std::to_string(cut));
    expect_error([&] { decode_all(jpeg.substr(0, cut), "cut.jpg"); }, Errc::kInvalidInput, "cut.jpg");
  }
  // The SOF0 size rewritten to 60000 x 60000: refused from the header.
  std::string huge = jpeg;
  const std::size_t sof = huge.find("\xFF\xC0");
  ASSERT_NE(sof, std::string::npos);
  huge[sof + 5] = huge[sof + 7] = static_cast<char>(0xEA);
  huge[sof + 6] = huge[sof + 8] = static_cast<char>(0x60);
  expect_error([&] { decode_all(huge, "huge.jpg"); }, Errc::kTooLarge, "huge.jpg");
  std::string zero = jpeg;
  zero[sof + 5] = zero[sof + 6] = 0;
  expect_error([&] { decode_all(zero, "zero.jpg"); }, Errc::kInvalidInput, "zero.jpg");
  // Garbage right after the markers.
  std::string garbage = jpeg.substr(0, 20) + std::string(200, '\x55');
  expect_error([&] { decode_all(garbage, "garbage.jpg"); }, Errc::kInvalidInput, "garbage.jpg");
}

// --------------------------------------------------------------------------------------------- TIFF

struct TiffPage {
  int width = 0;
  int height = 0;
  int samples = 3;
  int bits = 8;
  int photometric = PHOTOMETRIC_RGB;
  int compression = COMPRESSION_NONE;
  int orientation = 0;                  // 0: no tag
  std::vector<std::uint16_t> colormap;  // 3 * 2^bits entries for palette pages
  std::vector<std::vector<std::uint8_t>> rows;
};

std::string make_tiff(const std::vector<TiffPage>& pages, const fs::path& path) {
  TIFF* tif = TIFFOpen(path.c_str(), "w");
  EXPECT_NE(tif, nullptr);
  for (const TiffPage& p : pages) {
    TIFFSetField(tif, TIFFTAG_IMAGEWIDTH, static_cast<std::uint32_t>(p.width));
    TIFFSetField(tif, TIFFTAG_IMAGELENGTH, static_cast<std::uint32_t>(p.height));
    TIFFSetField(tif, TIFFTAG_SAMPLESPERPIXEL, static_cast<std::uint16_t>(p.samples));
    TIFFSetField(tif, TIFFTAG_BITSPERSAMPLE, static_cast<std::uint16_t>(p.bits));
    TIFFSetField(tif, TIFFTAG_PHOTOMETRIC, static_cast<std::uint16_t>(p.photometric));
    TIFFSetField(tif, TIFFTAG_PLANARCONFIG, static_cast<std::uint16_t>(PLANARCONFIG_CONTIG));
    TIFFSetField(tif, TIFFTAG_COMPRESSION, static_cast<std::uint16_t>(p.compression));
    TIFFSetField(tif, TIFFTAG_ROWSPERSTRIP, static_cast<std::uint32_t>(4));
    if (p.orientation != 0) TIFFSetField(tif, TIFFTAG_ORIENTATION, static_cast<std::uint16_t>(p.orientation));
    if (!p.colormap.empty()) {
      const std::size_t n = p.colormap.size() / 3;
      TIFFSetField(tif, TIFFTAG_COLORMAP, p.colormap.data(), p.colormap.data() + n,
                   p.colormap.data() + 2 * n);
    }
    for (int y = 0; y < p.height; ++y) {
      EXPECT_EQ(TIFFWriteScanline(tif, const_cast<std::uint8_t*>(p.rows[y].data()),
                                  static_cast<std::uint32_t>(y), 0),
                1);
    }
    EXPECT_EQ(TIFFWriteDirectory(tif), 1);
  }
  TIFFClose(tif);
  return mv::read_file(path);
}

ImageRGB8 rows_to_image(const TiffPage& p) {  // 8-bit RGB pages only
  ImageRGB8 im;
  im.width = p.width;
  im.height = p.height;
  for (const auto& r : p.rows) im.pixels.insert(im.pixels.end(), r.begin(), r.end());
  return im;
}

std::vector<TiffPage> sample_tiff_pages() {
  std::vector<TiffPage> pages;
  const ImageRGB8 a = random_image(19, 13, 21);
  TiffPage rgb;
  rgb.width = a.width;
  rgb.height = a.height;
  for (int y = 0; y < a.height; ++y) rgb.rows.emplace_back(a.row(y), a.row(y) + a.width * 3);
  rgb.compression = COMPRESSION_LZW;
  pages.push_back(rgb);

  TiffPage gray;
  gray.width = 8;
  gray.height = 5;
  gray.samples = 1;
  gray.photometric = PHOTOMETRIC_MINISBLACK;
  gray.compression = COMPRESSION_ADOBE_DEFLATE;
  for (int y = 0; y < 5; ++y) {
    std::vector<std::uint8_t> r;
    for (int x = 0; x < 8; ++x) r.push_back(static_cast<std::uint8_t>(x * 30 + y));
    gray.rows.push_back(r);
  }
  pages.push_back(gray);

  TiffPage pal;
  pal.width = 6;
  pal.height = 4;
  pal.samples = 1;
  pal.photometric = PHOTOMETRIC_PALETTE;
  pal.colormap.assign(3 * 256, 0);
  for (int i = 0; i < 256; ++i) {  // 8-bit values stored as v * 257, as TIFF writers do
    pal.colormap[i] = static_cast<std::uint16_t>(((i * 3) & 0xFF) * 257);
    pal.colormap[256 + i] = static_cast<std::uint16_t>((255 - i) * 257);
    pal.colormap[512 + i] = static_cast<std::uint16_t>(((i * 7) & 0xFF) * 257);
  }
  for (int y = 0; y < 4; ++y) {
    std::vector<std::uint8_t> r;
    for (int x = 0; x < 6; ++x) r.push_back(static_cast<std::uint8_t>(x * 40 + y));
    pal.rows.push_back(r);
  }
  pages.push_back(pal);

  TiffPage bilevel;  // 1-bit, 0 = white
  bilevel.width = 10;
  bilevel.height = 3;
  bilevel.samples = 1;
  bilevel.bits = 1;
  bilevel.photometric = PHOTOMETRIC_MINISWHITE;
  bilevel.compression = COMPRESSION_CCITTFAX4;
  for (int y = 0; y < 3; ++y) {
    std::vector<unsigned> bits;
    for (int x = 0; x < 10; ++x) bits.push_back((x + y) % 3 == 0);
    bilevel.rows.push_back(pack(bits, 1));
  }
  pages.push_back(bilevel);
  return pages;
}

TEST(ImageTiff, MultiPageExactPixels) {
  TempDir dir("image");
  const auto pages = sample_tiff_pages();
  const std::string tiff = make_tiff(pages, dir / "multi.tif");
  const auto images = mv::load_image_pages(dir / "multi.tif");
  ASSERT_EQ(images.size(), 4u);
  EXPECT_EQ(mv::count_pages(dir / "multi.tif"), 4);
  expect_same(images[0], rows_to_image(pages[0]), "TIFF page 1 (RGB, LZW)");
  for (int y = 0; y < 5; ++y) {
    for (int x = 0; x < 8; ++x) {
      const int v = x * 30 + y;
      EXPECT_EQ(px(images[1], x, y), (Pixel{v, v, v})) << "gray page at " << x << "," << y;
    }
  }
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 6; ++x) {
      const int i = x * 40 + y;
      EXPECT_EQ(px(images[2], x, y), (Pixel{(i * 3) & 0xFF, 255 - i, (i * 7) & 0xFF})) << "palette " << i;
    }
  }
  for (int y = 0; y < 3; ++y) {
    for (int x = 0; x < 10; ++x) {
      const int v = (x + y) % 3 == 0 ? 0 : 255;  // min-is-white: a set bit is black
      EXPECT_EQ(px(images[3], x, y), (Pixel{v, v, v})) << "bilevel " << x << "," << y;
    }
  }
  // load_image decodes the first page only.
  expect_same(mv::load_image(dir / "multi.tif"), images[0], "load_image of a TIFF");
  // Too many pages: refused from the directory chain.
  ImageLimits two;
  two.max_pages = 2;
  expect_error([&] { mv::load_image_pages(dir / "multi.tif", two); }, Errc::kTooLarge, "multi.tif");
  expect_error([&] { mv::count_pages(dir / "multi.tif", two); }, Errc::kTooLarge, "multi.tif");
  ImageLimits small;
  small.max_pixels_per_page = 200;  // page 1 is 19x13 = 247
  expect_error([&] { mv::decode_image_pages(as_bytes(tiff), "px.tif", small); }, Errc::kTooLarge, "px.tif");
}

TEST(ImageTiff, OrientationTagAppliedLikeExifTranspose) {
  TempDir dir("image");
  const ImageRGB8 src = random_image(9, 5, 5);
  for (int orientation = 1; orientation <= 8; ++orientation) {
    TiffPage p;
    p.width = src.width;
    p.height = src.height;
    p.orientation = orientation;
    for (int y = 0; y < src.height; ++y) p.rows.emplace_back(src.row(y), src.row(y) + src.width * 3);
    const std::string tiff = make_tiff({p}, dir / "o.tif");
    expect_same(decode_one(tiff, "o.tif"), reference_orient(src, orientation),
                "TIFF orientation " + std::to_string(orientation));
  }
}

TEST(ImageTiff, TruncatedAndCorrupt) {
  TempDir dir("image");
  const std::string tiff = make_tiff(sample_tiff_pages(), dir / "t.tif");
  // (A file missing only the last bytes of its final next-directory link still decodes, in PIL as here.)
  for (std::size_t cut : {std::size_t{3}, std::size_t{6}, std::size_t{9}, std::size_t{100}, tiff.size() / 4,
                          tiff.size() / 2, tiff.size() * 3 / 4, tiff.size() - 40}) {
    SCOPED_TRACE("cut at " + std::to_string(cut));
    expect_error([&] { decode_all(tiff.substr(0, cut), "cut.tif"); }, Errc::kInvalidInput, "cut.tif");
  }
  // First IFD offset pointing past the end.
  std::string bad = tiff;
  bad[4] = bad[5] = bad[6] = static_cast<char>(0x7F);
  expect_error([&] { decode_all(bad, "ifd.tif"); }, Errc::kInvalidInput, "ifd.tif");
}

// --------------------------------------------------------------------------------------------- WebP

std::string webp_lossless(const ImageRGB8& im) {
  std::uint8_t* out = nullptr;
  const std::size_t size = WebPEncodeLosslessRGB(im.pixels.data(), im.width, im.height, im.width * 3, &out);
  EXPECT_GT(size, 0u);
  std::string s(reinterpret_cast<const char*>(out), size);
  WebPFree(out);
  return s;
}

void put_le(std::string& s, std::uint32_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

// Re-wraps a simple (VP8L) WebP into an extended VP8X container with an EXIF chunk.
std::string webp_with_exif(const std::string& simple, int w, int h, const std::vector<std::uint8_t>& exif) {
  std::string body = "WEBP";
  body += "VP8X";
  put_le(body, 10, 4);
  body.push_back(0x08);  // EXIF flag
  body.append(3, '\0');
  put_le(body, static_cast<std::uint32_t>(w - 1), 3);
  put_le(body, static_cast<std::uint32_t>(h - 1), 3);
  body += simple.substr(12);  // the VP8L chunk
  body += "EXIF";
  put_le(body, static_cast<std::uint32_t>(exif.size()), 4);
  body.append(reinterpret_cast<const char*>(exif.data()), exif.size());
  if (exif.size() % 2) body.push_back('\0');
  std::string riff = "RIFF";
  put_le(riff, static_cast<std::uint32_t>(body.size()), 4);
  return riff + body;
}

TEST(ImageWebp, LosslessExactLossyClose) {
  const ImageRGB8 src = random_image(23, 17, 9);
  const std::string lossless = webp_lossless(src);
  expect_same(decode_one(lossless, "a.webp"), src, "lossless WebP");

  const auto grad = gradient_rgb(48, 32);
  std::uint8_t* out = nullptr;
  const std::size_t size = WebPEncodeRGB(grad.data(), 48, 32, 48 * 3, 95.0f, &out);
  ASSERT_GT(size, 0u);
  const std::string lossy(reinterpret_cast<const char*>(out), size);
  WebPFree(out);
  const ImageRGB8 im = decode_one(lossy, "b.webp");
  ASSERT_EQ(im.width, 48);
  ASSERT_EQ(im.height, 32);
  int worst = 0;
  for (std::size_t i = 0; i < grad.size(); ++i)
    worst = std::max(worst, std::abs(int{im.pixels[i]} - grad[i]));
  EXPECT_LE(worst, 16);
}

TEST(ImageWebp, ExifOrientation) {
  const ImageRGB8 src = random_image(6, 4, 13);
  const std::string simple = webp_lossless(src);
  for (int orientation : {1, 3, 6, 8}) {
    const std::string ext =
        webp_with_exif(simple, src.width, src.height, exif_block(orientation, false, false));
    expect_same(decode_one(ext, "o.webp"), reference_orient(src, orientation),
                "WebP EXIF orientation " + std::to_string(orientation));
  }
}

TEST(ImageWebp, TruncatedAndTooLarge) {
  const std::string webp = webp_lossless(random_image(40, 30, 2));
  for (std::size_t cut : {std::size_t{4}, std::size_t{11}, std::size_t{16}, std::size_t{30}, webp.size() / 2,
                          webp.size() - 1}) {
    SCOPED_TRACE("cut at " + std::to_string(cut));
    expect_error([&] { decode_all(webp.substr(0, cut), "cut.webp"); }, Errc::kInvalidInput, "cut.webp");
  }
  ImageLimits small;
  small.max_pixels_per_page = 1000;
  expect_error([&] { decode_all(webp, "big.webp", small); }, Errc::kTooLarge, "big.webp");
}

// ---------------------------------------------------------------------------------------------- BMP

// A BITMAPINFOHEADER BMP: 24-bit BGR or 8-bit palette (BGRX entries), bottom-up unless top_down.
std::string make_bmp(const ImageRGB8& im, bool top_down, int bits,
                     const std::vector<std::array<std::uint8_t, 3>>& palette,
                     const std::vector<std::uint8_t>& indices) {
  const int w = im.width, h = im.height;
  const std::uint32_t stride = ((w * bits + 31) / 32) * 4;
  const std::uint32_t palette_bytes = bits == 8 ? static_cast<std::uint32_t>(palette.size()) * 4 : 0;
  const std::uint32_t offset = 14 + 40 + palette_bytes;
  std::string s = "BM";
  put_le(s, offset + stride * h, 4);
  put_le(s, 0, 4);
  put_le(s, offset, 4);
  put_le(s, 40, 4);
  put_le(s, static_cast<std::uint32_t>(w), 4);
  put_le(s, static_cast<std::uint32_t>(top_down ? -h : h), 4);
  put_le(s, 1, 2);
  put_le(s, static_cast<std::uint32_t>(bits), 2);
  put_le(s, 0, 4);  // BI_RGB
  put_le(s, stride * h, 4);
  put_le(s, 2835, 4);
  put_le(s, 2835, 4);
  put_le(s, bits == 8 ? static_cast<std::uint32_t>(palette.size()) : 0, 4);
  put_le(s, 0, 4);
  for (const auto& c : palette) {
    if (bits != 8) break;
    s.push_back(static_cast<char>(c[2]));
    s.push_back(static_cast<char>(c[1]));
    s.push_back(static_cast<char>(c[0]));
    s.push_back('\0');
  }
  for (int i = 0; i < h; ++i) {
    const int y = top_down ? i : h - 1 - i;
    std::string row;
    for (int x = 0; x < w; ++x) {
      if (bits == 24) {
        const std::uint8_t* p = im.row(y) + x * 3;
        row.push_back(static_cast<char>(p[2]));
        row.push_back(static_cast<char>(p[1]));
        row.push_back(static_cast<char>(p[0]));
      } else {
        row.push_back(static_cast<char>(indices[y * w + x]));
      }
    }
    row.resize(stride, '\0');
    s += row;
  }
  return s;
}

TEST(ImageBmp, TwentyFourBitAndPalette) {
  const ImageRGB8 src = random_image(5, 3, 17);  // 15-byte rows: padded to 16
  expect_same(decode_one(make_bmp(src, false, 24, {}, {}), "a.bmp"), src, "24-bit bottom-up BMP");
  expect_same(decode_one(make_bmp(src, true, 24, {}, {}), "a.bmp"), src, "24-bit top-down BMP");

  const std::vector<std::array<std::uint8_t, 3>> palette = {{255, 0, 0}, {0, 128, 255}, {7, 8, 9}};
  std::vector<std::uint8_t> indices = {0, 1, 2, 1, 0, 2, 2, 1, 0, 0, 1, 1};
  ImageRGB8 want;
  want.width = 4;
  want.height = 3;
  for (auto i : indices) want.pixels.insert(want.pixels.end(), palette[i].begin(), palette[i].end());
  expect_same(decode_one(make_bmp(want, false, 8, palette, indices), "p.bmp"), want, "8-bit palette BMP");
}

TEST(ImageBmp, TruncatedZeroAndTooLarge) {
  const std::string bmp = make_bmp(random_image(20, 10, 4), false, 24, {}, {});
  for (std::size_t cut :
       {std::size_t{2}, std::size_t{10}, std::size_t{30}, std::size_t{60}, bmp.size() / 2, bmp.size() - 1}) {
    SCOPED_TRACE("cut at " + std::to_string(cut));
    expect_error([&] { decode_all(bmp.substr(0, cut), "cut.bmp"); }, Errc::kInvalidInput, "cut.bmp");
  }
  std::string zero = bmp;
  zero[18] = zero[19] = zero[20] = zero[21] = 0;  // width 0
  expect_error([&] { decode_all(zero, "zero.bmp"); }, Errc::kInvalidInput, "zero.bmp");
  std::string huge = bmp;
  huge[18] = huge[22] = 0;
  huge[19] = huge[23] = 0;
  huge[20] = huge[24] = 0x10;  // 0x100000 x 0x100000
  huge[21] = huge[25] = 0;
  expect_error([&] { decode_all(huge, "huge.bmp"); }, Errc::kTooLarge, "huge.bmp");
}

// ---------------------------------------------------------------------------------------------- PDF

// A PDF with correct xref offsets. Each page: MediaBox (points), optional /Rotate, content stream.
struct PdfPage {
  int width_pt;
  int height_pt;
  int rotate;
  std::string content;
};

std::string make_pdf(const std::vector<PdfPage>& pages, const std::string& extra_trailer = "") {
  std::vector<std::string> objects;
  std::string kids;
  const int n = static_cast<int>(pages.size());
  for (int i = 0; i < n; ++i) kids += std::to_string(3 + 2 * i) + " 0 R ";
  objects.push_back("<< /Type /Catalog /Pages 2 0 R >>");
  objects.push_back("<< /Type /Pages /Kids [" + kids + "] /Count " + std::to_string(n) + " >>");
  for (int i = 0; i < n; ++i) {
    const PdfPage& p = pages[i];
    objects.push_back("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 " + std::to_string(p.width_pt) + " " +
                      std::to_string(p.height_pt) + "] /Rotate " + std::to_string(p.rotate) + " /Contents " +
                      std::to_string(4 + 2 * i) + " 0 R >>");
    objects.push_back("<< /Length " + std::to_string(p.content.size()) + " >>\nstream\n" + p.content +
                      "\nendstream");
  }
  std::string pdf = "%PDF-1.4\n";
  std::vector<std::size_t> offsets;
  for (std::size_t i = 0; i < objects.size(); ++i) {
    offsets.push_back(pdf.size());
    pdf += std::to_string(i + 1) + " 0 obj\n" + objects[i] + "\nendobj\n";
  }
  const std::size_t xref = pdf.size();
  pdf += "xref\n0 " + std::to_string(objects.size() + 1) + "\n0000000000 65535 f \n";
  for (std::size_t off : offsets) {
    char line[32];
    std::snprintf(line, sizeof(line), "%010zu 00000 n \n", off);
    pdf += line;
  }
  pdf += "trailer\n<< /Size " + std::to_string(objects.size() + 1) + " /Root 1 0 R " + extra_trailer +
         " >>\nstartxref\n" + std::to_string(xref) + "\n%%EOF\n";
  return pdf;
}

std::string two_page_pdf() {
  // Page 1: 144 x 72 pt, red square on the left half. Page 2: 72 x 36 pt rotated 90, all blue.
  return make_pdf({{144, 72, 0, "1 0 0 rg 0 0 72 72 re f"}, {72, 36, 90, "0 0 1 rg 0 0 72 36 re f"}});
}

TEST(ImagePdf, RendersPagesAtTheConfiguredDpi) {
  TempDir dir("image");
  const fs::path p = dir.write("doc.pdf", two_page_pdf());
  ImageLimits limits;
  limits.pdf_dpi = 100.0;
  const auto pages = mv::load_image_pages(p, limits);
  ASSERT_EQ(pages.size(), 2u);
  EXPECT_EQ(pages[0].width, 200);  // 144 pt at 100 dpi
  EXPECT_EQ(pages[0].height, 100);
  EXPECT_EQ(px(pages[0], 50, 50), (Pixel{255, 0, 0}));
  EXPECT_EQ(px(pages[0], 150, 50), (Pixel{255, 255, 255}));
  EXPECT_EQ(pages[1].width, 50);  // 72 x 36 pt turned by /Rotate 90
  EXPECT_EQ(pages[1].height, 100);
  EXPECT_EQ(px(pages[1], 25, 50), (Pixel{0, 0, 255}));
  EXPECT_EQ(mv::count_pages(p), 2);
  const ImageRGB8 first = mv::load_image(p);  // default 200 dpi
  EXPECT_EQ(first.width, 400);
  EXPECT_EQ(first.height, 200);
}

TEST(ImagePdf, LimitsBeforeRendering) {
  TempDir dir("image");
  const fs::path p = dir.write("doc.pdf", two_page_pdf());
  ImageLimits one_page;
  one_page.max_pages = 1;
  expect_error([&] { mv::load_image_pages(p, one_page); }, Errc::kTooLarge, "doc.pdf");
  expect_error([&] { mv::count_pages(p, one_page); }, Errc::kTooLarge, "doc.pdf");
  ImageLimits pixels;
  pixels.max_pixels_per_page = 400 * 200 - 1;  // page 1 at 200 dpi is 400 x 200
  expect_error([&] { mv::load_image(p, pixels); }, Errc::kTooLarge, "doc.pdf");
  ImageLimits huge_dpi;
  huge_dpi.pdf_dpi = 2400;  // 144 pt -> 4800 px, 72 pt -> 2400 px: 11.5 M pixels, under the default limit
  EXPECT_EQ(mv::load_image(p, huge_dpi).width, 4800);
}

TEST(ImagePdf, TruncatedCorruptAndEncrypted) {
  const std::string pdf = two_page_pdf();
  for (std::size_t cut : {std::size_t{3}, std::size_t{9}, std::size_t{60}, pdf.size() / 2, pdf.size() - 8}) {
    SCOPED_TRACE("cut at " + std::to_string(cut));
    expect_error([&] { decode_all(pdf.substr(0, cut), "cut.pdf"); }, Errc::kInvalidInput, "cut.pdf");
  }
  expect_error([] { decode_all("%PDF-1.4\nthis is not a pdf at all\n%%EOF\n", "junk.pdf"); },
               Errc::kInvalidInput, "junk.pdf");
  // A standard security handler whose user password is not empty: poppler cannot open it.
  std::string encrypted = make_pdf({{72, 72, 0, "0 g 0 0 10 10 re f"}},
                                   "/Encrypt << /Filter /Standard /V 1 /R 2 /O <" + std::string(64, 'A') +
                                       "> /U <" + std::string(64, 'B') +
                                       "> /P -4 >> /ID [<0123456789ABCDEF"
                                       "0123456789ABCDEF> <0123456789ABCDEF0123456789ABCDEF>]");
  expect_error([&] { decode_all(encrypted, "locked.pdf"); }, Errc::kInvalidInput, "locked.pdf");
}

// ------------------------------------------------------------------------------------- generic errors

TEST(ImageErrors, SniffingAndNames) {
  auto sniff = [](const std::string& s) { return mv::sniff_image_format(as_bytes(s)); };
  EXPECT_EQ(sniff("\x89PNG\r\n\x1a\n...."), mv::ImageFormat::kPng);
  EXPECT_EQ(sniff("\xFF\xD8\xFF\xE0"), mv::ImageFormat::kJpeg);
  EXPECT_EQ(sniff(std::string("II*\0", 4)), mv::ImageFormat::kTiff);
  EXPECT_EQ(sniff(std::string("MM\0*", 4)), mv::ImageFormat::kTiff);
  EXPECT_EQ(sniff(std::string("RIFF\x10\x00\x00\x00WEBPVP8L", 16)), mv::ImageFormat::kWebp);
  EXPECT_EQ(sniff(std::string("RIFF\x10\x00\x00\x00WAVEfmt ", 16)), mv::ImageFormat::kUnknown);
  EXPECT_EQ(sniff("BM\x36\x00"), mv::ImageFormat::kBmp);
  EXPECT_EQ(sniff("%PDF-1.7\n"), mv::ImageFormat::kPdf);
  EXPECT_EQ(sniff("GIF89a"), mv::ImageFormat::kUnknown);
  EXPECT_EQ(sniff(""), mv::ImageFormat::kUnknown);
  EXPECT_STREQ(mv::image_format_name(mv::ImageFormat::kWebp), "webp");
  EXPECT_STREQ(mv::image_format_name(mv::ImageFormat::kUnknown), "unknown");
}

TEST(ImageErrors, EmptyRandomUnsupportedMissing) {
  TempDir dir("image");
  expect_error([] { decode_all("", "empty.png"); }, Errc::kInvalidInput, "empty.png");
  const fs::path empty = dir.write("empty.jpg", "");
  expect_error([&] { mv::load_image(empty); }, Errc::kInvalidInput, "empty.jpg");
  std::mt19937 rng(5);
  for (int trial = 0; trial < 20; ++trial) {
    std::string noise(1 + rng() % 4000, '\0');
    for (auto& c : noise) c = static_cast<char>(rng() & 0xFF);
    noise[0] = 'Z';  // never a known signature
    expect_error([&] { decode_all(noise, "noise.bin"); }, Errc::kUnsupported, "noise.bin");
  }
  const fs::path gif = dir.write("anim.gif", std::string("GIF89a\x01\x00\x01\x00\x80\x00\x00", 13));
  expect_error([&] { mv::load_image(gif); }, Errc::kUnsupported, "anim.gif");
  expect_error([&] { mv::count_pages(gif); }, Errc::kUnsupported, "anim.gif");
  expect_error([&] { mv::load_image(dir / "missing.png"); }, Errc::kNotFound, "missing.png");
}

TEST(ImageErrors, KnownSignatureFollowedByNoiseIsInvalid) {
  // Every decoder must turn garbage after a valid signature into kInvalidInput, never a crash.
  std::mt19937 rng(77);
  const std::vector<std::string> magics = {"\x89PNG\r\n\x1a\n",
                                           "\xFF\xD8\xFF",
                                           std::string("II*\0", 4),
                                           std::string("MM\0*", 4),
                                           std::string("RIFF\x00\x01\x00\x00WEBP", 12),
                                           "BM"};
  for (const auto& magic : magics) {
    for (int trial = 0; trial < 30; ++trial) {
      std::string data = magic;
      const std::size_t extra = rng() % 600;
      for (std::size_t i = 0; i < extra; ++i) data.push_back(static_cast<char>(rng() & 0xFF));
      try {
        decode_all(data, "noisy.img");
      } catch (const mv::Error& e) {
        EXPECT_TRUE(e.code() == Errc::kInvalidInput || e.code() == Errc::kUnsupported ||
                    e.code() == Errc::kTooLarge)
            << e.what();
        EXPECT_NE(std::string(e.what()).find("noisy.img"), std::string::npos) << e.what();
        continue;
      }
      // Decoding noise successfully is acceptable only for formats without checksums (BMP).
      EXPECT_EQ(magic, "BM");
    }
  }
}

}  // namespace

namespace {

// Every prefix of a valid file: an mv::Error naming the file (kInvalidInput), never a crash; only a cut in
// the last `tail_ok` bytes may decode (trailers that PIL also ignores). Each single-byte corruption: an
// mv::Error or a decoded image, never a crash (run under the sanitizers).
void check_all_cuts_and_flips(const std::string& data, const std::string& name, std::size_t tail_ok,
                              const ImageLimits& limits = {}) {
  std::size_t decoded_cuts = 0;
  for (std::size_t cut = 0; cut < data.size(); ++cut) {
    try {
      decode_all(data.substr(0, cut), name, limits);
      ++decoded_cuts;
      EXPECT_GE(cut + tail_ok, data.size())
          << name << " cut at " << cut << " of " << data.size() << " decoded";
    } catch (const mv::Error& e) {
      EXPECT_EQ(e.code(), Errc::kInvalidInput) << name << " cut at " << cut << ": " << e.what();
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  }
  EXPECT_LE(decoded_cuts, tail_ok) << name;
  for (std::size_t i = 0; i < data.size(); ++i) {
    std::string bad = data;
    bad[i] = static_cast<char>(bad[i] ^ (i % 2 ? 0xFF : 0x10));
    try {
      decode_all(bad, name, limits);
    } catch (const mv::Error& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  }
}

TEST(ImageRobustness, EveryTruncationAndByteFlip) {
  TempDir dir("image");
  const ImageRGB8 src = random_image(24, 16, 31);
  PngSpec s;
  s.width = src.width;
  s.height = src.height;
  for (int y = 0; y < src.height; ++y) s.rows.emplace_back(src.row(y), src.row(y) + src.width * 3);
  check_all_cuts_and_flips(make_png(s), "all.png", 12 + 4);  // IEND, and the CRC of the last IDAT
  s.interlace = true;
  check_all_cuts_and_flips(make_png(s), "all-adam7.png", 12 + 4);
  check_all_cuts_and_flips(make_jpeg(gradient_rgb(32, 24), 32, 24, 3, JCS_RGB, 80, false), "all.jpg", 2);
  check_all_cuts_and_flips(webp_lossless(src), "all.webp", 0);
  check_all_cuts_and_flips(make_bmp(src, false, 24, {}, {}), "all.bmp", 0);
  TiffPage page;
  page.width = src.width;
  page.height = src.height;
  page.compression = COMPRESSION_LZW;
  for (int y = 0; y < src.height; ++y) page.rows.emplace_back(src.row(y), src.row(y) + src.width * 3);
  check_all_cuts_and_flips(make_tiff({page, page}, dir / "all.tif"), "all.tif",
                           4);  // the last next-IFD link
  ImageLimits low_dpi;          // poppler renders each corrupted variant: keep the pages small
  low_dpi.pdf_dpi = 18.0;
  check_all_cuts_and_flips(two_page_pdf(), "all.pdf", 1, low_dpi);  // the final newline after %%EOF
}

}  // namespace

namespace {

// Bit-exact parity with Pillow 12.3 on the preprocessing fixtures
// (tools/reference/make_preprocess_fixtures.py stored the sha256 of PIL's exif_transpose + convert("RGB")
// pixels): PNG RGB/L/RGBA/P, JPEG 4:2:0, and a JPEG with EXIF orientation 6.
TEST(ImagePillowParity, PreprocessFixturesDecodeToPilPixels) {
  const fs::path root = fs::path(MV_FIXTURES_DIR) / "preprocess";
  const fs::path index = root / "index.json";
  if (!fs::exists(index)) GTEST_SKIP() << "no preprocessing fixtures at " << index;
  const auto doc = nlohmann::json::parse(mv::read_file(index));
  std::set<std::string> seen;
  for (const auto& c : doc.at("cases")) {
    const std::string image = c.at("image").get<std::string>();
    if (!seen.insert(image).second) continue;
    SCOPED_TRACE(image);
    const ImageRGB8 im = mv::load_image(root / image);
    EXPECT_EQ(im.width, c.at("width").get<int>());
    EXPECT_EQ(im.height, c.at("height").get<int>());
    const std::string_view bytes(reinterpret_cast<const char*>(im.pixels.data()), im.pixels.size());
    EXPECT_EQ(mv::sha256_hex(bytes), c.at("rgb_sha256").get<std::string>()) << "pixels differ from PIL's";
  }
  EXPECT_GE(seen.size(), 10u);
}

}  // namespace
