#!/usr/bin/python3
"""Peers: PyTorch attention timed on the bench's sweep shapes, what a user would pick instead of
attnlab. Optional tooling: nothing in the build or the tests needs torch.

  bench/peers.py --out results/<stem>-peers.json [--n 128,256,...] [--max-n 16384]
                 [--dims 64,128] [--threads 1,2] [--time-cap 5] [--repetitions 5]
  <venv>/bin/python bench/peers.py ...   # a PyTorch 2.x from PyPI (README: "Peers")

Writes Google Benchmark-shaped JSON (docs/bench-json.md, "Peers") that reports/generate.py reads
beside the bench's own file. B=1, H=8, N = Lq = Lk, d, dense and causal, on each thread count
(torch.set_num_threads), fp32:
  peer_torch_plain/N:../d:../causal:../threads:..   softmax(Q·Kᵀ·scale + mask)·V in torch ops
  peer_torch_sdpa/...                              torch 1.13: F._scaled_dot_product_attention
                                                   (is_causal=True for causal); torch 2.x:
                                                   F.scaled_dot_product_attention (its CPU flash
                                                   kernel where it picks one)
  peer_torch_sdpa/.../dtype:bf16/threads:..        torch 2.x only: the same in bf16
GFLOPS counts what attnlab counts: 4·B·H·(visible query-key pairs)·d, causal N(N+1)/2 pairs.
Each case: one warm-up call, then repetitions (one entry each, "iteration") of enough calls for
~20 ms; the report takes their median. Every path is first checked against numpy (float64) on
a small case; a path that fails is not timed, the file says why, and the exit status is 1.
Without torch: a file with no benchmarks whose context says "torch not installed", exit 0.
Series stop early, as the context's attnlab_peer_skipped says: after a case slower than
--time-cap seconds per call, and before a case whose N×N score matrices (plain, and torch
1.13's SDPA, which forms them too) would not fit in --memory-cap bytes.
"""
import argparse
import datetime
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
B, H = 1, 8
DEFAULT_N = ",".join(str(1 << k) for k in range(7, 15))  # the default suite: 128..16384


def cpu_model():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def git_commit():
  try:
    return subprocess.run(["git", "-C", HERE, "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def mem_available():
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 8 << 30


def base_context(args):
  return {
      "host_name": socket.gethostname(),
      "date": datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(
          timespec="seconds"),
      "executable": f"{sys.executable} {os.path.relpath(__file__)}",
      "num_cpus": os.cpu_count(),
      "attnlab_cpu_model": cpu_model(),
      "attnlab_git_commit": git_commit(),
      "load_avg": list(os.getloadavg()),
      "library_build_type": "release",
      "attnlab_peer_python": sys.executable,
      "attnlab_peer_args": " ".join(sys.argv[1:]),
  }


def torch_version(torch):
  """'1.13.1 (Debian python3-torch 1.13.1+dfsg-4)' for Debian's build (whose __version__ reads
  1.13.0a0), else torch.__version__."""
  v = torch.__version__
  if torch.__file__.startswith("/usr/lib/python3/dist-packages/"):
    try:
      deb = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "python3-torch"],
                           capture_output=True, text=True, check=True).stdout.strip()
      if deb:
        return f"{deb.split('+')[0].split('-')[0]} (Debian python3-torch {deb})"
    except (OSError, subprocess.CalledProcessError):
      pass
  return v


def loaded_blas():
  """The BLAS and oneDNN libraries this process has mapped (after a matmul ran)."""
  libs = set()
  try:
    with open("/proc/self/maps") as f:
      for line in f:
        p = line.split()[-1]
        if any(k in os.path.basename(p) for k in ("blas", "mkl", "dnnl", "mkldnn")):
          libs.add(os.path.realpath(p))
  except OSError:
    pass
  return ", ".join(sorted(libs)) or "none found"


