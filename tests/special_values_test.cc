// Every registry variant on inputs whose semantics problem.h spells out:
// NaN/inf in hidden K or V rows (must not reach the row: structural masks
// mean "never read"), NaN in one Q row, +inf and -inf additive logits, NaN V
// behind an additive -inf (arithmetic: it does reach the row), fully masked
// rows. Shapes span several panels / chunks / tiles so that block-level
// shortcuts (a GEMM over the union of a block's visible keys) are exercised
// with a poisoned key inside the union but outside some rows' ranges.
// Highway variants run on every compiled target the CPU supports (NaN
// detection is target-specific: x86's != is an ordered compare).
#include <gtest/gtest.h>

#include <cstdlib>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "hwy/targets.h"
#include "kernels/registry.h"
#include "reference/reference.h"
#include "testing/compare.h"
#include "testing/problem_data.h"

namespace attn::testing {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

struct Case {
  std::string name;
  ProblemSpec spec;
  std::function<void(ProblemData&)> poison;  // writes the special values
};

// Row j of a contiguous BHLD tensor (no padding, aligned) of (b, head).
float* Row(float* base, int64_t heads, int64_t len, int64_t dim, int64_t b, int64_t head,
           int64_t j) {
  return base + ((b * heads + head) * len + j) * dim;
}
float* VRow(ProblemData& d, int64_t b, int64_t kvh, int64_t j) {
  const Shape& s = d.spec().shape;
  return Row(d.v_data(), s.kv_heads, s.kv_len, s.value_dim, b, kvh, j);
}
float* KRow(ProblemData& d, int64_t b, int64_t kvh, int64_t j) {
  const Shape& s = d.spec().shape;
  return Row(d.k_data(), s.kv_heads, s.kv_len, s.head_dim, b, kvh, j);
}
float* QRow(ProblemData& d, int64_t b, int64_t h, int64_t i) {
  const Shape& s = d.spec().shape;
  return Row(d.q_data(), s.heads, s.q_len, s.head_dim, b, h, i);
}
float& MaskAt(ProblemData& d, int64_t i, int64_t j) {  // 2-D additive mask
  const Problem& p = d.problem();
  return const_cast<float&>(p.mask.additive[i * p.shape.kv_len + j]);
}

ProblemSpec Spec(Shape s, MaskKind kind) {
  ProblemSpec spec;
  spec.shape = s;
  spec.mask = kind;
  spec.seed = 77;
  return spec;
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  // Causal over 300 rows: more than one blas panel (256), simd panel (64) and
  // chunk. V row 290 is NaN: only rows >= 290 see it.
  cases.push_back({"causal_nan_v", Spec({1, 2, 1, 300, 300, 64, 64}, MaskKind::kCausal),
                   [](ProblemData& d) { VRow(d, 0, 0, 290)[3] = kNaN; }});
  cases.push_back({"causal_inf_v", Spec({1, 2, 1, 300, 300, 32, 48}, MaskKind::kCausal),
                   [](ProblemData& d) { VRow(d, 0, 0, 100)[0] = kInf; }});
  cases.push_back({"causal_nan_k", Spec({1, 1, 1, 130, 130, 40, 40}, MaskKind::kCausal),
                   [](ProblemData& d) { KRow(d, 0, 0, 70)[5] = kNaN; }});
  cases.push_back({"causal_inf_k", Spec({1, 1, 1, 130, 130, 40, 40}, MaskKind::kCausal),
                   [](ProblemData& d) { KRow(d, 0, 0, 71)[0] = kInf; }});
  {  // Key lengths hide keys >= 20 of batch 0 and all of batch 1.
    Case c{"keylens_nan_v", Spec({2, 2, 2, 70, 90, 16, 16}, MaskKind::kNone), [](ProblemData& d) {
             VRow(d, 0, 1, 60)[2] = kNaN;
             KRow(d, 0, 0, 25)[2] = kNaN;
             VRow(d, 1, 0, 0)[0] = kNaN;
           }};
    c.spec.key_lengths = {20, 0};
    cases.push_back(c);
  }
  {  // Sliding window: V NaN at key 50 reaches rows 48..55 only.
    Case c{"window_nan_v", Spec({1, 1, 1, 200, 200, 24, 24}, MaskKind::kSlidingWindow),
           [](ProblemData& d) { VRow(d, 0, 0, 50)[1] = kNaN; }};
    c.spec.window_left = 5;
    c.spec.window_right = 2;
    cases.push_back(c);
  }
  cases.push_back({"nan_q_row", Spec({1, 2, 2, 90, 90, 32, 32}, MaskKind::kNone),
                   [](ProblemData& d) { QRow(d, 0, 1, 17)[4] = kNaN; }});
  cases.push_back({"plus_inf_logit", Spec({1, 1, 1, 40, 50, 16, 16}, MaskKind::kAdditive),
                   [](ProblemData& d) { MaskAt(d, 3, 7) = kInf; }});
  // NaN in V behind an additive -inf: arithmetic, so it reaches every row
  // that is not fully masked (row 0 is fully masked in the generated mask).
  cases.push_back({"additive_hides_nothing", Spec({1, 1, 1, 40, 50, 16, 16}, MaskKind::kAdditive),
                   [](ProblemData& d) {
                     for (int64_t i = 0; i < 40; ++i) MaskAt(d, i, 9) = -kInf;
                     VRow(d, 0, 0, 9)[0] = kNaN;
                   }});
  // Every logit of rows 5..9 is -inf through the mask: fully masked rows.
  cases.push_back({"additive_fully_masked", Spec({1, 1, 1, 40, 50, 16, 16}, MaskKind::kAdditive),
                   [](ProblemData& d) {
                     for (int64_t i = 5; i < 10; ++i)
                       for (int64_t j = 0; j < 50; ++j) MaskAt(d, i, j) = -kInf;
                   }});
  // Row stride 0 (every query row, every value row the same): legal strides
  // that a GEMM cannot take (leading dimension < d), so the sgemm-based
  // variants must use their fallbacks.
  cases.push_back(
      {"broadcast_rows", Spec({1, 2, 1, 50, 40, 16, 24}, MaskKind::kCausal), [](ProblemData& d) {
         d.problem().q.strides.row = 0;
         d.problem().v.strides.row = 0;
       }});
  // Causal with Lq > Lk and weights: the first rows see nothing.
  {
    Case c{"causal_weights_nan_v", Spec({1, 2, 1, 90, 60, 16, 16}, MaskKind::kCausal),
           [](ProblemData& d) { VRow(d, 0, 0, 45)[0] = kNaN; }};
    c.spec.want_weights = true;
    cases.push_back(c);
  }
  return cases;
}

struct Param {
  const Variant* variant;
  size_t index;
};

std::vector<Param> Params() {
  std::vector<Param> params;
  const size_t n = Cases().size();
  for (const Variant* v : Registry())
    for (size_t i = 0; i < n; ++i) params.push_back({v, i});
  return params;
}

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  return std::string(info.param.variant->name) + "_" + Cases()[info.param.index].name;
}

