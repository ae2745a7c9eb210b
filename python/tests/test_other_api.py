"""weights(), reference(), check(), grad(), multi_head_attention(), variants(), __version__ and
the docstrings."""
import dataclasses
import math
import os
import pydoc
import re

import numpy as np
import pytest

import attnlab
from conftest import (SAFETY, U32, VARIANT_INFO, VARIANT_NAMES, assert_attention,
                      assert_within, expected, fp64_tolerance, from_bhld, layer_expected,
                      mask_arrays, random_qkv, summation_length, to_bhld, user_shape,
                      variant_params)

HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------- weights
@pytest.mark.parametrize("mask", [None, "causal", ("window", 1, 2)],
                         ids=["none", "causal", "window_1_2"])
@pytest.mark.parametrize("variant", variant_params(lambda v: v.supports_weights))
def test_weights(rng, variant, mask):
  """P against the oracle's weights; rows sum to 1 (the sum of Lk weights, each within its
  bound, plus Lk roundings of the sum); exact zeros where a key is hidden (under causal with
  Lq = Lk: the strict upper triangle); return_output=True gives attention()'s O."""
  b, h, hkv, n, d = 2, 4, 2, 11, 12
  q, k, v = random_qkv(rng, b, h, hkv, n, n, d, d)
  p, o = attnlab.weights(q, k, v, variant=variant, mask=mask, return_output=True)
  assert p.shape == (b, h, n, n) and p.dtype == np.float32
  exp = expected(q, k, v, mask=mask)
  assert_within(p, exp.weights, exp.bound_weights, "P")
  row_sum = p.astype(np.float64).sum(-1)
  assert_within(row_sum, np.ones_like(row_sum), exp.bound_weights.sum(-1) + n * U32, "row sums")
  assert (p[~exp.visible] == 0).all()
  if mask == "causal":
    lower = np.tri(n, dtype=bool)  # Lq = Lk: the diagonal and below are visible
    assert (p[..., ~lower] == 0).all() and (p[..., lower] > 0).all()
  assert_attention(o, exp, what="O of weights(return_output=True)")
  o2 = attnlab.attention(q, k, v, variant=variant, mask=mask)
  assert_within(o, o2, exp.bound_o * 2, "O of weights() vs attention()")


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("rank", [2, 3, 4])
def test_weights_shape_follows_rank_not_layout(rng, rank, layout):
  """P is [B, H, Lq, Lk] whatever the layout, minus the dims a rank-3/2 input leaves out."""
  b, h = {4: (2, 3), 3: (1, 3), 2: (1, 1)}[rank]
  q, k, v = random_qkv(rng, b, h, h, 5, 7, 8, 8, rank=rank, layout=layout)
  p = attnlab.weights(q, k, v, layout=layout)
  assert p.shape == (b, h, 5, 7)[4 - rank:]
  exp = expected(q, k, v, layout=layout)
  assert_within(p, exp.weights, exp.bound_weights)


def test_weights_default_variant_is_the_first_that_materializes_them(rng):
  first = next(v.name for v in attnlab.variants() if v.supports_weights)
  q, k, v = random_qkv(rng, 1, 2, 2, 5, 6, 8, 8)
  assert np.array_equal(attnlab.weights(q, k, v, threads=1),
                        attnlab.weights(q, k, v, variant=first, threads=1))


def test_weights_of_a_fully_masked_row_are_zero(rng):
  q, k, v = random_qkv(rng, 2, 1, 1, 4, 5, 8, 8)
  p = attnlab.weights(q, k, v, key_lengths=[0, 5])
  assert (p[0] == 0).all() and not np.isnan(p).any()


# ----------------------------------------------------------------------------- reference
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("rank", [2, 3, 4])
def test_reference(rng, rank, layout):
  """float64 O in the inputs' rank and layout (contiguous), then lse, then weights."""
  b, h, hkv = {4: (2, 4, 2), 3: (1, 4, 2), 2: (1, 1, 1)}[rank]
  q, k, v = random_qkv(rng, b, h, hkv, 6, 9, 8, 5, rank=rank, layout=layout)
  exp = expected(q, k, v, mask="causal", layout=layout)
  tol = fp64_tolerance(10)
  o = attnlab.reference(q, k, v, mask="causal", layout=layout)
  assert isinstance(o, np.ndarray) and o.dtype == np.float64 and o.flags.c_contiguous
  assert o.shape == user_shape(b, h, 6, 5, rank, layout)
  assert_within(o, exp.o, tol)
  o2, lse = attnlab.reference(q, k, v, mask="causal", layout=layout, return_lse=True)
  assert lse.dtype == np.float64 and lse.shape == (b, h, 6)[4 - rank:]
  assert np.array_equal(o, o2)
  assert_within(lse, exp.lse, tol, "lse")
  o3, w = attnlab.reference(q, k, v, mask="causal", layout=layout, return_weights=True)
  assert w.shape == (b, h, 6, 9)[4 - rank:]
  assert_within(w, exp.weights, tol, "weights")
  o4, lse4, w4 = attnlab.reference(q, k, v, mask="causal", layout=layout, return_lse=True,
                                   return_weights=True)
  assert np.array_equal(o4, o) and np.array_equal(lse4, lse) and np.array_equal(w4, w)


