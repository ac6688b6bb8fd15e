// Consistency checks on the values of an extraction, applied after structuring (structure_document). Each
// rule is general (it knows nothing of any document) and removes what cannot be right rather than guessing a
// replacement:
//  - a lab value with a leading zero before another digit ("04", "06.6") is not a printed number (a speck or
//    a misread digit): the lab is left out;
//  - a reference range whose lower bound exceeds its upper bound ("6.5-2.2") was misread: the range (and a
//    flag derived from it, which has no box) is dropped, the rest of the lab kept;
//  - a vital value outside the physiologically possible bounds of data/clinical/vitals.json ("possible",
//    per printed unit, with their sources) or a blood pressure whose diastolic is not below its systolic is
//    a misread: the vital is left out;
//  - a person's name (patient or provider) that cannot be one is dropped: one with a character that no name
//    holds (a digit, "!", "|", "_", ":" — "Chery! A. Patel", a label run into the value), a doubled period
//    ("Maria L.. Brooks"), or one in "First M" order that ends in a bare initial ("Michael L", "George M":
//    the surname and the initial's period lost). A name in "LAST, FIRST M" order (with a comma)
//    legitimately ends in an initial and is kept;
//  - a medical record number holds letters and digits (and hyphens); one with any other character
//    ("!244700", "12#4567") was misread and is dropped (look-alikes that are known, such as "$" for a
//    leading S, are mended in the structurer before this check).
#pragma once
#include "extract/clinical_text.hpp"
#include "extract/schema.hpp"

namespace mv::extract {

// True when `value` is a plain number whose integer part has a leading zero before another digit.
bool malformed_number(std::string_view value);

// True when `range` is "lo-hi" with lo > hi.
bool reversed_range(std::string_view range);

// True when a vital's value cannot be a measurement of that vital (bounds of the vocabulary for its unit, or
// for any of the vital's units when none is given); false when nothing is known about the vital.
bool vital_impossible(const Vital& vital, const Vocabulary& v);

// True when `name` cannot be a person's name (with credentials, as a provider's) by the rule above. Name
// characters: letters (any non-ASCII byte counts as part of a letter), spaces, and . , ' -
bool implausible_name(std::string_view name);

// True when `id` holds a character other than an ASCII letter, digit or hyphen.
bool malformed_identifier(std::string_view id);

// Applies the rules above to `e` in place.
void check_values(Extraction& e, const Vocabulary& v);

}  // namespace mv::extract
