// The one vector exponential: FastExp2 (2^x) and its softmax forms
// ExpOfDifference (e^(x - m)) and ExpNonPositive (e^x, x <= 0).
//
// FastExp2:
// Range reduction x = n + f with n = round(x), f in [-1/2, 1/2] (exact in
// fp32), 2^f = 1 + f·q(f) with q of degree 5, minimax for the relative error
// on [-1/2, 1/2] (2.0e-9, 0.03 ulp), and 2^n applied to the exponent. With
// Horner rounding the result is within kFastExp2MaxUlp = 2 ulp of the exact
// 2^x for x in [-126, 127.5) (tests/ukernel_test.cc sweeps it densely and
// records the worst; an fp32 emulation of the polynomial over 2^23
// arguments of [-1/2, 1/2] gives 0.95 ulp). Special values: x < -126
// (including -inf) gives exactly 0 (the true value is below 2^-126, an
// absolute error < 1.2e-38); 2^k is exact for whole k; NaN gives NaN.
// Callers pass x <= 0 (scores minus their running maximum).
//
// Cost per vector on AVX-512: VREDUCEPS (f), a subtraction (n), 6 FMA, a
// compare into a mask and VSCALEFPS under it (2^n and the zeroing in one):
// 10 instructions for 16 floats, where the degree-7 Taylor polynomial with
// VRNDSCALEPS, a clamp and a zeroing select took 14 (kernels/DESIGN.md, "A
// cheaper exponential for fp32"). On AVX2, 14 for 8: the magic number's add
// and subtraction, a subtraction, 6 FMA, an integer add, a shift, the
// multiply, a compare and a select.

