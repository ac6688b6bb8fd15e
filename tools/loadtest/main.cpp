// medvision-chat-load: the serving benchmark's load generator (tools/loadtest/chat_load.hpp).
//
//   medvision-chat-load --url http://127.0.0.1:8080 --image page.png --concurrency 8 --max-tokens 256 \
//       --json serve_c8.json
//
// The URL may come from MV_SERVE_URL instead, the API key from MV_API_KEY. Without a URL it prints that it
// skipped and exits 0, so scripts and CI that run it without a server are unaffected. Exit status: 0 when
// every measured request succeeded, 1 when some failed (the JSON is written either way), 2 for bad usage.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>

#include "chat_load.hpp"
#include "core/error.hpp"
#include "core/file.hpp"

int main(int argc, char** argv) {
  CLI::App app{"Load generator for POST /v1/chat/completions of medvision serve (streamed, greedy).",
               "medvision-chat-load"};
  mv::loadtest::ChatLoadOptions o;
  o.image = std::string(MEDVISION_SOURCE_DIR) + "/samples/discharge_summary.png";
  std::string json_path;
  bool insecure = false;
  app.add_option("--url", o.url, "server, e.g. http://127.0.0.1:8080 (default: $MV_SERVE_URL)");
  app.add_option("--api-key", o.api_key, "API key (default: $MV_API_KEY)");
  app.add_option("--image", o.image, "page sent with every request")->capture_default_str();
  app.add_option("--prompt", o.prompt, "text part of the user message")->capture_default_str();
  app.add_option("-c,--concurrency", o.concurrency, "clients sending at the same time")
      ->capture_default_str();
  app.add_option("-n,--requests", o.requests, "measured requests in all (0 = max(4, 2 x concurrency))")
      ->capture_default_str();
  app.add_option("--max-tokens", o.max_tokens, "max_tokens of each request")->capture_default_str();
  app.add_option("--warmup", o.warmup, "requests sent together before the measured ones (not counted)")
      ->capture_default_str();
  app.add_option("--warmup-tokens", o.warmup_tokens, "max_tokens of a warm-up request")
      ->capture_default_str();
  app.add_option("--timeout", o.timeout_s, "seconds a request may take")->capture_default_str();
  app.add_flag("--insecure", insecure, "https: accept any server certificate");
  app.add_option("--json", json_path, "write the report here (default: standard output only)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (o.url.empty())
    if (const char* v = std::getenv("MV_SERVE_URL")) o.url = v;
  if (o.api_key.empty())
    if (const char* v = std::getenv("MV_API_KEY")) o.api_key = v;
  if (o.url.empty()) {
    std::printf("medvision-chat-load: skipped (no server: give --url or set MV_SERVE_URL)\n");
    return 0;
  }
  o.verify_tls = !insecure;
  try {
    const nlohmann::json report = mv::loadtest::run_chat_load(o);
    const std::string text = report.dump(2) + "\n";
    if (!json_path.empty()) mv::write_file(json_path, text);
    const auto& ttft = report["ttft_seconds"];
    const auto& latency = report["latency_seconds"];
    const auto& during =
        report["server_metrics"].is_object() ? report["server_metrics"]["during"] : nlohmann::json::object();
    std::printf(
        "chat-load: concurrency %d, %d requests (%d ok), %lld tokens in %.2f s = %.1f tok/s; TTFT p50 %.3f "
        "p99 "
        "%.3f s; latency p50 %.3f p99 %.3f s; mean batch %.2f\n",
        report["concurrency"].get<int>(), report["requests"].get<int>(), report["ok"].get<int>(),
        static_cast<long long>(report["generated_tokens"].get<std::int64_t>()),
        report["wall_seconds"].get<double>(), report["generated_tokens_per_second"].get<double>(),
        ttft.is_object() ? ttft["p50"].get<double>() : -1.0,
        ttft.is_object() ? ttft["p99"].get<double>() : -1.0,
        latency.is_object() ? latency["p50"].get<double>() : -1.0,
        latency.is_object() ? latency["p99"].get<double>() : -1.0,
        during.contains("mean_batch_size") && during["mean_batch_size"].is_number()
            ? during["mean_batch_size"].get<double>()
            : -1.0);
    if (json_path.empty()) std::fputs(text.c_str(), stdout);
    return report["failed"].get<int>() == 0 ? 0 : 1;
  } catch (const mv::Error& e) {
    std::fprintf(stderr, "medvision-chat-load: error: %s\n", e.what());
    return e.code() == mv::Errc::kUsage ? 2 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "medvision-chat-load: error: %s\n", e.what());
    return 1;
  }
}
