// Every variant at Lk = 2^25 keys, past where a running fp32 sum stops
// growing (2^24 + 1 rounds back to 2^24), against the fp64 reference with a
// bound that can tell (issue 21).
//
// The case: equal scores (K rows all the same: row stride 0), V = 1 at every
// 4th key and 0 elsewhere, so O = 1/4 exactly. naive's running denominator
// saturated at 2^24 while its numerator (2^23) did not: O = 0.5, a 100% error
// that `attnlab check` called "ok", because the worst-case bound of a running
// sum at this Lk (2·Lk·u = 4 times Vmax) exceeded |O|. Every variant now sums
// keys in blocks (kernels/problem.h, "Accumulation") and the bound is the
// blocked one (reference/error_bound.h): ~0.006·Vmax here. Also V = 1 at
// every key (O = 1): there the numerator is the running sum that saturates,
// in P·V kernels that accumulated onto O key by key (simd's PVTile, flash's
// P·V across tiles) while their denominator was blocked: O = 0.5.
//
// Two value widths: dv = 1 (V contiguous: scalar column paths, flash's padded
// V tile) and dv = 16 (one AVX-512 vector: the vector P·V kernels), whose V
// is a single Lk + 15 float buffer read with row stride 1 (row j is
// v[j .. j+16), so every column is again 1 at every 4th key). Lq = 1 runs
// every variant's decode path; 16 query rows (past flash's few-row limit of
// 8) run flash's tile path (the variants whose workspace grows with Lq·Lk
// skip it: 2 GiB of scores).
// About 130 MiB per buffer; a few seconds in all. Under ASan (the asan ctest
// preset) each case takes 30-45 s: that preset runs dv = 16 with V = 1 at
// every key only (both Lq, every variant; memory safety at 2^25 keys), the
// release suite runs them all (the arithmetic).
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/internal/bytes.h"
#include "kernels/registry.h"
#include "reference/error_bound.h"
#include "reference/reference.h"
#include "testing/compare.h"

namespace attn {
namespace {

constexpr int64_t kLk = int64_t{1} << 25;
constexpr int64_t kDk = 4;  // scores are not the subject: keep the fp64 work small

// Q rows (all alike, so one reference row serves every row), K (one row,
// read with row stride 0), V (row stride 1) for value width dv, and the fp64
// reference of one query row with its derived bound: computed once per dv
// (each is ~1 s of scalar double work over 2^25 keys).
struct Inputs {
  Inputs(int64_t dv, int every) : dv(dv), v(kLk + dv - 1) {
    for (int64_t x = 0; x < kDk; ++x) {
      q_row[x] = 0.01f * float(x % 7);
      k[x] = 0.5f - 0.03f * float(x);
    }
    for (int64_t x = 0; x < int64_t(v.size()); ++x) v[x] = x % every == 0 ? 1.0f : 0.0f;
    std::vector<float> o(dv);
    const Problem one_row = MakeProblem(1, q_row, o.data());
    auto ref = reference::Attention(one_row);
    EXPECT_TRUE(ref.ok()) << ref.status().ToString();
    if (ref.ok()) want = *ref;
    bound = reference::ErrorBound(one_row, 0, 0, 0);
  }
  // Lq query rows (all q_row) over these K and V, writing o.
  Problem MakeProblem(int64_t lq, const float* q, float* o) const {
    Problem p = attn::MakeProblem(Shape{1, 1, 1, lq, kLk, kDk, dv}, q, k, v.data(), o);
    p.k.strides = {0, 0, 0, 1};  // every key row is k
    p.v.strides = {0, 0, 1, 1};  // row j = v[j .. j + dv)
    return p;
  }
  // V = 1 at every `every`-th key (1 or 4).
  // Built on first use: ctest runs each case in its own process.
  static const Inputs& For(int64_t dv, int every) {
    static std::map<std::pair<int64_t, int>, std::unique_ptr<Inputs>> cache;
    auto& slot = cache[{dv, every}];
    if (!slot) slot = std::make_unique<Inputs>(dv, every);
    return *slot;
  }
  int64_t dv;
  float q_row[kDk];
  float k[kDk];
  std::vector<float> v;
  reference::Result want;
  reference::RowBound bound;
};

struct LargeKvCase {
  const Variant* variant;
  int64_t dv;
  int64_t q_len;
  int every;  // V = 1 at every `every`-th key: O = 1 / every
};

class LargeKvTest : public ::testing::TestWithParam<LargeKvCase> {};

TEST_P(LargeKvTest, EqualScoresOverTwoToThe25KeysAverageV) {
  const LargeKvCase& c = GetParam();
  const int64_t dv = c.dv, lq = c.q_len;
  std::vector<float> q(lq * kDk), o(lq * dv, std::nanf("")), lse(lq);
  {  // The workspace first (Prepare reads no data), before building inputs.
    Problem shape_only =
        MakeProblem(Shape{1, 1, 1, lq, kLk, kDk, dv}, q.data(), q.data(), q.data(), o.data());
    shape_only.k.strides = shape_only.v.strides = {0, 0, 0, 1};
    auto prepared = Prepare(*c.variant, shape_only);
    ASSERT_TRUE(prepared.ok()) << prepared.status().ToString();
    const size_t workspace = c.variant->workspace_bytes(*prepared, ResolveThreads(0));
    if (workspace > (size_t{512} << 20)) {
      GTEST_SKIP() << c.variant->name << " needs " << FormatBytes(double(workspace))
                   << " of workspace at Lq = " << lq << ", Lk = 2^25";
    }
  }
  const Inputs& in = Inputs::For(c.dv, c.every);
  for (int64_t i = 0; i < lq; ++i) std::copy(in.q_row, in.q_row + kDk, q.begin() + i * kDk);
  Problem p = in.MakeProblem(lq, q.data(), o.data());
  p.lse = lse;
  const Status s = attn::Run(*c.variant, p);
  ASSERT_TRUE(s.ok()) << s.ToString();

  // Informative: a 20% error must fail it (the running-sum bound was 16).
  ASSERT_LT(in.bound.o, 0.05) << "the derived bound says nothing at Lk = 2^25";
  for (int64_t d = 0; d < dv; ++d) ASSERT_EQ(in.want.o[d], 1.0 / c.every);
  // Every row is the one reference row.
  reference::Comparison cmp;
  for (int64_t i = 0; i < lq; ++i) testing::CompareRow(p, 0, 0, i, in.want, 0, in.bound, cmp);
  EXPECT_TRUE(cmp.ok) << c.variant->name << ": " << cmp.first_failure;
}

std::vector<LargeKvCase> Cases() {
  std::vector<LargeKvCase> cases;
  for (const Variant* v : Registry()) {
    for (int64_t dv : {1, 16}) {
      for (int64_t lq : {1, 16})
        for (int every : {4, 1}) cases.push_back({v, dv, lq, every});
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Variants, LargeKvTest, ::testing::ValuesIn(Cases()), [](const auto& info) {
  return std::string(info.param.variant->name) + "_dv" + std::to_string(info.param.dv) + "_Lq" +
         std::to_string(info.param.q_len) + "_VEvery" + std::to_string(info.param.every);
});

}  // namespace
}  // namespace attn
