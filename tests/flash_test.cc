// Flash-specific tests: masked-tile skipping (counted and NaN-proofed),
// workspace independent of the sequence length, the split-key
// (flash-decoding) path, and every compiled Highway target. Its micro-kernels
// (the exp2 among them) are tested one by one in tests/ukernel_test.cc.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "hwy/targets.h"
#include "kernels/internal/flash_plan.h"
#include "kernels/registry.h"
#include "kernels/ukernels/bf16_amx.h"
#include "kernels/ukernels/bf16_avx512.h"
#include "kernels/ukernels/bf16_decode.h"
#include "kernels/ukernels/i8_decode.h"
#include "reference/reference.h"
#include "testing/compare.h"
#include "testing/flash_hooks.h"
#include "testing/fp_mode.h"
#include "testing/problem_data.h"
#include "testing/scoped_env.h"

namespace attn::testing {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInfF = std::numeric_limits<float>::infinity();

const Variant& Flash() {
  const Variant* v = FindVariant("flash");
  EXPECT_NE(v, nullptr);
  return *v;
}

// Counts the tiles of a run while alive.
class TileCountScope {
 public:
  TileCountScope() { SetFlashTileCounts(&counts_); }
  ~TileCountScope() { SetFlashTileCounts(nullptr); }
  const FlashTileCounts& counts() const { return counts_; }

