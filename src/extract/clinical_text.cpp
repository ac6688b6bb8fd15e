#include "extract/clinical_text.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstring>
#include <nlohmann/json.hpp>
#include <regex>

#include "core/error.hpp"
#include "core/file.hpp"
#include "data/clinical_tables.hpp"

namespace mv::extract {

namespace {

bool is_word_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }

void sort_longest_first(std::vector<std::string>& v) {
  std::sort(v.begin(), v.end(), [](const std::string& a, const std::string& b) {
    return a.size() != b.size() ? a.size() > b.size() : a < b;
  });
  v.erase(std::unique(v.begin(), v.end()), v.end());
}

nlohmann::json load_json(const std::filesystem::path& p) {
  try {
    return nlohmann::json::parse(read_file(p));
  } catch (const nlohmann::json::exception& e) {
    fail(Errc::kInvalidInput, "{}: not valid JSON: {}", p.string(), e.what());
  }
}

std::vector<std::string> strings(const nlohmann::json& j, const std::filesystem::path& file,
                                 const char* key) {
  if (!j.is_array()) fail(Errc::kInvalidInput, "{}: \"{}\" must be an array of strings", file.string(), key);
  std::vector<std::string> out;
  for (const auto& x : j) {
    if (!x.is_string())
      fail(Errc::kInvalidInput, "{}: \"{}\" must be an array of strings", file.string(), key);
    out.push_back(x.get<std::string>());
  }
  return out;
}

std::map<std::string, std::string> string_map(const nlohmann::json& j, const std::filesystem::path& file,
                                              const char* key) {
  if (!j.is_object())
    fail(Errc::kInvalidInput, "{}: \"{}\" must be an object of strings", file.string(), key);
  std::map<std::string, std::string> out;
  for (const auto& [k, x] : j.items()) {
    if (!x.is_string()) fail(Errc::kInvalidInput, "{}: \"{}.{}\" must be a string", file.string(), key, k);
    out[k] = x.get<std::string>();
  }
  return out;
}

std::string trim(std::string_view s) {
  std::size_t b = 0, e = s.size();
  while (b < e && (std::isspace(static_cast<unsigned char>(s[b])) || s[b] == ',' || s[b] == ';')) ++b;
  while (e > b && (std::isspace(static_cast<unsigned char>(s[e - 1])) || s[e - 1] == ',' || s[e - 1] == ';'))
    --e;
  return std::string(s.substr(b, e - b));
}

bool parse_double(std::string_view s, double& out) {
  std::string t;
  for (char c : s)
    if (c != ',') t += c;
  if (t.empty()) return false;
  const char* b = t.data();
  if (*b == '+') ++b;
  auto [p, ec] = std::from_chars(b, t.data() + t.size(), out);
  return ec == std::errc() && p == t.data() + t.size();
}

std::string regex_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (std::strchr("\\^$.|?*+()[]{}/", c)) out += '\\';
    out += c;
  }
  return out;
}

std::string alternation(std::vector<std::string> words) {
  sort_longest_first(words);
  std::string out;
  for (const auto& w : words) {
    if (!out.empty()) out += '|';
    out += regex_escape(w);
  }
  return out;
}

}  // namespace

std::string to_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::size_t find_phrase(std::string_view text, std::string_view phrase, std::size_t from,
                        bool case_sensitive) {
  if (phrase.empty() || text.size() < phrase.size()) return std::string_view::npos;
  std::string t = case_sensitive ? std::string(text) : to_lower(text);
  std::string p = case_sensitive ? std::string(phrase) : to_lower(phrase);
  for (std::size_t pos = t.find(p, from); pos != std::string::npos; pos = t.find(p, pos + 1)) {
    bool left_ok = pos == 0 || !is_word_char(t[pos - 1]) || !is_word_char(p.front());
    std::size_t end = pos + p.size();
    bool right_ok = end >= t.size() || !is_word_char(t[end]) || !is_word_char(p.back());
    if (left_ok && right_ok) return pos;
  }
  return std::string_view::npos;
}

std::optional<std::pair<std::string, Span>> find_longest(std::string_view text,
                                                         const std::vector<std::string>& list,
                                                         std::size_t from, bool case_sensitive) {
  std::optional<std::pair<std::string, Span>> best;
  std::string lowered = case_sensitive ? std::string(text) : to_lower(text);
  for (const auto& item : list) {
    if (best && item.size() < best->second.second - best->second.first) break;  // list is longest first
    std::size_t pos = find_phrase(lowered, case_sensitive ? item : to_lower(item), from, true);
    if (pos == std::string::npos) continue;
    if (!best || pos < best->second.first) best = std::make_pair(item, Span{pos, pos + item.size()});
  }
  return best;
}

