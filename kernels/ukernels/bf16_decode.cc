// AVX512_BF16 decode micro-kernels (bf16_decode.h): intrinsics in functions
// compiled for AVX512F/BW/DQ/VL/BF16 by target attribute, reached only after
// CPUID says the CPU has them (as bf16_avx512.cc).
#include "kernels/ukernels/bf16_decode.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include <algorithm>

#include "kernels/ukernels/bf16_avx512.h"  // CpuHasAvx512Bf16
#include "kernels/ukernels/decode_pairs.h"

// gcc 12's avx512fintrin.h passes an undefined vector as the pass-through
// operand of unmasked conversions (see bf16_avx512.cc): a false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#define ATTN_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))
// Loops over register arrays, fully unrolled so that gcc keeps the arrays
// in registers (without it, PvChunk spilled its accumulators every step).
#define ATTN_UNROLL _Pragma("GCC unroll 32")

namespace attn::ukernels {
namespace {

// --- Scores --------------------------------------------------------------------

// Per 128-bit block, the lane sums of keys a and b interleaved: (a, b, a, b).
ATTN_BF16_TARGET inline __m512 PairSums(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
}

// st[0..4) = scale·(the dot products of keys 0-3) from PairSums of keys
// (0, 1) and (2, 3): a 64-bit interleave leaves (0, 1, 2, 3) in each 128-bit
// block, and the four blocks' sum is the four dot products.
ATTN_BF16_TARGET inline void StoreFourKeys(__m512 t01, __m512 t23, __m128 scale, float* st) {
  const __m512d a = _mm512_castps_pd(t01), b = _mm512_castps_pd(t23);
  const __m512 blocks = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                                      _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  const __m256 half =
      _mm256_add_ps(_mm512_castps512_ps256(blocks), _mm512_extractf32x8_ps(blocks, 1));
  const __m128 sums = _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
  _mm_storeu_ps(st, _mm_mul_ps(sums, scale));
}

// NR rows x QC vectors of 32 bf16 (dk = 32·QC), Q in registers; 4 keys at
// a time as two pairs (2 x NR accumulators each), key by key in address
// order, then the last nkeys % 4 keys one at a time.
template <int NR, int QC>
ATTN_BF16_TARGET void ScoreRowsOf(const uint16_t* qw, const uint16_t* k, int64_t k_stride,
                                  int64_t nkeys, float scale, float* st, int64_t lds,
                                  const PrefetchRows& prefetch) {
  constexpr int64_t kDk = 32 * QC;
  __m512bh q[NR][QC];
  ATTN_UNROLL
  for (int r = 0; r < NR; ++r) {
    ATTN_UNROLL
    for (int c = 0; c < QC; ++c) q[r][c] = (__m512bh)_mm512_load_si512(qw + r * kDk + 32 * c);
  }
  const __m128 vscale = _mm_set1_ps(scale);
  int64_t j = 0;
  for (; j + 4 <= nkeys; j += 4) {
    prefetch.Prefetch(j, j + 4);
    __m512 pairs[2][NR];
    ATTN_UNROLL
    for (int h = 0; h < 2; ++h) {
      __m512 acc[2][NR];
      ATTN_UNROLL
      for (int m = 0; m < 2; ++m) {
        ATTN_UNROLL
        for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_ps();
      }
      ATTN_UNROLL
      for (int m = 0; m < 2; ++m) {
        const uint16_t* km = k + (j + 2 * h + m) * k_stride;
        ATTN_UNROLL
        for (int c = 0; c < QC; ++c) {
          const __m512bh kv = (__m512bh)_mm512_loadu_si512(km + 32 * c);
          ATTN_UNROLL
          for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], kv, q[r][c]);
        }
      }
      ATTN_UNROLL
      for (int r = 0; r < NR; ++r) pairs[h][r] = PairSums(acc[0][r], acc[1][r]);
    }
    ATTN_UNROLL
    for (int r = 0; r < NR; ++r) StoreFourKeys(pairs[0][r], pairs[1][r], vscale, st + r * lds + j);
  }
  for (; j < nkeys; ++j) {
    prefetch.Prefetch(j, j + 1);
    __m512 acc[NR];
    ATTN_UNROLL
    for (int r = 0; r < NR; ++r) acc[r] = _mm512_setzero_ps();
    ATTN_UNROLL
    for (int c = 0; c < QC; ++c) {
      const __m512bh kv = (__m512bh)_mm512_loadu_si512(k + j * k_stride + 32 * c);
      ATTN_UNROLL
      for (int r = 0; r < NR; ++r) acc[r] = _mm512_dpbf16_ps(acc[r], kv, q[r][c]);
    }
    ATTN_UNROLL
    for (int r = 0; r < NR; ++r) st[r * lds + j] = scale * _mm512_reduce_add_ps(acc[r]);
  }
  prefetch.Prefetch(nkeys, prefetch.rows);
}

