// Files: whole-file read/write, atomic replace, and a read-only memory map (RAII).
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

namespace mv {

namespace fs = std::filesystem;

std::string read_file(const fs::path& path);                      // throws kNotFound / kIo
void write_file(const fs::path& path, std::string_view data);      // writes via a temp file + rename
void write_file(const fs::path& path, std::span<const std::byte> data);

// Read-only mapping of a whole file. Empty files map to an empty span.
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const fs::path& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }
  std::span<const std::uint8_t> bytes() const { return {data_, size_}; }
  const fs::path& path() const { return path_; }

 private:
  void release() noexcept;
  fs::path path_;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

// Hex SHA-256 of a buffer / of a file streamed in chunks.
std::string sha256_hex(std::string_view data);
std::string sha256_file_hex(const fs::path& path);

}  // namespace mv
