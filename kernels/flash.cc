// flash: FlashAttention-2-style tiled attention with an online softmax.
//
// Algorithm. The rows of one (batch b, kv head) are stacked position-major
// (row r = query position r / g of head kv_head·g + r % g, g = H / Hkv), so
// the query heads of a GQA group share every K/V tile, and cut into blocks of
// Br = 64 rows. A block keeps Qᵀ (dk x Br, pre-scaled by scale), running
// max m, sum l and an unnormalized accumulator O (Br x dv') and walks the key
// tiles of Bc = min(512, Lk) keys that intersect the union of its rows'
// visible ranges. Each step is a micro-kernel (kernels/ukernels/, listed in
// ukernels.inc, tested and benchmarked one by one):
//   Sᵀ = K_tile·Qᵀ         ScoreTile: Bc x Br, register-blocked 6 keys x 4
//                          vectors of queries: K scalars broadcast straight
//                          from the K rows (no K transpose/packing), Qᵀ rows
//                          are vectors over queries.
//   (softcap and the ALiBi bias applied by ScoreTile as it stores the
//    scores; those of the few-row and bf16 kernels, ModifyTile: one more
//    pass over the tile, in L2; + additive mask; structurally hidden (key,
//    row) pairs *set* to -inf, only in partial tiles). Measured cost over
//    plain flash (attnlab_bench --suite=serving, d = 128, N = 2048 and 4096,
//    dense and causal, 1 Zen 4 thread, AVX3): sinks 0.96-1.09 (they touch
//    only each row's finish), softcap 1.02-1.09 (FastTanh,
//    kernels/ukernels/score_mods-inl.h: a polynomial for logits within
//    +-cap; 1.12-1.18 as a separate pass with an exp and a division per
//    score); ALiBi 0.96-1.05 in the store (1 Sapphire Rapids thread; 1.00-1.10
//    as a pass over the tile, which also cost the softmax its maximum from
//    the score tile)
//   m' = max(m, colmax Sᵀ); Pᵀ = e^(Sᵀ - m'); l = e^(m - m')·l + colsum Pᵀ
//                          OnlineSoftmaxColumns: vectorized over queries (no
//                          horizontal ops), FastExp2 of (S - m')·log2 e
//                          (<= 2 ulp; subtracted before the change of base,
//                          so logits up to +-FLT_MAX stay finite);
//   O = 2^(m - m')·O       only for rows whose max moved (alpha == 1 exactly
//                          otherwise, so the skip is exact);
//   O += P·V_tile          PvTile: 6 rows x 4 vectors of O; V rows
//                          used in place (unaligned loads) when dv is a
//                          multiple of 16, else packed (aligned, zero-padded
//                          to dv' = 16·ceil(dv/16)).
// Finally O /= l, lse = m + ln l (FinishRow; an attention sink joins m and l
// there, FinishRowWithSink). The next tile's K and V rows are
// prefetched into L2 while a tile computes (except in decode).
// Tiles: a tile inside every row's visible range is "full" (no mask work); a
// tile outside the union of the rows' ranges is skipped (never read); the
// others are "partial". In a partial tile a hidden key has weight exactly 0,
// but 0·NaN = NaN, so when its V rows are not all finite P·V runs row by row
// over each row's visible keys only.
// Few rows (a block of <= 8 rows, e.g. decode with Lq·g <= 8): scores are dot
// products along d (ScoreRows), 4 keys x <= 4 rows at a time (16 independent FMA chains,
// then one transpose-reduce per row for the 4 keys instead of a horizontal
// sum per (key, row)); S is kept row-major and the softmax is vectorized over
// keys instead of mostly empty query vectors (OnlineSoftmaxRows). At 8 rows this does d/2 score
// FMAs per key where the 64-row tile kernel would do d (8 of 16 lanes used).
// With 2-4 rows and dk = 8 vectors (128 on AVX-512), rows go in pairs whose
// Q stays in registers over the whole tile (GQA-4 decode, 1 thread: Lk =
// 16384 22.6 -> 26.3 GB/s, 65536 18.7 -> 20.0). Not for 1 row: the same
// kernel made MHA decode from DRAM slower (25 -> 16 GB/s), for no reason we
// could find, so MHA keeps ScoreRowsFourKeys. With 4 rows on AVX-512 (32
// registers, all of which a 4-row Q or O would take) both S and P·V make one
// pass over their tile, key by key in address order, with part of Q (S) or
// of O (P·V) in L1: the second pass of the pair or column-half schemes read
// the tile again with memory idle (GQA-4 decode, 1 thread: Lk = 16384
// 27 -> 35 GB/s, 65536 20 -> 24.7 of 28.6 streamed; 2 threads 34 -> 39).
//
// Element types (kernels/problem.h, "Element types"). Accumulation, m, l and
// lse are fp32 whatever the inputs. Three paths:
//   * bf16 Q, K and V, on a CPU with AVX512_BF16 (Zen 4, Cooper Lake and
//     later; RunStats::path "AVX3+AVX512_BF16") whose tuning lets them
//     (flash.vdpbf16ps: not by default on Sapphire and Emerald
//     Rapids, whose VDPBF16PS issues at half the FMA rate, so that these
//     kernels ran 0.53-0.65x as fast as the converted path below; Zen 4
//     issues it at the FMA's rate; kernels/DESIGN.md, "bf16 without AMX on
//     a 2-FMA-port core"), blocks of more than 8 rows:
//     S and P·V on VDPBF16PS (kernels/ukernels/bf16_avx512.h), one
//     instruction per 16 lanes x 2 multiply-adds, so the two products take
//     half the fp32 instructions and K/V tiles half the bytes. Q is paired
//     once per block (unscaled: scaling bf16 Q would round it twice; the
//     score kernel scales its accumulators, or the softmax the raw scores),
//     K is read in place and V is paired per tile (dv' x Bc/2 pairs in the
//     packed-V scratch). The softmax writes P as bf16 rows
//     (softmax_to_rows: max pass, or the score tile's maximum, then exp,
//     sums of the unrounded fp32 P, rounding, pairing and a transpose in
//     registers in one pass; no fp32 P), which P·V broadcasts a pair at a
//     time. The products no longer dominate as much: the softmax (~10
//     instructions per 16 scores for the exp against d/2 VDPBF16PS per
//     score pair of products) is a larger share, so the speedup over fp32
//     is below the 2x of the instruction count (kernels/DESIGN.md,
//     "Reduced precision"). Where the CPU has AMX-BF16 and dk is a multiple
//     of 32 the score tile and P·V go to the tile kernels instead
//     (kernels/ukernels/bf16_amx.h, RunStats::path "AVX3+AMX_BF16";
//     PairKernels chooses, ATTNLAB_NO_AMX=1 turns AMX off): TDPBF16PS
//     takes the Q and V pairs as they are, and the P rows are its A layout.
//     When nothing reads the scaled scores in between (ScaleInSoftmax: no
//     softcap, ALiBi or additive mask, scale > 0) the softmax takes the
//     scale from the score tile, which then stores Sᵀ as the products leave
//     it.
//   * Decode blocks of 2-4 rows (GQA decode) with bf16 K or V, on a CPU with
//     AVX512_BF16 whose tuning lets VDPBF16PS run (as above: not by default
//     on Sapphire and Emerald Rapids, where the converting kernels below
//     took 0.75-0.8x the time of these; RunStats::path
//     "AVX3+AVX512_BF16"): the scores and P·V on
//     VDPBF16PS (kernels/ukernels/bf16_decode.h), K and V read in place with
//     no conversion (Q rounded to bf16 once when it is not bf16; the
//     weights to bf16 pairs for P·V). 0.70-0.80x the time of the
//     converting kernels below from L3, 0.9 from DRAM (GQA-4, d = 128, Zen 4
//     VM; kernels/DESIGN.md, "Decode on VDPBF16PS").
//   * Decode blocks of 1-4 rows with int8 K or V, on a CPU with AVX512_VNNI
//     (RunStats::path "AVX3+AVX512_VNNI"): the scores and P·V on VPDPWSSD
//     (kernels/ukernels/i8_decode.h), K and V read in place and widened to
//     int16, Q quantized to int16 once per block and the weights per
//     64-key chunk, the products exact in int32. 0.77-0.84x the time of the
//     converting kernels below from DRAM, 0.65-0.89x from L3 (MHA and GQA-4,
//     d = 128, Zen 4 VM; kernels/DESIGN.md, "int8 decode on VPDPWSSD").
//   * Other decode blocks (<= 8 rows) on reduced K or V: the few-row score and P·V
//     kernels read the rows in place and convert each vector in registers
//     (LoadVecAsF32; f16 where the target converts in hardware), an int8
//     row's scale multiplying its score or weight once per key; so decode
//     reads K and V at their own width: 2 bytes (bf16, f16) or 1 byte plus
//     a 4-byte scale per row (int8) instead of 4. Widths that are not whole
//     vectors convert 32 rows at a time into L1 (kDecodeChunk).
//   * Everything else (f16, int8, mixed types, bf16 on other CPUs or where
//     the tuning says so, ATTNLAB_PORTABLE=1): K and V tiles are converted
//     exactly to fp32 (to_f32_row) once per tile and work item into scratch
//     (HeldRows: an item's up to 8 row blocks share it), where the fp32
//     micro-kernels read them, up to 512 rows to each converted element; Q
//     rows are converted on load.
// A reduced O is finished in fp32 and rounded once (StoreRow).
//
// Paged K/V (Problem::kv_pages): tiles stay Bc keys; inside a tile the score
// and P·V micro-kernels run once per run of keys whose rows lie at one stride
// (a block of the pool: ForEachKvRun), each writing or reading its slice of
// S, so the online softmax still steps once per Bc keys. The bf16 pair
// kernels take one stride per tile and are not used on a paged cache (the
// converted path runs instead). Decode blocks read the pool's blocks in
// table order, anywhere in memory, where the hardware prefetcher starts over
// at each block: the few-row kernels prefetch rows into L2 a distance ahead
// in the order they read them, across blocks (DecodeRowsAhead; one block
// ahead at first: paged decode 1.4-1.7x faster at block size 16, 1.1-1.4x at
// 32, reports/vm-2026-12-02-serving against the report before it;
// kernels/DESIGN.md, "Paged K/V"). And a block holds its
// keys' rows of every kv head together, so a paged decode item takes
// several kv heads (flash::Plan::heads: their rows together at most
// kFewRows), each a Block in its own part of the scratch (HeadScratch), and
// reads each run head after head: a block's slices in address order, one
// piece, where an item per head read one 8 KiB slice per block and pass
// (MHA, block size 16: 5-11% faster, kernels/DESIGN.md). Where this target's
// few-row P·V kernel takes runs in one call (TargetPlan: AVX-512, d = 128),
// an item instead reads a tile's runs head after head, each head's whole
// tile of blocks in one call of the run kernels (ScoreRowsRuns, PvRowsRuns:
// Q and O stay in registers across the blocks; Plan::run_group_blocks,
// ForEachRunGroup); the two orders read at the same speed on the Zen 4 VM
// (kernels/DESIGN.md, "A tile's runs in one call").
//
// Decode (fewer than 16 row blocks, Lk > 512): flash-decoding. Each
// block's keys are split into `splits` tile-aligned ranges (a function of the
// shape only, never of the thread count, so results are bitwise identical for
// any thread count: deterministic = true); items write partial (m, l, O) and
// the item that completes a block merges its splits in a fixed order (no
// second parallel pass, no barrier). With GQA the group's heads are rows of
// one block, so K and V are read once per group. The few-row kernels
// prefetch K and V rows into L2 a distance ahead of the rows they read
// (DecodeRowsAhead) when K and V pass half the L3: the tuning's distance for
// GQA, for MHA (one row per kv head) or for a paged cache (32 KiB unless
// tuned; none for MHA on Zen 4). On the Zen 3 VM the hardware prefetcher
// alone let the memory idle while they computed (GQA-4 decode 1.24-1.48x
// faster, MHA 1.01-1.28x); on the Zen 4 VM the prefetch made MHA 1.4x
// slower (kernels/DESIGN.md, "Decode prefetch"; `attnlab tune` measures 0-64
// KiB on each machine).
//
// Work items of several row blocks: a many-row item (not paged) takes up to
// 8 row blocks (Plan::sub_blocks: as many as leave 32 items and the rows
// fill), which take each key tile in turn: one read of the K and V tiles
// from L2/L3 (and one pairing of V on the bf16 pair paths, one conversion
// of K and V to fp32 on the converted path: HeldRows) serves up to 512
// rows. Causal's diagonal tile, which each block sees to its own last key,
// is taken by the item's last block first, whose pairs, conversions and
// V's finiteness check serve the shorter ranges of the others. Each row's
// arithmetic is unchanged, so are the bits (tested). Sapphire Rapids VM, 1
// thread, time against items of one block: bf16 on AMX dense 0.83-0.88,
// causal 0.87-0.98; bf16 on VDPBF16PS 0.93-1.00; fp32 0.93-1.00 (N = 2048
// and 4096, d = 64 and 128, 4 blocks); 8 blocks against 4: 0.96-0.98 bf16
// and ~0.99 fp32 (kernels/DESIGN.md, "AMX").
//
// Parallelism: work items are (row blocks, key split), handed out dynamically
// by ParallelFor in groups of (batch, kv head) pairs whose K and V fit in one
// L2 (so the threads share the group's K/V in cache: one head from N = 1024
// at d = 128), and within a group in order of decreasing query position
// across its heads, so for causal masks the longest blocks start first
// (longest-processing-time-first) and the short ones fill in at the end.
//
// Bytes (fp32) for B, H, Hkv, Lq, Lk, dk, dv, g = H / Hkv:
//   reads  Q: 4·B·H·Lq·dk once; K, V: 4·B·Hkv·Lk·(dk + dv) once per work
//          item, i.e. ceil(g·Lq / (64·Plan::sub_blocks)) times (from L3 when one head's K
//          and V fit: items run head group by head group, so the threads share one group's K/V
//          rather than cycling through all heads' (32 MiB at N = 4096, d = 128, H = 8: from DRAM,
//          -15%); causal: about half); decode (Lq·g <= 64): K and V exactly once;
//   writes O: 4·B·H·Lq·dv, lse: 4·B·H·Lq. Nothing of size Lq x Lk.
// FLOPs: 2·(dk + dv) per visible (query, key) pair plus the masked part of
// partial tiles (the masked triangle of the diagonal: partial tiles are
// clipped to the union of the block's ranges, so a wide Bc wastes no more
// than 64·64/2 pairs per causal block); exps: one per computed score plus
// one per row per tile.
//
// Working set per thread: Qᵀ 64·dk + Sᵀ 64·Bc + O 64·dv' + 3·64 floats + 1
// KiB of row ranges (+ a packed V tile Bc·dv' only when dv is not a multiple
// of 16) = 161 KiB at dk = dv = 64, 193 KiB at 128 (Bc = 512), independent of
// Lq and Lk beyond Bc = min(512, Lk). Split decode runs add partial results of
// items·min(64, g·Lq)·(dv' + 2) floats, with items = blocks·splits <= 47
// (splits happen only below 16 blocks and aim at 32 items).
// So Lq = Lk = 32768, dk = dv = 64 takes 324 KiB on 2 threads (tested < 4 MiB).
// An item of 8 row blocks holds 8 Q blocks, O, m, l and alpha instead of
// one (its score tile and P rows are shared): declared at N = 4096, d = 128,
// bf16 822 kB with one block, 1023 with 4, 1293 with 8; fp32 400 with 4,
// 670 with 8.
//
// Block sizes (Zen 4: L1d 32 KiB, L2 1 MiB per core, 32 zmm registers):
//   * Br = 64 = 4 AVX-512 vectors of queries: the S micro-kernel holds 6 keys
//     x 4 vectors = 24 accumulators (+4 Qᵀ vectors + 1 broadcast <= 32 regs);
//     per dk step 4 loads + 6 broadcast loads feed 24 FMAs (Zen 4 issues one
//     512-bit FMA and two loads per cycle, so FMA stays the bottleneck).
//   * Bc = 512 (or Lk rounded up to 16 when shorter): the P·V micro-kernel
//     (6 rows x 4 vectors of O = 24 accumulators, 4 V loads + 6 broadcasts
//     per 24 FMAs) runs its key loop over the whole tile, so the per-call
//     cost of loading and storing 24 accumulators is paid once per 512 keys
//     (attnlab_bench ukernel/f32_pv_tile/rows:64/d:128, one Zen 4 core, AVX3:
//     110.9 GF/s over 64 keys, 115.6 over 512, against an FMA peak of 116
//     measured in the same run: reports/testdata/quick.json). Fewer tiles also mean fewer
//     online-softmax steps (m, l, alpha, O rescales) and, for N <= 512, a
//     single tile: no rescaling at all. Sᵀ
//     (128 KiB), Qᵀ and O (32 KiB each at d = 128) and the K and V tiles
//     (256 KiB each at d = 128) stay within L2 (1 MiB). Measured with
//     attnlab_bench --suite=default on builds with kMaxBc = 64 / 256 / 512 /
//     1024 (dense, 1 thread, GF/s): N = 256, d = 128: 97.8 /
//     102.4 / 102.5 / 102.5; N = 2048, d = 64: 91.6 / 95.4 / 96.5 / 97.0;
//     N = 4096, d = 128: 98.7 / 102.6 / 103.9 / 104.2; GQA-4 decode,
//     Lk = 65536: 15.7 / 18.0 / 20.3 / 19.8 GB/s. Past 512 the gain is under
//     1% for twice the scratch.
//   * The softmax costs ~2 passes over Sᵀ and one exp per score (~17
//     instructions per 16): about 1/(d/8) of the FMA time, 6% at d = 64 (see
//     kernels/DESIGN.md), independent of Bc.
//   * K/V reuse: each K/V element loaded per row block feeds 64 rows:
//     4·(dk+dv) bytes per 64·2·(dk+dv) FLOPs = 1/32 byte per FLOP from L2/L3,
//     ~2.8 GB/s at 90 GFLOP/s, far below L3 bandwidth, so Br = 64 suffices.

