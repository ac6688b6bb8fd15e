// One typed error for the whole project, mapped in one place to exit codes and HTTP statuses.
#pragma once
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace mv {

enum class Errc {
  kFailure,       // generic failure of an operation (exit 1, HTTP 500)
  kUsage,         // bad command-line usage (exit 2, HTTP 400)
  kInvalidInput,  // malformed or out-of-limits input data (exit 3, HTTP 400)
  kNotFound,      // a file, tensor or remote resource does not exist (exit 3, HTTP 404)
  kUnsupported,   // a valid but unsupported format or feature (exit 3, HTTP 415)
  kTooLarge,      // input over a configured limit (exit 3, HTTP 413)
  kAuth,          // missing or rejected credentials (exit 1, HTTP 401)
  kIo,            // filesystem error (exit 1, HTTP 500)
  kNetwork,       // network error talking to a remote (exit 1, HTTP 502)
  kInternal,      // a bug: an invariant did not hold (exit 1, HTTP 500)
};

class Error : public std::runtime_error {
 public:
  Error(Errc code, std::string message) : std::runtime_error(std::move(message)), code_(code) {}
  Errc code() const noexcept { return code_; }

 private:
  Errc code_;
};

const char* errc_name(Errc code) noexcept;
int exit_code(Errc code) noexcept;
int http_status(Errc code) noexcept;

template <typename... Args>
[[noreturn]] void fail(Errc code, fmt::format_string<Args...> format, Args&&... args) {
  throw Error(code, fmt::format(format, std::forward<Args>(args)...));
}

// MV_CHECK(cond, "message {}", x): throws Errc::kInternal when an invariant does not hold.
#define MV_CHECK(cond, ...)                                                                      \
  do {                                                                                           \
    if (!(cond)) ::mv::fail(::mv::Errc::kInternal, "internal check failed: " #cond " ({}:{}): {}", \
                            __FILE__, __LINE__, ::fmt::format(__VA_ARGS__));                      \
  } while (0)

}  // namespace mv
