"""attnlab.results: benchmark and accuracy JSON (see docs/bench-json.md) as Python objects.

The one loader of attnlab's results: the report generator (reports/generate.py, which imports
this file as attnlab_results) and users of the Python package read the same way:

    import attnlab.results as results
    df = results.to_dataframe(["results/host-2026-12-01.json"])  # one row per case (pandas)
    df[df.variant == "flash"].plot(x="N", y="GFLOPS")
    run = results.load_results(paths)   # the validated objects the report is drawn from

Needs nothing but the standard library; to_dataframe and accuracy_dataframe import pandas
(Debian python3-pandas) when called.

Google Benchmark JSON: {"context": {...}, "benchmarks": [...]}. Each benchmark entry is one
repetition ("run_type": "iteration") or an aggregate over repetitions ("run_type": "aggregate",
"aggregate_name": mean|median|stddev|cv). Names are '/'-separated tokens: the first is a variant
name from the registry, `ceiling_sgemm`, `ceiling_matmul_bf16`, `ceiling_stream`, `layer` or
`grad` (the backward pass; in both the second token is the variant), `ceiling_fma` (the FMA
peak, `ceiling_fma/threads:2`) or `ukernel`; tokens without ':' are the scenario, `key:value`
tokens are parameters (`peer_*` first tokens are peers, bench/peers.py, and so is a `peer_*`
second token after `grad`: a peer's backward). Parameters are numbers
but one: `dtype`, the element types of Q, K, V and O (`dtype:bf16` when the four
share one type, `dtype:f32-i8-i8-f32` otherwise; absent = all f32); a micro-kernel's `dtype`
names its input type.

Every file is validated here, once, as it is read: what comes out (Run, Case, AccuracyRow) holds
only well-formed values, and anything else is an InputError whose message is one line naming the
file, and the entry and field at fault where there is one. A benchmark file cut off while it was
being written (the bench was killed) is read up to its last complete entry, with a warning.

Nothing here knows a variant name: variants are whatever first tokens the JSON holds.
"""
import json
import math
import re
import statistics

# First tokens with a fixed meaning in the contract. Every other first token is a variant.
CEILING_SGEMM = "ceiling_sgemm"
CEILING_STREAM = "ceiling_stream"
# The FMA peak on T threads (ceiling_fma/threads:T): what every variant's GFLOPS is a fraction of.
CEILING_FMA = "ceiling_fma"
# The AMX-BF16 peak on T threads (ceiling_amx/threads:T), where the CPU has AMX: what bf16 flash
# on AMX tiles is a fraction of.
CEILING_AMX = "ceiling_amx"
# The VDPBF16PS peak on T threads (ceiling_vdpbf16ps/threads:T), where the CPU has AVX512_BF16:
# what bf16 flash on the pair kernels is a fraction of (half ceiling_fma's rate on Sapphire and
# Emerald Rapids, twice it on Zen 4).
CEILING_VDPBF16PS = "ceiling_vdpbf16ps"
# The VPDPWSSD peak on T threads (ceiling_vpdpwssd/threads:T), where the CPU has AVX512_VNNI:
# what int8 K/V decode's integer products are a fraction of (operations counted as FLOPs).
CEILING_VPDPWSSD = "ceiling_vpdpwssd"
# The reduced-precision peaks, each (family, what it bounds, ISA), in the order of the report's
# columns. The ISA is also the path label of the micro-kernels that run on it (ukernels::IsaName).
ISA_CEILINGS = ((CEILING_VDPBF16PS, "bf16 on VDPBF16PS", "AVX512_BF16"),
                (CEILING_AMX, "bf16 on AMX tiles", "AMX_BF16"),
                (CEILING_VPDPWSSD, "int8 decode on VPDPWSSD", "AVX512_VNNI"))
# oneDNN bf16 matmul of the two products of a bf16 prefill case (same tokens as that case).
CEILING_MATMUL_BF16 = "ceiling_matmul_bf16"
# A decode or paged decode case's K and V read in flash's order with nothing computed
# (ceiling_read/decode/... and ceiling_read/paged/..., same tokens as that case): what the memory
# allows that order of reads.
CEILING_READ = "ceiling_read"
LAYER = "layer"
# The backward pass (dQ, dK, dV) of a variant: grad/<variant>/N:.../d:.../causal:.../threads:...,
# the same tokens after the variant as the forward case of that shape.
GRAD = "grad"
# Families whose second token is the variant (Case.variant); the variant's own cases (forward
# attention) have the variant as their first token (Case.is_variant).
VARIANT_FAMILIES = (LAYER, GRAD)
# Micro-kernel cases: ukernel/<entry>/<shape> (the entry is the case's scenario). Files from
# before ceiling_fma also hold ukernel/fma_peak/threads:1, the one-thread FMA peak.
UKERNEL = "ukernel"
FMA_PEAK = "fma_peak"
FIXED_FAMILIES = (CEILING_SGEMM, CEILING_MATMUL_BF16, CEILING_STREAM, CEILING_FMA, CEILING_AMX,
                  CEILING_VDPBF16PS, CEILING_VPDPWSSD, CEILING_READ, LAYER, GRAD, UKERNEL)
