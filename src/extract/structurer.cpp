#include "extract/structurer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <regex>
#include <set>

#include "extract/value_checks.hpp"

namespace mv::extract {

namespace {

// A row's text with the word under every byte range, so that parsed spans map back to boxes.
struct RowView {
  int page = 1;
  std::string text;
  std::vector<std::pair<Span, const OcrWord*>> words;
  std::vector<Span> cells;
  BBox box;
  double height = 0;

  static RowView of(const OcrPage& p, const OcrRow& r, const std::map<std::string, std::string>& fixes) {
    RowView v;
    v.page = p.number;
    v.box = r.box;
    v.height = r.height;
    for (const auto& c : r.cells) {
      // A vertical bar (or bracket, underscore) alone is a piece of a table rule or box edge at the start or
      // end of a cell ("| Varicella", "Negative for neoplasm.  |", "_ WILLIAMS, JAMES P"): dropped. Between
      // two words of a cell it is the letter I, which print sets as a bar ("T wave inversions in | and aVL",
      // "Troponin |, repeat").
      std::vector<std::string> texts;
      std::vector<const OcrWord*> ws;
      for (int wi : c.words) {
        texts.push_back(p.words[wi].text);
        ws.push_back(&p.words[wi]);
      }
      auto is_bar = [](const std::string& t) {
        return !t.empty() && t.find_first_not_of("|[]_") == std::string::npos;
      };
      while (!texts.empty() && is_bar(texts.front())) texts.erase(texts.begin()), ws.erase(ws.begin());
      while (!texts.empty() && is_bar(texts.back())) texts.pop_back(), ws.pop_back();
      if (texts.empty()) continue;
      for (auto& t : texts)
        if (t == "|" || (t.size() == 2 && t[0] == '|' && std::strchr(",.;:", t[1]))) t[0] = 'I';
      if (!v.text.empty()) v.text += "  ";
      std::size_t cb = v.text.size();
      for (std::size_t k = 0; k < texts.size(); ++k) {
        if (k) v.text += ' ';
        const OcrWord& w = *ws[k];
        std::string t = texts[k];
        if (auto it = fixes.find(t); it != fixes.end())
          t = it->second;
        else if (t.size() > 2 && t.front() == '(' && t.back() == ')')
          if (auto f = fixes.find(t.substr(1, t.size() - 2)); f != fixes.end()) t = "(" + f->second + ")";
        v.words.push_back({{v.text.size(), v.text.size() + t.size()}, &w});
        v.text += t;
      }
      v.cells.push_back({cb, v.text.size()});
    }
    return v;
  }
  void append(const RowView& o) {
    std::size_t off = text.size() + 2;
    text += "  " + o.text;
    for (const auto& [sp, w] : o.words) words.push_back({{sp.first + off, sp.second + off}, w});
    for (const auto& c : o.cells) cells.push_back({c.first + off, c.second + off});
    box = {std::min(box.x0, o.box.x0), std::min(box.y0, o.box.y0), std::max(box.x1, o.box.x1),
           std::max(box.y1, o.box.y1)};
  }
  std::string cell(std::size_t i) const {
    return text.substr(cells[i].first, cells[i].second - cells[i].first);
  }
  std::optional<BBox> box_of(Span s) const {
    std::optional<BBox> b;
    for (const auto& [sp, w] : words) {
      if (sp.second <= s.first || sp.first >= s.second) continue;
      if (!b)
        b = w->box;
      else
        b = BBox{std::min(b->x0, w->box.x0), std::min(b->y0, w->box.y0), std::max(b->x1, w->box.x1),
                 std::max(b->y1, w->box.y1)};
    }
    return b;
  }
  // Lowest Tesseract confidence of the words under a span (1 when no word lies under it).
  double min_confidence(Span s) const {
    double m = 1;
    for (const auto& [sp, w] : words)
      if (!(sp.second <= s.first || sp.first >= s.second)) m = std::min(m, w->confidence);
    return m;
  }
  void confidence_of(Span s, double& sum, int& n) const {
    for (const auto& [sp, w] : words)
      if (!(sp.second <= s.first || sp.first >= s.second)) sum += w->confidence, ++n;
  }
};

BBox round_box(BBox b) {
  auto r = [](double x) { return std::round(x * 10) / 10; };
  return {r(b.x0), r(b.y0), r(b.x1), r(b.y1)};
}

Provenance make_provenance(const RowView& row, const std::map<std::string, Span>& spans) {
  Provenance p;
  p.page = row.page;
  p.source = "ocr";
  double sum = 0;
  int n = 0;
  std::optional<BBox> all;
  for (const auto& [field, sp] : spans) {
    auto b = row.box_of(sp);
    if (!b) continue;
    p.fields[field] = round_box(*b);
    all = all ? BBox{std::min(all->x0, b->x0), std::min(all->y0, b->y0), std::max(all->x1, b->x1),
                     std::max(all->y1, b->y1)}
              : *b;
    row.confidence_of(sp, sum, n);
  }
  if (all) p.bbox = round_box(*all);
  if (n) p.confidence = std::round(sum / n * 1000) / 1000;
  return p;
}

std::string trim(std::string_view s) {
  std::size_t b = 0, e = s.size();
  auto junk = [](char c) {
    return std::isspace(static_cast<unsigned char>(c)) || c == ',' || c == ';' || c == ':';
  };
  while (b < e && junk(s[b])) ++b;
  while (e > b && (junk(s[e - 1]) || s[e - 1] == '.')) --e;
  return std::string(s.substr(b, e - b));
}

// Leading list markers: "1.", "2)", "•", "-", "*", "o".
std::size_t skip_marker(const std::string& t) {
  // A row number alone in the first column of a table ("1  Urinary tract infection ...") is a marker too;
  // OCR reads the dot of "4." as a comma.
  static const std::regex marker(R"(^\s*(?:\d{1,2}[.),]|[•·*+\-–o»>e]|\[[ xX]\]|\d{1,2}(?=\s{2}))\s+)");
  std::smatch m;
  if (std::regex_search(t, m, marker)) return static_cast<std::size_t>(m.length(0));
  // A bullet glyph that OCR read as a few symbols ("¢", "«", "*«", "¢«"): a short first token with no
  // letter or digit in it, followed by a space.
  std::size_t b = t.find_first_not_of(' ');
  if (b == std::string::npos) return 0;
  std::size_t e = t.find(' ', b);
  if (e == std::string::npos || e - b > 4) return 0;
  for (std::size_t k = b; k < e; ++k) {
    unsigned char c = static_cast<unsigned char>(t[k]);
    if (std::isalnum(c) || c == '<' || c == '>' || c == '(' || c == '[') return 0;
  }
  return t.find_first_not_of(' ', e) == std::string::npos ? 0 : t.find_first_not_of(' ', e);
}

// Page furniture: a running footer or header with a page count ("... Page 1 of 2").
// OCR reads the digits of a footer's page count as look-alike letters and may drop the spaces ("Page lof 1",
// "Page 1of 1"). A running header of a continuation page names the patient and says "(continued)".
bool page_furniture(const std::string& t) {
  static const std::regex page_of(R"(\bPage\s*[0-9lIi|!]{1,3}\s*of\s*[0-9lIi|!]{1,3}\b)", std::regex::icase);
  static const std::regex running_header(R"(\bMRN\b.*\(continued\)\s*$)", std::regex::icase);
  return std::regex_search(t, page_of) || std::regex_search(t, running_header);
}

bool has_digit(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
}

// An ISO date ("2019-03-06") moved by `days`; the text as given when it is not a full date.
std::string add_days(const std::string& iso, int days) {
  if (days == 0 || iso.size() != 10) return iso;
  int y = 0;
  unsigned m = 0, d = 0;
  if (std::sscanf(iso.c_str(), "%4d-%2u-%2u", &y, &m, &d) != 3) return iso;
  const std::chrono::year_month_day ymd{std::chrono::year{y}, std::chrono::month{m}, std::chrono::day{d}};
  if (!ymd.ok()) return iso;
  const std::chrono::year_month_day out{std::chrono::sys_days{ymd} + std::chrono::days{days}};
  return fmt::format("{:04d}-{:02d}-{:02d}", static_cast<int>(out.year()), static_cast<unsigned>(out.month()),
                     static_cast<unsigned>(out.day()));
}

class Builder {
 public:
  Builder(const Vocabulary& v, const StructureOptions& o) : v_(v), o_(o) {}

  Extraction run(const std::vector<OcrPage>& pages) {
    for (const auto& p : pages) {
      PageInfo pi;
      pi.number = p.number;
      pi.width = p.width;
      pi.height = p.height;
      pi.dpi = p.dpi;
      e_.pages.push_back(pi);
      std::vector<RowView> rows;
      for (const auto& r : p.rows)
        if (auto rv = RowView::of(p, r, v_.ocr_fixes); !rv.cells.empty()) rows.push_back(std::move(rv));
      grid_.reset();
      if (&p == &pages.front()) header(rows, p);
      for (std::size_t i = 0; i < rows.size(); ++i) i = row(rows, i);
    }
    finish();
    return std::move(e_);
  }

 private:
  const Vocabulary& v_;
  const StructureOptions& o_;
  Extraction e_;

  // A lab or vital whose value lies on a word of lower Tesseract confidence than
  // `min_value_confidence` is left out (off by default: docs/design/extract.md has the dev curve).
  bool confident_value(const RowView& r, Span value) const {
    return o_.min_value_confidence <= 0 || r.min_confidence(value) >= o_.min_value_confidence;
  }
  std::string section_;
  std::optional<std::size_t> diagnosis_open_;
  bool diagnosis_code_below_ = false;  // the open diagnosis ended with a code label, its code below
  struct ImmunizationOpen {
    std::size_t item;
    double x0;        // left edge of the vaccine name
    std::string raw;  // the name as printed up to the wrap, with its final punctuation ("quadrivalent,")
  };
  std::optional<ImmunizationOpen> immunization_open_;  // the diagnosis whose text may go on in the next row
  std::string doc_title_row_;
  std::optional<std::size_t> last_procedure_;
  struct StudyOpen {
    std::size_t item;  // the procedure whose paragraph goes on
    bool impression;   // past its "Impression:" label
  };
  std::optional<StudyOpen> study_open_;
  std::set<std::string> seen_procedures_;
  struct Grid {
    std::vector<std::pair<double, std::string>> columns;  // x centre, HH:MM
    std::vector<int> days;                                // days after the encounter date, per column
    double first_x = 0;
  };
  std::optional<Grid> grid_;
  mutable std::deque<RowView> merged_rows_;
  std::optional<std::pair<std::string, BBox>> vitals_time_;
  struct Column {
    int page;
    double x0, x1;
  };
  std::optional<Column> indication_column_;
  std::optional<Column>
      prior_column_;  // the prior-result column of the current results table  // the indication column of the
                      // current medication table  // "Taken at 11:21": the time of the vitals below  // rows
                      // joined with their continuation (stable addresses)

