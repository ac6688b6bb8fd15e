// The scorer: a perfect prediction scores 1.0 everywhere, and every metric moves the right way on crafted
// errors (wrong unit, wrong magnitude, missing item, extra item, swapped fields, format variants).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "core/error.hpp"
#include "core/file.hpp"
#include "data/clinical_tables.hpp"
#include "data/synth.hpp"
#include "eval/evaluate.hpp"
#include "eval/report.hpp"
#include "eval/score.hpp"
#include "extract/extractor.hpp"
#include "extract/schema.hpp"

using namespace mv::eval;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

json truth_doc() {
  return json::parse(R"({
    "schema_version": "1.0", "document_type": "discharge_summary", "document_id": "t1",
    "patient": {"name": "Test Patient", "birth_date": "1956-02-17", "mrn": "M123", "sex": "female"},
    "encounter": {"admission_date": "2025-05-17", "discharge_date": "2025-05-23", "facility": "Test Hospital"},
    "diagnoses": [{"text": "Pneumonia, unspecified organism", "icd10": "J18.9", "role": "principal"},
                  {"text": "Anemia, unspecified", "icd10": "D64.9", "role": "secondary"}],
    "medications": [
      {"name": "Metoprolol", "strength": "25 mg", "dose": "1", "unit": "tab", "route": "PO", "frequency": "BID"},
      {"name": "Metoprolol", "strength": "50 mg", "dose": "1", "unit": "tab", "route": "PO", "frequency": "daily"},
      {"name": "Lisinopril", "strength": "10 mg", "dose": "1", "unit": "tab", "route": "PO", "frequency": "daily"},
      {"name": "Cyanocobalamin", "strength": "1 mg", "route": "IM", "frequency": "weekly", "status": "new"}],
    "labs": [
      {"test": "Potassium", "value": "4.1", "unit": "mmol/L", "reference_range": "3.5-5.1"},
      {"test": "Glucose", "value": "182", "unit": "mg/dL", "reference_range": "70-99", "flag": "H"}],
    "vitals": [
      {"name": "HR", "value": "80", "unit": "bpm", "time": "2025-05-17T08:00"},
      {"name": "HR", "value": "92", "unit": "bpm", "time": "2025-05-17T12:00"},
      {"name": "BP", "value": "128/76", "unit": "mmHg", "time": "2025-05-17T08:00"}],
    "allergies": [{"substance": "Penicillin", "reaction": "Rash"}],
    "procedures": [], "immunizations": [], "followups": [{"text": "Nephrology follow-up", "when": "in 4 weeks"}],
    "terms": ["Pneumonia, unspecified organism", "Anemia, unspecified", "Metoprolol", "Lisinopril",
              "Cyanocobalamin", "Potassium", "Glucose", "HR", "BP", "Penicillin"],
    "values": ["J18.9", "D64.9", "25 mg", "1 tab", "50 mg", "10 mg", "1 mg", "4.1", "182", "80", "92", "128/76"]
  })");
}

// The prediction an exact extractor would return: the truth without the truth-only lists.
json perfect(const json& truth) {
  json p = mv::extract::strip_provenance(truth);
  p.erase("terms");
  p.erase("values");
  return p;
}

Counts field(const DocumentScore& s, const std::string& k) {
  auto it = s.fields.find(k);
  return it == s.fields.end() ? Counts{} : it->second;
}

// `original`: also check the original metric (a literal substring test that format variants break).
void expect_perfect(const DocumentScore& s, const std::string& what, bool original = true) {
  if (original) {
    EXPECT_EQ(s.original.term_accuracy().value_or(1.0), 1.0) << what;
    EXPECT_EQ(s.original.value_accuracy().value_or(1.0), 1.0) << what;
  }
  for (const auto& [k, c] : s.fields) {
    EXPECT_EQ(c.fp, 0) << what << " " << k;
    EXPECT_EQ(c.fn, 0) << what << " " << k;
    EXPECT_DOUBLE_EQ(c.f1(), 1.0) << what << " " << k;
  }
  for (const auto& [k, c] : s.exact) EXPECT_DOUBLE_EQ(c.f1(), 1.0) << what << " exact " << k;
  for (const auto& [k, c] : s.relaxed) EXPECT_DOUBLE_EQ(c.f1(), 1.0) << what << " relaxed " << k;
  EXPECT_EQ(s.hallucinated_values, 0) << what;
  EXPECT_EQ(s.hallucinated_items, 0) << what;
}

}  // namespace

