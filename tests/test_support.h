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
#include "reference/error_bound.h"
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
  int64_t row_pad = 0;    // extra floats between rows (strided, not contiguous)
  bool misalign = false;  // data starts 1 float past a 64-byte boundary
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

// The per-row error bound and the element comparison rule live in
// reference/error_bound.h, shared with `attnlab check`.
using reference::Comparison;
using reference::ErrorBound;
using reference::kSafety;
using reference::RowBound;

// Compares what a kernel wrote into `data` against the reference. Checks O,
// and lse / weights when the problem asked for them. NaN must match NaN,
// ±inf must match exactly.
Comparison CompareToReference(ProblemData& data, const reference::Result& expected);

// The shape grid of the registry-driven tests (see kernel_grid_test.cc).
std::vector<ProblemSpec> GridSpecs();

}  // namespace attn::testing

#endif  // ATTNLAB_TESTS_TEST_SUPPORT_H_
