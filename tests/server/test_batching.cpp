// Continuous batching: the BatchScheduler against the serial generator (greedy and seeded sampling give the
// same text whether a sequence runs alone or shares decode steps), cancellation freeing a place in the batch,
// admission control, and through HTTP: concurrent chat requests batching, a client hanging up, and the VLM
// extractor sharing the one engine with the chat routes.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/error.hpp"
#include "io/image.hpp"
#include "model/qwen25vl/generator.hpp"
#include "server/generation.hpp"
#include "server/server_harness.hpp"

using namespace mv_test_server;
using mv::server::BatchOptions;
using mv::server::BatchScheduler;
using mv::server::ChatModel;
using mv::server::GenerationOutput;
using mv::server::GenerationRequest;

namespace {

ChatModel& shared_model() {
  static std::unique_ptr<ChatModel> m = ChatModel::load(tiny_model(), 1, "cpu");
  return *m;
}

GenerationRequest text_request(const std::string& text, int max_tokens) {
  GenerationRequest g;
  mv::ChatMessage user;
  user.role = "user";
  user.parts.push_back({mv::ChatPart::Kind::kText, text});
  g.messages.push_back(std::move(user));
  g.max_tokens = max_tokens;
  return g;
}

GenerationRequest image_request(const std::string& text, int max_tokens) {
  GenerationRequest g = text_request(text, max_tokens);
  g.images.push_back(mv::load_image(std::string(MV_FIXTURES_DIR) + "/model/images/form_150x120.png"));
  g.messages[0].parts.insert(g.messages[0].parts.begin(), {mv::ChatPart::Kind::kImage, {}});
  return g;
}

// The serial path: the engine's own generator, one sequence alone.
mv::qwen25vl::GenerateResult serial(const GenerationRequest& g) {
  ChatModel& m = shared_model();
  mv::qwen25vl::GenerateOptions go;
  go.max_new_tokens = g.max_tokens;
  go.sampling = g.sampling;
  go.stop_ids = g.stop_ids;
  return mv::qwen25vl::generate(*m.model, *m.tokenizer, g.messages, g.images, m.preprocess, go);
}

// Requests of different lengths, one with an image; the first ignores end-of-text so that it is still
// running when the others join.
std::vector<GenerationRequest> mixed_requests() {
  std::vector<GenerationRequest> r;
  r.push_back(text_request("Tell me a long story about a hospital.", 40));
  r.back().stop_ids.clear();
  r.push_back(text_request("Hello there", 12));
  r.push_back(image_request("What does the form say?", 9));
  r.push_back(text_request("List three medications.", 20));
  r.push_back(text_request("x", 5));
  return r;
}

// Submits `requests` so that they share decode steps: the first sequence's first text piece holds the engine
// until all the others are admitted.
std::vector<GenerationOutput> run_batched(BatchScheduler& s, std::vector<GenerationRequest> requests) {
  std::promise<void> gate;
  auto opened = gate.get_future().share();
  std::vector<std::future<GenerationOutput>> futures;
  futures.push_back(s.submit(requests[0], [opened](std::string_view) {
    opened.wait();
    return true;
  }));
  for (std::size_t i = 1; i < requests.size(); ++i) futures.push_back(s.submit(requests[i], nullptr));
  gate.set_value();
  std::vector<GenerationOutput> out;
  for (auto& f : futures) out.push_back(f.get());
  return out;
}

// A non-streamed chat completion sent over a plain socket; the test closes the socket (the client hangs up
// before the answer is ready). -1 when the connection fails.
int post_chat_raw(int port, const json& body) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const std::string payload = body.dump();
  const std::string request =
      "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + kKey +
      "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(payload.size()) + "\r\n\r\n" +
      payload;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Waits until `key` reads `value` (the engine's gauges move between decode steps).
bool wait_for_metric(Running& s, const std::string& key, double value) {
  for (int i = 0; i < 400; ++i) {
    if (metric(s, key) == value) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  return false;
}

}  // namespace

TEST(BatchScheduler, GreedyTextEqualsTheSerialPathWhileSharingDecodeSteps) {
  auto requests = mixed_requests();
  std::vector<mv::qwen25vl::GenerateResult> expected;
  for (const auto& g : requests) expected.push_back(serial(g));
  BatchOptions o;
  o.max_batch = 8;
  BatchScheduler s(shared_model(), o, nullptr);
  auto got = run_batched(s, requests);
  for (std::size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(got[i].text, expected[i].text);
    EXPECT_EQ(got[i].finish_reason, expected[i].finish_reason);
    EXPECT_EQ(got[i].completion_tokens, static_cast<std::int64_t>(expected[i].generated_ids.size()));
    EXPECT_EQ(got[i].prompt_tokens, static_cast<std::int64_t>(expected[i].prompt_ids.size()));
  }
  EXPECT_EQ(got[0].completion_tokens, 40);  // ran to its budget, so the others joined it
  const auto stats = s.stats();
  EXPECT_GE(stats.largest_batch, 4) << "the sequences did not share decode steps";
  EXPECT_EQ(stats.sequences, requests.size());
  EXPECT_EQ(s.active(), 0);
  EXPECT_EQ(s.waiting(), 0);
}

TEST(BatchScheduler, EachSequenceSamplesWithItsOwnSeedAndSettings) {
  auto requests = mixed_requests();
  for (std::size_t i = 0; i < requests.size(); ++i) {
    auto& p = requests[i].sampling;
    p.do_sample = true;
    p.temperature = 0.7f + 0.1f * static_cast<float>(i);
    p.top_p = i % 2 ? 0.9f : 1.0f;
    p.top_k = i == 3 ? 40 : 0;
    p.repetition_penalty = i == 1 ? 1.3f : 1.0f;
    p.seed = 1000 + i;
  }
  std::vector<mv::qwen25vl::GenerateResult> expected;
  for (const auto& g : requests) expected.push_back(serial(g));
  BatchScheduler s(shared_model(), {}, nullptr);
  auto got = run_batched(s, requests);
  for (std::size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(got[i].text, expected[i].text);
    EXPECT_EQ(got[i].completion_tokens, static_cast<std::int64_t>(expected[i].generated_ids.size()));
  }
  EXPECT_GE(s.stats().largest_batch, 4);
}

TEST(BatchScheduler, StopStringsEndTheirSequenceOnly) {
  const GenerationRequest base = text_request("Hello there", 16);
  const std::string whole = serial(base).text;
  ASSERT_GE(whole.size(), 4u);
  std::size_t at = 2;  // a stop string made of the whole UTF-8 character at or after byte 2
  while (at < whole.size() && (static_cast<unsigned char>(whole[at]) & 0xC0) == 0x80) ++at;
  ASSERT_LT(at, whole.size());
  std::size_t len = 1;
  while (at + len < whole.size() && (static_cast<unsigned char>(whole[at + len]) & 0xC0) == 0x80) ++len;
  GenerationRequest stopped = base;
  stopped.stop = {whole.substr(at, len)};
  BatchScheduler s(shared_model(), {}, nullptr);
  std::string streamed;
  auto f1 = s.submit(stopped, [&](std::string_view p) {
    streamed += p;
    return true;
  });
  auto f2 = s.submit(base, nullptr);
  const auto a = f1.get(), b = f2.get();
  EXPECT_EQ(a.text, whole.substr(0, whole.find(stopped.stop[0])));
  EXPECT_EQ(streamed, a.text);  // the stop string never reached the sink
  EXPECT_EQ(a.finish_reason, "stop");
  EXPECT_EQ(b.text, whole);
}

TEST(BatchScheduler, ACancelledSequenceFreesItsPlaceForTheNextOne) {
  BatchOptions o;
  o.max_batch = 1;
  o.max_queue = 2;
  BatchScheduler s(shared_model(), o, nullptr);
  auto cancel = std::make_shared<std::atomic<bool>>(false);
  GenerationRequest longer = text_request("Go on and on", 5000);
  longer.stop_ids.clear();
  longer.cancelled = [cancel] { return cancel->load(); };
  std::atomic<int> pieces{0};
  auto fa = s.submit(longer, [&](std::string_view) {
    ++pieces;
    return true;
  });
  while (pieces.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  // B waits for the only place; C, cancelled while waiting, never runs.
  auto fb = s.submit(text_request("Hello there", 4), nullptr);
  GenerationRequest c = text_request("never", 4);
  c.cancelled = [] { return true; };
  auto fc = s.submit(c, nullptr);
  EXPECT_EQ(s.active(), 1);
  EXPECT_GE(s.waiting(), 1);
  cancel->store(true);
  const auto a = fa.get();
  EXPECT_EQ(a.finish_reason, "cancelled");
  EXPECT_LT(a.completion_tokens, 5000);
  EXPECT_EQ(fb.get().completion_tokens, serial(text_request("Hello there", 4)).generated_ids.size());
  const auto cc = fc.get();
  EXPECT_EQ(cc.finish_reason, "cancelled");
  EXPECT_EQ(cc.completion_tokens, 0);
  EXPECT_EQ(s.stats().cancelled, 2u);
  EXPECT_EQ(s.active(), 0);
}

TEST(BatchScheduler, AdmissionIsBoundedAndClosingRefusesNewWork) {
  BatchOptions o;
  o.max_batch = 1;
  o.max_queue = 1;
  BatchScheduler s(shared_model(), o, nullptr);
  auto cancel = std::make_shared<std::atomic<bool>>(false);
  GenerationRequest longer = text_request("Go on and on", 5000);
  longer.stop_ids.clear();
  longer.cancelled = [cancel] { return cancel->load(); };
  auto fa = s.submit(longer, nullptr);
  auto fb = s.submit(text_request("Hello there", 3), nullptr);  // the one waiting place
  try {
    s.submit(text_request("too many", 3), nullptr);
    ADD_FAILURE() << "admitted over capacity";
  } catch (const mv::server::Rejected& r) {
    EXPECT_EQ(r.status, 429);
    EXPECT_GE(r.retry_after, 1);
  }
  // Bad requests are refused before admission, with a message naming the problem.
  try {
    s.submit(text_request("x", 0), nullptr);
    ADD_FAILURE() << "max_tokens 0 accepted";
  } catch (const mv::Error& e) {
    EXPECT_NE(std::string(e.what()).find("max_tokens"), std::string::npos);
  }
  cancel->store(true);
  EXPECT_EQ(fa.get().finish_reason, "cancelled");
  EXPECT_EQ(fb.get().completion_tokens, 3);
  s.close();
  try {
    s.submit(text_request("late", 3), nullptr);
    ADD_FAILURE() << "admitted after close";
  } catch (const mv::server::Rejected& r) {
    EXPECT_EQ(r.status, 503);
  }
}

TEST(ServerBatching, ConcurrentChatRequestsShareDecodeStepsAndMatchOneAtATime) {
  ServerOptions o = base_options();
  o.model_dir = tiny_model();
  o.max_batch = 4;
  o.max_queue = 8;
  Running s(o);
  auto c = s.client();
  const std::vector<std::pair<std::string, int>> prompts = {
      {"Hello there", 12}, {"Name a lab test.", 9}, {"Summarise the discharge.", 14}};
  std::vector<json> alone;
  for (const auto& [text, n] : prompts) {
    auto r = c.Post("/v1/chat/completions", chat_body(text, n).dump(), "application/json");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    alone.push_back(parse(r));
  }
  EXPECT_EQ(metric(s, "medvision_decode_batch_size_bucket{le=\"1\"}"),
            metric(s, "medvision_decode_batch_size_count"));  // one at a time: every step had one sequence

  // A long stream keeps the engine busy; the three requests join it and each other.
  HeldStream holder(s.port, "Go on and on", 3000);
  ASSERT_TRUE(holder.ok) << "the long stream did not start";
  std::vector<std::future<json>> together;
  for (const auto& [text, n] : prompts)
    together.push_back(std::async(std::launch::async, [&s, text = text, n = n] {
      auto r = s.client().Post("/v1/chat/completions", chat_body(text, n).dump(), "application/json");
      return r && r->status == 200 ? parse(r) : json();
    }));
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    json j = together[i].get();
    ASSERT_FALSE(j.is_null()) << "request " << i << " failed";
    EXPECT_EQ(j["choices"][0]["message"]["content"], alone[i]["choices"][0]["message"]["content"]) << i;
    EXPECT_EQ(j["choices"][0]["finish_reason"], alone[i]["choices"][0]["finish_reason"]) << i;
    EXPECT_EQ(j["usage"], alone[i]["usage"]) << i;
  }
  const double single = metric(s, "medvision_decode_batch_size_bucket{le=\"1\"}");
  const double steps = metric(s, "medvision_decode_batch_size_count");
  EXPECT_GT(steps, single) << "no decode step had more than one sequence";
  EXPECT_GT(metric(s, "medvision_engine_tokens_per_second"), 0.0);
  holder.stop();
  EXPECT_TRUE(wait_for_metric(s, "medvision_queue_running{queue=\"engine\"}", 0.0));
}

TEST(ServerBatching, AClientThatHangsUpFreesItsPlaceInTheBatch) {
  ServerOptions o = base_options();
  o.model_dir = tiny_model();
  o.max_batch = 2;
  o.max_queue = 4;
  Running s(o);
  HeldStream a(s.port, "Go on and on", 3000);
  HeldStream b(s.port, "Keep talking", 3000);
  ASSERT_TRUE(a.ok && b.ok);
  ASSERT_TRUE(wait_for_metric(s, "medvision_queue_running{queue=\"engine\"}", 2.0));
  // The batch is full: a third request waits.
  auto third = std::async(std::launch::async, [&s] {
    auto r = s.client().Post("/v1/chat/completions", chat_body("Hello there", 4).dump(), "application/json");
    return r ? r->status : -1;
  });
  ASSERT_TRUE(wait_for_metric(s, "medvision_queue_depth{queue=\"engine\"}", 1.0));
  EXPECT_EQ(third.wait_for(std::chrono::milliseconds(200)), std::future_status::timeout);
  a.stop();  // hang up: its place goes to the waiting request while b still streams
  EXPECT_EQ(third.get(), 200);
  EXPECT_EQ(metric(s, "medvision_queue_running{queue=\"engine\"}"), 1.0);
  EXPECT_EQ(metric(s, "medvision_sequences_total{finish_reason=\"cancelled\"}"), 1.0);
  b.stop();
  EXPECT_TRUE(wait_for_metric(s, "medvision_queue_running{queue=\"engine\"}", 0.0));
  EXPECT_EQ(metric(s, "medvision_sequences_total{finish_reason=\"cancelled\"}"), 2.0);
  EXPECT_LT(metric(s, "medvision_generated_tokens_total"), 4000.0);
}

TEST(ServerBatching, ANonStreamedClientThatHangsUpFreesItsPlaceInTheBatch) {
  ServerOptions o = base_options();
  o.model_dir = tiny_model();
  o.max_batch = 1;
  o.max_queue = 4;
  Running s(o);
  // A long non-streamed completion takes the one place in the batch.
  const int fd = post_chat_raw(s.port, chat_body("Go on and on", 3000));
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(wait_for_metric(s, "medvision_queue_running{queue=\"engine\"}", 1.0));
  // A second request waits for that place.
  auto second = std::async(std::launch::async, [&s] {
    auto r = s.client().Post("/v1/chat/completions", chat_body("Hello there", 4).dump(), "application/json");
    return r ? r->status : -1;
  });
  ASSERT_TRUE(wait_for_metric(s, "medvision_queue_depth{queue=\"engine\"}", 1.0));
  ::close(fd);  // hang up: the first sequence is cancelled and the waiting request gets the place
  EXPECT_EQ(second.get(), 200);
  EXPECT_EQ(metric(s, "medvision_sequences_total{finish_reason=\"cancelled\"}"), 1.0);
  EXPECT_LT(metric(s, "medvision_generated_tokens_total"), 3000.0);
  // The abandoned request is recorded as 499 (client closed the request), not as an answer or a fault.
  EXPECT_TRUE(wait_for_metric(
      s, "medvision_http_requests_total{route=\"/v1/chat/completions\",status=\"499\"}", 1.0));
  EXPECT_TRUE(wait_for_metric(s, "medvision_queue_running{queue=\"engine\"}", 0.0));
}

TEST(ServerBatching, VlmExtractionAndChatShareOneEngine) {
  std::ostringstream captured;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(captured);
  auto previous = spdlog::default_logger();
  const auto level = spdlog::get_level();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink));
  spdlog::set_level(spdlog::level::info);
  ServerOptions o = base_options();
  o.model_dir = tiny_model();
  o.backend = "vlm";
  o.max_batch = 4;
  // Also the extraction's answer budget. The chat stream below gets the whole budget and is stopped by
  // the test, so it is still running when the extraction reaches the engine even on a loaded machine.
  o.max_tokens_limit = 1000;
  auto s = std::make_unique<Running>(o);
  spdlog::set_default_logger(previous);
  spdlog::set_level(level);
  // One load of the weights for both the extractor and the chat routes.
  const std::string log = captured.str();
  std::size_t loads = 0;
  for (auto pos = log.find("model loaded:"); pos != std::string::npos;
       pos = log.find("model loaded:", pos + 1))
    ++loads;
  EXPECT_EQ(loads, 1u) << log;

