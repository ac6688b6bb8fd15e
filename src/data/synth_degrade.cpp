#include "data/synth_degrade.hpp"

#include <jpeglib.h>

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>

#include "core/error.hpp"

namespace mv::synth {

namespace {

constexpr double kPi = 3.14159265358979323846;

std::uint8_t clamp_u8(double v) {
  return static_cast<std::uint8_t>(v <= 0 ? 0 : v >= 255 ? 255 : static_cast<int>(v + 0.5));
}

// Approximately standard normal from one 64-bit draw (sum of four 16-bit uniforms).
double fast_normal(Rng& rng) {
  const std::uint64_t r = rng.next();
  const double s =
      static_cast<double>((r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48));
  return (s - 131070.0) / 37837.0;
}

struct JpegErrorMgr {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegErrorMgr*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

}  // namespace

void Homography::apply(double x, double y, double& ox, double& oy) const {
  const double w = m[6] * x + m[7] * y + m[8];
  ox = (m[0] * x + m[1] * y + m[2]) / w;
  oy = (m[3] * x + m[4] * y + m[5]) / w;
}

Homography Homography::then(const Homography& next) const {
  Homography out;
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c) {
      double s = 0;
      for (int k = 0; k < 3; ++k) s += next.m[r * 3 + k] * m[k * 3 + c];
      out.m[r * 3 + c] = s;
    }
  return out;
}

Homography Homography::inverse() const {
  const auto& a = m;
  const double det = a[0] * (a[4] * a[8] - a[5] * a[7]) - a[1] * (a[3] * a[8] - a[5] * a[6]) +
                     a[2] * (a[3] * a[7] - a[4] * a[6]);
  MV_CHECK(std::fabs(det) > 1e-12, "singular homography");
  Homography out;
  out.m = {(a[4] * a[8] - a[5] * a[7]) / det, (a[2] * a[7] - a[1] * a[8]) / det,
           (a[1] * a[5] - a[2] * a[4]) / det, (a[5] * a[6] - a[3] * a[8]) / det,
           (a[0] * a[8] - a[2] * a[6]) / det, (a[2] * a[3] - a[0] * a[5]) / det,
           (a[3] * a[7] - a[4] * a[6]) / det, (a[1] * a[6] - a[0] * a[7]) / det,
           (a[0] * a[4] - a[1] * a[3]) / det};
  return out;
}

Homography Homography::translate(double tx, double ty) { return {{1, 0, tx, 0, 1, ty, 0, 0, 1}}; }
Homography Homography::rotate(double r) {
  return {{std::cos(r), -std::sin(r), 0, std::sin(r), std::cos(r), 0, 0, 0, 1}};
}
Homography Homography::scale(double sx, double sy) { return {{sx, 0, 0, 0, sy, 0, 0, 0, 1}}; }

Homography Homography::from_quads(const std::array<double, 8>& src, const std::array<double, 8>& dst) {
  // Solve for h0..h7 (h8 = 1): 8 equations, Gaussian elimination with partial pivoting.
  double a[8][9] = {};
  for (int i = 0; i < 4; ++i) {
    const double x = src[2 * i], y = src[2 * i + 1], u = dst[2 * i], v = dst[2 * i + 1];
    double* r0 = a[2 * i];
    double* r1 = a[2 * i + 1];
    r0[0] = x, r0[1] = y, r0[2] = 1, r0[6] = -u * x, r0[7] = -u * y, r0[8] = u;
    r1[3] = x, r1[4] = y, r1[5] = 1, r1[6] = -v * x, r1[7] = -v * y, r1[8] = v;
  }
  for (int col = 0; col < 8; ++col) {
    int pivot = col;
    for (int r = col + 1; r < 8; ++r)
      if (std::fabs(a[r][col]) > std::fabs(a[pivot][col])) pivot = r;
    MV_CHECK(std::fabs(a[pivot][col]) > 1e-12, "degenerate quadrilateral");
    if (pivot != col)
      for (int c = 0; c < 9; ++c) std::swap(a[col][c], a[pivot][c]);
    for (int r = 0; r < 8; ++r) {
      if (r == col) continue;
      const double f = a[r][col] / a[col][col];
      for (int c = col; c < 9; ++c) a[r][c] -= f * a[col][c];
    }
  }
  Homography h;
  for (int i = 0; i < 8; ++i) h.m[i] = a[i][8] / a[i][i];
  h.m[8] = 1;
  return h;
}

extract::BBox transform_box(const extract::BBox& b, const Homography& h, int width, int height) {
  const double xs[4] = {b.x0, b.x1, b.x1, b.x0};
  const double ys[4] = {b.y0, b.y0, b.y1, b.y1};
  double x0 = 1e18, y0 = 1e18, x1 = -1e18, y1 = -1e18;
  for (int i = 0; i < 4; ++i) {
    double ox = 0, oy = 0;
    h.apply(xs[i], ys[i], ox, oy);
    x0 = std::min(x0, ox), y0 = std::min(y0, oy), x1 = std::max(x1, ox), y1 = std::max(y1, oy);
  }
  auto clip = [](double v, double hi) { return std::round(std::clamp(v, 0.0, hi) * 10.0) / 10.0; };
  return {clip(x0, width), clip(y0, height), clip(x1, width), clip(y1, height)};
}

ImageRGB8 warp(const ImageRGB8& src, const Homography& forward, int out_w, int out_h,
               std::array<std::uint8_t, 3> bg) {
  ImageRGB8 out;
  out.width = out_w;
  out.height = out_h;
  out.pixels.resize(static_cast<std::size_t>(out_w) * out_h * 3);
  const Homography inv = forward.inverse();
  const auto& m = inv.m;
  const int sw = src.width, sh = src.height;
  const bool affine = m[6] == 0 && m[7] == 0;
  auto fetch = [&](int ix, int iy, int fx, int fy, std::uint8_t* o) {
    // Bilinear with 8-bit fixed-point weights; neighbours outside the source take the background.
    const int w00 = (256 - fx) * (256 - fy), w01 = fx * (256 - fy), w10 = (256 - fx) * fy, w11 = fx * fy;
    const std::uint8_t *p00, *p01, *p10, *p11;
    if (ix >= 0 && iy >= 0 && ix + 1 < sw && iy + 1 < sh) {
      p00 = src.row(iy) + 3 * ix;
      p01 = p00 + 3;
      p10 = src.row(iy + 1) + 3 * ix;
      p11 = p10 + 3;
    } else {
      auto at = [&](int cx, int cy) -> const std::uint8_t* {
        return (cx < 0 || cy < 0 || cx >= sw || cy >= sh) ? bg.data() : src.row(cy) + 3 * cx;
      };
      p00 = at(ix, iy), p01 = at(ix + 1, iy), p10 = at(ix, iy + 1), p11 = at(ix + 1, iy + 1);
    }
    for (int c = 0; c < 3; ++c)
      o[c] = static_cast<std::uint8_t>((w00 * p00[c] + w01 * p01[c] + w10 * p10[c] + w11 * p11[c] + 32768) >>
                                       16);
  };
  if (affine) {
    // Source coordinates in 16.16 fixed point, stepped along each row.
    const double inv8 = 1.0 / m[8];
    const auto dx = static_cast<std::int64_t>(std::llround(m[0] * inv8 * 65536.0));
    const auto dy = static_cast<std::int64_t>(std::llround(m[3] * inv8 * 65536.0));
    for (int y = 0; y < out_h; ++y) {
      std::uint8_t* row = out.row(y);
      const double py = y + 0.5;
      auto fx0 =
          static_cast<std::int64_t>(std::llround(((m[0] * 0.5 + m[1] * py + m[2]) * inv8 - 0.5) * 65536.0));
      auto fy0 =
          static_cast<std::int64_t>(std::llround(((m[3] * 0.5 + m[4] * py + m[5]) * inv8 - 0.5) * 65536.0));
      for (int x = 0; x < out_w; ++x, fx0 += dx, fy0 += dy) {
        std::uint8_t* o = row + 3 * x;
        if (fx0 < -65536 || fy0 < -65536 || fx0 > std::int64_t{sw} * 65536 ||
            fy0 > std::int64_t{sh} * 65536) {
          o[0] = bg[0], o[1] = bg[1], o[2] = bg[2];
          continue;
        }
        const int ix = static_cast<int>(fx0 >> 16),
                  iy = static_cast<int>(fy0 >> 16);  // floor (arithmetic shift)
        fetch(ix, iy, static_cast<int>((fx0 >> 8) & 255), static_cast<int>((fy0 >> 8) & 255), o);
      }
    }
    return out;
  }
  for (int y = 0; y < out_h; ++y) {
    std::uint8_t* row = out.row(y);
    const double py = y + 0.5;
    // Source position of the first pixel's centre, stepped along the row (projective: divide per pixel).
    double nx = m[0] * 0.5 + m[1] * py + m[2], ny = m[3] * 0.5 + m[4] * py + m[5],
           nw = m[6] * 0.5 + m[7] * py + m[8];
    for (int x = 0; x < out_w; ++x, nx += m[0], ny += m[3], nw += m[6]) {
      const double sx = nx / nw - 0.5;
      const double sy = ny / nw - 0.5;
      std::uint8_t* o = row + 3 * x;
      if (sx < -1 || sy < -1 || sx > sw || sy > sh) {
        o[0] = bg[0], o[1] = bg[1], o[2] = bg[2];
        continue;
      }
      const int ix = static_cast<int>(std::floor(sx)), iy = static_cast<int>(std::floor(sy));
      fetch(ix, iy, static_cast<int>((sx - ix) * 256.0), static_cast<int>((sy - iy) * 256.0), o);
    }
  }
  return out;
}

void gaussian_blur(ImageRGB8& img, double sigma) {
  if (sigma <= 0.05) return;
  // 8-bit weights summing to 256, so sums fit 16-bit lanes (255 * 256 + 128 < 65536).
  const int radius = std::max(1, static_cast<int>(std::ceil(sigma * 2.2)));
  std::vector<std::uint16_t> k(static_cast<std::size_t>(2 * radius + 1));
  std::vector<double> kd(k.size());
  double sum = 0;
  for (int i = -radius; i <= radius; ++i)
    sum += kd[static_cast<std::size_t>(i + radius)] = std::exp(-0.5 * i * i / (sigma * sigma));
  int isum = 0;
  for (std::size_t i = 0; i < k.size(); ++i)
    isum += k[i] = static_cast<std::uint16_t>(std::lround(kd[i] / sum * 256));
  k[static_cast<std::size_t>(radius)] =
      static_cast<std::uint16_t>(k[static_cast<std::size_t>(radius)] + 256 - isum);
  const int w = img.width, h = img.height;
  if (w <= 2 * radius || h <= 2 * radius) return;
  const std::size_t stride = static_cast<std::size_t>(w) * 3;
  std::vector<std::uint8_t> tmp(img.pixels.size());
  std::vector<std::uint16_t> acc(stride);
  // Horizontal pass (img -> tmp): the interior runs over contiguous bytes; the edges clamp.
  const std::size_t lo = static_cast<std::size_t>(radius) * 3, hi = stride - lo;
  for (int y = 0; y < h; ++y) {
    const std::uint8_t* s = img.row(y);
    std::uint8_t* d = tmp.data() + static_cast<std::size_t>(y) * stride;
    std::fill(acc.begin(), acc.end(), std::uint16_t{128});
    for (int i = -radius; i <= radius; ++i) {
      const std::uint16_t kv = k[static_cast<std::size_t>(i + radius)];
      const std::uint8_t* sp = s + 3 * i;
      for (std::size_t j = lo; j < hi; ++j) acc[j] = static_cast<std::uint16_t>(acc[j] + kv * sp[j]);
    }
    for (std::size_t j = lo; j < hi; ++j) d[j] = static_cast<std::uint8_t>(acc[j] >> 8);
    for (int x = 0; x < w; ++x) {
      if (x >= radius && x < w - radius) continue;
      for (int c = 0; c < 3; ++c) {
        int a = 128;
        for (int i = -radius; i <= radius; ++i)
          a += k[static_cast<std::size_t>(i + radius)] * s[3 * std::clamp(x + i, 0, w - 1) + c];
        d[3 * x + c] = static_cast<std::uint8_t>(a >> 8);
      }
    }
  }
  // Vertical pass (tmp -> img): whole rows at a time.
  for (int y = 0; y < h; ++y) {
    std::fill(acc.begin(), acc.end(), std::uint16_t{128});
    for (int i = -radius; i <= radius; ++i) {
      const std::uint16_t kv = k[static_cast<std::size_t>(i + radius)];
      const std::uint8_t* sp = tmp.data() + static_cast<std::size_t>(std::clamp(y + i, 0, h - 1)) * stride;
      for (std::size_t j = 0; j < stride; ++j) acc[j] = static_cast<std::uint16_t>(acc[j] + kv * sp[j]);
    }
    std::uint8_t* d = img.row(y);
    for (std::size_t j = 0; j < stride; ++j) d[j] = static_cast<std::uint8_t>(acc[j] >> 8);
  }
}

void add_noise(ImageRGB8& img, double sigma, Rng& rng, bool per_channel) {
  if (sigma <= 0) return;
  // A table of 65,536 gaussian samples, indexed by 16-bit slices of one random draw: four samples per draw.
  std::vector<std::int16_t> table(65536);
  for (auto& v : table)
    v = static_cast<std::int16_t>(std::lround(std::clamp(sigma * fast_normal(rng), -255.0, 255.0)));
  auto add = [](std::uint8_t& p, int d) { p = static_cast<std::uint8_t>(std::clamp(p + d, 0, 255)); };
  const std::size_t n = img.pixels.size() / 3;
  std::uint64_t bits = 0;
  int left = 0;
  auto sample = [&] {
    if (left == 0) bits = rng.next(), left = 4;
    const int d = table[bits & 0xFFFF];
    bits >>= 16;
    --left;
    return d;
  };
  for (std::size_t i = 0; i < n; ++i) {
    std::uint8_t* p = img.pixels.data() + 3 * i;
    if (per_channel) {
      add(p[0], sample()), add(p[1], sample()), add(p[2], sample());
    } else {
      const int d = sample();
      add(p[0], d), add(p[1], d), add(p[2], d);
    }
  }
}

std::vector<std::uint8_t> encode_jpeg(const ImageRGB8& img, int quality) {
  jpeg_compress_struct cinfo{};
  JpegErrorMgr err{};
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = jpeg_error_exit;
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  if (setjmp(err.jump)) {
    jpeg_destroy_compress(&cinfo);
    std::free(buffer);
    fail(Errc::kFailure, "synth: JPEG encoding failed: {}", err.message);
  }
  jpeg_create_compress(&cinfo);
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = static_cast<JDIMENSION>(img.width);
  cinfo.image_height = static_cast<JDIMENSION>(img.height);
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, std::clamp(quality, 1, 100), TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(img.row(static_cast<int>(cinfo.next_scanline)));
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  std::vector<std::uint8_t> out(buffer, buffer + size);
  std::free(buffer);
  return out;
}

ImageRGB8 decode_jpeg(const std::vector<std::uint8_t>& data) {
  jpeg_decompress_struct cinfo{};
  JpegErrorMgr err{};
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = jpeg_error_exit;
  ImageRGB8 out;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    fail(Errc::kFailure, "synth: JPEG decoding failed: {}", err.message);
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data.data(), static_cast<unsigned long>(data.size()));
  jpeg_read_header(&cinfo, TRUE);
  cinfo.out_color_space = JCS_RGB;
  jpeg_start_decompress(&cinfo);
  out.width = static_cast<int>(cinfo.output_width);
  out.height = static_cast<int>(cinfo.output_height);
  out.pixels.resize(static_cast<std::size_t>(out.width) * out.height * 3);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = out.row(static_cast<int>(cinfo.output_scanline));
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return out;
}

