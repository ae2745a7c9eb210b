// Packed variable-length sequences (kernels/problem.h, "Packed
// variable-length sequences"; FlashAttention's cu_seqlens): every registry
// variant matches the fp64 reference within the derived bound on packed
// batches with empty sequences, sequences of one token, decode against long
// caches, sequences with fewer keys than queries, every structural mask, both
// diagonals, GQA, both layouts, score modifiers and the weights; packing
// leaves each sequence's result bit for bit what it is alone; the backward
// matches the reference's gradients; Validate names every bad field.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <ostream>
#include <string>
#include <vector>

#include "kernels/registry.h"
#include "reference/error_bound.h"
#include "reference/reference.h"
#include "testing/compare.h"
#include "testing/grad_data.h"
#include "testing/problem_data.h"

namespace attn {
namespace {

using testing::ProblemData;
using testing::ProblemSpec;

constexpr float kInf = std::numeric_limits<float>::infinity();

// A packed batch: per-sequence query and key lengths.
struct Packing {
  std::string name;
  std::vector<int32_t> q_lens, kv_lens;
};

// cu_seqlens of `lens`: 0, then running sums.
std::vector<int32_t> Offsets(const std::vector<int32_t>& lens) {
  std::vector<int32_t> offsets = {0};
  for (int32_t n : lens) offsets.push_back(offsets.back() + n);
  return offsets;
}

std::vector<Packing> Packings() {
  return {
      // Prefill: an empty sequence, one token, one crossing flash's 64-row
      // block and 512-key tile edges.
      {"prefill", {5, 0, 70, 1, 530}, {5, 0, 70, 1, 530}},
      // Decode rows against caches of every size, an empty one included.
      {"decode", {1, 1, 1, 1}, {700, 0, 1, 3000}},
      // Queries appended to caches (chunked prefill), fewer keys than
      // queries (bottom-right: the first rows see nothing), keys without
      // queries.
      {"mixed", {3, 64, 10, 0, 40}, {10, 64, 3, 20, 90}},
  };
}

struct Case {
  const Variant* variant = nullptr;
  Packing packing;
  MaskKind mask = MaskKind::kNone;
  Diagonal diagonal = Diagonal::kBottomRight;
  Shape heads;  // H, Hkv, dk, dv (batch and lengths come from the packing)
  Layout layout = Layout::kBHLD;
  bool modifiers = false;
  bool weights = false;
  std::string name;
};

Case MakeCase(const Packing& packing, MaskKind mask, Diagonal diagonal, Shape heads) {
  Case c;
  c.packing = packing;
  c.mask = mask;
  c.diagonal = diagonal;
  c.heads = heads;
  return c;
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::vector<Case> Cases() {
  std::vector<Case> cases;
  const MaskKind masks[] = {MaskKind::kNone, MaskKind::kCausal, MaskKind::kSlidingWindow};
  for (const Variant* v : Registry()) {
    int n = 0;
    auto add = [&](Case c) {
      c.variant = v;
      c.name = std::string(v->name) + "_" + c.packing.name + "_" + MaskKindName(c.mask) + "_" +
               std::to_string(n++);
      cases.push_back(c);
    };
    for (const Packing& packing : Packings()) {
      for (MaskKind mask : masks) {
        add(MakeCase(packing, mask, Diagonal::kBottomRight, {1, 4, 2, 0, 0, 32, 48}));
      }
      Case c = MakeCase(packing, MaskKind::kCausal, Diagonal::kTopLeft, {1, 2, 2, 0, 0, 64, 64});
      c.layout = Layout::kBLHD;
      add(c);
      c = MakeCase(packing, MaskKind::kCausal, Diagonal::kBottomRight, {1, 8, 2, 0, 0, 128, 128});
      c.modifiers = v->modifiers == kAllModifiers;
      add(c);
    }
    if (v->supports_weights) {
      Case c = MakeCase(Packings()[2], MaskKind::kCausal, Diagonal::kBottomRight,
                        {1, 2, 1, 0, 0, 16, 16});
      c.weights = true;
      add(c);
    }
  }
  return cases;
}

// Owns a packed problem: ProblemData of B = 1 and the packed lengths, with
// its Mask::sequences pointing at the offsets held here.
class PackedData {
 public:
  PackedData(const Case& c, uint64_t seed)
      : cu_q_(Offsets(c.packing.q_lens)), cu_k_(Offsets(c.packing.kv_lens)), data_([&] {
          ProblemSpec spec;
          spec.shape = c.heads;
          spec.shape.batch = 1;
          spec.shape.q_len = cu_q_.back();
          spec.shape.kv_len = cu_k_.back();
          spec.mask = c.mask;
          spec.window_left = 17;
          spec.window_right = 4;
          spec.layout = c.layout;
          spec.want_weights = c.weights;
          spec.seed = seed;
          return spec;
        }()) {
    Problem& p = data_.problem();
    p.mask.diagonal = c.diagonal;
    p.mask.sequences = PackedSequences{cu_q_, cu_k_};
    if (c.modifiers) {
      for (int64_t h = 0; h < p.shape.heads; ++h) {
        slopes_.push_back(std::exp2(-8.0f * float(h + 1) / float(p.shape.heads)));
        sinks_.push_back(h == 1 ? -kInf : 0.5f * float(h));
      }
      p.modifiers.softcap = 20.0f;
      p.modifiers.alibi_slopes = slopes_;
      p.modifiers.sinks = sinks_;
    }
  }
  ProblemData& data() { return data_; }
  Problem& problem() { return data_.problem(); }
  const std::vector<int32_t>& cu_q() const { return cu_q_; }
  const std::vector<int32_t>& cu_k() const { return cu_k_; }

 private:
  std::vector<int32_t> cu_q_, cu_k_;
  ProblemData data_;
  std::vector<float> slopes_, sinks_;
};

std::string ParamName(const ::testing::TestParamInfo<Case>& info) { return info.param.name; }

class VarlenTest : public ::testing::TestWithParam<Case> {};

TEST_P(VarlenTest, MatchesReference) {
  const Case& c = GetParam();
  PackedData packed(c, 11);
  Problem& p = packed.problem();
  const Status status = attn::Run(*c.variant, p, OnThreads(2));
  if (status.code() == StatusCode::kUnimplemented && c.modifiers) GTEST_SKIP() << status.message();
  ASSERT_TRUE(status.ok()) << status.ToString();
  StatusOr<reference::Result> want = reference::Attention(p, c.weights);
  ASSERT_TRUE(want.ok());
  const testing::Comparison cmp = testing::CompareToReference(packed.data(), *want);
  EXPECT_TRUE(cmp.ok) << cmp.first_failure << " (worst error/bound " << cmp.worst_bound_ratio
                      << ")";
}

// Packing changes nothing: each sequence's O and lse are bit for bit those of
// the sequence run alone as a problem of B = 1, on the threads the packed run
// gave it (SequenceThreads: all of them for a large sequence, one for the
// small ones that run together).
TEST_P(VarlenTest, EachSequenceAsAlone) {
  const Case& c = GetParam();
  if (!c.variant->deterministic) GTEST_SKIP() << c.variant->name << " is not deterministic";
  PackedData packed(c, 12);
  Problem& p = packed.problem();
  const Status status = attn::Run(*c.variant, p, OnThreads(2));
  if (status.code() == StatusCode::kUnimplemented && c.modifiers) GTEST_SKIP() << status.message();
  ASSERT_TRUE(status.ok()) << status.ToString();
  const std::vector<float> packed_o = packed.data().OutputContiguous();
  const int64_t H = p.shape.heads, Lq = p.shape.q_len, dv = p.shape.value_dim;
  for (int64_t s = 0; s + 1 < int64_t(packed.cu_q().size()); ++s) {
    Problem alone = SequenceProblem(p, s);
    const int64_t lq = alone.shape.q_len, q0 = packed.cu_q()[s];
    if (lq == 0) continue;  // nothing to compare (and no O to give it)
    std::vector<float> o(H * lq * dv), lse(H * lq);
    alone.o.data = o.data();
    alone.o.strides = Strides::BHLD(H, lq, dv);
    alone.lse = lse;
    const int threads = SequenceThreads(p, s, OnThreads(2));
    ASSERT_TRUE(attn::Run(*c.variant, alone, OnThreads(threads)).ok()) << "sequence " << s;
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t i = 0; i < lq; ++i) {
        ASSERT_EQ(std::memcmp(&o[(h * lq + i) * dv], &packed_o[(h * Lq + q0 + i) * dv], dv * 4), 0)
            << "sequence " << s << " h=" << h << " i=" << i;
        const float got = packed.data().lse()[h * Lq + q0 + i];
        EXPECT_TRUE(got == lse[h * lq + i] || (std::isnan(got) && std::isnan(lse[h * lq + i])))
            << "lse of sequence " << s << " h=" << h << " i=" << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Registry, VarlenTest, ::testing::ValuesIn(Cases()), ParamName);

// The reference's visibility is block-diagonal, with each sequence's own
// bottom-right diagonal: sequences (q 2, k 3) and (q 2, k 1), causal.
TEST(VarlenReferenceTest, BlockDiagonalWithOwnDiagonals) {
  const Case c = MakeCase({"small", {2, 2}, {3, 1}}, MaskKind::kCausal, Diagonal::kBottomRight,
                          {1, 1, 1, 0, 0, 4, 4});
  PackedData packed(c, 1);
  const Problem& p = packed.problem();
  // Sequence 0: off = 1, row 0 sees keys 0-1, row 1 sees 0-2. Sequence 1:
  // off = -1, row 0 (packed 2) sees nothing, row 1 (packed 3) key 0 (packed 3).
  const bool want[4][4] = {{1, 1, 0, 0}, {1, 1, 1, 0}, {0, 0, 0, 0}, {0, 0, 0, 1}};
  StatusOr<ValidProblem> v = Validate(p);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  for (int64_t i = 0; i < 4; ++i) {
    int64_t begin = -1, end = -1;
    for (int64_t j = 0; j < 4; ++j) {
      EXPECT_EQ(reference::KeyVisible(p, 0, i, j), want[i][j]) << "i=" << i << " j=" << j;
      if (want[i][j] && begin < 0) begin = j;
      if (want[i][j]) end = j + 1;
    }
    const KeyRange keys = v->VisibleKeys(0, i);
    EXPECT_EQ(keys.size(), begin < 0 ? 0 : end - begin) << "i=" << i;
    if (begin >= 0) {
      EXPECT_EQ(keys.begin, begin) << "i=" << i;
    }
  }
  EXPECT_NE(Describe(p.shape, p.mask).find("+varlen(S=2)"), std::string::npos);
}

// Validate names every bad field of a packed problem.
TEST(VarlenValidationTest, NamesTheField) {
  const Case c = MakeCase({"v", {2, 3}, {4, 1}}, MaskKind::kNone, Diagonal::kBottomRight,
                          {1, 2, 2, 0, 0, 8, 8});
  PackedData packed(c, 2);
  const std::vector<int32_t> short_q = {0, 5}, start1 = {1, 2, 5}, down = {0, 3, 2},
                             end4 = {0, 2, 4}, lengths = {5};
  const std::vector<float> mask(5 * 5, 0.0f);
  struct Bad {
    std::function<void(Problem&)> set;
    std::string message;
  };
  const std::vector<Bad> bad = {
      {[&](Problem& p) { p.mask.sequences->cu_seqlens_q = short_q; },
       "cu_seqlens_q has 2 entries and cu_seqlens_k 3: both need S + 1"},
      {[&](Problem& p) { p.mask.sequences->cu_seqlens_q = start1; }, "cu_seqlens_q[0]=1 must be 0"},
      {[&](Problem& p) { p.mask.sequences->cu_seqlens_k = down; },
       "cu_seqlens_k[2]=2 is less than cu_seqlens_k[1]=3 (offsets must not decrease)"},
      {[&](Problem& p) { p.mask.sequences->cu_seqlens_q = end4; },
       "cu_seqlens_q ends at 4, needs Lq=5 (the packed length)"},
      {[&](Problem& p) {
         p.mask.sequences->cu_seqlens_q = {};
         p.mask.sequences->cu_seqlens_k = {};
       },
       "cu_seqlens_q is empty: needs S + 1 >= 1 entries"},
      {[&](Problem& p) { p.mask.key_lengths = lengths; },
       "key_lengths do not combine with packed sequences"},
      {[&](Problem& p) {
         p.mask.kind = MaskKind::kAdditive;
         p.mask.additive = mask;
         p.mask.additive_shape = {1, 1, 5, 5};
       },
       "an additive mask does not combine with packed sequences"},
      {[&](Problem& p) { p.shape.batch = 2; }, "packed sequences (cu_seqlens) need B=1"},
  };
  for (const Bad& b : bad)
    EXPECT_EQ(testing::RefusalMismatch(packed.problem(), b.set, b.message), "");
}

// A sequence over the memory budget is refused, naming it, before any
// sequence writes: O keeps its poison.
TEST(VarlenBudgetTest, RefusesBeforeWriting) {
  const Variant* naive = FindVariant("naive");
  ASSERT_NE(naive, nullptr);
  ASSERT_TRUE(naive->materializes_scores);
  const Case c = MakeCase({"budget", {4, 1, 300}, {4, 1, 5000}}, MaskKind::kNone,
                          Diagonal::kBottomRight, {1, 2, 2, 0, 0, 8, 8});
  PackedData packed(c, 3);
  RunOptions options = OnThreads(1);
  options.memory_budget_bytes = 1 << 20;  // 300 x 5000 scores do not fit, 4 x 4 do
  const Status status = attn::Run(*naive, packed.problem(), options);
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted) << status.ToString();
  EXPECT_EQ(status.message().rfind("sequence 2: naive needs", 0), 0u) << status.message();
  for (float x : packed.data().OutputContiguous()) ASSERT_TRUE(std::isnan(x));
}

// The schedule (SequenceThreads, kernels/registry.h): a sequence of at least
// 2^24 FLOPs per thread runs alone on all the threads, smaller ones on one
// thread each, together; one thread runs everything alone.
TEST(VarlenScheduleTest, LargeSequencesAloneSmallOnesTogether) {
  const Case c =
      MakeCase(Packings()[0], MaskKind::kNone, Diagonal::kBottomRight, {1, 4, 2, 0, 0, 32, 48});
  PackedData packed(c, 5);
  const Problem& p = packed.problem();
  // 2·4·530²·80 = 1.8e8 FLOPs >= 2·2^24; 2·4·70²·80 = 3.1e6 < 2^25.
  const int want[] = {1, 1, 1, 1, 2};
  for (int64_t s = 0; s < 5; ++s) {
    EXPECT_EQ(SequenceThreads(p, s, OnThreads(2)), want[s]) << "sequence " << s;
    EXPECT_EQ(SequenceThreads(p, s, OnThreads(1)), 1) << "sequence " << s;
  }
  EXPECT_EQ(SequenceThreads(p, 2, OnThreads(8)), 1);
  EXPECT_EQ(SequenceThreads(p, 4, OnThreads(8)), 8);   // 1.8e8 >= 8·2^24 = 1.3e8
  EXPECT_EQ(SequenceThreads(p, 4, OnThreads(16)), 1);  // 1.8e8 < 16·2^24 = 2.7e8
}

// Many short sequences (a serving batch of prefill chunks) run together: the
// result matches the reference, the stats say both threads ran, and the
// declared workspace is that of the two largest sequences at once.
TEST(VarlenScheduleTest, ManyShortSequencesShareOneTeam) {
  const Variant* flash = FindVariant("flash");
  ASSERT_NE(flash, nullptr);
  Packing many{"many", {}, {}};
  for (int s = 0; s < 48; ++s) {
    many.q_lens.push_back(1 + (s * 7) % 13);
    many.kv_lens.push_back(3 + (s * 5) % 29);
  }
  const Case c = MakeCase(many, MaskKind::kCausal, Diagonal::kBottomRight, {1, 4, 2, 0, 0, 64, 64});
  PackedData packed(c, 6);
  Problem& p = packed.problem();
  std::vector<size_t> one_thread;
  for (int64_t s = 0; s < 48; ++s) {
    ASSERT_EQ(SequenceThreads(p, s, OnThreads(2)), 1);
    StatusOr<ValidProblem> one = Prepare(*flash, SequenceProblem(p, s), OnThreads(1));
    ASSERT_TRUE(one.ok()) << one.status().ToString();
    one_thread.push_back(flash->workspace_bytes(*one, 1));
  }
  std::sort(one_thread.rbegin(), one_thread.rend());
  RunStats stats;
  ASSERT_TRUE(attn::Run(*flash, p, OnThreads(2), &stats).ok());
  EXPECT_EQ(stats.threads, 2);
  EXPECT_EQ(stats.workspace_declared_bytes, one_thread[0] + one_thread[1]);
  EXPECT_LE(stats.workspace_peak_bytes, stats.workspace_declared_bytes);
  StatusOr<reference::Result> want = reference::Attention(p, false);
  ASSERT_TRUE(want.ok());
  const testing::Comparison cmp = testing::CompareToReference(packed.data(), *want);
  EXPECT_TRUE(cmp.ok) << cmp.first_failure;
}

// The small sequences that run together are within the budget together, or
// refused before any writes: each fits alone on one thread, two at once do
// not.
TEST(VarlenScheduleTest, SharedSequencesTogetherWithinTheBudget) {
  const Variant* naive = FindVariant("naive");
  ASSERT_NE(naive, nullptr);
  const Case c = MakeCase({"shared", {300, 300, 300}, {300, 300, 300}}, MaskKind::kNone,
                          Diagonal::kBottomRight, {1, 1, 1, 0, 0, 8, 8});
  PackedData packed(c, 7);
  Problem& p = packed.problem();
  ASSERT_EQ(SequenceThreads(p, 0, OnThreads(2)), 1);
  StatusOr<ValidProblem> one = Prepare(*naive, SequenceProblem(p, 0), OnThreads(1));
  ASSERT_TRUE(one.ok()) << one.status().ToString();
  RunOptions options = OnThreads(2);
  options.memory_budget_bytes = naive->workspace_bytes(*one, 1) * 3 / 2;
  const Status status = attn::Run(*naive, p, options);
  EXPECT_EQ(status.code(), StatusCode::kResourceExhausted) << status.ToString();
  EXPECT_EQ(status.message().rfind("the small sequences that run together", 0), 0u)
      << status.message();
  for (float x : packed.data().OutputContiguous()) ASSERT_TRUE(std::isnan(x));
  options.threads = 1;  // one at a time: each fits
  EXPECT_TRUE(attn::Run(*naive, p, options).ok());
}

// The backward of a packed problem: each sequence's gradients, keys that no
// query of theirs sees (an empty query sequence, the bottom-right rows that
// see nothing) get dK = dV = 0.
TEST(VarlenBackwardTest, MatchesReference) {
  for (const Variant* v : Registry()) {
    if (!v->has_backward()) continue;
    for (const Packing& packing : Packings()) {
      for (MaskKind mask : {MaskKind::kNone, MaskKind::kCausal, MaskKind::kSlidingWindow}) {
        // With the modifiers too: the sinks' gradient sums over every sequence.
        for (const bool modifiers : {false, true}) {
          Case c = MakeCase(packing, mask, Diagonal::kBottomRight, {1, 4, 2, 0, 0, 32, 32});
          c.modifiers = modifiers;
          PackedData packed(c, 21);
          ASSERT_TRUE(testing::RunForwardForGrad(packed.data()).ok());
          testing::GradData grads(packed.data());
          StatusOr<reference::GradResult> want = reference::Backward(grads.grad_problem());
          ASSERT_TRUE(want.ok());
          const reference::GradBounds bounds =
              reference::GradErrorBounds(grads.grad_problem(), *want);
          grads.Poison();
          const Status status = RunBackward(*v, grads.grad_problem(), OnThreads(2));
          if (modifiers && v->backward.modifiers != kAllModifiers) {
            EXPECT_EQ(status.code(), StatusCode::kUnimplemented) << v->name;
            continue;
          }
          ASSERT_TRUE(status.ok()) << v->name << ": " << status.ToString();
          const testing::Comparison cmp =
              testing::CompareGradients(grads.grad_problem(), *want, bounds);
          EXPECT_TRUE(cmp.ok) << v->name << " " << packing.name << " " << MaskKindName(mask)
                              << (modifiers ? " modifiers" : "") << ": " << cmp.first_failure;
        }
      }
    }
  }
}

}  // namespace
}  // namespace attn
