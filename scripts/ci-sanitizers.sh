#!/usr/bin/env bash
# CI: the whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer
# (`asan` preset: every registry variant over the kernel grid, the edge
# semantics, the differential slice, and the scratch-safety death tests that
# prove ASan sees a write past a Workspace buffer), then the bounded
# differential fuzz run (scripts/fuzz.sh, FUZZ_SECONDS, default 60).
# Fails on any test failure or sanitizer report.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
echo "== asan: build"
cmake --preset asan >/dev/null
cmake --build --preset asan
t1=$(date +%s)
echo "== asan: ctest --preset asan"
ctest --preset asan
t2=$(date +%s)
bash scripts/fuzz.sh
t3=$(date +%s)
echo "== sanitizers: asan build $((t1 - t0)) s, asan tests $((t2 - t1)) s," \
     "fuzz (build + run) $((t3 - t2)) s, total $((t3 - t0)) s"
