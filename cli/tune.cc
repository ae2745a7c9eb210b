// `attnlab tune`: what is fastest on this machine, measured, written to the
// tuning file the kernels read (kernels/tuning.h).
//
// Each measurement is timed as repetitions interleaved across the
// candidates (a drift in clock or memory bandwidth hits every candidate
// alike) and summarized by each candidate's fastest repetition:
//   1. flash's key tile (Bc in {128, 256, 512}) on dense prefill at N = 2048
//      for every head dim and on GQA-4 decode at Lk = 32768, one thread. The
//      score of a tile is the sum over shapes of its time over the shape's
//      best time; 512 (the built-in default) stays unless another tile
//      scores more than 1% better, so noise does not move it. In this and
//      each step below a setting other than the default must win again in a
//      head-to-head against it with twice the repetitions (PickFlashSetting).
//   2. the K and V size above which flash's decode prefetches: from 8 MiB
//      of K and V up, doubling to 256 MiB (GQA-4, one thread), the 32 KiB
//      distance against none, up to the first size at which none is not
//      more than 3% faster (TuneDecodePrefetchMinKvBytes).
//   3. flash's decode prefetch distances on a contiguous cache (0, 16, 32,
//      64 KiB ahead of the rows read), GQA-4's and MHA's each on its own
//      decode with K and V of twice that size (at least 64 MiB;
//      TuneDecodePrefetch), one thread; this CPU's default (32 KiB; none for
//      MHA on Zen 4: DefaultMhaDecodePrefetchBytes) stays unless another
//      distance is more than 3% faster (decode from memory is noisier). Then
//      a paged cache's (flash.paged_prefetch_bytes): the same GQA-4 and MHA
//      decodes with K and V in a shuffled pool of 16-key blocks, the default
//      (32 KiB) against one group of blocks ahead, 16 and 64 KiB, within 3%
//      the default stays (TunePagedDecodePrefetch).
//   4. whether flash's prefill prefetches the next key tile's K and V rows
//      (flash.tile_prefetch): dense N = 4096 for every head dim, where a
//      head's K and V pass a 2 MiB L2, one thread; this CPU's default (off
//      on Emerald Rapids: DefaultTilePrefetch) stays unless the other is
//      more than 2% faster (TuneTilePrefetch).
//   5. whether bf16 products run on VDPBF16PS (prefill's pair kernels where
//      AMX does not take a shape, GQA decode's) or through fp32
//      (flash.vdpbf16ps; only on a CPU with AVX512_BF16): bf16 Q, K, V, O,
//      dense N = 2048 for every head dim and GQA-4 decode at Lk = 32768,
//      with ATTNLAB_NO_AMX=1, one thread; this CPU's default
//      (off where VDPBF16PS issues at half the FMA rate:
//      DefaultVdpbf16ps) stays unless the other is more than 2%
//      faster (TuneVdpbf16ps).
//   6. auto's points: for every thread count, head dim, mask class (dense,
//      causal) and N = 128, 256, ... max_n (self-attention, B = 1, H = 8),
//      every fp32 variant that fits kAutoMaxWorkspaceBytes, with the settings
//      of steps 1-5. flash is kept unless another variant is more than 3% faster,
//      in the round and again in a head-to-head with twice the repetitions
//      (within 3% the difference is noise, and flash needs no Lq x Lk
//      memory). A repetition is as many runs as take ~20 ms. A variant more
//      than 2x slower than the best at a point is not tried at larger N
//      (naive would otherwise take most of the time); flash always is.
#include "cli/tune.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>

#include "cli/files.h"
#include "cli/inputs.h"
#include "kernels/registry.h"
#include "kernels/tuning.h"
#include "kernels/ukernels/bf16_avx512.h"
#include "testing/paged_kv.h"
#include "testing/problem_data.h"
#include "testing/scoped_env.h"

