#!/usr/bin/env bash
set -u -o pipefail
REPO=$(pwd)
tar xzf .dev/cutlass.tgz -C /tmp
nvidia-smi --query-gpu=index,name,driver_version --format=csv | tee $OUT/log.txt
export CUTLASS_DIR=/tmp MOEBAL_CUDA_ARCHS=90a CMAKE_BUILD_PARALLEL_LEVEL=64
python3 -m pip install --no-build-isolation --no-deps -q . > /tmp/build.log 2>&1; echo "build rc=$?" | tee -a $OUT/log.txt
cd /tmp
date -u | tee -a $OUT/log.txt
python3 -m pytest $REPO/tests/python/test_distributed.py $REPO/tests/python/test_ep_decode.py -q -rfE -p no:cacheprovider -k "gpu or nccl or graph" 2>&1 | tail -15 | tee -a $OUT/log.txt
date -u | tee -a $OUT/log.txt
N=$(python3 -c "import torch; print(torch.cuda.device_count())")
timeout 240 python3 $REPO/bench/ep_decode.py --world $N --json $OUT/ep_decode_w${N}_2048x768.json 2>&1 | tee -a $OUT/log.txt
date -u | tee -a $OUT/log.txt
timeout 150 python3 $REPO/bench/ep_decode.py --world $N --expert-shape 7168,2048 --tokens 1,8,32,128 --layers 2 --json $OUT/ep_decode_w${N}_7168x2048.json 2>&1 | tee -a $OUT/log.txt
date -u | tee -a $OUT/log.txt
