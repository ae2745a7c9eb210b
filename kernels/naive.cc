// naive: the textbook algorithm in fp32, the baseline every variant is
// measured against.
//
// For each (batch b, head h), in three passes over a materialized score
// matrix S[Lq, Lk]:
//   1. S = Q·Kᵀ·scale, softcapped, + ALiBi bias (+ additive mask);
//      structurally hidden keys get -inf.
//   2. Row-wise softmax with max subtraction: S <- exp(S - rowmax); l = Σ S
//      (+ e^(sink - rowmax) with attention sinks, the max taken over the
//      sink too).
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
//
// The backward pass (dQ, dK, dV) is the textbook one too: see "backward"
// below.
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
  return InFlightScratchBytes(p.shape.batch * p.shape.heads, threads, HeadScratch(p));
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
    s[j] = p.ModifyLogit(b, h, i, j, dot * p.scale) + (additive ? additive[j] : 0.0f);
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
  // A sink joins the softmax as one more logit with no value (NaN stays NaN).
  const float sink = p.Sink(h);
  if (max == -kInf) {  // fully masked row: O = 0 (never 0·v), lse = the sink's logit
    for (int64_t d = 0; d < dv; ++d) o[d] = 0.0f;
    if (!p.lse.empty()) p.lse[p.RowIndex(b, h, i)] = sink;
    if (weights)
      for (int64_t j = 0; j < p.shape.kv_len; ++j) weights[j] = 0.0f;
    return;
  }
  if (!std::isnan(max)) max = std::max(max, sink);
  const float sum = ExpAndSum(s, keys.begin, keys.end, max) + std::exp(sink - max);
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

// ---------------------------------------------------------------- backward
//
// The textbook backward (kernels/problem.h, "backward"), in fp32, per
// (batch b, kv head kvh) group: its query heads h one after another, in
// order, each in two passes over two materialized Lq x Lk matrices P and dS:
//   1. Row i (skipped when lse_i = -inf: dQ_i = 0, nothing else):
//      over its visible keys j only (causal, window and key lengths are never
//      multiplied by 0; they are not visited),
//        S_ij = q_i·k_j·scale, softcap, ALiBi (+ mask_ij)   recomputed as the
//                                            forward did (ModifyLogit)
//        P_ij = e^(S_ij - lse_i)             (a sink is in lse already)
//        dP_ij = dO_i·v_j
//        D_i = Σ_j P_ij·dP_ij                (the textbook form)
//        dS_ij = P_ij·(dP_ij - D_i)·(1 - t_ij²)   t = tanh(q_i·k_j·scale / cap)
//                                            with a softcap, recomputed
//        dQ_i = scale·Σ_j dS_ij·k_j
//   2. Column j: dV_j += Σ_i P_ij·dO_i and dK_j += scale·Σ_i dS_ij·q_i over
//      the rows i that see key j (and are not fully masked).
// dK and dV start at 0 and sum over the group's heads in head order, so GQA
// needs no reduction buffer and the result is deterministic.
// D: the textbook Σ P·dP (flash and blas use Σ_d dO·O, equal in exact
// arithmetic; the two forms check each other). problem.h also has NaN in
// O_i reach dQ_i (the fp64 reference forms D from O): the textbook form never
// reads O, so a NaN in dO_i·O_i sets D_i to NaN explicitly.
// Sums over keys (D, dQ) go in blocks of kKeySumBlock keys, and the column
// sums over query rows (dK, dV) in blocks of kKeySumBlock rows (problem.h,
// "Accumulation"), each with its kDvChunk partial sums in registers.
//
// Memory traffic per query head: reads K and V once per visible pair in the
// row pass (K twice: S and dQ), ~Σ_pairs·(2·dk + dv) floats, from cache when
// the head's K and V fit in L2, else from memory; writes P and dS (2·Lq·Lk),
// reads them back column by column in pass 2 (a column walks Lq rows
// Lk·4 bytes apart: one cache line per row, shared by the next 15 columns
// when Lq lines stay in L2), reading Q and dO once per visible pair there.
// Like the forward, bound by the Lq·Lk matrices and scalar FMA throughput.
//
// Working set: P and dS, 2·Lq·Lk floats per group in flight
// (materializes_scores); declared exactly.
// Parallelism as the forward's (ForEachHead over B·Hkv groups): at least as
// many groups as threads, one group per thread with its own matrices;
// otherwise groups one at a time, rows (pass 1) and columns (pass 2) split
// over the threads. Each row and column is one thread's, in a fixed order:
// the same bits at any thread count.

