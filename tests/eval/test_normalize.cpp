// Normalisation of printed values for scoring: numbers, units, dates, routes, frequencies, flags, ranges.
#include <gtest/gtest.h>

#include "data/clinical_tables.hpp"
#include "eval/normalize.hpp"

using namespace mv::eval;

TEST(EvalNormalize, DecimalsCompareByValueNotByString) {
  EXPECT_EQ(parse_decimal("7.0"), parse_decimal("7"));
  EXPECT_EQ(parse_decimal("0.50"), parse_decimal(".5"));
  EXPECT_EQ(parse_decimal("1,000"), parse_decimal("1000"));
  EXPECT_EQ(parse_decimal("25,000"), parse_decimal("25000"));
  EXPECT_EQ(parse_decimal("7,5"), parse_decimal("7.5"));  // decimal comma
  EXPECT_EQ(parse_decimal("-0"), parse_decimal("0"));
  EXPECT_NE(parse_decimal("10"), parse_decimal("100"));
  EXPECT_NE(parse_decimal("7.0"), parse_decimal("7.1"));
  EXPECT_FALSE(parse_decimal("abc"));
  EXPECT_FALSE(parse_decimal("1,00,0"));
  EXPECT_FALSE(parse_decimal(""));
  EXPECT_EQ(parse_decimal("0.0012")->str(), "0.0012");
  EXPECT_EQ(parse_decimal("1200")->str(), "1200");
  EXPECT_EQ(parse_decimal("12.50")->str(), "12.5");
  EXPECT_EQ(parse_decimal("1")->scaled(-3), parse_decimal("0.001"));
}

TEST(EvalNormalize, UnitsAreCanonicalWithScale) {
  EXPECT_EQ(parse_unit("mg"), (Unit{"g", -3}));
  EXPECT_EQ(parse_unit("mcg"), parse_unit("\u00b5g"));
  EXPECT_EQ(parse_unit("mcg"), parse_unit("ug"));
  EXPECT_EQ(parse_unit("mg/dL"), parse_unit("MG/DL"));
  EXPECT_EQ(parse_unit("x10^3/uL"), parse_unit("10^9/L"));
  EXPECT_EQ(parse_unit("x10^3/uL"), parse_unit("K/\u00b5L"));
  EXPECT_EQ(parse_unit("bpm"), parse_unit("beats/min"));
  EXPECT_EQ(parse_unit("breaths/min"), parse_unit("/min"));
  EXPECT_EQ(parse_unit("mmHg"), parse_unit("mm Hg"));
  EXPECT_EQ(parse_unit("tab"), parse_unit("tablets"));
  EXPECT_EQ(parse_unit("units"), parse_unit("U"));
  EXPECT_NE(parse_unit("\u00b0F"), parse_unit("\u00b0C"));
  EXPECT_NE(parse_unit("mg/dL"), parse_unit("mmol/L"));
  EXPECT_NE(parse_unit("x10^3/uL"), parse_unit("x10^6/uL"));
  EXPECT_EQ(parse_unit("mg").base, parse_unit("g").base);  // commensurable: same base
}

TEST(EvalNormalize, QuantitiesNeverConfuseMagnitudes) {
  EXPECT_FALSE(quantity_equal("10 mg", "100 mg"));
  EXPECT_FALSE(quantity_equal("10 mg", "10 mcg"));
  EXPECT_FALSE(quantity_equal("10 mg", "10"));
  EXPECT_TRUE(quantity_equal("10 mg", "10mg"));
  EXPECT_TRUE(quantity_equal("10 mg", "10 MG"));
  EXPECT_TRUE(quantity_equal("1,000 mcg", "1 mg"));
  EXPECT_TRUE(quantity_equal("0.5 g", "500 mg"));
  EXPECT_TRUE(quantity_equal("7.0", "7"));
  EXPECT_FALSE(quantity_equal("7.0", "7.1"));
  EXPECT_TRUE(quantity_equal("10 mg/325 mg", "10mg / 325mg"));
  EXPECT_FALSE(quantity_equal("10 mg/325 mg", "10 mg/500 mg"));
  EXPECT_TRUE(quantity_equal("100 units/mL", "100 U/mL"));
  EXPECT_TRUE(quantity_equal("0.5 mg/2.5 mg per 3 mL", "0.5 mg/2.5 mg/3 mL"));
  EXPECT_TRUE(quantity_equal("128/76", "128 / 76"));
  EXPECT_FALSE(quantity_equal("128/76", "128/78"));
  EXPECT_TRUE(quantity_equal("<0.01", "< 0.01"));
  EXPECT_FALSE(quantity_equal("<0.01", "0.01"));
  EXPECT_TRUE(quantity_equal("Negative", "negative"));
  EXPECT_FALSE(quantity_equal("Negative", "0"));
  EXPECT_TRUE(quantity_equal("0.9%", "0.9 %"));
}

