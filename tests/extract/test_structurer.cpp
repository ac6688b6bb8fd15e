// The structurer on pages built from word geometry (no OCR): list markers read as symbols, follow-ups,
// diagnosis codes with the letter I read as 1, wrapped diagnoses and vaccine names, side-by-side lab tables,
// page footers and 12-hour flowsheet columns.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "extract/ocr.hpp"
#include "extract/structurer.hpp"

namespace mv::extract {
namespace {

const Vocabulary& vocab() {
  static const Vocabulary v = Vocabulary::load();
  return v;
}

// One page from text lines: words 10 px per character, 20 px high; two spaces open a new column (60 px gap).
OcrPage page_of(const std::vector<std::string>& lines) {
  OcrPage p;
  p.width = 2000;
  p.height = 100 + 30 * static_cast<int>(lines.size());
  std::vector<std::vector<int>> line_words;
  for (std::size_t li = 0; li < lines.size(); ++li) {
    const std::string& l = lines[li];
    const double y = 50 + 30.0 * li;
    double x = 50;
    line_words.emplace_back();
    std::size_t i = 0;
    while (i < l.size()) {
      std::size_t spaces = 0;
      while (i < l.size() && l[i] == ' ') ++i, ++spaces;
      if (i >= l.size()) break;
      x += spaces >= 2 ? 60 : (spaces == 1 ? 10 : 0);
      std::size_t j = l.find(' ', i);
      if (j == std::string::npos) j = l.size();
      const std::string w = l.substr(i, j - i);
      OcrWord word{w, {x, y, x + 10.0 * w.size(), y + 20}, 0.9, false};
      line_words.back().push_back(static_cast<int>(p.words.size()));
      p.words.push_back(word);
      x += 10.0 * w.size();
      i = j;
    }
  }
  p.rows = build_rows(p.words, line_words);
  return p;
}

Extraction run(const std::vector<std::string>& lines) {
  return structure_document({page_of(lines)}, vocab());
}

TEST(Structurer, FollowUpsWithSymbolBulletsAndColonTiming) {
  auto e = run({"Follow-up",
                "\xC2\xA2\xC2\xAB  Repeat CBC - in 1 week",  // "¢«" for a bullet
                "*  Colonoscopy: in 5 years", "SARH | Printed Jan 14, 2022 20:30  SYNTHETIC  Page 1 of 2"});
  ASSERT_EQ(e.followups.size(), 2u);
  EXPECT_EQ(e.followups[0].text, "Repeat CBC");
  EXPECT_EQ(e.followups[0].when, "in 1 week");
  EXPECT_EQ(e.followups[1].text, "Colonoscopy");
  EXPECT_EQ(e.followups[1].when, "in 5 years");
}

TEST(Structurer, DiagnosisCodesWithLetterIReadAsOne) {
  auto e =
      run({"Diagnoses",
           "Principal diagnosis: 182.402 Acute embolism and thrombosis of unspecified deep veins of left",
           "lower extremity", "\xC2\xA2  Secondary: 110 Essential (primary) hypertension",
           "PAST MEDICAL HISTORY", "e  Nonrheumatic aortic (valve) stenosis (135.0) - history of"});
  ASSERT_EQ(e.diagnoses.size(), 3u);
  EXPECT_EQ(e.diagnoses[0].icd10, "I82.402");
  EXPECT_EQ(e.diagnoses[0].role, "principal");
  EXPECT_EQ(e.diagnoses[0].text,
            "Acute embolism and thrombosis of unspecified deep veins of left lower extremity");
  EXPECT_EQ(e.diagnoses[1].icd10, "I10");
  EXPECT_EQ(e.diagnoses[1].role, "secondary");
  EXPECT_EQ(e.diagnoses[1].text, "Essential (primary) hypertension");
  EXPECT_EQ(e.diagnoses[2].icd10, "I35.0");
  EXPECT_EQ(e.diagnoses[2].status, "history");
  EXPECT_EQ(e.diagnoses[2].text, "Nonrheumatic aortic (valve) stenosis");
}

TEST(Structurer, NumbersInParenthesesOutsideDiagnosesAreNotCodes) {
  auto e = run({"Hospital Course", "Weight fell to (135.0) pounds over the stay."});
  EXPECT_TRUE(e.diagnoses.empty());
}

TEST(Structurer, SideBySideLabTable) {
  auto e = run({"Basic Metabolic Panel", "Test  Result  Units  Range  Test  Result  Units  Range",
                "Sodium  132 LOW  mmol/L  136-145  Potassium  4.4  mmol/L  3.5-5.1"});
  ASSERT_EQ(e.labs.size(), 2u);
  EXPECT_EQ(e.labs[0].test, "Sodium");
  EXPECT_EQ(e.labs[0].flag, "L");
  EXPECT_EQ(e.labs[0].reference_range, "136-145");
  EXPECT_EQ(e.labs[1].test, "Potassium");
  EXPECT_EQ(e.labs[1].value, "4.4");
  EXPECT_EQ(e.labs[1].unit, "mmol/L");
  EXPECT_EQ(e.labs[1].reference_range, "3.5-5.1");
}

TEST(Structurer, WrappedVaccineNameAndLotDigitZero) {
  auto e = run({"Vaccines Administered", "Vaccine  Date  Dose  Manufacturer  Lot #  Route  Site",
                "Meningococcal conjugate vaccine  10/21/2015  1  Sanofi Pasteur  YLO61  sc  L deltoid",
                "(MenACWY)"});
  ASSERT_EQ(e.immunizations.size(), 1u);
  const auto& im = e.immunizations[0];
  EXPECT_EQ(im.vaccine, "Meningococcal conjugate vaccine (MenACWY)");
  EXPECT_EQ(im.date, "2015-10-21");
  EXPECT_EQ(im.dose_number, 1);
  EXPECT_EQ(im.lot, "YL061");
  EXPECT_EQ(im.route, "SC");
  EXPECT_EQ(im.site, "L deltoid");
}

}  // namespace
}  // namespace mv::extract