Vocabulary Vocabulary::load(const std::filesystem::path& data_dir) {
  std::filesystem::path dir = data_dir.empty() ? synth::data_dir() : data_dir;
  auto t = synth::ClinicalTables::load(dir / "clinical");
  Vocabulary v;
  for (const auto& d : t.drugs) {
    v.drugs.push_back(d.name);
    if (!d.brand.empty()) v.drugs.push_back(d.brand);
  }
  for (const auto& d : t.infusions) v.drugs.push_back(d.name);
  for (const auto& l : t.labs) {
    for (const auto& n : {l.name, l.long_name}) {
      if (n.empty()) continue;
      v.lab_tests.push_back(n);
      if (!l.loinc.empty()) v.lab_loinc[to_lower(n)] = l.loinc;
      if (!l.unit.empty()) v.lab_unit[to_lower(n)] = l.unit;
    }
    if (!l.unit.empty()) v.lab_units.push_back(l.unit);
    if (l.qualitative) {
      v.lab_results.push_back(l.normal_result);
      for (const auto& r : l.abnormal_results) v.lab_results.push_back(r);
    }
  }
  for (const auto& x : t.vitals) {
    for (const auto& n : {x.name, x.abbr}) {
      if (n.empty()) continue;
      v.vitals.push_back(n);
      if (!x.loinc.empty()) v.vital_loinc[to_lower(n)] = x.loinc;
    }
    for (const auto& u : x.units) v.vital_units.push_back(u);
    for (const auto& n : {x.name, x.abbr})
      if (!n.empty()) v.vital_units_of[to_lower(n)] = x.units;
  }
  for (const auto& [code, w] : t.routes) {
    v.route_abbr.push_back(w.abbr);
    v.route_long.push_back(w.long_form);
  }
  for (const auto& [code, w] : t.frequencies) {
    v.freq_words.push_back(w.abbr);
    v.freq_words.push_back(w.long_form);
  }
  v.prn_words = {"PRN", "as needed"};
  if (!t.prn_words.abbr.empty()) v.prn_words.push_back(t.prn_words.abbr);
  if (!t.prn_words.long_form.empty()) v.prn_words.push_back(t.prn_words.long_form);
  for (const auto& a : t.allergies) v.allergens.push_back(a.substance);
  for (const auto& x : t.vaccines) {
    for (const auto* list : {&x.manufacturers, &x.sites})
      for (const auto& m : *list) {
        auto& dst = list == &x.manufacturers ? v.vaccine_manufacturers : v.vaccine_sites;
        if (std::find(dst.begin(), dst.end(), m) == dst.end()) dst.push_back(m);
      }
    v.vaccines.push_back(x.name);
    if (!x.short_name.empty()) v.vaccines.push_back(x.short_name);
  }
  for (const auto& s : t.radiology) v.procedures.push_back(s.name);
  for (const auto& s : t.cardiology) v.procedures.push_back(s.name);
  for (const auto& s : t.surgery) v.procedures.push_back(s.name);
  for (const auto& s : t.pathology) v.procedures.push_back(s.procedure);
  for (const auto& f : t.followups) v.followups.push_back(f.text);
  for (const auto* list : {&t.credentials, &t.nurse_credentials, &t.pharmacist_credentials})
    for (const auto& c : *list) {
      v.credentials.push_back(c);
      // "BSN, RN": the last credential of a list is what follows the last comma.
      if (auto k = c.rfind(", "); k != std::string::npos) v.credentials.push_back(c.substr(k + 2));
    }
  for (const auto& f : t.orders) v.followups.push_back(f.text);

  // Physiologically possible bounds of vitals (vitals.json "possible": {"unit": [low, high]}): a value
  // outside them is a misread (value_checks.hpp).
  {
    const auto vitals_file = dir / "clinical" / "vitals.json";
    const auto vj = load_json(vitals_file);
    if (vj.contains("vitals") && vj["vitals"].is_array())
      for (const auto& x : vj["vitals"]) {
        if (!x.is_object() || !x.contains("possible")) continue;
        const auto& pb = x["possible"];
        if (!pb.is_object())
          fail(Errc::kInvalidInput, "{}: vital \"{}\": \"possible\" must be an object of unit -> [low, high]",
               vitals_file.string(), x.value("id", std::string()));
        std::map<std::string, std::pair<double, double>> bounds;
        for (const auto& [unit, b] : pb.items()) {
          if (!b.is_array() || b.size() != 2 || !b[0].is_number() || !b[1].is_number() ||
              b[0].get<double>() > b[1].get<double>())
            fail(Errc::kInvalidInput,
                 "{}: vital \"{}\": possible[\"{}\"] must be [low, high] with low <= high",
                 vitals_file.string(), x.value("id", std::string()), unit);
          bounds[unit] = {b[0].get<double>(), b[1].get<double>()};
        }
        for (const char* key : {"name", "abbr"})
          if (x.contains(key) && x[key].is_string() && !x[key].get<std::string>().empty())
            v.vital_bounds[to_lower(x[key].get<std::string>())] = bounds;
      }
  }

  auto sections_file = dir / "extract" / "sections.json";
  auto sj = load_json(sections_file);
  if (!sj.contains("sections") || !sj["sections"].is_object())
    fail(Errc::kInvalidInput, "{}: \"sections\" must be an object", sections_file.string());
  for (const auto& [kind, list] : sj["sections"].items())
    v.sections[kind] = strings(list, sections_file, "sections");

  auto labels_file = dir / "extract" / "labels.json";
  auto lj = load_json(labels_file);
  for (const char* key : {"labels", "sex_values", "status_words", "diagnosis_status", "diagnosis_roles",
                          "lab_flags", "no_known_allergies", "severities", "dose_units", "strength_units"})
    if (!lj.contains(key)) fail(Errc::kInvalidInput, "{}: \"{}\" is missing", labels_file.string(), key);
  for (const auto& [field, list] : lj["labels"].items())
    v.labels[field] = strings(list, labels_file, "labels");
  v.sex_values = string_map(lj["sex_values"], labels_file, "sex_values");
  v.status_words = string_map(lj["status_words"], labels_file, "status_words");
  v.diagnosis_status = string_map(lj["diagnosis_status"], labels_file, "diagnosis_status");
  v.diagnosis_roles = string_map(lj["diagnosis_roles"], labels_file, "diagnosis_roles");
  v.lab_flags = string_map(lj["lab_flags"], labels_file, "lab_flags");
  v.severities = string_map(lj["severities"], labels_file, "severities");
  v.no_known_allergies = strings(lj["no_known_allergies"], labels_file, "no_known_allergies");
  if (lj.contains("ocr_fixes")) v.ocr_fixes = string_map(lj["ocr_fixes"], labels_file, "ocr_fixes");
  v.dose_units = strings(lj["dose_units"], labels_file, "dose_units");
  v.strength_units = strings(lj["strength_units"], labels_file, "strength_units");
  if (lj.contains("medication_table_columns")) {
    if (!lj["medication_table_columns"].is_object())
      fail(Errc::kInvalidInput, "{}: \"medication_table_columns\" must be an object", labels_file.string());
    for (const auto& [kind, list] : lj["medication_table_columns"].items())
      v.medication_columns[kind] = strings(list, labels_file, "medication_table_columns");
  }
  if (lj.contains("department_words"))
    v.department_words = strings(lj["department_words"], labels_file, "department_words");
  if (lj.contains("strength_tail_units"))
    v.strength_tail_units = strings(lj["strength_tail_units"], labels_file, "strength_tail_units");
  // The dose units of the drug and infusion tables ("mcg/kg/min", "units/hr") are dose units as printed.
  for (const auto& d : t.drugs)
    if (!d.dose_unit.empty()) v.dose_units.push_back(d.dose_unit);
  for (const auto& d : t.infusions)
    if (!d.dose_unit.empty()) v.dose_units.push_back(d.dose_unit);
  for (auto& u : t.dose_unit_abbr) {
    v.dose_units.push_back(u.first);
    v.dose_units.push_back(u.second);
  }
  for (auto& u : t.dose_unit_plural) {
    v.dose_units.push_back(u.first);
    v.dose_units.push_back(u.second);
  }
  auto types_file = dir / "extract" / "document_types.json";
  auto tj = load_json(types_file);
  if (!tj.contains("document_types") || !tj["document_types"].is_object())
    fail(Errc::kInvalidInput, "{}: \"document_types\" must be an object", types_file.string());
  for (const auto& [type, list] : tj["document_types"].items())
    v.document_types.emplace_back(type, strings(list, types_file, "document_types"));
  if (tj.contains("cues")) {
    if (!tj["cues"].is_object())
      fail(Errc::kInvalidInput, "{}: \"cues\" must be an object", types_file.string());
    for (const auto& [type, list] : tj["cues"].items())
      v.document_cues.emplace_back(type, strings(list, types_file, "cues"));
  }
  for (auto* list : {&v.drugs, &v.lab_tests, &v.lab_results, &v.vitals, &v.route_abbr, &v.route_long,
                     &v.freq_words, &v.prn_words, &v.allergens, &v.vaccines, &v.procedures, &v.followups,
                     &v.dose_units, &v.strength_units, &v.strength_tail_units, &v.lab_units, &v.vital_units,
                     &v.no_known_allergies, &v.credentials})
    sort_longest_first(*list);
  for (auto& [k, list] : v.sections) sort_longest_first(list);
  for (auto& [k, list] : v.labels) sort_longest_first(list);
  return v;
}