# Peers: another library timed on the sweep's shapes by bench/peers.py (peer_torch_plain,
# peer_torch_sdpa), what a user would pick instead of attnlab. Like a ceiling, a peer is not a
# variant: its first token starts with PEER_PREFIX. Its file's context carries PEER_CONTEXT_KEY
# (the peer's library, or why it was absent) and may hold no benchmarks (the peer is not
# installed); its cases join the bench file of the same host. A peer's backward pass is
# grad/<peer>/<the same tokens> (grad/peer_torch_plain/N:4096/d:64/causal:1/threads:2), named as
# attnlab's grad/<variant>/... so the two sit side by side; it is the peer's case (Case.peer),
# not a variant's.
PEER_PREFIX = "peer_"
PEER_CONTEXT_KEY = "attnlab_peer"


def is_peer(family):
  """Whether a first token names a peer (bench/peers.py) rather than a variant."""
  return family.startswith(PEER_PREFIX)


# What became of a case (Case.status). The bench marks a case it did not run with an error
# message: "over budget: ..." (refused before allocating), "interrupted: ..." (the run was
# stopped before the case), "not run: Unimplemented: dtype: ... is not supported by variant
# ..." (the variant does not take the case's element types; the accuracy JSON writes it
# without "Unimplemented: "), anything else ("failed check: ...", "not run: <status>") failed.
OK = "ok"
OVER_BUDGET = "over budget"
NOT_RUN = "not run"
UNSUPPORTED = "unsupported"
FAILED = "failed"
_STATUS_PREFIXES = (("over budget: ", OVER_BUDGET), ("interrupted: ", NOT_RUN))
_UNSUPPORTED = re.compile(r"not run: (Unimplemented: )?dtype: .* is not supported by variant ")

# Element types (kernels/dtype.h), in the order a report lists them; F32 is a name without a
# dtype token.
DTYPE_NAMES = ("f32", "bf16", "f16", "i8")
F32 = "f32"

# A context key every attnlab_bench (and accuracy) run writes; a Google Benchmark JSON without it
# comes from another program.
ATTNLAB_CONTEXT_KEY = "attnlab_git_commit"

# Tokens Google Benchmark appends to a name (UseRealTime etc.); not part of the case.
_GB_SUFFIX_TOKENS = ("real_time", "process_time", "manual_time")
_GB_SUFFIX_PREFIXES = ("iterations:", "repeats:", "min_time:", "min_warmup_time:")

# Keys of a Google Benchmark entry that are not user counters.
_STANDARD_KEYS = {
    "name", "family_index", "per_family_instance_index", "run_name", "run_type", "repetitions",
    "repetition_index", "threads", "iterations", "real_time", "cpu_time", "time_unit",
    "aggregate_name", "aggregate_unit", "error_occurred", "error_message", "label", "big_o",
    "rms", "skipped", "skip_message"}

# The counters of the contract (docs/bench-json.md): where present they must be numbers. Other
# keys are user counters when they hold numbers and are ignored otherwise (a newer Google
# Benchmark may add fields).
_CONTRACT_COUNTERS = {
    "GFLOPS", "GFLOPS_dense", "workspace_bytes", "workspace_declared_bytes",
    "peak_rss_delta_bytes", "bytes_min", "GBps", "attention_share", "ceiling_fraction", "bytes",
    "d_model", "B", "H", "Hkv", "Lq", "Lk", "d", "causal", "Gelems_per_s", "peak_fraction",
    "fma_peak_gflops", "core_ghz"}

_TIME_UNIT_S = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
_CENTRAL_AGGREGATES = ("median", "mean")  # preferred first
_MEASURED = ("iteration",) + _CENTRAL_AGGREGATES  # entries whose time and counters are read

_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
# Name parameters that are sizes or counts (docs/bench-json.md): positive integers.
_SIZE_PARAMS = {"N", "Lq", "Lk", "d", "H", "Hkv", "threads", "w", "bytes"}
# The parameters that are not numbers: element types, and the library switches a case ran
# under (attnlab_bench --paths; docs/bench-json.md).
DTYPE_PARAM = "dtype"
PATH_PARAM = "path"
PATH_NAMES = ("default", "portable", "no_amx", "vdpbf16ps")
# A decode micro-kernel reading its operand from memory (ukernel/.../from:memory/...).
FROM_PARAM = "from"
FROM_NAMES = ("memory",)


class InputError(ValueError):
  """A result file the report cannot use. The message is one line: the file, then (where one is
  at fault) the entry and the field, then the problem."""


# ----------------------------------------------------------------------------- names
def strip_name(name):
  """Case name without the tokens Google Benchmark appends (/real_time, /repeats:3, ...)."""
  return "/".join(t for t in name.split("/")
                  if t not in _GB_SUFFIX_TOKENS and not t.startswith(_GB_SUFFIX_PREFIXES))


def parse_name(name):
  """(family, variant, scenario, params) of a stripped case name. A peer's case has no variant
  (peer_of names its peer)."""
  tokens = name.split("/")
  family = tokens[0]
  rest = tokens[1:]
  variant = None
  if family in VARIANT_FAMILIES and rest:
    variant, rest = (None if is_peer(rest[0]) else rest[0]), rest[1:]
  elif family not in FIXED_FAMILIES and not is_peer(family):
    variant = family
  scenario = "/".join(t for t in rest if ":" not in t)
  params = {}
  for t in rest:
    if ":" in t:
      k, v = t.split(":", 1)
      params[k] = v
  return family, variant, scenario, params


