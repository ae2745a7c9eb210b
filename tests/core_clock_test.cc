// The core clock probe (kernels/core_clock.h): its readings are clocks a
// core can run at, ParallelFor reads it after items only while a Run asks
// (RunOptions::probe_clock), at most once per 5 ms of a thread's time, and
// the Run hands the readings back in RunStats::core_ghz.
#include "kernels/core_clock.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "kernels/internal/parallel.h"
#include "kernels/registry.h"
#include "testing/problem_data.h"

namespace attn::testing {
namespace {

constexpr const char* kNoTsc = "no invariant TSC (/proc/cpuinfo: constant_tsc, nonstop_tsc)";

// Past the probe's 5 ms per thread since its last reading.
void WaitOutTheInterval() { std::this_thread::sleep_for(std::chrono::milliseconds(6)); }

TEST(CoreClock, TscRateIsACpuClock) {
  if (!CoreClockAvailable()) GTEST_SKIP() << kNoTsc;
  EXPECT_GT(TscHz(), 0.2e9);
  EXPECT_LT(TscHz(), 10e9);
}

// A chain the core shortens (an add-immediate chain, folded at rename on
// Golden Cove: 17 GHz) or a TSC rate read wrong gives no x86 clock.
TEST(CoreClock, ReadsAClockACoreRunsAt) {
  if (!CoreClockAvailable()) GTEST_SKIP() << kNoTsc;
  double ghz = 0;
  for (int attempt = 0; attempt < 20 && ghz == 0; ++attempt) ghz = CoreClockGhz();
  ASSERT_GT(ghz, 0) << "every reading held a clock switch";
  EXPECT_GT(ghz, 0.2);
  EXPECT_LT(ghz, 7.0);
}

TEST(CoreClock, ItemsReadAtMostOncePerInterval) {
  if (!CoreClockAvailable()) GTEST_SKIP() << kNoTsc;
  ItemClocks clocks;
  ParallelFor(1, 100, [](int64_t) {});  // no scope: nothing read
  WaitOutTheInterval();
  {
    const ScopedItemClocks probed(&clocks);
    ASSERT_TRUE(probed.owns());
    ItemClocks inner;
    const ScopedItemClocks nested(&inner);
    EXPECT_FALSE(nested.owns()) << "the outer Run gets an inner Run's readings";
    ParallelFor(1, 100, [](int64_t) {});  // 100 empty items in well under 5 ms
  }
  EXPECT_EQ(ProbedClocks(), nullptr) << "the scope ended";
  // The first item reads (unless its reading held a switch); a thread
  // preempted for 5 ms may read once more; never once per item.
  EXPECT_LE(clocks.Take().size(), 2u);
}

TEST(CoreClock, RunReadsTheClockAfterItsItemsWhenAsked) {
  if (!CoreClockAvailable()) GTEST_SKIP() << kNoTsc;
  ProblemSpec spec;
  spec.shape = Shape{1, 8, 8, 256, 256, 64, 64};
  ProblemData data(spec);
  RunOptions options;
  options.threads = 1;
  RunStats stats;
  WaitOutTheInterval();
  ASSERT_TRUE(attn::Run("flash", data.problem(), options, &stats).ok());
  EXPECT_TRUE(stats.core_ghz.empty()) << "not asked";

  options.probe_clock = true;
  for (int attempt = 0; attempt < 20 && stats.core_ghz.empty(); ++attempt) {
    WaitOutTheInterval();
    ASSERT_TRUE(attn::Run("flash", data.problem(), options, &stats).ok());
  }
  ASSERT_FALSE(stats.core_ghz.empty());
  for (double ghz : stats.core_ghz) {
    EXPECT_GT(ghz, 0.2);
    EXPECT_LT(ghz, 7.0);
  }
}

}  // namespace
}  // namespace attn::testing
