// AVX512_BF16 micro-kernels: flash's tiles with bf16 operands on VDPBF16PS,
// which multiplies pairs of bf16 and adds both products to an fp32 lane, so
// one instruction does the work of two fp32 FMAs (Zen 4 and Sapphire Rapids
// issue it at the FMA's rate: twice the fp32 FLOP rate, and half the bytes).
//
// Highway 1.0.3 has no target with AVX512_BF16 (its bf16 dot products are
// emulated), so these are intrinsics in functions compiled for that ISA
// (target attributes, bf16_avx512.cc), reached through Bf16Kernels(), which
// is null unless CPUID says the CPU has AVX512F, AVX512BW and AVX512_BF16.
//
// Pairs. VDPBF16PS reads each 32-bit lane as two bf16 (low half first), so
// operands are packed two elements per uint32 along the summed dimension:
//   Q pairs   qp[p·64 + x] = (q[x][2p], q[x][2p+1]), p < ceil(dk/2)
//             (PackQueryPairs; an odd dk's last pair is (q[x][dk-1], 0))
//   K         used in place: the pair (k[j][2p], k[j][2p+1]) is one 32-bit
//             load from the bf16 row, broadcast
//   P rows    pr[x·ldp + p] = (P[x][2p], P[x][2p+1]) rounded to bf16,
//             written by the softmax (softmax_to_rows), one pair at a time
//             broadcast by P·V (AMX's A operand as it is)
//   V pairs   vp[p·vps + c] = (v[2p][c], v[2p+1][c]) (PackValuePairs)
// A missing element (odd count, columns past dv) is 0.
//
// Rounding: products of two bf16 are exact in fp32; sums round to nearest
// even; VDPBF16PS treats bf16 subnormal inputs as 0 and flushes subnormal
// results to 0 (an absolute error below 2^-126 per step). P is rounded to
// bf16 for P·V (relative 2^-8 per weight; reference/error_bound.cc counts
// it), while the softmax denominator sums the unrounded fp32 P.
#ifndef ATTNLAB_KERNELS_UKERNELS_BF16_AVX512_H_
#define ATTNLAB_KERNELS_UKERNELS_BF16_AVX512_H_

#include <cstdint>
#include <cstring>

