#include "server/generation.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>

#include "core/error.hpp"
#include "model/qwen25vl/generator.hpp"
#include "model/qwen25vl/sampler.hpp"
#include "server/metrics.hpp"

namespace mv::server {

std::unique_ptr<ChatModel> ChatModel::load(const std::filesystem::path& dir, int threads,
                                           const std::string& device, const std::filesystem::path& adapter) {
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
  options.adapter = adapter;
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

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

struct BatchScheduler::Sequence {
  explicit Sequence(std::vector<std::string> stops) : matcher(std::move(stops)) {}
  std::vector<std::int32_t> ids;  // the prompt
  std::vector<PixelValues> pixels;
  int max_tokens = 0;
  std::vector<std::int32_t> stop_ids;
  std::function<bool()> cancelled;
  TextSink sink;
  std::promise<GenerationOutput> promise;
  StopMatcher matcher;
  qwen25vl::Utf8Stream utf8;
  std::unique_ptr<qwen25vl::Sampler> sampler;
  std::unique_ptr<qwen25vl::Session> session;  // made at prefill, freed at retirement
  std::int32_t next = -1;                      // the token fed to the next decode step
  GenerationOutput out;
  Clock::time_point admitted, first_token;
  bool done = false;  // out.finish_reason is final

  bool is_cancelled() const { return cancelled && cancelled(); }
};

BatchScheduler::BatchScheduler(ChatModel& model, BatchOptions options, Metrics* metrics)
    : model_(model), options_(options), metrics_(metrics) {
  if (options_.max_batch < 1) fail(Errc::kUsage, "the batch needs at least one sequence (max_batch >= 1)");
  if (options_.max_queue < 0) fail(Errc::kUsage, "max_queue must be 0 or more");
  vocab_ = static_cast<std::size_t>(model_.model->config().text.vocab_size);
  logits_.resize(static_cast<std::size_t>(options_.max_batch) * vocab_);
  next_.resize(static_cast<std::size_t>(options_.max_batch));
  piece_.reserve(256);
  engine_ = std::thread([this] { engine_main(); });
}

BatchScheduler::~BatchScheduler() { close(); }

void BatchScheduler::close() {
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
  }
  wake_.notify_all();
  if (engine_.joinable()) engine_.join();
}

int BatchScheduler::waiting() const {
  std::lock_guard lock(mutex_);
  return static_cast<int>(queue_.size()) + preparing_;
}

int BatchScheduler::active() const {
  std::lock_guard lock(mutex_);
  return active_;
}

BatchScheduler::Stats BatchScheduler::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

int BatchScheduler::retry_after_seconds() const {
  std::lock_guard lock(mutex_);
  return retry_after_locked();
}

int BatchScheduler::retry_after_locked() const {
  const double mean = stats_.sequences ? total_seconds_ / static_cast<double>(stats_.sequences) : 1.0;
  const double pending = static_cast<double>(queue_.size()) + preparing_;
  const double wait = mean * (pending + 1.0) / options_.max_batch;
  return static_cast<int>(std::clamp(std::ceil(wait), 1.0, 120.0));
}

std::future<GenerationOutput> BatchScheduler::submit(GenerationRequest request, TextSink sink) {
  if (request.max_tokens < 1) fail(Errc::kInvalidInput, "max_tokens must be at least 1");
  request.sampling.validate();
  // Admission first (nothing is prepared for a request that would be turned away), then the preparation
  // on this thread, so that tokenizing and image preprocessing never hold up the decode steps.
  {
    std::lock_guard lock(mutex_);
    if (closed_) {
      if (metrics_) metrics_->observe_rejection("engine", 503);
      throw Rejected(503, 5, "the server is shutting down");
    }
    // Like WorkQueue: admitted while a place in the batch or a waiting place is free.
    const int pending = static_cast<int>(queue_.size()) + preparing_;
    const int free_slots = options_.max_batch - active_;
    if (pending >= free_slots + options_.max_queue) {
      if (metrics_) metrics_->observe_rejection("engine", 429);
      throw Rejected(429, retry_after_locked(), "the generation queue is full; retry later");
    }
    ++preparing_;
  }
  std::unique_ptr<Sequence> s;
  try {
    s = std::make_unique<Sequence>(std::move(request.stop));
    s->admitted = Clock::now();
    std::size_t image_parts = 0;
    for (const auto& m : request.messages)
      for (const auto& p : m.parts)
        if (p.kind == ChatPart::Kind::kImage) ++image_parts;
    if (image_parts != request.images.size())
      fail(Errc::kInvalidInput, "the messages have {} image parts but {} images were given", image_parts,
           request.images.size());
    const int merge = model_.model->config().vision.spatial_merge_size;
    std::vector<std::int64_t> image_tokens;
    for (const auto& image : request.images) {
      s->pixels.push_back(preprocess_image(image, model_.preprocess));
      image_tokens.push_back(s->pixels.back().merged_tokens(merge));
    }
    s->ids = encode_chat(*model_.tokenizer, request.messages, image_tokens, true);
    if (s->ids.empty()) fail(Errc::kInvalidInput, "the prompt is empty");
    s->max_tokens = request.max_tokens;
    s->stop_ids = std::move(request.stop_ids);
    s->cancelled = std::move(request.cancelled);
    s->sink = std::move(sink);
    s->sampler = std::make_unique<qwen25vl::Sampler>(request.sampling, vocab_);
    s->sampler->add_history(s->ids);
    s->out.prompt_tokens = static_cast<std::int64_t>(s->ids.size());
  } catch (...) {
    {
      std::lock_guard lock(mutex_);
      --preparing_;
    }
    wake_.notify_all();
    throw;
  }
  auto future = s->promise.get_future();
  {
    std::lock_guard lock(mutex_);
    --preparing_;
    queue_.push_back(std::move(s));
  }
  wake_.notify_all();
  return future;
}

bool BatchScheduler::emit(Sequence& s, std::string_view piece) {
  std::string out;
  const bool stop = s.matcher.push(piece, out);
  if (!out.empty()) {
    s.out.text += out;
    if (s.sink && !s.sink(out)) {
      s.out.finish_reason = "cancelled";
      s.done = true;
      return false;
    }
  }
  if (stop) {
    s.out.finish_reason = "stop";
    s.done = true;
    return false;
  }
  return true;
}

// End of the sequence without a stop string so far: the UTF-8 remainder and the held-back text go out, as
// the serial generator does after its last token.
void BatchScheduler::finish_text(Sequence& s, const char* reason) {
  piece_.clear();
  s.utf8.finish(piece_);
  if (!piece_.empty() && !emit(s, piece_)) return;
  std::string tail;
  s.matcher.finish(tail);
  if (!tail.empty()) {
    s.out.text += tail;
    if (s.sink) s.sink(tail);
  }
  s.out.finish_reason = reason;
  s.done = true;
}

// A token chosen for `s`: streams its text and decides whether the sequence goes on (true: `token` is fed
// to the next decode step).
bool BatchScheduler::on_token(Sequence& s, std::int32_t token) {
  if (++s.out.completion_tokens == 1) s.first_token = Clock::now();
  const bool eos = std::find(s.stop_ids.begin(), s.stop_ids.end(), token) != s.stop_ids.end();
  if (!eos && !model_.tokenizer->is_special(token)) {
    piece_.clear();
    s.utf8.push(model_.tokenizer->token_bytes(token), piece_);
    if (!piece_.empty() && !emit(s, piece_)) return false;
  }
  if (eos) {
    finish_text(s, "stop");
    return false;
  }
  if (s.out.completion_tokens >= s.max_tokens) {
    finish_text(s, "length");
    return false;
  }
  s.next = token;
  return true;
}

void BatchScheduler::prefill(Sequence& s) {
  qwen25vl::Model& model = *model_.model;
  std::vector<std::array<std::int64_t, 3>> grids;
  std::int64_t image_tokens = 0;
  const int merge = model.config().vision.spatial_merge_size;
  for (const auto& px : s.pixels) {
    grids.push_back(px.grid_thw);
    image_tokens += px.merged_tokens(merge);
  }
  const auto pads = std::count(s.ids.begin(), s.ids.end(), model.config().image_token_id);
  if (pads != image_tokens)
    fail(Errc::kInvalidInput, "the prompt has {} image-pad tokens but the images give {} merged tokens", pads,
         image_tokens);
  s.session = model.new_session(static_cast<std::int64_t>(s.ids.size()) + s.max_tokens);
  std::span<float> logits(logits_.data(), vocab_);
  if (!s.pixels.empty()) {
    // Features stay on the engine's device between the vision tower and the prompt's pass.
    const auto features = model.encode_images_resident(s.pixels);
    model.prefill_with_features(*s.session, s.ids, grids, *features, logits);
  } else {
    model.prefill_with_features(*s.session, s.ids, grids, std::span<const float>(), logits);
  }
  s.pixels.clear();
  s.pixels.shrink_to_fit();
  on_token(s, s.sampler->sample(logits));
}

void BatchScheduler::retire(std::unique_ptr<Sequence> s, std::exception_ptr error, bool was_active) {
  const auto now = Clock::now();
  s->session.reset();  // frees the KV cache before anyone waits for the next slot
  s->out.seconds = seconds_between(s->admitted, now);
  s->out.decode_seconds = s->out.completion_tokens > 0 ? seconds_between(s->first_token, now) : 0.0;
  const bool cancelled = !error && s->out.finish_reason == "cancelled";
  if (metrics_) {
    if (!error)
      metrics_->observe_generation(s->out.prompt_tokens, s->out.completion_tokens, s->out.decode_seconds);
    metrics_->observe_sequence_end(error ? "error" : s->out.finish_reason);
  }
  {
    std::lock_guard lock(mutex_);
    if (was_active) --active_;
    ++stats_.sequences;
    if (cancelled) ++stats_.cancelled;
    total_seconds_ += s->out.seconds;
  }
  if (error)
    s->promise.set_exception(error);
  else
    s->promise.set_value(std::move(s->out));
}

void BatchScheduler::engine_main() {
  std::vector<std::unique_ptr<Sequence>> decoding;  // prefilled, each with its next token
  std::deque<std::unique_ptr<Sequence>> newcomers;  // in the batch, not prefilled yet
  std::vector<qwen25vl::Session*> sessions;
  std::vector<std::int32_t> tokens;
  std::vector<std::unique_ptr<Sequence>> dropped;  // cancelled while waiting for a place
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] {
        return !decoding.empty() || !newcomers.empty() || !queue_.empty() || (closed_ && preparing_ == 0);
      });
      if (decoding.empty() && newcomers.empty() && queue_.empty() && closed_ && preparing_ == 0) return;
      while (!queue_.empty() && static_cast<int>(decoding.size() + newcomers.size()) < options_.max_batch) {
        newcomers.push_back(std::move(queue_.front()));
        queue_.pop_front();
        ++active_;
      }
      for (auto& s : queue_)
        if (s->is_cancelled()) dropped.push_back(std::move(s));
      std::erase(queue_, nullptr);
    }
    for (auto& s : dropped) {
      s->out.finish_reason = "cancelled";
      retire(std::move(s), nullptr, false);
    }
    dropped.clear();
    // Cancelled sequences leave first (also those that never ran).
    for (auto& s : decoding)
      if (s->is_cancelled()) {
        s->out.finish_reason = "cancelled";
        retire(std::move(s));
      }
    std::erase(decoding, nullptr);
    // Newcomers: one prompt after the other, within the prefill budget while others wait to decode.
    std::int64_t prefilled = 0;
    while (!newcomers.empty() && (prefilled == 0 || prefilled < options_.prefill_budget)) {
      std::unique_ptr<Sequence> s = std::move(newcomers.front());
      newcomers.pop_front();
      if (s->is_cancelled()) {
        s->out.finish_reason = "cancelled";
        retire(std::move(s));
        continue;
      }
      prefilled += static_cast<std::int64_t>(s->ids.size());
      try {
        prefill(*s);
      } catch (...) {
        retire(std::move(s), std::current_exception());
        continue;
      }
      if (s->done)
        retire(std::move(s));
      else
        decoding.push_back(std::move(s));
    }
    if (decoding.empty()) continue;

    // One decode step for every running sequence.
    sessions.clear();
    tokens.clear();
    for (const auto& s : decoding) {
      sessions.push_back(s->session.get());
      tokens.push_back(s->next);
    }
    const std::size_t n = decoding.size();
    // Greedy sequences without a repetition penalty need only the argmax: when the engine picks on the
    // device and every sequence of the step is such, no logits leave it (as in the serial generator).
    const bool device_greedy =
        model_.model->greedy_on_device() && std::all_of(decoding.begin(), decoding.end(), [](const auto& s) {
          const auto& p = s->sampler->params();
          return !p.do_sample && p.repetition_penalty == 1.0f;
        });
    const auto t0 = Clock::now();
    try {
      if (device_greedy) {
        model_.model->decode_batch_greedy(sessions, tokens, std::span<std::int32_t>(next_.data(), n));
      } else {
        model_.model->decode_batch(sessions, tokens, std::span<float>(logits_.data(), n * vocab_));
      }
    } catch (...) {
      // The engine failed: every sequence of the step gets the error.
      const auto error = std::current_exception();
      spdlog::error("engine: a decode step of {} sequences failed", n);
      for (auto& s : decoding) retire(std::move(s), error);
      decoding.clear();
      continue;
    }
    const double step_seconds = seconds_between(t0, Clock::now());
    {
      std::lock_guard lock(mutex_);
      ++stats_.decode_steps;
      stats_.largest_batch = std::max(stats_.largest_batch, static_cast<int>(n));
    }
    if (metrics_) metrics_->observe_batch(static_cast<int>(n), step_seconds);
    for (std::size_t i = 0; i < n; ++i) {
      Sequence& s = *decoding[i];
      try {
        std::int32_t token;
        if (device_greedy) {
          token = next_[i];
          s.sampler->add_history(token);
        } else {
          token = s.sampler->sample(std::span<float>(logits_.data() + i * vocab_, vocab_));
        }
        if (on_token(s, token)) continue;
      } catch (...) {
        retire(std::move(decoding[i]), std::current_exception());
        continue;
      }
      retire(std::move(decoding[i]));
    }
    std::erase(decoding, nullptr);
  }
}

}  // namespace mv::server
