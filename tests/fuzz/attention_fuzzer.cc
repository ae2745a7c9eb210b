// libFuzzer harness: differential fuzzing of every registry variant against
// the fp64 reference.
//
// The input bytes decode (FuzzedDataProvider) into a small problem: shapes
// (Lq, Lk in [0, 24], dk, dv in [1, 20], B <= 2, GQA 1..3), layout (BHLD or
// BLHD), row padding, mask kind (none, causal, window of any size, 2-D/4-D
// additive), key lengths, scale, thread count, a seed for the base values
// (uniform, or large logits) and up to 12 "specials" written over single
// elements of Q, K, V or the additive mask: NaN, ±inf, ±1e4, ±1e30, ±3e38,
// float32's lowest (a padding mask), ±tiny, 0; then the score modifiers
// (softcap, ALiBi slopes, sinks, each present or not; decoded last, so the
// seed corpus decodes as it did before they existed); then the arrangement
// (decoded after the modifiers, for the same reason): K and V as they are,
// moved into a paged cache of shuffled blocks (block sizes 1 to past Lk,
// spare blocks, unused rows NaN), or the problem repacked as 1-4 packed
// variable-length sequences (empty ones included). A variant that does not
// apply a problem's modifiers or read a paged cache must refuse it as
// Unimplemented, forward and backward, and is not checked further; the
// backward refuses a paged cache as InvalidArgument.
//
// One input in eight is instead mutated into an invalid problem (a bad size,
// stride, mask shape, key length, window, scale, modifier, cu_seqlens or
// block table): Validate() and every variant's Run() must reject it with
// InvalidArgument, without reading it.
//
// For valid problems every variant runs on NaN-poisoned outputs and each query
// row (b, h, i) is checked by what its inputs allow (the semantics of
// kernels/problem.h):
//   1. No structurally visible key: O = 0, lse = σ_h (-inf without a sink),
//      weights 0, exactly.
//   2. NaN in Q row i, in a visible K row, or in a visible mask entry: the
//      whole O row and lse are NaN.
//   3. Otherwise, when the row's logits evaluate in fp32 without overflow
//      (testing::LogitsRepresentable: the condition of kernels/problem.h,
//      which holds for every finite logit up to ±FLT_MAX, a float32-lowest
//      padding mask included) and the mask entries are finite or ±inf:
//        a visible +inf mask entry: O row and lse NaN;
//        else lse matches the reference within ErrorBound; when the visible
//        V rows are finite and Lk·max|v| cannot overflow, O and the weights
//        match within the bound; else O[d] is NaN wherever a visible V row
//        has NaN in column d (unless every logit is -inf: a fully masked row
//        is 0). Matching is testing::CompareRow, the comparison of the tests
//        and `attnlab check`.
//   4. Anything else (fp32 overflow of q·k): only "no crash, no sanitizer
//      report". The double reference would not overflow there.
// Then the backward of every variant that has one (CheckGradients): an OK
// status on every valid input, the reference's gradients within the bound
// on inputs without specials; invalid inputs are refused by the backward
// too.
// A violation prints the variant, the row and the problem and aborts.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/registry.h"
#include "reference/error_bound.h"
#include "reference/reference.h"
#include "testing/compare.h"
#include "testing/problem_data.h"

