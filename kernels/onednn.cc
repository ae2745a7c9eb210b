// onednn: the `blas` algorithm in bf16, with oneDNN's matmul doing both
// products (issue 16: "two vendor matmuls and a fused softmax pass"). Built
// only when CMake finds oneDNN 2.x (libdnnl-dev 2.6.3; variants.inc).
//
// Per (batch b, head h), over an Lq x Lk fp32 score matrix, in panels of
// kPanelRows query rows, as blas (kernels/blas.cc):
//   1. S = Q·Kᵀ with a oneDNN matmul (M = panel rows, N = the panel's
//      visible-key union, K = dk): bf16 x bf16 -> fp32 when Q and K are bf16,
//      fp32 when both are fp32. Q and K of different types: the fp32 one is
//      rounded to bf16 first, once per head (kernels/problem.h allows
//      rounding Q·Kᵀ operands to the narrower type). Strided views go in as
//      oneDNN strided memory descriptors, no copies.
//   2. Scale + mask + softmax in one fused fp32 pass per row: SoftmaxRows,
//      the same helper blas, simd and chunked use, so masks, fully masked
//      rows and NaN rows behave identically; normalization deferred to O.
//   3. P rounded to V's type (bf16 V: round to nearest even into a per-thread
//      bf16 panel; fp32 V: P stays fp32), O = P·V with oneDNN matmuls
//      over blocks of kKeySumBlock keys, each added to O (fp32 accumulation
//      and output), then FinishRows (O /= row sum, lse)
//      and, for a bf16 or f16 O, one rounding per element (StoreRow).
// The roundings are exactly those problem.h allows (Q·Kᵀ operands of
// different types, P to V's type, O once), which reference/error_bound.cc
// already charges: flash's bf16 path rounds P the same way.
// As in blas, the P·V product spans the panel's union of keys (p = 0 for
// the keys a row must not see); with a structural mask a panel whose V range
// holds a non-finite row falls back to per-row sums over each row's own
// keys, so NaN/inf in hidden V rows cannot leak (0·NaN = NaN).
//
// Takes Q f32/bf16, K and V f32/bf16, O f32/bf16/f16. Not f16 inputs (this
// oneDNN has f16 matmul only on AVX512-FP16 CPUs) nor int8 K/V (int8 x int8
// matmuls would need Q quantized, which problem.h does not allow).
//
// Why this variant: it is what a user of a vendor library gets from the
// materializing algorithm in bf16. The bench's ceiling_matmul_bf16 times the
// same two products alone with the same library.
//
// Memory traffic per head (bf16 Q, K, V): reads Q (2·Lq·dk bytes), K and V
// (2·Lk·d) about once per panel (oneDNN packs the B operand: Lk·d bf16 per
// panel, so Lq/256 passes over K and V, from L2/L3); writes S (4·Lq·Lk),
// reads and writes it in the softmax pass, reads it once more to round P,
// writes P (2·Lq·Lk) and reads it for P·V: about 18·Lq·Lk bytes of score
// traffic, a little more than blas's 16 (P in bf16 is an extra pass), and it
// dominates even more here because the products run ~2x faster in bf16.
// Working set: per concurrent head the Lq·Lk fp32 matrix and 2·Lq floats (as
// blas), an fp32 O (Lq·dv) when O is reduced, the bf16 copy of a Q or K of
// the other type, per thread one bf16 P panel (256·Lk) and, past
// kKeySumBlock keys, one fp32 P·V panel of a key block (256·dv): declared exactly
// (OnednnWorkspaceBytes is what RunOnednn allocates). oneDNN's own
// scratchpad (its packed copy of the B operand, ~2·Lk·d bytes per thread)
// is allocated by oneDNN (its thread-local "global" scratchpad), outside the
// counting allocator.
// kPanelRows = 256, as blas: with M = 256 a matmul's packing of B (Lk·d) is
// amortized over 256 rows; the score panel (256·Lk floats, 4 MiB at
// Lk = 4096) stays in L2/L3 between its passes; causal wastes half a panel
// per panel; panels are the unit of parallelism inside a head.
//
// Threads: as blas. Each matmul runs single-threaded (ScopedThreads(1) sets
// OpenMP's nthreads ICV, which the OpenMP build of oneDNN reads; inside our
// parallel regions oneDNN runs sequentially anyway) and OpenMP splits heads
// or panels over ctx.threads, never oversubscribing. Fixed panels make every
// row's result independent of the thread count (deterministic = true).
//
// Primitives: creating a oneDNN matmul (descriptor, JIT kernel) costs far
// more than a panel's product at small N, so the primitives are kept in a
// per-thread cache keyed by shape, types and strides (dense: two shapes per
// problem; causal: two per panel); see Matmul for why per thread.
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>

