"""Shared helpers of the attnlab Python tests: seeded data, an independent fp64 oracle, and the
error bound every fp32 result is held to.

The oracle is written here from the semantics in kernels/problem.h (and the module docstring of
attnlab), in plain numpy float64, without calling into attnlab: it is what the package is checked
against. test_attention.py::test_oracle_agrees_with_attnlab_reference cross-checks it with
attnlab.reference(), so a mistake in either one shows.

The tolerance (expected().bound_o etc.) is the worst-case rounding error of an fp32 attention,
derived row by row (the same analysis as reference/error_bound.h, re-derived here):
  u = 2^-24, the fp32 unit roundoff. For query row i:
  A   = max over the row's visible keys j of scale*sum_d |q_d k_jd| + |mask_ij|: the magnitude
        the logit is computed from. A length-dk dot product, the scale and the mask addition
        give |d logit| <= delta = (dk + 2) u A (plus 2 u_qk A where Q.K^T operands may be
        rounded to a narrower type).
  Softmax turns an absolute logit error delta into a relative weight error <= 2 delta + 8u
        (8u: a few ulp for a vectorized exp); the denominator and each element of P.V are sums
        over the n visible keys, relative error <= S u with S = min(n, 1024 + 2 ceil(n/1024))
        (sums are blocked by 1024 keys: kernels/problem.h, "Accumulation").
  O   = sum_j p_j v_j / sum_j p_j:  |dO| <= Vmax (2 delta + (8 + 2S + 4) u + u_p + u_v + u_o),
        Vmax = max |v| over the visible keys; u_p, u_v, u_o the roundings problem.h allows for a
        reduced V, an int8 V and a reduced O.
  lse = max + log sum p:  |dlse| <= delta + (8 + S + 2) u + u |lse|.
  weights: |dP| <= 2 delta + (8 + 2S + 4) u (they are at most 1).
Each is multiplied by SAFETY = 4. A correct kernel lands far below the bound (rounding errors
add up like sqrt(n), not n); a dropped key, a wrong mask or a missed rescale is off by O(Vmax),
far above it. A row with no visible key has bound 0: its O must be exactly 0 and its lse -inf.
"""
import collections
import math
import os
import zlib

import numpy as np
import pytest

import attnlab

U32 = 2.0 ** -24  # fp32 unit roundoff
SAFETY = 4.0
EXP_ULPS = 8.0
KEY_SUM_BLOCK = 1024  # kernels/problem.h kKeySumBlock

# Unit roundoff of the type a kernel may round an operand of this type to (problem.h, "Element
# types"; int8 is computed as bf16). f32 adds nothing beyond the fp32 terms.
TYPE_ROUNDOFF = {"f32": 0.0, "bf16": 2.0 ** -8, "f16": 2.0 ** -11, "i8": 2.0 ** -8}

BASE_SEED = int(os.environ.get("ATTNLAB_TEST_SEED", "20261201"))

# The registry, read once: tests iterate over it instead of naming variants.
VARIANTS = attnlab.variants()
VARIANT_NAMES = [v.name for v in VARIANTS]
VARIANT_INFO = {v.name: v for v in VARIANTS}


def variant_params(predicate=lambda info: True):
  """pytest params of the registry variants that satisfy predicate, id = the variant name."""
  return [pytest.param(v.name, id=v.name) for v in VARIANTS if predicate(v)]


@pytest.fixture
def rng(request):
  """A numpy Generator seeded from ATTNLAB_TEST_SEED and the test's name (so each parametrized
  case gets its own data, reproducibly); the seed is printed, and pytest shows it on failure."""
  seed = (BASE_SEED + zlib.crc32(request.node.name.encode())) % 2 ** 32
  print(f"seed: np.random.default_rng({seed})  (ATTNLAB_TEST_SEED={BASE_SEED}, "
        f"test {request.node.name})")
  return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- shapes
def user_shape(b, h, n, d, rank, layout):
  """The array shape of a [B, H, L, d] tensor in a rank and layout (rank 3 drops B = 1, rank 2
  drops B = H = 1)."""
  full = (b, h, n, d) if layout == "bhsd" else (b, n, h, d)
  if rank == 4:
    return full
  assert b == 1, "rank 3 and 2 have B = 1"
  if rank == 3:
    return full[1:]
  assert h == 1, "rank 2 has H = 1"
  return (n, d)


def to_bhld(x, layout):
  """A float64 [B, H, L, d] copy of a rank 2-4 array in `layout`."""
  x = np.array(x, dtype=np.float64)
  if x.ndim == 2:
    return x[None, None]
  if x.ndim == 3:
    return x[None] if layout == "bhsd" else x.transpose(1, 0, 2)[None]
  assert x.ndim == 4
  return x if layout == "bhsd" else x.transpose(0, 2, 1, 3)


