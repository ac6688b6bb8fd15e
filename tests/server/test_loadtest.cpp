// Load test of the HTTP service (not part of CI: runs only with MV_LOADTEST=1).
//
//   MV_LOADTEST=1 ./build/tests/test_server --gtest_filter=LoadTest.*
//
// Starts `medvision serve --backend ocr` as a separate process on a loopback port, then CLIENTS threads
// (each with its own keep-alive connection) send REQUESTS POST /extract in total. 429/503 answers are the
// intended back-pressure: the client waits Retry-After seconds and sends the same request again; anything
// else that is not 200 is a failure. Latency is measured per accepted request (send to full response).
// The server's resident memory comes from its /metrics (process_resident_memory_bytes) before and after.
// Environment: MV_LOADTEST_REQUESTS (1000), MV_LOADTEST_CLIENTS (32), MV_LOADTEST_DOCUMENT (a PNG; default
// the 252x196 fixture page), MV_LOADTEST_SERVER_ARGS (extra serve flags), MV_LOADTEST_OUT (JSON report,
// default benchmarks/server_loadtest.json).
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/file.hpp"
#include "core/system_info.hpp"
#include "core/time_stats.hpp"

namespace {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : fallback;
}

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  const int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

double metric(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
  return -1;
}

}  // namespace

TEST(LoadTest, ConcurrentExtractRequests) {
  if (!std::getenv("MV_LOADTEST")) GTEST_SKIP() << "set MV_LOADTEST=1 to run the load test";
  const int requests = env_int("MV_LOADTEST_REQUESTS", 1000);
  const int clients = env_int("MV_LOADTEST_CLIENTS", 32);
  const std::string document = std::getenv("MV_LOADTEST_DOCUMENT")
                                   ? std::getenv("MV_LOADTEST_DOCUMENT")
                                   : std::string(MV_FIXTURES_DIR) + "/model/images/page_252x196.png";
  const std::string extra =
      std::getenv("MV_LOADTEST_SERVER_ARGS") ? std::getenv("MV_LOADTEST_SERVER_ARGS") : "";
  const std::string out_path = std::getenv("MV_LOADTEST_OUT")
                                   ? std::getenv("MV_LOADTEST_OUT")
                                   : std::string(MEDVISION_SOURCE_DIR) + "/benchmarks/server_loadtest.json";
  const std::string body = mv::read_file(document);
  const int port = free_port();

  // The server, as a separate process.
  const std::string cmd = std::string(MV_BINARY) + " serve --backend ocr --host 127.0.0.1 --port " +
                          std::to_string(port) + " " + extra;
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  httplib::Client probe("127.0.0.1", port);
  bool up = false;
  for (int i = 0; i < 300 && !up; ++i) {
    auto r = probe.Get("/health");
    up = r && r->status == 200;
    if (!up) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(up) << "the server did not start: " << cmd;
  const auto metrics_before = probe.Get("/metrics");
  ASSERT_TRUE(metrics_before);
  const double rss_before = metric(metrics_before->body, "process_resident_memory_bytes");

  std::atomic<int> next{0}, ok{0}, failures{0}, backpressure{0};
  std::mutex mutex;
  std::vector<double> latencies;
  std::vector<std::string> failure_samples;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c)
    threads.emplace_back([&] {
      httplib::Client client("127.0.0.1", port);
      client.set_keep_alive(true);
      client.set_read_timeout(600);
      const httplib::MultipartFormDataItems items = {{"file", body, "page.png", "image/png"}};
      while (next.fetch_add(1) < requests) {
        for (;;) {
          const auto s = std::chrono::steady_clock::now();
          auto r = client.Post("/extract", items);
          const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - s).count();
          if (r && r->status == 200) {
            ++ok;
            std::lock_guard lock(mutex);
            latencies.push_back(seconds);
            break;
          }
          if (r && (r->status == 429 || r->status == 503)) {
            ++backpressure;
            const int wait = std::max(1, std::atoi(r->get_header_value("Retry-After").c_str()));
            std::this_thread::sleep_for(std::chrono::seconds(wait));
            continue;
          }
          ++failures;
          std::lock_guard lock(mutex);
          if (failure_samples.size() < 5)
            failure_samples.push_back(r ? std::to_string(r->status) + " " + r->body.substr(0, 200)
                                        : "transport error " + std::to_string(static_cast<int>(r.error())));
          break;
        }
      }
    });
  for (auto& t : threads) t.join();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto metrics_after = probe.Get("/metrics");
  ASSERT_TRUE(metrics_after);
  const double rss_after = metric(metrics_after->body, "process_resident_memory_bytes");
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);

  const auto cpu = mv::query_cpu();
  nlohmann::json report = {
      {"test", "POST /extract, OCR backend, loopback"},
      {"machine", {{"cpu", cpu.model}, {"logical_cores", cpu.logical_cores}}},
      {"document", std::filesystem::path(document).filename().string()},
      {"document_bytes", body.size()},
      {"server_command", "medvision" + cmd.substr(cmd.rfind(" serve "))},
      {"clients", clients},
      {"requests", requests},
      {"ok", ok.load()},
      {"failures", failures.load()},
      {"backpressure_answers", backpressure.load()},
      {"failure_samples", failure_samples},
      {"wall_seconds", wall},
      {"requests_per_second", ok.load() / wall},
      {"latency_seconds",
       {{"p50", mv::percentile(latencies, 50)},
        {"p90", mv::percentile(latencies, 90)},
        {"p99", mv::percentile(latencies, 99)},
        {"max", latencies.empty() ? 0.0 : *std::max_element(latencies.begin(), latencies.end())}}},
      {"server_rss_mib", {{"before", rss_before / 1048576.0}, {"after", rss_after / 1048576.0}}},
      {"server_exit", WIFEXITED(status) ? WEXITSTATUS(status) : -1}};
  mv::write_file(out_path, report.dump(2) + "\n");
  std::printf("%s\n", report.dump(2).c_str());
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(ok.load(), requests);
  EXPECT_EQ(WIFEXITED(status) ? WEXITSTATUS(status) : -1, 0) << "the server did not exit cleanly on SIGTERM";
}
