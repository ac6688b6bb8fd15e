// Page pool of the paged KV cache (CUDA engine; the bookkeeping is device-independent so that it is tested
// everywhere). See docs/design/cuda-engine.md, "Paged KV cache".
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

namespace mv::qwen25vl {

// Fixed-size pages carved out of arenas from a backing allocator. A session reserves, when it is created,
// the pages its capacity can need (new arenas are allocated then, so a reservation that cannot be backed
// fails at once, with nothing changed); it takes pages one by one as it grows and gives them back when it
// shrinks or ends. Arenas are kept until the pool is destroyed and serve later sessions without new device
// allocations. Thread-safe.
class PagePool {
 public:
  struct Backing {
    std::function<void*(std::size_t)> alloc;  // throws (or returns nullptr) when out of memory
    std::function<void(void*)> free;
  };
  struct Stats {
    std::size_t page_bytes = 0;
    std::int64_t pages = 0;     // backed by arenas
    std::int64_t reserved = 0;  // promised to live sessions
    std::int64_t in_use = 0;    // taken
    std::int64_t arenas = 0;
  };

  // min_arena_pages: pages of the smallest arena (later arenas double, up to max_arena_pages), so that
  // many small sessions do not mean many small allocations. page_bytes must be a multiple of 256.
  PagePool(std::size_t page_bytes, std::int64_t min_arena_pages, std::int64_t max_arena_pages,
           Backing backing);
  ~PagePool();
  PagePool(const PagePool&) = delete;
  PagePool& operator=(const PagePool&) = delete;

  // Reserves n pages; allocates arenas until every reservation is backed. Throws mv::Error (kTooLarge)
  // when the backing allocator cannot provide them; the pool is unchanged then.
  void reserve(std::int64_t n);
  void unreserve(std::int64_t n);
  // A free page; the caller must hold a reservation that covers it (kInternal error otherwise).
  void* take();
  void give(void* page);
  Stats stats() const;
  std::size_t page_bytes() const { return page_bytes_; }

 private:
  const std::size_t page_bytes_;
  const std::int64_t min_arena_, max_arena_;
  Backing backing_;
  mutable std::mutex mu_;
  std::vector<std::pair<void*, std::int64_t>> arenas_;  // base, pages
  std::vector<void*> free_;
  std::int64_t pages_ = 0, reserved_ = 0, in_use_ = 0;
};

// The pages of one sequence, in position order, with its reservation. Not thread-safe (one session is used
// by one thread at a time, as Session is).
class PageTable {
 public:
  PageTable(PagePool& pool, std::int64_t page_tokens, std::int64_t capacity_tokens);
  ~PageTable();
  PageTable(const PageTable&) = delete;
  PageTable& operator=(const PageTable&) = delete;

  // Takes pages until positions [0, tokens) are covered (tokens <= the capacity).
  void cover(std::int64_t tokens);
  // Gives every page back (the reservation stays).
  void clear();
  const std::vector<void*>& pages() const { return pages_; }
  std::int64_t reserved_pages() const { return reserved_; }

 private:
  PagePool& pool_;
  std::int64_t page_tokens_, reserved_;
  std::vector<void*> pages_;
};

}  // namespace mv::qwen25vl
