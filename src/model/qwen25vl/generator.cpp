#include "model/qwen25vl/generator.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>

#include "core/error.hpp"
#include "core/log.hpp"

namespace mv::qwen25vl {

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the UTF-8 sequence a lead byte starts and the allowed range of its second byte
// (Unicode Table 3-7); 0 for bytes that cannot start a sequence.
struct Lead {
  int length;
  unsigned char lo, hi;
};
Lead lead_of(unsigned char b) {
  if (b < 0x80) return {1, 0, 0};
  if (b >= 0xC2 && b <= 0xDF) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b >= 0xE1 && b <= 0xEF) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b >= 0xF1 && b <= 0xF3) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

}  // namespace

void Utf8Stream::drain(std::string& out, bool final) {
  const std::size_t n = pending_.size();
  std::size_t i = 0;
  while (i < n) {
    const auto b = static_cast<unsigned char>(pending_[i]);
    const Lead lead = lead_of(b);
    if (lead.length == 1) {
      out.push_back(static_cast<char>(b));
      ++i;
      continue;
    }
    if (lead.length == 0) {
      out.append(kReplacement);
      ++i;
      continue;
    }
    // Count the continuation bytes that fit the sequence.
    int good = 1;
    bool broken = false;
    while (good < lead.length) {
      if (i + static_cast<std::size_t>(good) >= n) break;  // cut short by the end of the bytes seen
      const auto c = static_cast<unsigned char>(pending_[i + static_cast<std::size_t>(good)]);
      const unsigned char lo = good == 1 ? lead.lo : 0x80, hi = good == 1 ? lead.hi : 0xBF;
      if (c < lo || c > hi) {
        broken = true;
        break;
      }
      ++good;
    }
    if (good == lead.length) {
      out.append(pending_, i, static_cast<std::size_t>(good));
      i += static_cast<std::size_t>(good);
    } else if (broken || final) {
      out.append(kReplacement);  // one U+FFFD for the maximal subpart
      i += static_cast<std::size_t>(good);
    } else {
      break;  // incomplete: wait for more bytes
    }
  }
  pending_.erase(0, i);
}

void Utf8Stream::push(std::string_view bytes, std::string& out) {
  pending_.append(bytes);
  drain(out, false);
}

void Utf8Stream::finish(std::string& out) {
  drain(out, true);
  pending_.clear();
}

double GenerateTimings::prefill_tokens_per_s() const {
  return prefill_ms > 0 ? static_cast<double>(prompt_tokens) * 1000.0 / prefill_ms : 0.0;
}

double GenerateTimings::decode_tokens_per_s() const {
  return decode_ms > 0 ? static_cast<double>(decode_steps) * 1000.0 / decode_ms : 0.0;
}

nlohmann::json GenerateTimings::to_json() const {
  return {{"load_ms", load_ms},
          {"preprocess_ms", preprocess_ms},
          {"vision_ms", vision_ms},
          {"prefill_ms", prefill_ms},
          {"ttft_ms", ttft_ms},
          {"decode_ms", decode_ms},
          {"prompt_tokens", prompt_tokens},
          {"image_tokens", image_tokens},
          {"generated_tokens", generated_tokens},
          {"decode_steps", decode_steps},
          {"prefill_tokens_per_s", prefill_tokens_per_s()},
          {"decode_tokens_per_s", decode_tokens_per_s()},
          {"peak_rss_bytes", peak_rss_bytes}};
}

std::uint64_t peak_rss_bytes() {
  rusage usage{};
  if (getrusage(RUSAGE_SELF, &usage) != 0) return 0;
#if defined(__APPLE__)
  return static_cast<std::uint64_t>(usage.ru_maxrss);  // bytes
#else
  return static_cast<std::uint64_t>(usage.ru_maxrss) * 1024u;  // KiB
#endif
}

