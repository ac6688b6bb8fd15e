// Parity of the CPU engine with transformers on the committed fixtures (tests/fixtures/model/<name>/):
// the checkpoint is rewritten by random-checkpoint from config.json + seed (its sha256 must match the one
// the reference was made from), then prompt ids, image grids and pixels, M-RoPE positions, vision
// features, last-position logits, teacher-forced step logits and 24 greedy tokens are compared with
// what tools/reference/make_fixtures.py recorded from transformers (float32, eager attention, CPU).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/numeric.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "io/image.hpp"
#include "model/qwen25vl/generator.hpp"
#include "model/qwen25vl/model.hpp"
#include "model/qwen25vl/random_checkpoint.hpp"
#include "text/chat_template.hpp"
#include "text/tokenizer.hpp"
#include "vision/preprocess.hpp"

namespace fs = std::filesystem;
using namespace mv;
using namespace mv::qwen25vl;

namespace {

const fs::path kFixtures = fs::path(MV_FIXTURES_DIR) / "model";
constexpr double kLogitsRelL2 = 1e-4;

using mv::test::rel_l2;

DType parse_dtype_name(const std::string& s) {
  if (s == "bf16") return DType::kBF16;
  if (s == "f16") return DType::kF16;
  return DType::kF32;
}

// Everything one fixture needs, built once per test binary run.
struct Prepared {
  std::string name;
  nlohmann::json fixture, expected;
  fs::path dir;
  std::string sha256;
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<ChatMessage> messages;
  std::vector<ImageRGB8> images;
  std::vector<float> data;  // expected.f32
  std::span<const float> array(const char* key) const {
    const auto& d = expected["data"];
    if (!d.contains(key)) return {};
    const auto off = d[key]["offset"].get<std::size_t>(), n = d[key]["count"].get<std::size_t>();
    MV_CHECK(off + n <= data.size(), "{}: {} is outside expected.f32", name, key);
    return {data.data() + off, n};
  }
  ~Prepared() {
    model.reset();
    std::error_code ec;
    if (!dir.empty()) fs::remove_all(dir, ec);
  }
};

std::vector<ChatMessage> to_messages(const nlohmann::json& j, std::vector<std::string>& image_paths) {
  std::vector<ChatMessage> out;
  for (const auto& m : j) {
    ChatMessage msg;
    msg.role = m["role"].get<std::string>();
    if (m["content"].is_string()) {
      msg.parts.push_back({ChatPart::Kind::kText, m["content"].get<std::string>()});
    } else {
      for (const auto& p : m["content"]) {
        if (p["type"] == "image") {
          msg.parts.push_back({ChatPart::Kind::kImage, {}});
          image_paths.push_back(p["image"].get<std::string>());
        } else {
          msg.parts.push_back({ChatPart::Kind::kText, p["text"].get<std::string>()});
        }
      }
    }
    out.push_back(std::move(msg));
  }
  return out;
}

Prepared& prepared(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Prepared>> cache;
  auto& slot = cache[name];
  if (slot) return *slot;
  auto p = std::make_unique<Prepared>();
  p->name = name;
  const fs::path fdir = kFixtures / name;
  p->fixture = nlohmann::json::parse(read_file(fdir / "fixture.json"));
  p->expected = nlohmann::json::parse(read_file(fdir / "expected.json"));
  const std::string blob = read_file(fdir / p->expected["data_file"].get<std::string>());
  p->data.resize(blob.size() / sizeof(float));
  std::memcpy(p->data.data(), blob.data(), p->data.size() * sizeof(float));

  p->dir = fs::temp_directory_path() / fmt::format("mv-parity-{}-{}", name, ::getpid());
  RandomCheckpointOptions opt;
  opt.seed = p->fixture["seed"].get<std::uint64_t>();
  opt.dtype = parse_dtype_name(p->fixture["dtype"].get<std::string>());
  opt.init_std = p->fixture.value("init_std", 0.02);
  write_random_checkpoint(random_checkpoint_config((fdir / "config.json").string()), p->dir, opt);
  p->sha256 = sha256_file_hex(p->dir / "model.safetensors");
  p->model = Model::load(p->dir);
  p->tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_model_dir(p->dir));
  std::vector<std::string> paths;
  p->messages = to_messages(p->fixture["messages"], paths);
  for (const auto& path : paths) p->images.push_back(load_image(kFixtures / path));
  slot = std::move(p);
  return *slot;
}

