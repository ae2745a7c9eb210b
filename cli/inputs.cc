#include "cli/inputs.h"

#include <fmt/format.h>

#include <cctype>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <limits>

#include "kernels/internal/bytes.h"

namespace attn::cli {
namespace {

// Dimensions of one of Q, K, V read from its .npy shape.
struct Dims {
  int64_t batch = 1, heads = 1, len = 0, dim = 0;
};

std::string RankHelp(Layout layout) {
  return layout == Layout::kBHLD ? "rank 4 [B,H,L,d], 3 [H,L,d] or 2 [L,d] (--layout bhsd)"
                                 : "rank 4 [B,L,H,d], 3 [L,H,d] or 2 [L,d] (--layout bshd)";
}

Dims DimsOf(const std::vector<int64_t>& s, const std::string& path, Layout layout) {
  const bool bhsd = layout == Layout::kBHLD;
  switch (s.size()) {
    case 4:
      return bhsd ? Dims{s[0], s[1], s[2], s[3]} : Dims{s[0], s[2], s[1], s[3]};
    case 3:
      return bhsd ? Dims{1, s[0], s[1], s[2]} : Dims{1, s[1], s[0], s[2]};
    case 2:
      return Dims{1, 1, s[0], s[1]};
    default:
      Fail(fmt::format("{} has shape {} of rank {}; want {}", path, npy::ShapeString(s), s.size(),
                       RankHelp(layout)));
  }
}

npy::FloatArray ReadFloatOrFail(const std::string& option, const std::string& path) {
  RequirePath(option, path);
  StatusOr<npy::FloatArray> a = npy::ReadFloat(path);
  if (!a.ok()) Fail(a.status().message());
  // A non-null pointer even for an empty array (Lq = 0 is legal, a null
  // tensor is not).
  a.value().data.reserve(1);
  return std::move(a.value());
}

// Digits only, fitting int64: no sign, space, "0x" or exponent.
std::optional<int64_t> ParseDigits(std::string_view text) {
  if (text.empty() || text.find_first_not_of("0123456789") != std::string_view::npos) {
    return std::nullopt;
  }
  int64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// [+-] (D+ [. D*] | . D+) [(e|E) [+-] D+]: what C and Python print for a
// float; no hex, inf, nan, spaces or trailing text.
bool IsDecimal(std::string_view s) {
  size_t i = 0;
  const auto sign = [&] {
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
  };
  const auto digits = [&] {
    const size_t start = i;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
    return i - start;
  };
  sign();
  size_t mantissa = digits();
  if (i < s.size() && s[i] == '.') {
    ++i;
    mantissa += digits();
  }
  if (mantissa == 0) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    sign();
    if (digits() == 0) return false;
  }
  return i == s.size();
}

// A finite float option (--scale, --softcap): a decimal, strictly.
float ParseFloatOption(std::string_view option, const std::string& text, std::string_view want) {
  if (!IsDecimal(text)) {
    Fail(fmt::format("bad {} '{}': want {}", option, text, want));
  }
  // The C locale (the tool never sets another): '.' is the decimal point.
  const float value = static_cast<float>(std::strtod(text.c_str(), nullptr));
  if (!std::isfinite(value))
    Fail(fmt::format("bad {} '{}': outside the float32 range", option, text));
  return value;
}

// The names of a set of DTypes (a DTypeMask set): "f32, bf16, f16".
std::string DTypeNames(uint8_t set) {
  std::string names;
  for (int t = 0; t < kNumDTypes; ++t) {
    if (set & DTypeMask(DType(t)))
      names += (names.empty() ? "" : ", ") + std::string(DTypeName(DType(t)));
  }
  return names;
}

// The element type an option names, if given; one of `allowed` (what the
// problem API lets that tensor have: kernels/problem.h), else CliError
// "bad OPTION 'TEXT': WHO LIST".
std::optional<DType> ParseDType(std::string_view option, const std::optional<std::string>& text,
                                std::string_view who, uint8_t allowed) {
  if (!text) return std::nullopt;
  for (int t = 0; t < kNumDTypes; ++t) {
    if (*text == DTypeName(DType(t)) && (allowed & DTypeMask(DType(t)))) return DType(t);
  }
  const bool int8 = *text == DTypeName(DType::kI8);  // a type, but not for this tensor
  Fail(fmt::format("bad {} '{}': {} {}{}", option, *text, who, DTypeNames(allowed),
                   int8 ? " (int8 is for K and V only: --kv-dtype i8)" : ""));
}

// How a Q, K or V file holds its elements, for messages: "int8 '|i1'".
std::string FileType(const std::string& descr) {
  const std::string_view name = descr == "<f4"   ? "float32"
                                : descr == "<f8" ? "float64"
                                : descr == "<f2" ? "float16"
                                : descr == "<u2" ? "bfloat16 bits"
                                                 : "int8";
  return fmt::format("{} '{}'", name, descr);
}

Mask ParseMask(const std::string& text) {
  Mask m;
  if (text == "none") return m;
  if (text == "causal") {
    m.kind = MaskKind::kCausal;
    return m;
  }
  const std::string usage = fmt::format(
      "bad --mask '{}': want none, causal or window:LEFT,RIGHT with LEFT and RIGHT non-negative "
      "integers (e.g. window:128,0)",
      text);
  if (text.rfind("window:", 0) != 0) Fail(usage);
  const std::string_view rest = std::string_view(text).substr(7);
  const size_t comma = rest.find(',');
  if (comma == std::string_view::npos) Fail(usage);
  const std::optional<int64_t> left = ParseDigits(rest.substr(0, comma));
  const std::optional<int64_t> right = ParseDigits(rest.substr(comma + 1));
  if (!left || !right) Fail(usage);
  m.kind = MaskKind::kSlidingWindow;
  m.window_left = *left;
  m.window_right = *right;
  return m;
}

}  // namespace

void RequirePath(const std::string& option, const std::string& path) {
  if (path.empty()) Fail(fmt::format("bad {} '': want a path", option));
}

int64_t ParseIntOption(std::string_view option, const std::string& text, int64_t lo, int64_t hi,
                       std::string_view note) {
  const std::optional<int64_t> value = ParseDigits(text);
  if (!value || *value < lo || *value > hi) {
    Fail(fmt::format("bad {} '{}': want an integer from {} to {}{}", option, text, lo, hi, note));
  }
  return *value;
}

std::vector<float> ReadFloatOfShape(const std::string& option, const std::string& path,
                                    const std::vector<int64_t>& want, std::string_view what) {
  npy::FloatArray a = ReadFloatOrFail(option, path);
  if (a.shape != want) {
    Fail(fmt::format("{} {} has shape {}; want {}: {}", option, path, npy::ShapeString(a.shape),
                     npy::ShapeString(want), what));
  }
  return std::move(a.data);
}

Inputs::Inputs(const InputOptions& options) : options_(options) {
  if (options.layout == "bhsd") {
    layout_ = Layout::kBHLD;
  } else if (options.layout == "bshd") {
    layout_ = Layout::kBLHD;
  } else {
    Fail(fmt::format("bad --layout '{}': want bhsd ([B,H,L,d]) or bshd ([B,L,H,d])",
                     options.layout));
  }
  mask_spec_ = ParseMask(options.mask);
  if (options.scale) {
    scale_ = ParseFloatOption("--scale", *options.scale,
                              "a finite decimal number such as 0.125 or 1e-3");
  }
  if (options.threads) {
    run_options_.threads = static_cast<int>(ParseIntOption(
        "--threads", *options.threads, 1, kMaxThreads, " (omit --threads to use every core)"));
  }
  if (options.memory_budget) {
    std::optional<size_t> bytes = ParseBytes(*options.memory_budget);
    if (!bytes) {
      Fail(fmt::format(
          "bad --memory-budget '{}': want a byte count such as 4096, 512M or 12G (suffix B, K, "
          "M, G, T or KiB, MiB, GiB, TiB)",
          *options.memory_budget));
    }
    run_options_.memory_budget_bytes = *bytes;
  }
  budget_ = run_options_.memory_budget_bytes.value_or(DefaultMemoryBudgetBytes());
  const std::optional<DType> all =
      ParseDType("--dtype", options.dtype, "it sets Q, K, V and O, which all take", kFloatDTypes);
  const std::optional<DType> q_type =
      ParseDType("--q-dtype", options.q_dtype, "Q takes", kFloatDTypes);
  const std::optional<DType> kv_type =
      ParseDType("--kv-dtype", options.kv_dtype, "K and V take", kAllDTypes);
  const std::optional<DType> o_type =
      ParseDType("--out-dtype", options.out_dtype, "O takes", kFloatDTypes);
  dtypes_.o = o_type.value_or(all.value_or(DType::kF32));

  q_ = Read("--q", options.q);
  if (q_.dtype == DType::kI8) {
    Fail(
        fmt::format("{} is {}: int8 is for K and V only (with row scales); Q takes f32, bf16, "
                    "f16",
                    options.q, FileType(q_.descr)));
  }
  k_ = Read("--k", options.k);
  v_ = Read("--v", options.v);
  rank_ = static_cast<int>(q_.shape.size());
  const Dims q = DimsOf(q_.shape, options.q, layout_);
  const Dims k = DimsOf(k_.shape, options.k, layout_);
  const Dims v = DimsOf(v_.shape, options.v, layout_);
  auto two = [&](const std::string& a, const Operand& x, const std::string& b, const Operand& y) {
    return fmt::format("{} has shape {}, {} has shape {}", a, npy::ShapeString(x.shape), b,
                       npy::ShapeString(y.shape));
  };
  if (k_.shape.size() != q_.shape.size() || v_.shape.size() != q_.shape.size()) {
    Fail(fmt::format("ranks disagree: {}, {} has shape {}", two(options.q, q_, options.k, k_),
                     options.v, npy::ShapeString(v_.shape)));
  }
  const bool paged = options.block_table.has_value();
  if (paged && rank_ != 4) {
    Fail(
        fmt::format("--block-table needs rank-4 files (--k and --v are the pools [num_blocks, "
                    "Hkv, block_size, d] in bhsd); {}",
                    two(options.q, q_, options.k, k_)));
  }
  if (paged && (k.batch != v.batch)) {
    Fail(fmt::format("K and V pools have different block counts: {}",
                     two(options.k, k_, options.v, v_)));
  }
  if (!paged && (k.batch != q.batch || v.batch != q.batch)) {
    const bool kq = k.batch != q.batch;
    Fail(fmt::format("batch sizes disagree: {}",
                     kq ? two(options.q, q_, options.k, k_) : two(options.q, q_, options.v, v_)));
  }
  if (k.heads != v.heads) {
    Fail(fmt::format("K and V head counts (Hkv) disagree: {}", two(options.k, k_, options.v, v_)));
  }
  if (k.len != v.len) {
    Fail(fmt::format("K and V lengths (Lk) disagree: {}", two(options.k, k_, options.v, v_)));
  }
  if (q.dim != k.dim) {
    Fail(fmt::format("Q and K head dims (dk) disagree: {}", two(options.q, q_, options.k, k_)));
  }
  shape_ = Shape{q.batch, q.heads, k.heads, q.len, k.len, q.dim, v.dim};
  if (paged) {
    // K and V rows come through the table: Lk is its capacity.
    std::vector<int64_t> ts;
    const std::string want = fmt::format("a block table is [B={}, blocks per sequence]", q.batch);
    block_table_ = ReadInt32s("--block-table", *options.block_table, want,
                              "block index {} does not fit int32", 2, &ts);
    if (ts[0] != q.batch) {
      Fail(fmt::format("{} has shape {}; a block table is [B={}, blocks per sequence]",
                       *options.block_table, npy::ShapeString(ts), q.batch));
    }
    kv_pages_ = KvPages{block_table_, ts[1], k.len, k.batch};
    shape_.kv_len = ts[1] * k.len;
  }

  if (options.mask_file) {
    if (mask_spec_.kind != MaskKind::kNone) {
      Fail(
          fmt::format("--mask-file (an additive mask) cannot be combined with --mask {}; put "
                      "the -inf entries into the mask file instead",
                      options.mask));
    }
    mask_ = ReadFloatOrFail("--mask-file", *options.mask_file);
    const std::vector<int64_t>& s = mask_.shape;
    mask_spec_.kind = MaskKind::kAdditive;
    if (s.size() == 2) {
      mask_spec_.additive_shape = {1, 1, s[0], s[1]};
    } else if (s.size() == 4) {
      mask_spec_.additive_shape = {s[0], s[1], s[2], s[3]};
    } else {
      Fail(
          fmt::format("{} has shape {} of rank {}; an additive mask is [Lq,Lk] or "
                      "[B,H,Lq,Lk] (B and H may be 1)",
                      *options.mask_file, npy::ShapeString(s), s.size()));
    }
    mask_spec_.additive = mask_.data;
  }
  if (options.key_lengths) {
    key_lengths_ =
        ReadInt32s("--key-lengths", *options.key_lengths,
                   fmt::format("key lengths are rank 1, one per batch (B={})", shape_.batch),
                   fmt::format("key length {{}} is outside [0, Lk={}]", shape_.kv_len));
    mask_spec_.key_lengths = key_lengths_;  // present, even when empty: Validate checks B
  }

  ReadModifiers(options);
  ReadSequences(options);

  // Outputs are allocated before any kernel runs: bound them by the budget
  // (a 1-row Q against a 1-row V with a huge dv could otherwise ask for more
  // memory than the inputs hold).
  const double out_bytes = double(shape_.batch) * double(shape_.heads) * double(shape_.q_len) *
                           (double(DTypeBytes(dtypes_.o)) * double(shape_.value_dim) + 4.0);
  if (out_bytes > double(budget_)) {
    Fail(fmt::format("over budget: the output O [B={}, H={}, Lq={}, dv={}] needs {}, budget {}",
                     shape_.batch, shape_.heads, shape_.q_len, shape_.value_dim,
                     FormatBytes(out_bytes), FormatBytes(double(budget_))));
  }

  // The scales of int8 files (their shapes agree with K's and V's, checked
  // above), then the element types: as asked, else the file's own;
  // converted once, here.
  ReadScales("--k-scales", options.k_scales, k_);
  ReadScales("--v-scales", options.v_scales, v_);
  dtypes_.q = TargetType(q_, q_type, "--q-dtype", all);
  dtypes_.k = TargetType(k_, kv_type, "--kv-dtype", all);
  dtypes_.v = TargetType(v_, kv_type, "--kv-dtype", all);
  ConvertTo(q_, dtypes_.q);
  ConvertTo(k_, dtypes_.k);
  ConvertTo(v_, dtypes_.v);
}

const void* Inputs::Operand::data() const {
  switch (dtype) {
    case DType::kF32:
      return f32.data();
    case DType::kBF16:
    case DType::kF16:
      return half.data();
    case DType::kI8:
      return i8.data();
  }
  return nullptr;
}

Inputs::Operand Inputs::Read(const std::string& option, const std::string& path) {
  RequirePath(option, path);
  StatusOr<npy::TypedArray> a = npy::ReadTyped(path);
  if (!a.ok()) Fail(a.status().message());
  Operand x;
  x.option = option;
  x.path = path;
  x.shape = a->shape;
  x.descr = a->descr;
  x.dtype = a->dtype;
  x.f32 = std::move(a.value().f32);
  x.half = std::move(a.value().u16);
  x.i8 = std::move(a.value().i8);
  // A non-null pointer even for an empty array (Lq = 0 is legal, a null
  // tensor is not).
  x.f32.reserve(1);
  x.half.reserve(1);
  x.i8.reserve(1);
  return x;
}

void Inputs::ReadScales(const std::string& option, const std::optional<std::string>& scales_path,
                        Operand& x) {
  if (scales_path) RequirePath(option, *scales_path);
  const std::vector<int64_t> want(x.shape.begin(), x.shape.end() - 1);  // rank >= 2 here
  if (x.dtype != DType::kI8) {
    if (scales_path) {
      Fail(fmt::format(
          "{} {} is for an int8 ('|i1') {} file, but {} is {} (to quantize float values, drop "
          "{} and pass --kv-dtype i8)",
          option, *scales_path, x.option, x.path, FileType(x.descr), option));
    }
    return;
  }
  if (!scales_path) {
    Fail(fmt::format(
        "{} is {}: give its row scales with {} (a float32 '<f4' .npy of shape {}: one scale "
        "per row of d values, element = scale * int8)",
        x.path, FileType(x.descr), option, npy::ShapeString(want)));
  }
  npy::FloatArray a = ReadFloatOrFail(option, *scales_path);
  if (a.descr != "<f4") {
    // '<f8' or '<f2' would be rounded or widened silently: the scales are
    // the kernels' fp32 values exactly, so ask for exactly that.
    Fail(
        fmt::format("{}: dtype '{}' is not float32; the row scales of {} are float32 '<f4' "
                    "(e.g. s.astype('<f4'))",
                    *scales_path, a.descr, x.path));
  }
  if (a.shape != want) {
    Fail(fmt::format("{} has shape {}; want {}: one scale per row of {} {}", *scales_path,
                     npy::ShapeString(a.shape), npy::ShapeString(want), x.path,
                     npy::ShapeString(x.shape)));
  }
  for (size_t i = 0; i < a.data.size(); ++i) {
    if (!std::isfinite(a.data[i])) {
      // The position as a NumPy index, for the user to find it.
      std::vector<int64_t> at(want.size());
      size_t rest = i;
      for (size_t d = want.size(); d-- > 0;) {
        at[d] = int64_t(rest % size_t(want[d]));
        rest /= size_t(want[d]);
      }
      Fail(fmt::format("{}: scale {} at {} is not finite; every row of {} needs a finite scale",
                       *scales_path, a.data[i], npy::ShapeString(at), x.path));
    }
  }
  x.scales = std::move(a.data);
  x.scales.reserve(1);
}

DType Inputs::TargetType(const Operand& x, std::optional<DType> exact,
                         std::string_view exact_option, std::optional<DType> all) {
  if (x.dtype == DType::kI8) {
    // Dequantizing would round scale * q to the new type: not what an int8
    // file asks for, and never needed (the variants take int8 K and V).
    if (exact && *exact != DType::kI8) {
      Fail(fmt::format(
          "{} {}: {} is {} with row scales, which the tool does not convert (drop {}, or "
          "give float values to convert)",
          exact_option, DTypeName(*exact), x.path, FileType(x.descr), exact_option));
    }
    return DType::kI8;
  }
  if (exact) return *exact;
  // --dtype converts the fp32 files; one already in a reduced type is taken
  // as it is, so --dtype never rounds an f16 file to bf16 behind the user's
  // back.
  if (all && x.dtype == DType::kF32) return *all;
  return x.dtype;
}

void Inputs::ConvertTo(Operand& x, DType dtype) {
  if (x.dtype == dtype) return;  // as the file holds it: nothing rounds
  // The values in fp32: an f32 file's own, an f16 or bf16 file's widened
  // exactly. (An int8 file is never converted: TargetType.)
  std::vector<float> values;
  if (x.dtype == DType::kF32) {
    values = std::move(x.f32);
  } else {
    values.resize(x.half.size());
    for (size_t i = 0; i < values.size(); ++i) values[i] = LoadElement(x.dtype, &x.half[i]);
  }
  x.f32 = {};
  x.half = {};
  switch (dtype) {
    case DType::kF32:
      x.f32 = std::move(values);
      break;
    case DType::kBF16:
    case DType::kF16: {
      uint16_t (*narrow)(float) = dtype == DType::kBF16 ? BF16BitsFromF32 : F16BitsFromF32;
      x.half.resize(values.size());
      for (size_t i = 0; i < values.size(); ++i) x.half[i] = narrow(values[i]);
      break;
    }
    case DType::kI8: {
      // Rows of d elements (the last dimension, whatever the layout), each
      // with its own scale, in the file's row order.
      const int64_t d = x.shape.empty() ? 1 : x.shape.back();
      const int64_t rows = d > 0 ? int64_t(values.size()) / d : 0;
      x.i8.resize(values.size());
      x.scales.resize(rows);
      for (int64_t r = 0; r < rows; ++r) {
        x.scales[r] = QuantizeRow(values.data() + r * d, d, x.i8.data() + r * d);
      }
      break;
    }
  }
  x.dtype = dtype;
  x.f32.reserve(1);
  x.half.reserve(1);
  x.i8.reserve(1);
  x.scales.reserve(1);
}

RowScales Inputs::Scales(const Operand& x, int64_t heads, int64_t len) const {
  if (x.dtype != DType::kI8) return {};
  // One scale per row, in the file's order of rows: [B, Hkv, Lk] (bhsd) or
  // [B, Lk, Hkv] (bshd); a rank-3 or rank-2 file is the same with B (and H) 1.
  return {x.scales.data(),
          layout_ == Layout::kBHLD ? Strides::BHLD(heads, len, 1) : Strides::BLHD(heads, len, 1)};
}

OutputBuffer::OutputBuffer(DType dtype, int64_t elements) : dtype_(dtype) {
  if (dtype == DType::kF32) {
    f32_.resize(elements);
    f32_.reserve(1);  // non-null when empty (Lq = 0)
  } else {
    half_.resize(elements);
    half_.reserve(1);
  }
}

std::string OutputBuffer::Serialize(std::span<const int64_t> shape) const {
  switch (dtype_) {
    case DType::kF16:
      return npy::SerializeFloat16(shape, half_);
    case DType::kBF16:
      return npy::SerializeBFloat16(shape, half_);
    default:
      return npy::SerializeFloat(shape, f32_);
  }
}

std::string OutputBuffer::FileNote() const {
  switch (dtype_) {
    case DType::kF16:
      return " f16 ('<f2')";
    case DType::kBF16:
      return " bf16 bits ('<u2')";
    default:
      return "";
  }
}

std::vector<int64_t> Inputs::OutputShape() const {
  const Shape& s = shape_;
  const bool bhsd = layout_ == Layout::kBHLD;
  switch (rank_) {
    case 4:
      return bhsd ? std::vector<int64_t>{s.batch, s.heads, s.q_len, s.value_dim}
                  : std::vector<int64_t>{s.batch, s.q_len, s.heads, s.value_dim};
    case 3:
      return bhsd ? std::vector<int64_t>{s.heads, s.q_len, s.value_dim}
                  : std::vector<int64_t>{s.q_len, s.heads, s.value_dim};
    default:
      return {s.q_len, s.value_dim};
  }
}

std::vector<int64_t> Inputs::LseShape() const {
  std::vector<int64_t> full = {shape_.batch, shape_.heads, shape_.q_len};
  return std::vector<int64_t>(full.begin() + (4 - rank_), full.end());
}

std::vector<int64_t> Inputs::WeightsShape() const {
  std::vector<int64_t> full = {shape_.batch, shape_.heads, shape_.q_len, shape_.kv_len};
  return std::vector<int64_t>(full.begin() + (4 - rank_), full.end());
}

int64_t Inputs::OutputElements() const {
  return shape_.batch * shape_.heads * shape_.q_len * shape_.value_dim;
}

std::vector<int32_t> ReadInt32s(const std::string& option, const std::string& path,
                                std::string_view rank_note, std::string_view range_note,
                                size_t rank, std::vector<int64_t>* shape) {
  RequirePath(option, path);
  StatusOr<npy::IntArray> ints = npy::ReadInt(path);
  if (!ints.ok()) Fail(ints.status().message());
  if (shape != nullptr) *shape = ints->shape;
  if (ints->shape.size() != rank) {
    Fail(fmt::format("{} has shape {}; {}", path, npy::ShapeString(ints->shape), rank_note));
  }
  std::vector<int32_t> out;
  for (int64_t x : ints->data) {
    if (x < std::numeric_limits<int32_t>::min() || x > std::numeric_limits<int32_t>::max()) {
      Fail(fmt::format("{}: {}", path, fmt::format(fmt::runtime(range_note), x)));
    }
    out.push_back(static_cast<int32_t>(x));
  }
  return out;
}

// One float per query head from a float .npy file [H] (--alibi, --sinks).
std::vector<float> Inputs::ReadPerHead(const std::string& option, const std::string& path) const {
  std::vector<float> values = ReadFloatOfShape(option, path, {shape_.heads}, "one per query head");
  return values;
}

void Inputs::ReadModifiers(const InputOptions& options) {
  if (options.causal_top_left) mask_spec_.diagonal = Diagonal::kTopLeft;
  if (options.causal_at_key_lengths) mask_spec_.diagonal = Diagonal::kKeyLengths;
  if (options.softcap) {
    softcap_ = ParseFloatOption("--softcap", *options.softcap, "a cap > 0 such as 30 or 50");
  }
  if (options.alibi) {
    if (*options.alibi == "standard") {
      // Press et al. (ALiBi): head h of H gets 2^(-8(h+1)/H).
      for (int64_t h = 0; h < shape_.heads; ++h) {
        alibi_slopes_.push_back(std::exp2(-8.0f * float(h + 1) / float(shape_.heads)));
      }
    } else {
      alibi_slopes_ = ReadPerHead("--alibi", *options.alibi);
    }
  }
  if (options.sinks) sinks_ = ReadPerHead("--sinks", *options.sinks);
}

void Inputs::ReadSequences(const InputOptions& options) {
  if (!options.cu_seqlens_q && !options.cu_seqlens_k) return;
  if (!options.cu_seqlens_q || !options.cu_seqlens_k) {
    Fail(
        fmt::format("--cu-seqlens-{} is missing: packed sequences need both --cu-seqlens-q and "
                    "--cu-seqlens-k",
                    options.cu_seqlens_q ? "k" : "q"));
  }
  const struct {
    const char* option;
    const std::string& path;
    std::vector<int32_t>& offsets;
  } files[] = {{"--cu-seqlens-q", *options.cu_seqlens_q, cu_seqlens_q_},
               {"--cu-seqlens-k", *options.cu_seqlens_k, cu_seqlens_k_}};
  for (const auto& f : files) {
    f.offsets = ReadInt32s(f.option, f.path,
                           "cu_seqlens are rank 1: S + 1 offsets, 0 first and the packed length "
                           "last",
                           "offset {} does not fit int32");
  }
  mask_spec_.sequences = PackedSequences{cu_seqlens_q_, cu_seqlens_k_};
}

Problem Inputs::MakeProblem(OutputBuffer& o, std::span<float> lse, std::span<float> weights) const {
  Problem p = attn::MakeProblem(shape_, q_.data(), k_.data(), v_.data(), o.data(), layout_,
                                {dtypes_.q, dtypes_.k, dtypes_.v, o.dtype()});
  // The K and V files' own rows: [B, Hkv, Lk], or the pools' [num_blocks,
  // Hkv, block_size].
  const int64_t kv_rows = kv_pages_ ? kv_pages_->block_size : shape_.kv_len;
  if (kv_pages_) {
    const Problem pools = attn::MakeProblem({kv_pages_->num_blocks, shape_.heads, shape_.kv_heads,
                                             0, kv_rows, shape_.head_dim, shape_.value_dim},
                                            nullptr, nullptr, nullptr, nullptr, layout_);
    p.k.strides = pools.k.strides;
    p.v.strides = pools.v.strides;
    p.kv_pages = kv_pages_;
  }
  p.k_scales = Scales(k_, shape_.kv_heads, kv_rows);
  p.v_scales = Scales(v_, shape_.kv_heads, kv_rows);
  p.mask = mask_spec_;
  p.scale = scale_;
  p.modifiers.softcap = softcap_;
  p.modifiers.alibi_slopes = alibi_slopes_;
  p.modifiers.sinks = sinks_;
  p.lse = lse;
  p.weights = weights;
  return p;
}

std::string Inputs::Describe() const {
  std::string s =
      fmt::format("{} {}, {} {}, {} {}", options_.q, npy::ShapeString(q_.shape), options_.k,
                  npy::ShapeString(k_.shape), options_.v, npy::ShapeString(v_.shape));
  if (options_.mask_file) {
    s += fmt::format(", {} {}", *options_.mask_file, npy::ShapeString(mask_.shape));
  }
  return s;
}

std::vector<NamedPath> Inputs::Files() const {
  std::vector<NamedPath> files = {{"--q", options_.q}, {"--k", options_.k}, {"--v", options_.v}};
  if (options_.k_scales) files.push_back({"--k-scales", *options_.k_scales});
  if (options_.v_scales) files.push_back({"--v-scales", *options_.v_scales});
  if (options_.mask_file) files.push_back({"--mask-file", *options_.mask_file});
  if (options_.key_lengths) files.push_back({"--key-lengths", *options_.key_lengths});
  if (options_.cu_seqlens_q) files.push_back({"--cu-seqlens-q", *options_.cu_seqlens_q});
  if (options_.cu_seqlens_k) files.push_back({"--cu-seqlens-k", *options_.cu_seqlens_k});
  if (options_.block_table) files.push_back({"--block-table", *options_.block_table});
  if (options_.alibi && *options_.alibi != "standard")
    files.push_back({"--alibi", *options_.alibi});
  if (options_.sinks) files.push_back({"--sinks", *options_.sinks});
  return files;
}

const Variant& VariantOrFail(const std::string& name) {
  const Variant* v = FindVariant(name);
  if (v == nullptr) Fail(fmt::format("unknown variant '{}'; known: {}", name, VariantNames()));
  return *v;
}

void FailStatus(const Status& status, const Inputs& inputs) {
  switch (status.code()) {
    case StatusCode::kResourceExhausted:
      Fail("over budget: " + status.message());
    case StatusCode::kInvalidArgument:
      Fail(fmt::format("invalid problem: {} (inputs: {})", status.message(), inputs.Describe()));
    case StatusCode::kUnimplemented:
    case StatusCode::kNotFound:
      Fail(status.message());
    default:
      Fail(status.ToString(), kExitFailed);
  }
}

namespace {

// The inputs' run options, timing the threads (RunOptions::time_threads) when
// the caller wants stats: `run` and `grad` print where 2+ threads' time went.
RunOptions TimedOptions(const Inputs& inputs, const RunStats* stats) {
  RunOptions options = inputs.run_options();
  options.time_threads = stats != nullptr;
  return options;
}

}  // namespace

double RunVariant(const Variant& variant, const Inputs& inputs, const Problem& problem,
                  RunStats* stats) {
  // Prepare first so a refusal (invalid, over budget) is told apart from a
  // kernel failure and never timed.
  StatusOr<ValidProblem> valid = Prepare(variant, problem, inputs.run_options());
  if (!valid.ok()) FailStatus(valid.status(), inputs);
    // Start OpenMP's thread pool outside the timed region.
#pragma omp parallel num_threads(ResolveThreads(inputs.run_options().threads))
  { [[maybe_unused]] volatile int warm = 0; }
  const auto start = std::chrono::steady_clock::now();
  const Status status = Run(variant, problem, TimedOptions(inputs, stats), stats);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!status.ok()) FailStatus(status, inputs);
  return seconds;
}

double RunBackwardVariant(const Variant& variant, const Inputs& inputs, const GradProblem& problem,
                          RunStats* stats) {
  StatusOr<ValidGradProblem> valid = PrepareBackward(variant, problem, inputs.run_options());
  if (!valid.ok()) FailStatus(valid.status(), inputs);
#pragma omp parallel num_threads(ResolveThreads(inputs.run_options().threads))
  { [[maybe_unused]] volatile int warm = 0; }
  const auto start = std::chrono::steady_clock::now();
  const Status status = RunBackward(variant, problem, TimedOptions(inputs, stats), stats);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!status.ok()) FailStatus(status, inputs);
  return seconds;
}

}  // namespace attn::cli
