"""Packed variable-length sequences (cu_seqlens_q / cu_seqlens_k, FlashAttention's varlen)
through the package: for every variant, each sequence of a packed [total, H, d] batch gets the
output the independent numpy oracle (conftest.expected) gives that sequence alone, with its own
bottom-right (or top-left) diagonal; lse is [H, total_q]; the fp64 reference and the backward
agree; bad offsets are named."""
import numpy as np
import pytest

import attnlab
from conftest import assert_attention, expected, variant_params

PACKINGS = {  # per-sequence query and key lengths
    "prefill": ([5, 0, 70, 1, 33], [5, 0, 70, 1, 33]),
    "decode": ([1, 1, 1], [300, 0, 1]),
    "mixed": ([3, 20, 10, 0], [10, 20, 3, 7]),
}
MASKS = {"none": None, "causal": "causal", "window": ("window", 5, 2)}


def packed(rng, packing, h=4, hkv=2, dk=16, dv=24):
  q_lens, k_lens = PACKINGS[packing]
  q = rng.standard_normal((sum(q_lens), h, dk)).astype(np.float32)
  k = rng.standard_normal((sum(k_lens), hkv, dk)).astype(np.float32)
  v = rng.standard_normal((sum(k_lens), hkv, dv)).astype(np.float32)
  return q, k, v, np.cumsum([0] + q_lens), np.cumsum([0] + k_lens)


@pytest.mark.parametrize("top_left", [False, True], ids=["bottom_right", "top_left"])
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("packing", list(PACKINGS))
@pytest.mark.parametrize("variant", variant_params())
def test_each_sequence_as_alone(rng, variant, packing, mask, top_left):
  q, k, v, cq, ck = packed(rng, packing)
  o, lse = attnlab.attention(q, k, v, variant=variant, mask=MASKS[mask], layout="bshd",
                             cu_seqlens_q=cq, cu_seqlens_k=ck, causal_top_left=top_left,
                             return_lse=True)
  assert o.shape == (cq[-1], 4, 24) and lse.shape == (4, cq[-1])
  for s in range(len(cq) - 1):
    qs, ks = slice(cq[s], cq[s + 1]), slice(ck[s], ck[s + 1])
    if cq[s] == cq[s + 1]:
      continue
    want = expected(q[qs], k[ks], v[ks], mask=MASKS[mask], layout="bshd",
                    causal_top_left=top_left)
    assert_attention(o[qs], want, lse[:, qs], what=f"sequence {s} O")


def test_reference_and_modifiers(rng):
  """The fp64 reference agrees with flash on a packed batch with every score modifier."""
  q, k, v, cq, ck = packed(rng, "mixed")
  kw = dict(mask="causal", layout="bshd", cu_seqlens_q=cq, cu_seqlens_k=ck, softcap=10.0,
            alibi_slopes="standard", sinks=[1.0, -np.inf, 0.0, 2.0])
  o = attnlab.attention(q, k, v, **kw)
  ref = attnlab.reference(q, k, v, **kw)
  for s in range(len(cq) - 1):
    qs, ks = slice(cq[s], cq[s + 1]), slice(ck[s], ck[s + 1])
    if cq[s] == cq[s + 1]:
      continue
    want = expected(q[qs], k[ks], v[ks], mask="causal", layout="bshd", softcap=10.0,
                    alibi_slopes=np.exp2(-8.0 * np.arange(1, 5) / 4),
                    sinks=[1.0, -np.inf, 0.0, 2.0])
    assert_attention(o[qs], want, what=f"flash sequence {s}")
    np.testing.assert_allclose(ref[qs], want.o, atol=1e-12)


@pytest.mark.parametrize("variant", variant_params(lambda info: info.has_backward))
def test_grad_per_sequence(rng, variant):
  """The backward of a packed batch equals the backward of each sequence alone (keys of an
  empty query sequence get dK = dV = 0)."""
  q, k, v, cq, ck = packed(rng, "mixed", dv=16)
  d_o = rng.standard_normal((cq[-1], 4, 16)).astype(np.float32)
  dq, dk, dv = attnlab.grad(q, k, v, d_o, variant=variant, mask="causal", layout="bshd",
                            cu_seqlens_q=cq, cu_seqlens_k=ck)
  for s in range(len(cq) - 1):
    qs, ks = slice(cq[s], cq[s + 1]), slice(ck[s], ck[s + 1])
    if cq[s] == cq[s + 1]:
      assert not dk[ks].any() and not dv[ks].any()
      continue
    want = attnlab.grad(q[qs], k[ks], v[ks], d_o[qs], variant=variant, mask="causal",
                        layout="bshd")
    for got, w, name in zip((dq[qs], dk[ks], dv[ks]), want, ("dQ", "dK", "dV")):
      np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5, err_msg=f"{name} of {s}")


@pytest.mark.parametrize("kw, message", [
    (dict(cu_seqlens_q=[0, 3, 2]), r"cu_seqlens_q\[2\]=2 is less than cu_seqlens_q\[1\]=3"),
    (dict(cu_seqlens_q=[0, 2, 5], cu_seqlens_k=None), "need both cu_seqlens_q and cu_seqlens_k"),
    (dict(cu_seqlens_q=[1, 2, 5]), r"cu_seqlens_q\[0\]=1 must be 0"),
    (dict(cu_seqlens_q=[0, 2, 4]), "cu_seqlens_q ends at 4, needs Lq=5"),
    (dict(cu_seqlens_q=[0, 5]), "cu_seqlens_q has 2 entries and cu_seqlens_k 3"),
    (dict(key_lengths=[3]), "key_lengths do not combine with packed sequences"),
    (dict(cu_seqlens_q=[[0, 2, 5]]), "cu_seqlens_q has shape"),
])
def test_bad_offsets_are_named(rng, kw, message):
  q = rng.standard_normal((5, 2, 8)).astype(np.float32)
  k = rng.standard_normal((6, 2, 8)).astype(np.float32)
  args = dict(layout="bshd", cu_seqlens_q=[0, 2, 5], cu_seqlens_k=[0, 4, 6])
  args.update(kw)
  with pytest.raises(ValueError, match=message):
    attnlab.attention(q, k, k, **args)
