// Every invalid problem gets InvalidArgument with a message that names the
// field and its value. One row per way of getting the description wrong.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "kernels/internal/bytes.h"
#include "kernels/registry.h"

namespace attn {
namespace {

// A valid B=2 H=4 Hkv=2 Lq=5 Lk=6 dk=8 dv=4 problem over owned buffers.
struct Buffers {
  Shape shape{2, 4, 2, 5, 6, 8, 4};
  std::vector<float> q, k, v, o, lse, weights, mask, scales;
  std::vector<int32_t> lens{6, 3};
  Problem p;
  Buffers() {
    q.assign(2 * 4 * 5 * 8, 0.5f);
    k.assign(2 * 2 * 6 * 8, 0.5f);
    v.assign(2 * 2 * 6 * 4, 0.5f);
    o.assign(2 * 4 * 5 * 4, 0.0f);
    lse.assign(2 * 4 * 5, 0.0f);
    weights.assign(2 * 4 * 5 * 6, 0.0f);
    mask.assign(5 * 6, 0.0f);
    scales.assign(2 * 2 * 6, 1.0f);
    p = MakeProblem(shape, q.data(), k.data(), v.data(), o.data());
  }
  // An additive mask over `mask` that claims the given shape.
  void SetAdditive(AdditiveMaskShape claimed) {
    p.mask.kind = MaskKind::kAdditive;
    p.mask.additive = mask;
    p.mask.additive_shape = claimed;
  }
};

struct InvalidCase {
  const char* name;
  std::function<void(Buffers&)> mutate;
  const char* message;  // must appear in the error
};

const std::vector<InvalidCase>& Cases() {
  static const std::vector<InvalidCase> cases = {
      {"NullQ", [](Buffers& b) { b.p.q.data = nullptr; }, "Q is null"},
      {"NullK", [](Buffers& b) { b.p.k.data = nullptr; }, "K is null"},
      {"NullV", [](Buffers& b) { b.p.v.data = nullptr; }, "V is null"},
      {"NullO", [](Buffers& b) { b.p.o.data = nullptr; }, "O is null"},
      {"ZeroBatch", [](Buffers& b) { b.p.shape.batch = 0; }, "B=0 must be >= 1"},
      {"NegativeHeads", [](Buffers& b) { b.p.shape.heads = -4; }, "H=-4 must be >= 1"},
      {"ZeroKvHeads", [](Buffers& b) { b.p.shape.kv_heads = 0; }, "Hkv=0 must be >= 1"},
      {"NegativeLq", [](Buffers& b) { b.p.shape.q_len = -1; }, "Lq=-1 must be >= 0"},
      {"NegativeLk", [](Buffers& b) { b.p.shape.kv_len = -2; }, "Lk=-2 must be >= 0"},
      {"ZeroHeadDim", [](Buffers& b) { b.p.shape.head_dim = 0; }, "dk=0 must be >= 1"},
      {"ZeroValueDim", [](Buffers& b) { b.p.shape.value_dim = 0; }, "dv=0 must be >= 1"},
      {"HkvDoesNotDivideH", [](Buffers& b) { b.p.shape.kv_heads = 3; },
       "Hkv=3 does not divide H=4"},
      {"DimensionOverTheCap", [](Buffers& b) { b.p.shape.head_dim = (int64_t{1} << 48) + 1; },
       "dk=281474976710657 must be <= 2^48"},
      // Issue 21: K and V of row stride 0 span dk floats whatever Lk is, so
      // their extents fit, but every variant derives sizes from Lk·dk (simd's
      // packed K wrapped to 64 bytes and the kernel ran off its scratch).
      {"StrideZeroKeysOverTheElementCap",
       [](Buffers& b) {
         b.p.shape = Shape{1, 1, 1, 5, int64_t{1} << 47, 56, 4};
         b.p.k.strides = b.p.v.strides = {0, 0, 0, 1};
         b.p.q.strides = Strides::BHLD(1, 5, 56);
         b.p.o.strides = Strides::BHLD(1, 5, 4);
       },
       "K is [1, 1, 140737488355328, 56]: 7.88e+15 elements, more than the 2^48"},
      {"NonUnitInnerStrideQ", [](Buffers& b) { b.p.q.strides.elem = 2; },
       "Q.strides.elem=2 must be 1"},
      {"NonUnitInnerStrideO", [](Buffers& b) { b.p.o.strides.elem = 0; },
       "O.strides.elem=0 must be 1"},
      {"NegativeStride", [](Buffers& b) { b.p.k.strides.row = -8; },
       "K.strides.row=-8 must be >= 0"},
      {"OutputOverlapsItself", [](Buffers& b) { b.p.o.strides.row = 2; }, "makes O overlap itself"},
      {"OutputOverlapsQ", [](Buffers& b) { b.p.o.data = b.q.data() + 4; },
       "output O overlaps input Q"},
      {"OutputOverlapsV", [](Buffers& b) { b.p.o.data = b.v.data(); }, "output O overlaps input V"},
      {"LseOverlapsO", [](Buffers& b) { b.p.lse = std::span<float>(b.o.data() + 1, b.lse.size()); },
       "output O overlaps output lse"},
      {"LseWrongSize", [](Buffers& b) { b.p.lse = std::span<float>(b.lse.data(), 3); },
       "lse has 3 elements, needs B*H*Lq=40"},
      {"WeightsWrongSize", [](Buffers& b) { b.p.weights = std::span<float>(b.weights.data(), 7); },
       "weights has 7 elements, needs B*H*Lq*Lk=240"},
      {"NegativeWindowLeft",
       [](Buffers& b) {
         b.p.mask.kind = MaskKind::kSlidingWindow;
         b.p.mask.window_left = -1;
       },
       "window_left=-1 must be >= 0"},
      {"NegativeWindowRight",
       [](Buffers& b) {
         b.p.mask.kind = MaskKind::kSlidingWindow;
         b.p.mask.window_right = -3;
       },
       "window_right=-3 must be >= 0"},
      {"AdditiveMaskNull",
       [](Buffers& b) {
         b.p.mask.kind = MaskKind::kAdditive;
         b.p.mask.additive_shape = {1, 1, 5, 6};
       },
       "additive mask is null"},
      {"AdditiveMaskWrongRows",
       [](Buffers& b) {
         b.SetAdditive({1, 1, 6, 5});
       },
       "additive mask is [6, 5], needs [Lq, Lk] = [5, 6]"},
      {"AdditiveMaskWrongBatch",
       [](Buffers& b) {
         b.SetAdditive({3, 1, 5, 6});
       },
       "additive mask batch=3 must be 1 (broadcast) or B=2"},
      {"AdditiveMaskWrongHeads",
       [](Buffers& b) {
         b.SetAdditive({1, 2, 5, 6});
       },
       "additive mask heads=2 must be 1 (broadcast) or H=4"},
      {"AdditiveMaskTooFewElements",
       [](Buffers& b) {
         b.SetAdditive({2, 4, 5, 6});
       },
       "additive mask has 30 elements"},
      {"KeyLengthsWrongCount",
       [](Buffers& b) { b.p.mask.key_lengths = std::span<const int32_t>(b.lens.data(), 1); },
       "key_lengths has 1 entries, needs B=2"},
      // An empty array is not "no key lengths" (that is std::nullopt).
      {"KeyLengthsEmpty", [](Buffers& b) { b.p.mask.key_lengths = std::span<const int32_t>(); },
       "key_lengths has 0 entries, needs B=2"},
      {"KeyLengthAboveLk",
       [](Buffers& b) {
         b.lens[1] = 7;
         b.p.mask.key_lengths = b.lens;
       },
       "key_lengths[1]=7 is outside [0, Lk=6]"},
      {"KeyLengthNegative",
       [](Buffers& b) {
         b.lens[0] = -1;
         b.p.mask.key_lengths = b.lens;
       },
       "key_lengths[0]=-1 is outside [0, Lk=6]"},
      {"ScaleNaN", [](Buffers& b) { b.p.scale = std::nanf(""); }, "must be finite"},
      {"ScaleInf", [](Buffers& b) { b.p.scale = std::numeric_limits<float>::infinity(); },
       "must be finite"},
      {"ElementCountOverflows",
       [](Buffers& b) {
         b.p.shape.q_len = int64_t{1} << 40;
         b.p.q.strides = Strides::BHLD(4, int64_t{1} << 40, 8);
         b.p.q.strides.batch = int64_t{1} << 62;
       },
       "Q spans more elements than int64 can index"},
      {"ScoreCountOverflows",
       [](Buffers& b) {
         b.p.shape.q_len = int64_t{1} << 31;
         b.p.shape.kv_len = int64_t{1} << 31;
         b.p.q.strides = {0, 0, 0, 1};
         b.p.k.strides = {0, 0, 0, 1};
         b.p.v.strides = {0, 0, 0, 1};
         b.p.o.strides = Strides::BHLD(4, int64_t{1} << 31, 4);
         b.p.o.data = nullptr;
       },
       "O is null"},
      {"ScoresOverflowInt64",
       [](Buffers& b) {
         b.p.shape.batch = 1;
         b.p.shape.heads = 2;
         b.p.shape.kv_heads = 2;
         b.p.shape.q_len = int64_t{1} << 31;
         b.p.shape.kv_len = int64_t{1} << 31;
         // Broadcast inputs and an O that is big on paper only.
         b.p.q.strides = {0, 0, 0, 1};
         b.p.k.strides = {0, 0, 0, 1};
         b.p.v.strides = {0, 0, 0, 1};
         b.p.o.strides = {0, int64_t{1} << 33, 4, 1};
       },
       "B*H*Lq*Lk overflows int64"},
      // More sizes, strides and overlaps (issue 7).
      {"ZeroHeads", [](Buffers& b) { b.p.shape.heads = 0; }, "H=0 must be >= 1"},
      {"NegativeValueDim", [](Buffers& b) { b.p.shape.value_dim = -1; }, "dv=-1 must be >= 1"},
      {"NonUnitInnerStrideK", [](Buffers& b) { b.p.k.strides.elem = 0; },
       "K.strides.elem=0 must be 1"},
      {"NonUnitInnerStrideV", [](Buffers& b) { b.p.v.strides.elem = -1; },
       "V.strides.elem=-1 must be 1"},
      {"NegativeHeadStrideV", [](Buffers& b) { b.p.v.strides.head = -1; },
       "V.strides.head=-1 must be >= 0"},
      {"NegativeBatchStrideO", [](Buffers& b) { b.p.o.strides.batch = -80; },
       "O.strides.batch=-80 must be >= 0"},
      {"OutputHeadsBroadcast", [](Buffers& b) { b.p.o.strides.head = 0; },
       "O.strides.head=0 makes O overlap itself"},
      {"KSpansOverflow", [](Buffers& b) { b.p.k.strides.head = int64_t{1} << 62; },
       "K spans more elements than int64"},
      {"ScaleMinusInf", [](Buffers& b) { b.p.scale = -std::numeric_limits<float>::infinity(); },
       "must be finite"},
      {"LseNullWithSize",
       [](Buffers& b) { b.p.lse = std::span<float>(static_cast<float*>(nullptr), 40); },
       "lse is null but has 40 elements"},
      {"WeightsNullWithSize",
       [](Buffers& b) { b.p.weights = std::span<float>(static_cast<float*>(nullptr), 240); },
       "weights is null but has 240 elements"},
      {"LseOverlapsQ", [](Buffers& b) { b.p.lse = std::span<float>(b.q.data() + 100, 40); },
       "output lse overlaps input Q"},
      // Inside K's own buffer (K grown to hold it): a span past K's end ran
      // into whichever heap block came next, and the error named that.
      {"WeightsOverlapsK",
       [](Buffers& b) {
         b.k.resize(240);
         b.p.k.data = b.k.data();
         b.p.weights = std::span<float>(b.k.data(), 240);
       },
       "output weights overlaps input K"},
      {"LseOverlapsWeights",
       [](Buffers& b) {
         b.p.weights = b.weights;
         b.p.lse = std::span<float>(b.weights.data() + 200, 40);
       },
       "output lse overlaps output weights"},
      {"OutputOverlapsAdditiveMask",
       [](Buffers& b) {
         b.p.mask.kind = MaskKind::kAdditive;
         b.p.mask.additive_shape = {1, 1, 5, 6};
         b.p.mask.additive = std::span<const float>(b.o.data() + 150, 30);
       },
       "output O overlaps input additive mask"},
      {"OutputOverlapsKeyLengths",
       [](Buffers& b) {
         b.p.mask.key_lengths =
             std::span<const int32_t>(reinterpret_cast<const int32_t*>(b.o.data()) + 3, 2);
         b.o[3] = 0.0f;  // key lengths 0, 0: valid values, bad placement
         b.o[4] = 0.0f;
       },
       "output O overlaps input key_lengths"},
      {"AdditiveMaskTooManyElements",
       [](Buffers& b) {
         b.mask.resize(31);
         b.SetAdditive({1, 1, 5, 6});
       },
       "additive mask has 31 elements, its shape [1, 1, 5, 6] needs 30"},
      {"AdditiveMaskZeroHeads",
       [](Buffers& b) {
         b.SetAdditive({1, 0, 5, 6});
       },
       "additive mask heads=0 must be 1 (broadcast) or H=4"},
      // Element types (kernels/dtype.h).
      {"QInt8", [](Buffers& b) { b.p.q.dtype = DType::kI8; },
       "dtype: Q=i8 is not supported (int8 is for K and V, with row scales)"},
      {"OInt8", [](Buffers& b) { b.p.o.dtype = DType::kI8; }, "dtype: O=i8 is not supported"},
      {"KInt8WithoutScales", [](Buffers& b) { b.p.k.dtype = DType::kI8; },
       "dtype: K=i8 needs k_scales (one fp32 scale per row)"},
      {"VScalesWithoutInt8",
       [](Buffers& b) {
         b.p.v_scales = {b.scales.data(), Strides::BHLD(2, 6, 1)};
       },
       "v_scales is set but V is f32, not i8"},
      {"UnknownDType", [](Buffers& b) { b.p.v.dtype = static_cast<DType>(9); },
       "dtype: V has dtype 9, not a DType"},
      {"MisalignedBF16",
       [](Buffers& b) {
         b.p.k.dtype = DType::kBF16;
         b.p.k.data = reinterpret_cast<const char*>(b.k.data()) + 1;
       },
       "K is not aligned to its 2-byte elements"},
      {"NegativeScaleStride",
       [](Buffers& b) {
         b.p.k.dtype = DType::kI8;
         b.p.k_scales = {b.scales.data(), {12, 6, -1, 1}};
       },
       "k_scales.strides.row=-1 must be >= 0"},
      {"OutputOverlapsScales",
       [](Buffers& b) {
         b.p.v.dtype = DType::kI8;
         b.p.v_scales = {b.o.data(), Strides::BHLD(2, 6, 1)};
       },
       "output O overlaps input v_scales"},
      {"UnknownMaskKind", [](Buffers& b) { b.p.mask.kind = static_cast<MaskKind>(42); },
       "mask kind 42 is not a MaskKind"},
  };
  return cases;
}

void PrintTo(const InvalidCase& c, std::ostream* os) { *os << c.name; }

class InvalidProblemTest : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(InvalidProblemTest, IsRejectedWithANamedError) {
  Buffers b;
  ASSERT_TRUE(Validate(b.p).ok()) << "the base problem must be valid";
  GetParam().mutate(b);
  const auto result = Validate(b.p);
  ASSERT_FALSE(result.ok()) << GetParam().name << " was accepted";
  EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(result.status().message().find(GetParam().message), std::string::npos)
      << "got: " << result.status().message() << "\nwant substring: " << GetParam().message;
  // Every registry variant refuses it the same way, before running.
  for (const Variant* v : Registry()) {
    const Status s = attn::Run(*v, b.p);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << v->name;
  }
}

INSTANTIATE_TEST_SUITE_P(Validation, InvalidProblemTest, ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return std::string(info.param.name); });

// Run options are checked too: a thread count OpenMP would try to honour
// (creating a million threads) is refused before any kernel runs.
TEST(ValidationTest, BadThreadCountsAreInvalidArgument) {
  Buffers b;
  for (int threads : {-1, kMaxThreads + 1, 1 << 30}) {
    for (const Variant* v : Registry()) {
      RunOptions options;
      options.threads = threads;
      const Status s = attn::Run(*v, b.p, options);
      EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << v->name << " threads=" << threads;
      EXPECT_NE(s.message().find("threads=" + std::to_string(threads) + " must be in [0, 1024]"),
                std::string::npos)
          << s.message();
    }
  }
}

// The exact problem of issue 21 (Lq = 8, Lk = 2^56, dk = 56, K/V row stride
// 0): every variant refuses it before allocating; simd declared 64 bytes of
// workspace and crashed.
TEST(ValidationTest, StrideZeroKeysWithHugeLkAreRefusedByEveryVariant) {
  std::vector<float> q(8 * 56, 0.5f), kv(56, 0.5f), o(8 * 56);
  Problem p = MakeProblem(Shape{1, 1, 1, 8, int64_t{1} << 56, 56, 56}, q.data(), kv.data(),
                          kv.data(), o.data());
  p.k.strides = p.v.strides = {0, 0, 0, 1};
  for (const Variant* v : Registry()) {
    const Status s = attn::Run(*v, p);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << v->name << ": " << s.ToString();
    EXPECT_NE(s.message().find("Lk=72057594037927936 must be <= 2^48"), std::string::npos)
        << s.message();
  }
}

// Q and O interleaved in one [B, H, L, 2, d] buffer share no element, though
// their bounding boxes overlap: valid (issue 21: refused before), and every
// variant computes the right O there. Shifting O by a few floats or by its
// width (onto the next row's Q) makes them share elements: refused.
TEST(ValidationTest, InterleavedQAndOAreDisjointAndRun) {
  const Shape shape{2, 4, 2, 5, 6, 8, 8};
  Buffers b;                                          // K, V as usual
  std::vector<float> packed(2 * 4 * 5 * 2 * 8 + 16);  // + slack for the shifted O below
  for (size_t x = 0; x < packed.size(); ++x) packed[x] = 0.01f * float(x % 97);
  const Strides st{4 * 5 * 16, 5 * 16, 16, 1};  // [B, H, L, 2, d]
  Problem p = MakeProblem(shape, packed.data(), b.k.data(), b.v.data(), packed.data() + 8);
  p.q.strides = st;
  p.o.strides = st;
  b.v.assign(2 * 2 * 6 * 8, 0.25f);
  p.v = {b.v.data(), Strides::BHLD(2, 6, 8)};
  ASSERT_TRUE(Validate(p).ok()) << Validate(p).status().ToString();
  // Every variant, against the same problem with O in its own buffer.
  std::vector<float> separate(2 * 4 * 5 * 8);
  Problem reference = p;
  reference.o = {separate.data(), Strides::BHLD(4, 5, 8)};
  ASSERT_TRUE(attn::Run("naive", reference).ok());
  for (const Variant* v : Registry()) {
    const Status s = attn::Run(*v, p);
    ASSERT_TRUE(s.ok()) << v->name << ": " << s.ToString();
    for (int64_t bh = 0; bh < 8; ++bh)
      for (int64_t i = 0; i < 5; ++i)
        for (int64_t d = 0; d < 8; ++d) {
          ASSERT_NEAR(packed[(bh * 5 + i) * 16 + 8 + d], separate[(bh * 5 + i) * 8 + d], 1e-5)
              << v->name;
        }
  }
  for (int64_t shift : {4, 7, 8}) {  // O starts that many floats into the next row's Q
    Problem bad = p;
    bad.o.data = packed.data() + 8 + shift;
    const auto s = Validate(bad);
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument) << "shift " << shift;
    EXPECT_NE(s.status().message().find("output O overlaps input Q"), std::string::npos)
        << s.status().message();
  }
}

