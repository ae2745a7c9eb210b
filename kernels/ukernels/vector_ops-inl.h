// Small vector loops over one row the other micro-kernels and the row-block
// helpers share: MapInPlace (an elementwise op, no access past the row),
// ScaleRow (dst = factor·src), AllFinite, DotRow.
#if defined(ATTNLAB_KERNELS_UKERNELS_VECTOR_OPS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNLAB_KERNELS_UKERNELS_VECTOR_OPS_INL_H_
#undef ATTNLAB_KERNELS_UKERNELS_VECTOR_OPS_INL_H_
#else
#define ATTNLAB_KERNELS_UKERNELS_VECTOR_OPS_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "hwy/contrib/dot/dot-inl.h"
#include "hwy/highway.h"
#include "kernels/ukernels/common-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attn {
namespace HWY_NAMESPACE {

// Applies `op(v) -> v` to n floats in place, the tail through a stack buffer
// (its unused lanes hold `pad`) so no load or store crosses the end of the row.
template <class Op>
HWY_INLINE void MapInPlace(float* HWY_RESTRICT x, int64_t n, float pad, Op op) {
  const DF d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  int64_t j = 0;
  for (; j + lanes <= n; j += lanes) hn::StoreU(op(hn::LoadU(d, x + j)), d, x + j);
  if (j < n) {
    HWY_ALIGN float buf[kMaxLanes];
    std::fill(buf, buf + kMaxLanes, pad);
    std::memcpy(buf, x + j, (n - j) * sizeof(float));
    hn::Store(op(hn::Load(d, buf)), d, buf);
    std::memcpy(x + j, buf, (n - j) * sizeof(float));
  }
}

// dst[0, n) = factor·src[0, n) (dst may be src).
HWY_INLINE void ScaleRow(const float* src, int64_t n, float factor, float* dst) {
  const DF d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const VF f = hn::Set(d, factor);
  int64_t j = 0;
  for (; j + lanes <= n; j += lanes) hn::StoreU(hn::Mul(hn::LoadU(d, src + j), f), d, dst + j);
  for (; j < n; ++j) dst[j] = src[j] * factor;
}

// True when every element of the n-float row is finite (x·0 is 0 for finite
// x and NaN for ±inf or NaN; the NaN survives the sum).
HWY_INLINE bool AllFinite(const float* HWY_RESTRICT x, int64_t n) {
  const DF d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const VF zero = hn::Zero(d);
  VF acc = zero;
  int64_t j = 0;
  for (; j + lanes <= n; j += lanes) acc = hn::MulAdd(hn::LoadU(d, x + j), zero, acc);
  float sum = hn::GetLane(hn::SumOfLanes(d, acc));
  for (; j < n; ++j) sum += x[j] * 0.0f;
  return !std::isnan(sum);
}

// Σ x[i]·y[i]: Highway's contrib Dot (4 accumulators, the tail as one
// overlapping masked vector, nothing read past n), in place of attnlab's own
// (the same 4 accumulators, a scalar tail). Two loads per FMA bound it at
// half the FMA peak from L1: ukernel/f32_dot/n:4096 runs at 0.38 of the peak
// on one Zen 4 core. simd's decode, which calls it once per key, timed the
// same within noise against the old one (issue 14 A/B under reports/:
// geometric-mean time ratio 1.03 over 32 decode cases spread 0.90-1.24).
HWY_INLINE float DotRow(const float* x, const float* y, int64_t n) {
  return hn::Dot::Compute<0>(DF(), x, y, static_cast<size_t>(n));
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace attn
HWY_AFTER_NAMESPACE();

#endif  // ATTNLAB_KERNELS_UKERNELS_VECTOR_OPS_INL_H_
