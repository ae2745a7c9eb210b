// Software prefetch into L2 for the micro-kernels (PrefetchRows), and for
// the bench's read ceilings, which read memory the way flash does. A plain
// header: nothing here depends on the Highway target.
#ifndef ATTNLAB_KERNELS_UKERNELS_PREFETCH_H_
#define ATTNLAB_KERNELS_UKERNELS_PREFETCH_H_

#include <algorithm>
#include <cstdint>

namespace attn {

// One cache line into L2 (prefetcht1). An asm statement on x86: gcc 12's
// dead-code elimination deletes __builtin_prefetch in PrefetchRows' loops
// (their bounds and pointers are loaded from the struct), so flash's
// next-tile prefetch had compiled to nothing (no prefetch instruction in the
// disassembly of the library).
inline void PrefetchLineL2(const char* p) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm volatile("prefetcht1 %0" : : "m"(*p));
#else
  __builtin_prefetch(p, 0, 2);
#endif
}

// Rows to prefetch into L2 while a micro-kernel reads others: `rows` K rows
// of k_bytes and V rows of v_bytes, strides in bytes (0 rows, or 0 bytes:
// none), whatever their element type. The kernels issue a few rows per step
// of their key loop, row j of the prefetch beside key j of their own: all at
// once, the 1024 prefetches of a d = 128 tile stalled on full miss buffers
// (6% of flash's time). flash passes the next tile's K and V (ScoreTile), or
// the few-row (decode) kernels the K or V rows a distance ahead in the order
// they read them (kernels/internal/read_ahead.h).
// Into L2 (prefetcht1), not L1: shuffled 8 KiB blocks read 15-19 GB/s with
// prefetcht1 one block ahead, 8-10 with prefetcht0 at any distance, 25
// sequentially (Zen 4 VM, a plain read loop alone).
struct PrefetchRows {
  const char* k = nullptr;
  int64_t k_stride = 0;
  int64_t k_bytes = 0;
  const char* v = nullptr;
  int64_t v_stride = 0;
  int64_t v_bytes = 0;
  int64_t rows = 0;
  // K rows tail_row.. lie at k_tail on (same stride), not after k: decode's
  // rows ahead on a paged cache, which cross from one block's slice into the
  // next (kernels/internal/read_ahead.h). Unset: no tail.
  const char* k_tail = nullptr;
  int64_t tail_row = 0;
  // No rows (for a kernel pass that prefetches nothing).
  static const PrefetchRows& None() {
    static constexpr PrefetchRows kNone{};
    return kNone;
  }
  // Address of K row j.
  const char* KRow(int64_t j) const {
    return k_tail != nullptr && j >= tail_row ? k_tail + (j - tail_row) * k_stride
                                              : k + j * k_stride;
  }
  // The same rows seen from row `first` on (a kernel called for a slice of
  // the keys that begins there).
  PrefetchRows From(int64_t first) const {
    if (first >= rows) return {};
    PrefetchRows out{KRow(first), k_stride, k_bytes,     v + first * v_stride,
                     v_stride,    v_bytes,  rows - first};
    if (k_tail != nullptr && first < tail_row) {
      out.k_tail = k_tail;
      out.tail_row = tail_row - first;
    }
    return out;
  }
  void Prefetch(int64_t begin, int64_t end) const {
    for (int64_t j = begin; j < std::min(end, rows); ++j) {
      const char* k_row = KRow(j);
      for (int64_t x = 0; x < k_bytes; x += 64) PrefetchLineL2(k_row + x);
      for (int64_t x = 0; x < v_bytes; x += 64) PrefetchLineL2(v + j * v_stride + x);
    }
  }
};

}  // namespace attn

#endif  // ATTNLAB_KERNELS_UKERNELS_PREFETCH_H_
