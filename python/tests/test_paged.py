"""Paged K/V caches (block_table=, vLLM's layout) through the package: for every variant that
reads one (VariantInfo.paged_kv), attention on block pools equals the independent numpy oracle
(conftest.expected) on the contiguous K and V, decode and prefill, GQA, with blocks shuffled
through the pool; the others raise ValueError naming the feature; the fp64 reference reads the
pools too; bad tables are named."""
import numpy as np
import pytest

import attnlab
from conftest import assert_attention, expected, random_qkv, variant_params


def pooled(rng, x, block_size):
  """[B, Hkv, Lk, d] -> (pool [num_blocks, Hkv, block_size, d], table [B, blocks]): each
  sequence's blocks shuffled through the pool, plus two spare blocks of NaN never referenced."""
  b, hkv, lk, d = x.shape
  per = -(-lk // block_size)
  ids = rng.permutation(b * per + 2)
  pool = np.full((b * per + 2, hkv, block_size, d), np.nan, x.dtype)
  table = ids[:b * per].reshape(b, per).astype(np.int32)
  for s in range(b):
    for j in range(per):
      rows = x[s, :, j * block_size:(j + 1) * block_size]
      pool[table[s, j], :, :rows.shape[1]] = rows
  return pool, table


# Lk is the table's capacity (blocks x block size): the causal and window diagonals sit at
# Lk - Lq, so the masked shapes take an Lk that is a whole number of blocks.
SHAPES = {  # (B, H, Hkv, Lq, Lk, dk, dv), mask, key_lengths, block size
    "decode_gqa": ((3, 8, 2, 1, 700, 64, 64), None, [700, 0, 129], 16),
    "decode_bs7": ((2, 4, 4, 1, 300, 32, 32), None, [300, 1], 7),
    "prefill_causal": ((2, 4, 2, 40, 96, 32, 16), "causal", [90, 41], 32),
    "window_bs128": ((1, 2, 1, 20, 640, 16, 16), ("window", 30, 2), None, 128),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("variant", variant_params())
def test_pools_match_contiguous_oracle(rng, variant, shape):
  (b, h, hkv, lq, lk, dk, dv), mask, key_lengths, bs = SHAPES[shape]
  q, k, v = random_qkv(rng, b, h, hkv, lq, lk, dk, dv)
  kp, table = pooled(rng, k, bs)
  vp = np.full((kp.shape[0], hkv, bs, dv), np.nan, np.float32)
  for s in range(b):
    for j in range(table.shape[1]):
      rows = v[s, :, j * bs:(j + 1) * bs]
      vp[table[s, j], :, :rows.shape[1]] = rows
  info = next(i for i in attnlab.variants() if i.name == variant)
  if not info.paged_kv:
    with pytest.raises(ValueError, match="paged K/V"):
      attnlab.attention(q, kp, vp, variant=variant, mask=mask, key_lengths=key_lengths,
                        block_table=table)
    return
  o, lse = attnlab.attention(q, kp, vp, variant=variant, mask=mask, key_lengths=key_lengths,
                             block_table=table, return_lse=True)
  want = expected(q, k, v, mask=mask, key_lengths=key_lengths)
  assert_attention(o, want, lse)
  ref = attnlab.reference(q, kp, vp, mask=mask, key_lengths=key_lengths, block_table=table)
  np.testing.assert_allclose(ref, want.o, atol=1e-12)


@pytest.mark.parametrize("table, message", [
    (np.array([[0, 1], [2, 9]]), r"block_table\[1\]\[1\]=9 is outside the pool of num_blocks=4"),
    (np.array([[0, 1], [2, -1]]), r"block_table\[1\]\[1\]=-1 is outside the pool"),
    (np.array([0, 1, 2, 3]), r"block_table has shape \(4,\)"),
])
def test_bad_tables_are_named(rng, table, message):
  """(Lk is the table's capacity here, blocks x block_size, so a table cannot be too short for
  it; an entry past a sequence's key length is not read: [[0, 1], [2, -1]] with key_lengths
  [16, 8] is fine.)"""
  q = rng.standard_normal((2, 2, 1, 8)).astype(np.float32)
  pool = rng.standard_normal((4, 2, 8, 8)).astype(np.float32)
  with pytest.raises(ValueError, match=message):
    attnlab.attention(q, pool, pool, block_table=table)
  if table.ndim == 2 and table[1, 1] == -1:
    attnlab.attention(q, pool, pool, block_table=table, key_lengths=[16, 8])


def test_not_for_grad_or_rank_3(rng):
  q = rng.standard_normal((2, 1, 8)).astype(np.float32)
  with pytest.raises(ValueError, match="block_table needs rank-4"):
    attnlab.attention(q, q, q, block_table=[[0]])
  with pytest.raises(TypeError):
    attnlab.grad(q, q, q, q, block_table=[[0]])


@pytest.mark.parametrize("variant", variant_params(lambda info: info.paged_kv))
def test_chunked_prefill_aligns_at_key_lengths(rng, variant):
  """causal_at_key_lengths=True: the Lq queries are the newest tokens of each cache, so batch
  b's rows are those of the problem cut to its key_lengths[b] keys with the default
  bottom-right diagonal (the numpy oracle per batch, ALiBi's zero following it; 3 keys under
  6 queries leave two empty rows). The default diagonal (at the capacity) gives other rows."""
  b, h, hkv, lq, lk, d, bs = 3, 4, 2, 6, 64, 32, 16
  q, k, v = random_qkv(rng, b, h, hkv, lq, lk, d, d)
  kp, table = pooled(np.random.default_rng(1), k, bs)
  vp, _ = pooled(np.random.default_rng(1), v, bs)
  lengths = [64, 30, 3]
  kw = dict(variant=variant, mask="causal", key_lengths=lengths, block_table=table,
            alibi_slopes="standard")
  info = next(i for i in attnlab.variants() if i.name == variant)
  if "alibi" not in info.modifiers:  # the variant takes no ALiBi: the diagonal alone
    del kw["alibi_slopes"]
  o, lse = attnlab.attention(q, kp, vp, causal_at_key_lengths=True, return_lse=True, **kw)
  slopes = np.exp2(-8.0 * np.arange(1, h + 1) / h) if "alibi_slopes" in kw else None
  for s, n in enumerate(lengths):
    want = expected(q[s:s + 1], k[s:s + 1, :, :n], v[s:s + 1, :, :n], mask="causal",
                    alibi_slopes=slopes)
    assert_attention(o[s:s + 1], want, lse[s:s + 1])
  assert np.all(o[2, :, :2] == 0) and np.all(np.isneginf(lse[2, :, :2]))
  assert not np.allclose(attnlab.attention(q, kp, vp, **kw)[1], o[1])
  kw.pop("variant")
  ref = attnlab.reference(q, kp, vp, causal_at_key_lengths=True, **kw)
  np.testing.assert_allclose(ref, o, atol=1e-5)
  with pytest.raises(ValueError, match="two different diagonals"):
    attnlab.attention(q, kp, vp, causal_at_key_lengths=True, causal_top_left=True, **kw)
  kw.pop("key_lengths")
  with pytest.raises(ValueError, match="diagonal key-lengths .* needs key_lengths"):
    attnlab.attention(q, kp, vp, causal_at_key_lengths=True, **kw)
