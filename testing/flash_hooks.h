// Scopes for flash's test hooks (kernels/internal/flash_plan.h): each sets
// its hook while alive and clears it after, so one test's setting never
// leaks into the next.
#ifndef ATTNLAB_TESTING_FLASH_HOOKS_H_
#define ATTNLAB_TESTING_FLASH_HOOKS_H_

#include <atomic>
#include <cstdint>

#include "kernels/internal/flash_plan.h"
#include "kernels/tuning.h"
#include "testing/scoped_env.h"

namespace attn::testing {

// Sets an atomic test hook to `value` while alive and back to `off` after.
template <class T>
class HookScope {
 public:
  HookScope(std::atomic<T>& hook, T value, T off) : hook_(hook), off_(off) { hook_.store(value); }
  ~HookScope() { hook_.store(off_); }
  HookScope(const HookScope&) = delete;
  HookScope& operator=(const HookScope&) = delete;

 private:
  std::atomic<T>& hook_;
  T off_;
};

// flash runs with `keys`-key tiles (flash::g_key_tile_for_test): short test
// sequences then cross many tiles, as long ones do by default.
class KeyTileScope : public HookScope<int64_t> {
 public:
  explicit KeyTileScope(int64_t keys) : HookScope(flash::g_key_tile_for_test, keys, 0) {}
};

// flash's work items take `blocks` row blocks each where they may take
// several (flash::g_sub_blocks_for_test; Plan::sub_blocks), however few
// items that leaves.
class SubBlocksScope : public HookScope<int64_t> {
 public:
  explicit SubBlocksScope(int64_t blocks) : HookScope(flash::g_sub_blocks_for_test, blocks, 0) {}
};

// flash's decode prefetches (Plan::decode_prefetch_bytes) whatever the size
// of K and V (flash::g_decode_prefetch_for_test), so small problems exercise it.
class DecodePrefetchScope : public HookScope<bool> {
 public:
  DecodePrefetchScope() : HookScope(flash::g_decode_prefetch_for_test, true, false) {}
};

// The AMX softmax takes each tile's maximum itself instead of from the
// score tile (flash::g_softmax_own_max_for_test).
class SoftmaxOwnMaxScope : public HookScope<bool> {
 public:
  SoftmaxOwnMaxScope() : HookScope(flash::g_softmax_own_max_for_test, true, false) {}
};

// bf16 products on VDPBF16PS wherever the CPU has AVX512_BF16 (prefill's
// pair kernels, GQA decode's): ATTNLAB_NO_AMX=1 (no AMX tiles) and the
// active tuning with flash_vdpbf16ps on (off by default on the cores where
// VDPBF16PS is slower than fp32: DefaultVdpbf16ps), so every machine with
// the instruction tests those kernels.
class Vdpbf16psScope {
 public:
  Vdpbf16psScope() : no_amx_("ATTNLAB_NO_AMX", "1"), tuning_(WithPairs()) {}

 private:
  static Tuning WithPairs() {
    Tuning t = ActiveTuning();
    t.flash_vdpbf16ps = true;
    return t;
  }
  ScopedEnv no_amx_;
  ScopedTuning tuning_;
};

}  // namespace attn::testing

#endif  // ATTNLAB_TESTING_FLASH_HOOKS_H_
