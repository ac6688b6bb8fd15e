#include "cli/commands.hpp"
#include "core/error.hpp"

namespace mv::cli {

void add_download_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("download", "(being written)");
  cmd->callback([] { fail(Errc::kUnsupported, "download: not available in this build"); });
}

}  // namespace mv::cli
