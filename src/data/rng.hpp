// A small deterministic random generator (xoshiro256**, seeded through splitmix64) with its own
// distributions, so a seed gives the same documents with any standard library and on any platform
// (std::uniform_*_distribution are implementation-defined).
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace mv::synth {

inline std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

class Rng {
 public:
  explicit Rng(std::uint64_t seed) {
    std::uint64_t sm = seed;
    for (auto& w : s_) w = splitmix64(sm);
  }
  // An independent stream for item `index` of stream `stream` under `seed` (documents, degradations, ...).
  static Rng derive(std::uint64_t seed, std::uint64_t stream, std::uint64_t index) {
    std::uint64_t sm = seed ^ 0x6D65647669736E00ULL;  // "medvisn"
    std::uint64_t a = splitmix64(sm) ^ (stream * 0xD1B54A32D192ED03ULL);
    a ^= splitmix64(a) + index * 0x9E3779B97F4A7C15ULL;
    return Rng(splitmix64(a));
  }

  std::uint64_t next() {
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
  // Uniform in [0, 1).
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  // Uniform integer in [lo, hi] (inclusive).
  long long range(long long lo, long long hi) {
    if (hi <= lo) return lo;
    const auto span = static_cast<unsigned __int128>(static_cast<std::uint64_t>(hi - lo) + 1);
    return lo + static_cast<long long>((static_cast<unsigned __int128>(next()) * span) >> 64);
  }
  std::size_t index(std::size_t n) {
    return n == 0 ? 0 : static_cast<std::size_t>(range(0, static_cast<long long>(n) - 1));
  }
  bool chance(double p) { return uniform() < p; }
  // Standard normal (Box-Muller).
  double normal() {
    const double u1 = 1.0 - uniform();
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  template <typename T>
  const T& pick(const std::vector<T>& v) {
    return v[index(v.size())];
  }
  // Index drawn with the given (non-negative) weights.
  std::size_t weighted(const std::vector<double>& weights) {
    double total = 0;
    for (double w : weights) total += w;
    double r = uniform() * total;
    for (std::size_t i = 0; i < weights.size(); ++i) {
      if (r < weights[i]) return i;
      r -= weights[i];
    }
    return weights.empty() ? 0 : weights.size() - 1;
  }
  template <typename T>
  void shuffle(std::vector<T>& v) {
    for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[index(i)]);
  }
  // k distinct elements (k clipped to v.size()), in random order.
  template <typename T>
  std::vector<T> sample(std::vector<T> v, std::size_t k) {
    shuffle(v);
    if (v.size() > k) v.resize(k);
    return v;
  }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::uint64_t s_[4];
};

}  // namespace mv::synth