// ---------------------------------------------------------------------------------------------- medications

namespace {

struct SigRegexes {
  std::regex strength, strength_tail, dose, duration, quantity, hash_qty, refills, paren;
  explicit SigRegexes(const Vocabulary& v) {
    const std::string num = R"((\d+(?:[.,]\d+)?(?:/\d+(?:\.\d+)?)?))";
    strength =
        std::regex(num + R"(\s?()" + alternation(v.strength_units) + R"()(?![A-Za-z]))", std::regex::icase);
    // The rest of a combination or concentration strength: "/125 mL", "/ 2.5 mg", " per 3 mL", "/24 hr".
    strength_tail = std::regex(R"(^(?:\s?/\s?(?:\d+(?:[.,]\d+)?\s?)?|\s+per\s+(?:\d+(?:[.,]\d+)?\s?)?)(?:)" +
                                   alternation(v.strength_tail_units) + R"()(?![A-Za-z/]))",
                               std::regex::icase);
    // A dose and its unit may stand in two columns of a table ("10  mg/hr"): up to two spaces between.
    dose = std::regex(R"((\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)?|one|two|three|half)\s{0,2}()" +
                          alternation(v.dose_units) + R"()(?![A-Za-z]))",
                      std::regex::icase);
    duration = std::regex(R"((?:\bx|\bfor|×)\s*(\d+(?:-\d+)?\s*(?:days?|weeks?|months?|doses?|hours?))\b)",
                          std::regex::icase);
    quantity =
        std::regex(R"(\b(?:Disp(?:ense)?|Qty|Quantity)\s*[:#]?\s*(#?\s?\d+(?:\s(?!Refills)[A-Za-z]+)?))",
                   std::regex::icase);
    hash_qty = std::regex(R"((#\s?\d+))");
    refills = std::regex(R"(\bRefills?\s*[:#]?\s*(\d+))", std::regex::icase);
    paren = std::regex(R"(\(([^()]{2,80})\))");
  }
};

const SigRegexes& regexes(const Vocabulary& v) {
  static thread_local const Vocabulary* owner = nullptr;
  static thread_local std::unique_ptr<SigRegexes> r;
  if (owner != &v || !r) {
    r = std::make_unique<SigRegexes>(v);
    owner = &v;
  }
  return *r;
}

void set_field(ParsedMedication& m, const char* field, std::optional<std::string>& slot, std::string value,
               Span span) {
  if (slot || value.empty()) return;
  slot = std::move(value);
  m.spans[field] = span;
}

}  // namespace

