// medvision bench-tokenizer [--json OUT]: single-threaded encode throughput on clinical text.
#include <memory>
#include <string>

#include "bench/tokenizer_bench.hpp"
#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/file.hpp"

namespace mv::cli {

namespace {

struct BenchTokenizerArgs {
  bench::TokenizerBenchOptions options;
  std::string tokenizer;
  std::string corpus;
  std::string json_out;
  std::string dump_text;
  double megabytes = 8.0;
};

void run_bench_tokenizer(BenchTokenizerArgs& a) {
  if (!(a.megabytes >= 1.0 && a.megabytes <= 1024.0))
    fail(Errc::kUsage, "bench-tokenizer: --mb must be 1..1024");
  a.options.tokenizer_json = a.tokenizer;
  a.options.corpus = a.corpus;
  a.options.dump_text = a.dump_text;
  a.options.target_bytes = static_cast<std::size_t>(a.megabytes * 1e6);
  const nlohmann::json report = bench::run_tokenizer_bench(a.options);
  if (!a.json_out.empty()) write_file(a.json_out, report.dump(2) + "\n");
  print_json(report);
}

}  // namespace

void add_bench_tokenizer_command(CLI::App& app) {
  auto args = std::make_shared<BenchTokenizerArgs>();
  auto* cmd = app.add_subcommand("bench-tokenizer",
                                 "Measure single-threaded tokenizer encode speed (MB/s, tokens/s)");
  cmd->add_option("--json", args->json_out,
                  "also write the report to this file (e.g. benchmarks/tokenizer.json)");
  cmd->add_option("--tokenizer", args->tokenizer,
                  "tokenizer.json (default: the cached one from scripts/setup.sh)");
  cmd->add_option("--corpus", args->corpus,
                  "corpus whose '## clinical' sections are used (default: the test corpus)");
  cmd->add_option("--mb", args->megabytes, "size of the text buffer in MB (10^6 bytes)")
      ->capture_default_str();
  cmd->add_option("--dump-text", args->dump_text,
                  "write the benchmark text here (input of tools/reference/bench_hf_tokenizer.py)");
  cmd->add_option("--repeats", args->options.repeats, "timed runs after the cold run")->capture_default_str();
  cmd->callback([args] { run_bench_tokenizer(*args); });
}

}  // namespace mv::cli
