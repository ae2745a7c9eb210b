// flash: FlashAttention-2-style tiled attention with an online softmax.
//
// Algorithm. The rows of one (batch b, kv head) are stacked position-major
// (row r = query position r / g of head kv_head·g + r % g, g = H / Hkv), so
// the query heads of a GQA group share every K/V tile, and cut into blocks of
// Br = 64 rows. A block keeps Qᵀ (dk x Br, pre-scaled by scale), running
// max m, sum l and an
// unnormalized accumulator O (Br x dv') and walks the key tiles of Bc =
// min(512, Lk) keys that intersect the union of its rows' visible ranges:
//   Sᵀ = K_tile·Qᵀ         Bc x Br, register-blocked 6 keys x 4 vectors of
//                          queries: K scalars broadcast straight from the K
//                          rows (no K transpose/packing), Qᵀ rows are vectors
//                          over queries.
//   (+ additive mask; structurally hidden (key, row) pairs *set* to
//    -inf, only in partial tiles)
//   m' = max(m, colmax Sᵀ); Pᵀ = 2^(Sᵀ - m'); l = 2^(m - m')·l + colsum Pᵀ,
//                          vectorized over queries (no horizontal ops), with
//                          FastExp2 (kernels/fast_exp2-inl.h, <= 2 ulp)
//                          of (S - m')·log2 e: subtracted before the change
//                          of base, so logits up to +-FLT_MAX stay finite;
//   O = 2^(m - m')·O       only for rows whose max moved (alpha == 1 exactly
//                          otherwise, so the skip is exact);
//   O += P·V_tile          register-blocked 6 rows x 4 vectors of O; V rows
//                          used in place (unaligned loads) when dv is a
//                          multiple of 16, else packed (aligned, zero-padded
//                          to dv' = 16·ceil(dv/16)).
// Finally O /= l, lse = m + ln l. The next tile's K and V rows are
// prefetched into L2 while a tile computes (except in decode).
// Tiles: a tile inside every row's visible range is "full" (no mask work); a
// tile outside the union of the rows' ranges is skipped (never read); the
// others are "partial". In a partial tile a hidden key has weight exactly 0,
// but 0·NaN = NaN, so when its V rows are not all finite P·V runs row by row
// over each row's visible keys only.
// Few rows (a block of <= 8 rows, e.g. decode with Lq·g <= 8): scores are dot
// products along d, 4 keys x <= 4 rows at a time (16 independent FMA chains,
// then one transpose-reduce per row for the 4 keys instead of a horizontal
// sum per (key, row)); S is kept row-major and the softmax is vectorized over
// keys instead of mostly empty query vectors. At 8 rows this does d/2 score
// FMAs per key where the 64-row tile kernel would do d (8 of 16 lanes used).
// With 2-4 rows and dk = 8 vectors (128 on AVX-512), rows go in pairs whose
// Q stays in registers over the whole tile (GQA-4 decode, 1 thread: Lk =
// 16384 22.6 -> 26.3 GB/s, 65536 18.7 -> 20.0). Not for 1 row: the same
// kernel made MHA decode from DRAM slower (25 -> 16 GB/s), for no reason we
// could find, so MHA keeps ScoresFour. With 4 rows on AVX-512 (32
// registers, all of which a 4-row Q or O would take) both S and P·V make one
// pass over their tile, key by key in address order, with part of Q (S) or
// of O (P·V) in L1: the second pass of the pair or column-half schemes read
// the tile again with memory idle (GQA-4 decode, 1 thread: Lk = 16384
// 27 -> 35 GB/s, 65536 20 -> 24.7 of 28.6 streamed; 2 threads 34 -> 39).
//
// Decode (fewer than 16 row blocks, Lk > 512): flash-decoding. Each
// block's keys are split into `splits` tile-aligned ranges (a function of the
// shape only, never of the thread count, so results are bitwise identical for
// any thread count: deterministic = true); items write partial (m, l, O) and
// the item that completes a block merges its splits in a fixed order (no
// second parallel pass, no barrier). With GQA the group's heads are rows of
// one block, so K and V are read once per group.
//
// Parallelism: work items are (row block, key split), handed out dynamically
// by ParallelFor in groups of (batch, kv head) pairs whose K and V fit in one
// L2 (so the threads share the group's K/V in cache: one head from N = 1024
// at d = 128), and within a group in order of decreasing query position
// across its heads, so for causal masks the longest blocks start first
// (longest-processing-time-first) and the short ones fill in at the end.
//
// Bytes (fp32) for B, H, Hkv, Lq, Lk, dk, dv, g = H / Hkv:
//   reads  Q: 4·B·H·Lq·dk once; K, V: 4·B·Hkv·Lk·(dk + dv) once per row block,
//          i.e. ceil(g·Lq / 64) times (from L3 when one head's K and V fit:
//          items run head group by head group, so the threads share one
//          group's K/V rather than cycling through all heads' (32 MiB at
//          N = 4096, d = 128, H = 8: from DRAM, -15%); causal: about half);
//          decode (Lq·g <= 64):
//          K and V exactly once;
//   writes O: 4·B·H·Lq·dv, lse: 4·B·H·Lq. Nothing of size Lq x Lk.
// FLOPs: 2·(dk + dv) per visible (query, key) pair plus the masked part of
// partial tiles (the masked triangle of the diagonal: partial tiles are
// clipped to the union of the block's ranges, so a wide Bc wastes no more
// than 64·64/2 pairs per causal block); exps: one per computed score plus
// one per row per tile.
//
// Working set per thread: Qᵀ 64·dk + Sᵀ 64·Bc + O 64·dv' + 3·64 floats + 1
// KiB of row ranges (+ a packed V tile Bc·dv' only when dv is not a multiple
// of 16) = 161 KiB at dk = dv = 64, 193 KiB at 128 (Bc = 512), independent of
// Lq and Lk beyond Bc = min(512, Lk). Split decode runs add partial results of
// items·min(64, g·Lq)·(dv' + 2) floats, with items = blocks·splits <= 47
// (splits happen only below 16 blocks and aim at 32 items).
// So Lq = Lk = 32768, dk = dv = 64 takes 324 KiB on 2 threads (tested < 4 MiB).
//
// Block sizes (Zen 4: L1d 32 KiB, L2 1 MiB per core, 32 zmm registers):
//   * Br = 64 = 4 AVX-512 vectors of queries: the S micro-kernel holds 6 keys
//     x 4 vectors = 24 accumulators (+4 Qᵀ vectors + 1 broadcast <= 32 regs);
//     per dk step 4 loads + 6 broadcast loads feed 24 FMAs (Zen 4 issues one
//     512-bit FMA and two loads per cycle, so FMA stays the bottleneck).
//   * Bc = 512 (or Lk rounded up to 16 when shorter): the P·V micro-kernel
//     (6 rows x 4 vectors of O = 24 accumulators, 4 V loads + 6 broadcasts
//     per 24 FMAs) runs its key loop over the whole tile, so the per-call
//     cost of loading and storing 24 accumulators is paid once per 512 keys
//     (a throwaway loop of the kernel on L1-resident data, not in the repo:
//     108 GF/s over 64 keys, 115 over 256). Fewer tiles also mean fewer
//     online-softmax steps (m, l, alpha, O rescales) and, for N <= 512, a
//     single tile: no rescaling at all. Sᵀ
//     (128 KiB), Qᵀ and O (32 KiB each at d = 128) and the K and V tiles
//     (256 KiB each at d = 128) stay within L2 (1 MiB). Measured with
//     attnlab_bench --suite=default on builds with kMaxBc = 64 / 256 / 512 /
//     1024 (dense, 1 thread, GF/s): N = 256, d = 128: 97.8 /
//     102.4 / 102.5 / 102.5; N = 2048, d = 64: 91.6 / 95.4 / 96.5 / 97.0;
//     N = 4096, d = 128: 98.7 / 102.6 / 103.9 / 104.2; GQA-4 decode,
//     Lk = 65536: 15.7 / 18.0 / 20.3 / 19.8 GB/s. Past 512 the gain is under
//     1% for twice the scratch.
//   * The softmax costs ~2 passes over Sᵀ and one exp per score (~17
//     instructions per 16): about 1/(d/8) of the FMA time, 6% at d = 64 (see
//     kernels/DESIGN.md), independent of Bc.
//   * K/V reuse: each K/V element loaded per row block feeds 64 rows:
//     4·(dk+dv) bytes per 64·2·(dk+dv) FLOPs = 1/32 byte per FLOP from L2/L3,
//     ~2.8 GB/s at 90 GFLOP/s, far below L3 bandwidth, so Br = 64 suffices.