#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <span>

#include "kernels/internal/flash_plan.h"
#include "kernels/internal/flush_subnormals.h"
#include "kernels/internal/parallel.h"
#include "kernels/internal/read_ahead.h"
#include "kernels/registry.h"
#include "kernels/ukernels/bf16_amx.h"
#include "kernels/ukernels/bf16_avx512.h"
#include "kernels/ukernels/bf16_decode.h"
#include "kernels/ukernels/i8_decode.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/flash.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/ukernels/common-inl.h"
#include "kernels/ukernels/convert-inl.h"
#include "kernels/ukernels/pv_tile-inl.h"
#include "kernels/ukernels/score_mods-inl.h"
#include "kernels/ukernels/score_rows-inl.h"
#include "kernels/ukernels/score_tile-inl.h"
#include "kernels/ukernels/softmax-inl.h"
#include "kernels/ukernels/transpose-inl.h"
#include "kernels/ukernels/vector_ops-inl.h"

#ifndef ATTNLAB_KERNELS_FLASH_ONCE_
#define ATTNLAB_KERNELS_FLASH_ONCE_
namespace attn::flash {
std::atomic<FlashTileCounts*> g_tile_counts{nullptr};
}  // namespace attn::flash
#endif

HWY_BEFORE_NAMESPACE();
namespace attn {
namespace HWY_NAMESPACE {
namespace {

using flash::kBr;
using flash::kFewRows;    // blocks of at most this many rows use dot products
using flash::kFewStride;  // row stride of a few-row block's score tile
static_assert(kBr == kScoreTileCols, "a row block is one score tile wide");

// What the conversion buffers hold: sc.kc the K rows of range `k` (from
// their address in the problem's K), converted to fp32; sc.vp the V rows of
// `v`, converted (fp32 path) or paired (bf16 pair path). The parts of a work
// item share the buffers, so a K and V tile that several of its row blocks
// see is converted (or paired) once, not once per row block (AttendBlock
// starts each item with nothing held; an address names the batch, kv head
// and key within the problem).
struct HeldRows {
  // How a buffer holds its rows: converted to fp32 (TileKeys, TileValues),
  // or as bf16 pairs (Bf16Pv). An item whose row blocks take the pair
  // kernels may end in a few-row block that converts V's rows of a partial
  // tile into the same buffer.
  enum class Form { kF32Rows, kBf16Pairs };
  struct Range {
    const void* first = nullptr;
    int64_t rows = 0;
    Form form = Form::kF32Rows;
    // True when the buffer holds rows [0, n) from `from` already, in form
    // `as`: the same n rows, or more of them where their first n are these
    // (rows converted one by one; pairs of an even n, none of which reaches
    // past row n); else records them as held, for the caller to fill the
    // buffer with. (Causal: an item's row blocks take their diagonal tile
    // longest first, AttendBlock, so that the first block's rows serve the
    // others.)
    bool HoldsOrTakes(const void* from, int64_t n, Form as) {
      const bool prefix = as == Form::kF32Rows || n % 2 == 0;
      if (first == from && form == as && (rows == n || (prefix && rows > n))) return true;
      first = from;
      rows = n;
      form = as;
      return false;
    }
  };
  Range k, v;
  // Whether V's rows [0, rows) from `first` are all finite, once a partial
  // bf16 tile asked (Bf16Pv: each row block of an item asks for its
  // diagonal tile, over ranges that share their start).
  struct Finite {
    const void* first = nullptr;
    int64_t rows = 0;
    bool all = false;
  } v_finite;
};

// A thread's scratch (flash::Plan::thread_floats, each piece 64-byte
// aligned).
struct Scratch {
  float* qt;       // Qᵀ dk x kBr, or row-major kFewRows x dkp (flash::QBlockFloats)
  float* st;       // bc x kBr (or kFewRows x kFewStride)
  float* vp;       // bc x dvp, when V is packed
  float* o;        // kBr x dvp (per row block of the item: plan.item_rows() x dvp in all)
  float* m;        // kBr (the same)
  float* l;        // kBr
  float* alpha;    // kBr
  float* kc;       // bc x dk: the K tile as fp32 (reduced-precision K only)
  float* qc;       // kBr x dk: the block's Q rows as fp32 (reduced-precision Q)
  float* oc;       // dvp: an O row before rounding (reduced-precision O)
  uint32_t* pr;    // kBr x plan.p_row_pairs: P as bf16 rows (the pair kernels)
  uint16_t* qw;    // few-row Q as bf16 or int16 words, rows dk apart (the decode kernels)
  float* q_step;   // few-row Q's int16 step times the softmax scale, per row (int8 K)
  int64_t* rb;     // kBr (the same): first visible key of each row, within the item
  int64_t* re;     // kBr (the same): one past the last
  HeldRows* held;  // what kc and vp hold (the work item's)
};

struct BlockCounts {
  int64_t full = 0, partial = 0, skipped = 0;
};

// The rows of one work item and the keys they see.
struct Block {
  int64_t b, kvh, r0, nrows;
  bool few_rows;  // <= kFewRows: dot products along d, S row-major
  int64_t rp;     // rows padded to whole vectors
  int64_t dkp;    // dk padded to whole vectors (few-row Q)
  // Element (key j, row x) of the score tile is st[j·sj + x·sr]: Sᵀ
  // (key-major) normally, S (row-major) for few rows, so that each softmax
  // vectorizes its long axis.
  int64_t sj, sr;
  // Union [ulo, uhi) and intersection [ilo, ihi) of the rows' visible keys.
  int64_t ulo, uhi, ilo, ihi;
  // Non-null: bf16 Q, K, V on VDPBF16PS (Q pairs in sc.qt, K in place, P
  // and V paired per tile; bf16_avx512.h). Many-row blocks only.
  const ukernels::Bf16Kernels* pairs;
  // Few-row blocks of 2-4 rows on VDPBF16PS (bf16_decode.h,
  // DecodePairKernels): the scores when K is bf16 (Q as bf16 words in
  // sc.qw), P·V over full tiles when V is bf16.
  const ukernels::Bf16DecodeKernels* decode_pairs;
  bool k_pairs, v_pairs;
  // Few-row blocks of 1-4 rows with int8 K or V on VPDPWSSD (i8_decode.h,
  // DecodeI8Kernels): the scores when K is int8 (Q as int16 words in sc.qw,
  // its steps in sc.q_step; not when a Q row is not finite), P·V over full
  // tiles when V is int8.
  const ukernels::I8DecodeKernels* i8_decode;
  bool k_i8, v_i8;
};

// The VDPBF16PS / AMX / VPDPWSSD kernel sets a problem takes (null: none):
// the tiles of many-row blocks (PairKernels) and the decode kernels of
// few-row ones (DecodePairKernels, DecodeI8Kernels: every block of such a
// problem has its 1-4 or 2-4 rows), with which of the two products those
// take, decided once per problem.
struct PairSets {
  const ukernels::Bf16Kernels* tiles = nullptr;
  const ukernels::Bf16DecodeKernels* decode = nullptr;
  bool decode_k = false, decode_v = false;
  const ukernels::I8DecodeKernels* i8_decode = nullptr;
  bool decode_k_i8 = false, decode_v_i8 = false;
};

// Loads the block's queries pre-scaled by `scale` (Qᵀ, or row-major Q for few
// rows; unscaled bf16 Q pairs for the bf16 kernels `bf16`, when given), each
// row's visible keys within [key_lo, key_hi), their union and intersection,
// and starts the online softmax (m = -inf, l = 0).
Block LoadBlock(const ValidProblem& p, int64_t b, int64_t kvh, int64_t r0, int64_t nrows,
                int64_t key_lo, int64_t key_hi, const PairSets& sets, Scratch& sc) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const int64_t dk = p.shape.head_dim;
  Block blk;
  blk.b = b;
  blk.kvh = kvh;
  blk.r0 = r0;
  blk.nrows = nrows;
  blk.few_rows = nrows <= kFewRows;
  blk.rp = (nrows + N - 1) / N * N;
  blk.dkp = flash::RoundUp(dk, N);
  blk.sj = blk.few_rows ? 1 : kBr;
  blk.sr = blk.few_rows ? kFewStride : 1;
  blk.ulo = key_hi, blk.uhi = key_lo, blk.ilo = key_lo, blk.ihi = key_hi;
  blk.pairs = blk.few_rows ? nullptr : sets.tiles;
  blk.decode_pairs = sets.decode;
  blk.k_pairs = sets.decode_k;
  blk.v_pairs = sets.decode_v;
  blk.i8_decode = sets.i8_decode;
  blk.k_i8 = sets.decode_k_i8;
  blk.v_i8 = sets.decode_v_i8;
  const float* q_rows[kBr];
  const uint16_t* q_bf16[kBr] = {};  // (set for blk.pairs; zeroed for gcc 12 -Wmaybe-uninitialized)
  for (int64_t x = 0; x < nrows; ++x) {
    const int64_t r = r0 + x;
    const int64_t i = r / p.group;
    const int64_t h = kvh * p.group + r % p.group;
    if (blk.pairs) {
      q_bf16[x] = static_cast<const uint16_t*>(ValidProblem::Row(p.q, b, h, i));
    } else if (p.q.dtype == DType::kF32) {
      q_rows[x] = p.QRow(b, h, i);
    } else {
      ToF32Row(p.q.dtype, ValidProblem::Row(p.q, b, h, i), dk, 1.0f, sc.qc + x * dk);
      q_rows[x] = sc.qc + x * dk;
    }
    if (blk.k_pairs) {
      // Unscaled, rounded to bf16 once (exact for a bf16 Q); the kernel
      // scales the sums.
      for (int64_t k = 0; k < dk; ++k) sc.qw[x * dk + k] = BF16BitsFromF32(q_rows[x][k]);
    } else if (blk.few_rows) {
      for (int64_t k = 0; k < blk.dkp; ++k) {
        sc.qt[x * blk.dkp + k] = k < dk ? q_rows[x][k] * p.scale : 0.0f;
      }
    }
    if (blk.k_i8) {
      // Unscaled, quantized to int16 once; a row that is not finite sends
      // the block to the fp32 kernels (sc.qt above).
      int16_t* words = reinterpret_cast<int16_t*>(sc.qw) + x * dk;
      const float step = ukernels::QuantizeQueryRow(q_rows[x], dk, words);
      if (std::isnan(step)) blk.k_i8 = false;
      sc.q_step[x] = step * p.scale;
    }
    const KeyRange keys = p.VisibleKeys(b, i);
    sc.rb[x] = std::max(keys.begin, key_lo);
    sc.re[x] = std::min(keys.end, key_hi);
    if (sc.rb[x] < sc.re[x]) {
      blk.ulo = std::min(blk.ulo, sc.rb[x]);
      blk.uhi = std::max(blk.uhi, sc.re[x]);
    }
    blk.ilo = std::max(blk.ilo, sc.rb[x]);
    blk.ihi = std::min(blk.ihi, sc.re[x]);
  }
  // In registers, 16 x 16 at a time (element by element this was 9% of the
  // time at N = 128, d = 128, where a block has only two key tiles).
  if (blk.pairs) {
    blk.pairs->pack_query_pairs(q_bf16, nrows, dk, reinterpret_cast<uint32_t*>(sc.qt));
  } else if (!blk.few_rows) {
    TransposeRows(q_rows, nrows, blk.rp, dk, p.scale, sc.qt, kBr);
  }
  // (Unaligned: a head of a many-head item starts at any row, HeadScratch.)
  for (int64_t x = 0; x < blk.rp; x += N) {
    hn::StoreU(hn::Set(d, -kInf), d, sc.m + x);
    hn::StoreU(hn::Zero(d), d, sc.l + x);
  }
  return blk;
}

// K rows [j0, j0 + nc) as the score kernels read them: fp32 K in place;
// reduced-precision K converted (ToF32Row, exact) into sc.kc once per work
// item (sc.held), where the up to 512 rows of the item's row blocks read it
// from L1/L2. Sets *stride.
const float* TileKeys(const ValidProblem& p, const Block& blk, int64_t j0, int64_t nc, Scratch& sc,
                      int64_t* stride) {
  if (p.k.dtype == DType::kF32) {
    *stride = p.k.strides.row;
    return p.KRow(blk.b, blk.kvh, j0);
  }
  const int64_t dk = p.shape.head_dim;
  *stride = dk;
  if (sc.held->k.HoldsOrTakes(p.KvRow(p.k, blk.b, blk.kvh, j0), nc, HeldRows::Form::kF32Rows)) {
    return sc.kc;
  }
  for (int64_t j = 0; j < nc; ++j) {
    ToF32Row(p.k.dtype, p.KvRow(p.k, blk.b, blk.kvh, j0 + j), dk, p.KScale(blk.b, blk.kvh, j0 + j),
             sc.kc + j * dk);
  }
  return sc.kc;
}

// V rows [j0, j0 + nc) as PvTile reads them: in place when they are fp32 and
// dv is a whole number of vectors, aligned or not (packing is a second pass
// over V that cost more than the cache-line-split loads it avoids: MHA
// decode, d = 128, 15 -> 25 GB/s; dense N = 2048, d = 128, +5%); else
// packed into sc.vp (converted to fp32 when reduced, exactly), zero-padded
// to dvp, once per work item as TileKeys. Sets *stride to the rows' stride.
const float* TileValues(const ValidProblem& p, const flash::Plan& plan, const Block& blk,
                        int64_t j0, int64_t nc, Scratch& sc, int64_t* stride) {
  if (plan.v_in_place) {
    *stride = p.v.strides.row;
    return p.VRow(blk.b, blk.kvh, j0);
  }
  const int64_t dv = p.shape.value_dim;
  *stride = plan.dvp;
  if (sc.held->v.HoldsOrTakes(p.KvRow(p.v, blk.b, blk.kvh, j0), nc, HeldRows::Form::kF32Rows)) {
    return sc.vp;
  }
  for (int64_t j = 0; j < nc; ++j) {
    float* dst = sc.vp + j * plan.dvp;
    ToF32Row(p.v.dtype, p.KvRow(p.v, blk.b, blk.kvh, j0 + j), dv, p.VScale(blk.b, blk.kvh, j0 + j),
             dst);
    std::fill(dst + dv, dst + plan.dvp, 0.0f);
  }
  return sc.vp;
}

// True when the nc rows of dvp floats at v (stride vs) are all finite.
bool TileValuesFinite(const float* v, int64_t vs, int64_t nc, int64_t dvp) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  auto all = hn::FirstN(d, N);  // all true
  for (int64_t j = 0; j < nc; ++j) {
    for (int64_t x = 0; x < dvp; x += N)
      all = hn::And(all, hn::IsFinite(hn::LoadU(d, v + j * vs + x)));
  }
  return hn::AllTrue(d, all);
}

// The visible part [lo, hi) of row x in tile [j0, j1), relative to j0.
KeyRange TileRange(const Scratch& sc, int64_t x, int64_t j0, int64_t j1) {
  return {std::min(std::max(sc.rb[x], j0), j1) - j0, std::max(std::min(sc.re[x], j1), j0) - j0};
}

// Whether the tile's score kernel applied the softcap and the ALiBi bias as
// it stored the scores: the fp32 many-row one (ScoreTile) does; the few-row
// and bf16 pair kernels leave them to ModifyTile.
bool ModsInScores(const Block& blk) { return !blk.few_rows && blk.pairs == nullptr; }

// The ALiBi slope and position (i + off) of each of the block's rp rows: row
// x is query position (r0 + x) / g of head kvh·g + (r0 + x) % g; padded rows
// get slope 0 and position 0.
void AlibiOfRows(const ValidProblem& p, const Block& blk, float* slopes, float* positions) {
  for (int64_t x = 0; x < blk.rp; ++x) {
    const int64_t r = blk.r0 + x;
    slopes[x] = x < blk.nrows ? p.modifiers.alibi_slopes[blk.kvh * p.group + r % p.group] : 0.0f;
    positions[x] = x < blk.nrows ? static_cast<float>(r / p.group + p.DiagOffset(blk.b)) : 0.0f;
  }
}

// Softcap and ALiBi (kernels/problem.h, "Score modifiers") on the tile's
// scaled scores, before the mask, unless the score kernel applied them
// (ModsInScores).
void ModifyTile(const ValidProblem& p, const Block& blk, int64_t j0, int64_t nc, Scratch& sc) {
  if (ModsInScores(blk)) return;
  const std::optional<float> cap = p.modifiers.softcap;
  const bool alibi = !p.modifiers.alibi_slopes.empty();
  if (!cap && !alibi) return;
  HWY_ALIGN float slopes[kBr], positions[kBr];
  if (alibi) AlibiOfRows(p, blk, slopes, positions);
  if (blk.few_rows) {  // S row-major: each row's keys are contiguous
    for (int64_t x = 0; x < blk.nrows; ++x) {
      float* s = sc.st + x * blk.sr;
      if (cap) SoftcapRow(s, s, nc, *cap);
      if (alibi) AlibiRow(s, nc, slopes[x], static_cast<float>(j0) - positions[x]);
    }
    return;
  }
  if (cap) {  // Sᵀ: each key's rp rows are contiguous
    for (int64_t j = 0; j < nc; ++j)
      SoftcapRow(sc.st + j * blk.sj, sc.st + j * blk.sj, blk.rp, *cap);
  }
  if (alibi) AlibiColumns(sc.st, blk.sj, nc, blk.rp, slopes, positions, static_cast<float>(j0));
}

// MaskTile's hiding on Sᵀ (sr = 1: a key's scores of all rows in a row of
// st): key by key over the keys some row hides, the rows that hide it under
// a lane mask. (Row by row, the stores of one row went 256 bytes apart: ~1%
// of causal bf16 flash on AMX at N = 2048, d = 128.)
void HideKeysOfColumns(const Block& blk, int64_t j0, int64_t j1, Scratch& sc) {
  const DF d;
  const hn::RebindToSigned<DF> di;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d)), nc = j1 - j0;
  HWY_ALIGN int32_t lo[kBr], hi[kBr];  // row x sees keys [lo, hi) of the tile
  int64_t max_lo = 0, min_hi = nc;
  for (int64_t x = 0; x < blk.rp; ++x) {
    KeyRange vis{0, nc};  // padded rows: nothing hidden (nothing changed)
    if (x < blk.nrows) vis = TileRange(sc, x, j0, j1);
    lo[x] = static_cast<int32_t>(vis.empty() ? nc : vis.begin);
    hi[x] = static_cast<int32_t>(vis.empty() ? nc : vis.end);
    max_lo = std::max<int64_t>(max_lo, lo[x]);
    min_hi = std::min<int64_t>(min_hi, hi[x]);
  }
  const VF hidden = hn::Set(d, -kInf);
  const auto hide_key = [&](int64_t j) {
    const auto key = hn::Set(di, static_cast<int32_t>(j));
    const auto past = hn::Set(di, static_cast<int32_t>(j + 1));  // j >= hi: j + 1 > hi
    float* s = sc.st + j * blk.sj;
    for (int64_t x = 0; x < blk.rp; x += N) {
      const auto hides =
          hn::Or(hn::Lt(key, hn::Load(di, lo + x)), hn::Gt(past, hn::Load(di, hi + x)));
      hn::Store(hn::IfThenElse(hn::RebindMask(d, hides), hidden, hn::Load(d, s + x)), d, s + x);
    }
  };
  for (int64_t j = 0; j < max_lo; ++j) hide_key(j);
  for (int64_t j = std::max(min_hi, max_lo); j < nc; ++j) hide_key(j);
}

