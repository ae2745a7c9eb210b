#!/usr/bin/env bash
# The README's main job: install what is missing, build (release preset), run the default
# benchmark suite and the accuracy run, write the report, print its path (last line).
#
# Usage: bash scripts/main.sh [--suite quick|default|full|backward] [--label LABEL] [--accuracy-max-n N]
#                             [--fresh]
#   On a quiet 2-core Zen 4 the default suite takes ~9 min and the accuracy run
#   (N = 128..16384; --accuracy-max-n 4096 for a quicker look) the rest of the job.
#   results/<host>-<date>[-<label>].json and ...-accuracy.json are the raw results;
#   reports/<host>-<date>[-<label>]/report.md is the report. With python3-torch installed
#   (optional), ...-peers.json holds PyTorch timed on the sweep's shapes (bench/peers.py).
#   Interrupted (Ctrl-C, SIGTERM, SIGHUP, even SIGKILL)? Run the same command again, any day:
#   it continues the job in its files (results/.main-job says which) and runs only what is
#   missing. --fresh starts a new job instead.
set -euo pipefail
cd "$(dirname "$0")/.."

suite=default
label=""
accuracy_max_n=16384
fresh=""
while [ $# -gt 0 ]; do
  case "$1" in
    --suite) suite="${2:?--suite needs a value}"; shift 2 ;;
    --suite=*) suite="${1#*=}"; shift ;;
    --label) label="${2:?--label needs a value}"; shift 2 ;;
    --label=*) label="${1#*=}"; shift ;;
    --accuracy-max-n) accuracy_max_n="${2:?--accuracy-max-n needs a value}"; shift 2 ;;
    --accuracy-max-n=*) accuracy_max_n="${1#*=}"; shift ;;
    --fresh) fresh=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "main.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done
command="bash scripts/main.sh --suite $suite${label:+ --label $label} --accuracy-max-n $accuracy_max_n"

# The job in progress: written when a job starts, removed when its report is written. Lines
# key=value: stem (results/<host>-<date>[-<label>]), suite, label, accuracy_max_n.
state=results/.main-job
mkdir -p results
job_value() { sed -n "s/^$1=//p" "$state"; }
stem=""
if [ -f "$state" ] && [ -z "$fresh" ]; then
  if [ "$(job_value suite)" != "$suite" ] || [ "$(job_value label)" != "$label" ] ||
     [ "$(job_value accuracy_max_n)" != "$accuracy_max_n" ]; then
    label_value=$(job_value label)
    echo "main.sh: an interrupted main job waits in $(job_value stem).json. Continue it with:" \
         "bash scripts/main.sh --suite $(job_value suite)${label_value:+ --label $label_value}" \
         "--accuracy-max-n $(job_value accuracy_max_n); or start a new one with --fresh" >&2
    exit 2
  fi
  stem=$(job_value stem)
  echo "== continuing the interrupted main job in $stem.json"
fi
bash scripts/install-deps.sh
cmake --preset release
cmake --build --preset release

bench=build/release/bench/attnlab_bench
if [ ! -x "$bench" ]; then
  echo "main.sh: $bench was not built (is bench/ in this checkout?)" >&2
  exit 1
fi
if [ -z "$stem" ]; then  # a new job (a same-day job of this label is replaced)
  stem="results/$(uname -n)-$(date -u +%Y-%m-%d)${label:+-$label}"
  printf 'stem=%s\nsuite=%s\nlabel=%s\naccuracy_max_n=%s\n' \
    "$stem" "$suite" "$label" "$accuracy_max_n" > "$state"
  rm -f "$stem.json" "$stem-accuracy.json" "$stem-peers.json"
fi

