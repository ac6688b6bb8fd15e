#include "model/qwen25vl/vision.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.hpp"
#include "ops/ops.hpp"

namespace mv::qwen25vl {

namespace {
constexpr std::int64_t kMaxGridSide = 1 << 16;               // patches per side
constexpr std::int64_t kMaxPatches = std::int64_t{1} << 24;  // per ViT call
constexpr std::int64_t kMlpRowChunk = 512;                   // rows per SwiGLU chunk (bounds scratch)
}  // namespace

std::int64_t check_grids(const VisionConfig& c, std::span<const Grid> grids) {
  const std::int64_t m = c.spatial_merge_size;
  std::int64_t total = 0;
  for (std::size_t i = 0; i < grids.size(); ++i) {
    const auto [t, h, w] = grids[i];
    if (t <= 0 || h <= 0 || w <= 0 || t > kMaxGridSide || h > kMaxGridSide || w > kMaxGridSide)
      fail(Errc::kInvalidInput, "image {}: grid_thw [{}, {}, {}] is out of range", i, t, h, w);
    if (h % m != 0 || w % m != 0)
      fail(Errc::kInvalidInput,
           "image {}: grid_thw [{}, {}, {}] height/width are not multiples of spatial_merge_size {}", i, t, h,
           w, m);
    total += t * h * w;
    if (total > kMaxPatches)
      fail(Errc::kTooLarge, "images: {} patches in one vision call exceed the limit of {}", total,
           kMaxPatches);
  }
  return total;
}

std::int64_t check_pixel_values(const VisionConfig& c, std::span<const PixelValues> images,
                                std::vector<Grid>& grids) {
  const std::int64_t cols = std::int64_t{c.in_channels} * c.temporal_patch_size * c.patch_size * c.patch_size;
  std::int64_t rows = 0;
  for (std::size_t i = 0; i < images.size(); ++i) {
    const PixelValues& p = images[i];
    if (p.cols != cols)
      fail(Errc::kInvalidInput, "image {}: pixel rows have {} values, the vision config needs {}", i, p.cols,
           cols);
    grids.push_back(p.grid_thw);
    const std::int64_t expect = check_grids(c, std::span<const Grid>(&grids.back(), 1));
    if (p.rows != expect)
      fail(Errc::kInvalidInput, "image {}: {} pixel rows but grid_thw [{}, {}, {}] has {} patches", i, p.rows,
           p.grid_thw[0], p.grid_thw[1], p.grid_thw[2], expect);
    if (static_cast<std::int64_t>(p.data.size()) != p.rows * p.cols)
      fail(Errc::kInvalidInput, "image {}: pixel buffer holds {} floats, expected {}", i, p.data.size(),
           p.rows * p.cols);
    rows += p.rows;
  }
  return rows;
}

VisionLayout vision_layout(const VisionConfig& c, std::span<const Grid> grids) {
  check_grids(c, grids);
  const std::int64_t m = c.spatial_merge_size, unit = m * m;
  const std::int64_t vw = c.window_size / c.spatial_merge_size / c.patch_size;
  MV_CHECK(vw > 0, "window size {}", c.window_size);
  VisionLayout out;
  out.cu_window_seqlens.push_back(0);
  out.cu_seqlens.push_back(0);
  std::int64_t offset = 0;
  for (const auto& [t, h, w] : grids) {
    const std::int64_t lh = h / m, lw = w / m;
    for (std::int64_t f = 0; f < t; ++f) {
      for (std::int64_t y0 = 0; y0 < lh; y0 += vw) {
        for (std::int64_t x0 = 0; x0 < lw; x0 += vw) {
          const std::int64_t y1 = std::min(lh, y0 + vw), x1 = std::min(lw, x0 + vw);
          for (std::int64_t y = y0; y < y1; ++y)
            for (std::int64_t x = x0; x < x1; ++x)
              out.window_index.push_back(offset + f * lh * lw + y * lw + x);
          out.cu_window_seqlens.push_back(out.cu_window_seqlens.back() + (y1 - y0) * (x1 - x0) * unit);
        }
      }
      out.cu_seqlens.push_back(out.cu_seqlens.back() + h * w);
    }
    offset += t * lh * lw;
  }
  return out;
}

std::vector<std::array<std::int64_t, 2>> vision_patch_positions(const VisionConfig& c,
                                                                std::span<const Grid> grids) {
  const std::int64_t m = c.spatial_merge_size;
  std::vector<std::array<std::int64_t, 2>> pos;
  pos.reserve(static_cast<std::size_t>(check_grids(c, grids)));
  for (const auto& [t, h, w] : grids) {
    for (std::int64_t f = 0; f < t; ++f)
      for (std::int64_t bh = 0; bh < h / m; ++bh)
        for (std::int64_t bw = 0; bw < w / m; ++bw)
          for (std::int64_t mh = 0; mh < m; ++mh)
            for (std::int64_t mw = 0; mw < m; ++mw) pos.push_back({bh * m + mh, bw * m + mw});
  }
  return pos;
}

void vision_rotary_tables(const VisionConfig& c, std::span<const std::array<std::int64_t, 2>> positions,
                          float* cos, float* sin) {
  const int half = c.head_dim() / 2;  // rotary dim of the reference
  const int q = half / 2;             // frequencies per axis
  std::vector<float> inv(static_cast<std::size_t>(q));
  for (int i = 0; i < q; ++i) {
    const float expo = static_cast<float>(2 * i) / static_cast<float>(half);
    inv[static_cast<std::size_t>(i)] = 1.0f / std::pow(10000.0f, expo);
  }
  // Positions are small non-negative integers (patch rows and columns) that repeat across the image: the
  // values are computed once per distinct position and frequency and looked up (the same floats).
  std::int64_t max_pos = -1;
  for (const auto& p : positions) max_pos = std::max({max_pos, p[0], p[1]});
  const std::size_t qn = static_cast<std::size_t>(q);
  std::vector<float> ct(static_cast<std::size_t>(max_pos + 1) * qn), st(ct.size());
  for (std::int64_t v = 0; v <= max_pos; ++v) {
    for (int i = 0; i < q; ++i) {
      const float angle = static_cast<float>(v) * inv[static_cast<std::size_t>(i)];
      ct[static_cast<std::size_t>(v) * qn + static_cast<std::size_t>(i)] =
          static_cast<float>(std::cos(static_cast<double>(angle)));
      st[static_cast<std::size_t>(v) * qn + static_cast<std::size_t>(i)] =
          static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
  for (std::size_t n = 0; n < positions.size(); ++n) {
    for (int a = 0; a < 2; ++a) {
      const std::int64_t v = positions[n][static_cast<std::size_t>(a)];
      MV_CHECK(v >= 0, "vision rotary: negative position {}", v);
      std::memcpy(cos + n * half + a * q, ct.data() + static_cast<std::size_t>(v) * qn, sizeof(float) * qn);
      std::memcpy(sin + n * half + a * q, st.data() + static_cast<std::size_t>(v) * qn, sizeof(float) * qn);
    }
  }
}

std::vector<float> VisionEncoder::forward(const float* pixels, std::int64_t rows, std::span<const Grid> grids,
                                          ThreadPool* pool) const {
  const VisionConfig& c = config_;
  const std::int64_t N = check_grids(c, grids);
  if (N != rows)
    fail(Errc::kInvalidInput, "images: pixel rows {} differ from the grids' {} patches", rows, N);
  const std::int64_t D = c.hidden_size, Iv = c.intermediate_size, heads = c.num_heads, hd = c.head_dim();
  const std::int64_t unit = std::int64_t{c.spatial_merge_size} * c.spatial_merge_size, half = hd / 2;
  const std::int64_t tokens = N / unit;
  const float eps = 1e-6f;

  // Patch embedding (Conv3d with stride = kernel is one GEMM), then reorder into window order in units
  // of merge blocks, together with the rotary angles.
  std::vector<float> embedded(static_cast<std::size_t>(N * D));
  ops::linear(pixels, N, w_.patch_embed, nullptr, embedded.data(), pool);

  const VisionLayout layout = vision_layout(c, grids);
  const auto positions = vision_patch_positions(c, grids);
  std::vector<float> cos_raw(static_cast<std::size_t>(N * half)), sin_raw(cos_raw.size());
  vision_rotary_tables(c, positions, cos_raw.data(), sin_raw.data());

  std::vector<float> x(static_cast<std::size_t>(N * D));
  std::vector<float> cos(cos_raw.size()), sin(sin_raw.size());
  for (std::int64_t p = 0; p < tokens; ++p) {
    const std::int64_t src = layout.window_index[static_cast<std::size_t>(p)];
    std::memcpy(x.data() + p * unit * D, embedded.data() + src * unit * D, sizeof(float) * unit * D);
    std::memcpy(cos.data() + p * unit * half, cos_raw.data() + src * unit * half,
                sizeof(float) * unit * half);
    std::memcpy(sin.data() + p * unit * half, sin_raw.data() + src * unit * half,
                sizeof(float) * unit * half);
  }
  embedded = {};
  cos_raw = {};
  sin_raw = {};

  std::vector<float> u(static_cast<std::size_t>(N * D));
  std::vector<float> qkv(static_cast<std::size_t>(N * 3 * D));
  std::vector<float> attn(static_cast<std::size_t>(N * D));
  const std::int64_t chunk = std::min(N, kMlpRowChunk);
  std::vector<float> gate(static_cast<std::size_t>(chunk * Iv)), up(gate.size());

  for (std::size_t j = 0; j < w_.blocks.size(); ++j) {
    const VisionBlockWeights& B = w_.blocks[j];
    const bool full = std::find(c.fullatt_block_indexes.begin(), c.fullatt_block_indexes.end(),
                                static_cast<int>(j)) != c.fullatt_block_indexes.end();
    ops::rms_norm(x.data(), N, D, B.norm1.data(), eps, u.data(), pool);
    ops::linear(u.data(), N, B.qkv.w, B.qkv.b(), qkv.data(), pool);
    ops::rotary(qkv.data(), N, 3 * D, static_cast<int>(heads), static_cast<int>(hd), cos.data(), sin.data(),
                pool);
    ops::rotary(qkv.data() + D, N, 3 * D, static_cast<int>(heads), static_cast<int>(hd), cos.data(),
                sin.data(), pool);
    ops::attention_varlen(qkv.data(), qkv.data() + D, qkv.data() + 2 * D, 3 * D, static_cast<int>(heads),
                          static_cast<int>(hd), full ? layout.cu_seqlens : layout.cu_window_seqlens,
                          attn.data(), D, pool);
    ops::linear(attn.data(), N, B.proj.w, B.proj.b(), u.data(), pool);
    ops::add(x.data(), u.data(), N * D, pool);

    ops::rms_norm(x.data(), N, D, B.norm2.data(), eps, u.data(), pool);
    for (std::int64_t r0 = 0; r0 < N; r0 += chunk) {
      const std::int64_t n = std::min(chunk, N - r0);
      const ops::LinearJob jobs[] = {{B.gate.w, B.gate.b(), gate.data()}, {B.up.w, B.up.b(), up.data()}};
      ops::linear_multi(u.data() + r0 * D, n, jobs, pool);
      ops::silu_mul(gate.data(), up.data(), gate.data(), n * Iv, pool);
      ops::linear(gate.data(), n, B.down.w, B.down.b(), attn.data() + r0 * D, pool);
    }
    ops::add(x.data(), attn.data(), N * D, pool);
  }
  qkv = {};
  gate = {};
  up = {};

  // Patch merger: RMSNorm per patch, groups of `unit` consecutive rows -> one row, MLP with exact GELU.
  ops::rms_norm(x.data(), N, D, w_.ln_q.data(), eps, u.data(), pool);
  ops::linear(u.data(), tokens, w_.mlp0.w, w_.mlp0.b(), attn.data(), pool);
  ops::gelu(attn.data(), tokens * unit * D, pool);
  const std::int64_t O = c.out_hidden_size;
  std::vector<float> merged(static_cast<std::size_t>(tokens * O));
  ops::linear(attn.data(), tokens, w_.mlp2.w, w_.mlp2.b(), merged.data(), pool);

  // Undo the window order: row p goes back to merged-token id window_index[p].
  std::vector<float> out(merged.size());
  for (std::int64_t p = 0; p < tokens; ++p) {
    const std::int64_t dst = layout.window_index[static_cast<std::size_t>(p)];
    std::memcpy(out.data() + dst * O, merged.data() + p * O, sizeof(float) * O);
  }
  return out;
}

}  // namespace mv::qwen25vl
