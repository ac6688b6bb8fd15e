// The extraction schema: the embedded copy matches docs/schema.json, the validator enforces what the schema
// says with clear paths and without echoing values, and the C++ structs round-trip through JSON.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "core/error.hpp"
#include "core/file.hpp"
#include "extract/json_schema.hpp"
#include "extract/schema.hpp"

namespace {

using nlohmann::json;
using namespace mv;
using namespace mv::extract;

json valid_doc() {
  return json::parse(R"({
    "schema_version": "1.0",
    "document_type": "discharge_summary",
    "patient": {"name": "DOE, JANE", "birth_date": "1957-03-14", "mrn": "00482913", "sex": "female",
                "provenance": {"page": 1, "bbox": [10, 20, 300, 40], "source": "synth", "verified": true,
                               "fields": {"name": [10, 20, 120, 40], "mrn": [200, 20, 300, 40]}}},
    "encounter": {"admission_date": "2024-03-10", "discharge_date": "2024-03-14", "facility": "Fernhollow General Hospital"},
    "diagnoses": [{"text": "Pneumonia, unspecified organism", "icd10": "J18.9", "status": "active", "role": "principal"}],
    "medications": [
      {"name": "Metoprolol tartrate", "strength": "25 mg", "dose": "1", "unit": "tab", "route": "PO", "frequency": "BID"},
      {"name": "Acetaminophen", "strength": "500 mg", "prn": true, "status": "new", "refills": 0},
      {"name": "Ceftriaxone", "strength": "1 g", "route": "IV", "frequency": "q24h", "duration": "5 days"}
    ],
    "labs": [{"test": "Potassium", "value": "3.1", "unit": "mmol/L", "reference_range": "3.5-5.1", "flag": "L",
              "time": "2024-03-10T06:30", "loinc": "2823-3"}],
    "vitals": [{"name": "BP", "value": "128/76", "unit": "mmHg"}],
    "allergies": [{"substance": "Penicillin", "reaction": "Hives", "severity": "moderate"}],
    "procedures": [{"name": "Chest X-ray", "date": "2024-03-10", "findings": "RLL opacity", "impression": "Pneumonia"}],
    "immunizations": [{"vaccine": "Tdap", "date": "2020-05", "dose_number": 1, "lot": "AB123"}],
    "followups": [{"text": "Follow up with PCP", "when": "in 1 week"}],
    "pages": [{"number": 1, "width": 1275, "height": 1650, "dpi": 150}],
    "terms": ["Pneumonia, unspecified organism"],
    "values": ["25 mg"]
  })");
}

bool has_error(const std::vector<std::string>& errors, const std::string& text) {
  return std::any_of(errors.begin(), errors.end(), [&](const std::string& e) { return e == text; });
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& e : v) s += e + "\n";
  return s;
}

TEST(Schema, EmbeddedCopyMatchesDocs) {
  const std::string on_disk = read_file(std::string(MEDVISION_SOURCE_DIR) + "/docs/schema.json");
  EXPECT_EQ(std::string(schema_json_text()), on_disk);
  const json s = json::parse(on_disk);
  EXPECT_EQ(s.at("$schema"), "https://json-schema.org/draft/2020-12/schema");
  EXPECT_EQ(s.at("properties").at("schema_version").at("const"), kSchemaVersion);
}

TEST(Schema, DocumentTypesIncludeTheThirteen) {
  const auto& types = document_types();
  for (const char* t :
       {"patient_diagnosis", "radiology_report", "prescription", "lab_results", "discharge_summary",
        "medication_reconciliation", "icu_flowsheet", "cardiology_consultation", "complex_lab_panel",
        "surgical_operative_note", "ed_triage_note", "pathology_report", "vaccination_record"})
    EXPECT_NE(std::find(types.begin(), types.end(), t), types.end()) << t;
}

TEST(Schema, ValidDocumentPasses) {
  const auto errors = validate_extraction(valid_doc());
  EXPECT_TRUE(errors.empty()) << joined(errors);
}

TEST(Schema, ErrorsNamePathAndProblem) {
  json d = valid_doc();
  d["medications"][2]["route"] = 5;
  d.erase("document_type");
  d["labs"][0]["flag"] = "HIGH";
  d["diagnoses"][0]["icd10"] = "not a code";
  d["patient"]["provenance"]["bbox"] = json::array({1, 2, 3});
  d["patient"]["provenance"]["page"] = 0;
  d["vitals"][0]["colour"] = "red";
  d["immunizations"][0]["date"] = "05/2020";
  d["medications"][1]["refills"] = 1.5;
  const auto e = validate_extraction(d);
  EXPECT_TRUE(has_error(e, "medications[2].route: expected string, got integer")) << joined(e);
  EXPECT_TRUE(has_error(e, "(root): missing required property \"document_type\"")) << joined(e);
  EXPECT_TRUE(has_error(e, "labs[0].flag: not one of \"N\", \"H\", \"L\", \"HH\", \"LL\", \"A\""))
      << joined(e);
  EXPECT_TRUE(
      has_error(e, "diagnoses[0].icd10: does not match the pattern ^[A-Z][0-9][0-9A-Z](\\.[0-9A-Z]{1,4})?$"))
      << joined(e);
  EXPECT_TRUE(has_error(e, "patient.provenance.bbox: expected at least 4 items, got 3")) << joined(e);
  EXPECT_TRUE(has_error(e, "patient.provenance.page: must be >= 1")) << joined(e);
  EXPECT_TRUE(has_error(e, "vitals[0]: unexpected property \"colour\"")) << joined(e);
  EXPECT_TRUE(has_error(e, "medications[1].refills: expected integer, got number")) << joined(e);
  EXPECT_EQ(std::count_if(e.begin(), e.end(),
                          [](const std::string& s) { return s.rfind("immunizations[0].date", 0) == 0; }),
            1)
      << joined(e);
}

