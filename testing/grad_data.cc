#include "testing/grad_data.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "kernels/registry.h"

namespace attn::testing {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Elements of a buffer with `heads`·`len` rows of `dim` + `pad` floats per
// batch, plus the misalignment offset.
size_t BufferSize(const ProblemSpec& spec, int64_t heads, int64_t len, int64_t dim,
                  int64_t offset) {
  return size_t(spec.shape.batch * heads * len * (dim + spec.row_pad) + offset);
}

}  // namespace

GradData::GradData(ProblemData& data, std::optional<uint64_t> seed) : data_(data) {
  const ProblemSpec& spec = data.spec();
  const Shape& s = spec.shape;
  offset_ = spec.misalign ? 1 : 0;
  d_o_.resize(BufferSize(spec, s.heads, s.q_len, s.value_dim, offset_));
  dq_.resize(BufferSize(spec, s.heads, s.q_len, s.head_dim, offset_));
  dk_.resize(BufferSize(spec, s.kv_heads, s.kv_len, s.head_dim, offset_));
  dv_.resize(BufferSize(spec, s.kv_heads, s.kv_len, s.value_dim, offset_));
  d_sinks_.resize(s.heads);
  std::mt19937_64 rng(seed ? *seed : spec.seed ^ 0x9e3779b97f4a7c15ull);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (float& x : d_o_) x = uniform(rng);
  Poison();
  // Each gradient mirrors the ProblemData tensor of its shape: its strides.
  const Problem& p = data.problem();
  grads_.d_o = {d_o_.data() + offset_, p.o.strides, DType::kF32};
  grads_.dq = {dq_.data() + offset_, p.q.strides, DType::kF32};
  grads_.dk = {dk_.data() + offset_, p.k.strides, DType::kF32};
  grads_.dv = {dv_.data() + offset_, p.v.strides, DType::kF32};
}

GradProblem GradData::grad_problem() const {
  GradProblem g = grads_;
  g.forward = data_.problem();
  if (!g.forward.modifiers.sinks.empty()) g.d_sinks = d_sinks_;
  return g;
}

void GradData::Poison() {
  for (std::vector<float>* buf : {&dq_, &dk_, &dv_, &d_sinks_}) {
    std::fill(buf->begin(), buf->end(), kNaN);
  }
}

std::string GradData::PaddingWritten() const {
  const int64_t pad = data_.spec().row_pad;
  if (pad == 0) return "";
  const Shape& s = data_.spec().shape;
  const GradProblem g = grad_problem();
  const struct {
    const char* name;
    const char* row;
    const TensorRef<void>& t;
    int64_t heads, len, dim;
  } grads[] = {{"dQ", "i", g.dq, s.heads, s.q_len, s.head_dim},
               {"dK", "j", g.dk, s.kv_heads, s.kv_len, s.head_dim},
               {"dV", "j", g.dv, s.kv_heads, s.kv_len, s.value_dim}};
  for (const auto& t : grads)
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t h = 0; h < t.heads; ++h)
        for (int64_t i = 0; i < t.len; ++i) {
          const float* row = RowOf(t.t, b, h, i);
          for (int64_t d = t.dim; d < t.dim + pad; ++d) {
            if (!std::isnan(row[d])) {
              return std::string(t.name) + "[b=" + std::to_string(b) + ",h=" + std::to_string(h) +
                     "," + t.row + "=" + std::to_string(i) + "]";
            }
          }
        }
  return "";
}

Status RunForwardForGrad(ProblemData& data, std::string_view variant) {
  return Run(variant, data.problem());
}

}  // namespace attn::testing
