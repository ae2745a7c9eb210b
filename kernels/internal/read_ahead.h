// Which K or V rows decode prefetches into L2: those a fixed distance ahead
// in the order flash's few-row kernels read them (kernels/flash.cc,
// RowsAhead), contiguous cache or paged. The bench's read ceilings
// (ceiling_read/decode, ceiling_read/paged) take their prefetches from here
// too, so "the same reads with the same prefetch" stays one rule.
#ifndef ATTNLAB_KERNELS_INTERNAL_READ_AHEAD_H_
#define ATTNLAB_KERNELS_INTERNAL_READ_AHEAD_H_

#include <algorithm>
#include <cstdint>

#include "kernels/ukernels/prefetch.h"

namespace attn {

// How a decode work item reads K (or V) of its `heads` kv heads, keys
// [0, end): on a contiguous cache key after key (one head per item); on a
// paged cache group after group of `group_blocks` blocks and, within a
// group, head after head, each head's slices of the group's blocks block
// after block. The pool's [num_blocks, Hkv, block_size, d] puts a block's
// slices of the item's heads one after the other, so with one block per
// group each block is read as one piece of heads · block_size rows and the
// jump is between blocks; with more, each head's few-row kernels take the
// group's runs in one call (RunGroupBlocks, kernels/flash.cc).
struct ReadOrder {
  int64_t heads = 1;
  int64_t block_size = 0;  // 0: contiguous
  int64_t end = 0;         // one past the last key read (nothing past it is prefetched)
  int64_t row_stride_bytes = 0;
  int64_t row_bytes = 0;
  int64_t group_blocks = 1;  // blocks read head after head together (paged)
};

// Blocks per group of the read order of a paged decode item whose tiles are
// `key_tile` keys: the tile's, where the block size divides it, so that each
// head's few-row kernels take the tile's runs in one call (kernels/flash.cc,
// ForEachRunGroup); else 1 (a call per run, the block's heads one after the
// other).
inline int64_t RunGroupBlocks(int64_t block_size, int64_t key_tile) {
  if (block_size <= 0 || block_size >= key_tile || key_tile % block_size != 0) return 1;
  return key_tile / block_size;
}

// Rows ahead for a distance of `ahead_bytes` (DecodePrefetchBytes in
// kernels/tuning.h). Negative (kNoDecodePrefetch) is none. 0 on a
// contiguous cache is none; on a paged cache it is still one group of
// blocks (the item's slices of the next group, row j beside row j): from DRAM the
// hardware prefetcher cannot follow a jump between blocks (shuffled 8 KiB
// blocks on the Zen 4 VM: 8 GB/s read plainly, 15-19 prefetching one block
// ahead; kernels/DESIGN.md, "Paged K/V").
inline int64_t RowsAheadFor(const ReadOrder& order, int64_t ahead_bytes) {
  if (ahead_bytes < 0) return 0;
  if (ahead_bytes > 0) return (ahead_bytes + order.row_bytes - 1) / order.row_bytes;
  return order.block_size == 0 ? 0 : order.heads * order.group_blocks * order.block_size;
}

// The rows `ahead` rows after the run [r0, r1) of item head g (0-based) in
// read order, row i beside row r0 + i, for a few-row kernel to prefetch
// while it reads the run: at most two ranges, since a run lies within one
// block and so crosses at most one slice boundary ahead (the tail of
// PrefetchRows). row_at(h, j) is the address of key j's row of item head h.
// Nothing at or past `end`; on the sequence's last, partial group the rows
// past `end` are not prefetched and what follows them is left alone.
template <class RowAt>
PrefetchRows RowsAhead(const ReadOrder& order, int64_t ahead, int64_t g, int64_t r0, int64_t r1,
                       RowAt row_at) {
  if (ahead <= 0 || r1 <= r0) return {};
  PrefetchRows out{.k_stride = order.row_stride_bytes, .k_bytes = order.row_bytes};
  if (order.block_size == 0) {
    const int64_t start = r0 + ahead;
    if (start >= order.end) return {};
    out.k = row_at(g, start);
    out.rows = std::min(r1 - r0, order.end - start);
    return out;
  }
  // Positions in read order counted from the start of r0's group: group
  // after group of heads · group_keys rows, head after head within one,
  // each head's group_keys keys in order (slices of block_size rows).
  const int64_t bs = order.block_size, group_keys = order.group_blocks * bs;
  const int64_t per_group = order.heads * group_keys;
  const int64_t group_start = r0 - r0 % group_keys;
  const int64_t at = g * group_keys + r0 % group_keys + ahead;
  auto key = [&](int64_t pos) {
    return group_start + pos / per_group * group_keys + pos % group_keys;
  };
  auto head = [&](int64_t pos) { return pos % per_group / group_keys; };
  const int64_t n = r1 - r0, key0 = key(at);
  if (key0 >= order.end) return {};
  const int64_t in_slice = std::min(n, bs - at % bs);  // rows before the slice ends
  out.k = row_at(head(at), key0);
  out.rows = std::min(in_slice, order.end - key0);
  if (out.rows < in_slice || in_slice == n) return out;
  const int64_t key1 = key(at + in_slice);
  if (key1 >= order.end) return out;
  out.k_tail = row_at(head(at + in_slice), key1);
  out.tail_row = out.rows;
  out.rows += std::min(n - in_slice, order.end - key1);
  return out;
}

}  // namespace attn

#endif  // ATTNLAB_KERNELS_INTERNAL_READ_AHEAD_H_
