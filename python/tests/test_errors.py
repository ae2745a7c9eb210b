"""Every bad argument raises ValueError (MemoryError over the memory budget) whose message names
the problem; none crashes the interpreter. The most dangerous calls (huge fake shapes) run in a
child interpreter too, so that a crash fails one test instead of killing the suite."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import attnlab
from conftest import VARIANT_INFO, VARIANT_NAMES, variant_params


def f32(*shape):
  return np.zeros(shape, np.float32)


Q = f32(2, 8, 5, 8)
K = f32(2, 2, 6, 8)
V = f32(2, 2, 6, 4)
K8 = np.zeros((2, 2, 6, 8), np.int8)
SCALES = np.ones((2, 2, 6), np.float32)


def call(**kw):
  """attention with the good Q, K, V above, any of them (or any option) replaced."""
  args = dict(q=Q, k=K, v=V)
  args.update(kw)
  return lambda: attnlab.attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)


# id: (the call, a distinctive part of the message)
BAD_CALLS = {
    "Hkv_does_not_divide_H": (call(k=f32(2, 3, 6, 8), v=f32(2, 3, 6, 4)),
                              "Hkv=3 does not divide H=8"),
    "rank_1": (call(q=f32(8)), "of rank 1"),
    "rank_5": (call(q=f32(1, 2, 8, 5, 8), k=f32(1, 2, 2, 6, 8), v=f32(1, 2, 2, 6, 4)),
               "of rank 5"),
    "rank_0": (call(q=np.float32(1)), "of rank 0"),
    "ranks_differ": (call(k=f32(2, 6, 8)), "ranks disagree"),
    "kv_length_mismatch": (call(v=f32(2, 2, 5, 4)), "v has Lk=5, k has 6"),
    "dk_mismatch": (call(k=f32(2, 2, 6, 7)), "k has dk=7, q has 8"),
    "batch_mismatch": (call(k=f32(1, 2, 6, 8), v=f32(1, 2, 6, 4)), "k has B=1, q has 2"),
    "kv_heads_mismatch": (call(v=f32(2, 1, 6, 4)), "v has Hkv=1, k has 2"),
    "dk_0": (call(q=f32(2, 8, 5, 0), k=f32(2, 2, 6, 0)), "dk=0 must be >= 1"),
    "dv_0": (call(v=np.zeros((2, 2, 6, 4), np.float32)[..., :0]), "dv=0 must be >= 1"),
    "q_int8": (call(q=Q.astype(np.int8)), "q has dtype int8"),
    "q_int32": (call(q=Q.astype(np.int32)), "q has dtype int32"),
    "v_complex": (call(v=V.astype(np.complex64)), "v has dtype complex64"),
    "q_object": (call(q=object()), "q has shape ()"),
    "mask_bad_string": (call(mask="causl"), "mask='causl'"),
    "mask_uppercase": (call(mask="CAUSAL"), "mask='CAUSAL'"),
    "mask_bad_tuple_length": (call(mask=("window", 1)), "('window', left, right)"),
    "mask_bad_tuple_name": (call(mask=("windo", 1, 1)), "('window', left, right)"),
    "window_negative": (call(mask=("window", -1, 2)), "window_left=-1 must be >= 0"),
    "window_float": (call(mask=("window", 1.5, 2)), "window left 1.5: want an integer"),
    "window_bool": (call(mask=("window", True, 2)), "want an integer"),
    "mask_wrong_shape": (call(mask=f32(5, 5)), "additive mask is [5, 5], needs [Lq, Lk] = [5, 6]"),
    "mask_wrong_batch": (call(mask=f32(3, 1, 5, 6)), "additive mask batch=3 must be 1"),
    "mask_wrong_heads": (call(mask=f32(1, 3, 5, 6)), "additive mask heads=3 must be 1"),
    "mask_rank_3": (call(mask=f32(1, 5, 6)), "an additive mask is [Lq,Lk] or [B,H,Lq,Lk]"),
    "mask_int": (call(mask=np.zeros((5, 6), np.int32)), "mask has dtype int32"),
    "key_lengths_wrong_count": (call(key_lengths=[1]), "key_lengths has 1 entries, needs B=2"),
    "key_lengths_empty": (call(key_lengths=np.zeros(0, np.int32)),
                          "key_lengths has 0 entries, needs B=2"),
    "key_lengths_above_Lk": (call(key_lengths=[1, 7]), "key_lengths[1]=7 is outside [0, Lk=6]"),
    "key_lengths_negative": (call(key_lengths=[-1, 2]), "key_lengths[0]=-1 is outside"),
    "key_lengths_float": (call(key_lengths=[1.0, 2.0]), "want one integer per batch"),
    "key_lengths_2d": (call(key_lengths=[[1, 2]]), "want one integer per batch"),
    "key_lengths_beyond_int32": (call(key_lengths=[2 ** 40, 2]), "out of the int32 range"),
    "layout": (call(layout="bhds"), "layout='bhds'"),
    "unknown_variant": (call(variant="flash_v9"),
                        "unknown variant 'flash_v9'; known: " + ", ".join(VARIANT_NAMES)),
    "threads_0": (call(threads=0), "threads=0"),
    "threads_negative": (call(threads=-1), "threads=-1"),
    "threads_huge": (call(threads=10 ** 6), "threads=1000000"),
    "threads_float": (call(threads=1.5), "threads 1.5: want an integer"),
    "threads_bool": (call(threads=True), "want an integer"),
    "scale_nan": (call(scale=float("nan")), "scale=nan must be finite"),
    "scale_inf": (call(scale=float("inf")), "scale=inf must be finite"),
    "scale_minus_inf": (call(scale=-float("inf")), "scale=-inf must be finite"),
    "scale_overflows_float32": (call(scale=1e40), "must be finite"),
    "int8_k_without_scales": (call(k=K8), "k_scales is required exactly with an int8 k"),
    "int8_v_without_scales": (call(v=np.zeros((2, 2, 6, 4), np.int8)), "v_scales is required"),
    "scales_with_float_k": (call(k_scales=SCALES), "k is f32: k_scales is required exactly"),
    "scales_wrong_shape": (call(k=K8, k_scales=np.ones((2, 2, 5), np.float32)),
                           "k_scales has shape (2, 2, 5)"),
    "memory_budget_float": (call(memory_budget=1.5), "memory_budget 1.5: want an integer"),
    "memory_budget_negative": (call(memory_budget=-1), "memory_budget"),
    "memory_budget_beyond_64_bits": (call(memory_budget=2 ** 70), "memory_budget"),
}


@pytest.mark.parametrize("bad", list(BAD_CALLS))
def test_bad_argument_is_a_value_error_naming_it(bad):
  run, message = BAD_CALLS[bad]
  with pytest.raises(ValueError) as info:
    run()
  assert message in str(info.value)


def test_output_overlapping_an_input_is_refused():
  q = np.zeros((1, 1, 4, 8), np.float32)
  with pytest.raises(ValueError, match="output O overlaps input Q"):
    attnlab.attention(q, q, q, out=q)


def test_output_overlapping_itself_is_refused():
  """out with a zero row stride would write every row to one place."""
  out = as_strided(np.zeros(8, np.float32), shape=(1, 1, 4, 8), strides=(0, 0, 0, 4))
  q = np.ones((1, 1, 4, 8), np.float32)
  with pytest.raises(ValueError, match="makes O overlap itself"):
    attnlab.attention(q, q, q, out=out)


@pytest.mark.parametrize("variant", variant_params(lambda v: not v.supports_weights))
def test_weights_of_a_variant_that_does_not_materialize_them(variant):
  with pytest.raises(ValueError, match=f"{variant} does not materialize attention weights"):
    attnlab.weights(Q, K, V, variant=variant)


def test_grad_with_o_and_without_lse():
  d_o = f32(2, 8, 5, 4)
  with pytest.raises(ValueError, match="give both o and lse"):
    attnlab.grad(Q, K, V, d_o, o=d_o)
  with pytest.raises(ValueError, match="give both o and lse"):
    attnlab.grad(Q, K, V, d_o, lse=f32(2, 8, 5))


def test_grad_with_float16_inputs():
  with pytest.raises(ValueError, match="float32 tensors only"):
    attnlab.grad(Q.astype(np.float16), K, V, f32(2, 8, 5, 4))
  with pytest.raises(ValueError, match="float32 tensors only"):
    attnlab.grad(Q, K, V, f32(2, 8, 5, 4).astype(np.float16))


def test_grad_with_d_o_of_the_wrong_shape():
  with pytest.raises(ValueError, match="d_o has shape"):
    attnlab.grad(Q, K, V, f32(2, 8, 5, 3))


@pytest.mark.parametrize("variant", variant_params(lambda v: not v.has_backward))
def test_grad_of_a_variant_without_a_backward(variant):
  with_backward = ", ".join(v for v in VARIANT_NAMES if VARIANT_INFO[v].has_backward)
  with pytest.raises(ValueError, match=f"{variant} has no backward pass; variants with one: "
                                       f"{with_backward}"):
    attnlab.grad(Q, K, V, f32(2, 8, 5, 4), variant=variant)


@pytest.mark.parametrize("variant", variant_params())
def test_memory_budget_of_one_byte_is_a_memory_error(variant):
  """Every variant declares some workspace for this problem: 1 byte is never enough."""
  with pytest.raises(MemoryError, match=f"{variant} needs .* budget 1 B"):
    attnlab.attention(Q, K, V, variant=variant, memory_budget=1)


@pytest.mark.parametrize("variant", variant_params(lambda v: v.supports_weights))
def test_weights_are_held_to_the_memory_budget(variant):
  """weights() documents "The memory is Lq·Lk per head: the memory budget refuses
  (MemoryError) what does not fit": P itself (here 16 MiB) must count, or a variant with a
  small workspace (chunked: C x Lk) fills an array of any size the budget was meant to refuse
  (with overcommit, np.empty of more than RAM succeeds and the writes get the process killed)."""
  q = np.zeros((1, 1, 2048, 16), np.float32)
  with pytest.raises(MemoryError):
    attnlab.weights(q, q, q, variant=variant, memory_budget=8 << 20)


def test_check_lists_variants_over_budget_as_skipped():
  report = attnlab.check(Q, K, V, memory_budget=1)
  assert [r.variant for r in report] == VARIANT_NAMES
  assert all(not r.ran and r.over_budget for r in report)
  assert not report.ok  # nothing ran: nothing was checked
  assert "skipped: over budget" in str(report)


# ----------------------------------------------------------------------------- huge shapes
def _fake(shape):
  """A zero-filled float32 array of `shape` that takes 64 floats of memory (stride 0 along
  every axis but d)."""
  return as_strided(np.zeros(shape[-1], np.float32), shape=shape, strides=(0,) * 3 + (4,))


@pytest.mark.parametrize("variant", variant_params(lambda v: v.materializes_scores))
def test_huge_fake_sequence_over_budget_is_a_memory_error(variant):
  """Lq = Lk = 2^20 (4 TiB of scores) through stride-0 views: refused before allocating."""
  x = _fake((1, 1, 2 ** 20, 64))
  with pytest.raises(MemoryError, match=f"{variant} needs 4.0 TiB"):
    attnlab.attention(x, x, x, variant=variant, memory_budget=1 << 20)


def test_huge_fake_weights_are_a_memory_error():
  """weights() of Lq = Lk = 2^20 cannot even allocate P [1, 1, 2^20, 2^20]."""
  x = _fake((1, 1, 2 ** 20, 64))
  with pytest.raises(MemoryError):
    attnlab.weights(x, x, x, memory_budget=1 << 20)


@pytest.mark.parametrize("entry", ["attention", "reference", "check"])
def test_tensor_over_the_element_cap_is_a_value_error(entry):
  """K with 2^53 elements (stride 0: 256 bytes of memory) is refused by name, not read."""
  q = np.zeros((1, 1, 1, 64), np.float32)
  k = _fake((1, 1, 2 ** 47, 64))
  with pytest.raises(ValueError, match="more than the 2\\^48 any one tensor may have"):
    getattr(attnlab, entry)(q, k, k)


def test_dangerous_calls_do_not_crash_a_fresh_interpreter():
  """The huge and malformed calls again, in a child interpreter: its exit status tells a crash
  (a signal) from an exception."""
  script = textwrap.dedent("""
      import numpy as np, attnlab
      from numpy.lib.stride_tricks import as_strided
      def fake(shape):
          return as_strided(np.zeros(shape[-1], np.float32), shape=shape,
                            strides=(0,) * 3 + (4,))
      big = fake((1, 1, 2 ** 20, 64))
      q = np.zeros((1, 1, 1, 64), np.float32)
      calls = [
          lambda: attnlab.attention(big, big, big, variant="naive", memory_budget=1),
          lambda: attnlab.weights(big, big, big, memory_budget=1),
          lambda: attnlab.attention(q, fake((1, 1, 2 ** 47, 64)), fake((1, 1, 2 ** 47, 64))),
          lambda: attnlab.attention(q, q, q, out=fake((1, 1, 1, 64))[:, :, :0]),
          lambda: attnlab.attention(q, q, q, mask=np.zeros((1, 1, 1, 2), np.float32)),
          lambda: attnlab.attention(q, q, q, key_lengths=np.array([3], np.int64)),
          lambda: attnlab.grad(q, q, q, q, o=q, lse=np.zeros(7, np.float32)),
      ]
      for c in calls:
          try:
              c()
              print("returned")
          except (ValueError, MemoryError) as e:
              print(type(e).__name__)
  """)
  r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
  assert r.stdout.split() == ["MemoryError"] * 2 + ["ValueError"] * 5, r.stdout
