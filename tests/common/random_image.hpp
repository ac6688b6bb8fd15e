// A reproducible RGB8 image of uniform random bytes, for tests of image code.
#pragma once
#include <cstddef>
#include <cstdint>
#include <random>

#include "io/image.hpp"

namespace mv::test {

inline mv::ImageRGB8 random_image(int w, int h, unsigned seed) {
  mv::ImageRGB8 img;
  img.width = w;
  img.height = h;
  img.pixels.resize(static_cast<std::size_t>(w) * h * 3);
  std::mt19937 rng(seed);
  for (auto& p : img.pixels) p = static_cast<std::uint8_t>(rng() & 0xFF);
  return img;
}

}  // namespace mv::test
