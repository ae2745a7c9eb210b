// Shared pieces of attnlab_bench: the benchmark case description and its
// name, the FLOP count (written down once), deterministic inputs, thread
// control for OpenMP + OpenBLAS, measured peak RSS and the JSON context.
//
// Names follow docs/bench-json.md (tokens separated by '/', the first
// one the registry variant, `ceiling_sgemm`, `ceiling_stream` or `layer`).
#ifndef ATTNLAB_BENCH_BENCH_COMMON_H_
#define ATTNLAB_BENCH_BENCH_COMMON_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "kernels/problem.h"

namespace attn::bench {

enum class Scenario { kSweep, kDecode, kGqa, kWindow, kCross };
const char* ScenarioName(Scenario s);  // "sweep", "decode", ...

// One attention problem the suite times (without the variant).
struct Case {
  Scenario scenario = Scenario::kSweep;
  int64_t batch = 1;
  int64_t heads = 8;
  int64_t kv_heads = 8;
  int64_t q_len = 0;
  int64_t kv_len = 0;
  int64_t dim = 64;  // dk = dv
  bool causal = false;
  int64_t window = 0;  // left window (right = 0) for kWindow
  int threads = 1;

  Shape shape() const { return {batch, heads, kv_heads, q_len, kv_len, dim, dim}; }
  MaskKind mask_kind() const {
    if (scenario == Scenario::kWindow) return MaskKind::kSlidingWindow;
    return causal ? MaskKind::kCausal : MaskKind::kNone;
  }
  // The name without the variant, e.g. "N:4096/d:64/causal:1/threads:2",
  // "decode/Lk:4096/d:64/Hkv:8/threads:2".
  std::string Tokens() const;
  // Tokens() without the thread count: the key of the deterministic inputs,
  // so every variant and thread count times the same data.
  std::string DataKey() const;
  // The key of the correctness verdict: scenario, d, mask, GQA group.
  std::string CheckKey() const;
};

// FLOPs of attention, the one formula every GFLOPS counter uses:
//   Q·Kᵀ costs 2·dk FLOPs (a multiply and an add per element) per visible
//   (query, key) pair and P·V costs 2·dv per pair, so
//     FLOPs = 2·pairs·(dk + dv)   ( = 4·B·H·Lq·Lk·d when dense and dk = dv = d).
//   `pairs` counts only the (query, key) pairs that are not structurally
//   masked (attn::VisiblePairs): causal counts ~half, a window ~Lq·w. Softmax
//   (exp, max, sum, divide) is not counted, as is customary.
double AttentionFlops(double pairs, int64_t dk, int64_t dv);
// Dense pairs: B·H·Lq·Lk.
double DensePairs(const Case& c);

// Q, K, V (random in [-1, 1), never all zero) and O for a case, in [B,H,L,d]
// layout, filled by a generator seeded from the case's DataKey().
struct CaseData {
  std::vector<float> q, k, v, o;
  Problem problem;  // points into the vectors
};
// The inputs for `c`, cached: consecutive cases with the same DataKey reuse
// them (generating 1 GiB of inputs per call would dominate the suite); a new
// key frees the old data first.
CaseData& DataFor(const Case& c);
void ReleaseData();
uint64_t SeedFrom(const std::string& text);             // FNV-1a
void FillRandom(float* data, size_t n, uint64_t seed);  // uniform [-1, 1)

// Peak resident memory growth, measured: Start() resets the kernel's VmHWM
// high-water mark (echo 5 > /proc/self/clear_refs) and records VmRSS;
// DeltaBytes() is VmHWM now minus that. Returns -1 where /proc cannot do it.
class PeakRss {
 public:
  void Start();
  double DeltaBytes() const;

 private:
  int64_t start_rss_ = -1;
};
// "VmRSS" / "VmHWM" from /proc/self/status, in bytes; -1 if unavailable.
int64_t ProcStatusBytes(const char* field);
// Makes freed memory go back to the OS so RSS growth is measurable: glibc
// otherwise keeps freed chunks below its (dynamic) mmap threshold resident.
void ConfigureMallocForMeasurement();
void TrimMalloc();

// attnlab_* context keys (docs/bench-json.md), also used by the accuracy JSON.
std::map<std::string, std::string> ContextStrings(const std::string& threads,
                                                  const std::string& suite, size_t memory_budget);
std::string GitCommit();  // generated at build time (bench/git_commit.cmake)
std::string UtcNow();     // "2026-11-21T09:14:03+00:00"

}  // namespace attn::bench

#endif  // ATTNLAB_BENCH_BENCH_COMMON_H_
