// Evaluation runs: pairing a ground-truth folder (as written by `medvision synth`) with a folder of
// predictions, or running an extractor over the folder's documents, and scoring every document.
#pragma once
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "eval/report.hpp"
#include "eval/score.hpp"

namespace mv::extract {
class Extractor;
}

namespace mv::eval {

struct TruthEntry {
  std::string id, type, degradation;
  std::filesystem::path truth_file;     // the ground-truth JSON
  std::filesystem::path document_file;  // the image or PDF (empty when unknown)
};

// The documents of a truth folder: from its manifest.json when there is one (id, type, degrade, truth,
// file), else every *.json except manifest.json (type from the document, degradation "unknown"). Sorted
// by id. Throws mv::Error naming the folder/manifest when it cannot be read or lists no document.
std::vector<TruthEntry> list_truth(const std::filesystem::path& dir);

// Reads and validates one ground-truth file; throws mv::Error(kInvalidInput) naming the file.
nlohmann::json load_truth(const TruthEntry& entry);

// Reads one prediction file and validates it against the schema. On failure returns false with `error`
// set to a message that names the problem and never echoes the file's values.
bool load_prediction(const std::filesystem::path& file, nlohmann::json& out, std::string& error);

// Scores the predictions in `pred_dir` (paired with the truth files by file name) against `truth_dir`.
// A missing or invalid prediction is scored as an empty extraction and listed with its reason.
EvaluationReport evaluate_predictions(const std::filesystem::path& truth_dir,
                                      const std::filesystem::path& pred_dir,
                                      const ScoreOptions& options = {});

struct RunOptions {
  ScoreOptions score;
  std::filesystem::path save_predictions;  // when set, each extraction is written there as <id>.json
  std::function<void(const TruthEntry&, const DocumentScore&)> on_document;  // after each document
};

// Runs `extractor` over every document of `data_dir` (one at a time, timed) and scores it. A document the
// extractor fails on is scored as empty with status "failed".
EvaluationReport evaluate_extractor(const std::filesystem::path& data_dir, extract::Extractor& extractor,
                                    const RunOptions& options = {});

}  // namespace mv::eval
