// Flash attention's plan (kernels/flash.cc): how a problem is cut into row
// blocks, key tiles and split-key work items, and the scratch each thread
// needs, shared by the kernel, its workspace declaration and the tests; and
// the kernel's tile counters (instrumentation the tests read).
#ifndef ATTNLAB_KERNELS_INTERNAL_FLASH_PLAN_H_
#define ATTNLAB_KERNELS_INTERNAL_FLASH_PLAN_H_

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "kernels/internal/read_ahead.h"
#include "kernels/problem.h"
#include "kernels/tuning.h"
#include "kernels/ukernels/bf16_avx512.h"

namespace attn {

// Tile counts of flash runs, for tests: a tile is one (row block, Bc-key
// tile) pair inside a work item's key range. `skipped` tiles are fully
// masked and never touched; `partial` ones apply the structural mask;
// `full` ones are computed without any structural mask work.
struct FlashTileCounts {
  std::atomic<int64_t> full{0};
  std::atomic<int64_t> partial{0};
  std::atomic<int64_t> skipped{0};
  std::atomic<int64_t> split_items{0};  // work items of split-key (decode) runs
};
// While set (non-null), every flash run adds its tile counts here.
void SetFlashTileCounts(FlashTileCounts* counts);

// flash's backward pass (kernels/flash_backward.cc) and its workspace.
struct ExecContext;
class ValidGradProblem;
Status RunFlashBackward(const ValidGradProblem& problem, ExecContext& ctx);
size_t FlashBackwardWorkspaceBytes(const ValidGradProblem& problem, int threads);

namespace flash {

inline constexpr int64_t kBr = 64;  // query rows per block
// Row blocks per work item at most (Plan::sub_blocks).
inline constexpr int64_t kMaxSubBlocks = 8;
inline constexpr int64_t kMaxBc = 512;  // keys per tile (fewer when Lk is shorter)
inline constexpr int64_t kPad = 16;     // dv padded to a multiple of 16 floats
// Split-key (flash-decoding) parameters: used when there are few row blocks.
inline constexpr int64_t kSplitBelowBlocks = 16;
inline constexpr int64_t kMinKeysPerSplit = 512;
inline constexpr int64_t kTargetItems = 32;

inline constexpr int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Tests only: while > 0, plans use this many keys per tile (a multiple of
// kPad, at most kMaxBc) instead of their own choice, so that short sequences
// still cross many tiles (online-softmax rescaling, partial and skipped
// tiles). The result must not depend on it beyond rounding.
inline std::atomic<int64_t> g_key_tile_for_test{0};
// Tests only: while > 0, plans that may take several row blocks per work
// item (Plan::sub_blocks) take this many (at most kMaxSubBlocks), however
// few items that leaves, so that small problems compare items of several
// blocks with items of one, which must give the same bits.
inline std::atomic<int64_t> g_sub_blocks_for_test{0};
// Tests only: while true, decode prefetches (Plan::decode_prefetch_bytes)
// whatever the size of K and V, so that small problems exercise it.
inline std::atomic<bool> g_decode_prefetch_for_test{false};
// Tests only: while true, the AMX softmax takes each tile's maximum itself
// (a pass over Sᵀ) instead of from the score tile (col_max), which must
// give the same bits.
inline std::atomic<bool> g_softmax_own_max_for_test{false};

// How a problem is cut into work items. Rows of one (batch, kv head) are
// stacked position-major: row r is query position r / group of query head
// kv_head * group + r % group, so GQA heads sharing K/V share every K/V tile,
// and visible-key ranges stay monotone in r.
// Blocks of at most this many rows (decode, GQA groups) take the few-row path:
// dot products along d instead of the transposed tile kernel.
inline constexpr int64_t kFewRows = 8;
// Row stride of the row-major score tile of few-row blocks: any tile width.
inline constexpr int64_t kFewStride = RoundUp(kMaxBc, kPad);

// Floats of a few-row block's fp32 Q, row-major [kFewRows][dk padded to a
// whole vector], after which its rows as bf16 words (the decode pair
// kernels) begin, 64-byte aligned.
inline int64_t FewRowsQFloats(int64_t dk) { return kFewRows * RoundUp(dk, kPad); }
// Floats the few-row Q's words take (bf16 or int16, [kFewRows][dk]); the
// rows' int16 steps (kFewRows floats) follow them.
inline int64_t FewRowsWordFloats(int64_t dk) { return kFewRows * (dk + 1) / 2; }
// Floats of a thread's Q block, which holds either Qᵀ [dk][kBr] (row tiles)
// or the few-row Q, fp32, words and steps (few-row blocks): the larger of
// the two (the second wins for small dk: 8·16 + 4 + 8 > 64), rounded to 64
// bytes so the next scratch region stays aligned.
inline int64_t QBlockFloats(int64_t dk) {
  return RoundUp(std::max(dk * kBr, FewRowsQFloats(dk) + FewRowsWordFloats(dk) + kFewRows), 16);
}

struct Plan {
  int64_t rows = 0;  // group * Lq rows per (batch, kv head)
  // kBr-row blocks per work item: up to kMaxSubBlocks (not paged), as many
  // as leave kTargetItems items and the rows fill; the blocks take each key
  // tile in turn, so that one read of the K and V tiles from L2/L3 (and on
  // the bf16 pair paths one pairing of V) serves up to 512 rows
  // (kernels/flash.cc, AttendBlock). 1 for decode and small problems.
  int64_t sub_blocks = 1;
  int64_t row_blocks = 0;  // ceil(rows / item_rows()): work items per (batch, kv head)
  int64_t heads = 1;       // kv heads per block (> 1: paged decode, see MakePlan)
  // Paged decode: blocks of the pool whose runs each head's few-row kernels
  // take together (RunGroupBlocks in kernels/internal/read_ahead.h); 1 else.
  int64_t run_group_blocks = 1;
  int64_t bkv = 0;         // B * Hkv / heads: (batch, kv heads) pairs
  int64_t blocks = 0;      // bkv * row_blocks
  int64_t bc = 0;          // keys per tile: min(tuned key tile, Lk rounded up to kPad)
  int64_t key_tiles = 0;   // ceil(Lk / bc)
  int64_t splits = 1;      // key splits per block (flash-decoding when > 1)
  int64_t block_rows = 0;  // min(item_rows(), rows) * heads: rows an item holds at most
  int64_t dvp = 0;         // dv rounded up to kPad
  // Few-row blocks prefetch K and V rows this many bytes ahead, in the
  // order they read them, of the ones they read: the tuning's when K and V
  // exceed flash_decode_prefetch_min_kv_bytes (0: none on a contiguous
  // cache, one block ahead on a paged one), else kNoDecodePrefetch (none on
  // either; DecodePrefetchBytes, RowsAheadFor in kernels/internal/read_ahead.h).
  int64_t decode_prefetch_bytes = kNoDecodePrefetch;
  // Many-row blocks' score tiles prefetch the next tile's K and V rows into
  // L2 (Tuning::flash_tile_prefetch).
  bool tile_prefetch = true;
  // bf16 products may run on VDPBF16PS: many-row blocks' pair kernels, GQA
  // decode's (Tuning::flash_vdpbf16ps; else through fp32, unless AMX takes
  // a many-row block).
  bool vdpbf16ps = true;
  // V rows used in place, never packed: fp32 V with dv == dvp. Otherwise
  // each V tile is packed (converted, zero-padded to dvp) into scratch.
  bool v_in_place = false;
  // Reduced-precision tensors go through fp32 scratch (kernels/dtype.h):
  // each K tile converted once per row block, a block's Q rows once, an O
  // row before it is rounded into O. 0 when the tensor is fp32.
  int64_t k_tile_floats = 0;  // bc x dk
  int64_t q_rows_floats = 0;  // kBr x dk
  int64_t o_row_floats = 0;   // dvp
  // bf16 Q, K and V where the pair kernels take them (this CPU has
  // AVX512_BF16, the cache is not paged): their P rows (softmax_to_rows in
  // kernels/ukernels/bf16_avx512.h), kBr rows of bc/2 key pairs rounded up
  // to whole 16-pair tiles (32-bit pairs: one float each). 0 otherwise.
  int64_t p_rows_floats = 0;
  int64_t p_row_pairs = 0;  // their row stride
  int64_t items() const { return blocks * splits; }
  int64_t item_rows() const { return kBr * sub_blocks; }  // rows of a work item at most
  // Floats of one thread's scratch (each piece 64-byte aligned).
  int64_t thread_floats = 0;
  // Floats of the split partial results (m, l, O) of all items.
  int64_t partial_floats = 0;
};

// Floats of the score tile: Sᵀ [bc][kBr], or row-major S [kFewRows][kFewStride]
// for few-row blocks, whichever is larger.
inline int64_t STileFloats(const Plan& plan) {
  return std::max(plan.bc * kBr, kFewRows * kFewStride);
}
// Floats of the packed V tile: fp32 V rows are used in place when dv is a
// whole number of vectors (dv == dvp), so only other V need the buffer.
inline int64_t VTileFloats(const Plan& plan) { return plan.v_in_place ? 0 : plan.bc * plan.dvp; }

// Whether a problem's types and layout suit the bf16 pair kernels: bf16 Q,
// K and V, K and V at one stride per tile (not paged). flash.cc's
// PairKernels adds the CPU and the environment switches.
inline bool PairTypes(const ValidProblem& p) {
  return p.q.dtype == DType::kBF16 && p.k.dtype == DType::kBF16 && p.v.dtype == DType::kBF16 &&
         !p.kv_pages;
}

inline Plan MakePlan(const ValidProblem& p) {
  Plan plan;
  const Shape& s = p.shape;
  plan.rows = p.group * s.q_len;
  if (!p.kv_pages) {
    // As many row blocks per item as leave kTargetItems items (threads need
    // items to share out; causal items differ in length), and no more than
    // the rows fill (decode: one).
    const int64_t kbr_blocks = (plan.rows + kBr - 1) / kBr, bkv = s.batch * s.kv_heads;
    plan.sub_blocks = kMaxSubBlocks;
    while (plan.sub_blocks > 1 &&
           (plan.sub_blocks >= 2 * kbr_blocks ||
            bkv * ((kbr_blocks + plan.sub_blocks - 1) / plan.sub_blocks) < kTargetItems)) {
      plan.sub_blocks /= 2;
    }
    if (const int64_t forced = g_sub_blocks_for_test.load(); forced > 0) {
      plan.sub_blocks = std::min(forced, kMaxSubBlocks);
    }
  }
  plan.row_blocks = (plan.rows + plan.item_rows() - 1) / plan.item_rows();
  // Paged decode: a block of the pool holds its keys' rows of every kv head
  // together ([num_blocks, Hkv, block_size, d]). A work item that takes one
  // kv head reads one slice of each block per pass over the sequence, each
  // slice somewhere else; one that takes `heads` kv heads (their rows
  // together at most kFewRows) and reads each run of keys head after head
  // reads the block's slices as one piece. (Reading shuffled 8 KiB slices of
  // a 8-head pool on the Zen 4 VM, prefetching the next one: 14-17 GB/s;
  // the 64 KiB blocks whole: 18-21; in order, not paged: 22-28.)
  if (p.kv_pages && plan.rows > 0 && plan.rows <= kFewRows) {
    for (int64_t g = kFewRows / plan.rows; g > 1; --g) {
      if (s.kv_heads % g == 0) {
        plan.heads = g;
        break;
      }
    }
  }
  plan.bkv = s.batch * s.kv_heads / plan.heads;
  plan.blocks = plan.bkv * plan.row_blocks;
  const int64_t bc_for_test = g_key_tile_for_test.load();
  // The key tile: the machine's tuning (kernels/tuning.h; 512 by default,
  // see "Block sizes" in flash.cc), fewer when Lk is shorter.
  plan.bc = bc_for_test > 0 ? bc_for_test
                            : std::min(ActiveTuning().flash_key_tile,
                                       RoundUp(std::max<int64_t>(s.kv_len, 1), kPad));
  plan.key_tiles = (s.kv_len + plan.bc - 1) / plan.bc;
  if (p.kv_pages && plan.rows > 0 && plan.rows <= kFewRows) {
    plan.run_group_blocks = RunGroupBlocks(p.kv_pages->block_size, plan.bc);
  }
  const int64_t kv_bytes =
      s.batch * s.kv_heads * s.kv_len *
      int64_t(DTypeBytes(p.k.dtype) * s.head_dim + DTypeBytes(p.v.dtype) * s.value_dim);
  const bool paged = p.kv_pages.has_value();
  plan.decode_prefetch_bytes =
      g_decode_prefetch_for_test.load()
          ? DecodePrefetchDistance(ActiveTuning(), paged, plan.rows)
          : DecodePrefetchBytes(ActiveTuning(), kv_bytes, paged, plan.rows);
  plan.tile_prefetch = ActiveTuning().flash_tile_prefetch;
  plan.vdpbf16ps = ActiveTuning().flash_vdpbf16ps;
  plan.block_rows = std::min(plan.item_rows(), plan.rows) * plan.heads;
  plan.dvp = RoundUp(s.value_dim, kPad);
  plan.v_in_place = plan.dvp == s.value_dim && p.v.dtype == DType::kF32;
  if (p.k.dtype != DType::kF32) plan.k_tile_floats = RoundUp(plan.bc * s.head_dim, 16);
  if (p.q.dtype != DType::kF32) plan.q_rows_floats = RoundUp(kBr * s.head_dim, 16);
  if (p.o.dtype != DType::kF32) plan.o_row_floats = plan.dvp;
  // The pair kernels' softmax writes P as bf16 rows (AMX and VDPBF16PS
  // alike; flash.cc's PairKernels): their buffer, kBr rows of the tile's pairs.
  if (PairTypes(p) && ukernels::CpuHasAvx512Bf16()) {
    plan.p_row_pairs = RoundUp(plan.bc, 32) / 2;
    plan.p_rows_floats = kBr * plan.p_row_pairs;
  }
  // The split count depends on the shape only (never on the thread count),
  // so results are bitwise identical for any number of threads.
  const int64_t min_tiles_per_split = std::max<int64_t>(1, kMinKeysPerSplit / plan.bc);
  if (plan.blocks > 0 && plan.blocks < kSplitBelowBlocks &&
      plan.key_tiles >= 2 * min_tiles_per_split) {
    plan.splits = std::min(plan.key_tiles / min_tiles_per_split,
                           (kTargetItems + plan.blocks - 1) / plan.blocks);
    plan.splits = std::max<int64_t>(plan.splits, 1);
  }
  plan.thread_floats = QBlockFloats(s.head_dim) * plan.sub_blocks  // Q blocks
                       + STileFloats(plan)                         // Sᵀ / Pᵀ tile
                       + VTileFloats(plan)                         // packed V tile
                       + plan.item_rows() * plan.dvp               // O accumulator
                       + 3 * plan.item_rows()                      // m, l, alpha
                       + plan.k_tile_floats + plan.q_rows_floats + plan.o_row_floats +
                       plan.p_rows_floats;
  if (plan.splits > 1) {
    plan.partial_floats = plan.items() * plan.block_rows * (plan.dvp + 2);
  }
  return plan;
}

}  // namespace flash
}  // namespace attn

#endif  // ATTNLAB_KERNELS_INTERNAL_FLASH_PLAN_H_
