#include "eval/report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

namespace mv::eval {

using nlohmann::json;

namespace {

std::optional<double> mean(const std::vector<double>& v) {
  if (v.empty()) return std::nullopt;
  return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

json opt(const std::optional<double>& v) { return v ? json(*v) : json(nullptr); }

std::string pct(const std::optional<double>& v) { return v ? fmt::format("{:.3f}", *v) : "–"; }

std::string f3(double v) { return fmt::format("{:.3f}", v); }

std::optional<double> macro_f1(const std::map<std::string, Counts>& m) {
  std::vector<double> f;
  for (const auto& [k, c] : m)
    if (!c.empty()) f.push_back(c.f1());
  return mean(f);
}

}  // namespace

std::optional<double> GroupSummary::hallucination_rate() const {
  if (predicted_values == 0) return std::nullopt;
  return double(hallucinated_values) / double(predicted_values);
}

std::optional<double> GroupSummary::item_hallucination_rate() const {
  if (predicted_items == 0) return std::nullopt;
  return double(hallucinated_items) / double(predicted_items);
}

GroupSummary summarize(const std::vector<const DocumentScore*>& docs) {
  GroupSummary g;
  std::vector<double> terms, values, averages, doc_f1, secs;
  std::map<std::string, Counts> fields, exact, relaxed;
  for (const auto* d : docs) {
    ++g.documents;
    if (d->status == "missing") ++g.missing;
    if (d->status == "invalid") ++g.invalid;
    if (d->status == "failed") ++g.failed;
    if (auto t = d->original.term_accuracy()) terms.push_back(*t);
    if (auto v = d->original.value_accuracy()) values.push_back(*v);
    if (auto a = d->original.average()) averages.push_back(*a);
    for (const auto& [k, c] : d->fields) fields[k] += c;
    for (const auto& [k, c] : d->exact) exact[k] += c;
    for (const auto& [k, c] : d->relaxed) relaxed[k] += c;
    doc_f1.push_back(d->field_total().f1());
    g.predicted_values += d->predicted_values;
    g.hallucinated_values += d->hallucinated_values;
    g.predicted_items += d->predicted_items;
    g.hallucinated_items += d->hallucinated_items;
    if (d->seconds) secs.push_back(*d->seconds);
  }
  g.term_accuracy = mean(terms);
  g.value_accuracy = mean(values);
  g.original_average = mean(averages);
  for (const auto& [k, c] : fields) g.fields += c;
  for (const auto& [k, c] : exact) g.exact += c;
  for (const auto& [k, c] : relaxed) g.relaxed += c;
  g.fields_macro = macro_f1(fields);
  g.documents_macro = mean(doc_f1);
  g.exact_macro = macro_f1(exact);
  g.relaxed_macro = macro_f1(relaxed);
  if (!secs.empty()) {
    g.total_seconds = std::accumulate(secs.begin(), secs.end(), 0.0);
    g.mean_seconds = *g.total_seconds / static_cast<double>(secs.size());
  }
  return g;
}

EvaluationReport build_report(std::vector<DocumentScore> documents) {
  EvaluationReport r;
  r.documents = std::move(documents);
  std::vector<const DocumentScore*> all;
  std::map<std::string, std::vector<const DocumentScore*>> by_type, by_deg;
  for (const auto& d : r.documents) {
    all.push_back(&d);
    by_type[d.type.empty() ? "unknown" : d.type].push_back(&d);
    by_deg[d.degradation.empty() ? "unknown" : d.degradation].push_back(&d);
    for (const auto& [k, c] : d.fields) {
      r.fields[k] += c;
      r.sections[k.substr(0, k.find('.'))] += c;
    }
    for (const auto& [k, c] : d.exact) r.exact_by_section[k] += c;
    for (const auto& [k, c] : d.relaxed) r.relaxed_by_section[k] += c;
  }
  r.overall = summarize(all);
  for (const auto& [k, v] : by_type) r.by_type[k] = summarize(v);
  for (const auto& [k, v] : by_deg) r.by_degradation[k] = summarize(v);
  return r;
}

json to_json(const Counts& c) {
  return {{"tp", c.tp},           {"fp", c.fp},  {"fn", c.fn}, {"precision", c.precision()},
          {"recall", c.recall()}, {"f1", c.f1()}};
}

namespace {

json group_json(const GroupSummary& g) {
  return {
      {"documents", g.documents},
      {"missing", g.missing},
      {"invalid", g.invalid},
      {"failed", g.failed},
      {"original",
       {{"term_accuracy", opt(g.term_accuracy)},
        {"value_accuracy", opt(g.value_accuracy)},
        {"average", opt(g.original_average)}}},
      {"fields",
       {{"micro", to_json(g.fields)},
        {"macro_f1_fields", opt(g.fields_macro)},
        {"macro_f1_documents", opt(g.documents_macro)}}},
      {"entries",
       {{"exact", {{"micro", to_json(g.exact)}, {"macro_f1_sections", opt(g.exact_macro)}}},
        {"relaxed", {{"micro", to_json(g.relaxed)}, {"macro_f1_sections", opt(g.relaxed_macro)}}}}},
      {"hallucination",
       {{"predicted_values", g.predicted_values},
        {"hallucinated_values", g.hallucinated_values},
        {"rate", opt(g.hallucination_rate())},
        {"predicted_items", g.predicted_items},
        {"hallucinated_items", g.hallucinated_items},
        {"item_rate", opt(g.item_hallucination_rate())}}},
      {"seconds", {{"mean", opt(g.mean_seconds)}, {"total", opt(g.total_seconds)}}},
  };
}

}  // namespace

json report_json(const EvaluationReport& r) {
  json j;
  j["meta"] = r.meta;
  j["overall"] = group_json(r.overall);
  j["by_type"] = json::object();
  for (const auto& [k, g] : r.by_type) j["by_type"][k] = group_json(g);
  j["by_degradation"] = json::object();
  for (const auto& [k, g] : r.by_degradation) j["by_degradation"][k] = group_json(g);
  j["sections"] = json::object();
  for (const auto& s : scored_sections()) {
    json sj;
    auto it = r.sections.find(s);
    sj["fields"] = to_json(it == r.sections.end() ? Counts{} : it->second);
    if (auto e = r.exact_by_section.find(s); e != r.exact_by_section.end())
      sj["entries_exact"] = to_json(e->second);
    if (auto e = r.relaxed_by_section.find(s); e != r.relaxed_by_section.end())
      sj["entries_relaxed"] = to_json(e->second);
    j["sections"][s] = sj;
  }
  j["fields"] = json::object();
  for (const auto& s : scored_sections())
    for (const auto& f : section_fields(s)) {
      const std::string k = s + "." + f;
      auto it = r.fields.find(k);
      j["fields"][k] = to_json(it == r.fields.end() ? Counts{} : it->second);
    }
  j["failures"] = json::array();
  j["documents"] = json::array();
  for (const auto& d : r.documents) {
    if (d.status != "ok") j["failures"].push_back({{"id", d.id}, {"status", d.status}, {"error", d.error}});
    json dj = {{"id", d.id},
               {"type", d.type},
               {"degradation", d.degradation},
               {"status", d.status},
               {"original",
                {{"terms", d.original.terms_total},
                 {"terms_found", d.original.terms_found},
                 {"values", d.original.values_total},
                 {"values_found", d.original.values_found},
                 {"term_accuracy", opt(d.original.term_accuracy())},
                 {"value_accuracy", opt(d.original.value_accuracy())},
                 {"average", opt(d.original.average())}}},
               {"fields", to_json(d.field_total())},
               {"entries_exact", to_json(d.exact_total())},
               {"entries_relaxed", to_json(d.relaxed_total())},
               {"predicted_values", d.predicted_values},
               {"hallucinated_values", d.hallucinated_values},
               {"predicted_items", d.predicted_items},
               {"hallucinated_items", d.hallucinated_items},
               {"seconds", opt(d.seconds)}};
    if (!d.error.empty()) dj["error"] = d.error;
    j["documents"].push_back(std::move(dj));
  }
  j["unmatched_predictions"] = r.unmatched_predictions;
  return j;
}

std::string report_markdown(const EvaluationReport& r) {
  std::string md = "# MedVision evaluation\n\n";
  for (const char* k : {"truth", "predictions", "data", "backend", "model", "date", "machine"})
    if (r.meta.contains(k) && r.meta[k].is_string())
      md += fmt::format("- {}: {}\n", k, r.meta[k].get<std::string>());
  const auto& g = r.overall;
  md += fmt::format("- documents: {} (missing predictions {}, invalid {}, failed {})\n\n", g.documents,
                    g.missing, g.invalid, g.failed);

  md += "## Summary\n\n| metric | value |\n|---|---|\n";
  md += fmt::format("| original term accuracy | {} |\n", pct(g.term_accuracy));
  md += fmt::format("| original value accuracy | {} |\n", pct(g.value_accuracy));
  md += fmt::format("| original average | {} |\n", pct(g.original_average));
  md += fmt::format("| field precision / recall / F1 (micro) | {} / {} / {} |\n", f3(g.fields.precision()),
                    f3(g.fields.recall()), f3(g.fields.f1()));
  md += fmt::format("| field F1, macro over fields | {} |\n", pct(g.fields_macro));
  md += fmt::format("| field F1, macro over documents | {} |\n", pct(g.documents_macro));
  md += fmt::format("| entry F1 exact (micro / macro over sections) | {} / {} |\n", f3(g.exact.f1()),
                    pct(g.exact_macro));
  md += fmt::format("| entry F1 relaxed (micro / macro over sections) | {} / {} |\n", f3(g.relaxed.f1()),
                    pct(g.relaxed_macro));
  md += fmt::format("| hallucinated values | {} ({} of {}) |\n", pct(g.hallucination_rate()),
                    g.hallucinated_values, g.predicted_values);
  md += fmt::format("| hallucinated items | {} ({} of {}) |\n", pct(g.item_hallucination_rate()),
                    g.hallucinated_items, g.predicted_items);
  if (g.mean_seconds) md += fmt::format("| seconds per document (mean) | {:.2f} |\n", *g.mean_seconds);
  md += "\n";

  auto group_table = [&](const char* title, const std::map<std::string, GroupSummary>& m) {
    md += fmt::format("## By {}\n\n", title);
    md += fmt::format(
        "| {} | docs | term acc | value acc | average | field F1 | exact entry F1 | relaxed entry F1 "
        "| hallucinated values |{}\n",
        title, g.mean_seconds ? " s/doc |" : "");
    md +=
        std::string("|---|---:|---:|---:|---:|---:|---:|---:|---:|") + (g.mean_seconds ? "---:|" : "") + "\n";
    for (const auto& [k, s] : m) {
      md += fmt::format("| {} | {} | {} | {} | {} | {} | {} | {} | {} |", k, s.documents,
                        pct(s.term_accuracy), pct(s.value_accuracy), pct(s.original_average),
                        f3(s.fields.f1()), f3(s.exact.f1()), f3(s.relaxed.f1()), pct(s.hallucination_rate()));
      if (g.mean_seconds)
        md += fmt::format(" {} |", s.mean_seconds ? fmt::format("{:.2f}", *s.mean_seconds) : "–");
      md += "\n";
    }
    md += "\n";
  };
  group_table("document type", r.by_type);
  group_table("degradation", r.by_degradation);

  md +=
      "## By section\n\n| section | TP | FP | FN | precision | recall | F1 | exact entry F1 | relaxed entry "
      "F1 |\n"
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& s : scored_sections()) {
    auto it = r.sections.find(s);
    const Counts c = it == r.sections.end() ? Counts{} : it->second;
    auto e = r.exact_by_section.find(s);
    auto x = r.relaxed_by_section.find(s);
    md += fmt::format("| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n", s, c.tp, c.fp, c.fn,
                      f3(c.precision()), f3(c.recall()), c.empty() ? "–" : f3(c.f1()),
                      e == r.exact_by_section.end() || e->second.empty() ? "–" : f3(e->second.f1()),
                      x == r.relaxed_by_section.end() || x->second.empty() ? "–" : f3(x->second.f1()));
  }
  md +=
      "\n## By field\n\n| field | in truth | predicted | TP | precision | recall | F1 |\n"
      "|---|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& s : scored_sections())
    for (const auto& f : section_fields(s)) {
      auto it = r.fields.find(s + "." + f);
      const Counts c = it == r.fields.end() ? Counts{} : it->second;
      if (c.empty()) continue;
      md += fmt::format("| {}.{} | {} | {} | {} | {} | {} | {} |\n", s, f, c.tp + c.fn, c.tp + c.fp, c.tp,
                        f3(c.precision()), f3(c.recall()), f3(c.f1()));
    }
  std::vector<const DocumentScore*> bad;
  for (const auto& d : r.documents)
    if (d.status != "ok") bad.push_back(&d);
  if (!bad.empty() || !r.unmatched_predictions.empty()) {
    md += "\n## Failures\n\n";
    for (const auto* d : bad)
      md += fmt::format("- {}: {}{}\n", d->id, d->status, d->error.empty() ? "" : " (" + d->error + ")");
    for (const auto& u : r.unmatched_predictions)
      md += fmt::format("- {}: prediction without ground truth (ignored)\n", u);
  }
  return md;
}

}  // namespace mv::eval
