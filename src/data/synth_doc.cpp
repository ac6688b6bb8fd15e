#include "data/synth_doc.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <tuple>

#include "core/error.hpp"

namespace mv::synth::detail {

namespace {

const char* kBodyFamilies[] = {"DejaVu Sans",      "DejaVu Serif",          "Liberation Sans",
                               "Liberation Serif", "DejaVu Sans Condensed", "Liberation Sans"};
const char* kHeadFamilies[] = {"DejaVu Sans", "Liberation Sans", "DejaVu Serif", "Liberation Serif"};
const Rgb kAccents[] = {{0.10, 0.20, 0.45}, {0.04, 0.33, 0.38}, {0.42, 0.10, 0.12},
                        {0.10, 0.10, 0.12}, {0.12, 0.34, 0.16}, {0.30, 0.18, 0.45}};

Rgb mix(Rgb a, Rgb b, double t) {
  return {a.r + (b.r - a.r) * t, a.g + (b.g - a.g) * t, a.b + (b.b - a.b) * t};
}

Style random_style(Rng& rng, const std::string& type) {
  Style s;
  const std::string body = kBodyFamilies[rng.index(std::size(kBodyFamilies))];
  const std::string head = rng.chance(0.5) ? body : kHeadFamilies[rng.index(std::size(kHeadFamilies))];
  const double size = rng.uniform(17.5, 22.0);  // 8.4-10.6 pt at 150 dpi
  s.body = {body, size};
  s.small = {body, size * 0.8};
  s.label = {body, size, true};
  s.heading = {head, size * rng.uniform(1.05, 1.22), true};
  s.title = {head, size * rng.uniform(1.55, 1.95), true};
  s.table = {body, size * rng.uniform(0.86, 0.98)};
  s.mono = {rng.chance(0.5) ? "Liberation Mono" : "DejaVu Sans Mono", size * 0.86};
  if (type == "icu_flowsheet")
    s.table = rng.chance(0.5) ? s.mono : Font{"DejaVu Sans Condensed", size * 0.86};
  s.accent = kAccents[rng.index(std::size(kAccents))];
  s.shade = mix(s.accent, {1, 1, 1}, rng.uniform(0.84, 0.92));
  s.date_style = static_cast<int>(rng.weighted({5, 2, 2, 2, 1}));
  s.time_style = rng.chance(0.7) ? 0 : 1;
  s.header_style = static_cast<int>(rng.range(0, 2));
  s.heading_style = static_cast<int>(rng.range(0, 3));
  s.table_style = static_cast<int>(rng.range(0, 3));
  s.flag_style = static_cast<int>(rng.range(0, 2));
  s.kv_style = static_cast<int>(rng.range(0, 2));
  s.word_variant = static_cast<int>(rng.range(0, 2));
  s.last_first = rng.chance(0.5);
  s.long_sig = rng.chance(0.5);
  s.us_units = rng.chance(0.75);
  s.gap = size * rng.uniform(0.45, 0.8);
  return s;
}

std::string upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  return s;
}

const char* list_name(K kind) {
  switch (kind) {
    case K::kPatient:
      return "patient";
    case K::kEncounter:
      return "encounter";
    case K::kDiagnosis:
      return "diagnoses";
    case K::kMedication:
      return "medications";
    case K::kLab:
      return "labs";
    case K::kVital:
      return "vitals";
    case K::kAllergy:
      return "allergies";
    case K::kProcedure:
      return "procedures";
    case K::kImmunization:
      return "immunizations";
    case K::kFollowup:
      return "followups";
  }
  return "?";
}

template <typename T>
std::optional<extract::Provenance>* provenance_slot(std::vector<T>& list, int index) {
  MV_CHECK(index >= 0 && static_cast<std::size_t>(index) < list.size(), "item index {} of {}", index,
           list.size());
  return &list[static_cast<std::size_t>(index)].provenance;
}

}  // namespace

std::string unit_for_dose(const ClinicalTables& t, const std::string& unit, const std::string& dose,
                          bool abbreviate) {
  std::string u = unit;
  if (abbreviate)
    if (auto it = t.dose_unit_abbr.find(u); it != t.dose_unit_abbr.end()) u = it->second;
  if (dose != "1" && dose != "0.5")
    if (auto it = t.dose_unit_plural.find(u); it != t.dose_unit_plural.end()) u = it->second;
  return u;
}

std::pair<std::string, std::string> med_status_word(int variant, const std::string& status) {
  static const std::map<std::string, std::vector<std::string>> kWords = {
      {"new", {"NEW", "New", "START"}},
      {"continued", {"CONTINUE", "Continue", "Cont."}},
      {"changed", {"CHANGED", "Dose change", "MODIFY"}},
      {"held", {"HOLD", "Held", "ON HOLD"}},
      {"discontinued", {"STOP", "Discontinue", "D/C"}},
      {"active", {"Active", "Taking"}},
      {"completed", {"Completed", "Course done"}}};
  const auto& words = kWords.at(status);
  return {words[static_cast<std::size_t>(variant) % words.size()], status};
}

