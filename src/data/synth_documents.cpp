#include "data/synth_documents.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "core/error.hpp"
#include "data/synth_doc.hpp"

namespace mv::synth {

namespace {

using detail::Cell;
using detail::Col;
using detail::Doc;
using detail::K;
using detail::KV;
using detail::Row;

Span S(std::string text, bool bold = false) { return Doc::s(std::move(text), bold); }

std::string cap(std::string s) {
  if (!s.empty()) s[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[0])));
  return s;
}

template <typename T>
const T& pick(Rng& rng, std::initializer_list<T> options) {
  return *(options.begin() + rng.index(options.size()));
}

std::string pick_s(Rng& rng, std::initializer_list<const char*> options) {
  return *(options.begin() + rng.index(options.size()));
}

bool fits_sex(const std::string& required, const std::string& sex) {
  return required.empty() || required == sex;
}

std::string sex_word(const Person& p) { return p.sex == "female" ? "woman" : "man"; }

std::string join_short(const std::vector<const DiagnosisInfo*>& dx) {
  std::string out;
  for (std::size_t i = 0; i < dx.size(); ++i) {
    if (i > 0) out += i + 1 == dx.size() ? " and " : ", ";
    out += dx[i]->short_text;
  }
  return out;
}

// Lab panels worth drawing for a set of diagnoses, falling back to common ones.
std::vector<std::string> panels_for(Doc& d, const std::vector<const DiagnosisInfo*>& dx, std::size_t n) {
  std::vector<std::string> out;
  for (const auto* x : dx)
    for (const auto& p : x->lab_panels)
      if (std::find(out.begin(), out.end(), p) == out.end()) out.push_back(p);
  d.rng.shuffle(out);
  std::vector<std::string> common = {"cbc",  "bmp",     "cmp",  "lipid",    "thyroid",
                                     "coag", "hepatic", "iron", "diabetes", "ua"};
  d.rng.shuffle(common);
  for (const auto& p : common)
    if (std::find(out.begin(), out.end(), p) == out.end()) out.push_back(p);
  // BMP and CMP repeat each other; keep one.
  auto bmp = std::find(out.begin(), out.end(), "bmp"), cmp = std::find(out.begin(), out.end(), "cmp");
  if (bmp != out.end() && cmp != out.end()) out.erase(bmp < cmp ? cmp : bmp);
  if (out.size() > n) out.resize(n);
  return out;
}

std::vector<Col> lab_columns(bool flag_last) {
  if (flag_last)
    return {{"Test", 3.2}, {"Result", 1.4}, {"Units", 1.6}, {"Reference Range", 1.9}, {"Flag", 1.1}};
  return {{"Test", 3.2}, {"Result", 1.4}, {"Flag", 1.1}, {"Units", 1.6}, {"Reference Range", 1.9}};
}

Row order_lab_row(Row row, bool flag_last) {
  if (!flag_last) return row;
  return {row[0], row[1], row[3], row[4], row[2]};
}

const DrugInfo* find_drug(const ClinicalTables& t, const std::string& name, const std::string& form = "") {
  for (const auto& d : t.drugs)
    if (d.name == name && (form.empty() || d.form == form)) return &d;
  return nullptr;
}

// Random walk of a vital sign for a flowsheet.
struct Walk {
  double v, spread, lo, hi;
  int decimals;
  double step(Rng& rng) {
    v = std::clamp(v + rng.normal() * spread, lo, hi);
    return v;
  }
};

// ---------------------------------------------------------------------------------------------------------

void patient_diagnosis(Doc& d) {
  Rng& r = d.rng;
  d.letterhead(pick_s(r, {"Patient Diagnosis Summary", "Clinic Visit Note", "Problem List and Assessment",
                          "Office Visit Summary"}),
               r.chance(0.6) ? pick_s(r, {"Internal Medicine", "Family Medicine", "Primary Care",
                                          "Endocrinology Clinic"})
                             : "");
  const Provider prov = d.gen.provider();
  d.patient_block({{"Visit Date", {d.enc_date(d.date, r.chance(0.4))}},
                   {"Provider", {d.enc_field("provider", prov.full())}}});
  auto acute = d.gen.diagnoses("outpatient", "acute", static_cast<std::size_t>(r.range(0, 2)), d.patient.sex);
  auto chronic =
      d.gen.diagnoses("outpatient", "chronic", static_cast<std::size_t>(r.range(2, 5)), d.patient.sex);
  std::vector<const DiagnosisInfo*> all = acute;
  all.insert(all.end(), chronic.begin(), chronic.end());

  d.section("Chief Complaint");
  d.paragraph(
      {S(acute.empty() ? "Routine follow-up of " + join_short(chronic) + "."
                       : cap(acute[0]->short_text) + "; follow-up of " + chronic[0]->short_text + ".")});
  d.section("Vital Signs");
  std::vector<std::vector<Span>> vit;
  for (const auto& v : d.gen.vital_set(0.2, d.style.us_units, r.chance(0.5)))
    vit.push_back(d.vital_span(v, r.chance(0.6)));
  d.span_grid(vit, r.chance(0.5) ? 3 : 4);

  d.section(pick_s(r, {"Diagnoses", "Assessment", "Problem List"}));
  if (r.chance(0.55)) {
    std::vector<Row> rows;
    int n = 0;
    for (const auto* x : all) {
      const char* status = x->kind == "acute" ? "active"
                           : r.chance(0.6)    ? "chronic"
                           : r.chance(0.6)    ? "active"
                                              : "resolved";
      static const std::map<std::string, std::string> kWord = {
          {"active", "Active"}, {"chronic", "Chronic"}, {"resolved", "Resolved"}};
      extract::Diagnosis dx;
      dx.text = x->text;
      dx.icd10 = x->icd10;
      dx.status = status;
      const int i = Doc::push(d.truth.diagnoses, dx);
      rows.push_back({{S(std::to_string(++n))},
                      {Doc::f(K::kDiagnosis, i, "text", x->text)},
                      {Doc::f(K::kDiagnosis, i, "icd10", x->icd10)},
                      {Doc::f(K::kDiagnosis, i, "status", kWord.at(status))}});
    }
    d.table({{"#", 0.4}, {"Diagnosis", 6}, {"ICD-10", 1.3}, {"Status", 1.3}}, rows);
  } else {
    std::vector<std::vector<Span>> items;
    const bool code_first = r.chance(0.4);
    for (const auto* x : all)
      items.push_back(d.diagnosis_line(*x, x->kind == "acute" ? "active" : "chronic", nullptr, code_first));
    d.bullets(items, true);
  }

  d.section(pick_s(r, {"Current Medications", "Medications", "Active Medications"}));
  std::vector<std::vector<Span>> meds;
  for (const auto& m : d.gen.meds_for(all, static_cast<std::size_t>(r.range(2, 6)), false))
    meds.push_back(d.med_line(m, d.style.long_sig, r.chance(0.3)));
  d.bullets(meds, false);
  d.allergies_section(3, false);

  d.section("Plan");
  std::vector<std::vector<Span>> plan;
  for (const auto* fu : d.gen.followups(all, static_cast<std::size_t>(r.range(1, 3))))
    plan.push_back(d.followup_line(*fu));
  d.bullets(plan, false);
  d.signature("Electronically signed by", {S(prov.full())}, d.datetime_text(add_minutes(d.date, 40)));
}

