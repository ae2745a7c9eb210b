// Accuracy run. For each variant, N = Lq = Lk = 128..max_n (powers of two),
// d = 64 and 128, and each mask kind, the variant runs the whole problem
// (B = H = Hkv = 1, inputs uniform in [-1, 1), testing/problem_data.h's
// ProblemData) and its output rows are compared against the fp64 reference.
// Reduced precision: also each element-type combination of the precision
// benchmarks (PrecisionDTypes(): bf16, f16, f32-bf16-bf16-f32, f32-i8-i8-f32,
// bf16-i8-i8-bf16) the variant takes, at N = 128, 1024, 4096, 16384 (up to
// max_n), d = 64 and 128, masks none and causal: the masks that change how
// many keys a row sums, which is what the reduced types' error grows with;
// the other masks are type-independent code paths the f32 results cover.
// Each type stores the same fp32 values as the f32 case (rounded or
// quantized), the reference reads the stored inputs exactly, and the bound
// has the types' terms (reference/error_bound.h).
//
// Rows checked: every row when N <= 1024; above, 512 rows spaced evenly from
// the first to the last (deterministic), because the reference is O(N²·d)
// scalar double and would take minutes per case at N = 16384. Each checked
// row i is re-posed as a one-query problem with the same K, V and mask
// semantics (causal/window: the keys up to i; additive: mask row i; key
// lengths: the same length), which the reference solves exactly; the kernel's
// row comes from the full-size run, so long-sequence effects (tiling, online
// softmax over many tiles) are what is measured.
//
// Gradients: for each variant with a backward, N = 128..grad_max_n, d = 64
// and 128, each mask kind, the variant's forward then its backward on the
// whole problem (a random dO), dQ, dK and dV against reference::Backward
// within reference::GradErrorBounds (testing::CompareGradients, as the
// tests). Every row is checked: dK and dV sum over all query rows, so a row
// cannot be re-posed alone. Results carry "pass": "backward"; the reference
// and its bounds are computed once per shape for all variants.
//
// Per result: max_abs_error (over O), max_rel_error (normwise per row:
// max_d |err| / max_d |want|, the largest over rows; elementwise relative
// error is meaningless for outputs near 0), bound_ratio (max over elements of
// |err| / ErrorBound(...).o: < 1 passes), ok. Each row is compared by
// testing::CompareRow, the comparison of the tests and `attnlab check`.
//
// The file is rewritten (whole, then renamed over the old one) after every result, so an
// interrupted run keeps what it finished; --resume=FILE keeps FILE's results and runs the
// missing ones (bench/README.md, "Interruption and resume").
#include "bench/accuracy.h"

#include <omp.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>

#include "bench/bench_common.h"
#include "bench/resume.h"
#include "kernels/registry.h"
#include "reference/error_bound.h"
#include "reference/reference.h"
#include "testing/compare.h"
#include "testing/grad_data.h"
#include "testing/problem_data.h"

