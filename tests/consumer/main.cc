// Runs every registered variant of the installed attnlab on a small causal
// problem and checks O against a direct computation. Exit 0 on success.
#include <cmath>
#include <cstdio>
#include <vector>

#include "kernels/problem.h"
#include "kernels/registry.h"

int main() {
  const attn::Shape shape{1, 2, 1, 5, 7, 8, 4};  // B H Hkv Lq Lk dk dv
  std::vector<float> q(1 * 2 * 5 * 8), k(1 * 1 * 7 * 8), v(1 * 1 * 7 * 4), o(1 * 2 * 5 * 4);
  for (size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.7f * float(i));
  for (size_t i = 0; i < k.size(); ++i) k[i] = std::cos(0.3f * float(i));
  for (size_t i = 0; i < v.size(); ++i) v[i] = 0.1f * float(i % 11) - 0.5f;
  attn::Problem p = attn::MakeProblem(shape, q.data(), k.data(), v.data(), o.data());
  p.mask.kind = attn::MaskKind::kCausal;

  // Direct computation in double (Lk - Lq = 2: row i sees keys j <= i + 2).
  std::vector<double> want(o.size());
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 5; ++i) {
      double s[7], m = -1e300, l = 0;
      for (int j = 0; j <= i + 2; ++j) {
        s[j] = 0;
        for (int d = 0; d < 8; ++d) s[j] += double(q[(h * 5 + i) * 8 + d]) * k[j * 8 + d];
        s[j] /= std::sqrt(8.0);
        m = std::max(m, s[j]);
      }
      for (int j = 0; j <= i + 2; ++j) l += std::exp(s[j] - m);
      for (int d = 0; d < 4; ++d) {
        double acc = 0;
        for (int j = 0; j <= i + 2; ++j) acc += std::exp(s[j] - m) * v[j * 4 + d];
        want[(h * 5 + i) * 4 + d] = acc / l;
      }
    }

  int failures = 0;
  for (const attn::Variant* variant : attn::Registry()) {
    std::fill(o.begin(), o.end(), NAN);
    const attn::Status status = attn::Run(*variant, p);
    double err = 0;
    for (size_t i = 0; i < o.size(); ++i) err = std::max(err, std::fabs(o[i] - want[i]));
    const bool ok = status.ok() && err < 1e-5;
    std::printf("%-16s %s max_err=%.3g %s\n", variant->name, ok ? "ok" : "FAIL", err,
                status.ok() ? "" : status.ToString().c_str());
    failures += !ok;
  }
  std::printf("%zu variants, %d failures\n", attn::Registry().size(), failures);
  return failures == 0 && !attn::Registry().empty() ? 0 : 1;
}
