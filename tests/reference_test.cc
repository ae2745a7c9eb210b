// The oracle's own tests: tiny problems whose answer is written down by hand,
// and invariants any attention must satisfy.
#include "reference/reference.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "testing/problem_data.h"

namespace attn::reference {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

struct Tiny {
  std::vector<float> q, k, v, o;
  Problem p;
  Tiny(Shape s, std::vector<float> q_, std::vector<float> k_, std::vector<float> v_)
      : q(std::move(q_)),
        k(std::move(k_)),
        v(std::move(v_)),
        o(s.batch * s.heads * s.q_len * s.value_dim) {
    p = MakeProblem(s, q.data(), k.data(), v.data(), o.data());
  }
  Result Run(bool weights = true) {
    auto r = Attention(p, weights);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return *r;
  }
};

TEST(ReferenceTest, TwoKeysByHand) {
  // d = 1, scale = 1: scores 0 and ln 3 give weights 1/4, 3/4.
  Tiny t(Shape{1, 1, 1, 1, 2, 1, 1}, {1.0f}, {0.0f, float(std::log(3.0))}, {4.0f, 8.0f});
  const Result r = t.Run();
  EXPECT_NEAR(r.o[0], 0.25 * 4 + 0.75 * 8, 1e-6);
  EXPECT_NEAR(r.lse[0], std::log(4.0), 1e-6);
  EXPECT_NEAR(r.weights[0], 0.25, 1e-7);
  EXPECT_NEAR(r.weights[1], 0.75, 1e-7);
}

TEST(ReferenceTest, CausalIsBottomRightAligned) {
  // Lq = 2, Lk = 3, zero keys: uniform weights over the visible keys.
  // Row 0 sees keys 0..1 (0 <= j <= 0 + 3 - 2), row 1 sees 0..2.
  Tiny t(Shape{1, 1, 1, 2, 3, 1, 1}, {1, 1}, {0, 0, 0}, {3, 6, 12});
  t.p.mask.kind = MaskKind::kCausal;
  const Result r = t.Run();
  EXPECT_NEAR(r.o[0], (3 + 6) / 2.0, 1e-12);
  EXPECT_NEAR(r.o[1], (3 + 6 + 12) / 3.0, 1e-12);
  EXPECT_NEAR(r.lse[0], std::log(2.0), 1e-12);
  EXPECT_NEAR(r.lse[1], std::log(3.0), 1e-12);
}

TEST(ReferenceTest, SlidingWindowAroundTheDiagonal) {
  // Lq = Lk = 3, window (left 1, right 0): row i sees [i - 1, i].
  Tiny t(Shape{1, 1, 1, 3, 3, 1, 1}, {1, 1, 1}, {0, 0, 0}, {2, 4, 8});
  t.p.mask.kind = MaskKind::kSlidingWindow;
  t.p.mask.window_left = 1;
  t.p.mask.window_right = 0;
  const Result r = t.Run();
  EXPECT_NEAR(r.o[0], 2.0, 1e-12);
  EXPECT_NEAR(r.o[1], 3.0, 1e-12);
  EXPECT_NEAR(r.o[2], 6.0, 1e-12);
  EXPECT_DOUBLE_EQ(r.weights[0 * 3 + 2], 0.0);
}

TEST(ReferenceTest, KeyLengthZeroIsFullyMasked) {
  Tiny t(Shape{1, 1, 1, 1, 2, 1, 1}, {1}, {1, 2}, {5, 7});
  const int32_t lens[] = {0};
  t.p.mask.key_lengths = lens;
  const Result r = t.Run();
  EXPECT_EQ(r.o[0], 0.0);
  EXPECT_EQ(r.lse[0], -kInf);
  EXPECT_EQ(r.weights[0], 0.0);
}

TEST(ReferenceTest, EmptyKeysAreFullyMasked) {
  Tiny t(Shape{1, 1, 1, 2, 0, 1, 1}, {1, 1}, {0}, {0});
  const Result r = t.Run();
  EXPECT_EQ(r.o[0], 0.0);
  EXPECT_EQ(r.lse[1], -kInf);
}

TEST(ReferenceTest, AdditiveMinusInfHidesAKey) {
  Tiny t(Shape{1, 1, 1, 1, 2, 1, 1}, {1}, {0, 0}, {5, 7});
  const float mask[] = {0.0f, -std::numeric_limits<float>::infinity()};
  t.p.mask.kind = MaskKind::kAdditive;
  t.p.mask.additive = mask;
  t.p.mask.additive_shape = {1, 1, 1, 2};
  const Result r = t.Run();
  EXPECT_EQ(r.o[0], 5.0);
  EXPECT_EQ(r.lse[0], 0.0);
}

TEST(ReferenceTest, PlusInfLogitMakesTheRowNaN) {
  Tiny t(Shape{1, 1, 1, 2, 2, 1, 1}, {1, 1}, {0, 0}, {5, 7});
  const float inf = std::numeric_limits<float>::infinity();
  const float mask[] = {inf, 0.0f, 0.0f, 0.0f};
  t.p.mask.kind = MaskKind::kAdditive;
  t.p.mask.additive = mask;
  t.p.mask.additive_shape = {1, 1, 2, 2};
  const Result r = t.Run();
  EXPECT_TRUE(std::isnan(r.o[0]));
  EXPECT_TRUE(std::isnan(r.lse[0]));
  EXPECT_EQ(r.o[1], 6.0);
}

TEST(ReferenceTest, NaNInQReachesOnlyItsRow) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Tiny t(Shape{1, 1, 1, 2, 2, 1, 1}, {nan, 1}, {0, 0}, {5, 7});
  const Result r = t.Run();
  EXPECT_TRUE(std::isnan(r.o[0]));
  EXPECT_EQ(r.o[1], 6.0);
}

