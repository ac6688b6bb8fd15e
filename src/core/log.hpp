// Logging on stderr through spdlog. Privacy rule: documents, prompts and extracted values never go to
// info level or above; log ids, sizes and timings only.
#pragma once
#include <spdlog/spdlog.h>

namespace mv {

enum class LogLevel { kTrace, kDebug, kInfo, kWarn, kError, kOff };

// Configures the default logger (stderr, "[time] [level] message"). Safe to call more than once.
void init_logging(LogLevel level);
LogLevel parse_log_level(const std::string& name);  // trace|debug|info|warn|error|off; throws kUsage

}  // namespace mv
