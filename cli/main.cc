// attnlab: the command-line front end.
//
//   attnlab list                      the registry
//   attnlab run     --variant V ...   one variant on .npy inputs, O (and lse) to .npy
//   attnlab check   ...               every variant against the fp64 reference
//   attnlab weights --variant V ...   attention weights: .npy, heatmap PNG, entropy table
//   attnlab grad    --variant V ...   the backward pass: dQ, dK, dV to .npy
//   attnlab bench   ...               runs attnlab_bench (Google Benchmark JSON)
//   attnlab report  RESULTS.json...   runs reports/generate.py
//
// Exit codes (docs/cli.md):
//   0  ok
//   1  a check failed (or every variant was skipped, so nothing was checked),
//      a kernel or a child process failed
//   2  bad usage or input (checked before any kernel runs)
//   3  could not write an output or a temporary file (the message names the
//      path and the OS's reason; a previous file at that path is unchanged),
//      or another file-system call failed; never an abort
// run, weights and grad check every output path before any kernel runs, and write
// each file atomically (cli/files.h).
#include <fmt/format.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string_view>

#include "cli/files.h"
#include "cli/inputs.h"
#include "cli/npy.h"
#include "cli/ring.h"
#include "cli/tune.h"
#include "kernels/internal/bytes.h"
#include "kernels/openblas_core.h"
#include "kernels/registry.h"
#include "reference/error_bound.h"
#include "reference/reference.h"
#include "testing/check.h"
#include "testing/compare.h"

