// AVX512_BF16 micro-kernels (bf16_avx512.h): intrinsics in functions
// compiled for AVX512F/BW/BF16 by target attribute, so the rest of the
// library keeps its baseline flags and Highway's dispatch; only reached
// after CPUID says the CPU has the ISA.
#include "kernels/ukernels/bf16_avx512.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include <algorithm>

#include "kernels/ukernels/column_max_avx512.h"
#include "kernels/ukernels/transpose_avx512.h"

// gcc 12's avx512fintrin.h passes an undefined vector as the pass-through
// operand of unmasked conversions and shifts, which -Wmaybe-uninitialized
// reports where they inline (a false positive: no lane of it is used).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define ATTN_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

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
  if (col_max == nullptr) return;  // flash does not ask: its softmax on this path reads Sᵀ
  __m512 mt[4];
  SetMinusInfinity(mt, nvec);
  MaxOverKeys(nvec, st, nkeys, mt);
  for (int64_t v = 0; v < nvec; ++v) _mm512_store_ps(col_max + v * 16, mt[v]);
}

// O for MR rows x NV vectors of dv.
template <int MR, int NV>
ATTN_BF16_TARGET void PvKernel(const uint32_t* pp, const uint32_t* vp, int64_t vps, int64_t npairs,
                               bool accumulate, float* o, int64_t ldo) {
  __m512 acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v)
      acc[m][v] = accumulate ? _mm512_load_ps(o + m * ldo + v * 16) : _mm512_setzero_ps();
  for (int64_t p = 0; p < npairs; ++p) {
    __m512bh vv[NV];
    for (int v = 0; v < NV; ++v) vv[v] = (__m512bh)_mm512_load_si512(vp + p * vps + v * 16);
    for (int m = 0; m < MR; ++m) {
      const __m512bh pb = (__m512bh)_mm512_set1_epi32(int(pp[p * kCols + m]));
      for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_dpbf16_ps(acc[m][v], pb, vv[v]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) _mm512_store_ps(o + m * ldo + v * 16, acc[m][v]);
}

template <int MR>
ATTN_BF16_TARGET void PvRows(int nv, const uint32_t* pp, const uint32_t* vp, int64_t vps,
                             int64_t npairs, bool accumulate, float* o, int64_t ldo) {
  switch (nv) {
    case 1:
      return PvKernel<MR, 1>(pp, vp, vps, npairs, accumulate, o, ldo);
    case 2:
      return PvKernel<MR, 2>(pp, vp, vps, npairs, accumulate, o, ldo);
    case 3:
      return PvKernel<MR, 3>(pp, vp, vps, npairs, accumulate, o, ldo);
    default:
      return PvKernel<MR, 4>(pp, vp, vps, npairs, accumulate, o, ldo);
  }
}

ATTN_BF16_TARGET void PvTile(const uint32_t* pp, const uint32_t* vp, int64_t vps, int64_t npairs,
                             int64_t nrows, int64_t nvec, bool accumulate, float* o, int64_t ldo) {
  constexpr int kMR = 6;
  for (int64_t v0 = 0; v0 < nvec; v0 += 4) {
    const int nv = int(std::min<int64_t>(4, nvec - v0));
    const uint32_t* vc = vp + v0 * 16;
    float* oc = o + v0 * 16;
    int64_t m = 0;
    for (; m + kMR <= nrows; m += kMR) {
      PvRows<kMR>(nv, pp + m, vc, vps, npairs, accumulate, oc + m * ldo, ldo);
    }
    const uint32_t* pm = pp + m;
    float* om = oc + m * ldo;
    switch (nrows - m) {
      case 1:
        PvRows<1>(nv, pm, vc, vps, npairs, accumulate, om, ldo);
        break;
      case 2:
        PvRows<2>(nv, pm, vc, vps, npairs, accumulate, om, ldo);
        break;
      case 3:
        PvRows<3>(nv, pm, vc, vps, npairs, accumulate, om, ldo);
        break;
      case 4:
        PvRows<4>(nv, pm, vc, vps, npairs, accumulate, om, ldo);
        break;
      case 5:
        PvRows<5>(nv, pm, vc, vps, npairs, accumulate, om, ldo);
        break;
      default:
        break;
    }
  }
}

// Keys 2p and 2p+1 of 16 rows: VCVTNE2PS2BF16 puts key 2p's bf16 in the low
// half and key 2p+1's in the high half; the permutation interleaves them
// into (key 2p, key 2p+1) per row.
ATTN_BF16_TARGET void PackScorePairs(float* st, int64_t nkeys, int64_t nvec) {
  alignas(64) static const uint16_t kInterleave[32] = {0,  16, 1,  17, 2,  18, 3,  19, 4,  20, 5,
                                                       21, 6,  22, 7,  23, 8,  24, 9,  25, 10, 26,
                                                       11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i interleave = _mm512_load_si512(kInterleave);
  const int64_t pairs = (nkeys + 1) / 2;
  for (int64_t p = 0; p < pairs; ++p) {
    for (int64_t v = 0; v < nvec; ++v) {
      const __m512 lo = _mm512_load_ps(st + 2 * p * kCols + v * 16);
      const __m512 hi = 2 * p + 1 < nkeys ? _mm512_load_ps(st + (2 * p + 1) * kCols + v * 16)
                                          : _mm512_setzero_ps();
      const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
      // Written at p·64 <= 2p·64: only over keys already read.
      _mm512_store_si512(st + p * kCols + v * 16, _mm512_permutexvar_epi16(interleave, both));
    }
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

}  // namespace

bool CpuHasAvx512Bf16() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512bf16");
  return has;
}

const Bf16Kernels* Bf16KernelsForCpu() {
  static const Bf16Kernels kKernels = {
      ScoreTile, PvTile, PackScorePairs, PackValuePairs, PackQueryPairsTransposed,
      nullptr,   nullptr};
  return CpuHasAvx512Bf16() ? &kKernels : nullptr;
}

}  // namespace attn::ukernels

#else  // not x86-64 with GCC/Clang: no AVX512_BF16 kernels

namespace attn::ukernels {
bool CpuHasAvx512Bf16() { return false; }
const Bf16Kernels* Bf16KernelsForCpu() { return nullptr; }
}  // namespace attn::ukernels

#endif
