// medvision serve: the HTTP service (extraction API, OpenAI-compatible API, metrics, web page).
// SIGTERM / SIGINT stop it gracefully: admitted requests finish, new ones get 503, then it exits.
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "server/server.hpp"

namespace mv::cli {

namespace {

struct ServeArgs {
  server::ServerOptions o;
  std::string allow_local_files;
};

int g_stop_pipe[2] = {-1, -1};

// Async-signal-safe: wakes the thread that stops the server.
void on_stop_signal(int sig) {
  const char c = static_cast<char>(sig);
  [[maybe_unused]] auto n = ::write(g_stop_pipe[1], &c, 1);
}

void run_serve(ServeArgs& a) {
  if (!a.allow_local_files.empty()) a.o.allow_local_files = a.allow_local_files;
  server::Server srv(a.o);
  const int port = srv.bind();
  // SIGTERM / SIGINT: a handler (any thread may take the signal: libraries start threads of their own)
  // writes to a pipe; this thread reads it and stops the server gracefully.
  if (::pipe(g_stop_pipe) != 0) fail(Errc::kIo, "cannot create a pipe for signal handling");
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
  std::thread waiter([&srv] {
    char c = 0;
    while (::read(g_stop_pipe[0], &c, 1) < 0 && errno == EINTR) {
    }
    if (c != 0) std::fprintf(stderr, "medvision: signal %d: finishing admitted requests, then exiting\n", c);
    srv.stop();
  });
  std::fprintf(stderr, "medvision: serving on %s://%s:%d (Ctrl-C or SIGTERM to stop)\n",
               srv.tls() ? "https" : "http", a.o.host.c_str(), port);
  std::fflush(stderr);
  srv.run();
  const char zero = 0;  // the server stopped by itself: release the waiter
  [[maybe_unused]] auto n = ::write(g_stop_pipe[1], &zero, 1);
  waiter.join();
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  auto* cmd =
      app.add_subcommand("serve", "Run the HTTP service: extraction API, OpenAI-compatible API, web page");
  auto& o = a->o;
  cmd->add_option("--host", o.host, "address to listen on (0.0.0.0 for all interfaces)")
      ->capture_default_str();
  cmd->add_option("--port", o.port, "TCP port (0 = any free port)")->capture_default_str();
  cmd->add_option("--model", o.model_dir,
                  "Qwen2.5-VL checkpoint folder: enables /analyze and /v1/chat/completions");
  cmd->add_option("--adapter", o.adapter,
                  "PEFT LoRA adapter folder merged into the model at load (needs --model)");
  cmd->add_option("--backend", o.backend, "extraction backend: auto (vlm with --model, else ocr), ocr or vlm")
      ->capture_default_str();
  cmd->add_option("--device", o.device,
                  "engine of the chat model: auto (GPU 0 when usable), cpu, cuda or cuda:N")
      ->capture_default_str();
  cmd->add_option("--api-keys", o.api_keys_file, "file with one API key per line; requests must carry one");
  cmd->add_option("--tls-cert", o.tls_cert, "PEM certificate (chain): serve HTTPS");
  cmd->add_option("--tls-key", o.tls_key, "PEM private key of --tls-cert");
  cmd->add_option("--max-upload-mb", o.max_upload_mb, "largest uploaded document or image, MiB")
      ->capture_default_str();
  cmd->add_option("--max-queue", o.max_queue,
                  "requests that may wait per queue; more get 429 with Retry-After")
      ->capture_default_str();
  cmd->add_option(
         "--max-batch", o.max_batch,
         "sequences sharing each decode step of the model (0 = 8); also the concurrent extractions (ocr "
         "backend: 0 = cores)")
      ->capture_default_str();
  cmd->add_option("--benchmarks", o.benchmarks_dir, "folder whose JSON files GET /benchmark returns")
      ->capture_default_str();
  cmd->add_option("--http-threads", o.http_threads,
                  "connection threads (0 = max(32, 2 x queue + workers + batch + 8))")
      ->capture_default_str();
  cmd->add_option("--threads", o.threads, "engine / OCR threads (0 = all cores)")->capture_default_str();
  cmd->add_option("--max-tokens-limit", o.max_tokens_limit, "largest max_tokens a client may ask for")
      ->capture_default_str();
  cmd->add_option("--max-pages", o.max_pages, "pages decoded per uploaded document")->capture_default_str();
  cmd->add_option("--allow-local-files", a->allow_local_files,
                  "let image_url name files below this folder (off by default)");
  cmd->add_option("--shutdown-timeout", o.shutdown_timeout_s,
                  "seconds admitted work may take after SIGTERM before streams are cancelled")
      ->capture_default_str();
  cmd->callback([a] { run_serve(*a); });
}

}  // namespace mv::cli
