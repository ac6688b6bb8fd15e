// safetensors reader/writer, sharded stores, and the bf16/f16 conversions.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>

#include "common/expect_error.hpp"
#include "common/temp_dir.hpp"
#include "core/error.hpp"
#include "io/safetensors.hpp"

namespace mv {
namespace {

using mv::test::expect_error;
using mv::test::TempDir;

std::vector<std::uint8_t> iota_bytes(std::size_t n, std::uint8_t start = 1) {
  std::vector<std::uint8_t> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::uint8_t>(start + i * 7);
  return v;
}

// A file made of a little-endian length, the header text as given, and data bytes.
void write_raw(const fs::path& p, const std::string& header, std::size_t data_bytes,
               std::uint64_t length_field = std::numeric_limits<std::uint64_t>::max()) {
  std::ofstream out(p, std::ios::binary);
  const std::uint64_t n =
      length_field == std::numeric_limits<std::uint64_t>::max() ? header.size() : length_field;
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xFF));
  out << header;
  out << std::string(data_bytes, '\x11');
}

// Expects SafetensorsFile(p) to throw kInvalidInput with every needle in the message.
void expect_invalid(const fs::path& p, std::initializer_list<std::string> needles,
                    const SafetensorsLimits& limits = {}) {
  try {
    SafetensorsFile f(p, limits);
    FAIL() << "no error for " << p;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kInvalidInput) << e.what();
    const std::string msg = e.what();
    EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
    for (const auto& n : needles)
      EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

TEST(SafetensorsDType, NamesAndSizes) {
  const std::vector<std::pair<std::string, std::size_t>> expected{
      {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"U8", 1},      {"I8", 1},      {"I16", 2},
      {"I32", 4}, {"I64", 8}, {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
  };
  for (const auto& [name, size] : expected) {
    const DType dt = parse_dtype(name);
    EXPECT_EQ(dtype_name(dt), name);
    EXPECT_EQ(dtype_size(dt), size) << name;
  }
  EXPECT_TRUE(dtype_is_float(DType::kBF16));
  EXPECT_TRUE(dtype_is_float(DType::kF8E4M3));
  EXPECT_FALSE(dtype_is_float(DType::kI32));
  EXPECT_FALSE(dtype_is_float(DType::kBool));
  expect_error([&] { parse_dtype("F64X"); }, Errc::kInvalidInput);
}

TEST(Safetensors, RoundTripEveryDtype) {
  TempDir dir("st");
  const std::vector<DType> all{DType::kF32,  DType::kF16,    DType::kBF16,  DType::kU8,
                               DType::kI8,   DType::kI16,    DType::kI32,   DType::kI64,
                               DType::kBool, DType::kF8E4M3, DType::kF8E5M2};
  SafetensorsWriter w;
  std::map<std::string, std::vector<std::uint8_t>> data;
  int k = 0;
  for (DType dt : all) {
    const std::string name = std::string("t.") + dtype_name(dt);
    const std::vector<std::int64_t> shape{2, 3};
    data[name] = iota_bytes(6 * dtype_size(dt), static_cast<std::uint8_t>(k++));
    w.add(name, dt, shape, data[name]);
  }
  int produced = 0;
  w.add("produced", DType::kI32, {5}, [&](std::span<std::uint8_t> out) {
    ++produced;
    ASSERT_EQ(out.size(), 20u);
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<std::uint8_t>(200 - i);
  });
  w.add("scalar", DType::kF32, {}, iota_bytes(4));
  w.add("empty", DType::kBF16, {0, 4}, std::span<const std::uint8_t>());
  w.set_metadata("format", "pt");
  w.set_metadata("note", "é ünïcode");
  const fs::path p = dir / "a.safetensors";
  w.write(p);
  EXPECT_EQ(produced, 1);
  for (const auto& e : fs::directory_iterator(dir.path()))  // no temp file left behind
    EXPECT_EQ(e.path().filename(), "a.safetensors");
  EXPECT_EQ(fs::file_size(p), w.total_bytes());

  // Header: length multiple of 8, padded with spaces, metadata present.
  {
    std::ifstream in(p, std::ios::binary);
    std::uint8_t len[8];
    in.read(reinterpret_cast<char*>(len), 8);
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
    EXPECT_EQ(n % 8, 0u);
    std::string header(n, '\0');
    in.read(header.data(), static_cast<std::streamsize>(n));
    const auto j = nlohmann::json::parse(header);
    EXPECT_EQ(j["__metadata__"]["format"], "pt");
    const auto last = header.find_last_not_of(' ');
    EXPECT_EQ(header[last], '}');
  }

  SafetensorsFile f(p);
  EXPECT_EQ(f.tensors().size(), all.size() + 3);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "é ünïcode");
  for (DType dt : all) {
    const std::string name = std::string("t.") + dtype_name(dt);
    const TensorView v = f.view(name);
    EXPECT_EQ(v.dtype(), dt);
    EXPECT_EQ(v.shape(), (std::vector<std::int64_t>{2, 3}));
    EXPECT_EQ(v.numel(), 6);
    ASSERT_EQ(v.bytes.size(), data[name].size());
    EXPECT_EQ(std::memcmp(v.bytes.data(), data[name].data(), v.bytes.size()), 0) << name;
  }
  const TensorView pv = f.view("produced");
  ASSERT_EQ(pv.bytes.size(), 20u);
  EXPECT_EQ(pv.bytes[0], 200);
  EXPECT_EQ(pv.bytes[19], 181);
  EXPECT_EQ(f.view("scalar").numel(), 1);
  EXPECT_TRUE(f.view("scalar").shape().empty());
  EXPECT_EQ(f.view("empty").numel(), 0);
  EXPECT_EQ(f.view("empty").bytes.size(), 0u);
  // Data offsets follow insertion order and tensors() is sorted by offset.
  for (std::size_t i = 1; i < f.tensors().size(); ++i)
    EXPECT_LE(f.tensors()[i - 1].end, f.tensors()[i].begin);
  EXPECT_EQ(f.tensors().front().name, "t.F32");
  EXPECT_EQ(f.find("nope"), nullptr);
  expect_error([&] { f.view("nope"); }, Errc::kNotFound, "nope");
}

TEST(Safetensors, WriterRejectsBadEntries) {
  SafetensorsWriter w;
  const auto bytes = iota_bytes(8);
  EXPECT_THROW(w.add("x", DType::kF32, {3}, bytes), Error);   // 12 bytes needed
  EXPECT_THROW(w.add("x", DType::kF32, {-2}, bytes), Error);  // negative
  EXPECT_THROW(w.add("__metadata__", DType::kU8, {8}, bytes), Error);
  w.add("x", DType::kF32, {2}, bytes);
  EXPECT_THROW(w.add("x", DType::kU8, {8}, bytes), Error);  // duplicate
}

TEST(Safetensors, ProducerErrorLeavesNoFile) {
  TempDir dir("st");
  SafetensorsWriter w;
  w.add("a", DType::kU8, {4}, [](std::span<std::uint8_t>) { throw std::runtime_error("boom"); });
  EXPECT_THROW(w.write(dir / "x.safetensors"), std::runtime_error);
  EXPECT_FALSE(fs::exists(dir / "x.safetensors"));
  for (const auto& e : fs::directory_iterator(dir.path())) ADD_FAILURE() << "left behind: " << e.path();
}

TEST(SafetensorsHeader, TruncatedFile) {
  TempDir dir("st");
  const fs::path p = dir / "short.safetensors";
  {
    std::ofstream out(p, std::ios::binary);
    out << "abc";
  }
  expect_invalid(p, {"8-byte"});
  // Length field promises more header than the file holds.
  write_raw(p, R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 1, 4096);
  expect_invalid(p, {"past the end"});
  // Data section cut short: tensor runs past it.
  write_raw(p, R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 10);
  expect_invalid(p, {"'a'", "past the data section"});
}

TEST(SafetensorsHeader, HeaderTooLarge) {
  TempDir dir("st");
  const fs::path p = dir / "big.safetensors";
  write_raw(p, "{}", 0, 200ull << 20);  // claims 200 MiB of header
  expect_invalid(p, {"over the limit"});
  write_raw(p, R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 1);
  SafetensorsLimits small;
  small.max_header_bytes = 16;
  expect_invalid(p, {"over the limit"}, small);
  SafetensorsLimits few;
  few.max_tensors = 0;
  expect_invalid(p, {"over the limit"}, few);
}

TEST(SafetensorsHeader, BadJson) {
  TempDir dir("st");
  const fs::path p = dir / "bad.safetensors";
  write_raw(p, R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]})", 1);  // missing brace
  expect_invalid(p, {"not valid JSON"});
  write_raw(p, R"([1,2,3])", 0);
  expect_invalid(p, {"not a JSON object"});
  write_raw(p, std::string("{\"a\":\xff}"), 0);
  expect_invalid(p, {"not valid JSON"});
  write_raw(p, R"({"a":{"dtype":"U8","shape":[[[1]]],"data_offsets":[0,1]}})", 1);
  expect_invalid(p, {"nests too deeply"});
}

