// safetensors reader (validated, memory-mapped), sharded checkpoints, streaming writer, and the
// float16/bfloat16 conversions. The header is untrusted input: every length, offset and shape is
// checked before any byte of the data section is touched.
#include "io/safetensors.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <unordered_set>

#include "core/error.hpp"
#include "core/fd_write.hpp"
#include "core/log.hpp"

namespace mv {

namespace {

constexpr std::string_view kMetadataKey = "__metadata__";
constexpr std::string_view kIndexName = "model.safetensors.index.json";

struct DTypeEntry {
  DType dtype;
  const char* name;
  std::size_t size;
  bool is_float;
};

constexpr DTypeEntry kDTypes[] = {
    {DType::kF32, "F32", 4, true},        {DType::kF16, "F16", 2, true},
    {DType::kBF16, "BF16", 2, true},      {DType::kU8, "U8", 1, false},
    {DType::kI8, "I8", 1, false},         {DType::kI16, "I16", 2, false},
    {DType::kI32, "I32", 4, false},       {DType::kI64, "I64", 8, false},
    {DType::kBool, "BOOL", 1, false},     {DType::kF8E4M3, "F8_E4M3", 1, true},
    {DType::kF8E5M2, "F8_E5M2", 1, true},
};

const DTypeEntry* find_dtype(DType dt) noexcept {
  for (const auto& e : kDTypes)
    if (e.dtype == dt) return &e;
  return nullptr;
}

std::optional<DType> try_parse_dtype(std::string_view name) noexcept {
  for (const auto& e : kDTypes)
    if (name == e.name) return e.dtype;
  return std::nullopt;
}

// Product of the dimensions and the byte size, both overflow-checked. nullopt on overflow.
std::optional<std::uint64_t> checked_nbytes(const std::vector<std::int64_t>& shape, DType dt) {
  std::uint64_t n = 1;
  for (auto d : shape) {
    if (d < 0) return std::nullopt;
    if (__builtin_mul_overflow(n, static_cast<std::uint64_t>(d), &n)) return std::nullopt;
  }
  if (n > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return std::nullopt;
  std::uint64_t bytes = 0;
  if (__builtin_mul_overflow(n, static_cast<std::uint64_t>(dtype_size(dt)), &bytes)) return std::nullopt;
  return bytes;
}

std::string shape_str(const std::vector<std::int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// Parses the header JSON, rejecting duplicate keys (which nlohmann would silently collapse) and any
// nesting deeper than the format allows (top object > tensor object > shape array).
nlohmann::json parse_header_json(const fs::path& path, std::string_view text) {
  std::unordered_set<std::string> top_keys;
  std::unordered_set<std::string> entry_keys;
  auto callback = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) -> bool {
    using E = nlohmann::json::parse_event_t;
    if ((event == E::object_start || event == E::array_start) && depth >= 3)
      fail(Errc::kInvalidInput, "{}: safetensors header nests too deeply", path.string());
    if (event == E::object_start && depth == 1) entry_keys.clear();
    if (event == E::key && parsed.is_string()) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (depth == 1 && !top_keys.insert(key).second)
        fail(Errc::kInvalidInput, "{}: tensor '{}': listed twice in the header", path.string(), key);
      if (depth == 2 && !entry_keys.insert(key).second)
        fail(Errc::kInvalidInput, "{}: header: key '{}' repeated inside one entry", path.string(), key);
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), callback);
  } catch (const nlohmann::json::exception& e) {
    fail(Errc::kInvalidInput, "{}: safetensors header is not valid JSON: {}", path.string(), e.what());
  }
}

std::uint64_t read_u64_le(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::uint16_t load_u16(const std::uint8_t* p) {
  std::uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// Closes a file descriptor and removes a temp file unless released (RAII for the writer).
class TempFile {
 public:
  explicit TempFile(fs::path path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail(Errc::kIo, "{}: cannot open for writing: {}", path_.string(), std::strerror(errno));
  }
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) {
      std::error_code ec;
      fs::remove(path_, ec);
    }
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  void write(const void* data, std::size_t n) { write_all_fd(fd_, data, n, path_); }
  void commit(const fs::path& final_path) {
    if (::fsync(fd_) != 0) fail(Errc::kIo, "{}: fsync failed: {}", path_.string(), std::strerror(errno));
    if (::close(fd_) != 0) {
      fd_ = -1;
      fail(Errc::kIo, "{}: close failed: {}", path_.string(), std::strerror(errno));
    }
    fd_ = -1;
    std::error_code ec;
    fs::rename(path_, final_path, ec);
    if (ec) fail(Errc::kIo, "{}: cannot replace: {}", final_path.string(), ec.message());
    committed_ = true;
  }

 private:
  fs::path path_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace

// ---- dtypes -------------------------------------------------------------------------------------

std::size_t dtype_size(DType dt) noexcept {
  const auto* e = find_dtype(dt);
  return e ? e->size : 0;
}

const char* dtype_name(DType dt) noexcept {
  const auto* e = find_dtype(dt);
  return e ? e->name : "?";
}

DType parse_dtype(std::string_view name) {
  if (auto dt = try_parse_dtype(name)) return *dt;
  fail(Errc::kInvalidInput, "unknown dtype '{}'", name);
}

bool dtype_is_float(DType dt) noexcept {
  const auto* e = find_dtype(dt);
  return e != nullptr && e->is_float;
}

std::int64_t TensorInfo::numel() const {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

// ---- SafetensorsFile ----------------------------------------------------------------------------

SafetensorsFile::SafetensorsFile(const fs::path& path, const SafetensorsLimits& limits) : map_(path) {
  const std::string file = path.string();
  const std::uint64_t size = map_.size();
  if (size < 8)
    fail(Errc::kInvalidInput, "{}: not a safetensors file: {} bytes, less than the 8-byte header length",
         file, size);
  const std::uint64_t header_len = read_u64_le(map_.data());
  if (header_len > limits.max_header_bytes)
    fail(Errc::kInvalidInput, "{}: safetensors header of {} bytes is over the limit of {} bytes", file,
         header_len, limits.max_header_bytes);
  if (header_len > size - 8)
    fail(Errc::kInvalidInput, "{}: safetensors header length {} runs past the end of the file ({} bytes)",
         file, header_len, size);
  if (header_len < 2)
    fail(Errc::kInvalidInput, "{}: safetensors header of {} bytes is too short", file, header_len);
  data_offset_ = 8 + header_len;
  const std::uint64_t data_size = size - data_offset_;

  const std::string_view text(reinterpret_cast<const char*>(map_.data() + 8),
                              static_cast<std::size_t>(header_len));
  nlohmann::json header = parse_header_json(path, text);
  if (!header.is_object()) fail(Errc::kInvalidInput, "{}: safetensors header is not a JSON object", file);

  std::size_t n_entries = header.size() - (header.contains(kMetadataKey) ? 1 : 0);
  if (n_entries > limits.max_tensors)
    fail(Errc::kInvalidInput, "{}: {} tensors, over the limit of {}", file, n_entries, limits.max_tensors);
  tensors_.reserve(n_entries);

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == kMetadataKey) {
      if (v.is_null()) continue;
      if (!v.is_object()) fail(Errc::kInvalidInput, "{}: __metadata__ is not a JSON object", file);
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          fail(Errc::kInvalidInput, "{}: __metadata__ value of '{}' is not a string", file, m.key());
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (name.empty()) fail(Errc::kInvalidInput, "{}: a tensor has an empty name", file);
    if (!v.is_object()) fail(Errc::kInvalidInput, "{}: tensor '{}': entry is not a JSON object", file, name);
    TensorInfo info;
    info.name = name;

    const auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string())
      fail(Errc::kInvalidInput, "{}: tensor '{}': missing or non-string dtype", file, name);
    const auto parsed = try_parse_dtype(dt->get_ref<const std::string&>());
    if (!parsed)
      fail(Errc::kInvalidInput, "{}: tensor '{}': unknown dtype '{}'", file, name,
           dt->get_ref<const std::string&>());
    info.dtype = *parsed;

    const auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array())
      fail(Errc::kInvalidInput, "{}: tensor '{}': missing or non-array shape", file, name);
    info.shape.reserve(sh->size());
    for (const auto& d : *sh) {
      if (d.is_number_integer() && !d.is_number_unsigned())
        fail(Errc::kInvalidInput, "{}: tensor '{}': negative dimension {} in shape", file, name,
             d.get<std::int64_t>());
      if (!d.is_number_unsigned())
        fail(Errc::kInvalidInput, "{}: tensor '{}': shape has a non-integer dimension {}", file, name,
             d.dump());
      const auto u = d.get<std::uint64_t>();
      if (u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        fail(Errc::kInvalidInput, "{}: tensor '{}': dimension {} is too large", file, name, u);
      info.shape.push_back(static_cast<std::int64_t>(u));
    }

    const auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned())
      fail(Errc::kInvalidInput,
           "{}: tensor '{}': data_offsets must be two non-negative integers [begin, end]", file, name);
    info.begin = (*off)[0].get<std::uint64_t>();
    info.end = (*off)[1].get<std::uint64_t>();
    if (info.begin > info.end)
      fail(Errc::kInvalidInput, "{}: tensor '{}': data_offsets [{}, {}] end before they begin", file, name,
           info.begin, info.end);
    if (info.end > data_size)
      fail(Errc::kInvalidInput, "{}: tensor '{}': data_offsets [{}, {}] run past the data section ({} bytes)",
           file, name, info.begin, info.end, data_size);
    const auto nbytes = checked_nbytes(info.shape, info.dtype);
    if (!nbytes)
      fail(Errc::kInvalidInput, "{}: tensor '{}': shape {} overflows a 64-bit byte count", file, name,
           shape_str(info.shape));
    if (*nbytes != info.end - info.begin)
      fail(Errc::kInvalidInput,
           "{}: tensor '{}': shape {} of {} needs {} bytes but data_offsets span {} bytes", file, name,
           shape_str(info.shape), dtype_name(info.dtype), *nbytes, info.end - info.begin);
    tensors_.push_back(std::move(info));
  }

  std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // Overlap: after sorting by begin, a non-empty tensor must start at or after the furthest end so far.
  const TensorInfo* furthest = nullptr;
  for (const auto& t : tensors_) {
    if (t.begin == t.end) continue;
    if (furthest != nullptr && t.begin < furthest->end)
      fail(Errc::kInvalidInput, "{}: tensor '{}': bytes [{}, {}) overlap tensor '{}' [{}, {})", file, t.name,
           t.begin, t.end, furthest->name, furthest->begin, furthest->end);
    if (furthest == nullptr || t.end > furthest->end) furthest = &t;
  }
  index_.reserve(tensors_.size());
  for (std::size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  spdlog::debug("safetensors: {}: {} tensors, header {} bytes, data {} bytes", file, tensors_.size(),
                header_len, data_size);
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

TensorView SafetensorsFile::view(const TensorInfo& info) const {
  // Offsets were validated against the data section when the header was read.
  MV_CHECK(info.end <= map_.size() - data_offset_ && info.begin <= info.end, "tensor '{}' outside {}",
           info.name, path().string());
  TensorView v;
  v.info = &info;
  v.bytes = std::span<const std::uint8_t>(map_.data() + data_offset_ + info.begin,
                                          static_cast<std::size_t>(info.end - info.begin));
  return v;
}

TensorView SafetensorsFile::view(std::string_view name) const {
  const TensorInfo* info = find(name);
  if (info == nullptr) fail(Errc::kNotFound, "{}: tensor '{}': not in this file", path().string(), name);
  return view(*info);
}

// ---- TensorStore --------------------------------------------------------------------------------

TensorStore TensorStore::open(const fs::path& path_or_dir, const SafetensorsLimits& limits) {
  TensorStore store;
  store.limits_ = limits;
  std::error_code ec;
  const auto status = fs::status(path_or_dir, ec);
  if (ec || !fs::exists(status)) fail(Errc::kNotFound, "{}: no such file or directory", path_or_dir.string());

  auto add_whole_shard = [&](const fs::path& p) {
    const std::size_t i = store.shard_paths_.size();
    store.shard_paths_.push_back(p);
    store.shards_.push_back(std::make_unique<SafetensorsFile>(p, limits));
    for (const auto& t : store.shards_[i]->tensors()) {
      auto [it, inserted] = store.where_.emplace(t.name, i);
      if (!inserted)
        fail(Errc::kInvalidInput, "{}: tensor '{}': also present in {}", p.string(), t.name,
             store.shard_paths_[it->second].string());
    }
  };

  if (fs::is_regular_file(status)) {
    add_whole_shard(path_or_dir);
    return store;
  }
  if (!fs::is_directory(status))
    fail(Errc::kInvalidInput, "{}: neither a file nor a directory", path_or_dir.string());

  const fs::path index_path = path_or_dir / kIndexName;
  if (fs::exists(index_path, ec)) {
    store.has_index_ = true;
    const std::string text = read_file(index_path);
    nlohmann::json index;
    try {
      index = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      fail(Errc::kInvalidInput, "{}: not valid JSON: {}", index_path.string(), e.what());
    }
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
      fail(Errc::kInvalidInput, "{}: no \"weight_map\" object", index_path.string());
    const auto& wm = index["weight_map"];
    if (wm.size() > limits.max_tensors)
      fail(Errc::kInvalidInput, "{}: {} tensors, over the limit of {}", index_path.string(), wm.size(),
           limits.max_tensors);
    std::map<std::string, std::size_t> shard_ids;
    for (auto it = wm.begin(); it != wm.end(); ++it) {
      if (!it.value().is_string())
        fail(Errc::kInvalidInput, "{}: tensor '{}': shard name is not a string", index_path.string(),
             it.key());
      const fs::path rel(it.value().get<std::string>());
      bool bad = rel.empty() || rel.is_absolute();
      for (const auto& part : rel)
        if (part == "..") bad = true;
      if (bad)
        fail(Errc::kInvalidInput,
             "{}: tensor '{}': shard name '{}' must be a relative path inside the folder",
             index_path.string(), it.key(), rel.string());
      auto [sit, inserted] = shard_ids.emplace(rel.string(), shard_ids.size());
      if (inserted) {
        const fs::path shard_path = path_or_dir / rel;
        if (!fs::is_regular_file(shard_path, ec))
          fail(Errc::kNotFound, "{}: shard '{}' (holding tensor '{}') does not exist", index_path.string(),
               rel.string(), it.key());
        store.shard_paths_.push_back(shard_path);
      }
      store.where_.emplace(it.key(), sit->second);
    }
    store.shards_.resize(store.shard_paths_.size());
    return store;
  }

  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(path_or_dir, ec)) {
    if (entry.path().extension() == ".safetensors" && entry.is_regular_file(ec))
      files.push_back(entry.path());
  }
  if (ec) fail(Errc::kIo, "{}: cannot list: {}", path_or_dir.string(), ec.message());
  if (files.empty())
    fail(Errc::kNotFound, "{}: no .safetensors files and no {}", path_or_dir.string(), kIndexName);
  std::sort(files.begin(), files.end());
  for (const auto& f : files) add_whole_shard(f);
  return store;
}

SafetensorsFile& TensorStore::shard(std::size_t i) const {
  MV_CHECK(i < shard_paths_.size(), "shard {} of {}", i, shard_paths_.size());
  std::lock_guard<std::mutex> lock(*mutex_);
  if (!shards_[i]) {
    auto file = std::make_unique<SafetensorsFile>(shard_paths_[i], limits_);
    // Every tensor the index assigns to this shard must be there.
    for (const auto& [name, s] : where_) {
      if (s == i && file->find(name) == nullptr)
        fail(Errc::kInvalidInput, "{}: tensor '{}': listed in {} but missing from this shard",
             shard_paths_[i].string(), name, kIndexName);
    }
    shards_[i] = std::move(file);
  }
  return *shards_[i];
}

bool TensorStore::contains(std::string_view name) const { return where_.count(std::string(name)) != 0; }

TensorView TensorStore::view(std::string_view name) const {
  auto it = where_.find(std::string(name));
  if (it == where_.end()) {
    const std::string where = shard_paths_.size() == 1 ? shard_paths_[0].string()
                              : shard_paths_.empty()   ? std::string("checkpoint")
                                                       : shard_paths_[0].parent_path().string();
    fail(Errc::kNotFound, "{}: tensor '{}': not in this checkpoint", where, name);
  }
  return shard(it->second).view(name);
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [name, s] : where_) out.push_back(name);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<fs::path> TensorStore::files() const { return shard_paths_; }

// ---- SafetensorsWriter --------------------------------------------------------------------------

namespace {
void check_new_entry(const std::vector<std::int64_t>& shape, const std::string& name, DType dtype) {
  if (name.empty()) fail(Errc::kInvalidInput, "safetensors writer: empty tensor name");
  if (name == kMetadataKey) fail(Errc::kInvalidInput, "safetensors writer: '{}' is a reserved name", name);
  if (find_dtype(dtype) == nullptr)
    fail(Errc::kInvalidInput, "safetensors writer: tensor '{}': bad dtype", name);
  for (auto d : shape)
    if (d < 0) fail(Errc::kInvalidInput, "safetensors writer: tensor '{}': negative dimension {}", name, d);
  if (!checked_nbytes(shape, dtype))
    fail(Errc::kInvalidInput, "safetensors writer: tensor '{}': shape {} overflows", name, shape_str(shape));
}
}  // namespace

void SafetensorsWriter::add(std::string name, DType dtype, std::vector<std::int64_t> shape,
                            std::span<const std::uint8_t> data) {
  check_new_entry(shape, name, dtype);
  const std::uint64_t need = *checked_nbytes(shape, dtype);
  if (need != data.size())
    fail(Errc::kInvalidInput, "safetensors writer: tensor '{}': shape {} of {} needs {} bytes, got {}", name,
         shape_str(shape), dtype_name(dtype), need, data.size());
  for (const auto& e : entries_)
    if (e.name == name) fail(Errc::kInvalidInput, "safetensors writer: tensor '{}' added twice", name);
  entries_.push_back(Entry{std::move(name), dtype, std::move(shape), {data.begin(), data.end()}, {}});
}

void SafetensorsWriter::add(std::string name, DType dtype, std::vector<std::int64_t> shape,
                            Producer produce) {
  check_new_entry(shape, name, dtype);
  if (!produce) fail(Errc::kInvalidInput, "safetensors writer: tensor '{}': empty producer", name);
  for (const auto& e : entries_)
    if (e.name == name) fail(Errc::kInvalidInput, "safetensors writer: tensor '{}' added twice", name);
  entries_.push_back(Entry{std::move(name), dtype, std::move(shape), {}, std::move(produce)});
}

namespace {
// Header JSON (metadata first, then tensors in insertion order), padded with spaces to 8 bytes.
template <typename Entries>
std::string build_header(const Entries& entries, const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    h[std::string(kMetadataKey)] = std::move(m);
  }
  std::uint64_t offset = 0;
  for (const auto& e : entries) {
    const std::uint64_t n = *checked_nbytes(e.shape, e.dtype);
    nlohmann::ordered_json t = nlohmann::ordered_json::object();
    t["dtype"] = dtype_name(e.dtype);
    t["shape"] = e.shape;
    t["data_offsets"] = {offset, offset + n};
    h[e.name] = std::move(t);
    offset += n;
  }
  std::string text = h.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::strict);
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}
}  // namespace

