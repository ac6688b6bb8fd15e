#include "model/qwen25vl/weights.hpp"

#include <fmt/ranges.h>

#include <cstdint>
#include <cstring>
#include <set>
#include <unordered_map>

#include "core/error.hpp"
#include "core/log.hpp"
#include "core/progress.hpp"

namespace mv::qwen25vl {

namespace {

std::string shape_str(const std::vector<std::int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

}  // namespace

void validate_config(const ModelConfig& c, const std::string& where) {
  const TextConfig& t = c.text;
  const VisionConfig& v = c.vision;
  auto bad = [&](const char* field, auto value, const char* why) {
    fail(Errc::kInvalidInput, "{}: config field {} = {} is invalid: {}", where, field, value, why);
  };
  if (t.hidden_size <= 0) bad("hidden_size", t.hidden_size, "must be positive");
  if (t.num_hidden_layers <= 0) bad("num_hidden_layers", t.num_hidden_layers, "must be positive");
  if (t.num_attention_heads <= 0 || t.hidden_size % t.num_attention_heads != 0)
    bad("num_attention_heads", t.num_attention_heads, "must divide hidden_size");
  if (t.num_key_value_heads <= 0 || t.num_attention_heads % t.num_key_value_heads != 0)
    bad("num_key_value_heads", t.num_key_value_heads, "must divide num_attention_heads");
  if (t.head_dim() % 2 != 0) bad("hidden_size/num_attention_heads", t.head_dim(), "head_dim must be even");
  if (t.intermediate_size <= 0) bad("intermediate_size", t.intermediate_size, "must be positive");
  if (t.vocab_size <= 0) bad("vocab_size", t.vocab_size, "must be positive");
  if (!(t.rms_norm_eps > 0.0)) bad("rms_norm_eps", t.rms_norm_eps, "must be positive");
  if (!(t.rope_theta > 0.0)) bad("rope_theta", t.rope_theta, "must be positive");
  const auto& s = t.mrope_section;
  if (s[0] < 0 || s[1] < 0 || s[2] < 0 || s[0] + s[1] + s[2] != t.head_dim() / 2)
    fail(Errc::kInvalidInput, "{}: config mrope_section [{}, {}, {}] must sum to head_dim/2 = {}", where,
         s[0], s[1], s[2], t.head_dim() / 2);
  if (t.hidden_act != "silu")
    fail(Errc::kUnsupported, "{}: text hidden_act '{}' is not supported (only silu)", where, t.hidden_act);

  if (v.depth <= 0) bad("vision_config.depth", v.depth, "must be positive");
  if (v.hidden_size <= 0) bad("vision_config.hidden_size", v.hidden_size, "must be positive");
  if (v.num_heads <= 0 || v.hidden_size % v.num_heads != 0)
    bad("vision_config.num_heads", v.num_heads, "must divide vision hidden_size");
  if (v.head_dim() % 4 != 0) bad("vision head_dim", v.head_dim(), "must be a multiple of 4 (2-D rotary)");
  if (v.intermediate_size <= 0)
    bad("vision_config.intermediate_size", v.intermediate_size, "must be positive");
  if (v.in_channels <= 0) bad("vision_config.in_channels", v.in_channels, "must be positive");
  if (v.patch_size <= 0) bad("vision_config.patch_size", v.patch_size, "must be positive");
  if (v.temporal_patch_size <= 0)
    bad("vision_config.temporal_patch_size", v.temporal_patch_size, "must be positive");
  if (v.spatial_merge_size <= 0)
    bad("vision_config.spatial_merge_size", v.spatial_merge_size, "must be positive");
  if (v.window_size / v.spatial_merge_size / v.patch_size <= 0)
    bad("vision_config.window_size", v.window_size, "must be at least spatial_merge_size * patch_size");
  if (v.out_hidden_size != t.hidden_size)
    fail(Errc::kInvalidInput, "{}: vision out_hidden_size {} differs from the text hidden_size {}", where,
         v.out_hidden_size, t.hidden_size);
  if (v.hidden_act != "silu")
    fail(Errc::kUnsupported, "{}: vision hidden_act '{}' is not supported (only silu)", where, v.hidden_act);
}

class WeightBinder {
 public:
  WeightBinder(Weights& w, const std::filesystem::path& dir, const WeightOptions& options)
      : w_(w), dir_(dir), options_(options), skip_(quant::effective_skip(options.skip)) {
    w_.store_ = TensorStore::open(dir);
    w_.adapter_ = options.adapter;
    if (options.adapter && !options.adapter->modules().empty())
      progress_ = std::make_unique<Progress>("merge LoRA", options.adapter->modules().size(), "modules");
    for (const auto& name : w_.store_.names()) {
      std::string canon = canonical_key(name);
      auto [it, inserted] = canon_.emplace(canon, name);
      if (!inserted)
        fail(Errc::kInvalidInput, "model {}: tensors '{}' and '{}' both name '{}'", dir_.string(), it->second,
             name, canon);
    }
  }

