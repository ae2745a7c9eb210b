// The accuracy run checks long rows through RowProblem(): row i re-posed as
// a one-query problem. This test pins that re-posing down: for every mask
// kind, Lq = Lk, Lq < Lk and Lq > Lk, the reference's answer (O, lse) and the
// ErrorBound for the one-query problem equal those of row i of the
// full problem.
#include "bench/accuracy.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "reference/reference.h"
#include "testing/compare.h"
#include "testing/problem_data.h"

namespace attn::bench {
namespace {

struct Config {
  MaskKind mask;
  int64_t left = 0, right = 0;
  bool key_lengths = false;
};

TEST(RowProblemTest, MatchesRowOfFullProblem) {
  const Config configs[] = {{MaskKind::kNone},
                            {MaskKind::kCausal},
                            {MaskKind::kSlidingWindow, 20, 0},
                            {MaskKind::kSlidingWindow, 9, 5},
                            {MaskKind::kAdditive},
                            {MaskKind::kNone, 0, 0, true},
                            {MaskKind::kCausal, 0, 0, true}};
  const std::pair<int64_t, int64_t> lengths[] = {{97, 97}, {40, 97}, {97, 40}};
  uint64_t seed = 7;
  for (const Config& cfg : configs) {
    for (auto [lq, lk] : lengths) {
      testing::ProblemSpec spec;
      spec.shape = {1, 1, 1, lq, lk, 16, 16};
      spec.mask = cfg.mask;
      spec.window_left = cfg.left;
      spec.window_right = cfg.right;
      if (cfg.key_lengths) spec.key_lengths = {int32_t(lk * 2 / 3)};
      spec.seed = seed++;
      testing::ProblemData data(spec);
      const Problem& p = data.problem();
      auto full = reference::Attention(p);
      ASSERT_TRUE(full.ok()) << spec.Name();
      std::vector<float> out(16);
      for (int64_t i = 0; i < lq; ++i) {
        const Problem row = RowProblem(p, i, out.data());
        auto one = reference::Attention(row);
        ASSERT_TRUE(one.ok()) << spec.Name() << " row " << i << ": " << one.status().ToString();
        SCOPED_TRACE(spec.Name() + " row " + std::to_string(i));
        for (int64_t d = 0; d < 16; ++d) {
          EXPECT_NEAR(one->o[d], full->o[i * 16 + d], 1e-12);
        }
        if (std::isinf(full->lse[i])) {
          EXPECT_EQ(one->lse[0], full->lse[i]);
        } else {
          EXPECT_NEAR(one->lse[0], full->lse[i], 1e-12);
        }
        EXPECT_DOUBLE_EQ(testing::ErrorBound(row, 0, 0, 0).o, testing::ErrorBound(p, 0, 0, i).o);
      }
    }
  }
}

}  // namespace
}  // namespace attn::bench