TEST(SafetensorsHeader, DuplicateNames) {
  TempDir dir("st");
  const fs::path p = dir / "dup.safetensors";
  write_raw(
      p,
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
      2);
  expect_invalid(p, {"'a'", "twice"});
}

TEST(SafetensorsHeader, UnknownDtype) {
  TempDir dir("st");
  const fs::path p = dir / "dt.safetensors";
  write_raw(p, R"({"w":{"dtype":"F64X","shape":[1],"data_offsets":[0,8]}})", 8);
  expect_invalid(p, {"'w'", "unknown dtype 'F64X'"});
  write_raw(p, R"({"w":{"dtype":3,"shape":[1],"data_offsets":[0,8]}})", 8);
  expect_invalid(p, {"'w'", "dtype"});
  write_raw(p, R"({"w":{"shape":[1],"data_offsets":[0,8]}})", 8);
  expect_invalid(p, {"'w'", "dtype"});
}

TEST(SafetensorsHeader, OffsetsOutside) {
  TempDir dir("st");
  const fs::path p = dir / "off.safetensors";
  write_raw(p, R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})", 6);
  expect_invalid(p, {"'w'", "past the data section"});
  write_raw(p, R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[5,4]}})", 6);
  expect_invalid(p, {"'w'", "end before they begin"});
  write_raw(p, R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[-1,3]}})", 6);
  expect_invalid(p, {"'w'", "data_offsets"});
  write_raw(p, R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0]}})", 6);
  expect_invalid(p, {"'w'", "data_offsets"});
  write_raw(p, R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0, 18446744073709551615]}})", 6);
  expect_invalid(p, {"'w'"});
}

