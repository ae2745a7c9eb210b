// Instantiates the row-block helpers of kernels/internal/row_blocks-inl.h for every compiled
// Highway target and exports them (see kernels/internal/rows.h).
#include "kernels/internal/rows.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/internal/rows.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// Must come after foreach_target.h.
#include "hwy/highway.h"
#include "kernels/internal/row_blocks-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attn {
namespace HWY_NAMESPACE {

void SoftmaxRowsT(const ValidProblem& p, int64_t b, int64_t h, int64_t row0, int64_t rows,
                  int64_t col0, int64_t cols, float* s, int64_t ld, float* row_max,
                  float* row_sum) {
  SoftmaxRowsImpl(p, b, h, row0, rows, col0, cols, s, ld, row_max, row_sum);
}

void FinishRowsT(const ValidProblem& p, int64_t b, int64_t h, int64_t row0, int64_t rows,
                 const float* row_max, const float* row_sum) {
  FinishRowsImpl(p, b, h, row0, rows, row_max, row_sum);
}

void RowsTimesVT(const ValidProblem& p, int64_t b, int64_t h, int64_t row0, int64_t rows,
                 int64_t col0, const float* s, int64_t ld) {
  RowsTimesVImpl(p, b, h, row0, rows, col0, s, ld);
}

bool ValuesFiniteT(const ValidProblem& p, int64_t b, int64_t kvh, int64_t begin, int64_t end) {
  return ValuesFiniteImpl(p, b, kvh, begin, end);
}

void DotScoresT(const ValidProblem& p, int64_t b, int64_t h, int64_t row0, int64_t rows,
                int64_t col0, int64_t cols, float* s, int64_t ld) {
  DotScoresImpl(p, b, h, row0, rows, col0, cols, s, ld);
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace attn
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attn {

HWY_EXPORT(SoftmaxRowsT);
HWY_EXPORT(FinishRowsT);
HWY_EXPORT(RowsTimesVT);
HWY_EXPORT(ValuesFiniteT);
HWY_EXPORT(DotScoresT);

KeyRange BlockKeys(const ValidProblem& p, int64_t b, int64_t row0, int64_t rows) {
  KeyRange all{p.shape.kv_len, 0};
  for (int64_t i = row0; i < row0 + rows; ++i) {
    const KeyRange keys = p.VisibleKeys(b, i);
    if (keys.empty()) continue;
    all.begin = std::min(all.begin, keys.begin);
    all.end = std::max(all.end, keys.end);
  }
  return all.empty() ? KeyRange{0, 0} : all;
}

void SoftmaxRows(const ValidProblem& p, int64_t b, int64_t h, int64_t row0, int64_t rows,
                 int64_t col0, int64_t cols, float* s, int64_t ld, float* row_max, float* row_sum) {
  HWY_DYNAMIC_DISPATCH(SoftmaxRowsT)(p, b, h, row0, rows, col0, cols, s, ld, row_max, row_sum);
}

void FinishRows(const ValidProblem& p, int64_t b, int64_t h, int64_t row0, int64_t rows,
                const float* row_max, const float* row_sum) {
  HWY_DYNAMIC_DISPATCH(FinishRowsT)(p, b, h, row0, rows, row_max, row_sum);
}

void RowsTimesV(const ValidProblem& p, int64_t b, int64_t h, int64_t row0, int64_t rows,
                int64_t col0, const float* s, int64_t ld) {
  HWY_DYNAMIC_DISPATCH(RowsTimesVT)(p, b, h, row0, rows, col0, s, ld);
}

bool ValuesFinite(const ValidProblem& p, int64_t b, int64_t kvh, int64_t begin, int64_t end) {
  return HWY_DYNAMIC_DISPATCH(ValuesFiniteT)(p, b, kvh, begin, end);
}

bool UnionRangeIsSafe(const ValidProblem& p, int64_t b, int64_t h, KeyRange keys) {
  return !p.HasStructuralMask() || ValuesFinite(p, b, p.KvHead(h), keys.begin, keys.end);
}

void DotScores(const ValidProblem& p, int64_t b, int64_t h, int64_t row0, int64_t rows,
               int64_t col0, int64_t cols, float* s, int64_t ld) {
  HWY_DYNAMIC_DISPATCH(DotScoresT)(p, b, h, row0, rows, col0, cols, s, ld);
}

}  // namespace attn
#endif  // HWY_ONCE
