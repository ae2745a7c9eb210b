// Every variant against the fp64 reference on one problem: what `attnlab
// check` prints and `attnlab.check()` returns. The reference and the per-row
// bounds are computed once; each variant then runs on the same outputs,
// poisoned with NaN first so that a row it leaves unwritten fails.
#ifndef ATTNLAB_TESTING_CHECK_H_
#define ATTNLAB_TESTING_CHECK_H_

#include <span>
#include <string>
#include <vector>

#include "kernels/registry.h"
#include "reference/error_bound.h"

namespace attn::testing {

struct VariantCheck {
  const Variant* variant = nullptr;
  // Why Prepare refused it (ResourceExhausted: over the memory budget;
  // Unimplemented: a feature it lacks), or OK when it ran.
  Status refused;
  double ms = 0;            // the kernel's wall time
  std::string path;         // the ISA path that ran (RunStats::path)
  reference::Comparison c;  // O and lse against the reference, within the bound
  bool ran() const { return refused.ok(); }
};

struct CheckResult {
  double reference_ms = 0;
  std::vector<VariantCheck> variants;  // in the order asked for
  // At least one variant ran and every one that ran passed.
  bool ok() const;
};

// Validates `problem` (its O and lse are where each variant writes), computes
// the reference once, then runs and compares each variant. Fails only when the
// problem itself is invalid (Validate's Status) or a variant fails with
// something other than a refusal (its Status, e.g. Internal); a variant
// Prepare refuses for budget or support is recorded, not a failure.
StatusOr<CheckResult> CheckVariants(const Problem& problem,
                                    std::span<const Variant* const> variants,
                                    const RunOptions& options);

// Writes NaN into every element of O (through its strides, in its type) and
// of lse: what a kernel must overwrite.
void PoisonOutputs(const Problem& problem);

}  // namespace attn::testing

#endif  // ATTNLAB_TESTING_CHECK_H_