class Paths:
  """The attention paths of the torch at hand: name -> fn(q, k, v, causal)."""

  def __init__(self, torch):
    self.torch = torch
    F = torch.nn.functional
    self.major = int(torch.__version__.split(".")[0])
    self.v2 = hasattr(F, "scaled_dot_product_attention")
    self.masks = {}

    def plain(q, k, v, causal):
      s = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
      if causal:
        s = s.masked_fill(self.upper(s.shape[-1], q.device), float("-inf"))
      return torch.matmul(torch.softmax(s, dim=-1), v)

    if self.v2:
      def sdpa(q, k, v, causal):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
      sdpa_label = "F.scaled_dot_product_attention"
    else:  # 1.13: (query, key, value, attn_mask, dropout_p, need_attn_weights, is_causal)
      def sdpa(q, k, v, causal):
        return F._scaled_dot_product_attention(q, k, v, None, 0.0, False, causal)[0]
      sdpa_label = "F._scaled_dot_product_attention"
    self.fns = {"peer_torch_plain": plain, "peer_torch_sdpa": sdpa}
    self.labels = {"peer_torch_plain": "matmul+softmax+matmul", "peer_torch_sdpa": sdpa_label}
    # (name, dtype): bf16 only through 2.x's SDPA (1.13 has no CPU bf16 attention to speak of).
    self.cases = [("peer_torch_plain", "f32"), ("peer_torch_sdpa", "f32")]
    if self.v2:
      self.cases.append(("peer_torch_sdpa", "bf16"))

  def upper(self, n, device):
    if n not in self.masks:
      self.masks = {n: self.torch.ones(n, n, dtype=self.torch.bool, device=device).triu(1)}
    return self.masks[n]

  def materializes_scores(self, name):
    return name == "peer_torch_plain" or not self.v2


def reference(q, k, v, causal):
  import numpy as np
  s = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
  if causal:
    n = s.shape[-1]
    s = np.where(np.triu(np.ones((n, n), dtype=bool), 1), -np.inf, s)
  s = np.exp(s - s.max(axis=-1, keepdims=True))
  return (s / s.sum(axis=-1, keepdims=True)) @ v


def check_paths(torch, paths):
  """None when every path agrees with the float64 reference on small cases, else a message."""
  import numpy as np
  g = torch.Generator().manual_seed(15)
  for n, d in ((37, 16), (64, 64)):
    q, k, v = (torch.randn(B, 2, n, d, generator=g) * 2 for _ in range(3))
    qd, kd, vd = (x.double().numpy() for x in (q, k, v))
    for causal in (False, True):
      want = reference(qd, kd, vd, causal)
      for name, dt in paths.cases:
        tdt = torch.bfloat16 if dt == "bf16" else torch.float32
        got = paths.fns[name](q.to(tdt), k.to(tdt), v.to(tdt), causal).double().numpy()
        # fp32: rounding of d-long dot products and N-long sums of values of magnitude ~2..8;
        # bf16: 8-bit significands of the inputs and the output.
        tol = (3e-2 if dt == "bf16" else 1e-4) * max(1.0, float(np.abs(want).max()))
        err = float(np.abs(got - want).max()) if got.shape == want.shape else math.inf
        if not (err <= tol):  # NaN fails too
          return (f"{name} {dt} N={n} d={d} causal={int(causal)}: max |error| {err:.3g} > "
                  f"{tol:.3g} against the float64 reference (shape {tuple(got.shape)})")
  return None


def time_case(fn, q, k, v, causal, repetitions, rep_time=0.02):
  """[seconds per call] of each repetition, after one warm-up call."""
  t0 = time.perf_counter()
  fn(q, k, v, causal)
  warm = time.perf_counter() - t0
  calls = max(1, int(rep_time / max(warm, 1e-6)))
  out = []
  for _ in range(repetitions if warm < 1.0 else min(repetitions, 3)):
    t0 = time.perf_counter()
    for _ in range(calls):
      fn(q, k, v, causal)
    out.append((time.perf_counter() - t0) / calls)
  return out, calls


def entries(name, times, calls, flops, dense_flops, label, n, d, causal):
  out = []
  for i, t in enumerate(times):
    out.append({
        "name": name, "run_name": name, "run_type": "iteration", "repetitions": len(times),
        "repetition_index": i, "threads": 1, "iterations": calls, "real_time": t * 1e3,
        "cpu_time": t * 1e3, "time_unit": "ms", "GFLOPS": flops / t / 1e9,
        "GFLOPS_dense": dense_flops / t / 1e9, "B": float(B), "H": float(H), "Lq": float(n),
        "Lk": float(n), "d": float(d), "causal": float(causal), "label": label})
  return out


def ints(text):
  return [int(x) for x in text.split(",") if x]


