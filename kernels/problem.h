// The attention problem: one description, validated in one place.
//
//   O = softmax(Q·Kᵀ·scale + mask) · V
//
// Shapes: batch B, query heads H, key/value heads Hkv (H % Hkv == 0; query
// head h reads kv head h / (H / Hkv), which covers MHA, GQA and MQA), query
// length Lq, key length Lk, head dim dk (Q, K) and value dim dv (V, O).
//
// Layout: Q, K, V, O are each a pointer plus element strides for
// (batch, head, position); the innermost (d) stride must be 1. Strides::BHLD
// gives contiguous [B, H, L, d] (PyTorch's layout, the default); Strides::BLHD
// gives [B, L, H, d]. Any other non-negative strides work too.
//
// Scale: default 1/sqrt(dk); it must be finite.
//
// Masks. Let off = Lk - Lq (the diagonal is aligned bottom-right, as in
// FlashAttention >= 2.1, so a query block decoding against a longer KV cache
// works), or off = 0 with Mask::diagonal = kTopLeft (PyTorch's is_causal
// convention; the two agree when Lq = Lk), or any off given with
// Mask::diagonal = kAt (one block of a longer sequence; not with packed
// sequences), or off_b = key_lengths[b] - Lq with Mask::diagonal =
// kKeyLengths (bottom-right of each batch's own key length: the Lq queries
// are the newest tokens of a KV cache that holds key_lengths[b] keys,
// themselves included, as FlashAttention's flash_attn_with_kvcache aligns
// causal to cache_seqlens and vLLM's chunked prefill does; needs key
// lengths, not with packed sequences). The default bottom-right aligns at
// Lk, the cache's capacity: chunked prefill into caches filled to different
// lengths needs kKeyLengths, or its queries see each other's future keys.
// Query row i sees key j when:
//   kNone           always
//   kCausal         j <= i + off
//   kSlidingWindow  i + off - left <= j <= i + off + right   (left, right >= 0)
//   kAdditive       always; the float mask[i, j] is added to the scaled score.
//                   Its shape is [Lq, Lk] broadcast over B and H, or
//                   [B, H, Lq, Lk] (batch and head may each be 1 = broadcast).
//                   Use -inf to mask.
// Independently, key_lengths[b] (optional, one per batch, in [0, Lk]) hides
// keys j >= key_lengths[b] (padding) and combines with any of the above.
// "No key lengths" is std::nullopt, said explicitly: a span that is present
// must hold exactly B entries, so an empty or short array is an error
// ("key_lengths has 0 entries, needs B=2"), never silently ignored.
// Score modifiers (Problem::modifiers; every one O(1) memory, computed in the
// kernel), applied to the scaled logit s = scale·q_i·k_j in this order:
//   softcap    s <- cap·tanh(s / cap)           (Gemma 2; cap > 0, finite)
//   ALiBi      s <- s + slope_h·(j - i - off)   (per query head h; off as
//                                                the diagonal above, so the
//                                                bias is 0 on the diagonal
//                                                and slope·distance before it)
//   additive   s <- s + mask[i, j]
// and attention sinks: a per-query-head logit σ_h (unscaled: a logit like s)
// that joins the softmax denominator and carries no value (gpt-oss):
//   P_ij = e^(s_ij) / (e^σ_h + Σ_j' e^(s_ij')),  lse_i = log(e^σ_h + Σ_j' e^(s_ij')),
// so a row's weights sum to less than 1, and a fully masked row has O = 0 and
// lse = σ_h (-inf when σ_h = -inf, the "no sink" of one head). The weights
// output holds P over the keys only.
// Packed variable-length sequences (Mask::sequences; FlashAttention's varlen
// API, cu_seqlens_q / cu_seqlens_k): B = 1, and Q, K, V, O hold S sequences
// packed along the position axis (e.g. [total_q, H, d] in bshd), sequence s
// at query positions [cu_q[s], cu_q[s+1]) and key positions
// [cu_k[s], cu_k[s+1]). A query sees only its own sequence's keys, and
// within the sequence every rule above holds with positions counted from the
// sequence's start: its own diagonal off_s = Lk_s - Lq_s (bottom-right) or
// 0 (top-left), and ALiBi's distance j - i - off_s. A sequence may be empty
// (Lq_s = 0: nothing to compute; Lk_s = 0 < Lq_s: fully masked rows). lse is
// [1, H, Lq], i.e. [H, total_q] as in FlashAttention's varlen, and the
// weights [1, H, Lq, Lk] are 0 outside each sequence's block. Not combined
// with key_lengths (cu_seqlens_k gives each sequence's keys) or an additive
// mask (an [Lq, Lk] mask is what packing avoids). Run executes each sequence
// as a problem of its own (SequenceProblem below): work and time follow the
// real tokens, and no kernel ever sees a packed problem; large sequences on
// all the threads, small ones together one thread each (SequenceThreads,
// kernels/registry.h).
// Paged K/V (Problem::kv_pages; vLLM's layout): K and V (and an int8 K's or
// V's row scales) are pools of num_blocks blocks of block_size keys,
// [num_blocks, Hkv, block_size, d]: their strides' `batch` steps from block
// to block (a contiguous pool: Strides::BHLD(Hkv, block_size, d)). Key j of
// batch b is row j % block_size of block block_table[b][j / block_size]
// (block_table is [B, blocks_per_sequence], row-major). Lk is the longest a
// sequence may be (<= blocks_per_sequence·block_size) and key_lengths, as
// usual, each sequence's length (Lk being the capacity, a causal chunk of
// prefill takes Diagonal::kKeyLengths); the table's entries past the blocks a
// sequence's keys need are never read (vLLM pads them with -1 or 0), the
// others must name a block of the pool. Blocks may come in any order and be
// shared by several sequences (a common prefix). Everything else (masks,
// modifiers, dtypes, lse) is as for contiguous K/V. Not with packed
// sequences, nor for the backward (a training step has no KV cache).
// Causal, window and key lengths are *structural*: a hidden key is never read,
// so nothing in its K or V row can reach the query. The additive mask is
// arithmetic: a -inf entry gives weight exactly 0, but (IEEE 0 * NaN = NaN)
// a NaN or inf in that key's K or V still reaches the row, as in PyTorch.
//
// Edge semantics (every variant, tested):
//   * A fully masked query row (no visible key, or every visible score -inf)
//     gives O = 0, lse = -inf and weights 0. Never NaN.
//   * Lq = 0 is a legal no-op. Lk = 0 is legal: every row is fully masked.
//     B, H, Hkv, dk, dv must be >= 1.
//   * NaN in Q row i makes row i of O (and lse) NaN and nothing else. NaN in
//     K or V row j makes NaN exactly the query rows that see key j.
//   * Logits: a -inf logit is a masked key. A +inf logit (from the additive
//     mask, or overflow of q·k) or a NaN logit makes that row's O and lse NaN;
//     other rows are unaffected.
//   * Every finite logit is a logit, up to +-FLT_MAX: a row agrees with the
//     fp64 reference within the derived bound whenever its logits evaluate
//     in fp32 without overflow, i.e. for every visible key j
//     (1 + g)·scale·Σ_d |q_d·k_jd| + |mask_ij| and (1 + g)·Σ_d |q_d·k_jd|
//     stay below 2^128 - 2^103 (where fp32 rounding overflows), with
//     g = (dk + 2)·2^-24. A padding mask of float32's lowest value qualifies:
//     a fully padded row gets the mean of V, as in PyTorch. Past that, a
//     variant may overflow where another does not (a NaN row).
//
// Accumulation (every variant; the error bound of reference/error_bound.h
// relies on it): sums over keys (the softmax denominator, each element of
// P·V) are formed in blocks of at most kKeySumBlock keys whose partial sums
// are then added, never as one running fp32 sum over all of Lk. A running
// sum stops growing at 2^24 (2^24 + 1 rounds back to 2^24): with Lk = 2^25
// equal scores, a running denominator returned twice the true average. The
// blocked error grows like (kKeySumBlock + Lk / kKeySumBlock)·u, not Lk·u.
//
// Element types (kernels/dtype.h): Q and O are f32, bf16 or f16; K and V any
// of those or i8 (int8 with one fp32 scale per row in k_scales / v_scales:
// an element is scale·q). An input's value is what is stored; the reference
// reads it exactly. Arithmetic is fp32 (products, sums over keys as above,
// the softmax), and a kernel may round only where this says:
//   * Q·Kᵀ with Q and K of different types (or an i8 K): the operands to the
//     narrower type (i8: bf16). Same-type bf16 or f16 products are exact in
//     fp32, so same-type Q and K add nothing. With an i8 K, Q may instead be
//     quantized to int16 with one step per row (max|q| / 32767, to nearest),
//     the products then exact in integers.
//   * P·V with a reduced V: P to V's type (i8 V: P and the dequantized V to
//     bf16), as FlashAttention does in bf16. With an i8 V, the weights times
//     the V rows' scales may instead be quantized to int16 with one step per
//     query row and run of at most kInt16WeightRun keys (the run's max
//     |weight| / 32767, to nearest), the products then exact in integers.
//     Where P is rounded, its exponential may also err by a relative
//     kReducedExpMaxRel = 2^-13 (the rounding's 2^-8 or 2^-11
//     dominates), the sums l taking the same weights, its exponent formed
//     as x·(scale·log2 e) - m·log2 e (both products rounded once more).
//   * a bf16 or f16 O: the fp32 result, once, to nearest even.
//   * bf16 subnormal operands may count as 0 (AVX512_BF16 flushes them).
//   * an fp32 result below 2^-126 may be 0 (flash flushes subnormal results:
//     kernels/internal/flush_subnormals.h), an absolute error < 2^-126 each.
// reference/error_bound.cc adds exactly these terms to the fp32 bound, so a
// kernel that rounds anything else fails the tests.
//
// Outputs: O (strided like the inputs, in its type); optionally lse [B, H, Lq]
// (natural log of the softmax denominator of the scaled, masked scores,
// contiguous); optionally the attention weights P [B, H, Lq, Lk] (contiguous),
// from the variants that materialize them.
#ifndef ATTNLAB_KERNELS_PROBLEM_H_
#define ATTNLAB_KERNELS_PROBLEM_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <type_traits>

