#include "testing/compare.h"

#include <cmath>
#include <cstdio>
#include <string>

namespace attn::testing {
namespace {

// One element by reference::CompareElement, named only in the first failure:
// building the name of every element would cost more than comparing it.
template <typename Where>
void CompareNamed(double got, double want, double bound, Comparison& c, Where&& where) {
  const bool first = c.ok;
  if (!reference::CompareElement(got, want, bound, c, "") && first) {
    c.first_failure = where() + c.first_failure;
  }
}

// "O[b=0,h=1,i=3,d=5]" (`index_name` "d", `index` 5), "lse[b=0,h=1,i=3]" (no index).
std::string ElementName(const char* output, int64_t b, int64_t h, int64_t i,
                        const char* index_name = nullptr, int64_t index = 0) {
  char name[128];
  const int n = std::snprintf(name, sizeof(name), "%s[b=%lld,h=%lld,i=%lld", output, (long long)b,
                              (long long)h, (long long)i);
  if (index_name) {
    std::snprintf(name + n, sizeof(name) - n, ",%s=%lld]", index_name, (long long)index);
  } else {
    std::snprintf(name + n, sizeof(name) - n, "]");
  }
  return name;
}

}  // namespace

void CompareRow(const Problem& p, int64_t b, int64_t h, int64_t i, const reference::Result& want,
                int64_t want_row, const RowBound& bound, Comparison& c, Outputs outputs) {
  const Shape& s = p.shape;
  const int64_t row = (b * s.heads + h) * s.q_len + i;
  if (outputs.o) {
    const char* o = static_cast<const char*>(ValidProblem::Row(p.o, b, h, i));
    const size_t size = DTypeBytes(p.o.dtype);
    const double* w = want.o.data() + want_row * s.value_dim;
    for (int64_t d = 0; d < s.value_dim; ++d) {
      CompareNamed(LoadElement(p.o.dtype, o + d * size), w[d], bound.o, c,
                   [&] { return ElementName("O", b, h, i, "d", d); });
    }
  }
  if (outputs.lse && !p.lse.empty()) {
    CompareNamed(p.lse[row], want.lse[want_row], bound.lse, c,
                 [&] { return ElementName("lse", b, h, i); });
  }
  if (outputs.weights && !p.weights.empty()) {
    if (want.weights.empty()) {
      if (c.ok) c.first_failure = "weights: the reference was computed without them";
      c.ok = false;
      return;
    }
    const float* got = p.weights.data() + row * s.kv_len;
    const double* w = want.weights.data() + want_row * s.kv_len;
    for (int64_t j = 0; j < s.kv_len; ++j) {
      CompareNamed(got[j], w[j], bound.weights, c,
                   [&] { return ElementName("weights", b, h, i, "j", j); });
    }
  }
}

std::vector<RowBound> RowBounds(const Problem& p) {
  const Shape& s = p.shape;
  std::vector<RowBound> bounds;
  bounds.reserve(s.batch * s.heads * s.q_len);
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h)
      for (int64_t i = 0; i < s.q_len; ++i) bounds.push_back(ErrorBound(p, b, h, i));
  return bounds;
}

Comparison CompareToReference(const Problem& p, const reference::Result& want,
                              std::span<const RowBound> bounds) {
  const Shape& s = p.shape;
  Comparison c;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h)
      for (int64_t i = 0; i < s.q_len; ++i) {
        const int64_t row = (b * s.heads + h) * s.q_len + i;
        CompareRow(p, b, h, i, want, row, bounds[row], c);
      }
  return c;
}

Comparison CompareToReference(const Problem& p, const reference::Result& want) {
  return CompareToReference(p, want, RowBounds(p));
}

Comparison CompareToReference(const ProblemData& data, const reference::Result& want) {
  Comparison c = CompareToReference(data.problem(), want);
  if (const std::string where = data.PaddingWritten(); !where.empty() && c.ok) {
    c.ok = false;
    c.first_failure = "kernel wrote into O's row padding at " + where;
  }
  return c;
}

