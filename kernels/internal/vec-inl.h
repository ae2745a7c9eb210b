// Per-target vector helpers shared by the attention kernels (blas, simd,
// chunked; flash may reuse Exp and the row helpers). Highway's toggling
// include guard: a file that includes this after hwy/foreach_target.h gets one
// copy per compiled target, inside attn::HWY_NAMESPACE.
//
// The row-softmax contract used by every materializing kernel
// (SoftmaxRowsImpl): raw dot products q·k of a block of query rows against a
// contiguous key range [col0, col0 + cols) that covers every row's visible
// keys. One fused pass per row, while the row is in L1: (1) scale, add the
// additive mask, row max and a NaN flag; (2) exp(x - max) and the row sum.
// Hidden keys inside the block are *set* to 0 (never multiplied), so a NaN
// computed from a hidden K row cannot survive. Normalization is deferred to O
// (FinishRowsImpl multiplies the dv outputs by 1/sum instead of the Lk
// weights), so the softmax costs Lk·(load, fma, max, store) + Lk·(exp, add).
//
// Exp is the project's one vector exponential, FastExp2 (fast_exp2-inl.h,
// <= 2 ulp), applied to x·log2(e). Inputs are x - max <= 0 (-inf gives 0).
// Rounding x·log2(e) adds a relative error <= |x|·u to e^x, i.e. an absolute
// error <= e^x·|x|·u <= u/e on a weight: inside the bound the tests derive.
// NaN logits are detected in pass (1) and handled explicitly (the whole row
// becomes NaN).

#if defined(ATTNLAB_KERNELS_INTERNAL_VEC_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNLAB_KERNELS_INTERNAL_VEC_INL_H_
#undef ATTNLAB_KERNELS_INTERNAL_VEC_INL_H_
#else
#define ATTNLAB_KERNELS_INTERNAL_VEC_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "hwy/highway.h"
#include "kernels/ukernels/exp-inl.h"
#include "kernels/problem.h"

