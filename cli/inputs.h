// The CLI's attention inputs: Q, K, V (and optional masks) from .npy files,
// checked against each other, converted to the element types asked for,
// turned into an attn::Problem.
//
// Element types (docs/cli.md, "Element types"): Q, K and V are read in
// their file's type ('<f4' and '<f8' as f32, '<f2' as f16, '<u2' as bf16
// bits, '|i1' as int8 with its row scales from --k-scales / --v-scales) and
// converted (kernels/dtype.h: round to nearest even; i8 by QuantizeRow, one
// scale per row) to the type asked for: --q-dtype / --kv-dtype convert any
// float file, --dtype only the fp32 ones (a file already in a reduced type
// is taken as it is); an int8 file is never converted. O is f32 unless
// --out-dtype / --dtype ask for bf16 or f16.
//
// Errors are thrown as CliError (the front end's only exception type; the
// library itself never throws) and become a message and an exit code in
// main().
#ifndef ATTNLAB_CLI_INPUTS_H_
#define ATTNLAB_CLI_INPUTS_H_

#include <cstdint>
#include <optional>
#include <span>
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
  // Element types, each f32 | bf16 | f16 | i8 as the tensor allows: --dtype
  // sets O and the fp32 ones of Q, K, V; the others override it for their
  // tensors.
  std::optional<std::string> dtype, q_dtype, kv_dtype, out_dtype;
  // The row scales of an int8 ('|i1') K and V file: float32 .npy files.
  std::optional<std::string> k_scales, v_scales;
  // Score modifiers (kernels/problem.h): --softcap CAP; --alibi FILE.npy
  // (float32 [H] slopes) or "standard" (Press et al.: 2^(-8(h+1)/H));
  // --sinks FILE.npy (float32 [H] logits); --causal-top-left aligns the
  // diagonal of causal and window masks top-left.
  std::optional<std::string> softcap, alibi, sinks;
  bool causal_top_left = false;
  // ... or at each batch's key length (Diagonal::kKeyLengths).
  bool causal_at_key_lengths = false;
  // Packed variable-length sequences (kernels/problem.h): int .npy files of
  // S + 1 offsets along Q's and K's positions (B = 1); both or neither.
  std::optional<std::string> cu_seqlens_q, cu_seqlens_k;
  // A paged K/V cache (kernels/problem.h): int .npy [B, blocks_per_sequence]
  // of block indexes into the pools that the rank-4 --k and --v files then
  // are, [num_blocks, Hkv, block_size, d] (bhsd) or [num_blocks, block_size,
  // Hkv, d] (bshd).
  std::optional<std::string> block_table;
};

// O in its element type: OutputElements() contiguous elements.
class OutputBuffer {
 public:
  OutputBuffer(DType dtype, int64_t elements);
  DType dtype() const { return dtype_; }
  void* data() { return dtype_ == DType::kF32 ? static_cast<void*>(f32_.data()) : half_.data(); }
  // The .npy file of O: '<f4' for f32, '<f2' for f16, and for bf16 its bits
  // as '<u2' (NumPy has no bfloat16), the form the tool reads back as bf16.
  std::string Serialize(std::span<const int64_t> shape) const;
  // "" for f32 O; else how the file holds it, for the "wrote" line.
  std::string FileNote() const;

 private:
  DType dtype_;
  std::vector<float> f32_;      // kF32
  std::vector<uint16_t> half_;  // kBF16, kF16: the bits
};

// Fails (kExitUsage) "bad OPTION '': want a path" when `path` is empty.
void RequirePath(const std::string& option, const std::string& path);

// `text` as a decimal integer in [lo, hi]: digits only (no sign, space, "0x"
// or exponent), else CliError (kExitUsage)
// "bad OPTION 'TEXT': want an integer from LO to HI" followed by `note`.
int64_t ParseIntOption(std::string_view option, const std::string& text, int64_t lo, int64_t hi,
                       std::string_view note = "");

// The entries of an integer .npy file of rank 1 (--key-lengths,
// --cu-seqlens-q/k), else CliError (kExitUsage): "PATH has shape S;
// RANK_NOTE", or "PATH: RANGE_NOTE" (a format string given the entry) for
// an entry outside int32.
// A file of another rank: `rank`; `shape` (optional) receives its shape.
std::vector<int32_t> ReadInt32s(const std::string& option, const std::string& path,
                                std::string_view rank_note, std::string_view range_note,
                                size_t rank = 1, std::vector<int64_t>* shape = nullptr);

