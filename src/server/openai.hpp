// The OpenAI chat-completions dialect: request parsing (text and image_url parts, data: URLs, sampling
// options, stop strings, response_format) and the response / stream-chunk shapes.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/image.hpp"
#include "server/generation.hpp"

namespace mv::server {

struct ChatLimits {
  int max_tokens_limit = 4096;   // largest max_tokens accepted
  int default_max_tokens = 512;  // when the request gives none
  int max_images = 8;            // image parts per request
  std::uint64_t max_image_bytes = 20ull << 20;
  ImageLimits image_limits;
  // file paths / file:// URLs are read only when this is set, and only below it.
  std::optional<std::filesystem::path> local_files_root;
};

struct ChatRequest {
  GenerationRequest generation;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool json_object = false;    // response_format {type: json_object}
  std::string model;           // as the client named it (informational)
};

// Throws mv::Error(kInvalidInput) with a message naming the field (e.g. "messages[1].content[0].image_url"),
// kUnsupported for remote URLs and unsupported parts, kTooLarge over the limits.
ChatRequest parse_chat_request(const nlohmann::json& body, const ChatLimits& limits);

// RFC 4648 base64 (standard alphabet; whitespace ignored; padding optional). Throws kInvalidInput.
std::string base64_decode(std::string_view text);
std::string base64_encode(std::string_view bytes);

// The instruction added for response_format json_object, and the check of the answer: returns the JSON
// object found in `text` (the whole text, or the text inside a ```json fence), or nullopt.
extern const char* const kJsonObjectInstruction;
std::optional<nlohmann::json> find_json_object(std::string_view text);

nlohmann::json chat_completion_json(const std::string& id, const std::string& model, std::int64_t created,
                                    const GenerationOutput& out, const std::string& content);
nlohmann::json chat_chunk_json(const std::string& id, const std::string& model, std::int64_t created,
                               const nlohmann::json& delta, const nlohmann::json& finish_reason);
nlohmann::json usage_json(const GenerationOutput& out);

}  // namespace mv::server
