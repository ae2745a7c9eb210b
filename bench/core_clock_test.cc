// The core clock probe (bench/core_clock.h): its readings are clocks a core
// can run at, and the sampler's counter is the median of what it read.
#include "bench/core_clock.h"

#include <gtest/gtest.h>

namespace attn::bench {
namespace {

TEST(CoreClock, TscRateIsACpuClock) {
  if (!CoreClockAvailable()) GTEST_SKIP() << "no invariant TSC (constant_tsc, nonstop_tsc)";
  EXPECT_GT(TscHz(), 0.2e9);
  EXPECT_LT(TscHz(), 10e9);
}

// A chain the core shortens (an add-immediate chain, folded at rename on
// Golden Cove: 17 GHz) or a TSC read wrong reads outside any x86 clock.
TEST(CoreClock, ReadsAClockACoreRunsAt) {
  if (!CoreClockAvailable()) GTEST_SKIP() << "no invariant TSC (constant_tsc, nonstop_tsc)";
  double ghz = 0;
  for (int attempt = 0; attempt < 20 && ghz == 0; ++attempt) ghz = CoreClockGhz();
  ASSERT_GT(ghz, 0) << "every reading held a clock switch";
  EXPECT_GT(ghz, 0.2);
  EXPECT_LT(ghz, 7.0);
}

TEST(CoreClock, SamplerKeepsTheMedianOfItsReadings) {
  CoreClockSampler sampler;
  EXPECT_EQ(sampler.MedianGhz(), 0);
  sampler.Add(3.0);
  sampler.Add(0);  // no reading
  sampler.Add(2.0);
  sampler.Add(4.0);
  EXPECT_EQ(sampler.MedianGhz(), 3.0);
}

}  // namespace
}  // namespace attn::bench