TEST(SafetensorsHeader, Overlap) {
  TempDir dir("st");
  const fs::path p = dir / "ov.safetensors";
  write_raw(
      p,
      R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
      8);
  expect_invalid(p, {"'b'", "overlap", "'a'"});
  // A tensor inside another one.
  write_raw(
      p,
      R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}})",
      8);
  expect_invalid(p, {"overlap"});
  // Adjacent tensors and empty tensors anywhere are fine.
  write_raw(
      p,
      R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]},"e":{"dtype":"F32","shape":[0],"data_offsets":[2,2]}})",
      8);
  SafetensorsFile ok(p);
  EXPECT_EQ(ok.tensors().size(), 3u);
}

TEST(SafetensorsHeader, SizeMismatch) {
  TempDir dir("st");
  const fs::path p = dir / "sz.safetensors";
  write_raw(p, R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", 16);
  expect_invalid(p, {"'w'", "needs 16 bytes", "span 12"});
  // Element count overflowing 64 bits.
  write_raw(p, R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}})", 16);
  expect_invalid(p, {"'w'", "overflow"});
}

TEST(SafetensorsHeader, NegativeOrBadShape) {
  TempDir dir("st");
  const fs::path p = dir / "neg.safetensors";
  write_raw(p, R"({"w":{"dtype":"U8","shape":[-4],"data_offsets":[0,4]}})", 4);
  expect_invalid(p, {"'w'", "negative dimension -4"});
  write_raw(p, R"({"w":{"dtype":"U8","shape":[2.5],"data_offsets":[0,4]}})", 4);
  expect_invalid(p, {"'w'", "non-integer"});
  write_raw(p, R"({"w":{"dtype":"U8","shape":"4","data_offsets":[0,4]}})", 4);
  expect_invalid(p, {"'w'", "shape"});
}