  // A tensor the adapter's modules_to_save replaces, or null.
  const TensorView* saved(const std::string& canon) const {
    if (!options_.adapter) return nullptr;
    const auto& s = options_.adapter->saved_tensors();
    auto it = s.find(canon);
    return it == s.end() ? nullptr : &it->second;
  }

  TensorView get(const std::string& canon, const std::vector<std::int64_t>& shape) {
    if (const TensorView* s = saved(canon)) {
      if (s->shape() != shape)
        fail(Errc::kInvalidInput, "adapter {}: tensor '{}' has shape {}, expected {} from config.json",
             options_.adapter->dir().string(), s->info->name, shape_str(s->shape()), shape_str(shape));
      if (saved_used_.insert(canon).second) ++w_.lora_saved;
      dtypes_.insert(dtype_name(s->dtype()));
      return *s;
    }
    auto it = canon_.find(canon);
    if (it == canon_.end()) fail(Errc::kNotFound, "model {}: tensor '{}' is missing", dir_.string(), canon);
    TensorView v = w_.store_.view(it->second);
    if (v.shape() != shape)
      fail(Errc::kInvalidInput, "model {}: tensor '{}' has shape {}, expected {} from config.json",
           dir_.string(), it->second, shape_str(v.shape()), shape_str(shape));
    if (v.dtype() != DType::kF32 && v.dtype() != DType::kF16 && v.dtype() != DType::kBF16)
      fail(Errc::kUnsupported, "model {}: tensor '{}' has dtype {}; only F32, F16 and BF16 are supported",
           dir_.string(), it->second, dtype_name(v.dtype()));
    std::int64_t numel = 1;
    for (auto d : shape) numel *= d;
    if (v.bytes.size() != static_cast<std::size_t>(numel) * dtype_size(v.dtype()))
      fail(Errc::kInvalidInput, "model {}: tensor '{}' holds {} bytes, expected {}", dir_.string(),
           it->second, v.bytes.size(), static_cast<std::size_t>(numel) * dtype_size(v.dtype()));
    used_.insert(canon);
    dtypes_.insert(dtype_name(v.dtype()));
    w_.mapped_bytes += v.bytes.size();
    return v;
  }

  ops::Matrix matrix(const std::string& canon, const std::vector<std::int64_t>& shape) {
    TensorView v = get(canon, shape);
    const std::int64_t rows = shape[0];
    const std::int64_t cols = v.numel() / rows;
    const auto addr = reinterpret_cast<std::uintptr_t>(v.bytes.data());
    if (addr % dtype_size(v.dtype()) != 0) {  // misaligned in the file: keep an aligned fp32 copy
      auto& copy = w_.owned_.emplace_back(static_cast<std::size_t>(v.numel()));
      to_f32(v, copy);
      return {copy.data(), DType::kF32, rows, cols};
    }
    return {v.bytes.data(), v.dtype(), rows, cols};
  }

  std::vector<float> vec(const std::string& canon, std::int64_t n) { return to_f32(get(canon, {n})); }

