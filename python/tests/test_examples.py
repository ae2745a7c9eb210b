"""The classic tutorial examples of attention, each computed the tutorial way in numpy and with
attnlab. The tolerance of each is conftest's fp32 bound (expected()), so the tutorial's numpy
code and the package must agree to within a kernel's rounding."""
import math

import numpy as np

import attnlab
from conftest import U32, assert_within, expected, fp64_tolerance, layer_expected


def softmax(x, axis=-1):
  """The tutorial softmax: subtract the max, exponentiate, normalize."""
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def test_a_simple_dot_product_attention(rng):
  """softmax(Q K^T) V with no scaling (scale=1.0), one sequence."""
  q = rng.standard_normal((4, 3)).astype(np.float32)
  k = rng.standard_normal((6, 3)).astype(np.float32)
  v = rng.standard_normal((6, 2)).astype(np.float32)
  weights = softmax(q.astype(np.float64) @ k.T.astype(np.float64))
  tutorial = weights @ v
  o = attnlab.attention(q, k, v, scale=1.0)
  assert o.shape == (4, 2)
  bound = expected(q, k, v, scale=1.0).bound_o
  assert_within(o, tutorial, bound)
  # The default scale is 1/sqrt(dk): an answer far outside the bound, so scale=1.0 was honoured.
  assert np.abs(attnlab.attention(q, k, v) - tutorial).max() > 100 * bound.max()


def test_b_scaled_attention_with_a_padding_mask(rng):
  """A batch of 3 sequences of lengths 5, 3 and 1, padded to 5: the tutorial masks the padded
  keys with -inf before the softmax. attnlab does it with key_lengths, with an additive -inf
  mask [B, 1, L, L] and with a bool mask."""
  lengths = np.array([5, 3, 1])
  b, n, d = 3, 5, 4
  x = rng.standard_normal((b, 1, n, d)).astype(np.float32)  # [B, H=1, L, d]
  for i, length in enumerate(lengths):
    x[i, :, length:] = 0  # padding
  keep = np.arange(n)[None, :] < lengths[:, None]  # [B, L]: real keys
  scores = (x @ x.transpose(0, 1, 3, 2)).astype(np.float64) / math.sqrt(d)
  scores = np.where(keep[:, None, None, :], scores, -np.inf)
  tutorial = softmax(scores) @ x
  bound = expected(x, x, x, key_lengths=lengths).bound_o
  additive = np.where(keep, 0, -np.inf).astype(np.float32)[:, None, None, :].repeat(n, 2)
  for name, kw in {"key_lengths": dict(key_lengths=lengths),
                   "additive": dict(mask=additive),
                   "bool": dict(mask=np.broadcast_to(keep[:, None, None, :], (b, 1, n, n)))
                   }.items():
    o = attnlab.attention(x, x, x, **kw)
    assert_within(o, tutorial, bound, f"padding via {name}")
  # Padding changes the answer: the unmasked attention is far outside the bound.
  assert np.abs(attnlab.attention(x, x, x) - tutorial).max() > 100 * bound.max()


def test_c_multi_head_self_attention_layer(rng):
  """The tutorial layer: project, split into heads, attend per head, concatenate, project."""
  b, n, d_model, heads = 2, 6, 16, 4
  dk = d_model // heads
  x = rng.standard_normal((b, n, d_model)).astype(np.float32)
  wq, wk, wv, wo = (rng.standard_normal((d_model, d_model)).astype(np.float32) / 4
                    for _ in range(4))

  def split(t):  # [B, L, d_model] -> [B, heads, L, dk]
    return t.reshape(b, n, heads, dk).transpose(0, 2, 1, 3)

  xd = x.astype(np.float64)
  q, k, v = split(xd @ wq), split(xd @ wk), split(xd @ wv)
  heads_out = softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(dk)) @ v
  tutorial = heads_out.transpose(0, 2, 1, 3).reshape(b, n, d_model) @ wo
  y = attnlab.multi_head_attention(x, wq, wk, wv, wo, heads)
  assert y.shape == (b, n, d_model) and y.dtype == np.float32
  # The bound of an fp32 layer (fp32 projections, then the attention; conftest.layer_expected
  # derives it); its fp64 result is the tutorial's, computed another way.
  want, bound = layer_expected(x, x, wq, wk, wv, wo, heads)
  assert_within(want, tutorial, fp64_tolerance(np.abs(tutorial).max()), "two fp64 layers")
  assert_within(y, tutorial, bound, "layer output")


def test_d_attention_weights_of_a_short_sentence(rng):
  """5 tokens, 8-dim embeddings, causal self-attention weights, printed as a table: each row
  sums to 1, nothing above the diagonal (a token cannot look ahead), the first token sees only
  itself."""
  tokens = "the cat sat on mat".split()
  vocab = {t: i for i, t in enumerate(sorted(set(tokens)))}
  table = rng.standard_normal((len(vocab), 8)).astype(np.float32)
  e = table[[vocab[t] for t in tokens]]  # [5, 8]
  p = attnlab.weights(e, e, e, mask="causal")
  lines = ["      " + " ".join(f"{t:>6}" for t in tokens)]
  lines += [f"{t:>5} " + " ".join(f"{w:6.3f}" for w in row) for t, row in zip(tokens, p)]
  print("\n".join(lines))  # shown with pytest -s, or when the test fails
  assert lines[0].split() == tokens and [ln.split()[0] for ln in lines[1:]] == tokens

  scores = (e @ e.T).astype(np.float64) / math.sqrt(8)
  scores[np.triu_indices(5, 1)] = -np.inf
  tutorial = softmax(scores)
  exp = expected(e, e, e, mask="causal")
  assert_within(p, tutorial, exp.bound_weights, "weights")
  assert_within(p.sum(-1), np.ones(5), exp.bound_weights.sum(-1) + 5 * U32, "row sums")
  assert (np.triu(p, 1) == 0).all()
  assert p[0, 0] == 1.0
  assert (p[np.tril_indices(5)] > 0).all()
