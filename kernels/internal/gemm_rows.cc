#include "kernels/internal/gemm_rows.h"

#include <cblas.h>

#include <algorithm>
#include <climits>

#include "kernels/internal/rows.h"

namespace attn {
namespace {}  // namespace

int LeadingDim(int64_t stride, int64_t count, int64_t width) {
  const int64_t ld = count <= 1 ? std::max(stride, std::max<int64_t>(width, 1)) : stride;
  if (ld < width || ld > INT_MAX) return 0;
  return static_cast<int>(ld);
}

void GemmAttendRows(const ValidProblem& p, int64_t b, int64_t h, int64_t row0, int64_t rows,
                    float* scores, float* row_max, float* row_sum) {
  if (rows <= 0) return;
  const int64_t kvh = p.KvHead(h);
  const int64_t dk = p.shape.head_dim, dv = p.shape.value_dim;
  const KeyRange keys = BlockKeys(p, b, row0, rows);
  const int64_t cols = keys.size();
  const int64_t ld = std::max<int64_t>(cols, 1);

  if (cols > 0) {
    const int lda = LeadingDim(p.q.strides.row, rows, dk);
    const int ldb = LeadingDim(p.k.strides.row, cols, dk);
    if (lda > 0 && ldb > 0 && dk <= INT_MAX && cols <= INT_MAX && rows <= INT_MAX) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(cols), int(dk), 1.0f,
                  p.QRow(b, h, row0), lda, p.KRow(b, kvh, keys.begin), ldb, 0.0f, scores, int(ld));
    } else {
      DotScores(p, b, h, row0, rows, keys.begin, cols, scores, ld);
    }
  }
  SoftmaxRows(p, b, h, row0, rows, keys.begin, cols, scores, ld, row_max, row_sum);
  if (cols > 0) {
    const int ldv = LeadingDim(p.v.strides.row, cols, dv);
    const int ldo = LeadingDim(p.o.strides.row, rows, dv);
    if (ldv > 0 && ldo > 0 && dv <= INT_MAX && UnionRangeIsSafe(p, b, h, keys)) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(dv), int(cols), 1.0f,
                  scores, int(ld), p.VRow(b, kvh, keys.begin), ldv, 0.0f, p.ORow(b, h, row0), ldo);
    } else {
      RowsTimesV(p, b, h, row0, rows, keys.begin, scores, ld);
    }
  }
  // Rows with no visible key (all of them when cols == 0) get O = 0 here.
  FinishRows(p, b, h, row0, rows, row_max, row_sum);
}

}  // namespace attn
