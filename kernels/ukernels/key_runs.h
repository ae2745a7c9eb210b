// Keys as runs of rows: how the few-row (decode) micro-kernels take a key
// tile whose K or V rows do not lie at one stride. A paged cache's tile is
// a run per block of the pool (16 keys at vLLM's default block size), each
// somewhere else; a call per run costs every call the kernel's set-up (Q into
// registers, the O rows loaded and stored) and flash's own per-call work
// (about 10% of paged decode at block size 16 on the Sapphire Rapids VM; on
// the Zen 4 VM, whose paged decode waits on memory, taking the runs in one
// call measured within noise: kernels/DESIGN.md, "A tile's runs in one
// call"). The run kernels (ScoreRowsRuns, PvRowsRuns) keep their registers
// across a tile's runs.
// A contiguous tile is one run. A plain header: nothing here depends on the
// Highway target.
#ifndef ATTNLAB_KERNELS_UKERNELS_KEY_RUNS_H_
#define ATTNLAB_KERNELS_UKERNELS_KEY_RUNS_H_

#include <cstdint>
#include <span>

#include "kernels/ukernels/prefetch.h"

namespace attn {

// `keys` rows from `rows` on, one row stride apart (the stride is the
// kernel's argument, the same for every run), and the rows to prefetch
// beside them (row i of `ahead` beside row i of the run; the rest of
// `ahead` after the run's last row).
struct KeyRun {
  const void* rows = nullptr;
  int64_t keys = 0;
  PrefetchRows ahead;
};

using KeyRuns = std::span<const KeyRun>;

// Keys in all runs.
inline int64_t RunKeys(KeyRuns runs) {
  int64_t n = 0;
  for (const KeyRun& run : runs) n += run.keys;
  return n;
}

}  // namespace attn

#endif  // ATTNLAB_KERNELS_UKERNELS_KEY_RUNS_H_
