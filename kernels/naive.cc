// naive: the textbook algorithm in fp32, the baseline every variant is
// measured against.
//
// For each (batch b, head h), in three passes over a materialized score
// matrix S[Lq, Lk]:
//   1. S = Q·Kᵀ·scale (+ additive mask); structurally hidden keys get -inf.
//   2. Row-wise softmax with max subtraction: S <- exp(S - rowmax); l = Σ S.
//   3. O = (S·V) / l over each row's visible keys; lse = rowmax + log(l).
//
// Sums over keys (the denominator, each element of P·V) go in blocks of
// kKeySumBlock = 1024 keys (kernels/problem.h, "Accumulation"): one running
// fp32 sum stopped growing at 2^24 keys. P·V walks a block's V rows (256 KiB
// at dv = 64, in L2) once per 16 columns, the 16 partial sums in registers.
//
// Memory traffic per head (fp32 = 4 bytes): reads Q once (Lq·dk), K and V
// once per query row from cache or memory (Lq·Lk·(dk + dv) when Lk·d does not
// fit in cache), writes S once and reads it twice (3·Lq·Lk), writes O (Lq·dv).
// The Lq·Lk terms dominate: naive is bound by memory for the score matrix and
// by scalar FMA throughput for the products (no blocking, no explicit SIMD:
// the compiler may vectorize the dot products, nothing more).
//
// Working set: one Lq x Lk score matrix plus Lq row maxima (4·Lq·(Lk + 1)
// bytes) per head in flight.
// Parallelism: over (batch, head) when there are at least as many heads as
// threads, each thread with its own score matrix; otherwise heads one at a
// time with the rows of each pass split across threads, so one matrix serves
// all threads.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/internal/f32_copy.h"
#include "kernels/internal/parallel.h"
#include "kernels/registry.h"

