"""attnlab.attention() against the independent fp64 oracle (conftest.expected), for every variant
in the registry: masks, layouts, ranks, GQA, dv != dk, tile-edge sizes, strided and copied
views, element types, `out=`, lse, fully masked rows, NaN rows and int8 K/V."""
import numpy as np
import pytest

import attnlab
from conftest import (VARIANT_INFO, assert_attention, assert_within, bf16_bits, bf16_values,
                      dequantize_i8, expected, fp64_tolerance, quantize_i8, random_qkv,
                      user_shape, variant_params)

ALL = variant_params()


def takes(variant, **types):
  """Whether the registry says `variant` takes these element types (q=, kv=, o=)."""
  d = VARIANT_INFO[variant].dtypes
  return all(t in d[slot] for slot, t in types.items())


# ----------------------------------------------------------------------------- the oracle
# Masks as (mask, key_lengths) factories over (rng, B, H, Lq, Lk).
def _additive(rng, shape, lq):
  m = (2 * rng.standard_normal(shape)).astype(np.float32)
  m[rng.random(shape) < 0.25] = -np.inf
  m[..., lq // 2, :] = -np.inf  # one fully masked row
  return m


def _bool(rng, shape, lq):
  m = rng.random(shape) < 0.7
  m[..., lq // 2, :] = False  # one row that may attend to nothing
  return m


MASKS = {
    "none": lambda rng, b, h, lq, lk: (None, None),
    "causal": lambda rng, b, h, lq, lk: ("causal", None),
    "window_2_1": lambda rng, b, h, lq, lk: (("window", 2, 1), None),
    "window_0_0": lambda rng, b, h, lq, lk: (("window", 0, 0), None),
    "window_0_5": lambda rng, b, h, lq, lk: (("window", 0, 5), None),
    "additive_LqLk": lambda rng, b, h, lq, lk: (_additive(rng, (lq, lk), lq), None),
    "additive_B1LqLk": lambda rng, b, h, lq, lk: (_additive(rng, (b, 1, lq, lk), lq), None),
    "additive_1HLqLk": lambda rng, b, h, lq, lk: (_additive(rng, (1, h, lq, lk), lq), None),
    "additive_BHLqLk_f64": lambda rng, b, h, lq, lk: (
        _additive(rng, (b, h, lq, lk), lq).astype(np.float64), None),
    "bool_LqLk": lambda rng, b, h, lq, lk: (_bool(rng, (lq, lk), lq), None),
    "bool_B1LqLk": lambda rng, b, h, lq, lk: (_bool(rng, (b, 1, lq, lk), lq), None),
    "key_lengths_0_Lk": lambda rng, b, h, lq, lk: (None, np.array([0, lk])),
    "causal+key_lengths": lambda rng, b, h, lq, lk: ("causal", [lk - 3, 1]),
    "window+key_lengths": lambda rng, b, h, lq, lk: (("window", 3, 0), np.array([5, lk],
                                                                               np.int64)),
    "additive+key_lengths": lambda rng, b, h, lq, lk: (_additive(rng, (lq, lk), lq), [lk, 4]),
}


def test_oracle_agrees_with_attnlab_reference(rng):
  """The test's oracle and attnlab.reference() (both fp64) agree, so neither is wrong alone."""
  b, h, hkv, lq, lk, dk, dv = 2, 4, 2, 9, 13, 19, 11
  q, k, v = random_qkv(rng, b, h, hkv, lq, lk, dk, dv)
  tol = fp64_tolerance(10)
  for name, make in MASKS.items():
    mask, kl = make(rng, b, h, lq, lk)
    exp = expected(q, k, v, mask=mask, key_lengths=kl)
    o, lse, w = attnlab.reference(q, k, v, mask=mask, key_lengths=kl, return_lse=True,
                                  return_weights=True)
    assert o.dtype == np.float64 and lse.dtype == np.float64
    assert_within(o, exp.o, tol, f"reference O, mask {name}")
    assert_within(lse, exp.lse, tol, f"reference lse, mask {name}")
    assert_within(w, exp.weights, tol, f"reference weights, mask {name}")


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("variant", ALL)
def test_masks(rng, variant, mask_name, layout):
  """Every mask kind, GQA (H=4, Hkv=2), dv != dk, head dims that are no vector width; O is
  written into a NaN-poisoned `out` (an element left unwritten fails) and lse is checked."""
  b, h, hkv, lq, lk, dk, dv = 2, 4, 2, 9, 13, 19, 11
  q, k, v = random_qkv(rng, b, h, hkv, lq, lk, dk, dv, layout=layout)
  mask, kl = MASKS[mask_name](rng, b, h, lq, lk)
  out = np.full(user_shape(b, h, lq, dv, 4, layout), np.nan, np.float32)
  o, lse = attnlab.attention(q, k, v, variant=variant, mask=mask, key_lengths=kl,
                             layout=layout, return_lse=True, out=out)
  assert o is out
  assert lse.shape == (b, h, lq) and lse.dtype == np.float32
  exp = expected(q, k, v, mask=mask, key_lengths=kl, layout=layout)
  assert_attention(o, exp, lse)


# Sizes around the tiles (flash: 64 query rows x up to 512 keys; SIMD widths 8/16) and the
# degenerate ones: (B, H, Hkv, Lq, Lk, dk, dv).
SHAPES = {
    "all_1": (1, 1, 1, 1, 1, 1, 1),
    "decode_Lq1_Lk600_MQA": (1, 4, 1, 1, 600, 32, 32),
    "Lq63_Lk65": (1, 2, 2, 63, 65, 16, 16),
    "Lq64_Lk64": (1, 1, 1, 64, 64, 8, 8),
    "Lq65_Lk513_dk24_dv8": (1, 2, 1, 65, 513, 24, 8),
    "Lq129_Lk31_d17": (2, 1, 1, 129, 31, 17, 17),
    "Lq_gt_Lk": (2, 2, 2, 13, 7, 8, 8),
    "dk33_dv5_H3": (1, 3, 1, 17, 31, 33, 5),
    "d64_Lq127_Lk128": (1, 2, 2, 127, 128, 64, 64),
    "d128_dv65": (1, 1, 1, 17, 19, 128, 65),
    "Lk1025_past_a_key_sum_block": (1, 2, 1, 3, 1025, 16, 16),
    "Lk2049_two_blocks_plus_1": (1, 1, 1, 2, 2049, 8, 8),
}


@pytest.mark.parametrize("mask", [None, "causal"], ids=["none", "causal"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("variant", ALL)
def test_sizes(rng, variant, shape, mask):
  b, h, hkv, lq, lk, dk, dv = shape
  q, k, v = random_qkv(rng, b, h, hkv, lq, lk, dk, dv)
  o, lse = attnlab.attention(q, k, v, variant=variant, mask=mask, return_lse=True)
  assert o.shape == (b, h, lq, dv)
  assert_attention(o, expected(q, k, v, mask=mask), lse)


@pytest.mark.parametrize("variant", ALL)
def test_zero_length_keys_sliced(rng, variant):
  """Lk = 0 is legal (problem.h): every row is fully masked, O = 0, lse = -inf."""
  q, k, v = random_qkv(rng, 2, 2, 1, 3, 4, 8, 8)
  o, lse = attnlab.attention(q, k[:, :, :0], v[:, :, :0], variant=variant, return_lse=True)
  assert o.shape == (2, 2, 3, 8) and (o == 0).all() and (lse == -np.inf).all()


@pytest.mark.parametrize("empty", ["Lq0", "Lk0", "Lq0_Lk0"])
def test_zero_length_sequences_from_fresh_arrays(empty):
  """Lq = 0 is a legal no-op and Lk = 0 legal (kernels/problem.h, "Edge semantics"), whatever
  strides numpy gives a zero-size array (np.zeros((1, 2, 0, 8)) has strides (0, 0, 0, 0))."""
  lq = 0 if "Lq0" in empty else 3
  lk = 0 if "Lk0" in empty else 4
  q = np.zeros((1, 2, lq, 8), np.float32)
  k = np.zeros((1, 2, lk, 8), np.float32)
  v = np.zeros((1, 2, lk, 8), np.float32)
  o, lse = attnlab.attention(q, k, v, return_lse=True)
  assert o.shape == (1, 2, lq, 8) and lse.shape == (1, 2, lq)
  assert (o == 0).all() and (lse == -np.inf).all()


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("rank", [2, 3, 4])
@pytest.mark.parametrize("variant", ALL)
def test_ranks_and_layouts(rng, variant, rank, layout):
  """Rank 4 [B,H,L,d] / [B,L,H,d], rank 3 [H,L,d] / [L,H,d], rank 2 [L,d]; GQA where there are
  heads; O and lse shaped as the rank says."""
  b, h, hkv = {4: (2, 6, 3), 3: (1, 4, 2), 2: (1, 1, 1)}[rank]
  lq, lk, dk, dv = 7, 10, 12, 6
  q, k, v = random_qkv(rng, b, h, hkv, lq, lk, dk, dv, rank=rank, layout=layout)
  o, lse = attnlab.attention(q, k, v, variant=variant, layout=layout, mask="causal",
                             return_lse=True)
  assert o.shape == user_shape(b, h, lq, dv, rank, layout)
  assert lse.shape == (b, h, lq)[4 - rank:]
  assert_attention(o, expected(q, k, v, mask="causal", layout=layout), lse)


@pytest.mark.parametrize("logits", ["large", "equal", "one_hot"])
@pytest.mark.parametrize("variant", ALL)
def test_inputs_that_break_careless_softmax(rng, variant, logits):
  """large: logits in the thousands (a softmax without max subtraction overflows); equal: every
  score the same (O = mean of V); one_hot: one key dominates by far (O = that key's V)."""
  b, h, lq, lk, d = 1, 2, 11, 37, 16
  q, k, v = random_qkv(rng, b, h, h, lq, lk, d, d)
  if logits == "large":
    q *= 40
    k *= 40
  elif logits == "equal":
    q[:] = 0
  else:
    k[..., 5, :] = q.mean(2) * 200  # key 5 aligns with every query
    q[:] = q.mean(2, keepdims=True)
  o = attnlab.attention(q, k, v, variant=variant)
  assert np.isfinite(o).all()
  exp = expected(q, k, v)
  assert_attention(o, exp)
  if logits == "equal":
    assert_within(o, np.broadcast_to(v.astype(np.float64).mean(2, keepdims=True), o.shape),
                  exp.bound_o, "O of equal scores vs mean(V)")


# ----------------------------------------------------------------------------- views
def _bhld_base(rng, shape):
  return rng.standard_normal(shape).astype(np.float32)


# Each input is a view of a contiguous random array: (the base array's shape for the [B, H, L, d]
# shape wanted, the view of it).
VIEWS = {
    # [B, L, H, d] contiguous, transposed to [B, H, L, d]: the PyTorch .transpose(1, 2) case
    "transposed_bshd_as_bhsd": (lambda s: (s[0], s[2], s[1], s[3]),
                                lambda x: x.transpose(0, 2, 1, 3)),
    "sliced_B": (lambda s: (2 * s[0], *s[1:]), lambda x: x[::2]),
    "sliced_H": (lambda s: (s[0], 2 * s[1], *s[2:]), lambda x: x[:, ::2]),
    "sliced_L_from_1": (lambda s: (s[0], s[1], s[2] + 1, s[3]), lambda x: x[:, :, 1:]),
    "strided_L_3": (lambda s: (s[0], s[1], 3 * s[2], s[3]), lambda x: x[:, :, ::3]),
    "d_prefix_of_wider_rows": (lambda s: (*s[:3], s[3] + 5), lambda x: x[..., :-5]),
    "noncontiguous_d": (lambda s: (*s[:3], 2 * s[3]), lambda x: x[..., ::2]),
    "negative_L": (lambda s: s, lambda x: x[:, :, ::-1]),
    "negative_H_and_d": (lambda s: s, lambda x: x[:, ::-1, :, ::-1]),
    "fortran_order": (lambda s: s, np.asfortranarray),
    "broadcast_B_stride0": (lambda s: (1, *s[1:]),
                            lambda x: np.broadcast_to(x, (2, *x.shape[1:]))),
}


@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("variant", ALL)
def test_strided_views(rng, variant, view):
  """Views read in place through their strides, and views that must be copied (non-unit d
  stride, negative strides), give the attention of the values they show."""
  b, h, hkv, lq, lk, dk, dv = 2, 4, 2, 6, 9, 8, 8
  base_shape, make_view = VIEWS[view]
  q, k, v = (make_view(_bhld_base(rng, base_shape(s)))
             for s in ((b, h, lq, dk), (b, hkv, lk, dk), (b, hkv, lk, dv)))
  assert q.shape == (b, h, lq, dk) and v.shape == (b, hkv, lk, dv)
  snapshot = [np.array(x) for x in (q, k, v)]
  o, lse = attnlab.attention(q, k, v, variant=variant, mask="causal", return_lse=True)
  assert_attention(o, expected(*snapshot, mask="causal"), lse)
  for x, before in zip((q, k, v), snapshot):
    assert np.array_equal(x, before), "an input was modified"


def test_readonly_inputs_are_accepted(rng):
  q, k, v = random_qkv(rng, 1, 2, 2, 5, 6, 8, 8)
  for x in (q, k, v):
    x.flags.writeable = False
  assert_attention(attnlab.attention(q, k, v), expected(q, k, v))


@pytest.mark.parametrize("variant", ALL)
def test_float64_inputs_are_rounded_to_float32(rng, variant):
  """float64 inputs give bit for bit what their float32 roundings give."""
  q, k, v = random_qkv(rng, 2, 2, 1, 7, 9, 8, 4, dtype=np.float64)
  o64 = attnlab.attention(q, k, v, variant=variant, threads=1)
  f32 = [x.astype(np.float32) for x in (q, k, v)]
  o32 = attnlab.attention(*f32, variant=variant, threads=1)
  assert o64.dtype == np.float32
  assert np.array_equal(o64, o32)
  assert_attention(o64, expected(*f32))


@pytest.mark.parametrize("variant", ALL)
def test_float16_inputs(rng, variant):
  """float16 Q, K, V against the exact attention of their fp16 values; the bound adds P rounded
  to fp16 for P.V (problem.h, "Element types"). A variant that does not take f16 says so."""
  q, k, v = random_qkv(rng, 2, 4, 2, 9, 13, 16, 8, dtype=np.float16)
  if not takes(variant, q="f16", kv="f16"):
    with pytest.raises(ValueError, match="not supported by variant"):
      attnlab.attention(q, k, v, variant=variant)
    return
  o, lse = attnlab.attention(q, k, v, variant=variant, mask="causal", return_lse=True)
  assert o.dtype == np.float32
  assert_attention(o, expected(q, k, v, mask="causal", dtypes=("f16", "f16", "f16", "f32")),
                   lse)


@pytest.mark.parametrize("variant", ALL)
def test_bfloat16_bits_inputs(rng, variant):
  """uint16 arrays are bfloat16 bits: the result is the attention of the bf16 values."""
  q, k, v = (bf16_bits(x) for x in random_qkv(rng, 2, 4, 2, 9, 13, 16, 8))
  if not takes(variant, q="bf16", kv="bf16"):
    with pytest.raises(ValueError, match="not supported by variant"):
      attnlab.attention(q, k, v, variant=variant)
    return
  o = attnlab.attention(q, k, v, variant=variant, mask="causal")
  values = [bf16_values(x) for x in (q, k, v)]
  assert_attention(o, expected(*values, mask="causal", dtypes=("bf16", "bf16", "bf16", "f32")))


@pytest.mark.parametrize("out_type", ["f16", "bf16"])
@pytest.mark.parametrize("variant", ALL)
def test_reduced_precision_out(rng, variant, out_type):
  """`out` float16, or uint16 (bfloat16 bits): O rounded once to that type."""
  q, k, v = random_qkv(rng, 1, 2, 2, 9, 13, 16, 8)
  if not takes(variant, o=out_type):
    pytest.skip(f"{variant} does not write O in {out_type}")
  out = np.full((1, 2, 9, 8), 0xFFFF if out_type == "bf16" else np.nan,
                np.uint16 if out_type == "bf16" else np.float16)
  o = attnlab.attention(q, k, v, variant=variant, out=out)
  assert o is out
  values = bf16_values(o) if out_type == "bf16" else o
  assert_attention(values, expected(q, k, v, dtypes=("f32", "f32", "f32", out_type)))


def test_memoryview_inputs(rng):
  q, k, v = random_qkv(rng, 1, 2, 1, 5, 7, 8, 4)
  o = attnlab.attention(memoryview(q), memoryview(k), memoryview(v))
  assert_attention(o, expected(q, k, v))


def test_nested_lists_are_inputs(rng):
  q, k, v = random_qkv(rng, 1, 1, 1, 3, 4, 2, 2, rank=2)
  o = attnlab.attention(q.tolist(), k.tolist(), v.tolist())
  assert_attention(o, expected(q, k, v))


# ----------------------------------------------------------------------------- PyTorch
def test_torch_contiguous_tensor(rng, torch):
  q, k, v = random_qkv(rng, 2, 4, 2, 6, 9, 8, 8)
  o = attnlab.attention(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v),
                        mask="causal")
  assert isinstance(o, np.ndarray)
  assert_attention(o, expected(q, k, v, mask="causal"))


def test_torch_transposed_tensor(rng, torch):
  """A [B, L, H, d] tensor .transpose(1, 2) is a [B, H, L, d] view (not contiguous)."""
  q, k, v = random_qkv(rng, 2, 4, 2, 6, 9, 8, 8, layout="bshd")
  tq, tk, tv = (torch.from_numpy(x).transpose(1, 2) for x in (q, k, v))
  assert not tq.is_contiguous()
  o = attnlab.attention(tq, tk, tv, mask="causal")
  assert o.shape == (2, 4, 6, 8)
  assert_attention(o, expected(*(x.transpose(0, 2, 1, 3) for x in (q, k, v)), mask="causal"))


def test_torch_bfloat16_tensor(rng, torch):
  """A torch.bfloat16 tensor is read as bfloat16: compare with the attention of its values."""
  q, k, v = random_qkv(rng, 2, 4, 2, 6, 9, 8, 8)
  tq, tk, tv = (torch.from_numpy(x).to(torch.bfloat16) for x in (q, k, v))
  values = [t.to(torch.float32).numpy() for t in (tq, tk, tv)]
  assert not np.array_equal(values[0], q)  # the rounding happened: the test can tell
  o = attnlab.attention(tq, tk, tv)
  assert_attention(o, expected(*values, dtypes=("bf16", "bf16", "bf16", "f32")))
  ref = attnlab.reference(tq, tk, tv)
  assert np.array_equal(ref, attnlab.reference(*values))


def test_torch_out(rng, torch):
  """`out` is never copied: a float32 tensor is written in place through numpy's writeable view
  of its memory (the returned array shares it); a bfloat16 tensor (read as uint16 bits through
  a writeable view) is written in place too."""
  q, k, v = random_qkv(rng, 1, 2, 2, 5, 6, 8, 8)
  out32 = torch.full((1, 2, 5, 8), float("nan"))
  o = attnlab.attention(q, k, v, out=out32)
  assert np.shares_memory(o, out32.numpy())
  assert_attention(out32.numpy(), expected(q, k, v))
  out = torch.full((1, 2, 5, 8), float("nan"), dtype=torch.bfloat16)
  attnlab.attention(q, k, v, out=out)
  assert_attention(out.to(torch.float32).numpy(),
                   expected(q, k, v, dtypes=("f32", "f32", "f32", "bf16")))


def test_torch_tensor_that_requires_grad_is_a_value_error(torch):
  t = torch.zeros(2, 3, requires_grad=True)
  with pytest.raises(ValueError, match="cannot read Tensor"):
    attnlab.attention(t, t, t)


# ----------------------------------------------------------------------------- out=
def test_out_is_written_in_place_and_returned(rng):
  q, k, v = random_qkv(rng, 2, 2, 2, 5, 7, 8, 6)
  out = np.full((2, 2, 5, 6), np.nan, np.float32)
  o = attnlab.attention(q, k, v, out=out)
  assert o is out
  assert np.shares_memory(o, out)
  assert_attention(out, expected(q, k, v))


def test_out_as_a_transposed_view_in_bshd(rng):
  """out: a contiguous [B, H, L, dv] buffer seen as [B, L, H, dv] (layout bshd): written
  through its strides, so the buffer holds O in bhsd order."""
  b, h, lq, lk, d = 2, 3, 5, 7, 8
  q, k, v = random_qkv(rng, b, h, h, lq, lk, d, d, layout="bshd")
  buf = np.full((b, h, lq, d), np.nan, np.float32)
  out = buf.transpose(0, 2, 1, 3)
  o = attnlab.attention(q, k, v, layout="bshd", out=out)
  assert o is out and np.shares_memory(o, buf)
  exp = expected(q, k, v, layout="bshd")
  assert_attention(out, exp)
  assert_within(buf, exp.o.transpose(0, 2, 1, 3), exp.bound_o.transpose(0, 2, 1, 3), "buffer")


def test_out_sliced_along_L(rng):
  """out may be a slice (row stride larger than dv): the rows in between stay untouched."""
  q, k, v = random_qkv(rng, 1, 2, 2, 5, 7, 8, 6)
  buf = np.full((1, 2, 10, 6), -7.0, np.float32)
  o = attnlab.attention(q, k, v, out=buf[:, :, ::2])
  assert np.shares_memory(o, buf)
  assert_attention(buf[:, :, ::2], expected(q, k, v))
  assert (buf[:, :, 1::2] == -7.0).all()


def _ro(a):
  a.flags.writeable = False
  return a


BAD_OUTS = {
    "wrong_shape": (lambda: np.empty((2, 2, 5, 5), np.float32), "has shape"),
    "wrong_rank": (lambda: np.empty((2, 5, 6), np.float32), "has shape"),
    "float64": (lambda: np.empty((2, 2, 5, 6), np.float64), "has dtype float64"),
    "int32": (lambda: np.empty((2, 2, 5, 6), np.int32), "has dtype int32"),
    "read_only": (lambda: _ro(np.empty((2, 2, 5, 6), np.float32)), "read-only"),
    "noncontiguous_d": (lambda: np.empty((2, 2, 5, 12), np.float32)[..., ::2], "contiguous d"),
    "negative_L_stride": (lambda: np.empty((2, 2, 5, 6), np.float32)[:, :, ::-1],
                          "non-negative strides"),
}


@pytest.mark.parametrize("bad", list(BAD_OUTS))
def test_bad_out_is_a_value_error(rng, bad):
  q, k, v = random_qkv(rng, 2, 2, 2, 5, 7, 8, 6)
  make, message = BAD_OUTS[bad]
  with pytest.raises(ValueError, match=message):
    attnlab.attention(q, k, v, out=make())


# ----------------------------------------------------------------------------- edges
@pytest.mark.parametrize("variant", ALL)
def test_fully_masked_rows_give_zero_and_minus_inf(rng, variant):
  """Rows with no visible key (key_lengths 0, causal with Lq > Lk, an all -inf additive row,
  Lk = 0) give O = 0 and lse = -inf exactly, never NaN; other rows are unaffected."""
  b, h, lq, lk, d = 2, 2, 12, 8, 8
  q, k, v = random_qkv(rng, b, h, h, lq, lk, d, d)
  additive = np.zeros((lq, lk), np.float32)
  additive[-1] = -np.inf
  cases = {"key_lengths": dict(key_lengths=[0, lk]), "causal_Lq_gt_Lk": dict(mask="causal"),
           "additive_row": dict(mask=additive)}
  for name, kw in cases.items():
    o, lse = attnlab.attention(q, k, v, variant=variant, return_lse=True, **kw)
    exp = expected(q, k, v, **kw)
    empty = ~exp.visible.any(-1)
    assert empty.any() and not empty.all(), name
    assert not np.isnan(o).any() and not np.isnan(lse).any(), name
    assert (o[empty] == 0).all() and (lse[empty] == -np.inf).all(), name
    assert_attention(o, exp, lse, name)
  o, lse = attnlab.attention(q, k[:, :, :0], v[:, :, :0], variant=variant, return_lse=True)
  assert o.shape == (b, h, lq, d)
  assert (o == 0).all() and (lse == -np.inf).all(), "Lk = 0"


@pytest.mark.parametrize("variant", ALL)
def test_nan_in_one_q_row_makes_only_that_row_nan(rng, variant):
  b, h, lq, lk, d = 2, 4, 9, 11, 8
  q, k, v = random_qkv(rng, b, h, 2, lq, lk, d, d)
  q[1, 2, 5, 3] = np.nan
  o, lse = attnlab.attention(q, k, v, variant=variant, return_lse=True)
  nan_rows = np.isnan(o).any(-1)
  want = np.zeros((b, h, lq), bool)
  want[1, 2, 5] = True
  assert np.array_equal(nan_rows, want)
  assert np.isnan(o[1, 2, 5]).all()
  assert np.array_equal(np.isnan(lse), want)
  clean = q.copy()
  clean[1, 2, 5] = 0
  exp = expected(clean, k, v)
  assert_within(o[~want], exp.o[~want], exp.bound_o[~want], "the other rows")


@pytest.mark.parametrize("variant", ALL)
def test_nan_in_one_k_row_reaches_exactly_the_rows_that_see_it(rng, variant):
  """NaN in K row j makes NaN exactly the query rows that see key j (causal: i + off >= j) and
  nothing else; a hidden key's NaN never reaches anything."""
  b, h, lq, lk, d = 1, 2, 9, 11, 8
  q, k, v = random_qkv(rng, b, h, h, lq, lk, d, d)
  j = 6
  k[0, 1, j, 2] = np.nan
  o = attnlab.attention(q, k, v, variant=variant, mask="causal")
  sees = np.arange(lq) + (lk - lq) >= j
  assert np.array_equal(np.isnan(o[0, 1]).any(-1), sees)
  assert np.isnan(o[0, 1][sees]).all()
  assert not np.isnan(o[0, 0]).any()
  o = attnlab.attention(q, k, v, variant=variant, key_lengths=[j])  # key j is padding
  assert not np.isnan(o).any()


@pytest.mark.parametrize("variant", ALL)
def test_special_logits(rng, variant):
  """A +inf logit (an additive +inf) makes its row's O and lse NaN and nothing else; a row padded
  with float32's lowest value everywhere gets the mean of V (as in PyTorch), like a row of
  equal scores."""
  lq, lk, d = 4, 6, 8
  q, k, v = random_qkv(rng, 1, 1, 1, lq, lk, d, d, rank=2)
  m = np.zeros((lq, lk), np.float32)
  m[1, 2] = np.inf
  m[3] = np.finfo(np.float32).min
  o, lse = attnlab.attention(q, k, v, variant=variant, mask=m, return_lse=True)
  assert np.array_equal(np.isnan(o).any(-1), [False, True, False, False])
  assert np.isnan(o[1]).all() and np.isnan(lse[1]) and not np.isnan(lse[[0, 2, 3]]).any()
  rows = [0, 2]
  exp = expected(q, k, v)
  assert_within(o[rows], exp.o[rows], exp.bound_o[rows], "rows without special logits")
  q_equal = q.copy()
  q_equal[3] = 0  # equal scores: the same weights, 1/Lk each
  exp = expected(q_equal, k, v)
  assert_within(o[3], v.astype(np.float64).mean(0), exp.bound_o[3], "lowest-padded row")


def _misaligned(a):
  """A copy of `a` at an odd address (as np.frombuffer at an offset gives): flags.aligned is
  False."""
  m = np.ndarray(a.shape, a.dtype, buffer=bytearray(a.nbytes + 1), offset=1)
  m[...] = a
  assert not m.flags.aligned or a.dtype.itemsize == 1
  return m


@pytest.mark.parametrize("what", ["qkv_f32", "qkv_f16", "k_scales"])
def test_misaligned_inputs_are_read_by_value(rng, what):
  """A misaligned array is a valid numpy input: the module docstring promises that whatever
  cannot be read in place "is copied once into a contiguous array"."""
  q, k, v = random_qkv(rng, 1, 2, 2, 5, 6, 8, 8, dtype=np.float16 if what == "qkv_f16"
                       else np.float32)
  if what == "k_scales":
    k8, ks = quantize_i8(k)
    o = attnlab.attention(q, k8, v, k_scales=_misaligned(ks))
    assert np.array_equal(o, attnlab.attention(q, k8, v, k_scales=ks))
    return
  o = attnlab.attention(*(_misaligned(x) for x in (q, k, v)))
  assert np.array_equal(o, attnlab.attention(q, k, v))


def test_big_endian_inputs_are_read_by_value(rng):
  q, k, v = random_qkv(rng, 1, 2, 2, 5, 6, 8, 8)
  o = attnlab.attention(*(x.astype(">f4") for x in (q, k, v)), mask=np.zeros((5, 6), ">f4"),
                        key_lengths=np.array([4], ">i8"))
  assert_attention(o, expected(q, k, v, key_lengths=[4]))


INT8_FORMS = [(4, "bhsd"), (4, "bshd"), (3, "bshd"), (2, "bhsd")]


@pytest.mark.parametrize("rank,layout", INT8_FORMS, ids=[f"rank{r}-{l}" for r, l in INT8_FORMS])
@pytest.mark.parametrize("variant", ALL)
def test_int8_kv_with_row_scales(rng, variant, rank, layout):
  """int8 K and V with one fp32 scale per row (element = scale * int8), quantized as the CLI
  does, against attnlab.reference on the same int8 inputs and against the oracle on the
  dequantized values; the bound adds the bf16 rounding problem.h allows for an int8 K/V."""
  b, h, hkv = {4: (2, 4, 2), 3: (1, 4, 2), 2: (1, 1, 1)}[rank]
  lq, lk, dk, dv = 7, 12, 16, 8
  q, k, v = random_qkv(rng, b, h, hkv, lq, lk, dk, dv, rank=rank, layout=layout)
  k8, ks = quantize_i8(k)
  v8, vs = quantize_i8(v)
  assert ks.shape == k.shape[:-1]
  kw = dict(k_scales=ks, v_scales=vs, layout=layout, mask="causal")
  if not takes(variant, kv="i8"):
    with pytest.raises(ValueError, match="not supported by variant"):
      attnlab.attention(q, k8, v8, variant=variant, **kw)
    return
  o, lse = attnlab.attention(q, k8, v8, variant=variant, return_lse=True, **kw)
  exp = expected(q, dequantize_i8(k8, ks), dequantize_i8(v8, vs), mask="causal", layout=layout,
                 dtypes=("f32", "i8", "i8", "f32"))
  assert_attention(o, exp, lse)
  ref, ref_lse = attnlab.reference(q, k8, v8, return_lse=True, **kw)
  assert_within(o, ref, exp.bound_o, "O vs attnlab.reference")
  assert_within(ref, exp.o, fp64_tolerance(np.abs(exp.o).max()), "reference vs oracle")
