// The backward pass of every variant that has one (Variant::has_backward),
// against the fp64 reference's gradients within the derived bounds
// (reference::GradErrorBounds): the shape grid of the forward tests, larger
// shapes that cross many of flash's 64-key blocks, thread counts,
// determinism, poisoned outputs, the edge semantics of kernels/problem.h
// ("backward"), validation and the memory budget. Variants come from the
// registry: a backward added to a variant is tested here with no edit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/registry.h"
#include "reference/error_bound.h"
#include "reference/reference.h"
#include "testing/compare.h"
#include "testing/fp_mode.h"
#include "testing/grad_data.h"
#include "testing/problem_data.h"

namespace attn {
namespace {

using testing::GradData;
using testing::ProblemData;
using testing::ProblemSpec;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

bool AllF32Spec(const ProblemSpec& s) {
  const DTypes& t = s.dtypes;
  return t.q == DType::kF32 && t.k == DType::kF32 && t.v == DType::kF32 && t.o == DType::kF32;
}

std::vector<const Variant*> BackwardVariants() {
  std::vector<const Variant*> out;
  for (const Variant* v : Registry()) {
    if (v->has_backward()) out.push_back(v);
  }
  return out;
}

// Runs `variant`'s forward (its own: as a user would) then its backward on
// `data`, and compares the gradients with the reference; "" when they agree,
// else the first failure.
std::string CheckGradients(const Variant& variant, ProblemData& data, GradData& grads,
                           int threads) {
  if (Status s = testing::RunForwardForGrad(data, variant.name); !s.ok()) {
    return "forward: " + s.ToString();
  }
  grads.Poison();
  const GradProblem g = grads.grad_problem();
  if (Status s = RunBackward(variant, g, OnThreads(threads)); !s.ok()) {
    return "backward: " + s.ToString();
  }
  auto want = reference::Backward(g);
  if (!want.ok()) return "reference: " + want.status().ToString();
  const testing::Comparison c =
      testing::CompareGradients(g, *want, reference::GradErrorBounds(g, *want));
  if (!c.ok) return c.first_failure;
  return grads.PaddingWritten();
}

// The forward grid's fp32 specs with lse (the backward reads it), and
// shapes that cross several 64-key blocks and 64-row query blocks.
std::vector<ProblemSpec> GradSpecs() {
  std::vector<ProblemSpec> specs;
  for (ProblemSpec s : testing::GridSpecs()) {
    if (!AllF32Spec(s)) continue;
    s.want_lse = true;
    s.want_weights = false;
    specs.push_back(s);
  }
  uint64_t seed = 5000;
  auto add = [&](Shape shape, MaskKind mask, int64_t left = 0, int64_t right = 0,
                 std::vector<int32_t> key_lengths = {}) {
    ProblemSpec s;
    s.shape = shape;
    s.mask = mask;
    s.window_left = left;
    s.window_right = right;
    s.key_lengths = std::move(key_lengths);
    s.seed = seed++;
    specs.push_back(s);
  };
  add({1, 2, 2, 300, 300, 64, 64}, MaskKind::kCausal);
  add({1, 2, 2, 257, 257, 64, 64}, MaskKind::kNone);
  add({1, 4, 1, 200, 333, 40, 24}, MaskKind::kCausal);  // GQA-4, Lq < Lk, dk != dv
  add({1, 2, 1, 390, 130, 72, 80}, MaskKind::kCausal);  // Lq > Lk: rows that see nothing
  add({1, 2, 2, 500, 500, 32, 32}, MaskKind::kSlidingWindow, 70, 5);
  add({2, 2, 2, 200, 260, 16, 16}, MaskKind::kCausal, 0, 0, {260, 97});
  add({1, 1, 1, 640, 640, 128, 128}, MaskKind::kCausal);
  add({1, 2, 2, 150, 190, 64, 64}, MaskKind::kAdditive);
  return specs;
}

struct GradParam {
  const Variant* variant;
  ProblemSpec spec;
};

class GradGridTest : public ::testing::TestWithParam<GradParam> {};

TEST_P(GradGridTest, MatchesReferenceWithinBound) {
  const GradParam& p = GetParam();
  ProblemData data(p.spec);
  GradData grads(data);
  for (int threads : {1, 2}) {
    const std::string failure = CheckGradients(*p.variant, data, grads, threads);
    EXPECT_EQ(failure, "") << p.variant->name << " on " << p.spec.Name() << ", threads " << threads
                           << " (seed " << p.spec.seed << ")";
  }
}

std::vector<GradParam> GridParams() {
  std::vector<GradParam> params;
  for (const Variant* v : BackwardVariants()) {
    for (const ProblemSpec& s : GradSpecs()) params.push_back({v, s});
  }
  return params;
}

INSTANTIATE_TEST_SUITE_P(Registry, GradGridTest, ::testing::ValuesIn(GridParams()),
                         [](const ::testing::TestParamInfo<GradParam>& info) {
                           return std::string(info.param.variant->name) + "_" +
                                  std::to_string(info.index) + "_" + info.param.spec.Name();
                         });

#if defined(__x86_64__) || defined(__i386__)
// flash's backward flushes subnormal results too (its forward's test:
// FlashSubnormals in tests/flash_test.cc): steep ALiBi slopes spread P over
// the whole exponent range and dO of 1e-30 makes dP, dS and dV's products
// subnormal. Within the bound, and the caller's mode (testing::FpControlMode)
// as it was, with and without the caller's own FTZ.
TEST(GradSubnormals, FlashFlushedWithinTheBoundAndModeRestored) {
  const Variant* flash = FindVariant("flash");
  ASSERT_NE(flash, nullptr);
  for (const bool caller_ftz : {false, true}) {
    const testing::CallerFtzScope caller(caller_ftz);
    const unsigned before = testing::FpControlMode();
    ProblemSpec spec;
    spec.shape = {1, 2, 2, 200, 700, 32, 32};
    spec.mask = MaskKind::kCausal;
    spec.want_lse = true;
    spec.seed = 17;
    ProblemData data(spec);
    const std::vector<float> slopes = {2.0f, 0.25f};
    data.problem().modifiers.alibi_slopes = slopes;
    GradData grads(data);
    for (int64_t x = 0; x < 2 * 200 * 32; ++x) grads.d_o_data()[x] *= 1e-30f;
    for (int threads : {1, 2}) {
      EXPECT_EQ(CheckGradients(*flash, data, grads, threads), "") << "threads " << threads;
      EXPECT_EQ(testing::FpControlMode(), before) << "the caller's floating-point mode changed";
    }
  }
}
#endif

// ---------------------------------------------------------------- determinism

class GradVariantTest : public ::testing::TestWithParam<const Variant*> {};

std::vector<float> Gathered(const GradProblem& g) {
  const Shape& s = g.forward.shape;
  std::vector<float> out;
  auto gather = [&](const TensorRef<void>& t, int64_t heads, int64_t len, int64_t dim) {
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < len; ++i) {
          const float* row = testing::RowOf(t, b, h, i);
          out.insert(out.end(), row, row + dim);
        }
  };
  gather(g.dq, s.heads, s.q_len, s.head_dim);
  gather(g.dk, s.kv_heads, s.kv_len, s.head_dim);
  gather(g.dv, s.kv_heads, s.kv_len, s.value_dim);
  return out;
}

// A deterministic variant's gradients are bitwise identical run to run at a
// fixed thread count (flash's at any thread count: its dQ sums go in
// key-block order, whoever computes them).
TEST_P(GradVariantTest, DeterministicBits) {
  const Variant& v = *GetParam();
  if (!v.deterministic) GTEST_SKIP() << v.name << " is not deterministic";
  ProblemSpec spec;
  spec.shape = {1, 4, 2, 333, 400, 64, 64};
  spec.mask = MaskKind::kCausal;
  ProblemData data(spec);
  GradData grads(data);
  ASSERT_TRUE(testing::RunForwardForGrad(data, v.name).ok());
  const GradProblem g = grads.grad_problem();
  std::vector<std::vector<float>> runs;
  // flash: 2 threads take whole kv heads (2 of them), 5 take key blocks
  // (kernels/flash_backward.cc, "Work items"): both partitions against 1
  // thread. 5 threads on the 2-core CI machines lose their cores mid-item,
  // so flash's dQ turns are taken in every interleaving.
  for (int threads : {1, 2, 2, 1, 2, 5}) {
    grads.Poison();
    ASSERT_TRUE(RunBackward(v, g, OnThreads(threads)).ok());
    runs.push_back(Gathered(g));
  }
  const size_t bytes = sizeof(float) * runs[0].size();
  EXPECT_EQ(std::memcmp(runs[1].data(), runs[2].data(), bytes), 0) << "2 threads, twice";
  EXPECT_EQ(std::memcmp(runs[0].data(), runs[3].data(), bytes), 0) << "1 thread, twice";
  EXPECT_EQ(std::memcmp(runs[2].data(), runs[4].data(), bytes), 0) << "2 threads, thrice";
  if (std::string(v.name) == "flash") {
    EXPECT_EQ(std::memcmp(runs[0].data(), runs[1].data(), bytes), 0)
        << "flash: 1 thread vs 2 threads";
    EXPECT_EQ(std::memcmp(runs[0].data(), runs[5].data(), bytes), 0)
        << "flash: 1 thread vs 5 threads";
  }
}

// ---------------------------------------------------------------- edge semantics

// Fully masked rows (a batch whose key length is 0; an additive row of -inf)
// give dQ = 0 and add nothing to dK, dV, even when their dO is NaN; rows a
// causal mask hides from a key with NaN K and V stay finite.
TEST_P(GradVariantTest, MaskedRowsAndHiddenNaNsStayOut) {
  const Variant& v = *GetParam();
  ProblemSpec spec;
  spec.shape = {2, 2, 1, 90, 90, 24, 40};
  spec.mask = MaskKind::kCausal;
  spec.key_lengths = {90, 0};
  ProblemData data(spec);
  GradData grads(data);
  ASSERT_TRUE(testing::RunForwardForGrad(data, v.name).ok());
  const GradProblem g = grads.grad_problem();
  // Batch 1 sees no key: NaN in its dO must not matter.
  for (int64_t i = 0; i < 90; ++i) {
    float* d_o = const_cast<float*>(testing::RowOf(g.d_o, 1, 0, i));
    std::fill(d_o, d_o + 40, kNaN);
  }
  // Key 70 of batch 0 is NaN: rows < 70 do not see it (causal).
  float* k70 = const_cast<float*>(testing::RowOf(g.forward.k, 0, 0, 70));
  float* v70 = const_cast<float*>(testing::RowOf(g.forward.v, 0, 0, 70));
  std::fill(k70, k70 + 24, kNaN);
  std::fill(v70, v70 + 40, kNaN);
  ASSERT_TRUE(testing::RunForwardForGrad(data, v.name).ok());
  grads.Poison();
  ASSERT_TRUE(RunBackward(v, g, OnThreads(2)).ok());
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t i = 0; i < 90; ++i) {
      const float* dq1 = testing::RowOf(g.dq, 1, h, i);
      for (int64_t d = 0; d < 24; ++d) ASSERT_EQ(dq1[d], 0.0f) << "b=1 h=" << h << " i=" << i;
      const float* dq0 = testing::RowOf(g.dq, 0, h, i);
      for (int64_t d = 0; d < 24; ++d) {
        ASSERT_EQ(std::isnan(dq0[d]), i >= 70) << "b=0 h=" << h << " i=" << i << " d=" << d;
      }
    }
  }
  for (int64_t j = 0; j < 90; ++j) {
    const float* dk1 = testing::RowOf(g.dk, 1, 0, j);
    const float* dv1 = testing::RowOf(g.dv, 1, 0, j);
    for (int64_t d = 0; d < 24; ++d) ASSERT_EQ(dk1[d], 0.0f) << "dK b=1 j=" << j;
    for (int64_t d = 0; d < 40; ++d) ASSERT_EQ(dv1[d], 0.0f) << "dV b=1 j=" << j;
  }
  // And all of it as the reference says (NaN where it has NaN).
  auto want = reference::Backward(g);
  ASSERT_TRUE(want.ok());
  const testing::Comparison c =
      testing::CompareGradients(g, *want, reference::GradErrorBounds(g, *want));
  EXPECT_TRUE(c.ok) << c.first_failure;
}

