// The structurer on pages built from word geometry (no OCR): list markers read as symbols, follow-ups,
// diagnosis codes with the letter I read as 1, wrapped diagnoses and vaccine names, side-by-side lab tables,
// page footers and 12-hour flowsheet columns, misread flowsheet times and flag marks, prescriber pads and
// wrapped provider names, diagnosis tables, pathology diagnoses, flowsheets past midnight, vaccine tables
// with wrapped cells, study paragraphs, allergy lists over two rows, identifier look-alikes, table-rule bars,
// the ICD label with a barred I, flowsheet unit snapping and impossible vitals, vaccine lexicon, times in fields.
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

TEST(Structurer, LabValuePrecisionAgainstTheRange) {
  auto lab = [](std::string value, std::optional<std::string> range) {
    Lab l;
    l.test = "Potassium";
    l.value = std::move(value);
    l.reference_range = std::move(range);
    return l;
  };
  EXPECT_TRUE(value_precision_conflicts(lab("39", "3.5-5.1")));
  EXPECT_TRUE(value_precision_conflicts(lab("09", "0.8-1.1")));
  EXPECT_TRUE(value_precision_conflicts(lab("445", "36.0-46.0")));
  EXPECT_TRUE(value_precision_conflicts(lab("94", "-8.6-10.3")));  // a rule mark before the range
  EXPECT_TRUE(value_precision_conflicts(lab("5", "<0.5")));
  EXPECT_FALSE(value_precision_conflicts(lab("3.9", "3.5-5.1")));
  EXPECT_FALSE(value_precision_conflicts(lab("96", "70-99")));
  EXPECT_FALSE(value_precision_conflicts(lab("4.10", "0.74-1.35")));
  EXPECT_TRUE(value_precision_conflicts(lab("17.11", "22.0-26.0")));  // a stray point or digit
  EXPECT_TRUE(value_precision_conflicts(lab("16.6", "135-175")));     // or the range lost its points
  EXPECT_TRUE(value_has_fewer_decimals_than_range(lab("39", "3.5-5.1")));
  EXPECT_FALSE(value_has_fewer_decimals_than_range(lab("16.6", "135-175")));
  EXPECT_FALSE(value_precision_conflicts(lab("Negative", "Negative")));
  EXPECT_FALSE(value_precision_conflicts(lab("39", std::nullopt)));
  EXPECT_TRUE(value_fits_range_precision("1.17", "0.74-1.35"));
  EXPECT_TRUE(value_fits_range_precision("<0.5", "<0.5"));
  EXPECT_FALSE(value_fits_range_precision("1.1", "0.74-1.35"));
  EXPECT_FALSE(value_fits_range_precision("117", "0.74-1.35"));
  EXPECT_FALSE(value_fits_range_precision("3.9.", "3.5-5.1"));
  EXPECT_FALSE(value_fits_range_precision("09.1", "36.0-46.0"));  // a leading zero: a misread
  EXPECT_TRUE(value_fits_range_precision("0.9", "0.8-1.1"));
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

// One page from words placed at given left edges (10 px per character, 20 px high, one line per entry).
OcrPage page_at(const std::vector<std::vector<std::pair<std::string, double>>>& lines) {
  OcrPage p;
  p.width = 2000;
  p.height = 100 + 30 * static_cast<int>(lines.size());
  std::vector<std::vector<int>> line_words;
  for (std::size_t li = 0; li < lines.size(); ++li) {
    const double y = 50 + 30.0 * li;
    line_words.emplace_back();
    for (const auto& [w, x] : lines[li]) {
      line_words.back().push_back(static_cast<int>(p.words.size()));
      p.words.push_back({w, {x, y, x + 10.0 * w.size(), y + 20}, 0.9, false});
    }
  }
  p.rows = build_rows(p.words, line_words);
  return p;
}

TEST(Structurer, FlowsheetMisreadColumnTimeAndFlagMarksApart) {
  // Columns at x = 300, 500, 700 (centres 325, 525, 725); the middle time was read as "66:00". The flag marks
  // "!!" and "*" stand apart from their values (a cell of their own) but in the same column.
  OcrPage p = page_at({{{"Date:", 50}, {"08/02/2019", 110}},
                       {{"Parameter", 50}, {"06:00", 300}, {"66:00", 500}, {"08:00", 700}},
                       {{"HR", 50}, {"(bpm)", 80}, {"84", 315}, {"79", 515}, {"83", 715}},
                       {{"Glucose", 50},
                        {"(mg/dL)", 130},
                        {"510", 290},
                        {"H", 325},
                        {"!!", 350},
                        {"99", 515},
                        {"120", 690},
                        {"H", 725},
                        {"*", 750}}});
  auto e = structure_document({p}, vocab());
  ASSERT_EQ(e.vitals.size(), 3u);
  EXPECT_EQ(e.vitals[0].time, "2019-08-02T06:00");
  EXPECT_EQ(e.vitals[1].time, "2019-08-02T07:00");  // from the column's place between 06:00 and 08:00
  EXPECT_EQ(e.vitals[1].value, "79");
  EXPECT_EQ(e.vitals[2].time, "2019-08-02T08:00");
  ASSERT_EQ(e.labs.size(), 3u);
  EXPECT_EQ(e.labs[0].value, "510");
  EXPECT_EQ(e.labs[0].flag, "HH");  // "H" and "!!"
  EXPECT_EQ(e.labs[1].value, "99");
  EXPECT_FALSE(e.labs[1].flag);
  EXPECT_EQ(e.labs[2].flag, "H");  // "H" and "*"
}

TEST(Structurer, PrescriberPadWrappedProviderAndCentredDepartment) {
  // A pad: the prescriber with credentials on top (large print), the practice under it.
  OcrPage pad;
  pad.width = 1275;
  pad.height = 1650;
  std::vector<std::vector<int>> lines;
  auto add = [&](const std::vector<std::string>& words, double x, double y, double h) {
    lines.emplace_back();
    for (const auto& w : words) {
      lines.back().push_back(static_cast<int>(pad.words.size()));
      pad.words.push_back({w, {x, y, x + 0.5 * h * w.size(), y + h}, 0.9, false});
      x += 0.5 * h * w.size() + 0.5 * h;
    }
  };
  add({"Sarah", "T.", "Garcia,", "MD"}, 450, 60, 30);
  add({"Pinecrest", "Hollow", "Memorial", "Hospital"}, 400, 100, 24);
  add({"6184", "Millbrook", "Crossing,", "Saltmarsh,", "NC", "21212"}, 380, 135, 14);
  for (int k = 0; k < 20; ++k) add({"Body", "text", "line"}, 100, 300 + 25.0 * k, 16);
  pad.rows = build_rows(pad.words, lines);
  auto e = structure_document({pad}, vocab());
  ASSERT_TRUE(e.encounter);
  EXPECT_EQ(e.encounter->provider, "Sarah T. Garcia, MD");
  EXPECT_EQ(e.encounter->facility, "Pinecrest Hollow Memorial Hospital");
  EXPECT_FALSE(e.encounter->department);

  // A name wrapped at the end of its row continues on the next row only when that completes a credential.
  auto w = run({"Gender: Male  Date: 9/25/24 20:00  Reconciled by: Sharon Kim,", "PharmD",
                "Type: Transfer reconciliation"});
  ASSERT_TRUE(w.encounter);
  EXPECT_EQ(w.encounter->provider, "Sharon Kim, PharmD");
  auto n = run({"Gender: Male  Ordering Provider: Steven L. Campbell, MD", "Fasting: No"});
  ASSERT_TRUE(n.encounter);
  EXPECT_EQ(n.encounter->provider, "Steven L. Campbell, MD");
}

TEST(Structurer, DiagnosisTableRowNumbersStatusColumnAndLetterZ) {
  auto e = run({"ASSESSMENT", "#  Diagnosis  ICD-10  Status",
                "1  Urinary tract infection, site not specified  N39.0  Active",
                "3  Long term (current) use of insulin  279.4  Resolved"});
  ASSERT_EQ(e.diagnoses.size(), 2u);
  EXPECT_EQ(e.diagnoses[0].text, "Urinary tract infection, site not specified");
  EXPECT_EQ(e.diagnoses[0].status, "active");
  EXPECT_EQ(e.diagnoses[1].icd10, "Z79.4");
  EXPECT_EQ(e.diagnoses[1].status, "resolved");
  EXPECT_EQ(e.diagnoses[1].text, "Long term (current) use of insulin");
}

TEST(Structurer, PathologyDiagnosisWithSpecimenAndCodeOnTheWrappedLine) {
  auto e = run({"Final Diagnosis",
                "FINAL DIAGNOSIS - A. Femoral head, right: Femoral head with acute fracture and",
                "osteopenia. Negative for neoplasm.  ICD-10: S72.001A"});
  ASSERT_EQ(e.diagnoses.size(), 1u);
  EXPECT_EQ(e.diagnoses[0].text, "Femoral head with acute fracture and osteopenia. Negative for neoplasm");
  EXPECT_EQ(e.diagnoses[0].icd10, "S72.001A");
  EXPECT_EQ(e.diagnoses[0].role, "pathologic");
}

TEST(Structurer, FootersWithMisreadPageCountsAndRunningHeadersAreSkipped) {
  auto e = run({"Follow-up", "*  Repeat CBC - in 2 weeks",
                "MFMC | Printed 09/13/2022 07:29  SYNTHETIC TEST DOCUMENT - NOT AREAL PATIENT  Page lof 1",
                "Elijah D. Watson  MRN: 59858560  DOB: Oct 10, 1988  (continued)"});
  ASSERT_EQ(e.followups.size(), 1u);
  EXPECT_EQ(e.followups[0].text, "Repeat CBC");
}

// A page from words placed at given x positions: one line per entry, words 10 px per character, 20 px high.
OcrPage page_at(const std::vector<std::vector<std::pair<double, std::string>>>& lines) {
  OcrPage p;
  p.width = 2000;
  p.height = 100 + 30 * static_cast<int>(lines.size());
  std::vector<std::vector<int>> line_words;
  for (std::size_t li = 0; li < lines.size(); ++li) {
    const double y = 50 + 30.0 * li;
    line_words.emplace_back();
    for (const auto& [x, w] : lines[li]) {
      line_words.back().push_back(static_cast<int>(p.words.size()));
      p.words.push_back(OcrWord{w, {x, y, x + 10.0 * w.size(), y + 20}, 0.9, false});
    }
  }
  p.rows = build_rows(p.words, line_words);
  return p;
}

TEST(Structurer, FlowsheetColumnsPastMidnightAreOnTheNextDay) {
  const std::vector<std::vector<std::pair<double, std::string>>> lines = {
      {{100, "Date:"}, {160, "2019-12-31"}},
      {{100, "Vital"}, {160, "Signs"}},
      {{100, "Parameter"}, {300, "18:00"}, {400, "22:00"}, {500, "02:00"}, {600, "06:00"}},
      {{100, "HR"}, {130, "(bpm)"}, {310, "80"}, {410, "82"}, {510, "84"}, {610, "86"}},
  };
  auto e = structure_document({page_at(lines)}, vocab());
  ASSERT_EQ(e.vitals.size(), 4u);
  EXPECT_EQ(e.vitals[0].time, "2019-12-31T18:00");
  EXPECT_EQ(e.vitals[1].time, "2019-12-31T22:00");
  EXPECT_EQ(e.vitals[2].time, "2020-01-01T02:00");
  EXPECT_EQ(e.vitals[3].time, "2020-01-01T06:00");
  EXPECT_EQ(e.vitals[3].value, "86");
}

TEST(Structurer, VaccineTableHeaderIsNotALabelRowAndWrappedCellsJoin) {
  // Columns: vaccine 100, date 420, dose 560, manufacturer 620, lot 800, route 920, site 980, given by 1120.
  const std::vector<std::vector<std::pair<double, std::string>>> lines = {
      {{100, "RECORD"}, {170, "DATE"}},
      {{100, "Nov"}, {140, "16,"}, {180, "2019"}},
      {{100, "Vaccines"}, {190, "Administered:"}},
      {{100, "Vaccine"},
       {420, "Date"},
       {560, "Dose"},
       {620, "Manufacturer"},
       {800, "Lot"},
       {840, "#"},
       {920, "Route"},
       {980, "Site"},
       {1120, "Given"},
       {1180, "By"}},
      {{100, "Influenza,"},
       {210, "quadrivalent,"},
       {420, "2014-01-01"},
       {560, "1"},
       {620, "Sanofi"},
       {690, "Pasteur"},
       {800, "XZJ29296"},
       {920, "=IM"},
       {980, "R"},
       {1000, "upper"},
       {1120, "Lisa"},
       {1170, "Cook,"},
       {1230, "RN"}},
      {{100, "inactivated"}, {220, "(IIV4)"}, {800, "5"}, {980, "arm"}},
      {{100, "HepA"},
       {420, "2015-10-01"},
       {560, "2"},
       {620, "Merck"},
       {800, "NROOO6"},
       {920, "IM"},
       {980, "Rdeltoid"},
       {1120, "Anna"},
       {1170, "Lee"}},
  };
  auto e = structure_document({page_at(lines)}, vocab());
  ASSERT_TRUE(e.encounter && e.encounter->date);
  EXPECT_EQ(*e.encounter->date, "2019-11-16");  // the record date, not the first vaccine's
  ASSERT_EQ(e.immunizations.size(), 2u);
  const auto& a = e.immunizations[0];
  EXPECT_EQ(a.vaccine, "Influenza, quadrivalent, inactivated (IIV4)");
  EXPECT_EQ(a.date, "2014-01-01");
  EXPECT_EQ(a.lot, "XZJ292965");
  EXPECT_EQ(a.route, "IM");
  EXPECT_EQ(a.site, "R upper arm");
  const auto& b = e.immunizations[1];
  EXPECT_EQ(b.vaccine, "Hep A");
  EXPECT_EQ(b.lot, "NR0006");
  EXPECT_EQ(b.site, "R deltoid");
}

TEST(Structurer, StudyParagraphGivesFindingsAndImpression) {
  auto e = run({"Diagnostic Studies",
                "24-hour Holter monitor: Predominant sinus rhythm. Rare PACs and PVCs. No pauses longer than",
                "2 seconds. Impression: No significant", "arrhythmia.",
                "12-lead electrocardiogram: Sinus rhythm. Impression: Normal ECG.", "Laboratory Data"});
  ASSERT_EQ(e.procedures.size(), 2u);
  EXPECT_EQ(e.procedures[0].name, "24-hour Holter monitor");
  EXPECT_EQ(e.procedures[0].findings,
            "Predominant sinus rhythm. Rare PACs and PVCs. No pauses longer than 2 seconds.");
  EXPECT_EQ(e.procedures[0].impression, "No significant arrhythmia.");
  EXPECT_EQ(e.procedures[1].findings, "Sinus rhythm.");
  EXPECT_EQ(e.procedures[1].impression, "Normal ECG.");
}

TEST(Structurer, SentencesStartingWithATestNameAreNotResults) {
  auto e = run({"Follow-up", "*  INR check at anticoagulation clinic: in 3 days", "Results",
                "BUN  15  ll  mg/dL  7-20"});
  ASSERT_EQ(e.labs.size(), 1u);  // BUN only; "INR ... 3 days" is a follow-up
  EXPECT_EQ(e.labs[0].test, "BUN");
  EXPECT_EQ(e.labs[0].value, "15");
  EXPECT_FALSE(e.labs[0].flag.has_value());  // "ll" is a rule read as letters, not the flag LL
  EXPECT_EQ(e.labs[0].unit, "mg/dL");
  ASSERT_EQ(e.followups.size(), 1u);
  EXPECT_EQ(e.followups[0].text, "INR check at anticoagulation clinic");
}

TEST(Structurer, FollowUpTimingWrappedOntoTheNextRow) {
  auto e = run({"Plan", "2. Return to the emergency department for chest pain - immediately if",
                "symptoms worsen", "3. Cardiology clinic follow-up - in 4 weeks"});
  ASSERT_EQ(e.followups.size(), 2u);
  EXPECT_EQ(e.followups[0].when, "immediately if symptoms worsen");
  EXPECT_EQ(e.followups[1].text, "Cardiology clinic follow-up");
}

TEST(Structurer, AllergyListWrappedAfterASemicolon) {
  auto e = run({"Allergies: Latex - Anaphylaxis (severe); lodinated contrast media - Hives (moderate);",
                "Heparin - Thrombocytopenia (HIT) (severe)"});
  ASSERT_EQ(e.allergies.size(), 3u);
  EXPECT_EQ(e.allergies[1].substance, "Iodinated contrast media");
  EXPECT_EQ(e.allergies[2].substance, "Heparin");
  EXPECT_TRUE(e.medications.empty());
}

TEST(Structurer, PathologyCodeLabelWithTheCodeOnTheNextRow) {
  auto e =
      run({"Final Diagnosis",
           "FINAL DIAGNOSIS - A. Femoral head, right: Femoral head with fracture.  ICD-10:", "$72.001A"});
  ASSERT_EQ(e.diagnoses.size(), 1u);
  EXPECT_EQ(e.diagnoses[0].text, "Femoral head with fracture");
  EXPECT_EQ(e.diagnoses[0].icd10, "S72.001A");
}

TEST(Structurer, IdentifierAndProviderLookAlikes) {
  auto e = run({"MRN: HO25855", "Attending: PaulA. Castillo, DO"});
  ASSERT_TRUE(e.patient && e.patient->mrn);
  EXPECT_EQ(*e.patient->mrn, "H025855");
  ASSERT_TRUE(e.encounter && e.encounter->provider);
  EXPECT_EQ(*e.encounter->provider, "Paul A. Castillo, DO");
  auto f = run({"MRN: $791307"});
  ASSERT_TRUE(f.patient && f.patient->mrn);
  EXPECT_EQ(*f.patient->mrn, "S791307");
}

// Rows as OCR read them on the scanned dev documents (value checks, docs/design/extract.md).
TEST(Structurer, TableRuleBarsAndTheLetterI) {
  // A bar alone at the start or end of a cell is a piece of a rule; between words it is the letter I.
  auto e = run(
      {"Diagnostic Studies:",
       "12-lead electrocardiogram: Sinus rhythm at 78 bpm with 1-2 mm ST depression in leads V4-V6. T wave "
       "inversions in | and aVL.  |",
       "Vaccines Administered", "Vaccine  Date  Dose  Manufacturer  Lot #  Route  Site",
       "| Varicella  Apr 3, 2021  1  Merck  DY948  sc  L deltoid"});
  ASSERT_EQ(e.procedures.size(), 1u);
  ASSERT_TRUE(e.procedures[0].findings);
  EXPECT_EQ(
      *e.procedures[0].findings,
      "Sinus rhythm at 78 bpm with 1-2 mm ST depression in leads V4-V6. T wave inversions in I and aVL.");
  ASSERT_EQ(e.immunizations.size(), 1u);
  EXPECT_EQ(e.immunizations[0].vaccine, "Varicella");
}

TEST(Structurer, PathologyCodeLabelWithItsIReadAsABar) {
  auto e = run({"Final Diagnosis",
                "FINAL DIAGNOSIS - A. Gallbladder: Acute and chronic cholecystitis with cholelithiasis.  "
                "|CD-10: K80.00"});
  ASSERT_EQ(e.diagnoses.size(), 1u);
  EXPECT_EQ(e.diagnoses[0].text, "Acute and chronic cholecystitis with cholelithiasis");
  EXPECT_EQ(e.diagnoses[0].icd10, "K80.00");
  auto f =
      run({"Final Diagnosis",
           "Diagnosis - A. Colon, sigmoid, polyp: Tubular adenoma. Negative for high-grade dysplasia and "
           "malignancy. |!CD-10:",
           "D12.5"});
  ASSERT_EQ(f.diagnoses.size(), 1u);
  EXPECT_EQ(f.diagnoses[0].text, "Tubular adenoma. Negative for high-grade dysplasia and malignancy");
  EXPECT_EQ(f.diagnoses[0].icd10, "D12.5");
}

TEST(Structurer, FlowsheetUnitsSnappedAndImpossibleTemperaturesLeftOut) {
  OcrPage p = page_at({{{"Date:", 50}, {"08/17/2024", 110}},
                       {{"Parameter", 50}, {"07:00", 300}, {"09:00", 500}, {"11:00", 700}},
                       {{"MAP", 50}, {"(mmiig)", 90}, {"93", 315}, {"86", 515}, {"96", 715}},
                       {{"HR", 50}, {"(bom)", 80}, {"82", 315}, {"87", 515}, {"83", 715}},
                       {{"Temp", 50},
                        {"(\xC2\xB0"
                         "F)",
                         100},
                        {"161.0", 305},
                        {"1601.4", 500},
                        {"101.4", 705}}});
  auto e = structure_document({p}, vocab());
  ASSERT_EQ(e.vitals.size(), 7u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(e.vitals[i].unit, "mmHg");
  for (int i = 3; i < 6; ++i) EXPECT_EQ(e.vitals[i].unit, "bpm");
  EXPECT_EQ(e.vitals[6].value, "101.4");  // 161.0 and 1601.4 degrees F are not possible
  EXPECT_EQ(e.vitals[6].time, "2024-08-17T11:00");
}

TEST(Structurer, LabTableWithAMisreadTimeHeader) {
  // The header's first time was misread ("65:18"), so the rows are read as lab rows with the unit after
  // the name; a value with a leading zero is left out and a reversed range dropped.
  auto e = run({"LABORATORY", "Test  65:18  16:18  Reference", "HCO3 (mmol/L)  20.1  20.6 L *  22.0-26.0",
                "Lactic Acid (mmol/L)  06.6  6.5  6.5-2.2", "Glucose (mg/dL)  93  76  768-99"});
  ASSERT_EQ(e.labs.size(), 2u);
  EXPECT_EQ(e.labs[0].test, "HCO3");
  EXPECT_EQ(e.labs[0].unit, "mmol/L");
  EXPECT_EQ(e.labs[0].value, "20.1");
  EXPECT_EQ(e.labs[1].test, "Glucose");
  EXPECT_EQ(e.labs[1].unit, "mg/dL");
  EXPECT_EQ(e.labs[1].value, "93");
  EXPECT_FALSE(e.labs[1].reference_range);
}

TEST(Structurer, VaccineManufacturerAndSiteFromTheVocabulary) {
  auto e = run({"Vaccines Administered", "Vaccine  Date  Dose  Manufacturer  Lot #  Route  Site",
                "Hep B  06/02/2017  1  GlaxoSmithKlin  HF6282  IM  Rupperarm"});
  ASSERT_EQ(e.immunizations.size(), 1u);
  EXPECT_EQ(e.immunizations[0].manufacturer, "GlaxoSmithKline");
  EXPECT_EQ(e.immunizations[0].site, "R upper arm");
}

TEST(Structurer, TimesInsideFieldValuesDoNotStartAFlowsheetGrid) {
  auto e = run({"Collected: 2023-06-03 9:30 AM  Reported: 2023-06-03 6:25 PM", "Basic Metabolic Panel (BMP)",
                "Test  Result  Flag  Units  Reference Range", "Potassium  3.9  mmol/L  3.5-5.1"});
  ASSERT_EQ(e.labs.size(), 1u);
  EXPECT_EQ(e.labs[0].value, "3.9");
  EXPECT_EQ(e.labs[0].unit, "mmol/L");
  EXPECT_EQ(e.labs[0].reference_range, "3.5-5.1");
}

}  // namespace
}  // namespace mv::extract
