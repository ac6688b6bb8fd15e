#include "eval/normalize.hpp"

#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdlib>
#include <utility>

#include "core/error.hpp"
#include "data/clinical_tables.hpp"

namespace mv::eval {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

std::string collapse_spaces(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  bool space = false;
  for (char c : s) {
    if (is_space(c)) {
      space = !out.empty();
      continue;
    }
    if (space) out.push_back(' ');
    space = false;
    out.push_back(c);
  }
  return out;
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::size_t pos = 0;
  while ((pos = s.find(from, pos)) != std::string::npos) {
    s.replace(pos, from.size(), to);
    pos += to.size();
  }
}

std::vector<std::int32_t> code_points(std::string_view s) {
  std::vector<std::int32_t> cps;
  cps.reserve(s.size());
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  utf8proc_ssize_t left = static_cast<utf8proc_ssize_t>(s.size());
  while (left > 0) {
    utf8proc_int32_t cp = 0;
    const auto n = utf8proc_iterate(p, left, &cp);
    if (n <= 0) {  // invalid byte: keep it as its own unit
      cps.push_back(0x110000 + *p);
      ++p;
      --left;
      continue;
    }
    cps.push_back(cp);
    p += n;
    left -= n;
  }
  return cps;
}

// Splits on single spaces (input already collapsed).
std::vector<std::string> words(std::string_view s) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && s[i] == ' ') ++i;
    std::size_t j = i;
    while (j < s.size() && s[j] != ' ') ++j;
    if (j > i) out.emplace_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

std::string join(const std::vector<std::string>& w, std::string_view sep = " ") {
  std::string out;
  for (std::size_t i = 0; i < w.size(); ++i) {
    if (i) out += sep;
    out += w[i];
  }
  return out;
}

}  // namespace

std::string fold(std::string_view s) {
  std::string mapped;
  if (!s.empty()) {
    utf8proc_uint8_t* out = nullptr;
    const auto len = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                  static_cast<utf8proc_ssize_t>(s.size()), &out,
                                  static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE |
                                                                 UTF8PROC_COMPAT | UTF8PROC_CASEFOLD));
    if (len >= 0) {
      mapped.assign(reinterpret_cast<const char*>(out), static_cast<std::size_t>(len));
      std::free(out);
    } else {  // invalid UTF-8: fold ASCII only
      mapped.assign(s);
      for (auto& c : mapped) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
  }
  // Dashes and minus signs (U+2010..U+2015, U+2212) to '-'; NBSP is already a space after NFKC.
  for (const char* dash : {"\u2010", "\u2011", "\u2012", "\u2013", "\u2014", "\u2015", "\u2212"})
    replace_all(mapped, dash, "-");
  for (const char* q : {"\u2018", "\u2019"}) replace_all(mapped, q, "'");
  for (const char* q : {"\u201c", "\u201d"}) replace_all(mapped, q, "\"");
  return collapse_spaces(mapped);
}

std::string fold_text(std::string_view s) {
  std::string f = fold(s);
  for (auto& c : f)
    if (c == ',' || c == ';' || c == ':' || c == '(' || c == ')' || c == '[' || c == ']' || c == '"' ||
        c == '\'' || c == '*')
      c = ' ';
  f = collapse_spaces(f);
  while (!f.empty() && (f.back() == '.' || f.back() == ' ')) f.pop_back();
  return f;
}

