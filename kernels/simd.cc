// simd: the materializing algorithm in Highway vector code, no BLAS.
//
// Per (batch b, head h), over an Lq x Lk score matrix, in panels of
// kPanelRows query rows (the panel's key range is the union of its rows'
// visible keys, so causal / window / key-length masks skip whole key tiles):
//   1. S = Q·Kᵀ by the packed-K micro-kernel (QkPackedTile,
//      kernels/ukernels/qk_packed-inl.h). K is packed once per head into key
//      tiles of T = 2 vectors (32 keys on AVX-512) by TransposeRows: tile t
//      holds K[tT .. tT+T)[d] at packed[t][d][0..T), zero-padded past Lk. For
//      R query rows x one tile the kernel keeps R x 2 accumulators and walks
//      d: per step 2 vector loads of the packed tile, R broadcasts of q[r][d],
//      2R FMAs, no horizontal reductions. R = 8 where there are 32 vector
//      registers (AVX-512: 16 accumulators + 2 loads + 1 broadcast), else 4.
//   2. The shared fused scale + mask + softmax pass (SoftmaxRowsImpl in
//      kernels/internal/row_blocks-inl.h: ScaleMaskMax, ExpSubSum).
//   3. O = P·V by PvRows (kernels/ukernels/pv_tile-inl.h): 4 query rows x 4
//      vectors of dv (AVX-512; 2 elsewhere) accumulators, each V load feeding
//      4 FMAs; over the panel's union key range when that is safe (no
//      structural mask, or V finite there), else each row over its own
//      visible keys. Then O /= row sum and lse (FinishRow per row).
// Problems with Lq < kPackMinRows (decode) skip packing: the Lk·dk transpose
// would cost as much as the products; they use one dot product
// (hwy/contrib/dot) per key.
//
// Memory traffic per head (floats): K read once to pack (Lk·dk) and the
// packed copy written once; per panel the packed tiles of its key range are
// re-read (Lq/kPanelRows·Lk·dk, from L2/L3), Q once; V read once per block
// of 4 rows (Lq/4·Lk·dv, mostly from L2); S written once, read + written by
// the softmax and read by P·V (4·Lq·Lk accesses; the panel's rows, 64 x Lk,
// stay in L2 for Lk <= 4096). O written twice (P·V, then scaled).
// Performance model (dense, per head): 4·Lq·Lk·d FLOPs, Lq·Lk exps. Per 16
// scores (one AVX-512 vector): dk vector FMAs for Q·Kᵀ, dv for P·V and ~25
// vector ops for scale, max, exp and sum, so the FMA units bound it, with
// the softmax ~15% of the work at d = 64 and ~9% at d = 128. Both
// micro-kernels issue at most 0.63 loads per FMA (Zen 4: one 512-bit FMA
// and 2+ loads per cycle), so they run near the FMA peak while operands are
// in L1/L2; the score matrix traffic (as blas) is the other cost.
// Working set: Lq·(Lk + 2) floats (scores, row max, row sum) plus the packed
// K, ceil(Lk/32)·32·dk floats, per concurrent head; SimdWorkspaceBytes is
// exactly what RunSimd allocates. kPanelRows = 64: 64 rows of Q (<= 32 KiB at
// dk = 128) stay in L1/L2 while the panel walks every key tile, and the
// union-of-visible-keys waste for causal is 32 rows of 64 (per panel).
//
// Threads: like naive and blas. B·H >= threads: one head per thread, each
// with its own matrix and packed K. Otherwise heads one at a time, packing
// and panels split across threads (dynamic schedule balances causal panels).

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/simd.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
// Must come after foreach_target.h.
#include "hwy/highway.h"
#include "kernels/internal/f32_copy.h"
#include "kernels/internal/parallel.h"
#include "kernels/internal/row_blocks-inl.h"
#include "kernels/internal/rows.h"
#include "kernels/registry.h"
#include "kernels/ukernels/qk_packed-inl.h"
#include "kernels/ukernels/transpose-inl.h"

