// The calling thread's floating-point mode, for tests of kernels that change
// it while they run (kernels/internal/flush_subnormals.h). x86 only.
#ifndef ATTNLAB_TESTING_FP_MODE_H_
#define ATTNLAB_TESTING_FP_MODE_H_

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>

namespace attn::testing {

// MXCSR without its sticky exception flags (bits 0-5), which any arithmetic
// sets (the reference's too): the mode a kernel must leave as it found it.
inline unsigned FpControlMode() { return _mm_getcsr() & ~0x3Fu; }

// The caller's own flush-to-zero on or off for one scope; MXCSR as it was
// after.
class CallerFtzScope {
 public:
  explicit CallerFtzScope(bool on) : saved_(_mm_getcsr()) {
    _mm_setcsr(on ? saved_ | _MM_FLUSH_ZERO_ON : saved_ & ~_MM_FLUSH_ZERO_ON);
  }
  ~CallerFtzScope() { _mm_setcsr(saved_); }
  CallerFtzScope(const CallerFtzScope&) = delete;
  CallerFtzScope& operator=(const CallerFtzScope&) = delete;

 private:
  unsigned saved_;
};

}  // namespace attn::testing

#endif
#endif  // ATTNLAB_TESTING_FP_MODE_H_
