// medvision generate --model DIR [--image FILE ...] --prompt TEXT: runs Qwen2.5-VL on the CPU or CUDA engine and
// streams the answer to stdout (or prints it with ids and timings as JSON with --json).
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "io/image.hpp"
#include "model/qwen25vl/generator.hpp"
#include "model/qwen25vl/model.hpp"
#include "text/chat_template.hpp"
#include "text/tokenizer.hpp"
#include "vision/preprocess.hpp"

namespace mv::cli {

namespace {

struct GenerateArgs {
  std::string model_dir;
  std::vector<std::string> images;
  std::string prompt;
  std::optional<std::string> system;
  int max_new_tokens = 256;
  bool greedy = false;
  std::optional<float> temperature;
  std::optional<float> top_p;
  std::optional<int> top_k;
  float repetition_penalty = 1.0f;
  bool ignore_eos = false;
  std::uint64_t seed = 0;
  std::string logits_out;
  std::optional<std::int64_t> min_pixels;
  std::optional<std::int64_t> max_pixels;
  int threads = 0;
  std::string device = "auto";
  bool json = false;
  std::string quantize;
  std::string adapter;
};

void run_generate(const GenerateArgs& a) {
  if (a.max_new_tokens < 1) fail(Errc::kUsage, "--max-new-tokens must be >= 1");
  const bool sampling = a.temperature || a.top_p || a.top_k;
  if (a.greedy && sampling)
    fail(Errc::kUsage, "--greedy cannot be combined with --temperature/--top-p/--top-k");

  qwen25vl::GenerateOptions options;
  options.max_new_tokens = a.max_new_tokens;
  options.ignore_eos = a.ignore_eos;
  options.sampling.do_sample = sampling;
  options.sampling.temperature = a.temperature.value_or(1.0f);
  options.sampling.top_p = a.top_p.value_or(1.0f);
  options.sampling.top_k = a.top_k.value_or(0);
  options.sampling.repetition_penalty = a.repetition_penalty;
  options.sampling.seed = a.seed;
  options.sampling.validate();
  options.keep_prompt_logits = !a.logits_out.empty();

  // Inputs first: a missing image fails before the model is loaded.
  std::vector<ImageRGB8> images;
  for (const auto& path : a.images) images.push_back(load_image(path));
  PreprocessConfig pre = PreprocessConfig::load(a.model_dir);
  if (a.min_pixels) pre.min_pixels = *a.min_pixels;
  if (a.max_pixels) pre.max_pixels = *a.max_pixels;
  if (pre.min_pixels <= 0 || pre.max_pixels < pre.min_pixels)
    fail(Errc::kUsage, "need 0 < --min-pixels <= --max-pixels (have {} and {})", pre.min_pixels,
         pre.max_pixels);

  const auto t0 = std::chrono::steady_clock::now();
  const Tokenizer tokenizer = Tokenizer::from_model_dir(a.model_dir);
  qwen25vl::LoadOptions load_options;
  load_options.threads = a.threads;
  load_options.device = a.device;
  load_options.quantize = a.quantize;
  load_options.adapter = a.adapter;
  auto model = qwen25vl::Model::load(a.model_dir, load_options);
  const double load_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  std::vector<ChatMessage> messages;
  if (a.system) messages.push_back(ChatMessage::text("system", *a.system));
  ChatMessage user;
  user.role = "user";
  for (std::size_t i = 0; i < images.size(); ++i) user.parts.push_back({ChatPart::Kind::kImage, {}});
  user.parts.push_back({ChatPart::Kind::kText, a.prompt});
  messages.push_back(std::move(user));

  if (!a.json) {
    options.on_text = [](std::string_view piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    };
  }
  auto result = qwen25vl::generate(*model, tokenizer, messages, images, pre, options);
  result.timings.load_ms = load_ms;

  if (!a.logits_out.empty()) {
    const auto& l = result.prompt_logits;
    write_file(a.logits_out, std::span<const std::byte>(reinterpret_cast<const std::byte*>(l.data()),
                                                        l.size() * sizeof(float)));
  }
  if (a.json) {
    nlohmann::json grids = nlohmann::json::array();
    for (const auto& g : result.image_grids_thw) grids.push_back(g);
    print_json({{"prompt_ids", result.prompt_ids},
                {"generated_ids", result.generated_ids},
                {"text", result.text},
                {"finish_reason", result.finish_reason},
                {"image_grid_thw", grids},
                {"timings", result.timings.to_json()}});
    return;
  }
  std::fputc('\n', stdout);
  std::fflush(stdout);
  const auto& t = result.timings;
  std::fprintf(
      stderr,
      "generate: load %.0f ms, preprocess %.0f ms, vision %.0f ms, prefill %.0f ms (%lld tokens, %.1f "
      "tok/s), ttft %.0f ms, decode %.2f tok/s (%lld tokens, %s), peak RSS %.0f MiB\n",
      t.load_ms, t.preprocess_ms, t.vision_ms, t.prefill_ms, static_cast<long long>(t.prompt_tokens),
      t.prefill_tokens_per_s(), t.ttft_ms, t.decode_tokens_per_s(),
      static_cast<long long>(t.generated_tokens), result.finish_reason.c_str(),
      static_cast<double>(t.peak_rss_bytes) / (1024.0 * 1024.0));
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  auto* cmd = app.add_subcommand("generate",
                                 "Run Qwen2.5-VL on images and a prompt (CPU or CUDA engine), streaming the answer");
  cmd->add_option("--model", args->model_dir, "model directory (config.json, safetensors, tokenizer.json)")
      ->required();
  cmd->add_option("--image", args->images, "image file (first page of PDF/TIFF); repeat for several images");
  cmd->add_option("--prompt", args->prompt, "the user's question (after the images)")->required();
  cmd->add_option("--system", args->system, "system prompt (default: \"You are a helpful assistant.\")");
  cmd->add_option("--max-new-tokens", args->max_new_tokens, "most tokens to generate")->capture_default_str();
  cmd->add_flag("--greedy", args->greedy, "argmax decoding (the default when no sampling option is given)");
  cmd->add_option("--temperature", args->temperature, "sample with this temperature (> 0)");
  cmd->add_option("--top-p", args->top_p,
                  "sample from the smallest set of tokens with this probability mass");
  cmd->add_option("--top-k", args->top_k, "sample from the k most likely tokens (0 = all)");
  cmd->add_option(
         "--repetition-penalty", args->repetition_penalty,
         "HF repetition penalty over prompt and output (1 = off; the released generation_config says 1.05)")
      ->capture_default_str();
  cmd->add_flag("--ignore-eos", args->ignore_eos, "do not stop at <|im_end|> / <|endoftext|>");
  cmd->add_option("--seed", args->seed, "sampling seed")->capture_default_str();
  cmd->add_option("--logits-out", args->logits_out,
                  "write the raw float32 logits [vocab] of the last prompt position to this file");
  cmd->add_option("--min-pixels", args->min_pixels,
                  "smallest image area after resizing (default: the model's)");
  cmd->add_option("--max-pixels", args->max_pixels,
                  "largest image area after resizing (default: the model's)");
  cmd->add_option("--threads", args->threads, "CPU threads (0 = all)")->capture_default_str();
  cmd->add_option("--device", args->device, "cpu, cuda, cuda:N, or auto (cuda:0 when a GPU is usable)")
      ->capture_default_str();
  cmd->add_option("--quantize", args->quantize,
                  "nf4: quantize the 16-bit Linear weights to NF4 while loading (like load_in_4bit)")
      ->check(CLI::IsMember({"nf4"}));
  cmd->add_option(
      "--adapter", args->adapter,
      "PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors), merged at load");
  cmd->add_flag("--json", args->json,
                "print {prompt_ids, generated_ids, text, timings} as JSON instead of streaming");
  cmd->callback([args] { run_generate(*args); });
}

}  // namespace mv::cli
