// flash's backward pass: FlashAttention-2's algorithm (Dao 2023, Alg. 2).
//
// Algorithm. The unit of work is a key block: Bc = 64 keys of one (batch b, kv
// head). It keeps its keys' Kᵀ (pre-scaled by scale) and Vᵀ, and
// private accumulators dK, dV (64 x dk, 64 x dv), and walks the query
// blocks (Br = 64 positions of one query head, every head of the kv head's
// group in turn) whose rows see any of its keys. Per (query block, key
// block) tile, each step a micro-kernel (kernels/ukernels/):
//   S  = Q·(scale·K)ᵀ       ScoreTile with Kᵀ as its "Qᵀ" operand and the Q
//                           rows broadcast in place: S row-major, rows x 64
//                           keys, vectors along keys;
//   dP = dO·Vᵀ              ScoreTile likewise, dO rows in place;
//   (softcap in ScoreTile's store, its slope 1 - t² kept; + ALiBi;
//    + additive mask on S)
//   D  = Σ_d dO·O per row   Dot, once per row before the items start, kept
//                           (4 bytes per row): each key block that sees the
//                           row reads D instead of O's d floats;
//   P  = e^(S - lse), dS = scale·P·(dP - D)(·(1 - t²))   GradScores, in place
//                           (a sink is in the forward's lse: nothing to do;
//                           its own gradient is SinkGradients');
//   (partial tiles: P = dS = 0 exactly on structurally hidden pairs)
//   dV += Pᵀ·dO             PvTile with P read transposed (pj = 64, pm = 1),
//   dK += dSᵀ·Q             the keys as its rows, dO / Q rows as its "V";
//   dQ_part = dS·K          PvTile, K rows as its "V";
// then dQ rows += dQ_part in key-block order (below). After its last query
// block the item writes its dK, dV rows. Nothing of size Lq x Lk exists: P
// and dS live one 64 x 64 tile at a time.
//
// Deterministic dQ without atomics on data. dQ of a query block receives one
// partial per key block that sees it; they are added in increasing key-block
// order, the first onto a zeroed dQ. A counter per (b, h, query block) holds
// the key block whose turn it is: an item computes its partial, waits for
// its turn (spinning, then yielding), adds, and passes the turn to the next
// key block. The key blocks that see a query block are the ones meeting the
// hull of its rows' visible ranges: consecutive, so the turn goes to kb + 1.
// Items are handed out in increasing key-block order (ParallelFor is OpenMP
// dynamic scheduling, which deals iterations in order) and a turn is only
// ever awaited from the item after the one holding it, which is running or
// done, so the chain always ends at an item that is not waiting: no
// deadlock, whatever the thread count. The sum order does not depend on the
// thread count either: dQ, dK and dV are bitwise identical for any number
// of threads.
// The wait costs little: item kb + 1 trails kb by one query block, so on T
// threads a run of T consecutive key blocks moves as a pipeline; causal
// items start at their diagonal and are dealt longest first.
// Work items: when the (b, kv head)s divide evenly over the threads
// (WholeHeadItems), a thread takes a whole one, its key blocks in order, so
// no turn is ever awaited and no dQ block moves between cores. With key
// blocks as items, each 64-row dQ block (16-32 KiB) was last written by the
// other core at every turn; adding to it took 8% of 2-thread time in `perf`
// (the loads of the other core's lines) and the spinning 3%, and the
// backward scaled 1.5-1.7x from 1 to 2 threads where the forward scales 2x
// (Sapphire Rapids VM, N = 512-2048, even with every row in L2). Fewer
// heads than threads (or an uneven split) keep key-block items: they are
// what lets one head use many cores. Same sums in the same order either way.
//
// Structural masks: tiles outside a row block's hull are skipped, never
// read. In a partial tile P and dS of hidden pairs are set to 0; since
// 0·NaN = NaN, when the tile's Q, dO or K rows are not all finite the three
// products run pair by pair over the visible keys only (rare). Fully masked
// rows (lse = -inf) see no key: their dQ stays 0 and they add nothing.
//
// Bytes (fp32) per (b, kv head): K, V read once (transposed into the item);
// O once (D); Q, dO and dQ (read and written) once per key block that sees
// them: 4·Lq·g·(3·dk + dv)·Lk/64 from L2/L3 (the head's Q, dO, dQ are
// 4·Lq·(2·dk + dv)·g bytes: 768 KiB at Lq = 1024, d = 64), against
// 2·64·64·(3·dk + 2·dv) FLOPs per tile: 1/40 byte per FLOP at dk = dv. dK, dV
// written once. Once a head's rows outgrow L2 (d = 128 from Lq = 4096) they
// stream from L3 or memory: each tile's two score products prefetch the
// next query block's Q, dO and dQ rows into L2 (NextQueryBlock). Reading D
// instead of O and the prefetch took 8-17% off N = 2048-16384 (Zen 4, one
// thread).
// FLOPs: 2·(3·dk + 2·dv) per computed (query, key) pair (S, dP, dV, dK, dQ),
// pairs counted over whole tiles met by the hull (masked parts of diagonal
// tiles included); one exp per computed score.
//
// Working set per thread (64-byte-aligned pieces): Kᵀ, Vᵀ 64·(dk + dv), dK,
// dV 64·(dk' + dv'), P and dS 2·64·64, dQ_part 64·dk', packed Q, dO, K rows
// 64·(2·dk' + dv') (only used when d is not a whole number of vectors), 64
// per-row floats (lse), and with a softcap its slopes 64·64 (16 KiB more):
// 164 KiB at d = 64 (L2: 1 MiB on Zen 4, 2 MiB on Sapphire Rapids), independent of Lq and Lk.
// Shared: D, 4 bytes per (b, h, query row) (as the lse the caller gives); 8 bytes per (b, h, query
// block) of dQ turns and 16 per (b, query block) of hulls: 280 KiB at Lq = 65536, H = 1.
//
// Block sizes: Bc = 64 keys is one score tile's width (4 AVX-512 vectors,
// ScoreTile's 6 rows x 4 vectors register block), and makes a key block's
// accumulators dK + dV 32 KiB at d = 64: they stay in L1/L2 while the item
// walks all of Lq. Br = 64 rows bounds P and dS to 16 KiB each, and the
// PvTile calls that read them transposed sum over 64 rows per call.
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>

