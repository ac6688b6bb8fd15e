// Hugging Face hub snapshot download: list a repository's files at a revision, fetch them into a folder
// with resume, retries and integrity checks (size always; sha256 for LFS files; git blob sha1 otherwise).
//
// Listing: GET {endpoint}/api/models/{repo}/tree/{revision}?recursive=true, following the Link header's
// rel="next" pages. Fallback for servers without the tree API (plain 404/400/405/501 without a hub error
// code): GET {endpoint}/api/models/{repo}/revision/{revision}?blobs=true ("siblings").
// Files: GET {endpoint}/{repo}/resolve/{revision}/{path}; redirects are followed by hand and the
// Authorization header only goes to the endpoint's own origin (never to a CDN on another host).
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mv {

struct DownloadOptions {
  std::string repo_id;               // "org/name"
  std::string revision = "main";     // branch, tag or commit
  std::string endpoint;              // empty: $HF_ENDPOINT, else https://huggingface.co
  std::optional<std::string> token;  // unset: $HF_TOKEN; an empty string sends no token
  std::filesystem::path out_dir;     // files land in out_dir/<path in repo>
  std::vector<std::string> include;  // fnmatch patterns ('*' also matches '/'); empty: every file
  int max_attempts = 3;              // per request, for transient errors (5xx, 429, resets, timeouts)
  double retry_base_seconds = 1.0;   // backoff: base, 2*base, 4*base, ...
  long connect_timeout_seconds = 15;
  long stall_timeout_seconds = 60;  // a transfer under 1 byte/s for this long is aborted (and retried)
};

// One file of the repository as the hub lists it.
struct RemoteFile {
  std::string path;  // relative, '/'-separated, validated by check_repo_path
  std::uint64_t size = 0;
  std::string git_oid;  // git blob sha1 (of the content, or of the LFS pointer for LFS files); may be empty
  std::string sha256;   // LFS files: sha256 of the content (lowercase hex)
  bool lfs = false;
};

enum class FileStatus { kDownloaded, kSkipped, kResumed };
const char* file_status_name(FileStatus status) noexcept;  // "downloaded" | "skipped" | "resumed"

struct FileResult {
  std::string path;
  std::uint64_t size = 0;
  std::string sha256;  // of the local file (every file, LFS or not)
  FileStatus status = FileStatus::kDownloaded;
};

struct DownloadResult {
  std::string repo_id;
  std::string revision;
  std::vector<FileResult> files;  // in listing order, only the files selected by `include`
  std::uint64_t bytes = 0;        // bytes received over the network in this run
  double seconds = 0.0;
};

// --endpoint flag > $HF_ENDPOINT > https://huggingface.co; checked (http/https) and without trailing '/'.
std::string resolve_endpoint(std::string_view flag);

// Lists every file of the repository at the revision (directories left out). Throws mv::Error:
// kAuth (401/403), kNotFound (404), kNetwork (connection, timeouts, 5xx after retries), kInvalidInput
// (a malformed answer or an unsafe path).
std::vector<RemoteFile> list_repo_files(const DownloadOptions& options);

// Downloads the selected files into options.out_dir (see the header comment). Files already complete
// and verified are skipped; a partial "<path>.incomplete" is resumed with a Range request.
DownloadResult download_snapshot(const DownloadOptions& options);

nlohmann::json to_json(const DownloadResult& result);

// Helpers, exposed for tests.
// Python fnmatch semantics (as huggingface_hub's allow_patterns): '*' and '?' also match '/';
// a pattern ending in '/' matches everything under that folder.
bool match_include(std::span<const std::string> patterns, std::string_view path);
// Throws kInvalidInput unless `path` is a safe relative path: non-empty, no leading '/', no '\\',
// no empty, "." or ".." components, no control characters.
void check_repo_path(std::string_view path);
// git's object id of a blob: sha1("blob <size>\0" + data), lowercase hex.
std::string git_blob_sha1_hex(std::string_view data);

}  // namespace mv
