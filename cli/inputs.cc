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

Dims DimsOf(const npy::FloatArray& a, const std::string& path, Layout layout) {
  const std::vector<int64_t>& s = a.shape;
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

float ParseScale(const std::string& text) {
  if (!IsDecimal(text)) {
    Fail(fmt::format("bad --scale '{}': want a finite decimal number such as 0.125 or 1e-3", text));
  }
  // The C locale (the tool never sets another): '.' is the decimal point.
  const float value = static_cast<float>(std::strtod(text.c_str(), nullptr));
  if (!std::isfinite(value)) Fail(fmt::format("bad --scale '{}': outside the float32 range", text));
  return value;
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
  if (options.scale) scale_ = ParseScale(*options.scale);
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

  q_ = ReadFloatOrFail("--q", options.q);
  k_ = ReadFloatOrFail("--k", options.k);
  v_ = ReadFloatOrFail("--v", options.v);
  rank_ = static_cast<int>(q_.shape.size());
  const Dims q = DimsOf(q_, options.q, layout_);
  const Dims k = DimsOf(k_, options.k, layout_);
  const Dims v = DimsOf(v_, options.v, layout_);
  auto two = [&](const std::string& a, const npy::FloatArray& x, const std::string& b,
                 const npy::FloatArray& y) {
    return fmt::format("{} has shape {}, {} has shape {}", a, npy::ShapeString(x.shape), b,
                       npy::ShapeString(y.shape));
  };
  if (k_.shape.size() != q_.shape.size() || v_.shape.size() != q_.shape.size()) {
    Fail(fmt::format("ranks disagree: {}, {} has shape {}", two(options.q, q_, options.k, k_),
                     options.v, npy::ShapeString(v_.shape)));
  }
  if (k.batch != q.batch || v.batch != q.batch) {
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
    const std::string& path = *options.key_lengths;
    RequirePath("--key-lengths", path);
    StatusOr<npy::IntArray> lens = npy::ReadInt(path);
    if (!lens.ok()) Fail(lens.status().message());
    if (lens->shape.size() != 1) {
      Fail(fmt::format("{} has shape {}; key lengths are rank 1, one per batch (B={})", path,
                       npy::ShapeString(lens->shape), shape_.batch));
    }
    for (int64_t len : lens->data) {
      if (len < std::numeric_limits<int32_t>::min() || len > std::numeric_limits<int32_t>::max()) {
        Fail(fmt::format("{}: key length {} is outside [0, Lk={}]", path, len, shape_.kv_len));
      }
      key_lengths_.push_back(static_cast<int32_t>(len));
    }
    mask_spec_.key_lengths = key_lengths_;  // present, even when empty: Validate checks B
  }

  // Outputs are allocated before any kernel runs: bound them by the budget
  // (a 1-row Q against a 1-row V with a huge dv could otherwise ask for more
  // memory than the inputs hold).
  const double out_bytes = 4.0 * double(shape_.batch) * double(shape_.heads) *
                           double(shape_.q_len) * double(shape_.value_dim + 1);
  if (out_bytes > double(budget_)) {
    Fail(fmt::format("over budget: the output O [B={}, H={}, Lq={}, dv={}] needs {}, budget {}",
                     shape_.batch, shape_.heads, shape_.q_len, shape_.value_dim,
                     FormatBytes(out_bytes), FormatBytes(double(budget_))));
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

Problem Inputs::MakeProblem(float* o, std::span<float> lse, std::span<float> weights) const {
  Problem p = attn::MakeProblem(shape_, q_.data.data(), k_.data.data(), v_.data.data(), o, layout_);
  p.mask = mask_spec_;
  p.scale = scale_;
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
  if (options_.mask_file) files.push_back({"--mask-file", *options_.mask_file});
  if (options_.key_lengths) files.push_back({"--key-lengths", *options_.key_lengths});
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
  const Status status = Run(variant, problem, inputs.run_options(), stats);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!status.ok()) FailStatus(status, inputs);
  return seconds;
}

}  // namespace attn::cli