void radiology_report(Doc& d) {
  Rng& r = d.rng;
  const StudyInfo* study = nullptr;
  while (study == nullptr) {
    const StudyInfo& st = r.pick(d.t.radiology);
    if (st.modality == "MG" && d.patient.sex != "female") continue;
    study = &st;
  }
  const FindingVariant& v = r.pick(study->variants);
  d.letterhead(pick_s(r, {"Radiology Report", "Diagnostic Imaging Report", "Imaging Report"}),
               "Department of Radiology");
  const Provider ordering = d.gen.provider(), radiologist = d.gen.physician();
  const Date exam = d.date;
  d.patient_block({{"Exam Date", {d.enc_date(exam, true)}},
                   {"Ordering Physician", {d.enc_field("provider", ordering.full())}},
                   {"Accession #", {S(fmt::format("{}{:07d}", study->modality, r.range(0, 9999999)))}}},
                  r.chance(0.7));

  extract::Procedure proc;
  proc.name = study->name;
  proc.date = iso_date(exam);
  std::map<std::string, std::string> memo;
  proc.findings = d.gen.fill(v.findings, &memo);
  proc.impression = d.gen.fill(v.impression, &memo);
  const int p = Doc::push(d.truth.procedures, proc);

  d.section("Exam");
  d.paragraph({Doc::f(K::kProcedure, p, "name", study->name, true), S("   "),
               Doc::f(K::kProcedure, p, "date", d.date_text(exam))});
  // Indication: a diagnosis that fits the study, else a symptom.
  const DiagnosisInfo* ind = nullptr;
  for (int tries = 0; tries < 20 && ind == nullptr && r.chance(0.97); ++tries) {
    const DiagnosisInfo* x = d.gen.diagnosis_by_tag(r.pick(study->tags), d.patient.sex);
    if (x != nullptr && x->kind == "acute") ind = x;
  }
  d.section(pick_s(r, {"Clinical Indication", "Indication", "History"}));
  if (ind != nullptr)
    d.paragraph(d.diagnosis_line(*ind, nullptr, nullptr, r.chance(0.5)));
  else
    d.paragraph({S(study->indications.empty() ? "Evaluate." : r.pick(study->indications))});
  d.section("Technique");
  d.paragraph({S(study->technique + (r.chance(0.5) ? " Dose reduction techniques were used." : ""))});
  d.section("Comparison");
  d.paragraph(
      {S(r.chance(0.5) ? "None available."
                       : "Prior study dated " +
                             d.date_text(add_days(exam, -static_cast<int>(r.range(30, 900)))) + ".")});
  d.section("Findings");
  d.paragraph({Doc::f(K::kProcedure, p, "findings", *proc.findings)});
  d.section("Impression");
  d.paragraph({Doc::f(K::kProcedure, p, "impression", *proc.impression, true)});
  d.signature("Electronically signed by", {S(radiologist.full() + ", Radiologist")},
              d.datetime_text(add_minutes(exam, static_cast<int>(r.range(30, 300)))));
}

void prescription(Doc& d) {
  Rng& r = d.rng;
  Canvas& c = d.cv();
  Provider doc = d.gen.provider();
  // The prescriber's pad: name, credentials, practice, DEA/NPI.
  const double w = c.content_width();
  c.y += c.text({d.enc_field("provider", doc.full())}, d.style.title.with_size(d.style.title.size * 0.85),
                c.left(), c.y, w, Align::kCenter, d.style.accent);
  c.y +=
      c.text({d.enc_field("facility", d.facility.name)}, d.style.heading, c.left(), c.y, w, Align::kCenter);
  c.y += c.text({S(d.facility_address)}, d.style.small, c.left(), c.y + 2, w, Align::kCenter, d.style.muted);
  c.y +=
      c.text({S(fmt::format("Phone {}   DEA# {}{}{:07d}   NPI {:010d}", d.facility_phone,
                            static_cast<char>('A' + r.range(0, 25)), static_cast<char>('A' + r.range(0, 25)),
                            r.range(0, 9999999), r.range(1000000000, 1999999999)))},
             d.style.small, c.left(), c.y + 2, w, Align::kCenter, d.style.muted) +
      8;
  c.line(c.left(), c.y, c.right(), c.y, d.style.accent, 2.0);
  c.y += d.style.gap + 4;
  d.patient_block({{"Date", {d.enc_date(d.date, false)}}}, r.chance(0.5), true);

  c.y += c.text({S("\u211E", true)}, d.style.title.with_size(d.style.title.size * 1.6), c.left(), c.y, 0,
                Align::kLeft, d.style.ink);
  auto dx = d.gen.diagnoses("outpatient", "", static_cast<std::size_t>(r.range(1, 2)), d.patient.sex);
  const auto meds = d.gen.meds_for(dx, static_cast<std::size_t>(r.range(1, 3)), false);
  for (std::size_t k = 0; k < meds.size(); ++k) {
    const MedOrder& m = meds[k];
    std::vector<Span> sig;
    std::vector<Span> head = d.med_line(m, d.style.long_sig, r.chance(0.5), true, &sig);
    const int i = static_cast<int>(d.truth.medications.size()) - 1;
    auto& tm = d.truth.medications.back();
    // Quantity: enough dosage units for the duration (or a month), else one package.
    std::string qty;
    const double per_day = d.t.frequencies.at(m.frequency).per_day;
    if (m.dose_unit == "tablet" || m.dose_unit == "capsule") {
      int days = 30;
      if (!m.duration.empty()) days = std::atoi(m.duration.c_str());
      double n = std::ceil(std::stod(m.dose) * per_day * std::max(days, 1) * (m.prn ? 0.5 : 1.0));
      if (per_day == 0)
        n = m.frequency == "QWEEK" ? 4 : static_cast<double>(r.range(6, 12));  // weekly, or as needed
      qty = r.chance(0.5) ? fmt::format("#{}", static_cast<int>(n))
                          : fmt::format("{} {}s", static_cast<int>(n), m.dose_unit);
    } else {
      qty = fmt::format("1 {}", m.drug->form);
    }
    tm.quantity = qty;
    const int refills = m.duration.empty() ? static_cast<int>(r.range(0, 5)) : 0;
    tm.refills = refills;
    std::vector<Span> line2{S("Sig: ", true)};
    line2.insert(line2.end(), sig.begin(), sig.end());
    std::vector<Span> line3{S("Disp: ", true), Doc::f(K::kMedication, i, "quantity", qty),
                            S("      Refills: ", true),
                            Doc::f(K::kMedication, i, "refills", std::to_string(refills))};
    c.block(
        [&](double y0) {
          const double indent = 40;
          double h = c.text(head, d.style.body.with_size(d.style.body.size * 1.1), c.left() + indent, y0,
                            w - indent);
          h += 4 + c.text(line2, d.style.body, c.left() + indent, y0 + h + 4, w - indent);
          h += 4 + c.text(line3, d.style.body, c.left() + indent, y0 + h + 4, w - indent);
          return h;
        },
        d.style.gap * 1.5);
  }
  c.y += 10;
  d.paragraph({S(r.chance(0.5) ? "[X] Substitution permitted    [ ] Dispense as written"
                               : "[ ] Substitution permitted    [X] Dispense as written")},
              &d.style.small);
  d.signature("Prescriber signature", {S(doc.full())}, d.date_text(d.date));
}

