#include "server/server.hpp"

#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/system_info.hpp"
#include "extract/extractor.hpp"
#include "extract/fhir.hpp"
#include "extract/schema.hpp"
#include "extract/vlm_extractor.hpp"
#include "model/qwen25vl/model.hpp"
#include "server/auth.hpp"
#include "server/generation.hpp"
#include "server/metrics.hpp"
#include "server/openai.hpp"
#include "server/web_assets.hpp"
#include "server/work_queue.hpp"

namespace mv::server {

namespace {

// Sequences per decode step when --max-batch is 0.
constexpr int kDefaultEngineBatch = 8;

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// Per-connection-thread request context: the route pattern and start time, for the access log and metrics.
// httplib runs routing, the handler, any content provider and the logger on one thread per request.
thread_local std::string t_route = "other";
thread_local Clock::time_point t_start;
thread_local std::string t_request_id;
// True once this request's metrics are recorded; false for a streamed response until its stream ends.
thread_local bool t_observed = false;
thread_local bool t_streamed = false;  // the handler answered with a streamed (chunked) body
// Set when the request carries no valid API key: the 401's message. The 401 is sent by the route (or the
// error handler) after httplib has read the request's body; answered before, the unread body would be
// taken for the next request on a keep-alive connection.
thread_local std::string t_auth_error;

std::string iso_timestamp() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:03d}Z", buf, static_cast<int>(ms));
}

std::int64_t unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string random_hex(std::size_t bytes) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string out;
  for (std::size_t i = 0; i < bytes; ++i) out += fmt::format("{:02x}", static_cast<unsigned>(rng() & 0xFF));
  return out;
}

bool valid_client_request_id(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
  });
}

const char* error_type(int status) {
  switch (status) {
    case 400:
      return "invalid_request_error";
    case 401:
      return "authentication_error";
    case 404:
      return "not_found_error";
    case 405:
      return "method_not_allowed";
    case 413:
      return "request_too_large";
    case 415:
      return "unsupported_media_type";
    case 429:
      return "rate_limit_error";
    case 501:
      return "not_implemented";
    case 502:
      return "invalid_model_output";
    case 503:
      return "service_unavailable";
    default:
      return status >= 500 ? "server_error" : "invalid_request_error";
  }
}

json error_body(int status, const std::string& message, const std::string& request_id) {
  return {
      {"error",
       {{"message", message}, {"type", error_type(status)}, {"code", status}, {"request_id", request_id}}},
      {"detail", message}};
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

// An error the client sees; 5xx messages are replaced by a generic one carrying the request id.
void send_error(httplib::Response& res, int status, std::string message) {
  if (status >= 500 && status != 501 && status != 502 && status != 503)
    message = fmt::format("internal error (request id {})", t_request_id);
  send_json(res, status, error_body(status, message, t_request_id));
}

// The 401 of a request without a valid API key (t_auth_error).
void send_unauthorized(httplib::Response& res) {
  t_route = "auth";
  res.set_header("WWW-Authenticate", "Bearer");
  send_error(res, 401, t_auth_error);
}

// The model answered, but not in the form the route needs (502 invalid_model_output). Its message names no
// content.
struct ModelOutputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The client closed its connection before the answer was ready; the work was cancelled (499, as the access
// log and metrics record it; nobody reads the body).
struct ClientGone : std::runtime_error {
  ClientGone() : std::runtime_error("the client closed the connection") {}
};

}  // namespace

// Client-caused errors (4xx) carry their message: those messages name fields and limits, never document
// content. Server faults answer a generic message with the request id and are logged without message text
// above debug level (a message could quote input).
ErrorReply error_reply(std::exception_ptr ep, const std::string& request_id, const std::string& route) {
  auto reply = [&](int status, const std::string& message) {
    std::string m = message;
    if (status >= 500 && status != 501 && status != 502 && status != 503)
      m = fmt::format("internal error (request id {})", request_id);
    return ErrorReply{status, error_body(status, m, request_id), 0};
  };
  try {
    std::rethrow_exception(ep);
  } catch (const Rejected& r) {
    ErrorReply e = reply(r.status, r.what());
    e.retry_after = r.retry_after;
    return e;
  } catch (const ModelOutputError& e) {
    return reply(502, e.what());
  } catch (const ClientGone& e) {
    return reply(499, e.what());
  } catch (const Error& e) {
    const int status = e.code() == Errc::kNotFound ? 400 : http_status(e.code());
    if (status >= 500) {
      spdlog::error("request {}: {} error in {}", request_id, errc_name(e.code()), route);
      spdlog::debug("request {}: {}", request_id, e.what());
    }
    return reply(status, e.what());
  } catch (const json::exception& e) {
    return reply(400, fmt::format("invalid JSON: {}", e.what()));
  } catch (const std::bad_alloc&) {
    spdlog::error("request {}: out of memory in {}", request_id, route);
    return reply(500, "");
  } catch (const std::exception& e) {
    spdlog::error("request {}: unexpected {} in {}", request_id, typeid(e).name(), route);
    spdlog::debug("request {}: {}", request_id, e.what());
    return reply(500, "");
  } catch (...) {
    spdlog::error("request {}: unknown exception in {}", request_id, route);
    return reply(500, "");
  }
}

namespace {

void send_exception(httplib::Response& res, std::exception_ptr ep) {
  ErrorReply r = error_reply(ep, t_request_id, t_route);
  if (r.retry_after > 0) res.set_header("Retry-After", std::to_string(r.retry_after));
  send_json(res, r.status, r.body);
}

std::uint64_t resident_bytes() {
  std::ifstream f("/proc/self/statm");
  std::uint64_t size = 0, resident = 0;
  if (!(f >> size >> resident)) return 0;
  return resident * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}

// The numeric host and port of a socket address, as httplib reports them in Request::remote_addr/port.
bool numeric_address(const sockaddr_storage& addr, socklen_t len, std::string& host, int& port) {
  char h[NI_MAXHOST], p[NI_MAXSERV];
  if (::getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, h, sizeof h, p, sizeof p,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return false;
  host = h;
  port = std::atoi(p);
  return true;
}

// The connection socket of `req`: httplib 0.11 gives a handler no handle on it, so it is found among the
// process's open descriptors as the socket whose local and peer addresses are the request's. The
// connection (and so the descriptor) stays open while its handler runs. -1 when not found.
int connection_socket(const httplib::Request& req) {
  if (req.remote_port <= 0 || req.local_port <= 0) return -1;
  std::error_code ec;
  for (std::filesystem::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.empty() || !std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; }))
      continue;
    const int fd = std::atoi(name.c_str());
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    std::string host;
    int port = 0;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0 ||
        !numeric_address(addr, len, host, port) || port != req.remote_port || host != req.remote_addr)
      continue;
    len = sizeof addr;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0 ||
        !numeric_address(addr, len, host, port) || port != req.local_port || host != req.local_addr)
      continue;
    return fd;
  }
  return -1;
}

