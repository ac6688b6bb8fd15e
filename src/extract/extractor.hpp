// The extractor interface: page images in, one schema Extraction out. Every backend (the embedded OCR
// extractor, the Qwen2.5-VL engine) implements it, and every consumer (`medvision extract`, `medvision eval`,
// the server) goes through it, so they can be swapped by name.
//
//   auto ex = mv::extract::make_extractor("ocr", {});
//   auto pages = mv::extract::load_pages("scan.pdf", mv::extract::parse_page_range("1-3"));
//   mv::extract::Extraction e = ex->extract(pages, {});
//
// The result always validates against docs/schema.json (check_extraction); every item carries provenance
// (page, box in that page's pixels, source "ocr" or "vlm", confidence, and `verified` for VLM values that
// were found in the page's OCR text).
#pragma once
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "extract/schema.hpp"
#include "io/image.hpp"

namespace mv::extract {

// One page of a document, as decoded by mv::load_image_pages.
struct Page {
  ImageRGB8 image;
  int number = 1;             // 1-based page number within the source file
  std::optional<double> dpi;  // when known (PDF render resolution, TIFF/PNG metadata)
};

// How an extractor is built (once; loading a model is expensive).
struct ExtractorConfig {
  std::filesystem::path model_dir;  // vlm: the Qwen2.5-VL checkpoint directory (required)
  std::filesystem::path adapter;    // vlm: a PEFT LoRA adapter folder merged at load (empty: none)
  std::filesystem::path
      tessdata_dir;                // ocr: empty = Tesseract's default (TESSDATA_PREFIX or the system path)
  std::filesystem::path data_dir;  // curated vocabularies (data/); empty = found next to the binary/source
  int threads = 0;                 // worker threads; 0 = hardware concurrency
};

// Per-call options.
struct ExtractOptions {
  std::optional<std::string> document_id;    // copied into Extraction::document_id
  std::optional<std::string> document_type;  // a hint; empty = classify from the content
  bool verify = true;                        // vlm: cross-check every value against the page's OCR text
  int max_new_tokens = 2048;                 // vlm: generation budget
  bool derive_flags = false;                 // fill lab flags from the printed range when none is printed
                                             // (such a flag has no box in provenance.fields)
};

class Extractor {
 public:
  virtual ~Extractor() = default;
  // "ocr" or "vlm".
  virtual std::string_view backend() const = 0;
  // Extracts one document from its pages (in order). Throws mv::Error (kInvalidInput for an empty page list
  // or unusable pages, kFailure when the backend fails); never returns an Extraction that fails the schema.
  // Safe to call from several threads at once on the same Extractor.
  virtual Extraction extract(const std::vector<Page>& pages, const ExtractOptions& options = {}) = 0;
};

// The backends `make_extractor` knows: {"ocr", "vlm"}.
const std::vector<std::string>& extractor_backends();

// Builds a backend by name. "auto" = "vlm" when config.model_dir is set, else "ocr". Throws kUsage for an
// unknown name, kInvalidInput/kNotFound when the backend cannot start (missing model, missing tessdata).
std::unique_ptr<Extractor> make_extractor(std::string_view backend, const ExtractorConfig& config = {});

// Page selection: "1-3,5,8-" (1-based, inclusive; an open end runs to the last page). Empty = all pages.
struct PageRange {
  std::vector<std::pair<int, int>> spans;  // [first, last]; last = 0 means "to the end"
  bool contains(int page) const;
  bool all() const { return spans.empty(); }
};
PageRange parse_page_range(std::string_view text);  // throws kUsage naming the bad part

// Decodes a file (image, multi-page TIFF or PDF) into pages, keeping only those in `range`. Throws like
// mv::load_image_pages; kInvalidInput when the range selects no page of the file.
std::vector<Page> load_pages(const std::filesystem::path& path, const PageRange& range = {},
                             const ImageLimits& limits = {});

}  // namespace mv::extract