namespace {

GenerateResult run(Model& model, const Tokenizer& tokenizer, std::vector<std::int32_t> prompt_ids,
                   const std::vector<PixelValues>& images, const GenerateOptions& options,
                   Clock::time_point t0, double preprocess_ms) {
  const ModelConfig& config = model.config();
  const std::size_t vocab = static_cast<std::size_t>(config.text.vocab_size);
  if (options.max_new_tokens < 1)
    fail(Errc::kUsage, "max_new_tokens must be >= 1, got {}", options.max_new_tokens);
  if (prompt_ids.empty()) fail(Errc::kInvalidInput, "the prompt is empty");

  GenerateResult result;
  result.timings.preprocess_ms = preprocess_ms;
  result.timings.prompt_tokens = static_cast<std::int64_t>(prompt_ids.size());
  const int merge = config.vision.spatial_merge_size;
  for (const auto& px : images) {
    result.image_grids_thw.push_back(px.grid_thw);
    result.timings.image_tokens += px.merged_tokens(merge);
  }
  const auto pads = std::count(prompt_ids.begin(), prompt_ids.end(), config.image_token_id);
  if (pads != result.timings.image_tokens)
    fail(Errc::kInvalidInput, "the prompt has {} image-pad tokens but the images give {} merged tokens", pads,
         result.timings.image_tokens);

  Sampler sampler(options.sampling, vocab);
  sampler.add_history(prompt_ids);
  std::vector<float> logits(vocab);
  auto session = model.new_session(static_cast<std::int64_t>(prompt_ids.size()) + options.max_new_tokens);

  auto t = Clock::now();
  std::unique_ptr<ImageFeatures> features;
  if (!images.empty()) {
    features = model.encode_images_resident(images);
    result.timings.vision_ms = ms_since(t);
  }
  t = Clock::now();
  if (features)
    model.prefill_with_features(*session, prompt_ids, result.image_grids_thw, *features, logits);
  else
    model.prefill_with_features(*session, prompt_ids, result.image_grids_thw, std::span<const float>(), logits);
  result.timings.prefill_ms = ms_since(t);
  if (options.keep_prompt_logits) result.prompt_logits = logits;
  spdlog::debug("generate: prompt {} tokens ({} image tokens), vision {:.1f} ms, prefill {:.1f} ms",
                prompt_ids.size(), result.timings.image_tokens, result.timings.vision_ms,
                result.timings.prefill_ms);

  // Buffers sized up front so the token loop itself does not allocate (text grows only past 8 bytes/token).
  result.generated_ids.reserve(static_cast<std::size_t>(options.max_new_tokens));
  result.text.reserve(static_cast<std::size_t>(options.max_new_tokens) * 8);
  std::string piece;
  piece.reserve(256);
  Utf8Stream utf8;
  result.finish_reason = "length";
  Clock::time_point decode_start;
  // Greedy without a repetition penalty needs no logits on the host when the engine picks on the device:
  // each step then returns the next token (the first one still comes from the prefill logits).
  const bool device_greedy =
      !options.sampling.do_sample && options.sampling.repetition_penalty == 1.0f && model.greedy_on_device();
  Session* const seq[1] = {session.get()};
  std::int32_t next = 0;
  for (int step = 0;; ++step) {
    std::int32_t token;
    if (device_greedy && step > 0) {
      token = next;
      sampler.add_history(token);
    } else {
      token = sampler.sample(logits);
    }
    result.generated_ids.push_back(token);
    if (step == 0) {
      result.timings.ttft_ms = ms_since(t0);
      decode_start = Clock::now();
    }
    const bool stop = !options.ignore_eos && std::find(options.stop_ids.begin(), options.stop_ids.end(),
                                                       token) != options.stop_ids.end();
    if (!stop && !tokenizer.is_special(token)) {
      piece.clear();
      utf8.push(tokenizer.token_bytes(token), piece);
      if (!piece.empty()) {
        result.text += piece;
        if (options.on_text) options.on_text(piece);
      }
    }
    if (stop) {
      result.finish_reason = "stop";
      break;
    }
    if (static_cast<int>(result.generated_ids.size()) >= options.max_new_tokens) break;
    if (device_greedy)
      model.decode_batch_greedy(seq, std::span<const std::int32_t>(&token, 1),
                                std::span<std::int32_t>(&next, 1));
    else
      model.decode(*session, token, logits);
    ++result.timings.decode_steps;
  }
  result.timings.decode_ms = ms_since(decode_start);
  piece.clear();
  utf8.finish(piece);
  if (!piece.empty()) {
    result.text += piece;
    if (options.on_text) options.on_text(piece);
  }
  result.timings.generated_tokens = static_cast<std::int64_t>(result.generated_ids.size());
  result.timings.peak_rss_bytes = peak_rss_bytes();
  result.prompt_ids = std::move(prompt_ids);
  spdlog::debug("generate: {} tokens ({}), decode {:.1f} ms, {:.2f} tok/s", result.generated_ids.size(),
                result.finish_reason, result.timings.decode_ms, result.timings.decode_tokens_per_s());
  return result;
}

}  // namespace

GenerateResult generate_from_ids(Model& model, const Tokenizer& tokenizer,
                                 std::vector<std::int32_t> prompt_ids, const std::vector<PixelValues>& images,
                                 const GenerateOptions& options) {
  return run(model, tokenizer, std::move(prompt_ids), images, options, Clock::now(), 0.0);
}

GenerateResult generate(Model& model, const Tokenizer& tokenizer, const std::vector<ChatMessage>& messages,
                        const std::vector<ImageRGB8>& images, const PreprocessConfig& preprocess,
                        const GenerateOptions& options) {
  const auto t0 = Clock::now();
  std::size_t image_parts = 0;
  for (const auto& m : messages)
    for (const auto& p : m.parts)
      if (p.kind == ChatPart::Kind::kImage) ++image_parts;
  if (image_parts != images.size())
    fail(Errc::kInvalidInput, "the messages have {} image parts but {} images were given", image_parts,
         images.size());
  std::vector<PixelValues> pixels;
  pixels.reserve(images.size());
  std::vector<std::int64_t> image_tokens;
  const int merge = model.config().vision.spatial_merge_size;
  for (const auto& image : images) {
    pixels.push_back(preprocess_image(image, preprocess));
    image_tokens.push_back(pixels.back().merged_tokens(merge));
  }
  std::vector<std::int32_t> ids = encode_chat(tokenizer, messages, image_tokens, true);
  return run(model, tokenizer, std::move(ids), pixels, options, t0, ms_since(t0));
}

}  // namespace mv::qwen25vl
