// Score rows: S = Q·Kᵀ for a few query rows (decode, GQA groups: <= 8 rows)
// against a tile of keys, as dot products along d (a 64-query score tile
// would leave most lanes of each query vector empty).
//
// Contract (ScoreRows):
//   qs   nrows (<= 8) query rows, `dkp` floats apart, dkp a whole number of
//        vectors and qs 64-byte aligned; elements dk .. dkp-1 of each row are
//        zero (they meet the tail of K, loaded with LoadTail).
//   k    nkeys key rows of dk floats, `k_stride` apart, any alignment; read
//        key by key in address order (decode streams K from memory, and
//        interleaved orders lost the hardware prefetcher: see each kernel).
//   st   S out: row r, key j at st[r·lds + j].
//   prefetch  rows to bring into L2 along the way, row j beside key j (or
//        none): flash passes the next block of a paged cache.
// ScoreRowsRuns takes the keys as runs instead (kernels/ukernels/key_runs.h:
// each run its rows, count and prefetch, one k_stride for all; S's key j
// counts through the runs): a paged cache's tile, Q kept in registers
// across its blocks.
// Kernels (chosen by ScoreRows and ScoreRowsRuns; each on the micro-kernel list):
//   ScoreRowsFourKeys<NR>    4 keys x NR <= 4 rows, 4·NR accumulators along
//                            d, one transpose-reduce per row for the 4 sums.
//   ScoreRowsQResident<8,NR> dk = 8 vectors (128 on AVX-512), NR = 1-2 rows
//                            whose Q stays in registers over the tile's runs.
//   ScoreFourRowsOnePass     4 rows, dk = 8 vectors, AVX-512: half of Q in
//                            registers, one pass over K.
//   ScoreRowsOneKey          one key: the last nkeys % 4 keys, and the whole
//                            tile on a single-lane target.
#if defined(ATTNLAB_KERNELS_UKERNELS_SCORE_ROWS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNLAB_KERNELS_UKERNELS_SCORE_ROWS_INL_H_
#undef ATTNLAB_KERNELS_UKERNELS_SCORE_ROWS_INL_H_
#else
#define ATTNLAB_KERNELS_UKERNELS_SCORE_ROWS_INL_H_
#endif

#include <algorithm>
#include <cstdint>

#include "hwy/highway.h"
#include "kernels/ukernels/common-inl.h"
#include "kernels/ukernels/convert-inl.h"
#include "kernels/ukernels/key_runs.h"