#include "kernels/internal/bytes.h"
#include "kernels/internal/parallel.h"
#include "kernels/internal/rows.h"
#include "kernels/internal/thread_scope.h"
#include "kernels/registry.h"

namespace attn {
namespace {

constexpr int64_t kPanelRows = 256;
constexpr int64_t kAlignFloats = 16;  // 64-byte sections in the scratch

int64_t AlignUp(int64_t floats) {
  return (floats + kAlignFloats - 1) / kAlignFloats * kAlignFloats;
}
int64_t Bf16Floats(int64_t elements) { return AlignUp((elements + 1) / 2); }

// Where each part of a head's scratch lies, in floats from its start.
struct HeadLayout {
  int64_t matrix = 0;    // Lq x Lk fp32 scores
  int64_t row_max = 0;   // Lq
  int64_t row_sum = 0;   // Lq
  int64_t o = -1;        // Lq x dv fp32 O (a reduced O), else -1
  int64_t operand = -1;  // bf16 copy of Q (Lq x dk) or K (Lk x dk), else -1
  int64_t p = -1;        // `p_slots` bf16 P panels of kPanelRows x Lk, else -1
  int64_t p_slots = 0;
  // Lk > kKeySumBlock: per thread one key block's P·V (kPanelRows x dv fp32),
  // added to O block by block (KeyBlockedGemm), else -1.
  int64_t pv_block = -1;
  int64_t pv_block_floats = 0;
  int64_t total = 0;
};

// The layout for `p` when `row_threads` threads share one head.
HeadLayout LayoutFor(const ValidProblem& p, int row_threads) {
  const int64_t lq = p.shape.q_len, lk = p.shape.kv_len;
  HeadLayout l;
  int64_t at = 0;
  l.matrix = at;
  at += AlignUp(lq * lk);
  l.row_max = at;
  at += AlignUp(lq);
  l.row_sum = at;
  at += AlignUp(lq);
  if (p.o.dtype != DType::kF32) {
    l.o = at;
    at += AlignUp(lq * p.shape.value_dim);
  }
  if (p.q.dtype != p.k.dtype) {
    l.operand = at;
    at += Bf16Floats((p.q.dtype == DType::kF32 ? lq : lk) * p.shape.head_dim);
  }
  if (p.v.dtype == DType::kBF16) {
    l.p = at;
    l.p_slots = row_threads;
    at += row_threads * Bf16Floats(std::min(kPanelRows, lq) * lk);
  }
  if (lk > kKeySumBlock) {
    l.pv_block = at;
    l.pv_block_floats = AlignUp(std::min(kPanelRows, lq) * p.shape.value_dim);
    at += row_threads * l.pv_block_floats;
  }
  l.total = at;
  return l;
}

// Heads in flight, and the threads sharing each (ForEachHead's split).
int RowThreads(const ValidProblem& p, int threads) {
  return HeadsInFlight(p.shape.batch * p.shape.heads, threads) == 1 ? threads : 1;
}

size_t OnednnWorkspaceBytes(const ValidProblem& p, int threads) {
  if (p.shape.q_len == 0) return 0;
  const int64_t heads = HeadsInFlight(p.shape.batch * p.shape.heads, threads);
  return (SaturatingSize(heads) * LayoutFor(p, RowThreads(p, threads)).total * sizeof(float))
      .value();
}

// ------------------------------------------------------------------- oneDNN

// One operand of a product: rows of `dtype` elements, `stride` elements apart.
struct Operand {
  const void* data;
  int64_t stride;
  DType dtype;  // kF32 or kBF16