def from_bhld(a, rank, layout):
  """The inverse of to_bhld for a [B, H, L, x] array (O, bounds)."""
  if layout == "bshd":
    a = a.transpose(0, 2, 1, 3)
  if rank == 4:
    return a
  if rank == 3:
    return a[0]
  return a[0, :, 0, :] if layout == "bshd" else a[0, 0]


def rows_of(a, rank):
  """A [B, H, Lq(, Lk)] array (lse, weights) as a rank-`rank` input gives it."""
  if rank == 4:
    return a
  if rank == 3:
    return a[0]
  return a[0, 0]


def random_qkv(rng, b, h, hkv, lq, lk, dk, dv, rank=4, layout="bhsd", dtype=np.float32):
  """Standard-normal Q, K, V (float32 by default) in the given rank and layout."""
  def one(heads, n, d):
    return rng.standard_normal(user_shape(b, heads, n, d, rank, layout)).astype(dtype)
  return one(h, lq, dk), one(hkv, lk, dk), one(hkv, lk, dv)


# ----------------------------------------------------------------------------- masks
def mask_arrays(mask, key_lengths, b, h, lq, lk, top_left=False):
  """(visible [B, H, Lq, Lk] bool, additive [B, H, Lq, Lk] float64) of a mask argument, from the
  definitions in kernels/problem.h: off = Lk - Lq; causal: j <= i + off; window (l, r):
  i + off - l <= j <= i + off + r; an additive array is added (-inf hides the key); a bool array
  is True where a query may attend; key_lengths[b] hides j >= key_lengths[b]."""
  i = np.arange(lq)[:, None]
  j = np.arange(lk)[None, :]
  off = 0 if top_left else lk - lq  # top_left: PyTorch's is_causal diagonal
  visible = np.ones((b, h, lq, lk), bool)
  additive = np.zeros((b, h, lq, lk))
  if mask is None:
    pass
  elif isinstance(mask, str):
    assert mask == "causal"
    visible &= j <= i + off
  elif isinstance(mask, tuple):
    _, left, right = mask
    visible &= (j >= i + off - left) & (j <= i + off + right)
  else:
    m = np.asarray(mask)
    if m.dtype == np.bool_:
      m = np.where(m, 0.0, -np.inf)
    m = m.astype(np.float64)
    if m.ndim == 2:
      m = m[None, None]
    additive = np.broadcast_to(m, (b, h, lq, lk)).copy()
    visible &= ~np.isneginf(additive)
  if key_lengths is not None:
    kl = np.asarray(key_lengths).reshape(b, 1, 1, 1)
    visible &= j[None, None] < kl
  return visible, np.where(visible, additive, 0.0)


# ----------------------------------------------------------------------------- the oracle
Expected = collections.namedtuple(
    "Expected", "o lse weights bound_o bound_lse bound_weights visible rank layout")


def summation_length(n):
  """S: the effective length of a sum over n keys blocked by KEY_SUM_BLOCK."""
  blocks = np.ceil(n / KEY_SUM_BLOCK)
  return np.minimum(n, KEY_SUM_BLOCK + 2 * blocks)


