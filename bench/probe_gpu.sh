#!/usr/bin/env bash
# One GPU-machine pass for the PROBE planner: build (pip package and C++ tests/benches in parallel),
# run the probe googletests (CUDA + CPU) and pytest suite, then the CUDA and one-core CPU benches.
# Logs in $OUT.   GTEST_SOURCE_DIR: googletest sources if no GTest package is installed.
set -uo pipefail
out=${OUT:-probe_out}
mkdir -p "$out"
export MOEBAL_CUDA_ARCHS=${MOEBAL_CUDA_ARCHS:-90a} CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
export PYTHONUNBUFFERED=1
t0=$(date +%s)
stamp() { echo "[$(($(date +%s) - t0))s] $*"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  lscpu | grep -E "Model name|^CPU\(s\)"; } | tee "$out/device.txt"
extra=()
[ -n "${GTEST_SOURCE_DIR:-}" ] && extra+=("-DGTEST_SOURCE_DIR=$GTEST_SOURCE_DIR")
(cmake -S . -B /tmp/probe-build -G Ninja -DMOEBAL_CUDA=ON -DMOEBAL_CUDA_ARCHS="$MOEBAL_CUDA_ARCHS" \
   -DMOEBAL_BUILD_BENCH=ON "${extra[@]}" && ninja -C /tmp/probe-build moebal_core_tests moebal_cuda_tests \
   moebal_bench_probe moebal_bench_probe_cuda) >"$out/build.txt" 2>&1 &
cmake_pid=$!
python3 -m pip install --no-build-isolation --no-deps -q . >>"$out/build.txt" 2>&1 || { echo "pip FAILED"; tail -40 "$out/build.txt"; }
stamp "pip done"
wait $cmake_pid || { echo "C++ build FAILED"; grep -E "error|Error" -A3 "$out/build.txt" | head -60; }
stamp "C++ built"
{ /tmp/probe-build/tests/cpp/moebal_cuda_tests --gtest_filter='*Probe*' --gtest_brief=1; echo "cuda gtest rc=$?"
  /tmp/probe-build/tests/cpp/moebal_core_tests --gtest_filter='*Probe*' --gtest_brief=1; echo "core gtest rc=$?"
} >"$out/gtest.txt" 2>&1
tail -30 "$out/gtest.txt"
stamp "gtest done"
python3 -m pytest -q -rs tests/python/test_probe.py tests/python/test_ops.py >"$out/pytest.txt" 2>&1
echo "pytest rc=$?"; tail -25 "$out/pytest.txt"
stamp "pytest done"
timeout 120 /tmp/probe-build/bench/moebal_bench_probe_cuda 200 >"$out/bench_cuda.md" 2>&1; echo "cuda bench rc=$?"
cat "$out/bench_cuda.md"
timeout 120 taskset -c 3 /tmp/probe-build/bench/moebal_bench_probe 31 >"$out/bench_cpu.md" 2>&1; echo "cpu bench rc=$?"
cat "$out/bench_cpu.md"
stamp "all done"
