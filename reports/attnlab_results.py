"""Reads attnlab benchmark and accuracy JSON (see docs/bench-json.md) into plain Python objects.

Google Benchmark JSON: {"context": {...}, "benchmarks": [...]}. Each benchmark entry is one
repetition ("run_type": "iteration") or an aggregate over repetitions ("run_type": "aggregate",
"aggregate_name": mean|median|stddev|cv). Names are '/'-separated tokens: the first is a variant
name from the registry, `ceiling_sgemm`, `ceiling_stream` or `layer` (whose second token is the
variant); tokens without ':' are the scenario, `key:value` tokens are parameters.

Nothing here knows a variant name: variants are whatever first tokens the JSON holds.
"""
import json
import math
import statistics

# First tokens with a fixed meaning in the contract. Every other first token is a variant.
CEILING_SGEMM = "ceiling_sgemm"
CEILING_STREAM = "ceiling_stream"
LAYER = "layer"
FIXED_FAMILIES = (CEILING_SGEMM, CEILING_STREAM, LAYER)

# Tokens Google Benchmark appends to a name (UseRealTime etc.); not part of the case.
_GB_SUFFIX_TOKENS = ("real_time", "process_time", "manual_time")
_GB_SUFFIX_PREFIXES = ("iterations:", "repeats:", "min_time:", "min_warmup_time:")

# Keys of a Google Benchmark entry that are not user counters.
_STANDARD_KEYS = {
    "name", "family_index", "per_family_instance_index", "run_name", "run_type", "repetitions",
    "repetition_index", "threads", "iterations", "real_time", "cpu_time", "time_unit",
    "aggregate_name", "aggregate_unit", "error_occurred", "error_message", "label", "big_o",
    "rms", "skipped"}

_TIME_UNIT_S = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def strip_name(name):
  """Case name without the tokens Google Benchmark appends (/real_time, /repeats:3, ...)."""
  return "/".join(t for t in name.split("/")
                  if t not in _GB_SUFFIX_TOKENS and not t.startswith(_GB_SUFFIX_PREFIXES))


def parse_name(name):
  """(family, variant, scenario, params) of a stripped case name."""
  tokens = name.split("/")
  family = tokens[0]
  rest = tokens[1:]
  variant = None
  if family == LAYER and rest:
    variant, rest = rest[0], rest[1:]
  elif family not in FIXED_FAMILIES:
    variant = family
  scenario = "/".join(t for t in rest if ":" not in t)
  params = {}
  for t in rest:
    if ":" in t:
      k, v = t.split(":", 1)
      params[k] = v
  return family, variant, scenario, params


def param_value(text):
  """'4096' -> 4096, '0.5' -> 0.5, anything else stays a string."""
  try:
    return int(text)
  except ValueError:
    try:
      return float(text)
    except ValueError:
      return text


class Case:
  """One benchmark case on one source (host), reduced over its repetitions."""

  def __init__(self, source, name):
    self.source = source
    self.name = name
    self.family, self.variant, self.scenario, raw = parse_name(name)
    self.params = {k: param_value(v) for k, v in raw.items()}
    self.time_s = None     # median real time per call, seconds
    self.counters = {}     # median of each counter over repetitions
    self.cv = None         # coefficient of variation of real time over repetitions (or None)
    self.cv_source = None  # where cv came from: "repetitions (n=3)" / "_cv aggregate"
    self.repetitions = 0
    self.error = None      # error_message when the case was not run

  def counter(self, key):
    return self.counters.get(key)

  def key_without(self, *param_names):
    """The case name with the given parameter tokens removed (for matching across runs)."""
    return "/".join(t for t in self.name.split("/") if t.split(":", 1)[0] not in param_names
                    or ":" not in t)

  @property
  def ok(self):
    return self.error is None and self.time_s is not None


def _read_json(path):
  with open(path) as f:
    try:
      doc = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(doc, dict):
    raise ValueError(f"{path}: expected a JSON object")
  return doc