std::vector<PixelValues> hf_pixels(const Prepared& p) {
  std::vector<PixelValues> out;
  const auto all = p.array("pixel_values");
  std::size_t row = 0;
  for (const auto& g : p.expected["image_grid_thw"]) {
    PixelValues px;
    px.grid_thw = {g[0].get<std::int64_t>(), g[1].get<std::int64_t>(), g[2].get<std::int64_t>()};
    px.rows = px.grid_thw[0] * px.grid_thw[1] * px.grid_thw[2];
    px.cols = p.expected["pixel_values"]["shape"][1].get<std::int64_t>();
    const std::size_t n = static_cast<std::size_t>(px.rows * px.cols);
    px.data.assign(all.begin() + static_cast<std::ptrdiff_t>(row),
                   all.begin() + static_cast<std::ptrdiff_t>(row + n));
    row += n;
    out.push_back(std::move(px));
  }
  return out;
}

std::vector<std::int32_t> expected_ids(const Prepared& p) {
  return p.expected["input_ids"].get<std::vector<std::int32_t>>();
}

class Parity : public ::testing::TestWithParam<std::string> {};

}  // namespace

TEST_P(Parity, CheckpointBytesMatchTheReference) {
  auto& p = prepared(GetParam());
  EXPECT_EQ(p.sha256, p.expected["model_safetensors_sha256"].get<std::string>())
      << "random-checkpoint no longer writes the bytes the transformers reference was made from";
}

TEST_P(Parity, PromptIds) {
  auto& p = prepared(GetParam());
  std::vector<std::int64_t> image_tokens;
  for (const auto& g : p.expected["image_grid_thw"])
    image_tokens.push_back(g[0].get<std::int64_t>() * g[1].get<std::int64_t>() * g[2].get<std::int64_t>() /
                           4);
  EXPECT_EQ(encode_chat(*p.tokenizer, p.messages, image_tokens, true), expected_ids(p));
}

TEST_P(Parity, ImagePreprocessing) {
  auto& p = prepared(GetParam());
  const auto pre = PreprocessConfig::load(p.dir);
  const auto hf = hf_pixels(p);
  ASSERT_EQ(hf.size(), p.images.size());
  for (std::size_t i = 0; i < p.images.size(); ++i) {
    const auto ours = preprocess_image(p.images[i], pre);
    EXPECT_EQ(ours.grid_thw, hf[i].grid_thw) << "image " << i;
    ASSERT_EQ(ours.data.size(), hf[i].data.size()) << "image " << i;
    double max_diff = 0;
    std::size_t over = 0;
    for (std::size_t k = 0; k < ours.data.size(); ++k) {
      const double d = std::abs(double(ours.data[k]) - hf[i].data[k]);
      max_diff = std::max(max_diff, d);
      over += d > 1e-5;
    }
    // One uint8 step after normalisation is 1/255/0.27 = 0.0146: equal resampling gives ~1e-7.
    EXPECT_LE(max_diff, 1e-5) << "image " << i << ": " << over << " of " << ours.data.size()
                              << " values differ by more than 1e-5";
  }
}

TEST_P(Parity, RopePositions) {
  auto& p = prepared(GetParam());
  const auto& pos = p.expected["position_ids"];
  std::vector<std::array<std::int64_t, 3>> grids;
  for (const auto& g : p.expected["image_grid_thw"])
    grids.push_back({g[0].get<std::int64_t>(), g[1].get<std::int64_t>(), g[2].get<std::int64_t>()});
  const auto ids = expected_ids(p);
  const RopeIndex r = get_rope_index(p.model->config(), ids, grids);
  if (pos.is_null()) {
    // Text only: transformers leaves the positions to the language model, which counts 0..L-1.
    ASSERT_TRUE(grids.empty());
    std::vector<std::int64_t> seq(ids.size());
    for (std::size_t i = 0; i < seq.size(); ++i) seq[i] = static_cast<std::int64_t>(i);
    EXPECT_EQ(r.t, seq);
    EXPECT_EQ(r.h, seq);
    EXPECT_EQ(r.w, seq);
    EXPECT_EQ(r.rope_delta, 0);
    return;
  }
  // transformers may pass 4 rows (text positions first, then t, h, w): the last three are M-RoPE's.
  const auto& rows = pos["values"];
  ASSERT_GE(rows.size(), 3u);
  const std::size_t base = rows.size() - 3;
  EXPECT_EQ(r.t, rows[base + 0].get<std::vector<std::int64_t>>());
  EXPECT_EQ(r.h, rows[base + 1].get<std::vector<std::int64_t>>());
  EXPECT_EQ(r.w, rows[base + 2].get<std::vector<std::int64_t>>());
  if (!p.expected["rope_deltas"].is_null())
    EXPECT_EQ(r.rope_delta, p.expected["rope_deltas"][0].get<std::int64_t>());
}

