// Qwen2.5-VL CPU engine: language model (spec §5) over the ops, KV cache sessions, and the glue to the
// vision tower. fp32 activations; weights stay mapped in their checkpoint dtype.
#include "model/qwen25vl/model.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>

#include "core/error.hpp"
#include "core/log.hpp"
#include "model/qwen25vl/engine_checks.hpp"
#include "model/qwen25vl/vision.hpp"
#include "model/qwen25vl/weights.hpp"
#include "ops/ops.hpp"

namespace mv::qwen25vl {

namespace {

class SessionImpl final : public Session {
 public:
  SessionImpl(const void* owner, int layers, int kv_heads, int head_dim, std::int64_t capacity)
      : owner_(owner), layers_(layers), kv_heads_(kv_heads), head_dim_(head_dim), capacity_(capacity) {
    const std::size_t n = static_cast<std::size_t>(layers) * kv_heads * capacity * head_dim;
    k_.resize(n);
    v_.resize(n);
  }
  std::int64_t length() const override { return length_; }
  std::int64_t capacity() const override { return capacity_; }
  std::int64_t rope_delta() const override { return rope_delta_; }
  void reset() override {
    length_ = 0;
    rope_delta_ = 0;
  }

  std::int64_t head_stride() const { return capacity_ * head_dim_; }
  float* k_layer(int l) { return k_.data() + static_cast<std::size_t>(l) * kv_heads_ * head_stride(); }
  float* v_layer(int l) { return v_.data() + static_cast<std::size_t>(l) * kv_heads_ * head_stride(); }

  const void* owner_;
  int layers_, kv_heads_, head_dim_;
  std::int64_t capacity_;
  std::int64_t length_ = 0;
  std::int64_t rope_delta_ = 0;
  std::vector<float> k_, v_;  // [layers][kv_heads][capacity][head_dim]
};

class ModelImpl final : public Model {
 public:
  ModelImpl(ModelConfig config, std::unique_ptr<Weights> weights, const LoadOptions& options)
      : config_(std::move(config)),
        w_(std::move(weights)),
        pool_(options.threads),
        vision_(config_.vision, w_->vision),
        chunk_(std::max<std::int64_t>(1, options.prefill_chunk)) {
    const TextConfig& t = config_.text;
    H_ = t.hidden_size;
    hd_ = t.head_dim();
    nh_ = t.num_attention_heads;
    nkv_ = t.num_key_value_heads;
    I_ = t.intermediate_size;
    V_ = t.vocab_size;
    sections_[0] = t.mrope_section[0];
    sections_[1] = t.mrope_section[1];
    sections_[2] = t.mrope_section[2];
    const auto rows = static_cast<std::size_t>(chunk_);
    x_.resize(rows * H_);
    h_.resize(rows * H_);
    tmp_.resize(rows * H_);
    q_.resize(rows * nh_ * hd_);
    k_.resize(rows * nkv_ * hd_);
    v_.resize(rows * nkv_ * hd_);
    attn_.resize(rows * nh_ * hd_);
    gate_.resize(rows * I_);
    // Every thread's GEMV and attention scratch is sized now, so decoding allocates nothing.
    ops::reserve_decode_scratch(&pool_, std::max<std::int64_t>(H_, I_), hd_);
    up_.resize(rows * I_);
    cos_.resize(rows * hd_ / 2);
    sin_.resize(rows * hd_ / 2);
  }

  const ModelConfig& config() const override { return config_; }

