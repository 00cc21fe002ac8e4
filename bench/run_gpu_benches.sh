#!/usr/bin/env bash
# Every GPU benchmark of moebal in one pass, after scripts/gpu_check.sh built build/gpu and installed
# the package. Usage (repository root): bash bench/run_gpu_benches.sh RESULTS_DIR
#   BENCH_QUICK=1   a subset of shapes (for a short device lease)
set -uo pipefail
out=${1:?usage: run_gpu_benches.sh RESULTS_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0
bench() { local name=$1; shift; echo "=== $name"; timeout "${BENCH_TIMEOUT:-240}" "$@" >"$out/$name.txt" 2>&1 || { echo "FAILED ($?): $*"; status=1; }; tail -n 40 "$out/$name.txt"; }
if [ -n "${BENCH_QUICK:-}" ]; then
  gemm_args=(--tokens 1,128,4096 --variants "")
  dp_args=(--tokens 1,128,4096)
else
  gemm_args=()
  dp_args=()
fi
bench gemm python3 bench/kernels_gemm.py --json "$out/gemm.json" "${gemm_args[@]}"
[ -f "$out/gemm.json" ] && python3 bench/kernels_gemm_report.py "$out/gemm.json" >"$out/gemm_report.md" 2>&1
bench dataplane python3 bench/kernels_dataplane.py --json "$out/dataplane.json" --md "$out/dataplane.md" "${dp_args[@]}"
bench routerfuse python3 bench/kernels_routerfuse.py --json "$out/routerfuse.json" --md "$out/routerfuse.md"
bench probe_cuda build/gpu/bench/moebal_bench_probe_cuda 200
bench assign_cuda build/gpu/bench/moebal_bench_assign_cuda 8192 8 200
ngpu=$(python3 -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "${ngpu:-0}" -ge 2 ]; then  # a measured NCCL dispatch for the predictor to be compared with
  bench alltoall python3 bench/alltoall.py --world "$ngpu" --hidden 4096 --json "$out/alltoall.json"
  bench predictor python3 bench/probe_predictor.py --refcheck --dispatch-json "$out/alltoall.json"
  bench ep_layer python3 bench/ep_layer.py --world "$ngpu" --exchange rows,dedup --json "$out/ep_layer.json"
  bench ep_decode python3 bench/ep_decode.py --world "$ngpu" --json "$out/ep_decode.json"
else
  bench predictor python3 bench/probe_predictor.py --refcheck
fi
exit $status