HWY_BEFORE_NAMESPACE();
namespace attn {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

inline constexpr float kVecInf = std::numeric_limits<float>::infinity();
inline constexpr size_t kMaxLanes = HWY_MAX_BYTES / sizeof(float);

// Vector registers available: AVX-512 has 32, the others 16 (or fewer).
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
inline constexpr int kVecRegisters = 32;
#else
inline constexpr int kVecRegisters = 16;
#endif

// e^x for x <= 0 (and -inf -> 0), through the shared FastExp2.
HWY_INLINE VF ExpNonPositive(DF d, VF x) {
  return FastExp2(d, hn::Mul(x, hn::Set(d, 1.4426950408889634f)));
}

// Applies `op(v) -> v` to n floats in place, the tail through a stack buffer
// (its unused lanes hold `pad`) so no load or store crosses the end of the row.
template <class Op>
HWY_INLINE void MapInPlace(float* HWY_RESTRICT x, int64_t n, float pad, Op op) {
  const DF d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  int64_t j = 0;
  for (; j + lanes <= n; j += lanes) hn::StoreU(op(hn::LoadU(d, x + j)), d, x + j);
  if (j < n) {
    HWY_ALIGN float buf[kMaxLanes];
    std::fill(buf, buf + kMaxLanes, pad);
    std::memcpy(buf, x + j, (n - j) * sizeof(float));
    hn::Store(op(hn::Load(d, buf)), d, buf);
    std::memcpy(x + j, buf, (n - j) * sizeof(float));
  }
}

// Pass (1) on n scores: x = s·scale (+ add), stored back; returns max x.
// Sets *has_nan when any x is NaN (max would silently drop it).
HWY_INLINE float ScaleMaskMax(float* HWY_RESTRICT s, int64_t n, float scale,
                              const float* HWY_RESTRICT add, bool* has_nan) {
  const DF d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const VF vscale = hn::Set(d, scale);
  VF vmax0 = hn::Set(d, -kVecInf), vmax1 = vmax0;
  VF nan0 = hn::Zero(d), nan1 = nan0;
  int64_t j = 0;
  if (add != nullptr) {
    for (; j + 2 * lanes <= n; j += 2 * lanes) {
      const VF x0 = hn::MulAdd(hn::LoadU(d, s + j), vscale, hn::LoadU(d, add + j));
      const VF x1 = hn::MulAdd(hn::LoadU(d, s + j + lanes), vscale, hn::LoadU(d, add + j + lanes));
      hn::StoreU(x0, d, s + j);
      hn::StoreU(x1, d, s + j + lanes);
      vmax0 = hn::Max(vmax0, x0);
      vmax1 = hn::Max(vmax1, x1);
      nan0 = hn::Or(nan0, hn::VecFromMask(d, hn::IsNaN(x0)));
      nan1 = hn::Or(nan1, hn::VecFromMask(d, hn::IsNaN(x1)));
    }
  } else {
    for (; j + 2 * lanes <= n; j += 2 * lanes) {
      const VF x0 = hn::Mul(hn::LoadU(d, s + j), vscale);
      const VF x1 = hn::Mul(hn::LoadU(d, s + j + lanes), vscale);
      hn::StoreU(x0, d, s + j);
      hn::StoreU(x1, d, s + j + lanes);
      vmax0 = hn::Max(vmax0, x0);
      vmax1 = hn::Max(vmax1, x1);
      nan0 = hn::Or(nan0, hn::VecFromMask(d, hn::IsNaN(x0)));
      nan1 = hn::Or(nan1, hn::VecFromMask(d, hn::IsNaN(x1)));
    }
  }
  float max = hn::GetLane(hn::MaxOfLanes(d, hn::Max(vmax0, vmax1)));
  bool nan = !hn::AllFalse(d, hn::MaskFromVec(hn::Or(nan0, nan1)));
  for (; j < n; ++j) {  // < 2 vectors left
    const float x = add != nullptr ? s[j] * scale + add[j] : s[j] * scale;
    s[j] = x;
    nan = nan || std::isnan(x);
    max = std::max(max, x);
  }
  *has_nan = nan;
  return max;
}

// Pass (2): s = e^(s - max) in place; returns Σ s, summed in blocks of
// kKeySumBlock keys (problem.h, "Accumulation").
HWY_INLINE float ExpSubSum(float* HWY_RESTRICT s, int64_t n, float max) {
  const DF d;
  const VF vmax = hn::Set(d, max);
  float total = 0.0f;
  for (int64_t j0 = 0; j0 < n; j0 += kKeySumBlock) {
    VF sum = hn::Zero(d);
    // Padding lanes of the tail hold -inf: e^-inf = 0 adds nothing.
    MapInPlace(s + j0, std::min(kKeySumBlock, n - j0), -kVecInf, [&](VF x) {
      const VF e = ExpNonPositive(d, hn::Sub(x, vmax));
      sum = hn::Add(sum, e);
      return e;
    });
    total += hn::GetLane(hn::SumOfLanes(d, sum));
  }
  return total;
}

// out[0, n) *= factor.
HWY_INLINE void ScaleInPlace(float* HWY_RESTRICT x, int64_t n, float factor) {
  const DF d;
  const VF f = hn::Set(d, factor);
  MapInPlace(x, n, 0.0f, [&](VF v) { return hn::Mul(v, f); });
}

// Σ x[i]·y[i] with four accumulators (latency of the FMA chain hidden).
HWY_INLINE float Dot(const float* HWY_RESTRICT x, const float* HWY_RESTRICT y, int64_t n) {
  const DF d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  VF a0 = hn::Zero(d), a1 = a0, a2 = a0, a3 = a0;
  int64_t j = 0;
  for (; j + 4 * lanes <= n; j += 4 * lanes) {
    a0 = hn::MulAdd(hn::LoadU(d, x + j), hn::LoadU(d, y + j), a0);
    a1 = hn::MulAdd(hn::LoadU(d, x + j + lanes), hn::LoadU(d, y + j + lanes), a1);
    a2 = hn::MulAdd(hn::LoadU(d, x + j + 2 * lanes), hn::LoadU(d, y + j + 2 * lanes), a2);
    a3 = hn::MulAdd(hn::LoadU(d, x + j + 3 * lanes), hn::LoadU(d, y + j + 3 * lanes), a3);
  }
  for (; j + lanes <= n; j += lanes) {
    a0 = hn::MulAdd(hn::LoadU(d, x + j), hn::LoadU(d, y + j), a0);
  }
  float sum = hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
  for (; j < n; ++j) sum += x[j] * y[j];
  return sum;
}

// True when every element of the n-float row is finite (x·0 is 0 for finite
// x and NaN for ±inf or NaN; the NaN survives the sum).
HWY_INLINE bool AllFinite(const float* HWY_RESTRICT x, int64_t n) {
  const DF d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const VF zero = hn::Zero(d);
  VF acc = zero;
  int64_t j = 0;
  for (; j + lanes <= n; j += lanes) acc = hn::MulAdd(hn::LoadU(d, x + j), zero, acc);
  float sum = hn::GetLane(hn::SumOfLanes(d, acc));
  for (; j < n; ++j) sum += x[j] * 0.0f;
  return !std::isnan(sum);
}

// Transposes the lanes x lanes matrix held in v[0..lanes) (row r = v[r]) in
// registers: log2(lanes) rounds of ConcatEven/ConcatOdd on row pairs. Each
// round rotates the element index (row bits, lane bits) right by one bit, so
// log2(lanes) rounds swap row and lane: 64 two-source permutes for 16 x 16
// on AVX-512, against 256 single-element stores element by element.
template <class D>
HWY_INLINE void TransposeSquare(D d, hn::Vec<D>* v) {
#if HWY_TARGET == HWY_SCALAR
  (void)d;
  (void)v;
#else
  constexpr size_t kN = hn::MaxLanes(D());
  for (size_t round = 1; round < kN; round *= 2) {
    hn::Vec<D> t[kN];
    for (size_t i = 0; i < kN / 2; ++i) {
      t[i] = hn::ConcatEven(d, v[2 * i + 1], v[2 * i]);
      t[i + kN / 2] = hn::ConcatOdd(d, v[2 * i + 1], v[2 * i]);
    }
    for (size_t i = 0; i < kN; ++i) v[i] = t[i];
  }
#endif
}

// dst[c·ld + r] = scale·rows[r][c] for r < n, c < cols, and 0 for r in
// [n, n_padded): the transpose of n rows (any addresses) into columns, padded
// with zero columns. n_padded is a multiple of the lane count; so is ld.
// Whole lanes x lanes blocks go through registers (TransposeSquare); the last
// cols % lanes columns element by element.
HWY_INLINE void TransposeRows(const float* const* rows, int64_t n, int64_t n_padded, int64_t cols,
                              float scale, float* HWY_RESTRICT dst, int64_t ld) {
  const DF d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const int64_t full = cols / lanes * lanes;
  const VF s = hn::Set(d, scale);
  for (int64_t r0 = 0; r0 < n_padded; r0 += lanes) {
    const int64_t live = std::clamp<int64_t>(n - r0, 0, lanes);  // real rows here
    for (int64_t c0 = 0; c0 < full; c0 += lanes) {
      VF v[kMaxLanes];
      for (int64_t i = 0; i < lanes; ++i) {
        v[i] = i < live ? hn::Mul(hn::LoadU(d, rows[r0 + i] + c0), s) : hn::Zero(d);
      }
      TransposeSquare(d, v);
      for (int64_t i = 0; i < lanes; ++i) hn::StoreU(v[i], d, dst + (c0 + i) * ld + r0);
    }
    for (int64_t c = full; c < cols; ++c) {
      for (int64_t i = 0; i < lanes; ++i) {
        dst[c * ld + r0 + i] = i < live ? scale * rows[r0 + i][c] : 0.0f;
      }
    }
  }
}

// O rows = P rows · V over nkeys keys: o[r][:] = Σ_j p[r][j]·v[j][:] for
// R rows (overwrites o). Register block: R rows × NV vectors of dv, so each
// V load feeds R FMAs and each broadcast p feeds NV FMAs. Keys go in blocks
// of kKeySumBlock (problem.h, "Accumulation"), each block's sums added to o.
template <int R, int NV>
HWY_INLINE void PVTile(const float* HWY_RESTRICT p, int64_t ldp, const float* HWY_RESTRICT v,
                       int64_t ldv, int64_t nkeys, float* HWY_RESTRICT o, int64_t ldo) {
  const DF d;
  const size_t lanes = hn::Lanes(d);
  int64_t j0 = 0;
  do {  // at least once: nkeys = 0 writes zeros
    const int64_t j1 = std::min(nkeys, j0 + kKeySumBlock);
    VF acc[R][NV];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < NV; ++c) acc[r][c] = hn::Zero(d);
    for (int64_t j = j0; j < j1; ++j) {
      const float* vj = v + j * ldv;
      VF vv[NV];
      for (int c = 0; c < NV; ++c) vv[c] = hn::LoadU(d, vj + c * lanes);
      for (int r = 0; r < R; ++r) {
        const VF pr = hn::Set(d, p[r * ldp + j]);
        for (int c = 0; c < NV; ++c) acc[r][c] = hn::MulAdd(pr, vv[c], acc[r][c]);
      }
    }
    for (int r = 0; r < R; ++r) {
      for (int c = 0; c < NV; ++c) {
        float* out = o + r * ldo + c * lanes;
        hn::StoreU(j0 == 0 ? acc[r][c] : hn::Add(acc[r][c], hn::LoadU(d, out)), d, out);
      }
    }
    j0 = j1;
  } while (j0 < nkeys);
}

