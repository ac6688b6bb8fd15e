// Each subcommand lives in its own file and registers itself on the root app here.
// A command's callback throws mv::Error on failure; main() maps it to the exit code.
#pragma once
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

namespace mv::cli {

void add_doctor_command(CLI::App& app);
void add_download_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
void add_preprocess_command(CLI::App& app);
void add_info_command(CLI::App& app);
void add_synth_command(CLI::App& app);
void add_extract_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_debug_command(CLI::App& app);
void add_bench_tokenizer_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_serve_command(CLI::App& app);
void add_quantize_command(CLI::App& app);

// Prints JSON to stdout (pretty when stdout is a terminal), followed by a newline.
void print_json(const nlohmann::json& j);

}  // namespace mv::cli