namespace attn::cli {
namespace fs = std::filesystem;
namespace {

// `attnlab weights` refuses problems whose weights exceed this: the table and
// the heatmap are for looking at, not for production-size problems.
constexpr double kMaxWeightsBytes = 8.0 * 1024 * 1024;

// The options of InputOptions. `dtypes`: also the element-type options
// (--dtype ...; grad has none: the backward is fp32).
void AddInputOptions(CLI::App* cmd, InputOptions& in, bool dtypes = true) {
  cmd->add_option("--q", in.q,
                  "queries .npy: [B,H,Lq,dk] (bhsd), [B,Lq,H,dk] (bshd), "
                  "[H,Lq,dk] or [Lq,dk]")
      ->required();
  cmd->add_option("--k", in.k, "keys .npy, same rank; Hkv heads (GQA when Hkv < H)")->required();
  cmd->add_option("--v", in.v, "values .npy, same rank, [.., Lk, dv]")->required();
  cmd->add_option("--mask", in.mask, "none | causal | window:LEFT,RIGHT");
  cmd->add_option("--key-lengths", in.key_lengths, "int .npy [B]: keys >= length are padding");
  cmd->add_option("--cu-seqlens-q", in.cu_seqlens_q,
                  "int .npy [S+1]: packed variable-length sequences (B = 1, e.g. q [total_q,H,dk] "
                  "bshd); sequence s holds query positions [cu[s], cu[s+1])");
  cmd->add_option("--block-table", in.block_table,
                  "int .npy [B, blocks]: a paged K/V cache (vLLM's layout); --k and --v are then "
                  "the pools [num_blocks, Hkv, block_size, d] (bhsd), key j of sequence b is row "
                  "j % block_size of block table[b][j / block_size]; Lk = blocks·block_size, "
                  "--key-lengths the sequences' lengths");
  cmd->add_option("--cu-seqlens-k", in.cu_seqlens_k,
                  "int .npy [S+1]: the sequences' key positions (with --cu-seqlens-q)");
  cmd->add_option("--mask-file", in.mask_file, "additive float mask .npy [Lq,Lk] or [B,H,Lq,Lk]");
  cmd->add_option("--scale", in.scale, "softmax scale (default 1/sqrt(dk))");
  cmd->add_option("--layout", in.layout, "bhsd (default) or bshd");
  cmd->add_option("--threads", in.threads,
                  fmt::format("OpenMP threads, 1 to {} (default: every core)", kMaxThreads));
  cmd->add_option("--memory-budget", in.memory_budget,
                  "workspace budget, e.g. 512M (default: ATTNLAB_MEMORY_BUDGET or half of RAM)");
  CLI::Option* top_left =
      cmd->add_flag("--causal-top-left", in.causal_top_left,
                    "align the diagonal of --mask causal / window top-left (PyTorch's is_causal; "
                    "default bottom-right)");
  cmd->add_flag("--causal-at-key-lengths", in.causal_at_key_lengths,
                "align each batch's diagonal at its --key-lengths entry, off = length - Lq: the "
                "queries are the newest tokens of a KV cache (chunked prefill into a paged "
                "cache; FlashAttention's cache_seqlens)")
      ->excludes(top_left);
  cmd->add_option("--softcap", in.softcap, "logit softcap: s <- CAP·tanh(s / CAP) (Gemma 2)");
  cmd->add_option("--alibi", in.alibi,
                  "ALiBi slopes: float .npy [H], or 'standard' (2^(-8(h+1)/H)); bias "
                  "slope·(j - i - off)");
  cmd->add_option("--sinks", in.sinks,
                  "attention sinks: float .npy [H], one logit per query head in the "
                  "denominator (gpt-oss)");
  if (!dtypes) return;
  cmd->add_option("--dtype", in.dtype,
                  "element type of O and of the float32 inputs: f32 | bf16 | f16 (converted, "
                  "rounding to nearest even; inputs already f16, bf16 or int8 are used as they "
                  "are; default: each file's own type, O f32)");
  cmd->add_option("--q-dtype", in.q_dtype,
                  "element type of Q: f32 | bf16 | f16 (converts any float file; overrides "
                  "--dtype)");
  cmd->add_option("--kv-dtype", in.kv_dtype,
                  "element type of K and V: f32 | bf16 | f16 | i8 (i8: each row quantized with "
                  "its own fp32 scale, max|x|/127; overrides --dtype)");
  cmd->add_option("--out-dtype", in.out_dtype,
                  "element type of O: f32 | bf16 | f16 (overrides --dtype; default f32)");
  cmd->add_option("--k-scales", in.k_scales,
                  "row scales of an int8 ('|i1') K: float32 .npy, K's shape without d");
  cmd->add_option("--v-scales", in.v_scales,
                  "row scales of an int8 ('|i1') V: float32 .npy, V's shape without d");
}

std::string Yes(bool b) { return b ? "yes" : "no"; }

// fs::exists that cannot throw (an unreadable directory reads as "no").
bool Exists(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

// ---------------------------------------------------------------- list
int List() {
  fmt::print("{:<16} {:<8} {:<9} {:<8} {:<13} {:<8} {}\n", "variant", "weights", "scores",
             "highway", "deterministic", "backward", "summary");
  for (const Variant* v : Registry()) {
    fmt::print("{:<16} {:<8} {:<9} {:<8} {:<13} {:<8} {}\n", v->name, Yes(v->supports_weights),
               v->materializes_scores ? "Lq x Lk" : "no", Yes(v->uses_highway),
               Yes(v->deterministic), Yes(v->has_backward()), v->summary);
  }
  fmt::print("\n{:<16} {}\n", "variant",
             "element types (--dtype, --q-dtype, --kv-dtype, --out-dtype)");
  for (const Variant* v : Registry()) {
    fmt::print("{:<16} {}\n", v->name, DescribeSupport(v->dtypes));
  }
  fmt::print("\n{:<16} {}\n", "variant", "score modifiers (--softcap, --alibi, --sinks)");
  for (const Variant* v : Registry()) {
    fmt::print("{:<16} {}\n", v->name, ModifierNames(v->modifiers));
  }
  fmt::print("\n{:<16} {}\n", "variant", "backward score modifiers (attnlab grad)");
  for (const Variant* v : Registry()) {
    if (v->has_backward()) fmt::print("{:<16} {}\n", v->name, ModifierNames(v->backward.modifiers));
  }
  fmt::print("\n{:<16} {}\n", "variant", "paged K/V cache (--block-table)");
  for (const Variant* v : Registry()) fmt::print("{:<16} {}\n", v->name, Yes(v->paged_kv));
  fmt::print(
      "\nEvery variant supports masks none/causal/window/additive (causal and window also "
      "top-left: --causal-top-left), key lengths, packed variable-length sequences "
      "(--cu-seqlens-q/-k), GQA/MQA, "
      "both layouts and lse.\n'scores: Lq x Lk' variants are refused when that matrix "
      "exceeds the memory budget.\n'backward: yes' variants also compute dQ, dK, dV "
      "(attnlab grad; fp32).\n");
  fmt::print("blas and chunked run {}.\n", DescribeOpenBlasCore(UseOpenBlasCoreForThisCpu()));
  return kExitOk;
}

// ---------------------------------------------------------------- run
// On 2+ threads, where their time went (kernels/thread_times.h): the part of
// their time in parallel loops outside work items, and each one's items.
void PrintThreadTimes(const RunStats& stats) {
  const ThreadTimes& t = stats.thread_times;
  if (t.wall_seconds <= 0) return;
  std::string items;
  for (const int64_t n : t.items) items += (items.empty() ? "" : " / ") + std::to_string(n);
  fmt::print("threads: {:.1f}% of their time in parallel loops idle, items per thread {}\n",
             100 * t.IdleFraction(), items);
}

struct RunArgs {
  std::string variant, out;
  std::optional<std::string> lse;
};

int RunCommand(const InputOptions& in, const RunArgs& args) {
  const Variant& variant = VariantOrFail(args.variant);
  const Inputs inputs(in);
  std::vector<NamedPath> outputs = {{"--out", args.out}};
  if (args.lse) outputs.push_back({"--lse", *args.lse});
  const std::vector<OutputFile> files = CheckOutputs(outputs, inputs.Files());
  OutputBuffer o = inputs.MakeOutput();
  std::vector<float> lse;
  if (args.lse) lse.resize(inputs.shape().batch * inputs.shape().heads * inputs.shape().q_len);
  const Problem problem = inputs.MakeProblem(o, lse);
  RunStats stats;
  const double seconds = RunVariant(variant, inputs, problem, &stats);
  StatusOr<ValidProblem> valid = Validate(problem);
  const double flops =
      2.0 * double(VisiblePairs(*valid)) * double(problem.shape.head_dim + problem.shape.value_dim);
  fmt::print("variant {}: {} {} on {} thread(s), path {}\n", variant.name,
             attn::Describe(problem.shape, problem.mask), attn::Describe(inputs.dtypes()),
             stats.threads, stats.path);
  fmt::print("time {:.3f} ms, {:.2f} GFLOP/s (visible pairs), workspace {} (declared {})\n",
             seconds * 1e3, flops / seconds / 1e9, FormatBytes(double(stats.workspace_peak_bytes)),
             FormatBytes(double(stats.workspace_declared_bytes)));
  PrintThreadTimes(stats);
  WriteNpyOutput(files[0], inputs.OutputShape(), o);
  if (args.lse) WriteNpyOutput(files[1], inputs.LseShape(), lse);
  return kExitOk;
}

// ---------------------------------------------------------------- check
int CheckCommand(const InputOptions& in, const std::vector<std::string>& names) {
  std::vector<const Variant*> variants;
  if (names.empty()) {
    variants.assign(Registry().begin(), Registry().end());
  } else {
    for (const std::string& name : names) variants.push_back(&VariantOrFail(name));
  }
  const Inputs inputs(in);
  const Shape& s = inputs.shape();
  OutputBuffer o = inputs.MakeOutput();
  std::vector<float> lse(s.batch * s.heads * s.q_len);
  const Problem problem = inputs.MakeProblem(o, lse);
  // Refusals for budget or support are rows of the table; anything else (an
  // invalid problem or option) would refuse every variant alike: exit 2.
  StatusOr<testing::CheckResult> result =
      testing::CheckVariants(problem, variants, inputs.run_options());
  if (!result.ok()) FailStatus(result.status(), inputs);
  fmt::print("{} {} ({})\nreference (fp64): {:.3f} ms\n", attn::Describe(s, problem.mask),
             attn::Describe(inputs.dtypes()), inputs.Describe(), result->reference_ms);
  fmt::print("\n{:<16} {:>12} {:>12} {:>12} {:>10} {:>10}  {}\n", "variant", "max_abs_err",
             "max_rel_err", "bound", "err/bound", "time_ms", "result");
  for (const testing::VariantCheck& r : result->variants) {
    if (!r.ran()) {
      const bool over_budget = r.refused.code() == StatusCode::kResourceExhausted;
      fmt::print("{:<16} {:>12} {:>12} {:>12} {:>10} {:>10}  skipped: {}{}\n", r.variant->name, "-",
                 "-", "-", "-", "-", over_budget ? "over budget: " : "", r.refused.message());
      continue;
    }
    fmt::print("{:<16} {:>12.3e} {:>12.3e} {:>12.3e} {:>10.4f} {:>10.3f}  {}\n", r.variant->name,
               r.c.max_abs_error, r.c.max_rel_error, r.c.bound_at_worst, r.c.worst_bound_ratio,
               r.ms, r.c.ok ? "ok" : "FAIL");
    if (!r.c.ok) fmt::print("  first failure: {}\n", r.c.first_failure);
  }
  fmt::print(
      "\nbound: the derived per-row tolerance (reference/error_bound.h) at the element "
      "with the largest err/bound; a variant passes when err/bound <= 1 everywhere.\n");
  const bool any_ran = std::any_of(result->variants.begin(), result->variants.end(),
                                   [](const testing::VariantCheck& r) { return r.ran(); });
  if (!any_ran) {
    Fail("every variant was skipped (see the table): nothing was checked", kExitFailed);
  }
  return result->ok() ? kExitOk : kExitFailed;
}

// ---------------------------------------------------------------- grad
struct GradArgs {
  std::string variant, d_o, dq, dk, dv;
  std::optional<std::string> o, lse;   // the forward's outputs, both or neither
  std::optional<std::string> d_sinks;  // with --sinks: dσ [H]
  bool check = false;
};

// The forward that gives a backward its O and lse when --o/--lse are not
// given: naive and blas run their own (the same algorithm end to end), every
// other variant flash's.
const Variant& ForwardFor(const Variant& variant) {
  const std::string_view name = variant.name;
  if (name == "naive" || name == "blas") return variant;
  const Variant* flash = FindVariant("flash");
  return flash != nullptr ? *flash : variant;
}

int GradCommand(const InputOptions& in, const GradArgs& args) {
  const Variant& variant = VariantOrFail(args.variant);
  if (!variant.has_backward()) {
    Fail(fmt::format("{} has no backward pass; variants with one: {}", variant.name,
                     BackwardVariantNames()));
  }
  if (args.o.has_value() != args.lse.has_value()) {
    Fail(
        fmt::format("{} without {}: give both (the O and lse of a forward of the same problem) "
                    "or neither (attnlab runs the forward)",
                    args.o ? "--o" : "--lse", args.o ? "--lse" : "--o"));
  }
  const Inputs inputs(in);
  const Shape& s = inputs.shape();
  std::vector<NamedPath> read = inputs.Files();
  read.push_back({"--do", args.d_o});
  if (args.o) read.push_back({"--o", *args.o});
  if (args.lse) read.push_back({"--lse", *args.lse});
  std::vector<NamedPath> written = {{"--dq", args.dq}, {"--dk", args.dk}, {"--dv", args.dv}};
  if (args.d_sinks) written.push_back({"--dsinks", *args.d_sinks});
  const std::vector<OutputFile> files = CheckOutputs(written, read);
  const std::string o_shape =
      fmt::format("dO has O's shape ({} with B={} H={} Lq={} dv={} from {})",
                  inputs.layout() == Layout::kBHLD ? "[B,H,Lq,dv]" : "[B,Lq,H,dv]", s.batch,
                  s.heads, s.q_len, s.value_dim, inputs.Describe());
  std::vector<float> d_o = ReadFloatOfShape("--do", args.d_o, inputs.OutputShape(), o_shape);
  OutputBuffer o = inputs.MakeOutput();  // f32: grad takes no --out-dtype
  std::vector<float> lse(s.batch * s.heads * s.q_len);
  lse.reserve(1);
  const Problem problem = inputs.MakeProblem(o, lse);
  auto buffer = [](int64_t n) {
    std::vector<float> x(n, std::numeric_limits<float>::quiet_NaN());
    x.reserve(1);  // non-null when empty
    return x;
  };
  std::vector<float> dq = buffer(s.batch * s.heads * s.q_len * s.head_dim);
  std::vector<float> dk = buffer(s.batch * s.kv_heads * s.kv_len * s.head_dim);
  std::vector<float> dv = buffer(s.batch * s.kv_heads * s.kv_len * s.value_dim);
  std::vector<float> d_sinks = buffer(args.d_sinks ? s.heads : 0);
  GradProblem grad =
      MakeGradProblem(problem, d_o.data(), dq.data(), dk.data(), dv.data(), inputs.layout());
  if (args.d_sinks) grad.d_sinks = d_sinks;
  // Refusals (types, budget, a variant without a backward) before any kernel.
  if (StatusOr<ValidGradProblem> valid = PrepareBackward(variant, grad, inputs.run_options());
      !valid.ok()) {
    FailStatus(valid.status(), inputs);
  }

  std::string forward;
  if (args.o) {
    std::vector<float> o_file =
        ReadFloatOfShape("--o", *args.o, inputs.OutputShape(),
                         fmt::format("O of the forward ({})", o_shape.substr(o_shape.find('('))));
    std::copy(o_file.begin(), o_file.end(), static_cast<float*>(o.data()));
    std::vector<float> lse_file = ReadFloatOfShape(
        "--lse", *args.lse, inputs.LseShape(),
        fmt::format("the forward's lse, [B,H,Lq] with B={} H={} Lq={}", s.batch, s.heads, s.q_len));
    std::copy(lse_file.begin(), lse_file.end(), lse.begin());
    forward = fmt::format("O and lse from {} and {}", *args.o, *args.lse);
  } else {
    const Variant& fwd = ForwardFor(variant);
    const double fwd_seconds = RunVariant(fwd, inputs, problem);
    forward =
        fmt::format("O and lse by the forward of {} ({:.3f} ms)", fwd.name, fwd_seconds * 1e3);
  }

  RunStats stats;
  const double seconds = RunBackwardVariant(variant, inputs, grad, &stats);
  StatusOr<ValidProblem> valid = Validate(problem);
  const double flops = 2.0 * double(VisiblePairs(*valid)) *
                       double(3 * problem.shape.head_dim + 2 * problem.shape.value_dim);
  fmt::print("grad variant {}: {} {} on {} thread(s), path {}\n", variant.name,
             attn::Describe(problem.shape, problem.mask), attn::Describe(inputs.dtypes()),
             stats.threads, stats.path);
  fmt::print("{}\n", forward);
  fmt::print(
      "time {:.3f} ms, {:.2f} GFLOP/s (visible pairs, 2·pairs·(3·dk + 2·dv)), workspace {} "
      "(declared {})\n",
      seconds * 1e3, flops / seconds / 1e9, FormatBytes(double(stats.workspace_peak_bytes)),
      FormatBytes(double(stats.workspace_declared_bytes)));
  PrintThreadTimes(stats);
  WriteNpyOutput(files[0], inputs.QShape(), dq);
  WriteNpyOutput(files[1], inputs.KShape(), dk);
  WriteNpyOutput(files[2], inputs.VShape(), dv);
  if (args.d_sinks) WriteNpyOutput(files[3], std::vector<int64_t>{s.heads}, d_sinks);
  if (!args.check) return kExitOk;

  const auto ref_start = std::chrono::steady_clock::now();
  StatusOr<reference::GradResult> want = reference::Backward(grad);
  if (!want.ok()) FailStatus(want.status(), inputs);
  const reference::GradBounds bounds = reference::GradErrorBounds(grad, *want);
  const double ref_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - ref_start)
          .count();
  const reference::Comparison c = testing::CompareGradients(grad, *want, bounds);
  fmt::print("\ncheck against the fp64 reference backward ({:.3f} ms):\n", ref_ms);
  fmt::print("{:<16} {:>12} {:>12} {:>12} {:>10}  {}\n", "variant", "max_abs_err", "max_rel_err",
             "bound", "err/bound", "result");
  fmt::print("{:<16} {:>12.3e} {:>12.3e} {:>12.3e} {:>10.4f}  {}\n", variant.name, c.max_abs_error,
             c.max_rel_error, c.bound_at_worst, c.worst_bound_ratio, c.ok ? "ok" : "FAIL");
  if (!c.ok) fmt::print("  first failure: {}\n", c.first_failure);
  fmt::print(
      "\nbound: the derived per-element tolerance of dQ, dK, dV (and dσ) (reference/error_bound.h, "
      "\"backward\") at the element with the largest err/bound; it passes when err/bound <= 1 "
      "everywhere.\n");
  return c.ok ? kExitOk : kExitFailed;
}

// ---------------------------------------------------------------- processes
fs::path SelfDir() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path(".") : exe.parent_path();
}

std::string ShellQuote(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                        "0123456789_-./=:,") == std::string::npos) {
    return s;
  }
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// The child Spawn waits for, for ForwardToChild; 0 when none.
std::atomic<pid_t> g_child{0};
constexpr int kForwardedSignals[] = {SIGINT, SIGTERM, SIGHUP};

