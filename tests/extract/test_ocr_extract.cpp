// End to end: synthetic pages rendered by `medvision synth` through the OCR extractor, with the recall of the
// ground-truth fields asserted; and the CLI on good and bad files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "../cli/run_cli.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "data/synth.hpp"
#include "extract/extractor.hpp"
#include "extract/ocr.hpp"
#include "extract/ocr_extractor.hpp"
#include "extract/structurer.hpp"

namespace mv::extract {
namespace {

namespace fs = std::filesystem;

fs::path synth_dir() {
  static const fs::path dir = [] {
    fs::path d = fs::temp_directory_path() / ("mv_extract_" + std::to_string(::getpid()));
    synth::SynthOptions o;
    o.out_dir = d;
    o.count = 3;
    o.seed = 777;
    o.types = {"prescription", "lab_results", "medication_reconciliation"};
    o.threads = 1;
    synth::run_synth(o);
    return d;
  }();
  return dir;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Recall of (section, key field, other fields) of the truth in the prediction; items matched by key.
struct Recall {
  int found = 0, total = 0;
};
void score_list(const nlohmann::json& truth, const nlohmann::json& pred, const char* list, const char* key,
                Recall& r) {
  for (const auto& t : truth[list]) {
    const nlohmann::json* match = nullptr;
    for (const auto& p : pred[list])
      if (p.contains(key) && lower(p[key].get<std::string>()) == lower(t[key].get<std::string>())) match = &p;
    for (const auto& [field, value] : t.items()) {
      if (field == "provenance") continue;
      ++r.total;
      if (match && match->contains(field) && (*match)[field] == value) ++r.found;
    }
  }
}

TEST(OcrExtract, SyntheticPagesFieldRecall) {
  auto ex = make_extractor("ocr");
  EXPECT_EQ(ex->backend(), "ocr");
  Recall r;
  for (const auto& entry : fs::directory_iterator(synth_dir())) {
    if (entry.path().extension() != ".png") continue;
    auto truth = nlohmann::json::parse(read_file(fs::path(entry.path()).replace_extension(".json")));
    auto e = ex->extract(load_pages(entry.path()), {});
    auto pred = to_json(e);
    EXPECT_TRUE(validate_extraction(pred).empty());
    EXPECT_EQ(pred["document_type"], truth["document_type"]) << entry.path();
    for (const auto& [list, key] : std::vector<std::pair<const char*, const char*>>{
             {"medications", "name"}, {"labs", "test"}, {"diagnoses", "text"}, {"vitals", "name"}})
      score_list(truth, pred, list, key, r);
    for (const char* f : {"name", "birth_date", "mrn"}) {
      if (!truth.contains("patient") || !truth["patient"].contains(f)) continue;
      ++r.total;
      if (pred.contains("patient") && pred["patient"].value(f, "") == truth["patient"][f]) ++r.found;
    }
    // Provenance: every item has a page, a box and a confidence.
    for (const auto& m : pred["medications"]) {
      EXPECT_EQ(m["provenance"]["source"], "ocr");
      EXPECT_TRUE(m["provenance"].contains("bbox"));
      EXPECT_TRUE(m["provenance"].contains("confidence"));
    }
  }
  ASSERT_GT(r.total, 20);
  const double recall = static_cast<double>(r.found) / r.total;
  RecordProperty("field_recall", std::to_string(recall));
  std::printf("field recall %d of %d = %.3f\n", r.found, r.total, recall);
  // 0.80 measured on 2026-11-23 (75 of 94 fields), 0.947 (89 of 94) after the strength, header and table
  // work of the same day; the floor guards against regressions.
  EXPECT_GE(recall, 0.90) << r.found << " of " << r.total << " fields";
}

// A scanned flowsheet: a ruled table, skewed, blurred, noisy and JPEG-compressed. The rules are removed
// before recognition and rows are built on the deskewed page, so the vitals grid is read cell by cell.
TEST(OcrExtract, ScannedFlowsheetTableIsRead) {
  const fs::path dir = fs::temp_directory_path() / ("mv_extract_scan_" + std::to_string(::getpid()));
  synth::SynthOptions o;
  o.out_dir = dir;
  o.count = 1;
  o.seed = 777;
  o.types = {"icu_flowsheet"};
  o.degrade = "scan";
  o.threads = 1;
  synth::run_synth(o);
  auto ex = make_extractor("ocr");
  Recall r;
  int docs = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const auto ext = entry.path().extension();
    if (ext != ".jpg" && ext != ".png" && ext != ".pdf") continue;
    ++docs;
    auto truth = nlohmann::json::parse(read_file(fs::path(entry.path()).replace_extension(".json")));
    auto pred = to_json(ex->extract(load_pages(entry.path()), {}));
    // Vitals are matched by name and time (a grid holds one reading per name and column).
    for (const auto& t : truth["vitals"]) {
      const nlohmann::json* match = nullptr;
      for (const auto& p : pred["vitals"])
        if (lower(p.value("name", "")) == lower(t.value("name", "")) &&
            p.value("time", "") == t.value("time", ""))
          match = &p;
      for (const auto& [field, value] : t.items()) {
        if (field == "provenance") continue;
        ++r.total;
        if (match && match->contains(field) && (*match)[field] == value) ++r.found;
      }
    }
  }
  fs::remove_all(dir);
  ASSERT_EQ(docs, 1);
  ASSERT_GT(r.total, 40);
  const double recall = static_cast<double>(r.found) / r.total;
  std::printf("scanned flowsheet vitals: %d of %d fields = %.3f\n", r.found, r.total, recall);
  // 0.690 (116 of 168) measured on 2026-11-23; the column times sit on a dark header bar, and before the
  // bar was inverted none were read (0 of 168). 0.857 (144 of 168) once columns past midnight were put on
  // the next day (same day, later).
  EXPECT_GE(recall, 0.80) << r.found << " of " << r.total << " fields";
}

// A value whose decimal point was lost ("39" under the range "3.5-5.1") is read again from its own box: the
// re-read of a printed decimal number gives it back; a box holding no number leaves the lab out.
TEST(OcrExtract, LabValueWithoutTheRangesDecimalsIsReadAgain) {
  fs::path file;
  for (const auto& entry : fs::directory_iterator(synth_dir()))
    if (entry.path().extension() == ".pdf" && entry.path().filename().string().starts_with("lab_results"))
      file = entry.path();
  ASSERT_FALSE(file.empty());
  auto pages = load_pages(file);
  OcrEngine engine;
  OcrPage ocr = engine.recognize(pages[0]);
  const OcrWord* decimal = nullptr;
  const OcrWord* letters = nullptr;
  for (const auto& w : ocr.words) {
    const bool num = w.text.size() >= 3 && w.text.find('.') != std::string::npos &&
                     w.text.find_first_not_of("0123456789.") == std::string::npos;
    if (num && w.confidence > 0.9 && !decimal) decimal = &w;
    if (w.text.size() >= 5 && w.text.find_first_of("0123456789") == std::string::npos && !letters)
      letters = &w;
  }
  ASSERT_NE(decimal, nullptr);
  ASSERT_NE(letters, nullptr);
  auto again = engine.reread(pages[0], decimal->box, "0123456789.<>");
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->text, decimal->text);
  EXPECT_GT(again->confidence, 0.5);

