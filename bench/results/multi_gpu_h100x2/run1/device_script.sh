#!/usr/bin/env bash
# Device call (2026-11-26) on two H100s of one host: build, the multi-GPU tests (profile on both
# devices, links, NCCL all-to-all), measured models of both GPUs with their links, and the NCCL
# dispatch measurement against the predictor benchmark's estimate.
set -u -o pipefail
REPO=$(pwd)
tar xzf .dev/cutlass.tgz -C /tmp
nvidia-smi --query-gpu=index,name,memory.total,driver_version,clocks.max.sm --format=csv | tee $OUT/log.txt
nvidia-smi topo -m 2>&1 | tee -a $OUT/log.txt
export CUTLASS_DIR=/tmp MOEBAL_CUDA_ARCHS=90a CMAKE_BUILD_PARALLEL_LEVEL=32
python3 -m pip install --no-build-isolation --no-deps -q . > /tmp/build.log 2>&1; echo "build rc=$?" | tee -a $OUT/log.txt
tail -5 /tmp/build.log
date -u | tee -a $OUT/log.txt
cd /tmp
python3 -m pytest $REPO/tests/python/test_perf.py $REPO/tests/python/test_alltoall_bench.py -q -rfEs -p no:cacheprovider 2>&1 | tail -30 | tee -a $OUT/log.txt
date -u | tee -a $OUT/log.txt
for s in qwen3-30b-a3b:2048,768 deepseek-v3:7168,2048; do
  name=${s%%:*}; shape=${s#*:}
  timeout 150 python3 -m moebal profile --expert-shape $shape --devices 0,1 --links --out $OUT/perf2_${name}.json 2>&1 | tee -a $OUT/log.txt
  date -u | tee -a $OUT/log.txt
done
for H in 4096 7168; do
  timeout 150 python3 $REPO/bench/alltoall.py --world 2 --tokens 16,128,1024,4096,8192,16384 --hidden $H --reps 30 --json $OUT/a2a_h$H.json 2>&1 | tee -a $OUT/log.txt
done
date -u | tee -a $OUT/log.txt