TEST(ParseBytesTest, AcceptsByteCountsAndRefusesTheRest) {
  EXPECT_EQ(ParseBytes("4096"), size_t{4096});
  EXPECT_EQ(ParseBytes("512M"), size_t{512} << 20);
  EXPECT_EQ(ParseBytes("1.5K"), size_t{1536});
  EXPECT_EQ(ParseBytes(".5KiB"), size_t{512});
  EXPECT_EQ(ParseBytes("15T"), size_t{15} << 40);
  // Issue 21: "1.5.3G" was read as 1.5G; 2^64 bytes and more became 0.
  for (const char* bad : {"", ".", "1.5.3G", "12X", "1e3", "-1", "12 G", "16777216T",
                          "18446744073709551616", "18446744073709551615"}) {
    EXPECT_EQ(ParseBytes(bad), std::nullopt) << "'" << bad << "'";
  }
}

TEST(ParseBytesTest, ABadBudgetVariableIsReportedOncePerProcess) {
  ASSERT_EQ(setenv("ATTNLAB_MEMORY_BUDGET", "1.5.3G", 1), 0);
  ::testing::internal::CaptureStderr();
  for (int i = 0; i < 3; ++i) EXPECT_GT(DefaultMemoryBudgetBytes(), size_t{1} << 20);
  const std::string err = ::testing::internal::GetCapturedStderr();
  unsetenv("ATTNLAB_MEMORY_BUDGET");
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  EXPECT_NE(err.find("ignoring ATTNLAB_MEMORY_BUDGET=1.5.3G"), std::string::npos) << err;
}