HWY_BEFORE_NAMESPACE();
namespace attn {
namespace HWY_NAMESPACE {

// One dot product along d per (key, row): the remainder keys of a tile, and
// the whole few-row path on a single-lane target.
template <class T = float>
HWY_INLINE void ScoreRowsOneKey(const float* HWY_RESTRICT qs, int64_t dkp, int64_t nrows,
                                const T* HWY_RESTRICT kr, int64_t dk, float* HWY_RESTRICT st,
                                int64_t lds) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const int64_t full = dk / N * N;
  for (int64_t r = 0; r < nrows; ++r) {
    VF acc = hn::Zero(d);
    for (int64_t x = 0; x < full; x += N) {
      acc = hn::MulAdd(LoadVecAsF32(kr + x), hn::Load(d, qs + r * dkp + x), acc);
    }
    if constexpr (std::is_same_v<T, float>) {  // reduced K: whole vectors only
      if (full < dk) {
        acc = hn::MulAdd(LoadTail(kr + full, dk - full), hn::Load(d, qs + r * dkp + full), acc);
      }
    }
    st[r * lds] = hn::GetLane(hn::SumOfLanes(d, acc));
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
HWY_INLINE VF PairSums(VF a, VF b) {
  const DF d;
  return hn::Add(hn::InterleaveLower(d, a, b), hn::InterleaveUpper(d, a, b));
}

// st[0..4) = the 4 dot products of keys (0, 1) in `t01` and (2, 3) in `t23`
// (PairSums): a 64-bit interleave leaves (0, 1, 2, 3) in each 128-bit block,
// whose sum (SumBlocks) is the 4 dot products.
HWY_INLINE void StoreFourKeys(VF t01, VF t23, float* HWY_RESTRICT st) {
  const DF d;
  const hn::Repartition<double, DF> dd;
  const hn::CappedTag<float, 4> d4;
  const auto u0 = hn::BitCast(dd, t01);
  const auto u1 = hn::BitCast(dd, t23);
  const VF blocks = hn::Add(hn::BitCast(d, hn::InterleaveLower(dd, u0, u1)),
                            hn::BitCast(d, hn::InterleaveUpper(dd, u0, u1)));
  hn::StoreU(SumBlocks(d, blocks), d4, st);
}

// st[r·lds + m] = Σ lanes of acc[m][r] for 4 keys m and NR rows.
template <int NR>
HWY_INLINE void StoreKeySums(const VF (&acc)[4][NR], float* HWY_RESTRICT st, int64_t lds) {
  ATTN_UNROLLED
  for (int r = 0; r < NR; ++r) {
    StoreFourKeys(PairSums(acc[0][r], acc[1][r]), PairSums(acc[2][r], acc[3][r]), st + r * lds);
  }
}

template <int NR, class T = float>
HWY_NOINLINE void ScoreRowsFourKeys(const float* HWY_RESTRICT qs, int64_t dkp,
                                    const T* HWY_RESTRICT k, int64_t k_stride, int64_t dk,
                                    float* HWY_RESTRICT st, int64_t lds) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const int64_t full = dk / N * N;
  VF acc[4][NR];
  ATTN_UNROLLED
  for (int m = 0; m < 4; ++m) {
    ATTN_UNROLLED
    for (int r = 0; r < NR; ++r) acc[m][r] = hn::Zero(d);
  }
  if constexpr (NR <= 4) {
    // Key by key, so K is read in address order: decode streams K from
    // memory, and the interleaved order below loses the hardware prefetcher
    // there (MHA, 1 row: -25% at d = 128; GQA-4, 4 rows, Lk = 65536, d = 128:
    // 9.2-9.8 GB/s interleaved vs 12.0 GB/s in address order). In cache the
    // two orders measured the same (24.2 vs 23.7 GB/s at Lk = 4096).
    ATTN_UNROLLED
    for (int m = 0; m < 4; ++m) {
      const T* km = k + m * k_stride;
      for (int64_t x = 0; x < full; x += N) {
        const VF kv = LoadVecAsF32(km + x);
        ATTN_UNROLLED
        for (int r = 0; r < NR; ++r) {
          acc[m][r] = hn::MulAdd(kv, hn::Load(d, qs + r * dkp + x), acc[m][r]);
        }
      }
    }
  } else {
    // More rows (up to 8; GQA-8) are compute-bound, K/V reused by
    // NR rows: each Q vector load feeds 4 FMAs, K in the interleaved order.
    for (int64_t x = 0; x < full; x += N) {
      VF kv[4];
      ATTN_UNROLLED
      for (int m = 0; m < 4; ++m) kv[m] = LoadVecAsF32(k + m * k_stride + x);
      ATTN_UNROLLED
      for (int r = 0; r < NR; ++r) {
        const VF qv = hn::Load(d, qs + r * dkp + x);
        ATTN_UNROLLED
        for (int m = 0; m < 4; ++m) acc[m][r] = hn::MulAdd(kv[m], qv, acc[m][r]);
      }
    }
  }
  if constexpr (std::is_same_v<T, float>) {  // reduced K: whole vectors only
    if (full < dk) {
      VF kv[4];
      ATTN_UNROLLED
      for (int m = 0; m < 4; ++m) kv[m] = LoadTail(k + m * k_stride + full, dk - full);
      ATTN_UNROLLED
      for (int r = 0; r < NR; ++r) {
        const VF qv = hn::Load(d, qs + r * dkp + full);
        ATTN_UNROLLED
        for (int m = 0; m < 4; ++m) acc[m][r] = hn::MulAdd(kv[m], qv, acc[m][r]);
      }
    }
  }
  StoreKeySums<NR>(acc, st, lds);
}

// The whole groups of 4 keys of every run x NR (1 or 2) rows whose whole Q
// (QV vectors: dk = QV·lanes) stays in registers across the tile's runs, so
// each K vector load feeds NR FMAs and nothing else is loaded
// (ScoreRowsFourKeys reloads Q: 5 loads per 4 FMAs at 4 rows); K in address
// order, as ScoreRowsFourKeys. A run's last keys % 4 keys are left to the
// caller (ScoreRunRemainders); with `prefetching`, each run's prefetch rows.
template <int QV, int NR, class T = float>
HWY_NOINLINE void ScoreRowsQResident(const float* HWY_RESTRICT qs, int64_t dkp, KeyRuns runs,
                                     int64_t k_stride, float* HWY_RESTRICT st, int64_t lds,
                                     bool prefetching) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  VF q[NR][QV];
  ATTN_UNROLLED
  for (int r = 0; r < NR; ++r) {
    ATTN_UNROLLED
    for (int v = 0; v < QV; ++v) q[r][v] = hn::Load(d, qs + r * dkp + v * N);
  }
  int64_t at = 0;  // the run's first key in the tile
  for (const KeyRun& run : runs) {
    const T* HWY_RESTRICT k = static_cast<const T*>(run.rows);
    const PrefetchRows& prefetch = prefetching ? run.ahead : PrefetchRows::None();
    const int64_t groups = run.keys / 4;
    for (int64_t g = 0; g < groups; ++g) {
      prefetch.Prefetch(4 * g, 4 * g + 4);
      const T* HWY_RESTRICT kg = k + 4 * g * k_stride;
      VF acc[4][NR];
      ATTN_UNROLLED
      for (int m = 0; m < 4; ++m) {
        ATTN_UNROLLED
        for (int r = 0; r < NR; ++r) acc[m][r] = hn::Zero(d);
        ATTN_UNROLLED
        for (int v = 0; v < QV; ++v) {
          const VF kv = LoadVecAsF32(kg + m * k_stride + v * N);
          ATTN_UNROLLED
          for (int r = 0; r < NR; ++r) acc[m][r] = hn::MulAdd(kv, q[r][v], acc[m][r]);
        }
      }
      StoreKeySums<NR>(acc, st + at + 4 * g, lds);
    }
    prefetch.Prefetch(4 * groups, prefetch.rows);
    at += run.keys;
  }
}

// The whole groups of 4 keys of every run x 4 rows with dk = 8 vectors in
// one pass over K: the whole Q would take all 32 registers, so the first 4
// vectors of each row's Q stay in registers (across the tile's runs) and the
// last 4 are loaded (from L1) once per key pair. Two passes of 2 rows with
// all of Q resident read each K tile twice, the second time from L2 with
// memory idle. Loads go key by key in address order: interleaving two keys'
// rows lost the hardware prefetcher (GQA-4 decode, Lk = 65536: 18 -> 14.5
// GB/s; in order 19 -> 21, from L3 at Lk = 4096 36 -> 47). A run's last
// keys % 4 keys are left to the caller (ScoreRunRemainders).
template <class T = float>
HWY_NOINLINE void ScoreFourRowsOnePass(const float* HWY_RESTRICT qs, int64_t dkp, KeyRuns runs,
                                       int64_t k_stride, float* HWY_RESTRICT st, int64_t lds) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  VF q[4][4];
  ATTN_UNROLLED
  for (int r = 0; r < 4; ++r) {
    ATTN_UNROLLED
    for (int v = 0; v < 4; ++v) q[r][v] = hn::Load(d, qs + r * dkp + v * N);
  }
  int64_t at = 0;  // the run's first key in the tile
  for (const KeyRun& run : runs) {
    const T* HWY_RESTRICT k = static_cast<const T*>(run.rows);
    const PrefetchRows& prefetch = run.ahead;
    const int64_t groups = run.keys / 4;
    for (int64_t g = 0; g < groups; ++g) {
      prefetch.Prefetch(4 * g, 4 * g + 4);
      VF pairs[2][4];
      ATTN_UNROLLED
      for (int pair = 0; pair < 2; ++pair) {
        const T* HWY_RESTRICT k0 = k + (4 * g + 2 * pair) * k_stride;
        const T* HWY_RESTRICT k1 = k0 + k_stride;
        VF acc[2][4];
        ATTN_UNROLLED
        for (int r = 0; r < 4; ++r) acc[0][r] = acc[1][r] = hn::Zero(d);
        ATTN_UNROLLED
        for (int m = 0; m < 2; ++m) {
          const T* HWY_RESTRICT km = m == 0 ? k0 : k1;
          ATTN_UNROLLED
          for (int v = 0; v < 4; ++v) {
            const VF x = LoadVecAsF32(km + v * N);
            ATTN_UNROLLED
            for (int r = 0; r < 4; ++r) acc[m][r] = hn::MulAdd(x, q[r][v], acc[m][r]);
          }
          ATTN_UNROLLED
          for (int v = 4; v < 8; ++v) {
            const VF x = LoadVecAsF32(km + v * N);
            ATTN_UNROLLED
            for (int r = 0; r < 4; ++r) {
              acc[m][r] = hn::MulAdd(x, hn::Load(d, qs + r * dkp + v * N), acc[m][r]);
            }
          }
        }
        ATTN_UNROLLED
        for (int r = 0; r < 4; ++r) pairs[pair][r] = PairSums(acc[0][r], acc[1][r]);
      }
      ATTN_UNROLLED
      for (int r = 0; r < 4; ++r) {
        StoreFourKeys(pairs[0][r], pairs[1][r], st + r * lds + at + 4 * g);
      }
    }
    prefetch.Prefetch(4 * groups, prefetch.rows);
    at += run.keys;
  }
}
#endif