TEST(Schema, ErrorsNeverEchoValues) {
  json d = valid_doc();
  d["patient"]["name"] = 42;
  d["patient"]["mrn"] = "";
  d["labs"][0]["flag"] = "SECRET-FLAG-VALUE";
  d["diagnoses"][0]["icd10"] = "SECRET-CODE";
  const auto e = validate_extraction(d);
  ASSERT_GE(e.size(), 4u) << joined(e);
  for (const auto& msg : e) {
    EXPECT_EQ(msg.find("SECRET"), std::string::npos) << msg;
    EXPECT_EQ(msg.find("42"), std::string::npos) << msg;
  }
  EXPECT_TRUE(has_error(e, "patient.mrn: shorter than 1 characters")) << joined(e);
}

TEST(Schema, StringsCountCodePoints) {
  json d = valid_doc();
  d["vitals"][0]["unit"] = "°F";  // two bytes, one character: minLength 1 holds
  EXPECT_TRUE(validate_extraction(d).empty());
  d["vitals"][0]["unit"] = std::string(4001, 'x');
  EXPECT_TRUE(has_error(validate_extraction(d), "vitals[0].unit: longer than 4000 characters"));
}

TEST(Schema, RoundTripThroughStructs) {
  const json d = valid_doc();
  const Extraction e = extraction_from_json(d, "test");
  EXPECT_EQ(e.medications.size(), 3u);
  EXPECT_EQ(e.medications[1].prn, true);
  EXPECT_EQ(e.medications[1].refills, 0);
  EXPECT_EQ(e.labs[0].flag, "L");
  ASSERT_TRUE(e.patient && e.patient->provenance);
  EXPECT_EQ(e.patient->provenance->fields.at("mrn"), (BBox{200, 20, 300, 40}));
  const json back = to_json(e);
  EXPECT_TRUE(validate_extraction(back).empty()) << joined(validate_extraction(back));
  EXPECT_EQ(extraction_from_json(back, "again"), e);
  // Absent optionals stay absent; lists are always written.
  EXPECT_FALSE(back["medications"][0].contains("prn"));
  EXPECT_TRUE(back.contains("allergies"));
}

TEST(Schema, FromJsonRejectsInvalidNamingTheSource) {
  json d = valid_doc();
  d["schema_version"] = "2.0";
  try {
    extraction_from_json(d, "upload-17.json");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kInvalidInput);
    const std::string what = e.what();
    EXPECT_NE(what.find("upload-17.json"), std::string::npos) << what;
    EXPECT_NE(what.find("schema_version: must be \"1.0\""), std::string::npos) << what;
  }
}

TEST(Schema, StripProvenanceKeepsOnlyTheContent) {
  const json s = strip_provenance(valid_doc());
  EXPECT_FALSE(s.contains("pages"));
  EXPECT_FALSE(s.contains("terms"));
  EXPECT_FALSE(s.contains("values"));
  EXPECT_FALSE(s["patient"].contains("provenance"));
  EXPECT_EQ(s["labs"][0]["value"], "3.1");
  EXPECT_TRUE(validate_extraction(s).empty());
}

TEST(JsonSchemaValidator, RejectsUnsupportedKeywordsAndBadReferences) {
  EXPECT_THROW(JsonSchema(json::parse(R"({"oneOf": [{"type": "string"}]})"), "t"), Error);
  EXPECT_THROW(JsonSchema(json::parse(R"({"$ref": "#/$defs/missing"})"), "t"), Error);
  EXPECT_THROW(JsonSchema(json::parse(R"({"$ref": "other.json#/x"})"), "t"), Error);
  EXPECT_THROW(JsonSchema(json::parse(R"({"type": "strng"})"), "t"), Error);
  EXPECT_THROW(JsonSchema(json::parse(R"({"pattern": "("})"), "t"), Error);
  try {
    JsonSchema(json::parse(R"({"properties": {"a": {"anyOf": []}}})"), "my.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("my.json"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("/properties/a/anyOf"), std::string::npos) << e.what();
  }
}

TEST(JsonSchemaValidator, RecursiveReferencesAndBooleanSchemas) {
  const JsonSchema s(json::parse(R"({
    "$defs": {"node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/node"}, "v": {"type": "integer"}},
                       "additionalProperties": false}},
    "$ref": "#/$defs/node"})"),
                     "tree");
  EXPECT_TRUE(s.validate(json::parse(R"({"v": 1, "child": {"v": 2, "child": {}}})")).empty());
  const auto e = s.validate(json::parse(R"({"child": {"child": {"v": "x"}}})"));
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0], "child.child.v: expected integer, got string");
  const JsonSchema never(json(false), "never");
  EXPECT_EQ(never.validate(json(1)).size(), 1u);
  const JsonSchema any(json(true), "any");
  EXPECT_TRUE(any.validate(json::parse(R"([1, "a", null])")).empty());
}

TEST(JsonSchemaValidator, IntegerAcceptsIntegralFloatsAndLimitsErrors) {
  const JsonSchema s(json::parse(R"({"type": "array", "items": {"type": "integer", "minimum": 0}})"), "ints");
  EXPECT_TRUE(s.validate(json::parse("[1, 2.0, 3]")).empty());
  json many = json::array();
  for (int i = 0; i < 500; ++i) many.push_back(-1);
  EXPECT_EQ(s.validate(many, 10).size(), 10u);
}

}  // namespace
