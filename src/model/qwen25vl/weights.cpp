#include "model/qwen25vl/weights.hpp"

#include <fmt/ranges.h>

#include <cstdint>
#include <set>
#include <unordered_map>

#include "core/error.hpp"
#include "core/log.hpp"

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
    for (const auto& name : w_.store_.names()) {
      std::string canon = canonical_key(name);
      auto [it, inserted] = canon_.emplace(canon, name);
      if (!inserted)
        fail(Errc::kInvalidInput, "model {}: tensors '{}' and '{}' both name '{}'", dir_.string(), it->second,
             name, canon);
    }
  }

  TensorView get(const std::string& canon, const std::vector<std::int64_t>& shape) {
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
    auto it = canon_.find(canon);
    if (it != canon_.end() && quant::has_nf4_weight(w_.store_, it->second)) return nf4_matrix(it->second, out, in);
    ops::Matrix m = matrix(canon, {out, in});
    if (!options_.quantize_nf4 || !quant::should_quantize(module, skip_)) return m;
    if (!pool_) pool_ = std::make_unique<ThreadPool>(options_.threads);
    auto t = std::make_unique<quant::Nf4Tensor>(
        quant::quantize_nf4(m.data, m.dtype, {out, in}, {}, pool_.get()));
    w_.nf4_owned_bytes += t->packed.size() + t->absmax_q.size() + 4 * (t->nested_absmax.size() + t->absmax.size());
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

  Linear linear(const std::string& prefix, std::int64_t out, std::int64_t in, bool bias) {
    Linear l;
    l.w = linear_weight(prefix, out, in);
    if (bias) l.bias = vec(prefix + ".bias", out);
    return l;
  }

  bool has(const std::string& canon) const { return canon_.count(canon) != 0; }

  void finish() {
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
  std::unique_ptr<ThreadPool> pool_;  // quantizing at load
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
  w->text.tied = t.tie_word_embeddings;
  if (t.tie_word_embeddings) {
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