// Keys [j0, nkeys) with ScoreRowsFourKeys, then the last nkeys % 4 keys one
// at a time (all of them on a single-lane target); prefetch rows from j0 on,
// the last ones (past nkeys) at the end.
template <class T = float>
HWY_INLINE void ScoreRowsFourKeysTile(const float* qs, int64_t dkp, int64_t nrows, const T* k,
                                      int64_t k_stride, int64_t nkeys, int64_t dk, float* st,
                                      int64_t lds, int64_t j0 = 0,
                                      const PrefetchRows& prefetch = {}) {
  int64_t j = j0;
#if HWY_TARGET != HWY_SCALAR
  for (; j + 4 <= nkeys; j += 4) {
    prefetch.Prefetch(j, j + 4);
    const T* kj = k + j * k_stride;
    for (int64_t r = 0; r < nrows; r += 4) {
      const float* q = qs + r * dkp;
      float* s = st + r * lds + j;
      switch (std::min<int64_t>(4, nrows - r)) {
        case 1:
          ScoreRowsFourKeys<1, T>(q, dkp, kj, k_stride, dk, s, lds);
          break;
        case 2:
          ScoreRowsFourKeys<2, T>(q, dkp, kj, k_stride, dk, s, lds);
          break;
        case 3:
          ScoreRowsFourKeys<3, T>(q, dkp, kj, k_stride, dk, s, lds);
          break;
        default:
          ScoreRowsFourKeys<4, T>(q, dkp, kj, k_stride, dk, s, lds);
          break;
      }
    }
  }
#endif
  for (; j < nkeys; ++j) {
    prefetch.Prefetch(j, j + 1);
    ScoreRowsOneKey<T>(qs, dkp, nrows, k + j * k_stride, dk, st + j, lds);
  }
  prefetch.Prefetch(nkeys, prefetch.rows);
}

