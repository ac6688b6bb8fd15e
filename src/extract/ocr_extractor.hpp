// The embedded OCR backend: Tesseract pages -> clinical structurer -> schema Extraction.
#pragma once
#include <memory>

#include "extract/extractor.hpp"
#include "extract/ocr.hpp"

namespace mv::extract {

std::unique_ptr<Extractor> make_ocr_extractor(const ExtractorConfig& config);

// The OCR pages of a document (shared with the vlm backend's verification).
std::vector<OcrPage> ocr_pages(OcrEngine& engine, const std::vector<Page>& pages, int threads);

// Labs whose value has other decimals than the printed range (structurer.hpp value_precision_conflicts):
// the value's box is read again (OcrEngine::reread, digits only); a reading with the range's precision
// replaces the value, otherwise the lab is left out rather than emitted with a likely misread value.
void recheck_lab_values(Extraction& e, OcrEngine& engine, const std::vector<Page>& pages);

}  // namespace mv::extract
