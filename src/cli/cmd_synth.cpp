// medvision synth: synthetic clinical documents with ground truth, and their export as training data.
#include <cstdio>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "data/synth.hpp"

namespace mv::cli {

void add_synth_command(CLI::App& app) {
  struct Args {
    std::string out, types, degrade = "none", export_dir;
    int count = 0, threads = 0;
    std::uint64_t seed = 0;
    bool json = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "synth", "Render synthetic clinical documents with ground truth (and export training data)");
  cmd->add_option("--out", args->out, "output folder for the documents (or the folder to export from)");
  cmd->add_option("--count", args->count, "number of documents to render");
  cmd->add_option("--seed", args->seed, "random seed; the same seed gives identical files")
      ->capture_default_str();
  cmd->add_option("--types", args->types, "comma-separated document types (default: all)");
  cmd->add_option("--degrade", args->degrade, "none|scan|fax|photo|mixed")->capture_default_str();
  cmd->add_option("--threads", args->threads, "worker threads (0: all cores)")->capture_default_str();
  cmd->add_option(
      "--export-training", args->export_dir,
      "write train/val/test.jsonl (80/10/10, seed 42) for the documents of --out (or of this folder) here");
  cmd->add_flag("--json", args->json, "print the summary as JSON");
  cmd->callback([args] {
    const bool render = args->count > 0 || !args->types.empty();
    if (!render && args->export_dir.empty())
      fail(Errc::kUsage,
           "synth: give --out DIR --count N [--seed S] to render, or --export-training DIR to export");
    nlohmann::json report = nlohmann::json::object();
    if (render) {
      synth::SynthOptions opt;
      opt.out_dir = args->out.empty() ? args->export_dir : args->out;
      if (opt.out_dir.empty()) fail(Errc::kUsage, "synth: --out DIR is required");
      opt.count = args->count;
      opt.seed = args->seed;
      if (!args->types.empty()) opt.types = synth::parse_types(args->types);
      opt.degrade = args->degrade;
      opt.threads = args->threads;
      const auto s = synth::run_synth(opt);
      report["documents"] = s.documents;
      report["pages"] = s.pages;
      report["seconds"] = s.seconds;
      report["by_type"] = s.by_type;
      report["by_degrade"] = s.by_degrade;
      report["manifest"] = s.manifest.string();
      if (!args->json)
        std::printf("synth: %d documents (%d pages) in %.1f s -> %s\n", s.documents, s.pages, s.seconds,
                    s.manifest.string().c_str());
    }
    if (!args->export_dir.empty()) {
      const std::filesystem::path source = args->out.empty() ? args->export_dir : args->out;
      const auto e = synth::export_training(source, args->export_dir);
      report["training"] = {
          {"train", e.train}, {"val", e.val}, {"test", e.test}, {"dir", e.out_dir.string()}};
      if (!args->json)
        std::printf("synth: training split train %zu / val %zu / test %zu -> %s\n", e.train, e.val, e.test,
                    e.out_dir.string().c_str());
    }
    if (args->json) print_json(report);
  });
}

}  // namespace mv::cli
