// The variant registry: the one list of attention kernels.
//
// Each kernel file defines one `const Variant` and kernels/variants.inc names
// it once. Tests, benchmarks, the command-line tool and the reports iterate
// over Registry(); there is no other list. To add a variant: write
// kernels/<name>.cc defining `extern const Variant <name>_variant`, add
// `ATTN_VARIANT(<name>)` to variants.inc and the file to kernels/CMakeLists.txt.
//
// Callers run a variant through attn::Run(), which validates the problem,
// checks the variant supports it, checks the declared workspace against the
// memory budget, then calls the kernel.
#ifndef ATTNLAB_KERNELS_REGISTRY_H_
#define ATTNLAB_KERNELS_REGISTRY_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/problem.h"
#include "kernels/status.h"
#include "kernels/thread_times.h"
#include "kernels/workspace.h"

namespace attn {

// What a running kernel gets besides the problem.
struct ExecContext {
  int threads = 1;       // OpenMP threads the kernel may use
  Workspace* workspace;  // every allocation goes here
  // The code path that ran, for RunStats::path. Run sets the default (the
  // dispatched Highway target for a variant that uses_highway, else
  // "portable C++"); a kernel that takes an ISA-specific micro-kernel says so
  // (flash: "AVX3+AVX512_BF16").
  std::string path;
};

using KernelFn = Status (*)(const ValidProblem& problem, ExecContext& ctx);
// Bytes the kernel will allocate at most for `problem` on `threads` threads.
using WorkspaceFn = size_t (*)(const ValidProblem& problem, int threads);
// The same for a backward pass (kernels/problem.h, "backward").
using BackwardFn = Status (*)(const ValidGradProblem& problem, ExecContext& ctx);
using BackwardWorkspaceFn = size_t (*)(const ValidGradProblem& problem, int threads);

struct Variant {
  const char* name;     // test name, benchmark prefix and report key
  const char* summary;  // one line for `attnlab list`
  KernelFn run;
  WorkspaceFn workspace_bytes;
  // What it supports. Every variant supports all mask kinds, key lengths,
  // GQA/MQA, strides and lse (issue: "the whole problem API"); weights only
  // where the algorithm materializes them.
  bool supports_weights = false;
  // Workspace grows as Lq x Lk (a score matrix): the variant is refused,
  // before it allocates, when that exceeds the memory budget.
  bool materializes_scores = false;
  // Dispatches through Highway: tests run it once per compiled target.
  bool uses_highway = false;
  // Exact same output bits for the same input and thread count.
  bool deterministic = true;
  // The element types it takes (DTypeMask sets; kernels/dtype.h). Every
  // combination of the sets is taken; Prepare refuses others, naming them.
  struct DTypeSupport {
    uint8_t q = kF32Only;
    uint8_t kv = kF32Only;  // K and V each
    uint8_t o = kF32Only;
  } dtypes;
  // The score modifiers it applies (kernels/problem.h: kSoftcap | kAlibi |
  // kSinks); Prepare refuses a problem using any other, naming it.
  uint8_t modifiers = 0;
  // Reads K and V through a paged cache's block table (Problem::kv_pages);
  // Prepare refuses a paged problem otherwise.
  bool paged_kv = false;
  // The backward pass (dQ, dK, dV; fp32), where the variant has one: null
  // members mean it has none. Every mask kind, key lengths, GQA, dk != dv.
  struct Backward {
    BackwardFn run = nullptr;
    BackwardWorkspaceFn workspace_bytes = nullptr;
    // Grows as Lq x Lk (or a panel of it): refused before allocating when
    // over the memory budget, like materializes_scores.
    bool materializes_scores = false;
    // The score modifiers its backward applies (a sink needs nothing of a
    // kernel that recomputes P from lse: SinkGradients makes dσ).
    uint8_t modifiers = 0;
  } backward;
  bool has_backward() const { return backward.run != nullptr; }
};

// "Q f32, bf16; K, V f32, bf16, f16, i8; O f32": what a variant takes.
std::string DescribeSupport(const Variant::DTypeSupport& support);
// Whether `variant` takes tensors of these element types (what Prepare
// checks; tests and benchmarks skip the combinations it does not).
bool Takes(const Variant& variant, const DTypes& dtypes);

// Every registered variant, in variants.inc order.
std::span<const Variant* const> Registry();
// nullptr if there is none of that name.
const Variant* FindVariant(std::string_view name);
// "naive, blas, ..." for error messages and --help.
std::string VariantNames();
// "naive, blas, flash": the variants with a backward pass.
std::string BackwardVariantNames();
// The variants whose backward applies every modifier in `set`.
std::string BackwardModifierVariantNames(uint8_t set);
// "naive, flash": the variants that apply every modifier in `set`.
std::string ModifierVariantNames(uint8_t set);
// "naive, flash, auto": the variants that read a paged K/V cache.
std::string PagedVariantNames();

// The memory budget a variant's declared workspace is checked against:
// ATTNLAB_MEMORY_BUDGET (bytes, or with a K/M/G suffix) if set, else
// kDefaultBudgetFraction of physical memory.
inline constexpr double kDefaultBudgetFraction = 0.5;
size_t DefaultMemoryBudgetBytes();

// Most threads a caller may ask for (more is refused as InvalidArgument, not
// handed to OpenMP, which would try to create them all).
inline constexpr int kMaxThreads = 1024;

// Threads. Run may be called from any thread, concurrently, on distinct
// outputs: from std::threads, from inside an application's OpenMP parallel
// region, from a thread pool. `threads` is the team Run asks OpenMP for
// (0: omp_get_max_threads()). Inside an active OpenMP parallel region Run
// forms a nested team only when OpenMP allows one more active level
// (omp_get_max_active_levels() > omp_get_active_level(), e.g.
// OMP_MAX_ACTIVE_LEVELS=2 or omp_set_max_active_levels(2)); otherwise it
// runs on the calling thread alone, whatever `threads` asks, and
// RunStats::threads says 1. Results do not depend on which: every variant
// agrees with itself across thread counts within the derived error bound
// (tests/concurrency_test.cc runs every variant from std::threads and from
// OpenMP regions, nesting on and off).
struct RunOptions {
  int threads = 0;                            // 0: omp_get_max_threads(); else 1..kMaxThreads
  std::optional<size_t> memory_budget_bytes;  // default DefaultMemoryBudgetBytes()
  // Time each thread's work items in the Run's multi-threaded loops into
  // RunStats::thread_times (two clock reads per item: under 0.1% of flash's
  // items, a few per cent of naive's rows at small N).
  bool time_threads = false;
  // Read the core's clock after work items into RunStats::core_ghz
  // (kernels/core_clock.h: about 3 µs, at most once per 5 ms of a thread's
  // time).
  bool probe_clock = false;
};

// RunOptions with only `threads` set (designated initializers of a struct
// with defaulted members warn under -Wextra in gcc 12).
inline RunOptions OnThreads(int threads) {
  RunOptions options;
  options.threads = threads;
  return options;
}

struct RunStats {
  size_t workspace_declared_bytes = 0;
  size_t workspace_peak_bytes = 0;  // measured by the counting allocator
  int threads = 0;
  // The instruction-set path that ran: the Highway target ("AVX3", "AVX2",
  // ...), "+AMX_BF16" when bf16 tiles ran on AMX, "+AVX512_BF16" when on
  // VDPBF16PS, or "portable C++" (naive). Benchmarks and reports print it
  // beside every figure.
  std::string path;
  // With RunOptions::time_threads: where the threads' time went
  // (kernels/thread_times.h); empty otherwise.
  ThreadTimes thread_times;
  // With RunOptions::probe_clock: the clock readings (GHz) taken after the
  // Run's work items, on whichever threads ran them; empty otherwise, and
  // when no thread's 5 ms since its last reading ended in this Run.
  std::vector<double> core_ghz;
};

// ATTNLAB_PORTABLE=1 (read at every Run): variants take no ISA-specific
// micro-kernel (those outside Highway: kernels/ukernels/bf16_avx512.h), only
// the Highway ones every target has, so tests and benchmarks reach the
// portable path (reduced types converted to fp32) on any CPU.
bool PortablePathForced();
// ATTNLAB_NO_AMX=1 (read at every Run): flash's bf16 tiles take VDPBF16PS
// (kernels/ukernels/bf16_avx512.h) instead of AMX (bf16_amx.h) on a CPU
// that has both, so both paths can be tested and compared on one machine.
bool AmxForbidden();
// The best Highway target this CPU runs among those compiled in: the one
// HWY_DYNAMIC_DISPATCH picks ("AVX3", "AVX2", "SSE4", "EMU128", ...).
std::string DispatchedHighwayTarget();
// ATTNLAB_HWY_TARGET=<name> (e.g. AVX2): dispatch no target better than
// that one, so an AVX2 or SSE4 path can be run and measured on an AVX-512
// machine (hwy::DisableTargets, process-wide, also for what the caller
// dispatches itself, e.g. the bench's FMA ceiling). Applied once, at the
// first Run or DispatchedHighwayTarget, or when called; an unknown or
// unsupported name is ignored with one line on stderr naming the choices.
void ApplyHighwayTargetLimit();

// Validate + support + budget. OK when `variant` can run `problem`.
StatusOr<ValidProblem> Prepare(const Variant& variant, const Problem& problem,
                               const RunOptions& options = {});
// Prepare, then run. `stats` (optional) receives declared and measured
// workspace.
Status Run(const Variant& variant, const Problem& problem, const RunOptions& options = {},
           RunStats* stats = nullptr);
// Run by name; NotFound lists the known names.
Status Run(std::string_view variant, const Problem& problem, const RunOptions& options = {},
           RunStats* stats = nullptr);

// Packed sequences (Mask::sequences): Run and RunBackward run each sequence
// as a problem of its own (SequenceProblem). A sequence of at least 2^24
// FLOPs per thread (2·H·Lq_s·Lk_s·(dk + dv)) runs alone on all the threads,
// one after another in sequence order; the smaller ones run together on one
// thread each, largest first, in one parallel region (a batch of many short
// sequences pays one fork-join, not one each). The threads sequence s runs
// on, as the bits of its result depend on them (a deterministic variant's
// packed result is bit for bit the sequence's run alone on these threads);
// the packed workspace (RunStats, the budget) is the larger of the largest
// alone sequence's and the sum of the shared ones that can run at once.
int SequenceThreads(const Problem& packed, int64_t s, const RunOptions& options = {});

// The backward pass: ValidateGrad, then the variant must have a backward,
// then its declared workspace against the memory budget (ResourceExhausted,
// before anything is allocated). Unimplemented names a variant without one.
StatusOr<ValidGradProblem> PrepareBackward(const Variant& variant, const GradProblem& problem,
                                           const RunOptions& options = {});
// PrepareBackward, then run: writes dQ, dK, dV. Same threads, stats and
// determinism rules as Run (a deterministic variant's gradients are bitwise
// identical run to run at a fixed thread count).
Status RunBackward(const Variant& variant, const GradProblem& problem,
                   const RunOptions& options = {}, RunStats* stats = nullptr);
Status RunBackward(std::string_view variant, const GradProblem& problem,
                   const RunOptions& options = {}, RunStats* stats = nullptr);

// The team size Run uses for `threads` (RunOptions::threads) when called
// from here: 1 inside a parallel region where OpenMP will not nest.
int ResolveThreads(int threads);

}  // namespace attn

#endif  // ATTNLAB_KERNELS_REGISTRY_H_
