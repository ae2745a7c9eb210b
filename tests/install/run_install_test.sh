#!/bin/bash
# ctest package.installed and package.consumer (cli/CMakeLists.txt): attnlab as someone who
# only has the installed prefix gets it, with the build and source trees out of reach.
#
#   run_install_test.sh tools|consumer --build-dir B --source-dir S [--generator G]
#       [--python-dir D] [--have-bench 0|1] [--expect-python 0|1]
#       [--cxx-compiler C] [--cxx-flags F] [--linker-flags L]
#
# Both modes install B (`cmake --install B --prefix P`) into a fresh P under /tmp, outside both
# trees, and run their checks in a mount namespace (`unshare -m`) where an empty tmpfs covers S
# and B, so anything that still reaches into either tree fails here instead of quietly working;
# the checks run from a scratch directory with every ATTNLAB_* variable unset. Without the
# privilege to mount (not root and no user namespaces) they run with the trees in place, from
# outside both, and say so: that alone is not a failure. P and the scratch directory are
# removed at the end.
#
#   tools     P/bin/attnlab names neither S nor B (strings); `attnlab list`; `attnlab bench
#             --suite quick --report` runs P/bin/attnlab_bench and P/share/attnlab/reports/
#             generate.py and writes the report (~1 min of the quick suite, OMP_NUM_THREADS=2;
#             skipped when the build has no attnlab_bench, --have-bench 0); `attnlab weights
#             --png` runs heatmap.py; `import attnlab` from P/D (D: ATTNLAB_INSTALL_PYTHONDIR)
#             when the package is installed: a build that makes it (--expect-python 1) fails
#             without it, any other prints a skip line.
#   consumer  tests/consumer (copied out of S first) configured, built and run against P with
#             find_package(attnlab), without asking for C++20 itself: the exported target must
#             bring what a user needs. Built with the tree's compiler and flags (-fsanitize=...
#             of the asan preset, which a static libattnlab needs from its users).
set -euo pipefail

say() { echo "install test: $*"; }
die() {
  echo "install test: FAIL: $*" >&2
  exit 1
}

inside=0
if [[ ${1:-} == --inside ]]; then
  inside=1
  shift
fi
mode=${1:-}
[[ $mode == tools || $mode == consumer ]] || die "usage: $0 tools|consumer --build-dir B ..."
shift
args=("$@")
build="" src="" generator=Ninja python_dir=lib/python3/dist-packages have_bench=1
expect_python=0 cxx_compiler="" cxx_flags="" linker_flags=""
while (($#)); do
  (($# >= 2)) || die "$1 wants a value"
  case $1 in
    --build-dir) build=$2 ;;
    --source-dir) src=$2 ;;
    --generator) generator=$2 ;;
    --python-dir) python_dir=$2 ;;
    --have-bench) have_bench=$2 ;;
    --expect-python) expect_python=$2 ;;
    --cxx-compiler) cxx_compiler=$2 ;;
    --cxx-flags) cxx_flags=$2 ;;
    --linker-flags) linker_flags=$2 ;;
    *) die "unknown argument $1" ;;
  esac
  shift 2
done
[[ -n $build && -n $src ]] || die "--build-dir and --source-dir are required"

