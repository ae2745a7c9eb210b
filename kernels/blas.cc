// blas: the materializing algorithm with OpenBLAS doing both products.
//
// Per (batch b, head h), over an Lq x Lk score matrix:
//   1. S = Q·Kᵀ with one cblas_sgemm (M = Lq, N = Lk, K = dk; the row
//      strides of the strided Q/K views are the leading dimensions, so both
//      layouts go straight in, no copies).
//   2. Scale + mask + softmax fused in one vectorized pass per row
//      (SoftmaxRows, kernels/vec-inl.h): x = s·scale (+ mask), row max, then
//      e^(x - max) and the row sum while the row is still in L1. Hidden keys
//      are set to 0. Normalization is deferred to O (Lq·dv multiplies instead
//      of Lq·Lk).
//   3. O = P·V with one cblas_sgemm (M = Lq, N = dv, K = Lk) written straight
//      into the strided O; then O /= row sum and lse (FinishRows).
// With a structural mask (causal, window, key lengths) the head is cut into
// panels of kPanelRows query rows and each panel's two sgemm calls cover only
// the union of its rows' visible keys: causal costs about half the FLOPs of
// dense (+ kPanelRows/Lq). The P·V sgemm then spans keys some rows must not
// see, where p = 0 exactly: safe unless that V row holds NaN/inf (0·NaN =
// NaN). So each panel's V range is scanned first (O(keys·dv), against the
// O(rows·keys·dv) product) and a panel with a non-finite V row falls back to
// per-row accumulation over each row's own visible keys (RowsTimesV).
// kPanelRows = 256: sgemm with M >= 256 runs near its peak, and the wasted
// triangle per panel is 256/2 rows, ~3% of the work at Lq = 4096.
//
// Threads. B·H >= threads: OpenMP over heads, each thread with its own score
// matrix; OpenBLAS runs single-threaded inside the parallel region (the
// OpenMP build of OpenBLAS does that by itself), so threads = cores, never
// more. B·H < threads: heads one at a time, one matrix, sgemm threaded by
// OpenBLAS itself with ctx.threads threads (ScopedBlasThreads sets the count
// and restores it) and the row passes split with ParallelFor. Splitting
// threads between heads and BLAS would need nested parallelism and buys
// nothing when there are enough heads: OpenBLAS's own threading is less
// efficient than one independent head per core (no synchronization).
//
// Memory traffic per head (4-byte floats): reads Q (Lq·dk), K (Lk·dk), V
// (Lk·dv) about once (sgemm blocks them in cache); writes S (Lq·Lk), reads and
// writes it in the softmax pass, reads it once more for P·V: about
// 4·4·Lq·Lk bytes of score traffic, which dominates for d <= 128 once the
// matrix leaves L2 (Lq·Lk > 256K floats). Writes O (Lq·dv) twice (sgemm, then
// the 1/sum scale). Optional weights: Lq·Lk more written.
// Working set: Lq·Lk + 2·Lq floats per concurrent head (matrix, row max, row
// sum); declared exactly (BlasWorkspaceBytes is what RunBlas allocates).
#include <algorithm>

#include "kernels/gemm_rows.h"
#include "kernels/parallel.h"
#include "kernels/registry.h"

namespace attn {
namespace {

constexpr int64_t kPanelRows = 256;

// Score matrices live at once: one per thread, or one shared.
int64_t Matrices(const ValidProblem& p, int threads) {
  return p.shape.batch * p.shape.heads >= threads ? threads : 1;
}

// Floats per matrix: Lq x Lk scores, then Lq row maxima and Lq row sums.
int64_t MatrixFloats(const ValidProblem& p) { return p.shape.q_len * (p.shape.kv_len + 2); }

size_t BlasWorkspaceBytes(const ValidProblem& p, int threads) {
  if (p.shape.q_len == 0) return 0;
  return static_cast<size_t>(Matrices(p, threads) * MatrixFloats(p)) * sizeof(float);
}

void AttendHead(const ValidProblem& p, int64_t b, int64_t h, float* matrix, int threads) {
  const int64_t lq = p.shape.q_len, lk = p.shape.kv_len;
  float* row_max = matrix + lq * lk;
  float* row_sum = row_max + lq;
  const int64_t panel = p.HasStructuralMask() ? kPanelRows : lq;
  for (int64_t r0 = 0; r0 < lq; r0 += panel) {
    const int64_t rows = std::min(panel, lq - r0);
    GemmAttendRows(p, b, h, r0, rows, matrix + r0 * lk, row_max + r0, row_sum + r0, threads);
  }
}

Status RunBlas(const ValidProblem& p, ExecContext& ctx) {
  if (p.shape.q_len == 0) return Status::Ok();
  const int64_t heads = p.shape.batch * p.shape.heads;
  const int64_t floats = MatrixFloats(p);
  auto scratch = ctx.workspace->Allocate<float>(Matrices(p, ctx.threads) * floats);
  if (heads >= ctx.threads) {
    // One head per thread; sgemm single-threaded (also when threads == 1 and
    // ParallelFor runs without a parallel region).
    ScopedBlasThreads blas_threads(1);
    ParallelFor(ctx.threads, heads, [&](int64_t bh) {
      AttendHead(p, bh / p.shape.heads, bh % p.shape.heads, scratch.data() + ThreadIndex() * floats,
                 /*threads=*/1);
    });
  } else {
    ScopedBlasThreads blas_threads(ctx.threads);
    for (int64_t bh = 0; bh < heads; ++bh) {
      AttendHead(p, bh / p.shape.heads, bh % p.shape.heads, scratch.data(), ctx.threads);
    }
  }
  return Status::Ok();
}

}  // namespace

extern const Variant blas_variant = {
    .name = "blas",
    .summary = "OpenBLAS sgemm for Q·Kᵀ and P·V, fused vectorized scale+mask+softmax, Lq x Lk",
    .run = RunBlas,
    .workspace_bytes = BlasWorkspaceBytes,
    .supports_weights = true,
    .materializes_scores = true,
    .uses_highway = true,
    .deterministic = true,
};

}  // namespace attn
