// The vision-language backend: Qwen2.5-VL prompted for JSON in the extraction schema, the answer repaired
// (code fences, truncation) and validated, then every value checked against the page's OCR text.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "extract/extractor.hpp"
#include "extract/ocr.hpp"

namespace mv::extract {

std::unique_ptr<Extractor> make_vlm_extractor(const ExtractorConfig& config);

// Model output to JSON: strips code fences and prose around the outermost object, closes a truncated
// answer (open strings, arrays, objects; a dangling key or comma is dropped). Throws mv::Error(kInvalidInput)
// "model output is not JSON: ..." when nothing parseable remains.
nlohmann::json repair_model_json(std::string_view text);

// Marks provenance.verified on every item of `e`: true when each of its printed values is found in the OCR
// text of its page (case- and space-insensitive), false otherwise. Returns the number of items checked.
int verify_against_ocr(Extraction& e, const std::vector<OcrPage>& pages);

}  // namespace mv::extract
