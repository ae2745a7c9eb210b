// Workspace: the one counting allocator every kernel allocates through.
//
// Each buffer is its own 64-byte-aligned allocation of exactly the requested
// size (no rounding, no pooling), so AddressSanitizer sees a write one element
// past any scratch buffer. The Workspace counts bytes live and the peak, which
// is what RunStats, the tests (declared vs. taken) and the benchmark's
// `workspace_bytes` counter report.
#ifndef ATTNLAB_KERNELS_WORKSPACE_H_
#define ATTNLAB_KERNELS_WORKSPACE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <utility>

namespace attn {

inline constexpr size_t kWorkspaceAlignment = 64;

// A declared workspace size in arithmetic that saturates at SIZE_MAX instead
// of wrapping. A variant's workspace function multiplies sizes derived from
// the shape (which Validate bounds so they fit in int64) by thread counts and
// element sizes and adds the pieces; a total past size_t becomes SIZE_MAX,
// which every memory budget refuses (ResourceExhausted). Wrapping arithmetic
// once declared 64 bytes for a 2^64-byte packed K, Prepare said OK and the
// kernel ran off its scratch (issue 21).
class SaturatingSize {
 public:
  // A negative count is a bug upstream: refuse it as too large.
  constexpr SaturatingSize(int64_t n) : n_(n < 0 ? kMax : static_cast<size_t>(n)) {}  // NOLINT
  constexpr SaturatingSize(size_t n) : n_(n) {}                                       // NOLINT
  constexpr SaturatingSize(int n) : SaturatingSize(static_cast<int64_t>(n)) {}        // NOLINT

  friend constexpr SaturatingSize operator*(SaturatingSize a, SaturatingSize b) {
    size_t r;
    return __builtin_mul_overflow(a.n_, b.n_, &r) ? SaturatingSize(kMax) : SaturatingSize(r);
  }
  friend constexpr SaturatingSize operator+(SaturatingSize a, SaturatingSize b) {
    size_t r;
    return __builtin_add_overflow(a.n_, b.n_, &r) ? SaturatingSize(kMax) : SaturatingSize(r);
  }
  constexpr size_t value() const { return n_; }

 private:
  static constexpr size_t kMax = static_cast<size_t>(-1);
  size_t n_;
};

class Workspace {
 public:
  // An owning, move-only buffer of `size` T; returned to the Workspace (and
  // uncounted) when destroyed.
  template <typename T>
  class Buffer {
   public:
    Buffer() = default;
    Buffer(Buffer&& other) noexcept { *this = std::move(other); }
    Buffer& operator=(Buffer&& other) noexcept {
      Release();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
      owner_ = std::exchange(other.owner_, nullptr);
      return *this;
    }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    ~Buffer() { Release(); }

    T* data() const { return data_; }
    size_t size() const { return size_; }
    T& operator[](size_t i) const { return data_[i]; }

   private:
    friend class Workspace;
    void Release() {
      if (owner_ != nullptr) owner_->Free(data_, size_ * sizeof(T));
      data_ = nullptr;
      size_ = 0;
      owner_ = nullptr;
    }
    T* data_ = nullptr;
    size_t size_ = 0;
    Workspace* owner_ = nullptr;
  };

  Workspace() = default;
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  // Thread-safe. Aborts with a message if the system allocator fails: the
  // memory budget is checked against the declared workspace before a kernel
  // runs, so this is reached only when the machine itself is out of memory.
  template <typename T>
  Buffer<T> Allocate(size_t count) {
    Buffer<T> buffer;
    buffer.data_ = static_cast<T*>(AllocateBytes(count * sizeof(T)));
    buffer.size_ = count;
    buffer.owner_ = this;
    return buffer;
  }

  size_t live_bytes() const { return live_.load(std::memory_order_relaxed); }
  size_t peak_bytes() const { return peak_.load(std::memory_order_relaxed); }
  size_t allocations() const { return allocations_.load(std::memory_order_relaxed); }

 private:
  void* AllocateBytes(size_t bytes);
  void Free(void* data, size_t bytes);

  std::atomic<size_t> live_{0};
  std::atomic<size_t> peak_{0};
  std::atomic<size_t> allocations_{0};
};

}  // namespace attn

#endif  // ATTNLAB_KERNELS_WORKSPACE_H_
