#!/usr/bin/python3
"""attnlab report generator: benchmark JSON -> report.md + PNG plots.

  generate.py RESULTS.json... [--accuracy ACC.json]... [--label L] [--out-dir reports]
      writes <out-dir>/<host>-<date>[-<label>]/report.md and its PNGs; prints the report path.
  generate.py compare A.json B.json [--label L] [--out-dir reports] [--match-ignore threads]
      [--select-a TOKEN] [--select-b TOKEN] [--noise-floor 0.05]
      A/B ratio table and plot; prints the report path.

Runs under /usr/bin/python3 (Debian's numpy + matplotlib). Every number in the report is read
from the JSON (docs/bench-json.md); variants are discovered from it, never listed here.
"""
import argparse
import contextlib
import datetime
import math
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attnlab_results as ar  # noqa: E402

NOT_IN_RUN = "_not in this run_"
DPI = 110


# ----------------------------------------------------------------------------- formatting
def fmt_time(seconds):
  if seconds is None:
    return "—"
  ms = seconds * 1e3
  if ms >= 100:
    return f"{ms:.0f}"
  if ms >= 1:
    return f"{ms:.2f}"
  return f"{ms:.3g}"


def fmt_num(x, digits=3):
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "—"
  if abs(x) >= 100:
    return f"{x:.0f}"
  return f"{x:.{digits}g}"


def fmt_bytes(b):
  if b is None:
    return "—"
  for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if abs(b) >= scale:
      return f"{b / scale:.1f} {unit}"
  return f"{b:.0f} B"


def fmt_pct(x):
  return "—" if x is None else f"{100 * x:.0f}%"


def slug(text):
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_")


def natural_key(text):
  """'flash/N:128' sorts before 'flash/N:1024'."""
  return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)]


_PARAM_ORDER = ("d", "causal", "threads")


def group_key(source, gp):
  """Sort key for (source, params tuple): numbers numerically, d then causal then threads."""
  gpd = dict(gp)
  order = [k for k in _PARAM_ORDER if k in gpd] + sorted(k for k in gpd if k not in _PARAM_ORDER)
  return (source, [(k, (0, gpd[k], "") if isinstance(gpd[k], (int, float))
                    else (1, 0, str(gpd[k]))) for k in order])


def gh_anchor(heading):
  """The anchor GitHub gives a markdown heading."""
  text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
  return text.replace(" ", "-")