void ForwardToChild(int sig) {
  const pid_t child = g_child.load();
  if (child > 0) kill(child, sig);
}

// Runs argv[0] with arguments, waits, returns its exit status (128 + N when signal N ended it;
// 127 when it cannot be run, as in a shell). While it runs, SIGINT, SIGTERM and SIGHUP sent to
// attnlab are passed on to it and attnlab waits on, to report what it left (`attnlab bench
// --report` on partial results); signals attnlab ignores (nohup) stay ignored. The child gets
// SIGTERM when attnlab dies (PR_SET_PDEATHSIG), so even a SIGKILLed attnlab leaves no orphan:
// fork + exec rather than posix_spawn, because only the child can ask for that.
// `set_env`: NAME=VALUE entries that replace or add to the child's copy of attnlab's environment
// (echoed before the command, as a shell line that reproduces the run).
int Spawn(const std::vector<std::string>& argv, bool echo = true,
          const std::vector<std::string>& set_env = {}) {
  if (echo) {
    std::string line;
    for (const std::string& e : set_env) {
      const size_t eq = e.find('=');
      line += e.substr(0, eq + 1) + ShellQuote(e.substr(eq + 1)) + " ";
    }
    for (size_t i = 0; i < argv.size(); ++i) line += (i == 0 ? "" : " ") + ShellQuote(argv[i]);
    fmt::print("+ {}\n", line);
    std::fflush(stdout);
  }
  std::vector<char*> cargv;
  for (const std::string& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  // The child's environment is built here: after fork it may not allocate.
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view entry(*e);
    const std::string_view name = entry.substr(0, entry.find('=') + 1);
    const bool replaced = std::any_of(set_env.begin(), set_env.end(), [&](const std::string& s) {
      return std::string_view(s).substr(0, s.find('=') + 1) == name;
    });
    if (!replaced) env.emplace_back(entry);
  }
  env.insert(env.end(), set_env.begin(), set_env.end());
  std::vector<char*> cenv;
  for (const std::string& e : env) cenv.push_back(const_cast<char*>(e.c_str()));
  cenv.push_back(nullptr);
  // Blocked until the forwarding handlers are in place, so none is lost or kills attnlab.
  sigset_t forwarded, before;
  sigemptyset(&forwarded);
  for (int sig : kForwardedSignals) sigaddset(&forwarded, sig);
  sigprocmask(SIG_BLOCK, &forwarded, &before);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {  // async-signal-safe calls only, until exec
    sigprocmask(SIG_SETMASK, &before, nullptr);
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) == 0 && getppid() == parent) {
      execve(cargv[0], cargv.data(), cenv.data());
    }
    _exit(127);
  }
  const int fork_error = errno;
  struct sigaction forward = {}, saved[std::size(kForwardedSignals)];
  forward.sa_handler = ForwardToChild;
  forward.sa_flags = SA_RESTART;
  sigemptyset(&forward.sa_mask);
  g_child = pid;
  for (size_t i = 0; pid > 0 && i < std::size(kForwardedSignals); ++i) {
    sigaction(kForwardedSignals[i], nullptr, &saved[i]);
    if (saved[i].sa_handler != SIG_IGN) sigaction(kForwardedSignals[i], &forward, nullptr);
  }
  sigprocmask(SIG_SETMASK, &before, nullptr);
  if (pid < 0)
    Fail(fmt::format("cannot run {}: {}", argv[0], std::strerror(fork_error)), kExitFailed);
  int status = 0;
  pid_t waited;
  while ((waited = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
  }
  g_child = 0;
  for (size_t i = 0; i < std::size(kForwardedSignals); ++i) {
    sigaction(kForwardedSignals[i], &saved[i], nullptr);
  }
  if (waited < 0) Fail(fmt::format("waiting for {} failed", argv[0]), kExitFailed);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

bool IsExecutable(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec) && access(p.c_str(), X_OK) == 0;
}

