// Qwen2.5-VL on an NVIDIA GPU: the same Model interface as the CPU engine, with bf16 weights and KV
// cache, fp32 residual stream and accumulation. Weights are read from the mapped checkpoint through
// pinned staging buffers and converted to bf16 on the device. q/k/v and gate/up are fused into one
// weight each; residual adds ride in the GEMM epilogue (beta = 1). See docs/design/cuda-engine.md.
#if MEDVISION_HAS_CUDA
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <unordered_map>

#include "core/error.hpp"
#include "core/log.hpp"
#include "model/qwen25vl/cuda_linear.hpp"
#include "model/qwen25vl/engine_checks.hpp"
#include "model/qwen25vl/kv_pages.hpp"
#include "model/qwen25vl/model.hpp"
#include "model/qwen25vl/vision.hpp"
#include "model/qwen25vl/weights.hpp"
#include "ops/cuda/cuda_ops.hpp"

namespace mv::qwen25vl {

namespace {

using cuda::bf16;
using cuda::Buffer;
using cudaeng::DLinear;
using cudaeng::fuse;
using cudaeng::matrix;
using cudaeng::single;
using cudaeng::upload_vec;
using cudaeng::Uploader;

// Decode batches up to this many sequences run the fp32 GEMV (its time grows with the rows: the H100
// step of 8 sequences took 18.7 ms on it against 10.4 ms for 32 on the split GEMM); larger batches run
// the two-term split bf16 GEMM (DLinear::gemm_f32), which reads the weights once for any batch.
constexpr std::int64_t kDecodeGemvRows = 4;
// Most rows of one vision MLP pass (the tower's MLP runs in row chunks to bound its gate/up buffer).
constexpr std::int64_t kVisionMlpRows = 4096;
static_assert(kDecodeGemvRows <= cuda::kGemvFusedMaxRows, "the decode GEMV fuses the norms and SwiGLU");
constexpr std::int64_t kPrefillChunk = 2048;  // prompt rows per forward pass on the GPU
constexpr std::int64_t kMlpRows = 512;        // rows per MLP sub-chunk of a prefill pass

struct DTextLayer {
  Buffer in_norm, post_norm;
  DLinear qkv, o, gate_up, down;
};

struct DVisionBlock {
  Buffer norm1, norm2;
  DLinear qkv, proj, gate_up, down;
};

// A sequence's KV cache: pages of cuda::kKvPageTokens positions from the model's pool (cuda_ops.hpp has the
// page layout). The session reserves the pages its capacity can need when it is created and takes them as
// it grows.
class CudaSession final : public Session {
 public:
  CudaSession(const void* owner, std::shared_ptr<PagePool> pool, std::int64_t capacity)
      : owner_(owner),
        pool_(std::move(pool)),
        table_(*pool_, cuda::kKvPageTokens, capacity),
        capacity_(capacity) {}
  std::int64_t length() const override { return length_; }
  std::int64_t capacity() const override { return capacity_; }
  std::int64_t rope_delta() const override { return rope_delta_; }
  void reset() override {
    length_ = 0;
    rope_delta_ = 0;
    table_.clear();
  }
  // Page addresses covering positions [0, tokens), taking pages as needed.
  const std::vector<void*>& pages_for(std::int64_t tokens) {
    table_.cover(tokens);
    return table_.pages();
  }

  const void* owner_;
  std::shared_ptr<PagePool> pool_;  // outlives table_
  PageTable table_;
  std::int64_t capacity_;
  std::int64_t length_ = 0;
  std::int64_t rope_delta_ = 0;
};

// Bytes of pinned host memory for small per-call uploads (ids, positions, attention items).
class HostStage {
 public:
  ~HostStage() {
    if (p_) cudaFreeHost(p_);
  }
  void* get(std::size_t bytes) {
    if (bytes > n_) {
      if (p_) cudaFreeHost(p_);
      p_ = nullptr;
      n_ = std::max(bytes, n_ * 2);
      cuda::check(cudaMallocHost(&p_, n_), "pinned host buffer");
    }
    return p_;
  }

