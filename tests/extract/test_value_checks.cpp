// Value consistency checks of the OCR extractor (src/extract/value_checks.*), on values read from the
// scanned dev documents: malformed numbers, reversed reference ranges, vitals outside the possible bounds,
// names that cannot be names, malformed identifiers.
#include <gtest/gtest.h>

#include "extract/clinical_text.hpp"
#include "extract/value_checks.hpp"

namespace mv::extract {
namespace {

const Vocabulary& vocab() {
  static const Vocabulary v = Vocabulary::load();
  return v;
}

Vital vital(std::string name, std::string value, std::optional<std::string> unit) {
  Vital x;
  x.name = std::move(name);
  x.value = std::move(value);
  x.unit = std::move(unit);
  return x;
}

TEST(ValueChecks, LeadingZeroIsNotAPrintedNumber) {
  EXPECT_TRUE(malformed_number("04"));     // "0.4" with its point lost and a speck read as 0
  EXPECT_TRUE(malformed_number("06.6"));   // lactic acid 0.6
  EXPECT_TRUE(malformed_number("051.9"));  // vitamin B12
  EXPECT_TRUE(malformed_number("<09"));
  EXPECT_FALSE(malformed_number("0.6"));
  EXPECT_FALSE(malformed_number("0"));
  EXPECT_FALSE(malformed_number("10"));
  EXPECT_FALSE(malformed_number("<0.01"));
  EXPECT_FALSE(malformed_number("Not Detected"));
}

TEST(ValueChecks, ReversedRange) {
  EXPECT_TRUE(reversed_range("6.5-2.2"));  // "0.5-2.2" misread
  EXPECT_TRUE(reversed_range("768-99"));   // "70-99" misread
  EXPECT_FALSE(reversed_range("0.5-2.2"));
  EXPECT_FALSE(reversed_range("86-166"));  // wrong ("80-100") but not detectable here
  EXPECT_FALSE(reversed_range("-2.0 to 2.0"));
  EXPECT_FALSE(reversed_range("<200"));
  EXPECT_FALSE(reversed_range("Negative"));
}

TEST(ValueChecks, VitalsOutsidePossibleBounds) {
  const auto& v = vocab();
  EXPECT_TRUE(vital_impossible(vital("Temp", "161.0", "°F"), v));  // 101.0 with 0 read as 6
  EXPECT_TRUE(vital_impossible(vital("Temp", "1601.4", "°F"), v));
  EXPECT_FALSE(vital_impossible(vital("Temp", "101.4", "°F"), v));
  EXPECT_FALSE(vital_impossible(vital("Temperature", "38.5", "°C"), v));
  EXPECT_TRUE(vital_impossible(vital("Temp", "98.6", "°C"), v));           // the unit says Celsius
  EXPECT_FALSE(vital_impossible(vital("Temp", "98.6", std::nullopt), v));  // some unit fits
  EXPECT_TRUE(vital_impossible(vital("Temp", "161.0", std::nullopt), v));  // none fits
  EXPECT_TRUE(vital_impossible(vital("BP", "80/120", "mmHg"), v));         // diastolic above systolic
  EXPECT_FALSE(vital_impossible(vital("BP", "151/74", "mmHg"), v));
  EXPECT_TRUE(vital_impossible(vital("SpO2", "196", "%"), v));
  EXPECT_FALSE(vital_impossible(vital("SpO2", "96", "%"), v));
  EXPECT_TRUE(vital_impossible(vital("Pain", "15", "/10"), v));
  // Nothing is known of heart-rate bounds: a misread "162" for 102 is not caught here.
  EXPECT_FALSE(vital_impossible(vital("HR", "162", "bpm"), v));
}

// Names and MRNs as the OCR read them from the dev scans (seeds 7000 and 8000), with the printed ones.
TEST(ValueChecks, ImplausibleNames) {
  EXPECT_TRUE(implausible_name("Chery! A. Patel"));             // Cheryl A. Patel
  EXPECT_TRUE(implausible_name("Samuel! R. Chavez, BSN, RN"));  // Samuel R. Chavez, BSN, RN
  EXPECT_TRUE(implausible_name("Maria L.. Brooks, MD"));        // Maria L. Brooks, MD
  EXPECT_TRUE(implausible_name("Michael L"));                   // Michael L. Campbell
  EXPECT_TRUE(implausible_name("George M "));                   // George M. Perez, MD
  EXPECT_TRUE(implausible_name("THOMPSON, GREGORY _ Date of Birth: Aug 7, 1963"));
  EXPECT_FALSE(implausible_name("TURNER, TERESA H"));  // LAST, FIRST M ends in an initial
  EXPECT_FALSE(implausible_name("Cheryl A. Patel"));
  EXPECT_FALSE(implausible_name("Samuel R. Chavez, BSN, RN"));
  EXPECT_FALSE(implausible_name("Mary O'Neil-Brooks, PA-C"));
  EXPECT_FALSE(implausible_name("Zoë Müller"));
  EXPECT_FALSE(implausible_name("Angela King"));
}

TEST(ValueChecks, MalformedIdentifiers) {
  EXPECT_TRUE(malformed_identifier("!244700"));  // I244700
  EXPECT_TRUE(malformed_identifier("|356214"));  // I356214
  EXPECT_FALSE(malformed_identifier("I244700"));
  EXPECT_FALSE(malformed_identifier("67984950"));
  EXPECT_FALSE(malformed_identifier("MRN-0042"));
}

TEST(ValueChecks, AppliedToAnExtraction) {
  Extraction e;
  Lab lactate;
  lactate.test = "Lactic Acid";
  lactate.value = "06.6";
  lactate.reference_range = "0.5-2.2";
  Lab glucose;
  glucose.test = "Glucose";
  glucose.value = "93";
  glucose.reference_range = "768-99";
  glucose.flag = "L";  // derived (no flag box), so it goes with the range
  glucose.provenance = Provenance{};
  glucose.provenance->fields["reference_range"] = BBox{1, 2, 3, 4};
  Lab potassium;
  potassium.test = "Potassium";
  potassium.value = "6.0";
  potassium.reference_range = "5.1-3.5";
  potassium.flag = "H";  // printed (it has a box): kept
  potassium.provenance = Provenance{};
  potassium.provenance->fields["flag"] = BBox{1, 2, 3, 4};
  e.labs = {lactate, glucose, potassium};
  e.vitals = {vital("Temp", "161.0", "°F"), vital("Temp", "101.4", "°F")};
  e.patient = Patient{};
  e.patient->name = "Chery! A. Patel";
  e.patient->mrn = "|879369";
  e.patient->sex = "female";
  e.patient->provenance = Provenance{};
  e.patient->provenance->fields["name"] = BBox{1, 2, 3, 4};
  e.patient->provenance->fields["mrn"] = BBox{5, 6, 7, 8};
  e.encounter = Encounter{};
  e.encounter->provider = "Samuel R. Chavez, BSN, RN";
  check_values(e, vocab());
  EXPECT_FALSE(e.patient->name);
  EXPECT_FALSE(e.patient->mrn);
  EXPECT_EQ(e.patient->sex, "female");
  EXPECT_TRUE(e.patient->provenance->fields.empty());
  EXPECT_EQ(e.encounter->provider, "Samuel R. Chavez, BSN, RN");
  ASSERT_EQ(e.labs.size(), 2u);
  EXPECT_EQ(e.labs[0].test, "Glucose");
  EXPECT_EQ(e.labs[0].value, "93");
  EXPECT_FALSE(e.labs[0].reference_range);
  EXPECT_FALSE(e.labs[0].flag);
  EXPECT_FALSE(e.labs[0].provenance->fields.contains("reference_range"));
  EXPECT_FALSE(e.labs[1].reference_range);
  EXPECT_EQ(e.labs[1].flag, "H");
  ASSERT_EQ(e.vitals.size(), 1u);
  EXPECT_EQ(e.vitals[0].value, "101.4");
}

}  // namespace
}  // namespace mv::extract
