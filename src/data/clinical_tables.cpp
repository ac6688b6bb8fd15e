#include "data/clinical_tables.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/file.hpp"

namespace mv::synth {

namespace {

using nlohmann::json;

// Typed access to one JSON object of a table, with errors that name the file and the entry.
class Obj {
 public:
  Obj(const json& j, std::string file, std::string where)
      : j_(j), file_(std::move(file)), where_(std::move(where)) {
    if (!j_.is_object()) bad("expected an object");
  }
  [[noreturn]] void bad(const std::string& what) const {
    fail(Errc::kInvalidInput, "{}: {}: {}", file_, where_, what);
  }
  bool has(const char* key) const { return j_.contains(key); }
  const json& at(const char* key) const {
    auto it = j_.find(key);
    if (it == j_.end()) bad(fmt::format("missing \"{}\"", key));
    return *it;
  }
  std::string str(const char* key) const {
    const json& v = at(key);
    if (!v.is_string()) bad(fmt::format("\"{}\" must be a string", key));
    return v.get<std::string>();
  }
  std::string str_or(const char* key, const std::string& def) const { return has(key) ? str(key) : def; }
  double num(const char* key) const {
    const json& v = at(key);
    if (!v.is_number()) bad(fmt::format("\"{}\" must be a number", key));
    return v.get<double>();
  }
  std::optional<double> opt_num(const char* key) const {
    if (!has(key)) return std::nullopt;
    return num(key);
  }
  double num_or(const char* key, double def) const { return has(key) ? num(key) : def; }
  bool flag(const char* key) const {
    if (!has(key)) return false;
    if (!at(key).is_boolean()) bad(fmt::format("\"{}\" must be true or false", key));
    return at(key).get<bool>();
  }
  std::vector<std::string> strs(const char* key, bool required = true, bool non_empty = true) const {
    if (!has(key)) {
      if (required) bad(fmt::format("missing \"{}\"", key));
      return {};
    }
    const json& v = at(key);
    if (!v.is_array()) bad(fmt::format("\"{}\" must be an array of strings", key));
    std::vector<std::string> out;
    for (const auto& s : v) {
      if (!s.is_string() || s.get_ref<const std::string&>().empty())
        bad(fmt::format("\"{}\" must hold non-empty strings", key));
      out.push_back(s.get<std::string>());
    }
    if (non_empty && out.empty()) bad(fmt::format("\"{}\" must not be empty", key));
    return out;
  }
  std::pair<double, double> pair(const char* key) const {
    const json& v = at(key);
    if (!v.is_array() || v.size() != 2 || !v[0].is_number() || !v[1].is_number() ||
        v[0].get<double>() > v[1].get<double>())
      bad(fmt::format("\"{}\" must be [low, high] with low <= high", key));
    return {v[0].get<double>(), v[1].get<double>()};
  }
  Obj sub(const char* key) const { return Obj(at(key), file_, where_ + "." + key); }
  const std::string& file() const { return file_; }
  const std::string& where() const { return where_; }

 private:
  const json& j_;
  std::string file_, where_;
};

json load_json(const std::filesystem::path& path) {
  const std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail(Errc::kInvalidInput, "{}: not valid JSON: {}", path.string(), e.what());
  }
}

// Calls fn(Obj) for every element of the array `key` of the file's root object.
template <typename Fn>
void each(const json& root, const std::filesystem::path& path, const char* key, Fn fn) {
  Obj top(root, path.string(), "(root)");
  const json& arr = top.at(key);
  if (!arr.is_array() || arr.empty()) top.bad(fmt::format("\"{}\" must be a non-empty array", key));
  for (std::size_t i = 0; i < arr.size(); ++i) fn(Obj(arr[i], path.string(), fmt::format("{}[{}]", key, i)));
}

RangeSpec range_from(const Obj& o) {
  RangeSpec r{o.opt_num("low"), o.opt_num("high")};
  if (!r.low && !r.high) o.bad("a range needs low, high or both");
  if (r.low && r.high && *r.low > *r.high) o.bad("range low is above high");
  return r;
}

std::map<std::string, std::string> string_map(const Obj& o, const char* key) {
  std::map<std::string, std::string> out;
  const json& m = o.at(key);
  if (!m.is_object()) o.bad(fmt::format("\"{}\" must be an object of strings", key));
  for (const auto& [k, v] : m.items()) {
    if (!v.is_string()) o.bad(fmt::format("\"{}.{}\" must be a string", key, k));
    out[k] = v.get<std::string>();
  }
  return out;
}

}  // namespace

