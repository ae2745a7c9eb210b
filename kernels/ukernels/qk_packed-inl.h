// Packed-K scores: S = Q·Kᵀ for R query rows against one packed key tile of
// T = 2 vectors of keys (32 on AVX-512). simd's kernel: K is transposed once
// per head into tiles (TransposeRows), then every row block reuses them.
//
// Contract (QkPackedTile<R>):
//   q     R query row pointers, dk floats each, any alignment (broadcast
//         element by element).
//   tile  packed key tile: tile[x·T + jj] = K[jj][x] for x < dk, jj < T,
//         64-byte aligned, zero past the real keys.
//   out   R rows of T scores, `ld` floats apart, any alignment.
// Register block: R x 2 accumulators (R = 8 with 32 registers: 16
// accumulators + 2 tile loads + 1 broadcast; 4 with 16); per d step 2 aligned
// loads and R broadcasts feed 2R FMAs, no horizontal reductions.
#if defined(ATTNLAB_KERNELS_UKERNELS_QK_PACKED_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNLAB_KERNELS_UKERNELS_QK_PACKED_INL_H_
#undef ATTNLAB_KERNELS_UKERNELS_QK_PACKED_INL_H_
#else
#define ATTNLAB_KERNELS_UKERNELS_QK_PACKED_INL_H_
#endif

#include <cstdint>

#include "hwy/highway.h"
#include "kernels/ukernels/common-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attn {
namespace HWY_NAMESPACE {

// Keys per packed tile on this target, and query rows per call.
inline constexpr int64_t kPackedKeyTile = 2 * HWY_LANES(float);
inline constexpr int kQkPackedRows = kVecRegisters >= 32 ? 8 : 4;

template <int R>
HWY_INLINE void QkPackedTile(const float* const* q, const float* HWY_RESTRICT tile, int64_t dk,
                             float* out, int64_t ld) {
  const DF d;
  const size_t lanes = hn::Lanes(d);
  VF acc0[R], acc1[R];
  ATTN_UNROLLED
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = hn::Zero(d);
  for (int64_t k = 0; k < dk; ++k) {
    const VF k0 = hn::Load(d, tile + k * kPackedKeyTile);
    const VF k1 = hn::Load(d, tile + k * kPackedKeyTile + lanes);
    ATTN_UNROLLED
    for (int r = 0; r < R; ++r) {
      const VF qv = hn::Set(d, q[r][k]);
      acc0[r] = hn::MulAdd(qv, k0, acc0[r]);
      acc1[r] = hn::MulAdd(qv, k1, acc1[r]);
    }
  }
  ATTN_UNROLLED
  for (int r = 0; r < R; ++r) {
    hn::StoreU(acc0[r], d, out + r * ld);
    hn::StoreU(acc1[r], d, out + r * ld + lanes);
  }
}

// nrows <= kQkPackedRows rows: one call of the full kernel, or row by row.
HWY_INLINE void QkPacked(const float* const* q, int64_t nrows, const float* tile, int64_t dk,
                         float* out, int64_t ld) {
  if (nrows == kQkPackedRows) return QkPackedTile<kQkPackedRows>(q, tile, dk, out, ld);
  for (int64_t r = 0; r < nrows; ++r) QkPackedTile<1>(q + r, tile, dk, out + r * ld, ld);
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace attn
HWY_AFTER_NAMESPACE();

#endif  // ATTNLAB_KERNELS_UKERNELS_QK_PACKED_INL_H_