// Adds the additive mask to the tile's scores, and (partial tiles) sets the
// scores of structurally hidden (key, row) pairs to -inf.
void MaskTile(const ValidProblem& p, const Block& blk, int64_t j0, int64_t j1, bool partial,
              Scratch& sc) {
  const int64_t nc = j1 - j0;
  if (p.mask.kind == MaskKind::kAdditive) {
    for (int64_t x = 0; x < blk.nrows; ++x) {
      const int64_t r = blk.r0 + x;
      const float* a = p.AdditiveRow(blk.b, blk.kvh * p.group + r % p.group, r / p.group) + j0;
      for (int64_t j = 0; j < nc; ++j) sc.st[j * blk.sj + x * blk.sr] += a[j];
    }
  }
  if (!partial) return;
  if (blk.sr == 1) return HideKeysOfColumns(blk, j0, j1, sc);
  for (int64_t x = 0; x < blk.nrows; ++x) {
    const KeyRange vis = TileRange(sc, x, j0, j1);
    float* s = sc.st + x * blk.sr;
    const int64_t lo = vis.empty() ? nc : vis.begin;  // hide [0, lo) and [hi, nc)
    const int64_t hi = vis.empty() ? nc : vis.end;
    for (int64_t j = 0; j < lo; ++j) s[j * blk.sj] = -kInf;
    for (int64_t j = hi; j < nc; ++j) s[j * blk.sj] = -kInf;
  }
}

