// Softmax steps on rows of scores, for every variant:
//   ScaleMaskMax + ExpSubSum  the two passes of a materialized row (naive's
//                             algorithm, vectorized: blas, simd, chunked);
//   OnlineSoftmaxColumns      flash's online update of a score tile stored
//                             key-major (Sᵀ: one vector = one key for 16
//                             queries), vectorized over queries;
//   OnlineSoftmaxRows         the same for a few rows stored row-major (S),
//                             vectorized over keys;
//   FinishRow                 O / l and lse, masked and NaN rows included.
// The exponential is FastExp2 (exp-inl.h, <= 2 ulp), always of a difference
// x - max <= 0 (ExpOfDifference), so every finite logit works. Sums over keys
// are blocked (kKeySumBlock, kernels/problem.h).
//
// Contract (online steps): m, l, alpha hold each row's running maximum,
// running sum and (out) the factor 2^(m_old - m_new) by which the row's O
// must be rescaled; a row whose maximum is -inf (nothing visible yet) keeps
// m = -inf, l = 0 and gets alpha = 0 (its O is not read). On return the
// tile holds the unnormalized weights e^(s - m_new). A NaN score makes l NaN.
#if defined(ATTNLAB_KERNELS_UKERNELS_SOFTMAX_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNLAB_KERNELS_UKERNELS_SOFTMAX_INL_H_
#undef ATTNLAB_KERNELS_UKERNELS_SOFTMAX_INL_H_
#else
#define ATTNLAB_KERNELS_UKERNELS_SOFTMAX_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "hwy/highway.h"
#include "kernels/problem.h"  // kKeySumBlock
#include "kernels/ukernels/common-inl.h"
#include "kernels/ukernels/exp-inl.h"
#include "kernels/ukernels/vector_ops-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attn {
namespace HWY_NAMESPACE {

// Pass (1) on n scores: x = s·scale (+ add), stored back; returns max x.
// Sets *has_nan when any x is NaN (max would silently drop it).
HWY_INLINE float ScaleMaskMax(float* HWY_RESTRICT s, int64_t n, float scale,
                              const float* HWY_RESTRICT add, bool* has_nan) {
  const DF d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const VF vscale = hn::Set(d, scale);
  VF vmax0 = hn::Set(d, -kInf), vmax1 = vmax0;
  VF nan0 = hn::Zero(d), nan1 = nan0;
  int64_t j = 0;
  // Two vectors per step; `logits(i)` is x at s + i (with or without the
  // mask: two copies of the loop, no branch inside it).
  auto steps = [&](auto logits) {
    for (; j + 2 * lanes <= n; j += 2 * lanes) {
      const VF x0 = logits(j), x1 = logits(j + lanes);
      hn::StoreU(x0, d, s + j);
      hn::StoreU(x1, d, s + j + lanes);
      vmax0 = hn::Max(vmax0, x0);
      vmax1 = hn::Max(vmax1, x1);
      nan0 = hn::Or(nan0, hn::VecFromMask(d, hn::IsNaN(x0)));
      nan1 = hn::Or(nan1, hn::VecFromMask(d, hn::IsNaN(x1)));
    }
  };
  if (add != nullptr) {
    steps(
        [&](int64_t i) { return hn::MulAdd(hn::LoadU(d, s + i), vscale, hn::LoadU(d, add + i)); });
  } else {
    steps([&](int64_t i) { return hn::Mul(hn::LoadU(d, s + i), vscale); });
  }
  float max = hn::GetLane(hn::MaxOfLanes(d, hn::Max(vmax0, vmax1)));
  bool nan = !hn::AllFalse(d, hn::MaskFromVec(hn::Or(nan0, nan1)));
  for (; j < n; ++j) {  // < 2 vectors left
    const float x = add != nullptr ? s[j] * scale + add[j] : s[j] * scale;
    s[j] = x;
    nan = nan || std::isnan(x);
    max = std::max(max, x);
  }
  *has_nan = nan;
  return max;
}

// Pass (2): s = e^(s - max) in place; returns Σ s, summed in blocks of
// kKeySumBlock keys (problem.h, "Accumulation").
HWY_INLINE float ExpSubSum(float* HWY_RESTRICT s, int64_t n, float max) {
  const DF d;
  const VF vmax = hn::Set(d, max);
  float total = 0.0f;
  for (int64_t j0 = 0; j0 < n; j0 += kKeySumBlock) {
    VF sum = hn::Zero(d);
    // Padding lanes of the tail hold -inf: e^-inf = 0 adds nothing.
    MapInPlace(s + j0, std::min(kKeySumBlock, n - j0), -kInf, [&](VF x) {
      const VF e = ExpNonPositive(d, hn::Sub(x, vmax));
      sum = hn::Add(sum, e);
      return e;
    });
    total += hn::GetLane(hn::SumOfLanes(d, sum));
  }
  return total;
}

// A materialized row, both passes: x = s·scale (+ add) (ScaleMaskMax), then
// s = e^(x - max) and the sum (ExpSubSum). A NaN or +inf logit gives
// max = NaN and zeros in s; every logit -inf gives max = -inf and zeros.
HWY_INLINE void SoftmaxRow(float* HWY_RESTRICT s, int64_t n, float scale,
                           const float* HWY_RESTRICT add, float* max, float* sum) {
  bool has_nan = false;
  *max = ScaleMaskMax(s, n, scale, add, &has_nan);
  *sum = 0.0f;
  if (has_nan || *max == kInf) {
    *max = std::numeric_limits<float>::quiet_NaN();
    std::fill(s, s + n, 0.0f);
  } else if (*max == -kInf) {
    std::fill(s, s + n, 0.0f);
  } else {
    *sum = ExpSubSum(s, n, *max);
  }
}

// The column maximum of NV query vectors over a tile's keys. Two keys per
// step: 2·NV independent chains (one would wait on Max's latency per key).
template <int NV>
HWY_INLINE void ColumnMaxima(const float* HWY_RESTRICT st, int64_t ld, int64_t nkeys,
                             VF (&mt)[NV]) {
  const DF d;
  const size_t N = hn::Lanes(d);
  VF odd[NV];
  ATTN_UNROLLED
  for (int v = 0; v < NV; ++v) mt[v] = odd[v] = hn::Set(d, -kInf);
  int64_t j = 0;
  for (; j + 2 <= nkeys; j += 2) {
    ATTN_UNROLLED
    for (int v = 0; v < NV; ++v) {
      mt[v] = hn::Max(mt[v], hn::Load(d, st + j * ld + v * N));
      odd[v] = hn::Max(odd[v], hn::Load(d, st + (j + 1) * ld + v * N));
    }
  }
  ATTN_UNROLLED
  for (int v = 0; v < NV; ++v) {
    if (j < nkeys) mt[v] = hn::Max(mt[v], hn::Load(d, st + j * ld + v * N));
    mt[v] = hn::Max(mt[v], odd[v]);
  }
}

// The online step for NV query vectors (columns x .. x + NV·lanes of Sᵀ,
// m, l, alpha and tile_max already offset to them): a key's NV vectors per
// step, so each step reads whole lines of its Sᵀ row and runs NV independent
// exponentials. One vector per step, a pass over the tile per vector, ran
// at 0.90x this speed (Emerald Rapids VM; kernels/DESIGN.md "The softmax on
// a 2-FMA-port core"). Each column's sum is over keys in order, as before.
template <int NV>
HWY_INLINE void OnlineSoftmaxColumnsN(float* HWY_RESTRICT st, int64_t ld, int64_t nkeys,
                                      float* HWY_RESTRICT m, float* HWY_RESTRICT l,
                                      float* HWY_RESTRICT alpha,
                                      const float* HWY_RESTRICT tile_max) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const VF neg_inf = hn::Set(d, -kInf);
  VF mn[NV];  // the tile's maxima, then the new running maxima
  if (tile_max != nullptr) {
    ATTN_UNROLLED
    for (int v = 0; v < NV; ++v) mn[v] = hn::Load(d, tile_max + v * N);
  } else {
    ColumnMaxima<NV>(st, ld, nkeys, mn);
  }
  VF mu[NV], sum[NV];  // mu: the maximum subtracted (0 for a row with none yet)
  ATTN_UNROLLED
  for (int v = 0; v < NV; ++v) {
    mn[v] = hn::Max(hn::Load(d, m + v * N), mn[v]);
    mu[v] = hn::IfThenZeroElse(hn::Eq(mn[v], neg_inf), mn[v]);
    sum[v] = hn::Zero(d);
  }
  for (int64_t j = 0; j < nkeys; ++j) {
    ATTN_UNROLLED
    for (int v = 0; v < NV; ++v) {
      float* s = st + j * ld + v * N;
      const VF e = ExpOfDifference(d, hn::Load(d, s), mu[v]);
      hn::Store(e, d, s);
      sum[v] = hn::Add(sum[v], e);
    }
  }
  ATTN_UNROLLED
  for (int v = 0; v < NV; ++v) {
    const VF a = ExpOfDifference(d, hn::Load(d, m + v * N), mu[v]);
    hn::Store(hn::MulAdd(a, hn::Load(d, l + v * N), sum[v]), d, l + v * N);
    hn::Store(mn[v], d, m + v * N);
    hn::Store(a, d, alpha + v * N);
  }
}

