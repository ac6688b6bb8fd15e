#include "extract/structurer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <regex>
#include <set>

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
      if (!v.text.empty()) v.text += "  ";
      std::size_t cb = v.text.size();
      for (std::size_t k = 0; k < c.words.size(); ++k) {
        if (k) v.text += ' ';
        const OcrWord& w = p.words[c.words[k]];
        std::string t = w.text;
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
  static const std::regex marker(R"(^\s*(?:\d{1,2}[.)]|[•·*+\-–o»>e]|\[[ xX]\])\s+)");
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
bool page_furniture(const std::string& t) {
  static const std::regex page_of(R"(\bPage\s+\d+\s+of\s+\d+\b)", std::regex::icase);
  return std::regex_search(t, page_of);
}

bool has_digit(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
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
      for (const auto& r : p.rows) rows.push_back(RowView::of(p, r, v_.ocr_fixes));
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
  std::string section_;
  std::optional<std::size_t> diagnosis_open_;
  struct ImmunizationOpen {
    std::size_t item;
    double x0;  // left edge of the vaccine name
  };
  std::optional<ImmunizationOpen> immunization_open_;  // the diagnosis whose text may go on in the next row
  std::string doc_title_row_;
  std::optional<std::size_t> last_procedure_;
  std::set<std::string> seen_procedures_;
  struct Grid {
    std::vector<std::pair<double, std::string>> columns;  // x centre, HH:MM
    double first_x = 0;
  };
  std::optional<Grid> grid_;

  // ----------------------------------------------------------------------------------- header and type
  void header(const std::vector<RowView>& rows, const OcrPage& p) {
    // Document type from the title: the earliest of the top rows holding a title phrase.
    std::size_t limit = std::min<std::size_t>(rows.size(), 14);
    for (std::size_t i = 0; i < limit && e_.document_type == "other"; ++i) {
      std::size_t best_len = 0;
      for (const auto& [type, phrases] : v_.document_types)
        for (const auto& ph : phrases)
          if (ph.size() > best_len && find_phrase(rows[i].text, ph) != std::string::npos) {
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
    // Facility: the first prominent row near the top (its first cell; a title may share the row).
    std::vector<double> hs;
    for (const auto& r : rows) hs.push_back(r.height);
    std::sort(hs.begin(), hs.end());
    double body = hs.empty() ? 0 : hs[hs.size() / 2];
    for (std::size_t i = 0; i < std::min<std::size_t>(rows.size(), 6); ++i) {
      const RowView& r = rows[i];
      if (r.box.y0 > 0.15 * p.height) break;
      if (r.height < 1.25 * body || r.cells.empty()) continue;
      std::string c0 = r.cell(0);
      bool is_title = false;
      for (const auto& [type, phrases] : v_.document_types)
        for (const auto& ph : phrases)
          if (find_phrase(c0, ph) != std::string::npos) is_title = true;
      if (is_title || trim(c0).size() < 4 || has_digit(c0)) continue;
      auto& enc = encounter();
      enc.facility = trim(c0);
      auto prov = make_provenance(r, {{"facility", r.cells[0]}});
      add_field_box(enc.provenance, prov, "facility");
      // Department: the next left-aligned smaller row without digits that is not a title.
      for (std::size_t j = i + 1; j < std::min(rows.size(), i + 3); ++j) {
        const RowView& d = rows[j];
        if (d.cells.empty()) continue;
        std::string t = d.cell(0);
        bool title = false;
        for (const auto& [type, phrases] : v_.document_types)
          for (const auto& ph : phrases)
            if (find_phrase(t, ph) != std::string::npos) title = true;
        if (title || d.height > 1.25 * body) continue;
        if (has_digit(t) || std::abs(d.box.x0 - r.box.x0) > 40 || t.find(':') != std::string::npos) break;
        if (trim(t).size() < 3) break;
        enc.department = trim(t);
        add_field_box(enc.provenance, make_provenance(d, {{"department", d.cells[0]}}), "department");
        break;
      }
      break;
    }
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
        out.push_back({best_field, &r, {vb, r.cells[ci].second}});
      } else if (ci + 1 < r.cells.size() && c.back() == ':') {
        out.push_back({best_field, &r, r.cells[ci + 1]});
        ++ci;
      } else if (ri + 1 < rows.size()) {
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
      out = w;
      sp = {kv.value.first, kv.value.first + val.find(' ')};
      if (val.find(' ') == std::string::npos) sp = kv.value;
    } else {
      std::string t = trim(val);
      if (t.empty() || t.size() > 200) return;
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
      section_ = *h;
      grid_.reset();
      return i;
    }
    if (grid_header(r)) return i;
    if (grid_ && grid_row(r)) return i;
    std::string lower = to_lower(r.text);
    // Allergies line: "Allergies: A - rash (mild); B - hives" or "Allergies: NKDA".
    for (const auto& h : v_.sections.at("allergies")) {
      if (lower.compare(0, h.size(), h) == 0 && lower.size() > h.size() + 1 &&
          (lower[h.size()] == ':' || lower.substr(h.size(), 2) == " :")) {
        std::size_t b = lower.find(':') + 1;
        allergy_list(r, b);
        return i;
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
      if (lab(r)) return i;
      if (vitals(r)) return i;
    }
    if (section_ != "allergies" && section_ != "labs" && section_ != "vitals") {
      std::size_t j = medication(rows, i);
      if (j != std::string::npos) return j;
    }
    if (section_ == "followups" || (skip_marker(r.text) > 0 && known_followup(r.text))) followup(r);
    if (section_ == "vitals") vitals(r);
    return i;
  }

  // ------------------------------------------------------------------------------------------ time grids
  // A header row of times ("Parameter 06:00 07:00 ...") starts a grid: each later row is a vital or lab with
  // its unit in parentheses, one value per time column (with a printed flag), and maybe a reference range.
  bool grid_header(const RowView& r) {
    static const std::regex hhmm(R"(^([01]?\d|2[0-3]):[0-5]\d$)");
    Grid g;
    for (std::size_t c = 0; c < r.cells.size(); ++c) {
      for (std::size_t k = 0; k < r.words.size(); ++k) {
        const auto& [sp, w] = r.words[k];
        if (sp.first < r.cells[c].first || sp.second > r.cells[c].second) continue;
        std::string t = r.text.substr(sp.first, sp.second - sp.first);
        if (!std::regex_match(t, hhmm)) continue;
        if (t.size() == 4) t = "0" + t;
        double x1 = w->box.x1;
        // "12:00 AM", "2:00 PM": a 12-hour clock, the marker in the next word of the cell.
        if (k + 1 < r.words.size() && r.words[k + 1].first.second <= r.cells[c].second) {
          std::string next = to_lower(r.text.substr(
              r.words[k + 1].first.first, r.words[k + 1].first.second - r.words[k + 1].first.first));
          if (next == "am" || next == "pm") {
            int h = std::stoi(t.substr(0, 2));
            if (h >= 1 && h <= 12) h = next == "pm" ? (h % 12) + 12 : h % 12;
            t = fmt::format("{:02d}{}", h, t.substr(2));
            x1 = r.words[k + 1].second->box.x1;
          }
        }
        g.columns.push_back({(w->box.x0 + x1) / 2, t});
      }
    }
    if (g.columns.size() < 2) return false;
    g.first_x = r.box.x0;
    grid_ = g;
    return true;
  }
  bool grid_row(const RowView& r) {
    if (r.cells.size() < 2) return false;
    std::string c0 = r.cell(0);
    static const std::regex name_unit(R"(^(.*?)\s*\(([^()]+)\)\s*$)");
    std::smatch m;
    std::string name = c0, unit;
    Span name_span = r.cells[0], unit_span{0, 0};
    std::size_t value_cell = 1;
    if (std::regex_match(c0, m, name_unit)) {
      name = m[1].str();
      unit = m[2].str();
      name_span = {r.cells[0].first, r.cells[0].first + m.length(1)};
      unit_span = {r.cells[0].first + m.position(2), r.cells[0].first + m.position(2) + m.length(2)};
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
      for (const auto& [x, tm] : grid_->columns)
        if (std::abs(x - cx) < best) best = std::abs(x - cx), time = tm;
      double pitch =
          grid_->columns.size() > 1 ? std::abs(grid_->columns[1].first - grid_->columns[0].first) : 100;
      if (best > 0.45 * pitch) {
        if (std::regex_match(t, range_re)) {
          range = t;
          range_span = r.cells[c];
        }
        continue;
      }
      Val v;
      std::size_t sp = t.find(' ');
      v.value = sp == std::string::npos ? t : t.substr(0, sp);
      v.vs = {r.cells[c].first, r.cells[c].first + v.value.size()};
      v.time = time;
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
      vals.push_back(v);
    }
    if (vals.empty()) return false;
    for (const auto& v : vals) {
      std::map<std::string, Span> spans{{"value", v.vs}};
      std::string when = date.empty() ? "" : date + "T" + v.time;
      if (is_lab && !is_vital) {
        Lab l;
        l.test = name;
        l.value = v.value;
        spans["test"] = name_span;
        if (!unit.empty()) l.unit = unit, spans["unit"] = unit_span;
        if (range) l.reference_range = range, spans["reference_range"] = range_span;
        if (v.flag)
          l.flag = v.flag, spans["flag"] = v.fs;
        else if (o_.derive_flags && range)
          if (auto f = derive_flag(v.value, *range)) l.flag = *f;
        if (!when.empty()) l.time = when;
        l.provenance = make_provenance(r, spans);
        e_.labs.push_back(std::move(l));
      } else {
        Vital x;
        x.name = name;
        x.value = v.value;
        spans["name"] = name_span;
        if (!unit.empty()) x.unit = unit, spans["unit"] = unit_span;
        if (!when.empty()) x.time = when;
        x.provenance = make_provenance(r, spans);
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
      if (e < lower.size() && lower[e] == ':') {
        role = rl;
        labelled = true;
        start = e + 1;
        while (start < t.size() && t[start] == ' ') ++start;
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
    bool has_code = std::regex_search(sub, m, icd_paren) ||
                    (listy && (std::regex_search(sub, m, icd_lead) || std::regex_search(sub, m, icd_cell)));
    // Tesseract often reads the letter I of a code as the digit 1 ("(135.0)", "148.91 Atrial ...", "110").
    // Where a diagnosis is expected (a diagnosis section or a role label) such a code is read as I..
    bool code_fixed = false;
    if (!has_code && (section_ == "diagnoses" || section_ == "impression" || labelled)) {
      static const std::regex i_paren(R"(\((1[0-9]{2}(?:\.[0-9A-Z]{1,4})?)\))");
      static const std::regex i_lead(R"(^(1[0-9]{2}(?:\.[0-9A-Z]{1,4})?)(?=\s+[A-Za-z]))");
      has_code = std::regex_search(sub, m, i_paren) || std::regex_search(sub, m, i_lead);
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
      if (code_fixed) (*d.icd10)[0] = 'I';
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
    diagnosis_open_ =
        text_end == t.size() ? std::optional<std::size_t>(e_.diagnoses.size() - 1) : std::nullopt;
    return true;
  }

  // The rest of a wrapped diagnosis: the row right under it, starting with a lower-case word, with no code,
  // number or list marker, and no wider than the line it continues.
  bool diagnosis_continuation(const std::vector<RowView>& rows, std::size_t i) {
    if (!diagnosis_open_ || i == 0) return false;
    const RowView& r = rows[i];
    const RowView& prev = rows[i - 1];
    const std::string& t = r.text;
    if (t.empty() || !std::islower(static_cast<unsigned char>(t[0])) || has_digit(t) || skip_marker(t) > 0 ||
        t.size() > 60 || r.cells.size() != 1 || r.page != prev.page)
      return false;
    if (r.box.y0 - prev.box.y1 > 0.8 * std::max(prev.height, 1.0)) return false;
    Diagnosis& d = e_.diagnoses[*diagnosis_open_];
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
      if (!dated) return false;
    } else {
      // The whole cell that holds the name is the vaccine as printed.
      for (std::size_t c = 0; c < r.cells.size(); ++c)
        if (r.cells[c].first <= f->second.first && f->second.first < r.cells[c].second) cell0 = c;
    }
    Immunization im;
    std::map<std::string, Span> spans;
    im.vaccine = trim(r.cell(cell0));
    spans["vaccine"] = r.cells[cell0];
    double vaccine_x0 = r.box.x1;
    for (const auto& [sp, w] : r.words)
      if (sp.first >= r.cells[cell0].first && sp.second <= r.cells[cell0].second)
        vaccine_x0 = std::min(vaccine_x0, w->box.x0);
    static const std::regex lot(R"(^[A-Z0-9]{3,}[0-9][A-Z0-9]*$)");
    for (std::size_t c = 0; c < r.cells.size(); ++c) {
      if (c == cell0) continue;
      std::string t = trim(r.cell(c));
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
          spans["route"] = r.cells[c];
          continue;
        }
      }
      std::string lt = to_lower(t);
      if (!im.site && (lt.find("deltoid") != std::string::npos || lt.find("thigh") != std::string::npos ||
                       lt.find("arm") != std::string::npos || lt.find("gluteal") != std::string::npos)) {
        im.site = t;
        spans["site"] = r.cells[c];
        continue;
      }
      if (!im.lot && std::regex_match(t, lot)) {
        // Lot numbers run letters then digits: a letter O right before a digit, after a letter or a digit,
        // is the digit zero that OCR read as a letter ("YLO61" -> "YL061").
        for (std::size_t k = 1; k + 1 < t.size(); ++k)
          if (t[k] == 'O' && std::isdigit(static_cast<unsigned char>(t[k + 1])) &&
              std::isalnum(static_cast<unsigned char>(t[k - 1])))
            t[k] = '0';
        im.lot = t;
        spans["lot"] = r.cells[c];
        continue;
      }
      if (!im.manufacturer && !has_digit(t) && t.size() > 3) {
        im.manufacturer = t;
        spans["manufacturer"] = r.cells[c];
      }
    }
    im.provenance = make_provenance(r, spans);
    e_.immunizations.push_back(std::move(im));
    immunization_open_ = ImmunizationOpen{e_.immunizations.size() - 1, vaccine_x0};
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
    if (std::abs(r.words.front().second->box.x0 - immunization_open_->x0) > std::max(prev.height, 8.0))
      return false;
    for (std::size_t c = 0; c < r.cells.size(); ++c)
      if (normalise_date(r.cell(c), false, nullptr)) return false;
    std::string extra = trim(r.cell(0));
    if (extra.empty() || extra.size() > 40) return false;
    auto& vaccine = e_.immunizations[immunization_open_->item].vaccine;
    vaccine += " " + extra;
    immunization_open_.reset();
    return true;
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
      e_.labs.push_back(std::move(l));
      from = base + m.length(0);
      any = true;
    }
    return any;
  }

  bool lab(const RowView& r) {
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
      if (after.empty() ||
          (!std::isdigit(static_cast<unsigned char>(after[0])) && after[0] != '<' && after[0] != '>'))
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
      e_.labs.push_back(std::move(p->lab));
      any = true;
    }
    return any || prose_labs(r);
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
      vt.provenance = make_provenance(r, spans);
      e_.vitals.push_back(std::move(vt));
      any = true;
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
    p->med.provenance = make_provenance(block, p->spans);
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

Extraction structure_document(const std::vector<OcrPage>& pages, const Vocabulary& vocab,
                              const StructureOptions& options) {
  Builder b(vocab, options);
  return b.run(pages);
}

}  // namespace mv::extract