// Watches the connection of a non-streamed request while its answer is being computed. httplib only
// notices a departed client when it writes, and a plain handler writes once, at the end; so the handler
// waits for its work here, and polls the socket: an orderly close (FIN), a reset or an error from the
// client's side sets `gone`, which the work's cancellation check reads (the engine then drops the sequence
// before its next step and its place in the batch goes to the next request). The socket is only polled,
// never read, so a request that follows on a kept-alive connection is left for httplib.
class ClientWatch {
 public:
  explicit ClientWatch(const httplib::Request& req)
      : gone_(std::make_shared<std::atomic<bool>>(false)), fd_(connection_socket(req)) {}
  std::shared_ptr<std::atomic<bool>> flag() const { return gone_; }
  bool gone() const { return gone_->load(); }

  // Waits for `future`, cancelling through the flag when the client leaves meanwhile; the work still
  // finishes (quickly, once cancelled) before this returns, so nothing outlives the request.
  template <typename T>
  T wait(std::future<T>& future) {
    while (future.wait_for(std::chrono::milliseconds(20)) != std::future_status::ready)
      if (!gone_->load() && closed()) {
        gone_->store(true);
        spdlog::debug("request {}: the client closed the connection; cancelling", t_request_id);
      }
    return future.get();
  }

 private:
  bool closed() const {
    if (fd_ < 0) return false;
    pollfd p{fd_, POLLRDHUP, 0};
    if (::poll(&p, 1, 0) <= 0) return false;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
  }
  std::shared_ptr<std::atomic<bool>> gone_;
  int fd_;
};

// Set on an extraction worker while it runs a job: the job's client-gone flag, read by the VLM extractor's
// generation callback.
thread_local std::shared_ptr<std::atomic<bool>> t_client_gone;

// Live state of one streamed chat completion, shared by the engine (producer) and the connection (consumer).
struct StreamState {
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<std::string> pieces;
  std::atomic<bool> cancelled{false};
};

}  // namespace

struct Server::Impl {
  ServerOptions options;
  std::string backend;  // resolved: ocr | vlm
  std::string device = "cpu";
  std::string model_name;
  std::unique_ptr<httplib::Server> http;
  bool is_tls = false;
  ApiKeys keys;
  Metrics metrics;
  // Declared in the order they depend on each other (destroyed in reverse): the extraction workers use the
  // extractor, which (vlm) uses the scheduler, which runs the model.
  std::unique_ptr<ChatModel> chat;
  std::unique_ptr<BatchScheduler> scheduler;  // the one engine: chat, analyze, vlm extraction
  std::unique_ptr<extract::Extractor> extractor;
  std::unique_ptr<WorkQueue> extract_queue;  // /extract workers (OCR; vlm: preparation, OCR verification)
  std::atomic<bool> draining{false};
  std::atomic<bool> cancel_streams{false};
  std::atomic<int> active_streams{0};
  std::mutex stop_mutex;
  bool stopped = false;
  Clock::time_point started = Clock::now();
  ChatLimits chat_limits;

  std::mutex gpu_mutex;
  GpuReport gpu;
  Clock::time_point gpu_at;

  explicit Impl(ServerOptions o);
  void setup_routes();
  GpuReport gpu_report();
  json model_info() const;
  std::uint64_t max_upload_bytes() const { return static_cast<std::uint64_t>(options.max_upload_mb) << 20; }

  void route(const char* method, const std::string& pattern, const std::string& name,
             std::function<void(const httplib::Request&, httplib::Response&)> handler);
  void handle_health(const httplib::Request&, httplib::Response&);
  void handle_extract(const httplib::Request&, httplib::Response&);
  void handle_analyze(const httplib::Request&, httplib::Response&);
  void handle_benchmark(const httplib::Request&, httplib::Response&);
  void handle_models(const httplib::Request&, httplib::Response&);
  void handle_chat(const httplib::Request&, httplib::Response&);
  void handle_metrics(const httplib::Request&, httplib::Response&);

  std::string upload(const httplib::Request& req, const char* field, bool required = true);
  void check_accepting() const;
  std::vector<extract::Page> decode_upload(const std::string& bytes, const std::string& pages_spec) const;
  template <typename T>
  T run_on(WorkQueue& queue, std::function<T()> job, ClientWatch* watch = nullptr);
  std::vector<Metrics::Gauge> gauges();
};

