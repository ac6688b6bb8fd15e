// Aggregation of document scores into an evaluation report (overall, per document type, per degradation;
// per section and per field), written as JSON and as Markdown tables. Definitions: docs/design/eval.md.
#pragma once
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "eval/score.hpp"

namespace mv::eval {

struct GroupSummary {
  int documents = 0, missing = 0, invalid = 0, failed = 0;
  // The original metric: means over the documents whose truth lists terms (values); the average is the
  // mean of the per-document averages.
  std::optional<double> term_accuracy, value_accuracy, original_average;
  Counts fields;                                     // all fields pooled (micro)
  std::optional<double> fields_macro;                // mean F1 over the fields with any count
  std::optional<double> documents_macro;             // mean over documents of the document's pooled field F1
  Counts exact, relaxed;                             // whole entries pooled (micro)
  std::optional<double> exact_macro, relaxed_macro;  // mean F1 over the sections with any count
  long long predicted_values = 0, hallucinated_values = 0, predicted_items = 0, hallucinated_items = 0;
  std::optional<double> hallucination_rate() const;       // hallucinated / predicted values
  std::optional<double> item_hallucination_rate() const;  // hallucinated / predicted items
  std::optional<double> mean_seconds, total_seconds;      // extraction time, when measured
};

GroupSummary summarize(const std::vector<const DocumentScore*>& docs);

struct EvaluationReport {
  nlohmann::json meta = nlohmann::json::object();  // inputs, backend, machine, date (set by the caller)
  GroupSummary overall;
  std::map<std::string, GroupSummary> by_type, by_degradation;
  std::map<std::string, Counts> sections;  // fields pooled per section
  std::map<std::string, Counts> fields;    // "section.field"
  std::map<std::string, Counts> exact_by_section, relaxed_by_section;
  std::vector<std::string> unmatched_predictions;  // prediction files without a truth file
  std::vector<DocumentScore> documents;
};

EvaluationReport build_report(std::vector<DocumentScore> documents);

nlohmann::json to_json(const Counts& c);
nlohmann::json report_json(const EvaluationReport& r);
std::string report_markdown(const EvaluationReport& r);

}  // namespace mv::eval
