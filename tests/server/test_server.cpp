// Integration tests of the HTTP service on a loopback port: the OCR extraction backend on a synthetic
// document, a tiny random-weight Qwen2.5-VL (real engine, real tokenizer) for the chat routes, API keys,
// TLS with a self-signed certificate made here, streaming, admission control and shutdown.
#include <gtest/gtest.h>
#include <httplib.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>

#include "core/error.hpp"
#include "core/file.hpp"
#include "data/synth.hpp"
#include "extract/schema.hpp"
#include "model/qwen25vl/random_checkpoint.hpp"
#include "server/generation.hpp"
#include "server/openai.hpp"
#include "server/server.hpp"
#include "server/server_harness.hpp"
#include "server/work_queue.hpp"

using namespace mv_test_server;

namespace {

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const fs::path bench = temp_root() / "benchmarks";
    fs::create_directories(bench / "sub");
    mv::write_file(bench / "environment.json", R"({"cpu": "test"})");
    mv::write_file(bench / "sub" / "evaluation.json", R"({"f1": 0.5})");
    mv::write_file(bench / "broken.json", "{not json");
    mv::write_file(bench / "notes.txt", "ignored");
    mv::write_file(temp_root() / "keys.txt", "# keys\n\n" + kKey + "\nsecond-key-abcdefghijklmnop\n");
    ServerOptions o = base_options();
    o.model_dir = tiny_model();
    o.api_keys_file = temp_root() / "keys.txt";
    o.benchmarks_dir = bench;
    o.max_upload_mb = 1;
    o.max_queue = 4;
    s_ = new Running(o);
  }
  static void TearDownTestSuite() {
    delete s_;
    s_ = nullptr;
  }
  static Running* s_;
};
Running* ServerTest::s_ = nullptr;

}  // namespace