  const void* Row(int64_t i) const {
    return static_cast<const char*>(data) + i * stride * int64_t(DTypeBytes(dtype));
  }
};

using dnnl::memory;

memory::data_type DnnlType(DType t) {
  return t == DType::kBF16 ? memory::data_type::bf16 : memory::data_type::f32;
}

const dnnl::engine& Engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// C [m x n] (fp32, rows ldc apart) = A [m x k] · B, B given as [k x n] rows
// of n (b_by_columns = false: V) or as n rows of k (true: K, for Q·Kᵀ).
struct GemmShape {
  int64_t m, n, k;
  DType a_type, b_type;
  int64_t lda, ldb, ldc;
  bool b_by_columns;

  memory::desc a() const { return memory::desc({m, k}, DnnlType(a_type), {lda, 1}); }
  memory::desc b() const {
    return b_by_columns ? memory::desc({k, n}, DnnlType(b_type), {1, ldb})
                        : memory::desc({k, n}, DnnlType(b_type), {ldb, 1});
  }
  memory::desc c() const { return memory::desc({m, n}, memory::data_type::f32, {ldc, 1}); }
  std::array<int64_t, 9> Key() const {
    return {m, n, k, int64_t(a_type), int64_t(b_type), lda, ldb, ldc, b_by_columns};
  }
};

struct CachedMatmul {
  dnnl::matmul primitive;
  std::string impl;  // "brg:avx512_core_bf16", ...
};

// The calling thread's matmul primitive for `shape`, from its cache. Throws
// dnnl::error when oneDNN has no implementation for it.
//
// One cache per thread because a oneDNN primitive object is not safe to
// execute from two threads at once: its scratchpad is bound when the object
// is made (library mode: the creating thread's thread-local "global"
// scratchpad), so two threads running one object share one buffer (measured:
// garbage O with 2 threads on one shared primitive). Objects made from the
// same descriptor on several threads share their JIT code through oneDNN's
// own primitive cache; only the small handle is per thread.
const CachedMatmul& Matmul(const GemmShape& shape) {
  thread_local std::map<std::array<int64_t, 9>, CachedMatmul> cache;
  // Bounded: a causal problem adds two shapes per panel; past this many the
  // cache starts over.
  constexpr size_t kMaxEntries = 512;
  const auto key = shape.Key();
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(shape.a(), shape.b(), shape.c()),
                                        Engine());
  CachedMatmul made{dnnl::matmul(pd), pd.impl_info_str()};
  if (cache.size() >= kMaxEntries) cache.clear();
  return cache.emplace(key, std::move(made)).first->second;
}

// A leading dimension a matmul can take for `count` rows of `width`: the
// stride, or (one row) anything >= width; 0 when the rows overlap.
int64_t LeadingDim(int64_t stride, int64_t count, int64_t width) {
  if (count <= 1) return std::max({stride, width, int64_t{1}});
  return stride >= width ? stride : 0;
}

// C = A·B with oneDNN on the calling thread; false (nothing written) when
// the strides or types have no oneDNN implementation. `impl` gets the
// implementation's name.
bool Gemm(int64_t m, int64_t n, int64_t k, const Operand& a, const Operand& b, bool b_by_columns,
          float* c, int64_t ldc, std::string* impl) {
  const GemmShape shape{m,
                        n,
                        k,
                        a.dtype,
                        b.dtype,
                        LeadingDim(a.stride, m, k),
                        b_by_columns ? LeadingDim(b.stride, n, k) : LeadingDim(b.stride, k, n),
                        LeadingDim(ldc, m, n),
                        b_by_columns};
  if (shape.lda == 0 || shape.ldb == 0 || shape.ldc == 0 || a.dtype != b.dtype) return false;
  try {
    const CachedMatmul& matmul = Matmul(shape);
    const dnnl::engine& engine = Engine();
    memory a_mem(shape.a(), engine, const_cast<void*>(a.data));
    memory b_mem(shape.b(), engine, const_cast<void*>(b.data));
    memory c_mem(shape.c(), engine, c);
    dnnl::stream stream(engine);
    matmul.primitive.execute(
        stream, {{DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, b_mem}, {DNNL_ARG_DST, c_mem}});
    stream.wait();
    if (impl->empty()) *impl = matmul.impl;
  } catch (const dnnl::error&) {
    return false;
  }
  return true;
}

// O = P·V (m x n, k keys) as Gemm does, in blocks of kKeySumBlock keys whose
// products are added to O (kernels/problem.h, "Accumulation"): oneDNN's own
// inner loop may be one running sum (its AVX2 matmul for one row and dv = 1
// gave 0.5 instead of 1 over 2^25 equal weights, a running sum stopping at
// 2^24; so does its sum post-op, which adds into C as it goes). Blocks after
// the first go to `block` (m x n, when k > kKeySumBlock). False when a block
// has no oneDNN matmul (the caller's fallback then writes all of O).
bool KeyBlockedGemm(int64_t m, int64_t n, int64_t k, const Operand& p, const Operand& v, float* o,
                    int64_t ldo, float* block, std::string* impl) {
  for (int64_t j0 = 0; j0 < k; j0 += kKeySumBlock) {
    const Operand pb{static_cast<const char*>(p.data) + j0 * int64_t(DTypeBytes(p.dtype)), p.stride,
                     p.dtype};
    const Operand vb{v.Row(j0), v.stride, v.dtype};
    const int64_t keys = std::min(kKeySumBlock, k - j0);
    if (j0 == 0) {
      if (!Gemm(m, n, keys, pb, vb, /*b_by_columns=*/false, o, ldo, impl)) return false;
      continue;
    }
    if (!Gemm(m, n, keys, pb, vb, /*b_by_columns=*/false, block, n, impl)) return false;
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t c = 0; c < n; ++c) o[r * ldo + c] += block[r * n + c];
    }
  }
  return true;
}

