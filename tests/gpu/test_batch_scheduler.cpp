// The server's continuous-batching scheduler on the CUDA engine (label gpu): sequences that share
// decode_batch steps (greedy steps pick on the device) against the serial generator on the same engine.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <future>
#include <string>
#include <vector>

#include "io/image.hpp"
#include "model/qwen25vl/generator.hpp"
#include "model/qwen25vl/model.hpp"
#include "model/qwen25vl/random_checkpoint.hpp"
#include "server/generation.hpp"

namespace fs = std::filesystem;
using mv::server::BatchScheduler;
using mv::server::ChatModel;
using mv::server::GenerationOutput;
using mv::server::GenerationRequest;

namespace {

mv::server::GenerationRequest request(const std::string& text, int max_tokens, bool image = false) {
  GenerationRequest g;
  mv::ChatMessage user;
  user.role = "user";
  if (image) {
    g.images.push_back(mv::load_image(std::string(MV_FIXTURES_DIR) + "/model/images/form_150x120.png"));
    user.parts.push_back({mv::ChatPart::Kind::kImage, {}});
  }
  user.parts.push_back({mv::ChatPart::Kind::kText, text});
  g.messages.push_back(std::move(user));
  g.max_tokens = max_tokens;
  return g;
}

}  // namespace

TEST(CudaBatchScheduler, SharedDecodeStepsGiveTheSerialGreedyAndSampledText) {
  if (!mv::qwen25vl::cuda_available()) GTEST_SKIP() << "no usable GPU (or built without CUDA)";
  const fs::path dir = fs::temp_directory_path() / ("mv_gpu_batch_" + std::to_string(::getpid()));
  auto config = mv::qwen25vl::random_checkpoint_config(std::string(MV_FIXTURES_DIR) +
                                                       "/model/tied_bf16_image/config.json");
  mv::qwen25vl::RandomCheckpointOptions o;
  o.seed = 101;
  o.init_std = 0.3;
  mv::qwen25vl::write_random_checkpoint(config, dir, o);
  auto model = ChatModel::load(dir, 0, "cuda");

  std::vector<GenerationRequest> requests;
  requests.push_back(request("Tell me a long story about a hospital.", 48));
  requests.back().stop_ids.clear();  // runs to its budget, so the others join it
  requests.push_back(request("Hello there", 16));
  requests.push_back(request("What does the form say?", 12, true));
  requests.push_back(request("List three medications.", 24));
  requests.push_back(request("x", 6));
  requests.push_back(request("Sampled", 20));
  requests.back().sampling.do_sample = true;
  requests.back().sampling.temperature = 0.8f;
  requests.back().sampling.top_p = 0.9f;
  requests.back().sampling.seed = 7;

  std::vector<mv::qwen25vl::GenerateResult> serial;
  for (const auto& g : requests) {
    mv::qwen25vl::GenerateOptions go;
    go.max_new_tokens = g.max_tokens;
    go.sampling = g.sampling;
    go.stop_ids = g.stop_ids;
    serial.push_back(mv::qwen25vl::generate(*model->model, *model->tokenizer, g.messages, g.images,
                                            model->preprocess, go));
  }
  {
    // Two rounds: all greedy (the steps pick on the device when the engine can), then with the sampled one
    // (the steps bring the logits to the host).
    for (const std::size_t count : {requests.size() - 1, requests.size()}) {
      SCOPED_TRACE(count);
      // Up to 4 sequences a decode step runs the fp32-activation GEMV, whose rows are exactly those of a
      // lone sequence, so the batched text must equal the serial one token for token. (Larger steps run
      // the split bf16 GEMM, within ~5e-4 of a lone sequence: tests CudaParity.DecodeBatchAboveGemvRows*;
      // on this random-weight model that can flip near-ties, so exact text is not a property there.)
      mv::server::BatchOptions bo;
      bo.max_batch = 4;
      BatchScheduler s(*model, bo, nullptr);
      std::promise<void> gate;
      auto opened = gate.get_future().share();
      std::vector<std::future<GenerationOutput>> futures;
      futures.push_back(s.submit(requests[0], [opened](std::string_view) {
        opened.wait();
        return true;
      }));
      for (std::size_t i = 1; i < count; ++i) futures.push_back(s.submit(requests[i], nullptr));
      gate.set_value();
      for (std::size_t i = 0; i < count; ++i) {
        SCOPED_TRACE(i);
        const GenerationOutput out = futures[i].get();
        // A difference here points at a wrong row (session, position or logits offset).
        EXPECT_EQ(out.text, serial[i].text);
        EXPECT_EQ(out.completion_tokens, static_cast<std::int64_t>(serial[i].generated_ids.size()));
      }
      EXPECT_GE(s.stats().largest_batch, 4);
    }
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
}
