// Score tile: Sᵀ = K·Qᵀ for a tile of keys against 64 queries, K broadcast
// straight from its rows (no packing), queries in vectors. flash's kernel for
// blocks of more than 8 query rows.
//
// Contract (ScoreTile):
//   qt   Qᵀ: dk rows of kScoreTileCols floats (row x = element x of each of
//        the 64 queries), 64-byte aligned; nvec <= kScoreTileCols / lanes
//        leading vectors of each row are read.
//   k    nkeys key rows of dk floats, `k_stride` floats apart, any alignment.
//   st   Sᵀ out: nkeys rows of kScoreTileCols floats, 64-byte aligned; row j
//        vector v = Σ_x k[j][x]·qt[x][v·lanes ..]. Columns past nvec vectors
//        are not written.
//   softcap  > 0: the logit softcap cap·tanh(s/cap) of every score, applied
//        as the accumulators are stored (FastTanh, score_mods-inl.h: the
//        same arithmetic as SoftcapRow, so the same bits); 0: none. A pass
//        over the tile afterwards reads and writes its 128 KiB in L2 again.
//   alibi    active: the ALiBi bias of each score (alibi_tile.h), after the
//        softcap, as the accumulators are stored (AlibiColumns' arithmetic,
//        so the same bits; slopes and positions of nvec vectors read).
//   prefetch  rows of the next tile to bring into L2 along the way (or none).
//   col_max  null, or nvec vectors raised to each query's maximum over these
//        keys' stored scores (the caller sets -inf before a tile's first
//        run): the online softmax then skips its pass over the tile for the
//        maximum (OnlineSoftmaxColumns' tile_max). 4 loads, 24 max and 4
//        stores per 6 keys, on the accumulators as they are stored.
// Register block: 6 keys x 4 query vectors = 24 accumulators, + 4 Qᵀ vectors
// + 1 broadcast <= 32 AVX-512 registers. Per d step: 4 aligned loads and 6
// broadcast loads feed 24 FMAs (Zen 4 issues one 512-bit FMA and two loads
// per cycle: FMA-bound). With 16 registers (AVX2, SSE4) 6 keys x 2 vectors
// (kTileVectors): 2 loads and 6 broadcasts per 12 FMAs, still FMA-bound on
// two load ports. Remainders: 1-5 keys, fewer vectors (the same kernel,
// smaller template arguments).
#if defined(ATTNLAB_KERNELS_UKERNELS_SCORE_TILE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNLAB_KERNELS_UKERNELS_SCORE_TILE_INL_H_
#undef ATTNLAB_KERNELS_UKERNELS_SCORE_TILE_INL_H_
#else
#define ATTNLAB_KERNELS_UKERNELS_SCORE_TILE_INL_H_
#endif

#include <algorithm>
#include <cstdint>

#include "hwy/highway.h"
#include "kernels/ukernels/alibi_tile.h"
#include "kernels/ukernels/common-inl.h"
#include "kernels/ukernels/score_mods-inl.h"

#ifndef ATTNLAB_KERNELS_UKERNELS_SCORE_TILE_ONCE_
#define ATTNLAB_KERNELS_UKERNELS_SCORE_TILE_ONCE_
namespace attn {
// Queries per score tile (the row stride of Qᵀ and Sᵀ): 4 AVX-512 vectors.
inline constexpr int64_t kScoreTileCols = 64;
// Keys per score micro-kernel call.
inline constexpr int kScoreTileKeys = 6;
}  // namespace attn
#endif