 private:
  void* p_ = nullptr;
  std::size_t n_ = 0;
};

std::size_t align_up(std::size_t n) { return (n + 255) & ~std::size_t{255}; }

// The KV page pool of a model: arenas are counted device buffers (cuda::memory_stats), held by the
// pool's backing so that the pool may outlive the model while sessions are still alive.
std::shared_ptr<PagePool> make_kv_pool(std::size_t page_bytes, int device) {
  struct Arenas {
    std::mutex mu;
    std::unordered_map<void*, Buffer> live;
  };
  auto arenas = std::make_shared<Arenas>();
  PagePool::Backing backing{[arenas, device](std::size_t bytes) -> void* {
                              cuda::check(cudaSetDevice(device), "select device");
                              Buffer b(bytes);  // throws kTooLarge when the device is full
                              void* p = b.data();
                              std::lock_guard lock(arenas->mu);
                              arenas->live.emplace(p, std::move(b));
                              return p;
                            },
                            [arenas, device](void* p) {
                              cudaSetDevice(device);
                              std::lock_guard lock(arenas->mu);
                              arenas->live.erase(p);
                            }};
  // Arenas of at least 64 MiB, doubling up to 1 GiB.
  const auto pages_of = [&](std::size_t bytes) {
    return std::max<std::int64_t>(1, static_cast<std::int64_t>(bytes / page_bytes));
  };
  return std::make_shared<PagePool>(page_bytes, pages_of(std::size_t{64} << 20),
                                    pages_of(std::size_t{1} << 30), std::move(backing));
}

class CudaModel final : public Model {
 public:
  CudaModel(ModelConfig config, const Weights& w, int device) : config_(std::move(config)), device_(device) {
    cuda::check(cudaSetDevice(device_), "select device");
    cuda::check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream");
    gemm_ = std::make_unique<cuda::Gemm>();
    lc_ = cudaeng::LinearContext{stream_, gemm_.get(), &lin_scratch_};
    const TextConfig& t = config_.text;
    H_ = t.hidden_size;
    hd_ = t.head_dim();
    nh_ = t.num_attention_heads;
    nkv_ = t.num_key_value_heads;
    I_ = t.intermediate_size;
    V_ = t.vocab_size;
    kv_geo_ = cuda::KvPageGeometry{static_cast<int>(t.num_hidden_layers), static_cast<int>(nkv_),
                                   static_cast<int>(hd_)};
    kv_pool_ = make_kv_pool(kv_geo_.page_bytes(), device_);
    fused_rope_ = cuda::decode_attention_tensor_cores(static_cast<int>(nh_), static_cast<int>(nkv_),
                                                      static_cast<int>(hd_));

    const auto before = cuda::memory_stats().allocated;
    {
      Uploader up(stream_);
      embed_ = matrix(up, w.text.embed);  // in the checkpoint's dtype (the tied lm_head too)
      if (!w.text.tied) lm_head_ = matrix(up, w.text.lm_head);
      norm_ = upload_vec(w.text.norm);
      layers_.resize(w.text.layers.size());
      for (std::size_t l = 0; l < layers_.size(); ++l) {
        const TextLayerWeights& L = w.text.layers[l];
        DTextLayer& D = layers_[l];
        D.in_norm = upload_vec(L.input_norm);
        D.post_norm = upload_vec(L.post_norm);
        D.qkv = fuse(up, {&L.q, &L.k, &L.v});
        D.o = single(up, L.o);
        D.gate_up = fuse(up, {&L.gate, &L.up});
        D.down = single(up, L.down);
      }
      const VisionWeights& vw = w.vision;
      patch_ = matrix(up, vw.patch_embed);
      vblocks_.resize(vw.blocks.size());
      for (std::size_t j = 0; j < vblocks_.size(); ++j) {
        const VisionBlockWeights& B = vw.blocks[j];
        DVisionBlock& D = vblocks_[j];
        D.norm1 = upload_vec(B.norm1);
        D.norm2 = upload_vec(B.norm2);
        D.qkv = single(up, B.qkv);
        D.proj = single(up, B.proj);
        D.gate_up = fuse(up, {&B.gate, &B.up});
        D.down = single(up, B.down);
        // The MLP's inner size (3420 in the released models) padded to a multiple of 64: the down
        // projection's GEMM then runs cuBLASLt's aligned kernels (docs/benchmarks.md, vision encoder).
        D.down.pad_in(up.stream(), (D.down.in + 63) / 64 * 64);
      }
      ln_q_ = upload_vec(vw.ln_q);
      mlp0_ = single(up, vw.mlp0);
      mlp2_ = single(up, vw.mlp2);
      cuda::check(cudaStreamSynchronize(stream_), "weight upload");
    }
    weight_bytes_ = cuda::memory_stats().allocated - before;

    // M-RoPE constants: inv_freq in float32 as the reference computes it, and each pair's stream.
    const int half = static_cast<int>(hd_ / 2);
    std::vector<float> inv(static_cast<std::size_t>(half));
    std::vector<std::int8_t> stream(static_cast<std::size_t>(half));
    int s = 0, end = t.mrope_section[0];
    for (int j = 0; j < half; ++j) {
      inv[static_cast<std::size_t>(j)] = 1.0f / std::pow(static_cast<float>(t.rope_theta),
                                                         static_cast<float>(2 * j) / static_cast<float>(hd_));
      while (j >= end && s < 2) end += t.mrope_section[static_cast<std::size_t>(++s)];
      stream[static_cast<std::size_t>(j)] = static_cast<std::int8_t>(s);
    }
    inv_freq_ = upload_vec(inv);
    pair_stream_.resize(stream.size());
    cuda::check(cudaMemcpy(pair_stream_.data(), stream.data(), stream.size(), cudaMemcpyHostToDevice),
                "upload");
    logits_dev_.resize(static_cast<std::size_t>(V_) * sizeof(float));
    const char* graphs = std::getenv("MV_CUDA_GRAPHS");
    use_graphs_ = !(graphs && std::string(graphs) == "0");
  }

  ~CudaModel() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    drop_graphs();
    gemm_.reset();
    cudaStreamDestroy(stream_);
  }

  const ModelConfig& config() const override { return config_; }

  std::unique_ptr<Session> new_session(std::int64_t max_tokens) const override {
    if (max_tokens <= 0)
      fail(Errc::kInvalidInput, "session: max_tokens must be positive, got {}", max_tokens);
    cuda::check(cudaSetDevice(device_), "select device");
    return std::make_unique<CudaSession>(this, kv_pool_, max_tokens);
  }

  std::vector<float> encode_images(std::span<const PixelValues> images) override {
    std::lock_guard lock(mutex_);
    cuda::check(cudaSetDevice(device_), "select device");
    const std::int64_t tokens = encode_locked(images);
    std::vector<float> out(static_cast<std::size_t>(tokens * H_));
    if (tokens > 0)
      cuda::check(
          cudaMemcpy(out.data(), features_.data(), out.size() * sizeof(float), cudaMemcpyDeviceToHost),
          "features download");
    return out;
  }

  // Features left on this model's device; downloaded only when host() is called.
  class DeviceFeatures final : public ImageFeatures {
   public:
    DeviceFeatures(const CudaModel* owner, Buffer buf, std::int64_t rows, std::int64_t cols)
        : owner_(owner), device_(owner->device_), buf_(std::move(buf)), rows_(rows), cols_(cols) {}
    std::int64_t rows() const override { return rows_; }
    std::span<const float> host() const override {
      std::lock_guard lock(mu_);
      if (host_.empty() && rows_ > 0) {
        std::vector<float> h(static_cast<std::size_t>(rows_ * cols_));
        cuda::check(cudaSetDevice(device_), "select device");
        cuda::check(cudaMemcpy(h.data(), buf_.data(), h.size() * sizeof(float), cudaMemcpyDeviceToHost),
                    "features download");
        host_ = std::move(h);
      }
      return host_;
    }
    const CudaModel* owner() const { return owner_; }
    const float* device() const { return buf_.as<float>(); }

   private:
    const CudaModel* owner_;  // compared, never dereferenced after construction (may outlive the model)
    int device_;
    Buffer buf_;
    std::int64_t rows_, cols_;
    mutable std::mutex mu_;
    mutable std::vector<float> host_;
  };

  std::unique_ptr<ImageFeatures> encode_images_resident(std::span<const PixelValues> images) override {
    std::lock_guard lock(mutex_);
    cuda::check(cudaSetDevice(device_), "select device");
    Buffer out;
    const std::int64_t tokens = encode_locked(images, &out);
    return std::make_unique<DeviceFeatures>(this, std::move(out), tokens, H_);
  }

  using Model::prefill_with_features;
  void prefill_with_features(Session& session, std::span<const std::int32_t> ids,
                             std::span<const std::array<std::int64_t, 3>> image_grids_thw,
                             const ImageFeatures& image_features, std::span<float> logits) override {
    const auto* dev = dynamic_cast<const DeviceFeatures*>(&image_features);
    if (dev == nullptr || dev->owner() != this) {
      prefill_with_features(session, ids, image_grids_thw, image_features.host(), logits);
      return;
    }
    std::lock_guard lock(mutex_);
    cuda::check(cudaSetDevice(device_), "select device");
    prefill_locked(session, ids, image_grids_thw, dev->device(), dev->rows(), logits);
  }

  void prefill(Session& session, std::span<const std::int32_t> ids, std::span<const PixelValues> images,
               std::span<float> logits) override {
    std::lock_guard lock(mutex_);
    cuda::check(cudaSetDevice(device_), "select device");
    std::vector<std::array<std::int64_t, 3>> grids;
    for (const auto& img : images) grids.push_back(img.grid_thw);
    get_rope_index(config_, ids, grids);  // checks the prompt against the images first
    const std::int64_t tokens = encode_locked(images);
    prefill_locked(session, ids, grids, features_.as<float>(), tokens, logits);
  }

