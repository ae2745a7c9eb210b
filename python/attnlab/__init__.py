"""attnlab: CPU attention kernels, measured and explained, from numpy.

    import attnlab, numpy as np
    q, k, v = (np.random.rand(8, 1024, 64).astype(np.float32) for _ in range(3))
    o = attnlab.attention(q, k, v, mask="causal")          # [H, L, d], flash, all cores

computes O = softmax(Q·Kᵀ·scale + mask)·V with one of attnlab's kernels (the registry:
attnlab.variants()). The semantics are kernels/problem.h's, the same as `attnlab run`:

Shapes. Q, K, V have the same rank: 4 [B, H, L, d] (layout="bhsd", PyTorch's) or [B, L, H, d]
  (layout="bshd"); 3 [H, L, d] ("bshd": [L, H, d]); 2 [L, d]. K and V may have fewer heads than
  Q (GQA/MQA: Hkv divides H); V's d (dv) may differ from Q's and K's (dk). O has Q's rank and
  layout with d = dv; lse is [B, H, Lq] (minus the leading dims a rank-3/2 input leaves out).
Element types. float32; float16 (IEEE half); uint16 arrays hold bfloat16 bits (numpy has no
  bfloat16; a torch.bfloat16 tensor is read as such); int8 for K and V with k_scales/v_scales
  (one float32 scale per row of d values: element = scale·int8). float64 arrays are rounded to
  float32 (a copy). Arithmetic is fp32 whatever the inputs; O is float32 unless `out` is a
  float16 or bfloat16-bits (uint16) array.
Masks. None; "causal" (query i sees key j <= i + Lk - Lq: the diagonal is aligned bottom-right,
  FlashAttention's convention, so decoding against a longer KV cache works); ("window", left,
  right) (i + off - left <= j <= i + off + right); an additive float array [Lq, Lk] or
  [B, H, Lq, Lk] (B and H may be 1: broadcast) added to the scaled scores (-inf masks); a bool
  array of the same shapes (True = may attend, PyTorch's attn_mask convention; becomes 0/-inf).
  key_lengths (B ints) hides keys j >= key_lengths[b] (padding) with any of the above.
Edges. A fully masked row gives O = 0 and lse = -inf, never NaN; NaN in Q row i makes row i NaN
  and nothing else.

No copies. Inputs are read in place through their strides when the innermost (d) axis is
contiguous and every stride is a non-negative whole number of elements: contiguous arrays,
transposed views (a [B, L, H, d] tensor .transpose(1, 2)), slices along B, H or L, PyTorch CPU
tensors (through the buffer protocol or DLPack). Anything else (a non-unit d stride, negative
strides, float64, non-native byte order) is copied once into a contiguous array. `out` is never
copied: it must be an array of O's shape with a contiguous d axis, else ValueError.

Errors. ValueError for bad arguments, with the library's message ("Hkv=3 does not divide H=8");
MemoryError when a variant's workspace exceeds the memory budget (ATTNLAB_MEMORY_BUDGET, or
memory_budget=); never a crash. The GIL is released while a kernel runs, so Python threads may
call attnlab at once (on distinct outputs).

Also: weights() (the attention matrix), reference() (fp64 oracle), check() (every variant
against it within the derived error bound), grad() (the backward pass), multi_head_attention()
(a projected layer), variants() (the registry) and attnlab.results (benchmark JSON as records
or a pandas DataFrame). Full documentation: docs/python.md.
"""
import dataclasses
import typing

import numpy as np

from attnlab import _core
from attnlab import results

__version__ = _core.__version__
__all__ = ["attention", "weights", "reference", "check", "grad", "multi_head_attention",
           "variants", "VariantInfo", "CheckReport", "CheckRow", "results", "isa_path",
           "last_run_stats", "openblas_core"]

LAYOUTS = ("bhsd", "bshd")
_FLOAT_DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16",
                 np.dtype(np.uint16): "bf16"}


# ----------------------------------------------------------------------------- inputs
def _as_array(x, name):
  """x as a numpy array without a copy where one is possible, and its attnlab dtype hint
  ('bf16' for a torch.bfloat16 tensor, else None)."""
  if isinstance(x, np.ndarray):
    return x, None
  if str(getattr(x, "dtype", "")) == "torch.bfloat16":
    # numpy has no bfloat16: reinterpret the tensor's bits (a view, no copy).
    import torch  # the caller has torch: x is its tensor
    return x.detach().view(torch.int16).numpy().view(np.uint16), "bf16"
  # numpy's own protocols first (a PyTorch CPU tensor's __array__ is a writable view of its
  # memory), DLPack (read-only in numpy) for objects that offer only that.
  try:
    return np.asarray(x), None
  except Exception as e:  # noqa: BLE001: re-raised with the argument's name
    if hasattr(x, "__dlpack__"):
      try:
        return np.from_dlpack(x), None
      except (TypeError, RuntimeError, BufferError):
        pass
    raise ValueError(f"{name}: cannot read {type(x).__name__} as an array: {e}") from None


def _dtype_of(a, name, allow_int8=False):
  """attnlab's dtype name of an array, converting float64 (copy) and refusing the rest."""
  if a.dtype.byteorder not in ("=", "|") and a.dtype.itemsize > 1:
    a = a.astype(a.dtype.newbyteorder("="))  # non-native byte order: a copy
  if a.dtype == np.float64:
    return a.astype(np.float32), "f32"  # rounded to float32, as the CLI reads '<f8'
  if a.dtype in _FLOAT_DTYPES:
    return a, _FLOAT_DTYPES[a.dtype]
  if allow_int8 and a.dtype == np.int8:
    return a, "i8"
  want = "float32, float16, bfloat16 bits (uint16)" + (", int8 with scales" if allow_int8 else "")
  raise ValueError(f"{name} has dtype {a.dtype}: want {want} (or float64, rounded to float32)")


