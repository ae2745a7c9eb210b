// Thread partitioning shared by every kernel: one OpenMP idiom, one place.
#ifndef ATTNLAB_KERNELS_INTERNAL_PARALLEL_H_
#define ATTNLAB_KERNELS_INTERNAL_PARALLEL_H_

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernels/core_clock.h"
#include "kernels/thread_times.h"
#include "kernels/workspace.h"

namespace attn {

// Points a thread-local slot at `value` for a scope, unless the slot already
// points somewhere (a Run inside a Run, e.g. per sequence of a varlen batch:
// the outer one gets what the inner one's loops record).
template <typename T>
class ScopedSlot {
 public:
  ScopedSlot(T*& slot, T* value) : slot_(slot), owns_(value != nullptr && slot == nullptr) {
    if (owns_) slot_ = value;
  }
  ~ScopedSlot() {
    if (owns_) slot_ = nullptr;
  }
  ScopedSlot(const ScopedSlot&) = delete;
  ScopedSlot& operator=(const ScopedSlot&) = delete;
  bool owns() const { return owns_; }

 private:
  T*& slot_;
  bool owns_;
};

// The calling thread's ThreadTimes while a Run times its threads
// (RunOptions::time_threads), else nullptr: ParallelFor adds its
// multi-threaded loops there.
inline ThreadTimes*& TimedThreads() {
  thread_local ThreadTimes* times = nullptr;
  return times;
}
class ScopedThreadTimes : public ScopedSlot<ThreadTimes> {
 public:
  explicit ScopedThreadTimes(ThreadTimes* times) : ScopedSlot(TimedThreads(), times) {}
};

// The calling thread's ItemClocks while a Run probes its clock
// (RunOptions::probe_clock), else nullptr: ParallelFor reads the clock after
// items into it (kernels/core_clock.h).
inline ItemClocks*& ProbedClocks() {
  thread_local ItemClocks* clocks = nullptr;
  return clocks;
}
class ScopedItemClocks : public ScopedSlot<ItemClocks> {
 public:
  explicit ScopedItemClocks(ItemClocks* clocks) : ScopedSlot(ProbedClocks(), clocks) {}
};

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
  // While a Run probes its clock (RunOptions::probe_clock), the thread that
  // ran an item reads the clock right after it (kernels/core_clock.h).
  ItemClocks* const clocks = ProbedClocks();  // the caller's, before the team forms
  auto run = [&body, clocks](int64_t item, int thread) {
    if constexpr (std::is_invocable_v<Body&, int64_t, int>) {
      body(item, thread);
    } else {
      (void)thread;
      body(item);
    }
    if (clocks != nullptr) clocks->AfterItem();
  };
  if (threads <= 1 || count <= 1) {
    for (int64_t item = 0; item < count; ++item) run(item, 0);
    return;
  }
  // The team may be smaller than asked (nesting disabled inside an outer
  // region gives one thread), never larger: thread < threads.
  // While timed (TimedThreads), each thread sums the time inside its items
  // (two clock reads per item) and writes it once, to its own slot.
  using Clock = std::chrono::steady_clock;
  ThreadTimes* const times = TimedThreads();  // the caller's, before the team forms
  std::vector<double> busy(times != nullptr ? threads : 0);
  std::vector<int64_t> taken(busy.size());
  int team = 1;
  const Clock::time_point start = Clock::now();
#pragma omp parallel num_threads(threads)
  {
    const int thread = omp_get_thread_num();
    if (thread == 0) team = omp_get_num_threads();
    double my_busy = 0;
    int64_t my_items = 0;
#pragma omp for schedule(dynamic, grain)
    for (int64_t item = 0; item < count; ++item) {
      if (times == nullptr) {
        run(item, thread);
        continue;
      }
      const Clock::time_point begin = Clock::now();
      run(item, thread);
      my_busy += std::chrono::duration<double>(Clock::now() - begin).count();
      ++my_items;
    }
    if (times != nullptr) {
      busy[thread] = my_busy;
      taken[thread] = my_items;
    }
  }
  if (times != nullptr && team > 1) {
    busy.resize(team);
    taken.resize(team);
    times->Add(std::chrono::duration<double>(Clock::now() - start).count(), busy, taken);
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
