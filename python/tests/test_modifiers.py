"""Score modifiers (softcap, ALiBi, attention sinks) and the top-left diagonal, through the
package: every variant that applies a modifier (VariantInfo.modifiers) against the independent
numpy fp64 oracle of conftest.expected, every other one refused with ValueError naming the
modifier; the fp64 reference agrees with the oracle; bad values name the field."""
import numpy as np
import pytest

import attnlab
from conftest import (VARIANTS, assert_attention, expected, fp64_tolerance, random_qkv,
                      variant_params)

SETTINGS = {
    "softcap": dict(softcap=5.0),
    "alibi": dict(alibi_slopes="standard"),
    "sinks": dict(sinks=[2.0, -np.inf, 0.5, 3.0]),
    "all_top_left": dict(softcap=20.0, alibi_slopes=[0.5, -0.25, 0.125, 1.0],
                         sinks=[1.0, 0.0, -np.inf, 4.0], causal_top_left=True),
}
SHAPES = {  # (B, H, Hkv, Lq, Lk, dk, dv), mask, key_lengths
    "prefill_causal": ((1, 4, 2, 70, 70, 32, 32), "causal", None),
    "decode_gqa": ((2, 4, 1, 1, 600, 64, 64), None, [600, 0]),
    "window": ((1, 4, 4, 40, 90, 16, 24), ("window", 7, 2), None),
    "lq_over_lk": ((1, 4, 2, 30, 20, 16, 16), "causal", None),
}


def slopes_of(setting, heads):
  s = setting.get("alibi_slopes")
  if isinstance(s, str):
    return np.exp2(-8.0 * np.arange(1, heads + 1) / heads)
  return s


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("variant", variant_params())
def test_variant_matches_oracle_or_refuses(rng, variant, shape, setting):
  (b, h, hkv, lq, lk, dk, dv), mask, key_lengths = SHAPES[shape]
  mods = SETTINGS[setting]
  q, k, v = random_qkv(rng, b, h, hkv, lq, lk, dk, dv)
  info = next(i for i in VARIANTS if i.name == variant)
  used = [m for m, on in (("softcap", "softcap" in mods), ("alibi", "alibi_slopes" in mods),
                          ("sinks", "sinks" in mods)) if on]
  if not set(used) <= set(info.modifiers):
    with pytest.raises(ValueError, match="does not apply"):
      attnlab.attention(q, k, v, variant=variant, mask=mask, key_lengths=key_lengths, **mods)
    return
  o, lse = attnlab.attention(q, k, v, variant=variant, mask=mask, key_lengths=key_lengths,
                             return_lse=True, **mods)
  exp = expected(q, k, v, mask=mask, key_lengths=key_lengths, softcap=mods.get("softcap"),
                 alibi_slopes=slopes_of(mods, h), sinks=mods.get("sinks"),
                 causal_top_left=mods.get("causal_top_left", False))
  assert_attention(o, exp, lse)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_reference_agrees_with_the_oracle(rng, setting):
  mods = SETTINGS[setting]
  q, k, v = random_qkv(rng, 1, 4, 2, 12, 17, 8, 8)
  o, lse = attnlab.reference(q, k, v, mask="causal", return_lse=True, **mods)
  exp = expected(q, k, v, mask="causal", softcap=mods.get("softcap"),
                 alibi_slopes=slopes_of(mods, 4), sinks=mods.get("sinks"),
                 causal_top_left=mods.get("causal_top_left", False))
  np.testing.assert_allclose(o, exp.o, rtol=0, atol=fp64_tolerance(10.0))
  np.testing.assert_allclose(lse, exp.lse, rtol=0, atol=fp64_tolerance(100.0))


def test_sinks_take_weight_from_the_keys(rng):
  """With a sink the weights of a row sum to 1 - e^(sink - lse); a fully padded row gives
  O = 0 and lse = sink."""
  q, k, v = random_qkv(rng, 2, 2, 2, 3, 9, 8, 8)
  sinks = [1.0, -1.0]
  p = attnlab.weights(q, k, v, sinks=sinks, key_lengths=[9, 0])
  o, lse = attnlab.attention(q, k, v, sinks=sinks, key_lengths=[9, 0], return_lse=True)
  total = p[0].sum(-1)
  np.testing.assert_allclose(total, 1 - np.exp(np.array(sinks)[:, None] - lse[0]), atol=1e-6)
  assert (o[1] == 0).all()
  np.testing.assert_array_equal(lse[1], np.array(sinks, np.float32)[:, None].repeat(3, 1))


def test_softcap_bounds_every_logit(rng):
  """Huge logits (|s| ~ 1e4) with softcap 2: the weights are those of logits in [-2, 2], so no
  weight falls below e^-4 / Lk."""
  q, k, v = random_qkv(rng, 1, 1, 1, 4, 8, 16, 16)
  p = attnlab.weights(q * 100, k * 100, v, softcap=2.0)
  assert p.min() >= np.exp(-4.0) / 8 * (1 - 1e-5)


