// Per-machine tuning: what `attnlab tune` measured on this CPU, read by the
// kernels (flash's key tile) and by the `auto` variant (which variant to run
// for a problem).
//
// The file. JSON, written by `attnlab tune` (cli/tune.cc), found at
//   1. $ATTNLAB_TUNING, when set ("none" or "" means: no file, defaults);
//   2. else $XDG_CONFIG_HOME/attnlab/tuning.json;
//   3. else $HOME/.config/attnlab/tuning.json.
// It records the CPU model and the Highway target it was measured on and a
// format version. It is read once per process, at the first kernel run:
//   * missing: built-in defaults (flash key tile 512, as tuned on Zen 4;
//     decode prefetch 32 KiB ahead, as measured on Zen 3, when K and V take
//     more than half the L3 or 32 MiB, whichever is less, as measured on the
//     Intel Xeon VM; auto always picks flash);
//   * stale (made on another CPU model or Highway target, or an older format)
//     or malformed: defaults, and one line on stderr saying why and to rerun
//     `attnlab tune`. A bad file never stops a kernel from running.
// ActiveTuning().source says which of these happened; benchmarks record it in
// their JSON context. Results are deterministic for a given tuning (flash's
// tile size changes the order of its sums, so two tunings agree within the
// error bound, not bit for bit).
#ifndef ATTNLAB_KERNELS_TUNING_H_
#define ATTNLAB_KERNELS_TUNING_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/problem.h"
#include "kernels/status.h"

