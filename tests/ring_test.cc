// Ring attention (dist/ring.h) against the fp64 reference, run by ctest as
// `mpiexec -np P ring_test` for P = 1, 2, 3, 4 (label mpi; oversubscribed on
// a 2-core machine). Every rank builds the same whole problem from the same
// seed, takes its share, runs the ring, and the shares are gathered back so
// that every rank compares the whole O and lse with the reference within the
// derived bound: every mask, GQA, uneven N, P > N, key lengths of 0 and Lk,
// NaN rows, modifiers, both splits; then determinism, causal balance,
// skipped blocks, and collective errors (one rank with a bad share, ranks
// that disagree).
#include "dist/ring.h"

#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "reference/reference.h"
#include "testing/compare.h"
#include "testing/problem_data.h"

namespace attn {
namespace {

using ring::PositionRun;
using ring::RankRuns;
using ring::RowsOf;
using ring::Split;
using testing::ProblemData;
using testing::ProblemSpec;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

int Rank() { return ring::RankIn(MPI_COMM_WORLD); }
int Ranks() { return ring::RanksIn(MPI_COMM_WORLD); }

// This rank's share of a whole contiguous problem (ProblemData, bhsd), and
// the way back.
struct Share {
  std::vector<PositionRun> q_runs, k_runs;
  std::vector<float> q, k, v, o, lse;
  ring::RingProblem ring;

  Share(ProblemData& data, Split split) {
    const Problem& whole = data.problem();
    const Shape& s = whole.shape;
    q_runs = RankRuns(split, s.q_len, Ranks(), Rank());
    k_runs = RankRuns(split, s.kv_len, Ranks(), Rank());
    const int64_t q_rows = ring::RankRows(split, s.q_len, Ranks(), Rank());
    const int64_t k_rows = ring::RankRows(split, s.kv_len, Ranks(), Rank());
    q.resize(s.batch * s.heads * q_rows * s.head_dim + 1);
    k.resize(s.batch * s.kv_heads * k_rows * s.head_dim + 1);
    v.resize(s.batch * s.kv_heads * k_rows * s.value_dim + 1);
    o.assign(s.batch * s.heads * q_rows * s.value_dim + 1, kNaN);
    lse.assign(s.batch * s.heads * q_rows, kNaN);
    ring::TakeRows(data.q_data(), {s.batch, s.heads, s.q_len, s.head_dim}, q_runs, q.data());
    ring::TakeRows(data.k_data(), {s.batch, s.kv_heads, s.kv_len, s.head_dim}, k_runs, k.data());
    ring::TakeRows(data.v_data(), {s.batch, s.kv_heads, s.kv_len, s.value_dim}, k_runs, v.data());
    ring.split = split;
    Problem& p = ring.problem;
    p = whole;
    p.q = {q.data(), Strides::BHLD(s.heads, q_rows, s.head_dim), DType::kF32};
    p.k = {k.data(), Strides::BHLD(s.kv_heads, k_rows, s.head_dim), DType::kF32};
    p.v = {v.data(), Strides::BHLD(s.kv_heads, k_rows, s.value_dim), DType::kF32};
    p.o = {o.data(), Strides::BHLD(s.heads, q_rows, s.value_dim), DType::kF32};
    p.lse = lse;
  }