def md_table(header, rows, align=None):
  align = align or (["---"] + ["---:"] * (len(header) - 1))
  out = ["| " + " | ".join(str(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
  for r in rows:  # a '|' inside a cell (e.g. in an error message) must not split it
    out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
  return "\n".join(out)


def pivot_groups(cases, pivot):
  """The cases that have the parameter `pivot`, grouped by source and every other parameter
  but N, in report order: [((source, params), {variant: {N: {value of pivot: case}}})]."""
  groups = {}
  for c in cases:
    if pivot not in c.params:
      continue
    key = (c.source, tuple(sorted((k, v) for k, v in c.params.items() if k not in (pivot, "N"))))
    groups.setdefault(key, {}).setdefault(c.variant, {}).setdefault(
        c.params["N"], {})[c.params[pivot]] = c
  return sorted(groups.items(), key=lambda kv: group_key(*kv[0]))


def pivot_rows(by_v, cell):
  """The table of one pivot group: (variants, ns, rows), a row per N and a column per variant,
  each cell cell({value of pivot: case}) for that variant and N, "—" where it gives None."""
  variants = sorted(by_v)
  ns = sorted({n for d in by_v.values() for n in d})
  rows = [[n] + [cell(by_v[v].get(n, {})) or "—" for v in variants] for n in ns]
  return variants, ns, rows


_LABEL_ORDER = ("N", "Lq", "Lk", "d", "causal", "w", "H", "Hkv", "bytes", "threads")


def params_label(params, skip=()):
  keys = [k for k in _LABEL_ORDER if k in params] + [k for k in params if k not in _LABEL_ORDER]
  return ", ".join(f"{k}={params[k]}" for k in keys if k not in skip)


def run_date(context):
  """YYYY-MM-DD from Google Benchmark's context date (ISO 8601 in 1.7)."""
  text = str(context.get("date", ""))
  m = re.match(r"(\d{4}-\d{2}-\d{2})", text)
  if m:
    return m.group(1)
  for fmt in ("%a %b %d %H:%M:%S %Y", "%m/%d/%y-%H:%M:%S"):
    try:
      return datetime.datetime.strptime(text, fmt).strftime("%Y-%m-%d")
    except ValueError:
      pass
  return slug(text) or "nodate"


# ----------------------------------------------------------------------------- plotting
def variant_colors(names):
  """Deterministic colors: the sorted variant names take tab10 colors in order."""
  cmap = plt.get_cmap("tab10")
  return {n: cmap(i % 10) for i, n in enumerate(sorted(names))}


def bytes_formatter():
  return ticker.FuncFormatter(lambda y, _: fmt_bytes(y).replace(".0 ", " "))


def pow2_x_axis(ax, values):
  ax.set_xscale("log", base=2)
  vals = sorted(set(values))
  if vals and len(vals) <= 12:
    ax.set_xticks(vals)
    ax.get_xaxis().set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.get_xaxis().set_minor_locator(ticker.NullLocator())


def legend_below(fig, axes, ncol=5):
  """One legend for the whole figure, under the plots, so it never hides data."""
  seen = {}
  for ax in axes:
    for h, lab in zip(*ax.get_legend_handles_labels()):
      seen.setdefault(lab, h)
  if not seen:
    return 0.0
  rows = math.ceil(len(seen) / ncol)
  fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=min(ncol, len(seen)),
             fontsize=8, frameon=False)
  return 0.02 + 0.045 * rows


def save(fig, out_dir, name, bottom=0.0):
  fig.tight_layout(rect=(0, bottom, 1, 1))
  fig.savefig(os.path.join(out_dir, name), dpi=DPI)
  plt.close(fig)
  return name


# ----------------------------------------------------------------------------- report pieces
def case_cell(c, fn):
  """A table cell for case `c`: '—' when absent, 'over budget' / 'not run' (the run was
  interrupted) / 'failed' when it did not run, else fn(c)."""
  if c is None:
    return "—"
  return fn(c) if c.ok else c.status


def memory_cell(c):
  """'<workspace, measured> / <peak RSS growth>' of a case that ran."""
  return (f"{fmt_bytes(c.counter('workspace_bytes'))} / "
          f"{fmt_bytes(c.counter('peak_rss_delta_bytes'))}")


class Report:
  def __init__(self, run, accuracy, out_dir, baselines, precision_focus="flash"):
    self.run = run
    self.precision_focus_name = precision_focus  # plotted first in *Reduced precision*
    # The forward's results (O) and the backward's (dQ, dK, dV: "pass": "backward").
    self.acc_contexts = accuracy.contexts
    self.acc_rows = [r for r in accuracy.rows if not r.backward]
    self.acc_grad_rows = [r for r in accuracy.rows if r.backward]
    self.out_dir = out_dir
    self.baselines = baselines
    self.lines = []
    self.summary = [f"- **Warning**: {w}." for w in run.warnings + accuracy.warnings]
    self.pngs = []
    variants = {c.variant for c in run.all_cases() if c.variant}
    variants.update(r.variant for r in self.acc_rows)
    self.colors = variant_colors(variants)
    self.multi_host = len(run.sources()) > 1

  def add(self, *lines):
    self.lines.extend(lines)

  def f32_cases(self):
    """Every case but the variants' reduced-precision ones (a `dtype:` name token): what the
    sections before *Reduced precision* show, as they did before element types existed."""
    return [c for c in self.run.all_cases()
            if c.family != ar.CEILING_MATMUL_BF16 and (c.dtype == ar.F32 or not c.variant)]

  def image(self, name, alt):
    self.pngs.append(name)
    self.add(f"![{alt}]({name})", "")

  def host_prefix(self, source):
    return f"{source}: " if self.multi_host else ""

  # ---- context
  def context_section(self):
    self.add("## Machine and build", "")
    contexts = dict(self.run.contexts)
    for s, c in self.acc_contexts.items():
      contexts.setdefault(s, c)
    if not contexts:
      self.add(NOT_IN_RUN, "")
      return
    sources = sorted(contexts)
    keys = []
    preferred = ["host_name", "date", "attnlab_cpu_model", "num_cpus", "mhz_per_cpu",
                 "cpu_scaling_enabled", "load_avg", "library_build_type", "executable"]
    for k in preferred:
      if any(k in contexts[s] for s in sources):
        keys.append(k)
    for s in sources:
      for k in sorted(contexts[s]):
        if k not in keys and k != "caches":
          keys.append(k)
    rows = []
    for k in keys:
      row = [f"`{k}`"]
      for s in sources:
        v = contexts[s].get(k, "—")
        if isinstance(v, list):
          v = ", ".join(fmt_num(x) if isinstance(x, float) else str(x) for x in v)
        if k == "attnlab_memory_budget_bytes":
          try:
            v = f"{v} ({fmt_bytes(float(v))})"
          except ValueError:
            pass
        row.append(str(v))
      rows.append(row)
    caches_row = ["caches"]
    for s in sources:
      caches = contexts[s].get("caches")
      if caches:
        caches_row.append("; ".join(
            f"L{c.get('level')} {c.get('type')} {fmt_bytes(c.get('size', 0))}"
            + (f" (shared by {c['num_sharing']})" if c.get("num_sharing", 1) > 1 else "")
            for c in caches))
      else:
        caches_row.append("—")
    rows.append(caches_row)
    self.add(md_table(["key"] + sources, rows, ["---"] * (len(sources) + 1)), "")
    for s in sources:
      files = self.run.files.get(s, [])
      if files:
        self.add(f"Results of `{s}` from: " + ", ".join(f"`{os.path.basename(p)}`"
                                                        for p in files) + "  ")
    self.add("")

  # ---- sweep
  def sweep_groups(self):
    """{(source, group params tuple): {variant: {N: case}}, plus ceilings {N: case} and peers
    {peer column: {N: case}}}. A peer's cases of every element type join the f32 group of
    their shape (a bf16 peer is what a user would run instead of attnlab's f32 too)."""
    groups = {}
    peers = {}
    for c in self.f32_cases():
      if (c.scenario or "N" not in c.params
          or c.family in (ar.CEILING_STREAM, ar.LAYER, ar.GRAD)):
        continue
      if ar.is_peer(c.family):
        gparams = tuple(sorted((k, v) for k, v in c.params.items()
                               if k not in ("N", ar.DTYPE_PARAM)))
        peers.setdefault((c.source, gparams), {}).setdefault(self.peer_column(c), {})[
            c.params["N"]] = c
        continue
      gparams = tuple(sorted((k, v) for k, v in c.params.items() if k != "N"))
      g = groups.setdefault((c.source, gparams), {"variants": {}, "ceiling": {}, "peers": {}})
      if c.family == ar.CEILING_SGEMM:
        g["ceiling"][c.params["N"]] = c
      else:
        g["variants"].setdefault(c.variant, {})[c.params["N"]] = c
    for key, by_peer in peers.items():  # a peer shape without attnlab's cases is not shown
      if key in groups:
        groups[key]["peers"] = by_peer
    return {k: groups[k] for k in sorted(groups, key=lambda k: group_key(*k))}

  @staticmethod
  def peer_column(case):
    """A peer's column: its family, plus its element types when not f32."""
    return case.family + ("" if case.dtype == ar.F32 else f" {case.dtype}")

  @staticmethod
  def peer_words(column, cases):
    """'PyTorch 1.13.1 plain', 'PyTorch 2.5.1 SDPA bf16': the library and version from the
    cases' path label ("torch <version> ..."), the path from the family."""
    paths = [c.path for c in cases if c.path]
    lib = " ".join(paths[0].split()[:2]).replace("torch", "PyTorch", 1) if paths else "PyTorch"
    family, _, dtype = column.partition(" ")
    what = {"peer_torch_plain": "plain", "peer_torch_sdpa": "SDPA"}.get(
        family, family[len(ar.PEER_PREFIX):])
    return f"{lib} {what}" + (f" {dtype}" if dtype else "")

  def peers_focus(self, variants):
    """The variant judged against the peers: --precision-focus (flash) when it ran, else
    None."""
    return self.precision_focus_name if self.precision_focus_name in variants else None

  PEERS_ABSENT = "Peers: not in this run (install python3-torch; see README)"

  def ceiling_of(self, case):
    """The ceiling_sgemm case bounding `case` (same tokens without the variant)."""
    rest = case.name.split("/", 1)[1] if "/" in case.name else ""
    return self.run.cases.get((case.source, f"{ar.CEILING_SGEMM}/{rest}"))

  @staticmethod
  def rate(case):
    """The GFLOP/s a ceiling fraction divides: GFLOPS_dense for dense cases, the effective
    (unmasked-work) GFLOPS for causal/windowed ones."""
    masked = case.params.get("causal", 0) not in (0, "0") or "w" in case.params
    return case.counter("GFLOPS") if masked else (case.counter("GFLOPS_dense")
                                                  or case.counter("GFLOPS"))

  @classmethod
  def fraction(cls, case, ceiling):
    """Variant GFLOPS over the sgemm ceiling (Report.rate: effective GFLOPS when masked)."""
    if not case or not case.ok or not ceiling or not ceiling.ok:
      return None
    cg = ceiling.counter("GFLOPS")
    if not cg:
      return None
    g = cls.rate(case)
    return None if g is None else g / cg

  def fma_ceiling(self, source, threads):
    """The ceiling_fma case of `source` at `threads` that ran, or None (an older file)."""
    c = self.run.cases.get((source, f"{ar.CEILING_FMA}/threads:{threads}"))
    return c if c and c.ok and c.counter("GFLOPS") else None

  def fma_ceilings(self, source):
    """{threads: ceiling_fma case} of `source`."""
    return {c.params["threads"]: c for c in self.run.all_cases()
            if c.source == source and c.family == ar.CEILING_FMA and "threads" in c.params
            and self.fma_ceiling(source, c.params["threads"]) is c}

  def stream_ceiling(self, source, threads):
    """The ceiling_stream case of `source` at `threads` with the largest streamed size (the
    DRAM-bound one) that ran, or None. Read with .best("GBps"): its best repetition."""
    st = sorted((c for c in self.run.all_cases() if c.family == ar.CEILING_STREAM and c.ok
                 and c.source == source and c.params.get("threads") == threads
                 and c.best("GBps")), key=lambda c: c.params.get("bytes", 0))
    return st[-1] if st else None

  def fma_fraction(self, case):
    """Variant GFLOPS (Report.rate) over ceiling_fma at the case's threads, or None."""
    if not case or not case.ok:
      return None
    fma = self.fma_ceiling(case.source, case.params.get("threads"))
    g = self.rate(case)
    return None if fma is None or g is None else g / fma.counter("GFLOPS")

  # ---- ceilings and roofline (before everything else: pictures are read before tables)
  def ceilings_section(self):
    self.add("## Ceilings and roofline", "")
    sources = self.run.sources()
    fma = {s: self.fma_ceilings(s) for s in sources}
    if not any(fma.values()):
      self.add(NOT_IN_RUN + ": no `ceiling_fma` case (a file from before the bench measured the "
               "FMA peak in every suite), so no roofline and no fraction of ceiling_fma below.",
               "")
      return
    self.add("`ceiling_fma/threads:T`: a register-resident loop of independent fp32 FMAs on the "
             "dispatched Highway target (nothing loaded or stored), one loop per thread: the "
             "machine's arithmetic peak, which every variant's GFLOP/s is a fraction of. "
             "`ceiling_stream`: an OpenMP read-and-sum over 1 GiB on 2 MiB pages (as every "
             "case's K and V since 2026-12-06), the DRAM read bandwidth. In "
             "the suites that repeat their cases (default, full) each ceiling runs more often "
             "than a case, its repetitions shuffled among all of theirs, so it is measured all "
             "through the run and a drift of the clock or of the bandwidth shows in both. "
             "ceiling_fma is the median of its repetitions, as every case's figure is; "
             "ceiling_stream is its **best** repetition (the bandwidth the memory gave when "
             "least disturbed; decode fractions divide by it).", "")
    self.add("Roofline: x = arithmetic intensity = the case's FLOPs (GFLOPS × time: the "
             "unmasked pairs) / its compulsory bytes (counter `bytes_min`: Q, K, V and O once, "
             "at their element sizes), y = its GFLOP/s, both log scales; the roofs are "
             "ceiling_fma (flat) and ceiling_stream GB/s × intensity (slanted), meeting at the "
             "ridge. Every f32 variant case that ran (layers, backward passes and micro-kernels "
             "aside), one color per variant, one marker per scenario: a point under the "
             "slanted roof is bound by memory (decode), one under the flat roof by the FMA "
             "units.", "")
    for source in sources:
      if not fma[source]:
        self.add(f"{self.host_prefix(source)}no `ceiling_fma` case.", "")
        continue
      self.roofline(source, fma[source])
      threads = sorted(set(fma[source]) | {c.params["threads"] for c in self.run.all_cases()
                                           if c.source == source and c.family ==
                                           ar.CEILING_STREAM and "threads" in c.params})
      # The reduced-precision peaks (ceiling_vdpbf16ps, ceiling_amx, ceiling_vpdpwssd: where
      # the CPU has the ISA): a column each when the file has it.
      peaks = []
      for family, bounds, isa in ar.ISA_CEILINGS:
        by_threads = {c.params["threads"]: c for c in self.run.all_cases()
                      if c.source == source and c.family == family and c.ok
                      and "threads" in c.params and c.counter("GFLOPS")}
        if by_threads:
          peaks.append((family, bounds, isa, by_threads, []))
      # The loops' clock (core_ghz), a column when the file has it (files from before
      # 2026-12-07 do not).
      clocked = any(f.counter("core_ghz") for f in fma[source].values())
      rows, fma_text, stream_text = [], [], []
      for t in threads:
        f, st = fma[source].get(t), self.stream_ceiling(source, t)
        p = f.counter("GFLOPS") if f else None
        gb = st.best("GBps") if st else None
        spread = "—"
        if f and len(f.samples) > 1:
          vals = [x["GFLOPS"] for x in f.samples if "GFLOPS" in x]
          spread = f"{fmt_num(min(vals))}–{fmt_num(max(vals))} ({len(vals)})"
        ghz = f.counter("core_ghz") if f else None
        clock = [f"{ghz:.2f}" if ghz else "—"] if clocked else []
        rows.append([t, fmt_num(p), spread] + clock
                    + [(f.path or "—") if f else "—", fmt_num(gb),
                       fmt_num(st.counter("GBps")) if st else "—",
                       fmt_num(p / gb) if p and gb else "—"])
        for _, _, _, by_threads, text in peaks:
          g = by_threads[t].counter("GFLOPS") if t in by_threads else None
          g_ghz = by_threads[t].counter("core_ghz") if t in by_threads else None
          rows[-1].append(fmt_num(g) + (f" at {g_ghz:.2f} GHz" if g and g_ghz else ""))
          if g:
            text.append(f"{fmt_num(g)} GFLOP/s on {t}")
        if p:
          fma_text.append(f"{fmt_num(p)} GFLOP/s on {t} thread{'s' if t != 1 else ''}")
        if gb:
          stream_text.append(f"{fmt_num(gb)} GB/s on {t}")
      self.add(f"{self.host_prefix(source)}ceilings", "",
               md_table(["threads", "ceiling_fma GFLOP/s (median)", "min–max (repetitions)"]
                        + (["core clock, GHz (`core_ghz`)"] if clocked else [])
                        + ["target", "ceiling_stream GB/s (best)", "stream median",
                           "ridge (FLOP/byte)"]
                        + [f"{family} GFLOP/s (median; {bounds})" for family, bounds, *_ in peaks],
                        rows), "")
      targets = sorted({f.path for f in fma[source].values() if f.path})
      self.summary.append(
          f"- Ceilings{' on ' + source if self.multi_host else ''}: ceiling_fma "
          + ", ".join(fma_text) + (f" ({', '.join(targets)}, median)" if targets else "")
          + ("; ceiling_stream " + ", ".join(stream_text) + " (best repetition)"
             if stream_text else "")
          + "".join(f"; {family} {', '.join(text)} ({isa})"
                    for family, _, isa, _, text in peaks if text)
          + self.openblas_core_text(source)
          + "; roofline in *Ceilings and roofline*.")

  def openblas_core_text(self, source):
    """'; ceiling_sgemm on OpenBLAS core Cooperlake (chosen by attnlab: OpenBLAS picked
    Prescott, ...)' from the run's context (kernels/openblas_core.h), '' without it."""
    ctx = self.run.contexts.get(source, {})
    core = ctx.get("attnlab_openblas_core")
    if not core:
      return ""
    by = ctx.get("attnlab_openblas_core_chosen_by")
    why = {"attnlab": "chosen by attnlab: OpenBLAS picked "
                      f"{ctx.get('attnlab_openblas_core_detected')}, its fallback for a CPU it "
                      "does not know",
           "OPENBLAS_CORETYPE": "set by OPENBLAS_CORETYPE",
           "OpenBLAS": "detected by OpenBLAS"}.get(by)
    return f"; ceiling_sgemm on OpenBLAS core {core}" + (f" ({why})" if why else "")

  _SCENARIO_MARKERS = {"": "o", "decode": "s", "gqa": "^", "window": "D", "cross": "v"}

  @staticmethod
  def intensity(case):
    """The roofline's x: FLOPs per call (GFLOPS × time, the unmasked pairs' FLOPs) / the
    case's compulsory bytes (`bytes_min`: Q, K, V and O once). None without the counters."""
    g, b = case.counter("GFLOPS"), case.counter("bytes_min")
    return g * 1e9 * case.time_s / b if g and b and case.time_s else None

  def roofline(self, source, fma):
    """roofline_<source>.png: a panel per thread count, each f32 variant case a point."""
    cases = [c for c in self.f32_cases() if c.source == source and c.is_variant
             and c.ok and c.time_s and "threads" in c.params
             and c.counter("GFLOPS") and c.counter("bytes_min")]
    threads = sorted(set(fma) | {c.params["threads"] for c in cases})
    fig, axes = plt.subplots(1, len(threads), figsize=(6.4 * len(threads), 5.6), squeeze=False,
                             sharey=True)
    scenarios = sorted({c.scenario for c in cases})
    ys_all = []
    for ax, t in zip(axes[0], threads):
      pts = [(self.intensity(c), c.counter("GFLOPS"), c) for c in cases
             if c.params["threads"] == t]
      for (v, sc) in sorted({(c.variant, c.scenario) for _, _, c in pts}):
        mine = [(x, y) for x, y, c in pts if c.variant == v and c.scenario == sc]
        ax.scatter([x for x, _ in mine], [y for _, y in mine], s=26, alpha=0.85, zorder=3,
                   color=self.colors[v], marker=self._SCENARIO_MARKERS.get(sc, "x"))
      f, st = fma.get(t), self.stream_ceiling(source, t)
      peak = f.counter("GFLOPS") if f else None
      bw = st.best("GBps") if st else None
      xs = [x for x, _, _ in pts] + ([peak / bw] if peak and bw else [])
      lo, hi = (min(xs) / 4, max(xs) * 4) if xs else (0.1, 1e3)
      ys_all += [y for _, y, _ in pts] + ([peak] if peak else [])
      if peak and bw:
        ridge = peak / bw
        ax.plot([lo, ridge], [bw * lo, peak], "k-", lw=2, zorder=2)
        ax.plot([ridge, hi], [peak, peak], "r-", lw=2, zorder=2)
        ax.axvline(ridge, color="0.6", ls=":", lw=1)
      elif peak:
        ax.plot([lo, hi], [peak, peak], "r-", lw=2, zorder=2)
      elif bw:
        ax.plot([lo, hi], [bw * lo, bw * hi], "k-", lw=2, zorder=2)
      if peak:
        ax.text(hi, peak * 1.08, f"ceiling_fma {fmt_num(peak)} GFLOP/s"
                + (f" ({f.path})" if f.path else ""), ha="right", va="bottom", fontsize=8,
                color="r")
      if bw:  # at the top of the slanted roof (the ridge, or the panel's right edge)
        top = min(peak / bw, hi) if peak else hi
        ax.text(top / 1.15, bw * top * 1.08, f"ceiling_stream {fmt_num(bw)} GB/s (best)",
                ha="right", va="bottom", fontsize=8)
      ax.set_xscale("log")
      ax.set_yscale("log")
      ax.set_xlim(lo, hi)
      ax.set_title(f"{t} thread{'s' if t != 1 else ''}", fontsize=10)
      ax.set_xlabel("arithmetic intensity (FLOP / compulsory byte, log scale)")
      ax.grid(True, which="both", alpha=0.3)
    if ys_all:
      axes[0][0].set_ylim(min(ys_all) / 3, max(ys_all) * 2.5)
    axes[0][0].set_ylabel("GFLOP/s (effective: unmasked FLOPs; log scale)")
    first = axes[0][0]
    for v in sorted({c.variant for c in cases}):
      first.scatter([], [], color=self.colors[v], marker="o", label=v)
    for sc in scenarios:
      first.scatter([], [], color="0.4", marker=self._SCENARIO_MARKERS.get(sc, "x"),
                    label=sc or "sweep (Lq = Lk)")
    first.plot([], [], "r-", lw=2, label="FMA roof (ceiling_fma, median)")
    first.plot([], [], "k-", lw=2, label="stream roof (ceiling_stream, best)")
    fig.suptitle(f"{self.host_prefix(source)}roofline: f32 cases against the measured ceilings",
                 fontsize=11)
    bottom = legend_below(fig, (first,), ncol=6)
    self.image(save(fig, self.out_dir, slug(f"roofline_{source}") + ".png", bottom),
               "roofline")

  def sweep_section(self):
    self.add("## Sweep: N = Lq = Lk", "")
    groups = self.sweep_groups()
    if not groups:
      self.add(NOT_IN_RUN, "")
      return
    self.add("Time is the median real time per call over repetitions (for the sgemm ceiling at large N, the bench times a leading share of the identical sgemm blocks, counter `ceiling_fraction`, and the time shown is scaled to the whole problem). GFLOPS counts only the "
             "unmasked (query, key) pairs (FLOPs = 4·B·H·pairs·d); the sgemm ceiling runs the "
             "same problem's dense Q·Kᵀ and P·V with OpenBLAS on the same threads. Fraction of "
             "ceiling = variant GFLOPS_dense / ceiling GFLOPS for dense cases and effective "
             "GFLOPS / ceiling GFLOPS for causal ones.", "")
    for source, contexts in sorted(self.run.peer_contexts.items()):
      for ctx in contexts:
        if not self.peer_passes(ctx, "forward"):
          continue
        self.add(f"Peers{' on ' + source if self.multi_host else ''} (`bench/peers.py`, what a "
                 f"user would pick instead, on the same shapes): {ctx.get(ar.PEER_CONTEXT_KEY)}"
                 + (f"; {ctx['attnlab_peer_caps']}" if ctx.get("attnlab_peer_caps") else "")
                 + (f"; skipped: {ctx['attnlab_peer_skipped']}"
                    if ctx.get("attnlab_peer_skipped") not in (None, "none") else "") + ".", "")
    for (source, gparams), g in groups.items():
      self.sweep_group(source, dict(gparams), g)
    if not any(g["peers"] for g in groups.values()):
      why = "; ".join(sorted({str(ctx.get(ar.PEER_CONTEXT_KEY))
                              if self.peer_passes(ctx, "forward") else
                              "bench/peers.py timed only the backward pass (--passes backward)"
                              for cs in self.run.peer_contexts.values() for ctx in cs}))
      self.summary.append(f"- {self.PEERS_ABSENT}" + (f": {why}." if why else "."))

  @staticmethod
  def peer_passes(context, pass_):
    """Whether the peer file of `context` timed `pass_` (forward, backward): its
    attnlab_peer_passes, and forward alone for a file from before the backward peers."""
    return pass_ in str(context.get("attnlab_peer_passes", "forward")).split(",")

  def sweep_group(self, source, gp, g):
    variants = sorted(g["variants"])
    ceiling = g["ceiling"]
    ns = sorted(set(ceiling) | {n for v in variants for n in g["variants"][v]})
    any_case = next(iter(g["variants"][variants[0]].values())) if variants else None
    shape = ""
    if any_case:
      extra = {k: int(any_case.counters[k]) for k in ("B", "H", "Hkv") if k in any_case.counters}
      shape = ", ".join(f"{k}={v}" for k, v in extra.items())
    causal = str(gp.get("causal", 0)) not in ("0",)
    title = (f"d={gp.get('d', '?')}, {'causal' if causal else 'dense'}, "
             f"threads={gp.get('threads', '?')}" + (f", {shape}" if shape else ""))
    other = params_label(gp, skip=("d", "causal", "threads"))
    if other:
      title += ", " + other
    self.add(f"### {self.host_prefix(source)}{title}", "")
    base = slug(f"sweep_{source}_" + "_".join(f"{k}{v}" for k, v in gp.items()))

    def ok_cases(v):
      return sorted((n, c) for n, c in g["variants"][v].items() if c.ok)

    # time vs N
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    for v in variants:
      pts = ok_cases(v)
      if pts:
        ax.plot([n for n, _ in pts], [c.time_s * 1e3 for _, c in pts], "o-",
                color=self.colors[v], label=v)
    cpts = sorted((n, c) for n, c in ceiling.items() if c.ok)
    if cpts:
      ax.plot([n for n, _ in cpts], [c.time_s * 1e3 for _, c in cpts], "k--",
              label="sgemm ceiling (dense GEMMs)")
    for i, (p, by_n) in enumerate(sorted(g["peers"].items())):
      pts = sorted((n, c) for n, c in by_n.items() if c.ok)
      if pts:
        ax.plot([n for n, _ in pts], [c.time_s * 1e3 for _, c in pts], ":",
                marker="xv+^"[i % 4], color=str(0.2 + 0.15 * (i % 4)),
                label=f"peer: {self.peer_words(p, by_n.values())}")
    pow2_x_axis(ax, ns)
    ax.set_yscale("log")
    ax.set_xlabel("N = Lq = Lk (tokens, log scale)")
    ax.set_ylabel("time per call (ms, log scale)")
    ax.set_title(f"{self.host_prefix(source)}time vs N — {title}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    bottom = legend_below(fig, (ax,), ncol=4)
    self.image(save(fig, self.out_dir, base + "_time.png", bottom), "time vs N")

    # GFLOPS vs N and fraction of the ceiling
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5.4))
    for v in variants:
      pts = [(n, c) for n, c in ok_cases(v) if c.counter("GFLOPS") is not None]
      if pts:
        ax1.plot([n for n, _ in pts], [c.counter("GFLOPS") for _, c in pts], "o-",
                 color=self.colors[v], label=v)
      fr = [(n, self.fraction(c, ceiling.get(n))) for n, c in ok_cases(v)]
      fr = [(n, f) for n, f in fr if f is not None]
      if fr:
        ax2.plot([n for n, _ in fr], [f for _, f in fr], "o-", color=self.colors[v], label=v)
    cg = [(n, c.counter("GFLOPS")) for n, c in cpts if c.counter("GFLOPS") is not None]
    if cg:
      ax1.plot([n for n, _ in cg], [x for _, x in cg], "k--", lw=2,
               label="sgemm ceiling (OpenBLAS)")
    fma = self.fma_ceiling(source, gp.get("threads"))
    if fma:
      ax1.axhline(fma.counter("GFLOPS"), color="r", ls="-.", lw=1.5,
                  label="ceiling_fma (FMA peak)")
    for ax in (ax1, ax2):
      pow2_x_axis(ax, ns)
      ax.set_xlabel("N = Lq = Lk (tokens, log scale)")
      ax.grid(True, which="both", alpha=0.3)
    ax1.set_ylabel("GFLOP/s" + (" (effective: unmasked FLOPs)" if causal else ""))
    ax1.set_ylim(bottom=0)
    ax1.set_title("GFLOP/s vs N, with the sgemm ceiling"
                  + (" and ceiling_fma" if fma else ""), fontsize=10)
    ax2.axhline(1.0, color="k", ls=":", lw=1, label="= ceiling")
    ax2.set_ylim(bottom=0)
    ax2.set_ylabel("fraction of sgemm ceiling")
    ax2.set_title("fraction of the ceiling reached" + (" (effective GFLOPS)" if causal else ""),
                  fontsize=10)
    fig.suptitle(f"{self.host_prefix(source)}{title}", fontsize=11)
    bottom = legend_below(fig, (ax1, ax2))
    self.image(save(fig, self.out_dir, base + "_gflops.png", bottom), "GFLOPS vs N")

    # memory vs N
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5.4))
    anchors = []
    for v in variants:
      pts = ok_cases(v)
      ws = [(n, c.counter("workspace_bytes")) for n, c in pts]
      ws = [(n, b) for n, b in ws if b is not None and b > 0]
      if ws:
        ax1.plot([n for n, _ in ws], [b for _, b in ws], "o-", color=self.colors[v],
                 label=f"{v} measured")
        anchors.append(ws[0])
      dec = [(n, c.counter("workspace_declared_bytes")) for n, c in pts]
      dec = [(n, b) for n, b in dec if b is not None and b > 0]
      if dec:
        ax1.plot([n for n, _ in dec], [b for _, b in dec], ":", color=self.colors[v], lw=1.5,
                 label=f"{v} declared")
      rss = [(n, c.counter("peak_rss_delta_bytes")) for n, c in pts]
      rss = [(n, b) for n, b in rss if b is not None and b > 0]
      if rss:
        ax2.plot([n for n, _ in rss], [b for _, b in rss], "o-", color=self.colors[v],
                 label=f"{v} measured")
    for ax in (ax1, ax2):
      ys = [y for line in ax.lines for y in line.get_ydata()]
      if ys and ns:
        ymin, ymax = min(ys), max(ys)
        n0 = ns[0]
        at_n0 = [y for line in ax.lines for x, y in zip(line.get_xdata(), line.get_ydata())
                 if x == n0]
        # below the lowest curve at the first N, so the guides never hide a measurement
        y0 = (min(at_n0) if at_n0 else ymin) / 3
        xs = [ns[0], ns[-1]]
        ax.plot(xs, [y0 * x / n0 for x in xs], color="0.6", lw=1.2, ls="-.",
                label="reference slope ∝ N")
        ax.plot(xs, [y0 * (x / n0) ** 2 for x in xs], color="0.25", lw=1.2, ls="-.",
                label="reference slope ∝ N²")
        ax.set_yscale("log", base=2)
        ax.set_ylim(y0 / 1.5, ymax * 2)
        ax.yaxis.set_major_locator(ticker.LogLocator(base=2, numticks=10))
        ax.yaxis.set_major_formatter(bytes_formatter())
        ax.yaxis.set_minor_locator(ticker.NullLocator())
      else:
        ax.text(0.5, 0.5, "no nonzero values in this run", ha="center",
                transform=ax.transAxes)
        ax.set_yticks([])
      pow2_x_axis(ax, ns)
      if ns:
        ax.set_xlim(ns[0] / 1.25, ns[-1] * 1.25)
      ax.set_xlabel("N = Lq = Lk (tokens, log scale)")
      ax.set_ylabel("bytes (log scale)")
      ax.grid(True, which="both", alpha=0.3)
    ax1.set_title("kernel workspace (counting allocator; dotted: declared)", fontsize=10)
    ax2.set_title("measured peak RSS growth (VmHWM; zeros not drawn)", fontsize=10)
    fig.suptitle(f"{self.host_prefix(source)}memory vs N — {title}", fontsize=11)
    bottom = legend_below(fig, (ax1, ax2), ncol=4)
    self.image(save(fig, self.out_dir, base + "_memory.png", bottom), "memory vs N")

    # tables
    def cell(v, n, fn):
      return case_cell(g["variants"][v].get(n), fn)

    header = ["N"] + variants + (["sgemm ceiling"] if ceiling else [])
    rows = [[n] + [cell(v, n, lambda c: fmt_time(c.time_s)) for v in variants]
            + ([fmt_time(ceiling[n].time_s) if n in ceiling and ceiling[n].ok else "—"]
               if ceiling else []) for n in ns]
    self.add("**Time per call (ms)**", "", md_table(header, rows), "")
    rows = [[n] + [cell(v, n, lambda c: fmt_num(c.counter("GFLOPS"))) for v in variants]
            + ([fmt_num(ceiling[n].counter("GFLOPS")) if n in ceiling and ceiling[n].ok
                else "—"] if ceiling else []) for n in ns]
    peers = g["peers"]
    if peers:
      cols = sorted(peers)
      rows = [r + [case_cell(peers[p].get(n), lambda c: fmt_num(c.counter("GFLOPS")))
                   for p in cols] for r, n in zip(rows, ns)]
      self.add("**GFLOP/s**" + (" (effective)" if causal else "") + ", with the peers", "",
               md_table(header + cols, rows), "")
      self.peers_table(g, ns, variants)
    else:
      self.add("**GFLOP/s**" + (" (effective)" if causal else ""), "", md_table(header, rows),
               "")
    if ceiling:
      rows = [[n] + [cell(v, n, lambda c: fmt_num(self.fraction(c, ceiling.get(n)), 2))
                     for v in variants] for n in ns]
      self.add("**Fraction of the sgemm ceiling**", "", md_table(["N"] + variants, rows), "")
    else:
      self.add("Fraction of the sgemm ceiling: " + NOT_IN_RUN + " (no ceiling_sgemm cases).",
               "")
    if fma:
      peak = fma.counter("GFLOPS")
      once = []  # cells of one repetition: a single sample, not a median

      def fraction(c):
        if len(c.samples) == 1:
          once.append(c)
          return fmt_num(self.fma_fraction(c), 2) + "¹"
        return fmt_num(self.fma_fraction(c), 2)

      rows = [[n] + [cell(v, n, fraction) for v in variants]
              + ([fmt_num(ceiling[n].counter("GFLOPS") / peak, 2)
                  if n in ceiling and ceiling[n].ok and ceiling[n].counter("GFLOPS") else "—"]
                 if ceiling else []) for n in ns]
      self.add(f"**Fraction of ceiling_fma** ({fmt_num(peak)} GFLOP/s on "
               f"{gp.get('threads', '?')} thread(s); "
               + ("effective GFLOPS" if causal else "GFLOPS") + " / ceiling_fma GFLOPS)", "",
               md_table(header[:1] + variants + (["sgemm ceiling"] if ceiling else []), rows),
               "")
      if once:
        self.add("¹ one repetition: a single sample, not a median (the suite repeats its cheap "
                 "cases and those of the variants in focus, `attnlab_bench --focus`; context "
                 "`attnlab_repeated`).", "")
      fma_ghz = fma.counter("core_ghz")
      if fma_ghz and any(c.counter("core_ghz") for v in variants
                         for c in g["variants"][v].values() if c.ok):

        def clock(c):
          ghz = c.counter("core_ghz")
          f = self.fma_fraction(c)
          if not ghz:
            return "—"
          return f"{ghz:.2f} ({f * fma_ghz / ghz:.2f})" if f else f"{ghz:.2f}"

        rows = [[n] + [cell(v, n, clock) for v in variants] for n in ns]
        self.add(f"**Core clock**, GHz (`core_ghz`, read after the work items; "
                 f"ceiling_fma's: {fma_ghz:.2f}), and in parentheses the fraction of "
                 "ceiling_fma per cycle (its FLOPs per cycle over the loop's, each at its own "
                 "clock; the fraction above = this x the clock ratio)", "",
                 md_table(header[:1] + variants, rows), "")
    elif self.fma_ceilings(source):
      self.add(f"Fraction of ceiling_fma: no `ceiling_fma/threads:{gp.get('threads', '?')}` "
               "case in this run.", "")
    rows = []
    for n in ns:
      ok = [g["variants"][v][n].time_s for v in variants
            if n in g["variants"][v] and g["variants"][v][n].ok]
      best_t = min(ok) if ok else None
      rows.append([n] + [cell(v, n, lambda c: f"{c.time_s / best_t:.2f}") for v in variants])
    self.add("**Time relative to the fastest variant at each N** (1.00 = fastest)", "",
             md_table(["N"] + variants, rows), "")
    for b in self.baselines:
      if b not in g["variants"]:
        self.add(f"Speedup vs {b}: {NOT_IN_RUN}.", "")
        continue
      others = [v for v in variants if v != b]
      rows = []
      for n in ns:
        bc = g["variants"][b].get(n)
        row = [n]
        for v in others:
          c = g["variants"][v].get(n)
          if not (c and c.ok):
            row.append(cell(v, n, lambda c: "—"))
          elif not (bc and bc.ok):
            row.append(f"{b} {cell(b, n, lambda c: '—')}")
          else:
            row.append(f"{bc.time_s / c.time_s:.2f}×")
        rows.append(row)
      self.add(f"**Speedup vs {b}** ({b} time / variant time)", "",
               md_table(["N"] + others, rows), "")
    rows = [[n] + [cell(v, n, memory_cell) for v in variants] for n in ns]
    self.add("**Memory: workspace (measured) / peak RSS growth**", "",
             md_table(["N"] + variants, rows), "")
    autos = self.auto_vs_best(g, variants, ns)
    if autos:
      picks = g["variants"][self.AUTO]
      rows = [[n, v, fmt_num(r, 2), self.auto_pick(picks[n]) or "—"] for n, v, r in autos]
      self.add("**auto against the best other variant** (that variant's time / auto's time; "
               "auto's pick from its path label)", "",
               md_table(["N", "best other", "ratio", "auto ran"], rows), "")
    self.sweep_summary(source, title, variants, ns, g, gp)
    self.peers_summary(source, title, variants, ns, g)

  def peer_speedups(self, g, ns, variants, column):
    """[(N, peer time / focus variant time)] where both ran."""
    focus = self.peers_focus(variants)
    if not focus:
      return []
    out = []
    for n in ns:
      f, p = g["variants"][focus].get(n), g["peers"][column].get(n)
      if f and f.ok and p and p.ok:
        out.append((n, p.time_s / f.time_s))
    return out

  def peers_table(self, g, ns, variants, best=False):
    """The focus variant's speedup over each peer at each N; with `best`, over the fastest
    peer at that N too."""
    focus = self.peers_focus(variants)
    if not focus:
      self.add(f"Speedup over the peers: no `{self.precision_focus_name}` cases in this group.",
               "")
      return
    cols = sorted(g["peers"])
    rows = [[n] + [case_cell(g["peers"][p].get(n), lambda c: "—") for p in cols]
            + (["—"] if best else []) for n in ns]
    for j, p in enumerate(cols):
      for n, r in self.peer_speedups(g, ns, variants, p):
        rows[ns.index(n)][j + 1] = f"{r:.2f}×"
    if best:
      for n, r, p in self.best_peer_speedups(g, ns, variants):
        rows[ns.index(n)][-1] = f"{r:.2f}× ({p})"
    self.add(f"**{focus} against the peers** (peer time / {focus} time; above 1: {focus} is "
             "faster)", "", md_table(["N"] + [f"vs {p}" for p in cols]
                                     + (["vs the best peer"] if best else []), rows), "")

  def best_peer_speedups(self, g, ns, variants):
    """[(N, fastest peer's time / focus variant time, that peer)] where both ran."""
    focus = self.peers_focus(variants)
    out = []
    for n in ns:
      f = g["variants"].get(focus, {}).get(n)
      ran = [(c.time_s, p) for p, by_n in g["peers"].items()
             for c in [by_n.get(n)] if c and c.ok]
      if f and f.ok and ran:
        t, p = min(ran)
        out.append((n, t / f.time_s, p))
    return out

  def peers_summary(self, source, title, variants, ns, g):
    """One line per group: the focus variant's speedup range over each peer."""
    focus = self.peers_focus(variants)
    parts, compared = [], set()
    for p in sorted(g["peers"]):
      sp = self.peer_speedups(g, ns, variants, p)
      if not sp:
        continue
      compared.update(n for n, _ in sp)
      lo, hi = min(r for _, r in sp), max(r for _, r in sp)
      rng = f"{lo:.2f}×" if len(sp) == 1 else f"{lo:.2f}–{hi:.2f}×"
      words = self.peer_words(p, g["peers"][p].values())
      parts.append(f"{words} by {rng}")
    if parts:
      lo, hi = min(compared), max(compared)
      nrange = f"N={lo}–{hi}" if lo != hi else f"N={lo}"
      self.summary.append(f"- {self.host_prefix(source)}{title}: {focus} is faster than "
                          + ", ".join(parts) + f" (peer time / {focus} time, {nrange}).")

  AUTO = "auto"  # the chooser (kernels/auto.cc): judged against the best of the others

  @staticmethod
  def auto_pick(case):
    """The variant auto ran, from its path label ('simd, AVX3' -> 'simd'); '' if unlabeled."""
    return (case.path or "").split(",")[0].strip()

  @staticmethod
  def auto_vs_best(g, variants, ns):
    """[(N, best other variant, its time / auto's time)] where auto and another ran."""
    out = []
    autos = g["variants"].get(Report.AUTO, {})
    for n in ns:
      a = autos.get(n)
      cands = [(g["variants"][v][n].time_s, v) for v in variants
               if v != Report.AUTO and n in g["variants"][v] and g["variants"][v][n].ok]
      if a and a.ok and a.time_s > 0 and cands:
        t, v = min(cands)
        out.append((n, v, t / a.time_s))
    return out

  @staticmethod
  def auto_pick_words(g, auto_ratios):
    """What auto's ratios measure: where auto ran the best variant's own kernel, two timings of
    one kernel (the run's noise); where it ran another, how much its pick cost."""
    autos = g["variants"][Report.AUTO]
    same = [r for n, v, r in auto_ratios if Report.auto_pick(autos[n]) == v]
    other = [(n, v, r) for n, v, r in auto_ratios if Report.auto_pick(autos[n]) != v]

    def span(rs):
      return f"{min(rs):.2f}" if len(rs) == 1 else f"{min(rs):.2f}–{max(rs):.2f}"

    words = []
    if same:
      words.append(f"it ran the best variant's own kernel at {len(same)} of {len(auto_ratios)} "
                   f"N ({span(same)}), where the ratio compares two timings of one kernel "
                   "(this run's noise)")
    if other:
      rng = span([r for _, _, r in other])
      where = ", ".join(f"N={n} {Report.auto_pick(autos[n]) or '?'} for {v}"
                        for n, v, _ in other[:6]) + (" …" if len(other) > 6 else "")
      words.append(f"where it ran another variant than the best ({where}): {rng}")
    return "; ".join(words)

  def sweep_summary(self, source, title, variants, ns, g, gp):
    auto_ratios = self.auto_vs_best(g, variants, ns)
    variants = [v for v in variants if v != self.AUTO]
    best = []
    for n in ns:
      cands = [(g["variants"][v][n].time_s, v) for v in variants
               if n in g["variants"][v] and g["variants"][v][n].ok]
      if cands:
        best.append((n, min(cands)[1]))
    if not best:
      return
    ranges = []
    for n, v in best:
      if ranges and ranges[-1][2] == v:
        ranges[-1][1] = n
      else:
        ranges.append([n, n, v])
    text = "; ".join(f"N={a}" + (f"–{b}" if b != a else "") + f": **{v}**"
                     for a, b, v in ranges)
    cross = []
    for i in range(len(variants)):
      for j in range(i + 1, len(variants)):
        a, b = variants[i], variants[j]
        prev = None
        for n in ns:
          ca, cb = g["variants"][a].get(n), g["variants"][b].get(n)
          if not (ca and cb and ca.ok and cb.ok):
            continue
          faster = a if ca.time_s < cb.time_s else b
          if prev and prev[1] != faster:
            cross.append(f"{faster} overtakes {prev[1]} between N={prev[0]} and N={n}")
          prev = (n, faster)
    n_last, v_last = best[-1]
    c = g["variants"][v_last][n_last]
    frac = self.fraction(c, g["ceiling"].get(n_last))
    line = f"- {self.host_prefix(source)}{title}: best {text}."
    if frac is not None:
      line += (f" At N={n_last} {v_last} reaches {frac:.2f} of the sgemm ceiling "
               f"({fmt_num(c.counter('GFLOPS'))} vs "
               f"{fmt_num(g['ceiling'][n_last].counter('GFLOPS'))} GFLOP/s).")
    fma = self.fma_ceiling(source, gp.get("threads"))
    focus = self.precision_focus_name if self.precision_focus_name in variants else v_last
    fr = sorted((n, self.fma_fraction(c)) for n, c in g["variants"].get(focus, {}).items()
                if c.ok and self.fma_fraction(c) is not None)
    if fma and fr:
      n_top, f_top = fr[-1]
      c_top = g["variants"][focus][n_top]
      line += (f" {focus} reaches {f_top:.2f} of ceiling_fma ({fmt_num(self.rate(c_top))} of "
               f"{fmt_num(fma.counter('GFLOPS'))} GFLOP/s) at N={n_top}")
      big = [f for n, f in fr if n >= 2048]
      if len(big) > 1:
        line += f", {min(big):.2f}–{max(big):.2f} over N ≥ 2048"
      line += "."
    if auto_ratios:
      n_lo, v_lo, r_lo = min(auto_ratios, key=lambda x: x[2])
      line += (f" auto runs at {r_lo:.2f}–{max(r for _, _, r in auto_ratios):.2f} of the best "
               f"other variant's speed (lowest at N={n_lo}, against {v_lo}); "
               f"{self.auto_pick_words(g, auto_ratios)}.")
    if cross:
      more = f" (+{len(cross) - 8} more)" if len(cross) > 8 else ""
      line += " Crossovers: " + "; ".join(cross[:8]) + more + "."
    self.summary.append(line)

  # ---- several hosts in one picture
  def hosts_section(self):
    if not self.multi_host:
      return
    self.add("## Across hosts", "")
    self.add("The same sweep case on every host: color is the variant, line style the host; "
             "gray lines are each host's sgemm ceiling.", "")
    by_key = {}
    for (source, gp), g in self.sweep_groups().items():
      by_key.setdefault(gp, {})[source] = g
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v"]
    for gp, per_host in by_key.items():
      if len(per_host) < 2:
        continue
      gpd = dict(gp)
      causal = str(gpd.get("causal", 0)) != "0"
      title = params_label(gpd)
      fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5.6))
      ns = set()
      for i, (source, g) in enumerate(sorted(per_host.items())):
        ls, mk = styles[i % len(styles)], markers[i % len(markers)]
        for v in sorted(g["variants"]):
          pts = sorted((n, c) for n, c in g["variants"][v].items()
                       if c.ok and c.counter("GFLOPS") is not None)
          ns.update(n for n, _ in pts)
          if pts:
            ax1.plot([n for n, _ in pts], [c.counter("GFLOPS") for _, c in pts], ls,
                     marker=mk, color=self.colors[v], label=f"{v} @ {source}")
          fr = [(n, self.fraction(c, g["ceiling"].get(n))) for n, c in pts]
          fr = [(n, f) for n, f in fr if f is not None]
          if fr:
            ax2.plot([n for n, _ in fr], [f for _, f in fr], ls, marker=mk,
                     color=self.colors[v])
        cp = sorted((n, c.counter("GFLOPS")) for n, c in g["ceiling"].items()
                    if c.ok and c.counter("GFLOPS") is not None)
        if cp:
          ax1.plot([n for n, _ in cp], [x for _, x in cp], ls, color="0.5", lw=2,
                   label=f"sgemm ceiling @ {source}")
      for ax in (ax1, ax2):
        pow2_x_axis(ax, ns)
        ax.set_xlabel("N = Lq = Lk (tokens, log scale)")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylim(bottom=0)
      ax1.set_ylabel("GFLOP/s" + (" (effective)" if causal else ""))
      ax1.set_title("GFLOP/s per host", fontsize=10)
      ax2.axhline(1.0, color="k", ls=":", lw=1)
      ax2.set_ylabel("fraction of that host's sgemm ceiling")
      ax2.set_title("fraction of the ceiling per host", fontsize=10)
      fig.suptitle(f"all hosts — {title}", fontsize=11)
      bottom = legend_below(fig, (ax1,), ncol=4)
      self.image(save(fig, self.out_dir, slug(f"hosts_{title}") + ".png", bottom),
                 "across hosts")

  # ---- thread scaling and causal efficiency (issue 6's targets, read from the sweep)
  def scaling_section(self):
    self.add("## Thread scaling", "")
    sweep = [c for c in self.f32_cases() if c.is_variant
             and not c.scenario and "N" in c.params and "threads" in c.params]
    wrote = False
    for (source, gp), by_v in pivot_groups(sweep, "threads"):
      threads = sorted({t for d in by_v.values() for per_n in d.values() for t in per_n})
      if len(threads) < 2:
        continue
      t0, t1 = threads[0], threads[-1]

      def speedup(per, t0=t0, t1=t1):
        a, b = per.get(t0), per.get(t1)
        return a.time_s / b.time_s if a and b and a.ok and b.ok else None

      def cell(per, t0=t0, t1=t1):
        sp = speedup(per)
        if sp is None:
          return None
        text = f"{sp:.2f}× ({100 * sp / (t1 / t0):.0f}%)"
        idle, ratio = (per[t1].counter(k) for k in ("thread_idle", "thread_items_ratio"))
        if idle is not None and ratio is not None:
          text += f", idle {100 * idle:.1f}%, items {ratio:.2f}"
        return text
      variants, ns, rows = pivot_rows(by_v, cell)
      self.add(f"**{self.host_prefix(source)}{params_label(dict(gp))}: speedup = time at "
               f"{t0} thread(s) / time at {t1} threads** (in parentheses: parallel efficiency "
               f"= speedup / {t1 / t0:g}; then, where the run timed its threads, the part of "
               f"the {t1} threads' time in parallel loops spent outside work items, and the "
               "items of the thread that took the most over the fewest: with items alike, "
               "how much faster one thread ran than another)", "",
               md_table(["N"] + variants, rows), "")
      wrote = True
      n = ns[-1]
      at_n = {v: speedup(by_v[v].get(n, {})) for v in variants}
      lines = [f"{v} {sp:.2f}×" for v, sp in at_n.items() if sp is not None]
      if lines:
        self.summary.append(f"- Thread scaling {t0}→{t1} at N={n}, "
                            f"{self.host_prefix(source)}{params_label(dict(gp))}: "
                            + ", ".join(lines) + ".")
    if not wrote:
      self.add(NOT_IN_RUN + " (needs the same case at two thread counts).", "")

    self.add("## Causal efficiency", "")
    self.add("Effective GFLOP/s of the causal case (unmasked FLOPs only) / GFLOP/s of the dense "
             "case at the same N, d and threads. 1.0 means skipped masked work costs nothing.",
             "")
    if not self.causal_tables(sweep):
      self.add(NOT_IN_RUN + " (needs causal:0 and causal:1 of the same case).", "")

  @staticmethod
  def causal_efficiency(per):
    """Effective GFLOP/s of the causal case / GFLOP/s of the dense one, for {causal: case} of
    one variant, N, d and threads; None unless both ran."""
    dn, ca = per.get(0), per.get(1)
    if dn and ca and dn.ok and ca.ok and dn.counter("GFLOPS") and ca.counter("GFLOPS"):
      return ca.counter("GFLOPS") / dn.counter("GFLOPS")
    return None

  def causal_tables(self, cases, what=""):
    """A table (N x variant) of Report.causal_efficiency per group of `cases` (source and every
    parameter but N and causal) that has one; whether it wrote any. `what` starts each
    table's title."""
    def cell(per):
      r = self.causal_efficiency(per)
      return None if r is None else f"{r:.2f}"
    wrote = False
    for (source, gp), by_v in pivot_groups(cases, "causal"):
      variants, _, rows = pivot_rows(by_v, cell)
      if all(all(c == "—" for c in r[1:]) for r in rows):
        continue
      self.add(f"**{what}{self.host_prefix(source)}{params_label(dict(gp))}**", "",
               md_table(["N"] + variants, rows), "")
      wrote = True
    return wrote

  # ---- backward pass (issue 18)
  # Issue 18's targets for --precision-focus (flash): backward time / forward time at most
  # BACKWARD_RATIO_TARGET and causal effective / dense GFLOP/s at least CAUSAL_TARGET, at
  # N >= BACKWARD_LARGE_N.
  BACKWARD_RATIO_TARGET = 2.8
  CAUSAL_TARGET = 0.85
  BACKWARD_LARGE_N = 2048

  def forward_of(self, case):
    """The forward case of a backward case's shape: `<variant>/<the same tokens>`."""
    return self.run.cases.get((case.source, case.name.split("/", 1)[1]))

  def backward_ratio(self, case):
    """Median time of the backward case / median time of its forward case, or None unless
    both ran."""
    fwd = self.forward_of(case)
    return case.time_s / fwd.time_s if case.ok and fwd and fwd.ok else None

  def backward_section(self):
    """Only when the run has backward cases (`grad/<variant>/...`): a GFLOP/s plot per source
    (a panel per d, causal, threads), then per group the GFLOP/s with the fraction of
    ceiling_fma, the backward / forward time ratio and memory, the peers' backward
    (`grad/peer_*/...`, bench/peers.py) beside them, then the causal efficiency."""
    grads = [c for c in self.f32_cases() if c.family == ar.GRAD]
    cases = [c for c in grads if c.variant]
    if not cases:
      return
    self.add("## Backward pass", "")
    self.add("`grad/<variant>/...`: dQ, dK and dV from Q, K, V, O, the forward's log-sum-exp "
             "and a random dO, each variant checked against the fp64 reference before it is "
             "timed. GFLOP/s counts FlashAttention-2's five products on the visible (query, "
             "key) pairs only, FLOPs = 2·pairs·(3·dk + 2·dv) with pairs = B·H·(visible pairs "
             "per head) (2.5× the forward's count at dk = dv; effective when causal). Fraction "
             "of ceiling_fma = that GFLOP/s / the median `ceiling_fma` at the same threads. "
             "Backward / forward = the median time of `grad/<variant>/<shape>` / that of "
             "`<variant>/<shape>` in the same run (the FLOP ratio alone is 2.5; issue 18's "
             f"target for flash: ≤ {self.BACKWARD_RATIO_TARGET} at N ≥ "
             f"{self.BACKWARD_LARGE_N}). Causal efficiency as in *Causal efficiency* (target "
             f"≥ {self.CAUSAL_TARGET}).", "")
    self.backward_peers_intro()
    groups, peers = {}, {}
    for c in grads:
      gp = tuple(sorted((k, v) for k, v in c.params.items() if k != "N"))
      if c.peer:
        peers.setdefault((c.source, gp), {}).setdefault(c.peer, {})[c.params.get("N")] = c
      else:
        groups.setdefault((c.source, gp), {"variants": {}, "peers": {}})["variants"].setdefault(
            c.variant, {})[c.params.get("N")] = c
    for key, by_peer in peers.items():  # a peer shape without attnlab's cases is not shown
      if key in groups:
        groups[key]["peers"] = by_peer
    groups = sorted(groups.items(), key=lambda kv: group_key(*kv[0]))
    for source in sorted({s for (s, _), _ in groups}):
      self.backward_plot(source, [(dict(gp), g) for (s, gp), g in groups if s == source])
    for (source, gp), g in groups:
      self.backward_group(source, dict(gp), g)
    self.add("**Causal efficiency of the backward pass** (effective GFLOP/s causal / GFLOP/s "
             "dense)", "")
    if not self.causal_tables(cases, "backward, "):
      self.add("No variant's backward ran both causal and dense at one shape.", "")
    self.backward_summary(cases, [c for c in grads if c.peer])

  def backward_peers_intro(self):
    """What the peers' backward is (each peer file's attnlab_peer_backward), or why there is
    none."""
    wrote = False
    for source, contexts in sorted(self.run.peer_contexts.items()):
      for ctx in contexts:
        if not self.peer_passes(ctx, "backward"):
          continue
        skipped = ctx.get("attnlab_peer_backward_skipped")
        self.add(f"Peers{' on ' + source if self.multi_host else ''} (`bench/peers.py`, "
                 "`grad/peer_*/<shape>`: the same attention's dQ, dK, dV by PyTorch's CPU "
                 f"autograd, fp32, FLOPs counted as above): {ctx.get(ar.PEER_CONTEXT_KEY)}; "
                 f"timed: {ctx.get('attnlab_peer_backward', '?')}"
                 + (f"; {ctx['attnlab_peer_caps']}" if ctx.get("attnlab_peer_caps") else "")
                 + (f"; skipped: {skipped}" if skipped not in (None, "none") else "") + ".", "")
        wrote = True
    if not wrote:
      self.add("Peers' backward: not in this run (`bench/peers.py` with its backward pass, the "
               "default; install python3-torch, see README).", "")

  @staticmethod
  def backward_title(gp):
    causal = str(gp.get("causal", 0)) != "0"
    title = (f"d={gp.get('d', '?')}, {'causal' if causal else 'dense'}, "
             f"threads={gp.get('threads', '?')}")
    other = params_label(gp, skip=("d", "causal", "threads"))
    return title + (f", {other}" if other else "")

  def backward_plot(self, source, groups):
    """backward_<source>.png: backward GFLOP/s vs N per variant, a panel per group, with the
    ceiling_fma line of the panel's threads."""
    ncols = min(4, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.9 * nrows + 0.6),
                             squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(groups):]:
      ax.set_visible(False)
    for ax, (gp, g) in zip(flat, groups):
      by_v = g["variants"]
      ns = sorted({n for per in by_v.values() for n in per})
      drawn = False
      for v in sorted(by_v):
        pts = sorted((n, c.counter("GFLOPS")) for n, c in by_v[v].items()
                     if c.ok and c.counter("GFLOPS") is not None)
        if pts:
          ax.plot([n for n, _ in pts], [y for _, y in pts], "o-", color=self.colors[v], label=v)
          drawn = True
      for i, (p, by_n) in enumerate(sorted(g["peers"].items())):
        pts = sorted((n, c.counter("GFLOPS")) for n, c in by_n.items()
                     if c.ok and c.counter("GFLOPS") is not None and n in ns)
        if pts:
          ax.plot([n for n, _ in pts], [y for _, y in pts], ":", marker="xv+^"[i % 4],
                  color=str(0.2 + 0.15 * (i % 4)),
                  label=f"peer: {self.peer_words(p, by_n.values())}")
      fma = self.fma_ceiling(source, gp.get("threads"))
      if fma:
        ax.axhline(fma.counter("GFLOPS"), color="r", ls="-.", lw=1.5,
                   label="ceiling_fma (FMA peak, median)")
      if not drawn:
        ax.text(0.5, 0.5, "no backward case ran", ha="center", transform=ax.transAxes)
      pow2_x_axis(ax, ns)
      if ns:
        ax.set_xlim(ns[0] / 1.25, ns[-1] * 1.25)
      ys = [y for line in ax.lines for y in line.get_ydata()]
      ax.set_ylim(0, max(ys) * 1.12 if ys else None)
      ax.set_xlabel("N = Lq = Lk (log scale)")
      ax.set_ylabel("GFLOP/s" + (" (effective)" if str(gp.get("causal", 0)) != "0" else ""))
      ax.set_title(self.backward_title(gp), fontsize=10)
      ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"{self.host_prefix(source)}backward pass: GFLOP/s vs N (FLOPs = "
                 "2·pairs·(3·dk + 2·dv), visible pairs)", fontsize=11)
    bottom = legend_below(fig, flat[:len(groups)], ncol=5)
    self.image(save(fig, self.out_dir, slug(f"backward_{source}") + ".png", bottom),
               "backward GFLOPS vs N")

  def backward_group(self, source, gp, g):
    """The group's table: a row per (N, variant), its GFLOP/s, fraction of ceiling_fma,
    backward / forward time and memory, then a row per peer at that N (its memory is not
    measured); a case that did not run gives its status once. Then the focus variant against
    the peers, when the group has them."""
    by_v, peers = g["variants"], g["peers"]
    title = self.backward_title(gp)
    self.add(f"### {self.host_prefix(source)}backward, {title}", "")
    fma = self.fma_ceiling(source, gp.get("threads"))

    def ratio(c):
      fwd = self.forward_of(c)
      if fwd is None:
        return "no forward case"
      return f"{self.backward_ratio(c):.2f}" if fwd.ok else f"forward {fwd.status}"
    columns = (lambda c: fmt_num(c.counter("GFLOPS")),
               lambda c: fmt_num(self.fma_fraction(c), 2), ratio,
               lambda c: fmt_bytes(c.counter("workspace_bytes")),
               lambda c: fmt_bytes(c.counter("peak_rss_delta_bytes")))
    rows = []
    ns = sorted({n for per in by_v.values() for n in per})
    for n in ns:
      for v, c in [(v, by_v[v].get(n)) for v in sorted(by_v)] + [
          (p, peers[p].get(n)) for p in sorted(peers)]:
        if c:  # a case that did not run: its status once (as in Other scenarios), then blanks
          rows.append([n, v] + ([fn(c) for fn in columns[:3]]
                                + ([fn(c) for fn in columns[3:]] if c.variant else ["—", "—"])
                                if c.ok else [c.status] + [""] * (len(columns) - 1)))
    causal = str(gp.get("causal", 0)) != "0"
    self.add(md_table(["N", "variant", "GFLOP/s" + (" (effective)" if causal else ""),
                       "of ceiling_fma" + (f" ({fmt_num(fma.counter('GFLOPS'))})" if fma else ""),
                       "backward / forward time", "workspace (measured)", "peak RSS growth"],
                      rows, ["---:", "---"] + ["---:"] * len(columns)), "")
    if not fma and self.fma_ceilings(source):
      self.add(f"Fraction of ceiling_fma: no `ceiling_fma/threads:{gp.get('threads', '?')}` "
               "case in this run.", "")
    if any(n in by_n for by_n in peers.values() for n in ns):
      self.peers_table(g, ns, sorted(by_v), best=True)

  def backward_summary(self, cases, peer_cases=()):
    """One line per (source, threads) for the focus variant (--precision-focus, flash): its
    fraction of ceiling_fma, backward / forward time and causal efficiency at N >= 2048 (at
    every N that ran when none is that long), against issue 18's targets, its speedup over the
    fastest peer's backward at each shape (`peer_cases`: over the same N, or every N where
    both ran when the peers stopped short of them), and how many of its cases did not run."""
    focus, large_n = self.precision_focus_name, self.BACKWARD_LARGE_N

    def span(values):
      lo, hi = min(values), max(values)
      return f"{lo:.2f}" + (f"–{hi:.2f}" if f"{hi:.2f}" != f"{lo:.2f}" else "")

    def shape(c):
      return (f"d={c.params.get('d')} {'causal' if c.params.get('causal') else 'dense'} "
              f"N={c.params.get('N')}")
    mine = [c for c in cases if c.variant == focus]
    for source, threads in sorted({(c.source, c.params.get("threads", 0)) for c in mine}):
      at = [c for c in mine if c.source == source and c.params.get("threads", 0) == threads]
      ran = [c for c in at if c.ok]
      large = [c for c in ran if c.params.get("N", 0) >= large_n]
      scope = large or ran
      parts = []
      fractions = [f for f in map(self.fma_fraction, scope) if f is not None]
      if fractions:
        parts.append(f"{span(fractions)} of ceiling_fma")
      ratios = [(c, self.backward_ratio(c)) for c in scope]
      ratios = [(c, r) for c, r in ratios if r is not None]
      if ratios:
        over = [(c, r) for c, r in ratios if r > self.BACKWARD_RATIO_TARGET] if large else []
        parts.append(f"backward / forward time {span([r for _, r in ratios])} (target ≤ "
                     f"{self.BACKWARD_RATIO_TARGET} at N ≥ {large_n}"
                     + ("; over it: " + ", ".join(f"{shape(c)} {r:.2f}" for c, r in over[:4])
                        + (f" (+{len(over) - 4} more)" if len(over) > 4 else "")
                        if over else "") + ")")
      pairs = {}
      for c in at:
        pairs.setdefault(c.key_without("causal"), {})[c.params.get("causal")] = c
      eff = [self.causal_efficiency(pairs[c.key_without("causal")]) for c in scope
             if c.params.get("causal")]
      eff = [e for e in eff if e is not None]
      parts.append(f"causal effective / dense GFLOP/s {span(eff)} (target ≥ "
                   f"{self.CAUSAL_TARGET})" if eff else
                   "causal / dense: no causal case ran beside its dense one")
      vs_peers = self.backward_vs_peers(scope, ran, peer_cases)
      if vs_peers:
        parts.append(vs_peers)
      ns = sorted({c.params.get("N") for c in scope})
      line = (f"- Backward pass{' on ' + source if self.multi_host else ''}, {focus}, "
              f"threads={threads}")
      if scope:
        line += (f", at N ≥ {large_n}: " if large else
                 f", at N={ns[0]}" + (f"–{ns[-1]}" if len(ns) > 1 else "")
                 + f" (none ≥ {large_n} ran): ") + "; ".join(parts)
      else:
        line += ": no case ran"
      failed = [c for c in at if not c.ok]
      if failed:
        kinds = sorted({c.status for c in failed})
        line += (f"; **{len(failed)} of {len(at)} {focus} backward cases did not run** ("
                 + ", ".join(f"{k}: {sum(c.status == k for c in failed)}" for k in kinds)
                 + "; see *Longest N within the memory budget*)")
      self.summary.append(line + ".")

  def backward_vs_peers(self, scope, ran, peer_cases):
    """'faster than the best peer's backward by 2.10–4.30× (...)': the fastest peer's time /
    the case's time at each shape of `scope` where a peer ran (of `ran` when none did), or
    None when no peer ran at any of them."""
    peers = {}
    for p in peer_cases:
      if p.ok:
        peers.setdefault((p.source, p.name.split("/", 2)[2]), []).append(p)
    def speedups(cases):
      out = []
      for c in cases:
        ran_peers = peers.get((c.source, c.name.split("/", 2)[2]))
        if ran_peers:
          best = min(ran_peers, key=lambda p: p.time_s)
          out.append((c, best.time_s / c.time_s, best))
      return out
    sp = speedups(scope) or speedups(ran)
    if not sp:
      return None
    focus = self.precision_focus_name
    lo, hi = min(sp, key=lambda x: x[1]), max(sp, key=lambda x: x[1])
    rng = f"{lo[1]:.2f}×" if f"{lo[1]:.2f}" == f"{hi[1]:.2f}" else f"{lo[1]:.2f}–{hi[1]:.2f}×"
    ns = sorted({c.params.get("N") for c, _, _ in sp})
    best = sorted({self.peer_words(b.peer, [b]) for _, _, b in sp})
    return (f"faster than the best peer's backward by {rng} (that peer's time / {focus} time "
            f"at each shape, N={ns[0]}" + (f"–{ns[-1]}" if len(ns) > 1 else "")
            + f"; lowest at d={lo[0].params.get('d')} "
            f"{'causal' if lo[0].params.get('causal') else 'dense'} N={lo[0].params.get('N')}"
            f"; best peer: {', '.join(best)})")

  # ---- budget
  def budget_section(self):
    self.add("## Longest N within the memory budget", "")
    groups = self.sweep_groups()
    if not groups:
      self.add(NOT_IN_RUN, "")
      return
    budgets = {s: c.get("attnlab_memory_budget_bytes") for s, c in self.run.contexts.items()}
    for s, b in sorted(budgets.items()):
      if b:
        try:
          self.add(f"{self.host_prefix(s)}memory budget {fmt_bytes(float(b))}.  ")
        except ValueError:
          pass
    self.add("")
    variants = sorted({v for g in groups.values() for v in g["variants"]})
    rows = []
    for (source, gp), g in groups.items():
      row = [(f"{source}: " if self.multi_host else "") + params_label(dict(gp))]
      for v in variants:
        cases = g["variants"].get(v, {})
        ran = [n for n, c in cases.items() if c.ok]
        over = sorted(n for n, c in cases.items() if c.status == ar.OVER_BUDGET)
        txt = str(max(ran)) if ran else "none"
        if over:
          txt += f" (over budget from N={over[0]})"
        row.append(txt if cases else "—")
      rows.append(row)
    self.add(md_table(["case"] + variants, rows), "")
    by_status = {}
    for c in self.run.all_cases():
      by_status.setdefault(c.status, []).append(c)
    over = {}
    for c in by_status.get(ar.OVER_BUDGET, []):
      over.setdefault((c.source, c.series), []).append(c)
    if over:
      self.add("Over-budget cases (first message per variant; every skipped case is counted):", "")
      for (s, v), cs in sorted(over.items()):
        self.add(f"- {self.host_prefix(s)}`{v}`: {len(cs)} case(s) skipped, e.g. "
                 f"`{cs[0].name}`: {cs[0].error}")
      self.add("")
      self.summary.append(f"- {sum(len(v) for v in over.values())} case(s) skipped as over "
                          "the memory budget (see *Longest N within the memory budget*).")
    else:
      self.add("No case was over the memory budget.", "")
    self.not_run_list(by_status.get(ar.NOT_RUN, []))
    unsupported = by_status.get(ar.UNSUPPORTED, [])
    if unsupported:
      self.add(f"**Not run: {len(unsupported)} case(s) in element types their variant does not "
               "take** (not failures; the first message per variant):", "")
      first = {}
      for c in unsupported:
        first.setdefault((c.source, c.series), c)
      for (s, v), c in sorted(first.items()):
        self.add(f"- {self.host_prefix(s)}`{v}`: "
                 f"{sum(1 for u in unsupported if (u.source, u.series) == (s, v))}"
                 f" case(s), e.g. `{c.name}`: {c.error}")
      self.add("")
    failed = by_status.get(ar.FAILED, [])
    if failed:
      self.add("**Failed cases (not timed):**", "")
      for c in failed:
        self.add(f"- {self.host_prefix(c.source)}`{c.name}`: {c.error}")
      self.add("")
      self.summary.append(f"- **{len(failed)} case(s) failed** (listed under *Longest N*).")

  def not_run_list(self, cases, most=10):
    """The cases the benchmark run did not reach (it was interrupted): counted, and named."""
    if not cases:
      return
    names = ", ".join(f"`{self.host_prefix(c.source)}{c.name}`" for c in cases[:most])
    more = f" (+{len(cases) - most} more)" if len(cases) > most else ""
    self.add(f"**Not run: the benchmark was interrupted before {len(cases)} case(s)** "
             f"(`interrupted: ` entries): {names}{more}.", "")
    self.summary.append(f"- **{len(cases)} case(s) not run**: the benchmark was interrupted "
                        "before them (see *Longest N within the memory budget*).")

  # ---- decode
  def decode_section(self):
    self.add("## Decode (Lq = 1): bandwidth vs the stream ceiling", "")
    cases = [c for c in self.f32_cases() if c.scenario == "decode" and c.is_variant]
    if not cases:
      self.add(NOT_IN_RUN, "")
      return
    streams = [c for c in self.f32_cases() if c.family == ar.CEILING_STREAM and c.ok]
    self.add("GB/s = bytes of K and V read per second / 1e9. The fraction uses the best "
             "repetition of the ceiling_stream case with the same threads and the largest "
             "streamed size (the DRAM-bound one; its repetitions run interleaved with the "
             "decode cases'); the K+V column shows each case's working set.", "")
    groups = {}
    for c in cases:
      gp = tuple(sorted((k, v) for k, v in c.params.items() if k != "Lk"))
      groups.setdefault((c.source, gp), {}).setdefault(c.variant, {})[c.params.get("Lk")] = c
    best_lines = []
    for (source, gp), by_v in sorted(groups.items(), key=lambda kv: group_key(*kv[0])):
      gpd = dict(gp)
      title = params_label(gpd)
      variants = sorted(by_v)
      lks = sorted({lk for v in by_v.values() for lk in v})
      st = sorted((c for c in streams if c.source == source
                   and c.params.get("threads") == gpd.get("threads")),
                  key=lambda c: c.params.get("bytes", 0))
      ceil = st[-1] if st else None
      self.add(f"### {self.host_prefix(source)}decode, {title}", "")
      fig, ax = plt.subplots(figsize=(7.5, 5.2))
      for v in variants:
        pts = sorted((lk, c.counter("GBps")) for lk, c in by_v[v].items() if c.ok)
        if pts:
          ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=self.colors[v], label=v)
      for i, s in enumerate(st):
        ax.axhline(s.best("GBps"), color=str(0.0 + 0.45 * i / max(1, len(st) - 1)),
                   ls="--", lw=1.5,
                   label=f"stream ceiling (best), {fmt_bytes(s.params.get('bytes', 0))} streamed")
      pow2_x_axis(ax, lks)
      ax.set_ylim(bottom=0)
      ax.set_xlabel("Lk (keys in the cache, log scale)")
      ax.set_ylabel("GB/s of K+V read")
      ax.set_title(f"{self.host_prefix(source)}decode bandwidth — {title}", fontsize=10)
      ax.grid(True, which="both", alpha=0.3)
      bottom = legend_below(fig, (ax,), ncol=3)
      self.image(save(fig, self.out_dir, slug(f"decode_{source}_{title}") + ".png", bottom),
                 "decode bandwidth")

      def gbps(c):
        gb = c.counter("GBps")
        return f"{fmt_num(gb)} ({fmt_pct(gb / ceil.best('GBps'))})" if ceil else fmt_num(gb)

      rows = []
      for lk in lks:
        ran = [c for c in (by_v[v].get(lk) for v in variants) if c and c.ok]
        kv = ran[0].counter("GBps") * 1e9 * ran[0].time_s if ran else None
        rows.append([lk, fmt_bytes(kv)] + [case_cell(by_v[v].get(lk), gbps) for v in variants])
      self.add("GB/s (fraction of stream ceiling"
               + (f" {fmt_num(ceil.best('GBps'))} GB/s at {fmt_bytes(ceil.params.get('bytes'))},"
                  " best repetition" if ceil else ": not in this run") + ")", "",
               md_table(["Lk", "K+V bytes"] + variants, rows), "")
      if ceil and lks:
        lk = lks[-1]
        cands = [(c.counter("GBps"), v) for v, d in by_v.items() for l2, c in d.items()
                 if l2 == lk and c.ok]
        if cands:
          gb, v = max(cands)
          best_lines.append(f"{self.host_prefix(source)}{title}, Lk={lk}: {v} "
                            f"{fmt_num(gb)} GB/s = {fmt_pct(gb / ceil.best('GBps'))} "
                            "of the stream ceiling (best repetition)")
    if best_lines:
      self.summary.append("- Decode, best at the longest Lk:")
      self.summary.extend(f"  - {line}" for line in best_lines)

  # ---- score modifiers (softcap, alibi, sinks): each against the plain case of its shape
  MODIFIER_SCENARIOS = ("softcap", "alibi", "sinks")
  MODIFIER_TARGET = 1.10  # issue 20: each costs <= 10% over plain flash at d = 128, N >= 2048

  def modifier_section(self):
    cases = [c for c in self.f32_cases()
             if c.scenario in self.MODIFIER_SCENARIOS and c.is_variant]
    if not cases:
      return
    self.add("## Score modifiers", "",
             "Each modifier's case (softcap 50, ALiBi's standard slopes, sinks 1 + h/4: "
             "bench/bench_common.h) against the same variant's plain case of the same shape and "
             "inputs, in the same run: time ratio (1.00 = free). Target (issue 20): <= "
             f"{self.MODIFIER_TARGET:.2f} for flash at d = 128, N >= 2048.", "")
    plain = {(c.source, c.variant, c.key_without()): c for c in self.f32_cases()
             if c.is_variant and not c.scenario}
    rows = []
    for c in sorted(cases, key=lambda c: (c.source, c.variant, c.scenario,
                                          params_label(c.params))):
      base = plain.get((c.source, c.variant, c.key_without().replace(c.scenario + "/", "", 1)))
      where = (f"{c.source}: " if self.multi_host else "") + params_label(c.params)
      if not c.ok or base is None or not base.ok:
        rows.append([where, c.variant, c.scenario, c.error or "", "",
                     "no plain case" if base is None else (base.error or ""), ""])
        continue
      ratio = c.time_s / base.time_s
      flag = "" if ratio <= self.MODIFIER_TARGET else " (over target)"
      rows.append([where, c.variant, c.scenario, fmt_time(c.time_s), fmt_time(base.time_s),
                   fmt_num(ratio, 3) + flag, c.path or ""])
    self.add(md_table(["case", "variant", "modifier", "time (ms)", "plain (ms)",
                       "ratio", "path"], rows), "")

  # ---- packed variable-length batches: each against the same batch padded, two ways
  VARLEN_SCENARIOS = ("varlen", "padded", "padded_mask")
  VARLEN_TARGET = 3.0  # issue 20: lengths averaging a quarter of the longest, >= 3x padded

  def varlen_section(self):
    cases = [c for c in self.f32_cases() if c.scenario == "varlen" and c.is_variant]
    if not cases:
      return
    self.add("## Packed variable-length batches", "",
             "8 sequences whose lengths average a quarter of the longest (Lmax·{1, 1/4, 1/4, "
             "1/8, 1/8, 1/8, 1/16, 1/16}: bench/bench_common.h) packed with cu_seqlens, against "
             "the same batch padded to [8, H, Lmax, d] in the same run: `padded` hides the "
             "padding with key_lengths (padded keys skipped, padded queries still computed), "
             "`padded_mask` with an additive mask as PyTorch's attn_mask does (every padded "
             "pair computed). Speedup = padded time / packed time. Target (issue 20): >= "
             f"{self.VARLEN_TARGET:.0f}x the padded batch. Work bound: packed costs Σ len² "
             "(dense), key_lengths padding Σ Lmax·len (1.7x more here, 2.4x causal), mask "
             "padding 8·Lmax² (6.8x).", "")
    others = {(c.source, c.variant, c.key_without()): c for c in self.f32_cases()
              if c.is_variant and c.scenario in self.VARLEN_SCENARIOS[1:]}
    rows = []
    for c in sorted(cases, key=lambda c: (c.source, c.variant, params_label(c.params))):
      where = (f"{c.source}: " if self.multi_host else "") + params_label(c.params)
      row = [where, c.variant, fmt_time(c.time_s) if c.ok else (c.error or "")]
      for scen in self.VARLEN_SCENARIOS[1:]:
        base = others.get((c.source, c.variant,
                           c.key_without().replace("varlen/", scen + "/", 1)))
        if base is None or not base.ok or not c.ok:
          row += ["no padded case" if base is None else (base.error or c.error or ""), ""]
          continue
        speedup = base.time_s / c.time_s
        flag = "" if scen != "padded_mask" or speedup >= self.VARLEN_TARGET else " (under target)"
        row += [fmt_time(base.time_s), fmt_num(speedup, 3) + flag]
      rows.append(row + [c.path or ""])
    self.add(md_table(["case", "variant", "packed (ms)", "padded (ms)", "speedup",
                       "padded_mask (ms)", "speedup", "path"], rows), "")

  # ---- paged K/V decode: each block size against contiguous decode of the same shape
  PAGED_TARGET = 0.95  # issue 20: paged decode >= 0.95x contiguous at block size >= 16

  def paged_section(self):
    cases = [c for c in self.f32_cases() if c.scenario == "paged" and c.is_variant]
    if not cases:
      return
    self.add("## Paged K/V decode", "",
             "Decode (one query per head) with K and V in a paged cache of `bs`-key blocks, "
             "shuffled through the pool (bench/bench_common.h, PageKv), against the same "
             "variant's contiguous decode case of the same Lk, d and Hkv in the same run: the "
             "same bytes, read block by block. Speed = contiguous time / paged time. Target "
             f"(issue 20): >= {self.PAGED_TARGET:.2f} at block size >= 16. Read ceiling = "
             "the time of `ceiling_read/decode/...` / that of `ceiling_read/paged/...`: the same "
             "K and V read in the same order (tiles of 512 keys, each tile's K runs then its V "
             "runs; each run prefetching into L2 the rows flash's decode prefetch distance "
             "ahead in that order, as flash does) and summed, "
             "nothing else computed: the speed the memory allows paged decode against "
             "contiguous decode whatever the kernel does. Speed / read ceiling near 1: the "
             "rest of the gap is the memory's, not the kernel's.", "")
    plain = {(c.source, c.variant, c.key_without()): c for c in self.f32_cases()
             if c.is_variant and c.scenario == "decode"}
    reads = {(c.source, c.name): c for c in self.run.all_cases()
             if c.family == ar.CEILING_READ and c.ok}
    rows = []
    for c in sorted(cases, key=lambda c: (c.source, c.variant, int(c.params.get("Lk", 0)),
                                          int(c.params.get("Hkv", 0)),
                                          int(c.params.get("bs", 0)))):
      decode_key = c.key_without("bs").replace("paged/", "decode/", 1)
      base = plain.get((c.source, c.variant, decode_key))
      where = (f"{c.source}: " if self.multi_host else "") + params_label(c.params, ("bs",))
      if not c.ok or base is None or not base.ok:
        rows.append([where, c.variant, c.params.get("bs", ""), c.error or "", "",
                     "no contiguous case" if base is None else (base.error or ""), "", "", ""])
        continue
      speed = base.time_s / c.time_s
      flag = "" if speed >= self.PAGED_TARGET else " (under target)"
      tokens = c.name.split("/", 1)[1]  # paged/Lk:...
      read_paged = reads.get((c.source, f"{ar.CEILING_READ}/{tokens}"))
      read_plain = reads.get((c.source, f"{ar.CEILING_READ}/" + tokens.replace(
          "paged/", "decode/", 1).replace(f"/bs:{c.params.get('bs')}", "", 1)))
      ceiling = read_plain.time_s / read_paged.time_s if read_paged and read_plain else None
      rows.append([where, c.variant, c.params.get("bs", ""), fmt_time(c.time_s),
                   fmt_time(base.time_s), fmt_num(speed, 3) + flag,
                   fmt_num(c.counter("GBps")) if c.counter("GBps") else "",
                   fmt_num(ceiling, 3) if ceiling else "not in this run",
                   fmt_num(speed / ceiling, 3) if ceiling else ""])
    self.add(md_table(["case", "variant", "block size", "paged (ms)", "contiguous (ms)",
                       "speed", "paged GB/s", "read ceiling", "speed / read ceiling"], rows), "")

  # ---- other scenarios (gqa, window, cross, ...: whatever the JSON holds)
  def scenario_section(self):
    self.add("## Other scenarios", "")
    scen = sorted({c.scenario for c in self.f32_cases()
                   if c.scenario and c.scenario != "decode" and c.is_variant
                   and c.scenario not in self.MODIFIER_SCENARIOS
                   and c.scenario not in self.VARLEN_SCENARIOS and c.scenario != "paged"})
    if not scen:
      self.add(NOT_IN_RUN, "")
      return
    for s in scen:
      self.add(f"### {s}", "")
      cases = [c for c in self.f32_cases() if c.scenario == s and c.is_variant]
      by_p = {}
      for c in cases:
        by_p.setdefault((c.source, params_label(c.params)), []).append(c)
      rows = []
      for (source, pl), cs in sorted(by_p.items()):
        ok = [c for c in cs if c.ok]
        fastest = min(ok, key=lambda c: c.time_s).variant if ok else None
        for c in sorted(cs, key=lambda c: c.variant):
          ceil = self.ceiling_of(c)
          name = f"**{c.variant}**" if c.variant == fastest else c.variant
          where = (f"{source}: " if self.multi_host else "") + pl
          if not c.ok:
            rows.append([where, name, c.error, "", "", "", "", ""])
            continue
          rows.append([where, name, fmt_time(c.time_s), fmt_num(c.counter("GFLOPS")),
                       fmt_num(ceil.counter("GFLOPS")) if ceil and ceil.ok else "—",
                       fmt_num(self.fraction(c, ceil), 2), fmt_num(self.fma_fraction(c), 2),
                       fmt_bytes(c.counter("workspace_bytes"))])
      self.add(md_table(["case", "variant", "time (ms)", "GFLOP/s (effective)",
                         "sgemm ceiling GFLOP/s", "fraction of ceiling", "of ceiling_fma",
                         "workspace"], rows, ["---", "---"] + ["---:"] * 6), "")
      self.add("Bold: fastest variant for the case.", "")

  # ---- reduced precision (issue 16)
  def precision_groups(self):
    """The variants' cases at every shape that has a reduced-precision case, grouped by
    (source, scenario, threads): {key: {shape: {variant: {dtype label: case}}}}, where a shape
    is the sorted parameters but dtype and threads. The f32 case of a shape is the one without
    a dtype token (the sweep's or decode's own, or the precision scenario's)."""
    cases = [c for c in self.run.all_cases() if c.is_variant]
    def shape_of(c):
      return tuple(sorted((k, v) for k, v in c.params.items()
                          if k not in (ar.DTYPE_PARAM, "threads")))
    reduced = {(c.source, c.scenario, c.params.get("threads"), shape_of(c))
               for c in cases if c.dtype != ar.F32}
    groups = {}
    for c in cases:
      t = c.params.get("threads")
      if (c.source, c.scenario, t, shape_of(c)) in reduced:
        groups.setdefault((c.source, c.scenario, t), {}).setdefault(shape_of(c), {}).setdefault(
            c.variant, {})[c.dtype] = c
    return {k: groups[k] for k in sorted(groups, key=lambda k: (k[0], k[1], k[2] or 0))}

  @staticmethod
  def speedup(c, base):
    """f32 time / this type's time of the same variant, shape and threads (> 1: faster)."""
    if c is None or base is None or not (c.ok and base.ok) or c is base:
      return None
    return base.time_s / c.time_s

  def precision_focus(self, shapes):
    """(the focus variant, the best other variant) of a group: --precision-focus when the
    group has it, else the variant fastest in the most (shape, dtype) cells; the best other is
    the one fastest in the most cells among the rest (ties: the lower geometric-mean time over
    the cells both ran)."""
    variants = sorted({v for by_v in shapes.values() for v in by_v})
    def wins(candidates):
      count = {v: 0 for v in candidates}
      for by_v in shapes.values():
        for dt in {dt for v in candidates for dt in by_v.get(v, {})}:
          ran = [(by_v[v][dt].time_s, v) for v in candidates
                 if dt in by_v.get(v, {}) and by_v[v][dt].ok]
          if ran:
            count[min(ran)[1]] += 1
      def geo(v):
        ts = [c.time_s for by_v in shapes.values() for c in by_v.get(v, {}).values() if c.ok]
        return math.exp(statistics.mean(math.log(t) for t in ts)) if ts else math.inf
      return sorted(candidates, key=lambda v: (-count[v], geo(v)))
    focus = self.precision_focus_name if self.precision_focus_name in variants else None
    if focus is None and variants:
      focus = wins(variants)[0]
    others = [v for v in variants if v != focus]
    return focus, (wins(others)[0] if others else None)

  def matmul_bf16_ceiling_table(self, source, shapes, keys):
    """Each variant's bf16 GFLOP/s (Q, K, V bf16; dense: GFLOPS_dense, causal: effective) over
    the ceiling_matmul_bf16 of the same tokens: oneDNN's bf16 matmul on the two products,
    what a user of a vendor library gets. Nothing when the run has no such ceiling (built
    without oneDNN, or no oneDNN bf16 matmul on the CPU: the context's attnlab_onednn says
    which)."""
    rows = []
    for sh in keys:
      label = params_label(dict(sh))
      for v in sorted(shapes[sh]):
        for dt, c in sorted(shapes[sh][v].items(), key=lambda x: ar.dtype_sort_key(x[0])):
          if not (dt == "bf16" or dt.startswith("bf16-bf16-bf16-")):
            continue
          rest = c.name.split("/", 1)[1]
          ceiling = self.run.cases.get((source, f"{ar.CEILING_MATMUL_BF16}/{rest}"))
          if ceiling is None:
            continue
          f = self.fraction(c, ceiling)
          rows.append([label, v, dt, fmt_num(ceiling.counter("GFLOPS")) if ceiling.ok else "—",
                       case_cell(c, lambda c: fmt_num(c.counter("GFLOPS"))),
                       f"{f:.2f}" if f is not None else "—"])
    if rows:
      self.add("**Against the bf16 matmul ceiling** (`ceiling_matmul_bf16`: oneDNN's bf16 "
               "matmul on the same two dense products, the rate a user of a vendor library "
               "gets; fraction = the variant's GFLOP/s / the ceiling's)", "",
               md_table(["shape", "variant", "dtype", "ceiling GFLOP/s", "variant GFLOP/s",
                         "fraction"], rows, ["---"] * 3 + ["---:"] * 3), "")

  def precision_section(self):
    self.add("## Reduced precision", "")
    groups = self.precision_groups()
    if not groups:
      self.add(NOT_IN_RUN + " (no `dtype:` cases).", "")
      return
    self.add("Each variant at the shapes the bench also times in reduced element types (name "
             "token `dtype:bf16` when Q, K, V and O share a type, `dtype:<q>-<k>-<v>-<o>` "
             "otherwise; no token: f32), beside its own f32 case of the same shape and threads, "
             "on the same values rounded or quantized. Prefill: speed-up = f32 time / that "
             "type's time (above 1: the type is faster). Decode: time per token relative to f32 "
             "= that type's time / f32 time (below 1: faster; issue 16's targets for flash at "
             "Lk = 65536: bf16 K/V ≤ 0.53, int8 K/V ≤ 0.3). GFLOP/s counts the same FLOPs "
             "whatever the types; decode GB/s counts K and V at their element sizes (an int8 "
             "row also reads its 4-byte scale): the bytes actually read.", "")
    summary = []
    every = sorted({dt for shapes in groups.values() for by_v in shapes.values()
                    for d in by_v.values() for dt in d if dt != ar.F32}, key=ar.dtype_sort_key)
    cmap = plt.get_cmap("tab10")
    colors = {dt: cmap(i % 10) for i, dt in enumerate(every)}  # one color per type throughout
    for (source, scenario, threads), shapes in groups.items():
      decode = scenario == "decode"
      what = ("prefill (Lq = Lk = N)" if not scenario else
              "decode (Lq = 1)" if decode else scenario)
      title = f"{what}, threads={threads}"
      self.add(f"### {self.host_prefix(source)}{title}", "")
      dtypes = sorted({dt for by_v in shapes.values() for d in by_v.values() for dt in d},
                      key=ar.dtype_sort_key)
      keys = sorted(shapes, key=lambda sh: group_key(source, sh))
      header = ["shape", "variant"] + dtypes
      # Decode reads as the issue's targets do, time per token relative to f32 (the inverse
      # of the speed-up); prefill as the speed-up.
      def ratio(c, base):
        sp = self.speedup(c, base)
        return None if sp is None else 1 / sp if decode else sp
      what_ratio = ("time relative to the variant's f32 (type time / f32 time)" if decode
                    else "the speed-up vs the variant's f32 (f32 time / type time)")
      # Tick labels: the parameters that vary within the group (d, H, Hkv too when they do).
      varying = [k for k in dict(keys[0]) if len({dict(sh).get(k) for sh in keys}) > 1]

      def table(cell):
        rows = []
        for sh in keys:
          label = params_label(dict(sh))
          for v in sorted(shapes[sh]):
            per = shapes[sh][v]
            rows.append([label, v] + [case_cell(per.get(dt), lambda c, dt=dt: cell(c, per))
                                      for dt in dtypes])
        return md_table(header, rows, ["---", "---"] + ["---:"] * len(dtypes))

      def time_cell(c, per):
        r = ratio(c, per.get(ar.F32))
        return fmt_time(c.time_s) + (f" ({r:.2f}×)" if r is not None else "")
      self.add(f"**Time per call (ms)**, in parentheses {what_ratio}", "",
               table(time_cell), "")
      # The code path each (variant, type) took (the bench's label; absent in older files):
      # the same variant and type run different micro-kernels on different CPUs.
      paths = {}
      for sh in keys:
        for v, per in shapes[sh].items():
          for dt, c in per.items():
            if c.ok and c.path:
              paths.setdefault(v, {}).setdefault(dt, set()).add(c.path)
      if paths:
        rows = [[v] + [", ".join(sorted(paths[v].get(dt, ()))) or "—" for dt in dtypes]
                for v in sorted(paths)]
        self.add("**Code path that ran** (Highway target; `+AVX512_BF16`: bf16 products on "
                 "VDPBF16PS; `+AMX_BF16`: on AMX tiles; `+AVX512_VNNI`: int8 decode on "
                 "VPDPWSSD; `portable C++`: no SIMD dispatch)", "",
                 md_table(["variant"] + dtypes, rows, ["---"] * (1 + len(dtypes))), "")
      rate = "GBps" if decode else "GFLOPS"
      self.add("**GB/s of K+V at their element sizes**" if decode else
               "**GFLOP/s**" + (" (effective)" if any(dict(sh).get("causal") for sh in keys)
                                else ""), "",
               table(lambda c, per: fmt_num(c.counter(rate))), "")

      if not decode and any(c.ok and c.counter("core_ghz") for by_v in shapes.values()
                            for per in by_v.values() for c in per.values() if c):
        # Beside the ceilings' own (ceilings section): a type whose products run on other
        # units (AMX) can run them at another clock.
        self.add("**Core clock**, GHz (`core_ghz`, read after the work items; the ceilings' "
                 "clocks are in the ceilings section)", "",
                 table(lambda c, per: f"{c.counter('core_ghz'):.2f}"
                       if c.counter("core_ghz") else "—"), "")
      if not decode:
        self.matmul_bf16_ceiling_table(source, shapes, keys)

      focus, other = self.precision_focus(shapes)
      reduced = [dt for dt in dtypes if dt != ar.F32]
      panels = [v for v in (focus, other) if v]
      # Each panel its own log scale: ratios are multiplicative, and one variant's conversion
      # cost (e.g. 10x) would flatten another's 0.5x into the f32 line.
      fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.8), squeeze=False)
      width = 0.8 / max(1, len(reduced))
      for ax, v in zip(axes[0], panels):
        for i, dt in enumerate(reduced):
          xs, ys = [], []
          for x, sh in enumerate(keys):
            per = shapes[sh].get(v, {})
            r = ratio(per.get(dt), per.get(ar.F32))
            if r is not None:
              xs.append(x - 0.4 + width * (i + 0.5))
              ys.append(r)
          # From the f32 line: up is faster than f32 in prefill, slower in decode.
          ax.bar(xs, [y - 1 for y in ys], width, bottom=1, color=colors[dt], label=dt)
        ax.axhline(1.0, color="k", lw=1, ls="--", label="= f32")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([params_label(dict(sh), skip=[k for k in dict(sh) if k not in varying])
                            .replace(", ", "\n") for sh in keys], fontsize=8)
        ax.set_title(v, fontsize=10)
        ax.set_ylabel("time / f32 time (below 1: faster)" if decode else
                      "speed-up vs f32 (f32 time / type time)")
        ax.grid(True, axis="y", alpha=0.3)
      fig.suptitle(f"{self.host_prefix(source)}reduced precision — {title}", fontsize=11)
      bottom = legend_below(fig, axes[0][:1], ncol=min(6, len(reduced) + 1))
      self.image(save(fig, self.out_dir, slug(f"precision_{source}_{scenario or 'prefill'}"
                                              f"_threads{threads}") + ".png", bottom),
                 "reduced-precision speed-up")

      if focus:
        means = []
        for dt in reduced:
          sps = [ratio(shapes[sh].get(focus, {}).get(dt), shapes[sh].get(focus, {}).get(ar.F32))
                 for sh in keys]
          sps = [x for x in sps if x is not None]
          if sps:
            means.append(f"{dt} {math.exp(statistics.mean(math.log(x) for x in sps)):.2f}×")
        if means:
          summary.append(f"  - {self.host_prefix(source)}{title}, {focus}, "
                         + ("time / f32 time: " if decode else "speed-up: ") + ", ".join(means))
    if summary:
      self.summary.append("- Reduced precision vs the variant's own f32 (geometric mean over "
                          "the shapes; prefill: speed-up, decode: time per token relative to "
                          "f32; see *Reduced precision*):")
      self.summary.extend(summary)

  # ---- layer
  def layer_section(self):
    self.add("## End-to-end MHA layer: attention share", "")
    cases = [c for c in self.f32_cases() if c.family == ar.LAYER]
    if not cases:
      self.add(NOT_IN_RUN, "")
      return
    self.add("Share of the layer's time (projections Wq, Wk, Wv, Wo with sgemm + attention) "
             "spent in the attention kernel; layer time in ms in parentheses.", "")
    groups = {}
    for c in cases:
      gp = params_label({k: v for k, v in c.params.items() if k != "N"})
      groups.setdefault((c.source, gp), {}).setdefault(c.variant, {})[c.params.get("N")] = c
    for (source, gp), by_v in sorted(groups.items()):
      variants = sorted(by_v)
      ns = sorted({n for d in by_v.values() for n in d if n is not None})
      rows = []
      for n in ns:
        row = [n]
        for v in variants:
          row.append(case_cell(by_v[v].get(n), lambda c: f"{fmt_pct(c.counter('attention_share'))}"
                                                         f" ({fmt_time(c.time_s)})"))
        rows.append(row)
      self.add(f"**{self.host_prefix(source)}{gp}**", "", md_table(["N"] + variants, rows), "")

  # ---- micro-kernels
  def ukernel_section(self):
    self.add("## Micro-kernels against the FMA peak", "")
    cases = [c for c in self.f32_cases() if c.family == ar.UKERNEL]
    if not cases:
      self.add(NOT_IN_RUN, "")
      return
    self.add("Every entry of the micro-kernel list (`kernels/ukernels/ukernels.inc`) on "
             "L1/L2-resident data at the shapes the variants call it with, one thread, the best "
             "Highway target; the FMA peak is `ceiling_fma/threads:1`, the register-resident FMA "
             "loop on one core, measured interleaved with these cases in the same run (files "
             "from before it: `ukernel/fma_peak`). GFLOPS and the peak fraction for the entries "
             "that are FMA work (scores, P·V, dot); elements written per second for the "
             "others. Decode's entries also `from:memory`: called tile after tile over a buffer "
             "twice the L3 (2 MiB pages), reading K or V once as decode does; GB/s of the "
             "operand and its fraction of the best `ceiling_stream/threads:1` of the run. "
             "GHz: the core's clock right after the entry's calls (`core_ghz`, read with a "
             "chain of dependent adds: bench/core_clock.h), and the fraction of the entry's "
             "peak (its ISA's ceiling, else the FMA loop) per cycle, each at its own clock: "
             "cores that lower their clock under heavier work (Intel's under loads and stores "
             "beside AVX-512 or AMX) lose the rest of the peak fraction there, not in the "
             "kernel's instructions.", "")
    for source in sorted({c.source for c in cases}):
      mine = [c for c in cases if c.source == source]
      peak = self.fma_ceiling(source, 1)
      if peak is None:  # an older file: the micro-kernel suite's own FMA loop
        peak = next((c for c in mine if c.scenario == ar.FMA_PEAK), None)
      in_run = peak is not None and peak.family == ar.CEILING_FMA

      def of_peak(c, peak=peak, in_run=in_run):
        """GFLOPS / the peak above; in an older file, the bench's own peak_fraction."""
        if in_run:
          g = c.counter("GFLOPS")
          return None if g is None else g / peak.counter("GFLOPS")
        return c.counter("peak_fraction")
      stream = self.stream_ceiling(source, 1)
      stream_gbps = stream.best("GBps") if stream else None
      # An intrinsics entry's own peak: the ISA ceiling its path names, one thread.
      isa_peaks = {}
      for family, _, isa in ar.ISA_CEILINGS:
        ceiling = self.run.cases.get((source, f"{family}/threads:1"))
        if ceiling and ceiling.ok and ceiling.counter("GFLOPS"):
          isa_peaks[isa] = ceiling

      def of_isa(c, isa_peaks=isa_peaks):
        """GFLOPS / the peak of the ISA the entry ran on (ceiling_vpdpwssd for AVX512_VNNI,
        ...), or None for a Highway entry or without that ceiling."""
        g, ceiling = c.counter("GFLOPS"), isa_peaks.get(c.path)
        return None if g is None or ceiling is None else g / ceiling.counter("GFLOPS")

      def per_cycle(c, peak=peak, in_run=in_run, isa_peaks=isa_peaks):
        """The entry's FLOPs per cycle over its peak loop's (its ISA's ceiling for an
        intrinsics entry, else the FMA peak), each at the clock its core ran right after it
        (core_ghz, bench/core_clock.h): the fraction of that peak without the clock's part."""
        if c.path in isa_peaks:
          f, peak_ghz = of_isa(c), isa_peaks[c.path].counter("core_ghz")
        else:
          f, peak_ghz = of_peak(c), peak.counter("core_ghz") if in_run else None
        ghz = c.counter("core_ghz")
        return None if f is None or not ghz or not peak_ghz else f * peak_ghz / ghz

      def of_stream(c, stream_gbps=stream_gbps):
        g = c.counter("GB_per_s")
        return None if g is None or not stream_gbps else g / stream_gbps
      rows = []
      for c in sorted((c for c in mine if c.scenario != ar.FMA_PEAK),
                      key=lambda c: natural_key(c.name)):
        shape = params_label({k: v for k, v in c.params.items() if k != "threads"})
        rows.append([f"`{c.scenario}`", shape,
                     case_cell(c, lambda c: fmt_num(c.counter("GFLOPS"))),
                     case_cell(c, lambda c: fmt_pct(of_peak(c))),
                     case_cell(c, lambda c: f"{c.counter('core_ghz'):.2f}"
                               if c.counter("core_ghz") else "—"),
                     case_cell(c, lambda c: fmt_pct(per_cycle(c))),
                     case_cell(c, lambda c: (fmt_pct(of_isa(c)) + f" ({c.path})")
                               if of_isa(c) is not None else "—"),
                     case_cell(c, lambda c: fmt_num(c.counter("Gelems_per_s"))),
                     case_cell(c, lambda c: fmt_num(c.counter("GB_per_s"))),
                     case_cell(c, lambda c: fmt_pct(of_stream(c))),
                     case_cell(c, lambda c: fmt_time(c.time_s))])
      head = (f"FMA peak: **{fmt_num(peak.counter('GFLOPS'))} GFLOP/s** (`{peak.name}`"
              + (f", at {fmt_num(peak.counter('core_ghz'))} GHz" if peak and peak.ok
                 and peak.counter("core_ghz") else "") + ")"
              if peak and peak.ok else "FMA peak: —")
      head += (f"; stream: **{fmt_num(stream_gbps)} GB/s** (`{stream.name}`, best repetition)"
               if stream_gbps else "")
      self.add(f"{self.host_prefix(source)}{head}", "",
               md_table(["entry", "shape", "GFLOP/s", "of FMA peak", "GHz", "its peak, per cycle",
                         "of its ISA's peak",
                         "Gelem/s", "GB/s", "of stream", "ms/call"], rows),
               "")
      best, best_isa = {}, {}  # entry -> its best fraction of the peak (its ISA's) over shapes
      for c in mine:
        f = of_peak(c) if c.ok and c.scenario != ar.FMA_PEAK else None
        if f is not None and f > best.get(c.scenario, -1):
          best[c.scenario] = f
        fi = of_isa(c) if c.ok else None
        if fi is not None and fi > best_isa.get(c.scenario, (-1, ""))[0]:
          best_isa[c.scenario] = (fi, c.path)

      def entry_text(e, f):
        isa = best_isa.get(e)
        return f"`{e}` {fmt_pct(f)}" + (f" ({fmt_pct(isa[0])} of {isa[1]}'s)" if isa else "")
      if best and peak and peak.ok:
        self.summary.append(
            f"- Micro-kernels{' on ' + source if self.multi_host else ''}, best shape as a "
            f"fraction of the FMA peak ({fmt_num(peak.counter('GFLOPS'))} GFLOP/s, one core; "
            "in parentheses, of the peak of the ISA an intrinsics entry runs on): "
            + ", ".join(entry_text(e, f) for e, f in sorted(best.items(),
                                                            key=lambda t: natural_key(t[0])))
            + ".")

  # ---- accuracy
  def accuracy_tables(self, rows_in, source, multi, typed, title=""):
    """One table per mask of `source`'s results: max abs error (bound ratio) per variant."""
    variants = sorted({r.variant for r in rows_in})
    for mask in sorted({r.mask for r in rows_in}):
      rs = [r for r in rows_in if r.source == source and r.mask == mask]
      if not rs:
        continue
      keys = sorted({(ar.dtype_sort_key(r.dtype), r.dtype, r.d, r.N) for r in rs})
      idx = {(r.variant, r.dtype, r.d, r.N): r for r in rs}
      rows = []
      for _, dt, d, n in keys:
        row = ([dt] if typed else []) + [d, n]
        for v in variants:
          r = idx.get((v, dt, d, n))
          if r is None or r.error:
            row.append(r.status if r else "—")
          else:
            txt = f"{r.max_abs_error:.2e} ({fmt_num(r.bound_ratio, 2)})"
            row.append(f"**{txt}**" if r.bound_ratio > 1 else txt)
        rows.append(row)
      self.add(f"**{title}{source + ': ' if multi else ''}mask = {mask}**", "",
               md_table((["dtype"] if typed else []) + ["d", "N"] + variants, rows,
                        ["---"] * typed + ["---:"] * (2 + len(variants))
                        if typed else None), "")

  def accuracy_section(self, given):
    self.add("## Accuracy against the fp64 reference", "")
    if not given:
      self.add(NOT_IN_RUN + " (no --accuracy file given).", "")
      return
    self.add("Cell: max abs error (max error / the derived bound of reference/error_bound.h "
             "ErrorBound; above 1 is outside the bound and marked **bold**).", "")
    multi = len({r.source for r in self.acc_rows}) > 1
    masks = sorted({r.mask for r in self.acc_rows})
    variants = sorted({r.variant for r in self.acc_rows})
    # Results in reduced element types (a "dtype" field): a dtype column, f32 first; the plot
    # shows f32.
    typed = any(r.dtype != ar.F32 for r in self.acc_rows)
    if typed:
      self.add("Element types: the `dtype` column (Q, K, V, O as in the benchmark's name token; "
               "the bound has each type's rounding terms). The plot shows f32.", "")
    for source in sorted({r.source for r in self.acc_rows}):
      self.accuracy_tables(self.acc_rows, source, multi, typed)
      # plot: bound ratio vs N, one panel per mask
      ncols = min(3, len(masks))
      nrows = math.ceil(len(masks) / ncols)
      fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows + 0.8),
                               sharey=True, squeeze=False)
      flat = [ax for row in axes for ax in row]
      for ax in flat[len(masks):]:
        ax.set_visible(False)
      ds = sorted({r.d for r in self.acc_rows if r.source == source})
      styles = ["o-", "s--", "^:", "d-."]
      for ax, mask in zip(flat, masks):
        for v in variants:
          for i, d in enumerate(ds):
            pts = sorted((r.N, r.bound_ratio) for r in self.acc_rows
                         if r.source == source and r.mask == mask and r.variant == v
                         and r.d == d and r.dtype == ar.F32 and 0 < r.bound_ratio < math.inf)
            if pts:
              ax.plot([p[0] for p in pts], [p[1] for p in pts], styles[i % len(styles)],
                      color=self.colors[v], label=f"{v}, d={d}")
        ax.axhline(1.0, color="r", lw=1, ls="--", label="bound")
        pow2_x_axis(ax, sorted({r.N for r in self.acc_rows}))
        ax.set_yscale("log")
        ax.set_title(f"mask = {mask}", fontsize=10)
        ax.set_xlabel("N (log scale)")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylabel("max error / derived bound (log)")
      fig.suptitle(f"{source + ': ' if multi else ''}accuracy vs the fp64 reference "
                   "(below the red line = inside the bound)", fontsize=11)
      bottom = legend_below(fig, flat[:1], ncol=4)
      self.image(save(fig, self.out_dir, slug(f"accuracy_{source}") + ".png", bottom),
                 "accuracy")
    if self.acc_grad_rows:
      self.add("### Gradients (the backward pass)", "",
               "Cell: max abs error over dQ, dK and dV (max error / the derived bound of "
               "reference/error_bound.h GradErrorBounds; above 1 is outside the bound and marked "
               "**bold**). Every element is checked against reference::Backward, whose own fp64 "
               "forward gives P: the variant's forward, then its backward, B = H = 1, a random "
               "dO.", "")
      multi_grad = len({r.source for r in self.acc_grad_rows}) > 1
      for source in sorted({r.source for r in self.acc_grad_rows}):
        self.accuracy_tables(self.acc_grad_rows, source, multi_grad, False, "backward, ")
    for rows, what in ((self.acc_rows, "Accuracy"), (self.acc_grad_rows, "Gradient accuracy")):
      worst = {}
      for r in rows:
        if not math.isnan(r.bound_ratio) and r.bound_ratio > worst.get(r.variant, (-1,))[0]:
          worst[r.variant] = (r.bound_ratio, r)
      if worst:
        self.summary.append(f"- {what}, worst max error / bound per variant: " + "; ".join(
            f"{v} {fmt_num(b, 2)} (N={r.N}, d={r.d}, {r.mask}"
            + (f", {r.dtype})" if r.dtype != ar.F32 else ")")
            for v, (b, r) in sorted(worst.items()))
            + (f" (N = {min(r.N for r in rows)}..{max(r.N for r in rows)})"
               if what != "Accuracy" else "") + ".")


