// What the decode P·V kernels on key pairs share (bf16_decode.cc on
// VDPBF16PS, i8_decode.cc on VPDPWSSD): both interleave V rows 2i, 2i+1
// word by word within 128-bit lanes, both sweep a tile in chunks of keys
// with several passes per chunk (column blocks x row pairs) that share the
// prefetch of the rows ahead. A plain header; the AVX-512 function is
// compiled for AVX512F by target attribute, which every caller has.
#ifndef ATTNLAB_KERNELS_UKERNELS_DECODE_PAIRS_H_
#define ATTNLAB_KERNELS_UKERNELS_DECODE_PAIRS_H_

#include <algorithm>
#include <cstdint>

#include "kernels/ukernels/prefetch.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace attn::ukernels {

// The rows pass `pass` of `passes` over the chunk of n keys at j0 prefetches
// (its share of the rows ahead, `prefetch` seen from the tile's first key),
// and how many beside each key pair, so that requests keep leaving while
// the later passes compute from L1.
struct PassPrefetch {
  PrefetchRows rows;
  int64_t per_pair;
};
inline PassPrefetch ChunkPassPrefetch(const PrefetchRows& prefetch, int64_t j0, int64_t n,
                                      int64_t passes, int64_t pass) {
  const int64_t share = (n + passes - 1) / passes;
  const int64_t pairs = (n + 1) / 2;
  PrefetchRows rows = prefetch.From(j0 + pass * share);
  rows.rows = std::min(rows.rows, share);
  return {rows, (share + pairs - 1) / pairs};
}

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
