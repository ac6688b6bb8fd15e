#include "data/synth_canvas.hpp"

#include <pango/pangocairo.h>

#include <algorithm>
#include <cmath>

#include "core/error.hpp"

namespace mv::synth {

TextEngine::TextEngine() {
  font_map_ = pango_cairo_font_map_new();
  if (font_map_ == nullptr) fail(Errc::kFailure, "synth: cannot create a Pango font map (fontconfig)");
  context_ = pango_font_map_create_context(font_map_);
  // Metrics independent of the output device, so raster and PDF pages have the same layout.
  cairo_font_options_t* opts = cairo_font_options_create();
  cairo_font_options_set_hint_metrics(opts, CAIRO_HINT_METRICS_OFF);
  cairo_font_options_set_hint_style(opts, CAIRO_HINT_STYLE_NONE);
  cairo_font_options_set_antialias(opts, CAIRO_ANTIALIAS_GRAY);
  pango_cairo_context_set_font_options(context_, opts);
  cairo_font_options_destroy(opts);
  pango_cairo_context_set_resolution(context_, 72.0);
}

TextEngine::~TextEngine() {
  if (context_ != nullptr) g_object_unref(context_);
  if (font_map_ != nullptr) g_object_unref(font_map_);
}

TextBlock::~TextBlock() {
  if (layout_ != nullptr) g_object_unref(layout_);
}

TextBlock::TextBlock(TextBlock&& o) noexcept
    : layout_(o.layout_), width_(o.width_), height_(o.height_), tagged_(std::move(o.tagged_)) {
  o.layout_ = nullptr;
}

TextBlock& TextBlock::operator=(TextBlock&& o) noexcept {
  if (this != &o) {
    if (layout_ != nullptr) g_object_unref(layout_);
    layout_ = o.layout_;
    width_ = o.width_;
    height_ = o.height_;
    tagged_ = std::move(o.tagged_);
    o.layout_ = nullptr;
  }
  return *this;
}

Canvas::Canvas(const TextEngine& engine, int page_width, int page_height, double margin_x, double margin_top,
               double margin_bottom)
    : engine_(engine),
      page_width_(page_width),
      page_height_(page_height),
      margin_x_(margin_x),
      margin_top_(margin_top),
      margin_bottom_(margin_bottom) {
  pages_.emplace_back();
  y = margin_top_;
}

Canvas::~Canvas() {
  for (auto& page : pages_)
    for (auto& op : page)
      if (op.layout != nullptr) g_object_unref(op.layout);
}

void Canvas::new_page() {
  pages_.emplace_back();
  current_ = static_cast<int>(pages_.size()) - 1;
  y = margin_top_;
  if (on_new_page) on_new_page();
}

void Canvas::select_page(int page) {
  MV_CHECK(page >= 1 && page <= page_count(), "page {} of {}", page, page_count());
  current_ = page - 1;
}

TextBlock Canvas::measure(const std::vector<Span>& spans, const Font& font, double width, Align align,
                          double line_spacing) const {
  TextBlock b;
  std::string text;
  PangoAttrList* attrs = pango_attr_list_new();
  for (const auto& s : spans) {
    const auto begin = static_cast<guint>(text.size());
    text += s.text;
    const auto end = static_cast<guint>(text.size());
    if (s.bold && !font.bold) {
      PangoAttribute* a = pango_attr_weight_new(PANGO_WEIGHT_BOLD);
      a->start_index = begin;
      a->end_index = end;
      pango_attr_list_insert(attrs, a);
    }
    if (s.italic && !font.italic) {
      PangoAttribute* a = pango_attr_style_new(PANGO_STYLE_ITALIC);
      a->start_index = begin;
      a->end_index = end;
      pango_attr_list_insert(attrs, a);
    }
    if (end > begin)
      for (const auto& key : s.fields)
        b.tagged_.push_back({key, static_cast<int>(begin), static_cast<int>(end)});
  }
  // Break long words without inserting hyphens: the printed text must stay the truth's text.
  pango_attr_list_insert(attrs, pango_attr_insert_hyphens_new(FALSE));
  b.layout_ = pango_layout_new(engine_.context());
  PangoFontDescription* desc = pango_font_description_new();
  pango_font_description_set_family(desc, font.family.c_str());
  pango_font_description_set_absolute_size(desc, font.size * PANGO_SCALE);
  pango_font_description_set_weight(desc, font.bold ? PANGO_WEIGHT_BOLD : PANGO_WEIGHT_NORMAL);
  pango_font_description_set_style(desc, font.italic ? PANGO_STYLE_ITALIC : PANGO_STYLE_NORMAL);
  pango_layout_set_font_description(b.layout_, desc);
  pango_font_description_free(desc);
  pango_layout_set_text(b.layout_, text.data(), static_cast<int>(text.size()));
  pango_layout_set_attributes(b.layout_, attrs);
  pango_attr_list_unref(attrs);
  if (line_spacing != 1.0) pango_layout_set_line_spacing(b.layout_, static_cast<float>(line_spacing));
  if (width > 0) {
    pango_layout_set_width(b.layout_, static_cast<int>(width * PANGO_SCALE));
    pango_layout_set_wrap(b.layout_, PANGO_WRAP_WORD_CHAR);
    pango_layout_set_alignment(b.layout_, align == Align::kCenter  ? PANGO_ALIGN_CENTER
                                          : align == Align::kRight ? PANGO_ALIGN_RIGHT
                                                                   : PANGO_ALIGN_LEFT);
  }
  PangoRectangle logical;
  pango_layout_get_extents(b.layout_, nullptr, &logical);
  b.width_ = static_cast<double>(logical.x + logical.width) / PANGO_SCALE;
  b.height_ = static_cast<double>(logical.y + logical.height) / PANGO_SCALE;
  if (width > 0) b.width_ = std::min(b.width_, width);
  return b;
}

void Canvas::draw(TextBlock&& block, double x, double y0, Rgb color) {
  MV_CHECK(block.layout_ != nullptr, "drawing an empty text block");
  if (!block.tagged_.empty()) {
    const char* text = pango_layout_get_text(block.layout_);
    const int text_len = static_cast<int>(std::char_traits<char>::length(text));
    struct Acc {
      double x0 = 1e18, y0 = 1e18, x1 = -1e18, y1 = -1e18;
      bool any = false;
    };
    std::vector<Acc> acc(block.tagged_.size());
    PangoLayoutIter* it = pango_layout_get_iter(block.layout_);
    do {
      const int idx = pango_layout_iter_get_index(it);
      if (idx < 0 || idx >= text_len) continue;
      const unsigned char c = static_cast<unsigned char>(text[idx]);
      if (c == ' ' || c == '\t' || c == '\n') continue;
      PangoRectangle r;
      pango_layout_iter_get_char_extents(it, &r);
      for (std::size_t k = 0; k < block.tagged_.size(); ++k) {
        const auto& t = block.tagged_[k];
        if (idx < t.begin || idx >= t.end) continue;
        Acc& a = acc[k];
        const double rx0 = static_cast<double>(std::min(r.x, r.x + r.width)) / PANGO_SCALE;
        const double rx1 = static_cast<double>(std::max(r.x, r.x + r.width)) / PANGO_SCALE;
        a.x0 = std::min(a.x0, rx0);
        a.x1 = std::max(a.x1, rx1);
        a.y0 = std::min(a.y0, static_cast<double>(r.y) / PANGO_SCALE);
        a.y1 = std::max(a.y1, static_cast<double>(r.y + r.height) / PANGO_SCALE);
        a.any = true;
      }
    } while (pango_layout_iter_next_char(it));
    pango_layout_iter_free(it);
    for (std::size_t k = 0; k < block.tagged_.size(); ++k) {
      if (!acc[k].any) continue;
      auto round1 = [](double v) { return std::round(v * 10.0) / 10.0; };
      boxes_.push_back(
          {block.tagged_[k].key,
           current_ + 1,
           {round1(x + acc[k].x0), round1(y0 + acc[k].y0), round1(x + acc[k].x1), round1(y0 + acc[k].y1)}});
    }
  }
  Op op;
  op.type = Op::Type::kText;
  op.layout = block.layout_;
  block.layout_ = nullptr;
  op.x = x;
  op.y = y0;
  op.color = color;
  ops().push_back(op);
}

double Canvas::text(const std::vector<Span>& spans, const Font& font, double x, double y0, double width,
                    Align align, Rgb color) {
  TextBlock b = measure(spans, font, width, align);
  const double h = b.height();
  draw(std::move(b), x, y0, color);
  return h;
}

void Canvas::rect(double x, double y0, double w, double h, std::optional<Rgb> fill, std::optional<Rgb> stroke,
                  double line_width) {
  Op op;
  op.type = Op::Type::kRect;
  op.x = x;
  op.y = y0;
  op.w = w;
  op.h = h;
  op.fill = fill;
  op.stroke = stroke;
  op.line_width = line_width;
  ops().push_back(op);
}

void Canvas::line(double x0, double y0, double x1, double y1, Rgb color, double width, bool dashed) {
  Op op;
  op.type = Op::Type::kLine;
  op.x = x0;
  op.y = y0;
  op.w = x1;
  op.h = y1;
  op.color = color;
  op.line_width = width;
  op.dashed = dashed;
  ops().push_back(op);
}

Canvas::Mark Canvas::mark() const {
  return {pages_.size(), pages_[current_].size(), boxes_.size(), current_};
}

void Canvas::rollback(const Mark& m) {
  MV_CHECK(pages_.size() == m.pages && current_ == m.current, "rollback across pages");
  auto& page = pages_[current_];
  for (std::size_t i = m.ops; i < page.size(); ++i)
    if (page[i].layout != nullptr) g_object_unref(page[i].layout);
  page.resize(m.ops);
  boxes_.resize(m.boxes);
}

void Canvas::block(const std::function<double(double)>& draw_fn, double gap_after) {
  const Mark m = mark();
  const double start = y;
  double h = draw_fn(start);
  if (start + h > bottom() && start > top() + 1.0) {
    rollback(m);
    new_page();
    h = draw_fn(y);
  }
  y += h + gap_after;
}

void Canvas::ensure_space(double height) {
  if (y + height > bottom() && y > top() + 1.0) new_page();
}

void Canvas::paint(int page, cairo_t* cr) const {
  MV_CHECK(page >= 1 && page <= page_count(), "page {} of {}", page, page_count());
  for (const Op& op : pages_[page - 1]) {
    switch (op.type) {
      case Op::Type::kText:
        cairo_set_source_rgb(cr, op.color.r, op.color.g, op.color.b);
        cairo_move_to(cr, op.x, op.y);
        pango_cairo_show_layout(cr, op.layout);
        break;
      case Op::Type::kRect:
        cairo_rectangle(cr, op.x, op.y, op.w, op.h);
        if (op.fill) {
          cairo_set_source_rgb(cr, op.fill->r, op.fill->g, op.fill->b);
          if (op.stroke)
            cairo_fill_preserve(cr);
          else
            cairo_fill(cr);
        }
        if (op.stroke) {
          cairo_set_source_rgb(cr, op.stroke->r, op.stroke->g, op.stroke->b);
          cairo_set_line_width(cr, op.line_width);
          cairo_stroke(cr);
        }
        cairo_new_path(cr);
        break;
      case Op::Type::kLine: {
        cairo_set_source_rgb(cr, op.color.r, op.color.g, op.color.b);
        cairo_set_line_width(cr, op.line_width);
        if (op.dashed) {
          const double dash[] = {6.0, 4.0};
          cairo_set_dash(cr, dash, 2, 0);
        }
        cairo_move_to(cr, op.x, op.y);
        cairo_line_to(cr, op.w, op.h);
        cairo_stroke(cr);
        if (op.dashed) cairo_set_dash(cr, nullptr, 0, 0);
        break;
      }
    }
  }
}

}  // namespace mv::synth