TEST(SafetensorsHeader, BadMetadata) {
  TempDir dir("st");
  const fs::path p = dir / "md.safetensors";
  write_raw(p, R"({"__metadata__":{"format":1}})", 0);
  expect_invalid(p, {"__metadata__"});
  write_raw(p, R"({"__metadata__":["x"]})", 0);
  expect_invalid(p, {"__metadata__"});
}

// Random corruption of a valid file's length field and header: every outcome is a clean mv::Error or a
// file whose views all stay inside the mapping (run under -DMEDVISION_SANITIZE=ON to check the latter).
TEST(SafetensorsHeader, RandomCorruptionIsRejectedCleanly) {
  TempDir dir("st");
  SafetensorsWriter w;
  w.add("a.weight", DType::kBF16, {3, 5}, iota_bytes(30));
  w.add("b", DType::kF32, {2}, iota_bytes(8));
  w.add("c", DType::kF16, {4}, iota_bytes(8));
  w.set_metadata("format", "pt");
  const fs::path good = dir / "good.safetensors";
  w.write(good);
  std::string original;
  {
    std::ifstream in(good, std::ios::binary);
    original.assign(std::istreambuf_iterator<char>(in), {});
  }
  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<std::uint8_t>(original[i]);
  std::mt19937 rng(99);
  const fs::path p = dir / "bad.safetensors";
  int rejected = 0;
  for (int round = 0; round < 500; ++round) {
    std::string bytes = original;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const std::size_t pos = rng() % (8 + header_len);
      const char pool[] = "0123456789[]{}\",:- e\x01\xff";
      bytes[pos] = rng() % 2 ? pool[rng() % (sizeof(pool) - 1)] : static_cast<char>(rng());
    }
    if (rng() % 8 == 0) bytes.resize(rng() % bytes.size());
    {
      std::ofstream out(p, std::ios::binary | std::ios::trunc);
      out << bytes;
    }
    try {
      SafetensorsFile f(p);
      for (const auto& t : f.tensors()) {
        const TensorView v = f.view(t);
        ASSERT_EQ(v.bytes.size(), static_cast<std::size_t>(v.numel()) * dtype_size(v.dtype()));
        std::uint64_t sum = 0;
        for (auto b : v.bytes) sum += b;
        (void)sum;
        if (v.dtype() == DType::kF32 || v.dtype() == DType::kF16 || v.dtype() == DType::kBF16)
          (void)to_f32(v);
      }
    } catch (const Error& e) {
      ASSERT_TRUE(e.code() == Errc::kInvalidInput) << e.what();
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 150);
}

// ---- TensorStore --------------------------------------------------------------------------------

void write_shard(const fs::path& p, const std::vector<std::string>& names, std::uint8_t fill) {
  SafetensorsWriter w;
  for (const auto& n : names) {
    std::vector<std::uint8_t> bytes(8, fill);
    w.add(n, DType::kBF16, {2, 2}, bytes);
  }
  w.write(p);
}

void write_index(const fs::path& dir, const nlohmann::json& weight_map) {
  nlohmann::json j{{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}};
  std::ofstream(dir / "model.safetensors.index.json") << j.dump();
}

