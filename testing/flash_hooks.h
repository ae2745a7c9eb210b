// Scopes for flash's test hooks (kernels/internal/flash_plan.h): each sets
// its hook while alive and clears it after, so one test's setting never
// leaks into the next.
#ifndef ATTNLAB_TESTING_FLASH_HOOKS_H_
#define ATTNLAB_TESTING_FLASH_HOOKS_H_

#include <cstdint>

#include "kernels/internal/flash_plan.h"

namespace attn::testing {

// flash runs with `keys`-key tiles (flash::g_key_tile_for_test): short test
// sequences then cross many tiles, as long ones do by default.
class KeyTileScope {
 public:
  explicit KeyTileScope(int64_t keys) { flash::g_key_tile_for_test.store(keys); }
  ~KeyTileScope() { flash::g_key_tile_for_test.store(0); }
  KeyTileScope(const KeyTileScope&) = delete;
  KeyTileScope& operator=(const KeyTileScope&) = delete;
};

// flash's decode prefetches (Plan::decode_prefetch_bytes) whatever the size
// of K and V (flash::g_decode_prefetch_for_test), so small problems exercise it.
class DecodePrefetchScope {
 public:
  DecodePrefetchScope() { flash::g_decode_prefetch_for_test.store(true); }
  ~DecodePrefetchScope() { flash::g_decode_prefetch_for_test.store(false); }
  DecodePrefetchScope(const DecodePrefetchScope&) = delete;
  DecodePrefetchScope& operator=(const DecodePrefetchScope&) = delete;
};

}  // namespace attn::testing

#endif  // ATTNLAB_TESTING_FLASH_HOOKS_H_
