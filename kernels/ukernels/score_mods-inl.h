// Score modifiers on a tile of scaled logits (kernels/problem.h, "Score
// modifiers"): the logit softcap and the ALiBi bias, applied by flash after
// S = scale·Q·Kᵀ and before the mask and the softmax. Highway's toggling
// include guard.
//
//   SoftcapRow     out[i] = cap·tanh(x[i]·(1/cap)) with FastTanh below. In
//                  place is fine (out == x). Any n: the tail runs on a
//                  one-lane vector, so every element gets the same arithmetic.
//   FastTanh       tanh(y): an odd polynomial y + y³·P(y²) (degree 6 in y²)
//                  for |y| <= 1, else sign(y)·(1 - t)/(1 + t), t = e^(-2|y|)
//                  by FastExp2 (exp-inl.h) and a division; lane by lane, the
//                  exp form skipped when every lane of a vector is small (a
//                  softcap's logits within ±cap). attnlab_bench
//                  ukernel/f32_softcap, one Zen 4 core, AVX3: 0.24 ns per
//                  score over 512 (0.33 over 64), against 0.45-0.49 with the
//                  exp form for every score; flash applies it in ScoreTile's
//                  store, where the products take ~5.2 ns per score at
//                  d = 128: softcap costs flash 3-11% (kernels/DESIGN.md).
//                  Its error is absolute, not relative: within kTanhMaxAbsU·u
//                  of tanh (ukernels.h; u = 2^-24), so a logit far below the
//                  cap keeps an absolute error of a few u·cap. That is what
//                  reference/error_bound.h charges a softcap ((e_tanh + 2)·u·cap).
//   AlibiRow       s[j] += slope·(d0 + j) for j < n: one row of a row-major
//                  tile, d0 = key0 - i - off the first key's distance.
//   AlibiColumns   st[j·ld + x] += slopes[x]·((key0 + j) - positions[x]) for
//                  j < nkeys, x < rows (a multiple of the lane count): a
//                  key-major tile (Sᵀ) whose rows each have a head slope and a
//                  query position (i + off).
// The distances are whole numbers formed in fp32: exact below 2^24 keys, so
// the bias rounds once (the product), as reference/error_bound.h assumes.
#if defined(ATTNLAB_KERNELS_UKERNELS_SCORE_MODS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNLAB_KERNELS_UKERNELS_SCORE_MODS_INL_H_
#undef ATTNLAB_KERNELS_UKERNELS_SCORE_MODS_INL_H_
#else
#define ATTNLAB_KERNELS_UKERNELS_SCORE_MODS_INL_H_
#endif

#include <cstdint>

#include "hwy/highway.h"
#include "kernels/ukernels/common-inl.h"
#include "kernels/ukernels/exp-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attn {
namespace HWY_NAMESPACE {

// tanh(y) for |y| <= 1: y + y³·P(y²), P of degree 6 fitted (weighted least
// squares toward minimax, in numpy) to the absolute error of tanh on [0, 1];
// evaluated in fp32 within 1.14 u of tanh there (the result's own rounding
// is most of it). 10 operations where the exp form below takes ~20.
template <class D, class V = hn::Vec<D>>
HWY_INLINE V TanhSmall(D d, V y) {
  const V z = hn::Mul(y, y);
  V p = hn::Set(d, -0.0003444580652285367f);
  p = hn::MulAdd(p, z, hn::Set(d, 0.002249091397970915f));
  p = hn::MulAdd(p, z, hn::Set(d, -0.007868761196732521f));
  p = hn::MulAdd(p, z, hn::Set(d, 0.02142932079732418f));
  p = hn::MulAdd(p, z, hn::Set(d, -0.053857721388339996f));
  p = hn::MulAdd(p, z, hn::Set(d, 0.13331936299800873f));
  p = hn::MulAdd(p, z, hn::Set(d, -0.33333268761634827f));
  return hn::CopySign(hn::MulAdd(hn::Mul(y, z), p, y), y);  // -0 stays -0
}

// tanh(y): NaN stays NaN, ±inf and |y| >= 44 give ±1 (t underflows to 0),
// ±0 keeps its sign. Lanes with |y| <= 1 take TanhSmall, the others
// sign(y)·(1 - t)/(1 + t), t = e^(-2|y|): each lane's result depends on its
// own y only (a one-lane tail gets the same bits). A vector whose lanes are
// all small (a softcap's logits within ±cap: every vector of a typical tile)
// skips the exp and the division.
template <class D, class V = hn::Vec<D>>
HWY_INLINE V FastTanh(D d, V y) {
  const V one = hn::Set(d, 1.0f);
  const auto small = hn::Le(hn::Abs(y), one);
  const V near = TanhSmall(d, y);
  if (hn::AllTrue(d, small)) return near;
  const V t = FastExp2(d, hn::Mul(hn::Abs(y), hn::Set(d, -2.8853900817779268f)));  // -2·log2 e
  const V far = hn::CopySign(hn::Div(hn::Sub(one, t), hn::Add(one, t)), y);
  return hn::IfThenElse(small, near, far);
}

template <class D>
HWY_INLINE void SoftcapVectors(D d, const float* x, float* out, int64_t n, float cap) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto vcap = hn::Set(d, cap);
  const auto inv = hn::Set(d, 1.0f / cap);
  for (int64_t i = 0; i + N <= n; i += N) {
    hn::StoreU(hn::Mul(vcap, FastTanh(d, hn::Mul(hn::LoadU(d, x + i), inv))), d, out + i);
  }
}

HWY_INLINE void SoftcapRow(const float* x, float* out, int64_t n, float cap) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const int64_t whole = n / N * N;
  SoftcapVectors(d, x, out, whole, cap);
  SoftcapVectors(hn::CappedTag<float, 1>(), x + whole, out + whole, n - whole, cap);
}

HWY_INLINE void AlibiRow(float* s, int64_t n, float slope, float d0) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto vslope = hn::Set(d, slope);
  int64_t j = 0;
  for (; j + N <= n; j += N) {
    const auto dist = hn::Iota(d, d0 + static_cast<float>(j));
    hn::StoreU(hn::MulAdd(vslope, dist, hn::LoadU(d, s + j)), d, s + j);
  }
  for (; j < n; ++j) s[j] += slope * (d0 + static_cast<float>(j));
}

HWY_INLINE void AlibiColumns(float* st, int64_t ld, int64_t nkeys, int64_t rows,
                             const float* slopes, const float* positions, float key0) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t x = 0; x < rows; x += N) {
    const auto slope = hn::LoadU(d, slopes + x);
    const auto pos = hn::LoadU(d, positions + x);
    for (int64_t j = 0; j < nkeys; ++j) {
      const auto dist = hn::Sub(hn::Set(d, key0 + static_cast<float>(j)), pos);
      float* row = st + j * ld + x;
      hn::StoreU(hn::MulAdd(slope, dist, hn::LoadU(d, row)), d, row);
    }
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace attn
HWY_AFTER_NAMESPACE();

#endif  // ATTNLAB_KERNELS_UKERNELS_SCORE_MODS_INL_H_