template <int NR>
ATTN_BF16_TARGET void ScoreRowsDk(const uint16_t* qw, const uint16_t* k, int64_t k_stride,
                                  int64_t nkeys, int64_t dk, float scale, float* st, int64_t lds,
                                  const PrefetchRows& prefetch) {
  switch (dk / 32) {
    case 1:
      return ScoreRowsOf<NR, 1>(qw, k, k_stride, nkeys, scale, st, lds, prefetch);
    case 2:
      return ScoreRowsOf<NR, 2>(qw, k, k_stride, nkeys, scale, st, lds, prefetch);
    case 3:
      return ScoreRowsOf<NR, 3>(qw, k, k_stride, nkeys, scale, st, lds, prefetch);
    default:
      return ScoreRowsOf<NR, 4>(qw, k, k_stride, nkeys, scale, st, lds, prefetch);
  }
}

ATTN_BF16_TARGET void ScoreRows(const uint16_t* qw, int64_t nrows, const uint16_t* k,
                                int64_t k_stride, int64_t nkeys, int64_t dk, float scale, float* st,
                                int64_t lds, const PrefetchRows& prefetch) {
  switch (nrows) {
    case 1:
      return ScoreRowsDk<1>(qw, k, k_stride, nkeys, dk, scale, st, lds, prefetch);
    case 2:
      return ScoreRowsDk<2>(qw, k, k_stride, nkeys, dk, scale, st, lds, prefetch);
    case 3:
      return ScoreRowsDk<3>(qw, k, k_stride, nkeys, dk, scale, st, lds, prefetch);
    default:
      return ScoreRowsDk<4>(qw, k, k_stride, nkeys, dk, scale, st, lds, prefetch);
  }
}

// --- P·V -----------------------------------------------------------------------

// The most keys a call takes (a flash tile is at most 512).
constexpr int64_t kMaxKeys = 1024;
// The widest column block: 4 pieces of 32 columns, 8 accumulators a row.
constexpr int kMaxPieces = 4;

// A row's weights of n keys as bf16 pairs, pr[i] = (P[2i], P[2i+1]) rounded
// to nearest even, 0 past n: 32 keys (one VCVTNE2PS2BF16) at a time.
ATTN_BF16_TARGET inline void PairWeights(const float* p, int64_t n, uint32_t* pr) {
  for (int64_t j = 0; j < n; j += 32) {
    const int64_t lo = std::min<int64_t>(n - j, 16), hi = std::clamp<int64_t>(n - j - 16, 0, 16);
    const __m512 a = _mm512_maskz_loadu_ps(__mmask16((1u << lo) - 1), p + j);
    const __m512 b = _mm512_maskz_loadu_ps(__mmask16((1u << hi) - 1), p + j + 16);
    _mm512_store_si512(pr + j / 2, (__m512i)_mm512_cvtne2ps_pbh(b, a));
  }
}

// Zeros: the second V row of a chunk's odd last key.
alignas(64) const uint16_t kZeroRow[kBf16DecodeMaxDv] = {};

