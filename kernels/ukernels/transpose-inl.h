// Transposes in registers: TransposeSquare (one lanes x lanes block) and
// TransposeRows (n rows at any addresses into columns, scaled, zero-padded).
// flash transposes its query block into Qᵀ with it, simd packs K tiles.
//
// Contract (TransposeRows): rows[0..n) point at rows of >= cols floats (any
// alignment); dst receives dst[c·ld + r] = scale·rows[r][c] for r < n and 0
// for n <= r < n_padded, c < cols; n_padded and ld are multiples of the lane
// count. Whole lanes x lanes blocks go through registers (64 two-source
// permutes for 16 x 16 on AVX-512, against 256 single-element stores), the
// last cols % lanes columns element by element.
#if defined(ATTNLAB_KERNELS_UKERNELS_TRANSPOSE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNLAB_KERNELS_UKERNELS_TRANSPOSE_INL_H_
#undef ATTNLAB_KERNELS_UKERNELS_TRANSPOSE_INL_H_
#else
#define ATTNLAB_KERNELS_UKERNELS_TRANSPOSE_INL_H_
#endif

#include <algorithm>
#include <cstdint>

#include "hwy/highway.h"
#include "kernels/ukernels/common-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attn {
namespace HWY_NAMESPACE {

// Transposes the lanes x lanes matrix held in v[0..lanes) (row r = v[r]) in
// registers: log2(lanes) rounds of ConcatEven/ConcatOdd on row pairs. Each
// round rotates the element index (row bits, lane bits) right by one bit, so
// log2(lanes) rounds swap row and lane: 64 two-source permutes for 16 x 16
// on AVX-512, against 256 single-element stores element by element.
template <class D>
HWY_INLINE void TransposeSquare(D d, hn::Vec<D>* v) {
#if HWY_TARGET == HWY_SCALAR
  (void)d;
  (void)v;
#else
  constexpr size_t kN = hn::MaxLanes(D());
  for (size_t round = 1; round < kN; round *= 2) {
    hn::Vec<D> t[kN];
    for (size_t i = 0; i < kN / 2; ++i) {
      t[i] = hn::ConcatEven(d, v[2 * i + 1], v[2 * i]);
      t[i + kN / 2] = hn::ConcatOdd(d, v[2 * i + 1], v[2 * i]);
    }
    for (size_t i = 0; i < kN; ++i) v[i] = t[i];
  }
#endif
}

// dst[c·ld + r] = scale·rows[r][c] for r < n, c < cols, and 0 for r in
// [n, n_padded): the transpose of n rows (any addresses) into columns, padded
// with zero columns. n_padded is a multiple of the lane count; so is ld.
// Whole lanes x lanes blocks go through registers (TransposeSquare); the last
// cols % lanes columns element by element.
HWY_INLINE void TransposeRows(const float* const* rows, int64_t n, int64_t n_padded, int64_t cols,
                              float scale, float* HWY_RESTRICT dst, int64_t ld) {
  const DF d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const int64_t full = cols / lanes * lanes;
  const VF s = hn::Set(d, scale);
  for (int64_t r0 = 0; r0 < n_padded; r0 += lanes) {
    const int64_t live = std::clamp<int64_t>(n - r0, 0, lanes);  // real rows here
    for (int64_t c0 = 0; c0 < full; c0 += lanes) {
      VF v[kMaxLanes];
      for (int64_t i = 0; i < lanes; ++i) {
        v[i] = i < live ? hn::Mul(hn::LoadU(d, rows[r0 + i] + c0), s) : hn::Zero(d);
      }
      TransposeSquare(d, v);
      for (int64_t i = 0; i < lanes; ++i) hn::StoreU(v[i], d, dst + (c0 + i) * ld + r0);
    }
    for (int64_t c = full; c < cols; ++c) {
      for (int64_t i = 0; i < lanes; ++i) {
        dst[c * ld + r0 + i] = i < live ? scale * rows[r0 + i][c] : 0.0f;
      }
    }
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace attn
HWY_AFTER_NAMESPACE();

#endif  // ATTNLAB_KERNELS_UKERNELS_TRANSPOSE_INL_H_