# ------------------------------------------------------------------- the checks (hidden trees)
tools_checks() {
  local prefix=$1 scratch=$2
  local attnlab=$prefix/bin/attnlab
  cd "$scratch"

  say "attnlab list"
  "$attnlab" list > list.txt 2>&1 || { cat list.txt; die "attnlab list failed"; }
  grep -q '^flash ' list.txt || { cat list.txt; die "attnlab list does not list flash"; }

  if [[ $have_bench == 1 ]]; then
    say "attnlab bench --suite quick --report (about a minute)"
    local started=$SECONDS
    OMP_NUM_THREADS=2 "$attnlab" bench --suite quick --report --out "$scratch/r.json" \
      > bench.log 2>&1 || { tail -40 bench.log; die "attnlab bench --report failed"; }
    grep -qF "+ $prefix/bin/attnlab_bench " bench.log ||
      { grep '^+ ' bench.log; die "attnlab bench did not run $prefix/bin/attnlab_bench"; }
    grep -qF " $prefix/share/attnlab/reports/generate.py " bench.log ||
      { grep '^+ ' bench.log; die "attnlab bench --report did not run the installed generate.py"; }
    [[ -s $scratch/r.json ]] || die "no results at $scratch/r.json"
    # generate.py writes reports/<host>-<date>[-<label>]/report.md under the current directory.
    local reports
    reports=$(find "$scratch/reports" -name report.md 2> /dev/null | wc -l)
    [[ $reports == 1 ]] || { tail -20 bench.log; die "want one report.md under reports/, found $reports"; }
    say "  ran $(grep '^+ ' bench.log | cut -c3- | tr '\n' ';' | sed 's/;$//; s/;/; then /')"
    say "  report: $(cd "$scratch" && find reports -name report.md) ($((SECONDS - started)) s)"
    if [[ -d $prefix/$python_dir/attnlab ]]; then
      grep -qF "+ PYTHONPATH=$prefix/$python_dir" bench.log ||
        die "the report generator did not get the installed Python package on PYTHONPATH"
    fi
  else
    say "no attnlab_bench in this build (ATTNLAB_BUILD_BENCH=OFF): bench and report skipped"
  fi

  say "attnlab weights --png (heatmap.py)"
  /usr/bin/python3 -c "
import numpy as np
rng = np.random.default_rng(0)
for name in 'qkv': np.save(name + '.npy', rng.standard_normal((1, 2, 6, 8), dtype=np.float32))"
  "$attnlab" weights --q q.npy --k k.npy --v v.npy --out w.npy --png h.png > weights.log 2>&1 ||
    { cat weights.log; die "attnlab weights --png failed"; }
  [[ -s h.png ]] || die "attnlab weights wrote no heatmap"

  local pydir=$prefix/$python_dir
  if [[ -d $pydir/attnlab ]]; then
    say "import attnlab from $pydir"
    # The kernels against the fp64 reference, the results loader on this run's JSON (when
    # the bench ran), and the O of `attnlab run` on the same file, bit for bit.
    "$attnlab" run --variant flash --q q.npy --k k.npy --v v.npy --mask causal --out o_cli.npy \
      > run.log 2>&1 || { cat run.log; die "attnlab run failed"; }
    PYTHONPATH=$pydir /usr/bin/python3 -c "
import os, attnlab, numpy as np
assert attnlab.__file__.startswith('$pydir/'), attnlab.__file__
q, k, v = (np.load(n + '.npy') for n in 'qkv')
o = attnlab.attention(q, k, v, mask='causal')
assert np.array_equal(o, np.load('o_cli.npy')), 'attnlab.attention differs from attnlab run'
assert attnlab.check(q, k, v, mask='causal').ok
if os.path.exists('r.json'):
  df = attnlab.results.to_dataframe('r.json')
  assert len(df) > 0 and 'GFLOPS' in df.columns, df.columns
  print('attnlab.results:', len(df), 'cases from r.json')
print('attnlab', attnlab.__version__, 'O', o.shape, 'identical to attnlab run')" ||
      die "the installed Python package does not work"
  elif [[ $expect_python == 1 ]]; then
    die "this build makes the Python package (ATTNLAB_BUILD_PYTHON=ON) but $pydir/attnlab is missing"
  else
    say "python package not installed (ATTNLAB_BUILD_PYTHON=OFF): skipped"
  fi
}

consumer_checks() {
  local prefix=$1 scratch=$2
  local flags=(-DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release)
  [[ -n $cxx_compiler ]] && flags+=(-DCMAKE_CXX_COMPILER="$cxx_compiler")
  [[ -n $cxx_flags ]] && flags+=(-DCMAKE_CXX_FLAGS="$cxx_flags")
  [[ -n $linker_flags ]] && flags+=(-DCMAKE_EXE_LINKER_FLAGS="$linker_flags")
  say "tests/consumer: configure, build and run against $prefix"
  cmake -S "$scratch/consumer-src" -B "$scratch/consumer-build" -G "$generator" "${flags[@]}" \
    > "$scratch/consumer.log" 2>&1 || { cat "$scratch/consumer.log"; die "consumer: configure failed"; }
  cmake --build "$scratch/consumer-build" >> "$scratch/consumer.log" 2>&1 ||
    { cat "$scratch/consumer.log"; die "consumer: build failed"; }
  "$scratch/consumer-build/consumer" || die "consumer: run failed"
}