// An additive row of -inf everywhere: lse = -inf, dQ = 0, never NaN.
TEST_P(GradVariantTest, AdditiveFullyMaskedRowIsZero) {
  const Variant& v = *GetParam();
  ProblemSpec spec;
  spec.shape = {1, 1, 1, 70, 70, 16, 16};
  spec.mask = MaskKind::kAdditive;
  ProblemData data(spec);
  GradData grads(data);
  float* row = const_cast<float*>(data.problem().mask.additive.data()) + 5 * 70;
  std::fill(row, row + 70, -std::numeric_limits<float>::infinity());
  ASSERT_TRUE(testing::RunForwardForGrad(data, v.name).ok());
  const GradProblem g = grads.grad_problem();
  float* d_o = const_cast<float*>(testing::RowOf(g.d_o, 0, 0, 5));
  d_o[3] = kNaN;
  grads.Poison();
  ASSERT_TRUE(RunBackward(v, g, OnThreads(1)).ok());
  const float* dq = testing::RowOf(g.dq, 0, 0, 5);
  for (int64_t d = 0; d < 16; ++d) EXPECT_EQ(dq[d], 0.0f) << d;
  auto want = reference::Backward(g);
  ASSERT_TRUE(want.ok());
  const testing::Comparison c =
      testing::CompareGradients(g, *want, reference::GradErrorBounds(g, *want));
  EXPECT_TRUE(c.ok) << c.first_failure;
}