# ----------------------------------------------------------------------------- check
def test_check_every_variant(rng):
  q, k, v = random_qkv(rng, 2, 4, 2, 9, 13, 16, 8)
  report = attnlab.check(q, k, v, mask="causal")
  assert report.ok
  assert [r.variant for r in report] == VARIANT_NAMES
  text = str(report)
  assert "max_abs_err" in text and "err/bound" in text
  for name in VARIANT_NAMES:
    assert re.search(rf"^{re.escape(name)}\s", text, re.M), f"{name} not in\n{text}"
  for r in report:
    assert r.ran and r.ok and 0 <= r.error_over_bound <= 1, r
    assert r.max_abs_error <= r.bound
  assert "B=2 H=4 Hkv=2 Lq=9 Lk=13 dk=16 dv=8 mask=causal" in report.problem


def test_check_named_variants_only(rng):
  q, k, v = random_qkv(rng, 1, 2, 2, 5, 6, 8, 8)
  report = attnlab.check(q, k, v, variants=["flash"])
  assert [r.variant for r in report] == ["flash"] and report.ok
  others = [n for n in VARIANT_NAMES if n != "flash"]
  assert not any(re.search(rf"^{re.escape(n)}\s", str(report), re.M) for n in others)
  with pytest.raises(ValueError, match="unknown variant 'nope'"):
    attnlab.check(q, k, v, variants=["nope"])


def test_check_int8_kv(rng):
  from conftest import quantize_i8
  q, k, v = random_qkv(rng, 1, 2, 2, 5, 6, 8, 8)
  (k8, ks), (v8, vs) = quantize_i8(k), quantize_i8(v)
  report = attnlab.check(q, k8, v8, k_scales=ks, v_scales=vs)
  assert report.ok
  assert "K=i8 V=i8" in report.problem
  for r in report:
    assert r.ran == ("i8" in VARIANT_INFO[r.variant].dtypes["kv"]), r


