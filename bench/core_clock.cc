// The bench's core clock sampler (bench/core_clock.h).
#include "bench/core_clock.h"

#include <algorithm>

namespace attn::bench {

double CoreClockSampler::MedianGhz() const {
  if (ghz_.empty()) return 0;
  std::vector<double> sorted = ghz_;
  std::nth_element(sorted.begin(), sorted.begin() + sorted.size() / 2, sorted.end());
  return sorted[sorted.size() / 2];
}

void CoreClockSampler::SetCounter(benchmark::State& state) const {
  if (const double ghz = MedianGhz(); ghz > 0) state.counters["core_ghz"] = ghz;
}

}  // namespace attn::bench