# ----------------------------------------------------------------------------- output
def warn(lines):
  for line in lines:
    print(f"generate.py: warning: {line}", file=sys.stderr)


def load_results(paths, select=None):
  """ar.load_results, its warnings (a truncated file) on stderr."""
  run = ar.load_results(paths, select)
  warn(run.warnings)
  return run


@contextlib.contextmanager
def staged_dir(final):
  """Yields a new, empty directory beside `final` (same parent, so renames are atomic) to write
  a report into. When the block completes, the new directory takes `final`'s place (an existing
  `final` is renamed aside first and removed last); when it raises (an error, Ctrl-C), the new
  directory is removed and `final` is left as it was. No reader ever sees half a report, or
  old and new files mixed."""
  parent = os.path.dirname(os.path.abspath(final))
  os.makedirs(parent, exist_ok=True)
  new = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.", suffix=".tmp", dir=parent)
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(new, 0o777 & ~umask)  # mkdtemp makes it 0700; a report gets the usual mode
    yield new
    if os.path.lexists(final):
      aside = new + ".old"
      os.rename(final, aside)
      try:
        os.rename(new, final)
      except BaseException:
        os.rename(aside, final)
        raise
      shutil.rmtree(aside)
    else:
      os.rename(new, final)
  except BaseException:
    shutil.rmtree(new, ignore_errors=True)
    raise


