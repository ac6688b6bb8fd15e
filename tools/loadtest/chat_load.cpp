#include "chat_load.hpp"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <mutex>
#include <thread>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/system_info.hpp"
#include "server/openai.hpp"

namespace mv::loadtest {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// The declared type of the data: URL (the server sniffs the bytes itself; this only keeps the URL honest).
std::string mime_of(std::string_view bytes) {
  if (bytes.substr(0, 8) == std::string_view("\x89PNG\r\n\x1a\n", 8)) return "image/png";
  if (bytes.substr(0, 3) == "\xFF\xD8\xFF") return "image/jpeg";
  if (bytes.substr(0, 4) == "RIFF" && bytes.size() >= 12 && bytes.substr(8, 4) == "WEBP") return "image/webp";
  if (bytes.substr(0, 2) == "BM") return "image/bmp";
  if (bytes.substr(0, 4) == "II*\0" || bytes.substr(0, 4) == std::string_view("MM\0*", 4))
    return "image/tiff";
  if (bytes.substr(0, 5) == "%PDF-") return "application/pdf";
  fail(Errc::kUnsupported, "load test image: not a PNG, JPEG, WebP, BMP, TIFF or PDF file");
}

struct RequestResult {
  int index = 0;
  int status = 0;        // HTTP status (0: no response)
  std::string failure;   // empty: the request succeeded
  double ttfb_s = -1;    // first byte of the response (the stream's role chunk)
  double ttft_s = -1;    // first chunk with generated text
  double latency_s = 0;  // send to the end of the stream
  std::int64_t generated_tokens = 0;
  std::int64_t prompt_tokens = 0;
  std::int64_t content_chunks = 0;  // text chunks of the stream
  bool usage = false;               // generated_tokens come from the stream's usage chunk
  std::string finish_reason;
};

json to_json(const RequestResult& r) {
  json j = {{"index", r.index},
            {"status", r.status},
            {"ok", r.failure.empty()},
            {"ttft_s", r.ttft_s >= 0 ? json(r.ttft_s) : json(nullptr)},
            {"ttfb_s", r.ttfb_s >= 0 ? json(r.ttfb_s) : json(nullptr)},
            {"latency_s", r.latency_s},
            {"generated_tokens", r.generated_tokens},
            {"prompt_tokens", r.prompt_tokens},
            {"content_chunks", r.content_chunks},
            {"tokens_from", r.usage ? "usage" : "chunks"},
            {"finish_reason", r.finish_reason}};
  if (!r.failure.empty()) j["failure"] = r.failure;
  // Decode speed seen by this client: tokens after the first over the time after the first.
  if (r.failure.empty() && r.generated_tokens > 1 && r.ttft_s >= 0 && r.latency_s > r.ttft_s)
    j["decode_tokens_per_second"] = static_cast<double>(r.generated_tokens - 1) / (r.latency_s - r.ttft_s);
  return j;
}

class Target {
 public:
  explicit Target(const ChatLoadOptions& o) : options_(o) {
    if (!o.api_key.empty()) headers_.emplace("Authorization", "Bearer " + o.api_key);
  }
  std::unique_ptr<httplib::Client> client() const {
    auto c = std::make_unique<httplib::Client>(options_.url);
    if (!c->is_valid()) fail(Errc::kUsage, "load test: '{}' is not an http:// or https:// URL", options_.url);
    c->set_keep_alive(true);
    c->set_connection_timeout(10);
    const auto t = static_cast<time_t>(options_.timeout_s);
    c->set_read_timeout(t, 0);
    c->set_write_timeout(t, 0);
    c->set_default_headers(headers_);
#ifdef CPPHTTPLIB_OPENSSL_SUPPORT
    if (!options_.verify_tls) c->enable_server_certificate_verification(false);
#endif
    return c;
  }
  // GET returning the body of a 200 answer, or nullopt.
  std::optional<std::string> get(const std::string& path) const {
    auto c = client();
    c->set_keep_alive(false);
    auto r = c->Get(path.c_str());
    if (!r || r->status != 200) return std::nullopt;
    return r->body;
  }

