// Device selection for Model::load (--device), and the CUDA entry points of a build without CUDA.
#include "core/error.hpp"
#include "model/qwen25vl/model.hpp"

namespace mv::qwen25vl {

int parse_device(const std::string& device) {
  int gpu = -2;
  if (device == "cpu") {
    gpu = -1;
  } else if (device == "auto") {
    gpu = cuda_available() ? 0 : -1;
  } else if (device == "cuda") {
    gpu = 0;
  } else if (device.rfind("cuda:", 0) == 0) {
    const std::string idx = device.substr(5);
    if (!idx.empty() && idx.size() < 4 && idx.find_first_not_of("0123456789") == std::string::npos)
      gpu = std::stoi(idx);
  }
  if (gpu == -2) fail(Errc::kUsage, "device '{}' is not one of cpu, cuda, cuda:N, auto", device);
#if !MEDVISION_HAS_CUDA
  if (gpu >= 0)
    fail(Errc::kUnsupported, "device '{}': this build has no CUDA engine (built without nvcc)", device);
#endif
  return gpu;
}

#if !MEDVISION_HAS_CUDA
bool cuda_available() { return false; }
std::unique_ptr<Model> load_cuda_model(const ModelConfig&, const Weights&, int) {
  fail(Errc::kUnsupported, "this build has no CUDA engine (built without nvcc)");
}
std::optional<GpuMemory> gpu_memory(const Model&) { return std::nullopt; }
void reset_gpu_peak(const Model&) {}
#endif

}  // namespace mv::qwen25vl
