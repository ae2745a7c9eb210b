// The maximum over keys of a bf16 flash tile's fp32 scores Sᵀ (st[j·64 +
// x]: 64 queries per key row), for the intrinsics micro-kernels: the pair
// kernels' softmax maximum pass (softmax_to_rows), and the score tiles that hand it that maximum
// (col_max) from the rows they have just stored. One loop, so that both
// give the same bits: VMAXPS from -inf, key by key in order (a NaN score
// is passed over by the next key's VMAXPS, which returns its second
// operand when either is NaN). Compiled for AVX512F by its own target
// attribute, so it inlines into any function compiled for a superset.
#ifndef ATTNLAB_KERNELS_UKERNELS_COLUMN_MAX_AVX512_H_
#define ATTNLAB_KERNELS_UKERNELS_COLUMN_MAX_AVX512_H_

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include <cstdint>
#include <limits>

namespace attn::ukernels {

// mt[v] = max(mt[v], st[j·64 + 16v ..]) for keys j < nkeys, NV vectors.
template <int NV>
__attribute__((target("avx512f"))) inline void MaxOverKeys(const float* st, int64_t nkeys,
                                                           __m512* mt) {
  for (int64_t j = 0; j < nkeys; ++j) {
    for (int v = 0; v < NV; ++v) mt[v] = _mm512_max_ps(mt[v], _mm512_load_ps(st + j * 64 + v * 16));
  }
}

// The same for nvec <= 4 vectors chosen at run time.
__attribute__((target("avx512f"))) inline void MaxOverKeys(int64_t nvec, const float* st,
                                                           int64_t nkeys, __m512* mt) {
  switch (nvec) {
    case 1:
      return MaxOverKeys<1>(st, nkeys, mt);
    case 2:
      return MaxOverKeys<2>(st, nkeys, mt);
    case 3:
      return MaxOverKeys<3>(st, nkeys, mt);
    default:
      return MaxOverKeys<4>(st, nkeys, mt);
  }
}

__attribute__((target("avx512f"))) inline void SetMinusInfinity(__m512* mt, int64_t nvec) {
  for (int64_t v = 0; v < nvec; ++v)
    mt[v] = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
}

}  // namespace attn::ukernels

#endif  // x86-64 with GCC/Clang
#endif  // ATTNLAB_KERNELS_UKERNELS_COLUMN_MAX_AVX512_H_
