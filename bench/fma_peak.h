// The FMA peak of one core on the best Highway target (bench/fma_peak.cc).
#ifndef ATTNLAB_BENCH_FMA_PEAK_H_
#define ATTNLAB_BENCH_FMA_PEAK_H_

#include <cstdint>

namespace attn::bench {

// Runs `rounds` rounds of independent register-resident FMAs; returns the
// FLOPs done (2 per lane per FMA).
double FmaFlops(int64_t rounds);

// The best GFLOP/s of repeated ~1M-round loops within `seconds` (the
// machine is shared: the best is the least disturbed).
double MeasureFmaPeakGflops(double seconds);

}  // namespace attn::bench

#endif  // ATTNLAB_BENCH_FMA_PEAK_H_