namespace attn::cli {
namespace fs = std::filesystem;
namespace {

using testing::ProblemData;
using testing::ProblemSpec;

ProblemSpec SelfAttention(int64_t n, int64_t d, bool causal) {
  ProblemSpec spec;
  spec.shape = Shape{1, 8, 8, n, n, d, d};
  spec.mask = causal ? MaskKind::kCausal : MaskKind::kNone;
  spec.want_lse = false;
  return spec;
}

// Seconds per run of `variant` over `runs` consecutive runs (Run:
// validation, workspace and kernel, as a caller sees it).
double TimeRuns(const Variant& variant, ProblemData& data, int threads, int runs = 1) {
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < runs; ++r) {
    const Status status = Run(variant, data.problem(), OnThreads(threads));
    if (!status.ok()) {
      Fail(fmt::format("tune: {} failed on its own candidate problem: {}", variant.name,
                       status.message()),
           kExitFailed);
    }
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / runs;
}

// Runs per timed repetition so that one lasts about `rep_seconds`, from the
// time of one run: a multi-threaded run on a busy machine can wait a whole
// scheduler tick (4-12 ms) for a descheduled thread, which a repetition of
// one sub-millisecond run would take for the kernel's time.
int RunsPerRep(double one_run_seconds, double rep_seconds) {
  return int(std::clamp(std::ceil(rep_seconds / std::max(one_run_seconds, 1e-7)), 1.0, 1000.0));
}

// Fastest of `reps` repetitions of each candidate, interleaved: rep 1 of
// every candidate, then rep 2, ... `run(i)` times candidate i once.
template <typename RunOnce>
std::vector<double> FastestInterleaved(size_t candidates, int reps, RunOnce run) {
  std::vector<double> best(candidates, std::numeric_limits<double>::infinity());
  for (int r = 0; r < reps; ++r) {
    for (size_t i = 0; i < candidates; ++i) {
      best[i] = std::min(best[i], run(i));
    }
  }
  return best;
}

// Scores of flash settings: flash on one thread over each of `shapes` (K
// and V in a paged cache of `paged_block_size`-key blocks when it is not 0:
// testing/paged_kv.h) under each of `values`, set into a copy of `base` by
// `set`, `reps` repetitions interleaved. A value's score is the sum over
// shapes of its time over the shape's best time (1.0 per shape is best
// everywhere). Prints a line per shape, `label` after the setting's name.
template <typename Set>
std::vector<double> ScoreFlashSettings(const char* what, const char* label, const char* unit,
                                       const std::vector<int64_t>& values,
                                       const std::vector<ProblemSpec>& shapes, int reps,
                                       const Tuning& base, Set set, int64_t paged_block_size) {
  std::vector<double> score(values.size(), 0.0);
  for (const ProblemSpec& spec : shapes) {
    ProblemData data(spec);
    testing::PagedKv pools;
    if (paged_block_size > 0) testing::PageKv(paged_block_size, data.problem(), pools);
    const Variant& flash = *FindVariant("flash");
    const std::vector<double> t = FastestInterleaved(values.size(), reps, [&](size_t i) {
      Tuning candidate = base;
      set(candidate, values[i]);
      ScopedTuning scope(candidate);
      return TimeRuns(flash, data, 1);
    });
    const double fastest = *std::min_element(t.begin(), t.end());
    std::string line = fmt::format(
        "  flash {}{}, {}{}:", what, label, Describe(spec.shape, Mask{}),
        paged_block_size > 0 ? fmt::format(", paged (block size {})", paged_block_size) : "");
    for (size_t i = 0; i < values.size(); ++i) {
      score[i] += t[i] / fastest;
      line += fmt::format(" {}{} {:.3f} ms", values[i], unit, t[i] * 1e3);
    }
    fmt::print("{}\n", line);
    std::fflush(stdout);
  }
  return score;
}

// One flash setting of the tuning, measured (ScoreFlashSettings; the
// default is values[0]). The default stays unless another value scores more
// than `margin` better, both in the round and again in a head-to-head
// against the default with twice the repetitions, as auto's points
// (MeasurePoint): on a shared VM one round's winner by a few per cent is
// often noise (two full runs on the Emerald Rapids VM, minutes apart, picked
// key tiles 512 and 128 and GQA-4 decode prefetches 32 KiB and none), and
// a pick stays in the file for good.
template <typename Set>
int64_t PickFlashSetting(const char* what, const char* unit, const std::vector<int64_t>& values,
                         const std::vector<ProblemSpec>& shapes, double margin,
                         const TuneArgs& args, const Tuning& base, Set set,
                         int64_t paged_block_size = 0) {
  const std::vector<double> score =
      ScoreFlashSettings(what, "", unit, values, shapes, args.reps, base, set, paged_block_size);
  size_t pick = 0;
  for (size_t i = 1; i < values.size(); ++i) {
    if (score[i] < score[pick] && score[i] < score[0] * (1 - margin)) pick = i;
  }
  std::string again;
  if (pick != 0) {
    const std::vector<double> head_to_head =
        ScoreFlashSettings(what, " again", unit, {values[0], values[pick]}, shapes, 2 * args.reps,
                           base, set, paged_block_size);
    again = fmt::format("; head to head {}{} {:.3f}, the default {:.3f}", values[pick], unit,
                        head_to_head[1], head_to_head[0]);
    if (!(head_to_head[1] < head_to_head[0] * (1 - margin))) {
      again += ": not confirmed, the default stays";
      pick = 0;
    }
  }
  fmt::print(
      "  -> {} {}{} (score {:.3f}, the default {}{} scores {:.3f}{}; 1.0 per shape is best "
      "everywhere)\n",
      what, values[pick], unit, score[pick], values[0], unit, score[0], again);
  return values[pick];
}

// `base` with decode prefetching at every size of K and V: the prefetch
// measurements compare distances (0: none) alone.
Tuning PrefetchingAlways(const Tuning& base) {
  Tuning t = base;
  t.flash_decode_prefetch_min_kv_bytes = 0;
  return t;
}

// The K and V bytes of Decode(kv_heads, kv_len).
int64_t DecodeKvBytes(int64_t kv_heads, int64_t kv_len) {
  return kv_heads * kv_len * 128 * 2 * int64_t{sizeof(float)};
}

ProblemSpec Decode(int64_t kv_heads, int64_t kv_len) {
  ProblemSpec spec;
  spec.shape = Shape{1, 8, kv_heads, 1, kv_len, 128, 128};
  spec.want_lse = false;
  return spec;
}

int64_t TuneKeyTile(const TuneArgs& args, const Tuning& base) {
  std::vector<ProblemSpec> shapes;
  const int64_t n = args.quick ? 256 : 2048;
  for (int64_t d : args.head_dims) shapes.push_back(SelfAttention(n, d, false));
  shapes.push_back(Decode(2, args.quick ? 4096 : 32768));
  return PickFlashSetting("key tile", "", {512, 256, 128}, shapes, 0.01, args, base,
                          [](Tuning& t, int64_t v) { t.flash_key_tile = v; });
}

// The K and V size above which decode prefetches: from 8 MiB of K and V up,
// doubling to 256 MiB (GQA-4, one thread: where the prefetch pays most, on
// the Intel Xeon VM at 64 MiB 0.57-0.84x the time against MHA's 0.92-0.97x),
// a 32 KiB distance against none, interleaved, in a repeated run (as a decode loop over
// one layer's cache reads them: what fits the L3 comes from there), until the
// prefetch is no longer more than 3% slower; the threshold is the last size
// at which it was (a VM's sysfs L3 is what the hypervisor claims, not what
// this process gets of it), half the smallest when it never was. Measured on
// the Intel Xeon VM (fp32, d = 128): 1.02-1.14x the time at 8-32 MiB,
// 0.80-0.97x at 64 MiB, 0.95-1.05x at 128 MiB, 1.04x at 256 MiB: the first
// size where it stops losing is the line, not the largest where it loses
// (losses above the line are a few percent, gains just above it up to 1.25x).
// --quick keeps the default.
int64_t TuneDecodePrefetchMinKvBytes(const TuneArgs& args, const Tuning& base) {
  const int64_t fallback = base.flash_decode_prefetch_min_kv_bytes;
  if (args.quick) {
    fmt::print(
        "  -> decode prefetch above {} MiB of K and V (the default; --quick does not "
        "measure it)\n",
        fallback >> 20);
    return fallback;
  }
  const Tuning always = PrefetchingAlways(base);
  constexpr int64_t kMiB = int64_t{1} << 20;
  int64_t threshold = 4 * kMiB;
  for (int64_t mib = 8; mib <= 256; mib *= 2) {
    const std::vector<ProblemSpec> shapes = {Decode(2, mib * kMiB / DecodeKvBytes(2, 1))};
    const std::string what = fmt::format("decode prefetch at {} MiB of K and V", mib);
    const int64_t pick =
        PickFlashSetting(what.c_str(), " B", {kDefaultDecodePrefetchBytes, 0}, shapes, 0.03, args,
                         always, [](Tuning& t, int64_t v) { t.flash_decode_prefetch_bytes = v; });
    if (pick != 0) break;
    threshold = mib * kMiB;
  }
  fmt::print("  -> decode prefetch above {} MiB of K and V (the default {} MiB)\n", threshold >> 20,
             fallback >> 20);
  return threshold;
}

// Decode with `kv_heads` kv heads whose K and V take twice the tuning's
// prefetch threshold and at least 64 MiB (Lk a power of two from 4096): the
// sizes where a prefetch starts to pay are where its distance matters.
ProblemSpec PrefetchedDecode(int64_t kv_heads, const Tuning& tuned) {
  const int64_t want = std::max(int64_t{64} << 20, 2 * tuned.flash_decode_prefetch_min_kv_bytes);
  int64_t kv_len = 4096;
  while (DecodeKvBytes(kv_heads, kv_len) < want) kv_len *= 2;
  return Decode(kv_heads, kv_len);
}

// The prefetch distances a tuning step tries: this CPU's default first (it
// stays unless another scores better by the margin), then none (on a paged
// cache: one group of blocks ahead), 16, 32 and 64 KiB.
std::vector<int64_t> DistancesFrom(int64_t default_bytes) {
  std::vector<int64_t> distances = {default_bytes};
  for (int64_t d : {int64_t{0}, int64_t{16384}, int64_t{32768}, int64_t{65536}}) {
    if (d != default_bytes) distances.push_back(d);
  }
  return distances;
}

// The distances, GQA-4 decode's (flash_decode_prefetch_bytes) and MHA
// decode's (flash_mha_decode_prefetch_bytes) each on its own shape, whose K
// and V take twice the threshold (TuneDecodePrefetchMinKvBytes; at least 64
// MiB): the sizes where a prefetch starts to pay are where its distance
// matters. On the Intel Xeon VM, fp32, d = 128, 1 thread, prefetching 32 KiB
// ahead took 0.80-0.98x the time at 64 MiB and 0.95-1.05x at 512 MiB, whose
// stream the hardware prefetcher keeps up with by itself; on the Zen 4 VM MHA
// decode ran 1.4x faster without it, GQA-4 about as fast (kernels/DESIGN.md,
// "Per rows per kv head, and paged on its own"). Decode times move 10-20% between runs on a
// shared VM, hence the 3% margin. --quick keeps the defaults: its problems
// stay in cache.
void TuneDecodePrefetch(const TuneArgs& args, Tuning& tuned) {
  struct Kind {
    const char* name;
    int64_t kv_heads;
    int64_t Tuning::*field;
  };
  for (const Kind& kind : {Kind{"GQA-4", 2, &Tuning::flash_decode_prefetch_bytes},
                           Kind{"MHA", 8, &Tuning::flash_mha_decode_prefetch_bytes}}) {
    const std::string what = fmt::format("{} decode prefetch", kind.name);
    if (args.quick) {
      fmt::print("  -> {} {} B (the default; --quick does not measure it)\n", what,
                 tuned.*kind.field);
      continue;
    }
    tuned.*kind.field = PickFlashSetting(what.c_str(), " B", DistancesFrom(tuned.*kind.field),
                                         {PrefetchedDecode(kind.kv_heads, tuned)}, 0.03, args,
                                         PrefetchingAlways(tuned),
                                         [&kind](Tuning& t, int64_t v) { t.*kind.field = v; });
  }
}

// The distance on a paged cache (flash_paged_prefetch_bytes): GQA-4 and MHA
// decode with K and V in a shuffled pool of 16-key blocks (the smallest
// block the paged target holds at, where each block is a jump the hardware
// prefetcher cannot follow), each the size TuneDecodePrefetch uses; the
// default (32 KiB) against one group of blocks ahead (a distance of 0),
// 16 and 64 KiB, within 3% the default stays. On the Zen 4 VM one block
// ahead made block size 16 1.3-2.2x slower than 8-32 KiB ahead
// (kernels/DESIGN.md, "Per rows per kv head, and paged on its own"); on the
// Emerald Rapids VM GQA-4 1.06-1.38x slower, 16-64 KiB within a few percent
// of each other ("On the Emerald Rapids VM" under "Paged K/V"). --quick keeps
// the default.
void TunePagedDecodePrefetch(const TuneArgs& args, Tuning& tuned) {
  const char* what = "paged decode prefetch";
  if (args.quick) {
    fmt::print("  -> {} {} B (the default; --quick does not measure it)\n", what,
               tuned.flash_paged_prefetch_bytes);
    return;
  }
  const std::vector<ProblemSpec> shapes = {PrefetchedDecode(2, tuned), PrefetchedDecode(8, tuned)};
  constexpr int64_t kBlockSize = 16;
  tuned.flash_paged_prefetch_bytes = PickFlashSetting(
      what, " B", DistancesFrom(tuned.flash_paged_prefetch_bytes), shapes, 0.03, args,
      PrefetchingAlways(tuned), [](Tuning& t, int64_t v) { t.flash_paged_prefetch_bytes = v; },
      kBlockSize);
}

// Whether the score tiles of prefill prefetch the next key tile's K and V
// rows into L2: on the Emerald Rapids VM fp32 flash ran ~1.03x as fast
// without on one thread, as fast on two (N = 2048-8192; kernels/DESIGN.md,
// "The softmax on a 2-FMA-port core"). Dense N = 4096 (256 with --quick) for every head dim, one
// thread; within 2% the default stays.
void TuneTilePrefetch(const TuneArgs& args, Tuning& tuned) {
  std::vector<ProblemSpec> shapes;
  for (int64_t d : args.head_dims) {
    shapes.push_back(SelfAttention(args.quick ? 256 : 4096, d, false));
  }
  const int64_t fallback = tuned.flash_tile_prefetch ? 1 : 0;
  tuned.flash_tile_prefetch =
      PickFlashSetting("tile prefetch (1 on, 0 off)", "", {fallback, 1 - fallback}, shapes, 0.02,
                       args, tuned,
                       [](Tuning& t, int64_t v) { t.flash_tile_prefetch = v != 0; }) != 0;
}

// Whether bf16 products run on VDPBF16PS (prefill's pair kernels where AMX
// does not take a shape, GQA decode's) or through fp32: on the Emerald
// Rapids VM, whose VDPBF16PS issues at half the FMA rate, prefill ran
// 1.5-1.9x and GQA-4 decode 1.25-1.3x as fast through fp32; on Zen 4
// VDPBF16PS made bf16 prefill 1.7-1.9x as fast as fp32 (kernels/DESIGN.md,
// "bf16 without AMX on a 2-FMA-port core"). bf16 dense N = 2048 (256 with
// --quick) for every head dim and GQA-4 decode at Lk = 32768 (4096), one
// thread, ATTNLAB_NO_AMX=1; within 2% the default stays. Skipped without
// AVX512_BF16, where the VDPBF16PS kernels do not run.
void TuneVdpbf16ps(const TuneArgs& args, Tuning& tuned) {
  if (!ukernels::CpuHasAvx512Bf16()) {
    fmt::print("  -> bf16 on VDPBF16PS: not measured (this CPU has no AVX512_BF16)\n");
    return;
  }
  const testing::ScopedEnv no_amx("ATTNLAB_NO_AMX", "1");
  std::vector<ProblemSpec> shapes;
  for (int64_t d : args.head_dims)
    shapes.push_back(SelfAttention(args.quick ? 256 : 2048, d, false));
  shapes.push_back(Decode(2, args.quick ? 4096 : 32768));
  for (ProblemSpec& spec : shapes) {
    spec.dtypes = {DType::kBF16, DType::kBF16, DType::kBF16, DType::kBF16};
  }
  const int64_t fallback = tuned.flash_vdpbf16ps ? 1 : 0;
  tuned.flash_vdpbf16ps =
      PickFlashSetting("bf16 on VDPBF16PS (1 yes, 0 through fp32)", "", {fallback, 1 - fallback},
                       shapes, 0.02, args, tuned,
                       [](Tuning& t, int64_t v) { t.flash_vdpbf16ps = v != 0; }) != 0;
}

// The fp32 variants auto may pick for `data` on `threads` threads: all but
// auto itself, those `dropped` at a smaller N, and those whose workspace
// exceeds kAutoMaxWorkspaceBytes (auto would not run them).
std::vector<const Variant*> Candidates(ProblemData& data, int threads,
                                       const std::set<std::string>& dropped) {
  std::vector<const Variant*> candidates;
  for (const Variant* v : Registry()) {
    if (std::string_view(v->name) == "auto" || dropped.count(v->name)) continue;
    StatusOr<ValidProblem> valid = Prepare(*v, data.problem(), OnThreads(threads));
    if (valid.ok() && v->workspace_bytes(*valid, threads) <= kAutoMaxWorkspaceBytes) {
      candidates.push_back(v);
    }
  }
  return candidates;
}

struct PointResult {
  std::vector<double> seconds;  // per candidate
  size_t pick = 0;
  std::string confirmation;  // the head-to-head against flash, when the pick is not flash
};

// Times every candidate at one point and picks: flash unless another
// variant is more than 3% faster, both in the interleaved round and in a
// head-to-head of twice the repetitions that follows it (a pick on one
// lucky repetition would stay in the file for good).
PointResult MeasurePoint(const std::vector<const Variant*>& candidates, ProblemData& data,
                         int threads, const TuneArgs& args) {
  const double rep_seconds = args.quick ? 0.002 : 0.02;
  std::vector<int> runs;  // per repetition; the first run also warms up
  for (const Variant* v : candidates) {
    runs.push_back(RunsPerRep(TimeRuns(*v, data, threads), rep_seconds));
  }
  PointResult r;
  r.seconds = FastestInterleaved(candidates.size(), args.reps, [&](size_t i) {
    return TimeRuns(*candidates[i], data, threads, runs[i]);
  });
  size_t flash = candidates.size();
  for (size_t i = 0; i < candidates.size(); ++i) {
    if (candidates[i]->name == std::string_view("flash")) flash = i;
    if (r.seconds[i] < r.seconds[r.pick]) r.pick = i;
  }
  if (flash == candidates.size() || r.pick == flash) return r;
  if (r.seconds[flash] <= r.seconds[r.pick] * 1.03) {
    r.pick = flash;
    return r;
  }
  const size_t pair[2] = {r.pick, flash};
  const std::vector<double> again = FastestInterleaved(2, 2 * args.reps, [&](size_t i) {
    return TimeRuns(*candidates[pair[i]], data, threads, runs[pair[i]]);
  });
  r.confirmation = fmt::format("; again: {} {:.3f} ms, flash {:.3f} ms", candidates[r.pick]->name,
                               again[0] * 1e3, again[1] * 1e3);
  if (again[1] <= again[0] * 1.03) r.pick = flash;
  return r;
}

std::vector<AutoPoint> TuneAutoPoints(const TuneArgs& args, const Tuning& tuned) {
  ScopedTuning scope(tuned);
  std::vector<int64_t> ns;
  for (int64_t n = 128; n <= args.max_n; n *= 2) ns.push_back(n);
  const size_t total = args.threads.size() * args.head_dims.size() * 2 * ns.size();
  std::vector<AutoPoint> points;
  size_t done = 0;
  for (int threads : args.threads) {
    for (int64_t d : args.head_dims) {
      for (bool causal : {false, true}) {
        std::set<std::string> dropped;  // > 2x the best at a smaller N (never flash)
        for (int64_t n : ns) {
          ProblemData data(SelfAttention(n, d, causal));
          const std::vector<const Variant*> candidates = Candidates(data, threads, dropped);
          const PointResult r = MeasurePoint(candidates, data, threads, args);
          const double best = *std::min_element(r.seconds.begin(), r.seconds.end());
          std::string line = fmt::format("[{:>2}/{}] threads={} d={} {} N={}:", ++done, total,
                                         threads, d, causal ? "causal" : "dense", n);
          for (size_t i = 0; i < candidates.size(); ++i) {
            line += fmt::format(" {} {:.3f} ms{}", candidates[i]->name, r.seconds[i] * 1e3,
                                i + 1 < candidates.size() ? "," : "");
            if (r.seconds[i] > 2 * best && candidates[i]->name != std::string_view("flash")) {
              dropped.insert(candidates[i]->name);
            }
          }
          fmt::print("{}{} -> {}\n", line, r.confirmation, candidates[r.pick]->name);
          std::fflush(stdout);
          points.push_back(AutoPoint{d, causal, threads, n, candidates[r.pick]->name});
        }
      }
    }
  }
  return points;
}

void CheckArgs(TuneArgs& args) {
  if (args.quick) {
    args.head_dims = {64};
    args.max_n = 256;
    args.reps = std::min(args.reps, 2);
  }
  if (args.threads.empty()) {
    args.threads = {1};
    if (omp_get_max_threads() > 1) args.threads.push_back(omp_get_max_threads());
  }
  for (int t : args.threads) {
    if (t < 1 || t > kMaxThreads) {
      Fail(fmt::format("--threads: {} must be in [1, {}]", t, kMaxThreads));
    }
  }
  for (int64_t d : args.head_dims) {
    if (d < 1 || d > 1024) Fail(fmt::format("--head-dims: {} must be in [1, 1024]", d));
  }
  if (args.max_n < 128 || args.max_n > 65536) {
    Fail(fmt::format("--max-n: {} must be in [128, 65536]", args.max_n));
  }
  if (args.reps < 1 || args.reps > 100)
    Fail(fmt::format("--reps: {} must be in [1, 100]", args.reps));
}

}  // namespace

int TuneCommand(TuneArgs args) {
  CheckArgs(args);
  std::string path = args.out.value_or(TuningPath());
  if (path.empty()) {
    Fail(
        "tune: no place for the tuning file: ATTNLAB_TUNING=none and no --out (or HOME is "
        "unset); give --out PATH");
  }
  if (!args.out) {
    // The default location: make its directory (~/.config/attnlab).
    std::error_code ec;
    fs::create_directories(fs::path(path).parent_path(), ec);
  }
  const OutputFile out = CheckOutputs({{"--out", path}}, {}).front();

  Tuning tuned = DefaultTuning("being measured");
  // Timings on a loaded machine (another build, another benchmark) are not
  // this machine's: multi-threaded runs wait for a descheduled thread.
  if (std::ifstream loadavg("/proc/loadavg"); loadavg) {
    double load = 0;
    loadavg >> load;
    const int cores = omp_get_num_procs();
    if (load > 0.5 * cores) {
      fmt::print(stderr,
                 "attnlab tune: warning: load average {:.1f} on {} cores: other processes "
                 "compete for them, and the timings (multi-threaded ones most) will show it\n",
                 load, cores);
    }
  }
  fmt::print("attnlab tune: {} (Highway target {}), threads {}, writing {}\n", tuned.cpu,
             tuned.target, fmt::join(args.threads, ","), path);
  const auto start = std::chrono::steady_clock::now();
  tuned.flash_key_tile = TuneKeyTile(args, tuned);
  tuned.flash_decode_prefetch_min_kv_bytes = TuneDecodePrefetchMinKvBytes(args, tuned);
  TuneDecodePrefetch(args, tuned);
  TunePagedDecodePrefetch(args, tuned);
  TuneTilePrefetch(args, tuned);
  TuneVdpbf16ps(args, tuned);
  tuned.auto_points = TuneAutoPoints(args, tuned);
  tuned.source = path;

  WriteFileOrFail(out.target, SerializeTuning(tuned), "--out");
  size_t not_flash = 0;
  for (const AutoPoint& p : tuned.auto_points) not_flash += p.variant != "flash";
  fmt::print(
      "wrote {} in {:.0f} s: flash key tile {}, decode prefetch {} B (GQA), {} B (MHA), {} B "
      "(paged) above {} MiB of K and V, tile prefetch {}, bf16 on VDPBF16PS {}, {} "
      "of {} auto points pick a variant other than flash.\nThe kernels read it at {} "
      "(ATTNLAB_TUNING overrides the path; ATTNLAB_TUNING=none ignores it).\n",
      path, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
      tuned.flash_key_tile, tuned.flash_decode_prefetch_bytes,
      tuned.flash_mha_decode_prefetch_bytes, tuned.flash_paged_prefetch_bytes,
      tuned.flash_decode_prefetch_min_kv_bytes >> 20, tuned.flash_tile_prefetch ? "on" : "off",
      tuned.flash_vdpbf16ps ? "yes" : "no", not_flash, tuned.auto_points.size(),
      args.out ? "that path when ATTNLAB_TUNING names it" : "this default path");
  return kExitOk;
}

}  // namespace attn::cli