Doc::Doc(const std::string& type, const ClinicalTables& tables, const TextEngine& engine, Rng& r)
    : t(tables), rng(r), gen(tables, r) {
  style = random_style(rng, type);
  // Letter or A4 at 150 dpi; prescriptions often on a half-letter pad.
  const bool pad = type == "prescription" && rng.chance(0.6);
  const bool a4 = !pad && rng.chance(0.2);
  const int w = pad ? 825 : a4 ? 1240 : 1275, h = pad ? 1275 : a4 ? 1754 : 1650;
  const double mx = pad ? rng.uniform(45, 65) : rng.uniform(70, 115);
  canvas_ = std::make_unique<Canvas>(engine, w, h, mx, rng.uniform(pad ? 40 : 60, pad ? 60 : 95),
                                     rng.uniform(85, 110));
  truth.document_type = type;
  truth.encounter.emplace();
  date = gen.encounter_date();
  last_date = date;
  patient = gen.person(date);
  facility = gen.facility();
  const bool lab_document = type == "lab_results" || type == "complex_lab_panel";
  while (!lab_document && facility.name.find("Laboratory") != std::string::npos) facility = gen.facility();
  const Town& town = rng.pick(t.towns);
  facility_address = fmt::format("{} {}, {}, {} {:05d}", rng.range(100, 9800), rng.pick(t.streets), town.city,
                                 town.state, rng.range(10000, 99899));
  facility_phone = gen.phone();
}

Span Doc::f(K kind, int index, const char* field, std::string text, bool bold) {
  Span sp;
  sp.text = std::move(text);
  sp.fields.push_back(FieldKey{kind, index, field});
  sp.bold = bold;
  return sp;
}

Span Doc::s(std::string text, bool bold) {
  Span sp;
  sp.text = std::move(text);
  sp.bold = bold;
  return sp;
}

Span Doc::shared(std::string text, std::vector<FieldKey> keys, bool bold) {
  Span sp;
  sp.text = std::move(text);
  sp.fields = std::move(keys);
  sp.bold = bold;
  return sp;
}

Span Doc::enc_date(const Date& d, bool with_time) {
  truth.encounter->date = with_time ? iso_datetime(d) : iso_date(d);
  return f(K::kEncounter, 0, "date", with_time ? datetime_text(d) : date_text(d));
}

Span Doc::enc_admission(const Date& d) {
  truth.encounter->admission_date = iso_date(d);
  return f(K::kEncounter, 0, "admission_date", date_text(d));
}

Span Doc::enc_discharge(const Date& d) {
  truth.encounter->discharge_date = iso_date(d);
  return f(K::kEncounter, 0, "discharge_date", date_text(d));
}

Span Doc::enc_field(const char* field, const std::string& text) {
  const std::string name = field;
  if (name == "facility")
    truth.encounter->facility = text;
  else if (name == "department")
    truth.encounter->department = text;
  else if (name == "provider")
    truth.encounter->provider = text;
  else
    MV_CHECK(false, "unknown encounter field {}", name);
  return f(K::kEncounter, 0, field, text);
}

std::vector<Span> Doc::med_line(const MedOrder& m, bool long_form, bool with_indication, bool name_bold,
                                std::vector<Span>* sig_out) {
  extract::Medication med;
  med.name = m.drug->name;
  const int i = push(truth.medications, med);
  auto& tm = truth.medications[static_cast<std::size_t>(i)];
  std::vector<Span> head;
  head.push_back(f(K::kMedication, i, "name", m.drug->name, name_bold));
  head.push_back(s(" "));
  head.push_back(f(K::kMedication, i, "strength", m.strength));
  tm.strength = m.strength;
  std::vector<Span> sig;
  std::vector<Span>& out = sig_out != nullptr ? sig : head;
  const SigWord& route = t.routes.at(m.route);
  const SigWord& freq = t.frequencies.at(m.frequency);
  const bool unit_is_form = m.dose_unit == "tablet" || m.dose_unit == "capsule";
  if (long_form) {
    if (!unit_is_form && rng.chance(0.6)) {
      head.push_back(s(" "));
      head.push_back(f(K::kMedication, i, "form", m.drug->form));
      tm.form = m.drug->form;
    }
    if (sig_out != nullptr)
      out.push_back(s(m.frequency == "CONT" ? "Infuse at " : "Take "));
    else
      out.push_back(s(m.frequency == "CONT" ? ": infuse at " : rng.chance(0.5) ? ": Take " : " - take "));
    out.push_back(f(K::kMedication, i, "dose", m.dose));
    tm.dose = m.dose;
    const std::string unit = unit_for_dose(t, m.dose_unit, m.dose, false);
    if (!unit.empty()) {
      out.push_back(s(" "));
      out.push_back(f(K::kMedication, i, "unit", unit));
      tm.unit = unit;
    }
    out.push_back(s(" "));
    out.push_back(f(K::kMedication, i, "route", route.long_form));
    tm.route = route.long_form;
    out.push_back(s(" "));
    out.push_back(f(K::kMedication, i, "frequency", freq.long_form));
    tm.frequency = freq.long_form;
    if (m.prn) {
      out.push_back(s(" "));
      out.push_back(f(K::kMedication, i, "prn", t.prn_words.long_form));
      tm.prn = true;
    }
    if (with_indication) {
      out.push_back(s(" for "));
      out.push_back(f(K::kMedication, i, "indication", m.indication));
      tm.indication = m.indication;
    }
    if (!m.duration.empty()) {
      out.push_back(s(" for "));
      out.push_back(f(K::kMedication, i, "duration", m.duration));
      tm.duration = m.duration;
    }
  } else {
    if (sig_out == nullptr) out.push_back(s(" - "));
    out.push_back(f(K::kMedication, i, "dose", m.dose));
    tm.dose = m.dose;
    const std::string unit = unit_for_dose(t, m.dose_unit, m.dose, true);
    if (!unit.empty()) {
      out.push_back(s(" "));
      out.push_back(f(K::kMedication, i, "unit", unit));
      tm.unit = unit;
    }
    out.push_back(s(" "));
    out.push_back(f(K::kMedication, i, "route", route.abbr));
    tm.route = route.abbr;
    out.push_back(s(" "));
    out.push_back(f(K::kMedication, i, "frequency", freq.abbr));
    tm.frequency = freq.abbr;
    if (m.prn) {
      out.push_back(s(" "));
      out.push_back(f(K::kMedication, i, "prn", t.prn_words.abbr));
      tm.prn = true;
    }
    if (!m.duration.empty()) {
      out.push_back(s(" x "));
      out.push_back(f(K::kMedication, i, "duration", m.duration));
      tm.duration = m.duration;
    }
    if (with_indication) {
      out.push_back(s(" ("));
      out.push_back(f(K::kMedication, i, "indication", m.indication));
      out.push_back(s(")"));
      tm.indication = m.indication;
    }
  }
  if (sig_out != nullptr) *sig_out = std::move(sig);
  return head;
}