#include "kernels/internal/flush_subnormals.h"
#include "kernels/internal/parallel.h"
#include "kernels/registry.h"

#ifndef ATTNLAB_KERNELS_FLASH_BACKWARD_ONCE_
#define ATTNLAB_KERNELS_FLASH_BACKWARD_ONCE_
namespace attn::flash_backward {

inline constexpr int64_t kBc = 64;   // keys per work item
inline constexpr int64_t kBr = 64;   // query rows per step
inline constexpr int64_t kPad = 16;  // dk, dv padded to whole vectors of every target

inline constexpr int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// How a backward problem is cut, and what each thread holds.
struct Plan {
  explicit Plan(const ValidProblem& p)
      : key_blocks((p.shape.kv_len + kBc - 1) / kBc),
        q_blocks((p.shape.q_len + kBr - 1) / kBr),
        items(p.shape.batch * p.shape.kv_heads * key_blocks),
        dkp(RoundUp(p.shape.head_dim, kPad)),
        dvp(RoundUp(p.shape.value_dim, kPad)),
        thread_floats(kBc * (p.shape.head_dim + p.shape.value_dim)  // Kᵀ, Vᵀ
                      + kBc * (dkp + dvp)                           // dK, dV
                      + 2 * kBr * kBc                               // P, dS
                      + kBr * dkp                                   // dQ_part
                      + kBr * (dkp + dvp) + kBc * dkp               // packed Q, dO, K
                      + kBr                                         // lse
                      + (p.modifiers.softcap ? kBr * kBc : 0)),     // softcap slopes
        turns(p.shape.batch * p.shape.heads * q_blocks),
        hulls(2 * p.shape.batch * q_blocks),
        dsums(p.shape.batch * p.shape.heads * p.shape.q_len) {}
  int64_t key_blocks, q_blocks, items, dkp, dvp, thread_floats;
  int64_t turns;  // int64 counters: whose turn it is to add to a dQ block
  int64_t hulls;  // int64: [lo, hi) of the keys a (b, query block) sees
  int64_t dsums;  // float: D = Σ_d dO·O of every query row, made once
};

}  // namespace attn::flash_backward
#endif

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/flash_backward.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/ukernels/common-inl.h"
#include "kernels/ukernels/grad_scores-inl.h"
#include "kernels/ukernels/pv_tile-inl.h"
#include "kernels/ukernels/score_mods-inl.h"
#include "kernels/ukernels/score_tile-inl.h"
#include "kernels/ukernels/transpose-inl.h"
#include "kernels/ukernels/vector_ops-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attn {
namespace HWY_NAMESPACE {
namespace {

using flash_backward::kBc;
using flash_backward::kBr;
using flash_backward::Plan;
static_assert(kBc == kScoreTileCols, "a key block is one score tile wide");

// A thread's scratch (Plan::thread_floats).
struct Scratch {
  Scratch(const Plan& plan, const Shape& s, float* base, int64_t* ranges) {
    kt = base;
    vt = kt + kBc * s.head_dim;
    dk = vt + kBc * s.value_dim;
    dv = dk + kBc * plan.dkp;
    p = dv + kBc * plan.dvp;
    ds = p + kBr * kBc;
    dq = ds + kBr * kBc;
    qp = dq + kBr * plan.dkp;
    dop = qp + kBr * plan.dkp;
    kp = dop + kBr * plan.dvp;
    lse = kp + kBc * plan.dkp;
    slope = lse + kBr;
    rb = ranges;
    re = ranges + kBr;
  }
  float* kt;     // Kᵀ·scale: dk rows of kBc
  float* vt;     // Vᵀ: dv rows of kBc
  float* dk;     // dK accumulators: kBc x dkp
  float* dv;     // dV accumulators: kBc x dvp
  float* p;      // S, then P: kBr x kBc
  float* ds;     // dP, then dS: kBr x kBc
  float* dq;     // this key block's part of dQ: kBr x dkp
  float* qp;     // Q rows padded to dkp (when dk is not whole vectors)
  float* dop;    // dO rows padded to dvp
  float* kp;     // K rows padded to dkp
  float* lse;    // kBr
  float* slope;  // kBr x kBc: the softcap's 1 - t² per score (with a softcap)
  int64_t* rb;   // kBr: each row's first visible key, relative to the block
  int64_t* re;   // kBr: one past its last
};

// Rows of a tensor as the PvTile "V" operand wants them: whole vectors of
// `padded` floats. In place (with the tensor's row stride) when `dim` is
// already whole vectors, else copied into `pack`, zero-padded.
const float* WholeVectorRows(const float* first, int64_t stride, int64_t rows, int64_t dim,
                             int64_t padded, float* pack, int64_t* out_stride) {
  if (dim == padded) {
    *out_stride = stride;
    return first;
  }
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(pack + r * padded, first + r * stride, sizeof(float) * dim);
    std::fill(pack + r * padded + dim, pack + (r + 1) * padded, 0.0f);
  }
  *out_stride = padded;
  return pack;
}

// The key block an item works on, transposed and with its accumulators.
struct KeyBlock {
  int64_t b, kvh, kb, j0, nk, nvec;
  const float* k;  // K rows as whole vectors of dkp (dQ = dS·K)
  int64_t ks;
};

KeyBlock LoadKeyBlock(const ValidProblem& p, const Plan& plan, int64_t item, Scratch& sc) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(DF()));
  KeyBlock kb;
  kb.kb = item % plan.key_blocks;
  const int64_t bkv = item / plan.key_blocks;
  kb.b = bkv / p.shape.kv_heads;
  kb.kvh = bkv % p.shape.kv_heads;
  kb.j0 = kb.kb * kBc;
  kb.nk = std::min(kBc, p.shape.kv_len - kb.j0);
  kb.nvec = (kb.nk + N - 1) / N;
  const float* k_rows[kBc];
  const float* v_rows[kBc];
  for (int64_t j = 0; j < kb.nk; ++j) {
    k_rows[j] = p.KRow(kb.b, kb.kvh, kb.j0 + j);
    v_rows[j] = p.VRow(kb.b, kb.kvh, kb.j0 + j);
  }
  TransposeRows(k_rows, kb.nk, kBc, p.shape.head_dim, p.scale, sc.kt, kBc);
  TransposeRows(v_rows, kb.nk, kBc, p.shape.value_dim, 1.0f, sc.vt, kBc);
  kb.k =
      WholeVectorRows(k_rows[0], p.k.strides.row, kb.nk, p.shape.head_dim, plan.dkp, sc.kp, &kb.ks);
  std::fill(sc.dk, sc.dk + kBc * plan.dkp, 0.0f);
  std::fill(sc.dv, sc.dv + kBc * plan.dvp, 0.0f);
  return kb;
}

