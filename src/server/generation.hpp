// Text generation for the server: a loaded Qwen2.5-VL chat model, OpenAI-style stop strings, and the
// scheduler interface that admits sequences.
//
// GenerationScheduler is the seam for continuous batching: a batched engine admits a sequence into its
// running batch (up to --max-batch) and runs one decode step for all of them; the sink of each sequence
// gets its text and can cancel it. Today's implementation, SerialGenerationScheduler, runs one sequence at a
// time through the single engine (a one-worker WorkQueue, shared with VLM extraction), so concurrent
// requests queue instead of sharing decode steps.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "io/image.hpp"
#include "model/qwen25vl/model.hpp"
#include "model/qwen25vl/sampler.hpp"
#include "text/chat_template.hpp"
#include "text/tokenizer.hpp"
#include "vision/preprocess.hpp"

namespace mv::server {

class Metrics;
class WorkQueue;

// A Qwen2.5-VL checkpoint with its tokenizer and image preprocessing, loaded once.
struct ChatModel {
  std::string id;  // the checkpoint folder's name (what /v1/models lists)
  std::filesystem::path dir;
  std::unique_ptr<qwen25vl::Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  PreprocessConfig preprocess;
  std::string device = "cpu";  // where the engine runs: cpu or cuda:N
  // device: cpu | cuda | cuda:N | auto (as qwen25vl::LoadOptions::device).
  static std::unique_ptr<ChatModel> load(const std::filesystem::path& dir, int threads = 0,
                                         const std::string& device = "cpu");
};

struct GenerationRequest {
  std::vector<ChatMessage> messages;  // image parts take `images` in order
  std::vector<ImageRGB8> images;
  int max_tokens = 512;
  qwen25vl::SamplingParams sampling;
  std::vector<std::string> stop;  // stop strings (not included in the text)
};

struct GenerationOutput {
  std::string text;
  std::string finish_reason;  // stop | length | cancelled
  std::int64_t prompt_tokens = 0;
  std::int64_t completion_tokens = 0;
  double seconds = 0;         // whole request on the engine
  double decode_seconds = 0;  // after the first token
};

// Receives text as it is produced (valid UTF-8, stop strings held back); returns false to cancel.
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
  // Admits the sequence or throws Rejected. The future holds the output or the error (mv::Error).
  virtual std::future<GenerationOutput> submit(GenerationRequest request, TextSink sink) = 0;
  virtual const ChatModel& model() const = 0;
  virtual int max_batch() const = 0;  // sequences that may share a decode step
};

// One sequence at a time on `queue` (whose single worker owns the engine).
class SerialGenerationScheduler : public GenerationScheduler {
 public:
  SerialGenerationScheduler(ChatModel& model, WorkQueue& queue, Metrics* metrics);
  std::future<GenerationOutput> submit(GenerationRequest request, TextSink sink) override;
  const ChatModel& model() const override { return model_; }
  int max_batch() const override { return 1; }

 private:
  ChatModel& model_;
  WorkQueue& queue_;
  Metrics* metrics_;
};

// Runs one request to completion on the calling thread (what a worker of the serial scheduler does).
GenerationOutput run_generation(ChatModel& model, const GenerationRequest& request, const TextSink& sink);

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
