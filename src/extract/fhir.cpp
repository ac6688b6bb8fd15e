#include "extract/fhir.hpp"

#include <cctype>
#include <charconv>
#include <regex>

#include "core/log.hpp"

namespace mv::extract {

namespace {

const Vocabulary* default_vocab() {
  static const std::unique_ptr<Vocabulary> v = []() -> std::unique_ptr<Vocabulary> {
    try {
      return std::make_unique<Vocabulary>(Vocabulary::load());
    } catch (const std::exception& e) {
      SPDLOG_WARN("fhir: vocabularies not loaded, LOINC codes of vitals left out: {}", e.what());
      return nullptr;
    }
  }();
  return v.get();
}

// Deterministic urn:uuid from the document id and a resource index (version-4 layout, FNV-1a bits).
std::string urn(const std::string& seed, int index) {
  std::uint64_t h1 = 1469598103934665603ull,
                h2 = 1099511628211ull ^ static_cast<std::uint64_t>(index) * 0x9E3779B97F4A7C15ull;
  for (char c : seed) {
    h1 = (h1 ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    h2 = (h2 ^ static_cast<unsigned char>(c)) * 0x100000001B3ull + 7;
  }
  h1 ^= static_cast<std::uint64_t>(index) * 0xBF58476D1CE4E5B9ull;
  return fmt::format("urn:uuid:{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}", static_cast<std::uint32_t>(h1 >> 32),
                     static_cast<std::uint32_t>(h1 >> 16) & 0xffff, static_cast<std::uint32_t>(h1) & 0xfff,
                     (static_cast<std::uint32_t>(h2 >> 48) & 0x3fff) | 0x8000, h2 & 0xffffffffffffull);
}

std::optional<double> number(const std::string& s) {
  double v = 0;
  const char* b = s.data();
  auto [p, ec] = std::from_chars(b, b + s.size(), v);
  if (ec != std::errc() || p != b + s.size()) return std::nullopt;
  return v;
}

// UCUM code of a printed unit, when it maps one to one.
std::optional<std::string> ucum(const std::string& u) {
  static const std::map<std::string, std::string> m = {{"mg/dL", "mg/dL"},
                                                       {"g/dL", "g/dL"},
                                                       {"mmol/L", "mmol/L"},
                                                       {"mEq/L", "meq/L"},
                                                       {"U/L", "U/L"},
                                                       {"%", "%"},
                                                       {"ng/mL", "ng/mL"},
                                                       {"pg/mL", "pg/mL"},
                                                       {"ug/dL", "ug/dL"},
                                                       {"fL", "fL"},
                                                       {"pg", "pg"},
                                                       {"mmHg", "mm[Hg]"},
                                                       {"bpm", "/min"},
                                                       {"/min", "/min"},
                                                       {"breaths/min", "/min"},
                                                       {"°F", "[degF]"},
                                                       {"°C", "Cel"},
                                                       {"F", "[degF]"},
                                                       {"C", "Cel"},
                                                       {"kg", "kg"},
                                                       {"lb", "[lb_av]"},
                                                       {"lbs", "[lb_av]"},
                                                       {"cm", "cm"},
                                                       {"in", "[in_i]"},
                                                       {"kg/m2", "kg/m2"},
                                                       {"x10^3/uL", "10*3/uL"},
                                                       {"x10^6/uL", "10*6/uL"},
                                                       {"mL/min/1.73m2", "mL/min/{1.73_m2}"},
                                                       {"sec", "s"},
                                                       {"mIU/L", "m[IU]/L"},
                                                       {"uIU/mL", "u[IU]/mL"},
                                                       {"ng/dL", "ng/dL"},
                                                       {"mg/L", "mg/L"},
                                                       {"IU/L", "[IU]/L"}};
  auto it = m.find(u);
  if (it == m.end()) return std::nullopt;
  return it->second;
}

nlohmann::json quantity(const std::string& value, const std::optional<std::string>& unit) {
  std::string v = value;
  std::string comparator;
  if (!v.empty() && (v[0] == '<' || v[0] == '>')) {
    comparator = v[0];
    v = v.substr(1);
    if (!v.empty() && v[0] == '=') comparator += '=', v = v.substr(1);
  }
  auto n = number(v);
  if (!n) return nullptr;
  nlohmann::json q = {{"value", *n}};
  if (!comparator.empty()) q["comparator"] = comparator;
  if (unit) {
    q["unit"] = *unit;
    if (auto c = ucum(*unit)) q["system"] = "http://unitsofmeasure.org", q["code"] = *c;
  }
  return q;
}

nlohmann::json reference_range(const std::string& text) {
  nlohmann::json r = {{"text", text}};
  static const std::regex two(R"(^\s*(-?\d+(?:\.\d+)?)\s*(?:-|–|to)\s*(-?\d+(?:\.\d+)?)\s*$)");
  static const std::regex lt(R"(^\s*<=?\s*(\d+(?:\.\d+)?)\s*$)");
  static const std::regex gt(R"(^\s*>=?\s*(\d+(?:\.\d+)?)\s*$)");
  std::smatch m;
  if (std::regex_match(text, m, two)) {
    r["low"] = {{"value", std::stod(m[1])}};
    r["high"] = {{"value", std::stod(m[2])}};
  } else if (std::regex_match(text, m, lt)) {
    r["high"] = {{"value", std::stod(m[1])}};
  } else if (std::regex_match(text, m, gt)) {
    r["low"] = {{"value", std::stod(m[1])}};
  }
  return r;
}

nlohmann::json interpretation(const std::string& flag) {
  static const std::map<std::string, std::string> display = {{"N", "Normal"},        {"H", "High"},
                                                             {"L", "Low"},           {"HH", "Critical high"},
                                                             {"LL", "Critical low"}, {"A", "Abnormal"}};
  auto it = display.find(flag);
  return {{"coding",
           {{{"system", "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"},
             {"code", flag},
             {"display", it == display.end() ? flag : it->second}}}}};
}

nlohmann::json category(const std::string& code, const std::string& system) {
  return {{{"coding", {{{"system", system}, {"code", code}}}}}};
}

std::string fhir_datetime(const std::string& d) {
  // Schema datetimes have no zone; FHIR dateTime with a time needs one, so a time is reported as a date.
  return d.substr(0, std::min<std::size_t>(d.size(), 10));
}

}  // namespace

nlohmann::json to_fhir_bundle(const Extraction& e, const Vocabulary* vocab) {
  if (!vocab) vocab = default_vocab();
  const std::string seed = e.document_id.value_or("document") + "|" + e.document_type;
  int index = 0;
  nlohmann::json entries = nlohmann::json::array();
  auto add = [&](nlohmann::json resource) {
    std::string url = urn(seed, index++);
    entries.push_back({{"fullUrl", url}, {"resource", std::move(resource)}});
    return url;
  };

  nlohmann::json patient = {{"resourceType", "Patient"}};
  if (e.patient) {
    const auto& p = *e.patient;
    if (p.mrn) patient["identifier"] = {{{"type", {{"text", "MRN"}}}, {"value", *p.mrn}}};
    if (p.name) {
      nlohmann::json name = {{"text", *p.name}};
      auto comma = p.name->find(',');
      if (comma != std::string::npos) {
        name["family"] = p.name->substr(0, comma);
      } else if (auto sp = p.name->rfind(' '); sp != std::string::npos) {
        name["family"] = p.name->substr(sp + 1);
      }
      patient["name"] = {name};
    }
    if (p.birth_date) patient["birthDate"] = *p.birth_date;
    if (p.sex) patient["gender"] = *p.sex;
  }
  const std::string subject_url = add(patient);
  const nlohmann::json subject = {{"reference", subject_url}};
  std::optional<std::string> effective;
  if (e.encounter) effective = e.encounter->date ? e.encounter->date : e.encounter->discharge_date;

  for (const auto& d : e.diagnoses) {
    nlohmann::json code = {{"text", d.text}};
    if (d.icd10)
      code["coding"] = {
          {{"system", "http://hl7.org/fhir/sid/icd-10-cm"}, {"code", *d.icd10}, {"display", d.text}}};
    std::string clinical = "active";
    if (d.status == "resolved") clinical = "resolved";
    if (d.status == "history") clinical = "inactive";
    std::string verification = d.status == "suspected"   ? "provisional"
                               : d.status == "ruled_out" ? "refuted"
                                                         : "confirmed";
    nlohmann::json c = {{"resourceType", "Condition"},
                        {"subject", subject},
                        {"code", code},
                        {"verificationStatus",
                         {{"coding",
                           {{{"system", "http://terminology.hl7.org/CodeSystem/condition-ver-status"},
                             {"code", verification}}}}}},
                        {"category", category(d.role ? "encounter-diagnosis" : "problem-list-item",
                                              "http://terminology.hl7.org/CodeSystem/condition-category")}};
    if (verification != "refuted")
      c["clinicalStatus"] = {
          {"coding",
           {{{"system", "http://terminology.hl7.org/CodeSystem/condition-clinical"}, {"code", clinical}}}}};
    add(c);
  }

  for (const auto& m : e.medications) {
    std::string status = "active";
    if (m.status == "discontinued") status = "stopped";
    if (m.status == "completed") status = "completed";
    if (m.status == "held") status = "on-hold";
    std::string text = m.name;
    for (const auto* part : {&m.strength, &m.dose, &m.unit, &m.route, &m.frequency})
      if (*part) text += " " + **part;
    if (m.prn && *m.prn) text += " PRN";
    if (m.duration) text += " for " + *m.duration;
    nlohmann::json dosage = {{"text", text}};
    if (m.route) dosage["route"] = {{"text", *m.route}};
    if (m.frequency) dosage["timing"] = {{"code", {{"text", *m.frequency}}}};
    if (m.prn) dosage["asNeededBoolean"] = *m.prn;
    if (m.dose) {
      auto q = quantity(*m.dose, m.unit);
      if (!q.is_null()) dosage["doseAndRate"] = {{{"doseQuantity", q}}};
    }
    nlohmann::json r = {
        {"resourceType", "MedicationStatement"},
        {"status", status},
        {"medicationCodeableConcept", {{"text", m.name + (m.strength ? " " + *m.strength : "")}}},
        {"subject", subject},
        {"dosage", {dosage}}};
    if (m.indication) r["reasonCode"] = {{{"text", *m.indication}}};
    add(r);
  }

  auto lab_loinc = [&](const Lab& l) -> std::optional<std::string> {
    if (l.loinc) return l.loinc;
    if (!vocab) return std::nullopt;
    auto it = vocab->lab_loinc.find(to_lower(l.test));
    if (it == vocab->lab_loinc.end()) return std::nullopt;
    return it->second;
  };
  for (const auto& l : e.labs) {
    nlohmann::json code = {{"text", l.test}};
    if (auto lo = lab_loinc(l))
      code["coding"] = {{{"system", "http://loinc.org"}, {"code", *lo}, {"display", l.test}}};
    nlohmann::json o = {
        {"resourceType", "Observation"},
        {"status", "final"},
        {"category", category("laboratory", "http://terminology.hl7.org/CodeSystem/observation-category")},
        {"code", code},
        {"subject", subject}};
    auto q = quantity(l.value, l.unit);
    if (!q.is_null())
      o["valueQuantity"] = q;
    else
      o["valueString"] = l.value;
    if (l.reference_range) o["referenceRange"] = {reference_range(*l.reference_range)};
    if (l.flag) o["interpretation"] = {interpretation(*l.flag)};
    if (l.time)
      o["effectiveDateTime"] = fhir_datetime(*l.time);
    else if (effective)
      o["effectiveDateTime"] = fhir_datetime(*effective);
    add(o);
  }

  for (const auto& v : e.vitals) {
    std::optional<std::string> loinc;
    if (vocab) {
      auto it = vocab->vital_loinc.find(to_lower(v.name));
      if (it != vocab->vital_loinc.end()) loinc = it->second;
    }
    nlohmann::json code = {{"text", v.name}};
    if (loinc) code["coding"] = {{{"system", "http://loinc.org"}, {"code", *loinc}, {"display", v.name}}};
    nlohmann::json o = {
        {"resourceType", "Observation"},
        {"status", "final"},
        {"category", category("vital-signs", "http://terminology.hl7.org/CodeSystem/observation-category")},
        {"code", code},
        {"subject", subject}};
    static const std::regex bp(R"(^(\d{2,3})/(\d{2,3})$)");
    std::smatch m;
    if (std::regex_match(v.value, m, bp)) {
      auto comp = [&](const char* lc, const char* display, const std::string& val) {
        return nlohmann::json{
            {"code", {{"coding", {{{"system", "http://loinc.org"}, {"code", lc}, {"display", display}}}}}},
            {"valueQuantity", quantity(val, v.unit.value_or("mmHg"))}};
      };
      o["component"] = {comp("8480-6", "Systolic blood pressure", m[1]),
                        comp("8462-4", "Diastolic blood pressure", m[2])};
    } else {
      auto q = quantity(v.value, v.unit);
      if (!q.is_null())
        o["valueQuantity"] = q;
      else
        o["valueString"] = v.value;
    }
    if (v.time)
      o["effectiveDateTime"] = fhir_datetime(*v.time);
    else if (effective)
      o["effectiveDateTime"] = fhir_datetime(*effective);
    add(o);
  }

  for (const auto& a : e.allergies) {
    nlohmann::json r = {{"resourceType", "AllergyIntolerance"},
                        {"patient", subject},
                        {"code", {{"text", a.substance}}},
                        {"clinicalStatus",
                         {{"coding",
                           {{{"system", "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"},
                             {"code", "active"}}}}}}};
    if (a.reaction) {
      nlohmann::json reaction = {{"manifestation", {{{"text", *a.reaction}}}}};
      if (a.severity && *a.severity != "unknown") reaction["severity"] = *a.severity;
      r["reaction"] = {reaction};
    }
    add(r);
  }
  if (e.no_known_allergies && *e.no_known_allergies && e.allergies.empty()) {
    add({{"resourceType", "AllergyIntolerance"},
         {"patient", subject},
         {"code",
          {{"coding",
            {{{"system", "http://snomed.info/sct"},
              {"code", "409137002"},
              {"display", "No known drug allergy"}}}},
           {"text", "No known allergies"}}}});
  }

  for (const auto& p : e.procedures) {
    nlohmann::json r = {{"resourceType", "Procedure"},
                        {"status", "completed"},
                        {"subject", subject},
                        {"code", {{"text", p.name}}}};
    if (p.date) r["performedDateTime"] = fhir_datetime(*p.date);
    nlohmann::json notes = nlohmann::json::array();
    if (p.findings) notes.push_back({{"text", "Findings: " + *p.findings}});
    if (p.impression) notes.push_back({{"text", "Impression: " + *p.impression}});
    if (!notes.empty()) r["note"] = notes;
    add(r);
  }

  return {{"resourceType", "Bundle"}, {"type", "collection"}, {"entry", entries}};
}

}  // namespace mv::extract
