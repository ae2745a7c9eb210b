// The edge semantics of kernels/problem.h, checked for every registry variant:
//
//   * fully masked rows (causal Lq > Lk, a window that misses every key, key
//     length 0, an additive row of -inf, Lk = 0): O = 0, lse = -inf,
//     weights 0, never NaN;
//   * degenerate lengths: Lk = 1, Lq = 1, Lk = 0, Lq = 0;
//   * all-equal scores (uniform weights);
//   * ±inf logits from the additive mask: +inf makes exactly that row NaN;
//   * NaN inputs reach exactly the rows they touch: NaN in Q row i makes row i
//     NaN; NaN in K or V row j reaches the rows that see key j and no other
//     (structural masks shield, the arithmetic additive mask does not);
//   * thread-count independence (1 vs 2 threads, both within the derived
//     bound, identical NaN/inf/zero pattern);
//   * run-to-run bitwise determinism at a fixed thread count, for the
//     variants whose registry entry says `deterministic`.
//
// Sizes (Lq 200, Lk 300, several heads) span several tiles of every tiled
// kernel, so the masked/NaN rows fall inside tiles shared with normal rows.
// Every run starts from NaN-poisoned outputs and is also compared against the
// fp64 reference with the bound of testing/compare.h.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/registry.h"
#include "reference/reference.h"
#include "testing/compare.h"
#include "testing/problem_data.h"

namespace attn::testing {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<const Variant*> Variants() { return {Registry().begin(), Registry().end()}; }

// Mutable access to row (b, h, i) of a strided input.
float* Row(const TensorRef<const void>& t, int64_t b, int64_t h, int64_t i) {
  return const_cast<float*>(RowOf(t, b, h, i));
}

class EdgeTest : public ::testing::TestWithParam<const Variant*> {
 protected:
  const Variant& variant() const { return *GetParam(); }

  // A spec of Lq x Lk with several heads, weights when the variant has them.
  ProblemSpec Spec(int64_t lq, int64_t lk, MaskKind mask) const {
    ProblemSpec spec;
    spec.shape = Shape{2, 4, 2, lq, lk, 40, 24};
    spec.mask = mask;
    spec.want_weights = variant().supports_weights;
    spec.seed = 7000 + lq * 31 + lk;
    return spec;
  }

  // Poisons, runs on `threads` threads, compares with the reference.
  // Returns the reference result for extra checks.
  reference::Result RunAndCheck(ProblemData& data, int threads = 0) {
    data.Poison();
    auto want = reference::Attention(data.problem(), !data.problem().weights.empty());
    EXPECT_TRUE(want.ok()) << want.status().ToString();
    RunOptions options;
    options.threads = threads;
    const Status status = attn::Run(variant(), data.problem(), options);
    EXPECT_TRUE(status.ok()) << status.ToString();
    if (!want.ok()) return {};
    const Comparison c = CompareToReference(data, *want);
    EXPECT_TRUE(c.ok) << c.first_failure << "\n  variant=" << variant().name
                      << " case=" << data.spec().Name() << " seed=" << data.spec().seed
                      << " threads=" << threads;
    return *want;
  }

  // O row contiguous index helpers over ProblemData::OutputContiguous().
  static int64_t RowIndex(const Shape& s, int64_t b, int64_t h, int64_t i) {
    return (b * s.heads + h) * s.q_len + i;
  }

  // Rows 0 .. rows-1 of every (b, h) are fully masked, and nothing is NaN.
  void ExpectFirstRowsMasked(ProblemData& data, int64_t rows) {
    const Shape& s = data.problem().shape;
    const std::vector<float> o = data.OutputContiguous();
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t h = 0; h < s.heads; ++h)
        for (int64_t i = 0; i < rows; ++i) ExpectMaskedRow(data, o, b, h, i);
    EXPECT_EQ(Classify(data).nan, 0);
  }

