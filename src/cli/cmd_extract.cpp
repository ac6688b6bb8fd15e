// medvision extract FILE... : structured clinical data from document images and PDFs, with the embedded OCR
// extractor (default) or the Qwen2.5-VL engine (--model). JSON in the extraction schema, a FHIR R4 Bundle,
// or a plain-text summary; one output file per input with --out; batches continue past bad files.
#include <chrono>
#include <cstdio>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "core/progress.hpp"
#include "extract/extractor.hpp"
#include "extract/fhir.hpp"
#include "extract/ocr.hpp"

namespace mv::cli {

namespace {

std::string text_summary(const extract::Extraction& e) {
  std::string s = fmt::format("document type: {}\n", e.document_type);
  if (e.patient) {
    const auto& p = *e.patient;
    s += fmt::format("patient: {}{}{}{}\n", p.name.value_or("-"),
                     p.birth_date ? ", born " + *p.birth_date : "", p.mrn ? ", MRN " + *p.mrn : "",
                     p.sex ? ", " + *p.sex : "");
  }
  if (e.encounter) {
    const auto& n = *e.encounter;
    s += fmt::format("encounter: {}{}{}{}\n", n.facility.value_or("-"),
                     n.department ? ", " + *n.department : "", n.date ? ", " + *n.date : "",
                     n.provider ? ", " + *n.provider : "");
  }
  auto opt = [](const std::optional<std::string>& o) { return o ? " " + *o : std::string(); };
  if (!e.diagnoses.empty()) s += "diagnoses:\n";
  for (const auto& d : e.diagnoses)
    s += fmt::format("  {}{}{}\n", d.text, d.icd10 ? " (" + *d.icd10 + ")" : "", opt(d.status));
  if (!e.medications.empty()) s += "medications:\n";
  for (const auto& m : e.medications)
    s += fmt::format("  {}{}{}{}{}{}{}{}{}\n", m.name, opt(m.strength), m.dose ? " - " + *m.dose : "",
                     opt(m.unit), opt(m.route), opt(m.frequency), m.prn && *m.prn ? " PRN" : "",
                     m.duration ? " x " + *m.duration : "", m.status ? " [" + *m.status + "]" : "");
  if (!e.labs.empty()) s += "labs:\n";
  for (const auto& l : e.labs)
    s += fmt::format("  {}: {}{}{}{}\n", l.test, l.value, opt(l.unit),
                     l.reference_range ? " (" + *l.reference_range + ")" : "", l.flag ? " " + *l.flag : "");
  if (!e.vitals.empty()) s += "vitals:\n";
  for (const auto& v : e.vitals) s += fmt::format("  {}: {}{}\n", v.name, v.value, opt(v.unit));
  if (e.no_known_allergies && *e.no_known_allergies) s += "allergies: none known\n";
  if (!e.allergies.empty()) s += "allergies:\n";
  for (const auto& a : e.allergies)
    s += fmt::format("  {}{}{}\n", a.substance, a.reaction ? " - " + *a.reaction : "",
                     a.severity ? " (" + *a.severity + ")" : "");
  if (!e.procedures.empty()) s += "procedures:\n";
  for (const auto& p : e.procedures) s += fmt::format("  {}{}\n", p.name, p.date ? " " + *p.date : "");
  if (!e.immunizations.empty()) s += "immunizations:\n";
  for (const auto& i : e.immunizations) s += fmt::format("  {}{}\n", i.vaccine, i.date ? " " + *i.date : "");
  if (!e.followups.empty()) s += "follow-up:\n";
  for (const auto& f : e.followups) s += fmt::format("  {}{}\n", f.text, f.when ? " - " + *f.when : "");
  return s;
}

}  // namespace

void add_extract_command(CLI::App& app) {
  struct Args {
    std::vector<std::string> files;
    std::string backend = "auto", model, adapter, format = "json", out, pages, tessdata;
    int threads = 0;
    bool derive_flags = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("extract", "Extract structured clinical data from document images and PDFs");
  cmd->add_option("files", args->files, "image (PNG, JPEG, TIFF, WebP, BMP) or PDF files")->required();
  cmd->add_option("--backend", args->backend, "auto|ocr|vlm (auto: vlm when --model is given, else ocr)")
      ->capture_default_str();
  cmd->add_option("--model", args->model, "Qwen2.5-VL checkpoint directory (vlm backend)");
  cmd->add_option("--adapter", args->adapter, "PEFT LoRA adapter folder merged into the model (vlm backend)");
  cmd->add_option("--format", args->format,
                  "json|fhir|text, or ocr: the OCR rows (cells split by two spaces)")
      ->capture_default_str();
  cmd->add_option("--out", args->out, "write one output file per input into this folder");
  cmd->add_option("--pages", args->pages, "pages to read, e.g. 1-3,5 (default: all)");
  cmd->add_option("--threads", args->threads, "worker threads (0: all cores)")->capture_default_str();
  cmd->add_option("--tessdata", args->tessdata, "Tesseract model folder (default: the system's)");
  cmd->add_flag("--derive-flags", args->derive_flags,
                "fill a lab's flag from its printed reference range when none is printed (no flag box)");
  cmd->callback([args] {
    if (args->format != "json" && args->format != "fhir" && args->format != "text" && args->format != "ocr")
      fail(Errc::kUsage, "extract: --format must be json, fhir, text or ocr (not '{}')", args->format);
    if (args->files.size() > 1 && args->out.empty())
      fail(Errc::kUsage, "extract: give --out DIR to extract more than one file");
    const auto range = extract::parse_page_range(args->pages);
    extract::ExtractorConfig config;
    config.model_dir = args->model;
    config.adapter = args->adapter;
    config.tessdata_dir = args->tessdata;
    config.threads = args->threads;
    if (args->backend == "vlm" && args->model.empty())
      fail(Errc::kUsage, "extract: --backend vlm needs --model DIR");
    if (!args->adapter.empty() && (args->model.empty() || args->backend == "ocr"))
      fail(Errc::kUsage, "extract: --adapter applies to the vlm backend (give --model DIR)");
    std::unique_ptr<extract::Extractor> extractor;
    std::unique_ptr<extract::OcrEngine> ocr;
    if (args->format == "ocr")
      ocr = std::make_unique<extract::OcrEngine>(extract::OcrOptions{config.tessdata_dir});
    else
      extractor = extract::make_extractor(args->backend, config);
    if (!args->out.empty()) std::filesystem::create_directories(args->out);

    const char* ext = args->format == "json"   ? ".json"
                      : args->format == "fhir" ? ".fhir.json"
                      : args->format == "ocr"  ? ".ocr.txt"
                                               : ".txt";
    std::vector<std::string> failures;
    Progress progress("extract", args->files.size() > 1 ? args->files.size() : 0, "files");
    if (args->files.size() <= 1) Progress::set_enabled(false);
    int done = 0, pages_done = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto& file : args->files) {
      try {
        auto pages = extract::load_pages(file, range);
        std::string body;
        extract::Extraction e;
        if (ocr) {
          for (const auto& p : pages) {
            auto o = ocr->recognize(p);
            body += fmt::format("=== page {} ({}x{}, skew {:.2f} deg{})\n", o.number, o.width, o.height,
                                o.skew_degrees, o.normalised ? ", background normalised" : "");
            body += o.text();
          }
        } else {
          extract::ExtractOptions opt;
          opt.document_id = std::filesystem::path(file).stem().string();
          opt.derive_flags = args->derive_flags;
          e = extractor->extract(pages, opt);
        }
        if (args->format == "json")
          body = extract::to_json(e).dump(2);
        else if (args->format == "fhir")
          body = extract::to_fhir_bundle(e).dump(2);
        else if (args->format == "text")
          body = text_summary(e);
        if (args->out.empty()) {
          if (args->format == "text" || args->format == "ocr")
            std::fputs(body.c_str(), stdout);
          else
            std::printf("%s\n", body.c_str());
        } else {
          write_file(std::filesystem::path(args->out) / (std::filesystem::path(file).stem().string() + ext),
                     body);
        }
        ++done;
        pages_done += static_cast<int>(pages.size());
      } catch (const Error& err) {
        failures.push_back(fmt::format("{}: {}", file, err.what()));
        spdlog::error("extract: {}", failures.back());
      } catch (const std::exception& err) {
        failures.push_back(fmt::format("{}: {}", file, err.what()));
        spdlog::error("extract: {}", failures.back());
      }
      progress.advance(1);
    }
    progress.finish();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!args->out.empty())
      std::fprintf(stderr, "extract: %d of %zu file(s), %d page(s) in %.1f s -> %s\n", done,
                   args->files.size(), pages_done, secs, args->out.c_str());
    if (!failures.empty()) {
      std::string list;
      for (const auto& f : failures) list += "\n  " + f;
      fail(Errc::kFailure, "extract: {} of {} file(s) failed:{}", failures.size(), args->files.size(), list);
    }
  });
}

}  // namespace mv::cli