// O rows *= alpha for rows whose maximum moved (alpha == 1 exactly
// otherwise, so the skip is exact).
void RescaleO(const Block& blk, int64_t dvp, Scratch& sc) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t x = 0; x < blk.nrows; ++x) {
    const float a = sc.alpha[x];
    if (a == 1.0f) continue;
    const VF av = hn::Set(d, a);
    float* o = sc.o + x * dvp;
    for (int64_t y = 0; y < dvp; y += N) hn::Store(hn::Mul(av, hn::Load(d, o + y)), d, o + y);
  }
}

// O += P·V for each row over its own visible keys only: the partial-tile
// path when a V row is not finite (a hidden key's weight is 0, but 0·NaN is
// NaN). Rare; at most a tile or two per block.
void PvVisibleOnly(const Block& blk, int64_t j0, int64_t j1, const float* st, const float* v,
                   int64_t vs, int64_t dvp, bool first, Scratch& sc) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t x = 0; x < blk.nrows; ++x) {
    const KeyRange vis = TileRange(sc, x, j0, j1);
    float* o = sc.o + x * dvp;
    if (first) std::fill(o, o + dvp, 0.0f);
    for (int64_t j = vis.begin; j < vis.end; ++j) {
      const VF pj = hn::Set(d, st[j * blk.sj + x * blk.sr]);
      for (int64_t y = 0; y < dvp; y += N) {
        hn::Store(hn::MulAdd(pj, hn::LoadU(d, v + j * vs + y), hn::Load(d, o + y)), d, o + y);
      }
    }
  }
}

// Decode (few rows) on reduced K or V reads them in place and converts in
// registers (LoadVecAsF32): f(tag) is called with a null `const T*` naming
// the element type of `dtype`, where the kernels have it (whole vectors
// along d, f16 only where the target converts it in hardware). False:
// none; the caller converts kDecodeChunk rows at a time instead (32 rows of
// d = 128 are 16 KiB of fp32, which stay in L1 between the conversion and
// the kernel that reads them).
constexpr int64_t kDecodeChunk = 32;
template <class F>
bool WithDecodeType(DType dtype, bool whole_vectors, F f) {
  if (!whole_vectors) return false;
  switch (dtype) {
    case DType::kBF16:
      f(static_cast<const hwy::bfloat16_t*>(nullptr));
      return true;
    case DType::kF16:
      if constexpr (!kHardwareF16) return false;
      f(static_cast<const hwy::float16_t*>(nullptr));
      return true;
    case DType::kI8:
      f(static_cast<const int8_t*>(nullptr));
      return true;
    default:
      return false;
  }
}
template <class Tag>
using ElementOf = std::remove_cv_t<std::remove_pointer_t<Tag>>;

// An int8 row's scale, applied once per key: to its scores (K) or weights (V)
// in the few-row S (row x at st + x·sr, keys contiguous).
void ScaleKeys(const ValidProblem& p, const RowScales& scales, const Block& blk, int64_t j0,
               int64_t nc, float* st) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const float* s = scales.data + p.KvOffset(scales.strides, blk.b, blk.kvh, j0);
  alignas(64) float gathered[flash::kMaxBc];
  if (scales.strides.row != 1) {
    for (int64_t j = 0; j < nc; ++j) gathered[j] = s[j * scales.strides.row];
    s = gathered;
  }
  for (int64_t x = 0; x < blk.nrows; ++x) {
    float* row = st + x * blk.sr;
    int64_t j = 0;
    for (; j + N <= nc; j += N)
      hn::StoreU(hn::Mul(hn::LoadU(d, s + j), hn::LoadU(d, row + j)), d, row + j);
    for (; j < nc; ++j) row[j] *= s[j];
  }
}

// A tile's S = Q·Kᵀ in fp32 (K converted to fp32 first when reduced). Many
// rows prefetch the next tile's K and V rows into L2 (K/V of a head come
// from L3 once per row block); few-row (decode) blocks stream K/V from
// memory and prefetch rows a distance ahead in the order they read them
// (`next_run`: DecodeRowsAhead), paged or not.
void F32ScoresRun(const ValidProblem& p, const flash::Plan& plan, const Block& blk, int64_t j0,
                  int64_t j1, float* st, const PrefetchRows& next_run, Scratch& sc,
                  float* tile_max) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(DF()));
  const int64_t nc = j1 - j0, dk = p.shape.head_dim;
  if (blk.k_pairs) {
    const auto* k = static_cast<const uint16_t*>(p.KvRow(p.k, blk.b, blk.kvh, j0));
    return blk.decode_pairs->score_rows(sc.qw, blk.nrows, k, p.k.strides.row, nc, dk, p.scale, st,
                                        kFewStride, next_run);
  }
  if (blk.k_i8) {
    const auto* k = static_cast<const int8_t*>(p.KvRow(p.k, blk.b, blk.kvh, j0));
    blk.i8_decode->score_rows(reinterpret_cast<const int16_t*>(sc.qw), blk.nrows, k,
                              p.k.strides.row, nc, dk, sc.q_step, st, kFewStride, next_run);
    return ScaleKeys(p, p.k_scales, blk, j0, nc, st);
  }
  if (blk.few_rows && p.k.dtype != DType::kF32) {
    // Decode on reduced K (WithDecodeType).
    const bool whole = dk % N == 0;
    const bool in_place = WithDecodeType(p.k.dtype, whole, [&](auto tag) {
      using T = ElementOf<decltype(tag)>;
      const T* k = static_cast<const T*>(p.KvRow(p.k, blk.b, blk.kvh, j0));
      ScoreRows<T>(sc.qt, blk.dkp, blk.nrows, k, p.k.strides.row, nc, dk, st, kFewStride, next_run);
    });
    if (in_place) {
      if (p.k.dtype == DType::kI8) ScaleKeys(p, p.k_scales, blk, j0, nc, st);
      return;
    }
    for (int64_t c = 0; c < nc; c += kDecodeChunk) {
      const int64_t n = std::min(kDecodeChunk, nc - c);
      int64_t ks;
      const float* k = TileKeys(p, blk, j0 + c, n, sc, &ks);
      ScoreRows(sc.qt, blk.dkp, blk.nrows, k, ks, n, dk, st + c, kFewStride);
    }
    return;
  }
  int64_t ks;
  const float* k = TileKeys(p, blk, j0, nc, sc, &ks);
  if (blk.few_rows) {
    return ScoreRows(sc.qt, blk.dkp, blk.nrows, k, ks, nc, dk, st, kFewStride, next_run);
  }
  PrefetchRows next;
  if (j1 < blk.uhi && plan.tile_prefetch) {
    const int64_t k_bytes = DTypeBytes(p.k.dtype), v_bytes = DTypeBytes(p.v.dtype);
    next = {static_cast<const char*>(p.KvRow(p.k, blk.b, blk.kvh, j1)),
            p.k.strides.row * k_bytes,
            dk * k_bytes,
            static_cast<const char*>(p.KvRow(p.v, blk.b, blk.kvh, j1)),
            p.v.strides.row * v_bytes,
            p.shape.value_dim * v_bytes,
            std::min({j1 + plan.bc, blk.uhi, p.KvRunEnd(j1)}) - j1};
  }
  HWY_ALIGN float slopes[kBr], positions[kBr];
  AlibiTile alibi;
  if (!p.modifiers.alibi_slopes.empty()) {
    AlibiOfRows(p, blk, slopes, positions);
    alibi = {slopes, positions, static_cast<float>(j0)};
  }
  ScoreTile(sc.qt, k, ks, nc, dk, blk.rp / N, st, p.modifiers.softcap.value_or(0.0f), next,
            tile_max, alibi);
}

// Calls f(r0, r1) for the runs of keys [j0, j1) whose K and V rows each lie
// at one stride: the whole range, unless K/V are paged (each run then ends
// where a block does). The micro-kernels take a run at a time; the tile (and
// its online-softmax step) stays Bc keys whatever the block size.
template <class F>
void ForEachKvRun(const ValidProblem& p, int64_t j0, int64_t j1, F f) {
  for (int64_t r0 = j0; r0 < j1;) {
    const int64_t r1 = std::min(j1, p.KvRunEnd(r0));
    f(r0, r1);
    r0 = r1;
  }
}