  std::unique_ptr<Session> new_session(std::int64_t max_tokens) const override {
    if (max_tokens <= 0)
      fail(Errc::kInvalidInput, "session: max_tokens must be positive, got {}", max_tokens);
    const TextConfig& t = config_.text;
    const double bytes = 2.0 * 4.0 * t.num_hidden_layers * t.num_key_value_heads *
                         static_cast<double>(max_tokens) * t.head_dim();
    if (bytes > static_cast<double>(std::int64_t{1} << 42))
      fail(Errc::kTooLarge, "session: a KV cache of {} tokens needs {:.1f} GiB", max_tokens,
           bytes / (1 << 30));
    try {
      return std::make_unique<SessionImpl>(this, t.num_hidden_layers, t.num_key_value_heads, t.head_dim(),
                                           max_tokens);
    } catch (const std::bad_alloc&) {
      fail(Errc::kTooLarge, "session: cannot allocate a KV cache of {} tokens ({:.1f} GiB)", max_tokens,
           bytes / (1 << 30));
    }
  }

  std::vector<float> encode_images(std::span<const PixelValues> images) override {
    std::lock_guard lock(mutex_);
    return encode_locked(images);
  }

  void prefill(Session& session, std::span<const std::int32_t> ids, std::span<const PixelValues> images,
               std::span<float> logits) override {
    std::lock_guard lock(mutex_);
    std::vector<std::array<std::int64_t, 3>> grids;
    for (const auto& img : images) grids.push_back(img.grid_thw);
    // Check the prompt against the images before spending time in the vision tower.
    get_rope_index(config_, ids, grids);
    const std::vector<float> features = encode_locked(images);
    prefill_locked(session, ids, grids, features, logits);
  }

  using Model::prefill_with_features;
  void prefill_with_features(Session& session, std::span<const std::int32_t> ids,
                             std::span<const std::array<std::int64_t, 3>> image_grids_thw,
                             std::span<const float> image_features, std::span<float> logits) override {
    std::lock_guard lock(mutex_);
    prefill_locked(session, ids, image_grids_thw, image_features, logits);
  }

  void decode(Session& session, std::int32_t token, std::span<float> logits) override {
    std::lock_guard lock(mutex_);
    SessionImpl& s = own(session);
    check_logits_size(logits, V_);
    check_token_ids(std::span<const std::int32_t>(&token, 1), V_);
    if (s.length_ + 1 > s.capacity_)
      fail(Errc::kTooLarge, "decode: the session is full ({} tokens)", s.capacity_);
    const std::int64_t p = s.length_ + s.rope_delta_;
    ops::embedding(w_->text.embed, &token, 1, x_.data(), nullptr);
    forward_rows(s, 1, &p, &p, &p, logits.data());
  }

 private:
  SessionImpl& own(Session& session) const {
    auto* s = dynamic_cast<SessionImpl*>(&session);
    if (!s || s->owner_ != this) fail(Errc::kInvalidInput, "session was not created by this model");
    return *s;
  }