double similarity(std::string_view a, std::string_view b) {
  const auto x = code_points(a), y = code_points(b);
  if (x.empty() && y.empty()) return 1.0;
  std::vector<std::size_t> prev(y.size() + 1), cur(y.size() + 1);
  for (std::size_t j = 0; j <= y.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= x.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= y.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x[i - 1] == y[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return 1.0 - static_cast<double>(prev[y.size()]) / static_cast<double>(std::max(x.size(), y.size()));
}

// ---------------------------------------------------------------------------------------------------------
// Decimals

Decimal Decimal::scaled(int power_of_ten) const {
  Decimal d = *this;
  if (!d.digits.empty()) d.exponent += power_of_ten;
  return d;
}

std::string Decimal::str() const {
  if (digits.empty()) return "0";
  std::string out = negative ? "-" : "";
  const int n = static_cast<int>(digits.size());
  if (exponent >= 0) return out + digits + std::string(static_cast<std::size_t>(exponent), '0');
  const int int_len = n + exponent;
  if (int_len > 0) return out + digits.substr(0, int_len) + "." + digits.substr(int_len);
  return out + "0." + std::string(static_cast<std::size_t>(-int_len), '0') + digits;
}

std::optional<Decimal> parse_decimal(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  if (s.empty()) return std::nullopt;
  Decimal d;
  if (s.front() == '-' || s.front() == '+') {
    d.negative = s.front() == '-';
    s.remove_prefix(1);
  }
  if (s.empty()) return std::nullopt;
  // Thousands grouping: ',' followed by exactly three digits, with the integer part grouped throughout
  // ("1,000", "25,000", "1,000,000"); any other single ',' is a decimal separator ("7,5").
  std::string int_part, frac_part;
  std::size_t i = 0;
  bool seen_point = false, grouped = false;
  while (i < s.size()) {
    const char c = s[i];
    if (is_digit(c)) {
      (seen_point ? frac_part : int_part).push_back(c);
      ++i;
      continue;
    }
    if (c == ',' && !seen_point) {
      std::size_t j = i + 1;  // digits after the comma
      while (j < s.size() && is_digit(s[j])) ++j;
      const std::size_t run = j - (i + 1);
      const bool first_group_ok = grouped || (!int_part.empty() && int_part.size() <= 3);
      if (run == 3 && first_group_ok) {
        grouped = true;
        ++i;
        continue;
      }
      if (grouped || run == 0 || int_part.empty()) return std::nullopt;
      seen_point = true;  // decimal comma
      ++i;
      continue;
    }
    if (c == '.' && !seen_point) {
      seen_point = true;
      ++i;
      continue;
    }
    return std::nullopt;
  }
  if (int_part.empty() && frac_part.empty()) return std::nullopt;
  std::string all = int_part + frac_part;
  int exponent = -static_cast<int>(frac_part.size());
  // Strip trailing zeros (raising the exponent) and leading zeros.
  while (!all.empty() && all.back() == '0') {
    all.pop_back();
    ++exponent;
  }
  std::size_t lead = 0;
  while (lead < all.size() && all[lead] == '0') ++lead;
  all.erase(0, lead);
  if (all.empty()) return Decimal{};  // zero (sign dropped)
  d.digits = std::move(all);
  d.exponent = exponent;
  return d;
}

// ---------------------------------------------------------------------------------------------------------
// Units

namespace {

struct Atom {
  const char* name;
  const char* base;
  int scale;
};

// Printed unit atoms (folded, µ/μ already turned into 'u') and their canonical base and scale.
constexpr Atom kAtoms[] = {
    {"g", "g", 0},
    {"gm", "g", 0},
    {"gram", "g", 0},
    {"grams", "g", 0},
    {"kg", "g", 3},
    {"mg", "g", -3},
    {"ug", "g", -6},
    {"mcg", "g", -6},
    {"ng", "g", -9},
    {"pg", "g", -12},
    {"l", "l", 0},
    {"dl", "l", -1},
    {"ml", "l", -3},
    {"ul", "l", -6},
    {"fl", "l", -15},
    {"cc", "l", -3},
    {"mol", "mol", 0},
    {"mmol", "mol", -3},
    {"umol", "mol", -6},
    {"nmol", "mol", -9},
    {"eq", "eq", 0},
    {"meq", "eq", -3},
    {"u", "[u]", 0},
    {"unit", "[u]", 0},
    {"units", "[u]", 0},
    {"iu", "[iu]", 0},
    {"miu", "[iu]", -3},
    {"h", "h", 0},
    {"hr", "h", 0},
    {"hrs", "h", 0},
    {"hour", "h", 0},
    {"hours", "h", 0},
    {"min", "min", 0},
    {"mins", "min", 0},
    {"minute", "min", 0},
    {"minutes", "min", 0},
    {"s", "s", 0},
    {"sec", "s", 0},
    {"secs", "s", 0},
    {"seconds", "s", 0},
    {"d", "d", 0},
    {"day", "d", 0},
    {"days", "d", 0},
    {"wk", "wk", 0},
    {"week", "wk", 0},
    {"weeks", "wk", 0},
    {"m", "m", 0},
    {"cm", "m", -2},
    {"mm", "m", -3},
    {"km", "m", 3},
    {"tab", "{tbl}", 0},
    {"tabs", "{tbl}", 0},
    {"tablet", "{tbl}", 0},
    {"tablets", "{tbl}", 0},
    {"cap", "{cap}", 0},
    {"caps", "{cap}", 0},
    {"capsule", "{cap}", 0},
    {"capsules", "{cap}", 0},
    {"puff", "{puff}", 0},
    {"puffs", "{puff}", 0},
    {"drop", "{drop}", 0},
    {"drops", "{drop}", 0},
    {"gtt", "{drop}", 0},
    {"gtts", "{drop}", 0},
    {"spray", "{spray}", 0},
    {"sprays", "{spray}", 0},
    {"patch", "{patch}", 0},
    {"patches", "{patch}", 0},
    {"vial", "{vial}", 0},
    {"vials", "{vial}", 0},
    {"application", "{appl}", 0},
    {"applications", "{appl}", 0},
    {"suppository", "{supp}", 0},
    {"suppositories", "{supp}", 0},
    {"actuation", "{actuat}", 0},
    {"actuations", "{actuat}", 0},
    {"%", "%", 0},
    {"bpm", "/min", 0},
    {"[degf]", "[degf]", 0},
    {"cel", "cel", 0},
    {"mmhg", "mm[hg]", 0},
};

// Counting annotations that do not change a unit: beats/min == /min.
bool is_annotation(std::string_view a) {
  return a == "beats" || a == "beat" || a == "breaths" || a == "breath" || a == "br" || a == "b";
}

// "10^3", "x10^3", "10*3", "x10e3", "10e3" -> 3; "k" (as in K/uL) -> 3.
std::optional<int> power_atom(std::string_view a) {
  if (!a.empty() && (a.front() == 'x' || a.front() == '*')) a.remove_prefix(1);
  if (a == "k" || a == "thou") return 3;
  if (a.size() < 3 || a.substr(0, 2) != "10") return std::nullopt;
  a.remove_prefix(2);
  if (a.front() != '^' && a.front() != '*' && a.front() != 'e') return std::nullopt;
  a.remove_prefix(1);
  if (a.empty()) return std::nullopt;
  int v = 0;
  for (char c : a) {
    if (!is_digit(c)) return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

}  // namespace

Unit parse_unit(std::string_view printed) {
  std::string u = fold(printed);
  replace_all(u, "\u00b5", "u");  // micro sign
  replace_all(u, "\u03bc", "u");  // greek mu (NFKC turns the micro sign into it)
  replace_all(u, "\u00b0", "deg");
  replace_all(u, "per ", "/");
  std::string compact;
  for (char c : u)
    if (c != ' ') compact.push_back(c);
  if (compact == "f" || compact == "degf" || compact == "fahrenheit") compact = "[degf]";
  if (compact == "c" || compact == "degc" || compact == "celsius") compact = "cel";
  if (compact.empty()) return {};

  // Split into numerator / denominator atoms: "mg/dl" -> [mg] / [dl]; "mcg/kg/min" -> [mcg] / [kg, min];
  // "x10^3/ul" -> [x10^3] / [ul]; "/min" -> [] / [min].
  std::vector<std::string> num, den;
  std::size_t i = 0;
  bool denominator = false;
  while (i <= compact.size()) {
    std::size_t j = compact.find('/', i);
    if (j == std::string::npos) j = compact.size();
    std::string part = compact.substr(i, j - i);
    // A product inside a part ("kg.m2" rarely printed; "10^3" kept whole).
    if (!part.empty()) (denominator ? den : num).push_back(part);
    if (j == compact.size()) break;
    denominator = true;
    i = j + 1;
  }
  Unit unit;
  std::vector<std::string> nb, db;
  auto convert = [&](const std::vector<std::string>& atoms, std::vector<std::string>& bases, int sign) {
    for (const auto& a : atoms) {
      if (is_annotation(a)) continue;
      if (auto p = power_atom(a)) {
        unit.scale += sign * *p;
        continue;
      }
      if (auto d = parse_decimal(a)) {  // "/10" (pain scores), "/100"
        if (!d->digits.empty() && d->digits == "1") {
          unit.scale += sign * d->exponent;
          continue;
        }
        bases.push_back(d->str());
        continue;
      }
      bool known = false;
      for (const auto& atom : kAtoms)
        if (a == atom.name) {
          unit.scale += sign * atom.scale;
          bases.emplace_back(atom.base);
          known = true;
          break;
        }
      if (!known) bases.push_back(a);
    }
  };
  convert(num, nb, 1);
  convert(den, db, -1);
  // "bpm" is already a rate: its base "/min" goes to the numerator string as is.
  unit.base = join(nb, ".");
  if (!db.empty()) unit.base += "/" + join(db, "/");
  return unit;
}

// ---------------------------------------------------------------------------------------------------------
// Quantities

namespace {

// One segment "[comparator] number [unit]".
std::optional<Quantity> parse_segment(std::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  Quantity q;
  for (const char* cmp : {"<=", ">=", "<", ">", "\u2264", "\u2265"}) {
    const std::string_view c(cmp);
    if (s.substr(0, c.size()) == c) {
      q.comparator = c == "\u2264" ? "<=" : c == "\u2265" ? ">=" : std::string(c);
      s.remove_prefix(c.size());
      break;
    }
  }
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  // The number: sign, digits, separators.
  std::size_t i = 0;
  if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
  while (i < s.size() && (is_digit(s[i]) || s[i] == '.' || s[i] == ',')) ++i;
  // A trailing separator belongs to the text ("5, then").
  while (i > 0 && (s[i - 1] == '.' || s[i - 1] == ',')) --i;
  auto d = parse_decimal(s.substr(0, i));
  if (!d) return std::nullopt;
  q.value = *d;
  const std::string_view rest = s.substr(i);
  q.unit = parse_unit(rest);
  // Units that start with a digit are powers ("10^3/uL") or counts; anything else is fine. Refuse text
  // that is clearly a sentence (several words) so "2 views" is not a quantity.
  const std::string folded = fold(rest);
  if (std::count(folded.begin(), folded.end(), ' ') > 2) return std::nullopt;
  return q;
}

}  // namespace

std::optional<std::vector<Quantity>> parse_quantities(std::string_view s) {
  std::string f = fold(s);
  replace_all(f, " per ", "/");
  // Split where a '/' is followed by a number (a new quantity), not by a unit ("100 units/mL").
  std::vector<std::string> segments;
  std::size_t start = 0;
  for (std::size_t i = 0; i < f.size(); ++i) {
    if (f[i] != '/') continue;
    std::size_t j = i + 1;
    while (j < f.size() && f[j] == ' ') ++j;
    if (j < f.size() && (is_digit(f[j]) || ((f[j] == '<' || f[j] == '>') && j + 1 < f.size()))) {
      // "/10" right after a number is a pain score's scale only when nothing follows; keep it simple:
      // a '/' followed by a number always starts a new quantity.
      segments.push_back(f.substr(start, i - start));
      start = i + 1;
    }
  }
  segments.push_back(f.substr(start));
  std::vector<Quantity> out;
  for (const auto& seg : segments) {
    auto q = parse_segment(seg);
    if (!q) return std::nullopt;
    out.push_back(std::move(*q));
  }
  if (out.empty()) return std::nullopt;
  return out;
}

namespace {
// Quantities compare after unit scaling: 1,000 mcg == 1 mg; mg vs mmol/L never.
bool same_quantity(const Quantity& a, const Quantity& b) {
  if (a.comparator != b.comparator || a.unit.base != b.unit.base) return false;
  return a.value.scaled(a.unit.scale) == b.value.scaled(b.unit.scale);
}
}  // namespace

bool quantity_equal(std::string_view a, std::string_view b) {
  const auto qa = parse_quantities(a), qb = parse_quantities(b);
  if (qa && qb) {
    if (qa->size() != qb->size()) return false;
    for (std::size_t i = 0; i < qa->size(); ++i)
      if (!same_quantity((*qa)[i], (*qb)[i])) return false;
    return true;
  }
  if (qa || qb) return false;  // a number never equals words
  return fold_text(a) == fold_text(b);
}

// ---------------------------------------------------------------------------------------------------------
// Dates

namespace {

int month_number(std::string_view w) {
  static constexpr std::array<const char*, 12> kMonths = {"jan", "feb", "mar", "apr", "may", "jun",
                                                          "jul", "aug", "sep", "oct", "nov", "dec"};
  std::string m(w);
  while (!m.empty() && (m.back() == '.' || m.back() == ',')) m.pop_back();
  if (m.size() < 3) return 0;
  for (std::size_t i = 0; i < kMonths.size(); ++i) {
    if (m.substr(0, 3) != kMonths[i]) continue;
    static constexpr std::array<const char*, 12> kFull = {"january",   "february", "march",    "april",
                                                          "may",       "june",     "july",     "august",
                                                          "september", "october",  "november", "december"};
    const std::string full = kFull[i];
    if (m == full.substr(0, m.size()) || m == "sept") return static_cast<int>(i) + 1;
  }
  return 0;
}

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return is_digit(c); });
}

int to_int(std::string_view s) {
  int v = 0;
  for (char c : s) v = v * 10 + (c - '0');
  return v;
}

std::string two(int v) { return (v < 10 ? "0" : "") + std::to_string(v); }

std::optional<std::string> ymd(int y, int m, int d) {
  if (y < 1000 || y > 2999 || m < 1 || m > 12 || d < 0 || d > 31) return std::nullopt;
  std::string out = std::to_string(y) + "-" + two(m);
  if (d > 0) out += "-" + two(d);
  return out;
}

int expand_year(std::string_view y) {
  const int v = to_int(y);
  if (y.size() == 4) return v;
  if (y.size() == 2) return v < 70 ? 2000 + v : 1900 + v;
  return -1;
}

// "14:30", "14:30:05", "1430" -> "14:30[:05]"; nullopt otherwise.
std::optional<std::string> parse_time(std::string_view t) {
  std::string s(t);
  if (s.size() == 4 && all_digits(s)) s = s.substr(0, 2) + ":" + s.substr(2);
  if (s.size() == 4 && s[1] == ':') s = "0" + s;
  if ((s.size() != 5 && s.size() != 8) || s[2] != ':') return std::nullopt;
  if (!all_digits(s.substr(0, 2)) || !all_digits(s.substr(3, 2))) return std::nullopt;
  if (s.size() == 8 && (s[5] != ':' || !all_digits(s.substr(6, 2)))) return std::nullopt;
  if (to_int(s.substr(0, 2)) > 24 || to_int(s.substr(3, 2)) > 59) return std::nullopt;
  return s;
}

std::optional<std::string> parse_date_only(std::string_view s) {
  // Numeric forms.
  std::string t(s);
  for (auto& c : t)
    if (c == '/' || c == '.') c = '-';
  std::vector<std::string> parts;
  {
    std::size_t i = 0;
    while (i <= t.size()) {
      std::size_t j = t.find('-', i);
      if (j == std::string::npos) j = t.size();
      parts.push_back(t.substr(i, j - i));
      if (j == t.size()) break;
      i = j + 1;
    }
  }
  const bool numeric =
      std::all_of(parts.begin(), parts.end(), [](const std::string& p) { return all_digits(p); });
  if (numeric) {
    const bool dotted = s.find('.') != std::string_view::npos;
    if (parts.size() == 1 && parts[0].size() == 4) {
      if (!ymd(to_int(parts[0]), 1, 0)) return std::nullopt;
      return parts[0];
    }
    if (parts.size() == 2 && parts[0].size() == 4) return ymd(to_int(parts[0]), to_int(parts[1]), 0);
    if (parts.size() == 2 && parts[1].size() == 4) return ymd(to_int(parts[1]), to_int(parts[0]), 0);
    if (parts.size() == 3 && parts[0].size() == 4)
      return ymd(to_int(parts[0]), to_int(parts[1]), to_int(parts[2]));
    if (parts.size() == 3 && (parts[2].size() == 4 || parts[2].size() == 2)) {
      const int y = expand_year(parts[2]);
      int a = to_int(parts[0]), b = to_int(parts[1]);
      // US order (month first) unless dotted (day first) or the first number cannot be a month.
      if (dotted || a > 12) std::swap(a, b);
      if (a == 0 || b == 0) return std::nullopt;
      return ymd(y, a, b);
    }
    return std::nullopt;
  }
  // Month names: "May 2, 2024", "2 May 2024", "May 2024", "02-May-2024".
  std::string w(s);
  for (auto& c : w)
    if (c == ',' || c == '-' || c == '/') c = ' ';
  const auto ws = words(collapse_spaces(w));
  int month = 0, day = 0, year = -1;
  for (const auto& x : ws) {
    if (const int m = month_number(x); m && !month) {
      month = m;
      continue;
    }
    std::string n = x;
    for (const char* suf : {"st", "nd", "rd", "th"})
      if (n.size() > 2 && n.ends_with(suf)) n = n.substr(0, n.size() - 2);
    if (!all_digits(n)) return std::nullopt;
    if (n.size() == 4 && year < 0) {
      year = to_int(n);
    } else if (n.size() <= 2 && !day) {
      day = to_int(n);
    } else {
      return std::nullopt;
    }
  }
  if (!month || year < 0) return std::nullopt;
  return ymd(year, month, day);
}

}  // namespace

std::optional<std::string> normalize_date(std::string_view s) {
  std::string f = fold(s);
  if (f.empty()) return std::nullopt;
  // Split off a time: "2024-05-02t14:30", "2024-05-02 14:30", "05/02/2024 1430".
  std::optional<std::string> time;
  std::string date_part = f;
  if (auto t = f.find('t');
      t != std::string::npos && t >= 4 && t + 1 < f.size() && is_digit(f[t - 1]) && is_digit(f[t + 1])) {
    time = parse_time(f.substr(t + 1));
    if (!time) return std::nullopt;
    date_part = f.substr(0, t);
  } else if (auto sp = f.rfind(' '); sp != std::string::npos) {
    if (auto tt = parse_time(f.substr(sp + 1))) {
      time = tt;
      date_part = f.substr(0, sp);
    }
  }
  auto d = parse_date_only(date_part);
  if (!d && time) {  // "May 2025": the last number was a year, not a time
    time.reset();
    d = parse_date_only(f);
  }
  if (!d) return std::nullopt;
  if (time) {
    if (d->size() != 10) return std::nullopt;  // a time needs a full date
    return *d + "T" + *time;
  }
  return d;
}

// ---------------------------------------------------------------------------------------------------------
// Routes, frequencies, flags, ranges, codes

namespace {
// Lower case, dots removed ("p.o." -> "po"), PRN words removed when asked.
std::string sig_words(std::string_view s) {
  std::string f = fold_text(s);
  std::string out;
  for (char c : f)
    if (c != '.') out.push_back(c);
  return collapse_spaces(out);
}
}  // namespace

std::string normalize_route(std::string_view s) {
  const std::string w = sig_words(s);
  static const std::map<std::string, std::string> kRoutes = {
      {"po", "PO"},
      {"oral", "PO"},
      {"orally", "PO"},
      {"by mouth", "PO"},
      {"per os", "PO"},
      {"sl", "SL"},
      {"sublingual", "SL"},
      {"sublingually", "SL"},
      {"under the tongue", "SL"},
      {"iv", "IV"},
      {"intravenous", "IV"},
      {"intravenously", "IV"},
      {"ivpb", "IVPB"},
      {"iv piggyback", "IVPB"},
      {"im", "IM"},
      {"intramuscular", "IM"},
      {"intramuscularly", "IM"},
      {"sc", "SC"},
      {"sq", "SC"},
      {"subq", "SC"},
      {"subcut", "SC"},
      {"subcutaneous", "SC"},
      {"subcutaneously", "SC"},
      {"inh", "INH"},
      {"inhaled", "INH"},
      {"inhalation", "INH"},
      {"by inhalation", "INH"},
      {"neb", "NEB"},
      {"via nebulizer", "NEB"},
      {"nebulized", "NEB"},
      {"nebulizer", "NEB"},
      {"top", "TOP"},
      {"topical", "TOP"},
      {"topically", "TOP"},
      {"td", "TD"},
      {"transdermal", "TD"},
      {"transdermally", "TD"},
      {"pr", "PR"},
      {"rectal", "PR"},
      {"rectally", "PR"},
      {"per rectum", "PR"},
      {"in", "IN"},
      {"intranasal", "IN"},
      {"intranasally", "IN"},
      {"nasal", "IN"},
      {"ou", "OU"},
      {"in both eyes", "OU"},
      {"both eyes", "OU"},
  };
  if (auto it = kRoutes.find(w); it != kRoutes.end()) return it->second;
  return w;
}

std::string normalize_frequency(std::string_view s) {
  std::string w = sig_words(s);
  // PRN is scored as its own field.
  for (const char* prn : {"as needed", "prn", "if needed"}) {
    std::size_t pos;
    while ((pos = w.find(prn)) != std::string::npos) w.erase(pos, std::string_view(prn).size());
  }
  w = collapse_spaces(w);
  while (!w.empty() && w.back() == ' ') w.pop_back();
  static const std::map<std::string, std::string> kFixed = {
      {"daily", "1/1d"},
      {"once daily", "1/1d"},
      {"once a day", "1/1d"},
      {"every day", "1/1d"},
      {"qd", "1/1d"},
      {"od", "1/1d"},
      {"qday", "1/1d"},
      {"qam", "1/1d@MORN"},
      {"every morning", "1/1d@MORN"},
      {"daily in the morning", "1/1d@MORN"},
      {"qhs", "1/1d@HS"},
      {"hs", "1/1d@HS"},
      {"at bedtime", "1/1d@HS"},
      {"nightly", "1/1d@HS"},
      {"daily at bedtime", "1/1d@HS"},
      {"every night at bedtime", "1/1d@HS"},
      {"bid", "2/1d"},
      {"twice daily", "2/1d"},
      {"twice a day", "2/1d"},
      {"2 times daily", "2/1d"},
      {"two times daily", "2/1d"},
      {"2 times a day", "2/1d"},
      {"tid", "3/1d"},
      {"three times daily", "3/1d"},
      {"three times a day", "3/1d"},
      {"3 times daily", "3/1d"},
      {"3 times a day", "3/1d"},
      {"qid", "4/1d"},
      {"four times daily", "4/1d"},
      {"four times a day", "4/1d"},
      {"4 times daily", "4/1d"},
      {"4 times a day", "4/1d"},
      {"weekly", "1/1wk"},
      {"once a week", "1/1wk"},
      {"once weekly", "1/1wk"},
      {"every week", "1/1wk"},
      {"qweek", "1/1wk"},
      {"qwk", "1/1wk"},
      {"ac", "3/1d@AC"},
      {"before meals", "3/1d@AC"},
      {"ac&hs", "4/1d@AC,HS"},
      {"ac & hs", "4/1d@AC,HS"},
      {"achs", "4/1d@AC,HS"},
      {"ac and hs", "4/1d@AC,HS"},
      {"before meals and at bedtime", "4/1d@AC,HS"},
      {"once", "once"},
      {"one time", "once"},
      {"x1", "once"},
      {"one dose", "once"},
      {"stat", "once"},
      {"continuous", "continuous"},
      {"continuous infusion", "continuous"},
      {"continuously", "continuous"},
      {"pre-op", "preop"},
      {"preop", "preop"},
      {"preoperatively", "preop"},
      {"within 60 minutes before incision", "preop"},
  };
  if (auto it = kFixed.find(w); it != kFixed.end()) return it->second;
  // qNh, q N h, qNhr, every N hours, every N hrs; qA-Bh, every A to B hours.
  std::string x = w;
  std::string compact;
  for (char c : x)
    if (c != ' ') compact.push_back(c);
  auto interval = [](std::string_view body) -> std::optional<std::string> {
    // body: "8", "4-6", "4to6"
    std::string b(body);
    replace_all(b, "to", "-");
    const auto dash = b.find('-');
    if (dash == std::string::npos) {
      if (!all_digits(b)) return std::nullopt;
      return b;
    }
    const std::string lo = b.substr(0, dash), hi = b.substr(dash + 1);
    if (!all_digits(lo) || !all_digits(hi)) return std::nullopt;
    return lo + "-" + hi;
  };
  auto strip_suffix = [](std::string& v) {
    for (const char* suf : {"hours", "hour", "hrs", "hr", "h"})
      if (v.ends_with(suf)) {
        v.erase(v.size() - std::string_view(suf).size());
        return true;
      }
    return false;
  };
  std::string body;
  if (compact.size() > 2 && compact[0] == 'q' && is_digit(compact[1])) {
    body = compact.substr(1);
  } else if (compact.starts_with("every") && compact.size() > 5 && is_digit(compact[5])) {
    body = compact.substr(5);
  }
  if (!body.empty() && strip_suffix(body)) {
    if (auto iv = interval(body)) {
      if (*iv == "24") return "1/1d";
      return "1/" + *iv + "h";
    }
  }
  return w;
}

std::string normalize_flag(std::string_view s) {
  std::string w = fold_text(s);
  static const std::map<std::string, std::string> kFlags = {
      {"n", "N"},
      {"normal", "N"},
      {"wnl", "N"},
      {"h", "H"},
      {"high", "H"},
      {"hi", "H"},
      {"\u2191", "H"},
      {"l", "L"},
      {"low", "L"},
      {"lo", "L"},
      {"\u2193", "L"},
      {"hh", "HH"},
      {"h!", "HH"},
      {"critical high", "HH"},
      {"crit high", "HH"},
      {"panic high", "HH"},
      {"high critical", "HH"},
      {"ch", "HH"},
      {"ll", "LL"},
      {"l!", "LL"},
      {"critical low", "LL"},
      {"crit low", "LL"},
      {"panic low", "LL"},
      {"low critical", "LL"},
      {"cl", "LL"},
      {"a", "A"},
      {"abnormal", "A"},
      {"abn", "A"},
  };
  if (auto it = kFlags.find(w); it != kFlags.end()) return it->second;
  return w;
}

std::string normalize_range(std::string_view s) {
  std::string f = fold(s);
  replace_all(f, "\u2264", "<=");
  replace_all(f, "\u2265", ">=");
  replace_all(f, " to ", " - ");
  // Comparator forms: "<200", "< 200 mg/dL", ">=60".
  for (const char* cmp : {"<=", ">=", "<", ">"}) {
    const std::string_view c(cmp);
    if (std::string_view(f).substr(0, c.size()) == c) {
      std::string rest = f.substr(c.size());
      const auto q = parse_quantities(rest);
      if (q && q->size() == 1) return std::string(c) + (*q)[0].value.str();
      break;
    }
  }
  // "lo-hi" with an optional unit tail; either bound may be negative ("-2.0 - 2.0").
  std::size_t i = 0;
  auto number_at = [&](std::size_t& p) -> std::optional<Decimal> {
    while (p < f.size() && f[p] == ' ') ++p;
    std::size_t q = p;
    if (q < f.size() && (f[q] == '-' || f[q] == '+')) ++q;
    const std::size_t digits_from = q;
    while (q < f.size() && (is_digit(f[q]) || f[q] == '.' || f[q] == ',')) ++q;
    while (q > digits_from && (f[q - 1] == '.' || f[q - 1] == ',')) --q;
    if (q == digits_from) return std::nullopt;
    auto d = parse_decimal(std::string_view(f).substr(p, q - p));
    if (d) p = q;
    return d;
  };
  if (auto lo = number_at(i)) {
    while (i < f.size() && f[i] == ' ') ++i;
    if (i < f.size() && f[i] == '-') {
      ++i;
      if (auto hi = number_at(i)) {
        // Anything after must be a unit (no further numbers).
        const std::string tail = f.substr(i);
        if (std::none_of(tail.begin(), tail.end(), [](char c) { return is_digit(c); }) ||
            !parse_unit(tail).base.empty())
          return lo->str() + ".." + hi->str();
      }
    }
  }
  return fold_text(s);
}

std::string normalize_code(std::string_view s, bool drop_dots) {
  std::string out;
  for (char c : s) {
    if (is_space(c) || (drop_dots && c == '.')) continue;
    out.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Vocabulary

void Vocabulary::add_group(const std::string& section, const std::vector<std::string>& names) {
  if (names.empty()) return;
  auto& m = map_[section];
  const std::string canon = fold_text(names.front());
  // A name already in a group keeps its first group (tables may repeat short names).
  std::string target = canon;
  if (auto it = m.find(canon); it != m.end()) target = it->second;
  for (const auto& n : names) {
    const std::string key = fold_text(n);
    if (!key.empty()) m.emplace(key, target);
  }
  ++groups_;
}

std::string Vocabulary::canonical(const std::string& section, std::string_view name) const {
  std::string key = fold_text(name);
  if (auto s = map_.find(section); s != map_.end())
    if (auto it = s->second.find(key); it != s->second.end()) return it->second;
  return key;
}

Vocabulary Vocabulary::from_clinical_tables(const std::string& clinical_dir) {
  const auto tables = synth::ClinicalTables::load(clinical_dir);
  Vocabulary v;
  for (const auto& l : tables.labs) {
    std::vector<std::string> names{l.name};
    if (!l.long_name.empty()) names.push_back(l.long_name);
    v.add_group("labs", names);
  }
  for (const auto& vi : tables.vitals) {
    std::vector<std::string> names{vi.name};
    if (!vi.abbr.empty()) names.push_back(vi.abbr);
    v.add_group("vitals", names);
  }
  for (const auto& va : tables.vaccines) {
    std::vector<std::string> names{va.name};
    if (!va.short_name.empty()) names.push_back(va.short_name);
    v.add_group("immunizations", names);
  }
  return v;
}

}  // namespace mv::eval
