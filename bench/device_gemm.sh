#!/usr/bin/env bash
# One device call: build moebal for sm_90a, run the grouped-GEMM C++ and Python GPU tests, then
# bench/kernels_gemm.py. Usage (from the repo root on the GPU machine):
#   OUT=/some/dir CUTLASS_DIR=/path GTEST_BIN=/path/moebal_cuda_tests bash bench/device_gemm.sh
set -u -o pipefail
OUT=${OUT:-/tmp/gemm-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu.txt"
t0=$(date +%s)
MOEBAL_CUDA_ARCHS=90a CMAKE_BUILD_PARALLEL_LEVEL=16 python3 -m pip install --no-deps --no-build-isolation -q . >"$OUT/build.txt" 2>&1 \
  || { tail -40 "$OUT/build.txt"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
if [ -n "${GTEST_BIN:-}" ]; then
  timeout 120 "$GTEST_BIN" --gtest_brief=1 >"$OUT/gtest.txt" 2>&1; echo "gtest rc=$?"; tail -15 "$OUT/gtest.txt"
fi
(cd /tmp && timeout 150 python3 -m pytest -q --maxfail=8 "$OLDPWD/tests/python/test_grouped_gemm.py" >"$OUT/pytest.txt" 2>&1); echo "pytest rc=$?"
tail -8 "$OUT/pytest.txt"
timeout "${BENCH_TIMEOUT:-240}" python3 bench/kernels_gemm.py --json "$OUT/gemm.json" ${BENCH_ARGS:-} >"$OUT/bench.txt" 2>&1
echo "bench rc=$?"; grep -E "^#|ERROR" "$OUT/bench.txt" | head -20
echo "total: $(( $(date +%s) - t0 )) s"