  auto c = s->client();
  EXPECT_EQ(parse(c.Get("/health"))["backend"], "vlm");
  // A chat stream with the same budget, started first: the extraction joins it.
  HeldStream holder(s->port, "Go on and on", 1000);
  ASSERT_TRUE(holder.ok);
  const double generations = metric(*s, "medvision_generations_total");
  const double prompt_tokens = metric(*s, "medvision_prompt_tokens_total");
  const std::string png = read_bytes(std::string(MV_FIXTURES_DIR) + "/model/images/page_252x196.png");
  auto r = c.Post("/extract", httplib::MultipartFormDataItems{{"file", png, "p.png", "image/png"}});
  ASSERT_TRUE(r);
  // A random-weight model does not write the schema's JSON: the server says the model failed (502), not
  // that the upload was bad.
  EXPECT_EQ(r->status, 502) << r->body;
  EXPECT_EQ(parse(r)["error"]["type"], "invalid_model_output");
  // The extraction ran on the engine (a generation with the page's image tokens in its prompt; the stream
  // may have finished too) while the chat stream was running, so they shared decode steps.
  EXPECT_GE(metric(*s, "medvision_generations_total"), generations + 1);
  EXPECT_GT(metric(*s, "medvision_prompt_tokens_total") - prompt_tokens, 50.0);
  EXPECT_GT(metric(*s, "medvision_decode_batch_size_count"),
            metric(*s, "medvision_decode_batch_size_bucket{le=\"1\"}"));
  holder.stop();
  s->stop();
}