// One tile of Sᵀ (nkeys rows of `ld` floats, key-major, 64-byte aligned) for
// `rows` queries (a multiple of the lane count; m, l, alpha aligned).
// tile_max: each query's maximum over the tile's scores when the score tile
// computed it (ScoreTile's col_max; the same values, so the same bits), or
// null: a pass over the tile finds it.
HWY_INLINE void OnlineSoftmaxColumns(float* HWY_RESTRICT st, int64_t ld, int64_t nkeys,
                                     int64_t rows, float* HWY_RESTRICT m, float* HWY_RESTRICT l,
                                     float* HWY_RESTRICT alpha,
                                     const float* HWY_RESTRICT tile_max = nullptr) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(DF()));
  constexpr int64_t kGroup = 4;  // vectors per step: 4 x 16 = kScoreTileCols on AVX-512
  for (int64_t x = 0; x < rows; x += kGroup * N) {
    const int64_t nv = std::min(kGroup, (rows - x) / N);
    const float* given = tile_max != nullptr ? tile_max + x : nullptr;
    float *s = st + x, *mx = m + x, *lx = l + x, *ax = alpha + x;
    switch (nv) {
      case 1:
        OnlineSoftmaxColumnsN<1>(s, ld, nkeys, mx, lx, ax, given);
        break;
      case 2:
        OnlineSoftmaxColumnsN<2>(s, ld, nkeys, mx, lx, ax, given);
        break;
      case 3:
        OnlineSoftmaxColumnsN<3>(s, ld, nkeys, mx, lx, ax, given);
        break;
      default:
        OnlineSoftmaxColumnsN<4>(s, ld, nkeys, mx, lx, ax, given);
        break;
    }
  }
}

