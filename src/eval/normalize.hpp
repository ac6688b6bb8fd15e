// Normalisation of printed clinical values for scoring (shared/reference/medical-extraction.md §4.2):
// numbers and units are parsed, never string-matched, so "10 mg" never equals "100 mg" while "7.0" equals
// "7" and "1,000 mcg" equals "1 mg"; dates become ISO 8601 with the precision printed; routes and
// frequencies are mapped from their printed abbreviations and long forms to one code (BID = "twice daily"
// = frequency 2 per 1 d; PO = "by mouth"); lab flags to the HL7 v3 interpretation codes; names are compared
// case- and punctuation-insensitively, with optional synonym groups (lab and vital abbreviations).
#pragma once
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mv::eval {

// Unicode NFKC + case folding, typographic dashes to '-', whitespace collapsed, trimmed.
std::string fold(std::string_view s);
// fold() plus punctuation that does not carry meaning in names ( , ; : ( ) [ ] " ' ) removed and a final
// '.' dropped: "Chest X-ray, 2 views (PA and lateral)" == "chest x-ray 2 views pa and lateral".
std::string fold_text(std::string_view s);

// 1 - Levenshtein(a, b) / max(|a|, |b|) over code points; 1 for two empty strings.
double similarity(std::string_view a, std::string_view b);

// An exact decimal: value = (negative ? -1 : 1) * digits * 10^exponent, digits without leading or trailing
// zeros ("" for zero). "7.0", "7" and "7.00" are the same Decimal; so are "1,000" and "1000".
struct Decimal {
  bool negative = false;
  std::string digits;
  int exponent = 0;
  bool operator==(const Decimal&) const = default;
  Decimal scaled(int power_of_ten) const;  // value * 10^power_of_ten, exactly
  std::string str() const;                 // plain decimal notation
};
// Parses a whole string as a number: optional sign, digits with optional thousands grouping ("1,000",
// "25,000") and one decimal separator ('.' or a ',' that is not a thousands separator). nullopt otherwise.
std::optional<Decimal> parse_decimal(std::string_view s);

// A unit as a canonical base ("g/l", "/min", "[u]/l", "mm[hg]", "{tbl}") and a power of ten, so that
// commensurable units differ only in scale: mg = (g, -3), mcg = ug = µg = (g, -6), x10^3/uL = 10^9/L =
// (/l, 9), bpm = beats/min = /min. Temperature scales are affine and are not converted (°F != °C).
struct Unit {
  std::string base;
  int scale = 0;
  bool operator==(const Unit&) const = default;
  bool empty() const { return base.empty() && scale == 0; }
};
Unit parse_unit(std::string_view printed);

// One printed quantity: [comparator] number [unit]. A strength such as "10 mg/325 mg" or a blood pressure
// "128/76" is a list of them.
struct Quantity {
  std::string comparator;  // "", "<", "<=", ">", ">="
  Decimal value;
  Unit unit;
  bool operator==(const Quantity&) const = default;
};
// nullopt when the text is not a list of quantities (e.g. "Negative", "see note").
std::optional<std::vector<Quantity>> parse_quantities(std::string_view s);

// Equality of printed quantities: parsed and compared exactly after unit scaling; text that does not parse
// falls back to fold_text equality (both sides must then be non-numeric).
bool quantity_equal(std::string_view a, std::string_view b);

// ISO 8601 with the printed precision: "2024-05-02", "05/02/2024" (US month first), "5/2/24",
// "2 May 2024", "May 2, 2024", "May 2024", "2024-05-02 14:30" -> "2024-05-02T14:30". nullopt when the
// text is not a date.
std::optional<std::string> normalize_date(std::string_view s);

// Route code: "PO" for PO, p.o., oral, orally, by mouth; IV, IVPB, IM, SC (SQ, subcut, subcutaneous), SL,
// INH, NEB, TOP, TD, PR, IN (intranasal), OU. Unknown text: fold_text.
std::string normalize_route(std::string_view s);
// Frequency as FHIR-Timing-like code: "2/1d" for BID / twice daily / b.i.d.; "1/8h" for q8h / every 8 hours;
// "1/1d" for daily, once daily, q24h; "1/1d@HS" for qHS / at bedtime; "1/4-6h" for q4-6h; "1/1wk" weekly;
// "3/1d@AC" before meals; "once"; "continuous"; "preop". PRN words are removed (PRN is its own field).
// Unknown text: fold_text.
std::string normalize_frequency(std::string_view s);
// HL7 v3 interpretation code: N, H, L, HH, LL, A ("high" -> H, "critical low" -> LL). Unknown: fold().
std::string normalize_flag(std::string_view s);
// Reference range: "3.5-5.1", "3.5 - 5.1", "3.5 to 5.1 mmol/L" -> "3.5..5.1"; "<200" -> "<200";
// "-2.0 to 2.0" -> "-2..2". Unknown text: fold_text.
std::string normalize_range(std::string_view s);
// Codes (ICD-10, LOINC, lot, MRN): upper case, spaces removed; for ICD-10 the dot is optional.
std::string normalize_code(std::string_view s, bool drop_dots);

// Synonym groups for names, per section ("labs", "vitals", "immunizations"): every member maps to the
// group's first member (folded).
class Vocabulary {
 public:
  void add_group(const std::string& section, const std::vector<std::string>& names);
  // The canonical folded name for `name` in `section` (fold_text(name) when it is in no group).
  std::string canonical(const std::string& section, std::string_view name) const;
  std::size_t groups() const { return groups_; }
  // Groups built from data/clinical (labs: name/long name; vitals: name/abbreviation; vaccines: name/short
  // name). Throws mv::Error naming the file when the tables cannot be read.
  static Vocabulary from_clinical_tables(const std::string& clinical_dir);

 private:
  std::map<std::string, std::map<std::string, std::string>> map_;
  std::size_t groups_ = 0;
};

}  // namespace mv::eval
