// The ALiBi bias a key-major score tile (Sᵀ) takes as its scores are stored
// (score_tile-inl.h), rather than in a pass of its own over the tile
// afterwards (AlibiColumns, score_mods-inl.h), which read and wrote the
// tile's 128 KiB in L2 again and kept flash from taking the softmax's
// maximum from the score tile. A plain header: nothing here depends on the
// Highway target.
#ifndef ATTNLAB_KERNELS_UKERNELS_ALIBI_TILE_H_
#define ATTNLAB_KERNELS_UKERNELS_ALIBI_TILE_H_

#include <cstdint>

namespace attn {

// Score (key j, query column x) += slopes[x]·((key0 + j) - positions[x]),
// the arithmetic of AlibiColumns (the same bits): the distance is a whole
// number formed exactly in fp32 (below 2^24 keys), then one fused
// multiply-add.
struct AlibiTile {
  const float* slopes = nullptr;     // one per query column, 64-byte aligned; null: no bias
  const float* positions = nullptr;  // whole numbers: each query's position i + off
  float key0 = 0.0f;                 // the first key's position, a whole number

  bool active() const { return slopes != nullptr; }
  // The same bias seen from key `first` and query column `column` on.
  AlibiTile From(int64_t first, int64_t column) const {
    if (!active()) return {};
    return {slopes + column, positions + column, key0 + static_cast<float>(first)};
  }
};

}  // namespace attn

#endif  // ATTNLAB_KERNELS_UKERNELS_ALIBI_TILE_H_
