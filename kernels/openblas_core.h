// Which of OpenBLAS's kernels run the blas variant, the chunked panels and the
// bench's sgemm ceiling.
//
// Debian's libopenblas (0.3.21) is built DYNAMIC_ARCH: when it is loaded it
// reads CPUID and picks a "core", a set of kernels written for one
// microarchitecture. A CPU newer than the release is not in its tables, and
// then it falls back to its Prescott (SSE3) kernels. The Emerald Rapids VM
// (Intel, family 6, model 207; AVX-512, AVX512_BF16) gets Prescott: sgemm of
// the bench's attention products ran 4.1-4.4x slower than with the SkylakeX or
// Cooperlake kernels the CPU can run (kernels/DESIGN.md, "OpenBLAS on a CPU
// it does not know"), and every "fraction of the sgemm ceiling" said flash
// was 5x a BLAS user's speed where it is about 1.2x.
//
// OPENBLAS_CORETYPE names the core instead, for the whole process, and is
// read when the library loads, before main. UseOpenBlasCoreForThisCpu()
// does the same later: when OpenBLAS fell back to Prescott on a CPU with
// AVX2 and FMA, and OPENBLAS_CORETYPE is unset, it re-runs OpenBLAS's own
// core selection with the core for the CPU's widest ISA (AVX512_BF16:
// Cooperlake; AVX-512 F/BW/DQ/VL/CD: SkylakeX; AVX2 + FMA: Haswell).
// A user's OPENBLAS_CORETYPE always wins (OPENBLAS_CORETYPE=Prescott keeps
// the fallback). It swaps a global of the library (gotoblas_dynamic_quit and
// gotoblas_dynamic_init, exported by every DYNAMIC_ARCH build and absent
// from others, which are left as they are), so it is for a program's start,
// before any thread calls BLAS: attnlab_bench and the attnlab CLI call it
// first thing; the library itself never does.
#ifndef ATTNLAB_KERNELS_OPENBLAS_CORE_H_
#define ATTNLAB_KERNELS_OPENBLAS_CORE_H_

#include <string>

namespace attn {

struct OpenBlasCore {
  // The core that runs now (openblas_get_corename()).
  std::string name;
  // The core OpenBLAS chose from CPUID when it was loaded (what a program
  // that does not call UseOpenBlasCoreForThisCpu runs).
  std::string detected;
  // Who chose `name`: "OpenBLAS" (its own detection), "OPENBLAS_CORETYPE"
  // (the user's variable) or "attnlab" (the fallback replaced).
  std::string chosen_by;
};

// OpenBLAS's core for this process; replaces a Prescott fallback as the
// comment above says, once (later calls return the first call's result).
// Not thread-safe against concurrent BLAS calls: call it at program start.
const OpenBlasCore& UseOpenBlasCoreForThisCpu();

// One line for people: "OpenBLAS core Cooperlake (OpenBLAS chose Prescott,
// its fallback for a CPU it does not know; OPENBLAS_CORETYPE chooses)".
std::string DescribeOpenBlasCore(const OpenBlasCore& core);

// The core for a CPU with these ISAs, as OpenBLAS names it ("" when the CPU
// has no AVX2 + FMA: then Prescott is right).
std::string OpenBlasCoreForIsa(bool avx2_fma, bool avx512, bool avx512_bf16);

}  // namespace attn

#endif  // ATTNLAB_KERNELS_OPENBLAS_CORE_H_