TEST(EvalNormalize, DatesKeepTheirPrecision) {
  EXPECT_EQ(normalize_date("2025-05-17"), "2025-05-17");
  EXPECT_EQ(normalize_date("05/17/2025"), "2025-05-17");
  EXPECT_EQ(normalize_date("5/17/25"), "2025-05-17");
  EXPECT_EQ(normalize_date("17.05.2025"), "2025-05-17");
  EXPECT_EQ(normalize_date("May 17, 2025"), "2025-05-17");
  EXPECT_EQ(normalize_date("17 May 2025"), "2025-05-17");
  EXPECT_EQ(normalize_date("17-May-2025"), "2025-05-17");
  EXPECT_EQ(normalize_date("September 3rd, 2024"), "2024-09-03");
  EXPECT_EQ(normalize_date("May 2025"), "2025-05");
  EXPECT_EQ(normalize_date("2025"), "2025");
  EXPECT_EQ(normalize_date("2023-07-05T05:14"), "2023-07-05T05:14");
  EXPECT_EQ(normalize_date("2023-07-05 05:14"), "2023-07-05T05:14");
  EXPECT_EQ(normalize_date("07/05/2023 0514"), "2023-07-05T05:14");
  EXPECT_NE(normalize_date("2025-05"), normalize_date("2025-05-17"));  // no day is invented
  EXPECT_FALSE(normalize_date("in 2 weeks"));
  EXPECT_FALSE(normalize_date("13/45/2025"));
  EXPECT_FALSE(normalize_date(""));
}

TEST(EvalNormalize, RoutesAndFrequenciesMapAbbreviations) {
  EXPECT_EQ(normalize_route("PO"), "PO");
  EXPECT_EQ(normalize_route("p.o."), "PO");
  EXPECT_EQ(normalize_route("by mouth"), "PO");
  EXPECT_EQ(normalize_route("Oral"), "PO");
  EXPECT_EQ(normalize_route("subcutaneously"), normalize_route("SQ"));
  EXPECT_NE(normalize_route("IV"), normalize_route("IM"));
  EXPECT_EQ(normalize_frequency("BID"), "2/1d");
  EXPECT_EQ(normalize_frequency("twice daily"), "2/1d");
  EXPECT_EQ(normalize_frequency("b.i.d."), "2/1d");
  EXPECT_EQ(normalize_frequency("q8h"), "1/8h");
  EXPECT_EQ(normalize_frequency("every 8 hours"), "1/8h");
  EXPECT_EQ(normalize_frequency("Q 8 H"), "1/8h");
  EXPECT_EQ(normalize_frequency("q24h"), normalize_frequency("daily"));
  EXPECT_NE(normalize_frequency("q12h"), normalize_frequency("BID"));  // timing differs (FHIR Timing)
  EXPECT_EQ(normalize_frequency("q6h PRN"), normalize_frequency("every 6 hours"));
  EXPECT_EQ(normalize_frequency("qHS"), normalize_frequency("at bedtime"));
  EXPECT_EQ(normalize_frequency("q4-6h"), normalize_frequency("every 4 to 6 hours"));
  EXPECT_NE(normalize_frequency("TID"), normalize_frequency("QID"));
}

