#!/usr/bin/python3
"""Test of reports/generate.py on the checked-in quick-suite fixture (run by ctest).

Reads reports/testdata/quick.json and quick-accuracy.json; replacing the fixture is a copy of
those two files. Expectations are derived from the fixture itself with a parse independent of
the generator's: every (d, causal, threads) sweep group must get its time, GFLOPS and memory
plots and its tables, every decode group its plot, every scenario its table, every over-budget
case its entry, the summary must name the fastest variant at the largest N of each group, every
referenced PNG must exist and be a valid PNG (all chunk CRCs checked), and compare mode must flag
a case that was made 10x slower and nothing else.

Then the failure paths (issue 21): malformed copies of the fixture must each be refused with
exit 1 and one stderr line naming the file, entry and field; a copy cut off at any byte must
give exactly its complete entries and one warning; interrupted cases must read "not run"; and
a regeneration that fails part way (generate.save patched to raise, in this process) must
leave the old report directory byte for byte as it was.

Ceilings: the fixture predates ceiling_fma (its Ceilings section must be one line); a copy with
synthetic repeated ceiling_fma and ceiling_stream entries must get the roofline first, the
fraction-of-ceiling_fma tables (median ceiling_fma) and decode against the best stream run.

Peers: a synthetic bench/peers.py file (peer_* cases at flash's shapes, slower by known factors)
must give peer columns, speedup tables and a summary line per group; an empty peer file (torch
not installed) and no peer file must each give one "Peers: not in this run" line.

Backward pass: grad/<variant> cases beside the fixture's sweep cases (known time ratios, one
variant failing its check) must leave every forward section as it was and give the Backward
pass section its plot, rows, causal efficiency and summary line; a synthetic file at N >= 2048
must give the summary against issue 18's targets and show an over-budget backward case.
The peers' backward (grad/peer_* cases in a synthetic peer file, slower than flash's by known
factors, the fastest peer changing with the shape) must give peer rows, a "flash against the
peers" table with the best peer per N and the summary's speedup over the best peer, and leave
every forward section as it was.

Usage: test_generate.py [--work-dir DIR] [--testdata DIR]
"""
import argparse
import contextlib
import copy
import errno
import glob
import hashlib
import io
import json
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
GENERATE = os.path.join(HERE, "generate.py")
FIXED = ("ceiling_sgemm", "ceiling_matmul_bf16", "ceiling_stream", "ceiling_fma", "layer", "grad",
         "ukernel")
VARIANT_FAMILIES = ("layer", "grad")  # their second token is the variant

sys.path.insert(0, HERE)
import attnlab_results as ar  # noqa: E402
import generate  # noqa: E402

failures = []


def check(cond, what):
  if not cond:
    failures.append(what)
    print(f"FAIL: {what}")
  return cond


def run_generate(args):
  cmd = [sys.executable, GENERATE] + args
  p = subprocess.run(cmd, capture_output=True, text=True)
  if p.returncode != 0:
    print(p.stdout, p.stderr)
    raise SystemExit(f"FAIL: {' '.join(cmd)} exited {p.returncode}")
  path = p.stdout.strip().splitlines()[-1]
  check(path.endswith("report.md") and os.path.isfile(path),
        f"generate.py prints the path of an existing report.md (got {path!r})")
  return path


def valid_png(path):
  """Signature, IHDR with a readable size, every chunk's CRC, and an IEND."""
  with open(path, "rb") as f:
    data = f.read()
  if data[:8] != b"\x89PNG\r\n\x1a\n":
    return False
  pos, seen = 8, []
  while pos + 8 <= len(data):
    length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + length]
    crc = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
    if zlib.crc32(ctype + body) != crc:
      return False
    seen.append(ctype)
    if ctype == b"IHDR":
      w, h = struct.unpack(">II", body[:8])
      if w < 300 or h < 200:
        return False
    pos += 12 + length
    if ctype == b"IEND":
      break
  return seen[:1] == [b"IHDR"] and seen[-1:] == [b"IEND"] and b"IDAT" in seen


def check_pngs(report_path):
  folder = os.path.dirname(report_path)
  text = open(report_path).read()
  refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
  for r in refs:
    p = os.path.join(folder, r)
    check(os.path.isfile(p) and valid_png(p), f"{r} exists and is a valid PNG")
  on_disk = {f for f in os.listdir(folder) if f.endswith(".png")}
  check(on_disk == set(refs), f"every PNG in {folder} is referenced by report.md and vice versa")
  return text, refs


# ---- an independent reading of the fixture
def entries(doc):
  return doc["benchmarks"]


def case_name(e):
  return "/".join(t for t in (e.get("run_name") or e["name"]).split("/") if t != "real_time")


def parse(name):
  toks = name.split("/")
  fam = toks[0]
  rest = toks[2:] if fam in VARIANT_FAMILIES else toks[1:]
  scen = "/".join(t for t in rest if ":" not in t)
  params = dict(t.split(":", 1) for t in rest if ":" in t)
  return fam, scen, params


def median_times(doc):
  times = {}
  for e in entries(doc):
    if e.get("run_type") == "iteration" and not e.get("error_occurred"):
      times.setdefault(case_name(e), []).append(e["real_time"])
  return {k: statistics.median(v) for k, v in times.items()}


def test_report(work, testdata):
  quick = os.path.join(testdata, "quick.json")
  acc = os.path.join(testdata, "quick-accuracy.json")
  doc = json.load(open(quick))
  accdoc = json.load(open(acc))
  out = os.path.join(work, "full")
  path = run_generate([quick, "--accuracy", acc, "--label", "test", "--out-dir", out])
  for src in (quick, acc):  # the inputs travel with the report
    copied = os.path.join(os.path.dirname(path), "data", os.path.basename(src))
    check(os.path.isfile(copied) and open(copied).read() == open(src).read(),
          f"report folder holds a copy of {os.path.basename(src)}")
  ctx = doc["context"]
  check(os.path.basename(os.path.dirname(path)).startswith(str(ctx["host_name"]) + "-")
        and os.path.basename(os.path.dirname(path)).endswith("-test"),
        "report folder is <host>-<date>-<label>")
  text, refs = check_pngs(path)

  for section in ("## Summary", "## Machine and build", "## Sweep", "## Thread scaling",
                  "## Causal efficiency", "## Longest N within", "## Decode",
                  "## Other scenarios", "## End-to-end MHA layer", "## Micro-kernels",
                  "## Accuracy"):
    check(section in text, f"report has section {section!r}")
  for k, v in ctx.items():
    if k.startswith("attnlab_"):
      check(f"`{k}`" in text and str(v).replace("|", "\\|") in text,
            f"context key {k} and its value are in the report")
  check("caches" in text and "L1" in text, "caches are in the report")
  # The fixture predates ceiling_fma: one line says so, and nothing fails.
  ceilings = text.split("## Ceilings and roofline", 1)[1].split("\n## ", 1)[0].strip()
  check(ceilings.count("\n") == 0 and "no `ceiling_fma` case" in ceilings
        and not any(r.startswith("roofline_") for r in refs)
        and "**Fraction of ceiling_fma**" not in text,
        "a file without ceiling_fma: one line in Ceilings and roofline, no roofline, no table")

  names = {case_name(e) for e in entries(doc)}
  variants = sorted({parse(n)[0] for n in names if parse(n)[0] not in FIXED})
  for v in variants:
    check(v in text, f"variant {v} appears in the report")

  # sweep groups
  groups = {}
  for n in names:
    fam, scen, params = parse(n)
    if fam in FIXED or scen or "N" not in params:
      continue
    key = tuple(sorted((k, v) for k, v in params.items() if k != "N"))
    groups.setdefault(key, set()).add(n)
  check(len(groups) > 0, "the fixture has sweep groups")
  for kind in ("_time.png", "_gflops.png", "_memory.png"):
    check(sum(r.endswith(kind) for r in refs) == len(groups),
          f"one {kind} per sweep group ({len(groups)})")
  for g in groups:
    gp = dict(g)
    title = (f"d={gp['d']}, {'causal' if gp.get('causal', '0') != '0' else 'dense'}, "
             f"threads={gp['threads']}")
    check(re.search(r"^### .*" + re.escape(title), text, re.M), f"heading for group {title}")
  has_ceiling = any(n.startswith("ceiling_sgemm/") for n in names)
  for table in ("**Time per call (ms)**", "**GFLOP/s**", "**Memory: workspace",
                "**Time relative to the fastest variant"):
    check(text.count(table) == len(groups), f"table {table} once per sweep group")
  if has_ceiling:
    check(text.count("**Fraction of the sgemm ceiling**") == len(groups),
          "fraction-of-ceiling table once per sweep group")
  for b in ("naive", "blas"):
    if b in variants:
      check(text.count(f"**Speedup vs {b}**") == len(groups), f"speedup vs {b} table per group")

  # the summary names the fastest variant at the largest N of each group
  med = median_times(doc)
  summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
  for g, members in groups.items():
    ran = [(int(parse(n)[2]["N"]), med[n], parse(n)[0]) for n in members
           if n in med and parse(n)[0] not in FIXED]
    if ran:
      n_max = max(r[0] for r in ran)
      best = min((t, v) for n, t, v in ran if n == n_max)[1]
      gp = dict(g)
      line = [l for l in summary.splitlines()
              if f"d={gp['d']}, " in l and f"threads={gp['threads']}" in l
              and ("causal" if gp.get("causal", "0") != "0" else "dense") in l]
      check(line and re.search(rf"N=(\d+–)?{n_max}: \*\*{re.escape(best)}\*\*", line[0]),
            f"summary names {best} fastest at N={n_max} for {gp}")

  # over budget and failures (a layer's or backward's under `layer/<variant>`, `grad/<variant>`)
  for e in entries(doc):
    if e.get("error_occurred"):
      toks = case_name(e).split("/")
      fam = "/".join(toks[:2]) if toks[0] in VARIANT_FAMILIES else toks[0]
      if e["error_message"].startswith("over budget"):
        check(f"`{fam}`" in text and "over budget" in text, f"over-budget entry for {fam}")
      else:
        check(case_name(e) in text, f"failed case {case_name(e)} listed")

  # decode
  dgroups = {tuple(sorted((k, v) for k, v in parse(n)[2].items() if k != "Lk"))
             for n in names if parse(n)[1] == "decode" and parse(n)[0] not in FIXED}
  check(sum(r.startswith("decode_") for r in refs) == len(dgroups),
        f"one decode plot per decode group ({len(dgroups)})")
  if any(n.startswith("ceiling_stream/") for n in names) and dgroups:
    check("fraction of stream ceiling" in text, "decode table states the stream-ceiling fraction")
  # other scenarios
  for s in {parse(n)[1] for n in names if parse(n)[0] not in FIXED} - {"", "decode"}:
    check(f"### {s}\n" in text, f"table for scenario {s}")
  # layer
  if any(n.startswith("layer/") for n in names):
    check("attention kernel" in text and "%" in text.split("## End-to-end", 1)[1],
          "layer attention_share table")
  # micro-kernels: a row per (entry, shape), the FMA peak, and its fraction where it has one
  ukernels = [(parse(n)[1], parse(n)[2]) for n in names if parse(n)[0] == "ukernel"]
  if ukernels:
    body = text.split("## Micro-kernels", 1)[1].split("\n## ", 1)[0]
    check("FMA peak: **" in body, "micro-kernel section states the FMA peak")
    for entry in {e for e, _ in ukernels if e != "fma_peak"}:
      rows = [l for l in body.splitlines() if l.startswith(f"| `{entry}` |")]
      shapes = sum(1 for e, _ in ukernels if e == entry)
      check(len(rows) == shapes, f"micro-kernel {entry}: {shapes} row(s)")
    check("of the FMA peak" in summary, "the summary gives the micro-kernels' peak fractions")
  # accuracy
  for m in {r["mask"] for r in accdoc["results"]}:
    check(f"mask = {m}**" in text, f"accuracy table for mask {m}")
  if accdoc["results"]:
    worst = max(accdoc["results"], key=lambda r: r["max_abs_error"])
    check(f"{worst['max_abs_error']:.2e}" in text, "largest accuracy error appears in the report")
    check(any(r.startswith("accuracy") for r in refs), "accuracy plot")
  # a section says "not in this run" exactly when the fixture lacks its data
  parsed = [parse(n) for n in names]
  threads = {p[2].get("threads") for p in parsed if p[0] not in FIXED and not p[1]} - {None}
  present = {
      "## Sweep": bool(groups),
      "## Thread scaling": len(threads) >= 2,
      "## Decode": any(p[1] == "decode" and p[0] not in FIXED for p in parsed),
      "## Other scenarios": any(p[1] not in ("", "decode") and p[0] not in FIXED
                                for p in parsed),
      "## End-to-end MHA layer": any(p[0] == "layer" for p in parsed),
      "## Micro-kernels": any(p[0] == "ukernel" for p in parsed),
      "## Reduced precision": any("dtype" in p[2] and p[0] not in FIXED for p in parsed),
      "## Accuracy": bool(accdoc["results"]),
  }
  for section, has in present.items():
    body = text.split(section, 1)[1].split("\n## ", 1)[0]
    check(("not in this run" in body) != has,
          f"{section} says 'not in this run' exactly when the fixture lacks it ({has=})")
  has_grad = any(p[0] == "grad" for p in parsed)
  check(("## Backward pass" in text) == has_grad,
        f"a Backward pass section exactly when the fixture has grad cases ({has_grad=})")
  return doc


