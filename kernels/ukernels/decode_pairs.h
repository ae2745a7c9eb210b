// What the decode P·V kernels on key pairs share (bf16_decode.cc on
// VDPBF16PS, i8_decode.cc on VPDPWSSD): both interleave V rows 2i, 2i+1
// word by word within 128-bit lanes and put the columns back in order once
// per tile. A plain header; the function is compiled for AVX512F by target
// attribute, which every caller has. (Their chunk loops stay apart: with
// the prefetch shares computed here, gcc 12 scheduled the bf16 kernel's
// loop worse, GQA-4 decode 1.07x the converting kernels' time where it
// had been 0.86x.)
#ifndef ATTNLAB_KERNELS_UKERNELS_DECODE_PAIRS_H_
#define ATTNLAB_KERNELS_UKERNELS_DECODE_PAIRS_H_

#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace attn::ukernels {

#if defined(__x86_64__) && defined(__GNUC__)
// o (+)= a row's tile sums t (dv columns, a multiple of 32), each 32-column
// piece's two vectors put back in column order: the pair interleave leaves
// columns {0-3, 8-11, 16-19, 24-27} in the first and the rest in the
// second.
__attribute__((target("avx512f"))) inline void PutPairColumnsInOrder(const float* t, int64_t dv,
                                                                     bool accumulate, float* o) {
  const __m512i first = _mm512_set_epi32(23, 22, 21, 20, 7, 6, 5, 4, 19, 18, 17, 16, 3, 2, 1, 0);
  const __m512i second =
      _mm512_set_epi32(31, 30, 29, 28, 15, 14, 13, 12, 27, 26, 25, 24, 11, 10, 9, 8);
  for (int64_t c = 0; c < dv; c += 32) {
    const __m512 lo = _mm512_load_ps(t + c), hi = _mm512_load_ps(t + c + 16);
    __m512 o0 = _mm512_permutex2var_ps(lo, first, hi);
    __m512 o1 = _mm512_permutex2var_ps(lo, second, hi);
    if (accumulate) {
      o0 = _mm512_add_ps(o0, _mm512_loadu_ps(o + c));
      o1 = _mm512_add_ps(o1, _mm512_loadu_ps(o + c + 16));
    }
    _mm512_storeu_ps(o + c, o0);
    _mm512_storeu_ps(o + c + 16, o1);
  }
}
#endif

}  // namespace attn::ukernels

#endif  // ATTNLAB_KERNELS_UKERNELS_DECODE_PAIRS_H_