// One query block of head h against the key block: its rows' visible keys
// within the block (empty for a fully masked row), and whether any is
// hidden.
struct QueryBlock {
  int64_t h, qb, i0, nq;
  bool any_visible, partial;
};

QueryBlock LoadQueryRanges(const ValidGradProblem& g, const KeyBlock& kb, int64_t h, int64_t qb,
                           Scratch& sc) {
  const ValidProblem& p = g.forward;
  QueryBlock qblk{h, qb, qb * kBr, std::min(kBr, p.shape.q_len - qb * kBr), false, false};
  for (int64_t x = 0; x < qblk.nq; ++x) {
    const int64_t i = qblk.i0 + x;
    const KeyRange keys = g.GradKeys(kb.b, h, i);  // none for a fully masked row
    sc.lse[x] = g.Lse(kb.b, h, i);
    sc.rb[x] = std::clamp(keys.begin - kb.j0, int64_t{0}, kb.nk);
    sc.re[x] = std::clamp(keys.end - kb.j0, sc.rb[x], kb.nk);
    qblk.any_visible |= sc.rb[x] < sc.re[x];
    qblk.partial |= !(sc.rb[x] == 0 && sc.re[x] == kb.nk);
  }
  return qblk;
}

// The rows the next query block of the head streams in (Q, dO, dQ), to be
// prefetched into L2 by this tile's two score products: every key block
// walks all of Lq, and from N = 4096 at d = 128 a head's Q, dO and dQ no
// longer stay in L2 between key blocks.
struct NextRows {
  PrefetchRows q_and_do, dq;
};

