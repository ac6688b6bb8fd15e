// The MedVision HTTP service (cpp-httplib): the original extraction API (/health, /extract, /analyze,
// /benchmark), an OpenAI-compatible API (/v1/models, /v1/chat/completions with SSE streaming), Prometheus
// metrics (/metrics) and the embedded web page (/). docs/design/server.md describes the design.
//
//   mv::server::ServerOptions o;  o.port = 0;  o.backend = "ocr";
//   mv::server::Server s(o);      int port = s.bind();
//   std::thread t([&] { s.run(); });   ...   s.stop();  t.join();
#pragma once
#include <cstdint>
#include <exception>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace mv::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                      // 0 = any free port (bind() returns it)
  std::filesystem::path model_dir;      // Qwen2.5-VL checkpoint: enables /analyze, /v1/* and backend vlm
  std::filesystem::path adapter;        // PEFT LoRA adapter merged into the model at load (empty: none)
  std::string backend = "auto";         // auto | ocr | vlm (auto = vlm with --model, else ocr)
  std::string device = "auto";          // chat engine: auto | cpu | cuda | cuda:N
  std::filesystem::path api_keys_file;  // empty = no authentication
  std::filesystem::path tls_cert, tls_key;
  int max_upload_mb = 20;  // per uploaded document / image
  int max_queue = 16;      // requests waiting for a worker, per queue
  int max_batch =
      0;  // model: sequences per decode step (0 = 8); also concurrent extractions (ocr: 0 = cores)
  std::filesystem::path benchmarks_dir = "benchmarks";
  int http_threads = 0;         // connection threads (0 = max(32, 2 x max_queue + workers + batch + 8))
  int threads = 0;              // engine / OCR threads (0 = hardware concurrency)
  int max_tokens_limit = 4096;  // largest max_tokens a client may ask for (also bounds a VLM extraction)
  int default_max_tokens = 512;
  int max_pages = 16;                                      // pages decoded per uploaded document
  std::optional<std::filesystem::path> allow_local_files;  // image_url file paths allowed below this folder
  double shutdown_timeout_s = 30;  // in-flight work gets this long on stop(); then streams are cancelled
};

// How an exception thrown while serving becomes a response: mv::Error codes map through http_status()
// (kNotFound of an input to 400), Rejected to its 429/503 with Retry-After, anything else to 500. Bodies are
// {"error": {message, type, code, request_id}, "detail": message}; 5xx messages never carry the exception's
// text, only the request id.
struct ErrorReply {
  int status = 500;
  nlohmann::json body;
  int retry_after = 0;  // seconds; 0 = no Retry-After header
};
ErrorReply error_reply(std::exception_ptr error, const std::string& request_id,
                       const std::string& route = "");

class Server {
 public:
  // Loads the extraction backend and the model (when given). Throws mv::Error for bad options, a missing
  // model, an unreadable key file or certificate.
  explicit Server(ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int bind();  // binds host:port; returns the port. Throws kIo when the address is taken.
  void run();  // serves until stop(); call after bind()
  // Graceful: refuses new work (503), lets admitted work finish (cancelling streams after
  // shutdown_timeout_s), then closes the listener. Safe from any thread, and more than once.
  void stop();
  bool tls() const;
  const ServerOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mv::server