void lab_results(Doc& d) {
  Rng& r = d.rng;
  d.letterhead(pick_s(r, {"Laboratory Report", "Lab Results", "Clinical Laboratory Report"}),
               r.chance(0.6) ? "Clinical Laboratory" : "");
  const Date collected =
      with_time(d.date, static_cast<int>(r.range(5, 10)), static_cast<int>(r.range(0, 59)));
  const Provider ordering = d.gen.provider();
  d.patient_block(
      {{"Collected", {d.enc_date(collected, true)}},
       {"Reported", {S(d.datetime_text(add_minutes(collected, static_cast<int>(r.range(90, 600)))))}},
       {"Ordering Provider", {d.enc_field("provider", ordering.full())}},
       {"Specimen", {S(pick_s(r, {"Serum", "Plasma", "Whole blood", "Serum / whole blood"}))}}});
  auto dx = d.gen.diagnoses("", "", 2, d.patient.sex);
  const double abnormal = r.uniform(0.15, 0.45);
  const bool flag_last = r.chance(0.3);
  bool critical = false;
  for (const auto& panel_id : panels_for(d, dx, static_cast<std::size_t>(r.range(1, 3)))) {
    d.section(d.t.panel(panel_id).name);
    std::vector<Row> rows;
    for (const auto& res : d.gen.panel(panel_id, d.patient.sex, abnormal)) {
      rows.push_back(order_lab_row(d.lab_row(res, r.chance(0.2)), flag_last));
      critical = critical || res.flag == "HH" || res.flag == "LL";
    }
    d.table(lab_columns(flag_last), rows);
  }
  d.paragraph(
      {S("Flags: H = high, L = low, HH/LL or !! = critical, A = abnormal. Reference ranges are for adults.")},
      &d.style.small);
  if (critical) {
    const Provider rn = d.gen.nurse();
    d.paragraph({S(fmt::format("Critical value(s) called to {} at {}; read back and verified.", rn.full(),
                               d.time_text(add_minutes(collected, static_cast<int>(r.range(60, 180))))),
                   true)},
                &d.style.small);
  }
  Provider tech = d.gen.provider();
  tech.credential = "MLS(ASCP)";
  d.signature("Verified by", {S(tech.full())},
              d.datetime_text(add_minutes(collected, static_cast<int>(r.range(120, 700)))));
}

void discharge_summary(Doc& d) {
  Rng& r = d.rng;
  d.letterhead(pick_s(r, {"Discharge Summary", "Hospital Discharge Summary"}),
               r.chance(0.5) ? "Hospital Medicine" : "");
  const Date admit = d.date;
  const Date dis =
      with_time(add_days(admit, static_cast<int>(r.range(2, 9))), static_cast<int>(r.range(10, 16)), 0);
  const Provider att = d.gen.physician();
  d.last_date = dis;
  d.patient_block(
      {{"Admission Date", {d.enc_admission(admit)}},
       {"Discharge Date", {d.enc_discharge(dis)}},
       {"Attending", {d.enc_field("provider", att.full())}},
       {"Disposition", {S(pick_s(r, {"Home", "Home with home health", "Skilled nursing facility"}))}}});
  const auto principal = d.gen.diagnoses("inpatient", "acute", 1, d.patient.sex);
  const auto secondary =
      d.gen.diagnoses("inpatient", "chronic", static_cast<std::size_t>(r.range(2, 4)), d.patient.sex);
  std::vector<const DiagnosisInfo*> all = principal;
  all.insert(all.end(), secondary.begin(), secondary.end());
  const bool code_first = r.chance(0.4);

  d.section("Diagnoses");
  d.paragraph(d.diagnosis_line(*principal[0], nullptr, "principal", code_first));
  std::vector<std::vector<Span>> sec;
  const bool label_secondary = r.chance(0.5);
  for (const auto* x : secondary)
    sec.push_back(d.diagnosis_line(*x, nullptr, label_secondary ? "secondary" : nullptr, code_first));
  d.bullets(sec, false);

  // Imaging done during the stay.
  std::vector<const StudyInfo*> studies;
  for (const auto& st : d.t.radiology)
    for (const auto* x : all)
      for (const auto& tag : st.tags)
        if (std::find(x->tags.begin(), x->tags.end(), tag) != x->tags.end() &&
            std::find(studies.begin(), studies.end(), &st) == studies.end() &&
            (st.modality != "MG" || d.patient.sex == "female"))
          studies.push_back(&st);
  if (!studies.empty()) {
    d.section("Procedures and Imaging");
    std::vector<std::vector<Span>> items;
    for (const auto* st : r.sample(studies, 2)) {
      extract::Procedure pr;
      pr.name = st->name;
      const Date when =
          add_days(admit, static_cast<int>(r.range(0, std::max(0, days_between(admit, dis) - 1))));
      pr.date = iso_date(when);
      const int p = Doc::push(d.truth.procedures, pr);
      items.push_back({Doc::f(K::kProcedure, p, "name", st->name), S(" ("),
                       Doc::f(K::kProcedure, p, "date", d.date_text(when)), S(")")});
    }
    d.bullets(items, false);
  }

  d.section("Hospital Course");
  const int age = age_on(d.patient.birth, admit);
  std::vector<Span> course{
      S(fmt::format("{}-year-old {} with a history of {} who presented with {}. ", age, sex_word(d.patient),
                    join_short(secondary), principal[0]->short_text))};
  // One or two abnormal admission labs, quoted in the narrative.
  std::vector<std::string> ids = {"k", "na", "creat", "glu", "wbc", "hgb", "trop", "lactate", "bnp", "mg"};
  r.shuffle(ids);
  int quoted = 0;
  course.push_back(S("Admission labs were notable for "));
  for (const auto& id : ids) {
    if (quoted == 2) break;
    const LabTest& test = d.t.lab(id);
    LabResult res;
    for (int tries = 0; tries < 30; ++tries) {
      res = d.gen.lab(test, d.patient.sex, 1.0);
      if (res.flag != "N") break;
    }
    if (res.flag == "N") continue;
    extract::Lab lab;
    lab.test = test.long_name;
    lab.value = res.value;
    lab.unit = test.unit;
    lab.flag = res.flag;
    const int i = Doc::push(d.truth.labs, lab);
    if (quoted == 1) course.push_back(S(" and "));
    course.push_back(Doc::f(K::kLab, i, "test", cap(test.long_name)));
    course.push_back(S(" "));
    course.push_back(Doc::f(K::kLab, i, "value", res.value));
    course.push_back(S(" "));
    course.push_back(Doc::f(K::kLab, i, "unit", test.unit));
    course.push_back(S(" ("));
    course.push_back(Doc::f(K::kLab, i, "flag", d.flag_text(res.flag)));
    course.push_back(S(")"));
    ++quoted;
  }
  if (quoted == 0)
    course.pop_back();
  else
    course.push_back(S(". "));
  course.push_back(S(pick_s(
      r, {"The patient was treated with supportive care and improved steadily. ",
          "Symptoms improved with treatment and the patient tolerated a regular diet. ",
          "The hospital course was uncomplicated and the patient remained hemodynamically stable. "})));
  course.push_back(S(pick_s(
      r, {"At discharge the patient is ambulating independently and pain is controlled on oral medication.",
          "The patient is clinically stable for discharge with close outpatient follow-up.",
          "Home medications were reconciled as below."})));
  d.paragraph(course);

  d.section("Discharge Medications");
  const auto meds = d.gen.meds_for(all, static_cast<std::size_t>(r.range(4, 9)), false);
  if (r.chance(0.6)) {
    std::vector<Row> rows;
    for (const auto& m : meds) {
      const char* status = pick(r, {"new", "continued", "continued", "continued", "changed", "discontinued"});
      rows.push_back(d.med_row(m, status));
    }
    d.table({{"Medication", 4}, {"Dose", 1.6}, {"Route", 1}, {"Frequency", 1.6}, {"Status", 1.5}}, rows);
  } else {
    std::vector<std::vector<Span>> items;
    for (const auto& m : meds) items.push_back(d.med_line(m, d.style.long_sig, r.chance(0.4)));
    d.bullets(items, true);
  }
  d.allergies_section(3, r.chance(0.3));

  d.section("Vital Signs at Discharge");
  std::vector<std::vector<Span>> vit;
  for (const auto& v : d.gen.vital_set(0.1, d.style.us_units)) vit.push_back(d.vital_span(v, true));
  d.span_grid(vit, 3);

  d.section("Follow-up");
  std::vector<std::vector<Span>> fus;
  for (const auto* fu : d.gen.followups(all, static_cast<std::size_t>(r.range(2, 4))))
    fus.push_back(d.followup_line(*fu));
  d.bullets(fus, false);
  d.section("Discharge Instructions");
  d.paragraph({S(pick_s(
      r, {"Diet: heart healthy, 2 g sodium. Activity: as tolerated; no driving while taking opioid pain "
          "medication.",
          "Diet: carbohydrate controlled. Activity: walk daily, no heavy lifting over 10 lb for 2 weeks.",
          "Diet: regular. Activity: as tolerated. Keep the incision clean and dry; you may shower."}))});
  d.signature("Electronically signed by", {S(att.full())}, d.datetime_text(dis));
}