NextRows NextQueryBlock(const ValidGradProblem& g, const Plan& plan, const KeyBlock& kb,
                        const QueryBlock& qblk) {
  const ValidProblem& p = g.forward;
  const int64_t i0 = qblk.i0 + kBr;
  if (qblk.qb + 1 >= plan.q_blocks) return {};
  const int64_t rows = std::min(kBr, p.shape.q_len - i0);
  const auto bytes = [](int64_t floats) { return static_cast<int64_t>(sizeof(float)) * floats; };
  NextRows next;
  next.q_and_do = {.k = reinterpret_cast<const char*>(p.QRow(kb.b, qblk.h, i0)),
                   .k_stride = bytes(p.q.strides.row),
                   .k_bytes = bytes(p.shape.head_dim),
                   .v = reinterpret_cast<const char*>(g.DoRow(kb.b, qblk.h, i0)),
                   .v_stride = bytes(g.d_o.strides.row),
                   .v_bytes = bytes(p.shape.value_dim),
                   .rows = rows};
  next.dq = {.k = reinterpret_cast<const char*>(g.DqRow(kb.b, qblk.h, i0)),
             .k_stride = bytes(g.dq.strides.row),
             .k_bytes = bytes(p.shape.head_dim),
             .rows = rows};
  return next;
}

