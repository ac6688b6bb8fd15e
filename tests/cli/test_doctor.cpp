#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "core/file.hpp"
#include "core/system_info.hpp"
#include "run_cli.hpp"

using mv::testing::run_cli;

TEST(Doctor, JsonReportHasEverySection) {
  const auto r = run_cli("doctor --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_FALSE(j["os"]["name"].get<std::string>().empty());
  EXPECT_GE(j["cpu"]["logical_cores"].get<int>(), 1);
  EXPECT_FALSE(j["cpu"]["arch"].get<std::string>().empty());
  EXPECT_GT(j["memory"]["total_bytes"].get<std::uint64_t>(), 0u);
  EXPECT_TRUE(j["cuda"].contains("gpus"));
  // With no usable GPU the report says why; with one, every GPU has its fields.
  if (j["cuda"]["gpus"].empty()) {
    EXPECT_FALSE(j["cuda"]["error"].get<std::string>().empty());
  } else {
    for (const auto& g : j["cuda"]["gpus"]) {
      EXPECT_GT(g["vram_total_bytes"].get<std::uint64_t>(), 0u);
      EXPECT_FALSE(g["name"].get<std::string>().empty());
    }
  }
  for (const char* lib : {"openblas", "pcre2", "utf8proc", "libtiff", "libwebp", "poppler", "libcurl", "openssl"}) {
    EXPECT_TRUE(j["libraries"].contains(lib)) << lib;
  }
}

TEST(Doctor, WriteSavesEnvironmentJson) {
  const auto path = std::filesystem::temp_directory_path() / "mv_doctor_test" / "environment.json";
  std::filesystem::remove_all(path.parent_path());
  const auto r = run_cli("doctor --write --path " + path.string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_TRUE(std::filesystem::exists(path));
  const auto j = nlohmann::json::parse(mv::read_file(path));
  EXPECT_TRUE(j.contains("timestamp"));
  EXPECT_TRUE(j.contains("libraries"));
  EXPECT_NE(r.out.find("CPU:"), std::string::npos);  // the text report is printed too
  std::filesystem::remove_all(path.parent_path());
}

TEST(Doctor, CpuReportMatchesThisProcess) {
  const auto cpu = mv::query_cpu();
  EXPECT_EQ(cpu.logical_cores, static_cast<int>(std::thread::hardware_concurrency()));
#if defined(__x86_64__)
  EXPECT_EQ(cpu.arch, "x86_64");
#endif
}

TEST(Cli, UsageErrorsExitWithTwo) {
  EXPECT_EQ(run_cli("--no-such-flag doctor").exit_code, 2);
  EXPECT_EQ(run_cli("doctor --no-such-flag").exit_code, 2);
  EXPECT_EQ(run_cli("").exit_code, 2);
  const auto help = run_cli("--help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("doctor"), std::string::npos);
  const auto version = run_cli("--version");
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_NE(version.out.find(MEDVISION_VERSION), std::string::npos);
}