TEST(TensorStore, ShardedIndex) {
  TempDir dir("st");
  write_shard(dir / "model-00001-of-00002.safetensors", {"a", "b"}, 1);
  write_shard(dir / "model-00002-of-00002.safetensors", {"c"}, 2);
  write_index(dir.path(), {{"a", "model-00001-of-00002.safetensors"},
                           {"b", "model-00001-of-00002.safetensors"},
                           {"c", "model-00002-of-00002.safetensors"}});
  const TensorStore s = TensorStore::open(dir.path());
  EXPECT_TRUE(s.has_index());
  EXPECT_EQ(s.size(), 3u);
  EXPECT_EQ(s.files().size(), 2u);
  EXPECT_EQ(s.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_TRUE(s.contains("c"));
  EXPECT_FALSE(s.contains("d"));
  EXPECT_EQ(s.view("a").bytes[0], 1);
  EXPECT_EQ(s.view("c").bytes[0], 2);
  EXPECT_EQ(s.view("c").shape(), (std::vector<std::int64_t>{2, 2}));
  expect_error([&] { s.view("d"); }, Errc::kNotFound, "'d'");
}

TEST(TensorStore, ShardsOpenLazily) {
  TempDir dir("st");
  write_shard(dir / "s1.safetensors", {"a"}, 1);
  write_raw(dir / "s2.safetensors", "not json at all", 0);
  write_index(dir.path(), {{"a", "s1.safetensors"}, {"b", "s2.safetensors"}});
  const TensorStore s = TensorStore::open(dir.path());
  EXPECT_EQ(s.view("a").bytes[0], 1);  // the broken shard was never read
  expect_error([&] { s.view("b"); }, Errc::kInvalidInput, "s2.safetensors");
}

TEST(TensorStore, IndexErrors) {
  {
    TempDir dir("st");  // shard named in the index does not exist
    write_shard(dir / "s1.safetensors", {"a"}, 1);
    write_index(dir.path(), {{"a", "s1.safetensors"}, {"b", "missing.safetensors"}});
    expect_error([&] { TensorStore::open(dir.path()); }, Errc::kNotFound, "missing.safetensors");
  }
  {
    TempDir dir("st");  // tensor listed in the index but missing from its shard
    write_shard(dir / "s1.safetensors", {"a"}, 1);
    write_index(dir.path(), {{"a", "s1.safetensors"}, {"ghost", "s1.safetensors"}});
    const TensorStore s = TensorStore::open(dir.path());
    expect_error([&] { s.view("a"); }, Errc::kInvalidInput, "'ghost'");
  }
  {
    TempDir dir("st");  // path escaping the folder
    write_shard(dir / "s1.safetensors", {"a"}, 1);
    write_index(dir.path(), {{"a", "../s1.safetensors"}});
    expect_error([&] { TensorStore::open(dir.path()); }, Errc::kInvalidInput);
  }
  {
    TempDir dir("st");  // index without weight_map, and an index that is not JSON
    std::ofstream(dir / "model.safetensors.index.json") << R"({"metadata":{}})";
    EXPECT_THROW(TensorStore::open(dir.path()), Error);
    std::ofstream(dir / "model.safetensors.index.json", std::ios::trunc) << "{";
    expect_error([&] { TensorStore::open(dir.path()); }, Errc::kInvalidInput, "model.safetensors.index.json");
  }
}

TEST(TensorStore, FolderAndSingleFile) {
  TempDir dir("st");
  write_shard(dir / "b.safetensors", {"y"}, 2);
  write_shard(dir / "a.safetensors", {"x"}, 1);
  std::ofstream(dir / "README.md") << "not a shard";
  const TensorStore s = TensorStore::open(dir.path());
  EXPECT_FALSE(s.has_index());
  EXPECT_EQ(s.files().size(), 2u);
  EXPECT_EQ(s.files()[0].filename(), "a.safetensors");
  EXPECT_EQ(s.view("y").bytes[0], 2);
  const TensorStore one = TensorStore::open(dir / "a.safetensors");
  EXPECT_EQ(one.names(), std::vector<std::string>{"x"});

  write_shard(dir / "c.safetensors", {"x"}, 3);  // duplicate across shards
  expect_error([&] { TensorStore::open(dir.path()); }, Errc::kInvalidInput, "'x'");
  TempDir empty("st");
  expect_error([&] { TensorStore::open(empty.path()); }, Errc::kNotFound);
  EXPECT_THROW(TensorStore::open(dir / "nope"), Error);
}

// ---- conversions --------------------------------------------------------------------------------

float from_bits(std::uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

TEST(Conversions, Bf16HandValues) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(f32_to_bf16(-2.0f), 0xC000);
  EXPECT_EQ(f32_to_bf16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(bf16_to_f32(0x4049), 3.140625f);
  EXPECT_EQ(f32_to_bf16(3.14159265f), 0x4049);  // 0x40490FDB: below the half-way point
  // Ties: 1 + 2^-8 is half-way between 0x3F80 and 0x3F81 -> even (0x3F80);
  // 1 + 3*2^-8 is half-way between 0x3F81 and 0x3F82 -> even (0x3F82).
  EXPECT_EQ(f32_to_bf16(from_bits(0x3F808000)), 0x3F80);
  EXPECT_EQ(f32_to_bf16(from_bits(0x3F818000)), 0x3F82);
  EXPECT_EQ(f32_to_bf16(from_bits(0x3F808001)), 0x3F81);  // just above half-way
  EXPECT_EQ(f32_to_bf16(from_bits(0x3F807FFF)), 0x3F80);  // just below
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(f32_to_bf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7F80);  // rounds up to Inf
  EXPECT_EQ(f32_to_bf16(from_bits(0x00000001)), 0x0000);              // tiny denormal
  EXPECT_EQ(f32_to_bf16(from_bits(0x00010000)), 0x0001);              // bf16 denormal kept
  // NaN stays NaN (also a NaN whose payload sits only in the low bits).
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()) & 0x7FC0, 0x7FC0);
  const std::uint16_t low_nan = f32_to_bf16(from_bits(0x7F800001));
  EXPECT_TRUE(std::isnan(bf16_to_f32(low_nan)));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(from_bits(0xFFC00000)))));
  EXPECT_TRUE(std::isinf(bf16_to_f32(0x7F80)));
}