// One tile of S for `nrows` rows (row r at st + r·lds, 64-byte aligned, each
// readable to a whole number of vectors past nkeys >= 1).
HWY_INLINE void OnlineSoftmaxRows(float* HWY_RESTRICT st, int64_t lds, int64_t nkeys, int64_t nrows,
                                  float* HWY_RESTRICT m, float* HWY_RESTRICT l,
                                  float* HWY_RESTRICT alpha) {
  const DF d;
  const hn::CappedTag<float, 1> d1;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const VF neg_inf = hn::Set(d, -kInf);
  const auto tail = hn::FirstN(d, static_cast<size_t>(nkeys % N == 0 ? N : nkeys % N));
  const int64_t last = (nkeys - 1) / N * N;  // start of the last vector
  for (int64_t x = 0; x < nrows; ++x) {
    float* s = st + x * lds;
    VF mt = neg_inf;
    for (int64_t j = 0; j < last; j += N) mt = hn::Max(mt, hn::Load(d, s + j));
    mt = hn::Max(mt, hn::IfThenElse(tail, hn::Load(d, s + last), neg_inf));
    const float mtile = hn::GetLane(hn::MaxOfLanes(d, mt));
    const float mo = m[x];
    const float mn = mo < mtile ? mtile : mo;
    const float mu = mn == -kInf ? 0.0f : mn;
    const VF muv = hn::Set(d, mu);
    VF sum = hn::Zero(d);
    for (int64_t j = 0; j < last; j += N) {
      const VF e = ExpOfDifference(d, hn::Load(d, s + j), muv);
      hn::Store(e, d, s + j);
      sum = hn::Add(sum, e);
    }
    const VF e = ExpOfDifference(d, hn::Load(d, s + last), muv);
    hn::Store(e, d, s + last);
    sum = hn::Add(sum, hn::IfThenElseZero(tail, e));
    const float a = hn::GetLane(ExpOfDifference(d1, hn::Set(d1, mo), hn::Set(d1, mu)));
    l[x] = a * l[x] + hn::GetLane(hn::SumOfLanes(d, sum));
    m[x] = mn;
    alpha[x] = a;
  }
}

// out[0, dv) = acc / l and *lse = m + ln l (lse may be null; out may be acc).
// A fully masked row (m = -inf, l = 0) gives O = 0, lse = -inf; a NaN or
// +inf logit (m NaN, or l NaN) gives NaN.
HWY_INLINE void FinishRow(const float* acc, float m, float l, int64_t dv, float* out, float* lse) {
  if (m == -kInf && l == 0.0f) {
    std::fill(out, out + dv, 0.0f);
    if (lse) *lse = -kInf;
    return;
  }
  ScaleRow(acc, dv, 1.0f / l, out);
  if (lse) *lse = m + std::log(l);
}

// FinishRow with an attention sink (kernels/problem.h, "Score modifiers"):
// one more logit `sink` in the denominator, without a value. With m' =
// max(m, sink) and l' = l·e^(m - m') + e^(sink - m'): O = acc·e^(m - m')/l',
// lse = m' + ln l'. A row with nothing visible gets O = 0 and lse = sink;
// sink = -inf is FinishRow; NaN rows stay NaN.
HWY_INLINE void FinishRowWithSink(const float* acc, float m, float l, float sink, int64_t dv,
                                  float* out, float* lse) {
  if (sink == -kInf || std::isnan(m) || std::isnan(l)) return FinishRow(acc, m, l, dv, out, lse);
  if (m == -kInf && l == 0.0f) {
    std::fill(out, out + dv, 0.0f);
    if (lse) *lse = sink;
    return;
  }
  const float top = std::max(m, sink);
  const float shrink = std::exp(m - top);  // 1 unless the sink is the maximum
  const float total = l * shrink + std::exp(sink - top);
  ScaleRow(acc, dv, shrink / total, out);
  if (lse) *lse = top + std::log(total);
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace attn
HWY_AFTER_NAMESPACE();

#endif  // ATTNLAB_KERNELS_UKERNELS_SOFTMAX_INL_H_