def _rank_error(name, a, layout):
  forms = ("4 [B,H,L,d], 3 [H,L,d] or 2 [L,d]" if layout == "bhsd"
           else "4 [B,L,H,d], 3 [L,H,d] or 2 [L,d]")
  return ValueError(f"{name} has shape {a.shape} of rank {a.ndim}; want rank {forms} "
                    f"(layout={layout!r})")


def _to_bhld(a, layout):
  """The [B, H, L, d] view of a rank 2-4 array in `layout` (a view: transposes and new axes)."""
  if a.ndim == 4:
    return a if layout == "bhsd" else a.transpose(0, 2, 1, 3)
  if a.ndim == 3:
    return a[None] if layout == "bhsd" else a.transpose(1, 0, 2)[None]
  return a[None, None]


def _from_bhld_shape(shape4, rank, layout):
  """The user-facing shape (rank, layout) of a [B, H, L, d] shape."""
  b, h, n, d = shape4
  full = (b, h, n, d) if layout == "bhsd" else (b, n, h, d)
  if rank == 4:
    return full
  if rank == 3:
    return full[1:]
  return (n, d)


def _readable(view):
  """Whether the kernels can read a [B, H, L, d] view in place: whole-element, non-negative
  strides and a unit d stride (extent-1 axes are never stepped along)."""
  if view.size == 0:
    return True  # never read; numpy gives fresh empty arrays zero strides
  if not view.flags.aligned:
    return False  # e.g. np.frombuffer at an odd offset: copied to an aligned array
  item = view.dtype.itemsize
  for extent, stride in zip(view.shape, view.strides):
    if extent > 1 and (stride < 0 or stride % item):
      return False
  return view.shape[3] <= 1 or view.strides[3] == item


def _operand(x, name, layout, rank=None, allow_int8=False, dtype_hint=None):
  """(4-D [B, H, L, d] view, dtype name, rank) of one input; a copy only where needed."""
  a, hint = _as_array(x, name)
  if a.ndim not in (2, 3, 4):
    raise _rank_error(name, a, layout)
  if rank is not None and a.ndim != rank:
    raise ValueError(f"ranks disagree: q has rank {rank}, {name} has shape {a.shape}")
  a, dtype = _dtype_of(a, name, allow_int8)
  dtype = hint or dtype_hint or dtype
  view = _to_bhld(a, layout)
  if not _readable(view):
    view = np.array(view, order="C")  # a fresh, aligned, contiguous copy
  return view, dtype, a.ndim


def _scales(s, name, x4, layout):
  """The [B, Hkv, Lk] float32 row scales of an int8 K or V (4-D view x4), given shaped like
  the tensor without its last dimension."""
  a, _ = _as_array(s, name)
  rank = a.ndim + 1
  if rank not in (2, 3, 4):
    raise ValueError(f"{name} has shape {a.shape}: want the shape of its tensor without the "
                     "last dimension")
  a = np.require(a, np.float32, "A")  # float32, aligned (a copy only when needed)
  if not np.isfinite(a).all():
    raise ValueError(f"{name} holds a non-finite scale: an int8 row's scale must be finite")
  three = _to_bhld(a[..., None], layout)[..., 0]
  if three.shape != x4.shape[:3]:
    raise ValueError(f"{name} has shape {a.shape}; want one scale per row of d values, "
                     f"{_from_bhld_shape(x4.shape, rank, layout)[:-1]}")
  return three


def _mask_options(opt, mask, q4, k4):
  """Fills opt.mask / window / additive from `mask`."""
  if mask is None or (isinstance(mask, str) and mask == "none"):
    return
  if isinstance(mask, str):
    if mask != "causal":
      raise ValueError(f"mask={mask!r}: want None, 'causal', ('window', left, right) or an "
                       "additive float (or bool) array")
    opt.mask = "causal"
    return
  if isinstance(mask, tuple):
    if len(mask) != 3 or mask[0] != "window":
      raise ValueError(f"mask={mask!r}: a tuple mask is ('window', left, right)")
    left, right = (_index(x, f"window {side}") for x, side in zip(mask[1:], ("left", "right")))
    opt.mask, opt.window_left, opt.window_right = "window", left, right
    return
  m, _ = _as_array(mask, "mask")
  if m.dtype == np.bool_:
    m = np.where(m, np.float32(0), np.float32(-np.inf))  # True = may attend
  if m.dtype.kind != "f":
    raise ValueError(f"mask has dtype {m.dtype}: an additive mask is float (or bool)")
  lq, lk = q4.shape[2], k4.shape[2]
  if m.ndim == 2:
    m = m[None, None]
  if m.ndim != 4:
    raise ValueError(f"mask has shape {m.shape} of rank {m.ndim}; an additive mask is "
                     "[Lq,Lk] or [B,H,Lq,Lk] (B and H may be 1)")
  if m.shape[2:] != (lq, lk):
    raise ValueError(f"additive mask is [{m.shape[2]}, {m.shape[3]}], needs [Lq, Lk] = "
                     f"[{lq}, {lk}]")
  opt.mask = "additive"
  opt.additive = np.require(m, np.float32, ["C", "A"])  # the kernels read it row-major


def _per_head(values, name, heads):
  """A float32 vector of per-head values (ALiBi slopes, sinks), C-contiguous and aligned."""
  a, _ = _as_array(values, name)
  if a.ndim != 1:
    raise ValueError(f"{name} has shape {a.shape}: want one value per query head (H={heads})")
  return np.require(a, np.float32, ["C", "A"])


