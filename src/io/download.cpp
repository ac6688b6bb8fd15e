#include "io/download.hpp"

#include <curl/curl.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "core/error.hpp"
#include "core/fd_write.hpp"
#include "core/log.hpp"
#include "core/progress.hpp"

namespace mv {

namespace {

namespace fs = std::filesystem;

constexpr const char* kDefaultEndpoint = "https://huggingface.co";
constexpr std::size_t kMaxApiBody = 64u << 20;   // one page of the tree API is far smaller
constexpr std::size_t kMaxErrorBody = 8u << 10;  // error bodies are only read for their message
constexpr int kMaxRedirects = 10;
constexpr std::size_t kMaxPages = 100000;
constexpr std::size_t kMaxFiles = 1000000;

// ---------------------------------------------------------------------------------------------------
// Errors with a retry policy attached.

// A failure worth retrying (5xx, 429, resets, timeouts, refused connections).
class TransientError : public Error {
 public:
  TransientError(std::string message, double retry_after = -1.0)
      : Error(Errc::kNetwork, std::move(message)), retry_after_(retry_after) {}
  double retry_after() const { return retry_after_; }

 private:
  double retry_after_;
};

// The downloaded bytes are wrong (size or checksum): the partial file must go.
class IntegrityError : public Error {
 public:
  explicit IntegrityError(std::string message) : Error(Errc::kInvalidInput, std::move(message)) {}
};

// ---------------------------------------------------------------------------------------------------
// Small helpers.

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r' || s.front() == '\n'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

bool is_hex(std::string_view s, std::size_t n) {
  return s.size() == n && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isxdigit(c); });
}

// Text from a server shown in an error message: printable ASCII only, bounded.
std::string sanitize(std::string_view s, std::size_t max_len = 200) {
  std::string out;
  for (unsigned char c : s) {
    if (out.size() >= max_len) {
      out += "...";
      break;
    }
    out += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
  }
  return out;
}

// Percent-encodes everything but RFC 3986 unreserved characters (and '/' when keep_slash).
std::string percent_encode(std::string_view s, bool keep_slash) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

void curl_global() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) fail(Errc::kInternal, "curl_global_init failed");
  });
}

// URL parts through libcurl's parser.
struct UrlHandle {
  CURLU* u = curl_url();
  ~UrlHandle() { curl_url_cleanup(u); }
  std::string get(CURLUPart part, unsigned flags = 0) const {
    char* p = nullptr;
    if (curl_url_get(u, part, &p, flags) != CURLUE_OK || p == nullptr) return {};
    std::string s(p);
    curl_free(p);
    return s;
  }
};

struct Origin {
  std::string scheme, host, port;
  bool operator==(const Origin&) const = default;
};

Origin origin_of(const std::string& url) {
  UrlHandle h;
  if (!h.u || curl_url_set(h.u, CURLUPART_URL, url.c_str(), 0) != CURLUE_OK)
    fail(Errc::kInvalidInput, "invalid URL '{}'", sanitize(url));
  return {lower(h.get(CURLUPART_SCHEME)), lower(h.get(CURLUPART_HOST)),
          h.get(CURLUPART_PORT, CURLU_DEFAULT_PORT)};
}

// "host:port" of a URL, for messages.
std::string host_of(const std::string& url) {
  try {
    const Origin o = origin_of(url);
    return o.host + ":" + o.port;
  } catch (const Error&) {
    return sanitize(url);
  }
}

// Resolves a (possibly relative) reference against a base URL; only http(s) results are accepted.
std::string resolve_url(const std::string& base, const std::string& ref) {
  UrlHandle h;
  if (!h.u || curl_url_set(h.u, CURLUPART_URL, base.c_str(), 0) != CURLUE_OK ||
      curl_url_set(h.u, CURLUPART_URL, ref.c_str(), 0) != CURLUE_OK)
    fail(Errc::kNetwork, "invalid redirect or link target '{}' (from {})", sanitize(ref), host_of(base));
  const std::string scheme = lower(h.get(CURLUPART_SCHEME));
  if (scheme != "http" && scheme != "https")
    fail(Errc::kNetwork, "refusing to follow a link to a non-HTTP URL '{}'", sanitize(ref));
  return h.get(CURLUPART_URL);
}

// The rel="next" target of an RFC 8288 Link header, as the hub paginates; empty when there is none.
std::string link_next(std::string_view header) {
  std::size_t i = 0;
  while (i < header.size()) {
    const std::size_t lt = header.find('<', i);
    if (lt == std::string_view::npos) break;
    const std::size_t gt = header.find('>', lt + 1);
    if (gt == std::string_view::npos) break;
    const std::string_view target = header.substr(lt + 1, gt - lt - 1);
    std::size_t end = header.find('<', gt + 1);  // next link-value (parameters hold no '<')
    if (end == std::string_view::npos) end = header.size();
    std::string_view params = header.substr(gt + 1, end - gt - 1);
    // Parameters: ; name=value or ; name="value with spaces"
    std::size_t p = 0;
    while ((p = params.find(';', p)) != std::string_view::npos) {
      ++p;
      std::size_t eq = params.find('=', p);
      if (eq == std::string_view::npos) break;
      const std::string name = lower(trim(params.substr(p, eq - p)));
      std::string_view value = params.substr(eq + 1);
      const std::size_t stop = value.find_first_of(';');
      value = trim(value.substr(0, stop));
      if (!value.empty() && value.back() == ',') value = trim(value.substr(0, value.size() - 1));
      if (value.size() >= 2 && value.front() == '"' && value.back() == '"')
        value = value.substr(1, value.size() - 2);
      if (name == "rel") {
        std::size_t s = 0;
        const std::string rels = lower(value);
        while (s < rels.size()) {
          std::size_t e = rels.find(' ', s);
          if (e == std::string::npos) e = rels.size();
          if (rels.compare(s, e - s, "next") == 0) return std::string(target);
          s = e + 1;
        }
      }
    }
    i = end;
  }
  return {};
}