// Calls f(a, b) for each group of runs [a, b) of keys [j0, j1) that an
// item's heads read one after the other: plan.run_group_blocks blocks of a
// paged cache (kernels/internal/read_ahead.h, RunGroupBlocks; > 1 only
// there).
template <class F>
void ForEachRunGroup(const ValidProblem& p, const flash::Plan& plan, int64_t j0, int64_t j1, F f) {
  const int64_t group_keys = plan.run_group_blocks * p.kv_pages->block_size;
  for (int64_t a = j0; a < j1;) {
    const int64_t b = std::min(j1, a - a % group_keys + group_keys);
    f(a, b);
    a = b;
  }
}

// Decode: the rows of t (K or V, `width` elements each) the plan's distance
// ahead of the run [r0, r1) of the item's head g in the order the item reads
// them, up to the block's last visible key, for the few-row kernels to
// prefetch into L2 as they read the run (kernels/internal/read_ahead.h). On
// a contiguous cache the hardware prefetcher alone did not keep the memory
// busy while they compute (Zen 3 VM, one thread, d = 128: a plain read of K
// and V in flash's order 11-12 GB/s, GQA-4 decode from L3 18.8, from DRAM
// 5-7 where 1 / (1/18.8 + 1/12) = 7.3 means no overlap at all; 32 KiB ahead:
// 1.24-1.32x). On a paged cache it cannot follow the jumps between blocks:
// there the distance is the same, or one block when it is 0 (RowsAheadFor;
// kernels/DESIGN.md, "Decode prefetch", "Paged K/V"). Nothing on either
// when K and V fit the L3 (kNoDecodePrefetch), nor for many-row blocks
// (their tiles prefetch the next tile: ScoreTile).
PrefetchRows DecodeRowsAhead(const ValidProblem& p, const flash::Plan& plan,
                             const TensorRef<const void>& t, int64_t width,
                             std::span<const Block> blocks, size_t g, int64_t r0, int64_t r1) {
  const Block& blk = blocks[g];
  if (!blk.few_rows) return {};
  const int64_t bytes = DTypeBytes(t.dtype);
  const ReadOrder order{.heads = static_cast<int64_t>(blocks.size()),
                        .block_size = p.kv_pages ? p.kv_pages->block_size : 0,
                        .end = blk.uhi,
                        .row_stride_bytes = t.strides.row * bytes,
                        .row_bytes = width * bytes,
                        .group_blocks = plan.run_group_blocks};
  const int64_t first_kvh = blocks[0].kvh;
  return RowsAhead(order, RowsAheadFor(order, plan.decode_prefetch_bytes), int64_t(g), r0, r1,
                   [&](int64_t h, int64_t j) {
                     return static_cast<const char*>(p.KvRow(t, blk.b, first_kvh + h, j));
                   });
}

// The runs of keys [a, b) (ForEachKvRun) of item head g's K or V rows (t,
// `width` elements each), each with the rows it prefetches (DecodeRowsAhead),
// for the few-row kernels that take a group of runs in one call; valid
// until the thread's next call. A group is at most a tile (RunGroupBlocks),
// so at most kMaxBc runs. The array is the thread's, built once: one on the
// stack per call was 45 KiB of default member initializers to write each
// time (paged decode at one run per group ran 2x slower for it).
KeyRuns GroupRuns(const ValidProblem& p, const flash::Plan& plan, const TensorRef<const void>& t,
                  int64_t width, std::span<const Block> blocks, size_t g, int64_t a, int64_t b) {
  thread_local std::array<KeyRun, flash::kMaxBc> runs;
  size_t n = 0;
  ForEachKvRun(p, a, b, [&](int64_t r0, int64_t r1) {
    runs[n++] = {p.KvRow(t, blocks[g].b, blocks[g].kvh, r0), r1 - r0,
                 DecodeRowsAhead(p, plan, t, width, blocks, g, r0, r1)};
  });
  return KeyRuns(runs.data(), n);
}

// Applies an int8 tensor's row scales to the few-row S of a group of runs
// that begins at key a (at st) after its kernel: run by run, since the
// scales of a paged cache are paged too.
void ScaleRuns(const ValidProblem& p, const RowScales& scales, const Block& blk, int64_t a,
               KeyRuns runs, float* st) {
  for (const KeyRun& run : runs) {
    ScaleKeys(p, scales, blk, a, run.keys, st);
    a += run.keys, st += run.keys;
  }
}

// Whether a few-row block's scores take a group of runs in one call
// (ScoreRowsRuns): K read in place (fp32, or a type the kernels convert in
// registers: WithDecodeType), no int8 or pair kernel of its own.
bool ScoresTakeRuns(const ValidProblem& p, const Block& blk) {
  if (!blk.few_rows || blk.k_pairs || blk.k_i8) return false;
  const int64_t N = static_cast<int64_t>(hn::Lanes(DF()));
  return p.k.dtype == DType::kF32 ||
         WithDecodeType(p.k.dtype, p.shape.head_dim % N == 0, [](auto) {});
}

// A few-row block's S = Q·Kᵀ for a group of runs beginning at key a, into st.
void F32ScoresRuns(const ValidProblem& p, const Block& blk, int64_t a, KeyRuns runs, float* st,
                   Scratch& sc) {
  const int64_t dk = p.shape.head_dim, stride = p.k.strides.row;
  if (p.k.dtype == DType::kF32) {
    return ScoreRowsRuns(sc.qt, blk.dkp, blk.nrows, runs, stride, dk, st, kFewStride);
  }
  WithDecodeType(p.k.dtype, true, [&](auto tag) {
    using T = ElementOf<decltype(tag)>;
    ScoreRowsRuns<T>(sc.qt, blk.dkp, blk.nrows, runs, stride, dk, st, kFewStride);
  });
  if (p.k.dtype == DType::kI8) ScaleRuns(p, p.k_scales, blk, a, runs, st);
}

// S = Q·Kᵀ over a tile for each of the item's heads (blocks[g] in
// parts[g]), group of runs by group (ForEachRunGroup) and within a group
// head after head (Sᵀ rows or S columns of each run at its place in the
// tile): a paged few-row block's group of several blocks in one call where
// its kernels take runs (ScoresTakeRuns), else run by run; decode
// prefetching K rows ahead (DecodeRowsAhead).
void F32Scores(const ValidProblem& p, const flash::Plan& plan, std::span<const Block> blocks,
               std::span<Scratch> parts, int64_t j0, int64_t j1, float* tile_max) {
  const int64_t dk = p.shape.head_dim;
  if (tile_max != nullptr) std::fill(tile_max, tile_max + blocks[0].rp, -kInf);
  auto run = [&](size_t g, int64_t r0, int64_t r1) {
    const PrefetchRows next_run = DecodeRowsAhead(p, plan, p.k, dk, blocks, g, r0, r1);
    F32ScoresRun(p, plan, blocks[g], r0, r1, parts[g].st + (r0 - j0) * blocks[g].sj, next_run,
                 parts[g], tile_max);
  };
  if (plan.run_group_blocks == 1) {
    return ForEachKvRun(p, j0, j1, [&](int64_t r0, int64_t r1) {
      for (size_t g = 0; g < blocks.size(); ++g) run(g, r0, r1);
    });
  }
  ForEachRunGroup(p, plan, j0, j1, [&](int64_t a, int64_t b) {
    for (size_t g = 0; g < blocks.size(); ++g) {
      if (ScoresTakeRuns(p, blocks[g])) {
        F32ScoresRuns(p, blocks[g], a, GroupRuns(p, plan, p.k, dk, blocks, g, a, b),
                      parts[g].st + (a - j0), parts[g]);
      } else {
        ForEachKvRun(p, a, b, [&](int64_t r0, int64_t r1) { run(g, r0, r1); });
      }
    }
  });
}

// O (+)= P·V in fp32 over a tile (V converted or packed first when needed);
// over each row's visible keys only when a partial tile's V is not finite.
void F32PvRun(const ValidProblem& p, const flash::Plan& plan, const Block& blk, int64_t j0,
              int64_t j1, bool partial, bool first, float* st, const PrefetchRows& next_run,
              Scratch& sc) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(DF()));
  const int64_t nc = j1 - j0, dvp = plan.dvp;
  if (blk.v_pairs && !partial) {
    const auto* v = static_cast<const uint16_t*>(p.KvRow(p.v, blk.b, blk.kvh, j0));
    return blk.decode_pairs->pv_rows(st, blk.sr, v, p.v.strides.row, nc, blk.nrows,
                                     p.shape.value_dim, !first, sc.o, dvp, next_run);
  }
  if (blk.few_rows && p.v.dtype != DType::kF32 && !partial) {
    // Decode on reduced V (WithDecodeType; a partial tile, whose hidden
    // keys' V may be NaN, takes the general path below).
    const bool whole = p.shape.value_dim == dvp;  // PvTile reads dvp columns
    if (p.v.dtype == DType::kI8 && whole) {
      ScaleKeys(p, p.v_scales, blk, j0, nc, st);
      const auto* v = static_cast<const int8_t*>(p.KvRow(p.v, blk.b, blk.kvh, j0));
      if (blk.v_i8 && blk.i8_decode->pv_rows(st, blk.sr, v, p.v.strides.row, nc, blk.nrows,
                                             p.shape.value_dim, !first, sc.o, dvp, next_run)) {
        return;  // else a weight is not finite: the fp32 kernel below
      }
    }
    const bool in_place = WithDecodeType(p.v.dtype, whole, [&](auto tag) {
      using T = ElementOf<decltype(tag)>;
      const T* v = static_cast<const T*>(p.KvRow(p.v, blk.b, blk.kvh, j0));
      PvTile<T>(st, blk.sj, blk.sr, v, p.v.strides.row, nc, blk.nrows, dvp / N, !first, sc.o, dvp,
                next_run);
    });
    if (in_place) return;
    for (int64_t c = 0; c < nc; c += kDecodeChunk) {
      const int64_t n = std::min(kDecodeChunk, nc - c);
      int64_t vs;
      const float* v = TileValues(p, plan, blk, j0 + c, n, sc, &vs);
      PvTile(st + c * blk.sj, blk.sj, blk.sr, v, vs, n, blk.nrows, dvp / N, !first || c > 0, sc.o,
             dvp);
    }
    return;
  }
  int64_t vs;
  const float* v = TileValues(p, plan, blk, j0, nc, sc, &vs);
  if (partial && !TileValuesFinite(v, vs, nc, dvp)) {
    return PvVisibleOnly(blk, j0, j1, st, v, vs, dvp, first, sc);
  }
  PvTile(st, blk.sj, blk.sr, v, vs, nc, blk.nrows, dvp / N, !first, sc.o, dvp, next_run);
}

// Paged decode: the tile's V rows from key r0 to j1 in read order (run by
// run, head after head), at most half the L2, into L2, all at once. A
// contiguous cache gets the same from PvTile: every key chunk of a head's
// tile (kPvKeyChunk, 64 keys on 16-register targets) prefetches the rest of
// the tile's rows, again and again. On Zen 3 those repeats are what made
// contiguous GQA-4 decode beat paged at block size 16, whose runs are
// shorter than a chunk: without them (one burst per tile, or rows a distance
// ahead, 32 KiB-256 KiB) contiguous GQA-4 decode ran 1.12-1.32x slower
// (kernels/DESIGN.md, "Repeated prefetches"). Only where PvTile itself
// chunks the tile (F32Pv): with 32 registers it makes one pass, and a burst
// of a whole tile's V at its start stalled on full fill buffers instead of
// overlapping the scores (Sapphire Rapids VM, GQA-4, Lk = 65536: 22% of
// paged decode's time in the burst's loop; without it 1.23-1.27x faster).
void PrefetchTileValues(const ValidProblem& p, std::span<const Block> blocks, int64_t r0,
                        int64_t j1) {
  const int64_t bytes = DTypeBytes(p.v.dtype);
  const int64_t row_bytes = p.shape.value_dim * bytes, stride = p.v.strides.row * bytes;
  int64_t left = L2CacheBytes() / 2;
  ForEachKvRun(p, r0, j1, [&](int64_t a, int64_t b) {
    for (const Block& blk : blocks) {
      if (left <= 0) return;
      const PrefetchRows run{.k = static_cast<const char*>(p.KvRow(p.v, blk.b, blk.kvh, a)),
                             .k_stride = stride,
                             .k_bytes = row_bytes,
                             .rows = b - a};
      run.Prefetch(0, run.rows);
      left -= run.rows * row_bytes;
    }
  });
}

