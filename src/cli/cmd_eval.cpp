// medvision eval: scores extractions against ground truth (docs/design/eval.md), from a folder of
// predictions or by running an extractor over a dataset.
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "core/system_info.hpp"
#include "core/time_stats.hpp"
#include "data/clinical_tables.hpp"
#include "eval/evaluate.hpp"
#include "extract/extractor.hpp"
#include "extract/schema.hpp"

namespace mv::cli {

namespace {}  // namespace

void add_eval_command(CLI::App& app) {
  struct Args {
    std::string truth, pred, data, backend, model, adapter, json_out, markdown_out, save_pred, tessdata;
    int threads = 0;
    bool no_synonyms = false, strict = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd =
      app.add_subcommand("eval", "Score extractions against ground truth (predictions or a live extractor)");
  cmd->add_option("--truth", args->truth, "ground-truth folder (as written by medvision synth)");
  cmd->add_option("--pred", args->pred,
                  "prediction folder: one schema JSON per document, named like the truth file");
  cmd->add_option("--data", args->data, "dataset folder (documents + ground truth) to run an extractor over");
  cmd->add_option("--backend", args->backend, "extractor for --data: ocr|vlm");
  cmd->add_option("--model", args->model, "Qwen2.5-VL checkpoint folder (backend vlm)");
  cmd->add_option("--adapter", args->adapter, "PEFT LoRA adapter folder merged into the model (backend vlm)");
  cmd->add_option("--tessdata", args->tessdata, "Tesseract data folder (backend ocr; default: system)");
  cmd->add_option("--threads", args->threads, "extractor threads (0: all cores)")->capture_default_str();
  cmd->add_option("--save-pred", args->save_pred, "with --data: also write each extraction to this folder");
  auto* json_opt = cmd->add_option("--json", args->json_out,
                                   "write the JSON report (default path benchmarks/evaluation.json)");
  json_opt->expected(0, 1);
  cmd->add_option("--markdown", args->markdown_out, "write the Markdown report here (default: stdout)");
  cmd->add_flag("--no-synonyms", args->no_synonyms,
                "compare lab/vital/vaccine names without the synonym groups of data/clinical");
  cmd->add_flag("--strict", args->strict,
                "exit with status 3 when any prediction is missing, invalid or failed");
  cmd->callback([args, json_opt] {
    const bool pred_mode = !args->truth.empty() || !args->pred.empty();
    const bool run_mode = !args->data.empty() || !args->backend.empty();
    if (pred_mode == run_mode)
      fail(Errc::kUsage, "eval: give either --truth DIR --pred DIR, or --data DIR --backend ocr|vlm");
    if (pred_mode && (args->truth.empty() || args->pred.empty()))
      fail(Errc::kUsage, "eval: --truth and --pred go together");
    if (run_mode && (args->data.empty() || args->backend.empty()))
      fail(Errc::kUsage, "eval: --data and --backend go together");
    if (pred_mode && (!args->model.empty() || !args->adapter.empty() || !args->save_pred.empty()))
      fail(Errc::kUsage, "eval: --model, --adapter and --save-pred apply to --data runs only");
    if (!args->adapter.empty() && args->backend != "vlm")
      fail(Errc::kUsage, "eval: --adapter applies to --backend vlm only");
    if (run_mode && args->backend != "ocr" && args->backend != "vlm")
      fail(Errc::kUsage, "eval: --backend must be ocr or vlm, not '{}'", args->backend);

    std::string json_path = args->json_out;
    if (json_opt->count() > 0 && json_path.empty()) json_path = "benchmarks/evaluation.json";

    eval::Vocabulary vocabulary;
    eval::ScoreOptions score;
    std::string synonyms = "off";
    if (!args->no_synonyms) {
      const auto clinical = synth::data_dir() / "clinical";
      if (std::filesystem::is_directory(clinical)) {
        vocabulary = eval::Vocabulary::from_clinical_tables(clinical.string());
        score.vocabulary = &vocabulary;
        synonyms = fmt::format("{} groups from {}", vocabulary.groups(), clinical.string());
      } else {
        spdlog::warn("eval: {} not found; names are compared without synonym groups", clinical.string());
      }
    }

    eval::EvaluationReport report;
    if (pred_mode) {
      report = eval::evaluate_predictions(args->truth, args->pred, score);
    } else {
      extract::ExtractorConfig config;
      config.model_dir = args->model;
      config.adapter = args->adapter;
      config.tessdata_dir = args->tessdata;
      config.threads = args->threads;
      auto extractor = extract::make_extractor(args->backend, config);
      eval::RunOptions run;
      run.score = score;
      run.save_predictions = args->save_pred;
      report = eval::evaluate_extractor(args->data, *extractor, run);
      if (!args->model.empty()) report.meta["model"] = args->model;
      if (!args->adapter.empty()) report.meta["adapter"] = args->adapter;
    }
    const auto cpu = query_cpu();
    report.meta["date"] = utc_timestamp();
    report.meta["machine"] = fmt::format("{} ({} logical cores)", cpu.model, cpu.logical_cores);
    report.meta["medvision_version"] = MEDVISION_VERSION;
    report.meta["schema_version"] = extract::kSchemaVersion;
    report.meta["synonyms"] = synonyms;

    const std::string md = eval::report_markdown(report);
    if (!json_path.empty()) {
      const std::filesystem::path p(json_path);
      if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
      write_file(p, eval::report_json(report).dump(1) + "\n");
    }
    if (!args->markdown_out.empty()) {
      const std::filesystem::path p(args->markdown_out);
      if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
      write_file(p, md);
    } else {
      std::fwrite(md.data(), 1, md.size(), stdout);
    }
    const auto& g = report.overall;
    const int bad = g.missing + g.invalid + g.failed;
    if (bad > 0)
      std::fprintf(stderr,
                   "eval: %d of %d documents have no usable prediction (missing %d, invalid %d, failed %d)\n",
                   bad, g.documents, g.missing, g.invalid, g.failed);
    if (!report.unmatched_predictions.empty())
      std::fprintf(stderr, "eval: %zu prediction files have no ground truth and were ignored\n",
                   report.unmatched_predictions.size());
    if (args->strict && bad > 0)
      fail(Errc::kInvalidInput, "eval: {} of {} documents have no usable prediction (--strict)", bad,
           g.documents);
  });
}

}  // namespace mv::cli
