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
//     decode prefetch 32 KiB ahead, as measured on Zen 3, none for MHA
//     decode of a contiguous cache on Zen 4 (DefaultMhaDecodePrefetchBytes),
//     when K and V take
//     more than half the L3 or 32 MiB, whichever is less, as measured on the
//     Intel Xeon VM; prefill prefetching each next key tile into L2 except
//     on Emerald Rapids (DefaultTilePrefetch); bf16 prefill on VDPBF16PS
//     except on Sapphire and Emerald Rapids (DefaultVdpbf16ps); auto
//     always picks flash);
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
#include <utility>
#include <vector>

#include "kernels/problem.h"
#include "kernels/status.h"

namespace attn {

inline constexpr int kTuningFormat = 1;
inline constexpr int64_t kMaxDecodePrefetchBytes = int64_t{1} << 20;
// Decode's prefetch distance where no tuning and no CPU default says otherwise
// (Tuning::flash_decode_prefetch_bytes, flash_mha_decode_prefetch_bytes,
// flash_paged_prefetch_bytes).
inline constexpr int64_t kDefaultDecodePrefetchBytes = 32 * 1024;

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
// The decode prefetch distance of a contiguous cache read by one query row
// per kv head (MHA decode) when no tuning says otherwise, per detected CPU:
// none on Zen 4 (CpuIsZen4), where its fp32 kernels read faster from memory
// without it (one thread, d = 128, K and V of 32-512 MiB on 2 MiB pages: 0.66-0.76x
// the time, fp16 0.84x, bf16 0.86-0.94x; on 4 KiB pages 0.76x; kernels/DESIGN.md,
// "Per rows per kv head, and paged on its own"), else kDefaultDecodePrefetchBytes (Zen 3:
// 1.01-1.28x faster with it). GQA blocks keep kDefaultDecodePrefetchBytes on
// Zen 4 too: its bf16 and int8 kernels read 1.1-1.4x faster with it.
int64_t DefaultMhaDecodePrefetchBytes();
// Whether flash's many-row blocks prefetch the next key tile's K and V rows
// into L2 when no tuning says otherwise, per detected CPU: not on Emerald
// Rapids (IsEmeraldRapids), whose L2 streamer keeps up with a head's rows by
// itself: without the prefetch instructions (96 a 6-key score call, in a
// burst) fp32 flash ran 1.03x as fast on one thread (median of 12 cases, N =
// 2048-8192, 0.96-1.04) and as fast on two (0.99, 0.96-1.15), and `attnlab
// tune` found off 1.02-1.03x faster (kernels/DESIGN.md, "The softmax on a
// 2-FMA-port core"); elsewhere yes (the first wave's choice, made on Zen 4,
// whose L2 is half the size; not re-measured). `attnlab tune` measures it.
bool DefaultTilePrefetch();
// Whether flash computes bf16 products on VDPBF16PS when no tuning says
// otherwise and the CPU has AVX512_BF16: prefill's pair kernels for bf16 Q,
// K and V (kernels/ukernels/bf16_avx512.h; AMX, where the CPU has it and dk
// suits it, is chosen before them) and GQA decode's for bf16 K or V
// (bf16_decode.h); else through fp32 (prefill: K and V tiles converted for
// the fp32 kernels; decode: bf16 widened in registers). Per detected CPU:
// not on the Intel cores whose VDPBF16PS issues at half the FMA rate
// (VdpBf16psAtHalfFmaRate), where its products take as long as fp32's and
// the pairing costs more: there bf16 prefill on VDPBF16PS ran 0.53-0.65x as
// fast as through fp32 and GQA-4 decode 0.75-0.8x (kernels/DESIGN.md, "bf16
// without AMX on a 2-FMA-port core"); elsewhere yes (Zen 4 issues VDPBF16PS
// at the FMA's rate: prefill 1.7-1.9x fp32 flash, GQA decode 0.7-0.9x the
// converting kernels' time). `attnlab tune` measures it.
bool DefaultVdpbf16ps();
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
  // flash: how far ahead of the K or V row a few-row (decode) block of
  // several query rows per kv head (GQA) reads it prefetches into L2, in
  // bytes, in the order it reads them, on a contiguous cache, when the
  // problem's K and V exceed flash_decode_prefetch_min_kv_bytes (else nothing:
  // DecodePrefetchBytes). 0: none. At most kMaxDecodePrefetchBytes. Zen 3 VM, d = 128, K and V
  // of 32-512 MiB, medians of 6 processes: GQA-4 decode 1.24-1.32x faster on one thread,
  // 1.24-1.48x on two (kernels/DESIGN.md, "Decode prefetch"). A file without it (written before
  // it existed) takes the default.
  int64_t flash_decode_prefetch_bytes = kDefaultDecodePrefetchBytes;
  // flash: the same for a block of one query row per kv head (MHA decode),
  // whose kernels read several times the bytes per instruction: Zen 3 VM
  // 1.01-1.13x faster with 32 KiB on one thread, 1.01-1.28x on two; on Zen 4
  // slower (DefaultMhaDecodePrefetchBytes, which DefaultTuning sets here). A
  // file without it takes kDefaultDecodePrefetchBytes.
  int64_t flash_mha_decode_prefetch_bytes = kDefaultDecodePrefetchBytes;
  // flash: the same on a paged cache, in read order (block after block;
  // kernels/internal/read_ahead.h). 0: one group of blocks ahead (the
  // hardware prefetcher cannot follow the jumps between blocks). Its own
  // field since the two caches want different distances: on the Zen 4 VM
  // block size 16 ran 1.3-2.2x slower with one block ahead than 8-32 KiB
  // ahead where contiguous MHA decode ran fastest with none (kernels/DESIGN.md,
  // "Per rows per kv head, and paged on its own"). `attnlab tune` measures it on GQA-4
  // and MHA decode of a pool of 16-key blocks (TunePagedDecodePrefetch in cli/tune.cc).
  // A file without it takes the default.
  int64_t flash_paged_prefetch_bytes = kDefaultDecodePrefetchBytes;
  // flash: the K and V bytes (all of a problem's) above which decode
  // prefetches: DefaultDecodePrefetchMinKvBytes() unless `attnlab tune`
  // measured where prefetching starts to pay, at most
  // kMaxDecodePrefetchMinKvBytes. A file without it takes the default.
  int64_t flash_decode_prefetch_min_kv_bytes = DefaultDecodePrefetchMinKvBytes();
  // flash: whether a many-row (prefill) block's score tile prefetches the
  // next key tile's K and V rows into L2 as it goes (DefaultTilePrefetch). A
  // file without it takes true.
  bool flash_tile_prefetch = true;
  // flash: whether bf16 products run on VDPBF16PS (true: prefill's pair
  // kernels where AMX does not take them, GQA decode's pair kernels) or
  // through fp32 (false) where the CPU has AVX512_BF16 (DefaultVdpbf16ps).
  // A file without it takes true.
  bool flash_vdpbf16ps = true;
  // auto: the fastest variant per measured point (empty: always flash).
  std::vector<AutoPoint> auto_points;
  // Where it came from: the file's path, or "built-in defaults (<why>)".
  // Not part of the file.
  std::string source = "built-in defaults";
};