  // ----------------------------------------------------------------------------------- header and type
  void header(const std::vector<RowView>& rows, const OcrPage& p) {
    // Document type from the title: the earliest of the top rows holding a title phrase.
    std::size_t limit = std::min<std::size_t>(rows.size(), 14);
    for (std::size_t i = 0; i < limit && e_.document_type == "other"; ++i) {
      std::size_t best_len = 0;
      for (const auto& [type, phrases] : v_.document_types)
        for (const auto& ph : phrases)
          if (ph.size() > best_len && find_phrase(collapse_spaces(rows[i].text), ph) != std::string::npos) {
            e_.document_type = type;
            best_len = ph.size();
          }
    }
    if (e_.document_type == "other") {
      std::string all;
      for (const auto& r : rows) all += r.text + "\n";
      int best = 0;
      for (const auto& [type, cues] : v_.document_cues) {
        int n = 0;
        for (const auto& c : cues)
          if (find_phrase(all, c) != std::string::npos) ++n;
        if (n > best && n >= 2) {
          best = n;
          e_.document_type = type;
        }
      }
    }
    // Facility: the first prominent row near the top (its first cell; a title may share the row). A
    // prescriber's pad puts the prescriber's name with credentials above the practice: that row gives the
    // provider, and the facility is the row under it.
    std::vector<double> hs;
    for (const auto& r : rows) hs.push_back(r.height);
    std::sort(hs.begin(), hs.end());
    double body = hs.empty() ? 0 : hs[hs.size() / 2];
    auto is_title = [&](const std::string& text) {
      std::string t = collapse_spaces(text);
      for (const auto& [type, phrases] : v_.document_types)
        for (const auto& ph : phrases)
          if (find_phrase(t, ph) != std::string::npos) return true;
      return false;
    };
    bool after_provider = false;
    for (std::size_t i = 0; i < std::min<std::size_t>(rows.size(), 6); ++i) {
      const RowView& r = rows[i];
      if (r.box.y0 > 0.15 * p.height) break;
      if (r.cells.empty()) continue;
      if (!after_provider && r.height < 1.15 * body) continue;
      std::string c0 = r.cell(0);
      if (is_title(c0) || trim(c0).size() < 4 || has_digit(c0)) continue;
      if (!after_provider && r.cells.size() == 1 && has_credential(c0)) {
        auto& enc = encounter();
        if (!enc.provider) {
          enc.provider = trim(c0);
          add_field_box(enc.provenance, make_provenance(r, {{"provider", r.cells[0]}}), "provider");
        }
        after_provider = true;
        continue;
      }
      auto& enc = encounter();
      std::string facility = trim(c0);
      auto prov = make_provenance(r, {{"facility", r.cells[0]}});
      std::size_t next = i + 1;
      // A name wrapped in the letterhead ("Pinecrest Hollow Memorial" / "Hospital"): the next row starts
      // at the same left edge in the same large print and is not a title.
      if (next < rows.size() && !rows[next].cells.empty()) {
        const RowView& w = rows[next];
        std::string t = trim(w.cell(0));
        // The lines of a wrapped name are set tight; a title under a letterhead band starts after a gap.
        const auto fb = r.box_of(r.cells[0]), wb = w.box_of(w.cells[0]);
        if (!after_provider && fb && wb && std::abs(wb->x0 - fb->x0) < std::max(r.height, 10.0) &&
            cell_height(w, 0) >= 0.8 * cell_height(r, 0) && wb->y0 - fb->y1 < 0.45 * cell_height(r, 0) &&
            !t.empty() && t.size() <= 30 && !has_digit(t) && !is_title(t) &&
            t.find(':') == std::string::npos && !names_department(t)) {
          facility += " " + t;
          auto p2 = make_provenance(w, {{"facility", w.cells[0]}});
          const BBox &a = prov.fields["facility"], &b = p2.fields["facility"];
          prov.fields["facility"] = {std::min(a.x0, b.x0), std::min(a.y0, b.y0), std::max(a.x1, b.x1),
                                     std::max(a.y1, b.y1)};
          ++next;
        }
      }
      enc.facility = facility;
      add_field_box(enc.provenance, prov, "facility");
      // Department: a left-aligned (or centred) row under the facility, printed smaller, without digits, in
      // the rows before the first field label: "Department of Radiology". The address, the contact line and
      // a title in large print may come between.
      for (std::size_t j = next; j < std::min(rows.size(), next + 4); ++j) {
        const RowView& d = rows[j];
        if (d.cells.empty()) continue;
        if (d.box.y0 > 0.25 * p.height) break;
        std::string t = trim(d.cell(0));
        if (t.find(':') != std::string::npos || is_label(t)) break;
        // A title is printed large; a department that is also a title word ("Cardiology") is body size.
        if (starts_with_title(d.text) && d.height >= 1.15 * body) continue;
        if (cell_height(d, 0) > 0.9 * cell_height(r, 0)) continue;
        if (has_digit(t) || t.size() < 3 || t.size() > 48 || !std::isupper(static_cast<unsigned char>(t[0])))
          continue;
        // Another cell on the row is the address or contact line of a two-column letterhead.
        if (d.cells.size() > 1) {
          const std::string c1 = trim(d.cell(1));
          if (c1.empty() || !(std::isdigit(static_cast<unsigned char>(c1[0])) || c1.rfind("Tel", 0) == 0 ||
                              c1.rfind("Fax", 0) == 0 || c1.rfind("Phone", 0) == 0))
            continue;
        }
        // Under the facility: left-aligned with it, or centred under it (a centred letterhead).
        const auto fb = r.box_of(r.cells[0]), db = d.box_of(d.cells[0]);
        const bool aligned = std::abs(d.box.x0 - r.box.x0) <= 40 ||
                             (fb && db && std::abs((fb->x0 + fb->x1) - (db->x0 + db->x1)) <= 80);
        if (!aligned) continue;
        enc.department = t;
        add_field_box(enc.provenance, make_provenance(d, {{"department", d.cells[0]}}), "department");
        break;
      }
      break;
    }
  }

  // A line with a word that names a department ("Hospital Medicine", "Pharmacy Services").
  bool names_department(const std::string& text) const {
    const std::string t = to_lower(text);
    for (const auto& w : v_.department_words)
      if (find_phrase(t, w) != std::string::npos) return true;
    return false;
  }
  // A row whose text begins with a title phrase ("Laboratory  Results - Extended Panel").
  bool starts_with_title(const std::string& text) const {
    std::string t = collapse_spaces(text);
    for (const auto& [type, phrases] : v_.document_types)
      for (const auto& ph : phrases)
        if (find_phrase(t, ph) == 0) return true;
    return false;
  }
  // Median height of the words of a cell (a title shares its row with small print).
  static double cell_height(const RowView& r, std::size_t c) {
    std::vector<double> hs;
    for (const auto& [sp, w] : r.words)
      if (sp.first >= r.cells[c].first && sp.second <= r.cells[c].second) hs.push_back(w->box.y1 - w->box.y0);
    if (hs.empty()) return r.height;
    std::sort(hs.begin(), hs.end());
    return hs[hs.size() / 2];
  }
  static std::string collapse_spaces(const std::string& s) {
    std::string out;
    for (char c : s)
      if (c != ' ' || (!out.empty() && out.back() != ' ')) out += c;
    return out;
  }
  // A cell that is a field label alone ("PATIENT", "DOB:").
  bool is_label(const std::string& cell) const {
    std::string t = to_lower(trim(cell));
    while (!t.empty() && (t.back() == ':' || t.back() == ' ')) t.pop_back();
    for (const auto& [field, labels] : v_.labels)
      for (const auto& l : labels)
        if (t == l) return true;
    return false;
  }
  // A row of field labels over their values (a boxed header grid: "NAME  DATE OF BIRTH  MRN"): at least half
  // of its cells are labels. A table's column header ("Vaccine  Date  Dose  Manufacturer ...") is not one,
  // and the row under it is the table's first row, not the value of "Date".
  bool label_row(const RowView& r) const {
    std::size_t n = 0;
    for (std::size_t c = 0; c < r.cells.size(); ++c) n += is_label(r.cell(c)) ? 1 : 0;
    return 2 * n >= r.cells.size();
  }
  // A person's name with a professional credential at the end ("Sarah T. Garcia, MD").
  bool has_credential(const std::string& text) const {
    std::string t = trim(text);
    std::size_t comma = t.rfind(", ");
    if (comma == std::string::npos) return false;
    std::string tail = t.substr(comma + 2);
    return std::find(v_.credentials.begin(), v_.credentials.end(), tail) != v_.credentials.end();
  }

  Encounter& encounter() {
    if (!e_.encounter) e_.encounter.emplace();
    return *e_.encounter;
  }
  Patient& patient() {
    if (!e_.patient) e_.patient.emplace();
    return *e_.patient;
  }
  static void add_field_box(std::optional<Provenance>& dst, const Provenance& src, const std::string& field) {
    if (!dst) {
      dst = Provenance{};
      dst->page = src.page;
      dst->source = "ocr";
    }
    auto it = src.fields.find(field);
    if (it == src.fields.end()) return;
    dst->fields[field] = it->second;
    const BBox& b = it->second;
    dst->bbox = dst->bbox ? BBox{std::min(dst->bbox->x0, b.x0), std::min(dst->bbox->y0, b.y0),
                                 std::max(dst->bbox->x1, b.x1), std::max(dst->bbox->y1, b.y1)}
                          : b;
    if (src.confidence)
      dst->confidence = dst->confidence ? std::min(*dst->confidence, *src.confidence) : *src.confidence;
  }

  // ------------------------------------------------------------------------------------------ sections
  std::optional<std::string> heading(const RowView& r) const {
    if (r.cells.size() > 2) return std::nullopt;
    std::string t = to_lower(trim(r.cell(0)));
    while (!t.empty() && (t.back() == ':' || t.back() == ' ')) t.pop_back();
    if (t.empty() || t.size() > 48) return std::nullopt;
    for (const auto& [kind, list] : v_.sections)
      for (const auto& h : list)
        if (t == h) return kind;
    return std::nullopt;
  }

  // ------------------------------------------------------------------------------------- key / value
  // Finds a label at the start of cell `ci`; returns the field and the span of the value (same cell, next
  // cell, or the overlapping cell of the next row).
  struct KV {
    std::string field;
    const RowView* row;
    Span value;
  };
  std::vector<KV> key_values(const std::vector<RowView>& rows, std::size_t ri) const {
    std::vector<KV> out;
    const RowView& r = rows[ri];
    for (std::size_t ci = 0; ci < r.cells.size(); ++ci) {
      std::string c = r.cell(ci);
      std::string lc = to_lower(c);
      std::string best_field;
      std::size_t best_len = 0;
      for (const auto& [field, labels] : v_.labels)
        for (const auto& l : labels) {
          if (l.size() <= best_len || lc.compare(0, l.size(), l) != 0) continue;
          std::size_t e = l.size();
          if (e < lc.size() && lc[e] != ':' && !(lc[e] == ' ' && e + 1 < lc.size() && lc[e + 1] == ':'))
            continue;
          best_field = field;
          best_len = l.size();
        }
      if (best_field.empty()) continue;
      std::size_t vb = r.cells[ci].first + best_len;
      while (vb < r.cells[ci].second && (r.text[vb] == ':' || r.text[vb] == ' ')) ++vb;
      if (vb < r.cells[ci].second) {
        out.push_back(wrapped_name(rows, ri, {best_field, &r, {vb, r.cells[ci].second}}));
      } else if (ci + 1 < r.cells.size() && c.back() == ':') {
        out.push_back(wrapped_name(rows, ri, {best_field, &r, r.cells[ci + 1]}));
        ++ci;
      } else if (ri + 1 < rows.size() && label_row(r)) {
        // Label above its value: the next row's cell that overlaps this cell horizontally.
        const RowView& n = rows[ri + 1];
        auto lb = r.box_of(r.cells[ci]);
        if (!lb || n.box.y0 - r.box.y1 > 2.5 * std::max(r.height, 8.0)) continue;
        for (std::size_t k = 0; k < n.cells.size(); ++k) {
          auto nb = n.box_of(n.cells[k]);
          if (nb && nb->x0 < lb->x1 + 10 && nb->x0 > lb->x0 - 25) {
            out.push_back({best_field, &n, n.cells[k]});
            break;
          }
        }
      }
    }
    return out;
  }