// Whether a few-row block's P·V takes a group of runs in one call
// (PvRowsRuns): a whole tile (a partial one's hidden V may be NaN: F32PvRun
// checks), V read in place (fp32 at dv = dvp, or a type the kernels convert
// in registers), no int8 or pair kernel of its own.
bool PvTakesRuns(const ValidProblem& p, const flash::Plan& plan, const Block& blk, bool partial) {
  if (!blk.few_rows || partial || blk.v_pairs || blk.v_i8) return false;
  if (p.v.dtype == DType::kF32) return plan.v_in_place;
  return WithDecodeType(p.v.dtype, p.shape.value_dim == plan.dvp, [](auto) {});
}

// A few-row block's O (+)= P·V for a group of runs beginning at key a
// (weights at st); `first`: O is written, not added to.
void F32PvRuns(const ValidProblem& p, const flash::Plan& plan, const Block& blk, int64_t a,
               KeyRuns runs, bool first, float* st, Scratch& sc) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(DF()));
  const int64_t dvp = plan.dvp, stride = p.v.strides.row;
  if (p.v.dtype == DType::kF32) {
    return PvRowsRuns(st, blk.sj, blk.sr, runs, stride, blk.nrows, dvp / N, !first, sc.o, dvp);
  }
  if (p.v.dtype == DType::kI8) ScaleRuns(p, p.v_scales, blk, a, runs, st);
  WithDecodeType(p.v.dtype, true, [&](auto tag) {
    using T = ElementOf<decltype(tag)>;
    PvRowsRuns<T>(st, blk.sj, blk.sr, runs, stride, blk.nrows, dvp / N, !first, sc.o, dvp);
  });
}

// O (+)= P·V over a tile for each of the item's heads, group of runs by
// group (ForEachRunGroup) and within a group head after head: a paged
// few-row block's group of several blocks in one call where its kernels take
// runs (PvTakesRuns), else
// run by run; the first keys of the first tile write O; decode prefetches V
// rows ahead (DecodeRowsAhead) and, paged, the rest of the tile's V every
// kPvKeyChunk keys where the tile has more than one chunk, as contiguous
// PvTile does (PrefetchTileValues).
void F32Pv(const ValidProblem& p, const flash::Plan& plan, std::span<const Block> blocks,
           std::span<Scratch> parts, int64_t j0, int64_t j1, bool partial, bool first) {
  const int64_t dv = p.shape.value_dim;
  const bool repeat_tile_prefetch =
      p.kv_pages && blocks[0].few_rows && plan.decode_prefetch_bytes > 0 && kPvKeyChunk < j1 - j0;
  int64_t next_repeat = j0;
  auto run = [&](size_t g, int64_t r0, int64_t r1) {
    const PrefetchRows next_run = DecodeRowsAhead(p, plan, p.v, dv, blocks, g, r0, r1);
    F32PvRun(p, plan, blocks[g], r0, r1, partial, first && r0 == j0,
             parts[g].st + (r0 - j0) * blocks[g].sj, next_run, parts[g]);
  };
  if (plan.run_group_blocks == 1) {
    return ForEachKvRun(p, j0, j1, [&](int64_t r0, int64_t r1) {
      if (repeat_tile_prefetch && r0 >= next_repeat) {
        PrefetchTileValues(p, blocks, r0, j1);
        next_repeat = r0 + kPvKeyChunk;
      }
      for (size_t g = 0; g < blocks.size(); ++g) run(g, r0, r1);
    });
  }
  // (PrefetchTileValues' repeats are for targets whose P·V kernel chunks
  // the tile, which read run by run: TargetPlan.)
  ForEachRunGroup(p, plan, j0, j1, [&](int64_t a, int64_t b) {
    for (size_t g = 0; g < blocks.size(); ++g) {
      if (PvTakesRuns(p, plan, blocks[g], partial)) {
        F32PvRuns(p, plan, blocks[g], a, GroupRuns(p, plan, p.v, dv, blocks, g, a, b),
                  first && a == j0, parts[g].st + (a - j0), parts[g]);
      } else {
        ForEachKvRun(p, a, b, [&](int64_t r0, int64_t r1) { run(g, r0, r1); });
      }
    }
  });
}

// True when the nc bf16 rows of dv elements at v (stride vs) are all finite.
// A vector of exponent fields at a time (the scalar loop took a third of
// causal bf16 flash on AMX, N = 2048: every diagonal tile checks its V).
bool Bf16ValuesFinite(const uint16_t* v, int64_t vs, int64_t nc, int64_t dv) {
  const hn::ScalableTag<uint16_t> du;
  const int64_t N = static_cast<int64_t>(hn::Lanes(du));
  const auto exponent = hn::Set(du, uint16_t{0x7F80});
  auto infinite = hn::Zero(du);  // lanes that met an all-ones exponent
  bool finite = true;
  for (int64_t j = 0; j < nc; ++j) {
    const uint16_t* row = v + j * vs;
    int64_t y = 0;
    for (; y + N <= dv; y += N) {
      const auto e = hn::And(hn::LoadU(du, row + y), exponent);
      infinite = hn::Or(infinite, hn::VecFromMask(du, hn::Eq(e, exponent)));
    }
    for (; y < dv; ++y) finite &= (row[y] & 0x7F80) != 0x7F80;
  }
  return finite && hn::AllFalse(du, hn::MaskFromVec(infinite));
}

// Bf16ValuesFinite through the item's record (HeldRows::v_finite): rows
// [0, nc) from v are finite when more of them from v were.
bool HeldValuesFinite(HeldRows& held, const uint16_t* v, int64_t vs, int64_t nc, int64_t dv) {
  HeldRows::Finite& known = held.v_finite;
  if (known.first == v && (known.rows == nc || (known.all && known.rows > nc))) return known.all;
  known = {v, nc, Bf16ValuesFinite(v, vs, nc, dv)};
  return known.all;
}

// O += P·V over each row's visible keys only, V read from its bf16 rows,
// the weight of key j of row x p(x, j): PvVisibleOnly for bf16 tiles (rare:
// a partial tile whose V is not all finite).
template <class Weight>
void Bf16PvVisibleOnly(const Block& blk, int64_t j0, int64_t j1, const uint16_t* v, int64_t vs,
                       int64_t dv, int64_t dvp, bool first, Scratch& sc, Weight p) {
  for (int64_t x = 0; x < blk.nrows; ++x) {
    const KeyRange vis = TileRange(sc, x, j0, j1);
    float* o = sc.o + x * dvp;
    if (first) std::fill(o, o + dvp, 0.0f);
    for (int64_t j = vis.begin; j < vis.end; ++j) {
      const float pj = p(x, j);
      for (int64_t y = 0; y < dv; ++y) o[y] += pj * F32FromBF16Bits(v[j * vs + y]);
    }
  }
}

// Whether flash on the pair kernels scales the scores in the softmax (raw
// Sᵀ from the tiles: no pass over it) rather than after the score tile:
// when nothing reads the scaled scores in between (no softcap, ALiBi or
// additive mask; -inf masking does not care) and scale > 0 (so that the
// maximum of the raw scores, scaled, is the maximum of the scaled ones).
bool ScaleInSoftmax(const ValidProblem& p) {
  return p.scale > 0.0f && !p.modifiers.softcap && p.modifiers.alibi_slopes.empty() &&
         p.mask.kind != MaskKind::kAdditive;
}

// Whether a many-row fp32 block's whole tiles leave the score tile final:
// nothing but the tile (which applies the softcap and ALiBi, ModsInScores)
// touches them before the softmax (no additive mask; -inf masking touches
// partial tiles only), so the tile's maximum can come from ScoreTile
// (col_max) instead of a pass over Sᵀ (with the softmax's other changes,
// fp32 flash 0.92-0.98x the time on the Emerald Rapids VM; kernels/DESIGN.md,
// "The softmax on a 2-FMA-port core").
bool F32ScoresFinalInTile(const ValidProblem& p) { return p.mask.kind != MaskKind::kAdditive; }

// The bf16 version of a tile's S = Q·Kᵀ (times `scale`) and, after the
// softmax, O (+)= P·V: K read in place, V paired into sc.vp (unless it holds
// those keys' pairs already: sc.held), P already in rows in sc.pr.
void Bf16Scores(const ValidProblem& p, const Block& blk, int64_t j0, int64_t nc, float scale,
                Scratch& sc, float* col_max) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(DF()));
  const auto* k = static_cast<const uint16_t*>(p.KvRow(p.k, blk.b, blk.kvh, j0));
  blk.pairs->score_tile(reinterpret_cast<const uint32_t*>(sc.qt), k, p.k.strides.row, nc,
                        p.shape.head_dim, blk.rp / N, scale, sc.st, col_max);
}
void Bf16Pv(const ValidProblem& p, const flash::Plan& plan, const Block& blk, int64_t j0,
            int64_t j1, bool partial, bool first, Scratch& sc) {
  const int64_t nc = j1 - j0, dv = p.shape.value_dim, vs = p.v.strides.row;
  const auto* v = static_cast<const uint16_t*>(p.KvRow(p.v, blk.b, blk.kvh, j0));
  if (partial && !HeldValuesFinite(*sc.held, v, vs, nc, dv)) {
    const auto* pr = reinterpret_cast<const uint16_t*>(sc.pr);  // 2 bf16 per pair
    const int64_t ldp = 2 * plan.p_row_pairs;
    return Bf16PvVisibleOnly(
        blk, j0, j1, v, vs, dv, plan.dvp, first, sc,
        [&](int64_t x, int64_t j) { return F32FromBF16Bits(pr[x * ldp + j]); });
  }
  auto* vp = reinterpret_cast<uint32_t*>(sc.vp);
  if (!sc.held->v.HoldsOrTakes(v, nc, HeldRows::Form::kBf16Pairs)) {
    blk.pairs->pack_value_pairs(v, vs, nc, dv, vp, plan.dvp);
  }
  blk.pairs->pv_rows(sc.pr, plan.p_row_pairs, vp, plan.dvp, (nc + 1) / 2, blk.nrows, plan.dvp / 16,
                     !first, sc.o, plan.dvp);
}

// The scratch of the part of a work item whose rows start at row x of the
// item: its O, m, l, alpha and row ranges follow the previous part's, so the
// item's rows lie in sc's O, m and l in order. A head of a few-row item
// (plan.heads > 1; HeadScratch) also has its own Q and S rows; a row block
// of a many-row item (plan.sub_blocks > 1; SubBlockScratch) its own Q
// block, sharing the score tile, the P rows and the packed V. The
// conversion buffers are shared (each use ends before the next part's
// begins).
Scratch RowsScratch(const Scratch& sc, const flash::Plan& plan, int64_t x) {
  Scratch part = sc;
  part.o += x * plan.dvp;
  part.m += x;
  part.l += x;
  part.alpha += x;
  part.rb += x;
  part.re += x;
  return part;
}
Scratch HeadScratch(const Scratch& sc, const flash::Plan& plan, int64_t x, int64_t dk,
                    int64_t dkp) {
  Scratch part = RowsScratch(sc, plan, x);
  part.qt += x * dkp;
  part.qw += x * dk;
  part.q_step += x;
  part.st += x * kFewStride;
  return part;
}
Scratch SubBlockScratch(const Scratch& sc, const flash::Plan& plan, int64_t s, int64_t dk) {
  Scratch part = RowsScratch(sc, plan, s * kBr);
  part.qt += s * flash::QBlockFloats(dk);
  return part;
}

