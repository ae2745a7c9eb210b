// The core clock probe (kernels/core_clock.h).
//
// Why adds with a register operand: Golden Cove and later Intel cores fold
// chains of add-immediate at rename (a chain of `add $1, %reg` read 17 GHz on
// the Sapphire Rapids VM), while `add %reg, %reg` still takes one cycle per
// add and depends on the one before. 100 adds per loop step keep the loop's
// own branch off the chain's path.
#include "kernels/core_clock.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>
#include <string>

#if defined(__x86_64__)
#include <x86intrin.h>
#endif

namespace attn {
namespace {

// 4 chains of 2000 adds (about 0.6 µs each at 3.5 GHz) after a short one:
// the clock a core holds after heavy work lasts a few microseconds before it
// switches (the Sapphire Rapids VM: 2-8 µs after AVX-512 or AMX loops, then
// up 10-20% to its light-load clock), so the reading must end well before.
constexpr int kChainSteps = 20;  // x 100 adds
constexpr int kChains = 4;

#if defined(__x86_64__)
// Cycles of `steps` x 100 dependent adds, in TSC ticks.
uint64_t ChainTicks(int steps) {
  uint64_t x = 0;
  const uint64_t one = 1;
  const uint64_t t0 = __rdtsc();
  for (int i = 0; i < steps; ++i) {
#define ATTNLAB_ADD "add %1, %0\n\t"
#define ATTNLAB_ADD10                                                                             \
  ATTNLAB_ADD ATTNLAB_ADD ATTNLAB_ADD ATTNLAB_ADD ATTNLAB_ADD ATTNLAB_ADD ATTNLAB_ADD ATTNLAB_ADD \
      ATTNLAB_ADD ATTNLAB_ADD
    asm volatile(ATTNLAB_ADD10 ATTNLAB_ADD10 ATTNLAB_ADD10 ATTNLAB_ADD10 ATTNLAB_ADD10 ATTNLAB_ADD10
                     ATTNLAB_ADD10 ATTNLAB_ADD10 ATTNLAB_ADD10 ATTNLAB_ADD10
                 : "+r"(x)
                 : "r"(one));
#undef ATTNLAB_ADD10
#undef ATTNLAB_ADD
  }
  const uint64_t t1 = __rdtsc();
  return t1 - t0;
}

bool CpuinfoHasInvariantTsc() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    bool constant = false, nonstop = false;
    for (std::string w; words >> w;) {
      constant |= w == "constant_tsc";
      nonstop |= w == "nonstop_tsc";
    }
    return constant && nonstop;
  }
  return false;
}
#endif

}  // namespace

bool CoreClockAvailable() {
#if defined(__x86_64__)
  static const bool available = CpuinfoHasInvariantTsc();
  return available;
#else
  return false;
#endif
}

double TscHz() {
#if defined(__x86_64__)
  static const double hz = [] {
    using Clock = std::chrono::steady_clock;
    const auto c0 = Clock::now();
    const uint64_t t0 = __rdtsc();
    auto c1 = c0;
    while (c1 - c0 < std::chrono::milliseconds(20)) c1 = Clock::now();
    const uint64_t t1 = __rdtsc();
    return double(t1 - t0) / std::chrono::duration<double>(c1 - c0).count();
  }();
  return hz;
#else
  return 0;
#endif
}

double CoreClockGhz() {
#if defined(__x86_64__)
  if (!CoreClockAvailable()) return 0;
  // The tail of the work before still retires during the first adds (a few
  // hundred cycles): a short chain takes it, unread.
  ChainTicks(5);
  // A chain that held the switch reads 0.3-1 GHz (the core stops for about a
  // microsecond), under 0.7 of its neighbours; the chains after it read the
  // probe's own clock, not the work's. Keep the chains before it.
  double ghz[kChains];
  int kept = 0;
  for (int i = 0; i < kChains; ++i) {
    ghz[i] = kChainSteps * 100.0 / (double(ChainTicks(kChainSteps)) / TscHz()) / 1e9;
    if (i > 0 && ghz[i] < 0.7 * ghz[i - 1]) break;  // chain i held it
    if (i > 0 && ghz[i - 1] < 0.7 * ghz[i]) {       // chain i - 1 held it
      kept = i - 1;
      break;
    }
    kept = i + 1;
  }
  if (kept == 0) return 0;  // the switch came at once: no reading
  std::sort(ghz, ghz + kept);
  return ghz[kept / 2];
#else
  return 0;
#endif
}

uint64_t TscNow() {
#if defined(__x86_64__)
  return __rdtsc();
#else
  return 0;
#endif
}

void ItemClocks::AfterItem() {
  static const uint64_t interval = uint64_t(0.005 * TscHz());
  thread_local uint64_t last = 0;  // this thread's last reading, across Runs
  if (!CoreClockAvailable() || TscNow() - last < interval) return;
  const double ghz = CoreClockGhz();
  last = TscNow();
  if (ghz <= 0) return;
  const std::lock_guard<std::mutex> lock(mu_);
  ghz_.push_back(ghz);
}

std::vector<double> ItemClocks::Take() {
  const std::lock_guard<std::mutex> lock(mu_);
  return std::move(ghz_);
}

}  // namespace attn