std::uint64_t SafetensorsWriter::total_bytes() const {
  std::uint64_t total = 8 + build_header(entries_, metadata_).size();
  for (const auto& e : entries_) total += *checked_nbytes(e.shape, e.dtype);
  return total;
}

void SafetensorsWriter::write(const fs::path& path) const {
  std::string header;
  try {
    header = build_header(entries_, metadata_);
  } catch (const nlohmann::json::exception& e) {
    fail(Errc::kInvalidInput, "{}: cannot encode the header (tensor names and metadata must be UTF-8): {}",
         path.string(), e.what());
  }
  if (path.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(path.parent_path(), ec);
  }
  fs::path tmp = path;
  static std::atomic<unsigned> counter{0};
  tmp += fmt::format(".tmp{}.{}", static_cast<long>(::getpid()), counter++);
  TempFile out(tmp);
  std::uint8_t len[8];
  const std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<std::uint8_t>(n >> (8 * i));
  out.write(len, 8);
  out.write(header.data(), header.size());
  std::vector<std::uint8_t> buffer;  // reused for every produced tensor: one tensor in memory at a time
  for (const auto& e : entries_) {
    const std::uint64_t nbytes = *checked_nbytes(e.shape, e.dtype);
    if (!e.produce) {
      out.write(e.owned.data(), e.owned.size());
      continue;
    }
    if (nbytes > std::numeric_limits<std::size_t>::max())
      fail(Errc::kTooLarge, "{}: tensor '{}' is too large for this machine", path.string(), e.name);
    buffer.assign(static_cast<std::size_t>(nbytes), 0);
    e.produce(std::span<std::uint8_t>(buffer.data(), buffer.size()));
    out.write(buffer.data(), buffer.size());
  }
  out.commit(path);
}

