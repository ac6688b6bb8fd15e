// medvision doctor: what this machine has, for bug reports and benchmark files.
#include <filesystem>
#include <iostream>

#include <fmt/format.h>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "core/progress.hpp"
#include "core/system_info.hpp"

namespace mv::cli {

namespace {

void print_text(const nlohmann::json& r) {
  std::cout << fmt::format("OS:        {} ({})\n", r["os"]["name"].get<std::string>(),
                           r["os"]["kernel"].get<std::string>());
  const auto& cpu = r["cpu"];
  std::string simd;
  for (const auto& s : cpu["simd"]) simd += (simd.empty() ? "" : " ") + s.get<std::string>();
  std::cout << fmt::format("CPU:       {} ({}, {} logical cores)\n", cpu["model"].get<std::string>(),
                           cpu["arch"].get<std::string>(), cpu["logical_cores"].get<int>());
  std::cout << fmt::format("SIMD:      {}\n", simd.empty() ? "none detected" : simd);
  std::cout << fmt::format("Memory:    {} total, {} available\n",
                           format_bytes(r["memory"]["total_bytes"].get<double>()),
                           format_bytes(r["memory"]["available_bytes"].get<double>()));
  const auto& cuda = r["cuda"];
  if (!cuda["built_with_cuda"].get<bool>()) {
    std::cout << "CUDA:      not built\n";
  } else {
    auto or_none = [](const nlohmann::json& v) {
      const auto s = v.get<std::string>();
      return s.empty() ? std::string("none") : s;
    };
    std::cout << fmt::format("CUDA:      built; runtime {}, driver {}, cuBLAS {}\n", or_none(cuda["runtime_version"]),
                             or_none(cuda["driver_version"]), or_none(cuda["cublas_version"]));
  }
  for (const auto& g : cuda["gpus"]) {
    std::cout << fmt::format("GPU {}:     {} (compute {}, {} SMs), VRAM {} total, {} free, test kernel {}\n",
                             g["index"].get<int>(), g["name"].get<std::string>(),
                             g["compute_capability"].get<std::string>(), g["multiprocessors"].get<int>(),
                             format_bytes(g["vram_total_bytes"].get<double>()),
                             format_bytes(g["vram_free_bytes"].get<double>()), g["kernel_test"].get<std::string>());
  }
  if (cuda.contains("error")) std::cout << fmt::format("GPU:       none ({})\n", cuda["error"].get<std::string>());
  std::cout << "Libraries:\n";
  for (const auto& [name, version] : r["libraries"].items()) {
    std::string v = version.is_string() ? version.get<std::string>() : version.dump();
    std::cout << fmt::format("  {:<16} {}\n", name, v);
  }
}

}  // namespace

void add_doctor_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("doctor", "Report the OS, CPU, memory, GPUs and library versions");
  struct Opts {
    bool json = false;
    bool write = false;
    std::string path = "benchmarks/environment.json";
  };
  auto opts = std::make_shared<Opts>();
  cmd->add_flag("--json", opts->json, "print JSON");
  cmd->add_flag("--write", opts->write, "also write the report to --path");
  cmd->add_option("--path", opts->path, "where --write puts the report")->capture_default_str();
  cmd->callback([opts] {
    const nlohmann::json report = system_report();
    if (opts->json) {
      print_json(report);
    } else {
      print_text(report);
    }
    if (opts->write) {
      write_file(opts->path, report.dump(2) + "\n");
      if (!opts->json) std::cout << "wrote " << opts->path << "\n";
    }
  });
}

}  // namespace mv::cli
