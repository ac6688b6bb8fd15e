// Parsing of clinical strings, independent of OCR geometry: medication strings (name, strength, dose, unit,
// route, frequency, PRN, duration, indication, status, quantity, refills), lab rows (test, value, unit,
// reference range, flag), flags derived from a printed range, vitals, dates. Vocabularies come from
// data/clinical (drugs, sig words, lab tests, vitals, allergies, vaccines, studies) and data/extract (section
// headings, labels, status words, flag words, units); nothing clinical is hard-coded here.
#pragma once
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "extract/schema.hpp"

namespace mv::extract {

using Span = std::pair<std::size_t, std::size_t>;  // [begin, end) byte offsets into the parsed string

struct Vocabulary {
  std::vector<std::string> drugs;                  // names and brands (longest first)
  std::vector<std::string> lab_tests;              // names and long names (longest first)
  std::map<std::string, std::string> lab_loinc;    // lower-case test name -> LOINC
  std::map<std::string, std::string> lab_unit;     // lower-case test name -> usual unit
  std::vector<std::string> lab_results;            // qualitative results (Negative, Positive, ...)
  std::vector<std::string> vitals;                 // names and abbreviations (longest first)
  std::map<std::string, std::string> vital_loinc;  // lower-case vital name -> LOINC
  std::vector<std::string> route_abbr, route_long, freq_words, prn_words;
  std::vector<std::string> allergens, vaccines, procedures, followups;
  std::vector<std::string> vaccine_manufacturers, vaccine_sites;  // data/clinical/vaccines.json
  std::vector<std::string> dose_units, strength_units, lab_units, vital_units;
  std::map<std::string, std::vector<std::string>> vital_units_of;  // lower-case vital name -> printed units
  // lower-case vital name -> printed unit -> physiologically possible {low, high} (vitals.json "possible")
  std::map<std::string, std::map<std::string, std::pair<double, double>>> vital_bounds;
  std::vector<std::string> strength_tail_units;              // units after a slash or "per" in a strength
  std::map<std::string, std::vector<std::string>> sections;  // kind -> headings
  std::map<std::string, std::vector<std::string>> labels;    // field -> labels
  std::map<std::string, std::string> sex_values, status_words, diagnosis_status, diagnosis_roles, lab_flags,
      severities;
  std::vector<std::string> no_known_allergies;
  std::map<std::string, std::vector<std::string>> medication_columns;  // column kind -> header words
  std::vector<std::string> department_words;  // words that name a department, not a facility ("services")
  std::vector<std::string> credentials;       // professional credentials after a name ("MD", "PharmD", "RN")
  std::map<std::string, std::string> ocr_fixes;  // misread word -> word (same length)
  std::vector<std::pair<std::string, std::vector<std::string>>> document_types;  // type -> title phrases
  std::vector<std::pair<std::string, std::vector<std::string>>> document_cues;   // type -> content phrases

  // data/clinical and data/extract under `data_dir` (empty: the project's data directory).
  static Vocabulary load(const std::filesystem::path& data_dir = {});
};

std::string to_lower(std::string_view s);
// Case-insensitive search for `phrase` in `text` at word boundaries, from `from`; npos when absent.
std::size_t find_phrase(std::string_view text, std::string_view phrase, std::size_t from = 0,
                        bool case_sensitive = false);
// The longest entry of `list` found in `text` at word boundaries (leftmost among equals), with its span.
std::optional<std::pair<std::string, Span>> find_longest(std::string_view text,
                                                         const std::vector<std::string>& list,
                                                         std::size_t from = 0, bool case_sensitive = false);

struct ParsedMedication {
  Medication med;
  std::map<std::string, Span> spans;  // field -> span in the parsed text
};
// Parses a medication string that starts with (or contains) a drug name: "Metoprolol 25 mg - 1 tab PO BID x
// 7 days (hypertension)", "Insulin lispro 100 units/mL  10 units  SC  AC&HS  Discontinue". The name is the
// longest vocabulary drug found (or the words before the first number when `name_span` is given).
std::optional<ParsedMedication> parse_medication(std::string_view text, const Vocabulary& v,
                                                 std::optional<Span> name_span = std::nullopt);
// Adds the sig fields found in `text` (e.g. a "Sig: take 1 tablet by mouth twice daily" line) to `m`.
void parse_sig_into(std::string_view text, std::size_t offset, const Vocabulary& v, ParsedMedication& m);

struct ParsedLab {
  Lab lab;  // lab.loinc: from the vocabulary for a known test
  std::map<std::string, Span> spans;
  std::optional<std::string> printed_loinc;  // a LOINC code printed after the test name ("Sodium 2951-2")
};
// Parses a lab row "Potassium  5.8  H  mmol/L  3.5-5.1" (cells in any order after the test name).
std::optional<ParsedLab> parse_lab_row(std::string_view text, const Vocabulary& v);

// A lab unit as OCR printed it, read as the nearest unit of the vocabulary when it is not one but is close
// to one (leading quote/slash marks of a table rule dropped, "mg/dt" -> "mg/dL"); `test_lower` is the test
// name in lower case (its usual unit wins a tie). Returns the text unchanged when nothing is close.
std::string snap_lab_unit(std::string_view printed, std::string_view test_lower, const Vocabulary& v);

// Lexicon-constrained reading of a misread term: the entry of `terms` nearest to `printed` (letter case
// folded) when it is equal, or within edit distance 1 (2 when both have 8 or more characters) and no other
// entry is as near; nothing otherwise (the printed text is then kept: nothing is invented).
std::optional<std::string> nearest_term(std::string_view printed, const std::vector<std::string>& terms);

// A vital's unit as OCR printed it ("bom", "mmiig"), read as the nearest printed unit of that vital
// (data/clinical/vitals.json) when it is close (edit distance 1, or 2 for units of 4 or more characters;
// letter case folded) and no other unit of the vital is as close; otherwise returned unchanged.
std::string snap_vital_unit(std::string_view printed, std::string_view vital_lower, const Vocabulary& v);

// Flag of a numeric value against a printed range ("3.5-5.1", "<200", ">60"): N, H or L; nullopt when the
// value or the range cannot be read as numbers.
std::optional<std::string> derive_flag(std::string_view value, std::string_view range);
// Printed flag words ("H", "HIGH", "L *", "CRIT HIGH", "H !!", "A") to the HL7 v3 code.
std::optional<std::string> normalise_flag(std::string_view printed, const Vocabulary& v);

// Dates as printed ("1/15/80", "09-May-1943", "2024-08-07", "Sep 25, 2024 20:00") to ISO 8601 with the
// precision printed; `with_time` keeps an HH:MM that follows. Two-digit years: 00-(this year) are 20xx.
std::optional<std::string> normalise_date(std::string_view text, bool with_time = true, Span* span = nullptr);

}  // namespace mv::extract
