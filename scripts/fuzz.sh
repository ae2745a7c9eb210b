#!/usr/bin/env bash
# Bounded differential fuzzing (CI): builds the libFuzzer harness with clang
# (`fuzz` preset: ASan + UBSan over the whole library) and runs it for
# FUZZ_SECONDS (default 60) from the seed corpus in tests/fuzz/corpus/.
# New inputs go to a scratch corpus under build/fuzz/, never into tests/;
# a crash leaves its input in build/fuzz/artifacts/ (reproduce with
# ./build/fuzz/tests/fuzz/attention_fuzzer <file>). Exits non-zero on a finding.
# Usage: bash scripts/fuzz.sh [extra libFuzzer flags]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz
work=build/fuzz/corpus
mkdir -p "$work" build/fuzz/artifacts
echo "== fuzz: attention_fuzzer for ${seconds} s (seed corpus tests/fuzz/corpus)"
log=build/fuzz/fuzz.log
rc=0
ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}" \
UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
OMP_WAIT_POLICY=passive \
./build/fuzz/tests/fuzz/attention_fuzzer "$work" tests/fuzz/corpus \
  -max_total_time="$seconds" -timeout=20 -rss_limit_mb=3072 -print_final_stats=1 \
  -artifact_prefix=build/fuzz/artifacts/ "$@" >"$log" 2>&1 || rc=$?
if [ "$rc" -ne 0 ]; then
  tail -n 60 "$log"
  echo "== fuzz: FAILED (exit $rc); input in build/fuzz/artifacts/, log $log" >&2
  exit "$rc"
fi
grep -E '^(Done|stat::)' "$log"
echo "== fuzz: no findings in ${seconds} s"