#include "kernels/dtype.h"
#include "kernels/status.h"

namespace attn {

// Element strides of a [batch, head, position, d] tensor view.
struct Strides {
  int64_t batch = 0;
  int64_t head = 0;
  int64_t row = 0;
  int64_t elem = 1;  // the innermost (d) stride; must be 1

  // Contiguous [B, H, L, d].
  static Strides BHLD(int64_t heads, int64_t len, int64_t dim) {
    return {heads * len * dim, len * dim, dim, 1};
  }
  // Contiguous [B, L, H, d].
  static Strides BLHD(int64_t heads, int64_t len, int64_t dim) {
    return {len * heads * dim, dim, heads * dim, 1};
  }
};

enum class Layout { kBHLD, kBLHD };
const char* LayoutName(Layout layout);  // "bhsd", "bshd"

// A strided [batch, head, position, d] view of elements of `dtype`
// (kernels/dtype.h): `data` points at the first element, strides count
// elements. T is `const void` for inputs, `void` for outputs.
template <typename T>
struct TensorRef {
  T* data = nullptr;
  Strides strides;
  DType dtype = DType::kF32;
};

// The per-row scales of an int8 K or V: one fp32 per (batch, kv head,
// position), element (b, h, j) at data[b·strides.batch + h·strides.head +
// j·strides.row] (strides.elem is unused). Required exactly when the tensor is
// DType::kI8; its elements are then scale·q.
struct RowScales {
  const float* data = nullptr;
  Strides strides;
};

struct Shape {
  int64_t batch = 1;
  int64_t heads = 1;      // H, query heads
  int64_t kv_heads = 1;   // Hkv
  int64_t q_len = 0;      // Lq
  int64_t kv_len = 0;     // Lk
  int64_t head_dim = 0;   // dk
  int64_t value_dim = 0;  // dv
};

enum class MaskKind { kNone, kCausal, kSlidingWindow, kAdditive };
const char* MaskKindName(MaskKind kind);  // "none", "causal", "window", "additive"
inline constexpr int kNumMaskKinds = 4;

// Shape of an additive mask: [batch, heads, Lq, Lk] where batch is 1 or B and
// heads is 1 or H (1 = broadcast). Row-major, contiguous.
struct AdditiveMaskShape {
  int64_t batch = 1;
  int64_t heads = 1;
  int64_t rows = 0;  // must equal Lq
  int64_t cols = 0;  // must equal Lk
};

// Where the diagonal of causal and window masks (and ALiBi's zero) lies:
// off = Lk - Lq (bottom-right, the default), 0 (top-left), or
// Mask::diagonal_offset (kAt). kAt describes one block of a longer sequence:
// the queries at global positions [q0, q0 + Lq) of a problem whose own
// offset is `off` against the keys at [k0, k0 + Lk) have off + q0 - k0, so
// ring attention (dist/ring.h) runs every block pair as an ordinary problem.
// kKeyLengths puts each batch's diagonal at its own key length (a KV cache
// filled to key_lengths[b]: off_b = key_lengths[b] - Lq).
enum class Diagonal { kBottomRight, kTopLeft, kAt, kKeyLengths };
// "bottom-right", "top-left", "at", "key-lengths"
const char* DiagonalName(Diagonal diagonal);

// The sequences of a packed batch (see "Packed variable-length sequences"):
// S + 1 non-decreasing offsets each, from 0 to Lq (queries) and Lk (keys).
struct PackedSequences {
  std::span<const int32_t> cu_seqlens_q;
  std::span<const int32_t> cu_seqlens_k;
  int64_t count() const { return cu_seqlens_q.empty() ? 0 : int64_t(cu_seqlens_q.size()) - 1; }
};

struct Mask {
  MaskKind kind = MaskKind::kNone;
  Diagonal diagonal = Diagonal::kBottomRight;  // kCausal, kSlidingWindow, ALiBi
  int64_t diagonal_offset = 0;                 // off for Diagonal::kAt; |off| <= kMaxTensorElements
  int64_t window_left = 0;                     // kSlidingWindow
  int64_t window_right = 0;                    // kSlidingWindow
  std::span<const float> additive;             // kAdditive
  AdditiveMaskShape additive_shape;            // kAdditive
  // Padding lengths, B entries; any kind. std::nullopt: no key lengths.
  std::optional<std::span<const int32_t>> key_lengths;
  // Packed variable-length sequences (B = 1); any kind but kAdditive.
  std::optional<PackedSequences> sequences;
};

// Score modifiers (see "Score modifiers" above). Each is off when empty.
struct ScoreModifiers {
  std::optional<float> softcap;         // cap > 0, finite
  std::span<const float> alibi_slopes;  // H finite slopes, one per query head
  std::span<const float> sinks;         // H logits, one per query head: finite or -inf
  bool any() const { return softcap || !alibi_slopes.empty() || !sinks.empty(); }
};
// Which modifiers a problem uses, as a set: what variants declare support for.
inline constexpr uint8_t kSoftcap = 1, kAlibi = 2, kSinks = 4;
inline constexpr uint8_t kAllModifiers = kSoftcap | kAlibi | kSinks;
uint8_t ModifiersOf(const ScoreModifiers& m);
// "softcap, alibi" for a set; "none" when empty.
std::string ModifierNames(uint8_t set);

// A paged K/V cache (see "Paged K/V").
struct KvPages {
  std::span<const int32_t> block_table;  // [B, blocks_per_sequence] block indexes
  int64_t blocks_per_sequence = 0;
  int64_t block_size = 0;  // keys per block
  int64_t num_blocks = 0;  // blocks in the K and V pools
};

struct Problem {
  Shape shape;
  TensorRef<const void> q, k, v;  // Q f32/bf16/f16; K, V any DType
  TensorRef<void> o;              // f32/bf16/f16
  RowScales k_scales, v_scales;   // when K, V are kI8
  std::optional<float> scale;     // default 1/sqrt(head_dim)
  Mask mask;
  ScoreModifiers modifiers;
  std::optional<KvPages> kv_pages;  // K, V (and their scales) are block pools
  std::span<float> lse;             // optional output, B*H*Lq entries
  std::span<float> weights;         // optional output, B*H*Lq*Lk entries
};

// Element types of Q, K, V, O (all fp32 by default).
struct DTypes {
  DType q = DType::kF32, k = DType::kF32, v = DType::kF32, o = DType::kF32;
};
// "Q=bf16 K=i8 V=i8 O=f32".
std::string Describe(const DTypes& dtypes);

// A contiguous problem over caller-owned buffers in the given layout
// (Q [B,H,Lq,dk], K [B,Hkv,Lk,dk], V [B,Hkv,Lk,dv], O [B,H,Lq,dv] for kBHLD)
// with elements of `dtypes` (int8 K/V also need Problem::k_scales/v_scales).
Problem MakeProblem(const Shape& shape, const void* q, const void* k, const void* v, void* o,
                    Layout layout = Layout::kBHLD, const DTypes& dtypes = {});
// The element types of a problem's tensors.
DTypes DTypesOf(const Problem& problem);

// The keys query row i may read: [begin, end). Empty when begin >= end.
struct KeyRange {
  int64_t begin = 0;
  int64_t end = 0;
  bool empty() const { return end <= begin; }
  int64_t size() const { return empty() ? 0 : end - begin; }
};

// A Problem that passed Validate(): kernels take only this, so they never
// re-check and never disagree on semantics. Defaults are resolved (scale) and
// window sizes are clamped so that index arithmetic cannot overflow.
class ValidProblem {
 public:
  Shape shape;
  TensorRef<const void> q, k, v;
  TensorRef<void> o;
  RowScales k_scales, v_scales;
  float scale = 0.0f;
  Mask mask;
  ScoreModifiers modifiers;
  std::optional<KvPages> kv_pages;
  std::span<float> lse;
  std::span<float> weights;
  int64_t group = 1;  // H / Hkv: query heads per kv head
  // off: Lk - Lq, 0 (top-left) or Mask::diagonal_offset; -Lq for
  // kKeyLengths, whose batches add their key length (DiagOffset).
  int64_t diag_offset = 0;