HWY_BEFORE_NAMESPACE();
namespace attn {
namespace HWY_NAMESPACE {

template <int MR, int NV, class D, class V = hn::Vec<D>>
HWY_INLINE void StoreScores(D d, const V (&acc)[MR][NV], float* HWY_RESTRICT st) {
  const size_t N = hn::Lanes(d);
  ATTN_UNROLLED
  for (int m = 0; m < MR; ++m) {
    ATTN_UNROLLED
    for (int v = 0; v < NV; ++v) hn::Store(acc[m][v], d, st + m * kScoreTileCols + v * N);
  }
}

// Sᵀ[m][v·N..] = Σ_x K[m][x] · Qᵀ[x][v·N..] for MR keys x NV query vectors
// (kSoftcap: cap·tanh of each, as SoftcapVectors computes it; kAlibi: then
// + the bias, as AlibiColumns computes it).
template <int MR, int NV, bool kSoftcap, bool kAlibi>
HWY_NOINLINE void ScoreTileKernel(const float* HWY_RESTRICT qt, const float* HWY_RESTRICT k,
                                  int64_t k_stride, int64_t dk, float* HWY_RESTRICT st, float cap,
                                  const AlibiTile alibi, float* HWY_RESTRICT col_max) {
  const DF d;
  const size_t N = hn::Lanes(d);
  if (dk < 1) return;  // never (Validate); lets gcc keep acc in registers
  VF acc[MR][NV];
  ATTN_UNROLLED
  for (int m = 0; m < MR; ++m) {
    ATTN_UNROLLED
    for (int v = 0; v < NV; ++v) acc[m][v] = hn::Zero(d);
  }
  // Two d steps per iteration: fewer loop instructions between the FMAs.
  // With PvTileKernel's tall blocks likewise, fp32 flash took 0.89-1.01x the
  // time, median 0.96 (Sapphire Rapids VM, AVX3, N = 512-4096, d = 64 and
  // 128, dense and causal, 1 and 2 threads, 3 interleaved rounds; cache-hot
  // `f32_pv_tile` 0.91-0.93x, `f32_score_tile` 0.95-0.97x). Four: no further
  // gain (0.96-1.02x); the AVX2 target: unchanged (1.00x).
  HWY_UNROLL(2)
  for (int64_t x = 0; x < dk; ++x) {
    VF q[NV];
    ATTN_UNROLLED
    for (int v = 0; v < NV; ++v) q[v] = hn::Load(d, qt + x * kScoreTileCols + v * N);
    ATTN_UNROLLED
    for (int m = 0; m < MR; ++m) {
      const VF kb = hn::Set(d, k[m * k_stride + x]);
      ATTN_UNROLLED
      for (int v = 0; v < NV; ++v) acc[m][v] = hn::MulAdd(kb, q[v], acc[m][v]);
    }
  }
  if constexpr (kSoftcap) {
    const VF vcap = hn::Set(d, cap), inv = hn::Set(d, 1.0f / cap);
    ATTN_UNROLLED
    for (int m = 0; m < MR; ++m) {
      ATTN_UNROLLED
      for (int v = 0; v < NV; ++v) acc[m][v] = hn::Mul(vcap, FastTanh(d, hn::Mul(acc[m][v], inv)));
    }
  }
  if constexpr (kAlibi) {
    if constexpr (kSoftcap) {
      // With the softcap's constants in registers the bias spilled
      // accumulators (6 x 4 on AVX3): the capped scores go to Sᵀ (L1) first
      // and come back one at a time.
      StoreScores<MR, NV>(d, acc, st);
      asm volatile("" : : "r"(st) : "memory");  // reload, not forward, them
      ATTN_UNROLLED
      for (int m = 0; m < MR; ++m) {
        ATTN_UNROLLED
        for (int v = 0; v < NV; ++v) acc[m][v] = hn::Load(d, st + m * kScoreTileCols + v * N);
      }
    }
    // Key m's distance as key0 - position + m: whole numbers below 2^24,
    // so the same exact value as (key0 + m) - position, in 3 registers
    // beside the accumulators.
    const VF one = hn::Set(d, 1.0f);
    ATTN_UNROLLED
    for (int v = 0; v < NV; ++v) {
      const VF slope = hn::Load(d, alibi.slopes + v * N);
      VF distance = hn::Sub(hn::Set(d, alibi.key0), hn::Load(d, alibi.positions + v * N));
      ATTN_UNROLLED
      for (int m = 0; m < MR; ++m) {
        acc[m][v] = hn::MulAdd(slope, distance, acc[m][v]);
        distance = hn::Add(distance, one);
      }
    }
  }
  StoreScores<MR, NV>(d, acc, st);
  if (col_max == nullptr) return;
  ATTN_UNROLLED
  for (int v = 0; v < NV; ++v) {
    VF c = hn::Load(d, col_max + v * N);
    ATTN_UNROLLED
    for (int m = 0; m < MR; ++m) c = hn::Max(c, acc[m][v]);
    hn::Store(c, d, col_max + v * N);
  }
}

template <int MR, bool kSoftcap, bool kAlibi>
HWY_INLINE void ScoreTileVectors(int nv, const float* qt, const float* k, int64_t k_stride,
                                 int64_t dk, float* st, float cap, const AlibiTile& alibi,
                                 float* col_max) {
  switch (nv) {
    case 1:
      return ScoreTileKernel<MR, 1, kSoftcap, kAlibi>(qt, k, k_stride, dk, st, cap, alibi, col_max);
    case 2:
      return ScoreTileKernel<MR, 2, kSoftcap, kAlibi>(qt, k, k_stride, dk, st, cap, alibi, col_max);
    case 3:
      return ScoreTileKernel<MR, 3, kSoftcap, kAlibi>(qt, k, k_stride, dk, st, cap, alibi, col_max);
    default:
      return ScoreTileKernel<MR, 4, kSoftcap, kAlibi>(qt, k, k_stride, dk, st, cap, alibi, col_max);
  }
}

template <int MR>
HWY_INLINE void ScoreTileKeys(int nv, const float* qt, const float* k, int64_t k_stride, int64_t dk,
                              float* st, float softcap, const AlibiTile& alibi, float* col_max) {
  if (alibi.active()) {
    if (softcap > 0.0f) {
      return ScoreTileVectors<MR, true, true>(nv, qt, k, k_stride, dk, st, softcap, alibi, col_max);
    }
    return ScoreTileVectors<MR, false, true>(nv, qt, k, k_stride, dk, st, 0.0f, alibi, col_max);
  }
  if (softcap > 0.0f) {
    return ScoreTileVectors<MR, true, false>(nv, qt, k, k_stride, dk, st, softcap, alibi, col_max);
  }
  ScoreTileVectors<MR, false, false>(nv, qt, k, k_stride, dk, st, 0.0f, alibi, col_max);
}

// The whole tile (see the contract above).
HWY_INLINE void ScoreTile(const float* qt, const float* k, int64_t k_stride, int64_t nkeys,
                          int64_t dk, int64_t nvec, float* st, float softcap = 0.0f,
                          const PrefetchRows& prefetch = {}, float* col_max = nullptr,
                          const AlibiTile& alibi = {}) {
  constexpr int kMR = kScoreTileKeys;
  const size_t N = hn::Lanes(DF());
  for (int64_t v0 = 0; v0 < nvec; v0 += kTileVectors) {
    const int nv = static_cast<int>(std::min<int64_t>(kTileVectors, nvec - v0));
    const float* q = qt + v0 * N;
    float* s = st + v0 * N;
    float* cm = col_max != nullptr ? col_max + v0 * N : nullptr;
    int64_t j = 0;
    for (; j + kMR <= nkeys; j += kMR) {
      if (v0 == 0) prefetch.Prefetch(j, j + kMR);
      ScoreTileKeys<kMR>(nv, q, k + j * k_stride, k_stride, dk, s + j * kScoreTileCols, softcap,
                         alibi.From(j, v0 * N), cm);
    }
    if (v0 == 0) prefetch.Prefetch(j, prefetch.rows);
    const float* kj = k + j * k_stride;
    float* sj = s + j * kScoreTileCols;
    const AlibiTile bias = alibi.From(j, v0 * N);
    switch (nkeys - j) {
      case 1:
        ScoreTileKeys<1>(nv, q, kj, k_stride, dk, sj, softcap, bias, cm);
        break;
      case 2:
        ScoreTileKeys<2>(nv, q, kj, k_stride, dk, sj, softcap, bias, cm);
        break;
      case 3:
        ScoreTileKeys<3>(nv, q, kj, k_stride, dk, sj, softcap, bias, cm);
        break;
      case 4:
        ScoreTileKeys<4>(nv, q, kj, k_stride, dk, sj, softcap, bias, cm);
        break;
      case 5:
        ScoreTileKeys<5>(nv, q, kj, k_stride, dk, sj, softcap, bias, cm);
        break;
      default:
        break;
    }
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace attn
HWY_AFTER_NAMESPACE();

#endif  // ATTNLAB_KERNELS_UKERNELS_SCORE_TILE_INL_H_