  // A provider's name that wraps at the end of its row ("Ordering Provider: Steven L." / "Campbell, MD"):
  // the next row is one short cell and only with it does the name end in a credential. The value then
  // spans both rows (a merged row view; the caller skips the next row).
  KV wrapped_name(const std::vector<RowView>& rows, std::size_t ri, KV kv) const {
    const RowView& r = rows[ri];
    if (kv.field != "encounter.provider" || ri + 1 >= rows.size() || kv.value.second != r.text.size())
      return kv;
    const RowView& n = rows[ri + 1];
    if (n.cells.size() != 1 || n.page != r.page || n.box.y0 - r.box.y1 > 1.5 * std::max(r.height, 8.0))
      return kv;
    std::string value = r.text.substr(kv.value.first, kv.value.second - kv.value.first);
    while (!value.empty() && value.back() == ' ') value.pop_back();
    std::string more = trim(n.text);
    if (more.empty() || more.size() > 30 || more.find(':') != std::string::npos || has_credential(value) ||
        !has_credential(value + " " + more))
      return kv;
    RowView m = r;
    const std::size_t off = m.text.size() + 1;
    m.text += " " + n.text;
    for (const auto& [sp, w] : n.words) m.words.push_back({{sp.first + off, sp.second + off}, w});
    m.cells.back().second = m.text.size();
    merged_rows_.push_back(std::move(m));
    return {kv.field, &merged_rows_.back(), {kv.value.first, merged_rows_.back().text.size()}};
  }

  void apply_kv(const KV& kv) {
    std::string val = kv.row->text.substr(kv.value.first, kv.value.second - kv.value.first);
    std::string dot = kv.field.substr(0, kv.field.find('.'));
    std::string field = kv.field.substr(kv.field.find('.') + 1);
    Span sp = kv.value;
    std::optional<std::string> out;
    if (field == "birth_date" || field == "date" || field == "admission_date" || field == "discharge_date") {
      Span ds;
      out = normalise_date(val, field != "birth_date", &ds);
      if (!out) return;
      sp = {kv.value.first + ds.first, kv.value.first + ds.second};
    } else if (field == "sex") {
      std::string w = to_lower(trim(val.substr(0, val.find(' '))));
      auto it = v_.sex_values.find(w);
      if (it == v_.sex_values.end()) return;
      out = it->second;
    } else if (field == "mrn") {
      std::string w = trim(val.substr(0, val.find(' ')));
      if (w.empty() || !has_digit(w)) return;
      // OCR look-alikes in an identifier of a letter and digits: "$791307" is S791307, "HO25855" H025855.
      if (w.size() > 4 && w[0] == '$' && std::all_of(w.begin() + 1, w.end(), [](char ch) {
            return std::isdigit(static_cast<unsigned char>(ch));
          }))
        w[0] = 'S';
      w = fix_lot(w);
      out = w;
      sp = {kv.value.first, kv.value.first + val.find(' ')};
      if (val.find(' ') == std::string::npos) sp = kv.value;
    } else {
      std::string t = trim(val);
      if (t.empty() || t.size() > 200) return;
      if (field == "provider") {
        // A middle initial that OCR set against the first name ("PaulA. Castillo"): "Paul A. Castillo".
        static const std::regex glued_initial(R"(([a-z])([A-Z]\.)(?= ))");
        t = std::regex_replace(t, glued_initial, "$1 $2");
      }
      out = t;
    }
    Provenance p = make_provenance(*kv.row, {{field, sp}});
    if (dot == "patient") {
      auto& pt = patient();
      std::optional<std::string>* slot = field == "name"         ? &pt.name
                                         : field == "birth_date" ? &pt.birth_date
                                         : field == "mrn"        ? &pt.mrn
                                                                 : &pt.sex;
      if (*slot) return;
      *slot = out;
      add_field_box(pt.provenance, p, field);
    } else {
      auto& en = encounter();
      std::optional<std::string>* slot = field == "date"             ? &en.date
                                         : field == "admission_date" ? &en.admission_date
                                         : field == "discharge_date" ? &en.discharge_date
                                         : field == "provider"       ? &en.provider
                                         : field == "department"     ? &en.department
                                                                     : &en.facility;
      if (*slot) return;
      *slot = out;
      add_field_box(en.provenance, p, field);
    }
  }

  // ---------------------------------------------------------------------------------------- the rows
  std::size_t row(const std::vector<RowView>& rows, std::size_t i) {
    const RowView& r = rows[i];
    if (r.text.empty() || page_furniture(r.text)) return i;
    if (diagnosis_continuation(rows, i) || immunization_continuation(rows, i)) return i;
    diagnosis_open_.reset();
    immunization_open_.reset();
    if (auto h = heading(r)) {
      study_open_.reset();
      prior_column_.reset();
      section_ = *h;
      vitals_time_.reset();
      indication_column_.reset();
      grid_.reset();
      return i;
    }
    if (study_continuation(rows, i)) return i;
    if (prior_column_header(r)) return i;
    if (medication_table_header(r)) return i;
    if (grid_header(r)) return i;
    if (grid_ && grid_row(r)) return i;
    std::string lower = to_lower(r.text);
    // Allergies line: "Allergies: A - rash (mild); B - hives" or "Allergies: NKDA".
    for (const auto& h : v_.sections.at("allergies")) {
      if (lower.compare(0, h.size(), h) == 0 && lower.size() > h.size() + 1 &&
          (lower[h.size()] == ':' || lower.substr(h.size(), 2) == " :")) {
        std::size_t b = lower.find(':') + 1;
        allergy_list(r, b);
        // A list that ends its row with a separator goes on in the next row ("...; " / "Heparin - ...").
        std::size_t j = i;
        while (j + 1 < rows.size() && !rows[j].text.empty() && rows[j].text.back() == ';' &&
               rows[j + 1].page == rows[j].page && !heading(rows[j + 1]) && key_values(rows, j + 1).empty() &&
               rows[j + 1].box.y0 - rows[j].box.y1 < 1.5 * std::max(rows[j].height, 8.0)) {
          ++j;
          allergy_list(rows[j], 0);
        }
        return j;
      }
    }
    // "Taken at 11:21" above a block of vitals: the time of those vitals, on the encounter's date.
    {
      static const std::regex taken(
          R"(^(?:taken at|time taken:?|measured at)\s+(\d{1,2}:\d{2}(?:\s?[AaPp][Mm])?)\s*$)",
          std::regex::icase);
      std::smatch tm;
      if (std::regex_match(r.text, tm, taken) && e_.encounter && e_.encounter->date &&
          e_.encounter->date->size() >= 10) {
        if (auto d = normalise_date(e_.encounter->date->substr(0, 10) + " " + tm[1].str(), true);
            d && d->size() > 10) {
          auto b = r.box_of({static_cast<std::size_t>(tm.position(1)),
                             static_cast<std::size_t>(tm.position(1) + tm.length(1))});
          vitals_time_ = std::make_pair(*d, b ? round_box(*b) : round_box(r.box));
          return i;
        }
      }
    }
    auto kvs = key_values(rows, i);
    for (const auto& kv : kvs) apply_kv(kv);
    bool consumed_next = false;
    for (const auto& kv : kvs)
      if (kv.row != &r) consumed_next = true;
    if (!kvs.empty()) return consumed_next ? i + 1 : i;

    if (section_ == "allergies") {
      if (allergy_row(r)) return i;
    }
    if (diagnosis(r)) return i;
    if (section_ == "findings" || section_ == "impression") {
      procedure_text(r);
      return i;
    }
    if (procedure(r)) return i;
    if (immunization(r)) return i;
    if (section_ != "medications") {
      const std::size_t before = e_.labs.size();
      if (lab(r)) return lab_unit_continuation(rows, i, before);
      if (vitals(r)) return i;
    }
    if (section_ != "allergies" && section_ != "labs" && section_ != "vitals") {
      std::size_t j = medication(rows, i);
      if (j != std::string::npos) return j;
    }
    if (section_ == "followups" || (skip_marker(r.text) > 0 && known_followup(r.text))) {
      const std::size_t before = e_.followups.size();
      followup(r);
      if (e_.followups.size() > before && i + 1 < rows.size() && followup_continuation(r, rows[i + 1]))
        return i + 1;
    }
    if (section_ == "vitals") vitals(r);
    return i;
  }

