#!/usr/bin/env bash
# Device call (2026-11-27 00:00 UTC) on four GPUs of one host: build, the multi-GPU tests, measured models and links of all
# four, the NCCL dispatch over 4 and 2 ranks, and the predictor kernel against the 4-rank dispatch.
set -u -o pipefail
REPO=$(pwd)
tar xzf .dev/cutlass.tgz -C /tmp
nvidia-smi --query-gpu=index,name,memory.total,driver_version,clocks.max.sm --format=csv | tee $OUT/log.txt
nvidia-smi topo -m 2>&1 | head -8 | tee -a $OUT/log.txt
export CUTLASS_DIR=/tmp MOEBAL_CUDA_ARCHS=90a CMAKE_BUILD_PARALLEL_LEVEL=48
python3 -m pip install --no-build-isolation --no-deps -q . > /tmp/build.log 2>&1; echo "build rc=$?" | tee -a $OUT/log.txt
tail -3 /tmp/build.log
cd /tmp
python3 -c "import torch; print('torch', torch.__version__, 'nccl', torch.cuda.nccl.version(), 'gpus', torch.cuda.device_count())" | tee -a $OUT/log.txt
date -u | tee -a $OUT/log.txt
python3 -m pytest $REPO/tests/python/test_perf.py $REPO/tests/python/test_alltoall_bench.py -q -rfEs -p no:cacheprovider 2>&1 | tail -8 | tee -a $OUT/log.txt
date -u | tee -a $OUT/log.txt
timeout 200 python3 -m moebal profile --expert-shape 7168,2048 --devices 0,1,2,3 --links --out $OUT/perf4_deepseek-v3.json 2>&1 | tee -a $OUT/log.txt
date -u | tee -a $OUT/log.txt
for W in 4 2; do for H in 4096 7168; do
  timeout 150 python3 $REPO/bench/alltoall.py --world $W --tokens 16,128,1024,4096,8192,16384 --hidden $H --reps 30 --json $OUT/a2a_w${W}_h$H.json 2>&1 | tee -a $OUT/log.txt
done; done
date -u | tee -a $OUT/log.txt
for rep in 1 2; do
  timeout 200 python3 $REPO/bench/probe_predictor.py --refcheck --dispatch-json $OUT/a2a_w4_h4096.json --json $OUT/pred_w4_rep$rep.json 2>&1 | tee -a $OUT/log.txt
done
date -u | tee -a $OUT/log.txt
