// Test support shared by the registry-driven tests: a problem specification,
// the buffers that realize it, and the comparison against the fp64 reference
// with a tolerance derived from an error bound (see ErrorBound below).
#ifndef ATTNLAB_TESTS_TEST_SUPPORT_H_
#define ATTNLAB_TESTS_TEST_SUPPORT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/problem.h"
#include "kernels/registry.h"
#include "reference/reference.h"

namespace attn::testing {

enum class Values {
  kUniform,      // Q, K, V uniform in [-1, 1]
  kLargeLogits,  // Q scaled so that |score| is in the hundreds
  kNearTies,     // every key nearly the same: scores differ by ~1e-4
};

enum class AdditiveKind { k2D, k4D };

struct ProblemSpec {
  Shape shape;
  MaskKind mask = MaskKind::kNone;
  int64_t window_left = 0;
  int64_t window_right = 0;
  AdditiveKind additive = AdditiveKind::k2D;
  std::vector<int32_t> key_lengths;  // empty: none
  Layout layout = Layout::kBHLD;
  int64_t row_pad = 0;       // extra floats between rows (strided, not contiguous)
  bool misalign = false;     // data starts 1 float past a 64-byte boundary
  Values values = Values::kUniform;
  bool want_lse = true;
  bool want_weights = false;
  uint64_t seed = 1;

  std::string Name() const;  // gtest-safe, unique enough to read
};

// Owns Q, K, V, O, mask, lse and weights buffers for one spec. O, lse and
// weights are poisoned with NaN so an element a kernel forgets fails.
class ProblemData {
 public:
  explicit ProblemData(const ProblemSpec& spec);
  const Problem& problem() const { return problem_; }
  Problem& problem() { return problem_; }
  void Poison();
  // Output O as contiguous [B, H, Lq, dv] (undoing layout and padding).
  std::vector<float> OutputContiguous() const;
  std::vector<float>& lse() { return lse_; }
  std::vector<float>& weights() { return weights_; }
  float* q_data() { return q_.data() + offset_; }
  float* k_data() { return k_.data() + offset_; }
  float* v_data() { return v_.data() + offset_; }
  const ProblemSpec& spec() const { return spec_; }

 private:
  ProblemSpec spec_;
  int64_t offset_ = 0;
  std::vector<float> q_, k_, v_, o_, mask_, lse_, weights_;
  std::vector<int32_t> key_lengths_;
  Problem problem_;
};

// Per-row error bound of an fp32 attention against the exact result.
//
// With u = 2^-24 (fp32 unit roundoff), for query row i:
//   A  = max over visible keys j of scale·Σ_d |q_d k_jd| + |mask_ij|: the
//        magnitude the logits are computed from. Any summation order gives
//        |δ logit| <= (dk + 2)·u·A  (the γ_n bound for a length-dk dot product
//        plus the scale and mask additions).
//   Softmax: subtracting the max and exponentiating turn an absolute logit
//        error δ into a relative weight error <= 2δ + e_exp·u (e_exp = 8: a
//        few ulp for a vectorized exp); normalization adds <= (Lk + 2)·u.
//        Online (flash) softmax rescales once per key tile: covered by Lk·u.
//   O = Σ p_j v_j / Σ p_j: |δO| <= Vmax·(2δ + (e_exp + 2·Lk + 4)·u), with
//        Vmax = max |v| over the row's visible keys.
//   lse = max + log Σ p: |δlse| <= δ + (e_exp + Lk + 2)·u + u·|lse|.
// The tolerance is kSafety times that worst-case bound. Errors in correct
// kernels are far below it (sums of rounding errors grow like sqrt(n), not
// n); a wrong mask, a dropped key or a missed rescale is off by O(Vmax).
inline constexpr double kSafety = 4.0;
struct RowBound {
  double o = 0;    // absolute, per element of O
  double lse = 0;  // absolute
  double weights = 0;  // absolute, per weight
};
RowBound ErrorBound(const Problem& problem, int64_t b, int64_t h, int64_t i);

struct Comparison {
  bool ok = true;
  double max_abs_error = 0;   // over finite expected values
  double max_rel_error = 0;   // |err| / max(|expected|, tiny)
  double worst_bound_ratio = 0;  // max |err| / bound: < 1 passes
  std::string first_failure;  // "O[b=0,h=1,i=3,d=5] got ... want ... (bound ...)"
};

// Compares what a kernel wrote into `data` against the reference. Checks O,
// and lse / weights when the problem asked for them. NaN must match NaN,
// ±inf must match exactly.
Comparison CompareToReference(ProblemData& data, const reference::Result& expected);

// The shape grid of the registry-driven tests (see kernel_grid_test.cc).
std::vector<ProblemSpec> GridSpecs();

}  // namespace attn::testing

#endif  // ATTNLAB_TESTS_TEST_SUPPORT_H_
