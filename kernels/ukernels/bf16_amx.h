// AMX-BF16 micro-kernels: flash's two bf16 products on TDPBF16PS, the tile
// matrix multiply of Sapphire Rapids and later Xeons (one instruction: a
// 16 x 16 fp32 block += 16 x 32 bf16 times 32 x 16 bf16, 16 cycles a
// core: 1024 FLOP per cycle, 12x the fp32 FMA peak of the same core).
//
// The two products take the pair kernels' operands (bf16_avx512.h) and the
// P rows their softmax writes (softmax_to_rows, shared: AmxBf16KernelsForCpu()
// is the VDPBF16PS set with score_tile and pv_rows replaced):
//   Sᵀ = K·Qᵀ  C = Sᵀ (keys x 16 queries per tile), A = 16 K rows read in
//              place (32 bf16 of d per step: dk must be a multiple of 32;
//              other dk run the VDPBF16PS score tile), B = the Q pairs qp
//              as they are (qp[p·64 + x] is TDPBF16PS's B layout: pairs
//              along d, one column per query). Scaled after the store when
//              scale != 1 (flash passes 1 and scales in the softmax).
//   O += P·V   C = O (2 x 2 tiles of 16 rows x 16 columns), A = the P rows
//              pr[x·ldp + p] (pairs along keys, one row per query: written
//              so by the softmax, with no fp32 P, pair tile or transpose
//              buffer), B = the V pairs vp as they are (pairs along keys).
// Score tile: tiles 0-3 hold four C blocks, 4 holds A and 5-7 the B blocks
// in turn, so a K row block is loaded once per four TDPBF16PS. Shapes that
// do not fill a tile (fewer than 16 keys or rows, fewer than 16 key pairs)
// get a tile configuration of their own size instead of padding, so no
// tile reads past an operand. V is paired by the AVX512_BF16 kernel.
//
// Linux hands out the 8 KiB of tile state only to a process that asks
// (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)); the first call
// asks, once per process. When CPUID lacks AMX-BF16 or AVX512_BF16 or the
// kernel refuses, AmxBf16KernelsForCpu() is null and AmxBf16Unavailable()
// says why (the bench context prints it). Rounding is the VDPBF16PS
// kernels': bf16 products exact in fp32, fp32 sums (in the order the tile
// unit adds; denormals flushed).
#ifndef ATTNLAB_KERNELS_UKERNELS_BF16_AMX_H_
#define ATTNLAB_KERNELS_UKERNELS_BF16_AMX_H_

#include <cstdint>

#include "kernels/ukernels/bf16_avx512.h"

namespace attn::ukernels {

// The kernels when this CPU has AMX-BF16 (and AVX512_BF16 for the packing)
// and Linux granted the tile state, else null.
const Bf16Kernels* AmxBf16KernelsForCpu();
// Whether it has them (the tests' skip condition).
bool CpuHasAmxBf16();
// "" when CpuHasAmxBf16(), else why not ("this CPU has no AMX-BF16",
// "Linux refused the AMX tile state: ...").
const char* AmxBf16Unavailable();
// Whether the score kernel runs on tiles at this dk (else on VDPBF16PS).
inline bool AmxScoresTakeDk(int64_t dk) { return dk % 32 == 0; }

// The AMX peak loop (the bench's ceiling_amx): `rounds` rounds of four
// TDPBF16PS on tiles that stay in the tile registers (two A and two B
// tiles loaded once, four independent accumulators, nothing loaded or
// stored in the loop); returns the FLOPs done. Here, not in the bench, so
// that the tile configuration is written once. Only when CpuHasAmxBf16().
double AmxBf16PeakLoop(int64_t rounds);

// The kernels by name, for the micro-kernel list (ukernels.inc); only
// called when CpuHasAmxBf16().
inline void AmxBf16ScoreTile(const uint32_t* qp, const uint16_t* k, int64_t k_stride, int64_t nkeys,
                             int64_t dk, int64_t nvec, float scale, float* st, float* col_max) {
  AmxBf16KernelsForCpu()->score_tile(qp, k, k_stride, nkeys, dk, nvec, scale, st, col_max);
}
inline void AmxBf16PvRows(const uint32_t* pr, int64_t ldp, const uint32_t* vp, int64_t vps,
                          int64_t npairs, int64_t nrows, int64_t nvec, bool accumulate, float* o,
                          int64_t ldo) {
  AmxBf16KernelsForCpu()->pv_rows(pr, ldp, vp, vps, npairs, nrows, nvec, accumulate, o, ldo);
}

}  // namespace attn::ukernels

#endif  // ATTNLAB_KERNELS_UKERNELS_BF16_AMX_H_
