#include "reference/error_bound.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "reference/reference.h"
#include "reference/row_chunks.h"

namespace attn::reference {
namespace {

constexpr double kU = 1.0 / (1 << 24);  // fp32 unit roundoff
constexpr double kExpUlps = 8.0;
// flash's FastTanh is within kTanhMaxAbsU = 8 u of tanh, absolutely
// (kernels/ukernels/ukernels.h); naive's std::tanh within an ulp.
constexpr double kTanhUlps = 8.0;
// The most a result flushed from subnormal to 0 loses (kernels/problem.h,
// "Element types"; flash's kernels/internal/flush_subnormals.h).
constexpr double kFlushed = 0x1p-126;

// The type a kernel may compute with for an input of type t: int8 as bf16.
DType ComputeType(DType t) { return t == DType::kI8 ? DType::kBF16 : t; }
double Roundoff(DType t) { return t == DType::kF32 ? 0.0 : DTypeUnitRoundoff(ComputeType(t)); }

// The roundings kernels/problem.h ("Element types") allows beyond fp32
// arithmetic, as unit roundoffs (0: none).
struct OperandRounding {
  double qk = 0;  // Q·Kᵀ operands: Q and K of different types (or i8 K)
  double p = 0;   // P rounded to V's type for P·V (a reduced V)
  double v = 0;   // an i8 V dequantized to bf16
  // With P rounded: the weights' exponential (relative, beyond kExpUlps),
  // and the two products folded into its exponent, x·(scale·log2 e) -
  // m·log2 e, each rounded once more (ulps of the logit magnitude A).
  double exp = 0;
  double exponent_ulps = 0;
};
OperandRounding AllowedRounding(const Problem& p) {
  OperandRounding r;
  if (p.q.dtype != p.k.dtype || p.k.dtype == DType::kI8) {
    r.qk = std::max(Roundoff(p.q.dtype), Roundoff(p.k.dtype));
  }
  r.p = Roundoff(p.v.dtype);
  if (p.v.dtype == DType::kI8) r.v = Roundoff(p.v.dtype);
  if (r.p > 0) {
    r.exp = kReducedExpMaxRel;
    r.exponent_ulps = 2;
  }
  return r;
}

}  // namespace

double SummationLength(int64_t n) {
  const int64_t blocks = (n + kKeySumBlock - 1) / kKeySumBlock;
  return double(std::min(n, kKeySumBlock + 2 * blocks));
}

namespace {

// What ErrorBound gathers over a row's visible keys.
struct RowMagnitudes {
  double logit = 0;  // A
  double v_max = 0;  // Vmax
  int64_t visible = 0;
  // The int16 quantizations kernels/problem.h allows for int8 K and V:
  // scale·(max|q| / 32767)·max_j Σ_d |k_jd| moves a logit at most that much
  // (each q_d moves by at most a step; 1 step, not the half a step rounding
  // to nearest gives, covers the step's own fp32 rounding), and with
  // S = max_j |scale of V row j|, a run of n <= kInt16WeightRun weights
  // w_j = p_j·s_j quantized with step max_run p·S / 32767 moves
  // Σ_j w_j·v8_jd (|v8| <= 128) by at most n·128·step; summed over the runs
  // (Σ_runs max_run p <= Σ p = l) and divided by l, O moves by at most
  // kInt16WeightRun·128·S / 32767.
  double q_int16_logit = 0;
  double w_int16_o = 0;
};

// The bound of a row from what ErrorBound gathers over its keys.
RowBound RowBoundOf(const Problem& p, const RowMagnitudes& mag) {
  const double logit_magnitude = mag.logit, v_max = mag.v_max;
  const int64_t visible = mag.visible;
  const Shape& s = p.shape;
  // Reduced precision (kernels/problem.h, "Element types"): Q·Kᵀ operands
  // rounded to u_qk add 2·u_qk·A to a logit (both may be); P rounded to u_p
  // moves each weight by u_p·p, so O by u_p·Σp|v|/l <= u_p·Vmax, and an i8
  // V rounded to bf16 another u_v·Vmax; an O stored in bf16/f16 adds its own
  // unit roundoff u_o·|O| <= u_o·Vmax (u_o = u for fp32, which the fp32
  // terms already cover). Where P is rounded, the weights' exponential may
  // err by a relative ε_exp more (the normalized weights by 2·ε_exp, l by
  // ε_exp) and its exponent by 2·u·A more.
  const OperandRounding r = AllowedRounding(p);
  const double u_o = p.o.dtype == DType::kF32 ? 0.0 : DTypeUnitRoundoff(p.o.dtype);
  // Softcap: cap·tanh(x / cap) has slope <= 1, so the error of x above passes
  // through undiminished at worst; the tanh itself (kTanhUlps), the division
  // and the product each add at most a few ulp of cap.
  const double softcap_error =
      p.modifiers.softcap ? (kTanhUlps + 2) * kU * double(*p.modifiers.softcap) : 0.0;
  const double logit_error = (s.head_dim + 2 + r.exponent_ulps) * kU * logit_magnitude +
                             2 * r.qk * logit_magnitude + mag.q_int16_logit + softcap_error;
  // A sink is one more term of the denominator (its logit is exact).
  const double sum_len = SummationLength(visible + (p.modifiers.sinks.empty() ? 0 : 1));
  // Subnormal results flushed to 0 (see the header): 2^-126 per operation.
  const double flushed = double(visible + 2) * kFlushed;
  RowBound bound;
  bound.o =
      kSafety *
      (v_max * (2 * logit_error + (kExpUlps + 2 * sum_len + 4) * kU + 2 * r.exp + r.p + r.v + u_o) +
       mag.w_int16_o + flushed * (2 * v_max + 3));
  bound.lse = kSafety * (logit_error + (kExpUlps + sum_len + 2) * kU + r.exp + flushed);
  bound.weights = kSafety * (2 * logit_error + (kExpUlps + 2 * sum_len + 4) * kU + 2 * r.exp);
  return bound;
}

}  // namespace

RowBound ErrorBound(const Problem& p, int64_t b, int64_t h, int64_t i) {
  const Shape& s = p.shape;
  const double scale = p.scale ? double(*p.scale) : 1.0 / std::sqrt(double(s.head_dim));
  const int64_t kvh = h / (s.heads / s.kv_heads);
  std::vector<double> q(s.head_dim), k(s.head_dim), v(s.value_dim);
  LoadRow(p.q, {}, b, h, i, s.head_dim, q.data());
  RowMagnitudes mag;
  double k_abs_max = 0;    // max_j Σ_d |k_jd| (int8 K)
  double v_scale_max = 0;  // max_j |scale of V row j| (int8 V)
  for (int64_t j = 0; j < s.kv_len; ++j) {
    if (!KeyVisible(p, b, i, j)) continue;
    ++mag.visible;
    LoadKvRow(p, /*value=*/false, b, kvh, j, k.data());
    if (p.k.dtype == DType::kI8) {
      double sum = 0;
      for (int64_t d = 0; d < s.head_dim; ++d) sum += std::fabs(k[d]);
      k_abs_max = std::max(k_abs_max, sum);
    }
    // The ALiBi bias: its magnitude like a mask entry's (slope·(j - i - off)
    // rounds twice in fp32: converting the distance and multiplying).
    double a = scale * AbsDot(q.data(), k.data(), s.head_dim) +
               std::fabs(ModifiedLogit(p, b, h, i, j, 0.0));
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
    mag.logit = std::max(mag.logit, a);
    LoadKvRow(p, /*value=*/true, b, kvh, j, v.data());
    for (int64_t d = 0; d < s.value_dim; ++d) mag.v_max = std::max(mag.v_max, std::fabs(v[d]));
    if (p.v.dtype == DType::kI8) {
      v_scale_max = std::max(v_scale_max, std::fabs(KvRowScale(p, /*value=*/true, b, kvh, j)));
    }
  }
  if (p.k.dtype == DType::kI8) {
    double q_max = 0;
    for (int64_t d = 0; d < s.head_dim; ++d) q_max = std::max(q_max, std::fabs(q[d]));
    mag.q_int16_logit = scale * (q_max / 32767) * k_abs_max;
  }
  if (p.v.dtype == DType::kI8) mag.w_int16_o = double(kInt16WeightRun) * 128 * v_scale_max / 32767;
  return RowBoundOf(p, mag);
}

namespace {

// What dK's and dV's bounds sum over query rows: the propagated errors, the
// |terms| and the term count m_j (one per chunk of rows: row_chunks.h).
struct KvBoundSums {
  std::vector<double> dk_err, dk_abs, dv_err, dv_abs;
  std::vector<int64_t> terms;
  std::vector<double> sink_err, sink_abs;  // per head, with sinks
};

GradBounds GradBoundsOf(const GradProblem& g, const F64Problem& f, std::span<const double> d_o,
                        const GradResult& exact) {
  const Problem& p = g.forward;
  const Shape& s = p.shape;
  const int64_t dk = s.head_dim, dv = s.value_dim;
  const int64_t group = s.heads / s.kv_heads;

  const double softcap = f.softcap;
  const double softcap_err = softcap > 0 ? (kTanhUlps + 2) * kU * softcap : 0.0;

  GradBounds bound;
  bound.dq.assign(exact.dq.size(), 0.0);
  const int64_t rows = s.batch * s.heads * s.q_len;
  std::vector<KvBoundSums> parts(RowChunkCount(rows));
  ForEachRowChunk(rows, [&](int64_t chunk, int64_t begin, int64_t end) {
    KvBoundSums& sums = parts[chunk];
    for (std::vector<double>* v : {&sums.dk_err, &sums.dk_abs}) v->assign(exact.dk.size(), 0.0);
    for (std::vector<double>* v : {&sums.dv_err, &sums.dv_abs}) v->assign(exact.dv.size(), 0.0);
    sums.terms.assign(s.batch * s.kv_heads * s.kv_len, 0);
    for (std::vector<double>* v : {&sums.sink_err, &sums.sink_abs}) v->assign(f.sinks.size(), 0.0);
    std::vector<double> w, scores, o(dv), dp, dp_abs, e_dp, e_p;
    std::vector<char> visible(s.kv_len);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row % s.q_len, h = row / s.q_len % s.heads, b = row / s.q_len / s.heads;
      const int64_t kv_row0 = (b * s.kv_heads + h / group) * s.kv_len;
      const double lse = RowWeights(f, b, h, i, w, &scores);
      // Fully masked (-inf) or NaN rows add nothing: see the header.
      if (!std::isfinite(lse)) continue;
      const double* q = &f.q[row * dk];
      const double* go = &d_o[row * dv];
      // A (the logit magnitude), n (visible keys), Vmax and the exact O.
      double a = 0, v_max = 0;
      int64_t n = 0;
      std::fill(o.begin(), o.end(), 0.0);
      for (int64_t j = 0; j < s.kv_len; ++j) {
        visible[j] = KeyVisible(p, b, i, j);
        if (!visible[j]) continue;
        ++n;
        const double add = AdditiveAt(p.mask, b, h, i, j);
        if (std::isinf(add)) continue;
        const double* k = &f.k[(kv_row0 + j) * dk];
        const double* v = &f.v[(kv_row0 + j) * dv];
        // The ALiBi bias counts like a mask entry (as in ErrorBound).
        const double alibi = std::fabs(ModifiedLogit(p, b, h, i, j, 0.0));
        a = std::max(a, f.scale * AbsDot(q, k, dk) + alibi + std::fabs(add));
        for (int64_t d = 0; d < dv; ++d) {
          v_max = std::max(v_max, std::fabs(v[d]));
          o[d] += w[j] * v[d];
        }
      }
      // The forward's bound of this row (ErrorBound's, from the same A,
      // Vmax and n; the backward takes fp32 only, so no int16 terms).
      const RowBound fwd_bound = RowBoundOf(p, {.logit = a, .v_max = v_max, .visible = n});
      const double o_err = fwd_bound.o / kSafety;                // ô
      const double lse_err = fwd_bound.lse / kSafety;            // λ
      const double logit_err = (dk + 2) * kU * a + softcap_err;  // δs
      // The softcap's slope c = 1 - t² from the kernel's t = ŝ/cap: |δt| <=
      // δs/cap + (e_tanh + 2)·u, so |δc| <= 2·|δt| + |δt|² + 2u.
      const double e_t = softcap > 0 ? logit_err / softcap + (kTanhUlps + 2) * kU : 0.0;
      const double e_c = softcap > 0 ? 2 * e_t + e_t * e_t + 2 * kU : 0.0;
      // P, dP and their errors.
      dp.assign(s.kv_len, 0.0);
      dp_abs.assign(s.kv_len, 0.0);
      e_dp.assign(s.kv_len, 0.0);
      e_p.assign(s.kv_len, 0.0);
      double big_d = 0, p_dp_abs = 0, e_d_from_p = 0;
      for (int64_t j = 0; j < s.kv_len; ++j) {
        if (!visible[j]) continue;
        const double* v = &f.v[(kv_row0 + j) * dv];
        dp[j] = Dot(go, v, dv);
        dp_abs[j] = AbsDot(go, v, dv);
        e_dp[j] = dv * kU * dp_abs[j] + kFlushed;
        if (w[j] != 0) {
          const double score = scores[j];
          const double exponent_err =
              logit_err + lse_err + 3 * kU * (std::fabs(score) + std::fabs(lse)) + kExpUlps * kU;
          e_p[j] = std::expm1(exponent_err) * w[j] + 0x1p-126;
        }
        big_d += w[j] * dp[j];
        p_dp_abs += w[j] * std::fabs(dp[j]);
        e_d_from_p += e_p[j] * std::fabs(dp[j]) + w[j] * e_dp[j];
      }
      // e_D: both forms of D.
      double e_d = e_d_from_p + n * kU * p_dp_abs;
      for (int64_t d = 0; d < dv; ++d) {
        e_d += std::fabs(go[d]) * o_err + dv * kU * std::fabs(go[d]) * (std::fabs(o[d]) + o_err);
      }
      // The sink's gradient: -P_σ·D, P_σ = e^(σ - lse) from the kernel's
      // lse (relative error expm1(λ)) and D from its O (e_D above).
      if (!f.sinks.empty() && f.sinks[h] != -std::numeric_limits<double>::infinity()) {
        const double p_sink = std::exp(f.sinks[h] - lse);
        const double e_sink = std::expm1(lse_err + 2 * kU) * p_sink;
        sums.sink_err[h] += e_sink * (std::fabs(big_d) + e_d) + p_sink * e_d;
        sums.sink_abs[h] += p_sink * std::fabs(big_d);
      }
      // dS and the sums it feeds.
      double* bq = &bound.dq[row * dk];
      std::vector<double> dq_err(dk, 0.0), dq_abs(dk, 0.0);
      for (int64_t j = 0; j < s.kv_len; ++j) {
        if (!visible[j]) continue;
        // dS = P·(dP - D)·c: c exact 1 without a softcap (e_c = 0).
        const double c = ScoreSlope(f, b, h, i, j);
        const double ds_uncapped = w[j] * (dp[j] - big_d);
        const double ds = ds_uncapped * c;
        const double e_ds = (e_p[j] * std::fabs(dp[j] - big_d) + w[j] * (e_dp[j] + e_d)) * c +
                            std::fabs(ds_uncapped) * e_c + 3 * kU * std::fabs(ds) + kFlushed;
        const int64_t kv = kv_row0 + j;
        const double* k = &f.k[kv * dk];
        for (int64_t d = 0; d < dk; ++d) {
          dq_err[d] += e_ds * std::fabs(k[d]);
          dq_abs[d] += std::fabs(ds * k[d]);
          sums.dk_err[kv * dk + d] += e_ds * std::fabs(q[d]);
          sums.dk_abs[kv * dk + d] += std::fabs(ds * q[d]);
        }
        for (int64_t d = 0; d < dv; ++d) {
          sums.dv_err[kv * dv + d] += e_p[j] * std::fabs(go[d]);
          sums.dv_abs[kv * dv + d] += w[j] * std::fabs(go[d]);
        }
        ++sums.terms[kv];
      }
      for (int64_t d = 0; d < dk; ++d) {
        bq[d] = f.scale * (dq_err[d] + (n + 1) * kU * dq_abs[d]) +
                kU * std::fabs(exact.dq[row * dk + d]) + 2 * (n + 1) * kFlushed;
      }
    }
  });
  // The chunks' sums, in chunk order, into the first chunk's (every chunk
  // ran and sized its sums; with no rows at all nothing did and every bound
  // but the final rounding's is 0).
  KvBoundSums& total = parts[0];
  for (size_t c = 1; c < parts.size(); ++c) {
    AddPartial<double>(total.dk_err, parts[c].dk_err);
    AddPartial<double>(total.dk_abs, parts[c].dk_abs);
    AddPartial<double>(total.dv_err, parts[c].dv_err);
    AddPartial<double>(total.dv_abs, parts[c].dv_abs);
    AddPartial<int64_t>(total.terms, parts[c].terms);
    AddPartial<double>(total.sink_err, parts[c].sink_err);
    AddPartial<double>(total.sink_abs, parts[c].sink_abs);
  }
  bound.dk.assign(exact.dk.size(), 0.0);
  bound.dv.assign(exact.dv.size(), 0.0);
  for (size_t kv = 0; kv < total.terms.size(); ++kv) {
    const double m = double(total.terms[kv]);
    for (int64_t d = 0; d < dk; ++d) {
      const size_t x = kv * dk + d;
      bound.dk[x] =
          f.scale * (total.dk_err[x] + (m + 1) * kU * total.dk_abs[x]) + 2 * (m + 1) * kFlushed;
    }
    for (int64_t d = 0; d < dv; ++d) {
      const size_t x = kv * dv + d;
      bound.dv[x] = total.dv_err[x] + m * kU * total.dv_abs[x] + 2 * (m + 1) * kFlushed;
    }
  }
  for (size_t x = 0; x < exact.dk.size(); ++x) bound.dk[x] += kU * std::fabs(exact.dk[x]);
  for (size_t x = 0; x < exact.dv.size(); ++x) bound.dv[x] += kU * std::fabs(exact.dv[x]);
  // The sinks' gradients are summed in double (u² per term is below the
  // slack) and rounded once to fp32: u·|dσ|, and 2^-126 where that rounding
  // underflows (a sink far below every row's lse has a dσ under fp32's
  // range: 0 is then its nearest fp32 value; found by the fuzzer).
  bound.d_sinks.assign(f.sinks.size(), 0.0);
  for (size_t h = 0; h < total.sink_err.size(); ++h) {
    bound.d_sinks[h] = total.sink_err[h] + kU * total.sink_abs[h];
  }
  for (size_t h = 0; h < f.sinks.size(); ++h) {
    const bool has_sink = f.sinks[h] != -std::numeric_limits<double>::infinity();
    bound.d_sinks[h] += kU * std::fabs(exact.d_sinks[h]) + (has_sink ? 0x1p-126 : 0.0);
  }
  // The tolerance; a bound that inf inputs made NaN accepts any non-NaN value.
  for (std::vector<double>* v : {&bound.dq, &bound.dk, &bound.dv, &bound.d_sinks}) {
    for (double& x : *v) {
      x = std::isnan(x) ? std::numeric_limits<double>::infinity() : kSafety * x;
    }
  }
  return bound;
}

// dO contiguous [B, H, Lq, dv] in double.
std::vector<double> LoadDo(const GradProblem& g) {
  const Shape& s = g.forward.shape;
  return LoadTensor(g.d_o, {}, s.batch, s.heads, s.q_len, s.value_dim);
}

}  // namespace

GradBounds GradErrorBounds(const GradProblem& g) {
  const F64Problem f = ToF64(g.forward);
  const std::vector<double> d_o = LoadDo(g);
  return GradBoundsOf(g, f, d_o, BackwardF64(f, d_o));
}

GradBounds GradErrorBounds(const GradProblem& g, const GradResult& exact) {
  return GradBoundsOf(g, ToF64(g.forward), LoadDo(g), exact);
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