Row Doc::med_row(const MedOrder& m, const std::string& status) {
  extract::Medication med;
  med.name = m.drug->name;
  med.strength = m.strength;
  med.dose = m.dose;
  const std::string unit = unit_for_dose(t, m.dose_unit, m.dose, true);
  if (!unit.empty()) med.unit = unit;
  med.route = t.routes.at(m.route).abbr;
  med.frequency = t.frequencies.at(m.frequency).abbr;
  if (m.prn) med.prn = true;
  std::string status_word;
  if (!status.empty()) std::tie(status_word, med.status) = med_status_word(style.word_variant, status);
  const int i = push(truth.medications, med);
  Row row;
  row.push_back(
      {f(K::kMedication, i, "name", med.name, true), s(" "), f(K::kMedication, i, "strength", m.strength)});
  Cell dose{f(K::kMedication, i, "dose", m.dose)};
  if (med.unit) dose.push_back(s(" ")), dose.push_back(f(K::kMedication, i, "unit", *med.unit));
  row.push_back(dose);
  row.push_back({f(K::kMedication, i, "route", *med.route)});
  Cell freq{f(K::kMedication, i, "frequency", *med.frequency)};
  if (m.prn) freq.push_back(s(" ")), freq.push_back(f(K::kMedication, i, "prn", t.prn_words.abbr));
  row.push_back(freq);
  if (!status.empty()) row.push_back({f(K::kMedication, i, "status", status_word, true)});
  return row;
}

std::vector<Span> Doc::followup_line(const FollowupInfo& fu) {
  extract::Followup item;
  item.text = fu.text;
  item.when = rng.pick(fu.when);
  const int i = push(truth.followups, item);
  return {f(K::kFollowup, i, "text", fu.text), s(style.word_variant == 1 ? ": " : " - "),
          f(K::kFollowup, i, "when", *item.when)};
}

std::vector<Span> Doc::diagnosis_line(const DiagnosisInfo& d, const char* status, const char* role,
                                      bool code_first) {
  extract::Diagnosis dx;
  dx.text = d.text;
  dx.icd10 = d.icd10;
  if (role != nullptr) dx.role = role;
  const int i = push(truth.diagnoses, dx);
  std::vector<Span> out;
  if (role != nullptr) {
    // The role is printed as the item's label, so it has a box like any other field.
    static const std::map<std::string, std::vector<std::string>> kLabels = {
        {"principal", {"Principal diagnosis", "Primary diagnosis", "Principal Dx"}},
        {"secondary", {"Secondary", "Secondary diagnosis"}},
        {"admitting", {"Admitting diagnosis"}},
        {"preoperative", {"Preoperative Diagnosis", "Pre-op Dx"}},
        {"postoperative", {"Postoperative Diagnosis", "Post-op Dx"}},
        {"impression", {"Impression", "Assessment"}},
        {"pathologic", {"FINAL DIAGNOSIS", "Diagnosis"}}};
    const auto& labels = kLabels.at(role);
    out.push_back(f(K::kDiagnosis, i, "role", labels[rng.index(labels.size())], true));
    out.push_back(s(": ", true));
  }
  if (code_first) {
    out.push_back(f(K::kDiagnosis, i, "icd10", d.icd10, true));
    out.push_back(s("  "));
    out.push_back(f(K::kDiagnosis, i, "text", d.text));
  } else {
    out.push_back(f(K::kDiagnosis, i, "text", d.text));
    out.push_back(s(" ("));
    out.push_back(f(K::kDiagnosis, i, "icd10", d.icd10));
    out.push_back(s(")"));
  }
  if (status != nullptr) {
    static const std::map<std::string, std::string> kPrinted = {{"active", "active"},
                                                                {"chronic", "chronic"},
                                                                {"resolved", "resolved"},
                                                                {"history", "history of"},
                                                                {"suspected", "suspected"}};
    truth.diagnoses[static_cast<std::size_t>(i)].status = status;
    out.push_back(s(" - "));
    out.push_back(f(K::kDiagnosis, i, "status", kPrinted.at(status)));
  }
  return out;
}

