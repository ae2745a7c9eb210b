// Validate(): every check on a Problem lives here and nowhere else.
#include "kernels/problem.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <initializer_list>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

namespace attn {

const char* LayoutName(Layout layout) { return layout == Layout::kBHLD ? "bhsd" : "bshd"; }

const char* MaskKindName(MaskKind kind) {
  switch (kind) {
    case MaskKind::kNone:
      return "none";
    case MaskKind::kCausal:
      return "causal";
    case MaskKind::kSlidingWindow:
      return "window";
    case MaskKind::kAdditive:
      return "additive";
  }
  return "unknown";
}

const char* DiagonalName(Diagonal diagonal) {
  switch (diagonal) {
    case Diagonal::kTopLeft:
      return "top-left";
    case Diagonal::kAt:
      return "at";
    case Diagonal::kKeyLengths:
      return "key-lengths";
    default:
      return "bottom-right";
  }
}

uint8_t ModifiersOf(const ScoreModifiers& m) {
  return (m.softcap ? kSoftcap : 0) | (m.alibi_slopes.empty() ? 0 : kAlibi) |
         (m.sinks.empty() ? 0 : kSinks);
}

std::string ModifierNames(uint8_t set) {
  std::string out;
  for (const auto& [bit, name] :
       {std::pair{kSoftcap, "softcap"}, {kAlibi, "alibi"}, {kSinks, "sinks"}}) {
    if (!(set & bit)) continue;
    if (!out.empty()) out.append(", ");
    out.append(name);
  }
  return out.empty() ? "none" : out;
}

Problem MakeProblem(const Shape& s, const void* q, const void* k, const void* v, void* o,
                    Layout layout, const DTypes& dtypes) {
  auto strides = [layout](int64_t heads, int64_t len, int64_t dim) {
    return layout == Layout::kBHLD ? Strides::BHLD(heads, len, dim)
                                   : Strides::BLHD(heads, len, dim);
  };
  Problem p;
  p.shape = s;
  p.q = {q, strides(s.heads, s.q_len, s.head_dim), dtypes.q};
  p.k = {k, strides(s.kv_heads, s.kv_len, s.head_dim), dtypes.k};
  p.v = {v, strides(s.kv_heads, s.kv_len, s.value_dim), dtypes.v};
  p.o = {o, strides(s.heads, s.q_len, s.value_dim), dtypes.o};
  return p;
}

DTypes DTypesOf(const Problem& p) { return {p.q.dtype, p.k.dtype, p.v.dtype, p.o.dtype}; }

std::string Describe(const DTypes& t) {
  std::string out;
  const struct {
    const char* name;
    DType dtype;
  } fields[] = {{"Q=", t.q}, {" K=", t.k}, {" V=", t.v}, {" O=", t.o}};
  for (const auto& f : fields) out.append(f.name).append(DTypeName(f.dtype));
  return out;
}

std::string Describe(const Shape& s, const Mask& m) {
  // Appends, not operator+: gcc 12 warns falsely (-Wrestrict, PR 105651) on
  // "literal" + std::string chains.
  std::string out;
  const struct {
    const char* name;
    int64_t value;
  } fields[] = {{"B=", s.batch},    {" H=", s.heads},     {" Hkv=", s.kv_heads}, {" Lq=", s.q_len},
                {" Lk=", s.kv_len}, {" dk=", s.head_dim}, {" dv=", s.value_dim}};
  for (const auto& f : fields) out.append(f.name).append(std::to_string(f.value));
  out.append(" mask=").append(MaskKindName(m.kind));
  if (m.kind == MaskKind::kSlidingWindow) {
    out.append("(").append(std::to_string(m.window_left)).append(",");
    out.append(std::to_string(m.window_right)).append(")");
  }
  if (m.kind == MaskKind::kCausal || m.kind == MaskKind::kSlidingWindow) {
    if (m.diagonal == Diagonal::kTopLeft) out.append("(top-left)");
    if (m.diagonal == Diagonal::kAt) out.append("(off=" + std::to_string(m.diagonal_offset) + ")");
    if (m.diagonal == Diagonal::kKeyLengths) out.append("(at key lengths)");
  }
  if (m.key_lengths) out.append("+key_lengths");
  if (m.sequences)
    out.append("+varlen(S=").append(std::to_string(m.sequences->count())).append(")");
  return out;
}

namespace {

std::string Field(const char* name, int64_t value) {
  return std::string(name) + "=" + std::to_string(value);
}

// a * b, or nullopt on int64 overflow.
std::optional<int64_t> Mul(std::optional<int64_t> a, int64_t b) {
  int64_t r;
  if (!a || __builtin_mul_overflow(*a, b, &r)) return std::nullopt;
  return r;
}

// The bytes a view touches: runs of `run` bytes at lo + Σ x_k·stride_k for
// 0 <= x_k < count_k, all within the bounding box [lo, hi).
struct Extent {
  struct Dim {
    int64_t count;
    int64_t stride;  // bytes
  };
  const char* name = "";
  uintptr_t lo = 0;
  uintptr_t hi = 0;
  int64_t run = 0;
  std::vector<Dim> dims;
};

// A contiguous span of `bytes` bytes.
Extent Contiguous(const char* name, const void* data, size_t bytes) {
  const auto lo = reinterpret_cast<uintptr_t>(data);
  return {name, lo, lo + bytes, static_cast<int64_t>(bytes), {}};
}

// A tensor of these dimensions has at most kMaxTensorElements elements.
Status CheckElementCount(const char* name, std::initializer_list<int64_t> dims) {
  std::optional<int64_t> count = 1;
  double approx = 1;  // for the message, when the count overflows
  std::string shape;
  for (int64_t d : dims) {
    count = Mul(count, d);
    approx *= double(d);
    shape += (shape.empty() ? "" : ", ") + std::to_string(d);
  }
  if (count && *count <= kMaxTensorElements) return Status::Ok();
  char elements[32];
  std::snprintf(elements, sizeof(elements), "%.3g", approx);
  return InvalidArgument(std::string(name) + " is [" + shape + "]: " + elements +
                         " elements, more than the 2^48 any one tensor may have "
                         "(kMaxTensorElements)");
}

// Element types a problem may have at all (a variant may take fewer: the
// registry checks that). int8 needs row scales; scales without int8 are a
// mistake too (they would be ignored).
Status CheckDTypes(const Problem& p) {
  const struct {
    const char* name;
    DType dtype;
    bool int8_ok;
  } tensors[] = {{"Q", p.q.dtype, false},
                 {"K", p.k.dtype, true},
                 {"V", p.v.dtype, true},
                 {"O", p.o.dtype, false}};
  for (const auto& t : tensors) {
    if (static_cast<int>(t.dtype) >= kNumDTypes) {
      return InvalidArgument(std::string("dtype: ") + t.name + " has dtype " +
                             std::to_string(static_cast<int>(t.dtype)) + ", not a DType");
    }
    if (t.dtype == DType::kI8 && !t.int8_ok) {
      return InvalidArgument(std::string("dtype: ") + t.name +
                             "=i8 is not supported (int8 is for K and V, with row scales)");
    }
  }
  const struct {
    const char* tensor;
    const char* scales_name;
    DType dtype;
    const float* scales;
  } kv[] = {{"K", "k_scales", p.k.dtype, p.k_scales.data},
            {"V", "v_scales", p.v.dtype, p.v_scales.data}};
  for (const auto& t : kv) {
    if (t.dtype == DType::kI8 && t.scales == nullptr) {
      return InvalidArgument(std::string("dtype: ") + t.tensor + "=i8 needs " + t.scales_name +
                             " (one fp32 scale per row)");
    }
    if (t.dtype != DType::kI8 && t.scales != nullptr) {
      return InvalidArgument(std::string(t.scales_name) + " is set but " + t.tensor + " is " +
                             DTypeName(t.dtype) + ", not i8");
    }
  }
  return Status::Ok();
}

// Checks a [B, heads, len, dim] view of `elem_bytes`-byte elements: pointer
// aligned to the element, strides legal, offsets fit in int64. On success
// fills `extent`.
Status CheckTensor(const char* name, const void* data, const Strides& st, int64_t batch,
                   int64_t heads, int64_t len, int64_t dim, int64_t elem_bytes, Extent* extent) {
  if (data == nullptr) return InvalidArgument(std::string(name) + " is null");
  if (reinterpret_cast<uintptr_t>(data) % elem_bytes != 0) {
    return InvalidArgument(std::string(name) + " is not aligned to its " +
                           std::to_string(elem_bytes) + "-byte elements");
  }
  if (st.elem != 1) {
    return InvalidArgument(std::string(name) + ".strides.elem=" + std::to_string(st.elem) +
                           " must be 1 (the innermost d dimension is contiguous)");
  }
  const struct {
    const char* what;
    int64_t stride;
  } dims[] = {{"batch", st.batch}, {"head", st.head}, {"row", st.row}};
  for (const auto& d : dims) {
    if (d.stride < 0) {
      return InvalidArgument(std::string(name) + ".strides." + d.what + "=" +
                             std::to_string(d.stride) + " must be >= 0");
    }
  }
  ATTN_RETURN_IF_ERROR(CheckElementCount(name, {batch, heads, len, dim}));
  // Largest element offset + 1, with overflow checks.
  std::optional<int64_t> last = 0;
  const int64_t counts[] = {batch, heads, len};
  const int64_t strides[] = {st.batch, st.head, st.row};
  for (int i = 0; i < 3 && last; ++i) {
    const auto term = Mul(counts[i] > 0 ? counts[i] - 1 : 0, strides[i]);
    int64_t sum;
    if (!term || __builtin_add_overflow(*last, *term, &sum))
      last.reset();
    else
      last = sum;
  }
  int64_t end_elems = 0, bytes = 0;
  if (!last || __builtin_add_overflow(*last, dim, &end_elems) ||
      __builtin_mul_overflow(end_elems, elem_bytes, &bytes)) {
    return InvalidArgument(std::string(name) + " spans more elements than int64 can index (" +
                           Field("B", batch) + " " + Field("heads", heads) + " " +
                           Field("len", len) + " " + Field("d", dim) + ")");
  }
  extent->name = name;
  extent->lo = reinterpret_cast<uintptr_t>(data);
  extent->hi = extent->lo + static_cast<uintptr_t>(bytes);
  extent->run = elem_bytes * dim;
  extent->dims = {
      {batch, elem_bytes * st.batch}, {heads, elem_bytes * st.head}, {len, elem_bytes * st.row}};
  // A view with no elements (e.g. Q and O when Lq = 0) spans no memory.
  if (batch == 0 || heads == 0 || len == 0) extent->hi = extent->lo;
  return Status::Ok();
}

// An output view must not write one element twice: with dimensions sorted by
// stride, each stride must step past everything the smaller ones span.
Status CheckNoSelfOverlap(const char* name, const Strides& st, int64_t batch, int64_t heads,
                          int64_t len, int64_t dim) {
  struct D {
    const char* what;
    int64_t count, stride;
  };
  // An empty view (Lq = 0: MakeProblem's contiguous strides are then 0)
  // writes nothing, so it cannot overlap itself.
  if (batch == 0 || heads == 0 || len == 0 || dim == 0) return Status::Ok();
  std::vector<D> dims;
  if (batch > 1) dims.push_back({"batch", batch, st.batch});
  if (heads > 1) dims.push_back({"head", heads, st.head});
  if (len > 1) dims.push_back({"row", len, st.row});
  std::sort(dims.begin(), dims.end(), [](const D& a, const D& b) { return a.stride < b.stride; });
  int64_t span = dim;  // elements covered by the dimensions seen so far
  for (const D& d : dims) {
    if (d.stride < span) {
      return InvalidArgument(std::string(name) + ".strides." + d.what + "=" +
                             std::to_string(d.stride) + " makes " + name +
                             " overlap itself (needs >= " + std::to_string(span) + ")");
    }
    span = d.stride * (d.count - 1) + span;
  }
  return Status::Ok();
}

// True when two views share a byte. Disjoint bounding boxes answer at once.
// Otherwise: is there a run of `a` at a.lo + Σ x·s and one of `b` at
// b.lo + Σ y·t that intersect, i.e. Σ x·s - Σ y·t in
// (b.lo - a.lo - a.run, b.lo - a.lo + b.run)? A depth-first search over the
// indices, largest stride first, trying at each level only the values that
// can still reach the interval (for the usual nested layouts: two or three).
// Interleaved views of one buffer, such as Q and O in a [L, 2, d] packing,
// overlap in bounding box but not in any element, and are accepted. A search
// that would visit more than kMaxNodes nodes (exotic strides) answers
// "overlap", the safe side.
bool Overlaps(const Extent& a, const Extent& b) {
  if (!(a.lo < b.hi && b.lo < a.hi && a.lo < a.hi && b.lo < b.hi)) return false;
  struct Term {
    __int128 coef;
    int64_t max_index;
  };
  std::vector<Term> terms;
  for (const Extent::Dim& d : a.dims) terms.push_back({d.stride, d.count - 1});
  for (const Extent::Dim& d : b.dims) terms.push_back({-__int128{d.stride}, d.count - 1});
  std::sort(terms.begin(), terms.end(), [](const Term& x, const Term& y) {
    return (x.coef < 0 ? -x.coef : x.coef) > (y.coef < 0 ? -y.coef : y.coef);
  });
  // reach[k]: the least and greatest Σ of terms k.. .
  std::vector<std::pair<__int128, __int128>> reach(terms.size() + 1, {0, 0});
  for (size_t k = terms.size(); k-- > 0;) {
    const __int128 span = terms[k].coef * terms[k].max_index;
    reach[k] = {reach[k + 1].first + std::min<__int128>(0, span),
                reach[k + 1].second + std::max<__int128>(0, span)};
  }
  const __int128 offset = __int128(b.lo) - __int128(a.lo);
  const __int128 lo = offset - a.run + 1, hi = offset + b.run - 1;  // inclusive
  constexpr int kMaxNodes = 1 << 14;
  int nodes = 0;
  auto floor_div = [](__int128 n, __int128 d) {
    return n / d - ((n % d != 0) && ((n < 0) != (d < 0)));
  };
  std::function<bool(size_t, __int128)> search = [&](size_t k, __int128 sum) -> bool {
    if (++nodes > kMaxNodes) return true;
    if (sum + reach[k].second < lo || sum + reach[k].first > hi) return false;
    if (k == terms.size()) return true;
    const Term& t = terms[k];
    if (t.coef == 0) return search(k + 1, sum);
    // Indices x with sum + coef·x + reach[k+1] meeting [lo, hi].
    __int128 x0, x1;
    if (t.coef > 0) {
      x0 = -floor_div(-(lo - sum - reach[k + 1].second), t.coef);
      x1 = floor_div(hi - sum - reach[k + 1].first, t.coef);
    } else {
      x0 = -floor_div(-(hi - sum - reach[k + 1].first), t.coef);
      x1 = floor_div(lo - sum - reach[k + 1].second, t.coef);
    }
    x0 = std::max<__int128>(x0, 0);
    x1 = std::min<__int128>(x1, t.max_index);
    for (__int128 x = x0; x <= x1; ++x) {
      if (search(k + 1, sum + t.coef * x)) return true;
    }
    return false;
  };
  return search(0, 0);
}

}  // namespace

// "nan", "-inf", "0.5": a float as a message shows it.
std::string FloatText(float x) {
  char text[32];
  std::snprintf(text, sizeof(text), "%g", static_cast<double>(x));
  return text;
}

// A per-head array of the score modifiers: H entries, each `ok` (else the
// message names the entry: "alibi_slopes[2]=nan is not finite").
Status CheckPerHead(const char* name, std::span<const float> values, int64_t heads,
                    bool (*ok)(float), const char* want, std::vector<Extent>& inputs) {
  if (values.empty()) return Status::Ok();
  if (values.data() == nullptr) return InvalidArgument(std::string(name) + " is null");
  if (static_cast<int64_t>(values.size()) != heads) {
    return InvalidArgument(std::string(name) + " has " + std::to_string(values.size()) +
                           " entries, needs H=" + std::to_string(heads) + " (one per query head)");
  }
  for (size_t h = 0; h < values.size(); ++h) {
    if (!ok(values[h])) {
      return InvalidArgument(std::string(name) + "[" + std::to_string(h) +
                             "]=" + FloatText(values[h]) + " " + want);
    }
  }
  inputs.push_back(Contiguous(name, values.data(), values.size_bytes()));
  return Status::Ok();
}

Status CheckModifiers(const ScoreModifiers& m, const Shape& s, std::vector<Extent>& inputs) {
  if (m.softcap && !(std::isfinite(*m.softcap) && *m.softcap > 0)) {
    return InvalidArgument("softcap=" + FloatText(*m.softcap) + " must be finite and > 0");
  }
  ATTN_RETURN_IF_ERROR(CheckPerHead(
      "alibi_slopes", m.alibi_slopes, s.heads, [](float x) { return std::isfinite(x); },
      "is not finite", inputs));
  // -inf is a head without a sink (its logit adds e^-inf = 0).
  return CheckPerHead(
      "sinks", m.sinks, s.heads,
      [](float x) { return !std::isnan(x) && x != std::numeric_limits<float>::infinity(); },
      "must be finite or -inf", inputs);
}

// Packed sequences (kernels/problem.h, "Packed variable-length sequences"):
// B = 1, no key lengths or additive mask, and two offset arrays of S + 1
// entries each running from 0 to Lq and Lk without decreasing.
Status CheckSequences(const Mask& m, const Shape& s, std::vector<Extent>& inputs) {
  if (!m.sequences) return Status::Ok();
  const PackedSequences& seq = *m.sequences;
  if (s.batch != 1) {
    return InvalidArgument(
        "packed sequences (cu_seqlens) need B=1, the sequences packed along "
        "the positions; got " +
        Field("B", s.batch));
  }
  if (m.key_lengths) {
    return InvalidArgument(
        "key_lengths do not combine with packed sequences: cu_seqlens_k "
        "gives each sequence's keys");
  }
  if (m.kind == MaskKind::kAdditive) {
    return InvalidArgument("an additive mask does not combine with packed sequences");
  }
  if (seq.cu_seqlens_q.size() != seq.cu_seqlens_k.size()) {
    return InvalidArgument("cu_seqlens_q has " + std::to_string(seq.cu_seqlens_q.size()) +
                           " entries and cu_seqlens_k " + std::to_string(seq.cu_seqlens_k.size()) +
                           ": both need S + 1, one offset per sequence start and the end");
  }
  const struct {
    const char* name;
    std::span<const int32_t> offsets;
    const char* total_name;
    int64_t total;
  } arrays[] = {{"cu_seqlens_q", seq.cu_seqlens_q, "Lq", s.q_len},
                {"cu_seqlens_k", seq.cu_seqlens_k, "Lk", s.kv_len}};
  for (const auto& a : arrays) {
    const std::string name = a.name;
    if (a.offsets.empty()) return InvalidArgument(name + " is empty: needs S + 1 >= 1 entries");
    if (a.offsets.data() == nullptr) return InvalidArgument(name + " is null");
    if (a.offsets[0] != 0) {
      return InvalidArgument(name + "[0]=" + std::to_string(a.offsets[0]) + " must be 0");
    }
    for (size_t x = 1; x < a.offsets.size(); ++x) {
      if (a.offsets[x] < a.offsets[x - 1]) {
        return InvalidArgument(name + "[" + std::to_string(x) +
                               "]=" + std::to_string(a.offsets[x]) + " is less than " + name + "[" +
                               std::to_string(x - 1) + "]=" + std::to_string(a.offsets[x - 1]) +
                               " (offsets must not decrease)");
      }
    }
    if (a.offsets.back() != a.total) {
      return InvalidArgument(name + " ends at " + std::to_string(a.offsets.back()) + ", needs " +
                             Field(a.total_name, a.total) + " (the packed length)");
    }
    inputs.push_back(Contiguous(a.name, a.offsets.data(), a.offsets.size_bytes()));
  }
  return Status::Ok();
}

// A paged K/V cache (kernels/problem.h, "Paged K/V"): sizes, a table of B
// rows long enough for Lk, and every entry a sequence's keys need naming a
// block of the pool. Appends the table to `inputs`.
Status CheckPages(const Problem& p, std::vector<Extent>& inputs) {
  if (!p.kv_pages) return Status::Ok();
  const KvPages& pages = *p.kv_pages;
  const Shape& s = p.shape;
  if (p.mask.sequences) {
    return InvalidArgument("a paged K/V cache does not combine with packed sequences");
  }
  if (pages.block_size < 1 || pages.block_size > kMaxTensorElements) {
    return InvalidArgument(Field("block_size", pages.block_size) + " must be >= 1");
  }
  if (pages.num_blocks < 1 || pages.num_blocks > kMaxTensorElements) {
    return InvalidArgument(Field("num_blocks", pages.num_blocks) + " must be >= 1");
  }
  const auto table_size = Mul(s.batch, pages.blocks_per_sequence);
  if (pages.blocks_per_sequence < 0 || !table_size ||
      int64_t(pages.block_table.size()) != *table_size) {
    return InvalidArgument("block_table has " + std::to_string(pages.block_table.size()) +
                           " entries, needs B*blocks_per_sequence=" + std::to_string(s.batch) +
                           "*" + std::to_string(pages.blocks_per_sequence));
  }
  const auto capacity = Mul(pages.blocks_per_sequence, pages.block_size);
  if (capacity && *capacity < s.kv_len) {
    return InvalidArgument("block_table holds " + std::to_string(pages.blocks_per_sequence) +
                           " blocks of " + std::to_string(pages.block_size) +
                           " keys per sequence, fewer than " + Field("Lk", s.kv_len));
  }
  if (!pages.block_table.empty() && pages.block_table.data() == nullptr) {
    return InvalidArgument("block_table is null");
  }
  for (int64_t b = 0; b < s.batch; ++b) {
    // Key lengths are checked after this: clamp to Lk.
    int64_t keys = s.kv_len;
    if (p.mask.key_lengths && int64_t(p.mask.key_lengths->size()) == s.batch) {
      keys = std::clamp<int64_t>((*p.mask.key_lengths)[b], 0, s.kv_len);
    }
    const int64_t needed = (keys + pages.block_size - 1) / pages.block_size;
    for (int64_t x = 0; x < needed; ++x) {
      const int32_t block = pages.block_table[b * pages.blocks_per_sequence + x];
      if (block < 0 || block >= pages.num_blocks) {
        return InvalidArgument("block_table[" + std::to_string(b) + "][" + std::to_string(x) +
                               "]=" + std::to_string(block) + " is outside the pool of " +
                               Field("num_blocks", pages.num_blocks) + " (sequence " +
                               std::to_string(b) + " has " + std::to_string(keys) + " keys)");
      }
    }
  }
  inputs.push_back(
      Contiguous("block_table", pages.block_table.data(), pages.block_table.size_bytes()));
  return Status::Ok();
}

// Every check of Validate, handing back the extents of the problem's inputs
// and outputs (ValidateGrad checks the gradients against them).
static Status CheckProblem(const Problem& p, std::vector<Extent>& inputs,
                           std::vector<Extent>& outputs) {
  const Shape& s = p.shape;
  // Sizes.
  const struct {
    const char* name;
    int64_t value;
    int64_t min;
  } sizes[] = {{"B", s.batch, 1},     {"H", s.heads, 1},   {"Hkv", s.kv_heads, 1},
               {"Lq", s.q_len, 0},    {"Lk", s.kv_len, 0}, {"dk", s.head_dim, 1},
               {"dv", s.value_dim, 1}};
  for (const auto& f : sizes) {
    if (f.value < f.min) {
      return InvalidArgument(Field(f.name, f.value) + " must be >= " + std::to_string(f.min));
    }
    if (f.value > kMaxTensorElements) {
      return InvalidArgument(Field(f.name, f.value) + " must be <= 2^48 (kMaxTensorElements)");
    }
  }
  if (s.heads % s.kv_heads != 0) {
    return InvalidArgument(Field("Hkv", s.kv_heads) + " does not divide " + Field("H", s.heads));
  }

  // Element types: int8 is for K and V (with their row scales), and nothing
  // but a known DType.
  ATTN_RETURN_IF_ERROR(CheckDTypes(p));

  // Tensors: pointers, strides, sizes that fit.
  inputs.assign(3, Extent{});
  outputs.clear();
  Extent o_extent;
  auto bytes = [](DType t) { return int64_t(DTypeBytes(t)); };
  ATTN_RETURN_IF_ERROR(CheckTensor("Q", p.q.data, p.q.strides, s.batch, s.heads, s.q_len,
                                   s.head_dim, bytes(p.q.dtype), &inputs[0]));
  // K and V: [B, Hkv, Lk] rows, or a pool [num_blocks, Hkv, block_size] of
  // them (CheckPages checks the paging itself).
  const int64_t kv_batch = p.kv_pages ? p.kv_pages->num_blocks : s.batch;
  const int64_t kv_rows = p.kv_pages ? p.kv_pages->block_size : s.kv_len;
  ATTN_RETURN_IF_ERROR(CheckPages(p, inputs));
  ATTN_RETURN_IF_ERROR(CheckTensor("K", p.k.data, p.k.strides, kv_batch, s.kv_heads, kv_rows,
                                   s.head_dim, bytes(p.k.dtype), &inputs[1]));
  ATTN_RETURN_IF_ERROR(CheckTensor("V", p.v.data, p.v.strides, kv_batch, s.kv_heads, kv_rows,
                                   s.value_dim, bytes(p.v.dtype), &inputs[2]));
  ATTN_RETURN_IF_ERROR(CheckTensor("O", p.o.data, p.o.strides, s.batch, s.heads, s.q_len,
                                   s.value_dim, bytes(p.o.dtype), &o_extent));
  // The scales of int8 K and V: [B, Hkv, Lk] floats (a d of 1).
  for (const auto& [name, t, scales] :
       {std::tuple{"k_scales", &p.k, &p.k_scales}, std::tuple{"v_scales", &p.v, &p.v_scales}}) {
    if (t->dtype != DType::kI8) continue;
    Strides st = scales->strides;
    st.elem = 1;
    inputs.emplace_back();
    ATTN_RETURN_IF_ERROR(
        CheckTensor(name, scales->data, st, kv_batch, s.kv_heads, kv_rows, 1, 4, &inputs.back()));
  }
  ATTN_RETURN_IF_ERROR(
      CheckNoSelfOverlap("O", p.o.strides, s.batch, s.heads, s.q_len, s.value_dim));
  outputs.push_back(o_extent);

  // Scale.
  if (p.scale && !std::isfinite(*p.scale)) {
    return InvalidArgument("scale=" + std::to_string(*p.scale) + " must be finite");
  }

  // Row and score counts (lse, weights, additive mask) must fit too.
  const auto rows = Mul(Mul(s.batch, s.heads), s.q_len);
  const auto scores = Mul(rows, s.kv_len);
  if (!scores || !Mul(scores, 4)) {
    return InvalidArgument("B*H*Lq*Lk overflows int64 (" + Describe(s, p.mask) + ")");
  }

  // Mask.
  const Mask& m = p.mask;
  switch (m.kind) {
    case MaskKind::kNone:
    case MaskKind::kCausal:
      break;
    case MaskKind::kSlidingWindow:
      if (m.window_left < 0)
        return InvalidArgument(Field("window_left", m.window_left) + " must be >= 0");
      if (m.window_right < 0)
        return InvalidArgument(Field("window_right", m.window_right) + " must be >= 0");
      break;
    case MaskKind::kAdditive: {
      const AdditiveMaskShape& a = m.additive_shape;
      if (m.additive.data() == nullptr) return InvalidArgument("additive mask is null");
      if (a.rows != s.q_len || a.cols != s.kv_len) {
        return InvalidArgument("additive mask is [" + std::to_string(a.rows) + ", " +
                               std::to_string(a.cols) + "], needs [Lq, Lk] = [" +
                               std::to_string(s.q_len) + ", " + std::to_string(s.kv_len) + "]");
      }
      if (a.batch != 1 && a.batch != s.batch) {
        return InvalidArgument("additive mask batch=" + std::to_string(a.batch) +
                               " must be 1 (broadcast) or B=" + std::to_string(s.batch));
      }
      if (a.heads != 1 && a.heads != s.heads) {
        return InvalidArgument("additive mask heads=" + std::to_string(a.heads) +
                               " must be 1 (broadcast) or H=" + std::to_string(s.heads));
      }
      const auto need = Mul(Mul(Mul(a.batch, a.heads), a.rows), a.cols);
      if (!need || static_cast<int64_t>(m.additive.size()) != *need) {
        return InvalidArgument("additive mask has " + std::to_string(m.additive.size()) +
                               " elements, its shape [" + std::to_string(a.batch) + ", " +
                               std::to_string(a.heads) + ", " + std::to_string(a.rows) + ", " +
                               std::to_string(a.cols) + "] needs " +
                               (need ? std::to_string(*need) : std::string("more than int64")));
      }
      inputs.push_back(Contiguous("additive mask", m.additive.data(), m.additive.size_bytes()));
      break;
    }
    default:
      return InvalidArgument("mask kind " + std::to_string(static_cast<int>(m.kind)) +
                             " is not a MaskKind");
  }
  if (m.key_lengths) {
    const std::span<const int32_t> lengths = *m.key_lengths;
    if (static_cast<int64_t>(lengths.size()) != s.batch) {
      return InvalidArgument("key_lengths has " + std::to_string(lengths.size()) +
                             " entries, needs B=" + std::to_string(s.batch));
    }
    if (lengths.data() == nullptr) return InvalidArgument("key_lengths is null");
    for (int64_t b = 0; b < s.batch; ++b) {
      const int32_t len = lengths[b];
      if (len < 0 || len > s.kv_len) {
        return InvalidArgument("key_lengths[" + std::to_string(b) + "]=" + std::to_string(len) +
                               " is outside [0, Lk=" + std::to_string(s.kv_len) + "]");
      }
    }
    inputs.push_back(Contiguous("key_lengths", lengths.data(), lengths.size_bytes()));
  }

  if (m.diagonal != Diagonal::kBottomRight && m.diagonal != Diagonal::kTopLeft &&
      m.diagonal != Diagonal::kAt && m.diagonal != Diagonal::kKeyLengths) {
    return InvalidArgument("mask diagonal " + std::to_string(static_cast<int>(m.diagonal)) +
                           " is not a Diagonal");
  }
  if (m.diagonal == Diagonal::kAt) {
    // Bounded so that i + off +- window stays inside int64.
    if (m.diagonal_offset > kMaxTensorElements || m.diagonal_offset < -kMaxTensorElements) {
      return InvalidArgument("mask diagonal_offset=" + std::to_string(m.diagonal_offset) +
                             " is outside [-2^48, 2^48]");
    }
    if (m.sequences) {
      return InvalidArgument(
          "mask diagonal kAt (an explicit offset) does not combine with packed sequences "
          "(each sequence has its own diagonal)");
    }
  }
  if (m.diagonal == Diagonal::kKeyLengths && !m.key_lengths) {
    return InvalidArgument(
        "mask diagonal key-lengths (each batch's diagonal at its key length) needs key_lengths" +
        std::string(m.sequences ? " (packed sequences already have their own diagonals)" : ""));
  }
  ATTN_RETURN_IF_ERROR(CheckSequences(m, s, inputs));
  ATTN_RETURN_IF_ERROR(CheckModifiers(p.modifiers, s, inputs));

  // Optional outputs.
  if (!p.lse.empty() || p.lse.data() != nullptr) {
    if (p.lse.data() == nullptr) {
      return InvalidArgument("lse is null but has " + std::to_string(p.lse.size()) + " elements");
    }
    if (static_cast<int64_t>(p.lse.size()) != *rows) {
      return InvalidArgument("lse has " + std::to_string(p.lse.size()) +
                             " elements, needs B*H*Lq=" + std::to_string(*rows));
    }
    outputs.push_back(Contiguous("lse", p.lse.data(), p.lse.size_bytes()));
  }
  if (!p.weights.empty() || p.weights.data() != nullptr) {
    if (p.weights.data() == nullptr) {
      return InvalidArgument("weights is null but has " + std::to_string(p.weights.size()) +
                             " elements");
    }
    if (static_cast<int64_t>(p.weights.size()) != *scores) {
      return InvalidArgument("weights has " + std::to_string(p.weights.size()) +
                             " elements, needs B*H*Lq*Lk=" + std::to_string(*scores));
    }
    outputs.push_back(Contiguous("weights", p.weights.data(), p.weights.size_bytes()));
  }

  // No output may overlap an input or another output.
  for (size_t a = 0; a < outputs.size(); ++a) {
    for (const Extent& in : inputs) {
      if (Overlaps(outputs[a], in)) {
        return InvalidArgument(std::string("output ") + outputs[a].name + " overlaps input " +
                               in.name);
      }
    }
    for (size_t b = a + 1; b < outputs.size(); ++b) {
      if (Overlaps(outputs[a], outputs[b])) {
        return InvalidArgument(std::string("output ") + outputs[a].name + " overlaps output " +
                               outputs[b].name);
      }
    }
  }

  return Status::Ok();
}

StatusOr<ValidProblem> Validate(const Problem& p) {
  std::vector<Extent> inputs, outputs;
  ATTN_RETURN_IF_ERROR(CheckProblem(p, inputs, outputs));
  const Shape& s = p.shape;
  const Mask& m = p.mask;
  ValidProblem v;
  v.shape = s;
  v.q = p.q;
  v.k = p.k;
  v.v = p.v;
  v.o = p.o;
  v.k_scales = p.k_scales;
  v.v_scales = p.v_scales;
  v.scale = p.scale ? *p.scale : static_cast<float>(1.0 / std::sqrt(double(s.head_dim)));
  v.mask = m;
  v.modifiers = p.modifiers;
  v.kv_pages = p.kv_pages;
  v.lse = p.lse;
  v.weights = p.weights;
  v.group = s.heads / s.kv_heads;
  switch (m.diagonal) {
    case Diagonal::kTopLeft:
      v.diag_offset = 0;
      break;
    case Diagonal::kAt:
      v.diag_offset = m.diagonal_offset;
      break;
    case Diagonal::kKeyLengths:
      v.diag_offset = -s.q_len;  // + key_lengths[b]: ValidProblem::DiagOffset
      break;
    default:
      v.diag_offset = s.kv_len - s.q_len;
  }
  // A window wider than every row's reach is equivalent to that reach, and
  // clamping keeps i + off +- window inside int64. Row i's window starts at
  // i + off - left, <= 0 for every row once left >= Lq + off, and ends at
  // i + off + right, >= Lk once right >= Lk - off: over every offset a row
  // may have (each batch's with kKeyLengths, each sequence's when packed:
  // within [-Lq, Lk]). Clamping to Lq + Lk instead was wrong for an explicit
  // offset (kAt) beyond it: ring attention's block pairs with a window wider
  // than the block saw too few keys.
  const bool per_row_offsets = m.diagonal == Diagonal::kKeyLengths || m.sequences;
  const int64_t off_lo = per_row_offsets ? -s.q_len : v.diag_offset;
  const int64_t off_hi = per_row_offsets ? s.kv_len : v.diag_offset;
  v.mask.window_left = std::min(m.window_left, std::max<int64_t>(0, s.q_len + off_hi));
  v.mask.window_right = std::min(m.window_right, std::max<int64_t>(0, s.kv_len - off_lo));
  return v;
}

KeyRange ValidProblem::SequenceVisibleKeys(int64_t i) const {
  const std::span<const int32_t> cq = mask.sequences->cu_seqlens_q;
  const std::span<const int32_t> ck = mask.sequences->cu_seqlens_k;
  // Row i's sequence: the last s with cq[s] <= i (empty ones share offsets).
  const int64_t s = std::upper_bound(cq.begin(), cq.end(), i) - cq.begin() - 1;
  const int64_t q_len = cq[s + 1] - cq[s], kv_len = ck[s + 1] - ck[s];
  const int64_t off = mask.diagonal == Diagonal::kTopLeft ? 0 : kv_len - q_len;
  const KeyRange keys = DiagonalKeys(i - cq[s] + off, kv_len);
  return {ck[s] + keys.begin, ck[s] + std::max(keys.begin, keys.end)};
}

namespace {

// The view from position `row` on (row `row` becomes row 0).
template <typename T>
TensorRef<T> FromRow(TensorRef<T> t, int64_t row) {
  using Byte = std::conditional_t<std::is_const_v<T>, const char, char>;
  if (t.data != nullptr) {
    t.data = static_cast<Byte*>(t.data) + row * t.strides.row * int64_t(DTypeBytes(t.dtype));
  }
  return t;
}
RowScales FromRow(RowScales t, int64_t row) {
  if (t.data != nullptr) t.data += row * t.strides.row;
  return t;
}

}  // namespace

Problem SequenceProblem(const Problem& packed, int64_t s) {
  const PackedSequences& seq = *packed.mask.sequences;
  const int64_t q0 = seq.cu_seqlens_q[s], k0 = seq.cu_seqlens_k[s];
  Problem p = packed;
  p.shape.q_len = seq.cu_seqlens_q[s + 1] - q0;
  p.shape.kv_len = seq.cu_seqlens_k[s + 1] - k0;
  p.q = FromRow(p.q, q0);
  p.o = FromRow(p.o, q0);
  p.k = FromRow(p.k, k0);
  p.v = FromRow(p.v, k0);
  p.k_scales = FromRow(p.k_scales, k0);
  p.v_scales = FromRow(p.v_scales, k0);
  p.mask.sequences.reset();
  p.lse = {};
  p.weights = {};
  return p;
}

GradProblem SequenceGradProblem(const GradProblem& packed, int64_t s) {
  const PackedSequences& seq = *packed.forward.mask.sequences;
  const int64_t q0 = seq.cu_seqlens_q[s], k0 = seq.cu_seqlens_k[s];
  GradProblem g;
  g.forward = SequenceProblem(packed.forward, s);
  g.d_o = FromRow(packed.d_o, q0);
  g.dq = FromRow(packed.dq, q0);
  g.dk = FromRow(packed.dk, k0);
  g.dv = FromRow(packed.dv, k0);
  g.d_sinks = {};
  return g;
}

GradProblem MakeGradProblem(const Problem& forward, const void* d_o, void* dq, void* dk, void* dv,
                            Layout layout) {
  // The strides of contiguous Q, K, V, O in `layout` are those of dQ, dK,
  // dV, dO.
  const Problem views = MakeProblem(forward.shape, nullptr, nullptr, nullptr, nullptr, layout);
  GradProblem g;
  g.forward = forward;
  g.d_o = {d_o, views.o.strides, DType::kF32};
  g.dq = {dq, views.q.strides, DType::kF32};
  g.dk = {dk, views.k.strides, DType::kF32};
  g.dv = {dv, views.v.strides, DType::kF32};
  return g;
}

StatusOr<ValidGradProblem> ValidateGrad(const GradProblem& g) {
  StatusOr<ValidProblem> forward = Validate(g.forward);
  if (!forward.ok()) return forward.status();
  std::vector<Extent> inputs, outputs;  // passed just now
  ATTN_RETURN_IF_ERROR(CheckProblem(g.forward, inputs, outputs));
  const Problem& p = g.forward;
  const Shape& s = p.shape;
  if (p.kv_pages) {
    return InvalidArgument("the backward does not take a paged K/V cache (kv_pages)");
  }
  const int64_t rows = s.batch * s.heads * s.q_len;  // fits: Validate checked B*H*Lq*Lk
  if (p.lse.empty() && rows > 0) {
    return InvalidArgument("lse is required by the backward (the forward's logsumexp, B*H*Lq=" +
                           std::to_string(rows) + " floats)");
  }
  const struct {
    const char* name;
    DType dtype;
  } types[] = {{"Q", p.q.dtype},    {"K", p.k.dtype},   {"V", p.v.dtype},   {"O", p.o.dtype},
               {"dO", g.d_o.dtype}, {"dQ", g.dq.dtype}, {"dK", g.dk.dtype}, {"dV", g.dv.dtype}};
  for (const auto& t : types) {
    if (t.dtype != DType::kF32) {
      return InvalidArgument(std::string("dtype: the backward takes f32 tensors only; ") + t.name +
                             "=" +
                             (static_cast<int>(t.dtype) < kNumDTypes
                                  ? DTypeName(t.dtype)
                                  : std::to_string(static_cast<int>(t.dtype)).c_str()));
    }
  }
  // The forward's outputs are the backward's inputs (weights are not read).
  for (const Extent& e : outputs) {
    if (std::string_view(e.name) != "weights") inputs.push_back(e);
  }
  inputs.emplace_back();
  ATTN_RETURN_IF_ERROR(CheckTensor("dO", g.d_o.data, g.d_o.strides, s.batch, s.heads, s.q_len,
                                   s.value_dim, 4, &inputs.back()));
  const struct {
    const char* name;
    const TensorRef<void>& t;
    int64_t heads, len, dim;
  } grads[] = {{"dQ", g.dq, s.heads, s.q_len, s.head_dim},
               {"dK", g.dk, s.kv_heads, s.kv_len, s.head_dim},
               {"dV", g.dv, s.kv_heads, s.kv_len, s.value_dim}};
  std::vector<Extent> written;
  for (const auto& t : grads) {
    written.emplace_back();
    ATTN_RETURN_IF_ERROR(CheckTensor(t.name, t.t.data, t.t.strides, s.batch, t.heads, t.len, t.dim,
                                     4, &written.back()));
    ATTN_RETURN_IF_ERROR(CheckNoSelfOverlap(t.name, t.t.strides, s.batch, t.heads, t.len, t.dim));
  }
  if (!g.d_sinks.empty()) {
    if (p.modifiers.sinks.empty()) {
      return InvalidArgument("d_sinks is given but the problem has no sinks (modifiers.sinks)");
    }
    if (static_cast<int64_t>(g.d_sinks.size()) != s.heads) {
      return InvalidArgument("d_sinks has " + std::to_string(g.d_sinks.size()) +
                             " entries, needs H=" + std::to_string(s.heads));
    }
    if (g.d_sinks.data() == nullptr) return InvalidArgument("d_sinks is null");
    written.push_back(Contiguous("d_sinks", g.d_sinks.data(), g.d_sinks.size_bytes()));
  }
  for (size_t a = 0; a < written.size(); ++a) {
    for (const Extent& in : inputs) {
      if (Overlaps(written[a], in)) {
        return InvalidArgument(std::string("gradient ") + written[a].name + " overlaps input " +
                               in.name);
      }
    }
    for (size_t b = a + 1; b < written.size(); ++b) {
      if (Overlaps(written[a], written[b])) {
        return InvalidArgument(std::string("gradient ") + written[a].name + " overlaps gradient " +
                               written[b].name);
      }
    }
  }
  ValidGradProblem v(*forward);
  v.d_o = g.d_o;
  v.dq = g.dq;
  v.dk = g.dk;
  v.dv = g.dv;
  v.d_sinks = g.d_sinks;
  return v;
}

void SinkGradients(const ValidGradProblem& g) {
  const ValidProblem& p = g.forward;
  const Shape& s = p.shape;
  for (int64_t h = 0; h < static_cast<int64_t>(g.d_sinks.size()); ++h) {
    const double sink = p.modifiers.sinks[h];
    double sum = 0;
    if (sink != -std::numeric_limits<double>::infinity()) {
      for (int64_t b = 0; b < s.batch; ++b) {
        for (int64_t i = 0; i < s.q_len; ++i) {
          const float* d_o = g.DoRow(b, h, i);
          const float* o = g.ORow(b, h, i);
          double dsum = 0;
          for (int64_t d = 0; d < s.value_dim; ++d) dsum += double(d_o[d]) * double(o[d]);
          sum -= std::exp(sink - double(g.Lse(b, h, i))) * dsum;
        }
      }
    }
    g.d_sinks[h] = static_cast<float>(sum);
  }
}

int64_t VisiblePairs(const ValidProblem& p) {
  int64_t pairs = 0;
  for (int64_t b = 0; b < p.shape.batch; ++b) {
    for (int64_t i = 0; i < p.shape.q_len; ++i) pairs += p.VisibleKeys(b, i).size();
  }
  return pairs * p.shape.heads;
}

}  // namespace attn