void jpeg_roundtrip(ImageRGB8& img, int quality) { img = decode_jpeg(encode_jpeg(img, quality)); }

void fax_binarize(ImageRGB8& img, Rng& rng) {
  const int w = img.width, h = img.height;
  const bool standard = rng.chance(0.5);  // standard resolution: half the vertical lines
  const int step = standard ? 2 : 1;
  const double threshold = rng.uniform(140, 185);
  const double noise = rng.uniform(4, 14);
  std::vector<float> lum(static_cast<std::size_t>(w) * h);
  for (int y = 0; y < h; ++y) {
    const std::uint8_t* p = img.row(y);
    for (int x = 0; x < w; ++x)
      lum[static_cast<std::size_t>(y) * w + x] =
          static_cast<float>(0.299 * p[3 * x] + 0.587 * p[3 * x + 1] + 0.114 * p[3 * x + 2]);
  }
  std::vector<float> err_cur(w + 2, 0.f), err_next(w + 2, 0.f);
  std::vector<std::uint8_t> bits(w);
  for (int y = 0; y < h; y += step) {
    std::fill(err_next.begin(), err_next.end(), 0.f);
    for (int x = 0; x < w; ++x) {
      double v = lum[static_cast<std::size_t>(y) * w + x];
      if (step == 2 && y + 1 < h) v = 0.5 * (v + lum[static_cast<std::size_t>(y + 1) * w + x]);
      v += noise * fast_normal(rng) + err_cur[x + 1];
      const double out = v < threshold ? 0.0 : 255.0;
      const double e = v - out;
      // Floyd-Steinberg, damped so flat text stays clean while grey fills dither.
      err_cur[x + 2] += static_cast<float>(e * 7 / 16 * 0.8);
      err_next[x] += static_cast<float>(e * 3 / 16 * 0.8);
      err_next[x + 1] += static_cast<float>(e * 5 / 16 * 0.8);
      err_next[x + 2] += static_cast<float>(e * 1 / 16 * 0.8);
      bits[x] = static_cast<std::uint8_t>(out);
    }
    std::swap(err_cur, err_next);
    for (int yy = y; yy < std::min(h, y + step); ++yy) {
      std::uint8_t* p = img.row(yy);
      for (int x = 0; x < w; ++x) p[3 * x] = p[3 * x + 1] = p[3 * x + 2] = bits[x];
    }
  }
  // Speckles and an occasional streak from the scanner bar.
  const auto specks = static_cast<std::size_t>(static_cast<double>(w) * h * rng.uniform(2e-5, 1.5e-4));
  for (std::size_t i = 0; i < specks; ++i) {
    const int x = static_cast<int>(rng.range(0, w - 2)), y = static_cast<int>(rng.range(0, h - 2));
    const int size = static_cast<int>(rng.range(1, 2));
    for (int dy = 0; dy < size; ++dy)
      for (int dx = 0; dx < size; ++dx) {
        std::uint8_t* p = img.row(y + dy) + 3 * (x + dx);
        p[0] = p[1] = p[2] = 0;
      }
  }
  if (rng.chance(0.3)) {
    const int x = static_cast<int>(rng.range(0, w - 1));
    for (int y = 0; y < h; ++y)
      if (rng.chance(0.7)) {
        std::uint8_t* p = img.row(y) + 3 * x;
        p[0] = p[1] = p[2] = 40;
      }
  }
}

