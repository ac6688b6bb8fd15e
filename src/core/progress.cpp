#include "core/progress.hpp"

#include <unistd.h>

#include <atomic>
#include <cstdio>

#include <fmt/format.h>

namespace mv {

namespace {
std::atomic<bool> g_enabled{true};
}

void Progress::set_enabled(bool enabled) { g_enabled = enabled; }

std::string format_bytes(double bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 4) {
    bytes /= 1024.0;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} {}", bytes, kUnits[u]) : fmt::format("{:.1f} {}", bytes, kUnits[u]);
}

Progress::Progress(std::string label, std::uint64_t total, std::string unit)
    : label_(std::move(label)),
      total_(total),
      unit_(std::move(unit)),
      tty_(::isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

Progress::~Progress() {
  if (!finished_ && done_ > 0) finish();
}

void Progress::update(std::uint64_t done) {
  done_ = done;
  if (!g_enabled) return;
  const auto now = std::chrono::steady_clock::now();
  const auto interval = tty_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(5000);
  if (now - last_draw_ >= interval) {
    last_draw_ = now;
    draw(false);
  }
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (g_enabled) draw(true);
}

void Progress::draw(bool final_line) {
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const bool bytes = unit_ == "B";
  auto amount = [&](std::uint64_t v) {
    return bytes ? format_bytes(static_cast<double>(v)) : fmt::format("{}{}", v, unit_.empty() ? "" : " " + unit_);
  };
  std::string rate;
  if (secs > 0.05) {
    const double r = static_cast<double>(done_) / secs;
    rate = bytes ? format_bytes(r) + "/s" : fmt::format("{:.1f}/s", r);
  }
  std::string line;
  if (total_ > 0) {
    const double frac = std::min(1.0, static_cast<double>(done_) / static_cast<double>(total_));
    if (tty_) {
      constexpr int kWidth = 30;
      const int filled = static_cast<int>(frac * kWidth);
      line = fmt::format("{} [{}{}] {:5.1f}% {}/{} {}", label_, std::string(filled, '#'),
                         std::string(kWidth - filled, '.'), frac * 100.0, amount(done_), amount(total_), rate);
    } else {
      line = fmt::format("{}: {:.1f}% ({}/{}) {}", label_, frac * 100.0, amount(done_), amount(total_), rate);
    }
  } else {
    line = fmt::format("{}: {} {}", label_, amount(done_), rate);
  }
  if (final_line) line += fmt::format(" in {:.1f}s", secs);
  if (tty_) {
    std::fprintf(stderr, "\r\033[K%s%s", line.c_str(), final_line ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

}  // namespace mv