// NaN in a Q row, a dO row or a visible K/V row reaches exactly the
// gradients the reference says (CompareGradients matches NaN to NaN).
TEST_P(GradVariantTest, NaNPropagatesAsTheReference) {
  const Variant& v = *GetParam();
  for (int where = 0; where < 4; ++where) {
    ProblemSpec spec;
    spec.shape = {1, 2, 1, 80, 100, 32, 32};
    spec.mask = MaskKind::kSlidingWindow;
    spec.window_left = 30;
    spec.window_right = 3;
    spec.seed = 77 + where;
    ProblemData data(spec);
    GradData grads(data);
    const GradProblem g = grads.grad_problem();
    auto poison = [](const TensorRef<const void>& t, int64_t h, int64_t i, int64_t n) {
      float* r = const_cast<float*>(testing::RowOf(t, 0, h, i));
      r[n / 2] = kNaN;
    };
    if (where == 0) poison(g.forward.q, 1, 40, 32);
    if (where == 1) poison(g.forward.k, 0, 55, 32);
    if (where == 2) poison(g.forward.v, 0, 12, 32);
    ASSERT_TRUE(testing::RunForwardForGrad(data, v.name).ok());
    if (where == 3) poison(g.d_o, 0, 61, 32);
    grads.Poison();
    ASSERT_TRUE(RunBackward(v, g, OnThreads(2)).ok());
    auto want = reference::Backward(g);
    ASSERT_TRUE(want.ok());
    const testing::Comparison c =
        testing::CompareGradients(g, *want, reference::GradErrorBounds(g, *want));
    EXPECT_TRUE(c.ok) << "NaN case " << where << ": " << c.first_failure;
  }
}

