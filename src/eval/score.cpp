#include "eval/score.hpp"

#include <utf8proc.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "core/error.hpp"

namespace mv::eval {

using nlohmann::json;

namespace {

enum class Kind {
  kName,        // an item's key: folded text, synonym groups, relaxed by similarity
  kText,        // free text: folded text, relaxed by similarity
  kTextOrDate,  // follow-up "when": a date when both sides are dates, else text
  kCode,        // LOINC, lot, MRN: upper case without spaces
  kIcd,         // ICD-10: as kCode, dot optional
  kEnum,        // closed vocabularies of the schema
  kFlag,        // lab flag (HL7 v3 interpretation)
  kQuantity,    // self-contained printed quantity ("25 mg", "10 mg/325 mg")
  kValue,       // number whose unit is the sibling field (dose/unit, value/unit)
  kUnit,        // unit whose number is the sibling field
  kDate,
  kRoute,
  kFrequency,
  kRange,
  kScalar,  // booleans and integers: JSON equality
};

struct FieldSpec {
  FieldSpec(std::string n, Kind k, std::string s = {}, bool a = false)
      : name(std::move(n)), kind(k), sibling(std::move(s)), assigned(a) {}
  std::string name;
  Kind kind;
  std::string sibling;  // kValue <-> kUnit
  // A code an extractor may assign from a vocabulary although the page does not print it (LOINC): scored
  // only where the truth has it (medical-extraction.md §4.2.7 scores assigned codes apart from reading).
  bool assigned = false;
};

struct SectionSpec {
  std::string name;
  bool list;  // item list (else a single block)
  std::vector<FieldSpec> fields;
};

const std::vector<SectionSpec>& specs() {
  static const std::vector<SectionSpec> kSpecs = {
      {"diagnoses",
       true,
       {{"text", Kind::kName}, {"icd10", Kind::kIcd}, {"status", Kind::kEnum}, {"role", Kind::kEnum}}},
      {"medications",
       true,
       {{"name", Kind::kName},
        {"strength", Kind::kQuantity},
        {"dose", Kind::kValue, "unit"},
        {"unit", Kind::kUnit, "dose"},
        {"form", Kind::kText},
        {"route", Kind::kRoute},
        {"frequency", Kind::kFrequency},
        {"prn", Kind::kScalar},
        {"duration", Kind::kText},
        {"indication", Kind::kText},
        {"status", Kind::kEnum},
        {"quantity", Kind::kText},
        {"refills", Kind::kScalar}}},
      {"labs",
       true,
       {{"test", Kind::kName},
        {"value", Kind::kValue, "unit"},
        {"unit", Kind::kUnit, "value"},
        {"reference_range", Kind::kRange},
        {"flag", Kind::kFlag},
        {"time", Kind::kDate},
        {"loinc", Kind::kCode, "", true},
        {"panel", Kind::kText}}},
      {"vitals",
       true,
       {{"name", Kind::kName},
        {"value", Kind::kValue, "unit"},
        {"unit", Kind::kUnit, "value"},
        {"time", Kind::kDate}}},
      {"allergies", true, {{"substance", Kind::kName}, {"reaction", Kind::kText}, {"severity", Kind::kEnum}}},
      {"procedures",
       true,
       {{"name", Kind::kName},
        {"date", Kind::kDate},
        {"findings", Kind::kText},
        {"impression", Kind::kText}}},
      {"immunizations",
       true,
       {{"vaccine", Kind::kName},
        {"date", Kind::kDate},
        {"dose_number", Kind::kScalar},
        {"manufacturer", Kind::kText},
        {"lot", Kind::kCode},
        {"route", Kind::kRoute},
        {"site", Kind::kText}}},
      {"followups", true, {{"text", Kind::kName}, {"when", Kind::kTextOrDate}}},
      {"patient",
       false,
       {{"name", Kind::kText}, {"birth_date", Kind::kDate}, {"mrn", Kind::kCode}, {"sex", Kind::kEnum}}},
      {"encounter",
       false,
       {{"date", Kind::kDate},
        {"admission_date", Kind::kDate},
        {"discharge_date", Kind::kDate},
        {"facility", Kind::kText},
        {"department", Kind::kText},
        {"provider", Kind::kText}}},
      {"document", false, {{"document_type", Kind::kEnum}, {"no_known_allergies", Kind::kScalar}}},
  };
  return kSpecs;
}

std::string str(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

bool has(const json& item, const std::string& f) {
  return item.is_object() && item.contains(f) && !item[f].is_null();
}

std::optional<std::string> opt_str(const json& item, const std::string& f) {
  if (!has(item, f)) return std::nullopt;
  return str(item[f]);
}

bool dates_equal(const std::string& a, const std::string& b) {
  const auto da = normalize_date(a), db = normalize_date(b);
  if (da && db) return *da == *db;
  if (da || db) return false;
  return fold_text(a) == fold_text(b);
}

// value/unit pairs: the value is right when the printed numbers are equal, or when both units are
// commensurable (same base, different scale) and the quantities are equal after conversion.
bool value_equal(const json& t, const json& p, const FieldSpec& f) {
  const std::string tv = str(t[f.name]), pv = str(p[f.name]);
  if (quantity_equal(tv, pv)) return true;  // the number as printed (a wrong unit is the unit's error)
  const auto tu = opt_str(t, f.sibling), pu = opt_str(p, f.sibling);
  if (!tu || !pu) return false;
  const Unit a = parse_unit(*tu), b = parse_unit(*pu);
  return a.base == b.base && a.scale != b.scale && quantity_equal(tv + " " + *tu, pv + " " + *pu);
}

bool unit_equal(const json& t, const json& p, const FieldSpec& f) {
  const std::string tu = str(t[f.name]), pu = str(p[f.name]);
  const Unit a = parse_unit(tu), b = parse_unit(pu);
  if (a == b) return true;
  if (a.base != b.base) return false;
  const auto tv = opt_str(t, f.sibling), pv = opt_str(p, f.sibling);
  return tv && pv && quantity_equal(*tv + " " + tu, *pv + " " + pu);
}

std::string name_key(const std::string& section, const std::string& v, const ScoreOptions& o) {
  return o.vocabulary ? o.vocabulary->canonical(section, v) : fold_text(v);
}

// Field equality after normalisation; both items have the field.
bool field_equal(const std::string& section, const FieldSpec& f, const json& t, const json& p,
                 const ScoreOptions& o) {
  const json& a = t[f.name];
  const json& b = p[f.name];
  switch (f.kind) {
    case Kind::kScalar:
      return a == b;
    case Kind::kName:
      return name_key(section, str(a), o) == name_key(section, str(b), o);
    case Kind::kText:
      return fold_text(str(a)) == fold_text(str(b));
    case Kind::kTextOrDate:
      return dates_equal(str(a), str(b));
    case Kind::kCode:
      return normalize_code(str(a), false) == normalize_code(str(b), false);
    case Kind::kIcd:
      return normalize_code(str(a), true) == normalize_code(str(b), true);
    case Kind::kEnum: {
      std::string x = fold_text(str(a)), y = fold_text(str(b));
      std::replace(x.begin(), x.end(), ' ', '_');
      std::replace(y.begin(), y.end(), ' ', '_');
      return x == y;
    }
    case Kind::kFlag:
      return normalize_flag(str(a)) == normalize_flag(str(b));
    case Kind::kQuantity:
      return quantity_equal(str(a), str(b));
    case Kind::kValue:
      return value_equal(t, p, f);
    case Kind::kUnit:
      return unit_equal(t, p, f);
    case Kind::kDate:
      return dates_equal(str(a), str(b));
    case Kind::kRoute:
      return normalize_route(str(a)) == normalize_route(str(b));
    case Kind::kFrequency:
      return normalize_frequency(str(a)) == normalize_frequency(str(b));
    case Kind::kRange:
      return normalize_range(str(a)) == normalize_range(str(b));
  }
  return false;
}

// Relaxed compatibility: free text and names may differ by a few characters (similarity >= threshold);
// everything else (numbers, units, codes, dates, sig) must be equal.
bool field_compatible(const std::string& section, const FieldSpec& f, const json& t, const json& p,
                      const ScoreOptions& o) {
  if (field_equal(section, f, t, p, o)) return true;
  if (f.kind == Kind::kName || f.kind == Kind::kText || f.kind == Kind::kTextOrDate) {
    if (f.kind == Kind::kTextOrDate && (normalize_date(str(t[f.name])) || normalize_date(str(p[f.name]))))
      return false;
    return similarity(fold_text(str(t[f.name])), fold_text(str(p[f.name]))) >= o.key_similarity;
  }
  return false;
}

bool entry_exact(const SectionSpec& s, const json& t, const json& p, const ScoreOptions& o) {
  for (const auto& f : s.fields) {
    const bool ht = has(t, f.name), hp = has(p, f.name);
    if (ht != hp) {
      if (f.assigned && !ht) continue;  // an assigned code the page does not print
      return false;
    }
    if (ht && !field_equal(s.name, f, t, p, o)) return false;
  }
  return true;
}

bool entry_relaxed(const SectionSpec& s, const json& t, const json& p, const ScoreOptions& o) {
  for (const auto& f : s.fields)
    if (has(t, f.name) && has(p, f.name) && !field_compatible(s.name, f, t, p, o)) return false;
  return true;
}

const json& list_of(const json& doc, const std::string& section) {
  static const json kEmpty = json::array();
  if (doc.is_object() && doc.contains(section) && doc[section].is_array()) return doc[section];
  return kEmpty;
}

// The single block of a section as an object ("document" is built from top-level fields).
json block_of(const json& doc, const std::string& section) {
  if (!doc.is_object()) return json::object();
  if (section == "document") {
    json b = json::object();
    if (doc.contains("document_type")) b["document_type"] = doc["document_type"];
    if (doc.contains("no_known_allergies")) b["no_known_allergies"] = doc["no_known_allergies"];
    return b;
  }
  if (doc.contains(section) && doc[section].is_object()) return doc[section];
  return json::object();
}

bool any_field(const SectionSpec& s, const json& item) {
  for (const auto& f : s.fields)
    if (has(item, f.name)) return true;
  return false;
}

// Python-style str.lower() on UTF-8 (per code point).
std::string lower_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  utf8proc_ssize_t left = static_cast<utf8proc_ssize_t>(s.size());
  while (left > 0) {
    utf8proc_int32_t cp = 0;
    const auto n = utf8proc_iterate(p, left, &cp);
    if (n <= 0) {
      out.push_back(static_cast<char>(*p));
      ++p, --left;
      continue;
    }
    utf8proc_uint8_t buf[4];
    const auto m = utf8proc_encode_char(utf8proc_tolower(cp), buf);
    out.append(reinterpret_cast<const char*>(buf), static_cast<std::size_t>(m));
    p += n, left -= n;
  }
  return out;
}

}  // namespace

const std::vector<std::string>& scored_sections() {
  static const std::vector<std::string> kNames = [] {
    std::vector<std::string> v;
    for (const auto& s : specs()) v.push_back(s.name);
    return v;
  }();
  return kNames;
}

const std::vector<std::string>& section_fields(const std::string& section) {
  static const std::map<std::string, std::vector<std::string>> kFields = [] {
    std::map<std::string, std::vector<std::string>> m;
    for (const auto& s : specs())
      for (const auto& f : s.fields) m[s.name].push_back(f.name);
    return m;
  }();
  auto it = kFields.find(section);
  if (it == kFields.end()) fail(Errc::kInternal, "eval: unknown section '{}'", section);
  return it->second;
}

// ---------------------------------------------------------------------------------------------------------
// Hungarian algorithm (shortest augmenting paths with potentials) on a square cost matrix.

std::vector<std::pair<int, int>> max_weight_assignment(const std::vector<std::vector<double>>& w) {
  const int rows = static_cast<int>(w.size());
  const int cols = rows ? static_cast<int>(w[0].size()) : 0;
  if (rows == 0 || cols == 0) return {};
  const int n = std::max(rows, cols);
  double wmax = 0;
  for (const auto& r : w) {
    MV_CHECK(static_cast<int>(r.size()) == cols, "ragged weight matrix");
    for (double x : r) wmax = std::max(wmax, x);
  }
  // cost = wmax - max(w, 0): minimising cost maximises the total positive weight; padding costs wmax.
  auto cost = [&](int i, int j) {
    if (i >= rows || j >= cols) return wmax;
    return wmax - std::max(w[i][j], 0.0);
  };
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> u(n + 1, 0), v(n + 1, 0), minv(n + 1);
  std::vector<int> p(n + 1, 0), way(n + 1, 0);
  std::vector<char> used(n + 1);
  for (int i = 1; i <= n; ++i) {
    p[0] = i;
    int j0 = 0;
    std::fill(minv.begin(), minv.end(), inf);
    std::fill(used.begin(), used.end(), 0);
    do {
      used[j0] = 1;
      const int i0 = p[j0];
      double delta = inf;
      int j1 = 0;
      for (int j = 1; j <= n; ++j) {
        if (used[j]) continue;
        const double cur = cost(i0 - 1, j - 1) - u[i0] - v[j];
        if (cur < minv[j]) minv[j] = cur, way[j] = j0;
        if (minv[j] < delta) delta = minv[j], j1 = j;
      }
      for (int j = 0; j <= n; ++j) {
        if (used[j]) {
          u[p[j]] += delta;
          v[j] -= delta;
        } else {
          minv[j] -= delta;
        }
      }
      j0 = j1;
    } while (p[j0] != 0);
    do {
      const int j1 = way[j0];
      p[j0] = p[j1];
      j0 = j1;
    } while (j0);
  }
  std::vector<std::pair<int, int>> out;
  for (int j = 1; j <= n; ++j) {
    const int i = p[j] - 1, c = j - 1;
    if (i < rows && c < cols && w[i][c] > 0) out.emplace_back(i, c);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// ---------------------------------------------------------------------------------------------------------

std::optional<double> OriginalMetric::term_accuracy() const {
  if (terms_total == 0) return std::nullopt;
  return double(terms_found) / double(terms_total);
}
std::optional<double> OriginalMetric::value_accuracy() const {
  if (values_total == 0) return std::nullopt;
  return double(values_found) / double(values_total);
}
std::optional<double> OriginalMetric::average() const {
  const auto t = term_accuracy(), v = value_accuracy();
  if (t && v) return (*t + *v) / 2.0;
  if (t) return t;
  return v;
}

Counts DocumentScore::field_total() const {
  Counts c;
  for (const auto& [k, v] : fields) c += v;
  return c;
}
Counts DocumentScore::exact_total() const {
  Counts c;
  for (const auto& [k, v] : exact) c += v;
  return c;
}
Counts DocumentScore::relaxed_total() const {
  Counts c;
  for (const auto& [k, v] : relaxed) c += v;
  return c;
}

std::string output_text(const json& e) {
  std::string out;
  auto render_item = [&](const SectionSpec& s, const json& item) {
    std::string line;
    for (const auto& f : s.fields) {
      if (!has(item, f.name)) continue;
      const json& v = item[f.name];
      std::string text;
      if (v.is_boolean()) {
        if (!v.get<bool>()) continue;
        text = f.name == "prn" ? "PRN" : f.name == "no_known_allergies" ? "NKDA" : f.name;
      } else {
        text = str(v);
      }
      if (!line.empty()) line += ' ';
      line += text;
    }
    if (!line.empty()) out += line + '\n';
  };
  for (const auto& s : specs()) {
    if (s.list) {
      for (const auto& item : list_of(e, s.name)) render_item(s, item);
    } else {
      render_item(s, block_of(e, s.name));
    }
  }
  return out;
}

DocumentScore score_document(const json& truth, const json* pred, const ScoreOptions& o) {
  static const json kEmptyDoc = json::object();
  const json& pd = pred ? *pred : kEmptyDoc;
  DocumentScore ds;

  // The original metric: is each expected term / value a (case-insensitive) substring of the output?
  {
    const std::string text = lower_utf8(output_text(pd));
    auto count = [&](const char* key, int& total, int& found) {
      if (!truth.contains(key)) return;
      for (const auto& t : truth[key]) {
        if (!t.is_string()) continue;
        ++total;
        if (text.find(lower_utf8(t.get<std::string>())) != std::string::npos) ++found;
      }
    };
    count("terms", ds.original.terms_total, ds.original.terms_found);
    count("values", ds.original.values_total, ds.original.values_found);
  }

  for (const auto& s : specs()) {
    if (!s.list) {
      const json t = block_of(truth, s.name), p = block_of(pd, s.name);
      for (const auto& f : s.fields) {
        Counts& c = ds.fields[s.name + "." + f.name];
        const bool ht = has(t, f.name), hp = has(p, f.name);
        if (ht && hp) {
          if (field_equal(s.name, f, t, p, o)) {
            ++c.tp;
          } else {
            ++c.fp, ++c.fn;
          }
        } else if (ht) {
          ++c.fn;
        } else if (hp) {
          ++c.fp;
        }
        if (hp && s.name != "document") {
          ++ds.predicted_values;
          if (!ht || !field_equal(s.name, f, t, p, o)) ++ds.hallucinated_values;
        }
      }
      if (s.name == "document") continue;
      const bool at = any_field(s, t), ap = any_field(s, p);
      for (auto* m : {&ds.exact, &ds.relaxed}) {
        Counts& c = (*m)[s.name];
        const bool ok = at && ap && (m == &ds.exact ? entry_exact(s, t, p, o) : entry_relaxed(s, t, p, o));
        if (ok) {
          ++c.tp;
        } else {
          if (at) ++c.fn;
          if (ap) ++c.fp;
        }
      }
      continue;
    }

    const json& T = list_of(truth, s.name);
    const json& P = list_of(pd, s.name);
    const int nt = static_cast<int>(T.size()), np = static_cast<int>(P.size());
    const FieldSpec& key = s.fields.front();
    const double F = static_cast<double>(s.fields.size() + 1);

    // Key matches between every true and predicted item.
    std::vector<std::vector<char>> key_exact(nt, std::vector<char>(np, 0)), key_relaxed = key_exact;
    for (int i = 0; i < nt; ++i)
      for (int j = 0; j < np; ++j) {
        if (!has(T[i], key.name) || !has(P[j], key.name)) continue;
        key_exact[i][j] = field_equal(s.name, key, T[i], P[j], o);
        key_relaxed[i][j] = key_exact[i][j] || field_compatible(s.name, key, T[i], P[j], o);
      }

    // Field-level pairing: items pair only when their keys match (relaxed); among those, exact keys first,
    // then the most agreeing fields.
    std::vector<std::vector<double>> w(nt, std::vector<double>(np, 0.0));
    for (int i = 0; i < nt; ++i)
      for (int j = 0; j < np; ++j) {
        if (!key_relaxed[i][j]) continue;
        double agree = 0;
        for (std::size_t k = 1; k < s.fields.size(); ++k) {
          const auto& f = s.fields[k];
          if (has(T[i], f.name) && has(P[j], f.name) && field_equal(s.name, f, T[i], P[j], o)) agree += 1;
        }
        w[i][j] = (key_exact[i][j] ? 2 * F : F) + agree;
      }
    const auto pairs = max_weight_assignment(w);
    std::vector<int> pred_of(nt, -1), truth_of(np, -1);
    for (const auto& [i, j] : pairs) pred_of[i] = j, truth_of[j] = i;

    for (const auto& f : s.fields) {
      Counts& c = ds.fields[s.name + "." + f.name];
      for (int i = 0; i < nt; ++i) {
        const bool ht = has(T[i], f.name);
        const int j = pred_of[i];
        if (j < 0) {
          if (ht) ++c.fn;
          continue;
        }
        const bool hp = has(P[j], f.name);
        if (ht && hp) {
          if (field_equal(s.name, f, T[i], P[j], o)) {
            ++c.tp;
          } else {
            ++c.fp, ++c.fn;
          }
        } else if (ht) {
          ++c.fn;
        } else if (hp && !f.assigned) {
          ++c.fp;
        }
      }
      for (int j = 0; j < np; ++j)
        if (truth_of[j] < 0 && has(P[j], f.name) && !f.assigned) ++c.fp;
    }

    // Whole entries: separate maximum matchings for exact and relaxed equality.
    for (auto* m : {&ds.exact, &ds.relaxed}) {
      std::vector<std::vector<double>> e(nt, std::vector<double>(np, 0.0));
      for (int i = 0; i < nt; ++i)
        for (int j = 0; j < np; ++j)
          if (key_relaxed[i][j])
            e[i][j] = (m == &ds.exact ? entry_exact(s, T[i], P[j], o) && key_exact[i][j]
                                      : entry_relaxed(s, T[i], P[j], o))
                          ? 1.0
                          : 0.0;
      const auto matched = static_cast<long long>(max_weight_assignment(e).size());
      Counts& c = (*m)[s.name];
      c.tp += matched;
      c.fp += np - matched;
      c.fn += nt - matched;
    }

    // Hallucination: a predicted value is hallucinated when no true item of the section has that field
    // with an equal value; a predicted item when no true item has a matching key.
    for (int j = 0; j < np; ++j) {
      ++ds.predicted_items;
      bool item_found = false;
      for (int i = 0; i < nt && !item_found; ++i) item_found = key_relaxed[i][j];
      if (!item_found) ++ds.hallucinated_items;
      for (const auto& f : s.fields) {
        if (!has(P[j], f.name)) continue;
        if (f.assigned && (truth_of[j] < 0 || !has(T[truth_of[j]], f.name))) continue;
        ++ds.predicted_values;
        bool found = false;
        for (int i = 0; i < nt && !found; ++i)
          found = has(T[i], f.name) && field_equal(s.name, f, T[i], P[j], o);
        if (!found) ++ds.hallucinated_values;
      }
    }
  }
  return ds;
}

}  // namespace mv::eval