void medication_reconciliation(Doc& d) {
  Rng& r = d.rng;
  const std::string kind = pick_s(r, {"Admission", "Discharge", "Transfer"});
  d.letterhead(pick_s(r, {"Medication Reconciliation", "Medication Reconciliation Form"}),
               r.chance(0.5) ? "Pharmacy Services" : "");
  const Provider pharm = d.gen.pharmacist();
  d.patient_block({{"Date", {d.enc_date(d.date, true)}},
                   {"Reconciled by", {d.enc_field("provider", pharm.full())}},
                   {"Type", {S(kind + " reconciliation")}},
                   {"Source",
                    {S(pick_s(r, {"Patient interview", "Pharmacy fill history", "Family / caregiver",
                                  "Outside records"}))}}});
  d.allergies_section(3, false);
  auto dx = d.gen.diagnoses("outpatient", "chronic", static_cast<std::size_t>(r.range(3, 5)), d.patient.sex);
  const auto meds = d.gen.meds_for(dx, static_cast<std::size_t>(r.range(5, 11)), false);
  d.section(kind == "Discharge" ? "Medications at Discharge" : "Home Medications");
  std::vector<Row> rows;
  const bool with_indication = r.chance(0.6);
  std::vector<std::string> holds;
  for (const auto& m : meds) {
    const char* status =
        pick(r, {"continued", "continued", "continued", "held", "discontinued", "changed", "new"});
    Row row = d.med_row(m, status);
    auto& tm = d.truth.medications.back();
    const int i = static_cast<int>(d.truth.medications.size()) - 1;
    Cell status_cell = row.back();
    row.pop_back();
    if (with_indication) {
      tm.indication = m.indication;
      row.push_back({Doc::f(K::kMedication, i, "indication", m.indication)});
    }
    row.push_back(
        {S(r.chance(0.2) ? "Unknown"
                         : d.datetime_text(add_minutes(d.date, -static_cast<int>(r.range(120, 2000)))))});
    row.push_back(status_cell);
    if (std::string(status) == "held") holds.push_back(m.drug->name);
    rows.push_back(row);
  }
  std::vector<Col> cols = {{"Medication", 3.6}, {"Dose", 1.4}, {"Route", 0.9}, {"Frequency", 1.4}};
  if (with_indication) cols.push_back({"Indication", 2.2});
  cols.push_back({"Last Dose", 1.8});
  cols.push_back({"Action", 1.3});
  d.table(cols, rows);
  if (!holds.empty()) {
    d.section("Comments");
    std::string text;
    for (const auto& h : holds)
      text += fmt::format(
          "{} held {}. ", h,
          pick_s(r, {"pending renal function", "for low blood pressure", "for procedure", "while NPO"}));
    d.paragraph({S(text)});
  }
  const Provider md = d.gen.provider();
  d.signature("Pharmacist", {S(pharm.full())}, d.datetime_text(d.date));
  d.signature("Reviewed by physician", {S(md.full())}, "");
}