std::string Python() {
  const char* env = std::getenv("ATTNLAB_PYTHON");
  const std::string python = env != nullptr ? env : "/usr/bin/python3";
  if (!IsExecutable(python)) {
    Fail(
        fmt::format("{} not found: numpy and matplotlib live under /usr/bin/python3 "
                    "(set ATTNLAB_PYTHON to use another interpreter)",
                    python));
  }
  return python;
}

// ---------------------------------------------------------------- companions
// attnlab finds attnlab_bench, the report scripts and the Python package relative to its own
// executable, never through a path compiled in, so an installed copy works with the build and
// source trees gone. The build tree mirrors the installed layout (cli/CMakeLists.txt):
//   installed                          build tree
//   P/bin/attnlab                      B/cli/attnlab
//   P/bin/attnlab_bench                B/bench/attnlab_bench
//   P/share/attnlab/reports/           B/share/attnlab/reports -> <source>/reports (a symlink)
//   P/lib/python3/dist-packages/       (none)
// ATTNLAB_BIN_TO_REPORTS and ATTNLAB_BIN_TO_PYTHON are those directories relative to the
// executable's, from GNUInstallDirs and ATTNLAB_INSTALL_PYTHONDIR.
fs::path FromSelf(const fs::path& relative) {
  // SelfDir() is /proc/self/exe's target, which holds no symlink or "..": resolving the ".."s
  // lexically names the same file, and the error messages read better for it.
  return (SelfDir() / relative).lexically_normal();
}

