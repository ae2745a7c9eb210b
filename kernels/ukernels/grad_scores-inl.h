// Backward scores: from a tile of recomputed scores S and of dP = dO·Vᵀ, the
// weights P = e^(S - lse) and the score gradients dS = scale·P·(dP - D), in
// place: flash's backward (kernels/flash_backward.cc) calls it once per
// (query block, key block) tile, between the two score products and the
// three gradient products.
//
// Contract (GradScores):
//   s    S in, P out: nrows rows of ncols floats, `ld` floats apart.
//   dp   dP in, dS out: the same layout.
//   lse  per row: the forward's logsumexp. A row with lse = -inf (fully
//        masked) gets P = 0 and dS = 0 exactly, whatever S and dP hold; a
//        NaN lse makes its row NaN.
//   dsum per row: D = Σ_d dO·O.
//   scale  folded into dS (dQ = dS·K and dK = dSᵀ·Q need no further scaling).
//   slope  optional, the layout of s: a factor per score folded into dS (a
//        softcap's 1 - t²); nullptr is 1.
//   ncols a multiple of the lane count; rows 64-byte aligned.
// P follows ExpOfDifference (exp-inl.h): e^(S - lse) within kFastExp2MaxUlp
// plus the rounding of the difference; S = -inf gives exactly 0.
// Cost per vector: ~17 instructions of exp, 1 sub, 2 mul: like the forward's
// softmax, one exp per score, against 2·(3·dk + 2·dv) FLOPs of products per
// score (3% of the backward's instructions at d = 64).
#if defined(ATTNLAB_KERNELS_UKERNELS_GRAD_SCORES_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNLAB_KERNELS_UKERNELS_GRAD_SCORES_INL_H_
#undef ATTNLAB_KERNELS_UKERNELS_GRAD_SCORES_INL_H_
#else
#define ATTNLAB_KERNELS_UKERNELS_GRAD_SCORES_INL_H_
#endif

#include <cstdint>

#include "hwy/highway.h"
#include "kernels/ukernels/common-inl.h"
#include "kernels/ukernels/exp-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attn {
namespace HWY_NAMESPACE {

HWY_INLINE void GradScores(float* HWY_RESTRICT s, float* HWY_RESTRICT dp, int64_t ld, int64_t nrows,
                           int64_t ncols, const float* lse, const float* dsum, float scale,
                           const float* HWY_RESTRICT slope = nullptr) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const VF sc = hn::Set(d, scale);
  for (int64_t x = 0; x < nrows; ++x) {
    float* sx = s + x * ld;
    float* dpx = dp + x * ld;
    if (lse[x] == -kInf) {
      for (int64_t c = 0; c < ncols; c += N) {
        hn::Store(hn::Zero(d), d, sx + c);
        hn::Store(hn::Zero(d), d, dpx + c);
      }
      continue;
    }
    const VF l = hn::Set(d, lse[x]);
    const VF dd = hn::Set(d, dsum[x]);
    for (int64_t c = 0; c < ncols; c += N) {
      const VF p = ExpOfDifference(d, hn::Load(d, sx + c), l);
      hn::Store(p, d, sx + c);
      VF ds = hn::Mul(hn::Mul(p, sc), hn::Sub(hn::Load(d, dpx + c), dd));
      if (slope != nullptr) ds = hn::Mul(ds, hn::Load(d, slope + x * ld + c));
      hn::Store(ds, d, dpx + c);
    }
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace attn
HWY_AFTER_NAMESPACE();

#endif  // ATTNLAB_KERNELS_UKERNELS_GRAD_SCORES_INL_H_