def peer_of(name):
  """The peer of a stripped case name: its first token when that is a peer's
  (`peer_torch_sdpa/...`), its second after a variant family (`grad/peer_torch_plain/...`),
  else None."""
  tokens = name.split("/")
  if is_peer(tokens[0]):
    return tokens[0]
  if tokens[0] in VARIANT_FAMILIES and len(tokens) > 1 and is_peer(tokens[1]):
    return tokens[1]
  return None


def parse_dtype(text):
  """The (Q, K, V, O) element types of a dtype token's value: 'bf16' -> ('bf16',) * 4,
  'f32-i8-i8-f32' -> ('f32', 'i8', 'i8', 'f32'). ValueError for anything else."""
  parts = text.split("-")
  if len(parts) == 1:
    parts = parts * 4
  if len(parts) != 4 or not all(p in DTYPE_NAMES for p in parts):
    raise ValueError(text)
  return tuple(parts)


def dtype_label(dtypes):
  """The token value of (Q, K, V, O) types, as the bench writes it: 'f32' for all f32 (a name
  without the token), 'bf16' for one shared type, 'f32-i8-i8-f32' otherwise."""
  return dtypes[0] if len(set(dtypes)) == 1 else "-".join(dtypes)


def dtype_sort_key(label):
  """f32 first, then one shared type (bf16, f16), then mixed types in Q, K, V, O order."""
  types = parse_dtype(label)
  return (len(set(types)) > 1, tuple(DTYPE_NAMES.index(t) for t in types))


def param_value(text):
  """'4096' -> 4096, '0.5' -> 0.5, anything else stays a string."""
  try:
    return int(text)
  except ValueError:
    try:
      return float(text)
    except ValueError:
      return text


def _check_name(where, name):
  """InputError unless `name` (stripped) reads as an attnlab_bench case: a family that is an
  identifier (variant names are C identifiers: the registry declares `<name>_variant`), a
  variant (or peer) token after `layer` and `grad`, and at least one key:value parameter, each
  a number, once; the sizes a positive integer; a decode case has its Lk."""
  family, _, scenario, _ = parse_name(name)
  tokens = name.split("/")
  params = [t.split(":", 1) for t in tokens[1:] if ":" in t]
  names_variant = family in VARIANT_FAMILIES
  if not (_IDENTIFIER.fullmatch(family) and params
          and (not names_variant or _IDENTIFIER.fullmatch(tokens[1]))):
    raise InputError(f"{where}: not an attnlab_bench case name (want <variant>/<key>:<value>/..."
                     ", e.g. flash/N:4096/d:64/causal:1/threads:2; docs/bench-json.md)")
  seen = set()
  for k, v in params:
    value = param_value(v)
    if k == DTYPE_PARAM:
      try:
        parse_dtype(v)
      except ValueError:
        raise InputError(f"{where}: parameter {k}:{v} is not element types (want dtype:<t> or "
                         f"dtype:<q>-<k>-<v>-<o>, each one of {', '.join(DTYPE_NAMES)})"
                         ) from None
    elif k == PATH_PARAM:
      if v not in PATH_NAMES:
        raise InputError(f"{where}: parameter {k}:{v} is not a code path (want one of "
                         f"{', '.join(PATH_NAMES)})")
    elif k == FROM_PARAM:
      if v not in FROM_NAMES:
        raise InputError(f"{where}: parameter {k}:{v} is not a data source (want one of "
                         f"{', '.join(FROM_NAMES)})")
    elif isinstance(value, str):
      raise InputError(f"{where}: parameter {k}:{v} is not a number")
    if k in _SIZE_PARAMS and not _is_positive_int(value):
      raise InputError(f"{where}: parameter {k}:{v} is not a positive integer")
    if k in seen:
      raise InputError(f"{where}: parameter {k} appears twice")
    seen.add(k)
  if scenario == "decode" and "Lk" not in seen:
    raise InputError(f"{where}: a decode case without Lk:<keys>")


def status_of(error):
  """OK, OVER_BUDGET, NOT_RUN, UNSUPPORTED or FAILED for an error message (None: the case
  ran)."""
  if error is None:
    return OK
  if _UNSUPPORTED.match(error):
    return UNSUPPORTED
  return next((s for prefix, s in _STATUS_PREFIXES if error.startswith(prefix)), FAILED)


# ----------------------------------------------------------------------------- values
def _describe(value):
  """A JSON value as an error message shows it: '"12" (a string)', 'null', 'NaN', 'a list'."""
  if value is None:
    return "null"
  if isinstance(value, bool):
    return f"{str(value).lower()} (a boolean)"
  if isinstance(value, str):
    text = value if len(value) <= 40 else value[:37] + "..."
    return f"{json.dumps(text)} (a string)"
  if isinstance(value, int):
    return str(value)
  if isinstance(value, float):
    return "NaN" if math.isnan(value) else f"{value:g}"
  return "a list" if isinstance(value, list) else "an object"


def _is_number(value):
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_bool(value):
  return isinstance(value, bool)


def _is_string(value):
  return isinstance(value, str)


def _is_positive_int(value):
  return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _field(where, obj, key, want, ok, required=True):
  """obj[key] when ok(value); InputError naming `where` and `key` when it is absent (and
  required) or not `want`. Absent and not required: None."""
  if key not in obj:
    if required:
      raise InputError(f"{where}: no \"{key}\"")
    return None
  value = obj[key]
  if not ok(value):
    raise InputError(f"{where}: {key} is {_describe(value)}, want {want}")
  return value