  void prefill_with_features(Session& session, std::span<const std::int32_t> ids,
                             std::span<const std::array<std::int64_t, 3>> image_grids_thw,
                             std::span<const float> image_features, std::span<float> logits) override {
    std::lock_guard lock(mutex_);
    cuda::check(cudaSetDevice(device_), "select device");
    if (image_features.size() % static_cast<std::size_t>(H_) != 0)
      fail(Errc::kInvalidInput, "prefill: {} image feature floats are not whole rows of {}",
           image_features.size(), H_);
    features_.ensure(image_features.size() * sizeof(float));
    if (!image_features.empty())
      cuda::check(cudaMemcpy(features_.data(), image_features.data(), image_features.size() * sizeof(float),
                             cudaMemcpyHostToDevice),
                  "features upload");
    prefill_locked(session, ids, image_grids_thw, features_.as<float>(),
                   static_cast<std::int64_t>(image_features.size()) / H_, logits);
  }

  void decode(Session& session, std::int32_t token, std::span<float> logits) override {
    std::lock_guard lock(mutex_);
    cuda::check(cudaSetDevice(device_), "select device");
    check_logits_size(logits, V_);
    Session* one = &session;
    decode_step(std::span<Session* const>(&one, 1), std::span<const std::int32_t>(&token, 1), logits.data(),
                nullptr);
  }

  void decode_batch(std::span<Session* const> sessions, std::span<const std::int32_t> tokens,
                    std::span<float> logits) override {
    std::lock_guard lock(mutex_);
    cuda::check(cudaSetDevice(device_), "select device");
    if (logits.size() < sessions.size() * static_cast<std::size_t>(V_))
      fail(Errc::kInvalidInput, "decode_batch: the logits buffer holds {} floats, {} sequences need {}",
           logits.size(), sessions.size(), sessions.size() * static_cast<std::size_t>(V_));
    decode_step(sessions, tokens, logits.data(), nullptr);
  }

  void decode_batch_greedy(std::span<Session* const> sessions, std::span<const std::int32_t> tokens,
                           std::span<std::int32_t> next) override {
    std::lock_guard lock(mutex_);
    cuda::check(cudaSetDevice(device_), "select device");
    if (next.size() != sessions.size())
      fail(Errc::kInvalidInput, "decode_batch_greedy: {} sessions but room for {} tokens", sessions.size(),
           next.size());
    decode_step(sessions, tokens, nullptr, next.data());
  }

  bool greedy_on_device() const override { return true; }

  cuda::MemoryStats memory() const {
    cuda::MemoryStats m = cuda::memory_stats();
    m.weights = weight_bytes_;
    return m;
  }

 private:
  CudaSession& own(Session& session) const {
    auto* s = dynamic_cast<CudaSession*>(&session);
    if (!s || s->owner_ != this) fail(Errc::kInvalidInput, "session was not created by this model");
    return *s;
  }