// $env_override when it is set (then the only candidate, so a wrong override is an error
// rather than silently passed over), else the first usable one of `candidates`. Not found:
// exits with every place it looked and `hint` (or, for an override, how to drop it).
fs::path FindCompanion(const std::string& what, const char* env_override,
                       const std::vector<fs::path>& candidates, bool executable,
                       const std::string& hint) {
  const char* env = std::getenv(env_override);
  const std::vector<fs::path> looked = env != nullptr ? std::vector<fs::path>{env} : candidates;
  for (const fs::path& c : looked) {
    if (executable ? IsExecutable(c) : Exists(c)) return c;
  }
  std::string list;
  for (const fs::path& c : looked) list += "\n  " + c.string();
  if (env != nullptr) {
    Fail(
        fmt::format("{} not found; looked for:{} (${})\nunset {} to look where attnlab is "
                    "installed or built",
                    what, list, env_override, env_override));
  }
  Fail(fmt::format("{} not found; looked for:{}\n{}", what, list, hint));
}

// reports/NAME as installed (or its build-tree mirror), or $env_override.
fs::path ReportScript(const std::string& what, const char* env_override, const char* name) {
  return FindCompanion(
      what, env_override, {FromSelf(ATTNLAB_BIN_TO_REPORTS) / name}, /*executable=*/false,
      fmt::format("install attnlab again (`cmake --install`; in a build tree, rerun CMake, "
                  "which links the source tree's reports/ there) or set {}",
                  env_override));
}

// NAME=VALUE entries for a Python child: when attnlab runs from an install that holds the
// `attnlab` Python package, its directory comes first on PYTHONPATH, so a report script
// imports the package installed with it rather than another one on the caller's path. Only
// then: prepending P/lib/python3/dist-packages whenever it exists would, for P = /usr, put
// Debian's modules ahead of the caller's PYTHONPATH and /usr/local for no reason.
std::vector<std::string> PythonEnvironment() {
  const fs::path dir = FromSelf(ATTNLAB_BIN_TO_PYTHON);
  std::error_code ec;
  if (!fs::is_directory(dir / "attnlab", ec)) return {};
  const char* old = std::getenv("PYTHONPATH");
  return {"PYTHONPATH=" + dir.string() +
          (old != nullptr && *old != '\0' ? ":" + std::string(old) : "")};
}

// ---------------------------------------------------------------- bench
struct ReportArgs {
  std::vector<std::string> results, compare;
  std::string label, accuracy, out_dir;
};
int ReportCommand(const ReportArgs& args);

struct BenchArgs {
  std::string suite, filter, threads, out;
  std::string resume;   // results of an interrupted run to continue (attnlab_bench --resume)
  bool report = false;  // then run `attnlab report` on the results
  std::string label;
  std::vector<std::string> extra;
};

fs::path FindBench() {
  return FindCompanion("attnlab_bench", "ATTNLAB_BENCH",
                       {FromSelf("attnlab_bench"),            // installed side by side
                        FromSelf("../bench/attnlab_bench")},  // the build tree's bench/
                       /*executable=*/true,
                       "build it with `cmake --build --preset release --target attnlab_bench` "
                       "(an install has it beside attnlab) or set ATTNLAB_BENCH");
}

std::string DefaultResultsPath() {
  char host[256] = "host";
  gethostname(host, sizeof(host) - 1);
  const std::time_t now = std::time(nullptr);
  char date[32];
  std::strftime(date, sizeof(date), "%Y-%m-%d", std::gmtime(&now));
  std::string base = fmt::format("results/{}-{}", host, date);
  std::string path = base + ".json";
  for (int n = 2; fs::exists(path); ++n) path = fmt::format("{}-{}.json", base, n);
  return path;
}

// An attnlab_bench that was stopped and kept its results: interrupted (it closed the JSON and
// exited 128 + SIGINT, SIGTERM or SIGHUP) or killed (SIGKILL: the JSON ends after the last case
// it finished, which the report and --resume read).
bool Interrupted(int status) {
  return status == 128 + SIGINT || status == 128 + SIGTERM || status == 128 + SIGHUP ||
         status == 128 + SIGKILL;
}

