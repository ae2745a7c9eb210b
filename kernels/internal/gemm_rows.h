// Attention for a block of query rows with OpenBLAS sgemm for both products:
// the shared core of the `blas` (a whole head, or panels of it) and `chunked`
// (C rows at a time) variants.
#ifndef ATTNLAB_KERNELS_INTERNAL_GEMM_ROWS_H_
#define ATTNLAB_KERNELS_INTERNAL_GEMM_ROWS_H_

#include <cstdint>

#include "kernels/problem.h"

namespace attn {

// A BLAS leading dimension for `count` rows of `width` floats `stride`
// apart, or 0 when BLAS cannot take it (stride < width with more than one
// row, or beyond int). With a single row the leading dimension is never
// used.
int LeadingDim(int64_t stride, int64_t count, int64_t width);

// O rows [row0, row0 + rows) of head (b, h), and lse / weights:
//   S = Q·Kᵀ over the block's union of visible keys (sgemm, M = rows,
//   N = keys, K = dk), SoftmaxRows, O = P·V (sgemm, M = rows, N = dv,
//   K = keys) or RowsTimesV when a non-finite V row lies in a range some row
//   must not see, FinishRows.
// `scores` holds rows·Lk floats, row_max and row_sum `rows` floats each.
// Runs on the calling thread; callers parallelize over blocks and keep
// OpenBLAS single-threaded (ScopedThreads(1), thread_scope.h), so a row's result does not
// depend on the thread count.
void GemmAttendRows(const ValidProblem& p, int64_t b, int64_t h, int64_t row0, int64_t rows,
                    float* scores, float* row_max, float* row_sum);

}  // namespace attn

#endif  // ATTNLAB_KERNELS_INTERNAL_GEMM_ROWS_H_