def _modifier_options(opt, heads, softcap, alibi_slopes, sinks, causal_top_left,
                      causal_at_key_lengths):
  """Fills the score modifiers (kernels/problem.h, "Score modifiers") and the diagonal."""
  if causal_top_left and causal_at_key_lengths:
    raise ValueError("causal_top_left and causal_at_key_lengths are two different diagonals: "
                     "pass one")
  opt.top_left = bool(causal_top_left)
  opt.at_key_lengths = bool(causal_at_key_lengths)
  if softcap is not None:
    opt.softcap = float(softcap)
  if isinstance(alibi_slopes, str):
    if alibi_slopes != "standard":
      raise ValueError(f"alibi_slopes={alibi_slopes!r}: want 'standard' or H slopes")
    # Press et al. (ALiBi): head h of H gets 2^(-8(h+1)/H).
    alibi_slopes = np.exp2(-8.0 * np.arange(1, heads + 1) / heads).astype(np.float32)
  if alibi_slopes is not None:
    opt.alibi_slopes = _per_head(alibi_slopes, "alibi_slopes", heads)
  if sinks is not None:
    opt.sinks = _per_head(sinks, "sinks", heads)


def _int32_vector(values, name, want):
  """A C-contiguous int32 vector of integers (key lengths, cu_seqlens)."""
  a, _ = _as_array(values, name)
  if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
    raise ValueError(f"{name} has shape {a.shape} and dtype {a.dtype}: want {want}")
  if a.size and (a.min() < np.iinfo(np.int32).min or a.max() > np.iinfo(np.int32).max):
    raise ValueError(f"{name}: a value is out of the int32 range")
  return np.require(a, np.int32, ["C", "A"])


def _index(x, what):
  if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
    raise ValueError(f"{what} {x!r}: want an integer")
  return int(x)


def _memory_budget(budget):
  b = _index(budget, "memory_budget")
  if not 0 <= b < 2**64:
    raise ValueError(f"memory_budget={b}: want a byte count from 0 to 2**64 - 1")
  return b


def _threads(threads):
  if threads is None:
    return 0
  t = _index(threads, "threads")
  if not 1 <= t <= _core.max_threads:
    raise ValueError(f"threads={t}: want 1 to {_core.max_threads} (or None: all cores)")
  return t


class _Call:
  """One call's inputs as the kernels take them: 4-D [B, H, L, d] views, dtypes and options."""

  def __init__(self, q, k, v, *, layout, mask, key_lengths, scale, threads, memory_budget,
               k_scales=None, v_scales=None, fp32_only=False, softcap=None, alibi_slopes=None,
               sinks=None, causal_top_left=False, causal_at_key_lengths=False, cu_seqlens_q=None,
               cu_seqlens_k=None,
               block_table=None):
    if layout not in LAYOUTS:
      raise ValueError(f"layout={layout!r}: want 'bhsd' ([B,H,L,d]) or 'bshd' ([B,L,H,d])")
    self.layout = layout
    self.q, self.q_dtype, self.rank = _operand(q, "q", layout)
    self.k, self.k_dtype, _ = _operand(k, "k", layout, self.rank, allow_int8=True)
    self.v, self.v_dtype, _ = _operand(v, "v", layout, self.rank, allow_int8=True)
    if fp32_only and {self.q_dtype, self.k_dtype, self.v_dtype} != {"f32"}:
      raise ValueError(f"the backward takes float32 tensors only; q={self.q_dtype} "
                       f"k={self.k_dtype} v={self.v_dtype}")
    opt = _core.Options()
    for name, dtype, x4, s in (("k", self.k_dtype, self.k, k_scales),
                               ("v", self.v_dtype, self.v, v_scales)):
      if (dtype == "i8") != (s is not None):
        raise ValueError(f"{name} is {dtype}: {name}_scales is required exactly with an int8 "
                         f"{name}")
      if s is not None:
        setattr(opt, f"{name}_scales", _scales(s, f"{name}_scales", x4, layout))
    _mask_options(opt, mask, self.q, self.k)
    if key_lengths is not None:
      opt.key_lengths = _int32_vector(key_lengths, "key_lengths", "one integer per batch")
    if (cu_seqlens_q is None) != (cu_seqlens_k is None):
      raise ValueError("packed sequences need both cu_seqlens_q and cu_seqlens_k")
    if cu_seqlens_q is not None:
      want = "S + 1 offsets (0 first, the packed length last)"
      opt.cu_seqlens_q = _int32_vector(cu_seqlens_q, "cu_seqlens_q", want)
      opt.cu_seqlens_k = _int32_vector(cu_seqlens_k, "cu_seqlens_k", want)
    self.kv_len = self.k.shape[2]
    if block_table is not None:
      if self.rank != 4:
        raise ValueError("block_table needs rank-4 q, k, v: k and v are then the pools "
                         "[num_blocks, Hkv, block_size, d] (bhsd) or [num_blocks, block_size, "
                         "Hkv, d] (bshd)")
      bt, _ = _as_array(block_table, "block_table")
      if bt.ndim != 2 or (bt.size and bt.dtype.kind not in "iu"):
        raise ValueError(f"block_table has shape {bt.shape} and dtype {bt.dtype}: want "
                         "[B, blocks per sequence] integers")
      if bt.size and (bt.min() < np.iinfo(np.int32).min or bt.max() > np.iinfo(np.int32).max):
        raise ValueError("block_table: a value is out of the int32 range")
      opt.block_table = np.require(bt, np.int32, ["C", "A"])
      self.kv_len = bt.shape[1] * self.k.shape[2]  # the table's capacity
    if scale is not None:
      opt.scale = float(scale)
    _modifier_options(opt, self.q.shape[1], softcap, alibi_slopes, sinks, causal_top_left,
                      causal_at_key_lengths)
    opt.threads = _threads(threads)
    if memory_budget is not None:
      opt.memory_budget = _memory_budget(memory_budget)
    self.options = opt

  @property
  def shape(self):
    """(B, H, Hkv, Lq, Lk, dk, dv)."""
    b, h, lq, dk = self.q.shape
    return b, h, self.k.shape[1], lq, self.kv_len, dk, self.v.shape[3]

  def user_shape(self, shape4):
    return _from_bhld_shape(shape4, self.rank, self.layout)

  def o_shape4(self):
    b, h, _, lq, _, _, dv = self.shape
    return (b, h, lq, dv)

  def new_output(self, shape4, dtype=np.float32):
    """A fresh array in the user's rank and layout and its [B, H, L, d] view."""
    a = np.empty(self.user_shape(shape4), dtype=dtype)
    return a, _to_bhld(a, self.layout)

  def adopt_output(self, out, name, shape4):
    """`out` (the user's array, never copied) and its [B, H, L, d] view and dtype name."""
    if not isinstance(out, np.ndarray):
      out, _ = _as_array(out, name)
    want = self.user_shape(shape4)
    if out.shape != tuple(want):
      raise ValueError(f"{name} has shape {out.shape}; want {tuple(want)}")
    if out.dtype not in _FLOAT_DTYPES:
      raise ValueError(f"{name} has dtype {out.dtype}: want float32, float16 or uint16 "
                       "(bfloat16 bits)")
    if not out.flags.writeable:
      raise ValueError(f"{name} is read-only")
    view = _to_bhld(out, self.layout)
    if not _readable(view):
      raise ValueError(f"{name} needs a contiguous d axis and non-negative strides (it is "
                       "written in place, never copied)")
    return out, view, _FLOAT_DTYPES[out.dtype]

  def rows(self, a4):
    """A [B, H, Lq(, ...)] array as the user's rank gives it (lse, weights)."""
    if self.rank == 4:
      return a4
    if self.rank == 3:
      return a4[0]
    return a4[0, 0]

  def dtypes(self, o_dtype):
    return [self.q_dtype, self.k_dtype, self.v_dtype, o_dtype]