std::vector<Span> Doc::vital_span(const VitalReading& v, bool abbr, const Date* time) {
  extract::Vital vt;
  vt.name = abbr ? v.info->abbr : v.info->name;
  vt.value = v.value;
  if (!v.unit.empty() && v.unit != "/10") vt.unit = v.unit;
  if (time != nullptr) vt.time = iso_datetime(*time);
  const int i = push(truth.vitals, vt);
  std::vector<Span> out{f(K::kVital, i, "name", vt.name, true), s(": "), f(K::kVital, i, "value", v.value)};
  if (vt.unit) {
    out.push_back(s(v.unit.rfind("°", 0) == 0 || v.unit == "%" ? "" : " "));
    out.push_back(f(K::kVital, i, "unit", *vt.unit));
  } else if (v.unit == "/10") {
    out.push_back(s("/10"));
  }
  if (time != nullptr) {
    out.push_back(s(" @ "));
    out.push_back(f(K::kVital, i, "time", time_text(*time)));
  }
  return out;
}

std::string Doc::flag_text(const std::string& flag) const {
  static const std::map<std::string, std::array<const char*, 3>> kFlags = {
      {"H", {"H", "HIGH", "H *"}},
      {"L", {"L", "LOW", "L *"}},
      {"HH", {"HH", "CRIT HIGH", "H !!"}},
      {"LL", {"LL", "CRIT LOW", "L !!"}},
      {"A", {"A", "ABNORMAL", "ABN *"}}};
  auto it = kFlags.find(flag);
  return it == kFlags.end() ? "" : it->second[static_cast<std::size_t>(style.flag_style)];
}

Row Doc::lab_row(const LabResult& r, bool long_name, const Date* time, bool with_loinc) {
  extract::Lab lab;
  lab.test = long_name ? r.test->long_name : r.test->name;
  lab.value = r.value;
  if (!r.test->unit.empty()) lab.unit = r.test->unit;
  lab.reference_range = r.range_text;
  if (r.flag != "N") lab.flag = r.flag;
  if (time != nullptr) lab.time = iso_datetime(*time);
  if (with_loinc && !r.test->loinc.empty()) lab.loinc = r.test->loinc;
  const int i = push(truth.labs, lab);
  const bool abnormal = r.flag != "N";
  Row row;
  Cell name{f(K::kLab, i, "test", lab.test)};
  if (lab.loinc) {
    name.push_back(s("  "));
    name.push_back(f(K::kLab, i, "loinc", *lab.loinc));
  }
  row.push_back(name);
  row.push_back({f(K::kLab, i, "value", r.value, abnormal)});
  row.push_back(abnormal ? Cell{f(K::kLab, i, "flag", flag_text(r.flag), true)} : Cell{});
  row.push_back(lab.unit ? Cell{f(K::kLab, i, "unit", *lab.unit)} : Cell{});
  row.push_back({f(K::kLab, i, "reference_range", r.range_text)});
  return row;
}

std::vector<Span> Doc::allergy_line(const AllergyEntry& a, bool with_severity) {
  extract::Allergy al;
  al.substance = a.substance;
  al.reaction = a.reaction;
  const int i = push(truth.allergies, al);
  std::vector<Span> out{f(K::kAllergy, i, "substance", a.substance, true), s(" - "),
                        f(K::kAllergy, i, "reaction", a.reaction)};
  if (with_severity) {
    truth.allergies[static_cast<std::size_t>(i)].severity = a.severity;
    out.push_back(s(" ("));
    out.push_back(f(K::kAllergy, i, "severity", a.severity));
    out.push_back(s(")"));
  }
  return out;
}

