// The embedded OCR backend: Tesseract pages -> clinical structurer -> schema Extraction.
#pragma once
#include <memory>

#include "extract/extractor.hpp"
#include "extract/ocr.hpp"

namespace mv::extract {

std::unique_ptr<Extractor> make_ocr_extractor(const ExtractorConfig& config);

// The OCR pages of a document (shared with the vlm backend's verification).
std::vector<OcrPage> ocr_pages(OcrEngine& engine, const std::vector<Page>& pages, int threads);

}  // namespace mv::extract
