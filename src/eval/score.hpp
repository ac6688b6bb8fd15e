// Scoring one predicted extraction against its ground truth (docs/design/eval.md has the definitions):
//   - the original pipeline's metric: term accuracy, value accuracy and their average;
//   - field-level true/false positives and negatives per section and field, after normalisation
//     (normalize.hpp), with predicted items matched to true items by optimal assignment;
//   - whole-entry matches, exact and relaxed;
//   - hallucinated values and items (predicted, but nowhere in the document's ground truth).
// Scores hold counts only, never the documents' values (they are PHI).
#pragma once
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "eval/normalize.hpp"

namespace mv::eval {

struct Counts {
  long long tp = 0, fp = 0, fn = 0;
  Counts& operator+=(const Counts& o) {
    tp += o.tp, fp += o.fp, fn += o.fn;
    return *this;
  }
  bool empty() const { return tp + fp + fn == 0; }
  // Conventions: precision = 1 when nothing was predicted, recall = 1 when nothing was there,
  // F1 = 2TP / (2TP + FP + FN) and 1 when all three counts are 0.
  double precision() const { return tp + fp == 0 ? 1.0 : double(tp) / double(tp + fp); }
  double recall() const { return tp + fn == 0 ? 1.0 : double(tp) / double(tp + fn); }
  double f1() const { return empty() ? 1.0 : 2.0 * double(tp) / double(2 * tp + fp + fn); }
};

// The sections scored, in report order: item lists, then the single blocks "patient", "encounter" and
// "document" (document_type, no_known_allergies).
const std::vector<std::string>& scored_sections();
// The fields of a section, in schema order (the first is the item's key for item lists).
const std::vector<std::string>& section_fields(const std::string& section);

// Optimal assignment: the pairs (row, column) that maximise the total weight of `w` (rows x cols, any
// shape); pairs whose weight is <= 0 are not returned. Hungarian algorithm, O(n^3).
std::vector<std::pair<int, int>> max_weight_assignment(const std::vector<std::vector<double>>& w);

struct ScoreOptions {
  const Vocabulary* vocabulary = nullptr;  // synonym groups for names; nullptr: none
  double key_similarity = 0.8;             // relaxed key match: similarity() of the folded keys
};

struct OriginalMetric {
  int terms_total = 0, terms_found = 0, values_total = 0, values_found = 0;
  std::optional<double> term_accuracy() const;   // nullopt when the truth lists no terms
  std::optional<double> value_accuracy() const;  // nullopt when the truth lists no values
  std::optional<double> average() const;         // mean of the two that exist
};

struct DocumentScore {
  std::string id, type, degradation;
  std::string status = "ok";      // ok | missing | invalid | failed
  std::string error;              // why a prediction is missing/invalid (no document values)
  std::optional<double> seconds;  // extraction time, when the extractor was run
  OriginalMetric original;
  std::map<std::string, Counts> fields;   // "medications.strength" -> counts
  std::map<std::string, Counts> exact;    // whole entries per section, exact match
  std::map<std::string, Counts> relaxed;  // whole entries per section, relaxed match
  long long predicted_values = 0, hallucinated_values = 0;
  long long predicted_items = 0, hallucinated_items = 0;

  Counts field_total() const;  // all fields pooled
  Counts exact_total() const;  // all entries pooled
  Counts relaxed_total() const;
};

// The plain-text rendering of an extraction that the original metric searches: one line per item with
// its fields in schema order separated by spaces (provenance, pages, terms and values left out).
std::string output_text(const nlohmann::json& extraction);

// Scores `pred` (nullptr: no prediction, scored as empty) against `truth`. Both must already follow the
// schema. `id`, type and degradation are copied into the result.
DocumentScore score_document(const nlohmann::json& truth, const nlohmann::json* pred,
                             const ScoreOptions& options = {});

}  // namespace mv::eval
