// AVX512_BF16 micro-kernels (bf16_avx512.h): intrinsics in functions
// compiled for AVX512F/BW/BF16 by target attribute, so the rest of the
// library keeps its baseline flags and Highway's dispatch; only reached
// after CPUID says the CPU has the ISA.
#include "kernels/ukernels/bf16_avx512.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include <algorithm>
#include <limits>

#include "kernels/ukernels/column_max_avx512.h"
#include "kernels/ukernels/transpose_avx512.h"

// gcc 12's avx512fintrin.h passes an undefined vector as the pass-through
// operand of unmasked conversions and shifts, which -Wmaybe-uninitialized
// reports where they inline (a false positive: no lane of it is used), and
// -Wuninitialized once the softmax's inline helpers are inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#define ATTN_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))

namespace attn::ukernels {
namespace {

constexpr int64_t kCols = kBf16TileCols;

// 32 bits at p (any 2-byte alignment).
inline uint32_t Load32(const uint16_t* p) {
  uint32_t x;
  std::memcpy(&x, p, 4);
  return x;
}

// Sᵀ for MR keys x NV query vectors.
template <int MR, int NV>
ATTN_BF16_TARGET void ScoreKernel(const uint32_t* qp, const uint16_t* k, int64_t k_stride,
                                  int64_t dk, float scale, float* st) {
  __m512 acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_setzero_ps();
  const int64_t whole = dk / 2;
  for (int64_t p = 0; p < whole; ++p) {
    __m512bh q[NV];
    for (int v = 0; v < NV; ++v) q[v] = (__m512bh)_mm512_load_si512(qp + p * kCols + v * 16);
    for (int m = 0; m < MR; ++m) {
      const __m512bh kb = (__m512bh)_mm512_set1_epi32(int(Load32(k + m * k_stride + 2 * p)));
      for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_dpbf16_ps(acc[m][v], kb, q[v]);
    }
  }
  if (dk & 1) {  // the last pair is (k[dk-1], 0): never read past the row
    __m512bh q[NV];
    for (int v = 0; v < NV; ++v) q[v] = (__m512bh)_mm512_load_si512(qp + whole * kCols + v * 16);
    for (int m = 0; m < MR; ++m) {
      const __m512bh kb = (__m512bh)_mm512_set1_epi32(int(k[m * k_stride + dk - 1]));
      for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_dpbf16_ps(acc[m][v], kb, q[v]);
    }
  }
  // Scaled here, once per score against dk/2 VDPBF16PS, rather than in a
  // pass over the tile (or in Q, which would round Q twice).
  const __m512 s = _mm512_set1_ps(scale);
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v)
      _mm512_store_ps(st + m * kCols + v * 16, _mm512_mul_ps(s, acc[m][v]));
}

template <int MR>
ATTN_BF16_TARGET void ScoreKeys(int nv, const uint32_t* qp, const uint16_t* k, int64_t k_stride,
                                int64_t dk, float scale, float* st) {
  switch (nv) {
    case 1:
      return ScoreKernel<MR, 1>(qp, k, k_stride, dk, scale, st);
    case 2:
      return ScoreKernel<MR, 2>(qp, k, k_stride, dk, scale, st);
    case 3:
      return ScoreKernel<MR, 3>(qp, k, k_stride, dk, scale, st);
    default:
      return ScoreKernel<MR, 4>(qp, k, k_stride, dk, scale, st);
  }
}

ATTN_BF16_TARGET void ScoreTile(const uint32_t* qp, const uint16_t* k, int64_t k_stride,
                                int64_t nkeys, int64_t dk, int64_t nvec, float scale, float* st,
                                float* col_max) {
  constexpr int kMR = 6;
  for (int64_t v0 = 0; v0 < nvec; v0 += 4) {
    const int nv = int(std::min<int64_t>(4, nvec - v0));
    const uint32_t* q = qp + v0 * 16;
    float* s = st + v0 * 16;
    int64_t j = 0;
    for (; j + kMR <= nkeys; j += kMR) {
      ScoreKeys<kMR>(nv, q, k + j * k_stride, k_stride, dk, scale, s + j * kCols);
    }
    const uint16_t* kj = k + j * k_stride;
    float* sj = s + j * kCols;
    switch (nkeys - j) {
      case 1:
        ScoreKeys<1>(nv, q, kj, k_stride, dk, scale, sj);
        break;
      case 2:
        ScoreKeys<2>(nv, q, kj, k_stride, dk, scale, sj);
        break;
      case 3:
        ScoreKeys<3>(nv, q, kj, k_stride, dk, scale, sj);
        break;
      case 4:
        ScoreKeys<4>(nv, q, kj, k_stride, dk, scale, sj);
        break;
      case 5:
        ScoreKeys<5>(nv, q, kj, k_stride, dk, scale, sj);
        break;
      default:
        break;
    }
  }
  if (col_max == nullptr) return;
  __m512 mt[4];
  SetMinusInfinity(mt, nvec);
  MaxOverKeys(nvec, st, nkeys, mt);
  for (int64_t v = 0; v < nvec; ++v) _mm512_store_ps(col_max + v * 16, mt[v]);
}

// O for MR rows x NV vectors of dv from MR P rows (pr[m·ldp + p]).
template <int MR, int NV>
ATTN_BF16_TARGET void PvKernel(const uint32_t* pr, int64_t ldp, const uint32_t* vp, int64_t vps,
                               int64_t npairs, bool accumulate, float* o, int64_t ldo) {
  __m512 acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v)
      acc[m][v] = accumulate ? _mm512_load_ps(o + m * ldo + v * 16) : _mm512_setzero_ps();
  for (int64_t p = 0; p < npairs; ++p) {
    __m512bh vv[NV];
    for (int v = 0; v < NV; ++v) vv[v] = (__m512bh)_mm512_load_si512(vp + p * vps + v * 16);
    for (int m = 0; m < MR; ++m) {
      const __m512bh pb = (__m512bh)_mm512_set1_epi32(int(pr[m * ldp + p]));
      for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_dpbf16_ps(acc[m][v], pb, vv[v]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) _mm512_store_ps(o + m * ldo + v * 16, acc[m][v]);
}

template <int MR>
ATTN_BF16_TARGET void PvKeys(int nv, const uint32_t* pr, int64_t ldp, const uint32_t* vp,
                             int64_t vps, int64_t npairs, bool accumulate, float* o, int64_t ldo) {
  switch (nv) {
    case 1:
      return PvKernel<MR, 1>(pr, ldp, vp, vps, npairs, accumulate, o, ldo);
    case 2:
      return PvKernel<MR, 2>(pr, ldp, vp, vps, npairs, accumulate, o, ldo);
    case 3:
      return PvKernel<MR, 3>(pr, ldp, vp, vps, npairs, accumulate, o, ldo);
    default:
      return PvKernel<MR, 4>(pr, ldp, vp, vps, npairs, accumulate, o, ldo);
  }
}

ATTN_BF16_TARGET void PvRows(const uint32_t* pr, int64_t ldp, const uint32_t* vp, int64_t vps,
                             int64_t npairs, int64_t nrows, int64_t nvec, bool accumulate, float* o,
                             int64_t ldo) {
  constexpr int kMR = 6;
  for (int64_t v0 = 0; v0 < nvec; v0 += 4) {
    const int nv = int(std::min<int64_t>(4, nvec - v0));
    const uint32_t* vc = vp + v0 * 16;
    float* oc = o + v0 * 16;
    int64_t m = 0;
    for (; m + kMR <= nrows; m += kMR) {
      PvKeys<kMR>(nv, pr + m * ldp, ldp, vc, vps, npairs, accumulate, oc + m * ldo, ldo);
    }
    const uint32_t* pm = pr + m * ldp;
    float* om = oc + m * ldo;
    switch (nrows - m) {
      case 1:
        PvKeys<1>(nv, pm, ldp, vc, vps, npairs, accumulate, om, ldo);
        break;
      case 2:
        PvKeys<2>(nv, pm, ldp, vc, vps, npairs, accumulate, om, ldo);
        break;
      case 3:
        PvKeys<3>(nv, pm, ldp, vc, vps, npairs, accumulate, om, ldo);
        break;
      case 4:
        PvKeys<4>(nv, pm, ldp, vc, vps, npairs, accumulate, om, ldo);
        break;
      case 5:
        PvKeys<5>(nv, pm, ldp, vc, vps, npairs, accumulate, om, ldo);
        break;
      default:
        break;
    }
  }
}

// --- The online softmax, into P rows --------------------------------------------

// e^(s·scale - mu) (mu the row's new maximum, s·scale <= mu; alpha's
// exponential, and the weights' before WeightExp below) in 10
// instructions per 16 scores (FastExp2 in exp-inl.h, with its caller's
// subtraction and change of base: 12). t = (s·scale - mu)·log2 e splits
// into f = t - floor(t) in [0, 1) (VREDUCEPS; exact but for t in (-1, 0),
// where 1 + t may need bits below f's last and VREDUCEPS rounds it down: at
// most 2^-24 off, ~0.35 ulp of the result) and floor(t), which VSCALEFPS
// applies by itself (it scales by 2^floor of its second operand). 2^f is a
// degree-5 polynomial, minimax for relative error on [0, 1] (7.5e-8; 1.5e-7
// = 2.2 ulp with fp32 Horner rounding, checked on a dense sweep), within the
// 8 ulp the error bound allows the exponential (reference/error_bound.cc);
// FastExp2's degree 6 on [-1/2, 1/2] (0.95 ulp) takes one FMA more, and its
// caller the subtraction this FMSUB folds. Arguments below -126 (-inf
// included, whose VREDUCEPS is NaN) are masked to 0 by VSCALEFPS (no
// subnormal weights: they cost microcode assists in the sums); NaN gives NaN
// (it compares "not less", and stays NaN through each step).
ATTN_BF16_TARGET inline __m512 ExpScaled(__m512 s, __m512 scale, __m512 mu) {
  const __m512 lo = _mm512_set1_ps(-126.0f);
  const __m512 t =
      _mm512_mul_ps(_mm512_fmsub_ps(s, scale, mu), _mm512_set1_ps(1.4426950408889634f));
  const __mmask16 keep = _mm512_cmp_ps_mask(t, lo, _CMP_NLT_UQ);
  const __m512 f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 p = _mm512_set1_ps(1.8775742501020432e-03f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(8.989338763058186e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5826324969530106e-02f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4015361070632935e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931530833244324e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.999999403953552e-01f));
  return _mm512_maskz_scalef_ps(keep, p, t);
}

// The weights P, which are rounded to bf16 (relative 2^-8) right after,
// take a cheaper exponential than alpha's ExpScaled: 7 instructions per 16
// scores instead of 10 (kernels/DESIGN.md, "AMX": the softmax into P rows
// is bound by its instruction count). The exponent t = s·(scale·log2 e) -
// mu·log2 e is one FMA on two products formed once per call (each rounded
// once more: |s·scale|·u and |mu|·u in the exponent), and 2^f a degree-3
// polynomial, minimax for relative error on [0, 1] (7.5e-5 with fp32
// Horner rounding, checked on a dense sweep): within kReducedExpMaxRel =
// 2^-13, which kernels/problem.h ("Element types") allows a kernel that
// rounds P to a reduced V's type and reference/error_bound.cc adds to the
// bound. -inf, NaN and arguments below -126 as in ExpScaled.
ATTN_BF16_TARGET inline __m512 WeightExp(__m512 s, __m512 scale_log2e, __m512 mu_log2e) {
  const __m512 t = _mm512_fmsub_ps(s, scale_log2e, mu_log2e);
  const __mmask16 keep = _mm512_cmp_ps_mask(t, _mm512_set1_ps(-126.0f), _CMP_NLT_UQ);
  const __m512 f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 p = _mm512_set1_ps(7.802419364452362e-02f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.260672152042389e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.958337426185608e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.999251961708069e-01f));
  return _mm512_maskz_scalef_ps(keep, p, t);
}

// Key j's weights for 16 rows (0 past nkeys).
ATTN_BF16_TARGET inline __m512 Weight(const float* st, int64_t j, int64_t nkeys, __m512 scale_log2e,
                                      __m512 mu_log2e) {
  return j < nkeys ? WeightExp(_mm512_load_ps(st + j * kCols), scale_log2e, mu_log2e)
                   : _mm512_setzero_ps();
}

// Sixteen key pairs (32 keys) of 16 rows, as P rows: e^(s·scale - mu) of
// keys j0 + 2i and j0 + 2i + 1 (0 past nkeys) rounded to bf16 and
// interleaved into one 32-bit lane per row, then the 16 x 16 block of pairs
// transposed so that each row's 16 pairs are one store. Returns `sum` plus
// the fp32 weights.
ATTN_BF16_TARGET __m512 ExpPairRows(const float* st, int64_t j0, int64_t nkeys, __m512 scale_log2e,
                                    __m512 mu_log2e, __m512 sum, uint32_t* pr, int64_t ldp) {
  // Word 2r of a pair vector is key j0 + 2i of row r, word 2r + 1 key j0 + 2i + 1.
  const __m512i interleave =
      _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                       21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  __m512i pairs[16];
  __m512 sum1 = _mm512_setzero_ps();
  for (int i = 0; i < 16; ++i) {
    const int64_t j = j0 + 2 * i;
    const __m512 e0 = Weight(st, j, nkeys, scale_log2e, mu_log2e),
                 e1 = Weight(st, j + 1, nkeys, scale_log2e, mu_log2e);
    sum = _mm512_add_ps(sum, e0);
    sum1 = _mm512_add_ps(sum1, e1);
    pairs[i] = _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
  }
  Transpose16x16(pairs);
  for (int r = 0; r < 16; ++r) _mm512_store_si512(pr + r * ldp, pairs[r]);
  return _mm512_add_ps(sum, sum1);
}

// The online step of OnlineSoftmaxColumns (softmax-inl.h) on raw scores,
// NV vectors of 16 rows: the maximum over the tile's keys (one chain per
// vector; or the score tile's, tile_max, which spares this pass over Sᵀ),
// scaled (scale > 0 commutes with it), then one pass that takes
// e^(s·scale - m), sums it and writes it as P rows, 32 keys of every
// vector at a time. Both passes walk Sᵀ in address order: strip by strip
// (a 16-row column of Sᵀ has rows 256 bytes apart, which fall in a quarter
// of L1's sets, so a strip does not stay there between the passes) they
// ran at the fp32 columns kernel's 3.6 G scores/s. One read of Sᵀ after
// the maximum's, where the fp32 columns softmax and a pairing pass read and
// wrote it twice more (kernels/DESIGN.md, "Reduced precision").
template <int NV>
ATTN_BF16_TARGET void SoftmaxToRowsOf(const float* st, int64_t nkeys, float scale, float* m,
                                      float* l, float* alpha, uint32_t* pr, int64_t ldp,
                                      const float* tile_max) {
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512 vscale = _mm512_set1_ps(scale);
  const __m512 log2e = _mm512_set1_ps(1.4426950408889634f);
  const __m512 scale_log2e = _mm512_mul_ps(vscale, log2e);
  // tile max (raw), new max, its finite form, that times log2 e
  __m512 mt[NV], mn[NV], mu[NV], mu_log2e[NV], sum[NV];
  if (tile_max != nullptr) {
    for (int v = 0; v < NV; ++v) mt[v] = _mm512_load_ps(tile_max + v * 16);
  } else {
    SetMinusInfinity(mt, NV);
    MaxOverKeys<NV>(st, nkeys, mt);
  }
  for (int v = 0; v < NV; ++v) {
    mn[v] = _mm512_max_ps(_mm512_load_ps(m + v * 16), _mm512_mul_ps(mt[v], vscale));
    mu[v] = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(mn[v], neg_inf, _CMP_NEQ_UQ), mn[v]);
    mu_log2e[v] = _mm512_mul_ps(mu[v], log2e);
    sum[v] = _mm512_setzero_ps();
  }
  for (int64_t j0 = 0; j0 < nkeys; j0 += 32) {
    for (int v = 0; v < NV; ++v) {
      sum[v] = ExpPairRows(st + v * 16, j0, nkeys, scale_log2e, mu_log2e[v], sum[v],
                           pr + v * 16 * ldp + j0 / 2, ldp);
    }
  }
  for (int v = 0; v < NV; ++v) {
    const __m512 mo = _mm512_load_ps(m + v * 16);
    const __m512 a = ExpScaled(mo, _mm512_set1_ps(1.0f), mu[v]);
    _mm512_store_ps(l + v * 16, _mm512_fmadd_ps(a, _mm512_load_ps(l + v * 16), sum[v]));
    _mm512_store_ps(m + v * 16, mn[v]);
    _mm512_store_ps(alpha + v * 16, a);
  }
}

