// Paged K/V caches (kernels/problem.h, "Paged K/V"; vLLM's block pool and
// block table): every variant that reads one (Variant::paged_kv) matches the
// fp64 reference, which reads the pool through the table on its own, for
// block sizes from 1 to 128 with blocks shuffled through the pool and shared
// between sequences, decode and prefill, GQA, every structural mask, key
// lengths of 0 and 1, score modifiers (paged + window + sinks), chunked
// prefill with each batch's diagonal at its key length, and every
// element type (flash reads the pool run by run inside its usual Bc-key
// tiles, so its P·V sums in another association than on a contiguous cache:
// within the bound, not bit for bit); the other variants refuse with Unimplemented naming the
// feature; Validate names every bad field.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "hwy/targets.h"
#include "kernels/internal/flash_plan.h"
#include "kernels/internal/read_ahead.h"
#include "kernels/registry.h"
#include "kernels/tuning.h"
#include "reference/reference.h"
#include "testing/compare.h"
#include "testing/flash_hooks.h"
#include "testing/grad_data.h"
#include "testing/paged_kv.h"
#include "testing/problem_data.h"

namespace attn {
namespace {

using testing::ProblemData;
using testing::ProblemSpec;

// The K and V rows (and int8 row scales) of a contiguous problem copied into
// a pool of `block_size`-key blocks: each sequence's blocks in a shuffled
// order, sequence 1 sharing sequence 0's first block when both start with
// the same keys (they do not here, so sharing is tested by the reference
// agreeing on a table that points two sequences at one block: SharedPrefix),
// two spare blocks never referenced, and -1 past each sequence's needed
// blocks. The problem then reads the pool.
class Pool {
 public:
  Pool(Problem& p, int64_t block_size, uint64_t seed) : block_size_(block_size) {
    const Shape& s = p.shape;
    per_sequence_ = (s.kv_len + block_size - 1) / block_size;
    std::vector<int32_t> ids(s.batch * per_sequence_ + 2);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), std::mt19937_64(seed));
    table_.assign(s.batch * per_sequence_, -1);
    for (int64_t b = 0; b < s.batch; ++b) {
      const int64_t keys = p.mask.key_lengths ? (*p.mask.key_lengths)[b] : s.kv_len;
      for (int64_t x = 0; x < (keys + block_size - 1) / block_size; ++x) {
        table_[b * per_sequence_ + x] = ids[b * per_sequence_ + x];
      }
    }
    num_blocks_ = int64_t(ids.size());
    // Copy the rows; rows of unused blocks stay NaN: a kernel that reads one
    // fails.
    k_ = CopyIntoPool(p, p.k, p.k_scales, s.head_dim, k_scales_);
    v_ = CopyIntoPool(p, p.v, p.v_scales, s.value_dim, v_scales_);
    const Strides pool_k = Strides::BHLD(s.kv_heads, block_size, s.head_dim);
    const Strides pool_v = Strides::BHLD(s.kv_heads, block_size, s.value_dim);
    const Strides pool_scales = Strides::BHLD(s.kv_heads, block_size, 1);
    p.k = {k_.data(), pool_k, p.k.dtype};
    p.v = {v_.data(), pool_v, p.v.dtype};
    if (p.k.dtype == DType::kI8) p.k_scales = {k_scales_.data(), pool_scales};
    if (p.v.dtype == DType::kI8) p.v_scales = {v_scales_.data(), pool_scales};
    p.kv_pages = KvPages{table_, per_sequence_, block_size, num_blocks_};
  }
  std::vector<int32_t>& table() { return table_; }

