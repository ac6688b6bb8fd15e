// Platform-independent pseudo-random numbers: SplitMix64 (seeding, counter-based streams) and
// xoshiro256** (sequential draws). Integer arithmetic only, so every machine produces the same bits.
#pragma once
#include <cstdint>

namespace mv::qwen25vl {

inline constexpr std::uint64_t kGoldenGamma = 0x9E3779B97F4A7C15ull;

// The SplitMix64 output function: a bijective 64-bit mixer.
constexpr std::uint64_t splitmix64_mix(std::uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Element i of the SplitMix64 stream that starts at `key`: random access, so a tensor can be filled in
// parallel chunks with the same result as a sequential fill.
constexpr std::uint64_t splitmix64_at(std::uint64_t key, std::uint64_t i) noexcept {
  return splitmix64_mix(key + (i + 1) * kGoldenGamma);
}

// FNV-1a 64 of a byte string (stable names -> stream keys).
constexpr std::uint64_t fnv1a64(const char* s, std::uint64_t n) noexcept {
  std::uint64_t h = 0xCBF29CE484222325ull;
  for (std::uint64_t i = 0; i < n; ++i) {
    h ^= static_cast<unsigned char>(s[i]);
    h *= 0x100000001B3ull;
  }
  return h;
}

class Xoshiro256 {
 public:
  explicit Xoshiro256(std::uint64_t seed = 0) noexcept { reseed(seed); }
  void reseed(std::uint64_t seed) noexcept {
    for (int i = 0; i < 4; ++i) s_[i] = splitmix64_at(seed, static_cast<std::uint64_t>(i));
  }
  std::uint64_t next() noexcept {  // xoshiro256**
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  // Uniform in [0, 1) with 53 random bits (exact integer -> double conversion).
  double uniform() noexcept { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) noexcept { return (x << k) | (x >> (64 - k)); }
  std::uint64_t s_[4];
};

}  // namespace mv::qwen25vl