def _forward(call, variant, out, return_lse, with_weights=False):
  """Runs `variant` on a _Call: (O, lse or None, weights or None, stats)."""
  if out is None:
    o, o4 = call.new_output(call.o_shape4())
    o_dtype = "f32"
  else:
    o, o4, o_dtype = call.adopt_output(out, "out", call.o_shape4())
  b, h, _, lq, lk, _, _ = call.shape
  lse = np.empty((b, h, lq), np.float32) if return_lse else None
  w = np.empty((b, h, lq, lk), np.float32) if with_weights else None
  stats = _core.forward(variant, call.q, call.k, call.v, o4, call.dtypes(o_dtype), call.options,
                        lse, w)
  return o, (call.rows(lse) if return_lse else None), (call.rows(w) if with_weights else None), stats


_LAST_RUN = {"stats": None}


def _remember(stats):
  _LAST_RUN["stats"] = stats


def isa_path():
  """The instruction-set path of the last kernel run in this process ("AVX3+AVX512_BF16",
  "AVX3", "portable C++", ...): what every performance figure should name."""
  stats = _LAST_RUN["stats"]
  return None if stats is None else stats["path"]


def last_run_stats():
  """What the last kernel run in this process (attention, weights, grad, multi_head_attention)
  reported, as a dict, or None before the first: "path" (as isa_path()), "threads" (the team it
  ran on), "workspace_declared_bytes" and "workspace_peak_bytes" (its workspace, declared and
  touched), and "thread_times": None on one thread, else where the team's time in its parallel
  loops went, {"wall_seconds", "busy_seconds" (per thread, inside work items), "items" (per
  thread), "idle_fraction" (1 - busy / (wall x team)), "items_ratio" (the busiest thread's items
  over the least busy's)}, as `attnlab run` prints it and the bench's thread_idle and
  thread_items_ratio counters report it."""
  stats = _LAST_RUN["stats"]
  return None if stats is None else dict(stats)


def openblas_core():
  """The OpenBLAS kernels ("core") that the blas and chunked variants run, as a dict: "name"
  (running now), "detected" (OpenBLAS's own choice from CPUID; "" when OPENBLAS_CORETYPE was
  set) and "chosen_by" ("OpenBLAS", "OPENBLAS_CORETYPE" or "attnlab": importing attnlab
  replaces OpenBLAS's Prescott fallback for a CPU it does not know, process-wide, as the CLI
  and the bench do; OPENBLAS_CORETYPE, set before the import, always wins)."""
  return dict(_core.openblas_core())


