#!/usr/bin/env bash
# Installs every Debian 12 package attnlab needs to build, test, benchmark and report.
# Idempotent: packages already present are left alone and nothing is downloaded when all are there.
# Needs root (apt-get). Without root it prints the exact apt line to run and exits non-zero.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build git pkg-config
  libhwy-dev                 # Google Highway 1.0.3: SIMD with runtime dispatch
  libopenblas-openmp-dev     # OpenBLAS 0.3.21 built on OpenMP: shares libgomp's thread pool with our kernels
  libdnnl-dev                # oneDNN 2.6.3 (OpenMP build): the onednn variant and ceiling_matmul_bf16 (optional in CMake)
  ocl-icd-opencl-dev         # OpenCL headers and libOpenCL.so: oneDNN's CMake config requires them (only a Recommends of libdnnl-dev)
  libgtest-dev libgmock-dev  # GoogleTest 1.12
  libbenchmark-dev           # Google Benchmark 1.7.1
  libcli11-dev nlohmann-json3-dev libfmt-dev
  python3-numpy python3-matplotlib   # report generator and .npy round-trip tests (run under /usr/bin/python3)
  python3-dev pybind11-dev python3-pybind11   # the Python package (python/), built for /usr/bin/python3
  python3-pytest python3-pandas      # its tests (ctest runs pytest); attnlab.results' DataFrames
  clang libclang-rt-14-dev   # libFuzzer harness
  libomp-14-dev              # OpenMP for clang (the fuzz preset builds the whole library with clang)
  clang-format
  openmpi-bin libopenmpi-dev # Open MPI 4.1: ring attention (dist/), `attnlab ring`, the mpi tests (optional in CMake)
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  if ! /usr/bin/python3 -c "import importlib.util as u, sys; sys.exit(not u.find_spec('torch'))" 2>/dev/null; then  # optional
    echo "install-deps: optional: apt-get install python3-torch puts PyTorch peers in the report"
  fi
  exit 0
fi

line="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: run as root:  $line" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: done"
