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
// the softmax pass and read by the P·V sgemm: they should stay in L2. K and V
// (Lk·(dk + dv) floats) are re-read once per chunk, so C should not be small
// either: per query row a chunk costs Lk·(dk + dv)/C extra K/V floats against
// 3·Lk score accesses. Default: the largest C with C·Lk floats in half of the
// L2 cache (the other half for the K/V panels sgemm streams), clamped to
// [kMinChunkRows, kMaxChunkRows] and to Lq; the floor keeps K/V re-reads
// below (dk + dv)/32 per score at long Lk, where the chunk then spills to L3
// (32 rows x 32768 keys = 4 MiB per thread), the ceiling is where sgemm is at
// full speed and larger chunks only cost memory. ATTNLAB_CHUNK_ROWS=<n>
// overrides C (n >= 1).
//
// Memory traffic per head: Q (Lq·dk) and O (Lq·dv) once; K and V
// ceil(Lq/C)·Lk·(dk + dv) floats (from L2/L3 when Lk·d fits); scores
// ~4·Lq·Lk float accesses, all in L2 when C·Lk fits.
// Working set / workspace: min(threads, items)·C·(Lk + 2) floats, declared
// exactly (ChunkedWorkspaceBytes is what RunChunked allocates).
// Lq = Lk = 32768, dk = dv = 64, B = H = 1: L2 = 1 MiB gives C = 32 (floor),
// 4.0 MiB per thread.
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

#include "kernels/gemm_rows.h"
#include "kernels/parallel.h"
#include "kernels/registry.h"

namespace attn {
namespace {

constexpr int64_t kMinChunkRows = 32;
constexpr int64_t kMaxChunkRows = 256;
constexpr int64_t kDefaultL2Bytes = 1 << 20;

int64_t L2Bytes() {
  const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  return l2 > 0 ? l2 : kDefaultL2Bytes;
}

// C for this problem (see the file comment).
int64_t ChunkRows(const ValidProblem& p) {
  const int64_t lq = std::max<int64_t>(p.shape.q_len, 1);
  if (const char* env = std::getenv("ATTNLAB_CHUNK_ROWS")) {
    const long long rows = std::atoll(env);
    if (rows >= 1) return std::min<int64_t>(rows, lq);
  }
  const int64_t fit = L2Bytes() / 2 / (4 * std::max<int64_t>(p.shape.kv_len, 1));
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
  return static_cast<size_t>(Buffers(p, threads, chunk) * ThreadFloats(p, chunk)) * sizeof(float);
}

Status RunChunked(const ValidProblem& p, ExecContext& ctx) {
  if (p.shape.q_len == 0) return Status::Ok();
  const int64_t chunk = ChunkRows(p);
  const int64_t chunks = (p.shape.q_len + chunk - 1) / chunk;
  const int64_t floats = ThreadFloats(p, chunk);
  auto scratch = ctx.workspace->Allocate<float>(Buffers(p, ctx.threads, chunk) * floats);
  ScopedBlasThreads blas_threads(1);
  const int64_t items = Items(p, chunk);
  // No more threads than buffers: ThreadIndex() indexes them.
  const int threads = static_cast<int>(Buffers(p, ctx.threads, chunk));
  ParallelFor(threads, items, [&](int64_t item) {
    const int64_t bh = item / chunks;
    const int64_t r0 = item % chunks * chunk;
    const int64_t rows = std::min(chunk, p.shape.q_len - r0);
    float* s = scratch.data() + ThreadIndex() * floats;
    GemmAttendRows(p, bh / p.shape.heads, bh % p.shape.heads, r0, rows, s,
                   s + chunk * p.shape.kv_len, s + chunk * (p.shape.kv_len + 1), /*threads=*/1);
  });
  return Status::Ok();
}

}  // namespace

extern const Variant chunked_variant = {
    .name = "chunked",
    .summary =
        "C query rows at a time (C from L2 size): sgemm, fused softmax, sgemm; C x Lk memory",
    .run = RunChunked,
    .workspace_bytes = ChunkedWorkspaceBytes,
    .supports_weights = true,
    .materializes_scores = false,
    .uses_highway = true,
    .deterministic = true,
};

}  // namespace attn