# ----------------------------------------------------------------------------- the API
def attention(q, k, v, *, variant="flash", mask=None, key_lengths=None, scale=None,
              layout="bhsd", return_lse=False, threads=None, out=None, k_scales=None,
              v_scales=None, memory_budget=None, softcap=None, alibi_slopes=None, sinks=None,
              causal_top_left=False, causal_at_key_lengths=False, cu_seqlens_q=None,
    cu_seqlens_k=None, block_table=None):
  """Attention O = softmax(Q·Kᵀ·scale + mask)·V with one of attnlab's kernels.

  Parameters
  ----------
  q, k, v : array_like
      Rank 4 [B, H, L, d] (layout "bhsd") or [B, L, H, d] ("bshd"), rank 3 [H, L, d] ([L, H, d])
      or rank 2 [L, d]; all three the same rank. K and V may have Hkv heads, a divisor of H
      (GQA/MQA); V's d (dv) may differ from dk. float32, float16, bfloat16 bits (uint16) or,
      for K and V, int8 with k_scales / v_scales. Read in place (see "No copies" in the module
      docstring).
  variant : str
      A registry variant (attnlab.variants()): "flash" (default), "naive", "blas", "simd",
      "chunked", ... Every variant computes the same thing within the derived error bound.
  mask : None, "causal", ("window", left, right), or array
      Bottom-right aligned causal or sliding window; or an additive float mask [Lq, Lk] or
      [B, H, Lq, Lk] (B, H may be 1), -inf to mask; or a bool mask of those shapes, True where
      a query may attend.
  key_lengths : sequence of int, optional
      B lengths in [0, Lk]: keys j >= key_lengths[b] are hidden (padding).
  scale : float, optional
      Multiplies Q·Kᵀ; default 1/sqrt(dk).
  layout : {"bhsd", "bshd"}
      Axis order of rank 3-4 inputs (and of O).
  return_lse : bool
      Also return lse [B, H, Lq], the natural log of each row's softmax denominator (-inf for
      a fully masked row).
  threads : int, optional
      OpenMP threads (default: all cores, OMP_NUM_THREADS).
  out : ndarray, optional
      Where to write O (float32, float16, or uint16 for bfloat16 bits), O's shape, a contiguous
      d axis; written in place and returned.
  k_scales, v_scales : array_like, optional
      Row scales of an int8 K / V: one float32 per row of d values (the tensor's shape without
      its last dimension).
  memory_budget : int, optional
      Bytes of workspace allowed (default ATTNLAB_MEMORY_BUDGET, else half of physical memory).
  softcap : float, optional
      Logit softcap (Gemma 2): each scaled logit s becomes softcap·tanh(s / softcap).
  alibi_slopes : array_like or "standard", optional
      H ALiBi slopes: query head h adds slope[h]·(j - i - off) to its logits (0 on the
      diagonal); "standard" is Press et al.'s 2^(-8(h+1)/H).
  sinks : array_like, optional
      H attention-sink logits (gpt-oss): each joins its head's softmax denominator without a
      value, so a row's weights sum to less than 1 (-inf: no sink for that head).
  causal_top_left : bool
      Align the diagonal of "causal" and window masks (and ALiBi) top-left, off = 0
      (PyTorch's is_causal), instead of bottom-right (off = Lk - Lq). Same when Lq = Lk.
  causal_at_key_lengths : bool
      Align each batch's diagonal at its own key length, off_b = key_lengths[b] - Lq: the Lq
      queries are the newest tokens of a KV cache holding key_lengths[b] keys (themselves
      included), as FlashAttention's flash_attn_with_kvcache(cache_seqlens=...) and vLLM's
      chunked prefill. Needs key_lengths. The default aligns at Lk, the cache's capacity, so
      chunked prefill into a paged cache filled to different lengths needs this.
  cu_seqlens_q, cu_seqlens_k : array_like of int, optional
      Packed variable-length sequences (FlashAttention's varlen): S + 1 offsets each, from 0
      to the packed length; sequence s is queries [cu_q[s], cu_q[s+1]) and keys
      [cu_k[s], cu_k[s+1]). B must be 1: pass [total, H, d] with layout="bshd" (or
      [H, total, d]). Each sequence attends only to its own keys, with its own diagonal
      (masks, ALiBi); lse is [H, total_q]. Not with key_lengths or an additive mask.
  block_table : array_like of int, optional
      A paged K/V cache (vLLM's layout): [B, blocks per sequence] indexes into k and v, which
      are then rank-4 pools [num_blocks, Hkv, block_size, d] ("bhsd"; [num_blocks, block_size,
      Hkv, d] for "bshd"). Key j of sequence b is row j % block_size of block
      block_table[b][j // block_size]; Lk is blocks·block_size and key_lengths gives each
      sequence's length (entries past a sequence's needed blocks are not read). naive, flash
      and auto read it (variants()[i].paged_kv); not with packed sequences or grad.

  Which variants apply softcap, ALiBi and sinks: attnlab.variants()[i].modifiers (naive and
  flash); the others raise ValueError naming the modifier.

  Returns
  -------
  o : ndarray
      [B, H, Lq, dv] (or [B, Lq, H, dv] for "bshd"; minus the dims a rank-3/2 input leaves out),
      float32 unless `out` says otherwise.
  lse : ndarray, float32
      Only with return_lse=True: ``(o, lse)``.

  Raises
  ------
  ValueError
      Bad arguments, with the library's message, e.g. "Hkv=3 does not divide H=8".
  MemoryError
      The variant's workspace exceeds the memory budget.

  Examples
  --------
  >>> q = np.random.rand(2, 8, 128, 64).astype(np.float32)
  >>> o = attnlab.attention(q, q, q, mask="causal")
  >>> o, lse = attnlab.attention(q, q, q, return_lse=True, variant="blas")
  """
  call = _Call(q, k, v, layout=layout, mask=mask, key_lengths=key_lengths, scale=scale,
               threads=threads, memory_budget=memory_budget, k_scales=k_scales,
               v_scales=v_scales, softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks,
               causal_top_left=causal_top_left,
               causal_at_key_lengths=causal_at_key_lengths,
               cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
               block_table=block_table)
  o, lse, _, stats = _forward(call, variant, out, return_lse)
  _remember(stats)
  return (o, lse) if return_lse else o


