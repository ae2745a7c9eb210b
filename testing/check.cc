#include "testing/check.h"

#include <algorithm>
#include <chrono>
#include <limits>

#include "reference/reference.h"
#include "testing/compare.h"

namespace attn::testing {
namespace {

double MillisecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

}  // namespace

bool CheckResult::ok() const {
  bool any_ran = false;
  for (const VariantCheck& v : variants) {
    if (!v.ran()) continue;
    any_ran = true;
    if (!v.c.ok) return false;
  }
  return any_ran;
}

void PoisonOutputs(const Problem& problem) {
  const Shape& s = problem.shape;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> nan_row(static_cast<size_t>(s.value_dim), nan);
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t h = 0; h < s.heads; ++h) {
      for (int64_t i = 0; i < s.q_len; ++i) {
        StoreRow(problem.o.dtype, nan_row.data(), s.value_dim,
                 ValidProblem::Row(problem.o, b, h, i));
      }
    }
  }
  std::fill(problem.lse.begin(), problem.lse.end(), nan);
}

StatusOr<CheckResult> CheckVariants(const Problem& problem,
                                    std::span<const Variant* const> variants,
                                    const RunOptions& options) {
  if (StatusOr<ValidProblem> valid = Validate(problem); !valid.ok()) return valid.status();
  CheckResult result;
  const auto ref_start = std::chrono::steady_clock::now();
  StatusOr<reference::Result> want = reference::Attention(problem);
  if (!want.ok()) return want.status();
  result.reference_ms = MillisecondsSince(ref_start);
  // The bounds depend on the inputs only: computed once for every variant.
  const std::vector<RowBound> bounds = RowBounds(problem);
  for (const Variant* variant : variants) {
    VariantCheck row;
    row.variant = variant;
    PoisonOutputs(problem);
    if (StatusOr<ValidProblem> prepared = Prepare(*variant, problem, options); !prepared.ok()) {
      const StatusCode code = prepared.status().code();
      if (code != StatusCode::kResourceExhausted && code != StatusCode::kUnimplemented) {
        return prepared.status();
      }
      row.refused = prepared.status();
      result.variants.push_back(std::move(row));
      continue;
    }
    RunStats stats;
    // Start OpenMP's thread pool outside the timed region.
#pragma omp parallel num_threads(ResolveThreads(options.threads))
    { [[maybe_unused]] volatile int warm = 0; }
    const auto start = std::chrono::steady_clock::now();
    if (Status s = Run(*variant, problem, options, &stats); !s.ok()) return s;
    row.ms = MillisecondsSince(start);
    row.path = stats.path;
    // O through the problem's strides, and lse, against the contiguous reference.
    row.c = CompareToReference(problem, *want, bounds);
    result.variants.push_back(std::move(row));
  }
  return result;
}

}  // namespace attn::testing
