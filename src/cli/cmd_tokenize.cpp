#include "cli/commands.hpp"
#include "core/error.hpp"

namespace mv::cli {

void add_tokenize_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenize", "(being written)");
  cmd->callback([] { fail(Errc::kUnsupported, "tokenize: not available in this build"); });
}

}  // namespace mv::cli
