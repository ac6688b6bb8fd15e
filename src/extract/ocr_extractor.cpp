#include "extract/ocr_extractor.hpp"

#include <thread>

#include "core/error.hpp"
#include "core/log.hpp"
#include "core/thread_pool.hpp"
#include "extract/clinical_text.hpp"
#include "extract/structurer.hpp"

namespace mv::extract {

std::vector<OcrPage> ocr_pages(OcrEngine& engine, const std::vector<Page>& pages, int threads) {
  std::vector<OcrPage> out(pages.size());
  if (pages.size() <= 1 || threads == 1) {
    for (std::size_t i = 0; i < pages.size(); ++i) out[i] = engine.recognize(pages[i]);
    return out;
  }
  ThreadPool pool(std::min<int>(threads <= 0 ? std::max(1u, std::thread::hardware_concurrency()) : threads,
                                static_cast<int>(pages.size())));
  pool.parallel_for(static_cast<std::int64_t>(pages.size()), [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) out[i] = engine.recognize(pages[i]);
  });
  return out;
}

void recheck_lab_values(Extraction& e, OcrEngine& engine, const std::vector<Page>& pages) {
  std::vector<Lab> kept;
  kept.reserve(e.labs.size());
  for (auto& lab : e.labs) {
    if (!value_precision_conflicts(lab)) {
      kept.push_back(std::move(lab));
      continue;
    }
    // A value with more decimals than its range may as well be right under a range that lost its point
    // ("16.6" under "135-175"): no re-read can tell which, so the lab is left out.
    if (!value_has_fewer_decimals_than_range(lab)) {
      spdlog::debug("OCR: lab left out, its value has more decimals than its range");  // no PHI
      continue;
    }
    // A value with fewer decimals (a lost decimal point): the value cell is read again alone, upscaled,
    // with digits only; a reading that has the range's precision replaces the first one, otherwise the
    // lab is left out.
    std::optional<OcrEngine::Reread> again;
    if (lab.provenance && lab.provenance->page >= 1 &&
        lab.provenance->page <= static_cast<int>(pages.size())) {
      auto it = lab.provenance->fields.find("value");
      if (it != lab.provenance->fields.end())
        again = engine.reread(pages[lab.provenance->page - 1], it->second, "0123456789.<>");
    }
    const bool fits = again && value_fits_range_precision(again->text, *lab.reference_range);
    // No text here: values are PHI.
    spdlog::debug("OCR: lab value without its range's decimals re-read on page {}: {} (confidence {:.2f})",
                  lab.provenance ? lab.provenance->page : 0,
                  fits ? "replaced" : (again ? "left out, re-read does not fit" : "left out, no re-read"),
                  again ? again->confidence : 0.0);
    if (fits) {
      std::string v = again->text;
      std::erase(v, ' ');
      lab.value = v;
      // A flag derived from the range (it has no box; --derive-flags) is derived again for the new value.
      if (lab.flag && !lab.provenance->fields.contains("flag"))
        lab.flag = derive_flag(lab.value, *lab.reference_range);
      // The item's confidence is no higher than that of the reading its value now comes from.
      lab.provenance->confidence = std::min(lab.provenance->confidence.value_or(1.0), again->confidence);
      kept.push_back(std::move(lab));
    }
  }
  e.labs = std::move(kept);
}

namespace {

class OcrExtractor final : public Extractor {
 public:
  explicit OcrExtractor(const ExtractorConfig& c)
      : config_(c), vocab_(Vocabulary::load(c.data_dir)), engine_(OcrOptions{c.tessdata_dir}) {}

  std::string_view backend() const override { return "ocr"; }

  Extraction extract(const std::vector<Page>& pages, const ExtractOptions& options) override {
    if (pages.empty()) fail(Errc::kInvalidInput, "extract: no pages given");
    auto ocr = ocr_pages(engine_, pages, config_.threads);
    StructureOptions so;
    so.derive_flags = options.derive_flags;
    Extraction e = structure_document(ocr, vocab_, so);
    recheck_lab_values(e, engine_, pages);
    if (options.document_id) e.document_id = options.document_id;
    if (options.document_type) e.document_type = *options.document_type;
    check_extraction(to_json(e), "OCR extraction");
    return e;
  }

 private:
  ExtractorConfig config_;
  Vocabulary vocab_;
  OcrEngine engine_;
};

}  // namespace

std::unique_ptr<Extractor> make_ocr_extractor(const ExtractorConfig& config) {
  return std::make_unique<OcrExtractor>(config);
}

}  // namespace mv::extract
