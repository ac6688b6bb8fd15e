#include "extract/extractor.hpp"

#include <charconv>
#include <fstream>

#include "core/error.hpp"
#include "extract/ocr_extractor.hpp"
#include "extract/vlm_extractor.hpp"

namespace mv::extract {

const std::vector<std::string>& extractor_backends() {
  static const std::vector<std::string> names = {"ocr", "vlm"};
  return names;
}

std::unique_ptr<Extractor> make_extractor(std::string_view backend, const ExtractorConfig& config) {
  std::string name(backend);
  if (name == "auto") name = config.model_dir.empty() ? "ocr" : "vlm";
  if (name == "ocr") return make_ocr_extractor(config);
  if (name == "vlm") {
    if (config.model_dir.empty()) fail(Errc::kUsage, "backend vlm needs a model directory (--model DIR)");
    return make_vlm_extractor(config);
  }
  fail(Errc::kUsage, "unknown extraction backend '{}' (expected auto, ocr or vlm)", name);
}

bool PageRange::contains(int page) const {
  if (spans.empty()) return true;
  for (const auto& [a, b] : spans)
    if (page >= a && (b == 0 || page <= b)) return true;
  return false;
}

namespace {
int parse_page_number(std::string_view s, std::string_view whole) {
  int v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v < 1)
    fail(Errc::kUsage, "bad page range '{}': '{}' is not a page number (1-based)", whole, s);
  return v;
}
std::string_view trim(std::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  return s;
}
}  // namespace

PageRange parse_page_range(std::string_view text) {
  PageRange r;
  text = trim(text);
  if (text.empty() || text == "all") return r;
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t comma = text.find(',', start);
    if (comma == std::string_view::npos) comma = text.size();
    std::string_view part = trim(text.substr(start, comma - start));
    if (part.empty()) fail(Errc::kUsage, "bad page range '{}': empty item", text);
    std::size_t dash = part.find('-');
    if (dash == std::string_view::npos) {
      int p = parse_page_number(part, text);
      r.spans.emplace_back(p, p);
    } else {
      std::string_view a = trim(part.substr(0, dash)), b = trim(part.substr(dash + 1));
      int first = a.empty() ? 1 : parse_page_number(a, text);
      int last = b.empty() ? 0 : parse_page_number(b, text);
      if (last != 0 && last < first)
        fail(Errc::kUsage, "bad page range '{}': {} ends before it starts", text, part);
      r.spans.emplace_back(first, last);
    }
    start = comma + 1;
  }
  return r;
}

std::vector<Page> load_pages(const std::filesystem::path& path, const PageRange& range,
                             const ImageLimits& limits) {
  auto images = load_image_pages(path, limits);
  std::optional<double> dpi;
  {
    std::ifstream f(path, std::ios::binary);
    std::uint8_t head[8] = {};
    f.read(reinterpret_cast<char*>(head), sizeof head);
    if (sniff_image_format(std::span<const std::uint8_t>(head, static_cast<std::size_t>(f.gcount()))) ==
        ImageFormat::kPdf)
      dpi = limits.pdf_dpi;
  }
  std::vector<Page> pages;
  for (std::size_t i = 0; i < images.size(); ++i) {
    int number = static_cast<int>(i) + 1;
    if (!range.contains(number)) continue;
    pages.push_back(Page{std::move(images[i]), number, dpi});
  }
  if (pages.empty())
    fail(Errc::kInvalidInput, "{}: the page range selects none of its {} page(s)", path.string(),
         images.size());
  return pages;
}

}  // namespace mv::extract
