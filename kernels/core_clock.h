// The core's clock, measured without hardware counters (the VMs this project
// runs on expose none): a chain of dependent register adds, one cycle each on
// every x86 core, timed with the TSC. Run right after some work, it reads the
// clock that work left the core at. A core's clock depends on what it runs:
// Intel cores lower it under heavy AVX-512 and AMX work, the more so with
// loads and stores beside it. So two loops at the same FLOPs per cycle can
// differ in FLOPs per second, and a clock read beside GFLOPS separates the
// two (kernels/DESIGN.md, "The clock under load").
//
// Runs read it after their work items when RunOptions::probe_clock asks
// (RunStats::core_ghz); the bench reads it after its ceiling loops and
// micro-kernel calls (bench/core_clock.h, the `core_ghz` counter).
#ifndef ATTNLAB_KERNELS_CORE_CLOCK_H_
#define ATTNLAB_KERNELS_CORE_CLOCK_H_

#include <cstdint>
#include <mutex>
#include <vector>

namespace attn {

// Whether the probe runs here: x86-64 with a TSC that ticks at a constant
// rate whatever the core's clock (/proc/cpuinfo's constant_tsc and
// nonstop_tsc). Where it does not, every reading is 0.
bool CoreClockAvailable();

// The TSC's ticks per second, calibrated once per process against
// std::chrono::steady_clock over 20 ms; and the TSC now (0 off x86-64).
double TscHz();
uint64_t TscNow();

// The calling thread's core clock now, in GHz. A core keeps the clock of the
// work it ran for a few microseconds after it, then switches to the clock of
// what runs next (the Sapphire Rapids VM: 3.0-3.3 GHz after AVX-512 or AMX
// loops, a stop of about a microsecond, then 3.5-3.8 under the probe's own
// adds). So the probe is short: a few hundred adds that let the work's last
// instructions retire, then up to 4 chains of 2000 adds, stopping at the
// first that reads under 0.7 of a neighbour (it held the switch); the median
// of those before it. About 3 µs. 0 where !CoreClockAvailable() or when the
// first chain held the switch.
double CoreClockGhz();

// The clock readings of a Run's work items (RunOptions::probe_clock):
// ParallelFor calls AfterItem() on the thread that ran each item, right after
// it (the bench also between a micro-kernel's calls), and a thread reads the clock at most once per
// 5 ms of its own time (its last reading persists across Runs), so the probe's 3 µs stay under
// 0.1%.
class ItemClocks {
 public:
  void AfterItem();
  std::vector<double> Take();

 private:
  std::mutex mu_;
  std::vector<double> ghz_;
};

}  // namespace attn

#endif  // ATTNLAB_KERNELS_CORE_CLOCK_H_
