// Prometheus metrics of the server, rendered in the text exposition format (version 0.0.4).
// Labels are route patterns and status codes only: never paths with data, never document content.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace mv::server {

class Metrics {
 public:
  // Upper bounds (seconds) of the latency histogram buckets.
  static constexpr std::array<double, 14> kLatencyBuckets{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                          1,     2.5,  5,     10,   30,  60,   120};
  // Upper bounds of the batch size histogram (sequences per decode step).
  static constexpr std::array<double, 8> kBatchBuckets{1, 2, 4, 8, 16, 32, 64, 128};
  // Decode steps over which the engine's tokens per second are averaged.
  static constexpr std::size_t kRateWindow = 64;

  void observe_request(const std::string& route, int status, double seconds);
  // One finished generation: tokens produced and the seconds spent decoding them.
  void observe_generation(std::int64_t prompt_tokens, std::int64_t completion_tokens, double decode_seconds);
  // One decode step of the engine: the sequences that shared it and its time.
  void observe_batch(int sequences, double seconds);
  // A sequence left the batch: stop | length | cancelled | error.
  void observe_sequence_end(const std::string& finish_reason);
  void observe_rejection(const std::string& queue, int status);

  // Gauges read at scrape time (queue depth, in-flight work, VRAM, RSS...): name, help, labels, value.
  struct Gauge {
    std::string name, help, labels;  // labels: `{a="b"}` or empty
    double value = 0;
  };
  using GaugeSource = std::function<std::vector<Gauge>()>;
  void set_gauge_source(GaugeSource source);

  std::string render() const;

  // For tests and the load test.
  std::uint64_t requests(const std::string& route, int status) const;

 private:
  struct Histogram {
    std::array<std::uint64_t, kLatencyBuckets.size()> buckets{};
    std::uint64_t count = 0;
    double sum = 0;
  };
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, std::uint64_t> requests_;
  std::map<std::string, Histogram> latency_;
  std::map<std::pair<std::string, int>, std::uint64_t> rejections_;
  std::uint64_t prompt_tokens_ = 0, completion_tokens_ = 0, generations_ = 0;
  double decode_seconds_ = 0;
  double last_tokens_per_second_ = 0;
  int last_batch_ = 0;
  std::uint64_t decode_batches_ = 0;
  std::array<std::uint64_t, kBatchBuckets.size()> batch_buckets_{};
  std::uint64_t batch_sequences_ = 0;  // sum of the batch sizes
  std::map<std::string, std::uint64_t> sequence_ends_;
  // The last kRateWindow decode steps: (tokens, seconds), a ring.
  std::array<std::pair<int, double>, kRateWindow> steps_{};
  std::size_t step_next_ = 0;
  GaugeSource gauges_;
};

}  // namespace mv::server
