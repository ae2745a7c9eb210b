// blas: the materializing algorithm with OpenBLAS doing both products.
//
// Per (batch b, head h), over an Lq x Lk score matrix, in panels of
// kPanelRows query rows (each panel a horizontal slice of the matrix):
//   1. S = Q·Kᵀ with cblas_sgemm (M = panel rows, N = keys, K = dk; the row
//      strides of the strided Q/K views are the leading dimensions, so both
//      layouts go straight in, no copies).
//   2. Scale + mask + softmax fused in one vectorized pass per row
//      (SoftmaxRows, kernels/internal/rows.h): x = s·scale (+ mask), row max, then
//      e^(x - max) and the row sum while the row is still in L1. Hidden keys
//      are set to 0. Normalization is deferred to O (Lq·dv multiplies instead
//      of Lq·Lk).
//   3. O = P·V with cblas_sgemm (M = panel rows, N = dv, K = keys) written
//      straight into the strided O; then O /= row sum and lse (FinishRows).
// Each panel's two sgemm calls cover only the union of its rows' visible
// keys, so causal costs about half the FLOPs of dense (+ kPanelRows/Lq). The
// P·V sgemm then spans keys some rows must not see, where p = 0 exactly:
// safe unless that V row holds NaN/inf (0·NaN = NaN). So with a structural
// mask each panel's V range is scanned first (O(keys·dv), against the
// O(rows·keys·dv) product) and a panel with a non-finite V row falls back to
// per-row accumulation over each row's own visible keys (RowsTimesV).
// kPanelRows = 256: sgemm with M = 256 runs as fast as with M = Lq (the
// chunked variant's measurements: C = 256 is within noise of the best), the
// wasted triangle per causal panel is 128 rows, ~3% of the work at
// Lq = 4096, and panels are the unit of parallelism inside a head.
//
// Threads: OpenBLAS always runs single-threaded (ScopedThreads(1); the
// OpenMP build of OpenBLAS also does that by itself inside a parallel
// region) and OpenMP does all the splitting. B·H >= threads: one head per
// thread, each with its own matrix. B·H < threads: heads one at a time, one
// matrix, its panels spread over the threads (dynamic schedule: causal panels
// of unequal cost balance). Why not OpenBLAS's own threads for small B·H:
// a multithreaded sgemm gives different bits from a single-threaded one
// (measured: B = H = 1, N = 1000, 1 vs 2 threads), while fixed panels make
// every row's result independent of the thread count (deterministic = true);
// and one level of parallelism never oversubscribes (threads = cores).
//
// Memory traffic per head (4-byte floats): reads Q (Lq·dk), K (Lk·dk), V
// (Lk·dv) about once (sgemm blocks them in cache); writes S (Lq·Lk), reads and
// writes it in the softmax pass, reads it once more for P·V: about
// 4·4·Lq·Lk bytes of score traffic, which dominates for d <= 128 once the
// matrix leaves L2 (Lq·Lk > 256K floats). Writes O (Lq·dv) twice (sgemm, then
// the 1/sum scale). Optional weights: Lq·Lk more written.
// Performance model (dense, per head): 4·Lq·Lk·d FLOPs, all in sgemm; Lq·Lk
// exps; ~16·Lq·Lk bytes of score traffic (a 256-row panel, 256·Lk floats,
// stays in L2/L3 between its passes). Bound by sgemm FMA throughput: a perf
// profile (N = 2048, d = 64, H = 8, 1 thread) puts ~70% of the time in
// OpenBLAS's sgemm kernel and packing, ~12% in the softmax pass, ~3% in the
// beta = 0 clearing of S and ~2% in first-touch page faults of the matrix.
// Measured on the shared 2-core machine: 0.65-1.0 of the rate of a 2048^3
// sgemm timed in the same run (1 thread), lower at N = 4096 where the full
// matrix (64 MiB per head) is written and the page faults grow.
// Working set: Lq·Lk + 2·Lq floats per concurrent head (matrix, row max, row
// sum); declared exactly (BlasWorkspaceBytes is what RunBlas allocates).
#include <algorithm>

#include "kernels/internal/f32_copy.h"
#include "kernels/internal/gemm_rows.h"
#include "kernels/internal/parallel.h"
#include "kernels/internal/thread_scope.h"
#include "kernels/registry.h"

namespace attn {
namespace {

constexpr int64_t kPanelRows = 256;

// Floats per matrix: Lq x Lk scores, then Lq row maxima and Lq row sums.
int64_t MatrixFloats(const ValidProblem& p) { return p.shape.q_len * (p.shape.kv_len + 2); }

size_t BlasWorkspaceBytes(const ValidProblem& p, int threads) {
  if (p.shape.q_len == 0) return 0;
  return (SaturatingSize(HeadsInFlight(p.shape.batch * p.shape.heads, threads)) * MatrixFloats(p) *
          sizeof(float))
      .value();
}

// One (b, h) on `threads` threads (panels in parallel).
void AttendHead(const ValidProblem& p, int64_t b, int64_t h, float* matrix, int threads) {
  const int64_t lq = p.shape.q_len, lk = p.shape.kv_len;
  float* row_max = matrix + lq * lk;
  float* row_sum = row_max + lq;
  const int64_t panels = (lq + kPanelRows - 1) / kPanelRows;
  ParallelFor(threads, panels, [&](int64_t panel) {
    const int64_t r0 = panel * kPanelRows;
    GemmAttendRows(p, b, h, r0, std::min(kPanelRows, lq - r0), matrix + r0 * lk, row_max + r0,
                   row_sum + r0);
  });
}

Status RunBlas(const ValidProblem& p, ExecContext& ctx) {
  if (p.shape.q_len == 0) return Status::Ok();
  const int64_t floats = MatrixFloats(p);
  auto scratch = ctx.workspace->Allocate<float>(
      HeadsInFlight(p.shape.batch * p.shape.heads, ctx.threads) * floats);
  // Single-threaded sgemm, also when ParallelFor runs without a parallel
  // region (one thread, or one item).
  ScopedThreads blas_threads(1);
  ForEachHead(p.shape.batch, p.shape.heads, ctx.threads, scratch.data(), floats,
              [&](int64_t b, int64_t h, float* matrix, int row_threads) {
                AttendHead(p, b, h, matrix, row_threads);
              });
  return Status::Ok();
}

}  // namespace

extern const Variant blas_variant = {
    .name = "blas",
    .summary = "OpenBLAS sgemm for Q·Kᵀ and P·V, fused vectorized scale+mask+softmax, Lq x Lk",
    .run = RunOnF32<RunBlas>,
    .workspace_bytes = F32Workspace<BlasWorkspaceBytes>,
    .supports_weights = true,
    .materializes_scores = true,
    .uses_highway = true,
    .deterministic = true,
    .dtypes = {.q = kFloatDTypes, .kv = kAllDTypes, .o = kFloatDTypes},
};

}  // namespace attn
