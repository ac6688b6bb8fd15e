// Text generation over a loaded Qwen2.5-VL model: chat prompt + images → preprocess → vision tower →
// prefill → sampled decode loop, with UTF-8-safe streaming of the text and timings.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "io/image.hpp"
#include "model/qwen25vl/model.hpp"
#include "model/qwen25vl/sampler.hpp"
#include "text/chat_template.hpp"
#include "text/tokenizer.hpp"
#include "vision/preprocess.hpp"

namespace mv::qwen25vl {

// Incremental UTF-8 repair for streamed token bytes: complete, valid sequences pass through; a sequence
// cut at the end of the bytes seen so far is held back until more arrive; invalid bytes become U+FFFD,
// one per maximal ill-formed subpart (what Python's bytes.decode("utf-8", errors="replace") does).
class Utf8Stream {
 public:
  // Appends the text that is complete after `bytes` to `out`.
  void push(std::string_view bytes, std::string& out);
  // End of stream: a held-back incomplete sequence becomes U+FFFD.
  void finish(std::string& out);
  bool has_pending() const { return !pending_.empty(); }

 private:
  void drain(std::string& out, bool final);
  std::string pending_;
};

struct GenerateOptions {
  int max_new_tokens = 256;
  SamplingParams sampling;
  std::vector<std::int32_t> stop_ids{151645, 151643};  // <|im_end|>, <|endoftext|>
  bool ignore_eos = false;                             // run to max_new_tokens
  bool keep_prompt_logits = false;                     // fill GenerateResult::prompt_logits
  // Called with each new piece of text (valid UTF-8, special tokens skipped) as tokens are chosen.
  std::function<void(std::string_view)> on_text;
};

struct GenerateTimings {
  double load_ms = 0;        // set by the caller that loaded the model
  double preprocess_ms = 0;  // prompt encoding + image preprocessing
  double vision_ms = 0;      // vision tower
  double prefill_ms = 0;     // language model over the prompt
  double ttft_ms = 0;        // start of generate() to the first token chosen
  double decode_ms = 0;      // every later token
  std::int64_t prompt_tokens = 0;
  std::int64_t image_tokens = 0;
  std::int64_t generated_tokens = 0;
  std::int64_t decode_steps = 0;  // model.decode calls
  std::uint64_t peak_rss_bytes = 0;
  double prefill_tokens_per_s() const;
  double decode_tokens_per_s() const;
  nlohmann::json to_json() const;
};

struct GenerateResult {
  std::vector<std::int32_t> prompt_ids;
  std::vector<std::int32_t> generated_ids;  // includes the stop token when one ended the text
  std::string text;                         // generated text, special tokens skipped
  std::string finish_reason;                // "stop" | "length"
  std::vector<std::array<std::int64_t, 3>> image_grids_thw;
  std::vector<float> prompt_logits;  // raw logits of the last prompt position, when asked for
  GenerateTimings timings;
};

// Renders and encodes the chat (image parts in `messages` take `images` in order), preprocesses the
// images, runs the model and decodes. Throws kInvalidInput when image parts and images disagree.
GenerateResult generate(Model& model, const Tokenizer& tokenizer, const std::vector<ChatMessage>& messages,
                        const std::vector<ImageRGB8>& images, const PreprocessConfig& preprocess,
                        const GenerateOptions& options);

// The same from prompt ids and preprocessed images (the image pads in `prompt_ids` must match them).
GenerateResult generate_from_ids(Model& model, const Tokenizer& tokenizer,
                                 std::vector<std::int32_t> prompt_ids, const std::vector<PixelValues>& images,
                                 const GenerateOptions& options);

// Peak resident set size of this process so far, in bytes (0 when the platform does not say).
std::uint64_t peak_rss_bytes();

}  // namespace mv::qwen25vl