def test_missing_pieces(work, doc):
  """Only the sweep of one thread count, no ceilings, no accuracy: the report says what is
  missing instead of failing."""
  threads = sorted({parse(case_name(e))[2].get("threads") for e in entries(doc)} - {None})
  sub = copy.deepcopy(doc)
  sub["benchmarks"] = [e for e in entries(doc)
                       if not parse(case_name(e))[1] and parse(case_name(e))[0] not in FIXED
                       and parse(case_name(e))[2].get("threads") == threads[0]]
  path_in = os.path.join(work, "sweep-only.json")
  json.dump(sub, open(path_in, "w"))
  path = run_generate([path_in, "--out-dir", os.path.join(work, "partial")])
  text, refs = check_pngs(path)
  for section in ("## Thread scaling", "## Decode", "## Other scenarios",
                  "## End-to-end MHA layer", "## Accuracy"):
    body = text.split(section, 1)[1].split("\n## ", 1)[0]
    check("not in this run" in body, f"{section} says 'not in this run' when absent")
  check("Fraction of the sgemm ceiling: _not in this run_" in text,
        "missing ceilings are reported as not in this run")
  check(not any(r.startswith("decode_") for r in refs), "no decode plot without decode cases")


def test_two_hosts(work, doc):
  """Two hosts' JSON merge into one report: per-host plots and tables, both contexts, and the
  across-hosts figures."""
  other = copy.deepcopy(doc)
  other["context"]["host_name"] = "secondhost"
  pa, pb = os.path.join(work, "h1.json"), os.path.join(work, "h2.json")
  json.dump(doc, open(pa, "w"))
  json.dump(other, open(pb, "w"))
  path = run_generate([pa, pb, "--out-dir", os.path.join(work, "hosts")])
  host = str(doc["context"]["host_name"])
  hosts = sorted([host, "secondhost"])  # the generator orders hosts by name
  check(os.path.basename(os.path.dirname(path)).startswith("+".join(hosts) + "-"),
        "multi-host folder names both hosts")
  text, refs = check_pngs(path)
  check(f"| key | {hosts[0]} | {hosts[1]} |" in text, "context table has a column per host")
  t1 = [r for r in refs if r.startswith(f"sweep_{host}_") and r.endswith("_time.png")]
  t2 = [r for r in refs if r.startswith("sweep_secondhost_") and r.endswith("_time.png")]
  check(t1 and len(t1) == len(t2), "each host gets its own sweep plots")
  check("## Across hosts" in text and len([r for r in refs if r.startswith("hosts_")]) ==
        len(t1), "one across-hosts figure per sweep group")


def section(text, title):
  """The body of `title` (a '## ' heading) up to the next '## ' heading."""
  return text.split(title, 1)[1].split("\n## ", 1)[0]


def with_dtype(name, label):
  """`name` with the bench's dtype token before its threads token."""
  return name.replace("/threads:", f"/dtype:{label}/threads:", 1)


# Reduced element types, each this much faster than f32 (time = f32 time / speed-up).
PRECISION = {"bf16": 2.0, "f32-i8-i8-f32": 4.0}


def test_precision(work, doc, accdoc):
  """Cases with a dtype token (the fixture's variant cases copied in bf16 and f32-i8-i8-f32,
  times divided by a known factor) and accuracy rows with a dtype: the Reduced precision
  section shows each beside its f32 with that speed-up, the f32 sections are as without them,
  the accuracy table gets a dtype column, and an unknown type is refused."""
  typed = copy.deepcopy(doc)
  added = set()
  for e in entries(doc):
    fam, scen, params = parse(case_name(e))
    if fam in FIXED or scen not in ("", "decode") or "threads" not in params:
      continue
    for label, speedup in PRECISION.items():
      t = copy.deepcopy(e)
      for key in ("name", "run_name"):
        if key in t:
          t[key] = with_dtype(t[key], label)
      if not t.get("error_occurred") and t.get("aggregate_name") not in ("stddev", "cv"):
        t["real_time"] /= speedup
        t["cpu_time"] /= speedup
        t["label"] = f"Q=x K=x V=x O=x path=TEST_PATH_{label} (x)"  # what the bench ran
      typed["benchmarks"].append(t)
      added.add(case_name(t))
  check(added, "the fixture has sweep or decode cases to copy in reduced types")
  # The bf16 vendor ceiling of each bf16 prefill case: the fixture's ceiling_sgemm entries
  # renamed, at a known 1000 GFLOP/s, so each variant's fraction is its GFLOP/s / 1000.
  ceilings = set()
  for e in entries(doc):
    fam, scen, params = parse(case_name(e))
    if fam != "ceiling_sgemm" or scen or "threads" not in params:
      continue
    t = copy.deepcopy(e)
    for key in ("name", "run_name"):
      if key in t:
        t[key] = with_dtype(t[key], "bf16").replace("ceiling_sgemm/", "ceiling_matmul_bf16/", 1)
    if not t.get("error_occurred") and "GFLOPS" in t:
      t["GFLOPS"] = 1000.0
    typed["benchmarks"].append(t)
    ceilings.add(case_name(t))
  check(ceilings, "the fixture has sweep ceilings to copy as ceiling_matmul_bf16")
  acc = copy.deepcopy(accdoc)
  rows = [dict(r, dtype="bf16", max_abs_error=1.25e-3) for r in accdoc["results"]]
  acc["results"].extend(rows)
  paths = [os.path.join(work, "precision.json"), os.path.join(work, "precision-acc.json")]
  json.dump(typed, open(paths[0], "w"))
  json.dump(acc, open(paths[1], "w"))
  path = run_generate([paths[0], "--accuracy", paths[1], "--out-dir",
                       os.path.join(work, "precision")])
  text, refs = check_pngs(path)
  body = section(text, "## Reduced precision")
  check("not in this run" not in body, "Reduced precision has the dtype cases")
  med = median_times(typed)
  for name in sorted(added):
    fam, scen, params = parse(name)
    label = params["dtype"]
    base = name.replace(f"/dtype:{label}", "")
    if name not in med or base not in med:
      continue
    shape = ", ".join(f"{k}={v}" for k, v in params.items() if k not in ("dtype", "threads"))
    row = [l for l in body.splitlines()
           if l.startswith("| ") and f"| {fam} |" in l and all(
               f"{k}={v}" in l for k, v in params.items() if k not in ("dtype", "threads"))]
    # Prefill shows the speed-up, decode the time relative to f32 (its inverse).
    want = f"({PRECISION[label] ** (-1 if scen == 'decode' else 1):.2f}×)"
    check(row and any(want in r for r in row), f"{name}: its row shows {want} ({shape})")
  for label in PRECISION:
    check(f"| TEST_PATH_{label} (x) |" in body or f"| TEST_PATH_{label} (x)" in body,
          f"the code path of the {label} cases (their label) is in the precision tables")
  check("**Code path that ran**" in body, "a code-path table")
  # Against the bf16 matmul ceiling: one row per bf16 prefill variant case with a ceiling,
  # fraction = its GFLOP/s / 1000.
  check("**Against the bf16 matmul ceiling**" in body, "a ceiling_matmul_bf16 table")
  frows = []  # one table per (scenario, threads) group
  for part in body.split("**Against the bf16 matmul ceiling**")[1:]:
    table = part.split("\n\n", 2)[1]
    frows += [[x.strip() for x in l.strip("|").split("|")] for l in table.splitlines()[2:]]
  want_rows = [n for n in added if parse(n)[2]["dtype"] == "bf16" and not parse(n)[1]
               and n.split("/", 1)[1] in {c.split("/", 1)[1] for c in ceilings}]
  check(len(frows) == len(want_rows) > 0,
        f"one ceiling row per bf16 prefill case ({len(frows)} rows, want {len(want_rows)})")
  for r in frows:
    if r[4] in ("—", "") or r[5] == "—":
      continue
    check(r[3] == "1e+03" or r[3].replace(",", "") in ("1000", "1000.0", "1.00e+03"),
          f"the ceiling column shows the ceiling's 1000 GFLOP/s ({r})")
    check(abs(float(r[5]) - float(r[4]) / 1000) < 0.006, f"fraction = GFLOP/s / 1000 ({r})")
  groups = {(parse(n)[1], parse(n)[2]["threads"]) for n in added}
  check(sum(r.startswith("precision_") for r in refs) == len(groups),
        f"one reduced-precision plot per (scenario, threads) ({len(groups)})")
  check("Reduced precision vs the variant's own f32" in section(text, "## Summary"),
        "the summary gives the reduced-precision speed-ups")
  # The f32 sections read only the f32 cases: as in the fixture's own report.
  plain = open(os.path.join(work, "full", os.listdir(os.path.join(work, "full"))[0],
                            "report.md")).read()
  for title in ("## Sweep", "## Decode", "## Other scenarios", "## Thread scaling"):
    check(section(text, title) == section(plain, title),
          f"{title} is the same with the reduced-precision cases added")
  accuracy = section(text, "## Accuracy")
  check("| dtype | d | N |" in accuracy and "| bf16 |" in accuracy and "1.25e-03" in accuracy,
        "the accuracy table has a dtype column with the bf16 rows")
  bad = copy.deepcopy(doc)
  e = next(e for e in entries(bad) if parse(case_name(e))[0] not in FIXED)
  e["name"] = with_dtype(e["name"], "q8")
  e.pop("run_name", None)
  bad_path = write_input(os.path.join(work), "bad dtype", bad)
  check_refused([bad_path, "--out-dir", os.path.join(work, "bad-dtype-out")], bad_path,
                r"benchmarks\[\d+\] '[^']*dtype:q8[^']*': parameter dtype:q8 is not element types",
                "an unknown element type")


# Synthetic ceilings, three repetitions each: ceiling_fma's figure is its median, ceiling_stream's
# its best repetition.
FMA_REPS = {1: (90.0, 110.0, 100.0), 2: (180.0, 220.0, 200.0)}
STREAM_REPS = {1: (20.0, 31.5, 25.0), 2: (30.0, 41.5, 35.0)}
# A decode micro-kernel streaming its operand from memory (GB_per_s), 3 repetitions.
FROM_MEMORY = ("ukernel/f32_pv_4x8v_onepass/rows:4/keys:512/d:128/from:memory/threads:1",
               (24.0, 28.35, 27.0))


def repetition(name, index, count, time_ms, counters, label=None):
  """One Google Benchmark repetition entry of `name` (as the bench writes it)."""
  e = {"name": name + "/real_time", "run_name": name + "/real_time", "run_type": "iteration",
       "repetitions": count, "repetition_index": index, "iterations": 10,
       "real_time": time_ms, "cpu_time": time_ms, "time_unit": "ms", **counters}
  if label:
    e["label"] = label
  return e


def with_ceilings(doc):
  """The fixture with ceiling_fma/threads:1 and :2 and repeated ceiling_stream cases (its own
  ceiling_fma and stream cases and the micro-kernel suite's old ukernel/fma_peak taken out)."""
  out = copy.deepcopy(doc)
  out["benchmarks"] = [e for e in entries(doc)
                       if parse(case_name(e))[0] not in ("ceiling_stream", "ceiling_fma")
                       and not case_name(e).startswith("ukernel/fma_peak/")]
  for t, reps in FMA_REPS.items():
    for i, g in enumerate(reps):
      out["benchmarks"].append(repetition(f"ceiling_fma/threads:{t}", i, len(reps), 200 / g,
                                          {"GFLOPS": g, "threads": float(t)}, "path=AVX3"))
  for t, reps in STREAM_REPS.items():
    for i, gb in enumerate(reps):
      out["benchmarks"].append(repetition(
          f"ceiling_stream/bytes:1073741824/threads:{t}", i, len(reps), 1073.741824 / gb,
          {"GBps": gb, "bytes": 1073741824.0, "threads": float(t)}))
  name, reps = FROM_MEMORY
  for i, gb in enumerate(reps):
    out["benchmarks"].append(repetition(name, i, len(reps), 0.262144 / gb,
                                        {"GB_per_s": gb, "GFLOPS": gb, "Gelems_per_s": gb / 8,
                                         "threads": 1.0}))
  return out


def table_after(body, heading):
  """The rows of the first markdown table after `heading` in `body`: [[cell, ...]]."""
  lines = body.split(heading, 1)[1].splitlines()
  rows = []
  for line in lines:
    if line.startswith("|"):
      rows.append([c.strip() for c in line.strip("|").split("|")])
    elif rows:
      break
  return rows[2:]


def group_table(sweep_text, gp, heading):
  """(rows, column names) of the table under `heading` in the sweep group `gp` (d, causal,
  threads) of the report's Sweep section."""
  title = (f"d={gp['d']}, {'causal' if gp['causal'] != '0' else 'dense'}, "
           f"threads={gp['threads']}")
  body = sweep_text.split(title, 1)[1].split("\n### ", 1)[0]
  header = body.split(heading, 1)[1].split("\n")[2]
  return table_after(body, heading), [c.strip() for c in header.strip("|").split("|")]