def copy_inputs(paths, out_dir):
  """The inputs travel with the report (in data/), so anyone can check or regenerate it."""
  data_dir = os.path.join(out_dir, "data")
  os.makedirs(data_dir)
  for p in paths:
    shutil.copyfile(p, os.path.join(data_dir, os.path.basename(p)))


def write_report(args):
  run = load_results(args.results)
  accuracy = ar.load_accuracy(args.accuracy)
  warn(accuracy.warnings)
  hosts = run.sources() or sorted(accuracy.contexts)
  contexts = list(run.contexts.values()) or list(accuracy.contexts.values())
  date = max((run_date(c) for c in contexts), default="nodate")
  folder = "+".join(slug(h) for h in hosts) + f"-{date}" + (f"-{slug(args.label)}"
                                                             if args.label else "")
  final = os.path.join(args.out_dir, folder)
  with staged_dir(final) as out_dir:
    rep = Report(run, accuracy, out_dir, [b for b in args.baselines.split(",") if b],
                 args.precision_focus)
    rep.ceilings_section()
    rep.context_section()
    rep.sweep_section()
    rep.hosts_section()
    rep.scaling_section()
    rep.backward_section()
    rep.budget_section()
    rep.decode_section()
    rep.modifier_section()
    rep.varlen_section()
    rep.paged_section()
    rep.scenario_section()
    rep.precision_section()
    rep.layer_section()
    rep.ukernel_section()
    rep.accuracy_section(bool(args.accuracy))
    head = [f"# attnlab report: {', '.join(hosts)}, {date}" + (f" ({args.label})"
                                                               if args.label else ""), "",
            "Generated by `reports/generate.py` from " + ", ".join(
                f"[`{os.path.basename(p)}`](data/{os.path.basename(p)})"
                for p in args.results + args.accuracy)
            + " (copied into `data/` beside this report). Every number below is read from those"
            " files.", "", "## Summary", ""]
    head += rep.summary or ["- " + NOT_IN_RUN]
    head += ["", "Contents: " + " · ".join(
        f"[{h[3:]}](#{gh_anchor(h[3:])})" for h in rep.lines if h.startswith("## ")), ""]
    copy_inputs(args.results + args.accuracy, out_dir)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
      f.write("\n".join(head + rep.lines).rstrip() + "\n")
  return os.path.join(final, "report.md")