// Keys 2i and 2i + 1 (rows v0 and v1: kZeroRow after an odd last key) for NR rows x H
// pieces of 32 columns: VPUNPCKLWD/HWD pair the rows' words per 128-bit lane,
// so the first vector of piece h holds its columns {0-3, 8-11, 16-19,
// 24-27} and the second the rest (PutPairColumnsInOrder undoes it).
template <int NR, int H>
ATTN_BF16_TARGET inline void PvKeyPair(const uint32_t* pr, int64_t ldpr, int64_t i,
                                       const uint16_t* v0, const uint16_t* v1,
                                       __m512 (&acc)[NR][2 * H]) {
  __m512bh w[NR];
  ATTN_UNROLL
  for (int r = 0; r < NR; ++r) w[r] = (__m512bh)_mm512_set1_epi32(int(pr[r * ldpr + i]));
  ATTN_UNROLL
  for (int h = 0; h < H; ++h) {
    const __m512i a = _mm512_loadu_si512(v0 + 32 * h);
    const __m512i b = _mm512_loadu_si512(v1 + 32 * h);
    const __m512bh lo = (__m512bh)_mm512_unpacklo_epi16(a, b);
    const __m512bh hi = (__m512bh)_mm512_unpackhi_epi16(a, b);
    ATTN_UNROLL
    for (int r = 0; r < NR; ++r) {
      acc[r][2 * h] = _mm512_dpbf16_ps(acc[r][2 * h], lo, w[r]);
      acc[r][2 * h + 1] = _mm512_dpbf16_ps(acc[r][2 * h + 1], hi, w[r]);
    }
  }
}

// One pass over the chunk's n keys for NR <= 2 rows x H <= 4 pieces (at
// most 16 accumulators, no spills), into the tile's sums t (row r at t +
// r·ldt, this block's columns; zero first when `first`), prefetching
// `per_pair` rows of pf beside each key pair.
template <int NR, int H>
ATTN_BF16_TARGET void PvChunk(const uint32_t* pr, int64_t ldpr, const uint16_t* v, int64_t v_stride,
                              int64_t n, bool first, float* t, int64_t ldt, const PrefetchRows& pf,
                              int64_t per_pair) {
  __m512 acc[NR][2 * H];
  ATTN_UNROLL
  for (int r = 0; r < NR; ++r) {
    ATTN_UNROLL
    for (int x = 0; x < 2 * H; ++x)
      acc[r][x] = first ? _mm512_setzero_ps() : _mm512_load_ps(t + r * ldt + 16 * x);
  }
  int64_t i = 0;
  for (; 2 * i + 2 <= n; ++i) {
    pf.Prefetch(i * per_pair, (i + 1) * per_pair);
    const uint16_t* v0 = v + 2 * i * v_stride;
    PvKeyPair<NR, H>(pr, ldpr, i, v0, v0 + v_stride, acc);
  }
  if (2 * i < n) {
    pf.Prefetch(i * per_pair, pf.rows);
    PvKeyPair<NR, H>(pr, ldpr, i, v + 2 * i * v_stride, kZeroRow, acc);
  }
  ATTN_UNROLL
  for (int r = 0; r < NR; ++r) {
    ATTN_UNROLL
    for (int x = 0; x < 2 * H; ++x) _mm512_store_ps(t + r * ldt + 16 * x, acc[r][x]);
  }
}

template <int NR>
ATTN_BF16_TARGET void PvChunkColumns(int pieces, const uint32_t* pr, int64_t ldpr,
                                     const uint16_t* v, int64_t v_stride, int64_t n, bool first,
                                     float* t, int64_t ldt, const PrefetchRows& pf,
                                     int64_t per_pair) {
  switch (pieces) {
    case 1:
      return PvChunk<NR, 1>(pr, ldpr, v, v_stride, n, first, t, ldt, pf, per_pair);
    case 2:
      return PvChunk<NR, 2>(pr, ldpr, v, v_stride, n, first, t, ldt, pf, per_pair);
    case 3:
      return PvChunk<NR, 3>(pr, ldpr, v, v_stride, n, first, t, ldt, pf, per_pair);
    default:
      return PvChunk<NR, 4>(pr, ldpr, v, v_stride, n, first, t, ldt, pf, per_pair);
  }
}

