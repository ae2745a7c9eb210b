// The tolerance every variant is held to: a per-row bound on the error of an
// fp32 attention against the exact result. Shared, through testing/compare.h,
// by the tests, the bench (its check before timing and the accuracy run),
// `attnlab check` and the fuzzer, so there is one derivation.
#ifndef ATTNLAB_REFERENCE_ERROR_BOUND_H_
#define ATTNLAB_REFERENCE_ERROR_BOUND_H_

#include <cstdint>
#include <string>

#include "kernels/problem.h"

namespace attn::reference {

// Per-row error bound of an fp32 attention against the exact result.
//
// With u = 2^-24 (fp32 unit roundoff), for query row i:
//   A  = max over visible keys j of scale·Σ_d |q_d k_jd| + |mask_ij|: the
//        magnitude the logits are computed from. Any summation order gives
//        |δ logit| <= (dk + 2)·u·A  (the γ_n bound for a length-dk dot product
//        plus the scale and mask additions).
//   Softmax: subtracting the max and exponentiating turn an absolute logit
//        error δ into a relative weight error <= 2δ + e_exp·u (e_exp = 8: a
//        few ulp for a vectorized exp); normalization adds <= (S + 2)·u.
//   Sums over the n visible keys: every variant forms them in blocks of at
//        most kKeySumBlock (= b) keys and adds the block sums
//        (kernels/problem.h, "Accumulation"), so their worst-case relative
//        error is S·u with S = min(n, b + 2·ceil(n / b)): b roundings inside
//        a block, one per block added, one per online-softmax (flash) rescale
//        of the running sum. For n <= b that is the plain n·u; at n = 2^25
//        it is 33792·u where a running sum's n·u (= 2) said nothing: a
//        kernel off by 100% passed.
//   O = Σ p_j v_j / Σ p_j: |δO| <= Vmax·(2δ + (e_exp + 2·S + 4)·u), with
//        Vmax = max |v| over the row's visible keys.
//   lse = max + log Σ p: |δlse| <= δ + (e_exp + S + 2)·u + u·|lse|.
// The tolerance is kSafety times that worst-case bound. Errors in correct
// kernels are far below it (sums of rounding errors grow like sqrt(n), not
// n); a wrong mask, a dropped key or a missed rescale is off by O(Vmax).
inline constexpr double kSafety = 4.0;
struct RowBound {
  double o = 0;        // absolute, per element of O
  double lse = 0;      // absolute
  double weights = 0;  // absolute, per weight
};
RowBound ErrorBound(const Problem& problem, int64_t b, int64_t h, int64_t i);

// S above: the effective length of a blocked sum over n keys.
double SummationLength(int64_t n);

// A running comparison of a kernel's outputs with the reference.
struct Comparison {
  bool ok = true;
  double max_abs_error = 0;      // over finite expected values
  double max_rel_error = 0;      // |err| / max(|expected|, tiny)
  double worst_bound_ratio = 0;  // max |err| / bound: <= 1 passes
  double bound_at_worst = 0;     // the bound of the element with that ratio
  std::string first_failure;     // "O[b=0,h=1,i=3,d=5] got ... want ... (bound ...)"
};

// The rule for one element: NaN must match NaN, +-inf must match exactly,
// a finite expected value must be within `bound` (an infinite bound accepts
// anything but NaN). Updates `c`; `where` names the element in the first
// failure.
bool CompareElement(double got, double want, double bound, Comparison& c, const std::string& where);

}  // namespace attn::reference

#endif  // ATTNLAB_REFERENCE_ERROR_BOUND_H_