// The whole dv for R rows: vector columns in register tiles, then the
// remaining dv % lanes columns as scalar dot products.
template <int R>
HWY_INLINE void PVRows(const float* HWY_RESTRICT p, int64_t ldp, const float* HWY_RESTRICT v,
                       int64_t ldv, int64_t nkeys, int64_t dv, float* HWY_RESTRICT o, int64_t ldo) {
  const DF d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  // Accumulators R·NV plus NV loads and one broadcast must fit the registers.
  constexpr int kNV = (kVecRegisters >= 32 && R <= 4) ? 4 : 2;
  int64_t c = 0;
  for (; c + kNV * lanes <= dv; c += kNV * lanes) {
    PVTile<R, kNV>(p, ldp, v + c, ldv, nkeys, o + c, ldo);
  }
  for (; c + lanes <= dv; c += lanes) PVTile<R, 1>(p, ldp, v + c, ldv, nkeys, o + c, ldo);
  for (; c < dv; ++c) {
    for (int r = 0; r < R; ++r) {
      float sum = 0.0f;
      for (int64_t j0 = 0; j0 < nkeys; j0 += kKeySumBlock) {
        float block = 0.0f;
        for (int64_t j = j0; j < std::min(nkeys, j0 + kKeySumBlock); ++j) {
          block += p[r * ldp + j] * v[j * ldv + c];
        }
        sum += block;
      }
      o[r * ldo + c] = sum;
    }
  }
}

