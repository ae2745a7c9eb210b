// Row-block operations on a ValidProblem, composed of micro-kernels: the
// shared steps of the materializing variants (blas, simd, chunked: see
// kernels/internal/rows.h for the sequence). Highway's toggling include
// guard; kernels/internal/rows.cc instantiates them per target and simd.cc
// inlines them.
//
// The row-softmax contract (SoftmaxRowsImpl): raw dot products q·k of a block
// of query rows against a contiguous key range [col0, col0 + cols) that
// covers every row's visible keys. One fused pass per row, while the row is
// in L1: (1) scale, add the additive mask, row max and a NaN flag
// (ScaleMaskMax); (2) e^(x - max) and the row sum (ExpSubSum): SoftmaxRow.
// Hidden keys
// inside the block are *set* to 0 (never multiplied), so a NaN computed from
// a hidden K row cannot survive. Normalization is deferred to O (FinishRow
// multiplies the dv outputs by 1/sum instead of the Lk weights), so the
// softmax costs Lk·(load, fma, max, store) + Lk·(exp, add). Rounding
// x·log2(e) in the exponential adds a relative error <= |x|·u to e^x, i.e.
// an absolute error <= u/e on a weight: inside the bound the tests derive.
#if defined(ATTNLAB_KERNELS_INTERNAL_ROW_BLOCKS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNLAB_KERNELS_INTERNAL_ROW_BLOCKS_INL_H_
#undef ATTNLAB_KERNELS_INTERNAL_ROW_BLOCKS_INL_H_
#else
#define ATTNLAB_KERNELS_INTERNAL_ROW_BLOCKS_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "hwy/highway.h"
#include "kernels/problem.h"
#include "kernels/ukernels/common-inl.h"
#include "kernels/ukernels/pv_tile-inl.h"
#include "kernels/ukernels/softmax-inl.h"
#include "kernels/ukernels/vector_ops-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attn {
namespace HWY_NAMESPACE {

// The block: query rows
// [row0, row0 + rows) of head (b, h); scores s[r * ld + (j - col0)] for keys
// j in [col0, col0 + cols), which must contain every row's VisibleKeys.

// Softmax of the block (see the file comment). Per row: row_max[r] = max
// logit (-inf: fully masked; NaN: the row is NaN), row_sum[r] = Σ e^(x - max);
// s holds the unnormalized weights, 0 for hidden keys. Writes the attention
// weights when the problem asks for them.
HWY_INLINE void SoftmaxRowsImpl(const ValidProblem& p, int64_t b, int64_t h, int64_t row0,
                                int64_t rows, int64_t col0, int64_t cols, float* s, int64_t ld,
                                float* row_max, float* row_sum) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = row0 + r;
    float* row = s + r * ld;
    const KeyRange keys = p.VisibleKeys(b, i);
    // Visible part of the block row, relative to col0 (empty rows: [0, 0)).
    const int64_t vb = keys.empty() ? 0 : keys.begin - col0;
    const int64_t ve = keys.empty() ? 0 : keys.end - col0;
    if (vb > 0) std::fill(row, row + vb, 0.0f);
    if (ve < cols) std::fill(row + ve, row + cols, 0.0f);
    const float* add = p.AdditiveRow(b, h, i);
    float max = -kInf, sum = 0.0f;
    if (ve > vb) {
      SoftmaxRow(row + vb, ve - vb, p.scale, add ? add + keys.begin : nullptr, &max, &sum);
    }
    row_max[r] = max;
    row_sum[r] = sum;
    if (float* w = p.WeightsRow(b, h, i)) {
      const int64_t lk = p.shape.kv_len;
      std::fill(w, w + lk, 0.0f);
      if (std::isnan(max)) {
        std::fill(w + keys.begin, w + keys.end, std::numeric_limits<float>::quiet_NaN());
      } else if (max != -kInf) {
        std::memcpy(w + keys.begin, row + vb, (ve - vb) * sizeof(float));
        ScaleRow(w + keys.begin, ve - vb, 1.0f / sum, w + keys.begin);
      }
    }
  }
}

// O rows of the block hold Σ_j p_j v_j (unnormalized): divide by the sum and
// write lse (FinishRow). Fully masked rows get O = 0 and lse = -inf, NaN
// rows NaN.
HWY_INLINE void FinishRowsImpl(const ValidProblem& p, int64_t b, int64_t h, int64_t row0,
                               int64_t rows, const float* row_max, const float* row_sum) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = row0 + r;
    float* o = p.ORow(b, h, i);
    FinishRow(o, row_max[r], row_sum[r], p.shape.value_dim, o,
              p.lse.empty() ? nullptr : &p.lse[p.RowIndex(b, h, i)]);
  }
}

// O rows (unnormalized) from each row's own visible keys only: the fallback
// when the block's key range holds a non-finite V row that some row must not
// see (0·NaN would leak it). Cost O(rows·visible·dv), no extra memory.
HWY_INLINE void RowsTimesVImpl(const ValidProblem& p, int64_t b, int64_t h, int64_t row0,
                               int64_t rows, int64_t col0, const float* s, int64_t ld) {
  const int64_t kvh = p.KvHead(h);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = row0 + r;
    const KeyRange keys = p.VisibleKeys(b, i);
    float* o = p.ORow(b, h, i);
    if (keys.empty()) {
      std::fill(o, o + p.shape.value_dim, 0.0f);
      continue;
    }
    PvRows(s + r * ld + (keys.begin - col0), ld, 1, p.VRow(b, kvh, keys.begin), p.v.strides.row,
           keys.size(), p.shape.value_dim, o, p.o.strides.row);
  }
}

// True when V rows [begin, end) of (b, kv head) are all finite.
HWY_INLINE bool ValuesFiniteImpl(const ValidProblem& p, int64_t b, int64_t kvh, int64_t begin,
                                 int64_t end) {
  for (int64_t j = begin; j < end; ++j) {
    if (!AllFinite(p.VRow(b, kvh, j), p.shape.value_dim)) return false;
  }
  return true;
}

// Raw scores q·k for the block with one Dot per (row, key): the path for
// strides a GEMM cannot take (row stride < d, e.g. broadcast rows).
HWY_INLINE void DotScoresImpl(const ValidProblem& p, int64_t b, int64_t h, int64_t row0,
                              int64_t rows, int64_t col0, int64_t cols, float* s, int64_t ld) {
  const int64_t kvh = p.KvHead(h);
  for (int64_t r = 0; r < rows; ++r) {
    const float* q = p.QRow(b, h, row0 + r);
    for (int64_t c = 0; c < cols; ++c) {
      s[r * ld + c] = DotRow(q, p.KRow(b, kvh, col0 + c), p.shape.head_dim);
    }
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace attn
HWY_AFTER_NAMESPACE();

#endif  // ATTNLAB_KERNELS_INTERNAL_ROW_BLOCKS_INL_H_