def _number(where, obj, key, required=True):
  value = _field(where, obj, key, "a number", _is_number, required)
  return None if value is None else float(value)


def _string(where, obj, key, required=True):
  return _field(where, obj, key, "a string", _is_string, required)


def _list_of_objects(value):
  return isinstance(value, list) and all(isinstance(x, dict) for x in value)


# ----------------------------------------------------------------------------- files
_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace
# What a file cut off mid-write can hold after the last point the decoder understood: nothing,
# or the start of one number, literal (true, NaN, -Infinity) or \u escape.
_CUT_TAIL = re.compile(r"[\w.+\\-]*")


def _read_text(path, want):
  """The file's text. InputError when it is missing, not a regular file, unreadable, empty or
  binary. A multi-byte character cut off at the very end (the writer was killed) is dropped."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except IsADirectoryError:
    raise InputError(f"{path}: is a directory, want {want}") from None
  except FileNotFoundError:
    raise InputError(f"{path}: no such file") from None
  except OSError as e:
    raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    if e.reason != "unexpected end of data":
      raise InputError(f"{path}: not a text file (byte 0x{data[e.start]:02x} at offset "
                       f"{e.start} is not UTF-8), want {want}") from None
    text = data[:e.start].decode("utf-8-sig")
  if "\x00" in text:
    raise InputError(f"{path}: not a text file (a NUL byte at offset {text.index(chr(0))}), "
                     f"want {want}")
  if not text.strip():
    raise InputError(f"{path}: empty file ({len(data)} bytes), want {want}")
  return text


def _skip_space(text, pos):
  return _SPACE.match(text, pos).end()


def _cut_off(text, e):
  """Whether decoding error `e` is `text` stopping early (its writer was killed) rather than
  malformed JSON: the decoder ran out of text inside a string, or nothing but the start of one
  number or literal follows the point where it stopped."""
  if e.msg == "Extra data":
    return False
  return (e.msg.startswith("Unterminated string")
          or _CUT_TAIL.fullmatch(text[e.pos:].rstrip()) is not None)


def _complete_part(text, array_key):
  """(object, entries) of a JSON object whose text stops early: every member whose value is
  complete and, where the text stops inside the `array_key` array, that array's complete
  entries; entries = None when the text stops before the array starts. `text` must be a
  prefix of valid JSON (see _cut_off): each value is decoded whole by json's own decoder."""
  doc, entries = {}, None
  pos = _skip_space(text, 0)
  if not text.startswith("{", pos):
    return doc, entries
  pos += 1
  while pos < len(text):
    try:
      key, pos = _DECODER.raw_decode(text, _skip_space(text, pos))
      pos = _skip_space(text, _skip_space(text, pos) + 1)  # past ':'
      if key == array_key and text.startswith("[", pos):
        entries, pos = _complete_entries(text, pos + 1)
        doc[key] = entries
        if pos is None:
          break
      else:
        doc[key], pos = _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError:  # the text stops inside this member
      break
    pos = _skip_space(text, pos) + 1  # past ','
  return doc, entries


def _complete_entries(text, pos):
  """(the complete values of the array whose '[' ends before `pos`, the position after its ']'
  or None where the text stops inside it)."""
  values = []
  while True:
    pos = _skip_space(text, pos)
    if text.startswith("]", pos):
      return values, pos + 1
    try:
      value, pos = _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError:
      return values, None
    values.append(value)
    pos = _skip_space(text, pos)
    if not text.startswith(",", pos):
      return values, (pos + 1 if text.startswith("]", pos) else None)
    pos += 1


def _read_document(path, array_key, want, allow_empty=False):
  """(the JSON object of `path`, whether the file was cut off). A cut-off file gives what it
  completely holds (_complete_part); malformed JSON is an InputError, and so is an empty
  `array_key` array unless `allow_empty` (the caller then decides)."""
  text = _read_text(path, want)
  try:
    doc, cut = json.loads(text), False
  except json.JSONDecodeError as e:
    if not _cut_off(text, e):
      raise InputError(f"{path}: not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
                       ) from None
    doc, entries = _complete_part(text, array_key)
    cut = True
    if entries is None:
      raise InputError(f"{path}: truncated before its \"{array_key}\" array (the run was "
                       "interrupted?): no results")
    if not entries:
      raise InputError(f"{path}: truncated before its first complete entry of "
                       f"\"{array_key}\" (the run was interrupted?): no results")
  if not isinstance(doc, dict):
    raise InputError(f"{path}: the top level is {_describe(doc)}, want an object "
                     f"{{\"context\": {{...}}, \"{array_key}\": [...]}}")
  if array_key not in doc:
    raise InputError(f"{path}: no \"{array_key}\" array: not {want}")
  if not isinstance(doc[array_key], list):
    raise InputError(f"{path}: \"{array_key}\" is {_describe(doc[array_key])}, want a list")
  if not doc[array_key] and not allow_empty:
    raise InputError(_empty_message(path, array_key))
  return doc, cut


def _empty_message(path, array_key):
  return f"{path}: \"{array_key}\" is empty: no results"