  // Where batch b's query row 0 meets its diagonal (off of "Masks").
  int64_t DiagOffset(int64_t b) const {
    if (mask.diagonal != Diagonal::kKeyLengths) return diag_offset;
    return diag_offset + (*mask.key_lengths)[b];
  }

  int64_t KvHead(int64_t h) const { return h / group; }
  DTypes dtypes() const { return {q.dtype, k.dtype, v.dtype, o.dtype}; }
  bool AllF32() const {
    return q.dtype == DType::kF32 && k.dtype == DType::kF32 && v.dtype == DType::kF32 &&
           o.dtype == DType::kF32;
  }
  // Address of row (b, h, i) of a view, whatever its DType.
  template <typename T>
  static T* Row(const TensorRef<T>& t, int64_t b, int64_t h, int64_t i) {
    using Byte = std::conditional_t<std::is_const_v<T>, const char, char>;
    const int64_t elems = b * t.strides.batch + h * t.strides.head + i * t.strides.row;
    return static_cast<Byte*>(t.data) + elems * int64_t(DTypeBytes(t.dtype));
  }
  // Rows of fp32 tensors (the fp32 paths; Prepare refuses other DTypes for a
  // variant that does not take them).
  const float* QRow(int64_t b, int64_t h, int64_t i) const {
    return static_cast<const float*>(Row(q, b, h, i));
  }
  const float* KRow(int64_t b, int64_t kvh, int64_t j) const {
    return static_cast<const float*>(KvRow(k, b, kvh, j));
  }
  const float* VRow(int64_t b, int64_t kvh, int64_t j) const {
    return static_cast<const float*>(KvRow(v, b, kvh, j));
  }
  // Element offset of key j's row of batch b, kv head kvh in a K or V view
  // (or their scales) of these strides: through the block table when K/V are
  // paged.
  int64_t KvOffset(const Strides& st, int64_t b, int64_t kvh, int64_t j) const {
    if (!kv_pages) return b * st.batch + kvh * st.head + j * st.row;
    const KvPages& pages = *kv_pages;
    const int64_t block = pages.block_table[b * pages.blocks_per_sequence + j / pages.block_size];
    return block * st.batch + kvh * st.head + (j % pages.block_size) * st.row;
  }
  // Address of key j's row of K or V (k or v), whatever its DType, paged or
  // not. Rows j..KvRunEnd(j)-1 follow it at strides.row.
  const void* KvRow(const TensorRef<const void>& t, int64_t b, int64_t kvh, int64_t j) const {
    return static_cast<const char*>(t.data) + KvOffset(t.strides, b, kvh, j) * DTypeBytes(t.dtype);
  }
  // One past the last key of the contiguous run that key j starts: the end of
  // its block when paged, else no end.
  int64_t KvRunEnd(int64_t j) const {
    if (!kv_pages) return std::numeric_limits<int64_t>::max();
    return (j / kv_pages->block_size + 1) * kv_pages->block_size;
  }
  float* ORow(int64_t b, int64_t h, int64_t i) const {
    return static_cast<float*>(Row(o, b, h, i));
  }
  // The scale of row j of an int8 K or V (1 for the float types).
  float KScale(int64_t b, int64_t kvh, int64_t j) const { return ScaleAt(k, k_scales, b, kvh, j); }
  float VScale(int64_t b, int64_t kvh, int64_t j) const { return ScaleAt(v, v_scales, b, kvh, j); }
  // Index of (b, h, i) in the contiguous [B, H, Lq] lse output.
  int64_t RowIndex(int64_t b, int64_t h, int64_t i) const {
    return (b * shape.heads + h) * shape.q_len + i;
  }
  float* WeightsRow(int64_t b, int64_t h, int64_t i) const {
    return weights.empty() ? nullptr : weights.data() + RowIndex(b, h, i) * shape.kv_len;
  }
  // The additive mask row for (b, h, i), or nullptr when the mask is not
  // additive.
  const float* AdditiveRow(int64_t b, int64_t h, int64_t i) const {
    if (mask.kind != MaskKind::kAdditive) return nullptr;
    const AdditiveMaskShape& s = mask.additive_shape;
    const int64_t bb = s.batch == 1 ? 0 : b;
    const int64_t hh = s.heads == 1 ? 0 : h;
    return mask.additive.data() + ((bb * s.heads + hh) * s.rows + i) * s.cols;
  }
  // Keys visible to query row i of batch b under the structural masks
  // (causal, sliding window, key lengths). The additive mask is not included.
  KeyRange VisibleKeys(int64_t b, int64_t i) const {
    if (mask.sequences) return SequenceVisibleKeys(i);
    KeyRange keys = DiagonalKeys(i + DiagOffset(b), shape.kv_len);
    if (mask.key_lengths) keys.end = std::min<int64_t>(keys.end, (*mask.key_lengths)[b]);
    return {keys.begin, std::max(keys.begin, keys.end)};
  }
  // The ALiBi bias of (b, h, i, j) (0 without ALiBi), as kernels compute it:
  // slope·(j - i - off_b) in fp32.
  float AlibiBias(int64_t b, int64_t h, int64_t i, int64_t j) const {
    if (modifiers.alibi_slopes.empty()) return 0.0f;
    return modifiers.alibi_slopes[h] * static_cast<float>(j - i - DiagOffset(b));
  }
  // A scaled logit s = scale·q_i·k_j after the softcap and the ALiBi bias
  // (not the additive mask), as a scalar kernel computes it.
  float ModifyLogit(int64_t b, int64_t h, int64_t i, int64_t j, float s) const {
    if (modifiers.softcap) s = *modifiers.softcap * std::tanh(s / *modifiers.softcap);
    return s + AlibiBias(b, h, i, j);
  }
  // The sink logit of query head h (-inf without sinks).
  float Sink(int64_t h) const {
    return modifiers.sinks.empty() ? -std::numeric_limits<float>::infinity() : modifiers.sinks[h];
  }
  // True when some keys may be hidden from some rows structurally.
  bool HasStructuralMask() const {
    return mask.kind == MaskKind::kCausal || mask.kind == MaskKind::kSlidingWindow ||
           mask.key_lengths.has_value();
  }

