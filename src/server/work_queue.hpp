// A bounded job queue drained by a fixed set of worker threads: the server's admission control.
// try_submit() never blocks: it accepts a job while fewer than `capacity` jobs wait, and otherwise says why
// not (full: the caller answers 429; closed: the server is shutting down, 503). Every accepted job runs
// exactly once, even during shutdown (close() drains the queue before joining the workers), so a caller
// that was admitted always gets its answer.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace mv::server {

class WorkQueue {
 public:
  enum class Admit { kAccepted, kFull, kClosed };

  // workers >= 1 threads; capacity >= 0 jobs may wait (a job taken by a worker no longer waits).
  WorkQueue(std::string name, int workers, int capacity);
  ~WorkQueue();
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  Admit try_submit(std::function<void()> job);

  // Stops accepting, runs what is queued, joins the workers. Idempotent.
  void close();

  const std::string& name() const { return name_; }
  int workers() const { return static_cast<int>(threads_.size()); }
  int capacity() const { return capacity_; }
  int waiting() const;  // jobs queued, not started
  int running() const;  // jobs being run
  // Seconds a new job would likely wait: mean job time so far x (waiting + 1) / workers, at least 1.
  int retry_after_seconds() const;

 private:
  void worker_main();

  std::string name_;
  int capacity_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  bool closed_ = false;
  int running_ = 0;
  double total_seconds_ = 0;
  std::uint64_t completed_ = 0;
};

}  // namespace mv::server