  const int decimals = static_cast<int>(decimal->text.size() - decimal->text.find('.') - 1);
  const std::string range = "1." + std::string(decimals, '0') + "-999." + std::string(decimals, '0');
  Extraction e;
  Lab dropped_point;
  dropped_point.test = "Potassium";
  dropped_point.value = decimal->text;
  std::erase(dropped_point.value, '.');
  dropped_point.reference_range = range;
  dropped_point.provenance = Provenance{};
  dropped_point.provenance->confidence = 0.97;
  dropped_point.provenance->fields["value"] = decimal->box;
  ASSERT_TRUE(value_precision_conflicts(dropped_point));
  Lab no_number = dropped_point;
  no_number.test = "Sodium";
  no_number.provenance->fields["value"] = letters->box;
  Lab fine = dropped_point;
  fine.test = "Chloride";
  fine.value = "102";
  fine.reference_range = "98-107";
  // More decimals than the range ("16.6" under "135-175"): either may be the misread, so the lab is left
  // out whatever a re-read gives.
  Lab more_decimals = dropped_point;
  more_decimals.test = "Hemoglobin";
  more_decimals.value = decimal->text;
  more_decimals.reference_range = "1-999";
  ASSERT_TRUE(value_precision_conflicts(more_decimals));
  e.labs = {dropped_point, no_number, fine, more_decimals};
  recheck_lab_values(e, engine, pages);
  ASSERT_EQ(e.labs.size(), 2u);
  EXPECT_EQ(e.labs[0].test, "Potassium");
  EXPECT_EQ(e.labs[0].value, decimal->text);
  EXPECT_LE(*e.labs[0].provenance->confidence, 0.97);
  EXPECT_EQ(e.labs[1].test, "Chloride");
  EXPECT_EQ(e.labs[1].value, "102");

