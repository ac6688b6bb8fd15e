// The vision-language backend: Qwen2.5-VL prompted for JSON in the extraction schema, the answer repaired
// (code fences, truncation) and validated, then every value checked against the page's OCR text.
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "extract/extractor.hpp"
#include "extract/ocr.hpp"
#include "io/image.hpp"
#include "text/chat_template.hpp"

namespace mv::extract {

// Loads the checkpoint of config.model_dir and runs it, one document at a time.
std::unique_ptr<Extractor> make_vlm_extractor(const ExtractorConfig& config);

// The model's greedy answer to `messages` (whose image parts take `images` in order), at most
// `max_new_tokens` tokens. Throws mv::Error.
using VlmGenerate = std::function<std::string(std::vector<ChatMessage> messages,
                                              std::vector<ImageRGB8> images, int max_new_tokens)>;

// The same extractor over a model someone else runs (the server's batching engine, shared with its chat
// routes): it loads no weights; `generate` is called from the extracting thread.
std::unique_ptr<Extractor> make_vlm_extractor(const ExtractorConfig& config, VlmGenerate generate);

// Model output to JSON: strips code fences and prose around the outermost object, closes a truncated
// answer (open strings, arrays, objects; a dangling key or comma is dropped). Throws mv::Error(kInvalidInput)
// "model output is not JSON: ..." when nothing parseable remains.
nlohmann::json repair_model_json(std::string_view text);

// Marks provenance.verified on every item of `e`: true when each of its printed values is found in the OCR
// text of its page (case- and space-insensitive), false otherwise. Returns the number of items checked.
int verify_against_ocr(Extraction& e, const std::vector<OcrPage>& pages);

}  // namespace mv::extract
