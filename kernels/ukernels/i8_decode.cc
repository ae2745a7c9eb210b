// AVX512_VNNI decode micro-kernel (i8_decode.h): intrinsics in functions
// compiled for AVX512F/BW/DQ/VL/VNNI by target attribute, reached only after
// CPUID says the CPU has them (as bf16_decode.cc).
#include "kernels/ukernels/i8_decode.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include <algorithm>
#include <limits>

#include "kernels/ukernels/decode_pairs.h"

// gcc 12's avx512fintrin.h passes an undefined vector as the pass-through
// operand of unmasked conversions (see bf16_avx512.cc): a false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#define ATTN_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")))
// Loops over register arrays, fully unrolled so that gcc keeps the arrays
// in registers (as bf16_decode.cc).
#define ATTN_UNROLL _Pragma("GCC unroll 32")

namespace attn::ukernels {
namespace {

// Per 128-bit block, the lane sums of keys a and b interleaved: (a, b, a, b).
ATTN_VNNI_TARGET inline __m512i PairSums(__m512i a, __m512i b) {
  return _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
}

// st[0..4) = row_scale·(the dot products of keys 0-3) from PairSums of keys
// (0, 1) and (2, 3): a 64-bit interleave leaves (0, 1, 2, 3) in each 128-bit
// block, and the four blocks' sum is the four dot products, exact in int32
// until the one conversion.
ATTN_VNNI_TARGET inline void StoreFourKeys(__m512i t01, __m512i t23, __m128 row_scale, float* st) {
  const __m512i blocks =
      _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));
  const __m256i half =
      _mm256_add_epi32(_mm512_castsi512_si256(blocks), _mm512_extracti64x4_epi64(blocks, 1));
  const __m128i sums =
      _mm_add_epi32(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1));
  _mm_storeu_ps(st, _mm_mul_ps(_mm_cvtepi32_ps(sums), row_scale));
}

// acc + the pairwise products of a and b's words (VPDPWSSD), in asm: with
// the intrinsic, gcc 12 kept each P·V accumulator in two registers, copied
// from one to the other every key pair, and spilled two of them.
ATTN_VNNI_TARGET inline __m512i DotWords(__m512i acc, __m512i a, __m512i b) {
  asm("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}

// 32 int8 values of a K row as int16 words.
ATTN_VNNI_TARGET inline __m512i Words(const int8_t* k) {
  return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(k)));
}

// NR rows x QC vectors of 32 words (dk = 32·QC), Q in registers; 4 keys at
// a time as two pairs (2 x NR accumulators each), key by key in address
// order, then the last nkeys % 4 keys one at a time.
template <int NR, int QC>
ATTN_VNNI_TARGET void ScoreRowsOf(const int16_t* qw, const int8_t* k, int64_t k_stride,
                                  int64_t nkeys, const float* row_scale, float* st, int64_t lds,
                                  const PrefetchRows& prefetch) {
  constexpr int64_t kDk = 32 * QC;
  __m512i q[NR][QC];
  ATTN_UNROLL
  for (int r = 0; r < NR; ++r) {
    ATTN_UNROLL
    for (int c = 0; c < QC; ++c) q[r][c] = _mm512_load_si512(qw + r * kDk + 32 * c);
  }
  int64_t j = 0;
  for (; j + 4 <= nkeys; j += 4) {
    prefetch.Prefetch(j, j + 4);
    __m512i pairs[2][NR];
    ATTN_UNROLL
    for (int h = 0; h < 2; ++h) {
      __m512i acc[2][NR];
      ATTN_UNROLL
      for (int m = 0; m < 2; ++m) {
        ATTN_UNROLL
        for (int r = 0; r < NR; ++r) acc[m][r] = _mm512_setzero_si512();
      }
      ATTN_UNROLL
      for (int m = 0; m < 2; ++m) {
        const int8_t* km = k + (j + 2 * h + m) * k_stride;
        ATTN_UNROLL
        for (int c = 0; c < QC; ++c) {
          const __m512i kv = Words(km + 32 * c);
          ATTN_UNROLL
          for (int r = 0; r < NR; ++r) acc[m][r] = DotWords(acc[m][r], kv, q[r][c]);
        }
      }
      ATTN_UNROLL
      for (int r = 0; r < NR; ++r) pairs[h][r] = PairSums(acc[0][r], acc[1][r]);
    }
    ATTN_UNROLL
    for (int r = 0; r < NR; ++r) {
      StoreFourKeys(pairs[0][r], pairs[1][r], _mm_set1_ps(row_scale[r]), st + r * lds + j);
    }
  }
  for (; j < nkeys; ++j) {
    prefetch.Prefetch(j, j + 1);
    __m512i acc[NR];
    ATTN_UNROLL
    for (int r = 0; r < NR; ++r) acc[r] = _mm512_setzero_si512();
    ATTN_UNROLL
    for (int c = 0; c < QC; ++c) {
      const __m512i kv = Words(k + j * k_stride + 32 * c);
      ATTN_UNROLL
      for (int r = 0; r < NR; ++r) acc[r] = DotWords(acc[r], kv, q[r][c]);
    }
    ATTN_UNROLL
    for (int r = 0; r < NR; ++r) {
      st[r * lds + j] = row_scale[r] * static_cast<float>(_mm512_reduce_add_epi32(acc[r]));
    }
  }
  prefetch.Prefetch(nkeys, prefetch.rows);
}