  // A Linear weight: NF4 when the checkpoint holds it so, else its float matrix, quantized to NF4 here
  // when the options ask for it and the module is one bitsandbytes would quantize.
  ops::Matrix linear_weight(const std::string& module, std::int64_t out, std::int64_t in) {
    const std::string canon = module + ".weight";
    const LoraModule* lora = options_.adapter ? options_.adapter->find(module) : nullptr;
    auto it = canon_.find(canon);
    if (!saved(canon) && it != canon_.end() && quant::has_nf4_weight(w_.store_, it->second))
      return lora ? merged_nf4(it->second, out, in, *lora) : nf4_matrix(it->second, out, in);
    ops::Matrix m = matrix(canon, {out, in});
    // With --quantize nf4 the adapter is merged in the checkpoint's dtype first, then quantized once.
    if (lora) m = merged(m, *lora);
    if (!options_.quantize_nf4 || !quant::should_quantize(module, skip_)) return m;
    if (options_.quantize_on_device) {  // the CUDA engine quantizes it while uploading (nf4_at_load)
      ++w_.nf4_weights;
      dtypes_.insert("NF4");
      return m;
    }
    auto t = std::make_unique<quant::Nf4Tensor>(quant::quantize_nf4(m.data, m.dtype, {out, in}, {}, pool()));
    w_.nf4_owned_bytes +=
        t->packed.size() + t->absmax_q.size() + 4 * (t->nested_absmax.size() + t->absmax.size());
    auto& view = w_.nf4_views_.emplace_back(std::make_unique<quant::Nf4View>(t->view()));
    w_.nf4_owned_.push_back(std::move(t));
    ++w_.nf4_weights;
    dtypes_.insert("NF4");
    return {view->packed, DType::kU8, out, in, view.get()};
  }

  ops::Matrix nf4_matrix(const std::string& key, std::int64_t out, std::int64_t in) {
    std::unique_ptr<quant::Nf4Weight> q;
    try {
      q = quant::load_nf4_weight(w_.store_, key);
    } catch (const Error& e) {
      fail(e.code(), "model {}: {}", dir_.string(), e.what());
    }
    if (q->shape != std::vector<std::int64_t>{out, in})
      fail(Errc::kInvalidInput, "model {}: NF4 tensor '{}' has shape {}, expected {} from config.json",
           dir_.string(), key, shape_str(q->shape), shape_str({out, in}));
    for (const char* suffix : {"", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                               ".quant_state.bitsandbytes__nf4"}) {
      const std::string name = key + suffix;
      if (w_.store_.contains(name)) {
        used_.insert(canonical_key(name));
        w_.mapped_bytes += w_.store_.view(name).bytes.size();
      }
    }
    dtypes_.insert("NF4");
    auto& view = w_.nf4_views_.emplace_back(std::make_unique<quant::Nf4View>(q->view));
    w_.nf4_mapped_.push_back(std::move(q));
    ++w_.nf4_weights;
    return {view->packed, DType::kU8, out, in, view.get()};
  }

  ThreadPool* pool() {
    if (!pool_) pool_ = std::make_unique<ThreadPool>(options_.threads);
    return pool_.get();
  }

  // W + s·B·A for a 16/32-bit weight: fp32 sum, rounded once to W's dtype (round to nearest even), held
  // by Weights.
  ops::Matrix merged(const ops::Matrix& m, const LoraModule& l) {
    const std::int64_t n = m.rows * m.cols;
    std::vector<float> w32(static_cast<std::size_t>(n));
    const std::int64_t grain = 1 << 16;
    pool()->parallel_for(
        n,
        [&](std::int64_t b, std::int64_t e) {
          if (m.dtype == DType::kF32) {
            std::memcpy(w32.data() + b, static_cast<const float*>(m.data) + b,
                        static_cast<std::size_t>(e - b) * 4);
            return;
          }
          const auto* p = static_cast<const std::uint16_t*>(m.data);
          for (std::int64_t i = b; i < e; ++i)
            w32[static_cast<std::size_t>(i)] = m.dtype == DType::kBF16 ? bf16_to_f32(p[i]) : f16_to_f32(p[i]);
        },
        grain);
    add_lora_delta(l, w32, pool());
    note_merged(l);
    if (m.dtype == DType::kF32) {
      auto& c = w_.owned_.emplace_back(std::move(w32));
      w_.lora_owned_bytes += c.size() * 4;
      return {c.data(), DType::kF32, m.rows, m.cols};
    }
    auto& c = w_.owned16_.emplace_back(static_cast<std::size_t>(n));
    pool()->parallel_for(
        n,
        [&](std::int64_t b, std::int64_t e) {
          for (std::int64_t i = b; i < e; ++i) {
            const float v = w32[static_cast<std::size_t>(i)];
            c[static_cast<std::size_t>(i)] = m.dtype == DType::kBF16 ? f32_to_bf16(v) : f32_to_f16(v);
          }
        },
        grain);
    w_.lora_owned_bytes += c.size() * 2;
    return {c.data(), m.dtype, m.rows, m.cols};
  }