// Any number of rows: blocks of 4, then the remainder.
HWY_INLINE void PVBlock(const float* HWY_RESTRICT p, int64_t ldp, int64_t rows,
                        const float* HWY_RESTRICT v, int64_t ldv, int64_t nkeys, int64_t dv,
                        float* HWY_RESTRICT o, int64_t ldo) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) PVRows<4>(p + r * ldp, ldp, v, ldv, nkeys, dv, o + r * ldo, ldo);
  for (; r + 2 <= rows; r += 2) PVRows<2>(p + r * ldp, ldp, v, ldv, nkeys, dv, o + r * ldo, ldo);
  for (; r < rows; ++r) PVRows<1>(p + r * ldp, ldp, v, ldv, nkeys, dv, o + r * ldo, ldo);
}

// ---------------------------------------------------------------------------
// Row-block operations on a ValidProblem. The block: query rows
// [row0, row0 + rows) of head (b, h); scores s[r * ld + (j - col0)] for keys
// j in [col0, col0 + cols), which must contain every row's VisibleKeys.

// Softmax of the block (see the file comment). Per row: row_max[r] = max
// logit (-inf: fully masked; NaN: the row is NaN), row_sum[r] = Σ e^(x - max);
// s holds the unnormalized weights, 0 for hidden keys. Writes the attention
// weights when the problem asks for them.
HWY_INLINE void SoftmaxRowsImpl(const ValidProblem& p, int64_t b, int64_t h, int64_t row0,
                                int64_t rows, int64_t col0, int64_t cols, float* s, int64_t ld,
                                float* row_max, float* row_sum) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = row0 + r;
    float* row = s + r * ld;
    const KeyRange keys = p.VisibleKeys(b, i);
    // Visible part of the block row, relative to col0 (empty rows: [0, 0)).
    const int64_t vb = keys.empty() ? 0 : keys.begin - col0;
    const int64_t ve = keys.empty() ? 0 : keys.end - col0;
    if (vb > 0) std::fill(row, row + vb, 0.0f);
    if (ve < cols) std::fill(row + ve, row + cols, 0.0f);
    const float* add = p.AdditiveRow(b, h, i);
    float max = -kVecInf, sum = 0.0f;
    if (ve > vb) {
      bool has_nan = false;
      max = ScaleMaskMax(row + vb, ve - vb, p.scale, add ? add + keys.begin : nullptr, &has_nan);
      if (has_nan || max == kVecInf) {
        max = std::numeric_limits<float>::quiet_NaN();
        std::fill(row + vb, row + ve, 0.0f);
      } else if (max == -kVecInf) {
        std::fill(row + vb, row + ve, 0.0f);
      } else {
        sum = ExpSubSum(row + vb, ve - vb, max);
      }
    }
    row_max[r] = max;
    row_sum[r] = sum;
    if (float* w = p.WeightsRow(b, h, i)) {
      const int64_t lk = p.shape.kv_len;
      std::fill(w, w + lk, 0.0f);
      if (std::isnan(max)) {
        std::fill(w + keys.begin, w + keys.end, std::numeric_limits<float>::quiet_NaN());
      } else if (max != -kVecInf) {
        std::memcpy(w + keys.begin, row + vb, (ve - vb) * sizeof(float));
        ScaleInPlace(w + keys.begin, ve - vb, 1.0f / sum);
      }
    }
  }
}

