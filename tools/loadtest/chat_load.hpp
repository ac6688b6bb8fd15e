// Load generator for the OpenAI-compatible route of `medvision serve`: C concurrent clients, each with its
// own keep-alive connection, send streamed POST /v1/chat/completions (one page image as a base64 data: URL
// plus a text prompt, greedy, max_tokens N) and time each request from the client's side. The server's
// /metrics are read before and after the measured requests, so the report also carries what the engine did
// meanwhile (decode steps, sequences per step, tokens). Used by tools/loadtest/main.cpp (medvision-chat-load)
// and tests/server/test_chat_load.cpp; docs/design/server.md describes the benchmark.
#pragma once
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/time_stats.hpp"

namespace mv::loadtest {

struct ChatLoadOptions {
  std::string url;      // http(s)://host:port of the server
  std::string api_key;  // sent as "Authorization: Bearer KEY" when not empty
  std::string image;    // the page sent with every request (PNG, JPEG, ...)
  std::string prompt = "Extract the diagnoses, medications and lab results from this document.";
  int concurrency = 1;  // clients sending at the same time
  int requests = 0;     // measured requests in all (0 = max(4, 2 x concurrency))
  int max_tokens = 256;
  int warmup = 0;          // requests sent together before the measured ones (not counted)
  int warmup_tokens = 16;  // max_tokens of a warm-up request
  double timeout_s = 600;  // per request (read timeout)
  bool verify_tls = true;  // false: accept any certificate (self-signed test servers)
};

// Incremental parser of a server-sent event stream: feed() bytes as they arrive, get the `data:` payloads of
// the events completed so far (events end with a blank line; "\n" and "\r\n" line ends are accepted).
class SseParser {
 public:
  std::vector<std::string> feed(std::string_view bytes);

 private:
  std::string buffer_;
  std::string data_;  // data lines of the event being read
  bool has_data_ = false;
};

// Prometheus text format: "name{labels} value" lines (comments skipped) keyed by "name{labels}" as written.
std::map<std::string, double> parse_prometheus(std::string_view text);

// Linear interpolation between closest ranks (numpy's default); 0 for an empty sample.
using mv::percentile;

// Runs the load: /health, /v1/models and /metrics first, the warm-up, the measured requests, /metrics again.
// Returns the report (docs/design/server.md lists its fields). Throws mv::Error when the image cannot be read
// or the server does not answer /health; failed requests are counted in the report, not thrown.
nlohmann::json run_chat_load(const ChatLoadOptions& options);

}  // namespace mv::loadtest
