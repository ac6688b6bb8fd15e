// Internal to the synth composers (synth_doc.cpp, synth_documents.cpp): the document under construction,
// its randomised style, and the layout parts every document type shares.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "data/synth_canvas.hpp"
#include "data/synth_case.hpp"
#include "extract/schema.hpp"

namespace mv::synth::detail {

using K = ItemKind;

struct Style {
  Font body, small, label, heading, title, table, mono;
  Rgb ink{0.08, 0.08, 0.10}, accent, muted{0.36, 0.36, 0.40}, rule{0.55, 0.55, 0.58}, shade;
  int date_style = 0, time_style = 0;
  int header_style = 0, heading_style = 0, table_style = 0, flag_style = 0, kv_style = 0;
  int word_variant = 0;  // which spelling of status words and separators this document uses
  bool last_first = false, long_sig = false, us_units = true;
  double gap = 12;  // vertical space between blocks
};

struct KV {
  std::string label;
  std::vector<Span> value;
};

struct Col {
  std::string header;
  double frac = 1;
  Align align = Align::kLeft;
};

using Cell = std::vector<Span>;
using Row = std::vector<Cell>;

class Doc {
 public:
  Doc(const std::string& type, const ClinicalTables& tables, const TextEngine& engine, Rng& rng);

  Canvas& cv() { return *canvas_; }
  std::unique_ptr<Canvas> release_canvas() { return std::move(canvas_); }

  // Spans. f() tags a span as the field `field` of item `index` of kind `kind`.
  static Span f(K kind, int index, const char* field, std::string text, bool bold = false);
  static Span s(std::string text, bool bold = false);
  // One printed text standing for fields of several items (a flowsheet row label, a column's time).
  static Span shared(std::string text, std::vector<FieldKey> keys, bool bold = false);

  template <typename T>
  static int push(std::vector<T>& list, T item) {
    list.push_back(std::move(item));
    return static_cast<int>(list.size()) - 1;
  }

  // Printed forms following the document's style.
  std::string date_text(const Date& d) const { return format_date(d, style.date_style); }
  std::string datetime_text(const Date& d) const {
    return format_date(d, style.date_style) + " " + format_time(d, style.time_style);
  }
  std::string time_text(const Date& d) const { return format_time(d, style.time_style); }
  std::string patient_name_text() const { return style.last_first ? patient.last_first() : patient.full(); }

  // Encounter fields: set the truth, return the tagged span.
  Span enc_date(const Date& d, bool with_time);
  Span enc_field(const char* field, const std::string& text);  // facility, department, provider
  Span enc_admission(const Date& d);
  Span enc_discharge(const Date& d);

  // Items printed in common ways; each sets the truth and returns the spans.
  // "Name strength [form]: sig". With sig_out, the sig goes there instead (prescriptions print it apart).
  std::vector<Span> med_line(const MedOrder& m, bool long_form, bool with_indication, bool name_bold = true,
                             std::vector<Span>* sig_out = nullptr);
  // Table cells Medication | Dose | Route | Frequency [| Status]; status empty: no status column.
  Row med_row(const MedOrder& m, const std::string& status);
  std::vector<Span> followup_line(const FollowupInfo& f);
  std::vector<Span> diagnosis_line(const DiagnosisInfo& d, const char* status, const char* role,
                                   bool code_first);
  std::vector<Span> vital_span(const VitalReading& v, bool abbr, const Date* time = nullptr);
  // Adds the lab to the truth; the cells Test | Result | Flag | Units | Range.
  Row lab_row(const LabResult& r, bool long_name, const Date* time = nullptr, bool with_loinc = false);
  std::vector<Span> allergy_line(const AllergyEntry& a, bool with_severity);
  std::string flag_text(const std::string& flag) const;

  // Layout parts.
  void letterhead(const std::string& title, const std::string& department = "");
  void patient_block(std::vector<KV> extra, bool with_sex = true, bool with_address = false);
  void kv_grid(const std::vector<KV>& items, int columns, int kv_style = -1);
  void span_grid(const std::vector<std::vector<Span>>& cells, int columns);
  void section(const std::string& title);
  void paragraph(const std::vector<Span>& spans, const Font* font = nullptr, double indent = 0);
  void bullets(const std::vector<std::vector<Span>>& items, bool numbered, const Font* font = nullptr);
  // A table that continues on the next page with its header repeated. header_cells (optional) replaces the
  // plain column titles with spans (tagged times of a flowsheet).
  void table(const std::vector<Col>& cols, const std::vector<Row>& rows, const Font* font = nullptr,
             const std::vector<int>& bold_rows = {}, const Row* header_cells = nullptr);
  void signature(const std::string& label, const std::vector<Span>& who, const std::string& when);
  void allergies_section(std::size_t max_allergies, bool as_table);

  // Footers and running headers, provenance from the measured boxes, terms/values, pages.
  void finish();

  const ClinicalTables& t;
  Rng& rng;
  CaseGen gen;
  Style style;
  extract::Extraction truth;
  Person patient;
  Facility facility;
  std::string facility_address, facility_phone;
  Date date;
  Date last_date;  // the latest date printed (the footer's print time comes after it)

 private:
  std::unique_ptr<Canvas> canvas_;
};

// Plural of a dose unit when the dose is not 1 ("2 tablets").
std::string unit_for_dose(const ClinicalTables& t, const std::string& unit, const std::string& dose,
                          bool abbreviate);
// Printed status words for medications and diagnoses, and the schema value they stand for.
std::pair<std::string, std::string> med_status_word(int variant, const std::string& status);

}  // namespace mv::synth::detail