// ---- conversions --------------------------------------------------------------------------------

float bf16_to_f32(std::uint16_t v) noexcept {
  const std::uint32_t bits = static_cast<std::uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

std::uint16_t f32_to_bf16(float v) noexcept {
  std::uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u)
    return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);   // quiet NaN
  const std::uint32_t rounding = 0x7FFFu + ((bits >> 16) & 1u);  // nearest, ties to even; Inf stays Inf
  return static_cast<std::uint16_t>((bits + rounding) >> 16);
}

float f16_to_f32(std::uint16_t v) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(v & 0x8000u) << 16;
  const std::uint32_t exp = (v >> 10) & 0x1Fu;
  std::uint32_t mant = v & 0x3FFu;
  std::uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);  // Inf, or NaN with its payload
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    std::uint32_t e = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mant & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

std::uint16_t f32_to_f16(float v) noexcept {
  std::uint32_t bits;
  std::memcpy(&bits, &v, 4);
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t ax = bits & 0x7FFFFFFFu;
  if (ax >= 0x7F800000u) {
    if (ax == 0x7F800000u) return sign | 0x7C00u;
    return static_cast<std::uint16_t>(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));  // quiet NaN, top payload kept
  }
  if (ax >= 0x477FF000u) return sign | 0x7C00u;  // >= 65520 rounds to Inf
  if (ax >= 0x38800000u) {                       // normal half (>= 2^-14)
    std::uint32_t h = ((((ax >> 23) - 112u) << 10)) | ((ax >> 13) & 0x3FFu);
    const std::uint32_t rem = ax & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return static_cast<std::uint16_t>(sign | h);
  }
  if (ax <= 0x33000000u) return sign;  // <= 2^-25: rounds to zero (the tie goes to even zero)
  // Subnormal half: units of 2^-24.
  const std::uint32_t m = (ax & 0x7FFFFFu) | 0x800000u;
  const int e = static_cast<int>(ax >> 23) - 127;  // -25 .. -15
  const int shift = -(e + 1);                      // 14 .. 24
  std::uint32_t h = m >> shift;
  const std::uint32_t rem = m & ((1u << shift) - 1u);
  const std::uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (h & 1u))) ++h;
  return static_cast<std::uint16_t>(sign | h);
}

