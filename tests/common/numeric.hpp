// Helpers shared by the test areas (header only; tests/common has no test binary of its own).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>

namespace mv::test {

// Relative L2 distance ||got - want|| / ||want||, over want.size() elements, in double.
inline double rel_l2(std::span<const float> got, std::span<const float> want) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double d = double(got[i]) - double(want[i]);
    num += d * d;
    den += double(want[i]) * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

}  // namespace mv::test