TEST(EvalAssignment, FindsTheOptimumWhereGreedyFails) {
  // Greedy (row 0 takes its best column 0) gives 3; the optimum pairs 0-1 and 1-0 for 5.
  const auto a = max_weight_assignment({{3, 2}, {3, 0}});
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a[0], std::make_pair(0, 1));
  EXPECT_EQ(a[1], std::make_pair(1, 0));
  // Rectangular, with forbidden (zero) pairs left unpaired.
  const auto b = max_weight_assignment({{0, 0, 5}, {0, 0, 4}});
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0], std::make_pair(0, 2));
  EXPECT_TRUE(max_weight_assignment({}).empty());
  const auto c = max_weight_assignment({{1}, {2}, {3}});
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0], std::make_pair(2, 0));
}

TEST(EvalScore, PerfectPredictionScoresOneEverywhere) {
  const json t = truth_doc();
  const json p = perfect(t);
  const auto s = score_document(t, &p);
  expect_perfect(s, "crafted");
  EXPECT_EQ(s.original.terms_total, 10);
  EXPECT_EQ(s.original.values_total, 12);
  EXPECT_GT(field(s, "medications.strength").tp, 0);
  EXPECT_EQ(field(s, "medications.strength").tp, 4);
  EXPECT_EQ(s.exact.at("medications").tp, 4);
}

TEST(EvalScore, OrderOfItemsDoesNotMatter) {
  const json t = truth_doc();
  json p = perfect(t);
  std::reverse(p["medications"].begin(), p["medications"].end());
  std::reverse(p["vitals"].begin(), p["vitals"].end());
  expect_perfect(score_document(t, &p), "reversed");
}

TEST(EvalScore, WrongUnitIsAHardError) {
  const json t = truth_doc();
  json p = perfect(t);
  p["labs"][1]["unit"] = "mmol/L";  // glucose in mmol/L with the mg/dL number: a unit error
  const auto s = score_document(t, &p);
  EXPECT_EQ(field(s, "labs.unit").tp, 1);
  EXPECT_EQ(field(s, "labs.unit").fp, 1);
  EXPECT_EQ(field(s, "labs.unit").fn, 1);
  EXPECT_EQ(field(s, "labs.value").fp, 0);  // the number itself is right
  EXPECT_EQ(s.exact.at("labs").tp, 1);
  EXPECT_EQ(s.relaxed.at("labs").tp, 1);  // relaxed never forgives a unit
  EXPECT_EQ(s.hallucinated_values, 0);    // mmol/L is a unit of another true lab
  p["labs"][1]["unit"] = "g/L";
  const auto s2 = score_document(t, &p);
  EXPECT_EQ(field(s2, "labs.unit").fp, 1);
  EXPECT_EQ(s2.hallucinated_values, 1);
}

TEST(EvalScore, WrongMagnitudeIsAHardError) {
  const json t = truth_doc();
  json p = perfect(t);
  p["medications"][2]["strength"] = "100 mg";  // Lisinopril 10 mg -> 100 mg
  const auto s = score_document(t, &p);
  const Counts c = field(s, "medications.strength");
  EXPECT_EQ(c.tp, 3);
  EXPECT_EQ(c.fp, 1);
  EXPECT_EQ(c.fn, 1);
  EXPECT_LT(c.f1(), 1.0);
  EXPECT_EQ(field(s, "medications.name").fp, 0);  // still paired with Lisinopril
  EXPECT_EQ(s.exact.at("medications").tp, 3);
  EXPECT_EQ(s.relaxed.at("medications").tp, 3);
  EXPECT_EQ(s.hallucinated_values, 1);
  // The original metric is a substring test: "10 mg" is no longer in the output.
  EXPECT_EQ(s.original.values_found, s.original.values_total - 1);
  // A unit-converted but equal strength is not an error.
  p["medications"][3]["strength"] = "1,000 mcg";
  p["medications"][2]["strength"] = "10 mg";
  expect_perfect(score_document(t, &p), "converted", false);
}

