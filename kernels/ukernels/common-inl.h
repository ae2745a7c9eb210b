// Per-target definitions every micro-kernel shares: the float vector type,
// the register budget the tile shapes are chosen for, and LoadTail.
//
// The micro-kernels (kernels/ukernels/*-inl.h) are the tuned inner loops of
// the variants. Each is a function with a written contract: operand layouts,
// tile shape, alignment, what it may read. They know nothing of problems,
// masks or threads: a variant (kernels/*.cc) turns a problem into pointers,
// strides and counts and calls them. They are listed once, in
// kernels/ukernels/ukernels.inc, which the tests (tests/ukernel_test.cc) and
// the benchmarks (bench/ukernel_bench.cc) expand.
//
// Highway's toggling include guard: a file that includes this after
// hwy/foreach_target.h gets one copy per compiled target, inside
// attn::HWY_NAMESPACE.
#if defined(ATTNLAB_KERNELS_UKERNELS_COMMON_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNLAB_KERNELS_UKERNELS_COMMON_INL_H_
#undef ATTNLAB_KERNELS_UKERNELS_COMMON_INL_H_
#else
#define ATTNLAB_KERNELS_UKERNELS_COMMON_INL_H_
#endif

#include <cstddef>
#include <cstdint>
#include <limits>

#include "hwy/highway.h"
#include "kernels/ukernels/prefetch.h"  // PrefetchRows

// Before every loop over a register block's rows, keys or vectors (a loop
// whose count is a template argument or a constant). gcc 12 keeps an array of
// accumulators such as `VF acc[3][8]` in registers only when every loop that
// indexes it has been unrolled by the time its scalar replacement pass (SRA)
// runs, which is before it unrolls most nested loops: one loop left rolled
// (an initialisation, the final store) and the whole array lived on the stack,
// every FMA a load and a store through L1 (`vfmadd213ps 0x88(%rsp)`): GQA-4
// decode's P·V (PvFourRowsOnePass) ran so, and with the pragma GQA-4 decode
// took 0.70x the time with int8 K/V, 0.82x with bf16 and 0.88x with fp32
// (Sapphire Rapids VM, Lk = 65536, d = 128, 1 thread). The pragma unrolls
// the loop early. tests/codegen_check.py reads the library's disassembly
// for accumulators on the stack (ctest -L ukernel).
#ifndef ATTN_UNROLLED
#define ATTN_UNROLLED HWY_UNROLL(32)
#endif

HWY_BEFORE_NAMESPACE();
namespace attn {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

inline constexpr float kInf = std::numeric_limits<float>::infinity();
inline constexpr size_t kMaxLanes = HWY_MAX_BYTES / sizeof(float);

// Vector registers available: AVX-512 has 32, the others 16 (or fewer).
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
inline constexpr int kVecRegisters = 32;
#else
inline constexpr int kVecRegisters = 16;
#endif
// Vectors per row of the 6-row register blocks of ScoreTile and PvTile:
// 6 x 4 accumulators + 4 operand vectors + 1 broadcast = 29 of 32 registers
// on AVX-512; with 16 registers 6 x 2 + 2 + 1 = 15 (6 x 4 spilled
// accumulators to the stack on AVX2: a load and a store per FMA).
inline constexpr int kTileVectors = kVecRegisters == 32 ? 4 : 2;
// 16-lane vectors and 32 registers (AVX-512): the 4-row decode kernels fill
// all of them; elsewhere (16 registers) they would spill.
inline constexpr bool kZmmFile = HWY_TARGET != HWY_SCALAR && HWY_MAX_BYTES == 64;

// The first n < Lanes floats at p (possibly unaligned), zeros after: never
// reads past p + n (Highway 1.0.3's MaskedLoad on SSE4/scalar loads the
// whole, aligned vector).
HWY_INLINE VF LoadTail(const float* HWY_RESTRICT p, int64_t n) {
  const DF d;
  alignas(64) float buf[64 / sizeof(float)] = {};
  for (int64_t i = 0; i < n; ++i) buf[i] = p[i];
  return hn::Load(d, buf);
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace attn
HWY_AFTER_NAMESPACE();

#endif  // ATTNLAB_KERNELS_UKERNELS_COMMON_INL_H_