namespace {

using namespace attn;  // NOLINT: a harness, not a header

using testing::RowOf;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// The problem in one line: shape and mask (with packed sequences), scale,
// the paged cache's geometry and the modifiers.
std::string DescribeFuzzed(const Problem& p) {
  std::string out = Describe(p.shape, p.mask);
  out += " scale=" + (p.scale ? std::to_string(*p.scale) : std::string("default"));
  if (p.kv_pages) {
    out += " paged(block_size=" + std::to_string(p.kv_pages->block_size) +
           ", blocks/seq=" + std::to_string(p.kv_pages->blocks_per_sequence) +
           ", pool=" + std::to_string(p.kv_pages->num_blocks) + ")";
  }
  out += " modifiers=" + ModifierNames(ModifiersOf(p.modifiers));
  return out;
}

[[noreturn]] void Fail(const std::string& what, const Variant& variant, const Problem& p) {
  std::fprintf(stderr, "attention_fuzzer: %s\n  variant=%s %s\n", what.c_str(), variant.name,
               DescribeFuzzed(p).c_str());
  std::abort();
}

struct Fuzzed {
  Shape shape;
  std::vector<float> q, k, v, o, mask, lse, weights;
  std::vector<int32_t> key_lengths;
  std::vector<float> alibi_slopes, sinks;
  std::vector<int32_t> block_table, cu_seqlens_q, cu_seqlens_k;
  Problem p;
  int threads = 1;
  int specials = 0;  // elements overwritten with special values
  uint32_t seed = 0;
};

Strides MakeStrides(bool blhd, int64_t heads, int64_t len, int64_t dim, int64_t pad) {
  const int64_t row = dim + pad;
  return blhd ? Strides{len * heads * row, row, heads * row, 1}
              : Strides{heads * len * row, len * row, row, 1};
}

// Moves K and V into a paged cache (kernels/problem.h, "Paged K/V"): blocks
// of 1 key to more than Lk, shuffled through a pool with spare blocks; rows
// no sequence owns, and table entries past the blocks a sequence's keys need
// (-1, as vLLM pads), hold what must never be read (NaN rows).
void Page(FuzzedDataProvider& in, Fuzzed& f) {
  const Shape& s = f.shape;
  Problem& p = f.p;
  const int64_t block_sizes[] = {1, 2, 3, 5, 8, 32};
  const int64_t block_size = block_sizes[in.ConsumeIntegralInRange<int>(0, 5)];
  const int64_t per_sequence =
      (s.kv_len + block_size - 1) / block_size + in.ConsumeIntegralInRange<int64_t>(0, 1);
  const int64_t num_blocks =
      std::max<int64_t>(1, s.batch * per_sequence + in.ConsumeIntegralInRange<int64_t>(0, 2));
  std::vector<int32_t> order(num_blocks);
  for (int32_t x = 0; x < int32_t(num_blocks); ++x) order[x] = x;
  std::shuffle(order.begin(), order.end(), std::mt19937(f.seed + 2));
  f.block_table.assign(s.batch * per_sequence, -1);
  for (int64_t b = 0; b < s.batch; ++b) {
    const int64_t keys = p.mask.key_lengths ? (*p.mask.key_lengths)[b] : s.kv_len;
    for (int64_t x = 0; x < (keys + block_size - 1) / block_size; ++x) {
      f.block_table[b * per_sequence + x] = order[b * per_sequence + x];
    }
  }
  // Each pool as [num_blocks, Hkv, block_size, dim + pad], key j of batch b
  // copied from its contiguous row (specials included).
  const int64_t pad = in.ConsumeIntegralInRange<int64_t>(0, 2);
  auto pool = [&](std::vector<float>& buf, TensorRef<const void>& t, int64_t dim) {
    const Strides st{s.kv_heads * block_size * (dim + pad), block_size * (dim + pad), dim + pad, 1};
    std::vector<float> out(1 + num_blocks * st.batch, kNaN);
    for (int64_t b = 0; b < s.batch; ++b)
      for (int64_t kvh = 0; kvh < s.kv_heads; ++kvh)
        for (int64_t j = 0; j < s.kv_len; ++j) {
          const int32_t block = order[b * per_sequence + j / block_size];
          const float* from = RowOf(t, b, kvh, j);
          std::copy(from, from + dim,
                    out.begin() + 1 + block * st.batch + kvh * st.head + (j % block_size) * st.row);
        }
    buf = std::move(out);
    t = {buf.data() + 1, st};
  };
  pool(f.k, p.k, s.head_dim);
  pool(f.v, p.v, s.value_dim);
  p.kv_pages = KvPages{f.block_table, per_sequence, block_size, num_blocks};
}

// Repacks the problem as 1-4 sequences packed along the positions
// (kernels/problem.h, "Packed variable-length sequences"): B = 1, Lq and Lk
// cut at sorted points (empty sequences included); what packing does not
// combine with (key lengths, an additive mask, an explicit or key-length
// diagonal) is dropped.
void Pack(FuzzedDataProvider& in, Fuzzed& f) {
  Problem& p = f.p;
  f.shape.batch = p.shape.batch = 1;
  p.mask.key_lengths.reset();
  if (p.mask.kind == MaskKind::kAdditive) {
    p.mask = Mask{.diagonal = p.mask.diagonal};
  }
  if (p.mask.diagonal == Diagonal::kAt || p.mask.diagonal == Diagonal::kKeyLengths) {
    p.mask.diagonal = Diagonal::kBottomRight;
  }
  const int sequences = in.ConsumeIntegralInRange<int>(1, 4);
  auto cuts = [&](std::vector<int32_t>& cu, int64_t total) {
    cu = {0, int32_t(total)};
    for (int n = 1; n < sequences; ++n) {
      cu.push_back(in.ConsumeIntegralInRange<int32_t>(0, int32_t(total)));
    }
    std::sort(cu.begin(), cu.end());
  };
  cuts(f.cu_seqlens_q, p.shape.q_len);
  cuts(f.cu_seqlens_k, p.shape.kv_len);
  p.mask.sequences = PackedSequences{f.cu_seqlens_q, f.cu_seqlens_k};
  // lse and weights shrink to B = 1.
  const Shape& s = p.shape;
  if (!p.lse.empty()) p.lse = p.lse.first(s.heads * s.q_len);
  if (!p.weights.empty()) p.weights = p.weights.first(s.heads * s.q_len * s.kv_len);
}

// K/V as decoded, paged, or the problem packed (decoded after the modifiers,
// so the corpus from before reads as dense problems).
void Arrange(FuzzedDataProvider& in, Fuzzed& f) {
  switch (in.ConsumeIntegralInRange<int>(0, 2)) {
    case 1:
      Page(in, f);
      break;
    case 2:
      Pack(in, f);
      break;
    default:
      break;
  }
}

// Decodes a valid problem.
void Decode(FuzzedDataProvider& in, Fuzzed& f) {
  Shape& s = f.shape;
  s.batch = in.ConsumeIntegralInRange<int64_t>(1, 2);
  s.kv_heads = in.ConsumeIntegralInRange<int64_t>(1, 2);
  s.heads = s.kv_heads * in.ConsumeIntegralInRange<int64_t>(1, 3);
  s.q_len = in.ConsumeIntegralInRange<int64_t>(0, 24);
  s.kv_len = in.ConsumeIntegralInRange<int64_t>(0, 24);
  s.head_dim = in.ConsumeIntegralInRange<int64_t>(1, 20);
  s.value_dim = in.ConsumeBool() ? s.head_dim : in.ConsumeIntegralInRange<int64_t>(1, 20);
  const bool blhd = in.ConsumeBool();
  const int64_t pad = in.ConsumeIntegralInRange<int64_t>(0, 3);
  const auto kind = static_cast<MaskKind>(in.ConsumeIntegralInRange<int>(0, kNumMaskKinds - 1));
  f.threads = in.ConsumeIntegralInRange<int>(1, 2);
  const uint32_t seed = in.ConsumeIntegral<uint32_t>();
  f.seed = seed;
  const float q_scale = in.ConsumeBool() ? 1.0f : 300.0f;  // large logits

  // Base values: uniform [-1, 1] (Q scaled), one element of slack in front
  // so empty tensors still have a non-null pointer.
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  auto fill = [&](std::vector<float>& buf, int64_t heads, int64_t len, int64_t dim, float scale) {
    buf.resize(1 + s.batch * heads * len * (dim + pad));
    for (float& x : buf) x = scale * uniform(rng);
  };
  fill(f.q, s.heads, s.q_len, s.head_dim, q_scale);
  fill(f.k, s.kv_heads, s.kv_len, s.head_dim, 1.0f);
  fill(f.v, s.kv_heads, s.kv_len, s.value_dim, 1.0f);
  f.o.assign(1 + s.batch * s.heads * s.q_len * (s.value_dim + pad), kNaN);

  Problem& p = f.p;
  p.shape = s;
  p.q = {f.q.data() + 1, MakeStrides(blhd, s.heads, s.q_len, s.head_dim, pad)};
  p.k = {f.k.data() + 1, MakeStrides(blhd, s.kv_heads, s.kv_len, s.head_dim, pad)};
  p.v = {f.v.data() + 1, MakeStrides(blhd, s.kv_heads, s.kv_len, s.value_dim, pad)};
  p.o = {f.o.data() + 1, MakeStrides(blhd, s.heads, s.q_len, s.value_dim, pad)};

  p.mask.kind = kind;
  if (kind == MaskKind::kSlidingWindow) {
    p.mask.window_left = in.ConsumeIntegralInRange<int64_t>(0, 30);
    p.mask.window_right = in.ConsumeIntegralInRange<int64_t>(0, 30);
  }
  if (kind == MaskKind::kAdditive) {
    const bool full = in.ConsumeBool();
    AdditiveMaskShape& a = p.mask.additive_shape;
    a = {full ? s.batch : 1, full ? s.heads : 1, s.q_len, s.kv_len};
    f.mask.resize(1 + a.batch * a.heads * a.rows * a.cols);
    const float minus_inf_share = in.ConsumeProbability<float>();
    for (float& x : f.mask) x = (uniform(rng) + 1) / 2 < minus_inf_share ? -kInf : 2 * uniform(rng);
    p.mask.additive = std::span<const float>(f.mask.data() + 1, f.mask.size() - 1);
  }
  if (in.ConsumeBool()) {
    for (int64_t b = 0; b < s.batch; ++b) {
      f.key_lengths.push_back(in.ConsumeIntegralInRange<int32_t>(0, int32_t(s.kv_len)));
    }
    p.mask.key_lengths = f.key_lengths;
  }
  // The diagonal: bottom-right, top-left, at an offset, or at each batch's
  // key length (with key lengths only).
  const int diagonal = in.ConsumeIntegralInRange<int>(0, 3);
  if (diagonal == 1) p.mask.diagonal = Diagonal::kTopLeft;
  if (diagonal == 2) {
    p.mask.diagonal = Diagonal::kAt;
    p.mask.diagonal_offset = in.ConsumeIntegralInRange<int64_t>(-30, 30);
  }
  if (diagonal == 3 && p.mask.key_lengths) p.mask.diagonal = Diagonal::kKeyLengths;
  if (in.ConsumeBool()) {
    const float scales[] = {1e-3f, 0.1f, 1.0f, 10.0f, 100.0f};
    p.scale = scales[in.ConsumeIntegralInRange<int>(0, 4)];
  }
  if (in.ConsumeBool()) {
    f.lse.assign(1 + s.batch * s.heads * s.q_len, kNaN);
    p.lse = std::span<float>(f.lse.data() + 1, f.lse.size() - 1);
  }
  if (in.ConsumeBool()) {
    f.weights.assign(1 + s.batch * s.heads * s.q_len * s.kv_len, kNaN);
    p.weights = std::span<float>(f.weights.data() + 1, f.weights.size() - 1);
  }

  // Specials over single elements (anywhere in the buffer, padding included).
  const float specials[] = {kNaN,   kInf,   -kInf, 1e4f,   -1e4f,
                            1e30f,  -1e30f, 3e38f, -3e38f, std::numeric_limits<float>::lowest(),
                            1e-30f, 0.0f};
  const int count = in.ConsumeIntegralInRange<int>(0, 12);
  for (int n = 0; n < count && in.remaining_bytes() > 0; ++n) {
    std::vector<float>* target[] = {&f.q, &f.k, &f.v, &f.mask};
    std::vector<float>& buf = *target[in.ConsumeIntegralInRange<int>(0, 3)];
    if (buf.size() <= 1) continue;
    const size_t at = 1 + in.ConsumeIntegralInRange<size_t>(0, buf.size() - 2);
    buf[at] = specials[in.ConsumeIntegralInRange<int>(0, std::size(specials) - 1)];
    ++f.specials;
  }

  // Score modifiers (kernels/problem.h, "Score modifiers"): caps from tight
  // (every logit saturates) to loose, slopes of both signs up to a steep 8,
  // sinks from none (-inf) to one that takes all the weight.
  if (in.ConsumeBool()) {
    const float caps[] = {0.25f, 1.0f, 5.0f, 30.0f, 50.0f, 1e4f};
    p.modifiers.softcap = caps[in.ConsumeIntegralInRange<int>(0, std::size(caps) - 1)];
  }
  if (in.ConsumeBool()) {
    const float slopes[] = {0.0f, 1.0f / 256, 1.0f / 16, 0.5f, 1.0f, -0.25f, 8.0f};
    for (int64_t h = 0; h < s.heads; ++h) {
      f.alibi_slopes.push_back(slopes[in.ConsumeIntegralInRange<int>(0, std::size(slopes) - 1)]);
    }
    p.modifiers.alibi_slopes = f.alibi_slopes;
  }
  if (in.ConsumeBool()) {
    const float sinks[] = {-kInf, -30.0f, -1.0f, 0.0f, 2.0f, 30.0f, 1e3f};
    for (int64_t h = 0; h < s.heads; ++h) {
      f.sinks.push_back(sinks[in.ConsumeIntegralInRange<int>(0, std::size(sinks) - 1)]);
    }
    p.modifiers.sinks = f.sinks;
  }
  Arrange(in, f);
}

// Whether `variant` applies every score modifier of `p` (forward, or its
// backward) and, forward, reads its paged cache if it has one; one that does
// not must refuse the problem as Unimplemented.
bool Applies(const Variant& variant, const Problem& p, bool backward) {
  const uint8_t applies = backward ? variant.backward.modifiers : variant.modifiers;
  if (!backward && p.kv_pages && !variant.paged_kv) return false;
  return (ModifiersOf(p.modifiers) & ~applies) == 0;
}
void ExpectRefusal(const Status& status, const Variant& variant, const Problem& p) {
  if (status.code() != StatusCode::kUnimplemented) {
    Fail("modifiers or a paged cache it does not take gave " + status.ToString(), variant, p);
  }
}

// Per-head values (ALiBi slopes, sinks) that Validate must refuse: `heads`
// of `fill` with one made NaN or +inf, or one too many or too few. With one
// head, "one too few" is none, which means "no sinks" (or no ALiBi) and is
// valid, so one head always gets one too many.
std::span<const float> BadPerHead(FuzzedDataProvider& in, std::vector<float>& values, int64_t heads,
                                  float fill) {
  values.assign(heads, fill);
  if (in.ConsumeBool()) {
    values[in.ConsumeIntegralInRange<size_t>(0, values.size() - 1)] =
        in.ConsumeBool() ? kNaN : kInf;
  } else {
    const bool too_many = in.ConsumeBool() || heads == 1;
    values.resize(too_many ? heads + 1 : heads - 1, fill);
  }
  return values;
}

// A paged cache (the problem's, or K/V paged here) made invalid: a block the
// keys need outside the pool, a table too short for Lk, or no block at all.
const char* BreakPages(FuzzedDataProvider& in, Fuzzed& f) {
  Problem& p = f.p;
  if (!p.kv_pages) Page(in, f);
  KvPages& pages = *p.kv_pages;
  const int64_t keys = p.mask.key_lengths ? (*p.mask.key_lengths)[0] : p.shape.kv_len;
  const int64_t needed = (keys + pages.block_size - 1) / pages.block_size;
  switch (in.ConsumeIntegralInRange<int>(0, 2)) {
    case 0:
      if (needed > 0) {
        f.block_table[in.ConsumeIntegralInRange<int64_t>(0, needed - 1)] =
            in.ConsumeBool() ? int32_t(pages.num_blocks) : -1;
        return "block table entry outside the pool";
      }
      [[fallthrough]];
    case 1:
      if (pages.blocks_per_sequence > 0 && p.shape.kv_len > 0) {
        pages.blocks_per_sequence = (p.shape.kv_len - 1) / pages.block_size;
        pages.block_table =
            std::span(f.block_table).first(p.shape.batch * pages.blocks_per_sequence);
        return "block table too short for Lk";
      }
      [[fallthrough]];
    default:
      pages.num_blocks = 0;
      return "empty pool";
  }
}

// Turns a valid problem into an invalid one; returns what it broke.
const char* Break(FuzzedDataProvider& in, Fuzzed& f) {
  Problem& p = f.p;
  switch (in.ConsumeIntegralInRange<int>(0, 17)) {
    case 0:
      p.shape.batch = -in.ConsumeIntegralInRange<int64_t>(0, 1 << 20);
      return "batch";
    case 1:
      p.shape.head_dim = -in.ConsumeIntegralInRange<int64_t>(0, 5);
      return "dk";
    case 2:
      p.shape.kv_heads = p.shape.heads + 1;
      return "Hkv";
    case 3:
      p.k.strides.elem = in.ConsumeIntegralInRange<int64_t>(2, 9);
      return "elem stride";
    case 4:
      p.v.strides.row = -in.ConsumeIntegralInRange<int64_t>(1, 100);
      return "negative stride";
    case 5:
      p.scale = in.ConsumeBool() ? kNaN : -kInf;
      return "scale";
    case 6:
      p.mask.kind = MaskKind::kSlidingWindow;
      p.mask.window_left = -in.ConsumeIntegralInRange<int64_t>(1, 1000);
      return "window";
    case 7:
      f.key_lengths.assign(p.shape.batch, int32_t(p.shape.kv_len + 1));
      p.mask.key_lengths = f.key_lengths;
      return "key length";
    case 8:
      p.mask.kind = MaskKind::kAdditive;
      p.mask.additive_shape = {1, 1, p.shape.q_len + 1, p.shape.kv_len};
      f.mask.assign(1 + (p.shape.q_len + 1) * p.shape.kv_len, 0.0f);
      p.mask.additive = std::span<const float>(f.mask.data() + 1, f.mask.size() - 1);
      return "mask shape";
    case 9:
      p.o.data = nullptr;
      return "null O";
    case 10:
      p.shape.q_len = int64_t{1} << in.ConsumeIntegralInRange<int>(40, 62);
      p.q.strides = {0, 0, int64_t{1} << 20, 1};
      return "overflow";
    case 12: {
      const float caps[] = {0.0f, -1.0f, kInf, kNaN};
      p.modifiers.softcap = caps[in.ConsumeIntegralInRange<int>(0, 3)];
      return "softcap";
    }
    case 13:
      p.modifiers.alibi_slopes = BadPerHead(in, f.alibi_slopes, p.shape.heads, 0.5f);
      return "ALiBi slopes";
    case 14:
      p.modifiers.sinks = BadPerHead(in, f.sinks, p.shape.heads, 0.0f);
      return "sinks";
    case 15:
      // Decreasing offsets (the last one past the packed length, then back).
      p.shape.batch = 1;
      p.mask.key_lengths.reset();
      f.cu_seqlens_q = {0, int32_t(p.shape.q_len) + 1, int32_t(p.shape.q_len)};
      f.cu_seqlens_k = {0, 0, int32_t(p.shape.kv_len)};
      p.mask.sequences = PackedSequences{f.cu_seqlens_q, f.cu_seqlens_k};
      return "cu_seqlens";
    case 16:
    case 17:
      return BreakPages(in, f);
    default:
      p.lse = std::span<float>(f.o.data() + 1, size_t(p.shape.batch * p.shape.heads) + 1);
      return "lse size";
  }
}

// What the inputs of query row (b, h, i) hold, for the checks at the top.
struct RowInputs {
  int64_t visible = 0;           // structurally visible keys
  bool nan_logit = false;        // NaN in Q row i, a visible K row or a visible mask entry
  bool plus_inf = false;         // a visible +inf mask entry
  bool all_minus_inf = true;     // every visible mask entry is -inf
  bool finite_o = false;         // visible V finite and P·V cannot overflow
  std::vector<bool> nan_column;  // a visible V row has NaN in column d
};

RowInputs Inspect(const Problem& p, int64_t b, int64_t h, int64_t i) {
  const Shape& s = p.shape;
  const int64_t kvh = h / (s.heads / s.kv_heads);
  RowInputs r;
  r.nan_column.assign(s.value_dim, false);
  const float* q = RowOf(p.q, b, h, i);
  for (int64_t d = 0; d < s.head_dim; ++d) r.nan_logit |= std::isnan(q[d]);
  const float* additive = testing::AdditiveRow(p, b, h, i);
  bool finite_v = true;
  double v_max = 0;
  std::vector<double> k(s.head_dim), v(s.value_dim);  // paged or not
  for (int64_t j = 0; j < s.kv_len; ++j) {
    if (!reference::KeyVisible(p, b, i, j)) continue;
    ++r.visible;
    reference::LoadKvRow(p, /*value=*/false, b, kvh, j, k.data());
    reference::LoadKvRow(p, /*value=*/true, b, kvh, j, v.data());
    for (int64_t d = 0; d < s.head_dim; ++d) r.nan_logit |= std::isnan(k[d]);
    for (int64_t d = 0; d < s.value_dim; ++d) {
      finite_v &= std::isfinite(v[d]);
      v_max = std::max(v_max, std::fabs(v[d]));
      if (std::isnan(v[d])) r.nan_column[d] = true;
    }
    const float m = additive ? additive[j] : 0.0f;
    r.nan_logit |= std::isnan(m);
    r.plus_inf |= m == kInf;
    if (m != -kInf) r.all_minus_inf = false;
  }
  // P·V sums at most Lk weights of at most 1 times |v|.
  r.finite_o = finite_v && double(r.visible) * v_max * (1 + testing::LogitRounding(s.head_dim)) <
                               testing::kFp32Overflow;
  return r;
}

// Checks one variant's output against the reference, row by row (see top).
void CheckRows(const Variant& variant, const Problem& p, const reference::Result& want) {
  const Shape& s = p.shape;
  char where[160];
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h)
      for (int64_t i = 0; i < s.q_len; ++i) {
        std::snprintf(where, sizeof(where), "row [b=%lld,h=%lld,i=%lld]", (long long)b,
                      (long long)h, (long long)i);
        const int64_t row = (b * s.heads + h) * s.q_len + i;
        const float* o = RowOf(p.o, b, h, i);
        const float* lse = p.lse.empty() ? nullptr : &p.lse[row];
        const float* w = p.weights.empty() ? nullptr : &p.weights[row * s.kv_len];
        const RowInputs in = Inspect(p, b, h, i);
        // 1. Nothing visible.
        if (in.visible == 0) {
          for (int64_t d = 0; d < s.value_dim; ++d)
            if (o[d] != 0.0f) Fail(std::string(where) + ": fully masked, O != 0", variant, p);
          const float sink = p.modifiers.sinks.empty() ? -kInf : p.modifiers.sinks[h];
          if (lse && *lse != sink) Fail(std::string(where) + ": lse != the sink", variant, p);
          for (int64_t j = 0; w && j < s.kv_len; ++j)
            if (w[j] != 0.0f) Fail(std::string(where) + ": weight != 0", variant, p);
          continue;
        }
        // 2. A NaN logit.
        if (in.nan_logit) {
          for (int64_t d = 0; d < s.value_dim; ++d)
            if (!std::isnan(o[d])) Fail(std::string(where) + ": NaN logit, O not NaN", variant, p);
          if (lse && !std::isnan(*lse)) Fail(std::string(where) + ": NaN logit, lse", variant, p);
          continue;
        }
        // 4. Possible fp32 overflow: nothing to compare.
        if (!testing::LogitsRepresentable(p, b, h, i)) continue;
        // 3. Logits fp32 can hold.
        if (in.plus_inf) {
          for (int64_t d = 0; d < s.value_dim; ++d)
            if (!std::isnan(o[d])) Fail(std::string(where) + ": +inf logit, O not NaN", variant, p);
          if (lse && !std::isnan(*lse)) Fail(std::string(where) + ": +inf logit, lse", variant, p);
          continue;
        }
        // lse always; O and the weights when P·V cannot overflow.
        testing::Comparison c;
        testing::CompareRow(p, b, h, i, want, row, testing::ErrorBound(p, b, h, i), c,
                            {.o = in.finite_o, .lse = true, .weights = in.finite_o});
        if (!c.ok) Fail(c.first_failure, variant, p);
        if (in.finite_o) continue;
        if (in.all_minus_inf) {
          for (int64_t d = 0; d < s.value_dim; ++d)
            if (o[d] != 0.0f) Fail(std::string(where) + ": all -inf, O != 0", variant, p);
        } else {
          for (int64_t d = 0; d < s.value_dim; ++d)
            if (in.nan_column[d] && !std::isnan(o[d])) {
              Fail(std::string(where) + ": NaN in a visible V column did not reach O", variant, p);
            }
        }
      }
}

}  // namespace

