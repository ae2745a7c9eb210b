// Randomized differential test: random small problems, every registry variant
// against the fp64 reference with the derived bound (testing/compare.h).
//
// Each problem draws its shapes (including Lq = 0, Lk = 0, 1, sizes around a
// vector width), GQA ratio, layout (BHLD / BLHD), row padding, misalignment,
// mask (none, causal, sliding window with any sizes, 2-D/4-D additive with
// -inf entries, key lengths incl. 0 and Lk), value range (uniform, large
// logits, near ties), an explicit scale (small to large) or the default,
// lse/weights requests and the thread count (1 or 2). One "case" is one
// problem run by one variant; a problem that asks for lse also runs the
// backward of every variant that has one (its own forward, then its
// backward, against reference::Backward), each an extra case.
//
//   Differential.ShortSlice  2000 cases, in the default ctest run.
//   Differential.Long        ATTNLAB_DIFFERENTIAL_CASES cases (ctest label
//                            `long` sets 100000); skipped when it is unset.
// ATTNLAB_DIFFERENTIAL_SEED changes the base seed. A failure prints the
// problem's seed and description; ATTNLAB_DIFFERENTIAL_SEED=<seed> with
// ATTNLAB_DIFFERENTIAL_CASES=<variants> replays exactly that problem first.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>

#include "kernels/registry.h"
#include "reference/error_bound.h"
#include "reference/reference.h"
#include "testing/compare.h"
#include "testing/grad_data.h"
#include "testing/problem_data.h"

