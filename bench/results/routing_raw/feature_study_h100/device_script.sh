#!/usr/bin/env bash
# One call: train the reference MoE (config_930), then tools/refmoe/feature_study.py at D=256 (and D=1024 if time is left).
set -u -o pipefail
START=$(date +%s)
OUT=${OUT:?}; REPO=$(pwd); WORK=/tmp/refmoe; mkdir -p $WORK
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/log.txt
date -u | tee -a $OUT/log.txt
( MOEBAL_CUDA=OFF python -m pip install --no-build-isolation --no-deps -q . > $WORK/build.log 2>&1; echo "build rc=$?" >> $WORK/build.log ) &
B=$!
python tools/refmoe/train.py --corpus $PWD/.dev/routing-data --config .dev/config_930.json --out $WORK 2>&1 | grep -v -i warn | tail -3 | tee -a $OUT/log.txt
wait $B; tail -1 $WORK/build.log | tee -a $OUT/log.txt
date -u | tee -a $OUT/log.txt
cd /tmp
timeout 300 python $REPO/tools/refmoe/feature_study.py --corpus $REPO/.dev/routing-data --model $WORK/model --dim 256 --json $OUT/fs_d256.json 2>&1 | grep -v -i warn | tee -a $OUT/log.txt
date -u | tee -a $OUT/log.txt
LEFT=$(( 580 - ($(date +%s) - START) )); echo "time left for D=1024: $LEFT s" | tee -a $OUT/log.txt
[ $LEFT -gt 60 ] && timeout $LEFT python $REPO/tools/refmoe/feature_study.py --corpus $REPO/.dev/routing-data --model $WORK/model --dim 1024 --json $OUT/fs_d1024.json 2>&1 | grep -v -i warn | tee -a $OUT/log.txt
date -u | tee -a $OUT/log.txt
