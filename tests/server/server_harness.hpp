// What the server tests share: a temporary folder, a synthetic document, a tiny random-weight Qwen2.5-VL
// checkpoint (written once per process), a server running on a loopback port, chat request helpers and a
// /metrics reader.
#pragma once
#include <gtest/gtest.h>
#include <httplib.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/file.hpp"
#include "data/synth.hpp"
#include "model/qwen25vl/random_checkpoint.hpp"
#include "server/openai.hpp"
#include "server/server.hpp"

namespace mv_test_server {

namespace fs = std::filesystem;
using json = nlohmann::json;
using mv::server::Server;
using mv::server::ServerOptions;

inline const std::string kKey = "test-key-0123456789abcdef";

inline fs::path temp_root() {
  static const fs::path root = [] {
    fs::path p = fs::temp_directory_path() / ("mv_server_test_" + std::to_string(::getpid()));
    fs::create_directories(p);
    return p;
  }();
  return root;
}

// Removes this process's temporary folder (checkpoint, documents, certificates) at the end.
class RemoveTempRoot : public ::testing::Environment {
 public:
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(temp_root(), ec);
  }
};
[[maybe_unused]] inline const auto* const kRemoveTempRoot =
    ::testing::AddGlobalTestEnvironment(new RemoveTempRoot);

// One synthetic lab report (PNG) and its ground truth, made once.
inline const fs::path& sample_document() {
  static const fs::path doc = [] {
    mv::synth::SynthOptions o;
    o.out_dir = temp_root() / "synth";
    o.count = 1;
    o.seed = 7;
    o.types = {"lab_results"};
    o.threads = 1;
    mv::synth::run_synth(o);
    for (const auto& e : fs::directory_iterator(o.out_dir))
      if (e.path().extension() == ".png") return e.path();
    throw std::runtime_error("synth wrote no PNG");
  }();
  return doc;
}

// A tiny random Qwen2.5-VL checkpoint (2 layers, hidden 32, the real vocabulary), written once.
inline const fs::path& tiny_model() {
  static const fs::path dir = [] {
    const fs::path out = temp_root() / "tiny-qwen";
    auto config = mv::qwen25vl::random_checkpoint_config(std::string(MV_FIXTURES_DIR) +
                                                         "/model/tied_bf16_image/config.json");
    mv::qwen25vl::RandomCheckpointOptions o;
    o.seed = 101;
    o.init_std = 0.3;
    o.threads = 1;
    mv::qwen25vl::write_random_checkpoint(config, out, o);
    return out;
  }();
  return dir;
}

inline std::string read_bytes(const fs::path& p) { return mv::read_file(p); }

// A client of the server on the loopback `port`, with the test key unless `with_key` is false.
inline httplib::Client loopback_client(int port, bool with_key = true) {
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(120);
  if (with_key) c.set_default_headers({{"Authorization", "Bearer " + kKey}});
  return c;
}

// A running server on a loopback port, stopped on destruction.
struct Running {
  explicit Running(ServerOptions o) : server(std::make_unique<Server>(std::move(o))) {
    port = server->bind();
    thread = std::thread([this] { server->run(); });
  }
  ~Running() { stop(); }
  void stop() {
    if (server) {
      server->stop();
      thread.join();
      server.reset();
    }
  }
  httplib::Client client(bool with_key = true) const { return loopback_client(port, with_key); }
  std::unique_ptr<Server> server;
  std::thread thread;
  int port = 0;
};

inline ServerOptions base_options() {
  ServerOptions o;
  o.host = "127.0.0.1";
  o.port = 0;
  o.backend = "ocr";
  o.max_batch = 1;
  o.threads = 1;
  o.http_threads = 12;
  o.shutdown_timeout_s = 10;
  return o;
}

inline json parse(const httplib::Result& r) {
  EXPECT_TRUE(r) << "no response";
  if (!r) return {};
  auto j = json::parse(r->body, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << r->body;
  return j;
}

inline std::string data_url(const fs::path& image) {
  return "data:image/png;base64," + mv::server::base64_encode(read_bytes(image));
}

inline json chat_body(const std::string& text, int max_tokens, double temperature = 0.0) {
  return {{"model", "tiny-qwen"},
          {"messages", json::array({{{"role", "user"}, {"content", text}}})},
          {"max_tokens", max_tokens},
          {"temperature", temperature}};
}

// A POST /v1/chat/completions of `body` with the test key, for a client that reads the answer as it comes.
inline httplib::Request chat_request(const json& body) {
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/chat/completions";
  req.headers = {{"Authorization", "Bearer " + kKey}};
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  return req;
}

// Posts a streamed completion; returns the SSE `data:` payloads. `stop_after` > 0 hangs up after that
// many bytes (a client going away).
inline std::vector<std::string> stream_chat(int port, const json& body, std::size_t stop_after = 0,
                                            std::function<void()> on_first = nullptr, int* status = nullptr) {
  httplib::Client c = loopback_client(port, false);
  httplib::Request req = chat_request(body);
  std::string buf;
  bool first = true;
  req.content_receiver = [&](const char* d, std::size_t n, std::uint64_t, std::uint64_t) {
    buf.append(d, n);
    if (first && on_first) {
      first = false;
      on_first();
    }
    return stop_after == 0 || buf.size() < stop_after;
  };
  httplib::Response res;
  httplib::Error err;
  c.send(req, res, err);
  if (status) *status = res.status;
  std::vector<std::string> events;
  std::size_t pos = 0;
  while ((pos = buf.find("data: ", pos)) != std::string::npos) {
    const auto end = buf.find("\n\n", pos);
    if (end == std::string::npos) break;
    events.push_back(buf.substr(pos + 6, end - pos - 6));
    pos = end + 2;
  }
  return events;
}

// The value of the Prometheus sample `key` (name and labels) in a /metrics body; -1 when it is absent.
inline double metric(const std::string& body, const std::string& key) {
  const auto pos = body.find("\n" + key + " ");
  return pos == std::string::npos ? -1.0 : std::stod(body.substr(pos + key.size() + 2));
}

// The value of the sample `key` on the running server's /metrics; -1 when it is absent or unreachable.
inline double metric(const Running& s, const std::string& key) {
  auto r = s.client().Get("/metrics");
  return r ? metric(r->body, key) : -1.0;
}

// A streamed completion that runs until stop() (then the client closes the connection). `ok` says whether
// the answer started (or the request ended) within 60 seconds.
struct HeldStream {
  HeldStream(int port, const std::string& prompt, int max_tokens) {
    json body = chat_body(prompt, max_tokens);
    body["stream"] = true;
    auto started_f = started.get_future();
    thread = std::thread([this, port, body] {
      httplib::Client c = loopback_client(port, false);
      httplib::Request req = chat_request(body);
      bool first = true;
      req.content_receiver = [&](const char*, std::size_t, std::uint64_t, std::uint64_t) {
        if (first) {
          first = false;
          started.set_value();
        }
        return !hang_up.load();
      };
      httplib::Response res;
      httplib::Error err;
      c.send(req, res, err);
      if (first) started.set_value();
    });
    ok = started_f.wait_for(std::chrono::seconds(60)) == std::future_status::ready;
  }
  ~HeldStream() { stop(); }
  HeldStream(const HeldStream&) = delete;
  HeldStream& operator=(const HeldStream&) = delete;
  void stop() {
    hang_up = true;
    if (thread.joinable()) thread.join();
  }
  std::promise<void> started;
  std::atomic<bool> hang_up{false};
  std::thread thread;
  bool ok = false;
};

}  // namespace mv_test_server