// Lq = 0: dK = dV = 0. Lk = 0: dQ = 0.
TEST_P(GradVariantTest, EmptyLengths) {
  const Variant& v = *GetParam();
  for (auto [lq, lk] : {std::pair<int64_t, int64_t>{0, 20}, {20, 0}}) {
    const int64_t h = 2, d = 8;
    // At least one element each, so no pointer is null.
    auto buffer = [](int64_t n) { return std::vector<float>(std::max<int64_t>(n, 1), kNaN); };
    std::vector<float> q = buffer(h * lq * d), k = buffer(h * lk * d), val = buffer(h * lk * d),
                       o = buffer(h * lq * d), lse = buffer(h * lq), d_o = buffer(h * lq * d),
                       dq = buffer(h * lq * d), dk = buffer(h * lk * d), dv = buffer(h * lk * d);
    for (auto* t : {&q, &k, &val, &d_o}) std::fill(t->begin(), t->end(), 0.5f);
    Problem f = MakeProblem({1, h, h, lq, lk, d, d}, q.data(), k.data(), val.data(), o.data());
    f.lse = std::span<float>(lse.data(), size_t(h * lq));
    const Status fwd = attn::Run(v, f, OnThreads(2));
    ASSERT_TRUE(fwd.ok()) << fwd.ToString();
    const GradProblem g = MakeGradProblem(f, d_o.data(), dq.data(), dk.data(), dv.data());
    const Status bwd = RunBackward(v, g, OnThreads(2));
    ASSERT_TRUE(bwd.ok()) << bwd.ToString();
    for (int64_t x = 0; x < h * lq * d; ++x) ASSERT_EQ(dq[x], 0.0f) << "Lq=" << lq << " Lk=" << lk;
    for (int64_t x = 0; x < h * lk * d; ++x) {
      ASSERT_EQ(dk[x], 0.0f) << "Lq=" << lq << " Lk=" << lk;
      ASSERT_EQ(dv[x], 0.0f) << "Lq=" << lq << " Lk=" << lk;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Registry, GradVariantTest, ::testing::ValuesIn(BackwardVariants()),
                         [](const ::testing::TestParamInfo<const Variant*>& info) {
                           return std::string(info.param->name);
                         });

// ---------------------------------------------------------------- validation

class GradValidation : public ::testing::Test {
 protected:
  GradValidation()
      : q(2 * 8 * 4),
        k(q.size()),
        v(q.size()),
        o(q.size()),
        d_o(q.size()),
        dq(q.size()),
        dk(q.size()),
        dv(q.size()),
        lse(2 * 8) {
    forward = MakeProblem({1, 2, 2, 8, 8, 4, 4}, q.data(), k.data(), v.data(), o.data());
    forward.lse = lse;
    g = MakeGradProblem(forward, d_o.data(), dq.data(), dk.data(), dv.data());
  }
  std::string Error() const {
    auto valid = ValidateGrad(g);
    return valid.ok() ? "" : valid.status().message();
  }
  std::vector<float> q, k, v, o, d_o, dq, dk, dv, lse;
  Problem forward;
  GradProblem g;
};

TEST_F(GradValidation, AcceptsAContiguousProblem) { EXPECT_EQ(Error(), ""); }

TEST_F(GradValidation, NamesEachBadArgument) {
  const auto expect = [&](auto mutate, const std::string& want) {
    GradProblem saved = g;
    mutate(g);
    EXPECT_NE(Error().find(want), std::string::npos) << "got: " << Error() << "\nwant: " << want;
    g = saved;
  };
  expect([](GradProblem& x) { x.forward.lse = {}; }, "lse is required by the backward");
  expect([](GradProblem& x) { x.d_o.data = nullptr; }, "dO is null");
  expect([](GradProblem& x) { x.dk.data = nullptr; }, "dK is null");
  expect([](GradProblem& x) { x.d_o.strides.elem = 2; }, "dO.strides.elem=2");
  expect([](GradProblem& x) { x.dq.strides.row = 0; }, "makes dQ overlap itself");
  expect([&](GradProblem& x) { x.dq.data = q.data(); }, "gradient dQ overlaps input Q");
  expect([&](GradProblem& x) { x.dv.data = d_o.data(); }, "gradient dV overlaps input dO");
  expect([&](GradProblem& x) { x.dk.data = o.data(); }, "gradient dK overlaps input O");
  expect([&](GradProblem& x) { x.dv.data = dk.data(); }, "gradient dK overlaps gradient dV");
  expect([&](GradProblem& x) { x.dq.data = lse.data(); }, "overlaps input lse");
  expect([](GradProblem& x) { x.forward.shape.kv_heads = 3; }, "Hkv=3 does not divide H=2");
  expect([](GradProblem& x) { x.forward.q.dtype = DType::kBF16; },
         "the backward takes f32 tensors only; Q=bf16");
  expect([](GradProblem& x) { x.dv.dtype = DType::kF16; }, "dV=f16");
}

TEST_F(GradValidation, VariantWithoutBackwardIsNamed) {
  for (const Variant* v : Registry()) {
    if (v->has_backward()) continue;
    const Status s = RunBackward(*v, g);
    EXPECT_EQ(s.code(), StatusCode::kUnimplemented) << v->name;
    EXPECT_NE(s.message().find("has no backward pass; variants with one: "), std::string::npos)
        << s.message();
  }
}

// ---------------------------------------------------------------- memory

// A shape-only backward problem (Prepare reads shapes and addresses, never
// data): N = 65536, d = 64, H = 1.
GradProblem ShapeOnly(int64_t n, int64_t d) {
  const uintptr_t gap = uintptr_t{1} << 40;
  auto at = [&](int k) { return reinterpret_cast<float*>(gap * (k + 1)); };
  Problem f = MakeProblem({1, 1, 1, n, n, d, d}, at(0), at(1), at(2), at(3));
  f.mask.kind = MaskKind::kCausal;
  f.lse = std::span<float>(at(4), size_t(n));
  return MakeGradProblem(f, at(5), at(6), at(7), at(8));
}

// flash's backward workspace does not grow with the sequence beyond 24 bytes
// per 64 query rows (its dQ turns and hulls): a few hundred KiB at
// N = 65536; materializing backwards (naive: 2·N² floats; blas: panels of
// N keys) are refused there under a 64 MiB budget, before allocating, with
// the memory-budget message.
TEST(GradMemory, FlashIsIndependentOfLengthMaterializingRefused) {
  RunOptions options = OnThreads(2);
  options.memory_budget_bytes = size_t{64} << 20;
  for (const Variant* v : BackwardVariants()) {
    auto small = PrepareBackward(*v, ShapeOnly(1024, 64), options);
    auto big = PrepareBackward(*v, ShapeOnly(65536, 64), options);
    ASSERT_TRUE(small.ok()) << v->name << ": " << small.status().ToString();
    if (v->backward.materializes_scores) {
      ASSERT_FALSE(big.ok()) << v->name;
      EXPECT_EQ(big.status().code(), StatusCode::kResourceExhausted);
      EXPECT_NE(big.status().message().find("of scores, budget"), std::string::npos)
          << big.status().message();
      continue;
    }
    ASSERT_TRUE(big.ok()) << v->name << ": " << big.status().ToString();
    const size_t at_1k = v->backward.workspace_bytes(*small, 2);
    const size_t at_64k = v->backward.workspace_bytes(*big, 2);
    EXPECT_LT(at_64k, size_t{4} << 20) << v->name;
    // What grows with the length: D, one float per query row (as the lse
    // the caller gives), and a few bytes per 64-row block.
    EXPECT_LE(at_64k - at_1k, sizeof(float) * (65536 - 1024) + (size_t{64} << 10)) << v->name;
  }
}

// Declared workspace covers what the kernel takes (the counting allocator).
TEST_P(GradVariantTest, WorkspaceDeclaredCoversMeasured) {
  const Variant& v = *GetParam();
  ProblemSpec spec;
  spec.shape = {1, 4, 2, 200, 300, 40, 24};
  spec.mask = MaskKind::kCausal;
  ProblemData data(spec);
  GradData grads(data);
  ASSERT_TRUE(testing::RunForwardForGrad(data, v.name).ok());
  for (int threads : {1, 2}) {
    RunStats stats;
    ASSERT_TRUE(RunBackward(v, grads.grad_problem(), OnThreads(threads), &stats).ok());
    EXPECT_LE(stats.workspace_peak_bytes, stats.workspace_declared_bytes) << threads;
    EXPECT_GT(stats.workspace_peak_bytes, 0u) << threads;
  }
}

}  // namespace
}  // namespace attn
