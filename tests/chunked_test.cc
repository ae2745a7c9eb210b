// The chunked variant's memory promise and its chunk-size knob.
#include <gtest/gtest.h>

#include <cstdlib>
#include <vector>

#include "kernels/internal/bytes.h"
#include "kernels/registry.h"
#include "reference/reference.h"
#include "testing/compare.h"
#include "testing/problem_data.h"

namespace attn::testing {
namespace {

// Restores ATTNLAB_CHUNK_ROWS to unset when the test ends.
class ChunkRowsEnv {
 public:
  explicit ChunkRowsEnv(const char* value) {
    if (value)
      setenv("ATTNLAB_CHUNK_ROWS", value, 1);
    else
      unsetenv("ATTNLAB_CHUNK_ROWS");
  }
  ~ChunkRowsEnv() { unsetenv("ATTNLAB_CHUNK_ROWS"); }
};

const Variant& Chunked() {
  const Variant* v = FindVariant("chunked");
  EXPECT_NE(v, nullptr);
  return *v;
}

// Lq = Lk = 32768, dk = dv = 64, B = H = 1: declared workspace (which the
// grid checks is an upper bound of what the kernel takes) under 64 MiB, while
// a score matrix would need 4 GiB. Validates only: nothing runs.
TEST(ChunkedTest, WorkspaceAt32kIsUnder64MiB) {
  ChunkRowsEnv env(nullptr);
  const int64_t n = 32768, d = 64;
  std::vector<float> q(n * d), k(n * d), v(n * d), o(n * d);
  const Problem p = MakeProblem(Shape{1, 1, 1, n, n, d, d}, q.data(), k.data(), v.data(), o.data());
  for (int threads : {1, 2, 4}) {
    RunOptions options;
    options.threads = threads;
    auto valid = Prepare(Chunked(), p, options);
    ASSERT_TRUE(valid.ok()) << valid.status().ToString();
    const size_t bytes = Chunked().workspace_bytes(*valid, threads);
    EXPECT_LT(bytes, size_t{64} << 20) << threads << " threads: " << FormatBytes(double(bytes));
    EXPECT_GT(bytes, 0u);
  }
  EXPECT_FALSE(Chunked().materializes_scores);
}

// ATTNLAB_CHUNK_ROWS sets C: the declared workspace follows it, and odd
// chunk sizes (boundaries inside causal / window ranges) stay correct.
TEST(ChunkedTest, ChunkRowsKnob) {
  ProblemSpec spec;
  spec.shape = Shape{2, 2, 1, 150, 140, 40, 24};
  spec.mask = MaskKind::kCausal;
  spec.key_lengths = {120, 140};
  spec.want_weights = true;
  spec.seed = 5;
  ProblemData data(spec);
  auto want = reference::Attention(data.problem(), true);
  ASSERT_TRUE(want.ok());
  size_t declared7 = 0, declared64 = 0;
  for (const char* rows : {"7", "64", "1", "1000"}) {
    ChunkRowsEnv env(rows);
    data.Poison();
    RunOptions options;
    options.threads = 2;
    RunStats stats;
    ASSERT_TRUE(attn::Run(Chunked(), data.problem(), options, &stats).ok());
    EXPECT_LE(stats.workspace_peak_bytes, stats.workspace_declared_bytes);
    const Comparison c = CompareToReference(data, *want);
    EXPECT_TRUE(c.ok) << "C=" << rows << ": " << c.first_failure;
    if (std::string(rows) == "7") declared7 = stats.workspace_declared_bytes;
    if (std::string(rows) == "64") declared64 = stats.workspace_declared_bytes;
  }
  // Two threads x C x (Lk + 2) floats.
  EXPECT_EQ(declared7, 2u * 7 * (140 + 2) * sizeof(float));
  EXPECT_EQ(declared64, 2u * 64 * (140 + 2) * sizeof(float));
}

}  // namespace
}  // namespace attn::testing