void icu_flowsheet(Doc& d) {
  Rng& r = d.rng;
  d.letterhead(pick_s(r, {"ICU Flowsheet", "Critical Care Flowsheet", "ICU Nursing Flowsheet - 24 Hour"}),
               pick_s(r, {"Medical Intensive Care Unit", "Surgical ICU", "Cardiac ICU"}));
  const Provider att = d.gen.physician();
  Date day = d.date;
  day.hh = -1;
  d.patient_block({{"Date", {d.enc_date(day, false)}},
                   {"Bed", {S(fmt::format("ICU-{:02d}", r.range(1, 24)))}},
                   {"Attending", {d.enc_field("provider", att.full())}},
                   {"Code Status", {S(pick_s(r, {"Full code", "DNR/DNI", "Full code"}))}}},
                  r.chance(0.6));
  const int start = static_cast<int>(r.pick(std::vector<long long>{0, 6, 7, 8}));
  const int step = static_cast<int>(r.pick(std::vector<long long>{1, 2, 4}));
  const int ncols = step == 4 ? 6 : static_cast<int>(r.range(6, 8));
  std::vector<Date> times;
  for (int k = 0; k < ncols; ++k) times.push_back(add_minutes(with_time(day, start, 0), 60 * step * k));
  d.last_date = times.back();

  // Vital signs grid: rows are parameters, columns are times; every cell is a vital sign.
  const bool f = d.style.us_units;
  std::vector<std::tuple<std::string, std::string, Walk>> params = {
      {"HR", "bpm", {r.uniform(72, 118), 5, 40, 160, 0}},
      {"RR", "/min", {r.uniform(14, 26), 2, 8, 40, 0}},
      {"SpO2", "%", {r.uniform(91, 98), 1.2, 80, 100, 0}},
      {"Temp", f ? "°F" : "°C",
       f ? Walk{r.uniform(98.2, 101.5), 0.3, 95, 105, 1} : Walk{r.uniform(36.8, 38.6), 0.15, 35, 40.5, 1}}};
  if (r.chance(0.5)) params.push_back({"CVP", "mmHg", {r.uniform(4, 12), 1.2, 0, 20, 0}});
  if (r.chance(0.6))
    params.push_back({"FiO2", "%", {static_cast<double>(r.range(3, 8) * 10), 0, 21, 100, 0}});
  Walk sys{r.uniform(92, 150), 7, 70, 200, 0}, dia{r.uniform(50, 85), 4, 35, 120, 0};
  std::vector<Row> rows;
  std::vector<std::vector<FieldKey>> time_keys(static_cast<std::size_t>(ncols));
  auto add_row = [&](const std::string& name, const std::string& unit,
                     const std::vector<std::string>& values) {
    std::vector<FieldKey> name_keys, unit_keys;
    Row row(1);
    for (int k = 0; k < ncols; ++k) {
      extract::Vital v;
      v.name = name;
      v.value = values[static_cast<std::size_t>(k)];
      v.unit = unit;
      v.time = iso_datetime(times[static_cast<std::size_t>(k)]);
      const int i = Doc::push(d.truth.vitals, v);
      name_keys.push_back({K::kVital, i, "name"});
      unit_keys.push_back({K::kVital, i, "unit"});
      time_keys[static_cast<std::size_t>(k)].push_back({K::kVital, i, "time"});
      row.push_back({Doc::f(K::kVital, i, "value", v.value)});
    }
    row[0] = {Doc::shared(name, name_keys, true), S(" ("), Doc::shared(unit, unit_keys), S(")")};
    rows.push_back(row);
  };
  {
    std::vector<std::string> bp, map;
    for (int k = 0; k < ncols; ++k) {
      const int s = static_cast<int>(std::lround(sys.step(r)));
      const int di = std::min(static_cast<int>(std::lround(dia.step(r))), s - 20);
      bp.push_back(fmt::format("{}/{}", s, di));
      map.push_back(std::to_string(static_cast<int>(std::lround((s + 2.0 * di) / 3.0))));
    }
    add_row("BP", "mmHg", bp);
    add_row("MAP", "mmHg", map);
  }
  for (auto& [name, unit, walk] : params) {
    std::vector<std::string> vals;
    for (int k = 0; k < ncols; ++k)
      vals.push_back(format_fixed(name == "FiO2" ? walk.v : walk.step(r), walk.decimals));
    add_row(name, unit, vals);
  }
  d.section("Vital Signs");
  std::vector<Col> cols = {{"Parameter", 2.3}};
  Row header{{S("Parameter")}};
  for (int k = 0; k < ncols; ++k) {
    cols.push_back({"", 1.2, Align::kCenter});
    header.push_back({Doc::shared(d.time_text(times[static_cast<std::size_t>(k)]),
                                  time_keys[static_cast<std::size_t>(k)])});
  }
  d.table(cols, rows, nullptr, {}, &header);

  // Continuous infusions.
  d.section("Infusions");
  std::vector<const InfusionInfo*> drips;
  for (const auto& inf : d.t.infusions) drips.push_back(&inf);
  std::vector<Row> irows;
  for (const auto* inf : r.sample(drips, static_cast<std::size_t>(r.range(1, 4)))) {
    extract::Medication m;
    m.name = inf->name;
    m.strength = inf->strength;
    m.dose = r.pick(inf->doses);
    m.unit = inf->dose_unit;
    m.route = "IV";
    m.frequency = "continuous";
    const int i = Doc::push(d.truth.medications, m);
    irows.push_back({{Doc::f(K::kMedication, i, "name", inf->name, true)},
                     {Doc::f(K::kMedication, i, "strength", inf->strength)},
                     {Doc::f(K::kMedication, i, "dose", *m.dose)},
                     {Doc::f(K::kMedication, i, "unit", inf->dose_unit)},
                     {Doc::f(K::kMedication, i, "route", "IV"), S(" "),
                      Doc::f(K::kMedication, i, "frequency", "continuous")}});
  }
  d.table({{"Infusion", 2.4}, {"Concentration", 2.2}, {"Dose", 1}, {"Units", 1.6}, {"Route", 1.8}}, irows);

  // Blood gases and chemistries at two times: the time row and the test labels are shared by the cells.
  d.section("Laboratory");
  const Date t1 = with_time(day, static_cast<int>(r.range(3, 6)), static_cast<int>(r.range(0, 59)));
  const Date t2 = add_minutes(t1, 60 * static_cast<int>(r.range(6, 12)));
  std::vector<Row> lrows;
  std::vector<FieldKey> tk1, tk2;
  std::vector<std::string> lab_ids = {"ph", "pco2", "po2", "hco3", "lactate", "k", "na", "glu", "hgb"};
  for (const auto& id : lab_ids) {
    if (!r.chance(0.85)) continue;
    const LabTest& test = d.t.lab(id);
    std::vector<FieldKey> name_keys, unit_keys, range_keys;
    Row row(1);
    LabResult res;
    for (const Date* tm : {&t1, &t2}) {
      res = tm == &t1 ? d.gen.lab(test, d.patient.sex, 0.45) : d.gen.lab_trend(res, d.patient.sex);
      extract::Lab lab;
      lab.test = test.name;
      lab.value = res.value;
      if (!test.unit.empty()) lab.unit = test.unit;
      lab.reference_range = res.range_text;
      if (res.flag != "N") lab.flag = res.flag;
      lab.time = iso_datetime(*tm);
      const int i = Doc::push(d.truth.labs, lab);
      name_keys.push_back({K::kLab, i, "test"});
      if (lab.unit) unit_keys.push_back({K::kLab, i, "unit"});
      range_keys.push_back({K::kLab, i, "reference_range"});
      (tm == &t1 ? tk1 : tk2).push_back({K::kLab, i, "time"});
      Cell cell{Doc::f(K::kLab, i, "value", res.value, res.flag != "N")};
      if (lab.flag)
        cell.push_back(S(" ")), cell.push_back(Doc::f(K::kLab, i, "flag", d.flag_text(res.flag), true));
      row.push_back(cell);
    }
    row[0] = {Doc::shared(test.name, name_keys, true)};
    if (!unit_keys.empty())
      row[0].push_back(S(" (")), row[0].push_back(Doc::shared(test.unit, unit_keys)),
          row[0].push_back(S(")"));
    row.push_back({Doc::shared(range_text(test.range_for(d.patient.sex), test.decimals), range_keys)});
    lrows.push_back(row);
  }
  Row lheader{{S("Test")},
              {Doc::shared(d.time_text(t1), tk1)},
              {Doc::shared(d.time_text(t2), tk2)},
              {S("Reference")}};
  d.table({{"Test", 2.6}, {"", 1.6, Align::kCenter}, {"", 1.6, Align::kCenter}, {"Reference", 1.8}}, lrows,
          nullptr, {}, &lheader);

  d.section("Ventilator / Intake and Output");
  const int in = static_cast<int>(r.range(1200, 3600)), out = static_cast<int>(r.range(600, 3000));
  d.paragraph(
      {S(fmt::format("Mode {}, Vt {} mL, set RR {}, PEEP {} cmH2O. Intake {} mL, output {} mL, net {:+} mL.",
                     pick_s(r, {"AC/VC", "PRVC", "SIMV", "CPAP/PS"}), r.range(36, 55) * 10, r.range(12, 22),
                     r.range(5, 12), in, out, in - out))});
  d.section("Nursing Note");
  d.paragraph({S(pick_s(
      r,
      {"Patient sedated, RASS -2. Titrating pressors to MAP goal of 65 or greater. Foley draining clear "
       "yellow urine.",
       "Patient alert and following commands. Weaning FiO2 as tolerated. Skin intact; turned every 2 hours.",
       "Febrile overnight; blood cultures drawn. Family updated at bedside by the attending."}))});
  const Provider rn = d.gen.nurse();
  d.signature("Documented by", {S(rn.full())}, d.datetime_text(times.back()));
}

void cardiology_consultation(Doc& d) {
  Rng& r = d.rng;
  d.letterhead(pick_s(r, {"Cardiology Consultation", "Cardiology Consult Note"}),
               r.chance(0.6) ? "Cardiology" : "");
  const Provider cons = d.gen.physician(), ref = d.gen.provider();
  d.patient_block({{"Date of Consultation", {d.enc_date(d.date, true)}},
                   {"Consultant", {d.enc_field("provider", cons.full())}},
                   {"Referring Physician", {S(ref.full())}}});
  const auto reason = d.gen.diagnoses("cardiology", "acute", 1, d.patient.sex);
  const auto pmh = d.gen.diagnoses("", "chronic", static_cast<std::size_t>(r.range(2, 5)), d.patient.sex);
  std::vector<const DiagnosisInfo*> all = reason;
  all.insert(all.end(), pmh.begin(), pmh.end());
  const int age = age_on(d.patient.birth, d.date);
  d.section("Reason for Consultation");
  d.paragraph({S("Evaluation of " + reason[0]->short_text + ".")});
  d.section("History of Present Illness");
  d.paragraph({S(
      fmt::format("{}-year-old {} with {} who presents with {}. {} {}", age, sex_word(d.patient),
                  join_short(pmh), reason[0]->short_text,
                  pick_s(r, {"Symptoms began two days ago and are worse with exertion.",
                             "Episodes last several minutes and resolve with rest.",
                             "Denies syncope, orthopnea or lower extremity swelling."}),
                  pick_s(r, {"No prior cardiac catheterization.", "Last echocardiogram was over a year ago.",
                             "Reports adherence to home medications."})))});
  d.section("Past Medical History");
  std::vector<std::vector<Span>> items;
  for (const auto* x : pmh)
    items.push_back(d.diagnosis_line(*x, r.chance(0.7) ? "chronic" : "history", nullptr, false));
  d.bullets(items, false);
  d.section("Medications");
  std::vector<std::vector<Span>> meds;
  for (const auto& m : d.gen.meds_for(all, static_cast<std::size_t>(r.range(3, 7)), false))
    meds.push_back(d.med_line(m, false, false));
  d.bullets(meds, false);
  d.allergies_section(2, false);
  d.section("Physical Examination");
  std::vector<std::vector<Span>> vit;
  for (const auto& v : d.gen.vital_set(0.3, d.style.us_units)) vit.push_back(d.vital_span(v, true));
  d.span_grid(vit, 3);
  d.paragraph(
      {S(pick_s(r, {"General: no acute distress. Neck: no JVD. Heart: regular rate and rhythm, no murmurs. "
                    "Lungs: clear. Extremities: no edema.",
                    "General: mildly uncomfortable. Heart: irregularly irregular, II/VI systolic murmur at "
                    "the RUSB. Lungs: bibasilar crackles. Extremities: 1+ pitting edema."}))});
  // Studies: ECG always, echo or another study sometimes.
  const StudyInfo* ecg = &d.t.cardiology.front();
  for (const auto& st : d.t.cardiology)
    if (st.name.find("electrocardiogram") != std::string::npos) ecg = &st;
  std::vector<const StudyInfo*> studies{ecg};
  for (const auto& st : d.t.cardiology)
    if (st.name != studies[0]->name && r.chance(0.35)) studies.push_back(&st);
  d.section("Diagnostic Studies");
  for (const StudyInfo* st : studies) {
    const FindingVariant& v = r.pick(st->variants);
    extract::Procedure pr;
    pr.name = st->name;
    std::map<std::string, std::string> memo;
    pr.findings = d.gen.fill(v.findings, &memo);
    pr.impression = d.gen.fill(v.impression, &memo);
    const int p = Doc::push(d.truth.procedures, pr);
    d.paragraph({Doc::f(K::kProcedure, p, "name", st->name, true), S(": "),
                 Doc::f(K::kProcedure, p, "findings", *pr.findings), S(" Impression: ", true),
                 Doc::f(K::kProcedure, p, "impression", *pr.impression)});
  }
  d.section("Laboratory Data");
  std::vector<Row> rows;
  const bool flag_last = r.chance(0.3);
  for (const char* id : {"trop", "bnp", "k", "creat", "hgb", "ldl"})
    if (r.chance(0.8))
      rows.push_back(order_lab_row(d.lab_row(d.gen.lab(d.t.lab(id), d.patient.sex, 0.4), false), flag_last));
  if (rows.empty())
    rows.push_back(
        order_lab_row(d.lab_row(d.gen.lab(d.t.lab("trop"), d.patient.sex, 0.4), false), flag_last));
  d.table(lab_columns(flag_last), rows);
  d.section("Assessment and Plan");
  d.paragraph(d.diagnosis_line(*reason[0], "active", "impression", r.chance(0.3)));
  std::vector<std::vector<Span>> plan;
  for (const auto* fu : d.gen.followups(reason, static_cast<std::size_t>(r.range(2, 3))))
    plan.push_back(d.followup_line(*fu));
  d.bullets(plan, true);
  d.paragraph({S("Thank you for this consultation. We will follow along with you.")});
  d.signature("Electronically signed by", {S(cons.full() + ", Cardiology")},
              d.datetime_text(add_minutes(d.date, 90)));
}