# ----------------------------------------------------------------------------- grad
def numpy_backward(q, k, v, d_o, *, mask=None, key_lengths=None, scale=None, layout="bhsd"):
  """(dq, dk, dv) exact in fp64, and their bounds, in the inputs' layout.

  The backward of O = softmax(S) V, S = scale Q K^T + mask, written from the chain rule:
  dV = P^T dO, dP = dO V^T, D = rowsum(dO * O), dS = P * (dP - D), dQ = scale dS K,
  dK = scale dS^T Q; with GQA, dK and dV of a kv head sum over its query heads.

  Bound (first-order error propagation through those steps, u = 2^-24, per query row i):
    P's relative error eps_i = delta_i + lambda_i + 3u (max|S_i.| + |lse_i|) + 8u: the logit
      error delta_i = (dk+2) u A_i and the forward's lse error lambda_i (conftest), the
      subtraction, and the exp;
    dP_ij, a length-dv dot product: e_dP = dv u (|dO_i| . |v_j|);
    D_i from a forward O within o_i = (O bound)/SAFETY: e_D = sum_d |dO| o_i
      + dv u sum_d |dO| (|O| + o_i) + sum_j (eps P |dP| + P e_dP) + n u sum_j P |dP|;
    dS: e_dS = eps P |dP - D| + P (e_dP + e_D) + 2u P |dP - D|;
    dQ = scale sum_j dS k: scale (sum_j e_dS |k| + (n+1) u sum_j |dS k|), likewise dK over the
      m query rows of its kv head and dV = sum P dO: sum eps P |dO| + m u sum P |dO|;
    each plus u |value| (its rounding), times SAFETY."""
  q4, k4, v4, do4 = (to_bhld(x, layout) for x in (q, k, v, d_o))
  b, h, lq, dk = q4.shape
  hkv, lk, dv = k4.shape[1], k4.shape[2], v4.shape[3]
  g = h // hkv
  exp = expected(q4, k4, v4, mask=mask, key_lengths=key_lengths, scale=scale)
  scale = 1 / math.sqrt(dk) if scale is None else scale
  kr, vr = np.repeat(k4, g, 1), np.repeat(v4, g, 1)
  p, o, lse = exp.weights, exp.o, exp.lse
  visible, additive = mask_arrays(mask, key_lengths, b, h, lq, lk)
  dp = do4 @ vr.swapaxes(-1, -2)
  big_d = (do4 * o).sum(-1, keepdims=True)
  ds = p * (dp - big_d)
  dq = scale * ds @ kr
  dk_h = scale * ds.swapaxes(-1, -2) @ q4
  dv_h = p.swapaxes(-1, -2) @ do4

  def per_kv_head(x):
    return x.reshape(b, hkv, g, *x.shape[2:]).sum(2)

  # The bound.
  s = scale * (q4 @ kr.swapaxes(-1, -2)) + additive
  s_max = np.where(visible & (p > 0), np.abs(s), 0).max(-1, initial=0)
  finite_lse = np.where(np.isfinite(lse), lse, 0)
  magnitude = scale * (np.abs(q4) @ np.abs(kr).swapaxes(-1, -2)) + np.abs(additive)
  a = np.where(visible, magnitude, 0).max(-1, initial=0)
  n = visible.sum(-1)
  delta = (dk + 2) * U32 * a
  lam = delta + (8 + summation_length(n) + 2) * U32 + U32 * np.abs(finite_lse)
  eps = (delta + lam + 3 * U32 * (s_max + np.abs(finite_lse)) + 8 * U32)[..., None]
  o_err = (exp.bound_o[..., :1] / SAFETY)  # [B, H, Lq, 1]
  dp_abs = np.abs(do4) @ np.abs(vr).swapaxes(-1, -2)
  e_dp = dv * U32 * dp_abs
  e_d = ((np.abs(do4) * o_err).sum(-1, keepdims=True)
         + dv * U32 * (np.abs(do4) * (np.abs(o) + o_err)).sum(-1, keepdims=True)
         + (eps * p * np.abs(dp) + p * e_dp).sum(-1, keepdims=True)
         + n[..., None] * U32 * (p * np.abs(dp)).sum(-1, keepdims=True))
  e_ds = eps * p * np.abs(dp - big_d) + p * (e_dp + e_d) + 2 * U32 * p * np.abs(dp - big_d)
  m = lq * g
  bound_dq = SAFETY * (scale * (e_ds @ np.abs(kr) + (n[..., None] + 1) * U32 *
                                (np.abs(ds) @ np.abs(kr))) + U32 * np.abs(dq))
  dk_ = per_kv_head(dk_h)
  dv_ = per_kv_head(dv_h)
  bound_dk = SAFETY * (scale * per_kv_head(e_ds.swapaxes(-1, -2) @ np.abs(q4) + (m + 1) * U32 *
                                           (np.abs(ds).swapaxes(-1, -2) @ np.abs(q4)))
                       + U32 * np.abs(dk_))
  bound_dv = SAFETY * (per_kv_head((eps * p).swapaxes(-1, -2) @ np.abs(do4) + m * U32 *
                                   (p.swapaxes(-1, -2) @ np.abs(do4))) + U32 * np.abs(dv_))
  rank = np.ndim(q)
  back = [from_bhld(x, rank, layout) for x in (dq, dk_, dv_, bound_dq, bound_dk, bound_dv)]
  return back[:3], back[3:]


GRAD_MASKS = {
    "none": dict(),
    "causal": dict(mask="causal"),
    "window_2_0": dict(mask=("window", 2, 0)),
    "key_lengths_0": dict(key_lengths=[0, 9]),
    "additive": dict(mask=np.where(np.arange(9)[None, :] % 3 == 1, -np.inf,
                                   np.linspace(-1, 1, 7 * 9).reshape(7, 9)).astype(np.float32)),
}


@pytest.mark.parametrize("given", ["o_lse_given", "o_lse_computed"])
@pytest.mark.parametrize("mask", list(GRAD_MASKS))
@pytest.mark.parametrize("variant", variant_params(lambda v: v.has_backward))
def test_grad_against_numpy_backward(rng, variant, mask, given):
  b, h, hkv, lq, lk, dk, dv = 2, 4, 2, 7, 9, 12, 6
  q, k, v = random_qkv(rng, b, h, hkv, lq, lk, dk, dv)
  d_o = rng.standard_normal((b, h, lq, dv)).astype(np.float32)
  kw = GRAD_MASKS[mask]
  extra = {}
  if given == "o_lse_given":
    o, lse = attnlab.attention(q, k, v, variant="flash", return_lse=True, **kw)
    extra = dict(o=o, lse=lse)
  dq, dk_, dv_ = attnlab.grad(q, k, v, d_o, variant=variant, **kw, **extra)
  assert dq.shape == q.shape and dk_.shape == k.shape and dv_.shape == v.shape
  assert dq.dtype == dk_.dtype == dv_.dtype == np.float32
  (want_q, want_k, want_v), (bq, bk, bv) = numpy_backward(q, k, v, d_o, **kw)
  assert_within(dq, want_q, bq, "dQ")
  assert_within(dk_, want_k, bk, "dK")
  assert_within(dv_, want_v, bv, "dV")
  if mask == "key_lengths_0":
    assert (dq[0] == 0).all() and (dk_[0] == 0).all() and (dv_[0] == 0).all()