// The last keys % 4 keys of each run, which the 4-key-group kernels leave
// (ScoreRowsFourKeysTile from the run's last whole group; their prefetch
// rows were issued with the run's).
template <class T = float>
HWY_INLINE void ScoreRunRemainders(const float* qs, int64_t dkp, int64_t nrows, KeyRuns runs,
                                   int64_t k_stride, int64_t dk, float* st, int64_t lds) {
  int64_t at = 0;
  for (const KeyRun& run : runs) {
    if (run.keys % 4 != 0) {
      ScoreRowsFourKeysTile<T>(qs, dkp, nrows, static_cast<const T*>(run.rows), k_stride, run.keys,
                               dk, st + at, lds, run.keys / 4 * 4);
    }
    at += run.keys;
  }
}

#if HWY_TARGET != HWY_SCALAR
// dk = 8 vectors: rows in pairs with ScoreRowsQResident (whole groups of 4
// keys; the first pair prefetches), the rest as ScoreRowsFourKeysTile.
template <class T = float>
HWY_INLINE void ScoreRowsQResidentRuns(const float* qs, int64_t dkp, int64_t nrows, KeyRuns runs,
                                       int64_t k_stride, int64_t dk, float* st, int64_t lds) {
  for (int64_t r = 0; r < nrows; r += 2) {
    if (nrows - r >= 2) {
      ScoreRowsQResident<8, 2, T>(qs + r * dkp, dkp, runs, k_stride, st + r * lds, lds, r == 0);
    } else {
      ScoreRowsQResident<8, 1, T>(qs + r * dkp, dkp, runs, k_stride, st + r * lds, lds, r == 0);
    }
  }
  ScoreRunRemainders<T>(qs, dkp, nrows, runs, k_stride, dk, st, lds);
}

template <class T = float>
HWY_INLINE void ScoreRowsQResidentTile(const float* qs, int64_t dkp, int64_t nrows, const T* k,
                                       int64_t k_stride, int64_t nkeys, int64_t dk, float* st,
                                       int64_t lds, const PrefetchRows& prefetch = {}) {
  const KeyRun run{k, nkeys, prefetch};
  ScoreRowsQResidentRuns<T>(qs, dkp, nrows, KeyRuns(&run, 1), k_stride, dk, st, lds);
}

