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
};

Extraction structure_document(const std::vector<OcrPage>& pages, const Vocabulary& vocab,
                              const StructureOptions& options = {});

}  // namespace mv::extract