  // ------------------------------------------------------------------------------------------ time grids
  // A header row of times ("Parameter 06:00 07:00 ...") starts a grid: each later row is a vital or lab with
  // its unit in parentheses, one value per time column (with a printed flag), and maybe a reference range.
  bool grid_header(const RowView& r) {
    static const std::regex hhmm(R"(^([01]?\d|2[0-3]):[0-5]\d$)");
    Grid g;
    std::vector<double> misread;  // x centres of time-shaped words that are not valid times
    for (std::size_t c = 0; c < r.cells.size(); ++c) {
      for (std::size_t k = 0; k < r.words.size(); ++k) {
        const auto& [sp, w] = r.words[k];
        if (sp.first < r.cells[c].first || sp.second > r.cells[c].second) continue;
        std::string t = r.text.substr(sp.first, sp.second - sp.first);
        // Specks next to a time in a header bar: "19:00)", "|07:00".
        while (!t.empty() && std::strchr("()[]|.,;'\"", t.back())) t.pop_back();
        while (!t.empty() && std::strchr("()[]|.,;'\"", t.front())) t.erase(t.begin());
        double x1 = w->box.x1;
        std::string
            marker;  // "12:00 AM", "2:00 PM": a 12-hour clock, the marker in the next word of the cell
        if (k + 1 < r.words.size() && r.words[k + 1].first.second <= r.cells[c].second) {
          std::string next = to_lower(r.text.substr(
              r.words[k + 1].first.first, r.words[k + 1].first.second - r.words[k + 1].first.first));
          if (next == "am" || next == "pm") {
            marker = next;
            x1 = r.words[k + 1].second->box.x1;
          }
        }
        // A column time stands alone in its cell (with its AM/PM): a time inside a field's value
        // ("Collected: 2023-06-03 9:30 AM  Reported: 2023-06-03 6:25 PM") does not start a grid.
        {
          std::size_t words_in_cell = 0;
          for (const auto& [sp2, w2] : r.words)
            if (sp2.first >= r.cells[c].first && sp2.second <= r.cells[c].second) ++words_in_cell;
          if (words_in_cell > (marker.empty() ? 1u : 2u)) continue;
        }
        if (!std::regex_match(t, hhmm)) {
          static const std::regex time_shape(R"(^\d{1,2}[:.]\d{2}$)");
          if (std::regex_match(t, time_shape)) misread.push_back((w->box.x0 + x1) / 2);
          continue;
        }
        if (t.size() == 4) t = "0" + t;
        if (!marker.empty()) {
          int h = std::stoi(t.substr(0, 2));
          if (h >= 1 && h <= 12) h = marker == "pm" ? (h % 12) + 12 : h % 12;
          t = fmt::format("{:02d}{}", h, t.substr(2));
        }
        g.columns.push_back({(w->box.x0 + x1) / 2, t});
      }
    }
    if (g.columns.size() < 2) return false;
    // Column times OCR misread in a shaded header ("06:00" read as "66:00"): the columns are evenly spaced in
    // time, so a misread one gets the time of its position on the line through the first and last time
    // read, rounded to 5 minutes; only when the times read are all on 5-minute marks.
    if (!misread.empty()) {
      auto minutes = [](const std::string& hm) {
        return std::stoi(hm.substr(0, 2)) * 60 + std::stoi(hm.substr(3));
      };
      const auto a = g.columns.front();  // copies: the loop below adds columns
      const auto b = g.columns.back();
      const double dx = b.first - a.first;
      const int ma = minutes(a.second), mb = minutes(b.second);
      bool on_marks = true;
      for (const auto& c : g.columns) on_marks = on_marks && minutes(c.second) % 5 == 0;
      if (on_marks && std::abs(dx) > 1 && mb != ma) {
        for (double x : misread) {
          const double m = ma + (mb - ma) * (x - a.first) / dx;
          const int rounded = static_cast<int>(std::lround(m / 5.0)) * 5;
          if (rounded < 0 || rounded >= 24 * 60) continue;
          g.columns.push_back({x, fmt::format("{:02d}:{:02d}", rounded / 60, rounded % 60)});
        }
        std::sort(g.columns.begin(), g.columns.end());
      }
    }
    // A grid runs forward in time: a column time earlier than the one before it is on the next day
    // ("18:00  22:00  02:00").
    int day = 0;
    for (std::size_t c = 0; c < g.columns.size(); ++c) {
      if (c > 0 && g.columns[c].second < g.columns[c - 1].second) ++day;
      g.days.push_back(day);
    }
    g.first_x = r.box.x0;
    grid_ = g;
    return true;
  }
  bool grid_row(const RowView& r) {
    if (r.cells.size() < 2) return false;
    std::string c0 = r.cell(0);
    // A speck or rule end before the row name, read as a quote or bar ("\xE2\x80\x9CBP (mmHg)").
    std::size_t lead = 0;
    for (const char* junk : {"\xE2\x80\x9C", "\xE2\x80\x98", "\"", "'", "|", "_", "\xE2\x80\x94"})
      if (c0.rfind(junk, 0) == 0) lead = std::strlen(junk);
    c0 = c0.substr(lead);
    static const std::regex name_unit(R"(^(.*?)\s*\(([^()]+)\)\s*$)");
    std::smatch m;
    std::string name = c0, unit;
    Span name_span = {r.cells[0].first + lead, r.cells[0].second}, unit_span{0, 0};
    std::size_t value_cell = 1;
    if (std::regex_match(c0, m, name_unit)) {
      name = m[1].str();
      unit = m[2].str();
      name_span = {r.cells[0].first + lead, r.cells[0].first + lead + m.length(1)};
      unit_span = {r.cells[0].first + lead + m.position(2),
                   r.cells[0].first + lead + m.position(2) + m.length(2)};
    } else if (std::string c1 = r.cells.size() > 2 ? r.cell(1) : std::string();
               c1.size() > 2 && c1.front() == '(' && c1.back() == ')') {
      m = std::smatch();
      unit = c1.substr(1, c1.size() - 2);
      unit_span = {r.cells[1].first + 1, r.cells[1].second - 1};
      value_cell = 2;
    }
    bool is_vital = false, is_lab = false;
    if (auto f = find_longest(name, v_.vitals); f && f->second.first == 0 && f->second.second == name.size())
      is_vital = true;
    if (auto f = find_longest(name, v_.lab_tests);
        f && f->second.first == 0 && f->second.second == name.size())
      is_lab = true;
    if (!is_vital && !is_lab) return false;
    std::string date = e_.encounter && e_.encounter->date ? e_.encounter->date->substr(0, 10) : "";
    std::optional<std::string> range;
    Span range_span{0, 0};
    static const std::regex range_re(R"(^[<>]=?\s?\d+(?:\.\d+)?$|^-?\d+(?:\.\d+)?\s?-\s?\d+(?:\.\d+)?$)");
    struct Val {
      std::string value, time;
      int day = 0;
      std::optional<std::string> flag;
      Span vs, fs;
    };
    std::vector<Val> vals;
    for (std::size_t c = value_cell; c < r.cells.size(); ++c) {
      std::string t = r.cell(c);
      auto b = r.box_of(r.cells[c]);
      if (!b) continue;
      double cx = (b->x0 + b->x1) / 2;
      // nearest time column
      double best = 1e9;
      std::string time;
      int day = 0;
      for (std::size_t k = 0; k < grid_->columns.size(); ++k)
        if (std::abs(grid_->columns[k].first - cx) < best)
          best = std::abs(grid_->columns[k].first - cx), time = grid_->columns[k].second,
          day = grid_->days[k];
      double pitch =
          grid_->columns.size() > 1 ? std::abs(grid_->columns[1].first - grid_->columns[0].first) : 100;
      if (best > 0.45 * pitch) {
        if (std::regex_match(t, range_re)) {
          range = t;
          range_span = r.cells[c];
        }
        continue;
      }
      // A flag's marks that OCR set apart as a cell of their own ("7.50 H" then "*", "49 L" then "!!"): they
      // complete the flag of the value before them in the same column, and are never a value.
      if (!t.empty() && t.find_first_not_of("*!") == std::string::npos) {
        if (!vals.empty() && vals.back().time == time && vals.back().flag) {
          const Val& pv = vals.back();
          std::string printed = r.text.substr(pv.fs.first, pv.fs.second - pv.fs.first) + " " + t;
          if (auto f = normalise_flag(printed, v_)) {
            vals.back().flag = f;
            vals.back().fs.second = r.cells[c].second;
          }
        }
        continue;
      }
      Val v;
      std::size_t sp = t.find(' ');
      v.value = sp == std::string::npos ? t : t.substr(0, sp);
      v.vs = {r.cells[c].first, r.cells[c].first + v.value.size()};
      v.time = time;
      v.day = day;
      if (sp != std::string::npos) {
        if (auto f = normalise_flag(t.substr(sp + 1), v_)) {
          v.flag = f;
          v.fs = {r.cells[c].first + sp + 1, r.cells[c].second};
        }
      } else {
        // A flag printed against the number without a space ("31L", "115H", "7.1HH").
        static const std::regex glued(R"(^([<>]?\d+(?:\.\d+)?)([A-Za-z]{1,2}|[HL][!*]{1,2})$)");
        std::smatch gm;
        if (std::regex_match(t, gm, glued)) {
          if (auto f = normalise_flag(gm[2].str(), v_)) {
            v.value = gm[1].str();
            v.vs = {r.cells[c].first, r.cells[c].first + v.value.size()};
            v.flag = f;
            v.fs = {r.cells[c].first + gm.position(2), r.cells[c].second};
          }
        }
      }
      // A measurement in a time column is a number ("98.6", "<0.5", "120/80"); anything else in the
      // column (a speck or a stray mark read as letters) is not a value.
      static const std::regex measurement(R"(^[<>]?\d+(?:[.,]\d+)?(?:/\d+)?$)");
      if (!std::regex_match(v.value, measurement)) continue;
      vals.push_back(v);
    }
    if (vals.empty()) return false;
    for (const auto& v : vals) {
      std::map<std::string, Span> spans{{"value", v.vs}};
      std::string when = date.empty() ? "" : add_days(date, v.day) + "T" + v.time;
      if (is_lab && !is_vital) {
        Lab l;
        l.test = name;
        l.value = v.value;
        spans["test"] = name_span;
        if (!unit.empty()) {
          const bool known = std::find(v_.lab_units.begin(), v_.lab_units.end(), unit) != v_.lab_units.end();
          l.unit = known ? unit : snap_lab_unit(unit, to_lower(name), v_);
          spans["unit"] = unit_span;
        }
        if (range) l.reference_range = range, spans["reference_range"] = range_span;
        if (v.flag)
          l.flag = v.flag, spans["flag"] = v.fs;
        else if (o_.derive_flags && range)
          if (auto f = derive_flag(v.value, *range)) l.flag = *f;
        if (!when.empty()) l.time = when;
        l.provenance = make_provenance(r, spans);
        if (!confident_value(r, v.vs)) continue;
        e_.labs.push_back(std::move(l));
      } else {
        Vital x;
        x.name = name;
        x.value = v.value;
        spans["name"] = name_span;
        if (!unit.empty()) x.unit = snap_vital_unit(unit, to_lower(name), v_), spans["unit"] = unit_span;
        if (!when.empty()) x.time = when;
        x.provenance = make_provenance(r, spans);
        if (!confident_value(r, v.vs)) continue;
        e_.vitals.push_back(std::move(x));
      }
    }
    return true;
  }

  // ------------------------------------------------------------------------------------------ allergies
  void allergy_list(const RowView& r, std::size_t from) {
    std::string rest = r.text.substr(from);
    std::string lr = to_lower(rest);
    for (const auto& w : v_.no_known_allergies)
      if (find_phrase(lr, w) != std::string::npos) {
        e_.no_known_allergies = true;
        return;
      }
    std::size_t b = from;
    while (b < r.text.size()) {
      std::size_t e = r.text.find(';', b);
      if (e == std::string::npos) e = r.text.size();
      allergy_item(r, {b, e});
      b = e + 1;
    }
  }
  bool allergy_item(const RowView& r, Span s) {
    std::string t = r.text.substr(s.first, s.second - s.first);
    std::size_t lead = t.find_first_not_of(" ");
    if (lead == std::string::npos) return false;
    Allergy a;
    std::map<std::string, Span> spans;
    // severity in parentheses at the end
    static const std::regex sev(R"(\(\s*([A-Za-z-]+)\s*\)\s*$)");
    std::smatch m;
    std::size_t end = t.size();
    if (std::regex_search(t, m, sev)) {
      auto it = v_.severities.find(to_lower(m[1].str()));
      if (it != v_.severities.end()) {
        a.severity = it->second;
        spans["severity"] = {s.first + m.position(1), s.first + m.position(1) + m.length(1)};
        end = m.position(0);
      }
    }
    std::string body = t.substr(0, end);
    std::size_t dash = body.find(" - ");
    if (dash == std::string::npos) dash = body.find(" (");
    std::size_t sub_end = dash == std::string::npos ? body.size() : dash;
    std::string sub = trim(body.substr(0, sub_end));
    if (sub.empty() || sub.size() > 80) return false;
    std::size_t sb = s.first + body.find(sub);
    a.substance = sub;
    // A capital I that OCR read as a lower-case l at the start ("lodinated contrast media"): the
    // vocabulary's allergen when only that letter differs.
    if (sub.size() > 3 && sub[0] == 'l' &&
        std::find(v_.allergens.begin(), v_.allergens.end(), sub) == v_.allergens.end() &&
        std::find(v_.allergens.begin(), v_.allergens.end(), "I" + sub.substr(1)) != v_.allergens.end())
      a.substance = "I" + sub.substr(1);
    spans["substance"] = {sb, sb + sub.size()};
    if (dash != std::string::npos) {
      std::string reac = body.substr(dash + 2);
      std::string rt = trim(reac);
      while (!rt.empty() && (rt.front() == '(' || rt.front() == '-' || rt.front() == ' '))
        rt.erase(rt.begin());
      while (!rt.empty() && (rt.back() == ')' || rt.back() == ' ')) rt.pop_back();
      if (!rt.empty()) {
        a.reaction = rt;
        std::size_t rb = s.first + body.find(rt, dash);
        spans["reaction"] = {rb, rb + rt.size()};
      }
    }
    a.provenance = make_provenance(r, spans);
    e_.allergies.push_back(std::move(a));
    return true;
  }
  bool allergy_row(const RowView& r) {
    // Table row: substance | reaction | severity
    auto sub = find_longest(r.text, v_.allergens);
    if (!sub || sub->second.first > 4) return false;
    Allergy a;
    std::map<std::string, Span> spans;
    a.substance = r.text.substr(sub->second.first, sub->second.second - sub->second.first);
    spans["substance"] = sub->second;
    for (std::size_t c = 1; c < r.cells.size(); ++c) {
      std::string t = trim(r.cell(c));
      auto it = v_.severities.find(to_lower(t));
      if (it != v_.severities.end() && !a.severity) {
        a.severity = it->second;
        spans["severity"] = r.cells[c];
      } else if (!a.reaction && !t.empty()) {
        a.reaction = t;
        spans["reaction"] = r.cells[c];
      }
    }
    a.provenance = make_provenance(r, spans);
    e_.allergies.push_back(std::move(a));
    return true;
  }