void parse_sig_into(std::string_view text, std::size_t off, const Vocabulary& v, ParsedMedication& m) {
  const auto& rx = regexes(v);
  std::string s(text);
  std::smatch mt;
  // Strength: the first number+strength unit right after the name (before any dose).
  std::size_t sig_from = 0;
  if (!m.med.strength && std::regex_search(s, mt, rx.strength) && mt.position(0) <= 3) {
    // The strength as printed, with the tail of a combination or concentration ("500 mg/125 mg",
    // "125 mg/125 mL", "0.5 mg/2.5 mg per 3 mL"), so that the second amount is not read as a dose.
    std::size_t b = mt.position(0), e = b + mt.length(0);
    if (!v.strength_tail_units.empty()) {
      std::smatch tail;
      while (e < s.size() &&
             std::regex_search(s.cbegin() + static_cast<std::ptrdiff_t>(e), s.cend(), tail, rx.strength_tail))
        e += tail.length(0);
    }
    set_field(m, "strength", m.med.strength, s.substr(b, e - b), {off + b, off + e});
    sig_from = e;
  }
  std::string rest = s.substr(sig_from);
  std::size_t roff = off + sig_from;
  // Dose and unit: a number with a dose unit.
  if (!m.med.dose && std::regex_search(rest, mt, rx.dose)) {
    std::string d = mt[1].str();
    m.med.dose = d;
    m.spans["dose"] = {roff + mt.position(1), roff + mt.position(1) + mt.length(1)};
    m.med.unit = mt[2].str();
    m.spans["unit"] = {roff + mt.position(2), roff + mt.position(2) + mt.length(2)};
  }
  // Route: abbreviations are case-sensitive (PO, IV, SC, IN), long forms are not.
  if (!m.med.route) {
    auto a = find_longest(rest, v.route_abbr, 0, true);
    auto l = find_longest(rest, v.route_long, 0, false);
    auto pick = a && (!l || a->second.first <= l->second.first) ? a : l;
    if (pick) {
      m.med.route = rest.substr(pick->second.first, pick->second.second - pick->second.first);
      m.spans["route"] = {roff + pick->second.first, roff + pick->second.second};
    }
  }
  if (!m.med.frequency) {
    if (auto f = find_longest(rest, v.freq_words)) {
      m.med.frequency = rest.substr(f->second.first, f->second.second - f->second.first);
      m.spans["frequency"] = {roff + f->second.first, roff + f->second.second};
    }
  }
  if (!m.med.prn) {
    for (const auto& w : v.prn_words) {
      std::size_t p = find_phrase(rest, w);
      if (p == std::string::npos) continue;
      m.med.prn = true;
      m.spans["prn"] = {roff + p, roff + p + w.size()};
      // "PRN pain" / "as needed for nausea": the indication follows in the same cell (the next cell of a
      // table row is another column).
      std::string after = rest.substr(p + w.size());
      static const std::regex ind(
          R"(^ ?(?:for\s+)?([A-Za-z][A-Za-z /-]{1,40}?)(?=\s{2,}|\s*[(;,.]|\s+x\s|\s+for\s\d|$))");
      std::smatch im;
      if (!m.med.indication && std::regex_search(after, im, ind)) {
        std::string t = trim(im[1].str());
        if (t.size() > 2) {
          m.med.indication = t;
          std::size_t b = roff + p + w.size() + im.position(1);
          m.spans["indication"] = {b, b + im.length(1)};
        }
      }
      break;
    }
  }
  if (!m.med.duration && std::regex_search(rest, mt, rx.duration)) {
    m.med.duration = mt[1].str();
    m.spans["duration"] = {roff + mt.position(1), roff + mt.position(1) + mt.length(1)};
  }
  if (!m.med.indication) {
    for (auto it = std::sregex_iterator(rest.begin(), rest.end(), rx.paren); it != std::sregex_iterator();
         ++it) {
      std::string t = trim((*it)[1].str());
      std::string lt = to_lower(t);
      if (v.severities.count(lt) || v.status_words.count(lt)) continue;
      if (!t.empty() && std::isdigit(static_cast<unsigned char>(t[0]))) continue;
      m.med.indication = t;
      m.spans["indication"] = {roff + it->position(1), roff + it->position(1) + it->length(1)};
      break;
    }
  }
  if (!m.med.quantity) {
    if (std::regex_search(rest, mt, rx.quantity)) {
      m.med.quantity = trim(mt[1].str());
      m.spans["quantity"] = {roff + mt.position(1), roff + mt.position(1) + mt.length(1)};
    } else if (std::regex_search(rest, mt, rx.hash_qty)) {
      m.med.quantity = mt[1].str();
      m.spans["quantity"] = {roff + mt.position(1), roff + mt.position(1) + mt.length(1)};
    }
  }
  if (!m.med.refills && std::regex_search(rest, mt, rx.refills)) {
    int r = std::stoi(mt[1].str());
    if (r >= 0 && r <= 99) {
      m.med.refills = r;
      m.spans["refills"] = {roff + mt.position(1), roff + mt.position(1) + mt.length(1)};
    }
  }
  if (!m.med.status) {
    // A status word standing alone as a cell (two-space separated) or at the end.
    std::string lr = to_lower(rest);
    for (const auto& [word, status] : v.status_words) {
      std::size_t p = find_phrase(lr, word);
      if (p == std::string::npos) continue;
      bool alone_before = p == 0 || (p >= 2 && lr.substr(p - 2, 2) == "  ") || (p >= 1 && lr[p - 1] == '(');
      std::size_t e = p + word.size();
      bool alone_after = e == lr.size() || (e + 1 < lr.size() && lr.substr(e, 2) == "  ") || lr[e] == ')';
      if (alone_before && alone_after) {
        m.med.status = status;
        m.spans["status"] = {roff + p, roff + e};
        break;
      }
    }
  }
}