  // Every rank's O and lse into the whole problem's outputs (every rank).
  void GatherInto(ProblemData& data) const {
    const Shape& s = data.problem().shape;
    float* o_whole = static_cast<float*>(data.problem().o.data);
    for (int r = 0; r < Ranks(); ++r) {
      const std::vector<PositionRun> runs = RankRuns(ring.split, s.q_len, Ranks(), r);
      const int64_t rows = ring::RankRows(ring.split, s.q_len, Ranks(), r);
      std::vector<float> o_r(s.batch * s.heads * rows * s.value_dim),
          lse_r(s.batch * s.heads * rows);
      if (r == Rank()) {
        std::copy(o.begin(), o.begin() + o_r.size(), o_r.begin());
        std::copy(lse.begin(), lse.end(), lse_r.begin());
      }
      MPI_Bcast(o_r.data(), int(o_r.size()), MPI_FLOAT, r, MPI_COMM_WORLD);
      MPI_Bcast(lse_r.data(), int(lse_r.size()), MPI_FLOAT, r, MPI_COMM_WORLD);
      ring::PutRows(o_r.data(), {s.batch, s.heads, s.q_len, s.value_dim}, runs, o_whole);
      ring::PutRows(lse_r.data(), {s.batch, s.heads, s.q_len, 1}, runs, data.lse().data());
    }
  }
};

struct Case {
  std::string name;
  ProblemSpec spec;
  Split split = Split::kZigzag;
  Diagonal diagonal = Diagonal::kBottomRight;
  bool nan_rows = false;   // NaN in one Q row and one K row
  bool modifiers = false;  // softcap, ALiBi and sinks
};

std::vector<Case> Cases() {
  std::vector<Case> cases;
  auto add = [&](std::string name, Shape shape, MaskKind mask, std::vector<int32_t> lengths = {}) {
    Case c;
    c.name = std::move(name);
    c.spec.shape = shape;
    c.spec.mask = mask;
    c.spec.window_left = 11;
    c.spec.window_right = 4;
    c.spec.key_lengths = std::move(lengths);
    c.spec.seed = 700 + cases.size();
    cases.push_back(c);
    return &cases.back();
  };
  add("none", {1, 4, 4, 64, 64, 32, 32}, MaskKind::kNone);
  add("causal", {2, 4, 2, 96, 96, 32, 32}, MaskKind::kCausal);
  add("window", {1, 4, 1, 100, 100, 16, 24}, MaskKind::kSlidingWindow);
  add("causal_uneven", {1, 2, 2, 37, 37, 16, 16}, MaskKind::kCausal);
  add("causal_across_tiles", {1, 2, 1, 1100, 1100, 64, 64}, MaskKind::kCausal);
  add("causal_query_pieces", {1, 1, 1, 4500, 4500, 8, 8}, MaskKind::kCausal);  // runs > 2048 rows
  add("causal_decode_block", {1, 4, 2, 5, 77, 32, 32}, MaskKind::kCausal);     // Lq < Lk
  add("causal_long_queries", {1, 2, 1, 50, 20, 16, 16}, MaskKind::kCausal);    // Lq > Lk
  add("more_ranks_than_rows", {1, 2, 2, 3, 3, 16, 16}, MaskKind::kCausal);
  add("key_lengths", {3, 2, 2, 45, 45, 16, 16}, MaskKind::kCausal, {0, 45, 17});
  add("window_key_lengths", {2, 2, 1, 60, 60, 16, 16}, MaskKind::kSlidingWindow, {60, 9});
  add("contiguous", {1, 4, 2, 70, 70, 32, 32}, MaskKind::kCausal)->split = Split::kContiguous;
  // Windows wider than a block pair (whose diagonal is far off): each pair
  // keeps the whole window (Validate once clamped it to the pair's Lq + Lk).
  Case* wide = add("wide_window", {1, 2, 1, 100, 100, 16, 16}, MaskKind::kSlidingWindow);
  wide->spec.window_left = 90;
  wide->spec.window_right = 80;
  add("top_left", {1, 2, 2, 30, 55, 16, 16}, MaskKind::kCausal)->diagonal = Diagonal::kTopLeft;
  add("nan_rows", {1, 2, 2, 48, 48, 16, 16}, MaskKind::kCausal)->nan_rows = true;
  add("nan_rows_none", {1, 2, 1, 40, 40, 16, 16}, MaskKind::kNone)->nan_rows = true;
  add("modifiers", {1, 4, 2, 64, 64, 32, 32}, MaskKind::kCausal)->modifiers = true;
  add("modifiers_window", {2, 4, 4, 50, 50, 16, 16}, MaskKind::kSlidingWindow, {50, 0})->modifiers =
      true;
  return cases;
}

// Slopes of mixed sign and sinks with one head at -inf (modifiers_test's).
struct Modifiers {
  std::vector<float> slopes, sinks;
  void Attach(Problem& p) {
    for (int64_t h = 0; h < p.shape.heads; ++h) {
      slopes.push_back((h % 2 ? -1.0f : 1.0f) * std::exp2(-8.0f * float(h + 1) / p.shape.heads));
      sinks.push_back(h == 1 ? -std::numeric_limits<float>::infinity() : 0.5f * float(h));
    }
    p.modifiers.softcap = 20.0f;
    p.modifiers.alibi_slopes = slopes;
    p.modifiers.sinks = sinks;
  }
};

class RingTest : public ::testing::TestWithParam<Case> {};

TEST_P(RingTest, MatchesReference) {
  const Case& c = GetParam();
  ProblemData data(c.spec);
  Problem& whole = data.problem();
  whole.mask.diagonal = c.diagonal;
  Modifiers mods;
  if (c.modifiers) mods.Attach(whole);
  if (c.nan_rows) {
    data.q_data()[7 * whole.shape.head_dim + 3] = kNaN;     // head 0, row 7
    const int64_t last_kv_head = whole.shape.kv_heads - 1;  // its key 20
    data.k_data()[(last_kv_head * whole.shape.kv_len + 20) * whole.shape.head_dim] = kNaN;
  }
  StatusOr<reference::Result> want = reference::Attention(whole);
  ASSERT_TRUE(want.ok()) << want.status().ToString();
  Share share(data, c.split);
  ring::RingStats stats;
  const Status status = ring::RingAttention(share.ring, MPI_COMM_WORLD, {}, &stats);
  ASSERT_TRUE(status.ok()) << status.ToString();
  share.GatherInto(data);
  const testing::Comparison cmp = testing::CompareToReference(data, *want);
  EXPECT_TRUE(cmp.ok) << cmp.first_failure << " (P=" << Ranks() << ", rank " << Rank()
                      << ", worst error/bound " << cmp.worst_bound_ratio << ")";
}

INSTANTIATE_TEST_SUITE_P(Masks, RingTest, ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return info.param.name; });

// Any registry variant can be the kernel of the block pairs (each returns
// lse, which is all the merge needs).
TEST(RingVariants, EveryVariantIsABlockKernel) {
  ProblemSpec spec;
  spec.shape = {2, 4, 2, 70, 70, 16, 16};
  spec.mask = MaskKind::kSlidingWindow;
  spec.window_left = 9;
  spec.window_right = 2;
  spec.key_lengths = {70, 31};
  ProblemData data(spec);
  StatusOr<reference::Result> want = reference::Attention(data.problem());
  ASSERT_TRUE(want.ok());
  for (const Variant* v : Registry()) {
    data.Poison();
    Share share(data, Split::kZigzag);
    ring::RingOptions options;
    options.variant = v->name;
    options.run = OnThreads(1);
    const Status status = ring::RingAttention(share.ring, MPI_COMM_WORLD, options);
    ASSERT_TRUE(status.ok()) << v->name << ": " << status.ToString();
    share.GatherInto(data);
    const testing::Comparison cmp = testing::CompareToReference(data, *want);
    EXPECT_TRUE(cmp.ok) << v->name << ": " << cmp.first_failure << " (P=" << Ranks() << ")";
  }
}

// The same inputs twice give the same bits.
TEST(RingDeterminism, SameBitsTwice) {
  ProblemSpec spec;
  spec.shape = {1, 4, 2, 130, 130, 32, 32};
  spec.mask = MaskKind::kCausal;
  ProblemData data(spec);
  Share a(data, Split::kZigzag), b(data, Split::kZigzag);
  ASSERT_TRUE(ring::RingAttention(a.ring, MPI_COMM_WORLD).ok());
  ASSERT_TRUE(ring::RingAttention(b.ring, MPI_COMM_WORLD).ok());
  EXPECT_EQ(0, std::memcmp(a.o.data(), b.o.data(), a.o.size() * 4 - 4));
  EXPECT_EQ(0, std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * 4));
}

