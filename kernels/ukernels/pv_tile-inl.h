// P·V: O rows (+)= Σ_j p[row][j]·V[j] over a tile of keys, for every variant
// that does its own P·V (flash per key tile, simd and the materializing
// fallbacks per row block).
//
// Contract (PvTile, the whole-vector form flash uses):
//   p    weights: row m, key j at p[j·pj + m·pm] (flash's Sᵀ: pj = 64,
//        pm = 1; its few-row S: pj = 1, pm = row stride).
//   v    nkeys value rows, `vs` floats apart, each `nvec` whole vectors long
//        (read with unaligned loads: V is used in place when dv is a
//        multiple of the vector length).
//   o    nrows rows of nvec vectors, `ldo` floats apart; overwritten, or
//        added to when `accumulate`.
//   prefetch  rows to bring into L2 along the way, row j beside key j (or
//        none), on the first pass over V: flash passes the next block of a
//        paged cache.
// PvRowsRuns takes the V rows as runs (kernels/ukernels/key_runs.h, one vs
// for all; key j of p counts through the runs): a paged cache's tile, the
// decode kernels keeping O in registers across its blocks.
// Contract (PvRows, any width, the materializing variants): p row-major
// (p[r·ldp + j]), dv any width (the last dv % lanes columns as blocked
// scalar sums), o overwritten.
// Accumulation (kernels/problem.h): keys are summed in blocks of kKeySumBlock
// from zero, and each block's sums are added to O, never accumulated onto O
// key by key (a running fp32 sum stops growing at 2^24 keys).
//
// Register blocks: 6 rows x 4 vectors = 24 accumulators (+ 4 V loads + 1
// broadcast); per key 4 V loads and 6 broadcasts feed 24 FMAs; with 16
// registers 6 rows x 2 vectors (kTileVectors), keys in L1-sized chunks
// (kPvKeyChunk) and flash's weights at constant offsets (kUnitPm). Decode (1-3
// rows of 8 vectors, dv = 128 on AVX-512) keeps every column of a row in
// registers so V, streamed from memory, is read in one pass; 4 rows of 8
// vectors (PvFourRowsOnePass, AVX-512) keep rows 0-2 in 24 registers and row
// 3 in L1.
#if defined(ATTNLAB_KERNELS_UKERNELS_PV_TILE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNLAB_KERNELS_UKERNELS_PV_TILE_INL_H_
#undef ATTNLAB_KERNELS_UKERNELS_PV_TILE_INL_H_
#else
#define ATTNLAB_KERNELS_UKERNELS_PV_TILE_INL_H_
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "hwy/highway.h"
#include "kernels/problem.h"  // kKeySumBlock
#include "kernels/ukernels/common-inl.h"
#include "kernels/ukernels/convert-inl.h"
#include "kernels/ukernels/key_runs.h"

