#include "core/thread_pool.hpp"

#include <algorithm>
#include <atomic>
#include <thread>

namespace mv {

namespace {
thread_local int t_worker_index = 0;
thread_local bool t_in_job = false;
}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  workers_.reserve(static_cast<std::size_t>(threads - 1));
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker_main(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

int ThreadPool::worker_index() { return t_worker_index; }

void ThreadPool::for_each_thread(const std::function<void()>& fn) {
  const int n = size();
  if (n == 1 || t_in_job) {
    fn();
    return;
  }
  // n items of one each: every participant takes one, then waits until all n have arrived, so no thread
  // can take a second item and each thread runs fn exactly once (every worker joins every job).
  std::atomic<int> arrived{0};
  parallel_for(
      n,
      [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t i = b; i < e; ++i) {
          try {
            fn();
          } catch (...) {
            arrived.fetch_add(1);
            throw;
          }
          arrived.fetch_add(1);
          while (arrived.load() < n) std::this_thread::yield();
        }
      },
      1);
}

void ThreadPool::work_on_current_job() {
  for (;;) {
    const std::int64_t b = next_.fetch_add(chunk_, std::memory_order_relaxed);
    if (b >= n_) break;
    const std::int64_t e = std::min(n_, b + chunk_);
    try {
      fn_(ctx_, b, e);
    } catch (...) {
      {
        std::lock_guard lock(error_mutex_);
        if (!error_) error_ = std::current_exception();
      }
      next_.store(n_, std::memory_order_relaxed);  // stop handing out chunks
    }
  }
}

void ThreadPool::worker_main(int index) {
  t_worker_index = index;
  std::uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
    }
    t_in_job = true;
    work_on_current_job();
    t_in_job = false;
    {
      std::lock_guard lock(mutex_);
      if (--busy_workers_ == 0) done_.notify_one();
    }
  }
}

void ThreadPool::run(std::int64_t n, std::int64_t grain, void* ctx, Trampoline fn) {
  if (n <= 0) return;
  grain = std::max<std::int64_t>(1, grain);
  if (t_in_job || workers_.empty() || n <= grain) {
    fn(ctx, 0, n);
    return;
  }
  std::lock_guard submit(submit_mutex_);
  const std::int64_t threads = size();
  // About four chunks per thread for balance on a shared machine, never below the grain.
  std::int64_t chunk = (n + threads * 4 - 1) / (threads * 4);
  chunk = std::max(chunk, grain);
  ctx_ = ctx;
  fn_ = fn;
  n_ = n;
  chunk_ = chunk;
  next_.store(0, std::memory_order_relaxed);
  error_ = nullptr;
  {
    std::lock_guard lock(mutex_);
    busy_workers_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  wake_.notify_all();

  const int saved_index = t_worker_index;
  t_worker_index = 0;
  t_in_job = true;
  work_on_current_job();
  t_in_job = false;
  t_worker_index = saved_index;

  {
    std::unique_lock lock(mutex_);
    done_.wait(lock, [&] { return busy_workers_ == 0; });
  }
  if (error_) {
    std::exception_ptr e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
}

}  // namespace mv
