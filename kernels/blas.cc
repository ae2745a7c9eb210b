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
//
// The backward pass (dQ, dK, dV) is five more sgemm calls per panel: see
// "backward" below.
#include <cblas.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>

#include "kernels/internal/f32_copy.h"
#include "kernels/internal/gemm_rows.h"
#include "kernels/internal/parallel.h"
#include "kernels/internal/rows.h"
#include "kernels/internal/thread_scope.h"
#include "kernels/registry.h"

namespace attn {
namespace {

constexpr int64_t kPanelRows = 256;

// Floats per matrix: Lq x Lk scores, then Lq row maxima and Lq row sums.
int64_t MatrixFloats(const ValidProblem& p) { return p.shape.q_len * (p.shape.kv_len + 2); }

size_t BlasWorkspaceBytes(const ValidProblem& p, int threads) {
  if (p.shape.q_len == 0) return 0;
  return InFlightScratchBytes(p.shape.batch * p.shape.heads, threads, MatrixFloats(p));
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

// ---------------------------------------------------------------- backward
//
// The backward (kernels/problem.h, "backward") as five sgemm products over
// panels of kPanelRows query rows. Per (batch b, kv head kvh) group, its
// query heads in order, each head's panels in order; for a panel of rows R
// and K = the union of its rows' visible keys (BlockKeys):
//   1. S = Q_R·K_Kᵀ                      sgemm M = |R|, N = |K|, K = dk
//   2. dP = dO_R·V_Kᵀ                    sgemm M = |R|, N = |K|, K = dv
//   3. per row (GradRows): D_i = Σ_d dO_id·O_id; for its visible keys
//      P = e^(S·scale (+ mask) - lse_i), dS = P·(dP - D_i); every other
//      pair of the panel (structurally hidden, or a fully masked row:
//      lse = -inf) gets P = dS = 0 exactly, never computed from S or dP.
//   4. dV_K += Pᵀ·dO_R                    sgemm M = |K|, N = dv, K = |R|
//   5. dK_K += scale·dSᵀ·Q_R              sgemm M = |K|, N = dk, K = |R|
//   6. dQ_R = scale·dS·K_K                sgemm M = |R|, N = dk, K = |K|
// dK and dV start at 0 and take the panels (and the group's heads) in order,
// sgemm adding each panel into them (beta = 1); sums over keys (dQ) are
// blocked inside sgemm (its K blocking, a few hundred), over query rows by
// the panels: never one running sum over all of Lk or Lq.
// NaN: products 4-6 multiply the panel's zeros (hidden pairs, fully masked
// rows) by Q, dO and K rows, and 0·NaN = NaN, 0·inf = NaN: a NaN in a hidden
// key's K row or a masked row's Q or dO would reach rows and keys it must not
// (products 1-2 are safe: their hidden entries are overwritten, not
// multiplied). So a panel with any such zero first checks that its Q and dO
// rows and K_K are finite (O(|R|·(dk + dv) + |K|·dk) against the products'
// O(|R|·|K|·d)) and otherwise takes the three gradient products as loops over
// each row's own visible keys (GradsByRows). V is never multiplied by a zero
// we made, so it needs no check. Strides that BLAS cannot take (a row stride
// below the row width, or beyond int) use the same loops, and dot products
// for S and dP.
//
// FLOPs: the five products of a panel cost 2·|R|·|K|·(3·dk + 2·dv) (dk for S,
// dQ and dK, dv for dP and dV) whatever the mask: counted over the panel's
// rectangle, not its visible pairs. Dense that is 2·Lq·Lk·(3·dk + 2·dv) per
// head, as the visible-pairs count; causal computes the full diagonal panel
// (the wasted triangle, 128 rows of 256 on average per panel, ~3% at
// Lq = 4096 and more at small Lq), a window every panel's union band. The
// masked part is wasted work; rates quoted over visible pairs understate
// what the products ran.
// Memory traffic per panel: S and dP (2·|R|·|K| floats) written by sgemm,
// read and written once by GradRows, read by the three gradient products
// (~5 passes over 2 KiB-per-key panel rows: 256·Lk·4·2 bytes = 2 MiB at
// Lk = 1024, in L2/L3); Q_R, dO_R, O_R once; K_K and V_K once per panel
// (Lq/256 times per head); dK_K and dV_K read and written once per panel.
// Working set: two |R| x Lk panel matrices per group in flight, 2·256·Lk
// floats (8 MiB at Lk = 4096): materializes_scores, declared exactly.
// Threads: at least as many groups (B·Hkv) as threads, one group per OpenMP
// thread with single-threaded sgemm; otherwise groups one at a time with
// OpenBLAS running each product on the threads (never both: no
// oversubscription). A group's dK, dV sums are formed in one fixed order
// either way: deterministic at a given thread count.

// Floats per group in flight: a panel of S/P, a panel of dP/dS.
int64_t PanelRows(const ValidProblem& p) { return std::min(kPanelRows, p.shape.q_len); }
int64_t BackwardScratch(const ValidProblem& p) { return 2 * PanelRows(p) * p.shape.kv_len; }

size_t BlasBackwardWorkspaceBytes(const ValidGradProblem& g, int threads) {
  const ValidProblem& p = g.forward;
  return InFlightScratchBytes(p.shape.batch * p.shape.kv_heads, threads, BackwardScratch(p));
}

float Dot(const float* x, const float* y, int64_t n) {
  float sum = 0.0f;
  for (int64_t d = 0; d < n; ++d) sum += x[d] * y[d];
  return sum;
}

bool RowFinite(const float* x, int64_t n) {
  bool finite = true;
  for (int64_t d = 0; d < n; ++d) finite &= std::isfinite(x[d]);
  return finite;
}

// The panel's rows, their keys and the BLAS view of every operand.
struct Panel {
  int64_t b, h, kvh, r0, rows;
  KeyRange keys;  // union of the rows' visible keys
  int64_t ld;     // of the panel matrices: |keys| (> 0)
  float* s;       // S, then P
  float* dp;      // dP, then dS
};

// Steps 1-2 by dot products over each row's visible keys (strides BLAS
// cannot take); the other entries are left as they are (GradRows overwrites
// them).
void ScoresByRows(const ValidGradProblem& g, const Panel& pn) {
  const ValidProblem& p = g.forward;
  for (int64_t r = 0; r < pn.rows; ++r) {
    const KeyRange keys = g.GradKeys(pn.b, pn.h, pn.r0 + r);
    const float* q = p.QRow(pn.b, pn.h, pn.r0 + r);
    const float* d_o = g.DoRow(pn.b, pn.h, pn.r0 + r);
    for (int64_t j = keys.begin; j < keys.end; ++j) {
      pn.s[r * pn.ld + j - pn.keys.begin] = Dot(q, p.KRow(pn.b, pn.kvh, j), p.shape.head_dim);
      pn.dp[r * pn.ld + j - pn.keys.begin] = Dot(d_o, p.VRow(pn.b, pn.kvh, j), p.shape.value_dim);
    }
  }
}

// Step 3: S -> P and dP -> dS in place, 0 outside each row's keys.
void GradRows(const ValidGradProblem& g, const Panel& pn) {
  const ValidProblem& p = g.forward;
  const int64_t cols = pn.keys.size();
  for (int64_t r = 0; r < pn.rows; ++r) {
    const int64_t i = pn.r0 + r;
    float* s = pn.s + r * pn.ld;
    float* dp = pn.dp + r * pn.ld;
    const KeyRange keys = g.GradKeys(pn.b, pn.h, i);
    if (keys.empty()) {
      std::fill_n(s, cols, 0.0f);
      std::fill_n(dp, cols, 0.0f);
      continue;
    }
    const int64_t c0 = keys.begin - pn.keys.begin, c1 = keys.end - pn.keys.begin;
    std::fill_n(s, c0, 0.0f);
    std::fill_n(dp, c0, 0.0f);
    std::fill(s + c1, s + cols, 0.0f);
    std::fill(dp + c1, dp + cols, 0.0f);
    const float lse = g.Lse(pn.b, pn.h, i);
    const float dsum = Dot(g.DoRow(pn.b, pn.h, i), g.ORow(pn.b, pn.h, i), p.shape.value_dim);
    const float* additive = p.AdditiveRow(pn.b, pn.h, i);
    const float scale = p.scale;
    if (additive != nullptr) {
      const float* add = additive + pn.keys.begin;
      for (int64_t c = c0; c < c1; ++c) {
        const float pc = std::exp(s[c] * scale + add[c] - lse);
        s[c] = pc;
        dp[c] = pc * (dp[c] - dsum);
      }
    } else {
      for (int64_t c = c0; c < c1; ++c) {
        const float pc = std::exp(s[c] * scale - lse);
        s[c] = pc;
        dp[c] = pc * (dp[c] - dsum);
      }
    }
  }
}

// Steps 4-6 as loops over each row's own keys: no product with a zero we
// made. dQ sums over keys in blocks of kKeySumBlock; dK, dV over the panel's
// rows (fewer than kKeySumBlock). Partial sums per kChunk columns, on the
// stack (no allocation outside the workspace).
constexpr int64_t kChunk = 16;
void GradsByRows(const ValidGradProblem& g, const Panel& pn) {
  const ValidProblem& p = g.forward;
  const int64_t dk = p.shape.head_dim, dv = p.shape.value_dim;
  for (int64_t r = 0; r < pn.rows; ++r) {
    const KeyRange keys = g.GradKeys(pn.b, pn.h, pn.r0 + r);
    float* dq = g.DqRow(pn.b, pn.h, pn.r0 + r);
    std::fill_n(dq, dk, 0.0f);
    const float* ds = pn.dp + r * pn.ld - pn.keys.begin;  // indexed by key
    for (int64_t j0 = keys.begin; j0 < keys.end; j0 += kKeySumBlock) {
      const int64_t j1 = std::min(keys.end, j0 + kKeySumBlock);
      for (int64_t d0 = 0; d0 < dk; d0 += kChunk) {
        const int64_t n = std::min(kChunk, dk - d0);
        float part[kChunk] = {};
        for (int64_t j = j0; j < j1; ++j) {
          const float* k = p.KRow(pn.b, pn.kvh, j) + d0;
          for (int64_t d = 0; d < n; ++d) part[d] += ds[j] * k[d];
        }
        for (int64_t d = 0; d < n; ++d) dq[d0 + d] += part[d];
      }
    }
    for (int64_t d = 0; d < dk; ++d) dq[d] *= p.scale;
  }
  // out_j += factor·Σ_r m[r][j]·x_r over the rows that see key j.
  auto column = [&](int64_t j, const float* m, auto row, int64_t width, float factor, float* out) {
    for (int64_t d0 = 0; d0 < width; d0 += kChunk) {
      const int64_t n = std::min(kChunk, width - d0);
      float part[kChunk] = {};
      bool any = false;
      for (int64_t r = 0; r < pn.rows; ++r) {
        const KeyRange keys = g.GradKeys(pn.b, pn.h, pn.r0 + r);
        if (j < keys.begin || j >= keys.end) continue;
        any = true;
        const float w = m[r * pn.ld + j - pn.keys.begin];
        const float* x = row(pn.r0 + r) + d0;
        for (int64_t d = 0; d < n; ++d) part[d] += w * x[d];
      }
      if (!any) return;  // no row of the panel sees key j
      for (int64_t d = 0; d < n; ++d) out[d0 + d] += factor * part[d];
    }
  };
  for (int64_t j = pn.keys.begin; j < pn.keys.end; ++j) {
    column(
        j, pn.s, [&](int64_t i) { return g.DoRow(pn.b, pn.h, i); }, dv, 1.0f,
        g.DvRow(pn.b, pn.kvh, j));
    column(
        j, pn.dp, [&](int64_t i) { return p.QRow(pn.b, pn.h, i); }, dk, p.scale,
        g.DkRow(pn.b, pn.kvh, j));
  }
}

// One panel of head h: its dQ rows, its share of dK and dV.
void BackwardPanel(const ValidGradProblem& g, int64_t b, int64_t h, int64_t r0, int64_t rows,
                   float* scratch) {
  const ValidProblem& p = g.forward;
  const int64_t dk = p.shape.head_dim, dv = p.shape.value_dim, kvh = p.KvHead(h);
  const KeyRange keys = BlockKeys(p, b, r0, rows);
  const int64_t cols = keys.size();
  if (cols == 0) {  // every row fully masked: dQ = 0, nothing else
    for (int64_t i = r0; i < r0 + rows; ++i) std::fill_n(g.DqRow(b, h, i), dk, 0.0f);
    return;
  }
  const int64_t ld = cols;
  const Panel pn{b, h, kvh, r0, rows, keys, ld, scratch, scratch + PanelRows(p) * p.shape.kv_len};
  const int ldq = LeadingDim(p.q.strides.row, rows, dk);
  const int ldk = LeadingDim(p.k.strides.row, cols, dk);
  const int ldv = LeadingDim(p.v.strides.row, cols, dv);
  const int lddo = LeadingDim(g.d_o.strides.row, rows, dv);
  const int lddq = LeadingDim(g.dq.strides.row, rows, dk);
  const int lddk = LeadingDim(g.dk.strides.row, cols, dk);
  const int lddv = LeadingDim(g.dv.strides.row, cols, dv);
  const bool ints = dk <= INT_MAX && dv <= INT_MAX && cols <= INT_MAX;
  const float* q = p.QRow(b, h, r0);
  const float* k = p.KRow(b, kvh, keys.begin);
  const float* d_o = g.DoRow(b, h, r0);
  if (ints && ldq > 0 && ldk > 0 && ldv > 0 && lddo > 0) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(cols), int(dk), 1.0f, q,
                ldq, k, ldk, 0.0f, pn.s, int(ld));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(rows), int(cols), int(dv), 1.0f, d_o,
                lddo, p.VRow(b, kvh, keys.begin), ldv, 0.0f, pn.dp, int(ld));
  } else {
    ScoresByRows(g, pn);
  }
  GradRows(g, pn);
  // Does the panel hold a zero we made (a pair outside some row's keys)? Then
  // the products may use it only when every operand row it meets is finite.
  bool full = true;
  for (int64_t i = r0; i < r0 + rows && full; ++i) {
    const KeyRange row_keys = g.GradKeys(b, h, i);
    full = row_keys.begin == keys.begin && row_keys.end == keys.end;
  }
  bool finite = full;
  if (!full) {
    finite = true;
    for (int64_t i = r0; i < r0 + rows; ++i) {
      finite &= RowFinite(p.QRow(b, h, i), dk) && RowFinite(g.DoRow(b, h, i), dv);
    }
    for (int64_t j = keys.begin; j < keys.end; ++j) finite &= RowFinite(p.KRow(b, kvh, j), dk);
  }
  if (finite && ints && ldq > 0 && ldk > 0 && lddo > 0 && lddq > 0 && lddk > 0 && lddv > 0) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(cols), int(dv), int(rows), 1.0f, pn.s,
                int(ld), d_o, lddo, 1.0f, g.DvRow(b, kvh, keys.begin), lddv);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(cols), int(dk), int(rows), p.scale,
                pn.dp, int(ld), q, ldq, 1.0f, g.DkRow(b, kvh, keys.begin), lddk);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(dk), int(cols), p.scale,
                pn.dp, int(ld), k, ldk, 0.0f, g.DqRow(b, h, r0), lddq);
  } else {
    GradsByRows(g, pn);
  }
}