Comparison CompareGradients(const GradProblem& g, const reference::GradResult& want,
                            const reference::GradBounds& bounds) {
  const Shape& s = g.forward.shape;
  Comparison c;
  // One gradient tensor [B, heads, len, dim]: `row` names the position index.
  auto compare = [&](const char* name, const char* row, const TensorRef<void>& t, int64_t heads,
                     int64_t len, int64_t dim, const std::vector<double>& w,
                     const std::vector<double>& bound) {
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < len; ++i) {
          const float* got = RowOf(t, b, h, i);
          const int64_t at = ((b * heads + h) * len + i) * dim;
          for (int64_t d = 0; d < dim; ++d) {
            CompareNamed(got[d], w[at + d], bound[at + d], c, [&] {
              char where[160];
              std::snprintf(where, sizeof(where), "%s[b=%lld,h=%lld,%s=%lld,d=%lld]", name,
                            (long long)b, (long long)h, row, (long long)i, (long long)d);
              return std::string(where);
            });
          }
        }
  };
  compare("dQ", "i", g.dq, s.heads, s.q_len, s.head_dim, want.dq, bounds.dq);
  compare("dK", "j", g.dk, s.kv_heads, s.kv_len, s.head_dim, want.dk, bounds.dk);
  compare("dV", "j", g.dv, s.kv_heads, s.kv_len, s.value_dim, want.dv, bounds.dv);
  if (!g.d_sinks.empty()) {
    if (want.d_sinks.size() != g.d_sinks.size() || bounds.d_sinks.size() != g.d_sinks.size()) {
      c.ok = false;
      if (c.first_failure.empty()) c.first_failure = "d_sinks: the reference has no sinks";
      return c;
    }
    for (size_t h = 0; h < g.d_sinks.size(); ++h) {
      CompareNamed(g.d_sinks[h], want.d_sinks[h], bounds.d_sinks[h], c,
                   [&] { return "d_sinks[h=" + std::to_string(h) + "]"; });
    }
  }
  return c;
}

double LogitRounding(int64_t head_dim) { return double(head_dim + 2) * std::ldexp(1.0, -24); }

bool LogitsRepresentable(const Problem& p, int64_t b, int64_t h, int64_t i) {
  const Shape& s = p.shape;
  const double scale = p.scale ? double(*p.scale) : 1.0 / std::sqrt(double(s.head_dim));
  const double g = LogitRounding(s.head_dim);
  std::vector<double> q(s.head_dim), k(s.head_dim);
  reference::LoadRow(p.q, {}, b, h, i, s.head_dim, q.data());
  for (int64_t d = 0; d < s.head_dim; ++d) {
    if (!(std::fabs(q[d]) * scale * (1 + g) < kFp32Overflow)) return false;
  }
  const float* additive = AdditiveRow(p, b, h, i);
  const int64_t kvh = h / (s.heads / s.kv_heads);
  for (int64_t j = 0; j < s.kv_len; ++j) {
    if (!reference::KeyVisible(p, b, i, j)) continue;
    reference::LoadKvRow(p, /*value=*/false, b, kvh, j, k.data());
    double dot_abs = 0;
    for (int64_t d = 0; d < s.head_dim; ++d) dot_abs += std::fabs(q[d] * k[d]);
    const float m = additive ? additive[j] : 0.0f;
    // The mask entry and the ALiBi bias are added to the logit alike.
    const double m_abs = (std::isinf(m) ? 0.0 : std::fabs(double(m))) +
                         std::fabs(reference::ModifiedLogit(p, b, h, i, j, 0.0));
    if (!((1 + g) * dot_abs < kFp32Overflow && (1 + g) * scale * dot_abs + m_abs < kFp32Overflow)) {
      return false;
    }
  }
  return true;
}

}  // namespace attn::testing