void complex_lab_panel(Doc& d) {
  Rng& r = d.rng;
  d.letterhead(pick_s(r, {"Comprehensive Laboratory Panel", "Laboratory Results - Extended Panel",
                          "Cumulative Laboratory Report"}),
               r.chance(0.5) ? "Clinical Laboratory" : "");
  const Date collected =
      with_time(d.date, static_cast<int>(r.range(6, 10)), static_cast<int>(r.range(0, 59)));
  const Provider ordering = d.gen.provider();
  d.patient_block({{"Collected", {d.enc_date(collected, true)}},
                   {"Ordering Provider", {d.enc_field("provider", ordering.full())}},
                   {"Fasting", {S(r.chance(0.6) ? "Yes" : "No")}},
                   {"Accession", {S(fmt::format("L{:09d}", r.range(0, 999999999)))}}});
  auto dx = d.gen.diagnoses("", "", 3, d.patient.sex);
  const double abnormal = r.uniform(0.2, 0.5);
  const int layout =
      static_cast<int>(r.weighted({3, 2, 2}));  // 0 standard, 1 with LOINC and prior, 2 two results per row
  const Date prior_date = add_days(collected, -static_cast<int>(r.range(30, 400)));
  bool critical = false;
  for (const auto& panel_id : panels_for(d, dx, static_cast<std::size_t>(r.range(4, 8)))) {
    const auto results = d.gen.panel(panel_id, d.patient.sex, abnormal);
    for (const auto& res : results) critical = critical || res.flag == "HH" || res.flag == "LL";
    d.section(d.t.panel(panel_id).name);
    if (layout == 2) {
      std::vector<Row> rows;
      for (std::size_t k = 0; k < results.size(); k += 2) {
        Row row;
        for (std::size_t m = k; m < std::min(results.size(), k + 2); ++m) {
          Row lr = d.lab_row(results[m], false);
          Cell value = lr[1];
          if (!lr[2].empty()) value.push_back(S(" ")), value.insert(value.end(), lr[2].begin(), lr[2].end());
          row.push_back(lr[0]);
          row.push_back(value);
          row.push_back(lr[3]);
          row.push_back(lr[4]);
        }
        rows.push_back(row);
      }
      d.table({{"Test", 2.3},
               {"Result", 1.3},
               {"Units", 1.3},
               {"Range", 1.4},
               {"Test", 2.3},
               {"Result", 1.3},
               {"Units", 1.3},
               {"Range", 1.4}},
              rows, &d.style.small);
    } else if (layout == 1) {
      std::vector<Row> rows;
      for (const auto& res : results) {
        Row lr = d.lab_row(res, false, nullptr, true);
        const LabResult prior = d.gen.lab(*res.test, d.patient.sex, abnormal);
        rows.push_back({lr[0], lr[1], lr[2], {S(prior.value)}, lr[3], lr[4]});
      }
      d.table({{"Test / LOINC", 3.4},
               {"Result", 1.3},
               {"Flag", 1.1},
               {"Prior " + d.date_text(prior_date), 1.7},
               {"Units", 1.5},
               {"Reference Range", 1.8}},
              rows);
    } else {
      const bool flag_last = r.chance(0.3);
      std::vector<Row> rows;
      for (const auto& res : results) rows.push_back(order_lab_row(d.lab_row(res, r.chance(0.3)), flag_last));
      d.table(lab_columns(flag_last), rows);
    }
  }
  if (critical)
    d.paragraph({S(fmt::format("CRITICAL RESULT(S) reported to {} at {} by phone, read back confirmed.",
                               d.gen.nurse().full(),
                               d.time_text(add_minutes(collected, static_cast<int>(r.range(60, 200))))),
                   true)});
  d.paragraph({S("Results flagged H/L fall outside the reference interval; HH/LL (or !!) are critical. "
                 "Interpret in clinical context.")},
              &d.style.small);
  const Provider dir = d.gen.physician();
  d.signature("Laboratory Director", {S(dir.full())},
              d.datetime_text(add_minutes(collected, static_cast<int>(r.range(300, 1400)))));
}

