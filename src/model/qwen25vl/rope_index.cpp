// M-RoPE position ids for a prompt with images (spec §5.4; transformers' get_rope_index, v5 semantics:
// image tokens are the runs of image-pad ids, each run consumes the next image grid).
#include <algorithm>

#include "core/error.hpp"
#include "model/qwen25vl/model.hpp"

namespace mv::qwen25vl {

RopeIndex get_rope_index(const ModelConfig& config, std::span<const std::int32_t> ids,
                         std::span<const std::array<std::int64_t, 3>> image_grids_thw) {
  const std::int64_t n = static_cast<std::int64_t>(ids.size());
  const std::int64_t m = config.vision.spatial_merge_size;
  RopeIndex r;
  r.t.resize(static_cast<std::size_t>(n));
  r.h.resize(static_cast<std::size_t>(n));
  r.w.resize(static_cast<std::size_t>(n));
  std::int64_t next = 0;      // next free position
  std::int64_t max_pos = -1;  // largest position used
  std::size_t image = 0;
  std::int64_t i = 0;
  while (i < n) {
    if (ids[static_cast<std::size_t>(i)] != config.image_token_id) {
      r.t[i] = r.h[i] = r.w[i] = next;
      max_pos = std::max(max_pos, next);
      ++next;
      ++i;
      continue;
    }
    if (image >= image_grids_thw.size())
      fail(Errc::kInvalidInput, "prompt: image-pad token at index {} but only {} image(s) given", i,
           image_grids_thw.size());
    const auto [gt, gh, gw] = image_grids_thw[image];
    if (gt <= 0 || gh <= 0 || gw <= 0 || gh % m != 0 || gw % m != 0)
      fail(Errc::kInvalidInput, "image {}: grid_thw [{}, {}, {}] is invalid for spatial_merge_size {}", image,
           gt, gh, gw, m);
    const std::int64_t lh = gh / m, lw = gw / m, count = gt * lh * lw;
    if (count > n - i)
      fail(Errc::kInvalidInput,
           "prompt: image {} needs {} image-pad tokens from index {}, the prompt has {} tokens", image, count,
           i, n);
    for (std::int64_t k = 0; k < count; ++k) {
      if (ids[static_cast<std::size_t>(i + k)] != config.image_token_id)
        fail(Errc::kInvalidInput,
             "prompt: image {} needs {} consecutive image-pad tokens from index {}, found {}", image, count,
             i, k);
    }
    const std::int64_t s = next;
    for (std::int64_t f = 0; f < gt; ++f) {
      for (std::int64_t y = 0; y < lh; ++y) {
        for (std::int64_t x = 0; x < lw; ++x) {
          const std::int64_t k = i + (f * lh + y) * lw + x;
          r.t[k] = s + f;
          r.h[k] = s + y;
          r.w[k] = s + x;
          max_pos = std::max({max_pos, s + f, s + y, s + x});
        }
      }
    }
    next = s + std::max(lh, lw);
    i += count;
    ++image;
  }
  if (image != image_grids_thw.size())
    fail(Errc::kInvalidInput, "prompt: {} image(s) given but the prompt has image-pad runs for {}",
         image_grids_thw.size(), image);
  r.rope_delta = image == 0 ? 0 : max_pos + 1 - n;
  return r;
}

}  // namespace mv::qwen25vl