TEST(EvalScore, MissingItemLowersRecallOnly) {
  const json t = truth_doc();
  json p = perfect(t);
  p["medications"].erase(2);  // drop Lisinopril
  const auto s = score_document(t, &p);
  const Counts c = field(s, "medications.name");
  EXPECT_EQ(c.tp, 3);
  EXPECT_EQ(c.fp, 0);
  EXPECT_EQ(c.fn, 1);
  EXPECT_DOUBLE_EQ(c.precision(), 1.0);
  EXPECT_DOUBLE_EQ(c.recall(), 0.75);
  EXPECT_EQ(s.exact.at("medications").fn, 1);
  EXPECT_EQ(s.exact.at("medications").fp, 0);
  EXPECT_EQ(s.hallucinated_values, 0);
  EXPECT_EQ(s.original.terms_found, s.original.terms_total - 1);
}

TEST(EvalScore, ExtraItemLowersPrecisionAndCountsAsHallucinated) {
  const json t = truth_doc();
  json p = perfect(t);
  p["labs"].push_back({{"test", "Troponin I"}, {"value", "0.9"}, {"unit", "ng/mL"}, {"flag", "H"}});
  const auto s = score_document(t, &p);
  const Counts c = field(s, "labs.test");
  EXPECT_EQ(c.tp, 2);
  EXPECT_EQ(c.fp, 1);
  EXPECT_EQ(c.fn, 0);
  EXPECT_DOUBLE_EQ(c.recall(), 1.0);
  EXPECT_LT(c.precision(), 1.0);
  EXPECT_EQ(s.exact.at("labs").fp, 1);
  EXPECT_EQ(s.hallucinated_items, 1);
  EXPECT_EQ(s.hallucinated_values, 3);         // test, value, unit; the flag "H" exists in the truth
  EXPECT_EQ(s.original.term_accuracy(), 1.0);  // the original metric cannot see extra items
}

TEST(EvalScore, SwappedFieldsAreWrongInBothFields) {
  const json t = truth_doc();
  json p = perfect(t);
  auto& m = p["medications"][0];
  std::swap(m["route"], m["frequency"]);
  const auto s = score_document(t, &p);
  EXPECT_EQ(field(s, "medications.route").fp, 1);
  EXPECT_EQ(field(s, "medications.route").fn, 1);
  EXPECT_EQ(field(s, "medications.frequency").fp, 1);
  EXPECT_EQ(field(s, "medications.frequency").fn, 1);
  EXPECT_EQ(field(s, "medications.strength").fp, 0);
  EXPECT_EQ(s.exact.at("medications").tp, 3);
  EXPECT_EQ(s.relaxed.at("medications").tp, 3);
  // Swapping values between two items of the same name: both items become wrong.
  json q = perfect(t);
  std::swap(q["vitals"][0]["value"], q["vitals"][1]["value"]);
  const auto s2 = score_document(t, &q);
  // Either pairing of the two HR readings leaves two wrong fields (value or time).
  EXPECT_EQ(field(s2, "vitals.value").fp + field(s2, "vitals.time").fp, 2);
  EXPECT_EQ(s2.exact.at("vitals").tp, 1);
}

TEST(EvalScore, CaseAndFormatVariantsStillMatch) {
  const json t = truth_doc();
  json p = perfect(t);
  p["medications"][0]["name"] = "METOPROLOL";
  p["medications"][0]["route"] = "by mouth";
  p["medications"][0]["frequency"] = "twice daily";
  p["medications"][0]["unit"] = "tablet";
  p["medications"][0]["strength"] = "25mg";
  p["medications"][1]["frequency"] = "once daily";
  p["medications"][3]["strength"] = "1000 mcg";
  p["medications"][3]["route"] = "intramuscular";
  p["labs"][0]["value"] = "4.10";
  p["labs"][0]["reference_range"] = "3.5 - 5.1";
  p["labs"][1]["unit"] = "mg/dl";
  p["labs"][1]["flag"] = "H";
  p["diagnoses"][0]["text"] = "pneumonia unspecified organism";
  p["diagnoses"][0]["icd10"] = "J18.9";
  p["vitals"][0]["unit"] = "beats/min";
  p["vitals"][2]["unit"] = "mm Hg";
  p["vitals"][2]["value"] = "128 / 76";
  p["patient"]["birth_date"] = "1956-02-17";
  p["encounter"]["facility"] = "TEST HOSPITAL";
  p["allergies"][0]["substance"] = "penicillin";
  const auto s = score_document(t, &p);
  expect_perfect(s, "variants", false);
  EXPECT_LT(*s.original.value_accuracy(), 1.0);  // the literal original metric misses reformatted values
}