void surgical_operative_note(Doc& d) {
  Rng& r = d.rng;
  const SurgeryInfo* surg = nullptr;
  const DiagnosisInfo* pre = nullptr;
  for (int tries = 0; tries < 50 && pre == nullptr; ++tries) {
    surg = &r.pick(d.t.surgery);
    for (const auto& tag : surg->tags)
      if (pre == nullptr) pre = d.gen.diagnosis_by_tag(tag, d.patient.sex);
  }
  MV_CHECK(pre != nullptr, "no diagnosis fits any operation");
  d.letterhead(pick_s(r, {"Operative Report", "Operative Note", "Brief Operative Note"}),
               "Department of Surgery");
  const Provider surgeon = d.gen.physician(), assistant = d.gen.provider(), anesth = d.gen.physician();
  d.patient_block({{"Date of Surgery", {d.enc_date(d.date, false)}},
                   {"Surgeon", {d.enc_field("provider", surgeon.full())}},
                   {"Assistant", {S(assistant.full())}},
                   {"Anesthesiologist", {S(anesth.full())}}});
  const bool code_first = r.chance(0.3);
  auto labeled = [&](const std::string& label, std::vector<Span> spans) {
    spans.insert(spans.begin(), S(label + ": ", true));
    d.paragraph(spans);
  };
  d.paragraph(d.diagnosis_line(*pre, nullptr, "preoperative", code_first));
  d.paragraph(d.diagnosis_line(*pre, nullptr, "postoperative", code_first));
  extract::Procedure pr;
  pr.name = surg->name;
  pr.findings = d.gen.fill(r.pick(surg->findings));
  const int p = Doc::push(d.truth.procedures, pr);
  labeled("Procedure", {Doc::f(K::kProcedure, p, "name", surg->name, true)});
  labeled("Anesthesia", {S(surg->anesthesia)});
  labeled("Estimated Blood Loss", {S(fmt::format("{} mL", r.range(surg->ebl_lo, surg->ebl_hi)))});
  labeled("Specimens", {S(surg->specimen)});
  labeled("Drains", {S(surg->drains)});
  labeled("Complications", {S("None")});
  if (const DrugInfo* cef = find_drug(d.t, "Cefazolin"); cef != nullptr) {
    MedOrder m = d.gen.med(*cef);
    m.strength = "2 g";
    std::tie(m.dose, m.dose_unit) = dose_from_strength(m.strength);
    m.route = "IV";
    m.frequency = "PREOP";
    m.prn = false;
    m.duration.clear();
    labeled("Antibiotic Prophylaxis", d.med_line(m, d.style.long_sig, false, false));
  }
  d.section("Findings");
  d.paragraph({Doc::f(K::kProcedure, p, "findings", *pr.findings)});
  d.section("Indications");
  d.paragraph(
      {S(fmt::format("{}-year-old {} with {}. Risks, benefits and alternatives were discussed and informed "
                     "consent was obtained.",
                     age_on(d.patient.birth, d.date), sex_word(d.patient), pre->short_text))});
  d.section("Description of Procedure");
  d.paragraph({S(surg->steps)});
  d.paragraph({S(pick_s(r, {"Sponge, needle and instrument counts were correct. The patient was extubated "
                            "and taken to the PACU in stable condition.",
                            "All counts were correct at the end of the case. The patient tolerated the "
                            "procedure well and was transferred to recovery in stable condition."}))});
  d.signature("Surgeon", {S(surgeon.full())},
              d.datetime_text(add_minutes(d.date, static_cast<int>(r.range(60, 240)))));
}

void ed_triage_note(Doc& d) {
  Rng& r = d.rng;
  d.letterhead(
      pick_s(r, {"Emergency Department Triage Note", "ED Triage Assessment", "Emergency Triage Record"}),
      "Emergency Department");
  const Date arrival = d.date;
  const Date triage = add_minutes(arrival, static_cast<int>(r.range(3, 25)));
  const Provider rn = d.gen.nurse();
  d.patient_block(
      {{"Arrival", {d.enc_date(arrival, true)}},
       {"Triage Nurse", {d.enc_field("provider", rn.full())}},
       {"ESI Level", {S(std::to_string(r.range(2, 4)))}},
       {"Mode of Arrival", {S(pick_s(r, {"Ambulatory", "EMS", "Private vehicle", "Wheelchair"}))}}});
  const auto acute = d.gen.diagnoses("ed", "acute", 1, d.patient.sex);
  const auto pmh = d.gen.diagnoses("", "chronic", static_cast<std::size_t>(r.range(0, 3)), d.patient.sex);
  std::vector<const DiagnosisInfo*> all = acute;
  all.insert(all.end(), pmh.begin(), pmh.end());
  d.section("Chief Complaint");
  d.paragraph({S(cap(acute[0]->short_text) + " x " +
                 pick_s(r, {"2 hours", "1 day", "3 days", "1 week", "since this morning"}))});

  d.section("Triage Vital Signs");
  const auto vs = d.gen.vital_set(0.35, d.style.us_units);
  std::vector<std::vector<Span>> cells;
  std::vector<FieldKey> time_keys;
  for (const auto& v : vs) {
    cells.push_back(d.vital_span(v, true));
    const int i = static_cast<int>(d.truth.vitals.size()) - 1;
    d.truth.vitals.back().time = iso_datetime(triage);
    time_keys.push_back({K::kVital, i, "time"});
  }
  // The time and the readings in one block, so they stay on one page.
  Canvas& c = d.cv();
  const int per_row = r.chance(0.5) ? 3 : 4;
  c.block(
      [&](double y0) {
        double h = c.text({S("Taken at ", true), Doc::shared(d.time_text(triage), time_keys)}, d.style.body,
                          c.left(), y0) +
                   6;
        const double colw = c.content_width() / per_row;
        for (std::size_t k = 0; k < cells.size(); k += static_cast<std::size_t>(per_row)) {
          double row_h = 0;
          for (std::size_t j = k; j < std::min(cells.size(), k + per_row); ++j)
            row_h = std::max(row_h, c.text(cells[j], d.style.body,
                                           c.left() + colw * static_cast<double>(j - k), y0 + h, colw - 14));
          h += row_h + 4;
        }
        return h;
      },
      d.style.gap);
  d.allergies_section(2, false);
  d.section("Home Medications");
  if (pmh.empty() || r.chance(0.15)) {
    d.paragraph({S("None reported.")});
  } else {
    std::vector<std::vector<Span>> meds;
    for (const auto& m : d.gen.meds_for(pmh, static_cast<std::size_t>(r.range(1, 4)), false))
      meds.push_back(d.med_line(m, false, false));
    d.bullets(meds, false);
  }
  d.section("Triage Assessment");
  d.paragraph({S(fmt::format("{}-year-old {}{} presenting with {}. {}", age_on(d.patient.birth, arrival),
                             sex_word(d.patient), pmh.empty() ? "" : " with history of " + join_short(pmh),
                             acute[0]->short_text,
                             pick_s(r, {"Alert and oriented x3, speaking in full sentences.",
                                        "Appears uncomfortable; skin warm and dry.",
                                        "Ambulatory with steady gait; airway patent."})))});
  std::vector<Span> imp{S("Triage impression: ", true)};
  auto dl = d.diagnosis_line(*acute[0], "suspected", nullptr, r.chance(0.3));
  imp.insert(imp.end(), dl.begin(), dl.end());
  d.paragraph(imp);
  d.section("Orders");
  std::vector<std::vector<Span>> orders;
  for (const auto* o : d.gen.followups(all, static_cast<std::size_t>(r.range(2, 4)), true))
    orders.push_back(d.followup_line(*o));
  d.bullets(orders, false);
  d.signature("Triage RN", {S(rn.full())}, d.datetime_text(triage));
}

