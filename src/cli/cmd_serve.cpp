// medvision serve: the HTTP service (extraction API, OpenAI-compatible API, metrics, web page).
// SIGTERM / SIGINT stop it gracefully: admitted requests finish, new ones get 503, then it exits.
#include <pthread.h>
#include <signal.h>

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

void run_serve(ServeArgs& a) {
  if (!a.allow_local_files.empty()) a.o.allow_local_files = a.allow_local_files;
  // Block the stop signals in every thread (the server's threads inherit the mask); one thread waits for them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  server::Server srv(a.o);
  const int port = srv.bind();
  std::fprintf(stderr, "medvision: serving on %s://%s:%d (Ctrl-C or SIGTERM to stop)\n", srv.tls() ? "https" : "http",
               a.o.host.c_str(), port);
  std::fflush(stderr);
  std::thread waiter([&srv, set] {
    int sig = 0;
    sigwait(&set, &sig);
    srv.stop();
  });
  srv.run();
  srv.stop();
  pthread_kill(waiter.native_handle(), SIGTERM);  // release the waiter if no signal came
  waiter.join();
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  auto* cmd = app.add_subcommand("serve", "Run the HTTP service: extraction API, OpenAI-compatible API, web page");
  auto& o = a->o;
  cmd->add_option("--host", o.host, "address to listen on (0.0.0.0 for all interfaces)")->capture_default_str();
  cmd->add_option("--port", o.port, "TCP port (0 = any free port)")->capture_default_str();
  cmd->add_option("--model", o.model_dir, "Qwen2.5-VL checkpoint folder: enables /analyze and /v1/chat/completions");
  cmd->add_option("--backend", o.backend, "extraction backend: auto (vlm with --model, else ocr), ocr or vlm")
      ->capture_default_str();
  cmd->add_option("--device", o.device, "auto, cpu or cuda")->capture_default_str();
  cmd->add_option("--api-keys", o.api_keys_file, "file with one API key per line; requests must carry one");
  cmd->add_option("--tls-cert", o.tls_cert, "PEM certificate (chain): serve HTTPS");
  cmd->add_option("--tls-key", o.tls_key, "PEM private key of --tls-cert");
  cmd->add_option("--max-upload-mb", o.max_upload_mb, "largest uploaded document or image, MiB")->capture_default_str();
  cmd->add_option("--max-queue", o.max_queue, "requests that may wait per queue; more get 429 with Retry-After")
      ->capture_default_str();
  cmd->add_option("--max-batch", o.max_batch,
                  "vlm: sequences per decode step (1 until batched decode lands); ocr: concurrent extractions (0 = "
                  "cores)")
      ->capture_default_str();
  cmd->add_option("--benchmarks", o.benchmarks_dir, "folder whose JSON files GET /benchmark returns")
      ->capture_default_str();
  cmd->add_option("--http-threads", o.http_threads, "connection threads (0 = max(32, queue + workers + 8))")
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