 private:
  const ChatLoadOptions& options_;
  httplib::Headers headers_;
};

RequestResult send_chat(httplib::Client& client, const std::string& body, int index) {
  RequestResult r;
  r.index = index;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/chat/completions";
  req.body = body;
  req.set_header("Content-Type", "application/json");
  req.set_header("Accept", "text/event-stream");
  SseParser sse;
  bool done = false, stream_error = false;
  const auto t0 = Clock::now();
  req.response_handler = [&](const httplib::Response& res) {
    r.status = res.status;
    return true;
  };
  req.content_receiver = [&](const char* data, std::size_t n, std::uint64_t, std::uint64_t) {
    const auto now = Clock::now();
    if (r.ttfb_s < 0) r.ttfb_s = seconds_between(t0, now);
    if (r.status != 200) return true;  // an error body: its status is what is counted
    for (const auto& event : sse.feed(std::string_view(data, n))) {
      if (event == "[DONE]") {
        done = true;
        continue;
      }
      const json j = json::parse(event, nullptr, false);
      if (j.is_discarded() || !j.is_object()) {
        stream_error = true;
        continue;
      }
      if (j.contains("error")) {
        stream_error = true;
        continue;
      }
      if (auto c = j.find("choices"); c != j.end() && c->is_array() && !c->empty()) {
        const json& choice = c->front();
        if (auto d = choice.find("delta"); d != choice.end() && d->is_object()) {
          if (auto t = d->find("content");
              t != d->end() && t->is_string() && !t->get_ref<const std::string&>().empty()) {
            ++r.content_chunks;
            if (r.ttft_s < 0) r.ttft_s = seconds_between(t0, now);
          }
        }
        if (auto f = choice.find("finish_reason"); f != choice.end() && f->is_string())
          r.finish_reason = f->get<std::string>();
      }
      if (auto u = j.find("usage"); u != j.end() && u->is_object()) {
        r.usage = true;
        r.generated_tokens = u->value("completion_tokens", std::int64_t{0});
        r.prompt_tokens = u->value("prompt_tokens", std::int64_t{0});
      }
    }
    return true;
  };
  httplib::Response res;
  httplib::Error error = httplib::Error::Success;
  const bool sent = client.send(req, res, error);
  r.latency_s = seconds_between(t0, Clock::now());
  if (r.status == 0) r.status = res.status > 0 ? res.status : 0;
  if (!sent || error != httplib::Error::Success) {
    r.failure = "transport: " + httplib::to_string(error);
    r.status = 0;
  } else if (r.status != 200) {
    r.failure = std::to_string(r.status);
  } else if (stream_error) {
    r.failure = "stream_error";
  } else if (!done) {
    r.failure = "incomplete_stream";
  }
  if (!r.usage) r.generated_tokens = r.content_chunks;
  return r;
}

// What the engine's metrics say, in the units the report uses.
json metrics_snapshot(const std::map<std::string, double>& m) {
  auto get = [&](const std::string& key) -> json {
    auto it = m.find(key);
    return it == m.end() ? json(nullptr) : json(it->second);
  };
  json buckets = json::object();
  for (const auto& [key, value] : m) {
    const std::string prefix = "medvision_decode_batch_size_bucket{le=\"";
    if (key.rfind(prefix, 0) == 0) buckets[key.substr(prefix.size(), key.size() - prefix.size() - 2)] = value;
  }
  json vram = json::object();
  for (const auto& [key, value] : m)
    if (key.rfind("medvision_vram_used_bytes", 0) == 0) vram[key] = value;
  return {{"decode_batches_total", get("medvision_decode_batches_total")},
          {"decode_batch_size_sum", get("medvision_decode_batch_size_sum")},
          {"decode_batch_size_count", get("medvision_decode_batch_size_count")},
          {"decode_batch_size_buckets", buckets},
          {"batch_size_last_step", get("medvision_batch_size")},
          {"max_batch", get("medvision_max_batch")},
          {"engine_tokens_per_second", get("medvision_engine_tokens_per_second")},
          {"generated_tokens_total", get("medvision_generated_tokens_total")},
          {"prompt_tokens_total", get("medvision_prompt_tokens_total")},
          {"generations_total", get("medvision_generations_total")},
          {"decode_seconds_total", get("medvision_decode_seconds_total")},
          {"process_resident_memory_bytes", get("process_resident_memory_bytes")},
          {"vram_used_bytes", vram}};
}

double number_or(const json& j, const char* key, double fallback = 0) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : fallback;
}

