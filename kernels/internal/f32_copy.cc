#include "kernels/internal/f32_copy.h"

#include <algorithm>

#include "kernels/internal/parallel.h"

namespace attn {
namespace {

// One [B, heads, len, dim] tensor: its view and, for a copy, the buffer.
struct Tensor {
  TensorRef<const void> view;
  RowScales scales;  // int8 only
  int64_t heads, len, dim;
  const ValidProblem* paged = nullptr;  // K or V of a paged problem: rows via its block table

  int64_t elements(int64_t batch) const { return batch * heads * len * dim; }
};

// Converts head (b, h) of `t` into rows of the contiguous fp32 `out`.
void ConvertHead(const Tensor& t, int64_t b, int64_t h, float* out) {
  const size_t element_bytes = DTypeBytes(t.view.dtype);
  // A paged cache has no block for keys past a sequence's length (its
  // table's entries there are never read): those rows of the copy are 0, and
  // no kernel reads them (key lengths are structural).
  int64_t rows = t.len;
  if (t.paged != nullptr && t.paged->mask.key_lengths) rows = (*t.paged->mask.key_lengths)[b];
  for (int64_t i = rows; i < t.len; ++i) {
    std::fill_n(out + ((b * t.heads + h) * t.len + i) * t.dim, t.dim, 0.0f);
  }
  for (int64_t i = 0; i < rows; ++i) {
    const char* row = static_cast<const char*>(t.paged ? t.paged->KvRow(t.view, b, h, i)
                                                       : ValidProblem::Row(t.view, b, h, i));
    const int64_t at =
        t.paged ? t.paged->KvOffset(t.scales.strides, b, h, i)
                : b * t.scales.strides.batch + h * t.scales.strides.head + i * t.scales.strides.row;
    const float scale = t.view.dtype == DType::kI8 ? t.scales.data[at] : 1.0f;
    float* dst = out + ((b * t.heads + h) * t.len + i) * t.dim;
    for (int64_t d = 0; d < t.dim; ++d) {
      dst[d] = LoadElement(t.view.dtype, row + d * element_bytes, scale);
    }
  }
}

// What an empty copy points at: Validate refuses a null tensor even with no
// elements (Lq = 0 or Lk = 0), and nothing reads or writes through it.
alignas(64) float g_empty_copy[16];

// `t` as a contiguous fp32 copy in `buffer`; returns the copy's view.
TensorRef<const void> CopyToF32(const Tensor& t, int64_t batch, int threads,
                                Workspace::Buffer<float>& buffer, Workspace& workspace) {
  if (t.elements(batch) == 0) return {g_empty_copy, Strides::BHLD(t.heads, t.len, t.dim)};
  buffer = workspace.Allocate<float>(t.elements(batch));
  ParallelFor(threads, batch * t.heads,
              [&](int64_t bh) { ConvertHead(t, bh / t.heads, bh % t.heads, buffer.data()); });
  return {buffer.data(), Strides::BHLD(t.heads, t.len, t.dim)};
}

Tensor QOf(const ValidProblem& p) {
  return {p.q, {}, p.shape.heads, p.shape.q_len, p.shape.head_dim};
}
Tensor KOf(const ValidProblem& p) {
  return {p.k,
          p.k_scales,
          p.shape.kv_heads,
          p.shape.kv_len,
          p.shape.head_dim,
          p.kv_pages ? &p : nullptr};
}
Tensor VOf(const ValidProblem& p) {
  return {p.v,
          p.v_scales,
          p.shape.kv_heads,
          p.shape.kv_len,
          p.shape.value_dim,
          p.kv_pages ? &p : nullptr};
}
// Whether the copy converts `t`: every non-fp32 tensor, and K and V of a
// paged problem with any non-fp32 tensor (the copy is contiguous, so both
// leave the pool or neither does).
bool Converted(const ValidProblem& p, const Tensor& t) {
  return t.view.dtype != DType::kF32 || (t.paged != nullptr && !p.AllF32());
}
Tensor OOf(const ValidProblem& p) {
  return {{p.o.data, p.o.strides, p.o.dtype}, {}, p.shape.heads, p.shape.q_len, p.shape.value_dim};
}

// Rounds the fp32 O rows back into the original O.
void WriteBackO(const ValidProblem& original, const ValidProblem& f32, int threads) {
  const Shape& s = original.shape;
  const DType dtype = original.o.dtype;
  ParallelFor(threads, s.batch * s.heads, [&](int64_t bh) {
    const int64_t b = bh / s.heads, h = bh % s.heads;
    for (int64_t i = 0; i < s.q_len; ++i) {
      StoreRow(dtype, f32.ORow(b, h, i), s.value_dim, ValidProblem::Row(original.o, b, h, i));
    }
  });
}

}  // namespace

size_t F32CopyBytes(const ValidProblem& p) {
  SaturatingSize floats = 0;
  const int64_t batch = p.shape.batch;
  for (const Tensor& t : {QOf(p), KOf(p), VOf(p), OOf(p)}) {
    if (Converted(p, t)) floats = floats + t.elements(batch);
  }
  return (floats * sizeof(float)).value();
}

Status RunOnF32Copy(KernelFn run, const ValidProblem& p, ExecContext& ctx) {
  if (p.AllF32()) return run(p, ctx);
  const int64_t batch = p.shape.batch;
  Workspace& workspace = *ctx.workspace;
  Workspace::Buffer<float> q, k, v, o;
  Problem f;
  f.shape = p.shape;
  f.scale = p.scale;
  f.mask = p.mask;
  f.modifiers = p.modifiers;
  f.lse = p.lse;
  f.weights = p.weights;
  auto fp32 = [&](const Tensor& t, Workspace::Buffer<float>& buffer) -> TensorRef<const void> {
    if (!Converted(p, t)) return {t.view.data, t.view.strides};
    return CopyToF32(t, batch, ctx.threads, buffer, workspace);
  };
  f.q = fp32(QOf(p), q);
  f.k = fp32(KOf(p), k);
  f.v = fp32(VOf(p), v);
  f.o = {p.o.data, p.o.strides};
  if (p.o.dtype != DType::kF32) {
    const Strides strides = Strides::BHLD(p.shape.heads, p.shape.q_len, p.shape.value_dim);
    if (OOf(p).elements(batch) == 0) {
      f.o = {g_empty_copy, strides};
    } else {
      o = workspace.Allocate<float>(OOf(p).elements(batch));
      f.o = {o.data(), strides};
    }
  }
  StatusOr<ValidProblem> converted = Validate(f);
  if (!converted.ok()) {
    return Internal("the fp32 copy of a valid problem did not validate: " +
                    converted.status().message());
  }
  Status status = run(*converted, ctx);
  if (status.ok() && p.o.dtype != DType::kF32) WriteBackO(p, *converted, ctx.threads);
  return status;
}

}  // namespace attn
