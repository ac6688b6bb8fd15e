// The clinical structurer: OCR pages (rows, cells, word boxes) to a schema Extraction. It walks the rows of
// every page in reading order, tracking the current section from headings (data/extract/sections.json), and
// recognises key-value fields (data/extract/labels.json, value after a colon, in the next cell, or in the
// cell below the label), medication lines and their sig continuation lines, lab rows, vital signs, allergy
// lists, diagnoses (with ICD-10 codes when printed), procedures with their findings and impression,
// immunisation rows and follow-ups. Every item gets provenance: page, the union box of its fields, a box per
// field, source "ocr" and the mean OCR confidence of its words.
#pragma once
#include <vector>

#include "extract/clinical_text.hpp"
#include "extract/ocr.hpp"
#include "extract/schema.hpp"

namespace mv::extract {

struct StructureOptions {
  bool derive_flags = false;  // fill a lab flag from the printed range when none is printed (no "flag" box)
  // A lab or vital whose value lies on a word of lower Tesseract confidence (0..1) is left out; 0 = off.
  // Off by default: on the dev sets it removed almost no wrong values (docs/design/extract.md).
  double min_value_confidence = 0;
};

// A lab value printed with other decimals than its printed reference range ("39" under "3.5-5.1", "09" under
// "0.8-1.1", "17.11" under "22.0-26.0", "16.6" under "135-175"): a laboratory prints a test's results with
// the precision of its range, so one of the two was misread (a dropped or stray decimal point). True when the
// value is a plain number (optionally `<`/`>`) and the range is `lo-hi`, `<hi` or `>lo`, and the value's
// decimals differ from the most precise bound's.
bool value_precision_conflicts(const Lab& lab);

// True when the lab's value is a plain number with fewer decimals than its printed range (a lost decimal
// point; only such a value is replaced by a re-read that fits the range).
bool value_has_fewer_decimals_than_range(const Lab& lab);

// The same test for a re-read value: true when `value` is a plain number (no leading zero before a digit)
// with as many decimals as the most precise bound of `range` (so it fits the range's precision).
bool value_fits_range_precision(std::string_view value, std::string_view range);

Extraction structure_document(const std::vector<OcrPage>& pages, const Vocabulary& vocab,
                              const StructureOptions& options = {});

}  // namespace mv::extract
