#include "testing/problem_data.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

namespace attn::testing {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInfF = std::numeric_limits<float>::infinity();

Strides MakeStrides(Layout layout, int64_t heads, int64_t len, int64_t dim, int64_t pad) {
  const int64_t row = dim + pad;
  return layout == Layout::kBHLD ? Strides{heads * len * row, len * row, row, 1}
                                 : Strides{len * heads * row, row, heads * row, 1};
}

int64_t Elements(const Shape& s, int64_t heads, int64_t len, int64_t dim, int64_t pad) {
  return s.batch * heads * len * (dim + pad);
}

}  // namespace

const float* AdditiveRow(const Problem& p, int64_t b, int64_t h, int64_t i) {
  if (p.mask.kind != MaskKind::kAdditive) return nullptr;
  const AdditiveMaskShape& a = p.mask.additive_shape;
  return p.mask.additive.data() +
         (((a.batch == 1 ? 0 : b) * a.heads + (a.heads == 1 ? 0 : h)) * a.rows + i) * a.cols;
}

std::string ProblemSpec::Name() const {
  const Shape& s = shape;
  std::string name = "Lq" + std::to_string(s.q_len) + "_Lk" + std::to_string(s.kv_len) + "_dk" +
                     std::to_string(s.head_dim) + "_dv" + std::to_string(s.value_dim) + "_B" +
                     std::to_string(s.batch) + "_H" + std::to_string(s.heads) + "_Hkv" +
                     std::to_string(s.kv_heads) + "_" + MaskKindName(mask);
  if (mask == MaskKind::kSlidingWindow) {
    name += std::to_string(window_left) + "x" + std::to_string(window_right);
  }
  if (mask == MaskKind::kAdditive) name += additive == AdditiveKind::k2D ? "2d" : "4d";
  if (!key_lengths.empty()) name += "_keylens";
  name += std::string("_") + LayoutName(layout);
  if (row_pad) name += "_pad" + std::to_string(row_pad);
  if (misalign) name += "_misaligned";
  if (values == Values::kLargeLogits) name += "_largelogits";
  if (values == Values::kNearTies) name += "_neartie";
  if (want_weights) name += "_weights";
  if (dtypes.q != DType::kF32 || dtypes.k != DType::kF32 || dtypes.v != DType::kF32 ||
      dtypes.o != DType::kF32) {
    name += std::string("_Q") + DTypeName(dtypes.q) + "K" + DTypeName(dtypes.k) + "V" +
            DTypeName(dtypes.v) + "O" + DTypeName(dtypes.o);
  }
  return name;
}

void StoreInDType(DType dtype, std::span<const float> values, int64_t offset, int64_t batch,
                  int64_t heads, int64_t len, int64_t dim, const Strides& strides,
                  std::vector<char>& bytes, std::vector<float>* scales) {
  const size_t size = DTypeBytes(dtype);
  bytes.assign(values.size() * size, 0);
  if (dtype != DType::kI8) {
    StoreRow(dtype, values.data(), static_cast<int64_t>(values.size()), bytes.data());
    return;
  }
  scales->assign(batch * heads * len, 1.0f);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t j = 0; j < len; ++j) {
        const int64_t at = offset + b * strides.batch + h * strides.head + j * strides.row;
        (*scales)[(b * heads + h) * len + j] =
            QuantizeRow(&values[at], dim, reinterpret_cast<int8_t*>(&bytes[at]));
      }
}

void ProblemData::PoisonO() {
  std::fill(o_.begin(), o_.end(), kNaN);
  for (size_t x = 0; x < o_typed_.size(); x += DTypeBytes(spec_.dtypes.o)) {
    StoreElement(spec_.dtypes.o, kNaN, &o_typed_[x]);
  }
}

