// Every registry variant x the shape grid x every mask kind, against the fp64
// reference. The grid (testing/problem_data.cc, GridSpecs) has sizes around
// tiles and vector widths, Lq < Lk and Lq > Lk, dk != dv, head dims that are
// not multiples of 16, GQA 1/2/4/8, both layouts, padded rows, misaligned
// data, B and H > 1, large logits, near ties, fully masked rows and key
// lengths 0 and Lk. Outputs are poisoned with NaN before every run.
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "kernels/registry.h"
#include "reference/reference.h"
#include "testing/compare.h"
#include "testing/problem_data.h"

namespace attn::testing {
namespace {

struct GridParam {
  const Variant* variant;
  ProblemSpec spec;
  size_t index;
};

// gtest prints parameters of failing tests; the spec's name says it all.
void PrintTo(const GridParam& p, std::ostream* os) {
  *os << p.variant->name << " " << p.spec.Name() << " seed=" << p.spec.seed;
}

std::vector<GridParam> AllPairs() {
  std::vector<GridParam> params;
  const std::vector<ProblemSpec> specs = GridSpecs();
  for (const Variant* variant : Registry()) {
    for (size_t i = 0; i < specs.size(); ++i) params.push_back({variant, specs[i], i});
  }
  return params;
}

std::string ParamName(const ::testing::TestParamInfo<GridParam>& info) {
  return std::string(info.param.variant->name) + "_" + std::to_string(info.param.index) + "_" +
         info.param.spec.Name();
}

// Runs `variant` on a fresh, poisoned copy of `spec` and checks it.
Comparison RunAndCompare(const Variant& variant, ProblemSpec spec, int threads,
                         std::vector<float>* output = nullptr) {
  if (!variant.supports_weights) spec.want_weights = false;
  ProblemData data(spec);
  auto want = reference::Attention(data.problem(), spec.want_weights);
  EXPECT_TRUE(want.ok()) << want.status().ToString();
  if (!want.ok()) return {};
  RunStats stats;
  RunOptions options;
  options.threads = threads;
  const Status status = Run(variant, data.problem(), options, &stats);
  EXPECT_TRUE(status.ok()) << status.ToString();
  EXPECT_LE(stats.workspace_peak_bytes, stats.workspace_declared_bytes)
      << variant.name << " took more workspace than it declares";
  if (output) *output = data.OutputContiguous();
  return CompareToReference(data, *want);
}

class KernelGridTest : public ::testing::TestWithParam<GridParam> {};

TEST_P(KernelGridTest, MatchesReference) {
  const GridParam& param = GetParam();
  const Comparison c = RunAndCompare(*param.variant, param.spec, /*threads=*/0);
  // Recorded in the XML/JSON test output: how close the kernel came to its bound.
  RecordProperty("error_over_bound", std::to_string(c.worst_bound_ratio));
  EXPECT_TRUE(c.ok) << c.first_failure << "\n  variant=" << param.variant->name
                    << " case=" << param.spec.Name() << " seed=" << param.spec.seed
                    << " max_abs_error=" << c.max_abs_error
                    << " worst error/bound=" << c.worst_bound_ratio;
}

INSTANTIATE_TEST_SUITE_P(Grid, KernelGridTest, ::testing::ValuesIn(AllPairs()), ParamName);

// A subset runs with 1 and with 2 threads: both must match the reference and
// each other (deterministic variants bit for bit).
std::vector<GridParam> ThreadSubset() {
  std::vector<GridParam> all = AllPairs(), subset;
  for (size_t i = 0; i < all.size(); ++i) {
    if (all[i].index % 6 == 0) subset.push_back(all[i]);
  }
  return subset;
}

class ThreadAgreementTest : public ::testing::TestWithParam<GridParam> {};

TEST_P(ThreadAgreementTest, OneAndTwoThreadsAgree) {
  const GridParam& param = GetParam();
  std::vector<float> one, two;
  const Comparison c1 = RunAndCompare(*param.variant, param.spec, 1, &one);
  const Comparison c2 = RunAndCompare(*param.variant, param.spec, 2, &two);
  EXPECT_TRUE(c1.ok) << "1 thread: " << c1.first_failure << " seed=" << param.spec.seed;
  EXPECT_TRUE(c2.ok) << "2 threads: " << c2.first_failure << " seed=" << param.spec.seed;
  ASSERT_EQ(one.size(), two.size());
  if (param.variant->deterministic) {
    for (size_t i = 0; i < one.size(); ++i) {
      const bool same = (std::isnan(one[i]) && std::isnan(two[i])) || one[i] == two[i];
      ASSERT_TRUE(same) << "element " << i << ": " << one[i] << " (1 thread) vs " << two[i]
                        << " (2 threads)";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Threads, ThreadAgreementTest, ::testing::ValuesIn(ThreadSubset()),
                         ParamName);

// The registry itself: names unique and usable as test/benchmark names.
TEST(RegistryTest, NamesAreUniqueIdentifiers) {
  std::set<std::string> seen;
  for (const Variant* v : Registry()) {
    EXPECT_TRUE(seen.insert(v->name).second) << "duplicate variant " << v->name;
    for (const char* c = v->name; *c; ++c) {
      EXPECT_TRUE(std::isalnum(static_cast<unsigned char>(*c)) || *c == '_') << v->name;
    }
    EXPECT_NE(v->run, nullptr);
    EXPECT_NE(v->workspace_bytes, nullptr);
  }
  EXPECT_EQ(FindVariant("no-such-variant"), nullptr);
}

TEST(RegistryTest, UnknownNameIsNotFoundAndListsKnownNames) {
  std::vector<float> q(4), k(4), v(4), o(4);
  const Problem p = MakeProblem(Shape{1, 1, 1, 1, 1, 4, 4}, q.data(), k.data(), v.data(), o.data());
  const Status s = attn::Run("no-such-variant", p);
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find("naive"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace attn::testing
