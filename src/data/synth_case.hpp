// Clinical content for synthetic documents, drawn from the curated tables: fake people, dates, diagnoses,
// medication orders with sigs, lab results whose flags follow from value and range, vital signs, allergies,
// follow-ups. No layout here; synth_documents.cpp decides what gets printed and how.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "data/clinical_tables.hpp"
#include "data/rng.hpp"

namespace mv::synth {

struct Date {
  int y = 2024, m = 1, d = 1;
  int hh = -1, mm = 0;  // hh < 0: no time of day
};

Date add_days(const Date& date, int days);
Date with_time(const Date& date, int hh, int mm);
Date add_minutes(const Date& date, int minutes);  // keeps the time set
int days_between(const Date& a, const Date& b);   // b - a
std::string iso_date(const Date& date);           // YYYY-MM-DD
std::string iso_datetime(const Date& date);       // YYYY-MM-DD[THH:MM]
// Printed date styles: 0 MM/DD/YYYY, 1 YYYY-MM-DD, 2 DD-Mon-YYYY, 3 Mon DD, YYYY, 4 M/D/YY.
std::string format_date(const Date& date, int style);
// Printed time styles: 0 24-hour HH:MM, 1 12-hour h:mm AM.
std::string format_time(const Date& date, int style);
int age_on(const Date& birth, const Date& on);

struct Person {
  std::string first, middle, last;
  std::string sex;  // female | male
  Date birth;
  std::string mrn, street, city, state, zip, phone;
  std::string full() const;        // First M. Last
  std::string last_first() const;  // LAST, FIRST M
};

struct Provider {
  std::string first, middle, last, credential;
  std::string full() const;        // First M. Last, MD
  std::string short_name() const;  // Dr. Last (or First Last, NP)
};

struct MedOrder {
  const DrugInfo* drug = nullptr;
  std::string strength, dose, dose_unit, route, frequency, duration, indication;  // codes for route/frequency
  bool prn = false;
};

struct LabResult {
  const LabTest* test = nullptr;
  RangeSpec range;
  std::string value, flag, range_text;  // flag: N, H, L, HH, LL, A
};

struct VitalReading {
  const VitalInfo* info = nullptr;
  std::string value, unit;
};

struct AllergyEntry {
  std::string substance, reaction, severity;
};

class CaseGen {
 public:
  CaseGen(const ClinicalTables& tables, Rng& rng) : t_(tables), rng_(rng) {}

  Person person(const Date& today, int min_age = 18, int max_age = 94);
  Provider provider();   // any prescriber: MD, DO, NP or PA-C
  Provider physician();  // MD or DO (surgeons, radiologists, pathologists, attendings)
  Provider nurse();
  Provider pharmacist();
  const Facility& facility() { return rng_.pick(t_.facilities); }
  Date encounter_date();  // 2019..2025 with a time of day

  // n distinct diagnoses typical of `setting` (any when empty), of `kind` (any when empty), fit for `sex`.
  std::vector<const DiagnosisInfo*> diagnoses(const std::string& setting, const std::string& kind,
                                              std::size_t n, const std::string& sex);
  const DiagnosisInfo* diagnosis_by_tag(const std::string& tag, const std::string& sex);
  MedOrder med(const DrugInfo& drug);
  // Orders for the tags of `dx` first, then common chronic drugs; outpatient drugs only unless inpatient.
  std::vector<MedOrder> meds_for(const std::vector<const DiagnosisInfo*>& dx, std::size_t n, bool inpatient);
  LabResult lab(const LabTest& test, const std::string& sex, double abnormal_p);
  std::vector<LabResult> panel(const std::string& panel_id, const std::string& sex, double abnormal_p);
  // A later result of the same test near the earlier one (a trend on a flowsheet).
  LabResult lab_trend(const LabResult& earlier, const std::string& sex);
  VitalReading vital(const std::string& id, double sickness, bool us_units);
  std::vector<VitalReading> vital_set(double sickness, bool us_units, bool with_body = false);
  std::vector<AllergyEntry> allergies(std::size_t n);
  std::vector<const FollowupInfo*> followups(const std::vector<const DiagnosisInfo*>& dx, std::size_t n,
                                             bool orders = false);
  // Replaces {lo-hi} placeholders with random numbers (decimals as written in lo). With a memo, the same
  // placeholder gets the same number everywhere (findings and impression agree).
  std::string fill(const std::string& text, std::map<std::string, std::string>* memo = nullptr);
  std::string lot_number();
  std::string phone();

  Rng& rng() { return rng_; }
  const ClinicalTables& tables() const { return t_; }

 private:
  // Rounds v to the test's decimals and sets the printed value (with "<"/">" past the reporting limits) and
  // flag.
  LabResult printed(LabResult r, double v) const;
  const ClinicalTables& t_;
  Rng& rng_;
};

// Dose amount and unit when the dose is the strength's amount: "40 mg/0.4 mL" -> {"40", "mg"}.
std::pair<std::string, std::string> dose_from_strength(const std::string& strength);

}  // namespace mv::synth