// ---------------------------------------------------------------------------------------------------
// Hashing (OpenSSL EVP).

class Hasher {
 public:
  explicit Hasher(const EVP_MD* md) : ctx_(EVP_MD_CTX_new()), md_(md) {
    if (!ctx_) fail(Errc::kInternal, "EVP_MD_CTX_new failed");
    reset();
  }
  ~Hasher() { EVP_MD_CTX_free(ctx_); }
  Hasher(const Hasher&) = delete;
  Hasher& operator=(const Hasher&) = delete;
  void reset() {
    if (EVP_DigestInit_ex(ctx_, md_, nullptr) != 1) fail(Errc::kInternal, "EVP_DigestInit_ex failed");
  }
  void update(const void* data, std::size_t n) {
    if (n > 0 && EVP_DigestUpdate(ctx_, data, n) != 1) fail(Errc::kInternal, "EVP_DigestUpdate failed");
  }
  std::string hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(ctx_, digest, &len) != 1) fail(Errc::kInternal, "EVP_DigestFinal_ex failed");
    static const char* kHex = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < len; ++i) {
      out += kHex[digest[i] >> 4];
      out += kHex[digest[i] & 15];
    }
    return out;
  }

 private:
  EVP_MD_CTX* ctx_;
  const EVP_MD* md_;
};

// sha256 of a file's content, plus its git blob sha1 when the listing gave one to check against.
class FileHashes {
 public:
  explicit FileHashes(const RemoteFile& file)
      : file_(file), sha256_(EVP_sha256()), sha1_(EVP_sha1()), use_git_(!file.lfs && !file.git_oid.empty()) {
    reset();
  }
  void reset() {
    sha256_.reset();
    if (use_git_) {
      sha1_.reset();
      const std::string prefix = fmt::format("blob {}", file_.size);
      sha1_.update(prefix.data(), prefix.size() + 1);  // with the terminating NUL
    }
  }
  void update(const void* data, std::size_t n) {
    sha256_.update(data, n);
    if (use_git_) sha1_.update(data, n);
  }
  // Returns the content's sha256 after checking it (LFS) or the git oid (other files).
  std::string finish_and_verify(const std::string& where) {
    std::string sha = sha256_.hex();
    if (file_.lfs && sha != file_.sha256)
      throw IntegrityError(fmt::format("{}: sha256 mismatch (expected {}, got {}): the download is corrupt",
                                       where, file_.sha256, sha));
    if (use_git_) {
      const std::string oid = sha1_.hex();
      if (oid != file_.git_oid)
        throw IntegrityError(
            fmt::format("{}: git blob sha1 mismatch (expected {}, got {}): the download is corrupt", where,
                        file_.git_oid, oid));
    }
    return sha;
  }

 private:
  const RemoteFile& file_;
  Hasher sha256_;
  Hasher sha1_;
  bool use_git_;
};

// Feeds the first `limit` bytes of a file to the hashes; returns false when the file is shorter.
bool hash_file_prefix(const fs::path& path, std::uint64_t limit, FileHashes& hashes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(Errc::kIo, "{}: cannot open: {}", path.string(), std::strerror(errno));
  std::vector<char> buf(1u << 20);
  std::uint64_t done = 0;
  bool ok = true;
  while (done < limit) {
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), limit - done));
    const ssize_t n = ::read(fd, buf.data(), want);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      ::close(fd);
      fail(Errc::kIo, "{}: read failed: {}", path.string(), std::strerror(e));
    }
    if (n == 0) {
      ok = false;
      break;
    }
    hashes.update(buf.data(), static_cast<std::size_t>(n));
    done += static_cast<std::uint64_t>(n);
  }
  ::close(fd);
  return ok;
}

class FileDescriptor {
 public:
  FileDescriptor(const fs::path& path, int flags) : path_(path) {
    fd_ = ::open(path.c_str(), flags | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd_ < 0) fail(Errc::kIo, "{}: cannot open for writing: {}", path.string(), std::strerror(errno));
  }
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  void write_all(const char* p, std::size_t n) { write_all_fd(fd_, p, n, path_); }
  void truncate() {
    if (::ftruncate(fd_, 0) != 0)
      fail(Errc::kIo, "{}: truncate failed: {}", path_.string(), std::strerror(errno));
  }
  void sync_and_close() {
    if (::fsync(fd_) != 0) fail(Errc::kIo, "{}: fsync failed: {}", path_.string(), std::strerror(errno));
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail(Errc::kIo, "{}: close failed: {}", path_.string(), std::strerror(errno));
  }

 private:
  fs::path path_;
  int fd_ = -1;
};

// ---------------------------------------------------------------------------------------------------
// HTTP over libcurl, one request at a time, redirects followed by hand.

using Headers = std::map<std::string, std::string>;  // lowercase name -> values joined with ", "

struct Response {
  long status = 0;
  Headers headers;
  std::string body;  // 2xx without a handler: the body; other statuses: its first bytes
  std::string url;   // the URL that gave this answer (after redirects)
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }
};

