// The `core_ghz` counter (docs/bench-json.md): the core's clock after the
// work a case times, read with the probe of kernels/core_clock.h. A ceiling
// reads it inside each thread right after its loop (LoopOnThreads), a
// micro-kernel case between its calls (ItemClocks::AfterItem), a
// variant case after its Runs' work items (RunOptions::probe_clock,
// RunStats::core_ghz). `GFLOPS / core_ghz` is FLOPs per cycle, so a fraction
// of a ceiling splits into its clock's part and its instructions' part
// (kernels/DESIGN.md, "The clock under load").
#ifndef ATTNLAB_BENCH_CORE_CLOCK_H_
#define ATTNLAB_BENCH_CORE_CLOCK_H_

#include <benchmark/benchmark.h>

#include <vector>

#include "kernels/core_clock.h"

namespace attn::bench {

// The readings of one case, taken where the work ends (inside a thread right
// after its loop, a Run's items, or ItemClocks::AfterItem between a
// micro-kernel's calls, whose 5 ms limit keeps the probe under 0.1% of the
// timed time); core_ghz is their median.
class CoreClockSampler {
 public:
  // 0, no reading, is left out.
  void Add(double ghz) {
    if (ghz > 0) ghz_.push_back(ghz);
  }
  void Add(const std::vector<double>& readings) {
    for (double ghz : readings) Add(ghz);
  }
  // The median reading, 0 without any.
  double MedianGhz() const;
  // Sets state.counters["core_ghz"] to MedianGhz() (nothing without readings).
  void SetCounter(benchmark::State& state) const;

 private:
  std::vector<double> ghz_;
};

}  // namespace attn::bench

#endif  // ATTNLAB_BENCH_CORE_CLOCK_H_