// The float32 values of a '<f4', '<f8' or '<f2' .npy file (C order) that
// must have shape `want`, else CliError (kExitUsage) naming the option, the
// file, both shapes and `what` ("O's shape [B,H,Lq,dv] from q.npy ..."). The
// data is non-null even when empty.
std::vector<float> ReadFloatOfShape(const std::string& option, const std::string& path,
                                    const std::vector<int64_t>& want, std::string_view what);

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

  // The element types of Q, K, V (converted as asked) and O.
  const DTypes& dtypes() const { return dtypes_; }
  // A buffer for O in its element type.
  OutputBuffer MakeOutput() const { return OutputBuffer(dtypes_.o, OutputElements()); }

  // A problem over these inputs writing O (and lse / weights when given).
  Problem MakeProblem(OutputBuffer& o, std::span<float> lse = {},
                      std::span<float> weights = {}) const;

  // The shapes of the Q, K and V files as read: those of dQ, dK and dV.
  const std::vector<int64_t>& QShape() const { return q_.shape; }
  const std::vector<int64_t>& KShape() const { return k_.shape; }
  const std::vector<int64_t>& VShape() const { return v_.shape; }

  // "q.npy (1, 8, 16, 64), k.npy (...), v.npy (...)": context for messages.
  std::string Describe() const;

  // The files read, by option (--q, --k, --v, --k-scales, --v-scales,
  // --mask-file, --key-lengths): what no output may overwrite.
  std::vector<NamedPath> Files() const;

 private:
  // One of Q, K, V as the kernels get it, in its file's C order.
  struct Operand {
    std::string option, path;    // "--k", "k.npy"
    std::vector<int64_t> shape;  // the file's
    std::string descr;           // the file's dtype, "<f4"
    DType dtype = DType::kF32;
    std::vector<float> f32;      // kF32
    std::vector<uint16_t> half;  // kBF16, kF16: the bits
    std::vector<int8_t> i8;      // kI8
    std::vector<float> scales;   // kI8: one per row of d elements, in file order
    const void* data() const;
  };
  static Operand Read(const std::string& option, const std::string& path);
  // The row scales of an int8 file `x` from `scales_path` (--k-scales or
  // --v-scales), checked: float32, x's shape without its last dimension,
  // finite. Fails when x is int8 without them or has them without being int8.
  static void ReadScales(const std::string& option, const std::optional<std::string>& scales_path,
                         Operand& x);
  // The type `x` gets: `exact` (--q-dtype, --kv-dtype) converts any float
  // file, `all` (--dtype) an fp32 one; an int8 file stays int8.
  static DType TargetType(const Operand& x, std::optional<DType> exact,
                          std::string_view exact_option, std::optional<DType> all);
  static void ConvertTo(Operand& x, DType dtype);
  // --softcap, --alibi, --sinks and --causal-top-left, once the shape is known.
  void ReadModifiers(const InputOptions& options);
  // --cu-seqlens-q and --cu-seqlens-k.
  void ReadSequences(const InputOptions& options);
  std::vector<float> ReadPerHead(const std::string& option, const std::string& path) const;
  // The row scales of an int8 K or V of `heads` heads and `len` rows.
  RowScales Scales(const Operand& x, int64_t heads, int64_t len) const;

  InputOptions options_;
  Operand q_, k_, v_;
  npy::FloatArray mask_;
  DTypes dtypes_;
  std::vector<int32_t> key_lengths_, cu_seqlens_q_, cu_seqlens_k_, block_table_;
  std::optional<KvPages> kv_pages_;
  Shape shape_;
  Mask mask_spec_;
  int rank_ = 4;
  Layout layout_ = Layout::kBHLD;
  std::optional<float> scale_;
  std::optional<float> softcap_;
  std::vector<float> alibi_slopes_, sinks_;
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

// Runs a variant's backward pass on a problem over these inputs, like
// RunVariant: PrepareBackward first (a refusal is a CliError, never timed).
// Returns seconds.
double RunBackwardVariant(const Variant& variant, const Inputs& inputs, const GradProblem& problem,
                          RunStats* stats = nullptr);

// Shows an attn::Status from Validate/Prepare/Run as a CLI error.
[[noreturn]] void FailStatus(const Status& status, const Inputs& inputs);

}  // namespace attn::cli

#endif  // ATTNLAB_CLI_INPUTS_H_
