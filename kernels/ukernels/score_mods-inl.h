// Score modifiers on a tile of scaled logits (kernels/problem.h, "Score
// modifiers"): the logit softcap and the ALiBi bias, applied by flash after
// S = scale·Q·Kᵀ and before the mask and the softmax. Highway's toggling
// include guard.
//
//   SoftcapRow     out[i] = cap·tanh(x[i]·(1/cap)) with FastTanh below. In
//                  place is fine (out == x). Any n: the tail runs on a
//                  one-lane vector, so every element gets the same arithmetic.
//   FastTanh       tanh(y) = sign(y)·(1 - t)/(1 + t), t = e^(-2|y|) by
//                  FastExp2 (exp-inl.h): ~22 instructions and a division per
//                  vector. attnlab_bench ukernel/f32_softcap, one Zen 4 core,
//                  AVX3: 0.43 ns per score over 512 (0.56 over 64, flash's
//                  rows per key), against 0.25 for f32_exp2 alone; flash's
//                  products take ~5.2 ns per score at d = 128, so softcap
//                  costs flash 12-18% (attnlab_bench --suite=serving), above
//                  the 10% aimed at: a rational tanh without the exp, or the
//                  cap folded into the softmax's first pass, is what is left.
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

// tanh(y): NaN stays NaN, ±inf and |y| >= 44 give ±1 (t underflows to 0),
// ±0 keeps its sign.
template <class D, class V = hn::Vec<D>>
HWY_INLINE V FastTanh(D d, V y) {
  const V t = FastExp2(d, hn::Mul(hn::Abs(y), hn::Set(d, -2.8853900817779268f)));  // -2·log2 e
  const V one = hn::Set(d, 1.0f);
  return hn::CopySign(hn::Div(hn::Sub(one, t), hn::Add(one, t)), y);
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
