// `medvision synth`: synthetic clinical documents with ground truth, and their export as a training set.
//
// Output of run_synth (DIR = options.out_dir):
//   DIR/<id>.png            the page (one-page documents), or
//   DIR/<id>.pdf            every page (several pages): vector text when undegraded, JPEG pages otherwise
//   DIR/<id>.json           ground truth in the extraction schema (docs/schema.json): every item with the box
//                           of every field in page pixels at 150 dpi, plus "terms" and "values"
//   DIR/manifest.json       the run's options and one entry per document
// Document i depends only on (seed, i, types, degrade): documents render in parallel and a seed always gives
// byte-identical files.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace mv::synth {

struct SynthOptions {
  std::filesystem::path out_dir;
  int count = 0;
  std::uint64_t seed = 0;
  std::vector<std::string> types;  // empty: all of synth_types()
  std::string degrade = "none";    // none | scan | fax | photo | mixed
  int threads = 0;                 // 0: all hardware threads
  std::filesystem::path data_dir;  // empty: data_dir()
};

struct SynthSummary {
  int documents = 0;
  int pages = 0;
  double seconds = 0;
  std::map<std::string, int> by_type, by_degrade;
  std::filesystem::path manifest;
};

// Checks the options (throws mv::Error kUsage with a clear message) and writes the documents.
SynthSummary run_synth(const SynthOptions& options);

// Splits the documents of a synth folder 80/10/10 (shuffled with seed 42) into train.jsonl, val.jsonl and
// test.jsonl in out_dir, one {"image_path", "prompt", "response"} object per line: image_path relative to
// out_dir, response the ground truth without boxes, pages, terms and values (compact JSON).
struct ExportSummary {
  std::size_t train = 0, val = 0, test = 0;
  std::filesystem::path out_dir;
};
ExportSummary export_training(const std::filesystem::path& synth_dir, const std::filesystem::path& out_dir,
                              std::uint64_t split_seed = 42);

// The extraction instruction paired with every training image.
const std::string& training_prompt();

// Parses "a,b,c" into document types; throws kUsage naming the unknown ones and listing the valid ones.
std::vector<std::string> parse_types(const std::string& list);

}  // namespace mv::synth
