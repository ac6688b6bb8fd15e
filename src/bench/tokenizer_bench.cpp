#include "bench/tokenizer_bench.hpp"

#include <sys/utsname.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <fstream>
#include <random>
#include <thread>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "core/time_stats.hpp"
#include "text/tokenizer.hpp"

namespace mv::bench {

namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0 || line.rfind("Model", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) {
        auto v = line.substr(colon + 1);
        v.erase(0, v.find_first_not_of(" \t"));
        return v;
      }
    }
  }
  return "unknown";
}

double thread_cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

nlohmann::json machine_info() {
  utsname u{};
  ::uname(&u);
  return {{"cpu", cpu_model()},
          {"logical_cpus", std::thread::hardware_concurrency()},
          {"os", std::string(u.sysname) + " " + u.release},
          {"arch", u.machine}};
}

}  // namespace

std::vector<std::string> clinical_corpus_lines(const std::string& corpus) {
  std::vector<std::string> out;
  bool clinical = false;
  std::size_t pos = 0;
  while (pos <= corpus.size()) {
    auto end = corpus.find('\n', pos);
    if (end == std::string::npos) end = corpus.size();
    std::string line = corpus.substr(pos, end - pos);
    pos = end + 1;
    if (line.rfind("## ", 0) == 0) {
      clinical = line.rfind("## clinical", 0) == 0;
      continue;
    }
    if (clinical && !line.empty()) out.push_back(std::move(line));
    if (end == corpus.size()) break;
  }
  return out;
}

std::string build_clinical_text(const std::vector<std::string>& lines, std::size_t target_bytes,
                                std::uint64_t seed) {
  if (lines.empty()) fail(Errc::kInvalidInput, "tokenizer bench: the corpus has no clinical lines");
  std::mt19937_64 rng(seed);
  std::vector<std::size_t> order(lines.size());
  std::string text;
  text.reserve(target_bytes + 4096);
  while (text.size() < target_bytes) {
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    for (const std::size_t k : order) {
      std::string line = lines[k];
      for (char& c : line) {  // vary the numbers: doses, lab values, dates
        if (c >= '0' && c <= '9' && (rng() & 1)) c = static_cast<char>('0' + rng() % 10);
      }
      text += line;
      text += '\n';
      if (text.size() >= target_bytes) break;
    }
  }
  return text;
}

nlohmann::json run_tokenizer_bench(const TokenizerBenchOptions& options) {
  if (options.repeats < 1) fail(Errc::kUsage, "tokenizer bench: --repeats must be at least 1");
  const auto tok_path = options.tokenizer_json.empty() ? default_tokenizer_json() : options.tokenizer_json;
  const auto corpus_path = options.corpus.empty() ? std::filesystem::path(MEDVISION_SOURCE_DIR) / "tests" /
                                                        "fixtures" / "tokenizer" / "corpus.txt"
                                                  : options.corpus;

  const auto t_load = std::chrono::steady_clock::now();
  const Tokenizer tok = Tokenizer::load(tok_path);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();

  const auto lines = clinical_corpus_lines(read_file(corpus_path));
  const std::string text = build_clinical_text(lines, options.target_bytes, options.seed);
  spdlog::info("tokenizer bench: {} clinical lines, {} bytes of text", lines.size(), text.size());
  if (!options.dump_text.empty()) write_file(options.dump_text, text);

  // Wall time, and the CPU time of this thread (which stays meaningful on a shared, loaded machine).
  std::string ids_sha256;
  const auto timed_encode = [&](std::size_t* n_tokens, double* cpu_s) {
    const double c0 = thread_cpu_seconds();
    const auto t0 = std::chrono::steady_clock::now();
    const auto ids = tok.encode(text);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    *cpu_s = thread_cpu_seconds() - c0;
    *n_tokens = ids.size();
    if (ids_sha256.empty()) {
      std::string le;
      le.reserve(ids.size() * 4);
      for (const std::int32_t id : ids) {
        const auto u = static_cast<std::uint32_t>(id);
        for (int k = 0; k < 4; ++k) le.push_back(static_cast<char>((u >> (8 * k)) & 0xFF));
      }
      ids_sha256 = sha256_hex(le);
    }
    return s;
  };

  std::size_t n_tokens = 0;
  double cold_cpu_s = 0;
  const double cold_s = timed_encode(&n_tokens, &cold_cpu_s);  // empty piece cache
  std::vector<double> runs, cpu_runs;
  for (int r = 0; r < options.repeats; ++r) {
    std::size_t n = 0;
    double cpu = 0;
    runs.push_back(timed_encode(&n, &cpu));
    cpu_runs.push_back(cpu);
    if (n != n_tokens) fail(Errc::kInternal, "tokenizer bench: encode is not deterministic");
  }
  const double best_cpu = *std::min_element(cpu_runs.begin(), cpu_runs.end());
  const double best = *std::min_element(runs.begin(), runs.end());
  std::vector<double> sorted = runs;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[sorted.size() / 2];
  const double mb = static_cast<double>(text.size()) / 1e6;

  return {
      {"benchmark", "tokenizer_encode"},
      {"date", utc_timestamp()},
      {"machine", machine_info()},
      {"threads", 1},
      {"tokenizer", tok_path.string()},
      {"tokenizer_sha256", sha256_file_hex(tok_path)},
      {"corpus", corpus_path.string()},
      {"clinical_lines", lines.size()},
      {"input_bytes", text.size()},
      {"tokens", n_tokens},
      {"ids_sha256", ids_sha256},
      {"bytes_per_token",
       static_cast<double>(text.size()) / static_cast<double>(std::max<std::size_t>(n_tokens, 1))},
      {"load_s", load_s},
      {"cold_s", cold_s},
      {"runs_s", runs},
      {"best_s", best},
      {"median_s", median},
      {"mb_per_s", mb / best},
      {"mb_per_s_median", mb / median},
      {"mb_per_s_cold", mb / cold_s},
      {"cpu_runs_s", cpu_runs},
      {"mb_per_cpu_s", mb / best_cpu},
      {"mb_per_cpu_s_cold", mb / cold_cpu_s},
      {"tokens_per_s", static_cast<double>(n_tokens) / best},
      {"units",
       "MB = 10^6 bytes of UTF-8 input; one thread; best of the timed runs after a cold run (empty piece "
       "cache); "
       "mb_per_s uses wall time, mb_per_cpu_s the thread's CPU time"},
  };
}

}  // namespace mv::bench
