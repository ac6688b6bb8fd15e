// Synthetic clinical documents: one composer per document type lays out a realistic page (letterheads,
// patient blocks, tables, key-value forms, narrative, two columns, running headers and footers, several
// pages when the content is long) with randomised fonts, sizes and styles, and fills the ground truth
// (extract::Extraction) with exactly what it printed, each field tagged so its box is measured.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "data/clinical_tables.hpp"
#include "data/rng.hpp"
#include "data/synth_canvas.hpp"
#include "extract/schema.hpp"

namespace mv::synth {

// The document types synth renders (the ten of the original pipeline, then ED triage note, pathology report
// and vaccination record), as schema document_type values.
const std::vector<std::string>& synth_types();

struct ComposedDocument {
  extract::Extraction truth;  // with provenance boxes in page pixels (before any degradation)
  std::unique_ptr<Canvas> canvas;
};

// Lays out one document of `type`; everything random comes from `rng`.
ComposedDocument compose_document(const std::string& type, const ClinicalTables& tables,
                                  const TextEngine& engine, Rng& rng);

}  // namespace mv::synth
