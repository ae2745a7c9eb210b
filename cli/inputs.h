// The CLI's attention inputs: Q, K, V (and optional masks) from .npy files,
// checked against each other, turned into an attn::Problem.
//
// Errors are thrown as CliError (the front end's only exception type; the
// library itself never throws) and become a message and an exit code in
// main().
#ifndef ATTNLAB_CLI_INPUTS_H_
#define ATTNLAB_CLI_INPUTS_H_

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "cli/npy.h"
#include "kernels/problem.h"
#include "kernels/registry.h"

namespace attn::cli {

// Exit codes (docs/cli.md).
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;  // a check failed or ran nothing; a kernel or child failed
inline constexpr int kExitUsage = 2;   // bad usage or bad input
inline constexpr int kExitIo = 3;      // could not write an output (or a temporary file)

struct CliError : std::runtime_error {
  CliError(int code, const std::string& message) : std::runtime_error(message), code(code) {}
  int code;
};
[[noreturn]] inline void Fail(const std::string& message, int code = kExitUsage) {
  throw CliError(code, message);
}

// A file named on the command line: the option and the path as given.
struct NamedPath {
  std::string option;  // "--q"
  std::string path;
};

// Command-line options shared by run, check and weights, as typed: Inputs
// parses them (strictly: "0x10", "1e", " 3", "+1" are refused), so the three
// commands accept and refuse the same things. An optional that is present
// holds what was given, even "".
struct InputOptions {
  std::string q, k, v;
  std::string mask = "none";
  std::optional<std::string> key_lengths;  // .npy path
  std::optional<std::string> mask_file;    // .npy path
  std::optional<std::string> scale;        // a finite decimal; default 1/sqrt(dk)
  std::string layout = "bhsd";
  std::optional<std::string> threads;        // 1..kMaxThreads; default all cores
  std::optional<std::string> memory_budget;  // e.g. "512M"; default: the registry's
};

// Fails (kExitUsage) "bad OPTION '': want a path" when `path` is empty.
void RequirePath(const std::string& option, const std::string& path);

// `text` as a decimal integer in [lo, hi]: digits only (no sign, space, "0x"
// or exponent), else CliError (kExitUsage)
// "bad OPTION 'TEXT': want an integer from LO to HI" followed by `note`.
int64_t ParseIntOption(std::string_view option, const std::string& text, int64_t lo, int64_t hi,
                       std::string_view note = "");

// Loaded inputs and the problem shape they describe.
class Inputs {
 public:
  explicit Inputs(const InputOptions& options);

  const Shape& shape() const { return shape_; }
  int rank() const { return rank_; }
  Layout layout() const { return layout_; }
  RunOptions run_options() const { return run_options_; }
  size_t budget_bytes() const { return budget_; }

  // O / lse / weights shapes as written to .npy: O has the inputs' rank and
  // layout; lse is [B, H, Lq] and weights [B, H, Lq, Lk], each minus the
  // leading dimensions the inputs' rank leaves out.
  std::vector<int64_t> OutputShape() const;
  std::vector<int64_t> LseShape() const;
  std::vector<int64_t> WeightsShape() const;
  int64_t OutputElements() const;

  // A problem over these inputs writing O (and lse / weights when given).
  Problem MakeProblem(float* o, std::span<float> lse = {}, std::span<float> weights = {}) const;

  // "q.npy (1, 8, 16, 64), k.npy (...), v.npy (...)": context for messages.
  std::string Describe() const;

  // The files read, by option (--q, --k, --v, --mask-file, --key-lengths):
  // what no output may overwrite.
  std::vector<NamedPath> Files() const;

 private:
  InputOptions options_;
  npy::FloatArray q_, k_, v_, mask_;
  std::vector<int32_t> key_lengths_;
  Shape shape_;
  Mask mask_spec_;
  int rank_ = 4;
  Layout layout_ = Layout::kBHLD;
  std::optional<float> scale_;
  RunOptions run_options_;
  size_t budget_ = 0;
};

// Runs a variant, throwing CliError with the registry's message on failure
// ("over budget: ...", "unknown variant ...", "invalid problem: ...").
// Returns seconds.
double RunVariant(const Variant& variant, const Inputs& inputs, const Problem& problem,
                  RunStats* stats = nullptr);

// The variant of that name or a CliError listing the known ones.
const Variant& VariantOrFail(const std::string& name);

// Shows an attn::Status from Validate/Prepare/Run as a CLI error.
[[noreturn]] void FailStatus(const Status& status, const Inputs& inputs);

}  // namespace attn::cli

#endif  // ATTNLAB_CLI_INPUTS_H_