namespace attn::bench {

Problem RowProblem(const Problem& p, int64_t i, float* out) {
  const Shape& s = p.shape;
  const int64_t off = s.kv_len - s.q_len;
  Problem r;
  r.shape = s;
  r.shape.q_len = 1;
  r.q = {ValidProblem::Row(p.q, 0, 0, i), p.q.strides, p.q.dtype};
  r.k = p.k;
  r.v = p.v;
  r.k_scales = p.k_scales;
  r.v_scales = p.v_scales;
  r.o = {out, Strides::BHLD(1, 1, s.value_dim), p.o.dtype};  // the bound has O's rounding
  r.scale = p.scale;
  r.mask = p.mask;
  // With one query the diagonal sits at Lk' - 1: cut the keys at the row's
  // last visible key and express a window by its left extent only.
  const int64_t diag = i + off;
  if (p.mask.kind == MaskKind::kCausal) {
    r.shape.kv_len = std::clamp<int64_t>(diag + 1, 0, s.kv_len);
  } else if (p.mask.kind == MaskKind::kSlidingWindow) {
    const int64_t begin = std::max<int64_t>(0, diag - p.mask.window_left);
    const int64_t end = std::min<int64_t>(s.kv_len, diag + p.mask.window_right + 1);
    r.shape.kv_len = std::max<int64_t>(0, std::max(end, begin) == begin ? 0 : end);
    r.mask.window_left = end > begin ? end - 1 - begin : 0;
    r.mask.window_right = 0;
  }
  if (p.mask.kind == MaskKind::kAdditive) {
    r.mask.additive = p.mask.additive.subspan(i * s.kv_len, s.kv_len);
    r.mask.additive_shape = {1, 1, 1, s.kv_len};
  }
  if (p.mask.key_lengths) {
    // Equal to the full problem's length unless the causal cut is shorter.
    r.mask.key_lengths = p.mask.key_lengths;
    if (r.shape.kv_len < (*p.mask.key_lengths)[0]) r.mask.key_lengths.reset();
  }
  return r;
}

namespace {

struct MaskCase {
  const char* name;  // contract: none|causal|window|additive|key_lengths
  MaskKind kind;
  bool key_lengths;
};
constexpr MaskCase kMasks[] = {
    {"none", MaskKind::kNone, false},
    {"causal", MaskKind::kCausal, false},
    {"window", MaskKind::kSlidingWindow, false},
    {"additive", MaskKind::kAdditive, false},
    {"key_lengths", MaskKind::kNone, true},
};

int64_t WindowLeft(int64_t n) { return std::min<int64_t>(1024, n / 4); }

struct RowResult {
  double max_abs = 0, max_rel = 0, bound_ratio = 0;
  bool ok = true;
};

// Row i of the kernel's O against the reference of the row re-posed as a
// one-query problem (its row 0, its bound), over O only.
RowResult CheckRows(const testing::ProblemData& data, const std::vector<int64_t>& rows) {
  const Problem& p = data.problem();
  const int64_t dv = p.shape.value_dim;
  RowResult res;
  std::vector<float> scratch(dv);
  for (int64_t i : rows) {
    const Problem r = RowProblem(p, i, scratch.data());
    auto want = reference::Attention(r);
    if (!want.ok()) {
      std::fprintf(stderr, "reference failed: %s\n", want.status().ToString().c_str());
      res.ok = false;
      continue;
    }
    testing::Comparison c;
    testing::CompareRow(p, 0, 0, i, *want, 0, testing::ErrorBound(r, 0, 0, 0), c,
                        {.o = true, .lse = false, .weights = false});
    res.ok = res.ok && c.ok;
    res.max_abs = std::max(res.max_abs, c.max_abs_error);
    res.bound_ratio = std::max(res.bound_ratio, c.worst_bound_ratio);
    // The comparison keeps finite errors; a NaN or inf in the row makes them infinite.
    const char* got = static_cast<const char*>(ValidProblem::Row(p.o, 0, 0, i));
    for (int64_t d = 0; d < dv; ++d) {
      if (!std::isfinite(LoadElement(p.o.dtype, got + d * DTypeBytes(p.o.dtype)))) {
        res.max_abs = res.bound_ratio = INFINITY;
      }
    }
    double row_max = 0;
    for (int64_t d = 0; d < dv; ++d) row_max = std::max(row_max, std::fabs(want->o[d]));
    if (row_max > 0) res.max_rel = std::max(res.max_rel, c.max_abs_error / row_max);
  }
  return res;
}

std::vector<int64_t> RowsToCheck(int64_t n) {
  std::vector<int64_t> rows;
  if (n <= 1024) {
    for (int64_t i = 0; i < n; ++i) rows.push_back(i);
  } else {
    constexpr int64_t kRows = 512;
    for (int64_t k = 0; k < kRows; ++k) rows.push_back(k * (n - 1) / (kRows - 1));
  }
  return rows;
}

// "flash/N:1024/d:64/causal", "flash/N:1024/d:128/none/dtype:bf16": a result's name on
// stderr, and its key when resuming. `dtype`: the value of the bench's dtype token ("" = f32).
std::string ResultName(const std::string& variant, int64_t n, int64_t d, const std::string& mask,
                       const std::string& dtype) {
  return variant + "/N:" + std::to_string(n) + "/d:" + std::to_string(d) + "/" + mask +
         (dtype.empty() ? "" : "/dtype:" + dtype);
}

// The JSON's "dtype" value: the bench's name token without "dtype:" ("" for f32).
std::string DTypeValue(const DTypes& dtypes) {
  const std::string token = DTypeToken(dtypes);
  return token.empty() ? "" : token.substr(token.find(':') + 1);
}

struct AccuracyCase {
  const Variant* variant;
  int64_t n, d;
  const MaskCase* mask;
  DTypes dtypes = {};     // all f32 by default
  bool backward = false;  // the gradients (RunGradCase) instead of O
  std::string Name() const {
    return (backward ? "grad/" : "") +
           ResultName(variant->name, n, d, mask->name, DTypeValue(dtypes));
  }
};

std::string NameOf(const nlohmann::ordered_json& result) {
  return (result.value("pass", "") == "backward" ? "grad/" : "") +
         ResultName(result.value("variant", ""), result.value("N", int64_t{0}),
                    result.value("d", int64_t{0}), result.value("mask", ""),
                    result.value("dtype", ""));
}

// A result that did not run: "over budget: ..." or "not run: ..." (docs/bench-json.md),
// also on stderr.
nlohmann::ordered_json NotRun(nlohmann::ordered_json entry, const std::string& name,
                              const Status& status) {
  entry["error"] =
      (status.code() == StatusCode::kResourceExhausted ? "over budget: " : "not run: ") +
      status.message();
  std::fprintf(stderr, "%s: %s\n", name.c_str(), entry["error"].get<std::string>().c_str());
  return entry;
}

// The problem of a result: B = H = Hkv = 1, Lq = Lk = N, the mask's kind
// (a window of WindowLeft(N) keys; key lengths cutting a third), inputs
// seeded by shape and mask so every variant and element type sees the same
// values.
testing::ProblemSpec SpecOf(const AccuracyCase& c) {
  testing::ProblemSpec spec;
  spec.shape = {1, 1, 1, c.n, c.n, c.d, c.d};
  spec.mask = c.mask->kind;
  spec.window_left = WindowLeft(c.n);
  if (c.mask->key_lengths) spec.key_lengths = {int32_t(c.n - c.n / 3)};
  spec.dtypes = c.dtypes;
  spec.seed = SeedFrom("accuracy/N:" + std::to_string(c.n) + "/d:" + std::to_string(c.d) + "/" +
                       c.mask->name);
  return spec;
}

// The reference gradients of a shape and their bounds, kept while the
// variants of that shape run.
struct GradWant {
  std::string key;
  std::optional<reference::GradResult> want;
  reference::GradBounds bounds;
};

// One backward result: the variant's forward, then its backward, all of dQ,
// dK, dV against the reference.
nlohmann::ordered_json RunGradCase(const AccuracyCase& c, const RunOptions& run_options,
                                   GradWant& cache) {
  const std::string name = c.Name();
  nlohmann::ordered_json entry = {{"variant", c.variant->name},
                                  {"pass", "backward"},
                                  {"N", c.n},
                                  {"d", c.d},
                                  {"mask", c.mask->name}};
  const auto start = std::chrono::steady_clock::now();
  testing::ProblemData data(SpecOf(c));
  testing::GradData grads(data);
  Status status = testing::RunForwardForGrad(data, c.variant->name);
  grads.Poison();
  if (status.ok()) status = RunBackward(*c.variant, grads.grad_problem(), run_options);
  if (!status.ok()) {
    return NotRun(std::move(entry), name, status);
  }
  const GradProblem g = grads.grad_problem();
  const std::string key = ResultName("", c.n, c.d, c.mask->name, "");
  if (cache.key != key) {
    cache.want.reset();
    auto want = reference::Backward(g);
    if (want.ok()) {
      cache.bounds = reference::GradErrorBounds(g, *want);
      cache.want = std::move(*want);
    }
    cache.key = key;
  }
  if (!cache.want) {
    entry["error"] = "not run: the reference failed";
    return entry;
  }
  const testing::Comparison cmp = testing::CompareGradients(g, *cache.want, cache.bounds);
  entry["max_abs_error"] = cmp.max_abs_error;
  entry["max_rel_error"] = cmp.max_rel_error;
  entry["bound_ratio"] = cmp.worst_bound_ratio;
  entry["rows_checked"] = c.n;
  entry["ok"] = cmp.ok;
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "%s: max_abs %.3g bound_ratio %.3g%s%s (%.1f s)\n", name.c_str(),
               cmp.max_abs_error, cmp.worst_bound_ratio,
               cmp.ok ? "" : " FAILED: ", cmp.ok ? "" : cmp.first_failure.c_str(), secs);
  return entry;
}

// One result: the variant on the whole problem, its rows against the reference.
nlohmann::ordered_json RunCase(const AccuracyCase& c, const RunOptions& run_options) {
  const std::string name = c.Name();
  // Same inputs for every variant (and, rounded or quantized, every element type).
  const testing::ProblemSpec spec = SpecOf(c);
  nlohmann::ordered_json entry = {
      {"variant", c.variant->name}, {"N", c.n}, {"d", c.d}, {"mask", c.mask->name}};
  if (const std::string dtype = DTypeValue(c.dtypes); !dtype.empty()) entry["dtype"] = dtype;
  const auto start = std::chrono::steady_clock::now();
  testing::ProblemData data(spec);
  const Status status = Run(*c.variant, data.problem(), run_options);
  if (!status.ok()) {
    return NotRun(std::move(entry), name, status);
  }
  const std::vector<int64_t> rows = RowsToCheck(c.n);
  const RowResult r = CheckRows(data, rows);
  entry["max_abs_error"] = r.max_abs;
  entry["max_rel_error"] = r.max_rel;
  entry["bound_ratio"] = r.bound_ratio;
  entry["rows_checked"] = int64_t(rows.size());
  entry["ok"] = r.ok;
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "%s: max_abs %.3g max_rel %.3g bound_ratio %.3g%s (%.1f s)\n", name.c_str(),
               r.max_abs, r.max_rel, r.bound_ratio, r.ok ? "" : " FAILED", secs);
  return entry;
}