  std::vector<float> encode_locked(std::span<const PixelValues> images) {
    if (images.empty()) return {};
    const VisionConfig& v = config_.vision;
    std::vector<Grid> grids;
    const std::int64_t rows = check_pixel_values(v, images, grids);
    const std::int64_t cols = images.front().cols;  // equal for every image (checked)
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<float> out;
    if (images.size() == 1) {
      out = vision_.forward(images[0].data.data(), rows, grids, &pool_);
    } else {
      std::vector<float> all;
      all.reserve(static_cast<std::size_t>(rows * cols));
      for (const auto& p : images) all.insert(all.end(), p.data.begin(), p.data.end());
      out = vision_.forward(all.data(), rows, grids, &pool_);
    }
    spdlog::debug("vision: {} image(s), {} patches in {:.3f} s", images.size(), rows,
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return out;
  }

  void prefill_locked(Session& session, std::span<const std::int32_t> ids,
                      std::span<const std::array<std::int64_t, 3>> grids, std::span<const float> features,
                      std::span<float> logits) {
    SessionImpl& s = own(session);
    check_logits_size(logits, V_);
    const auto n = static_cast<std::int64_t>(ids.size());
    if (n == 0) fail(Errc::kInvalidInput, "prefill: the prompt is empty");
    check_token_ids(ids, V_);
    if (s.length_ + n > s.capacity_)
      fail(Errc::kTooLarge, "prefill: {} prompt tokens do not fit the session ({} of {} used)", n, s.length_,
           s.capacity_);
    std::int64_t pads = 0;
    for (auto id : ids) pads += id == config_.image_token_id ? 1 : 0;
    if (pads * H_ != static_cast<std::int64_t>(features.size()))
      fail(Errc::kInvalidInput,
           "prefill: the prompt has {} image-pad tokens but {} image feature rows were given", pads,
           static_cast<std::int64_t>(features.size()) / std::max<std::int64_t>(1, H_));
    RopeIndex pos = get_rope_index(config_, ids, grids);
    // Later turns continue from the next free position.
    const std::int64_t start = s.length_ + s.rope_delta_;
    if (start != 0) {
      for (std::int64_t i = 0; i < n; ++i) {
        pos.t[i] += start;
        pos.h[i] += start;
        pos.w[i] += start;
      }
    }
    const std::int64_t new_delta = s.rope_delta_ + pos.rope_delta;

    const auto t0 = std::chrono::steady_clock::now();
    std::int64_t feature_row = 0;
    for (std::int64_t c0 = 0; c0 < n; c0 += chunk_) {
      const std::int64_t rows = std::min(chunk_, n - c0);
      ops::embedding(w_->text.embed, ids.data() + c0, rows, x_.data(), &pool_);
      for (std::int64_t i = 0; i < rows; ++i) {
        if (ids[static_cast<std::size_t>(c0 + i)] != config_.image_token_id) continue;
        std::memcpy(x_.data() + i * H_, features.data() + feature_row * H_, sizeof(float) * H_);
        ++feature_row;
      }
      const bool last = c0 + rows == n;
      forward_rows(s, rows, pos.t.data() + c0, pos.h.data() + c0, pos.w.data() + c0,
                   last ? logits.data() : nullptr);
    }
    s.rope_delta_ = new_delta;
    spdlog::debug("prefill: {} tokens in {:.3f} s", n,
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }

  // Runs `n` rows already embedded in x_ through the decoder at cache slots [length, length + n),
  // appends their keys/values, and writes the last row's logits when `logits` is set.
  void forward_rows(SessionImpl& s, std::int64_t n, const std::int64_t* pt, const std::int64_t* ph,
                    const std::int64_t* pw, float* logits) {
    const TextConfig& t = config_.text;
    const float eps = static_cast<float>(t.rms_norm_eps);
    ThreadPool* pool = &pool_;
    ops::mrope_tables(pt, ph, pw, n, static_cast<int>(hd_), t.rope_theta, sections_, cos_.data(),
                      sin_.data());
    const std::int64_t past = s.length_;
    for (std::size_t l = 0; l < w_->text.layers.size(); ++l) {
      const TextLayerWeights& L = w_->text.layers[l];
      ops::rms_norm(x_.data(), n, H_, L.input_norm.data(), eps, h_.data(), pool);
      const ops::LinearJob qkv[] = {
          {L.q.w, L.q.b(), q_.data()}, {L.k.w, L.k.b(), k_.data()}, {L.v.w, L.v.b(), v_.data()}};
      ops::linear_multi(h_.data(), n, qkv, pool);
      ops::rotary(q_.data(), n, nh_ * hd_, static_cast<int>(nh_), static_cast<int>(hd_), cos_.data(),
                  sin_.data(), pool);
      ops::rotary(k_.data(), n, nkv_ * hd_, static_cast<int>(nkv_), static_cast<int>(hd_), cos_.data(),
                  sin_.data(), pool);
      float* kc = s.k_layer(static_cast<int>(l));
      float* vc = s.v_layer(static_cast<int>(l));
      for (std::int64_t i = 0; i < n; ++i) {
        for (std::int64_t g = 0; g < nkv_; ++g) {
          const std::int64_t dst = g * s.head_stride() + (past + i) * hd_;
          std::memcpy(kc + dst, k_.data() + (i * nkv_ + g) * hd_, sizeof(float) * hd_);
          std::memcpy(vc + dst, v_.data() + (i * nkv_ + g) * hd_, sizeof(float) * hd_);
        }
      }
      ops::attention_causal(q_.data(), n, nh_ * hd_, static_cast<int>(nh_), static_cast<int>(nkv_),
                            static_cast<int>(hd_), kc, vc, s.head_stride(), past, attn_.data(), nh_ * hd_,
                            pool);
      ops::linear(attn_.data(), n, L.o.w, nullptr, tmp_.data(), pool);
      ops::add(x_.data(), tmp_.data(), n * H_, pool);

      ops::rms_norm(x_.data(), n, H_, L.post_norm.data(), eps, h_.data(), pool);
      const ops::LinearJob gu[] = {{L.gate.w, nullptr, gate_.data()}, {L.up.w, nullptr, up_.data()}};
      ops::linear_multi(h_.data(), n, gu, pool);
      ops::silu_mul(gate_.data(), up_.data(), gate_.data(), n * I_, pool);
      ops::linear(gate_.data(), n, L.down.w, nullptr, tmp_.data(), pool);
      ops::add(x_.data(), tmp_.data(), n * H_, pool);
    }
    s.length_ = past + n;
    if (logits) {
      ops::rms_norm(x_.data() + (n - 1) * H_, 1, H_, w_->text.norm.data(), eps, h_.data(), pool);
      ops::linear(h_.data(), 1, w_->text.lm_head, nullptr, logits, pool);
    }
  }

  ModelConfig config_;
  std::unique_ptr<Weights> w_;
  ThreadPool pool_;
  VisionEncoder vision_;
  std::int64_t chunk_;
  std::int64_t H_ = 0, hd_ = 0, nh_ = 0, nkv_ = 0, I_ = 0, V_ = 0;
  int sections_[3] = {0, 0, 0};
  std::mutex mutex_;
  // Activations of up to chunk_ rows (prefill chunks and decode), allocated once.
  std::vector<float> x_, h_, tmp_, q_, k_, v_, attn_, gate_, up_, cos_, sin_;
};

}  // namespace

namespace {
class HostImageFeatures final : public ImageFeatures {
 public:
  HostImageFeatures(std::vector<float> f, std::int64_t rows) : f_(std::move(f)), rows_(rows) {}
  std::int64_t rows() const override { return rows_; }
  std::span<const float> host() const override { return f_; }

