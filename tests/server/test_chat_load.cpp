// The serving benchmark's load generator (tools/loadtest, medvision-chat-load): its SSE and Prometheus
// parsing, and the executable run against a server started in this process with the tiny random model,
// checking the report's figures against each other and against the server's own counters.
#include <fmt/format.h>
#include <sys/wait.h>

#include <cstdlib>
#include <numeric>

#include "chat_load.hpp"
#include "server_harness.hpp"

using namespace mv_test_server;
using mv::loadtest::SseParser;

namespace {

int run_shell(const std::string& cmd) {
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

TEST(ChatLoad, SseParserJoinsEventsSplitAnywhere) {
  const std::string stream =
      "data: {\"a\":1}\n\n: a comment\n\ndata: first line\r\ndata:second\r\n\r\nevent: x\ndata: [DONE]\n\n"
      "data: unfinished";
  // Fed one byte at a time and all at once, the events are the same.
  SseParser bytewise;
  std::vector<std::string> events;
  for (char c : stream)
    for (auto& e : bytewise.feed(std::string_view(&c, 1))) events.push_back(e);
  const std::vector<std::string> expected = {"{\"a\":1}", "first line\nsecond", "[DONE]"};
  EXPECT_EQ(events, expected);
  SseParser whole;
  EXPECT_EQ(whole.feed(stream), expected);
  EXPECT_EQ(whole.feed("\n\n"), std::vector<std::string>{"unfinished"});
}

TEST(ChatLoad, PrometheusAndPercentiles) {
  const auto m = mv::loadtest::parse_prometheus(
      "# HELP x y\n# TYPE x counter\nmedvision_decode_batch_size_bucket{le=\"4\"} 17\n"
      "medvision_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 3\n"
      "medvision_engine_tokens_per_second 12.5\nbroken_line\n");
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m.at("medvision_decode_batch_size_bucket{le=\"4\"}"), 17);
  EXPECT_EQ(m.at("medvision_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"}"), 3);
  EXPECT_EQ(m.at("medvision_engine_tokens_per_second"), 12.5);
  EXPECT_DOUBLE_EQ(mv::loadtest::percentile({4, 1, 3, 2}, 50), 2.5);
  EXPECT_DOUBLE_EQ(mv::loadtest::percentile({4, 1, 3, 2}, 100), 4);
  EXPECT_DOUBLE_EQ(mv::loadtest::percentile({1, 2, 3, 4, 5}, 99), 4.96);
  EXPECT_EQ(mv::loadtest::percentile({}, 50), 0);
}

TEST(ChatLoad, WithoutAUrlItSkips) {
  const fs::path out = temp_root() / "chat_load_skip.json";
  const fs::path log = temp_root() / "chat_load_skip.txt";
  EXPECT_EQ(run_shell("env -u MV_SERVE_URL " + std::string(MV_CHAT_LOAD_BINARY) + " --json " + out.string() +
                      " > " + log.string() + " 2>&1"),
            0);
  EXPECT_NE(mv::read_file(log).find("skipped"), std::string::npos);
  EXPECT_FALSE(fs::exists(out));
}

TEST(ChatLoad, ReportAgainstATinyModelServer) {
  const fs::path keys = temp_root() / "chat_load_keys.txt";
  mv::write_file(keys, kKey + "\n");
  ServerOptions o = base_options();
  o.model_dir = tiny_model();
  o.device = "cpu";
  o.max_batch = 4;
  o.max_queue = 8;
  o.api_keys_file = keys;
  Running s(o);
  const int concurrency = 4, requests = 8, max_tokens = 12;
  const fs::path out = temp_root() / "chat_load.json";
  const std::string image = std::string(MV_FIXTURES_DIR) + "/model/images/page_252x196.png";
  const std::string cmd = fmt::format(
      "{} --url http://127.0.0.1:{} --image {} --concurrency {} --requests {} --max-tokens {} --warmup 2 "
      "--warmup-tokens 3 --json {} > {} 2>&1",
      MV_CHAT_LOAD_BINARY, s.port, image, concurrency, requests, max_tokens, out.string(),
      (temp_root() / "chat_load.txt").string());
  // Without the key every request is refused, and the report says so by status.
  ASSERT_EQ(run_shell("MV_API_KEY= " + cmd), 1) << mv::read_file(temp_root() / "chat_load.txt");
  json refused = json::parse(mv::read_file(out));
  EXPECT_EQ(refused["ok"], 0);
  EXPECT_EQ(refused["failures"], json({{"401", requests}}));
  EXPECT_EQ(refused["generated_tokens"], 0);
  EXPECT_TRUE(refused["ttft_seconds"].is_null());

  ASSERT_EQ(run_shell("MV_API_KEY=" + kKey + " " + cmd), 0) << mv::read_file(temp_root() / "chat_load.txt");
  const json r = json::parse(mv::read_file(out));
  EXPECT_EQ(r["concurrency"], concurrency);
  EXPECT_EQ(r["requests"], requests);
  EXPECT_EQ(r["max_tokens"], max_tokens);
  EXPECT_EQ(r["ok"], requests);
  EXPECT_EQ(r["failed"], 0);
  EXPECT_TRUE(r["failures"].empty()) << r["failures"];
  EXPECT_EQ(r["model"], "tiny-qwen");
  EXPECT_EQ(r["image"], "page_252x196.png");
  EXPECT_EQ(r["image_bytes"], fs::file_size(image));
  EXPECT_EQ(r["warmup"]["ok"], 2);
  EXPECT_EQ(r["server"]["device"], "cpu");

  // Per request: usage counts, timings in order, the same prompt everywhere.
  ASSERT_EQ(r["per_request"].size(), static_cast<std::size_t>(requests));
  std::int64_t generated = 0, steps_needed = 0, longest = 0;
  std::vector<double> ttft;
  int finished = 0;
  for (const auto& q : r["per_request"]) {
    EXPECT_EQ(q["status"], 200);
    EXPECT_TRUE(q["ok"].get<bool>());
    EXPECT_EQ(q["tokens_from"], "usage");
    const auto n = q["generated_tokens"].get<std::int64_t>();
    EXPECT_GE(n, 1);
    EXPECT_LE(n, max_tokens);
    if (q["finish_reason"] == "length")
      EXPECT_EQ(n, max_tokens);
    else
      EXPECT_EQ(q["finish_reason"], "stop");
    EXPECT_EQ(q["prompt_tokens"], r["per_request"][0]["prompt_tokens"]);
    EXPECT_GT(q["prompt_tokens"].get<int>(), 20);  // chat template + image pads + prompt
    EXPECT_GE(q["content_chunks"].get<int>(), 1);
    EXPECT_LE(q["content_chunks"].get<std::int64_t>(), n);
    const double t = q["ttft_s"], total = q["latency_s"], first_byte = q["ttfb_s"];
    EXPECT_GT(first_byte, 0.0);
    EXPECT_LE(first_byte, t);
    EXPECT_LE(t, total);
    ttft.push_back(t);
    generated += n;
    steps_needed += n - 1;  // the first token comes from the prefill, each further one from a decode step
    longest = std::max(longest, n);
    finished += q["finish_reason"] == "length" || q["finish_reason"] == "stop";
  }
  EXPECT_EQ(finished, requests);
  EXPECT_EQ(r["generated_tokens"], generated);
  EXPECT_NEAR(r["generated_tokens_per_second"].get<double>(), generated / r["wall_seconds"].get<double>(),
              1e-9);
  EXPECT_DOUBLE_EQ(r["ttft_seconds"]["p50"].get<double>(), mv::loadtest::percentile(ttft, 50));
  EXPECT_DOUBLE_EQ(r["ttft_seconds"]["max"].get<double>(), *std::max_element(ttft.begin(), ttft.end()));
  EXPECT_LE(r["latency_seconds"]["p50"].get<double>(), r["latency_seconds"]["p99"].get<double>());
  EXPECT_LE(r["latency_seconds"]["max"].get<double>(), r["wall_seconds"].get<double>());

  // The server's counters over the measured requests agree with what the clients counted.
  const json& before = r["server_metrics"]["before"];
  const json& during = r["server_metrics"]["during"];
  EXPECT_EQ(before["max_batch"], 4);
  EXPECT_EQ(during["generated_tokens"].get<double>(), static_cast<double>(generated));
  EXPECT_EQ(during["sequences_in_steps"].get<double>(), static_cast<double>(steps_needed));
  const double steps = during["decode_steps"];
  EXPECT_GE(steps, static_cast<double>(longest - 1));
  EXPECT_LE(steps, static_cast<double>(steps_needed));
  EXPECT_NEAR(during["mean_batch_size"].get<double>(), steps_needed / steps, 1e-9);
  EXPECT_LE(during["batch_size_at_most"].get<double>(), 4.0);  // never more than --max-batch
  EXPECT_EQ(during["decode_batch_size_buckets"]["4"].get<double>(), steps);
  EXPECT_EQ(during["prompt_tokens"].get<double>(),
            requests * r["per_request"][0]["prompt_tokens"].get<double>());
}

// A request refused for its key is answered after its body was read: a keep-alive client (as the load
// generator and the OpenAI SDKs are) can send its next request on the same connection.
TEST(ChatLoad, AKeepAliveConnectionSurvivesARefusedPost) {
  const fs::path keys = temp_root() / "chat_load_keys_2.txt";
  mv::write_file(keys, kKey + "\n");
  ServerOptions o = base_options();
  o.api_keys_file = keys;
  Running s(o);
  httplib::Client c("127.0.0.1", s.port);
  c.set_keep_alive(true);
  c.set_read_timeout(30);
  const std::string body = chat_body("Summarise the page.", 4).dump();
  auto r = c.Post("/v1/chat/completions", body, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(r->get_header_value("WWW-Authenticate"), "Bearer");
  r = c.Post("/no/such/route", body, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);  // routes are not disclosed without a key
  // The same connection, now with the key: the server has no model, so the route's own 503.
  r = c.Post("/v1/chat/completions", {{"Authorization", "Bearer " + kKey}}, body, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_NE(r->body.find("--model"), std::string::npos) << r->body;
  r = c.Get("/metrics", {{"Authorization", "Bearer " + kKey}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  const auto m = mv::loadtest::parse_prometheus(r->body);
  EXPECT_EQ(m.at("medvision_http_requests_total{route=\"auth\",status=\"401\"}"), 2);
  EXPECT_EQ(m.count("medvision_http_requests_total{route=\"other\",status=\"400\"}"), 0u);
}