  // Row (b, h, i) is fully masked: O exactly 0, lse -inf, weights 0.
  void ExpectMaskedRow(ProblemData& data, const std::vector<float>& o, int64_t b, int64_t h,
                       int64_t i) {
    const Shape& s = data.problem().shape;
    const int64_t row = RowIndex(s, b, h, i);
    for (int64_t d = 0; d < s.value_dim; ++d) {
      ASSERT_EQ(o[row * s.value_dim + d], 0.0f)
          << variant().name << " O[b=" << b << ",h=" << h << ",i=" << i << ",d=" << d << "]";
    }
    if (!data.lse().empty()) {
      ASSERT_EQ(data.lse()[row], -kInf) << variant().name << " lse row " << row;
    }
    if (!data.weights().empty()) {
      for (int64_t j = 0; j < s.kv_len; ++j) {
        ASSERT_EQ(data.weights()[row * s.kv_len + j], 0.0f) << variant().name << " weight j=" << j;
      }
    }
  }

  // Counts rows of O whose elements are all NaN / all finite.
  struct RowKinds {
    int64_t nan = 0, finite = 0, mixed = 0;
  };
  static RowKinds Classify(ProblemData& data) {
    const Shape& s = data.problem().shape;
    const std::vector<float> o = data.OutputContiguous();
    RowKinds k;
    for (int64_t row = 0; row < s.batch * s.heads * s.q_len; ++row) {
      int64_t nans = 0;
      for (int64_t d = 0; d < s.value_dim; ++d) nans += std::isnan(o[row * s.value_dim + d]);
      if (nans == 0)
        ++k.finite;
      else if (nans == s.value_dim)
        ++k.nan;
      else
        ++k.mixed;
    }
    return k;
  }
};

// --- Fully masked rows -----------------------------------------------------

TEST_P(EdgeTest, CausalWithLqGreaterThanLkMasksTheFirstRows) {
  // off = Lk - Lq = -50: rows 0..49 see no key.
  ProblemSpec spec = Spec(200, 150, MaskKind::kCausal);
  ProblemData data(spec);
  RunAndCheck(data);
  ExpectFirstRowsMasked(data, 50);
}

TEST_P(EdgeTest, WindowThatMissesEveryKeyMasksTheRow) {
  // Lq 200 > Lk 150, window (3, 2): row i sees [i - 53, i - 48]; rows < 48 see nothing.
  ProblemSpec spec = Spec(200, 150, MaskKind::kSlidingWindow);
  spec.window_left = 3;
  spec.window_right = 2;
  ProblemData data(spec);
  RunAndCheck(data);
  ExpectFirstRowsMasked(data, 48);
}

TEST_P(EdgeTest, KeyLengthZeroForOneBatch) {
  for (MaskKind kind : {MaskKind::kNone, MaskKind::kCausal, MaskKind::kAdditive}) {
    ProblemSpec spec = Spec(200, 300, kind);
    spec.key_lengths = {300, 0};
    ProblemData data(spec);
    RunAndCheck(data);
    const std::vector<float> o = data.OutputContiguous();
    for (int64_t h = 0; h < 4; ++h)
      for (int64_t i = 0; i < 200; ++i) ExpectMaskedRow(data, o, 1, h, i);
    EXPECT_EQ(Classify(data).nan, 0) << MaskKindName(kind);
  }
}

TEST_P(EdgeTest, AdditiveRowOfMinusInfIsMasked) {
  for (AdditiveKind kind : {AdditiveKind::k2D, AdditiveKind::k4D}) {
    ProblemSpec spec = Spec(200, 300, MaskKind::kAdditive);
    spec.additive = kind;
    ProblemData data(spec);
    // Every 7th row of every mask plane is all -inf (ProblemData already
    // masks row 0 of each plane); the rest keep their random finite entries.
    Problem& p = data.problem();
    const AdditiveMaskShape& a = p.mask.additive_shape;
    float* mask = const_cast<float*>(p.mask.additive.data());
    for (int64_t plane = 0; plane < a.batch * a.heads; ++plane)
      for (int64_t i = 0; i < a.rows; i += 7)
        for (int64_t j = 0; j < a.cols; ++j) mask[(plane * a.rows + i) * a.cols + j] = -kInf;
    RunAndCheck(data);
    const std::vector<float> o = data.OutputContiguous();
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t h = 0; h < 4; ++h)
        for (int64_t i = 0; i < 200; i += 7) ExpectMaskedRow(data, o, b, h, i);
    EXPECT_EQ(Classify(data).nan, 0);
  }
}