// The softcap's slope c = 1 - t² of every score of the tile, t = S/cap from
// the capped S that ScoreTile stored (before ALiBi and the mask).
void SoftcapSlopes(const float* s, int64_t nrows, int64_t ncols, float cap, float* slope) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const VF inv = hn::Set(d, 1.0f / cap), one = hn::Set(d, 1.0f);
  for (int64_t x = 0; x < nrows; ++x) {
    for (int64_t c = 0; c < ncols; c += N) {
      const VF t = hn::Mul(hn::Load(d, s + x * kBc + c), inv);
      hn::Store(hn::NegMulAdd(t, t, one), d, slope + x * kBc + c);
    }
  }
}

// S = Q·(scale·K)ᵀ with the score modifiers (softcap in ScoreTile's store,
// then ALiBi) and the mask, and dP = dO·Vᵀ for the tile, then P and dS
// (GradScores, with the rows' D and the softcap's slopes), hidden pairs
// zeroed. A sink needs nothing here: it is in the forward's lse.
void TileScores(const ValidGradProblem& g, const KeyBlock& kb, const QueryBlock& qblk,
                const float* dsum, const NextRows& next, Scratch& sc) {
  const ValidProblem& p = g.forward;
  const int64_t dk = p.shape.head_dim, dv = p.shape.value_dim;
  const int64_t N = static_cast<int64_t>(hn::Lanes(DF()));
  const float* q = p.QRow(kb.b, qblk.h, qblk.i0);
  const float* d_o = g.DoRow(kb.b, qblk.h, qblk.i0);
  const float cap = p.modifiers.softcap.value_or(0.0f);
  ScoreTile(sc.kt, q, p.q.strides.row, qblk.nq, dk, kb.nvec, sc.p, cap, next.q_and_do);
  ScoreTile(sc.vt, d_o, g.d_o.strides.row, qblk.nq, dv, kb.nvec, sc.ds, 0.0f, next.dq);
  if (cap > 0.0f) SoftcapSlopes(sc.p, qblk.nq, kb.nvec * N, cap, sc.slope);
  if (!p.modifiers.alibi_slopes.empty()) {
    const float slope = p.modifiers.alibi_slopes[qblk.h];
    const int64_t off = p.DiagOffset(kb.b);
    for (int64_t x = 0; x < qblk.nq; ++x) {
      AlibiRow(sc.p + x * kBc, kb.nk, slope, static_cast<float>(kb.j0 - (qblk.i0 + x) - off));
    }
  }
  for (int64_t x = 0; x < qblk.nq; ++x) {
    if (const float* add = p.AdditiveRow(kb.b, qblk.h, qblk.i0 + x)) {
      for (int64_t c = 0; c < kb.nk; ++c) sc.p[x * kBc + c] += add[kb.j0 + c];
    }
  }
  GradScores(sc.p, sc.ds, kBc, qblk.nq, kb.nvec * N, sc.lse, dsum, p.scale,
             cap > 0.0f ? sc.slope : nullptr);
  if (!qblk.partial) return;
  for (int64_t x = 0; x < qblk.nq; ++x) {
    for (int64_t c = 0; c < kb.nk; ++c) {
      if (c < sc.rb[x] || c >= sc.re[x]) sc.p[x * kBc + c] = sc.ds[x * kBc + c] = 0.0f;
    }
  }
}

