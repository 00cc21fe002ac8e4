#!/usr/bin/env bash
# One device pass for the gemv decode kernel (bench/results/gemv.md): install the package for sm_90a,
# the grouped-GEMM / FFN googletest suites (prebuilt binary if it runs, else built here),
# tests/python/test_grouped_gemm.py, bench/kernels_gemm.py with the forced-kernel columns (gemv beside
# every other kernel and torch grouped_mm), then the gemv sweep (bench/gemv_sweep.py).
# Usage (repository root): OUT=dir [GTEST_BIN=prebuilt moebal_cuda_tests] [CUTLASS_DIR=..]
#   [GTEST_SOURCE_DIR=..] [BENCH_ARGS="--tokens 1,16"] [SWEEP_ARGS="--tokens 1"]
#   [GTEST_FILTER='*GroupedGemm*:*ExpertFfn*'] [PYTEST_FILES="tests/python/a.py b.py"] [PYTEST_K="gemv or auto"]
#   [VARIANTS=forced] [SWEEP=0 (no gemv sweep)] bash bench/device_gemv.sh
# shellcheck source=bench/device_preamble.sh
. "$(dirname "$0")/device_preamble.sh"

stamp "pip install (background)"
python3 -m pip install --no-build-isolation --no-deps -q . >/tmp/pip.txt 2>&1 &
pip_pid=$!
gtest=${GTEST_BIN:-}
if [ -n "$gtest" ] && "$gtest" --gtest_list_tests >/dev/null 2>&1; then
  stamp "googletest (prebuilt)"
  "$gtest" --gtest_filter="${GTEST_FILTER:-*GroupedGemm*:*ExpertFfn*}" --gtest_brief=1 >"$out/gtest.txt" 2>&1 || status=1
  tail -n 15 "$out/gtest.txt"
  gtest_done=1
else
  gtest_done=
fi
wait "$pip_pid" || { echo "FAILED: pip"; tail -40 /tmp/pip.txt; status=1; }
if [ -z "$gtest_done" ]; then
  stamp "building moebal_cuda_tests"
  extra=()
  [ -n "${CUTLASS_DIR:-}" ] && extra+=("-DCUTLASS_DIR=$CUTLASS_DIR")
  [ -n "${GTEST_SOURCE_DIR:-}" ] && extra+=("-DGTEST_SOURCE_DIR=$GTEST_SOURCE_DIR")
  if cmake -S . -B /tmp/b-gemv -G Ninja -DMOEBAL_CUDA=ON -DMOEBAL_CUDA_ARCHS=90a -DMOEBAL_CUDA_HOPPER_ARCHS=90a \
      "${extra[@]}" >/tmp/build.txt 2>&1 && ninja -C /tmp/b-gemv moebal_cuda_tests >>/tmp/build.txt 2>&1; then
    stamp googletest
    /tmp/b-gemv/tests/cpp/moebal_cuda_tests --gtest_filter="${GTEST_FILTER:-*GroupedGemm*:*ExpertFfn*}" --gtest_brief=1 \
      >"$out/gtest.txt" 2>&1 || status=1
    tail -n 15 "$out/gtest.txt"
  else
    echo "FAILED: C++ build"; grep -E "error" -A3 /tmp/build.txt | head -40; status=1
  fi
fi

stamp pytest
# shellcheck disable=SC2086
python3 -m pytest -q -rs ${PYTEST_FILES:-tests/python/test_grouped_gemm.py} ${PYTEST_K:+-k "$PYTEST_K"} >"$out/pytest.txt" 2>&1 || status=1
tail -n 12 "$out/pytest.txt"

stamp bench
# shellcheck disable=SC2086
timeout ${BENCH_TIMEOUT:-200} python3 bench/kernels_gemm.py --variants "${VARIANTS-forced}" --json "$out/gemv.json" \
  ${BENCH_ARGS:---tokens 1,16} >"$out/bench.txt" 2>&1 || { echo "FAILED: bench"; status=1; }
grep -E "^#|ERROR" "$out/bench.txt"
[ -f "$out/gemv.json" ] && python3 bench/kernels_gemm_report.py "$out/gemv.json" >"$out/gemm_report.md" 2>&1
if [ "${SWEEP:-1}" = 1 ]; then
  stamp "gemv sweep"
  # shellcheck disable=SC2086
  timeout ${SWEEP_TIMEOUT:-90} python3 bench/gemv_sweep.py --json "$out/sweep.json" ${SWEEP_ARGS:---tokens 1} >"$out/sweep.md" 2>&1 \
    || { echo "FAILED: sweep"; status=1; }
  cat "$out/sweep.md"
fi

stamp "done (status $status)"
exit $status