int BenchCommand(BenchArgs args) {
  const std::set<std::string> suites = {"quick",     "default",  "full",
                                        "precision", "backward", "serving"};
  if (!args.suite.empty() && !suites.count(args.suite)) {
    Fail(fmt::format("bad --suite '{}': want quick, default, full, precision, backward or serving",
                     args.suite));
  }
  if (!args.threads.empty() && args.threads.find_first_not_of("0123456789,") != std::string::npos) {
    Fail(fmt::format("bad --threads '{}': want a comma-separated list such as 1,2", args.threads));
  }
  if (!args.resume.empty() && !fs::exists(args.resume)) {
    Fail(fmt::format("--resume {}: no such file", args.resume));
  }
  const fs::path bench = FindBench();
  if (!args.resume.empty()) args.out = args.resume;
  if (args.out.empty()) args.out = DefaultResultsPath();
  const fs::path dir = fs::path(args.out).parent_path();
  std::error_code ec;
  if (!dir.empty()) fs::create_directories(dir, ec);
  if (ec) Fail(fmt::format("cannot create {}: {}", dir.string(), ec.message()));
  std::vector<std::string> argv = {bench.string()};
  if (!args.suite.empty()) argv.push_back("--suite=" + args.suite);
  if (!args.threads.empty()) argv.push_back("--threads=" + args.threads);
  if (!args.filter.empty()) argv.push_back("--benchmark_filter=" + args.filter);
  if (!args.resume.empty()) {
    argv.push_back("--resume=" + args.resume);  // FILE records the rest of its command line
  } else {
    argv.push_back("--benchmark_out=" + args.out);
    argv.push_back("--benchmark_out_format=json");
  }
  argv.insert(argv.end(), args.extra.begin(), args.extra.end());
  const int rc = Spawn(argv);
  const bool interrupted = Interrupted(rc);
  if (rc != 0 && !interrupted) {
    fmt::print(stderr, "attnlab: attnlab_bench exited with status {}\n", rc);
    return kExitFailed;
  }
  const bool have_results = fs::exists(args.out);
  if (have_results) fmt::print("results: {}\n", args.out);
  int report_rc = kExitOk;
  if (args.report && have_results) {
    ReportArgs report;
    report.results = {args.out};
    report.label = args.label;
    try {
      report_rc = ReportCommand(report);  // on partial results too: it marks what did not run
    } catch (const CliError& e) {
      if (!interrupted) throw;
      fmt::print(stderr, "attnlab: error: {}\n", e.what());
    }
  }
  if (interrupted) {
    std::string resume = "attnlab bench --resume " + ShellQuote(args.out);
    if (args.report) resume += " --report";
    if (!args.label.empty()) resume += " --label " + ShellQuote(args.label);
    std::fflush(stdout);
    fmt::print(stderr, "attnlab: attnlab_bench was interrupted (status {}); {}\n", rc,
               have_results ? fmt::format("{} keeps every finished case. Continue it with:\n  {}",
                                          args.out, resume)
                            : "it wrote no results: run the same command again");
    return rc;
  }
  if (args.report) return report_rc;
  fmt::print("next: attnlab report {}\n", args.out);
  return kExitOk;
}

// ---------------------------------------------------------------- report
int ReportCommand(const ReportArgs& args) {
  if (args.results.empty() && args.compare.empty()) {
    Fail("report: give RESULTS.json files, or --compare A.json B.json");
  }
  if (!args.results.empty() && !args.compare.empty()) {
    Fail("report: give either RESULTS.json files or --compare A.json B.json, not both");
  }
  for (const std::vector<std::string>* list : {&args.results, &args.compare}) {
    for (const std::string& f : *list) {
      if (!Exists(f)) Fail(fmt::format("{}: no such file", f));
    }
  }
  const fs::path script = ReportScript("report generator", "ATTNLAB_REPORT_SCRIPT", "generate.py");
  std::vector<std::string> argv = {Python(), script.string()};
  if (!args.compare.empty()) {
    argv.push_back("compare");
    argv.insert(argv.end(), args.compare.begin(), args.compare.end());
  } else {
    argv.insert(argv.end(), args.results.begin(), args.results.end());
  }
  if (!args.accuracy.empty()) argv.insert(argv.end(), {"--accuracy", args.accuracy});
  if (!args.label.empty()) argv.insert(argv.end(), {"--label", args.label});
  if (!args.out_dir.empty()) argv.insert(argv.end(), {"--out-dir", args.out_dir});
  const int rc = Spawn(argv, /*echo=*/true, PythonEnvironment());
  if (rc != 0) {
    fmt::print(stderr, "attnlab: the report generator exited with status {}\n", rc);
    return kExitFailed;
  }
  return kExitOk;
}

// ---------------------------------------------------------------- weights
struct WeightsArgs {
  std::string variant, out;
  std::optional<std::string> png, tokens;
  std::string head = "0", batch = "0";  // parsed once the inputs give H and B
};

// The named variant, or the first that materializes weights.
const Variant& WeightsVariant(const std::string& name) {
  if (name.empty()) {
    for (const Variant* v : Registry()) {
      if (v->supports_weights) return *v;
    }
    Fail("no registered variant materializes attention weights");
  }
  const Variant& variant = VariantOrFail(name);
  if (!variant.supports_weights) {
    std::string which;
    for (const Variant* v : Registry()) {
      if (v->supports_weights) which += (which.empty() ? "" : ", ") + std::string(v->name);
    }
    Fail(fmt::format("{} does not materialize attention weights; use one that does: {}",
                     variant.name, which));
  }
  return variant;
}

std::vector<std::string> ReadTokens(const std::string& path) {
  RequirePath("--tokens", path);
  std::ifstream f(path);
  if (!f) Fail(fmt::format("{}: cannot open the tokens file", path));
  std::vector<std::string> tokens;
  std::string t;
  while (f >> t) tokens.push_back(t);
  return tokens;
}

// Labels of the keys (the tokens, else 0..Lk-1) and of the queries: aligned
// bottom-right with the keys (problem.h), query i is token i + Lk - Lq.
struct Labels {
  std::vector<std::string> keys, queries;
};
Labels MakeLabels(const std::optional<std::string>& tokens, const Shape& s) {
  Labels l;
  if (tokens) {
    l.keys = ReadTokens(*tokens);
    if (int64_t(l.keys.size()) != s.kv_len) {
      Fail(fmt::format("{} has {} tokens; want one per key (Lk={})", *tokens, l.keys.size(),
                       s.kv_len));
    }
  } else {
    for (int64_t j = 0; j < s.kv_len; ++j) l.keys.push_back(std::to_string(j));
  }
  for (int64_t i = 0; i < s.q_len; ++i) {
    const int64_t j = i + s.kv_len - s.q_len;
    l.queries.push_back(j >= 0 && j < s.kv_len ? l.keys[j] : "q" + std::to_string(i));
  }
  return l;
}

void PrintEntropyTable(const float* slice, const Shape& s, const Labels& labels, int64_t batch,
                       int64_t head) {
  fmt::print(
      "\nbatch {} head {}: per query row, entropy of its weights (nats; uniform over n "
      "keys = ln n) and the largest weight\n",
      batch, head);
  fmt::print("{:>5} {:<16} {:>9} {:>10} {:<16}\n", "row", "query", "entropy", "max_weight",
             "argmax_key");
  for (int64_t i = 0; i < s.q_len; ++i) {
    const float* row = slice + i * s.kv_len;
    double entropy = 0, max_w = 0;
    int64_t arg = -1;
    for (int64_t j = 0; j < s.kv_len; ++j) {
      const double p = row[j];
      if (p > 0) entropy -= p * std::log(p);
      if (p > max_w) {
        max_w = p;
        arg = j;
      }
    }
    fmt::print("{:>5} {:<16} {:>9.4f} {:>10.4f} {:<16}\n", i, labels.queries[i], entropy, max_w,
               arg < 0 ? "(fully masked)" : labels.keys[arg]);
  }
}

