// medvision debug <tool>: developer tools.
//   random-checkpoint --config 3b|7b|tiny|CONFIG.json --out DIR [--seed S] [--dtype bf16|f16|f32] [--init-std
//   X]
//     writes a random-initialised checkpoint laid out like a published one (see
//     model/qwen25vl/random_checkpoint.hpp).
#include <cstdint>
#include <memory>
#include <string>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "io/safetensors.hpp"
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
}

}  // namespace mv::cli