if ((inside)); then
  work=$INSTALL_TEST_WORK
  unset INSTALL_TEST_WORK
  # The tools must find everything from where they are installed: no override may help them.
  for v in $(compgen -e | grep '^ATTNLAB_' || true); do unset "$v"; done
  if [[ -n ${INSTALL_TEST_HIDDEN:-} ]]; then
    # A directory inside another hidden one is gone altogether: that hides it too.
    for dir in $INSTALL_TEST_HIDDEN; do
      [[ ! -e $dir || -z $(ls -A "$dir") ]] || die "$dir should be hidden (an empty tmpfs) but is not"
    done
    say "hidden: $INSTALL_TEST_HIDDEN (each an empty tmpfs in this mount namespace)"
  fi
  "${mode}_checks" "$work/prefix" "$work/scratch"
  exit 0
fi

# ------------------------------------------------------------------- install, hide, run
started=$SECONDS
src=$(cd "$src" && pwd -P)
build=$(cd "$build" && pwd -P)
work=$(mktemp -d /tmp/attnlab-install-test.XXXXXX)
trap 'cd / && rm -rf "$work"' EXIT
for tree in "$src" "$build"; do
  [[ $work/ != "$tree"/* ]] || die "$work is inside $tree"
done
mkdir "$work/scratch"
say "installing $build into $work/prefix"
cmake --install "$build" --prefix "$work/prefix" > "$work/install.log" 2>&1 ||
  { cat "$work/install.log"; die "cmake --install failed"; }

if [[ $mode == tools ]]; then
  # No path of either tree compiled in. A debug or sanitizer build keeps source-file names
  # (__FILE__, UBSan's source locations) in its data: those name files, not where to look, so
  # they are allowed; debug sections are dropped first.
  objcopy --strip-debug "$work/prefix/bin/attnlab" "$work/attnlab.stripped"
  for tree in "$src" "$build"; do
    total=$(strings -a "$work/attnlab.stripped" | grep -cF -- "$tree" || true)
    bad=$(strings -a "$work/attnlab.stripped" | grep -F -- "$tree" |
      grep -Ev '\.(cc|c|h|hpp|inc)(:[0-9]+)?$' || true)
    [[ -z $bad ]] || die "bin/attnlab has $tree compiled in:"$'\n'"$bad"
    if ((total == 0)); then
      say "bin/attnlab: no string names $tree"
    else
      say "bin/attnlab: $total strings name files under $tree (source-file names: allowed)"
    fi
  done
fi
if [[ $mode == consumer ]]; then
  cp -r "$src/tests/consumer" "$work/scratch/consumer-src"
  rm -rf "$work/scratch/consumer-src/build"
fi
cp "$0" "$work/run_install_test.sh"

# The deeper directory is covered first: once its ancestor is, it can no longer be reached.
if ((${#build} >= ${#src})); then hidden="$build $src"; else hidden="$src $build"; fi
inner=(bash "$work/run_install_test.sh" --inside "$mode" "${args[@]}")
# Expanded by the sh in the new namespace, not here (HIDDEN and its arguments are passed to it).
# shellcheck disable=SC2016
mount_script='for d in $HIDDEN; do mount -t tmpfs attnlab-hidden "$d" || exit 97; done; exec "$@"'
ns=()
if [[ $(id -u) == 0 ]] && unshare -m true 2> /dev/null; then
  ns=(unshare -m)
elif unshare -r -m true 2> /dev/null; then
  ns=(unshare -r -m)  # a user namespace: an unprivileged user may mount there
fi
cd "$work/scratch"
export INSTALL_TEST_WORK=$work
if ((${#ns[@]})) && HIDDEN=$work/scratch "${ns[@]}" sh -c "$mount_script" sh true 2> /dev/null; then
  INSTALL_TEST_HIDDEN=$hidden HIDDEN=$hidden "${ns[@]}" sh -c "$mount_script" sh "${inner[@]}"
else
  say "NOTE: the build and source trees were NOT hidden (cannot mount in a new mount namespace:"
  say "NOTE: not root and no user namespaces); the checks run from $work/scratch, outside both"
  say "NOTE: trees, with ATTNLAB_* unset, so a lookup that reaches into a tree would not fail here"
  "${inner[@]}"
fi
say "$mode: passed in $((SECONDS - started)) s"
