// The tolerance every variant is held to: a per-row bound on the error of an
// fp32 attention against the exact result. Shared, through testing/compare.h,
// by the tests, the bench (its check before timing and the accuracy run),
// `attnlab check` and the fuzzer, so there is one derivation.
#ifndef ATTNLAB_REFERENCE_ERROR_BOUND_H_
#define ATTNLAB_REFERENCE_ERROR_BOUND_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/problem.h"
#include "reference/reference.h"

namespace attn::reference {

// Per-row error bound of an fp32 attention against the exact result.
//
// With u = 2^-24 (fp32 unit roundoff), for query row i:
//   A  = max over visible keys j of scale·Σ_d |q_d k_jd| + |β_ij| + |mask_ij|
//        (β: the ALiBi bias): the magnitude the logits are computed from. Any
//        summation order gives |δ logit| <= (dk + 2)·u·A  (the γ_n bound for a
//        length-dk dot product plus the scale, bias and mask additions); a
//        softcap adds (e_tanh + 2)·u·cap (its slope is <= 1; e_tanh = 8).
//        A sink is one more (exact) term of the sums below: n + 1 terms.
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
//   Subnormal results flushed to 0 (kernels/problem.h, "Element types"):
//        < 2^-126 each, at most one weight, two sums and one rescale per key
//        (n + 1 with a sink), against a denominator >= 1 (its largest term
//        is e^0): O gains (n + 1)·2^-126·(2·Vmax + 3), lse (n + 1)·2^-126.
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

// ------------------------------------------------------------------ backward
//
// Per-element bounds on the gradients of an fp32 backward (kernels/problem.h,
// "backward") against the exact ones (reference::Backward).
//
// The kernel reads O and lse from an fp32 forward that is within ErrorBound:
// per row, |δO| <= ô and |δlse| <= λ with ô = RowBound.o / kSafety and
// λ = RowBound.lse / kSafety (the forward's worst case; the kSafety below
// restores its tolerance). It recomputes everything else in fp32, in any
// order and blocking (worst case: running sums, γ_n = n·u for n terms, never
// the blocked length of "Accumulation"), u = 2^-24. For query row i (of head
// h) and structurally visible key j, with exact P, dP, D, dS and first-order
// propagation:
//   logit  |δS_ij| <= δs_i = (dk + 2)·u·A_i + e_cap, A_i as in ErrorBound
//          (the ALiBi bias counted like a mask entry), e_cap = (e_tanh + 2)·u·cap
//          with a softcap (0 without).
//   P      P̂ = exp(Ŝ - l̂se), a relative error
//            ε_ij = expm1(δs_i + λ_i + 3u·(|S_ij| + |lse_i|) + e_exp·u),
//          e_exp = 8 (the exp), 3u·(...) the subtraction and a log2(e)
//          pre-scale; eP_ij = ε_ij·P_ij + 2^-126 (fp32 underflow), 0 where
//          P_ij = 0 exactly (an additive -inf key).
//   dP     dP_ij = dO_i·v_j: e_dP_ij = dv·u·Σ_d |dO_id·v_jd|.
//   D      either Σ_d dO_id·Ô_id (FlashAttention's) or Σ_j P̂_ij·dP̂_ij; the
//          bound holds for both by adding their errors:
//            Σ_d |dO_id|·ô_i + dv·u·Σ_d |dO_id|·(|O_id| + ô_i)
//          + Σ_j (eP_ij·|dP_ij| + P_ij·e_dP_ij) + n_i·u·Σ_j P_ij·|dP_ij|
//          (n_i visible keys) = e_D_i.
//   dS     dS_ij = P_ij·(dP_ij - D_i)·c_ij, c_ij = 1 - t_ij² the softcap's
//          slope (1 without): e_dS_ij = (eP_ij·|dP_ij - D_i| + P_ij·(e_dP_ij
//          + e_D_i))·c_ij + P_ij·|dP_ij - D_i|·e_c + 3u·|dS_ij|, where
//          e_c = 2·e_t + e_t² + 2u, e_t = δs_i/cap + (e_tanh + 2)·u (the
//          kernel's t = Ŝ/cap; e_c = 0 without a softcap).
//   dσ_h   = -Σ_(b,i) P_σi·D_i (sinks; P_σi = e^(σ_h - lse_i), summed in
//          double from the kernel's lse, O and dO): Σ eσ_i·(|D_i| + e_D_i)
//          + P_σi·e_D_i + u·Σ P_σi·|D_i|, eσ_i = expm1(λ_i + 2u)·P_σi;
//          its one rounding to fp32 adds 2^-126 (underflow) to u·|dσ_h|.
//   dQ_id  = scale·Σ_j dS_ij·k_jd over the n_i visible keys:
//          scale·(Σ_j e_dS_ij·|k_jd| + (n_i + 1)·u·Σ_j |dS_ij·k_jd|).
//   dK_jd  = scale·Σ dS_ij·q_id over the m_j (h, i) of the kv head's group
//          that see key j: scale·(Σ e_dS_ij·|q_id| + (m_j + 1)·u·Σ |dS_ij·q_id|).
//   dV_jd  = Σ P_ij·dO_id: Σ eP_ij·|dO_id| + m_j·u·Σ P_ij·|dO_id|.
// Each plus u·|value| (a final rounding or scaling). Subnormal results
// flushed to 0 (kernels/problem.h): dP and dS each gain 2^-126, and the sums
// of dQ, dK, dV 2·(terms + 1)·2^-126 (a product and an addition per term).
// The tolerance is kSafety times the sum. A fully masked row (lse = -inf)
// has dQ bound 0 and adds nothing (the kernel must write exact zeros); a row
// whose exact lse is NaN adds nothing either (every gradient it reaches is
// NaN, which is compared NaN to NaN). Where inf inputs make a bound NaN it is +inf (CompareElement
// then accepts any non-NaN value).
//
// Correct kernels land far below it (errors grow like sqrt(n)·u); the
// tests/grad_reference_test.cc sanity cases check that a dropped key, a wrong
// mask, a missing scale or a missing D term exceed it.
struct GradBounds {
  std::vector<double> dq, dk, dv, d_sinks;  // the layouts of reference::GradResult
};
// `problem` must pass ValidateGrad. O(B·H·Lq·Lk·(dk + dv)), like the reference
// (on every core: reference/row_chunks.h). The first form computes the exact
// gradients itself; pass reference::Backward's result to the second to save
// that pass.
GradBounds GradErrorBounds(const GradProblem& problem);
GradBounds GradErrorBounds(const GradProblem& problem, const GradResult& exact);

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
