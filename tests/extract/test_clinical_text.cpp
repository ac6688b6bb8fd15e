// Parsing units of the OCR structurer: medication strings, lab rows, flags, dates, page ranges.
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "extract/clinical_text.hpp"
#include "extract/extractor.hpp"

namespace mv::extract {
namespace {

const Vocabulary& vocab() {
  static const Vocabulary v = Vocabulary::load();
  return v;
}

TEST(MedicationParse, InlineSigWithDurationAndIndication) {
  auto m = parse_medication("Metronidazole 250 mg - 1 tab PO TID x 7 days (C. difficile colitis)", vocab());
  ASSERT_TRUE(m);
  EXPECT_EQ(m->med.name, "Metronidazole");
  EXPECT_EQ(m->med.strength, "250 mg");
  EXPECT_EQ(m->med.dose, "1");
  EXPECT_EQ(m->med.unit, "tab");
  EXPECT_EQ(m->med.route, "PO");
  EXPECT_EQ(m->med.frequency, "TID");
  EXPECT_EQ(m->med.duration, "7 days");
  EXPECT_EQ(m->med.indication, "C. difficile colitis");
  EXPECT_FALSE(m->med.prn);
  // Spans point at the printed text.
  std::string text = "Metronidazole 250 mg - 1 tab PO TID x 7 days (C. difficile colitis)";
  auto s = m->spans.at("frequency");
  EXPECT_EQ(text.substr(s.first, s.second - s.first), "TID");
}

TEST(MedicationParse, TableRowWithStatusAndUnitDose) {
  auto m = parse_medication("Insulin lispro 100 units/mL  10 units  SC  AC&HS  9/24/24 20:15  Discontinue",
                            vocab());
  ASSERT_TRUE(m);
  EXPECT_EQ(m->med.name, "Insulin lispro");
  EXPECT_EQ(m->med.strength, "100 units/mL");
  EXPECT_EQ(m->med.dose, "10");
  EXPECT_EQ(m->med.unit, "units");
  EXPECT_EQ(m->med.route, "SC");
  EXPECT_EQ(m->med.frequency, "AC&HS");
  EXPECT_EQ(m->med.status, "discontinued");
}

TEST(MedicationParse, PrescriptionSigLongFormsQuantityRefills) {
  auto m = parse_medication(
      "Finasteride 5 mg tablet  Sig: Take 1 tablet by mouth once daily  Disp: 30 tablets      Refills: 2",
      vocab());
  ASSERT_TRUE(m);
  EXPECT_EQ(m->med.strength, "5 mg");
  EXPECT_EQ(m->med.dose, "1");
  EXPECT_EQ(m->med.unit, "tablet");
  EXPECT_EQ(m->med.route, "by mouth");
  EXPECT_EQ(m->med.frequency, "once daily");
  EXPECT_EQ(m->med.quantity, "30 tablets");
  EXPECT_EQ(m->med.refills, 2);
}

TEST(MedicationParse, PrnWithIndication) {
  auto m = parse_medication("Ondansetron 4 mg - 1 tab PO q8h PRN nausea", vocab());
  ASSERT_TRUE(m);
  EXPECT_EQ(m->med.prn, true);
  EXPECT_EQ(m->med.frequency, "q8h");
  EXPECT_EQ(m->med.indication, "nausea");
}

TEST(MedicationParse, CombinationAndConcentrationStrengthsStayWhole) {
  // The second amount of a combination or concentration is part of the strength, not a dose.
  auto m = parse_medication("Amoxicillin/clavulanate 500 mg/125 mg - 1 tab PO q12h x 10 days", vocab());
  ASSERT_TRUE(m);
  EXPECT_EQ(m->med.strength, "500 mg/125 mg");
  EXPECT_EQ(m->med.dose, "1");
  EXPECT_EQ(m->med.unit, "tab");
  m = parse_medication("Diltiazem  125 mg/125 mL  10  mg/hr  IV continuous", vocab());
  ASSERT_TRUE(m);
  EXPECT_EQ(m->med.strength, "125 mg/125 mL");
  EXPECT_EQ(m->med.dose, "10");
  EXPECT_EQ(m->med.unit, "mg/hr");
  m = parse_medication("Ipratropium-albuterol 0.5 mg/2.5 mg per 3 mL - 1 vial NEB q6h", vocab());
  ASSERT_TRUE(m);
  EXPECT_EQ(m->med.strength, "0.5 mg/2.5 mg per 3 mL");
  EXPECT_EQ(m->med.dose, "1");
  EXPECT_EQ(m->med.unit, "vial");
  // Printed as it is: no space added before a percent sign.
  m = parse_medication("Triamcinolone 0.1% cream 0.1% - 1 application TOP BID", vocab());
  ASSERT_TRUE(m);
  EXPECT_EQ(m->med.strength, "0.1%");
  // A dose unit of the infusion table ("units/min").
  m = parse_medication("Vasopressin  20 units/100 mL  0.03  units/min  IV continuous", vocab());
  ASSERT_TRUE(m);
  EXPECT_EQ(m->med.strength, "20 units/100 mL");
  EXPECT_EQ(m->med.dose, "0.03");
  EXPECT_EQ(m->med.unit, "units/min");
}

TEST(MedicationParse, StatusAbbreviationsAndPrnIndicationStaysInItsCell) {
  auto m = parse_medication("Lorazepam 1 mg  1 tab  PO  q8h PRN  Cont.", vocab());
  ASSERT_TRUE(m);
  EXPECT_EQ(m->med.prn, true);
  EXPECT_FALSE(m->med.indication);  // "Cont." is the next column, not what the PRN is for
  EXPECT_EQ(m->med.status, "continued");
  m = parse_medication("Tramadol 50 mg  1 tab  PO  q6h PRN  09/24/2024 7:06  D/C", vocab());
  ASSERT_TRUE(m);
  EXPECT_EQ(m->med.status, "discontinued");
  m = parse_medication("Oxycodone 5 mg - 1 tab PO q4h PRN severe pain", vocab());
  ASSERT_TRUE(m);
  EXPECT_EQ(m->med.indication, "severe pain");
}

TEST(MedicationParse, NoDrugNoMedication) {
  EXPECT_FALSE(parse_medication("Repeat CBC - in 1 week", vocab()));
}

TEST(LabParse, RowWithPrintedFlagUnitRange) {
  auto l = parse_lab_row("Direct Bilirubin  0.7  HIGH  mg/dL  0.0-0.3", vocab());
  ASSERT_TRUE(l);
  EXPECT_EQ(l->lab.test, "Direct Bilirubin");
  EXPECT_EQ(l->lab.value, "0.7");
  EXPECT_EQ(l->lab.flag, "H");
  EXPECT_EQ(l->lab.unit, "mg/dL");
  EXPECT_EQ(l->lab.reference_range, "0.0-0.3");
}

TEST(LabParse, CriticalFlagsAndOneSidedRange) {
  auto l = parse_lab_row("Troponin I  2.31  H !!  ng/mL  <0.04", vocab());
  ASSERT_TRUE(l);
  EXPECT_EQ(l->lab.value, "2.31");
  EXPECT_EQ(l->lab.flag, "HH");
  EXPECT_EQ(l->lab.reference_range, "<0.04");
  auto k = parse_lab_row("Potassium 2.6 CRIT LOW mmol/L 3.5-5.1", vocab());
  ASSERT_TRUE(k);
  EXPECT_EQ(k->lab.flag, "LL");
  EXPECT_EQ(k->lab.unit, "mmol/L");
}

TEST(LabParse, NotALabRow) {
  EXPECT_FALSE(parse_lab_row("Flags: H = high, L = low", vocab()));
  EXPECT_FALSE(parse_lab_row("Sodium", vocab()));  // no value
}

TEST(LabParse, UnitsMisreadNextToTableRulesSnapToTheVocabulary) {
  // A rule read as a quote or slash before the unit, and a last letter misread.
  auto l = parse_lab_row("Glucose  185  \xE2\x80\x98mg/dt  70-99", vocab());
  ASSERT_TRUE(l);
  EXPECT_EQ(l->lab.unit, "mg/dL");
  l = parse_lab_row("Hemoglobin  11.7  /g/d.  12.0-15.5", vocab());
  ASSERT_TRUE(l);
  EXPECT_EQ(l->lab.unit, "g/dL");
  l = parse_lab_row("Sodium  141  mmoV/L  136-145", vocab());
  ASSERT_TRUE(l);
  EXPECT_EQ(l->lab.unit, "mmol/L");
  // A known unit is never changed, and a token far from every unit is kept as printed.
  l = parse_lab_row("CRP  4.1  mg/L  <5.0", vocab());
  ASSERT_TRUE(l);
  EXPECT_EQ(l->lab.unit, "mg/L");
  EXPECT_EQ(snap_lab_unit("zzq/qq", "sodium", vocab()), "zzq/qq");
}

TEST(LabParse, FlagJoinedToTheValue) {
  auto l = parse_lab_row("pH  7.58H  7.35-7.45", vocab());
  ASSERT_TRUE(l);
  EXPECT_EQ(l->lab.value, "7.58");
  EXPECT_EQ(l->lab.flag, "H");
  EXPECT_EQ(l->lab.reference_range, "7.35-7.45");
  l = parse_lab_row("Glucose  510H!!  mg/dL  70-99", vocab());
  ASSERT_TRUE(l);
  EXPECT_EQ(l->lab.value, "510");
  EXPECT_EQ(l->lab.flag, "HH");
}

TEST(Flags, DerivedFromRange) {
  EXPECT_EQ(derive_flag("5.8", "3.5-5.1"), "H");
  EXPECT_EQ(derive_flag("3.4", "3.5-5.1"), "L");
  EXPECT_EQ(derive_flag("3.5", "3.5-5.1"), "N");
  EXPECT_EQ(derive_flag("155", "<100"), "H");
  EXPECT_EQ(derive_flag("99", "<100"), "N");
  EXPECT_EQ(derive_flag("55", ">60"), "L");
  EXPECT_EQ(derive_flag("Negative", "Negative"), std::nullopt);
  EXPECT_EQ(derive_flag("<0.01", "<0.04"), std::nullopt);  // a censored value is not compared
  EXPECT_EQ(normalise_flag("CRIT HIGH", vocab()), "HH");
  EXPECT_EQ(normalise_flag("L *", vocab()), "L");
  EXPECT_EQ(normalise_flag("mg/dL", vocab()), std::nullopt);
}

TEST(Dates, PrintedFormsToIso) {
  EXPECT_EQ(normalise_date("1/15/80 (44 y)", false), "1980-01-15");
  EXPECT_EQ(normalise_date("9/25/24 20:00"), "2024-09-25T20:00");
  EXPECT_EQ(normalise_date("24-Feb-2022 10:52"), "2022-02-24T10:52");
  EXPECT_EQ(normalise_date("09-May-1943 (78 y)", false), "1943-05-09");
  EXPECT_EQ(normalise_date("2024-08-07"), "2024-08-07");
  EXPECT_EQ(normalise_date("Sep 25, 2024"), "2024-09-25");
  EXPECT_EQ(normalise_date("13/45/2020"), std::nullopt);
  EXPECT_EQ(normalise_date("no date here"), std::nullopt);
}

TEST(Dates, TwelveHourClock) {
  EXPECT_EQ(normalise_date("01/27/2022 1:45 PM"), "2022-01-27T13:45");
  EXPECT_EQ(normalise_date("01/27/2022 12:10 am"), "2022-01-27T00:10");
  EXPECT_EQ(normalise_date("01/27/2022 12:10 PM"), "2022-01-27T12:10");
  EXPECT_EQ(normalise_date("01/27/2022 9:05 AM"), "2022-01-27T09:05");
  Span sp;
  const std::string text = "Arrival: 01/27/2022 1:45 PM  Nurse";
  ASSERT_TRUE(normalise_date(text, true, &sp));
  EXPECT_EQ(text.substr(sp.first, sp.second - sp.first), "01/27/2022 1:45 PM");
}

TEST(LabRow, PrintedLoincAndPriorResultColumn) {
  // "Test / LOINC  Result  Flag  Prior  Units  Reference": the code is kept, the prior value is not the
  // range.
  auto l = parse_lab_row("Potassium 2823-3  3.2  LOW  3.3  mmol/L  3.5-5.1", vocab());
  ASSERT_TRUE(l);
  EXPECT_EQ(l->lab.test, "Potassium");
  EXPECT_EQ(l->printed_loinc, "2823-3");
  EXPECT_EQ(l->lab.value, "3.2");
  EXPECT_EQ(l->lab.flag, "L");
  EXPECT_EQ(l->lab.unit, "mmol/L");
  EXPECT_EQ(l->lab.reference_range, "3.5-5.1");
  auto q = parse_lab_row("Urine Ketones 5797-6  Negative  Large  Negative", vocab());
  ASSERT_TRUE(q);
  EXPECT_EQ(q->lab.value, "Negative");
  EXPECT_EQ(q->lab.reference_range, "Negative");
  auto n = parse_lab_row("Sodium  140  mmol/L  136-145", vocab());
  ASSERT_TRUE(n);
  EXPECT_FALSE(n->printed_loinc);
}

TEST(PageRange, ParsesAndRejects) {
  auto r = parse_page_range("1-2,5,7-");
  EXPECT_TRUE(r.contains(1));
  EXPECT_TRUE(r.contains(2));
  EXPECT_FALSE(r.contains(3));
  EXPECT_TRUE(r.contains(5));
  EXPECT_TRUE(r.contains(9));
  EXPECT_TRUE(parse_page_range("").all());
  EXPECT_THROW(parse_page_range("0"), Error);
  EXPECT_THROW(parse_page_range("3-1"), Error);
  EXPECT_THROW(parse_page_range("a"), Error);
}

// Rows as OCR read them on the scanned dev documents.
TEST(LabRowParse, QualitativeResultOfTwoWords) {
  auto l = parse_lab_row("SARS-CoV-2 PCR  Not Detected  Not Detected", vocab());
  ASSERT_TRUE(l);
  EXPECT_EQ(l->lab.value, "Not Detected");
  EXPECT_EQ(l->lab.reference_range, "Not Detected");
  auto d = parse_lab_row("SARS-CoV-2 PCR  Detected  A  Not Detected", vocab());
  ASSERT_TRUE(d);
  EXPECT_EQ(d->lab.value, "Detected");
  EXPECT_EQ(d->lab.flag, "A");
  EXPECT_EQ(d->lab.reference_range, "Not Detected");
}

TEST(LabRowParse, ARangeAfterTheUnitIsNotTheResult) {
  // The result cell was lost: what follows the unit is the reference range.
  EXPECT_FALSE(parse_lab_row("eGFR  mL/min/1.73m2  >60", vocab()));
  EXPECT_FALSE(parse_lab_row("HDL Cholesterol  aa  mg/dL  >40", vocab()));
  auto l = parse_lab_row("HDL Cholesterol  45  mg/dl  >40", vocab());
  ASSERT_TRUE(l);
  EXPECT_EQ(l->lab.value, "45");
  EXPECT_EQ(l->lab.reference_range, ">40");
}

TEST(LabRowParse, AFlagBeforeTheNumberMeansTheResultWasLost) {
  // A complex panel whose shaded result column OCR lost: the number is the prior result.
  EXPECT_FALSE(parse_lab_row("Creatinine 2160-0  CRIT HIGH  4.10  mg/dL  0.74-1.35", vocab()));
  EXPECT_FALSE(parse_lab_row("Glucose 2345-7  LOW  96  mg/dL  70-99", vocab()));
  auto l = parse_lab_row("Glucose 2345-7  64  LOW  mg/dL  70-99", vocab());
  ASSERT_TRUE(l);
  EXPECT_EQ(l->lab.value, "64");
  EXPECT_EQ(l->lab.flag, "L");
}

TEST(LabRowParse, LetterOInANumberIsZero) {
  auto l = parse_lab_row("Total Bilirubin  0.4  mg/dl  O.1-1.2", vocab());
  ASSERT_TRUE(l);
  EXPECT_EQ(l->lab.reference_range, "0.1-1.2");
}

TEST(LabRowParse, UnitInParenthesesAfterTheName) {
  auto l = parse_lab_row("HCO3 (mmol/L)  20.1  22.0-26.0", vocab());
  ASSERT_TRUE(l);
  EXPECT_EQ(l->lab.test, "HCO3");
  EXPECT_EQ(l->lab.unit, "mmol/L");
  EXPECT_EQ(l->lab.value, "20.1");
  EXPECT_EQ(l->lab.reference_range, "22.0-26.0");
  // A qualifier that is not a unit stays part of the name.
  auto q = parse_lab_row("LDL Cholesterol (calc)  145  H*  mg/dL  <100", vocab());
  ASSERT_TRUE(q);
  EXPECT_EQ(q->lab.test, "LDL Cholesterol (calc)");
  EXPECT_EQ(q->lab.value, "145");
}

TEST(LabRowParse, ANumberWithATimeWordIsNotAResult) {
  EXPECT_FALSE(parse_lab_row("Troponin I, repeat in 3 hours", vocab()));
  auto l = parse_lab_row("Troponin I  0.03  ng/mL  <0.04", vocab());
  ASSERT_TRUE(l);
  EXPECT_EQ(l->lab.value, "0.03");
}

TEST(UnitSnap, MisreadLabAndVitalUnits) {
  EXPECT_EQ(snap_lab_unit("x10\xC2\xB0"
                          "3/ul",
                          "white blood cell count", vocab()),
            "x10^3/uL");
  EXPECT_EQ(snap_lab_unit("x10*\xC2\xB0"
                          "6/uL",
                          "red blood cell count", vocab()),
            "x10^6/uL");
  EXPECT_EQ(snap_lab_unit("mUmin/1.73m2", "egfr", vocab()), "mL/min/1.73m2");
  EXPECT_EQ(snap_lab_unit("mg/dl", "glucose", vocab()), "mg/dL");
  EXPECT_EQ(snap_vital_unit("bom", "hr", vocab()), "bpm");
  EXPECT_EQ(snap_vital_unit("mmiig", "map", vocab()), "mmHg");
  EXPECT_EQ(snap_vital_unit("\xC2\xB0"
                            "F",
                            "temp", vocab()),
            "\xC2\xB0"
            "F");
  EXPECT_EQ(snap_vital_unit("beats", "hr", vocab()), "beats");  // nothing close: kept as printed
}

TEST(Lexicon, NearestTermOnlyWhenCloseAndUnique) {
  const std::vector<std::string> makers = {"GlaxoSmithKline", "Merck", "Pfizer", "Pfizer-BioNTech"};
  EXPECT_EQ(nearest_term("GlaxoSmithKlin", makers), "GlaxoSmithKline");
  EXPECT_EQ(nearest_term("merck", makers), "Merck");
  EXPECT_EQ(nearest_term("Merek", makers), "Merck");
  EXPECT_FALSE(nearest_term("Mrk", makers));      // two edits on a short name
  EXPECT_FALSE(nearest_term("Novavax", makers));  // not in the vocabulary: kept, never replaced
  const std::vector<std::string> sites = {"L deltoid", "R deltoid", "L upper arm", "R upper arm"};
  EXPECT_EQ(nearest_term("R upperarm", sites), "R upper arm");
  EXPECT_FALSE(nearest_term("X deltoid", sites));  // as near to L as to R
}

}  // namespace
}  // namespace mv::extract
