// attnlab._core: the compiled half of the Python package (python/attnlab/).
//
// A thin layer over the public API (kernels/registry.h) and the fp64
// reference: no kernel logic, no copies. The pure-Python layer
// (attnlab/__init__.py) turns whatever the user passed (rank 2-4, bhsd or
// bshd, numpy arrays, memoryviews, PyTorch tensors) into 4-D numpy views in
// [batch, head, position, d] axis order, allocates the outputs, and calls in
// here; this file reads the views' strides into attn::TensorRef and runs.
//
// Every tensor is checked here against the others (the binding is where
// Python's memory meets the kernels, so it does not trust its caller):
// shapes agree, element types match the dtype names, strides are whole
// elements, non-negative, with a unit innermost stride. The problem itself
// is then validated by attn::Validate, once, like every other front end.
//
// Errors: attn::Status becomes ValueError (InvalidArgument, NotFound,
// Unimplemented; the Status message as is: "Hkv=3 does not divide H=8"),
// MemoryError (ResourceExhausted: over the memory budget) or RuntimeError
// (Internal: a bug). The GIL is released while a kernel or the reference
// runs: the arrays stay alive because the calling Python frame holds them.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kernels/openblas_core.h"
#include "kernels/registry.h"
#include "reference/reference.h"
#include "testing/check.h"

namespace py = pybind11;

namespace attn::python {
namespace {

// ------------------------------------------------------------ errors

// Raises the Python exception for a failed Status. Call with the GIL held.
[[noreturn]] void Raise(const Status& status) {
  switch (status.code()) {
    case StatusCode::kResourceExhausted:
      PyErr_SetString(PyExc_MemoryError, status.message().c_str());
      throw py::error_already_set();
    case StatusCode::kInternal:
      throw std::runtime_error("attnlab internal error: " + status.message());
    default:
      throw py::value_error(status.message());
  }
}

void ThrowIfError(const Status& status) {
  if (!status.ok()) Raise(status);
}

// f() with the GIL released, so other Python threads run meanwhile: the
// arrays it reads and writes stay alive (the calling Python frame holds them)
// and it touches no Python object.
template <typename F>
auto WithoutGil(F&& f) {
  py::gil_scoped_release release;
  return f();
}

// ------------------------------------------------------------ tensors

DType DTypeFromName(const std::string& name) {
  for (DType d : {DType::kF32, DType::kBF16, DType::kF16, DType::kI8}) {
    if (name == DTypeName(d)) return d;
  }
  throw py::value_error("unknown dtype '" + name + "': want f32, bf16, f16 or i8");
}

// A 4-D [B, H, L, d] view: its element strides, after checking that `a`
// holds `dtype` elements with whole-element, non-negative strides and a
// unit innermost stride. A dimension of extent 1 gets stride 0 (numpy gives
// such dimensions arbitrary strides; they are never stepped along).
Strides ViewStrides(const py::array& a, const char* name, DType dtype) {
  if (a.ndim() != 4) throw py::value_error(std::string(name) + ": internal: want a 4-D view");
  const auto itemsize = static_cast<py::ssize_t>(DTypeBytes(dtype));
  if (a.itemsize() != itemsize) {
    throw py::value_error(std::string(name) + " has " + std::to_string(a.itemsize()) +
                          "-byte elements; dtype " + DTypeName(dtype) + " has " +
                          std::to_string(itemsize));
  }
  // An empty view is never read (numpy gives fresh empty arrays zero strides).
  if (a.size() == 0) return {0, 0, 0, 1};
  int64_t s[4];
  for (int i = 0; i < 4; ++i) {
    const py::ssize_t bytes = a.shape(i) <= 1 ? 0 : a.strides(i);
    if (bytes < 0 || bytes % itemsize != 0) {
      throw py::value_error(std::string(name) + " has stride " + std::to_string(a.strides(i)) +
                            " bytes along an axis: want a non-negative multiple of the " +
                            std::to_string(itemsize) + "-byte element");
    }
    s[i] = bytes / itemsize;
  }
  if (a.shape(3) > 1 && s[3] != 1) {
    throw py::value_error(std::string(name) + ": the innermost (d) axis must be contiguous");
  }
  return {s[0], s[1], s[2], 1};
}

TensorRef<const void> Input(const py::array& a, const char* name, const std::string& dtype) {
  const DType d = DTypeFromName(dtype);
  return {a.data(), ViewStrides(a, name, d), d};
}

TensorRef<void> Output(py::array& a, const char* name, const std::string& dtype) {
  const DType d = DTypeFromName(dtype);
  if (!a.writeable()) throw py::value_error(std::string(name) + " is read-only");
  return {a.mutable_data(), ViewStrides(a, name, d), d};
}

// The contiguous float32 span of an optional array of exactly `count`
// elements (lse, weights, the additive mask); `read` when only read.
std::span<float> FloatSpan(std::optional<py::array>& a, const char* name, int64_t count,
                           bool read = false) {
  if (!a) return {};
  if (!py::isinstance<py::array_t<float>>(*a) || !(a->flags() & py::array::c_style) ||
      (!read && !a->writeable())) {
    throw py::value_error(std::string(name) + ": want a" + (read ? "" : " writeable") +
                          " C-contiguous float32 array");
  }
  if (a->size() != count) {
    throw py::value_error(std::string(name) + " has " + std::to_string(a->size()) +
                          " elements, want " + std::to_string(count));
  }
  // The library's spans are mutable; a span that is only read is never written.
  return {static_cast<float*>(const_cast<void*>(a->data())), static_cast<size_t>(count)};
}

void ExpectDim(const py::array& a, int axis, int64_t want, const char* name, const char* what,
               const char* other) {
  if (a.shape(axis) != want) {
    throw py::value_error(std::string(name) + " has " + what + "=" + std::to_string(a.shape(axis)) +
                          ", " + other + " has " + std::to_string(want));
  }
}

// ------------------------------------------------------------ the problem

// Everything but the tensors, as the Python layer passes it.
struct Options {
  std::string mask = "none";  // none | causal | window | additive
  int64_t window_left = 0, window_right = 0;
  std::optional<py::array> additive;     // [b, h, Lq, Lk] float32, b in {1, B}, h in {1, H}
  std::optional<py::array> key_lengths;  // [B] int32
  std::optional<py::array> cu_seqlens_q, cu_seqlens_k;  // [S + 1] int32 (packed sequences)
  std::optional<py::array> block_table;                 // [B, blocks] int32: k, v are block pools
  std::optional<float> scale;
  std::optional<py::array> k_scales, v_scales;  // [B, Hkv, Lk] float32 views (i8 K, V)
  bool top_left = false;                        // Diagonal::kTopLeft
  bool at_key_lengths = false;                  // Diagonal::kKeyLengths
  std::optional<float> softcap;
  std::optional<py::array> alibi_slopes, sinks;  // [H] float32, contiguous
  int threads = 0;
  std::optional<size_t> memory_budget;