#include "kernels/internal/flash_plan.h"

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/internal/parallel.h"
#include "kernels/registry.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/flash.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/ukernels/exp-inl.h"
#include "kernels/internal/vec-inl.h"

#ifndef ATTNLAB_KERNELS_FLASH_ONCE_
#define ATTNLAB_KERNELS_FLASH_ONCE_
namespace attn::flash {
std::atomic<FlashTileCounts*> g_tile_counts{nullptr};
}  // namespace attn::flash
#endif

HWY_BEFORE_NAMESPACE();
namespace attn {
namespace HWY_NAMESPACE {
namespace {

namespace hn = hwy::HWY_NAMESPACE;
using D = hn::ScalableTag<float>;
using V = hn::Vec<D>;

constexpr float kInfF = std::numeric_limits<float>::infinity();
constexpr int kMR = 6;    // keys (S) or rows (P·V) per micro-kernel
constexpr int kNV = 4;    // vectors per micro-kernel
using flash::kFewRows;    // blocks of at most this many rows use dot products
using flash::kFewStride;  // row stride of a few-row block's score tile
// 16-lane vectors (AVX-512): 32 vector registers, which the 4-row decode
// kernels fill; elsewhere (16 registers) they would spill.
constexpr bool kZmmFile = HWY_TARGET != HWY_SCALAR && HWY_MAX_BYTES == 64;

// The first n < Lanes floats at p (possibly unaligned), zeros after: never
// reads past p + n (Highway 1.0.3's MaskedLoad on SSE4/scalar loads the
// whole, aligned vector).
HWY_INLINE V LoadTail(const float* HWY_RESTRICT p, int64_t n) {
  const D d;
  alignas(64) float buf[64 / sizeof(float)] = {};
  for (int64_t i = 0; i < n; ++i) buf[i] = p[i];
  return hn::Load(d, buf);
}

// Sᵀ[m][v·N..] = Σ_k K[m][k] · Qᵀ[k][v·N..] for MR keys x NV query vectors.
template <int MR, int NV>
HWY_NOINLINE void ScoreKernel(const float* HWY_RESTRICT qt, const float* HWY_RESTRICT k,
                              int64_t k_stride, int64_t dk, float* HWY_RESTRICT st) {
  const D d;
  const size_t N = hn::Lanes(d);
  if (dk < 1) return;  // never (Validate); lets gcc keep acc in registers
  V acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) acc[m][v] = hn::Zero(d);
  for (int64_t x = 0; x < dk; ++x) {
    V q[NV];
    for (int v = 0; v < NV; ++v) q[v] = hn::Load(d, qt + x * flash::kBr + v * N);
    for (int m = 0; m < MR; ++m) {
      const V kb = hn::Set(d, k[m * k_stride + x]);
      for (int v = 0; v < NV; ++v) acc[m][v] = hn::MulAdd(kb, q[v], acc[m][v]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) hn::Store(acc[m][v], d, st + m * flash::kBr + v * N);
}

template <int MR>
void ScoreKeys(int nv, const float* qt, const float* k, int64_t k_stride, int64_t dk, float* st) {
  switch (nv) {
    case 1:
      return ScoreKernel<MR, 1>(qt, k, k_stride, dk, st);
    case 2:
      return ScoreKernel<MR, 2>(qt, k, k_stride, dk, st);
    case 3:
      return ScoreKernel<MR, 3>(qt, k, k_stride, dk, st);
    default:
      return ScoreKernel<MR, 4>(qt, k, k_stride, dk, st);
  }
}

// The K and V rows of the next tile, prefetched into L2 a few rows at a time
// while this tile's scores compute.
struct NextTile {
  const float* k = nullptr;
  int64_t k_stride = 0;
  int64_t k_bytes = 0;
  const float* v = nullptr;
  int64_t v_stride = 0;
  int64_t v_bytes = 0;
  int64_t rows = 0;  // 0: no next tile
  void Prefetch(int64_t begin, int64_t end) const {
    for (int64_t j = begin; j < std::min(end, rows); ++j) {
      const char* kr = reinterpret_cast<const char*>(k + j * k_stride);
      const char* vr = reinterpret_cast<const char*>(v + j * v_stride);
      for (int64_t x = 0; x < k_bytes; x += 64) __builtin_prefetch(kr + x, 0, 2);
      for (int64_t x = 0; x < v_bytes; x += 64) __builtin_prefetch(vr + x, 0, 2);
    }
  }
};

// Sᵀ (nc x 64, row stride kBr) for keys k[0..nc) (row stride k_stride) and
// `nvec` vectors of queries, prefetching `next` along the way.
void Scores(const float* qt, const float* k, int64_t k_stride, int64_t nc, int64_t dk, int64_t nvec,
            float* st, const NextTile& next) {
  const size_t N = hn::Lanes(D());
  for (int64_t v0 = 0; v0 < nvec; v0 += kNV) {
    const int nv = static_cast<int>(std::min<int64_t>(kNV, nvec - v0));
    const float* q = qt + v0 * N;
    float* s = st + v0 * N;
    int64_t j = 0;
    for (; j + kMR <= nc; j += kMR) {
      if (v0 == 0) next.Prefetch(j, j + kMR);
      ScoreKeys<kMR>(nv, q, k + j * k_stride, k_stride, dk, s + j * flash::kBr);
    }
    if (v0 == 0) next.Prefetch(j, next.rows);
    const float* kj = k + j * k_stride;
    float* sj = s + j * flash::kBr;
    switch (nc - j) {
      case 1:
        ScoreKeys<1>(nv, q, kj, k_stride, dk, sj);
        break;
      case 2:
        ScoreKeys<2>(nv, q, kj, k_stride, dk, sj);
        break;
      case 3:
        ScoreKeys<3>(nv, q, kj, k_stride, dk, sj);
        break;
      case 4:
        ScoreKeys<4>(nv, q, kj, k_stride, dk, sj);
        break;
      case 5:
        ScoreKeys<5>(nv, q, kj, k_stride, dk, sj);
        break;
      default:
        break;
    }
  }
}

// One dot product along d per (key, row): the remainder keys of a tile, and
// the whole few-row path on a single-lane target.
void ScoresFewRowsOneKey(const float* HWY_RESTRICT qs, int64_t dkp, int64_t nrows,
                         const float* HWY_RESTRICT kr, int64_t dk, float* HWY_RESTRICT st) {
  const D d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const int64_t full = dk / N * N;
  for (int64_t r = 0; r < nrows; ++r) {
    V acc = hn::Zero(d);
    for (int64_t x = 0; x < full; x += N) {
      acc = hn::MulAdd(hn::LoadU(d, kr + x), hn::Load(d, qs + r * dkp + x), acc);
    }
    if (full < dk) {
      acc = hn::MulAdd(LoadTail(kr + full, dk - full), hn::Load(d, qs + r * dkp + full), acc);
    }
    st[r * kFewStride] = hn::GetLane(hn::SumOfLanes(d, acc));
  }
}

#if HWY_TARGET != HWY_SCALAR
// S[r][j..j+4) for 4 keys x NR rows: 4·NR independent accumulators along d,
// then one transpose-reduce per row (2 interleave levels leave the 4 keys'
// partial sums in each 128-bit block; the blocks are added with 4-lane
// loads) instead of a horizontal sum per (key, row).
// Adds the 128-bit blocks of v (halving in registers): a 4-lane vector.
template <class DX>
HWY_INLINE hn::Vec<hn::CappedTag<float, 4>> SumBlocks(DX dx, hn::Vec<DX> v) {
  if constexpr (DX::kPrivateN <= 4) {
    (void)dx;
    return v;
  } else {
    const hn::Half<DX> dh;
    return SumBlocks(dh, hn::Add(hn::LowerHalf(dh, v), hn::UpperHalf(dh, v)));
  }
}

// Per 128-bit block, the lane sums of keys a and b interleaved: (a, b, a, b).
HWY_INLINE V PairSums(V a, V b) {
  const D d;
  return hn::Add(hn::InterleaveLower(d, a, b), hn::InterleaveUpper(d, a, b));
}

// st[0..4) = the 4 dot products of keys (0, 1) in `t01` and (2, 3) in `t23`
// (PairSums): a 64-bit interleave leaves (0, 1, 2, 3) in each 128-bit block,
// whose sum (SumBlocks) is the 4 dot products.
HWY_INLINE void StoreFourKeys(V t01, V t23, float* HWY_RESTRICT st) {
  const D d;
  const hn::Repartition<double, D> dd;
  const hn::CappedTag<float, 4> d4;
  const auto u0 = hn::BitCast(dd, t01);
  const auto u1 = hn::BitCast(dd, t23);
  const V blocks = hn::Add(hn::BitCast(d, hn::InterleaveLower(dd, u0, u1)),
                           hn::BitCast(d, hn::InterleaveUpper(dd, u0, u1)));
  hn::StoreU(SumBlocks(d, blocks), d4, st);
}

// st[r·kFewStride + m] = Σ lanes of acc[m][r] for 4 keys m and NR rows.
template <int NR>
HWY_INLINE void StoreKeySums(const V (&acc)[4][NR], float* HWY_RESTRICT st) {
  for (int r = 0; r < NR; ++r) {
    StoreFourKeys(PairSums(acc[0][r], acc[1][r]), PairSums(acc[2][r], acc[3][r]),
                  st + r * kFewStride);
  }
}

template <int NR>
HWY_NOINLINE void ScoresFour(const float* HWY_RESTRICT qs, int64_t dkp, const float* HWY_RESTRICT k,
                             int64_t k_stride, int64_t dk, float* HWY_RESTRICT st) {
  const D d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const int64_t full = dk / N * N;
  V acc[4][NR];
  for (int m = 0; m < 4; ++m)
    for (int r = 0; r < NR; ++r) acc[m][r] = hn::Zero(d);
  if constexpr (NR <= 4) {
    // Key by key, so K is read in address order: decode streams K from
    // memory, and the interleaved order below loses the hardware prefetcher
    // there (MHA, 1 row: -25% at d = 128; GQA-4, 4 rows, Lk = 65536, d = 128:
    // 9.2-9.8 GB/s interleaved vs 12.0 GB/s in address order). In cache the
    // two orders measured the same (24.2 vs 23.7 GB/s at Lk = 4096).
    HWY_UNROLL(4)  // keeps acc in registers (gcc otherwise indexes a stack copy)
    for (int m = 0; m < 4; ++m) {
      const float* km = k + m * k_stride;
      for (int64_t x = 0; x < full; x += N) {
        const V kv = hn::LoadU(d, km + x);
        for (int r = 0; r < NR; ++r) {
          acc[m][r] = hn::MulAdd(kv, hn::Load(d, qs + r * dkp + x), acc[m][r]);
        }
      }
    }
  } else {
    // More rows (up to kFewRows = 8; GQA-8) are compute-bound, K/V reused by
    // NR rows: each Q vector load feeds 4 FMAs, K in the interleaved order.
    for (int64_t x = 0; x < full; x += N) {
      V kv[4];
      for (int m = 0; m < 4; ++m) kv[m] = hn::LoadU(d, k + m * k_stride + x);
      for (int r = 0; r < NR; ++r) {
        const V qv = hn::Load(d, qs + r * dkp + x);
        for (int m = 0; m < 4; ++m) acc[m][r] = hn::MulAdd(kv[m], qv, acc[m][r]);
      }
    }
  }
  if (full < dk) {
    V kv[4];
    for (int m = 0; m < 4; ++m) kv[m] = LoadTail(k + m * k_stride + full, dk - full);
    for (int r = 0; r < NR; ++r) {
      const V qv = hn::Load(d, qs + r * dkp + full);
      for (int m = 0; m < 4; ++m) acc[m][r] = hn::MulAdd(kv[m], qv, acc[m][r]);
    }
  }
  StoreKeySums<NR>(acc, st);
}

// 4·groups keys x NR (1 or 2) rows whose whole Q (QV vectors: dk = QV·lanes)
// stays in registers across the tile, so each K vector load feeds NR FMAs and
// nothing else is loaded (ScoresFour reloads Q: 5 loads per 4 FMAs at 4
// rows); K in address order, as ScoresFour.
template <int QV, int NR>
HWY_NOINLINE void ScoresQResident(const float* HWY_RESTRICT qs, int64_t dkp,
                                  const float* HWY_RESTRICT k, int64_t k_stride, int64_t groups,
                                  float* HWY_RESTRICT st) {
  const D d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  V q[NR][QV];
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < QV; ++v) q[r][v] = hn::Load(d, qs + r * dkp + v * N);
  for (int64_t g = 0; g < groups; ++g) {
    const float* HWY_RESTRICT kg = k + 4 * g * k_stride;
    V acc[4][NR];
    for (int m = 0; m < 4; ++m) {
      for (int r = 0; r < NR; ++r) acc[m][r] = hn::Zero(d);
      for (int v = 0; v < QV; ++v) {
        const V kv = hn::LoadU(d, kg + m * k_stride + v * N);
        for (int r = 0; r < NR; ++r) acc[m][r] = hn::MulAdd(kv, q[r][v], acc[m][r]);
      }
    }
    StoreKeySums<NR>(acc, st + 4 * g);
  }
}

// 4·groups keys x 4 rows with dk = 8 vectors in one pass over K: the whole
// Q would take all 32 registers, so the first 4 vectors of each row's Q stay
// in registers and the last 4 are loaded (from L1) once per key pair. Two
// passes of 2 rows with all of Q resident read each K tile twice, the second
// time from L2 with memory idle. Loads go key by key in address order:
// interleaving two keys' rows lost the hardware prefetcher (GQA-4 decode,
// Lk = 65536: 18 -> 14.5 GB/s; in order 19 -> 21, from L3 at Lk = 4096 36 -> 47).
HWY_NOINLINE void ScoresFourRowsOnePass(const float* HWY_RESTRICT qs, int64_t dkp,
                                        const float* HWY_RESTRICT k, int64_t k_stride,
                                        int64_t groups, float* HWY_RESTRICT st) {
  const D d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  V q[4][4];
  for (int r = 0; r < 4; ++r)
    for (int v = 0; v < 4; ++v) q[r][v] = hn::Load(d, qs + r * dkp + v * N);
  for (int64_t g = 0; g < groups; ++g) {
    V pairs[2][4];
    for (int pair = 0; pair < 2; ++pair) {
      const float* HWY_RESTRICT k0 = k + (4 * g + 2 * pair) * k_stride;
      const float* HWY_RESTRICT k1 = k0 + k_stride;
      V acc[2][4];
      for (int r = 0; r < 4; ++r) acc[0][r] = acc[1][r] = hn::Zero(d);
      for (int m = 0; m < 2; ++m) {
        const float* HWY_RESTRICT km = m == 0 ? k0 : k1;
        for (int v = 0; v < 4; ++v) {
          const V x = hn::LoadU(d, km + v * N);
          for (int r = 0; r < 4; ++r) acc[m][r] = hn::MulAdd(x, q[r][v], acc[m][r]);
        }
        for (int v = 4; v < 8; ++v) {
          const V x = hn::LoadU(d, km + v * N);
          for (int r = 0; r < 4; ++r) {
            acc[m][r] = hn::MulAdd(x, hn::Load(d, qs + r * dkp + v * N), acc[m][r]);
          }
        }
      }
      for (int r = 0; r < 4; ++r) pairs[pair][r] = PairSums(acc[0][r], acc[1][r]);
    }
    for (int r = 0; r < 4; ++r)
      StoreFourKeys(pairs[0][r], pairs[1][r], st + r * kFewStride + 4 * g);
  }
}
#endif

// S[r][j] (row-major, stride kFewStride) for nrows <= kFewRows rows of
// row-major Q (stride dkp, zero padded): keys in groups of 4, rows in groups
// of <= 4 (the K rows of a group stay in L1 across row groups).
void ScoresFewRows(const float* qs, int64_t dkp, int64_t nrows, const float* k, int64_t k_stride,
                   int64_t nc, int64_t dk, float* st) {
  int64_t j = 0;
#if HWY_TARGET != HWY_SCALAR
  const int64_t N = static_cast<int64_t>(hn::Lanes(D()));
  if (nrows >= 2 && nrows <= 4 && dk == 8 * N) {  // d = 128 on AVX-512, 64 on AVX2
    const int64_t groups = nc / 4;
    if (nrows == 4 && kZmmFile) {
      ScoresFourRowsOnePass(qs, dkp, k, k_stride, groups, st);
    } else {
      for (int64_t r = 0; r < nrows; r += 2) {
        if (nrows - r >= 2) {
          ScoresQResident<8, 2>(qs + r * dkp, dkp, k, k_stride, groups, st + r * kFewStride);
        } else {
          ScoresQResident<8, 1>(qs + r * dkp, dkp, k, k_stride, groups, st + r * kFewStride);
        }
      }
    }
    j = groups * 4;
  }
  for (; j + 4 <= nc; j += 4) {
    const float* kj = k + j * k_stride;
    for (int64_t r = 0; r < nrows; r += 4) {
      const float* q = qs + r * dkp;
      float* s = st + r * kFewStride + j;
      switch (std::min<int64_t>(4, nrows - r)) {
        case 1:
          ScoresFour<1>(q, dkp, kj, k_stride, dk, s);
          break;
        case 2:
          ScoresFour<2>(q, dkp, kj, k_stride, dk, s);
          break;
        case 3:
          ScoresFour<3>(q, dkp, kj, k_stride, dk, s);
          break;
        default:
          ScoresFour<4>(q, dkp, kj, k_stride, dk, s);
          break;
      }
    }
  }
#endif
  for (; j < nc; ++j) ScoresFewRowsOneKey(qs, dkp, nrows, k + j * k_stride, dk, st + j);
}

// O[m][v·N..] += Σ_j Pᵀ[j][m] · V[j][v·N..] for MR rows x NV column vectors
// (O = ..., without reading O, when `first`: the block's first tile). The
// tile's sums start from zero and are added to O at the end, so O sums tile
// partials (problem.h, "Accumulation"; accumulating onto O key by key
// stopped growing at 2^24 keys). (`kFirst` is a template argument: with a
// run-time choice, gcc kept the accumulators on the stack.)
template <int MR, int NV, bool kFirst>
HWY_NOINLINE void PvKernelT(const float* HWY_RESTRICT pt, int64_t pj, int64_t pm,
                            const float* HWY_RESTRICT vp, int64_t vs, int64_t dvp, int64_t nc,
                            float* HWY_RESTRICT o) {
  const D d;
  const size_t N = hn::Lanes(d);
  if (nc < 1) return;  // never (a tile has keys); lets gcc keep acc in registers
  V acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) acc[m][v] = hn::Zero(d);
  for (int64_t j = 0; j < nc; ++j) {
    V x[NV];
    for (int v = 0; v < NV; ++v) x[v] = hn::LoadU(d, vp + j * vs + v * N);
    for (int m = 0; m < MR; ++m) {
      const V p = hn::Set(d, pt[j * pj + m * pm]);
      for (int v = 0; v < NV; ++v) acc[m][v] = hn::MulAdd(p, x[v], acc[m][v]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < NV; ++v) {
      float* out = o + m * dvp + v * N;
      hn::Store(kFirst ? acc[m][v] : hn::Add(acc[m][v], hn::Load(d, out)), d, out);
    }
  }
}

template <int MR, int NV>
void PvKernel(const float* pt, int64_t pj, int64_t pm, const float* vp, int64_t vs, int64_t dvp,
              int64_t nc, bool first, float* o) {
  if (first) return PvKernelT<MR, NV, true>(pt, pj, pm, vp, vs, dvp, nc, o);
  PvKernelT<MR, NV, false>(pt, pj, pm, vp, vs, dvp, nc, o);
}

#if HWY_TARGET != HWY_SCALAR
// O[0..4) += P·V for 4 rows and dv = 8 vectors (128 on AVX-512) in one pass
// over V, key by key in address order: rows 0-2 of O in 24 registers, row 3
// in L1 (read and written once per key), since all of O would take all 32
// registers. Two passes over column halves (4 x 4 vectors each) read every
// V row twice; a variant with half of every O row in L1 moved 16 values
// through L1 per key and lost 15%. With the one-pass scores, GQA-4 decode,
// 1 thread: Lk = 16384 27 -> 35 GB/s, 65536 20 -> 24.7 (stream 28.6).
template <bool kFirst>
HWY_NOINLINE void PvFourRowsOnePass(const float* HWY_RESTRICT pt, int64_t pj, int64_t pm,
                                    const float* HWY_RESTRICT vp, int64_t vs, int64_t dvp,
                                    int64_t nc, float* HWY_RESTRICT o) {
  const D d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  // Row 3's tile sums, in L1, added to O at the end like the others.
  alignas(64) float o3[8 * 16];
  V acc[3][8];
  for (int v = 0; v < 8; ++v) {
    for (int r = 0; r < 3; ++r) acc[r][v] = hn::Zero(d);
    hn::Store(hn::Zero(d), d, o3 + v * N);
  }
  for (int64_t j = 0; j < nc; ++j) {
    const float* HWY_RESTRICT x = vp + j * vs;
    V p[4];
    for (int r = 0; r < 4; ++r) p[r] = hn::Set(d, pt[j * pj + r * pm]);
    for (int v = 0; v < 8; ++v) {
      const V xv = hn::LoadU(d, x + v * N);
      for (int r = 0; r < 3; ++r) acc[r][v] = hn::MulAdd(p[r], xv, acc[r][v]);
      hn::Store(hn::MulAdd(p[3], xv, hn::Load(d, o3 + v * N)), d, o3 + v * N);
    }
  }
  auto add_to_o = [&](int r, int v, V sum) {
    float* out = o + r * dvp + v * N;
    hn::Store(kFirst ? sum : hn::Add(sum, hn::Load(d, out)), d, out);
  };
  for (int v = 0; v < 8; ++v) {
    for (int r = 0; r < 3; ++r) add_to_o(r, v, acc[r][v]);
    add_to_o(3, v, hn::Load(d, o3 + v * N));
  }
}
#endif

template <int MR>
void PvRows(int nv, const float* pt, int64_t pj, int64_t pm, const float* vp, int64_t vs,
            int64_t dvp, int64_t nc, bool first, float* o) {
  switch (nv) {
    case 1:
      return PvKernel<MR, 1>(pt, pj, pm, vp, vs, dvp, nc, first, o);
    case 2:
      return PvKernel<MR, 2>(pt, pj, pm, vp, vs, dvp, nc, first, o);
    case 3:
      return PvKernel<MR, 3>(pt, pj, pm, vp, vs, dvp, nc, first, o);
    default:
      return PvKernel<MR, 4>(pt, pj, pm, vp, vs, dvp, nc, first, o);
  }
}

// O[0..nrows) += P·V over the whole tile (all nc keys); O = P·V if `first`.
void PvBlocked(const float* pt, int64_t pj, int64_t pm, const float* vp, int64_t vs, int64_t dvp,
               int64_t nc, int64_t nrows, bool first, float* o) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(D()));
  const int64_t cols = dvp / N;
  // Few rows (decode): every column vector of a row in registers (up to 3
  // rows x 8 vectors, dv = 128 on AVX-512), so the V tile, which comes from
  // memory, is read in one pass instead of one pass per 4 columns (MHA decode
  // from DRAM, d = 128, V already read in place: 16.9 -> 20.6 GB/s).
  if (cols == 2 * kNV && nrows * cols <= kMR * kNV) {
    switch (nrows) {
      case 1:
        return PvKernel<1, 2 * kNV>(pt, pj, pm, vp, vs, dvp, nc, first, o);
      case 2:
        return PvKernel<2, 2 * kNV>(pt, pj, pm, vp, vs, dvp, nc, first, o);
      default:
        return PvKernel<3, 2 * kNV>(pt, pj, pm, vp, vs, dvp, nc, first, o);
    }
  }
#if HWY_TARGET != HWY_SCALAR
  if (cols == 2 * kNV && nrows == 4 && kZmmFile) {
    if (first) return PvFourRowsOnePass<true>(pt, pj, pm, vp, vs, dvp, nc, o);
    return PvFourRowsOnePass<false>(pt, pj, pm, vp, vs, dvp, nc, o);
  }
#endif
  for (int64_t c0 = 0; c0 < cols; c0 += kNV) {
    const int nv = static_cast<int>(std::min<int64_t>(kNV, cols - c0));
    int64_t r = 0;
    for (; r + kMR <= nrows; r += kMR) {
      PvRows<kMR>(nv, pt + r * pm, pj, pm, vp + c0 * N, vs, dvp, nc, first, o + r * dvp + c0 * N);
    }
    const float* p = pt + r * pm;
    const float* v = vp + c0 * N;
    float* out = o + r * dvp + c0 * N;
    switch (nrows - r) {
      case 1:
        PvRows<1>(nv, p, pj, pm, v, vs, dvp, nc, first, out);
        break;
      case 2:
        PvRows<2>(nv, p, pj, pm, v, vs, dvp, nc, first, out);
        break;
      case 3:
        PvRows<3>(nv, p, pj, pm, v, vs, dvp, nc, first, out);
        break;
      case 4:
        PvRows<4>(nv, p, pj, pm, v, vs, dvp, nc, first, out);
        break;
      case 5:
        PvRows<5>(nv, p, pj, pm, v, vs, dvp, nc, first, out);
        break;
      default:
        break;
    }
  }
}

struct Scratch {
  float* qt;     // Qᵀ dk x kBr, or row-major kFewRows x dkp (flash::QBlockFloats)
  float* st;     // bc x kBr (or kFewRows x kFewStride)
  float* vp;     // bc x dvp, when V is packed
  float* o;      // kBr x dvp
  float* m;      // kBr
  float* l;      // kBr
  float* alpha;  // kBr
};

struct BlockCounts {
  int64_t full = 0, partial = 0, skipped = 0;
};

// One work item: rows [r0, r0 + nrows) of (b, kvh) against keys
// [key_lo, key_hi). Leaves m, l and the unnormalized O in `sc`.
void AttendBlock(const ValidProblem& p, const flash::Plan& plan, int64_t b, int64_t kvh, int64_t r0,
                 int64_t nrows, int64_t key_lo, int64_t key_hi, Scratch& sc, int64_t* rb,
                 int64_t* re, BlockCounts& counts) {
  const D d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const int64_t dk = p.shape.head_dim;
  const int64_t dv = p.shape.value_dim;
  const int64_t dvp = plan.dvp;
  const int64_t group = p.group;
  const int64_t nvec = (nrows + N - 1) / N;
  const int64_t rp = nvec * N;  // rows padded to whole vectors
  const float c = p.scale;
  // Few rows (decode): dot products along d beat broadcasting K into a
  // mostly empty query vector; Q is then kept row-major, padded to dkp.
  const bool few_rows = nrows <= kFewRows;
  const int64_t dkp = flash::RoundUp(dk, N);
  // Element (key j, row x) of the score tile: Sᵀ (key-major) normally, S
  // (row-major) for few rows, so that each softmax vectorizes its long axis.
  const int64_t sj = few_rows ? 1 : flash::kBr;
  const int64_t sr = few_rows ? kFewStride : 1;

  // Qᵀ (pre-scaled), visible ranges, union, intersection.
  int64_t ulo = key_hi, uhi = key_lo, ilo = key_lo, ihi = key_hi;
  const float* q_rows[flash::kBr];
  for (int64_t x = 0; x < nrows; ++x) {
    const int64_t r = r0 + x;
    const int64_t i = r / group;
    const int64_t h = kvh * group + r % group;
    q_rows[x] = p.QRow(b, h, i);
    if (few_rows) {
      const float* q = q_rows[x];
      for (int64_t k = 0; k < dkp; ++k) sc.qt[x * dkp + k] = k < dk ? q[k] * c : 0.0f;
    }
    const KeyRange keys = p.VisibleKeys(b, i);
    rb[x] = std::max(keys.begin, key_lo);
    re[x] = std::min(keys.end, key_hi);
    if (rb[x] < re[x]) {
      ulo = std::min(ulo, rb[x]);
      uhi = std::max(uhi, re[x]);
    }
    ilo = std::max(ilo, rb[x]);
    ihi = std::min(ihi, re[x]);
  }
  // In registers, 16 x 16 at a time (element by element this was 9% of the
  // time at N = 128, d = 128, where a block has only two key tiles).
  if (!few_rows) TransposeRows(q_rows, nrows, rp, dk, c, sc.qt, flash::kBr);
  for (int64_t x = 0; x < rp; x += N) {
    hn::Store(hn::Set(d, -kInfF), d, sc.m + x);
    hn::Store(hn::Zero(d), d, sc.l + x);
  }

  const int64_t bc = plan.bc;
  const int64_t tiles_total = (key_hi - key_lo + bc - 1) / bc;
  if (ulo >= uhi) {
    std::memset(sc.o, 0, sizeof(float) * rp * dvp);  // read by split merges
    counts.skipped += tiles_total;
    return;
  }
  const float* k_base = p.KRow(b, kvh, 0);
  const int64_t k_stride = p.k.strides.row;
  const bool additive = p.mask.kind == MaskKind::kAdditive;
  // V rows are used in place when they are whole vectors (dv a multiple of
  // 16), aligned or not: packing is a second pass over V that cost more than
  // the cache-line-split loads it avoids (malloc'd buffers are 16-byte
  // aligned: MHA decode, d = 128, 15 -> 25 GB/s; dense N = 2048, d = 128,
  // +5%). Other dv are packed with zero padding columns.
  const bool v_whole = plan.dv_whole;
  int64_t visited = 0;
  // Tiles are aligned to bc from key_lo; each is clipped to the union.
  for (int64_t t = key_lo + (ulo - key_lo) / bc * bc; t < uhi; t += bc) {
    const int64_t j0 = std::max(t, ulo);
    const int64_t j1 = std::min(t + bc, uhi);
    const int64_t nc = j1 - j0;
    // The first tile writes O instead of accumulating into it: O needs no
    // zeroing and no rescale by alpha = 2^(-inf) = 0.
    const bool first = ++visited == 1;
    const bool partial = !(ilo <= j0 && j1 <= ihi);
    partial ? ++counts.partial : ++counts.full;

    // Prefetch the next tile's K and V rows into L2 while this one computes,
    // a few rows per score micro-kernel call (issued all at once, the 1024
    // prefetches of a d = 128 tile stalled on full miss buffers: 6% of the
    // time): K/V of a head come from L3 once per row block. Not for few-row
    // (decode) blocks: they stream K/V sequentially at memory speed, where
    // the hardware prefetcher keeps up and prefetch instructions only queue.
    NextTile next;
    if (!few_rows && j1 < uhi) {
      next = {k_base + j1 * k_stride,     k_stride,        dk * 4,
              p.VRow(b, kvh, j1),         p.v.strides.row, dv * 4,
              std::min(j1 + bc, uhi) - j1};
    }
    // V rows [j0, j1) as the P·V kernel wants them (see v_whole above); else
    // packed: aligned rows with zero padding columns.
    const float* vsrc = p.VRow(b, kvh, j0);
    int64_t vs = p.v.strides.row;
    if (!v_whole) {
      for (int64_t j = 0; j < nc; ++j) {
        const float* vr = p.VRow(b, kvh, j0 + j);
        float* dst = sc.vp + j * dvp;
        int64_t x = 0;
        for (; x + N <= dv; x += N) hn::Store(hn::LoadU(d, vr + x), d, dst + x);
        if (x < dv) {
          hn::Store(LoadTail(vr + x, dv - x), d, dst + x);
          x += N;
        }
        for (; x < dvp; x += N) hn::Store(hn::Zero(d), d, dst + x);
      }
      vsrc = sc.vp;
      vs = dvp;
    }
    // In a partial tile hidden keys get weight 0, and 0·NaN = NaN: note
    // whether its V rows are all finite.
    bool v_finite = true;
    if (partial) {
      auto all = hn::FirstN(d, N);  // all true
      for (int64_t j = 0; j < nc; ++j) {
        for (int64_t x = 0; x < dvp; x += N) {
          all = hn::And(all, hn::IsFinite(hn::LoadU(d, vsrc + j * vs + x)));
        }
      }
      v_finite = hn::AllTrue(d, all);
    }

    // Sᵀ = K·Qᵀ.
    if (few_rows) {
      ScoresFewRows(sc.qt, dkp, nrows, k_base + j0 * k_stride, k_stride, nc, dk, sc.st);
    } else {
      Scores(sc.qt, k_base + j0 * k_stride, k_stride, nc, dk, nvec, sc.st, next);
    }
    if (additive) {
      for (int64_t x = 0; x < nrows; ++x) {
        const int64_t r = r0 + x;
        const float* a = p.AdditiveRow(b, kvh * group + r % group, r / group) + j0;
        for (int64_t j = 0; j < nc; ++j) sc.st[j * sj + x * sr] += a[j];
      }
    }
    if (partial) {
      for (int64_t x = 0; x < nrows; ++x) {
        const int64_t lo = std::min(std::max(rb[x], j0), j1) - j0;
        const int64_t hi = std::max(std::min(re[x], j1), j0) - j0;
        if (lo >= hi) {
          for (int64_t j = 0; j < nc; ++j) sc.st[j * sj + x * sr] = -kInfF;
        } else {
          for (int64_t j = 0; j < lo; ++j) sc.st[j * sj + x * sr] = -kInfF;
          for (int64_t j = hi; j < nc; ++j) sc.st[j * sj + x * sr] = -kInfF;
        }
      }
    }

    // Online softmax, vectorized over queries (or over keys for few rows).
    const V neg_inf = hn::Set(d, -kInfF);
    if (few_rows) {
      const hn::CappedTag<float, 1> d1;
      const auto tail = hn::FirstN(d, static_cast<size_t>(nc % N == 0 ? N : nc % N));
      const int64_t last = (nc - 1) / N * N;  // start of the last vector
      for (int64_t x = 0; x < nrows; ++x) {
        float* s = sc.st + x * kFewStride;
        V mt = neg_inf;
        for (int64_t j = 0; j < last; j += N) mt = hn::Max(mt, hn::Load(d, s + j));
        mt = hn::Max(mt, hn::IfThenElse(tail, hn::Load(d, s + last), neg_inf));
        const float mtile = hn::GetLane(hn::MaxOfLanes(d, mt));
        const float mo = sc.m[x];
        const float mn = mo < mtile ? mtile : mo;
        const float mu = mn == -kInfF ? 0.0f : mn;
        const V muv = hn::Set(d, mu);
        V sum = hn::Zero(d);
        for (int64_t j = 0; j < last; j += N) {
          const V e = ExpOfDifference(d, hn::Load(d, s + j), muv);
          hn::Store(e, d, s + j);
          sum = hn::Add(sum, e);
        }
        const V e = ExpOfDifference(d, hn::Load(d, s + last), muv);
        hn::Store(e, d, s + last);
        sum = hn::Add(sum, hn::IfThenElseZero(tail, e));
        const float alpha = hn::GetLane(ExpOfDifference(d1, hn::Set(d1, mo), hn::Set(d1, mu)));
        sc.l[x] = alpha * sc.l[x] + hn::GetLane(hn::SumOfLanes(d, sum));
        sc.m[x] = mn;
        sc.alpha[x] = alpha;
      }
    }
    for (int64_t x = 0; x < (few_rows ? 0 : rp); x += N) {
      V mt = neg_inf;
      for (int64_t j = 0; j < nc; ++j) mt = hn::Max(mt, hn::Load(d, sc.st + j * flash::kBr + x));
      const V mo = hn::Load(d, sc.m + x);
      const V mn = hn::Max(mo, mt);
      const V mu = hn::IfThenZeroElse(hn::Eq(mn, neg_inf), mn);
      V sum = hn::Zero(d);
      for (int64_t j = 0; j < nc; ++j) {
        float* s = sc.st + j * flash::kBr + x;
        const V e = ExpOfDifference(d, hn::Load(d, s), mu);
        hn::Store(e, d, s);
        sum = hn::Add(sum, e);
      }
      const V alpha = ExpOfDifference(d, mo, mu);
      hn::Store(hn::MulAdd(alpha, hn::Load(d, sc.l + x), sum), d, sc.l + x);
      hn::Store(mn, d, sc.m + x);
      hn::Store(alpha, d, sc.alpha + x);
    }
    // Rescale O only for rows whose max moved (alpha == 1 exactly otherwise).
    for (int64_t x = 0; x < (first ? 0 : nrows); ++x) {
      const float a = sc.alpha[x];
      if (a == 1.0f) continue;
      const V av = hn::Set(d, a);
      float* o = sc.o + x * dvp;
      for (int64_t y = 0; y < dvp; y += N) hn::Store(hn::Mul(av, hn::Load(d, o + y)), d, o + y);
    }

    // O += P·V.
    if (v_finite) {
      PvBlocked(sc.st, sj, sr, vsrc, vs, dvp, nc, nrows, first, sc.o);
    } else {
      for (int64_t x = 0; x < nrows; ++x) {
        const int64_t lo = std::min(std::max(rb[x], j0), j1) - j0;
        const int64_t hi = std::max(std::min(re[x], j1), j0) - j0;
        float* o = sc.o + x * dvp;
        if (first) std::fill(o, o + dvp, 0.0f);
        for (int64_t j = lo; j < hi; ++j) {
          const V pj = hn::Set(d, sc.st[j * sj + x * sr]);
          const float* vr = vsrc + j * vs;
          for (int64_t y = 0; y < dvp; y += N) {
            hn::Store(hn::MulAdd(pj, hn::LoadU(d, vr + y), hn::Load(d, o + y)), d, o + y);
          }
        }
      }
    }
  }
  counts.skipped += tiles_total - visited;
}

// Normalizes one row: O / l and lse; a fully masked row gives O = 0,
// lse = -inf. NaN in l or m (a NaN or +inf logit) gives NaN.
void FinishRow(const float* acc, float m, float l, int64_t dv, float* out, float* lse) {
  if (m == -kInfF && l == 0.0f) {
    for (int64_t y = 0; y < dv; ++y) out[y] = 0.0f;
    if (lse) *lse = -kInfF;
    return;
  }
  const float inv = 1.0f / l;
  for (int64_t y = 0; y < dv; ++y) out[y] = acc[y] * inv;
  if (lse) *lse = m + std::log(l);
}

Status RunFlashImpl(const ValidProblem& p, ExecContext& ctx) {
  const flash::Plan plan = flash::MakePlan(p);
  const int64_t items = plan.items();
  if (items == 0) return Status::Ok();
  const int threads = std::max(1, ctx.threads);
  const int64_t dk = p.shape.head_dim;
  const int64_t dv = p.shape.value_dim;
  const int64_t dvp = plan.dvp;
  auto scratch = ctx.workspace->Allocate<float>(static_cast<size_t>(threads * plan.thread_floats));
  auto ranges = ctx.workspace->Allocate<int64_t>(static_cast<size_t>(threads * 2 * flash::kBr));
  Workspace::Buffer<float> partial;
  if (plan.splits > 1)
    partial = ctx.workspace->Allocate<float>(static_cast<size_t>(plan.partial_floats));
  Workspace::Buffer<int64_t> done;  // finished splits per block
  if (plan.splits > 1) {
    done = ctx.workspace->Allocate<int64_t>(static_cast<size_t>(plan.blocks));
    std::fill(done.data(), done.data() + plan.blocks, int64_t{0});
  }
  const int64_t slot = plan.block_rows * (dvp + 2);  // partial floats per item

  std::atomic<int64_t> full{0}, part{0}, skipped{0};
  // Work order: (batch, kv head) pairs in groups whose K and V fit in one
  // L2 together (one head from N = 1024 at d = 128: the threads share that
  // head's K/V in L3, where cycling through all heads' 32 MiB at N = 4096
  // went to DRAM, -15%; all 8 heads at N = 128), and within a group by
  // decreasing query block across its heads, so the longest causal blocks of
  // every head start first and the short ones fill in at the end (one head
  // at a time left 2 threads idle on uneven tails at small N: causal
  // N = 256, d = 128, 2 threads: 140 -> 150 GF/s).
  const int64_t kv_bytes = static_cast<int64_t>(sizeof(float)) * p.shape.kv_len * (dk + dv);
  const int64_t group_heads =
      std::clamp<int64_t>(L2CacheBytes() / std::max<int64_t>(kv_bytes, 1), 1, plan.bkv);
  auto block_of = [&](int64_t blk, int64_t* b, int64_t* kvh, int64_t* r0, int64_t* nrows) {
    const int64_t group_blocks = group_heads * plan.row_blocks;
    const int64_t group = blk / group_blocks, i = blk % group_blocks;
    const int64_t heads_here = std::min(group_heads, plan.bkv - group * group_heads);
    const int64_t qb = plan.row_blocks - 1 - i / heads_here;
    const int64_t bkv = group * group_heads + i % heads_here;
    *b = bkv / p.shape.kv_heads;
    *kvh = bkv % p.shape.kv_heads;
    *r0 = qb * flash::kBr;
    *nrows = std::min(flash::kBr, plan.rows - *r0);
  };

  // Combines the splits of block `blk` in a fixed order (so the result does
  // not depend on which thread merges) into O and lse.
  auto merge_block = [&](int64_t blk, float* acc) {
    int64_t b, kvh, r0, nrows;
    block_of(blk, &b, &kvh, &r0, &nrows);
    for (int64_t x = 0; x < nrows; ++x) {
      const float* first = partial.data() + blk * plan.splits * slot + x * (dvp + 2);
      float mx = -kInfF;
      bool nan = false;
      for (int64_t s = 0; s < plan.splits; ++s) {
        const float ms = first[s * slot];
        nan |= std::isnan(ms);
        mx = std::max(mx, ms);
      }
      float l = 0.0f;
      for (int64_t y = 0; y < dvp; ++y) acc[y] = 0.0f;
      if (nan) {
        mx = std::numeric_limits<float>::quiet_NaN();
        l = mx;
      } else {
        const float mu = mx == -kInfF ? 0.0f : mx;
        for (int64_t s = 0; s < plan.splits; ++s) {
          const float* row = first + s * slot;
          const float w = std::exp(row[0] - mu);
          l += w * row[1];
          for (int64_t y = 0; y < dvp; ++y) acc[y] += w * row[2 + y];
        }
      }
      const int64_t r = r0 + x;
      const int64_t i = r / p.group;
      const int64_t h = kvh * p.group + r % p.group;
      FinishRow(acc, mx, l, dv, p.ORow(b, h, i),
                p.lse.empty() ? nullptr : &p.lse[p.RowIndex(b, h, i)]);
    }
  };

  ParallelFor(threads, items, [&](int64_t item, int tid) {
    float* base = scratch.data() + tid * plan.thread_floats;
    Scratch sc;
    sc.qt = base;
    sc.st = sc.qt + flash::QBlockFloats(dk);
    sc.vp = sc.st + flash::STileFloats(plan);
    sc.o = sc.vp + flash::VTileFloats(plan);
    sc.m = sc.o + flash::kBr * dvp;
    sc.l = sc.m + flash::kBr;
    sc.alpha = sc.l + flash::kBr;
    int64_t* rb = ranges.data() + tid * 2 * flash::kBr;
    int64_t* re = rb + flash::kBr;

    const int64_t blk = item / plan.splits;
    const int64_t split = item % plan.splits;
    int64_t b, kvh, r0, nrows;
    block_of(blk, &b, &kvh, &r0, &nrows);
    const int64_t t_lo = PartBegin(plan.key_tiles, plan.splits, split);
    const int64_t t_hi = PartBegin(plan.key_tiles, plan.splits, split + 1);
    const int64_t key_lo = t_lo * plan.bc;
    const int64_t key_hi = std::min(t_hi * plan.bc, p.shape.kv_len);
    BlockCounts counts;
    AttendBlock(p, plan, b, kvh, r0, nrows, key_lo, key_hi, sc, rb, re, counts);
    full += counts.full;
    part += counts.partial;
    skipped += counts.skipped;

    if (plan.splits == 1) {
      for (int64_t x = 0; x < nrows; ++x) {
        const int64_t r = r0 + x;
        const int64_t i = r / p.group;
        const int64_t h = kvh * p.group + r % p.group;
        FinishRow(sc.o + x * dvp, sc.m[x], sc.l[x], dv, p.ORow(b, h, i),
                  p.lse.empty() ? nullptr : &p.lse[p.RowIndex(b, h, i)]);
      }
    } else {
      float* out = partial.data() + item * slot;
      for (int64_t x = 0; x < nrows; ++x) {
        float* row = out + x * (dvp + 2);
        row[0] = sc.m[x];
        row[1] = sc.l[x];
        std::memcpy(row + 2, sc.o + x * dvp, sizeof(float) * dvp);
      }
      // The item that completes a block merges it: no second parallel pass
      // and no barrier. acq_rel orders the other splits' partials before.
      if (std::atomic_ref<int64_t>(done[blk]).fetch_add(1, std::memory_order_acq_rel) ==
          plan.splits - 1) {
        merge_block(blk, sc.o);
      }
    }
  });

  if (FlashTileCounts* sink = flash::g_tile_counts.load()) {
    sink->full += full.load();
    sink->partial += part.load();
    sink->skipped += skipped.load();
    if (plan.splits > 1) sink->split_items += items;
  }
  return Status::Ok();
}

void Exp2Array(const float* x, float* out, size_t n) {
  const D d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(FastExp2(d, hn::LoadU(d, x + i)), d, out + i);
  for (; i < n; ++i) {
    const hn::CappedTag<float, 1> d1;
    hn::StoreU(FastExp2(d1, hn::LoadU(d1, x + i)), d1, out + i);
  }
}

}  // namespace
// Exported per target (outside the anonymous namespace for HWY_EXPORT).
Status RunFlashTarget(const ValidProblem& p, ExecContext& ctx) { return RunFlashImpl(p, ctx); }
void FlashExp2Target(const float* x, float* out, size_t n) { Exp2Array(x, out, n); }
}  // namespace HWY_NAMESPACE
}  // namespace attn
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attn {
HWY_EXPORT(RunFlashTarget);
HWY_EXPORT(FlashExp2Target);

void SetFlashTileCounts(FlashTileCounts* counts) { flash::g_tile_counts.store(counts); }

void FlashExp2ForTest(const float* x, float* out, size_t n) {
  HWY_DYNAMIC_DISPATCH(FlashExp2Target)(x, out, n);
}

namespace {

Status RunFlash(const ValidProblem& p, ExecContext& ctx) {
  return HWY_DYNAMIC_DISPATCH(RunFlashTarget)(p, ctx);
}

size_t FlashWorkspaceBytes(const ValidProblem& p, int threads) {
  const flash::Plan plan = flash::MakePlan(p);
  if (plan.items() == 0) return 0;
  const SaturatingSize t = std::max(1, threads);
  return (SaturatingSize(sizeof(float)) * (t * plan.thread_floats + plan.partial_floats) +
          SaturatingSize(sizeof(int64_t)) *
              (t * (2 * flash::kBr) + (plan.splits > 1 ? plan.blocks : 0)))
      .value();
}

}  // namespace

extern const Variant flash_variant = {
    .name = "flash",
    .summary =
        "FlashAttention-2 tiling (64 rows x up to 512 keys), online softmax, Highway "
        "micro-kernels, masked tiles skipped, split-key decoding",
    .run = RunFlash,
    .workspace_bytes = FlashWorkspaceBytes,
    .supports_weights = false,
    .materializes_scores = false,
    .uses_highway = true,
    .deterministic = true,
};

}  // namespace attn
#endif  // HWY_ONCE