TEST_P(Parity, VisionFeatures) {
  auto& p = prepared(GetParam());
  const auto want = p.array("image_features");
  if (want.empty()) GTEST_SKIP() << "text-only fixture";
  const auto got = p.model->encode_images(hf_pixels(p));
  ASSERT_EQ(got.size(), want.size());
  const double e = rel_l2(got, want);
  std::printf("[ parity   ] %s: vision features rel L2 %.2e\n", p.name.c_str(), e);
  EXPECT_LE(e, kLogitsRelL2);
}

TEST_P(Parity, LastLogitsWithReferencePixels) {
  auto& p = prepared(GetParam());
  const auto want = p.array("last_logits");
  const auto ids = expected_ids(p);
  auto session = p.model->new_session(static_cast<std::int64_t>(ids.size()) + 1);
  std::vector<float> logits(want.size());
  const auto pixels = hf_pixels(p);
  p.model->prefill(*session, ids, pixels, logits);
  const double e = rel_l2(logits, want);
  std::printf("[ parity   ] %s: last logits rel L2 %.2e (transformers float32 vs float64: %.2e)\n",
              p.name.c_str(), e, p.expected["fp32_vs_fp64_rel_l2"].get<double>());
  EXPECT_LE(e, kLogitsRelL2) << "transformers' own float32 vs float64 distance is "
                             << p.expected["fp32_vs_fp64_rel_l2"].get<double>();
}

TEST_P(Parity, TeacherForcedStepLogits) {
  auto& p = prepared(GetParam());
  const auto ids = expected_ids(p);
  const auto tokens = p.expected["greedy_tokens"].get<std::vector<std::int32_t>>();
  const auto& steps = p.expected["steps"];
  ASSERT_EQ(steps.size(), tokens.size());
  auto session = p.model->new_session(static_cast<std::int64_t>(ids.size() + tokens.size()));
  std::vector<float> logits(static_cast<std::size_t>(p.model->config().text.vocab_size));
  p.model->prefill(*session, ids, hf_pixels(p), logits);
  double worst = 0;
  for (std::size_t s = 0; s < tokens.size(); ++s) {
    const auto top_ids = steps[s]["top_ids"].get<std::vector<std::int64_t>>();
    const auto top_values = steps[s]["top_values"].get<std::vector<double>>();
    double scale = 0, err = 0;
    for (std::size_t k = 0; k < top_ids.size(); ++k) {
      scale = std::max(scale, std::abs(top_values[k]));
      err = std::max(err, std::abs(double(logits[static_cast<std::size_t>(top_ids[k])]) - top_values[k]));
    }
    EXPECT_LE(err, 1e-4 * std::max(scale, 1.0)) << "step " << s;
    worst = std::max(worst, err / std::max(scale, 1.0));
    if (s + 1 < tokens.size()) p.model->decode(*session, tokens[s], logits);
  }
  std::printf("[ parity   ] %s: teacher-forced top-%zu logits, worst relative error %.2e over %zu steps\n",
              p.name.c_str(), steps[0]["top_ids"].size(), worst, tokens.size());
}

TEST_P(Parity, GreedyTokens) {
  auto& p = prepared(GetParam());
  GenerateOptions opt;
  const auto want = p.expected["greedy_tokens"].get<std::vector<std::int32_t>>();
  opt.max_new_tokens = static_cast<int>(want.size());
  opt.ignore_eos = true;
  opt.keep_prompt_logits = true;
  const auto r = generate(*p.model, *p.tokenizer, p.messages, p.images, PreprocessConfig::load(p.dir), opt);
  EXPECT_EQ(r.prompt_ids, expected_ids(p));
  EXPECT_EQ(r.generated_ids, want);
  const double e = rel_l2(r.prompt_logits, p.array("last_logits"));
  std::printf("[ parity   ] %s: end to end (our preprocessing) last logits rel L2 %.2e\n", p.name.c_str(), e);
  EXPECT_LE(e, kLogitsRelL2) << "end to end, our preprocessing";
  ASSERT_TRUE(p.expected["argmax_consistent"].get<bool>()) << "the reference's tokens are not its argmax";
}