@pytest.mark.parametrize("variant", variant_params(lambda v: v.has_backward))
def test_grad_in_bshd_rank_3_and_scale(rng, variant):
  h, hkv, lq, lk, dk, dv = 4, 1, 6, 8, 8, 8
  q, k, v = random_qkv(rng, 1, h, hkv, lq, lk, dk, dv, rank=3, layout="bshd")
  d_o = rng.standard_normal((lq, h, dv)).astype(np.float32)
  kw = dict(mask="causal", scale=0.3, layout="bshd")
  grads = attnlab.grad(q, k, v, d_o, variant=variant, **kw)
  wants, bounds = numpy_backward(q, k, v, d_o, **kw)
  for name, got, want, bound in zip(("dQ", "dK", "dV"), grads, wants, bounds):
    assert_within(got, want, bound, name)


def test_grad_against_finite_differences(rng):
  """The numpy backward itself, checked by central differences of L = sum(O * dO) in fp64
  (step 1e-6: truncation error ~ step^2 * |L'''|, rounding ~ 1e-16 / step: ~1e-10 here)."""
  q, k, v = (x.astype(np.float64) for x in random_qkv(rng, 1, 2, 1, 3, 4, 3, 2))
  d_o = rng.standard_normal((1, 2, 3, 2))

  def loss(q, k, v):
    return (expected(q, k, v, mask="causal").o * d_o).sum()

  (gq, gk, gv), _ = numpy_backward(q, k, v, d_o, mask="causal")
  step = 1e-6
  for x, g, i in ((q, gq, 0), (k, gk, 1), (v, gv, 2)):
    num = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
      args = [q.copy(), k.copy(), v.copy()]
      args[i][idx] += step
      plus = loss(*args)
      args[i][idx] -= 2 * step
      num[idx] = (plus - loss(*args)) / (2 * step)
    assert np.abs(num - g).max() < 1e-7, (i, num, g)


# ----------------------------------------------------------------------------- the layer
@pytest.mark.parametrize("case", ["L_dmodel", "B_L_dmodel_causal", "gqa", "cross_attention"])
def test_multi_head_attention(rng, case):
  dm, heads, dk, dv, dout, lq = 24, 4, 6, 5, 7, 9
  hkv = 2 if case == "gqa" else heads
  shape = (lq, dm) if case == "L_dmodel" else (2, lq, dm)
  x = rng.standard_normal(shape).astype(np.float32)
  c = None
  if case == "cross_attention":
    c = rng.standard_normal((2, 13, dm)).astype(np.float32)
  w = [(rng.standard_normal(s) / math.sqrt(s[0])).astype(np.float32)
       for s in ((dm, heads * dk), (dm, hkv * dk), (dm, hkv * dv), (heads * dv, dout))]
  mask = "causal" if case in ("B_L_dmodel_causal", "gqa") else None
  y = attnlab.multi_head_attention(x, *w, heads, mask=mask, context=c)
  assert y.shape == shape[:-1] + (dout,) and y.dtype == np.float32
  want, bound = layer_expected(x, x if c is None else c, *w, heads, mask=mask)
  assert_within(y, want, bound, "y")


def test_multi_head_attention_bad_weights():
  x = np.zeros((4, 8), np.float32)
  w = np.zeros((8, 8), np.float32)
  with pytest.raises(ValueError, match="wq has 8 columns: want heads"):
    attnlab.multi_head_attention(x, w, w, w, w, 3)
  with pytest.raises(ValueError, match="wo has 8 rows: want H·dv = 4"):
    attnlab.multi_head_attention(x, w, w, w[:, :4], w, 2)


