#!/usr/bin/env bash
# The README's test command: install what is missing, build (release preset),
# run every test. Usage: bash scripts/test.sh [extra ctest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset release
cmake --build --preset release
ctest --preset release "$@"
