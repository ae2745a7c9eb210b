// Score modifiers (softcap, ALiBi, attention sinks) and the top-left
// diagonal (kernels/problem.h, "Score modifiers", "Masks"): every registry
// variant that declares a modifier matches the fp64 reference within the
// derived bound on shapes that cross flash's tiles, decode and GQA, with
// every mask; every variant that does not declare it refuses the problem
// with Unimplemented naming it; Validate names every bad field.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/registry.h"
#include "reference/reference.h"
#include "testing/compare.h"
#include "testing/grad_data.h"
#include "testing/problem_data.h"

namespace attn {
namespace {

using testing::ProblemData;
using testing::ProblemSpec;

constexpr float kInf = std::numeric_limits<float>::infinity();

// A modifier setting: which ones, and their values (per query head).
struct Modifiers {
  std::string name;
  std::optional<float> softcap;
  bool alibi = false;
  bool sinks = false;
};

struct Case {
  const Variant* variant;
  ProblemSpec spec;
  Modifiers mods;
  Diagonal diagonal = Diagonal::kBottomRight;
  std::string name;
  int64_t diagonal_offset = 0;  // Diagonal::kAt
};

std::vector<ProblemSpec> Shapes() {
  std::vector<ProblemSpec> specs;
  auto add = [&](Shape s, MaskKind mask, std::vector<int32_t> lengths = {},
                 testing::Values values = testing::Values::kUniform) {
    ProblemSpec spec;
    spec.shape = s;
    spec.mask = mask;
    spec.window_left = 37;
    spec.window_right = 5;
    spec.key_lengths = std::move(lengths);
    spec.values = values;
    spec.seed = 100 + specs.size();
    specs.push_back(spec);
  };
  // Prefill across key tiles (flash: 512 keys) and a row block edge (64).
  add({1, 4, 2, 130, 130, 64, 64}, MaskKind::kCausal);
  add({2, 2, 1, 65, 1030, 32, 48}, MaskKind::kNone, {1030, 0});  // a row of nothing visible
  add({1, 2, 2, 70, 200, 16, 16}, MaskKind::kSlidingWindow);
  add({1, 2, 2, 33, 33, 64, 64}, MaskKind::kAdditive);
  // Decode: few rows (GQA 4 rows of one kv head), split keys.
  add({1, 8, 2, 1, 3000, 128, 128}, MaskKind::kNone);
  add({2, 4, 4, 3, 700, 64, 64}, MaskKind::kCausal, {700, 5});
  // Logits in the hundreds: the softcap saturates, sinks rarely matter.
  add({1, 2, 1, 40, 90, 64, 64}, MaskKind::kCausal, {}, testing::Values::kLargeLogits);
  return specs;
}

std::vector<Modifiers> Settings() {
  return {{"softcap5", 5.0f, false, false},
          {"softcap50", 50.0f, false, false},
          {"alibi", std::nullopt, true, false},
          {"sinks", std::nullopt, false, true},
          {"all", 30.0f, true, true}};
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  for (const Variant* v : Registry()) {
    const std::vector<ProblemSpec> shapes = Shapes();
    for (size_t s = 0; s < shapes.size(); ++s) {
      for (const Modifiers& m : Settings()) {
        Case c{v, shapes[s], m, Diagonal::kBottomRight, ""};
        c.name = std::string(v->name) + "_" + m.name + "_" + std::to_string(s);
        cases.push_back(c);
      }
    }
  }
  return cases;
}

// Per-head values: ALiBi slopes 2^(-8(h+1)/H) (Press et al.), signs mixed so
// that a transposed head mapping shows; sinks in [-2, 6] with one head -inf.
struct ModifierValues {
  std::vector<float> slopes, sinks;
  void Attach(const Modifiers& m, Problem& p) {
    const int64_t h = p.shape.heads;
    slopes.clear();
    sinks.clear();
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> sink(-2.0f, 6.0f);
    for (int64_t x = 0; x < h; ++x) {
      slopes.push_back((x % 2 ? -1.0f : 1.0f) * std::exp2(-8.0f * float(x + 1) / float(h)));
      sinks.push_back(x == 1 ? -kInf : sink(rng));
    }
    p.modifiers = {};
    p.modifiers.softcap = m.softcap;
    if (m.alibi) p.modifiers.alibi_slopes = slopes;
    if (m.sinks) p.modifiers.sinks = sinks;
  }
};

std::string ParamName(const ::testing::TestParamInfo<Case>& info) { return info.param.name; }

// The case's diagonal and modifiers on `p` (their arrays held by `values`).
void Pose(const Case& c, Problem& p, ModifierValues& values) {
  p.mask.diagonal = c.diagonal;
  p.mask.diagonal_offset = c.diagonal_offset;
  values.Attach(c.mods, p);
}

class ModifierTest : public ::testing::TestWithParam<Case> {};

TEST_P(ModifierTest, MatchesReferenceOrIsRefused) {
  const Case& c = GetParam();
  ProblemData data(c.spec);
  Problem& p = data.problem();
  ModifierValues values;
  Pose(c, p, values);
  const uint8_t used = ModifiersOf(p.modifiers);
  const Status status = attn::Run(*c.variant, p, OnThreads(2));
  if ((c.variant->modifiers & used) != used) {
    EXPECT_EQ(status.code(), StatusCode::kUnimplemented) << status.ToString();
    EXPECT_NE(status.message().find("does not apply"), std::string::npos) << status.message();
    return;
  }
  if (status.code() == StatusCode::kResourceExhausted) GTEST_SKIP() << status.message();
  ASSERT_TRUE(status.ok()) << status.ToString();
  StatusOr<reference::Result> want = reference::Attention(p);
  ASSERT_TRUE(want.ok());
  const testing::Comparison cmp = testing::CompareToReference(data, *want);
  EXPECT_TRUE(cmp.ok) << cmp.first_failure << " (" << c.name << ", worst error/bound "
                      << cmp.worst_bound_ratio << ")";
}

INSTANTIATE_TEST_SUITE_P(Registry, ModifierTest, ::testing::ValuesIn(Cases()), ParamName);

// The top-left diagonal needs no support: every variant takes it, causal and
// window, with Lq above and below Lk.
std::vector<Case> TopLeftCases() {
  std::vector<Case> cases;
  for (const Variant* v : Registry()) {
    int n = 0;
    for (const auto& [lq, lk, mask] : {std::tuple{90, 40, MaskKind::kCausal},
                                       {40, 90, MaskKind::kCausal},
                                       {600, 600, MaskKind::kCausal},
                                       {70, 130, MaskKind::kSlidingWindow},
                                       {1, 800, MaskKind::kCausal}}) {
      ProblemSpec spec;
      spec.shape = {1, 4, 2, lq, lk, 32, 32};
      spec.mask = mask;
      spec.window_left = 9;
      spec.window_right = 3;
      spec.seed = 300 + n;
      Case c{v, spec, Modifiers{"none", std::nullopt, false, false}, Diagonal::kTopLeft, ""};
      c.name = std::string(v->name) + "_topleft_" + std::to_string(n++);
      cases.push_back(c);
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(TopLeft, ModifierTest, ::testing::ValuesIn(TopLeftCases()), ParamName);

// An explicit diagonal (Diagonal::kAt: one block of a longer sequence, as
// ring attention runs them) needs no support either: offsets that hide every
// key, cross the tiles, or see them all, with ALiBi whose zero follows it.
std::vector<Case> DiagonalAtCases() {
  std::vector<Case> cases;
  for (const Variant* v : Registry()) {
    int n = 0;
    // (left, right) windows; the last two wider than Lq + Lk = 230 while an
    // offset far off makes a row's reach wider still (Validate once clamped
    // them to 230: rows saw too few keys).
    for (const auto& [off, mask, left, right] : {std::tuple{-90, MaskKind::kCausal, 20, 7},
                                                 {-30, MaskKind::kCausal, 20, 7},
                                                 {77, MaskKind::kCausal, 20, 7},
                                                 {600, MaskKind::kCausal, 20, 7},
                                                 {-40, MaskKind::kSlidingWindow, 20, 7},
                                                 {150, MaskKind::kSlidingWindow, 20, 7},
                                                 {150, MaskKind::kSlidingWindow, 235, 7},
                                                 {-200, MaskKind::kSlidingWindow, 3, 335}}) {
      ProblemSpec spec;
      spec.shape = {1, 4, 2, 90, 140, 32, 32};
      spec.mask = mask;
      spec.window_left = left;
      spec.window_right = right;
      spec.seed = 400 + n;
      const Modifiers mods = n % 2 ? Modifiers{"alibi", std::nullopt, true, false}
                                   : Modifiers{"none", std::nullopt, false, false};
      Case c{v, spec, mods, Diagonal::kAt, "", off};
      c.name = std::string(v->name) + "_at_" + std::to_string(n++);
      cases.push_back(c);
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(DiagonalAt, ModifierTest, ::testing::ValuesIn(DiagonalAtCases()),
                         ParamName);

// The key-lengths diagonal (Diagonal::kKeyLengths: the Lq queries are the
// newest tokens of a KV cache holding key_lengths[b] keys) needs no support
// either: a chunk crossing the tiles, a cache shorter than the chunk (its
// first rows see nothing), an empty cache, decode, no mask (ALiBi alone), a
// window; ALiBi's zero follows each batch's diagonal.
std::vector<Case> KeyLengthsCases() {
  std::vector<Case> cases;
  for (const Variant* v : Registry()) {
    int n = 0;
    auto add = [&](Shape shape, MaskKind mask, std::vector<int32_t> lengths) {
      ProblemSpec spec;
      spec.shape = shape;
      spec.mask = mask;
      spec.window_left = 20;
      spec.window_right = 7;
      spec.key_lengths = std::move(lengths);
      spec.seed = 500 + n;
      const Modifiers mods = n % 2 ? Modifiers{"alibi", std::nullopt, true, false}
                                   : Modifiers{"none", std::nullopt, false, false};
      Case c{v, spec, mods, Diagonal::kKeyLengths, ""};
      c.name = std::string(v->name) + "_keylengths_" + std::to_string(n++);
      cases.push_back(c);
    };
    add({2, 4, 2, 70, 600, 32, 32}, MaskKind::kCausal, {600, 300});
    add({3, 4, 2, 5, 200, 32, 32}, MaskKind::kCausal, {200, 3, 0});
    add({2, 4, 4, 1, 900, 64, 64}, MaskKind::kCausal, {900, 17});
    add({2, 8, 2, 3, 520, 64, 64}, MaskKind::kNone, {520, 64});
    add({2, 2, 1, 90, 700, 32, 32}, MaskKind::kSlidingWindow, {650, 100});
    add({2, 4, 2, 130, 600, 64, 64}, MaskKind::kCausal, {130, 400});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(KeyLengths, ModifierTest, ::testing::ValuesIn(KeyLengthsCases()),
                         ParamName);

// The backward of every variant that has one, on the same cases as the
// forward's (all four lists): O and lse
// from the variant's own forward (flash's where that refuses the modifiers,
// so the backward's own refusal is what is tested), dQ, dK, dV and the
// sinks' gradient against the reference within the derived bound.
class ModifierGradTest : public ::testing::TestWithParam<Case> {};

TEST_P(ModifierGradTest, MatchesReferenceOrIsRefused) {
  const Case& c = GetParam();
  ProblemSpec spec = c.spec;
  spec.want_lse = true;
  ProblemData data(spec);
  Problem& p = data.problem();
  ModifierValues values;
  Pose(c, p, values);
  const uint8_t used = ModifiersOf(p.modifiers);
  const bool forward_applies = (c.variant->modifiers & used) == used;
  Status status = testing::RunForwardForGrad(data, forward_applies ? c.variant->name : "flash");
  if (status.code() == StatusCode::kResourceExhausted) GTEST_SKIP() << status.message();
  ASSERT_TRUE(status.ok()) << status.ToString();
  testing::GradData grads(data);
  status = RunBackward(*c.variant, grads.grad_problem(), OnThreads(2));
  if ((c.variant->backward.modifiers & used) != used) {
    EXPECT_EQ(status.code(), StatusCode::kUnimplemented) << status.ToString();
    EXPECT_NE(status.message().find("does not apply"), std::string::npos) << status.message();
    return;
  }
  if (status.code() == StatusCode::kResourceExhausted) GTEST_SKIP() << status.message();
  ASSERT_TRUE(status.ok()) << status.ToString();
  StatusOr<reference::GradResult> want = reference::Backward(grads.grad_problem());
  ASSERT_TRUE(want.ok());
  const testing::Comparison cmp = testing::CompareGradients(
      grads.grad_problem(), *want, reference::GradErrorBounds(grads.grad_problem(), *want));
  EXPECT_TRUE(cmp.ok) << cmp.first_failure << " (" << c.name << ", worst error/bound "
                      << cmp.worst_bound_ratio << ")";
}

// Those of `cases` whose variant has a backward.
std::vector<Case> WithBackward(std::vector<Case> cases) {
  std::erase_if(cases, [](const Case& c) { return !c.variant->has_backward(); });
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Registry, ModifierGradTest, ::testing::ValuesIn(WithBackward(Cases())),
                         ParamName);
INSTANTIATE_TEST_SUITE_P(TopLeft, ModifierGradTest,
                         ::testing::ValuesIn(WithBackward(TopLeftCases())), ParamName);
INSTANTIATE_TEST_SUITE_P(DiagonalAt, ModifierGradTest,
                         ::testing::ValuesIn(WithBackward(DiagonalAtCases())), ParamName);
INSTANTIATE_TEST_SUITE_P(KeyLengths, ModifierGradTest,
                         ::testing::ValuesIn(WithBackward(KeyLengthsCases())), ParamName);

// The spec of a causal problem of `shape`.
ProblemSpec Causal(const Shape& shape) {
  ProblemSpec spec;
  spec.shape = shape;
  spec.mask = MaskKind::kCausal;
  return spec;
}

// The reference's top-left rows: row i sees keys 0..i (causal), whatever Lk.
TEST(TopLeftTest, RowsSeeTheirOwnPrefix) {
  ProblemData data(Causal({1, 1, 1, 5, 9, 4, 4}));
  Problem& p = data.problem();
  p.mask.diagonal = Diagonal::kTopLeft;
  for (int64_t i = 0; i < 5; ++i) {
    for (int64_t j = 0; j < 9; ++j) EXPECT_EQ(reference::KeyVisible(p, 0, i, j), j <= i);
  }
  StatusOr<ValidProblem> v = Validate(p);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->VisibleKeys(0, 3).end, 4);
  EXPECT_EQ(Describe(p.shape, p.mask).find("causal(top-left)") != std::string::npos, true);
}

// A sink on a row with nothing visible: O = 0 exactly, lse = the sink.
TEST(SinkTest, FullyMaskedRowGetsTheSinkAsLse) {
  for (const Variant* v : Registry()) {
    if (!(v->modifiers & kSinks)) continue;
    ProblemSpec spec;
    spec.shape = {2, 2, 1, 3, 20, 8, 8};
    spec.key_lengths = {0, 20};
    ProblemData data(spec);
    Problem& p = data.problem();
    const std::vector<float> sinks = {1.5f, -kInf};
    p.modifiers.sinks = sinks;
    ASSERT_TRUE(attn::Run(*v, p, OnThreads(1)).ok()) << v->name;
    const std::vector<float> o = data.OutputContiguous();
    for (int64_t h = 0; h < 2; ++h) {
      for (int64_t i = 0; i < 3; ++i) {
        EXPECT_EQ(data.lse()[h * 3 + i], sinks[h]) << v->name << " h=" << h;
        for (int64_t d = 0; d < 8; ++d) EXPECT_EQ(o[(h * 3 + i) * 8 + d], 0.0f) << v->name;
      }
    }
  }
}

// A row whose every key is -inf (an additive mask) is fully masked with a
// sink too: O = 0 exactly, never 0·v, so a NaN in V stays out of it; lse =
// the sink. The other rows see the NaN (naive once gave this row 0·NaN; found
// by the fuzzer).
TEST(SinkTest, RowOfMinusInfKeysIsFullyMaskedDespiteNaNValues) {
  for (const Variant* v : Registry()) {
    if (!(v->modifiers & kSinks)) continue;
    ProblemSpec spec;
    spec.shape = {1, 1, 1, 3, 20, 8, 8};
    ProblemData data(spec);
    Problem& p = data.problem();
    std::vector<float> mask(3 * 20, 0.0f);
    for (int64_t j = 0; j < 20; ++j) mask[1 * 20 + j] = -kInf;  // row 1
    p.mask.kind = MaskKind::kAdditive;
    p.mask.additive_shape = {1, 1, 3, 20};
    p.mask.additive = mask;
    data.v_data()[5 * 8 + 2] = std::numeric_limits<float>::quiet_NaN();  // key 5, column 2
    const std::vector<float> sinks = {0.75f};
    p.modifiers.sinks = sinks;
    ASSERT_TRUE(attn::Run(*v, p, OnThreads(1)).ok()) << v->name;
    const std::vector<float> o = data.OutputContiguous();
    EXPECT_EQ(data.lse()[1], 0.75f) << v->name;
    for (int64_t d = 0; d < 8; ++d) EXPECT_EQ(o[1 * 8 + d], 0.0f) << v->name << " d=" << d;
    EXPECT_TRUE(std::isnan(o[0 * 8 + 2]) && std::isnan(o[2 * 8 + 2])) << v->name;
  }
}

// Modifiers reach the kernels whatever the element types: naive converts
// reduced-precision inputs to an fp32 copy first (kernels/internal/
// f32_copy.cc), which once dropped them, so bf16 with softcap ran without it.
TEST(ModifierDTypeTest, ReducedInputsKeepTheirModifiers) {
  constexpr DType kBF16 = DType::kBF16, kF32 = DType::kF32, kI8 = DType::kI8;
  for (const Variant* v : Registry()) {
    for (const DTypes& dtypes :
         {DTypes{kBF16, kBF16, kBF16, kBF16}, DTypes{kF32, kI8, kI8, kF32}}) {
      if (v->modifiers != kAllModifiers || !Takes(*v, dtypes)) continue;
      ProblemSpec spec = Causal({1, 4, 2, 70, 90, 32, 32});
      spec.dtypes = dtypes;
      spec.values = testing::Values::kLargeLogits;  // the softcap saturates: its absence shows
      ProblemData data(spec);
      Problem& p = data.problem();
      ModifierValues values;
      values.Attach({"all", 5.0f, true, true}, p);
      ASSERT_TRUE(attn::Run(*v, p, OnThreads(2)).ok()) << v->name;
      StatusOr<reference::Result> want = reference::Attention(p);
      ASSERT_TRUE(want.ok());
      const testing::Comparison cmp = testing::CompareToReference(data, *want);
      EXPECT_TRUE(cmp.ok) << v->name << " " << Describe(dtypes) << ": " << cmp.first_failure;
    }
  }
}

// Validate names every bad modifier.
TEST(ModifierValidationTest, NamesTheField) {
  ProblemSpec spec;
  spec.shape = {1, 4, 2, 3, 5, 8, 8};
  ProblemData data(spec);
  const float nan = std::nanf("");
  const std::vector<float> three = {1, 2, 3}, four_nan = {1, nan, 3, 4},
                           four_pinf = {0, 0, kInf, 0};
  struct Bad {
    std::function<void(Problem&)> set;
    std::string message;
  };
  const std::vector<Bad> bad = {
      {[](Problem& p) { p.modifiers.softcap = 0.0f; }, "softcap=0 must be finite and > 0"},
      {[](Problem& p) { p.modifiers.softcap = -2.0f; }, "softcap=-2 must be finite and > 0"},
      {[&](Problem& p) { p.modifiers.softcap = nan; }, "softcap=nan must be finite and > 0"},
      {[](Problem& p) { p.modifiers.softcap = kInf; }, "softcap=inf must be finite and > 0"},
      {[&](Problem& p) { p.modifiers.alibi_slopes = three; },
       "alibi_slopes has 3 entries, needs H=4"},
      {[&](Problem& p) { p.modifiers.alibi_slopes = four_nan; },
       "alibi_slopes[1]=nan is not finite"},
      {[&](Problem& p) { p.modifiers.sinks = three; }, "sinks has 3 entries, needs H=4"},
      {[&](Problem& p) { p.modifiers.sinks = four_nan; }, "sinks[1]=nan must be finite or -inf"},
      {[&](Problem& p) { p.modifiers.sinks = four_pinf; }, "sinks[2]=inf must be finite or -inf"},
  };
  for (const Bad& b : bad)
    EXPECT_EQ(testing::RefusalMismatch(data.problem(), b.set, b.message), "");
  // No output may overlap them: lse written over the sinks it reads.
  Problem p = data.problem();
  std::vector<float> shared(12, 0.0f);  // lse: B·H·Lq = 12 floats
  p.modifiers.sinks = std::span<const float>(shared.data(), 4);
  p.lse = shared;
  const StatusOr<ValidProblem> v = Validate(p);
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.status().message().find("output lse overlaps input sinks"), std::string::npos)
      << v.status().message();
}

// The backward takes the top-left and the key-lengths diagonals like any
// structural mask (the latter: a chunk of 40 queries at the end of caches of
// 60 and 30 keys).
TEST(ModifierBackwardTest, TakesTheDiagonals) {
  ProblemSpec cache = Causal({2, 2, 1, 40, 60, 16, 16});
  cache.key_lengths = {60, 30};
  for (const auto& [spec, diagonal] :
       {std::pair{Causal({1, 2, 1, 40, 25, 16, 16}), Diagonal::kTopLeft},
        std::pair{cache, Diagonal::kKeyLengths}}) {
    SCOPED_TRACE(DiagonalName(diagonal));
    ProblemData data(spec);
    data.problem().mask.diagonal = diagonal;
    ASSERT_TRUE(testing::RunForwardForGrad(data).ok());
    testing::GradData grads(data);
    StatusOr<reference::GradResult> want = reference::Backward(grads.grad_problem());
    ASSERT_TRUE(want.ok());
    const reference::GradBounds bounds = reference::GradErrorBounds(grads.grad_problem(), *want);
    for (const Variant* v : Registry()) {
      if (!v->has_backward()) continue;
      grads.Poison();
      ASSERT_TRUE(RunBackward(*v, grads.grad_problem(), OnThreads(2)).ok()) << v->name;
      const testing::Comparison c = testing::CompareGradients(grads.grad_problem(), *want, bounds);
      EXPECT_TRUE(c.ok) << v->name << ": " << c.first_failure;
    }
  }
}

// d_sinks: computed only when asked for, H floats of a problem with sinks,
// never overlapping another gradient; a head whose sink is -inf gets 0.
TEST(ModifierBackwardTest, SinkGradientsValidatedAndZeroForNoSink) {
  ProblemSpec spec = Causal({1, 4, 2, 20, 30, 16, 16});
  spec.want_lse = true;
  ProblemData data(spec);
  ModifierValues values;
  values.Attach({"sinks", std::nullopt, false, true}, data.problem());
  ASSERT_TRUE(testing::RunForwardForGrad(data, "flash").ok());
  testing::GradData grads(data);
  GradProblem g = grads.grad_problem();
  ASSERT_EQ(g.d_sinks.size(), 4u);
  ASSERT_TRUE(RunBackward("flash", g).ok());
  EXPECT_EQ(g.d_sinks[1], 0.0f);  // head 1's sink is -inf
  EXPECT_NE(g.d_sinks[0], 0.0f);
  auto error = [](const GradProblem& bad) {
    const Status s = RunBackward("flash", bad);
    return s.ok() ? std::string("ok") : s.message();
  };
  GradProblem short_sinks = g;
  short_sinks.d_sinks = g.d_sinks.subspan(0, 3);
  EXPECT_NE(error(short_sinks).find("d_sinks has 3 entries, needs H=4"), std::string::npos)
      << error(short_sinks);
  GradProblem no_sinks = g;
  no_sinks.forward.modifiers.sinks = {};
  EXPECT_NE(error(no_sinks).find("d_sinks is given but the problem has no sinks"),
            std::string::npos)
      << error(no_sinks);
  GradProblem overlapping = g;
  overlapping.d_sinks = std::span<float>(static_cast<float*>(g.dq.data), 4);
  EXPECT_NE(error(overlapping).find("overlaps gradient"), std::string::npos) << error(overlapping);
}

TEST(DiagonalAtTest, ValidateNamesTheOffset) {
  ProblemData data(Causal({1, 1, 1, 5, 9, 4, 4}));
  Problem& p = data.problem();
  p.mask.diagonal = Diagonal::kAt;
  p.mask.diagonal_offset = -3;
  for (int64_t i = 0; i < 5; ++i) {
    for (int64_t j = 0; j < 9; ++j) EXPECT_EQ(reference::KeyVisible(p, 0, i, j), j <= i - 3);
  }
  EXPECT_NE(Describe(p.shape, p.mask).find("causal(off=-3)"), std::string::npos);
  p.mask.diagonal_offset = (int64_t{1} << 48) + 1;
  const Status status = Validate(p).status();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("diagonal_offset=281474976710657"), std::string::npos)
      << status.message();
}

// Each batch of a key-lengths problem is the bottom-right problem of its own
// cache: the reference gives batch b the rows (O and lse, ALiBi included)
// of the problem cut to its key_lengths[b] keys, exactly. A cache shorter
// than the chunk (4 keys, 6 queries) leaves its first two rows empty.
TEST(KeyLengthsDiagonalTest, EachBatchIsItsOwnCacheBottomRight) {
  ProblemSpec spec = Causal({3, 4, 2, 6, 40, 16, 16});
  spec.key_lengths = {40, 25, 4};
  ProblemData data(spec);
  Problem& p = data.problem();
  p.mask.diagonal = Diagonal::kKeyLengths;
  ModifierValues values;
  values.Attach({"alibi", std::nullopt, true, false}, p);
  StatusOr<reference::Result> whole = reference::Attention(p);
  ASSERT_TRUE(whole.ok()) << whole.status().ToString();
  const Shape& s = p.shape;
  const int64_t rows = s.heads * s.q_len;
  for (int64_t b = 0; b < s.batch; ++b) {
    Problem one = p;
    one.shape.batch = 1;
    one.shape.kv_len = spec.key_lengths[b];
    one.mask.key_lengths.reset();
    one.mask.diagonal = Diagonal::kBottomRight;
    one.q.data = ValidProblem::Row(p.q, b, 0, 0);
    one.k.data = ValidProblem::Row(p.k, b, 0, 0);
    one.v.data = ValidProblem::Row(p.v, b, 0, 0);
    one.o.data = ValidProblem::Row(p.o, b, 0, 0);
    one.lse = p.lse.subspan(b * rows, rows);
    StatusOr<reference::Result> cut = reference::Attention(one);
    ASSERT_TRUE(cut.ok()) << cut.status().ToString();
    for (int64_t r = 0; r < rows; ++r) {
      EXPECT_EQ(whole->lse[b * rows + r], cut->lse[r]) << "b=" << b << " row " << r;
      for (int64_t d = 0; d < s.value_dim; ++d) {
        EXPECT_EQ(whole->o[(b * rows + r) * s.value_dim + d], cut->o[r * s.value_dim + d])
            << "b=" << b << " row " << r;
      }
    }
  }
  // Batch 2's rows 0 and 1 (of every head) see nothing: 4 - 6 + i < 0.
  EXPECT_EQ(whole->lse[2 * rows], -std::numeric_limits<double>::infinity());
  EXPECT_EQ(whole->lse[2 * rows + 1], -std::numeric_limits<double>::infinity());
  EXPECT_GT(whole->lse[2 * rows + 2], -std::numeric_limits<double>::infinity());
  EXPECT_NE(Describe(p.shape, p.mask).find("causal(at key lengths)"), std::string::npos);
  StatusOr<ValidProblem> v = Validate(p);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->VisibleKeys(1, 0).end, 25 - 6 + 1);
  // It needs key lengths.
  p.mask.key_lengths.reset();
  EXPECT_EQ(testing::RefusalMismatch(
                p, [](Problem&) {},
                "mask diagonal key-lengths (each batch's diagonal at its key length) needs "
                "key_lengths"),
            "");
}

}  // namespace
}  // namespace attn