// --- Degenerate lengths ----------------------------------------------------

TEST_P(EdgeTest, OneKey) {
  for (MaskKind kind :
       {MaskKind::kNone, MaskKind::kCausal, MaskKind::kSlidingWindow, MaskKind::kAdditive}) {
    ProblemSpec spec = Spec(200, 1, kind);
    ProblemData data(spec);
    RunAndCheck(data);
    // With one visible key the weight is exactly 1: O = that key's V row.
    if (kind == MaskKind::kNone) {
      const std::vector<float> o = data.OutputContiguous();
      const Problem& p = data.problem();
      for (int64_t b = 0; b < 2; ++b)
        for (int64_t h = 0; h < 4; ++h) {
          const float* v = Row(p.v, b, h / 2, 0);
          for (int64_t i = 0; i < 200; ++i)
            for (int64_t d = 0; d < 24; ++d)  // weight exp(0) / 1 = 1: a few ulp at most
              ASSERT_NEAR(o[(RowIndex(p.shape, b, h, i)) * 24 + d], v[d], 4e-7f)
                  << variant().name << " b=" << b << " h=" << h << " i=" << i;
        }
    }
  }
}

TEST_P(EdgeTest, OneQuery) {
  for (MaskKind kind :
       {MaskKind::kNone, MaskKind::kCausal, MaskKind::kSlidingWindow, MaskKind::kAdditive}) {
    ProblemSpec spec = Spec(1, 300, kind);
    spec.window_left = 40;
    spec.key_lengths = {300, 123};
    ProblemData data(spec);
    RunAndCheck(data);
  }
}

// Lk = 0 and Lq = 0 need non-null pointers for empty tensors, so they are
// built by hand.
TEST_P(EdgeTest, NoKeysMasksEveryRow) {
  const Shape s{2, 4, 2, 37, 0, 40, 24};
  std::vector<float> q(2 * 4 * 37 * 40, 0.25f), k(1), v(1), o(2 * 4 * 37 * 24, kNaN);
  std::vector<float> lse(2 * 4 * 37, kNaN), weights(1);
  Problem p = MakeProblem(s, q.data(), k.data(), v.data(), o.data());
  p.lse = lse;
  if (variant().supports_weights) p.weights = std::span<float>(weights.data(), 0);
  for (MaskKind kind : {MaskKind::kNone, MaskKind::kCausal, MaskKind::kSlidingWindow}) {
    p.mask.kind = kind;
    std::fill(o.begin(), o.end(), kNaN);
    std::fill(lse.begin(), lse.end(), kNaN);
    const Status status = attn::Run(variant(), p);
    ASSERT_TRUE(status.ok()) << status.ToString();
    for (float x : o) ASSERT_EQ(x, 0.0f) << variant().name << " " << MaskKindName(kind);
    for (float x : lse) ASSERT_EQ(x, -kInf) << variant().name << " " << MaskKindName(kind);
  }
}

TEST_P(EdgeTest, NoQueriesIsANoOp) {
  const Shape s{2, 4, 2, 0, 300, 40, 24};
  std::vector<float> q(1, kNaN), k(2 * 2 * 300 * 40, 0.5f), v(2 * 2 * 300 * 24, 0.5f);
  std::vector<float> o(1, 123.0f), lse(1, 456.0f);
  Problem p = MakeProblem(s, q.data(), k.data(), v.data(), o.data());
  p.lse = std::span<float>(lse.data(), 0);
  for (MaskKind kind : {MaskKind::kNone, MaskKind::kCausal, MaskKind::kSlidingWindow}) {
    p.mask.kind = kind;
    const Status status = attn::Run(variant(), p);
    ASSERT_TRUE(status.ok()) << status.ToString();
    EXPECT_EQ(o[0], 123.0f) << variant().name << " wrote O with Lq = 0";
    EXPECT_EQ(lse[0], 456.0f) << variant().name << " wrote lse with Lq = 0";
  }
}