# ----------------------------------------------------------------------------- the registry
def test_variants():
  infos = attnlab.variants()
  names = [v.name for v in infos]
  assert len(names) == len(set(names)) and "flash" in names  # flash is attention()'s default
  assert any(v.supports_weights for v in infos)  # weights() has a default
  for v in infos:
    assert isinstance(v, attnlab.VariantInfo)
    assert re.fullmatch(r"[a-z_][a-z0-9_]*", v.name)
    assert v.summary and isinstance(v.summary, str)
    for flag in ("supports_weights", "materializes_scores", "uses_highway", "deterministic",
                 "has_backward"):
      assert isinstance(getattr(v, flag), bool)
    assert set(v.dtypes) == {"q", "kv", "o"}
    assert "f32" in v.dtypes["q"] and "f32" in v.dtypes["kv"] and "f32" in v.dtypes["o"]
    assert set(v.dtypes["kv"]) <= {"f32", "bf16", "f16", "i8"}
    assert set(v.dtypes["q"]) <= {"f32", "bf16", "f16"}
    assert set(v.dtypes["o"]) <= {"f32", "bf16", "f16"}
    with pytest.raises(dataclasses.FrozenInstanceError):
      v.name = "x"


@pytest.mark.parametrize("variant", variant_params())
def test_registry_flags_match_behavior(rng, variant):
  """supports_weights and has_backward say what weights() and grad() accept."""
  info = VARIANT_INFO[variant]
  q, k, v = random_qkv(rng, 1, 2, 2, 4, 5, 8, 8)
  if info.supports_weights:
    attnlab.weights(q, k, v, variant=variant)
  else:
    with pytest.raises(ValueError):
      attnlab.weights(q, k, v, variant=variant)
  if info.has_backward:
    attnlab.grad(q, k, v, q, variant=variant)
  else:
    with pytest.raises(ValueError):
      attnlab.grad(q, k, v, q, variant=variant)


def test_isa_path_names_the_last_kernel(rng):
  q, k, v = random_qkv(rng, 1, 1, 1, 4, 4, 8, 8)
  attnlab.attention(q, k, v, variant="naive")
  assert isinstance(attnlab.isa_path(), str) and attnlab.isa_path()


def test_last_run_stats_say_where_the_threads_time_went(rng):
  """last_run_stats() is the last run's RunStats: its path (isa_path()), thread team and
  workspace, and on 2 threads where the team's time went (kernels/thread_times.h)."""
  q, k, v = random_qkv(rng, 1, 8, 8, 256, 256, 64, 64)
  attnlab.attention(q, k, v, variant="flash", threads=1)
  one = attnlab.last_run_stats()
  assert one["path"] == attnlab.isa_path() and one["threads"] == 1
  assert one["thread_times"] is None
  assert 0 < one["workspace_peak_bytes"] <= one["workspace_declared_bytes"]
  if attnlab._core.max_threads < 2:
    pytest.skip("one core: no team of two to time")
  attnlab.attention(q, k, v, variant="flash", threads=2)
  times = attnlab.last_run_stats()["thread_times"]
  assert attnlab.last_run_stats()["threads"] == 2
  assert len(times["busy_seconds"]) == 2 and len(times["items"]) == 2
  assert sum(times["items"]) > 2  # flash's items: 8 heads x row blocks
  assert 0 <= times["idle_fraction"] < 1 and times["items_ratio"] >= 1
  assert 0 < max(times["busy_seconds"]) <= times["wall_seconds"] * 1.01
  attnlab.grad(q, k, v, q, variant="flash", threads=2)
  assert attnlab.last_run_stats()["thread_times"]["wall_seconds"] > 0


def test_openblas_core_names_the_kernels_blas_runs():
  core = attnlab.openblas_core()
  assert set(core) == {"name", "detected", "chosen_by"}
  assert core["name"] and core["chosen_by"] in ("OpenBLAS", "OPENBLAS_CORETYPE", "attnlab")
  if core["chosen_by"] == "attnlab":
    assert core["detected"] == "Prescott" and core["name"] != "Prescott"


def test_version_is_the_project_version():
  with open(os.path.join(HERE, "..", "..", "CMakeLists.txt")) as f:
    version = re.search(r"project\(attnlab VERSION ([0-9.]+)", f.read()).group(1)
  assert attnlab.__version__ == version


@pytest.mark.parametrize("name", ["attention", "weights", "reference", "check", "grad",
                                  "multi_head_attention", "variants"])
def test_docstrings(name):
  text = pydoc.render_doc(getattr(attnlab, name), renderer=pydoc.plaintext)
  assert name in text
  if name == "attention":
    for section in ("Parameters", "Returns", "Raises", "Examples"):
      assert section in text
  assert len(getattr(attnlab, name).__doc__) > 100


def test_help_of_attention_has_parameters(capsys):
  help(attnlab.attention)
  assert "Parameters" in capsys.readouterr().out