#if defined(ATTNLAB_KERNELS_UKERNELS_EXP_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNLAB_KERNELS_UKERNELS_EXP_INL_H_
#undef ATTNLAB_KERNELS_UKERNELS_EXP_INL_H_
#else
#define ATTNLAB_KERNELS_UKERNELS_EXP_INL_H_
#endif

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attn {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// FastExp2's range reduction x = n + f, n = round(x) (ties to even), f in
// [-1/2, 1/2] (exact in fp32), and its scaling p -> p·2^n with x < -126
// zeroed, in each target's cheapest form: Split returns f and sets *whole to
// what TimesPow2Of scales by. The same bits on either
// (FastExp2Test.SameBitsOnAvx2AsOnAvx512).
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
// AVX-512: VREDUCEPS gives f = x - round(x) in one instruction, n = x - f
// (exact), and VSCALEFPS scales by 2^n, exact like the multiply, under a
// mask that zeroes the lanes below -126 (NaN compares "not less" and stays
// NaN).
template <class D, class V = hn::Vec<D>>
HWY_INLINE V Split(D, V x, V* whole) {
  constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  V f;
  if constexpr (sizeof(x.raw) == 64) {
    f = V{_mm512_reduce_ps(x.raw, kNearest)};
  } else if constexpr (sizeof(x.raw) == 32) {
    f = V{_mm256_reduce_ps(x.raw, kNearest)};
  } else {
    f = V{_mm_reduce_ps(x.raw, kNearest)};
  }
  *whole = hn::Sub(x, f);
  return f;
}
template <class D, class V = hn::Vec<D>>
HWY_INLINE V TimesPow2Of(D, V p, V whole, V x) {
  if constexpr (sizeof(p.raw) == 64) {
    const __mmask16 keep = _mm512_cmp_ps_mask(x.raw, _mm512_set1_ps(-126.0f), _CMP_NLT_UQ);
    return V{_mm512_maskz_scalef_ps(keep, p.raw, whole.raw)};
  } else if constexpr (sizeof(p.raw) == 32) {
    const __mmask8 keep = _mm256_cmp_ps_mask(x.raw, _mm256_set1_ps(-126.0f), _CMP_NLT_UQ);
    return V{_mm256_maskz_scalef_ps(keep, p.raw, whole.raw)};
  } else {
    const __mmask8 keep = _mm_cmp_ps_mask(x.raw, _mm_set1_ps(-126.0f), _CMP_NLT_UQ);
    return V{_mm_maskz_scalef_ps(keep, p.raw, whole.raw)};
  }
}
#else
// Elsewhere the magic number 1.5·2^23: x + 1.5·2^23 lies in [2^23, 2^24),
// where floats are the integers, so the add rounds x to the nearest (ties
// to even, as VREDUCEPS: the magic number is even) and the low bits of the
// sum hold n in two's complement; 2^n's exponent field is then (bits + 127)
// << 23 (the magic number's own bits shift out), and one multiply scales,
// exact (no result is subnormal: n >= -126, and n = -126 only with f >= 0).
// Lanes below -126 (and -inf) compute garbage that the final select zeroes;
// a NaN stays NaN through every step.
inline constexpr float kRoundingMagic = 12582912.0f;

template <class D, class V = hn::Vec<D>>
HWY_INLINE V Split(D d, V x, V* whole) {
  *whole = hn::Add(x, hn::Set(d, kRoundingMagic));
  return hn::Sub(x, hn::Sub(*whole, hn::Set(d, kRoundingMagic)));
}
template <class D, class V = hn::Vec<D>>
HWY_INLINE V TimesPow2Of(D d, V p, V whole, V x) {
  const hn::RebindToSigned<D> di;
  const auto bits = hn::ShiftLeft<23>(hn::Add(hn::BitCast(di, whole), hn::Set(di, 127)));
  return hn::IfThenZeroElse(hn::Lt(x, hn::Set(d, -126.0f)), hn::Mul(p, hn::BitCast(d, bits)));
}
#endif

template <class D, class V = hn::Vec<D>>
HWY_INLINE V FastExp2(D d, V x) {
  V whole;
  const V f = Split(d, x, &whole);
  // 2^f = 1 + f·q(f) on [-1/2, 1/2], q minimax for 2^f's relative error
  // (2.0e-9; the constant term is exactly 1, so 2^k is exact for whole k).
  V p = hn::Set(d, 1.535336341476068e-04f);
  p = hn::MulAdd(p, f, hn::Set(d, 1.3398875016719103e-03f));
  p = hn::MulAdd(p, f, hn::Set(d, 9.61843691766262e-03f));
  p = hn::MulAdd(p, f, hn::Set(d, 5.5503323674201965e-02f));
  p = hn::MulAdd(p, f, hn::Set(d, 2.4022647738456726e-01f));
  p = hn::MulAdd(p, f, hn::Set(d, 6.931471824645996e-01f));
  p = hn::MulAdd(p, f, hn::Set(d, 1.0f));
  return TimesPow2Of(d, p, whole, x);
}

// e^(x - m) for x <= m: the difference first, then the change of base to
// FastExp2, so logits anywhere in +-FLT_MAX work. Scaling the logits by
// log2 e before subtracting (softmax "in the exp2 domain") overflowed to inf
// beyond FLT_MAX / log2 e = 2.36e38: a padding mask of float32's lowest
// value gave fully padded rows O = 0 instead of the mean of V, and logits in
// (2.36e38, 3.4e38] gave NaN (issue 21). One multiply more per vector.
template <class D, class V = hn::Vec<D>>
HWY_INLINE V ExpOfDifference(D d, V x, V m) {
  return FastExp2(d, hn::Mul(hn::Sub(x, m), hn::Set(d, 1.4426950408889634f)));
}

// e^x for x <= 0 (and -inf -> 0): x already has the maximum subtracted.
template <class D, class V = hn::Vec<D>>
HWY_INLINE V ExpNonPositive(D d, V x) {
  return FastExp2(d, hn::Mul(x, hn::Set(d, 1.4426950408889634f)));
}

// out[i] = FastExp2(x[i]) for i < n (out may be x).
HWY_INLINE void Exp2Row(const float* x, float* out, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(FastExp2(d, hn::LoadU(d, x + i)), d, out + i);
  const hn::CappedTag<float, 1> d1;
  for (; i < n; ++i) hn::StoreU(FastExp2(d1, hn::LoadU(d1, x + i)), d1, out + i);
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace attn
HWY_AFTER_NAMESPACE();

#endif  // ATTNLAB_KERNELS_UKERNELS_EXP_INL_H_