// The same two in reduced element types (variants that convert to fp32 copies
// must not hand an empty copy on as a null tensor).
TEST_P(EdgeTest, EmptyProblemsInReducedTypes) {
  const DType f32 = DType::kF32, bf16 = DType::kBF16, f16 = DType::kF16, i8 = DType::kI8;
  for (const DTypes& t :
       {DTypes{bf16, bf16, bf16, bf16}, DTypes{f16, f16, f16, f16}, DTypes{f32, i8, i8, bf16}}) {
    if (!Takes(variant(), t)) continue;
    const std::string what = std::string(variant().name) + " " + Describe(t);
    // Lk = 0: every row masked, O = 0 (rounded: still 0), lse = -inf.
    Shape s{1, 2, 1, 5, 0, 8, 8};
    std::vector<uint8_t> q(1 * 2 * 5 * 8 * 4), kv(4), o(1 * 2 * 5 * 8 * 4, 0xFF);
    std::vector<float> scales(1), lse(10, kNaN);
    Problem p = MakeProblem(s, q.data(), kv.data(), kv.data(), o.data(), Layout::kBHLD, t);
    if (t.k == i8) p.k_scales = {scales.data(), Strides::BHLD(1, 0, 1)};
    if (t.v == i8) p.v_scales = {scales.data(), Strides::BHLD(1, 0, 1)};
    p.lse = lse;
    Status status = attn::Run(variant(), p);
    ASSERT_TRUE(status.ok()) << what << ": " << status.ToString();
    const size_t o_bytes = 2 * 5 * 8 * DTypeBytes(t.o);
    for (size_t i = 0; i < o_bytes; ++i) ASSERT_EQ(o[i], 0) << what << " byte " << i;
    for (float x : lse) ASSERT_EQ(x, -kInf) << what;
    // Lq = 0: nothing written.
    s = Shape{1, 2, 1, 0, 7, 8, 8};
    std::vector<uint8_t> k(7 * 8 * 4), o_sentinel(4, 0x5A);
    std::vector<float> k_scales(7, 1.0f);
    p = MakeProblem(s, q.data(), k.data(), k.data(), o_sentinel.data(), Layout::kBHLD, t);
    if (t.k == i8) p.k_scales = {k_scales.data(), Strides::BHLD(1, 7, 1)};
    if (t.v == i8) p.v_scales = {k_scales.data(), Strides::BHLD(1, 7, 1)};
    status = attn::Run(variant(), p);
    ASSERT_TRUE(status.ok()) << what << ": " << status.ToString();
    for (uint8_t b : o_sentinel) EXPECT_EQ(b, 0x5A) << what << " wrote O with Lq = 0";
  }
}

// --- All-equal scores ------------------------------------------------------

TEST_P(EdgeTest, AllEqualScoresGiveTheMeanOfV) {
  for (MaskKind kind : {MaskKind::kNone, MaskKind::kCausal}) {
    ProblemSpec spec = Spec(200, 300, kind);
    ProblemData data(spec);
    // Every key row of a kv head is identical: all scores of a row are equal.
    const Problem& p = data.problem();
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t h = 0; h < 2; ++h)
        for (int64_t j = 1; j < 300; ++j)
          std::memcpy(Row(p.k, b, h, j), Row(p.k, b, h, 0), 40 * sizeof(float));
    RunAndCheck(data);
    // Spelled out: every weight is 1 / 300 and lse = score + log(300), within
    // the row's derived bound (the reference comparison above checks O).
    if (kind == MaskKind::kNone) {
      const RowBound bound = ErrorBound(p, 1, 3, 0);
      const int64_t row = RowIndex(p.shape, 1, 3, 0);
      for (int64_t j = 0; j < 300 && !data.weights().empty(); ++j) {
        ASSERT_NEAR(data.weights()[row * 300 + j], 1.0 / 300, bound.weights) << variant().name;
      }
      const float* q = Row(p.q, 1, 3, 0);
      const float* k = Row(p.k, 1, 1, 0);
      double score = 0;
      for (int64_t d = 0; d < 40; ++d) score += double(q[d]) * k[d];
      score /= std::sqrt(40.0);
      EXPECT_NEAR(data.lse()[row], score + std::log(300.0), bound.lse);
    }
  }
}