std::filesystem::path data_dir() {
  if (const char* env = std::getenv("MEDVISION_DATA"); env != nullptr && *env != '\0') return env;
#ifdef MEDVISION_DATA_DIR
  return MEDVISION_DATA_DIR;
#else
  return "data";
#endif
}

const RangeSpec& LabTest::range_for(const std::string& s) const {
  if (s == "female" && female) return *female;
  if (s == "male" && male) return *male;
  if (female && !male) return *female;
  if (male) return *male;  // no common range: use the male one for unknown sex
  return range;
}

std::string format_fixed(double value, int decimals) {
  std::string s = fmt::format("{:.{}f}", value, decimals);
  if (s == "-0" || s.rfind("-0.", 0) == 0) {
    bool all_zero = true;
    for (char c : s.substr(1)) all_zero = all_zero && (c == '0' || c == '.');
    if (all_zero) s = s.substr(1);
  }
  return s;
}

std::string range_text(const RangeSpec& r, int decimals) {
  if (r.low && r.high) {
    if (*r.low < 0) return format_fixed(*r.low, decimals) + " to " + format_fixed(*r.high, decimals);
    return format_fixed(*r.low, decimals) + "-" + format_fixed(*r.high, decimals);
  }
  if (r.high) return fmt::format("<{}", format_fixed(*r.high, decimals));
  return fmt::format(">{}", format_fixed(*r.low, decimals));
}

std::string lab_flag(const LabTest& t, const RangeSpec& r, double v) {
  bool low = false, high = false;
  if (r.low && r.high) {
    low = v < *r.low;
    high = v > *r.high;
  } else if (r.high) {
    high = v >= *r.high;
  } else if (r.low) {
    low = v <= *r.low;
  }
  if (low) return t.crit_low && v < *t.crit_low ? "LL" : "L";
  if (high) return t.crit_high && v > *t.crit_high ? "HH" : "H";
  return "N";
}

