// OpenBLAS's core for the process (kernels/openblas_core.h): a Prescott
// fallback on a CPU with AVX2 is replaced, a user's OPENBLAS_CORETYPE wins,
// and the variants that call OpenBLAS still match the reference afterwards.
// ctest runs this binary twice: as is, and with OPENBLAS_CORETYPE=Haswell
// (tests/CMakeLists.txt), since the variable is read when OpenBLAS loads.
#include "kernels/openblas_core.h"

#include <gtest/gtest.h>
#include <strings.h>

#include <cstdlib>
#include <string>

#include "kernels/registry.h"
#include "reference/reference.h"
#include "testing/compare.h"
#include "testing/problem_data.h"

namespace attn::testing {
namespace {

bool CpuHasAvx2Fma() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

TEST(OpenBlasCore, CoreForIsa) {
  EXPECT_EQ(OpenBlasCoreForIsa(true, true, true), "Cooperlake");
  EXPECT_EQ(OpenBlasCoreForIsa(true, true, false), "SkylakeX");
  EXPECT_EQ(OpenBlasCoreForIsa(true, false, false), "Haswell");
  EXPECT_EQ(OpenBlasCoreForIsa(false, false, false), "");
}

TEST(OpenBlasCore, ReplacesOnlyThePrescottFallback) {
  const OpenBlasCore& core = UseOpenBlasCoreForThisCpu();
  EXPECT_EQ(&core, &UseOpenBlasCoreForThisCpu()) << "chosen once";
  ASSERT_FALSE(core.name.empty());
  const char* env = std::getenv("OPENBLAS_CORETYPE");
  if (env != nullptr && *env != '\0') {
    EXPECT_EQ(core.chosen_by, "OPENBLAS_CORETYPE");
    EXPECT_EQ(strcasecmp(core.name.c_str(), env), 0) << core.name << " vs " << env;
    EXPECT_EQ(core.detected, "");
    return;
  }
  if (core.detected == "Prescott" && CpuHasAvx2Fma()) {
    EXPECT_EQ(core.chosen_by, "attnlab");
    EXPECT_NE(core.name, "Prescott");
  } else {
    EXPECT_EQ(core.chosen_by, "OpenBLAS") << "detected " << core.detected;
    EXPECT_EQ(core.name, core.detected);
  }
  EXPECT_EQ(std::getenv("OPENBLAS_CORETYPE"), nullptr) << "left set for child processes";
}

// After the swap, OpenBLAS's sgemm (the blas and chunked variants) still
// computes attention within the reference's bound, dense and causal, with
// shapes off every kernel's block size.
TEST(OpenBlasCore, BlasVariantsMatchTheReferenceAfterwards) {
  UseOpenBlasCoreForThisCpu();
  for (const MaskKind mask : {MaskKind::kNone, MaskKind::kCausal}) {
    ProblemSpec spec;
    spec.shape = Shape{1, 2, 2, 77, 131, 72, 40};
    spec.mask = mask;
    spec.seed = 11;
    ProblemData data(spec);
    auto want = reference::Attention(data.problem(), true);
    ASSERT_TRUE(want.ok());
    for (const char* name : {"blas", "chunked"}) {
      const Variant* variant = FindVariant(name);
      ASSERT_NE(variant, nullptr) << name;
      data.Poison();
      ASSERT_TRUE(attn::Run(*variant, data.problem(), RunOptions{}).ok()) << name;
      const Comparison c = CompareToReference(data, *want);
      EXPECT_TRUE(c.ok) << name << ", mask " << int(mask) << ": " << c.first_failure;
    }
  }
}

}  // namespace
}  // namespace attn::testing