def test_ceilings(work, doc):
  """ceiling_fma and repeated ceiling_stream cases: the roofline comes first, each sweep group
  gets its fraction-of-ceiling_fma table (variant GFLOPS / the median ceiling_fma at its
  threads), the summary states flash's fraction, decode divides by the best stream repetition,
  the micro-kernels by ceiling_fma/threads:1, and the roofline's x is FLOPs / bytes_min."""
  full = with_ceilings(doc)
  path_in = os.path.join(work, "ceilings.json")
  json.dump(full, open(path_in, "w"))
  path = run_generate([path_in, "--out-dir", os.path.join(work, "ceilings")])
  text, refs = check_pngs(path)
  host = str(doc["context"]["host_name"])
  ceilings = section(text, "## Ceilings and roofline")
  check(refs.count(f"roofline_{generate.slug(host)}.png") == 1
        and f"](roofline_{generate.slug(host)}.png)" in ceilings,
        "one roofline PNG for the machine, in Ceilings and roofline")
  check(text.index("](roofline_") < text.index("\n| ") < text.index("## Machine and build"),
        "the roofline comes before every table and before Machine and build")
  fma = {t: statistics.median(r) for t, r in FMA_REPS.items()}
  best = {t: max(r) for t, r in STREAM_REPS.items()}
  rows = table_after(ceilings, "ceilings\n")
  for t in FMA_REPS:
    want = [str(t), generate.fmt_num(fma[t]),
            f"{generate.fmt_num(min(FMA_REPS[t]))}–{generate.fmt_num(max(FMA_REPS[t]))} (3)",
            "AVX3", generate.fmt_num(best[t]),
            generate.fmt_num(statistics.median(STREAM_REPS[t])),
            generate.fmt_num(fma[t] / best[t])]
    check(want in rows, f"ceilings row for threads={t}: {want} (got {rows})")
  summary = section(text, "## Summary")
  check(f"ceiling_fma {generate.fmt_num(fma[1])} GFLOP/s on 1 thread" in summary
        and f"ceiling_stream {generate.fmt_num(best[1])} GB/s on 1" in summary,
        "the summary states both ceilings")

  # Sweep: a fraction-of-ceiling_fma table per group, each cell the variant's GFLOPS over the
  # median ceiling_fma at its threads (effective GFLOPS when causal).
  med_counters = {}
  for e in entries(full):
    if e.get("run_type") == "iteration" and not e.get("error_occurred"):
      med_counters.setdefault(case_name(e), []).append(e)
  sweep = {n: es for n, es in med_counters.items()
           if parse(n)[0] not in FIXED and not parse(n)[1] and "N" in parse(n)[2]}
  groups = {tuple(sorted((k, v) for k, v in parse(n)[2].items() if k != "N")) for n in sweep}
  check(text.count("**Fraction of ceiling_fma**") == len(groups),
        f"a fraction-of-ceiling_fma table per sweep group ({len(groups)})")
  sweep_text = section(text, "## Sweep")
  checked = 0
  for g in groups:
    gp = dict(g)
    title = (f"d={gp['d']}, {'causal' if gp['causal'] != '0' else 'dense'}, "
             f"threads={gp['threads']}")
    table, columns = group_table(sweep_text, gp, "**Fraction of ceiling_fma**")
    for name, es in sweep.items():
      fam, _, params = parse(name)
      if tuple(sorted((k, v) for k, v in params.items() if k != "N")) != g:
        continue
      key = "GFLOPS" if gp["causal"] != "0" else "GFLOPS_dense"
      want = generate.fmt_num(statistics.median(e[key] for e in es) / fma[int(gp["threads"])],
                              2)
      if len(es) == 1:  # one repetition: marked as a single sample, with the footnote
        want += "¹"
        check("¹ one repetition: a single sample" in sweep_text,
              f"{name}: the footnote of a one-repetition fraction")
      row = [r for r in table if r[0] == params["N"]]
      check(row and row[0][columns.index(fam)] == want,
            f"{name}: fraction of ceiling_fma {want} in its group's table")
      checked += 1
    line = [l for l in summary.splitlines() if f"{title}" in l]
    check(line and "of ceiling_fma" in line[0],
          f"the summary line of {title} states a fraction of ceiling_fma")
  check(checked > 0, "the fraction-of-ceiling_fma cells were checked")
  flash = [n for n in sweep if parse(n)[0] == "flash" and parse(n)[2]["causal"] == "0"
           and parse(n)[2]["threads"] == "1"]
  if flash:
    top = max(flash, key=lambda n: int(parse(n)[2]["N"]))
    f = statistics.median(e["GFLOPS_dense"] for e in sweep[top]) / fma[1]
    check(f"flash reaches {f:.2f} of ceiling_fma" in summary,
          f"the summary states flash's fraction of ceiling_fma at its largest N ({f:.2f})")
  check("of ceiling_fma" in section(text, "## Other scenarios"),
        "the other scenarios' table has a fraction of ceiling_fma")

  # Decode divides by the best stream repetition.
  decode = section(text, "## Decode")
  for t, gb in best.items():
    check(f"{generate.fmt_num(gb)} GB/s at 1.0 GiB, best repetition" in decode,
          f"decode at threads={t} uses the best stream repetition ({gb} GB/s)")
  # Micro-kernels against ceiling_fma/threads:1.
  ukernel = section(text, "## Micro-kernels")
  check(f"FMA peak: **{generate.fmt_num(fma[1])} GFLOP/s** (`ceiling_fma/threads:1`)" in ukernel,
        "the micro-kernel section's peak is ceiling_fma/threads:1")
  uk = next((n for n, es in med_counters.items() if n.startswith("ukernel/")
             and "GFLOPS" in es[0]), None)
  if uk:
    want = generate.fmt_pct(statistics.median(e["GFLOPS"] for e in med_counters[uk]) / fma[1])
    check(any(f"| {want} |" in l for l in ukernel.splitlines() if f"`{parse(uk)[1]}`" in l),
          f"{uk}: {want} of ceiling_fma/threads:1")
  # A from:memory entry: its median GB/s and that over the best stream repetition.
  name, reps = FROM_MEMORY
  gb = statistics.median(reps)
  row = next((l for l in ukernel.splitlines()
              if f"`{parse(name)[1]}`" in l and "from=memory" in l), "")
  check(f"| {generate.fmt_num(gb)} | {generate.fmt_pct(gb / best[1])} |" in row,
        f"{name}: {gb} GB/s, {gb / best[1]:.2f} of the best ceiling_stream/threads:1 (got {row})")
  check(f"stream: **{generate.fmt_num(best[1])} GB/s**" in ukernel,
        "the micro-kernel section names the stream ceiling it divides by")
  # The roofline's x: FLOPs per call / bytes_min (a decode case: 4·H·Lk·d FLOPs).
  run = ar.load_results([path_in])
  dec = next(c for c in run.all_cases() if c.scenario == "decode" and c.variant and c.ok)
  flops = 4 * dec.counter("H") * dec.counter("Lk") * dec.counter("d")
  x = generate.Report.intensity(dec)
  check(abs(x - flops / dec.counter("bytes_min")) < 1e-6 * x,
        f"roofline intensity of {dec.name}: {x} FLOP/byte = 4·H·Lk·d / bytes_min")
  stream = run.cases[(host, "ceiling_stream/bytes:1073741824/threads:1")]
  check(stream.best("GBps") == best[1] and stream.counter("GBps") == statistics.median(
      STREAM_REPS[1]), "Case.best is the best repetition, Case.counter the median")


def test_isa_ceilings(work, doc):
  """ceiling_vdpbf16ps, ceiling_amx and ceiling_vpdpwssd (AVX512_BF16, AMX-BF16 and
  AVX512_VNNI machines): a column each of the ceilings table at each thread count, in that
  order, and a clause each of the summary's ceilings line; not variants anywhere."""
  full = with_ceilings(doc)
  peaks = {"ceiling_vdpbf16ps": {1: 90.0, 2: 180.0}, "ceiling_amx": {1: 3600.0, 2: 6500.0},
           "ceiling_vpdpwssd": {1: 95.0, 2: 190.0}}
  for family, by_threads in peaks.items():
    for t, g in by_threads.items():
      full["benchmarks"].append(repetition(f"{family}/threads:{t}", 0, 1, 1.0,
                                           {"GFLOPS": g, "threads": float(t)}, "path=X"))
  # An int8 micro-kernel on VPDPWSSD at half that ISA's one-thread peak.
  isa_entry = "ukernel/i8_decode_pv/rows:4/keys:512/d:128/threads:1"
  full["benchmarks"].append(repetition(isa_entry, 0, 1, 1.0,
                                       {"GFLOPS": 47.5, "Gelems_per_s": 1.0, "threads": 1.0},
                                       "path=AVX512_VNNI"))
  path_in = os.path.join(work, "bf16peaks.json")
  json.dump(full, open(path_in, "w"))
  path = run_generate([path_in, "--out-dir", os.path.join(work, "bf16peaks")])
  text, _ = check_pngs(path)
  ceilings = section(text, "## Ceilings and roofline")
  header = ceilings.split("ceilings\n", 1)[1].split("\n")[1]
  check("ceiling_vdpbf16ps GFLOP/s" in header and "ceiling_amx GFLOP/s" in header
        and "ceiling_vpdpwssd GFLOP/s" in header
        and header.index("ceiling_vdpbf16ps") < header.index("ceiling_amx")
        < header.index("ceiling_vpdpwssd"),
        f"the ceilings table has ceiling_vdpbf16ps, ceiling_amx, ceiling_vpdpwssd columns "
        f"({header})")
  rows = table_after(ceilings, "ceilings\n")
  for t in (1, 2):
    want = [generate.fmt_num(peaks[f][t]) for f in peaks]
    check(any(r[0] == str(t) and r[-3:] == want for r in rows),
          f"ceilings row for threads={t} ends with {want} ({rows})")
  summary = section(text, "## Summary")
  row = next((l for l in section(text, "## Micro-kernels").splitlines()
              if "`i8_decode_pv`" in l), "")
  check("| 50% (AVX512_VNNI) |" in row,
        f"{isa_entry} is 50% of ceiling_vpdpwssd/threads:1, its ISA's peak (got {row})")
  check("`i8_decode_pv` " in summary and "(50% of AVX512_VNNI's)" in summary,
        "the summary's micro-kernel line gives the entry's fraction of its ISA's peak")
  for family, by_threads in peaks.items():
    check(f"{family} {generate.fmt_num(by_threads[1])} GFLOP/s on 1" in summary,
          f"the summary states {family}")
    check(f"| {family} |" not in text and f"**{family}**" not in text,
          f"{family} is not reported as a variant")


def test_openblas_core(work, doc):
  """The summary's ceilings line names the OpenBLAS core ceiling_sgemm ran on and, where
  attnlab replaced OpenBLAS's Prescott fallback (kernels/openblas_core.h), says so."""
  full = with_ceilings(doc)
  full["context"].update({"attnlab_openblas_core": "Cooperlake",
                          "attnlab_openblas_core_detected": "Prescott",
                          "attnlab_openblas_core_chosen_by": "attnlab"})
  path_in = os.path.join(work, "openblas_core.json")
  json.dump(full, open(path_in, "w"))
  summary = section(check_pngs(run_generate([path_in, "--out-dir",
                                             os.path.join(work, "openblas_core")]))[0],
                    "## Summary")
  check("ceiling_sgemm on OpenBLAS core Cooperlake (chosen by attnlab: OpenBLAS picked "
        "Prescott" in summary, "the summary names the core and who chose it")


def test_auto(work, doc):
  """auto cases (flash's, 1.25x slower, path label 'simd, AVX3') are judged against the best
  other variant: one table per sweep group with that variant's time / auto's time, auto's pick
  from its label, a summary sentence with the range, and auto never named 'best'."""
  full = copy.deepcopy(doc)
  added = []
  for e in entries(doc):
    name = e.get("run_name") or e["name"]
    if not name.startswith("flash/") or "/N:" not in name:
      continue
    a = copy.deepcopy(e)
    for key in ("name", "run_name"):
      if key in a:
        a[key] = "auto/" + a[key][len("flash/"):]
    for key in ("real_time", "cpu_time"):
      if key in a:
        a[key] *= 1.25
    a["label"] = "path=simd, AVX3"
    added.append(a)
  check(added, "the fixture has flash sweep cases to copy")
  full["benchmarks"] = entries(doc) + added
  path_in = os.path.join(work, "auto.json")
  json.dump(full, open(path_in, "w"))
  path = run_generate([path_in, "--out-dir", os.path.join(work, "auto")])
  text = open(path).read()
  times = median_times(full)
  sweep_text = section(text, "## Sweep")
  checked = 0
  for name, t_auto in times.items():
    fam, scen, params = parse(name)
    if fam != "auto" or scen or "causal" not in params:
      continue
    others = {n: t for n, t in times.items()
              if parse(n)[0] not in FIXED + ("auto",) and parse(n)[2] == params
              and parse(n)[1] == scen}
    best_name = min(others, key=others.get)
    rows, _ = group_table(sweep_text, params, "**auto against the best other variant**")
    want = [params["N"], parse(best_name)[0], generate.fmt_num(others[best_name] / t_auto, 2),
            "simd"]
    check(want in rows, f"{name}: auto row {want} (got {rows})")
    checked += 1
  check(checked > 0, "auto rows were checked")
  summary = section(text, "## Summary")
  check(re.search(r"auto runs at 0\.[0-8]\d–0\.[0-8]\d of the best other variant's speed "
                  r"\(lowest at N=\d+, against \w+\)", summary),
        "the summary gives auto's ratio to the best other (at most 0.8 here)")
  # The fixture's auto says it ran simd: where simd is the best other, the ratio compares two
  # timings of one kernel; where another variant is, auto's pick cost the ratio.
  others_seen = 0
  for line in summary.splitlines():
    if "auto runs at" not in line:
      continue
    m = re.search(r"where it ran another variant than the best \(([^)]*)\): ([0-9.–]+)\.", line)
    same = re.search(r"it ran the best variant's own kernel at (\d+) of (\d+) N", line)
    check(m or same, f"the auto sentence says what its ratios measure: {line}")
    if m:
      others_seen += 1
      check(all(part.split()[1] == "simd" and part.split()[3] != "simd"
                for part in m.group(1).replace(" …", "").split(", ")),
            f"the other-variant points name auto's pick (simd) and the best: {m.group(1)}")
  check(others_seen > 0, "flash is the best other somewhere in the fixture, and auto ran simd")
  check("**auto**" not in summary, "auto is never the 'best' variant: it runs one of them")


def test_thread_times(work, doc):
  """A multi-threaded case's thread_idle and thread_items_ratio counters (bench/bench_main.cc,
  ThreadTimesSum) appear in its thread-scaling cell; a case without them shows none."""
  full = copy.deepcopy(doc)
  marked = 0
  for e in entries(full):
    name = e.get("run_name") or e["name"]
    if name.startswith("flash/") and "/threads:2/" in name and "/N:" in name:
      e["thread_idle"] = 0.0123
      e["thread_items_ratio"] = 1.5
      marked += 1
  check(marked > 0, "the fixture has 2-thread flash cases")
  path_in = os.path.join(work, "thread_times.json")
  json.dump(full, open(path_in, "w"))
  text = open(run_generate([path_in, "--out-dir", os.path.join(work, "thread_times")])).read()
  scaling = section(text, "## Thread scaling")
  check("idle 1.2%, items 1.50" in scaling, f"flash's cells carry the thread times:\n{scaling}")
  rows = [line for line in scaling.splitlines() if line.startswith("| ") and "×" in line]
  check(rows and all(line.count("idle") <= 1 for line in rows),
        "only flash's cell of a row has them (the fixture's other variants have no counters)")


