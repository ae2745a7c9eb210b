// chunked: memory-efficient attention, C query rows at a time.
//
// Work items are (batch b, head h, chunk of C query rows). For each item:
//   1. S = Q_chunk·Kᵀ over the union of the chunk's visible keys with one
//      cblas_sgemm (M = C, N <= Lk, K = dk);
//   2. the shared fused scale + mask + softmax pass (SoftmaxRows);
//   3. O_chunk = P·V with one cblas_sgemm (M = C, N = dv, K <= Lk), or the
//      per-row fallback when a non-finite V row sits in a hidden part of the
//      range (see gemm_rows.h); then O /= sum and lse (FinishRows).
// It is the blas variant's algorithm (the same GemmAttendRows) with the
// score matrix cut to C x Lk: working memory C·(Lk + 2) floats per thread
// instead of Lq·Lk per head, and finer-grained parallelism (items across
// heads *and* chunks, dynamic schedule, so causal chunks of unequal cost
// balance). OpenBLAS runs single-threaded inside the OpenMP region.
//
// Choosing C. Each chunk's scores are written by sgemm, read and written by
// the softmax pass and read by the P·V sgemm, so they should stay in L2; but
// every sgemm call also re-packs its K (dk x keys) and V (keys x dv) panels,
// a cost amortized over the C rows, so C must not be small. Default: the
// largest C with C·Lk floats in twice the L2 cache (sysconf; 1 MiB if
// unknown), clamped to [kMinChunkRows, kMaxChunkRows] and to Lq. Twice, and
// the floor, because spilling part of the chunk to L3 is cheap (the softmax
// streams it sequentially; 4 score accesses against dk + dv FMAs per score)
// while small-M sgemm is not. Measured on this machine (Zen 4, 1 MiB L2,
// 1 thread, B=1 H=8, process CPU time relative to the best C; the machine
// was shared, so +-3% is noise):
//   Lk = 1024, d = 64:   C = 32: 1.12   64: 1.04   128: 1.02   256: 1.00
//   Lk = 4096, d = 64:   C = 32: 1.14   64: 1.03   128: 1.00   256: 1.02
//   Lk = 4096, d = 128:  C = 64: 1.08   128: 1.02   256: 1.00
// so the rule picks 256 at Lk = 1024 and 128 at Lk = 4096. The ceiling:
// beyond 256 rows nothing improves (C = 1024 at Lk = 1024: 1.00) and memory
// grows.
// ATTNLAB_CHUNK_ROWS=<n> overrides C (n >= 1; read on every call).
//
// Memory traffic per head: Q (Lq·dk) and O (Lq·dv) once; K and V
// ceil(Lq/C)·Lk·(dk + dv) floats (from L2/L3 when Lk·d fits); scores
// ~4·Lq·Lk float accesses, all in L2 when C·Lk fits.
// Performance model: blas's FLOPs and exps, plus per chunk the sgemm packing
// of the K and V panels (Lk·(dk + dv) floats), ~15% of the time at C = 64 in
// a perf profile; bound by sgemm FMA throughput like blas, with score
// traffic in L2 instead of L3/DRAM.
// Working set / workspace: min(threads, items)·C·(Lk + 2) floats, declared
// exactly (ChunkedWorkspaceBytes is what RunChunked allocates).
// Lq = Lk = 32768, dk = dv = 64, B = H = 1: L2 = 1 MiB gives C = 64 (the
// floor, 2 MiB / 128 KiB = 16 rows), 8.0 MiB per thread.

#include <algorithm>
#include <cstdlib>

#include "kernels/internal/f32_copy.h"
#include "kernels/internal/gemm_rows.h"
#include "kernels/internal/parallel.h"
#include "kernels/internal/thread_scope.h"
#include "kernels/registry.h"

namespace attn {
namespace {

constexpr int64_t kMinChunkRows = 64;
constexpr int64_t kMaxChunkRows = 256;

// C for this problem (see the file comment).
int64_t ChunkRows(const ValidProblem& p) {
  const int64_t lq = std::max<int64_t>(p.shape.q_len, 1);
  if (const char* env = std::getenv("ATTNLAB_CHUNK_ROWS")) {
    const long long rows = std::atoll(env);
    if (rows >= 1) return std::min<int64_t>(rows, lq);
  }
  const int64_t fit = 2 * L2CacheBytes() / (4 * std::max<int64_t>(p.shape.kv_len, 1));
  return std::min(std::clamp(fit, kMinChunkRows, kMaxChunkRows), lq);
}

int64_t Items(const ValidProblem& p, int64_t chunk) {
  return p.shape.batch * p.shape.heads * ((p.shape.q_len + chunk - 1) / chunk);
}

// Per-thread scratch: C x Lk scores, C row maxima, C row sums.
int64_t ThreadFloats(const ValidProblem& p, int64_t chunk) { return chunk * (p.shape.kv_len + 2); }

int64_t Buffers(const ValidProblem& p, int threads, int64_t chunk) {
  return std::min<int64_t>(threads, Items(p, chunk));
}

size_t ChunkedWorkspaceBytes(const ValidProblem& p, int threads) {
  if (p.shape.q_len == 0) return 0;
  const int64_t chunk = ChunkRows(p);
  return (SaturatingSize(Buffers(p, threads, chunk)) * ThreadFloats(p, chunk) * sizeof(float))
      .value();
}

Status RunChunked(const ValidProblem& p, ExecContext& ctx) {
  if (p.shape.q_len == 0) return Status::Ok();
  const int64_t chunk = ChunkRows(p);
  const int64_t chunks = (p.shape.q_len + chunk - 1) / chunk;
  const int64_t floats = ThreadFloats(p, chunk);
  auto scratch = ctx.workspace->Allocate<float>(Buffers(p, ctx.threads, chunk) * floats);
  ScopedThreads blas_threads(1);
  const int64_t items = Items(p, chunk);
  // No more threads than buffers: the thread index picks one.
  const int threads = static_cast<int>(Buffers(p, ctx.threads, chunk));
  ParallelFor(threads, items, [&](int64_t item, int thread) {
    const int64_t bh = item / chunks;
    const int64_t r0 = item % chunks * chunk;
    const int64_t rows = std::min(chunk, p.shape.q_len - r0);
    float* s = scratch.data() + thread * floats;
    GemmAttendRows(p, bh / p.shape.heads, bh % p.shape.heads, r0, rows, s,
                   s + chunk * p.shape.kv_len, s + chunk * (p.shape.kv_len + 1));
  });
  return Status::Ok();
}

}  // namespace

extern const Variant chunked_variant = {
    .name = "chunked",
    .summary =
        "C query rows at a time (C from L2 size): sgemm, fused softmax, sgemm; C x Lk memory",
    .run = RunOnF32<RunChunked>,
    .workspace_bytes = F32Workspace<ChunkedWorkspaceBytes>,
    .supports_weights = true,
    .materializes_scores = false,
    .uses_highway = true,
    .deterministic = true,
    .dtypes = {.q = kFloatDTypes, .kv = kAllDTypes, .o = kFloatDTypes},
    .modifiers = 0,  // refuses softcap, ALiBi and sinks (naive and flash apply them)
    .backward = {},  // none
};

}  // namespace attn
