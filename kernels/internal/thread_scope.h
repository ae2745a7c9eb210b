// The one way attnlab sets a thread count for a scope.
//
// OpenMP's nthreads ICV, for the parallel regions the calling thread starts
// from now on, restored on destruction. libopenblas-openmp sizes every call
// from the same ICV (omp_get_max_threads(), and 1 inside a parallel region),
// so this also sets OpenBLAS's threads: blas and chunked keep their sgemm
// calls single-threaded with ScopedThreads(1) and split the work themselves;
// the benchmark sets each case's thread count, for the kernels and the sgemm
// ceiling alike.
#ifndef ATTNLAB_KERNELS_INTERNAL_THREAD_SCOPE_H_
#define ATTNLAB_KERNELS_INTERNAL_THREAD_SCOPE_H_

#include <omp.h>

#include <algorithm>

namespace attn {

class ScopedThreads {
 public:
  explicit ScopedThreads(int threads) : saved_(omp_get_max_threads()) {
    omp_set_num_threads(std::max(threads, 1));
  }
  ~ScopedThreads() { omp_set_num_threads(saved_); }
  ScopedThreads(const ScopedThreads&) = delete;
  ScopedThreads& operator=(const ScopedThreads&) = delete;

 private:
  int saved_;
};

}  // namespace attn

#endif  // ATTNLAB_KERNELS_INTERNAL_THREAD_SCOPE_H_