# Peer time = flash time × this factor (bench/peers.py's families; bf16 SDPA is torch 2.x's).
PEERS = {"peer_torch_plain": 5.0, "peer_torch_sdpa": 2.0, "peer_torch_sdpa bf16": 1.25}


def peers_doc(doc):
  """A bench/peers.py file for the fixture's host: each peer at every flash sweep case's shape
  but the largest N of each group (a peer that stopped early), PEERS[peer] times slower."""
  flash = {n: t for n, t in median_times(doc).items()
           if parse(n)[0] == "flash" and not parse(n)[1] and "N" in parse(n)[2]}
  largest = {}
  for n in flash:
    params = parse(n)[2]
    key = tuple(sorted((k, v) for k, v in params.items() if k != "N"))
    largest[key] = max(largest.get(key, 0), int(params["N"]))
  out = {"context": {"host_name": doc["context"]["host_name"], "date": doc["context"]["date"],
                     "attnlab_peer": "torch 9.9.9", "attnlab_peer_skipped": "none"},
         "benchmarks": []}
  for name, t in flash.items():
    params = parse(name)[2]
    if int(params["N"]) == largest[tuple(sorted((k, v) for k, v in params.items() if k != "N"))]:
      continue
    for peer, factor in PEERS.items():
      family, _, dtype = peer.partition(" ")
      pname = family + name[len("flash"):]
      if dtype:
        pname = with_dtype(pname, dtype)
      for i in range(3):
        out["benchmarks"].append(repetition(pname, i, 3, t * factor, {
            "GFLOPS": 1.0 / factor, "GFLOPS_dense": 1.0 / factor},
            f"path=torch 9.9.9 {family}"))
  return out, flash, largest


def test_peers(work, doc):
  """Peer files (bench/peers.py): GFLOP/s columns and a speedup table (peer time / flash time)
  in each sweep group, a summary line per group with the range, the peer's own lines in the
  sweep section; a peer file without benchmarks (torch not installed) and no peer file at all
  each give the one 'Peers: not in this run' line; peers are never variants."""
  pdoc, flash, largest = peers_doc(doc)
  check(pdoc["benchmarks"], "the fixture has flash sweep cases to mirror as peers")
  bench_in, peers_in = os.path.join(work, "peers-bench.json"), os.path.join(work, "peers.json")
  json.dump(doc, open(bench_in, "w"))
  json.dump(pdoc, open(peers_in, "w"))
  path = run_generate([bench_in, peers_in, "--out-dir", os.path.join(work, "peers")])
  text, _ = check_pngs(path)
  host = str(doc["context"]["host_name"])
  check(f"| key | {host} |" in text, "the peer file joins its host: one context column")
  sweep_text = section(text, "## Sweep")
  check("torch 9.9.9" in sweep_text.split("###", 1)[0], "the sweep section names the peer")
  checked = 0
  for key, n_max in largest.items():
    gp = dict(key)
    title = (f"d={gp['d']}, {'causal' if gp['causal'] != '0' else 'dense'}, "
             f"threads={gp['threads']}")
    rows, columns = group_table(sweep_text, gp, "**flash against the peers**")
    check(columns == ["N"] + [f"vs {p}" for p in sorted(PEERS)], f"{title}: peer columns "
          f"{columns}")
    for row in rows:
      if int(row[0]) == n_max:
        check(row[1:] == ["—"] * len(PEERS), f"{title} N={n_max}: no peer case, '—' ({row})")
        continue
      want = [f"{PEERS[p]:.2f}×" for p in sorted(PEERS)]
      check(row[1:] == want, f"{title} N={row[0]}: speedups {want} (got {row})")
      checked += 1
    gflops, _ = group_table(sweep_text, gp, "**GFLOP/s**")
    check(all(len(r) == len(gflops[0]) for r in gflops) and any(
        r[-len(PEERS):] == [generate.fmt_num(1 / PEERS[p]) for p in sorted(PEERS)]
        for r in gflops), f"{title}: the GFLOP/s table has the peers' columns")
  check(checked > 0, "peer speedups were checked")
  summary = section(text, "## Summary")
  lines = [l for l in summary.splitlines() if "flash is faster than" in l]
  check(len(lines) == len(largest), f"a peer summary line per sweep group ({len(lines)} of "
        f"{len(largest)})")
  check(all("PyTorch 9.9.9 plain by 5.00×, PyTorch 9.9.9 SDPA by 2.00×, "
            "PyTorch 9.9.9 SDPA bf16 by 1.25×" in l for l in lines),
        f"the summary names each peer and its speedup ({lines[:1]})")
  check("Peers: not in this run" not in text, "no absent-peer line when peers ran")
  check("**peer_" not in summary and "| peer_torch_plain |" not in section(
      text, "## Longest N"), "a peer is never a variant (best, budget table)")

  # torch not installed: an empty peer file; and no peer file at all.
  pdoc["benchmarks"] = []
  pdoc["context"]["attnlab_peer"] = "torch not installed (python3: No module named 'torch')"
  json.dump(pdoc, open(peers_in, "w"))
  for args, why in (([bench_in, peers_in], ": torch not installed"), ([bench_in], ".")):
    text = open(run_generate(args + ["--out-dir", os.path.join(work, "peers-absent")])).read()
    summary = section(text, "## Summary")
    want = "- Peers: not in this run (install python3-torch; see README)" + why
    check(summary.count("Peers: not in this run") == 1 and want in summary,
          f"one absent-peer line '{want}...' ({len(args)} file(s))")
    check("against the peers" not in text, "no peer table without peers")


# Backward (grad/<variant>) cases: time = the forward's × GRAD_RATIO (GFLOPS: the forward's ×
# 2.5 / GRAD_RATIO, the backward counting 2.5× the forward's FLOPs at dk = dv), workspace
# GRAD_WORKSPACE × N bytes; naive's backward fails its check.
GRAD_RATIO = {"flash": 2.5, "blas": 3.5}
GRAD_WORKSPACE = {"flash": 1000, "blas": 4096}
GRAD_FAILED = "failed check: dQ[b=0,h=0,i=0,d=0] got 0 want 1 (synthetic)"


def grad_entry(name, e=None, ratio=None, error=None):
  """The bench's entry of grad/<name> (`name` a forward case): a repetition of `e` (the
  forward's, as the bench writes one) `ratio` times slower, or a case skipped with `error`."""
  gname = f"grad/{name}/real_time"
  if error:
    return {"name": gname, "run_name": gname, "run_type": "iteration", "repetitions": 1,
            "repetition_index": 0, "threads": 1, "error_occurred": True,
            "error_message": error, "iterations": 0, "real_time": 0.0, "cpu_time": 0.0,
            "time_unit": "ms"}
  g = copy.deepcopy(e)
  g["name"] = g["run_name"] = gname
  g["real_time"] *= ratio
  g["cpu_time"] *= ratio
  for key in ("GFLOPS", "GFLOPS_dense"):
    g[key] *= 2.5 / ratio
  g["bytes_min"] *= 2
  g["workspace_bytes"] = g["workspace_declared_bytes"] = float(
      GRAD_WORKSPACE[parse(name)[0]] * int(parse(name)[2]["N"]))
  g["label"] = "path=AVX3"
  return g


def with_backward(doc):
  """with_ceilings(doc) plus a grad case beside each f32 flash, blas and naive sweep case that
  ran: flash's and blas's GRAD_RATIO times slower, naive's failing its check (in place of the
  fixture's own grad cases, if it has any)."""
  out = with_ceilings(doc)
  out["benchmarks"] = [e for e in entries(out) if parse(case_name(e))[0] != "grad"]
  for e in entries(doc):
    name = case_name(e)
    fam, scen, params = parse(name)
    if (scen or "N" not in params or "dtype" in params or e.get("error_occurred")
        or fam not in ("flash", "blas", "naive")):
      continue
    out["benchmarks"].append(grad_entry(name, error=GRAD_FAILED) if fam == "naive"
                             else grad_entry(name, e, GRAD_RATIO[fam]))
  return out


def backward_title(params):
  return (f"d={params['d']}, {'causal' if params['causal'] != '0' else 'dense'}, "
          f"threads={params['threads']}")


def test_backward(work, doc):
  """grad/<variant> cases (the backward pass, issue 18) beside the fixture's sweep cases: read
  as the variant's (family grad), validated like layer names, kept out of every forward
  section (which read as without them), and shown in the Backward pass section: the plot
  before the tables, a table per (d, causal, threads) with each case's GFLOP/s, fraction of
  the median ceiling_fma, backward / forward time and workspace, a failed case as failed, the
  causal efficiency and flash's summary line."""
  # The loader: the variant is the second token; a grad case is not the variant's own.
  fam, variant, scen, params = ar.parse_name("grad/flash/N:256/d:64/causal:1/threads:1")
  check((fam, variant, scen, params) == ("grad", "flash", "",
                                         {"N": "256", "d": "64", "causal": "1", "threads": "1"}),
        f"grad names parse like layer's (got {(fam, variant, scen, params)})")
  case = ar.Case("h", "grad/flash/N:256/d:64/causal:1/threads:1")
  check(not case.is_variant and case.series == "grad/flash"
        and ar.Case("h", "flash/N:256/d:64/causal:1/threads:1").is_variant,
        "a grad case is grad/<variant>, not the variant's own case")

  full = with_backward(doc)
  plain_in, grad_in = os.path.join(work, "nograd.json"), os.path.join(work, "grad.json")
  json.dump(dict(full, benchmarks=[e for e in entries(full) if parse(case_name(e))[0] != "grad"]),
            open(plain_in, "w"))
  json.dump(full, open(grad_in, "w"))
  plain = open(run_generate([plain_in, "--out-dir", os.path.join(work, "nograd")])).read()
  path = run_generate([grad_in, "--out-dir", os.path.join(work, "grad")])
  text, refs = check_pngs(path)
  check("## Backward pass" not in plain, "no Backward pass section without grad cases")
  for title in ("## Ceilings and roofline", "## Sweep", "## Thread scaling",
                "## Causal efficiency", "## Decode", "## Other scenarios",
                "## Reduced precision", "## End-to-end MHA layer"):
    check(section(text, title) == section(plain, title),
          f"{title} reads the same with the grad cases in the file")

  body = section(text, "## Backward pass")
  host = str(doc["context"]["host_name"])
  png = f"backward_{generate.slug(host)}.png"
  check(refs.count(png) == 1 and body.index(f"]({png})") < body.index("\n| "),
        "one backward plot, before the section's tables")
  grads = {}
  for e in entries(full):
    if case_name(e).startswith("grad/"):
      grads[case_name(e)[len("grad/"):]] = e
  fma = {t: statistics.median(r) for t, r in FMA_REPS.items()}
  groups = {tuple(sorted((k, v) for k, v in parse(n)[2].items() if k != "N")) for n in grads}
  check(body.count("\n### ") == len(groups), f"a table per (d, causal, threads) ({len(groups)})")
  checked = 0
  for name, g in grads.items():
    fam, _, params = parse(name)
    table = body.split(f"### backward, {backward_title(params)}\n", 1)[1].split("\n### ")[0]
    row = [r for r in table_after(table, "\n") if r[:2] == [params["N"], fam]]
    if fam == "naive":
      want = [params["N"], fam, "failed", "", "", "", ""]
      check(f"`grad/{name}`: {GRAD_FAILED}" in text, f"grad/{name} listed as failed")
    else:
      want = [params["N"], fam, generate.fmt_num(g["GFLOPS"]),
              generate.fmt_num(g["GFLOPS"] / fma[int(params["threads"])], 2),
              f"{GRAD_RATIO[fam]:.2f}", generate.fmt_bytes(g["workspace_bytes"]),
              generate.fmt_bytes(g["peak_rss_delta_bytes"])]
    check(row == [want], f"grad/{name}: row {want} (got {row})")
    checked += 1
  check(checked == len(grads) > 0, "every grad case has its row")
  # Causal efficiency of flash's backward: causal GFLOPS / dense GFLOPS at the same shape.
  flash = {n: g for n, g in grads.items() if parse(n)[0] == "flash"}
  effs = []  # at threads:1
  for n, g in flash.items():
    if parse(n)[2]["causal"] == "1":
      dense = flash.get(n.replace("/causal:1/", "/causal:0/"))
      if dense:
        eff = g["GFLOPS"] / dense["GFLOPS"]
        if parse(n)[2]["threads"] == "1":
          effs.append(eff)
        eff_table = body.split("**Causal efficiency of the backward pass**", 1)[1]
        params = parse(n)[2]
        head = (f"**backward, d={params['d']}, threads={params['threads']}**")
        rows = table_after(eff_table.split(head, 1)[1] if head in eff_table else "", "\n")
        columns = ["N"] + sorted({parse(m)[0] for m in grads})
        row = [r for r in rows if r[0] == params["N"]]
        check(row and row[0][columns.index("flash")] == f"{eff:.2f}",
              f"causal efficiency of grad/{n}: {eff:.2f} (got {row})")
  summary = section(text, "## Summary")
  line = [l for l in summary.splitlines() if l.startswith("- Backward pass, flash, threads=1")]
  ns = sorted({int(parse(n)[2]["N"]) for n in flash})
  check(line and "(none ≥ 2048 ran)" in line[0] and "backward / forward time 2.50" in line[0]
        and (not effs or f"dense GFLOP/s {min(effs):.2f}" in line[0])
        and "did not run" not in line[0] and f"at N={ns[0]}" in line[0],
        f"flash's backward summary line (got {line})")

  # A name without the variant after grad is refused.
  bad = copy.deepcopy(full)
  e = next(e for e in entries(bad) if case_name(e).startswith("grad/flash/"))
  e["name"] = e["run_name"] = e["name"].replace("grad/flash/", "grad/", 1)
  bad_path = write_input(work, "grad without a variant", bad)
  check_refused([bad_path, "--out-dir", os.path.join(work, "bad-grad-out")], bad_path,
                r"benchmarks\[\d+\] 'grad/N:[^']*': not an attnlab_bench case name",
                "a grad name without its variant")


