// The one vector exponential: FastExp2 (2^x) and its softmax forms
// ExpOfDifference (e^(x - m)) and ExpNonPositive (e^x, x <= 0).
//
// FastExp2:
// Range reduction x = n + f with n = round(x), f in [-1/2, 1/2] (exact in
// fp32), 2^f by its degree-7 Taylor polynomial in Horner form, and 2^n built
// directly in the exponent bits. The truncation error is
// (ln2/2)^8 / 8! < 5.2e-9 relative (0.05 ulp); with Horner rounding the
// result is within kFastExp2MaxUlp = 2 ulp of the exact 2^x for
// x in [-126, 127.5) (checked by tests/ukernel_test.cc on a dense sweep,
// which measures 0.84 ulp). Special values: x < -126 (including -inf) gives
// exactly 0 (the true value is below 2^-126, an absolute error < 1.2e-38);
// NaN gives NaN. Callers pass x <= 0 (scores minus their running maximum).
//
// Cost per vector: 1 max, the rounding and the scaling by 2^n (AVX-512:
// a round, a sub and VSCALEFPS; elsewhere the magic number's add and sub, a
// sub, an integer add, a shift and a multiply), 7 FMA, 1 compare and 1
// blend (one more of each on targets other than x86 AVX2/AVX-512, for NaN):
// 14 instructions for 16 floats on AVX-512 (VSCALEFPS against the exponent
// bits: the softmax columns kernel 1.25x faster, bf16 flash on AMX 5-10%,
// kernels/DESIGN.md "AMX"), 16 for 8 on AVX2 (was 20 with Round and
// Highway's conversion).

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

// FastExp2's rounding x -> n = round(x) and its scaling p -> p·2^n, for a
// whole number n in [-126, 128], in each target's cheapest form: Rounded(x)
// is what TimesPow2Of scales by, WholeOf(Rounded(x)) is n as a float. The
// same bits on either (FastExp2Test.SameBitsOnAvx2AsOnAvx512).
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
// AVX-512: n itself (Round), and VSCALEFPS, one instruction, correctly
// rounded like the multiply.
template <class D, class V = hn::Vec<D>>
HWY_INLINE V Rounded(D, V x) {
  return hn::Round(x);
}
template <class D, class V = hn::Vec<D>>
HWY_INLINE V WholeOf(D, V rounded) {
  return rounded;
}
template <class D, class V = hn::Vec<D>>
HWY_INLINE V TimesPow2Of(D, V p, V rounded) {
  if constexpr (sizeof(p.raw) == 64) {
    return V{_mm512_scalef_ps(p.raw, rounded.raw)};
  } else if constexpr (sizeof(p.raw) == 32) {
    return V{_mm256_scalef_ps(p.raw, rounded.raw)};
  } else {
    return V{_mm_scalef_ps(p.raw, rounded.raw)};
  }
}
#else
// Elsewhere the magic number 1.5·2^23: x + 1.5·2^23 lies in [2^23, 2^24),
// where floats are the integers, so the add rounds x to the nearest (ties
// to even, as Round: the magic number is even) and the low bits of the sum
// hold n in two's complement; 2^n's exponent field is then (bits + 127) <<
// 23 (the magic number's own bits shift out), and one multiply scales, exact
// but for a subnormal result, where it rounds as VSCALEFPS does. Three
// instructions fewer per vector than Round plus the conversion of n to an
// integer (whose Highway form fixes up overflow: three more).
inline constexpr float kRoundingMagic = 12582912.0f;

template <class D, class V = hn::Vec<D>>
HWY_INLINE V Rounded(D d, V x) {
  return hn::Add(x, hn::Set(d, kRoundingMagic));
}
template <class D, class V = hn::Vec<D>>
HWY_INLINE V WholeOf(D d, V rounded) {
  return hn::Sub(rounded, hn::Set(d, kRoundingMagic));
}
template <class D, class V = hn::Vec<D>>
HWY_INLINE V TimesPow2Of(D d, V p, V rounded) {
  const hn::RebindToSigned<D> di;
  const auto bits = hn::ShiftLeft<23>(hn::Add(hn::BitCast(di, rounded), hn::Set(di, 127)));
  return hn::Mul(p, hn::BitCast(d, bits));
}
#endif

template <class D, class V = hn::Vec<D>>
HWY_INLINE V FastExp2(D d, V x) {
  const V lo = hn::Set(d, -126.0f);
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
  // MAXPS returns its second operand when either is NaN, so a NaN x stays
  // NaN through the rounding, the polynomial and the scaling, and needs no
  // fix-up (a compare and a blend fewer per vector, on the two ports the
  // polynomial's FMAs use: the softmax columns kernel 1.09x faster on the
  // Emerald Rapids VM, kernels/DESIGN.md "The softmax on a 2-FMA-port core").
  const V xc = hn::Max(lo, x);
#else
  const V xc = hn::Max(x, lo);  // NaN lanes are fixed up at the end
#endif
  const V rounded = Rounded(d, xc);
  const V n = WholeOf(d, rounded);
  const V f = hn::Sub(xc, n);  // exact: |f| <= 1/2
  // ln(2)^k / k!, k = 7..0.
  V p = hn::Set(d, 1.525273380405984e-05f);
  p = hn::MulAdd(p, f, hn::Set(d, 1.5403530393381608e-04f));
  p = hn::MulAdd(p, f, hn::Set(d, 1.3333558146428443e-03f));
  p = hn::MulAdd(p, f, hn::Set(d, 9.618129107628477e-03f));
  p = hn::MulAdd(p, f, hn::Set(d, 5.550410866482158e-02f));
  p = hn::MulAdd(p, f, hn::Set(d, 2.402265069591007e-01f));
  p = hn::MulAdd(p, f, hn::Set(d, 6.931471805599453e-01f));
  p = hn::MulAdd(p, f, hn::Set(d, 1.0f));
  V r = TimesPow2Of(d, p, rounded);
  r = hn::IfThenZeroElse(hn::Lt(x, lo), r);
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
  return r;
#else
  return hn::IfThenElse(hn::IsNaN(x), x, r);
#endif
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