TEST(ReferenceTest, NaNInHiddenValueDoesNotReachTheRow) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // Causal Lq = Lk = 2: row 0 never sees key 1, whose V is NaN.
  Tiny t(Shape{1, 1, 1, 2, 2, 1, 1}, {1, 1}, {0, 0}, {5, nan});
  t.p.mask.kind = MaskKind::kCausal;
  const Result r = t.Run();
  EXPECT_EQ(r.o[0], 5.0);
  EXPECT_TRUE(std::isnan(r.o[1]));
}

TEST(ReferenceTest, GroupedQueryHeadsShareTheirKvHead) {
  // H = 4, Hkv = 2: heads 0, 1 read kv head 0; heads 2, 3 read kv head 1.
  Tiny t(Shape{1, 4, 2, 1, 1, 1, 1}, {1, 2, 3, 4}, {0, 0}, {10, 20});
  const Result r = t.Run();
  EXPECT_EQ(r.o[0], 10.0);
  EXPECT_EQ(r.o[1], 10.0);
  EXPECT_EQ(r.o[2], 20.0);
  EXPECT_EQ(r.o[3], 20.0);
}

// Invariants on a random problem.
class ReferenceInvariantTest : public ::testing::Test {
 protected:
  testing::ProblemSpec Spec() {
    testing::ProblemSpec spec;
    spec.shape = Shape{2, 2, 1, 9, 13, 8, 5};
    spec.seed = 7;
    return spec;
  }
};

TEST_F(ReferenceInvariantTest, WeightRowsSumToOne) {
  auto spec = Spec();
  spec.mask = MaskKind::kCausal;
  testing::ProblemData data(spec);
  auto r = Attention(data.problem(), true);
  ASSERT_TRUE(r.ok());
  const Shape& s = spec.shape;
  for (int64_t row = 0; row < s.batch * s.heads * s.q_len; ++row) {
    const double sum = std::accumulate(r->weights.begin() + row * s.kv_len,
                                       r->weights.begin() + (row + 1) * s.kv_len, 0.0);
    EXPECT_NEAR(sum, 1.0, 1e-12) << "row " << row;
  }
}

TEST_F(ReferenceInvariantTest, PermutingKeysWithValuesLeavesOUnchanged) {
  auto spec = Spec();
  testing::ProblemData data(spec);
  auto before = Attention(data.problem());
  ASSERT_TRUE(before.ok());
  // Reverse the key order of every (b, kv head), moving K and V rows together.
  const Shape& s = spec.shape;
  const Problem& p = data.problem();
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t h = 0; h < s.kv_heads; ++h) {
      for (int64_t j = 0; j < s.kv_len / 2; ++j) {
        const int64_t jj = s.kv_len - 1 - j;
        auto swap_rows = [&](const TensorRef<const void>& t, int64_t dim) {
          float* a = const_cast<float*>(testing::RowOf(t, b, h, j));
          float* c = const_cast<float*>(testing::RowOf(t, b, h, jj));
          std::swap_ranges(a, a + dim, c);
        };
        swap_rows(p.k, s.head_dim);
        swap_rows(p.v, s.value_dim);
      }
    }
  }
  auto after = Attention(data.problem());
  ASSERT_TRUE(after.ok());
  for (size_t i = 0; i < before->o.size(); ++i) EXPECT_NEAR(before->o[i], after->o[i], 1e-12);
}

TEST_F(ReferenceInvariantTest, UniformShiftOfOneQueryChangesNothingButLse) {
  auto spec = Spec();
  spec.mask = MaskKind::kAdditive;
  testing::ProblemData data(spec);
  std::vector<float> mask(spec.shape.q_len * spec.shape.kv_len, 0.0f);
  data.problem().mask.additive = mask;
  data.problem().mask.additive_shape = {1, 1, spec.shape.q_len, spec.shape.kv_len};
  auto before = Attention(data.problem());
  const int64_t shifted_row = 4;
  for (int64_t j = 0; j < spec.shape.kv_len; ++j) mask[shifted_row * spec.shape.kv_len + j] = 3.5f;
  auto after = Attention(data.problem());
  ASSERT_TRUE(before.ok() && after.ok());
  for (size_t i = 0; i < before->o.size(); ++i) EXPECT_NEAR(before->o[i], after->o[i], 1e-12);
  EXPECT_NEAR(after->lse[shifted_row], before->lse[shifted_row] + 3.5, 1e-12);
}

}  // namespace
}  // namespace attn::reference
