// medvision: the command-line front end. Wiring only; each command lives in its own file.
#include <cstdio>
#include <exception>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/progress.hpp"

int main(int argc, char** argv) {
  CLI::App app{"MedVision: structured data from clinical documents, locally.", "medvision"};
  app.set_version_flag("--version", std::string("medvision ") + MEDVISION_VERSION);
  app.require_subcommand(1);
  std::string log_level = "warn";
  bool quiet = false;
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error|off")->capture_default_str();
  app.add_flag("-q,--quiet", quiet, "no progress bars");

  mv::cli::add_doctor_command(app);
  mv::cli::add_download_command(app);
  mv::cli::add_tokenize_command(app);
  mv::cli::add_preprocess_command(app);
  mv::cli::add_info_command(app);
  mv::cli::add_synth_command(app);
  mv::cli::add_extract_command(app);
  mv::cli::add_eval_command(app);
  mv::cli::add_generate_command(app);
  mv::cli::add_debug_command(app);
  mv::cli::add_bench_tokenizer_command(app);
  mv::cli::add_bench_command(app);
  mv::cli::add_serve_command(app);
  mv::cli::add_quantize_command(app);

  app.parse_complete_callback([&] {
    mv::init_logging(mv::parse_log_level(log_level));
    mv::Progress::set_enabled(!quiet);
  });

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);  // --help, --version
  } catch (const CLI::ParseError& e) {
    app.exit(e);  // prints the message and a hint
    return mv::exit_code(mv::Errc::kUsage);
  } catch (const mv::Error& e) {
    std::fprintf(stderr, "medvision: error: %s\n", e.what());
    return mv::exit_code(e.code());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "medvision: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
