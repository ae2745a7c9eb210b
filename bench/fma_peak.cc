// The FMA peak, measured: a register-resident loop of independent fused
// multiply-adds on the best Highway target. The one FMA loop of the bench:
// `ceiling_fma/threads:T` runs it on T threads (each its own loop: the
// machine's fp32 peak, the ceiling every variant's GFLOPS is a fraction of),
// and the micro-kernel cases' peak_fraction divides by its one-thread rate
// (bench/ukernel_bench.cc).
//
// Enough independent accumulators to cover the FMA latency on every port
// (4 cycles x 2 ports on Intel, x 1 512-bit port on Zen 4): 24 where there
// are 32 vector registers, 12 with 16. Nothing is loaded or stored in the
// loop, so it measures the FMA units alone.
#include "bench/fma_peak.h"

#include <omp.h>

#include <chrono>

#include "bench/core_clock.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "bench/fma_peak.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attn::bench {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
constexpr int kChains = 24;
#else
constexpr int kChains = 12;
#endif

// Runs `rounds` rounds of kChains FMAs; returns the FLOPs done.
double FmaLoop(int64_t rounds) {
  const hn::ScalableTag<float> d;
  using V = hn::Vec<decltype(d)>;
  // Fully unrolled, so that gcc keeps acc in registers (a loop over the
  // array kept it on the stack: a load and a store per FMA).
  V acc[kChains];
  HWY_UNROLL(kChains)
  for (int i = 0; i < kChains; ++i) acc[i] = hn::Set(d, 1.0f + 1e-3f * float(i));
  const V a = hn::Set(d, 0.999999f), b = hn::Set(d, 1e-7f);
  for (int64_t r = 0; r < rounds; ++r) {
    HWY_UNROLL(kChains)
    for (int i = 0; i < kChains; ++i) acc[i] = hn::MulAdd(acc[i], a, b);
  }
  V sum = acc[0];
  HWY_UNROLL(kChains)
  for (int i = 1; i < kChains; ++i) sum = hn::Add(sum, acc[i]);
  volatile float sink = hn::GetLane(sum);  // keeps the loop
  (void)sink;
  return 2.0 * double(rounds) * kChains * double(hn::Lanes(d));
}

const char* TargetName() { return hwy::TargetName(HWY_TARGET); }

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace attn::bench
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attn::bench {
HWY_EXPORT(FmaLoop);
HWY_EXPORT(TargetName);

double FmaFlops(int64_t rounds) { return HWY_DYNAMIC_DISPATCH(FmaLoop)(rounds); }

void LoopOnThreads(double (*loop)(int64_t rounds), int64_t rounds, int threads, double* flops,
                   double* seconds, double* ghz) {
#pragma omp parallel num_threads(threads)
  {
    const int i = omp_get_thread_num();
    const auto start = std::chrono::steady_clock::now();
    flops[i] += loop(rounds);
    seconds[i] += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    // Before the region's join: a thread that waits there spins on light
    // code, and the core's clock moves to that within microseconds.
    if (ghz != nullptr) ghz[i] = CoreClockGhz();
  }
}

void FmaOnThreads(int64_t rounds, int threads, double* flops, double* seconds) {
  LoopOnThreads(FmaFlops, rounds, threads, flops, seconds, nullptr);
}

const char* FmaTargetName() { return HWY_DYNAMIC_DISPATCH(TargetName)(); }

double MeasureFmaPeakGflops(double seconds) {
  FmaFlops(1 << 16);  // warm up (frequency, page-in)
  double best = 0;
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    const auto start = std::chrono::steady_clock::now();
    const double flops = FmaFlops(1 << 20);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (secs > 0 && flops / secs / 1e9 > best) best = flops / secs / 1e9;
  }
  return best;
}

}  // namespace attn::bench
#endif  // HWY_ONCE
