// medvision tokenize: text -> token ids (or ids -> text with --decode) with the Qwen tokenizer.
#include <cstdint>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "text/tokenizer.hpp"

namespace mv::cli {

namespace {

struct TokenizeArgs {
  std::string model_dir;
  std::string text_file;
  std::optional<std::string> text;
  std::optional<std::string> ids;
  bool decode = false;
  bool skip_special = false;
  bool json = false;
};

Tokenizer open_tokenizer(const TokenizeArgs& a) {
  if (!a.model_dir.empty()) return Tokenizer::from_model_dir(a.model_dir);
  return Tokenizer::load(default_tokenizer_json());
}

std::vector<std::int32_t> parse_id_list(const std::string& text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(Errc::kInvalidInput, "{}: not valid JSON: {}", source, e.what());
  }
  // Accept a bare list or the {"ids": [...]} object that `tokenize --json` prints.
  if (j.is_object() && j.contains("ids")) j = j["ids"];
  if (!j.is_array()) fail(Errc::kInvalidInput, "{}: expected a JSON list of token ids", source);
  std::vector<std::int32_t> ids;
  ids.reserve(j.size());
  for (std::size_t i = 0; i < j.size(); ++i) {
    const auto& v = j[i];
    if (!v.is_number_integer()) {
      fail(Errc::kInvalidInput, "{}: element {} is not an integer token id", source, i);
    }
    const auto id = v.get<std::int64_t>();
    if (id < 0 || id > std::numeric_limits<std::int32_t>::max()) {
      fail(Errc::kInvalidInput, "{}: element {} ({}) is not a valid token id", source, i, id);
    }
    ids.push_back(static_cast<std::int32_t>(id));
  }
  return ids;
}

void run_tokenize(const TokenizeArgs& a) {
  const int inputs = (a.text_file.empty() ? 0 : 1) + (a.text ? 1 : 0) + (a.ids ? 1 : 0);
  if (inputs != 1) fail(Errc::kUsage, "tokenize: give exactly one of --text-file, --text or --ids");
  if (a.ids && !a.decode) fail(Errc::kUsage, "tokenize: --ids needs --decode");
  if (a.skip_special && !a.decode) fail(Errc::kUsage, "tokenize: --skip-special needs --decode");

  std::string input;
  std::string source;
  if (!a.text_file.empty()) {
    input = read_file(a.text_file);
    source = a.text_file;
  } else if (a.text) {
    input = *a.text;
    source = "--text";
  } else {
    input = *a.ids;
    source = "--ids";
  }

  const Tokenizer tok = open_tokenizer(a);
  if (a.decode) {
    const auto ids = parse_id_list(input, source);
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (static_cast<std::size_t>(ids[i]) >= tok.vocab_size() || tok.token_bytes(ids[i]).empty()) {
        fail(Errc::kInvalidInput, "{}: element {} ({}) is outside the vocabulary (0..{})", source, i, ids[i],
             tok.vocab_size() - 1);
      }
    }
    const std::string text = tok.decode(ids, a.skip_special);
    if (a.json) {
      print_json({{"text", text}});
    } else {
      std::cout << text;
      std::cout.flush();
    }
    return;
  }

  std::vector<std::int32_t> ids;
  try {
    ids = tok.encode(input);
  } catch (const Error& e) {
    fail(e.code(), "{}: {}", source, e.what());
  }
  if (a.json) {
    print_json({{"ids", ids}, {"n", ids.size()}});
  } else {
    std::string line;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (i) line += ' ';
      line += std::to_string(ids[i]);
    }
    std::cout << line << '\n' << ids.size() << " tokens\n";
    std::cout.flush();
  }
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  auto* cmd = app.add_subcommand("tokenize", "Encode text to Qwen token ids, or decode ids with --decode");
  cmd->add_option(
      "--model", args->model_dir,
      "model directory holding tokenizer.json (default: the cached tokenizer from scripts/setup.sh)");
  cmd->add_option("--text-file", args->text_file,
                  "file to encode as one string (nothing trimmed); with --decode, a JSON list of ids");
  cmd->add_option("--text", args->text, "text to encode (instead of --text-file)");
  cmd->add_option("--ids", args->ids, "with --decode: a JSON list of ids, e.g. '[151644, 872]'");
  cmd->add_flag("--decode", args->decode, "decode token ids to text");
  cmd->add_flag("--skip-special", args->skip_special, "with --decode: drop special tokens");
  cmd->add_flag("--json", args->json, "print JSON: {\"ids\": [...], \"n\": N} or {\"text\": \"...\"}");
  cmd->callback([args] { run_tokenize(*args); });
}

}  // namespace mv::cli