 private:
  FlashTileCounts counts_;
};

// Expected tile classes from the problem's visible ranges alone (an
// independent derivation of what flash must skip): for each (b, kv head),
// row block of 64 stacked rows and aligned bc-key tile, the tile clipped to
// the union of the block's visible ranges is skipped when empty, full when
// every row sees every key of it, partial otherwise. Valid when splits = 1.
struct Expected {
  int64_t full = 0, partial = 0, skipped = 0;
};
Expected ExpectedTiles(const Problem& problem) {
  const ValidProblem p = *Validate(problem);
  const int64_t group = p.group, rows = group * p.shape.q_len;
  const int64_t br = flash::kBr, bc = flash::MakePlan(p).bc;
  Expected e;
  for (int64_t b = 0; b < p.shape.batch; ++b) {
    for (int64_t kvh = 0; kvh < p.shape.kv_heads; ++kvh) {
      for (int64_t r0 = 0; r0 < rows; r0 += br) {
        const int64_t r1 = std::min(rows, r0 + br);
        int64_t ulo = p.shape.kv_len, uhi = 0;
        for (int64_t r = r0; r < r1; ++r) {
          const KeyRange k = p.VisibleKeys(b, r / group);
          if (!k.empty()) ulo = std::min(ulo, k.begin), uhi = std::max(uhi, k.end);
        }
        for (int64_t t = 0; t < p.shape.kv_len; t += bc) {
          const int64_t j0 = std::max(t, ulo), j1 = std::min(t + bc, uhi);
          if (j0 >= j1) {
            ++e.skipped;
            continue;
          }
          bool full = true;
          for (int64_t r = r0; r < r1 && full; ++r) {
            const KeyRange k = p.VisibleKeys(b, r / group);
            full = k.begin <= j0 && j1 <= k.end;
          }
          full ? ++e.full : ++e.partial;
        }
      }
    }
  }
  return e;
}

ProblemSpec Spec(Shape shape, MaskKind mask, uint64_t seed) {
  ProblemSpec spec;
  spec.shape = shape;
  spec.mask = mask;
  spec.seed = seed;
  return spec;
}

// Runs flash on `data` and checks it against the reference computed on the
// same (possibly NaN-poisoned) inputs.
void RunAndCheck(ProblemData& data, int threads, const char* what) {
  auto want = reference::Attention(data.problem(), false);
  ASSERT_TRUE(want.ok()) << want.status().ToString();
  RunOptions options;
  options.threads = threads;
  RunStats stats;
  const Status s = attn::Run(Flash(), data.problem(), options, &stats);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_LE(stats.workspace_peak_bytes, stats.workspace_declared_bytes);
  const Comparison c = CompareToReference(data, *want);
  EXPECT_TRUE(c.ok) << what << ": " << c.first_failure << " seed=" << data.spec().seed;
}

TEST(FlashTiles, CausalSkipsUpperTrianglePerBlock) {
  // Lq = Lk = 256: row block q of 64 rows visits the key tiles up to its
  // diagonal, which is partial; every later tile is skipped.
  KeyTileScope tiles64(64);
  ProblemSpec spec = Spec(Shape{1, 1, 1, 256, 256, 64, 64}, MaskKind::kCausal, 11);
  ProblemData data(spec);
  const Expected e = ExpectedTiles(data.problem());
  TileCountScope scope;
  RunAndCheck(data, 2, "causal");
  const int64_t blocks = 256 / flash::kBr, tiles = 256 / 64;
  EXPECT_EQ(
      scope.counts().full.load() + scope.counts().partial.load() + scope.counts().skipped.load(),
      blocks * tiles);
  EXPECT_EQ(scope.counts().full.load(), e.full);
  EXPECT_EQ(scope.counts().partial.load(), e.partial);
  EXPECT_EQ(scope.counts().skipped.load(), e.skipped);
  EXPECT_GE(scope.counts().partial.load(), blocks);  // every block has a diagonal tile
  EXPECT_GT(scope.counts().skipped.load(), 0);
  EXPECT_GT(scope.counts().full.load(), 0);
  EXPECT_EQ(scope.counts().split_items.load(), 0);
}

TEST(FlashTiles, CountsMatchIndependentDerivation) {
  struct Case {
    Shape shape;
    MaskKind mask;
    int64_t left, right;
    std::vector<int32_t> key_lengths;
  };
  const Case cases[] = {
      {{1, 2, 2, 300, 300, 32, 32}, MaskKind::kCausal, 0, 0, {}},
      {{1, 1, 1, 200, 500, 16, 24}, MaskKind::kCausal, 0, 0, {}},            // Lk > Lq: offset
      {{1, 4, 2, 130, 700, 16, 16}, MaskKind::kSlidingWindow, 100, 10, {}},  // GQA
      {{2, 2, 1, 150, 400, 16, 16}, MaskKind::kNone, 0, 0, {190, 0}},
      {{2, 1, 1, 333, 333, 8, 8}, MaskKind::kCausal, 0, 0, {333, 129}},
  };
  KeyTileScope tiles64(64);
  for (const Case& c : cases) {
    ProblemSpec spec = Spec(c.shape, c.mask, 20);
    spec.window_left = c.left;
    spec.window_right = c.right;
    spec.key_lengths = c.key_lengths;
    ProblemData data(spec);
    const Expected e = ExpectedTiles(data.problem());
    TileCountScope scope;
    RunAndCheck(data, 2, spec.Name().c_str());
    EXPECT_EQ(scope.counts().full.load(), e.full) << spec.Name();
    EXPECT_EQ(scope.counts().partial.load(), e.partial) << spec.Name();
    EXPECT_EQ(scope.counts().skipped.load(), e.skipped) << spec.Name();
    EXPECT_GT(e.skipped, 0) << spec.Name() << ": the case must exercise skipping";
    EXPECT_GT(e.full, 0) << spec.Name();
  }
}

// NaN in K and V of keys that only skipped tiles cover: if flash read them
// (even with weight 0), 0·NaN would reach the output.
TEST(FlashTiles, SkippedTilesAreNeverRead) {
  KeyTileScope tiles64(64);
  ProblemSpec spec = Spec(Shape{1, 2, 1, 256, 320, 64, 64}, MaskKind::kNone, 31);
  spec.key_lengths = {100};  // keys [100, 320) hidden from every row
  ProblemData data(spec);
  const Problem& p = data.problem();
  for (int64_t j = 100; j < 320; ++j) {  // hidden: partial tile part and skipped tiles
    float* k = data.k_data() + j * p.k.strides.row;
    float* v = data.v_data() + j * p.v.strides.row;
    for (int64_t x = 0; x < 64; ++x) k[x] = v[x] = kNaN;
  }
  TileCountScope scope;
  RunAndCheck(data, 2, "nan beyond key length");
  // H = 2 query heads share the kv head: 2 x 256 stacked rows = 8 row blocks,
  // each skipping every tile that starts at or after key 100.
  const int64_t tiles = (320 + 63) / 64;
  const int64_t first_skipped = (100 + 63) / 64;
  EXPECT_EQ(scope.counts().skipped.load(), 8 * (tiles - first_skipped));
  EXPECT_EQ(scope.counts().skipped.load(), ExpectedTiles(p).skipped);
  const std::vector<float> o = data.OutputContiguous();
  for (float x : o) ASSERT_TRUE(std::isfinite(x));
}

// A NaN V row inside a partial (diagonal) tile: the rows that see it are NaN,
// the rows of the same tile that do not see it stay exact (P·V falls back to
// each row's visible range).
TEST(FlashTiles, NaNInPartialTileReachesOnlyRowsThatSeeIt) {
  KeyTileScope tiles64(64);
  ProblemSpec spec = Spec(Shape{1, 1, 1, 192, 192, 64, 64}, MaskKind::kCausal, 41);
  ProblemData data(spec);
  const Problem& p = data.problem();
  data.v_data()[70 * p.v.strides.row + 5] = kNaN;
  data.k_data()[150 * p.k.strides.row + 3] = kInfF;
  RunAndCheck(data, 1, "nan in diagonal tile");
  const std::vector<float> o = data.OutputContiguous();
  EXPECT_TRUE(std::isfinite(o[69 * 64 + 5]));  // row 69 does not see key 70
  EXPECT_TRUE(std::isnan(o[70 * 64 + 5]));
}

// The same in bf16 on each pair path this CPU has (AMX and VDPBF16PS, both
// reading P as bf16 rows, the fallback too), and bf16
// on AMX with a scale the softmax cannot take (0 and negative: the maximum
// of the raw scores is then not the maximum of the scaled ones, so the
// score tile scales, kernels/flash.cc ScaleInSoftmax) and one it takes.
TEST(FlashTiles, Bf16PairPathsKeepPartialTilesAndScales) {
  KeyTileScope tiles64(64);
  for (const bool no_amx : {false, true}) {
    std::optional<Vdpbf16psScope> pairs;
    if (no_amx) pairs.emplace();
    const std::string path = no_amx ? " VDPBF16PS (ATTNLAB_NO_AMX=1)" : "";
    ProblemSpec spec = Spec(Shape{1, 1, 1, 192, 192, 64, 64}, MaskKind::kCausal, 42);
    spec.dtypes = {DType::kBF16, DType::kBF16, DType::kBF16, DType::kBF16};
    ProblemData data(spec);
    Problem& p = data.problem();
    auto* v = const_cast<uint16_t*>(static_cast<const uint16_t*>(p.v.data));
    v[70 * p.v.strides.row + 5] = 0x7FC0;  // bf16 NaN
    RunAndCheck(data, 1, ("bf16 nan in diagonal tile" + path).c_str());
    const std::vector<float> o = data.OutputContiguous();
    EXPECT_TRUE(std::isfinite(o[69 * 64 + 5])) << path;  // row 69 does not see key 70
    EXPECT_TRUE(std::isnan(o[70 * 64 + 5])) << path;
    for (const float scale : {-0.3f, 0.0f, 0.3f}) {
      ProblemSpec scaled = Spec(Shape{1, 2, 1, 100, 300, 64, 64}, MaskKind::kCausal, 43);
      scaled.dtypes = spec.dtypes;
      ProblemData d(scaled);
      d.problem().scale = scale;
      RunAndCheck(d, 1, ("bf16 scale " + std::to_string(scale) + path).c_str());
    }
  }
}

// A many-row work item takes up to kMaxSubBlocks row blocks, which take
// each key tile in turn and, on the bf16 pair paths (AMX, VDPBF16PS), share
// its paired V (AttendBlock). Each row's arithmetic is that of an item of one block, so
// the bits must be the same: dense, causal (whose blocks see different
// tiles, and pair the diagonal's V each), Lq != Lk with a last block of few
// rows (the dot-product path beside three tile blocks), a sliding window
// (blocks whose tiles start at different keys), per-sequence key lengths,
// and a NaN in a V row that only some rows of an item see. Tile counts
// stay those of 64-row blocks.
TEST(FlashTiles, ItemsOfSeveralRowBlocksGiveTheSameBits) {
  struct Case {
    const char* what;
    Shape shape;
    MaskKind mask;
    std::vector<int32_t> key_lengths;
    int64_t nan_v_row;  // of head 0, batch 0; -1: none
  };
  const Case cases[] = {
      {"dense", {1, 2, 2, 512, 512, 64, 64}, MaskKind::kNone, {}, -1},
      {"causal, NaN in V row 300", {1, 2, 2, 512, 512, 128, 128}, MaskKind::kCausal, {}, 300},
      {"causal, Lq != Lk, few-row last block",
       {2, 8, 8, 200, 700, 64, 64},
       MaskKind::kCausal,
       {},
       -1},
      {"window", {1, 2, 2, 512, 512, 64, 64}, MaskKind::kSlidingWindow, {}, -1},
      {"key lengths", {2, 8, 8, 256, 600, 64, 64}, MaskKind::kNone, {600, 333}, -1},
  };
  // Unforced, items take as many blocks as leave 32 items and the rows fill.
  auto sub_blocks = [](Shape shape) {
    ProblemSpec spec = Spec(shape, MaskKind::kNone, 1);
    ProblemData data(spec);
    return flash::MakePlan(*Validate(data.problem())).sub_blocks;
  };
  EXPECT_EQ(sub_blocks({1, 8, 8, 2048, 2048, 128, 128}), 8);  // 4 items per head
  EXPECT_EQ(sub_blocks({1, 8, 8, 1024, 1024, 128, 128}), 4);  // 4 per head
  EXPECT_EQ(sub_blocks({1, 8, 8, 512, 512, 128, 128}), 2);    // 4 per head
  EXPECT_EQ(sub_blocks({1, 8, 8, 256, 256, 64, 64}), 1);      // 4 per head
  EXPECT_EQ(sub_blocks({1, 1, 1, 2048, 2048, 64, 64}), 1);    // 32 in all
  EXPECT_EQ(sub_blocks({1, 32, 32, 1, 4096, 128, 128}), 1);   // decode: one row per item
  // fp32, then bf16 on AMX where the CPU has it and on VDPBF16PS
  // (Vdpbf16psScope) where it has AVX512_BF16.
  enum Path { kF32, kAmx, kVdpbf16ps };
  const char* const path_names[] = {", fp32", ", bf16 on AMX", ", bf16 on VDPBF16PS"};
  for (const Path path : {kF32, kAmx, kVdpbf16ps}) {
    const bool bf16 = path != kF32;
    if (bf16 && !ukernels::CpuHasAvx512Bf16()) {
      GTEST_SKIP() << "fp32 checked; bf16 needs AVX512_BF16, which this CPU lacks";
    }
    if (path == kAmx && ukernels::AmxBf16KernelsForCpu() == nullptr) continue;
    std::optional<Vdpbf16psScope> pairs;
    if (path == kVdpbf16ps) pairs.emplace();
    for (const int64_t keys : {int64_t{0}, int64_t{64}}) {
      KeyTileScope tiles(keys);
      for (const Case& c : cases) {
        SCOPED_TRACE(std::string(c.what) + (keys ? ", 64-key tiles" : ", default tiles") +
                     path_names[path]);
        ProblemSpec spec = Spec(c.shape, c.mask, 44);
        if (bf16) spec.dtypes = {DType::kBF16, DType::kBF16, DType::kBF16, DType::kBF16};
        spec.window_left = 100;
        spec.key_lengths = c.key_lengths;
        ProblemData data(spec);
        if (c.nan_v_row >= 0) {
          const int64_t at = c.nan_v_row * data.problem().v.strides.row + 3;
          void* v = const_cast<void*>(data.problem().v.data);
          if (bf16) {
            static_cast<uint16_t*>(v)[at] = 0x7FC0;  // bf16 NaN
          } else {
            static_cast<float*>(v)[at] = kNaN;
          }
        }
        // (Fewer items than 16 would split the keys, another order of sums:
        // the shapes keep 16 items or more.)
        std::vector<float> one_block;
        {
          SubBlocksScope one(1);
          ASSERT_EQ(flash::MakePlan(*Validate(data.problem())).sub_blocks, 1);
          RunAndCheck(data, 2, "items of one row block");
          one_block = data.OutputContiguous();
        }
        SubBlocksScope most(flash::kMaxSubBlocks);
        const flash::Plan plan = flash::MakePlan(*Validate(data.problem()));
        ASSERT_EQ(plan.sub_blocks, flash::kMaxSubBlocks);
        ASSERT_EQ(plan.splits, 1);
        data.Poison();
        TileCountScope counted;
        RunAndCheck(data, 2, "items of several row blocks");
        const std::vector<float> several = data.OutputContiguous();
        ASSERT_EQ(one_block.size(), several.size());
        EXPECT_EQ(0, std::memcmp(one_block.data(), several.data(), several.size() * sizeof(float)))
            << "items of several row blocks changed the bits";
        const Expected e = ExpectedTiles(data.problem());
        EXPECT_EQ(counted.counts().full, e.full);
        EXPECT_EQ(counted.counts().partial, e.partial);
        EXPECT_EQ(counted.counts().skipped, e.skipped);
      }
    }
  }
}

// Runs flash on `data` with the softmax taking each tile's maximum itself,
// then given it by the score tile: both match the reference, bit for bit
// alike.
void ExpectScoreTileMaximumKeepsTheBits(ProblemData& data) {
  std::vector<float> own;
  {
    SoftmaxOwnMaxScope scope;
    RunAndCheck(data, 2, "the softmax's own maximum");
    own = data.OutputContiguous();
  }
  data.Poison();
  RunAndCheck(data, 2, "the score tile's maximum");
  const std::vector<float> given = data.OutputContiguous();
  ASSERT_EQ(own.size(), given.size());
  EXPECT_EQ(0, std::memcmp(own.data(), given.data(), given.size() * sizeof(float)))
      << "the score tile's maximum changed the bits";
}

// bf16 on each pair path this CPU has (AMX, and VDPBF16PS: Vdpbf16psScope):
// the softmax given each whole tile's maximum by the
// score tile (col_max) writes the bits it writes when it takes the maximum
// itself, for dense and causal (whole and partial tiles), d = 64 and 128
// and both tile sizes.
TEST(FlashTiles, ScoreTileMaximumGivesTheSameBits) {
  if (ukernels::Bf16KernelsForCpu() == nullptr) {
    GTEST_SKIP() << "needs AVX512_BF16: this CPU lacks it";
  }
  for (const bool no_amx : {false, true}) {
    std::optional<Vdpbf16psScope> pairs;
    if (no_amx) pairs.emplace();
    for (const int64_t keys : {int64_t{0}, int64_t{64}}) {
      KeyTileScope tiles(keys);
      for (const MaskKind mask : {MaskKind::kNone, MaskKind::kCausal}) {
        for (const int64_t d : {64, 128}) {
          SCOPED_TRACE(std::string(mask == MaskKind::kNone ? "dense" : "causal") + ", d = " +
                       std::to_string(d) + (keys ? ", 64-key tiles" : ", default tiles") +
                       (no_amx ? ", VDPBF16PS (ATTNLAB_NO_AMX=1)" : ""));
          ProblemSpec spec = Spec({1, 2, 2, 700, 700, d, d}, mask, 45);
          spec.dtypes = {DType::kBF16, DType::kBF16, DType::kBF16, DType::kBF16};
          ProblemData data(spec);
          ExpectScoreTileMaximumKeepsTheBits(data);
        }
      }
    }
  }
}

// fp32: the online softmax given each whole tile's maximum by the score tile
// (ScoreTile's col_max) writes the bits it writes when it takes the maximum
// itself: dense and causal (whole and partial tiles), d = 64 and 128, with
// and without a softcap and an ALiBi bias (both applied in the score tile,
// before the maximum), both tile sizes.
TEST(FlashTiles, F32ScoreTileMaximumGivesTheSameBits) {
  const std::vector<float> slopes = {0.5f, 0.03125f};
  for (const int64_t keys : {int64_t{0}, int64_t{64}}) {
    KeyTileScope tiles(keys);
    for (const MaskKind mask : {MaskKind::kNone, MaskKind::kCausal}) {
      for (const int64_t d : {64, 128}) {
        for (const bool softcap : {false, true}) {
          for (const bool alibi : {false, true}) {
            SCOPED_TRACE(std::string(mask == MaskKind::kNone ? "dense" : "causal") + ", d = " +
                         std::to_string(d) + (keys ? ", 64-key tiles" : ", default tiles") +
                         (softcap ? ", softcap 2" : "") + (alibi ? ", ALiBi" : ""));
            ProblemSpec spec = Spec({1, 2, 2, 700, 700, d, d}, mask, 46);
            ProblemData data(spec);
            if (softcap) data.problem().modifiers.softcap = 2.0f;
            if (alibi) data.problem().modifiers.alibi_slopes = slopes;
            ExpectScoreTileMaximumKeepsTheBits(data);
          }
        }
      }
    }
  }
}

// The whole kernel grid with short key tiles (16 and 64 keys): its sequences
// (up to 3001 keys, mostly under 130) then cross many tiles, so online-softmax
// rescaling, partial and skipped tiles and split merges run for every mask
// kind, layout and head dim, as they do on long sequences with the default
// tile of up to kMaxBc keys.
TEST(FlashTiles, ShortTilesMatchReferenceOnGrid) {
  for (int64_t keys : {16, 64}) {
    KeyTileScope tiles(keys);
    for (ProblemSpec spec : GridSpecs()) {
      spec.want_weights = false;
      for (int threads : {1, 2}) {
        ProblemData data(spec);
        SCOPED_TRACE(std::to_string(keys) + "-key tiles, " + spec.Name());
        RunAndCheck(data, threads, "short tiles");
      }
    }
  }
}

// Working memory is independent of Lq and Lk: the declared workspace at
// N = 32768 (dk = dv = 64, B = H = 1) is under 4 MiB and equals that at
// N = 8192; a real run at N = 32768 takes no more than it declares.
TEST(FlashWorkspace, LongSequenceUnder4MiB) {
  const int64_t n = 32768, d = 64;
  std::vector<float> q(n * d), k(n * d), v(n * d), o(n * d, kNaN), lse(n, kNaN);
  for (int64_t i = 0; i < n * d; ++i) {
    q[i] = std::sin(0.37 * i);
    k[i] = std::cos(0.11 * i);
    v[i] = std::sin(0.05 * i + 1);
  }
  Problem p = MakeProblem(Shape{1, 1, 1, n, n, d, d}, q.data(), k.data(), v.data(), o.data());
  p.lse = lse;
  p.mask.kind = MaskKind::kCausal;
  for (int threads : {1, 2}) {
    RunOptions options;
    options.threads = threads;
    auto valid = Prepare(Flash(), p, options);
    ASSERT_TRUE(valid.ok()) << valid.status().ToString();
    const size_t declared = Flash().workspace_bytes(*valid, threads);
    EXPECT_LT(declared, size_t{4} << 20) << threads << " threads";
    // (From N = 16384 items take the most row blocks, kMaxSubBlocks: 32
    // items of 8 blocks.)
    Problem small =
        MakeProblem(Shape{1, 1, 1, 16384, 16384, d, d}, q.data(), k.data(), v.data(), o.data());
    EXPECT_EQ(declared, Flash().workspace_bytes(*Validate(small), threads));
  }
  RunOptions options;
  options.threads = 2;
  RunStats stats;
  ASSERT_TRUE(attn::Run(Flash(), p, options, &stats).ok());
  EXPECT_LE(stats.workspace_peak_bytes, stats.workspace_declared_bytes);
  EXPECT_LT(stats.workspace_peak_bytes, size_t{4} << 20);
  std::printf("N=32768 causal: workspace declared %zu B, measured %zu B\n",
              stats.workspace_declared_bytes, stats.workspace_peak_bytes);
  // Spot-check rows against a direct double-precision computation.
  for (int64_t i : {int64_t{0}, int64_t{12345}, n - 1}) {
    std::vector<double> s(i + 1);
    double mx = -1e300;
    for (int64_t j = 0; j <= i; ++j) {
      double dot = 0;
      for (int64_t x = 0; x < d; ++x) dot += double(q[i * d + x]) * k[j * d + x];
      s[j] = dot / std::sqrt(double(d));
      mx = std::max(mx, s[j]);
    }
    double sum = 0;
    std::vector<double> acc(d, 0.0);
    for (int64_t j = 0; j <= i; ++j) {
      const double w = std::exp(s[j] - mx);
      sum += w;
      for (int64_t x = 0; x < d; ++x) acc[x] += w * v[j * d + x];
    }
    for (int64_t x = 0; x < d; ++x) {
      // Bound: |v| <= 1 and the ErrorBound terms for Lk <= 32768 (<< 1e-2).
      EXPECT_NEAR(o[i * d + x], acc[x] / sum,
                  4 * (2 * (d + 2) * 8.0 + 8 + 2 * (i + 1) + 4) * 0x1p-24)
          << "row " << i << " col " << x;
    }
    EXPECT_NEAR(lse[i], mx + std::log(sum), 1e-4) << "row " << i;
  }
}

// Decode shapes take the split-key path; the result matches the reference
// and is bitwise identical for 1 and 2 threads (splits depend on the shape
// only).
TEST(FlashDecode, SplitKeysMatchReference) {
  struct Case {
    Shape shape;
    MaskKind mask;
    std::vector<int32_t> key_lengths;
  };
  const Case cases[] = {
      {{1, 8, 8, 1, 4096, 64, 64}, MaskKind::kNone, {}},
      {{1, 8, 2, 1, 4096, 128, 128}, MaskKind::kNone, {}},  // GQA 4
      {{1, 8, 1, 1, 5000, 64, 72}, MaskKind::kCausal, {}},  // MQA
      {{2, 4, 2, 3, 4100, 64, 64}, MaskKind::kAdditive, {}},
      {{2, 4, 4, 1, 4096, 64, 64}, MaskKind::kNone, {3000, 0}},
      {{1, 2, 1, 2, 4096, 32, 32}, MaskKind::kSlidingWindow, {}},
  };
  for (const Case& c : cases) {
    ProblemSpec spec = Spec(c.shape, c.mask, 50);
    spec.key_lengths = c.key_lengths;
    spec.window_left = 1500;
    spec.window_right = 0;
    std::vector<float> outs[2];
    for (int threads : {1, 2}) {
      ProblemData data(spec);
      TileCountScope scope;
      RunAndCheck(data, threads, spec.Name().c_str());
      EXPECT_GT(scope.counts().split_items.load(), 1) << spec.Name();
      outs[threads - 1] = data.OutputContiguous();
    }
    ASSERT_EQ(outs[0].size(), outs[1].size());
    EXPECT_EQ(0, std::memcmp(outs[0].data(), outs[1].data(), outs[0].size() * sizeof(float)))
        << spec.Name() << ": 1 and 2 threads differ";
  }
}

#if defined(__x86_64__) || defined(__i386__)
// flash flushes subnormal results to zero (kernels/internal/flush_subnormals.h)
// and leaves the caller's floating-point mode as it found it, whether or not
// the caller flushes. Steep ALiBi slopes spread each row's weights over the
// whole exponent range and V of 1e-30 makes most products subnormal: flushed,
// flash stays within the bound. (Its flush term, reference/error_bound.h, is
// far from binding here: logits spread that wide already widen the bound by
// ~1e-3·Vmax, and the flushes lose under n·2^-126. A build whose scope did not
// restore the mode fails this test.)
TEST(FlashSubnormals, FlushedWithinTheBoundAndModeRestored) {
  for (const bool caller_ftz : {false, true}) {
    const testing::CallerFtzScope caller(caller_ftz);
    const unsigned before = testing::FpControlMode();
    for (const int64_t lq : {int64_t{1}, int64_t{300}}) {  // decode and tiles
      ProblemData data(Spec({1, 2, 2, lq, 2048, 64, 64}, MaskKind::kCausal, 11));
      for (int64_t x = 0; x < 2 * 2048 * 64; ++x) data.v_data()[x] *= 1e-30f;
      const std::vector<float> slopes = {2.0f, 0.25f};
      data.problem().modifiers.alibi_slopes = slopes;
      for (int threads : {1, 2}) {
        RunAndCheck(data, threads, ("Lq " + std::to_string(lq)).c_str());
        EXPECT_EQ(testing::FpControlMode(), before) << "the caller's floating-point mode changed";
      }
    }
  }
}
#endif

// The kernel on every Highway target this machine supports, on a few grid
// shapes with every mask kind.
TEST(FlashTargets, EveryCompiledTargetMatchesReference) {
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  std::vector<ProblemSpec> specs;
  const std::vector<ProblemSpec> grid = GridSpecs();
  for (size_t i = 0; i < grid.size(); i += 7) specs.push_back(grid[i]);
  for (ProblemSpec& s : specs) s.want_weights = false;
  specs.push_back(Spec(Shape{1, 2, 1, 1, 3000, 40, 24}, MaskKind::kCausal, 77));  // split path
  // Few-row blocks with head dims that leave vector tails, on misaligned,
  // padded rows: tails must not read past a row or assume alignment.
  // 2, 3 and 4 rows per block with dk = 64 and 128 (dk = 8 vectors on AVX2
  // and AVX-512: Q held in registers), key counts that leave a 4-key tail.
  specs.push_back(Spec(Shape{1, 4, 2, 1, 203, 128, 128}, MaskKind::kNone, 81));
  specs.push_back(Spec(Shape{2, 6, 2, 1, 150, 128, 96}, MaskKind::kCausal, 82));
  specs.push_back(Spec(Shape{1, 4, 1, 1, 203, 64, 64}, MaskKind::kNone, 83));
  // 4 rows at dk = dv = 128: one-pass scores and P·V on AVX-512.
  specs.push_back(Spec(Shape{1, 8, 2, 1, 203, 128, 128}, MaskKind::kAdditive, 85));
  specs.push_back(Spec(Shape{1, 2, 1, 2, 301, 64, 40}, MaskKind::kAdditive, 84));
  for (int64_t dk : {3, 19}) {
    ProblemSpec few = Spec(Shape{1, 2, 1, 2, 37, dk, dk + 2}, MaskKind::kSlidingWindow, 78 + dk);
    few.window_left = 20;
    few.misalign = true;
    few.row_pad = 1;
    specs.push_back(few);
  }
  for (int64_t target : targets) {
    hwy::SetSupportedTargetsForTest(target);
    for (int64_t keys : {0, 16}) {  // the default tile, and 16-key tiles
      KeyTileScope tiles(keys);
      for (const ProblemSpec& spec : specs) {
        ProblemData data(spec);
        SCOPED_TRACE(std::string(hwy::TargetName(target)) + " " + spec.Name() + " tile " +
                     std::to_string(keys));
        RunAndCheck(data, 2, hwy::TargetName(target));
      }
    }
  }
  hwy::SetSupportedTargetsForTest(0);
  EXPECT_GE(targets.size(), 1u);
}

// Reduced types on every Highway target this machine supports. bf16 Q, K
// and V: the 16-lane target takes the AMX tiles where the CPU has AMX-BF16
// and dk is a multiple of 32, else the VDPBF16PS tiles where it has
// AVX512_BF16 and the tuning lets VDPBF16PS run (DefaultVdpbf16ps; the
// second round forces it: Vdpbf16psScope) (RunStats says which), else and
// on every other target tiles converted to fp32; all match the reference
// within the bf16 bound (P rounded to bf16
// before P·V), on shapes with one and several key tiles, masks that make
// partial tiles, a dv that is not a whole vector and decode blocks (1-4
// rows, d = 32-256, odd key counts: bf16 K or V of 2-4 rows on VDPBF16PS
// where the CPU has AVX512_BF16 and the tuning lets it (bf16_decode.h), else
// read in place by the
// typed decode kernels; dk = 40 and 8 rows: those, or converted in
// chunks). f16, int8 and fp32-Q-with-bf16-K/V take the same decode shapes;
// int8 K or V of 1-4 rows runs on VPDPWSSD where the CPU has AVX512_VNNI
// (i8_decode.h; Q and the weights quantized to int16), which the path says.
// A third round with ATTNLAB_PORTABLE=1 runs the typed decode kernels
// where the second would take VDPBF16PS or VPDPWSSD.
TEST(FlashTargets, ReducedTypesOnEveryPathMatchReference) {
  const bool has_bf16 = ukernels::CpuHasAvx512Bf16();
  std::vector<ProblemSpec> specs = {
      Spec(Shape{1, 2, 1, 96, 700, 64, 64}, MaskKind::kCausal, 91),
      Spec(Shape{2, 2, 2, 70, 130, 128, 40}, MaskKind::kAdditive, 92),
      Spec(Shape{1, 4, 4, 33, 1500, 32, 32}, MaskKind::kSlidingWindow, 93),
      Spec(Shape{1, 8, 2, 1, 2000, 128, 128}, MaskKind::kNone, 94),
      Spec(Shape{1, 2, 2, 1, 1499, 64, 64}, MaskKind::kNone, 95),
      Spec(Shape{1, 4, 1, 1, 1100, 40, 40}, MaskKind::kCausal, 96),
      Spec(Shape{1, 4, 1, 2, 1100, 64, 64}, MaskKind::kAdditive, 97),
      Spec(Shape{1, 6, 2, 1, 1301, 96, 96}, MaskKind::kNone, 98),
      Spec(Shape{1, 4, 2, 1, 777, 32, 256}, MaskKind::kNone, 99),
      // Few keys, odd: a missing or doubled key is 1/45 of O, which the
      // bound sees (among 1500 keys the rounding of P hides it).
      Spec(Shape{2, 8, 2, 1, 45, 64, 64}, MaskKind::kNone, 100),
      // With fp32 Q and int8 K, Q and K may each round to bf16, which moves
      // a logit by 2^-7 of its magnitude: the bound of these shapes is ~15%
      // of Vmax, so only 3 or 4 keys make a missing odd or even last key
      // visible (a third or a quarter of O).
      Spec(Shape{2, 8, 2, 1, 4, 64, 64}, MaskKind::kNone, 101),
      Spec(Shape{1, 6, 2, 1, 3, 128, 96}, MaskKind::kNone, 102),
  };
  specs[2].window_left = 300;
  for (ProblemSpec& spec : specs) {
    spec.want_weights = false;
    spec.dtypes = {DType::kBF16, DType::kBF16, DType::kBF16, DType::kBF16};
  }
  // The decode shapes with f16 and int8 K/V (flash's other decode types)
  // and with fp32 Q beside bf16 K/V (Q rounded to bf16 for VDPBF16PS).
  for (size_t i = 3, n = specs.size(); i < n; ++i) {
    for (const DTypes& t : {DTypes{DType::kF16, DType::kF16, DType::kF16, DType::kF16},
                            DTypes{DType::kF32, DType::kI8, DType::kI8, DType::kF32},
                            DTypes{DType::kBF16, DType::kI8, DType::kBF16, DType::kBF16},
                            DTypes{DType::kF32, DType::kBF16, DType::kBF16, DType::kF32}}) {
      specs.push_back(specs[i]);
      specs.back().dtypes = t;
      specs.back().seed += 100;
    }
  }
  const bool has_amx = ukernels::CpuHasAmxBf16();
  const bool has_vnni = ukernels::CpuHasAvx512Vnni();
  int vdpbf16ps_runs = 0, amx_runs = 0, vnni_runs = 0;
  for (const std::string switch_on : {"", "ATTNLAB_NO_AMX", "ATTNLAB_PORTABLE"}) {
    const bool no_amx = !switch_on.empty(), portable = switch_on == "ATTNLAB_PORTABLE";
    std::optional<ScopedEnv> env;
    std::optional<Vdpbf16psScope> forced;
    if (portable) env.emplace(switch_on.c_str(), "1");
    if (no_amx && !portable) forced.emplace();
    const bool tuned = ActiveTuning().flash_vdpbf16ps;  // VDPBF16PS may run
    for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
      hwy::SetSupportedTargetsForTest(target);
      // The pair tiles are laid out for 16-lane vectors: the AVX-512 targets
      // (AVX3, and AVX3_DL where the compiler builds it).
      const bool sixteen_lanes = target == HWY_AVX3 || target == HWY_AVX3_DL;
      for (const ProblemSpec& spec : specs) {
        const bool pairs = spec.shape.heads / spec.shape.kv_heads * spec.shape.q_len > 8 &&
                           spec.dtypes.k == DType::kBF16 && spec.dtypes.q == DType::kBF16 &&
                           spec.dtypes.v == DType::kBF16 && has_bf16 && sixteen_lanes && !portable;
        const bool amx = pairs && has_amx && !no_amx && spec.shape.head_dim % 32 == 0;
        const bool decode =
            ukernels::Bf16DecodeTakesRows(spec.shape.heads / spec.shape.kv_heads *
                                          spec.shape.q_len) &&
            has_bf16 && sixteen_lanes && !portable && tuned &&
            ((spec.dtypes.k == DType::kBF16 && ukernels::Bf16DecodeTakesDk(spec.shape.head_dim)) ||
             (spec.dtypes.v == DType::kBF16 && ukernels::Bf16DecodeTakesDv(spec.shape.value_dim)));
        const bool int8_decode =
            ukernels::I8DecodeTakesRows(spec.shape.heads / spec.shape.kv_heads *
                                        spec.shape.q_len) &&
            has_vnni && sixteen_lanes && !portable &&
            ((spec.dtypes.k == DType::kI8 && ukernels::I8DecodeTakesDk(spec.shape.head_dim)) ||
             (spec.dtypes.v == DType::kI8 && ukernels::I8DecodeTakesDv(spec.shape.value_dim)));
        ProblemData data(spec);
        RunStats stats;
        ASSERT_TRUE(attn::Run(Flash(), data.problem(), OnThreads(2), &stats).ok());
        const std::string trace = std::string(hwy::TargetName(target)) + " " + spec.Name() +
                                  (portable ? " ATTNLAB_PORTABLE=1"
                                   : no_amx ? " VDPBF16PS (ATTNLAB_NO_AMX=1)"
                                            : "");
        const bool on_amx = stats.path.find("AMX_BF16") != std::string::npos;
        const bool on_vdpbf16ps = stats.path.find("AVX512_BF16") != std::string::npos;
        EXPECT_EQ(on_amx, amx) << trace << ": path " << stats.path;
        EXPECT_EQ(on_vdpbf16ps, (pairs && !amx && tuned) || decode)
            << trace << ": path " << stats.path;
        const bool on_vnni = stats.path.find("AVX512_VNNI") != std::string::npos;
        EXPECT_EQ(on_vnni, int8_decode) << trace << ": path " << stats.path;
        vnni_runs += on_vnni;
        vdpbf16ps_runs += on_vdpbf16ps;
        amx_runs += on_amx;
        const Comparison c = CompareToReference(data, *reference::Attention(data.problem(), false));
        EXPECT_TRUE(c.ok) << trace << " (" << stats.path << "): " << c.first_failure;
      }
    }
    hwy::SetSupportedTargetsForTest(0);
  }
  if (has_vnni) {
    EXPECT_GT(vnni_runs, 0);
  }
  if (!has_bf16) GTEST_SKIP() << "this CPU lacks AVX512_BF16: only the portable path was tested";
  EXPECT_GT(vdpbf16ps_runs, 0);
  if (!has_amx) GTEST_SKIP() << ukernels::AmxBf16Unavailable() << ": AMX tiles not tested";
  EXPECT_GT(amx_runs, 0);
}

}  // namespace
}  // namespace attn::testing