// --- ±inf logits from the additive mask -----------------------------------

TEST_P(EdgeTest, PlusInfLogitMakesOnlyThatRowNaN) {
  ProblemSpec spec = Spec(200, 300, MaskKind::kAdditive);
  spec.additive = AdditiveKind::k4D;
  ProblemData data(spec);
  Problem& p = data.problem();
  const AdditiveMaskShape& a = p.mask.additive_shape;
  float* mask = const_cast<float*>(p.mask.additive.data());
  auto at = [&](int64_t b, int64_t h, int64_t i, int64_t j) -> float& {
    return mask[((b * a.heads + h) * a.rows + i) * a.cols + j];
  };
  // (b=0, h=1, i=50): +inf at key 170, the row is NaN.
  at(0, 1, 50, 170) = kInf;
  // (b=1, h=3, i=199): every key -inf except key 299 (exactly that V row).
  for (int64_t j = 0; j < 299; ++j) at(1, 3, 199, j) = -kInf;
  at(1, 3, 199, 299) = 0.5f;
  RunAndCheck(data);
  const std::vector<float> o = data.OutputContiguous();
  const int64_t nan_row = RowIndex(p.shape, 0, 1, 50);
  for (int64_t d = 0; d < 24; ++d) ASSERT_TRUE(std::isnan(o[nan_row * 24 + d])) << d;
  ASSERT_TRUE(std::isnan(data.lse()[nan_row]));
  const int64_t one_row = RowIndex(p.shape, 1, 3, 199);
  const float* v = Row(p.v, 1, 1, 299);
  for (int64_t d = 0; d < 24; ++d) ASSERT_NEAR(o[one_row * 24 + d], v[d], 4e-7f) << d;
  const RowKinds kinds = Classify(data);
  EXPECT_EQ(kinds.nan, 1);
  EXPECT_EQ(kinds.mixed, 0);
}

TEST_P(EdgeTest, InfAndNaNMaskEntriesOfPaddingKeysAreNeverRead) {
  // Key lengths are structural: entries of the additive mask past a batch's
  // key length are hidden, even when they are +inf or NaN.
  ProblemSpec spec = Spec(200, 300, MaskKind::kAdditive);
  spec.additive = AdditiveKind::k4D;
  spec.key_lengths = {217, 300};
  ProblemData data(spec);
  Problem& p = data.problem();
  const AdditiveMaskShape& a = p.mask.additive_shape;
  float* mask = const_cast<float*>(p.mask.additive.data());
  for (int64_t h = 0; h < a.heads; ++h)
    for (int64_t i = 0; i < a.rows; ++i)
      for (int64_t j = 217; j < a.cols; ++j)
        mask[((0 * a.heads + h) * a.rows + i) * a.cols + j] = (i + j) % 2 ? kInf : kNaN;
  RunAndCheck(data);
  EXPECT_EQ(Classify(data).nan, 0);
}

// --- Finite logits up to +-FLT_MAX (issue 21) ------------------------------
// Every finite logit is a logit: flash once scaled logits by log2 e before
// taking the max, so anything beyond FLT_MAX / log2 e = 2.36e38 overflowed.

