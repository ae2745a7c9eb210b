#include "kernels/registry.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "hwy/targets.h"
#include "kernels/internal/bytes.h"
#include "kernels/internal/parallel.h"
#include "kernels/ukernels/ukernels.h"

namespace attn {

#define ATTN_VARIANT(name) extern const Variant name##_variant;
#include "kernels/variants.inc"
#undef ATTN_VARIANT

std::span<const Variant* const> Registry() {
  static const Variant* const kVariants[] = {
#define ATTN_VARIANT(name) &name##_variant,
#include "kernels/variants.inc"
#undef ATTN_VARIANT
  };
  return kVariants;
}

const Variant* FindVariant(std::string_view name) {
  for (const Variant* v : Registry()) {
    if (name == v->name) return v;
  }
  return nullptr;
}

std::string VariantNames() {
  std::string names;
  for (const Variant* v : Registry()) {
    if (!names.empty()) names += ", ";
    names += v->name;
  }
  return names;
}

namespace {

// "naive, flash": the variants `keep` accepts, in registry order ("none").
template <typename Keep>
std::string NamesWhere(Keep keep) {
  std::string names;
  for (const Variant* v : Registry()) {
    if (!keep(*v)) continue;
    if (!names.empty()) names += ", ";
    names += v->name;
  }
  return names.empty() ? "none" : names;
}

}  // namespace

std::string BackwardVariantNames() {
  return NamesWhere([](const Variant& v) { return v.has_backward(); });
}

std::string BackwardModifierVariantNames(uint8_t set) {
  return NamesWhere(
      [set](const Variant& v) { return v.has_backward() && (v.backward.modifiers & set) == set; });
}

std::string ModifierVariantNames(uint8_t set) {
  return NamesWhere([set](const Variant& v) { return (v.modifiers & set) == set; });
}

std::string PagedVariantNames() {
  return NamesWhere([](const Variant& v) { return v.paged_kv; });
}

size_t DefaultMemoryBudgetBytes() {
  if (const char* env = std::getenv("ATTNLAB_MEMORY_BUDGET")) {
    if (auto bytes = ParseBytes(env)) return *bytes;
    // Once per process, not once per Run (a benchmark makes thousands).
    static std::atomic<bool> warned{false};
    if (!warned.exchange(true)) {
      std::fprintf(stderr,
                   "attnlab: ignoring ATTNLAB_MEMORY_BUDGET=%s: want a byte count below 2^64 "
                   "such as 4096, 512M or 12G; using half of physical memory\n",
                   env);
    }
  }
  const double physical =
      static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
  return static_cast<size_t>(physical * kDefaultBudgetFraction);
}

int ResolveThreads(int threads) {
  // A nested region OpenMP will not activate runs with a team of one: size
  // the scratch for that and report it (RunStats::threads).
  if (omp_get_active_level() >= omp_get_max_active_levels()) return 1;
  return threads > 0 ? threads : omp_get_max_threads();
}

std::string DescribeSupport(const Variant::DTypeSupport& support) {
  auto list = [](uint8_t mask) {
    std::string out;
    for (int t = 0; t < kNumDTypes; ++t) {
      if (mask & DTypeMask(DType(t)))
        out += (out.empty() ? "" : ", ") + std::string(DTypeName(DType(t)));
    }
    return out;
  };
  return "Q " + list(support.q) + "; K, V " + list(support.kv) + "; O " + list(support.o);
}

bool Takes(const Variant& variant, const DTypes& t) {
  const Variant::DTypeSupport& takes = variant.dtypes;
  return (takes.q & DTypeMask(t.q)) && (takes.kv & DTypeMask(t.k)) && (takes.kv & DTypeMask(t.v)) &&
         (takes.o & DTypeMask(t.o));
}

namespace {

Status CheckThreads(const RunOptions& options) {
  if (options.threads < 0 || options.threads > kMaxThreads) {
    return InvalidArgument("threads=" + std::to_string(options.threads) + " must be in [0, " +
                           std::to_string(kMaxThreads) + "] (0: all available)");
  }
  return Status::Ok();
}

// ResourceExhausted when `need` bytes exceed the budget.
Status CheckBudget(const Variant& variant, size_t need, bool scores, const Problem& problem,
                   const RunOptions& options) {
  const size_t budget = options.memory_budget_bytes.value_or(DefaultMemoryBudgetBytes());
  if (need <= budget) return Status::Ok();
  return ResourceExhausted(std::string(variant.name) + " needs " + FormatBytes(double(need)) +
                           (scores ? " of scores" : " of workspace") + ", budget " +
                           FormatBytes(double(budget)) + " (" +
                           Describe(problem.shape, problem.mask) + ")");
}

}  // namespace

StatusOr<ValidProblem> Prepare(const Variant& variant, const Problem& problem,
                               const RunOptions& options) {
  StatusOr<ValidProblem> valid = Validate(problem);
  if (!valid.ok()) return valid.status();
  const DTypes dtypes = valid->dtypes();
  if (!Takes(variant, dtypes)) {
    return Unimplemented("dtype: " + Describe(dtypes) + " is not supported by variant " +
                         variant.name + " (it takes " + DescribeSupport(variant.dtypes) + ")");
  }
  if (const uint8_t missing = ModifiersOf(problem.modifiers) & ~variant.modifiers) {
    return Unimplemented("score modifiers: variant " + std::string(variant.name) +
                         " does not apply " + ModifierNames(missing) +
                         " (variants that do: " + ModifierVariantNames(missing) + ")");
  }
  if (problem.kv_pages && !variant.paged_kv) {
    return Unimplemented("paged K/V: variant " + std::string(variant.name) +
                         " reads contiguous K and V only (variants that read a paged cache: " +
                         PagedVariantNames() + ")");
  }
  ATTN_RETURN_IF_ERROR(CheckThreads(options));
  if (!problem.weights.empty() && !variant.supports_weights) {
    return Unimplemented(std::string(variant.name) +
                         " does not materialize attention weights; use one that does");
  }
  // A packed problem's workspace is its largest sequence's: RunSequences
  // prepares each sequence before any runs.
  if (valid->mask.sequences) return valid;
  const int threads = ResolveThreads(options.threads);
  ATTN_RETURN_IF_ERROR(CheckBudget(variant, variant.workspace_bytes(*valid, threads),
                                   variant.materializes_scores, problem, options));
  return valid;
}

StatusOr<ValidGradProblem> PrepareBackward(const Variant& variant, const GradProblem& problem,
                                           const RunOptions& options) {
  StatusOr<ValidGradProblem> valid = ValidateGrad(problem);
  if (!valid.ok()) return valid.status();
  if (!variant.has_backward()) {
    return Unimplemented(std::string(variant.name) +
                         " has no backward pass; variants with one: " + BackwardVariantNames());
  }
  if (const uint8_t missing =
          ModifiersOf(problem.forward.modifiers) & ~variant.backward.modifiers) {
    return Unimplemented("score modifiers: the backward of " + std::string(variant.name) +
                         " does not apply " + ModifierNames(missing) +
                         " (backward variants that do: " + BackwardModifierVariantNames(missing) +
                         ")");
  }
  ATTN_RETURN_IF_ERROR(CheckThreads(options));
  if (valid->forward.mask.sequences) return valid;  // as in Prepare
  const int threads = ResolveThreads(options.threads);
  ATTN_RETURN_IF_ERROR(CheckBudget(variant, variant.backward.workspace_bytes(*valid, threads),
                                   variant.backward.materializes_scores, problem.forward, options));
  return valid;
}

namespace {
// An environment switch: set, not empty and not "0".
bool SwitchOn(const char* name) {
  const char* env = std::getenv(name);
  return env != nullptr && *env != '\0' && std::string_view(env) != "0";
}
}  // namespace

bool PortablePathForced() { return SwitchOn("ATTNLAB_PORTABLE"); }

bool AmxForbidden() { return SwitchOn("ATTNLAB_NO_AMX"); }

void ApplyHighwayTargetLimit() {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* env = std::getenv("ATTNLAB_HWY_TARGET");
    if (env == nullptr || *env == '\0') return;
    const int64_t available = hwy::SupportedTargets() & HWY_TARGETS;
    std::string names;
    for (int64_t bits = available; bits != 0; bits &= bits - 1) {
      const int64_t target = bits & -bits;
      if (std::string_view(env) == hwy::TargetName(target)) {
        hwy::DisableTargets(target - 1);  // every better (lower-bit) target
        return;
      }
      names += (names.empty() ? "" : ", ") + std::string(hwy::TargetName(target));
    }
    std::fprintf(stderr,
                 "attnlab: ignoring ATTNLAB_HWY_TARGET=%s: this CPU and build dispatch %s\n", env,
                 names.c_str());
  });
}