  // An NF4 weight with a LoRA merged in, as PEFT's Linear4bit.merge does: dequantize to the original
  // dtype, add the fp32 delta, quantize again (same block size and double quantization). Lossy.
  ops::Matrix merged_nf4(const std::string& key, std::int64_t out, std::int64_t in, const LoraModule& l) {
    const ops::Matrix q = nf4_matrix(key, out, in);
    const DType original = w_.nf4_mapped_.back()->dtype;
    const std::int64_t n = out * in;
    std::vector<float> w32(static_cast<std::size_t>(n));
    quant::dequantize(*q.nf4, w32, pool());
    if (original == DType::kBF16 || original == DType::kF16)
      pool()->parallel_for(
          n,
          [&](std::int64_t b, std::int64_t e) {
            for (std::int64_t i = b; i < e; ++i) {
              float& v = w32[static_cast<std::size_t>(i)];
              v = original == DType::kBF16 ? bf16_to_f32(f32_to_bf16(v)) : f16_to_f32(f32_to_f16(v));
            }
          },
          1 << 16);
    add_lora_delta(l, w32, pool());
    quant::QuantizeOptions qo;
    qo.blocksize = q.nf4->blocksize;
    qo.double_quant = q.nf4->nested();
    auto t = std::make_unique<quant::Nf4Tensor>(
        quant::quantize_nf4(w32.data(), DType::kF32, {out, in}, qo, pool()));
    t->dtype = original;
    w_.nf4_owned_bytes +=
        t->packed.size() + t->absmax_q.size() + 4 * (t->nested_absmax.size() + t->absmax.size());
    auto& view = w_.nf4_views_.emplace_back(std::make_unique<quant::Nf4View>(t->view()));
    w_.nf4_owned_.push_back(std::move(t));
    ++w_.lora_merged_nf4;
    note_merged(l);
    return {view->packed, DType::kU8, out, in, view.get()};
  }

  void note_merged(const LoraModule&) {
    ++w_.lora_merged;
    if (progress_) progress_->advance(1);
  }

  Linear linear(const std::string& prefix, std::int64_t out, std::int64_t in, bool bias) {
    Linear l;
    l.w = linear_weight(prefix, out, in);
    l.nf4_at_load = options_.quantize_nf4 && options_.quantize_on_device && l.w.nf4 == nullptr &&
                    quant::should_quantize(prefix, skip_);
    if (bias) l.bias = vec(prefix + ".bias", out);
    return l;
  }

  bool has(const std::string& canon) const { return canon_.count(canon) != 0 || saved(canon) != nullptr; }

  void finish() {
    if (progress_) progress_->finish();
    if (options_.adapter) {
      for (const auto& [canon, view] : options_.adapter->saved_tensors())
        if (!saved_used_.count(canon))
          fail(Errc::kInvalidInput,
               "adapter {}: tensor '{}' (modules_to_save) replaces no tensor the engine uses",
               options_.adapter->dir().string(), view.info->name);
      if (w_.lora_merged != options_.adapter->modules().size())
        fail(Errc::kInternal, "adapter {}: {} of {} LoRA modules were merged",
             options_.adapter->dir().string(), w_.lora_merged, options_.adapter->modules().size());
    }
    std::size_t unused = 0;
    for (const auto& [canon, name] : canon_) unused += used_.count(canon) ? 0 : 1;
    if (unused)
      spdlog::debug("model {}: {} checkpoint tensors are not used by the engine", dir_.string(), unused);
    w_.dtype_summary = fmt::format("{}", fmt::join(dtypes_, "+"));
  }

