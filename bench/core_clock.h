// The core's clock, measured without hardware counters (these VMs have none):
// a chain of dependent register adds, one cycle each on every x86 core, timed
// with the TSC. Run right after a benchmark's iteration, it reads the clock
// the core was left at by that work: the frequency a core holds depends on
// what it runs (Intel cores lower it under heavy AVX-512 and AMX work and
// under load on the package), so two loops at the same FLOPs per cycle can
// differ in FLOPs per second. `core_ghz` beside GFLOPS separates the two
// (docs/bench-json.md; kernels/DESIGN.md, "The clock under load").
#ifndef ATTNLAB_BENCH_CORE_CLOCK_H_
#define ATTNLAB_BENCH_CORE_CLOCK_H_

#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

namespace attn::bench {

// Whether the probe runs here: x86-64 with a TSC that ticks at a constant
// rate whatever the core's clock (/proc/cpuinfo's constant_tsc and
// nonstop_tsc); false elsewhere, and no case then has core_ghz.
bool CoreClockAvailable();

// The TSC's ticks per second, calibrated once per process against
// std::chrono::steady_clock over 20 ms.
double TscHz();

// The calling thread's core clock now, in GHz: the median of up to 4 chains
// of 2000 dependent adds (after a short one that lets the work before
// retire), stopping at the first chain that held a clock switch. A core
// keeps the clock of the work it ran for a few microseconds after it, then
// switches to the probe's own (the Sapphire Rapids VM: 3.0-3.3 GHz after
// AVX-512 or AMX loops, 3.5-3.8 after the switch), so this reads the work's
// clock. About 3 µs; 0 where !CoreClockAvailable() or when the switch came
// at once.
double CoreClockGhz();

// Samples CoreClockGhz between a benchmark's iterations, at most once per
// `interval_seconds` of the loop, so that its 3 µs stay under 0.1% of the
// timed time: call AfterIteration() at the end of each iteration and
// SetCounter() after the loop. core_ghz is the median of the samples (none,
// and no counter, when the loop was shorter than the interval).
//
// Only a loop whose iteration ends in the work it times reads that work's
// clock: a variant's Run ends in light code (rows' normalization, the
// team's join), long enough for the core to switch before the probe, so
// variant cases have no core_ghz; the micro-kernel cases (one call per
// iteration) and the ceilings (read inside each thread, LoopOnThreads) do.
class CoreClockSampler {
 public:
  explicit CoreClockSampler(double interval_seconds = 0.005);
  void AfterIteration() {
    if (interval_ticks_ > 0 && Ticks() - last_ >= interval_ticks_) Sample();
  }
  // A reading taken elsewhere (right after a loop, on the thread that ran
  // it: LoopOnThreads); 0, no reading, is left out.
  void Add(double ghz) {
    if (ghz > 0) ghz_.push_back(ghz);
  }
  // The median reading, 0 without any.
  double MedianGhz() const;
  // Sets state.counters["core_ghz"] to MedianGhz() (nothing without readings).
  void SetCounter(benchmark::State& state) const;

 private:
  static uint64_t Ticks();
  void Sample();
  uint64_t interval_ticks_ = 0;  // 0: the probe does not run here
  uint64_t last_ = 0;
  std::vector<double> ghz_;
};

}  // namespace attn::bench

#endif  // ATTNLAB_BENCH_CORE_CLOCK_H_
