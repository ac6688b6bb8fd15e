// The extraction schema: what one clinical document says, in one versioned shape used by every extractor,
// the scorer, the API and the FHIR export. docs/schema.json is the normative JSON Schema; it is embedded in
// the binary at build time and drives validate_extraction(). These structs mirror it one to one.
//
// Conventions: strings are kept as printed (units, abbreviations such as BID/PO, reference ranges); dates are
// ISO 8601 with the precision printed (YYYY, YYYY-MM, YYYY-MM-DD, optionally THH:MM[:SS]); a field that is
// not on the document is absent (std::nullopt), never an empty string. Patient fields are PHI.
#pragma once
#include <array>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "extract/json_schema.hpp"

namespace mv::extract {

inline constexpr const char* kSchemaVersion = "1.0";

// Every document type the project knows; "other" for anything else.
const std::vector<std::string>& document_types();

struct BBox {
  double x0 = 0, y0 = 0, x1 = 0, y1 = 0;  // page pixels, origin top-left
  bool operator==(const BBox&) const = default;
};

struct Provenance {
  int page = 1;  // 1-based
  std::optional<BBox> bbox;
  std::string source = "ocr";  // ocr | vlm | synth | manual
  std::optional<bool> verified;
  std::optional<double> confidence;    // 0..1
  std::map<std::string, BBox> fields;  // box of each field of the item, by property name
  bool operator==(const Provenance&) const = default;
};

struct Patient {
  std::optional<std::string> name, birth_date, mrn, sex;  // sex: female | male | other | unknown
  std::optional<Provenance> provenance;
  bool operator==(const Patient&) const = default;
};

struct Encounter {
  std::optional<std::string> date, admission_date, discharge_date, facility, department, provider;
  std::optional<Provenance> provenance;
  bool operator==(const Encounter&) const = default;
};

struct Diagnosis {
  std::string text;
  std::optional<std::string> icd10, status, role;
  std::optional<Provenance> provenance;
  bool operator==(const Diagnosis&) const = default;
};

struct Medication {
  std::string name;
  std::optional<std::string> strength, dose, unit, form, route, frequency;
  std::optional<bool> prn;
  std::optional<std::string> duration, indication, status, quantity;
  std::optional<int> refills;
  std::optional<Provenance> provenance;
  bool operator==(const Medication&) const = default;
};

struct Lab {
  std::string test, value;
  std::optional<std::string> unit, reference_range, flag, time, loinc, panel;
  std::optional<Provenance> provenance;
  bool operator==(const Lab&) const = default;
};

struct Vital {
  std::string name, value;
  std::optional<std::string> unit, time;
  std::optional<Provenance> provenance;
  bool operator==(const Vital&) const = default;
};

struct Allergy {
  std::string substance;
  std::optional<std::string> reaction, severity;
  std::optional<Provenance> provenance;
  bool operator==(const Allergy&) const = default;
};

struct Procedure {
  std::string name;
  std::optional<std::string> date, findings, impression;
  std::optional<Provenance> provenance;
  bool operator==(const Procedure&) const = default;
};

struct Immunization {
  std::string vaccine;
  std::optional<std::string> date;
  std::optional<int> dose_number;
  std::optional<std::string> manufacturer, lot, route, site;
  std::optional<Provenance> provenance;
  bool operator==(const Immunization&) const = default;
};

struct Followup {
  std::string text;
  std::optional<std::string> when;
  std::optional<Provenance> provenance;
  bool operator==(const Followup&) const = default;
};

struct PageInfo {
  int number = 1, width = 0, height = 0;
  std::optional<double> dpi;
  bool operator==(const PageInfo&) const = default;
};

struct Extraction {
  std::string schema_version = kSchemaVersion;
  std::optional<std::string> document_id;
  std::string document_type = "other";
  std::optional<Patient> patient;
  std::optional<Encounter> encounter;
  std::vector<Diagnosis> diagnoses;
  std::vector<Medication> medications;
  std::vector<Lab> labs;
  std::vector<Vital> vitals;
  std::vector<Allergy> allergies;
  std::optional<bool> no_known_allergies;
  std::vector<Procedure> procedures;
  std::vector<Immunization> immunizations;
  std::vector<Followup> followups;
  std::vector<PageInfo> pages;
  std::vector<std::string> terms, values;  // ground truth only
  bool operator==(const Extraction&) const = default;
};

// JSON in the schema's shape: absent optionals are omitted; the item lists are always present.
nlohmann::json to_json(const Extraction& e);
// Validates against the schema first; throws mv::Error(kInvalidInput) naming `source` and the first problems.
Extraction extraction_from_json(const nlohmann::json& j, std::string_view source);

// The same JSON without provenance and pages: what a model is asked to produce (training targets).
nlohmann::json strip_provenance(const nlohmann::json& j);

// The embedded docs/schema.json, as text and as a compiled validator.
std::string_view schema_json_text();
const JsonSchema& extraction_schema();

// All violations of the schema (empty when valid); paths like "medications[2].route".
std::vector<std::string> validate_extraction(const nlohmann::json& j, std::size_t max_errors = 50);
// Throws mv::Error(kInvalidInput) "<source>: does not follow the extraction schema: <first errors>".
void check_extraction(const nlohmann::json& j, std::string_view source);

}  // namespace mv::extract
