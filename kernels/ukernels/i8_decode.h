// AVX512_VNNI decode micro-kernels: flash's few-row blocks (decode: MHA's
// one row or a GQA group of up to 4) against an int8 K/V cache read in
// place, as exact integer dot products (VPDPWSSD: 16 lanes x 2 products of
// int16 words added to int32).
//
// Why integers: the fp32 kernels (score_rows-inl.h, pv_tile-inl.h) widen
// every 16 int8 elements with VPMOVSXBD and VCVTDQ2PS and spend one FMA per
// row on them; those instructions, not the memory, bounded int8 decode
// (Zen 4 VM, d = 128, GQA-4: the int8 bytes came at 11-13 GB/s where bf16
// came at 25). bf16 operands for VDPBF16PS need several instructions per 32
// int8 values (tried twice: kernels/DESIGN.md, "Decode on VDPBF16PS"). Here
// one VPMOVSXBW turns 32 int8 values into words and one VPDPWSSD per row
// covers them. The other operand is int16 too: Q quantized once per block
// (QuantizeQueryRow: a step of max|q| / 32767 per row) and the weights per
// row and chunk of 64 keys (a step of the chunk's max |p| / 32767). Products
// and sums are exact in int32; the roundings beyond fp32 are those two
// quantizations, which kernels/problem.h ("Element types") allows for int8
// K and V and reference/error_bound.cc bounds (Q: a step per element; O:
// 64·128 steps of the weights per chunk, below a tenth of what rounding P
// and V to bf16 may cost).
//
// Scores (score_rows): dot products along d, as bf16_decode.h, with each
// row's Q words in registers (dk <= 128: 4 rows x 4 vectors) and K rows
// loaded as 32 int8 at a time, key by key in address order; 2 keys x nrows
// int32 accumulators, a transpose-reduce per 4 keys, then one conversion
// to fp32 and one multiply by the row's scale (the softmax scale times Q's
// step; the key's own scale is applied by the caller as for every int8 K).
// |q| <= 32767, |k| <= 128, dk <= 128 keep every sum below 2^29.
//
// P·V (pv_rows): pairs along keys, as bf16_decode.h: a row's int16 weights
// of keys 2i, 2i+1 as one broadcast pair, V rows 2i, 2i+1 widened to words
// and interleaved (VPUNPCKLWD/HWD, per 128-bit lane; the columns put back
// in order once per tile), every row in one pass over a column block (16
// int32 accumulators: 1-2 rows x 128 columns, 3-4 rows x 64) over chunks of
// 64 keys, the first pass from memory, the second from L1. At a
// chunk's end its sums (below 64·32767·128 < 2^29) are converted and
// multiplied by the chunk's step into the tile's fp32 sums.
//
// gcc 12 kept the accumulators of both loops in two registers each (a copy
// per step) and spilled some with the _mm512_dpwssd_epi32 intrinsic; the
// instruction is an asm statement (DotWords) instead.
//
// Memory traffic: K and V once, in place, 1 byte an element; Q, S and the
// tile's sums from registers and L1. Measured (Zen 4 VM, d = 128, 1 thread,
// same data, against the fp32 kernels that convert in registers): GQA-4
// 0.78-0.81x the time from DRAM (Lk = 65536), 0.86-0.89x from L3; MHA
// 0.77-0.84x and 0.65x (kernels/DESIGN.md, "int8 decode on VPDPWSSD"). Reached through
// I8DecodeKernelsForCpu(), null unless CPUID has AVX512F/BW/DQ/VL and
// AVX512_VNNI.
#ifndef ATTNLAB_KERNELS_UKERNELS_I8_DECODE_H_
#define ATTNLAB_KERNELS_UKERNELS_I8_DECODE_H_

#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/ukernels/prefetch.h"

