// Curated clinical tables (data/clinical/*.json): drugs, sig vocabulary, lab tests with reference ranges and
// critical limits, vitals, diagnoses with ICD-10-CM codes, procedures, allergies, vaccines, fake people and
// follow-ups. They are data, not code: edit the JSON files; the loader checks their shape and names the file
// and entry of any problem.
//
// Lab flag rules (used by the generator and checked by the tests): for a printed value v and a printed range
//   "lo-hi": L when v < lo, H when v > hi;   "<hi": H when v >= hi;   ">lo": L when v <= lo;
// an abnormal value is critical (LL/HH) when v < crit_low or v > crit_high. Qualitative tests are A when
// the result is not the normal one.
#pragma once
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace mv::synth {

// data/ of the source tree (compile definition MEDVISION_DATA_DIR), or $MEDVISION_DATA when set.
std::filesystem::path data_dir();

struct DrugInfo {
  std::string name, brand, drug_class, form;
  std::vector<std::string> strengths;
  std::vector<std::string> doses;  // empty: the dose is the strength's amount
  std::string dose_unit;
  std::vector<std::string> routes, frequencies;  // codes of sig.json
  std::vector<std::string> indications, tags, durations;
  double prn = 0;       // probability that an order is PRN
  std::string setting;  // "inpatient" for hospital-only drugs
};

struct InfusionInfo {
  std::string name, drug_class, strength, dose_unit;
  std::vector<std::string> doses, indications, tags;
};

struct SigWord {
  std::string abbr, long_form;
  double per_day = 0;  // administrations per day (frequencies; 0 when not regular)
};

struct RangeSpec {
  std::optional<double> low, high;
};

struct LabTest {
  std::string id, name, long_name, loinc, unit;
  int decimals = 0;
  RangeSpec range;
  std::optional<RangeSpec> female, male;
  std::optional<double> crit_low, crit_high;
  double gen_min = 0, gen_max = 0;
  std::optional<double> cap_above, floor_below;  // printed as ">cap" / "<floor"
  std::string sex;                               // only for this sex, when set
  bool qualitative = false;
  std::string normal_result;
  std::vector<std::string> abnormal_results;

  const RangeSpec& range_for(const std::string& sex) const;
};

struct LabPanel {
  std::string id, name;
  std::vector<std::string> tests;  // ids
};

struct VitalInfo {
  std::string id, name, abbr, loinc;
  std::vector<std::string> units;
  int decimals = 0;
  double normal_lo = 0, normal_hi = 0, gen_lo = 0, gen_hi = 0;
  double sys_normal_lo = 0, sys_normal_hi = 0, sys_gen_lo = 0, sys_gen_hi = 0;  // blood pressure
  double dia_normal_lo = 0, dia_normal_hi = 0, dia_gen_lo = 0, dia_gen_hi = 0;
  bool derived = false;
};

struct DiagnosisInfo {
  std::string text, short_text, icd10, kind, sex;
  std::vector<std::string> tags, settings, lab_panels;
};

struct FindingVariant {
  std::string findings, impression, icd10, dx;
};

struct StudyInfo {  // radiology and cardiology studies
  std::string name, modality, technique;
  std::vector<std::string> tags;
  std::vector<std::string> indications;  // free-text reasons for the study
  std::vector<FindingVariant> variants;
};

struct SurgeryInfo {
  std::string name, anesthesia, specimen, drains, steps;
  int ebl_lo = 0, ebl_hi = 0;
  std::vector<std::string> findings, tags;
};

struct PathologyInfo {
  std::string procedure, specimen, gross, sex;
  std::vector<std::string> tags;
  std::vector<FindingVariant> variants;  // findings = microscopic, impression = final diagnosis
};

struct AllergyInfo {
  std::string substance, type;
  std::vector<std::string> reactions;
};

struct VaccineInfo {
  std::string name, short_name, cvx;
  std::vector<std::string> manufacturers, routes, sites;
  int doses = 1;
  bool annual = false;
};

struct Town {
  std::string city, state;
};

struct Facility {
  std::string name, short_name;
};

struct FollowupInfo {
  std::string text;
  std::vector<std::string> when, tags;
};

struct ClinicalTables {
  std::vector<DrugInfo> drugs;
  std::vector<InfusionInfo> infusions;
  std::map<std::string, SigWord> routes;
  std::map<std::string, SigWord> frequencies;
  SigWord prn_words;
  std::map<std::string, std::string> dose_unit_plural, dose_unit_abbr;
  std::vector<LabTest> labs;
  std::vector<LabPanel> panels;
  std::vector<VitalInfo> vitals;
  std::vector<DiagnosisInfo> diagnoses;
  std::vector<StudyInfo> radiology, cardiology;
  std::vector<SurgeryInfo> surgery;
  std::vector<PathologyInfo> pathology;
  std::vector<AllergyInfo> allergies;
  std::map<std::string, std::string> severity_by_reaction;
  std::vector<VaccineInfo> vaccines;
  std::vector<std::string> first_female, first_male, last_names, middle_initials, streets;
  std::vector<Town> towns;
  std::vector<Facility> facilities;
  std::vector<std::string> credentials, nurse_credentials, pharmacist_credentials;
  std::vector<FollowupInfo> followups, orders;

  // Loads every table of `dir` (data/clinical); throws mv::Error naming the file and entry on a problem.
  static ClinicalTables load(const std::filesystem::path& dir);

  const LabTest& lab(const std::string& id) const;  // throws kNotFound
  const LabTest* find_lab_by_name(const std::string& name) const;
  const LabPanel& panel(const std::string& id) const;
  const VitalInfo& vital(const std::string& id) const;
};

// Flag of a numeric lab value (already rounded to the printed decimals) following the rules above:
// "N", "H", "L", "HH" or "LL".
std::string lab_flag(const LabTest& test, const RangeSpec& range, double value);

// Formats a number with fixed decimals ("7.0", "140", "1.015").
std::string format_fixed(double value, int decimals);

// Printed reference range: "3.5-5.1", "<200", ">40", "-2.0 to 2.0".
std::string range_text(const RangeSpec& range, int decimals);

}  // namespace mv::synth