  // Runs the vision tower over `images` into features_ (merged tokens in raster order); returns the
  // number of merged tokens.
  // Writes into *out (grown as needed) instead of features_ when out is set.
  std::int64_t encode_locked(std::span<const PixelValues> images, Buffer* out = nullptr) {
    if (images.empty()) return 0;
    const VisionConfig& c = config_.vision;
    std::vector<Grid> grids;
    const std::int64_t N = check_pixel_values(c, images, grids);
    const std::int64_t cols = images.front().cols;  // equal for every image (checked)
    const std::int64_t D = c.hidden_size, Iv = c.intermediate_size, heads = c.num_heads, hd = c.head_dim();
    const std::int64_t unit = std::int64_t{c.spatial_merge_size} * c.spatial_merge_size, half = hd / 2;
    const std::int64_t tokens = N / unit, O = c.out_hidden_size;

    // Host-side bookkeeping: window order, rotary tables (window order), attention items.
    const VisionLayout layout = vision_layout(c, grids);
    const auto positions = vision_patch_positions(c, grids);
    std::vector<float> cos_raw(static_cast<std::size_t>(N * half)), sin_raw(cos_raw.size());
    vision_rotary_tables(c, positions, cos_raw.data(), sin_raw.data());
    std::vector<float> cs(static_cast<std::size_t>(2 * N * half));
    for (std::int64_t p = 0; p < tokens; ++p) {
      const std::int64_t src = layout.window_index[static_cast<std::size_t>(p)];
      std::memcpy(cs.data() + p * unit * half, cos_raw.data() + src * unit * half,
                  sizeof(float) * unit * half);
      std::memcpy(cs.data() + N * half + p * unit * half, sin_raw.data() + src * unit * half,
                  sizeof(float) * unit * half);
    }
    const auto win_items = items_for(layout.cu_window_seqlens);
    const auto full_items = items_for(layout.cu_seqlens);

    // One upload: pixels, tables, window index, items.
    const std::size_t pix_b = align_up(static_cast<std::size_t>(N * cols) * sizeof(float));
    const std::size_t cs_b = align_up(cs.size() * sizeof(float));
    const std::size_t idx_b = align_up(static_cast<std::size_t>(tokens) * sizeof(std::int64_t));
    const std::size_t wi_b = align_up(win_items.size() * sizeof(cuda::AttnItem));
    const std::size_t fi_b = align_up(full_items.size() * sizeof(cuda::AttnItem));
    const std::size_t total = pix_b + cs_b + idx_b + wi_b + fi_b;
    auto* h = static_cast<char*>(vstage_.get(total));
    vin_.ensure(total);
    char* d = vin_.as<char>();
    std::memcpy(h + pix_b, cs.data(), cs.size() * sizeof(float));
    std::memcpy(h + pix_b + cs_b, layout.window_index.data(),
                static_cast<std::size_t>(tokens) * sizeof(std::int64_t));
    std::memcpy(h + pix_b + cs_b + idx_b, win_items.data(), win_items.size() * sizeof(cuda::AttnItem));
    std::memcpy(h + pix_b + cs_b + idx_b + wi_b, full_items.data(),
                full_items.size() * sizeof(cuda::AttnItem));
    cuda::check(cudaMemcpyAsync(d + pix_b, h + pix_b, total - pix_b, cudaMemcpyHostToDevice, stream_),
                "vision inputs upload");
    // Pixels (32 MB for a 1692-token page) in pieces: each piece's copy to the device overlaps the host
    // copy of the next into the pinned buffer.
    constexpr std::size_t kPiece = std::size_t{4} << 20;
    std::size_t off = 0;
    for (const auto& p : images) {
      const auto* src = reinterpret_cast<const char*>(p.data.data());
      const std::size_t bytes = p.data.size() * sizeof(float);
      for (std::size_t o = 0; o < bytes; o += kPiece) {
        const std::size_t n = std::min(kPiece, bytes - o);
        std::memcpy(h + off + o, src + o, n);
        cuda::check(cudaMemcpyAsync(d + off + o, h + off + o, n, cudaMemcpyHostToDevice, stream_),
                    "pixel upload");
      }
      off += bytes;
    }
    const float* pix = reinterpret_cast<const float*>(d);
    const float* cos = reinterpret_cast<const float*>(d + pix_b);
    const float* sin = cos + N * half;
    const auto* widx = reinterpret_cast<const std::int64_t*>(d + pix_b + cs_b);
    const auto* witems = reinterpret_cast<const cuda::AttnItem*>(d + pix_b + cs_b + idx_b);
    const auto* fitems = reinterpret_cast<const cuda::AttnItem*>(d + pix_b + cs_b + idx_b + wi_b);

    // Work buffers.
    // The MLP runs in row chunks of at most kVisionMlpRows (its [rows, 2·Iv] fp32 gate/up output is the
    // largest buffer of the tower: 446 MB for a whole 16k-patch page).
    const std::int64_t mlp_chunks = (N + kVisionMlpRows - 1) / kVisionMlpRows;
    const std::int64_t mlp_rows = (N + mlp_chunks - 1) / mlp_chunks;
    const std::int64_t Ia = vblocks_.empty() ? Iv : vblocks_.front().down.lda();  // Iv padded (pad_in)
    va_.ensure(static_cast<std::size_t>(N * std::max(cols, D)) * sizeof(bf16));   // bf16 GEMM inputs
    vact_.ensure(static_cast<std::size_t>(mlp_rows * Ia) * sizeof(bf16));         // SwiGLU output
    vx_.ensure(static_cast<std::size_t>(N * D) * sizeof(float));                  // residual stream
    vy_.ensure(static_cast<std::size_t>(std::max(N * 3 * D, mlp_rows * 2 * Iv)) *
               sizeof(float));                                       // GEMM outputs
    vq_.ensure(static_cast<std::size_t>(3 * N * D) * sizeof(bf16));  // q, k, v
    Buffer& dest = out ? *out : features_;
    dest.ensure(static_cast<std::size_t>(tokens * O) * sizeof(float));
    bf16* a = va_.as<bf16>();
    float* x = vx_.as<float>();
    float* y = vy_.as<float>();
    bf16* q = vq_.as<bf16>();
    bf16* k = q + N * D;
    bf16* v = k + N * D;
    const float eps = 1e-6f;

    cuda::f32_to_bf16(stream_, pix, N * cols, a);
    patch_.gemm(lc_, a, N, y, false);
    cuda::gather_rows(stream_, y, widx, tokens, unit * D, x);
    for (std::size_t j = 0; j < vblocks_.size(); ++j) {
      const DVisionBlock& B = vblocks_[j];
      const bool full = std::find(c.fullatt_block_indexes.begin(), c.fullatt_block_indexes.end(),
                                  static_cast<int>(j)) != c.fullatt_block_indexes.end();
      cuda::rms_norm(stream_, x, N, D, D, B.norm1.as<float>(), eps, a);
      B.qkv.gemm(lc_, a, N, y, false);
      cuda::QkvSplit sp{y,
                        3 * D,
                        N,
                        static_cast<int>(heads),
                        static_cast<int>(heads),
                        static_cast<int>(hd),
                        cos,
                        sin,
                        q,
                        k,
                        v,
                        hd,
                        heads * hd,
                        0};
      cuda::rope_split_qkv(stream_, sp);
      cuda::AttnArgs at{q,
                        D,
                        k,
                        v,
                        hd,
                        heads * hd,
                        a,
                        D,
                        static_cast<int>(heads),
                        static_cast<int>(heads),
                        static_cast<int>(hd),
                        full ? fitems : witems,
                        static_cast<int>(full ? full_items.size() : win_items.size())};
      cuda::attention(stream_, at);
      B.proj.gemm(lc_, a, N, x, true);
      cuda::rms_norm(stream_, x, N, D, D, B.norm2.as<float>(), eps, a);
      for (std::int64_t r0 = 0; r0 < N; r0 += mlp_rows) {
        const std::int64_t rows = std::min(mlp_rows, N - r0);
        B.gate_up.gemm(lc_, a + r0 * D, rows, y, false);
        cuda::silu_mul(stream_, y, rows, Iv, vact_.as<bf16>(), B.down.lda());  // lda: Iv padded (pad_in)
        B.down.gemm(lc_, vact_.as<bf16>(), rows, x + r0 * D, true);
      }
    }
    // Patch merger: RMSNorm per patch; `unit` consecutive rows form one row of unit·D.
    cuda::rms_norm(stream_, x, N, D, D, ln_q_.as<float>(), eps, a);
    mlp0_.gemm(lc_, a, tokens, y, false);
    cuda::gelu(stream_, y, tokens * unit * D, a);
    MV_CHECK(O <= unit * D, "vision merger output {} wider than {}", O, unit * D);
    float* merged = x;  // the residual stream is free now
    mlp2_.gemm(lc_, a, tokens, merged, false);
    cuda::scatter_rows(stream_, merged, widx, tokens, O, dest.as<float>());
    cuda::check(cudaStreamSynchronize(stream_), "vision tower");
    return tokens;
  }

  // Query blocks of ≤ 64 rows for each segment [cu[s], cu[s+1]) against the whole segment.
  static std::vector<cuda::AttnItem> items_for(const std::vector<std::int64_t>& cu) {
    std::vector<cuda::AttnItem> items;
    for (std::size_t s = 0; s + 1 < cu.size(); ++s) {
      const std::int64_t s0 = cu[s], s1 = cu[s + 1];
      for (std::int64_t q0 = s0; q0 < s1; q0 += cuda::kAttnBlockQ)
        items.push_back({static_cast<std::int32_t>(q0),
                         static_cast<std::int32_t>(std::min<std::int64_t>(cuda::kAttnBlockQ, s1 - q0)),
                         static_cast<std::int32_t>(s0), static_cast<std::int32_t>(s1 - s0), -1});
    }
    return items;
  }