#ifndef ATTNLAB_KERNELS_SIMD_CONSTANTS_
#define ATTNLAB_KERNELS_SIMD_CONSTANTS_
namespace attn::simd {
inline constexpr int64_t kPanelRows = 64;
inline constexpr int64_t kPackMinRows = 8;
// Largest key tile over the compiled targets: 2 AVX-512 vectors.
inline constexpr int64_t kMaxKeyTile = 32;

// Floats of packed K: whole tiles of the largest size (smaller tiles of
// other targets fit: ceil(Lk/T)·T <= ceil(Lk/32)·32 for T dividing 32).
inline int64_t PackedFloats(const ValidProblem& p) {
  if (p.shape.q_len < kPackMinRows) return 0;
  return (p.shape.kv_len + kMaxKeyTile - 1) / kMaxKeyTile * kMaxKeyTile * p.shape.head_dim;
}
// Floats per concurrent head: packed K first (so its tiles are 64-byte
// aligned: PackedFloats is a multiple of 32), then scores, row max and row
// sum; rounded up to 16 floats so every head's block stays aligned.
inline int64_t HeadFloats(const ValidProblem& p) {
  return (PackedFloats(p) + p.shape.q_len * (p.shape.kv_len + 2) + 15) / 16 * 16;
}
}  // namespace attn::simd
#endif

HWY_BEFORE_NAMESPACE();
namespace attn {
namespace HWY_NAMESPACE {
namespace {

using simd::kPackMinRows;
using simd::kPanelRows;

constexpr int64_t kKeyTile = kPackedKeyTile;
static_assert(kKeyTile <= simd::kMaxKeyTile && simd::kMaxKeyTile % kKeyTile == 0);
constexpr int kQKRows = kQkPackedRows;

// Packs key tiles [t0, t1) of (b, kvh): packed[t][d][jj] = K[t·T + jj][d],
// zero past Lk (a transpose in registers, TransposeRows).
void PackKeys(const ValidProblem& p, int64_t b, int64_t kvh, int64_t t0, int64_t t1,
              float* HWY_RESTRICT packed) {
  const int64_t dk = p.shape.head_dim, lk = p.shape.kv_len;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t keys = std::min(kKeyTile, lk - t * kKeyTile);
    const float* rows[kKeyTile];
    for (int64_t jj = 0; jj < keys; ++jj) rows[jj] = p.KRow(b, kvh, t * kKeyTile + jj);
    TransposeRows(rows, keys, kKeyTile, dk, 1.0f, packed + t * dk * kKeyTile, kKeyTile);
  }
}

// Raw scores of rows [row0, row0 + rows) for key tiles [t0, t1) into s
// (row stride ld), columns relative to col0 = t0·T; cols = valid columns.
template <int R>
void QKRows(const ValidProblem& p, int64_t b, int64_t h, int64_t row0, int64_t rows, int64_t t0,
            int64_t t1, int64_t cols, const float* packed, float* s, int64_t ld) {
  const int64_t dk = p.shape.head_dim;
  const float* q[R];
  for (int r = 0; r < R; ++r) q[r] = p.QRow(b, h, row0 + std::min<int64_t>(r, rows - 1));
  HWY_ALIGN float tail[R * kKeyTile];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t c = (t - t0) * kKeyTile;
    const float* tile = packed + t * dk * kKeyTile;
    if (c + kKeyTile <= cols && rows == R) {
      QkPackedTile<R>(q, tile, dk, s + c, ld);
    } else {  // a partial tile (past Lk) or fewer than R rows: via a buffer
      QkPackedTile<R>(q, tile, dk, tail, kKeyTile);
      const int64_t n = std::min<int64_t>(kKeyTile, cols - c);
      for (int64_t r = 0; r < rows; ++r) {
        std::copy(tail + r * kKeyTile, tail + r * kKeyTile + n, s + r * ld + c);
      }
    }
  }
}

// One panel of rows: scores, softmax, P·V, finish.
void AttendPanel(const ValidProblem& p, int64_t b, int64_t h, int64_t row0, int64_t rows,
                 const float* packed, float* s, float* row_max, float* row_sum) {
  const int64_t kvh = p.KvHead(h);
  const int64_t lk = p.shape.kv_len, dv = p.shape.value_dim;
  const KeyRange keys = BlockKeys(p, b, row0, rows);
  int64_t col0 = keys.begin, cols = keys.size();
  if (cols > 0) {
    if (packed != nullptr) {
      const int64_t t0 = keys.begin / kKeyTile;
      const int64_t t1 = (keys.end + kKeyTile - 1) / kKeyTile;
      col0 = t0 * kKeyTile;
      cols = std::min(t1 * kKeyTile, lk) - col0;
      int64_t r = 0;
      for (; r + kQKRows <= rows; r += kQKRows) {
        QKRows<kQKRows>(p, b, h, row0 + r, kQKRows, t0, t1, cols, packed, s + r * cols, cols);
      }
      for (; r < rows; ++r) {
        QKRows<1>(p, b, h, row0 + r, 1, t0, t1, cols, packed, s + r * cols, cols);
      }
    } else {
      DotScoresImpl(p, b, h, row0, rows, col0, cols, s, cols);
    }
  }
  const int64_t ld = std::max<int64_t>(cols, 1);
  SoftmaxRowsImpl(p, b, h, row0, rows, col0, cols, s, ld, row_max, row_sum);
  if (keys.size() > 0) {
    if (!p.HasStructuralMask() || ValuesFiniteImpl(p, b, kvh, keys.begin, keys.end)) {
      PvRows(s + (keys.begin - col0), ld, rows, p.VRow(b, kvh, keys.begin), p.v.strides.row,
             keys.size(), dv, p.ORow(b, h, row0), p.o.strides.row);
    } else {
      RowsTimesVImpl(p, b, h, row0, rows, col0, s, ld);
    }
  }
  FinishRowsImpl(p, b, h, row0, rows, row_max, row_sum);
}

// One (b, h) with `threads` threads; `scratch` holds simd::HeadFloats.
void AttendHead(const ValidProblem& p, int64_t b, int64_t h, float* scratch, int threads) {
  const int64_t lq = p.shape.q_len, lk = p.shape.kv_len;
  float* packed = simd::PackedFloats(p) > 0 ? scratch : nullptr;
  float* scores = scratch + simd::PackedFloats(p);
  float* row_max = scores + lq * lk;
  float* row_sum = row_max + lq;
  if (packed != nullptr) {
    const int64_t tiles = (lk + kKeyTile - 1) / kKeyTile;
    const int64_t grain = 16;
    ParallelFor(threads, (tiles + grain - 1) / grain, [&](int64_t g) {
      PackKeys(p, b, p.KvHead(h), g * grain, std::min(tiles, (g + 1) * grain), packed);
    });
  }
  const int64_t panels = (lq + kPanelRows - 1) / kPanelRows;
  ParallelFor(threads, panels, [&](int64_t panel) {
    const int64_t r0 = panel * kPanelRows;
    AttendPanel(p, b, h, r0, std::min(kPanelRows, lq - r0), packed, scores + r0 * lk, row_max + r0,
                row_sum + r0);
  });
}

}  // namespace