void Doc::letterhead(const std::string& title, const std::string& department) {
  Canvas& c = cv();
  const double w = c.content_width();
  const std::string contact = fmt::format("Tel {}   Fax {}", facility_phone, gen.phone());
  Font fac_font = style.heading.with_size(style.title.size * 0.92);
  switch (style.header_style) {
    case 0: {  // centred letterhead
      c.y += c.text({enc_field("facility", facility.name)}, fac_font, c.left(), c.y, w, Align::kCenter,
                    style.accent);
      if (!department.empty())
        c.y += c.text({enc_field("department", department)}, style.body.with_bold(), c.left(), c.y, w,
                      Align::kCenter);
      c.y += c.text({s(facility_address + "   " + contact)}, style.small, c.left(), c.y + 2, w,
                    Align::kCenter, style.muted) +
             6;
      c.line(c.left(), c.y, c.right(), c.y, style.accent, 2.0);
      c.y += 10;
      c.y += c.text({s(title)}, style.title, c.left(), c.y, w, Align::kCenter) + style.gap;
      break;
    }
    case 1: {  // facility left, title right
      const double top = c.y;
      double left_h = c.text({enc_field("facility", facility.name)}, fac_font, c.left(), c.y, w * 0.6,
                             Align::kLeft, style.accent);
      if (!department.empty())
        left_h += c.text({enc_field("department", department)}, style.body.with_bold(), c.left(),
                         top + left_h, w * 0.6);
      left_h += c.text({s(facility_address)}, style.small, c.left(), top + left_h + 2, w * 0.6, Align::kLeft,
                       style.muted);
      left_h +=
          c.text({s(contact)}, style.small, c.left(), top + left_h + 2, w * 0.6, Align::kLeft, style.muted);
      const double right_h =
          c.text({s(title)}, style.title, c.left() + w * 0.55, top, w * 0.45, Align::kRight);
      c.y = top + std::max(left_h, right_h) + 8;
      c.line(c.left(), c.y, c.right(), c.y, style.accent, 3.0);
      c.y += style.gap + 4;
      break;
    }
    default: {  // coloured band
      TextBlock name = c.measure({enc_field("facility", facility.name)}, fac_font, w - 24);
      const double band = name.height() + 20;
      c.rect(c.left(), c.y, w, band, style.accent);
      c.draw(std::move(name), c.left() + 12, c.y + 10, {1, 1, 1});
      c.y += band + 6;
      const double top = c.y;
      double left_h = c.text({s(title)}, style.title, c.left(), top, w * 0.6);
      if (!department.empty())
        left_h += c.text({enc_field("department", department)}, style.body.with_bold(), c.left(),
                         top + left_h, w * 0.6);
      double right_h = c.text({s(facility_address)}, style.small, c.left() + w * 0.6, top, w * 0.4,
                              Align::kRight, style.muted);
      right_h += c.text({s(contact)}, style.small, c.left() + w * 0.6, top + right_h, w * 0.4, Align::kRight,
                        style.muted);
      c.y = top + std::max(left_h, right_h) + style.gap;
      break;
    }
  }
  // Continuation pages get a running header with the patient's name and MRN (not tagged: page 1 has them).
  c.on_new_page = [this] {
    Canvas& cc = cv();
    const std::string line = fmt::format("{}   MRN: {}   DOB: {}   (continued)", patient_name_text(),
                                         patient.mrn, date_text(patient.birth));
    cc.y +=
        cc.text({s(line)}, style.small, cc.left(), cc.y, cc.content_width(), Align::kLeft, style.muted) + 4;
    cc.line(cc.left(), cc.y, cc.right(), cc.y, style.rule, 1.0);
    cc.y += style.gap;
  };
}

void Doc::patient_block(std::vector<KV> extra, bool with_sex, bool with_address) {
  auto& p = truth.patient.emplace();
  p.name = patient_name_text();
  p.birth_date = iso_date(patient.birth);
  p.mrn = patient.mrn;
  std::vector<KV> items;
  items.push_back({rng.chance(0.5) ? "Patient" : "Name", {f(K::kPatient, 0, "name", *p.name, true)}});
  std::vector<Span> dob{f(K::kPatient, 0, "birth_date", date_text(patient.birth))};
  if (rng.chance(0.4)) dob.push_back(s(fmt::format(" ({} y)", age_on(patient.birth, date))));
  items.push_back({rng.chance(0.5) ? "DOB" : "Date of Birth", dob});
  items.push_back({"MRN", {f(K::kPatient, 0, "mrn", patient.mrn)}});
  if (with_sex) {
    p.sex = patient.sex;
    const bool short_form = rng.chance(0.5);
    const std::string printed =
        short_form ? (patient.sex == "female" ? "F" : "M") : (patient.sex == "female" ? "Female" : "Male");
    items.push_back({rng.chance(0.5) ? "Sex" : "Gender", {f(K::kPatient, 0, "sex", printed)}});
  }
  if (with_address)
    items.push_back(
        {"Address",
         {s(fmt::format("{}, {}, {} {}", patient.street, patient.city, patient.state, patient.zip))}});
  for (auto& kv : extra) items.push_back(std::move(kv));
  const int cols = items.size() <= 4 ? static_cast<int>(items.size()) : (rng.chance(0.5) ? 2 : 3);
  kv_grid(items, std::max(2, cols));
  if (style.kv_style != 2) {
    cv().line(cv().left(), cv().y - style.gap * 0.5, cv().right(), cv().y - style.gap * 0.5, style.rule, 1.0);
    cv().y += style.gap * 0.5;
  }
}

void Doc::kv_grid(const std::vector<KV>& items, int columns, int kv_style) {
  Canvas& c = cv();
  const int kstyle = kv_style < 0 ? style.kv_style : kv_style;
  const double colw = c.content_width() / columns;
  const double pad = kstyle == 2 ? 8 : 0;
  for (std::size_t start = 0; start < items.size(); start += static_cast<std::size_t>(columns)) {
    c.block(
        [&](double y0) {
          std::vector<TextBlock> labels, values;
          double h = 0;
          for (std::size_t j = start; j < std::min(items.size(), start + columns); ++j) {
            const KV& kv = items[j];
            if (kstyle == 0) {
              std::vector<Span> spans{s(kv.label + ": ", true)};
              spans.insert(spans.end(), kv.value.begin(), kv.value.end());
              values.push_back(c.measure(spans, style.body, colw - 14));
              labels.emplace_back();
              h = std::max(h, values.back().height());
            } else {
              labels.push_back(c.measure({s(upper(kv.label))}, style.small.with_bold(), colw - 14 - 2 * pad));
              values.push_back(c.measure(kv.value, style.body, colw - 14 - 2 * pad));
              h = std::max(h, labels.back().height() + 2 + values.back().height());
            }
          }
          h += 2 * pad;
          for (std::size_t j = 0; j < values.size(); ++j) {
            const double x = c.left() + colw * static_cast<double>(j);
            if (kstyle == 2) c.rect(x, y0, colw, h, std::nullopt, style.rule, 1.0);
            if (kstyle == 0) {
              c.draw(std::move(values[j]), x, y0, style.ink);
            } else {
              const double lh = labels[j].height();
              c.draw(std::move(labels[j]), x + pad, y0 + pad, style.muted);
              c.draw(std::move(values[j]), x + pad, y0 + pad + lh + 2, style.ink);
            }
          }
          return h + (kstyle == 2 ? 0 : 4);
        },
        kstyle == 2 ? 0 : 2);
  }
  c.y += style.gap;
}