ATTN_BF16_TARGET void SoftmaxToRows(const float* st, int64_t nkeys, int64_t nvec, float scale,
                                    float* m, float* l, float* alpha, uint32_t* pr, int64_t ldp,
                                    const float* tile_max) {
  switch (nvec) {
    case 1:
      SoftmaxToRowsOf<1>(st, nkeys, scale, m, l, alpha, pr, ldp, tile_max);
      break;
    case 2:
      SoftmaxToRowsOf<2>(st, nkeys, scale, m, l, alpha, pr, ldp, tile_max);
      break;
    case 3:
      SoftmaxToRowsOf<3>(st, nkeys, scale, m, l, alpha, pr, ldp, tile_max);
      break;
    default:
      SoftmaxToRowsOf<4>(st, nkeys, scale, m, l, alpha, pr, ldp, tile_max);
  }
}

ATTN_BF16_TARGET void PackValuePairs(const uint16_t* v, int64_t v_stride, int64_t nkeys, int64_t dv,
                                     uint32_t* vp, int64_t vps) {
  const int64_t pairs = (nkeys + 1) / 2;
  for (int64_t p = 0; p < pairs; ++p) {
    const uint16_t* lo_row = v + 2 * p * v_stride;
    const bool has_hi = 2 * p + 1 < nkeys;
    const uint16_t* hi_row = lo_row + v_stride;
    for (int64_t c = 0; c < vps; c += 16) {
      const int64_t n = std::clamp<int64_t>(dv - c, 0, 16);
      const __mmask16 mask = __mmask16((uint32_t{1} << n) - 1);
      const __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, lo_row + c));
      __m512i pair = lo;
      if (has_hi) {
        const __m512i hi = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, hi_row + c));
        pair = _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
      }
      _mm512_store_si512(vp + p * vps + c, pair);
    }
  }
}

