// auto: runs, for each problem, the variant the machine's tuning measured
// fastest at the nearest point (kernels/tuning.h, AutoChoice).
//
// Why a chooser at all: flash is the fastest variant from N = 512 up on every
// shape the default suite sweeps, but below that the materializing `simd`
// variant (one packed Q·Kᵀ, one softmax pass, one P·V per head, no online
// rescaling) can be a few per cent faster, and on another CPU the crossover
// moves. Users of other libraries' flash kernels report them 2-5x slower
// than plain attention on some CPUs (llama.cpp#27086); a chooser fed by
// measurements on this machine cannot be worse than what it measured.
//
// Memory traffic, working set and block sizes are those of the variant it
// picks; it never picks one whose workspace exceeds kAutoMaxWorkspaceBytes
// (256 MiB), and never one that materializes Lq x Lk scores beyond the
// measured range of N, so its memory stays flash's for long sequences.
// RunStats::path names the pick: "simd, AVX3".
#include <cmath>
#include <limits>
#include <tuple>

#include "kernels/registry.h"
#include "kernels/tuning.h"

namespace attn {

extern const Variant flash_variant;

namespace {

double LogDistance(double a, double b) { return std::abs(std::log2(a / b)); }

bool StructurallyMasked(const ValidProblem& p) {
  return p.mask.kind == MaskKind::kCausal || p.mask.kind == MaskKind::kSlidingWindow;
}

}  // namespace

const Variant& AutoChoice(const ValidProblem& p, int threads, const Tuning& tuning) {
  const Shape& s = p.shape;
  if (!p.AllF32() || s.q_len != s.kv_len || s.q_len == 0) return flash_variant;
  const bool causal = StructurallyMasked(p);
  // Nearest point: head dim first, then thread count, then N (log scale);
  // ties go to the first point in the file.
  const AutoPoint* best = nullptr;
  auto key = [&](const AutoPoint& a) {
    return std::make_tuple(LogDistance(double(a.head_dim), double(s.head_dim)),
                           LogDistance(a.threads, std::max(threads, 1)),
                           LogDistance(double(a.n), double(s.q_len)));
  };
  for (const AutoPoint& a : tuning.auto_points) {
    if (a.causal != causal) continue;
    if (best == nullptr || key(a) < key(*best)) best = &a;
  }
  if (best == nullptr) return flash_variant;
  // Inside the measured range of N at that head dim and thread count.
  int64_t max_n = 0;
  for (const AutoPoint& a : tuning.auto_points) {
    if (a.causal == causal && a.head_dim == best->head_dim && a.threads == best->threads) {
      max_n = std::max(max_n, a.n);
    }
  }
  if (s.q_len > max_n) return flash_variant;
  const Variant* pick = FindVariant(best->variant);
  if (pick == nullptr || pick == &flash_variant || !Takes(*pick, p.dtypes()) ||
      (ModifiersOf(p.modifiers) & ~pick->modifiers) || (p.kv_pages && !pick->paged_kv)) {
    return flash_variant;  // flash takes every type, modifier and paged K/V
  }
  if (pick->workspace_bytes(p, threads) > kAutoMaxWorkspaceBytes) return flash_variant;
  return *pick;
}

namespace {

Status RunAuto(const ValidProblem& p, ExecContext& ctx) {
  const Variant& pick = AutoChoice(p, ctx.threads, ActiveTuning());
  if (!pick.uses_highway) ctx.path = "portable C++";
  const Status status = pick.run(p, ctx);
  ctx.path = std::string(pick.name) + ", " + ctx.path;
  return status;
}

size_t AutoWorkspaceBytes(const ValidProblem& p, int threads) {
  return AutoChoice(p, threads, ActiveTuning()).workspace_bytes(p, threads);
}

}  // namespace

extern const Variant auto_variant = {
    .name = "auto",
    .summary =
        "runs the variant this machine's tuning measured fastest at the nearest shape "
        "(attnlab tune); flash beyond the measured sizes and for reduced types",
    .run = RunAuto,
    .workspace_bytes = AutoWorkspaceBytes,
    .supports_weights = false,
    .materializes_scores = false,
    .uses_highway = true,
    .deterministic = true,  // every variant it may pick is
    .dtypes = {.q = kFloatDTypes, .kv = kAllDTypes, .o = kFloatDTypes},
    .modifiers = kAllModifiers,
    .paged_kv = true,
    .backward = {},  // none
};

}  // namespace attn
