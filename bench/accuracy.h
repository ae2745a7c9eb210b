// The accuracy run: every registry variant against the fp64 reference for
// N = 128..max_n (powers of two), d = 64 and 128 and each mask kind, written
// as JSON (BENCH_CONTRACT, "Accuracy JSON").
#ifndef ATTNLAB_BENCH_ACCURACY_H_
#define ATTNLAB_BENCH_ACCURACY_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace attn::bench {

struct AccuracyOptions {
  std::string out = "accuracy.json";
  int64_t max_n = 16384;
  int threads = 0;
  size_t memory_budget = 0;
};

int RunAccuracy(const AccuracyOptions& options);

}  // namespace attn::bench

#endif  // ATTNLAB_BENCH_ACCURACY_H_