void Doc::span_grid(const std::vector<std::vector<Span>>& cells, int columns) {
  Canvas& c = cv();
  const double colw = c.content_width() / columns;
  for (std::size_t start = 0; start < cells.size(); start += static_cast<std::size_t>(columns)) {
    c.block(
        [&](double y0) {
          double h = 0;
          for (std::size_t j = start; j < std::min(cells.size(), start + columns); ++j)
            h = std::max(h, c.text(cells[j], style.body, c.left() + colw * static_cast<double>(j - start), y0,
                                   colw - 14, Align::kLeft, style.ink));
          return h;
        },
        4);
  }
  c.y += style.gap;
}

void Doc::section(const std::string& title) {
  Canvas& c = cv();
  TextBlock probe = c.measure({s("Xg")}, style.body);
  c.ensure_space(style.heading.size * 1.6 + probe.height() * 3);
  const double w = c.content_width();
  switch (style.heading_style) {
    case 0: {
      c.y += c.text({s(upper(title))}, style.heading, c.left(), c.y, w, Align::kLeft, style.ink) + 2;
      c.line(c.left(), c.y, c.right(), c.y, style.rule, 1.0);
      c.y += style.gap * 0.6;
      break;
    }
    case 1: {
      TextBlock b = c.measure({s(title)}, style.heading, w - 16);
      const double h = b.height() + 8;
      c.rect(c.left(), c.y, w, h, style.shade);
      c.draw(std::move(b), c.left() + 8, c.y + 4, style.ink);
      c.y += h + style.gap * 0.6;
      break;
    }
    case 2: {
      c.y += c.text({s(title + ":")}, style.heading, c.left(), c.y, w, Align::kLeft, style.accent) +
             style.gap * 0.4;
      break;
    }
    default: {
      TextBlock b = c.measure({s(upper(title))}, style.heading);
      const double bw = b.width(), h = b.height();
      c.draw(std::move(b), c.left(), c.y, style.accent);
      c.line(c.left(), c.y + h + 1, c.left() + bw, c.y + h + 1, style.accent, 1.5);
      c.y += h + style.gap * 0.6;
      break;
    }
  }
}

void Doc::paragraph(const std::vector<Span>& spans, const Font* font, double indent) {
  Canvas& c = cv();
  const Font& fnt = font != nullptr ? *font : style.body;
  c.block(
      [&](double y0) {
        return c.text(spans, fnt, c.left() + indent, y0, c.content_width() - indent, Align::kLeft, style.ink);
      },
      style.gap);
}

void Doc::bullets(const std::vector<std::vector<Span>>& items, bool numbered, const Font* font) {
  Canvas& c = cv();
  const Font& fnt = font != nullptr ? *font : style.body;
  const double indent = fnt.size * 1.6;
  for (std::size_t i = 0; i < items.size(); ++i) {
    const std::string mark = numbered ? fmt::format("{}.", i + 1) : "\u2022";
    c.block(
        [&](double y0) {
          c.text({s(mark)}, fnt, c.left() + 4, y0, 0, Align::kLeft, style.ink);
          return c.text(items[i], fnt, c.left() + indent, y0, c.content_width() - indent, Align::kLeft,
                        style.ink);
        },
        fnt.size * 0.25);
  }
  c.y += style.gap * 0.7;
}