namespace attn::ukernels {

// Columns of the Q-pair tile and of Sᵀ: flash's 64-row block.
inline constexpr int64_t kBf16TileCols = 64;

struct Bf16Kernels {
  // st[j·64 + x] = scale·Σ_d k[j][d]·q[x][d] for j < nkeys, x < 16·nvec
  // (nvec <= 4): qp as above (64-byte aligned), k rows `k_stride` elements
  // apart (2-byte aligned), st 64-byte aligned. 6 keys x 4 vectors of
  // queries = 24 accumulators; per pair step 4 loads and 6 broadcasts feed
  // 24 VDPBF16PS. col_max, unless null (64-byte aligned, 16·nvec floats),
  // gets each query's maximum of what st holds over the tile's keys, as
  // softmax_to_rows's maximum pass takes it (VMAXPS from -inf, key by key
  // in order), so that the softmax need not read Sᵀ for it.
  void (*score_tile)(const uint32_t* qp, const uint16_t* k, int64_t k_stride, int64_t nkeys,
                     int64_t dk, int64_t nvec, float scale, float* st, float* col_max);
  // vp[p·vps + c] for p < ceil(nkeys/2), c < vps (a multiple of 16 >= dv),
  // from bf16 rows v[j·v_stride + c], c < dv.
  void (*pack_value_pairs)(const uint16_t* v, int64_t v_stride, int64_t nkeys, int64_t dv,
                           uint32_t* vp, int64_t vps);
  // qp (above) from nrows bf16 query rows, zero rows up to 64: the 16 x 16
  // blocks of a row's 32-bit pairs transposed in registers (PackQueryPairs
  // below is the plain version, the tests' reference).
  void (*pack_query_pairs)(const uint16_t* const* rows, int64_t nrows, int64_t dk, uint32_t* qp);
  // OnlineSoftmaxColumns (softmax-inl.h: m, l, alpha, 64-byte aligned) on
  // raw scores st[j·64 + x] (j < nkeys, x < 16·nvec), each scaled by
  // `scale` > 0 as it is read (m in scaled units), whose weights
  // e^(s·scale - m) go out rounded to bf16 as pr[x·ldp + p] = (P[x][2p],
  // P[x][2p+1]), p < ceil(nkeys/32)·16 (0 past nkeys; ldp a multiple of 16
  // at least that, pr 64-byte aligned); the sums l take the fp32 weights.
  // tile_max, unless null, is score_tile's col_max of this st (nothing
  // written to st since), and the maximum pass is skipped. One pass over
  // Sᵀ after the maximum: 32 keys x 16 queries at a time, exp (a degree-3
  // polynomial within kReducedExpMaxRel, kernels/problem.h: P is rounded to bf16
  // next), sums, rounding, pairing and a 16 x 16 transpose in registers;
  // alpha takes a degree-5 exp (within the fp32 exponential's ulps). The
  // AMX set shares it.
  void (*softmax_to_rows)(const float* st, int64_t nkeys, int64_t nvec, float scale, float* m,
                          float* l, float* alpha, uint32_t* pr, int64_t ldp, const float* tile_max);
  // o[x·ldo + c] (+)= Σ_p pr[x·ldp + p]·vp[p·vps + c] (pair dot products)
  // for x < nrows, c < 16·nvec; overwrite unless `accumulate`. vp, vps, o,
  // ldo 64-byte aligned / multiples of 16. 6 rows x 4 vectors = 24
  // accumulators; per pair step 4 loads of V pairs and 6 broadcasts of P
  // pairs feed 24 VDPBF16PS.
  void (*pv_rows)(const uint32_t* pr, int64_t ldp, const uint32_t* vp, int64_t vps, int64_t npairs,
                  int64_t nrows, int64_t nvec, bool accumulate, float* o, int64_t ldo);
};

// The kernels when this CPU has AVX512F, BW, DQ, VL and AVX512_BF16, else
// null.
const Bf16Kernels* Bf16KernelsForCpu();
// Whether it has them (the tests' skip condition).
bool CpuHasAvx512Bf16();
// The VDPBF16PS peak loop (the bench's ceiling_vdpbf16ps): `rounds` rounds
// of 12 independent VDPBF16PS on registers (nothing loaded or stored);
// returns the FLOPs done (64 per instruction: 16 lanes x 2 products x 2).
// Only when CpuHasAvx512Bf16(); 0 otherwise.
double Bf16DotPeakLoop(int64_t rounds);

// qp from nrows bf16 query rows (zero rows up to 64): plain C++, the
// tests' version of pack_query_pairs.
inline void PackQueryPairs(const uint16_t* const* rows, int64_t nrows, int64_t dk, uint32_t* qp) {
  const int64_t pairs = (dk + 1) / 2;
  for (int64_t x = 0; x < kBf16TileCols; ++x) {
    for (int64_t p = 0; p < pairs; ++p) {
      uint32_t pair = 0;
      if (x < nrows) {
        const uint16_t lo = rows[x][2 * p];
        const uint16_t hi = 2 * p + 1 < dk ? rows[x][2 * p + 1] : uint16_t{0};
        pair = uint32_t{lo} | (uint32_t{hi} << 16);
      }
      qp[p * kBf16TileCols + x] = pair;
    }
  }
}

// The kernels by name, for the micro-kernel list (ukernels.inc); only
// called when CpuHasAvx512Bf16().
inline void Bf16ScoreTile(const uint32_t* qp, const uint16_t* k, int64_t k_stride, int64_t nkeys,
                          int64_t dk, int64_t nvec, float scale, float* st, float* col_max) {
  Bf16KernelsForCpu()->score_tile(qp, k, k_stride, nkeys, dk, nvec, scale, st, col_max);
}
inline void Bf16SoftmaxToRows(const float* st, int64_t nkeys, int64_t nvec, float scale, float* m,
                              float* l, float* alpha, uint32_t* pr, int64_t ldp,
                              const float* tile_max) {
  Bf16KernelsForCpu()->softmax_to_rows(st, nkeys, nvec, scale, m, l, alpha, pr, ldp, tile_max);
}
inline void Bf16PvRows(const uint32_t* pr, int64_t ldp, const uint32_t* vp, int64_t vps,
                       int64_t npairs, int64_t nrows, int64_t nvec, bool accumulate, float* o,
                       int64_t ldo) {
  Bf16KernelsForCpu()->pv_rows(pr, ldp, vp, vps, npairs, nrows, nvec, accumulate, o, ldo);
}
inline void Bf16PackQueries(const uint16_t* const* rows, int64_t nrows, int64_t dk, uint32_t* qp) {
  Bf16KernelsForCpu()->pack_query_pairs(rows, nrows, dk, qp);
}
inline void Bf16PackValues(const uint16_t* v, int64_t v_stride, int64_t nkeys, int64_t dv,
                           uint32_t* vp, int64_t vps) {
  Bf16KernelsForCpu()->pack_value_pairs(v, v_stride, nkeys, dv, vp, vps);
}

}  // namespace attn::ukernels

#endif  // ATTNLAB_KERNELS_UKERNELS_BF16_AVX512_H_