# ----------------------------------------------------------------------------- A/B compare
def compare_rows(ia, ib, common, noise_floor):
  """(table rows, [(key, case A, ratio, threshold, flagged)] of the compared cases, the kinds
  of threshold used) for the matched case keys `common`."""
  rows, data = [], []
  thresholds = set()
  for key in common:
    ca, cb = ia[key], ib[key]
    if not (ca.ok and cb.ok):
      rows.append([f"`{key}`", fmt_time(ca.time_s) if ca.ok else ca.error[:40],
                   fmt_time(cb.time_s) if cb.ok else cb.error[:40], "—", "—", "—",
                   "not compared"])
      continue
    ratio = cb.time_s / ca.time_s
    rate_key = "GFLOPS" if ca.counter("GFLOPS") and cb.counter("GFLOPS") else (
        "GBps" if ca.counter("GBps") and cb.counter("GBps") else None)
    rate = cb.counter(rate_key) / ca.counter(rate_key) if rate_key else None
    if ca.cv is not None and cb.cv is not None:
      thr = 2 * math.sqrt(ca.cv**2 + cb.cv**2)
      basis = "2σ"
    else:
      thr = noise_floor
      basis = "floor"
    thresholds.add(basis)
    flagged = abs(ratio - 1) > thr
    verdict = ("**slower**" if ratio > 1 else "**faster**") if flagged else "within noise"
    rows.append([f"`{key}`", fmt_time(ca.time_s), fmt_time(cb.time_s), f"{ratio:.3f}",
                 f"{rate:.3f}" + ("" if rate_key == "GFLOPS" else f" ({rate_key})")
                 if rate is not None else "—", f"±{100 * thr:.1f}% ({basis})", verdict])
    data.append((key, ca, ratio, thr, flagged))
  return rows, data, thresholds