std::optional<ParsedMedication> parse_medication(std::string_view text, const Vocabulary& v,
                                                 std::optional<Span> name_span) {
  ParsedMedication m;
  Span ns;
  if (name_span) {
    ns = *name_span;
  } else {
    auto found = find_longest(text, v.drugs);
    if (!found) return std::nullopt;
    ns = found->second;
  }
  m.med.name = std::string(text.substr(ns.first, ns.second - ns.first));
  m.spans["name"] = ns;
  std::size_t after = ns.second;
  while (after < text.size() && text[after] == ' ') ++after;
  parse_sig_into(text.substr(after), after, v, m);
  return m;
}

// ---------------------------------------------------------------------------------------------------- labs

std::optional<std::string> normalise_flag(std::string_view printed, const Vocabulary& v) {
  std::string t = trim(printed);
  // Flag codes are printed in capitals ("L", "HH"); a lower-case "l" or "ll" is a column rule or a bar
  // that OCR read as letters.
  if (!t.empty() && t.size() <= 2 &&
      std::all_of(t.begin(), t.end(), [](char c) { return std::islower(static_cast<unsigned char>(c)); }))
    return std::nullopt;
  std::string p = to_lower(t);
  auto it = v.lab_flags.find(p);
  if (it != v.lab_flags.end()) return it->second;
  return std::nullopt;
}

std::optional<std::string> derive_flag(std::string_view value, std::string_view range) {
  double x = 0;
  std::string vs = trim(value);
  if (vs.empty() || vs[0] == '<' || vs[0] == '>' || !parse_double(vs, x)) return std::nullopt;
  std::string r = trim(range);
  static const std::regex two(R"(^(-?\d+(?:\.\d+)?)\s*(?:-|–|to)\s*(-?\d+(?:\.\d+)?)$)");
  static const std::regex one(R"(^([<>]=?|≤|≥)\s*(\d+(?:\.\d+)?)$)");
  std::smatch m;
  double lo = 0, hi = 0;
  if (std::regex_match(r, m, two) && parse_double(m[1].str(), lo) && parse_double(m[2].str(), hi)) {
    if (x < lo) return "L";
    if (x > hi) return "H";
    return "N";
  }
  if (std::regex_match(r, m, one) && parse_double(m[2].str(), hi)) {
    std::string op = m[1].str();
    if (op[0] == '<' || op == "≤") return x >= hi && !(op == "<=" && x == hi) ? "H" : "N";
    return x <= hi && !(op == ">=" && x == hi) ? "L" : "N";
  }
  return std::nullopt;
}

namespace {

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// A unit as compared with the vocabulary: letter case folded (OCR confuses l/L, u/U in small print) and
// the power sign of "x10^3" in the forms OCR reads it ("x10°3", "x10*3", "x10%3", "x10*°6") made "^".
std::string unit_compare_form(std::string_view u) {
  std::string s = to_lower(u);
  static const std::regex power("x10(?:\xC2\xB0|[*%^])+");  // \xC2\xB0: the degree sign
  return std::regex_replace(s, power, "x10^");
}

}  // namespace

std::optional<std::string> nearest_term(std::string_view printed, const std::vector<std::string>& terms) {
  const std::string t = to_lower(printed);
  if (t.empty()) return std::nullopt;
  std::optional<std::string> best;
  std::size_t best_d = std::string::npos, ties = 0;
  for (const auto& term : terms) {
    const std::size_t d = edit_distance(t, to_lower(term));
    if (d < best_d)
      best = term, best_d = d, ties = 1;
    else if (d == best_d && best && to_lower(*best) != to_lower(term))
      ++ties;
  }
  if (!best) return std::nullopt;
  if (best_d == 0) return best;
  const std::size_t allowed = std::min(t.size(), best->size()) >= 8 ? 2 : 1;
  if (best_d <= allowed && ties == 1) return best;
  return std::nullopt;
}

std::string snap_vital_unit(std::string_view printed, std::string_view vital_lower, const Vocabulary& v) {
  auto it = v.vital_units_of.find(std::string(vital_lower));
  if (it == v.vital_units_of.end()) return std::string(printed);
  std::string t(printed);
  while (!t.empty() && std::strchr("([|'\"", t.front())) t.erase(t.begin());
  while (!t.empty() && std::strchr(")]|.,", t.back())) t.pop_back();
  if (t.empty()) return std::string(printed);
  const std::string tc = unit_compare_form(t);
  std::string best;
  std::size_t best_d = std::string::npos, ties = 0;
  for (const auto& u : it->second) {
    const std::size_t d = edit_distance(tc, unit_compare_form(u));
    if (d < best_d)
      best = u, best_d = d, ties = 1;
    else if (d == best_d)
      ++ties;
  }
  if (best_d == 0) return best;
  const std::size_t allowed = std::max(best.size(), t.size()) >= 4 ? 2 : 1;
  if (best_d <= allowed && ties == 1) return best;
  return std::string(printed);
}