TEST(ValidationTest, UnknownVariantNameIsNotFound) {
  Buffers b;
  const Status s = attn::Run("flash_v9", b.p);
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find("unknown variant 'flash_v9'; known: " + VariantNames()),
            std::string::npos)
      << s.message();
}

TEST(ValidationTest, DefaultScaleIsOneOverSqrtDk) {
  Buffers b;
  const auto v = Validate(b.p);
  ASSERT_TRUE(v.ok());
  EXPECT_FLOAT_EQ(v->scale, 1.0f / std::sqrt(8.0f));
}

TEST(ValidationTest, EmptyQueryAndKeyLengthsAreLegal) {
  Buffers b;
  b.p.shape.q_len = 0;
  EXPECT_TRUE(Validate(b.p).ok());
  Buffers c;
  c.p.shape.kv_len = 0;
  c.p.k.strides = Strides::BHLD(2, 0, 8);
  c.p.v.strides = Strides::BHLD(2, 0, 4);
  EXPECT_TRUE(Validate(c.p).ok());
}

TEST(ValidationTest, BLHDLayoutIsValid) {
  Buffers b;
  b.p = MakeProblem(b.shape, b.q.data(), b.k.data(), b.v.data(), b.o.data(), Layout::kBLHD);
  EXPECT_TRUE(Validate(b.p).ok());
}