# Context keys the report reads, and what each must be.
_CONTEXT_FIELDS = (
    ("host_name", "a string", _is_string),
    ("date", "a string", _is_string),
    (ATTNLAB_CONTEXT_KEY, "a string", _is_string),
    ("num_cpus", "a number", _is_number),
    ("attnlab_memory_budget_bytes", "a string or a number",
     lambda v: _is_string(v) or _is_number(v)),
    ("load_avg", "a list of numbers", lambda v: isinstance(v, list) and all(map(_is_number, v))),
    ("caches", "a list of objects with numeric level, size and num_sharing",
     lambda v: _list_of_objects(v) and all(_is_number(c.get(k, 0)) for c in v
                                           for k in ("level", "size", "num_sharing"))),
)


def _read_context(path, doc, producer):
  """The file's context, checked: it must come from attnlab (ATTNLAB_CONTEXT_KEY) and the keys
  the report reads must have the right types."""
  context = _field(path, doc, "context", "an object", lambda v: isinstance(v, dict),
                   required=False)
  if context is None or (ATTNLAB_CONTEXT_KEY not in context
                         and PEER_CONTEXT_KEY not in context):
    raise InputError(f"{path}: not {producer} output: its \"context\" has no "
                     f"{ATTNLAB_CONTEXT_KEY} (attnlab_bench writes attnlab_* context keys; "
                     "docs/bench-json.md)")
  for key, want, ok in _CONTEXT_FIELDS:
    _field(f"{path}: context", context, key, want, ok, required=False)
  return context


# ----------------------------------------------------------------------------- benchmark entries
class _Entry:
  """One validated benchmark entry. kind: "iteration", an aggregate name, or "error"."""

  def __init__(self, name, kind, value=None, counters=None, repetitions=0, error=None,
               path=None):
    self.name = name
    self.kind = kind
    self.value = value        # seconds per call; the plain ratio for a "cv" aggregate
    self.counters = counters or {}
    self.repetitions = repetitions
    self.error = error
    self.path = path          # the code path that ran (label "... path=<path>"), or None


# The label of a case that ran ends with the code path (docs/bench-json.md): "path=AVX3",
# "Q=bf16 K=bf16 V=bf16 O=bf16 path=AVX3+AVX512_BF16", "path=portable C++".
_PATH_IN_LABEL = re.compile(r"(?:^| )path=(.+)$")


def path_of(label):
  """The path a bench label names, or None (an older file, or a ceiling)."""
  m = _PATH_IN_LABEL.search(label or "")
  return m.group(1) if m else None


def _entry_name(where, e):
  """The stripped case name of entry `e` (run_name, else name less an aggregate's suffix)."""
  name = _string(where, e, "run_name", required=False)
  if not name:
    name = _string(where, e, "name")
    agg = e.get("aggregate_name")
    if isinstance(agg, str) and name.endswith("_" + agg):
      name = name[:-len(agg) - 1]
  return strip_name(name)


def _counters(where, e):
  """The entry's user counters: every number outside the standard keys. A contract counter
  must be a number, and every counter a finite one."""
  out = {}
  for k, v in e.items():
    if k in _STANDARD_KEYS or not (_is_number(v) or k in _CONTRACT_COUNTERS):
      continue
    if not _is_number(v) or not math.isfinite(v):
      raise InputError(f"{where}: {k} is {_describe(v)}, want a finite number")
    out[k] = float(v)
  return out


def _required_counter(family, scenario):
  """The counter every measured entry of this kind carries (what its report section shows)."""
  if family in (CEILING_STREAM, CEILING_READ) or scenario == "decode":
    return "GBps"
  if family == UKERNEL:
    return "GFLOPS" if scenario == FMA_PEAK else "Gelems_per_s"
  return "attention_share" if family == LAYER else "GFLOPS"


def _time(where, e, positive):
  """real_time in seconds (time_unit checked): > 0 for a measurement, >= 0 for a spread."""
  value = _number(where, e, "real_time")
  unit = _string(where, e, "time_unit")
  if unit not in _TIME_UNIT_S:
    raise InputError(f"{where}: time_unit is {_describe(unit)}, want one of "
                     + ", ".join(_TIME_UNIT_S))
  if math.isnan(value) or math.isinf(value) or value < 0 or (positive and value == 0):
    raise InputError(f"{where}: real_time is {_describe(value)}"
                     + (": a time of 0 is not a measurement" if value == 0 else
                        ", want a positive finite time"))
  return value * _TIME_UNIT_S[unit]


def _read_entry(path, index, e):
  """One entry of "benchmarks", validated into an _Entry."""
  where = f"{path}: benchmarks[{index}]"
  if not isinstance(e, dict):
    raise InputError(f"{where} is {_describe(e)}, want an object")
  name = _entry_name(where, e)
  where += f" '{name}'"
  _check_name(where, name)
  if (_field(where, e, "error_occurred", "true or false", _is_bool, required=False)
      or _field(where, e, "skipped", "true or false", _is_bool, required=False)):
    message = (_string(where, e, "error_message", required=False)
               or _string(where, e, "skip_message", required=False) or "error")
    return _Entry(name, "error", error=message)
  run_type = _field(where, e, "run_type", '"iteration" or "aggregate"',
                    lambda v: v in ("iteration", "aggregate"), required=False) or "iteration"
  kind = (run_type if run_type == "iteration"
          else _string(where, e, "aggregate_name"))
  repetitions = _field(where, e, "repetitions", "a positive integer", _is_positive_int,
                       required=False) or 1
  if kind == "cv":  # a ratio: Google Benchmark writes it without the time unit
    value = _number(where, e, "real_time")
    if not (math.isfinite(value) and value >= 0):
      raise InputError(f"{where}: real_time is {_describe(value)}, want a finite ratio >= 0")
  else:
    value = _time(where, e, positive=kind != "stddev")
  if kind not in _MEASURED:  # a spread: its counters (spreads too, NaN where 0/0) are not read
    return _Entry(name, kind, value, repetitions=repetitions)
  counters = _counters(where, e)
  path = path_of(_string(where, e, "label", required=False))
  family, _, scenario, _ = parse_name(name)
  key = _required_counter(family, scenario)
  if key not in counters:
    raise InputError(f"{where}: no \"{key}\" counter (a measured {family} "
                     f"{scenario + ' ' if scenario else ''}entry carries one; "
                     "docs/bench-json.md)")
  return _Entry(name, kind, value, counters, repetitions, path=path)