std::string snap_lab_unit(std::string_view printed, std::string_view test_lower, const Vocabulary& v) {
  // OCR reads a table rule or speck before a unit as a quote or slash ("‘g/dL", "/mg/dL", "_mg/dL") and
  // misreads its last letters ("mg/dt", "g/d.", "mmoV/L"). A unit cell that is not a known unit is read as
  // the nearest unit of the vocabulary when it is close (the test's usual unit wins a tie); anything else
  // is kept as printed.
  std::string t(printed);
  static const std::vector<std::string> junk = {"\xe2\x80\x98",
                                                "\xe2\x80\x99",
                                                "\xe2\x80\x9c",
                                                "\xe2\x80\x9d",
                                                "'",
                                                "\"",
                                                "/",
                                                "_",
                                                "|",
                                                "\\",
                                                "(",
                                                "["};
  for (bool again = true; again && !t.empty();) {
    again = false;
    for (const auto& j : junk)
      if (t.size() > j.size() && t.compare(0, j.size(), j) == 0) {
        t.erase(0, j.size());
        again = true;
      }
  }
  while (!t.empty() && (t.back() == '.' || t.back() == ',' || t.back() == '|' || t.back() == ')'))
    t.pop_back();
  if (t.empty()) return std::string(printed);
  std::string usual;
  if (auto it = v.lab_unit.find(std::string(test_lower)); it != v.lab_unit.end()) usual = it->second;
  std::string best;
  std::size_t best_d = std::string::npos;
  const std::string tc = unit_compare_form(t);
  for (const auto& u : v.lab_units) {
    std::size_t d = edit_distance(tc, unit_compare_form(u));
    if (d < best_d || (d == best_d && u == usual)) best = u, best_d = d;
  }
  if (best_d == 0) return best;
  const std::size_t allowed = std::max<std::size_t>(best.size(), t.size()) >= 5 ? 2 : 1;
  if (best_d <= allowed && (best == usual || best_d == 1)) return best;
  return std::string(printed);
}