// --resume: FILE's document into `doc` (left null when FILE is empty). False when FILE cannot be
// continued (said on stderr).
bool ReadToResume(const AccuracyOptions& options, const std::map<std::string, std::string>& now,
                  nlohmann::ordered_json* doc, std::string* forced) {
  const char* out = options.out.c_str();
  // The file is written whole each time (WriteFileAtomically), so it is never cut short.
  std::ifstream in(options.out);
  if (!in) {
    std::fprintf(stderr, "attnlab_bench: --resume=%s: cannot open it\n", out);
    return false;
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (text.str().find_first_not_of(" \t\r\n") == std::string::npos) return true;
  *doc = nlohmann::ordered_json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (!doc->is_object() || !(*doc)["context"].is_object() || !(*doc)["results"].is_array()) {
    std::fprintf(stderr, "attnlab_bench: --resume=%s: not an accuracy JSON\n", out);
    return false;
  }
  return MayResume(options.out, (*doc)["context"], now, options.resume_force, forced);
}

nlohmann::ordered_json NewDocument(const AccuracyOptions& options,
                                   const std::map<std::string, std::string>& now) {
  nlohmann::ordered_json context;
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  context["host_name"] = host;
  context["date"] = UtcNow();
  for (const auto& [k, v] : now) context[k] = v;
  context["attnlab_accuracy_rows"] =
      "all rows for N <= 1024, else 512 evenly spaced rows (first to last)";
  context["attnlab_rel_error"] = "normwise per row: max_d |err| / max_d |want|";
  context["attnlab_args"] = options.args;
  return {{"context", context}, {"results", nlohmann::ordered_json::array()}};
}

}  // namespace