template <int NR>
ATTN_VNNI_TARGET void ScoreRowsDk(const int16_t* qw, const int8_t* k, int64_t k_stride,
                                  int64_t nkeys, int64_t dk, const float* row_scale, float* st,
                                  int64_t lds, const PrefetchRows& prefetch) {
  switch (dk / 32) {
    case 1:
      return ScoreRowsOf<NR, 1>(qw, k, k_stride, nkeys, row_scale, st, lds, prefetch);
    case 2:
      return ScoreRowsOf<NR, 2>(qw, k, k_stride, nkeys, row_scale, st, lds, prefetch);
    case 3:
      return ScoreRowsOf<NR, 3>(qw, k, k_stride, nkeys, row_scale, st, lds, prefetch);
    default:
      return ScoreRowsOf<NR, 4>(qw, k, k_stride, nkeys, row_scale, st, lds, prefetch);
  }
}

ATTN_VNNI_TARGET void ScoreRows(const int16_t* qw, int64_t nrows, const int8_t* k, int64_t k_stride,
                                int64_t nkeys, int64_t dk, const float* row_scale, float* st,
                                int64_t lds, const PrefetchRows& prefetch) {
  switch (nrows) {
    case 1:
      return ScoreRowsDk<1>(qw, k, k_stride, nkeys, dk, row_scale, st, lds, prefetch);
    case 2:
      return ScoreRowsDk<2>(qw, k, k_stride, nkeys, dk, row_scale, st, lds, prefetch);
    case 3:
      return ScoreRowsDk<3>(qw, k, k_stride, nkeys, dk, row_scale, st, lds, prefetch);
    default:
      return ScoreRowsDk<4>(qw, k, k_stride, nkeys, dk, row_scale, st, lds, prefetch);
  }
}

// --- P·V -----------------------------------------------------------------------

// The most keys a call takes (a flash tile is at most 512).
constexpr int64_t kMaxKeys = 1024;
constexpr int64_t kMaxChunks = kMaxKeys / kI8DecodeChunk;
// The widest column block for NR rows: pieces of 32 columns, 2 int32
// accumulators each per row, at most 16 accumulators (4 pieces for 1-2 rows,
// 2 for 3-4). Every row takes the same pass: a pass widens and interleaves
// each V piece once for all its rows, so GQA-4's 4 rows x 2 pieces do half
// the shuffles of two row pairs x 4 pieces (the earlier blocking), for the
// same VPDPWSSD; on a core that issues two VPDPWSSD a cycle (Emerald
// Rapids) the shuffles, not the multiplies, bounded P·V.
template <int NR>
constexpr int kMaxPieces = NR <= 2 ? 4 : 2;