TEST_P(Parity, GreedyTextDecodesLikeTransformers) {
  auto& p = prepared(GetParam());
  const auto tokens = p.expected["greedy_tokens"].get<std::vector<std::int32_t>>();
  EXPECT_EQ(p.tokenizer->decode(tokens, true), p.expected["greedy_text"].get<std::string>());
}

// Model::decode_batch's default (one sequence after the other) gives exactly what decode gives, for
// sequences of different lengths, and decode_batch_greedy picks the first maximum of those logits.
TEST(DecodeBatch, DefaultEqualsSequentialDecodeAndChecksInput) {
  auto& p = prepared("tied_bf16_image");
  Model& m = *p.model;
  const auto ids = expected_ids(p);
  const auto tokens = p.expected["greedy_tokens"].get<std::vector<std::int32_t>>();
  const std::size_t V = static_cast<std::size_t>(m.config().text.vocab_size);
  const auto px = hf_pixels(p);
  std::vector<float> scratch(V);
  // Two pairs of twins: [0] the prompt, [1] the prompt and one more token.
  std::vector<std::unique_ptr<Session>> batch, seq;
  for (int twin = 0; twin < 2; ++twin)
    for (int i = 0; i < 2; ++i) {
      auto s = m.new_session(static_cast<std::int64_t>(ids.size()) + 8);
      m.prefill(*s, ids, px, scratch);
      if (i == 1) m.decode(*s, tokens[0], scratch);
      (twin == 0 ? batch : seq).push_back(std::move(s));
    }
  const std::vector<Session*> b{batch[0].get(), batch[1].get()};
  std::vector<float> got(2 * V), want(V);
  std::vector<std::int32_t> next(2);
  for (std::size_t step = 0; step < 3; ++step) {
    const std::vector<std::int32_t> tok{tokens[step + 1], tokens[step + 2]};
    if (step == 2) {
      m.decode_batch_greedy(b, tok, next);
    } else {
      m.decode_batch(b, tok, got);
    }
    for (std::size_t i = 0; i < 2; ++i) {
      m.decode(*seq[i], tok[i], want);
      EXPECT_EQ(batch[i]->length(), seq[i]->length());
      if (step == 2) {
        const auto first_max = std::max_element(want.begin(), want.end()) - want.begin();
        EXPECT_EQ(next[i], static_cast<std::int32_t>(first_max)) << "sequence " << i;
      } else {
        const std::vector<float> row(got.begin() + static_cast<std::ptrdiff_t>(i * V),
                                     got.begin() + static_cast<std::ptrdiff_t>((i + 1) * V));
        EXPECT_TRUE(row == want) << "sequence " << i << " step " << step << ": rel L2 " << rel_l2(row, want);
      }
    }
  }
  EXPECT_FALSE(m.greedy_on_device());

  // Bad input is rejected before any sequence moves.
  const auto len0 = batch[0]->length(), len1 = batch[1]->length();
  const std::vector<std::int32_t> two{1, 2};
  const std::vector<Session*> with_null{batch[0].get(), nullptr}, dup{batch[0].get(), batch[0].get()};
  auto code = [](auto&& fn) {  // the error's code, or -1 when nothing was thrown
    try {
      fn();
    } catch (const Error& e) {
      return static_cast<int>(e.code());
    }
    return -1;
  };
  const int kInvalid = static_cast<int>(Errc::kInvalidInput);
  EXPECT_EQ(code([&] { m.decode_batch(with_null, two, got); }), kInvalid);
  EXPECT_EQ(code([&] { m.decode_batch(dup, two, got); }), kInvalid);
  EXPECT_EQ(code([&] { m.decode_batch(b, std::vector<std::int32_t>{1}, got); }), kInvalid);
  std::vector<float> small(V);
  EXPECT_EQ(code([&] { m.decode_batch(b, two, small); }), kInvalid);
  std::vector<std::int32_t> one(1);
  EXPECT_EQ(code([&] { m.decode_batch_greedy(b, two, one); }), kInvalid);
  EXPECT_EQ(batch[0]->length(), len0);
  EXPECT_EQ(batch[1]->length(), len1);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Parity,
                         ::testing::Values("tied_bf16_image", "untied_f16_two_images", "text_only_f32"),
                         [](const auto& info) { return info.param; });