def compare_plot(out_dir, data, la, lb):
  """compare.png: the geometric-mean ratio per variant, and every compared case's ratio."""
  colors = variant_colors({ca.series for _, ca, *_ in data})
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1, 2]})
  groups = {}
  for key, ca, ratio, thr, flagged in data:
    groups.setdefault(ca.series, []).append(ratio)
  names = sorted(groups)
  geo = [math.exp(statistics.mean(math.log(r) for r in groups[n])) for n in names]
  ax1.barh(names, [g - 1 for g in geo], left=1, color=[colors[n] for n in names])
  for i, g in enumerate(geo):  # the value inside its bar, at the bar's far end
    ax1.text(g, i, f" {g:.2f}× ", va="center", ha="right" if g >= 1 else "left", fontsize=9,
             color="white", fontweight="bold")
  if geo:
    lo, hi = min(geo + [1.0]), max(geo + [1.0])
    pad = 0.05 * (hi - lo or 1)
    ax1.set_xlim(lo - pad, hi + pad)
  ax1.axvline(1, color="k", lw=1)
  ax1.set_xlabel("geometric-mean time ratio B / A (<1: B faster)")
  ax1.set_title("per variant / family", fontsize=10)
  ax1.invert_yaxis()
  ax1.grid(True, axis="x", alpha=0.3)
  srt = sorted(data, key=lambda t: t[2])
  xs = range(len(srt))
  for n in names:
    pts = [(i, t[2]) for i, t in zip(xs, srt) if t[1].series == n]
    ax2.scatter([p[0] for p in pts], [p[1] for p in pts], color=colors[n], s=18, label=n,
                zorder=3)
  fl = [(i, t[2]) for i, t in zip(xs, srt) if t[4]]
  if fl:
    ax2.scatter([p[0] for p in fl], [p[1] for p in fl], facecolors="none", edgecolors="r",
                s=70, lw=1.5, label="beyond noise", zorder=4)
  if srt:
    floor = min(t[2] for t in srt) / 1.5
    ax2.fill_between(list(xs), [max(1 - t[3], floor) for t in srt], [1 + t[3] for t in srt],
                     color="0.85",
                     label="noise band per case", zorder=1)
  ax2.axhline(1, color="k", lw=1)
  ax2.set_yscale("log")
  ax2.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
  ax2.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:g}"))
  ax2.yaxis.set_minor_formatter(ticker.NullFormatter())
  ax2.set_xlabel("benchmark case (sorted by ratio)")
  ax2.set_ylabel("time ratio B / A (log scale)")
  ax2.set_title("every matched case", fontsize=10)
  ax2.grid(True, which="both", alpha=0.3)
  fig.suptitle(f"A/B: B time / A time\nA = {la.split(' (`')[0]}   B = {lb.split(' (`')[0]}",
               fontsize=10)
  save(fig, out_dir, "compare.png", legend_below(fig, (ax2,), ncol=6))