// The weights paired once; then chunk by chunk of kBf16DecodeChunk keys,
// column block by column block (<= 128 columns), rows in pairs: the first
// pass over a chunk reads its V rows from memory in address order, the
// others from L1. Each pass prefetches its share of the chunk's rows ahead,
// so that requests keep leaving while the later passes compute.
template <int NR>
ATTN_BF16_TARGET void PvRowsOf(const float* p, int64_t ldp, const uint16_t* v, int64_t v_stride,
                               int64_t nkeys, int64_t dv, bool accumulate, float* o, int64_t ldo,
                               const PrefetchRows& prefetch) {
  alignas(64) float t[NR * kBf16DecodeMaxDv];
  alignas(64) uint32_t pr[NR * kMaxKeys / 2];
  const int64_t ldpr = (nkeys + 31) / 32 * 16;
  ATTN_UNROLL
  for (int r = 0; r < NR; ++r) PairWeights(p + r * ldp, nkeys, pr + r * ldpr);
  constexpr int64_t kBlock = 32 * kMaxPieces;
  constexpr int kRowPairs = (NR + 1) / 2;
  const int64_t passes = (dv + kBlock - 1) / kBlock * kRowPairs;
  for (int64_t j0 = 0; j0 < nkeys; j0 += kBf16DecodeChunk) {
    const int64_t n = std::min(kBf16DecodeChunk, nkeys - j0);
    const int64_t share = (n + passes - 1) / passes;  // rows ahead per pass
    const int64_t pairs = (n + 1) / 2;
    const int64_t per_pair = (share + pairs - 1) / pairs;
    int64_t pass = 0;
    for (int64_t c0 = 0; c0 < dv; c0 += kBlock) {
      const int pieces = int(std::min(kBlock, dv - c0) / 32);
      for (int r0 = 0; r0 < NR; r0 += 2, ++pass) {
        PrefetchRows pf = prefetch.From(j0 + pass * share);
        pf.rows = std::min(pf.rows, share);
        const uint32_t* w = pr + r0 * ldpr + j0 / 2;
        const uint16_t* vc = v + j0 * v_stride + c0;
        float* tc = t + r0 * dv + c0;
        if (NR - r0 >= 2) {
          PvChunkColumns<2>(pieces, w, ldpr, vc, v_stride, n, j0 == 0, tc, dv, pf, per_pair);
        } else {
          PvChunkColumns<1>(pieces, w, ldpr, vc, v_stride, n, j0 == 0, tc, dv, pf, per_pair);
        }
      }
    }
  }
  prefetch.Prefetch(nkeys, prefetch.rows);
  ATTN_UNROLL
  for (int r = 0; r < NR; ++r) PutPairColumnsInOrder(t + r * dv, dv, accumulate, o + r * ldo);
}

ATTN_BF16_TARGET void PvRows(const float* p, int64_t ldp, const uint16_t* v, int64_t v_stride,
                             int64_t nkeys, int64_t nrows, int64_t dv, bool accumulate, float* o,
                             int64_t ldo, const PrefetchRows& prefetch) {
  switch (nrows) {
    case 1:
      return PvRowsOf<1>(p, ldp, v, v_stride, nkeys, dv, accumulate, o, ldo, prefetch);
    case 2:
      return PvRowsOf<2>(p, ldp, v, v_stride, nkeys, dv, accumulate, o, ldo, prefetch);
    case 3:
      return PvRowsOf<3>(p, ldp, v, v_stride, nkeys, dv, accumulate, o, ldo, prefetch);
    default:
      return PvRowsOf<4>(p, ldp, v, v_stride, nkeys, dv, accumulate, o, ldo, prefetch);
  }
}

}  // namespace

const Bf16DecodeKernels* Bf16DecodeKernelsForCpu() {
  static const Bf16DecodeKernels kKernels = {ScoreRows, PvRows};
  return CpuHasAvx512Bf16() ? &kKernels : nullptr;
}

}  // namespace attn::ukernels

#else  // not x86-64 with GCC/Clang: no AVX512_BF16 kernels

namespace attn::ukernels {
const Bf16DecodeKernels* Bf16DecodeKernelsForCpu() { return nullptr; }
}  // namespace attn::ukernels

#endif