// ------------------------------------------------------------ the fallbacks

// The path's name when oneDNN made no matmul for the score product (bf16 on
// a core without AVX-512, where oneDNN 2.6 has no bf16 matmul; or rows that
// overlap): the products below, element by element, orders of magnitude
// slower, which the bench label then says.
constexpr const char* kScalarFallback = "scalar loops (oneDNN made no matmul for these operands)";

// The same products element by element, for what oneDNN does not take
// (overlapping rows: a broadcast Q, K or V with row stride < d).
float Dot(const Operand& a, int64_t i, const Operand& b, int64_t j, int64_t k) {
  const size_t ea = DTypeBytes(a.dtype), eb = DTypeBytes(b.dtype);
  const char* x = static_cast<const char*>(a.Row(i));
  const char* y = static_cast<const char*>(b.Row(j));
  float sum = 0.0f;
  for (int64_t d = 0; d < k; ++d)
    sum += LoadElement(a.dtype, x + d * ea) * LoadElement(b.dtype, y + d * eb);
  return sum;
}

// True when V rows [begin, end) are all finite (bf16: exponent not all ones).
bool VRowsFinite(const ValidProblem& p, int64_t b, int64_t kvh, int64_t begin, int64_t end) {
  if (p.v.dtype == DType::kF32) return ValuesFinite(p, b, kvh, begin, end);
  const int64_t dv = p.shape.value_dim;
  for (int64_t j = begin; j < end; ++j) {
    const auto* row = static_cast<const uint16_t*>(ValidProblem::Row(p.v, b, kvh, j));
    bool bad = false;
    for (int64_t d = 0; d < dv; ++d) bad |= (row[d] & 0x7F80u) == 0x7F80u;
    if (bad) return false;
  }
  return true;
}