TEST(EvalScore, RelaxedForgivesSmallSlipsAndOmissionsButExactDoesNot) {
  const json t = truth_doc();
  json p = perfect(t);
  p["medications"][2]["name"] = "Lisinopri1";  // OCR slip in the name
  p["medications"][3].erase("status");         // an omitted field
  const auto s = score_document(t, &p);
  EXPECT_EQ(s.exact.at("medications").tp, 2);
  EXPECT_EQ(s.relaxed.at("medications").tp, 4);
  EXPECT_EQ(field(s, "medications.name").fp, 1);  // paired, but the name itself is wrong
  EXPECT_EQ(field(s, "medications.strength").tp, 4);
  EXPECT_EQ(field(s, "medications.status").fn, 1);
  EXPECT_EQ(s.hallucinated_items, 0);  // the item exists; only its name is misread
}

TEST(EvalScore, NoPredictionScoresZeroRecall) {
  const json t = truth_doc();
  const auto s = score_document(t, nullptr);
  const Counts all = s.field_total();
  EXPECT_EQ(all.tp, 0);
  EXPECT_EQ(all.fp, 0);
  EXPECT_GT(all.fn, 20);
  EXPECT_DOUBLE_EQ(all.f1(), 0.0);
  EXPECT_EQ(s.original.term_accuracy(), 0.0);
  EXPECT_EQ(s.original.value_accuracy(), 0.0);
  EXPECT_EQ(s.predicted_values, 0);
}

TEST(EvalScore, OriginalMetricIsACaseInsensitiveSubstringTest) {
  json t = truth_doc();
  json p = perfect(t);
  p["medications"][2]["name"] = "LISINOPRIL";  // case does not matter to it
  p["labs"][0]["reference_range"] = "3.5-5.1";
  p["diagnoses"][1]["icd10"] = "D64.8";  // a wrong code is a missing value
  auto s = score_document(t, &p);
  EXPECT_EQ(s.original.terms_found, s.original.terms_total);
  EXPECT_EQ(s.original.values_found, s.original.values_total - 1);
  EXPECT_NEAR(*s.original.average(), (1.0 + 11.0 / 12.0) / 2.0, 1e-12);
  const std::string text = output_text(p);
  EXPECT_NE(text.find("Metoprolol 25 mg 1 tab PO BID"), std::string::npos);
  // A truth without values: the average is the term accuracy alone.
  t["values"] = json::array();
  s = score_document(t, &p);
  EXPECT_FALSE(s.original.value_accuracy());
  EXPECT_EQ(s.original.average(), s.original.term_accuracy());
}

TEST(EvalScore, SynonymsFromTheClinicalTables) {
  const auto vocab = Vocabulary::from_clinical_tables((mv::synth::data_dir() / "clinical").string());
  ScoreOptions o;
  o.vocabulary = &vocab;
  const json t = truth_doc();
  json p = perfect(t);
  p["vitals"][0]["name"] = "Heart Rate";
  p["vitals"][2]["name"] = "Blood Pressure";
  expect_perfect(score_document(t, &p, o), "synonyms", false);
  const auto without = score_document(t, &p);  // without the vocabulary the names differ
  EXPECT_EQ(field(without, "vitals.name").tp, 1);
}

