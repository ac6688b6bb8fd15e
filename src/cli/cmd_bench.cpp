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
#include <span>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "core/system_info.hpp"
#include "io/image.hpp"
#include "model/qwen25vl/generator.hpp"
#include "model/qwen25vl/model.hpp"
#include "model/qwen25vl/sampler.hpp"
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
  std::string adapter;   // LoRA adapter folder merged at load
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

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// One run of `concurrency` sequences over the same page and prompt: the page is preprocessed and encoded
// once, each sequence is prefilled on its own, then every decode step serves all unfinished sequences
// together (greedy, picked by the engine).
struct ConcurrentRun {
  double preprocess_ms = 0, vision_ms = 0, prefill_ms = 0, ttft_ms = 0, decode_ms = 0, wall_s = 0;
  std::int64_t prompt_tokens = 0, image_tokens = 0, steps = 0, decode_tokens = 0, generated = 0;
  double aggregate_tps() const { return decode_ms > 0 ? decode_tokens * 1000.0 / decode_ms : 0.0; }
  double per_sequence_tps() const { return decode_ms > 0 ? steps * 1000.0 / decode_ms : 0.0; }
};

ConcurrentRun run_concurrent(qwen25vl::Model& model, const Tokenizer& tokenizer,
                             const std::vector<ChatMessage>& messages, const ImageRGB8& image,
                             const PreprocessConfig& pre, const qwen25vl::GenerateOptions& opt,
                             int concurrency) {
  using Clock = std::chrono::steady_clock;
  ConcurrentRun r;
  const auto t0 = Clock::now();
  const PixelValues px = preprocess_image(image, pre);
  r.image_tokens = px.merged_tokens(model.config().vision.spatial_merge_size);
  const std::vector<std::int32_t> ids = encode_chat(tokenizer, messages, {r.image_tokens}, true);
  r.prompt_tokens = static_cast<std::int64_t>(ids.size());
  r.preprocess_ms = ms_since(t0);
  auto t = Clock::now();
  const auto features = model.encode_images_resident(std::span<const PixelValues>(&px, 1));
  r.vision_ms = ms_since(t);

  const auto n = static_cast<std::size_t>(concurrency);
  const std::size_t vocab = static_cast<std::size_t>(model.config().text.vocab_size);
  const std::vector<std::array<std::int64_t, 3>> grids{px.grid_thw};
  std::vector<std::unique_ptr<qwen25vl::Session>> sessions;
  std::vector<std::int32_t> cur(n);
  std::vector<int> generated(n, 1);
  std::vector<bool> done(n, false);
  std::vector<float> logits(vocab);
  auto is_stop = [&](std::int32_t id) {
    return !opt.ignore_eos && std::find(opt.stop_ids.begin(), opt.stop_ids.end(), id) != opt.stop_ids.end();
  };
  t = Clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    sessions.push_back(model.new_session(r.prompt_tokens + opt.max_new_tokens));
    model.prefill_with_features(*sessions.back(), ids, grids, *features, logits);
    qwen25vl::Sampler sampler(opt.sampling, vocab);
    cur[i] = sampler.sample(logits);
    done[i] = is_stop(cur[i]) || opt.max_new_tokens <= 1;
  }
  r.prefill_ms = ms_since(t);
  r.ttft_ms = ms_since(t0);  // every sequence has its first token

  std::vector<qwen25vl::Session*> batch;
  std::vector<std::int32_t> tokens, next;
  std::vector<std::size_t> index;
  batch.reserve(n);
  tokens.reserve(n);
  next.reserve(n);
  index.reserve(n);
  t = Clock::now();
  for (;;) {
    batch.clear();
    tokens.clear();
    index.clear();
    for (std::size_t i = 0; i < n; ++i)
      if (!done[i]) {
        batch.push_back(sessions[i].get());
        tokens.push_back(cur[i]);
        index.push_back(i);
      }
    if (batch.empty()) break;
    next.resize(batch.size());
    model.decode_batch_greedy(batch, tokens, next);
    ++r.steps;
    r.decode_tokens += static_cast<std::int64_t>(batch.size());
    for (std::size_t k = 0; k < index.size(); ++k) {
      const std::size_t i = index[k];
      cur[i] = next[k];
      ++generated[i];
      done[i] = is_stop(cur[i]) || generated[i] >= opt.max_new_tokens;
    }
  }
  r.decode_ms = ms_since(t);
  r.wall_s = ms_since(t0) / 1000.0;
  for (const int g : generated) r.generated += g;
  return r;
}