Server::Impl::Impl(ServerOptions o) : options(std::move(o)) {
  if (options.port < 0 || options.port > 65535) fail(Errc::kUsage, "--port must be in [0, 65535]");
  if (options.max_upload_mb < 1) fail(Errc::kUsage, "--max-upload-mb must be at least 1");
  if (options.max_queue < 0) fail(Errc::kUsage, "--max-queue must be 0 or more");
  if (options.max_batch < 0) fail(Errc::kUsage, "--max-batch must be 0 or more");
  qwen25vl::parse_device(options.device);  // kUsage for an unknown name, kUnsupported for cuda without CUDA
  if (options.tls_cert.empty() != options.tls_key.empty())
    fail(Errc::kUsage, "--tls-cert and --tls-key go together");
  if (!options.api_keys_file.empty()) keys = ApiKeys::load(options.api_keys_file);

  backend = options.backend;
  if (backend == "auto") backend = options.model_dir.empty() ? "ocr" : "vlm";
  if (backend != "ocr" && backend != "vlm")
    fail(Errc::kUsage, "--backend must be auto, ocr or vlm (have '{}')", options.backend);
  if (backend == "vlm" && options.model_dir.empty()) fail(Errc::kUsage, "--backend vlm needs --model DIR");
  if (!options.adapter.empty() && options.model_dir.empty())
    fail(Errc::kUsage, "--adapter needs --model DIR");

  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int engine_batch = options.max_batch > 0 ? options.max_batch : kDefaultEngineBatch;
  if (!options.model_dir.empty()) {
    spdlog::info("server: loading the model from {}", options.model_dir.string());
    chat = ChatModel::load(options.model_dir, options.threads, options.device, options.adapter);
    model_name = chat->id;
    device = chat->device;
    BatchOptions bo;
    bo.max_batch = engine_batch;
    bo.max_queue = options.max_queue;
    scheduler = std::make_unique<BatchScheduler>(*chat, bo, &metrics);
  } else {
    model_name = "tesseract-eng";
  }
  extract::ExtractorConfig config;
  config.threads = options.threads;
  spdlog::info("server: starting the {} extraction backend", backend);
  if (backend == "vlm") {
    // Extraction runs on the shared engine: its sequences batch with the chat routes' and the model is
    // loaded once.
    config.model_dir = options.model_dir;
    extractor = extract::make_vlm_extractor(
        config, [this](std::vector<ChatMessage> messages, std::vector<ImageRGB8> images, int max_new_tokens) {
          GenerationRequest g;
          g.messages = std::move(messages);
          g.images = std::move(images);
          g.max_tokens = max_new_tokens;
          // On an extraction worker: the request's client-gone flag (see run_on), so a client that
          // leaves cancels the page being generated and the pages after it.
          auto gone = t_client_gone;
          if (gone) {
            if (gone->load()) throw ClientGone();
            g.cancelled = [gone] { return gone->load(); };
          }
          GenerationOutput out = scheduler->submit(std::move(g), nullptr).get();
          if (gone && gone->load() && out.finish_reason == "cancelled") throw ClientGone();
          return std::move(out.text);
        });
  } else {
    extractor = extract::make_extractor(backend, config);
  }
  // vlm: the workers mostly wait for the engine, so there are as many as the batch has places.
  const int extract_workers = backend == "vlm"        ? engine_batch
                              : options.max_batch > 0 ? options.max_batch
                                                      : cores;
  extract_queue = std::make_unique<WorkQueue>("extract", extract_workers, options.max_queue);

  chat_limits.max_tokens_limit = options.max_tokens_limit;
  chat_limits.default_max_tokens = std::min(options.default_max_tokens, options.max_tokens_limit);
  chat_limits.max_image_bytes = max_upload_bytes();
  chat_limits.image_limits.max_pages = options.max_pages;
  chat_limits.local_files_root = options.allow_local_files;

  if (!options.tls_cert.empty()) {
    for (const auto& f : {options.tls_cert, options.tls_key})
      if (!std::filesystem::is_regular_file(f)) fail(Errc::kNotFound, "{}: no such file", f.string());
    auto ssl = std::make_unique<httplib::SSLServer>(options.tls_cert.c_str(), options.tls_key.c_str());
    if (!ssl->is_valid())
      fail(Errc::kInvalidInput,
           "TLS: cannot use certificate {} with key {} (PEM files that match are needed)",
           options.tls_cert.string(), options.tls_key.string());
    http = std::move(ssl);
    is_tls = true;
  } else {
    http = std::make_unique<httplib::Server>();
  }
  const int http_threads = options.http_threads > 0
                               ? options.http_threads
                               : std::max(32, 2 * options.max_queue + extract_queue->workers() +
                                                  (scheduler ? scheduler->max_batch() : 0) + 8);
  http->new_task_queue = [http_threads] {
    return new httplib::ThreadPool(static_cast<std::size_t>(http_threads));
  };
  // JSON bodies carry base64 images (4/3 of the bytes) plus the text around them.
  http->set_payload_max_length(max_upload_bytes() / 3 * 4 + (4u << 20));
  http->set_read_timeout(30);
  http->set_write_timeout(30);
  // Idle keep-alive connections stay open longer than a typical Retry-After, so a client that waits and
  // retries does not race the server closing its connection.
  http->set_keep_alive_timeout(30);
  http->set_keep_alive_max_count(1000);
  metrics.set_gauge_source([this] { return gauges(); });
  setup_routes();
  gpu_report();
}

