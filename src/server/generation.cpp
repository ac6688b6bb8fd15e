#include "server/generation.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <optional>

#include "core/error.hpp"
#include "model/qwen25vl/generator.hpp"
#include "server/metrics.hpp"
#include "server/work_queue.hpp"

namespace mv::server {

std::unique_ptr<ChatModel> ChatModel::load(const std::filesystem::path& dir, int threads,
                                           const std::string& device) {
  auto m = std::make_unique<ChatModel>();
  m->dir = dir;
  m->id = std::filesystem::absolute(dir).lexically_normal().filename().string();
  if (m->id.empty())
    m->id = std::filesystem::absolute(dir).lexically_normal().parent_path().filename().string();
  m->tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_model_dir(dir));
  m->preprocess = PreprocessConfig::load(dir);
  qwen25vl::LoadOptions options;
  options.threads = threads;
  options.device = device;
  const int gpu = qwen25vl::parse_device(device);  // throws for unknown names or cuda without CUDA
  m->device = gpu < 0 ? "cpu" : fmt::format("cuda:{}", gpu);
  m->model = qwen25vl::Model::load(dir, options);
  return m;
}

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
}

bool StopMatcher::push(std::string_view piece, std::string& out) {
  if (stopped_) return true;
  held_.append(piece);
  if (stops_.empty()) {
    out += held_;
    held_.clear();
    return false;
  }
  // Earliest stop string in the held text wins.
  std::size_t cut = std::string::npos;
  for (const auto& s : stops_) cut = std::min(cut, held_.find(s));
  if (cut != std::string::npos) {
    out.append(held_, 0, cut);
    held_.clear();
    stopped_ = true;
    return true;
  }
  // Keep the longest suffix that is a prefix of some stop string.
  std::size_t keep = 0;
  for (const auto& s : stops_)
    for (std::size_t n = std::min(s.size() - 1, held_.size()); n > keep; --n)
      if (held_.compare(held_.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
  out.append(held_, 0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return false;
}

void StopMatcher::finish(std::string& out) {
  if (!stopped_) out += held_;
  held_.clear();
}

namespace {

// Unwinds generate() when a stop string is found or the client went away.
struct StopHit {};
struct Cancelled {};

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

GenerationOutput run_generation(ChatModel& cm, const GenerationRequest& request, const TextSink& sink) {
  const auto t0 = std::chrono::steady_clock::now();
  if (request.max_tokens < 1) fail(Errc::kInvalidInput, "max_tokens must be at least 1");
  request.sampling.validate();
  std::vector<PixelValues> pixels;
  std::vector<std::int64_t> image_tokens;
  const int merge = cm.model->config().vision.spatial_merge_size;
  for (const auto& image : request.images) {
    pixels.push_back(preprocess_image(image, cm.preprocess));
    image_tokens.push_back(pixels.back().merged_tokens(merge));
  }
  std::vector<std::int32_t> ids = encode_chat(*cm.tokenizer, request.messages, image_tokens, true);

  GenerationOutput out;
  out.prompt_tokens = static_cast<std::int64_t>(ids.size());
  StopMatcher matcher(request.stop);
  std::optional<std::chrono::steady_clock::time_point> first_token;
  std::int64_t pieces = 0;
  std::string emit;
  qwen25vl::GenerateOptions options;
  options.max_new_tokens = request.max_tokens;
  options.sampling = request.sampling;
  options.on_text = [&](std::string_view piece) {
    if (!first_token) first_token = std::chrono::steady_clock::now();
    ++pieces;
    emit.clear();
    const bool stop = matcher.push(piece, emit);
    if (!emit.empty()) {
      out.text += emit;
      if (sink && !sink(emit)) throw Cancelled{};
    }
    if (stop) throw StopHit{};
  };
  try {
    auto result = qwen25vl::generate_from_ids(*cm.model, *cm.tokenizer, std::move(ids), pixels, options);
    emit.clear();
    matcher.finish(emit);
    if (!emit.empty()) {
      out.text += emit;
      if (sink) sink(emit);
    }
    out.finish_reason = result.finish_reason;
    out.completion_tokens = result.timings.generated_tokens;
    out.decode_seconds = result.timings.decode_ms / 1000.0;
  } catch (const StopHit&) {
    out.finish_reason = "stop";
    out.completion_tokens = pieces;  // each streamed piece is at most one token
    out.decode_seconds = first_token ? seconds_since(*first_token) : 0.0;
  } catch (const Cancelled&) {
    out.finish_reason = "cancelled";
    out.completion_tokens = pieces;
    out.decode_seconds = first_token ? seconds_since(*first_token) : 0.0;
  }
  out.seconds = seconds_since(t0);
  return out;
}

SerialGenerationScheduler::SerialGenerationScheduler(ChatModel& model, WorkQueue& queue, Metrics* metrics)
    : model_(model), queue_(queue), metrics_(metrics) {}

std::future<GenerationOutput> SerialGenerationScheduler::submit(GenerationRequest request, TextSink sink) {
  auto promise = std::make_shared<std::promise<GenerationOutput>>();
  auto future = promise->get_future();
  auto req = std::make_shared<GenerationRequest>(std::move(request));
  auto admit = queue_.try_submit([this, promise, req, sink = std::move(sink)] {
    try {
      if (metrics_) metrics_->observe_batch(1);
      GenerationOutput out = run_generation(model_, *req, sink);
      if (metrics_)
        metrics_->observe_generation(out.prompt_tokens, out.completion_tokens, out.decode_seconds);
      promise->set_value(std::move(out));
    } catch (...) {
      promise->set_exception(std::current_exception());
    }
  });
  if (admit == WorkQueue::Admit::kFull) {
    if (metrics_) metrics_->observe_rejection(queue_.name(), 429);
    throw Rejected(429, queue_.retry_after_seconds(), "the generation queue is full; retry later");
  }
  if (admit == WorkQueue::Admit::kClosed) {
    if (metrics_) metrics_->observe_rejection(queue_.name(), 503);
    throw Rejected(503, 5, "the server is shutting down");
  }
  return future;
}

}  // namespace mv::server
