// The backward oracle's own tests: the analytic fp64 gradients against
// central finite differences of the fp64 forward, hand-computed cases, the
// NaN and masking semantics of kernels/problem.h ("backward"), and the
// derived gradient bound (reference/error_bound.h): an honest fp32 backward
// passes it, a buggy one fails it.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "reference/error_bound.h"
#include "reference/reference.h"
#include "reference/row_chunks.h"
#include "testing/compare.h"
#include "testing/grad_data.h"
#include "testing/problem_data.h"

namespace attn::reference {
namespace {

constexpr float kInfF = std::numeric_limits<float>::infinity();

// ------------------------------------------------ finite differences (fp64)

// A double problem with random inputs in [-1, 1] and the mask arrays it
// borrows.
struct DenseCase {
  const char* name;
  Shape shape;
  MaskKind kind = MaskKind::kNone;
  int64_t left = 0, right = 0;
  bool additive_4d = false;
  std::vector<int32_t> key_lengths;
  // Score modifiers: a softcap (0: none), ALiBi slopes, sinks (head 1's -inf).
  double softcap = 0;
  bool alibi = false, sinks = false;
};

void PrintTo(const DenseCase& c, std::ostream* os) { *os << c.name; }

DenseCase Dense(const char* name, Shape shape, MaskKind kind = MaskKind::kNone, int64_t left = 0,
                int64_t right = 0, bool additive_4d = false,
                std::vector<int32_t> key_lengths = {}) {
  return {name, shape, kind, left, right, additive_4d, std::move(key_lengths)};
}

DenseCase Modified(DenseCase c, double softcap, bool alibi, bool sinks) {
  c.softcap = softcap;
  c.alibi = alibi;
  c.sinks = sinks;
  return c;
}

class FiniteDifferenceTest : public ::testing::TestWithParam<DenseCase> {};

// loss = Σ dO∘O of the fp64 forward.
double Loss(const F64Problem& p, const std::vector<double>& d_o) {
  const F64Forward f = ForwardF64(p);
  double loss = 0;
  for (size_t x = 0; x < f.o.size(); ++x) loss += d_o[x] * f.o[x];
  return loss;
}

TEST_P(FiniteDifferenceTest, AnalyticMatchesCentralDifferences) {
  const DenseCase& c = GetParam();
  const Shape& s = c.shape;
  std::mt19937_64 rng(42);
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  auto random = [&](int64_t n) {
    std::vector<double> out(n);
    for (double& x : out) x = uniform(rng);
    return out;
  };
  F64Problem p;
  p.shape = s;
  p.scale = 0.7;
  p.mask.kind = c.kind;
  p.mask.window_left = c.left;
  p.mask.window_right = c.right;
  p.q = random(s.batch * s.heads * s.q_len * s.head_dim);
  p.k = random(s.batch * s.kv_heads * s.kv_len * s.head_dim);
  p.v = random(s.batch * s.kv_heads * s.kv_len * s.value_dim);
  std::vector<float> mask;
  if (c.kind == MaskKind::kAdditive) {
    AdditiveMaskShape& a = p.mask.additive_shape;
    a = {c.additive_4d ? s.batch : 1, c.additive_4d ? s.heads : 1, s.q_len, s.kv_len};
    mask.resize(a.batch * a.heads * a.rows * a.cols);
    for (size_t x = 0; x < mask.size(); ++x) mask[x] = x % 5 == 2 ? -kInfF : float(uniform(rng));
    for (int64_t j = 0; j < s.kv_len; ++j) mask[j] = -kInfF;  // row 0 fully masked
    p.mask.additive = mask;
  }
  if (!c.key_lengths.empty()) p.mask.key_lengths = c.key_lengths;
  p.softcap = c.softcap;
  for (int64_t h = 0; h < s.heads; ++h) {
    if (c.alibi) p.alibi_slopes.push_back(0.3 * (h % 2 ? -1 : 1) / double(h + 1));
    if (c.sinks)
      p.sinks.push_back(h == 1 ? -std::numeric_limits<double>::infinity() : uniform(rng));
  }
  const std::vector<double> d_o = random(s.batch * s.heads * s.q_len * s.value_dim);

  const GradResult g = BackwardF64(p, d_o);
  struct Input {
    const char* name;
    std::vector<double>* values;
    const std::vector<double>* grad;
  } inputs[] = {{"dQ", &p.q, &g.dq},
                {"dK", &p.k, &g.dk},
                {"dV", &p.v, &g.dv},
                {"d_sinks", &p.sinks, &g.d_sinks}};
  for (const Input& in : inputs) {
    ASSERT_EQ(in.values->size(), in.grad->size()) << in.name;
    for (size_t x = 0; x < in.values->size(); ++x) {
      double& value = (*in.values)[x];
      if (std::isinf(value)) {  // a -inf sink (no sink): no gradient
        EXPECT_EQ((*in.grad)[x], 0.0) << in.name << "[" << x << "]";
        continue;
      }
      const double saved = value;
      const double step = 1e-6 * std::max(1.0, std::fabs(saved));
      value = saved + step;
      const double plus = Loss(p, d_o);
      value = saved - step;
      const double minus = Loss(p, d_o);
      value = saved;
      const double fd = (plus - minus) / (2 * step);
      EXPECT_NEAR((*in.grad)[x], fd, 1e-6 * (1 + std::fabs(fd))) << in.name << "[" << x << "]";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Masks, FiniteDifferenceTest,
    ::testing::Values(
        // Shape: B, H, Hkv, Lq, Lk, dk, dv.
        Dense("none_gqa", Shape{1, 4, 2, 3, 5, 3, 2}),
        Dense("none_mha_b2", Shape{2, 2, 2, 4, 4, 2, 3}),
        Dense("none_mqa", Shape{1, 3, 1, 2, 3, 4, 1}), Dense("lk1", Shape{1, 2, 1, 3, 1, 2, 2}),
        Dense("causal_lq_lt_lk", Shape{1, 4, 2, 3, 6, 2, 3}, MaskKind::kCausal),
        // Lq > Lk: the first rows see no key (fully masked).
        Dense("causal_lq_gt_lk", Shape{1, 2, 1, 6, 3, 3, 2}, MaskKind::kCausal),
        Dense("window", Shape{1, 4, 2, 5, 6, 2, 3}, MaskKind::kSlidingWindow, 1, 1),
        Dense("window_empty_rows", Shape{1, 2, 2, 6, 3, 2, 2}, MaskKind::kSlidingWindow, 0, 0),
        Dense("additive_2d", Shape{1, 4, 2, 4, 5, 3, 2}, MaskKind::kAdditive),
        Dense("additive_4d", Shape{2, 2, 1, 3, 4, 2, 3}, MaskKind::kAdditive, 0, 0, true),
        Dense("key_lengths", Shape{2, 4, 2, 3, 5, 2, 3}, MaskKind::kNone, 0, 0, false, {3, 0}),
        Dense("causal_key_lengths", Shape{2, 2, 1, 4, 5, 3, 2}, MaskKind::kCausal, 0, 0, false,
              {5, 2}),
        // 300 query rows: two chunks (reference/row_chunks.h), dK and dV summed
        // across the chunk boundary (both heads share the kv head).
        Dense("chunked_rows_gqa", Shape{1, 2, 1, 150, 3, 2, 2}),
        // Score modifiers: the softcap's slope in dS, ALiBi a constant, a
        // sink's own gradient (and rows that see only the sink).
        Modified(Dense("softcap", Shape{1, 2, 1, 4, 5, 3, 2}), 0.8, false, false),
        Modified(Dense("alibi_causal", Shape{1, 4, 2, 4, 6, 2, 3}, MaskKind::kCausal), 0, true,
                 false),
        Modified(Dense("sinks_gqa", Shape{2, 4, 2, 3, 5, 3, 2}), 0, false, true),
        Modified(Dense("sinks_masked_rows", Shape{1, 2, 1, 6, 3, 3, 2}, MaskKind::kCausal), 0,
                 false, true),
        Modified(Dense("all_window", Shape{1, 4, 2, 5, 6, 2, 3}, MaskKind::kSlidingWindow, 1, 1),
                 1.5, true, true),
        Modified(Dense("all_additive", Shape{1, 2, 2, 4, 5, 3, 2}, MaskKind::kAdditive), 2.0, true,
                 true)),
    [](const ::testing::TestParamInfo<DenseCase>& info) { return std::string(info.param.name); });

// The reference's chunks of rows (reference/row_chunks.h): every row once,
// the chunk count a function of the row count alone.
TEST(RowChunksTest, EveryRowOnceInFixedChunks) {
  for (const int64_t rows :
       {int64_t{1}, int64_t{255}, int64_t{256}, int64_t{257}, int64_t{2049}, int64_t{100003}}) {
    const int64_t chunks = RowChunkCount(rows);
    EXPECT_EQ(chunks, std::min<int64_t>(8, (rows + 255) / 256)) << rows;
    std::vector<std::atomic<int>> seen(rows);
    std::vector<std::atomic<int>> chunk_seen(chunks);
    ForEachRowChunk(rows, [&](int64_t chunk, int64_t begin, int64_t end) {
      ASSERT_TRUE(chunk >= 0 && chunk < chunks);
      ++chunk_seen[chunk];
      EXPECT_EQ(begin, rows * chunk / chunks);
      EXPECT_EQ(end, rows * (chunk + 1) / chunks);
      for (int64_t r = begin; r < end; ++r) ++seen[r];
    });
    for (int64_t c = 0; c < chunks; ++c) EXPECT_EQ(chunk_seen[c].load(), 1) << rows << " " << c;
    for (int64_t r = 0; r < rows; ++r) ASSERT_EQ(seen[r].load(), 1) << rows << " row " << r;
  }
}

// ------------------------------------------------------ hand-computed cases

// A float problem with its forward outputs and gradient buffers, contiguous.
struct Tiny {
  std::vector<float> q, k, v, o, lse, d_o, dq, dk, dv;
  Problem p;
  Tiny(Shape s, std::vector<float> q_, std::vector<float> k_, std::vector<float> v_,
       std::vector<float> d_o_)
      : q(std::move(q_)),
        k(std::move(k_)),
        v(std::move(v_)),
        o(s.batch * s.heads * s.q_len * s.value_dim),
        lse(s.batch * s.heads * s.q_len),
        d_o(std::move(d_o_)),
        dq(s.batch * s.heads * s.q_len * s.head_dim),
        dk(s.batch * s.kv_heads * s.kv_len * s.head_dim),
        dv(s.batch * s.kv_heads * s.kv_len * s.value_dim) {
    p = MakeProblem(s, q.data(), k.data(), v.data(), o.data());
    p.lse = lse;
  }
  GradProblem Grad() const {
    return MakeGradProblem(p, d_o.data(), const_cast<float*>(dq.data()),
                           const_cast<float*>(dk.data()), const_cast<float*>(dv.data()));
  }
  GradResult Run() const {
    StatusOr<GradResult> r = Backward(Grad());
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : GradResult{};
  }
};

TEST(GradReferenceTest, OneKeyHasWeightOne) {
  // Lk = 1: P = 1, so dS = 1·(dP - dP) = 0: dQ = dK = 0 and dV = Σ dO over
  // every query row of the kv head's group (H = 2, Hkv = 1, Lq = 3).
  Tiny t(Shape{1, 2, 1, 3, 1, 2, 2}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {0.5f, -1}, {3, -2},
         {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
  const GradResult g = t.Run();
  for (double x : g.dq) EXPECT_EQ(x, 0.0);
  for (double x : g.dk) EXPECT_EQ(x, 0.0);
  EXPECT_EQ(g.dv[0], 1 + 3 + 5 + 7 + 9 + 11);
  EXPECT_EQ(g.dv[1], 2 + 4 + 6 + 8 + 10 + 12);
}

TEST(GradReferenceTest, TwoKeysWithEqualScores) {
  // q = (1, 0), k0 = (1, 2), k1 = (1, -3), scale 1: both scores 1, P = 1/2.
  // v = (2, 6), dO = 1: dP = (2, 6), D = 4, dS = (-1, 1);
  // dQ = -k0 + k1 = (0, -5), dK = (-q, q), dV = (1/2, 1/2)
  // (P = e^(S - lse) is 1/2 to within rounding).
  Tiny t(Shape{1, 1, 1, 1, 2, 2, 1}, {1, 0}, {1, 2, 1, -3}, {2, 6}, {1});
  t.p.scale = 1.0f;
  const GradResult g = t.Run();
  EXPECT_NEAR(g.dq[0], 0.0, 1e-12);
  EXPECT_NEAR(g.dq[1], -5.0, 1e-12);
  EXPECT_NEAR(g.dk[0], -1.0, 1e-12);
  EXPECT_NEAR(g.dk[1], 0.0, 1e-12);
  EXPECT_NEAR(g.dk[2], 1.0, 1e-12);
  EXPECT_NEAR(g.dk[3], 0.0, 1e-12);
  EXPECT_NEAR(g.dv[0], 0.5, 1e-12);
  EXPECT_NEAR(g.dv[1], 0.5, 1e-12);
}

TEST(GradReferenceTest, FullyMaskedRowIsZeroEvenWithNaNdO) {
  // Causal Lq = 3 > Lk = 2: row 0 sees no key. Its dO is NaN; its dQ is 0
  // and dK, dV (from rows 1 and 2) are finite.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Tiny t(Shape{1, 1, 1, 3, 2, 1, 1}, {1, 2, -1}, {0.5f, -0.25f}, {3, -2}, {nan, 1, 2});
  t.p.mask.kind = MaskKind::kCausal;
  const GradResult g = t.Run();
  EXPECT_EQ(g.dq[0], 0.0);
  EXPECT_TRUE(std::isfinite(g.dq[1]) && std::isfinite(g.dq[2]));
  for (double x : g.dk) EXPECT_TRUE(std::isfinite(x));
  for (double x : g.dv) EXPECT_TRUE(std::isfinite(x));
  // Row 1 sees key 0 only (P = 1): dV0 gets dO1 + row 2's weight·dO2.
  EXPECT_GT(g.dv[0], 1.0);
}

TEST(GradReferenceTest, AdditiveMinusInfRowIsFullyMasked) {
  // Every score of row 0 is -inf (lse = -inf): dQ0 = 0 and nothing reaches
  // dK, dV from it, NaN dO included. Row 1 is ordinary.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Tiny t(Shape{1, 1, 1, 2, 2, 1, 1}, {1, 2}, {0.5f, -0.25f}, {3, -2}, {nan, 1});
  const float mask[] = {-kInfF, -kInfF, 0.0f, 0.0f};
  t.p.mask.kind = MaskKind::kAdditive;
  t.p.mask.additive = mask;
  t.p.mask.additive_shape = {1, 1, 2, 2};
  const GradResult g = t.Run();
  EXPECT_EQ(g.dq[0], 0.0);
  EXPECT_TRUE(std::isfinite(g.dq[1]));
  for (double x : g.dk) EXPECT_TRUE(std::isfinite(x));
  for (double x : g.dv) EXPECT_TRUE(std::isfinite(x));
  EXPECT_DOUBLE_EQ(g.dv[0] + g.dv[1], 1.0);  // Σ_j P_1j·dO_1
}

TEST(GradReferenceTest, BackwardFailsOnlyWhenValidateGradFails) {
  Tiny t(Shape{1, 1, 1, 1, 2, 1, 1}, {1}, {1, 2}, {3, 4}, {1});
  t.p.lse = {};  // the backward needs the forward's lse
  GradProblem g = t.Grad();
  EXPECT_FALSE(ValidateGrad(g).ok());
  EXPECT_FALSE(Backward(g).ok());
  t.p.lse = t.lse;
  EXPECT_TRUE(Backward(t.Grad()).ok());
}

TEST(GradReferenceTest, BackwardReadsTheProblemThroughItsStrides) {
  // A strided, misaligned, GQA problem: Backward(GradProblem) equals the
  // double core on the exact values (ToF64, dO contiguous).
  testing::ProblemSpec spec;
  spec.shape = Shape{2, 4, 2, 5, 7, 3, 4};
  spec.mask = MaskKind::kAdditive;
  spec.additive = testing::AdditiveKind::k4D;
  spec.layout = Layout::kBLHD;
  spec.row_pad = 3;
  spec.misalign = true;
  spec.seed = 11;
  testing::ProblemData data(spec);
  testing::GradData grads(data);
  ASSERT_TRUE(testing::RunForwardForGrad(data).ok());
  const GradProblem g = grads.grad_problem();
  ASSERT_TRUE(ValidateGrad(g).ok()) << ValidateGrad(g).status().ToString();
  StatusOr<GradResult> got = Backward(g);
  ASSERT_TRUE(got.ok());
  const Shape& s = spec.shape;
  std::vector<double> d_o;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h)
      for (int64_t i = 0; i < s.q_len; ++i) {
        const float* row = testing::RowOf(g.d_o, b, h, i);
        d_o.insert(d_o.end(), row, row + s.value_dim);
      }
  const GradResult want = BackwardF64(ToF64(data.problem()), d_o);
  EXPECT_EQ(got->dq, want.dq);
  EXPECT_EQ(got->dk, want.dk);
  EXPECT_EQ(got->dv, want.dv);
  // GradData's padding check sees a write past a row's end.
  EXPECT_EQ(grads.PaddingWritten(), "");
  testing::RowOf(g.dk, 1, 1, 2)[s.head_dim + 1] = 0.0f;
  EXPECT_EQ(grads.PaddingWritten(), "dK[b=1,h=1,j=2]");
  grads.Poison();
  EXPECT_EQ(grads.PaddingWritten(), "");
}

// ------------------------------------------------------------ NaN semantics

bool AllNaN(const std::vector<double>& g, int64_t row, int64_t dim) {
  for (int64_t d = 0; d < dim; ++d) {
    if (!std::isnan(g[row * dim + d])) return false;
  }
  return true;
}
bool AllFinite(const std::vector<double>& g, int64_t row, int64_t dim) {
  for (int64_t d = 0; d < dim; ++d) {
    if (!std::isfinite(g[row * dim + d])) return false;
  }
  return true;
}

// Lq = Lk = 4, window (left 1, right 0): row i sees keys i - 1 and i.
Tiny WindowCase() {
  Tiny t(Shape{1, 1, 1, 4, 4, 2, 2}, {1, 2, -1, 0.5f, 0.25f, 1, -2, 1},
         {0.5f, -1, 1, 1, -0.5f, 2, 1, 0}, {1, -1, 2, 0.5f, -2, 1, 3, 1},
         {1, 0.5f, -1, 2, 0.25f, 1, -0.5f, -1});
  t.p.mask.kind = MaskKind::kSlidingWindow;
  t.p.mask.window_left = 1;
  t.p.mask.window_right = 0;
  return t;
}

TEST(GradNaNTest, NaNInQRowReachesItsRowAndTheKeysItSees) {
  Tiny t = WindowCase();
  t.q[2 * 2 + 1] = NAN;  // row 2 sees keys 1, 2
  const GradResult g = t.Run();
  EXPECT_TRUE(AllNaN(g.dq, 2, 2));
  for (int64_t i : {0, 1, 3}) EXPECT_TRUE(AllFinite(g.dq, i, 2)) << "dQ row " << i;
  for (int64_t j : {1, 2}) EXPECT_TRUE(AllNaN(g.dk, j, 2) && AllNaN(g.dv, j, 2)) << "key " << j;
  for (int64_t j : {0, 3}) {
    EXPECT_TRUE(AllFinite(g.dk, j, 2) && AllFinite(g.dv, j, 2)) << "key " << j;
  }
}

TEST(GradNaNTest, NaNInKRowReachesTheRowsThatSeeIt) {
  Tiny t = WindowCase();
  t.k[1 * 2 + 0] = NAN;  // key 1, seen by rows 1 and 2 (which see keys 0..2)
  const GradResult g = t.Run();
  for (int64_t i : {1, 2}) EXPECT_TRUE(AllNaN(g.dq, i, 2)) << "dQ row " << i;
  for (int64_t i : {0, 3}) EXPECT_TRUE(AllFinite(g.dq, i, 2)) << "dQ row " << i;
  for (int64_t j : {0, 1, 2}) {
    EXPECT_TRUE(AllNaN(g.dk, j, 2) && AllNaN(g.dv, j, 2)) << "key " << j;
  }
  EXPECT_TRUE(AllFinite(g.dk, 3, 2) && AllFinite(g.dv, 3, 2));
}

TEST(GradNaNTest, NaNInVRowReachesDqAndDkButNotDv) {
  // dV = Pᵀ·dO never reads V: a NaN in v_1 reaches dP, so D and dS of rows 1
  // and 2, so their dQ and the dK of the keys they see (0..2), not dV.
  Tiny t = WindowCase();
  t.v[1 * 2 + 1] = NAN;
  const GradResult g = t.Run();
  for (int64_t i : {1, 2}) EXPECT_TRUE(AllNaN(g.dq, i, 2)) << "dQ row " << i;
  for (int64_t i : {0, 3}) EXPECT_TRUE(AllFinite(g.dq, i, 2)) << "dQ row " << i;
  for (int64_t j : {0, 1, 2}) EXPECT_TRUE(AllNaN(g.dk, j, 2)) << "dK " << j;
  EXPECT_TRUE(AllFinite(g.dk, 3, 2));
  for (int64_t j = 0; j < 4; ++j) EXPECT_TRUE(AllFinite(g.dv, j, 2)) << "dV " << j;
}

TEST(GradNaNTest, NaNIndOReachesItsRowAndTheKeysItSees) {
  Tiny t = WindowCase();
  t.d_o[3 * 2 + 0] = NAN;  // row 3 sees keys 2, 3
  const GradResult g = t.Run();
  EXPECT_TRUE(AllNaN(g.dq, 3, 2));
  for (int64_t i : {0, 1, 2}) EXPECT_TRUE(AllFinite(g.dq, i, 2)) << "dQ row " << i;
  for (int64_t j : {2, 3}) {
    EXPECT_TRUE(AllNaN(g.dk, j, 2)) << "dK " << j;
    EXPECT_TRUE(std::isnan(g.dv[j * 2 + 0]) && std::isfinite(g.dv[j * 2 + 1])) << "dV " << j;
  }
  for (int64_t j : {0, 1}) EXPECT_TRUE(AllFinite(g.dk, j, 2) && AllFinite(g.dv, j, 2));
}

TEST(GradNaNTest, HiddenKeysWithNaNReachNothing) {
  // Key lengths hide keys 2, 3 (NaN K and V) from every row; causal hides
  // key 1 from row 0.
  Tiny t = WindowCase();
  t.p.mask.kind = MaskKind::kCausal;
  const int32_t lens[] = {2};
  t.p.mask.key_lengths = lens;
  for (int64_t x = 2 * 2; x < 4 * 2; ++x) t.k[x] = t.v[x] = NAN;
  const GradResult g = t.Run();
  for (int64_t i = 0; i < 4; ++i) EXPECT_TRUE(AllFinite(g.dq, i, 2)) << "dQ row " << i;
  for (int64_t j = 0; j < 4; ++j) {
    EXPECT_TRUE(AllFinite(g.dk, j, 2) && AllFinite(g.dv, j, 2)) << "key " << j;
  }
  for (int64_t x = 2 * 2; x < 4 * 2; ++x) EXPECT_EQ(g.dk[x], 0.0);
  for (int64_t x = 2 * 2; x < 4 * 2; ++x) EXPECT_EQ(g.dv[x], 0.0);
}

TEST(GradNaNTest, AdditiveMinusInfKeyWithNaNValueStillReachesTheRow) {
  // P_01 = 0, but dS_01 = 0·(NaN - D) = NaN and D = Σ P·dP = NaN: the row's
  // dQ and every dK it touches are NaN; dV = Pᵀ·dO stays finite (0 for key 1).
  Tiny t(Shape{1, 1, 1, 1, 2, 1, 1}, {1}, {0.5f, 1}, {3, NAN}, {1});
  const float mask[] = {0.0f, -kInfF};
  t.p.mask.kind = MaskKind::kAdditive;
  t.p.mask.additive = mask;
  t.p.mask.additive_shape = {1, 1, 1, 2};
  const GradResult g = t.Run();
  EXPECT_TRUE(std::isnan(g.dq[0]));
  EXPECT_TRUE(std::isnan(g.dk[0]) && std::isnan(g.dk[1]));
  EXPECT_EQ(g.dv[0], 1.0);
  EXPECT_EQ(g.dv[1], 0.0);
}

TEST(GradNaNTest, PlusInfLogitMakesTheRowNaN) {
  Tiny t(Shape{1, 1, 1, 2, 2, 1, 1}, {1, 1}, {0.5f, 1}, {3, 2}, {1, 1});
  const float mask[] = {kInfF, 0.0f, 0.0f, 0.0f};
  t.p.mask.kind = MaskKind::kAdditive;
  t.p.mask.additive = mask;
  t.p.mask.additive_shape = {1, 1, 2, 2};
  const GradResult g = t.Run();
  EXPECT_TRUE(std::isnan(g.dq[0]));
  EXPECT_TRUE(std::isfinite(g.dq[1]));
  EXPECT_TRUE(std::isnan(g.dv[0]) && std::isnan(g.dv[1]));
}

// ---------------------------------------------------------- bound sanity

// A straightforward fp32 backward, written into the problem's dQ, dK, dV
// through their strides: P̂ = exp(Ŝ - l̂se) from the forward's lse, D from
// the forward's O (FlashAttention's form), running fp32 sums. `bug` plants
// one mistake.
enum class Bug { kNone, kDropKey, kNoDTerm, kNoScale, kWrongMask, kMaskOffByOne, kDqScaledTwice };

void Fp32Backward(const GradProblem& g, Bug bug) {
  const Problem& p = g.forward;
  const Shape& s = p.shape;
  const float scale = p.scale ? *p.scale : 1.0f / std::sqrt(float(s.head_dim));
  const int64_t group = s.heads / s.kv_heads;
  const int64_t dk = s.head_dim, dv = s.value_dim;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.kv_heads; ++h)
      for (int64_t j = 0; j < s.kv_len; ++j) {
        std::fill_n(testing::RowOf(g.dk, b, h, j), dk, 0.0f);
        std::fill_n(testing::RowOf(g.dv, b, h, j), dv, 0.0f);
      }
  std::vector<float> p_row(s.kv_len), dp_row(s.kv_len);
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h)
      for (int64_t i = 0; i < s.q_len; ++i) {
        const int64_t kvh = h / group;
        const float* q = testing::RowOf(p.q, b, h, i);
        const float* o = testing::RowOf(TensorRef<const void>{p.o.data, p.o.strides}, b, h, i);
        const float* go = testing::RowOf(g.d_o, b, h, i);
        const float* additive = testing::AdditiveRow(p, b, h, i);
        const float lse = p.lse[(b * s.heads + h) * s.q_len + i];
        float* gq = testing::RowOf(g.dq, b, h, i);
        std::fill_n(gq, dk, 0.0f);
        if (lse == -kInfF) continue;
        auto visible = [&](int64_t j) {
          if (bug == Bug::kWrongMask) return true;  // ignores the structural mask
          if (bug == Bug::kMaskOffByOne && j > 0 && KeyVisible(p, b, i, j - 1)) return true;
          if (bug == Bug::kDropKey && j == s.kv_len / 2) return false;
          return KeyVisible(p, b, i, j);
        };
        float big_d = 0;
        for (int64_t d = 0; d < dv; ++d) big_d += go[d] * o[d];
        if (bug == Bug::kNoDTerm) big_d = 0;
        for (int64_t j = 0; j < s.kv_len; ++j) {
          if (!visible(j)) continue;
          const float* k = testing::RowOf(p.k, b, kvh, j);
          const float* v = testing::RowOf(p.v, b, kvh, j);
          float dot = 0;
          for (int64_t d = 0; d < dk; ++d) dot += q[d] * k[d];
          const float score = dot * scale + (additive ? additive[j] : 0.0f);
          p_row[j] = std::exp(score - lse);
          float dp = 0;
          for (int64_t d = 0; d < dv; ++d) dp += go[d] * v[d];
          dp_row[j] = dp;
        }
        for (int64_t j = 0; j < s.kv_len; ++j) {
          if (!visible(j)) continue;
          const float ds = p_row[j] * (dp_row[j] - big_d);
          const float* k = testing::RowOf(p.k, b, kvh, j);
          float* gk = testing::RowOf(g.dk, b, kvh, j);
          float* gv = testing::RowOf(g.dv, b, kvh, j);
          const float ds_scaled = bug == Bug::kNoScale ? ds : ds * scale;
          for (int64_t d = 0; d < dk; ++d) {
            gq[d] += ds_scaled * k[d];
            gk[d] += ds_scaled * q[d];
          }
          for (int64_t d = 0; d < dv; ++d) gv[d] += p_row[j] * go[d];
        }
        if (bug == Bug::kDqScaledTwice) {
          for (int64_t d = 0; d < dk; ++d) gq[d] *= scale;
        }
      }
}

const char* BugName(Bug bug) {
  switch (bug) {
    case Bug::kNone:
      return "none";
    case Bug::kDropKey:
      return "drop one key";
    case Bug::kNoDTerm:
      return "no D term";
    case Bug::kNoScale:
      return "no scale";
    case Bug::kWrongMask:
      return "structural mask ignored";
    case Bug::kMaskOffByOne:
      return "one key past the mask";
    case Bug::kDqScaledTwice:
      return "dQ scaled twice";
  }
  return "?";
}

struct BoundCase {
  const char* name;
  testing::ProblemSpec spec;
};

BoundCase MakeBoundCase(const char* name, Shape shape, MaskKind mask, uint64_t seed) {
  BoundCase c{name, {}};
  c.spec.shape = shape;
  c.spec.mask = mask;
  c.spec.window_left = 40;
  c.spec.window_right = 8;
  c.spec.seed = seed;
  c.spec.row_pad = 2;
  return c;
}

void PrintTo(const BoundCase& c, std::ostream* os) { *os << c.name << " " << c.spec.Name(); }

class GradBoundTest : public ::testing::TestWithParam<BoundCase> {};

// One problem, its forward (naive), the reference gradients and their bounds,
// computed once; Check(bug) runs the fp32 backward with `bug` and compares.
class BoundCheck {
 public:
  explicit BoundCheck(const testing::ProblemSpec& spec) : data_(spec), grads_(data_) {
    EXPECT_TRUE(testing::RunForwardForGrad(data_).ok());
    grad_ = grads_.grad_problem();
    StatusOr<GradResult> want = Backward(grad_);
    EXPECT_TRUE(want.ok()) << want.status().ToString();
    if (want.ok()) want_ = *want;
    bounds_ = GradErrorBounds(grad_);
  }
  testing::Comparison Check(Bug bug) {
    grads_.Poison();
    Fp32Backward(grad_, bug);
    testing::Comparison c = testing::CompareGradients(grad_, want_, bounds_);
    if (const std::string where = grads_.PaddingWritten(); !where.empty()) {
      c.ok = false;
      c.first_failure = "wrote into the row padding at " + where;
    }
    return c;
  }

 private:
  testing::ProblemData data_;
  testing::GradData grads_;
  GradProblem grad_;
  GradResult want_;
  GradBounds bounds_;
};

TEST_P(GradBoundTest, HonestFp32PassesAndBugsFail) {
  const BoundCase& c = GetParam();
  SCOPED_TRACE("seed " + std::to_string(c.spec.seed) + " " + c.spec.Name());
  BoundCheck check(c.spec);
  const testing::Comparison honest = check.Check(Bug::kNone);
  EXPECT_TRUE(honest.ok) << honest.first_failure;
  std::printf("  %-24s honest: worst error/bound %.3g\n", c.name, honest.worst_bound_ratio);
  std::vector<Bug> bugs = {Bug::kDropKey, Bug::kNoDTerm, Bug::kNoScale, Bug::kDqScaledTwice};
  if (c.spec.mask == MaskKind::kCausal || c.spec.mask == MaskKind::kSlidingWindow) {
    bugs.push_back(Bug::kWrongMask);
    bugs.push_back(Bug::kMaskOffByOne);
  }
  for (Bug bug : bugs) {
    const testing::Comparison buggy = check.Check(bug);
    EXPECT_FALSE(buggy.ok) << BugName(bug) << " passed: worst error/bound "
                           << buggy.worst_bound_ratio;
    std::printf("  %-24s %s: worst error/bound %.3g, first %s\n", c.name, BugName(bug),
                buggy.worst_bound_ratio, buggy.first_failure.c_str());
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GradBoundTest,
    ::testing::Values(
        MakeBoundCase("mha_none_64", Shape{1, 2, 2, 64, 64, 32, 32}, MaskKind::kNone, 1),
        MakeBoundCase("gqa_causal_200x300", Shape{1, 4, 2, 200, 300, 64, 48}, MaskKind::kCausal, 2),
        MakeBoundCase("window_256", Shape{1, 2, 1, 256, 256, 64, 64}, MaskKind::kSlidingWindow, 3),
        MakeBoundCase("additive_128", Shape{1, 2, 2, 128, 128, 64, 64}, MaskKind::kAdditive, 4),
        MakeBoundCase("none_512", Shape{1, 1, 1, 512, 512, 64, 64}, MaskKind::kNone, 5)),
    [](const ::testing::TestParamInfo<BoundCase>& info) { return std::string(info.param.name); });

// An honest fp32 backward at a long sequence passes (errors grow like
// sqrt(n)·u, the bound like n·u). Slow (the O(N²·d) reference):
// ATTNLAB_GRAD_BOUND_N=16384 runs it at that N; unset, N = 1024.
TEST(GradBoundLongTest, HonestFp32PassesAtLongSequences) {
  const char* env = std::getenv("ATTNLAB_GRAD_BOUND_N");
  const int64_t n = env ? std::atoll(env) : 1024;
  testing::ProblemSpec spec;
  spec.shape = Shape{1, 1, 1, n, n, 64, 64};
  spec.seed = 9;
  const testing::Comparison c = BoundCheck(spec).Check(Bug::kNone);
  EXPECT_TRUE(c.ok) << c.first_failure;
  std::printf("  N=%lld honest: worst error/bound %.3g, max abs error %.3g\n", (long long)n,
              c.worst_bound_ratio, c.max_abs_error);
}

}  // namespace
}  // namespace attn::reference