  void prefill_locked(Session& session, std::span<const std::int32_t> ids,
                      std::span<const std::array<std::int64_t, 3>> grids, const float* features,
                      std::int64_t feature_rows, std::span<float> logits) {
    CudaSession& s = own(session);
    check_logits_size(logits, V_);
    const auto n = static_cast<std::int64_t>(ids.size());
    if (n == 0) fail(Errc::kInvalidInput, "prefill: the prompt is empty");
    check_token_ids(ids, V_);
    if (s.length_ + n > s.capacity_)
      fail(Errc::kTooLarge, "prefill: {} prompt tokens do not fit the session ({} of {} used)", n, s.length_,
           s.capacity_);
    std::vector<std::int32_t> frow(static_cast<std::size_t>(n), -1);
    std::int64_t pads = 0;
    for (std::int64_t i = 0; i < n; ++i)
      if (ids[static_cast<std::size_t>(i)] == config_.image_token_id)
        frow[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(pads++);
    if (pads != feature_rows)
      fail(Errc::kInvalidInput,
           "prefill: the prompt has {} image-pad tokens but {} image feature rows were given", pads,
           feature_rows);
    RopeIndex pos = get_rope_index(config_, ids, grids);
    const std::int64_t start = s.length_ + s.rope_delta_;
    std::vector<std::int64_t> p3(static_cast<std::size_t>(3 * n));
    for (std::int64_t i = 0; i < n; ++i) {
      p3[static_cast<std::size_t>(i)] = pos.t[static_cast<std::size_t>(i)] + start;
      p3[static_cast<std::size_t>(n + i)] = pos.h[static_cast<std::size_t>(i)] + start;
      p3[static_cast<std::size_t>(2 * n + i)] = pos.w[static_cast<std::size_t>(i)] + start;
    }
    const std::int64_t new_delta = s.rope_delta_ + pos.rope_delta;
    for (std::int64_t c0 = 0; c0 < n; c0 += kPrefillChunk) {
      const std::int64_t rows = std::min(kPrefillChunk, n - c0);
      // Positions of this chunk as [3][rows].
      std::vector<std::int64_t> pc(static_cast<std::size_t>(3 * rows));
      for (int st = 0; st < 3; ++st)
        std::memcpy(pc.data() + st * rows, p3.data() + st * n + c0, sizeof(std::int64_t) * rows);
      const bool last = c0 + rows == n;
      forward_rows(s, rows, ids.data() + c0, frow.data() + c0, features, pc.data(), rows,
                   last ? logits.data() : nullptr);
    }
    s.rope_delta_ = new_delta;
  }

  // Runs `n` prompt rows (token ids, or image features where frow >= 0) through the decoder at cache slots
  // [length, length + n); pos is [3][n]. Writes the last row's logits when `logits` is set. Decoding goes
  // through decode_step instead.
  void forward_rows(CudaSession& s, std::int64_t n, const std::int32_t* ids, const std::int32_t* frow,
                    const float* features, const std::int64_t* pos, std::int64_t pos_rows, float* logits) {
    const TextConfig& t = config_.text;
    const float eps = static_cast<float>(t.rms_norm_eps);
    const std::int64_t past = s.length_;
    const std::int64_t nq = nh_ * hd_, nkv = nkv_ * hd_, half = hd_ / 2;

    // Per-call inputs in one pinned block → one copy.
    std::vector<cuda::AttnItem> items;
    for (std::int64_t q0 = 0; q0 < n; q0 += cuda::kAttnBlockQ)
      items.push_back({static_cast<std::int32_t>(q0),
                       static_cast<std::int32_t>(std::min<std::int64_t>(cuda::kAttnBlockQ, n - q0)), 0,
                       static_cast<std::int32_t>(past + n), static_cast<std::int32_t>(past + q0)});
    // The session's pages for positions [0, past + n), then the page table with the other inputs.
    const std::vector<void*>& pages = s.pages_for(past + n);
    const std::size_t ids_b = align_up(sizeof(std::int32_t) * n), frow_b = ids_b,
                      pos_b = align_up(sizeof(std::int64_t) * 3 * n),
                      items_b = align_up(sizeof(cuda::AttnItem) * std::max<std::size_t>(items.size(), 1)),
                      pages_b = align_up(sizeof(void*) * pages.size());
    const std::size_t total = ids_b + frow_b + pos_b + items_b + pages_b;
    auto* h = static_cast<char*>(tstage_.get(total));
    std::memcpy(h, ids, sizeof(std::int32_t) * n);
    std::memcpy(h + ids_b, frow, sizeof(std::int32_t) * n);
    std::memcpy(h + ids_b + frow_b, pos, sizeof(std::int64_t) * 3 * n);
    std::memcpy(h + ids_b + frow_b + pos_b, items.data(), sizeof(cuda::AttnItem) * items.size());
    std::memcpy(h + ids_b + frow_b + pos_b + items_b, pages.data(), sizeof(void*) * pages.size());
    tin_.ensure(total);
    char* d = tin_.as<char>();
    cuda::check(cudaMemcpyAsync(d, h, total, cudaMemcpyHostToDevice, stream_), "prompt upload");
    const auto* d_ids = reinterpret_cast<const std::int32_t*>(d);
    const auto* d_frow = reinterpret_cast<const std::int32_t*>(d + ids_b);
    const auto* d_pos = reinterpret_cast<const std::int64_t*>(d + ids_b + frow_b);
    const auto* d_items = reinterpret_cast<const cuda::AttnItem*>(d + ids_b + frow_b + pos_b);
    auto* const* d_pages = reinterpret_cast<bf16* const*>(d + ids_b + frow_b + pos_b + items_b);
    // Contiguous staging cache of one layer for the prompt's attention: [n_kv][past + n][hd], K then V.
    const std::int64_t span = past + n;
    tkv_.ensure(static_cast<std::size_t>(2 * nkv_ * span * hd_) * sizeof(bf16));
    bf16* kc = tkv_.as<bf16>();
    bf16* vc = kc + nkv_ * span * hd_;

    tx_.ensure(static_cast<std::size_t>(n * H_) * sizeof(float));
    const std::int64_t mlp = std::min(n, kMlpRows);
    ta_.ensure(static_cast<std::size_t>(std::max(n * std::max(H_, nq), mlp * I_)) * sizeof(bf16));
    ty_.ensure(static_cast<std::size_t>(std::max(n * (nq + 2 * nkv), mlp * 2 * I_)) * sizeof(float));
    tq_.ensure(static_cast<std::size_t>(n * nq) * sizeof(bf16));
    tcs_.ensure(static_cast<std::size_t>(2 * n * half) * sizeof(float));
    th32_.ensure(static_cast<std::size_t>(std::max(H_, std::max(I_, nq))) * sizeof(float));
    logits_dev_.ensure(static_cast<std::size_t>(V_) * sizeof(float));
    float* x = tx_.as<float>();
    bf16* a = ta_.as<bf16>();
    float* y = ty_.as<float>();
    bf16* q = tq_.as<bf16>();
    float* cos = tcs_.as<float>();
    float* sin = cos + n * half;

    embed_.embed_rows(stream_, d_ids, d_frow, features, n, x);
    cuda::mrope_tables(stream_, d_pos, pos_rows, inv_freq_.as<float>(), pair_stream_.as<std::int8_t>(),
                       static_cast<int>(half), cos, sin);
    float* h32 = th32_.as<float>();
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      const DTextLayer& L = layers_[l];
      const cuda::QkvSplit sp{y,
                              nq + 2 * nkv,
                              n,
                              static_cast<int>(nh_),
                              static_cast<int>(nkv_),
                              static_cast<int>(hd_),
                              cos,
                              sin,
                              q,
                              kc,
                              vc,
                              span * hd_,
                              hd_,
                              past};
      cuda::rms_norm(stream_, x, n, H_, H_, L.in_norm.as<float>(), eps, a);
      L.qkv.gemm(lc_, a, n, y, false);
      cuda::rope_split_qkv(stream_, sp);
      // Older positions from the pages into the staging cache; the new ones from it into the pages.
      cuda::KvPageCopy cp{d_pages, kv_geo_, static_cast<int>(l), kc, vc, span * hd_, 0, past, false};
      cuda::kv_page_copy(stream_, cp);
      cp.pos0 = past;
      cp.rows = n;
      cp.to_pages = true;
      cuda::kv_page_copy(stream_, cp);
      const cuda::AttnArgs at{q,
                              nq,
                              kc,
                              vc,
                              span * hd_,
                              hd_,
                              a,
                              nq,
                              static_cast<int>(nh_),
                              static_cast<int>(nkv_),
                              static_cast<int>(hd_),
                              d_items,
                              static_cast<int>(items.size())};
      cuda::attention(stream_, at);
      L.o.gemm(lc_, a, n, x, true);
      // The MLP in sub-chunks of kMlpRows rows: its [rows, 2I] fp32 gate/up output is the largest
      // prefill buffer (310 MB for 2048 rows at the 7B shapes, 78 MB for 512).
      for (std::int64_t r0 = 0; r0 < n; r0 += kMlpRows) {
        const std::int64_t rows = std::min(kMlpRows, n - r0);
        cuda::rms_norm(stream_, x + r0 * H_, rows, H_, H_, L.post_norm.as<float>(), eps, a);
        L.gate_up.gemm(lc_, a, rows, y, false);
        cuda::silu_mul(stream_, y, rows, I_, a);
        L.down.gemm(lc_, a, rows, x + r0 * H_, true);
      }
    }
    s.length_ = past + n;
    if (logits) {
      cuda::rms_norm_f32(stream_, x + (n - 1) * H_, 1, H_, H_, norm_.as<float>(), eps, h32);
      const DLinear& head = config_.text.tie_word_embeddings ? embed_ : lm_head_;
      head.gemv(lc_, h32, 1, logits_dev_.as<float>(), false);
      auto* lh = static_cast<float*>(lstage_.get(static_cast<std::size_t>(V_) * sizeof(float)));
      cuda::check(cudaMemcpyAsync(lh, logits_dev_.data(), static_cast<std::size_t>(V_) * sizeof(float),
                                  cudaMemcpyDeviceToHost, stream_),
                  "logits download");
      cuda::check(cudaStreamSynchronize(stream_), "forward");
      std::memcpy(logits, lh, static_cast<std::size_t>(V_) * sizeof(float));
    } else {
      cuda::check(cudaStreamSynchronize(stream_), "forward");
    }
  }

