// `medvision download` against a fake hub served by cpp-httplib on 127.0.0.1 (never the network).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "cli/run_cli.hpp"
#include "common/temp_dir.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "core/progress.hpp"
#include "io/download.hpp"

namespace mv {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct FakeFile {
  std::string path;
  std::string content;
  bool lfs = false;
  std::string sha256() const { return sha256_hex(content); }
};

struct Hit {
  std::string path;  // decoded request path
  std::string query;
  std::string range;
  std::string auth;
};

std::string pseudo_random_bytes(std::size_t n, std::uint32_t seed) {
  std::string s(n, '\0');
  std::uint32_t x = seed;
  for (auto& c : s) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

// A fake Hugging Face hub: tree API (2 pages), revision API, resolve URLs (LFS via a 302), a "CDN" with
// Range.
class FakeHub {
 public:
  FakeHub() {
    files = {
        {"config.json", "{\"model_type\": \"qwen2_5_vl\", \"hidden_size\": 64}\n", false},
        {"model.safetensors", pseudo_random_bytes(300000, 7), true},
        {"nested/dir/tokenizer.json", "{\"version\": \"1.0\", \"model\": {\"type\": \"BPE\"}}\n", false},
        {"nested/notes.md", "# notes\nsmall plain file\n", false},
    };
    server_.Get(".*", [this](const httplib::Request& req, httplib::Response& res) { handle(req, res); });
    port_ = server_.bind_to_any_port("127.0.0.1");
    EXPECT_GT(port_, 0);
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~FakeHub() {
    server_.stop();
    thread_.join();
  }

  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  const FakeFile& file(const std::string& path) const {
    for (const auto& f : files)
      if (f.path == path) return f;
    throw std::runtime_error("no fake file " + path);
  }

  std::vector<Hit> hits() {
    std::lock_guard lock(mu_);
    return hits_;
  }
  int count(const std::string& prefix) {
    int n = 0;
    for (const auto& h : hits())
      if (h.path.starts_with(prefix)) ++n;
    return n;
  }

  // Configuration (set before the download starts).
  std::string repo = "org/repo";
  std::vector<FakeFile> files;
  std::string token;      // non-empty: every non-CDN request needs "Bearer <token>"
  std::string cdn_base;   // empty: LFS files redirect to "/cdn/<sha>" on this server (relative Location)
  bool tree_api = true;   // false: the tree route does not exist (plain 404)
  std::string tree_body;  // non-empty: the tree API answers this body
  std::vector<json> extra_entries;
  int tree_5xx = 0;                     // the first N tree requests answer 503
  bool corrupt_lfs = false;             // the CDN flips one byte of LFS content
  bool ignore_range = false;            // the CDN answers 200 with everything to a Range request
  bool always_416 = false;              // the CDN answers 416 to any Range request
  bool truncate_lfs_once = false;       // the first LFS transfer stops halfway (connection closed)
  bool understate_config_size = false;  // the listing says config.json is 1 byte shorter than it is

 private:
  json entry(const FakeFile& f) const {
    std::uint64_t size = f.content.size();
    if (understate_config_size && f.path == "config.json") --size;
    json e = {{"type", "file"}, {"path", f.path}, {"size", size}};
    if (f.lfs) {
      const std::string pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:" + f.sha256() +
                                  "\nsize " + std::to_string(size) + "\n";
      e["oid"] = git_blob_sha1_hex(pointer);
      e["lfs"] = {{"oid", f.sha256()}, {"size", size}, {"pointerSize", pointer.size()}};
    } else {
      e["oid"] = git_blob_sha1_hex(f.content);
    }
    return e;
  }

  void serve(const httplib::Request& req, httplib::Response& res, std::string content, bool is_lfs) {
    const std::string range = req.get_header_value("Range");
    if (is_lfs && corrupt_lfs) content[content.size() / 2] ^= 0x5a;
    if (!range.empty() && always_416) {
      res.status = 416;
      res.set_header("Content-Range", "bytes */" + std::to_string(content.size()));
      return;
    }
    if (is_lfs && truncate_lfs_once && range.empty()) {
      truncate_lfs_once = false;
      auto body = std::make_shared<std::string>(content);
      res.set_content_provider(body->size(), "application/octet-stream",
                               [body](std::size_t offset, std::size_t, httplib::DataSink& sink) {
                                 if (offset == 0) sink.write(body->data(), body->size() / 2);
                                 return offset == 0;  // then give up: the connection closes early
                               });
      return;
    }
    std::size_t start = 0;
    if (!range.empty() && !ignore_range && std::sscanf(range.c_str(), "bytes=%zu-", &start) == 1) {
      if (start >= content.size()) {
        res.status = 416;
        res.set_header("Content-Range", "bytes */" + std::to_string(content.size()));
        return;
      }
      res.status = 206;
      res.set_header("Content-Range", "bytes " + std::to_string(start) + "-" +
                                          std::to_string(content.size() - 1) + "/" +
                                          std::to_string(content.size()));
      res.set_content(content.substr(start), "application/octet-stream");
      return;
    }
    res.status = 200;
    res.set_content(content, "application/octet-stream");
  }

  void not_found(httplib::Response& res, const char* code, const char* message) {
    res.status = 404;
    if (code) res.set_header("X-Error-Code", code);
    res.set_content(json{{"error", message}}.dump(), "application/json");
  }

  void handle(const httplib::Request& req, httplib::Response& res) {
    // cpp-httplib slices bodies by the request's Range itself; this server does it by hand instead.
    const_cast<httplib::Request&>(req).ranges.clear();
    std::string query;
    for (const auto& [k, v] : req.params) query += k + "=" + v + "&";
    std::lock_guard lock(mu_);  // one request at a time: the handlers update counters and flags
    hits_.push_back({req.path, query, req.get_header_value("Range"), req.get_header_value("Authorization")});
    const std::string& p = req.path;
    if (p.starts_with("/cdn/")) {
      for (const auto& f : files)
        if (f.lfs && "/cdn/" + f.sha256() == p) return serve(req, res, f.content, true);
      return not_found(res, nullptr, "no such object");
    }
    if (!token.empty() && req.get_header_value("Authorization") != "Bearer " + token) {
      res.status = 401;
      res.set_content(R"({"error":"Invalid credentials in Authorization header"})", "application/json");
      return;
    }
    const std::string api = "/api/models/" + repo + "/";
    if (p.starts_with("/api/models/") && !p.starts_with(api))
      return not_found(res, "RepoNotFound", "Repository not found");
    if (p.starts_with(api + "tree/")) {
      if (!tree_api) return not_found(res, nullptr, "Not Found");
      if (p != api + "tree/main") return not_found(res, "RevisionNotFound", "Invalid rev id");
      if (tree_5xx > 0) {
        --tree_5xx;
        res.status = 503;
        res.set_content("busy", "text/plain");
        return;
      }
      if (!tree_body.empty()) return res.set_content(tree_body, "application/json");
      json page = json::array();
      if (req.get_param_value("cursor").empty()) {
        page.push_back(entry(files[0]));
        page.push_back(
            {{"type", "directory"}, {"path", "nested"}, {"size", 0}, {"oid", std::string(40, 'a')}});
        page.push_back(entry(files[1]));
        res.set_header("Link", "<" + url() + api + "tree/main?recursive=true&cursor=page2>; rel=\"next\"");
      } else {
        page.push_back(
            {{"type", "directory"}, {"path", "nested/dir"}, {"size", 0}, {"oid", std::string(40, 'b')}});
        page.push_back(entry(files[2]));
        page.push_back(entry(files[3]));
        for (const auto& e : extra_entries) page.push_back(e);
      }
      return res.set_content(page.dump(), "application/json");
    }
    if (p.starts_with(api + "revision/")) {
      if (p != api + "revision/main") return not_found(res, "RevisionNotFound", "Invalid rev id");
      json siblings = json::array();
      for (const auto& f : files) {
        json e = entry(f);
        json s = {{"rfilename", f.path}, {"size", e["size"]}, {"blobId", e["oid"]}};
        if (f.lfs) s["lfs"] = {{"sha256", f.sha256()}, {"size", e["size"]}, {"pointerSize", 134}};
        siblings.push_back(s);
      }
      return res.set_content(json{{"id", repo}, {"sha", std::string(40, 'c')}, {"siblings", siblings}}.dump(),
                             "application/json");
    }
    const std::string resolve = "/" + repo + "/resolve/main/";
    if (p.starts_with(resolve)) {
      const std::string path = p.substr(resolve.size());
      for (const auto& f : files) {
        if (f.path != path) continue;
        if (f.lfs) {
          res.status = 302;
          res.set_header("Location", cdn_base + "/cdn/" + f.sha256());
          return;
        }
        return serve(req, res, f.content, false);
      }
      return not_found(res, "EntryNotFound", "Entry not found");
    }
    return not_found(res, "RepoNotFound", "Repository not found");
  }

  httplib::Server server_;
  int port_ = -1;
  std::thread thread_;
  std::mutex mu_;
  std::vector<Hit> hits_;
};

using mv::test::TempDir;

class DownloadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ::unsetenv("HF_TOKEN");
    ::unsetenv("HF_ENDPOINT");
    Progress::set_enabled(false);
  }
  void TearDown() override { ::unsetenv("HF_TOKEN"); }

  DownloadOptions options(const std::string& repo = "org/repo") const {
    DownloadOptions o;
    o.repo_id = repo;
    o.endpoint = hub.url();
    o.out_dir = dir.path() / "out";
    o.retry_base_seconds = 0.01;
    o.connect_timeout_seconds = 2;
    o.stall_timeout_seconds = 5;
    return o;
  }
  fs::path out(const std::string& rel) const { return dir.path() / "out" / rel; }

  const FileResult& result_for(const DownloadResult& r, const std::string& path) {
    for (const auto& f : r.files)
      if (f.path == path) return f;
    throw std::runtime_error("no result for " + path);
  }

  // Runs f() and returns the mv::Error it throws (fails the test when it throws nothing).
  template <typename F>
  Error error_of(F&& f) {
    try {
      f();
    } catch (const Error& e) {
      return e;
    }
    ADD_FAILURE() << "no mv::Error thrown";
    return Error(Errc::kInternal, "none");
  }

  FakeHub hub;
  TempDir dir{"download"};
};

// ---- helpers ----------------------------------------------------------------------------------------

TEST(DownloadHelpers, GitBlobSha1MatchesGit) {
  EXPECT_EQ(git_blob_sha1_hex(""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");  // git hash-object /dev/null
  EXPECT_EQ(git_blob_sha1_hex("hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a");  // echo hello | git hash-object
}

TEST(DownloadHelpers, IncludeUsesFnmatchWhereStarMatchesSlash) {
  const std::vector<std::string> json_only = {"*.json"};
  EXPECT_TRUE(match_include(json_only, "config.json"));
  EXPECT_TRUE(match_include(json_only, "nested/dir/tokenizer.json"));
  EXPECT_FALSE(match_include(json_only, "model.safetensors"));
  const std::vector<std::string> folder = {"nested/"};
  EXPECT_TRUE(match_include(folder, "nested/notes.md"));
  EXPECT_TRUE(match_include(folder, "nested/dir/tokenizer.json"));
  EXPECT_FALSE(match_include(folder, "nestedx/notes.md"));
  const std::vector<std::string> shards = {"model-" + std::string(5, '?') + "-of-*.safetensors", "[ab].txt"};
  EXPECT_TRUE(match_include(shards, "model-00001-of-00005.safetensors"));
  EXPECT_FALSE(match_include(shards, "model-0001-of-00005.safetensors"));
  EXPECT_TRUE(match_include(shards, "a.txt"));
  EXPECT_FALSE(match_include(shards, "c.txt"));
  EXPECT_TRUE(match_include({}, "anything/at/all"));
}

TEST(DownloadHelpers, RepoPathsMustStayInsideTheFolder) {
  for (const char* ok : {"a.txt", ".gitattributes", "nested/dir/file.json", "a..b/c", "dir/.hidden"})
    EXPECT_NO_THROW(check_repo_path(ok)) << ok;
  for (const char* bad : {"", "/etc/passwd", "../evil", "a/../../b", "a/..", "a\\b", "..\\evil", "a//b",
                          "./a", "a/", "a/./b", "a\nb"}) {
    try {
      check_repo_path(bad);
      ADD_FAILURE() << "accepted unsafe path '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::kInvalidInput) << bad;
    }
  }
}

TEST(DownloadHelpers, EndpointFromFlagThenEnvironmentThenDefault) {
  ::unsetenv("HF_ENDPOINT");
  EXPECT_EQ(resolve_endpoint(""), "https://huggingface.co");
  ::setenv("HF_ENDPOINT", "http://mirror.example:8080/", 1);
  EXPECT_EQ(resolve_endpoint(""), "http://mirror.example:8080");
  EXPECT_EQ(resolve_endpoint("http://127.0.0.1:9/"), "http://127.0.0.1:9");
  ::unsetenv("HF_ENDPOINT");
  try {
    resolve_endpoint("ftp://example.org");
    ADD_FAILURE() << "ftp endpoint accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kUsage);
  }
}

// ---- downloads --------------------------------------------------------------------------------------

TEST_F(DownloadTest, FullDownloadMatchesBytesAndSha256) {
  const DownloadResult r = download_snapshot(options());
  ASSERT_EQ(r.files.size(), 4u);
  std::uint64_t total = 0;
  for (const auto& f : hub.files) {
    const FileResult& fr = result_for(r, f.path);
    EXPECT_EQ(fr.status, FileStatus::kDownloaded) << f.path;
    EXPECT_EQ(fr.size, f.content.size());
    EXPECT_EQ(fr.sha256, f.sha256());
    EXPECT_EQ(read_file(out(f.path)), f.content) << f.path;
    EXPECT_FALSE(fs::exists(out(f.path + ".incomplete")));
    total += f.content.size();
  }
  EXPECT_EQ(r.bytes, total);
  // Both pages of the listing were read, and the LFS file came through the redirect.
  int page2 = 0;
  for (const auto& h : hub.hits())
    if (h.path == "/api/models/org/repo/tree/main" && h.query.find("cursor=page2") != std::string::npos)
      ++page2;
  EXPECT_EQ(page2, 1);
  EXPECT_EQ(hub.count("/cdn/"), 1);
  EXPECT_EQ(hub.count("/org/repo/resolve/main/model.safetensors"), 1);

  const json j = to_json(r);
  EXPECT_EQ(j["repo"], "org/repo");
  EXPECT_EQ(j["revision"], "main");
  EXPECT_EQ(j["bytes"], total);
  ASSERT_EQ(j["files"].size(), 4u);
  EXPECT_EQ(j["files"][1]["path"], "model.safetensors");
  EXPECT_EQ(j["files"][1]["sha256"], hub.file("model.safetensors").sha256());
  EXPECT_EQ(j["files"][1]["status"], "downloaded");
  EXPECT_TRUE(j["seconds"].is_number());
}

TEST_F(DownloadTest, SecondRunSkipsCompleteFilesAndRefetchesChangedOnes) {
  download_snapshot(options());
  const int resolves = hub.count("/org/repo/resolve/");
  DownloadResult again = download_snapshot(options());
  for (const auto& f : again.files) EXPECT_EQ(f.status, FileStatus::kSkipped) << f.path;
  EXPECT_EQ(again.bytes, 0u);
  EXPECT_EQ(hub.count("/org/repo/resolve/"), resolves);

  // Same size, different bytes: the checksum catches it and the file is fetched again.
  std::string tampered = hub.file("nested/notes.md").content;
  tampered[0] = 'X';
  write_file(out("nested/notes.md"), tampered);
  std::string lfs = hub.file("model.safetensors").content;
  lfs[10] ^= 1;
  write_file(out("model.safetensors"), lfs);
  again = download_snapshot(options());
  EXPECT_EQ(result_for(again, "nested/notes.md").status, FileStatus::kDownloaded);
  EXPECT_EQ(result_for(again, "model.safetensors").status, FileStatus::kDownloaded);
  EXPECT_EQ(result_for(again, "config.json").status, FileStatus::kSkipped);
  EXPECT_EQ(read_file(out("nested/notes.md")), hub.file("nested/notes.md").content);
  EXPECT_EQ(read_file(out("model.safetensors")), hub.file("model.safetensors").content);
}

TEST_F(DownloadTest, IncludeFiltersFiles) {
  DownloadOptions o = options();
  o.include = {"*.json"};
  DownloadResult r = download_snapshot(o);
  ASSERT_EQ(r.files.size(), 2u);
  EXPECT_EQ(r.files[0].path, "config.json");
  EXPECT_EQ(r.files[1].path, "nested/dir/tokenizer.json");
  EXPECT_TRUE(fs::exists(out("nested/dir/tokenizer.json")));
  EXPECT_FALSE(fs::exists(out("model.safetensors")));
  EXPECT_EQ(hub.count("/cdn/"), 0);

  o.include = {"nested/"};
  r = download_snapshot(o);
  ASSERT_EQ(r.files.size(), 2u);
  EXPECT_EQ(result_for(r, "nested/notes.md").status, FileStatus::kDownloaded);
  EXPECT_EQ(result_for(r, "nested/dir/tokenizer.json").status, FileStatus::kSkipped);

  o.include = {"*.bin"};
  EXPECT_EQ(error_of([&] { download_snapshot(o); }).code(), Errc::kNotFound);
}

TEST_F(DownloadTest, ResumesPartialFileWithRange) {
  const FakeFile& model = hub.file("model.safetensors");
  fs::create_directories(out(""));
  write_file(out("model.safetensors.incomplete"), std::string_view(model.content).substr(0, 100000));
  DownloadOptions o = options();
  o.include = {"model.safetensors"};
  const DownloadResult r = download_snapshot(o);
  ASSERT_EQ(r.files.size(), 1u);
  EXPECT_EQ(r.files[0].status, FileStatus::kResumed);
  EXPECT_EQ(r.files[0].sha256, model.sha256());
  EXPECT_EQ(r.bytes, model.content.size() - 100000);
  EXPECT_EQ(read_file(out("model.safetensors")), model.content);
  EXPECT_FALSE(fs::exists(out("model.safetensors.incomplete")));
  std::vector<std::string> cdn_ranges;
  for (const auto& h : hub.hits())
    if (h.path.starts_with("/cdn/")) cdn_ranges.push_back(h.range);
  EXPECT_EQ(cdn_ranges, std::vector<std::string>{"bytes=100000-"});
}

TEST_F(DownloadTest, RestartsWhenServerIgnoresRange) {
  hub.ignore_range = true;
  const FakeFile& model = hub.file("model.safetensors");
  fs::create_directories(out(""));
  write_file(out("model.safetensors.incomplete"), std::string_view(model.content).substr(0, 5000));
  DownloadOptions o = options();
  o.include = {"model.safetensors"};
  const DownloadResult r = download_snapshot(o);
  EXPECT_EQ(r.files[0].status, FileStatus::kDownloaded);
  EXPECT_EQ(r.bytes, model.content.size());
  EXPECT_EQ(read_file(out("model.safetensors")), model.content);
}

TEST_F(DownloadTest, RestartsAfter416) {
  hub.always_416 = true;
  const FakeFile& model = hub.file("model.safetensors");
  fs::create_directories(out(""));
  write_file(out("model.safetensors.incomplete"), std::string_view(model.content).substr(0, 5000));
  DownloadOptions o = options();
  o.include = {"model.safetensors"};
  const DownloadResult r = download_snapshot(o);
  EXPECT_EQ(r.files[0].status, FileStatus::kDownloaded);
  EXPECT_EQ(read_file(out("model.safetensors")), model.content);
}

TEST_F(DownloadTest, DroppedConnectionIsRetriedWithResume) {
  hub.truncate_lfs_once = true;
  const FakeFile& model = hub.file("model.safetensors");
  DownloadOptions o = options();
  o.include = {"model.safetensors"};
  const DownloadResult r = download_snapshot(o);
  EXPECT_EQ(read_file(out("model.safetensors")), model.content);
  std::vector<std::string> cdn_ranges;
  for (const auto& h : hub.hits())
    if (h.path.starts_with("/cdn/")) cdn_ranges.push_back(h.range);
  ASSERT_EQ(cdn_ranges.size(), 2u);
  EXPECT_EQ(cdn_ranges[0], "");
  EXPECT_EQ(cdn_ranges[1], "bytes=" + std::to_string(model.content.size() / 2) + "-");
  EXPECT_EQ(r.files[0].status, FileStatus::kResumed);
}

TEST_F(DownloadTest, CorruptLfsContentFailsAndLeavesNoFile) {
  hub.corrupt_lfs = true;
  const Error e = error_of([&] { download_snapshot(options()); });
  EXPECT_EQ(e.code(), Errc::kInvalidInput);
  EXPECT_NE(std::string(e.what()).find("sha256 mismatch"), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("model.safetensors"), std::string::npos) << e.what();
  EXPECT_FALSE(fs::exists(out("model.safetensors")));
  EXPECT_FALSE(fs::exists(out("model.safetensors.incomplete")));
}

TEST_F(DownloadTest, SizeMismatchFailsAndLeavesNoFile) {
  hub.understate_config_size = true;
  DownloadOptions o = options();
  o.include = {"config.json"};
  const Error e = error_of([&] { download_snapshot(o); });
  EXPECT_EQ(e.code(), Errc::kInvalidInput);
  EXPECT_NE(std::string(e.what()).find("size mismatch"), std::string::npos) << e.what();
  EXPECT_FALSE(fs::exists(out("config.json")));
  EXPECT_FALSE(fs::exists(out("config.json.incomplete")));
}

TEST_F(DownloadTest, UnauthorizedWithoutTokenMentionsHfToken) {
  hub.token = "hf_secret";
  const Error e = error_of([&] { download_snapshot(options()); });
  EXPECT_EQ(e.code(), Errc::kAuth);
  EXPECT_NE(std::string(e.what()).find("HF_TOKEN"), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("401"), std::string::npos) << e.what();
  for (const auto& h : hub.hits()) EXPECT_EQ(h.auth, "");
}

TEST_F(DownloadTest, TokenFromEnvironmentIsSent) {
  hub.token = "hf_secret";
  ::setenv("HF_TOKEN", "hf_secret", 1);
  const DownloadResult r = download_snapshot(options());
  EXPECT_EQ(r.files.size(), 4u);
  for (const auto& h : hub.hits())
    EXPECT_EQ(h.auth, "Bearer hf_secret") << h.path;  // same origin, CDN included

  ::setenv("HF_TOKEN", "hf_wrong", 1);
  const Error e = error_of([&] { list_repo_files(options()); });
  EXPECT_EQ(e.code(), Errc::kAuth);
  EXPECT_NE(std::string(e.what()).find("HF_TOKEN"), std::string::npos) << e.what();
}

TEST_F(DownloadTest, TokenIsNotForwardedToAnotherOrigin) {
  FakeHub cdn;  // another port: another origin
  hub.token = "hf_secret";
  hub.cdn_base = cdn.url();
  ::setenv("HF_TOKEN", "hf_secret", 1);
  DownloadOptions o = options();
  o.include = {"model.safetensors"};
  download_snapshot(o);
  EXPECT_EQ(read_file(out("model.safetensors")), hub.file("model.safetensors").content);
  ASSERT_EQ(cdn.count("/cdn/"), 1);
  for (const auto& h : cdn.hits()) EXPECT_EQ(h.auth, "");
  EXPECT_EQ(hub.count("/cdn/"), 0);
}

TEST_F(DownloadTest, MissingRepositoryOrRevisionIsNotFound) {
  Error e = error_of([&] { download_snapshot(options("org/missing")); });
  EXPECT_EQ(e.code(), Errc::kNotFound);
  EXPECT_NE(std::string(e.what()).find("repository or revision not found"), std::string::npos) << e.what();
  DownloadOptions o = options();
  o.revision = "nope";
  e = error_of([&] { download_snapshot(o); });
  EXPECT_EQ(e.code(), Errc::kNotFound);
  EXPECT_FALSE(fs::exists(out("config.json")));
}

TEST_F(DownloadTest, ConnectionRefusedIsNetworkErrorNamingTheHost) {
  int port = 0;
  {
    const int s = ::socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(s, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    socklen_t len = sizeof(addr);
    ASSERT_EQ(::getsockname(s, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    port = ntohs(addr.sin_port);
    ::close(s);  // nothing listens there now
  }
  DownloadOptions o = options();
  o.endpoint = "http://127.0.0.1:" + std::to_string(port);
  const Error e = error_of([&] { download_snapshot(o); });
  EXPECT_EQ(e.code(), Errc::kNetwork);
  EXPECT_NE(std::string(e.what()).find("127.0.0.1:" + std::to_string(port)), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("3 attempts"), std::string::npos) << e.what();
}

TEST_F(DownloadTest, ServerErrorsAreRetried) {
  hub.tree_5xx = 2;
  const DownloadResult r = download_snapshot(options());
  EXPECT_EQ(r.files.size(), 4u);
  int first_page = 0;
  for (const auto& h : hub.hits())
    if (h.path == "/api/models/org/repo/tree/main" && h.query.find("cursor") == std::string::npos)
      ++first_page;
  EXPECT_EQ(first_page, 3);

  hub.tree_5xx = 1000;
  const Error e = error_of([&] { list_repo_files(options()); });
  EXPECT_EQ(e.code(), Errc::kNetwork);
  EXPECT_NE(std::string(e.what()).find("HTTP 503"), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("3 attempts"), std::string::npos) << e.what();
}

TEST_F(DownloadTest, InvalidJsonIsInvalidInput) {
  hub.tree_body = "[{\"type\": \"file\", \"path\": ";
  Error e = error_of([&] { download_snapshot(options()); });
  EXPECT_EQ(e.code(), Errc::kInvalidInput);
  EXPECT_NE(std::string(e.what()).find("invalid JSON"), std::string::npos) << e.what();
  hub.tree_body = R"([{"type": "file", "path": "a.bin", "size": -4}])";
  e = error_of([&] { download_snapshot(options()); });
  EXPECT_EQ(e.code(), Errc::kInvalidInput);
  EXPECT_NE(std::string(e.what()).find("size"), std::string::npos) << e.what();
}

TEST_F(DownloadTest, PathTraversalEntryIsRejected) {
  hub.extra_entries.push_back(
      {{"type", "file"}, {"path", "../evil"}, {"size", 3}, {"oid", git_blob_sha1_hex("bad")}});
  const Error e = error_of([&] { download_snapshot(options()); });
  EXPECT_EQ(e.code(), Errc::kInvalidInput);
  EXPECT_NE(std::string(e.what()).find("../evil"), std::string::npos) << e.what();
  EXPECT_FALSE(fs::exists(dir.path() / "evil"));
  EXPECT_FALSE(fs::exists(out("config.json")));  // nothing is written from a listing with an unsafe path
  EXPECT_EQ(hub.count("/org/repo/resolve/"), 0);
}

TEST_F(DownloadTest, FallsBackToRevisionApiWithoutTreeApi) {
  hub.tree_api = false;
  const DownloadResult r = download_snapshot(options());
  EXPECT_EQ(r.files.size(), 4u);
  EXPECT_EQ(hub.count("/api/models/org/repo/revision/main"), 1);
  for (const auto& f : hub.files) EXPECT_EQ(read_file(out(f.path)), f.content) << f.path;
}

// ---- the CLI, end to end ------------------------------------------------------------------------------

using mv::testing::run_cli;

TEST_F(DownloadTest, CliEndToEnd) {
  const std::string outdir = (dir.path() / "cli").string();
  auto r = run_cli("-q download org/repo --out '" + outdir + "' --endpoint " + hub.url() + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["repo"], "org/repo");
  ASSERT_EQ(j["files"].size(), 4u);
  EXPECT_EQ(read_file(fs::path(outdir) / "model.safetensors"), hub.file("model.safetensors").content);

  r = run_cli("download org/repo --out '" + outdir + "' --endpoint " + hub.url() + " --include '*.md'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("1 files"), std::string::npos) << r.out;

  r = run_cli("download org/missing --out '" + outdir + "' --endpoint " + hub.url());
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("repository or revision not found"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace mv