def test_backward_targets(work, doc):
  """flash's backward at N >= 2048 (a synthetic file: flash forward and backward at N = 1024,
  2048, 4096, d = 64, causal 0/1, one over the 2.8 target; blas's backward over budget at
  4096): the summary line gives the fraction of ceiling_fma, the ratio range with the shape
  over the target and the causal efficiency over N >= 2048 only; the over-budget case shows
  in its row and under grad/blas in the budget section."""
  # (N, causal) -> (forward ms, backward ms, backward GFLOPS)
  shapes = {(1024, 0): (10.0, 20.0, 30.0), (2048, 0): (40.0, 100.0, 60.0),
            (4096, 0): (160.0, 480.0, 50.0), (1024, 1): (6.0, 12.0, 24.0),
            (2048, 1): (22.0, 55.0, 54.0), (4096, 1): (85.0, 221.0, 47.5)}
  out = {"context": copy.deepcopy(doc["context"]), "benchmarks": []}
  out["benchmarks"] += [repetition("ceiling_fma/threads:1", i, 3, 1.0, {"GFLOPS": g,
                                                                        "threads": 1.0})
                        for i, g in enumerate((90.0, 100.0, 110.0))]
  for (n, causal), (fwd, bwd, gflops) in shapes.items():
    name = f"flash/N:{n}/d:64/causal:{causal}/threads:1"
    counters = {"GFLOPS": gflops, "GFLOPS_dense": gflops * (2 if causal else 1),
                "workspace_bytes": 1e5, "workspace_declared_bytes": 1e5,
                "peak_rss_delta_bytes": 0.0, "bytes_min": 1e6}
    out["benchmarks"].append(repetition(name, 0, 1, fwd, counters, "path=AVX3"))
    out["benchmarks"].append(repetition("grad/" + name, 0, 1, bwd, counters, "path=AVX3"))
  over = "over budget: blas needs 16.0 GiB of scores, budget 12.0 GiB (synthetic)"
  out["benchmarks"].append(grad_entry("blas/N:4096/d:64/causal:0/threads:1", error=over))
  path_in = os.path.join(work, "targets.json")
  json.dump(out, open(path_in, "w"))
  text, _ = check_pngs(run_generate([path_in, "--out-dir", os.path.join(work, "targets")]))
  line = [l for l in section(text, "## Summary").splitlines() if "Backward pass, flash" in l]
  # N >= 2048: fractions 0.47–0.60, ratios 2.50–3.00 (4096 dense over 2.8), causal / dense
  # 54/60 = 0.90 and 47.5/50 = 0.95.
  want = ("- Backward pass, flash, threads=1, at N ≥ 2048: 0.47–0.60 of ceiling_fma; "
          "backward / forward time 2.50–3.00 (target ≤ 2.8 at N ≥ 2048; over it: d=64 dense "
          "N=4096 3.00); causal effective / dense GFLOP/s 0.90–0.95 (target ≥ 0.85).")
  check(line == [want], f"flash's backward summary at N >= 2048: {want!r} (got {line})")
  body = section(text, "## Backward pass")
  rows = table_after(body.split("### backward, d=64, dense, threads=1\n", 1)[1], "\n")
  check(["4096", "blas", "over budget", "", "", "", ""] in rows
        and ["4096", "flash", "50", "0.5", "3.00", "97.7 KiB", "0 B"] in rows,
        f"the over-budget grad case and flash's row at N=4096 (got {rows})")
  budget = section(text, "## Longest N within")
  check(f"`grad/blas`: 1 case(s) skipped, e.g. `grad/blas/N:4096/d:64/causal:0/threads:1`: "
        f"{over}" in budget, "the over-budget backward case is listed under grad/blas")


# A peer's backward time = flash's backward time × this factor ({causal: factor}); SDPA stops
# before the largest N of each group (its series hit the time cap), and is the faster peer
# only when dense.
PEER_GRAD = {"peer_torch_plain": {0: 4.0, 1: 4.0}, "peer_torch_sdpa": {0: 3.0, 1: 6.0}}


def grad_peers_doc(doc, full):
  """peers_doc(doc) (the forward peers) plus grad/<peer> cases at every flash backward case of
  `full` (with_backward), PEER_GRAD times slower, SDPA's but at the largest N of each group;
  ({grad case name: (median time ms, median GFLOPS)} of flash, the largest N per group)."""
  pdoc, _, largest = peers_doc(doc)
  pdoc["context"].update({"attnlab_peer_passes": "forward,backward",
                          "attnlab_peer_backward": "synthetic autograd timing",
                          "attnlab_peer_backward_skipped": "grad/peer_torch_sdpa: N > 256"})
  flash = {}
  for e in entries(full):
    name = case_name(e)
    if name.startswith("grad/flash/") and e.get("run_type") == "iteration" and \
        not e.get("error_occurred"):
      flash.setdefault(name, []).append((e["real_time"], e["GFLOPS"]))
  flash = {n: (statistics.median(t for t, _ in v), statistics.median(g for _, g in v))
           for n, v in flash.items()}
  for name, (t, g) in flash.items():
    params = parse(name)[2]
    key = tuple(sorted((k, v) for k, v in params.items() if k != "N"))
    for peer, factors in PEER_GRAD.items():
      if peer == "peer_torch_sdpa" and int(params["N"]) == largest[key]:
        continue
      factor = factors[int(params["causal"])]
      pname = name.replace("grad/flash/", f"grad/{peer}/", 1)
      for i in range(3):
        pdoc["benchmarks"].append(repetition(pname, i, 3, t * factor, {
            "GFLOPS": g / factor, "GFLOPS_dense": g / factor},
            f"path=torch 9.9.9 {peer}, autograd backward (forward outside the timing)"))
  return pdoc, flash, largest


def test_backward_peers(work, doc):
  """grad/<peer> cases (bench/peers.py's backward) beside flash's backward: read as the
  peer's (no variant), shown as rows of the backward tables (GFLOP/s, fraction of ceiling_fma,
  backward / forward against the peer's own forward, no memory), a 'flash against the peers'
  table per group with the fastest peer at each N, a plotted line, the summary's speedup over
  the best peer; the forward sections read as with the forward peers alone; a file without
  backward peers says so in the section; a backward-only peer file leaves the forward's
  'Peers: not in this run' line saying why."""
  fam, variant, scen, params = ar.parse_name("grad/peer_torch_plain/N:256/d:64/causal:1/threads:1")
  case = ar.Case("h", "grad/peer_torch_plain/N:256/d:64/causal:1/threads:1")
  check((fam, variant, scen) == ("grad", None, "") and params["N"] == "256"
        and case.peer == "peer_torch_plain" and case.series == "grad/peer_torch_plain"
        and not case.is_variant and ar.Case("h", "peer_torch_sdpa/N:256/d:64").peer
        == "peer_torch_sdpa" and ar.Case("h", "grad/flash/N:256/d:64").peer is None,
        f"a peer's backward is the peer's case, not a variant's (got {(fam, variant, scen)}, "
        f"{case.peer}, {case.series})")

  full = with_backward(doc)
  pdoc, flash, largest = grad_peers_doc(doc, full)
  fwd_only = dict(pdoc, benchmarks=[e for e in entries(pdoc)
                                    if not case_name(e).startswith("grad/")])
  fwd_only["context"] = dict(pdoc["context"], attnlab_peer_passes="forward")
  bench_in = os.path.join(work, "bwpeers-bench.json")
  both_in, fwd_in = os.path.join(work, "bwpeers.json"), os.path.join(work, "fwpeers.json")
  json.dump(full, open(bench_in, "w"))
  json.dump(pdoc, open(both_in, "w"))
  json.dump(fwd_only, open(fwd_in, "w"))
  text, refs = check_pngs(run_generate([bench_in, both_in, "--out-dir",
                                        os.path.join(work, "bwpeers")]))
  plain = open(run_generate([bench_in, fwd_in, "--out-dir",
                             os.path.join(work, "fwpeers")])).read()
  for title in ("## Ceilings and roofline", "## Sweep", "## Thread scaling",
                "## Causal efficiency", "## Longest N", "## Decode", "## Other scenarios"):
    check(section(text, title) == section(plain, title),
          f"{title} reads the same with the peers' backward cases")
  check("Peers' backward: not in this run" in section(plain, "## Backward pass"),
        "without grad/peer_* cases the Backward pass section says the peers' backward is absent")
  body = section(text, "## Backward pass")
  check("Peers' backward: not in this run" not in body
        and "synthetic autograd timing" in body and "skipped: grad/peer_torch_sdpa: N > 256"
        in body, "the section names the peers' backward, what it times and what it skipped")
  times = median_times(pdoc)
  fma = {t: statistics.median(r) for t, r in FMA_REPS.items()}
  rows_checked = speedups_checked = 0
  want_sp = {}  # threads -> [(best peer time / flash time, shape)]
  for name, (t, g) in flash.items():
    params = parse(name)[2]
    n, causal = int(params["N"]), int(params["causal"])
    body_g = body.split(f"### backward, {backward_title(params)}\n", 1)[1].split("\n### ")[0]
    rows = table_after(body_g, "\n")
    peer_t = {}
    for peer, factors in PEER_GRAD.items():
      pname = name.replace("grad/flash/", f"grad/{peer}/", 1)
      row = [r for r in rows if r[:2] == [params["N"], peer]]
      if pname not in times:
        check(row == [], f"{pname}: no row where the peer did not run (got {row})")
        continue
      peer_t[peer] = times[pname]
      fwd = times.get(pname[len("grad/"):])
      want = [params["N"], peer, generate.fmt_num(g / factors[causal]),
              generate.fmt_num(g / factors[causal] / fma[int(params["threads"])], 2),
              f"{times[pname] / fwd:.2f}" if fwd else "no forward case", "—", "—"]
      check(row == [want], f"{pname}: row {want} (got {row})")
      rows_checked += 1
    sp_rows = table_after(body_g, "**flash against the peers**")
    header = body_g.split("**flash against the peers**", 1)[1].split("\n")[2]
    columns = [c.strip() for c in header.strip("|").split("|")]
    check(columns == ["N"] + [f"vs {p}" for p in sorted(PEER_GRAD)] + ["vs the best peer"],
          f"{backward_title(params)}: the peers' speedup columns ({columns})")
    row = [r for r in sp_rows if r[0] == params["N"]]
    best = min(peer_t, key=peer_t.get)
    want = [params["N"]] + [f"{peer_t[p] / t:.2f}×" if p in peer_t else "—"
                            for p in sorted(PEER_GRAD)] + [f"{peer_t[best] / t:.2f}× ({best})"]
    check(row == [want], f"{name}: speedups over the peers {want} (got {row})")
    speedups_checked += 1
    want_sp.setdefault(params["threads"], []).append(
        (peer_t[best] / t, (causal, n), best))
  check(rows_checked > 0 and speedups_checked == len(flash) > 0,
        f"peer rows ({rows_checked}) and speedups ({speedups_checked}) were checked")
  summary = section(text, "## Summary")
  for threads, sp in want_sp.items():
    line = [l for l in summary.splitlines()
            if l.startswith(f"- Backward pass, flash, threads={threads}")]
    lo, hi = min(sp), max(sp)
    ns = sorted({n for _, (_, n), _ in sp})
    words = sorted({"PyTorch 9.9.9 " + ("plain" if b == "peer_torch_plain" else "SDPA")
                    for _, _, b in sp})
    want = (f"faster than the best peer's backward by {lo[0]:.2f}–{hi[0]:.2f}× (that peer's "
            f"time / flash time at each shape, N={ns[0]}–{ns[-1]}; lowest at d=64 "
            f"{'causal' if lo[1][0] else 'dense'} N={lo[1][1]}; best peer: {', '.join(words)})")
    check(line and want in line[0], f"threads={threads}: the summary's speedup over the best "
          f"peer {want!r} (got {line})")
  check("**peer_" not in summary and "| peer_torch_plain |" not in section(text, "## Longest N")
        and "peer" not in body.split("**Causal efficiency of the backward pass**", 1)[1],
        "a peer's backward is never a variant (best, budget, causal efficiency tables)")
  png = f"backward_{generate.slug(str(doc['context']['host_name']))}.png"
  check(png in refs, "the backward plot is drawn with the peers")

  # A peer file that timed only the backward: the forward's absent-peer line says why.
  bw_only = dict(pdoc, benchmarks=[e for e in entries(pdoc) if case_name(e).startswith("grad/")])
  bw_only["context"] = dict(pdoc["context"], attnlab_peer_passes="backward")
  json.dump(bw_only, open(both_in, "w"))
  text = open(run_generate([bench_in, both_in, "--out-dir",
                            os.path.join(work, "bwpeers-only")])).read()
  want = ("- Peers: not in this run (install python3-torch; see README): bench/peers.py timed "
          "only the backward pass (--passes backward).")
  check(want in section(text, "## Summary") and "torch 9.9.9" not in section(text, "## Sweep")
        and "flash against the peers" in section(text, "## Backward pass"),
        f"a backward-only peer file: {want!r}, its backward shown")


def scaled(doc, target, factor):
  out = copy.deepcopy(doc)
  for e in entries(out):
    if case_name(e) == target and not e.get("error_occurred") and \
        e.get("aggregate_name") not in ("stddev", "cv"):
      e["real_time"] *= factor
      e["cpu_time"] *= factor
  return out