  // ---- decode step -------------------------------------------------------------------------------------
  // Per-step inputs of a batch of B sequences, in one device block (one upload per step): the sequences'
  // caches and lengths, the positions [3][B] and the token ids. Offsets depend only on B, so a graph
  // captured for B reads the block of every later step of B.
  struct DecodeLayout {
    std::size_t seqs = 0, pos = 0, ids = 0, total = 0;
  };
  static DecodeLayout decode_layout(std::int64_t B) {
    DecodeLayout L;
    L.pos = align_up(sizeof(cuda::DecodeSeq) * static_cast<std::size_t>(B));
    L.ids = L.pos + align_up(sizeof(std::int64_t) * 3 * static_cast<std::size_t>(B));
    L.total = L.ids + align_up(sizeof(std::int32_t) * static_cast<std::size_t>(B));
    return L;
  }

  // Sizes the decode buffers for B rows (rounded up to a power of two, at least kGemvMaxRows, so that
  // batch sizes that come and go do not reallocate); any reallocation drops the captured graphs.
  void ensure_decode_buffers(std::int64_t B, std::size_t input_bytes) {
    if (B > dec_rows_) {
      std::int64_t rows = cuda::kGemvMaxRows;
      while (rows < B) rows *= 2;
      const std::int64_t nq = nh_ * hd_, nkv = nkv_ * hd_, wide = std::max(H_, std::max(I_, nq));
      din_.resize(decode_layout(rows).total);
      dx_.resize(static_cast<std::size_t>(rows * H_) * sizeof(float));
      dh_.resize(static_cast<std::size_t>(rows * wide) * sizeof(float));
      da_.resize(static_cast<std::size_t>(rows * wide) * sizeof(bf16));
      dy_.resize(static_cast<std::size_t>(rows * std::max(nq + 2 * nkv, 2 * I_)) * sizeof(float));
      dq_.resize(static_cast<std::size_t>(rows * nq) * sizeof(bf16));
      dcs_.resize(static_cast<std::size_t>(rows * hd_) * sizeof(float));  // cos and sin, [rows][hd/2] each
      dlogits_.resize(static_cast<std::size_t>(rows * V_) * sizeof(float));
      // Token ids, then the argmax workspace.
      dtok_.resize(argmax_work_offset(rows) + cuda::argmax_workspace(rows, V_));
      // Split partials and merge counters of decode attention; the counters start at zero.
      dattn_.resize(cuda::decode_attention_workspace(static_cast<int>(nh_), static_cast<int>(nkv_),
                                                     static_cast<int>(hd_), static_cast<int>(rows)));
      cuda::check(cudaMemsetAsync(dattn_.data(), 0, dattn_.size(), stream_), "decode attention workspace");
      dec_rows_ = rows;
    }
    // The per-step inputs end with the page tables, which grow with the sequences.
    if (din_.size() < input_bytes) din_.resize(std::max(input_bytes, 2 * din_.size()));
    // The graphs hold these addresses (and the linear layers' scratch buffer, which may grow).
    const std::vector<const void*> now{din_.data(),  dx_.data(),    dh_.data(),         da_.data(),
                                       dy_.data(),   dq_.data(),    dcs_.data(),        dlogits_.data(),
                                       dtok_.data(), dattn_.data(), lin_scratch_.data()};
    if (now != graph_buffers_) {
      drop_graphs();
      graph_buffers_ = now;
    }
  }

  static std::size_t argmax_work_offset(std::int64_t rows) {
    return (static_cast<std::size_t>(rows) * sizeof(std::int32_t) + 255) / 256 * 256;
  }

  void drop_graphs() {
    for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
    graphs_.clear();
    ran_eagerly_.clear();
  }