GpuReport Server::Impl::gpu_report() {
  std::lock_guard lock(gpu_mutex);
  if (gpu_at == Clock::time_point{} || Clock::now() - gpu_at > std::chrono::seconds(10)) {
    gpu = query_gpus();
    gpu_at = Clock::now();
  }
  return gpu;
}

json Server::Impl::model_info() const {
  return {{"backend", backend},
          {"model", model_name},
          {"device", device},
          {"version", MEDVISION_VERSION},
          {"chat_model", chat ? json(chat->id) : json(nullptr)}};
}

std::vector<Metrics::Gauge> Server::Impl::gauges() {
  std::vector<Metrics::Gauge> g;
  // The engine's queue: requests admitted but not yet in the batch; running = sequences in the batch.
  const double engine_waiting = scheduler ? scheduler->waiting() : 0;
  const double engine_active = scheduler ? scheduler->active() : 0;
  const double engine_capacity = scheduler ? scheduler->capacity() : 0;
  g.push_back({"medvision_queue_depth", "Requests waiting for a worker (engine: for a place in the batch).",
               "{queue=\"engine\"}", engine_waiting});
  g.push_back({"medvision_queue_depth", "", fmt::format("{{queue=\"{}\"}}", extract_queue->name()),
               static_cast<double>(extract_queue->waiting())});
  g.push_back({"medvision_queue_running", "Requests being worked on (engine: sequences in the batch).",
               "{queue=\"engine\"}", engine_active});
  g.push_back({"medvision_queue_running", "", fmt::format("{{queue=\"{}\"}}", extract_queue->name()),
               static_cast<double>(extract_queue->running())});
  g.push_back(
      {"medvision_queue_capacity", "Waiting places of the queue.", "{queue=\"engine\"}", engine_capacity});
  g.push_back({"medvision_queue_capacity", "", fmt::format("{{queue=\"{}\"}}", extract_queue->name()),
               static_cast<double>(extract_queue->capacity())});
  g.push_back({"medvision_active_sequences", "Sequences in the engine's batch.", "", engine_active});
  g.push_back({"medvision_max_batch", "Sequences that may share one decode step.", "",
               static_cast<double>(scheduler ? scheduler->max_batch() : 0)});
  g.push_back({"medvision_active_streams", "Streamed chat completions in progress.", "",
               static_cast<double>(active_streams.load())});
  g.push_back({"medvision_model_loaded", "1 when a language model is loaded.", "", chat ? 1.0 : 0.0});
  const auto report = gpu_report();
  for (const auto& gpu_info : report.gpus) {
    const auto labels = fmt::format("{{gpu=\"{}\"}}", gpu_info.index);
    g.push_back(
        {"medvision_vram_total_bytes", "GPU memory.", labels, static_cast<double>(gpu_info.vram_total)});
  }
  for (const auto& gpu_info : report.gpus) {
    const auto labels = fmt::format("{{gpu=\"{}\"}}", gpu_info.index);
    g.push_back({"medvision_vram_used_bytes", "GPU memory in use.", labels,
                 static_cast<double>(gpu_info.vram_total - gpu_info.vram_free)});
  }
  g.push_back({"process_resident_memory_bytes", "Resident memory size in bytes.", "",
               static_cast<double>(resident_bytes())});
  g.push_back({"process_uptime_seconds", "Seconds since the server started.", "",
               std::chrono::duration<double>(Clock::now() - started).count()});
  return g;
}

void Server::Impl::route(const char* method, const std::string& pattern, const std::string& name,
                         std::function<void(const httplib::Request&, httplib::Response&)> handler) {
  auto wrapped = [name, handler = std::move(handler)](const httplib::Request& req, httplib::Response& res) {
    if (!t_auth_error.empty()) return send_unauthorized(res);
    t_route = name;
    try {
      handler(req, res);
    } catch (...) {
      send_exception(res, std::current_exception());
    }
  };
  const std::string m = method;
  if (m == "GET")
    http->Get(pattern, wrapped);
  else if (m == "POST")
    http->Post(pattern, wrapped);
  else
    MV_CHECK(false, "method {}", m);
}

void Server::Impl::check_accepting() const {
  if (draining) throw Rejected(503, 5, "the server is shutting down");
}

std::string Server::Impl::upload(const httplib::Request& req, const char* field, bool required) {
  if (!req.is_multipart_form_data())
    fail(Errc::kUnsupported, "send the document as multipart/form-data with a '{}' field", field);
  if (!req.has_file(field)) {
    if (required) fail(Errc::kInvalidInput, "the multipart field '{}' is missing", field);
    return {};
  }
  auto part = req.get_file_value(field);
  if (part.content.empty()) fail(Errc::kInvalidInput, "the multipart field '{}' is empty", field);
  if (part.content.size() > max_upload_bytes())
    fail(Errc::kTooLarge, "the uploaded file is {} bytes, over the limit of {} MiB", part.content.size(),
         options.max_upload_mb);
  return std::move(part.content);
}

