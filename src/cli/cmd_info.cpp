#include "cli/commands.hpp"
#include "core/error.hpp"

namespace mv::cli {

void add_info_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "(being written)");
  cmd->callback([] { fail(Errc::kUnsupported, "info: not available in this build"); });
}

}  // namespace mv::cli
