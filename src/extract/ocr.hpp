// The OCR layer: Tesseract (LSTM, `eng`) on a page image, with deskew and background normalisation when
// they help, giving words with boxes and confidences, and the page's layout rebuilt from word geometry:
// rows (text lines that share a baseline band across the whole page width, so that a table row or a
// "key: value   key: value" line stays one row) and cells (runs of words separated by wide gaps).
// All boxes are in pixels of the page image as given (deskew rotations are undone on the boxes).
#pragma once
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "extract/extractor.hpp"
#include "extract/schema.hpp"

namespace mv::extract {

struct OcrWord {
  std::string text;
  BBox box;
  double confidence = 0;  // 0..1
  bool bold = false;
};

struct OcrCell {
  std::vector<int> words;  // indices into OcrPage::words, left to right
  std::string text;        // words joined by single spaces
  BBox box;
  double confidence = 0;  // mean over the words
};

struct OcrRow {
  std::vector<OcrCell> cells;  // left to right
  std::vector<int> words;      // all words of the row, left to right
  std::string text;            // cells joined by "  " (two spaces)
  BBox box;
  double height = 0;  // median word height
};

struct OcrPage {
  int number = 1, width = 0, height = 0;
  std::optional<double> dpi;
  double skew_degrees = 0;  // skew found (and corrected) before recognition
  bool normalised = false;  // background normalisation applied
  std::vector<OcrWord> words;
  std::vector<OcrRow> rows;  // top to bottom
  std::string text() const;  // rows joined by newlines
};

struct OcrOptions {
  std::filesystem::path tessdata_dir;  // empty: Tesseract's default
  bool deskew = true;                  // measure skew, rotate when |skew| >= 0.2 degrees
  bool normalise = true;               // flatten uneven backgrounds (photos, shadows) before recognition
  double min_dpi = 300;                // pages below this resolution are upscaled (at most 2x) before OCR;
                                       // Tesseract reads small print best at about 300 dpi
  double max_upscale = 2.0;            // largest upscale factor
  bool invert_dark_bands = true;       // light text on dark fills made dark on light before recognition
  bool remove_rules = true;            // paint thin table rules and box lines white before recognition
  int page_seg_mode = 3;               // Tesseract PSM: 3 = automatic layout, 11 = sparse text
};

// One Tesseract instance per concurrent caller: recognize() takes a free instance from a small pool (or
// makes one), so it is safe to call from several threads.
class OcrEngine {
 public:
  explicit OcrEngine(OcrOptions options = {});
  ~OcrEngine();
  OcrEngine(const OcrEngine&) = delete;
  OcrEngine& operator=(const OcrEngine&) = delete;

  OcrPage recognize(const Page& page);

  // Reads one small region again on its own: `box` (pixels of the page as given) cropped with a margin
  // (0.8 x its height across, 0.6 x down: boxes mapped back through a deskew can be a few pixels off),
  // upscaled 3x, recognised as a single text line with only the characters of `whitelist`. Returns the
  // text and Tesseract's mean confidence (0..1), or nothing when the box is empty or off the page.
  struct Reread {
    std::string text;
    double confidence = 0;
  };
  std::optional<Reread> reread(const Page& page, const BBox& box, const std::string& whitelist);

 private:
  struct Instance;
  std::unique_ptr<Instance> acquire();
  void release(std::unique_ptr<Instance> inst);

  OcrOptions options_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<Instance>> free_;
};

// Groups words into rows and cells (exposed for tests). `words` must have boxes; returns rows top to bottom.
std::vector<OcrRow> build_rows(const std::vector<OcrWord>& words, const std::vector<std::vector<int>>& lines);

}  // namespace mv::extract