  // One decode step for B sequences: appends tokens[i] to sessions[i] and writes either the logits
  // (logits_out, B·V floats) or the greedy next tokens (next_out, B ids). Checks everything before any
  // device work; a session's length grows only when the step succeeded.
  void decode_step(std::span<Session* const> sessions, std::span<const std::int32_t> tokens,
                   float* logits_out, std::int32_t* next_out) {
    const auto B = static_cast<std::int64_t>(sessions.size());
    if (B == 0) fail(Errc::kInvalidInput, "decode_batch: no sessions");
    if (tokens.size() != sessions.size())
      fail(Errc::kInvalidInput, "decode_batch: {} sessions but {} tokens", sessions.size(), tokens.size());
    check_token_ids(tokens, V_);
    std::vector<CudaSession*> ss(sessions.size());
    for (std::size_t i = 0; i < sessions.size(); ++i) {
      if (sessions[i] == nullptr) fail(Errc::kInvalidInput, "decode_batch: session {} is null", i);
      ss[i] = &own(*sessions[i]);
      for (std::size_t j = 0; j < i; ++j)
        if (ss[j] == ss[i]) fail(Errc::kInvalidInput, "decode_batch: session {} appears twice", i);
      if (ss[i]->length_ + 1 > ss[i]->capacity_)
        fail(Errc::kTooLarge, "decode: the session is full ({} tokens)", ss[i]->capacity_);
    }
    // Pages for the new positions (within each session's reservation), then the inputs → pinned block →
    // one copy: sequences, positions, ids, and the page tables after them.
    std::vector<const std::vector<void*>*> tables(ss.size());
    std::size_t entries = 0;
    for (std::size_t i = 0; i < ss.size(); ++i) {
      tables[i] = &ss[i]->pages_for(ss[i]->length_ + 1);
      entries += tables[i]->size();
    }
    const DecodeLayout lay = decode_layout(B);
    const std::size_t in_bytes = lay.total + sizeof(void*) * entries;
    ensure_decode_buffers(B, in_bytes);
    auto* h = static_cast<char*>(dstage_.get(in_bytes));
    auto* hseq = reinterpret_cast<cuda::DecodeSeq*>(h);
    auto* hpos = reinterpret_cast<std::int64_t*>(h + lay.pos);
    auto* hids = reinterpret_cast<std::int32_t*>(h + lay.ids);
    auto* htab = reinterpret_cast<void**>(h + lay.total);
    auto* dtab = reinterpret_cast<bf16**>(din_.as<char>() + lay.total);
    for (std::int64_t i = 0; i < B; ++i) {
      const CudaSession& s = *ss[static_cast<std::size_t>(i)];
      const std::vector<void*>& t = *tables[static_cast<std::size_t>(i)];
      std::memcpy(htab, t.data(), sizeof(void*) * t.size());
      hseq[i] = cuda::DecodeSeq{dtab, static_cast<std::int32_t>(s.length_ + 1), 0};
      htab += t.size();
      dtab += t.size();
      const std::int64_t p = s.length_ + s.rope_delta_;  // text position: length + rope delta (spec §5.4)
      hpos[i] = hpos[B + i] = hpos[2 * B + i] = p;
      hids[i] = tokens[static_cast<std::size_t>(i)];
    }
    cuda::check(cudaMemcpyAsync(din_.data(), h, in_bytes, cudaMemcpyHostToDevice, stream_), "decode inputs");

    const bool greedy = next_out != nullptr;
    const auto key = std::make_pair(static_cast<int>(B), greedy);
    if (!use_graphs_) {
      enqueue_decode(B, greedy);
    } else if (auto it = graphs_.find(key); it != graphs_.end()) {
      cuda::check(cudaGraphLaunch(it->second, stream_), "decode graph launch");
    } else if (!ran_eagerly_.count(key)) {
      // First step of this shape: run it directly (plans, workspaces and buffers settle), capture next time.
      enqueue_decode(B, greedy);
      ran_eagerly_.insert(key);
    } else {
      cudaGraphExec_t exec = capture_decode(B, greedy);
      if (exec) {
        graphs_.emplace(key, exec);
        cuda::check(cudaGraphLaunch(exec, stream_), "decode graph launch");
      } else {
        enqueue_decode(B, greedy);  // a buffer moved while capturing: this step runs directly
      }
    }

    if (greedy) {
      auto* ht = static_cast<std::int32_t*>(lstage_.get(static_cast<std::size_t>(B) * sizeof(std::int32_t)));
      cuda::check(cudaMemcpyAsync(ht, dtok_.data(), static_cast<std::size_t>(B) * sizeof(std::int32_t),
                                  cudaMemcpyDeviceToHost, stream_),
                  "token download");
      cuda::check(cudaStreamSynchronize(stream_), "decode");
      for (std::int64_t i = 0; i < B; ++i) {
        if (ht[i] < 0) fail(Errc::kInternal, "decode: the logits of sequence {} are NaN or all -inf", i);
        next_out[i] = ht[i];
      }
    } else {
      const std::size_t bytes = static_cast<std::size_t>(B * V_) * sizeof(float);
      auto* hl = static_cast<float*>(lstage_.get(bytes));
      cuda::check(cudaMemcpyAsync(hl, dlogits_.data(), bytes, cudaMemcpyDeviceToHost, stream_),
                  "logits download");
      cuda::check(cudaStreamSynchronize(stream_), "decode");
      std::memcpy(logits_out, hl, bytes);
    }
    for (CudaSession* s : ss) s->length_ += 1;
  }

