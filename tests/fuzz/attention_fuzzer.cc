// libFuzzer harness: differential fuzzing of every registry variant against
// the fp64 reference.
//
// The input bytes decode (FuzzedDataProvider) into a small problem: shapes
// (Lq, Lk in [0, 24], dk, dv in [1, 20], B <= 2, GQA 1..3), layout (BHLD or
// BLHD), row padding, mask kind (none, causal, window of any size, 2-D/4-D
// additive), key lengths, scale, thread count, a seed for the base values
// (uniform, or large logits) and up to 12 "specials" written over single
// elements of Q, K, V or the additive mask: NaN, ±inf, ±1e4, ±1e30, ±3e38,
// float32's lowest (a padding mask), ±tiny, 0.
//
// One input in eight is instead mutated into an invalid problem (a bad size,
// stride, mask shape, key length, window, scale): Validate() and every
// variant's Run() must reject it with InvalidArgument, without reading it.
//
// For valid problems every variant runs on NaN-poisoned outputs and each query
// row (b, h, i) is checked by what its inputs allow (the semantics of
// kernels/problem.h):
//   1. No structurally visible key: O = 0, lse = -inf, weights 0, exactly.
//   2. NaN in Q row i, in a visible K row, or in a visible mask entry: the
//      whole O row and lse are NaN.
//   3. Otherwise, when the row's logits evaluate in fp32 without overflow
//      (LogitsRepresentable: the condition of kernels/problem.h, which holds
//      for every finite logit up to ±FLT_MAX, a float32-lowest padding mask
//      included) and the mask entries are finite or ±inf:
//        a visible +inf mask entry: O row and lse NaN;
//        else lse matches the reference within ErrorBound; when the visible
//        V rows are finite and Lk·max|v| cannot overflow, O and the weights
//        match within the bound; else O[d] is NaN wherever a visible V row
//        has NaN in column d (unless every logit is -inf: a fully masked row
//        is 0).
//   4. Anything else (fp32 overflow of q·k): only "no crash, no sanitizer
//      report". The double reference would not overflow there.
// A violation prints the variant, the row and the problem and aborts.
#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/registry.h"
#include "reference/reference.h"
#include "tests/test_support.h"

