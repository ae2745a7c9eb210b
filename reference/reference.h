// The oracle: plain, obviously correct, double precision. Never optimized.
//
// It reads the same Problem (and GradProblem) description as the kernels but
// shares none of their code beyond Validate() (and ValidateGrad()): the mask
// rules below are written again, element by element, straight from the
// semantics in kernels/problem.h, so a bug in the kernels' shared helpers
// (ValidProblem::VisibleKeys) cannot hide.
#ifndef ATTNLAB_REFERENCE_REFERENCE_H_
#define ATTNLAB_REFERENCE_REFERENCE_H_

#include <span>
#include <vector>

#include "kernels/problem.h"
#include "kernels/status.h"

namespace attn::reference {

struct Result {
  std::vector<double> o;        // [B, H, Lq, dv], contiguous
  std::vector<double> lse;      // [B, H, Lq]
  std::vector<double> weights;  // [B, H, Lq, Lk] (when asked for)
};

// Two-pass softmax with max subtraction, in double, on the exact values the
// inputs stand for (bf16, f16 and scale·int8 elements convert to double
// exactly). Fails only when Validate(problem) fails.
StatusOr<Result> Attention(const Problem& problem, bool with_weights = false);

// Row (b, h, i) of a view as the exact doubles its elements stand for
// (`scales` is read for an int8 view only).
void LoadRow(const TensorRef<const void>& t, const RowScales& scales, int64_t b, int64_t h,
             int64_t i, int64_t n, double* out);

// A whole view as contiguous [batch, heads, len, dim] exact doubles.
std::vector<double> LoadTensor(const TensorRef<const void>& t, const RowScales& scales,
                               int64_t batch, int64_t heads, int64_t len, int64_t dim);

// Row j of K (value = false) or V (value = true) seen by batch b, kv head
// kvh, as exact doubles (dk or dv of them): through the block table when the
// problem's K/V are paged (kernels/problem.h, "Paged K/V"), written again
// from that definition.
void LoadKvRow(const Problem& problem, bool value, int64_t b, int64_t kvh, int64_t j, double* out);
// The scale of that row when it is int8 (kernels/problem.h), else 1.
double KvRowScale(const Problem& problem, bool value, int64_t b, int64_t kvh, int64_t j);

// True when query row i of batch b may read key j under the structural masks
// (causal, sliding window, key lengths), per kernels/problem.h.
bool KeyVisible(const Problem& problem, int64_t b, int64_t i, int64_t j);
// The same from the shape and mask alone.
bool KeyVisible(const Shape& shape, const Mask& mask, int64_t b, int64_t i, int64_t j);
// off of kernels/problem.h for batch b: Lk - Lq for a bottom-right diagonal,
// 0 top-left, Mask::diagonal_offset (kAt), key_lengths[b] - Lq (kKeyLengths).
int64_t DiagonalOffset(const Shape& shape, const Mask& mask, int64_t b);
// Query position i and key position j counted from the start of their
// sequence, and that sequence's diagonal offset: the positions themselves and
// DiagonalOffset without packed sequences; with them (Mask::sequences), those
// of query i's sequence, and whether key j belongs to it.
struct Positions {
  int64_t i, j, off;
  bool same_sequence;
};
Positions LocalPositions(const Shape& shape, const Mask& mask, int64_t b, int64_t i, int64_t j);
// A scaled logit of batch b, query head h, row i, key j after the softcap and
// the ALiBi bias (kernels/problem.h, "Score modifiers"), in double.
double ModifiedLogit(const Problem& problem, int64_t b, int64_t h, int64_t i, int64_t j,
                     double logit);
// The additive mask entry of (b, h, i, j) as a double; 0 when the mask is not
// additive.
double AdditiveAt(const Mask& mask, int64_t b, int64_t h, int64_t i, int64_t j);

// ------------------------------------------------------------------ backward
//
// The analytic backward (kernels/problem.h, "backward") in double, from the
// reference's OWN exact forward: P is recomputed from Q, K, the scale and the
// mask, never read from a kernel's O or lse. Per query row i of head h (kv
// head kvh = h / (H / Hkv)) and structurally visible key j:
//   S_ij = scale·q_i·k_j + mask_ij,  lse_i = log Σ_j e^S_ij,  P_ij = e^(S_ij - lse_i)
//   dV_j += P_ij·dO_i,  dP_ij = dO_i·v_j,  D_i = Σ_j P_ij·dP_ij,
//   dS_ij = P_ij·(dP_ij - D_i)·c_ij,  dQ_i = scale·Σ_j dS_ij·k_j,  dK_j += scale·dS_ij·q_i,
// with the score modifiers: S_ij = cap·tanh(scale·q_i·k_j / cap) + ALiBi + mask,
// c_ij = ∂S_ij/∂(scale·q_i·k_j) = 1 - tanh² (1 without a softcap); a sink σ_h
// joins lse's sum (P_σi = e^(σ_h - lse_i), no value), so dσ_h = -Σ_(b,i) P_σi·D_i.
// Structurally hidden pairs are skipped (never multiplied by 0); a fully
// masked row (lse = -inf) is skipped whole (dQ = 0, nothing to dK, dV,
// whatever dO holds); everything else is the plain arithmetic, so NaN
// propagates as IEEE says (0·NaN = NaN through an additive -inf key).

// Gradients, contiguous: dq [B, H, Lq, dk], dk [B, Hkv, Lk, dk],
// dv [B, Hkv, Lk, dv]; d_sinks [H] (empty without sinks): ∂loss/∂σ_h summed
// over batch and rows.
struct GradResult {
  std::vector<double> dq, dk, dv, d_sinks;
};

// The backward of `problem` from the exact values its inputs stand for (Q, K,
// V, the mask, dO; the forward's O and lse are not read). Fails only when
// ValidateGrad(problem) fails.
StatusOr<GradResult> Backward(const GradProblem& problem);

// The problem in double, so that a test can perturb an input by less than an
// fp32 ulp (finite differences): the shape, scale and mask of a Problem (the
// mask's spans are borrowed, not owned) and contiguous inputs
// q [B, H, Lq, dk], k [B, Hkv, Lk, dk], v [B, Hkv, Lk, dv].
struct F64Problem {
  Shape shape;
  double scale = 1.0;
  Mask mask;
  std::vector<double> q, k, v;
  // The score modifiers (kernels/problem.h, "Score modifiers"), exact:
  // softcap 0 is none; empty slopes or sinks are none (else H each).
  double softcap = 0;
  std::vector<double> alibi_slopes, sinks;
};
// The exact values of a problem that passes Validate() (scale resolved).
F64Problem ToF64(const Problem& problem);

// The scaled, modified, masked score S_ij of query row (b, h, i) and key j
// (which the caller has checked is structurally visible).
double Score(const F64Problem& problem, int64_t b, int64_t h, int64_t i, int64_t j);
// ∂S_ij/∂(scale·q_i·k_j): 1 - tanh²(scale·q_i·k_j / cap) with a softcap, else 1
// (ALiBi and the mask add constants).
double ScoreSlope(const F64Problem& problem, int64_t b, int64_t h, int64_t i, int64_t j);

// The forward in double: o [B, H, Lq, dv] (0 for a fully masked row),
// lse [B, H, Lq] (-inf for a fully masked row; NaN when a visible score is
// NaN or +inf).
struct F64Forward {
  std::vector<double> o, lse;
};
F64Forward ForwardF64(const F64Problem& problem);

// The weights of query row (b, h, i): writes p[j] = e^(S_ij - lse) for every
// structurally visible j (0 elsewhere, and everywhere when the row is fully
// masked) into `p` (resized to Lk) and returns lse (the sink σ_h, when the
// problem has sinks, is one more term of its sum: a fully masked row then
// has lse = σ_h). ForwardF64 and
// BackwardF64 both read P from here. With `scores`, also writes S_ij there
// (resized to Lk; -inf where j is not visible).
double RowWeights(const F64Problem& problem, int64_t b, int64_t h, int64_t i,
                  std::vector<double>& p, std::vector<double>* scores = nullptr);

// Σ a[d]·b[d] over n elements in double, in four interleaved partial sums
// (the reference's inner products: a latency-bound single chain made the
// N = 16384 accuracy run hours long; the order changes the result by ~n·2^-53
// relative, far below every fp32 bound).
double Dot(const double* a, const double* b, int64_t n);
// Σ |a[d]·b[d]|, the same way.
double AbsDot(const double* a, const double* b, int64_t n);

// The backward above for dO contiguous [B, H, Lq, dv].
GradResult BackwardF64(const F64Problem& problem, std::span<const double> d_o);

}  // namespace attn::reference

#endif  // ATTNLAB_REFERENCE_REFERENCE_H_