TEST(Conversions, F16HandValues) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3C00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xC000);
  EXPECT_EQ(f32_to_f16(0.5f), 0x3800);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(0.1f), 0x2E66);
  EXPECT_EQ(f32_to_f16(3.14159265f), 0x4248);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7BFF);  // largest finite
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7BFF);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7C00);  // half-way to 65536 -> even -> Inf
  EXPECT_EQ(f32_to_f16(1e6f), 0x7C00);
  EXPECT_EQ(f32_to_f16(-1e6f), 0xFC00);
  // Ties at 1.0: ulp 2^-10.
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);
  EXPECT_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3C01);
  // Subnormals: unit 2^-24.
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);            // tie -> even (0)
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25) * 1.0001f), 0x0001);  // above the tie
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);            // 1.5 units: tie -> 2
  EXPECT_EQ(f32_to_f16(std::ldexp(5.0f, -25)), 0x0002);            // 2.5 units: tie -> 2
  EXPECT_EQ(f32_to_f16(std::ldexp(1023.0f, -24)), 0x03FF);         // largest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1023.5f, -24)), 0x0400);         // rounds up into normals
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14)), 0x0400);            // smallest normal
  EXPECT_EQ(f32_to_f16(-std::ldexp(1.0f, -24)), 0x8001);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x03FF), std::ldexp(1023.0f, -24));
  EXPECT_EQ(f16_to_f32(0x8200), -std::ldexp(1.0f, -15));
  EXPECT_EQ(f16_to_f32(0x7BFF), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x3555), 0.333251953125f);
  EXPECT_EQ(f16_to_f32(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(f16_to_f32(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7E00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7C01)));
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(from_bits(0x7F800001)))));  // low-payload NaN
}