ClinicalTables ClinicalTables::load(const std::filesystem::path& dir) {
  if (!std::filesystem::is_directory(dir))
    fail(Errc::kNotFound, "clinical tables: {} is not a directory (set MEDVISION_DATA to the data/ folder)",
         dir.string());
  ClinicalTables t;

  {  // sig.json
    const auto path = dir / "sig.json";
    const json root = load_json(path);
    Obj top(root, path.string(), "(root)");
    for (const char* key : {"routes", "frequencies"}) {
      const json& m = top.at(key);
      if (!m.is_object() || m.empty()) top.bad(fmt::format("\"{}\" must be a non-empty object", key));
      for (const auto& [code, v] : m.items()) {
        Obj o(v, path.string(), fmt::format("{}.{}", key, code));
        (std::string(key) == "routes" ? t.routes : t.frequencies)[code] = {o.str("abbr"), o.str("long"),
                                                                           o.num_or("per_day", 0)};
      }
    }
    Obj prn = top.sub("prn_words");
    t.prn_words = {prn.str("abbr"), prn.str("long"), 0};
    t.dose_unit_plural = string_map(top, "dose_unit_plural");
    t.dose_unit_abbr = string_map(top, "dose_unit_abbr");
  }
  {  // drugs.json
    const auto path = dir / "drugs.json";
    const json root = load_json(path);
    each(root, path, "drugs", [&](const Obj& o) {
      DrugInfo d;
      d.name = o.str("name");
      d.brand = o.str_or("brand", "");
      d.drug_class = o.str("class");
      d.form = o.str("form");
      d.strengths = o.strs("strengths");
      d.doses = o.strs("doses", false);
      d.dose_unit = o.str_or("dose_unit", "");
      if (d.doses.empty() != d.dose_unit.empty()) o.bad("\"doses\" and \"dose_unit\" go together");
      d.routes = o.strs("routes");
      d.frequencies = o.strs("frequencies");
      d.indications = o.strs("indications");
      d.tags = o.strs("tags", false, false);
      d.durations = o.strs("durations", false);
      d.prn = o.num_or("prn", 0.0);
      if (d.prn < 0 || d.prn > 1) o.bad("\"prn\" is a probability in [0, 1]");
      d.setting = o.str_or("setting", "");
      for (const auto& r : d.routes)
        if (!t.routes.count(r)) o.bad("unknown route code \"" + r + "\" (see sig.json)");
      for (const auto& f : d.frequencies)
        if (!t.frequencies.count(f)) o.bad("unknown frequency code \"" + f + "\" (see sig.json)");
      t.drugs.push_back(std::move(d));
    });
    each(root, path, "infusions", [&](const Obj& o) {
      InfusionInfo d;
      d.name = o.str("name");
      d.drug_class = o.str("class");
      d.strength = o.str("strength");
      d.dose_unit = o.str("dose_unit");
      d.doses = o.strs("doses");
      d.indications = o.strs("indications");
      d.tags = o.strs("tags", false, false);
      t.infusions.push_back(std::move(d));
    });
  }
  {  // labs.json
    const auto path = dir / "labs.json";
    const json root = load_json(path);
    each(root, path, "tests", [&](const Obj& o) {
      LabTest l;
      l.id = o.str("id");
      l.name = o.str("name");
      l.long_name = o.str("long");
      l.loinc = o.str_or("loinc", "");
      l.unit = o.str("unit");
      l.sex = o.str_or("sex", "");
      if (o.has("qualitative")) {
        Obj q = o.sub("qualitative");
        l.qualitative = true;
        l.normal_result = q.str("normal");
        l.abnormal_results = q.strs("abnormal");
      } else {
        l.decimals = static_cast<int>(o.num("decimals"));
        if (l.decimals < 0 || l.decimals > 4) o.bad("\"decimals\" must be 0..4");
        if (o.has("ranges")) {
          Obj rs = o.sub("ranges");
          l.female = range_from(rs.sub("female"));
          l.male = range_from(rs.sub("male"));
        } else {
          l.range = range_from(o.sub("range"));
        }
        l.crit_low = o.opt_num("crit_low");
        l.crit_high = o.opt_num("crit_high");
        l.gen_min = o.num("gen_min");
        l.gen_max = o.num("gen_max");
        if (l.gen_min >= l.gen_max) o.bad("gen_min must be below gen_max");
        l.cap_above = o.opt_num("cap_above");
        l.floor_below = o.opt_num("floor_below");
      }
      for (const auto& other : t.labs)
        if (other.id == l.id) o.bad("duplicate id \"" + l.id + "\"");
      t.labs.push_back(std::move(l));
    });
    each(root, path, "panels", [&](const Obj& o) {
      LabPanel p{o.str("id"), o.str("name"), o.strs("tests")};
      for (const auto& id : p.tests) {
        bool found = false;
        for (const auto& l : t.labs) found = found || l.id == id;
        if (!found) o.bad("unknown test id \"" + id + "\"");
      }
      t.panels.push_back(std::move(p));
    });
  }
  {  // vitals.json
    const auto path = dir / "vitals.json";
    const json root = load_json(path);
    each(root, path, "vitals", [&](const Obj& o) {
      VitalInfo v;
      v.id = o.str("id");
      v.name = o.str("name");
      v.abbr = o.str("abbr");
      v.loinc = o.str_or("loinc", "");
      v.units = o.strs("units");
      v.derived = o.flag("derived");
      if (o.has("systolic")) {
        Obj s = o.sub("systolic"), d = o.sub("diastolic");
        std::tie(v.sys_normal_lo, v.sys_normal_hi) = s.pair("normal");
        std::tie(v.sys_gen_lo, v.sys_gen_hi) = s.pair("gen");
        std::tie(v.dia_normal_lo, v.dia_normal_hi) = d.pair("normal");
        std::tie(v.dia_gen_lo, v.dia_gen_hi) = d.pair("gen");
      } else {
        v.decimals = static_cast<int>(o.num("decimals"));
        if (!v.derived) {
          std::tie(v.normal_lo, v.normal_hi) = o.pair("normal");
          std::tie(v.gen_lo, v.gen_hi) = o.pair("gen");
        }
      }
      t.vitals.push_back(std::move(v));
    });
  }
  {  // diagnoses.json
    const auto path = dir / "diagnoses.json";
    const json root = load_json(path);
    each(root, path, "diagnoses", [&](const Obj& o) {
      DiagnosisInfo d;
      d.text = o.str("text");
      d.short_text = o.str("short");
      d.icd10 = o.str("icd10");
      d.kind = o.str("kind");
      if (d.kind != "chronic" && d.kind != "acute") o.bad("\"kind\" must be chronic or acute");
      d.sex = o.str_or("sex", "");
      d.tags = o.strs("tags");
      d.settings = o.strs("settings");
      d.lab_panels = o.strs("lab_panels", false);
      t.diagnoses.push_back(std::move(d));
    });
  }
  for (const auto& d : t.diagnoses)
    for (const auto& p : d.lab_panels) {
      bool found = false;
      for (const auto& panel : t.panels) found = found || panel.id == p;
      if (!found)
        fail(Errc::kInvalidInput, "{}: diagnosis \"{}\": unknown lab panel \"{}\"",
             (dir / "diagnoses.json").string(), d.text, p);
    }
  {  // procedures.json
    const auto path = dir / "procedures.json";
    const json root = load_json(path);
    auto variants = [](const Obj& o, const char* findings_key, const char* impression_key) {
      std::vector<FindingVariant> out;
      const json& arr = o.at("variants");
      if (!arr.is_array() || arr.empty()) o.bad("\"variants\" must be a non-empty array");
      for (std::size_t i = 0; i < arr.size(); ++i) {
        Obj v(arr[i], o.file(), fmt::format("{}.variants[{}]", o.where(), i));
        out.push_back(
            {v.str(findings_key), v.str(impression_key), v.str_or("icd10", ""), v.str_or("dx", "")});
      }
      return out;
    };
    for (const char* key : {"radiology", "cardiology"}) {
      each(root, path, key, [&](const Obj& o) {
        StudyInfo s;
        s.name = o.str("name");
        s.modality = o.str_or("modality", "");
        s.technique = o.str_or("technique", "");
        s.tags = o.strs("tags");
        s.indications = o.strs("indications", false);
        s.variants = variants(o, "findings", "impression");
        (std::string(key) == "radiology" ? t.radiology : t.cardiology).push_back(std::move(s));
      });
    }
    each(root, path, "surgery", [&](const Obj& o) {
      SurgeryInfo s;
      s.name = o.str("name");
      s.anesthesia = o.str("anesthesia");
      s.specimen = o.str("specimen");
      s.drains = o.str("drains");
      s.steps = o.str("steps");
      const auto [lo, hi] = o.pair("ebl");
      s.ebl_lo = static_cast<int>(lo);
      s.ebl_hi = static_cast<int>(hi);
      s.findings = o.strs("findings");
      s.tags = o.strs("tags");
      t.surgery.push_back(std::move(s));
    });
    each(root, path, "pathology", [&](const Obj& o) {
      PathologyInfo p;
      p.procedure = o.str("procedure");
      p.specimen = o.str("specimen");
      p.gross = o.str("gross");
      p.sex = o.str_or("sex", "");
      p.tags = o.strs("tags");
      p.variants = variants(o, "microscopic", "diagnosis");
      t.pathology.push_back(std::move(p));
    });
  }
  {  // allergies.json
    const auto path = dir / "allergies.json";
    const json root = load_json(path);
    t.severity_by_reaction = string_map(Obj(root, path.string(), "(root)"), "severity_by_reaction");
    each(root, path, "allergies", [&](const Obj& o) {
      AllergyInfo a{o.str("substance"), o.str("type"), o.strs("reactions")};
      for (const auto& r : a.reactions)
        if (!t.severity_by_reaction.count(r))
          o.bad("reaction \"" + r + "\" has no entry in severity_by_reaction");
      t.allergies.push_back(std::move(a));
    });
    for (const auto& [reaction, severity] : t.severity_by_reaction)
      if (severity != "mild" && severity != "moderate" && severity != "severe")
        fail(Errc::kInvalidInput, "{}: severity_by_reaction.{}: must be mild, moderate or severe",
             path.string(), reaction);
  }
  {  // vaccines.json
    const auto path = dir / "vaccines.json";
    const json root = load_json(path);
    each(root, path, "vaccines", [&](const Obj& o) {
      VaccineInfo v;
      v.name = o.str("name");
      v.short_name = o.str("short");
      v.cvx = o.str("cvx");
      v.manufacturers = o.strs("manufacturers");
      v.routes = o.strs("routes");
      v.sites = o.strs("sites");
      v.doses = static_cast<int>(o.num("doses"));
      if (v.doses < 1 || v.doses > 10) o.bad("\"doses\" must be 1..10");
      v.annual = o.flag("annual");
      t.vaccines.push_back(std::move(v));
    });
  }
  {  // people.json
    const auto path = dir / "people.json";
    const json root = load_json(path);
    Obj o(root, path.string(), "(root)");
    t.first_female = o.strs("first_names_female");
    t.first_male = o.strs("first_names_male");
    t.last_names = o.strs("last_names");
    t.middle_initials = o.strs("middle_initials");
    t.streets = o.strs("streets");
    t.credentials = o.strs("credentials");
    t.nurse_credentials = o.strs("nurse_credentials");
    t.pharmacist_credentials = o.strs("pharmacist_credentials");
    each(root, path, "towns", [&](const Obj& e) { t.towns.push_back({e.str("city"), e.str("state")}); });
    each(root, path, "facilities", [&](const Obj& e) {
      t.facilities.push_back({e.str("name"), e.str("short")});
    });
  }
  {  // followups.json
    const auto path = dir / "followups.json";
    const json root = load_json(path);
    for (const char* key : {"followups", "orders"})
      each(root, path, key, [&](const Obj& e) {
        FollowupInfo f{e.str("text"), e.strs("when"), e.strs("tags", false, false)};
        (std::string(key) == "followups" ? t.followups : t.orders).push_back(std::move(f));
      });
  }
  return t;
}

const LabTest& ClinicalTables::lab(const std::string& id) const {
  for (const auto& l : labs)
    if (l.id == id) return l;
  fail(Errc::kNotFound, "clinical tables: no lab test with id \"{}\"", id);
}

const LabTest* ClinicalTables::find_lab_by_name(const std::string& name) const {
  for (const auto& l : labs)
    if (l.name == name || l.long_name == name) return &l;
  return nullptr;
}

const LabPanel& ClinicalTables::panel(const std::string& id) const {
  for (const auto& p : panels)
    if (p.id == id) return p;
  fail(Errc::kNotFound, "clinical tables: no lab panel with id \"{}\"", id);
}

const VitalInfo& ClinicalTables::vital(const std::string& id) const {
  for (const auto& v : vitals)
    if (v.id == id) return v;
  fail(Errc::kNotFound, "clinical tables: no vital sign with id \"{}\"", id);
}

}  // namespace mv::synth
