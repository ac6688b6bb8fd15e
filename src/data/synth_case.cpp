#include "data/synth_case.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <set>

namespace mv::synth {

namespace {

// Howard Hinnant's civil-calendar algorithms.
long days_from_civil(int y, int m, int d) {
  y -= m <= 2;
  const long era = (y >= 0 ? y : y - 399) / 400;
  const long yoe = y - era * 400;
  const long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

Date civil_from_days(long z) {
  z += 719468;
  const long era = (z >= 0 ? z : z - 146096) / 146097;
  const long doe = z - era * 146097;
  const long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const long y = yoe + era * 400;
  const long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const long mp = (5 * doy + 2) / 153;
  const long d = doy - (153 * mp + 2) / 5 + 1;
  const long m = mp + (mp < 10 ? 3 : -9);
  Date out;
  out.y = static_cast<int>(y + (m <= 2));
  out.m = static_cast<int>(m);
  out.d = static_cast<int>(d);
  return out;
}

const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

bool has_tag(const std::vector<std::string>& tags, const std::string& tag) {
  return std::find(tags.begin(), tags.end(), tag) != tags.end();
}

bool shares_tag(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  for (const auto& x : a)
    if (has_tag(b, x)) return true;
  return false;
}

}  // namespace

Date add_days(const Date& date, int days) {
  Date out = civil_from_days(days_from_civil(date.y, date.m, date.d) + days);
  out.hh = date.hh;
  out.mm = date.mm;
  return out;
}

Date with_time(const Date& date, int hh, int mm) {
  Date out = date;
  out.hh = hh;
  out.mm = mm;
  return out;
}

Date add_minutes(const Date& date, int minutes) {
  const int hh = date.hh < 0 ? 0 : date.hh;
  long total = static_cast<long>(hh) * 60 + date.mm + minutes;
  long day_shift = total >= 0 ? total / 1440 : -((-total + 1439) / 1440);
  total -= day_shift * 1440;
  Date out = add_days(date, static_cast<int>(day_shift));
  out.hh = static_cast<int>(total / 60);
  out.mm = static_cast<int>(total % 60);
  return out;
}

int days_between(const Date& a, const Date& b) {
  return static_cast<int>(days_from_civil(b.y, b.m, b.d) - days_from_civil(a.y, a.m, a.d));
}

std::string iso_date(const Date& d) { return fmt::format("{:04d}-{:02d}-{:02d}", d.y, d.m, d.d); }

std::string iso_datetime(const Date& d) {
  if (d.hh < 0) return iso_date(d);
  return fmt::format("{}T{:02d}:{:02d}", iso_date(d), d.hh, d.mm);
}

std::string format_date(const Date& d, int style) {
  switch (style) {
    case 1:
      return iso_date(d);
    case 2:
      return fmt::format("{:02d}-{}-{:04d}", d.d, kMonths[d.m - 1], d.y);
    case 3:
      return fmt::format("{} {}, {:04d}", kMonths[d.m - 1], d.d, d.y);
    case 4:
      return fmt::format("{}/{}/{:02d}", d.m, d.d, d.y % 100);
    default:
      return fmt::format("{:02d}/{:02d}/{:04d}", d.m, d.d, d.y);
  }
}

std::string format_time(const Date& d, int style) {
  const int hh = d.hh < 0 ? 0 : d.hh;
  if (style == 1) {
    const int h12 = hh % 12 == 0 ? 12 : hh % 12;
    return fmt::format("{}:{:02d} {}", h12, d.mm, hh < 12 ? "AM" : "PM");
  }
  return fmt::format("{:02d}:{:02d}", hh, d.mm);
}

int age_on(const Date& birth, const Date& on) {
  int age = on.y - birth.y;
  if (on.m < birth.m || (on.m == birth.m && on.d < birth.d)) --age;
  return age;
}

std::string Person::full() const {
  return middle.empty() ? first + " " + last : first + " " + middle + ". " + last;
}

std::string Person::last_first() const {
  std::string s = last + ", " + first;
  if (!middle.empty()) s += " " + middle;
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  return s;
}

std::string Provider::full() const {
  std::string s = middle.empty() ? first + " " + last : first + " " + middle + ". " + last;
  return credential.empty() ? s : s + ", " + credential;
}

std::string Provider::short_name() const {
  if (credential == "MD" || credential == "DO") return "Dr. " + last;
  return full();
}

Person CaseGen::person(const Date& today, int min_age, int max_age) {
  Person p;
  p.sex = rng_.chance(0.5) ? "female" : "male";
  p.first = rng_.pick(p.sex == "female" ? t_.first_female : t_.first_male);
  p.middle = rng_.chance(0.6) ? rng_.pick(t_.middle_initials) : "";
  p.last = rng_.pick(t_.last_names);
  const int age = static_cast<int>(rng_.range(min_age, max_age));
  p.birth = add_days(Date{today.y - age, today.m, today.d}, -static_cast<int>(rng_.range(1, 364)));
  p.birth.hh = -1;
  switch (rng_.range(0, 2)) {
    case 0:
      p.mrn = fmt::format("{:08d}", rng_.range(100000, 99999999));
      break;
    case 1:
      p.mrn = fmt::format("{:07d}", rng_.range(1000000, 9999999));
      break;
    default:
      p.mrn = fmt::format("{}{:06d}", static_cast<char>('A' + rng_.range(0, 25)), rng_.range(0, 999999));
      break;
  }
  p.street = fmt::format("{} {}", rng_.range(10, 9899), rng_.pick(t_.streets));
  const Town& town = rng_.pick(t_.towns);
  p.city = town.city;
  p.state = town.state;
  p.zip = fmt::format("{:05d}", rng_.range(10000, 99899));
  p.phone = phone();
  return p;
}

std::string CaseGen::phone() {
  return fmt::format("({:03d}) 555-01{:02d}", rng_.range(201, 989), rng_.range(0, 99));
}

Provider CaseGen::provider() {
  Provider p;
  p.first = rng_.pick(rng_.chance(0.5) ? t_.first_female : t_.first_male);
  p.middle = rng_.chance(0.5) ? rng_.pick(t_.middle_initials) : "";
  p.last = rng_.pick(t_.last_names);
  p.credential = rng_.pick(t_.credentials);
  return p;
}

Provider CaseGen::physician() {
  Provider p = provider();
  p.credential = rng_.chance(0.85) ? "MD" : "DO";
  return p;
}

Provider CaseGen::nurse() {
  Provider p = provider();
  p.credential = rng_.pick(t_.nurse_credentials);
  return p;
}

Provider CaseGen::pharmacist() {
  Provider p = provider();
  p.credential = rng_.pick(t_.pharmacist_credentials);
  return p;
}

Date CaseGen::encounter_date() {
  Date d = add_days(Date{2019, 1, 1}, static_cast<int>(rng_.range(0, 2555)));
  d.hh = static_cast<int>(rng_.range(6, 21));
  d.mm = static_cast<int>(rng_.range(0, 11)) * 5;
  return d;
}

std::vector<const DiagnosisInfo*> CaseGen::diagnoses(const std::string& setting, const std::string& kind,
                                                     std::size_t n, const std::string& sex) {
  std::vector<const DiagnosisInfo*> pool;
  for (const auto& d : t_.diagnoses) {
    if (!setting.empty() && !has_tag(d.settings, setting)) continue;
    if (!kind.empty() && d.kind != kind) continue;
    if (!d.sex.empty() && d.sex != sex) continue;
    if (d.icd10 == "Z23") continue;  // only on vaccination records
    pool.push_back(&d);
  }
  if (pool.empty())  // a setting with nothing of that kind: any diagnosis of the kind
    for (const auto& d : t_.diagnoses)
      if ((kind.empty() || d.kind == kind) && (d.sex.empty() || d.sex == sex) && d.icd10 != "Z23")
        pool.push_back(&d);
  return rng_.sample(pool, n);
}

const DiagnosisInfo* CaseGen::diagnosis_by_tag(const std::string& tag, const std::string& sex) {
  std::vector<const DiagnosisInfo*> pool;
  for (const auto& d : t_.diagnoses)
    if (has_tag(d.tags, tag) && (d.sex.empty() || d.sex == sex)) pool.push_back(&d);
  return pool.empty() ? nullptr : rng_.pick(pool);
}

std::pair<std::string, std::string> dose_from_strength(const std::string& strength) {
  const auto space = strength.find(' ');
  if (space == std::string::npos) return {strength, ""};
  std::string amount = strength.substr(0, space);
  std::string unit = strength.substr(space + 1);
  if (auto slash = unit.find('/'); slash != std::string::npos) unit = unit.substr(0, slash);
  if (auto sp = unit.find(' '); sp != std::string::npos) unit = unit.substr(0, sp);
  return {amount, unit};
}

MedOrder CaseGen::med(const DrugInfo& drug) {
  MedOrder m;
  m.drug = &drug;
  m.strength = rng_.pick(drug.strengths);
  if (!drug.doses.empty()) {
    m.dose = rng_.pick(drug.doses);
    m.dose_unit = drug.dose_unit;
  } else {
    std::tie(m.dose, m.dose_unit) = dose_from_strength(m.strength);
  }
  m.route = rng_.pick(drug.routes);
  m.frequency = rng_.pick(drug.frequencies);
  m.prn = rng_.chance(drug.prn);
  if (!drug.durations.empty() && rng_.chance(0.75)) m.duration = rng_.pick(drug.durations);
  m.indication = rng_.pick(drug.indications);
  return m;
}

std::vector<MedOrder> CaseGen::meds_for(const std::vector<const DiagnosisInfo*>& dx, std::size_t n,
                                        bool inpatient) {
  std::vector<const DrugInfo*> matched, common;
  for (const auto& d : t_.drugs) {
    if (!inpatient && d.setting == "inpatient") continue;
    bool match = false;
    for (const auto* x : dx) match = match || shares_tag(d.tags, x->tags);
    if (match)
      matched.push_back(&d);
    else
      common.push_back(&d);
  }
  rng_.shuffle(matched);
  rng_.shuffle(common);
  std::vector<MedOrder> out;
  std::set<std::string> names;
  auto take = [&](const std::vector<const DrugInfo*>& from, std::size_t limit) {
    for (const auto* d : from) {
      if (out.size() >= limit) break;
      if (!names.insert(d->name).second) continue;  // one order per drug name
      out.push_back(med(*d));
    }
  };
  take(matched, std::min(n, std::max<std::size_t>(1, n * 2 / 3 + 1)));
  take(common, n);
  take(matched, n);
  return out;
}

LabResult CaseGen::lab(const LabTest& test, const std::string& sex, double abnormal_p) {
  LabResult r;
  r.test = &test;
  if (test.qualitative) {
    if (rng_.chance(abnormal_p * 0.6)) {
      r.value = rng_.pick(test.abnormal_results);
      r.flag = "A";
    } else {
      r.value = test.normal_result;
      r.flag = "N";
    }
    r.range_text = test.normal_result;
    return r;
  }
  r.range = test.range_for(sex);
  r.range_text = range_text(r.range, test.decimals);
  const double lo = r.range.low.value_or(test.gen_min);
  const double hi = r.range.high.value_or(test.gen_max);
  double v = 0;
  const bool can_high = r.range.high && *r.range.high < test.gen_max;
  const bool can_low = r.range.low && *r.range.low > test.gen_min;
  if (rng_.chance(abnormal_p) && (can_high || can_low)) {
    const bool high = can_high && (!can_low || rng_.chance(0.6));
    if (high) {
      double top = test.gen_max;
      const bool critical = test.crit_high && *test.crit_high < test.gen_max && rng_.chance(0.15);
      if (critical)
        v = rng_.uniform(*test.crit_high, test.gen_max);
      else {
        if (test.crit_high) top = std::min(top, *test.crit_high);
        // Mostly mildly abnormal: the distance above the limit is skewed toward small values.
        const double u = rng_.uniform();
        v = *r.range.high + (top - *r.range.high) * u * u;
      }
    } else {
      double floor = test.gen_min;
      const bool critical = test.crit_low && *test.crit_low > test.gen_min && rng_.chance(0.15);
      if (critical)
        v = rng_.uniform(test.gen_min, *test.crit_low);
      else {
        if (test.crit_low) floor = std::max(floor, *test.crit_low);
        const double u = rng_.uniform();
        v = *r.range.low - (*r.range.low - floor) * u * u;
      }
    }
  } else {
    // Normal: inside the range, away from the limits by a little.
    const double span = hi - lo;
    v = rng_.uniform(lo + span * 0.05, hi - span * 0.05);
  }
  return printed(r, v);
}

LabResult CaseGen::printed(LabResult r, double v) const {
  const LabTest& test = *r.test;
  const double scale = std::pow(10.0, test.decimals);
  v = std::round(v * scale) / scale;
  if (test.floor_below && v < *test.floor_below) {
    r.value = fmt::format("<{}", format_fixed(*test.floor_below, test.decimals));
    r.flag = lab_flag(test, r.range, *test.floor_below - 0.5 / scale);
    return r;
  }
  if (test.cap_above && v > *test.cap_above) {
    r.value = fmt::format(">{}", format_fixed(*test.cap_above, test.decimals));
    r.flag = lab_flag(test, r.range, *test.cap_above + 0.5 / scale);
    return r;
  }
  r.value = format_fixed(v, test.decimals);
  r.flag = lab_flag(test, r.range, v);
  return r;
}

LabResult CaseGen::lab_trend(const LabResult& earlier, const std::string& sex) {
  const LabTest& test = *earlier.test;
  if (test.qualitative || earlier.value.empty() || earlier.value[0] == '<' || earlier.value[0] == '>')
    return lab(test, sex, 0.3);
  LabResult r = earlier;
  const double span = test.gen_max - test.gen_min;
  const double v =
      std::clamp(std::stod(earlier.value) + rng_.normal() * span * 0.04, test.gen_min, test.gen_max);
  return printed(r, v);
}

std::vector<LabResult> CaseGen::panel(const std::string& panel_id, const std::string& sex,
                                      double abnormal_p) {
  std::vector<LabResult> out;
  for (const auto& id : t_.panel(panel_id).tests) {
    const LabTest& test = t_.lab(id);
    if (!test.sex.empty() && test.sex != sex) continue;
    out.push_back(lab(test, sex, abnormal_p));
  }
  return out;
}

VitalReading CaseGen::vital(const std::string& id, double sickness, bool us_units) {
  const VitalInfo& info = t_.vital(id);
  VitalReading r;
  r.info = &info;
  r.unit = info.units.front();
  auto draw = [&](double nlo, double nhi, double glo, double ghi) {
    if (rng_.chance(sickness)) {
      const bool high = rng_.chance(0.6);
      return high ? rng_.uniform(nhi, ghi) : rng_.uniform(glo, nlo);
    }
    return rng_.uniform(nlo, nhi);
  };
  if (id == "bp") {
    const int sys = static_cast<int>(
        std::lround(draw(info.sys_normal_lo, info.sys_normal_hi, info.sys_gen_lo, info.sys_gen_hi)));
    int dia = static_cast<int>(
        std::lround(draw(info.dia_normal_lo, info.dia_normal_hi, info.dia_gen_lo, info.dia_gen_hi)));
    dia = std::min(dia, sys - 20);
    r.value = fmt::format("{}/{}", sys, dia);
    return r;
  }
  double v = draw(info.normal_lo, info.normal_hi, info.gen_lo, info.gen_hi);
  if (id == "temp" && !us_units) {
    v = (v - 32.0) * 5.0 / 9.0;
    r.unit = "°C";
  } else if (id == "weight" && us_units) {
    v *= 2.20462;
    r.unit = "lb";
  } else if (id == "height" && us_units) {
    v /= 2.54;
    r.unit = "in";
  }
  r.value = format_fixed(v, info.decimals);
  return r;
}

std::vector<VitalReading> CaseGen::vital_set(double sickness, bool us_units, bool with_body) {
  std::vector<VitalReading> out;
  for (const char* id : {"bp", "hr", "rr", "temp", "spo2"}) out.push_back(vital(id, sickness, us_units));
  if (rng_.chance(0.4)) out.push_back(vital("pain", sickness, us_units));
  if (with_body) {
    VitalReading w = vital("weight", 0.3, us_units);
    VitalReading h = vital("height", 0.0, us_units);
    const double kg = std::stod(w.value) / (w.unit == "lb" ? 2.20462 : 1.0);
    const double m = std::stod(h.value) * (h.unit == "in" ? 2.54 : 1.0) / 100.0;
    out.push_back(w);
    out.push_back(h);
    VitalReading bmi;
    bmi.info = &t_.vital("bmi");
    bmi.unit = bmi.info->units.front();
    bmi.value = format_fixed(kg / (m * m), 1);
    out.push_back(bmi);
  }
  return out;
}

std::vector<AllergyEntry> CaseGen::allergies(std::size_t n) {
  std::vector<AllergyEntry> out;
  for (const auto& a : rng_.sample(t_.allergies, n)) {
    AllergyEntry e;
    e.substance = a.substance;
    e.reaction = rng_.pick(a.reactions);
    e.severity = t_.severity_by_reaction.at(e.reaction);
    out.push_back(std::move(e));
  }
  return out;
}

std::vector<const FollowupInfo*> CaseGen::followups(const std::vector<const DiagnosisInfo*>& dx,
                                                    std::size_t n, bool orders) {
  const auto& src = orders ? t_.orders : t_.followups;
  std::vector<const FollowupInfo*> tagged, generic;
  for (const auto& f : src) {
    if (f.tags.empty()) {
      generic.push_back(&f);
      continue;
    }
    bool match = false;
    for (const auto* d : dx) match = match || shares_tag(f.tags, d->tags);
    if (match) tagged.push_back(&f);
  }
  std::vector<const FollowupInfo*> out = rng_.sample(tagged, n);
  for (const auto* g : rng_.sample(generic, n))
    if (out.size() < n) out.push_back(g);
  return out;
}

std::string CaseGen::fill(const std::string& text, std::map<std::string, std::string>* memo) {
  std::string out;
  std::size_t i = 0;
  while (i < text.size()) {
    const auto open = text.find('{', i);
    if (open == std::string::npos) break;
    const auto close = text.find('}', open);
    if (close == std::string::npos) break;
    const std::string inner = text.substr(open + 1, close - open - 1);
    const auto dash = inner.find('-', 1);
    out += text.substr(i, open - i);
    if (dash == std::string::npos) {
      out += text.substr(open, close - open + 1);
    } else if (memo != nullptr && memo->count(inner)) {
      out += memo->at(inner);
    } else {
      const std::string lo = inner.substr(0, dash), hi = inner.substr(dash + 1);
      const auto dot = lo.find('.');
      const int decimals = dot == std::string::npos ? 0 : static_cast<int>(lo.size() - dot - 1);
      double v = rng_.uniform(std::stod(lo), std::stod(hi));
      if (decimals == 0) v = static_cast<double>(rng_.range(std::stol(lo), std::stol(hi)));
      const std::string value = format_fixed(v, decimals);
      if (memo != nullptr) (*memo)[inner] = value;
      out += value;
    }
    i = close + 1;
  }
  out += text.substr(i);
  return out;
}

std::string CaseGen::lot_number() {
  static const char kAlnum[] = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789";
  std::string s;
  const int letters = static_cast<int>(rng_.range(1, 3));
  for (int i = 0; i < letters; ++i) s += kAlnum[rng_.range(0, 22)];
  const int digits = static_cast<int>(rng_.range(3, 6));
  for (int i = 0; i < digits; ++i) s += kAlnum[rng_.range(23, 32)];
  return s;
}

}  // namespace mv::synth