// 4 rows, dk = 8 vectors: ScoreFourRowsOnePass over whole groups of 4 keys.
template <class T = float>
HWY_INLINE void ScoreFourRowsOnePassRuns(const float* qs, int64_t dkp, KeyRuns runs,
                                         int64_t k_stride, int64_t dk, float* st, int64_t lds) {
  ScoreFourRowsOnePass<T>(qs, dkp, runs, k_stride, st, lds);
  ScoreRunRemainders<T>(qs, dkp, 4, runs, k_stride, dk, st, lds);
}

template <class T = float>
HWY_INLINE void ScoreFourRowsOnePassTile(const float* qs, int64_t dkp, int64_t nrows, const T* k,
                                         int64_t k_stride, int64_t nkeys, int64_t dk, float* st,
                                         int64_t lds, const PrefetchRows& prefetch = {}) {
  (void)nrows;  // 4
  const KeyRun run{k, nkeys, prefetch};
  ScoreFourRowsOnePassRuns<T>(qs, dkp, KeyRuns(&run, 1), k_stride, dk, st, lds);
}
#else
// Vector-only kernels (ukernels.inc: kVectorTargets): never called here.
template <class T = float>
HWY_INLINE void ScoreRowsQResidentTile(const float*, int64_t, int64_t, const T*, int64_t, int64_t,
                                       int64_t, float*, int64_t, const PrefetchRows& = {}) {
  HWY_ABORT("ScoreRowsQResidentTile: not compiled for HWY_SCALAR");
}
template <class T = float>
HWY_INLINE void ScoreFourRowsOnePassTile(const float*, int64_t, int64_t, const T*, int64_t, int64_t,
                                         int64_t, float*, int64_t, const PrefetchRows& = {}) {
  HWY_ABORT("ScoreFourRowsOnePassTile: not compiled for HWY_SCALAR");
}
#endif

// The whole tile as runs (see the contract above; kernels/ukernels/
// key_runs.h): the Q-resident kernels where dk is 8 vectors (d = 128 on
// AVX-512, 64 on AVX2) and 2-4 rows, keeping Q in registers across the
// runs; the 4-key kernel run by run elsewhere. Row j of S is the tile's
// j-th key counting through the runs.
// K of type T (convert-inl.h, LoadVecAsF32) is read in place and converted
// in registers; a reduced K needs dk to be a whole number of vectors (an
// int8 K's scores come out unscaled).
template <class T = float>
HWY_INLINE void ScoreRowsRuns(const float* qs, int64_t dkp, int64_t nrows, KeyRuns runs,
                              int64_t k_stride, int64_t dk, float* st, int64_t lds) {
#if HWY_TARGET != HWY_SCALAR
  const int64_t N = static_cast<int64_t>(hn::Lanes(DF()));
  if (nrows >= 2 && nrows <= 4 && dk == 8 * N) {
    if (nrows == 4 && kZmmFile) {
      return ScoreFourRowsOnePassRuns<T>(qs, dkp, runs, k_stride, dk, st, lds);
    }
    return ScoreRowsQResidentRuns<T>(qs, dkp, nrows, runs, k_stride, dk, st, lds);
  }
#endif
  int64_t at = 0;
  for (const KeyRun& run : runs) {
    ScoreRowsFourKeysTile<T>(qs, dkp, nrows, static_cast<const T*>(run.rows), k_stride, run.keys,
                             dk, st + at, lds, 0, run.ahead);
    at += run.keys;
  }
}

// One run (a contiguous tile): the same kernels.
template <class T = float>
HWY_INLINE void ScoreRows(const float* qs, int64_t dkp, int64_t nrows, const T* k, int64_t k_stride,
                          int64_t nkeys, int64_t dk, float* st, int64_t lds,
                          const PrefetchRows& prefetch = {}) {
#if HWY_TARGET != HWY_SCALAR
  const int64_t N = static_cast<int64_t>(hn::Lanes(DF()));
  if (nrows >= 2 && nrows <= 4 && dk == 8 * N) {
    if (nrows == 4 && kZmmFile) {
      return ScoreFourRowsOnePassTile<T>(qs, dkp, nrows, k, k_stride, nkeys, dk, st, lds, prefetch);
    }
    return ScoreRowsQResidentTile<T>(qs, dkp, nrows, k, k_stride, nkeys, dk, st, lds, prefetch);
  }
#endif
  ScoreRowsFourKeysTile<T>(qs, dkp, nrows, k, k_stride, nkeys, dk, st, lds, 0, prefetch);
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace attn
HWY_AFTER_NAMESPACE();

#endif  // ATTNLAB_KERNELS_UKERNELS_SCORE_ROWS_INL_H_
