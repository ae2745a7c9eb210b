// A problem's K and V in a paged cache (kernels/problem.h, "Paged K/V") for
// what times flash on one: the bench's paged cases and read ceilings, and
// `attnlab tune`'s paged decode prefetch distance. Every sequence's blocks
// in a fixed shuffle of the pool, on 2 MiB pages as a serving engine's pool.
// (tests/paged_test.cc builds its own pools: spare blocks, NaN in unused
// rows, int8 scales, shared prefixes.)
#ifndef ATTNLAB_TESTING_PAGED_KV_H_
#define ATTNLAB_TESTING_PAGED_KV_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/problem.h"

namespace attn::testing {

// The block table of `batch` sequences of `kv_len` keys in blocks of
// `block_size`: a fixed shuffle of the pool's blocks (deterministic, cached
// for the whole process, so references to it stay valid).
const std::vector<int32_t>& PagedTable(int64_t batch, int64_t kv_len, int64_t block_size);

// Memory the kernel is asked to back with 2 MiB pages: anonymous memory
// advised (madvise(MADV_HUGEPAGE); Debian's transparent huge pages are
// "madvise") before its first touch, as a serving engine allocates its
// KV-cache pool. The bench keeps every case's K and V, the paged pools, the
// read ceilings' K and V and the stream ceiling's buffer there: a paged
// cache is read a block at a time from anywhere in the pool, each block its
// own page walks on 4 KiB pages, and contiguous K and V read slower on 4 KiB
// pages too (Zen 4 VM: contiguous flash decode 1.01-1.10x the time, its read
// ceiling up to 1.5x), so paged and contiguous decode and the ceilings they
// are held to all read from the same kind of page (kernels/DESIGN.md, "Every
// big buffer on 2 MiB pages").
void* AllocateHugePageBytes(size_t bytes);  // throws std::bad_alloc
void FreeHugePageBytes(void* p, size_t bytes);
template <class T>
struct HugePageAllocator {
  using value_type = T;
  HugePageAllocator() = default;
  template <class U>
  HugePageAllocator(const HugePageAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(AllocateHugePageBytes(n * sizeof(T))); }
  void deallocate(T* p, size_t n) { FreeHugePageBytes(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const HugePageAllocator<U>&) const {
    return true;
  }
};
template <class T>
using HugePageVector = std::vector<T, HugePageAllocator<T>>;

// A paged copy of a problem's fp32 K and V: the pools.
struct PagedKv {
  HugePageVector<float> k, v;
};
// Copies p's fp32 K and V rows into pools laid out by PagedTable (into
// `pools`) and points p at them, with p.kv_pages set.
void PageKv(int64_t block_size, Problem& p, PagedKv& pools);

}  // namespace attn::testing

#endif  // ATTNLAB_TESTING_PAGED_KV_H_