def test_compare(work, doc):
  quick_a = os.path.join(work, "a.json")
  json.dump(doc, open(quick_a, "w"))
  med = median_times(doc)
  target = sorted(n for n in med if parse(n)[0] not in FIXED)[0]
  b = scaled(doc, target, 10.0)  # far beyond any plausible repetition spread
  quick_b = os.path.join(work, "b.json")
  json.dump(b, open(quick_b, "w"))
  path = run_generate(["compare", quick_a, quick_b, "--out-dir", os.path.join(work, "cmp"),
                       "--label", "10x"])
  text, refs = check_pngs(path)
  check(refs == ["compare.png"], "compare writes compare.png")
  flagged = text.split("**Beyond noise**", 1)[1].split("**All matched cases**", 1)[0]
  check(f"`{target}`" in flagged and "10.000" in flagged and "**slower**" in flagged,
        f"compare flags {target} as 10x slower")
  check(flagged.count("**slower**") + flagged.count("**faster**") == 1,
        "compare flags nothing else (identical cases stay within noise)")
  reps = any(e.get("run_type") == "aggregate" for e in entries(doc)) or \
      max(e.get("repetitions", 1) for e in entries(doc)) > 1
  if reps:
    check("(2σ)" in text, "thresholds come from the repetitions' spread")

  # no repetitions: the stated noise floor is used
  single = copy.deepcopy(doc)
  single["benchmarks"] = [e for e in entries(doc) if e.get("run_type") != "aggregate"
                          and e.get("repetition_index", 0) == 0]
  sa, sb = os.path.join(work, "sa.json"), os.path.join(work, "sb.json")
  json.dump(single, open(sa, "w"))
  json.dump(scaled(single, target, 1.5), open(sb, "w"))
  path = run_generate(["compare", sa, sb, "--out-dir", os.path.join(work, "cmp"),
                       "--label", "norep", "--noise-floor", "0.1"])
  text, _ = check_pngs(path)
  check("±10.0% (floor)" in text and "noise floor of ±10%" in text,
        "without repetitions the stated noise floor is the threshold")
  flagged = text.split("**Beyond noise**", 1)[1].split("**All matched cases**", 1)[0]
  check(f"`{target}`" in flagged and "1.500" in flagged, "1.5x slower flagged at a 10% floor")

  # two thread settings of one run
  threads = sorted({parse(case_name(e))[2].get("threads") for e in entries(doc)} - {None})
  if len(threads) >= 2:
    path = run_generate(["compare", quick_a, quick_a, "--select-a", f"threads:{threads[0]}",
                         "--select-b", f"threads:{threads[-1]}", "--match-ignore", "threads",
                         "--out-dir", os.path.join(work, "cmp"), "--label", "threads"])
    text, _ = check_pngs(path)
    m = re.search(r"matched (\d+) case\(s\) ignoring parameter\(s\) threads", text)
    check(m and int(m.group(1)) > 0, "thread-setting comparison matches cases")


# ---- malformed inputs: one line on stderr naming the file (and entry and field), exit 1
def call_generate(argv):
  """generate.main(argv) in this process: (its exit code, or the exception that escaped it,
  and what it wrote to stderr)."""
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    try:
      rc = generate.main(argv)
    except BaseException as e:  # what a user would see as a traceback
      rc = e
  return rc, err.getvalue()


def first_entry(doc, pred):
  return copy.deepcopy(next(e for e in entries(doc) if pred(case_name(e))))


def bad_result_files(doc):
  """(what, file content: bytes or a JSON value, regex the message must match after the
  file's path) for malformed benchmark files, each built from a real entry of the fixture."""
  ctx = doc["context"]
  sweep = first_entry(doc, lambda n: not parse(n)[1] and parse(n)[0] not in FIXED)
  decode = first_entry(doc, lambda n: parse(n)[1] == "decode" and parse(n)[0] not in FIXED)
  stream = first_entry(doc, lambda n: n.startswith("ceiling_stream/"))
  at = f"benchmarks\\[0\\] '{re.escape(case_name(sweep))}': "

  def one(e, **fields):
    e = dict(e, **fields)
    return {"context": ctx, "benchmarks": [e]}

  def without(e, *keys):
    return {"context": ctx, "benchmarks": [{k: v for k, v in e.items() if k not in keys}]}

  text = json.dumps(doc, indent=2)
  other_program = {"context": {k: v for k, v in ctx.items() if not k.startswith("attnlab_")},
                   "benchmarks": [{"name": "BM_memcpy/8", "run_name": "BM_memcpy/8",
                                   "run_type": "iteration", "iterations": 1000,
                                   "real_time": 5.0, "cpu_time": 5.0, "time_unit": "ns",
                                   "bytes_per_second": 1e9}]}
  return [
      ("empty file", b"", r"empty file \(0 bytes\)"),
      ("only whitespace", b"  \n", r"empty file \(3 bytes\)"),
      ("binary garbage", b"\x89PNG\r\n\x1a\n\xff\xfe" + bytes(range(256)),
       r"not a text file \(byte 0x89 at offset 0 is not UTF-8\)"),
      ("NUL bytes", bytes(4096), r"not a text file \(a NUL byte at offset 0\)"),
      ("not JSON", b"flash 12.5 ms\n", r"not valid JSON: Expecting value \(line 1, column 1\)"),
      ("malformed in the middle", text.replace('"benchmarks": [', '"benchmarks": [}', 1).encode(),
       r"not valid JSON: Expecting value \(line \d+, column \d+\)"),
      ("two documents", (text + text).encode(),
       r"not valid JSON: Extra data \(line \d+, column \d+\)"),
      ("top level a list", [], r"the top level is a list, want an object"),
      ("no benchmarks", {"context": ctx}, r'no "benchmarks" array: not Google Benchmark JSON'),
      ("benchmarks null", {"context": ctx, "benchmarks": None},
       r'"benchmarks" is null, want a list'),
      ("benchmarks an object", {"context": ctx, "benchmarks": {}},
       r'"benchmarks" is an object, want a list'),
      ("benchmarks empty", {"context": ctx, "benchmarks": []},
       r'"benchmarks" is empty: no results'),
      ("another program's Google Benchmark JSON", other_program,
       r'not attnlab_bench output: its "context" has no attnlab_git_commit'),
      ("no context", {"benchmarks": [sweep]}, r"not attnlab_bench output"),
      ("context a list", {"context": [], "benchmarks": [sweep]},
       r"context is a list, want an object"),
      ("caches not objects", {"context": dict(ctx, caches=["L1"]), "benchmarks": [sweep]},
       r"context: caches is a list, want a list of objects"),
      ("load_avg strings", {"context": dict(ctx, load_avg=["high"]), "benchmarks": [sweep]},
       r"context: load_avg is a list, want a list of numbers"),
      ("a name of another program", one(sweep, name="BM_memcpy/8", run_name="BM_memcpy/8"),
       r"benchmarks\[0\] 'BM_memcpy/8': not an attnlab_bench case name"),
      ("a parameter that is not a number",
       one(sweep, run_name=sweep["run_name"].replace("N:", "N:x", 1)),
       r"benchmarks\[0\] '[^']*N:x\d+[^']*': parameter N:x\d+ is not a number"),
      ("a path that is not a code path",
       one(sweep, run_name=sweep["run_name"] + "/path:fast"),
       r"benchmarks\[0\] '[^']*': parameter path:fast is not a code path"),
      ("threads:0", one(sweep, run_name=re.sub(r"threads:\d+", "threads:0", sweep["run_name"])),
       r"benchmarks\[0\] '[^']*': parameter threads:0 is not a positive integer"),
      ("decode without Lk", one(decode, run_name=re.sub(r"/Lk:\d+", "", decode["run_name"])),
       r"benchmarks\[0\] '[^']*decode[^']*': a decode case without Lk:<keys>"),
      ("scalar entry", {"context": ctx, "benchmarks": [5]},
       r"benchmarks\[0\] is 5, want an object"),
      ("entry without a name", without(sweep, "name", "run_name"), r'benchmarks\[0\]: no "name"'),
      ("entry without counters", {"context": ctx, "benchmarks": [
          {k: v for k, v in decode.items() if k in ar._STANDARD_KEYS}]},
       r"benchmarks\[0\] '[^']*decode[^']*': no \"GBps\" counter"),
      ("stream ceiling without GBps", without(stream, "GBps"),
       r"benchmarks\[0\] 'ceiling_stream/[^']*': no \"GBps\" counter"),
      ("real_time a string", one(sweep, real_time="12"),
       at + r'real_time is "12" \(a string\), want a number'),
      ("no real_time", without(sweep, "real_time"), at + r'no "real_time"'),
      ("real_time 0", one(sweep, real_time=0), at + r"real_time is 0: a time of 0 is not a "
       r"measurement"),
      ("real_time NaN", one(sweep, real_time=float("nan")),
       at + r"real_time is NaN, want a positive finite time"),
      ("real_time negative", one(sweep, real_time=-1.5),
       at + r"real_time is -1.5, want a positive finite time"),
      ("real_time true", one(sweep, real_time=True), at + r"real_time is true \(a boolean\)"),
      ("unknown time_unit", one(sweep, time_unit="fortnights"),
       at + r'time_unit is "fortnights" \(a string\), want one of ns, us, ms, s'),
      ("counter a string", one(sweep, GFLOPS="12.5"),
       at + r'GFLOPS is "12.5" \(a string\), want a finite number'),
      ("counter NaN", one(sweep, GFLOPS=float("nan")), at + r"GFLOPS is NaN, want a finite number"),
      ("error_occurred a string", one(sweep, error_occurred="yes"),
       at + r'error_occurred is "yes" \(a string\), want true or false'),
      ("unknown run_type", one(sweep, run_type="warmup"),
       at + r'run_type is "warmup" \(a string\), want "iteration" or "aggregate"'),
      ("truncated in the context", text[:text.index('"benchmarks"') - 40].encode(),
       r'truncated before its "benchmarks" array \(the run was interrupted\?\): no results'),
      ("truncated right after the array opens",
       text[:text.index('"benchmarks": [') + 15].encode(),
       r'truncated before its first complete entry of "benchmarks"'),
  ]


def bad_accuracy_files(accdoc):
  ctx = accdoc["context"]
  row = copy.deepcopy(accdoc["results"][0])
  at = rf"results\[0\] '{row['variant']}': "

  def one(**fields):
    return {"context": ctx, "results": [dict(row, **fields)]}

  return [
      ("no results", {"context": ctx}, r'no "results" array: not an attnlab accuracy JSON'),
      ("results null", {"context": ctx, "results": None}, r'"results" is null, want a list'),
      ("results empty", {"context": ctx, "results": []}, r'"results" is empty'),
      ("not attnlab", {"context": {}, "results": [row]},
       r"not attnlab_bench --accuracy output"),
      ("scalar row", {"context": ctx, "results": ["x"]},
       r'results\[0\] is "x" \(a string\), want an object'),
      ("N a string", one(N="128"), at + r'N is "128" \(a string\), want a positive integer'),
      ("N zero", one(N=0), at + r"N is 0, want a positive integer"),
      ("no mask", {"context": ctx, "results": [{k: v for k, v in row.items() if k != "mask"}]},
       at + r'no "mask"'),
      ("error a string number", one(max_abs_error="1e-7"),
       at + r'max_abs_error is "1e-7" \(a string\), want a number >= 0 or null'),
      ("no max_abs_error", {"context": ctx, "results": [
          {k: v for k, v in row.items() if k != "max_abs_error"}]}, at + r'no "max_abs_error"'),
  ]


def test_accuracy_not_run_and_non_finite(work, testdata, accdoc):
  """What the bench's accuracy mode writes for a case it did not run ("error") and for a
  non-finite error (null: its JSON library writes inf and NaN so) is read and shown."""
  acc = copy.deepcopy(accdoc)
  first, second = acc["results"][0], acc["results"][1]
  for k in ("max_abs_error", "max_rel_error", "bound_ratio", "rows_checked", "ok"):
    first.pop(k, None)
  first["error"] = "over budget: naive needs 64.0 GiB of scores, budget 12.0 GiB"
  second.update(max_abs_error=None, bound_ratio=None, ok=False)
  path = os.path.join(work, "acc-special.json")
  json.dump(acc, open(path, "w"))
  out = os.path.join(work, "acc-special")
  p = subprocess.run([sys.executable, GENERATE, os.path.join(testdata, "quick.json"),
                      "--accuracy", path, "--out-dir", out], capture_output=True, text=True)
  if check(p.returncode == 0, f"an accuracy file with an over-budget row and a null error is "
           f"read ({p.stderr.strip()})"):
    text = open(p.stdout.strip()).read().split("## Accuracy", 1)[1]
    check("| over budget |" in text and "**inf (inf)**" in text,
          "the accuracy table shows 'over budget' and a non-finite error (inf, in bold)")