def _weights_variant(variant):
  if variant is not None:
    return variant
  for info in variants():
    if info.supports_weights:
      return info.name
  raise ValueError("no registered variant materializes the attention weights")


def weights(q, k, v, *, variant=None, mask=None, key_lengths=None, scale=None, layout="bhsd",
            threads=None, memory_budget=None, return_output=False, softcap=None,
            alibi_slopes=None, sinks=None, causal_top_left=False, causal_at_key_lengths=False,
            cu_seqlens_q=None,
    cu_seqlens_k=None, block_table=None):
  """The attention weights P = softmax(Q·Kᵀ·scale + mask), [B, H, Lq, Lk] float32.

  With sinks, P covers the keys only (rows sum to less than 1).

  Arguments as attention(). `variant`: one that materializes the weights (default: the first
  in the registry that does, "naive"; attnlab.variants() says which do). P is [B, H, Lq, Lk]
  whatever the layout, minus the leading dims a rank-3/2 input leaves out; a fully masked row
  is all 0. Rows sum to 1 within the fp32 rounding. The memory is Lq·Lk per head: the memory
  budget refuses (MemoryError) what does not fit.

  Returns P, or (P, O) with return_output=True.

  Examples
  --------
  >>> x = np.random.rand(6, 16).astype(np.float32)   # 6 tokens
  >>> p = attnlab.weights(x, x, x, mask="causal")    # [6, 6], lower triangular, rows sum to 1
  """
  call = _Call(q, k, v, layout=layout, mask=mask, key_lengths=key_lengths, scale=scale,
               threads=threads, memory_budget=memory_budget, softcap=softcap,
               alibi_slopes=alibi_slopes, sinks=sinks, causal_top_left=causal_top_left,
               causal_at_key_lengths=causal_at_key_lengths,
               cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
               block_table=block_table)
  # The weights are an output the package allocates: held to the budget like a workspace,
  # before anything is allocated.
  b, h, _, lq, lk, _, _ = call.shape
  need = 4 * b * h * lq * lk
  budget = _core.default_memory_budget() if memory_budget is None else call.options.memory_budget
  if need > budget:
    raise MemoryError(f"the weights [B,H,Lq,Lk] = [{b},{h},{lq},{lk}] need {need} bytes, "
                      f"memory budget {budget} bytes")
  o, _, p, stats = _forward(call, _weights_variant(variant), None, False, with_weights=True)
  _remember(stats)
  return (p, o) if return_output else p


def reference(q, k, v, *, mask=None, key_lengths=None, scale=None, layout="bhsd",
              return_lse=False, return_weights=False, k_scales=None, v_scales=None,
              softcap=None, alibi_slopes=None, sinks=None, causal_top_left=False,
              causal_at_key_lengths=False, cu_seqlens_q=None,
    cu_seqlens_k=None, block_table=None):
  """The fp64 reference: attention in double precision on the exact values the inputs hold.

  Plain, obviously correct and slow (O(Lq·Lk·d) in one thread): the oracle every kernel is
  tested against. Arguments as attention(); returns float64 O in the inputs' rank and layout,
  then lse [B, H, Lq] with return_lse=True, then the weights [B, H, Lq, Lk] with
  return_weights=True (a tuple when either is asked for).
  """
  call = _Call(q, k, v, layout=layout, mask=mask, key_lengths=key_lengths, scale=scale,
               threads=None, memory_budget=None, k_scales=k_scales, v_scales=v_scales,
               softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks,
               causal_top_left=causal_top_left,
               causal_at_key_lengths=causal_at_key_lengths,
               cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
               block_table=block_table)
  o4, lse4, w4 = _core.reference(call.q, call.k, call.v, call.dtypes("f32"), call.options,
                                 return_weights)
  o = _from_bhld(o4, call)
  extra = ([call.rows(lse4)] if return_lse else []) + ([call.rows(w4)] if return_weights else [])
  return tuple([o] + extra) if extra else o


def _from_bhld(a4, call):
  """A contiguous [B, H, L, d] result in the user's rank and layout (bshd: a transposed copy,
  so that the result is contiguous as the user would expect)."""
  if call.layout == "bshd":
    a4 = np.ascontiguousarray(a4.transpose(0, 2, 1, 3))
  if call.rank == 4:
    return a4
  if call.rank == 3:
    return a4[0]
  return a4[0, 0, :, :] if call.layout == "bhsd" else a4[0, :, 0, :]


@dataclasses.dataclass
class CheckRow:
  """One variant's result in check(): ran (or was refused, and why), and how close it came."""
  variant: str
  ran: bool
  ok: bool
  refused: str
  over_budget: bool
  max_abs_error: float
  max_rel_error: float
  bound: float
  error_over_bound: float
  first_failure: str
  ms: float
  path: str


