#include "extract/schema.hpp"

#include "core/error.hpp"

namespace mv::extract {

// Defined in the file CMake generates from docs/schema.json (src/extract/schema_json.cpp.in).
extern const char kSchemaJson[];

namespace {

using nlohmann::json;

template <typename T>
void put(json& j, const char* key, const std::optional<T>& v) {
  if (v) j[key] = *v;
}

template <typename T>
void get(const json& j, const char* key, std::optional<T>& out) {
  if (auto it = j.find(key); it != j.end()) out = it->template get<T>();
}

json bbox_json(const BBox& b) { return json::array({b.x0, b.y0, b.x1, b.y1}); }

BBox bbox_from(const json& j) {
  return {j.at(0).get<double>(), j.at(1).get<double>(), j.at(2).get<double>(), j.at(3).get<double>()};
}

json provenance_json(const Provenance& p) {
  json j = json::object();
  j["page"] = p.page;
  if (p.bbox) j["bbox"] = bbox_json(*p.bbox);
  j["source"] = p.source;
  put(j, "verified", p.verified);
  put(j, "confidence", p.confidence);
  if (!p.fields.empty()) {
    json f = json::object();
    for (const auto& [name, box] : p.fields) f[name] = bbox_json(box);
    j["fields"] = std::move(f);
  }
  return j;
}

Provenance provenance_from(const json& j) {
  Provenance p;
  p.page = j.at("page").get<int>();
  if (auto it = j.find("bbox"); it != j.end()) p.bbox = bbox_from(*it);
  p.source = j.at("source").get<std::string>();
  get(j, "verified", p.verified);
  get(j, "confidence", p.confidence);
  if (auto it = j.find("fields"); it != j.end())
    for (const auto& [name, box] : it->items()) p.fields[name] = bbox_from(box);
  return p;
}

void put_provenance(json& j, const std::optional<Provenance>& p) {
  if (p) j["provenance"] = provenance_json(*p);
}

void get_provenance(const json& j, std::optional<Provenance>& p) {
  if (auto it = j.find("provenance"); it != j.end()) p = provenance_from(*it);
}

// One (to, from) pair per item type.
json item_json(const Diagnosis& d) {
  json j = {{"text", d.text}};
  put(j, "icd10", d.icd10);
  put(j, "status", d.status);
  put(j, "role", d.role);
  put_provenance(j, d.provenance);
  return j;
}
void item_from(const json& j, Diagnosis& d) {
  d.text = j.at("text").get<std::string>();
  get(j, "icd10", d.icd10);
  get(j, "status", d.status);
  get(j, "role", d.role);
  get_provenance(j, d.provenance);
}

json item_json(const Medication& m) {
  json j = {{"name", m.name}};
  put(j, "strength", m.strength);
  put(j, "dose", m.dose);
  put(j, "unit", m.unit);
  put(j, "form", m.form);
  put(j, "route", m.route);
  put(j, "frequency", m.frequency);
  put(j, "prn", m.prn);
  put(j, "duration", m.duration);
  put(j, "indication", m.indication);
  put(j, "status", m.status);
  put(j, "quantity", m.quantity);
  put(j, "refills", m.refills);
  put_provenance(j, m.provenance);
  return j;
}
void item_from(const json& j, Medication& m) {
  m.name = j.at("name").get<std::string>();
  get(j, "strength", m.strength);
  get(j, "dose", m.dose);
  get(j, "unit", m.unit);
  get(j, "form", m.form);
  get(j, "route", m.route);
  get(j, "frequency", m.frequency);
  get(j, "prn", m.prn);
  get(j, "duration", m.duration);
  get(j, "indication", m.indication);
  get(j, "status", m.status);
  get(j, "quantity", m.quantity);
  get(j, "refills", m.refills);
  get_provenance(j, m.provenance);
}

json item_json(const Lab& l) {
  json j = {{"test", l.test}, {"value", l.value}};
  put(j, "unit", l.unit);
  put(j, "reference_range", l.reference_range);
  put(j, "flag", l.flag);
  put(j, "time", l.time);
  put(j, "loinc", l.loinc);
  put(j, "panel", l.panel);
  put_provenance(j, l.provenance);
  return j;
}
void item_from(const json& j, Lab& l) {
  l.test = j.at("test").get<std::string>();
  l.value = j.at("value").get<std::string>();
  get(j, "unit", l.unit);
  get(j, "reference_range", l.reference_range);
  get(j, "flag", l.flag);
  get(j, "time", l.time);
  get(j, "loinc", l.loinc);
  get(j, "panel", l.panel);
  get_provenance(j, l.provenance);
}

json item_json(const Vital& v) {
  json j = {{"name", v.name}, {"value", v.value}};
  put(j, "unit", v.unit);
  put(j, "time", v.time);
  put_provenance(j, v.provenance);
  return j;
}
void item_from(const json& j, Vital& v) {
  v.name = j.at("name").get<std::string>();
  v.value = j.at("value").get<std::string>();
  get(j, "unit", v.unit);
  get(j, "time", v.time);
  get_provenance(j, v.provenance);
}

json item_json(const Allergy& a) {
  json j = {{"substance", a.substance}};
  put(j, "reaction", a.reaction);
  put(j, "severity", a.severity);
  put_provenance(j, a.provenance);
  return j;
}
void item_from(const json& j, Allergy& a) {
  a.substance = j.at("substance").get<std::string>();
  get(j, "reaction", a.reaction);
  get(j, "severity", a.severity);
  get_provenance(j, a.provenance);
}

json item_json(const Procedure& p) {
  json j = {{"name", p.name}};
  put(j, "date", p.date);
  put(j, "findings", p.findings);
  put(j, "impression", p.impression);
  put_provenance(j, p.provenance);
  return j;
}
void item_from(const json& j, Procedure& p) {
  p.name = j.at("name").get<std::string>();
  get(j, "date", p.date);
  get(j, "findings", p.findings);
  get(j, "impression", p.impression);
  get_provenance(j, p.provenance);
}

json item_json(const Immunization& i) {
  json j = {{"vaccine", i.vaccine}};
  put(j, "date", i.date);
  put(j, "dose_number", i.dose_number);
  put(j, "manufacturer", i.manufacturer);
  put(j, "lot", i.lot);
  put(j, "route", i.route);
  put(j, "site", i.site);
  put_provenance(j, i.provenance);
  return j;
}
void item_from(const json& j, Immunization& i) {
  i.vaccine = j.at("vaccine").get<std::string>();
  get(j, "date", i.date);
  get(j, "dose_number", i.dose_number);
  get(j, "manufacturer", i.manufacturer);
  get(j, "lot", i.lot);
  get(j, "route", i.route);
  get(j, "site", i.site);
  get_provenance(j, i.provenance);
}

json item_json(const Followup& f) {
  json j = {{"text", f.text}};
  put(j, "when", f.when);
  put_provenance(j, f.provenance);
  return j;
}
void item_from(const json& j, Followup& f) {
  f.text = j.at("text").get<std::string>();
  get(j, "when", f.when);
  get_provenance(j, f.provenance);
}

template <typename T>
json list_json(const std::vector<T>& items) {
  json a = json::array();
  for (const auto& item : items) a.push_back(item_json(item));
  return a;
}

template <typename T>
void list_from(const json& j, const char* key, std::vector<T>& out) {
  auto it = j.find(key);
  if (it == j.end()) return;
  out.reserve(it->size());
  for (const auto& item : *it) item_from(item, out.emplace_back());
}

}  // namespace

const std::vector<std::string>& document_types() {
  static const std::vector<std::string> kTypes = [] {
    const auto schema = json::parse(schema_json_text());
    return schema.at("properties").at("document_type").at("enum").get<std::vector<std::string>>();
  }();
  return kTypes;
}

nlohmann::json to_json(const Extraction& e) {
  json j = json::object();
  j["schema_version"] = e.schema_version;
  put(j, "document_id", e.document_id);
  j["document_type"] = e.document_type;
  if (e.patient) {
    json p = json::object();
    put(p, "name", e.patient->name);
    put(p, "birth_date", e.patient->birth_date);
    put(p, "mrn", e.patient->mrn);
    put(p, "sex", e.patient->sex);
    put_provenance(p, e.patient->provenance);
    j["patient"] = std::move(p);
  }
  if (e.encounter) {
    json c = json::object();
    put(c, "date", e.encounter->date);
    put(c, "admission_date", e.encounter->admission_date);
    put(c, "discharge_date", e.encounter->discharge_date);
    put(c, "facility", e.encounter->facility);
    put(c, "department", e.encounter->department);
    put(c, "provider", e.encounter->provider);
    put_provenance(c, e.encounter->provenance);
    j["encounter"] = std::move(c);
  }
  j["diagnoses"] = list_json(e.diagnoses);
  j["medications"] = list_json(e.medications);
  j["labs"] = list_json(e.labs);
  j["vitals"] = list_json(e.vitals);
  j["allergies"] = list_json(e.allergies);
  put(j, "no_known_allergies", e.no_known_allergies);
  j["procedures"] = list_json(e.procedures);
  j["immunizations"] = list_json(e.immunizations);
  j["followups"] = list_json(e.followups);
  if (!e.pages.empty()) {
    json pages = json::array();
    for (const auto& p : e.pages) {
      json pj = {{"number", p.number}, {"width", p.width}, {"height", p.height}};
      put(pj, "dpi", p.dpi);
      pages.push_back(std::move(pj));
    }
    j["pages"] = std::move(pages);
  }
  if (!e.terms.empty()) j["terms"] = e.terms;
  if (!e.values.empty()) j["values"] = e.values;
  return j;
}

Extraction extraction_from_json(const nlohmann::json& j, std::string_view source) {
  check_extraction(j, source);
  Extraction e;
  e.schema_version = j.at("schema_version").get<std::string>();
  get(j, "document_id", e.document_id);
  e.document_type = j.at("document_type").get<std::string>();
  if (auto it = j.find("patient"); it != j.end()) {
    Patient p;
    get(*it, "name", p.name);
    get(*it, "birth_date", p.birth_date);
    get(*it, "mrn", p.mrn);
    get(*it, "sex", p.sex);
    get_provenance(*it, p.provenance);
    e.patient = std::move(p);
  }
  if (auto it = j.find("encounter"); it != j.end()) {
    Encounter c;
    get(*it, "date", c.date);
    get(*it, "admission_date", c.admission_date);
    get(*it, "discharge_date", c.discharge_date);
    get(*it, "facility", c.facility);
    get(*it, "department", c.department);
    get(*it, "provider", c.provider);
    get_provenance(*it, c.provenance);
    e.encounter = std::move(c);
  }
  list_from(j, "diagnoses", e.diagnoses);
  list_from(j, "medications", e.medications);
  list_from(j, "labs", e.labs);
  list_from(j, "vitals", e.vitals);
  list_from(j, "allergies", e.allergies);
  get(j, "no_known_allergies", e.no_known_allergies);
  list_from(j, "procedures", e.procedures);
  list_from(j, "immunizations", e.immunizations);
  list_from(j, "followups", e.followups);
  if (auto it = j.find("pages"); it != j.end())
    for (const auto& pj : *it) {
      PageInfo p;
      p.number = pj.at("number").get<int>();
      p.width = pj.at("width").get<int>();
      p.height = pj.at("height").get<int>();
      get(pj, "dpi", p.dpi);
      e.pages.push_back(p);
    }
  if (auto it = j.find("terms"); it != j.end()) e.terms = it->get<std::vector<std::string>>();
  if (auto it = j.find("values"); it != j.end()) e.values = it->get<std::vector<std::string>>();
  return e;
}

namespace {
json without_provenance(const json& j) {
  if (j.is_array()) {
    json a = json::array();
    for (const auto& v : j) a.push_back(without_provenance(v));
    return a;
  }
  if (!j.is_object()) return j;
  json o = json::object();
  for (const auto& [key, value] : j.items())
    if (key != "provenance") o[key] = without_provenance(value);
  return o;
}
}  // namespace

nlohmann::json strip_provenance(const nlohmann::json& j) {
  json o = without_provenance(j);
  if (o.is_object())
    for (const char* key : {"pages", "terms", "values"}) o.erase(key);
  return o;
}

std::string_view schema_json_text() { return kSchemaJson; }

const JsonSchema& extraction_schema() {
  static const JsonSchema kSchema = [] {
    json parsed;
    try {
      parsed = json::parse(schema_json_text());
    } catch (const json::exception& e) {
      fail(Errc::kInternal, "embedded docs/schema.json is not valid JSON: {}", e.what());
    }
    return JsonSchema(parsed, "docs/schema.json");
  }();
  return kSchema;
}

std::vector<std::string> validate_extraction(const nlohmann::json& j, std::size_t max_errors) {
  return extraction_schema().validate(j, max_errors);
}

void check_extraction(const nlohmann::json& j, std::string_view source) {
  const auto errors = validate_extraction(j, 6);
  if (errors.empty()) return;
  std::string list;
  for (std::size_t i = 0; i < errors.size() && i < 5; ++i) list += (i ? "; " : "") + errors[i];
  if (errors.size() > 5) list += "; ...";
  fail(Errc::kInvalidInput, "{}: does not follow the extraction schema {}: {}", source, kSchemaVersion, list);
}

}  // namespace mv::extract