// Hugging Face fills padding with float32's lowest value, not -inf. A fully
// padded row then has equal logits (s - FLT_MAX rounds to -FLT_MAX) and
// gives the mean of V, as in PyTorch; padded keys of other rows get weight 0.
TEST_P(EdgeTest, FloatLowestPaddingMaskGivesFullyPaddedRowsTheMeanOfV) {
  constexpr float kLowest = std::numeric_limits<float>::lowest();
  ProblemSpec spec = Spec(200, 300, MaskKind::kAdditive);
  ProblemData data(spec);
  Problem& p = data.problem();
  float* mask = const_cast<float*>(p.mask.additive.data());  // [Lq, Lk]
  for (int64_t i = 0; i < 200; ++i)
    for (int64_t j = 0; j < 300; ++j) mask[i * 300 + j] = (i < 3 || j >= 250) ? kLowest : 0.0f;
  RunAndCheck(data);
  const std::vector<float> o = data.OutputContiguous();
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t h = 0; h < 4; ++h) {
      const int64_t row = RowIndex(p.shape, b, h, 1);  // fully padded
      for (int64_t d = 0; d < 24; ++d) {
        double mean = 0;
        for (int64_t j = 0; j < 300; ++j) mean += Row(p.v, b, h / 2, j)[d];
        mean /= 300;
        ASSERT_NEAR(o[row * 24 + d], mean, 1e-5) << variant().name << " b=" << b << " h=" << h;
      }
      ASSERT_TRUE(std::isfinite(data.lse()[row])) << variant().name;
      ASSERT_LT(data.lse()[row], -3e38f) << variant().name;
    }
  EXPECT_EQ(Classify(data).nan, 0);
}

// Logits q·k in (2.36e38, FLT_MAX], no partial sum overflowing: the row is
// one-hot on its largest logit (the others are 1e37 or more below it).
TEST_P(EdgeTest, LogitsNearFloatMaxGiveAOneHotRow) {
  ProblemSpec spec;
  spec.shape = Shape{1, 1, 1, 4, 40, 16, 16};
  spec.seed = 7123;
  ProblemData data(spec);
  Problem& p = data.problem();
  p.scale = 1.0f;
  const float others[] = {2.9e19f, 2.5e19f, 1.0e19f};  // logits 2.9e38, 2.5e38, 1e38
  for (int64_t i = 0; i < 4; ++i) {
    float* q = Row(p.q, 0, 0, i);
    std::fill(q, q + 16, 0.0f);
    q[0] = 1.0e19f;
  }
  for (int64_t j = 0; j < 40; ++j) {
    float* k = Row(p.k, 0, 0, j);
    std::fill(k, k + 16, 0.0f);
    k[0] = j == 17 ? 3.0e19f : others[j % 3];  // key 17: logit 3e38, the largest
  }
  RunAndCheck(data);
  const std::vector<float> o = data.OutputContiguous();
  const float* v = Row(p.v, 0, 0, 17);
  for (int64_t i = 0; i < 4; ++i) {
    for (int64_t d = 0; d < 16; ++d) ASSERT_EQ(o[i * 16 + d], v[d]) << variant().name << " i=" << i;
    ASSERT_NEAR(data.lse()[i], 3e38, 3e38 * 1e-6) << variant().name;
  }
}

// An additive entry of +3e38 (finite) makes its key the whole row.
TEST_P(EdgeTest, HugeFiniteMaskEntryGivesAOneHotRow) {
  ProblemSpec spec = Spec(200, 300, MaskKind::kAdditive);
  ProblemData data(spec);
  Problem& p = data.problem();
  float* mask = const_cast<float*>(p.mask.additive.data());  // [Lq, Lk], zeros
  mask[7 * 300 + 123] = 3e38f;
  RunAndCheck(data);
  const std::vector<float> o = data.OutputContiguous();
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t h = 0; h < 4; ++h) {
      const int64_t row = RowIndex(p.shape, b, h, 7);
      const float* v = Row(p.v, b, h / 2, 123);
      for (int64_t d = 0; d < 24; ++d) ASSERT_EQ(o[row * 24 + d], v[d]) << variant().name;
    }
  EXPECT_EQ(Classify(data).nan, 0);
}