def test_top_left_causal_is_pytorch_is_causal(rng):
  """causal_top_left=True is PyTorch's is_causal=True, whose documented mask is
  torch.ones(L, S).tril(diagonal=0), also when Lq != Lk (bottom-right differs there)."""
  q, k, v = random_qkv(rng, 1, 2, 2, 7, 12, 16, 16)
  tril = np.tril(np.ones((7, 12), bool))
  got = attnlab.attention(q, k, v, mask="causal", causal_top_left=True)
  via_mask = attnlab.attention(q, k, v, mask=tril)
  assert_attention(got, expected(q, k, v, mask="causal", causal_top_left=True))
  assert_attention(via_mask, expected(q, k, v, mask="causal", causal_top_left=True))
  bottom_right = attnlab.attention(q, k, v, mask="causal")
  assert not np.allclose(got, bottom_right)


@pytest.mark.parametrize("kwargs, message", [
    (dict(softcap=0.0), "softcap=0 must be finite and > 0"),
    (dict(softcap=-1.0), "softcap=-1 must be finite and > 0"),
    (dict(softcap=float("nan")), "softcap=nan must be finite and > 0"),
    (dict(alibi_slopes=[1.0, 2.0]), "alibi_slopes has 2 entries, needs H=4"),
    (dict(alibi_slopes=[1.0, np.nan, 1.0, 1.0]), r"alibi_slopes\[1\]=nan is not finite"),
    (dict(alibi_slopes="nope"), "want 'standard' or H slopes"),
    (dict(sinks=[0.0] * 5), "sinks has 5 entries, needs H=4"),
    (dict(sinks=[0.0, 0.0, np.inf, 0.0]), r"sinks\[2\]=inf must be finite or -inf"),
    (dict(sinks=np.zeros((2, 2))), "one value per query head"),
])
def test_bad_modifiers_name_the_field(rng, kwargs, message):
  q, k, v = random_qkv(rng, 1, 4, 2, 3, 5, 8, 8)
  with pytest.raises(ValueError, match=message):
    attnlab.attention(q, k, v, **kwargs)


def modified_backward(q, k, v, d_o, mask, mods):
  """(dq, dk, dv, d_sinks) in fp64 from the chain rule (MHA, bhsd): dS = P∘(dP - D)∘(1 - t²),
  t = tanh(scale·q·k / cap); dσ_h = -Σ_(b,i) e^(σ_h - lse)·D (kernels/problem.h, "backward")."""
  h, dk = q.shape[1], q.shape[3]
  exp = expected(q, k, v, mask=mask, softcap=mods.get("softcap"),
                 alibi_slopes=slopes_of(mods, h), sinks=mods.get("sinks"),
                 causal_top_left=mods.get("causal_top_left", False))
  q, k, v, d_o = (np.asarray(x, np.float64) for x in (q, k, v, d_o))
  scale = 1 / np.sqrt(dk)
  slope = 1.0
  if "softcap" in mods:
    slope = 1 - np.tanh(scale * (q @ k.swapaxes(-1, -2)) / mods["softcap"]) ** 2
  p = exp.weights
  big_d = (d_o * exp.o).sum(-1, keepdims=True)
  ds = p * (d_o @ v.swapaxes(-1, -2) - big_d) * slope
  d_sinks = None
  if "sinks" in mods:
    sinks = np.asarray(mods["sinks"], np.float64).reshape(1, h, 1)
    with np.errstate(invalid="ignore"):
      p_sink = np.where(np.isneginf(sinks), 0.0, np.exp(sinks - exp.lse))
    d_sinks = -(p_sink * big_d[..., 0]).sum((0, 2))
  return (scale * ds @ k, scale * ds.swapaxes(-1, -2) @ q, p.swapaxes(-1, -2) @ d_o, d_sinks)


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("variant", variant_params(lambda v: v.has_backward))
def test_grad_with_modifiers_or_refused(rng, variant, setting):
  """grad() takes the modifiers: against the fp64 chain rule (a loose tolerance here; the
  derived bound is checked by tests/modifiers_test.cc), d_sinks returned with sinks; a
  variant whose backward lacks one refuses it, naming it."""
  mods = SETTINGS[setting]
  q, k, v = random_qkv(rng, 2, 4, 4, 9, 13, 16, 8)
  d_o = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
  info = next(i for i in VARIANTS if i.name == variant)
  used = {m for m, key in (("softcap", "softcap"), ("alibi", "alibi_slopes"), ("sinks", "sinks"))
          if key in mods}
  if not used <= set(info.backward_modifiers):
    with pytest.raises(ValueError, match="does not apply"):
      attnlab.grad(q, k, v, d_o, variant=variant, mask="causal", **mods)
    return
  got = attnlab.grad(q, k, v, d_o, variant=variant, mask="causal", **mods)
  want = modified_backward(q, k, v, d_o, "causal", mods)
  assert len(got) == (4 if "sinks" in mods else 3)
  for name, g, w in zip(("dq", "dk", "dv", "d_sinks"), got, want):
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


def test_variants_say_which_modifiers_their_backward_applies():
  names = {v.name: set(v.backward_modifiers) for v in VARIANTS}
  assert names["flash"] == {"softcap", "alibi", "sinks"}
  assert names["naive"] == {"softcap", "alibi", "sinks"}
  assert names["blas"] == set()


def test_variants_say_which_modifiers_they_apply():
  names = {v.name: set(v.modifiers) for v in VARIANTS}
  assert names["flash"] == {"softcap", "alibi", "sinks"}
  assert names["naive"] == {"softcap", "alibi", "sinks"}
  assert all(m <= {"softcap", "alibi", "sinks"} for m in names.values())
