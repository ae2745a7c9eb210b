// A reduced-precision problem seen as fp32, by conversion: how a variant that
// only has fp32 kernels takes every DType (kernels/dtype.h). Every input that
// is not fp32 is converted once into a contiguous [B, heads, L, d] fp32 copy
// in the workspace (int8 rows times their scales), an O that is not fp32 is
// computed into an fp32 buffer and converted back (rounded to nearest even);
// fp32 tensors, the mask, lse and weights are used as they are.
//
// Memory: 4 bytes per element of every converted tensor, declared (the
// budget check covers it): a bf16 K/V cache costs its size twice over, which
// is why flash converts tile by tile instead. Time: one pass over each
// converted tensor, O(B·H·L·d) against the attention's O(B·H·Lq·Lk·d),
// split over the (batch, head) pairs.
#ifndef ATTNLAB_KERNELS_INTERNAL_F32_COPY_H_
#define ATTNLAB_KERNELS_INTERNAL_F32_COPY_H_

#include <cstddef>

#include "kernels/registry.h"

namespace attn {

// Bytes the copies take for `p` (0 when every tensor is fp32).
size_t F32CopyBytes(const ValidProblem& p);

// Runs the fp32 kernel `run` on `p`: directly when every tensor is fp32,
// else on the converted copy, writing O back in its own type.
Status RunOnF32Copy(KernelFn run, const ValidProblem& p, ExecContext& ctx);

// A variant's run/workspace pair wrapped so it takes every DType:
//   .run = RunOnF32<RunNaiveF32>, .workspace_bytes = F32Workspace<NaiveBytes>
template <KernelFn kRun>
Status RunOnF32(const ValidProblem& p, ExecContext& ctx) {
  return RunOnF32Copy(kRun, p, ctx);
}
template <WorkspaceFn kBytes>
size_t F32Workspace(const ValidProblem& p, int threads) {
  // The kernel's own scratch depends on the shape only, not on types or
  // strides, so the original problem sizes it.
  return (SaturatingSize(F32CopyBytes(p)) + SaturatingSize(kBytes(p, threads))).value();
}

}  // namespace attn

#endif  // ATTNLAB_KERNELS_INTERNAL_F32_COPY_H_
