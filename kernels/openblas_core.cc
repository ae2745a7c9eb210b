// OpenBLAS's core for this process: kernels/openblas_core.h says why and when.
#include "kernels/openblas_core.h"

#include <cblas.h>

#include <cstdlib>
#include <string>

#include "kernels/ukernels/bf16_avx512.h"

// OpenBLAS's core selection (driver/others/dynamic.c): quit forgets the
// core, init picks one again, from OPENBLAS_CORETYPE when it is set. Weak:
// a build without DYNAMIC_ARCH has neither, and keeps its one core.
extern "C" {
void gotoblas_dynamic_init(void) __attribute__((weak));
void gotoblas_dynamic_quit(void) __attribute__((weak));
}

namespace attn {

std::string OpenBlasCoreForIsa(bool avx2_fma, bool avx512, bool avx512_bf16) {
  if (avx512 && avx512_bf16) return "Cooperlake";
  if (avx512) return "SkylakeX";
  if (avx2_fma) return "Haswell";
  return "";
}

namespace {

std::string CoreName() {
  const char* name = openblas_get_corename();
  return name != nullptr ? name : "";
}

std::string CoreForThisCpu() {
#if defined(__x86_64__)
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512cd");
  return OpenBlasCoreForIsa(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"), avx512,
                            ukernels::CpuHasAvx512Bf16());
#else
  return "";
#endif
}

OpenBlasCore Choose() {
  OpenBlasCore core;
  core.detected = core.name = CoreName();
  core.chosen_by = "OpenBLAS";
  if (const char* env = std::getenv("OPENBLAS_CORETYPE"); env != nullptr && *env != '\0') {
    // Loaded with the user's choice: what OpenBLAS alone would pick is not known.
    core.detected = "";
    core.chosen_by = "OPENBLAS_CORETYPE";
    return core;
  }
  const std::string wanted = CoreForThisCpu();
  if (core.detected != "Prescott" || wanted.empty()) return core;
  if (gotoblas_dynamic_init == nullptr || gotoblas_dynamic_quit == nullptr) return core;
  setenv("OPENBLAS_CORETYPE", wanted.c_str(), 1);
  gotoblas_dynamic_quit();
  gotoblas_dynamic_init();
  unsetenv("OPENBLAS_CORETYPE");  // children choose for themselves
  core.name = CoreName();
  if (core.name != core.detected) core.chosen_by = "attnlab";
  return core;
}

}  // namespace

const OpenBlasCore& UseOpenBlasCoreForThisCpu() {
  static const OpenBlasCore core = Choose();
  return core;
}

std::string DescribeOpenBlasCore(const OpenBlasCore& core) {
  if (core.chosen_by == "attnlab")
    return "OpenBLAS core " + core.name + " (OpenBLAS chose " + core.detected +
           ", its fallback for a CPU it does not know; OPENBLAS_CORETYPE chooses)";
  if (core.chosen_by == "OPENBLAS_CORETYPE")
    return "OpenBLAS core " + core.name + " (OPENBLAS_CORETYPE)";
  return "OpenBLAS core " + core.name + " (detected by OpenBLAS)";
}

}  // namespace attn
