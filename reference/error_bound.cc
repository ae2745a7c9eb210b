#include "reference/error_bound.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "reference/reference.h"

namespace attn::reference {
namespace {

constexpr double kU = 1.0 / (1 << 24);  // fp32 unit roundoff
constexpr double kExpUlps = 8.0;

// The type a kernel may compute with for an input of type t: int8 as bf16.
DType ComputeType(DType t) { return t == DType::kI8 ? DType::kBF16 : t; }
double Roundoff(DType t) { return t == DType::kF32 ? 0.0 : DTypeUnitRoundoff(ComputeType(t)); }

// The roundings kernels/problem.h ("Element types") allows beyond fp32
// arithmetic, as unit roundoffs (0: none).
struct OperandRounding {
  double qk = 0;  // Q·Kᵀ operands: Q and K of different types (or i8 K)
  double p = 0;   // P rounded to V's type for P·V (a reduced V)
  double v = 0;   // an i8 V dequantized to bf16
};
OperandRounding AllowedRounding(const Problem& p) {
  OperandRounding r;
  if (p.q.dtype != p.k.dtype || p.k.dtype == DType::kI8) {
    r.qk = std::max(Roundoff(p.q.dtype), Roundoff(p.k.dtype));
  }
  r.p = Roundoff(p.v.dtype);
  if (p.v.dtype == DType::kI8) r.v = Roundoff(p.v.dtype);
  return r;
}

}  // namespace

double SummationLength(int64_t n) {
  const int64_t blocks = (n + kKeySumBlock - 1) / kKeySumBlock;
  return double(std::min(n, kKeySumBlock + 2 * blocks));
}

RowBound ErrorBound(const Problem& p, int64_t b, int64_t h, int64_t i) {
  const Shape& s = p.shape;
  const double scale = p.scale ? double(*p.scale) : 1.0 / std::sqrt(double(s.head_dim));
  const int64_t kvh = h / (s.heads / s.kv_heads);
  std::vector<double> q(s.head_dim), k(s.head_dim), v(s.value_dim);
  LoadRow(p.q, {}, b, h, i, s.head_dim, q.data());
  double logit_magnitude = 0;  // A
  double v_max = 0;            // Vmax
  int64_t visible = 0;
  for (int64_t j = 0; j < s.kv_len; ++j) {
    if (!KeyVisible(p, b, i, j)) continue;
    ++visible;
    LoadRow(p.k, p.k_scales, b, kvh, j, s.head_dim, k.data());
    double abs_dot = 0;
    for (int64_t d = 0; d < s.head_dim; ++d) abs_dot += std::fabs(q[d] * k[d]);
    double a = scale * abs_dot;
    if (p.mask.kind == MaskKind::kAdditive) {
      const AdditiveMaskShape& m = p.mask.additive_shape;
      const double add =
          p.mask
              .additive[(((m.batch == 1 ? 0 : b) * m.heads + (m.heads == 1 ? 0 : h)) * m.rows + i) *
                            m.cols +
                        j];
      if (std::isinf(add)) continue;  // a -inf key carries weight exactly 0
      a += std::fabs(add);
    }
    logit_magnitude = std::max(logit_magnitude, a);
    LoadRow(p.v, p.v_scales, b, kvh, j, s.value_dim, v.data());
    for (int64_t d = 0; d < s.value_dim; ++d) v_max = std::max(v_max, std::fabs(v[d]));
  }
  // Reduced precision (kernels/problem.h, "Element types"): Q·Kᵀ operands
  // rounded to u_qk add 2·u_qk·A to a logit (both may be); P rounded to u_p
  // moves each weight by u_p·p, so O by u_p·Σp|v|/l <= u_p·Vmax, and an i8
  // V rounded to bf16 another u_v·Vmax; an O stored in bf16/f16 adds its own
  // unit roundoff u_o·|O| <= u_o·Vmax (u_o = u for fp32, which the fp32
  // terms already cover).
  const OperandRounding r = AllowedRounding(p);
  const double u_o = p.o.dtype == DType::kF32 ? 0.0 : DTypeUnitRoundoff(p.o.dtype);
  const double logit_error = (s.head_dim + 2) * kU * logit_magnitude + 2 * r.qk * logit_magnitude;
  const double sum_len = SummationLength(visible);
  RowBound bound;
  bound.o =
      kSafety * v_max * (2 * logit_error + (kExpUlps + 2 * sum_len + 4) * kU + r.p + r.v + u_o);
  bound.lse = kSafety * (logit_error + (kExpUlps + sum_len + 2) * kU);
  bound.weights = kSafety * (2 * logit_error + (kExpUlps + 2 * sum_len + 4) * kU);
  return bound;
}

bool CompareElement(double got, double want, double bound, Comparison& c,
                    const std::string& where) {
  bool ok;
  if (std::isnan(want)) {
    ok = std::isnan(got);
  } else if (std::isinf(want)) {
    ok = got == want;
  } else if (!std::isfinite(bound)) {
    ok = !std::isnan(got);
  } else {
    const double err = std::fabs(got - want);
    ok = err <= bound;  // false for NaN got
    if (std::isfinite(err)) {
      c.max_abs_error = std::max(c.max_abs_error, err);
      c.max_rel_error = std::max(c.max_rel_error, err / std::max(std::fabs(want), 1e-30));
      const double ratio =
          bound > 0 ? err / bound : (err > 0 ? std::numeric_limits<double>::infinity() : 0.0);
      if (ratio >= c.worst_bound_ratio) {
        c.worst_bound_ratio = ratio;
        c.bound_at_worst = bound;
      }
    }
  }
  if (!ok && c.ok) {
    char buf[256];
    std::snprintf(buf, sizeof(buf), " got %.9g want %.9g (bound %.3g)", got, want, bound);
    c.first_failure = where + buf;
  }
  c.ok = c.ok && ok;
  return ok;
}

}  // namespace attn::reference