 private:
  friend StatusOr<ValidProblem> Validate(const Problem& problem);
  ValidProblem() = default;
  // Keys [0, kv_len) that the causal or window rule lets a row whose
  // diagonal is at key `diag` see (end may be < begin).
  KeyRange DiagonalKeys(int64_t diag, int64_t kv_len) const {
    if (mask.kind == MaskKind::kCausal) return {0, std::min(kv_len, diag + 1)};
    if (mask.kind == MaskKind::kSlidingWindow) {
      return {std::max<int64_t>(0, diag - mask.window_left),
              std::min(kv_len, diag + mask.window_right + 1)};
    }
    return {0, kv_len};
  }
  // VisibleKeys of row i of a packed problem: its sequence's keys, under
  // the sequence's own diagonal (problem.cc).
  KeyRange SequenceVisibleKeys(int64_t i) const;
  float ScaleAt(const TensorRef<const void>& t, const RowScales& s, int64_t b, int64_t h,
                int64_t j) const {
    if (t.dtype != DType::kI8) return 1.0f;
    return s.data[KvOffset(s.strides, b, h, j)];
  }
};

// The one validator. Returns InvalidArgument naming the field and value
// (e.g. "Hkv=3 does not divide H=8") for any malformed problem.
StatusOr<ValidProblem> Validate(const Problem& problem);

// ------------------------------------------------------------------ backward
//
// The backward pass: given the forward problem, its outputs O and lse, and
// dO = ∂loss/∂O, the gradients dQ, dK, dV of the loss. With S the scaled,
// masked scores and P = e^(S - lse) the weights of the forward:
//   dV = Pᵀ·dO,  dP = dO·Vᵀ,  D_i = Σ_j P_ij·dP_ij = Σ_d dO_id·O_id,
//   dS = P ∘ (dP - D),  dQ = scale·dS·K,  dK = scale·dSᵀ·Q.
// dK and dV are per kv head: with GQA they sum over the group's query heads.
// The mask is a constant (no gradient flows into the additive mask, the
// scale or the key lengths).
// Score modifiers (see "Score modifiers"): with a softcap, dS takes the
// tanh's slope, dS = P ∘ (dP - D) ∘ (1 - t²) with t = tanh(scale·q·k / cap)
// (= the capped logit / cap); ALiBi slopes are constants (no gradient); a
// sink σ_h takes part through lse (P = e^(S - lse) as the forward made it)
// and has a gradient of its own, dσ_h = -Σ_(b,i) e^(σ_h - lse_bhi)·D_bhi,
// written to GradProblem::d_sinks when given (summed in double over rows in
// order: the same bits for any variant and thread count).
//
// Semantics (every variant with a backward, tested):
//   * A key that is structurally hidden from row i (causal, window, key
//     lengths) takes no part in row i's gradients: nothing in its K or V row,
//     nor in row i's Q, dO or O, reaches the other through the pair.
//   * A fully masked row (lse = -inf: no visible key, or every visible score
//     -inf) has dQ = 0 and adds nothing to dK or dV, whatever dO holds.
//     Never NaN.
//   * Otherwise NaN propagates through the arithmetic above exactly as in
//     the fp64 reference (reference::Backward, which recomputes the forward
//     from Q, K, V; the tests match NaN for NaN). A NaN that query row i
//     reads (its Q or dO row, or the K or V row of a key it sees: through
//     the forward's lse, all of row i's P) can reach dQ row i and the dK and
//     dV rows of every key row i sees, and nothing else: rows and keys that
//     a structural mask separates stay clean. An additive -inf entry gives
//     P = 0 but, as in the forward, 0·NaN = NaN: a NaN in that key's V still
//     reaches the row through dS = P·(dP - D).
//   * O and lse must be the forward's outputs for the same problem (any
//     variant's, within its bound): flash and blas recompute P from lse and
//     form D from O (naive from P and dP); a NaN there that the inputs do
//     not explain is outside the contract.
//
// Types: every tensor fp32 (Q, K, V, O, dO, dQ, dK, dV; lse is fp32).
struct GradProblem {
  // The forward problem: Q, K, V, scale and mask as in the forward call;
  // forward.o is the forward's O and forward.lse its lse (both read, both
  // required); forward.weights is not used.
  Problem forward;
  TensorRef<const void> d_o;   // dO, [B, H, Lq, dv] like O
  TensorRef<void> dq, dk, dv;  // [B, H, Lq, dk], [B, Hkv, Lk, dk], [B, Hkv, Lk, dv]
  // Optional, with sinks only: H floats, dσ_h (empty: not computed).
  std::span<float> d_sinks;
};

// A contiguous backward problem over caller-owned fp32 buffers in `layout`,
// around a forward problem made by MakeProblem (its o is O; set its lse).
GradProblem MakeGradProblem(const Problem& forward, const void* d_o, void* dq, void* dk, void* dv,
                            Layout layout = Layout::kBHLD);

// A GradProblem that passed ValidateGrad().
class ValidGradProblem {
 public:
  ValidProblem forward;  // its o and lse are the forward's outputs (read)
  TensorRef<const void> d_o;
  TensorRef<void> dq, dk, dv;
  std::span<float> d_sinks;  // H floats or empty

