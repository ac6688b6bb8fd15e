// Page pool of the paged KV cache: reservations, arenas, page reuse, failure without side effects.
#include <gtest/gtest.h>

#include <cstdlib>
#include <set>

#include "core/error.hpp"
#include "model/qwen25vl/kv_pages.hpp"

namespace mv::qwen25vl {
namespace {

struct CountingBacking {
  std::size_t limit = SIZE_MAX;  // bytes the fake device has
  std::size_t live = 0;
  int allocs = 0, frees = 0;
  PagePool::Backing backing() {
    return {[this](std::size_t n) -> void* {
              if (live + n > limit) return nullptr;
              live += n;
              ++allocs;
              return std::aligned_alloc(256, n);
            },
            [this](void* p) {
              ++frees;
              std::free(p);
            }};
  }
};

TEST(KvPages, ReservationsAreBackedAndPagesAreDistinct) {
  CountingBacking dev;
  {
    PagePool pool(1024, 2, 8, dev.backing());
    PageTable a(pool, 32, 100);  // 4 pages
    EXPECT_EQ(a.reserved_pages(), 4);
    EXPECT_GE(pool.stats().pages, 4);
    EXPECT_EQ(pool.stats().in_use, 0);
    a.cover(33);
    ASSERT_EQ(a.pages().size(), 2u);
    a.cover(33);  // already covered
    EXPECT_EQ(a.pages().size(), 2u);
    PageTable b(pool, 32, 64);  // 2 pages
    b.cover(64);
    a.cover(100);
    std::set<void*> all(a.pages().begin(), a.pages().end());
    all.insert(b.pages().begin(), b.pages().end());
    EXPECT_EQ(all.size(), 6u);
    for (void* p : all) EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % 256, 0u);
    const auto s = pool.stats();
    EXPECT_EQ(s.reserved, 6);
    EXPECT_EQ(s.in_use, 6);
    EXPECT_THROW(a.cover(129), Error);  // beyond the capacity the session reserved
  }
  EXPECT_EQ(dev.allocs, dev.frees);
}

TEST(KvPages, PagesComeBackAndArenasAreReused) {
  CountingBacking dev;
  PagePool pool(512, 4, 4, dev.backing());
  std::set<void*> earlier;
  {
    PageTable a(pool, 16, 64);
    a.cover(64);
    earlier.insert(a.pages().begin(), a.pages().end());
  }
  EXPECT_EQ(pool.stats().in_use, 0);
  EXPECT_EQ(pool.stats().reserved, 0);
  const int allocs = dev.allocs;
  PageTable b(pool, 16, 64);
  b.cover(1);
  EXPECT_EQ(dev.allocs, allocs);  // served by the existing arena
  EXPECT_EQ(earlier.count(b.pages()[0]), 1u);
  b.clear();
  EXPECT_EQ(pool.stats().in_use, 0);
  EXPECT_EQ(pool.stats().reserved, 4);  // clearing keeps the reservation
}

TEST(KvPages, ReservationThatCannotBeBackedFailsWithoutChange) {
  CountingBacking dev;
  dev.limit = 8 * 1024;  // 8 pages of 1 KiB
  PagePool pool(1024, 4, 64, dev.backing());
  PageTable a(pool, 32, 6 * 32);
  const auto before = pool.stats();
  try {
    PageTable b(pool, 32, 8 * 32);
    FAIL() << "the reservation should not fit";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::kTooLarge);
  }
  const auto after = pool.stats();
  EXPECT_EQ(after.reserved, before.reserved);
  EXPECT_EQ(after.in_use, before.in_use);
  PageTable c(pool, 32, 2 * 32);  // what is left still fits
  c.cover(64);
  EXPECT_EQ(pool.stats().in_use, 2);
}

TEST(KvPages, RejectsBadGeometry) {
  CountingBacking dev;
  EXPECT_THROW(PagePool(100, 1, 1, dev.backing()), Error);
  PagePool pool(256, 1, 1, dev.backing());
  EXPECT_THROW(PageTable(pool, 0, 10), Error);
  EXPECT_THROW(PageTable(pool, 32, 0), Error);
}

}  // namespace
}  // namespace mv::qwen25vl
