// The oracle: plain, obviously correct, double precision. Never optimized.
//
// It reads the same Problem description as the kernels but shares none of
// their code beyond Validate(): the mask rules below are written again,
// element by element, straight from the semantics in kernels/problem.h, so a
// bug in the kernels' shared helpers (ValidProblem::VisibleKeys) cannot hide.
#ifndef ATTNLAB_REFERENCE_REFERENCE_H_
#define ATTNLAB_REFERENCE_REFERENCE_H_

#include <vector>

#include "kernels/problem.h"
#include "kernels/status.h"

namespace attn::reference {

struct Result {
  std::vector<double> o;        // [B, H, Lq, dv], contiguous
  std::vector<double> lse;      // [B, H, Lq]
  std::vector<double> weights;  // [B, H, Lq, Lk] (when asked for)
};

// Two-pass softmax with max subtraction, in double, on the exact values the
// inputs stand for (bf16, f16 and scale·int8 elements convert to double
// exactly). Fails only when Validate(problem) fails.
StatusOr<Result> Attention(const Problem& problem, bool with_weights = false);

// Row (b, h, i) of a view as the exact doubles its elements stand for
// (`scales` is read for an int8 view only).
void LoadRow(const TensorRef<const void>& t, const RowScales& scales, int64_t b, int64_t h,
             int64_t i, int64_t n, double* out);

// True when query row i of batch b may read key j under the structural masks
// (causal, sliding window, key lengths), per kernels/problem.h.
bool KeyVisible(const Problem& problem, int64_t b, int64_t i, int64_t j);

}  // namespace attn::reference

#endif  // ATTNLAB_REFERENCE_REFERENCE_H_