def expected(q, k, v, *, mask=None, key_lengths=None, scale=None, layout="bhsd",
             dtypes=("f32", "f32", "f32", "f32"), softcap=None, alibi_slopes=None, sinks=None,
             causal_top_left=False):
  """The exact (fp64) attention of the values q, k, v hold, and the error bound of an fp32
  kernel with element types `dtypes` (Q, K, V, O names), in the inputs' rank and layout.

  q, k, v are the values (any float array; for int8 K/V pass the dequantized values scale*q).
  o and bound_o have O's shape; lse, bound_lse [B, H, Lq] and weights, bound_weights
  [B, H, Lq, Lk] as the rank leaves them."""
  rank = np.ndim(q)
  q4, k4, v4 = (to_bhld(x, layout) for x in (q, k, v))
  b, h, lq, dk = q4.shape
  hkv, lk = k4.shape[1], k4.shape[2]
  assert h % hkv == 0
  group = h // hkv
  k4 = np.repeat(k4, group, axis=1)  # query head h reads kv head h // group
  v4 = np.repeat(v4, group, axis=1)
  scale = 1.0 / math.sqrt(dk) if scale is None else float(np.float32(scale))
  visible, additive = mask_arrays(mask, key_lengths, b, h, lq, lk, causal_top_left)
  # Score modifiers (kernels/problem.h): s <- cap·tanh(s / cap), + slope_h·(j - i - off), then
  # the mask; a sink joins each row's denominator of head h without a value.
  off = 0 if causal_top_left else lk - lq
  distance = np.arange(lk)[None, :] - np.arange(lq)[:, None] - off
  bias = (np.zeros((1, h, lq, lk)) if alibi_slopes is None else
          np.asarray(alibi_slopes, np.float64).reshape(1, h, 1, 1) * distance)
  sink = (np.full((1, h, 1), -np.inf) if sinks is None else
          np.asarray(sinks, np.float64).reshape(1, h, 1))
  with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
    s = scale * (q4 @ k4.swapaxes(-1, -2))
    if softcap is not None:
      s = softcap * np.tanh(s / softcap)
    s = s + bias + additive
    s = np.where(visible, s, -np.inf)
    row_max = np.maximum(s.max(-1, initial=-np.inf), sink)
    empty = ~visible.any(-1) & np.isneginf(sink)
    shift = np.where(np.isneginf(row_max), 0.0, row_max)
    p = np.where(visible, np.exp(s - shift[..., None]), 0.0)
    denom = p.sum(-1) + np.exp(sink - shift)
    p = p / np.where(empty, 1.0, denom)[..., None]
    o = p @ v4
    lse = np.where(empty, -np.inf, row_max + np.log(np.where(empty, 1.0, denom)))

    # The bound (module docstring).
    q_t, k_t, v_t, o_t = dtypes
    u_qk = (max(TYPE_ROUNDOFF[q_t], TYPE_ROUNDOFF[k_t])
            if (q_t != k_t or k_t == "i8") else 0.0)
    u_p = TYPE_ROUNDOFF[v_t]
    u_v = TYPE_ROUNDOFF[v_t] if v_t == "i8" else 0.0
    u_o = TYPE_ROUNDOFF[o_t]
    magnitude = (scale * (np.abs(q4) @ np.abs(k4).swapaxes(-1, -2)) + np.abs(additive) +
                 np.abs(bias))
    a = np.where(visible, magnitude, 0.0).max(-1, initial=0.0)
    v_abs = np.abs(v4).max(-1, initial=0.0)[:, :, None, :]  # [B, H, 1, Lk]
    v_max = np.where(visible, v_abs, 0.0).max(-1, initial=0.0)
    n = visible.sum(-1) + (0 if sinks is None else 1)  # a sink is one more term
    big_s = summation_length(n)
    # A softcap passes the logit error on (slope <= 1) and adds its tanh's (8 ulp + 2) of cap.
    delta = (dk + 2) * U32 * a + 2 * u_qk * a + (0.0 if softcap is None else 10 * U32 * softcap)
    bound_o = SAFETY * v_max * (2 * delta + (EXP_ULPS + 2 * big_s + 4) * U32 + u_p + u_v + u_o)
    bound_lse = SAFETY * (delta + (EXP_ULPS + big_s + 2) * U32 +
                          U32 * np.where(empty, 0.0, np.abs(lse)))
    bound_w = SAFETY * (2 * delta + (EXP_ULPS + 2 * big_s + 4) * U32)
  bound_o = np.where(empty, 0.0, bound_o)
  bound_w = np.where(visible, bound_w[..., None], 0.0)
  dv = v4.shape[3]
  return Expected(
      o=from_bhld(o, rank, layout),
      lse=rows_of(lse, rank),
      weights=rows_of(p, rank),
      bound_o=from_bhld(np.broadcast_to(bound_o[..., None], (b, h, lq, dv)), rank, layout),
      bound_lse=rows_of(bound_lse, rank),
      bound_weights=rows_of(bound_w, rank),
      visible=visible, rank=rank, layout=layout)


