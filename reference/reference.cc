#include "reference/reference.h"

#include <cmath>
#include <limits>
#include <span>
#include <vector>

#include "reference/row_chunks.h"

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

namespace {

// Where key j of batch b lies: (b, j) itself, or on a paged cache, whose
// pool's leading dimension is the block, row j % block_size of the
// sequence's (j / block_size)-th block.
struct KvRowAt {
  int64_t b, j;
};
KvRowAt LocateKvRow(const Problem& p, int64_t b, int64_t j) {
  if (!p.kv_pages) return {b, j};
  const KvPages& pages = *p.kv_pages;
  return {pages.block_table[b * pages.blocks_per_sequence + j / pages.block_size],
          j % pages.block_size};
}

}  // namespace

void LoadKvRow(const Problem& p, bool value, int64_t b, int64_t kvh, int64_t j, double* out) {
  const KvRowAt at = LocateKvRow(p, b, j);
  LoadRow(value ? p.v : p.k, value ? p.v_scales : p.k_scales, at.b, kvh, at.j,
          value ? p.shape.value_dim : p.shape.head_dim, out);
}

double KvRowScale(const Problem& p, bool value, int64_t b, int64_t kvh, int64_t j) {
  if ((value ? p.v : p.k).dtype != DType::kI8) return 1.0;
  const RowScales& scales = value ? p.v_scales : p.k_scales;
  const KvRowAt at = LocateKvRow(p, b, j);
  return scales
      .data[at.b * scales.strides.batch + kvh * scales.strides.head + at.j * scales.strides.row];
}

// off of kernels/problem.h: where batch b's query row 0 meets its diagonal.
int64_t DiagonalOffset(const Shape& s, const Mask& mask, int64_t b) {
  switch (mask.diagonal) {
    case Diagonal::kAt:
      return mask.diagonal_offset;
    case Diagonal::kTopLeft:
      return 0;
    case Diagonal::kKeyLengths:
      return (*mask.key_lengths)[b] - s.q_len;
    default:
      return s.kv_len - s.q_len;
  }
}

Positions LocalPositions(const Shape& s, const Mask& mask, int64_t b, int64_t i, int64_t j) {
  if (!mask.sequences) return {i, j, DiagonalOffset(s, mask, b), true};
  const std::span<const int32_t> cq = mask.sequences->cu_seqlens_q;
  const std::span<const int32_t> ck = mask.sequences->cu_seqlens_k;
  for (size_t x = 0; x + 1 < cq.size(); ++x) {  // the sequence holding query i
    if (i < cq[x] || i >= cq[x + 1]) continue;
    Shape one = s;
    one.q_len = cq[x + 1] - cq[x];
    one.kv_len = ck[x + 1] - ck[x];
    return {i - cq[x], j - ck[x], DiagonalOffset(one, mask, b), ck[x] <= j && j < ck[x + 1]};
  }
  return {i, j, 0, false};
}

bool KeyVisible(const Shape& s, const Mask& mask, int64_t b, int64_t i, int64_t j) {
  const Positions local = LocalPositions(s, mask, b, i, j);
  if (!local.same_sequence) return false;
  const int64_t diag = local.i + local.off;
  j = local.j;
  bool visible = true;
  switch (mask.kind) {
    case MaskKind::kCausal:
      visible = j <= diag;
      break;
    case MaskKind::kSlidingWindow:
      visible = diag - mask.window_left <= j && j <= diag + mask.window_right;
      break;
    default:
      break;
  }
  if (mask.key_lengths && j >= (*mask.key_lengths)[b]) visible = false;
  return visible;
}

bool KeyVisible(const Problem& p, int64_t b, int64_t i, int64_t j) {
  return KeyVisible(p.shape, p.mask, b, i, j);
}

namespace {

// The softcap (cap 0: none), then the ALiBi bias (slope null: none), of a
// scaled logit: what ModifiedLogit and Score both apply.
double ApplyModifiers(const Shape& s, const Mask& mask, double cap, const double* slope, int64_t b,
                      int64_t i, int64_t j, double logit) {
  if (cap != 0) logit = cap * std::tanh(logit / cap);
  if (slope != nullptr) {
    const Positions local = LocalPositions(s, mask, b, i, j);
    logit += *slope * double(local.j - local.i - local.off);
  }
  return logit;
}

}  // namespace

