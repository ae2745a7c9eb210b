// Thread partitioning shared by every kernel: one OpenMP idiom, one place.
#ifndef ATTNLAB_KERNELS_INTERNAL_PARALLEL_H_
#define ATTNLAB_KERNELS_INTERNAL_PARALLEL_H_

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/workspace.h"

namespace attn {

// Runs body(item) or body(item, thread) for every item in [0, count) on up to
// `threads` OpenMP threads. Items are handed out dynamically in chunks of
// `grain`, which balances items of unequal cost (causal rows, causal tiles).
//
// `thread` indexes per-thread scratch: it is the caller's index in the team
// this call forms, in [0, threads), and 0 when the items run serially (one
// thread or one item). Never omp_get_thread_num() outside that team: called
// from inside an application's parallel region, that is the *outer* team's
// index (Run from thread 5 of an 8-thread region with threads = 1 indexed
// scratch slot 5 of 1: heap corruption, issue 21).
template <typename Body>
void ParallelFor(int threads, int64_t count, Body&& body, int64_t grain = 1) {
  auto run = [&body](int64_t item, int thread) {
    if constexpr (std::is_invocable_v<Body&, int64_t, int>) {
      body(item, thread);
    } else {
      (void)thread;
      body(item);
    }
  };
  if (threads <= 1 || count <= 1) {
    for (int64_t item = 0; item < count; ++item) run(item, 0);
    return;
  }
  // The team may be smaller than asked (nesting disabled inside an outer
  // region gives one thread), never larger: thread < threads.
#pragma omp parallel num_threads(threads)
  {
    const int thread = omp_get_thread_num();
#pragma omp for schedule(dynamic, grain)
    for (int64_t item = 0; item < count; ++item) run(item, thread);
  }
}

// The partitioning of the kernels that materialize a score matrix per head
// (naive, blas, simd): the head's scratch is live while the head runs. With at
// least as many (batch, head) pairs as threads, heads go across threads, each
// thread with its own scratch; otherwise heads run one at a time with every
// thread on that head's rows, sharing one scratch.
inline int64_t HeadsInFlight(int64_t pairs, int threads) { return pairs >= threads ? threads : 1; }

// Bytes of the float scratch such a kernel declares: HeadsInFlight(pairs,
// threads) heads (or kv-head groups) of `floats` each, saturating
// (kernels/workspace.h) instead of wrapping.
inline size_t InFlightScratchBytes(int64_t pairs, int threads, int64_t floats) {
  return (SaturatingSize(HeadsInFlight(pairs, threads)) * floats * sizeof(float)).value();
}

// Calls attend(b, h, scratch, row_threads) for every (batch, head) pair;
// `scratch` holds HeadsInFlight(batch * heads, threads) * floats_per_head floats.
template <typename Attend>
void ForEachHead(int64_t batch, int64_t heads, int threads, float* scratch, int64_t floats_per_head,
                 Attend&& attend) {
  const int64_t pairs = batch * heads;
  if (pairs >= threads) {
    ParallelFor(threads, pairs, [&](int64_t bh, int thread) {
      attend(bh / heads, bh % heads, scratch + thread * floats_per_head, /*row_threads=*/1);
    });
  } else {
    for (int64_t bh = 0; bh < pairs; ++bh) attend(bh / heads, bh % heads, scratch, threads);
  }
}

// Bytes of one core's L2 cache, which sizes the kernels' blocks and work
// groups (chunked's C, flash's head groups); 1 MiB when the OS does not say.
// Asked once: glibc answers with CPUID, which traps in a VM (tens of
// microseconds, a tenth of a flash run at N = 128 on 2 threads).
inline int64_t L2CacheBytes() {
  static const int64_t bytes = [] {
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return l2 > 0 ? int64_t{l2} : int64_t{1} << 20;
  }();
  return bytes;
}

// Splits [0, count) into `parts` near-equal contiguous ranges; part p is
// [PartBegin(count, parts, p), PartBegin(count, parts, p + 1)).
inline int64_t PartBegin(int64_t count, int64_t parts, int64_t p) {
  return count / parts * p + std::min<int64_t>(p, count % parts);
}

}  // namespace attn

#endif  // ATTNLAB_KERNELS_INTERNAL_PARALLEL_H_