namespace {

using namespace attn;  // NOLINT: a harness, not a header

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
// Rounding to nearest overflows fp32 from 2^128 - 2^103 on (FLT_MAX is
// 2^128 - 2^104).
const double kOverflow = std::ldexp(1.0, 128) - std::ldexp(1.0, 103);

[[noreturn]] void Fail(const std::string& what, const Variant& variant, const Problem& p) {
  std::fprintf(stderr, "attention_fuzzer: %s\n  variant=%s %s scale=%g\n", what.c_str(),
               variant.name, Describe(p.shape, p.mask).c_str(), p.scale ? double(*p.scale) : -1.0);
  std::abort();
}

struct Fuzzed {
  Shape shape;
  std::vector<float> q, k, v, o, mask, lse, weights;
  std::vector<int32_t> key_lengths;
  Problem p;
  int threads = 1;
};

Strides MakeStrides(bool blhd, int64_t heads, int64_t len, int64_t dim, int64_t pad) {
  const int64_t row = dim + pad;
  return blhd ? Strides{len * heads * row, row, heads * row, 1}
              : Strides{heads * len * row, len * row, row, 1};
}

// Decodes a valid problem. Returns the number of bytes left for mutations.
void Decode(FuzzedDataProvider& in, Fuzzed& f) {
  Shape& s = f.shape;
  s.batch = in.ConsumeIntegralInRange<int64_t>(1, 2);
  s.kv_heads = in.ConsumeIntegralInRange<int64_t>(1, 2);
  s.heads = s.kv_heads * in.ConsumeIntegralInRange<int64_t>(1, 3);
  s.q_len = in.ConsumeIntegralInRange<int64_t>(0, 24);
  s.kv_len = in.ConsumeIntegralInRange<int64_t>(0, 24);
  s.head_dim = in.ConsumeIntegralInRange<int64_t>(1, 20);
  s.value_dim = in.ConsumeBool() ? s.head_dim : in.ConsumeIntegralInRange<int64_t>(1, 20);
  const bool blhd = in.ConsumeBool();
  const int64_t pad = in.ConsumeIntegralInRange<int64_t>(0, 3);
  const auto kind = static_cast<MaskKind>(in.ConsumeIntegralInRange<int>(0, kNumMaskKinds - 1));
  f.threads = in.ConsumeIntegralInRange<int>(1, 2);
  const uint32_t seed = in.ConsumeIntegral<uint32_t>();
  const float q_scale = in.ConsumeBool() ? 1.0f : 300.0f;  // large logits

  // Base values: uniform [-1, 1] (Q scaled), one element of slack in front
  // so empty tensors still have a non-null pointer.
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  auto fill = [&](std::vector<float>& buf, int64_t heads, int64_t len, int64_t dim, float scale) {
    buf.resize(1 + s.batch * heads * len * (dim + pad));
    for (float& x : buf) x = scale * uniform(rng);
  };
  fill(f.q, s.heads, s.q_len, s.head_dim, q_scale);
  fill(f.k, s.kv_heads, s.kv_len, s.head_dim, 1.0f);
  fill(f.v, s.kv_heads, s.kv_len, s.value_dim, 1.0f);
  f.o.assign(1 + s.batch * s.heads * s.q_len * (s.value_dim + pad), kNaN);

  Problem& p = f.p;
  p.shape = s;
  p.q = {f.q.data() + 1, MakeStrides(blhd, s.heads, s.q_len, s.head_dim, pad)};
  p.k = {f.k.data() + 1, MakeStrides(blhd, s.kv_heads, s.kv_len, s.head_dim, pad)};
  p.v = {f.v.data() + 1, MakeStrides(blhd, s.kv_heads, s.kv_len, s.value_dim, pad)};
  p.o = {f.o.data() + 1, MakeStrides(blhd, s.heads, s.q_len, s.value_dim, pad)};

  p.mask.kind = kind;
  if (kind == MaskKind::kSlidingWindow) {
    p.mask.window_left = in.ConsumeIntegralInRange<int64_t>(0, 30);
    p.mask.window_right = in.ConsumeIntegralInRange<int64_t>(0, 30);
  }
  if (kind == MaskKind::kAdditive) {
    const bool full = in.ConsumeBool();
    AdditiveMaskShape& a = p.mask.additive_shape;
    a = {full ? s.batch : 1, full ? s.heads : 1, s.q_len, s.kv_len};
    f.mask.resize(1 + a.batch * a.heads * a.rows * a.cols);
    const float minus_inf_share = in.ConsumeProbability<float>();
    for (float& x : f.mask) x = (uniform(rng) + 1) / 2 < minus_inf_share ? -kInf : 2 * uniform(rng);
    p.mask.additive = std::span<const float>(f.mask.data() + 1, f.mask.size() - 1);
  }
  if (in.ConsumeBool()) {
    for (int64_t b = 0; b < s.batch; ++b) {
      f.key_lengths.push_back(in.ConsumeIntegralInRange<int32_t>(0, int32_t(s.kv_len)));
    }
    p.mask.key_lengths = f.key_lengths;
  }
  if (in.ConsumeBool()) {
    const float scales[] = {1e-3f, 0.1f, 1.0f, 10.0f, 100.0f};
    p.scale = scales[in.ConsumeIntegralInRange<int>(0, 4)];
  }
  if (in.ConsumeBool()) {
    f.lse.assign(1 + s.batch * s.heads * s.q_len, kNaN);
    p.lse = std::span<float>(f.lse.data() + 1, f.lse.size() - 1);
  }
  if (in.ConsumeBool()) {
    f.weights.assign(1 + s.batch * s.heads * s.q_len * s.kv_len, kNaN);
    p.weights = std::span<float>(f.weights.data() + 1, f.weights.size() - 1);
  }

  // Specials over single elements (anywhere in the buffer, padding included).
  const float specials[] = {kNaN,   kInf,   -kInf, 1e4f,   -1e4f,
                            1e30f,  -1e30f, 3e38f, -3e38f, std::numeric_limits<float>::lowest(),
                            1e-30f, 0.0f};
  const int count = in.ConsumeIntegralInRange<int>(0, 12);
  for (int n = 0; n < count && in.remaining_bytes() > 0; ++n) {
    std::vector<float>* target[] = {&f.q, &f.k, &f.v, &f.mask};
    std::vector<float>& buf = *target[in.ConsumeIntegralInRange<int>(0, 3)];
    if (buf.size() <= 1) continue;
    const size_t at = 1 + in.ConsumeIntegralInRange<size_t>(0, buf.size() - 2);
    buf[at] = specials[in.ConsumeIntegralInRange<int>(0, std::size(specials) - 1)];
  }
}

// Turns a valid problem into an invalid one; returns what it broke.
const char* Break(FuzzedDataProvider& in, Fuzzed& f) {
  Problem& p = f.p;
  switch (in.ConsumeIntegralInRange<int>(0, 11)) {
    case 0:
      p.shape.batch = -in.ConsumeIntegralInRange<int64_t>(0, 1 << 20);
      return "batch";
    case 1:
      p.shape.head_dim = -in.ConsumeIntegralInRange<int64_t>(0, 5);
      return "dk";
    case 2:
      p.shape.kv_heads = p.shape.heads + 1;
      return "Hkv";
    case 3:
      p.k.strides.elem = in.ConsumeIntegralInRange<int64_t>(2, 9);
      return "elem stride";
    case 4:
      p.v.strides.row = -in.ConsumeIntegralInRange<int64_t>(1, 100);
      return "negative stride";
    case 5:
      p.scale = in.ConsumeBool() ? kNaN : -kInf;
      return "scale";
    case 6:
      p.mask.kind = MaskKind::kSlidingWindow;
      p.mask.window_left = -in.ConsumeIntegralInRange<int64_t>(1, 1000);
      return "window";
    case 7:
      f.key_lengths.assign(p.shape.batch, int32_t(p.shape.kv_len + 1));
      p.mask.key_lengths = f.key_lengths;
      return "key length";
    case 8:
      p.mask.kind = MaskKind::kAdditive;
      p.mask.additive_shape = {1, 1, p.shape.q_len + 1, p.shape.kv_len};
      f.mask.assign(1 + (p.shape.q_len + 1) * p.shape.kv_len, 0.0f);
      p.mask.additive = std::span<const float>(f.mask.data() + 1, f.mask.size() - 1);
      return "mask shape";
    case 9:
      p.o.data = nullptr;
      return "null O";
    case 10:
      p.shape.q_len = int64_t{1} << in.ConsumeIntegralInRange<int>(40, 62);
      p.q.strides = {0, 0, int64_t{1} << 20, 1};
      return "overflow";
    default:
      p.lse = std::span<float>(f.o.data() + 1, size_t(p.shape.batch * p.shape.heads) + 1);
      return "lse size";
  }
}

const float* Row(const TensorRef<const float>& t, int64_t b, int64_t h, int64_t i) {
  return t.data + b * t.strides.batch + h * t.strides.head + i * t.strides.row;
}

// Checks one variant's output against the reference, row by row (see top).
void CheckRows(const Variant& variant, const Problem& p, const reference::Result& want) {
  const Shape& s = p.shape;
  const int64_t group = s.heads / s.kv_heads;
  char where[160];
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h)
      for (int64_t i = 0; i < s.q_len; ++i) {
        std::snprintf(where, sizeof(where), "row [b=%lld,h=%lld,i=%lld]", (long long)b,
                      (long long)h, (long long)i);
        const int64_t row = (b * s.heads + h) * s.q_len + i;
        const float* o =
            p.o.data + b * p.o.strides.batch + h * p.o.strides.head + i * p.o.strides.row;
        const float* lse = p.lse.empty() ? nullptr : &p.lse[row];
        const float* w = p.weights.empty() ? nullptr : &p.weights[row * s.kv_len];
        const float* additive = nullptr;
        if (p.mask.kind == MaskKind::kAdditive) {
          const AdditiveMaskShape& a = p.mask.additive_shape;
          additive =
              p.mask.additive.data() +
              (((a.batch == 1 ? 0 : b) * a.heads + (a.heads == 1 ? 0 : h)) * a.rows + i) * a.cols;
        }
        // What the row touches. Logits are representable when no fp32
        // evaluation of them can overflow (kernels/problem.h): in double,
        // with g = (dk + 2)·2^-24 for the rounding of the dot product.
        const double scale = p.scale ? double(*p.scale) : 1.0 / std::sqrt(double(s.head_dim));
        const double g = double(s.head_dim + 2) * std::ldexp(1.0, -24);
        int64_t visible = 0;
        bool nan_logit = false, representable = true, plus_inf = false, all_minus_inf = true;
        bool finite_v = true;
        double v_max = 0;
        std::vector<bool> nan_column(s.value_dim, false);
        const float* q = Row(p.q, b, h, i);
        for (int64_t d = 0; d < s.head_dim; ++d) {
          nan_logit |= std::isnan(q[d]);
          // Q pre-scaled (flash) must not overflow either.
          representable &= std::fabs(double(q[d])) * scale * (1 + g) < kOverflow;
        }
        for (int64_t j = 0; j < s.kv_len; ++j) {
          if (!reference::KeyVisible(p, b, i, j)) continue;
          ++visible;
          const float* k = Row(p.k, b, h / group, j);
          const float* v = Row(p.v, b, h / group, j);
          double dot_abs = 0;
          for (int64_t d = 0; d < s.head_dim; ++d) {
            nan_logit |= std::isnan(k[d]);
            dot_abs += std::fabs(double(q[d]) * double(k[d]));
          }
          for (int64_t d = 0; d < s.value_dim; ++d) {
            finite_v &= std::isfinite(v[d]);
            v_max = std::max(v_max, std::fabs(double(v[d])));
            if (std::isnan(v[d])) nan_column[d] = true;
          }
          const float m = additive ? additive[j] : 0.0f;
          nan_logit |= std::isnan(m);
          plus_inf |= m == kInf;
          if (m != -kInf) all_minus_inf = false;
          const double m_abs = std::isinf(m) ? 0.0 : std::fabs(double(m));
          representable &=
              (1 + g) * dot_abs < kOverflow && (1 + g) * scale * dot_abs + m_abs < kOverflow;
        }
        // P·V sums at most Lk weights of at most 1 times |v|.
        const bool finite_o = finite_v && double(visible) * v_max * (1 + g) < kOverflow;
        // 1. Nothing visible.
        if (visible == 0) {
          for (int64_t d = 0; d < s.value_dim; ++d)
            if (o[d] != 0.0f) Fail(std::string(where) + ": fully masked, O != 0", variant, p);
          if (lse && *lse != -kInf) Fail(std::string(where) + ": lse != -inf", variant, p);
          for (int64_t j = 0; w && j < s.kv_len; ++j)
            if (w[j] != 0.0f) Fail(std::string(where) + ": weight != 0", variant, p);
          continue;
        }
        // 2. A NaN logit.
        if (nan_logit) {
          for (int64_t d = 0; d < s.value_dim; ++d)
            if (!std::isnan(o[d])) Fail(std::string(where) + ": NaN logit, O not NaN", variant, p);
          if (lse && !std::isnan(*lse)) Fail(std::string(where) + ": NaN logit, lse", variant, p);
          continue;
        }
        // 4. Possible fp32 overflow: nothing to compare.
        if (!representable) continue;
        // 3. Logits fp32 can hold.
        if (plus_inf) {
          for (int64_t d = 0; d < s.value_dim; ++d)
            if (!std::isnan(o[d])) Fail(std::string(where) + ": +inf logit, O not NaN", variant, p);
          if (lse && !std::isnan(*lse)) Fail(std::string(where) + ": +inf logit, lse", variant, p);
          continue;
        }
        const testing::RowBound bound = testing::ErrorBound(p, b, h, i);
        auto near = [](double got, double want, double tol) {
          if (std::isinf(want) || std::isnan(want))
            return got == want || (std::isnan(got) && std::isnan(want));
          return std::fabs(got - want) <= tol;
        };
        if (lse && !near(*lse, want.lse[row], bound.lse)) {
          Fail(std::string(where) + ": lse " + std::to_string(*lse) + " want " +
                   std::to_string(want.lse[row]),
               variant, p);
        }
        if (finite_o) {
          for (int64_t d = 0; d < s.value_dim; ++d) {
            if (!near(o[d], want.o[row * s.value_dim + d], bound.o)) {
              Fail(std::string(where) + ": O[d=" + std::to_string(d) + "] " + std::to_string(o[d]) +
                       " want " + std::to_string(want.o[row * s.value_dim + d]) + " bound " +
                       std::to_string(bound.o),
                   variant, p);
            }
          }
          for (int64_t j = 0; w && j < s.kv_len; ++j) {
            if (!near(w[j], want.weights[row * s.kv_len + j], bound.weights)) {
              Fail(std::string(where) + ": weight j=" + std::to_string(j), variant, p);
            }
          }
        } else if (all_minus_inf) {
          for (int64_t d = 0; d < s.value_dim; ++d)
            if (o[d] != 0.0f) Fail(std::string(where) + ": all -inf, O != 0", variant, p);
        } else {
          for (int64_t d = 0; d < s.value_dim; ++d)
            if (nan_column[d] && !std::isnan(o[d])) {
              Fail(std::string(where) + ": NaN in a visible V column did not reach O", variant, p);
            }
        }
      }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const bool invalid = in.ConsumeIntegralInRange<int>(0, 7) == 0;
  Fuzzed f;
  Decode(in, f);
  if (invalid) {
    const char* what = Break(in, f);
    const auto valid = Validate(f.p);
    if (valid.ok()) {
      std::fprintf(stderr, "attention_fuzzer: invalid problem (%s) accepted\n", what);
      std::abort();
    }
    for (const Variant* variant : Registry()) {
      const Status s = attn::Run(*variant, f.p);
      if (s.code() != StatusCode::kInvalidArgument) {
        Fail(std::string("invalid problem (") + what + ") gave " + s.ToString(), *variant, f.p);
      }
    }
    return 0;
  }
  const auto valid = Validate(f.p);
  if (!valid.ok()) {
    std::fprintf(stderr, "attention_fuzzer: a valid problem was rejected: %s\n",
                 valid.status().ToString().c_str());
    std::abort();
  }
  const bool want_weights = !f.p.weights.empty();
  const auto want = reference::Attention(f.p, want_weights);
  if (!want.ok()) std::abort();
  const std::span<float> weights = f.p.weights;
  for (const Variant* variant : Registry()) {
    std::fill(f.o.begin(), f.o.end(), kNaN);
    std::fill(f.lse.begin(), f.lse.end(), kNaN);
    std::fill(f.weights.begin(), f.weights.end(), kNaN);
    f.p.weights = variant->supports_weights ? weights : std::span<float>();
    RunOptions options;
    options.threads = f.threads;
    const Status s = attn::Run(*variant, f.p, options);
    if (!s.ok()) Fail("run failed: " + s.ToString(), *variant, f.p);
    CheckRows(*variant, f.p, *want);
  }
  return 0;
}