std::vector<extract::Page> Server::Impl::decode_upload(const std::string& bytes,
                                                       const std::string& pages_spec) const {
  std::span<const std::uint8_t> data(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
  const auto format = sniff_image_format(data.first(std::min<std::size_t>(data.size(), 16)));
  const auto range = extract::parse_page_range(pages_spec);
  ImageLimits limits;
  limits.max_pages = options.max_pages;
  auto images = decode_image_pages(data, "uploaded document", limits);
  std::vector<extract::Page> pages;
  for (std::size_t i = 0; i < images.size(); ++i) {
    const int number = static_cast<int>(i) + 1;
    if (!range.contains(number)) continue;
    extract::Page p{std::move(images[i]), number, std::nullopt};
    if (format == ImageFormat::kPdf) p.dpi = limits.pdf_dpi;
    pages.push_back(std::move(p));
  }
  if (pages.empty())
    fail(Errc::kInvalidInput, "the page range '{}' selects none of the document's {} page(s)", pages_spec,
         images.size());
  return pages;
}

// Runs `job` on `queue` and waits for it; with a watch, a job whose client left before it started is
// skipped, and one that runs sees the client's flag in t_client_gone.
template <typename T>
T Server::Impl::run_on(WorkQueue& queue, std::function<T()> job, ClientWatch* watch) {
  check_accepting();
  auto promise = std::make_shared<std::promise<T>>();
  auto future = promise->get_future();
  auto gone = watch ? watch->flag() : nullptr;
  const auto admit = queue.try_submit([promise, gone, job = std::move(job)] {
    try {
      if (gone && gone->load()) throw ClientGone();
      t_client_gone = gone;
      T value = job();
      t_client_gone = nullptr;
      promise->set_value(std::move(value));
    } catch (...) {
      t_client_gone = nullptr;
      promise->set_exception(std::current_exception());
    }
  });
  if (admit == WorkQueue::Admit::kFull) {
    metrics.observe_rejection(queue.name(), 429);
    throw Rejected(429, queue.retry_after_seconds(),
                   fmt::format("the {} queue is full; retry later", queue.name()));
  }
  if (admit == WorkQueue::Admit::kClosed) {
    metrics.observe_rejection(queue.name(), 503);
    throw Rejected(503, 5, "the server is shutting down");
  }
  return watch ? watch->wait(future) : future.get();
}

void Server::Impl::handle_health(const httplib::Request&, httplib::Response& res) {
  const auto report = gpu_report();
  const GpuInfo* g = report.gpus.empty() ? nullptr : &report.gpus.front();
  constexpr double kMiB = 1024.0 * 1024.0;
  json body = {
      {"status", draining ? "shutting_down" : "ok"},
      {"model_loaded", extractor != nullptr},
      {"gpu_available", g != nullptr && g->kernel_ok},
      {"gpu_name", g ? json(g->name) : json(nullptr)},
      {"current_vram_usage_mb", g ? json(static_cast<double>(g->vram_total - g->vram_free) / kMiB) : json(0)},
      {"total_vram_mb", g ? json(static_cast<double>(g->vram_total) / kMiB) : json(0)},
      {"timestamp", iso_timestamp()},
      {"backend", backend},
      {"model", model_name},
      {"chat_model", chat ? json(chat->id) : json(nullptr)},
      {"device", device},
      {"version", MEDVISION_VERSION}};
  send_json(res, draining ? 503 : 200, body);
}

void Server::Impl::handle_extract(const httplib::Request& req, httplib::Response& res) {
  check_accepting();
  std::string bytes = upload(req, "file");
  {
    std::span<const std::uint8_t> head(reinterpret_cast<const std::uint8_t*>(bytes.data()),
                                       std::min<std::size_t>(bytes.size(), 16));
    if (sniff_image_format(head) == ImageFormat::kUnknown)
      fail(Errc::kUnsupported, "the uploaded file is not a PNG, JPEG, TIFF, WebP, BMP or PDF document");
  }
  auto field = [&](const char* name) {
    if (req.has_param(name)) return req.get_param_value(name);
    if (req.has_file(name)) return req.get_file_value(name).content;
    return std::string{};
  };
  const std::string format = field("format");
  if (!format.empty() && format != "json" && format != "fhir")
    fail(Errc::kInvalidInput, "format must be json or fhir (have '{}')", format.substr(0, 16));
  const std::string pages_spec = field("pages");
  extract::ExtractOptions eo;
  const std::string type = field("document_type");
  if (!type.empty()) {
    const auto& types = extract::document_types();
    if (std::find(types.begin(), types.end(), type) == types.end())
      fail(Errc::kInvalidInput, "document_type is not one of the known types (see docs/schema.json)");
    eo.document_type = type;
  }
  eo.max_new_tokens = std::min(eo.max_new_tokens, options.max_tokens_limit);  // vlm: the answer's budget
  const auto t0 = Clock::now();
  const bool want_fhir = format == "fhir";
  ClientWatch watch(req);
  json result = run_on<json>(
      *extract_queue,
      [this, bytes = std::move(bytes), pages_spec, eo, want_fhir] {
        auto pages = decode_upload(bytes, pages_spec);
        extract::Extraction e;
        try {
          e = extractor->extract(pages, eo);
        } catch (const Error& error) {
          // The pages were decoded above, so what the VLM extractor still rejects as invalid is the model's
          // answer (not JSON, not the schema): a bad gateway, not a bad request.
          if (backend == "vlm" && error.code() == Errc::kInvalidInput)
            throw ModelOutputError(
                "the model's answer is not a valid extraction; retry or use the OCR backend");
          throw;
        }
        json r = {{"extraction", extract::to_json(e)}};
        if (want_fhir) r["fhir"] = extract::to_fhir_bundle(e);
        return r;
      },
      &watch);
  if (watch.gone()) throw ClientGone();  // OCR work is not interrupted, but nobody is there to answer
  json& extraction = result["extraction"];
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  json body = {{"extracted_content", extraction.dump(2)},
               {"inference_latency_seconds", seconds},
               {"model_info", model_info()},
               {"timestamp", iso_timestamp()},
               {"extraction", extraction}};
  if (want_fhir) body["fhir"] = std::move(result["fhir"]);
  send_json(res, 200, body);
}

void Server::Impl::handle_analyze(const httplib::Request& req, httplib::Response& res) {
  check_accepting();
  if (!scheduler)
    throw Rejected(503, 0, "no language model is loaded: start the server with --model DIR to use /analyze");
  std::string bytes = upload(req, "file");
  if (!req.has_file("prompt") && !req.has_param("prompt"))
    fail(Errc::kInvalidInput, "the field 'prompt' is missing");
  std::string prompt =
      req.has_file("prompt") ? req.get_file_value("prompt").content : req.get_param_value("prompt");
  if (prompt.find_first_not_of(" \t\r\n") == std::string::npos)
    fail(Errc::kInvalidInput, "the prompt is empty");
  if (prompt.size() > 32768) fail(Errc::kTooLarge, "the prompt is over 32 KiB");
  {
    std::span<const std::uint8_t> head(reinterpret_cast<const std::uint8_t*>(bytes.data()),
                                       std::min<std::size_t>(bytes.size(), 16));
    if (sniff_image_format(head) == ImageFormat::kUnknown)
      fail(Errc::kUnsupported, "the uploaded file is not a PNG, JPEG, TIFF, WebP, BMP or PDF document");
  }
  const std::string pages_spec = req.has_param("pages") ? req.get_param_value("pages") : "1";
  int max_tokens = chat_limits.default_max_tokens;
  if (req.has_param("max_tokens")) {
    try {
      max_tokens = std::stoi(req.get_param_value("max_tokens"));
    } catch (...) {
      max_tokens = 0;
    }
    if (max_tokens < 1 || max_tokens > chat_limits.max_tokens_limit)
      fail(Errc::kInvalidInput, "max_tokens must be an integer in [1, {}]", chat_limits.max_tokens_limit);
  }
  GenerationRequest g;
  ChatMessage user;
  user.role = "user";
  for (auto& page : decode_upload(bytes, pages_spec)) {
    g.images.push_back(std::move(page.image));
    user.parts.push_back({ChatPart::Kind::kImage, {}});
  }
  user.parts.push_back({ChatPart::Kind::kText, std::move(prompt)});
  g.messages.push_back(std::move(user));
  g.max_tokens = max_tokens;
  ClientWatch watch(req);
  g.cancelled = [gone = watch.flag()] { return gone->load(); };
  const auto t0 = Clock::now();
  auto future = scheduler->submit(std::move(g), nullptr);
  GenerationOutput out = watch.wait(future);
  if (watch.gone() && out.finish_reason == "cancelled") throw ClientGone();
  json body = {{"answer", out.text},
               {"finish_reason", out.finish_reason},
               {"inference_latency_seconds", std::chrono::duration<double>(Clock::now() - t0).count()},
               {"model_info", model_info()},
               {"usage", usage_json(out)},
               {"timestamp", iso_timestamp()}};
  send_json(res, 200, body);
}

void Server::Impl::handle_benchmark(const httplib::Request&, httplib::Response& res) {
  namespace fs = std::filesystem;
  json benchmarks = json::object(), errors = json::object();
  const fs::path root = options.benchmarks_dir;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) {
    send_json(res, 200,
              {{"benchmarks", benchmarks},
               {"errors", errors},
               {"count", 0},
               {"timestamp", iso_timestamp()},
               {"note", "no benchmarks folder"}});
    return;
  }
  std::vector<fs::path> files;
  for (auto it = fs::recursive_directory_iterator(root, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
    if (it->is_regular_file() && it->path().extension() == ".json" && it->file_size() <= (64u << 20))
      files.push_back(it->path());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    const std::string key = f.lexically_relative(root).generic_string();
    try {
      const std::string text = read_file(f);
      auto j = json::parse(text, nullptr, false);
      if (j.is_discarded())
        errors[key] = "not valid JSON";
      else
        benchmarks[key] = std::move(j);
    } catch (const Error& e) {
      errors[key] = "unreadable";
    }
  }
  send_json(res, 200,
            {{"benchmarks", benchmarks},
             {"errors", errors},
             {"count", benchmarks.size()},
             {"timestamp", iso_timestamp()}});
}

void Server::Impl::handle_models(const httplib::Request&, httplib::Response& res) {
  json data = json::array();
  if (chat)
    data.push_back(
        {{"id", chat->id}, {"object", "model"}, {"created", unix_seconds()}, {"owned_by", "medvision"}});
  send_json(res, 200, {{"object", "list"}, {"data", data}});
}

void Server::Impl::handle_chat(const httplib::Request& req, httplib::Response& res) {
  check_accepting();
  if (!scheduler)
    throw Rejected(
        503, 0, "no language model is loaded: start the server with --model DIR to use /v1/chat/completions");
  const auto ct = req.get_header_value("Content-Type");
  if (!ct.empty() && ct.find("application/json") == std::string::npos)
    fail(Errc::kUnsupported, "send the request as application/json");
  json body = json::parse(req.body, nullptr, false);
  if (body.is_discarded()) fail(Errc::kInvalidInput, "the request body is not valid JSON");
  ChatRequest chat_req = parse_chat_request(body, chat_limits);
  const std::string id = "chatcmpl-" + random_hex(12);
  const std::int64_t created = unix_seconds();
  const std::string model = chat->id;

  if (!chat_req.stream) {
    ClientWatch watch(req);
    chat_req.generation.cancelled = [gone = watch.flag()] { return gone->load(); };
    auto future = scheduler->submit(std::move(chat_req.generation), nullptr);
    GenerationOutput out = watch.wait(future);
    if (watch.gone() && out.finish_reason == "cancelled") throw ClientGone();
    std::string content = out.text;
    if (chat_req.json_object) {
      auto j = find_json_object(out.text);
      if (!j) {
        send_error(res, 502, "the model's answer is not a JSON object; retry or lower the temperature");
        return;
      }
      content = j->dump();
    }
    send_json(res, 200, chat_completion_json(id, model, created, out, content));
    return;
  }

  auto state = std::make_shared<StreamState>();
  TextSink sink = [state, this](std::string_view piece) {
    if (state->cancelled || cancel_streams) return false;
    {
      std::lock_guard lock(state->mutex);
      state->pieces.emplace_back(piece);
    }
    state->cv.notify_one();
    return true;
  };
  // The engine polls this before every step, so a client that went away frees its place in the batch even
  // while no text is coming (held back by a stop string or an incomplete UTF-8 character) or while it waits.
  chat_req.generation.cancelled = [state, this] { return state->cancelled.load() || cancel_streams.load(); };
  auto future = std::make_shared<std::future<GenerationOutput>>(
      scheduler->submit(std::move(chat_req.generation), sink));
  const bool include_usage = chat_req.include_usage, json_object = chat_req.json_object;
  const std::string request_id = t_request_id;
  ++active_streams;
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  t_streamed = true;
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, state, future, id, model, created, include_usage, json_object, request_id, started = false,
       text = std::string()](std::size_t, httplib::DataSink& out) mutable {
        auto event = [&out](const json& j) {
          const std::string s = "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
          return out.write(s.data(), s.size());
        };
        if (!started) {
          started = true;
          if (!event(
                  chat_chunk_json(id, model, created, {{"role", "assistant"}, {"content", ""}}, nullptr))) {
            state->cancelled = true;
            return false;
          }
        }
        for (;;) {
          std::deque<std::string> batch;
          {
            std::unique_lock lock(state->mutex);
            state->cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return !state->pieces.empty(); });
            batch.swap(state->pieces);
          }
          for (auto& piece : batch) {
            text += piece;
            if (!event(chat_chunk_json(id, model, created, {{"content", piece}}, nullptr))) {
              state->cancelled =
                  true;  // the client went away: the engine drops the sequence at its next token
              return false;
            }
          }
          if (!batch.empty()) continue;
          if (out.is_writable && !out.is_writable()) {
            state->cancelled = true;
            return false;
          }
          if (future->wait_for(std::chrono::seconds(0)) != std::future_status::ready) continue;
          // Finished: flush what arrived in between, then the final chunk.
          {
            std::lock_guard lock(state->mutex);
            batch.swap(state->pieces);
          }
          for (auto& piece : batch) {
            text += piece;
            event(chat_chunk_json(id, model, created, {{"content", piece}}, nullptr));
          }
          try {
            GenerationOutput result = future->get();
            if (json_object && !find_json_object(text)) {
              event(error_body(502, "the model's answer is not a JSON object", request_id));
            }
            const std::string reason = result.finish_reason == "cancelled" ? "stop" : result.finish_reason;
            event(chat_chunk_json(id, model, created, json::object(), reason));
            if (include_usage) {
              json u = chat_chunk_json(id, model, created, json::object(), nullptr);
              u["choices"] = json::array();
              u["usage"] = usage_json(result);
              event(u);
            }
          } catch (const Error& e) {
            const int status = http_status(e.code());
            event(error_body(
                status, status >= 500 ? fmt::format("internal error (request id {})", request_id) : e.what(),
                request_id));
          } catch (const std::exception&) {
            event(error_body(500, fmt::format("internal error (request id {})", request_id), request_id));
          }
          const std::string done = "data: [DONE]\n\n";
          out.write(done.data(), done.size());
          out.done();
          return true;
        }
      },
      [this, state, future](bool) {
        // Runs when the response ends (normally or not): a sequence still running is cancelled.
        state->cancelled = true;
        --active_streams;
      });
}

