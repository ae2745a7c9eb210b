#!/usr/bin/python3
"""Test of reports/generate.py on the checked-in quick-suite fixture (run by ctest).

Reads reports/testdata/quick.json and quick-accuracy.json; replacing the fixture is a copy of
those two files. Expectations are derived from the fixture itself with a parse independent of
the generator's: every (d, causal, threads) sweep group must get its time, GFLOPS and memory
plots and its tables, every decode group its plot, every scenario its table, every over-budget
case its entry, the summary must name the fastest variant at the largest N of each group, every
referenced PNG must exist and be a valid PNG (all chunk CRCs checked), and compare mode must flag
a case that was made 10x slower and nothing else.

Usage: test_generate.py [--work-dir DIR] [--testdata DIR]
"""
import argparse
import copy
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
GENERATE = os.path.join(HERE, "generate.py")
FIXED = ("ceiling_sgemm", "ceiling_stream", "layer")

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
  rest = toks[2:] if fam == "layer" else toks[1:]
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
                  "## Other scenarios", "## End-to-end MHA layer", "## Accuracy"):
    check(section in text, f"report has section {section!r}")
  for k, v in ctx.items():
    if k.startswith("attnlab_"):
      check(f"`{k}`" in text and str(v).replace("|", "\\|") in text,
            f"context key {k} and its value are in the report")
  check("caches" in text and "L1" in text, "caches are in the report")

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

  # over budget and failures
  for e in entries(doc):
    if e.get("error_occurred"):
      fam = case_name(e).split("/")[0]
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
      "## Accuracy": bool(accdoc["results"]),
  }
  for section, has in present.items():
    body = text.split(section, 1)[1].split("\n## ", 1)[0]
    check(("not in this run" in body) != has,
          f"{section} says 'not in this run' exactly when the fixture lacks it ({has=})")
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
  if failures:
    print(f"{len(failures)} check(s) failed")
    return 1
  print("all report checks passed")
  return 0


if __name__ == "__main__":
  sys.exit(main())
