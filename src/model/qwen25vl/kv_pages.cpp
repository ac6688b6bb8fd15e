#include "model/qwen25vl/kv_pages.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace mv::qwen25vl {

PagePool::PagePool(std::size_t page_bytes, std::int64_t min_arena_pages, std::int64_t max_arena_pages,
                   Backing backing)
    : page_bytes_(page_bytes),
      min_arena_(std::max<std::int64_t>(1, min_arena_pages)),
      max_arena_(std::max(std::max<std::int64_t>(1, min_arena_pages), max_arena_pages)),
      backing_(std::move(backing)) {
  if (page_bytes == 0 || page_bytes % 256 != 0)
    fail(Errc::kInvalidInput, "KV page pool: page size {} is not a positive multiple of 256 bytes",
         page_bytes);
  if (!backing_.alloc || !backing_.free) fail(Errc::kInvalidInput, "KV page pool: no backing allocator");
}

PagePool::~PagePool() {
  for (auto& [base, n] : arenas_) backing_.free(base);
}

void PagePool::reserve(std::int64_t n) {
  if (n < 0) fail(Errc::kInvalidInput, "KV page pool: reserving {} pages", n);
  std::lock_guard lock(mu_);
  while (pages_ < reserved_ + n) {
    const std::int64_t need = reserved_ + n - pages_;
    // Arenas double with their count (bounded), and are never smaller than the shortfall.
    std::int64_t size = std::min(max_arena_, min_arena_ << std::min<std::int64_t>(arenas_.size(), 20));
    size = std::max(size, need);
    void* base = nullptr;
    try {
      base = backing_.alloc(static_cast<std::size_t>(size) * page_bytes_);
    } catch (const std::exception&) {
      base = nullptr;
    }
    if (base == nullptr && size > need) {  // the larger arena did not fit: try the shortfall alone
      size = need;
      try {
        base = backing_.alloc(static_cast<std::size_t>(size) * page_bytes_);
      } catch (const std::exception&) {
        base = nullptr;
      }
    }
    if (base == nullptr)
      fail(Errc::kTooLarge,
           "KV cache: no device memory for {} more pages of {} bytes ({} pages reserved by live sessions)",
           need, page_bytes_, reserved_);
    arenas_.emplace_back(base, size);
    // Lowest addresses are taken first (free_ is a stack).
    for (std::int64_t i = size - 1; i >= 0; --i)
      free_.push_back(static_cast<char*>(base) + static_cast<std::size_t>(i) * page_bytes_);
    pages_ += size;
  }
  reserved_ += n;
}

void PagePool::unreserve(std::int64_t n) {
  std::lock_guard lock(mu_);
  reserved_ = std::max<std::int64_t>(0, reserved_ - n);
}

void* PagePool::take() {
  std::lock_guard lock(mu_);
  if (in_use_ >= reserved_ || free_.empty())
    fail(Errc::kInternal, "KV page pool: a page was taken beyond the reservations ({} in use, {} reserved)",
         in_use_, reserved_);
  void* p = free_.back();
  free_.pop_back();
  ++in_use_;
  return p;
}

void PagePool::give(void* page) {
  std::lock_guard lock(mu_);
  free_.push_back(page);
  --in_use_;
}

PagePool::Stats PagePool::stats() const {
  std::lock_guard lock(mu_);
  return Stats{page_bytes_, pages_, reserved_, in_use_, static_cast<std::int64_t>(arenas_.size())};
}

PageTable::PageTable(PagePool& pool, std::int64_t page_tokens, std::int64_t capacity_tokens)
    : pool_(pool), page_tokens_(page_tokens), reserved_(0) {
  if (page_tokens <= 0 || capacity_tokens <= 0)
    fail(Errc::kInvalidInput, "KV pages: {} tokens per page, capacity {}", page_tokens, capacity_tokens);
  const std::int64_t n = (capacity_tokens + page_tokens - 1) / page_tokens;
  pool_.reserve(n);
  reserved_ = n;
  pages_.reserve(static_cast<std::size_t>(n));
}

PageTable::~PageTable() {
  clear();
  pool_.unreserve(reserved_);
}

void PageTable::cover(std::int64_t tokens) {
  const std::int64_t n = (tokens + page_tokens_ - 1) / page_tokens_;
  if (n > reserved_)
    fail(Errc::kInternal, "KV pages: {} tokens need {} pages, the session reserved {}", tokens, n, reserved_);
  while (static_cast<std::int64_t>(pages_.size()) < n) pages_.push_back(pool_.take());
}

void PageTable::clear() {
  for (void* p : pages_) pool_.give(p);
  pages_.clear();
}

}  // namespace mv::qwen25vl
