#!/usr/bin/env bash
# CI: the whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer
# (`asan` preset: every registry variant over the kernel grid, the edge
# semantics, the differential slice, the concurrency tests (Run from
# std::threads and from OpenMP regions), and the scratch-safety death tests
# that prove ASan sees a write past a Workspace buffer; of the 2^25-key
# LargeKvTest cases, dv = 16 with V = 1 at every key); then the thread
# tests under ThreadSanitizer (`tsan` preset: clang + LLVM libomp + Archer,
# the ctest preset's filter: Concurrency, ThreadAgreement, Determinism, Edge,
# the differential slice; bounded by TSAN_SECONDS, default 900); then the
# bounded differential fuzz run (scripts/fuzz.sh, FUZZ_SECONDS, default 60).
# The three builds compile Highway code for this CPU's best target only
# (ATTNLAB_HWY_NATIVE_ONLY; the release suite covers every target): 9.5 min
# for the asan build on 2 Zen 3 cores instead of ~30.
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
echo "== tsan: build (clang + libomp + Archer)"
cmake --preset tsan >/dev/null
cmake --build --preset tsan
echo "== tsan: ctest --preset tsan (thread tests), at most ${TSAN_SECONDS:-900} s"
timeout "${TSAN_SECONDS:-900}" ctest --preset tsan
t3=$(date +%s)
bash scripts/fuzz.sh
t4=$(date +%s)
echo "== sanitizers: asan build $((t1 - t0)) s, asan tests $((t2 - t1)) s," \
     "tsan (build + tests) $((t3 - t2)) s, fuzz (build + run) $((t4 - t3)) s, total $((t4 - t0)) s"
