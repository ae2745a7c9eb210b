#!/usr/bin/env bash
# The ring suite: ring attention (dist/ring.h) timed with attnlab_ring_bench
# under mpirun, every record appended to one JSON-lines file, then the ring
# report (reports/ring_report.py) drawn from it.
#
#   bash bench/ring_suite.sh [--quick] [--parts strong,weak,balance,link] [--out FILE.jsonl]
#                            [--report DIR]
#
# Parts (B = 1, H = Hkv = 4, d = 128, fp32, flash per block pair):
#   strong   fixed N (16384, 32768, 65536), dense and causal: one process on
#            every core (the baseline, attn::Run), ring P = 1 x all cores,
#            P = cores x 1 thread, and P = 2 x cores x 1 (oversubscribed,
#            N <= 32768: correctness of the split, not speed);
#   weak     N/P fixed (8192): P = 1, 2, 4 ranks x 1 thread;
#   balance  causal, zigzag against contiguous, P = cores;
#   link     P = 2 over Open MPI's TCP transport on a loopback whose rate tc
#            sets (1 and 10 Gbit/s, and unlimited), in a private network
#            namespace (unshare -n, so the machine's own loopback is
#            untouched), N from 256 to 16384, each beside the same run over
#            shared memory, with a probe of each link's latency and
#            bandwidth: the cost model's inputs. Needs root, unshare and tc
#            (iproute2); skipped with a message otherwise.
# --quick: small N, one repetition, for the pipeline's test (ctest
# ring_suite.quick). Ranks x threads never exceed the cores except where
# marked oversubscribed. Figures are only comparable within one run.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
parts=strong,weak,balance,link
out=""
report=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --out) out="$2"; shift ;;
    --parts) parts="$2"; shift ;;
    --report) report="$2"; shift ;;
    *) echo "ring_suite: unknown option $1 (--quick, --parts LIST, --out FILE, --report DIR)" >&2
       exit 2 ;;
  esac
  shift
done
bench="${ATTNLAB_RING_BENCH:-build/release/bench/attnlab_ring_bench}"
if [ ! -x "$bench" ]; then
  echo "ring_suite: no $bench (build with MPI: libopenmpi-dev, cmake --build --preset release)" >&2
  exit 2
fi
stamp="$(hostname)-$(date -u +%Y-%m-%d)"
out="${out:-results/ring-$stamp.jsonl}"
mkdir -p "$(dirname "$out")"
cores=$(nproc)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_mpi_yield_when_idle=1
shape=(--heads 4 --kv-heads 4 --dim 128)

if [ "$quick" = 1 ]; then
  strong_ns=(512 1024); weak_n=256; link_ns=(512 1024); rates=(1gbit); reps=1
else
  strong_ns=(16384 32768 65536); weak_n=8192; link_ns=(256 512 1024 2048 4096 8192 16384)
  rates=(1gbit 10gbit); reps=3
fi

# One ring run: P ranks x T threads each, bound to cores only when each rank
# has one thread (a multi-threaded rank bound to one core would share it).
ring() {  # ring P T LABEL N MASK [more bench args]
  local p=$1 t=$2 label=$3 n=$4 mask=$5
  shift 5
  local bind=core
  [ "$t" -gt 1 ] || [ $((p * t)) -gt "$cores" ] && bind=none
  OMP_NUM_THREADS=$t mpirun -np "$p" --bind-to "$bind" "$bench" --n "$n" --mask "$mask" \
    --threads "$t" "${shape[@]}" --label "$label" --out "$out" "$@"
}
single() {  # single T LABEL N MASK [more]
  local t=$1 label=$2 n=$3 mask=$4
  shift 4
  OMP_NUM_THREADS=$t "$bench" --single --n "$n" --mask "$mask" --threads "$t" "${shape[@]}" \
    --label "$label" --out "$out" "$@"
}
reps_for() {  # fewer repetitions and no warm-up for the long ones
  if [ "$1" -ge 65536 ]; then echo "--reps 2 --warmup 0"
  elif [ "$1" -ge 32768 ]; then echo "--reps $reps --warmup 0"
  else echo "--reps $reps"; fi
}

part() { [[ ",$parts," == *",$1,"* ]]; }

echo "== ring suite -> $out ($cores cores, parts $parts)"
if part strong; then
echo "-- strong scaling"
for n in "${strong_ns[@]}"; do
  for mask in none causal; do
    r=$(reps_for "$n")
    # shellcheck disable=SC2086
    single "$cores" strong "$n" "$mask" $r
    # shellcheck disable=SC2086
    [ "$n" -le 16384 ] && ring 1 "$cores" strong "$n" "$mask" $r
    # shellcheck disable=SC2086
    ring "$cores" 1 strong "$n" "$mask" $r
    # shellcheck disable=SC2086
    [ "$n" -le 32768 ] && ring $((2 * cores)) 1 strong "$n" "$mask" $r --link "shared memory, oversubscribed"
  done
done
fi

if part weak; then
echo "-- weak scaling"
for p in 1 2 4; do
  link="shared memory"
  [ "$p" -gt "$cores" ] && link="shared memory, oversubscribed"
  for mask in none causal; do
    ring "$p" 1 weak $((weak_n * p)) "$mask" --reps "$reps" --link "$link"
  done
done
fi

if part balance; then
echo "-- causal balance"
for split in zigzag contiguous; do
  ring "$cores" 1 balance "${strong_ns[0]}" causal --split "$split" --reps "$reps"
done
fi

if ! part link; then
  :
elif [ "$(id -u)" -eq 0 ] && command -v unshare > /dev/null && command -v tc > /dev/null &&
   unshare -n true 2> /dev/null; then
  echo "-- link: tcp on a rate-limited loopback"
  tcp=(--mca btl tcp,self --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo)
  for rate in "${rates[@]}" unlimited; do
    limit=""
    if [ "$rate" != unlimited ]; then
      # tbf's bucket must hold a timer tick's worth of bytes at the rate.
      burst=1mb
      [ "$rate" = 10gbit ] && burst=8mb
      limit="tc qdisc add dev lo root tbf rate $rate burst $burst latency 100ms;"
    fi
    lines=""
    for n in "${link_ns[@]}"; do
      lines+="OMP_NUM_THREADS=1 mpirun -np 2 --bind-to core ${tcp[*]} $bench --n $n --mask none ${shape[*]} --threads 1 --label link --link 'tcp $rate' --reps $reps --out $out;"
    done
    unshare -n bash -c "ip link set lo up; $limit
      mpirun -np 2 --bind-to core ${tcp[*]} $bench --probe --link 'tcp $rate' --out $out; $lines"
  done
  ring 2 1 link-probe 0 none --probe --link "shared memory"
  for n in "${link_ns[@]}"; do ring 2 1 link "$n" none --reps "$reps" --link "shared memory"; done
else
  echo "ring_suite: link part skipped: needs root, unshare -n and tc (iproute2)"
fi

echo "== wrote $out"
if [ -n "$report" ]; then
  /usr/bin/python3 reports/ring_report.py "$out" --out "$report"
fi
