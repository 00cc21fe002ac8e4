#!/usr/bin/env bash
# GPU run of the grace component: build (sm_90a), CUDA assignment tests (googletest + pytest),
# assignment kernel timing (8192 tokens x top-8) and bench/grace.py. Usage, from the repo root:
#   GTEST_SOURCE_DIR=/path/to/googletest bash bench/grace_device.sh OUTDIR
# (MOEBAL_JOBS: ninja jobs, default 8; CMAKE_BUILD_PARALLEL_LEVEL: jobs of the pip build)
set -uo pipefail
out=${1:-grace_device_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MOEBAL_CUDA_ARCHS=${MOEBAL_CUDA_ARCHS:-90a} CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-8}
status=0
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/device.txt"
extra=()
[ -n "${GTEST_SOURCE_DIR:-}" ] && extra+=("-DGTEST_SOURCE_DIR=$GTEST_SOURCE_DIR")
# C++ build and the Python package build run side by side (16 cores).
( cmake -S . -B build/grace-gpu -G Ninja -DMOEBAL_CUDA=ON -DMOEBAL_CUDA_ARCHS="$MOEBAL_CUDA_ARCHS" "${extra[@]}" \
  && ninja -C build/grace-gpu -j${MOEBAL_JOBS:-8} moebal_cuda_tests moebal_bench_assign_cuda moebal_bench_assign ) >"$out/cmake.txt" 2>&1 &
cpp=$!
python3 -m pip install --no-build-isolation --no-deps -q . >"$out/pip.txt" 2>&1 || { echo "FAILED: pip install"; tail -30 "$out/pip.txt"; status=1; }
wait $cpp || { echo "FAILED: C++ build"; tail -30 "$out/cmake.txt"; status=1; }
if [ -x build/grace-gpu/tests/cpp/moebal_cuda_tests ]; then
  build/grace-gpu/tests/cpp/moebal_cuda_tests --gtest_filter='*Assign*' >"$out/cuda_tests.txt" 2>&1 || status=1
  tail -3 "$out/cuda_tests.txt"
  build/grace-gpu/bench/moebal_bench_assign_cuda 8192 8 200 | tee "$out/bench_assign_cuda.txt" || status=1
  build/grace-gpu/bench/moebal_bench_assign 8192 8 30 | tee "$out/bench_assign_cpu.txt"
fi
(cd /tmp && python3 -m pytest -q -rs "$OLDPWD/tests/python/test_assign_ops.py" "$OLDPWD/tests/python/test_grace.py") \
  >"$out/pytest.txt" 2>&1 || status=1
tail -3 "$out/pytest.txt"
python3 bench/grace.py --out "$out/grace.md" >"$out/grace_bench.txt" 2>&1 || status=1
tail -8 "$out/grace.md"
echo "status $status"
exit $status
