// Progress for long work: a redrawn bar on a terminal, periodic plain lines otherwise (stderr).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace mv {

class Progress {
 public:
  // total == 0: unknown total (counts only). unit "B" formats as bytes.
  Progress(std::string label, std::uint64_t total, std::string unit = "");
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void set_total(std::uint64_t total) { total_ = total; }
  void advance(std::uint64_t n) { update(done_ + n); }
  void update(std::uint64_t done);
  void finish();  // prints the final line once

  static void set_enabled(bool enabled);  // --quiet turns all bars off

 private:
  void draw(bool final_line);
  std::string label_;
  std::uint64_t total_;
  std::string unit_;
  std::uint64_t done_ = 0;
  bool tty_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

std::string format_bytes(double bytes);

}  // namespace mv
