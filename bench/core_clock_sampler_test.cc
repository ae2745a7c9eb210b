// The bench's core_ghz sampler (bench/core_clock.h): its counter is the
// median of its readings. The probe itself: tests/core_clock_test.cc.
#include <gtest/gtest.h>

#include "bench/core_clock.h"

namespace attn::bench {
namespace {

TEST(CoreClockSampler, KeepsTheMedianOfItsReadings) {
  CoreClockSampler sampler;
  EXPECT_EQ(sampler.MedianGhz(), 0);
  sampler.Add(3.0);
  sampler.Add(0);  // no reading
  sampler.Add(2.0);
  sampler.Add({4.0, 0.0});
  EXPECT_EQ(sampler.MedianGhz(), 3.0);
}

}  // namespace
}  // namespace attn::bench