void to_f32(const TensorView& t, std::span<float> out) {
  if (t.info == nullptr) fail(Errc::kInvalidInput, "to_f32: empty tensor view");
  const auto n = static_cast<std::uint64_t>(t.numel());
  if (out.size() != n)
    fail(Errc::kInvalidInput, "tensor '{}': to_f32 needs an output of {} floats, got {}", t.info->name, n,
         out.size());
  const std::size_t es = dtype_size(t.dtype());
  if (t.bytes.size() != n * es)
    fail(Errc::kInvalidInput, "tensor '{}': {} bytes for {} elements of {}", t.info->name, t.bytes.size(), n,
         dtype_name(t.dtype()));
  const std::uint8_t* p = t.bytes.data();
  switch (t.dtype()) {
    case DType::kF32:
      if (n > 0) std::memcpy(out.data(), p, n * 4);
      return;
    case DType::kBF16:
      for (std::uint64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(load_u16(p + 2 * i));
      return;
    case DType::kF16:
      for (std::uint64_t i = 0; i < n; ++i) out[i] = f16_to_f32(load_u16(p + 2 * i));
      return;
    default:
      fail(Errc::kUnsupported, "tensor '{}': cannot convert {} to float32", t.info->name,
           dtype_name(t.dtype()));
  }
}

std::vector<float> to_f32(const TensorView& t) {
  if (t.info == nullptr) fail(Errc::kInvalidInput, "to_f32: empty tensor view");
  if (t.dtype() != DType::kF32 && t.dtype() != DType::kF16 && t.dtype() != DType::kBF16)
    fail(Errc::kUnsupported, "tensor '{}': cannot convert {} to float32", t.info->name,
         dtype_name(t.dtype()));
  std::vector<float> out(static_cast<std::size_t>(t.numel()));
  to_f32(t, out);
  return out;
}

}  // namespace mv