# Each step runs in the background so that a signal to this script reaches it: the trap
# passes SIGINT, SIGTERM and SIGHUP on as SIGTERM (a background command ignores SIGINT), the
# step closes its results and stops, and the job stops with 128 + the signal. attnlab_bench
# takes the same signal arriving twice at once (a Ctrl-C reaches both) as one. setpriv gives
# the step SIGTERM if this script dies without a trap (SIGKILL).
child=""
interrupted=0
on_signal() {
  interrupted=$1
  if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; fi
}
trap 'on_signal 2' INT
trap 'on_signal 15' TERM
trap 'on_signal 1' HUP
die_with_us=()
if command -v setpriv >/dev/null; then die_with_us=(setpriv --pdeathsig TERM --); fi
rc=0
run_child() {  # run_child COMMAND...: runs it as our child (killed with us), its status in rc
  "${die_with_us[@]}" "$@" &
  child=$!
  while :; do
    rc=0
    wait "$child" || rc=$?
    # A trapped signal ends `wait` early (status > 128) while the child still runs.
    if [ "$rc" -gt 128 ] && kill -0 "$child" 2>/dev/null; then continue; fi
    break
  done
  child=""
}
step() {  # step NAME COMMAND...: runs it; the job stops if it was interrupted or failed
  local name=$1
  shift
  run_child "$@"
  if [ "$interrupted" -ne 0 ] || [ "$rc" -gt 128 ]; then
    echo "main.sh: the $name was interrupted (status $rc); what finished is kept in" \
         "$(ls "$stem.json" "$stem-accuracy.json" 2>/dev/null | paste -sd ' ')." \
         "Continue the job with: $command" >&2
    exit $((interrupted ? 128 + interrupted : rc))
  fi
  if [ "$rc" -ne 0 ]; then
    echo "main.sh: the $name failed (status $rc). Run the same command again to retry, or" \
         "add --fresh to start a new job" >&2
    exit "$rc"
  fi
}

if [ -s "$stem.json" ]; then
  echo "== benchmark suite '$suite': resuming $stem.json"
  step "benchmark suite" "$bench" --suite="$suite" --resume="$stem.json"
else
  echo "== benchmark suite '$suite' -> $stem.json"
  step "benchmark suite" "$bench" --suite="$suite" --benchmark_out="$stem.json" \
    --benchmark_out_format=json
fi
if [ -s "$stem-accuracy.json" ]; then
  echo "== accuracy run: resuming $stem-accuracy.json"
  step "accuracy run" "$bench" --accuracy --accuracy_max_n "$accuracy_max_n" \
    --resume="$stem-accuracy.json"
else
  echo "== accuracy run -> $stem-accuracy.json"
  step "accuracy run" "$bench" --accuracy --accuracy_max_n "$accuracy_max_n" \
    --accuracy_out "$stem-accuracy.json"
fi

# Peers (optional): PyTorch on the sweep's shapes, when /usr/bin/python3 can import torch
# (python3-torch). Cheap next to the suite: rerun whole on every resume, never resumed.
peers=()
if /usr/bin/python3 -c "import torch" 2>/dev/null; then
  echo "== peers (PyTorch) -> $stem-peers.json"
  # The backward only where the suite has grad/ cases (quick, backward): the peers' autograd
  # beside nothing would only cost minutes.
  case "$suite" in
    backward) passes=backward ;;
    quick) passes=forward,backward ;;
    *) passes=forward ;;
  esac
  run_child nice -n 5 /usr/bin/python3 bench/peers.py --out "$stem-peers.json" --passes "$passes"
  if [ "$interrupted" -ne 0 ]; then
    echo "main.sh: the peers run was interrupted. Continue the job with: $command" >&2
    exit $((128 + interrupted))
  fi
  if [ "$rc" -ne 0 ]; then  # a wrong torch: the file says why; the report says the peer is absent
    echo "main.sh: bench/peers.py failed (status $rc); the report goes on without peers" >&2
  fi
  if [ -s "$stem-peers.json" ]; then peers=("$stem-peers.json"); fi
else
  echo "== peers: skipped (torch is not importable by /usr/bin/python3; apt-get install" \
       "python3-torch, see README \"Peers\")"
fi

echo "== report"
report=$(/usr/bin/python3 reports/generate.py "$stem.json" "${peers[@]}" \
  --accuracy "$stem-accuracy.json" ${label:+--label "$label"} --out-dir reports)
rm -f "$state"
echo "report: $report"