// Decode steps the measured requests took part in: the difference of the two snapshots.
json metrics_during(const json& before, const json& after) {
  const double steps =
      number_or(after, "decode_batch_size_count") - number_or(before, "decode_batch_size_count");
  const double seqs = number_or(after, "decode_batch_size_sum") - number_or(before, "decode_batch_size_sum");
  json hist = json::object();  // cumulative, like the Prometheus buckets
  std::optional<double> largest;
  std::vector<std::pair<double, std::string>> les;
  for (const auto& [le, v] : after["decode_batch_size_buckets"].items())
    if (le != "+Inf") les.emplace_back(std::stod(le), le);
  std::sort(les.begin(), les.end());
  for (const auto& [bound, le] : les) {
    const double d = after["decode_batch_size_buckets"][le].get<double>() -
                     number_or(before["decode_batch_size_buckets"], le.c_str());
    hist[le] = d;
    if (!largest && steps > 0 && d >= steps) largest = bound;
  }
  return {
      {"decode_steps", steps},
      {"sequences_in_steps", seqs},
      {"mean_batch_size", steps > 0 ? json(seqs / steps) : json(nullptr)},
      {"batch_size_at_most", largest ? json(*largest) : json(nullptr)},
      {"decode_batch_size_buckets", hist},
      {"generated_tokens",
       number_or(after, "generated_tokens_total") - number_or(before, "generated_tokens_total")},
      {"prompt_tokens", number_or(after, "prompt_tokens_total") - number_or(before, "prompt_tokens_total")},
      // Summed over sequences (first token to last of each), as medvision_decode_seconds_total counts.
      {"sequence_decode_seconds",
       number_or(after, "decode_seconds_total") - number_or(before, "decode_seconds_total")}};
}

json summary(const std::vector<double>& v) {
  if (v.empty()) return nullptr;
  double sum = 0;
  for (double x : v) sum += x;
  return {{"p50", percentile(v, 50)},
          {"p90", percentile(v, 90)},
          {"p99", percentile(v, 99)},
          {"min", *std::min_element(v.begin(), v.end())},
          {"max", *std::max_element(v.begin(), v.end())},
          {"mean", sum / static_cast<double>(v.size())}};
}