// Every abbreviation the document generator prints has the same code as its long form.
TEST(EvalNormalize, EverySigAbbreviationOfTheTablesMapsToItsLongForm) {
  const auto tables = mv::synth::ClinicalTables::load(mv::synth::data_dir() / "clinical");
  ASSERT_FALSE(tables.routes.empty());
  ASSERT_FALSE(tables.frequencies.empty());
  for (const auto& [code, w] : tables.routes)
    EXPECT_EQ(normalize_route(w.abbr), normalize_route(w.long_form)) << code;
  for (const auto& [code, w] : tables.frequencies)
    EXPECT_EQ(normalize_frequency(w.abbr), normalize_frequency(w.long_form)) << code;
  // ... and different codes stay different.
  std::map<std::string, std::string> seen;
  for (const auto& [code, w] : tables.routes) {
    const auto n = normalize_route(w.abbr);
    EXPECT_FALSE(seen.count(n)) << code << " collides with " << seen[n];
    seen[n] = code;
  }
}

TEST(EvalNormalize, FlagsRangesCodes) {
  EXPECT_EQ(normalize_flag("High"), "H");
  EXPECT_EQ(normalize_flag("h"), "H");
  EXPECT_EQ(normalize_flag("critical low"), "LL");
  EXPECT_EQ(normalize_flag("HH"), "HH");
  EXPECT_EQ(normalize_flag("abnormal"), "A");
  EXPECT_EQ(normalize_range("3.5-5.1"), "3.5..5.1");
  EXPECT_EQ(normalize_range("3.50 - 5.10"), "3.5..5.1");
  EXPECT_EQ(normalize_range("3.5\u20135.1 mmol/L"), "3.5..5.1");
  EXPECT_EQ(normalize_range("3.5 to 5.1"), "3.5..5.1");
  EXPECT_EQ(normalize_range("-2.0 to 2.0"), "-2..2");
  EXPECT_EQ(normalize_range("<200"), "<200");
  EXPECT_EQ(normalize_range("< 200 mg/dL"), "<200");
  EXPECT_NE(normalize_range("3.5-5.1"), normalize_range("3.5-5.0"));
  EXPECT_EQ(normalize_range("Negative"), "negative");
  EXPECT_EQ(normalize_code("j18.9", true), normalize_code("J189", true));
  EXPECT_EQ(normalize_code(" 2345-7 ", false), "2345-7");
}

TEST(EvalNormalize, TextFoldingAndSimilarity) {
  EXPECT_EQ(fold_text("Chest X-ray, 2 views (PA and lateral)"),
            fold_text("chest x-ray 2 views PA and lateral"));
  EXPECT_EQ(fold_text("  Metoprolol   TARTRATE. "), "metoprolol tartrate");
  EXPECT_EQ(fold("A\u2013B"), "a-b");
  EXPECT_DOUBLE_EQ(similarity("metoprolol", "metoprolol"), 1.0);
  EXPECT_NEAR(similarity("metoprolol", "metoprol0l"), 0.9, 1e-12);
  EXPECT_DOUBLE_EQ(similarity("", ""), 1.0);
  EXPECT_DOUBLE_EQ(similarity("abc", ""), 0.0);
}

TEST(EvalNormalize, VocabularyGroupsSynonymsPerSection) {
  Vocabulary v;
  v.add_group("vitals", {"Heart Rate", "HR"});
  EXPECT_EQ(v.canonical("vitals", "hr"), v.canonical("vitals", "Heart rate"));
  EXPECT_NE(v.canonical("labs", "HR"), v.canonical("labs", "Heart Rate"));  // other sections untouched
  EXPECT_EQ(v.canonical("vitals", "Pulse Ox"), "pulse ox");
  const auto tables = Vocabulary::from_clinical_tables((mv::synth::data_dir() / "clinical").string());
  EXPECT_GT(tables.groups(), 50u);
  EXPECT_EQ(tables.canonical("vitals", "SpO2"), tables.canonical("vitals", "Oxygen Saturation"));
  EXPECT_NE(tables.canonical("vitals", "SpO2"), tables.canonical("vitals", "Heart Rate"));
}
