// Where a Run's threads spent the time of its parallel loops
// (RunOptions::time_threads; RunStats::thread_times): what tells a thread
// count's shortfall apart as idle threads (uneven items, the team's start and
// end) or as threads that ran slower than one thread alone (a busy
// neighbour on the core, the memory they share).
#ifndef ATTNLAB_KERNELS_THREAD_TIMES_H_
#define ATTNLAB_KERNELS_THREAD_TIMES_H_

#include <algorithm>
#include <cstdint>
#include <vector>

namespace attn {

struct ThreadTimes {
  // Summed over the Run's multi-threaded loops (ParallelFor with a team of
  // two or more); a loop that ran on one thread adds nothing. Seconds.
  double wall_seconds = 0;
  // Per thread of the team, by its index in it: the time inside items and
  // how many items it took (dynamic scheduling: a faster thread takes more).
  std::vector<double> busy_seconds;
  std::vector<int64_t> items;

  // Adds one loop: its wall time and its team's busy time and items (one
  // entry per thread of the team).
  void Add(double wall, const std::vector<double>& busy, const std::vector<int64_t>& taken) {
    wall_seconds += wall;
    if (busy_seconds.size() < busy.size()) {
      busy_seconds.resize(busy.size(), 0.0);
      items.resize(busy.size(), 0);
    }
    for (size_t t = 0; t < busy.size(); ++t) {
      busy_seconds[t] += busy[t];
      items[t] += taken[t];
    }
  }

  // The part of the team's thread-time outside items: 1 - busy / (wall x
  // team). 0 when no multi-threaded loop ran.
  double IdleFraction() const {
    double busy = 0;
    for (double b : busy_seconds) busy += b;
    const double team = wall_seconds * double(busy_seconds.size());
    return team > 0 ? 1 - busy / team : 0;
  }
  // Items of the thread that took the most over those of the one that took
  // the fewest (at least 1): with items of equal cost (dense attention) the
  // threads' relative speed. 1 when fewer than two threads took items.
  double ItemsRatio() const {
    int64_t lo = 0, hi = 0;
    for (int64_t n : items) {
      if (n <= 0) continue;
      lo = lo == 0 ? n : std::min(lo, n);
      hi = std::max(hi, n);
    }
    return lo > 0 ? double(hi) / double(lo) : 1;
  }
};

}  // namespace attn

#endif  // ATTNLAB_KERNELS_THREAD_TIMES_H_