def compare(args):
  a = load_results([args.a], select=args.select_a)
  b = load_results([args.b], select=args.select_b)
  ignore = tuple(p for p in (args.match_ignore or "").split(",") if p)

  def index(run, side):
    out = {}
    for c in run.all_cases():
      key = c.key_without(*ignore)
      if key in out:
        raise SystemExit(f"compare: {side} has two cases matching '{key}' "
                         f"({out[key].source}, {c.source}); select one with --select-{side}")
      out[key] = c
    return out

  ia, ib = index(a, "a"), index(b, "b")
  common = sorted(set(ia) & set(ib), key=natural_key)
  ctx_a = next(iter(a.contexts.values()), {})
  ctx_b = next(iter(b.contexts.values()), {})

  def side_label(ctx, path, select):
    return (f"{ctx.get('host_name', '?')} {run_date(ctx)} "
            f"{str(ctx.get('attnlab_git_commit', ''))[:10]}" + (f" [{' '.join(select)}]"
                                                               if select else "")
            + f" (`{os.path.basename(path)}`)")

  def load(ctx):
    la = ctx.get("load_avg")
    return ", ".join(f"{x:.2f}" for x in la) if isinstance(la, list) and la else "unknown"

  la, lb = side_label(ctx_a, args.a, args.select_a), side_label(ctx_b, args.b, args.select_b)
  folder = (f"compare-{slug(ctx_a.get('host_name', 'a'))}-{run_date(ctx_a)}-vs-"
            f"{slug(ctx_b.get('host_name', 'b'))}-{run_date(ctx_b)}"
            + (f"-{slug(args.label)}" if args.label else ""))
  rows, data, thresholds = compare_rows(ia, ib, common, args.noise_floor)
  only_a = sorted(set(ia) - set(ib), key=natural_key)
  only_b = sorted(set(ib) - set(ia), key=natural_key)

  n_flag = sum(1 for t in data if t[4])
  n_slow = sum(1 for t in data if t[4] and t[2] > 1)
  lines = ["# attnlab A/B comparison" + (f" ({args.label})" if args.label else ""), "",
           f"- **A**: {la}", f"- **B**: {lb}"]
  lines += [f"- **Warning**: {w}." for w in a.warnings + b.warnings]
  lines += [f"- machine state: A load average {load(ctx_a)} on {ctx_a.get('num_cpus', '?')} "
            f"CPUs, B load average {load(ctx_b)} on {ctx_b.get('num_cpus', '?')} CPUs "
            "(from the JSON context; a busy machine widens the spread).",
            f"- matched {len(common)} case(s)" + (f" ignoring parameter(s) {', '.join(ignore)}"
                                                  if ignore else "")
            + f"; {len(only_a)} only in A, {len(only_b)} only in B.",
            f"- {n_flag} of {len(data)} compared case(s) differ beyond the noise threshold: "
            f"{n_slow} slower in B, {n_flag - n_slow} faster in B.", "",
            "Ratio = B time / A time (below 1: B is faster); rate ratio = B GFLOPS / A GFLOPS "
            "(GBps where a case has no GFLOPS). Noise threshold per case: "
            + ("**2σ** = 2·sqrt(cv_A² + cv_B²), cv = coefficient of variation of the real time "
               "over repetitions (from the _cv aggregate or the repetitions themselves); "
               if "2σ" in thresholds else "")
            + (f"**floor** = a stated noise floor of ±{100 * args.noise_floor:.0f}% "
               "(--noise-floor) used where a side has no repetitions. "
               if "floor" in thresholds else "")
            + "A case is flagged when |ratio − 1| exceeds its threshold.", "",
            "![A/B ratios](compare.png)", ""]
  flagged_rows = [r for r in rows if r[-1].startswith("**")]
  if flagged_rows:
    lines += ["**Beyond noise**", "",
              md_table(["case", "A ms", "B ms", "time B/A", "rate B/A", "threshold", "verdict"],
                       sorted(flagged_rows, key=lambda r: float(r[3])),
                       ["---"] + ["---:"] * 6), ""]
  else:
    lines += ["**Beyond noise**: no case.", ""]
  lines += ["**All matched cases**", "",
           md_table(["case", "A ms", "B ms", "time B/A", "rate B/A", "threshold", "verdict"],
                    rows, ["---"] + ["---:"] * 6), ""]
  if only_a or only_b:
    lines += ["Unmatched cases:", ""]
    lines += [f"- only in A: `{k}`" for k in only_a] + [f"- only in B: `{k}`" for k in only_b]
    lines.append("")
  final = os.path.join(args.out_dir, folder)
  with staged_dir(final) as out_dir:
    compare_plot(out_dir, data, la, lb)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
      f.write("\n".join(lines))
  return os.path.join(final, "report.md")