def write(path, context, benchmarks):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump({"context": context, "benchmarks": benchmarks}, f, indent=1)
    f.write("\n")
  os.replace(tmp, path)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", required=True, help="the JSON file to write")
  ap.add_argument("--n", default=DEFAULT_N, help="N = Lq = Lk values (default: %(default)s)")
  ap.add_argument("--max-n", type=int, default=16384, help="largest N (default: %(default)s)")
  ap.add_argument("--dims", default="64,128", help="head dims (default: %(default)s)")
  ap.add_argument("--causal", default="0,1", help="mask: 0 dense, 1 causal (default: %(default)s)")
  ap.add_argument("--threads", default=None,
                  help="thread counts (default: 1 and the machine's CPU count)")
  ap.add_argument("--time-cap", type=float, default=5.0,
                  help="a series stops after a case slower than this per call, seconds "
                       "(default: %(default)s)")
  ap.add_argument("--memory-cap", type=float, default=None,
                  help="bytes the N×N score matrices may take (default: half of MemAvailable)")
  ap.add_argument("--repetitions", type=int, default=5, help="default: %(default)s")
  ap.add_argument("--paths", default="", help="only these names, e.g. peer_torch_sdpa")
  args = ap.parse_args()
  context = base_context(args)
  try:
    import torch
  except ImportError as e:
    context["attnlab_peer"] = f"torch not installed ({sys.executable}: {e})"
    write(args.out, context, [])
    print(f"peers.py: torch is not importable by {sys.executable}; wrote {args.out} with no "
          "benchmarks (install python3-torch, or see README \"Peers\")", file=sys.stderr)
    return 0
  version = torch_version(torch)
  paths = Paths(torch)
  if args.paths:
    keep = set(args.paths.split(","))
    paths.cases = [c for c in paths.cases if c[0] in keep]
  context["attnlab_peer"] = f"torch {version}"
  context["attnlab_peer_torch_file"] = torch.__file__
  context["attnlab_peer_torch_parallel"] = torch.__config__.parallel_info().splitlines()[-1]
  bad = check_paths(torch, paths)
  context["attnlab_peer_blas"] = loaded_blas()
  if bad:
    context["attnlab_peer"] = f"torch {version} failed its check, not timed: {bad}"
    write(args.out, context, [])
    print(f"peers.py: torch {version} gives wrong results, nothing timed: {bad}",
          file=sys.stderr)
    return 1
  ns = sorted(n for n in ints(args.n) if n <= args.max_n)
  threads = ints(args.threads) if args.threads else sorted({1, os.cpu_count() or 1})
  memory_cap = args.memory_cap or mem_available() / 2
  context["attnlab_peer_caps"] = (f"max N {args.max_n}; a series stops after a case over "
                                  f"{args.time_cap:g} s per call; score matrices within "
                                  f"{memory_cap / 2**30:.1f} GiB")
  skipped = []
  benchmarks = []
  g = torch.Generator().manual_seed(1)
  for t in threads:
    torch.set_num_threads(t)
    for d in ints(args.dims):
      for causal in ints(args.causal):
        for name, dt in paths.cases:
          tdt = torch.bfloat16 if dt == "bf16" else torch.float32
          for n in ns:
            where = f"{name}{'' if dt == 'f32' else ' ' + dt} d={d} causal={causal} threads={t}"
            # plain holds the scores, their masked copy and the softmax at once (3 N×N)
            need = 3 * B * H * n * n * (2 if dt == "bf16" else 4)
            if paths.materializes_scores(name) and need > memory_cap:
              skipped.append(f"{where}: N >= {n} (score matrices {need / 2**30:.1f} GiB > "
                             f"the memory cap)")
              break
            q, k, v = (torch.randn(B, H, n, d, generator=g).to(tdt) for _ in range(3))
            times, calls = time_case(paths.fns[name], q, k, v, bool(causal), args.repetitions)
            pairs = n * (n + 1) // 2 if causal else n * n
            dense = 4.0 * B * H * n * n * d
            full = (f"{name}/N:{n}/d:{d}/causal:{causal}"
                    + ("" if dt == "f32" else f"/dtype:{dt}") + f"/threads:{t}")
            label = f"path=torch {version} {paths.labels[name]}"
            benchmarks += entries(full, times, calls, 4.0 * B * H * pairs * d, dense, label, n,
                                  d, causal)
            med = statistics.median(times)
            print(f"{full}: {med * 1e3:.3f} ms, {4.0 * B * H * pairs * d / med / 1e9:.1f} "
                  "GFLOP/s", file=sys.stderr)
            write(args.out, dict(context, attnlab_peer_skipped="; ".join(skipped) or "none"),
                  benchmarks)
            if med > args.time_cap and n != ns[-1]:
              skipped.append(f"{where}: N > {n} ({med:.1f} s per call > --time-cap "
                             f"{args.time_cap:g} s)")
              break
  context["attnlab_peer_skipped"] = "; ".join(skipped) or "none"
  write(args.out, context, benchmarks)
  print(args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
