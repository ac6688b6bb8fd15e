#include "eval/evaluate.hpp"

#include <algorithm>
#include <chrono>
#include <set>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "core/progress.hpp"
#include "extract/extractor.hpp"
#include "extract/schema.hpp"

namespace mv::eval {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json parse_json_file(const fs::path& file, const char* what) {
  const std::string text = read_file(file);
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    // The parser's message quotes the input around the error; give only the position.
    fail(Errc::kInvalidInput, "{} {}: not valid JSON (at byte {})", what, file.string(), e.byte);
  }
}

std::string str_or(const json& j, const char* key, const std::string& fallback) {
  if (j.is_object() && j.contains(key) && j[key].is_string()) return j[key].get<std::string>();
  return fallback;
}

}  // namespace

std::vector<TruthEntry> list_truth(const fs::path& dir) {
  if (!fs::is_directory(dir)) fail(Errc::kNotFound, "eval: truth folder {} does not exist", dir.string());
  std::vector<TruthEntry> out;
  const fs::path manifest = dir / "manifest.json";
  if (fs::exists(manifest)) {
    const json m = parse_json_file(manifest, "manifest");
    if (!m.is_object() || !m.contains("documents") || !m["documents"].is_array())
      fail(Errc::kInvalidInput, "manifest {}: no \"documents\" list", manifest.string());
    std::size_t index = 0;
    for (const auto& d : m["documents"]) {
      TruthEntry e;
      e.id = str_or(d, "id", "");
      const std::string truth = str_or(d, "truth", e.id.empty() ? "" : e.id + ".json");
      if (e.id.empty() || truth.empty())
        fail(Errc::kInvalidInput, "manifest {}: documents[{}] has no id", manifest.string(), index);
      e.type = str_or(d, "type", "");
      e.degradation = str_or(d, "degrade", "none");
      e.truth_file = dir / truth;
      if (const std::string file = str_or(d, "file", ""); !file.empty()) e.document_file = dir / file;
      out.push_back(std::move(e));
      ++index;
    }
  } else {
    for (const auto& ent : fs::directory_iterator(dir)) {
      if (!ent.is_regular_file() || ent.path().extension() != ".json") continue;
      TruthEntry e;
      e.id = ent.path().stem().string();
      e.truth_file = ent.path();
      e.degradation = "unknown";
      for (const char* ext : {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".pdf"}) {
        fs::path cand = dir / (e.id + ext);
        if (fs::exists(cand)) {
          e.document_file = cand;
          break;
        }
      }
      out.push_back(std::move(e));
    }
  }
  if (out.empty())
    fail(Errc::kInvalidInput, "eval: truth folder {} holds no ground-truth documents", dir.string());
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  for (std::size_t i = 1; i < out.size(); ++i)
    if (out[i].id == out[i - 1].id)
      fail(Errc::kInvalidInput, "eval: truth folder {} lists document {} twice", dir.string(), out[i].id);
  return out;
}

json load_truth(const TruthEntry& entry) {
  json j = parse_json_file(entry.truth_file, "ground truth");
  extract::check_extraction(j, entry.truth_file.string());
  return j;
}

bool load_prediction(const fs::path& file, json& out, std::string& error) {
  try {
    out = parse_json_file(file, "prediction");
    const auto errors = extract::validate_extraction(out, 5);
    if (!errors.empty()) {
      error = "does not follow the extraction schema: " + errors.front();
      for (std::size_t i = 1; i < errors.size(); ++i) error += "; " + errors[i];
      return false;
    }
    return true;
  } catch (const Error& e) {
    error = e.what();
    return false;
  }
}

namespace {

DocumentScore score_entry(const TruthEntry& e, const json& truth, const json* pred, const ScoreOptions& o) {
  DocumentScore s = score_document(truth, pred, o);
  s.id = e.id;
  s.type = e.type.empty() ? str_or(truth, "document_type", "other") : e.type;
  s.degradation = e.degradation.empty() ? "unknown" : e.degradation;
  return s;
}

}  // namespace

EvaluationReport evaluate_predictions(const fs::path& truth_dir, const fs::path& pred_dir,
                                      const ScoreOptions& o) {
  const auto entries = list_truth(truth_dir);
  if (!fs::is_directory(pred_dir))
    fail(Errc::kNotFound, "eval: prediction folder {} does not exist", pred_dir.string());
  std::vector<DocumentScore> scores;
  std::set<std::string> truth_names;
  for (const auto& e : entries) {
    truth_names.insert(e.truth_file.filename().string());
    const json truth = load_truth(e);
    const fs::path pf = pred_dir / e.truth_file.filename();
    json pred;
    std::string error;
    if (!fs::exists(pf)) {
      auto s = score_entry(e, truth, nullptr, o);
      s.status = "missing";
      s.error = "no prediction file " + pf.filename().string();
      scores.push_back(std::move(s));
    } else if (!load_prediction(pf, pred, error)) {
      auto s = score_entry(e, truth, nullptr, o);
      s.status = "invalid";
      s.error = error;
      scores.push_back(std::move(s));
    } else {
      scores.push_back(score_entry(e, truth, &pred, o));
    }
  }
  EvaluationReport r = build_report(std::move(scores));
  for (const auto& ent : fs::directory_iterator(pred_dir)) {
    const std::string name = ent.path().filename().string();
    if (ent.is_regular_file() && ent.path().extension() == ".json" && name != "manifest.json" &&
        !truth_names.count(name))
      r.unmatched_predictions.push_back(name);
  }
  std::sort(r.unmatched_predictions.begin(), r.unmatched_predictions.end());
  r.meta["truth"] = truth_dir.string();
  r.meta["predictions"] = pred_dir.string();
  return r;
}

EvaluationReport evaluate_extractor(const fs::path& data_dir, extract::Extractor& extractor,
                                    const RunOptions& o) {
  const auto entries = list_truth(data_dir);
  if (!o.save_predictions.empty()) fs::create_directories(o.save_predictions);
  std::vector<DocumentScore> scores;
  Progress progress("eval", entries.size(), "docs");
  for (const auto& e : entries) {
    const json truth = load_truth(e);
    DocumentScore s;
    try {
      if (e.document_file.empty())
        fail(Errc::kNotFound, "no document image or PDF for {} in {}", e.id, data_dir.string());
      const auto t0 = std::chrono::steady_clock::now();
      const auto pages = extract::load_pages(e.document_file);
      extract::ExtractOptions xo;
      xo.document_id = e.id;
      const extract::Extraction x = extractor.extract(pages, xo);
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const json pred = extract::to_json(x);
      if (!o.save_predictions.empty())
        write_file(o.save_predictions / e.truth_file.filename(), pred.dump(1) + "\n");
      s = score_entry(e, truth, &pred, o.score);
      s.seconds = secs;
    } catch (const Error& err) {
      s = score_entry(e, truth, nullptr, o.score);
      s.status = "failed";
      s.error = err.what();
      spdlog::warn("eval: {}: extraction failed ({})", e.id, errc_name(err.code()));
      spdlog::debug("eval: {}: {}", e.id, err.what());
    }
    spdlog::debug("eval: {} {:.2f} s, field F1 {:.3f}", e.id, s.seconds.value_or(0.0), s.field_total().f1());
    if (o.on_document) o.on_document(e, s);
    scores.push_back(std::move(s));
    progress.advance(1);
  }
  progress.finish();
  EvaluationReport r = build_report(std::move(scores));
  r.meta["data"] = data_dir.string();
  r.meta["backend"] = std::string(extractor.backend());
  return r;
}

}  // namespace mv::eval
