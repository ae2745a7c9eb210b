// Where a Run's threads spend its parallel loops (RunOptions::time_threads,
// kernels/thread_times.h): ParallelFor's timing of each thread's items, the
// summary the bench reports (IdleFraction, ItemsRatio) and the Run that
// fills RunStats::thread_times.
#include "kernels/thread_times.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <chrono>
#include <numeric>
#include <thread>

#include "kernels/internal/parallel.h"
#include "kernels/registry.h"
#include "testing/problem_data.h"

namespace attn::testing {
namespace {

// Skips when OpenMP will not give this test a team of two.
bool TwoThreadsAvailable() {
  int team = 0;
#pragma omp parallel num_threads(2)
  {
#pragma omp single
    team = omp_get_num_threads();
  }
  return team == 2;
}

TEST(ThreadTimes, SummariesOfGivenTimes) {
  ThreadTimes t;
  EXPECT_EQ(t.IdleFraction(), 0);
  EXPECT_EQ(t.ItemsRatio(), 1);
  t.Add(1.0, {1.0, 0.5}, {30, 10});  // thread 1 idle half the loop
  EXPECT_DOUBLE_EQ(t.IdleFraction(), 0.25);
  EXPECT_DOUBLE_EQ(t.ItemsRatio(), 3.0);
  t.Add(1.0, {1.0, 1.0}, {10, 30});  // sums per thread: 2 / 1.5 s, 40 / 40 items
  EXPECT_DOUBLE_EQ(t.IdleFraction(), 0.125);
  EXPECT_DOUBLE_EQ(t.ItemsRatio(), 1.0);
  ThreadTimes one_took_all;
  one_took_all.Add(1.0, {1.0, 0.0}, {5, 0});
  EXPECT_EQ(one_took_all.ItemsRatio(), 1) << "a thread without items has no speed to compare";
}

TEST(ThreadTimes, ParallelForTimesEachThreadsItems) {
  if (!TwoThreadsAvailable()) GTEST_SKIP() << "OpenMP gives this process no team of 2";
  ThreadTimes times;
  {
    const ScopedThreadTimes timed(&times);
    ASSERT_TRUE(timed.owns());
    // One long item, then short ones: the other thread takes the short ones
    // and waits for the long one to end.
    ParallelFor(2, 5, [](int64_t item) {
      std::this_thread::sleep_for(std::chrono::milliseconds(item == 0 ? 40 : 2));
    });
  }
  EXPECT_EQ(TimedThreads(), nullptr) << "the scope ended";
  ASSERT_EQ(times.busy_seconds.size(), 2u);
  EXPECT_EQ(times.items[0] + times.items[1], 5);
  const double busy = times.busy_seconds[0] + times.busy_seconds[1];
  EXPECT_GE(busy, 0.040 + 4 * 0.002 - 1e-3);
  EXPECT_LE(busy, 2 * times.wall_seconds);
  EXPECT_GE(times.wall_seconds, 0.040);
  // ~(40 - 8) / 80 of the team's time idle; sleeps may oversleep, never undersleep.
  EXPECT_GT(times.IdleFraction(), 0.2);
  EXPECT_DOUBLE_EQ(times.ItemsRatio(), 4.0);
}

TEST(ThreadTimes, UntimedAndSerialLoopsAddNothing) {
  ThreadTimes times;
  ParallelFor(2, 4, [](int64_t) {});  // no scope: not timed
  {
    const ScopedThreadTimes timed(&times);
    ParallelFor(1, 4, [](int64_t) {});  // one thread
    ParallelFor(2, 1, [](int64_t) {});  // one item
    ThreadTimes inner;
    const ScopedThreadTimes nested(&inner);
    EXPECT_FALSE(nested.owns()) << "the outer timing gets an inner Run's loops";
    EXPECT_EQ(TimedThreads(), &times);
  }
  EXPECT_EQ(times.wall_seconds, 0);
  EXPECT_TRUE(times.busy_seconds.empty());
}

TEST(ThreadTimes, RunFillsRunStatsWhenAsked) {
  if (!TwoThreadsAvailable()) GTEST_SKIP() << "OpenMP gives this process no team of 2";
  ProblemSpec spec;
  spec.shape = Shape{1, 8, 8, 512, 512, 64, 64};
  ProblemData data(spec);
  for (const char* name : {"flash", "naive"}) {
    SCOPED_TRACE(name);
    RunOptions options;
    options.threads = 2;
    options.time_threads = true;
    RunStats stats;
    ASSERT_TRUE(attn::Run(name, data.problem(), options, &stats).ok());
    ASSERT_EQ(stats.threads, 2);
    const ThreadTimes& t = stats.thread_times;
    ASSERT_EQ(t.busy_seconds.size(), 2u);
    EXPECT_GT(t.wall_seconds, 0);
    EXPECT_GT(std::accumulate(t.items.begin(), t.items.end(), int64_t{0}), 1);
    EXPECT_GE(t.IdleFraction(), 0);
    EXPECT_LT(t.IdleFraction(), 1);

    options.time_threads = false;
    RunStats untimed;
    ASSERT_TRUE(attn::Run(name, data.problem(), options, &untimed).ok());
    EXPECT_EQ(untimed.thread_times.wall_seconds, 0);
    EXPECT_TRUE(untimed.thread_times.items.empty());
  }
}

}  // namespace
}  // namespace attn::testing