void run_bench(const BenchArgs& a) {
  if (a.runs < 1) fail(Errc::kUsage, "--runs must be >= 1");
  if (a.max_new_tokens < 1) fail(Errc::kUsage, "--max-new-tokens must be >= 1");
  if (a.concurrency < 1 || a.concurrency > 1024)
    fail(Errc::kUsage, "--concurrency must be between 1 and 1024, got {}", a.concurrency);
  const ImageRGB8 image = load_image(a.image);
  const PreprocessConfig pre = PreprocessConfig::load(a.model_dir);
  const Tokenizer tokenizer = Tokenizer::from_model_dir(a.model_dir);

  qwen25vl::LoadOptions lo;
  lo.threads = a.threads;
  lo.device = a.device;
  lo.quantize = a.quantize;
  lo.adapter = a.adapter;
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

  std::vector<double> vision, prefill, ttft, decode_tps, e2e, preprocess, gen_tokens, aggregate, batch_wall;
  std::int64_t prompt_tokens = 0, image_tokens = 0;
  qwen25vl::reset_gpu_peak(*model);
  for (int r = 0; r < a.warmup + a.runs && a.concurrency > 1; ++r) {
    const ConcurrentRun c = run_concurrent(*model, tokenizer, messages, image, pre, opt, a.concurrency);
    std::fprintf(stderr,
                 "bench: run %d%s: %d sequences, vision %.1f ms, prefill %.1f ms (all), ttft %.1f ms, decode "
                 "%.1f tok/s per sequence, %.1f tok/s aggregate, %.3f s\n",
                 r, r < a.warmup ? " (warm-up)" : "", a.concurrency, c.vision_ms, c.prefill_ms, c.ttft_ms,
                 c.per_sequence_tps(), c.aggregate_tps(), c.wall_s);
    if (r < a.warmup) continue;
    vision.push_back(c.vision_ms);
    prefill.push_back(c.prefill_ms / a.concurrency);
    ttft.push_back(c.ttft_ms);
    decode_tps.push_back(c.per_sequence_tps());
    aggregate.push_back(c.aggregate_tps());
    preprocess.push_back(c.preprocess_ms);
    e2e.push_back(c.wall_s / a.concurrency);
    batch_wall.push_back(c.wall_s);
    gen_tokens.push_back(static_cast<double>(c.generated) / a.concurrency);
    prompt_tokens = c.prompt_tokens;
    image_tokens = c.image_tokens;
  }
  for (int r = 0; r < a.warmup + a.runs && a.concurrency == 1; ++r) {
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
    aggregate.push_back(t.decode_tokens_per_s());
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
  if (!a.adapter.empty()) j["adapter"] = a.adapter;
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
  j["tokens_per_second"] = summary(decode_tps);           // decode rate of one sequence
  j["aggregate_tokens_per_second"] = summary(aggregate);  // decode tokens of all sequences per second
  j["generated_tokens"] = summary(gen_tokens);            // per sequence
  j["e2e_seconds_per_page"] = summary(e2e);
  if (a.concurrency > 1) j["e2e_seconds_per_batch"] = summary(batch_wall);
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
  cmd->add_option("--concurrency", args->concurrency,
                  "sequences of the same page decoded together (each prefilled, then batched decode steps)")
      ->capture_default_str();
  cmd->add_option("--device", args->device, "cpu, cuda, cuda:N, or auto")->capture_default_str();
  cmd->add_option("--threads", args->threads, "CPU threads (0 = all)")->capture_default_str();
  cmd->add_option("--adapter", args->adapter, "PEFT LoRA adapter folder, merged into the weights at load");
  cmd->add_option("--quantize", args->quantize, "nf4: quantize the 16-bit Linear weights at load");
  cmd->add_option(
      "--json", args->json_out,
      "also write the JSON to this file (default for an NF4 model: benchmarks/quantized_int4.json)");
  cmd->callback([args] { run_bench(*args); });
}

}  // namespace mv::cli