// Streams a 2xx body: on_start once (before the first byte, or after an empty body), then on_data.
struct BodyHandler {
  std::function<void(long status, const Headers& headers)> on_start;
  std::function<void(const char* data, std::size_t n)> on_data;
  bool started = false;
};

struct TransferContext {
  CURL* curl = nullptr;
  Headers headers;
  BodyHandler* handler = nullptr;
  std::string body;
  std::size_t max_body = 0;
  bool body_too_large = false;
  std::exception_ptr error;
};

std::size_t on_header(char* buffer, std::size_t size, std::size_t count, void* user) {
  auto* ctx = static_cast<TransferContext*>(user);
  const std::size_t len = size * count;
  const std::string_view line = trim(std::string_view(buffer, len));
  if (line.starts_with("HTTP/")) {
    ctx->headers.clear();  // a new response (redirect hop or interim answer)
  } else if (const std::size_t colon = line.find(':'); colon != std::string_view::npos && colon > 0) {
    const std::string name = lower(trim(line.substr(0, colon)));
    const std::string value(trim(line.substr(colon + 1)));
    auto [it, inserted] = ctx->headers.emplace(name, value);
    if (!inserted && it->second.size() < 65536) it->second += ", " + value;
  }
  return len;
}

std::size_t on_body(char* buffer, std::size_t size, std::size_t count, void* user) {
  auto* ctx = static_cast<TransferContext*>(user);
  const std::size_t len = size * count;
  long code = 0;
  curl_easy_getinfo(ctx->curl, CURLINFO_RESPONSE_CODE, &code);
  try {
    if (code >= 200 && code < 300 && ctx->handler != nullptr) {
      if (!ctx->handler->started) {
        ctx->handler->started = true;
        ctx->handler->on_start(code, ctx->headers);
      }
      ctx->handler->on_data(buffer, len);
    } else if (code >= 300 && code < 400) {
      // a redirect's body is of no use
    } else if (ctx->body.size() + len <= ctx->max_body) {
      ctx->body.append(buffer, len);
    } else if (code >= 200 && code < 300) {
      ctx->body_too_large = true;
      return 0;  // aborts the transfer
    } else {
      ctx->body.append(buffer, ctx->max_body - ctx->body.size());  // keep the start of an error page
    }
  } catch (...) {
    ctx->error = std::current_exception();
    return 0;
  }
  return len;
}

class HttpClient {
 public:
  HttpClient(const DownloadOptions& options, std::string endpoint, std::string token)
      : options_(options), endpoint_origin_(origin_of(endpoint)), token_(std::move(token)) {
    curl_global();
    curl_ = curl_easy_init();
    if (!curl_) fail(Errc::kInternal, "curl_easy_init failed");
  }
  ~HttpClient() { curl_easy_cleanup(curl_); }
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // GET with redirects followed; returns the final answer whatever its status. Transport failures
  // throw TransientError (worth a retry) or Error(kNetwork).
  Response get(std::string url, const std::vector<std::string>& extra_headers, BodyHandler* handler,
               std::size_t max_body, bool compressed) {
    for (int hop = 0; hop <= kMaxRedirects; ++hop) {
      // Credentials only go to the endpoint's own origin (scheme, host and port), never to a CDN.
      const bool send_auth = !token_.empty() && origin_of(url) == endpoint_origin_;
      Response r = get_once(url, extra_headers, handler, max_body, compressed, send_auth);
      const bool redirect =
          r.status == 301 || r.status == 302 || r.status == 303 || r.status == 307 || r.status == 308;
      const std::string location = r.header("location");
      if (!redirect || location.empty()) return r;
      const std::string next = resolve_url(url, location);
      spdlog::debug("download: HTTP {} redirect from {} to {}", r.status, host_of(url), host_of(next));
      url = next;
    }
    fail(Errc::kNetwork, "too many redirects (more than {}) starting from {}", kMaxRedirects, host_of(url));
  }

