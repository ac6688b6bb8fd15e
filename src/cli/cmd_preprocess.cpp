#include "cli/commands.hpp"
#include "core/error.hpp"

namespace mv::cli {

void add_preprocess_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("preprocess", "(being written)");
  cmd->callback([] { fail(Errc::kUnsupported, "preprocess: not available in this build"); });
}

}  // namespace mv::cli