def main(argv):
  if argv and argv[0] == "compare":
    ap = argparse.ArgumentParser(prog="generate.py compare",
                                 description="A/B ratio table and plot of two result files.")
    ap.add_argument("a", help="A: baseline benchmark JSON")
    ap.add_argument("b", help="B: benchmark JSON compared against A")
    ap.add_argument("--label", default="")
    ap.add_argument("--out-dir", default="reports")
    ap.add_argument("--match-ignore", default="",
                    help="comma-separated parameter names dropped before matching, e.g. threads")
    ap.add_argument("--select-a", action="append", default=[],
                    help="keep only A cases with this name token (e.g. threads:1); repeatable")
    ap.add_argument("--select-b", action="append", default=[],
                    help="keep only B cases with this name token (e.g. threads:2); repeatable")
    ap.add_argument("--noise-floor", type=float, default=0.05,
                    help="relative threshold used where a side has no repetitions (0.05 = 5%%)")
    return run_command(compare, ap.parse_args(argv[1:]))
  ap = argparse.ArgumentParser(description="Report (report.md + PNGs) from attnlab bench JSON.")
  ap.add_argument("results", nargs="+", help="benchmark JSON file(s), one or more hosts")
  ap.add_argument("--accuracy", action="append", default=[], help="accuracy JSON (repeatable)")
  ap.add_argument("--label", default="")
  ap.add_argument("--out-dir", default="reports")
  ap.add_argument("--baselines", default="naive,blas",
                  help="variants the speedup tables divide by, when present (default naive,blas)")
  ap.add_argument("--precision-focus", default="flash",
                  help="the variant plotted first in Reduced precision, beside the best other, "
                       "and whose fraction of ceiling_fma the summary states per sweep group "
                       "(default flash; absent: the fastest)")
  return run_command(write_report, ap.parse_args(argv))


def run_command(command, args):
  """Runs write_report or compare and prints the report's path: 0. A bad input file, or a
  report that cannot be written, is one line on stderr: 1. Ctrl-C or SIGTERM: 130, the report
  directory as it was."""
  try:
    print(command(args))
    return 0
  except ar.InputError as e:
    print(f"generate.py: {e}", file=sys.stderr)
  except OSError as e:
    print(f"generate.py: cannot write the report: {e.filename or ''}"
          f"{': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
  except KeyboardInterrupt:
    print("generate.py: interrupted; the report directory is as it was", file=sys.stderr)
    return 130
  return 1


def interrupt(signum, frame):
  """SIGTERM (kill, a timeout) unwinds like Ctrl-C, so the staged directory is removed."""
  raise KeyboardInterrupt


if __name__ == "__main__":
  signal.signal(signal.SIGTERM, interrupt)
  sys.exit(main(sys.argv[1:]))