# ----------------------------------------------------------------------------- the layer
def layer_expected(x, c, wq, wk, wv, wo, heads, mask=None):
  """A multi-head attention layer the textbook way in fp64: head h uses columns
  [h*dk, (h+1)*dk) of Wq and kv head h // (H/Hkv) of Wk, Wv; the heads' outputs are
  concatenated and projected by Wo. Returns y and its bound for an fp32 layer.

  Bound: fp32 projections of length d_model are within d_model*u*(|x| @ |W|); a logit moves by
  at most scale*(|dq|.|k| + |q|.|dk| + |dq|.|dk|) = ds, which moves each attention weight by
  a relative 2*ds, so a head's output by 2*ds*Vmax + max|dv|; plus the attention's own bound
  (expected()); the output projection adds (H*dv)*u*(|A| @ |Wo|). Times SAFETY."""
  x64, c64, wq, wk, wv, wo = (np.asarray(a, np.float64) for a in (x, c, wq, wk, wv, wo))
  batched = x64.ndim == 3
  xb, cb = (x64, c64) if batched else (x64[None], c64[None])
  dm = xb.shape[-1]
  dk = wq.shape[1] // heads
  hkv = wk.shape[1] // dk
  dv = wv.shape[1] // hkv
  b, lq = xb.shape[0], xb.shape[1]
  q = np.stack([xb @ wq[:, i * dk:(i + 1) * dk] for i in range(heads)], 1)
  k = np.stack([cb @ wk[:, i * dk:(i + 1) * dk] for i in range(hkv)], 1)
  v = np.stack([cb @ wv[:, i * dv:(i + 1) * dv] for i in range(hkv)], 1)
  eq = np.stack([dm * U32 * (np.abs(xb) @ np.abs(wq[:, i * dk:(i + 1) * dk]))
                 for i in range(heads)], 1)
  ek = np.stack([dm * U32 * (np.abs(cb) @ np.abs(wk[:, i * dk:(i + 1) * dk]))
                 for i in range(hkv)], 1)
  ev = np.stack([dm * U32 * (np.abs(cb) @ np.abs(wv[:, i * dv:(i + 1) * dv]))
                 for i in range(hkv)], 1)
  exp = expected(q, k, v, mask=mask)
  g = heads // hkv
  kr, ekr, evr, vr = (np.repeat(a, g, 1) for a in (k, ek, ev, v))
  scale = 1 / math.sqrt(dk)
  ds = scale * (eq @ np.abs(kr).swapaxes(-1, -2) + np.abs(q) @ ekr.swapaxes(-1, -2)
                + eq @ ekr.swapaxes(-1, -2))
  ds = np.where(exp.visible, ds, 0).max(-1, keepdims=True)
  vmax = np.abs(vr).max((-1, -2))[..., None, None]
  bound_a = exp.bound_o + SAFETY * (2 * ds * vmax + evr.max(-2, keepdims=True))
  a = exp.o.transpose(0, 2, 1, 3).reshape(b, lq, heads * dv)
  bound_a = bound_a.transpose(0, 2, 1, 3).reshape(b, lq, heads * dv)
  y = a @ wo
  bound_y = bound_a @ np.abs(wo) + SAFETY * heads * dv * U32 * (np.abs(a) @ np.abs(wo))
  return (y, bound_y) if batched else (y[0], bound_y[0])


def fp64_tolerance(magnitude):
  """How far two fp64 computations of the same attention (different summation orders) may
  differ: a few hundred roundings of 2^-53 of the magnitudes involved (|logits|, |v| < 10 in
  these tests), 1000 * 2^-53 * magnitude."""
  return 1e3 * 2.0 ** -53 * magnitude


# ----------------------------------------------------------------------------- comparing
def assert_within(got, want, bound, what="O"):
  """Every element of got within bound of want. Infinite or NaN wants must match exactly (a
  fully masked row's lse is -inf, never NaN); a finite want with bound 0 must be equal."""
  got = np.asarray(got, dtype=np.float64)
  want = np.asarray(want, dtype=np.float64)
  bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), want.shape)
  assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
  with np.errstate(invalid="ignore"):
    err = np.abs(got - want)
    ok = (got == want) | (np.isnan(got) & np.isnan(want)) | (err <= bound)
  if ok.all():
    return
  bad = np.argwhere(~ok)
  with np.errstate(divide="ignore", invalid="ignore"):
    ratio = np.where(ok, 0.0, np.nan_to_num(err / bound, nan=np.inf, posinf=np.inf))
  worst = np.unravel_index(np.argmax(ratio), ratio.shape)
  raise AssertionError(
      f"{what}: {len(bad)} of {want.size} elements outside the bound; worst at {worst}: got "
      f"{got[worst]!r} want {want[worst]!r} |err| {err[worst]:.3e} bound {bound[worst]:.3e}; "
      f"first bad {tuple(bad[0])}")


def assert_attention(got, exp, lse=None, what="O"):
  """O (and lse) of a kernel against expected()."""
  assert_within(got, exp.o, exp.bound_o, what)
  if lse is not None:
    assert_within(lse, exp.lse, exp.bound_lse, what + " lse")


# ----------------------------------------------------------------------------- types
def bf16_bits(x):
  """float32 -> bfloat16 bits (uint16), round to nearest even (finite inputs)."""
  u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
  return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_values(bits):
  """bfloat16 bits (uint16) -> their exact float32 values."""
  return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


def quantize_i8(x):
  """Row-wise int8 quantization: s = max|x| / 127 per row of d values, q = rint(x / s)."""
  x = np.asarray(x, np.float32)
  s = np.abs(x).max(-1) / np.float32(127)
  q = np.clip(np.rint(x / s[..., None]), -127, 127).astype(np.int8)
  return q, s.astype(np.float32)


def dequantize_i8(q, s):
  return q.astype(np.float64) * s.astype(np.float64)[..., None]


@pytest.fixture
def torch():
  return pytest.importorskip(
      "torch", reason="PyTorch is not importable by this interpreter (python3-torch)")