// --- NaN inputs reach only the rows they touch -----------------------------

TEST_P(EdgeTest, NaNInQueryRowReachesOnlyThatRow) {
  for (MaskKind kind : {MaskKind::kNone, MaskKind::kCausal, MaskKind::kAdditive}) {
    ProblemSpec spec = Spec(200, 300, kind);
    ProblemData data(spec);
    const Problem& p = data.problem();
    Row(p.q, 1, 2, 77)[5] = kNaN;
    RunAndCheck(data);
    const RowKinds kinds = Classify(data);
    EXPECT_EQ(kinds.nan, 1) << MaskKindName(kind);
    EXPECT_EQ(kinds.mixed, 0) << MaskKindName(kind);
    EXPECT_TRUE(std::isnan(data.lse()[RowIndex(p.shape, 1, 2, 77)]));
  }
}

// NaN in K row jk and V row jv of kv head 0 of batch 0; query heads 0 and 1
// read kv head 0 (GQA 2:1). `expected_nan_rows` is the number of rows of one
// query head that see jk or jv.
struct HiddenNaNCase {
  const char* name;
  MaskKind kind;
  int64_t left, right;
  std::vector<int32_t> key_lengths;
  int64_t jk, jv;
  int64_t expected_nan_rows;
};

TEST_P(EdgeTest, NaNInHiddenKeyRowsReachesOnlyRowsThatSeeThem) {
  const HiddenNaNCase cases[] = {
      // causal, off = 100: row i sees j <= i + 100; keys 250 / 260 reach rows
      // i >= 150 (50 rows), hidden from rows 0..149.
      {"causal", MaskKind::kCausal, 0, 0, {}, 250, 260, 50},
      // key length 200 for batch 0: keys 200.. are padding, no row sees them.
      {"key_lengths", MaskKind::kNone, 0, 0, {200, 300}, 210, 299, 0},
      {"causal+key_lengths", MaskKind::kCausal, 0, 0, {200, 300}, 200, 201, 0},
      // window (20, 5) around i + 100: key 150 is seen by i in [45, 70] (26
      // rows); key 155 by i in [50, 75]; together rows 45..75 (31 rows).
      {"window", MaskKind::kSlidingWindow, 20, 5, {}, 150, 155, 31},
      // Additive -inf does not shield (0 * NaN = NaN): every row is reached.
      {"additive", MaskKind::kAdditive, 0, 0, {}, 3, 290, 200},
  };
  for (const HiddenNaNCase& c : cases) {
    SCOPED_TRACE(c.name);
    ProblemSpec spec = Spec(200, 300, c.kind);
    spec.window_left = c.left;
    spec.window_right = c.right;
    spec.key_lengths = c.key_lengths;
    ProblemData data(spec);
    const Problem& p = data.problem();
    Row(p.k, 0, 0, c.jk)[0] = kNaN;
    float* v = Row(p.v, 0, 0, c.jv);
    for (int64_t d = 0; d < 24; ++d) v[d] = kNaN;
    if (c.kind == MaskKind::kAdditive) {
      // Mask keys jk and jv with -inf in every row: still reached.
      float* mask = const_cast<float*>(p.mask.additive.data());
      for (int64_t i = 0; i < 200; ++i) mask[i * 300 + c.jk] = mask[i * 300 + c.jv] = -kInf;
      // Rows ProblemData fully masked (row 0) still see K's NaN logit:
      // NaN + -inf = NaN, so even they are NaN.
    }
    RunAndCheck(data);
    const RowKinds kinds = Classify(data);
    EXPECT_EQ(kinds.nan, 2 * c.expected_nan_rows) << variant().name;  // query heads 0 and 1
    EXPECT_EQ(kinds.mixed, 0) << variant().name;
  }
}

// --- Threads and determinism -----------------------------------------------