class CheckReport(list):
  """check()'s result: a list of CheckRow, one per variant, printed as `attnlab check` prints.

  `ok` is True when at least one variant ran and every one that ran is within the bound."""

  def __init__(self, rows, problem, reference_ms):
    super().__init__(rows)
    self.problem = problem
    self.reference_ms = reference_ms

  @property
  def ok(self):
    return any(r.ran for r in self) and all(r.ok for r in self if r.ran)

  def __str__(self):
    lines = [f"{self.problem}", f"reference (fp64): {self.reference_ms:.3f} ms", "",
             f"{'variant':<16} {'max_abs_err':>12} {'max_rel_err':>12} {'bound':>12} "
             f"{'err/bound':>10} {'time_ms':>10}  result"]
    for r in self:
      if not r.ran:
        why = ("over budget: " if r.over_budget else "") + r.refused
        lines.append(f"{r.variant:<16} {'-':>12} {'-':>12} {'-':>12} {'-':>10} {'-':>10}  "
                     f"skipped: {why}")
        continue
      lines.append(f"{r.variant:<16} {r.max_abs_error:>12.3e} {r.max_rel_error:>12.3e} "
                   f"{r.bound:>12.3e} {r.error_over_bound:>10.4f} {r.ms:>10.3f}  "
                   f"{'ok' if r.ok else 'FAIL'}")
      if not r.ok:
        lines.append(f"  first failure: {r.first_failure}")
    return "\n".join(lines)

  def __repr__(self):
    return f"CheckReport(ok={self.ok}, {len(self)} variants)"


def check(q, k, v, *, variants=None, mask=None, key_lengths=None, scale=None, layout="bhsd",
          threads=None, memory_budget=None, k_scales=None, v_scales=None, softcap=None,
          alibi_slopes=None, sinks=None, causal_top_left=False, causal_at_key_lengths=False,
          cu_seqlens_q=None,
    cu_seqlens_k=None, block_table=None):
  """Every variant (or those named) against the fp64 reference, as `attnlab check` does.

  Each variant's O and lse are compared element by element with the reference within the
  per-row error bound derived in reference/error_bound.h (err/bound <= 1 passes). A variant
  that does not take the problem (a dtype it lacks, over the memory budget) is listed as
  skipped. Returns a CheckReport: print() it for the table; `.ok` says whether all passed.
  """
  call = _Call(q, k, v, layout=layout, mask=mask, key_lengths=key_lengths, scale=scale,
               threads=threads, memory_budget=memory_budget, k_scales=k_scales,
               v_scales=v_scales, softcap=softcap, alibi_slopes=alibi_slopes, sinks=sinks,
               causal_top_left=causal_top_left,
               causal_at_key_lengths=causal_at_key_lengths,
               cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
               block_table=block_table)
  names = [info.name for info in _variants_list()] if variants is None else list(variants)
  _, o4 = call.new_output(call.o_shape4())
  b, h, _, lq, _, _, _ = call.shape
  lse = np.empty((b, h, lq), np.float32)
  r = _core.check(names, call.q, call.k, call.v, o4, call.dtypes("f32"), call.options, lse)
  return CheckReport([CheckRow(**row) for row in r["variants"]], r["problem"],
                     r["reference_ms"])


def _forward_for_grad(variant):
  """The forward that gives a backward its O and lse when they are not given: naive and blas
  their own (the same algorithm end to end), every other variant flash's (`attnlab grad`)."""
  return variant if variant in ("naive", "blas") else "flash"


def grad(q, k, v, d_o, *, variant="flash", o=None, lse=None, mask=None, key_lengths=None,
         scale=None, layout="bhsd", threads=None, memory_budget=None, cu_seqlens_q=None,
         cu_seqlens_k=None, softcap=None, alibi_slopes=None, sinks=None, causal_top_left=False,
         causal_at_key_lengths=False):
  """The backward pass: (dQ, dK, dV), the gradients of a loss whose gradient in O is d_o.

  With P the forward's weights: dV = Pᵀ·dO, dS = P∘(dO·Vᵀ - D) with D_i = Σ_d dO_id·O_id,
  dQ = scale·dS·K, dK = scale·dSᵀ·Q (GQA: dK, dV sum over each kv head's query heads). A fully
  masked row has dQ = 0 and adds nothing to dK, dV. No gradient flows into the mask or scale.
  Score modifiers as in attention(): with a softcap dS takes the tanh's slope 1 - t²; ALiBi
  slopes are constants; with sinks the sinks' gradient dσ_h = -Σ_(b,i) e^(σ_h - lse)·D is
  returned too (attnlab.variants()[i].backward_modifiers says which variants apply which).

  Arguments as attention(), float32 tensors only. `d_o` has O's shape. `o`, `lse`: the
  forward's outputs for the same problem (both or neither); when neither is given the forward
  runs first (naive and blas run their own, other variants flash's). `variant`: one with a
  backward (attnlab.variants(): has_backward). Returns dq, dk, dv shaped like q, k, v, and
  with `sinks` a fourth, d_sinks (float32 [H]).
  """
  call = _Call(q, k, v, layout=layout, mask=mask, key_lengths=key_lengths, scale=scale,
               threads=threads, memory_budget=memory_budget, fp32_only=True,
               cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, softcap=softcap,
               alibi_slopes=alibi_slopes, sinks=sinks, causal_top_left=causal_top_left,
               causal_at_key_lengths=causal_at_key_lengths)
  if (o is None) != (lse is None):
    raise ValueError("give both o and lse (the forward's outputs) or neither")
  b, h, _, lq, _, _, _ = call.shape
  if o is None:
    o_arr, o4 = call.new_output(call.o_shape4())
    lse4 = np.empty((b, h, lq), np.float32)
    _core.forward(_forward_for_grad(variant), call.q, call.k, call.v, o4,
                  call.dtypes("f32"), call.options, lse4, None)
  else:
    o4 = _operand_like(o, "o", call, call.o_shape4())
    lse_arr, _ = _as_array(lse, "lse")
    if lse_arr.size != b * h * lq or lse_arr.shape != call.rows(np.empty((b, h, lq))).shape:
      raise ValueError(f"lse has shape {lse_arr.shape}; want "
                       f"{call.rows(np.empty((b, h, lq))).shape}")
    lse4 = np.ascontiguousarray(lse_arr, dtype=np.float32)
  d_o4 = _operand_like(d_o, "d_o", call, call.o_shape4())
  dq, dq4 = call.new_output(call.q.shape)
  dk, dk4 = call.new_output(call.k.shape)
  dv, dv4 = call.new_output(call.v.shape)
  d_sinks = None if sinks is None else np.empty(h, np.float32)
  stats = _core.backward(variant, call.q, call.k, call.v, o4, lse4, d_o4, dq4, dk4, dv4,
                         call.options, d_sinks)
  _remember(stats)
  return (dq, dk, dv) if d_sinks is None else (dq, dk, dv, d_sinks)


