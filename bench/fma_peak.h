// The FMA peak on the best Highway target (bench/fma_peak.cc): the
// `ceiling_fma/threads:T` case of every suite, and the peak the micro-kernel
// cases' peak_fraction counter divides by.
#ifndef ATTNLAB_BENCH_FMA_PEAK_H_
#define ATTNLAB_BENCH_FMA_PEAK_H_

#include <cstdint>

namespace attn::bench {

// Runs `rounds` rounds of independent register-resident FMAs on the calling
// thread; returns the FLOPs done (2 per lane per FMA).
double FmaFlops(int64_t rounds);

// The same loop on `threads` OpenMP threads at once, each its own
// register-resident loop of `rounds` rounds (nothing shared, nothing in
// memory). Thread i adds its FLOPs to flops[i] and the seconds its own loop
// took to seconds[i] (both arrays of `threads`): the peak is the sum of the
// threads' rates, each timed alone, so a thread that finishes first and
// waits at the region's end for one the OS preempted (a shared machine) does
// not count that wait.
void FmaOnThreads(int64_t rounds, int threads, double* flops, double* seconds);
// The same for any register-resident loop (FLOPs done for `rounds`), e.g.
// the AMX one (ukernels::AmxBf16PeakLoop, the ceiling_amx case). With `ghz`
// (an array of `threads`), thread i also writes its core's clock right after
// its loop (CoreClockGhz, bench/core_clock.h; 0 where the probe does not run).
void LoopOnThreads(double (*loop)(int64_t rounds), int64_t rounds, int threads, double* flops,
                   double* seconds, double* ghz = nullptr);

// The Highway target the loop dispatches to ("AVX3", "AVX2", ...; the name
// of the code that ran, which is what a fraction of it is a fraction of).
const char* FmaTargetName();

// The best GFLOP/s of repeated ~1M-round loops on one thread within
// `seconds` (the machine is shared: the best is the least disturbed).
double MeasureFmaPeakGflops(double seconds);

}  // namespace attn::bench

#endif  // ATTNLAB_BENCH_FMA_PEAK_H_
