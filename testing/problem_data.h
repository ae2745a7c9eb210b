// Problem data for what checks a kernel (the tests, the bench's accuracy mode
// and its check before timing): a problem specification, the buffers that
// realize it (poisoned outputs, strided and misaligned layouts, adversarial
// values), the shape grid of the registry-driven tests, and row access on a
// Problem (also the fuzzer's). The comparison with the reference is in
// testing/compare.h. No GoogleTest here.
#ifndef ATTNLAB_TESTING_PROBLEM_DATA_H_
#define ATTNLAB_TESTING_PROBLEM_DATA_H_

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "kernels/problem.h"

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
  // Element types. The values are drawn in fp32 and then stored in the
  // type (rounded to bf16/f16, or quantized to int8 per row), so a problem's
  // inputs are exactly what its reference sees.
  DTypes dtypes;

  std::string Name() const;  // a test-name-safe identifier, unique enough to read
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
  // Whether a kernel left the row padding of O (spec().row_pad floats after
  // each row) as Poison() left it: "" if so, else where it wrote.
  std::string PaddingWritten() const;
  std::vector<float>& lse() { return lse_; }
  std::vector<float>& weights() { return weights_; }
  // The fp32 inputs (the problem's own when their DType is f32).
  float* q_data() { return q_.data() + offset_; }
  float* k_data() { return k_.data() + offset_; }
  float* v_data() { return v_.data() + offset_; }
  const ProblemSpec& spec() const { return spec_; }

 private:
  // Poisoned O: NaN in O's DType.
  void PoisonO();

  ProblemSpec spec_;
  int64_t offset_ = 0;
  std::vector<float> q_, k_, v_, o_, mask_, lse_, weights_;
  std::vector<char> q_typed_, k_typed_, v_typed_, o_typed_;  // reduced DTypes
  std::vector<float> k_scales_, v_scales_;                   // int8 K, V
  std::vector<int32_t> key_lengths_;
  Problem problem_;
};

// Stores fp32 `values` in `dtype`, into `bytes` (resized to values.size()
// elements of DTypeBytes(dtype), each at the position of its value):
// rounded to nearest even for bf16 and f16; for int8, the tensor
// [batch, heads, len, dim] whose element (b, h, j, 0) is values[offset +
// b·strides.batch + h·strides.head + j·strides.row] is quantized per row
// (QuantizeRow) with one scale per row in `scales` ([batch, heads, len],
// contiguous; unused otherwise). The problem data of the tests and the bench's
// inputs are both made so.
void StoreInDType(DType dtype, std::span<const float> values, int64_t offset, int64_t batch,
                  int64_t heads, int64_t len, int64_t dim, const Strides& strides,
                  std::vector<char>& bytes, std::vector<float>* scales);

// The shape grid of the registry-driven tests (see tests/kernel_grid_test.cc).
std::vector<ProblemSpec> GridSpecs();

// Row i of head h of batch b of an fp32 view.
inline const float* RowOf(const TensorRef<const void>& t, int64_t b, int64_t h, int64_t i) {
  return static_cast<const float*>(ValidProblem::Row(t, b, h, i));
}
inline float* RowOf(const TensorRef<void>& t, int64_t b, int64_t h, int64_t i) {
  return static_cast<float*>(ValidProblem::Row(t, b, h, i));
}
// The additive mask row of query row (b, h, i) (Lk entries), or nullptr when
// the mask is not additive.
const float* AdditiveRow(const Problem& problem, int64_t b, int64_t h, int64_t i);

// Validate's verdict on `base` changed by `set`: "" when it is
// InvalidArgument and its message contains `message`, else what it was (the
// "names the field" tests of every feature).
std::string RefusalMismatch(Problem base, const std::function<void(Problem&)>& set,
                            const std::string& message);

}  // namespace attn::testing

#endif  // ATTNLAB_TESTING_PROBLEM_DATA_H_