class SpecialValuesTest : public ::testing::TestWithParam<Param> {};

TEST_P(SpecialValuesTest, MatchesReference) {
  const Variant& variant = *GetParam().variant;
  Case c = Cases()[GetParam().index];
  if (!variant.supports_weights) c.spec.want_weights = false;
  ProblemData data(c.spec);
  c.poison(data);
  auto want = reference::Attention(data.problem(), c.spec.want_weights);
  ASSERT_TRUE(want.ok()) << want.status().ToString();
  // Highway variants: on every compiled target this CPU supports (target 0 =
  // no mock, the runtime's own choice); the others once.
  std::vector<int64_t> targets = {0};
  if (variant.uses_highway) {
    for (int64_t t : hwy::SupportedAndGeneratedTargets()) targets.push_back(t);
  }
  for (int64_t target : targets)
    for (int threads : {1, 2}) {
      hwy::SetSupportedTargetsForTest(target);
      data.Poison();
      RunOptions options;
      options.threads = threads;
      RunStats stats;
      const Status status = attn::Run(variant, data.problem(), options, &stats);
      ASSERT_TRUE(status.ok()) << status.ToString();
      EXPECT_LE(stats.workspace_peak_bytes, stats.workspace_declared_bytes);
      hwy::SetSupportedTargetsForTest(0);
      const Comparison cmp = CompareToReference(data, *want);
      EXPECT_TRUE(cmp.ok) << cmp.first_failure << "\n  variant=" << variant.name
                          << " case=" << c.name << " threads=" << threads
                          << " target=" << (target ? hwy::TargetName(target) : "default");
    }
}

INSTANTIATE_TEST_SUITE_P(Special, SpecialValuesTest, ::testing::ValuesIn(Params()), ParamName);

}  // namespace
}  // namespace attn::testing
