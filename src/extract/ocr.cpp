#include "extract/ocr.hpp"

#include <dlfcn.h>
#include <leptonica/allheaders.h>
#include <tesseract/baseapi.h>
#include <tesseract/resultiterator.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <numeric>

#include "core/error.hpp"
#include "core/log.hpp"

namespace mv::extract {

struct OcrEngine::Instance {
  tesseract::TessBaseAPI api;
};

namespace {

struct PixDeleter {
  void operator()(Pix* p) const {
    if (p) pixDestroy(&p);
  }
};
using PixPtr = std::unique_ptr<Pix, PixDeleter>;

PixPtr to_gray_pix(const ImageRGB8& img) {
  PixPtr pix(pixCreate(img.width, img.height, 8));
  if (!pix) fail(Errc::kFailure, "OCR: cannot allocate a {}x{} page", img.width, img.height);
  l_uint32* data = pixGetData(pix.get());
  int wpl = pixGetWpl(pix.get());
  for (int y = 0; y < img.height; ++y) {
    const std::uint8_t* src = img.row(y);
    l_uint32* line = data + static_cast<std::ptrdiff_t>(y) * wpl;
    for (int x = 0; x < img.width; ++x) {
      int g = (299 * src[3 * x] + 587 * src[3 * x + 1] + 114 * src[3 * x + 2] + 500) / 1000;
      SET_DATA_BYTE(line, x, g);
    }
  }
  return pix;
}

// Spread of the background brightness over a grid of tiles: the 90th percentile of each tile (paper, not
// ink), max minus min. A flat scan is a few levels; a photo with a lighting ramp or shadow is tens.
int background_spread(Pix* gray) {
  int w = pixGetWidth(gray), h = pixGetHeight(gray);
  const int n = 8;
  l_uint32* data = pixGetData(gray);
  int wpl = pixGetWpl(gray);
  int lo = 255, hi = 0;
  for (int ty = 0; ty < n; ++ty)
    for (int tx = 0; tx < n; ++tx) {
      int x0 = tx * w / n, x1 = (tx + 1) * w / n, y0 = ty * h / n, y1 = (ty + 1) * h / n;
      int hist[256] = {};
      int count = 0;
      for (int y = y0; y < y1; y += 2) {
        l_uint32* line = data + static_cast<std::ptrdiff_t>(y) * wpl;
        for (int x = x0; x < x1; x += 2, ++count) ++hist[GET_DATA_BYTE(line, x)];
      }
      if (count == 0) continue;
      int acc = 0, p90 = 255;
      for (int v = 0; v < 256; ++v) {
        acc += hist[v];
        if (acc >= count * 9 / 10) {
          p90 = v;
          break;
        }
      }
      lo = std::min(lo, p90);
      hi = std::max(hi, p90);
    }
  return hi - lo;
}

// Table rules and box lines: thin, long horizontal or vertical runs of ink. On a scanned page Tesseract keeps
// broken pieces of them after its own binarisation, and a row whose words touch those pieces is read as
// noise ("MAP (mmHg) 87 86 92" came out as "a Genre Boany~"). Rules are found on a light threshold (grey
// lines included): ink pixels with paper at a fixed distance above and below (a hit-miss transform), so
// that bold or blurred text, whose strokes merge into long runs but have ink all around, and filled bands
// do not qualify; of those, runs at least a quarter inch long are rules. Vertical rules likewise. The
// rules, grown by one pixel, are painted white on the grey page. Returns the number of pixels painted.
int remove_rules(Pix* gray, double dpi) {
  PixPtr bin(pixThresholdToBinary(gray, 200));
  if (!bin) return 0;
  const int h_len = std::max(20, static_cast<int>(std::lround(0.27 * dpi)));  // 80 px at 300 dpi
  const int v_len = std::max(30, static_cast<int>(std::lround(0.40 * dpi)));  // 120 px at 300 dpi
  const int d = std::max(4, static_cast<int>(std::lround(0.027 * dpi)));      // 8 px at 300 dpi
  auto isolated = [&](bool horizontal) -> PixPtr {
    const int n = 2 * d + 1;
    SEL* sel = horizontal ? selCreate(n, 1, nullptr) : selCreate(1, n, nullptr);
    if (!sel) return nullptr;
    if (horizontal) {
      selSetOrigin(sel, d, 0);
      selSetElement(sel, d, 0, SEL_HIT);
      for (int k : {0, 2 * d}) selSetElement(sel, k, 0, SEL_MISS);
    } else {
      selSetOrigin(sel, 0, d);
      selSetElement(sel, 0, d, SEL_HIT);
      for (int k : {0, 2 * d}) selSetElement(sel, 0, k, SEL_MISS);
    }
    PixPtr out(pixHMT(nullptr, bin.get(), sel));
    selDestroy(&sel);
    return out;
  };
  PixPtr h_iso = isolated(true), v_iso = isolated(false);
  if (!h_iso || !v_iso) return 0;
  // A rule crossing another, or a speck next to it, breaks it for a few pixels: close those gaps first.
  PixPtr h_closed(pixCloseSafeBrick(nullptr, h_iso.get(), d, 1));
  PixPtr v_closed(pixCloseSafeBrick(nullptr, v_iso.get(), 1, d));
  if (!h_closed || !v_closed) return 0;
  PixPtr h(pixOpenBrick(nullptr, h_closed.get(), h_len, 1));
  PixPtr v(pixOpenBrick(nullptr, v_closed.get(), 1, v_len));
  if (!h || !v) return 0;
  // Grow the rules by a pixel each side (anti-aliased edges).
  PixPtr hd(pixDilateBrick(nullptr, h.get(), 3, 3)), vd(pixDilateBrick(nullptr, v.get(), 3, 3));
  if (!hd || !vd) return 0;
  pixOr(hd.get(), hd.get(), vd.get());
  PixPtr mask = std::move(hd);
  if (!mask) return 0;
  l_int32 n = 0;
  pixCountPixels(mask.get(), &n, nullptr);
  if (n > 0) pixPaintThroughMask(gray, mask.get(), 0, 0, 255);
  return n;
}

// Light text on a dark fill (a letterhead band, a table header bar): Tesseract reads it poorly, and on a
// scan often not at all. A band is a connected region of pixels darker than 110 that holds a solid dark
// rectangle of at least 0.15 x 0.05 inch and fills most of its bounding box; the whole box is inverted on
// the grey page, so that its text is dark on light like the rest (glyphs are never cut by the edge of a
// mask). Returns the number of pixels inverted.
int invert_dark_bands(Pix* gray, double dpi) {
  PixPtr dark(pixThresholdToBinary(gray, 110));
  if (!dark) return 0;
  const int w = std::max(10, static_cast<int>(std::lround(0.15 * dpi)));
  const int h = std::max(5, static_cast<int>(std::lround(0.05 * dpi)));
  PixPtr solid(pixOpenBrick(nullptr, dark.get(), w, h));
  if (!solid) return 0;
  l_int32 n = 0;
  pixCountPixels(solid.get(), &n, nullptr);
  if (n == 0) return 0;
  BOXA* boxes = pixConnCompBB(dark.get(), 8);
  if (!boxes) return 0;
  int inverted = 0;
  for (l_int32 i = 0; i < boxaGetCount(boxes); ++i) {
    BOX* b = boxaGetBox(boxes, i, L_CLONE);
    l_int32 x, y, bw, bh;
    boxGetGeometry(b, &x, &y, &bw, &bh);
    if (bw >= w && bh >= h) {
      // The component holds a solid rectangle and its dark pixels fill most of the box.
      PixPtr s(pixClipRectangle(solid.get(), b, nullptr));
      PixPtr d(pixClipRectangle(dark.get(), b, nullptr));
      l_int32 ns = 0, nd = 0;
      if (s && d && pixCountPixels(s.get(), &ns, nullptr) == 0 &&
          pixCountPixels(d.get(), &nd, nullptr) == 0 && ns > 0 && nd > 0.6 * bw * bh) {
        // Invert, then stretch so that the band's fill (its most common shade) becomes paper white: a
        // grey box left on the page would be taken for a picture.
        int hist[256] = {};
        l_uint32* data = pixGetData(gray);
        const int wpl = pixGetWpl(gray);
        for (int yy = y; yy < y + bh; ++yy) {
          l_uint32* line = data + static_cast<std::ptrdiff_t>(yy) * wpl;
          for (int xx = x; xx < x + bw; ++xx) {
            const int v = 255 - GET_DATA_BYTE(line, xx);
            SET_DATA_BYTE(line, xx, v);
            ++hist[v];
          }
        }
        int fill = 255;
        for (int v = 0, best = -1; v < 256; ++v)
          if (hist[v] > best) best = hist[v], fill = v;
        if (fill > 64) {
          for (int yy = y; yy < y + bh; ++yy) {
            l_uint32* line = data + static_cast<std::ptrdiff_t>(yy) * wpl;
            for (int xx = x; xx < x + bw; ++xx)
              SET_DATA_BYTE(line, xx, std::min(255, GET_DATA_BYTE(line, xx) * 255 / fill));
          }
        }
        inverted += bw * bh;
      }
    }
    boxDestroy(&b);
  }
  boxaDestroy(&boxes);
  return inverted;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

BBox unite(const BBox& a, const BBox& b) {
  return {std::min(a.x0, b.x0), std::min(a.y0, b.y0), std::max(a.x1, b.x1), std::max(a.y1, b.y1)};
}

}  // namespace

std::string OcrPage::text() const {
  std::string out;
  for (const auto& r : rows) {
    out += r.text;
    out += '\n';
  }
  return out;
}

namespace {

// Tesseract (Debian's build) runs parts of its LSTM in OpenMP regions of up to 10 threads. On a small
// machine those threads oversubscribe the cores and spin in the runtime between regions: on a 2-core
// machine about half of a page's CPU time went to OpenMP spinning and the kernel's futex/scheduler work,
// and page-level threads of our own compete with them. OMP_THREAD_LIMIT would stop it, but the OpenMP
// runtime reads its environment when it is loaded, before any code of ours runs, so setting it here is
// too late. The maximum number of active parallel levels can still be changed at run time: 0 makes every
// OpenMP region run on the calling thread alone. A limit the user set in the environment is kept.
// The runtime is reached through the dynamic linker because it comes with libtesseract, not with us.
void serialise_openmp_once() {
  static const bool done = [] {
    if (std::getenv("OMP_THREAD_LIMIT") || std::getenv("OMP_NUM_THREADS")) return false;
    using SetLevels = void (*)(int);
    auto* set_levels = reinterpret_cast<SetLevels>(dlsym(RTLD_DEFAULT, "omp_set_max_active_levels"));
    if (!set_levels) return false;
    set_levels(0);
    return true;
  }();
  (void)done;
}

}  // namespace

OcrEngine::OcrEngine(OcrOptions options) : options_(std::move(options)) {
  serialise_openmp_once();
  release(acquire());  // fails early when the model cannot be loaded
}

OcrEngine::~OcrEngine() {
  for (auto& inst : free_) inst->api.End();
}

std::unique_ptr<OcrEngine::Instance> OcrEngine::acquire() {
  {
    std::lock_guard lock(mutex_);
    if (!free_.empty()) {
      auto inst = std::move(free_.back());
      free_.pop_back();
      return inst;
    }
  }
  auto inst = std::make_unique<Instance>();
  std::string dir = options_.tessdata_dir.string();
  if (inst->api.Init(dir.empty() ? nullptr : dir.c_str(), "eng", tesseract::OEM_LSTM_ONLY) != 0)
    fail(Errc::kNotFound,
         "OCR: cannot load the Tesseract 'eng' model{}{} (install tesseract-ocr-eng, or set TESSDATA_PREFIX)",
         dir.empty() ? "" : " from ", dir);
  inst->api.SetPageSegMode(tesseract::PSM_AUTO);
  inst->api.SetVariable("debug_file", "/dev/null");
  return inst;
}

void OcrEngine::release(std::unique_ptr<Instance> inst) {
  std::lock_guard lock(mutex_);
  free_.push_back(std::move(inst));
}

std::optional<OcrEngine::Reread> OcrEngine::reread(const Page& page, const BBox& box,
                                                   const std::string& whitelist) {
  const ImageRGB8& img = page.image;
  if (img.width <= 0 || img.height <= 0 ||
      img.pixels.size() != static_cast<std::size_t>(img.width) * img.height * 3)
    fail(Errc::kInvalidInput, "OCR: page {} has no pixels", page.number);
  const double h = box.y1 - box.y0;
  if (!(h > 0) || !(box.x1 > box.x0)) return std::nullopt;
  const int x0 = std::max(0, static_cast<int>(std::floor(box.x0 - 0.8 * h)));
  const int y0 = std::max(0, static_cast<int>(std::floor(box.y0 - 0.6 * h)));
  const int x1 = std::min(img.width, static_cast<int>(std::ceil(box.x1 + 0.8 * h)));
  const int y1 = std::min(img.height, static_cast<int>(std::ceil(box.y1 + 0.6 * h)));
  if (x1 - x0 < 2 || y1 - y0 < 2) return std::nullopt;
  ImageRGB8 crop;
  crop.width = x1 - x0;
  crop.height = y1 - y0;
  crop.pixels.resize(static_cast<std::size_t>(crop.width) * crop.height * 3);
  for (int y = y0; y < y1; ++y)
    std::copy_n(img.row(y) + 3 * x0, 3 * crop.width,
                crop.pixels.data() + static_cast<std::size_t>(y - y0) * crop.width * 3);
  PixPtr gray = to_gray_pix(crop);
  PixPtr up(pixScaleGrayLI(gray.get(), 3.0f, 3.0f));
  if (!up) return std::nullopt;
  // A white border: Tesseract reads a word poorly when its ink touches the image edge.
  const int pad = static_cast<int>(std::lround(h * 3 * 0.5));
  PixPtr padded(pixAddBorder(up.get(), pad, 255));
  if (!padded) return std::nullopt;

  auto inst = acquire();
  struct Releaser {
    OcrEngine* self;
    std::unique_ptr<Instance>* inst;
    ~Releaser() {
      auto& api = (*inst)->api;
      api.Clear();
      api.SetVariable("tessedit_char_whitelist", "");
      self->release(std::move(*inst));
    }
  } releaser{this, &inst};
  auto& api = inst->api;
  api.SetVariable("tessedit_char_whitelist", whitelist.c_str());
  api.SetImage(padded.get());
  api.SetPageSegMode(tesseract::PSM_SINGLE_LINE);
  api.SetSourceResolution(300);  // the crop holds one line of large print; no page resolution applies
  if (api.Recognize(nullptr) != 0) return std::nullopt;
  std::unique_ptr<char[]> txt(api.GetUTF8Text());
  Reread r;
  if (txt) r.text = txt.get();
  while (!r.text.empty() && std::isspace(static_cast<unsigned char>(r.text.back()))) r.text.pop_back();
  while (!r.text.empty() && std::isspace(static_cast<unsigned char>(r.text.front()))) r.text.erase(0, 1);
  r.confidence = std::clamp(api.MeanTextConf() / 100.0, 0.0, 1.0);
  return r;
}

OcrPage OcrEngine::recognize(const Page& page) {
  const ImageRGB8& img = page.image;
  if (img.width <= 0 || img.height <= 0 ||
      img.pixels.size() != static_cast<std::size_t>(img.width) * img.height * 3)
    fail(Errc::kInvalidInput, "OCR: page {} has no pixels", page.number);
  OcrPage out;
  out.number = page.number;
  out.width = img.width;
  out.height = img.height;
  out.dpi = page.dpi;

  using Clock = std::chrono::steady_clock;
  const auto t_start = Clock::now();
  auto ms_since = [](Clock::time_point t) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
  };
  PixPtr gray = to_gray_pix(img);
  if (options_.normalise && background_spread(gray.get()) > 48) {
    PixPtr norm(pixBackgroundNormSimple(gray.get(), nullptr, nullptr));
    if (norm) {
      gray = std::move(norm);
      out.normalised = true;
    }
  }
  double angle = 0;  // degrees, leptonica's sign (clockwise positive)
  if (options_.deskew) {
    PixPtr bin(pixConvertTo1(gray.get(), 160));
    l_float32 a = 0, conf = 0;
    if (bin && pixFindSkew(bin.get(), &a, &conf) == 0 && conf > 2.5 && std::abs(a) >= 0.2 &&
        std::abs(a) < 10) {
      PixPtr rot(pixRotate(gray.get(), static_cast<l_float32>(a * M_PI / 180.0), L_ROTATE_AREA_MAP,
                           L_BRING_IN_WHITE, img.width, img.height));
      if (rot) {
        gray = std::move(rot);
        angle = a;
      }
    }
  }
  out.skew_degrees = angle;

