#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "cli/commands.hpp"

namespace mv::cli {

void print_json(const nlohmann::json& j) {
  const bool tty = ::isatty(STDOUT_FILENO) != 0;
  std::cout << j.dump(tty ? 2 : -1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
  std::cout.flush();
}

}  // namespace mv::cli
