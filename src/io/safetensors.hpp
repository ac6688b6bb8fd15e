// safetensors: validated mmap reader (single files and sharded indexes) and a writer.
// Format: u64 little-endian header length N, N bytes of JSON header, then the data section.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/file.hpp"

namespace mv {

enum class DType { kF32, kF16, kBF16, kU8, kI8, kI16, kI32, kI64, kBool, kF8E4M3, kF8E5M2 };

std::size_t dtype_size(DType dt) noexcept;  // bytes per element
const char* dtype_name(DType dt) noexcept;  // "F32", "BF16", "F8_E4M3", ...
DType parse_dtype(std::string_view name);   // throws kInvalidInput on unknown names
bool dtype_is_float(DType dt) noexcept;

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;  // offsets inside the data section
  std::uint64_t end = 0;
  std::int64_t numel() const;
  std::uint64_t nbytes() const { return end - begin; }
};

// A tensor's bytes inside a mapped file, with its metadata. Valid while its file is open.
struct TensorView {
  const TensorInfo* info = nullptr;
  std::span<const std::uint8_t> bytes;
  DType dtype() const { return info->dtype; }
  const std::vector<std::int64_t>& shape() const { return info->shape; }
  std::int64_t numel() const { return info->numel(); }
};

struct SafetensorsLimits {
  std::uint64_t max_header_bytes = 100ull << 20;  // 100 MiB, as the reference implementation
  std::uint64_t max_tensors = 1u << 20;
};

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const fs::path& path, const SafetensorsLimits& limits = {});
  const fs::path& path() const { return map_.path(); }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in data-offset order
  const TensorInfo* find(std::string_view name) const;                 // nullptr when absent
  TensorView view(const TensorInfo& info) const;
  TensorView view(std::string_view name) const;  // throws kNotFound
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  MappedFile map_;
  std::uint64_t data_offset_ = 0;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a checkpoint: model.safetensors.index.json (weight_map) when present, else every
// *.safetensors in the folder (or the single file given). Shards are opened lazily, once.
class TensorStore {
 public:
  static TensorStore open(const fs::path& path_or_dir, const SafetensorsLimits& limits = {});
  bool contains(std::string_view name) const;
  TensorView view(std::string_view name) const;  // throws kNotFound naming the tensor
  std::vector<std::string> names() const;        // sorted
  std::size_t size() const { return where_.size(); }
  std::vector<fs::path> files() const;
  bool has_index() const { return has_index_; }  // opened through model.safetensors.index.json

 private:
  SafetensorsFile& shard(std::size_t i) const;  // opens shard i on first use (thread-safe)
  SafetensorsLimits limits_;
  bool has_index_ = false;
  std::unique_ptr<std::mutex> mutex_ = std::make_unique<std::mutex>();
  std::vector<fs::path> shard_paths_;
  mutable std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::unordered_map<std::string, std::size_t> where_;  // tensor name -> shard
};

// Writes tensors in the order added (data offsets ascending, 8-byte aligned header as the reference
// writer does). Data can be given as bytes or produced by a callback when the file is written, so that
// large checkpoints are streamed without being held in memory.
class SafetensorsWriter {
 public:
  using Producer = std::function<void(std::span<std::uint8_t> out)>;
  void add(std::string name, DType dtype, std::vector<std::int64_t> shape,
           std::span<const std::uint8_t> data);
  void add(std::string name, DType dtype, std::vector<std::int64_t> shape, Producer produce);
  void set_metadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }
  std::uint64_t total_bytes() const;
  void write(const fs::path& path) const;  // atomic: temp file + rename

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<std::int64_t> shape;
    std::vector<std::uint8_t> owned;
    Producer produce;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Element conversions (round-to-nearest-even where narrowing).
float bf16_to_f32(std::uint16_t v) noexcept;
std::uint16_t f32_to_bf16(float v) noexcept;
float f16_to_f32(std::uint16_t v) noexcept;
std::uint16_t f32_to_f16(float v) noexcept;
// Converts a floating tensor (F32/F16/BF16) to float32; throws kUnsupported for other dtypes.
void to_f32(const TensorView& t, std::span<float> out);
std::vector<float> to_f32(const TensorView& t);

}  // namespace mv