namespace attn {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Floats per head in flight: the Lq x Lk matrix, then the Lq row maxima.
int64_t HeadScratch(const ValidProblem& p) { return p.shape.q_len * (p.shape.kv_len + 1); }

size_t NaiveWorkspaceBytes(const ValidProblem& p, int threads) {
  return (SaturatingSize(HeadsInFlight(p.shape.batch * p.shape.heads, threads)) * HeadScratch(p) *
          sizeof(float))
      .value();
}

// Pass 1 for one row: scores of visible keys, -inf elsewhere; returns the
// row maximum (NaN if any score is NaN).
float ScoreRow(const ValidProblem& p, int64_t b, int64_t h, int64_t i, float* s) {
  const int64_t dk = p.shape.head_dim;
  const float* q = p.QRow(b, h, i);
  const float* additive = p.AdditiveRow(b, h, i);
  const KeyRange keys = p.VisibleKeys(b, i);
  float max = -kInf;
  for (int64_t j = 0; j < p.shape.kv_len; ++j) {
    if (j < keys.begin || j >= keys.end) {
      s[j] = -kInf;
      continue;
    }
    const float* k = p.KRow(b, p.KvHead(h), j);
    float dot = 0.0f;
    for (int64_t d = 0; d < dk; ++d) dot += q[d] * k[d];
    s[j] = dot * p.scale + (additive ? additive[j] : 0.0f);
    max = (std::isnan(s[j]) || std::isnan(max)) ? std::nanf("") : std::max(max, s[j]);
  }
  return max;
}

// Pass 2 over keys [begin, end): s = e^(s - max); returns Σ s, summed in
// blocks of kKeySumBlock keys (problem.h, "Accumulation").
float ExpAndSum(float* s, int64_t begin, int64_t end, float max) {
  float sum = 0.0f;
  for (int64_t j0 = begin; j0 < end; j0 += kKeySumBlock) {
    float block = 0.0f;
    for (int64_t j = j0; j < std::min(end, j0 + kKeySumBlock); ++j) {
      s[j] = std::exp(s[j] - max);
      block += s[j];
    }
    sum += block;
  }
  return sum;
}

// Pass 3: o = Σ_j s[j]·v_j over keys [begin, end), per block of
// kKeySumBlock keys (a block's V rows stay in L2) and per kDvChunk columns
// (the block's partial sums stay in registers), each block added to o.
constexpr int64_t kDvChunk = 16;
void WeightedSumOfV(const ValidProblem& p, int64_t b, int64_t kvh, const float* s, int64_t begin,
                    int64_t end, float* o) {
  const int64_t dv = p.shape.value_dim;
  for (int64_t d = 0; d < dv; ++d) o[d] = 0.0f;
  for (int64_t j0 = begin; j0 < end; j0 += kKeySumBlock) {
    const int64_t j1 = std::min(end, j0 + kKeySumBlock);
    for (int64_t d0 = 0; d0 < dv; d0 += kDvChunk) {
      const int64_t n = std::min(kDvChunk, dv - d0);
      float part[kDvChunk] = {};
      for (int64_t j = j0; j < j1; ++j) {
        const float* v = p.VRow(b, kvh, j) + d0;
        for (int64_t d = 0; d < n; ++d) part[d] += s[j] * v[d];
      }
      for (int64_t d = 0; d < n; ++d) o[d0 + d] += part[d];
    }
  }
}

// Passes 2 and 3 for one row.
void SoftmaxTimesV(const ValidProblem& p, int64_t b, int64_t h, int64_t i, float max, float* s) {
  const int64_t dv = p.shape.value_dim;
  const KeyRange keys = p.VisibleKeys(b, i);
  float* o = p.ORow(b, h, i);
  float* weights = p.WeightsRow(b, h, i);
  if (max == -kInf) {  // fully masked row
    for (int64_t d = 0; d < dv; ++d) o[d] = 0.0f;
    if (!p.lse.empty()) p.lse[p.RowIndex(b, h, i)] = -kInf;
    if (weights)
      for (int64_t j = 0; j < p.shape.kv_len; ++j) weights[j] = 0.0f;
    return;
  }
  const float sum = ExpAndSum(s, keys.begin, keys.end, max);
  WeightedSumOfV(p, b, p.KvHead(h), s, keys.begin, keys.end, o);
  const float inv = 1.0f / sum;
  for (int64_t d = 0; d < dv; ++d) o[d] *= inv;
  if (!p.lse.empty()) p.lse[p.RowIndex(b, h, i)] = max + std::log(sum);
  if (weights) {
    for (int64_t j = 0; j < p.shape.kv_len; ++j) {
      weights[j] = (j >= keys.begin && j < keys.end) ? s[j] * inv : 0.0f;
    }
  }
}

// One (b, h): pass 1 over all rows into the matrix, then passes 2-3.
void AttendHead(const ValidProblem& p, int64_t b, int64_t h, float* scores, int row_threads) {
  const int64_t lq = p.shape.q_len;
  const int64_t lk = p.shape.kv_len;
  float* row_max = scores + lq * lk;
  ParallelFor(row_threads, lq,
              [&](int64_t i) { row_max[i] = ScoreRow(p, b, h, i, scores + i * lk); });
  ParallelFor(row_threads, lq,
              [&](int64_t i) { SoftmaxTimesV(p, b, h, i, row_max[i], scores + i * lk); });
}

Status RunNaive(const ValidProblem& p, ExecContext& ctx) {
  const int64_t floats = HeadScratch(p);
  auto scores = ctx.workspace->Allocate<float>(
      HeadsInFlight(p.shape.batch * p.shape.heads, ctx.threads) * floats);
  ForEachHead(p.shape.batch, p.shape.heads, ctx.threads, scores.data(), floats,
              [&](int64_t b, int64_t h, float* scratch, int row_threads) {
                AttendHead(p, b, h, scratch, row_threads);
              });
  return Status::Ok();
}

}  // namespace

extern const Variant naive_variant = {
    .name = "naive",
    .summary = "textbook fp32: full Lq x Lk score matrix per head, softmax, P·V",
    .run = RunOnF32<RunNaive>,
    .workspace_bytes = F32Workspace<NaiveWorkspaceBytes>,
    .supports_weights = true,
    .materializes_scores = true,
    .uses_highway = false,
    .deterministic = true,
    .dtypes = {.q = kFloatDTypes, .kv = kAllDTypes, .o = kFloatDTypes},
};

}  // namespace attn