def test_accuracy_backward(work, testdata, accdoc):
  """Backward results ("pass": "backward", bench/accuracy.cc) get tables of their own under
  *Gradients* and a summary line; the forward tables read exactly as without them, even when a
  gradient result has the same variant, N, d and mask as a forward one; an unknown pass is
  refused."""
  acc = copy.deepcopy(accdoc)
  forward = acc["results"][0]
  grad = dict(forward, max_abs_error=7.77e-05, bound_ratio=0.0321)
  grad["pass"] = "backward"
  acc["results"].append(grad)
  path = os.path.join(work, "acc-backward.json")
  json.dump(acc, open(path, "w"))
  outs = {}
  for name, file in (("with", path), ("without", os.path.join(testdata, "quick-accuracy.json"))):
    p = subprocess.run([sys.executable, GENERATE, os.path.join(testdata, "quick.json"),
                        "--accuracy", file, "--out-dir", os.path.join(work, "accb-" + name)],
                       capture_output=True, text=True)
    check(p.returncode == 0, f"accuracy file {name} a backward result is read ({p.stderr})")
    outs[name] = open(p.stdout.strip()).read() if p.returncode == 0 else ""
  text = outs["with"].split("## Accuracy", 1)[-1]
  forward_part, _, grads = text.partition("### Gradients (the backward pass)")
  check(grads != "" and "7.77e-05 (0.032)" in grads and "7.77e-05" not in forward_part,
        "the backward result is in the Gradients tables only")
  check(forward_part.strip() == outs["without"].split("## Accuracy", 1)[-1].strip(),
        "the forward accuracy tables read as without the backward result")
  check("- Gradient accuracy, worst max error / bound per variant: "
        f"{forward['variant']} 0.032" in outs["with"], "a gradient accuracy summary line")
  bad = copy.deepcopy(acc)
  bad["results"][-1]["pass"] = "sideways"
  bad_path = os.path.join(work, "acc-bad-pass.json")
  json.dump(bad, open(bad_path, "w"))
  rc, err = call_generate([os.path.join(testdata, "quick.json"), "--accuracy", bad_path,
                           "--out-dir", os.path.join(work, "accb-bad")])
  check(rc == 1 and "pass" in err and "forward or backward" in err,
        f"an unknown pass is refused ({err.strip()})")


def write_input(folder, what, content):
  """content (bytes, or a JSON value) in a file of its own named after `what`."""
  path = os.path.join(folder, re.sub(r"\W+", "_", what).strip("_") + ".json")
  assert not os.path.exists(path), f"two inputs would share {path}"
  with open(path, "wb") as f:
    f.write(content if isinstance(content, bytes) else json.dumps(content).encode())
  return path


def check_refused(argv, path, regex, what):
  """generate.py with argv exits 1 with one line on stderr: 'generate.py: <path>: <regex>'."""
  rc, err = call_generate(argv)
  want = f"generate.py: {re.escape(path)}: {regex}"
  return check(rc == 1 and err.count("\n") == 1 and re.match(want, err),
               f"{what}: exit 1 and one line matching {want!r} (got {rc!r}, {err!r})")


def test_bad_inputs(work, doc, accdoc, testdata):
  folder = os.path.join(work, "bad")
  os.makedirs(folder)
  out = ["--out-dir", os.path.join(work, "bad-out")]
  good = os.path.join(testdata, "quick.json")
  for what, content, regex in bad_result_files(doc):
    path = write_input(folder, what, content)
    check_refused([path] + out, path, regex, what)
    check_refused(["compare", good, path] + out, path, regex, f"compare B: {what}")
  for what, content, regex in bad_accuracy_files(accdoc):
    path = write_input(folder, "accuracy " + what, content)
    check_refused([good, "--accuracy", path] + out, path, regex, f"accuracy: {what}")
  missing = os.path.join(folder, "missing.json")
  check_refused([missing] + out, missing, r"no such file$", "missing file")
  check_refused([folder] + out, folder, r"is a directory, want Google Benchmark JSON",
                "a directory")
  check_refused(["compare", good, good, "--select-b", "threads:99"] + out, good,
                r"no case name has the token\(s\) threads:99", "compare: --select matches nothing")
  if os.geteuid() != 0:  # root reads a mode-000 file
    locked = write_input(folder, "unreadable", doc)
    os.chmod(locked, 0)
    check_refused([locked] + out, locked, r"cannot read \(Permission denied\)", "unreadable file")
  check(not os.path.exists(out[1]), "no report directory is made for a refused input")
  # and through the real command line: the same single line, no traceback
  path = write_input(folder, "cli", bad_result_files(doc)[0][1])
  p = subprocess.run([sys.executable, GENERATE, path] + out, capture_output=True, text=True)
  check(p.returncode == 1 and p.stderr.startswith(f"generate.py: {path}: empty file")
        and p.stderr.count("\n") == 1, f"generate.py on an empty file: exit 1, one line ({p})")


# ---- a benchmark file cut off mid-write: every complete entry, one warning
def entry_ends(text):
  """Where each benchmark entry of Google Benchmark's JSON `text` ends, from its layout (an
  entry's closing brace is a line of four spaces and '}'), not from a parser."""
  return [m.end() for m in re.finditer(r"\n    \}", text)]


def read_cut(folder, data, names, cut):
  """ar.load_results on the first `cut` bytes of `data` (entries' case `names`): '' when it
  reads exactly the entries the cut left complete, with one warning, or refuses a file without
  any; else what went wrong."""
  path = os.path.join(folder, "cut.json")
  with open(path, "wb") as f:
    f.write(data[:cut])
  want = len(entry_ends(data[:cut].decode("utf-8", "ignore")))
  try:
    run = ar.load_results([path])
  except ValueError as e:  # ar.InputError
    refused = want == 0 and re.search(r"truncated before .*: no results$", str(e))
    return "" if refused else f"cut at {cut}: {e}"
  cases = set(names[:want])
  ok = (len(run.warnings) == 1 and {c.name for c in run.all_cases()} == cases
        and run.warnings[0] == f"{path} is truncated (the run was interrupted?): read {want} "
        f"complete entries ({len(cases)} cases)")
  return "" if ok else f"cut at {cut}: {run.warnings}, {len(run.cases)} cases"