std::optional<ParsedLab> parse_lab_row(std::string_view text, const Vocabulary& v) {
  auto name = find_longest(text, v.lab_tests);
  if (!name || name->second.first > 4) return std::nullopt;
  ParsedLab p;
  Span ns = name->second;
  // Extend the name over a printed qualifier that follows it without a column gap: "LDL Cholesterol (calc)".
  std::string s(text);
  std::size_t e = ns.second;
  std::optional<std::pair<std::string, Span>> unit_after_name;  // "Glucose (mg/dL)": the unit, not the name
  if (e + 1 < s.size() && s[e] == ' ' && s[e + 1] == '(') {
    std::size_t close = s.find(')', e);
    if (close != std::string::npos && close - e < 20 &&
        s.substr(e, close - e).find("  ") == std::string::npos) {
      const std::string inner = s.substr(e + 2, close - e - 2);
      const bool is_unit =
          std::find(v.lab_units.begin(), v.lab_units.end(), inner) != v.lab_units.end() ||
          (inner.find('/') != std::string::npos &&
           snap_lab_unit(inner, to_lower(s.substr(ns.first, ns.second - ns.first)), v) != inner);
      if (is_unit)
        unit_after_name = std::make_pair(inner, Span{e + 2, close});
      else
        e = close + 1;
    }
  }
  ns.second = e;
  p.lab.test = s.substr(ns.first, ns.second - ns.first);
  // A name that differs from the vocabulary's only in letter case was misread ("co2"): the vocabulary's.
  if (ns.second == name->second.second && p.lab.test != name->first) p.lab.test = name->first;
  p.spans["test"] = ns;
  const std::size_t off = unit_after_name ? unit_after_name->second.second + 1 : ns.second;
  std::string rest = s.substr(off);
  if (rest.find_first_not_of(" :") == std::string::npos) return std::nullopt;
  // Tokens of the rest, split on whitespace but keeping cells: we walk tokens left to right.
  struct Tok {
    std::string t;
    Span sp;
    bool cell_start;
  };
  std::vector<Tok> toks;
  for (std::size_t i = 0; i < rest.size();) {
    while (i < rest.size() && rest[i] == ' ') ++i;
    if (i >= rest.size()) break;
    std::size_t j = i;
    while (j < rest.size() && rest[j] != ' ') ++j;
    bool cs = i >= 2 && rest[i - 1] == ' ' && rest[i - 2] == ' ';
    toks.push_back({rest.substr(i, j - i), {off + i, off + j}, cs || toks.empty()});
    i = j;
  }
  static const std::regex num_re(R"(^[<>]?=?\d+(?:[.,]\d+)?$)");
  static const std::regex range_re(R"(^[<>]=?\s?\d+(?:\.\d+)?$|^-?\d+(?:\.\d+)?-\d+(?:\.\d+)?$)");
  // OCR reads a zero as the letter O inside numbers ("O.1-1.2", "1O.5"): in a token of digits, decimal
  // points, range dashes and comparators, an O next to a digit or point is a zero.
  static const std::regex numeric_shape(R"(^[<>]?=?[0-9Oo.]+(?:-[0-9Oo.]+)?$)");
  for (auto& tk : toks)
    if (tk.t.find_first_of("Oo") != std::string::npos &&
        tk.t.find_first_of("0123456789") != std::string::npos && std::regex_match(tk.t, numeric_shape))
      for (char& ch : tk.t)
        if (ch == 'O' || ch == 'o') ch = '0';
  std::string lname = to_lower(p.lab.test);
  static const std::regex loinc_re(R"(^\d{1,5}-\d$)");
  // A qualitative result or normal of one or more words ("Not Detected") starting at token k, within one
  // cell: the number of tokens, or 0.
  auto qualitative_at = [&](std::size_t k) -> std::size_t {
    std::size_t best = 0;
    for (const auto& r : v.lab_results) {
      const std::string lr = to_lower(r);
      std::string joined;
      std::size_t n = 0;
      for (std::size_t j = k; j < toks.size() && joined.size() < lr.size(); ++j, ++n) {
        if (j > k && toks[j].cell_start) break;
        if (!joined.empty()) joined += ' ';
        joined += to_lower(toks[j].t);
      }
      if (joined == lr && n > best) best = n;
    }
    return best;
  };
  auto join_tokens = [&](std::size_t k, std::size_t n) {
    return s.substr(toks[k].sp.first, toks[k + n - 1].sp.second - toks[k].sp.first);
  };
  bool qualitative_range = false;
  bool unit_before_value = false;  // a unit cell came before any value: the result column was not read
  bool flag_before_value = false;  // likewise a flag cell
  int skipped = 0;                 // words between the name and the value
  for (std::size_t k = 0; k < toks.size(); ++k) {
    const std::string& t = toks[k].t;
    std::string lt = to_lower(t);
    if (t == ":" || t == "-" || t == "|") continue;
    // A LOINC code printed right after the name (before the value): "Sodium 2951-2  143 ...".
    if (p.lab.value.empty() && !p.printed_loinc && std::regex_match(t, loinc_re)) {
      p.printed_loinc = t;
      p.spans["loinc"] = toks[k].sp;
      continue;
    }
    // value
    if (p.lab.value.empty()) {
      if (std::regex_match(t, num_re) && !(k + 1 < toks.size() && toks[k + 1].t == "-")) {
        // A result table prints the result before its unit, so a number after a unit cell is the
        // reference range ("eGFR  mL/min/1.73m2  >60" with the result cell lost): no result in this row.
        if (unit_before_value || flag_before_value) return std::nullopt;
        // A number followed by a time word is a time, not a result ("Troponin I, repeat in 3 hours").
        if (k + 1 < toks.size()) {
          std::string nx = to_lower(toks[k + 1].t);
          while (!nx.empty() && std::ispunct(static_cast<unsigned char>(nx.back()))) nx.pop_back();
          static const std::vector<std::string> time_words = {
              "min", "mins", "minute", "minutes", "hour",  "hours",  "hr", "hrs", "day",   "days",
              "wk",  "wks",  "week",   "weeks",   "month", "months", "mo", "yr",  "years", "year"};
          if (!toks[k + 1].cell_start &&
              std::find(time_words.begin(), time_words.end(), nx) != time_words.end())
            return std::nullopt;
        }
        p.lab.value = t;
        p.spans["value"] = toks[k].sp;
        continue;
      }
      // A flag printed against the value, or joined to it by OCR: "7.58H", "14L", "0.44L*".
      static const std::regex glued(R"(^([<>]?\d+(?:[.,]\d+)?)([HL]{1,2}[*!]{0,2}|A\*?)$)");
      std::smatch gm;
      if (std::regex_match(t, gm, glued)) {
        if (auto f = normalise_flag(gm[2].str(), v)) {
          p.lab.value = gm[1].str();
          p.spans["value"] = {toks[k].sp.first, toks[k].sp.first + gm.length(1)};
          p.lab.flag = *f;
          p.spans["flag"] = {toks[k].sp.first + gm.position(2), toks[k].sp.second};
          continue;
        }
      }
      if (std::size_t n = qualitative_at(k)) {
        if (unit_before_value || flag_before_value) return std::nullopt;
        p.lab.value = join_tokens(k, n);
        p.spans["value"] = {toks[k].sp.first, toks[k + n - 1].sp.second};
        k += n - 1;
        continue;
      }
      // A flag cell before any value: a result table prints the flag after the result, so the result
      // cell was lost and a number further on belongs to another column ("Creatinine  CRIT HIGH  4.10"
      // with 4.10 under "Prior").
      if (toks[k].cell_start && normalise_flag(t, v)) flag_before_value = true;
      if (toks[k].cell_start && k + 1 < toks.size() && !toks[k + 1].cell_start &&
          normalise_flag(t + " " + toks[k + 1].t, v))
        flag_before_value = true;
      // A unit cell (not a unit in parentheses, which labels the name: "Glucose, fasting (mg/dL)").
      if (toks[k].cell_start && t.front() != '(' &&
          (std::any_of(v.lab_units.begin(), v.lab_units.end(),
                       [&](const std::string& u) { return u == t; }) ||
           (t.find('/') != std::string::npos && snap_lab_unit(t, lname, v) != t)))
        unit_before_value = true;
      // Text before the value (method, specimen: "Glucose, fasting  95"): skipped, but only a few words; a
      // sentence that starts with a test name ("INR check at the clinic: in 3 days") is not a result row.
      if (++skipped > 3) return std::nullopt;
      continue;
    }
    // flag: one or two tokens ("CRIT HIGH", "H !!", "L *")
    if (!p.lab.flag) {
      if (k + 1 < toks.size()) {
        std::string two = t + " " + toks[k + 1].t;
        if (auto f = normalise_flag(two, v); f && !toks[k + 1].cell_start) {
          p.lab.flag = *f;
          p.spans["flag"] = {toks[k].sp.first, toks[k + 1].sp.second};
          ++k;
          continue;
        }
      }
      if (auto f = normalise_flag(t, v)) {
        p.lab.flag = *f;
        p.spans["flag"] = toks[k].sp;
        continue;
      }
    }
    // range: "3.5-5.1", "<200", "> 60", "3.5 - 5.1", "-2.0 to 2.0"
    if (!p.lab.reference_range) {
      if (std::regex_match(t, range_re)) {
        p.lab.reference_range = t;
        p.spans["reference_range"] = toks[k].sp;
        continue;
      }
      if ((t == "<" || t == ">") && k + 1 < toks.size() && std::regex_match(toks[k + 1].t, num_re)) {
        p.lab.reference_range = t + toks[k + 1].t;
        p.spans["reference_range"] = {toks[k].sp.first, toks[k + 1].sp.second};
        ++k;
        continue;
      }
      if (k + 2 < toks.size() && std::regex_match(t, num_re) &&
          (toks[k + 1].t == "-" || toks[k + 1].t == "to") && std::regex_match(toks[k + 2].t, num_re)) {
        p.lab.reference_range = s.substr(toks[k].sp.first, toks[k + 2].sp.second - toks[k].sp.first);
        p.spans["reference_range"] = {toks[k].sp.first, toks[k + 2].sp.second};
        k += 2;
        continue;
      }
      if (std::size_t n = qualitative_at(k)) {
        p.lab.reference_range = join_tokens(k, n);
        p.spans["reference_range"] = {toks[k].sp.first, toks[k + n - 1].sp.second};
        qualitative_range = true;
        k += n - 1;
        continue;
      }
    } else if (qualitative_range) {
      // A later qualitative result replaces an earlier one: a prior-result column comes before the range.
      if (std::size_t n = qualitative_at(k)) {
        p.lab.reference_range = join_tokens(k, n);
        p.spans["reference_range"] = {toks[k].sp.first, toks[k + n - 1].sp.second};
        k += n - 1;
        continue;
      }
    }
    // unit: a known unit, or anything with a slash or %
    if (!p.lab.unit) {
      bool known =
          std::any_of(v.lab_units.begin(), v.lab_units.end(), [&](const std::string& u) { return u == t; });
      if (known || t.find('/') != std::string::npos || t == "%" || t.find('^') != std::string::npos) {
        if (!std::regex_match(t, num_re)) {
          p.lab.unit = known ? t : snap_lab_unit(t, lname, v);
          p.spans["unit"] = toks[k].sp;
          continue;
        }
      }
    }
  }
  if (p.lab.value.empty()) return std::nullopt;
  if (!p.lab.unit && unit_after_name) {
    const auto& [u, sp] = *unit_after_name;
    const bool known = std::find(v.lab_units.begin(), v.lab_units.end(), u) != v.lab_units.end();
    p.lab.unit = known ? u : snap_lab_unit(u, lname, v);
    p.spans["unit"] = sp;
  }
  if (auto it = v.lab_loinc.find(lname); it != v.lab_loinc.end()) p.lab.loinc = it->second;
  return p;
}