# ----------------------------------------------------------------------------- cases
class Case:
  """One benchmark case on one source (host), reduced over its repetitions."""

  def __init__(self, source, name):
    self.source = source
    self.name = name
    self.family, self.variant, self.scenario, raw = parse_name(name)
    self.peer = peer_of(name)  # peer_torch_plain for peer_torch_plain/... and grad/peer_.../...
    self.params = {k: v if k in (DTYPE_PARAM, PATH_PARAM, FROM_PARAM) else param_value(v)
                   for k, v in raw.items()}
    # Element types of Q, K, V, O ('f32',) * 4 without a dtype token; `dtype` their label
    # ('f32', 'bf16', 'f32-i8-i8-f32').
    self.dtypes = parse_dtype(raw.get(DTYPE_PARAM, F32))
    self.dtype = dtype_label(self.dtypes)
    self.time_s = None     # median real time per call, seconds (> 0 when the case ran)
    self.counters = {}     # median of each counter over repetitions
    self.samples = []      # each repetition's counters (iteration entries), in file order
    self.cv = None         # coefficient of variation of real time over repetitions (or None)
    self.cv_source = None  # where cv came from: "repetitions (n=3)" / "_cv aggregate"
    self.repetitions = 0
    self.error = None      # error_message when the case was not run
    self.path = None       # the code path that ran ("AVX3+AVX512_BF16"; " / "-joined if several)

  def counter(self, key):
    return self.counters.get(key)

  @property
  def is_variant(self):
    """Whether this is a variant's own (forward) case, `flash/...`: not a ceiling, peer,
    micro-kernel, layer or backward pass."""
    return self.variant is not None and self.family == self.variant

  @property
  def series(self):
    """What a per-variant grouping calls the case: its variant, `grad/flash` or `layer/flash`
    for the families that name one (kept apart from the variant's forward cases), a peer's
    backward `grad/peer_torch_plain`, else its family (`ceiling_sgemm`, `peer_torch_sdpa`)."""
    if self.family in VARIANT_FAMILIES and (self.variant or self.peer):
      return f"{self.family}/{self.variant or self.peer}"
    return self.variant or self.family

  def best(self, key):
    """The largest value of counter `key` over the case's repetitions (the median counter when
    the file holds only aggregates): a ceiling's least disturbed run."""
    values = [s[key] for s in self.samples if key in s]
    return max(values) if values else self.counters.get(key)

  def key_without(self, *param_names):
    """The case name with the given parameter tokens removed (for matching across runs)."""
    return "/".join(t for t in self.name.split("/") if t.split(":", 1)[0] not in param_names
                    or ":" not in t)

  @property
  def ok(self):
    return self.error is None

  @property
  def status(self):
    """OK, OVER_BUDGET, NOT_RUN (the run was interrupted before it), UNSUPPORTED (the variant
    does not take the element types) or FAILED."""
    return status_of(self.error)


def _median_counters(entries):
  keys = sorted({k for e in entries for k in e.counters})
  return {k: statistics.median(e.counters[k] for e in entries if k in e.counters) for k in keys}


def _reduce(case, entries):
  """Fills case from its entries, of one run or of several (a resumed run appends to the
  file): the median over every repetition entry when there is one; else the median of the
  central aggregates; else, when nothing ran, the error (a real outcome before an
  interruption)."""
  its = [e for e in entries if e.kind == "iteration"]
  by_kind = {}
  for e in entries:
    by_kind.setdefault(e.kind, []).append(e)
  central = next((by_kind[k] for k in _CENTRAL_AGGREGATES if k in by_kind), [])
  measured = its or central
  if not measured:
    errors = [e.error for e in by_kind.get("error", [])]
    if not errors:
      raise InputError(f"case '{case.name}' has only {', '.join(sorted(by_kind))} aggregates: "
                       "no time")
    case.error = next((m for m in errors if status_of(m) != NOT_RUN), errors[0])
    return
  case.time_s = statistics.median(e.value for e in measured)
  case.counters = _median_counters(measured)
  case.samples = [e.counters for e in its]
  # Several only where a resumed file mixes runs that took different paths: say so.
  paths = sorted({e.path for e in measured if e.path})
  case.path = " / ".join(paths) if paths else None
  case.repetitions = len(its) if its else sum(e.repetitions for e in central)
  times = [e.value for e in its]
  if len(times) >= 2:
    case.cv = statistics.stdev(times) / statistics.mean(times)
    case.cv_source = f"repetitions (n={len(times)})"
  elif not its and "cv" in by_kind:
    case.cv = max(e.value for e in by_kind["cv"])
    case.cv_source = "_cv aggregate"
  elif not its and "stddev" in by_kind and "mean" in by_kind:
    case.cv = max(e.value for e in by_kind["stddev"]) / min(e.value for e in by_kind["mean"])
    case.cv_source = "_stddev/_mean aggregates"
  # A ceiling that timed only a leading share of the problem's identical sgemm blocks
  # (bench: `ceiling_fraction` < 1) reports its time scaled to the whole problem at the
  # measured rate, so its time column compares with the variants'. GFLOPS needs no scaling.
  fraction = case.counters.get("ceiling_fraction")
  if fraction and 0 < fraction < 1:
    case.time_s /= fraction


