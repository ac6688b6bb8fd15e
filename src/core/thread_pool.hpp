// A small fixed thread pool for data-parallel loops: parallel_for(n, fn(begin, end)).
// The calling thread takes part in the work; a parallel_for issued from inside a pool job runs inline
// (no nested parallelism). Dispatching a loop allocates nothing, so it can be used per decoded token.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace mv {

class ThreadPool {
 public:
  // threads: total number of threads that run jobs, the caller included; 0 = hardware concurrency.
  explicit ThreadPool(int threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(begin, end) over disjoint chunks covering [0, n), each at least `grain` items long
  // (except the last), on all threads; returns when every chunk is done. The first exception thrown
  // by fn is rethrown here after all threads have stopped working on the loop.
  template <typename F>
  void parallel_for(std::int64_t n, F&& fn, std::int64_t grain = 1) {
    using Fn = std::remove_reference_t<F>;
    run(n, grain, &fn, [](void* ctx, std::int64_t b, std::int64_t e) { (*static_cast<Fn*>(ctx))(b, e); });
  }

  // Index of the thread running the current job chunk: 0 for the caller (or outside any job),
  // 1..size()-1 for the pool's workers. Lets callers keep per-thread scratch.
  static int worker_index();

  // Runs fn() exactly once on every thread of the pool (the caller included), e.g. to set up per-thread
  // scratch before a hot loop. Must not be called from inside a job.
  void for_each_thread(const std::function<void()>& fn);

 private:
  using Trampoline = void (*)(void*, std::int64_t, std::int64_t);
  void run(std::int64_t n, std::int64_t grain, void* ctx, Trampoline fn);
  void worker_main(int index);
  void work_on_current_job();

  std::vector<std::thread> workers_;
  std::mutex submit_mutex_;  // one loop at a time per pool
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::uint64_t generation_ = 0;
  bool stop_ = false;
  int busy_workers_ = 0;

  // The current job.
  void* ctx_ = nullptr;
  Trampoline fn_ = nullptr;
  std::int64_t n_ = 0;
  std::int64_t chunk_ = 1;
  std::atomic<std::int64_t> next_{0};
  std::exception_ptr error_;
  std::mutex error_mutex_;
};

}  // namespace mv
