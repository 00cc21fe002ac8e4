#!/usr/bin/env bash
# One GPU-machine pass for the MoE data path: build (pip package + C++ CUDA tests, in parallel),
# run its googletest and pytest suites, then bench/kernels_dataplane.py. Logs and results in $OUT.
#   CUTLASS_DIR, GTEST_SOURCE_DIR   as for scripts/gpu_check.sh;  BENCH_TIMEOUT (s, default 200)
set -uo pipefail
out=${OUT:-dataplane_out}
mkdir -p "$out"
export MOEBAL_CUDA_ARCHS=${MOEBAL_CUDA_ARCHS:-90a} CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
export PYTHONUNBUFFERED=1
t0=$(date +%s)
stamp() { echo "[$(($(date +%s) - t0))s] $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
extra=()
[ -n "${CUTLASS_DIR:-}" ] && extra+=("-DCUTLASS_DIR=$CUTLASS_DIR")
[ -n "${GTEST_SOURCE_DIR:-}" ] && extra+=("-DGTEST_SOURCE_DIR=$GTEST_SOURCE_DIR")
(cmake -S . -B /tmp/dataplane-build -G Ninja -DMOEBAL_CUDA=ON -DMOEBAL_CUDA_ARCHS="$MOEBAL_CUDA_ARCHS" \
   -DMOEBAL_BUILD_BENCH=OFF "${extra[@]}" && ninja -C /tmp/dataplane-build moebal_cuda_tests) \
  >"$out/cmake_build.txt" 2>&1 &
cmake_pid=$!
python3 -m pip install --no-build-isolation --no-deps -q . >"$out/pip.txt" 2>&1 || { echo "pip FAILED"; tail -40 "$out/pip.txt"; }
stamp "pip done"
wait $cmake_pid || { echo "C++ build FAILED"; tail -40 "$out/cmake_build.txt"; }
stamp "C++ tests built"
/tmp/dataplane-build/tests/cpp/moebal_cuda_tests --gtest_brief=1 >"$out/gtest.txt" 2>&1
echo "gtest rc=$?"; tail -25 "$out/gtest.txt"
python3 -m pytest -q -rs tests/python/test_moe_ops.py >"$out/pytest.txt" 2>&1
echo "pytest rc=$?"; tail -25 "$out/pytest.txt"
stamp "tests done"
timeout "${BENCH_TIMEOUT:-200}" python3 bench/kernels_dataplane.py --json "$out/dataplane.json" \
  --md "$out/dataplane.md" >"$out/bench.txt" 2>&1
echo "bench rc=$?"
cat "$out/dataplane.md" 2>/dev/null || tail -60 "$out/bench.txt"
stamp "all done"
