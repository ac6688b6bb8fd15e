// medvision bench --model DIR --image FILE ...: times one page end to end (load, vision, prefill, TTFT,
// decode) over several runs on the CPU or CUDA engine and writes the figures as JSON (median, min, max).
// An NF4 model (an NF4 checkpoint, or --quantize nf4) writes benchmarks/quantized_int4.json unless --json
// names another file.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "core/system_info.hpp"
#include "io/image.hpp"
#include "model/qwen25vl/generator.hpp"
#include "model/qwen25vl/model.hpp"
#include "text/chat_template.hpp"
#include "text/tokenizer.hpp"
#include "vision/preprocess.hpp"

namespace mv::cli {

namespace {

struct BenchArgs {
  std::string model_dir, image, json_out;
  std::string prompt = "Extract every medication with its dose, route and frequency from this document.";
  std::string device = "auto";
  std::string quantize;  // "nf4": quantize at load
  int max_new_tokens = 256;
  bool ignore_eos = false;
  int runs = 3;
  int warmup = 1;
  int concurrency = 1;
  int threads = 0;
};

nlohmann::json summary(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  const double median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  return {{"median", median}, {"min", v.front()}, {"max", v.back()}, {"values", v}};
}

void run_bench(const BenchArgs& a) {
  if (a.runs < 1) fail(Errc::kUsage, "--runs must be >= 1");
  if (a.max_new_tokens < 1) fail(Errc::kUsage, "--max-new-tokens must be >= 1");
  if (a.concurrency != 1)
    fail(Errc::kUnsupported, "--concurrency {}: batched decode is not implemented yet (only 1)",
         a.concurrency);
  const ImageRGB8 image = load_image(a.image);
  const PreprocessConfig pre = PreprocessConfig::load(a.model_dir);
  const Tokenizer tokenizer = Tokenizer::from_model_dir(a.model_dir);

  qwen25vl::LoadOptions lo;
  lo.threads = a.threads;
  lo.device = a.device;
  lo.quantize = a.quantize;
  // NF4 when asked to quantize, or when config.json carries bitsandbytes' 4-bit quantization_config.
  bool nf4 = a.quantize == "nf4";
  {
    const auto cfg = nlohmann::json::parse(read_file(std::filesystem::path(a.model_dir) / "config.json"));
    if (cfg.contains("quantization_config") && cfg["quantization_config"].is_object())
      nf4 = nf4 || cfg["quantization_config"].value("load_in_4bit", false);
  }
  const std::string json_out = !a.json_out.empty() ? a.json_out : nf4 ? "benchmarks/quantized_int4.json" : "";
  const int gpu = qwen25vl::parse_device(a.device);
  const auto t0 = std::chrono::steady_clock::now();
  auto model = qwen25vl::Model::load(a.model_dir, lo);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::vector<ChatMessage> messages;
  ChatMessage user;
  user.role = "user";
  user.parts.push_back({ChatPart::Kind::kImage, {}});
  user.parts.push_back({ChatPart::Kind::kText, a.prompt});
  messages.push_back(std::move(user));
  qwen25vl::GenerateOptions opt;
  opt.max_new_tokens = a.max_new_tokens;
  opt.ignore_eos = a.ignore_eos;

  std::vector<double> vision, prefill, ttft, decode_tps, e2e, preprocess, gen_tokens;
  std::int64_t prompt_tokens = 0, image_tokens = 0;
  qwen25vl::reset_gpu_peak(*model);
  for (int r = 0; r < a.warmup + a.runs; ++r) {
    const auto s0 = std::chrono::steady_clock::now();
    const auto res = qwen25vl::generate(*model, tokenizer, messages, {image}, pre, opt);
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count();
    const auto& t = res.timings;
    std::fprintf(
        stderr, "bench: run %d%s: vision %.1f ms, prefill %.1f ms, ttft %.1f ms, decode %.1f tok/s, %.3f s\n",
        r, r < a.warmup ? " (warm-up)" : "", t.vision_ms, t.prefill_ms, t.ttft_ms, t.decode_tokens_per_s(),
        wall);
    if (r < a.warmup) continue;
    vision.push_back(t.vision_ms);
    prefill.push_back(t.prefill_ms);
    ttft.push_back(t.ttft_ms);
    decode_tps.push_back(t.decode_tokens_per_s());
    preprocess.push_back(t.preprocess_ms);
    e2e.push_back(wall);
    gen_tokens.push_back(static_cast<double>(t.generated_tokens));
    prompt_tokens = t.prompt_tokens;
    image_tokens = t.image_tokens;
  }
  nlohmann::json j;
  j["engine"] = "medvision";
  j["device"] = gpu >= 0 ? "cuda:" + std::to_string(gpu) : "cpu";
  const GpuReport gr = query_gpus();
  if (gpu >= 0 && gpu < static_cast<int>(gr.gpus.size()))
    j["gpu_name"] = gr.gpus[static_cast<std::size_t>(gpu)].name;
  j["model_dir"] = a.model_dir;
  j["dtype"] = gpu >= 0 ? "bfloat16" : "float32 compute";
  if (nf4) {
    j["quantization"] = "nf4";  // bitsandbytes layout: block 64, double quantization
    j["quantized_at_load"] = a.quantize == "nf4";
  }
  j["max_new_tokens"] = a.max_new_tokens;
  j["ignore_eos"] = a.ignore_eos;
  j["runs"] = a.runs;
  j["concurrency"] = a.concurrency;
  j["prompt_tokens"] = prompt_tokens;
  j["image_tokens"] = image_tokens;
  j["load_time_s"] = load_s;
  j["preprocess_ms"] = summary(preprocess);
  j["vision_ms"] = summary(vision);
  j["prefill_ms"] = summary(prefill);
  j["ttft_ms"] = summary(ttft);
  j["tokens_per_second"] = summary(decode_tps);
  j["generated_tokens"] = summary(gen_tokens);
  j["e2e_seconds_per_page"] = summary(e2e);
  if (const auto m = qwen25vl::gpu_memory(*model)) {
    const double gib = 1024.0 * 1024.0 * 1024.0;
    j["vram_weights_gb"] = static_cast<double>(m->weights) / gib;
    j["vram_allocated_gb"] = static_cast<double>(m->allocated) / gib;
    j["vram_peak_gb"] = static_cast<double>(m->peak_allocated) / gib;
    j["vram_reserved_gb"] = static_cast<double>(m->device_used) / gib;
    j["vram_total_gb"] = static_cast<double>(m->device_total) / gib;
  }
  j["peak_rss_mb"] = static_cast<double>(qwen25vl::peak_rss_bytes()) / (1024.0 * 1024.0);
  if (!json_out.empty()) {
    const auto parent = std::filesystem::path(json_out).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent);
    write_file(json_out, j.dump(2) + "\n");
  }
  print_json(j);
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  auto* cmd = app.add_subcommand(
      "bench", "Time one page end to end (vision, prefill, TTFT, decode) over several runs");
  cmd->add_option("--model", args->model_dir, "model directory")->required();
  cmd->add_option("--image", args->image, "the page (image file, or first page of a PDF/TIFF)")->required();
  cmd->add_option("--prompt", args->prompt, "the question after the image")->capture_default_str();
  cmd->add_option("--max-new-tokens", args->max_new_tokens, "tokens to generate")->capture_default_str();
  cmd->add_flag("--ignore-eos", args->ignore_eos, "always generate --max-new-tokens tokens");
  cmd->add_option("--runs", args->runs, "timed runs (median, min and max are reported)")
      ->capture_default_str();
  cmd->add_option("--warmup", args->warmup, "untimed runs first")->capture_default_str();
  cmd->add_option("--concurrency", args->concurrency, "sequences decoded together (only 1 so far)")
      ->capture_default_str();
  cmd->add_option("--device", args->device, "cpu, cuda, cuda:N, or auto")->capture_default_str();
  cmd->add_option("--threads", args->threads, "CPU threads (0 = all)")->capture_default_str();
  cmd->add_option("--quantize", args->quantize, "nf4: quantize the 16-bit Linear weights at load");
  cmd->add_option("--json", args->json_out,
                  "also write the JSON to this file (default for an NF4 model: benchmarks/quantized_int4.json)");
  cmd->callback([args] { run_bench(*args); });
}

}  // namespace mv::cli
