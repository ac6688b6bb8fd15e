// A fresh temporary folder for a test, removed with everything in it when the object goes away.
#pragma once
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>

#include "core/file.hpp"

namespace mv::test {

class TempDir {
 public:
  // <system temp folder>/mv_<tag>_<pid>_<n>: the process id and a per-process count keep folders apart
  // between tests running at once and within one test. Anything left there by an earlier run is removed.
  explicit TempDir(std::string_view tag = "test") {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("mv_" + std::string(tag) + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(std::string_view name) const { return path_ / name; }
  // Writes `data` to the file `name` in the folder and returns its path.
  std::filesystem::path write(std::string_view name, std::string_view data) const {
    const std::filesystem::path p = path_ / name;
    mv::write_file(p, data);
    return p;
  }

 private:
  std::filesystem::path path_;
};

}  // namespace mv::test
