// The Qwen2.5-VL processor chat template (spec §6), rendered byte for byte:
//   [<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n]   when the first message is not system
//   <|im_start|>{role}\n{parts}<|im_end|>\n                          for every message
//   <|im_start|>assistant\n                                          with add_generation_prompt
// Parts are concatenated without separators; an image renders as <|vision_start|><|image_pad|><|vision_end|>.
#include "text/chat_template.hpp"

#include "core/error.hpp"

namespace mv {

namespace {

constexpr std::string_view kImStart = "<|im_start|>";
constexpr std::string_view kImEnd = "<|im_end|>";
constexpr std::string_view kImagePad = "<|image_pad|>";
constexpr std::string_view kImage = "<|vision_start|><|image_pad|><|vision_end|>";

}  // namespace

ChatMessage ChatMessage::text(std::string role, std::string content) {
  ChatMessage m;
  m.role = std::move(role);
  m.parts.push_back(ChatPart{ChatPart::Kind::kText, std::move(content)});
  return m;
}

std::string render_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  std::string out;
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (i == 0 && m.role != "system") {
      out += kImStart;
      out += "system\n";
      out += kDefaultSystemPrompt;
      out += kImEnd;
      out += '\n';
    }
    out += kImStart;
    out += m.role;
    out += '\n';
    for (const ChatPart& part : m.parts) {
      if (part.kind == ChatPart::Kind::kImage) {
        out += kImage;
      } else {
        out += part.text;
      }
    }
    out += kImEnd;
    out += '\n';
  }
  if (add_generation_prompt) {
    out += kImStart;
    out += "assistant\n";
  }
  return out;
}

std::vector<std::int32_t> encode_chat(const Tokenizer& tokenizer, const std::vector<ChatMessage>& messages,
                                      const std::vector<std::int64_t>& image_tokens,
                                      bool add_generation_prompt) {
  std::size_t images = 0;
  for (const ChatMessage& m : messages) {
    for (const ChatPart& part : m.parts) images += part.kind == ChatPart::Kind::kImage ? 1 : 0;
  }
  if (images != image_tokens.size()) {
    fail(Errc::kInvalidInput, "chat prompt has {} image part(s) but {} image token count(s) were given",
         images, image_tokens.size());
  }
  for (std::size_t k = 0; k < image_tokens.size(); ++k) {
    if (image_tokens[k] <= 0 || image_tokens[k] > (1 << 24)) {
      fail(Errc::kInvalidInput, "chat prompt: image {} has an invalid token count {}", k, image_tokens[k]);
    }
  }
  const std::int32_t pad = tokenizer.token_id(kImagePad);
  if (images > 0 && pad < 0)
    fail(Errc::kInvalidInput, "chat prompt: the tokenizer has no {} token", kImagePad);

  // Like the Hugging Face processor, the rendered prompt is tokenized as a whole (so special-token text
  // inside a message is recognised) and each <|image_pad|> is then repeated. A pad that did not come from
  // an image part (text containing the literal token) is refused rather than silently misaligned.
  const std::vector<std::int32_t> ids = tokenizer.encode(render_chat(messages, add_generation_prompt));
  std::size_t pads = 0;
  std::int64_t extra = 0;
  for (const std::int32_t id : ids) {
    if (id == pad) {
      if (pads < image_tokens.size()) extra += image_tokens[pads] - 1;
      ++pads;
    }
  }
  if (pads != images) {
    fail(Errc::kInvalidInput,
         "chat prompt: the message text contains {} literal {} token(s); remove them from the text",
         pads - images, kImagePad);
  }
  std::vector<std::int32_t> out;
  out.reserve(ids.size() + static_cast<std::size_t>(extra));
  std::size_t k = 0;
  for (const std::int32_t id : ids) {
    if (id == pad) {
      out.insert(out.end(), static_cast<std::size_t>(image_tokens[k]), pad);
      ++k;
    } else {
      out.push_back(id);
    }
  }
  return out;
}

}  // namespace mv