// Runs `count` requests over `clients` threads (each with its own keep-alive connection).
std::vector<RequestResult> run_requests(const Target& target, const std::string& body, int clients,
                                        int count) {
  std::vector<RequestResult> results(static_cast<std::size_t>(count));
  std::atomic<int> next{0};
  std::vector<std::thread> threads;
  std::mutex error_mutex;
  std::exception_ptr error;
  for (int c = 0; c < clients; ++c)
    threads.emplace_back([&] {
      try {
        auto client = target.client();
        for (int i = next.fetch_add(1); i < count; i = next.fetch_add(1))
          results[static_cast<std::size_t>(i)] = send_chat(*client, body, i);
      } catch (...) {
        std::lock_guard lock(error_mutex);
        if (!error) error = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
  return results;
}

std::string request_body(const std::string& model, const std::string& image_url, const std::string& prompt,
                         int max_tokens) {
  json content = json::array(
      {{{"type", "image_url"}, {"image_url", {{"url", image_url}}}}, {{"type", "text"}, {"text", prompt}}});
  json body = {{"messages", json::array({{{"role", "user"}, {"content", content}}})},
               {"max_tokens", max_tokens},
               {"temperature", 0},
               {"stream", true},
               {"stream_options", {{"include_usage", true}}}};
  if (!model.empty()) body["model"] = model;
  return body.dump();
}

}  // namespace

std::vector<std::string> SseParser::feed(std::string_view bytes) {
  std::vector<std::string> events;
  buffer_.append(bytes);
  std::size_t start = 0;
  for (;;) {
    const auto nl = buffer_.find('\n', start);
    if (nl == std::string::npos) break;
    std::string_view line(buffer_.data() + start, nl - start);
    start = nl + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) {  // end of an event
      if (has_data_) events.push_back(std::move(data_));
      data_.clear();
      has_data_ = false;
      continue;
    }
    if (line.front() == ':') continue;  // a comment
    if (line.rfind("data:", 0) == 0) {
      std::string_view value = line.substr(5);
      if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
      if (has_data_) data_.push_back('\n');
      data_.append(value);
      has_data_ = true;
    }  // other fields (event:, id:, retry:) are not used by the server
  }
  buffer_.erase(0, start);
  return events;
}

std::map<std::string, double> parse_prometheus(std::string_view text) {
  std::map<std::string, double> out;
  std::size_t pos = 0;
  while (pos < text.size()) {
    auto end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    if (line.empty() || line.front() == '#') continue;
    // The value follows the last space outside the labels.
    const auto brace = line.rfind('}');
    const auto space = line.find(' ', brace == std::string_view::npos ? 0 : brace);
    if (space == std::string_view::npos) continue;
    try {
      out[std::string(line.substr(0, space))] = std::stod(std::string(line.substr(space + 1)));
    } catch (const std::exception&) {
      // not a number (NaN spelled otherwise): skipped
    }
  }
  return out;
}

json run_chat_load(const ChatLoadOptions& o) {
  if (o.concurrency < 1) fail(Errc::kUsage, "load test: the concurrency must be at least 1");
  if (o.max_tokens < 1) fail(Errc::kUsage, "load test: max_tokens must be at least 1");
  if (o.requests < 0 || o.warmup < 0 || o.warmup_tokens < 1)
    fail(Errc::kUsage, "load test: requests and warmup must be 0 or more, warmup_tokens at least 1");
  const int requests = o.requests > 0 ? o.requests : std::max(4, 2 * o.concurrency);
  const std::string image = read_file(o.image);
  const std::string image_url = "data:" + mime_of(image) + ";base64," + server::base64_encode(image);

  const Target target(o);
  const auto health_body = target.get("/health");
  if (!health_body) fail(Errc::kNetwork, "load test: {}/health did not answer 200", o.url);
  json health = json::parse(*health_body, nullptr, false);
  std::string model;
  if (const auto models = target.get("/v1/models")) {
    const json m = json::parse(*models, nullptr, false);
    if (!m.is_discarded() && m.contains("data") && m["data"].is_array() && !m["data"].empty())
      model = m["data"][0].value("id", "");
  }

  json warmup = nullptr;
  if (o.warmup > 0) {
    const auto results =
        run_requests(target, request_body(model, image_url, o.prompt, o.warmup_tokens), o.warmup, o.warmup);
    int ok = 0;
    for (const auto& r : results) ok += r.failure.empty();
    warmup = {{"requests", o.warmup}, {"max_tokens", o.warmup_tokens}, {"ok", ok}};
  }

  const auto metrics_text_before = target.get("/metrics");
  const std::string started_at = utc_timestamp();
  const auto t0 = Clock::now();
  const auto results =
      run_requests(target, request_body(model, image_url, o.prompt, o.max_tokens), o.concurrency, requests);
  const double wall = seconds_between(t0, Clock::now());
  const auto metrics_text_after = target.get("/metrics");

  std::vector<double> ttft, latency, ttfb, decode_rate;
  std::int64_t generated = 0, prompt_tokens = 0;
  int ok = 0;
  json failures = json::object(), finish = json::object(), per_request = json::array();
  for (const auto& r : results) {
    json j = to_json(r);
    if (r.failure.empty()) {
      ++ok;
      latency.push_back(r.latency_s);
      if (r.ttft_s >= 0) ttft.push_back(r.ttft_s);
      if (r.ttfb_s >= 0) ttfb.push_back(r.ttfb_s);
      if (j.contains("decode_tokens_per_second")) decode_rate.push_back(j["decode_tokens_per_second"]);
      finish[r.finish_reason.empty() ? "none" : r.finish_reason] =
          finish.value(r.finish_reason.empty() ? "none" : r.finish_reason, 0) + 1;
    } else {
      failures[r.failure] = failures.value(r.failure, 0) + 1;
    }
    generated += r.generated_tokens;  // also what failed requests streamed before they failed
    prompt_tokens += r.prompt_tokens;
    per_request.push_back(std::move(j));
  }

  json server_metrics = nullptr;
  if (metrics_text_before && metrics_text_after) {
    const json before = metrics_snapshot(parse_prometheus(*metrics_text_before));
    const json after = metrics_snapshot(parse_prometheus(*metrics_text_after));
    server_metrics = {{"before", before}, {"after", after}, {"during", metrics_during(before, after)}};
  }
  const auto cpu = query_cpu();
  json server = json::object();
  if (!health.is_discarded())
    for (const char* k : {"model", "version", "backend", "device", "chat_model", "gpu_available", "gpu_name",
                          "total_vram_mb", "current_vram_usage_mb"})
      if (health.contains(k)) server[k] = health[k];
  return {{"benchmark", "POST /v1/chat/completions, streamed, greedy"},
          {"started_at", started_at},
          {"client", {{"cpu", cpu.model}, {"logical_cores", cpu.logical_cores}}},
          {"server", server},
          {"url", o.url},
          {"model", model},
          {"image", std::filesystem::path(o.image).filename().string()},
          {"image_bytes", image.size()},
          {"max_tokens", o.max_tokens},
          {"temperature", 0},
          {"ignore_eos", false},  // the API has no such option: tokens are counted from the stream's usage
          {"concurrency", o.concurrency},
          {"requests", requests},
          {"warmup", warmup},
          {"ok", ok},
          {"failed", requests - ok},
          {"failures", failures},
          {"finish_reasons", finish},
          {"wall_seconds", wall},
          {"generated_tokens", generated},
          {"prompt_tokens", prompt_tokens},
          {"generated_tokens_per_second", wall > 0 ? static_cast<double>(generated) / wall : 0.0},
          {"requests_per_second", wall > 0 ? ok / wall : 0.0},
          {"ttft_seconds", summary(ttft)},
          {"latency_seconds", summary(latency)},
          {"first_byte_seconds", summary(ttfb)},
          {"decode_tokens_per_second_per_request", summary(decode_rate)},
          {"server_metrics", server_metrics},
          {"per_request", per_request}};
}

}  // namespace mv::loadtest
