#!/usr/bin/env bash
# ctest ring_suite.quick: bench/ring_suite.sh --quick end to end (records from
# every part, the link part where root, unshare and tc allow), then the ring
# report, which must have every section and a figure per scaling part.
#   bash bench/ring_suite_test.sh WORK_DIR
set -euo pipefail
work="$1"
rm -rf "$work"
bash "$(dirname "$0")/ring_suite.sh" --quick --out "$work/ring.jsonl" --report "$work/report"
for section in "Summary" "Strong scaling" "Weak scaling" "Per-rank work" "Cost model"; do
  grep -q "^## .*$section" "$work/report/report.md" || { echo "missing section: $section"; exit 1; }
done
for figure in ring_strong.png ring_weak.png; do
  [ -s "$work/report/$figure" ] || { echo "missing figure: $figure"; exit 1; }
done
echo "ring_suite.quick: $(wc -l < "$work/ring.jsonl") records, report $work/report/report.md"
