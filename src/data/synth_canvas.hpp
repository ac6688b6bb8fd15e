// Page layout for synthetic documents: text laid out with Pango, drawn with cairo, recorded as a display
// list per page so the same pages can be painted into a raster (PNG) or a vector PDF. Every text span that
// carries a FieldKey gets its box measured from the Pango layout (union of the logical rectangles of its
// non-space characters), in page pixels.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "extract/schema.hpp"

typedef struct _PangoContext PangoContext;
typedef struct _PangoFontMap PangoFontMap;
typedef struct _PangoLayout PangoLayout;
typedef struct _cairo cairo_t;

namespace mv::synth {

enum class ItemKind {
  kPatient,
  kEncounter,
  kDiagnosis,
  kMedication,
  kLab,
  kVital,
  kAllergy,
  kProcedure,
  kImmunization,
  kFollowup
};

struct FieldKey {
  ItemKind kind = ItemKind::kPatient;
  int index = 0;      // item index in its list (0 for patient / encounter)
  std::string field;  // schema property name
};

struct Span {
  std::string text;
  std::vector<FieldKey> fields;  // the fields this text is (several items may share one printed label)
  bool bold = false;
  bool italic = false;
};

struct Font {
  std::string family = "DejaVu Sans";
  double size = 20;  // pixels
  bool bold = false;
  bool italic = false;
  Font with_size(double s) const {
    Font f = *this;
    f.size = s;
    return f;
  }
  Font with_bold(bool b = true) const {
    Font f = *this;
    f.bold = b;
    return f;
  }
  Font with_italic(bool i = true) const {
    Font f = *this;
    f.italic = i;
    return f;
  }
};

struct Rgb {
  double r = 0, g = 0, b = 0;
};

enum class Align { kLeft, kCenter, kRight };

struct FieldBox {
  FieldKey key;
  int page = 1;  // 1-based
  extract::BBox box;
};

// One Pango font map and context per thread (Pango objects are not shared across threads).
class TextEngine {
 public:
  TextEngine();
  ~TextEngine();
  TextEngine(const TextEngine&) = delete;
  TextEngine& operator=(const TextEngine&) = delete;
  PangoContext* context() const { return context_; }

 private:
  PangoFontMap* font_map_ = nullptr;
  PangoContext* context_ = nullptr;
};

// A measured, not yet placed, piece of text.
class TextBlock {
 public:
  TextBlock() = default;
  ~TextBlock();
  TextBlock(TextBlock&& o) noexcept;
  TextBlock& operator=(TextBlock&& o) noexcept;
  TextBlock(const TextBlock&) = delete;
  TextBlock& operator=(const TextBlock&) = delete;
  double width() const { return width_; }
  double height() const { return height_; }

 private:
  friend class Canvas;
  PangoLayout* layout_ = nullptr;
  double width_ = 0, height_ = 0;
  struct Tagged {
    FieldKey key;
    int begin = 0, end = 0;  // byte range in the layout's text
  };
  std::vector<Tagged> tagged_;
};

class Canvas {
 public:
  Canvas(const TextEngine& engine, int page_width, int page_height, double margin_x, double margin_top,
         double margin_bottom);
  ~Canvas();
  Canvas(const Canvas&) = delete;
  Canvas& operator=(const Canvas&) = delete;

  int page_width() const { return page_width_; }
  int page_height() const { return page_height_; }
  double left() const { return margin_x_; }
  double right() const { return page_width_ - margin_x_; }
  double content_width() const { return right() - left(); }
  double top() const { return margin_top_; }
  double bottom() const { return page_height_ - margin_bottom_; }
  double y = 0;  // the cursor: where the next block goes

  int page_count() const { return static_cast<int>(pages_.size()); }
  int current_page() const { return current_ + 1; }
  void new_page();
  // Draw onto an existing page (running headers/footers after the layout); the cursor is not touched.
  void select_page(int page);
  // Called after new_page() moved the cursor to the top (draw a continuation header, advance y).
  std::function<void()> on_new_page;

  // Measures text. width <= 0: one line per paragraph, no wrapping.
  TextBlock measure(const std::vector<Span>& spans, const Font& font, double width = 0,
                    Align align = Align::kLeft, double line_spacing = 1.0) const;
  // Places a measured block with its top-left corner at (x, y); records the boxes of its fields.
  void draw(TextBlock&& block, double x, double y, Rgb color = {});
  // Measures and draws; returns the height.
  double text(const std::vector<Span>& spans, const Font& font, double x, double y, double width = 0,
              Align align = Align::kLeft, Rgb color = {});

  void rect(double x, double y, double w, double h, std::optional<Rgb> fill,
            std::optional<Rgb> stroke = std::nullopt, double line_width = 1.0);
  void line(double x0, double y0, double x1, double y1, Rgb color = {}, double width = 1.0,
            bool dashed = false);

  // Runs draw(y) -> height at the cursor. When the block crosses the bottom margin and the cursor is not at
  // the top of a page, the block is undone and drawn again on a new page. Advances the cursor past it.
  void block(const std::function<double(double)>& draw, double gap_after = 0);
  // Starts a new page unless `height` fits below the cursor.
  void ensure_space(double height);

  // Field boxes in drawing order (a field drawn twice keeps both; callers use the first).
  const std::vector<FieldBox>& field_boxes() const { return boxes_; }

  // Paints page `page` (1-based) onto a cairo context whose user space is page pixels.
  void paint(int page, cairo_t* cr) const;

 private:
  struct Op {
    enum class Type { kText, kRect, kLine } type = Type::kText;
    PangoLayout* layout = nullptr;
    double x = 0, y = 0, w = 0, h = 0;
    Rgb color;
    std::optional<Rgb> fill, stroke;
    double line_width = 1;
    bool dashed = false;
  };
  struct Mark {
    std::size_t pages, ops, boxes;
    int current;
  };
  Mark mark() const;
  void rollback(const Mark& m);
  std::vector<Op>& ops() { return pages_[current_]; }

  const TextEngine& engine_;
  int page_width_, page_height_;
  double margin_x_, margin_top_, margin_bottom_;
  std::vector<std::vector<Op>> pages_;
  int current_ = 0;
  std::vector<FieldBox> boxes_;
};

}  // namespace mv::synth