TEST(ValidationTest, MaterializingVariantsRefuseOverBudgetBeforeAllocating) {
  Buffers b;
  for (const Variant* v : Registry()) {
    RunOptions options;
    options.memory_budget_bytes = 16;  // far below any score matrix
    const Status s = attn::Run(*v, b.p, options);
    if (v->materializes_scores) {
      EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << v->name;
      EXPECT_NE(s.message().find("of scores, budget 16 B"), std::string::npos) << s.message();
    }
  }
}

// A variant refuses element types it does not take by naming them and what
// it takes (registry Prepare), before anything runs.
TEST(ValidationTest, UnsupportedElementTypesAreUnimplementedAndNamed) {
  Variant f32_only = *Registry()[0];
  f32_only.name = "f32only";
  f32_only.dtypes = {};
  Buffers b;
  b.p.k.dtype = b.p.v.dtype = DType::kBF16;
  b.p.o.dtype = DType::kF16;
  const Status s = attn::Run(f32_only, b.p);
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("dtype: Q=f32 K=bf16 V=bf16 O=f16 is not supported by variant "
                             "f32only (it takes Q f32; K, V f32; O f32)"),
            std::string::npos)
      << s.message();
}

TEST(ValidationTest, WeightsFromANonMaterializingVariantAreUnimplemented) {
  Buffers b;
  b.p.weights = b.weights;
  for (const Variant* v : Registry()) {
    const Status s = attn::Run(*v, b.p);
    if (v->supports_weights) {
      EXPECT_TRUE(s.ok()) << v->name << ": " << s.ToString();
    } else {
      EXPECT_EQ(s.code(), StatusCode::kUnimplemented) << v->name;
    }
  }
}

}  // namespace
}  // namespace attn