  // Captures the decode forward of B rows into a graph; nullptr when a buffer the graph would use was
  // reallocated during the capture (the graph would hold a stale address).
  cudaGraphExec_t capture_decode(std::int64_t B, bool greedy) {
    const std::vector<const void*> before = graph_buffers_;
    cudaGraph_t graph = nullptr;
    cuda::check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed), "begin graph capture");
    try {
      enqueue_decode(B, greedy);
    } catch (...) {
      cudaStreamEndCapture(stream_, &graph);
      if (graph) cudaGraphDestroy(graph);
      cudaGetLastError();
      throw;
    }
    cuda::check(cudaStreamEndCapture(stream_, &graph), "end graph capture");
    const std::vector<const void*> after{din_.data(),  dx_.data(),    dh_.data(),         da_.data(),
                                         dy_.data(),   dq_.data(),    dcs_.data(),        dlogits_.data(),
                                         dtok_.data(), dattn_.data(), lin_scratch_.data()};
    cudaGraphExec_t exec = nullptr;
    if (after == before) {
      const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      cuda::check(e, "instantiate decode graph");
    } else {
      cudaGraphDestroy(graph);
      graph_buffers_ = after;
      drop_graphs();
    }
    return exec;
  }

  // The decode forward of B rows (every layer, final norm, lm_head, and the argmax when greedy), reading
  // its per-step inputs from din_; enqueues only (no host synchronisation, no allocation), so that it can
  // be captured. Dense weights, B <= kDecodeGemvRows: GEMV on fp32 activations (no rounding); larger
  // batches: the split bf16 GEMM (gemm_f32). NF4 weights: the fused NF4 GEMM up to kNf4GemmMaxRows (fused).
  void enqueue_decode(std::int64_t B, bool greedy) {
    const TextConfig& t = config_.text;
    const float eps = static_cast<float>(t.rms_norm_eps);
    const std::int64_t nq = nh_ * hd_, nkv = nkv_ * hd_, half = hd_ / 2;
    const int rows = static_cast<int>(B);
    // Which linears take their input fused (DLinear::gemv with a cuda::GemvInput): dense weights up to
    // kDecodeGemvRows sequences (the fp32 GEMV); NF4 weights up to kNf4GemmMaxRows by the fused NF4 GEMM,
    // whose first kernel forms the input, else one sequence by the NF4 GEMV.
    auto fused = [&](const DLinear& lin) {
      if (lin.format != cudaeng::WeightFormat::kNF4) return B <= kDecodeGemvRows;
      return B <= (lin.nf4_gemm_usable() ? cuda::kNf4GemmMaxRows : 1);
    };
    const DecodeLayout lay = decode_layout(B);
    const char* d = din_.as<char>();
    const auto* seqs = reinterpret_cast<const cuda::DecodeSeq*>(d + lay.seqs);
    const auto* pos = reinterpret_cast<const std::int64_t*>(d + lay.pos);
    const auto* ids = reinterpret_cast<const std::int32_t*>(d + lay.ids);
    float* x = dx_.as<float>();
    float* h32 = dh_.as<float>();
    float* y = dy_.as<float>();
    bf16* q = dq_.as<bf16>();
    float* cos = dcs_.as<float>();
    float* sin = cos + B * half;

    // Activations stay fp32 at every batch size: the GEMV reads them as they are, larger batches run the
    // two-term bf16 split GEMM (DLinear::gemm_f32), so a sequence's logits barely depend on its batch.
    // With the GEMV, each RMSNorm and the SwiGLU product are taken by the GEMV that reads them (its blocks
    // normalise x, or form silu(gate)·up, on the fly: cuda::GemvInput) instead of by kernels of their own.
    auto norm_linear = [&](const Buffer& nw, const DLinear& lin, float* out) {
      if (fused(lin)) {
        lin.gemv(lc_, x, rows, out, false, cuda::GemvInput{cuda::GemvIn::kRmsNorm, nw.as<float>(), eps});
      } else {
        cuda::rms_norm_f32(stream_, x, B, H_, H_, nw.as<float>(), eps, h32);
        lin.gemm_f32(lc_, h32, B, out, false);
      }
    };
    auto linear = [&](const DLinear& lin, const float* in, float* out, bool accumulate) {
      if (fused(lin))
        lin.gemv(lc_, in, rows, out, accumulate);
      else
        lin.gemm_f32(lc_, in, B, out, accumulate);
    };

    embed_.embed_rows(stream_, ids, nullptr, nullptr, B, x);
    cuda::mrope_tables(stream_, pos, B, inv_freq_.as<float>(), pair_stream_.as<std::int8_t>(),
                       static_cast<int>(half), cos, sin);
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      const DTextLayer& L = layers_[l];
      norm_linear(L.in_norm, L.qkv, y);
      const cuda::QkvDecodeSplit sp{y,
                                    nq + 2 * nkv,
                                    B,
                                    static_cast<int>(nh_),
                                    static_cast<int>(nkv_),
                                    static_cast<int>(hd_),
                                    cos,
                                    sin,
                                    q,
                                    seqs,
                                    static_cast<int>(l),
                                    kv_geo_};
      // With the tensor-core decode attention, the rope/split happens inside it (no launch of its own).
      if (!fused_rope_) cuda::rope_split_qkv_decode(stream_, sp);
      cuda::DecodeAttnArgs da{q,
                              nq,
                              seqs,
                              static_cast<int>(l),
                              kv_geo_,
                              h32,
                              nq,
                              static_cast<int>(nh_),
                              static_cast<int>(nkv_),
                              static_cast<int>(hd_),
                              rows,
                              dattn_.data(),
                              static_cast<int>(dec_rows_)};
      if (fused_rope_) {
        da.qkv = y;
        da.qkv_stride = nq + 2 * nkv;
        da.cos = cos;
        da.sin = sin;
      }
      cuda::decode_attention(stream_, da);
      linear(L.o, h32, x, true);
      norm_linear(L.post_norm, L.gate_up, y);
      if (fused(L.down)) {
        L.down.gemv(lc_, y, rows, x, true, cuda::GemvInput{cuda::GemvIn::kSiluMul});
      } else {
        cuda::silu_mul_f32(stream_, y, B, I_, h32);
        L.down.gemm_f32(lc_, h32, B, x, true);
      }
    }
    const DLinear& head = config_.text.tie_word_embeddings ? embed_ : lm_head_;
    norm_linear(norm_, head, dlogits_.as<float>());
    if (greedy)
      cuda::argmax_rows(stream_, dlogits_.as<float>(), B, V_, dtok_.as<std::int32_t>(),
                        dtok_.as<char>() + argmax_work_offset(B));
  }

  ModelConfig config_;
  int device_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::Gemm> gemm_;
  Buffer lin_scratch_;
  cudaeng::LinearContext lc_;
  std::int64_t H_ = 0, hd_ = 0, nh_ = 0, nkv_ = 0, I_ = 0, V_ = 0;
  std::uint64_t weight_bytes_ = 0;
  cuda::KvPageGeometry kv_geo_;
  std::shared_ptr<PagePool> kv_pool_;
  bool fused_rope_ = false;  // decode attention does the rope/split (tensor-core kernel)
  std::mutex mutex_;
  // Weights.
  DLinear embed_, lm_head_;
  Buffer norm_;
  std::vector<DTextLayer> layers_;
  DLinear patch_;
  std::vector<DVisionBlock> vblocks_;
  Buffer ln_q_;
  DLinear mlp0_, mlp2_;
  Buffer inv_freq_, pair_stream_;
  // Work buffers (grown on demand).
  Buffer vin_, va_, vact_, vx_, vy_, vq_, features_;
  Buffer tin_, tx_, ta_, ty_, tq_, tcs_, th32_, tkv_, logits_dev_;
  HostStage vstage_, tstage_, lstage_;
  // Decode step: its own buffers (fixed addresses while graphs use them) and the captured graphs.
  Buffer din_, dx_, dh_, da_, dy_, dq_, dcs_, dlogits_, dtok_, dattn_;
  HostStage dstage_;
  std::int64_t dec_rows_ = 0;  // rows the decode buffers hold
  bool use_graphs_ = true;
  std::map<std::pair<int, bool>, cudaGraphExec_t> graphs_;  // by (batch, greedy)
  std::set<std::pair<int, bool>> ran_eagerly_;              // keys run once without a graph
  std::vector<const void*> graph_buffers_;                  // buffer addresses the graphs were captured with
};

}  // namespace

bool cuda_available() {
  int n = 0;
  const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  cudaGetLastError();
  return ok;
}

std::unique_ptr<Model> load_cuda_model(const ModelConfig& config, const Weights& weights, int device) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError();
    fail(Errc::kUnsupported, "--device cuda: no usable NVIDIA GPU was found");
  }
  if (device < 0 || device >= n)
    fail(Errc::kInvalidInput, "--device cuda:{}: this machine has {} GPU(s)", device, n);
  return std::make_unique<CudaModel>(config, weights, device);
}

std::optional<GpuMemory> gpu_memory(const Model& model) {
  const auto* m = dynamic_cast<const CudaModel*>(&model);
  if (!m) return std::nullopt;
  const cuda::MemoryStats s = m->memory();
  return GpuMemory{s.allocated, s.peak_allocated, s.weights, s.device_used, s.device_total};
}

void reset_gpu_peak(const Model& model) {
  if (dynamic_cast<const CudaModel*>(&model)) cuda::reset_peak();
}

}  // namespace mv::qwen25vl
#endif