// --------------------------------------------------------------------------------------------------- dates

std::optional<std::string> normalise_date(std::string_view text, bool with_time, Span* span) {
  static const std::regex iso(R"((\d{4})-(\d{1,2})-(\d{1,2})(?:[ T](\d{1,2}):(\d{2}))?)");
  static const std::regex us(R"((\d{1,2})/(\d{1,2})/(\d{2,4})(?:,?\s+(\d{1,2}):(\d{2}))?)");
  static const std::regex dmy(R"((\d{1,2})[- ]([A-Za-z]{3})[a-z]*[- ,]+(\d{4})(?:,?\s+(\d{1,2}):(\d{2}))?)");
  static const std::regex mdy(R"(([A-Za-z]{3})[a-z]*\.? (\d{1,2}),? (\d{4})(?:,?\s+(\d{1,2}):(\d{2}))?)");
  static const char* months[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                 "jul", "aug", "sep", "oct", "nov", "dec"};
  std::string s(text);
  std::smatch m;
  int y = 0, mo = 0, d = 0;
  std::string hh, mm;
  auto month_of = [&](const std::string& name) {
    std::string l = to_lower(name.substr(0, 3));
    for (int i = 0; i < 12; ++i)
      if (l == months[i]) return i + 1;
    return 0;
  };
  std::size_t pos = 0, len = 0;
  if (std::regex_search(s, m, iso)) {
    y = std::stoi(m[1]), mo = std::stoi(m[2]), d = std::stoi(m[3]);
    hh = m[4], mm = m[5];
  } else if (std::regex_search(s, m, us)) {
    mo = std::stoi(m[1]), d = std::stoi(m[2]), y = std::stoi(m[3]);
    if (m[3].length() == 2) y += y <= 26 ? 2000 : 1900;
    hh = m[4], mm = m[5];
  } else if (std::regex_search(s, m, dmy) && month_of(m[2])) {
    d = std::stoi(m[1]), mo = month_of(m[2]), y = std::stoi(m[3]);
    hh = m[4], mm = m[5];
  } else if (std::regex_search(s, m, mdy) && month_of(m[1])) {
    mo = month_of(m[1]), d = std::stoi(m[2]), y = std::stoi(m[3]);
    hh = m[4], mm = m[5];
  } else {
    return std::nullopt;
  }
  pos = m.position(0);
  len = m.length(0);
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || y < 1000) return std::nullopt;
  std::string out = fmt::format("{:04d}-{:02d}-{:02d}", y, mo, d);
  if (with_time && !hh.empty()) {
    int h = std::stoi(hh), mi = std::stoi(mm);
    // A 12-hour clock: "1:45 PM", "12:10 am".
    static const std::regex ampm(R"(^\s?([AaPp])\.?[Mm]\.?\b)");
    std::smatch am;
    const std::string after = s.substr(pos + len);
    if (h >= 1 && h <= 12 && std::regex_search(after, am, ampm)) {
      const bool pm = am[1].str() == "P" || am[1].str() == "p";
      h = pm ? (h % 12) + 12 : h % 12;
      len += static_cast<std::size_t>(am.length(0));
    }
    if (h <= 23 && mi <= 59) out += fmt::format("T{:02d}:{:02d}", h, mi);
  } else if (!hh.empty()) {
    len = static_cast<std::size_t>(m.position(4) - m.position(0));
    while (len > 0 && (s[pos + len - 1] == ' ' || s[pos + len - 1] == ',')) --len;
  }
  if (span) *span = {pos, pos + len};
  return out;
}

}  // namespace mv::extract