def _counters_of(entry):
  return {k: float(v) for k, v in entry.items()
          if k not in _STANDARD_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _reduce(case, iterations, aggregates):
  """Fills case from its repetition entries (preferred) or, failing those, its aggregates."""
  _reduce_measured(case, iterations, aggregates)
  # A ceiling that timed only a leading share of the problem's identical sgemm blocks
  # (bench: `ceiling_fraction` < 1) reports its time scaled to the whole problem at the
  # measured rate, so its time column compares with the variants'. GFLOPS needs no scaling.
  fraction = case.counters.get("ceiling_fraction")
  if case.time_s is not None and fraction and 0 < fraction < 1:
    case.time_s /= fraction


def _reduce_measured(case, iterations, aggregates):
  if iterations:
    times = [e["real_time"] * _TIME_UNIT_S.get(e.get("time_unit", "ns"), 1e-9)
             for e in iterations]
    case.time_s = statistics.median(times)
    case.repetitions = len(times)
    keys = set()
    for e in iterations:
      keys.update(_counters_of(e))
    for k in sorted(keys):
      vals = [_counters_of(e)[k] for e in iterations if k in _counters_of(e)]
      case.counters[k] = statistics.median(vals)
    if len(times) >= 2 and statistics.mean(times) > 0:
      case.cv = statistics.stdev(times) / statistics.mean(times)
      case.cv_source = f"repetitions (n={len(times)})"
    return
  by_name = {}
  for e in aggregates:
    by_name.setdefault(e.get("aggregate_name"), []).append(e)
  central = by_name.get("median") or by_name.get("mean")
  if not central:
    return
  unit = _TIME_UNIT_S.get(central[0].get("time_unit", "ns"), 1e-9)
  case.time_s = statistics.median(e["real_time"] * unit for e in central)
  case.repetitions = int(central[0].get("repetitions", 0))
  keys = set()
  for e in central:
    keys.update(_counters_of(e))
  for k in sorted(keys):
    case.counters[k] = statistics.median(_counters_of(e)[k] for e in central
                                         if k in _counters_of(e))
  if by_name.get("cv"):
    case.cv = max(e["real_time"] for e in by_name["cv"])
    case.cv_source = "_cv aggregate"
  elif by_name.get("stddev") and by_name.get("mean"):
    mean = by_name["mean"][0]["real_time"]
    if mean > 0:
      case.cv = by_name["stddev"][0]["real_time"] / mean
      case.cv_source = "_stddev/_mean aggregates"


class Run:
  """Benchmark results of one or more JSON files, keyed by (source, case name)."""

  def __init__(self):
    self.contexts = {}  # source -> context dict
    self.files = {}     # source -> [paths]
    self.cases = {}     # (source, name) -> Case

  def sources(self):
    return sorted(self.contexts)

  def all_cases(self):
    return [self.cases[k] for k in sorted(self.cases)]


def _source_name(context, taken):
  """A stable label for a file's machine: its host name, plus the commit when one host appears
  with two different commits (two runs on one machine are then kept apart)."""
  host = str(context.get("host_name", "unknown-host"))
  commit = str(context.get("attnlab_git_commit", ""))
  if host in taken and str(taken[host].get("attnlab_git_commit", "")) != commit:
    return f"{host}@{commit[:10] or 'unknown'}"
  return host


def load_results(paths, select=None):
  """Reads benchmark JSON files into a Run. `select`: keep only cases whose name contains every
  given token (e.g. ['threads:1'])."""
  run = Run()
  raw = {}  # (source, name) -> (iterations, aggregates, errors)
  for path in paths:
    doc = _read_json(path)
    if "benchmarks" not in doc:
      raise ValueError(f"{path}: no 'benchmarks' array (is this a Google Benchmark JSON?)")
    context = doc.get("context", {})
    source = _source_name(context, run.contexts)
    run.contexts.setdefault(source, context)
    run.files.setdefault(source, []).append(path)
    for e in doc["benchmarks"]:
      name = strip_name(e.get("run_name") or e.get("name", ""))
      if select and not all(tok in name.split("/") for tok in select):
        continue
      its, aggs, errs = raw.setdefault((source, name), ([], [], []))
      if e.get("error_occurred") or e.get("skipped"):
        errs.append(str(e.get("error_message") or e.get("skip_message") or "error"))
      elif e.get("run_type") == "aggregate":
        aggs.append(e)
      else:
        its.append(e)
  for (source, name), (its, aggs, errs) in raw.items():
    case = Case(source, name)
    if errs and not its and not aggs:
      case.error = errs[0]
    else:
      _reduce(case, its, aggs)
    run.cases[(source, name)] = case
  return run


class AccuracyRow:
  def __init__(self, source, r):
    self.source = source
    self.variant = str(r["variant"])
    self.N = int(r["N"])
    self.d = int(r["d"])
    self.mask = str(r["mask"])
    self.max_abs_error = float(r["max_abs_error"])
    self.max_rel_error = float(r.get("max_rel_error", math.nan))
    self.bound_ratio = float(r.get("bound_ratio", math.nan))


def load_accuracy(paths):
  """(contexts by source, [AccuracyRow])."""
  contexts, rows = {}, []
  for path in paths:
    doc = _read_json(path)
    if "results" not in doc:
      raise ValueError(f"{path}: no 'results' array (is this an attnlab accuracy JSON?)")
    context = doc.get("context", {})
    source = str(context.get("host_name", "unknown-host"))
    contexts.setdefault(source, context)
    for r in doc.get("results", []):
      rows.append(AccuracyRow(source, r))
  return contexts, rows
