#!/usr/bin/env bash
# Build everything with CUDA on a GPU machine, run every test (C++ + Python) and the benchmarks.
# Usage (repository root): bash scripts/gpu_check.sh [results-dir]
#   CUTLASS_DIR=/path/with/include   where CUTLASS headers live, if not in the nvidia-cutlass wheel
#   GTEST_SOURCE_DIR=/path           googletest sources, if no GTest package is installed
#   MOEBAL_CUDA_ARCHS=90a            architectures to build (default: 90a, the H100)
#   MOEBAL_GPU_CHECK_SKIP_BENCH=1    tests only
set -uo pipefail
out=${1:-${OUT:-gpu_check_out}}
mkdir -p "$out"
export MOEBAL_CUDA_ARCHS=${MOEBAL_CUDA_ARCHS:-90a}
export PYTHONUNBUFFERED=1
status=0
step() { echo; echo "=== $*"; }
run() { "$@" || { echo "FAILED: $*"; status=1; }; }
# run_log FILE CMD...: run CMD, keep its output in FILE and show it; a failure sets status.
run_log() { local f=$1; shift; "$@" >"$f" 2>&1; local rc=$?; cat "$f"; [ $rc -eq 0 ] || { echo "FAILED ($rc): $*"; status=1; }; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/device.txt"

step "C++ build (CUDA ${MOEBAL_CUDA_ARCHS})"
extra=()
[ -n "${CUTLASS_DIR:-}" ] && extra+=("-DCUTLASS_DIR=$CUTLASS_DIR")
[ -n "${GTEST_SOURCE_DIR:-}" ] && extra+=("-DGTEST_SOURCE_DIR=$GTEST_SOURCE_DIR")
# The C++ build and the Python package build run side by side (they use separate build trees).
( cmake -S . -B build/gpu -G Ninja -DMOEBAL_CUDA=ON -DMOEBAL_CUDA_ARCHS="$MOEBAL_CUDA_ARCHS" \
    -DMOEBAL_CUDA_HOPPER_ARCHS=90a "${extra[@]}" && ninja -C build/gpu ) >"$out/build.txt" 2>&1 &
cpp_pid=$!
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
run_log "$out/pip.txt" python3 -m pip install --no-build-isolation --no-deps -q .
wait $cpp_pid || { echo "FAILED: C++ build"; grep -E "error" -A3 "$out/build.txt" | head -40; status=1; }

step "ctest"
run_log "$out/ctest.txt" ctest --test-dir build/gpu --output-on-failure -j 8

step "Python package"
python3 -c "import json, moebal; print(json.dumps(moebal.capabilities(), indent=1))" | tee "$out/capabilities.json"

step "pytest"
run_log "$out/pytest.txt" python3 -X faulthandler -m pytest -q -rs tests/python

if [ -z "${MOEBAL_GPU_CHECK_SKIP_BENCH:-}" ]; then
  step "benchmarks"
  run bash bench/run_gpu_benches.sh "$out/bench"
fi
step "done (status $status)"
exit $status