// True when the tile's Q and dO rows and the block's K rows are finite: then
// a hidden pair's zero P and dS contribute exactly nothing.
bool TileOperandsFinite(const ValidGradProblem& g, const KeyBlock& kb, const QueryBlock& qblk) {
  const ValidProblem& p = g.forward;
  bool finite = true;
  for (int64_t x = 0; x < qblk.nq && finite; ++x) {
    finite = AllFinite(p.QRow(kb.b, qblk.h, qblk.i0 + x), p.shape.head_dim) &&
             AllFinite(g.DoRow(kb.b, qblk.h, qblk.i0 + x), p.shape.value_dim);
  }
  for (int64_t j = 0; j < kb.nk && finite; ++j) {
    finite = AllFinite(p.KRow(kb.b, kb.kvh, kb.j0 + j), p.shape.head_dim);
  }
  return finite;
}

// dV += Pᵀ·dO, dK += dSᵀ·Q, dQ_part = dS·K for the tile.
void TileGradients(const ValidGradProblem& g, const Plan& plan, const KeyBlock& kb,
                   const QueryBlock& qblk, Scratch& sc) {
  const ValidProblem& p = g.forward;
  const int64_t N = static_cast<int64_t>(hn::Lanes(DF()));
  int64_t qs, dos;
  const float* q = WholeVectorRows(p.QRow(kb.b, qblk.h, qblk.i0), p.q.strides.row, qblk.nq,
                                   p.shape.head_dim, plan.dkp, sc.qp, &qs);
  const float* d_o = WholeVectorRows(g.DoRow(kb.b, qblk.h, qblk.i0), g.d_o.strides.row, qblk.nq,
                                     p.shape.value_dim, plan.dvp, sc.dop, &dos);
  PvTile(sc.p, kBc, 1, d_o, dos, qblk.nq, kb.nk, plan.dvp / N, true, sc.dv, plan.dvp);
  PvTile(sc.ds, kBc, 1, q, qs, qblk.nq, kb.nk, plan.dkp / N, true, sc.dk, plan.dkp);
  PvTile(sc.ds, 1, kBc, kb.k, kb.ks, kb.nk, qblk.nq, plan.dkp / N, false, sc.dq, plan.dkp);
}

// The same products pair by pair over each row's visible keys only: a
// partial tile whose operands are not all finite (0·NaN would reach keys
// and rows the mask separates).
void TileGradientsVisibleOnly(const ValidGradProblem& g, const Plan& plan, const KeyBlock& kb,
                              const QueryBlock& qblk, Scratch& sc) {
  const ValidProblem& p = g.forward;
  const int64_t dk = p.shape.head_dim, dv = p.shape.value_dim;
  std::fill(sc.dq, sc.dq + qblk.nq * plan.dkp, 0.0f);
  for (int64_t x = 0; x < qblk.nq; ++x) {
    const float* q = p.QRow(kb.b, qblk.h, qblk.i0 + x);
    const float* d_o = g.DoRow(kb.b, qblk.h, qblk.i0 + x);
    for (int64_t c = sc.rb[x]; c < sc.re[x]; ++c) {
      const float pw = sc.p[x * kBc + c], ds = sc.ds[x * kBc + c];
      const float* k = p.KRow(kb.b, kb.kvh, kb.j0 + c);
      for (int64_t y = 0; y < dv; ++y) sc.dv[c * plan.dvp + y] += pw * d_o[y];
      for (int64_t y = 0; y < dk; ++y) sc.dk[c * plan.dkp + y] += ds * q[y];
      for (int64_t y = 0; y < dk; ++y) sc.dq[x * plan.dkp + y] += ds * k[y];
    }
  }
}

// Waits until it is key block `kb`'s turn at a dQ block (see the header).
void AwaitTurn(const std::atomic_ref<int64_t>& turn, int64_t kb) {
  for (int spins = 0; turn.load(std::memory_order_acquire) != kb; ++spins) {
    if (spins < 256) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    } else {
      std::this_thread::yield();
    }
  }
}

