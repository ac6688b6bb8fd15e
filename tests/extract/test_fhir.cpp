// FHIR R4 Bundle structure of an extraction, and the VLM answer repair and OCR verification.
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "extract/fhir.hpp"
#include "extract/vlm_extractor.hpp"

namespace mv::extract {
namespace {

Extraction sample() {
  Extraction e;
  e.document_id = "doc1";
  e.document_type = "discharge_summary";
  e.patient = Patient{"KING, PETER C", "1990-03-14", "37920506", "male", std::nullopt};
  e.encounter = Encounter{};
  e.encounter->date = "2024-09-25T20:00";
  e.diagnoses.push_back({"Unspecified atrial fibrillation", "I48.91", "active", std::nullopt, std::nullopt});
  Medication m;
  m.name = "Apixaban";
  m.strength = "5 mg";
  m.dose = "1";
  m.unit = "tab";
  m.route = "PO";
  m.frequency = "BID";
  m.status = "discontinued";
  e.medications.push_back(m);
  Lab l;
  l.test = "Potassium";
  l.value = "5.8";
  l.unit = "mmol/L";
  l.reference_range = "3.5-5.1";
  l.flag = "H";
  e.labs.push_back(l);
  e.vitals.push_back({"BP", "128/77", "mmHg", std::nullopt, std::nullopt});
  e.vitals.push_back({"Heart Rate", "85", "bpm", std::nullopt, std::nullopt});
  e.allergies.push_back({"Codeine", "Itching", "mild", std::nullopt});
  Procedure p;
  p.name = "Laparoscopic cholecystectomy";
  p.findings = "Inflamed gallbladder.";
  e.procedures.push_back(p);
  return e;
}

std::vector<nlohmann::json> of_type(const nlohmann::json& b, const std::string& type) {
  std::vector<nlohmann::json> out;
  for (const auto& en : b["entry"])
    if (en["resource"]["resourceType"] == type) out.push_back(en["resource"]);
  return out;
}

TEST(Fhir, BundleHasEveryResourceWithRequiredFields) {
  auto b = to_fhir_bundle(sample());
  EXPECT_EQ(b["resourceType"], "Bundle");
  EXPECT_EQ(b["type"], "collection");
  ASSERT_EQ(of_type(b, "Patient").size(), 1u);
  auto pat = of_type(b, "Patient")[0];
  EXPECT_EQ(pat["birthDate"], "1990-03-14");
  EXPECT_EQ(pat["gender"], "male");
  EXPECT_EQ(pat["identifier"][0]["value"], "37920506");
  std::string patient_url = b["entry"][0]["fullUrl"];
  EXPECT_EQ(patient_url.rfind("urn:uuid:", 0), 0u);

  auto cond = of_type(b, "Condition");
  ASSERT_EQ(cond.size(), 1u);
  EXPECT_EQ(cond[0]["subject"]["reference"], patient_url);
  EXPECT_EQ(cond[0]["code"]["coding"][0]["system"], "http://hl7.org/fhir/sid/icd-10-cm");
  EXPECT_EQ(cond[0]["code"]["coding"][0]["code"], "I48.91");
  EXPECT_EQ(cond[0]["clinicalStatus"]["coding"][0]["code"], "active");

  auto meds = of_type(b, "MedicationStatement");
  ASSERT_EQ(meds.size(), 1u);
  EXPECT_EQ(meds[0]["status"], "stopped");
  EXPECT_EQ(meds[0]["dosage"][0]["route"]["text"], "PO");
  EXPECT_EQ(meds[0]["dosage"][0]["doseAndRate"][0]["doseQuantity"]["value"], 1.0);

  auto obs = of_type(b, "Observation");
  ASSERT_EQ(obs.size(), 3u);
  const auto& k = obs[0];
  EXPECT_EQ(k["category"][0]["coding"][0]["code"], "laboratory");
  EXPECT_EQ(k["code"]["coding"][0]["system"], "http://loinc.org");
  EXPECT_EQ(k["code"]["coding"][0]["code"], "2823-3");  // potassium, from data/clinical/labs.json
  EXPECT_EQ(k["valueQuantity"]["value"], 5.8);
  EXPECT_EQ(k["valueQuantity"]["code"], "mmol/L");
  EXPECT_EQ(k["referenceRange"][0]["low"]["value"], 3.5);
  EXPECT_EQ(k["referenceRange"][0]["high"]["value"], 5.1);
  EXPECT_EQ(k["interpretation"][0]["coding"][0]["code"], "H");
  EXPECT_EQ(k["effectiveDateTime"], "2024-09-25");
  const auto& bp = obs[1];
  EXPECT_EQ(bp["category"][0]["coding"][0]["code"], "vital-signs");
  EXPECT_EQ(bp["code"]["coding"][0]["code"], "85354-9");
  ASSERT_EQ(bp["component"].size(), 2u);
  EXPECT_EQ(bp["component"][0]["code"]["coding"][0]["code"], "8480-6");
  EXPECT_EQ(bp["component"][0]["valueQuantity"]["value"], 128.0);
  EXPECT_EQ(bp["component"][1]["valueQuantity"]["value"], 77.0);
  EXPECT_EQ(obs[2]["valueQuantity"]["code"], "/min");

  auto al = of_type(b, "AllergyIntolerance");
  ASSERT_EQ(al.size(), 1u);
  EXPECT_EQ(al[0]["patient"]["reference"], patient_url);
  EXPECT_EQ(al[0]["reaction"][0]["severity"], "mild");
  auto pr = of_type(b, "Procedure");
  ASSERT_EQ(pr.size(), 1u);
  EXPECT_EQ(pr[0]["status"], "completed");
}

TEST(Fhir, CensoredValueHasComparatorAndQualitativeIsString) {
  Extraction e;
  Lab a;
  a.test = "Troponin I";
  a.value = "<0.01";
  a.unit = "ng/mL";
  Lab b;
  b.test = "Urine Protein";
  b.value = "Negative";
  e.labs = {a, b};
  auto j = to_fhir_bundle(e);
  auto obs = of_type(j, "Observation");
  ASSERT_EQ(obs.size(), 2u);
  EXPECT_EQ(obs[0]["valueQuantity"]["comparator"], "<");
  EXPECT_EQ(obs[0]["valueQuantity"]["value"], 0.01);
  EXPECT_EQ(obs[1]["valueString"], "Negative");
}

TEST(VlmJson, RepairsFencesAndTruncation) {
  auto j = repair_model_json(
      "Here you go:\n```json\n{\"document_type\": \"prescription\", \"medications\": []}\n```");
  EXPECT_EQ(j["document_type"], "prescription");
  // Cut in the middle of the second item: the complete first item survives.
  auto t = repair_model_json(
      R"({"document_type": "lab_results", "labs": [{"test": "Sodium", "value": "140"}, {"test": "Pot)");
  ASSERT_EQ(t["labs"].size(), 1u);
  EXPECT_EQ(t["labs"][0]["value"], "140");
  auto u = repair_model_json(
      R"({"document_type": "lab_results", "labs": [{"test": "Sodium", "value": "140"}], "vitals": [)");
  EXPECT_EQ(u["labs"].size(), 1u);
  EXPECT_THROW(repair_model_json("I cannot read this document."), Error);
}

TEST(VlmVerify, MarksValuesFoundInOcrText) {
  OcrPage page;
  OcrRow r1, r2;
  r1.text = "Potassium  5.8  H  mmol/L  3.5-5.1";
  r2.text = "Apixaban 5 mg - 1 tab PO BID";
  page.rows = {r1, r2};
  Extraction e;
  Lab good;
  good.test = "Potassium";
  good.value = "5.8";
  good.unit = "mmol/L";
  Lab bad;
  bad.test = "Sodium";
  bad.value = "140";
  Medication m;
  m.name = "Apixaban";
  m.strength = "50 mg";  // not what is printed
  e.labs = {good, bad};
  e.medications = {m};
  EXPECT_EQ(verify_against_ocr(e, {page}), 3);
  EXPECT_EQ(e.labs[0].provenance->verified, true);
  EXPECT_EQ(e.labs[1].provenance->verified, false);
  EXPECT_EQ(e.medications[0].provenance->verified, false);
}

}  // namespace
}  // namespace mv::extract
