#!/usr/bin/env bash
# Device call 2 (2026-11-26), two H100s: NCCL dispatch with the back-to-back timing, default
# NCCL and with 32 channels, then the predictor kernel on GPU 0 against the measured dispatch.
set -u -o pipefail
REPO=$(pwd)
tar xzf .dev/cutlass.tgz -C /tmp
nvidia-smi --query-gpu=index,name,driver_version --format=csv | tee $OUT/log.txt
export CUTLASS_DIR=/tmp MOEBAL_CUDA_ARCHS=90a CMAKE_BUILD_PARALLEL_LEVEL=32
python3 -m pip install --no-build-isolation --no-deps -q . > /tmp/build.log 2>&1; echo "build rc=$?" | tee -a $OUT/log.txt
cd /tmp
python3 -c "import torch; print('torch', torch.__version__, 'nccl', torch.cuda.nccl.version())" | tee -a $OUT/log.txt
date -u | tee -a $OUT/log.txt
python3 -m pytest $REPO/tests/python/test_alltoall_bench.py -q -rfEs -p no:cacheprovider 2>&1 | tail -3 | tee -a $OUT/log.txt
for H in 4096 7168; do
  timeout 150 python3 $REPO/bench/alltoall.py --world 2 --tokens 16,128,1024,4096,8192,16384 --hidden $H --reps 30 --json $OUT/a2a_h$H.json 2>&1 | tee -a $OUT/log.txt
done
NCCL_MIN_NCHANNELS=32 NCCL_MAX_NCHANNELS=32 timeout 150 python3 $REPO/bench/alltoall.py --world 2 --tokens 1024,8192,16384 --hidden 4096 --reps 30 --json $OUT/a2a_h4096_ch32.json 2>&1 | tee -a $OUT/log.txt
date -u | tee -a $OUT/log.txt
for rep in 1 2; do
  timeout 200 python3 $REPO/bench/probe_predictor.py --refcheck --dispatch-json $OUT/a2a_h4096.json --json $OUT/pred_rep$rep.json 2>&1 | tee -a $OUT/log.txt
done
date -u | tee -a $OUT/log.txt