  // Upscale small print: Tesseract's LSTM reads 10-point text at 150 dpi with dropped decimal points.
  const double page_dpi = page.dpi.value_or(150.0);
  double scale = 1.0;
  if (options_.min_dpi > 0 && page_dpi < options_.min_dpi)
    scale = std::min(options_.max_upscale, options_.min_dpi / page_dpi);
  if (scale > 1.01) {
    PixPtr up(pixScaleGrayLI(gray.get(), static_cast<l_float32>(scale), static_cast<l_float32>(scale)));
    if (up)
      gray = std::move(up);
    else
      scale = 1.0;
  } else {
    scale = 1.0;
  }

  int rule_pixels = 0, inverted_pixels = 0;
  if (options_.invert_dark_bands) {
    inverted_pixels = invert_dark_bands(gray.get(), page_dpi * scale);
    // Tesseract binarises with one Otsu threshold for the page. Without the dark bands the histogram holds
    // less ink, the threshold rises and light table shading turned to speckle that garbled its words; so
    // shades from 200 up are made paper white first (ink and grey rules stay well below).
    if (inverted_pixels > 0) {
      l_uint32* data = pixGetData(gray.get());
      const int wpl = pixGetWpl(gray.get()), gw = pixGetWidth(gray.get()), gh = pixGetHeight(gray.get());
      for (int y = 0; y < gh; ++y) {
        l_uint32* line = data + static_cast<std::ptrdiff_t>(y) * wpl;
        for (int x = 0; x < gw; ++x)
          SET_DATA_BYTE(line, x, std::min(255, GET_DATA_BYTE(line, x) * 255 / 200));
      }
    }
  }
  if (options_.remove_rules) rule_pixels = remove_rules(gray.get(), page_dpi * scale);