// DecodePrefetchBytes' answer where decode prefetches nothing, on either cache.
inline constexpr int64_t kNoDecodePrefetch = -1;

// The distance the tuning gives a paged cache, or a contiguous one read by
// `rows` query rows per kv head.
inline int64_t DecodePrefetchDistance(const Tuning& tuning, bool paged, int64_t rows) {
  if (paged) return tuning.flash_paged_prefetch_bytes;
  return rows == 1 ? tuning.flash_mha_decode_prefetch_bytes : tuning.flash_decode_prefetch_bytes;
}

// How far ahead flash's decode prefetches K and V that take kv_bytes in all: the tuning's distance
// for the cache (DecodePrefetchDistance) above its flash_decode_prefetch_min_kv_bytes, else
// kNoDecodePrefetch: at or under it K and V come from the L3, where a paged cache's one block
// ahead (a distance of 0) cost more than it saved (Sapphire Rapids VM, 32 MiB, GQA-4: paged decode
// 1.12-1.25x faster without it; kernels/DESIGN.md, "Paged K/V", "On the Sapphire Rapids VM").
// flash's plan and the bench's read ceiling both ask here.
inline int64_t DecodePrefetchBytes(const Tuning& tuning, int64_t kv_bytes, bool paged,
                                   int64_t rows) {
  return kv_bytes > tuning.flash_decode_prefetch_min_kv_bytes
             ? DecodePrefetchDistance(tuning, paged, rows)
             : kNoDecodePrefetch;
}

// "AMD EPYC (family 25, model 17)": the brand string and CPUID family/model,
// what a tuning is valid for.
std::string CpuModel();
// CPUID's family and model (0, 0 off x86); whether a family and model are a
// Zen 4 core, and whether this CPU is one.
std::pair<int, int> CpuFamilyModel();
bool IsZen4(int family, int model);
bool CpuIsZen4();
// Intel Emerald Rapids (family 6, model 207 = CFh): the only Intel core whose
// tile prefetch was measured (Sapphire Rapids, model 143, shares its core and
// L2 and is left to `attnlab tune`).
bool IsEmeraldRapids(int family, int model);
// The Intel cores measured to issue VDPBF16PS at half the FMA rate (a
// register-resident loop of them, `ceiling_vdpbf16ps`, at 0.5x
// `ceiling_fma`'s FLOP rate): Emerald Rapids (207) and the Sapphire Rapids
// VM that reported model 167 (A7h; a native one reports 143 = 8Fh, same
// core, included). Not measured elsewhere (Granite Rapids, Cooper Lake).
bool VdpBf16psAtHalfFmaRate(int family, int model);

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
