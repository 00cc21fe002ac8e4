#!/usr/bin/env bash
# One GPU run: build moebal (background) while the reference MoE trains, then GPU tests, capture +
# predictor training/evaluation, and the predictor-kernel benchmark. Results under $OUT.
# Usage (repo root = this worktree copy): OUT=/some/dir CORPUS=/path/to/routing-data bash tools/refmoe/device_run.sh
#   CUTLASS_DIR=/path/with/include: CUTLASS headers for the Hopper kernels (the device has no
#   nvidia-cutlass wheel); without them the CUDA build fails and the run falls back to CPU-only ops,
#   the predictors then running as plain torch on the GPU (accuracy figures are unaffected).
set -u -o pipefail
OUT=${OUT:?}
CORPUS=${CORPUS:?}
WORK=${WORK:-/tmp/refmoe}
REPO=$(pwd)
mkdir -p "$WORK"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/log.txt"
export MOEBAL_CUDA_ARCHS=${MOEBAL_CUDA_ARCHS:-90a} CMAKE_BUILD_PARALLEL_LEVEL=10
( python -m pip install --no-build-isolation -q . > "$WORK/build.log" 2>&1; rc=$?; echo "build rc=$rc" >> "$WORK/build.log"
  if [ $rc -ne 0 ]; then  # keep the run useful: CPU-only ops, predictors fall back to plain torch on the GPU
    MOEBAL_CUDA=OFF python -m pip install --no-build-isolation -q . >> "$WORK/build.log" 2>&1; echo "fallback build rc=$?" >> "$WORK/build.log"
  fi ) &
BUILD=$!
if [ -f "$WORK/model/config.json" ] && [ -n "${REUSE_MODEL:-}" ]; then
  echo "reusing the trained model in $WORK/model" | tee -a "$OUT/log.txt"
else
  python tools/refmoe/train.py --corpus "$CORPUS" --config "${CONFIG:-tools/refmoe/config.json}" --out "$WORK" 2>&1 \
    | grep -v -i warn | tee -a "$OUT/log.txt"
  echo "train rc=$?" | tee -a "$OUT/log.txt"
fi
wait $BUILD
grep -i -E "error|rc=" "$WORK/build.log" | tail -40 | tee -a "$OUT/log.txt"
( cd /tmp && python -c "import moebal, json; print(json.dumps(moebal.capabilities()))" ) 2>&1 | tee -a "$OUT/log.txt"  # installed moebal, not the source tree
if [ -z "${SKIP_PYTEST:-}" ]; then  # SKIP_PYTEST=1: leave the GPU to the evaluation
  ( cd /tmp && python -m pytest "$REPO/tests/python" -q -p no:cacheprovider > "$WORK/pytest.txt" 2>&1; echo "pytest rc=$?" >> "$WORK/pytest.txt" ) &
  TESTS=$!
else
  echo "pytest skipped (SKIP_PYTEST)" > "$WORK/pytest.txt"; TESTS=
fi
( cd /tmp && python "$REPO/tools/refmoe/run_eval.py" --corpus "$CORPUS" --model "$WORK/model" --out "$WORK/eval" --residual-dims 256,1024 ${EVAL_ARGS:---prequential 1024} ) 2>&1 \
  | grep -v -i warn | tee -a "$OUT/log.txt"
echo "eval rc=$?" | tee -a "$OUT/log.txt"
( cd /tmp && python "$REPO/bench/probe_predictor.py" --refcheck --json "$WORK/bench_probe.json" ) 2>&1 | tee -a "$OUT/log.txt"
[ -n "$TESTS" ] && wait $TESTS
tail -30 "$WORK/pytest.txt" | tee -a "$OUT/log.txt"
cp "$WORK/eval/pred_ids.npz" "$WORK/train_log.json" "$WORK/eval/eval_results.json" "$WORK/bench_probe.json" "$WORK/pytest.txt" "$OUT/" 2>/dev/null
tar cf "$OUT/artifacts.tar" -C "$WORK/eval" traces refmoe_predictor_sample.npz 2>/dev/null
ls -la "$OUT"