namespace attn::ukernels {

// Rows a decode block may have for the kernels: 1-4 (4 rows of 4 Q vectors
// are half the register file; unlike bf16's, one row (MHA) gains too: its
// conversions bound it as well). Then the head dimensions they take (whole
// 32-element vectors; dk: Q in registers; dv: the tile's sums on the stack).
inline constexpr int64_t kI8DecodeRows = 4;
inline constexpr int64_t kI8DecodeMaxDk = 128;
inline constexpr int64_t kI8DecodeMaxDv = 512;
// Keys per P·V chunk: their V rows stay in L1 between column blocks, and
// the weights get one int16 step per chunk and row.
inline constexpr int64_t kI8DecodeChunk = 64;

inline bool I8DecodeTakesRows(int64_t nrows) { return nrows >= 1 && nrows <= kI8DecodeRows; }
inline bool I8DecodeTakesDk(int64_t dk) { return dk > 0 && dk % 32 == 0 && dk <= kI8DecodeMaxDk; }
inline bool I8DecodeTakesDv(int64_t dv) { return dv > 0 && dv % 32 == 0 && dv <= kI8DecodeMaxDv; }

// A query row quantized for the kernel: qw[d] = round(q[d] / step) with
// step = max|q| / 32767 (|qw| <= 32767), so q[d] = step·qw[d] within
// step / 2. Returns step (0 for an all-zero or subnormal row, whose words
// are 0). A row with a non-finite element has no such form: the caller keeps
// it off the kernel (returns NaN then).
inline float QuantizeQueryRow(const float* q, int64_t dk, int16_t* qw) {
  float max_abs = 0;
  for (int64_t d = 0; d < dk; ++d) max_abs = std::fmax(max_abs, std::fabs(q[d]));
  if (!std::isfinite(max_abs)) return NAN;
  // Zero, or subnormal (which flash's flush-to-zero scope reads as zero, as
  // the fp32 kernels do; max / 32767 would underflow to a step of 0).
  if (!(max_abs >= std::numeric_limits<float>::min())) {
    for (int64_t d = 0; d < dk; ++d) qw[d] = 0;
    return 0;
  }
  const float step = max_abs / 32767.0f;
  for (int64_t d = 0; d < dk; ++d) {
    const float w = std::nearbyint(q[d] / step);
    qw[d] = static_cast<int16_t>(std::fmax(-32767.0f, std::fmin(32767.0f, w)));
  }
  return step;
}

struct I8DecodeKernels {
  // st[r·lds + j] = row_scale[r]·Σ_d qw[r·dk + d]·k[j·k_stride + d] for
  // r < nrows (<= kI8DecodeRows), j < nkeys: qw the rows' int16 words
  // (64-byte aligned), k int8 rows, I8DecodeTakesDk(dk). Rows of `prefetch`
  // are brought into L2 beside the keys of the same index.
  void (*score_rows)(const int16_t* qw, int64_t nrows, const int8_t* k, int64_t k_stride,
                     int64_t nkeys, int64_t dk, const float* row_scale, float* st, int64_t lds,
                     const PrefetchRows& prefetch);
  // o[r·ldo + c] (+)= Σ_j p[r·ldp + j]·v[j·v_stride + c] for r < nrows
  // (<= kI8DecodeRows), c < dv (I8DecodeTakesDv), j < nkeys (<= 1024):
  // overwrite unless `accumulate`. p fp32 weights with the V rows' scales
  // folded in, quantized to int16 per row and chunk of kI8DecodeChunk keys
  // (step = the chunk's max |p| / 32767); v int8 rows; o any alignment.
  // Returns false, with o untouched, when a weight is not finite. Prefetch
  // as score_rows.
  bool (*pv_rows)(const float* p, int64_t ldp, const int8_t* v, int64_t v_stride, int64_t nkeys,
                  int64_t nrows, int64_t dv, bool accumulate, float* o, int64_t ldo,
                  const PrefetchRows& prefetch);
};

// The kernels when this CPU has AVX512F, BW, DQ, VL and AVX512_VNNI, else
// null.
const I8DecodeKernels* I8DecodeKernelsForCpu();
bool CpuHasAvx512Vnni();
// The VPDPWSSD peak loop (the bench's ceiling_vpdpwssd): `rounds` rounds of
// 12 independent VPDPWSSD on registers (nothing loaded or stored); returns
// the operations done, counted as the fp32 kernels' FLOPs are (64 per
// instruction: 16 lanes x 2 products x multiply and add). Only when
// CpuHasAvx512Vnni(); 0 otherwise.
double I8DotPeakLoop(int64_t rounds);

// The kernel by name, without prefetching, for the micro-kernel list
// (ukernels.inc); only called when CpuHasAvx512Vnni().
inline void I8DecodeScoreRows(const int16_t* qw, int64_t nrows, const int8_t* k, int64_t k_stride,
                              int64_t nkeys, int64_t dk, const float* row_scale, float* st,
                              int64_t lds) {
  I8DecodeKernelsForCpu()->score_rows(qw, nrows, k, k_stride, nkeys, dk, row_scale, st, lds, {});
}

inline bool I8DecodePvRows(const float* p, int64_t ldp, const int8_t* v, int64_t v_stride,
                           int64_t nkeys, int64_t nrows, int64_t dv, bool accumulate, float* o,
                           int64_t ldo) {
  return I8DecodeKernelsForCpu()->pv_rows(p, ldp, v, v_stride, nkeys, nrows, dv, accumulate, o, ldo,
                                          {});
}

}  // namespace attn::ukernels

#endif  // ATTNLAB_KERNELS_UKERNELS_I8_DECODE_H_