// O rows (unnormalized) = Σ over each row's own visible keys of p·v, with P
// as the matmul would read it (`pm`, rows from row0, columns from col0). Keys
// are summed in blocks of kKeySumBlock (kernels/problem.h, "Accumulation"),
// as every variant does: a running fp32 sum over 2^25 keys stops growing.
void RowsTimesVAnyType(const ValidProblem& p, int64_t b, int64_t h, int64_t row0, int64_t rows,
                       int64_t col0, const Operand& pm, float* o, int64_t ldo) {
  const int64_t kvh = p.KvHead(h), dv = p.shape.value_dim;
  const size_t ep = DTypeBytes(pm.dtype), ev = DTypeBytes(p.v.dtype);
  for (int64_t r = 0; r < rows; ++r) {
    float* out = o + r * ldo;
    const KeyRange keys = p.VisibleKeys(b, row0 + r);
    const char* prow = static_cast<const char*>(pm.Row(r));
    for (int64_t d = 0; d < dv; ++d) {
      float total = 0.0f;
      for (int64_t j0 = keys.begin; j0 < keys.end; j0 += kKeySumBlock) {
        float part = 0.0f;
        for (int64_t j = j0; j < std::min(keys.end, j0 + kKeySumBlock); ++j) {
          const char* v = static_cast<const char*>(ValidProblem::Row(p.v, b, kvh, j));
          part +=
              LoadElement(pm.dtype, prow + (j - col0) * ep) * LoadElement(p.v.dtype, v + d * ev);
        }
        total += part;
      }
      out[d] = total;
    }
  }
}

// ------------------------------------------------------------------ a head

// Converts `n` rows of `width` elements (rows `stride` apart) to contiguous
// bf16 (round to nearest even).
void RoundRowsToBf16(const float* src, int64_t stride, int64_t n, int64_t width, uint16_t* dst) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t d = 0; d < width; ++d) dst[i * width + d] = BF16BitsFromF32(src[i * stride + d]);
  }
}

// One (b, h) on `threads` threads (panels in parallel); `scratch` laid out
// as `l`. Returns the first matmul's implementation name in `impl`.
void AttendHead(const ValidProblem& p, int64_t b, int64_t h, float* scratch, const HeadLayout& l,
                int threads, std::string* impl) {
  const int64_t lq = p.shape.q_len, lk = p.shape.kv_len;
  const int64_t dk = p.shape.head_dim, dv = p.shape.value_dim;
  const int64_t kvh = p.KvHead(h);
  float* matrix = scratch + l.matrix;
  float* row_max = scratch + l.row_max;
  float* row_sum = scratch + l.row_sum;

  // The Q·Kᵀ operands, of one type.
  Operand q{ValidProblem::Row(p.q, b, h, 0), p.q.strides.row, p.q.dtype};
  Operand k{ValidProblem::Row(p.k, b, kvh, 0), p.k.strides.row, p.k.dtype};
  if (l.operand >= 0) {
    Operand& f32 = p.q.dtype == DType::kF32 ? q : k;
    const int64_t n = p.q.dtype == DType::kF32 ? lq : lk;
    auto* copy = reinterpret_cast<uint16_t*>(scratch + l.operand);
    RoundRowsToBf16(static_cast<const float*>(f32.data), f32.stride, n, dk, copy);
    f32 = {copy, dk, DType::kBF16};
  }
  // O as fp32 rows: p's own, or the head's buffer for a reduced O.
  ValidProblem po = p;
  if (l.o >= 0) po.o = {scratch + l.o, Strides{0, 0, dv, 1}, DType::kF32};
  const Operand v{ValidProblem::Row(p.v, b, kvh, 0), p.v.strides.row, p.v.dtype};

  const int64_t panels = (lq + kPanelRows - 1) / kPanelRows;
  std::mutex impl_mutex;
  ParallelFor(threads, panels, [&](int64_t panel, int thread) {
    const int64_t r0 = panel * kPanelRows;
    const int64_t rows = std::min(kPanelRows, lq - r0);
    const KeyRange keys = BlockKeys(p, b, r0, rows);
    const int64_t cols = keys.size();
    const int64_t ld = std::max<int64_t>(cols, 1);
    float* s = matrix + r0 * lk;
    std::string used;
    if (cols > 0) {
      const Operand qp{q.Row(r0), q.stride, q.dtype};
      const Operand kp{k.Row(keys.begin), k.stride, k.dtype};
      if (dk == 0) {
        std::fill(s, s + rows * ld, 0.0f);
      } else if (!Gemm(rows, cols, dk, qp, kp, /*b_by_columns=*/true, s, ld, &used)) {
        used = kScalarFallback;
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t c = 0; c < cols; ++c) s[r * ld + c] = Dot(qp, r, kp, c, dk);
        }
      }
    }
    SoftmaxRows(p, b, h, r0, rows, keys.begin, cols, s, ld, row_max + r0, row_sum + r0);
    if (cols > 0 && dv > 0) {
      // P in V's type: bf16 (rounded here) or the fp32 weights in place.
      Operand pm{s, ld, DType::kF32};
      if (p.v.dtype == DType::kBF16) {
        auto* p16 = reinterpret_cast<uint16_t*>(scratch + l.p) +
                    thread * 2 * Bf16Floats(std::min(kPanelRows, lq) * lk);
        RoundRowsToBf16(s, ld, rows, cols, p16);
        pm = {p16, cols, DType::kBF16};
      }
      const Operand vp{v.Row(keys.begin), v.stride, v.dtype};
      float* o = po.ORow(b, h, r0);
      const int64_t ldo = po.o.strides.row;
      const bool safe = !p.HasStructuralMask() || VRowsFinite(p, b, kvh, keys.begin, keys.end);
      float* block = l.pv_block < 0 ? nullptr : scratch + l.pv_block + thread * l.pv_block_floats;
      if (!safe || !KeyBlockedGemm(rows, dv, cols, pm, vp, o, ldo, block, &used)) {
        RowsTimesVAnyType(p, b, h, r0, rows, keys.begin, pm, o, ldo);
      }
    }
    // Rows with no visible key (all of them when cols == 0) get O = 0 here.
    FinishRows(po, b, h, r0, rows, row_max + r0, row_sum + r0);
    if (l.o >= 0) {
      for (int64_t i = r0; i < r0 + rows; ++i) {
        StoreRow(p.o.dtype, po.ORow(b, h, i), dv, ValidProblem::Row(p.o, b, h, i));
      }
    }
    if (!used.empty()) {
      std::lock_guard<std::mutex> lock(impl_mutex);
      if (impl->empty()) *impl = used;
    }
  });
}

