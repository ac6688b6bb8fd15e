// Degradations of rendered pages, on the RGB buffer: skew (rotation with bilinear sampling), gaussian blur,
// noise, JPEG round trip (libjpeg), fax binarisation (threshold + error diffusion at fax line resolution),
// perspective photo with a background and a shadow gradient. Geometric steps are homographies; the
// accumulated one maps page pixels to output pixels so field boxes follow the text.
#pragma once
#include <array>
#include <string>
#include <vector>

#include "data/rng.hpp"
#include "extract/schema.hpp"
#include "io/image.hpp"

namespace mv::synth {

struct Homography {
  std::array<double, 9> m{1, 0, 0, 0, 1, 0, 0, 0, 1};  // row-major 3x3
  void apply(double x, double y, double& ox, double& oy) const;
  Homography then(const Homography& next) const;  // next * this
  Homography inverse() const;
  static Homography translate(double tx, double ty);
  static Homography rotate(double radians);
  static Homography scale(double sx, double sy);
  // The homography mapping the four points src[i] onto dst[i] (x, y pairs).
  static Homography from_quads(const std::array<double, 8>& src, const std::array<double, 8>& dst);
};

// The axis-aligned box of the transformed corners, clipped to width x height.
extract::BBox transform_box(const extract::BBox& box, const Homography& h, int width, int height);

inline const std::vector<std::string>& degrade_modes() {
  static const std::vector<std::string> kModes = {"none", "scan", "fax", "photo", "mixed"};
  return kModes;
}

// Applies the degradation `kind` (none | scan | fax | photo; "mixed" must be resolved by the caller) to
// `image` in place; returns the page-to-output homography. When the degradation ends with JPEG compression
// and jpeg_quality is given, the compression is left to the caller (who writes the JPEG file itself) and
// *jpeg_quality is set; otherwise the JPEG round trip is applied to the pixels and *jpeg_quality is 0.
Homography degrade(ImageRGB8& image, const std::string& kind, Rng& rng, int* jpeg_quality = nullptr);

// Individual steps (exposed for tests).
ImageRGB8 warp(const ImageRGB8& src, const Homography& forward, int out_w, int out_h,
               std::array<std::uint8_t, 3> bg);
void gaussian_blur(ImageRGB8& image, double sigma);
void add_noise(ImageRGB8& image, double sigma, Rng& rng, bool per_channel);
void jpeg_roundtrip(ImageRGB8& image, int quality);
std::vector<std::uint8_t> encode_jpeg(const ImageRGB8& image, int quality);
ImageRGB8 decode_jpeg(const std::vector<std::uint8_t>& data);
void fax_binarize(ImageRGB8& image, Rng& rng);

}  // namespace mv::synth