  // ----------------------------------------------------------------------------------------- diagnoses
  bool diagnosis(const RowView& r) {
    std::string t = r.text;
    std::size_t start = skip_marker(t);
    std::string lower = to_lower(t);
    // Role label: "Principal diagnosis: ...", "Pre-op Dx: ...".
    std::optional<std::string> role;
    bool labelled = false;
    for (const auto& [label, rl] : v_.diagnosis_roles) {
      if (lower.compare(start, label.size(), label) != 0) continue;
      std::size_t e = start + label.size();
      if (e < lower.size() && lower[e] != ':' && !(section_ == "diagnoses" || section_ == "impression"))
        continue;
      // "Principal diagnosis: ..." or "FINAL DIAGNOSIS - ...".
      const bool colon = e < lower.size() && lower[e] == ':';
      const bool dash = lower.compare(e, 3, " - ") == 0;
      if (colon || dash) {
        role = rl;
        labelled = true;
        start = e + (colon ? 1 : 3);
        while (start < t.size() && t[start] == ' ') ++start;
        // A specimen designator before the diagnosis ("A. Femoral head, right: ..."), as pathology prints.
        static const std::regex specimen(R"(^[A-Z]\.\s[^:]{2,60}:\s+)");
        std::smatch sm;
        std::string rest = t.substr(start);
        if (std::regex_search(rest, sm, specimen)) start += static_cast<std::size_t>(sm.length(0));
        break;
      }
    }
    std::smatch m;
    std::string sub = t.substr(start);
    // A code in parentheses anywhere, or a bare code at the start of the text or standing as its own cell.
    static const std::regex icd_paren(R"(\(([A-Z][0-9][0-9AB](?:\.[0-9A-Z]{1,4})?)\))");
    static const std::regex icd_lead(R"(^([A-Z][0-9][0-9AB](?:\.[0-9A-Z]{1,4})?)(?=\s|$))");
    static const std::regex icd_cell(R"((?:^|  )([A-Z][0-9][0-9AB]\.[0-9A-Z]{1,4})(?=  |$))");
    // Bare codes are not looked for among results and orders ("O2 Saturation" is not code O02).
    const bool listy = section_ != "labs" && section_ != "vitals" && section_ != "medications";
    // The label as printed or with its I read as a bar or "!" after a rule ("|CD-10:", "|!CD-10:",
    // "|ICD-10:").
    static const std::regex icd_label(
        R"((?:\bICD|[|!]+I?CD)-?10(?:-CM)?:?\s*([A-Z][0-9][0-9AB](?:\.[0-9A-Z]{1,4})?)\b)");
    bool has_code = std::regex_search(sub, m, icd_paren) || std::regex_search(sub, m, icd_label) ||
                    (listy && (std::regex_search(sub, m, icd_lead) || std::regex_search(sub, m, icd_cell)));
    // Tesseract often reads the letter I of a code as the digit 1 ("(135.0)", "148.91 Atrial ...", "110").
    // Where a diagnosis is expected (a diagnosis section or a role label) such a code is read as I..
    bool code_fixed = false;
    if (!has_code && (section_ == "diagnoses" || section_ == "impression" || labelled)) {
      // Likewise the letter Z as the digit 2 ("279.4" in an ICD-10 column is Z79.4).
      static const std::regex i_paren(R"(\(([12][0-9]{2}(?:\.[0-9A-Z]{1,4})?)\))");
      static const std::regex i_lead(R"(^([12][0-9]{2}(?:\.[0-9A-Z]{1,4})?)(?=\s+[A-Za-z]))");
      static const std::regex i_cell(R"((?:^|  )([12][0-9]{2}\.[0-9A-Z]{1,4})(?=  |$))");
      has_code = std::regex_search(sub, m, i_paren) || std::regex_search(sub, m, i_lead) ||
                 std::regex_search(sub, m, i_cell);
      code_fixed = has_code;
    }
    if (!has_code && !labelled) return false;
    if (!has_code && section_ != "diagnoses") return false;
    // Before the first section heading only a labelled diagnosis counts (the header holds phone numbers
    // and identifiers that look like codes).
    if (section_.empty() && !labelled) return false;
    Diagnosis d;
    std::map<std::string, Span> spans;
    std::size_t text_end = t.size();
    if (has_code) {
      d.icd10 = m[1].str();
      if (code_fixed) (*d.icd10)[0] = (*d.icd10)[0] == '1' ? 'I' : 'Z';
      spans["icd10"] = {start + m.position(1), start + m.position(1) + m.length(1)};
      std::size_t code_b = start + m.position(0), code_e = code_b + m.length(0);
      if (code_b > start + 3) {
        text_end = code_b;
      } else {
        // code first: "R55  Syncope and collapse"
        start = code_e;
        while (start < t.size() && (t[start] == ' ' || t[start] == '-' || t[start] == ':')) ++start;
      }
    }
    // A code label that ends the row with its code wrapped onto the next line ("... neoplasm.  ICD-10:" /
    // "S72.001A").
    bool code_below = false;
    if (!has_code) {
      static const std::regex code_label(R"(\s*(?:\bICD|[|!]+I?CD)-?10(?:-CM)?:?\s*$)");
      std::smatch lm;
      std::string body = t.substr(start, text_end - start);
      if (std::regex_search(body, lm, code_label)) {
        text_end = start + static_cast<std::size_t>(lm.position(0));
        code_below = true;
      }
    }
    // Status after " - " at the end.
    std::size_t dash = t.rfind(" - ");
    if (dash != std::string::npos && dash >= start) {
      std::string st = to_lower(trim(t.substr(dash + 3)));
      auto it = v_.diagnosis_status.find(st);
      if (it != v_.diagnosis_status.end()) {
        d.status = it->second;
        spans["status"] = {dash + 3, t.size()};
        text_end = std::min(text_end, dash);
      }
    }
    // Status in a column of its own at the end of a table row ("...  N39.0  Active").
    if (!d.status && r.cells.size() >= 2 && r.cells.back().first > start) {
      auto it = v_.diagnosis_status.find(to_lower(trim(r.cell(r.cells.size() - 1))));
      if (it != v_.diagnosis_status.end()) {
        d.status = it->second;
        spans["status"] = r.cells.back();
        text_end = std::min(text_end, r.cells.back().first);
      }
    }
    std::string txt = trim(t.substr(start, text_end - start));
    while (!txt.empty() && (txt.back() == '(' || txt.back() == '-'))
      txt = trim(txt.substr(0, txt.size() - 1));
    if (txt.size() < 3) return false;
    d.text = txt;
    std::size_t tb = t.find(txt, start);
    spans["text"] = {tb, tb + txt.size()};
    if (role && !role->empty()) d.role = role;
    d.provenance = make_provenance(r, spans);
    e_.diagnoses.push_back(std::move(d));
    // A text that runs to the end of the row may continue on the next row ("... of left" / "lower
    // extremity").
    diagnosis_open_ = text_end == t.size() || code_below ? std::optional<std::size_t>(e_.diagnoses.size() - 1)
                                                         : std::nullopt;
    diagnosis_code_below_ = code_below;
    return true;
  }

  // The rest of a wrapped diagnosis: the row right under it, starting with a lower-case word, with no code,
  // number or list marker, and no wider than the line it continues.
  bool diagnosis_continuation(const std::vector<RowView>& rows, std::size_t i) {
    if (!diagnosis_open_ || i == 0) return false;
    const RowView& r = rows[i];
    const RowView& prev = rows[i - 1];
    std::string t = r.text;
    Diagnosis& d = e_.diagnoses[*diagnosis_open_];
    if (diagnosis_code_below_) {
      // The code of a label that ended the row above: a row of one code. OCR reads an S as "$".
      diagnosis_code_below_ = false;
      static const std::regex code_row(R"(^\s*([A-Z$][0-9][0-9AB](?:\.[0-9A-Z]{1,4})?)\s*$)");
      std::smatch km;
      if (d.icd10 || r.page != prev.page || r.box.y0 - prev.box.y1 > 0.8 * std::max(prev.height, 1.0) ||
          !std::regex_match(t, km, code_row))
        return false;
      std::string code = km[1].str();
      if (code[0] == '$') code[0] = 'S';
      d.icd10 = code;
      if (d.provenance) {
        if (auto b = r.box_of({static_cast<std::size_t>(km.position(1)),
                               static_cast<std::size_t>(km.position(1) + km.length(1))}))
          d.provenance->fields["icd10"] = round_box(*b);
      }
      diagnosis_open_.reset();
      return true;
    }
    // The code may close the continued line in a cell of its own ("osteopenia.  ICD-10: S72.001A").
    static const std::regex code_cell(
        R"(  (?:(?:[|!]+I?|I)CD-?10(?:-CM)?:?\s*|\()([A-Z][0-9][0-9AB](?:\.[0-9A-Z]{1,4})?)\)?\s*$)");
    std::smatch cm;
    std::optional<std::pair<std::string, Span>> code;
    std::size_t cells = r.cells.size();
    if (!d.icd10 && std::regex_search(t, cm, code_cell)) {
      code = std::make_pair(cm[1].str(), Span{static_cast<std::size_t>(cm.position(1)),
                                              static_cast<std::size_t>(cm.position(1) + cm.length(1))});
      t = t.substr(0, cm.position(0));
      --cells;
    }
    if (t.empty() || !std::islower(static_cast<unsigned char>(t[0])) || has_digit(t) || skip_marker(t) > 0 ||
        t.size() > 60 || cells != 1 || r.page != prev.page)
      return false;
    if (r.box.y0 - prev.box.y1 > 0.8 * std::max(prev.height, 1.0)) return false;
    if (code) {
      d.icd10 = code->first;
      if (d.provenance)
        if (auto b = r.box_of(code->second)) d.provenance->fields["icd10"] = round_box(*b);
    }
    std::string extra = t;
    std::size_t dash = extra.rfind(" - ");
    if (dash != std::string::npos) {
      auto it = v_.diagnosis_status.find(to_lower(trim(extra.substr(dash + 3))));
      if (it != v_.diagnosis_status.end() && !d.status) {
        d.status = it->second;
        extra = extra.substr(0, dash);
      }
    }
    d.text += " " + trim(extra);
    diagnosis_open_.reset();
    return true;
  }