  RunOptions Run() const {
    RunOptions o = OnThreads(threads);
    o.memory_budget_bytes = memory_budget;
    // Two clock reads per work item, only in loops of 2+ threads: what
    // attnlab.last_run_stats() reports as "thread_times".
    o.time_threads = true;
    return o;
  }
};

MaskKind MaskKindFromName(const std::string& name) {
  for (int k = 0; k < kNumMaskKinds; ++k) {
    if (name == MaskKindName(MaskKind(k))) return MaskKind(k);
  }
  throw py::value_error("unknown mask kind '" + name + "'");
}

RowScales Scales(std::optional<py::array>& a, const char* name) {
  if (!a) return {};
  if (!py::isinstance<py::array_t<float>>(*a) || a->ndim() != 3) {
    throw py::value_error(std::string(name) + ": want float32 row scales [B, Hkv, Lk]");
  }
  Strides s{0, 0, 0, 1};
  int64_t* dims[3] = {&s.batch, &s.head, &s.row};
  for (int i = 0; i < 3; ++i) {
    const py::ssize_t bytes = a->shape(i) <= 1 ? 0 : a->strides(i);
    if (bytes < 0 || bytes % 4 != 0) {
      throw py::value_error(std::string(name) + ": strides must be non-negative whole floats");
    }
    *dims[i] = bytes / 4;
  }
  return {static_cast<const float*>(a->data()), s};
}

// A contiguous int32 vector the Python layer prepared (key lengths,
// cu_seqlens), as the span the problem holds.
std::span<const int32_t> Int32Span(const py::array& a, const char* name) {
  if (!py::isinstance<py::array_t<int32_t>>(a) || a.ndim() != 1 ||
      !(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string("internal: ") + name + " must be a contiguous int32 vector");
  }
  return {static_cast<const int32_t*>(a.data()), static_cast<size_t>(a.size())};
}

// The attn::Problem over 4-D views q [B,H,Lq,dk], k [B,Hkv,Lk,dk],
// v [B,Hkv,Lk,dv], o [B,H,Lq,dv], after checking that their shapes agree
// (Validate sees one Shape; it cannot tell a V of the wrong length).
// `o_is_input`: O is read (the backward's forward output), not written.
Problem MakeProblem(const py::array& q, const py::array& k, const py::array& v, py::array& o,
                    const std::vector<std::string>& dtypes, Options& opt, bool o_is_input = false) {
  if (dtypes.size() != 4) throw py::value_error("internal: want 4 dtypes (q, k, v, o)");
  // A paged cache's k and v are pools [num_blocks, Hkv, block_size, d]: their
  // first dimension is the pool's, and Lk the table's capacity.
  const bool paged = opt.block_table.has_value();
  if (paged) {
    ExpectDim(v, 0, k.shape(0), "v", "num_blocks", "k");
  } else {
    ExpectDim(k, 0, q.shape(0), "k", "B", "q");
    ExpectDim(v, 0, q.shape(0), "v", "B", "q");
  }
  ExpectDim(v, 1, k.shape(1), "v", "Hkv", "k");
  ExpectDim(v, 2, k.shape(2), "v", "Lk", "k");
  ExpectDim(k, 3, q.shape(3), "k", "dk", "q");
  ExpectDim(o, 0, q.shape(0), "out", "B", "q");
  ExpectDim(o, 1, q.shape(1), "out", "H", "q");
  ExpectDim(o, 2, q.shape(2), "out", "Lq", "q");
  ExpectDim(o, 3, v.shape(3), "out", "dv", "v");
  Problem p;
  p.shape = {q.shape(0), q.shape(1), k.shape(1), q.shape(2), k.shape(2), q.shape(3), v.shape(3)};
  if (paged) {
    const py::array& t = *opt.block_table;
    if (!py::isinstance<py::array_t<int32_t>>(t) || t.ndim() != 2 ||
        !(t.flags() & py::array::c_style)) {
      throw py::value_error("internal: block_table must be a contiguous int32 matrix");
    }
    p.kv_pages = KvPages{{static_cast<const int32_t*>(t.data()), static_cast<size_t>(t.size())},
                         t.shape(1),
                         k.shape(2),
                         k.shape(0)};
    p.shape.kv_len = t.shape(1) * k.shape(2);
  }
  p.q = Input(q, "q", dtypes[0]);
  p.k = Input(k, "k", dtypes[1]);
  p.v = Input(v, "v", dtypes[2]);
  if (o_is_input) {
    const TensorRef<const void> in = Input(o, "o", dtypes[3]);
    p.o = {const_cast<void*>(in.data), in.strides, in.dtype};  // read by the backward only
  } else {
    p.o = Output(o, "out", dtypes[3]);
  }
  p.k_scales = Scales(opt.k_scales, "k_scales");
  p.v_scales = Scales(opt.v_scales, "v_scales");
  p.scale = opt.scale;
  p.mask.kind = MaskKindFromName(opt.mask);
  p.mask.window_left = opt.window_left;
  p.mask.window_right = opt.window_right;
  if (opt.additive) {
    py::array& m = *opt.additive;
    if (m.ndim() != 4) throw py::value_error("internal: the additive mask must be 4-D");
    p.mask.additive_shape = {m.shape(0), m.shape(1), m.shape(2), m.shape(3)};
    p.mask.additive = FloatSpan(opt.additive, "mask", m.size(), /*read=*/true);
  }
  if (opt.top_left) p.mask.diagonal = Diagonal::kTopLeft;
  if (opt.at_key_lengths) p.mask.diagonal = Diagonal::kKeyLengths;
  p.modifiers.softcap = opt.softcap;
  // Their lengths are Validate's to check (it names H).
  auto count = [](const std::optional<py::array>& a) { return a ? int64_t(a->size()) : 0; };
  p.modifiers.alibi_slopes = FloatSpan(opt.alibi_slopes, "alibi_slopes", count(opt.alibi_slopes),
                                       /*read=*/true);
  p.modifiers.sinks = FloatSpan(opt.sinks, "sinks", count(opt.sinks), /*read=*/true);
  if (opt.key_lengths) p.mask.key_lengths = Int32Span(*opt.key_lengths, "key_lengths");
  if (opt.cu_seqlens_q || opt.cu_seqlens_k) {
    if (!opt.cu_seqlens_q || !opt.cu_seqlens_k) {
      throw py::value_error("packed sequences need both cu_seqlens_q and cu_seqlens_k");
    }
    p.mask.sequences = PackedSequences{Int32Span(*opt.cu_seqlens_q, "cu_seqlens_q"),
                                       Int32Span(*opt.cu_seqlens_k, "cu_seqlens_k")};
  }
  return p;
}

py::dict StatsDict(const RunStats& stats) {
  py::dict d;
  d["path"] = stats.path;
  d["threads"] = stats.threads;
  d["workspace_declared_bytes"] = stats.workspace_declared_bytes;
  d["workspace_peak_bytes"] = stats.workspace_peak_bytes;
  const ThreadTimes& t = stats.thread_times;
  if (t.busy_seconds.empty()) {
    d["thread_times"] = py::none();
  } else {
    py::dict times;
    times["wall_seconds"] = t.wall_seconds;
    times["busy_seconds"] = t.busy_seconds;
    times["items"] = t.items;
    times["idle_fraction"] = t.IdleFraction();
    times["items_ratio"] = t.ItemsRatio();
    d["thread_times"] = times;
  }
  return d;
}

// ------------------------------------------------------------ entry points

const Variant& VariantOrRaise(const std::string& name) {
  const Variant* v = FindVariant(name);
  if (v == nullptr) Raise(NotFound("unknown variant '" + name + "'; known: " + VariantNames()));
  return *v;
}

py::dict Forward(const std::string& variant, const py::array& q, const py::array& k,
                 const py::array& v, py::array& o, const std::vector<std::string>& dtypes,
                 Options opt, std::optional<py::array> lse, std::optional<py::array> weights) {
  const Variant& var = VariantOrRaise(variant);
  Problem p = MakeProblem(q, k, v, o, dtypes, opt);
  const Shape& s = p.shape;
  p.lse = FloatSpan(lse, "lse", s.batch * s.heads * s.q_len);
  p.weights = FloatSpan(weights, "weights", s.batch * s.heads * s.q_len * s.kv_len);
  RunStats stats;
  ThrowIfError(WithoutGil([&] { return Run(var, p, opt.Run(), &stats); }));
  return StatsDict(stats);
}

py::dict Backward(const std::string& variant, const py::array& q, const py::array& k,
                  const py::array& v, py::array& o, const py::array& lse, const py::array& d_o,
                  py::array& dq, py::array& dk, py::array& dv, Options opt,
                  std::optional<py::array> d_sinks) {
  const Variant& var = VariantOrRaise(variant);
  const std::vector<std::string> f32(4, "f32");
  Problem forward = MakeProblem(q, k, v, o, f32, opt, /*o_is_input=*/true);
  const Shape& s = forward.shape;
  std::optional<py::array> lse_opt = lse;
  forward.lse = FloatSpan(lse_opt, "lse", s.batch * s.heads * s.q_len, /*read=*/true);
  // Each gradient has the shape of what it is the gradient of (dO: O's).
  const char* axes[4] = {"B", "heads", "L", "d"};
  for (int axis = 0; axis < 4; ++axis) {
    ExpectDim(d_o, axis, o.shape(axis), "d_o", axes[axis], "o");
    ExpectDim(dq, axis, q.shape(axis), "dq", axes[axis], "q");
    ExpectDim(dk, axis, k.shape(axis), "dk", axes[axis], "k");
    ExpectDim(dv, axis, v.shape(axis), "dv", axes[axis], "v");
  }
  GradProblem g;
  g.forward = forward;
  g.d_o = Input(d_o, "d_o", "f32");
  g.dq = Output(dq, "dq", "f32");
  g.dk = Output(dk, "dk", "f32");
  g.dv = Output(dv, "dv", "f32");
  // Its length is ValidateGrad's to check (it names H).
  g.d_sinks = FloatSpan(d_sinks, "d_sinks", d_sinks ? int64_t(d_sinks->size()) : 0);
  RunStats stats;
  ThrowIfError(WithoutGil([&] { return RunBackward(var, g, opt.Run(), &stats); }));
  return StatsDict(stats);
}

template <typename Vec>
py::array_t<double> ArrayOf(const Vec& data, std::vector<py::ssize_t> shape) {
  py::array_t<double> a(shape);
  std::copy(data.begin(), data.end(), a.mutable_data());
  return a;
}

// The fp64 reference: (o [B,H,Lq,dv], lse [B,H,Lq], weights [B,H,Lq,Lk] or
// None), contiguous float64.
py::tuple Reference(const py::array& q, const py::array& k, const py::array& v,
                    const std::vector<std::string>& dtypes, Options opt, bool with_weights) {
  // O is not written by the reference; a dummy f32 view gives MakeProblem its shape.
  py::array o = py::array_t<float>({q.shape(0), q.shape(1), q.shape(2), v.shape(3)});
  std::vector<std::string> types = dtypes;
  types[3] = "f32";
  const Problem p = MakeProblem(q, k, v, o, types, opt);
  const StatusOr<reference::Result> r =
      WithoutGil([&] { return reference::Attention(p, with_weights); });
  if (!r.ok()) Raise(r.status());
  const Shape& s = p.shape;
  py::object weights = py::none();
  if (with_weights) weights = ArrayOf(r->weights, {s.batch, s.heads, s.q_len, s.kv_len});
  return py::make_tuple(ArrayOf(r->o, {s.batch, s.heads, s.q_len, s.value_dim}),
                        ArrayOf(r->lse, {s.batch, s.heads, s.q_len}), weights);
}

// Every named variant against the reference (testing::CheckVariants): one
// dict per variant, in order.
py::dict Check(const std::vector<std::string>& names, const py::array& q, const py::array& k,
               const py::array& v, py::array& o, const std::vector<std::string>& dtypes,
               Options opt, py::array& lse) {
  std::vector<const Variant*> variants;
  for (const std::string& n : names) variants.push_back(&VariantOrRaise(n));
  Problem p = MakeProblem(q, k, v, o, dtypes, opt);
  const Shape& s = p.shape;
  std::optional<py::array> lse_opt = lse;
  p.lse = FloatSpan(lse_opt, "lse", s.batch * s.heads * s.q_len);
  const StatusOr<testing::CheckResult> result =
      WithoutGil([&] { return testing::CheckVariants(p, variants, opt.Run()); });
  if (!result.ok()) Raise(result.status());
  py::list rows;
  for (const testing::VariantCheck& r : result->variants) {
    py::dict row;
    row["variant"] = r.variant->name;
    row["ran"] = r.ran();
    row["refused"] = r.refused.message();
    row["over_budget"] = r.refused.code() == StatusCode::kResourceExhausted;
    row["ok"] = r.ran() && r.c.ok;
    row["max_abs_error"] = r.c.max_abs_error;
    row["max_rel_error"] = r.c.max_rel_error;
    row["bound"] = r.c.bound_at_worst;
    row["error_over_bound"] = r.c.worst_bound_ratio;
    row["first_failure"] = r.c.first_failure;
    row["ms"] = r.ms;
    row["path"] = r.path;
    rows.append(row);
  }
  py::dict out;
  out["problem"] = Describe(s, p.mask) + " " + Describe(DTypesOf(p));
  out["reference_ms"] = result->reference_ms;
  out["variants"] = rows;
  return out;
}

std::vector<std::string> DTypeNames(uint8_t set) {
  std::vector<std::string> names;
  for (int d = 0; d < kNumDTypes; ++d) {
    if (set & DTypeMask(DType(d))) names.push_back(DTypeName(DType(d)));
  }
  return names;
}

py::list Variants() {
  py::list list;
  for (const Variant* v : Registry()) {
    py::dict d;
    d["name"] = v->name;
    d["summary"] = v->summary;
    d["supports_weights"] = v->supports_weights;
    d["materializes_scores"] = v->materializes_scores;
    d["uses_highway"] = v->uses_highway;
    d["deterministic"] = v->deterministic;
    d["has_backward"] = v->has_backward();
    auto modifier_list = [](uint8_t set) {
      std::vector<std::string> names;
      for (uint8_t bit : {kSoftcap, kAlibi, kSinks}) {
        if (set & bit) names.push_back(ModifierNames(bit));
      }
      return names;
    };
    d["modifiers"] = modifier_list(v->modifiers);
    d["paged_kv"] = v->paged_kv;
    d["backward_modifiers"] = modifier_list(v->backward.modifiers);
    py::dict dtypes;
    dtypes["q"] = DTypeNames(v->dtypes.q);
    dtypes["kv"] = DTypeNames(v->dtypes.kv);
    dtypes["o"] = DTypeNames(v->dtypes.o);
    d["dtypes"] = dtypes;
    list.append(d);
  }
  return list;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  // At import, before this module calls BLAS (kernels/openblas_core.h): the
  // same OpenBLAS kernels as the attnlab CLI and attnlab_bench, so that blas
  // and chunked give the CLI's bits. Process-wide: numpy's BLAS, when it is
  // the same libopenblas, runs that core from here on too.
  UseOpenBlasCoreForThisCpu();
  m.doc() = "attnlab's compiled core: called by the attnlab package, not by users (see attnlab).";
  m.attr("__version__") = ATTNLAB_VERSION;
  py::class_<Options>(m, "Options")
      .def(py::init<>())
      .def_readwrite("mask", &Options::mask)
      .def_readwrite("window_left", &Options::window_left)
      .def_readwrite("window_right", &Options::window_right)
      .def_readwrite("additive", &Options::additive)
      .def_readwrite("key_lengths", &Options::key_lengths)
      .def_readwrite("cu_seqlens_q", &Options::cu_seqlens_q)
      .def_readwrite("cu_seqlens_k", &Options::cu_seqlens_k)
      .def_readwrite("block_table", &Options::block_table)
      .def_readwrite("scale", &Options::scale)
      .def_readwrite("k_scales", &Options::k_scales)
      .def_readwrite("v_scales", &Options::v_scales)
      .def_readwrite("top_left", &Options::top_left)
      .def_readwrite("at_key_lengths", &Options::at_key_lengths)
      .def_readwrite("softcap", &Options::softcap)
      .def_readwrite("alibi_slopes", &Options::alibi_slopes)
      .def_readwrite("sinks", &Options::sinks)
      .def_readwrite("threads", &Options::threads)
      .def_readwrite("memory_budget", &Options::memory_budget);
  m.def("forward", &Forward, py::arg("variant"), py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("o"), py::arg("dtypes"), py::arg("options"), py::arg("lse") = py::none(),
        py::arg("weights") = py::none());
  m.def("backward", &Backward, py::arg("variant"), py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("o"), py::arg("lse"), py::arg("d_o"), py::arg("dq"), py::arg("dk"), py::arg("dv"),
        py::arg("options"), py::arg("d_sinks") = py::none());
  m.def("reference", &Reference, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("dtypes"),
        py::arg("options"), py::arg("with_weights") = false);
  m.def("check", &Check, py::arg("variants"), py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("o"), py::arg("dtypes"), py::arg("options"), py::arg("lse"));
  m.def("variants", &Variants);
  m.def("dispatched_target", &DispatchedHighwayTarget);
  m.def("openblas_core", [] {
    const OpenBlasCore& core = UseOpenBlasCoreForThisCpu();
    return py::dict(py::arg("name") = core.name, py::arg("detected") = core.detected,
                    py::arg("chosen_by") = core.chosen_by);
  });
  m.def("default_memory_budget", &DefaultMemoryBudgetBytes);
  m.attr("max_threads") = kMaxThreads;
}

}  // namespace attn::python