// |x| of 16 floats.
ATTN_VNNI_TARGET inline __m512 Abs(__m512 x) {
  return _mm512_castsi512_ps(
      _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7FFFFFFF)));
}

// A row's weights of n keys as int16 pairs, chunk by chunk of
// kI8DecodeChunk keys: step[c] = the chunk's max |p| / 32767, pr[i] =
// (round(p[2i] / step), round(p[2i + 1] / step)), 0 past n. False (nothing
// usable written) when a weight is not finite.
ATTN_VNNI_TARGET inline bool PairWeights(const float* p, int64_t n, uint32_t* pr, float* step) {
  for (int64_t j0 = 0, c = 0; j0 < n; j0 += kI8DecodeChunk, ++c) {
    __m512 x[kI8DecodeChunk / 16];
    __m512 max_abs = _mm512_setzero_ps();
    ATTN_UNROLL
    for (int g = 0; g < kI8DecodeChunk / 16; ++g) {
      const int64_t left = std::clamp<int64_t>(n - j0 - 16 * g, 0, 16);
      x[g] = _mm512_maskz_loadu_ps(__mmask16((1u << left) - 1), p + j0 + 16 * g);
      max_abs = _mm512_max_ps(max_abs, Abs(x[g]));
    }
    const float m = _mm512_reduce_max_ps(max_abs);
    if (!(m <= std::numeric_limits<float>::max())) return false;  // inf or NaN
    step[c] = m / 32767.0f;
    const __m512 inv = _mm512_set1_ps(m > 0 ? 32767.0f / m : 0.0f);
    const __m512i limit = _mm512_set1_epi32(32767);
    ATTN_UNROLL
    for (int g = 0; g < kI8DecodeChunk / 16; ++g) {
      __m512i w = _mm512_cvtps_epi32(_mm512_mul_ps(x[g], inv));  // to nearest even
      w = _mm512_max_epi32(_mm512_min_epi32(w, limit),
                           _mm512_sub_epi32(_mm512_setzero_si512(), limit));
      _mm256_store_si256(reinterpret_cast<__m256i*>(pr + j0 / 2 + 8 * g), _mm512_cvtepi32_epi16(w));
    }
  }
  return true;
}

// Zeros: the second V row of a chunk's odd last key.
alignas(64) const int8_t kZeroRow[kI8DecodeMaxDv] = {};

// Keys 2i and 2i + 1 (rows v0 and v1: kZeroRow after an odd last key) for
// NR rows x H pieces of 32 columns: widened to words, then VPUNPCKLWD/HWD
// pair the rows' words per 128-bit lane, so the first vector of piece h
// holds its columns {0-3, 8-11, 16-19, 24-27} and the second the rest (as
// bf16_decode.cc; PutPairColumnsInOrder undoes it).
template <int NR, int H>
ATTN_VNNI_TARGET inline void PvKeyPair(const uint32_t* pr, int64_t ldpr, int64_t i,
                                       const int8_t* v0, const int8_t* v1,
                                       __m512i (&acc)[NR][2 * H]) {
  __m512i w[NR];
  ATTN_UNROLL
  for (int r = 0; r < NR; ++r) w[r] = _mm512_set1_epi32(int(pr[r * ldpr + i]));
  ATTN_UNROLL
  for (int h = 0; h < H; ++h) {
    const __m512i a = Words(v0 + 32 * h);
    const __m512i b = Words(v1 + 32 * h);
    const __m512i lo = _mm512_unpacklo_epi16(a, b);
    const __m512i hi = _mm512_unpackhi_epi16(a, b);
    ATTN_UNROLL
    for (int r = 0; r < NR; ++r) {
      acc[r][2 * h] = DotWords(acc[r][2 * h], lo, w[r]);
      acc[r][2 * h + 1] = DotWords(acc[r][2 * h + 1], hi, w[r]);
    }
  }
}