void Server::Impl::handle_metrics(const httplib::Request&, httplib::Response& res) {
  res.status = 200;
  res.set_content(metrics.render(), "text/plain; version=0.0.4; charset=utf-8");
}

void Server::Impl::setup_routes() {
  http->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    t_start = Clock::now();
    t_route = "other";
    t_observed = false;
    t_streamed = false;
    t_auth_error.clear();
    const auto client_id = req.get_header_value("X-Request-Id");
    t_request_id = valid_client_request_id(client_id) ? client_id : random_hex(8);
    res.set_header("X-Request-Id", t_request_id);
    res.set_header("X-Content-Type-Options", "nosniff");
    res.set_header("Referrer-Policy", "no-referrer");
    res.set_header("Cache-Control", "no-store");
    if (!keys.enabled()) return httplib::Server::HandlerResponse::Unhandled;
    static const char* const kOpen[] = {"/health", "/",          "/index.html",
                                        "/app.js", "/style.css", "/favicon.ico"};
    for (const char* open : kOpen)
      if (req.path == open) return httplib::Server::HandlerResponse::Unhandled;
    std::string key = req.get_header_value("X-API-Key");
    const auto auth = req.get_header_value("Authorization");
    if (key.empty() && auth.size() > 7 &&
        (auth.compare(0, 7, "Bearer ") == 0 || auth.compare(0, 7, "bearer ") == 0))
      key = auth.substr(7);
    if (keys.accepts(key)) return httplib::Server::HandlerResponse::Unhandled;
    t_auth_error = key.empty() ? "an API key is required (Authorization: Bearer KEY or X-API-Key)"
                               : "the API key is not valid";
    return httplib::Server::HandlerResponse::Unhandled;  // answered once the body is read
  });
  http->set_error_handler(
      httplib::Server::HandlerWithResponse([this](const httplib::Request&, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        if (!t_auth_error.empty() && (res.status == 404 || res.status == 405)) {
          send_unauthorized(res);  // routes are not disclosed to clients without a key
          return httplib::Server::HandlerResponse::Handled;
        }
        std::string message;
        switch (res.status) {
          case 404:
            message = "no such route";
            break;
          case 413:
            message = fmt::format("the request body is over the limit ({} MiB per document)",
                                  options.max_upload_mb);
            break;
          case 400:
            message = "malformed HTTP request";
            break;
          case 405:
            message = "method not allowed";
            break;
          default:
            message = fmt::format("HTTP {}", res.status);
        }
        send_json(res, res.status, error_body(res.status, message, t_request_id));
        return httplib::Server::HandlerResponse::Handled;
      }));
  http->set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    send_exception(res, ep);
  });
  // A response with a body is counted before it is written, so a client that reads /metrics right after
  // its own request finds that request counted; a streamed response is counted when its stream has ended
  // (its duration is the whole stream).
  http->set_post_routing_handler([this](const httplib::Request&, httplib::Response& res) {
    if (t_streamed) return;
    metrics.observe_request(t_route, res.status,
                            std::chrono::duration<double>(Clock::now() - t_start).count());
    t_observed = true;
  });
  // The Content-Length header as logged: digits only (a client controls the header).
  static const auto content_length_for_log = [](const std::string& v) -> std::string {
    if (v.empty()) return "0";
    if (v.size() > 20 || !std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return "?";
    return v;
  };
  http->set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    const double seconds = std::chrono::duration<double>(Clock::now() - t_start).count();
    if (!t_observed) metrics.observe_request(t_route, res.status, seconds);
    // Route pattern, status, sizes and time only: no paths with parameters, no names, no content. The
    // method is logged only when it is a known one: a malformed request line can carry any text there.
    static constexpr std::string_view kMethods[] = {"GET",  "POST",    "PUT",  "DELETE",
                                                    "HEAD", "OPTIONS", "PATCH"};
    const bool known = std::find(std::begin(kMethods), std::end(kMethods), req.method) != std::end(kMethods);
    spdlog::info("request {} {} {} -> {} ({} bytes in, {:.1f} ms)", t_request_id, known ? req.method : "?",
                 t_route, res.status, content_length_for_log(req.get_header_value("Content-Length")),
                 seconds * 1000.0);
  });

  route("GET", "/health", "/health", [this](auto& q, auto& r) { handle_health(q, r); });
  route("POST", "/extract", "/extract", [this](auto& q, auto& r) { handle_extract(q, r); });
  route("POST", "/analyze", "/analyze", [this](auto& q, auto& r) { handle_analyze(q, r); });
  route("GET", "/benchmark", "/benchmark", [this](auto& q, auto& r) { handle_benchmark(q, r); });
  route("GET", "/v1/models", "/v1/models", [this](auto& q, auto& r) { handle_models(q, r); });
  route("POST", "/v1/chat/completions", "/v1/chat/completions",
        [this](auto& q, auto& r) { handle_chat(q, r); });
  route("GET", "/metrics", "/metrics", [this](auto& q, auto& r) { handle_metrics(q, r); });
  for (const auto& asset : web_assets()) {
    route("GET", std::string(asset.path), "/static",
          [&asset](const httplib::Request&, httplib::Response& res) {
            res.set_header(
                "Content-Security-Policy",
                "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
                "connect-src 'self'; frame-ancestors 'none'");
            res.set_header("Cache-Control", "no-cache");
            res.set_content(std::string(asset.body), std::string(asset.content_type).c_str());
          });
  }
}

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}