TEST(WorkQueue, AdmitsUpToCapacityAndRunsEveryAcceptedJob) {
  mv::server::WorkQueue q("t", 1, 2);
  std::promise<void> gate;
  auto opened = gate.get_future().share();
  std::atomic<int> ran{0};
  auto job = [&] {
    opened.wait();
    ++ran;
  };
  EXPECT_EQ(q.try_submit(job), mv::server::WorkQueue::Admit::kAccepted);  // taken by the worker
  while (q.running() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(q.try_submit(job), mv::server::WorkQueue::Admit::kAccepted);
  EXPECT_EQ(q.try_submit(job), mv::server::WorkQueue::Admit::kAccepted);
  EXPECT_EQ(q.waiting(), 2);
  EXPECT_EQ(q.try_submit(job), mv::server::WorkQueue::Admit::kFull);
  EXPECT_GE(q.retry_after_seconds(), 1);
  gate.set_value();
  q.close();
  EXPECT_EQ(ran.load(), 3);
  EXPECT_EQ(q.try_submit(job), mv::server::WorkQueue::Admit::kClosed);
}

TEST(StopMatcher, CutsAtTheStopStringAcrossPieces) {
  mv::server::StopMatcher m({"END", "##"});
  std::string out;
  EXPECT_FALSE(m.push("abc E", out));
  EXPECT_EQ(out, "abc ");  // "E" may start "END": held back
  EXPECT_FALSE(m.push("Nx", out));
  EXPECT_EQ(out, "abc ENx");
  EXPECT_TRUE(m.push("y#", out) || m.push("#tail", out));
  EXPECT_EQ(out, "abc ENxy");
  EXPECT_TRUE(m.stopped());
  mv::server::StopMatcher none({});
  std::string all;
  none.push("a", all);
  none.finish(all);
  EXPECT_EQ(all, "a");
}

TEST(OpenAi, ParsesPartsAndRejectsBadFields) {
  mv::server::ChatLimits limits;
  const std::string png = read_bytes(std::string(MV_FIXTURES_DIR) + "/model/images/form_150x120.png");
  json body = {{"messages",
                {{{"role", "system"}, {"content", "Be brief."}},
                 {{"role", "user"},
                  {"content",
                   {{{"type", "image_url"},
                     {"image_url", {{"url", "data:image/png;base64," + mv::server::base64_encode(png)}}}},
                    {{"type", "text"}, {"text", "What is this?"}}}}}}},
               {"max_tokens", 7},
               {"temperature", 0.5},
               {"top_p", 0.9},
               {"seed", 3},
               {"stop", {"a", "b"}},
               {"stream", true},
               {"response_format", {{"type", "json_object"}}}};
  auto req = mv::server::parse_chat_request(body, limits);
  ASSERT_EQ(req.generation.images.size(), 1u);
  EXPECT_EQ(req.generation.images[0].width, 150);
  EXPECT_EQ(req.generation.images[0].height, 120);
  EXPECT_EQ(req.generation.max_tokens, 7);
  EXPECT_TRUE(req.generation.sampling.do_sample);
  EXPECT_FLOAT_EQ(req.generation.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(req.generation.sampling.top_p, 0.9f);
  EXPECT_EQ(req.generation.sampling.seed, 3u);
  EXPECT_EQ(req.generation.stop, (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(req.stream);
  EXPECT_TRUE(req.json_object);
  // The JSON instruction joins the system message.
  EXPECT_NE(req.generation.messages[0].parts.back().text.find("JSON"), std::string::npos);

  auto expect_error = [&](json b, const std::string& needle) {
    try {
      mv::server::parse_chat_request(b, limits);
      ADD_FAILURE() << "accepted " << b.dump();
    } catch (const mv::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(json::object(), "messages");
  expect_error({{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"max_tokens", 0}}, "max_tokens");
  expect_error({{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"temperature", 3}}, "temperature");
  expect_error({{"messages", {{{"role", "robot"}, {"content", "x"}}}}}, "messages[0].role");
  expect_error(
      {{"messages",
        {{{"role", "user"},
          {"content", {{{"type", "image_url"}, {"image_url", {{"url", "data:image/png;base64,@@@"}}}}}}}}}},
      "base64");
  expect_error(
      {{"messages",
        {{{"role", "user"},
          {"content", {{{"type", "image_url"}, {"image_url", {{"url", "https://example.org/a.png"}}}}}}}}}},
      "remote");
  expect_error({{"messages",
                 {{{"role", "user"},
                   {"content", {{{"type", "image_url"}, {"image_url", {{"url", "/etc/passwd"}}}}}}}}}},
               "local file");
  expect_error(
      {{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"response_format", {{"type", "json_schema"}}}},
      "json_schema");
  EXPECT_EQ(mv::server::base64_decode("aGVsbG8="), "hello");
  EXPECT_EQ(mv::server::base64_decode(mv::server::base64_encode(std::string("\x00\xff\x10", 3))),
            std::string("\x00\xff\x10", 3));
}

TEST(ErrorReply, ServerFaultsHideTheirMessageAndCarryTheRequestId) {
  auto r = mv::server::error_reply(std::make_exception_ptr(mv::Error(mv::Errc::kInternal, "secret detail")),
                                   "abc123");
  EXPECT_EQ(r.status, 500);
  EXPECT_EQ(r.body["error"]["request_id"], "abc123");
  EXPECT_EQ(r.body.dump().find("secret"), std::string::npos);
  EXPECT_NE(r.body["error"]["message"].get<std::string>().find("abc123"), std::string::npos);
  auto c = mv::server::error_reply(std::make_exception_ptr(std::runtime_error("boom")), "id2");
  EXPECT_EQ(c.status, 500);
  auto bad =
      mv::server::error_reply(std::make_exception_ptr(mv::Error(mv::Errc::kInvalidInput, "field x")), "i");
  EXPECT_EQ(bad.status, 400);
  EXPECT_EQ(bad.body["detail"], "field x");
  auto busy = mv::server::error_reply(std::make_exception_ptr(mv::server::Rejected(429, 7, "full")), "i");
  EXPECT_EQ(busy.status, 429);
  EXPECT_EQ(busy.retry_after, 7);
}

TEST_F(ServerTest, HealthIsOpenAndReportsTheBackend) {
  auto c = s_->client(false);
  auto r = c.Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_FALSE(r->get_header_value("X-Request-Id").empty());
  json j = parse(r);
  for (const char* k : {"model_loaded", "gpu_available", "gpu_name", "current_vram_usage_mb", "total_vram_mb",
                        "timestamp", "backend", "model", "version"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j["backend"], "ocr");
  EXPECT_EQ(j["model_loaded"], true);
  EXPECT_EQ(j["version"], MEDVISION_VERSION);
  EXPECT_EQ(j["chat_model"], "tiny-qwen");
}

TEST_F(ServerTest, ApiKeysAreRequiredOutsideHealthAndThePage) {
  auto anon = s_->client(false);
  auto r = anon.Get("/v1/models");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(r->get_header_value("WWW-Authenticate"), "Bearer");
  EXPECT_EQ(parse(r)["error"]["type"], "authentication_error");
  r = anon.Get("/v1/models", {{"Authorization", "Bearer wrong-key"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_NE(parse(r)["detail"].get<std::string>().find("not valid"), std::string::npos);
  r = anon.Get("/v1/models", {{"X-API-Key", "second-key-abcdefghijklmnop"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = anon.Get("/");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = anon.Post("/extract", "x", "text/plain");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
}

TEST_F(ServerTest, ServesTheWebPage) {
  auto c = s_->client(false);
  auto r = c.Get("/");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_NE(r->get_header_value("Content-Type").find("text/html"), std::string::npos);
  EXPECT_NE(r->body.find("Custom analysis"), std::string::npos);
  EXPECT_NE(r->get_header_value("Content-Security-Policy").find("default-src 'self'"), std::string::npos);
  for (const char* path : {"/app.js", "/style.css"}) {
    r = c.Get(path);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << path;
    EXPECT_GT(r->body.size(), 100u) << path;
  }
}

// One OCR run of a full page (the slow part of this suite) checks the response, the FHIR export and the
// access log: file name, prompt, patient name and lab names must not appear in it.
TEST_F(ServerTest, ExtractsADocumentWithTheOcrBackendAndLogsNoContent) {
  std::ostringstream captured;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(captured);
  auto logger = std::make_shared<spdlog::logger>("capture", sink);
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::info);
  auto c = s_->client();
  const std::string png = read_bytes(sample_document());
  httplib::MultipartFormDataItems items = {{"file", png, "Jane_Doe_MRN_4471.png", "image/png"}};
  auto r = c.Post("/extract?format=fhir", items);
  auto a = c.Post("/analyze?max_tokens=4",
                  httplib::MultipartFormDataItems{{"file", png, "Jane_Doe_MRN_4471.png", "image/png"},
                                                  {"prompt", "SECRET-PROMPT-TEXT", "", ""}});
  // A request on the same keep-alive connection is read only after the previous one was logged.
  c.Get("/health");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  spdlog::set_default_logger(previous);
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json j = parse(r);
  for (const char* k :
       {"extracted_content", "inference_latency_seconds", "model_info", "timestamp", "extraction"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_TRUE(mv::extract::validate_extraction(j["extraction"]).empty());
  EXPECT_EQ(j["extraction"]["document_type"], "lab_results");
  EXPECT_FALSE(j["extraction"]["labs"].empty());
  ASSERT_EQ(j["extraction"]["pages"].size(), 1u);
  EXPECT_GT(j["inference_latency_seconds"].get<double>(), 0.0);
  EXPECT_EQ(j["model_info"]["backend"], "ocr");
  EXPECT_EQ(json::parse(j["extracted_content"].get<std::string>()), j["extraction"]);
  EXPECT_EQ(j["fhir"]["resourceType"], "Bundle");
  EXPECT_FALSE(j["fhir"]["entry"].empty());
  ASSERT_TRUE(a);
  EXPECT_EQ(a->status, 200);

  const std::string logs = captured.str();
  EXPECT_NE(logs.find("/extract"), std::string::npos) << logs;  // the access log ran
  EXPECT_NE(logs.find("/analyze"), std::string::npos) << logs;
  EXPECT_EQ(logs.find("Jane_Doe"), std::string::npos) << logs;
  EXPECT_EQ(logs.find("SECRET-PROMPT"), std::string::npos) << logs;
  const json truth = json::parse(read_bytes(fs::path(sample_document()).replace_extension(".json")));
  ASSERT_FALSE(truth["labs"].empty());
  for (const auto& lab : truth["labs"])
    EXPECT_EQ(logs.find(lab["test"].get<std::string>()), std::string::npos);
  if (truth.contains("patient") && truth["patient"].contains("name"))
    EXPECT_EQ(logs.find(truth["patient"]["name"].get<std::string>()), std::string::npos);

  // Without ?format=fhir there is no fhir member (a small page keeps this quick).
  const std::string small = read_bytes(std::string(MV_FIXTURES_DIR) + "/model/images/form_150x120.png");
  j = parse(c.Post("/extract", httplib::MultipartFormDataItems{{"file", small, "a.png", "image/png"}}));
  EXPECT_TRUE(j.contains("extraction"));
  EXPECT_FALSE(j.contains("fhir"));
}

TEST_F(ServerTest, ExtractAnswersClearErrors) {
  auto c = s_->client();
  // 415: not multipart, and a file that is no image.
  auto r = c.Post("/extract", "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 415);
  EXPECT_NE(parse(r)["detail"].get<std::string>().find("multipart"), std::string::npos);
  r = c.Post("/extract", httplib::MultipartFormDataItems{{"file", "just some text", "a.txt", "text/plain"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 415);
  // 400: no file field, an empty file, a corrupt PNG, a bad page range, an unknown document type.
  r = c.Post("/extract", httplib::MultipartFormDataItems{{"other", "x", "", ""}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_NE(parse(r)["detail"].get<std::string>().find("'file'"), std::string::npos);
  r = c.Post("/extract", httplib::MultipartFormDataItems{{"file", "", "a.png", "image/png"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  std::string corrupt = "\x89PNG\r\n\x1a\n";
  corrupt += std::string(200, '\x07');
  r = c.Post("/extract", httplib::MultipartFormDataItems{{"file", corrupt, "a.png", "image/png"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  const std::string png = read_bytes(std::string(MV_FIXTURES_DIR) + "/model/images/form_150x120.png");
  r = c.Post("/extract?pages=3-4", httplib::MultipartFormDataItems{{"file", png, "a.png", "image/png"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_NE(parse(r)["detail"].get<std::string>().find("page"), std::string::npos);
  r = c.Post("/extract?format=xml", httplib::MultipartFormDataItems{{"file", png, "a.png", "image/png"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  r = c.Post("/extract", httplib::MultipartFormDataItems{{"file", png, "a.png", "image/png"},
                                                         {"document_type", "no_such_type", "", ""}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  // 413: over --max-upload-mb (1 MiB) inside the body limit, and a body over the transport limit.
  std::string big = "\x89PNG\r\n\x1a\n" + std::string((1u << 20) + 10, 'x');
  r = c.Post("/extract", httplib::MultipartFormDataItems{{"file", big, "a.png", "image/png"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(parse(r)["error"]["type"], "request_too_large");
  std::string huge(8u << 20, 'x');
  r = c.Post("/extract", huge, "application/octet-stream");
  if (r) EXPECT_EQ(r->status, 413);  // the server may close the connection before reading the body
  // 404 with the JSON error shape.
  r = c.Get("/no/such/route");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(parse(r)["error"]["code"], 404);
}

TEST_F(ServerTest, AnalyzeAnswersAboutTheDocument) {
  auto c = s_->client();
  const std::string png = read_bytes(std::string(MV_FIXTURES_DIR) + "/model/images/page_252x196.png");
  auto r = c.Post(
      "/analyze?max_tokens=5",
      httplib::MultipartFormDataItems{{"file", png, "p.png", "image/png"}, {"prompt", "Summarise.", "", ""}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json j = parse(r);
  EXPECT_TRUE(j["answer"].is_string());
  EXPECT_LE(j["usage"]["completion_tokens"].get<int>(), 5);
  EXPECT_GT(j["usage"]["prompt_tokens"].get<int>(), 20);  // the image's tokens are in the prompt
  r = c.Post("/analyze", httplib::MultipartFormDataItems{{"file", png, "p.png", "image/png"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  r = c.Post("/analyze",
             httplib::MultipartFormDataItems{{"file", png, "p.png", "image/png"}, {"prompt", "  ", "", ""}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
}

TEST_F(ServerTest, BenchmarkCompilesEveryJsonFile) {
  auto c = s_->client();
  auto r = c.Get("/benchmark");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  json j = parse(r);
  EXPECT_EQ(j["count"], 2);
  EXPECT_EQ(j["benchmarks"]["environment.json"]["cpu"], "test");
  EXPECT_EQ(j["benchmarks"]["sub/evaluation.json"]["f1"], 0.5);
  EXPECT_TRUE(j["errors"].contains("broken.json"));
}

TEST_F(ServerTest, ListsTheModel) {
  auto c = s_->client();
  json j = parse(c.Get("/v1/models"));
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 1u);
  EXPECT_EQ(j["data"][0]["id"], "tiny-qwen");
}

TEST_F(ServerTest, ChatCompletionsGreedyStopMaxTokensSeed) {
  auto c = s_->client();
  auto r = c.Post("/v1/chat/completions", chat_body("Hello there", 16).dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json j = parse(r);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["model"], "tiny-qwen");
  const std::string text = j["choices"][0]["message"]["content"];
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_GT(j["usage"]["prompt_tokens"].get<int>(), 3);
  EXPECT_LE(j["usage"]["completion_tokens"].get<int>(), 16);
  EXPECT_EQ(j["usage"]["total_tokens"].get<int>(),
            j["usage"]["prompt_tokens"].get<int>() + j["usage"]["completion_tokens"].get<int>());
  if (j["choices"][0]["finish_reason"] == "length") EXPECT_EQ(j["usage"]["completion_tokens"], 16);

  // Greedy decoding is deterministic.
  json again = parse(c.Post("/v1/chat/completions", chat_body("Hello there", 16).dump(), "application/json"));
  EXPECT_EQ(again["choices"][0]["message"]["content"], text);

  // max_tokens bounds the answer.
  json three = parse(c.Post("/v1/chat/completions", chat_body("Hello there", 3).dump(), "application/json"));
  EXPECT_LE(three["usage"]["completion_tokens"].get<int>(), 3);
  EXPECT_EQ(text.rfind(three["choices"][0]["message"]["content"].get<std::string>(), 0), 0u);

  // A stop string cuts the text before it.
  // The stop string: the whole UTF-8 character starting at or after byte 3.
  std::size_t at = 3;
  while (at < text.size() && (static_cast<unsigned char>(text[at]) & 0xC0) == 0x80) ++at;
  std::size_t len = 1;
  while (at + len < text.size() && (static_cast<unsigned char>(text[at + len]) & 0xC0) == 0x80) ++len;
  if (at < text.size()) {
    const std::string stop = text.substr(at, len);
    json body = chat_body("Hello there", 16);
    body["stop"] = stop;
    json s = parse(c.Post("/v1/chat/completions", body.dump(), "application/json"));
    EXPECT_EQ(s["choices"][0]["message"]["content"], text.substr(0, text.find(stop)));
    EXPECT_EQ(s["choices"][0]["finish_reason"], "stop");
  }

  // Sampling with a seed is reproducible.
  json seeded = chat_body("Hello there", 8, 1.0);
  seeded["seed"] = 1234;
  seeded["top_p"] = 0.9;
  json a = parse(c.Post("/v1/chat/completions", seeded.dump(), "application/json"));
  json b = parse(c.Post("/v1/chat/completions", seeded.dump(), "application/json"));
  EXPECT_EQ(a["choices"][0]["message"]["content"], b["choices"][0]["message"]["content"]);
}

TEST_F(ServerTest, ChatCompletionsWithAnImageAndErrors) {
  auto c = s_->client();
  json body = {{"messages",
                {{{"role", "user"},
                  {"content",
                   {{{"type", "image_url"},
                     {"image_url",
                      {{"url", data_url(std::string(MV_FIXTURES_DIR) + "/model/images/form_150x120.png")}}}},
                    {{"type", "text"}, {"text", "What does the form say?"}}}}}}},
               {"max_tokens", 4},
               {"temperature", 0}};
  auto r = c.Post("/v1/chat/completions", body.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_GT(parse(r)["usage"]["prompt_tokens"].get<int>(), 20);

  r = c.Post("/v1/chat/completions", "{nope", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  r = c.Post("/v1/chat/completions", R"({"messages": []})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  r = c.Post("/v1/chat/completions", chat_body("x", 4).dump(), "text/plain");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 415);
  json remote = body;
  remote["messages"][0]["content"][0]["image_url"]["url"] = "https://example.org/x.png";
  r = c.Post("/v1/chat/completions", remote.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 415);
  // json_object: a random-weight model does not write JSON, and the server says so rather than pass it on.
  json jo = chat_body("Give me JSON", 8);
  jo["response_format"] = {{"type", "json_object"}};
  r = c.Post("/v1/chat/completions", jo.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 502);
  EXPECT_EQ(parse(r)["error"]["type"], "invalid_model_output");
}

TEST_F(ServerTest, StreamsServerSentEventsThatMatchTheWholeAnswer) {
  auto c = s_->client();
  json whole = parse(c.Post("/v1/chat/completions", chat_body("Stream this", 12).dump(), "application/json"));
  json body = chat_body("Stream this", 12);
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  int status = 0;
  auto events = stream_chat(s_->port, body, 0, nullptr, &status);
  EXPECT_EQ(status, 200);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  json first = json::parse(events.front());
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  std::string text;
  std::string finish;
  json usage;
  for (std::size_t i = 0; i + 1 < events.size(); ++i) {
    json e = json::parse(events[i]);
    if (e.contains("usage")) usage = e["usage"];
    if (e["choices"].empty()) continue;
    const auto& ch = e["choices"][0];
    if (ch["delta"].contains("content")) text += ch["delta"]["content"].get<std::string>();
    if (!ch["finish_reason"].is_null()) finish = ch["finish_reason"];
  }
  EXPECT_EQ(text, whole["choices"][0]["message"]["content"].get<std::string>());
  EXPECT_EQ(finish, whole["choices"][0]["finish_reason"].get<std::string>());
  EXPECT_EQ(usage, whole["usage"]);
}

TEST_F(ServerTest, MetricsCountRequestsInPrometheusFormat) {
  auto c = s_->client();
  ASSERT_TRUE(c.Get("/health"));
  auto r = c.Get("/metrics");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  EXPECT_NE(r->get_header_value("Content-Type").find("text/plain"), std::string::npos);
  const std::string& m = r->body;
  for (const char* needle :
       {"medvision_http_requests_total{route=\"/health\",status=\"200\"}",
        "# TYPE medvision_http_request_duration_seconds histogram",
        "medvision_http_request_duration_seconds_bucket{route=\"/health\",le=\"+Inf\"}",
        "medvision_queue_depth{queue=\"engine\"}", "medvision_queue_depth{queue=\"extract\"}",
        "# TYPE medvision_decode_batch_size histogram", "medvision_engine_tokens_per_second",
        "medvision_batch_size", "medvision_decode_tokens_per_second", "medvision_generated_tokens_total",
        "process_resident_memory_bytes"})
    EXPECT_NE(m.find(needle), std::string::npos) << needle;
  // Every sample line is "name{labels} value" with a numeric value.
  std::istringstream lines(m);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto sp = line.rfind(' ');
    ASSERT_NE(sp, std::string::npos) << line;
    EXPECT_NO_THROW(std::stod(line.substr(sp + 1))) << line;
  }
}

TEST_F(ServerTest, FullQueueAnswers429AndAHangUpCancelsTheSequence) {
  // The engine queue of this server has 4 waiting places and one worker. A long streamed answer holds the
  // worker; five more requests fill the queue and overflow it.
  const std::string generated = "medvision_generated_tokens_total";
  const double generated_before = metric(*s_, generated);
  HeldStream holder(s_->port, "Go on and on", 3000);
  ASSERT_TRUE(holder.ok) << "the long stream did not start";
  // Fill the 4 waiting places with requests that return quickly once the engine is free.
  std::vector<std::future<int>> queued;
  for (int i = 0; i < 4; ++i)
    queued.push_back(std::async(std::launch::async, [] {
      auto c = s_->client();
      auto r = c.Post("/v1/chat/completions", chat_body("short", 2).dump(), "application/json");
      return r ? r->status : -1;
    }));
  auto c = s_->client();
  // Wait until the four are admitted (waiting behind the long answer), then one more overflows.
  auto engine_depth = [] { return metric(*s_, "medvision_queue_depth{queue=\"engine\"}"); };
  for (int i = 0; i < 600 && engine_depth() < 4; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(engine_depth(), 4) << "the long answer ended before the queue filled";
  auto over = c.Post("/v1/chat/completions", chat_body("one too many", 2).dump(), "application/json");
  EXPECT_TRUE(over);
  if (over) {
    EXPECT_EQ(over->status, 429);
    EXPECT_GE(std::atoi(over->get_header_value("Retry-After").c_str()), 1);
    EXPECT_EQ(parse(over)["error"]["type"], "rate_limit_error");
  }
  // Hanging up cancels the long sequence: the queued requests then finish long before 3000 tokens.
  const auto t0 = std::chrono::steady_clock::now();
  holder.stop();
  for (auto& f : queued) EXPECT_EQ(f.get(), 200);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(60));
  // The long sequence stopped well before its 3000 tokens (the four short ones add at most 8).
  EXPECT_LT(metric(*s_, generated) - generated_before, 2000.0);
  auto m = c.Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_NE(m->body.find("medvision_queue_rejections_total{queue=\"engine\",status=\"429\"}"),
            std::string::npos);
}

TEST(ServerNoModel, ModelRoutesAnswer503AndTheRestWorks) {
  ServerOptions o = base_options();
  o.benchmarks_dir = temp_root() / "no-such-folder";
  Running s(o);
  auto c = s.client(false);
  auto r = c.Post("/v1/chat/completions", chat_body("hi", 2).dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_NE(parse(r)["detail"].get<std::string>().find("--model"), std::string::npos);
  const std::string png = read_bytes(std::string(MV_FIXTURES_DIR) + "/model/images/form_150x120.png");
  r = c.Post("/analyze",
             httplib::MultipartFormDataItems{{"file", png, "a.png", "image/png"}, {"prompt", "x", "", ""}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  json models = parse(c.Get("/v1/models"));
  EXPECT_TRUE(models["data"].empty());
  json bench = parse(c.Get("/benchmark"));
  EXPECT_EQ(bench["count"], 0);
  json health = parse(c.Get("/health"));
  EXPECT_TRUE(health["chat_model"].is_null());
  EXPECT_EQ(health["model"], "tesseract-eng");
}

TEST(ServerOptionsCheck, RejectsBadOptionsClearly) {
  auto expect_usage = [](ServerOptions o, const std::string& needle) {
    try {
      Server s(o);
      ADD_FAILURE() << "accepted";
    } catch (const mv::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  ServerOptions o = base_options();
  o.backend = "gpt";
  expect_usage(o, "--backend");
  o = base_options();
  o.backend = "vlm";
  expect_usage(o, "--model");
  o = base_options();
  o.device = "tpu";
  expect_usage(o, "tpu");
  o = base_options();
  o.tls_cert = "/nonexistent/cert.pem";
  expect_usage(o, "--tls-key");
  o = base_options();
  o.api_keys_file = temp_root() / "empty-keys.txt";
  mv::write_file(o.api_keys_file, "# nothing\n");
  expect_usage(o, "no API key");
}

TEST(ServerTls, ServesHttpsWithACertificateMadeHere) {
  const fs::path dir = temp_root() / "tls";
  fs::create_directories(dir);
  const std::string cmd =
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
      "-subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout " +
      (dir / "key.pem").string() + " -out " + (dir / "cert.pem").string() + " 2>/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "openssl could not make a certificate";
  ServerOptions o = base_options();
  o.tls_cert = dir / "cert.pem";
  o.tls_key = dir / "key.pem";
  o.api_keys_file = temp_root() / "tls-keys.txt";
  mv::write_file(o.api_keys_file, kKey + "\n");
  Running s(o);
  httplib::SSLClient tls("127.0.0.1", s.port);
  tls.set_ca_cert_path((dir / "cert.pem").c_str());
  tls.enable_server_certificate_verification(true);
  auto r = tls.Get("/health");
  ASSERT_TRUE(r) << "TLS error " << static_cast<int>(r.error());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(parse(r)["backend"], "ocr");
  r = tls.Get("/metrics");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  r = tls.Get("/metrics", {{"Authorization", "Bearer " + kKey}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  // Plain HTTP to the TLS port gets no HTTP answer.
  httplib::Client plain("127.0.0.1", s.port);
  plain.set_read_timeout(5);
  auto p = plain.Get("/health");
  EXPECT_TRUE(!p || p->status != 200);
  // A key that does not match the certificate is refused at start.
  const std::string other = "openssl genpkey -algorithm ec -pkeyopt ec_paramgen_curve:prime256v1 -out " +
                            (dir / "other.pem").string() + " 2>/dev/null";
  ASSERT_EQ(std::system(other.c_str()), 0);
  ServerOptions bad = o;
  bad.tls_key = dir / "other.pem";
  EXPECT_THROW(Server{bad}, mv::Error);
}

TEST(ServerShutdown, FinishesAdmittedStreamsThenRefusesNewWork) {
  ServerOptions o = base_options();
  o.model_dir = tiny_model();
  Running s(o);
  json body = chat_body("Keep talking", 1500);
  body["stream"] = true;
  std::promise<void> started;
  auto started_f = started.get_future();
  std::vector<std::string> events;
  std::thread streamer([&] { events = stream_chat(s.port, body, 0, [&] { started.set_value(); }); });
  if (started_f.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
    streamer.join();
    FAIL() << "the stream did not start";
  }
  std::thread stopper([&] { s.server->stop(); });
  // While it drains, new work is refused with 503 and Retry-After.
  int refused = 0;
  for (int i = 0; i < 100 && refused == 0; ++i) {
    httplib::Client c("127.0.0.1", s.port);
    auto r = c.Post("/v1/chat/completions", chat_body("late", 2).dump(), "application/json");
    if (!r) break;  // already closed
    if (r->status == 503) {
      refused = 1;
      EXPECT_FALSE(r->get_header_value("Retry-After").empty());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  stopper.join();
  streamer.join();
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back(), "[DONE]");  // the admitted stream ran to its end
  EXPECT_EQ(refused, 1) << "no request was refused while draining";
  s.thread.join();
  s.server.reset();
}
