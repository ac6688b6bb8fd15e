#include "core/error.hpp"

namespace mv {

const char* errc_name(Errc code) noexcept {
  switch (code) {
    case Errc::kFailure: return "failure";
    case Errc::kUsage: return "usage";
    case Errc::kInvalidInput: return "invalid_input";
    case Errc::kNotFound: return "not_found";
    case Errc::kUnsupported: return "unsupported";
    case Errc::kTooLarge: return "too_large";
    case Errc::kAuth: return "auth";
    case Errc::kIo: return "io";
    case Errc::kNetwork: return "network";
    case Errc::kInternal: return "internal";
  }
  return "failure";
}

int exit_code(Errc code) noexcept {
  switch (code) {
    case Errc::kUsage: return 2;
    case Errc::kInvalidInput:
    case Errc::kNotFound:
    case Errc::kUnsupported:
    case Errc::kTooLarge: return 3;
    default: return 1;
  }
}

int http_status(Errc code) noexcept {
  switch (code) {
    case Errc::kUsage:
    case Errc::kInvalidInput: return 400;
    case Errc::kAuth: return 401;
    case Errc::kNotFound: return 404;
    case Errc::kTooLarge: return 413;
    case Errc::kUnsupported: return 415;
    case Errc::kNetwork: return 502;
    default: return 500;
  }
}

}  // namespace mv