  // The digits-only setting of the re-read does not stay on the pooled Tesseract instance.
  OcrPage again_page = engine.recognize(pages[0]);
  EXPECT_EQ(again_page.text(), ocr.text());
}

TEST(OcrExtract, EmptyPageListIsAnError) {
  auto ex = make_extractor("ocr");
  EXPECT_THROW(ex->extract({}, {}), Error);
  EXPECT_THROW(make_extractor("bogus"), Error);
  EXPECT_THROW(make_extractor("vlm"), Error);  // needs a model directory
}

TEST(OcrLayout, RowsAndCellsFromWordGeometry) {
  // Two lines on one baseline band (a table row split by Tesseract) become one row with two cells.
  std::vector<OcrWord> w = {{"Sodium", {100, 100, 160, 118}, 0.9, false},
                            {"140", {400, 101, 430, 118}, 0.9, false},
                            {"mmol/L", {440, 101, 500, 119}, 0.9, false},
                            {"Next", {100, 140, 150, 158}, 0.9, false}};
  auto rows = build_rows(w, {{0}, {1, 2}, {3}});
  ASSERT_EQ(rows.size(), 2u);
  ASSERT_EQ(rows[0].cells.size(), 2u);
  EXPECT_EQ(rows[0].cells[0].text, "Sodium");
  EXPECT_EQ(rows[0].cells[1].text, "140 mmol/L");
  EXPECT_EQ(rows[0].text, "Sodium  140 mmol/L");
  EXPECT_EQ(rows[1].text, "Next");
}

TEST(ExtractCli, JsonForOneFileAndFailuresNamed) {
  fs::path png;
  for (const auto& entry : fs::directory_iterator(synth_dir()))
    if (entry.path().extension() == ".png") png = entry.path();
  ASSERT_FALSE(png.empty());
  auto ok = testing::run_cli("extract " + png.string());
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  auto j = nlohmann::json::parse(ok.out);
  EXPECT_EQ(j["schema_version"], "1.0");

  fs::path bad = synth_dir() / "broken.png";
  write_file(bad, std::string("\x89PNG\r\n\x1a\nnot really a png"));
  fs::path out = synth_dir() / "out";
  auto r =
      testing::run_cli("-q extract " + png.string() + " " + bad.string() + " " +
                       (synth_dir() / "missing.pdf").string() + " --out " + out.string() + " --format fhir");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("broken.png"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("missing.pdf"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("2 of 3 file(s) failed"), std::string::npos) << r.err;
  // The good file was still written.
  auto fhir = nlohmann::json::parse(read_file(out / (png.stem().string() + ".fhir.json")));
  EXPECT_EQ(fhir["resourceType"], "Bundle");

  auto usage = testing::run_cli("extract " + png.string() + " --format xml");
  EXPECT_EQ(usage.exit_code, 2);
  auto pages = testing::run_cli("extract " + png.string() + " --pages 3");
  EXPECT_NE(pages.exit_code, 0);
  EXPECT_NE(pages.err.find("selects none"), std::string::npos) << pages.err;
}

}  // namespace
}  // namespace mv::extract