  const float* DoRow(int64_t b, int64_t h, int64_t i) const {
    return static_cast<const float*>(ValidProblem::Row(d_o, b, h, i));
  }
  const float* ORow(int64_t b, int64_t h, int64_t i) const { return forward.ORow(b, h, i); }
  float Lse(int64_t b, int64_t h, int64_t i) const {
    return forward.lse[forward.RowIndex(b, h, i)];
  }
  // The keys query row i of head h takes part in: its visible keys, none
  // when the row is fully masked (lse = -inf).
  KeyRange GradKeys(int64_t b, int64_t h, int64_t i) const {
    if (Lse(b, h, i) == -std::numeric_limits<float>::infinity()) return {};
    return forward.VisibleKeys(b, i);
  }
  float* DqRow(int64_t b, int64_t h, int64_t i) const {
    return static_cast<float*>(ValidProblem::Row(dq, b, h, i));
  }
  float* DkRow(int64_t b, int64_t kvh, int64_t j) const {
    return static_cast<float*>(ValidProblem::Row(dk, b, kvh, j));
  }
  float* DvRow(int64_t b, int64_t kvh, int64_t j) const {
    return static_cast<float*>(ValidProblem::Row(dv, b, kvh, j));
  }

 private:
  friend StatusOr<ValidGradProblem> ValidateGrad(const GradProblem& problem);
  explicit ValidGradProblem(const ValidProblem& f) : forward(f) {}
};

// The one validator of backward problems: the forward checks of Validate()
// (so the same messages), then: lse is present; every tensor is fp32; dO,
// dQ, dK, dV are non-null with legal strides; d_sinks is empty or H floats
// of a problem with sinks; no gradient overlaps itself, another gradient or
// any input (Q, K, V, O, lse, dO, mask, key lengths, modifiers).
StatusOr<ValidGradProblem> ValidateGrad(const GradProblem& problem);

// Sequence s of a packed problem (Mask::sequences; the problem must pass
// Validate) as a problem of its own: B = 1, Lq_s queries, Lk_s keys, views of
// the same Q, K, V, O rows (and int8 scales), the same scale, mask kind,
// diagonal and modifiers, no sequences, no lse or weights (the caller gives
// them per sequence: the packed lse [H, total_q] is not one contiguous piece
// per sequence).
Problem SequenceProblem(const Problem& packed, int64_t s);
// The same for a backward problem: the forward's sequence, dO and dQ rows of
// its queries, dK and dV rows of its keys; forward.lse and d_sinks are left
// empty (the sinks' gradient sums over every sequence: SinkGradients).
GradProblem SequenceGradProblem(const GradProblem& packed, int64_t s);

// d_sinks (when given) from the forward's O and lse and dO: dσ_h =
// -Σ_(b,i) e^(σ_h - lse_bhi)·Σ_d dO_bhid·O_bhid, in double, rows in order
// (0 for a head whose sink is -inf). Every variant's backward ends with it.
void SinkGradients(const ValidGradProblem& problem);

// Number of (query, key) pairs that are not structurally masked, summed over
// batch and heads: the work a kernel that skips masked keys must do.
int64_t VisiblePairs(const ValidProblem& p);

// Keys per block of a sum over keys (see "Accumulation" above). OpenBLAS's
// sgemm, which forms blas's and chunked's P·V, blocks its inner dimension by
// fewer (a few hundred): tests/large_kv_test.cc checks every variant at
// Lk = 2^25.
inline constexpr int64_t kKeySumBlock = 1024;
// Keys per int16 step of the weights, P·V with an i8 V (see "Element
// types" above; reference/error_bound.cc bounds the error by it).
inline constexpr int64_t kInt16WeightRun = 64;
// The relative error a kernel that rounds P to a reduced V's type may give
// the weights' exponential (see "Element types" above; reference/
// error_bound.cc charges it; flash's bf16 softmax_to_rows meets it with a
// degree-3 polynomial, kernels/ukernels/bf16_avx512.cc, WeightExp).
inline constexpr double kReducedExpMaxRel = 0x1p-13;

// The most elements any one tensor (Q, K, V, O, the additive mask, the
// weights) may have, counted from its shape whatever its strides (a K of
// row stride 0 still has Lk·dk elements), and so the largest dimension: 2^48,
// a PiB of fp32, beyond any machine. Below it, every size a variant derives
// from the shape (a dimension times a tile of at most 2^10 elements) fits in
// int64; workspace totals (times threads, sizeof) saturate instead
// (SaturatingSize, kernels/workspace.h).
inline constexpr int64_t kMaxTensorElements = int64_t{1} << 48;

// One-line human description, e.g. "B=1 H=8 Hkv=8 Lq=1024 Lk=1024 dk=64 dv=64
// mask=causal".
std::string Describe(const Shape& shape, const Mask& mask);

}  // namespace attn

#endif  // ATTNLAB_KERNELS_PROBLEM_H_
