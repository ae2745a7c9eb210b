// Scratch safety: a kernel that writes past (or before) its workspace must be
// caught. Every kernel allocation goes through Workspace::Allocate, which
// makes each buffer its own allocation of exactly the requested size (no
// rounding to the 64-byte alignment, no pooling; kernels/workspace.cc), so in
// the `asan` preset AddressSanitizer reports a write one element out of any
// scratch buffer, and the whole suite (the kernel grid, the edge semantics,
// the differential slice, for every registry variant) runs under it.
//
// These death tests prove the mechanism: they write one float past / before a
// Workspace buffer and expect ASan's report. Without ASan (release, debug)
// they are skipped, since the write would be silent undefined behaviour.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>

#include "kernels/workspace.h"

#if defined(__SANITIZE_ADDRESS__)
#define ATTNLAB_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ATTNLAB_ASAN 1
#endif
#endif

namespace attn {
namespace {

// Writes through a volatile pointer so the compiler cannot drop the store.
void WriteAt(float* base, std::ptrdiff_t index) {
  float* volatile p = base + index;
  *p = 1.0f;
}

TEST(ScratchSafetyTest, WorkspaceBuffersAreExactSizedAndCounted) {
  Workspace ws;
  {
    auto a = ws.Allocate<float>(3);
    auto b = ws.Allocate<double>(17);
    EXPECT_EQ(a.size(), 3u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % kWorkspaceAlignment, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % kWorkspaceAlignment, 0u);
    EXPECT_EQ(ws.live_bytes(), 3 * sizeof(float) + 17 * sizeof(double));
    for (size_t i = 0; i < a.size(); ++i) WriteAt(a.data(), i);  // in bounds: fine
  }
  EXPECT_EQ(ws.live_bytes(), 0u);
  EXPECT_EQ(ws.peak_bytes(), 3 * sizeof(float) + 17 * sizeof(double));
}

#if defined(ATTNLAB_ASAN)
// Sizes that are and are not multiples of ASan's 8-byte granule and of the
// 64-byte alignment: the first byte past the buffer is poisoned in each.
TEST(ScratchSafetyDeathTest, AsanCatchesAWriteOnePastAWorkspaceBuffer) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  for (size_t n : {size_t{1}, size_t{3}, size_t{16}, size_t{17}, size_t{1000}}) {
    EXPECT_DEATH(
        {
          Workspace ws;
          auto buffer = ws.Allocate<float>(n);
          WriteAt(buffer.data(), static_cast<std::ptrdiff_t>(n));
        },
        "heap-buffer-overflow")
        << "n=" << n;
  }
}

TEST(ScratchSafetyDeathTest, AsanCatchesAWriteOneBeforeAWorkspaceBuffer) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        Workspace ws;
        auto buffer = ws.Allocate<float>(64);
        WriteAt(buffer.data(), -1);
      },
      "heap-buffer-overflow");
}

TEST(ScratchSafetyDeathTest, AsanCatchesAUseAfterTheBufferIsReleased) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        Workspace ws;
        float* stale = nullptr;
        {
          auto buffer = ws.Allocate<float>(32);
          stale = buffer.data();
        }
        WriteAt(stale, 0);
      },
      "heap-use-after-free");
}
#else
TEST(ScratchSafetyDeathTest, AsanCatchesAWriteOnePastAWorkspaceBuffer) {
  GTEST_SKIP() << "needs AddressSanitizer: run the asan preset (ctest --preset asan)";
}
#endif

}  // namespace
}  // namespace attn