ProblemData::ProblemData(const ProblemSpec& spec) : spec_(spec) {
  const Shape& s = spec.shape;
  const int64_t pad = spec.row_pad;
  offset_ = spec.misalign ? 1 : 0;
  std::mt19937_64 rng(spec.seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  auto fill = [&](std::vector<float>& buf, int64_t n, float scale) {
    buf.resize(n + offset_);
    for (float& x : buf) x = scale * uniform(rng);
  };
  const float q_scale = spec.values == Values::kLargeLogits ? 600.0f : 1.0f;
  fill(q_, Elements(s, s.heads, s.q_len, s.head_dim, pad), q_scale);
  fill(k_, Elements(s, s.kv_heads, s.kv_len, s.head_dim, pad), 1.0f);
  fill(v_, Elements(s, s.kv_heads, s.kv_len, s.value_dim, pad), 1.0f);
  o_.assign(Elements(s, s.heads, s.q_len, s.value_dim, pad) + offset_, kNaN);

  problem_.shape = s;
  problem_.q = {q_.data() + offset_, MakeStrides(spec.layout, s.heads, s.q_len, s.head_dim, pad)};
  problem_.k = {k_.data() + offset_,
                MakeStrides(spec.layout, s.kv_heads, s.kv_len, s.head_dim, pad)};
  problem_.v = {v_.data() + offset_,
                MakeStrides(spec.layout, s.kv_heads, s.kv_len, s.value_dim, pad)};
  problem_.o = {o_.data() + offset_, MakeStrides(spec.layout, s.heads, s.q_len, s.value_dim, pad)};

  if (spec.values == Values::kNearTies) {
    // Every key row = key row 0 of its (b, kv head) plus ~1e-4 noise.
    for (int64_t b = 0; b < s.batch; ++b) {
      for (int64_t h = 0; h < s.kv_heads; ++h) {
        float* base = const_cast<float*>(RowOf(problem_.k, b, h, 0));
        for (int64_t j = 1; j < s.kv_len; ++j) {
          float* row = const_cast<float*>(RowOf(problem_.k, b, h, j));
          for (int64_t d = 0; d < s.head_dim; ++d) row[d] = base[d] + 1e-4f * uniform(rng);
        }
      }
    }
  }

  // Reduced element types: the fp32 values above, stored in the type.
  const DTypes& t = spec.dtypes;
  auto retype = [&](auto& ref, DType dtype, std::vector<float>& values, std::vector<char>& bytes,
                    int64_t heads, int64_t len, int64_t dim, std::vector<float>* scales) {
    if (dtype == DType::kF32) return;
    StoreInDType(dtype, values, offset_, s.batch, heads, len, dim, ref.strides, bytes, scales);
    ref.data = bytes.data() + offset_ * DTypeBytes(dtype);
    ref.dtype = dtype;
  };
  retype(problem_.q, t.q, q_, q_typed_, s.heads, s.q_len, s.head_dim, nullptr);
  retype(problem_.k, t.k, k_, k_typed_, s.kv_heads, s.kv_len, s.head_dim, &k_scales_);
  retype(problem_.v, t.v, v_, v_typed_, s.kv_heads, s.kv_len, s.value_dim, &v_scales_);
  if (t.o != DType::kF32) {
    o_typed_.assign(o_.size() * DTypeBytes(t.o), 0);
    problem_.o.data = o_typed_.data() + offset_ * DTypeBytes(t.o);
    problem_.o.dtype = t.o;
    PoisonO();
  }
  const Strides row_scales = Strides::BHLD(s.kv_heads, s.kv_len, 1);
  if (t.k == DType::kI8) problem_.k_scales = {k_scales_.data(), row_scales};
  if (t.v == DType::kI8) problem_.v_scales = {v_scales_.data(), row_scales};

  problem_.mask.kind = spec.mask;
  problem_.mask.window_left = spec.window_left;
  problem_.mask.window_right = spec.window_right;
  if (spec.mask == MaskKind::kAdditive) {
    AdditiveMaskShape& a = problem_.mask.additive_shape;
    a = {spec.additive == AdditiveKind::k4D ? s.batch : 1,
         spec.additive == AdditiveKind::k4D ? s.heads : 1, s.q_len, s.kv_len};
    mask_.resize(a.batch * a.heads * a.rows * a.cols);
    std::uniform_real_distribution<float> unit(0.0f, 1.0f);
    for (float& x : mask_) x = unit(rng) < 0.15f ? -kInfF : 2.0f * uniform(rng);
    // The first row of each mask plane is fully masked when there are >= 2 rows.
    if (s.q_len >= 2) {
      for (int64_t plane = 0; plane < a.batch * a.heads; ++plane) {
        for (int64_t j = 0; j < s.kv_len; ++j) mask_[plane * a.rows * a.cols + j] = -kInfF;
      }
    }
    problem_.mask.additive = mask_;
  }
  key_lengths_ = spec.key_lengths;
  if (!key_lengths_.empty()) problem_.mask.key_lengths = key_lengths_;
  if (spec.want_lse) {
    lse_.assign(s.batch * s.heads * s.q_len, kNaN);
    problem_.lse = lse_;
  }
  if (spec.want_weights) {
    weights_.assign(s.batch * s.heads * s.q_len * s.kv_len, kNaN);
    problem_.weights = weights_;
  }
}

void ProblemData::Poison() {
  PoisonO();
  std::fill(lse_.begin(), lse_.end(), kNaN);
  std::fill(weights_.begin(), weights_.end(), kNaN);
}

std::vector<float> ProblemData::OutputContiguous() const {
  const Shape& s = problem_.shape;
  std::vector<float> out;
  out.reserve(s.batch * s.heads * s.q_len * s.value_dim);
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h)
      for (int64_t i = 0; i < s.q_len; ++i) {
        const char* row = static_cast<const char*>(ValidProblem::Row(problem_.o, b, h, i));
        for (int64_t d = 0; d < s.value_dim; ++d) {
          out.push_back(LoadElement(problem_.o.dtype, row + d * DTypeBytes(problem_.o.dtype)));
        }
      }
  return out;
}

