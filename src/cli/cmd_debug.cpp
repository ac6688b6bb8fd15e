// medvision debug <tool>: developer tools.
//   random-checkpoint --config 3b|7b|tiny|CONFIG.json --out DIR [--seed S] [--dtype bf16|f16|f32] [--init-std
//   X]
//     writes a random-initialised checkpoint laid out like a published one (see
//     model/qwen25vl/random_checkpoint.hpp).
//   random-adapter --model DIR --out DIR [--rank R] [--alpha A] [--targets a,b,...] [--seed S] ...
//     writes a PEFT LoRA adapter with random, non-zero A and B for that model (see model/qwen25vl/lora.hpp).
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "model/qwen25vl/lora.hpp"
#include "model/qwen25vl/random_checkpoint.hpp"

namespace mv::cli {

namespace {

struct RandomCheckpointArgs {
  std::string config;
  std::string out;
  std::uint64_t seed = 0;
  std::string dtype = "bf16";
  std::uint64_t max_shard_bytes = 4'000'000'000ull;
  std::string tokenizer;
  int threads = 0;
  double init_std = 0.02;
  bool json = false;
};

DType parse_weight_dtype(const std::string& s) {
  if (s == "bf16" || s == "bfloat16") return DType::kBF16;
  if (s == "f16" || s == "fp16" || s == "float16") return DType::kF16;
  if (s == "f32" || s == "fp32" || s == "float32") return DType::kF32;
  fail(Errc::kUsage, "--dtype must be bf16, f16 or f32, got '{}'", s);
}

void run_random_checkpoint(const RandomCheckpointArgs& a) {
  if (a.max_shard_bytes == 0) fail(Errc::kUsage, "--max-shard-bytes must be > 0");
  if (a.threads < 0) fail(Errc::kUsage, "--threads must be >= 0");
  qwen25vl::RandomCheckpointOptions options;
  options.seed = a.seed;
  options.dtype = parse_weight_dtype(a.dtype);
  options.max_shard_bytes = a.max_shard_bytes;
  options.tokenizer_json = a.tokenizer;
  options.threads = a.threads;
  options.init_std = a.init_std;
  const ModelConfig config = qwen25vl::random_checkpoint_config(a.config);
  const auto info = qwen25vl::write_random_checkpoint(config, a.out, options);
  if (a.json) {
    nlohmann::json files = nlohmann::json::array();
    for (const auto& f : info.files) files.push_back(f.filename().string());
    print_json({{"out", a.out},
                {"config", a.config},
                {"seed", a.seed},
                {"dtype", dtype_name(options.dtype)},
                {"tensors", info.tensors},
                {"parameters", info.parameters},
                {"weight_bytes", info.weight_bytes},
                {"weight_files", info.weight_files.size()},
                {"files", files}});
  } else {
    std::printf("wrote %s: %zu tensors, %llu parameters, %llu bytes of weights in %zu file(s)\n",
                a.out.c_str(), info.tensors, static_cast<unsigned long long>(info.parameters),
                static_cast<unsigned long long>(info.weight_bytes), info.weight_files.size());
  }
}

struct RandomAdapterArgs {
  std::string model, out, layout = "nested", dtype = "f32", target_regex;
  std::vector<std::string> targets, rank_pattern, alpha_pattern;
  int rank = 8;
  double alpha = 16, b_std = 0.02;
  std::uint64_t seed = 0;
  bool rslora = false, json = false;
};

// "KEY=VALUE" of --rank-pattern / --alpha-pattern.
std::pair<std::string, std::string> split_pattern(const std::string& s, const char* option) {
  const auto eq = s.rfind('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == s.size())
    fail(Errc::kUsage, "{} takes NAME=VALUE, got '{}'", option, s);
  return {s.substr(0, eq), s.substr(eq + 1)};
}

void run_random_adapter(const RandomAdapterArgs& a) {
  qwen25vl::RandomAdapterOptions o;
  o.rank = a.rank;
  o.alpha = a.alpha;
  o.use_rslora = a.rslora;
  o.seed = a.seed;
  o.b_std = a.b_std;
  if (!a.targets.empty()) o.targets = a.targets;
  if (!a.target_regex.empty()) o.target_regex = a.target_regex;
  if (a.layout == "nested")
    o.layout = KeyLayout::kNested;
  else if (a.layout == "legacy")
    o.layout = KeyLayout::kLegacy;
  else
    fail(Errc::kUsage, "--layout must be nested or legacy, got '{}'", a.layout);
  o.dtype = parse_weight_dtype(a.dtype);
  try {
    for (const auto& p : a.rank_pattern) {
      auto [k, v] = split_pattern(p, "--rank-pattern");
      o.rank_pattern.emplace_back(k, std::stoi(v));
    }
    for (const auto& p : a.alpha_pattern) {
      auto [k, v] = split_pattern(p, "--alpha-pattern");
      o.alpha_pattern.emplace_back(k, std::stod(v));
    }
  } catch (const std::logic_error&) {
    fail(Errc::kUsage, "--rank-pattern / --alpha-pattern values must be numbers");
  }
  const auto info = qwen25vl::write_random_adapter(a.model, a.out, o);
  if (a.json) {
    print_json({{"out", a.out},
                {"modules", info.modules},
                {"parameters", info.parameters},
                {"rank", a.rank},
                {"alpha", a.alpha},
                {"layout", a.layout},
                {"seed", a.seed}});
  } else {
    std::printf("wrote %s: LoRA on %zu modules, %llu parameters\n", a.out.c_str(), info.modules,
                static_cast<unsigned long long>(info.parameters));
  }
}

}  // namespace

void add_debug_command(CLI::App& app) {
  auto* debug = app.add_subcommand("debug", "Developer tools");
  debug->require_subcommand(1);

  auto args = std::make_shared<RandomCheckpointArgs>();
  auto* rc = debug->add_subcommand("random-checkpoint",
                                   "Write a random-initialised Qwen2.5-VL checkpoint (legacy key names, "
                                   "config, tokenizer, processor files)");
  rc->add_option("--config", args->config, "3b, 7b (released shapes), tiny, or a config.json")->required();
  rc->add_option("--out", args->out, "output directory")->required();
  rc->add_option("--seed", args->seed, "seed of the weights")->capture_default_str();
  rc->add_option("--dtype", args->dtype, "bf16, f16 or f32")->capture_default_str();
  rc->add_option("--max-shard-bytes", args->max_shard_bytes, "shard the weights above this size")
      ->capture_default_str();
  rc->add_option("--tokenizer", args->tokenizer,
                 "tokenizer.json to derive from (default: the cached one from scripts/setup.sh)");
  rc->add_option("--threads", args->threads, "threads filling the weights (0 = all)")->capture_default_str();
  rc->add_option("--init-std", args->init_std, "standard deviation of the weights (biases: U(-std, std))")
      ->capture_default_str();
  rc->add_flag("--json", args->json, "print a JSON summary");
  rc->callback([args] { run_random_checkpoint(*args); });

  auto ra_args = std::make_shared<RandomAdapterArgs>();
  auto* ra = debug->add_subcommand(
      "random-adapter", "Write a PEFT LoRA adapter with random, non-zero A and B for a model folder");
  ra->add_option("--model", ra_args->model, "model folder (config.json)")->required();
  ra->add_option("--out", ra_args->out, "output folder (adapter_config.json, adapter_model.safetensors)")
      ->required();
  ra->add_option("--rank", ra_args->rank, "LoRA rank r")->capture_default_str();
  ra->add_option("--alpha", ra_args->alpha, "lora_alpha")->capture_default_str();
  ra->add_option("--targets", ra_args->targets,
                 "target_modules names (default q,k,v,o,gate,up,down _proj; these also hit the vision MLP)")
      ->delimiter(',');
  ra->add_option("--target-regex", ra_args->target_regex, "target_modules as a regular expression instead");
  ra->add_option("--seed", ra_args->seed, "seed of A and B")->capture_default_str();
  ra->add_option("--layout", ra_args->layout,
                 "key names: nested (transformers >= 4.52) or legacy (model.layers.*, visual.*)")
      ->capture_default_str();
  ra->add_option("--dtype", ra_args->dtype, "f32 or bf16")->capture_default_str();
  ra->add_option("--b-std", ra_args->b_std, "standard deviation of lora_B (A: U(+-1/sqrt(in)))")
      ->capture_default_str();
  ra->add_flag("--rslora", ra_args->rslora, "use_rslora: scale alpha/sqrt(r)");
  ra->add_option("--rank-pattern", ra_args->rank_pattern, "NAME=R entry of rank_pattern (repeatable)");
  ra->add_option("--alpha-pattern", ra_args->alpha_pattern, "NAME=A entry of alpha_pattern (repeatable)");
  ra->add_flag("--json", ra_args->json, "print a JSON summary");
  ra->callback([ra_args] { run_random_adapter(*ra_args); });
}

}  // namespace mv::cli
