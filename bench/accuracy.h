// The accuracy run: every registry variant against the fp64 reference for
// N = 128..max_n (powers of two), d = 64 and 128 and each mask kind, and the
// backward of every variant that has one up to grad_max_n, written as JSON
// (docs/bench-json.md, "Accuracy JSON").
#ifndef ATTNLAB_BENCH_ACCURACY_H_
#define ATTNLAB_BENCH_ACCURACY_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/problem.h"

namespace attn::bench {

struct AccuracyOptions {
  std::string out = "accuracy.json";
  int64_t max_n = 16384;
  // The backward's results (grad/<variant>/...) go up to this N (and
  // max_n): the fp64 reference backward and its bounds take O(N²·d) scalar
  // double work on the whole problem, ~10 min per case at N = 16384.
  int64_t grad_max_n = 2048;
  // Which results to run (--accuracy_passes=forward,backward): O and lse of
  // every variant, the gradients of those with a backward, or both.
  bool forward = true;
  bool backward = true;
  int threads = 0;
  size_t memory_budget = 0;
  // Keep the results `out` holds and run only the missing ones (--resume=FILE).
  bool resume = false;
  bool resume_force = false;  // even when `out` came from another commit, thread count or CPU
  std::string args;           // the command line, as the context's attnlab_args
};

// Writes `out` again after every result (whole, then renamed over it): an interruption keeps
// every finished result. Returns 0, 1 when a variant exceeds its bound, 2 when `out` cannot be
// resumed, 128 + the signal when interrupted (bench/resume.h).
int RunAccuracy(const AccuracyOptions& options);

// Query row i of `problem` (B = H = 1) re-posed as a one-query problem with
// the same semantics, writing O to `out` (dv floats): same K, V and scale;
// causal / window (right = 0): the keys up to i + Lk - Lq, so the one-query
// diagonal lands on the same key; additive: mask row i; key lengths: the
// same. The reference solves it in O(Lk·d) instead of O(Lq·Lk·d).
Problem RowProblem(const Problem& problem, int64_t i, float* out);

}  // namespace attn::bench

#endif  // ATTNLAB_BENCH_ACCURACY_H_