double ModifiedLogit(const Problem& p, int64_t b, int64_t h, int64_t i, int64_t j, double logit) {
  const double slope = p.modifiers.alibi_slopes.empty() ? 0.0 : p.modifiers.alibi_slopes[h];
  return ApplyModifiers(p.shape, p.mask, p.modifiers.softcap.value_or(0.0f),
                        p.modifiers.alibi_slopes.empty() ? nullptr : &slope, b, i, j, logit);
}

double AdditiveAt(const Mask& mask, int64_t b, int64_t h, int64_t i, int64_t j) {
  if (mask.kind != MaskKind::kAdditive) return 0.0;
  const AdditiveMaskShape& a = mask.additive_shape;
  const int64_t mb = a.batch == 1 ? 0 : b;
  const int64_t mh = a.heads == 1 ? 0 : h;
  return double(mask.additive[((mb * a.heads + mh) * a.rows + i) * a.cols + j]);
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
        // Pass 1: logits of visible keys, and their maximum (over the sink
        // too: one more logit, without a value). NaN wins the max.
        const double sink = p.modifiers.sinks.empty() ? -inf : double(p.modifiers.sinks[h]);
        double max = sink;
        for (int64_t j = 0; j < s.kv_len; ++j) {
          visible[j] = KeyVisible(p, b, i, j);
          if (!visible[j]) continue;
          LoadKvRow(p, /*value=*/false, b, kvh, j, k.data());
          double dot = 0;
          for (int64_t d = 0; d < s.head_dim; ++d) dot += q[d] * k[d];
          const double logit =
              ModifiedLogit(p, b, h, i, j, dot * scale) + AdditiveAt(p.mask, b, h, i, j);
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
        double sum = std::exp(sink - max);
        for (int64_t j = 0; j < s.kv_len; ++j) {
          if (!visible[j]) continue;
          const double w = std::exp(logits[j] - max);
          logits[j] = w;
          sum += w;
          LoadKvRow(p, /*value=*/true, b, kvh, j, v.data());
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

// ------------------------------------------------------------------ backward

std::vector<double> LoadTensor(const TensorRef<const void>& t, const RowScales& scales,
                               int64_t batch, int64_t heads, int64_t len, int64_t dim) {
  std::vector<double> out(batch * heads * len * dim);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < len; ++i) {
        LoadRow(t, scales, b, h, i, dim, &out[((b * heads + h) * len + i) * dim]);
      }
  return out;
}

F64Problem ToF64(const Problem& p) {
  const Shape& s = p.shape;
  F64Problem f;
  f.shape = s;
  f.scale = p.scale ? double(*p.scale) : 1.0 / std::sqrt(double(s.head_dim));
  f.mask = p.mask;
  if (p.modifiers.softcap) f.softcap = *p.modifiers.softcap;
  f.alibi_slopes.assign(p.modifiers.alibi_slopes.begin(), p.modifiers.alibi_slopes.end());
  f.sinks.assign(p.modifiers.sinks.begin(), p.modifiers.sinks.end());
  f.q = LoadTensor(p.q, {}, s.batch, s.heads, s.q_len, s.head_dim);
  // K and V through LoadKvRow: contiguous copies of a paged cache too.
  for (const bool value : {false, true}) {
    const int64_t dim = value ? s.value_dim : s.head_dim;
    std::vector<double>& out = value ? f.v : f.k;
    out.resize(s.batch * s.kv_heads * s.kv_len * dim);
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t h = 0; h < s.kv_heads; ++h)
        for (int64_t j = 0; j < s.kv_len; ++j) {
          // Keys past a key length are never read (a paged cache may have no
          // block for them): 0.
          if (p.mask.key_lengths && j >= (*p.mask.key_lengths)[b]) continue;
          LoadKvRow(p, value, b, h, j, &out[((b * s.kv_heads + h) * s.kv_len + j) * dim]);
        }
  }
  return f;
}

namespace {

// Σ f(a[d]·b[d]) in four partial sums, added pairwise at the end.
template <class Term>
double SumOfProducts(const double* a, const double* b, int64_t n, Term term) {
  double part[4] = {0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 4 <= n; d += 4) {
    for (int x = 0; x < 4; ++x) part[x] += term(a[d + x] * b[d + x]);
  }
  for (; d < n; ++d) part[d % 4] += term(a[d] * b[d]);
  return (part[0] + part[1]) + (part[2] + part[3]);
}

}  // namespace

double Dot(const double* a, const double* b, int64_t n) {
  return SumOfProducts(a, b, n, [](double x) { return x; });
}

double AbsDot(const double* a, const double* b, int64_t n) {
  return SumOfProducts(a, b, n, [](double x) { return std::fabs(x); });
}

namespace {

// scale·q_i·k_j.
double ScaledDot(const F64Problem& p, int64_t b, int64_t h, int64_t i, int64_t j) {
  const Shape& s = p.shape;
  const int64_t kvh = h / (s.heads / s.kv_heads);
  const double* q = &p.q[((b * s.heads + h) * s.q_len + i) * s.head_dim];
  const double* k = &p.k[((b * s.kv_heads + kvh) * s.kv_len + j) * s.head_dim];
  return Dot(q, k, s.head_dim) * p.scale;
}

}  // namespace

double Score(const F64Problem& p, int64_t b, int64_t h, int64_t i, int64_t j) {
  const double* slope = p.alibi_slopes.empty() ? nullptr : &p.alibi_slopes[h];
  return ApplyModifiers(p.shape, p.mask, p.softcap, slope, b, i, j, ScaledDot(p, b, h, i, j)) +
         AdditiveAt(p.mask, b, h, i, j);
}

double ScoreSlope(const F64Problem& p, int64_t b, int64_t h, int64_t i, int64_t j) {
  if (p.softcap == 0) return 1.0;
  const double t = std::tanh(ScaledDot(p, b, h, i, j) / p.softcap);
  return 1.0 - t * t;
}

double RowWeights(const F64Problem& p, int64_t b, int64_t h, int64_t i, std::vector<double>& w,
                  std::vector<double>* scores_out) {
  const Shape& s = p.shape;
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  w.assign(s.kv_len, 0.0);
  // Scores of the visible keys (-inf elsewhere) and their maximum, the
  // sink's logit included (NaN wins).
  std::vector<double> own_scores;
  std::vector<double>& scores = scores_out != nullptr ? *scores_out : own_scores;
  scores.assign(s.kv_len, -inf);
  std::vector<char> visible(s.kv_len);
  const double sink = p.sinks.empty() ? -inf : p.sinks[h];
  double max = sink;
  for (int64_t j = 0; j < s.kv_len; ++j) {
    visible[j] = KeyVisible(s, p.mask, b, i, j);
    if (!visible[j]) continue;
    scores[j] = Score(p, b, h, i, j);
    max = std::isnan(scores[j]) || std::isnan(max) ? nan : std::max(max, scores[j]);
  }
  if (max == -inf) return -inf;  // fully masked, no sink: weights 0
  // lse = max + log(e^(σ - max) + Σ e^(S - max)); +inf or NaN max gives NaN.
  double sum = std::exp(sink - max);
  for (int64_t j = 0; j < s.kv_len; ++j) {
    if (visible[j]) sum += std::exp(scores[j] - max);
  }
  const double lse = max + std::log(sum);
  for (int64_t j = 0; j < s.kv_len; ++j) {
    if (visible[j]) w[j] = std::exp(scores[j] - lse);
  }
  return lse;
}

F64Forward ForwardF64(const F64Problem& p) {
  const Shape& s = p.shape;
  const int64_t group = s.heads / s.kv_heads;
  F64Forward f;
  f.o.assign(s.batch * s.heads * s.q_len * s.value_dim, 0.0);
  f.lse.assign(s.batch * s.heads * s.q_len, 0.0);
  ForEachRowChunk(s.batch * s.heads * s.q_len, [&](int64_t, int64_t begin, int64_t end) {
    std::vector<double> w;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row % s.q_len, h = row / s.q_len % s.heads, b = row / s.q_len / s.heads;
      f.lse[row] = RowWeights(p, b, h, i, w);
      if (f.lse[row] == -std::numeric_limits<double>::infinity()) continue;  // O = 0
      double* o = &f.o[row * s.value_dim];
      for (int64_t j = 0; j < s.kv_len; ++j) {
        if (!KeyVisible(s, p.mask, b, i, j)) continue;
        const double* v = &p.v[((b * s.kv_heads + h / group) * s.kv_len + j) * s.value_dim];
        for (int64_t d = 0; d < s.value_dim; ++d) o[d] += w[j] * v[d];
      }
    }
  });
  return f;
}