TEST(EvalReport, AggregatesMicroMacroAndBreakdowns) {
  const json t = truth_doc();
  const json p = perfect(t);
  json bad = perfect(t);
  bad["medications"] = json::array();
  std::vector<DocumentScore> docs;
  docs.push_back(score_document(t, &p));
  docs.back().id = "a", docs.back().type = "discharge_summary", docs.back().degradation = "none";
  docs.push_back(score_document(t, &bad));
  docs.back().id = "b", docs.back().type = "discharge_summary", docs.back().degradation = "fax";
  docs.push_back(score_document(t, nullptr));
  docs.back().id = "c", docs.back().type = "lab_results", docs.back().degradation = "fax";
  docs.back().status = "missing";
  const auto r = build_report(docs);
  EXPECT_EQ(r.overall.documents, 3);
  EXPECT_EQ(r.overall.missing, 1);
  EXPECT_EQ(r.by_type.at("discharge_summary").documents, 2);
  EXPECT_EQ(r.by_degradation.at("fax").documents, 2);
  EXPECT_DOUBLE_EQ(r.by_degradation.at("none").fields.f1(), 1.0);
  EXPECT_LT(r.by_degradation.at("fax").fields.f1(), 0.7);
  // Micro pools the counts; macro over documents averages the three documents' F1.
  Counts pooled;
  double mean = 0;
  for (const auto& d : docs) pooled += d.field_total(), mean += d.field_total().f1() / 3.0;
  EXPECT_DOUBLE_EQ(r.overall.fields.f1(), pooled.f1());
  EXPECT_DOUBLE_EQ(*r.overall.documents_macro, mean);
  EXPECT_EQ(r.fields.at("medications.strength").fn, 8);
  EXPECT_NEAR(*r.overall.term_accuracy, (1.0 + 7.0 / 10.0 + 0.0) / 3.0, 1e-12);
  const json j = report_json(r);
  EXPECT_EQ(j["failures"].size(), 1u);
  EXPECT_EQ(j["documents"].size(), 3u);
  EXPECT_TRUE(j["sections"].contains("medications"));
  const std::string md = report_markdown(r);
  EXPECT_NE(md.find("## By document type"), std::string::npos);
  EXPECT_NE(md.find("| medications.strength |"), std::string::npos);
  EXPECT_NE(md.find("c: missing"), std::string::npos);
  // Reports hold counts, never document values.
  EXPECT_EQ(j.dump().find("Metoprolol"), std::string::npos);
  EXPECT_EQ(md.find("Metoprolol"), std::string::npos);
}

