// Text generation for the server: a loaded Qwen2.5-VL chat model, OpenAI-style stop strings, and the
// continuous-batching scheduler through which every language-model request runs (chat, /analyze, and
// extraction with the VLM backend).
//
// BatchScheduler owns the model on one engine thread. Requests are prepared (chat template, image
// preprocessing) on the caller's thread, wait in a bounded admission queue, and join the running batch
// between decode steps: up to max_batch sequences share each Model::decode_batch step, each with its own
// sampler, stop rules and session (KV cache sized to its prompt + max_tokens). A sequence leaves the batch
// when it stops (end-of-text token, stop string, max_tokens) or is cancelled (its sink returns false or
// its cancellation check says so), and its slot goes to the next waiting request. docs/design/server.md
// describes the design.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "io/image.hpp"
#include "model/qwen25vl/model.hpp"
#include "model/qwen25vl/sampler.hpp"
#include "text/chat_template.hpp"
#include "text/tokenizer.hpp"
#include "vision/preprocess.hpp"

namespace mv::server {

class Metrics;

// A Qwen2.5-VL checkpoint with its tokenizer and image preprocessing, loaded once.
struct ChatModel {
  std::string id;  // the checkpoint folder's name (what /v1/models lists)
  std::filesystem::path dir;
  std::unique_ptr<qwen25vl::Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  PreprocessConfig preprocess;
  std::string device = "cpu";  // where the engine runs: cpu or cuda:N
  // device: cpu | cuda | cuda:N | auto (as qwen25vl::LoadOptions::device).
  // adapter: a PEFT LoRA adapter folder merged at load (empty: none).
  static std::unique_ptr<ChatModel> load(const std::filesystem::path& dir, int threads = 0,
                                         const std::string& device = "cpu",
                                         const std::filesystem::path& adapter = {});
};

struct GenerationRequest {
  std::vector<ChatMessage> messages;  // image parts take `images` in order
  std::vector<ImageRGB8> images;
  int max_tokens = 512;
  qwen25vl::SamplingParams sampling;
  std::vector<std::string> stop;                       // stop strings (not included in the text)
  std::vector<std::int32_t> stop_ids{151645, 151643};  // end-of-text tokens: <|im_end|>, <|endoftext|>
  // Polled by the engine before every step of this sequence (also while it waits to be admitted); true
  // cancels it (the client went away, the server is shutting down). May be empty.
  std::function<bool()> cancelled;
};

struct GenerationOutput {
  std::string text;
  std::string finish_reason;  // stop | length | cancelled
  std::int64_t prompt_tokens = 0;
  std::int64_t completion_tokens = 0;  // tokens chosen, the end-of-text token included
  double seconds = 0;                  // admission to the last token
  double decode_seconds = 0;           // first token to the last
};

// Receives text as it is produced (valid UTF-8, stop strings held back); returns false to cancel. Called on
// the engine thread: it must not block.
using TextSink = std::function<bool(std::string_view)>;

// Thrown by submit() when a request cannot be admitted: status 429 (queue full) or 503 (shutting down).
struct Rejected : std::runtime_error {
  Rejected(int status_, int retry_after_, std::string message)
      : std::runtime_error(std::move(message)), status(status_), retry_after(retry_after_) {}
  int status;
  int retry_after;  // seconds
};

class GenerationScheduler {
 public:
  virtual ~GenerationScheduler() = default;
  // Prepares the request and admits it, or throws: Rejected when full or closed, mv::Error for a bad request
  // (max_tokens, sampling values, images). The future holds the output or an error of the engine.
  virtual std::future<GenerationOutput> submit(GenerationRequest request, TextSink sink) = 0;
  virtual const ChatModel& model() const = 0;
  virtual int max_batch() const = 0;  // sequences that may share a decode step
  virtual int waiting() const = 0;    // admitted, not yet in the batch
  virtual int active() const = 0;     // in the batch (being prefilled or decoded)
  virtual int capacity() const = 0;   // waiting places
  // Refuses new work (503) and returns once every admitted sequence has finished. Idempotent.
  virtual void close() = 0;
};

struct BatchOptions {
  int max_batch = 8;   // sequences decoded together (>= 1)
  int max_queue = 16;  // admitted requests that may wait for a place in the batch (>= 0)
  // Prompt tokens prefilled in one iteration before the running sequences get their next decode step (a
  // newcomer's prompt is never split: at least one is prefilled per iteration when one waits).
  std::int64_t prefill_budget = 1024;
};

class BatchScheduler final : public GenerationScheduler {
 public:
  // Starts the engine thread. The model must outlive the scheduler; metrics may be null.
  BatchScheduler(ChatModel& model, BatchOptions options, Metrics* metrics);
  ~BatchScheduler() override;
  BatchScheduler(const BatchScheduler&) = delete;
  BatchScheduler& operator=(const BatchScheduler&) = delete;

  std::future<GenerationOutput> submit(GenerationRequest request, TextSink sink) override;
  const ChatModel& model() const override { return model_; }
  int max_batch() const override { return options_.max_batch; }
  int waiting() const override;
  int active() const override;
  int capacity() const override { return options_.max_queue; }
  void close() override;
  // Seconds a new request would likely wait: mean sequence time x (waiting + 1) / max_batch, in [1, 120].
  int retry_after_seconds() const;

  struct Stats {
    std::uint64_t decode_steps = 0;
    std::uint64_t sequences = 0;  // finished (any reason, errors included)
    std::uint64_t cancelled = 0;
    int largest_batch = 0;  // most sequences in one decode step so far
  };
  Stats stats() const;

 private:
  struct Sequence;
  void engine_main();
  int retry_after_locked() const;  // mutex_ held
  void prefill(Sequence& s);
  bool on_token(Sequence& s, std::int32_t token);
  bool emit(Sequence& s, std::string_view piece);
  void finish_text(Sequence& s, const char* reason);
  void retire(std::unique_ptr<Sequence> s, std::exception_ptr error = nullptr, bool was_active = true);

  ChatModel& model_;
  BatchOptions options_;
  Metrics* metrics_;
  std::size_t vocab_ = 0;
  std::vector<float> logits_;       // [max_batch, vocab] outputs of one decode step
  std::vector<std::int32_t> next_;  // [max_batch] tokens picked on the device (greedy steps)
  std::string piece_;               // scratch for decoded token bytes

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Sequence>> queue_;  // admitted, waiting for a place in the batch
  int preparing_ = 0;                            // admitted, still being prepared by their callers
  int active_ = 0;                               // in the batch
  bool closed_ = false;
  double total_seconds_ = 0;  // of finished sequences (for Retry-After)
  Stats stats_;
  std::thread engine_;
};

// Finds OpenAI stop strings in streamed text: text that could still be the start of a stop string is
// held back until it is known not to be.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);
  // Appends the text that is safe to emit after `piece` to `out`; true once a stop string was seen (what
  // follows it is dropped).
  bool push(std::string_view piece, std::string& out);
  void finish(std::string& out);  // end of text: releases what was held back
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace mv::server
