#include "server/work_queue.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <exception>

#include "core/error.hpp"

namespace mv::server {

WorkQueue::WorkQueue(std::string name, int workers, int capacity)
    : name_(std::move(name)), capacity_(std::max(0, capacity)) {
  if (workers < 1) fail(Errc::kUsage, "work queue '{}': need at least one worker (have {})", name_, workers);
  threads_.reserve(static_cast<std::size_t>(workers));
  for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { worker_main(); });
}

WorkQueue::~WorkQueue() { close(); }

WorkQueue::Admit WorkQueue::try_submit(std::function<void()> job) {
  {
    std::lock_guard lock(mutex_);
    if (closed_) return Admit::kClosed;
    // A job is admitted when a worker is idle or a waiting slot is free.
    const int idle = static_cast<int>(threads_.size()) - running_ - static_cast<int>(jobs_.size());
    if (idle <= 0 && static_cast<int>(jobs_.size()) >= capacity_) return Admit::kFull;
    jobs_.push_back(std::move(job));
  }
  wake_.notify_one();
  return Admit::kAccepted;
}

void WorkQueue::close() {
  {
    std::lock_guard lock(mutex_);
    if (closed_ && threads_.empty()) return;
    closed_ = true;
  }
  wake_.notify_all();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  std::lock_guard lock(mutex_);
  threads_.clear();
}

int WorkQueue::waiting() const {
  std::lock_guard lock(mutex_);
  return static_cast<int>(jobs_.size());
}

int WorkQueue::running() const {
  std::lock_guard lock(mutex_);
  return running_;
}

int WorkQueue::retry_after_seconds() const {
  std::lock_guard lock(mutex_);
  const double mean = completed_ ? total_seconds_ / static_cast<double>(completed_) : 1.0;
  const double workers = std::max<std::size_t>(1, threads_.size());
  const double wait = mean * (static_cast<double>(jobs_.size()) + 1.0) / workers;
  return static_cast<int>(std::clamp(std::ceil(wait), 1.0, 120.0));
}

void WorkQueue::worker_main() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return closed_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // closed and drained
      job = std::move(jobs_.front());
      jobs_.pop_front();
      ++running_;
    }
    const auto t0 = std::chrono::steady_clock::now();
    try {
      job();
    } catch (const std::exception& e) {
      // Jobs report their own errors to their callers; reaching here is a bug in the job.
      spdlog::error("work queue {}: a job threw ({})", name_, typeid(e).name());
    } catch (...) {
      spdlog::error("work queue {}: a job threw a non-standard exception", name_);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::lock_guard lock(mutex_);
    --running_;
    total_seconds_ += seconds;
    ++completed_;
  }
}

}  // namespace mv::server
