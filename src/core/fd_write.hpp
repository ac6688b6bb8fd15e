// Writing a whole buffer to a POSIX file descriptor.
#pragma once
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>

#include "core/error.hpp"

namespace mv {

// Writes all `n` bytes at `data` to `fd` (at most 64 MiB per call, again after EINTR or a short write);
// throws kIo naming `path` when a write fails.
inline void write_all_fd(int fd, const void* data, std::size_t n, const std::filesystem::path& path) {
  const auto* p = static_cast<const std::uint8_t*>(data);
  while (n > 0) {
    const std::size_t chunk = std::min<std::size_t>(n, std::size_t{64} << 20);
    const ssize_t w = ::write(fd, p, chunk);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(Errc::kIo, "{}: write failed: {}", path.string(), std::strerror(errno));
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

}  // namespace mv