std::string DispatchedHighwayTarget() {
  ApplyHighwayTargetLimit();
  // Asked of dispatch itself (ukernels::DispatchedTarget): hwy::SupportedTargets()
  // took 30 us a Run on the KVM VMs (2-3% of a 1.5 ms decode).
  return hwy::TargetName(ukernels::DispatchedTarget());
}

namespace {

// The status of sequence s of a packed problem, saying which one it was.
Status InSequence(const Status& status, int64_t s) {
  return Status(status.code(), "sequence " + std::to_string(s) + ": " + status.message());
}

// How a packed problem's sequences share the threads. A sequence of at
// least kAloneFlopsPerThread FLOPs per thread runs alone on every thread
// (its kernel splits it: rows, key blocks, split-KV decode), one after the
// other in sequence order; the smaller ones run together, each on one
// thread, dealt largest first to a team of all the threads. A batch of many
// short sequences then pays one fork-join instead of one per sequence: on a
// busy machine each fork-join can cost a scheduler quantum (64 sequences of
// 32 tokens, 2 threads, another process on both cores: 760 ms packed
// against 16 ms for the same batch padded, before). With one thread every
// sequence runs alone, in order.
struct SequenceSchedule {
  int threads = 1;
  std::vector<int64_t> alone;   // in sequence order
  std::vector<int64_t> shared;  // largest first
};
// 2^24 FLOPs (~0.15 ms of one Zen 4 core's fp32 peak, a thousand times an
// idle fork-join) per thread.
inline constexpr double kAloneFlopsPerThread = double(1 << 24);

// 2·H·Lq_s·Lk_s·(dk + dv): sequence s's FLOPs with every key visible.
double SequenceFlops(const Problem& packed, int64_t s) {
  const PackedSequences& seq = *packed.mask.sequences;
  const double lq = seq.cu_seqlens_q[s + 1] - seq.cu_seqlens_q[s];
  const double lk = seq.cu_seqlens_k[s + 1] - seq.cu_seqlens_k[s];
  const Shape& shape = packed.shape;
  return 2.0 * double(shape.heads) * lq * lk * double(shape.head_dim + shape.value_dim);
}

bool RunsAlone(const Problem& packed, int64_t s, int threads) {
  return threads <= 1 || SequenceFlops(packed, s) >= kAloneFlopsPerThread * threads;
}

SequenceSchedule ScheduleSequences(const Problem& packed, int threads) {
  SequenceSchedule plan;
  plan.threads = threads;
  std::vector<std::pair<double, int64_t>> small;  // (FLOPs, sequence)
  for (int64_t x = 0; x < packed.mask.sequences->count(); ++x) {
    if (RunsAlone(packed, x, threads)) {
      plan.alone.push_back(x);
    } else {
      small.push_back({SequenceFlops(packed, x), x});
    }
  }
  std::stable_sort(small.begin(), small.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  for (const auto& [flops, x] : small) plan.shared.push_back(x);
  return plan;
}

// The options a sequence of the schedule runs with: the caller's, or one
// thread for a shared one.
RunOptions OneThread(RunOptions options) {
  options.threads = 1;
  return options;
}

// Bytes the shared sequences can hold at once: the `threads` largest of
// `bytes` (one per shared sequence) together.
size_t LargestTogether(std::vector<size_t> bytes, int threads) {
  std::sort(bytes.begin(), bytes.end(), std::greater<>());
  size_t sum = 0;
  for (size_t x = 0; x < bytes.size() && x < size_t(threads); ++x) sum += bytes[x];
  return sum;
}

// Prepares every sequence of `plan` before any runs: prepare_one(s, options)
// returns the sequence's declared workspace on those options' threads, or
// why it cannot run. The alone ones on the caller's options; the shared ones
// on one thread each, and the largest that can run at once together within
// the budget (check_together(bytes)).
template <typename PrepareOne, typename CheckTogether>
Status PrepareScheduled(const SequenceSchedule& plan, const RunOptions& options,
                        PrepareOne&& prepare_one, CheckTogether&& check_together) {
  for (int64_t s : plan.alone) {
    StatusOr<size_t> bytes = prepare_one(s, options);
    if (!bytes.ok()) return InSequence(bytes.status(), s);
  }
  std::vector<size_t> shared_bytes;
  for (int64_t s : plan.shared) {
    StatusOr<size_t> bytes = prepare_one(s, OneThread(options));
    if (!bytes.ok()) return InSequence(bytes.status(), s);
    shared_bytes.push_back(*bytes);
  }
  const Status together = check_together(LargestTogether(shared_bytes, plan.threads));
  if (together.ok()) return together;
  return Status(together.code(),
                "the small sequences that run together (one thread each): " + together.message());
}

// Runs run_one(s, options, &stats) for every sequence of `plan` (see
// SequenceSchedule) and returns the first failure in sequence order, saying
// which sequence it was. Stats: the workspace of the largest alone sequence
// or of the shared ones that can run together, whichever is more; the most
// threads any part ran on.
template <typename RunOne>
Status RunScheduled(const SequenceSchedule& plan, const RunOptions& options, RunStats* stats,
                    RunOne&& run_one) {
  RunStats total;
  for (int64_t s : plan.alone) {
    RunStats one;
    const Status status = run_one(s, options, &one);
    if (!status.ok()) return InSequence(status, s);
    total.workspace_declared_bytes =
        std::max(total.workspace_declared_bytes, one.workspace_declared_bytes);
    total.workspace_peak_bytes = std::max(total.workspace_peak_bytes, one.workspace_peak_bytes);
    total.threads = std::max(total.threads, one.threads);
    if (!one.path.empty()) total.path = one.path;
  }
  const size_t shared = plan.shared.size();
  std::vector<Status> status(shared);
  std::vector<RunStats> one(shared);
  ParallelFor(plan.threads, int64_t(shared),
              [&](int64_t x) { status[x] = run_one(plan.shared[x], OneThread(options), &one[x]); });
  int64_t first_failure = -1;  // the lowest failing sequence
  for (size_t x = 0; x < shared; ++x) {
    if (!status[x].ok() && (first_failure < 0 || plan.shared[x] < plan.shared[first_failure])) {
      first_failure = int64_t(x);
    }
  }
  if (first_failure >= 0) return InSequence(status[first_failure], plan.shared[first_failure]);
  if (stats == nullptr) return Status::Ok();
  std::vector<size_t> declared, peak;
  for (const RunStats& r : one) {
    declared.push_back(r.workspace_declared_bytes);
    peak.push_back(r.workspace_peak_bytes);
    if (!r.path.empty()) total.path = r.path;
  }
  const int team = int(std::min<size_t>(shared, size_t(plan.threads)));
  total.workspace_declared_bytes =
      std::max(total.workspace_declared_bytes, LargestTogether(declared, team));
  total.workspace_peak_bytes = std::max(total.workspace_peak_bytes, LargestTogether(peak, team));
  total.threads = std::max(total.threads, team);
  *stats = total;
  return Status::Ok();
}

// A packed problem (Mask::sequences) runs each sequence as a problem of its
// own (SequenceProblem), scheduled as SequenceSchedule says, so time follows
// the real tokens and no kernel sees a packed problem. Every sequence is
// prepared (supported, within the budget: the shared ones on one thread
// each and the largest that can run together, together) before the first
// one runs, so a refusal writes nothing. The packed lse [H, total_q] and
// weights [H, total_q, total_k] are not one contiguous piece per sequence:
// each sequence writes its own and they are copied into place.
Status RunSequences(const Variant& variant, const Problem& packed, const RunOptions& options,
                    RunStats* stats) {
  const SequenceSchedule plan = ScheduleSequences(packed, ResolveThreads(options.threads));
  ATTN_RETURN_IF_ERROR(PrepareScheduled(
      plan, options,
      [&](int64_t s, const RunOptions& one_options) -> StatusOr<size_t> {
        StatusOr<ValidProblem> one = Prepare(variant, SequenceProblem(packed, s), one_options);
        if (!one.ok()) return one.status();
        return variant.workspace_bytes(*one, ResolveThreads(one_options.threads));
      },
      [&](size_t bytes) {
        return CheckBudget(variant, bytes, variant.materializes_scores, packed, options);
      }));
  const int64_t H = packed.shape.heads, Lq = packed.shape.q_len, Lk = packed.shape.kv_len;
  std::fill(packed.weights.begin(), packed.weights.end(), 0.0f);
  auto run_one = [&](int64_t s, const RunOptions& one_options, RunStats* one_stats) {
    Problem one = SequenceProblem(packed, s);
    const int64_t lq = one.shape.q_len, lk = one.shape.kv_len;
    if (lq == 0) return Status::Ok();
    const int64_t q0 = packed.mask.sequences->cu_seqlens_q[s];
    const int64_t k0 = packed.mask.sequences->cu_seqlens_k[s];
    std::vector<float> lse(packed.lse.empty() ? 0 : H * lq);
    std::vector<float> weights(packed.weights.empty() ? 0 : H * lq * lk);
    one.lse = lse;
    one.weights = weights;
    const Status status = Run(variant, one, one_options, one_stats);
    if (!status.ok()) return status;
    for (int64_t h = 0; h < H && !lse.empty(); ++h) {
      std::copy_n(lse.data() + h * lq, lq, packed.lse.data() + h * Lq + q0);
    }
    for (int64_t r = 0; r < H * lq && !weights.empty(); ++r) {
      const int64_t h = r / lq, i = r % lq;
      std::copy_n(weights.data() + r * lk, lk, packed.weights.data() + (h * Lq + q0 + i) * Lk + k0);
    }
    return Status::Ok();
  };
  return RunScheduled(plan, options, stats, run_one);
}

// The same for the backward: each sequence's gradients are its own rows of
// dQ, dK and dV, with its rows of the forward's lse gathered for it. A
// sequence without queries still runs: its keys' dK and dV are 0.
Status RunSequencesBackward(const Variant& variant, const GradProblem& packed,
                            const RunOptions& options, RunStats* stats) {
  const SequenceSchedule plan = ScheduleSequences(packed.forward, ResolveThreads(options.threads));
  const int64_t H = packed.forward.shape.heads, Lq = packed.forward.shape.q_len;
  // Sequence s with its rows of lse, in `lse` (kept alive by the caller).
  auto sequence = [&](int64_t s, std::vector<float>& lse) {
    GradProblem one = SequenceGradProblem(packed, s);
    const int64_t lq = one.forward.shape.q_len;
    const int64_t q0 = packed.forward.mask.sequences->cu_seqlens_q[s];
    lse.resize(H * lq);
    for (int64_t h = 0; h < H; ++h) {
      std::copy_n(packed.forward.lse.data() + h * Lq + q0, lq, lse.data() + h * lq);
    }
    one.forward.lse = lse;
    return one;
  };
  ATTN_RETURN_IF_ERROR(PrepareScheduled(
      plan, options,
      [&](int64_t s, const RunOptions& one_options) -> StatusOr<size_t> {
        std::vector<float> lse;
        StatusOr<ValidGradProblem> one = PrepareBackward(variant, sequence(s, lse), one_options);
        if (!one.ok()) return one.status();
        return variant.backward.workspace_bytes(*one, ResolveThreads(one_options.threads));
      },
      [&](size_t bytes) {
        return CheckBudget(variant, bytes, variant.backward.materializes_scores, packed.forward,
                           options);
      }));
  ATTN_RETURN_IF_ERROR(RunScheduled(
      plan, options, stats, [&](int64_t s, const RunOptions& one_options, RunStats* one_stats) {
        std::vector<float> one_lse;
        return RunBackward(variant, sequence(s, one_lse), one_options, one_stats);
      }));
  // The sinks' gradient sums over every sequence's rows: once, packed.
  StatusOr<ValidGradProblem> valid = ValidateGrad(packed);
  if (!valid.ok()) return valid.status();
  SinkGradients(*valid);
  return Status::Ok();
}

}  // namespace

int SequenceThreads(const Problem& packed, int64_t s, const RunOptions& options) {
  const int threads = ResolveThreads(options.threads);
  return RunsAlone(packed, s, threads) ? threads : 1;
}

namespace {

// `run()`, with its threads' loops timed into stats->thread_times and the
// clock read after its items into stats->core_ghz when the options ask
// (RunOptions::time_threads, probe_clock).
template <typename RunFn>
Status TimingThreads(const RunOptions& options, RunStats* stats, RunFn run) {
  ThreadTimes times;
  ItemClocks clocks;
  const ScopedThreadTimes timed(options.time_threads && stats != nullptr ? &times : nullptr);
  const ScopedItemClocks probed(options.probe_clock && stats != nullptr ? &clocks : nullptr);
  const Status status = run();
  if (timed.owns()) stats->thread_times = std::move(times);
  if (probed.owns()) stats->core_ghz = clocks.Take();
  return status;
}

// What a Run says of itself (RunStats): its workspace, declared and
// measured, its team and its path.
void ReportRun(size_t declared_bytes, const Workspace& workspace, const ExecContext& ctx,
               RunStats* stats) {
  if (stats == nullptr) return;
  stats->workspace_declared_bytes = declared_bytes;
  stats->workspace_peak_bytes = workspace.peak_bytes();
  stats->threads = ctx.threads;
  stats->path = ctx.path;
}

Status RunValid(const Variant& variant, const Problem& problem, const ValidProblem& valid,
                const RunOptions& options, RunStats* stats) {
  if (valid.mask.sequences) return RunSequences(variant, problem, options, stats);
  ApplyHighwayTargetLimit();
  Workspace workspace;
  ExecContext ctx{ResolveThreads(options.threads), &workspace,
                  variant.uses_highway ? DispatchedHighwayTarget() : "portable C++"};
  const Status status = variant.run(valid, ctx);
  ReportRun(variant.workspace_bytes(valid, ctx.threads), workspace, ctx, stats);
  return status;
}

Status RunValidBackward(const Variant& variant, const GradProblem& problem,
                        const ValidGradProblem& valid, const RunOptions& options, RunStats* stats) {
  if (valid.forward.mask.sequences) {
    return RunSequencesBackward(variant, problem, options, stats);
  }
  ApplyHighwayTargetLimit();
  Workspace workspace;
  ExecContext ctx{ResolveThreads(options.threads), &workspace,
                  variant.uses_highway ? DispatchedHighwayTarget() : "portable C++"};
  const Status status = variant.backward.run(valid, ctx);
  if (status.ok()) SinkGradients(valid);
  ReportRun(variant.backward.workspace_bytes(valid, ctx.threads), workspace, ctx, stats);
  return status;
}

}  // namespace

Status Run(const Variant& variant, const Problem& problem, const RunOptions& options,
           RunStats* stats) {
  StatusOr<ValidProblem> valid = Prepare(variant, problem, options);
  if (!valid.ok()) return valid.status();
  return TimingThreads(options, stats,
                       [&] { return RunValid(variant, problem, *valid, options, stats); });
}

Status RunBackward(const Variant& variant, const GradProblem& problem, const RunOptions& options,
                   RunStats* stats) {
  StatusOr<ValidGradProblem> valid = PrepareBackward(variant, problem, options);
  if (!valid.ok()) return valid.status();
  return TimingThreads(options, stats,
                       [&] { return RunValidBackward(variant, problem, *valid, options, stats); });
}

Status RunBackward(std::string_view name, const GradProblem& problem, const RunOptions& options,
                   RunStats* stats) {
  const Variant* variant = FindVariant(name);
  if (variant == nullptr) {
    return NotFound("unknown variant '" + std::string(name) + "'; known: " + VariantNames());
  }
  return RunBackward(*variant, problem, options, stats);
}

Status Run(std::string_view name, const Problem& problem, const RunOptions& options,
           RunStats* stats) {
  const Variant* variant = FindVariant(name);
  if (variant == nullptr) {
    return NotFound("unknown variant '" + std::string(name) + "'; known: " + VariantNames());
  }
  return Run(*variant, problem, options, stats);
}

}  // namespace attn
