#include "bench/layer.h"

#include <cblas.h>

#include <chrono>
#include <cmath>

#include "bench/bench_common.h"

namespace attn::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// out[L, m] = in[L, m] · w[m, m]
void Project(const std::vector<float>& in, const std::vector<float>& w, std::vector<float>& out,
             int64_t len, int64_t m) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, len, m, m, 1.0f, in.data(), m, w.data(), m,
              0.0f, out.data(), m);
}

}  // namespace

MhaLayer::MhaLayer(int64_t len, int64_t heads, int64_t dim, uint64_t seed)
    : len_(len), heads_(heads), dim_(dim), model_(heads * dim) {
  const size_t act = len_ * model_, weights = model_ * model_;
  x_.resize(act);
  FillRandom(x_.data(), act, seed);
  // Weights uniform in ±1/sqrt(d_model): projections keep unit-size values.
  const float w_scale = 1.0f / std::sqrt(float(model_));
  int k = 1;
  for (std::vector<float>* w : {&wq_, &wk_, &wv_, &wo_}) {
    w->resize(weights);
    FillRandom(w->data(), weights, seed + k++);
    for (float& e : *w) e *= w_scale;
  }
  for (std::vector<float>* a : {&q_, &k_, &v_, &a_, &y_}) a->assign(act, 0.0f);
}

Problem MhaLayer::AttentionProblem() {
  const Shape shape{1, heads_, heads_, len_, len_, dim_, dim_};
  return MakeProblem(shape, q_.data(), k_.data(), v_.data(), a_.data(), Layout::kBLHD);
}

Status MhaLayer::Prepare(const Variant& variant, const RunOptions& options) const {
  auto prepared = attn::Prepare(variant, const_cast<MhaLayer*>(this)->AttentionProblem(), options);
  return prepared.ok() ? Status::Ok() : prepared.status();
}

LayerTimes MhaLayer::Forward(const Variant& variant, const RunOptions& options) {
  LayerTimes t;
  const auto t0 = Clock::now();
  Project(x_, wq_, q_, len_, model_);
  Project(x_, wk_, k_, len_, model_);
  Project(x_, wv_, v_, len_, model_);
  const auto t1 = Clock::now();
  t.status = Run(variant, AttentionProblem(), options);
  const auto t2 = Clock::now();
  Project(a_, wo_, y_, len_, model_);
  const auto t3 = Clock::now();
  t.attention_seconds = Seconds(t1, t2);
  t.total_seconds = Seconds(t0, t3);
  return t;
}

double MhaLayer::Flops() const {
  const double l = double(len_), m = double(model_);
  return 4 * 2 * l * m * m + AttentionFlops(double(heads_) * l * l, dim_, dim_);
}

}  // namespace attn::bench
