#include "extract/ocr_extractor.hpp"

#include <thread>

#include "core/error.hpp"
#include "core/thread_pool.hpp"
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