// Zigzag gives every rank the same causal work (N a multiple of 2P); a
// contiguous split gives the last rank 2P - 1 times the first's (P > 1).
TEST(RingBalance, ZigzagEqualizesCausalWork) {
  const int p = Ranks();
  ProblemSpec spec;
  spec.shape = {1, 2, 2, 24 * 2 * p, 24 * 2 * p, 16, 16};
  spec.mask = MaskKind::kCausal;
  ProblemData data(spec);
  for (Split split : {Split::kZigzag, Split::kContiguous}) {
    Share share(data, split);
    ring::RingStats stats;
    ASSERT_TRUE(ring::RingAttention(share.ring, MPI_COMM_WORLD, {}, &stats).ok());
    int64_t lo = stats.pairs, hi = stats.pairs, total = stats.pairs;
    MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_INT64_T, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &total, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    const int64_t n = spec.shape.q_len;
    EXPECT_EQ(total, spec.shape.heads * n * (n + 1) / 2) << ring::SplitName(split);
    if (split == Split::kZigzag) {
      EXPECT_EQ(lo, hi) << "zigzag, P=" << p;
    } else if (p > 1) {
      EXPECT_GT(hi, 2 * lo) << "contiguous, P=" << p;
    }
    // Blocks above the diagonal are skipped, not computed.
    int64_t skipped = stats.blocks_skipped;
    MPI_Allreduce(MPI_IN_PLACE, &skipped, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    if (p > 1) {
      EXPECT_GT(skipped, 0) << ring::SplitName(split);
    }
  }
}

// One rank's malformed share: every rank gets that rank's error, and the
// ring (which would wait for the failed rank) never starts.
TEST(RingErrors, OneBadShareFailsEveryRank) {
  ProblemSpec spec;
  spec.shape = {1, 4, 2, 40, 40, 16, 16};
  ProblemData data(spec);
  Share share(data, Split::kZigzag);
  const int bad = Ranks() - 1;
  if (Rank() == bad) share.ring.problem.k.strides.elem = 2;
  const Status status = ring::RingAttention(share.ring, MPI_COMM_WORLD);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  const std::string prefix = "rank " + std::to_string(bad) + ": ";
  EXPECT_EQ(status.message().rfind(prefix, 0), 0u) << status.message();
  EXPECT_NE(status.message().find("elem"), std::string::npos) << status.message();
}

TEST(RingErrors, RanksThatDisagreeAreNamed) {
  if (Ranks() < 2) GTEST_SKIP() << "needs 2 ranks to disagree";
  ProblemSpec spec;
  spec.shape = {1, 4, 2, 40, 40, 16, 16};
  spec.mask = MaskKind::kCausal;
  ProblemData data(spec);
  Share share(data, Split::kZigzag);
  if (Rank() == 1) share.ring.problem.mask.kind = MaskKind::kNone;
  const Status status = ring::RingAttention(share.ring, MPI_COMM_WORLD);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("disagree on mask (0 to 1)"), std::string::npos)
      << status.message();
}