void Doc::table(const std::vector<Col>& cols, const std::vector<Row>& rows, const Font* font,
                const std::vector<int>& bold_rows, const Row* header_cells) {
  Canvas& c = cv();
  const Font& fnt = font != nullptr ? *font : style.table;
  const double pad_x = 6, pad_y = std::max(3.0, fnt.size * 0.22);
  double total = 0;
  for (const auto& col : cols) total += col.frac;
  std::vector<double> xs, ws;
  double x = c.left();
  for (const auto& col : cols) {
    xs.push_back(x);
    ws.push_back(col.frac / total * c.content_width());
    x += ws.back();
  }
  const int ts = style.table_style;
  const bool accent_header = ts == 1 && rng.chance(0.5);
  auto draw_header = [&] {
    std::vector<TextBlock> hb;
    double h = 0;
    for (std::size_t j = 0; j < cols.size(); ++j) {
      const Cell title =
          header_cells != nullptr && j < header_cells->size() ? (*header_cells)[j] : Cell{s(cols[j].header)};
      hb.push_back(c.measure(title, fnt.with_bold(), ws[j] - 2 * pad_x, cols[j].align));
      h = std::max(h, hb.back().height());
    }
    h += 2 * pad_y;
    if (ts == 0 || ts == 1 || ts == 2)
      c.rect(c.left(), c.y, c.content_width(), h, accent_header ? style.accent : style.shade);
    for (std::size_t j = 0; j < cols.size(); ++j) {
      if (ts == 0) c.rect(xs[j], c.y, ws[j], h, std::nullopt, style.rule, 1.0);
      c.draw(std::move(hb[j]), xs[j] + pad_x, c.y + pad_y, accent_header ? Rgb{1, 1, 1} : style.ink);
    }
    if (ts == 3) c.line(c.left(), c.y + h, c.right(), c.y + h, style.ink, 1.5);
    c.y += h;
  };
  {
    TextBlock probe = c.measure({s("Xg")}, fnt);
    c.ensure_space(probe.height() * 3 + 4 * pad_y);
  }
  draw_header();
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const bool bold = std::find(bold_rows.begin(), bold_rows.end(), static_cast<int>(r)) != bold_rows.end();
    std::vector<TextBlock> cells;
    double h = 0;
    for (std::size_t j = 0; j < cols.size(); ++j) {
      const Cell empty;
      const Cell& cell = j < rows[r].size() ? rows[r][j] : empty;
      if (cell.empty()) {
        cells.emplace_back();
        continue;
      }
      cells.push_back(c.measure(cell, bold ? fnt.with_bold() : fnt, ws[j] - 2 * pad_x, cols[j].align));
      h = std::max(h, cells.back().height());
    }
    if (h == 0) h = fnt.size;
    h += 2 * pad_y;
    if (c.y + h > c.bottom()) {
      c.new_page();
      draw_header();
    }
    if (ts == 2 && r % 2 == 1) c.rect(c.left(), c.y, c.content_width(), h, Rgb{0.94, 0.94, 0.95});
    for (std::size_t j = 0; j < cols.size(); ++j) {
      if (ts == 0) c.rect(xs[j], c.y, ws[j], h, std::nullopt, style.rule, 1.0);
      if (cells[j].height() > 0 || cells[j].width() > 0)
        c.draw(std::move(cells[j]), xs[j] + pad_x, c.y + pad_y, style.ink);
    }
    if (ts == 1) c.line(c.left(), c.y + h, c.right(), c.y + h, style.rule, 0.8);
    c.y += h;
  }
  if (ts == 3 || ts == 2) c.line(c.left(), c.y, c.right(), c.y, style.ink, 1.0);
  c.y += style.gap;
}

void Doc::signature(const std::string& label, const std::vector<Span>& who, const std::string& when) {
  Canvas& c = cv();
  c.block(
      [&](double y0) {
        const double w = c.content_width() * 0.55;
        double h = c.text({s(label, true)}, style.body, c.left(), y0, w, Align::kLeft, style.ink);
        c.line(c.left(), y0 + h + 34, c.left() + w * 0.8, y0 + h + 34, style.ink, 1.0);
        h += 38;
        h += c.text(who, style.body, c.left(), y0 + h, w, Align::kLeft, style.ink);
        if (!when.empty())
          h += c.text({s(when)}, style.small, c.left(), y0 + h, w, Align::kLeft, style.muted);
        return h;
      },
      style.gap);
}

void Doc::allergies_section(std::size_t max_allergies, bool as_table) {
  const std::size_t n =
      rng.chance(0.35) ? 0 : static_cast<std::size_t>(rng.range(1, static_cast<long long>(max_allergies)));
  if (n == 0) {
    truth.no_known_allergies = true;
    paragraph({s("Allergies: ", true), s(rng.chance(0.5) ? "NKDA" : "No known drug allergies")});
    return;
  }
  const auto list = gen.allergies(n);
  if (as_table) {
    section("Allergies");
    std::vector<Row> rows;
    for (const auto& a : list) {
      extract::Allergy al;
      al.substance = a.substance;
      al.reaction = a.reaction;
      al.severity = a.severity;
      const int i = push(truth.allergies, al);
      rows.push_back({{f(K::kAllergy, i, "substance", a.substance)},
                      {f(K::kAllergy, i, "reaction", a.reaction)},
                      {f(K::kAllergy, i, "severity", a.severity)}});
    }
    table({{"Allergen", 3}, {"Reaction", 3}, {"Severity", 2}}, rows);
    return;
  }
  std::vector<Span> line{s("Allergies: ", true)};
  const bool sev = rng.chance(0.5);
  for (std::size_t k = 0; k < list.size(); ++k) {
    if (k > 0) line.push_back(s("; "));
    auto spans = allergy_line(list[k], sev);
    line.insert(line.end(), spans.begin(), spans.end());
  }
  paragraph(line);
}