 private:
  std::vector<float> f_;
  std::int64_t rows_;
};
}  // namespace

std::unique_ptr<ImageFeatures> Model::encode_images_resident(std::span<const PixelValues> images) {
  std::vector<float> f = encode_images(images);
  const auto width = static_cast<std::size_t>(config().vision.out_hidden_size);
  const auto rows = static_cast<std::int64_t>(width ? f.size() / width : 0);
  return std::make_unique<HostImageFeatures>(std::move(f), rows);
}

void Model::prefill_with_features(Session& session, std::span<const std::int32_t> ids,
                                  std::span<const std::array<std::int64_t, 3>> image_grids_thw,
                                  const ImageFeatures& image_features, std::span<float> logits) {
  prefill_with_features(session, ids, image_grids_thw, image_features.host(), logits);
}

void Model::decode_batch(std::span<Session* const> sessions, std::span<const std::int32_t> tokens,
                         std::span<float> logits) {
  const auto vocab = static_cast<std::size_t>(config().text.vocab_size);
  if (sessions.size() != tokens.size())
    fail(Errc::kInvalidInput, "decode_batch: {} sessions but {} tokens", sessions.size(), tokens.size());
  if (logits.size() < sessions.size() * vocab)
    fail(Errc::kInvalidInput, "decode_batch: the logits buffer holds {} floats, {} sequences need {}",
         logits.size(), sessions.size(), sessions.size() * vocab);
  for (std::size_t i = 0; i < sessions.size(); ++i) {
    if (sessions[i] == nullptr) fail(Errc::kInvalidInput, "decode_batch: session {} is null", i);
    for (std::size_t j = 0; j < i; ++j)
      if (sessions[j] == sessions[i]) fail(Errc::kInvalidInput, "decode_batch: session {} appears twice", i);
  }
  for (std::size_t i = 0; i < sessions.size(); ++i)
    decode(*sessions[i], tokens[i], logits.subspan(i * vocab, vocab));
}

void Model::decode_batch_greedy(std::span<Session* const> sessions, std::span<const std::int32_t> tokens,
                                std::span<std::int32_t> next) {
  if (next.size() != sessions.size())
    fail(Errc::kInvalidInput, "decode_batch_greedy: {} sessions but room for {} tokens", sessions.size(),
         next.size());
  const auto vocab = static_cast<std::size_t>(config().text.vocab_size);
  std::vector<float> logits(sessions.size() * vocab);
  decode_batch(sessions, tokens, logits);
  for (std::size_t i = 0; i < sessions.size(); ++i) {
    const float* row = logits.data() + i * vocab;
    std::size_t best = vocab;
    float best_v = -std::numeric_limits<float>::infinity();
    for (std::size_t j = 0; j < vocab; ++j) {
      if (std::isnan(row[j])) fail(Errc::kInternal, "decode: the logits of sequence {} are NaN", i);
      if (row[j] > best_v) {  // strict: the first index of the maximum wins
        best_v = row[j];
        best = j;
      }
    }
    if (best == vocab) fail(Errc::kInternal, "decode: the logits of sequence {} are all -inf", i);
    next[i] = static_cast<std::int32_t>(best);
  }
}

std::unique_ptr<Model> Model::load(const std::filesystem::path& model_dir, const LoadOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  ModelConfig config = ModelConfig::load(model_dir);
  validate_config(config, (model_dir / "config.json").string());
  WeightOptions weight_options;
  weight_options.quantize_nf4 = options.quantize == "nf4";
  weight_options.skip = options.quantize_skip;
  weight_options.threads = options.threads;
  if (!options.quantize.empty() && options.quantize != "nf4")
    fail(Errc::kUsage, "quantize '{}' is not supported (only nf4)", options.quantize);
  const int gpu = parse_device(options.device);  // before the weights: a bad --device fails fast
  weight_options.quantize_on_device = gpu >= 0;  // the CUDA engine quantizes while uploading
  if (!options.adapter.empty()) weight_options.adapter = LoraAdapter::load(options.adapter, config);
  std::unique_ptr<Weights> weights = Weights::load(model_dir, config, weight_options);
  if (weight_options.adapter) {
    const auto& a = *weight_options.adapter;
    spdlog::info(
        "adapter {}: {} LoRA modules merged ({} parameters, {} key layout), {} tensors replaced "
        "(modules_to_save)",
        options.adapter.string(), weights->lora_merged, a.lora_parameters(), key_layout_name(a.layout()),
        weights->lora_saved);
    if (weights->lora_merged_nf4 > 0)
      spdlog::warn(
          "adapter merged into 4-bit weights: dequantized, merged and quantized again, which adds "
          "rounding error (generations may differ from the unmerged adapter)");
  }
  const std::string dtypes = weights->dtype_summary;
  const double gib = static_cast<double>(weights->mapped_bytes) / (1 << 30);
  if (gpu >= 0) {
    auto model = load_cuda_model(config, *weights, gpu);
    spdlog::info(
        "model loaded on cuda:{}: {} text layers, {} vision blocks, {} weights ({:.2f} GiB) in {:.2f} s", gpu,
        model->config().text.num_hidden_layers, model->config().vision.depth, dtypes, gib,
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return model;
  }
  auto model = std::make_unique<ModelImpl>(std::move(config), std::move(weights), options);
  spdlog::info("model loaded: {} text layers, {} vision blocks, {} weights ({:.2f} GiB mapped) in {:.2f} s",
               model->config().text.num_hidden_layers, model->config().vision.depth, dtypes, gib,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return model;
}

}  // namespace mv::qwen25vl