// dQ rows of the query block += dQ_part, in key-block order.
void AddToDq(const ValidGradProblem& g, const Plan& plan, const KeyBlock& kb,
             const QueryBlock& qblk, bool contributes, int64_t* turns, Scratch& sc) {
  const ValidProblem& p = g.forward;
  const int64_t N = static_cast<int64_t>(hn::Lanes(DF()));
  std::atomic_ref<int64_t> turn(turns[(kb.b * p.shape.heads + qblk.h) * plan.q_blocks + qblk.qb]);
  AwaitTurn(turn, kb.kb);
  if (contributes) {
    const int64_t dk = p.shape.head_dim, whole = dk / N * N;
    const DF d;
    for (int64_t x = 0; x < qblk.nq; ++x) {
      float* dq = g.DqRow(kb.b, qblk.h, qblk.i0 + x);
      const float* part = sc.dq + x * plan.dkp;
      int64_t y = 0;
      for (; y < whole; y += N) {
        hn::StoreU(hn::Add(hn::LoadU(d, dq + y), hn::Load(d, part + y)), d, dq + y);
      }
      for (; y < dk; ++y) dq[y] += part[y];
    }
  }
  turn.store(kb.kb + 1, std::memory_order_release);
}

// One work item: a key block against every query block that sees it.
void GradKeyBlock(const ValidGradProblem& g, const Plan& plan, int64_t item, const int64_t* hulls,
                  const float* dsums, int64_t* turns, Scratch& sc) {
  const ValidProblem& p = g.forward;
  const KeyBlock kb = LoadKeyBlock(p, plan, item, sc);
  for (int64_t gh = 0; gh < p.group; ++gh) {
    const int64_t h = kb.kvh * p.group + gh;
    for (int64_t qb = 0; qb < plan.q_blocks; ++qb) {
      const int64_t* hull = hulls + 2 * (kb.b * plan.q_blocks + qb);
      if (hull[1] <= kb.j0 || hull[0] >= kb.j0 + kb.nk) continue;  // not its turn to wait
      const QueryBlock qblk = LoadQueryRanges(g, kb, h, qb, sc);
      if (qblk.any_visible) {
        const float* dsum = dsums + (kb.b * p.shape.heads + h) * p.shape.q_len + qblk.i0;
        TileScores(g, kb, qblk, dsum, NextQueryBlock(g, plan, kb, qblk), sc);
        if (qblk.partial && !TileOperandsFinite(g, kb, qblk)) {
          TileGradientsVisibleOnly(g, plan, kb, qblk, sc);
        } else {
          TileGradients(g, plan, kb, qblk, sc);
        }
      }
      AddToDq(g, plan, kb, qblk, qblk.any_visible, turns, sc);
    }
  }
  for (int64_t j = 0; j < kb.nk; ++j) {
    std::memcpy(g.DkRow(kb.b, kb.kvh, kb.j0 + j), sc.dk + j * plan.dkp,
                sizeof(float) * p.shape.head_dim);
    std::memcpy(g.DvRow(kb.b, kb.kvh, kb.j0 + j), sc.dv + j * plan.dvp,
                sizeof(float) * p.shape.value_dim);
  }
}

// Each (b, query block)'s hull of visible keys [lo, hi) (empty: lo >= hi),
// and the first key block's turn at every dQ block; dQ zeroed, D of every
// row (read by each key block that sees the row; O is not read again).
void StartTurns(const ValidGradProblem& g, const Plan& plan, int threads, int64_t* hulls,
                float* dsums, int64_t* turns) {
  const ValidProblem& p = g.forward;
  for (int64_t b = 0; b < p.shape.batch; ++b) {
    for (int64_t qb = 0; qb < plan.q_blocks; ++qb) {
      int64_t lo = p.shape.kv_len, hi = 0;
      for (int64_t i = qb * kBr; i < std::min(p.shape.q_len, (qb + 1) * kBr); ++i) {
        const KeyRange keys = p.VisibleKeys(b, i);
        if (keys.empty()) continue;
        lo = std::min(lo, keys.begin);
        hi = std::max(hi, keys.end);
      }
      hulls[2 * (b * plan.q_blocks + qb)] = lo;
      hulls[2 * (b * plan.q_blocks + qb) + 1] = hi;
      for (int64_t h = 0; h < p.shape.heads; ++h) {
        turns[(b * p.shape.heads + h) * plan.q_blocks + qb] = lo / kBc;
      }
    }
  }
  const int64_t rows = p.shape.batch * p.shape.heads * p.shape.q_len;
  ParallelFor(threads, rows, [&](int64_t r) {
    const int64_t i = r % p.shape.q_len, bh = r / p.shape.q_len;
    const int64_t b = bh / p.shape.heads, h = bh % p.shape.heads;
    std::fill_n(g.DqRow(b, h, i), p.shape.head_dim, 0.0f);
    dsums[r] = DotRow(g.DoRow(b, h, i), g.ORow(b, h, i), p.shape.value_dim);
  });
}