Status RunSimdT(const ValidProblem& p, ExecContext& ctx) {
  if (p.shape.q_len == 0) return Status::Ok();
  const int64_t floats = simd::HeadFloats(p);
  auto scratch = ctx.workspace->Allocate<float>(
      HeadsInFlight(p.shape.batch * p.shape.heads, ctx.threads) * floats);
  ForEachHead(p.shape.batch, p.shape.heads, ctx.threads, scratch.data(), floats,
              [&](int64_t b, int64_t h, float* head, int row_threads) {
                AttendHead(p, b, h, head, row_threads);
              });
  return Status::Ok();
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace attn
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attn {
namespace {

HWY_EXPORT(RunSimdT);

Status RunSimd(const ValidProblem& p, ExecContext& ctx) {
  return HWY_DYNAMIC_DISPATCH(RunSimdT)(p, ctx);
}

size_t SimdWorkspaceBytes(const ValidProblem& p, int threads) {
  if (p.shape.q_len == 0) return 0;
  return (SaturatingSize(HeadsInFlight(p.shape.batch * p.shape.heads, threads)) *
          simd::HeadFloats(p) * sizeof(float))
      .value();
}

}  // namespace

extern const Variant simd_variant = {
    .name = "simd",
    .summary = "Highway: packed-K register-blocked Q·Kᵀ, fused softmax, blocked P·V; Lq x Lk",
    .run = RunOnF32<RunSimd>,
    .workspace_bytes = F32Workspace<SimdWorkspaceBytes>,
    .supports_weights = true,
    .materializes_scores = true,
    .uses_highway = true,
    .deterministic = true,
    .dtypes = {.q = kFloatDTypes, .kv = kAllDTypes, .o = kFloatDTypes},
    .modifiers = 0,  // refuses softcap, ALiBi and sinks (naive and flash apply them)
    .backward = {},  // none
};

}  // namespace attn
#endif  // HWY_ONCE