TEST(Conversions, ExhaustiveHalfRoundTrip) {
  for (std::uint32_t h = 0; h <= 0xFFFF; ++h) {
    const auto v = static_cast<std::uint16_t>(h);
    const float f16 = f16_to_f32(v);
    if (std::isnan(f16)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f16))));
    } else {
      ASSERT_EQ(f32_to_f16(f16), v) << std::hex << h;
    }
    const float bf = bf16_to_f32(v);
    if (std::isnan(bf)) {
      EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(bf))));
    } else {
      ASSERT_EQ(f32_to_bf16(bf), v) << std::hex << h;
    }
  }
}

// Nearest-even rounding checked against float64: no neighbouring code (same sign, magnitude code +-1) is
// closer to x than the chosen one, and on a tie the chosen code is even.
template <typename Decode>
void expect_nearest_even(float x, std::uint16_t code, std::uint16_t max_finite, Decode decode) {
  const double got = decode(code);
  const std::uint16_t sign = code & 0x8000;
  const std::uint16_t mag = code & 0x7FFF;
  ASSERT_LE(mag, max_finite) << x;
  for (int step : {-1, 1}) {
    const int m = mag + step;
    if (m < 0 || m > max_finite) continue;
    const double alt = decode(static_cast<std::uint16_t>(sign | m));
    const double d_got = std::fabs(got - x), d_alt = std::fabs(alt - x);
    ASSERT_LE(d_got, d_alt) << x << " code " << code;
    if (d_got == d_alt) ASSERT_EQ(code & 1, 0) << x << " tie not to even";
  }
}

TEST(Conversions, RandomAgainstNearest) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<std::uint32_t> bits;
  std::uniform_real_distribution<float> small(-70000.0f, 70000.0f);
  for (int i = 0; i < 400000; ++i) {
    const float x = i % 2 ? from_bits(bits(rng)) : small(rng) * std::ldexp(1.0f, -(i % 30));
    if (!std::isfinite(x)) continue;
    if (std::fabs(x) < 65504.0f) expect_nearest_even(x, f32_to_f16(x), 0x7BFF, f16_to_f32);
    if (std::fabs(x) < 3.38e38f) expect_nearest_even(x, f32_to_bf16(x), 0x7F7F, bf16_to_f32);
  }
}

TEST(Conversions, ToF32) {
  TempDir dir("st");
  const std::vector<float> values{1.0f, -2.5f, 0.1f, 65504.0f, std::ldexp(1.0f, -24), -0.0f};
  std::vector<std::uint16_t> bf, hf;
  for (float v : values) {
    bf.push_back(f32_to_bf16(v));
    hf.push_back(f32_to_f16(v));
  }
  const std::vector<std::int32_t> ints{1, 2, 3, 4, 5, 6};
  SafetensorsWriter w;
  w.add("u", DType::kU8, {1}, iota_bytes(1));  // shifts the following tensors off 2/4-byte alignment
  w.add("bf", DType::kBF16, {2, 3}, {reinterpret_cast<const std::uint8_t*>(bf.data()), 12});
  w.add("hf", DType::kF16, {2, 3}, {reinterpret_cast<const std::uint8_t*>(hf.data()), 12});
  w.add("f", DType::kF32, {6}, {reinterpret_cast<const std::uint8_t*>(values.data()), 24});
  w.add("i", DType::kI32, {6}, {reinterpret_cast<const std::uint8_t*>(ints.data()), 24});
  w.write(dir / "c.safetensors");
  SafetensorsFile f(dir / "c.safetensors");
  const auto b = to_f32(f.view("bf"));
  const auto h = to_f32(f.view("hf"));
  const auto x = to_f32(f.view("f"));
  ASSERT_EQ(b.size(), 6u);
  for (std::size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(b[i], bf16_to_f32(bf[i]));
    EXPECT_EQ(h[i], f16_to_f32(hf[i]));
    EXPECT_EQ(x[i], values[i]);
  }
  EXPECT_EQ(h[3], 65504.0f);
  EXPECT_EQ(b[0], 1.0f);
  std::vector<float> wrong(5);
  EXPECT_THROW(to_f32(f.view("f"), wrong), Error);
  expect_error([&] { to_f32(f.view("i")); }, Errc::kUnsupported);
}

}  // namespace
}  // namespace mv