Status RunOnednn(const ValidProblem& p, ExecContext& ctx) {
  if (p.shape.q_len == 0) return Status::Ok();
  const HeadLayout layout = LayoutFor(p, RowThreads(p, ctx.threads));
  auto scratch = ctx.workspace->Allocate<float>(
      HeadsInFlight(p.shape.batch * p.shape.heads, ctx.threads) * layout.total);
  // Single-threaded matmuls, also when ParallelFor runs without a parallel
  // region (one thread, or one item).
  ScopedThreads matmul_threads(1);
  std::mutex impl_mutex;
  std::string impl;
  ForEachHead(p.shape.batch, p.shape.heads, ctx.threads, scratch.data(), layout.total,
              [&](int64_t b, int64_t h, float* head_scratch, int row_threads) {
                std::string used;
                AttendHead(p, b, h, head_scratch, layout, row_threads, &used);
                std::lock_guard<std::mutex> lock(impl_mutex);
                if (impl.empty()) impl = used;
              });
  // "oneDNN brg:avx512_core_bf16 + AVX3": the matmul kernel oneDNN chose and
  // the Highway target of the softmax pass; or the scalar fallback's name.
  if (!impl.empty()) {
    ctx.path = (impl == kScalarFallback ? impl : "oneDNN " + impl) + " + " + ctx.path;
  }
  return Status::Ok();
}

}  // namespace

extern const Variant onednn_variant = {
    .name = "onednn",
    .summary =
        "oneDNN matmul (bf16 -> fp32) for Q·Kᵀ and P·V, fused softmax, P in V's type, "
        "Lq x Lk",
    .run = RunOnednn,
    .workspace_bytes = OnednnWorkspaceBytes,
    .supports_weights = true,
    .materializes_scores = true,
    .uses_highway = true,
    .deterministic = true,
    .dtypes = {.q = DTypeMask(DType::kF32) | DTypeMask(DType::kBF16),
               .kv = DTypeMask(DType::kF32) | DTypeMask(DType::kBF16),
               .o = kFloatDTypes},
    .modifiers = 0,  // refuses softcap, ALiBi and sinks (naive and flash apply them)
    .backward = {},  // none
};

}  // namespace attn
