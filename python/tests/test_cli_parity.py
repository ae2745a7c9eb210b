"""The README's promise: the package's O is bit for bit what `attnlab run` writes for the same
inputs, variant, options and thread count. $ATTNLAB_CLI is the CLI binary (set by ctest)."""
import os
import subprocess

import numpy as np
import pytest

import attnlab
from conftest import quantize_i8, random_qkv, variant_params

CLI = os.environ.get("ATTNLAB_CLI")
pytestmark = pytest.mark.skipif(
    not CLI or not os.path.exists(CLI),
    reason="ATTNLAB_CLI is not set to the attnlab binary (ctest sets it where the CLI is built)")


def run_cli(tmp_path, q, k, v, variant="flash", flags=(), files=None):
  """Writes q, k, v (and `files`: {flag: array}) as .npy, runs `attnlab run`, returns O."""
  args = [CLI, "run", "--variant", variant, "--threads", "1", "--out", str(tmp_path / "o.npy")]
  for name, x in dict(q=q, k=k, v=v, **(files or {})).items():
    path = tmp_path / f"{name.replace('-', '_')}.npy"
    np.save(path, x)
    args += [f"--{name}", str(path)]
  r = subprocess.run(args + list(flags), capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, f"{' '.join(args + list(flags))}\n{r.stdout}\n{r.stderr}"
  return np.load(tmp_path / "o.npy")


def assert_identical(cli_o, o):
  assert cli_o.dtype == o.dtype and cli_o.shape == o.shape
  assert np.array_equal(cli_o, o), f"max |diff| {np.abs(cli_o - o).max()}"


@pytest.mark.parametrize("variant", variant_params())
def test_same_o_as_attnlab_run(tmp_path, rng, variant):
  q, k, v = random_qkv(rng, 2, 4, 2, 9, 13, 16, 8)
  assert_identical(run_cli(tmp_path, q, k, v, variant),
                   attnlab.attention(q, k, v, variant=variant, threads=1))


CASES = {
    "causal": (dict(mask="causal"), ["--mask", "causal"], {}),
    "window": (dict(mask=("window", 1, 2)), ["--mask", "window:1,2"], {}),
    "scale": (dict(scale=0.3), ["--scale", "0.3"], {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_o_with_options(tmp_path, rng, case):
  q, k, v = random_qkv(rng, 2, 4, 2, 9, 13, 16, 8)
  kw, flags, files = CASES[case]
  assert_identical(run_cli(tmp_path, q, k, v, flags=flags, files=files),
                   attnlab.attention(q, k, v, threads=1, **kw))


def test_same_o_with_mask_file_and_key_lengths(tmp_path, rng):
  q, k, v = random_qkv(rng, 2, 4, 2, 9, 13, 16, 8)
  mask = rng.standard_normal((2, 1, 9, 13)).astype(np.float32)
  mask[:, :, 3, ::2] = -np.inf
  lengths = np.array([13, 5], np.int32)
  files = {"mask-file": mask, "key-lengths": lengths}
  assert_identical(run_cli(tmp_path, q, k, v, files=files),
                   attnlab.attention(q, k, v, threads=1, mask=mask, key_lengths=lengths))


@pytest.mark.parametrize("rank", [2, 3, 4])
def test_same_o_in_bshd_layout(tmp_path, rng, rank):
  b, h, hkv = {4: (2, 4, 2), 3: (1, 4, 2), 2: (1, 1, 1)}[rank]
  q, k, v = random_qkv(rng, b, h, hkv, 9, 13, 16, 8, rank=rank, layout="bshd")
  o = attnlab.attention(q, k, v, threads=1, layout="bshd", mask="causal")
  assert_identical(run_cli(tmp_path, q, k, v, flags=["--layout", "bshd", "--mask", "causal"]),
                   o)


def test_same_o_from_float64_and_float16_files(tmp_path, rng):
  """The CLI rounds '<f8' to float32 like the package; '<f2' is read as float16 by both."""
  q, k, v = random_qkv(rng, 1, 2, 2, 9, 13, 16, 8, dtype=np.float64)
  assert_identical(run_cli(tmp_path, q, k, v), attnlab.attention(q, k, v, threads=1))
  h16 = [x.astype(np.float16) for x in (q, k, v)]
  assert_identical(run_cli(tmp_path, *h16), attnlab.attention(*h16, threads=1))


def test_same_o_with_int8_kv(tmp_path, rng):
  q, k, v = random_qkv(rng, 2, 4, 2, 9, 13, 16, 8)
  (k8, ks), (v8, vs) = quantize_i8(k), quantize_i8(v)
  files = {"k-scales": ks, "v-scales": vs}
  assert_identical(run_cli(tmp_path, q, k8, v8, files=files),
                   attnlab.attention(q, k8, v8, threads=1, k_scales=ks, v_scales=vs))
  # and `--kv-dtype i8` quantizes float32 files the same way, bit for bit
  assert_identical(run_cli(tmp_path, q, k, v, flags=["--kv-dtype", "i8"]),
                   attnlab.attention(q, k8, v8, threads=1, k_scales=ks, v_scales=vs))