def test_truncated(work, testdata):
  folder = os.path.join(work, "cut")
  os.makedirs(folder)
  text = open(os.path.join(testdata, "quick.json")).read()
  doc = json.loads(text)
  ends = entry_ends(text)
  # quick.json: every byte from the end of the context to past the first entry, then every 997th
  start = text.index('"benchmarks"') - 80
  quick_cuts = list(range(start, ends[0] + 20)) + list(range(ends[0] + 20, len(text) - 2, 997))
  # tokens a cut can split: escapes, non-ASCII (a cut inside a UTF-8 sequence), exponents,
  # literals; every byte of a small file holding them
  tricky = copy.deepcopy(doc["benchmarks"][1])
  tricky.update(label='a "quoted" \\ label \u00e9\u4e2d', cpu_time=-1.5e-07, big_o=None,
                rms=True, workspace_bytes=2.5e+20)
  small = json.dumps({"context": doc["context"], "benchmarks": [doc["benchmarks"][0], tricky,
                                                                 doc["benchmarks"][2]]},
                     indent=2, ensure_ascii=False).encode()
  small_cuts = range(small.index(b'"benchmarks"') - 10, len(small) - 2)
  for what, data, cuts in (("quick.json", text.encode(), quick_cuts),
                           ("a file with escapes and non-ASCII", small, small_cuts)):
    names = [case_name(e) for e in json.loads(data)["benchmarks"]]
    bad = [r for r in (read_cut(folder, data, names, c) for c in cuts) if r]
    check(not bad, f"every cut of {what} reads the entries it left complete, with one warning "
          f"({len(bad)} of {len(cuts)} cuts wrong: {bad[:3]})")
  # through the command line: exit 0, one warning line, the summary says so
  cut = ends[len(ends) // 2] + 40
  path = os.path.join(folder, "results.json")
  with open(path, "w") as f:
    f.write(text[:cut])
  p = subprocess.run([sys.executable, GENERATE, path, "--out-dir", os.path.join(work, "cut-out")],
                     capture_output=True, text=True)
  want = len(entry_ends(text[:cut]))
  check(p.returncode == 0 and re.fullmatch(
      rf"generate.py: warning: {re.escape(path)} is truncated \(the run was interrupted\?\): "
      rf"read {want} complete entries \(\d+ cases\)\n", p.stderr),
      f"a truncated file gives a report and one warning line (got {p.returncode}, {p.stderr!r})")
  if p.returncode == 0:
    report = open(p.stdout.strip()).read()
    check(f"**Warning**: {path} is truncated" in report.split("## Machine", 1)[0],
          "the report's summary says its input was truncated")


# ---- cases the bench did not reach (interrupted), and a resumed run appended to the file
def iteration(e, real_time, rep):
  return dict(copy.deepcopy(e), run_type="iteration", real_time=real_time, repetition_index=rep)


def aggregate(e, name, real_time):
  return dict(copy.deepcopy(e), run_type="aggregate", aggregate_name=name, real_time=real_time,
              name=e["name"] + "_" + name)


def test_interrupted_and_resumed(work, doc):
  sweep = [e for e in entries(doc) if not parse(case_name(e))[1]
           and parse(case_name(e))[0] not in FIXED and not e.get("error_occurred")]
  cut = copy.deepcopy(doc)
  skipped = {case_name(e) for e in sweep[-5:]}
  for e in entries(cut):
    if case_name(e) in skipped:
      for k in [k for k in e if k not in ("name", "run_name", "run_type", "repetitions",
                                          "repetition_index", "threads", "family_index",
                                          "per_family_instance_index")]:
        del e[k]
      e.update(error_occurred=True, error_message="interrupted: SIGTERM before this case ran")
  path = os.path.join(work, "interrupted.json")
  json.dump(cut, open(path, "w"))
  text = open(run_generate([path, "--out-dir", os.path.join(work, "interrupted")])).read()
  summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
  check(re.search(r"\*\*5 case\(s\) not run\*\*: the benchmark was interrupted", summary),
        "the summary counts the 5 cases the interrupted run did not reach")
  # A fixture with failures of its own (a real run may have some) lists those, and only those.
  own = any(ar.status_of(e.get("error_message")) == ar.FAILED
            for e in entries(doc) if e.get("error_occurred"))
  listed = (text.split("**Failed cases (not timed):**", 1)[1].split("\n\n", 2)[1]
            if "**Failed cases" in text else "")
  check(not any(f"`{n}`" in listed for n in skipped)
        and (own or ("failed" not in text.split("## Decode", 1)[0]
                     and "Failed cases" not in text)),
        "interrupted cases are not failures")
  check(len(re.findall(r"\| not run(?= \|)", text)) >= 5,
        "tables show interrupted cases as 'not run'")

  # A resumed run appends to the file: case X was interrupted in run 1 and measured (3 reps +
  # aggregates) in run 2; case Y was measured in both (its aggregates disagree with the
  # iterations on purpose): medians over every iteration entry, aggregates unused.
  x, y = sweep[0], sweep[1]
  x_name, y_name = case_name(x), case_name(y)
  run1 = [dict(copy.deepcopy(x), error_occurred=True, error_message="interrupted: SIGINT"),
          iteration(y, 10.0, 0), aggregate(y, "median", 999.0), aggregate(y, "cv", 0.0)]
  run2 = [iteration(x, t, i) for i, t in enumerate((3.0, 1.0, 2.0))] + [
      aggregate(x, "median", 500.0), iteration(y, 20.0, 0), iteration(y, 40.0, 1),
      aggregate(y, "median", 999.0), aggregate(y, "mean", 999.0)]
  resumed = dict(copy.deepcopy(doc), benchmarks=run1 + run2)
  path = os.path.join(work, "resumed.json")
  json.dump(resumed, open(path, "w"))
  run = ar.load_results([path])
  unit = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[x["time_unit"]]
  cx = next(c for c in run.all_cases() if c.name == x_name)
  cy = next(c for c in run.all_cases() if c.name == y_name)
  check(cx.ok and abs(cx.time_s - 2.0 * unit) < 1e-12 * unit and cx.repetitions == 3,
        f"a case interrupted in run 1 and measured in run 2 is the median of run 2 "
        f"({cx.time_s}, {cx.error})")
  check(cy.ok and abs(cy.time_s - 20.0 * unit) < 1e-12 * unit and cy.repetitions == 3,
        f"a case measured in both runs is the median over all their repetitions ({cy.time_s})")


# ---- a report is replaced whole, or not at all
def tree(folder):
  """{path relative to folder: sha256} of every file below it."""
  out = {}
  for d, _, files in os.walk(folder):
    for f in files:
      p = os.path.join(d, f)
      out[os.path.relpath(p, folder)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
  return out


def interrupted_generate(argv, exc, at_call):
  """generate.main(argv) in this process with its plot writer raising `exc` on call `at_call`
  (a Ctrl-C or a full disk part way through): (exit code or exception, stderr, plots
  written before)."""
  real_save, calls = generate.save, []

  def failing_save(fig, out_dir, name, bottom=0.0):
    calls.append(name)
    if len(calls) == at_call:
      generate.plt.close(fig)
      raise exc
    return real_save(fig, out_dir, name, bottom)

  generate.save = failing_save
  try:
    rc, err = call_generate(argv)
  finally:
    generate.save = real_save
  return rc, err, len(calls) - 1


def test_atomic_output(work, doc):
  out = os.path.join(work, "atomic")
  # two datasets of one host and date (one folder name), one thread count to keep it short
  threads = sorted({parse(case_name(e))[2].get("threads") for e in entries(doc)} - {None})
  small = dict(doc, benchmarks=[e for e in entries(doc)
                                if parse(case_name(e))[2].get("threads") == threads[0]])
  old_input = os.path.join(work, "atomic-old", "quick.json")
  new_input = os.path.join(work, "atomic-new", "quick.json")  # same name, another dataset
  for path, data in ((old_input, small), (new_input, scaled(small, case_name(entries(small)[1]),
                                                               3.0))):
    os.makedirs(os.path.dirname(path))
    json.dump(data, open(path, "w"))
  path = run_generate([old_input, "--out-dir", out])
  folder = os.path.dirname(path)
  old = tree(folder)
  failures_to_try = (("Ctrl-C", KeyboardInterrupt(), 130),
                     ("a full disk", OSError(errno.ENOSPC, "No space left on device"), 1))
  for mode, argv, at_call in (("report", [new_input, "--out-dir", out], 3),
                              ("compare", ["compare", old_input, new_input, "--out-dir", out], 1)):
    if mode == "compare":  # the old comparison: A against itself (the same folder name)
      folder = os.path.dirname(run_generate(["compare", old_input, old_input, "--out-dir", out]))
      old = tree(folder)
    for what, exc, want_rc in failures_to_try:
      rc, err, plots = interrupted_generate(argv, exc, at_call)
      check(rc == want_rc and err.count("\n") == 1,
            f"{mode}: {what} exits {want_rc} with one line (got {rc!r}, {err!r})")
      check(tree(folder) == old, f"{mode}: {what} after {plots} new plot(s) leaves the old "
            "report exactly as it was")
      hidden = [f for f in os.listdir(out) if f.startswith(".")]
      check(not hidden, f"{mode}: {what} leaves no temporary directory behind ({hidden})")
    run_generate(argv)  # now it completes: the new report replaces the old one whole
    hidden = [f for f in os.listdir(out) if f.startswith(".")]
    check(tree(folder) != old and not hidden,
          f"{mode}: a completed run replaces the report and leaves nothing else ({hidden})")
    check_pngs(os.path.join(folder, "report.md"))  # no stale plot beside the new ones
  report = os.path.join(out, sorted(f for f in os.listdir(out) if not f.startswith("compare"))[0])
  check(tree(report)["data/quick.json"] == tree(os.path.dirname(new_input))["quick.json"],
        "data/ holds the input of the completed run")
  # regenerated from its own data/ copy, which lives in the directory being replaced
  run_generate([os.path.join(report, "data", "quick.json"), "--out-dir", out])
  check(tree(report)["data/quick.json"] == tree(os.path.dirname(new_input))["quick.json"],
        "a report regenerated from its own data/ copy keeps that copy")
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal_after_first_plot(sig, [old_input, "--out-dir", out], report)


def signal_after_first_plot(sig, argv, report):
  """A real Ctrl-C (SIGINT) or kill (SIGTERM) to generate.py once its first new plot exists:
  exit 130, one line, the old report exactly as it was, no temporary directory left."""
  old, out = tree(report), os.path.dirname(report)
  staged = os.path.join(out, f".{os.path.basename(report)}.*.tmp", "*.png")
  p = subprocess.Popen([sys.executable, GENERATE] + argv, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True,  # SIGINT may be ignored in ctest
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  deadline = time.monotonic() + 120
  while p.poll() is None and not glob.glob(staged) and time.monotonic() < deadline:
    time.sleep(0.01)
  if p.poll() is not None:  # finished before a plot was seen: nothing to interrupt
    print(f"note: generate.py finished before {sig.name} could be sent; not checked")
    p.communicate()
    return
  p.send_signal(sig)
  _, err = p.communicate()
  hidden = [f for f in os.listdir(out) if f.startswith(".")]
  check(p.returncode == 130 and err.count("\n") == 1 and tree(report) == old and not hidden,
        f"{sig.name} after the first plot: exit 130, one line, the old report as it was, "
        f"nothing left behind (got {p.returncode}, {err!r}, {hidden})")


def plain_flash_entry(doc):
  """The fixture's first measured fp32 flash sweep entry: what the serving tests copy."""
  return next(e for e in entries(doc) if e.get("run_type") == "iteration" and
              not e.get("error_occurred") and parse(case_name(e))[0] == "flash" and
              not parse(case_name(e))[1] and "dtype" not in parse(case_name(e))[2])


def report_of(work, name, doc):
  """The Markdown report generate.py writes for `doc` in a fresh folder `name` of `work`."""
  folder = os.path.join(work, name)
  os.makedirs(folder)
  path = os.path.join(folder, "r.json")
  json.dump(doc, open(path, "w"))
  return open(run_generate([path, "--out-dir", folder])).read()


def test_modifiers(work, doc):
  """softcap/alibi/sinks cases (issue 20) beside the fixture's flash sweep cases: the Score
  modifiers section divides each by the plain case of its shape (1.05 within the 1.10 target,
  1.5 flagged over it), a case without a plain one says so, and the Other scenarios section
  leaves them out."""
  out = copy.deepcopy(doc)
  plain = plain_flash_entry(doc)
  name = case_name(plain)
  ratios = {"softcap": 1.5, "alibi": 1.05}
  for scen, ratio in ratios.items():
    e = copy.deepcopy(plain)
    e["name"] = e["run_name"] = name.replace("flash/", f"flash/{scen}/", 1) + "/real_time"
    e["real_time"] = median_times(doc)[name] * ratio
    out["benchmarks"].append(e)
  lonely = copy.deepcopy(plain)
  lonely["name"] = lonely["run_name"] = "flash/sinks/N:3/d:64/causal:0/threads:1/real_time"
  out["benchmarks"].append(lonely)
  text = report_of(work, "modifiers", out)
  body = section(text, "## Score modifiers")
  check("| softcap | " in body and "1.5 (over target)" in body,
        "the softcap case is divided by its plain case and flagged over 1.10")
  check(re.search(r"\| alibi \| [^|]+ \| [^|]+ \| 1\.05 \|", body) is not None,
        f"the alibi case reads 1.05, not flagged:\n{body}")
  check("no plain case" in body, "a modifier case without its plain case says so")
  other = section(text, "## Other scenarios") if "## Other scenarios" in text else ""
  check("### softcap" not in other and "### alibi" not in other,
        "Other scenarios leaves the modifier scenarios to their own section")


def test_varlen(work, doc):
  """varlen/padded/padded_mask cases (issue 20): the Packed variable-length batches section
  divides each padded time by the packed one (padded_mask 5x meets the 3x target, 2.5x is
  flagged under it), a packed case without padded ones says so, and Other scenarios leaves
  them out."""
  out = copy.deepcopy(doc)
  plain = plain_flash_entry(doc)
  t = median_times(doc)[case_name(plain)]
  for lmax, times in ((64, {"varlen": 1.0, "padded": 2.0, "padded_mask": 5.0}),
                      (128, {"varlen": 1.0, "padded": 1.5, "padded_mask": 2.5}),
                      (256, {"varlen": 1.0})):
    for scen, ratio in times.items():
      e = copy.deepcopy(plain)
      e["name"] = e["run_name"] = f"flash/{scen}/Lmax:{lmax}/d:64/causal:1/threads:1/real_time"
      e["real_time"] = t * ratio
      out["benchmarks"].append(e)
  text = report_of(work, "varlen", out)
  body = section(text, "## Packed variable-length batches")
  check(re.search(r"Lmax=64[^\n]*\| 2 \|[^\n]*\| 5 \|", body) is not None,
        f"Lmax 64: padded 2x, padded_mask 5x, not flagged:\n{body}")
  check("2.5 (under target)" in body, f"Lmax 128: 2.5x under the 3x target is flagged:\n{body}")
  check("no padded case" in body, "a packed case without padded ones says so")
  other = section(text, "## Other scenarios") if "## Other scenarios" in text else ""
  check("### varlen" not in other and "### padded" not in other,
        "Other scenarios leaves the varlen scenarios to their own section")


def test_paged(work, doc):
  """paged decode cases (issue 20) beside a contiguous decode case: the Paged K/V decode
  section divides the decode time by each block size's (0.97 meets the 0.95 target, 0.8 is
  flagged under it), a paged case without its decode case says so, and Other scenarios leaves
  them out."""
  out = copy.deepcopy(doc)
  plain = plain_flash_entry(doc)
  t = median_times(doc)[case_name(plain)]
  for name, ratio in (("decode/Lk:3000/d:64/Hkv:8", 1.0), ("paged/Lk:3000/d:64/Hkv:8/bs:16", 1.25),
                      ("paged/Lk:3000/d:64/Hkv:8/bs:128", 1 / 0.97),
                      ("paged/Lk:6000/d:64/Hkv:8/bs:16", 1.0)):
    e = copy.deepcopy(plain)
    e["name"] = e["run_name"] = f"flash/{name}/threads:1/real_time"
    e["real_time"] = t * ratio
    e["GBps"] = 20.0 / ratio  # decode entries carry their bandwidth
    out["benchmarks"].append(e)
  # The read ceilings of Lk = 3000 (the contiguous read twice as fast as block size 16's; none
  # for block size 128): ceiling_read entries carry GBps like decode.
  for name, ratio in (("decode/Lk:3000/d:64/Hkv:8", 1.0), ("paged/Lk:3000/d:64/Hkv:8/bs:16", 2.0)):
    e = copy.deepcopy(plain)
    e["name"] = e["run_name"] = f"ceiling_read/{name}/threads:1/real_time"
    e["real_time"] = t * ratio / 4
    e["GBps"] = 80.0 / ratio
    for key in ("GFLOPS", "label"):
      e.pop(key, None)
    out["benchmarks"].append(e)
  text = report_of(work, "paged", out)
  body = section(text, "## Paged K/V decode")
  check("0.8 (under target)" in body, f"block size 16 at 0.8x is flagged:\n{body}")
  check(re.search(r"\| 16 \| [^|]+ \| [^|]+ \| 0\.8 \(under target\) \| [^|]+ \| 0\.5 \| 1\.6 \|",
                  body) is not None,
        f"block size 16: read ceiling 0.5 (the reads' time ratio), speed / ceiling 1.6:\n{body}")
  check(re.search(r"\| 128 \| [^|]+ \| [^|]+ \| 0\.97 \| [^|]+ \| not in this run \|", body)
        is not None, f"block size 128 reads 0.97, not flagged, no read ceiling:\n{body}")
  check("no contiguous case" in body, "a paged case without its decode case says so")
  check("ceiling_read" not in section(text, "## Other scenarios") if "## Other scenarios" in text
        else True, "the read ceilings are not a scenario of their own")
  other = section(text, "## Other scenarios") if "## Other scenarios" in text else ""
  check("### paged" not in other, "Other scenarios leaves paged decode to its own section")


def test_core_clock(work, doc):
  """core_ghz (bench/core_clock.h): the ceilings table gains the loop's clock, the micro-kernel
  table each entry's clock and its fraction of the peak per cycle (the fraction x the loop's
  clock / the entry's), and each sweep group a core clock table with the same per cycle."""
  full = with_ceilings(doc)
  loop_ghz, work_ghz = 3.6, 3.0
  for e in full["benchmarks"]:
    name = case_name(e)
    if name.startswith("ceiling_fma/"):
      e["core_ghz"] = loop_ghz
    elif name.startswith(("ukernel/", "flash/")) and "GFLOPS" in e:
      e["core_ghz"] = work_ghz
  path_in = os.path.join(work, "clock.json")
  json.dump(full, open(path_in, "w"))
  text = open(run_generate([path_in, "--out-dir", os.path.join(work, "clock")])).read()
  fma = {t: statistics.median(r) for t, r in FMA_REPS.items()}
  rows = table_after(section(text, "## Ceilings and roofline"), "ceilings\n")
  for t in FMA_REPS:
    row = next((r for r in rows if r[0] == str(t)), [])
    check(row[3:4] == [f"{loop_ghz:.2f}"], f"ceilings row for threads={t} has the clock ({row})")
  ukernel = section(text, "## Micro-kernels")
  med = {}
  for e in entries(full):
    if case_name(e).startswith("ukernel/") and "GFLOPS" in e:
      med.setdefault(case_name(e), []).append(e["GFLOPS"])
  check(bool(med), "the fixture has micro-kernel cases with GFLOPS")
  for name, gs in med.items():
    f = statistics.median(gs) / fma[1]
    want = f"| {generate.fmt_pct(f)} | {work_ghz:.2f} | {generate.fmt_pct(f * loop_ghz / work_ghz)} |"
    check(any(want in l for l in ukernel.splitlines() if f"`{parse(name)[1]}`" in l),
          f"{name}: {want} in the micro-kernel table")
  sweep = section(text, "## Sweep")
  check("**Core clock**, GHz" in sweep, "the sweep groups have a core clock table")
  flash = [e for e in entries(full) if case_name(e).startswith("flash/N:")
           and "GFLOPS_dense" in e and parse(case_name(e))[2].get("causal") == "0"
           and parse(case_name(e))[2].get("threads") == "1"]
  if flash:
    by_name = {}
    for e in flash:
      by_name.setdefault(case_name(e), []).append(e["GFLOPS_dense"])
    fractions = [statistics.median(g) / fma[1] for g in by_name.values()]
    cells = [f"{work_ghz:.2f} ({f * loop_ghz / work_ghz:.2f})" for f in fractions]
    check(any(c in sweep for c in cells), f"a flash cell of the core clock table: one of {cells}")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--work-dir", default="/tmp/attnlab-report-test")
  ap.add_argument("--testdata", default=os.path.join(HERE, "testdata"))
  args = ap.parse_args()
  shutil.rmtree(args.work_dir, ignore_errors=True)
  os.makedirs(args.work_dir)
  doc = test_report(args.work_dir, args.testdata)
  test_missing_pieces(args.work_dir, doc)
  test_two_hosts(args.work_dir, doc)
  test_compare(args.work_dir, doc)
  accdoc = json.load(open(os.path.join(args.testdata, "quick-accuracy.json")))
  test_bad_inputs(args.work_dir, doc, accdoc, args.testdata)
  test_accuracy_not_run_and_non_finite(args.work_dir, args.testdata, accdoc)
  test_accuracy_backward(args.work_dir, args.testdata, accdoc)
  test_truncated(args.work_dir, args.testdata)
  test_interrupted_and_resumed(args.work_dir, doc)
  test_atomic_output(args.work_dir, doc)
  test_precision(args.work_dir, doc, accdoc)
  test_ceilings(args.work_dir, doc)
  test_core_clock(args.work_dir, doc)
  test_isa_ceilings(args.work_dir, doc)
  test_openblas_core(args.work_dir, doc)
  test_auto(args.work_dir, doc)
  test_thread_times(args.work_dir, doc)
  test_peers(args.work_dir, doc)
  test_backward(args.work_dir, doc)
  test_backward_targets(args.work_dir, doc)
  test_backward_peers(args.work_dir, doc)
  test_modifiers(args.work_dir, doc)
  test_varlen(args.work_dir, doc)
  test_paged(args.work_dir, doc)
  if failures:
    print(f"{len(failures)} check(s) failed")
    return 1
  print("all report checks passed")
  return 0


if __name__ == "__main__":
  sys.exit(main())