namespace attn {

inline constexpr int kTuningFormat = 1;
inline constexpr int64_t kMaxDecodePrefetchBytes = int64_t{1} << 20;

// One measured point of `auto`'s table: at this head dimension, mask class,
// thread count and N = Lq = Lk, `variant` was the fastest fp32 variant.
struct AutoPoint {
  int64_t head_dim = 0;
  bool causal = false;  // causal or sliding window (structural masks)
  int threads = 1;
  int64_t n = 0;
  std::string variant;
  bool operator==(const AutoPoint&) const = default;
};

// The L3's size from /sys/devices/system/cpu/cpu0/cache (glibc's sysconf said
// 256 MiB for the Zen 3 VM's 32 MiB L3), or 0 when it says nothing. On a VM it
// is what the hypervisor claims (480 MiB on the Intel Xeon VM).
int64_t L3CacheBytes();

// The K and V bytes (all of a problem's) above which flash's decode prefetches
// when no tuning says otherwise: half the L3 (L3CacheBytes), at most
// kMaxDefaultDecodePrefetchMinKvBytes, 16 MiB when the L3 is unknown. Below
// it K and V come from L3 in a repeated run, and the prefetch instructions
// only take load slots (Zen 3 VM, MHA decode of 4-8 MiB: 22-35 -> 18-24 GB/s
// in a first A/B). A decode whose K and V were evicted since the last step
// (serving, between layers) would gain from it at any size; that is not
// measured.
int64_t DefaultDecodePrefetchMinKvBytes();
// The cap: the Intel Xeon VM's sysfs says 480 MiB of L3, yet prefetching paid
// from 64 MiB of K and V up (fp32 decode, d = 128, 1 thread: GQA-4 0.57-0.84x
// the time, MHA 0.92-0.97x) and lost at 8-32 MiB (1.02-1.18x); half its
// claimed L3 (240 MiB) left MHA decode of int8 K/V at Lk = 65536 (128 MiB)
// 1.2x slower than with the prefetch (kernels/DESIGN.md, "Decode prefetch").
inline constexpr int64_t kMaxDefaultDecodePrefetchMinKvBytes = int64_t{32} << 20;
inline constexpr int64_t kMaxDecodePrefetchMinKvBytes = int64_t{1} << 40;

struct Tuning {
  int format = kTuningFormat;
  std::string cpu;     // CpuModel() of the machine it was measured on
  std::string target;  // DispatchedHighwayTarget() there
  // flash: keys per tile (Bc), a multiple of 16 in [16, 512].
  int64_t flash_key_tile = 512;
  // flash: how far ahead of the K or V row a few-row (decode) block reads it
  // prefetches into L2, in bytes, in the order it reads them (paged: block
  // after block; kernels/internal/read_ahead.h), when the problem's K and V
  // exceed flash_decode_prefetch_min_kv_bytes (else nothing: DecodePrefetchBytes). 0: none
  // on a contiguous cache, one block ahead on a paged one. At most kMaxDecodePrefetchBytes. Zen 3
  // VM, d = 128, K and V of 32-512 MiB, medians of 6 processes: GQA-4 decode 1.24-1.32x faster on
  // one thread, 1.24-1.48x on two, MHA 1.01-1.13x and 1.01-1.28x (kernels/DESIGN.md, "Decode
  // prefetch"). A file without it (written before it existed) takes this default.
  int64_t flash_decode_prefetch_bytes = 32 * 1024;
  // flash: the K and V bytes (all of a problem's) above which decode
  // prefetches: DefaultDecodePrefetchMinKvBytes() unless `attnlab tune`
  // measured where prefetching starts to pay, at most
  // kMaxDecodePrefetchMinKvBytes. A file without it takes the default.
  int64_t flash_decode_prefetch_min_kv_bytes = DefaultDecodePrefetchMinKvBytes();
  // auto: the fastest variant per measured point (empty: always flash).
  std::vector<AutoPoint> auto_points;
  // Where it came from: the file's path, or "built-in defaults (<why>)".
  // Not part of the file.
  std::string source = "built-in defaults";
};

// DecodePrefetchBytes' answer where decode prefetches nothing, on either cache.
inline constexpr int64_t kNoDecodePrefetch = -1;

// How far ahead flash's decode prefetches K and V that take kv_bytes in all: the tuning's distance
// above its flash_decode_prefetch_min_kv_bytes, else kNoDecodePrefetch: at or under it K and V come
// from the L3, where a paged cache's one block ahead (a distance of 0) cost more than it saved
// (Sapphire Rapids VM, 32 MiB, GQA-4: paged decode 1.12-1.25x faster without it; kernels/DESIGN.md,
// "Paged K/V", "On the Sapphire Rapids VM"). flash's plan and the bench's read ceiling both ask
// here.
inline int64_t DecodePrefetchBytes(const Tuning& tuning, int64_t kv_bytes) {
  return kv_bytes > tuning.flash_decode_prefetch_min_kv_bytes ? tuning.flash_decode_prefetch_bytes
                                                              : kNoDecodePrefetch;
}

// "AMD EPYC (family 25, model 17)": the brand string and CPUID family/model,
// what a tuning is valid for.
std::string CpuModel();

// The defaults (no file): what the kernels were tuned with.
Tuning DefaultTuning(std::string why);
// Parses and validates a tuning file's text; errors name the bad field.
// Does not check that it matches this machine (Stale does).
StatusOr<Tuning> ParseTuning(std::string_view json);
std::string SerializeTuning(const Tuning& tuning);
// Reads `path`; NotFound when it does not exist.
StatusOr<Tuning> LoadTuningFile(const std::string& path);
// Why `tuning` does not fit this machine ("made on <cpu>, this is <cpu>"),
// or empty when it does.
std::string Stale(const Tuning& tuning);
// The path the file is looked for at (see above); empty when $ATTNLAB_TUNING
// says none or no directory is known.
std::string TuningPath();

// The tuning kernels use: the file at TuningPath() when present and current,
// else DefaultTuning. Loaded once; ScopedTuning overrides it.
const Tuning& ActiveTuning();

// Replaces the active tuning while alive (the tuner's candidates, tests).
// Not to be created or destroyed while kernels run on other threads.
class ScopedTuning {
 public:
  explicit ScopedTuning(Tuning tuning);
  ~ScopedTuning();
  ScopedTuning(const ScopedTuning&) = delete;
  ScopedTuning& operator=(const ScopedTuning&) = delete;

 private:
  Tuning tuning_;
  const Tuning* previous_;
};

// What `auto` runs for `problem` on `threads` threads under `tuning`: the
// measured point nearest in (causal, head dim, threads, N) when the problem
// is fp32 self-attention (Lq = Lk) inside the measured range of N and the
// point's variant takes it within the size limit below; flash otherwise
// (beyond the measured N, for decode and cross-attention, reduced types).
inline constexpr size_t kAutoMaxWorkspaceBytes = size_t{256} << 20;
const struct Variant& AutoChoice(const ValidProblem& problem, int threads, const Tuning& tuning);

}  // namespace attn

#endif  // ATTNLAB_KERNELS_TUNING_H_
