// attn::Run called concurrently, the way applications call it: from
// std::threads, and from inside an application's own OpenMP parallel region
// with nesting off (the OpenMP default) and on. Every registry variant, every
// caller thread on its own problem, each result against the fp64 reference.
//
// The regression this guards (issue 21): ParallelFor ran its items serially
// for one thread or one item but indexed per-thread scratch with
// omp_get_thread_num(), which inside an outer region is the *outer* team's
// index: two OpenMP threads calling Run with threads = 1 wrote past the
// scratch ("double free or corruption" for naive, SIGSEGV for the others).
// The one-work-item shape (B = H = 1, Lq = 64) broke chunked and flash at any
// thread count. Under the asan preset these cases are heap-buffer-overflows.
//
// Also checked: RunStats::threads says the team Run used (1 inside a region
// OpenMP will not nest, the requested count where it will).
#include <gtest/gtest.h>
#include <omp.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kernels/registry.h"
#include "reference/reference.h"
#include "testing/compare.h"
#include "testing/problem_data.h"

namespace attn::testing {
namespace {

constexpr int kCallers = 4;

// One work item for every variant (one head, one 64-row block, Lk = 512: a
// single flash tile, a single chunked chunk), and a multi-head causal GQA
// problem with several items per thread.
ProblemSpec OneItemSpec(uint64_t seed) {
  ProblemSpec spec;
  spec.shape = Shape{1, 1, 1, 64, 512, 64, 64};
  spec.seed = seed;
  return spec;
}
ProblemSpec ManyItemsSpec(uint64_t seed) {
  ProblemSpec spec;
  spec.shape = Shape{2, 4, 2, 100, 300, 40, 24};
  spec.mask = MaskKind::kCausal;
  spec.seed = seed;
  return spec;
}

struct Outcome {
  Status status;
  RunStats stats;
};

// One caller's problem, its run and the comparison, checked on the test's
// thread (after the callers joined).
struct Caller {
  explicit Caller(const ProblemSpec& spec) : data(spec) { data.Poison(); }
  void Run(const Variant& v, int threads) {
    RunOptions options;
    options.threads = threads;
    outcome.status = attn::Run(v, data.problem(), options, &outcome.stats);
  }
  void Check(const std::string& where) {
    ASSERT_TRUE(outcome.status.ok()) << where << ": " << outcome.status.ToString();
    auto want = reference::Attention(data.problem());
    ASSERT_TRUE(want.ok()) << want.status().ToString();
    const Comparison c = CompareToReference(data, *want);
    EXPECT_TRUE(c.ok) << where << ": " << c.first_failure << " (seed " << data.spec().seed << ")";
  }
  ProblemData data;
  Outcome outcome;
};

std::vector<std::unique_ptr<Caller>> MakeCallers(bool one_item) {
  std::vector<std::unique_ptr<Caller>> callers;
  for (int c = 0; c < kCallers; ++c) {
    const uint64_t seed = 9100 + c;
    callers.push_back(std::make_unique<Caller>(one_item ? OneItemSpec(seed) : ManyItemsSpec(seed)));
  }
  return callers;
}

// Sets omp_set_max_active_levels for the test's scope.
class ScopedMaxActiveLevels {
 public:
  explicit ScopedMaxActiveLevels(int levels) : saved_(omp_get_max_active_levels()) {
    omp_set_max_active_levels(levels);
  }
  ~ScopedMaxActiveLevels() { omp_set_max_active_levels(saved_); }

 private:
  int saved_;
};

struct Param {
  const Variant* variant;
  bool one_item;
};

class ConcurrencyTest : public ::testing::TestWithParam<Param> {
 protected:
  const Variant& variant() const { return *GetParam().variant; }
  bool one_item() const { return GetParam().one_item; }

  // kCallers OpenMP threads each run their own problem with `threads`;
  // `levels` = max active levels (1: nesting off, 2: on).
  void RunInOpenMpRegion(int levels, int threads) {
    ScopedMaxActiveLevels scope(levels);
    auto callers = MakeCallers(one_item());
#pragma omp parallel for num_threads(kCallers) schedule(static, 1)
    for (int c = 0; c < kCallers; ++c) callers[c]->Run(variant(), threads);
    const int nested = levels > 1 ? (threads > 0 ? threads : omp_get_max_threads()) : 1;
    for (size_t c = 0; c < callers.size(); ++c) {
      const std::string where = "OpenMP caller " + std::to_string(c) + ", max_active_levels " +
                                std::to_string(levels) + ", threads " + std::to_string(threads);
      callers[c]->Check(where);
      // Inside the region Run used a nested team only where OpenMP allows one.
      if (levels == 1 || threads > 0) {
        EXPECT_EQ(callers[c]->outcome.stats.threads, nested) << where;
      }
    }
  }
};

TEST_P(ConcurrencyTest, InsideOpenMpRegionNestingOff) {
  for (int threads : {0, 1, 2}) RunInOpenMpRegion(/*levels=*/1, threads);
}

TEST_P(ConcurrencyTest, InsideOpenMpRegionNestingOn) {
  for (int threads : {0, 1, 2}) RunInOpenMpRegion(/*levels=*/2, threads);
}

TEST_P(ConcurrencyTest, FromStdThreads) {
  for (int threads : {1, 2}) {
    auto callers = MakeCallers(one_item());
    std::vector<std::thread> pool;
    for (auto& c : callers) {
      pool.emplace_back([&variant = variant(), &c, threads] { c->Run(variant, threads); });
    }
    for (std::thread& t : pool) t.join();
    for (size_t c = 0; c < callers.size(); ++c) {
      const std::string where =
          "std::thread caller " + std::to_string(c) + ", threads " + std::to_string(threads);
      callers[c]->Check(where);
      EXPECT_EQ(callers[c]->outcome.stats.threads, threads) << where;
    }
  }
}

std::vector<Param> Params() {
  std::vector<Param> params;
  for (const Variant* v : Registry()) {
    params.push_back({v, true});
    params.push_back({v, false});
  }
  return params;
}

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  return std::string(info.param.variant->name) + (info.param.one_item ? "_OneItem" : "_ManyItems");
}

INSTANTIATE_TEST_SUITE_P(Variants, ConcurrencyTest, ::testing::ValuesIn(Params()), ParamName);

}  // namespace
}  // namespace attn::testing
