// Checks that a call fails with a given mv::Error code (and a message naming what went wrong).
#pragma once
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <string_view>

#include "core/error.hpp"

namespace mv::test {

// Runs `fn` and checks that it throws mv::Error with `code` and a message containing `needle` (typically
// the file or field at fault; empty: any message).
inline void expect_error(const std::function<void()>& fn, mv::Errc code, std::string_view needle = {}) {
  try {
    fn();
    ADD_FAILURE() << "expected mv::Error " << mv::errc_name(code) << " mentioning '" << needle << "'";
  } catch (const mv::Error& e) {
    EXPECT_EQ(e.code(), code) << "message: " << e.what();
    EXPECT_NE(std::string_view(e.what()).find(needle), std::string_view::npos) << "message: " << e.what();
  }
}

// The code of the mv::Error that `fn` throws; Errc::kInternal when it throws none (callers compare it with
// the code they expect, so "no error" shows as a mismatch).
template <typename F>
mv::Errc error_code_of(F&& fn) {
  try {
    fn();
  } catch (const mv::Error& e) {
    return e.code();
  }
  return mv::Errc::kInternal;
}

}  // namespace mv::test