// Floats per group in flight: P, then dS.
int64_t GroupScratch(const ValidProblem& p) { return 2 * p.shape.q_len * p.shape.kv_len; }

size_t NaiveBackwardWorkspaceBytes(const ValidGradProblem& g, int threads) {
  const ValidProblem& p = g.forward;
  return InFlightScratchBytes(p.shape.batch * p.shape.kv_heads, threads, GroupScratch(p));
}

float Dot(const float* x, const float* y, int64_t n) {
  float sum = 0.0f;
  for (int64_t d = 0; d < n; ++d) sum += x[d] * y[d];
  return sum;
}

// Pass 1 for row i of head h: P and dS over its keys, and dQ_i.
void BackwardRow(const ValidGradProblem& g, int64_t b, int64_t h, int64_t i, float* p_row,
                 float* ds_row) {
  const ValidProblem& p = g.forward;
  const int64_t dk = p.shape.head_dim, dv = p.shape.value_dim, kvh = p.KvHead(h);
  float* dq = g.DqRow(b, h, i);
  for (int64_t d = 0; d < dk; ++d) dq[d] = 0.0f;
  const KeyRange keys = g.GradKeys(b, h, i);
  if (keys.empty()) return;
  const float lse = g.Lse(b, h, i);
  const float* q = p.QRow(b, h, i);
  const float* d_o = g.DoRow(b, h, i);
  const float* additive = p.AdditiveRow(b, h, i);
  for (int64_t j = keys.begin; j < keys.end; ++j) {
    const float s = p.ModifyLogit(b, h, i, j, Dot(q, p.KRow(b, kvh, j), dk) * p.scale) +
                    (additive ? additive[j] : 0.0f);
    p_row[j] = std::exp(s - lse);
    ds_row[j] = Dot(d_o, p.VRow(b, kvh, j), dv);  // dP for now
  }
  float dsum = 0.0f;
  for (int64_t j0 = keys.begin; j0 < keys.end; j0 += kKeySumBlock) {
    float block = 0.0f;
    for (int64_t j = j0; j < std::min(keys.end, j0 + kKeySumBlock); ++j) {
      block += p_row[j] * ds_row[j];
    }
    dsum += block;
  }
  if (std::isnan(Dot(d_o, g.ORow(b, h, i), dv))) dsum = std::nanf("");
  for (int64_t j = keys.begin; j < keys.end; ++j) ds_row[j] = p_row[j] * (ds_row[j] - dsum);
  // A softcap's slope 1 - t², t = tanh(scale·q·k / cap), recomputed.
  if (const std::optional<float> cap = p.modifiers.softcap) {
    for (int64_t j = keys.begin; j < keys.end; ++j) {
      const float t = std::tanh(Dot(q, p.KRow(b, kvh, j), dk) * p.scale / *cap);
      ds_row[j] *= 1.0f - t * t;
    }
  }
  // dQ_i = scale·Σ_j dS_ij·k_j, per block of keys and chunk of columns.
  for (int64_t j0 = keys.begin; j0 < keys.end; j0 += kKeySumBlock) {
    const int64_t j1 = std::min(keys.end, j0 + kKeySumBlock);
    for (int64_t d0 = 0; d0 < dk; d0 += kDvChunk) {
      const int64_t n = std::min(kDvChunk, dk - d0);
      float part[kDvChunk] = {};
      for (int64_t j = j0; j < j1; ++j) {
        const float* k = p.KRow(b, kvh, j) + d0;
        for (int64_t d = 0; d < n; ++d) part[d] += ds_row[j] * k[d];
      }
      for (int64_t d = 0; d < n; ++d) dq[d0 + d] += part[d];
    }
  }
  for (int64_t d = 0; d < dk; ++d) dq[d] *= p.scale;
}

