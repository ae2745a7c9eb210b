#!/usr/bin/env bash
# The README's benchmark job: install what is missing, build attnlab_bench
# (release preset), run a suite and write results/bench_<suite>.json
# (Google Benchmark JSON per BENCH_CONTRACT; progress on stderr).
# Usage: bash scripts/bench.sh [quick|default|full|accuracy] [extra attnlab_bench flags]
#   accuracy: writes results/accuracy.json (attnlab_bench --accuracy).
set -euo pipefail
cd "$(dirname "$0")/.."
suite=${1:-default}
[ $# -gt 0 ] && shift
bash scripts/install-deps.sh
cmake --preset release
cmake --build --preset release --target attnlab_bench
mkdir -p results
start=$(date +%s)
if [ "$suite" = accuracy ]; then
  out=results/accuracy.json
  build/release/bench/attnlab_bench --accuracy --accuracy_out="$out" "$@"
else
  out=results/bench_${suite}.json
  build/release/bench/attnlab_bench --suite="$suite" --benchmark_out="$out" \
    --benchmark_out_format=json "$@"
fi
echo "bench: wrote $out in $(( $(date +%s) - start )) s"