  // ---------------------------------------------------------------------------------------- procedures
  bool procedure(const RowView& r) {
    auto f = find_longest(r.text, v_.procedures);
    if (!f) return false;
    std::string name = r.text.substr(f->second.first, f->second.second - f->second.first);
    if (seen_procedures_.count(to_lower(name))) return true;
    seen_procedures_.insert(to_lower(name));
    Procedure p;
    p.name = name;
    std::map<std::string, Span> spans{{"name", f->second}};
    Span ds;
    if (auto d = normalise_date(r.text.substr(f->second.second), false, &ds)) {
      p.date = d;
      spans["date"] = {f->second.second + ds.first, f->second.second + ds.second};
    }
    p.provenance = make_provenance(r, spans);
    e_.procedures.push_back(std::move(p));
    last_procedure_ = e_.procedures.size() - 1;
    // A study reported in a paragraph of its own: "24-hour Holter monitor: <findings> Impression: <...>",
    // possibly wrapped over the next rows.
    study_open_.reset();
    if (f->second.first == skip_marker(r.text) && f->second.second < r.text.size() &&
        r.text[f->second.second] == ':') {
      study_open_ = StudyOpen{*last_procedure_, false};
      study_text(r, f->second.second + 1);
    }
    return true;
  }
  // Adds the text of `r` from `from` to the open study's findings, switching to its impression after an
  // "Impression:" label.
  void study_text(const RowView& r, std::size_t from) {
    static const std::regex label(R"((?:^|\s)Impression:\s*)", std::regex::icase);
    std::size_t b = from;
    while (b < r.text.size()) {
      std::smatch m;
      const std::string rest = r.text.substr(b);
      const bool found = std::regex_search(rest, m, label);
      const std::size_t e = found ? b + static_cast<std::size_t>(m.position(0)) : r.text.size();
      append_study(r, {b, e}, study_open_->impression ? "impression" : "findings");
      if (!found) break;
      study_open_->impression = true;
      b = e + static_cast<std::size_t>(m.length(0));
    }
  }
  void append_study(const RowView& r, Span sp, const std::string& field) {
    while (sp.first < sp.second && r.text[sp.first] == ' ') ++sp.first;
    while (sp.second > sp.first && r.text[sp.second - 1] == ' ') --sp.second;
    if (sp.first >= sp.second) return;
    Procedure& p = e_.procedures[study_open_->item];
    std::optional<std::string>& slot = field == "findings" ? p.findings : p.impression;
    const std::string t = r.text.substr(sp.first, sp.second - sp.first);
    if (!slot)
      slot = t;
    else if (slot->size() + t.size() < 3900)
      *slot += " " + t;
    if (!p.provenance) return;
    if (auto b = r.box_of(sp)) {
      auto it = p.provenance->fields.find(field);
      if (it == p.provenance->fields.end())
        p.provenance->fields[field] = round_box(*b);
      else
        it->second = round_box({std::min(it->second.x0, b->x0), std::min(it->second.y0, b->y0),
                                std::max(it->second.x1, b->x1), std::max(it->second.y1, b->y1)});
    }
  }
  // The next row of an open study paragraph: set tight under the row before, on the same page, and not the
  // start of another study.
  bool study_continuation(const std::vector<RowView>& rows, std::size_t i) {
    if (!study_open_ || i == 0) return false;
    const RowView& r = rows[i];
    const RowView& prev = rows[i - 1];
    if (r.page != prev.page || r.box.y0 - prev.box.y1 > 0.8 * std::max(prev.height, 1.0)) {
      study_open_.reset();
      return false;
    }
    if (auto f = find_longest(r.text, v_.procedures); f && f->second.first == skip_marker(r.text) &&
                                                      f->second.second < r.text.size() &&
                                                      r.text[f->second.second] == ':') {
      study_open_.reset();
      return false;
    }
    study_text(r, 0);
    return true;
  }
  void procedure_text(const RowView& r) {
    if (!last_procedure_) return;
    Procedure& p = e_.procedures[*last_procedure_];
    std::optional<std::string>& slot = section_ == "findings" ? p.findings : p.impression;
    std::string t = r.text.substr(skip_marker(r.text));
    if (!slot)
      slot = t;
    else if (slot->size() + t.size() < 3900)
      *slot += " " + t;
    if (p.provenance) {
      auto b = r.box_of({0, r.text.size()});
      if (b) {
        auto& f = p.provenance->fields[section_];
        if (f.x1 == 0)
          f = round_box(*b);
        else
          f = round_box(
              {std::min(f.x0, b->x0), std::min(f.y0, b->y0), std::max(f.x1, b->x1), std::max(f.y1, b->y1)});
      }
    }
  }

  // ------------------------------------------------------------------------------------- immunizations
  bool immunization(const RowView& r) {
    auto f = find_longest(r.text, v_.vaccines);
    std::size_t cell0 = 0;
    std::optional<std::size_t> name_end;  // where the name ends when a date follows it in its cell
    if (!f || f->second.first > 6) {
      // In an immunization table, a row whose first cell is text and that holds a date is a vaccine given,
      // even when the name is not in the vocabulary or wraps before the part that is.
      if (section_ != "immunizations" || r.cells.size() < 3) return false;
      const std::string c0 = r.cell(0);
      if (std::count_if(c0.begin(), c0.end(),
                        [](char ch) { return std::isalpha(static_cast<unsigned char>(ch)); }) < 3)
        return false;
      bool dated = false;
      for (std::size_t c = 1; c < r.cells.size() && !dated; ++c)
        dated = normalise_date(r.cell(c), false).has_value();
      // The date run into the name's cell ("Pneumococcal polysaccharide 2015-10-01").
      Span ds;
      if (!dated && normalise_date(c0, false, &ds) && ds.second == c0.size() && ds.first > 3) {
        dated = true;
        std::size_t e = r.cells[0].first + ds.first;
        while (e > r.cells[0].first && r.text[e - 1] == ' ') --e;
        name_end = e;
      }
      if (!dated) return false;
    } else {
      // The whole cell that holds the name is the vaccine as printed.
      for (std::size_t c = 0; c < r.cells.size(); ++c)
        if (r.cells[c].first <= f->second.first && f->second.first < r.cells[c].second) cell0 = c;
    }
    Immunization im;
    std::map<std::string, Span> spans;
    im.vaccine = trim(r.cell(cell0));
    std::string vaccine_raw = r.cell(cell0);
    spans["vaccine"] = r.cells[cell0];
    if (name_end) {
      const std::size_t b = r.cells[cell0].first;
      im.vaccine = trim(r.text.substr(b, *name_end - b));
      vaccine_raw = r.text.substr(b, *name_end - b);
      spans["vaccine"] = {b, *name_end};
      Span ds;
      const std::string rest = r.text.substr(*name_end, r.cells[cell0].second - *name_end);
      if (auto d = normalise_date(rest, false, &ds)) {
        im.date = d;
        spans["date"] = {*name_end + ds.first, *name_end + ds.second};
      }
    }
    // A short name whose space OCR lost ("HepA" for "Hep A"): the vocabulary's spelling when the two differ
    // only in spaces and letter case.
    {
      auto squeeze = [](const std::string& t) {
        std::string o;
        for (char ch : t)
          if (ch != ' ') o += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        return o;
      };
      const std::string sq = squeeze(im.vaccine);
      for (const auto& name : v_.vaccines)
        if (name != im.vaccine && squeeze(name) == sq) {
          im.vaccine = name;
          break;
        }
    }
    double vaccine_x0 = r.box.x1;
    for (const auto& [sp, w] : r.words)
      if (sp.first >= r.cells[cell0].first && sp.second <= r.cells[cell0].second)
        vaccine_x0 = std::min(vaccine_x0, w->box.x0);
    static const std::regex lot(R"(^[A-Z0-9]{3,}[0-9][A-Z0-9]*$)");
    for (std::size_t c = 0; c < r.cells.size(); ++c) {
      if (c == cell0) continue;
      std::string t = trim(r.cell(c));
      // A speck or a rule end that OCR put before the cell's text ("=IM", "=MWK48357").
      std::size_t lead = 0;
      while (lead < t.size() && (t[lead] == '=' || t[lead] == '~' || t[lead] == '|')) ++lead;
      t = t.substr(lead);
      Span cell_span{r.cells[c].first + lead, r.cells[c].second};
      if (t.empty()) continue;
      Span ds;
      if (!im.date) {
        if (auto d = normalise_date(t, false, &ds)) {
          im.date = d;
          spans["date"] = {r.cells[c].first + ds.first, r.cells[c].first + ds.second};
          continue;
        }
      }
      if (!im.dose_number && t.size() <= 2 && std::all_of(t.begin(), t.end(), ::isdigit)) {
        int n = std::stoi(t);
        if (n >= 1 && n <= 20) {
          im.dose_number = n;
          spans["dose_number"] = r.cells[c];
        }
        continue;
      }
      if (!im.route) {
        // A route column holds an abbreviation alone; OCR may lower its case ("sc").
        auto it = std::find_if(v_.route_abbr.begin(), v_.route_abbr.end(), [&](const std::string& a) {
          return a.size() == t.size() && to_lower(a) == to_lower(t);
        });
        if (it != v_.route_abbr.end()) {
          im.route = *it;
          spans["route"] = cell_span;
          continue;
        }
      }
      std::string lt = to_lower(t);
      if (!im.site && (lt.find("deltoid") != std::string::npos || lt.find("thigh") != std::string::npos ||
                       lt.find("arm") != std::string::npos || lt.find("gluteal") != std::string::npos ||
                       lt.find("upper") != std::string::npos)) {
        // The side glued to the site ("Rdeltoid"): "R deltoid".
        if (t.size() > 4 && (t[0] == 'L' || t[0] == 'R') && std::islower(static_cast<unsigned char>(t[1])))
          t.insert(1, " ");
        // A site of the vaccine vocabulary OCR misread by a letter or a space ("R upperarm").
        if (auto n = nearest_term(t, v_.vaccine_sites)) t = *n;
        im.site = t;
        spans["site"] = cell_span;
        continue;
      }
      if (!im.lot) {
        // A lot number in capitals and digits; OCR may lower the case of a letter ("Jw441190").
        std::string up = t;
        for (char& ch : up) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
        const auto digits = std::count_if(
            t.begin(), t.end(), [](char ch) { return std::isdigit(static_cast<unsigned char>(ch)); });
        if (std::regex_match(t, lot) || (digits >= 3 && std::regex_match(up, lot))) {
          im.lot = fix_lot(up);
          spans["lot"] = cell_span;
          continue;
        }
      }
      if (!im.manufacturer && !has_digit(t) && t.size() > 3) {
        // A manufacturer of the vaccine vocabulary misread by a letter or two ("GlaxoSmithKlin").
        if (auto n = nearest_term(t, v_.vaccine_manufacturers)) t = *n;
        im.manufacturer = t;
        spans["manufacturer"] = r.cells[c];
      }
    }
    im.provenance = make_provenance(r, spans);
    e_.immunizations.push_back(std::move(im));
    immunization_open_ = ImmunizationOpen{e_.immunizations.size() - 1, vaccine_x0, vaccine_raw};
    return true;
  }

