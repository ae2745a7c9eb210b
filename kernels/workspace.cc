#include "kernels/workspace.h"

#include <cstdio>
#include <cstdlib>

namespace attn {

void* Workspace::AllocateBytes(size_t bytes) {
  void* data = nullptr;
  // posix_memalign takes any size (aligned_alloc wants a multiple of the
  // alignment, and rounding up would hide overruns from ASan).
  if (bytes > 0 && posix_memalign(&data, kWorkspaceAlignment, bytes) != 0) {
    std::fprintf(stderr, "attnlab: workspace allocation of %zu bytes failed\n", bytes);
    std::abort();
  }
  allocations_.fetch_add(1, std::memory_order_relaxed);
  const size_t live = live_.fetch_add(bytes, std::memory_order_relaxed) + bytes;
  size_t peak = peak_.load(std::memory_order_relaxed);
  while (live > peak && !peak_.compare_exchange_weak(peak, live, std::memory_order_relaxed)) {
  }
  return data;
}

void Workspace::Free(void* data, size_t bytes) {
  std::free(data);
  live_.fetch_sub(bytes, std::memory_order_relaxed);
}

}  // namespace attn