// The ring's own buffers count against the memory budget, on every rank,
// before anything is allocated or exchanged.
TEST(RingErrors, OverTheMemoryBudgetIsRefusedOnEveryRank) {
  ProblemSpec spec;
  spec.shape = {1, 4, 2, 300, 300, 32, 32};
  ProblemData data(spec);
  Share share(data, Split::kZigzag);
  ring::RingOptions options;
  options.run.memory_budget_bytes = 4096;
  const Status status = ring::RingAttention(share.ring, MPI_COMM_WORLD, options);
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted) << status.ToString();
  EXPECT_NE(status.message().find("over the memory budget of 4096"), std::string::npos)
      << status.message();
}

TEST(RingErrors, WhatTheRingCannotSplitIsNamed) {
  ProblemSpec spec;
  spec.shape = {1, 2, 2, 20, 20, 16, 16};
  spec.mask = MaskKind::kAdditive;
  ProblemData data(spec);
  Share share(data, Split::kZigzag);
  const Status status = ring::RingAttention(share.ring, MPI_COMM_WORLD);
  EXPECT_EQ(status.code(), StatusCode::kUnimplemented);
  EXPECT_NE(status.message().find("additive mask"), std::string::npos) << status.message();
  // A diagonal at each batch's key length is a KV-cache shape, not one long
  // sequence's.
  spec.mask = MaskKind::kCausal;
  spec.key_lengths = {15};
  ProblemData cache(spec);
  cache.problem().mask.diagonal = Diagonal::kKeyLengths;
  Share cache_share(cache, Split::kZigzag);
  const Status refused = ring::RingAttention(cache_share.ring, MPI_COMM_WORLD);
  EXPECT_EQ(refused.code(), StatusCode::kUnimplemented);
  EXPECT_NE(refused.message().find("no key-lengths diagonal"), std::string::npos)
      << refused.message();
}

TEST(RingRuns, ChunksCoverEveryPositionOnce) {
  for (Split split : {Split::kZigzag, Split::kContiguous}) {
    for (int64_t n : {0, 1, 3, 7, 64, 101}) {
      for (int p : {1, 2, 3, 4, 8}) {
        std::vector<int> seen(n, 0);
        for (int r = 0; r < p; ++r) {
          int64_t local = 0;
          for (const PositionRun& run : RankRuns(split, n, p, r)) {
            EXPECT_EQ(run.local, local);
            local += run.len;
            for (int64_t x = 0; x < run.len; ++x) ++seen[run.global + x];
          }
        }
        for (int64_t x = 0; x < n; ++x) EXPECT_EQ(seen[x], 1) << n << " " << p << " " << x;
      }
    }
  }
}

}  // namespace
}  // namespace attn

// Ranks other than 0 print only their failures, prefixed with the rank.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: %s\n", attn::Rank(), r.file_name() ? r.file_name() : "?",
                 r.line_number(), r.summary());
  }
};

// MPI around GoogleTest: every rank runs every test (they are collective);
// only rank 0 prints the progress, any rank prints its failures.
int main(int argc, char** argv) {
  int level = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &level);
  ::testing::InitGoogleTest(&argc, argv);
  if (attn::Rank() != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter);
  }
  const int failed = RUN_ALL_TESTS();
  int any = failed;
  MPI_Allreduce(MPI_IN_PLACE, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any;
}
