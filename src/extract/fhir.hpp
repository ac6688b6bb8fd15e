// FHIR R4 export of an Extraction: a Bundle of type "collection" with Patient, Condition (ICD-10-CM when
// printed), MedicationStatement (with Dosage text, route, asNeeded), Observation for labs (category
// laboratory, LOINC when known, valueQuantity or valueString, referenceRange, interpretation) and vitals
// (category vital-signs, LOINC, blood pressure as a panel with systolic/diastolic components),
// AllergyIntolerance and Procedure. Resources refer to the Patient by its fullUrl (urn:uuid).
#pragma once
#include <nlohmann/json.hpp>

#include "extract/clinical_text.hpp"
#include "extract/schema.hpp"

namespace mv::extract {

// `vocab` supplies LOINC codes for tests and vitals that carry none; nullptr = the project's data files
// (loaded once; codes are left out when they cannot be loaded).
nlohmann::json to_fhir_bundle(const Extraction& e, const Vocabulary* vocab = nullptr);

}  // namespace mv::extract