// O rows of the block hold Σ_j p_j v_j (unnormalized): divide by the sum and
// write lse. Fully masked rows get O = 0 and lse = -inf, NaN rows NaN.
HWY_INLINE void FinishRowsImpl(const ValidProblem& p, int64_t b, int64_t h, int64_t row0,
                               int64_t rows, const float* row_max, const float* row_sum) {
  const int64_t dv = p.shape.value_dim;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = row0 + r;
    float* o = p.ORow(b, h, i);
    const float max = row_max[r];
    float lse;
    if (std::isnan(max)) {
      std::fill(o, o + dv, max);
      lse = max;
    } else if (max == -kVecInf) {
      std::fill(o, o + dv, 0.0f);
      lse = -kVecInf;
    } else {
      ScaleInPlace(o, dv, 1.0f / row_sum[r]);
      lse = max + std::log(row_sum[r]);
    }
    if (!p.lse.empty()) p.lse[p.RowIndex(b, h, i)] = lse;
  }
}

// O rows (unnormalized) from each row's own visible keys only: the fallback
// when the block's key range holds a non-finite V row that some row must not
// see (0·NaN would leak it). Cost O(rows·visible·dv), no extra memory.
HWY_INLINE void RowsTimesVImpl(const ValidProblem& p, int64_t b, int64_t h, int64_t row0,
                               int64_t rows, int64_t col0, const float* s, int64_t ld) {
  const int64_t kvh = p.KvHead(h);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = row0 + r;
    const KeyRange keys = p.VisibleKeys(b, i);
    float* o = p.ORow(b, h, i);
    if (keys.empty()) {
      std::fill(o, o + p.shape.value_dim, 0.0f);
      continue;
    }
    PVRows<1>(s + r * ld + (keys.begin - col0), ld, p.VRow(b, kvh, keys.begin), p.v.strides.row,
              keys.size(), p.shape.value_dim, o, p.o.strides.row);
  }
}

// True when V rows [begin, end) of (b, kv head) are all finite.
HWY_INLINE bool ValuesFiniteImpl(const ValidProblem& p, int64_t b, int64_t kvh, int64_t begin,
                                 int64_t end) {
  for (int64_t j = begin; j < end; ++j) {
    if (!AllFinite(p.VRow(b, kvh, j), p.shape.value_dim)) return false;
  }
  return true;
}

// Raw scores q·k for the block with one Dot per (row, key): the path for
// strides a GEMM cannot take (row stride < d, e.g. broadcast rows).
HWY_INLINE void DotScoresImpl(const ValidProblem& p, int64_t b, int64_t h, int64_t row0,
                              int64_t rows, int64_t col0, int64_t cols, float* s, int64_t ld) {
  const int64_t kvh = p.KvHead(h);
  for (int64_t r = 0; r < rows; ++r) {
    const float* q = p.QRow(b, h, row0 + r);
    for (int64_t c = 0; c < cols; ++c) {
      s[r * ld + c] = Dot(q, p.KRow(b, kvh, col0 + c), p.shape.head_dim);
    }
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace attn
HWY_AFTER_NAMESPACE();

#endif  // ATTNLAB_KERNELS_INTERNAL_VEC_INL_H_
