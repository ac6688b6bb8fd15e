// PDF pages rendered with poppler-cpp (Splash backend, antialiasing on, white paper) at limits.pdf_dpi.
// The page count and each page's pixel size (crop box in points * dpi / 72, rounded as Splash rounds,
// sides swapped for /Rotate 90 or 270) are checked against the limits before anything is rendered.
// Encrypted (password-protected), corrupt and truncated files are kInvalidInput. poppler's own error
// output is routed to the debug log instead of stderr.
#include <poppler-document.h>
#include <poppler-global.h>
#include <poppler-image.h>
#include <poppler-page-renderer.h>
#include <poppler-page.h>

#include <climits>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>

#include "core/error.hpp"
#include "core/log.hpp"
#include "io/image_internal.hpp"

namespace mv {

namespace {

void poppler_message(const std::string& message, void*) { spdlog::debug("poppler: {}", message); }

void install_poppler_handler() {
  static std::once_flag once;
  std::call_once(once, [] { poppler::set_debug_error_function(poppler_message, nullptr); });
}

// A truncated PDF loses its final "%%EOF"; poppler would often rebuild the cross-reference table and
// render whatever survived, so we refuse such files explicitly.
bool has_eof_marker(std::span<const std::uint8_t> data) {
  constexpr std::string_view kEof = "%%EOF";
  const std::size_t window = std::min<std::size_t>(data.size(), 4096);
  const std::string_view tail(reinterpret_cast<const char*>(data.data() + data.size() - window), window);
  return tail.find(kEof) != std::string_view::npos;
}

std::unique_ptr<poppler::document> open_pdf(std::span<const std::uint8_t> data, const std::string& name) {
  install_poppler_handler();
  if (data.size() > static_cast<std::size_t>(INT_MAX)) fail(Errc::kTooLarge, "{}: PDF file over 2 GiB", name);
  if (!has_eof_marker(data)) {
    fail(Errc::kInvalidInput, "{}: truncated or corrupt PDF (no %%EOF marker at the end)", name);
  }
  std::unique_ptr<poppler::document> doc(poppler::document::load_from_raw_data(
      reinterpret_cast<const char*>(data.data()), static_cast<int>(data.size())));
  if (!doc) fail(Errc::kInvalidInput, "{}: corrupt or unreadable PDF", name);
  if (doc->is_locked()) fail(Errc::kInvalidInput, "{}: the PDF is encrypted with a password", name);
  return doc;
}

struct PageSize {
  std::uint64_t width = 0;
  std::uint64_t height = 0;
};

PageSize page_pixels(const poppler::page& page, double dpi, const std::string& name, int index) {
  const poppler::rectf box = page.page_rect(poppler::crop_box);
  double w = std::abs(box.width()) * dpi / 72.0;
  double h = std::abs(box.height()) * dpi / 72.0;
  const auto orientation = page.orientation();
  if (orientation == poppler::page::landscape || orientation == poppler::page::seascape) std::swap(w, h);
  if (!std::isfinite(w) || !std::isfinite(h) || w > 1e12 || h > 1e12) {
    fail(Errc::kInvalidInput, "{}: PDF page {} has an invalid size", name, index + 1);
  }
  // SplashOutputDev: (int)(size + 0.5), at least one pixel.
  PageSize size;
  size.width = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(w + 0.5));
  size.height = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(h + 0.5));
  return size;
}

std::unique_ptr<poppler::page> get_page(const poppler::document& doc, int index, const std::string& name) {
  std::unique_ptr<poppler::page> page(doc.create_page(index));
  if (!page) fail(Errc::kInvalidInput, "{}: PDF page {} cannot be read", name, index + 1);
  return page;
}

}  // namespace

namespace image_detail {

std::vector<ImageRGB8> decode_pdf(std::span<const std::uint8_t> data, const std::string& name,
                                  const ImageLimits& limits, int max_pages) {
  if (!(limits.pdf_dpi > 0.0 && limits.pdf_dpi <= 2400.0)) {
    fail(Errc::kUsage, "{}: PDF resolution {} dpi is out of range (0, 2400]", name, limits.pdf_dpi);
  }
  const auto doc = open_pdf(data, name);
  const int pages = doc->pages();
  check_page_count(pages < 0 ? 0 : static_cast<std::uint64_t>(pages), limits, name, "PDF document");
  const int wanted = std::min(pages, std::max(1, max_pages));

  std::vector<std::unique_ptr<poppler::page>> page_objects;
  for (int i = 0; i < wanted; ++i) {
    page_objects.push_back(get_page(*doc, i, name));
    const PageSize size = page_pixels(*page_objects.back(), limits.pdf_dpi, name, i);
    check_dimensions(size.width, size.height, limits, name,
                     fmt::format("PDF page {} at {} dpi", i + 1, limits.pdf_dpi));
  }

  poppler::page_renderer renderer;
  renderer.set_render_hint(poppler::page_renderer::antialiasing, true);
  renderer.set_render_hint(poppler::page_renderer::text_antialiasing, true);
  renderer.set_image_format(poppler::image::format_rgb24);

  std::vector<ImageRGB8> images;
  images.reserve(static_cast<std::size_t>(wanted));
  for (int i = 0; i < wanted; ++i) {
    const poppler::image rendered =
        renderer.render_page(page_objects[i].get(), limits.pdf_dpi, limits.pdf_dpi);
    if (!rendered.is_valid() || rendered.width() <= 0 || rendered.height() <= 0) {
      fail(Errc::kInvalidInput, "{}: PDF page {} cannot be rendered", name, i + 1);
    }
    if (rendered.format() != poppler::image::format_rgb24) {
      fail(Errc::kFailure, "{}: poppler rendered page {} in an unexpected pixel format", name, i + 1);
    }
    const int w = rendered.width(), h = rendered.height();
    check_dimensions(static_cast<std::uint64_t>(w), static_cast<std::uint64_t>(h), limits, name,
                     fmt::format("rendered PDF page {}", i + 1));
    const int stride = rendered.bytes_per_row();
    if (stride < w * 3) fail(Errc::kFailure, "{}: poppler returned a short row for page {}", name, i + 1);
    ImageRGB8 image = make_image(w, h, name);
    const char* src = rendered.const_data();
    for (int y = 0; y < h; ++y) {
      std::memcpy(image.row(y), src + static_cast<std::size_t>(y) * static_cast<std::size_t>(stride),
                  static_cast<std::size_t>(w) * 3);
    }
    images.push_back(std::move(image));
  }
  return images;
}

int count_pdf_pages(std::span<const std::uint8_t> data, const std::string& name, const ImageLimits& limits) {
  const auto doc = open_pdf(data, name);
  const int pages = doc->pages();
  check_page_count(pages < 0 ? 0 : static_cast<std::uint64_t>(pages), limits, name, "PDF document");
  return pages;
}

}  // namespace image_detail

}  // namespace mv