Homography degrade(ImageRGB8& img, const std::string& kind, Rng& rng, int* jpeg_quality) {
  if (jpeg_quality != nullptr) *jpeg_quality = 0;
  auto finish_jpeg = [&](int quality) {
    if (jpeg_quality != nullptr)
      *jpeg_quality = quality;
    else
      jpeg_roundtrip(img, quality);
  };
  const int w = img.width, h = img.height;
  const double cx = w / 2.0, cy = h / 2.0;
  if (kind == "none") return {};
  if (kind == "scan") {
    // Paper tone, skew, softness, sensor noise, sometimes JPEG and a lid shadow at one edge.
    const double tone[3] = {rng.uniform(0.95, 1.0), rng.uniform(0.94, 0.99), rng.uniform(0.90, 0.97)};
    for (std::size_t i = 0; i < img.pixels.size(); ++i)
      img.pixels[i] = static_cast<std::uint8_t>(img.pixels[i] * tone[i % 3]);
    const double angle = rng.uniform(0.3, 2.0) * (rng.chance(0.5) ? 1 : -1) * kPi / 180.0;
    const Homography hm =
        Homography::translate(-cx, -cy).then(Homography::rotate(angle)).then(Homography::translate(cx, cy));
    const std::uint8_t g = static_cast<std::uint8_t>(rng.range(215, 250));
    img = warp(img, hm, w, h, {g, g, g});
    if (rng.chance(0.4)) {
      const int band = static_cast<int>(rng.range(8, 30));
      const bool left = rng.chance(0.5);
      for (int y = 0; y < h; ++y)
        for (int i = 0; i < band; ++i) {
          const int x = left ? i : w - 1 - i;
          const double f = 0.35 + 0.65 * static_cast<double>(i) / band;
          std::uint8_t* p = img.row(y) + 3 * x;
          for (int c = 0; c < 3; ++c) p[c] = static_cast<std::uint8_t>(p[c] * f);
        }
    }
    gaussian_blur(img, rng.uniform(0.35, 0.9));
    add_noise(img, rng.uniform(2.0, 5.0), rng, false);
    if (rng.chance(0.5)) finish_jpeg(static_cast<int>(rng.range(60, 92)));
    return hm;
  }
  if (kind == "fax") {
    const double angle = rng.uniform(0.2, 1.2) * (rng.chance(0.5) ? 1 : -1) * kPi / 180.0;
    const Homography hm =
        Homography::translate(-cx, -cy).then(Homography::rotate(angle)).then(Homography::translate(cx, cy));
    img = warp(img, hm, w, h, {255, 255, 255});
    gaussian_blur(img, rng.uniform(0.3, 0.7));
    fax_binarize(img, rng);
    return hm;
  }
  if (kind == "photo") {
    // The page lands as a perspective quadrilateral on a table, lit unevenly, with a soft shadow.
    const double inset = rng.uniform(0.03, 0.09);
    auto jitter = [&] { return rng.uniform(-0.035, 0.035); };
    const std::array<double, 8> src = {0, 0, double(w), 0, double(w), double(h), 0, double(h)};
    std::array<double, 8> dst = {w * (inset + jitter()),     h * (inset + jitter()),
                                 w * (1 - inset + jitter()), h * (inset + jitter()),
                                 w * (1 - inset + jitter()), h * (1 - inset + jitter()),
                                 w * (inset + jitter()),     h * (1 - inset + jitter())};
    for (std::size_t i = 0; i < dst.size(); ++i) dst[i] = std::clamp(dst[i], 2.0, (i % 2 == 0 ? w : h) - 2.0);
    const Homography hm = Homography::from_quads(src, dst);
    static const std::array<std::uint8_t, 3> kTables[] = {
        {92, 64, 44}, {58, 58, 62}, {150, 118, 84}, {34, 40, 52}, {120, 120, 112}};
    img = warp(img, hm, w, h, kTables[rng.index(5)]);
    // Lighting: a linear ramp in a random direction plus a soft-edged shadow band.
    const double dir = rng.uniform(0, 2 * kPi);
    const double ramp = rng.uniform(0.08, 0.3);
    const double dx = std::cos(dir), dy = std::sin(dir);
    const double norm = std::abs(dx) * w + std::abs(dy) * h;
    const bool shadow = rng.chance(0.7);
    const double sdir = rng.uniform(0, 2 * kPi);
    const double sx = std::cos(sdir), sy = std::sin(sdir);
    const double soff = rng.uniform(0.15, 0.45) * (std::abs(sx) * w + std::abs(sy) * h);
    const double sdark = rng.uniform(0.2, 0.45), soft = rng.uniform(40, 140);
    const double tint[3] = {rng.uniform(0.98, 1.0), rng.uniform(0.93, 0.98), rng.uniform(0.82, 0.92)};
    // The shadow depends on the signed distance to its edge only: tabulate it per pixel of distance.
    const int reach = w + h + 2;
    std::vector<float> shade(static_cast<std::size_t>(2 * reach + 1), 1.0f);
    if (shadow)
      for (int d = -reach; d <= reach; ++d)  // d > 0 inside the shadow
        shade[static_cast<std::size_t>(d + reach)] =
            static_cast<float>(1.0 - sdark / (1.0 + std::exp(-(d - soff) / soft)));
    for (int y = 0; y < h; ++y) {
      std::uint8_t* row = img.row(y);
      for (int x = 0; x < w; ++x) {
        const double t = ((x - cx) * dx + (y - cy) * dy) / norm + 0.5;
        const int d = static_cast<int>(std::lround((x - cx) * sx + (y - cy) * sy));
        const double f =
            (1.0 - ramp * t) * shade[static_cast<std::size_t>(std::clamp(d, -reach, reach) + reach)];
        for (int c = 0; c < 3; ++c) row[3 * x + c] = clamp_u8(row[3 * x + c] * f * tint[c]);
      }
    }
    gaussian_blur(img, rng.uniform(0.6, 1.3));
    add_noise(img, rng.uniform(3.0, 7.0), rng, true);
    finish_jpeg(static_cast<int>(rng.range(55, 85)));
    return hm;
  }
  fail(Errc::kUsage, "synth: unknown degradation \"{}\" (expected none, scan, fax, photo or mixed)", kind);
}

}  // namespace mv::synth