// What drawing the heatmap needs, found before any kernel runs: the
// interpreter, the script and a scratch directory for the slice and the spec.
struct Heatmap {
  std::string python = Python();
  fs::path script = ReportScript("heatmap script", "ATTNLAB_HEATMAP_SCRIPT", "heatmap.py");
  TempDir tmp{"attnlab-heatmap"};
};

// reports/heatmap.py draws `slice` [Lq, Lk] into png (atomically; its exit
// code 3 means it could not write the PNG).
void DrawHeatmap(const Heatmap& h, const OutputFile& png, const float* slice, const Shape& s,
                 const Labels& labels, const std::string& title) {
  const fs::path slice_npy = h.tmp.path() / "weights.npy";
  const std::vector<int64_t> shape = {s.q_len, s.kv_len};
  WriteFileOrFail(slice_npy.string(),
                  npy::SerializeFloat(shape, std::span<const float>(slice, s.q_len * s.kv_len)));
  const nlohmann::json spec = {{"weights", slice_npy.string()},
                               {"png", png.target},
                               {"keys", labels.keys},
                               {"queries", labels.queries},
                               {"title", title}};
  const fs::path spec_path = h.tmp.path() / "spec.json";
  WriteFileOrFail(spec_path.string(), spec.dump());
  const int rc =
      Spawn({h.python, h.script.string(), spec_path.string()}, /*echo=*/false, PythonEnvironment());
  if (rc != 0) {
    Fail(fmt::format("the heatmap script exited with status {}", rc),
         rc == kExitIo ? kExitIo : kExitFailed);
  }
  fmt::print("wrote {}\n", png.name.path);
}

void CheckWeightsFit(const Shape& s) {
  const double weight_bytes =
      4.0 * double(s.batch) * double(s.heads) * double(s.q_len) * double(s.kv_len);
  if (weight_bytes > kMaxWeightsBytes) {
    Fail(
        fmt::format("weights [B={}, H={}, Lq={}, Lk={}] would take {}, over the {} limit of "
                    "`attnlab weights` (it is for small problems you look at)",
                    s.batch, s.heads, s.q_len, s.kv_len, FormatBytes(weight_bytes),
                    FormatBytes(kMaxWeightsBytes)));
  }
}

int WeightsCommand(const InputOptions& in, const WeightsArgs& args) {
  const Variant& variant = WeightsVariant(args.variant);
  const Inputs inputs(in);
  const Shape& s = inputs.shape();
  CheckWeightsFit(s);
  OutputBuffer o = inputs.MakeOutput();
  std::vector<float> w(s.batch * s.heads * s.q_len * s.kv_len);
  const Problem problem = inputs.MakeProblem(o, {}, w);
  if (StatusOr<ValidProblem> valid = Validate(problem); !valid.ok()) {
    FailStatus(valid.status(), inputs);
  }
  const int64_t batch = ParseIntOption("--batch", args.batch, 0, s.batch - 1,
                                       fmt::format(" (the inputs have B={})", s.batch));
  const int64_t head = ParseIntOption("--head", args.head, 0, s.heads - 1,
                                      fmt::format(" (the inputs have H={})", s.heads));
  std::vector<NamedPath> outputs = {{"--out", args.out}}, read = inputs.Files();
  if (args.png) outputs.push_back({"--png", *args.png});
  if (args.tokens) read.push_back({"--tokens", *args.tokens});
  const std::vector<OutputFile> files = CheckOutputs(outputs, read);
  const Labels labels = MakeLabels(args.tokens, s);
  std::optional<Heatmap> heatmap;
  if (args.png) heatmap.emplace();

  const double seconds = RunVariant(variant, inputs, problem);
  fmt::print("variant {}: {} {} in {:.3f} ms\n", variant.name, attn::Describe(s, problem.mask),
             attn::Describe(inputs.dtypes()), seconds * 1e3);
  WriteNpyOutput(files[0], inputs.WeightsShape(), w);
  const float* slice = w.data() + (batch * s.heads + head) * s.q_len * s.kv_len;
  PrintEntropyTable(slice, s, labels, batch, head);
  if (heatmap) {
    DrawHeatmap(*heatmap, files[1], slice, s, labels,
                fmt::format("{} attention weights, batch {} head {} ({})", variant.name, batch,
                            head, MaskKindName(problem.mask.kind)));
  }
  return kExitOk;
}

