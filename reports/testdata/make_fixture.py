#!/usr/bin/python3
"""Writes a SYNTHETIC stand-in for the quick suite's JSON, following BENCH_CONTRACT.md.

TEMPORARY: the report test must run on a real quick-suite output. When the benchmark lands,
replace reports/testdata/quick.json and quick-accuracy.json with a real run:
  build/release/bench/attnlab_bench --suite=quick --benchmark_out=reports/testdata/quick.json \
      --benchmark_out_format=json
  build/release/bench/attnlab_bench --accuracy --accuracy_out reports/testdata/quick-accuracy.json
and delete this file. Its numbers are made up (a toy rate model plus seeded noise); the context
says so (attnlab_suite = "synthetic-fixture").

Usage: make_fixture.py --variants naive,blas,flash [--host H] [--repetitions 3] [--out-dir DIR]
The variant names come from the command line: this file keeps no list of them.
"""
import argparse
import json
import os
import random


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--variants", required=True, help="comma-separated variant names")
  ap.add_argument("--host", default="fixturehost")
  ap.add_argument("--date", default="2026-11-21T06:00:00+00:00")
  ap.add_argument("--repetitions", type=int, default=3)
  ap.add_argument("--seed", type=int, default=1)
  ap.add_argument("--ns", default="128,256,512,1024,2048", help="sweep N values")
  ap.add_argument("--ds", default="64", help="sweep head dims")
  ap.add_argument("--out-dir", default=os.path.dirname(os.path.abspath(__file__)))
  args = ap.parse_args()
  variants = args.variants.split(",")
  rng = random.Random(args.seed)
  budget = 64 << 20  # a tiny budget so the fixture has over-budget entries

  context = {
      "date": args.date, "host_name": args.host, "executable": "bench/attnlab_bench",
      "num_cpus": 2, "mhz_per_cpu": 2596, "cpu_scaling_enabled": False,
      "caches": [
          {"type": "Data", "level": 1, "size": 32768, "num_sharing": 1},
          {"type": "Instruction", "level": 1, "size": 32768, "num_sharing": 1},
          {"type": "Unified", "level": 2, "size": 1048576, "num_sharing": 1},
          {"type": "Unified", "level": 3, "size": 33554432, "num_sharing": 2}],
      "load_avg": [0.5, 0.4, 0.3], "library_build_type": "release",
      "attnlab_git_commit": "0000000synthetic", "attnlab_hwy_target": "AVX3_ZEN4",
      "attnlab_openblas_config": "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Zen MAX_THREADS=64",
      "attnlab_openblas_version": "0.3.21", "attnlab_threads": "1,2",
      "attnlab_compiler": "GNU 12.2.0", "attnlab_build_type": "Release",
      "attnlab_suite": "synthetic-fixture", "attnlab_memory_budget_bytes": str(budget),
      "attnlab_cpu_model": "AMD EPYC (synthetic fixture)"}
  benches = []

  # toy per-thread peak rates (GFLOP/s) by position in the given list, plus a fixed overhead
  def rate(index, n):
    peak = [6.0, 55.0, 75.0, 40.0, 30.0][index % 5]
    return peak * n / (n + [64, 256, 128, 512, 300][index % 5])

  def emit(name, seconds, counters, error=None):
    run = name + "/real_time"
    reps = []
    for r in range(args.repetitions):
      e = {"name": run, "family_index": len(benches), "per_family_instance_index": 0,
           "run_name": run, "run_type": "iteration", "repetitions": args.repetitions,
           "repetition_index": r, "threads": 1}
      if error:
        e.update({"error_occurred": True, "error_message": error, "iterations": 0,
                  "real_time": 0.0, "cpu_time": 0.0, "time_unit": "ns"})
        benches.append(e)
        continue
      t = seconds * (1 + 0.02 * rng.gauss(0, 1))
      e.update({"iterations": max(1, int(0.5 / t)), "real_time": t * 1e9,
                "cpu_time": t * 1e9, "time_unit": "ns"})
      for k, v in counters.items():
        e[k] = v * seconds / t if k in ("GFLOPS", "GFLOPS_dense", "GBps") else v
      reps.append(e)
      benches.append(e)
    if error or args.repetitions < 2:
      return
    import statistics
    for agg in ("mean", "median", "stddev", "cv"):
      a = {"name": run + "_" + agg, "family_index": reps[0]["family_index"],
           "per_family_instance_index": 0, "run_name": run, "run_type": "aggregate",
           "repetitions": args.repetitions, "threads": 1, "aggregate_name": agg,
           "aggregate_unit": "percentage" if agg == "cv" else "time",
           "iterations": args.repetitions, "time_unit": "ns"}
      for k in ["real_time", "cpu_time"] + list(counters):
        xs = [r[k] for r in reps]
        m = statistics.mean(xs)
        a[k] = {"mean": m, "median": statistics.median(xs), "stddev": statistics.stdev(xs),
                "cv": statistics.stdev(xs) / m if m else 0.0}[agg]
      benches.append(a)

  B, H = 1, 8
  for threads in (1, 2):
    for d in [int(x) for x in args.ds.split(",")]:
      for causal in (0, 1):
        for n in [int(x) for x in args.ns.split(",")]:
          pairs = n * n if not causal else n * (n + 1) // 2
          dense = 4.0 * B * H * n * n * d
          eff = 4.0 * B * H * pairs * d
          params = {"B": B, "H": H, "Hkv": H, "Lq": n, "Lk": n, "d": d, "causal": causal,
                    "threads": threads}
          tail = f"N:{n}/d:{d}/causal:{causal}/threads:{threads}"
          bytes_min = 4.0 * B * H * n * d * 4
          csec = dense / (90e9 * threads * n / (n + 96))
          emit(f"ceiling_sgemm/{tail}", csec,
               dict(params, GFLOPS=dense / csec / 1e9, GFLOPS_dense=dense / csec / 1e9))
          for i, v in enumerate(variants):
            quadratic = i == 0
            ws = 4.0 * B * H * n * n if quadratic else 4.0 * threads * 64 * (d + 64) * 2
            if ws > budget:
              emit(f"{v}/{tail}", 0, {}, error=(
                  f"over budget: {v} needs {ws / 2**20:.1f} MiB of scores, budget "
                  f"{budget / 2**20:.1f} MiB (synthetic)"))
              continue
            sec = (eff if i > 0 else dense) / (rate(i, n) * 1e9 * threads * 0.97)
            emit(f"{v}/{tail}", sec, dict(
                params, GFLOPS=eff / sec / 1e9, GFLOPS_dense=dense / sec / 1e9,
                workspace_bytes=ws, workspace_declared_bytes=ws * 1.25,
                peak_rss_delta_bytes=max(0.0, ws + 4096 * rng.randint(-2, 30)),
                bytes_min=bytes_min))
    # decode, MHA and GQA
    for hkv in (8, 2):
      for lk in (512, 2048, 8192, 32768):
        d = 64
        kv = 2.0 * B * hkv * lk * d * 4
        tail = f"decode/Lk:{lk}/d:{d}/Hkv:{hkv}/threads:{threads}"
        for i, v in enumerate(variants):
          gbps = [3.0, 12.0, 30.0, 20.0, 15.0][i % 5] * threads * (0.6 + 0.4 * lk / (lk + 2048))
          sec = kv / (gbps * 1e9)
          dense = 4.0 * B * H * lk * d
          emit(f"{v}/{tail}", sec, dict(
              B=B, H=H, Hkv=hkv, Lq=1, Lk=lk, d=d, causal=0, threads=threads, GBps=gbps,
              GFLOPS=dense / sec / 1e9, GFLOPS_dense=dense / sec / 1e9,
              workspace_bytes=4096.0 * threads, workspace_declared_bytes=8192.0 * threads,
              peak_rss_delta_bytes=0.0, bytes_min=kv))
    for nbytes in (1 << 20, 1 << 28):
      gbps = (60.0 if nbytes < (1 << 24) else 25.0) * (1 + 0.6 * (threads - 1))
      emit(f"ceiling_stream/bytes:{nbytes}/threads:{threads}", nbytes / (gbps * 1e9),
           dict(threads=threads, GBps=gbps))
    # gqa, window, cross: one case each
    for tail, lq, lk, h, hkv, pairs_fn in (
        (f"gqa/N:1024/d:128/causal:1/threads:{threads}", 1024, 1024, 32, 8,
         lambda: 1024 * 1025 // 2),
        (f"window/N:2048/d:64/w:256/threads:{threads}", 2048, 2048, 8, 8,
         lambda: sum(min(q, 256) + 1 for q in range(2048))),
        (f"cross/Lq:256/Lk:2048/d:64/threads:{threads}", 256, 2048, 8, 8, lambda: 256 * 2048)):
      d = int(tail.split("/d:")[1].split("/")[0])
      dense = 4.0 * B * h * lq * lk * d
      eff = 4.0 * B * h * pairs_fn() * d
      params = dict(B=B, H=h, Hkv=hkv, Lq=lq, Lk=lk, d=d, threads=threads)
      csec = dense / (90e9 * threads)
      emit(f"ceiling_sgemm/{tail}", csec, dict(params, GFLOPS=dense / csec / 1e9,
                                                GFLOPS_dense=dense / csec / 1e9))
      for i, v in enumerate(variants):
        sec = eff / (rate(i, lk) * 1e9 * threads * (0.9 if i else 1.0))
        emit(f"{v}/{tail}", sec, dict(params, GFLOPS=eff / sec / 1e9,
                                      GFLOPS_dense=dense / sec / 1e9,
                                      workspace_bytes=4.0 * lq * lk if i == 0 else 65536.0,
                                      workspace_declared_bytes=4.0 * lq * lk if i == 0
                                      else 65536.0, peak_rss_delta_bytes=0.0,
                                      bytes_min=4.0 * (2 * lq + 2 * lk) * h * d))
    # layer
    for n in (512, 2048):
      for i, v in enumerate(variants):
        d, dm = 64, 512
        att = 4.0 * B * H * n * n * d / (rate(i, n) * 1e9 * threads)
        proj = 4 * 2.0 * n * dm * dm / (80e9 * threads)
        emit(f"layer/{v}/N:{n}/d:{d}/threads:{threads}", att + proj,
             dict(B=B, H=H, N=n, d=d, threads=threads, attention_share=att / (att + proj)))

  with open(os.path.join(args.out_dir, "quick.json"), "w") as f:
    json.dump({"context": context, "benchmarks": benches}, f)

  results = []
  for v_i, v in enumerate(variants):
    for n in (128, 512, 2048):
      for d in (64, 128):
        for mask in ("none", "causal", "window", "additive", "key_lengths"):
          err = 1.2e-7 * (1 + v_i) * (n / 128) ** 0.5 * rng.uniform(0.5, 1.5)
          results.append({"variant": v, "N": n, "d": d, "mask": mask, "max_abs_error": err,
                          "max_rel_error": err * 40, "bound_ratio": err / 2.4e-5})
  acc_ctx = {k: v for k, v in context.items() if k.startswith("attnlab_")}
  acc_ctx.update(host_name=args.host, date=args.date)
  with open(os.path.join(args.out_dir, "quick-accuracy.json"), "w") as f:
    json.dump({"context": acc_ctx, "results": results}, f)


if __name__ == "__main__":
  main()