// out[d] += factor·Σ_i m[i·ld + j]·x_i[d] over the rows i of head h that see
// key j, in blocks of kKeySumBlock rows; x_i = row(i).
template <typename RowFn>
void AddColumnSum(const ValidGradProblem& g, int64_t b, int64_t h, int64_t j, const float* m,
                  int64_t ld, RowFn row, int64_t width, float factor, float* out) {
  const int64_t lq = g.forward.shape.q_len;
  auto sees = [&](int64_t i) {
    const KeyRange keys = g.GradKeys(b, h, i);
    return j >= keys.begin && j < keys.end;
  };
  for (int64_t i0 = 0; i0 < lq; i0 += kKeySumBlock) {
    const int64_t i1 = std::min(lq, i0 + kKeySumBlock);
    for (int64_t d0 = 0; d0 < width; d0 += kDvChunk) {
      const int64_t n = std::min(kDvChunk, width - d0);
      float part[kDvChunk] = {};
      bool any = false;
      for (int64_t i = i0; i < i1; ++i) {
        if (!sees(i)) continue;
        any = true;
        const float w = m[i * ld + j];
        const float* x = row(i) + d0;
        for (int64_t d = 0; d < n; ++d) part[d] += w * x[d];
      }
      if (!any) break;  // no row of this block sees key j
      for (int64_t d = 0; d < n; ++d) out[d0 + d] += factor * part[d];
    }
  }
}

// Pass 2 for key j of head h: its share of dV_j and dK_j.
void BackwardColumn(const ValidGradProblem& g, int64_t b, int64_t h, int64_t j,
                    const float* p_matrix, const float* ds_matrix) {
  const ValidProblem& p = g.forward;
  const int64_t lk = p.shape.kv_len, kvh = p.KvHead(h);
  AddColumnSum(
      g, b, h, j, p_matrix, lk, [&](int64_t i) { return g.DoRow(b, h, i); }, p.shape.value_dim,
      1.0f, g.DvRow(b, kvh, j));
  AddColumnSum(
      g, b, h, j, ds_matrix, lk, [&](int64_t i) { return p.QRow(b, h, i); }, p.shape.head_dim,
      p.scale, g.DkRow(b, kvh, j));
}

// One (b, kv head) group: dK and dV from 0, then each of its heads.
void BackwardGroup(const ValidGradProblem& g, int64_t b, int64_t kvh, float* scratch, int threads) {
  const ValidProblem& p = g.forward;
  const int64_t lq = p.shape.q_len, lk = p.shape.kv_len;
  for (int64_t j = 0; j < lk; ++j) {
    std::fill_n(g.DkRow(b, kvh, j), p.shape.head_dim, 0.0f);
    std::fill_n(g.DvRow(b, kvh, j), p.shape.value_dim, 0.0f);
  }
  float* p_matrix = scratch;
  float* ds_matrix = scratch + lq * lk;
  for (int64_t h = kvh * p.group; h < (kvh + 1) * p.group; ++h) {
    ParallelFor(threads, lq,
                [&](int64_t i) { BackwardRow(g, b, h, i, p_matrix + i * lk, ds_matrix + i * lk); });
    ParallelFor(threads, lk, [&](int64_t j) { BackwardColumn(g, b, h, j, p_matrix, ds_matrix); });
  }
}

Status RunNaiveBackward(const ValidGradProblem& g, ExecContext& ctx) {
  const ValidProblem& p = g.forward;
  const int64_t floats = GroupScratch(p);
  auto scratch = ctx.workspace->Allocate<float>(
      HeadsInFlight(p.shape.batch * p.shape.kv_heads, ctx.threads) * floats);
  ForEachHead(p.shape.batch, p.shape.kv_heads, ctx.threads, scratch.data(), floats,
              [&](int64_t b, int64_t kvh, float* group_scratch, int threads) {
                BackwardGroup(g, b, kvh, group_scratch, threads);
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
    .modifiers = kAllModifiers,
    .paged_kv = true,
    .backward = {.run = RunNaiveBackward,
                 .workspace_bytes = NaiveBackwardWorkspaceBytes,
                 .materializes_scores = true,
                 .modifiers = kAllModifiers},
};

}  // namespace attn