// How an item's tiles are computed, the same for all its parts.
struct TileMath {
  float score_scale, softmax_scale;  // the scale in the score tile or in the softmax
  // The score tile hands the softmax its maximum (col_max) on whole tiles:
  // the pair kernels and nothing modifies or masks the scores in between
  // (ScaleInSoftmax; a partial tile's mask does).
  bool max_from_scores;
};

// One key tile [j0, j1) of one group of parts that see the same keys (the
// heads of a few-row item, or one row block): S = Q·Kᵀ, masked, the
// online-softmax step, O (+)= P·V.
void AttendTile(const ValidProblem& p, const flash::Plan& plan, std::span<const Block> blocks,
                std::span<Scratch> parts, int64_t j0, int64_t j1, bool first, bool partial,
                const TileMath& math) {
  const Block& blk = blocks[0];
  const int64_t nc = j1 - j0, N = static_cast<int64_t>(hn::Lanes(DF()));
  HWY_ALIGN float max_from_scores[kBr];
  float* tile_max =
      math.max_from_scores && !partial && blocks.size() == 1 ? max_from_scores : nullptr;
  // S = Q·Kᵀ, masked. (The bf16 pair kernels take many-row blocks: one
  // head, never paged.)
  if (blk.pairs) {
    Bf16Scores(p, blk, j0, nc, math.score_scale, parts[0], tile_max);
  } else {
    F32Scores(p, plan, blocks, parts, j0, j1, tile_max);
  }
  for (size_t g = 0; g < blocks.size(); ++g) {
    Scratch& part = parts[g];
    ModifyTile(p, blocks[g], j0, nc, part);
    MaskTile(p, blocks[g], j0, j1, partial, part);

    // Online softmax, vectorized over the tile's long axis.
    if (blk.few_rows) {
      OnlineSoftmaxRows(part.st, kFewStride, nc, blk.nrows, part.m, part.l, part.alpha);
    } else if (blk.pairs) {
      blk.pairs->softmax_to_rows(part.st, nc, blk.rp / N, math.softmax_scale, part.m, part.l,
                                 part.alpha, part.pr, plan.p_row_pairs, tile_max);
    } else {
      OnlineSoftmaxColumns(part.st, kBr, nc, blk.rp, part.m, part.l, part.alpha, tile_max);
    }
    if (!first) RescaleO(blocks[g], plan.dvp, part);
  }

  // O (+)= P·V.
  if (blk.pairs) {
    Bf16Pv(p, plan, blk, j0, j1, partial, first, parts[0]);
  } else {
    F32Pv(p, plan, blocks, parts, j0, j1, partial, first);
  }
}

// One work item: rows [r0, r0 + nrows) of kv heads kvh .. kvh + heads - 1
// of batch b against keys [key_lo, key_hi). Its parts, each a Block in its
// own part of the scratch: the heads of a few-row item (one group: they
// see the same keys), or the kBr-row blocks of a many-row one (a group each:
// each sees its own keys). Tile by tile over the union of the groups' keys,
// each group that sees the tile takes it in turn, so that a K and V tile
// read from L2/L3 once, and converted or paired once (HeldRows; the tiles
// where two blocks see the same keys: all but causal's diagonal), serve them
// all.
// Leaves m, l and the unnormalized O of the item's heads·nrows rows in `sc`.
void AttendBlock(const ValidProblem& p, const flash::Plan& plan, int64_t b, int64_t kvh,
                 int64_t heads, int64_t r0, int64_t nrows, int64_t key_lo, int64_t key_hi,
                 const PairSets& sets, Scratch& sc, BlockCounts& counts) {
  static_assert(flash::kMaxSubBlocks <= kFewRows);
  const int64_t dk = p.shape.head_dim, dvp = plan.dvp;
  const int64_t dkp = flash::RoundUp(dk, static_cast<int64_t>(hn::Lanes(DF())));
  const int64_t sub_blocks = (nrows + kBr - 1) / kBr;  // > 1 only when heads == 1
  const int64_t nparts = heads > 1 ? heads : sub_blocks;
  const int64_t per_group = heads > 1 ? heads : 1;
  const int64_t groups = nparts / per_group;
  Block blocks[kFewRows];
  Scratch parts[kFewRows];
  for (int64_t g = 0; g < nparts; ++g) {
    if (heads > 1) {
      parts[g] = HeadScratch(sc, plan, g * nrows, dk, dkp);
      blocks[g] = LoadBlock(p, b, kvh + g, r0, nrows, key_lo, key_hi, sets, parts[g]);
    } else {
      parts[g] = SubBlockScratch(sc, plan, g, dk);
      blocks[g] = LoadBlock(p, b, kvh, r0 + g * kBr, std::min(kBr, nrows - g * kBr), key_lo, key_hi,
                            sets, parts[g]);
    }
  }
  const Block& blk = blocks[0];
  // The pair kernels write P as rows from the softmax, which may take the
  // scale from the score tile (ScaleInSoftmax).
  TileMath math{p.scale, 1.0f, false};
  if (blk.pairs && ScaleInSoftmax(p)) {
    std::swap(math.score_scale, math.softmax_scale);
    math.max_from_scores = !flash::g_softmax_own_max_for_test.load();
  } else if (!blk.pairs && !blk.few_rows && F32ScoresFinalInTile(p)) {
    math.max_from_scores = !flash::g_softmax_own_max_for_test.load();
  }
  const int64_t bc = plan.bc;
  const int64_t tiles_total = (key_hi - key_lo + bc - 1) / bc;
  // Visibility depends on the batch and the query position only: a group's
  // heads see the same keys, tiles and partial tiles. A group that sees no
  // key leaves O = 0 (read by split merges).
  int64_t ulo = key_hi, uhi = key_lo;
  for (int64_t gr = 0; gr < groups; ++gr) {
    const Block& first_of = blocks[gr * per_group];
    if (first_of.ulo < first_of.uhi) {
      ulo = std::min(ulo, first_of.ulo);
      uhi = std::max(uhi, first_of.uhi);
    } else {
      std::memset(parts[gr * per_group].o, 0,
                  sizeof(float) * std::max(first_of.rp, per_group * first_of.nrows) * dvp);
    }
  }
  int64_t visited[kFewRows] = {};
  // Tiles are aligned to bc from key_lo; each is clipped to the group's union.
  // The groups take a tile last row block first: under a causal mask that one
  // sees the most of a diagonal tile, and converts or pairs its K and V rows
  // once for all (HeldRows).
  for (int64_t t = key_lo + (ulo - key_lo) / bc * bc; t < uhi; t += bc) {
    for (int64_t gr = groups - 1; gr >= 0; --gr) {
      const Block& group = blocks[gr * per_group];
      const int64_t j0 = std::max(t, group.ulo);
      const int64_t j1 = std::min(t + bc, group.uhi);
      if (j0 >= j1) continue;
      // The first tile writes O instead of accumulating into it: O needs no
      // zeroing and no rescale by alpha = e^(-inf) = 0.
      const bool first = ++visited[gr] == 1;
      const bool partial = !(group.ilo <= j0 && j1 <= group.ihi);
      partial ? ++counts.partial : ++counts.full;
      AttendTile(p, plan, std::span<const Block>(blocks + gr * per_group, per_group),
                 std::span<Scratch>(parts + gr * per_group, per_group), j0, j1, first, partial,
                 math);
    }
  }
  for (int64_t gr = 0; gr < groups; ++gr) counts.skipped += tiles_total - visited[gr];
}

// Where work item blocks are. Order: (batch, kv head) pairs in groups whose K
// and V fit in one L2 together (one head from N = 1024 at d = 128: the
// threads share that head's K/V in L3, where cycling through all heads' 32
// MiB at N = 4096 went to DRAM, -15%; all 8 heads at N = 128), and within a
// group by decreasing query block across its heads, so the longest causal
// blocks of every head start first and the short ones fill in at the end
// (one head at a time left 2 threads idle on uneven tails at small N: causal
// N = 256, d = 128, 2 threads: 140 -> 150 GF/s).
struct WorkOrder {
  WorkOrder(const ValidProblem& p, const flash::Plan& plan) : p(p), plan(plan) {
    const int64_t kv_bytes = p.shape.kv_len * int64_t(DTypeBytes(p.k.dtype) * p.shape.head_dim +
                                                      DTypeBytes(p.v.dtype) * p.shape.value_dim);
    group_heads = std::clamp<int64_t>(L2CacheBytes() / std::max<int64_t>(kv_bytes, 1), 1, plan.bkv);
  }
  // Rows [r0, r0 + nrows) of kv heads kvh .. kvh + heads - 1 of batch b.
  struct Position {
    int64_t b, kvh, r0, nrows, heads;
  };
  Position Locate(int64_t blk) const {
    const int64_t group_blocks = group_heads * plan.row_blocks;
    const int64_t group = blk / group_blocks, i = blk % group_blocks;
    const int64_t heads_here = std::min(group_heads, plan.bkv - group * group_heads);
    const int64_t qb = plan.row_blocks - 1 - i / heads_here;
    const int64_t bkv = group * group_heads + i % heads_here;
    const int64_t r0 = qb * plan.item_rows();
    const int64_t head_groups = p.shape.kv_heads / plan.heads;  // per batch
    return {bkv / head_groups, bkv % head_groups * plan.heads, r0,
            std::min(plan.item_rows(), plan.rows - r0), plan.heads};
  }
  const ValidProblem& p;
  const flash::Plan& plan;
  int64_t group_heads;
};

// O row and lse of row x (of heads·nrows: each head's rows in turn) of the
// block at `pos`, from acc, m and l. A reduced-precision O row is finished in
// fp32 (`o_f32`, dv floats) and rounded once, to nearest even.
void FinishBlockRow(const ValidProblem& p, const WorkOrder::Position& pos, int64_t x,
                    const float* acc, float m, float l, float* o_f32) {
  const int64_t r = pos.r0 + x % pos.nrows;
  const int64_t i = r / p.group;
  const int64_t h = (pos.kvh + x / pos.nrows) * p.group + r % p.group;
  const int64_t dv = p.shape.value_dim;
  float* lse = p.lse.empty() ? nullptr : &p.lse[p.RowIndex(pos.b, h, i)];
  const float sink = p.Sink(h);
  if (p.o.dtype == DType::kF32) {
    return FinishRowWithSink(acc, m, l, sink, dv, p.ORow(pos.b, h, i), lse);
  }
  FinishRowWithSink(acc, m, l, sink, dv, o_f32, lse);
  StoreRow(p.o.dtype, o_f32, dv, ValidProblem::Row(p.o, pos.b, h, i));
}

// Split-key (decode) items leave each row's (m, l, O) in a slot of
// `partial`; the splits of a block combine in a fixed order (so the result
// does not depend on which thread merges): the row's maximum over splits,
// then Σ e^(m_s - max)·(l_s, O_s). A NaN maximum makes the row NaN.
struct SplitPartials {
  const flash::Plan& plan;
  float* data;
  int64_t slot() const { return plan.block_rows * (plan.dvp + 2); }  // floats per item
  float* Row(int64_t item, int64_t x) const { return data + item * slot() + x * (plan.dvp + 2); }

  void Save(int64_t item, int64_t nrows, const Scratch& sc) const {
    for (int64_t x = 0; x < nrows; ++x) {
      float* row = Row(item, x);
      row[0] = sc.m[x];
      row[1] = sc.l[x];
      std::memcpy(row + 2, sc.o + x * plan.dvp, sizeof(float) * plan.dvp);
    }
  }