 private:
  std::vector<char> CopyIntoPool(const Problem& p, const TensorRef<const void>& t,
                                 const RowScales& scales, int64_t dim,
                                 std::vector<float>& pool_scales) {
    const Shape& s = p.shape;
    const int64_t bytes = DTypeBytes(t.dtype);
    const int64_t row_bytes = dim * bytes;
    std::vector<char> pool(num_blocks_ * s.kv_heads * block_size_ * row_bytes);
    // NaN bits in every float type (0xFF bytes), -1 in int8.
    std::fill(pool.begin(), pool.end(), char(0xFF));
    pool_scales.assign(num_blocks_ * s.kv_heads * block_size_, std::nanf(""));
    for (int64_t b = 0; b < s.batch; ++b) {
      for (int64_t x = 0; x < per_sequence_; ++x) {
        const int32_t block = table_[b * per_sequence_ + x];
        if (block < 0) continue;
        for (int64_t h = 0; h < s.kv_heads; ++h) {
          for (int64_t r = 0; r < block_size_ && x * block_size_ + r < s.kv_len; ++r) {
            const int64_t j = x * block_size_ + r;
            const int64_t at = (block * s.kv_heads + h) * block_size_ + r;
            std::memcpy(pool.data() + at * row_bytes, ValidProblem::Row(t, b, h, j), row_bytes);
            if (t.dtype == DType::kI8) {
              pool_scales[at] = scales.data[b * scales.strides.batch + h * scales.strides.head +
                                            j * scales.strides.row];
            }
          }
        }
      }
    }
    return pool;
  }

  int64_t block_size_, per_sequence_ = 0, num_blocks_ = 0;
  std::vector<int32_t> table_;
  std::vector<char> k_, v_;
  std::vector<float> k_scales_, v_scales_;
};

