// The Qwen2.5-VL chat template (processor template, spec §6) and prompt encoding with image
// placeholders expanded to the merged-token count of each image.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "text/tokenizer.hpp"

namespace mv {

struct ChatPart {
  enum class Kind { kText, kImage };
  Kind kind = Kind::kText;
  std::string text;  // for kText
};

struct ChatMessage {
  std::string role;  // system | user | assistant
  std::vector<ChatPart> parts;
  static ChatMessage text(std::string role, std::string content);
};

inline constexpr const char* kDefaultSystemPrompt = "You are a helpful assistant.";

// Renders the template. A default system message is added when the first message is not "system".
// Each image part renders as <|vision_start|><|image_pad|><|vision_end|>.
std::string render_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt = true);

// Renders and encodes; the k-th <|image_pad|> is repeated image_tokens[k] times (grid_t*gh*gw/4).
// Throws kInvalidInput when the number of image parts and image_tokens differ.
std::vector<std::int32_t> encode_chat(const Tokenizer& tokenizer, const std::vector<ChatMessage>& messages,
                                      const std::vector<std::int64_t>& image_tokens,
                                      bool add_generation_prompt = true);

}  // namespace mv
