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