// Whether the threads take whole (b, kv head)s rather than key blocks:
// when the heads split evenly over them (or so many that the last round is
// a small part of the time), every head has the same work, dense or causal.
bool WholeHeadItems(int64_t heads, int threads) {
  return threads > 1 && (heads % threads == 0 || heads >= 8 * threads);
}

Status RunFlashBackwardImpl(const ValidGradProblem& g, ExecContext& ctx) {
  const ValidProblem& p = g.forward;
  const Plan plan(p);
  const int threads = std::max(1, ctx.threads);
  auto scratch = ctx.workspace->Allocate<float>(static_cast<size_t>(threads * plan.thread_floats));
  auto ranges = ctx.workspace->Allocate<int64_t>(static_cast<size_t>(threads * 2 * kBr));
  auto turns = ctx.workspace->Allocate<int64_t>(static_cast<size_t>(plan.turns));
  auto hulls = ctx.workspace->Allocate<int64_t>(static_cast<size_t>(plan.hulls));
  auto dsums = ctx.workspace->Allocate<float>(static_cast<size_t>(plan.dsums));
  StartTurns(g, plan, threads, hulls.data(), dsums.data(), turns.data());
  // A thread's share: whole (b, kv head)s when they divide evenly, else key
  // blocks (see the file comment, "Work items").
  const int64_t heads = p.shape.batch * p.shape.kv_heads;
  const bool whole_heads = WholeHeadItems(heads, threads);
  const int64_t per_item = whole_heads ? plan.key_blocks : 1;
  ParallelFor(threads, whole_heads ? heads : plan.items, [&](int64_t item, int tid) {
    const FlushSubnormalsScope ftz;  // no microcode assists (flush_subnormals.h)
    Scratch sc(plan, p.shape, scratch.data() + tid * plan.thread_floats,
               ranges.data() + tid * 2 * kBr);
    for (int64_t k = item * per_item; k < (item + 1) * per_item; ++k) {
      GradKeyBlock(g, plan, k, hulls.data(), dsums.data(), turns.data(), sc);
    }
  });
  return Status::Ok();
}

}  // namespace
// Exported per target (outside the anonymous namespace for HWY_EXPORT).
Status RunFlashBackwardTarget(const ValidGradProblem& g, ExecContext& ctx) {
  return RunFlashBackwardImpl(g, ctx);
}
// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace attn
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attn {
HWY_EXPORT(RunFlashBackwardTarget);

Status RunFlashBackward(const ValidGradProblem& g, ExecContext& ctx) {
  return HWY_DYNAMIC_DISPATCH(RunFlashBackwardTarget)(g, ctx);
}

size_t FlashBackwardWorkspaceBytes(const ValidGradProblem& g, int threads) {
  const flash_backward::Plan plan(g.forward);
  const SaturatingSize t = std::max(1, threads);
  return (SaturatingSize(sizeof(float)) * (t * plan.thread_floats + plan.dsums) +
          SaturatingSize(sizeof(int64_t)) *
              (t * (2 * flash_backward::kBr) + SaturatingSize(plan.turns) + plan.hulls))
      .value();
}

}  // namespace attn
#endif  // HWY_ONCE