// One pass over the chunk's n keys for NR rows x H pieces (NR x 2H <= 16
// int32 accumulators: kMaxPieces; exact: 64 keys x 32767 x 128 < 2^29), whose
// sums times the rows' steps are added to the tile's sums t (row r at t +
// r·ldt, this block's columns; set instead when `first`), prefetching
// `per_pair` rows of pf beside each key pair.
template <int NR, int H>
ATTN_VNNI_TARGET void PvChunk(const uint32_t* pr, int64_t ldpr, const float* step, int64_t lds,
                              const int8_t* v, int64_t v_stride, int64_t n, bool first, float* t,
                              int64_t ldt, const PrefetchRows& pf, int64_t per_pair) {
  __m512i acc[NR][2 * H];
  ATTN_UNROLL
  for (int r = 0; r < NR; ++r) {
    ATTN_UNROLL
    for (int x = 0; x < 2 * H; ++x) acc[r][x] = _mm512_setzero_si512();
  }
  // One loop body for all pairs (a separate call for the odd last key
  // made gcc 12 copy every accumulator in and out of other registers each
  // pair, and spill two): its second row is kZeroRow.
  for (int64_t i = 0; 2 * i < n; ++i) {
    pf.Prefetch(i * per_pair, 2 * i + 2 < n ? (i + 1) * per_pair : pf.rows);
    const int8_t* v0 = v + 2 * i * v_stride;
    const int8_t* v1 = 2 * i + 1 < n ? v0 + v_stride : kZeroRow;
    PvKeyPair<NR, H>(pr, ldpr, i, v0, v1, acc);
  }
  ATTN_UNROLL
  for (int r = 0; r < NR; ++r) {
    const __m512 s = _mm512_set1_ps(step[r * lds]);
    ATTN_UNROLL
    for (int x = 0; x < 2 * H; ++x) {
      float* tx = t + r * ldt + 16 * x;
      const __m512 sum = _mm512_cvtepi32_ps(acc[r][x]);
      _mm512_store_ps(tx,
                      first ? _mm512_mul_ps(sum, s) : _mm512_fmadd_ps(sum, s, _mm512_load_ps(tx)));
    }
  }
}

template <int NR>
ATTN_VNNI_TARGET void PvChunkColumns(int pieces, const uint32_t* pr, int64_t ldpr,
                                     const float* step, int64_t lds, const int8_t* v,
                                     int64_t v_stride, int64_t n, bool first, float* t, int64_t ldt,
                                     const PrefetchRows& pf, int64_t per_pair) {
  if constexpr (kMaxPieces<NR> == 4) {
    switch (pieces) {
      case 3:
        return PvChunk<NR, 3>(pr, ldpr, step, lds, v, v_stride, n, first, t, ldt, pf, per_pair);
      case 4:
        return PvChunk<NR, 4>(pr, ldpr, step, lds, v, v_stride, n, first, t, ldt, pf, per_pair);
    }
  }
  if (pieces == 1)
    return PvChunk<NR, 1>(pr, ldpr, step, lds, v, v_stride, n, first, t, ldt, pf, per_pair);
  return PvChunk<NR, 2>(pr, ldpr, step, lds, v, v_stride, n, first, t, ldt, pf, per_pair);
}