HWY_BEFORE_NAMESPACE();
namespace attn {
namespace HWY_NAMESPACE {

// MR x NV accumulators set to zero.
template <int MR, int NV>
HWY_INLINE void ZeroRows(VF (&acc)[MR][NV]) {
  ATTN_UNROLLED
  for (int m = 0; m < MR; ++m) {
    ATTN_UNROLLED
    for (int c = 0; c < NV; ++c) acc[m][c] = hn::Zero(DF());
  }
}

// O rows (ldo floats apart) = acc, or += acc when `add`.
template <int MR, int NV>
HWY_INLINE void StoreRows(const VF (&acc)[MR][NV], bool add, float* HWY_RESTRICT o, int64_t ldo) {
  const DF d;
  const size_t N = hn::Lanes(d);
  ATTN_UNROLLED
  for (int m = 0; m < MR; ++m) {
    ATTN_UNROLLED
    for (int c = 0; c < NV; ++c) {
      float* out = o + m * ldo + c * N;
      hn::StoreU(add ? hn::Add(acc[m][c], hn::LoadU(d, out)) : acc[m][c], d, out);
    }
  }
}

// O[m][v·N..] (+)= Σ_j P[j·pj + m·pm] · V[j·vs + v·N..] for MR rows x NV
// vectors wider than tall (decode: 1-3 rows of 8 vectors), keys as runs
// (kernels/ukernels/key_runs.h; at most kKeySumBlock in all, summed from
// zero and added to O once): every column of a row in registers across the
// runs, so V, streamed from memory, is read in one pass. Per key the MR
// broadcasts, then one V vector at a time, so the operands take MR + 1
// registers, not NV + 1 (3 x 8: 24 accumulators + 9 did not fit 32, and gcc
// moved accumulators to the stack). Not unrolled: two keys per iteration
// read 0.98-1.14x the decode time, no gain.
template <int MR, int NV, bool kAccumulate, class T = float>
HWY_NOINLINE void PvRowsResident(const float* HWY_RESTRICT p, int64_t pj, int64_t pm, KeyRuns runs,
                                 int64_t vs, float* HWY_RESTRICT o, int64_t ldo) {
  const DF d;
  const size_t N = hn::Lanes(d);
  VF acc[MR][NV];
  ZeroRows(acc);
  // Each row's weights from its own pointer at one running offset (see
  // PvTileKernel), and a run's key loop twice, with and without prefetch.
  const float* HWY_RESTRICT row[MR];
  ATTN_UNROLLED
  for (int m = 0; m < MR; ++m) row[m] = p + m * pm;
  int64_t at = 0;  // offset of the run's first key's weights
  for (const KeyRun& run : runs) {
    const T* HWY_RESTRICT v = static_cast<const T*>(run.rows);
    const PrefetchRows& prefetch = run.ahead;
    auto keys = [&](auto prefetching) HWY_ATTR {
      int64_t off = at;
      for (int64_t j = 0; j < run.keys; ++j, off += pj) {
        if constexpr (decltype(prefetching)::value) prefetch.Prefetch(j, j + 1);
        VF pv[MR];
        ATTN_UNROLLED
        for (int m = 0; m < MR; ++m) pv[m] = hn::Set(d, row[m][off]);
        ATTN_UNROLLED
        for (int c = 0; c < NV; ++c) {
          const VF x = LoadVecAsF32(v + j * vs + c * N);
          ATTN_UNROLLED
          for (int m = 0; m < MR; ++m) acc[m][c] = hn::MulAdd(pv[m], x, acc[m][c]);
        }
      }
    };
    if (prefetch.rows > 0) {
      keys(std::true_type());
    } else {
      keys(std::false_type());
    }
    prefetch.Prefetch(run.keys, prefetch.rows);
    at += run.keys * pj;
  }
  StoreRows(acc, kAccumulate, o, ldo);
}

// O[m][v·N..] (+)= Σ_j P[j·pj + m·pm] · V[j·vs + v·N..] for MR rows x NV
// vectors, keys in blocks of kKeySumBlock. `kAccumulate` is a template
// argument: with a run-time choice between zeroing and loading O, gcc kept
// the accumulators in a stack copy (24 stores + 48 loads per call).
// kUnitPm: pm is 1 (flash's Sᵀ, a key's weights side by side), so the
// broadcasts sit at fixed offsets from one pointer.
template <int MR, int NV, bool kAccumulate, class T = float, bool kUnitPm = false>
HWY_NOINLINE void PvTileKernel(const float* HWY_RESTRICT p, int64_t pj, int64_t pm,
                               const T* HWY_RESTRICT v, int64_t vs, int64_t nkeys,
                               float* HWY_RESTRICT o, int64_t ldo,
                               const PrefetchRows& prefetch = {}) {
  if constexpr (NV > MR) {
    // Wider than tall: PvRowsResident, one key-sum block at a time.
    for (int64_t j0 = 0; j0 < std::max<int64_t>(nkeys, 1); j0 += kKeySumBlock) {
      const int64_t n = std::max<int64_t>(0, std::min(kKeySumBlock, nkeys - j0));
      PrefetchRows ahead = prefetch.From(j0);
      // The next block prefetches its own rows.
      if (j0 + n < nkeys) ahead.rows = std::min(ahead.rows, n);
      const KeyRun run{v + j0 * vs, n, ahead};
      if (kAccumulate || j0 > 0) {
        PvRowsResident<MR, NV, true, T>(p + j0 * pj, pj, pm, KeyRuns(&run, 1), vs, o, ldo);
      } else {
        PvRowsResident<MR, NV, false, T>(p + j0 * pj, pj, pm, KeyRuns(&run, 1), vs, o, ldo);
      }
    }
    return;
  }
  const DF d;
  const size_t N = hn::Lanes(d);
  if (nkeys < 1) {  // no keys: O = 0 (or unchanged); also keeps acc in registers
    for (int m = 0; m < MR && !kAccumulate; ++m) {
      ATTN_UNROLLED
      for (int c = 0; c < NV; ++c) hn::StoreU(hn::Zero(d), d, o + m * ldo + c * N);
    }
    return;
  }
  for (int64_t j0 = 0; j0 < nkeys; j0 += kKeySumBlock) {
    const int64_t j1 = std::min(nkeys, j0 + kKeySumBlock);
    VF acc[MR][NV];
    ZeroRows(acc);
    // Each row's weights from its own pointer at one running offset, and
    // the key loop twice, with and without the prefetch (most calls, every
    // register block of a flash tile but its first, prefetch nothing): with
    // p[j·pj + m·pm] and the check in the loop, gcc kept the offsets m·pm on
    // the stack (AVX2: 5 reloads per key beside the 8 operand loads, for 12
    // FMAs; flash's P·V ran at 0.46-0.51 of the FMA peak on Zen 3).
    const float* HWY_RESTRICT row[MR];
    ATTN_UNROLLED
    for (int m = 0; m < MR; ++m) row[m] = p + m * (kUnitPm ? 1 : pm);
    auto keys = [&](auto prefetching) HWY_ATTR {
      // Per key its NV vectors of V, then one broadcast per row; two keys
      // per iteration (flash's blocks: see ScoreTileKernel).
      int64_t at = j0 * pj;
      HWY_UNROLL(2)
      for (int64_t j = j0; j < j1; ++j, at += pj) {
        if constexpr (decltype(prefetching)::value) prefetch.Prefetch(j, j + 1);
        VF x[NV];
        ATTN_UNROLLED
        for (int c = 0; c < NV; ++c) x[c] = LoadVecAsF32(v + j * vs + c * N);
        ATTN_UNROLLED
        for (int m = 0; m < MR; ++m) {
          const VF pv = hn::Set(d, row[m][at]);
          ATTN_UNROLLED
          for (int c = 0; c < NV; ++c) acc[m][c] = hn::MulAdd(pv, x[c], acc[m][c]);
        }
      }
    };
    if (prefetch.rows > j0) {
      keys(std::true_type());
    } else {
      keys(std::false_type());
    }
    StoreRows(acc, kAccumulate || j0 > 0, o, ldo);
  }
  prefetch.Prefetch(nkeys, prefetch.rows);
}

template <int MR, int NV, class T = float>
HWY_INLINE void PvTileRows(const float* p, int64_t pj, int64_t pm, const T* v, int64_t vs,
                           int64_t nkeys, bool accumulate, float* o, int64_t ldo,
                           const PrefetchRows& prefetch = {}) {
  // flash's tiles (pm = 1) with constant offsets: one pointer step per key
  // instead of MR (AVX2, 6 x 2 block: 24 instead of 29 instructions per 12
  // FMAs; the 4-row block that ends a 64-row tile took a fifth of P·V's time
  // with 4 pointers).
  if constexpr (NV == kTileVectors) {
    if (pm == 1) {
      if (accumulate) {
        return PvTileKernel<MR, NV, true, T, true>(p, pj, 1, v, vs, nkeys, o, ldo, prefetch);
      }
      return PvTileKernel<MR, NV, false, T, true>(p, pj, 1, v, vs, nkeys, o, ldo, prefetch);
    }
  }
  if (accumulate) return PvTileKernel<MR, NV, true, T>(p, pj, pm, v, vs, nkeys, o, ldo, prefetch);
  PvTileKernel<MR, NV, false, T>(p, pj, pm, v, vs, nkeys, o, ldo, prefetch);
}

template <int MR, class T = float>
HWY_INLINE void PvTileVectors(int nv, const float* p, int64_t pj, int64_t pm, const T* v,
                              int64_t vs, int64_t nkeys, bool accumulate, float* o, int64_t ldo,
                              const PrefetchRows& prefetch = {}) {
  switch (nv) {
    case 1:
      return PvTileRows<MR, 1, T>(p, pj, pm, v, vs, nkeys, accumulate, o, ldo, prefetch);
    case 2:
      return PvTileRows<MR, 2, T>(p, pj, pm, v, vs, nkeys, accumulate, o, ldo, prefetch);
    case 3:
      return PvTileRows<MR, 3, T>(p, pj, pm, v, vs, nkeys, accumulate, o, ldo, prefetch);
    default:
      return PvTileRows<MR, 4, T>(p, pj, pm, v, vs, nkeys, accumulate, o, ldo, prefetch);
  }
}

#if HWY_TARGET != HWY_SCALAR
// O[0..4) (+)= P·V for 4 rows and 8 vectors (dv = 128 on AVX-512) in one pass
// over V, key by key in address order: rows 0-2 of O in 24 registers, row 3
// in L1 (read and written once per key), since all of O would take all 32
// registers. Two passes over column halves (4 x 4 vectors each) read every
// V row twice; a variant with half of every O row in L1 moved 16 values
// through L1 per key and lost 15%. With the one-pass scores, GQA-4 decode,
// 1 thread: Lk = 16384 27 -> 35 GB/s, 65536 20 -> 24.7 (stream 28.6).
// nkeys <= kKeySumBlock (one flash tile).
template <bool kAccumulate, class T = float>
HWY_NOINLINE void PvFourRowsOnePass(const float* HWY_RESTRICT p, int64_t pj, int64_t pm,
                                    KeyRuns runs, int64_t vs, float* HWY_RESTRICT o, int64_t ldo) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  // Row 3's tile sums, in L1, added to O at the end like the others.
  alignas(64) float o3[8 * 16];
  VF acc[3][8];
  ATTN_UNROLLED
  for (int c = 0; c < 8; ++c) {
    ATTN_UNROLLED
    for (int r = 0; r < 3; ++r) acc[r][c] = hn::Zero(d);
    hn::Store(hn::Zero(d), d, o3 + c * N);
  }
  const float* HWY_RESTRICT pk = p;  // the weights of the run's first key
  for (const KeyRun& run : runs) {
    const T* HWY_RESTRICT v = static_cast<const T*>(run.rows);
    const PrefetchRows& prefetch = run.ahead;
    for (int64_t j = 0; j < run.keys; ++j) {
      prefetch.Prefetch(j, j + 1);
      const T* HWY_RESTRICT x = v + j * vs;
      VF pr[4];
      ATTN_UNROLLED
      for (int r = 0; r < 4; ++r) pr[r] = hn::Set(d, pk[j * pj + r * pm]);
      ATTN_UNROLLED
      for (int c = 0; c < 8; ++c) {
        const VF xv = LoadVecAsF32(x + c * N);
        ATTN_UNROLLED
        for (int r = 0; r < 3; ++r) acc[r][c] = hn::MulAdd(pr[r], xv, acc[r][c]);
        hn::Store(hn::MulAdd(pr[3], xv, hn::Load(d, o3 + c * N)), d, o3 + c * N);
      }
    }
    prefetch.Prefetch(run.keys, prefetch.rows);
    pk += run.keys * pj;
  }
  auto add_to_o = [&](int r, int c, VF sum) {
    float* out = o + r * ldo + c * N;
    hn::StoreU(kAccumulate ? hn::Add(sum, hn::LoadU(d, out)) : sum, d, out);
  };
  ATTN_UNROLLED
  for (int c = 0; c < 8; ++c) {
    ATTN_UNROLLED
    for (int r = 0; r < 3; ++r) add_to_o(r, c, acc[r][c]);
    add_to_o(3, c, hn::Load(d, o3 + c * N));
  }
}

// The family form (4 rows, 8 vectors; one run).
template <class T = float>
HWY_INLINE void PvFourRowsOnePassTile(const float* p, int64_t pj, int64_t pm, const T* v,
                                      int64_t vs, int64_t nkeys, int64_t nrows, int64_t nvec,
                                      bool accumulate, float* o, int64_t ldo,
                                      const PrefetchRows& prefetch = {}) {
  (void)nrows, (void)nvec;  // 4, 8
  const KeyRun run{v, nkeys, prefetch};
  if (accumulate) return PvFourRowsOnePass<true, T>(p, pj, pm, KeyRuns(&run, 1), vs, o, ldo);
  PvFourRowsOnePass<false, T>(p, pj, pm, KeyRuns(&run, 1), vs, o, ldo);
}
#else
// A vector-only kernel (ukernels.inc: kVectorTargets): never called here.
template <class T = float>
HWY_INLINE void PvFourRowsOnePassTile(const float*, int64_t, int64_t, const T*, int64_t, int64_t,
                                      int64_t, int64_t, bool, float*, int64_t,
                                      const PrefetchRows& = {}) {
  HWY_ABORT("PvFourRowsOnePassTile: not compiled for HWY_SCALAR");
}
#endif

// Keys per pass of PvTile's register blocks over a tile (16 registers): a
// chunk's weights for 64 rows (16 KiB) and one column strip of its V rows
// (4 KiB) stay in a 32 KiB L1 while every register block reads them, where
// a whole 512-key tile's strip and weights (64 KiB) came from L2 for each
// 6-row block. With 32 registers the 6 x 4 blocks do 2x the FMAs per byte
// (Zen 4: one 512-bit FMA per cycle, 0.9 of the peak without chunks): one
// pass, up to the kKeySumBlock of the accumulation rule.
inline constexpr int64_t kPvKeyChunk = kVecRegisters == 32 ? kKeySumBlock : 64;

// One column strip of PvTile (nv <= kTileVectors vectors) over all rows: 6-row
// register blocks, then the 1-5 rows left.
template <class T = float>
HWY_INLINE void PvTileStrip(int nv, const float* p, int64_t pj, int64_t pm, const T* v, int64_t vs,
                            int64_t nkeys, int64_t nrows, bool accumulate, float* o, int64_t ldo,
                            const PrefetchRows& prefetch) {
  constexpr int kMR = 6;
  const PrefetchRows none;
  int64_t r = 0;
  for (; r + kMR <= nrows; r += kMR) {
    PvTileVectors<kMR, T>(nv, p + r * pm, pj, pm, v, vs, nkeys, accumulate, o + r * ldo, ldo,
                          r == 0 ? prefetch : none);
  }
  const float* pr = p + r * pm;
  const T* vc = v;
  float* out = o + r * ldo;
  const PrefetchRows& pf = r == 0 ? prefetch : none;
  switch (nrows - r) {
    case 1:
      PvTileVectors<1, T>(nv, pr, pj, pm, vc, vs, nkeys, accumulate, out, ldo, pf);
      break;
    case 2:
      PvTileVectors<2, T>(nv, pr, pj, pm, vc, vs, nkeys, accumulate, out, ldo, pf);
      break;
    case 3:
      PvTileVectors<3, T>(nv, pr, pj, pm, vc, vs, nkeys, accumulate, out, ldo, pf);
      break;
    case 4:
      PvTileVectors<4, T>(nv, pr, pj, pm, vc, vs, nkeys, accumulate, out, ldo, pf);
      break;
    case 5:
      PvTileVectors<5, T>(nv, pr, pj, pm, vc, vs, nkeys, accumulate, out, ldo, pf);
      break;
    default:
      break;
  }
}

// The whole-vector form (see the contract above): nrows rows of nvec vectors.
// V of type T (convert-inl.h, LoadVecAsF32) is read in place and converted
// in registers (an int8 V's rows unscaled: the caller folds each row's scale
// into its weights).
template <class T = float>
HWY_INLINE void PvTile(const float* p, int64_t pj, int64_t pm, const T* v, int64_t vs,
                       int64_t nkeys, int64_t nrows, int64_t nvec, bool accumulate, float* o,
                       int64_t ldo, const PrefetchRows& prefetch = {}) {
  constexpr int kMR = 6, kNV = kTileVectors;
  const int64_t N = static_cast<int64_t>(hn::Lanes(DF()));
  // Few rows (decode): every column vector of a row in registers (up to 3
  // rows x 8 vectors), so the V tile, which comes from memory, is read in one
  // pass instead of one pass per 4 columns (MHA decode from DRAM, d = 128, V
  // read in place: 16.9 -> 20.6 GB/s).
  if (nvec == 2 * kNV && nrows * nvec <= kMR * kNV) {
    switch (nrows) {
      case 1:
        return PvTileRows<1, 2 * kNV, T>(p, pj, pm, v, vs, nkeys, accumulate, o, ldo, prefetch);
      case 2:
        return PvTileRows<2, 2 * kNV, T>(p, pj, pm, v, vs, nkeys, accumulate, o, ldo, prefetch);
      default:
        return PvTileRows<3, 2 * kNV, T>(p, pj, pm, v, vs, nkeys, accumulate, o, ldo, prefetch);
    }
  }
#if HWY_TARGET != HWY_SCALAR
  if (nvec == 2 * kNV && nrows == 4 && kZmmFile && nkeys <= kKeySumBlock) {
    return PvFourRowsOnePassTile<T>(p, pj, pm, v, vs, nkeys, nrows, nvec, accumulate, o, ldo,
                                    prefetch);
  }
#endif
  // Keys in chunks of kPvKeyChunk, each chunk's sums added to O; in a chunk
  // the register blocks go column strip by column strip, rows inside. The
  // first register block's pass over a chunk prefetches (the others read V
  // again, from cache). It is given all the rows from the chunk on, so each
  // chunk prefetches its own rows and then again every row after it, to the
  // end of what the caller passed: on decode, the rest of the tile's V and
  // the distance beyond, re-requested every chunk. That repetition is
  // measured, not an accident to tidy: on Zen 3 (AVX2, 64-key chunks),
  // limiting each chunk to its own rows made contiguous GQA-4 decode
  // 1.12-1.32x slower (Lk = 16384-65536, d = 128; MHA 1.00-1.07), whether
  // the rest of the tile was then prefetched once or not at all
  // (kernels/DESIGN.md, "Repeated prefetches"; flash repeats it for paged
  // decode: PrefetchTileValues).
  // (No keys: one pass with none, which sets O = 0 unless accumulating.)
  const PrefetchRows none;
  for (int64_t j0 = 0; j0 < std::max<int64_t>(nkeys, 1); j0 += kPvKeyChunk) {
    const int64_t chunk = std::min(kPvKeyChunk, nkeys - j0);
    const bool add = accumulate || j0 > 0;
    const PrefetchRows first = prefetch.From(j0);
    for (int64_t c0 = 0; c0 < nvec; c0 += kNV) {
      PvTileStrip<T>(static_cast<int>(std::min<int64_t>(kNV, nvec - c0)), p + j0 * pj, pj, pm,
                     v + j0 * vs + c0 * N, vs, chunk, nrows, add, o + c0 * N, ldo,
                     c0 == 0 ? first : none);
    }
  }
}

// O (+)= P·V over a tile whose V rows are runs (kernels/ukernels/key_runs.h;
// weights as PvTile's, key j of the tile counting through the runs): the
// decode kernels that keep O in registers (PvRowsResident, 1-3 rows x 8
// vectors; PvFourRowsOnePass, 4 rows on AVX-512) take all the runs in one
// call when they hold at most kKeySumBlock keys; anything else goes run by
// run through PvTile, each run's sums added to O.
// Whether PvRowsRuns takes nrows rows of nvec vectors' runs (up to
// kKeySumBlock keys) in one call on this target.
HWY_INLINE bool PvRowsRunsInOneCall(int64_t nrows, int64_t nvec) {
  return nvec == 2 * kTileVectors && (nrows <= 3 || (kZmmFile && nrows == 4));
}

template <class T = float>
HWY_INLINE void PvRowsRuns(const float* p, int64_t pj, int64_t pm, KeyRuns runs, int64_t vs,
                           int64_t nrows, int64_t nvec, bool accumulate, float* o, int64_t ldo) {
  constexpr int kNV = kTileVectors;
  if (PvRowsRunsInOneCall(nrows, nvec) && RunKeys(runs) <= kKeySumBlock) {
    auto resident = [&](auto rows) HWY_ATTR {
      constexpr int kRows = decltype(rows)::value;
      if (accumulate) return PvRowsResident<kRows, 2 * kNV, true, T>(p, pj, pm, runs, vs, o, ldo);
      PvRowsResident<kRows, 2 * kNV, false, T>(p, pj, pm, runs, vs, o, ldo);
    };
    if (nrows <= 3) {
      switch (nrows) {
        case 1:
          return resident(std::integral_constant<int, 1>());
        case 2:
          return resident(std::integral_constant<int, 2>());
        default:
          return resident(std::integral_constant<int, 3>());
      }
    }
#if HWY_TARGET != HWY_SCALAR
    if (nrows == 4 && kZmmFile) {
      if (accumulate) return PvFourRowsOnePass<true, T>(p, pj, pm, runs, vs, o, ldo);
      return PvFourRowsOnePass<false, T>(p, pj, pm, runs, vs, o, ldo);
    }
#endif
  }
  if (runs.empty()) {  // no keys: O = 0 unless accumulating
    return PvTile<T>(p, pj, pm, static_cast<const T*>(nullptr), vs, 0, nrows, nvec, accumulate, o,
                     ldo);
  }
  int64_t at = 0;
  for (const KeyRun& run : runs) {
    PvTile<T>(p + at * pj, pj, pm, static_cast<const T*>(run.rows), vs, run.keys, nrows, nvec,
              accumulate || at > 0, o, ldo, run.ahead);
    at += run.keys;
  }
}

// R rows of any width dv (see the contract above): vector columns in
// register tiles of R x NV (NV = 4 where R x 4 accumulators fit 32
// registers, else 2), then single vectors, then the last dv % lanes columns
// as scalar sums, blocked like the rest.
template <int R>
HWY_INLINE void PvRowsOfWidth(const float* HWY_RESTRICT p, int64_t ldp, const float* HWY_RESTRICT v,
                              int64_t ldv, int64_t nkeys, int64_t dv, float* HWY_RESTRICT o,
                              int64_t ldo) {
  const DF d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  constexpr int kNV = (kVecRegisters >= 32 && R <= 4) ? 4 : 2;
  int64_t c = 0;
  for (; c + kNV * lanes <= dv; c += kNV * lanes) {
    PvTileKernel<R, kNV, false>(p, 1, ldp, v + c, ldv, nkeys, o + c, ldo);
  }
  for (; c + lanes <= dv; c += lanes)
    PvTileKernel<R, 1, false>(p, 1, ldp, v + c, ldv, nkeys, o + c, ldo);
  for (; c < dv; ++c) {
    for (int r = 0; r < R; ++r) {
      float sum = 0.0f;
      for (int64_t j0 = 0; j0 < nkeys; j0 += kKeySumBlock) {
        float block = 0.0f;
        for (int64_t j = j0; j < std::min(nkeys, j0 + kKeySumBlock); ++j) {
          block += p[r * ldp + j] * v[j * ldv + c];
        }
        sum += block;
      }
      o[r * ldo + c] = sum;
    }
  }
}

HWY_INLINE void PvRows(const float* HWY_RESTRICT p, int64_t ldp, int64_t rows,
                       const float* HWY_RESTRICT v, int64_t ldv, int64_t nkeys, int64_t dv,
                       float* HWY_RESTRICT o, int64_t ldo) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4)
    PvRowsOfWidth<4>(p + r * ldp, ldp, v, ldv, nkeys, dv, o + r * ldo, ldo);
  for (; r + 2 <= rows; r += 2)
    PvRowsOfWidth<2>(p + r * ldp, ldp, v, ldv, nkeys, dv, o + r * ldo, ldo);
  for (; r < rows; ++r) PvRowsOfWidth<1>(p + r * ldp, ldp, v, ldv, nkeys, dv, o + r * ldo, ldo);
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace attn
HWY_AFTER_NAMESPACE();

#endif  // ATTNLAB_KERNELS_UKERNELS_PV_TILE_INL_H_
