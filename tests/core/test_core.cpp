#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "common/expect_error.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "core/progress.hpp"

namespace fs = std::filesystem;
using mv::test::expect_error;

TEST(Error, MapsToExitCodesAndHttpStatuses) {
  EXPECT_EQ(mv::exit_code(mv::Errc::kUsage), 2);
  EXPECT_EQ(mv::exit_code(mv::Errc::kInvalidInput), 3);
  EXPECT_EQ(mv::exit_code(mv::Errc::kNotFound), 3);
  EXPECT_EQ(mv::exit_code(mv::Errc::kFailure), 1);
  EXPECT_EQ(mv::http_status(mv::Errc::kInvalidInput), 400);
  EXPECT_EQ(mv::http_status(mv::Errc::kAuth), 401);
  EXPECT_EQ(mv::http_status(mv::Errc::kTooLarge), 413);
  EXPECT_EQ(mv::http_status(mv::Errc::kUnsupported), 415);
  EXPECT_EQ(mv::http_status(mv::Errc::kInternal), 500);
  try {
    mv::fail(mv::Errc::kTooLarge, "{}: {} pages", "a.pdf", 99);
    FAIL() << "fail() returned";
  } catch (const mv::Error& e) {
    EXPECT_EQ(e.code(), mv::Errc::kTooLarge);
    EXPECT_STREQ(e.what(), "a.pdf: 99 pages");
  }
}

TEST(File, WriteReadMapRoundTrip) {
  const fs::path dir = fs::temp_directory_path() / "mv_core_test";
  fs::remove_all(dir);
  const fs::path p = dir / "sub" / "data.bin";
  std::string data(100000, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 131) & 0xff);
  mv::write_file(p, data);
  EXPECT_EQ(mv::read_file(p), data);
  mv::MappedFile m(p);
  ASSERT_EQ(m.size(), data.size());
  EXPECT_EQ(0, std::memcmp(m.data(), data.data(), data.size()));
  mv::MappedFile moved = std::move(m);
  EXPECT_EQ(moved.size(), data.size());
  EXPECT_EQ(m.size(), 0u);
  mv::write_file(dir / "empty", std::string());
  mv::MappedFile empty(dir / "empty");
  EXPECT_EQ(empty.size(), 0u);
  fs::remove_all(dir);
}

TEST(File, MissingFilesAreNotFound) {
  expect_error([&] { mv::read_file("/nonexistent/dir/file.txt"); }, mv::Errc::kNotFound,
               "/nonexistent/dir/file.txt");
  EXPECT_THROW(mv::MappedFile("/nonexistent/x"), mv::Error);
  EXPECT_THROW(mv::MappedFile("/tmp"), mv::Error);  // a directory is not a regular file
}

TEST(File, Sha256KnownVectors) {
  EXPECT_EQ(mv::sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(mv::sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const fs::path p = fs::temp_directory_path() / "mv_sha_test.bin";
  std::string big(3 << 20, 'a');  // spans several read chunks
  mv::write_file(p, big);
  EXPECT_EQ(mv::sha256_file_hex(p), mv::sha256_hex(big));
  fs::remove(p);
}

TEST(Progress, FormatsBytes) {
  EXPECT_EQ(mv::format_bytes(512), "512 B");
  EXPECT_EQ(mv::format_bytes(1536), "1.5 KiB");
  EXPECT_EQ(mv::format_bytes(3.0 * 1024 * 1024 * 1024), "3.0 GiB");
}