int RunAccuracy(const AccuracyOptions& options) {
  using Json = nlohmann::ordered_json;
  const std::map<std::string, std::string> now =
      ContextStrings(std::to_string(options.threads), "accuracy", options.memory_budget);
  const char* out = options.out.c_str();
  Json doc;
  std::string forced;  // what --resume_force let through
  if (options.resume && !ReadToResume(options, now, &doc, &forced)) return 2;
  if (doc.is_null()) doc = NewDocument(options, now);
  Json& results = doc["results"];

  std::vector<AccuracyCase> plan;
  for (const Variant* v : Registry()) {
    if (!options.forward) break;
    for (int64_t n = 128; n <= options.max_n; n *= 2) {
      for (int64_t d : {64, 128}) {
        for (const MaskCase& m : kMasks) plan.push_back({v, n, d, &m});
      }
    }
    // Four lengths, not every power of two: the reduced types multiply the
    // cases by five, and the bound's sqrt(N) growth shows at these four.
    for (const DTypes& t : PrecisionDTypes()) {
      if (AllF32(t) || !Takes(*v, t)) continue;
      for (int64_t n : {128, 1024, 4096, 16384}) {
        if (n > options.max_n) continue;
        for (int64_t d : {64, 128}) {
          for (const MaskCase* m : {&kMasks[0], &kMasks[1]}) plan.push_back({v, n, d, m, t});
        }
      }
    }
  }
  // Gradients: shape by shape, every variant with a backward, so the
  // reference backward (the run's most expensive part) is made once per
  // shape (GradWant).
  for (int64_t n = 128; options.backward && n <= std::min(options.max_n, options.grad_max_n);
       n *= 2) {
    for (int64_t d : {64, 128}) {
      for (const MaskCase& m : kMasks) {
        for (const Variant* v : Registry()) {
          if (v->has_backward()) plan.push_back({v, n, d, &m, {}, /*backward=*/true});
        }
      }
    }
  }
  std::set<std::string> done;
  for (const Json& r : results) done.insert(NameOf(r));
  size_t missing = 0;
  for (const AccuracyCase& c : plan) missing += done.count(c.Name()) == 0;
  if (options.resume) {
    std::fprintf(stderr, "attnlab_bench: resuming %s: %zu of %zu results already there%s\n", out,
                 plan.size() - missing, plan.size(), missing == 0 ? "; nothing to run" : "");
    if (missing > 0) {
      NoteResumedRun(doc["context"], "ran the missing " + std::to_string(missing) + " of " +
                                         std::to_string(plan.size()) + " results" + forced);
    }
  }

  const RunOptions run_options{options.threads, options.memory_budget};
  size_t ran = 0;
  GradWant grad_want;
  for (const AccuracyCase& c : plan) {
    if (done.count(c.Name()) > 0) continue;
    if (InterruptSignal() != 0) break;
    results.push_back(c.backward ? RunGradCase(c, run_options, grad_want)
                                 : RunCase(c, run_options));
    ++ran;
    // Written after every result: an interruption, even SIGKILL, loses at most the running one.
    if (!WriteFileAtomically(options.out, doc.dump(2) + "\n")) {
      std::fprintf(stderr, "attnlab_bench: cannot write %s: %s\n", out, std::strerror(errno));
      return 1;
    }
  }
  if (const int sig = InterruptSignal(); sig != 0) {
    std::fprintf(stderr,
                 "attnlab_bench: interrupted by %s: %s holds %zu of %zu results. Resume: "
                 "attnlab_bench --resume=%s\n",
                 SignalName(sig), out, plan.size() - missing + ran, plan.size(), out);
    return 128 + sig;
  }
  bool all_ok = true;
  for (const Json& r : results) all_ok = all_ok && r.value("ok", true);
  if (ran > 0) {
    std::fprintf(stderr, "wrote %s (%zu results)%s\n", out, results.size(),
                 all_ok ? "" : "; some variants exceeded the error bound");
  }
  return all_ok ? 0 : 1;
}

}  // namespace attn::bench
