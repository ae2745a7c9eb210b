// Row-block operations shared by the materializing and chunked kernels,
// dispatched at run time to the best Highway target (the per-target code is
// kernels/internal/row_blocks-inl.h, composed of micro-kernels;
// kernels/internal/rows.cc instantiates and exports it).
//
// A *block* is query rows [row0, row0 + rows) of head (b, h) with raw scores
// q·k for keys [col0, col0 + cols) stored at s[r * ld + (j - col0)]. The key
// range must contain every row's VisibleKeys (BlockKeys gives the smallest
// such range). The sequence every kernel follows:
//   scores (GEMM or Highway dots) -> SoftmaxRows -> O = P·V (GEMM, Highway,
//   or RowsTimesV when V holds a non-finite row) -> FinishRows.
#ifndef ATTNLAB_KERNELS_INTERNAL_ROWS_H_
#define ATTNLAB_KERNELS_INTERNAL_ROWS_H_

#include <cstdint>

#include "kernels/problem.h"

namespace attn {

// The union of VisibleKeys over the block's rows (empty if every row is).
KeyRange BlockKeys(const ValidProblem& p, int64_t b, int64_t row0, int64_t rows);

// Scale, mask, max, exp and sum in one fused pass per row (row_blocks-inl.h,
// SoftmaxRowsImpl). Leaves unnormalized weights in s (0 for hidden keys) and
// writes the attention weights if the problem asks for them.
void SoftmaxRows(const ValidProblem& p, int64_t b, int64_t h, int64_t row0, int64_t rows,
                 int64_t col0, int64_t cols, float* s, int64_t ld, float* row_max, float* row_sum);

// Divides the block's O rows by the row sums and writes lse; fully masked
// rows get O = 0, NaN rows NaN.
void FinishRows(const ValidProblem& p, int64_t b, int64_t h, int64_t row0, int64_t rows,
                const float* row_max, const float* row_sum);

// O rows (unnormalized) = Σ over each row's own visible keys of p·v.
void RowsTimesV(const ValidProblem& p, int64_t b, int64_t h, int64_t row0, int64_t rows,
                int64_t col0, const float* s, int64_t ld);

// True when V rows [begin, end) of (b, kv head kvh) are all finite.
bool ValuesFinite(const ValidProblem& p, int64_t b, int64_t kvh, int64_t begin, int64_t end);

// True when P·V over the block's union key range [keys) equals the per-row
// result: no structural mask, or every V row in the range finite (a hidden
// key's p is exactly 0, and 0·v = 0 for finite v).
bool UnionRangeIsSafe(const ValidProblem& p, int64_t b, int64_t h, KeyRange keys);

// Raw scores by Highway dot products (for strides a GEMM cannot take).
void DotScores(const ValidProblem& p, int64_t b, int64_t h, int64_t row0, int64_t rows,
               int64_t col0, int64_t cols, float* s, int64_t ld);

}  // namespace attn

#endif  // ATTNLAB_KERNELS_INTERNAL_ROWS_H_
