#include "cli/commands.hpp"
#include "core/error.hpp"

namespace mv::cli {

void add_doctor_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("doctor", "(being written)");
  cmd->callback([] { fail(Errc::kUnsupported, "doctor: not available in this build"); });
}

}  // namespace mv::cli