void Doc::finish() {
  Canvas& c = cv();
  c.on_new_page = nullptr;
  const int pages = c.page_count();
  const Date latest = days_between(date, last_date) > 0 ? last_date : date;
  const Date printed =
      add_days(with_time(latest, static_cast<int>(rng.range(7, 20)), static_cast<int>(rng.range(0, 59))),
               static_cast<int>(rng.range(1, 3)));
  for (int p = 1; p <= pages; ++p) {
    c.select_page(p);
    const double fy = c.page_height() - c.bottom() > 40 ? c.bottom() + 22 : c.bottom() + 4;
    const double w = c.content_width();
    c.line(c.left(), fy - 6, c.right(), fy - 6, style.rule, 0.8);
    c.text({s(fmt::format("{} | Printed {}", facility.short_name, datetime_text(printed)))}, style.small,
           c.left(), fy, w * 0.34, Align::kLeft, style.muted);
    TextBlock mark = c.measure({s("SYNTHETIC TEST DOCUMENT - NOT A REAL PATIENT")},
                               style.small.with_size(style.small.size * 0.8));
    const double mx = c.left() + (w - mark.width()) / 2;
    c.draw(std::move(mark), mx, fy + style.small.size * 0.1, style.muted);
    c.text({s(fmt::format("Page {} of {}", p, pages))}, style.small, c.left() + w * 0.72, fy, w * 0.28,
           Align::kRight, style.muted);
  }

  // Provenance. A field may be drawn more than once (a table header repeated on the next page): an item lives
  // on the page where most of its fields are, and takes the first box of each field on that page.
  struct ItemBoxes {
    std::map<int, std::map<std::string, extract::BBox>> by_page;  // page -> field -> first box
    int first_page = 0;
    extract::Provenance prov;
  };
  std::map<std::pair<int, int>, ItemBoxes> items;
  for (const FieldBox& fb : c.field_boxes()) {
    ItemBoxes& ib = items[{static_cast<int>(fb.key.kind), fb.key.index}];
    if (ib.first_page == 0) ib.first_page = fb.page;
    ib.by_page[fb.page].emplace(fb.key.field, fb.box);
  }
  for (auto& [key, ib] : items) {
    int page = ib.first_page;
    for (const auto& [pg, fields] : ib.by_page)
      if (fields.size() > ib.by_page[page].size()) page = pg;
    ib.prov.page = page;
    ib.prov.source = "synth";
    ib.prov.verified = true;
    for (const auto& [field, box] : ib.by_page[page]) {
      ib.prov.fields[field] = box;
      if (!ib.prov.bbox) ib.prov.bbox = box;
      auto& b = *ib.prov.bbox;
      b = {std::min(b.x0, box.x0), std::min(b.y0, box.y0), std::max(b.x1, box.x1), std::max(b.y1, box.y1)};
    }
  }
  for (auto& [key, ib] : items) {
    const auto kind = static_cast<K>(key.first);
    std::optional<extract::Provenance>* slot = nullptr;
    switch (kind) {
      case K::kPatient:
        slot = &truth.patient->provenance;
        break;
      case K::kEncounter:
        slot = &truth.encounter->provenance;
        break;
      case K::kDiagnosis:
        slot = provenance_slot(truth.diagnoses, key.second);
        break;
      case K::kMedication:
        slot = provenance_slot(truth.medications, key.second);
        break;
      case K::kLab:
        slot = provenance_slot(truth.labs, key.second);
        break;
      case K::kVital:
        slot = provenance_slot(truth.vitals, key.second);
        break;
      case K::kAllergy:
        slot = provenance_slot(truth.allergies, key.second);
        break;
      case K::kProcedure:
        slot = provenance_slot(truth.procedures, key.second);
        break;
      case K::kImmunization:
        slot = provenance_slot(truth.immunizations, key.second);
        break;
      case K::kFollowup:
        slot = provenance_slot(truth.followups, key.second);
        break;
    }
    *slot = ib.prov;
  }

  // Every field in the truth was printed and measured, and nothing was measured that is not in the truth.
  const nlohmann::json j = extract::to_json(truth);
  auto check_item = [&](const nlohmann::json& item, const std::string& where) {
    std::set<std::string> fields, boxed;
    for (const auto& [k, v] : item.items())
      if (k != "provenance") fields.insert(k);
    if (auto it = item.find("provenance"); it != item.end() && it->contains("fields"))
      for (const auto& [k, v] : (*it)["fields"].items()) boxed.insert(k);
    MV_CHECK(fields == boxed, "{}: {}: printed fields and truth fields differ ({} vs {})",
             truth.document_type, where, fmt::join(boxed, ","), fmt::join(fields, ","));
  };
  if (j.contains("patient")) check_item(j["patient"], "patient");
  if (j.contains("encounter")) check_item(j["encounter"], "encounter");
  for (K kind : {K::kDiagnosis, K::kMedication, K::kLab, K::kVital, K::kAllergy, K::kProcedure,
                 K::kImmunization, K::kFollowup}) {
    const auto& list = j.at(list_name(kind));
    for (std::size_t i = 0; i < list.size(); ++i)
      check_item(list[i], fmt::format("{}[{}]", list_name(kind), i));
  }

  for (int p = 1; p <= pages; ++p) truth.pages.push_back({p, c.page_width(), c.page_height(), 150.0});

  // Ground-truth term and value lists in the original pipeline's style.
  std::vector<std::string> terms, values;
  auto add = [](std::vector<std::string>& v, const std::optional<std::string>& s) {
    if (s && !s->empty() && std::find(v.begin(), v.end(), *s) == v.end()) v.push_back(*s);
  };
  for (const auto& d : truth.diagnoses) add(terms, d.text), add(values, d.icd10);
  for (const auto& m : truth.medications) {
    add(terms, m.name);
    add(values, m.strength);
    if (m.dose && m.unit) add(values, *m.dose + " " + *m.unit);
  }
  for (const auto& l : truth.labs) add(terms, l.test), add(values, l.value);
  for (const auto& v : truth.vitals) add(terms, v.name), add(values, v.value);
  for (const auto& a : truth.allergies) add(terms, a.substance);
  for (const auto& pr : truth.procedures) add(terms, pr.name);
  for (const auto& im : truth.immunizations) add(terms, im.vaccine), add(values, im.lot);
  truth.terms = std::move(terms);
  truth.values = std::move(values);
}

}  // namespace mv::synth::detail