std::vector<ProblemSpec> ThreadSpecs() {
  std::vector<ProblemSpec> specs;
  auto add = [&](Shape s, MaskKind kind, auto&& tweak) {
    ProblemSpec spec;
    spec.shape = s;
    spec.mask = kind;
    spec.seed = 9100 + specs.size();
    tweak(spec);
    specs.push_back(spec);
  };
  add(Shape{2, 4, 2, 200, 300, 40, 24}, MaskKind::kCausal, [](ProblemSpec&) {});
  add(Shape{1, 1, 1, 200, 300, 64, 64}, MaskKind::kNone, [](ProblemSpec&) {});  // B*H < threads
  add(Shape{1, 2, 1, 257, 129, 72, 40}, MaskKind::kSlidingWindow, [](ProblemSpec& s) {
    s.window_left = 30;
    s.window_right = 7;
    s.layout = Layout::kBLHD;
  });
  add(Shape{2, 2, 2, 200, 300, 32, 32}, MaskKind::kAdditive, [](ProblemSpec& s) {
    s.additive = AdditiveKind::k4D;
    s.key_lengths = {0, 211};
  });
  add(Shape{1, 8, 1, 1, 1000, 64, 64}, MaskKind::kNone,
      [](ProblemSpec& s) { s.values = Values::kLargeLogits; });
  return specs;
}

std::vector<uint32_t> Bits(const std::vector<float>& x) {
  std::vector<uint32_t> bits(x.size());
  if (!x.empty()) std::memcpy(bits.data(), x.data(), x.size() * sizeof(float));  // null if empty
  return bits;
}

TEST_P(EdgeTest, OneAndTwoThreadsAgreeWithinTheBound) {
  for (ProblemSpec spec : ThreadSpecs()) {
    SCOPED_TRACE(spec.Name());
    spec.want_weights = variant().supports_weights;
    ProblemData data(spec);
    // A NaN query row, so the NaN pattern is part of what must agree.
    Row(data.problem().q, 0, 0, spec.shape.q_len / 2)[0] = kNaN;
    RunAndCheck(data, 1);  // each within the bound of the reference
    const std::vector<float> one = data.OutputContiguous();
    const std::vector<float> lse_one = data.lse();
    RunAndCheck(data, 2);
    const std::vector<float> two = data.OutputContiguous();
    for (size_t e = 0; e < one.size(); ++e) {
      ASSERT_EQ(std::isnan(one[e]), std::isnan(two[e])) << "element " << e;
      ASSERT_EQ(one[e] == 0.0f, two[e] == 0.0f) << "element " << e;
    }
    for (size_t r = 0; r < lse_one.size(); ++r) {
      ASSERT_EQ(std::isinf(lse_one[r]), std::isinf(data.lse()[r])) << "lse row " << r;
    }
  }
}

// Deterministic variants (registry `deterministic = true`) give the same bits
// on every run at a fixed thread count; the others are skipped, by name.
TEST_P(EdgeTest, RunToRunBitwiseDeterminism) {
  if (!variant().deterministic) {
    GTEST_SKIP() << variant().name << " is registered as not deterministic";
  }
  for (int threads : {1, 2}) {
    for (ProblemSpec spec : ThreadSpecs()) {
      SCOPED_TRACE(spec.Name() + " threads=" + std::to_string(threads));
      spec.want_weights = variant().supports_weights;
      ProblemData data(spec);
      RunAndCheck(data, threads);
      const std::vector<uint32_t> o1 = Bits(data.OutputContiguous());
      const std::vector<uint32_t> lse1 = Bits(data.lse());
      const std::vector<uint32_t> w1 = Bits(data.weights());
      for (int rep = 0; rep < 2; ++rep) {
        RunAndCheck(data, threads);
        ASSERT_EQ(o1, Bits(data.OutputContiguous())) << variant().name << " O differs";
        ASSERT_EQ(lse1, Bits(data.lse())) << variant().name << " lse differs";
        ASSERT_EQ(w1, Bits(data.weights())) << variant().name << " weights differ";
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, EdgeTest, ::testing::ValuesIn(Variants()),
                         [](const auto& info) { return std::string(info.param->name); });

}  // namespace
}  // namespace attn::testing
