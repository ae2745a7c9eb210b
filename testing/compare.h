// The one comparison of a kernel's outputs with the fp64 reference, used by
// the tests, the bench's accuracy mode and its check before timing,
// `attnlab check` and the fuzzer: element by element, by the rule of
// reference::CompareElement (NaN must match NaN, ±inf must match exactly, a
// finite value must be within the bound), against the per-row bound derived
// in reference/error_bound.h. No GoogleTest here.
//
// Also the condition under which a row can be compared at all when its inputs
// hold extreme values (LogitsRepresentable, kernels/problem.h).
#ifndef ATTNLAB_TESTING_COMPARE_H_
#define ATTNLAB_TESTING_COMPARE_H_

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/problem.h"
#include "reference/error_bound.h"
#include "reference/reference.h"
#include "testing/problem_data.h"

namespace attn::testing {

using reference::Comparison;
using reference::ErrorBound;
using reference::kSafety;
using reference::RowBound;

// The outputs of a row CompareRow compares; each only where the problem has
// it (lse, weights are optional outputs).
struct Outputs {
  bool o = true;
  bool lse = true;
  bool weights = true;
};

// Compares query row (b, h, i) of what a kernel wrote into `problem` (O
// through its strides; lse and weights when the problem has them) with row
// `want_row` of `want` (the reference's contiguous [B, H, Lq] rows, with
// weights when the problem has them), within `bound`. Updates `c`: the first
// failure names the element, "O[b=0,h=1,i=3,d=5] got ... want ... (bound ...)".
// `want_row` is (b·H + h)·Lq + i for the reference of the same problem, 0 for
// the reference of the row re-posed as a one-query problem.
void CompareRow(const Problem& problem, int64_t b, int64_t h, int64_t i,
                const reference::Result& want, int64_t want_row, const RowBound& bound,
                Comparison& c, Outputs outputs = {});

// ErrorBound of every query row, in the reference's [B, H, Lq] order. They
// depend on the inputs only: compute them once to compare several kernels.
std::vector<RowBound> RowBounds(const Problem& problem);

// Every row of `problem` (CompareRow) against the reference of the same
// problem, with the rows' bounds (RowBounds).
Comparison CompareToReference(const Problem& problem, const reference::Result& want,
                              std::span<const RowBound> bounds);
Comparison CompareToReference(const Problem& problem, const reference::Result& want);
// The same for ProblemData, which also fails when the kernel wrote into O's
// row padding.
Comparison CompareToReference(const ProblemData& data, const reference::Result& want);

// ---------------------------------------------------------------- backward

// Compares the gradients a kernel wrote into `problem` (dQ, dK, dV through
// their strides) with `want` (reference::Backward of the same problem) within
// `bounds` (reference::GradErrorBounds), element by element by
// CompareElement. The first failure names the element:
// "dK[b=0,h=1,j=3,d=5] got ... want ... (bound ...)" (h is the kv head for dK
// and dV; dQ rows are i); then d_sinks, when the problem gives it.
Comparison CompareGradients(const GradProblem& problem, const reference::GradResult& want,
                            const reference::GradBounds& bounds);

// ---------------------------------------------------------------- extreme values

// fp32 rounding to nearest overflows from 2^128 - 2^103 on (FLT_MAX is
// 2^128 - 2^104).
inline constexpr double kFp32Overflow = 0x1p128 - 0x1p103;

// g = (dk + 2)·2^-24: the relative rounding error of an fp32 logit (a
// length-dk dot product, the scale and the mask addition).
double LogitRounding(int64_t head_dim);

// Whether fp32 can evaluate every logit of query row (b, h, i) without
// overflow, the condition of kernels/problem.h under which the row agrees with
// the reference within the derived bound, for any finite logit up to ±FLT_MAX:
// for every structurally visible key j, in double,
//   (1 + g)·Σ_d |q_d·k_jd| and (1 + g)·scale·Σ_d |q_d·k_jd| + |mask_ij|
// stay below kFp32Overflow (a ±inf mask entry counts as 0: it masks or
// poisons the key, it does not overflow), and so does (1 + g)·scale·|q_d| for
// every d (kernels that pre-scale Q). False when an input it reads is NaN.
// Past it, a variant may overflow where another does not (a NaN row).
bool LogitsRepresentable(const Problem& problem, int64_t b, int64_t h, int64_t i);

}  // namespace attn::testing

#endif  // ATTNLAB_TESTING_COMPARE_H_
