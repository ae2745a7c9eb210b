// A 16 x 16 transpose of 32-bit elements in AVX-512 registers, for the
// intrinsics micro-kernels (bf16_avx512.cc pairs Q and turns P pairs into
// rows with it). Compiled for AVX512F by its own target
// attribute, so it inlines into any function compiled for a superset.
#ifndef ATTNLAB_KERNELS_UKERNELS_TRANSPOSE_AVX512_H_
#define ATTNLAB_KERNELS_UKERNELS_TRANSPOSE_AVX512_H_

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

namespace attn::ukernels {

// In place: row i of r becomes column i (unpack 32, unpack 64, then 128-bit
// lanes twice: 64 shuffles for 256 elements).
__attribute__((target("avx512f"))) inline void Transpose16x16(__m512i r[16]) {
  __m512i t[16];
  for (int g = 0; g < 16; g += 4) {
    t[g] = _mm512_unpacklo_epi32(r[g], r[g + 1]);
    t[g + 1] = _mm512_unpackhi_epi32(r[g], r[g + 1]);
    t[g + 2] = _mm512_unpacklo_epi32(r[g + 2], r[g + 3]);
    t[g + 3] = _mm512_unpackhi_epi32(r[g + 2], r[g + 3]);
    r[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);  // columns 4l of rows g..g+3
    r[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
    r[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
    r[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
  }
}

}  // namespace attn::ukernels

#endif  // x86-64 with GCC/Clang
#endif  // ATTNLAB_KERNELS_UKERNELS_TRANSPOSE_AVX512_H_
