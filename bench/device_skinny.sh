#!/usr/bin/env bash
# One device pass for the skinny grouped GEMM / fused FFN work (bench/results/skinny.md): install the
# package for sm_90a, the grouped-GEMM / FFN / MoE googletest suites, tests/python/test_grouped_gemm.py
# (+ test_moe_ops.py), the skinny tuning sweep (bench/skinny_sweep.py), then bench/kernels_gemm.py
# with the forced-kernel columns under the sweep's best setting.
# Usage (repository root): OUT=dir [GTEST_BIN=prebuilt moebal_cuda_tests] [CUTLASS_DIR=..]
#   [GTEST_SOURCE_DIR=..] [BENCH_ARGS="--tokens 1,16,128"] bash bench/device_skinny.sh
# shellcheck source=bench/device_preamble.sh
. "$(dirname "$0")/device_preamble.sh"

# googletest binary: prebuilt if it runs here, else build it beside the pip install.
gtest=${GTEST_BIN:-}
if [ -z "$gtest" ] || ! "$gtest" --gtest_list_tests >/dev/null 2>&1; then
  stamp "building moebal_cuda_tests"
  extra=()
  [ -n "${CUTLASS_DIR:-}" ] && extra+=("-DCUTLASS_DIR=$CUTLASS_DIR")
  [ -n "${GTEST_SOURCE_DIR:-}" ] && extra+=("-DGTEST_SOURCE_DIR=$GTEST_SOURCE_DIR")
  ( cmake -S . -B /tmp/b-skinny -G Ninja -DMOEBAL_CUDA=ON -DMOEBAL_CUDA_ARCHS=90a -DMOEBAL_CUDA_HOPPER_ARCHS=90a \
      "${extra[@]}" && ninja -C /tmp/b-skinny moebal_cuda_tests ) >"$out/build.txt" 2>&1 &
  build_pid=$!
  gtest=/tmp/b-skinny/tests/cpp/moebal_cuda_tests
else
  build_pid=
fi
stamp "pip install"
python3 -m pip install --no-build-isolation --no-deps -q . >"$out/pip.txt" 2>&1 || { echo "FAILED: pip"; tail -40 "$out/pip.txt"; status=1; }
if [ -n "$build_pid" ]; then
  wait "$build_pid" || { echo "FAILED: C++ build"; grep -E "error" -A3 "$out/build.txt" | head -40; status=1; }
fi

stamp googletest
"$gtest" --gtest_filter='*GroupedGemm*:*ExpertFfn*' --gtest_brief=1 \
  >"$out/gtest.txt" 2>&1 || status=1
tail -n 30 "$out/gtest.txt"

stamp pytest
python3 -m pytest -q -rs -x tests/python/test_grouped_gemm.py tests/python/test_moe_ops.py >"$out/pytest.txt" 2>&1 || status=1
tail -n 25 "$out/pytest.txt"

stamp "skinny tuning sweep"
timeout 120 python3 bench/skinny_sweep.py --json "$out/sweep.json" --best-env /tmp/skinny_best.sh >"$out/sweep.md" 2>&1 \
  || { echo "FAILED: sweep"; status=1; }
cat "$out/sweep.md"
# The table below runs with the best setting of the sweep (the library defaults are then set to it).
[ -f /tmp/skinny_best.sh ] && . /tmp/skinny_best.sh && env | grep MOEBAL_SKINNY

stamp bench
# shellcheck disable=SC2086
timeout 200 python3 bench/kernels_gemm.py --variants forced --json "$out/skinny.json" ${BENCH_ARGS:---tokens 1,16,128} \
  >"$out/bench.txt" 2>&1 || { echo "FAILED: bench"; status=1; }
grep -E "^#|ERROR" "$out/bench.txt"
[ -f "$out/skinny.json" ] && python3 bench/kernels_gemm_report.py --skinny "$out/skinny.json" >"$out/skinny_report.md" 2>&1
cat "$out/skinny_report.md" 2>/dev/null
stamp "done (status $status)"
exit $status
