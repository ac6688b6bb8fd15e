#include "core/system_info.hpp"

#include <cblas.h>
#include <curl/curl.h>
#include <fmt/format.h>
#include <jpeglib.h>
#include <openssl/crypto.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <CLI/Version.hpp>
#include <chrono>
#include <ctime>
#include <fstream>
#include <sstream>
#include <thread>

#include "core/time_stats.hpp"
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <png.h>
#include <poppler-version.h>
#include <spdlog/version.h>
#include <tiffio.h>
#include <utf8proc.h>
#include <webp/decode.h>
#include <zlib.h>

#if defined(__aarch64__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

extern "C" char* openblas_get_config(void);
extern "C" int openblas_get_num_threads(void);

namespace mv {

namespace {

std::string read_first_match(const char* path, const std::string& key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) {
      auto pos = line.find(':');
      if (pos == std::string::npos) pos = line.find('=');
      if (pos == std::string::npos) continue;
      std::string v = line.substr(pos + 1);
      v.erase(0, v.find_first_not_of(" \t\""));
      while (!v.empty() && (v.back() == '"' || v.back() == ' ' || v.back() == '\t')) v.pop_back();
      return v;
    }
  }
  return "";
}

std::uint64_t meminfo_kib(const std::string& key) {
  std::ifstream in("/proc/meminfo");
  std::string name;
  std::uint64_t value = 0;
  std::string unit;
  while (in >> name >> value) {
    std::getline(in, unit);
    if (name == key + ":") return value;
  }
  return 0;
}

}  // namespace

std::string cuda_version_string(int v) {
  if (v <= 0) return "";
  return fmt::format("{}.{}", v / 1000, (v % 1000) / 10);
}

CpuInfo query_cpu() {
  CpuInfo c;
  struct utsname u {};
  if (::uname(&u) == 0) c.arch = u.machine;
  c.model = read_first_match("/proc/cpuinfo", "model name");
  if (c.model.empty()) c.model = read_first_match("/proc/cpuinfo", "Model");
  if (c.model.empty()) c.model = read_first_match("/proc/cpuinfo", "CPU part");
  c.logical_cores = static_cast<int>(std::thread::hardware_concurrency());
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("sse4.2")) c.simd.push_back("sse4.2");
  if (__builtin_cpu_supports("avx")) c.simd.push_back("avx");
  if (__builtin_cpu_supports("avx2")) c.simd.push_back("avx2");
  if (__builtin_cpu_supports("fma")) c.simd.push_back("fma");
  if (__builtin_cpu_supports("f16c")) c.simd.push_back("f16c");
  if (__builtin_cpu_supports("avx512f")) c.simd.push_back("avx512f");
  if (__builtin_cpu_supports("avx512bw")) c.simd.push_back("avx512bw");
  if (__builtin_cpu_supports("avx512vnni")) c.simd.push_back("avx512vnni");
  if (__builtin_cpu_supports("avx512bf16")) c.simd.push_back("avx512bf16");
#elif defined(__aarch64__)
  const unsigned long hw = getauxval(AT_HWCAP);
  c.simd.push_back("neon");
  if (hw & HWCAP_ASIMDHP) c.simd.push_back("asimdhp");
  if (hw & HWCAP_ASIMDDP) c.simd.push_back("asimddp");
  if (hw & HWCAP_SVE) c.simd.push_back("sve");
#endif
  return c;
}

nlohmann::json library_versions() {
  nlohmann::json j;
  j["medvision"] = MEDVISION_VERSION;
  j["nlohmann_json"] = fmt::format("{}.{}.{}", NLOHMANN_JSON_VERSION_MAJOR, NLOHMANN_JSON_VERSION_MINOR,
                                   NLOHMANN_JSON_VERSION_PATCH);
  j["cli11"] = CLI11_VERSION;
  j["spdlog"] = fmt::format("{}.{}.{}", SPDLOG_VER_MAJOR, SPDLOG_VER_MINOR, SPDLOG_VER_PATCH);
  j["fmt"] = fmt::format("{}.{}.{}", FMT_VERSION / 10000, FMT_VERSION / 100 % 100, FMT_VERSION % 100);
  j["pcre2"] = fmt::format("{}.{}", PCRE2_MAJOR, PCRE2_MINOR);
  j["utf8proc"] = utf8proc_version();
  {
    std::string t = TIFFGetVersion();
    j["libtiff"] = t.substr(0, t.find('\n'));
  }
  const int webp = WebPGetDecoderVersion();
  j["libwebp"] = fmt::format("{}.{}.{}", (webp >> 16) & 0xff, (webp >> 8) & 0xff, webp & 0xff);
  j["poppler"] = POPPLER_VERSION;
  j["libpng"] = png_get_libpng_ver(nullptr);
  j["libjpeg"] = fmt::format("{}", JPEG_LIB_VERSION);
  j["zlib"] = zlibVersion();
  j["openssl"] = OpenSSL_version(OPENSSL_VERSION);
  j["libcurl"] = curl_version_info(CURLVERSION_NOW)->version;
  j["openblas"] = openblas_get_config();
  j["openblas_threads"] = openblas_get_num_threads();
  return j;
}

nlohmann::json system_report() {
  nlohmann::json j;
  struct utsname u {};
  ::uname(&u);
  std::string os = read_first_match("/etc/os-release", "PRETTY_NAME");
  j["os"] = {{"name", os.empty() ? std::string(u.sysname) : os},
             {"kernel", fmt::format("{} {}", u.sysname, u.release)}};
  const CpuInfo cpu = query_cpu();
  j["cpu"] = {
      {"arch", cpu.arch}, {"model", cpu.model}, {"logical_cores", cpu.logical_cores}, {"simd", cpu.simd}};
  j["memory"] = {{"total_bytes", meminfo_kib("MemTotal") * 1024},
                 {"available_bytes", meminfo_kib("MemAvailable") * 1024}};
  const GpuReport g = query_gpus();
  nlohmann::json gpus = nlohmann::json::array();
  for (const auto& d : g.gpus) {
    gpus.push_back({{"index", d.index},
                    {"name", d.name},
                    {"compute_capability", fmt::format("{}.{}", d.cc_major, d.cc_minor)},
                    {"multiprocessors", d.multiprocessors},
                    {"vram_total_bytes", d.vram_total},
                    {"vram_free_bytes", d.vram_free},
                    {"kernel_test", d.kernel_ok ? "ok" : "failed"}});
  }
  j["cuda"] = {{"built_with_cuda", g.built_with_cuda},
               {"driver_version", cuda_version_string(g.driver_version)},
               {"runtime_version", cuda_version_string(g.runtime_version)},
               {"cublas_version", g.cublas_version},
               {"gpus", gpus}};
  if (!g.error.empty()) j["cuda"]["error"] = g.error;
  j["libraries"] = library_versions();
  j["timestamp"] = utc_timestamp();
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  j["hostname"] = host;
  return j;
}

#if !defined(MEDVISION_HAS_CUDA)
GpuReport query_gpus() {
  GpuReport r;
  r.built_with_cuda = false;
  r.error = "built without CUDA (-DMEDVISION_CUDA=OFF or no nvcc at build time)";
  return r;
}
#endif

}  // namespace mv
