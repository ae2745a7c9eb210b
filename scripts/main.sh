#!/usr/bin/env bash
# The README's main job: install what is missing, build (release preset), run the default
# benchmark suite and the accuracy run, write the report, print its path (last line).
#
# Usage: bash scripts/main.sh [--suite quick|default|full] [--label LABEL] [--accuracy-max-n N]
#   On a quiet 2-core Zen 4 the default suite takes ~9 min and the accuracy run
#   (N = 128..16384; --accuracy-max-n 4096 for a quicker look) the rest of the job.
#   results/<host>-<date>[-<label>].json and ...-accuracy.json are the raw results;
#   reports/<host>-<date>[-<label>]/report.md is the report.
set -euo pipefail
cd "$(dirname "$0")/.."

suite=default
label=""
accuracy_max_n=16384
while [ $# -gt 0 ]; do
  case "$1" in
    --suite) suite="${2:?--suite needs a value}"; shift 2 ;;
    --suite=*) suite="${1#*=}"; shift ;;
    --label) label="${2:?--label needs a value}"; shift 2 ;;
    --label=*) label="${1#*=}"; shift ;;
    --accuracy-max-n) accuracy_max_n="${2:?--accuracy-max-n needs a value}"; shift 2 ;;
    --accuracy-max-n=*) accuracy_max_n="${1#*=}"; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "main.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done

bash scripts/install-deps.sh
cmake --preset release
cmake --build --preset release

bench=build/release/bench/attnlab_bench
if [ ! -x "$bench" ]; then
  echo "main.sh: $bench was not built (is bench/ in this checkout?)" >&2
  exit 1
fi

mkdir -p results
stem="results/$(uname -n)-$(date -u +%Y-%m-%d)${label:+-$label}"
echo "== benchmark suite '$suite' -> $stem.json"
"$bench" --suite="$suite" --benchmark_out="$stem.json" --benchmark_out_format=json
echo "== accuracy run -> $stem-accuracy.json"
"$bench" --accuracy --accuracy_max_n "$accuracy_max_n" --accuracy_out "$stem-accuracy.json"

echo "== report"
report=$(/usr/bin/python3 reports/generate.py "$stem.json" --accuracy "$stem-accuracy.json" \
  ${label:+--label "$label"} --out-dir reports)
echo "report: $report"
