#!/usr/bin/env bash
# One call: a reference MoE with 128 experts (top-8, else the run-5 recipe), then next_gate and the
# offline probe (D=1024) on it with tools/refmoe/feature_study.py.
set -u -o pipefail
OUT=${OUT:?}; REPO=$(pwd); WORK=/tmp/refmoe; mkdir -p $WORK
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/log.txt
date -u | tee -a $OUT/log.txt
( MOEBAL_CUDA=OFF python -m pip install --no-build-isolation --no-deps -q . > $WORK/build.log 2>&1; echo "build rc=$?" >> $WORK/build.log ) &
B=$!
python tools/refmoe/train.py --corpus $PWD/.dev/routing-data --config .dev/config_930_e128.json --out $WORK 2>&1 | grep -v -i warn | tail -3 | tee -a $OUT/log.txt
wait $B; tail -1 $WORK/build.log | tee -a $OUT/log.txt
cp $WORK/train_log.json $OUT/ 2>/dev/null
date -u | tee -a $OUT/log.txt
cd /tmp
timeout 200 python $REPO/tools/refmoe/feature_study.py --corpus $REPO/.dev/routing-data --model $WORK/model --dim 1024 \
  --variants next_gate,probe --json $OUT/fs_e128_d1024.json 2>&1 | grep -v -i warn | tee -a $OUT/log.txt
date -u | tee -a $OUT/log.txt