  const double prep_ms = ms_since(t_start);
  auto inst = acquire();
  struct Releaser {
    OcrEngine* self;
    std::unique_ptr<Instance>* inst;
    ~Releaser() {
      (*inst)->api.Clear();
      self->release(std::move(*inst));
    }
  } releaser{this, &inst};
  auto& api = inst->api;
  api.SetImage(gray.get());
  api.SetPageSegMode(static_cast<tesseract::PageSegMode>(options_.page_seg_mode));
  api.SetSourceResolution(std::clamp(static_cast<int>(std::lround(page_dpi * scale)), 70, 1200));
  const auto t_rec = Clock::now();
  if (api.Recognize(nullptr) != 0) fail(Errc::kFailure, "OCR: Tesseract failed on page {}", page.number);
  const double rec_ms = ms_since(t_rec);

  // Undo the deskew rotation on boxes: leptonica rotates about the centre, clockwise for a positive angle.
  const double th = angle * M_PI / 180.0, c = std::cos(th), s = std::sin(th);
  const double cx = img.width / 2.0, cy = img.height / 2.0;
  auto unrotate = [&](double x, double y, double& ox, double& oy) {
    double dx = x - cx, dy = y - cy;
    ox = cx + dx * c + dy * s;
    oy = cy - dx * s + dy * c;
  };
  auto map_box = [&](int li, int ti, int ri, int bi) {
    const double l = li / scale, t = ti / scale, r = ri / scale, b = bi / scale;
    if (angle == 0) return BBox{l, t, r, b};
    double xs[4], ys[4];
    unrotate(l, t, xs[0], ys[0]);
    unrotate(r, t, xs[1], ys[1]);
    unrotate(l, b, xs[2], ys[2]);
    unrotate(r, b, xs[3], ys[3]);
    BBox bb{*std::min_element(xs, xs + 4), *std::min_element(ys, ys + 4), *std::max_element(xs, xs + 4),
            *std::max_element(ys, ys + 4)};
    bb.x0 = std::clamp(bb.x0, 0.0, double(img.width));
    bb.x1 = std::clamp(bb.x1, 0.0, double(img.width));
    bb.y0 = std::clamp(bb.y0, 0.0, double(img.height));
    bb.y1 = std::clamp(bb.y1, 0.0, double(img.height));
    return bb;
  };

