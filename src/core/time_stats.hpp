// Small helpers shared by the benchmarks and reports: the UTC time stamp they write, and percentiles.
#pragma once
#include <algorithm>
#include <cstddef>
#include <ctime>
#include <string>
#include <vector>

namespace mv {

// Now, as an ISO 8601 UTC time stamp ("2026-11-23T06:30:00Z").
inline std::string utc_timestamp() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// The p-th percentile (0..100) of the values, interpolated linearly between the nearest ranks (numpy's
// default); 0 for no values.
inline double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<std::size_t>(rank);
  const auto hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - static_cast<double>(lo));
}

}  // namespace mv
