// Tokenizer encode throughput: single-threaded encoding of a multi-megabyte clinical-text buffer built from
// the clinical sections of the tokenizer parity corpus (tests/fixtures/tokenizer/corpus.txt).
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace mv::bench {

struct TokenizerBenchOptions {
  std::filesystem::path tokenizer_json;  // empty: default_tokenizer_json()
  std::filesystem::path corpus;          // empty: <source dir>/tests/fixtures/tokenizer/corpus.txt
  std::size_t target_bytes = 8'000'000;  // size of the text buffer (at least 5 MB is meaningful)
  int repeats = 3;                       // timed passes after one warm-up pass; the best is reported
  std::uint64_t seed = 20240917;         // variations (digits, line order) are deterministic
  std::filesystem::path dump_text;       // when set, the benchmark text is also written here
};

// Lines of `corpus` that belong to sections whose header ("## clinical...") starts with "clinical".
std::vector<std::string> clinical_corpus_lines(const std::string& corpus);

// Builds the benchmark text: clinical lines shuffled, with their digits varied, joined by '\n' until
// `target_bytes` is reached.
std::string build_clinical_text(const std::vector<std::string>& lines, std::size_t target_bytes,
                                std::uint64_t seed);

// Runs the benchmark and returns its report (machine, date, sizes, MB/s, tokens/s, SHA-256 of the ids as
// little-endian int32, comparable with tools/reference/bench_hf_tokenizer.py on the dumped text).
nlohmann::json run_tokenizer_bench(const TokenizerBenchOptions& options);

}  // namespace mv::bench
