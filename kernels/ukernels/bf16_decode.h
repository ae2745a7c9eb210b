// AVX512_BF16 decode micro-kernels: flash's few-row blocks (decode, a GQA
// group of <= 4 query rows against a long K/V cache) with bf16 K or V read
// in place, on VDPBF16PS (one instruction: 16 lanes x 2 bf16 products added
// to fp32). The fp32 few-row kernels (score_rows-inl.h, pv_tile-inl.h)
// convert each bf16 vector to two fp32 vectors and spend one FMA per row on
// each: with 4 rows (GQA-4) those instructions bound decode whenever K and V
// came from the caches. Here one VDPBF16PS per row covers 32 elements of d
// (scores) or 2 keys (P·V), with no conversion of K or V at all (Zen 4 VM,
// GQA-4, d = 128, 1 thread: 0.70-0.80x the time from L3, 0.9 from DRAM,
// where the memory bounds both; kernels/DESIGN.md, "Decode on VDPBF16PS").
//
// Scores (score_rows): dot products along d, as the fp32 few-row kernels,
// with each row's Q as bf16 words in registers (dk <= 128: 4 rows x 4
// vectors) and K rows loaded as 32 bf16 at a time, key by key in address
// order (the hardware prefetcher follows it). 2 keys x nrows accumulators,
// then a transpose-reduce per row leaves 4 keys' sums in a 128-bit store.
// Q must be bf16: a bf16 Q as it is, any other Q rounded to bf16 once,
// which kernels/problem.h allows when Q and K types differ.
//
// P·V (pv_rows): pairs along keys. The weights of keys 2i and 2i+1 of a row
// become one 32-bit pair (VCVTNE2PS2BF16: P is rounded to bf16, allowed for
// a bf16 V), broadcast; V rows 2i and 2i+1 are interleaved word by word in
// registers (VPUNPCKLWD/HWD: per 128-bit lane, so a vector's 16 columns are
// {0-3, 8-11, 16-19, 24-27} + 32·k or the other half, put back in order
// once per tile). Rows go in pairs (2 rows x 128 columns = 16 fp32
// accumulators, no spills) over chunks of 64 keys: the first pass reads the
// chunk's V rows from memory in address order, the second (rows 2-3) from
// L1 (16 KiB at dv = 128); each pass prefetches half of the chunk's rows
// ahead. (One pass of 3 rows in registers plus one in L1, the fp32
// kernel's scheme, needs 31 of the 32 registers: gcc 12 spilled it.) The
// tile's sums start at zero and are added to O at its end
// (kernels/problem.h, "Accumulation").
//
// Memory traffic: K and V once, in place, at 2 bytes an element; Q, S and
// the tile's sums from L1. Reached through Bf16DecodeKernelsForCpu(), null
// unless CPUID has AVX512F/BW/DQ/VL and AVX512_BF16 (as bf16_avx512.h).
#ifndef ATTNLAB_KERNELS_UKERNELS_BF16_DECODE_H_
#define ATTNLAB_KERNELS_UKERNELS_BF16_DECODE_H_

#include <cstdint>

#include "kernels/ukernels/prefetch.h"

namespace attn::ukernels {

// Rows a decode block may have for these kernels: at most 4 (4 rows of 4 Q
// vectors are half the register file), and at least 2: one row (MHA) is
// bound by the memory either way, and the fp32 kernels' read pattern ran
// it 5% faster from DRAM (Zen 4 VM, Lk = 65536, 1 thread; 0.95x from L3
// at Lk = 4096, which MHA caches rarely are). Then the
// largest dk (Q in registers) and dv (the tile's sums on the stack).
inline constexpr int64_t kBf16DecodeMinRows = 2;
inline constexpr int64_t kBf16DecodeRows = 4;
inline constexpr int64_t kBf16DecodeMaxDk = 128;
inline constexpr int64_t kBf16DecodeMaxDv = 512;
// Keys per P·V chunk: their V rows stay in L1 between column blocks.
inline constexpr int64_t kBf16DecodeChunk = 64;

inline bool Bf16DecodeTakesRows(int64_t nrows) {
  return nrows >= kBf16DecodeMinRows && nrows <= kBf16DecodeRows;
}
// Whether the kernels take a head dimension: whole 32-element vectors of
// bf16, at most the maximum.
inline bool Bf16DecodeTakesDk(int64_t dk) {
  return dk > 0 && dk % 32 == 0 && dk <= kBf16DecodeMaxDk;
}
inline bool Bf16DecodeTakesDv(int64_t dv) {
  return dv > 0 && dv % 32 == 0 && dv <= kBf16DecodeMaxDv;
}

struct Bf16DecodeKernels {
  // st[r·lds + j] = scale·Σ_d qw[r·dk + d]·k[j·k_stride + d] for r < nrows
  // (<= kBf16DecodeRows), j < nkeys: qw the rows' bf16 words (64-byte
  // aligned), k bf16 rows (2-byte aligned), Bf16DecodeTakesDk(dk). Rows of
  // `prefetch` are brought into L2 beside the keys of the same index.
  void (*score_rows)(const uint16_t* qw, int64_t nrows, const uint16_t* k, int64_t k_stride,
                     int64_t nkeys, int64_t dk, float scale, float* st, int64_t lds,
                     const PrefetchRows& prefetch);
  // o[r·ldo + c] (+)= Σ_j bf16(p[r·ldp + j])·v[j·v_stride + c] for r < nrows
  // (<= kBf16DecodeRows), c < dv (Bf16DecodeTakesDv), j < nkeys (<= 1024):
  // overwrite unless `accumulate`. p fp32 weights, v bf16 rows (2-byte
  // aligned), o any alignment. Prefetch as score_rows.
  void (*pv_rows)(const float* p, int64_t ldp, const uint16_t* v, int64_t v_stride, int64_t nkeys,
                  int64_t nrows, int64_t dv, bool accumulate, float* o, int64_t ldo,
                  const PrefetchRows& prefetch);
};

// The kernels when this CPU has AVX512F, BW, DQ, VL and AVX512_BF16, else
// null.
const Bf16DecodeKernels* Bf16DecodeKernelsForCpu();

// The kernels by name, without prefetching, for the micro-kernel list
// (ukernels.inc); only called when CpuHasAvx512Bf16().
inline void Bf16DecodeScoreRows(const uint16_t* qw, int64_t nrows, const uint16_t* k,
                                int64_t k_stride, int64_t nkeys, int64_t dk, float scale, float* st,
                                int64_t lds) {
  Bf16DecodeKernelsForCpu()->score_rows(qw, nrows, k, k_stride, nkeys, dk, scale, st, lds, {});
}
inline void Bf16DecodePvRows(const float* p, int64_t ldp, const uint16_t* v, int64_t v_stride,
                             int64_t nkeys, int64_t nrows, int64_t dv, bool accumulate, float* o,
                             int64_t ldo) {
  Bf16DecodeKernelsForCpu()->pv_rows(p, ldp, v, v_stride, nkeys, nrows, dv, accumulate, o, ldo, {});
}

}  // namespace attn::ukernels

#endif  // ATTNLAB_KERNELS_UKERNELS_BF16_DECODE_H_
