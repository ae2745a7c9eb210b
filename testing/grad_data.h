// Backward-pass data for what checks a kernel's gradients: dO and poisoned
// dQ, dK, dV buffers beside a ProblemData (same layout, row padding and
// alignment as its O, Q, K, V), and the forward run a backward needs first
// (its O and lse). The comparison with the reference is
// testing/compare.h's CompareGradients. No GoogleTest here.
#ifndef ATTNLAB_TESTING_GRAD_DATA_H_
#define ATTNLAB_TESTING_GRAD_DATA_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/problem.h"
#include "kernels/status.h"
#include "testing/problem_data.h"

namespace attn::testing {

// Owns dO (uniform in [-1, 1], drawn from `seed`; default: from the spec's
// seed) laid out like O, and dQ, dK, dV laid out like Q, K, V, poisoned with
// NaN (row padding included) so an element a kernel forgets fails. `data`
// must outlive this, and its spec must have fp32 tensors and lse (the
// backward's requirements; grad_problem() is then ValidateGrad-clean once a
// forward has filled O and lse).
class GradData {
 public:
  explicit GradData(ProblemData& data, std::optional<uint64_t> seed = std::nullopt);
  GradData(const GradData&) = delete;
  GradData& operator=(const GradData&) = delete;

  // The backward problem: forward = the ProblemData's problem (its O and lse
  // are what a forward wrote there), dO, dQ, dK, dV, and d_sinks (H floats)
  // when that problem has sinks.
  GradProblem grad_problem() const;
  // NaN into dQ, dK, dV (row padding included) and d_sinks.
  void Poison();
  // Whether a kernel left the row padding of dQ, dK and dV (spec().row_pad
  // floats after each row) as Poison() left it: "" if so, else where it wrote,
  // "dK[b=0,h=1,j=3]".
  std::string PaddingWritten() const;
  // dO's first element: row (b, h, i) is at RowOf(grad_problem().d_o, ...).
  float* d_o_data() { return d_o_.data() + offset_; }
  ProblemData& data() { return data_; }

 private:
  ProblemData& data_;
  int64_t offset_ = 0;
  // d_sinks_: H floats, in grad_problem() when the problem has sinks.
  mutable std::vector<float> d_sinks_;
  std::vector<float> d_o_, dq_, dk_, dv_;
  GradProblem grads_;  // the views of the buffers above (its forward unused)
};

// Fills data's O and lse by running the forward `variant` (attn::Run) on its
// problem, so that a backward can run after it. Its status (e.g. a variant
// that does not take the problem's mask).
Status RunForwardForGrad(ProblemData& data, std::string_view variant = "naive");

}  // namespace attn::testing

#endif  // ATTNLAB_TESTING_GRAD_DATA_H_