GradResult BackwardF64(const F64Problem& p, std::span<const double> d_o) {
  const Shape& s = p.shape;
  const int64_t group = s.heads / s.kv_heads;
  const int64_t dk = s.head_dim, dv = s.value_dim;
  GradResult g;
  g.dq.assign(s.batch * s.heads * s.q_len * dk, 0.0);
  g.dk.assign(s.batch * s.kv_heads * s.kv_len * dk, 0.0);
  g.dv.assign(s.batch * s.kv_heads * s.kv_len * dv, 0.0);
  // dK and dV sum over rows: one partial per chunk of rows (row_chunks.h).
  // So do the sinks' gradients.
  const int64_t rows = s.batch * s.heads * s.q_len;
  const int64_t chunks = RowChunkCount(rows);
  std::vector<std::vector<double>> dk_parts(chunks), dv_parts(chunks), sink_parts(chunks);
  ForEachRowChunk(rows, [&](int64_t chunk, int64_t begin, int64_t end) {
    std::vector<double>& dk_sum = dk_parts[chunk];
    std::vector<double>& dv_sum = dv_parts[chunk];
    std::vector<double>& sink_sum = sink_parts[chunk];
    dk_sum.assign(g.dk.size(), 0.0);
    dv_sum.assign(g.dv.size(), 0.0);
    sink_sum.assign(p.sinks.size(), 0.0);
    std::vector<double> w, dp(s.kv_len);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t i = row % s.q_len, h = row / s.q_len % s.heads, b = row / s.q_len / s.heads;
      const int64_t kv_row0 = (b * s.kv_heads + h / group) * s.kv_len;  // row of key 0
      const double lse = RowWeights(p, b, h, i, w);
      if (lse == -std::numeric_limits<double>::infinity()) continue;  // fully masked
      const double* q = &p.q[row * dk];
      const double* go = &d_o[row * dv];
      double* gq = &g.dq[row * dk];
      // dV_j += P_ij·dO_i; dP_ij = dO_i·v_j; D_i = Σ_j P_ij·dP_ij.
      double big_d = 0;
      for (int64_t j = 0; j < s.kv_len; ++j) {
        if (!KeyVisible(s, p.mask, b, i, j)) continue;
        const double* v = &p.v[(kv_row0 + j) * dv];
        double* gv = &dv_sum[(kv_row0 + j) * dv];
        for (int64_t d = 0; d < dv; ++d) gv[d] += w[j] * go[d];
        dp[j] = Dot(go, v, dv);
        big_d += w[j] * dp[j];
      }
      // dσ_h -= P_σi·D_i (a head whose sink is -inf has P_σ = 0).
      if (!p.sinks.empty() && p.sinks[h] != -std::numeric_limits<double>::infinity()) {
        sink_sum[h] -= std::exp(p.sinks[h] - lse) * big_d;
      }
      // dS_ij = P_ij·(dP_ij - D_i)·c_ij; dQ_i += scale·dS_ij·k_j; dK_j += scale·dS_ij·q_i.
      for (int64_t j = 0; j < s.kv_len; ++j) {
        if (!KeyVisible(s, p.mask, b, i, j)) continue;
        const double ds = w[j] * (dp[j] - big_d) * ScoreSlope(p, b, h, i, j);
        const double* k = &p.k[(kv_row0 + j) * dk];
        double* gk = &dk_sum[(kv_row0 + j) * dk];
        for (int64_t d = 0; d < dk; ++d) {
          gq[d] += p.scale * ds * k[d];
          gk[d] += p.scale * ds * q[d];
        }
      }
    }
  });
  g.d_sinks.assign(p.sinks.size(), 0.0);
  for (int64_t c = 0; c < chunks; ++c) {
    AddPartial<double>(g.dk, dk_parts[c]);
    AddPartial<double>(g.dv, dv_parts[c]);
    AddPartial<double>(g.d_sinks, sink_parts[c]);
  }
  return g;
}

StatusOr<GradResult> Backward(const GradProblem& problem) {
  StatusOr<ValidGradProblem> valid = ValidateGrad(problem);
  if (!valid.ok()) return valid.status();
  const Shape& s = problem.forward.shape;
  const std::vector<double> d_o =
      LoadTensor(problem.d_o, {}, s.batch, s.heads, s.q_len, s.value_dim);
  return BackwardF64(ToF64(problem.forward), d_o);
}

}  // namespace attn::reference