// 16 rows x 16 pairs at a time: a row's pairs are the 32-bit words of the
// row as it is (elements past dk zeroed by the masked load, so an odd dk's
// last pair is (q[dk-1], 0)), transposed 16 x 16 so that each pair's 16
// rows are one store.
ATTN_BF16_TARGET void PackQueryPairsTransposed(const uint16_t* const* rows, int64_t nrows,
                                               int64_t dk, uint32_t* qp) {
  const int64_t pairs = (dk + 1) / 2;
  for (int64_t x0 = 0; x0 < kCols; x0 += 16) {
    for (int64_t p0 = 0; p0 < pairs; p0 += 16) {
      const int64_t n = std::min<int64_t>(32, dk - 2 * p0);  // elements of this step
      const __mmask32 mask = n == 32 ? ~__mmask32{0} : (__mmask32{1} << n) - 1;
      __m512i r[16];
      for (int i = 0; i < 16; ++i) {
        r[i] = x0 + i < nrows ? _mm512_maskz_loadu_epi16(mask, rows[x0 + i] + 2 * p0)
                              : _mm512_setzero_si512();
      }
      Transpose16x16(r);
      const int64_t np = std::min<int64_t>(16, pairs - p0);
      for (int64_t i = 0; i < np; ++i) _mm512_store_si512(qp + (p0 + i) * kCols + x0, r[i]);
    }
  }
}

