// medvision quantize --model DIR --out DIR [--skip MODULES]: writes an NF4 (bitsandbytes layout, double
// quantization) copy of a 16/32-bit Qwen2.5-VL checkpoint, shard by shard.
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "quant/nf4_checkpoint.hpp"

namespace mv::cli {

namespace {

struct QuantizeArgs {
  std::string model_dir;
  std::string out_dir;
  std::vector<std::string> skip;
  std::string device = "cpu";
  int threads = 0;
  bool overwrite = false;
};

void run_quantize(const QuantizeArgs& a) {
  if (a.device == "cuda")
    fail(Errc::kUnsupported,
         "quantize --device cuda is not available in this build yet; use --device cpu (the default)");
  if (a.device != "cpu") fail(Errc::kUsage, "--device must be cpu or cuda, not '{}'", a.device);
  if (a.threads < 0) fail(Errc::kUsage, "--threads must be >= 0");
  quant::QuantizeCheckpointOptions options;
  options.skip = a.skip;
  options.threads = a.threads;
  options.overwrite = a.overwrite;
  const auto info = quant::quantize_checkpoint(a.model_dir, a.out_dir, options);
  print_json(info.to_json());
}

}  // namespace

void add_quantize_command(CLI::App& app) {
  auto args = std::make_shared<QuantizeArgs>();
  auto* cmd = app.add_subcommand(
      "quantize",
      "Write an NF4 copy of a checkpoint in bitsandbytes' layout (block 64, double quantization); "
      "lm_head and embeddings stay 16-bit");
  cmd->add_option("--model", args->model_dir, "input model folder (config.json + safetensors)")->required();
  cmd->add_option("--out", args->out_dir, "output folder (created; must be empty unless --overwrite)")
      ->required();
  cmd->add_option("--skip", args->skip,
                  "modules kept in 16 bits besides lm_head, bitsandbytes' matching (e.g. visual); "
                  "repeat or separate with commas");
  cmd->add_option("--device", args->device, "cpu (cuda: not yet)")->capture_default_str();
  cmd->add_option("--threads", args->threads, "CPU threads (0 = all)")->capture_default_str();
  cmd->add_flag("--overwrite", args->overwrite, "write into a non-empty output folder");
  cmd->callback([args] { run_quantize(*args); });
}

}  // namespace mv::cli