class Run:
  """Benchmark results of one or more JSON files, keyed by (source, case name)."""

  def __init__(self):
    self.contexts = {}  # source -> context dict
    self.files = {}     # source -> [paths]
    self.cases = {}     # (source, name) -> Case
    self.warnings = []  # one line each, e.g. a file cut off mid-write
    # source -> [context] of its peer files (bench/peers.py): the peer's library and version,
    # what it skipped, or why it is absent ("torch not installed"). A source with only peer
    # files also has its first one in `contexts`.
    self.peer_contexts = {}

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


_BENCH_JSON = "Google Benchmark JSON from attnlab_bench (--benchmark_out_format=json)"


def is_peer_context(context):
  """Whether a benchmark file's context is bench/peers.py's."""
  return PEER_CONTEXT_KEY in context


def read_benchmark_file(path):
  """(context, [_Entry], warning or None) of one attnlab_bench (or bench/peers.py) JSON file,
  validated. Only a peer file may hold no benchmarks (its peer is not installed)."""
  doc, cut = _read_document(path, "benchmarks", _BENCH_JSON, allow_empty=True)
  context = _read_context(path, doc, "attnlab_bench")
  if not doc["benchmarks"] and not is_peer_context(context):
    raise InputError(_empty_message(path, "benchmarks"))
  entries = [_read_entry(path, i, e) for i, e in enumerate(doc["benchmarks"])]
  warning = None
  if cut:
    warning = (f"{path} is truncated (the run was interrupted?): read {len(entries)} complete "
               f"entries ({len({e.name for e in entries})} cases)")
  return context, entries, warning


def load_results(paths, select=None):
  """Reads benchmark JSON files into a Run. `select`: keep only cases whose name contains every
  given token (e.g. ['threads:1']). InputError for anything malformed, or when nothing is
  left."""
  run = Run()
  grouped = {}  # (source, name) -> [_Entry]
  read = [(path,) + read_benchmark_file(path) for path in paths]
  # Peer files last: each joins the bench file of its host, whatever that file's commit.
  read.sort(key=lambda r: is_peer_context(r[1]))
  for path, context, entries, warning in read:
    if warning:
      run.warnings.append(warning)
    if is_peer_context(context):
      host = str(context.get("host_name", "unknown-host"))
      source = next((s for s, c in run.contexts.items()
                     if str(c.get("host_name", "unknown-host")) == host), host)
      run.peer_contexts.setdefault(source, []).append(context)
    else:
      source = _source_name(context, run.contexts)
    run.contexts.setdefault(source, context)
    run.files.setdefault(source, []).append(path)
    for e in entries:
      if select and not all(tok in e.name.split("/") for tok in select):
        continue
      grouped.setdefault((source, e.name), []).append(e)
  if not grouped:
    raise InputError(f"{', '.join(paths)}: " + (f"no case name has the token(s) {' '.join(select)}"
                                                 if select else "no benchmark cases"))
  for (source, name), entries in grouped.items():
    case = Case(source, name)
    try:
      _reduce(case, entries)
    except InputError as e:
      raise InputError(f"{', '.join(run.files[source])}: {e}") from None
    run.cases[(source, name)] = case
  return run


# ----------------------------------------------------------------------------- accuracy
class AccuracyRow:
  """One validated accuracy result. A non-finite error (the bench's JSON writes it as null) is
  inf; `error` is set, and the measurements are None, for a case that did not run. `dtype`:
  the element types' label ('f32' when the result has no "dtype"). `backward`: the result is the
  gradients dQ, dK, dV of the backward pass ("pass": "backward"), not O."""

  def __init__(self, source, variant, n, d, mask, error=None, max_abs_error=None,
               max_rel_error=math.nan, bound_ratio=math.nan, dtype=F32, backward=False):
    self.source = source
    self.backward = backward
    self.variant = variant
    self.N = n
    self.d = d
    self.mask = mask
    self.dtype = dtype
    self.error = error
    self.max_abs_error = max_abs_error
    self.max_rel_error = max_rel_error
    self.bound_ratio = bound_ratio

  @property
  def status(self):
    return status_of(self.error)


def _error_value(where, r, key, required=True):
  """An accuracy measurement: a number >= 0, or null (non-finite: inf); NaN when absent."""
  value = _field(where, r, key, "a number >= 0 or null",
                 lambda v: v is None or (_is_number(v) and not v < 0), required)
  if key not in r:
    return math.nan
  return math.inf if value is None else float(value)