struct Case {
  const Variant* variant = nullptr;
  ProblemSpec spec;
  int64_t block_size = 16;
  bool modifiers = false;
  Diagonal diagonal = Diagonal::kBottomRight;
  std::string name;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::vector<Case> Cases() {
  std::vector<Case> cases;
  for (const Variant* v : Registry()) {
    int n = 0;
    auto add = [&](Shape shape, MaskKind mask, std::vector<int32_t> lengths, int64_t block_size,
                   DTypes dtypes = {}, bool modifiers = false,
                   Diagonal diagonal = Diagonal::kBottomRight) {
      Case c;
      c.variant = v;
      c.spec.shape = shape;
      c.spec.mask = mask;
      c.spec.window_left = 40;
      c.spec.window_right = 3;
      c.spec.key_lengths = std::move(lengths);
      c.spec.dtypes = dtypes;
      c.spec.seed = 500 + n;
      c.block_size = block_size;
      c.modifiers = modifiers;
      c.diagonal = diagonal;
      c.name =
          std::string(v->name) + "_" + std::to_string(n++) + "_bs" + std::to_string(block_size);
      cases.push_back(c);
    };
    // Decode, MHA and GQA-4, lengths crossing blocks and flash's 512-key
    // tiles and split ranges, an empty and a one-key sequence.
    for (int64_t bs : {1, 7, 16, 32, 128}) {
      add({4, 8, 2, 1, 1500, 64, 64}, MaskKind::kNone, {1500, 0, 1, 777}, bs);
    }
    add({2, 4, 4, 1, 3000, 128, 128}, MaskKind::kNone, {3000, 2049}, 16);
    // Prefill and chunked prefill: causal, window (paged + window + sinks).
    add({2, 4, 2, 130, 300, 32, 32}, MaskKind::kCausal, {300, 140}, 32);
    add({1, 2, 1, 70, 600, 64, 64}, MaskKind::kSlidingWindow, {}, 16, {}, /*modifiers=*/true);
    add({2, 8, 2, 3, 520, 64, 64}, MaskKind::kCausal, {520, 64}, 64, {}, /*modifiers=*/true);
    // Chunked prefill into caches filled to different lengths: each batch's
    // diagonal at its own key length (one cache shorter than the chunk).
    add({3, 8, 2, 16, 512, 64, 64}, MaskKind::kCausal, {512, 200, 7}, 16, {}, /*modifiers=*/true,
        Diagonal::kKeyLengths);
    // Decode items that take several kv heads (flash: their rows together
    // at most 8; each block read head after head): MHA with 6 heads and a
    // window and modifiers, GQA-2 with two query positions (a chunk) at
    // each batch's key length, int8 MHA below.
    add({2, 6, 6, 1, 700, 64, 64}, MaskKind::kSlidingWindow, {700, 5}, 16, {}, /*modifiers=*/true);
    add({2, 8, 4, 2, 600, 32, 32}, MaskKind::kCausal, {600, 1}, 32, {}, /*modifiers=*/false,
        Diagonal::kKeyLengths);
    // Element types: a bf16 and an int8 cache (decode and prefill).
    constexpr DType kF32 = DType::kF32, kBF16 = DType::kBF16, kI8 = DType::kI8;
    add({2, 8, 2, 1, 900, 128, 128}, MaskKind::kNone, {900, 33}, 16, {kF32, kBF16, kBF16, kF32});
    add({2, 8, 2, 1, 900, 128, 128}, MaskKind::kNone, {900, 33}, 32, {kF32, kI8, kI8, kF32});
    add({2, 4, 4, 1, 900, 128, 128}, MaskKind::kNone, {900, 33}, 16, {kF32, kI8, kI8, kF32});
    add({2, 4, 2, 9, 300, 128, 128}, MaskKind::kCausal, {300, 33}, 32, {kF32, kBF16, kBF16, kF32},
        false, Diagonal::kKeyLengths);
    add({1, 4, 4, 100, 100, 64, 64}, MaskKind::kCausal, {}, 16, {kBF16, kBF16, kBF16, kBF16});
    add({1, 4, 2, 100, 100, 64, 64}, MaskKind::kCausal, {}, 16, {kF32, kI8, kI8, kF32});
  }
  return cases;
}

std::string ParamName(const ::testing::TestParamInfo<Case>& info) { return info.param.name; }

// Sinks and ALiBi slopes for a problem's heads.
struct ModifierValues {
  std::vector<float> slopes, sinks;
  void Attach(Problem& p) {
    for (int64_t h = 0; h < p.shape.heads; ++h) {
      slopes.push_back(std::exp2(-8.0f * float(h + 1) / float(p.shape.heads)));
      sinks.push_back(h == 1 ? -std::numeric_limits<float>::infinity() : 0.5f * float(h));
    }
    p.modifiers.alibi_slopes = slopes;
    p.modifiers.sinks = sinks;
  }
};

class PagedTest : public ::testing::TestWithParam<Case> {};

TEST_P(PagedTest, MatchesReferenceOrIsRefused) {
  const Case& c = GetParam();
  ProblemData data(c.spec);
  Problem& p = data.problem();
  p.mask.diagonal = c.diagonal;
  ModifierValues values;
  if (c.modifiers) values.Attach(p);
  Pool pool(p, c.block_size, c.spec.seed);
  const Status status = attn::Run(*c.variant, p, OnThreads(2));
  if (!c.variant->paged_kv) {
    EXPECT_EQ(status.code(), StatusCode::kUnimplemented) << status.ToString();
    // Named, unless the variant refused an element type or modifier first.
    const uint8_t used = ModifiersOf(p.modifiers);
    if (Takes(*c.variant, DTypesOf(p)) && (c.variant->modifiers & used) == used) {
      EXPECT_NE(status.message().find("paged K/V"), std::string::npos) << status.message();
    }
    return;
  }
  if (status.code() == StatusCode::kUnimplemented) GTEST_SKIP() << status.message();
  ASSERT_TRUE(status.ok()) << status.ToString();
  StatusOr<reference::Result> want = reference::Attention(p);
  ASSERT_TRUE(want.ok());
  const testing::Comparison cmp = testing::CompareToReference(data, *want);
  EXPECT_TRUE(cmp.ok) << cmp.first_failure << " (worst error/bound " << cmp.worst_bound_ratio
                      << ")";
}

INSTANTIATE_TEST_SUITE_P(Registry, PagedTest, ::testing::ValuesIn(Cases()), ParamName);

// Runs variant `name` on one thread over data's problem (poisoned first) and
// compares it with the fp64 reference: "" within the bound, else what failed.
std::string RunAgainstReference(const char* name, ProblemData& data) {
  data.Poison();
  const Status status = attn::Run(name, data.problem(), OnThreads(1));
  if (!status.ok()) return status.ToString();
  StatusOr<reference::Result> want = reference::Attention(data.problem());
  if (!want.ok()) return want.status().ToString();
  const testing::Comparison cmp = testing::CompareToReference(data, *want);
  return cmp.ok ? "" : cmp.first_failure;
}

// Two sequences sharing their first block (a common prompt prefix): the
// reference and flash agree that both read it.
TEST(PagedSharingTest, SharedPrefix) {
  ProblemSpec spec;
  spec.shape = {2, 2, 2, 1, 40, 16, 16};
  spec.key_lengths = {40, 40};
  ProblemData data(spec);
  Problem& p = data.problem();
  Pool pool(p, 16, 9);
  std::vector<int32_t>& table = pool.table();  // [2, 3]
  table[3] = table[0];                         // sequence 1's first block is sequence 0's
  for (const char* name : {"naive", "flash"}) {
    EXPECT_EQ(RunAgainstReference(name, data), "") << name;
  }
}

// NaN in a paged cache reaches exactly the rows that see it, with flash's
// items taking the four kv heads together: a chunk of two queries at each
// batch's key length, so batch 1's tile is partial (key 19 is visible to
// query 1 only) and its NaN V row there must not reach query 0 (P·V over
// visible keys only); a NaN V row batch 0 sees makes its head's two rows
// NaN; a NaN K row past batch 1's key length reaches nothing.
TEST(PagedSpecialValuesTest, NaNRowsReachOnlyTheirRows) {
  ProblemSpec spec;
  spec.shape = {2, 4, 4, 2, 40, 16, 16};
  spec.mask = MaskKind::kCausal;
  spec.key_lengths = {40, 20};
  ProblemData data(spec);
  Problem& p = data.problem();
  p.mask.diagonal = Diagonal::kKeyLengths;
  auto row = [](float* t, int64_t b, int64_t h, int64_t j) {
    return t + ((b * 4 + h) * 40 + j) * 16;
  };
  const float nan = std::nanf("");
  std::fill_n(row(data.v_data(), 1, 1, 19), 16, nan);
  std::fill_n(row(data.v_data(), 0, 2, 3), 16, nan);
  std::fill_n(row(data.k_data(), 1, 3, 25), 16, nan);
  Pool pool(p, 16, 11);
  for (const char* name : {"naive", "flash"}) {
    EXPECT_EQ(RunAgainstReference(name, data), "") << name;
    const std::vector<float> o = data.OutputContiguous();
    for (int64_t b = 0; b < 2; ++b) {
      for (int64_t h = 0; h < 4; ++h) {
        for (int64_t i = 0; i < 2; ++i) {
          const bool want_nan = (b == 1 && h == 1 && i == 1) || (b == 0 && h == 2);
          EXPECT_EQ(std::isnan(o[((b * 4 + h) * 2 + i) * 16]), want_nan)
              << name << " b=" << b << " h=" << h << " i=" << i;
        }
      }
    }
  }
}

// Validate names every bad field of a paged cache.
TEST(PagedValidationTest, NamesTheField) {
  ProblemSpec spec;
  spec.shape = {2, 2, 1, 1, 40, 8, 8};
  spec.key_lengths = {40, 20};
  ProblemData data(spec);
  Pool pool(data.problem(), 16, 3);  // 3 blocks per sequence, 8 in the pool
  const std::vector<int32_t> short_table = {0, 1, 2, 3, 4};
  const std::vector<int32_t> cu = {0, 1, 2};
  struct Bad {
    std::function<void(Problem&)> set;
    std::string message;
  };
  const std::vector<Bad> bad = {
      {[](Problem& p) { p.kv_pages->block_size = 0; }, "block_size=0 must be >= 1"},
      {[](Problem& p) { p.kv_pages->num_blocks = 0; }, "num_blocks=0 must be >= 1"},
      {[&](Problem& p) { p.kv_pages->block_table = short_table; },
       "block_table has 5 entries, needs B*blocks_per_sequence=2*3"},
      {[](Problem& p) { p.kv_pages->num_blocks = 2; }, "is outside the pool of num_blocks=2"},
      {[](Problem& p) { p.kv_pages->block_size = 8; },
       "block_table holds 3 blocks of 8 keys per sequence, fewer than Lk=40"},
      {[&](Problem& p) {
         p.shape.batch = 1;
         p.shape.q_len = 2;
         p.mask.key_lengths.reset();
         p.kv_pages->block_table = p.kv_pages->block_table.first(3);
         p.mask.sequences = PackedSequences{cu, cu};
       },
       "a paged K/V cache does not combine with packed sequences"},
  };
  for (const Bad& b : bad)
    EXPECT_EQ(testing::RefusalMismatch(data.problem(), b.set, b.message), "");
  // An entry past a sequence's needed blocks is not read: sequence 1 has 20
  // keys, 2 blocks; its third entry may be anything.
  Problem p = data.problem();
  std::vector<int32_t> table(pool.table());
  table[5] = 12345;
  p.kv_pages->block_table = table;
  EXPECT_TRUE(Validate(p).ok());
  table[4] = 12345;
  EXPECT_NE(Validate(p).status().message().find("block_table[1][1]=12345 is outside the pool"),
            std::string::npos);
  // The backward takes no paged cache.
  ASSERT_TRUE(testing::RunForwardForGrad(data).ok());
  testing::GradData grads(data);
  const Status s = ValidateGrad(grads.grad_problem()).status();
  EXPECT_NE(s.message().find("the backward does not take a paged K/V cache"), std::string::npos)
      << s.ToString();
}

// The rows decode prefetches (kernels/internal/read_ahead.h) are the rows it
// reads `ahead` rows later: on a paged cache group after group of
// group_blocks blocks, within a group head after head (every slice counted
// as block_size rows, keys past `end` holes that are never prefetched), on a
// contiguous one key after key. Every run of every read order, row by row:
// a run prefetches all its rows' targets up to the first hole; From() keeps
// them.
TEST(PagedReadAheadTest, PrefetchesTheRowsReadLater) {
  constexpr int64_t kKeys = 200;
  std::vector<char> rows(8 * kKeys);  // row (h, j) is byte h * kKeys + j: stride 1
  auto row_at = [&](int64_t h, int64_t j) { return rows.data() + h * kKeys + j; };
  struct Target {
    int64_t head, key;
  };
  for (int64_t heads : {1, 2, 4, 8}) {
    for (int64_t bs : {0, 1, 3, 16, 64}) {
      if (bs == 0 && heads > 1) continue;  // contiguous items take one head
      for (int64_t end : {1, 45, 64, 200})
        for (int64_t group_blocks : {1, 2, 4}) {
          if (bs == 0 && group_blocks > 1) continue;
          const ReadOrder order{heads, bs, end, 1, 1, group_blocks};
          const int64_t group_keys = group_blocks * bs;
          const int64_t per_group = bs == 0 ? kKeys : heads * group_keys;
          // Read order over whole slices: position -> (head, key).
          auto target = [&](int64_t pos) -> Target {
            if (bs == 0) return {0, pos};
            return {pos % per_group / group_keys, pos / per_group * group_keys + pos % group_keys};
          };
          for (int64_t ahead : {int64_t{1}, int64_t{5}, bs, per_group, 3 * per_group + 7}) {
            if (ahead <= 0) continue;
            // Runs end at a block's end, a 10-key tile's and `end` (flash's
            // ForEachKvRun in its tiles: a run may start inside a block).
            for (int64_t r0 = 0, r1 = 0; r0 < end; r0 = r1) {
              r1 = std::min({end, r0 / 10 * 10 + 10, bs == 0 ? end : r0 / bs * bs + bs});
              for (int64_t g = 0; g < heads; ++g) {
                SCOPED_TRACE(::testing::Message()
                             << "heads " << heads << " bs " << bs << " group_blocks "
                             << group_blocks << " end " << end << " ahead " << ahead << " run ["
                             << r0 << ", " << r1 << ") head " << g);
                const PrefetchRows got = RowsAhead(order, ahead, g, r0, r1, row_at);
                const int64_t pos =
                    bs == 0 ? r0 : r0 / group_keys * per_group + g * group_keys + r0 % group_keys;
                int64_t reachable = 0;  // targets before the first hole
                while (reachable < r1 - r0 && target(pos + ahead + reachable).key < end)
                  ++reachable;
                EXPECT_EQ(got.rows, reachable);
                for (int64_t i = 0; i < got.rows; ++i) {
                  const Target want = target(pos + ahead + i);
                  EXPECT_EQ(got.KRow(i), row_at(want.head, want.key)) << "row " << i;
                }
                for (int64_t first = 1; first < got.rows; ++first) {
                  const PrefetchRows rest = got.From(first);
                  ASSERT_EQ(rest.rows, got.rows - first);
                  for (int64_t i = 0; i < rest.rows; ++i)
                    EXPECT_EQ(rest.KRow(i), got.KRow(first + i));
                }
              }
            }
          }
        }
    }
  }
  // 0 bytes ahead: none on a contiguous cache, one block on a paged one.
  EXPECT_EQ(RowsAheadFor({1, 0, kKeys, 512, 512}, 0), 0);
  EXPECT_EQ(RowsAheadFor({4, 16, kKeys, 512, 512}, 0), 64);
  EXPECT_EQ(RowsAheadFor({4, 16, kKeys, 512, 512}, 32768), 64);
  EXPECT_EQ(RowsAheadFor({4, 16, kKeys, 512, 512}, 1), 1);
  EXPECT_EQ(RowsAheadFor({4, 16, kKeys, 512, 512, 4}, 0), 256);  // one group of 4 blocks
  // Under the threshold (K and V in the L3): none on either.
  EXPECT_EQ(RowsAheadFor({1, 0, kKeys, 512, 512}, kNoDecodePrefetch), 0);
  EXPECT_EQ(RowsAheadFor({4, 16, kKeys, 512, 512}, kNoDecodePrefetch), 0);
}

// flash's paged decode gives the same bits whatever its prefetch distance
// (one block ahead at 0): MHA (items of 8 kv heads), GQA-4 with key lengths
// (items of 2), block sizes that do and do not divide its 512-key tiles,
// and a bf16 cache read in place. A test hook makes these small problems
// prefetch (flash::g_decode_prefetch_for_test).
TEST(PagedReadAheadTest, DecodePrefetchChangesNoBits) {
  const testing::DecodePrefetchScope always;
  struct PagedCase {
    Shape shape;
    DTypes dtypes;
    std::vector<int32_t> key_lengths;
  };
  const DTypes f32, bf16{DType::kF32, DType::kBF16, DType::kBF16, DType::kF32};
  const PagedCase cases[] = {
      {{1, 8, 8, 1, 3000, 64, 64}, f32, {}},               // MHA
      {{2, 8, 2, 1, 3000, 64, 64}, f32, {2999, 700}},      // GQA-4
      {{2, 8, 2, 1, 2000, 128, 128}, bf16, {2000, 1333}},  // bf16 K/V
  };
  for (const PagedCase& c : cases) {
    for (int64_t bs : {1, 16, 48, 128}) {
      ProblemSpec spec;
      spec.shape = c.shape;
      spec.dtypes = c.dtypes;
      spec.key_lengths = c.key_lengths;
      ProblemData data(spec);
      Problem& p = data.problem();
      Pool pool(p, bs, 21);
      const StatusOr<reference::Result> want = reference::Attention(p);
      ASSERT_TRUE(want.ok());
      std::vector<float> first;
      for (int64_t bytes : {int64_t{0}, int64_t{64}, int64_t{32768}, kMaxDecodePrefetchBytes}) {
        Tuning t = DefaultTuning("test");
        t.flash_paged_prefetch_bytes = bytes;  // the distance a paged cache takes
        ScopedTuning scope(t);
        const std::string name =
            spec.Name() + " bs " + std::to_string(bs) + " prefetch " + std::to_string(bytes);
        data.Poison();
        ASSERT_TRUE(attn::Run("flash", p, OnThreads(2)).ok()) << name;
        const testing::Comparison cmp = testing::CompareToReference(data, *want);
        EXPECT_TRUE(cmp.ok) << name << ": " << cmp.first_failure;
        const std::vector<float> out = data.OutputContiguous();
        if (first.empty()) {
          first = out;
        } else {
          EXPECT_EQ(0, std::memcmp(first.data(), out.data(), out.size() * sizeof(float)))
              << name << " changed the result";
        }
      }
    }
  }
}

// A tile's runs in one call (ScoreRowsRuns, PvRowsRuns; flash's
// ForEachRunGroup) on a 16-register target: AVX2 at d = 32, where the 1-3-row
// P·V kernel holds 4 vectors (2 x kTileVectors) per row, so flash reads a
// paged tile head after head. bf16 and int8 K/V are read in place there (the
// VPDPWSSD kernels are AVX3's), an int8 tensor's row scales applied run by
// run after the kernel (ScaleRuns). Block sizes that divide the tile (16:
// grouped) and do not (5: run by run), MHA and GQA-2/3, against the reference.
TEST(PagedTest, TileRunsInOneCallOnAvx2) {
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  if (std::find(targets.begin(), targets.end(), int64_t{HWY_AVX2}) == targets.end()) {
    GTEST_SKIP() << "AVX2: this CPU lacks it or this build has no AVX2 target";
  }
  hwy::SetSupportedTargetsForTest(HWY_AVX2);
  // Every target again however the test ends (an ASSERT returns early).
  struct AllTargetsAtExit {
    ~AllTargetsAtExit() { hwy::SetSupportedTargetsForTest(0); }
  } all_targets_at_exit;
  const DTypes f32, bf16{DType::kF32, DType::kBF16, DType::kBF16, DType::kF32},
      i8{DType::kF32, DType::kI8, DType::kI8, DType::kF32};
  for (const DTypes& dtypes : {f32, bf16, i8}) {
    for (const Shape& shape : {Shape{2, 4, 4, 1, 1100, 32, 32}, Shape{2, 6, 2, 1, 1100, 32, 32},
                               Shape{1, 4, 2, 1, 700, 32, 32}}) {
      for (int64_t bs : {16, 5}) {
        ProblemSpec spec;
        spec.shape = shape;
        spec.dtypes = dtypes;
        spec.key_lengths = {static_cast<int32_t>(shape.kv_len),
                            static_cast<int32_t>(shape.kv_len / 3)};
        spec.key_lengths.resize(shape.batch);
        ProblemData data(spec);
        Problem& p = data.problem();
        Pool pool(p, bs, 31);
        const StatusOr<reference::Result> want = reference::Attention(p);
        ASSERT_TRUE(want.ok());
        const std::string name = spec.Name() + " bs " + std::to_string(bs);
        data.Poison();
        RunStats stats;
        ASSERT_TRUE(attn::Run("flash", p, OnThreads(2), &stats).ok()) << name;
        EXPECT_NE(stats.path.find("AVX2"), std::string::npos) << name << ": " << stats.path;
        const testing::Comparison cmp = testing::CompareToReference(data, *want);
        EXPECT_TRUE(cmp.ok) << name << ": " << cmp.first_failure;
      }
    }
  }
}

// testing::PageKv (the bench's paged cases, `attnlab tune`'s paged decode):
// every block of the pool used once, each key's rows at its table block, and
// flash on the paged copy within the bound of the reference on the
// contiguous problem it was made from.
TEST(PageKvTest, PoolHoldsEachKeysRowsWhereTheTableSays) {
  ProblemSpec spec;
  spec.shape = Shape{2, 8, 2, 1, 100, 32, 32};
  ProblemData data(spec);
  Problem& p = data.problem();
  const Problem contiguous = p;
  const StatusOr<reference::Result> want = reference::Attention(contiguous);
  ASSERT_TRUE(want.ok());
  testing::PagedKv pools;
  constexpr int64_t kBlock = 16, kPerSequence = 7;  // ceil(100 / 16)
  testing::PageKv(kBlock, p, pools);
  ASSERT_TRUE(p.kv_pages.has_value());
  EXPECT_EQ(p.kv_pages->block_size, kBlock);
  EXPECT_EQ(p.kv_pages->blocks_per_sequence, kPerSequence);
  std::vector<int32_t> blocks(p.kv_pages->block_table.begin(), p.kv_pages->block_table.end());
  std::sort(blocks.begin(), blocks.end());
  std::vector<int32_t> each(2 * kPerSequence);
  std::iota(each.begin(), each.end(), 0);
  EXPECT_EQ(blocks, each);
  const Shape& s = p.shape;
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t h = 0; h < s.kv_heads; ++h) {
      for (int64_t j = 0; j < s.kv_len; ++j) {
        const int64_t block = p.kv_pages->block_table[b * kPerSequence + j / kBlock];
        const int64_t row = ((block * s.kv_heads + h) * kBlock + j % kBlock) * s.head_dim;
        for (const auto& [pool, t] :
             {std::pair{&pools.k, contiguous.k}, std::pair{&pools.v, contiguous.v}}) {
          ASSERT_EQ(std::memcmp(pool->data() + row, ValidProblem::Row(t, b, h, j),
                                s.head_dim * sizeof(float)),
                    0)
              << "b " << b << " h " << h << " key " << j;
        }
      }
    }
  }
  data.Poison();
  ASSERT_TRUE(attn::Run("flash", p, OnThreads(1)).ok());
  const testing::Comparison cmp = testing::CompareToReference(data, *want);
  EXPECT_TRUE(cmp.ok) << cmp.first_failure;
}

}  // namespace
}  // namespace attn