std::string ProblemData::PaddingWritten() const {
  const Shape& s = problem_.shape;
  if (spec_.row_pad == 0) return "";
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h)
      for (int64_t i = 0; i < s.q_len; ++i) {
        const char* row = static_cast<const char*>(ValidProblem::Row(problem_.o, b, h, i));
        const size_t size = DTypeBytes(problem_.o.dtype);
        for (int64_t d = s.value_dim; d < s.value_dim + spec_.row_pad; ++d) {
          if (!std::isnan(LoadElement(problem_.o.dtype, row + d * size))) {
            return "[b=" + std::to_string(b) + ",h=" + std::to_string(h) +
                   ",i=" + std::to_string(i) + "]";
          }
        }
      }
  return "";
}

std::vector<ProblemSpec> GridSpecs() {
  // Sizes around tiles and vector widths (16 floats in an AVX-512 vector,
  // tiles of 16..128 rows or keys).
  const int64_t sizes[] = {1, 2, 3, 7, 15, 16, 17, 31, 63, 64, 65, 127, 129};
  const int n_sizes = std::size(sizes);
  // Head dims: vector multiples and not (40, 72, 80, 3, 8).
  const int64_t dims[] = {64, 40, 72, 16, 80, 128, 3, 8, 32};
  const int64_t gqa[] = {1, 2, 4, 8};
  struct MaskConfig {
    MaskKind kind;
    int64_t left = 0, right = 0;
    AdditiveKind additive = AdditiveKind::k2D;
    bool key_lengths = false;
  };
  const MaskConfig masks[] = {
      {MaskKind::kNone},
      {MaskKind::kCausal},
      {MaskKind::kSlidingWindow, 5, 2},
      {MaskKind::kAdditive, 0, 0, AdditiveKind::k2D},
      {MaskKind::kAdditive, 0, 0, AdditiveKind::k4D},
      {MaskKind::kCausal, 0, 0, AdditiveKind::k2D, true},
      {MaskKind::kNone, 0, 0, AdditiveKind::k2D, true},
      {MaskKind::kSlidingWindow, 16, 0, AdditiveKind::k2D, true},
  };
  const int n_masks = std::size(masks);

  std::vector<ProblemSpec> specs;
  uint64_t seed = 1000;
  int rotation = 0;
  for (int si = 0; si < n_sizes; ++si) {
    for (int mi = 0; mi < n_masks; ++mi, ++rotation) {
      ProblemSpec spec;
      Shape& s = spec.shape;
      s.q_len = sizes[si];
      // Lq == Lk, Lq < Lk and Lq > Lk all occur.
      s.kv_len = sizes[(si + mi * 5) % n_sizes];
      s.head_dim = dims[rotation % std::size(dims)];
      s.value_dim = (rotation % 3 == 0) ? dims[(rotation + 4) % std::size(dims)] : s.head_dim;
      s.kv_heads = 1 + rotation % 2;
      s.heads = s.kv_heads * gqa[(rotation / 2) % 4];
      s.batch = 1 + (rotation / 3) % 2;
      const MaskConfig& m = masks[mi];
      spec.mask = m.kind;
      spec.window_left = m.left;
      spec.window_right = m.right;
      spec.additive = m.additive;
      if (m.key_lengths) {
        // One batch sees every key, one sees none (key length 0 and Lk).
        for (int64_t b = 0; b < s.batch; ++b) {
          spec.key_lengths.push_back(b == 0 ? int32_t(s.kv_len / 2 + 1) : 0);
        }
        if (s.batch == 1 && rotation % 4 == 0) spec.key_lengths[0] = int32_t(s.kv_len);
        if (spec.key_lengths[0] > s.kv_len) spec.key_lengths[0] = int32_t(s.kv_len);
      }
      spec.layout = rotation % 2 ? Layout::kBLHD : Layout::kBHLD;
      spec.row_pad = rotation % 5 == 0 ? 3 : 0;
      spec.misalign = rotation % 7 == 0;
      spec.seed = seed++;
      specs.push_back(spec);
    }
  }

  // Inputs that break careless kernels.
  auto add = [&](Shape s, MaskKind kind, Values values, auto&&... tweak) {
    ProblemSpec spec;
    spec.shape = s;
    spec.mask = kind;
    spec.values = values;
    spec.seed = seed++;
    (tweak(spec), ...);
    specs.push_back(spec);
  };
  auto no_tweak = [](ProblemSpec&) {};
  const Shape mid{1, 2, 2, 100, 130, 64, 64};
  add(mid, MaskKind::kNone, Values::kLargeLogits, no_tweak);
  add(mid, MaskKind::kCausal, Values::kLargeLogits, no_tweak);
  add(mid, MaskKind::kNone, Values::kNearTies, no_tweak);
  add(mid, MaskKind::kSlidingWindow, Values::kNearTies, [](ProblemSpec& sp) {
    sp.window_left = 0;
    sp.window_right = 0;
  });
  // Lq > Lk causal: the first Lq - Lk rows see no key at all.
  add(Shape{2, 2, 1, 70, 20, 32, 48}, MaskKind::kCausal, Values::kUniform, no_tweak);
  // Window that excludes everything for the early rows (left = right = 0, Lq > Lk).
  add(Shape{1, 1, 1, 40, 10, 16, 16}, MaskKind::kSlidingWindow, Values::kUniform,
      [](ProblemSpec& sp) {
        sp.window_left = 0;
        sp.window_right = 0;
      });
  // Key lengths 0 and Lk in one call.
  add(Shape{2, 4, 2, 33, 47, 24, 24}, MaskKind::kNone, Values::kUniform, [](ProblemSpec& sp) {
    sp.key_lengths = {0, 47};
  });
  // Attention weights.
  add(Shape{2, 2, 1, 31, 65, 40, 24}, MaskKind::kCausal, Values::kUniform,
      [](ProblemSpec& sp) { sp.want_weights = true; });
  add(Shape{1, 4, 4, 17, 17, 16, 16}, MaskKind::kAdditive, Values::kUniform, [](ProblemSpec& sp) {
    sp.want_weights = true;
    sp.additive = AdditiveKind::k4D;
  });
  // Larger: several tiles in each direction, both layouts, GQA.
  add(Shape{1, 4, 1, 300, 257, 64, 64}, MaskKind::kCausal, Values::kUniform, no_tweak);
  add(Shape{1, 2, 2, 513, 513, 128, 128}, MaskKind::kNone, Values::kUniform,
      [](ProblemSpec& sp) { sp.layout = Layout::kBLHD; });
  add(Shape{1, 2, 1, 600, 600, 80, 80}, MaskKind::kSlidingWindow, Values::kUniform,
      [](ProblemSpec& sp) {
        sp.window_left = 100;
        sp.window_right = 30;
      });
  add(Shape{2, 8, 2, 200, 400, 72, 72}, MaskKind::kCausal, Values::kUniform, [](ProblemSpec& sp) {
    sp.key_lengths = {390, 150};
  });
  // dk = 1 with 5-8 rows per kv head (GQA): found by the fuzzer, flash's
  // few-row Q block outgrew its scratch.
  add(Shape{2, 3, 1, 2, 13, 1, 1}, MaskKind::kNone, Values::kUniform, no_tweak);
  add(Shape{1, 8, 1, 1, 70, 1, 2}, MaskKind::kCausal, Values::kUniform, no_tweak);
  // Decode: one query against a long KV cache, with GQA 8:1.
  add(Shape{1, 8, 1, 1, 2048, 64, 64}, MaskKind::kNone, Values::kUniform, no_tweak);
  add(Shape{2, 8, 1, 1, 3001, 128, 128}, MaskKind::kCausal, Values::kUniform, [](ProblemSpec& sp) {
    sp.key_lengths = {3001, 1777};
  });
  add(Shape{1, 4, 4, 3, 1100, 64, 64}, MaskKind::kCausal, Values::kUniform, no_tweak);
  return specs;
}

std::string RefusalMismatch(Problem base, const std::function<void(Problem&)>& set,
                            const std::string& message) {
  set(base);
  const StatusOr<ValidProblem> v = Validate(base);
  if (v.ok()) return "accepted; want InvalidArgument \"" + message + "\"";
  if (v.status().code() != StatusCode::kInvalidArgument ||
      v.status().message().find(message) == std::string::npos) {
    return v.status().ToString() + "; want InvalidArgument \"" + message + "\"";
  }
  return "";
}

}  // namespace attn::testing
