// Thread partitioning shared by every kernel: one OpenMP idiom, one place.
#ifndef ATTNLAB_KERNELS_PARALLEL_H_
#define ATTNLAB_KERNELS_PARALLEL_H_

#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace attn {

// Runs body(item) for every item in [0, count) on up to `threads` OpenMP
// threads. Items are handed out dynamically in chunks of `grain`, which
// balances items of unequal cost (causal rows, causal tiles).
template <typename Body>
void ParallelFor(int threads, int64_t count, Body&& body, int64_t grain = 1) {
  if (threads <= 1 || count <= 1) {
    for (int64_t item = 0; item < count; ++item) body(item);
    return;
  }
#pragma omp parallel for num_threads(threads) schedule(dynamic, grain)
  for (int64_t item = 0; item < count; ++item) body(item);
}

// Index of the calling thread inside ParallelFor, for per-thread scratch.
inline int ThreadIndex() { return omp_get_thread_num(); }

// Splits [0, count) into `parts` near-equal contiguous ranges; part p is
// [PartBegin(count, parts, p), PartBegin(count, parts, p + 1)).
inline int64_t PartBegin(int64_t count, int64_t parts, int64_t p) {
  return count / parts * p + std::min<int64_t>(p, count % parts);
}

}  // namespace attn

#endif  // ATTNLAB_KERNELS_PARALLEL_H_
