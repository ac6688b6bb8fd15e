// medvision bench --concurrency: several sequences of one page decoded together on the CPU engine over a
// tiny random checkpoint (the figures are not checked, only what the JSON says about the runs).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "common/temp_dir.hpp"
#include "core/file.hpp"

namespace fs = std::filesystem;

namespace {

using mv::test::TempDir;

int run(const std::string& args) {
  const std::string cmd = std::string(MV_BINARY) + " " + args + " >/dev/null 2>&1";
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

TEST(BenchCli, ConcurrencyDecodesSequencesTogether) {
  TempDir d("bench_cli");
  const fs::path model = d.path() / "tiny";
  ASSERT_EQ(run("-q debug random-checkpoint --config tiny --out " + model.string()), 0);
  const std::string image = (fs::path(MV_FIXTURES_DIR) / "model" / "images" / "form_150x120.png").string();
  const std::string common = "-q bench --model " + model.string() + " --image " + image +
                             " --max-new-tokens 4 --ignore-eos --runs 1 --warmup 0 --device cpu --threads 1";
  const fs::path out3 = d.path() / "c3.json", out1 = d.path() / "c1.json";
  ASSERT_EQ(run(common + " --concurrency 3 --json " + out3.string()), 0);
  ASSERT_EQ(run(common + " --json " + out1.string()), 0);
  const auto j3 = nlohmann::json::parse(mv::read_file(out3));
  const auto j1 = nlohmann::json::parse(mv::read_file(out1));
  EXPECT_EQ(j3["concurrency"], 3);
  EXPECT_EQ(j3["generated_tokens"]["median"].get<double>(), 4.0);  // per sequence
  EXPECT_EQ(j3["prompt_tokens"], j1["prompt_tokens"]);
  EXPECT_EQ(j3["image_tokens"], j1["image_tokens"]);
  // Every step served the 3 sequences: the aggregate rate is 3 times one sequence's rate.
  const double per_seq = j3["tokens_per_second"]["median"].get<double>();
  const double aggregate = j3["aggregate_tokens_per_second"]["median"].get<double>();
  EXPECT_GT(per_seq, 0.0);
  EXPECT_NEAR(aggregate, 3.0 * per_seq, 1e-9 * aggregate);
  EXPECT_TRUE(j3.contains("e2e_seconds_per_batch"));
  // Concurrency 1: the aggregate is the one sequence's rate.
  EXPECT_EQ(j1["concurrency"], 1);
  EXPECT_EQ(j1["generated_tokens"]["median"].get<double>(), 4.0);
  EXPECT_EQ(j1["aggregate_tokens_per_second"]["median"], j1["tokens_per_second"]["median"]);
  EXPECT_EQ(run(common + " --concurrency 0"), 2);  // usage
}