namespace attn::testing {
namespace {

uint64_t EnvU64(const char* name, uint64_t fallback) {
  const char* value = std::getenv(name);
  return value ? std::strtoull(value, nullptr, 10) : fallback;
}

// A random small problem from `seed` alone.
ProblemSpec RandomSpec(uint64_t seed, std::optional<float>* scale, int* threads) {
  std::mt19937_64 rng(seed);
  auto pick = [&](int64_t lo, int64_t hi) {  // uniform in [lo, hi]
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  auto chance = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; };
  ProblemSpec spec;
  spec.seed = seed;
  Shape& s = spec.shape;
  s.batch = pick(1, 3);
  s.kv_heads = pick(1, 3);
  const int64_t groups[] = {1, 1, 2, 3, 4};
  s.heads = s.kv_heads * groups[pick(0, 4)];
  // Lengths: mostly small, sometimes 0 or 1, sometimes around 16 / 32.
  auto length = [&]() -> int64_t {
    const int64_t r = pick(0, 9);
    if (r == 0) return pick(0, 1);
    if (r <= 2) return 15 + pick(0, 2) + 16 * pick(0, 2);
    return pick(2, 40);
  };
  s.q_len = length();
  s.kv_len = chance(0.3) ? s.q_len : length();
  auto dim = [&]() -> int64_t { return chance(0.2) ? 16 * pick(1, 4) + pick(-1, 1) : pick(1, 24); };
  s.head_dim = dim();
  s.value_dim = chance(0.5) ? s.head_dim : dim();

  spec.mask = static_cast<MaskKind>(pick(0, kNumMaskKinds - 1));
  spec.window_left = pick(0, s.kv_len + 3);
  spec.window_right = chance(0.5) ? 0 : pick(0, s.kv_len + 3);
  spec.additive = chance(0.5) ? AdditiveKind::k2D : AdditiveKind::k4D;
  // An empty additive mask would have no storage, and a null mask is invalid.
  if (spec.mask == MaskKind::kAdditive && s.q_len * s.kv_len == 0) spec.mask = MaskKind::kCausal;
  if (chance(0.3)) {
    for (int64_t b = 0; b < s.batch; ++b) {
      const int64_t r = pick(0, 3);
      spec.key_lengths.push_back(int32_t(r == 0 ? 0 : r == 1 ? s.kv_len : pick(0, s.kv_len)));
    }
  }
  spec.layout = chance(0.5) ? Layout::kBHLD : Layout::kBLHD;
  spec.row_pad = chance(0.3) ? pick(1, 5) : 0;
  // Empty tensors need a non-null pointer: the offset gives one element.
  spec.misalign = chance(0.3) || s.q_len == 0 || s.kv_len == 0;
  const int64_t v = pick(0, 9);
  spec.values = v < 7 ? Values::kUniform : v < 9 ? Values::kLargeLogits : Values::kNearTies;
  spec.want_lse = chance(0.7);
  spec.want_weights = chance(0.3);
  const float scales[] = {0.01f, 0.3f, 1.0f, 4.0f, 30.0f};
  *scale = chance(0.3) ? std::optional<float>(scales[pick(0, 4)]) : std::nullopt;
  *threads = int(pick(1, 2));
  return spec;
}

// The backward of every variant that has one on the same problem (when it
// asked for lse, which a backward needs): the variant's own forward, then its
// backward, against reference::Backward within GradErrorBounds. Returns the
// cases run.
uint64_t RunGradCases(ProblemData& data, const ProblemSpec& spec, uint64_t seed, int threads) {
  if (!spec.want_lse) return 0;
  const std::span<float> weights = data.problem().weights;
  data.problem().weights = {};
  GradData grads(data);
  const GradProblem g = grads.grad_problem();
  auto want = reference::Backward(g);
  EXPECT_TRUE(want.ok()) << want.status().ToString() << " seed=" << seed;
  if (!want.ok()) return 0;
  const reference::GradBounds bounds = reference::GradErrorBounds(g, *want);
  uint64_t ran = 0;
  for (const Variant* variant : Registry()) {
    if (!variant->has_backward()) continue;
    Status status = RunForwardForGrad(data, variant->name);
    grads.Poison();
    if (status.ok()) status = RunBackward(*variant, grads.grad_problem(), OnThreads(threads));
    EXPECT_TRUE(status.ok()) << variant->name << " backward: " << status.ToString()
                             << "\n  seed=" << seed << " " << spec.Name();
    if (!status.ok()) break;
    const Comparison c = CompareGradients(grads.grad_problem(), *want, bounds);
    EXPECT_TRUE(c.ok) << c.first_failure << "\n  backward of variant=" << variant->name
                      << " seed=" << seed << " threads=" << threads << "\n  " << spec.Name() << " ("
                      << Describe(spec.shape, data.problem().mask) << ")";
    if (!c.ok) break;
    ++ran;
  }
  data.problem().weights = weights;
  return ran;
}

// Runs `cases` cases (problems x variants) from `base_seed`; stops at the
// first failing problem.
void RunCases(uint64_t cases, uint64_t base_seed) {
  const auto variants = Registry();
  const uint64_t problems = (cases + variants.size() - 1) / variants.size();
  uint64_t ran = 0;
  for (uint64_t n = 0; n < problems; ++n) {
    const uint64_t seed = base_seed + n;
    std::optional<float> scale;
    int threads = 1;
    const ProblemSpec spec = RandomSpec(seed, &scale, &threads);
    ProblemData data(spec);
    data.problem().scale = scale;
    auto want = reference::Attention(data.problem(), spec.want_weights);
    ASSERT_TRUE(want.ok()) << want.status().ToString() << " seed=" << seed << " " << spec.Name();
    const std::span<float> weights = data.problem().weights;
    for (const Variant* variant : variants) {
      data.Poison();
      data.problem().weights = variant->supports_weights ? weights : std::span<float>();
      RunOptions options;
      options.threads = threads;
      const Status status = Run(*variant, data.problem(), options);
      ASSERT_TRUE(status.ok()) << variant->name << ": " << status.ToString() << "\n  seed=" << seed
                               << " " << spec.Name();
      const Comparison c = CompareToReference(data, *want);
      ASSERT_TRUE(c.ok) << c.first_failure << "\n  variant=" << variant->name << " seed=" << seed
                        << " threads=" << threads
                        << " scale=" << (scale ? std::to_string(*scale) : std::string("default"))
                        << "\n  " << spec.Name() << " ("
                        << Describe(spec.shape, data.problem().mask)
                        << ")\n  replay: ATTNLAB_DIFFERENTIAL_SEED=" << seed
                        << " ATTNLAB_DIFFERENTIAL_CASES=" << variants.size()
                        << " differential_test --gtest_filter=Differential.Long";
      ++ran;
    }
    data.problem().weights = weights;
    ran += RunGradCases(data, spec, seed, threads);
  }
  std::printf("differential: %llu cases (%llu problems x %zu variants), seeds %llu..%llu\n",
              static_cast<unsigned long long>(ran), static_cast<unsigned long long>(problems),
              variants.size(), static_cast<unsigned long long>(base_seed),
              static_cast<unsigned long long>(base_seed + problems - 1));
}

TEST(Differential, ShortSlice) { RunCases(2000, EnvU64("ATTNLAB_DIFFERENTIAL_SEED", 1)); }

TEST(Differential, Long) {
  const uint64_t cases = EnvU64("ATTNLAB_DIFFERENTIAL_CASES", 0);
  if (cases == 0)
    GTEST_SKIP()
        << "set ATTNLAB_DIFFERENTIAL_CASES (ctest --test-dir build/release -L long sets 100000)";
  // A different range of seeds from the short slice.
  RunCases(cases, EnvU64("ATTNLAB_DIFFERENTIAL_SEED", 1000000));
}

}  // namespace
}  // namespace attn::testing
