// ThreadPool: coverage of every index exactly once, grain, exceptions, nesting, reuse.
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <vector>

#include "core/thread_pool.hpp"

namespace {

TEST(ThreadPool, CoversEveryIndexOnce) {
  mv::ThreadPool pool(4);
  EXPECT_EQ(pool.size(), 4);
  for (std::int64_t n : {0, 1, 2, 7, 100, 10007}) {
    for (std::int64_t grain : {1, 3, 64}) {
      std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
      std::atomic<int> max_worker{0};
      pool.parallel_for(
          n,
          [&](std::int64_t b, std::int64_t e) {
            EXPECT_LT(b, e);
            int w = mv::ThreadPool::worker_index();
            EXPECT_GE(w, 0);
            EXPECT_LT(w, 4);
            int cur = max_worker.load();
            while (w > cur && !max_worker.compare_exchange_weak(cur, w)) {
            }
            for (std::int64_t i = b; i < e; ++i) hits[static_cast<std::size_t>(i)]++;
          },
          grain);
      for (std::int64_t i = 0; i < n; ++i)
        ASSERT_EQ(hits[static_cast<std::size_t>(i)].load(), 1) << n << " " << i;
    }
  }
}

TEST(ThreadPool, ChunksRespectGrain) {
  mv::ThreadPool pool(3);
  std::atomic<int> short_chunks{0};
  pool.parallel_for(
      1000, [&](std::int64_t b, std::int64_t e) { short_chunks += (e - b < 100 && e != 1000) ? 1 : 0; }, 100);
  EXPECT_EQ(short_chunks.load(), 0);
}

TEST(ThreadPool, PropagatesExceptionAndStaysUsable) {
  mv::ThreadPool pool(3);
  EXPECT_THROW(pool.parallel_for(1000,
                                 [&](std::int64_t b, std::int64_t) {
                                   if (b >= 500) throw std::runtime_error("boom");
                                 }),
               std::runtime_error);
  std::atomic<std::int64_t> sum{0};
  pool.parallel_for(100, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) sum += i;
  });
  EXPECT_EQ(sum.load(), 4950);
}

TEST(ThreadPool, NestedLoopsRunInline) {
  mv::ThreadPool pool(3);
  std::atomic<std::int64_t> total{0};
  pool.parallel_for(10, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) {
      pool.parallel_for(10, [&](std::int64_t b2, std::int64_t e2) { total += e2 - b2; });
    }
  });
  EXPECT_EQ(total.load(), 100);
}

TEST(ThreadPool, SingleThreadPoolRunsOnCaller) {
  mv::ThreadPool pool(1);
  EXPECT_EQ(pool.size(), 1);
  std::int64_t covered = 0;
  pool.parallel_for(50, [&](std::int64_t b, std::int64_t e) {
    EXPECT_EQ(mv::ThreadPool::worker_index(), 0);
    covered += e - b;
  });
  EXPECT_EQ(covered, 50);
}

TEST(ThreadPool, ManySmallLoops) {
  mv::ThreadPool pool(2);
  std::atomic<std::int64_t> total{0};
  for (int it = 0; it < 20000; ++it) {
    pool.parallel_for(8, [&](std::int64_t b, std::int64_t e) { total += e - b; });
  }
  EXPECT_EQ(total.load(), 8 * 20000);
}

}  // namespace