// The backward of every variant that has one, after its own forward (with
// lse, which the backward needs): on any input, no crash, no sanitizer
// report and an OK status; on inputs without special values, gradients
// within reference::GradErrorBounds of reference::Backward (the same
// comparison as the tests). A NaN in fp32 logits that the double reference
// does not overflow would be out of contract, so inputs with specials are
// not compared.
void CheckGradients(Fuzzed& f) {
  const Shape& s = f.shape;
  std::vector<float> lse(1 + s.batch * s.heads * s.q_len, kNaN);
  std::vector<float> d_o(1 + s.batch * s.heads * s.q_len * s.value_dim);
  std::vector<float> dq(1 + s.batch * s.heads * s.q_len * s.head_dim);
  std::vector<float> dk(1 + s.batch * s.kv_heads * s.kv_len * s.head_dim);
  std::vector<float> dv(1 + s.batch * s.kv_heads * s.kv_len * s.value_dim);
  std::vector<float> d_sinks(f.sinks.empty() ? 0 : s.heads);  // dσ, with sinks
  std::mt19937 rng(f.seed + 1);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (float& x : d_o) x = uniform(rng);
  Problem forward = f.p;
  forward.weights = {};
  forward.lse = std::span<float>(lse.data() + 1, lse.size() - 1);
  GradProblem g;
  g.forward = forward;
  g.d_o = {d_o.data() + 1, Strides::BHLD(s.heads, s.q_len, s.value_dim)};
  g.dq = {dq.data() + 1, Strides::BHLD(s.heads, s.q_len, s.head_dim)};
  g.dk = {dk.data() + 1, Strides::BHLD(s.kv_heads, s.kv_len, s.head_dim)};
  g.dv = {dv.data() + 1, Strides::BHLD(s.kv_heads, s.kv_len, s.value_dim)};
  g.d_sinks = d_sinks;
  const bool compare = f.specials == 0;
  for (const Variant* variant : Registry()) {
    if (!variant->has_backward()) continue;
    if (!Applies(*variant, forward, /*backward=*/false)) continue;
    RunOptions options;
    options.threads = f.threads;
    Status st = attn::Run(*variant, forward, options);
    if (!st.ok()) Fail("forward for the backward failed: " + st.ToString(), *variant, f.p);
    for (auto* buf : {&dq, &dk, &dv, &d_sinks}) std::fill(buf->begin(), buf->end(), kNaN);
    st = RunBackward(*variant, g, options);
    if (forward.kv_pages) {  // a training step has no KV cache
      if (st.code() != StatusCode::kInvalidArgument) {
        Fail("the backward of a paged cache gave " + st.ToString(), *variant, f.p);
      }
      continue;
    }
    if (!Applies(*variant, forward, /*backward=*/true)) {
      ExpectRefusal(st, *variant, f.p);
      continue;
    }
    if (!st.ok()) Fail("backward failed: " + st.ToString(), *variant, f.p);
    if (!compare) continue;
    const auto want = reference::Backward(g);
    if (!want.ok()) std::abort();
    const testing::Comparison c =
        testing::CompareGradients(g, *want, reference::GradErrorBounds(g, *want));
    if (!c.ok) Fail("backward: " + c.first_failure, *variant, f.p);
  }
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const bool invalid = in.ConsumeIntegralInRange<int>(0, 7) == 0;
  Fuzzed f;
  Decode(in, f);
  if (invalid) {
    const char* what = Break(in, f);
    const auto valid = Validate(f.p);
    if (valid.ok()) {
      std::fprintf(stderr, "attention_fuzzer: invalid problem (%s) accepted\n", what);
      std::abort();
    }
    for (const Variant* variant : Registry()) {
      const Status s = attn::Run(*variant, f.p);
      if (s.code() != StatusCode::kInvalidArgument) {
        Fail(std::string("invalid problem (") + what + ") gave " + s.ToString(), *variant, f.p);
      }
      if (!variant->has_backward()) continue;
      GradProblem g;
      g.forward = f.p;
      const Status gs = RunBackward(*variant, g);
      if (gs.code() != StatusCode::kInvalidArgument) {
        Fail(std::string("invalid problem (") + what + ") gave the backward " + gs.ToString(),
             *variant, f.p);
      }
    }
    return 0;
  }
  // ATTNLAB_FUZZ_PRINT=1: each input's problem on stderr (which corpus
  // entries are paged, packed, ...: `attention_fuzzer -runs=0 corpus/`).
  static const bool print = std::getenv("ATTNLAB_FUZZ_PRINT") != nullptr;
  if (print) std::fprintf(stderr, "attention_fuzzer: input %s\n", DescribeFuzzed(f.p).c_str());
  const auto valid = Validate(f.p);
  if (!valid.ok()) {
    std::fprintf(stderr, "attention_fuzzer: a valid problem was rejected: %s\n",
                 valid.status().ToString().c_str());
    std::abort();
  }
  const bool want_weights = !f.p.weights.empty();
  const auto want = reference::Attention(f.p, want_weights);
  if (!want.ok()) std::abort();
  const std::span<float> weights = f.p.weights;
  for (const Variant* variant : Registry()) {
    std::fill(f.o.begin(), f.o.end(), kNaN);
    std::fill(f.lse.begin(), f.lse.end(), kNaN);
    std::fill(f.weights.begin(), f.weights.end(), kNaN);
    f.p.weights = variant->supports_weights ? weights : std::span<float>();
    RunOptions options;
    options.threads = f.threads;
    const Status s = attn::Run(*variant, f.p, options);
    if (!Applies(*variant, f.p, /*backward=*/false)) {
      ExpectRefusal(s, *variant, f.p);
      continue;
    }
    if (!s.ok()) Fail("run failed: " + s.ToString(), *variant, f.p);
    CheckRows(*variant, f.p, *want);
  }
  f.p.weights = weights;
  CheckGradients(f);
  return 0;
}