def _operand_like(x, name, call, shape4):
  """A float32 input of O's shape (O, dO) as a [B, H, L, d] view."""
  view, dtype, rank = _operand(x, name, call.layout, call.rank)
  if dtype != "f32":
    raise ValueError(f"{name} has dtype {dtype}: the backward takes float32 tensors only")
  if view.shape != tuple(shape4):
    raise ValueError(f"{name} has shape {np.shape(x)}; want {call.user_shape(shape4)}")
  return view


def multi_head_attention(x, wq, wk, wv, wo, heads, *, variant="flash", mask=None,
                         key_lengths=None, scale=None, threads=None, memory_budget=None,
                         context=None):
  """A multi-head attention layer with projections (no biases), as the bench's layer suite:

      Q = x·Wq, K = c·Wk, V = c·Wv   (c = context, default x: self-attention)
      A = attention(Q, K, V) per head, y = A·Wo

  x: [L, d_model] or [B, L, d_model]; wq: [d_model, H·dk]; wk: [d_model, Hkv·dk];
  wv: [d_model, Hkv·dv]; wo: [H·dv, d_out]; `heads` = H. Hkv = wk's columns / dk (GQA when
  fewer than H). The projections are numpy matmuls in float32; [L, H·d] is [L, H, d], the
  "bshd" layout the kernels read without a transpose. Returns y [.., L, d_out] float32.
  """
  x = np.asarray(x, dtype=np.float32)
  c = x if context is None else np.asarray(context, dtype=np.float32)
  if x.ndim not in (2, 3) or c.ndim != x.ndim:
    raise ValueError(f"x has shape {x.shape}: want [L, d_model] or [B, L, d_model] "
                     "(context the same rank)")
  heads = _index(heads, "heads")
  wq, wk, wv, wo = (np.asarray(w, dtype=np.float32) for w in (wq, wk, wv, wo))
  for name, w in (("wq", wq), ("wk", wk), ("wv", wv), ("wo", wo)):
    if w.ndim != 2:
      raise ValueError(f"{name} has shape {w.shape}: want a matrix")
  if heads < 1 or wq.shape[1] % heads:
    raise ValueError(f"wq has {wq.shape[1]} columns: want heads·dk (heads={heads})")
  dk = wq.shape[1] // heads
  if wk.shape[1] % dk or wk.shape[1] == 0:
    raise ValueError(f"wk has {wk.shape[1]} columns: want Hkv·dk (dk={dk})")
  kv_heads = wk.shape[1] // dk
  if wv.shape[1] % kv_heads:
    raise ValueError(f"wv has {wv.shape[1]} columns: want Hkv·dv (Hkv={kv_heads})")
  dv = wv.shape[1] // kv_heads
  if wo.shape[0] != heads * dv:
    raise ValueError(f"wo has {wo.shape[0]} rows: want H·dv = {heads * dv}")
  batched = x.ndim == 3
  xb, cb = (x, c) if batched else (x[None], c[None])
  if cb.shape[0] != xb.shape[0] or cb.shape[-1] != xb.shape[-1]:
    raise ValueError(f"context has shape {c.shape}; want the batch and d_model of x {x.shape}")
  if wq.shape[0] != x.shape[-1] or wk.shape[0] != x.shape[-1] or wv.shape[0] != x.shape[-1]:
    raise ValueError(f"wq, wk, wv have {wq.shape[0]}, {wk.shape[0]}, {wv.shape[0]} rows: want "
                     f"d_model = {x.shape[-1]}")
  b, lq = xb.shape[:2]
  lk = cb.shape[1]
  q = (xb @ wq).reshape(b, lq, heads, dk)
  k = (cb @ wk).reshape(b, lk, kv_heads, dk)
  v = (cb @ wv).reshape(b, lk, kv_heads, dv)
  a = attention(q, k, v, variant=variant, mask=mask, key_lengths=key_lengths, scale=scale,
                layout="bshd", threads=threads, memory_budget=memory_budget)
  y = a.reshape(b, lq, heads * dv) @ wo
  return y if batched else y[0]


@dataclasses.dataclass(frozen=True)
class VariantInfo:
  """A registry entry: what `attnlab list` shows."""
  name: str
  summary: str
  supports_weights: bool
  materializes_scores: bool
  uses_highway: bool
  deterministic: bool
  has_backward: bool
  dtypes: typing.Dict[str, typing.List[str]]  # {"q": [...], "kv": [...], "o": [...]}
  modifiers: typing.List[str]  # the score modifiers it applies: "softcap", "alibi", "sinks"
  paged_kv: bool  # reads a paged K/V cache (block_table=)
  backward_modifiers: typing.List[str]  # those its backward applies (grad())


def _variants_list():
  return [VariantInfo(**d) for d in _core.variants()]


def variants():
  """The registry: one VariantInfo per attention variant, in registry order.

  >>> [v.name for v in attnlab.variants()]
  ['naive', 'blas', 'simd', 'chunked', 'flash', ...]
  """
  return _variants_list()

