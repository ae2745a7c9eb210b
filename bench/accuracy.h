// The accuracy run: every registry variant against the fp64 reference for
// N = 128..max_n (powers of two), d = 64 and 128 and each mask kind, written
// as JSON (docs/bench-json.md, "Accuracy JSON").
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
  int threads = 0;
  size_t memory_budget = 0;
};

int RunAccuracy(const AccuracyOptions& options);

// Query row i of `problem` (B = H = 1) re-posed as a one-query problem with
// the same semantics, writing O to `out` (dv floats): same K, V and scale;
// causal / window (right = 0): the keys up to i + Lk - Lq, so the one-query
// diagonal lands on the same key; additive: mask row i; key lengths: the
// same. The reference solves it in O(Lk·d) instead of O(Lq·Lk·d).
Problem RowProblem(const Problem& problem, int64_t i, float* out);

}  // namespace attn::bench

#endif  // ATTNLAB_BENCH_ACCURACY_H_
