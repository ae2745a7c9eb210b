// An end-to-end example: one multi-head self-attention layer around any
// registry variant, to show what share of a layer the attention kernel is.
//
//   x [L, d_model]  (d_model = H·d)
//   Q = x·Wq, K = x·Wk, V = x·Wv      three [L x d_model]·[d_model x d_model] sgemms;
//                                     [L, d_model] is [L, H, d]: the BLHD layout
//                                     the problem API takes without a transpose
//   A = attention(Q, K, V)            any registry variant (no mask), A in [L, H, d]
//   y = A·Wo                          one more sgemm
//
// FLOPs: 4 projections of 2·L·d_model² each plus attention's 4·H·L²·d.
#ifndef ATTNLAB_BENCH_LAYER_H_
#define ATTNLAB_BENCH_LAYER_H_

#include <cstdint>
#include <vector>

#include "kernels/registry.h"

namespace attn::bench {

struct LayerTimes {
  Status status;
  double attention_seconds = 0;
  double total_seconds = 0;
};

class MhaLayer {
 public:
  MhaLayer(int64_t len, int64_t heads, int64_t dim, uint64_t seed);
  // Whether `variant` can run this layer's attention (budget, support).
  Status Prepare(const Variant& variant, const RunOptions& options) const;
  LayerTimes Forward(const Variant& variant, const RunOptions& options);
  double Flops() const;
  const std::vector<float>& output() const { return y_; }

 private:
  Problem AttentionProblem();
  int64_t len_, heads_, dim_, model_;
  std::vector<float> x_, wq_, wk_, wv_, wo_, q_, k_, v_, a_, y_;
};

}  // namespace attn::bench

#endif  // ATTNLAB_BENCH_LAYER_H_
