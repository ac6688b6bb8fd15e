#include "server/openai.hpp"

#include <array>
#include <cmath>

#include "core/error.hpp"
#include "core/file.hpp"

namespace mv::server {

namespace {

int b64_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+' || c == '-') return 62;
  if (c == '/' || c == '_') return 63;
  return -1;
}

const nlohmann::json* field(const nlohmann::json& obj, const char* name) {
  auto it = obj.find(name);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

double number_field(const nlohmann::json& body, const char* name, double lo, double hi) {
  const auto* v = field(body, name);
  if (!v->is_number()) fail(Errc::kInvalidInput, "'{}' must be a number", name);
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    fail(Errc::kInvalidInput, "'{}' must be in [{}, {}]", name, lo, hi);
  return x;
}

ImageRGB8 decode_image_bytes(std::string_view bytes, const std::string& where, const ChatLimits& limits) {
  if (bytes.size() > limits.max_image_bytes)
    fail(Errc::kTooLarge, "{}: image of {} bytes is over the limit of {} bytes", where, bytes.size(),
         limits.max_image_bytes);
  std::span<const std::uint8_t> data(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
  if (sniff_image_format(data.first(std::min<std::size_t>(data.size(), 16))) == ImageFormat::kUnknown)
    fail(Errc::kUnsupported, "{}: not a PNG, JPEG, TIFF, WebP, BMP or PDF image", where);
  auto pages = decode_image_pages(data, where, limits.image_limits);
  if (pages.empty()) fail(Errc::kInvalidInput, "{}: the image has no pages", where);
  return std::move(pages.front());
}

ImageRGB8 load_image_url(const std::string& url, const std::string& where, const ChatLimits& limits) {
  if (url.rfind("data:", 0) == 0) {
    const auto comma = url.find(',');
    if (comma == std::string::npos) fail(Errc::kInvalidInput, "{}: malformed data: URL (no comma)", where);
    const std::string_view meta(url.data() + 5, comma - 5);
    if (meta.size() < 7 || meta.substr(meta.size() - 7) != ";base64")
      fail(Errc::kInvalidInput, "{}: data: URLs must be base64 (data:image/png;base64,...)", where);
    return decode_image_bytes(base64_decode(std::string_view(url).substr(comma + 1)), where, limits);
  }
  if (url.rfind("http://", 0) == 0 || url.rfind("https://", 0) == 0)
    fail(Errc::kUnsupported, "{}: remote image URLs are not fetched; send the image as a data: URL", where);
  if (!limits.local_files_root)
    fail(Errc::kUnsupported,
         "{}: local file images are disabled (start the server with --allow-local-files DIR)", where);
  std::string path = url.rfind("file://", 0) == 0 ? url.substr(7) : url;
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path root = fs::weakly_canonical(*limits.local_files_root, ec);
  const fs::path p = fs::weakly_canonical(root / fs::path(path), ec);
  const auto rel = p.lexically_relative(root);
  if (ec || rel.empty() || *rel.begin() == "..")
    fail(Errc::kInvalidInput, "{}: the file is outside the allowed folder", where);
  const std::string bytes = read_file(p);
  return decode_image_bytes(bytes, where, limits);
}

ChatMessage parse_message(const nlohmann::json& m, std::size_t index, std::vector<ImageRGB8>& images,
                          const ChatLimits& limits) {
  const std::string where = fmt::format("messages[{}]", index);
  if (!m.is_object()) fail(Errc::kInvalidInput, "{} must be an object", where);
  const auto* role = field(m, "role");
  if (!role || !role->is_string()) fail(Errc::kInvalidInput, "{}.role is missing", where);
  ChatMessage msg;
  msg.role = role->get<std::string>();
  if (msg.role == "developer") msg.role = "system";
  if (msg.role != "system" && msg.role != "user" && msg.role != "assistant")
    fail(Errc::kInvalidInput, "{}.role must be system, user or assistant", where);
  const auto* content = field(m, "content");
  if (!content) fail(Errc::kInvalidInput, "{}.content is missing", where);
  if (content->is_string()) {
    msg.parts.push_back({ChatPart::Kind::kText, content->get<std::string>()});
    return msg;
  }
  if (!content->is_array())
    fail(Errc::kInvalidInput, "{}.content must be a string or an array of parts", where);
  for (std::size_t k = 0; k < content->size(); ++k) {
    const auto& part = (*content)[k];
    const std::string pw = fmt::format("{}.content[{}]", where, k);
    const auto* type = part.is_object() ? field(part, "type") : nullptr;
    if (!type || !type->is_string()) fail(Errc::kInvalidInput, "{}.type is missing", pw);
    const auto t = type->get<std::string>();
    if (t == "text") {
      const auto* text = field(part, "text");
      if (!text || !text->is_string()) fail(Errc::kInvalidInput, "{}.text must be a string", pw);
      msg.parts.push_back({ChatPart::Kind::kText, text->get<std::string>()});
    } else if (t == "image_url") {
      if (msg.role != "user") fail(Errc::kInvalidInput, "{}: images are only accepted in user messages", pw);
      const auto* iu = field(part, "image_url");
      std::string url;
      if (iu && iu->is_string())
        url = iu->get<std::string>();
      else if (iu && iu->is_object() && field(*iu, "url") && (*iu)["url"].is_string())
        url = (*iu)["url"];
      else
        fail(Errc::kInvalidInput, "{}.image_url.url must be a string", pw);
      if (static_cast<int>(images.size()) >= limits.max_images)
        fail(Errc::kTooLarge, "{}: more than {} images in one request", pw, limits.max_images);
      images.push_back(load_image_url(url, pw + ".image_url", limits));
      msg.parts.push_back({ChatPart::Kind::kImage, {}});
    } else {
      fail(Errc::kUnsupported, "{}: part type '{}' is not supported (text, image_url)", pw, t);
    }
  }
  return msg;
}

}  // namespace

std::string base64_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size() / 4 * 3 + 3);
  std::uint32_t acc = 0;
  int bits = 0;
  bool padding = false;
  for (unsigned char c : text) {
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    if (c == '=') {
      padding = true;
      continue;
    }
    const int v = b64_value(c);
    if (v < 0 || padding) fail(Errc::kInvalidInput, "invalid base64 data");
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  if (bits >= 6) fail(Errc::kInvalidInput, "invalid base64 data (truncated)");
  return out;
}

std::string base64_encode(std::string_view bytes) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const std::uint32_t v =
        (std::uint8_t(bytes[i]) << 16) | (std::uint8_t(bytes[i + 1]) << 8) | std::uint8_t(bytes[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out.push_back(kAlphabet[(v >> s) & 63]);
  }
  if (i < bytes.size()) {
    std::uint32_t v = std::uint8_t(bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= std::uint8_t(bytes[i + 1]) << 8;
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(i + 1 < bytes.size() ? kAlphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

const char* const kJsonObjectInstruction =
    "Respond with a single valid JSON object and nothing else: no prose, no code fences.";

std::optional<nlohmann::json> find_json_object(std::string_view text) {
  auto try_parse = [](std::string_view s) -> std::optional<nlohmann::json> {
    auto j = nlohmann::json::parse(s.begin(), s.end(), nullptr, false);
    if (j.is_discarded() || !j.is_object()) return std::nullopt;
    return j;
  };
  if (auto j = try_parse(text)) return j;
  const auto fence = text.find("```");
  if (fence != std::string_view::npos) {
    auto body_start = text.find('\n', fence);
    const auto end = body_start == std::string_view::npos ? body_start : text.find("```", body_start);
    if (end != std::string_view::npos) return try_parse(text.substr(body_start + 1, end - body_start - 1));
  }
  return std::nullopt;
}

ChatRequest parse_chat_request(const nlohmann::json& body, const ChatLimits& limits) {
  if (!body.is_object()) fail(Errc::kInvalidInput, "the request body must be a JSON object");
  ChatRequest req;
  if (const auto* m = field(body, "model"); m && m->is_string()) req.model = m->get<std::string>();
  const auto* messages = field(body, "messages");
  if (!messages || !messages->is_array() || messages->empty())
    fail(Errc::kInvalidInput, "'messages' must be a non-empty array");
  auto& g = req.generation;
  for (std::size_t i = 0; i < messages->size(); ++i)
    g.messages.push_back(parse_message((*messages)[i], i, g.images, limits));
  if (g.messages.back().role == "assistant")
    fail(Errc::kInvalidInput,
         "the last message must not be from the assistant (continuations are not supported)");

  g.max_tokens = limits.default_max_tokens;
  for (const char* name : {"max_tokens", "max_completion_tokens"}) {
    if (const auto* v = field(body, name)) {
      if (!v->is_number_integer() || v->get<std::int64_t>() < 1 ||
          v->get<std::int64_t>() > limits.max_tokens_limit)
        fail(Errc::kInvalidInput, "'{}' must be an integer in [1, {}]", name, limits.max_tokens_limit);
      g.max_tokens = v->get<int>();
    }
  }
  // OpenAI's defaults: temperature 1 and top_p 1 (sampling); temperature 0 means greedy.
  double temperature = field(body, "temperature") ? number_field(body, "temperature", 0.0, 2.0) : 1.0;
  double top_p = field(body, "top_p") ? number_field(body, "top_p", 0.0, 1.0) : 1.0;
  if (top_p <= 0.0) fail(Errc::kInvalidInput, "'top_p' must be greater than 0");
  g.sampling.do_sample = temperature > 0.0;
  g.sampling.temperature = temperature > 0.0 ? static_cast<float>(temperature) : 1.0f;
  g.sampling.top_p = static_cast<float>(top_p);
  if (const auto* seed = field(body, "seed")) {
    if (!seed->is_number_integer()) fail(Errc::kInvalidInput, "'seed' must be an integer");
    g.sampling.seed = static_cast<std::uint64_t>(seed->get<std::int64_t>());
  }
  if (const auto* n = field(body, "n"); n && !(n->is_number_integer() && n->get<int>() == 1))
    fail(Errc::kUnsupported, "'n' must be 1 (one choice per request)");
  if (const auto* stop = field(body, "stop")) {
    if (stop->is_string()) {
      g.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array() && stop->size() <= 4) {
      for (const auto& s : *stop) {
        if (!s.is_string()) fail(Errc::kInvalidInput, "'stop' must be a string or up to 4 strings");
        g.stop.push_back(s.get<std::string>());
      }
    } else {
      fail(Errc::kInvalidInput, "'stop' must be a string or up to 4 strings");
    }
  }
  if (const auto* s = field(body, "stream")) {
    if (!s->is_boolean()) fail(Errc::kInvalidInput, "'stream' must be true or false");
    req.stream = s->get<bool>();
  }
  if (const auto* so = field(body, "stream_options"); so && so->is_object())
    if (const auto* iu = field(*so, "include_usage"); iu && iu->is_boolean())
      req.include_usage = iu->get<bool>();
  if (const auto* rf = field(body, "response_format")) {
    const auto* type = rf->is_object() ? field(*rf, "type") : nullptr;
    if (!type || !type->is_string()) fail(Errc::kInvalidInput, "'response_format.type' is missing");
    const auto t = type->get<std::string>();
    if (t == "json_object")
      req.json_object = true;
    else if (t != "text")
      fail(Errc::kUnsupported, "response_format type '{}' is not supported (text, json_object)", t);
  }
  if (req.json_object) {
    // The instruction joins the system message (added when the chat has none).
    if (g.messages.front().role == "system") {
      g.messages.front().parts.push_back({ChatPart::Kind::kText, std::string("\n") + kJsonObjectInstruction});
    } else {
      g.messages.insert(g.messages.begin(), ChatMessage::text("system", std::string(kDefaultSystemPrompt) +
                                                                            " " + kJsonObjectInstruction));
    }
  }
  return req;
}

nlohmann::json usage_json(const GenerationOutput& out) {
  return {{"prompt_tokens", out.prompt_tokens},
          {"completion_tokens", out.completion_tokens},
          {"total_tokens", out.prompt_tokens + out.completion_tokens}};
}

nlohmann::json chat_completion_json(const std::string& id, const std::string& model, std::int64_t created,
                                    const GenerationOutput& out, const std::string& content) {
  return {{"id", id},
          {"object", "chat.completion"},
          {"created", created},
          {"model", model},
          {"choices", nlohmann::json::array({{{"index", 0},
                                              {"message", {{"role", "assistant"}, {"content", content}}},
                                              {"finish_reason", out.finish_reason}}})},
          {"usage", usage_json(out)}};
}

nlohmann::json chat_chunk_json(const std::string& id, const std::string& model, std::int64_t created,
                               const nlohmann::json& delta, const nlohmann::json& finish_reason) {
  return {{"id", id},
          {"object", "chat.completion.chunk"},
          {"created", created},
          {"model", model},
          {"choices",
           nlohmann::json::array({{{"index", 0}, {"delta", delta}, {"finish_reason", finish_reason}}})}};
}

}  // namespace mv::server
