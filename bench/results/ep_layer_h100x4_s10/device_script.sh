#!/usr/bin/env bash
set -u -o pipefail
REPO=$(pwd)
tar xzf .dev/cutlass.tgz -C /tmp
mkdir -p /tmp/gt && tar xzf .dev/googletest.tgz -C /tmp/gt
nvidia-smi --query-gpu=index,name,driver_version --format=csv | tee $OUT/log.txt
export CUTLASS_DIR=/tmp MOEBAL_CUDA_ARCHS=90a CMAKE_BUILD_PARALLEL_LEVEL=40
GT=/tmp/gt/googletest
( cmake -S . -B /tmp/b -G Ninja -DMOEBAL_CUDA=ON -DMOEBAL_CUDA_ARCHS=90a -DMOEBAL_CUDA_HOPPER_ARCHS=90a -DCUTLASS_DIR=/tmp -DGTEST_SOURCE_DIR=$GT > /tmp/cmake.log 2>&1 && ninja -C /tmp/b -j 24 moebal_cuda_tests > /tmp/ninja.log 2>&1; echo "ctest build rc=$?" >> $OUT/log.txt ) &
python3 -m pip install --no-build-isolation --no-deps -q . > /tmp/build.log 2>&1; echo "build rc=$?" | tee -a $OUT/log.txt
wait
tail -3 /tmp/ninja.log /tmp/cmake.log
cd /tmp
date -u | tee -a $OUT/log.txt
/tmp/b/tests/cpp/moebal_cuda_tests --gtest_filter='*Permute*:*MoeForward*:*DispatchLayout*:*ExpertFfn*' 2>&1 | tail -4 | tee -a $OUT/log.txt
python3 -m pytest $REPO/tests/python/test_moe_ops.py $REPO/tests/python/test_grouped_gemm.py $REPO/tests/python/test_distributed.py $REPO/tests/python/test_ep_bench.py -q -rfE -p no:cacheprovider -k "cuda or nccl or gpu" 2>&1 | tail -4 | tee -a $OUT/log.txt
date -u | tee -a $OUT/log.txt
timeout 120 python3 $REPO/.dev/ep_prof.py 2 > $OUT/prof_w2.txt 2>&1; echo "prof rc=$?" | tee -a $OUT/log.txt
date -u | tee -a $OUT/log.txt
N=$(python3 -c "import torch; print(torch.cuda.device_count())")
timeout 200 python3 $REPO/bench/ep_layer.py --world $N --exchange rows,dedup --reps 20 --json $OUT/ep_w${N}_2048x768.json 2>&1 | tee -a $OUT/log.txt
timeout 200 python3 $REPO/bench/ep_layer.py --world $N --expert-shape 4096,1536 --exchange rows,dedup --reps 20 --json $OUT/ep_w${N}_4096x1536.json 2>&1 | tee -a $OUT/log.txt
[ "$N" -gt 2 ] && timeout 150 python3 $REPO/bench/ep_layer.py --world 2 --exchange rows,dedup --reps 20 --json $OUT/ep_w2_2048x768.json 2>&1 | tee -a $OUT/log.txt
date -u | tee -a $OUT/log.txt