Server::~Server() {
  stop();
  impl_->extract_queue->close();  // its jobs may still wait for the engine
  if (impl_->scheduler) impl_->scheduler->close();
}

int Server::bind() {
  auto& o = impl_->options;
  int port = o.port;
  if (port == 0) {
    port = impl_->http->bind_to_any_port(o.host);
    if (port < 0) fail(Errc::kIo, "cannot bind {} to a free port", o.host);
  } else if (!impl_->http->bind_to_port(o.host, port)) {
    fail(Errc::kIo, "cannot listen on {}:{} (address in use or not available)", o.host, port);
  }
  o.port = port;
  spdlog::info("server: listening on {}://{}:{} ({} backend{}{})", impl_->is_tls ? "https" : "http", o.host,
               port, impl_->backend, impl_->chat ? ", model " + impl_->chat->id : "",
               impl_->keys.enabled() ? fmt::format(", {} API keys", impl_->keys.size()) : "");
  return port;
}

void Server::run() {
  {
    std::lock_guard lock(impl_->stop_mutex);
    if (impl_->stopped) return;
  }
  impl_->http->listen_after_bind();
}

void Server::stop() {
  auto& d = *impl_;
  {
    std::lock_guard lock(d.stop_mutex);
    if (d.stopped) return;
    d.stopped = true;
  }
  d.draining = true;
  spdlog::info("server: shutting down; finishing admitted work");
  const auto deadline = Clock::now() + std::chrono::duration<double>(d.options.shutdown_timeout_s);
  auto busy = [&] {
    return (d.scheduler ? d.scheduler->waiting() + d.scheduler->active() : 0) + d.extract_queue->waiting() +
           d.extract_queue->running() + d.active_streams.load();
  };
  while (busy() > 0 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (busy() > 0) {
    spdlog::warn("server: cancelling {} streamed completions after {:.0f} s", d.active_streams.load(),
                 d.options.shutdown_timeout_s);
    d.cancel_streams = true;
  }
  d.http->stop();
  spdlog::info("server: stopped");
}

bool Server::tls() const { return impl_->is_tls; }
const ServerOptions& Server::options() const { return impl_->options; }

}  // namespace mv::server
