#include "reference/reference.h"

#include <cmath>
#include <limits>

namespace attn::reference {

void LoadRow(const TensorRef<const void>& t, const RowScales& scales, int64_t b, int64_t h,
             int64_t i, int64_t n, double* out) {
  const int64_t offset = b * t.strides.batch + h * t.strides.head + i * t.strides.row;
  const char* row = static_cast<const char*>(t.data) + offset * int64_t(DTypeBytes(t.dtype));
  const float scale =
      t.dtype == DType::kI8
          ? scales.data[b * scales.strides.batch + h * scales.strides.head + i * scales.strides.row]
          : 1.0f;
  for (int64_t d = 0; d < n; ++d) {
    // The exact value the element stands for (int8: scale·q in double).
    out[d] = t.dtype == DType::kI8 ? double(scale) * double(reinterpret_cast<const int8_t*>(row)[d])
                                   : double(LoadElement(t.dtype, row + d * DTypeBytes(t.dtype)));
  }
}

bool KeyVisible(const Problem& p, int64_t b, int64_t i, int64_t j) {
  const int64_t diag = i + (p.shape.kv_len - p.shape.q_len);
  bool visible = true;
  switch (p.mask.kind) {
    case MaskKind::kCausal:
      visible = j <= diag;
      break;
    case MaskKind::kSlidingWindow:
      visible = diag - p.mask.window_left <= j && j <= diag + p.mask.window_right;
      break;
    default:
      break;
  }
  if (p.mask.key_lengths && j >= (*p.mask.key_lengths)[b]) visible = false;
  return visible;
}

StatusOr<Result> Attention(const Problem& p, bool with_weights) {
  StatusOr<ValidProblem> valid = Validate(p);
  if (!valid.ok()) return valid.status();
  const Shape& s = p.shape;
  const double scale = p.scale ? double(*p.scale) : 1.0 / std::sqrt(double(s.head_dim));
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const int64_t group = s.heads / s.kv_heads;

  Result r;
  r.o.assign(s.batch * s.heads * s.q_len * s.value_dim, 0.0);
  r.lse.assign(s.batch * s.heads * s.q_len, 0.0);
  if (with_weights) r.weights.assign(s.batch * s.heads * s.q_len * s.kv_len, 0.0);

  std::vector<double> logits(s.kv_len);
  std::vector<double> q(s.head_dim), k(s.head_dim), v(s.value_dim);  // one row each
  std::vector<bool> visible(s.kv_len);
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t h = 0; h < s.heads; ++h) {
      const int64_t kvh = h / group;
      for (int64_t i = 0; i < s.q_len; ++i) {
        const int64_t row = (b * s.heads + h) * s.q_len + i;
        LoadRow(p.q, {}, b, h, i, s.head_dim, q.data());
        // Pass 1: logits of visible keys, and their maximum. NaN wins the max.
        double max = -inf;
        for (int64_t j = 0; j < s.kv_len; ++j) {
          visible[j] = KeyVisible(p, b, i, j);
          if (!visible[j]) continue;
          LoadRow(p.k, p.k_scales, b, kvh, j, s.head_dim, k.data());
          double dot = 0;
          for (int64_t d = 0; d < s.head_dim; ++d) dot += q[d] * k[d];
          double logit = dot * scale;
          if (p.mask.kind == MaskKind::kAdditive) {
            const AdditiveMaskShape& a = p.mask.additive_shape;
            const int64_t mb = a.batch == 1 ? 0 : b;
            const int64_t mh = a.heads == 1 ? 0 : h;
            logit += double(p.mask.additive[((mb * a.heads + mh) * a.rows + i) * a.cols + j]);
          }
          logits[j] = logit;
          if (std::isnan(logit) || std::isnan(max)) {
            max = nan;
          } else {
            max = std::max(max, logit);
          }
        }
        double* o = &r.o[row * s.value_dim];
        if (max == -inf) {  // fully masked: O = 0, lse = -inf, weights 0
          r.lse[row] = -inf;
          continue;
        }
        // Pass 2: exp, sum, weighted sum of V. +inf or NaN max gives NaN.
        double sum = 0;
        for (int64_t j = 0; j < s.kv_len; ++j) {
          if (!visible[j]) continue;
          const double w = std::exp(logits[j] - max);
          logits[j] = w;
          sum += w;
          LoadRow(p.v, p.v_scales, b, kvh, j, s.value_dim, v.data());
          for (int64_t d = 0; d < s.value_dim; ++d) o[d] += w * v[d];
        }
        for (int64_t d = 0; d < s.value_dim; ++d) o[d] /= sum;
        r.lse[row] = max + std::log(sum);
        if (with_weights) {
          for (int64_t j = 0; j < s.kv_len; ++j) {
            if (visible[j]) r.weights[row * s.kv_len + j] = logits[j] / sum;
          }
        }
      }
    }
  }
  return r;
}

}  // namespace attn::reference
