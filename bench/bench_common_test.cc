// The benchmark's element-type plumbing (bench/bench_common.h): the `dtype:`
// name token (docs/bench-json.md; the report parses it back), the bytes the
// counters count at element sizes, and the inputs: every type of a shape
// stores the same fp32 values, so a reduced type's time and error are
// against the same problem as the f32 case's.
#include "bench/bench_common.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/registry.h"

namespace attn::bench {
namespace {

constexpr DType kF32 = DType::kF32, kBF16 = DType::kBF16, kF16 = DType::kF16, kI8 = DType::kI8;

RunOptions OneThread() {
  RunOptions options;
  options.threads = 1;
  return options;
}

TEST(DTypeTokenTest, F32HasNoTokenSharedTypeOneNameMixedFour) {
  EXPECT_EQ(DTypeToken({}), "");
  EXPECT_EQ(DTypeToken({kBF16, kBF16, kBF16, kBF16}), "dtype:bf16");
  EXPECT_EQ(DTypeToken({kF16, kF16, kF16, kF16}), "dtype:f16");
  EXPECT_EQ(DTypeToken({kF32, kI8, kI8, kF32}), "dtype:f32-i8-i8-f32");
  EXPECT_EQ(DTypeToken({kBF16, kI8, kI8, kBF16}), "dtype:bf16-i8-i8-bf16");
  // Only O differs: still the four-type form (not "bf16").
  EXPECT_EQ(DTypeToken({kBF16, kBF16, kBF16, kF32}), "dtype:bf16-bf16-bf16-f32");
}

TEST(CaseNameTest, F32NamesUnchangedTypeTokenBeforeThreads) {
  Case c{Scenario::kSweep, 1, 8, 8, 4096, 4096, 64, true};
  c.threads = 2;
  EXPECT_EQ(c.Tokens(), "N:4096/d:64/causal:1/threads:2");
  c.dtypes = {kBF16, kBF16, kBF16, kBF16};
  EXPECT_EQ(c.Tokens(), "N:4096/d:64/causal:1/dtype:bf16/threads:2");

  Case d{Scenario::kDecode, 1, 32, 8, 1, 16384, 128, false};
  d.dtypes = {kF32, kI8, kI8, kF32};
  EXPECT_EQ(d.Tokens(), "decode/Lk:16384/d:128/Hkv:8/dtype:f32-i8-i8-f32/threads:1");
  d.heads_token = true;  // H = 32 is not the run's --heads: say so
  EXPECT_EQ(d.Tokens(), "decode/Lk:16384/d:128/H:32/Hkv:8/dtype:f32-i8-i8-f32/threads:1");
}

TEST(CaseNameTest, TypesShareValuesNotData) {
  Case f32{Scenario::kSweep, 1, 8, 8, 1024, 1024, 128, false};
  Case bf16 = f32;
  bf16.dtypes = {kBF16, kBF16, kBF16, kBF16};
  EXPECT_EQ(f32.ValuesKey(), bf16.ValuesKey());
  EXPECT_NE(f32.DataKey(), bf16.DataKey());
  EXPECT_NE(f32.CheckKey(), bf16.CheckKey());
}

TEST(BytesOfTest, ElementSizesAndInt8RowScales) {
  // B = 1, H = 4, Hkv = 2, Lq = 1, Lk = 100, d = 64.
  Case c{Scenario::kDecode, 1, 4, 2, 1, 100, 64, false};
  const double q = 4 * 64, kv_rows = 2 * 100, o = 4 * 64;
  TensorBytes b = BytesOf(c);
  EXPECT_DOUBLE_EQ(b.q, 4 * q);
  EXPECT_DOUBLE_EQ(b.k, 4 * kv_rows * 64);
  EXPECT_DOUBLE_EQ(b.total(), 4 * (q + 2 * kv_rows * 64 + o));

  c.dtypes = {kBF16, kBF16, kBF16, kBF16};
  b = BytesOf(c);
  EXPECT_DOUBLE_EQ(b.kv(), 2 * 2 * kv_rows * 64);
  EXPECT_DOUBLE_EQ(b.total(), 2 * (q + 2 * kv_rows * 64 + o));

  // int8 K and V: one byte per element and a 4-byte fp32 scale per row.
  c.dtypes = {kF32, kI8, kI8, kF32};
  b = BytesOf(c);
  EXPECT_DOUBLE_EQ(b.k, kv_rows * (64 + 4));
  EXPECT_DOUBLE_EQ(b.kv(), 2 * kv_rows * (64 + 4));
  EXPECT_DOUBLE_EQ(b.q, 4 * q);
  EXPECT_DOUBLE_EQ(b.o, 4 * o);
}

// The inputs of a reduced type are the f32 case's values, rounded (bf16) or
// quantized per row (int8, within half a step of the row's scale).
TEST(CaseDataTest, EveryTypeStoresTheF32Values) {
  Case c{Scenario::kSweep, 1, 2, 2, 37, 37, 24, true};
  const CaseData& f32_data = DataFor(c);
  const std::vector<float> q = f32_data.q;
  const std::vector<float> k(f32_data.k.begin(), f32_data.k.end());
  ASSERT_EQ(q.size(), size_t(2 * 37 * 24));

  c.dtypes = {kBF16, kI8, kI8, kBF16};
  const CaseData& data = DataFor(c);
  ASSERT_EQ(data.q_typed.size(), q.size() * 2);
  for (size_t i = 0; i < q.size(); ++i) {
    uint16_t bits;
    std::memcpy(&bits, &data.q_typed[2 * i], 2);
    ASSERT_EQ(bits, BF16BitsFromF32(q[i])) << "q[" << i << "]";
  }
  ASSERT_EQ(data.k_typed.size(), k.size());
  ASSERT_EQ(data.k_scales.size(), size_t(2 * 37));
  for (size_t row = 0; row < data.k_scales.size(); ++row) {
    const float scale = data.k_scales[row];
    for (int64_t x = 0; x < 24; ++x) {
      const size_t i = row * 24 + x;
      const float got = scale * float(static_cast<int8_t>(data.k_typed[i]));
      ASSERT_LE(std::abs(got - k[i]), 0.5f * scale * (1 + 1e-5f)) << "k[" << i << "]";
    }
  }
  EXPECT_EQ(data.problem.k.dtype, kI8);
  EXPECT_EQ(data.problem.o.dtype, kBF16);
  EXPECT_NE(data.problem.k_scales.data, nullptr);
  EXPECT_NE(data.problem.v_scales.data, nullptr);
  // Every variant that takes these types runs the problem as the bench made it.
  for (const Variant* v : Registry()) {
    if (!Takes(*v, c.dtypes)) continue;
    EXPECT_TRUE(Prepare(*v, data.problem, OneThread()).ok()) << v->name;
  }
  ReleaseData();
}

// The VmFlags line of the mapping that holds `p` (/proc/self/smaps), or "".
std::string VmFlagsOf(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  const auto at = reinterpret_cast<uintptr_t>(p);
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    uintptr_t lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2) {  // a mapping's first line
      inside = lo <= at && at < hi;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return "";
}

// A case's K and V (f32 and typed), a paged pool and the other big buffers
// are advised onto 2 MiB pages before their first touch (VmFlags "hg":
// MADV_HUGEPAGE), so that contiguous and paged decode read the same kind of
// page; Q is not (malloc's).
TEST(HugePageTest, CaseKAndVAreAdvisedOnto2MiBPages) {
  const int probe = 0;
  if (VmFlagsOf(&probe).empty()) GTEST_SKIP() << "no /proc/self/smaps VmFlags here";
  Case c{Scenario::kDecode, 1, 8, 2, 1, 4096, 128};
  const CaseData& f32 = DataFor(c);
  EXPECT_NE(VmFlagsOf(f32.k.data()).find(" hg"), std::string::npos) << VmFlagsOf(f32.k.data());
  EXPECT_NE(VmFlagsOf(f32.v.data()).find(" hg"), std::string::npos);
  EXPECT_EQ(VmFlagsOf(f32.q.data()).find(" hg"), std::string::npos);
  c.dtypes = {kBF16, kBF16, kBF16, kBF16};
  const CaseData& bf16 = DataFor(c);
  EXPECT_NE(VmFlagsOf(bf16.k_typed.data()).find(" hg"), std::string::npos);
  c.dtypes = {};
  c.scenario = Scenario::kPaged;
  c.block_size = 16;
  const CaseData& paged = DataFor(c);
  EXPECT_NE(VmFlagsOf(paged.pools.k.data()).find(" hg"), std::string::npos);
  EXPECT_EQ(paged.problem.k.data, paged.pools.k.data());
  ReleaseData();
}

TEST(PrecisionDTypesTest, F32FirstDistinctTokens) {
  const std::vector<DTypes>& list = PrecisionDTypes();
  ASSERT_FALSE(list.empty());
  EXPECT_TRUE(AllF32(list[0]));
  std::set<std::string> tokens;
  for (const DTypes& t : list) tokens.insert(DTypeToken(t));
  EXPECT_EQ(tokens.size(), list.size());
}

TEST(TakesTest, AgreesWithPrepare) {
  Case c{Scenario::kSweep, 1, 1, 1, 8, 8, 16, false};
  for (const DTypes& t : PrecisionDTypes()) {
    c.dtypes = t;
    const CaseData& data = DataFor(c);
    for (const Variant* v : Registry()) {
      const Status s = Prepare(*v, data.problem, OneThread()).status();
      EXPECT_EQ(Takes(*v, t), s.code() != StatusCode::kUnimplemented)
          << v->name << " " << Describe(t) << ": " << s.ToString();
    }
  }
  ReleaseData();
}

}  // namespace
}  // namespace attn::bench