// Every document type of the generator: its own ground truth, as a prediction, scores 1.0 everywhere.
TEST(EvalScore, PerfectPredictionOfEverySynthType) {
  const fs::path dir = fs::temp_directory_path() / ("mv_eval_synth_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  mv::synth::SynthOptions o;
  o.out_dir = dir / "truth";
  o.count = 13;  // the types rotate: one document of each
  o.seed = 7;
  o.threads = 2;
  mv::synth::run_synth(o);
  fs::create_directories(dir / "pred");
  const auto entries = list_truth(o.out_dir);
  ASSERT_EQ(entries.size(), 13u);
  std::set<std::string> types;
  for (const auto& e : entries) {
    types.insert(e.type);
    const json t = load_truth(e);
    mv::write_file(dir / "pred" / e.truth_file.filename(), perfect(t).dump());
  }
  EXPECT_EQ(types.size(), 13u);
  const auto vocab = Vocabulary::from_clinical_tables((mv::synth::data_dir() / "clinical").string());
  ScoreOptions so;
  so.vocabulary = &vocab;
  const auto r = evaluate_predictions(o.out_dir, dir / "pred", so);
  for (const auto& d : r.documents) expect_perfect(d, d.id);
  EXPECT_DOUBLE_EQ(r.overall.fields.f1(), 1.0);
  EXPECT_DOUBLE_EQ(*r.overall.original_average, 1.0);
  EXPECT_DOUBLE_EQ(r.overall.exact.f1(), 1.0);
  EXPECT_DOUBLE_EQ(*r.overall.hallucination_rate(), 0.0);
  EXPECT_GT(r.overall.fields.tp, 200);
  fs::remove_all(dir);
}

TEST(EvalFiles, UnreadablePredictionsAreRejectedWithoutEchoingContent) {
  const fs::path dir = fs::temp_directory_path() / ("mv_eval_pred_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  json out;
  std::string error;
  mv::write_file(dir / "a.json", "{\"schema_version\": \"1.0\", \"patient\": {\"name\": \"SECRET NAME\" ");
  EXPECT_FALSE(load_prediction(dir / "a.json", out, error));
  EXPECT_NE(error.find("not valid JSON"), std::string::npos) << error;
  EXPECT_EQ(error.find("SECRET"), std::string::npos) << error;
  mv::write_file(dir / "b.json", R"({"schema_version": "1.0", "document_type": "SECRET TYPE"})");
  EXPECT_FALSE(load_prediction(dir / "b.json", out, error));
  EXPECT_NE(error.find("document_type"), std::string::npos) << error;
  EXPECT_EQ(error.find("SECRET"), std::string::npos) << error;
  EXPECT_FALSE(load_prediction(dir / "missing.json", out, error));
  mv::write_file(dir / "c.json", R"({"schema_version": "1.0", "document_type": "other"})");
  EXPECT_TRUE(load_prediction(dir / "c.json", out, error)) << error;
  fs::remove_all(dir);
}

TEST(EvalScore, AssignedCodesCountOnlyWhereTheTruthHasThem) {
  json t = truth_doc();
  json p = perfect(t);
  p["labs"][0]["loinc"] = "2823-3";  // looked up by the extractor; the page prints no code
  expect_perfect(score_document(t, &p), "assigned loinc");
  t["labs"][0]["loinc"] = "2823-3";  // printed: now it is scored like any field
  p["labs"][0]["loinc"] = "2345-7";
  const auto s = score_document(t, &p);
  EXPECT_EQ(field(s, "labs.loinc").fp, 1);
  EXPECT_EQ(field(s, "labs.loinc").fn, 1);
  EXPECT_EQ(s.exact.at("labs").tp, 1);
}

namespace {
// An extractor that answers with the ground truth of the document it is given (found by document_id),
// and fails on one chosen document: exercises the runner, not an extraction method.
class TruthEchoExtractor : public mv::extract::Extractor {
 public:
  TruthEchoExtractor(fs::path dir, std::string fail_id)
      : dir_(std::move(dir)), fail_id_(std::move(fail_id)) {}
  std::string_view backend() const override { return "ocr"; }
  mv::extract::Extraction extract(const std::vector<mv::extract::Page>& pages,
                                  const mv::extract::ExtractOptions& o) override {
    EXPECT_FALSE(pages.empty());
    EXPECT_GT(pages.front().image.width, 0);
    if (*o.document_id == fail_id_) mv::fail(mv::Errc::kFailure, "test extractor: refusing {}", fail_id_);
    json t = json::parse(mv::read_file(dir_ / (*o.document_id + ".json")));
    return mv::extract::extraction_from_json(perfect(t), *o.document_id);
  }

 private:
  fs::path dir_;
  std::string fail_id_;
};
}  // namespace

TEST(EvalRun, RunsAnExtractorTimesEachDocumentAndScoresFailuresAsEmpty) {
  const fs::path dir = fs::temp_directory_path() / ("mv_eval_run_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  mv::synth::SynthOptions o;
  o.out_dir = dir / "data";
  o.count = 3;
  o.seed = 3;
  o.threads = 1;
  mv::synth::run_synth(o);
  const auto entries = list_truth(o.out_dir);
  ASSERT_EQ(entries.size(), 3u);
  TruthEchoExtractor ex(o.out_dir, entries[1].id);
  RunOptions ro;
  ro.save_predictions = dir / "pred";
  int seen = 0;
  ro.on_document = [&](const TruthEntry&, const DocumentScore&) { ++seen; };
  const auto r = evaluate_extractor(o.out_dir, ex, ro);
  EXPECT_EQ(seen, 3);
  ASSERT_EQ(r.documents.size(), 3u);
  EXPECT_EQ(r.overall.failed, 1);
  EXPECT_EQ(r.documents[1].status, "failed");
  EXPECT_NE(r.documents[1].error.find("refusing"), std::string::npos);
  EXPECT_DOUBLE_EQ(r.documents[1].field_total().recall(), 0.0);
  for (int i : {0, 2}) {
    EXPECT_EQ(r.documents[i].status, "ok");
    ASSERT_TRUE(r.documents[i].seconds);
    EXPECT_GT(*r.documents[i].seconds, 0.0);
    EXPECT_DOUBLE_EQ(r.documents[i].field_total().f1(), 1.0);
    EXPECT_TRUE(fs::exists(dir / "pred" / entries[i].truth_file.filename()));
  }
  EXPECT_FALSE(fs::exists(dir / "pred" / entries[1].truth_file.filename()));
  EXPECT_TRUE(r.overall.mean_seconds);
  EXPECT_EQ(r.meta["backend"], "ocr");
  // The saved predictions rescore to the same figures.
  const auto again = evaluate_predictions(o.out_dir, dir / "pred");
  EXPECT_EQ(again.overall.missing, 1);
  EXPECT_DOUBLE_EQ(again.overall.fields.f1(), r.overall.fields.f1());
  fs::remove_all(dir);
}