void pathology_report(Doc& d) {
  Rng& r = d.rng;
  const PathologyInfo* spec = nullptr;
  while (spec == nullptr) {
    const PathologyInfo& p = r.pick(d.t.pathology);
    if (fits_sex(p.sex, d.patient.sex)) spec = &p;
  }
  const FindingVariant& v = r.pick(spec->variants);
  d.letterhead(pick_s(r, {"Surgical Pathology Report", "Pathology Report"}), "Department of Pathology");
  Date collected = d.date;
  collected.hh = -1;
  const Provider path = d.gen.physician(), sub = d.gen.physician();
  const Date reported = add_days(collected, static_cast<int>(r.range(2, 6)));
  d.last_date = reported;
  d.patient_block(
      {{"Accession #", {S(fmt::format("S{:02d}-{:05d}", collected.y % 100, r.range(100, 99999)))}},
       {"Collected", {d.enc_date(collected, false)}},
       {"Received", {S(d.date_text(add_days(collected, 1)))}},
       {"Reported", {S(d.date_text(reported))}},
       {"Submitting Physician", {S(sub.full())}},
       {"Pathologist", {d.enc_field("provider", path.full())}}});
  extract::Procedure pr;
  pr.name = spec->procedure;
  pr.date = iso_date(collected);
  std::map<std::string, std::string> memo;
  pr.findings = d.gen.fill(v.findings, &memo);
  const int p = Doc::push(d.truth.procedures, pr);
  d.section("Specimen");
  d.paragraph({S("A. " + spec->specimen)});
  d.paragraph({S("Procedure: ", true), Doc::f(K::kProcedure, p, "name", spec->procedure), S(" ("),
               Doc::f(K::kProcedure, p, "date", d.date_text(collected)), S(")")});
  d.section("Clinical History");
  const DiagnosisInfo* hx =
      spec->tags.empty() ? nullptr : d.gen.diagnosis_by_tag(spec->tags[0], d.patient.sex);
  d.paragraph({S(fmt::format("{}-year-old {}{}.", age_on(d.patient.birth, collected), sex_word(d.patient),
                             hx != nullptr ? " with " + hx->short_text : ""))});
  d.section("Gross Description");
  d.paragraph({S(d.gen.fill(spec->gross, &memo))});
  d.section("Microscopic Description");
  d.paragraph({Doc::f(K::kProcedure, p, "findings", *pr.findings)});
  d.section("Final Diagnosis");
  extract::Diagnosis dx;
  dx.text = v.impression;
  dx.role = "pathologic";
  const bool with_code = !v.icd10.empty() && r.chance(0.6);
  if (with_code) dx.icd10 = v.icd10;
  const int di = Doc::push(d.truth.diagnoses, dx);
  std::vector<Span> final_dx{
      Doc::f(K::kDiagnosis, di, "role", r.chance(0.5) ? "FINAL DIAGNOSIS" : "Diagnosis", true),
      S(" - A. " + spec->specimen + ": ", true), Doc::f(K::kDiagnosis, di, "text", v.impression, true)};
  if (with_code)
    final_dx.push_back(S("   ICD-10: ")), final_dx.push_back(Doc::f(K::kDiagnosis, di, "icd10", v.icd10));
  Canvas& c = d.cv();
  c.block(
      [&](double y0) {
        TextBlock b = c.measure(final_dx, d.style.body, c.content_width() - 24);
        const double h = b.height() + 20;
        c.rect(c.left(), y0, c.content_width(), h, std::nullopt, d.style.ink, 1.5);
        c.draw(std::move(b), c.left() + 12, y0 + 10, d.style.ink);
        return h;
      },
      d.style.gap);
  d.signature("Electronically signed out by", {S(path.full() + ", Pathologist")}, d.date_text(reported));
}

void vaccination_record(Doc& d) {
  Rng& r = d.rng;
  d.letterhead(pick_s(r, {"Immunization Record", "Vaccine Administration Record", "Vaccination History"}),
               r.chance(0.5) ? "Immunization Clinic" : "");
  Date record = d.date;
  record.hh = -1;
  d.patient_block({{"Record Date", {d.enc_date(record, false)}}}, r.chance(0.7), r.chance(0.5));
  d.allergies_section(2, false);
  struct Given {
    const VaccineInfo* v;
    Date date;
    int dose;
  };
  std::vector<Given> given;
  std::vector<const VaccineInfo*> pool;
  for (const auto& v : d.t.vaccines) pool.push_back(&v);
  for (const auto* v : r.sample(pool, static_cast<std::size_t>(r.range(3, 7)))) {
    const int doses = v->annual ? static_cast<int>(r.range(1, 3)) : static_cast<int>(r.range(1, v->doses));
    Date when = add_days(record, -static_cast<int>(r.range(20, 2000)));
    for (int k = 1; k <= doses; ++k) {
      given.push_back({v, when, k});
      when = add_days(when, v->annual ? 365 : static_cast<int>(r.range(28, 180)));
      if (days_between(when, record) < 0) break;
    }
  }
  std::sort(given.begin(), given.end(),
            [](const Given& a, const Given& b) { return days_between(b.date, a.date) < 0; });
  const bool long_names = r.chance(0.5);
  std::vector<Row> rows;
  for (const auto& g : given) {
    extract::Immunization im;
    im.vaccine = long_names ? g.v->name : g.v->short_name;
    im.date = iso_date(g.date);
    if (!g.v->annual) im.dose_number = g.dose;
    im.manufacturer = r.pick(g.v->manufacturers);
    im.lot = d.gen.lot_number();
    im.route = r.pick(g.v->routes);
    im.site = r.pick(g.v->sites);
    const int i = Doc::push(d.truth.immunizations, im);
    rows.push_back({{Doc::f(K::kImmunization, i, "vaccine", im.vaccine)},
                    {Doc::f(K::kImmunization, i, "date", d.date_text(g.date))},
                    im.dose_number
                        ? Cell{Doc::f(K::kImmunization, i, "dose_number", std::to_string(*im.dose_number))}
                        : Cell{S("-")},
                    {Doc::f(K::kImmunization, i, "manufacturer", *im.manufacturer)},
                    {Doc::f(K::kImmunization, i, "lot", *im.lot)},
                    {Doc::f(K::kImmunization, i, "route", *im.route)},
                    {Doc::f(K::kImmunization, i, "site", *im.site)},
                    {S(d.gen.nurse().full())}});
  }
  d.section("Vaccines Administered");
  d.table({{"Vaccine", 3.2},
           {"Date", 1.5},
           {"Dose", 0.7},
           {"Manufacturer", 1.8},
           {"Lot #", 1.2},
           {"Route", 0.9},
           {"Site", 1.3},
           {"Given By", 2.2}},
          rows, &d.style.small);
  const DiagnosisInfo* z23 = nullptr;
  for (const auto& x : d.t.diagnoses)
    if (x.icd10 == "Z23") z23 = &x;
  if (z23 != nullptr && r.chance(0.5)) d.paragraph(d.diagnosis_line(*z23, nullptr, nullptr, true));
  std::vector<std::vector<Span>> next;
  for (const auto* fu : d.gen.followups({z23 != nullptr ? z23 : &d.t.diagnoses[0]}, 1))
    next.push_back(d.followup_line(*fu));
  d.section("Next Due");
  d.bullets(next, false);
  d.paragraph(
      {S("Vaccine Information Statements were provided and questions answered before each administration.")},
      &d.style.small);
  d.signature("Clinic staff", {S(d.gen.nurse().full())}, d.date_text(record));
}

using Composer = void (*)(Doc&);

const std::map<std::string, Composer>& composers() {
  static const std::map<std::string, Composer> kComposers = {
      {"patient_diagnosis", patient_diagnosis},
      {"radiology_report", radiology_report},
      {"prescription", prescription},
      {"lab_results", lab_results},
      {"discharge_summary", discharge_summary},
      {"medication_reconciliation", medication_reconciliation},
      {"icu_flowsheet", icu_flowsheet},
      {"cardiology_consultation", cardiology_consultation},
      {"complex_lab_panel", complex_lab_panel},
      {"surgical_operative_note", surgical_operative_note},
      {"ed_triage_note", ed_triage_note},
      {"pathology_report", pathology_report},
      {"vaccination_record", vaccination_record},
  };
  return kComposers;
}

}  // namespace

const std::vector<std::string>& synth_types() {
  static const std::vector<std::string> kTypes = {
      "patient_diagnosis", "radiology_report",          "prescription",   "lab_results",
      "discharge_summary", "medication_reconciliation", "icu_flowsheet",  "cardiology_consultation",
      "complex_lab_panel", "surgical_operative_note",   "ed_triage_note", "pathology_report",
      "vaccination_record"};
  return kTypes;
}

ComposedDocument compose_document(const std::string& type, const ClinicalTables& tables,
                                  const TextEngine& engine, Rng& rng) {
  auto it = composers().find(type);
  if (it == composers().end()) fail(Errc::kUsage, "synth: unknown document type \"{}\"", type);
  Doc doc(type, tables, engine, rng);
  it->second(doc);
  doc.finish();
  ComposedDocument out;
  out.truth = std::move(doc.truth);
  out.canvas = doc.release_canvas();
  return out;
}

}  // namespace mv::synth
