#!/usr/bin/python3
"""Peers: PyTorch attention timed on the bench's sweep shapes, what a user would pick instead of
attnlab. Optional tooling: nothing in the build or the tests needs torch.

  bench/peers.py --out results/<stem>-peers.json [--n 128,256,...] [--max-n 16384]
                 [--dims 64,128] [--threads 1,2] [--passes forward,backward] [--time-cap 5]
                 [--repetitions 5]
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
  grad/peer_torch_plain/N:../d:../causal:../threads:..   the backward pass (--passes backward):
  grad/peer_torch_sdpa/...                         dQ, dK, dV of the same fp32 paths by torch
                                                   autograd, named like attnlab_bench's
                                                   grad/<variant>/... cases
GFLOPS counts what attnlab counts: forward 4·B·H·(visible query-key pairs)·d, backward
2·B·H·pairs·(3·d + 2·d) (FlashAttention-2's five products), causal N(N+1)/2 pairs per head.
A backward case times torch.autograd.grad(O, (Q, K, V), dO, retain_graph=True) alone: the
forward that builds O's graph (and saves what the backward reads: softmax(S), Q, K, V) runs
once per case before the timing, and each timed call redoes the whole backward from it.
Each case: one warm-up call, then repetitions (one entry each, "iteration") of enough calls for
~20 ms; the report takes their median. Every path is first checked against numpy (float64) on
small cases, the backward's dQ, dK, dV too; what fails is not timed (a forward failure stops
everything, a backward failure that path's backward), the file says why, and the exit status
is 1. Without torch: a file with no benchmarks whose context says "torch not installed", exit 0.
Series stop early, as the context's attnlab_peer_skipped (forward) and
attnlab_peer_backward_skipped say: after a case slower than --time-cap seconds per call, and
before a case whose N×N score matrices (plain, and torch 1.13's SDPA, which forms them too)
would not fit in --memory-cap bytes: 3 of them per head in a forward, 4 in a backward (the
saved softmax, dP, dS and the masked or scaled dS).
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
    # The backward: fp32 only, as attnlab's grad cases are.
    self.grad_cases = [("peer_torch_plain", "f32"), ("peer_torch_sdpa", "f32")]

  def upper(self, n, device):
    if n not in self.masks:
      self.masks = {n: self.torch.ones(n, n, dtype=self.torch.bool, device=device).triu(1)}
    return self.masks[n]

  def materializes_scores(self, name):
    return name == "peer_torch_plain" or not self.v2

  def backward(self, name, q, k, v, d_o, causal):
    """A zero-argument call that computes (dQ, dK, dV) of path `name` at q, k, v for the output
    gradient d_o with torch autograd: the forward runs here, once, and the call runs only the
    backward (retain_graph=True keeps the saved tensors, so every call redoes all of it)."""
    torch = self.torch
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    o = self.fns[name](q, k, v, causal)
    return lambda: torch.autograd.grad(o, (q, k, v), d_o, retain_graph=True)


def reference(q, k, v, causal):
  import numpy as np
  s = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
  if causal:
    n = s.shape[-1]
    s = np.where(np.triu(np.ones((n, n), dtype=bool), 1), -np.inf, s)
  s = np.exp(s - s.max(axis=-1, keepdims=True))
  return (s / s.sum(axis=-1, keepdims=True)) @ v


def reference_grad(q, k, v, d_o, causal):
  """(dQ, dK, dV) of reference() for the output gradient d_o, in float64: with P the softmax,
  dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P∘(dP − rowsum(dP∘P)), dQ = dS·K·scale, dK = dSᵀ·Q·scale (a
  masked pair has P = 0, so dS = 0 there)."""
  import numpy as np
  scale = 1 / math.sqrt(q.shape[-1])
  s = q @ np.swapaxes(k, -1, -2) * scale
  if causal:
    n = s.shape[-1]
    s = np.where(np.triu(np.ones((n, n), dtype=bool), 1), -np.inf, s)
  p = np.exp(s - s.max(axis=-1, keepdims=True))
  p /= p.sum(axis=-1, keepdims=True)
  dp = d_o @ np.swapaxes(v, -1, -2)
  ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
  return ds @ k * scale, np.swapaxes(ds, -1, -2) @ q * scale, np.swapaxes(p, -1, -2) @ d_o


def check_paths(torch, paths, cases):
  """None when every (name, dtype) of `cases` agrees with the float64 reference on small cases,
  else a message."""
  import numpy as np
  g = torch.Generator().manual_seed(15)
  for n, d in ((37, 16), (64, 64)):
    q, k, v = (torch.randn(B, 2, n, d, generator=g) * 2 for _ in range(3))
    qd, kd, vd = (x.double().numpy() for x in (q, k, v))
    for causal in (False, True):
      want = reference(qd, kd, vd, causal)
      for name, dt in cases:
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


def check_backward(torch, paths):
  """{name: message} of the backward paths whose dQ, dK, dV disagree with the float64
  reference gradients on small cases (empty when all agree). What is checked is what is timed:
  the second call of Paths.backward (the first is the warm-up)."""
  import numpy as np
  bad = {}
  g = torch.Generator().manual_seed(18)
  for n, d in ((37, 16), (64, 64)):
    q, k, v, d_o = (torch.randn(B, 2, n, d, generator=g) * 2 for _ in range(4))
    qd, kd, vd, dod = (x.double().numpy() for x in (q, k, v, d_o))
    for causal in (False, True):
      want = reference_grad(qd, kd, vd, dod, causal)
      for name, _ in paths.grad_cases:
        if name in bad:
          continue
        call = paths.backward(name, q, k, v, d_o, causal)
        call()
        got = [x.double().numpy() for x in call()]
        for what, w, gt in zip(("dQ", "dK", "dV"), want, got):
          # fp32 rounding of the d-long (S, dP) and N-long (dQ, dK, dV, the softmax) sums, the
          # score error carried through exp: about 2e-6 of the largest gradient measured at
          # these sizes (inputs ~N(0, 4)); 1e-4 of it leaves room and still catches any wrong
          # scale, mask or transposition (errors of order 1).
          tol = 1e-4 * max(1.0, float(np.abs(w).max()))
          err = float(np.abs(gt - w).max()) if gt.shape == w.shape else math.inf
          if not (err <= tol):  # NaN fails too
            bad[name] = (f"{name} backward {what} N={n} d={d} causal={int(causal)}: max "
                         f"|error| {err:.3g} > {tol:.3g} against the float64 reference "
                         f"gradient (shape {tuple(gt.shape)})")
            break
  return bad


def time_case(call, repetitions, rep_time=0.02):
  """[seconds per call] of each repetition of the zero-argument `call`, after one warm-up
  call."""
  t0 = time.perf_counter()
  call()
  warm = time.perf_counter() - t0
  calls = max(1, int(rep_time / max(warm, 1e-6)))
  out = []
  for _ in range(repetitions if warm < 1.0 else min(repetitions, 3)):
    t0 = time.perf_counter()
    for _ in range(calls):
      call()
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


PASSES = ("forward", "backward")
# Bytes of N×N matrices per head a path that forms its scores holds at once (per element): a
# forward holds the scores, their masked copy and the softmax; a backward the saved softmax,
# dP = dO·Vᵀ, dS and dS masked or scaled.
SCORE_MATRICES = {"forward": 3, "backward": 4}
# What a backward case times (the context's attnlab_peer_backward and each entry's label).
BACKWARD_TIMED = ("torch.autograd.grad(O, (Q, K, V), dO, retain_graph=True) alone, the forward "
                  "that builds O's graph run once per case outside the timing")


def run_series(torch, paths, args, pass_, name, dt, d, causal, t, ns, memory_cap, version, g,
               benchmarks, skipped, progress):
  """Times one series (a path, pass, d, causal and thread count over N), appending its entries
  to `benchmarks` and why it stopped early to `skipped`; `progress()` writes the file after each
  case."""
  tdt = torch.bfloat16 if dt == "bf16" else torch.float32
  backward = pass_ == "backward"
  for n in ns:
    where = (f"{'grad/' if backward else ''}{name}{'' if dt == 'f32' else ' ' + dt} d={d} "
             f"causal={causal} threads={t}")
    need = SCORE_MATRICES[pass_] * B * H * n * n * (2 if dt == "bf16" else 4)
    if paths.materializes_scores(name) and need > memory_cap:
      skipped.append(f"{where}: N >= {n} (score matrices {need / 2**30:.1f} GiB > the memory "
                     "cap)")
      return
    q, k, v = (torch.randn(B, H, n, d, generator=g).to(tdt) for _ in range(3))
    pairs = n * (n + 1) // 2 if causal else n * n
    if backward:
      d_o = torch.randn(B, H, n, d, generator=g)
      call = paths.backward(name, q, k, v, d_o, bool(causal))
      per_pair = 2.0 * (3 * d + 2 * d)
      label = (f"path=torch {version} {paths.labels[name]}, autograd backward (forward "
               "outside the timing)")
    else:
      fn = paths.fns[name]
      call = lambda: fn(q, k, v, bool(causal))  # noqa: E731
      per_pair = 4.0 * d
      label = f"path=torch {version} {paths.labels[name]}"
    times, calls = time_case(call, args.repetitions)
    del call  # frees the backward's graph before the next N
    full = (("grad/" if backward else "") + f"{name}/N:{n}/d:{d}/causal:{causal}"
            + ("" if dt == "f32" else f"/dtype:{dt}") + f"/threads:{t}")
    flops = per_pair * B * H * pairs
    benchmarks += entries(full, times, calls, flops, per_pair * B * H * n * n, label, n, d,
                          causal)
    med = statistics.median(times)
    print(f"{full}: {med * 1e3:.3f} ms, {flops / med / 1e9:.1f} GFLOP/s", file=sys.stderr)
    progress()
    if med > args.time_cap and n != ns[-1]:
      skipped.append(f"{where}: N > {n} ({med:.1f} s per call > --time-cap {args.time_cap:g} s)")
      return


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
  ap.add_argument("--passes", default=",".join(PASSES),
                  help="forward, backward (grad/peer_*: dQ, dK, dV by torch autograd) or both "
                       "(default: %(default)s)")
  ap.add_argument("--time-cap", type=float, default=5.0,
                  help="a series stops after a case slower than this per call, seconds "
                       "(default: %(default)s)")
  ap.add_argument("--memory-cap", type=float, default=None,
                  help="bytes the N×N score matrices may take (default: half of MemAvailable)")
  ap.add_argument("--repetitions", type=int, default=5, help="default: %(default)s")
  ap.add_argument("--paths", default="", help="only these names, e.g. peer_torch_sdpa")
  args = ap.parse_args()
  passes = [x for x in args.passes.split(",") if x]
  if not passes or any(x not in PASSES for x in passes):
    ap.error(f"--passes {args.passes!r}: want forward, backward or both, comma-separated")
  context = base_context(args)
  context["attnlab_peer_passes"] = ",".join(x for x in PASSES if x in passes)
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
    paths.grad_cases = [c for c in paths.grad_cases if c[0] in keep]
  if "forward" not in passes:
    paths.cases = []
  if "backward" not in passes:
    paths.grad_cases = []
  context["attnlab_peer"] = f"torch {version}"
  context["attnlab_peer_torch_file"] = torch.__file__
  context["attnlab_peer_torch_parallel"] = torch.__config__.parallel_info().splitlines()[-1]
  # The forward of every path either pass times: a backward is only as right as its forward.
  bad = check_paths(torch, paths, paths.cases + [c for c in paths.grad_cases
                                                  if c not in paths.cases])
  context["attnlab_peer_blas"] = loaded_blas()
  if bad:
    context["attnlab_peer"] = f"torch {version} failed its check, not timed: {bad}"
    write(args.out, context, [])
    print(f"peers.py: torch {version} gives wrong results, nothing timed: {bad}",
          file=sys.stderr)
    return 1
  status = 0
  if "backward" in passes:
    bad = check_backward(torch, paths)
    context["attnlab_peer_backward"] = BACKWARD_TIMED
    if bad:  # those paths' backward is not timed; the others' is
      why = "; ".join(bad[name] for name in sorted(bad))
      context["attnlab_peer_backward"] += (f"; torch {version} failed the backward check, "
                                           f"not timed: {why}")
      print(f"peers.py: torch {version} gives wrong gradients, not timed: {why}",
            file=sys.stderr)
      paths.grad_cases = [c for c in paths.grad_cases if c[0] not in bad]
      status = 1
  ns = sorted(n for n in ints(args.n) if n <= args.max_n)
  threads = ints(args.threads) if args.threads else sorted({1, os.cpu_count() or 1})
  memory_cap = args.memory_cap or mem_available() / 2
  context["attnlab_peer_caps"] = (f"max N {args.max_n}; a series stops after a case over "
                                  f"{args.time_cap:g} s per call; score matrices within "
                                  f"{memory_cap / 2**30:.1f} GiB")
  skipped = {"forward": [], "backward": []}
  benchmarks = []

  def with_skipped():
    out = dict(context)
    if "forward" in passes:
      out["attnlab_peer_skipped"] = "; ".join(skipped["forward"]) or "none"
    if "backward" in passes:
      out["attnlab_peer_backward_skipped"] = "; ".join(skipped["backward"]) or "none"
    return out

  g = torch.Generator().manual_seed(1)
  for t in threads:
    torch.set_num_threads(t)
    for d in ints(args.dims):
      for causal in ints(args.causal):
        for pass_ in PASSES:
          for name, dt in (paths.cases if pass_ == "forward" else paths.grad_cases):
            run_series(torch, paths, args, pass_, name, dt, d, causal, t, ns, memory_cap,
                       version, g, benchmarks, skipped[pass_],
                       lambda: write(args.out, with_skipped(), benchmarks))
  write(args.out, with_skipped(), benchmarks)
  print(args.out)
  return status


if __name__ == "__main__":
  sys.exit(main())
