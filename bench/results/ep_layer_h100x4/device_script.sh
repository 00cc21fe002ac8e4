#!/usr/bin/env bash
# Device call on four GPUs: build, the multi-GPU tests of moebal.distributed and the benchmarks, then
# the expert-parallel layer benchmark on real routing (4 and 2 ranks, two expert sizes).
set -u -o pipefail
REPO=$(pwd)
tar xzf .dev/cutlass.tgz -C /tmp
nvidia-smi --query-gpu=index,name,driver_version --format=csv | tee $OUT/log.txt
export CUTLASS_DIR=/tmp MOEBAL_CUDA_ARCHS=90a CMAKE_BUILD_PARALLEL_LEVEL=48
python3 -m pip install --no-build-isolation --no-deps -q . > /tmp/build.log 2>&1; echo "build rc=$?" | tee -a $OUT/log.txt
cd /tmp
date -u | tee -a $OUT/log.txt
python3 -m pytest $REPO/tests/python/test_distributed.py $REPO/tests/python/test_ep_bench.py $REPO/tests/python/test_alltoall_bench.py -q -rfEs -p no:cacheprovider 2>&1 | tail -6 | tee -a $OUT/log.txt
date -u | tee -a $OUT/log.txt
timeout 150 python3 $REPO/bench/ep_layer.py --world 4 --json $OUT/ep_w4_2048x768.json 2>&1 | tee -a $OUT/log.txt
timeout 150 python3 $REPO/bench/ep_layer.py --world 4 --expert-shape 4096,1536 --json $OUT/ep_w4_4096x1536.json 2>&1 | tee -a $OUT/log.txt
timeout 150 python3 $REPO/bench/ep_layer.py --world 2 --json $OUT/ep_w2_2048x768.json 2>&1 | tee -a $OUT/log.txt
date -u | tee -a $OUT/log.txt
