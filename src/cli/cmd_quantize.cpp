// medvision quantize --model DIR --out DIR [--skip MODULES] [--device cpu|cuda[:N]]: writes an NF4
// (bitsandbytes layout, double quantization) copy of a 16/32-bit Qwen2.5-VL checkpoint, shard by shard, on
// the CPU threads or on a GPU (the same bytes either way).
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "model/qwen25vl/model.hpp"
#include "quant/nf4_checkpoint.hpp"
#if MEDVISION_HAS_CUDA
#include "quant/nf4_cuda.hpp"
#endif

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
  if (a.device == "auto") fail(Errc::kUsage, "--device must be cpu, cuda or cuda:N, not 'auto'");
  const int gpu = qwen25vl::parse_device(a.device);  // throws for a bad name or a build without CUDA
  if (a.threads < 0) fail(Errc::kUsage, "--threads must be >= 0");
  quant::QuantizeCheckpointOptions options;
  options.skip = a.skip;
  options.threads = a.threads;
  options.overwrite = a.overwrite;
#if MEDVISION_HAS_CUDA
  std::shared_ptr<quant::CudaQuantizer> q;
  if (gpu >= 0) {
    if (!qwen25vl::cuda_available()) fail(Errc::kUnsupported, "--device {}: no usable GPU", a.device);
    q = std::make_shared<quant::CudaQuantizer>(gpu);
    options.quantizer = [q](const void* data, DType dt, const std::vector<std::int64_t>& shape) {
      return q->quantize(data, dt, shape);
    };
  }
#else
  (void)gpu;
#endif
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
  cmd->add_option("--device", args->device, "cpu, cuda or cuda:N (same output)")->capture_default_str();
  cmd->add_option("--threads", args->threads, "CPU threads (0 = all)")->capture_default_str();
  cmd->add_flag("--overwrite", args->overwrite, "write into a non-empty output folder");
  cmd->callback([args] { run_quantize(*args); });
}

}  // namespace mv::cli