  void Merge(const ValidProblem& p, int64_t blk, const WorkOrder::Position& pos, float* acc,
             float* o_f32) const {
    const int64_t dvp = plan.dvp;
    for (int64_t x = 0; x < pos.heads * pos.nrows; ++x) {
      float mx = -kInf;
      bool nan = false;
      for (int64_t s = 0; s < plan.splits; ++s) {
        const float ms = Row(blk * plan.splits + s, x)[0];
        nan |= std::isnan(ms);
        mx = std::max(mx, ms);
      }
      float l = 0.0f;
      std::fill(acc, acc + dvp, 0.0f);
      if (nan) {
        mx = l = std::numeric_limits<float>::quiet_NaN();
      } else {
        const float mu = mx == -kInf ? 0.0f : mx;
        for (int64_t s = 0; s < plan.splits; ++s) {
          const float* row = Row(blk * plan.splits + s, x);
          const float w = std::exp(row[0] - mu);
          l += w * row[1];
          for (int64_t y = 0; y < dvp; ++y) acc[y] += w * row[2 + y];
        }
      }
      FinishBlockRow(p, pos, x, acc, mx, l, o_f32);
    }
  }
};

// The bf16 pair kernels for this problem, or null: bf16 Q, K and V on the
// 16-lane target the pair tiles are laid out for, on AMX when the CPU has
// it (and Linux grants it) and dk is whole 32-element tile steps, else on
// VDPBF16PS when the CPU has AVX512_BF16; otherwise through fp32
// (converted tiles). Not for a paged cache: the pair kernels take a tile's
// K and V rows at one stride; paged tiles take the converted path, run by
// run. *path names the ISA ("+AMX_BF16", "+AVX512_BF16").
const ukernels::Bf16Kernels* PairKernels(const ValidProblem& p, const flash::Plan& plan,
                                         const char** path) {
  if (!flash::PairTypes(p) || hn::Lanes(DF()) != 16 || PortablePathForced()) return nullptr;
  if (!AmxForbidden() && ukernels::AmxScoresTakeDk(p.shape.head_dim)) {
    if (const ukernels::Bf16Kernels* amx = ukernels::AmxBf16KernelsForCpu()) {
      *path = "+AMX_BF16";
      return amx;
    }
  }
  if (!plan.vdpbf16ps) return nullptr;
  *path = "+AVX512_BF16";
  return ukernels::Bf16KernelsForCpu();
}

// Sets the decode pair kernels (bf16_decode.h) of `sets` for this problem,
// and which product takes them: its blocks have the rows they take (a
// (batch, kv head)'s rows, group·Lq, 2 to 4: GQA decode,
// Bf16DecodeTakesRows), K or V is bf16 of a width they take, and as for
// PairKernels the CPU has AVX512_BF16, the Highway target has 16 lanes,
// ATTNLAB_PORTABLE is off and the tuning lets VDPBF16PS run
// (plan.vdpbf16ps). Else they stay null and false.
void DecodePairKernels(const ValidProblem& p, const flash::Plan& plan, PairSets& sets) {
  if (!ukernels::Bf16DecodeTakesRows(plan.rows) || hn::Lanes(DF()) != 16 || PortablePathForced() ||
      !plan.vdpbf16ps) {
    return;
  }
  const bool k = p.k.dtype == DType::kBF16 && ukernels::Bf16DecodeTakesDk(p.shape.head_dim);
  const bool v = p.v.dtype == DType::kBF16 && ukernels::Bf16DecodeTakesDv(p.shape.value_dim);
  if (!k && !v) return;
  sets.decode = ukernels::Bf16DecodeKernelsForCpu();
  sets.decode_k = sets.decode != nullptr && k;
  sets.decode_v = sets.decode != nullptr && v;
}

// Sets the int8 decode kernels (i8_decode.h) of `sets`, and which product
// takes them, as DecodePairKernels: the blocks have the 1-4 rows they take
// (I8DecodeTakesRows), K or V is int8 of a width they take, the CPU has
// AVX512_VNNI, the Highway target has 16 lanes and ATTNLAB_PORTABLE is off.
static_assert(ukernels::kI8DecodeChunk <= kInt16WeightRun,
              "int16 weights take one step per run of at most kInt16WeightRun keys");
void DecodeI8Kernels(const ValidProblem& p, const flash::Plan& plan, PairSets& sets) {
  if (!ukernels::I8DecodeTakesRows(plan.rows) || hn::Lanes(DF()) != 16 || PortablePathForced()) {
    return;
  }
  const bool k = p.k.dtype == DType::kI8 && ukernels::I8DecodeTakesDk(p.shape.head_dim);
  const bool v = p.v.dtype == DType::kI8 && ukernels::I8DecodeTakesDv(p.shape.value_dim);
  if (!k && !v) return;
  sets.i8_decode = ukernels::I8DecodeKernelsForCpu();
  sets.decode_k_i8 = sets.i8_decode != nullptr && k;
  sets.decode_v_i8 = sets.i8_decode != nullptr && v;
}

// The plan for this target: a paged decode item reads a tile's runs head
// after head (Plan::run_group_blocks) only where this target's P·V kernel
// for its rows takes them in one call (PvRowsRunsInOneCall: AVX-512 at
// d = 128). Elsewhere (AVX2 at d = 128, whose P·V goes through PvTile's
// 64-key chunks and their measured repeated prefetches) it reads run by
// run, the block's heads one after the other, as before the run kernels.
flash::Plan TargetPlan(const ValidProblem& p) {
  flash::Plan plan = flash::MakePlan(p);
  const int64_t N = static_cast<int64_t>(hn::Lanes(DF()));
  if (!PvRowsRunsInOneCall(plan.rows, plan.dvp / N)) plan.run_group_blocks = 1;
  return plan;
}

Status RunFlashImpl(const ValidProblem& p, ExecContext& ctx) {
  const flash::Plan plan = TargetPlan(p);
  const int64_t items = plan.items();
  if (items == 0) return Status::Ok();
  const int threads = std::max(1, ctx.threads);
  const int64_t dvp = plan.dvp;
  auto scratch = ctx.workspace->Allocate<float>(static_cast<size_t>(threads * plan.thread_floats));
  const int64_t item_rows = plan.item_rows();
  auto ranges = ctx.workspace->Allocate<int64_t>(static_cast<size_t>(threads * 2 * item_rows));
  Workspace::Buffer<float> partial;
  Workspace::Buffer<int64_t> done;  // finished splits per block
  if (plan.splits > 1) {
    partial = ctx.workspace->Allocate<float>(static_cast<size_t>(plan.partial_floats));
    done = ctx.workspace->Allocate<int64_t>(static_cast<size_t>(plan.blocks));
    std::fill(done.data(), done.data() + plan.blocks, int64_t{0});
  }
  const SplitPartials partials{plan, partial.data()};
  const char* pair_path = nullptr;
  PairSets sets;
  sets.tiles = PairKernels(p, plan, &pair_path);
  DecodePairKernels(p, plan, sets);
  DecodeI8Kernels(p, plan, sets);
  // Blocks of few rows (decode) never take the tiles (LoadBlock).
  if (sets.tiles != nullptr && plan.rows > kFewRows) ctx.path += pair_path;
  if (sets.decode != nullptr) ctx.path += "+AVX512_BF16";
  if (sets.i8_decode != nullptr) ctx.path += "+AVX512_VNNI";
  const WorkOrder order(p, plan);
  std::atomic<int64_t> full{0}, part{0}, skipped{0};

  ParallelFor(threads, items, [&](int64_t item, int tid) {
    const FlushSubnormalsScope ftz;  // no microcode assists (flush_subnormals.h)
    Scratch sc;
    sc.qt = scratch.data() + tid * plan.thread_floats;
    sc.st = sc.qt + flash::QBlockFloats(p.shape.head_dim) * plan.sub_blocks;
    sc.vp = sc.st + flash::STileFloats(plan);
    sc.o = sc.vp + flash::VTileFloats(plan);
    sc.m = sc.o + item_rows * dvp;
    sc.l = sc.m + item_rows;
    sc.alpha = sc.l + item_rows;
    sc.kc = sc.alpha + item_rows;
    sc.qc = sc.kc + plan.k_tile_floats;
    sc.oc = sc.qc + plan.q_rows_floats;
    sc.pr = reinterpret_cast<uint32_t*>(sc.oc + plan.o_row_floats);
    sc.qw = reinterpret_cast<uint16_t*>(sc.qt + flash::FewRowsQFloats(p.shape.head_dim));
    sc.q_step = sc.qt + flash::FewRowsQFloats(p.shape.head_dim) +
                flash::FewRowsWordFloats(p.shape.head_dim);
    sc.rb = ranges.data() + tid * 2 * item_rows;
    sc.re = sc.rb + item_rows;
    HeldRows held;  // the item's parts share what kc and vp hold
    sc.held = &held;

    const int64_t blk = item / plan.splits;
    const int64_t split = item % plan.splits;
    const WorkOrder::Position pos = order.Locate(blk);
    const int64_t key_lo = PartBegin(plan.key_tiles, plan.splits, split) * plan.bc;
    const int64_t key_hi =
        std::min(PartBegin(plan.key_tiles, plan.splits, split + 1) * plan.bc, p.shape.kv_len);
    BlockCounts counts;
    AttendBlock(p, plan, pos.b, pos.kvh, pos.heads, pos.r0, pos.nrows, key_lo, key_hi, sets, sc,
                counts);
    full += counts.full;
    part += counts.partial;
    skipped += counts.skipped;

    if (plan.splits == 1) {
      for (int64_t x = 0; x < pos.heads * pos.nrows; ++x) {
        FinishBlockRow(p, pos, x, sc.o + x * dvp, sc.m[x], sc.l[x], sc.oc);
      }
      return;
    }
    partials.Save(item, pos.heads * pos.nrows, sc);
    // The item that completes a block merges it: no second parallel pass and
    // no barrier. acq_rel orders the other splits' partials before.
    if (std::atomic_ref<int64_t>(done[blk]).fetch_add(1, std::memory_order_acq_rel) ==
        plan.splits - 1) {
      partials.Merge(p, blk, pos, sc.o, sc.oc);
    }
  });

  if (FlashTileCounts* sink = flash::g_tile_counts.load()) {
    sink->full += full.load();
    sink->partial += part.load();
    sink->skipped += skipped.load();
    if (plan.splits > 1) sink->split_items += items;
  }
  return Status::Ok();
}

}  // namespace
// Exported per target (outside the anonymous namespace for HWY_EXPORT).
Status RunFlashTarget(const ValidProblem& p, ExecContext& ctx) { return RunFlashImpl(p, ctx); }
// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace attn
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attn {
HWY_EXPORT(RunFlashTarget);

void SetFlashTileCounts(FlashTileCounts* counts) { flash::g_tile_counts.store(counts); }

namespace {

Status RunFlash(const ValidProblem& p, ExecContext& ctx) {
  return HWY_DYNAMIC_DISPATCH(RunFlashTarget)(p, ctx);
}

size_t FlashWorkspaceBytes(const ValidProblem& p, int threads) {
  const flash::Plan plan = flash::MakePlan(p);
  if (plan.items() == 0) return 0;
  const SaturatingSize t = std::max(1, threads);
  return (SaturatingSize(sizeof(float)) * (t * plan.thread_floats + plan.partial_floats) +
          SaturatingSize(sizeof(int64_t)) *
              (t * (2 * plan.item_rows()) + (plan.splits > 1 ? plan.blocks : 0)))
      .value();
}

}  // namespace

extern const Variant flash_variant = {
    .name = "flash",
    .summary =
        "FlashAttention-2 tiling (64 rows x up to 512 keys), online softmax, Highway "
        "micro-kernels, masked tiles skipped, split-key decoding",
    .run = RunFlash,
    .workspace_bytes = FlashWorkspaceBytes,
    .supports_weights = false,
    .materializes_scores = false,
    .uses_highway = true,
    .deterministic = true,
    .dtypes = {.q = kFloatDTypes, .kv = kAllDTypes, .o = kFloatDTypes},
    .modifiers = kAllModifiers,
    .paged_kv = true,
    .backward = {.run = RunFlashBackward,
                 .workspace_bytes = FlashBackwardWorkspaceBytes,
                 .materializes_scores = false,
                 .modifiers = kAllModifiers},
};

}  // namespace attn
#endif  // HWY_ONCE