int Main(int argc, char** argv) {
  CLI::App app{"attnlab: CPU attention kernels, checked and measured. See docs/cli.md."};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "help for every command");

  app.add_subcommand("list", "the variant registry: name, then what it supports");

  InputOptions run_in;
  RunArgs run_args;
  CLI::App* run = app.add_subcommand("run", "run one variant on .npy inputs, write O (and lse)");
  run->add_option("--variant", run_args.variant, "variant name (attnlab list)")->required();
  AddInputOptions(run, run_in);
  run->add_option("--out", run_args.out,
                  "output O .npy (same rank and layout as Q): '<f4' for an f32 O, '<f2' for "
                  "f16, and for bf16 its bits as uint16 '<u2' (NumPy has no bfloat16)")
      ->required();
  run->add_option("--lse", run_args.lse, "also write lse .npy [B,H,Lq]");

  InputOptions ring_in;
  RingArgs ring_args;
  CLI::App* ring = app.add_subcommand(
      "ring",
      "ring attention over MPI: mpirun -np P attnlab ring ... splits the sequence over P ranks; "
      "rank 0 reads the inputs and writes O (and lse)");
  ring->add_option("--variant", ring_args.variant,
                   "the local kernel of each block pair (default flash)");
  ring->add_option("--split", ring_args.split,
                   "zigzag (default: equal causal work per rank) or contiguous");
  AddInputOptions(ring, ring_in);
  ring->add_option("--out", ring_args.out, "output O .npy (same rank and layout as Q)")->required();
  ring->add_option("--lse", ring_args.lse, "also write lse .npy [B,H,Lq]");
  ring->add_flag("--quiet", ring_args.quiet, "no per-rank table");

  InputOptions check_in;
  std::vector<std::string> check_variants;
  CLI::App* check = app.add_subcommand(
      "check",
      "run every variant (or --variants) against the fp64 reference; exit 1 on a miss or when "
      "every variant is skipped");
  AddInputOptions(check, check_in);
  check->add_option("--variants", check_variants, "comma-separated subset")->delimiter(',');

  InputOptions weights_in;
  WeightsArgs weights_args;
  CLI::App* weights = app.add_subcommand(
      "weights", "attention weights of a small problem: .npy, heatmap PNG, entropy table");
  weights->add_option("--variant", weights_args.variant,
                      "a variant that materializes weights (default: the first)");
  AddInputOptions(weights, weights_in);
  weights->add_option("--out", weights_args.out, "weights .npy [B,H,Lq,Lk]")->required();
  weights->add_option("--png", weights_args.png, "heatmap PNG of one (batch, head)");
  weights->add_option("--tokens", weights_args.tokens, "text file: Lk whitespace-separated tokens");
  weights->add_option("--head", weights_args.head, "head for the table and heatmap (default 0)");
  weights->add_option("--batch", weights_args.batch, "batch for the table and heatmap (default 0)");

  InputOptions grad_in;
  GradArgs grad_args;
  CLI::App* grad = app.add_subcommand(
      "grad",
      "the backward pass of one variant (attnlab list: backward yes): dQ, dK, dV from .npy "
      "inputs and dO");
  grad->add_option("--variant", grad_args.variant, "a variant with a backward pass")->required();
  AddInputOptions(grad, grad_in, /*dtypes=*/false);
  grad->add_option("--do", grad_args.d_o, "dO = dloss/dO .npy, O's shape (float32)")->required();
  grad->add_option("--o", grad_args.o,
                   "the forward's O .npy (with --lse; default: attnlab runs the forward)");
  grad->add_option("--lse", grad_args.lse, "the forward's lse .npy [B,H,Lq] (with --o)");
  grad->add_option("--dq", grad_args.dq, "output dQ .npy (Q's shape)")->required();
  grad->add_option("--dk", grad_args.dk, "output dK .npy (K's shape)")->required();
  grad->add_option("--dv", grad_args.dv, "output dV .npy (V's shape)")->required();
  grad->add_option("--dsinks", grad_args.d_sinks,
                   "output dσ .npy [H] (with --sinks): the sinks' gradient, summed over batch "
                   "and rows");
  grad->add_flag("--check", grad_args.check,
                 "also compare with the fp64 reference backward within the derived bound (exit 1 "
                 "on a miss)");

  BenchArgs bench_args;
  CLI::App* bench = app.add_subcommand(
      "bench", "run the benchmark suite (attnlab_bench); extra args after -- pass through");
  bench->add_option(
      "--suite", bench_args.suite,
      "quick | default | full | precision | backward | serving (attnlab_bench --help)");
  bench->add_option("--filter", bench_args.filter, "regex on benchmark names");
  bench->add_option("--threads", bench_args.threads, "thread counts, e.g. 1,2");
  CLI::Option* bench_out = bench->add_option("--out", bench_args.out,
                                             "results JSON (default results/<host>-<date>.json)");
  bench
      ->add_option("--resume", bench_args.resume,
                   "continue the interrupted run that wrote this results JSON (only what it "
                   "lacks runs; the file is updated)")
      ->excludes(bench_out);
  bench->add_flag("--report", bench_args.report, "then run `attnlab report` on the results");
  bench->add_option("--label", bench_args.label, "label for --report");
  bench->add_option("extra", bench_args.extra, "arguments for attnlab_bench (after --)");

  ReportArgs report_args;
  CLI::App* report = app.add_subcommand("report", "generate reports from results JSON");
  report->add_option("results", report_args.results, "results JSON files");
  report->add_option("--compare", report_args.compare, "compare two results files")->expected(2);
  report->add_option("--label", report_args.label, "label for the report");
  report->add_option("--accuracy", report_args.accuracy, "accuracy JSON");
  report->add_option("--out-dir", report_args.out_dir, "output directory (default reports)");

  TuneArgs tune_args;
  CLI::App* tune = app.add_subcommand("tune",
                                      "measure this machine and write its tuning file (flash's key "
                                      "tile and decode prefetch, auto's picks)");
  tune->add_option("--out", tune_args.out,
                   "tuning file (default $ATTNLAB_TUNING, else "
                   "$XDG_CONFIG_HOME/attnlab/tuning.json or ~/.config/attnlab/tuning.json)");
  tune->add_option("--threads", tune_args.threads, "thread counts (default 1 and all cores)")
      ->delimiter(',');
  tune->add_option("--head-dims", tune_args.head_dims,
                   "head dims of auto's points (default 64,128)")
      ->delimiter(',');
  tune->add_option("--max-n", tune_args.max_n, "largest N of auto's points (default 2048)");
  tune->add_option("--reps", tune_args.reps, "timed repetitions per candidate (default 5)");
  tune->add_flag("--quick", tune_args.quick, "a smoke run: d=64, N<=256, 2 repetitions");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kExitUsage;
  }

  // Before anything calls BLAS (kernels/openblas_core.h).
  UseOpenBlasCoreForThisCpu();
  try {
    if (app.got_subcommand("list")) return List();
    if (app.got_subcommand(run)) return RunCommand(run_in, run_args);
    if (app.got_subcommand(check)) return CheckCommand(check_in, check_variants);
    if (app.got_subcommand(ring)) return RingCommand(argc, argv, ring_in, ring_args);
    if (app.got_subcommand(weights)) return WeightsCommand(weights_in, weights_args);
    if (app.got_subcommand(grad)) return GradCommand(grad_in, grad_args);
    if (app.got_subcommand(bench)) return BenchCommand(bench_args);
    if (app.got_subcommand(report)) return ReportCommand(report_args);
    if (app.got_subcommand(tune)) return TuneCommand(tune_args);
  } catch (const CliError& e) {
    std::fflush(stdout);
    fmt::print(stderr, "attnlab: error: {}\n", e.what());
    return e.code;
  } catch (const std::bad_alloc&) {
    fmt::print(stderr, "attnlab: error: out of memory\n");
    return kExitFailed;
  } catch (const fs::filesystem_error& e) {
    // Every file-system call above is meant not to throw; should one still
    // do so, a message and an exit code, never an abort.
    std::fflush(stdout);
    fmt::print(stderr, "attnlab: error: {}\n", e.what());
    return kExitIo;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "attnlab: error: unexpected: {}\n", e.what());
    return kExitFailed;
  }
  return kExitUsage;
}

}  // namespace
}  // namespace attn::cli

int main(int argc, char** argv) { return attn::cli::Main(argc, argv); }
