// While a FlushSubnormalsScope lives, the calling thread's fp32 vector
// arithmetic rounds results below 2^-126 (subnormals) to zero (x86 MXCSR.FTZ;
// nothing elsewhere); the thread's previous mode comes back when it ends.
//
// Why: Intel cores take a microcode assist for every subnormal result. flash's
// P·V multiplies weights down to 2^-126 (FastExp2 returns exactly 0 below)
// by V and sums them, so rows whose weights span the whole exponent range —
// ALiBi far from the diagonal, any logits spread over ~87 — make subnormal
// products and sums all along: ALiBi flash at N = 2048, d = 128 ran 1.5x the
// time of plain flash on the Sapphire Rapids VM (its backward 1.7x), 1.03x
// with FTZ (AMD's Zen 4 takes no assist: 1.00-1.03x either way;
// kernels/DESIGN.md, "Subnormals"). flash and its backward take one per work
// item.
// What it may change in a result is an absolute error under 2^-126 per
// operation, which kernels/problem.h ("Element types") allows and
// reference/error_bound.h bounds. Only results: a subnormal input (a user's
// V) is still read as it is (DAZ stays off).
#ifndef ATTNLAB_KERNELS_INTERNAL_FLUSH_SUBNORMALS_H_
#define ATTNLAB_KERNELS_INTERNAL_FLUSH_SUBNORMALS_H_

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace attn {

class FlushSubnormalsScope {
 public:
#if defined(__x86_64__) || defined(__i386__)
  FlushSubnormalsScope() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | _MM_FLUSH_ZERO_ON); }
  ~FlushSubnormalsScope() { _mm_setcsr(saved_); }
#else
  FlushSubnormalsScope() = default;
#endif
  FlushSubnormalsScope(const FlushSubnormalsScope&) = delete;
  FlushSubnormalsScope& operator=(const FlushSubnormalsScope&) = delete;

 private:
#if defined(__x86_64__) || defined(__i386__)
  unsigned saved_;
#endif
};

}  // namespace attn

#endif  // ATTNLAB_KERNELS_INTERNAL_FLUSH_SUBNORMALS_H_
