// Benchmarks of the micro-kernel list (kernels/ukernels/ukernels.inc): every
// entry on L1/L2-resident data at the shapes the variants call it with, one
// thread, the best Highway target, against the FMA peak of the same core
// (bench/fma_peak.h): the report divides by `ceiling_fma/threads:1`, the
// suite's FMA ceiling measured interleaved with these cases; the
// peak_fraction counter by the same loop's rate measured at start-up.
//
// Names: ukernel/<entry>/<shape tokens>, e.g.
// ukernel/f32_score_tile/rows:64/keys:512/d:128/threads:1.
// Counters (docs/bench-json.md): GFLOPS for the entries that are FMA work
// (scores, P·V, dot: 2 FLOPs per multiply-add), peak_fraction = GFLOPS / the
// FMA peak, Gelems_per_s for the others (softmax, exp, transpose, finish:
// elements of their output per second), fma_peak_gflops; the score
// modifiers (softcap, ALiBi) also scores_per_s and ns_per_score, and ALiBi
// GFLOPS at one multiply-add per score.
#ifndef ATTNLAB_BENCH_UKERNEL_BENCH_H_
#define ATTNLAB_BENCH_UKERNEL_BENCH_H_

#include <benchmark/benchmark.h>

#include <functional>
#include <string>
#include <vector>

namespace attn::bench {

struct UkernelCase {
  std::string name;
  std::function<void(benchmark::State&)> run;
};

// One case per (entry, shape) of every entry this CPU can run (an entry of
// an ISA it lacks, such as AVX512_BF16 on an AVX2-only core, has none: see
// UkernelsNotRun). `peak_gflops` is the one-thread FMA peak measured before
// registration (MeasureFmaPeakGflops), for peak_fraction.
std::vector<UkernelCase> UkernelCases(double peak_gflops);

// The entries UkernelCases leaves out and why ("bf16_score_tile,
// bf16_pv_rows: this CPU lacks AVX512_BF16"), or "" when it runs them all:
// the JSON context key attnlab_ukernels_not_run.
std::string UkernelsNotRun();

}  // namespace attn::bench

#endif  // ATTNLAB_BENCH_UKERNEL_BENCH_H_
