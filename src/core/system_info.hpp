// What this machine is: OS, CPU, SIMD, memory, GPUs and the versions of the libraries linked.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mv {

struct GpuInfo {
  int index = 0;
  std::string name;
  int cc_major = 0;
  int cc_minor = 0;
  int multiprocessors = 0;
  std::uint64_t vram_total = 0;
  std::uint64_t vram_free = 0;
  bool kernel_ok = false;  // a tiny test kernel ran and returned the right answer
};

struct GpuReport {
  bool built_with_cuda = false;
  int driver_version = 0;   // e.g. 13000
  int runtime_version = 0;
  std::string cublas_version;
  std::vector<GpuInfo> gpus;
  std::string error;  // why no GPU is usable, when none is
};

GpuReport query_gpus();  // never throws; works with no GPU and in CPU-only builds

struct CpuInfo {
  std::string arch;
  std::string model;
  int logical_cores = 0;
  std::vector<std::string> simd;  // sse4.2, avx, avx2, fma, f16c, avx512f, ... / neon, asimd, sve
};
CpuInfo query_cpu();

nlohmann::json library_versions();
nlohmann::json system_report();  // everything above as one JSON object

std::string cuda_version_string(int v);  // 12040 -> "12.4"

}  // namespace mv
