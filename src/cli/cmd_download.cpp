// medvision download REPO_ID --out DIR [--revision REV] [--endpoint URL] [--include GLOB ...] [--json]
#include <cstdio>
#include <memory>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/progress.hpp"
#include "io/download.hpp"

namespace mv::cli {

namespace {

struct DownloadArgs {
  DownloadOptions options;
  std::string out;
  bool json = false;
};

void run_download(DownloadArgs& args) {
  args.options.out_dir = args.out;
  const DownloadResult result = download_snapshot(args.options);
  if (args.json) {
    print_json(to_json(result));
    return;
  }
  std::size_t downloaded = 0, resumed = 0, skipped = 0;
  for (const auto& f : result.files) {
    switch (f.status) {
      case FileStatus::kDownloaded:
        ++downloaded;
        break;
      case FileStatus::kResumed:
        ++resumed;
        break;
      case FileStatus::kSkipped:
        ++skipped;
        break;
    }
  }
  std::printf(
      "%s@%s: %zu files (%zu downloaded, %zu resumed, %zu already complete), %s received in %.1fs -> %s\n",
      result.repo_id.c_str(), result.revision.c_str(), result.files.size(), downloaded, resumed, skipped,
      format_bytes(static_cast<double>(result.bytes)).c_str(), result.seconds, args.out.c_str());
}

}  // namespace

void add_download_command(CLI::App& app) {
  auto args = std::make_shared<DownloadArgs>();
  auto* cmd =
      app.add_subcommand("download", "Download a model repository snapshot from the Hugging Face hub");
  cmd->footer(
      "Environment: HF_TOKEN (access token for private or gated repositories), HF_ENDPOINT (hub URL, "
      "overridden "
      "by --endpoint).\nFiles are verified (size; sha256 for LFS files) and a partial '<file>.incomplete' is "
      "resumed.");
  cmd->add_option("repo_id", args->options.repo_id, "repository id, e.g. Qwen/Qwen2.5-VL-7B-Instruct")
      ->required();
  cmd->add_option("-o,--out", args->out, "output folder")->required();
  cmd->add_option("-r,--revision", args->options.revision, "branch, tag or commit")->capture_default_str();
  cmd->add_option("--endpoint", args->options.endpoint,
                  "hub URL (default: $HF_ENDPOINT or https://huggingface.co)");
  cmd->add_option("--include", args->options.include,
                  "only files matching this glob ('*' also matches '/'; 'dir/' means everything under dir); "
                  "repeatable")
      ->allow_extra_args(false);
  cmd->add_flag("--json", args->json, "print the result as JSON");
  cmd->callback([args] { run_download(*args); });
}

}  // namespace mv::cli
