#include "extract/value_checks.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <regex>

#include "core/log.hpp"

namespace mv::extract {

namespace {

std::optional<double> to_number(std::string_view s) {
  double x = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), x);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return x;
}

}  // namespace

bool malformed_number(std::string_view value) {
  static const std::regex lead0(R"(^\s*[<>]?=?\s*0\d+(?:[.,]\d+)?\s*$)");
  return std::regex_match(value.begin(), value.end(), lead0);
}

bool reversed_range(std::string_view range) {
  static const std::regex two(R"(^\s*(-?\d+(?:\.\d+)?)\s*(?:-|to)\s*(-?\d+(?:\.\d+)?)\s*$)");
  std::match_results<std::string_view::const_iterator> m;
  if (!std::regex_match(range.begin(), range.end(), m, two)) return false;
  const auto lo = to_number(m[1].str()), hi = to_number(m[2].str());
  return lo && hi && *lo > *hi;
}

bool vital_impossible(const Vital& vital, const Vocabulary& v) {
  auto it = v.vital_bounds.find(to_lower(vital.name));
  if (it == v.vital_bounds.end() || it->second.empty()) return false;
  const auto& bounds = it->second;  // unit -> {lo, hi}
  static const std::regex bp(R"(^\s*(\d+)\s*/\s*(\d+)\s*$)");
  std::smatch m;
  std::vector<double> values;
  if (std::regex_match(vital.value, m, bp)) {
    const double sys = std::stod(m[1].str()), dia = std::stod(m[2].str());
    if (dia >= sys) return true;  // the diastolic pressure is always below the systolic
    values = {sys, dia};
  } else if (auto x = to_number(vital.value)) {
    values.push_back(*x);
  } else {
    return false;
  }
  auto within = [&](const std::pair<double, double>& b) {
    for (double x : values)
      if (x < b.first || x > b.second) return false;
    return true;
  };
  if (vital.unit) {
    if (auto b = bounds.find(*vital.unit); b != bounds.end()) return !within(b->second);
  }
  for (const auto& [unit, b] : bounds)
    if (within(b)) return false;
  return true;
}

bool implausible_name(std::string_view name) {
  while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) name.remove_suffix(1);
  for (char c : name) {
    const auto u = static_cast<unsigned char>(c);
    if (!(u >= 0x80 || std::isalpha(u) || c == ' ' || c == '.' || c == ',' || c == '\'' || c == '-'))
      return true;
  }
  if (name.find("..") != std::string_view::npos) return true;
  if (name.find(',') != std::string_view::npos) return false;
  const auto sp = name.find_last_of(' ');
  if (sp == std::string_view::npos) return false;  // a single word: nothing to say
  const std::string_view last = name.substr(sp + 1);
  return last.size() == 1 && std::isalpha(static_cast<unsigned char>(last[0]));
}

bool malformed_identifier(std::string_view id) {
  return std::any_of(id.begin(), id.end(),
                     [](char c) { return !(std::isalnum(static_cast<unsigned char>(c)) || c == '-'); });
}

void check_values(Extraction& e, const Vocabulary& v) {
  if (e.patient) {
    auto& p = *e.patient;
    if (p.name && implausible_name(*p.name)) {
      spdlog::debug("OCR: patient name dropped, it cannot be a name");  // no PHI
      p.name.reset();
      if (p.provenance) p.provenance->fields.erase("name");
    }
    if (p.mrn && malformed_identifier(*p.mrn)) {
      spdlog::debug("OCR: MRN dropped, it holds a character that is not a letter, digit or hyphen");
      p.mrn.reset();
      if (p.provenance) p.provenance->fields.erase("mrn");
    }
  }
  if (e.encounter && e.encounter->provider && implausible_name(*e.encounter->provider)) {
    spdlog::debug("OCR: provider dropped, it cannot be a name");
    e.encounter->provider.reset();
    if (e.encounter->provenance) e.encounter->provenance->fields.erase("provider");
  }

  std::erase_if(e.labs, [](const Lab& l) {
    const bool out = malformed_number(l.value);
    if (out) spdlog::debug("OCR: lab left out, its value is not a well-formed number");  // no PHI
    return out;
  });
  for (auto& l : e.labs)
    if (l.reference_range && reversed_range(*l.reference_range)) {
      spdlog::debug("OCR: reference range dropped, lower bound above upper bound");
      l.reference_range.reset();
      if (l.provenance) l.provenance->fields.erase("reference_range");
      // A flag derived from that range has no box of its own; a printed flag stays.
      if (l.flag && !(l.provenance && l.provenance->fields.contains("flag"))) l.flag.reset();
    }
  std::erase_if(e.vitals, [&](const Vital& x) {
    const bool out = vital_impossible(x, v);
    if (out) spdlog::debug("OCR: vital left out, value outside the possible bounds");
    return out;
  });
}

}  // namespace mv::extract