 private:
  Weights& w_;
  std::filesystem::path dir_;
  WeightOptions options_;
  std::vector<std::string> skip_;
  std::unique_ptr<ThreadPool> pool_;                    // quantizing and merging at load
  std::unique_ptr<Progress> progress_;                  // merging a LoRA adapter (counts only)
  std::set<std::string> saved_used_;                    // adapter modules_to_save tensors bound
  std::unordered_map<std::string, std::string> canon_;  // canonical -> key in the file
  std::set<std::string> used_;
  std::set<std::string> dtypes_;
};

std::unique_ptr<Weights> Weights::load(const std::filesystem::path& dir, const ModelConfig& c,
                                       const WeightOptions& options) {
  std::unique_ptr<Weights> w(new Weights());
  WeightBinder b(*w, dir, options);
  const TextConfig& t = c.text;
  const std::int64_t H = t.hidden_size, V = t.vocab_size, I = t.intermediate_size;
  const std::int64_t hd = t.head_dim(), nq = t.num_attention_heads * hd, nkv = t.num_key_value_heads * hd;

  w->text.embed = b.matrix("model.embed_tokens.weight", {V, H});
  w->text.layers.resize(static_cast<std::size_t>(t.num_hidden_layers));
  for (int i = 0; i < t.num_hidden_layers; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    auto& L = w->text.layers[static_cast<std::size_t>(i)];
    L.input_norm = b.vec(p + "input_layernorm.weight", H);
    L.post_norm = b.vec(p + "post_attention_layernorm.weight", H);
    L.q = b.linear(p + "self_attn.q_proj", nq, H, true);
    L.k = b.linear(p + "self_attn.k_proj", nkv, H, true);
    L.v = b.linear(p + "self_attn.v_proj", nkv, H, true);
    L.o = b.linear(p + "self_attn.o_proj", H, nq, false);
    L.gate = b.linear(p + "mlp.gate_proj", I, H, false);
    L.up = b.linear(p + "mlp.up_proj", I, H, false);
    L.down = b.linear(p + "mlp.down_proj", H, I, false);
  }
  w->text.norm = b.vec("model.norm.weight", H);
  // An adapter's modules_to_save copy of lm_head unties it from the embeddings (PEFT wraps a copy).
  const bool lm_head_saved = options.adapter && options.adapter->saved_tensors().count("lm_head.weight");
  w->text.tied = t.tie_word_embeddings && !lm_head_saved;
  if (w->text.tied) {
    w->text.lm_head = w->text.embed;
  } else {
    if (!b.has("lm_head.weight") && !b.has("lm_head.weight.quant_state.bitsandbytes__nf4"))
      fail(Errc::kNotFound,
           "model {}: tensor 'lm_head.weight' is missing and config.json says tie_word_embeddings = false",
           dir.string());
    w->text.lm_head = b.linear_weight("lm_head", V, H);
  }

  const VisionConfig& v = c.vision;
  const std::int64_t D = v.hidden_size, Iv = v.intermediate_size,
                     unit = std::int64_t{v.spatial_merge_size} * v.spatial_merge_size;
  w->vision.patch_embed = b.matrix("visual.patch_embed.proj.weight",
                                   {D, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size});
  w->vision.blocks.resize(static_cast<std::size_t>(v.depth));
  for (int j = 0; j < v.depth; ++j) {
    const std::string p = fmt::format("visual.blocks.{}.", j);
    auto& B = w->vision.blocks[static_cast<std::size_t>(j)];
    B.norm1 = b.vec(p + "norm1.weight", D);
    B.norm2 = b.vec(p + "norm2.weight", D);
    B.qkv = b.linear(p + "attn.qkv", 3 * D, D, true);
    B.proj = b.linear(p + "attn.proj", D, D, true);
    B.gate = b.linear(p + "mlp.gate_proj", Iv, D, true);
    B.up = b.linear(p + "mlp.up_proj", Iv, D, true);
    B.down = b.linear(p + "mlp.down_proj", D, Iv, true);
  }
  w->vision.ln_q = b.vec("visual.merger.ln_q.weight", D);
  w->vision.mlp0 = b.linear("visual.merger.mlp.0", D * unit, D * unit, true);
  w->vision.mlp2 = b.linear("visual.merger.mlp.2", v.out_hidden_size, D * unit, true);
  b.finish();
  return w;
}

}  // namespace mv::qwen25vl