  // A vaccine name wrapped in its table cell ("Meningococcal conjugate vaccine" / "(MenACWY)"): the row
  // right under the item, with no date, whose first word starts where the vaccine name starts.
  bool immunization_continuation(const std::vector<RowView>& rows, std::size_t i) {
    if (!immunization_open_ || i == 0) return false;
    const RowView& r = rows[i];
    const RowView& prev = rows[i - 1];
    if (r.cells.empty() || r.words.empty() || r.page != prev.page) return false;
    if (r.box.y0 - prev.box.y1 > 0.8 * std::max(prev.height, 1.0)) return false;
    for (std::size_t c = 0; c < r.cells.size(); ++c)
      if (normalise_date(r.cell(c), false, nullptr)) return false;
    Immunization& im = e_.immunizations[immunization_open_->item];
    if (!im.provenance) return false;
    // Every cell of the row lies under a wrapped cell of the item (vaccine, lot, site), or right of them
    // all (the "Given by" column); the vaccine name's part starts where the name starts.
    const double slack = std::max(prev.height, 8.0);
    double right = 0;
    for (const auto& [f, b] : im.provenance->fields) right = std::max(right, b.x1);
    std::vector<std::pair<std::string, std::size_t>> parts;  // field, cell
    for (std::size_t c = 0; c < r.cells.size(); ++c) {
      auto cb = r.box_of(r.cells[c]);
      if (!cb) return false;
      std::string field;
      for (const char* f : {"vaccine", "lot", "site"}) {
        auto it = im.provenance->fields.find(f);
        if (it == im.provenance->fields.end()) continue;
        const BBox& fb = it->second;
        if (cb->x0 < fb.x1 && cb->x1 > fb.x0 &&
            (std::string(f) != "vaccine" || std::abs(cb->x0 - fb.x0) <= slack))
          field = f;
      }
      if (field.empty()) {
        if (cb->x0 >= right) continue;
        return false;
      }
      std::string t = trim(r.cell(c));
      if (t.empty() || t.size() > 40) return false;
      parts.push_back({field, c});
    }
    if (parts.empty()) return false;
    for (const auto& [field, c] : parts) {
      std::string t = trim(r.cell(c));
      if (field == "vaccine") {
        // A name wrapped after a hyphen ("20-" / "valent") joins without a space; the punctuation before
        // the wrap stays ("quadrivalent," / "inactivated").
        std::string head = immunization_open_->raw;
        while (!head.empty() && head.back() == ' ') head.pop_back();
        im.vaccine = head + (!head.empty() && head.back() == '-' ? "" : " ") + t;
      } else if (field == "lot") {
        if (!std::all_of(t.begin(), t.end(),
                         [](char ch) { return std::isalnum(static_cast<unsigned char>(ch)); }))
          continue;
        im.lot = fix_lot(*im.lot + t);
      } else if (im.site) {
        *im.site += " " + t;
      }
      if (auto b = r.box_of(r.cells[c])) {
        BBox& fb = im.provenance->fields[field];
        fb = round_box(
            {std::min(fb.x0, b->x0), std::min(fb.y0, b->y0), std::max(fb.x1, b->x1), std::max(fb.y1, b->y1)});
      }
    }
    immunization_open_.reset();
    return true;
  }

  // Lot numbers run letters then digits: a letter O right before a digit, after a letter or a digit, is the
  // digit zero that OCR read as a letter ("YLO61" -> "YL061", "NROOO6" -> "NR0006").
  static std::string fix_lot(std::string t) {
    for (std::size_t k = t.size() >= 2 ? t.size() - 2 : 0; k >= 1 && k + 1 < t.size(); --k)
      if (t[k] == 'O' && std::isdigit(static_cast<unsigned char>(t[k + 1])) &&
          std::isalnum(static_cast<unsigned char>(t[k - 1])))
        t[k] = '0';
    return t;
  }

  // ---------------------------------------------------------------------------------------------- labs
  // Labs quoted in prose: "... notable for Glucose 281 mg/dL (H *) and Sodium 162 mmol/L (CRIT HIGH)".
  bool prose_labs(const RowView& r) {
    static const std::regex after(
        R"(^:?\s+([<>]?\d+(?:\.\d+)?)\s*([A-Za-z%/^0-9.]*/[A-Za-z0-9.^]+|%)?(?:\s*\(([^()]{1,12})\))?)");
    bool any = false;
    std::size_t from = 0;
    while (from < r.text.size()) {
      auto f = find_longest(r.text, v_.lab_tests, from);
      if (!f) break;
      from = f->second.second;
      std::string rest = r.text.substr(f->second.second);
      std::smatch m;
      if (!std::regex_search(rest, m, after)) continue;
      Lab l;
      std::size_t base = f->second.second;
      l.test = r.text.substr(f->second.first, f->second.second - f->second.first);
      l.value = m[1].str();
      std::map<std::string, Span> spans{
          {"test", f->second}, {"value", {base + m.position(1), base + m.position(1) + m.length(1)}}};
      if (m[2].matched && m.length(2) > 0) {
        l.unit = m[2].str();
        spans["unit"] = {base + m.position(2), base + m.position(2) + m.length(2)};
      }
      if (m[3].matched) {
        if (auto fl = normalise_flag(m[3].str(), v_)) {
          l.flag = fl;
          spans["flag"] = {base + m.position(3), base + m.position(3) + m.length(3)};
        }
      }
      if (!l.unit && !l.flag) continue;  // a bare number after a test name is too weak
      l.provenance = make_provenance(r, spans);
      if (confident_value(r, spans["value"])) e_.labs.push_back(std::move(l));
      from = base + m.length(0);
      any = true;
    }
    return any;
  }

  // A results table whose header has a prior-result column ("Test / LOINC  Result  Prior 11/25/2024 ..."):
  // the header row sets the column; numbers under it are earlier results, never the row's value (when the
  // result column is lost, the prior one would otherwise be read as the result).
  bool prior_column_header(const RowView& r) {
    const std::string c0 = to_lower(r.cell(0));
    if (r.cells.size() < 3 || c0.rfind("test", 0) != 0 ||
        (c0.size() > 4 && std::isalpha(static_cast<unsigned char>(c0[4]))))
      return false;
    for (std::size_t c = 1; c < r.cells.size(); ++c) {
      if (to_lower(r.cell(c)).rfind("prior", 0) != 0) continue;
      auto b = r.box_of(r.cells[c]);
      if (!b) return false;
      prior_column_ = Column{r.page, b->x0, b->x1};
      return true;
    }
    prior_column_.reset();
    return false;
  }
  bool lab(const RowView& r) {
    if (prior_column_ && prior_column_->page == r.page) {
      RowView kept;
      kept.page = r.page;
      kept.box = r.box;
      kept.height = r.height;
      for (std::size_t c = 0; c < r.cells.size(); ++c) {
        auto b = r.box_of(r.cells[c]);
        if (c > 0 && b && (b->x0 + b->x1) / 2 > prior_column_->x0 - 10 &&
            (b->x0 + b->x1) / 2 < prior_column_->x1 + 10)
          continue;
        if (!kept.text.empty()) kept.text += "  ";
        const std::size_t cb = kept.text.size();
        for (const auto& [sp, w] : r.words)
          if (sp.first >= r.cells[c].first && sp.second <= r.cells[c].second)
            kept.words.push_back({{cb + sp.first - r.cells[c].first, cb + sp.second - r.cells[c].first}, w});
        kept.text += r.cell(c);
        kept.cells.push_back({cb, kept.text.size()});
      }
      if (kept.cells.size() != r.cells.size()) {
        merged_rows_.push_back(std::move(kept));
        return lab_cells(merged_rows_.back());
      }
    }
    return lab_cells(r);
  }
  bool lab_cells(const RowView& r) {
    // Side-by-side result tables ("Test Result Units Range | Test Result Units Range") print two results
    // in one row: the row is cut before each later cell that starts with a test name and is read piece
    // by piece.
    std::vector<std::size_t> cuts{skip_marker(r.text)};
    for (std::size_t c = 1; c < r.cells.size(); ++c) {
      std::string cell = r.cell(c);
      auto f = find_longest(cell, v_.lab_tests);
      if (!f || f->second.first != 0) continue;
      // A test name as a whole word that is followed by a value in the same or the next cell.
      const std::size_t e = f->second.second;
      if (e < cell.size() && std::isalnum(static_cast<unsigned char>(cell[e]))) continue;
      std::string after = trim(cell.substr(e));
      if (after.empty() && c + 1 < r.cells.size()) after = trim(r.cell(c + 1));
      if (after.empty()) continue;
      // A value follows: a number, or a qualitative result ("Urine Glucose  Negative").
      const std::string first = to_lower(after.substr(0, after.find(' ')));
      const bool qualitative = std::any_of(v_.lab_results.begin(), v_.lab_results.end(),
                                           [&](const std::string& q) { return to_lower(q) == first; });
      if (!std::isdigit(static_cast<unsigned char>(after[0])) && after[0] != '<' && after[0] != '>' &&
          !qualitative)
        continue;
      cuts.push_back(r.cells[c].first);
    }
    cuts.push_back(r.text.size());
    bool any = false;
    for (std::size_t k = 0; k + 1 < cuts.size(); ++k) {
      const std::size_t off = cuts[k];
      std::string piece = r.text.substr(off, cuts[k + 1] - off);
      while (!piece.empty() && piece.back() == ' ') piece.pop_back();
      auto p = parse_lab_row(piece, v_);
      if (!p) continue;
      for (auto& [name, sp] : p->spans) sp = {sp.first + off, sp.second + off};
      if (!p->lab.flag && o_.derive_flags && p->lab.reference_range)
        if (auto f = derive_flag(p->lab.value, *p->lab.reference_range)) p->lab.flag = *f;  // no "flag" box
      // Only a printed code belongs in the extraction; the FHIR export adds the codes of known tests.
      p->lab.loinc = p->printed_loinc;
      p->lab.provenance = make_provenance(r, p->spans);
      any = true;  // a row read as a lab stays one even when its value is left out below
      if (confident_value(r, p->spans["value"])) e_.labs.push_back(std::move(p->lab));
    }
    return any || prose_labs(r);
  }

  // A unit wrapped in its table cell ("mL/min/" over "1.73m2"): the next row is one short token under the
  // unit, which completes the unit of the row's last lab. Returns the last row used.
  std::size_t lab_unit_continuation(const std::vector<RowView>& rows, std::size_t i, std::size_t first_lab) {
    if (e_.labs.size() <= first_lab || i + 1 >= rows.size()) return i;
    Lab& l = e_.labs.back();
    if (!l.unit || l.unit->empty() || l.unit->back() != '/' || !l.provenance) return i;
    const RowView& n = rows[i + 1];
    const auto ub = l.provenance->fields.find("unit");
    if (ub == l.provenance->fields.end() || n.cells.size() != 1 || n.page != rows[i].page ||
        n.text.find(' ') != std::string::npos || n.text.size() > 12 ||
        n.box.y0 - rows[i].box.y1 > std::max(rows[i].height, 8.0))
      return i;
    if (std::abs(n.box.x0 - ub->second.x0) > std::max(rows[i].height, 8.0)) return i;
    *l.unit += n.text;
    BBox& b = ub->second;
    b = round_box({std::min(b.x0, n.box.x0), std::min(b.y0, n.box.y0), std::max(b.x1, n.box.x1),
                   std::max(b.y1, n.box.y1)});
    return i + 1;
  }

  // -------------------------------------------------------------------------------------------- vitals
  bool vitals(const RowView& r) {
    bool any = false;
    static const std::regex val(
        R"(^\s*:?\s*(\d{2,3}/\d{2,3}|\d+(?:\.\d+)?)(/10\b)?\s*(°F|°C|F\b|C\b|mmHg|bpm|breaths/min|/min|%|kg/m2|kg/m²|kg|lbs?|cm|in)?)");
    for (std::size_t c = 0; c < r.cells.size(); ++c) {
      std::string t = r.cell(c);
      auto f = find_longest(t, v_.vitals);
      if (!f || f->second.first != 0) continue;
      std::string rest = t.substr(f->second.second);
      std::smatch m;
      if (!std::regex_search(rest, m, val)) continue;
      Vital vt;
      std::size_t base = r.cells[c].first + f->second.second;
      vt.name = t.substr(0, f->second.second);
      vt.value = m[1].str();
      std::map<std::string, Span> spans{
          {"name", {r.cells[c].first, base}},
          {"value", {base + m.position(1), base + m.position(1) + m.length(1)}}};
      if (m[3].matched) {
        vt.unit = m[3].str();
        spans["unit"] = {base + m.position(3), base + m.position(3) + m.length(3)};
      }
      if (vitals_time_) vt.time = vitals_time_->first;  // its box is on the row above, added below
      vt.provenance = make_provenance(r, spans);
      if (vitals_time_ && vt.provenance) vt.provenance->fields["time"] = vitals_time_->second;
      any = true;
      if (confident_value(r, spans["value"])) e_.vitals.push_back(std::move(vt));
    }
    return any;
  }