// The peak loop: 12 independent accumulators (latency 5-6 cycles at up to
// two per cycle), both operands in registers, nothing loaded or stored.
constexpr int kPeakChains = 12;
ATTN_BF16_TARGET double PeakLoop(int64_t rounds) {
  // bf16 ~0.001 everywhere: not zeros, and 2·10^-6 per step stays finite.
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3A83);
  __m512bh b = (__m512bh)_mm512_set1_epi16(0x3A83);
  __m512 acc[kPeakChains];
  for (__m512& x : acc) x = _mm512_setzero_ps();
  for (int64_t r = 0; r < rounds; ++r) {
    // An empty asm on b each round: the compiler may not hoist or fold the
    // products out of the loop.
    asm volatile("" : "+v"(b));
    for (__m512& x : acc) x = _mm512_dpbf16_ps(x, a, b);
  }
  __m512 sum = acc[0];
  for (int i = 1; i < kPeakChains; ++i) sum = _mm512_add_ps(sum, acc[i]);
  volatile float sink = _mm512_reduce_add_ps(sum);  // keeps the loop
  (void)sink;
  return double(kPeakChains) * 16 * 2 * 2 * double(rounds);
}

}  // namespace

double Bf16DotPeakLoop(int64_t rounds) { return CpuHasAvx512Bf16() ? PeakLoop(rounds) : 0.0; }

bool CpuHasAvx512Bf16() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512bf16");
  return has;
}

const Bf16Kernels* Bf16KernelsForCpu() {
  static const Bf16Kernels kKernels = {ScoreTile, PackValuePairs, PackQueryPairsTransposed,
                                       SoftmaxToRows, PvRows};
  return CpuHasAvx512Bf16() ? &kKernels : nullptr;
}

}  // namespace attn::ukernels

#else  // not x86-64 with GCC/Clang: no AVX512_BF16 kernels

namespace attn::ukernels {
bool CpuHasAvx512Bf16() { return false; }
const Bf16Kernels* Bf16KernelsForCpu() { return nullptr; }
double Bf16DotPeakLoop(int64_t) { return 0.0; }
}  // namespace attn::ukernels

#endif