// One (b, kv head) group: dK and dV from 0, then its heads' panels in order.
void BackwardGroup(const ValidGradProblem& g, int64_t b, int64_t kvh, float* scratch) {
  const ValidProblem& p = g.forward;
  const int64_t lq = p.shape.q_len;
  for (int64_t j = 0; j < p.shape.kv_len; ++j) {
    std::fill_n(g.DkRow(b, kvh, j), p.shape.head_dim, 0.0f);
    std::fill_n(g.DvRow(b, kvh, j), p.shape.value_dim, 0.0f);
  }
  for (int64_t h = kvh * p.group; h < (kvh + 1) * p.group; ++h) {
    for (int64_t r0 = 0; r0 < lq; r0 += kPanelRows) {
      BackwardPanel(g, b, h, r0, std::min(kPanelRows, lq - r0), scratch);
    }
  }
}

Status RunBlasBackward(const ValidGradProblem& g, ExecContext& ctx) {
  const ValidProblem& p = g.forward;
  const int64_t groups = p.shape.batch * p.shape.kv_heads;
  const int64_t floats = BackwardScratch(p);
  auto scratch = ctx.workspace->Allocate<float>(HeadsInFlight(groups, ctx.threads) * floats);
  if (groups >= ctx.threads) {
    // One group per thread, sgemm single-threaded (also when ParallelFor
    // runs serially).
    ScopedThreads blas_threads(1);
    ParallelFor(ctx.threads, groups, [&](int64_t bk, int thread) {
      BackwardGroup(g, bk / p.shape.kv_heads, bk % p.shape.kv_heads,
                    scratch.data() + thread * floats);
    });
  } else {
    // Fewer groups than threads: each product on OpenBLAS's threads.
    ScopedThreads blas_threads(ctx.threads);
    for (int64_t bk = 0; bk < groups; ++bk) {
      BackwardGroup(g, bk / p.shape.kv_heads, bk % p.shape.kv_heads, scratch.data());
    }
  }
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
    .modifiers = 0,  // refuses softcap, ALiBi and sinks (naive and flash apply them)
    .backward = {.run = RunBlasBackward,
                 .workspace_bytes = BlasBackwardWorkspaceBytes,
                 .materializes_scores = true,
                 .modifiers = 0},  // as its forward
};

}  // namespace attn