  std::vector<std::vector<int>> lines;
  std::vector<std::array<int, 4>> raw;  // Tesseract's box of every word, in pixels of the prepared image
  std::unique_ptr<tesseract::ResultIterator> it(api.GetIterator());
  if (it) {
    do {
      if (it->Empty(tesseract::RIL_WORD)) continue;
      std::unique_ptr<char[]> txt(it->GetUTF8Text(tesseract::RIL_WORD));
      if (!txt || !txt[0]) continue;
      std::string t(txt.get());
      if (t.find_first_not_of(" \t\n") == std::string::npos) continue;
      int l, tp, r, b;
      if (!it->BoundingBox(tesseract::RIL_WORD, &l, &tp, &r, &b)) continue;
      if (lines.empty() || it->IsAtBeginningOf(tesseract::RIL_TEXTLINE)) lines.emplace_back();
      OcrWord w;
      w.text = std::move(t);
      // Rows are built on the deskewed page (a row of a skewed table is level there); the boxes are mapped
      // back to the page as given afterwards.
      w.box = BBox{l / scale, tp / scale, r / scale, b / scale};
      raw.push_back({l, tp, r, b});
      w.confidence = std::clamp(it->Confidence(tesseract::RIL_WORD) / 100.0, 0.0, 1.0);
      lines.back().push_back(static_cast<int>(out.words.size()));
      out.words.push_back(std::move(w));
    } while (it->Next(tesseract::RIL_WORD));
  }
  std::erase_if(lines, [](const auto& l) { return l.empty(); });
  out.rows = build_rows(out.words, lines);
  if (angle != 0) {
    for (std::size_t k = 0; k < out.words.size(); ++k)
      out.words[k].box = map_box(raw[k][0], raw[k][1], raw[k][2], raw[k][3]);
    for (auto& row : out.rows) {
      for (auto& c : row.cells) {
        c.box = out.words[c.words.front()].box;
        for (int i : c.words) c.box = unite(c.box, out.words[i].box);
      }
      row.box = out.words[row.words.front()].box;
      for (int i : row.words) row.box = unite(row.box, out.words[i].box);
    }
  }
  spdlog::debug(
      "ocr: page {}: {} words, {} rows, skew {:.2f} deg{}, scale {:.2f}, {} pixels of dark bands inverted, "
      "{} "
      "rule pixels removed; {:.0f} ms (prepare {:.0f}, recognise {:.0f})",
      page.number, out.words.size(), out.rows.size(), angle, out.normalised ? ", background normalised" : "",
      scale, inverted_pixels, rule_pixels, ms_since(t_start), prep_ms, rec_ms);
  return out;
}

std::vector<OcrRow> build_rows(const std::vector<OcrWord>& words,
                               const std::vector<std::vector<int>>& lines) {
  struct Line {
    std::vector<int> words;
    BBox box;
  };
  std::vector<Line> ls;
  for (const auto& l : lines) {
    if (l.empty()) continue;
    Line x{l, words[l[0]].box};
    for (int i : l) x.box = unite(x.box, words[i].box);
    ls.push_back(std::move(x));
  }
  std::sort(ls.begin(), ls.end(),
            [](const Line& a, const Line& b) { return a.box.y0 + a.box.y1 < b.box.y0 + b.box.y1; });

  struct RowAcc {
    BBox box;
    std::vector<const Line*> lines;
  };
  std::vector<RowAcc> rows;
  for (const auto& l : ls) {
    double lh = l.box.y1 - l.box.y0;
    RowAcc* best = nullptr;
    double best_ov = 0;
    // Only the last few rows can hold a line whose centre is below theirs.
    for (std::size_t k = rows.size() > 6 ? rows.size() - 6 : 0; k < rows.size(); ++k) {
      auto& r = rows[k];
      double ov = std::min(r.box.y1, l.box.y1) - std::max(r.box.y0, l.box.y0);
      double rh = r.box.y1 - r.box.y0;
      if (ov <= 0.6 * std::min(lh, rh)) continue;
      bool x_clash = false;  // a row never holds two lines over the same columns
      for (const Line* o : r.lines)
        if (std::min(o->box.x1, l.box.x1) - std::max(o->box.x0, l.box.x0) > 0) x_clash = true;
      if (x_clash) continue;
      if (ov > best_ov) {
        best_ov = ov;
        best = &r;
      }
    }
    if (best) {
      best->lines.push_back(&l);
      best->box = unite(best->box, l.box);
    } else {
      rows.push_back({l.box, {&l}});
    }
  }

  std::vector<OcrRow> out;
  for (auto& r : rows) {
    OcrRow row;
    row.box = r.box;
    for (const Line* l : r.lines) row.words.insert(row.words.end(), l->words.begin(), l->words.end());
    std::sort(row.words.begin(), row.words.end(),
              [&](int a, int b) { return words[a].box.x0 < words[b].box.x0; });
    std::vector<double> hs;
    for (int i : row.words) hs.push_back(words[i].box.y1 - words[i].box.y0);
    row.height = median(hs);
    // Cells: a gap wider than about one line height separates columns.
    const double gap = std::max(12.0, 1.1 * row.height);
    for (std::size_t k = 0; k < row.words.size(); ++k) {
      int wi = row.words[k];
      const OcrWord& w = words[wi];
      if (row.cells.empty() || w.box.x0 - row.cells.back().box.x1 > gap) {
        OcrCell c;
        c.box = w.box;
        row.cells.push_back(c);
      }
      OcrCell& c = row.cells.back();
      if (!c.text.empty()) c.text += ' ';
      c.text += w.text;
      c.words.push_back(wi);
      c.box = unite(c.box, w.box);
    }
    for (auto& c : row.cells) {
      double sum = 0;
      for (int i : c.words) sum += words[i].confidence;
      c.confidence = c.words.empty() ? 0 : sum / c.words.size();
      if (!row.text.empty()) row.text += "  ";
      row.text += c.text;
    }
    out.push_back(std::move(row));
  }
  std::sort(out.begin(), out.end(),
            [](const OcrRow& a, const OcrRow& b) { return a.box.y0 + a.box.y1 < b.box.y0 + b.box.y1; });
  return out;
}

}  // namespace mv::extract