// The weights quantized once (false when one is not finite: nothing
// written); then chunk by chunk of kI8DecodeChunk keys, column block by
// column block (kMaxPieces<NR> pieces), every row in each pass: the first
// pass over a chunk reads its V rows from memory in address order, the
// others from L1. Each pass prefetches its share of the chunk's rows ahead
// (as bf16_decode.cc).
template <int NR>
ATTN_VNNI_TARGET bool PvRowsOf(const float* p, int64_t ldp, const int8_t* v, int64_t v_stride,
                               int64_t nkeys, int64_t dv, bool accumulate, float* o, int64_t ldo,
                               const PrefetchRows& prefetch) {
  alignas(64) float t[NR * kI8DecodeMaxDv];
  alignas(64) uint32_t pr[NR * kMaxKeys / 2];
  float steps[NR * kMaxChunks];
  const int64_t ldpr = (nkeys + kI8DecodeChunk - 1) / kI8DecodeChunk * kI8DecodeChunk / 2;
  ATTN_UNROLL
  for (int r = 0; r < NR; ++r) {
    if (!PairWeights(p + r * ldp, nkeys, pr + r * ldpr, steps + r * kMaxChunks)) return false;
  }
  constexpr int64_t kBlock = 32 * kMaxPieces<NR>;
  const int64_t passes = (dv + kBlock - 1) / kBlock;
  for (int64_t j0 = 0, c = 0; j0 < nkeys; j0 += kI8DecodeChunk, ++c) {
    const int64_t n = std::min(kI8DecodeChunk, nkeys - j0);
    const int64_t share = (n + passes - 1) / passes;  // rows ahead per pass
    const int64_t pairs = (n + 1) / 2;
    const int64_t per_pair = (share + pairs - 1) / pairs;
    for (int64_t c0 = 0, pass = 0; c0 < dv; c0 += kBlock, ++pass) {
      PrefetchRows pf = prefetch.From(j0 + pass * share);
      pf.rows = std::min(pf.rows, share);
      PvChunkColumns<NR>(int(std::min(kBlock, dv - c0) / 32), pr + j0 / 2, ldpr, steps + c,
                         kMaxChunks, v + j0 * v_stride + c0, v_stride, n, j0 == 0, t + c0, dv, pf,
                         per_pair);
    }
  }
  prefetch.Prefetch(nkeys, prefetch.rows);
  ATTN_UNROLL
  for (int r = 0; r < NR; ++r) PutPairColumnsInOrder(t + r * dv, dv, accumulate, o + r * ldo);
  return true;
}

ATTN_VNNI_TARGET bool PvRows(const float* p, int64_t ldp, const int8_t* v, int64_t v_stride,
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

// The peak loop: 12 independent accumulators (VPDPWSSD's latency of 4-5
// cycles at up to two a cycle), both operands in registers, nothing loaded
// or stored; DotWords' asm, so the compiler cannot fold the products.
constexpr int kPeakChains = 12;
ATTN_VNNI_TARGET double PeakLoop(int64_t rounds) {
  const __m512i a = _mm512_set1_epi16(3);
  __m512i b = _mm512_set1_epi16(5);
  __m512i acc[kPeakChains];
  for (__m512i& x : acc) x = _mm512_setzero_si512();
  for (int64_t r = 0; r < rounds; ++r) {
    asm volatile("" : "+v"(b));  // not hoisted out of the loop
    for (__m512i& x : acc) x = DotWords(x, a, b);
  }
  __m512i sum = acc[0];
  for (int i = 1; i < kPeakChains; ++i) sum = _mm512_add_epi32(sum, acc[i]);
  volatile int sink = _mm512_reduce_add_epi32(sum);  // keeps the loop (wraps; unread)
  (void)sink;
  return double(kPeakChains) * 16 * 2 * 2 * double(rounds);
}

}  // namespace

double I8DotPeakLoop(int64_t rounds) { return CpuHasAvx512Vnni() ? PeakLoop(rounds) : 0.0; }

bool CpuHasAvx512Vnni() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512vnni");
  return has;
}

const I8DecodeKernels* I8DecodeKernelsForCpu() {
  static const I8DecodeKernels kKernels = {ScoreRows, PvRows};
  return CpuHasAvx512Vnni() ? &kKernels : nullptr;
}

}  // namespace attn::ukernels

#else  // not x86-64 with GCC/Clang: no AVX512_VNNI kernels

namespace attn::ukernels {
bool CpuHasAvx512Vnni() { return false; }
const I8DecodeKernels* I8DecodeKernelsForCpu() { return nullptr; }
double I8DotPeakLoop(int64_t) { return 0.0; }
}  // namespace attn::ukernels

#endif