def _read_accuracy_row(path, index, r, source):
  where = f"{path}: results[{index}]"
  if not isinstance(r, dict):
    raise InputError(f"{where} is {_describe(r)}, want an object")
  if isinstance(r.get("variant"), str):
    where += f" '{r['variant']}'"
  variant = _field(where, r, "variant", "a variant name",
                   lambda v: _is_string(v) and _IDENTIFIER.fullmatch(v))
  n = _field(where, r, "N", "a positive integer", _is_positive_int)
  d = _field(where, r, "d", "a positive integer", _is_positive_int)
  mask = _string(where, r, "mask")
  dtype = _field(where, r, "dtype", "element types (bf16, f32-i8-i8-f32, ...)", _is_dtype,
                 required=False)
  dtype = dtype_label(parse_dtype(dtype)) if dtype is not None else F32
  passes = ("forward", "backward")
  backward = _field(where, r, "pass", "forward or backward", lambda v: v in passes,
                    required=False) == "backward"
  error = _string(where, r, "error", required=False)
  if error is not None:
    return AccuracyRow(source, variant, n, d, mask, error=error, dtype=dtype, backward=backward)
  return AccuracyRow(source, variant, n, d, mask, max_abs_error=_error_value(
      where, r, "max_abs_error"), max_rel_error=_error_value(
          where, r, "max_rel_error", required=False), bound_ratio=_error_value(
              where, r, "bound_ratio", required=False), dtype=dtype, backward=backward)


def _is_dtype(value):
  try:
    return _is_string(value) and parse_dtype(value) is not None
  except ValueError:
    return False


_ACCURACY_JSON = "an attnlab accuracy JSON (attnlab_bench --accuracy --accuracy_out FILE)"


class Accuracy:
  """Accuracy results of one or more JSON files."""

  def __init__(self):
    self.contexts = {}  # source -> context dict
    self.rows = []      # [AccuracyRow]
    self.warnings = []  # one line each, e.g. a file cut off mid-write


def load_accuracy(paths):
  """An Accuracy of the files, every one validated (InputError for anything malformed)."""
  acc = Accuracy()
  for path in paths:
    doc, cut = _read_document(path, "results", _ACCURACY_JSON)
    context = _read_context(path, doc, "attnlab_bench --accuracy")
    source = str(context.get("host_name", "unknown-host"))
    acc.contexts.setdefault(source, context)
    acc.rows += [_read_accuracy_row(path, i, r, source) for i, r in enumerate(doc["results"])]
    if cut:
      acc.warnings.append(f"{path} is truncated (the run was interrupted?): read "
                          f"{len(doc['results'])} complete results")
  return acc


# ----------------------------------------------------------------------------- tables
def _paths(paths):
  """A list of paths from one path or an iterable of them."""
  if isinstance(paths, (str, bytes)) or hasattr(paths, "__fspath__"):
    return [str(paths)]
  return [str(p) for p in paths]


# The columns every case record has, in order; its parameters (N, d, causal, threads, ...) and
# counters (GFLOPS, bytes_per_second, ...) follow, one column each.
CASE_COLUMNS = ("source", "name", "series", "family", "variant", "peer", "scenario", "dtype",
                "status", "time_s", "cv", "repetitions", "path", "error")


def records(paths_or_run, select=None):
  """One dict per case (CASE_COLUMNS, then each parameter and each median counter by name) of a
  Run or of the benchmark JSON files it is read from (one path or several; `select` as in
  load_results). Parameters and counters that share a name keep the parameter's value under
  its name and the counter's under 'counter:NAME'."""
  run = paths_or_run if isinstance(paths_or_run, Run) else load_results(_paths(paths_or_run),
                                                                         select)
  out = []
  for case in run.all_cases():
    row = {"source": case.source, "name": case.name, "series": case.series,
           "family": case.family, "variant": case.variant, "peer": case.peer,
           "scenario": case.scenario, "dtype": case.dtype, "status": case.status,
           "time_s": case.time_s, "cv": case.cv, "repetitions": case.repetitions,
           "path": case.path, "error": case.error}
    row.update(case.params)
    for key, value in case.counters.items():
      row[f"counter:{key}" if key in row else key] = value
    out.append(row)
  return out


def to_dataframe(paths_or_run, select=None):
  """A pandas DataFrame of records(): one row per case, the counters as columns (GFLOPS,
  bytes_per_second, fraction_of_fma, ... as the bench wrote them; NaN where a case has none).
  Needs pandas (Debian python3-pandas)."""
  import pandas as pd  # only here: the rest of the module needs nothing installed
  rows = records(paths_or_run, select)
  extra = sorted({k for r in rows for k in r} - set(CASE_COLUMNS))
  return pd.DataFrame(rows, columns=list(CASE_COLUMNS) + extra)


ACCURACY_COLUMNS = ("source", "variant", "N", "d", "mask", "dtype", "backward", "status",
                    "max_abs_error", "max_rel_error", "bound_ratio", "error")


def accuracy_dataframe(paths_or_accuracy):
  """A pandas DataFrame of accuracy results (attnlab_bench --accuracy JSON, one path or
  several, or an Accuracy): one row per result, ACCURACY_COLUMNS."""
  import pandas as pd
  acc = (paths_or_accuracy if isinstance(paths_or_accuracy, Accuracy)
         else load_accuracy(_paths(paths_or_accuracy)))
  return pd.DataFrame([{c: getattr(r, c) for c in ACCURACY_COLUMNS} for r in acc.rows],
                      columns=list(ACCURACY_COLUMNS))