 private:
  Response get_once(const std::string& url, const std::vector<std::string>& extra_headers,
                    BodyHandler* handler, std::size_t max_body, bool compressed, bool send_auth) {
    curl_easy_reset(curl_);  // keeps the connection cache
    TransferContext ctx;
    ctx.curl = curl_;
    ctx.handler = handler;
    ctx.max_body = max_body;
    char error_buffer[CURL_ERROR_SIZE] = {0};

    struct curl_slist* list = nullptr;
    std::unique_ptr<struct curl_slist, decltype(&curl_slist_free_all)> guard(nullptr, &curl_slist_free_all);
    auto add_header = [&](const std::string& h) {
      struct curl_slist* next = curl_slist_append(list, h.c_str());
      if (!next) fail(Errc::kInternal, "curl_slist_append failed");
      list = next;
      guard.release();
      guard.reset(list);
    };
    if (send_auth) add_header("Authorization: Bearer " + token_);
    for (const auto& h : extra_headers) add_header(h);

    curl_easy_setopt(curl_, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl_, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(curl_, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(curl_, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl_, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl_, CURLOPT_CONNECTTIMEOUT, options_.connect_timeout_seconds);
    curl_easy_setopt(curl_, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(curl_, CURLOPT_LOW_SPEED_TIME, options_.stall_timeout_seconds);
    curl_easy_setopt(curl_, CURLOPT_USERAGENT, "medvision/" MEDVISION_VERSION);
    curl_easy_setopt(curl_, CURLOPT_ERRORBUFFER, error_buffer);
    if (compressed) curl_easy_setopt(curl_, CURLOPT_ACCEPT_ENCODING, "");
    if (list) curl_easy_setopt(curl_, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(curl_, CURLOPT_HEADERFUNCTION, &on_header);
    curl_easy_setopt(curl_, CURLOPT_HEADERDATA, &ctx);
    curl_easy_setopt(curl_, CURLOPT_WRITEFUNCTION, &on_body);
    curl_easy_setopt(curl_, CURLOPT_WRITEDATA, &ctx);

    const CURLcode rc = curl_easy_perform(curl_);
    curl_easy_setopt(curl_, CURLOPT_ERRORBUFFER, nullptr);
    if (ctx.error) std::rethrow_exception(ctx.error);
    const std::string host = host_of(url);
    if (ctx.body_too_large)
      fail(Errc::kInvalidInput, "answer from {} is larger than {} bytes: refusing it", host, max_body);
    if (rc != CURLE_OK) {
      const std::string detail = error_buffer[0] ? sanitize(error_buffer) : curl_easy_strerror(rc);
      switch (rc) {
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_RESOLVE_PROXY:
          fail(Errc::kNetwork, "cannot resolve host {} ({})", host, detail);
        case CURLE_COULDNT_CONNECT:
          throw TransientError(fmt::format("cannot connect to {} ({})", host, detail));
        case CURLE_OPERATION_TIMEDOUT:
          throw TransientError(fmt::format("timed out talking to {} ({})", host, detail));
        case CURLE_SEND_ERROR:
        case CURLE_RECV_ERROR:
        case CURLE_GOT_NOTHING:
        case CURLE_PARTIAL_FILE:
        case CURLE_HTTP2:
        case CURLE_HTTP2_STREAM:
        case CURLE_SSL_CONNECT_ERROR:
          throw TransientError(fmt::format("connection to {} failed ({})", host, detail));
        default:
          fail(Errc::kNetwork, "request to {} failed ({})", host, detail);
      }
    }
    Response r;
    curl_easy_getinfo(curl_, CURLINFO_RESPONSE_CODE, &r.status);
    r.headers = std::move(ctx.headers);
    r.body = std::move(ctx.body);
    r.url = url;
    if (handler && !handler->started && r.status >= 200 && r.status < 300) {
      handler->started = true;  // an empty 2xx body
      handler->on_start(r.status, r.headers);
    }
    return r;
  }

  const DownloadOptions& options_;
  Origin endpoint_origin_;
  std::string token_;
  CURL* curl_ = nullptr;
};

// Runs f(), retrying TransientError with exponential backoff; the last failure becomes kNetwork.
template <typename F>
auto with_retries(const DownloadOptions& options, F&& f) {
  const int max_attempts = std::max(1, options.max_attempts);
  for (int attempt = 1;; ++attempt) {
    try {
      return f();
    } catch (const TransientError& e) {
      if (attempt >= max_attempts) {
        fail(Errc::kNetwork, "{} (gave up after {} attempt{})", e.what(), attempt, attempt == 1 ? "" : "s");
      }
      double delay = options.retry_base_seconds * std::ldexp(1.0, attempt - 1);
      if (e.retry_after() > 0) delay = std::max(delay, std::min(e.retry_after(), 60.0));
      spdlog::warn("download: {}; retrying in {:.1f}s (attempt {} of {})", e.what(), delay, attempt + 1,
                   max_attempts);
      std::this_thread::sleep_for(std::chrono::duration<double>(std::max(0.0, delay)));
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// The hub session: listing and fetching.

std::string token_from(const DownloadOptions& options) {
  std::string token;
  if (options.token) {
    token = *options.token;
  } else if (const char* env = std::getenv("HF_TOKEN")) {
    token = env;
  }
  token = std::string(trim(token));
  for (unsigned char c : token) {
    if (c < 0x21 || c > 0x7e)
      fail(Errc::kUsage, "HF_TOKEN holds characters that cannot go in an HTTP header");
  }
  return token;
}

void check_repo_id(const std::string& repo_id) {
  const auto valid_part = [](std::string_view part) {
    if (part.empty() || part.size() > 96 || part == "." || part == ".." ||
        part.find("..") != std::string_view::npos)
      return false;
    return std::all_of(part.begin(), part.end(),
                       [](unsigned char c) { return std::isalnum(c) || c == '-' || c == '_' || c == '.'; });
  };
  const std::size_t slash = repo_id.find('/');
  const bool ok = slash == std::string::npos ? valid_part(repo_id)
                                             : valid_part(std::string_view(repo_id).substr(0, slash)) &&
                                                   valid_part(std::string_view(repo_id).substr(slash + 1));
  if (!ok)
    fail(Errc::kUsage, "invalid repository id '{}': expected 'owner/name' (letters, digits, '-', '_', '.')",
         sanitize(repo_id));
}

std::uint64_t get_u64(const nlohmann::json& obj, const char* key, const std::string& where) {
  const auto it = obj.find(key);
  if (it == obj.end() || !it->is_number_unsigned())  // the parser stores every integer >= 0 as unsigned
    fail(Errc::kInvalidInput, "{}: '{}' is missing or not a non-negative integer", where, key);
  return it->get<std::uint64_t>();
}

std::string get_string(const nlohmann::json& obj, const char* key, const std::string& where, bool required) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    if (required) fail(Errc::kInvalidInput, "{}: '{}' is missing", where, key);
    return {};
  }
  if (!it->is_string()) fail(Errc::kInvalidInput, "{}: '{}' is not a string", where, key);
  return it->get<std::string>();
}

class HubSession {
 public:
  explicit HubSession(const DownloadOptions& options)
      : options_(checked(options)),
        endpoint_(resolve_endpoint(options.endpoint)),
        token_(token_from(options)),
        client_(options, endpoint_, token_) {}

  std::vector<RemoteFile> list() {
    std::vector<RemoteFile> files;
    if (!list_tree(files)) {
      spdlog::info("download: the tree API is not available at {}; using the revision API",
                   host_of(endpoint_));
      files = list_revision();
    }
    std::unordered_set<std::string> seen;
    for (const auto& f : files) {
      if (!seen.insert(f.path).second)
        fail(Errc::kInvalidInput, "{}: the file listing names '{}' twice", options_.repo_id,
             sanitize(f.path));
    }
    return files;
  }

  // Downloads one file to `target` (through target.incomplete). `progress(n)`: bytes of this file on disk.
  FileResult fetch(const RemoteFile& file, const fs::path& target,
                   const std::function<void(std::uint64_t)>& progress, std::uint64_t& network_bytes) {
    fs::path part = target;
    part += ".incomplete";
    const std::string url = endpoint_ + "/" + options_.repo_id + "/resolve/" +
                            percent_encode(options_.revision, false) + "/" + percent_encode(file.path, true);
    bool restarted_after_416 = false;
    for (;;) {
      try {
        std::optional<FileResult> r = with_retries(options_, [&] {
          return fetch_attempt(file, url, target, part, progress, network_bytes, restarted_after_416);
        });
        if (r) return *r;
        restarted_after_416 = true;  // 416 on a resume: the partial file was dropped, start over once
      } catch (const IntegrityError&) {
        std::error_code ec;
        fs::remove(part, ec);
        throw;
      }
    }
  }

  const std::string& endpoint() const { return endpoint_; }

 private:
  std::string api_url(std::string_view what) const {
    return endpoint_ + "/api/models/" + options_.repo_id + "/" + std::string(what) + "/" +
           percent_encode(options_.revision, false);
  }

  [[noreturn]] void raise_http(const Response& r, const std::string& not_found) const {
    std::string detail = r.header("x-error-message");
    if (detail.empty() && !r.body.empty()) {
      const auto j = nlohmann::json::parse(r.body, nullptr, false);
      if (j.is_object() && j.contains("error") && j["error"].is_string())
        detail = j["error"].get<std::string>();
    }
    detail = detail.empty() ? std::string() : ": " + sanitize(detail);
    const std::string code = r.header("x-error-code");
    const std::string host = host_of(r.url);
    if (r.status == 401 || r.status == 403) {
      if (code == "GatedRepo")
        fail(Errc::kAuth,
             "{} is a gated repository (HTTP {} from {}{}): accept its conditions on the hub and set "
             "HF_TOKEN to "
             "an access token of that account",
             options_.repo_id, r.status, host, detail);
      if (!token_.empty())
        fail(Errc::kAuth,
             "access to {} denied (HTTP {} from {}{}): the token in HF_TOKEN was rejected or has no access "
             "to this "
             "repository (or the repository does not exist)",
             options_.repo_id, r.status, host, detail);
      fail(Errc::kAuth,
           "access to {} denied (HTTP {} from {}{}): the repository is private, gated or does not exist; for "
           "a "
           "private or gated repository set HF_TOKEN to a Hugging Face access token with read access",
           options_.repo_id, r.status, host, detail);
    }
    if (r.status == 404) fail(Errc::kNotFound, "{} (HTTP 404 from {}{})", not_found, host, detail);
    if (r.status == 429 || r.status >= 500) {
      double retry_after = -1.0;
      const std::string ra = r.header("retry-after");
      if (!ra.empty() && std::all_of(ra.begin(), ra.end(), [](unsigned char c) { return std::isdigit(c); }) &&
          ra.size() < 6)
        retry_after = std::stod(ra);
      throw TransientError(fmt::format("HTTP {} from {} for {}{}", r.status, host, sanitize(r.url), detail),
                           retry_after);
    }
    fail(Errc::kFailure, "unexpected HTTP {} from {} for {}{}", r.status, host, sanitize(r.url), detail);
  }

  std::string repo_not_found() const {
    return fmt::format("repository or revision not found: {} at revision '{}'", options_.repo_id,
                       sanitize(options_.revision));
  }

  nlohmann::json parse_json(const Response& r) const {
    auto j = nlohmann::json::parse(r.body, nullptr, false);
    if (j.is_discarded())
      fail(Errc::kInvalidInput, "invalid JSON from {} ({} bytes)", sanitize(r.url), r.body.size());
    return j;
  }

  // Fills `files` from the tree API; false when the server has no tree API (fallback).
  bool list_tree(std::vector<RemoteFile>& files) {
    std::string url = api_url("tree") + "?recursive=true";
    std::unordered_set<std::string> visited;
    for (std::size_t page = 0;; ++page) {
      if (page >= kMaxPages)
        fail(Errc::kInvalidInput, "{}: more than {} pages of file listing", host_of(url), kMaxPages);
      visited.insert(url);
      bool fallback = false;
      Response r = with_retries(options_, [&] {
        Response resp = client_.get(url, {"Accept: application/json"}, nullptr, kMaxApiBody, true);
        if (resp.status >= 200 && resp.status < 300) return resp;
        const bool no_route =
            resp.status == 404 || resp.status == 400 || resp.status == 405 || resp.status == 501;
        if (page == 0 && no_route && resp.header("x-error-code").empty()) {
          fallback = true;
          return resp;
        }
        raise_http(resp, repo_not_found());
      });
      if (fallback) return false;
      const nlohmann::json j = parse_json(r);
      if (!j.is_array())
        fail(Errc::kInvalidInput, "{}: the tree listing is not a JSON array", sanitize(r.url));
      for (const auto& entry : j) parse_tree_entry(entry, files);
      const std::string next = link_next(r.header("link"));
      if (next.empty()) return true;
      url = resolve_url(r.url, next);
      if (visited.count(url)) fail(Errc::kInvalidInput, "{}: the tree listing's pages loop", host_of(url));
      spdlog::debug("download: next page of the file listing");
    }
  }

  void parse_tree_entry(const nlohmann::json& entry, std::vector<RemoteFile>& files) const {
    const std::string where = fmt::format("{}: tree entry", options_.repo_id);
    if (!entry.is_object()) fail(Errc::kInvalidInput, "{} is not an object", where);
    const std::string type = get_string(entry, "type", where, true);
    if (type != "file") return;  // "directory" (and anything else) has nothing to fetch
    add_remote_file(entry, where, {"path", "oid", "oid"}, files);
  }

  // The names the two listings give a file's fields: its path, its git blob id, and its LFS object's sha256.
  struct ListingKeys {
    const char* path;
    const char* git_oid;
    const char* lfs_sha256;
  };

  // Appends the file `entry` of a listing (path, size, git blob id and, for an LFS file, the sha256 and size
  // of the stored object), checking each field; `where` names the listing in errors.
  void add_remote_file(const nlohmann::json& entry, const std::string& where, const ListingKeys& keys,
                       std::vector<RemoteFile>& files) const {
    RemoteFile f;
    f.path = get_string(entry, keys.path, where, true);
    check_repo_path(f.path);
    const std::string at = where + " '" + f.path + "'";
    f.size = get_u64(entry, "size", at);
    const std::string oid = lower(get_string(entry, keys.git_oid, at, false));
    if (is_hex(oid, 40)) f.git_oid = oid;
    const auto lfs = entry.find("lfs");
    if (lfs != entry.end() && !lfs->is_null()) {
      if (!lfs->is_object()) fail(Errc::kInvalidInput, "{}: 'lfs' is not an object", at);
      f.lfs = true;
      f.sha256 = lower(get_string(*lfs, keys.lfs_sha256, at + " lfs", true));
      if (!is_hex(f.sha256, 64))
        fail(Errc::kInvalidInput, "{}: 'lfs.{}' is not a sha256", at, keys.lfs_sha256);
      f.size = get_u64(*lfs, "size", at + " lfs");
    }
    if (files.size() >= kMaxFiles)
      fail(Errc::kInvalidInput, "{}: more than {} files", options_.repo_id, kMaxFiles);
    files.push_back(std::move(f));
  }

  std::vector<RemoteFile> list_revision() {
    const std::string url = api_url("revision") + "?blobs=true";
    Response r = with_retries(options_, [&] {
      Response resp = client_.get(url, {"Accept: application/json"}, nullptr, kMaxApiBody, true);
      if (resp.status >= 200 && resp.status < 300) return resp;
      raise_http(resp, repo_not_found());
    });
    const nlohmann::json j = parse_json(r);
    const std::string where = fmt::format("{}: revision info", options_.repo_id);
    if (!j.is_object() || !j.contains("siblings") || !j["siblings"].is_array())
      fail(Errc::kInvalidInput, "{} from {} has no 'siblings' list", where, sanitize(r.url));
    std::vector<RemoteFile> files;
    for (const auto& s : j["siblings"]) {
      if (!s.is_object()) fail(Errc::kInvalidInput, "{}: a sibling is not an object", where);
      add_remote_file(s, where, {"rfilename", "blobId", "sha256"}, files);
    }
    return files;
  }

  // One try at a file. Returns nullopt after a 416 answer to a resume (the partial file is dropped).
  std::optional<FileResult> fetch_attempt(const RemoteFile& file, const std::string& url,
                                          const fs::path& target, const fs::path& part,
                                          const std::function<void(std::uint64_t)>& progress,
                                          std::uint64_t& network_bytes, bool restarted_after_416) {
    std::uint64_t have = 0;
    std::error_code ec;
    const auto st = fs::symlink_status(part, ec);
    if (!ec && fs::exists(st)) {
      if (!fs::is_regular_file(st)) {
        if (!fs::remove(part, ec) || ec)
          fail(Errc::kIo, "{}: exists and is not a regular file", part.string());
      } else {
        have = fs::file_size(part, ec);
        if (ec) fail(Errc::kIo, "{}: cannot stat: {}", part.string(), ec.message());
      }
    }
    if (have > file.size) {  // cannot be a prefix of this file
      fs::remove(part, ec);
      have = 0;
    }
    FileHashes hashes(file);
    if (have > 0 && !hash_file_prefix(part, have, hashes))
      fail(Errc::kIo, "{}: changed while reading", part.string());
    FileDescriptor out(part, O_WRONLY | O_CREAT | (have > 0 ? O_APPEND : O_TRUNC));
    std::uint64_t offset = have;
    bool resumed = have > 0;
    progress(offset);

    if (offset < file.size) {
      std::vector<std::string> headers;
      if (have > 0) headers.push_back(fmt::format("Range: bytes={}-", have));
      const std::string where = fmt::format("{}: {}", options_.repo_id, file.path);
      BodyHandler handler;
      handler.on_start = [&](long status, const Headers& h) {
        auto header = [&](const char* name) {
          auto it = h.find(name);
          return it == h.end() ? std::string() : it->second;
        };
        std::uint64_t start = 0;
        if (status == 206) {
          // Content-Range: bytes first-last/total
          const std::string cr = header("content-range");
          unsigned long long first = 0, last = 0;
          char total[32] = {0};
          if (std::sscanf(cr.c_str(), "bytes %llu-%llu/%31s", &first, &last, total) != 3 || first != offset ||
              (std::string(total) != "*" && std::string(total) != std::to_string(file.size)))
            fail(Errc::kNetwork, "{}: server answered 'Range: bytes={}-' with Content-Range '{}' (size {})",
                 where, offset, sanitize(cr), file.size);
          start = offset;
        } else if (status == 200) {
          if (offset > 0) {  // the server ignored the Range: start over
            spdlog::debug("download: {} ignored the Range request; restarting the file", host_of(url));
            out.truncate();
            hashes.reset();
            offset = 0;
            resumed = false;
            progress(0);
          }
        } else {
          fail(Errc::kNetwork, "{}: unexpected HTTP {} for a file download", where, status);
        }
        const std::string cl = header("content-length");
        if (!cl.empty() &&
            std::all_of(cl.begin(), cl.end(), [](unsigned char c) { return std::isdigit(c); }) &&
            cl.size() < 20) {
          const std::uint64_t length = std::stoull(cl);
          if (start + length != file.size)
            throw IntegrityError(
                fmt::format("{}: size mismatch: the server sends {} bytes from offset {}, the "
                            "listing says the file has {} bytes",
                            where, length, start, file.size));
        }
      };
      handler.on_data = [&](const char* data, std::size_t n) {
        if (offset + n > file.size)
          throw IntegrityError(fmt::format("{}: size mismatch: the server sent more than the listed {} bytes",
                                           where, file.size));
        out.write_all(data, n);
        hashes.update(data, n);
        offset += n;
        network_bytes += n;
        progress(offset);
      };
      Response r = client_.get(url, headers, &handler, kMaxErrorBody, false);
      if (r.status == 416) {
        if (have == 0 || restarted_after_416)
          fail(Errc::kNetwork, "{}: HTTP 416 (range not satisfiable) from {}", where, host_of(r.url));
        spdlog::debug("download: HTTP 416 on resume; dropping the partial file");
        fs::remove(part, ec);
        return std::nullopt;
      }
      if (r.status < 200 || r.status >= 300)
        raise_http(r, fmt::format("file not found: '{}' in {} at revision '{}'", file.path, options_.repo_id,
                                  sanitize(options_.revision)));
      if (offset < file.size)
        throw TransientError(fmt::format("{}: the transfer from {} ended early ({} of {} bytes)", where,
                                         host_of(r.url), offset, file.size));
    }
    out.sync_and_close();
    const std::string sha = hashes.finish_and_verify(fmt::format("{} ({})", file.path, options_.repo_id));
    fs::rename(part, target, ec);
    if (ec) fail(Errc::kIo, "{}: cannot rename to {}: {}", part.string(), target.string(), ec.message());
    return FileResult{file.path, file.size, sha, resumed ? FileStatus::kResumed : FileStatus::kDownloaded};
  }

  static const DownloadOptions& checked(const DownloadOptions& options) {
    check_repo_id(options.repo_id);
    if (options.revision.empty()) fail(Errc::kUsage, "the revision must not be empty");
    return options;
  }

  const DownloadOptions& options_;
  std::string endpoint_;
  std::string token_;
  HttpClient client_;
};

// The sha256 of a local file when it is a complete, verified copy of `file`; nullopt otherwise.
std::optional<std::string> verify_existing(const RemoteFile& file, const fs::path& path) {
  std::error_code ec;
  const auto st = fs::symlink_status(path, ec);
  if (ec || !fs::is_regular_file(st)) return std::nullopt;
  const auto size = fs::file_size(path, ec);
  if (ec || size != file.size) return std::nullopt;
  FileHashes hashes(file);
  if (!hash_file_prefix(path, file.size, hashes)) return std::nullopt;
  try {
    return hashes.finish_and_verify(path.string());
  } catch (const IntegrityError&) {
    spdlog::info("download: {} exists but its content differs; downloading it again", file.path);
    return std::nullopt;
  }
}

// Whether `path` is `root` or inside it (both canonical).
bool is_within(const fs::path& root, const fs::path& path) {
  auto r = root.begin();
  auto p = path.begin();
  for (; r != root.end(); ++r, ++p) {
    if (p == path.end() || *r != *p) return false;
  }
  return true;
}

}  // namespace

// -----------------------------------------------------------------------------------------------------
// Public API.

const char* file_status_name(FileStatus status) noexcept {
  switch (status) {
    case FileStatus::kDownloaded:
      return "downloaded";
    case FileStatus::kSkipped:
      return "skipped";
    case FileStatus::kResumed:
      return "resumed";
  }
  return "downloaded";
}

std::string resolve_endpoint(std::string_view flag) {
  std::string endpoint(trim(flag));
  if (endpoint.empty()) {
    const char* env = std::getenv("HF_ENDPOINT");
    endpoint = env ? std::string(trim(env)) : std::string();
  }
  if (endpoint.empty()) endpoint = kDefaultEndpoint;
  while (endpoint.size() > 1 && endpoint.back() == '/') endpoint.pop_back();
  const std::string l = lower(endpoint);
  if (!l.starts_with("http://") && !l.starts_with("https://"))
    fail(Errc::kUsage, "invalid endpoint '{}': expected an http:// or https:// URL", sanitize(endpoint));
  try {
    origin_of(endpoint);
  } catch (const Error&) {
    fail(Errc::kUsage, "invalid endpoint '{}'", sanitize(endpoint));
  }
  return endpoint;
}

bool match_include(std::span<const std::string> patterns, std::string_view path) {
  if (patterns.empty()) return true;
  const std::string p(path);
  for (std::string pattern : patterns) {
    if (!pattern.empty() && pattern.back() == '/') pattern += '*';  // "folder/" means everything under it
    if (::fnmatch(pattern.c_str(), p.c_str(), FNM_NOESCAPE) == 0) return true;
  }
  return false;
}

void check_repo_path(std::string_view path) {
  const auto bad = [&](const char* why) {
    fail(Errc::kInvalidInput, "unsafe path in the repository listing '{}': {}", sanitize(path), why);
  };
  if (path.empty()) bad("empty");
  if (path.size() > 4096) bad("too long");
  if (path.front() == '/') bad("absolute paths are not allowed");
  for (unsigned char c : path) {
    if (c == '\\') bad("backslashes are not allowed");
    if (c < 0x20 || c == 0x7f) bad("control characters are not allowed");
  }
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    const std::string_view part = path.substr(start, end - start);
    if (part.empty()) bad("empty path component");
    if (part == "." || part == "..") bad("'.' and '..' components are not allowed");
    if (part.size() > 255) bad("a path component is too long");
    start = end + 1;
  }
}

std::string git_blob_sha1_hex(std::string_view data) {
  Hasher h(EVP_sha1());
  const std::string prefix = fmt::format("blob {}", data.size());
  h.update(prefix.data(), prefix.size() + 1);
  h.update(data.data(), data.size());
  return h.hex();
}

std::vector<RemoteFile> list_repo_files(const DownloadOptions& options) {
  HubSession session(options);
  return session.list();
}

DownloadResult download_snapshot(const DownloadOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  if (options.out_dir.empty()) fail(Errc::kUsage, "download: no output folder given");
  HubSession session(options);
  DownloadResult result;
  result.repo_id = options.repo_id;
  result.revision = options.revision;

  std::vector<RemoteFile> files = session.list();
  std::vector<RemoteFile> selected;
  for (auto& f : files) {
    if (match_include(options.include, f.path)) selected.push_back(std::move(f));
  }
  if (selected.empty()) {
    if (!options.include.empty())
      fail(Errc::kNotFound, "no file of {} at revision '{}' matches the --include patterns ({} files listed)",
           options.repo_id, sanitize(options.revision), files.size());
    spdlog::warn("download: {} at revision '{}' lists no files", options.repo_id, sanitize(options.revision));
  }

  std::error_code ec;
  fs::create_directories(options.out_dir, ec);
  if (ec) fail(Errc::kIo, "{}: cannot create the folder: {}", options.out_dir.string(), ec.message());
  const fs::path root = fs::canonical(options.out_dir, ec);
  if (ec) fail(Errc::kIo, "{}: {}", options.out_dir.string(), ec.message());

  // Plan: target paths (never outside the folder), files already complete, bytes to fetch.
  struct Item {
    const RemoteFile* file;
    fs::path target;
    std::optional<std::string> existing_sha;
  };
  std::vector<Item> items;
  std::uint64_t total = 0;
  for (const auto& f : selected) {
    const fs::path target = root / fs::path(f.path);
    fs::create_directories(target.parent_path(), ec);
    if (ec) fail(Errc::kIo, "{}: cannot create the folder: {}", target.parent_path().string(), ec.message());
    const fs::path parent = fs::canonical(target.parent_path(), ec);
    if (ec || !is_within(root, parent))
      fail(Errc::kInvalidInput, "{}: '{}' would be written outside {}", options.repo_id, f.path,
           root.string());
    Item item{&f, target, verify_existing(f, target)};
    if (!item.existing_sha) total += f.size;
    items.push_back(std::move(item));
  }
  std::size_t to_fetch = 0;
  for (const auto& item : items) to_fetch += item.existing_sha ? 0 : 1;
  spdlog::info("download: {} files selected from {} ({} to fetch, {})", items.size(), options.repo_id,
               to_fetch, format_bytes(static_cast<double>(total)));

  std::unique_ptr<Progress> progress;
  if (to_fetch > 0) progress = std::make_unique<Progress>("download", total, "B");
  std::uint64_t done_before = 0;
  for (const auto& item : items) {
    if (item.existing_sha) {
      result.files.push_back({item.file->path, item.file->size, *item.existing_sha, FileStatus::kSkipped});
      continue;
    }
    spdlog::debug("download: fetching {} ({} bytes)", item.file->path, item.file->size);
    result.files.push_back(session.fetch(
        *item.file, item.target, [&](std::uint64_t on_disk) { progress->update(done_before + on_disk); },
        result.bytes));
    done_before += item.file->size;
    progress->update(done_before);
  }
  if (progress) progress->finish();
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return result;
}

nlohmann::json to_json(const DownloadResult& result) {
  nlohmann::json files = nlohmann::json::array();
  for (const auto& f : result.files) {
    files.push_back(
        {{"path", f.path}, {"size", f.size}, {"sha256", f.sha256}, {"status", file_status_name(f.status)}});
  }
  return {{"repo", result.repo_id},
          {"revision", result.revision},
          {"files", std::move(files)},
          {"bytes", result.bytes},
          {"seconds", std::round(result.seconds * 1000.0) / 1000.0}};
}

}  // namespace mv