  // ------------------------------------------------------------------------------------------ medications
  bool is_sig_continuation(const RowView& r) const {
    static const std::vector<std::string> starts = {
        "sig", "disp", "dispense", "qty", "quantity", "refills", "take", "directions", "instructions"};
    std::string l = to_lower(r.text);
    for (const auto& s : starts)
      if (l.compare(0, s.size(), s) == 0 &&
          (l.size() == s.size() || !std::isalpha(static_cast<unsigned char>(l[s.size()]))))
        return true;
    return false;
  }
  // The header of a medication table that has an indication column ("Medication  Dose  Route  Frequency
  // Indication  Last Dose  Action"): the column's extent is kept for the rows below.
  bool medication_table_header(const RowView& r) {
    if (r.cells.size() < 3) return false;
    auto is = [&](const std::string& kind, const std::string& cell) {
      auto it = v_.medication_columns.find(kind);
      if (it == v_.medication_columns.end()) return false;
      std::string t = to_lower(trim(cell));
      return std::find(it->second.begin(), it->second.end(), t) != it->second.end();
    };
    if (!is("name", r.cell(0))) return false;
    for (std::size_t c = 1; c < r.cells.size(); ++c)
      if (is("indication", r.cell(c))) {
        auto b = r.box_of(r.cells[c]);
        if (!b) return false;
        indication_column_ = Column{r.page, b->x0, b->x1};
        return true;
      }
    return false;
  }
  // The cell of `r` under the indication column (it overlaps the header's extent most), if any.
  std::optional<std::size_t> indication_cell(const RowView& r, std::size_t first = 1) const {
    if (!indication_column_ || indication_column_->page != r.page) return std::nullopt;
    std::optional<std::size_t> best;
    double best_ov = 0;
    for (std::size_t c = first; c < r.cells.size(); ++c) {
      auto b = r.box_of(r.cells[c]);
      if (!b) continue;
      const double ov =
          std::min(b->x1, indication_column_->x1 + 20) - std::max(b->x0, indication_column_->x0 - 20);
      if (ov > best_ov && ov > 0.5 * (b->x1 - b->x0)) best_ov = ov, best = c;
    }
    return best;
  }

  std::size_t medication(const std::vector<RowView>& rows, std::size_t i) {
    const RowView& r = rows[i];
    std::size_t mk = skip_marker(r.text);
    auto f = find_longest(r.text, v_.drugs, mk);
    if (!f) return std::string::npos;
    bool in_section = section_ == "medications";
    if (!in_section && f->second.first > mk + 2) return std::string::npos;
    RowView block = r;
    std::size_t j = i;
    while (j + 1 < rows.size() && rows[j + 1].page == r.page && is_sig_continuation(rows[j + 1]) &&
           rows[j + 1].box.y0 - rows[j].box.y1 < 3 * std::max(r.height, 8.0)) {
      block.append(rows[j + 1]);
      ++j;
    }
    auto p = parse_medication(block.text, v_, std::nullopt);
    if (!p) return std::string::npos;
    // Outside a medication section, a drug name alone (e.g. in prose) is not an order.
    if (!in_section && !p->med.strength && !p->med.dose && !p->med.route) return std::string::npos;
    // Under an indication column the cell is the indication, and it may wrap onto the next row(s), which
    // then hold no drug and only cells right of the name ("iron deficiency" / "anemia  22:45").
    std::optional<BBox> wrapped_indication;
    if (auto c = indication_cell(r); c && !p->med.indication) {
      std::string t = trim(r.cell(*c));
      if (!t.empty() && std::isalpha(static_cast<unsigned char>(t[0])) &&
          !v_.status_words.count(to_lower(t))) {
        p->med.indication = t;
        p->spans["indication"] = r.cells[*c];
        while (j + 1 < rows.size() && rows[j + 1].page == r.page &&
               rows[j + 1].box.y0 - rows[j].box.y1 < std::max(r.height, 8.0) &&
               !find_longest(rows[j + 1].text, v_.drugs)) {
          const RowView& n = rows[j + 1];
          auto nb = n.box_of(n.cells[0]);
          auto c0 = r.box_of(r.cells[0]);
          auto nc = indication_cell(n, 0);
          if (!nb || !c0 || nb->x0 <= c0->x1 || !nc) break;
          std::string more = trim(n.cell(*nc));
          if (more.empty() || !std::isalpha(static_cast<unsigned char>(more[0]))) break;
          *p->med.indication += " " + more;
          if (auto b = n.box_of(n.cells[*nc]))
            wrapped_indication =
                wrapped_indication
                    ? BBox{std::min(wrapped_indication->x0, b->x0), std::min(wrapped_indication->y0, b->y0),
                           std::max(wrapped_indication->x1, b->x1), std::max(wrapped_indication->y1, b->y1)}
                    : *b;
          ++j;
        }
      }
    }
    p->med.provenance = make_provenance(block, p->spans);
    if (wrapped_indication && p->med.provenance) {
      BBox& f = p->med.provenance->fields["indication"];
      f = round_box({std::min(f.x0, wrapped_indication->x0), std::min(f.y0, wrapped_indication->y0),
                     std::max(f.x1, wrapped_indication->x1), std::max(f.y1, wrapped_indication->y1)});
    }
    e_.medications.push_back(std::move(p->med));
    return j;
  }

  // -------------------------------------------------------------------------------------------- followups
  // A list row that starts with a follow-up or order phrase of the vocabulary (a plan under a combined
  // "Assessment and Plan" heading).
  bool known_followup(const std::string& text) const {
    std::string t = text.substr(skip_marker(text));
    auto f = find_longest(t, v_.followups);
    return f && f->second.first == 0;
  }

  // The timing of a follow-up wrapped onto the next row ("... - immediately if" / "symptoms worsen"): one
  // short cell set tight under it, starting in lower case, with no list marker.
  bool followup_continuation(const RowView& r, const RowView& n) {
    Followup& fu = e_.followups.back();
    if (!fu.when || n.page != r.page || n.cells.size() != 1) return false;
    if (n.box.y0 - r.box.y1 > 0.8 * std::max(r.height, 1.0)) return false;
    const std::string t = trim(n.text);
    if (t.empty() || t.size() > 40 || !std::islower(static_cast<unsigned char>(t[0])) ||
        skip_marker(n.text) > 0)
      return false;
    *fu.when += " " + t;
    if (fu.provenance) {
      if (auto b = n.box_of({0, n.text.size()})) {
        BBox& w = fu.provenance->fields["when"];
        w = round_box(
            {std::min(w.x0, b->x0), std::min(w.y0, b->y0), std::max(w.x1, b->x1), std::max(w.y1, b->y1)});
      }
    }
    return true;
  }
  void followup(const RowView& r) {
    std::size_t mk = skip_marker(r.text);
    std::string t = r.text.substr(mk);
    if (t.size() < 4) return;
    // "text - when", or "text: when" (the timing after the last colon, when it is short).
    std::size_t dash = t.rfind(" - ");
    std::size_t sep = 3;
    if (dash == std::string::npos) {
      std::size_t colon = t.rfind(": ");
      if (colon != std::string::npos && colon > 0 && t.size() - colon - 2 <= 40) {
        dash = colon;
        sep = 2;
      }
    }
    Followup fu;
    std::map<std::string, Span> spans;
    if (dash != std::string::npos) {
      fu.text = trim(t.substr(0, dash));
      fu.when = trim(t.substr(dash + sep));
      spans["text"] = {mk, mk + dash};
      spans["when"] = {mk + dash + sep, r.text.size()};
    } else if (auto f = find_longest(t, v_.followups); f && f->second.first == 0) {
      fu.text = trim(t);
      spans["text"] = {mk, r.text.size()};
    } else {
      return;
    }
    if (fu.text.empty() || (fu.when && fu.when->empty())) return;
    if (fu.when && fu.when->empty()) fu.when.reset();
    fu.provenance = make_provenance(r, spans);
    e_.followups.push_back(std::move(fu));
  }

  void finish() {
    if (e_.patient && !e_.patient->name && !e_.patient->birth_date && !e_.patient->mrn && !e_.patient->sex)
      e_.patient.reset();
    if (e_.document_type == "other") {
      if (e_.labs.size() >= 4 && e_.medications.empty()) e_.document_type = "lab_results";
    }
  }
};

}  // namespace

namespace {

// Decimals of a plain number ("<0.5", "12", "3.90"); nothing when `s` is not one. `strict`: a leading zero
// before another digit ("09", "09.1", a misread) does not make a number.
std::optional<int> plain_number_decimals(std::string_view s, bool strict = false) {
  static const std::regex num(R"(^[<>]?\s*\d+(?:\.(\d+))?$)");
  static const std::regex strict_num(R"(^[<>]?\s*(?:0|[1-9]\d*)(?:\.(\d+))?$)");
  std::match_results<std::string_view::const_iterator> m;
  if (!std::regex_match(s.begin(), s.end(), m, strict ? strict_num : num)) return std::nullopt;
  return m[1].matched ? static_cast<int>(m.length(1)) : 0;
}

// Most decimals among the bounds of a printed numeric range; nothing when it is not one.
std::optional<int> range_decimals(std::string_view r) {
  static const std::regex rng(
      R"(^\s*-?(\d+(?:\.(\d+))?)\s*-\s*(\d+(?:\.(\d+))?)\s*$|^\s*[<>]=?\s*(\d+(?:\.(\d+))?)\s*$)");
  std::match_results<std::string_view::const_iterator> m;
  if (!std::regex_match(r.begin(), r.end(), m, rng)) return std::nullopt;
  int d = 0;
  for (int g : {2, 4, 6})
    if (m[g].matched) d = std::max(d, static_cast<int>(m.length(g)));
  return d;
}

}  // namespace

bool value_precision_conflicts(const Lab& lab) {
  if (!lab.reference_range) return false;
  const auto vd = plain_number_decimals(lab.value);
  const auto rd = range_decimals(*lab.reference_range);
  return vd && rd && *vd != *rd;
}

bool value_has_fewer_decimals_than_range(const Lab& lab) {
  if (!lab.reference_range) return false;
  const auto vd = plain_number_decimals(lab.value);
  const auto rd = range_decimals(*lab.reference_range);
  return vd && rd && *vd < *rd;
}

bool value_fits_range_precision(std::string_view value, std::string_view range) {
  const auto vd = plain_number_decimals(value, true);
  const auto rd = range_decimals(range);
  return vd && rd && *vd == *rd;
}

Extraction structure_document(const std::vector<OcrPage>& pages, const Vocabulary& vocab,
                              const StructureOptions& options) {
  Builder b(vocab, options);
  Extraction e = b.run(pages);
  check_values(e, vocab);
  return e;
}

}  // namespace mv::extract
