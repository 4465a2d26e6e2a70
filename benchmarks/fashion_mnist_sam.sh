#!/usr/bin/env bash
# Late sharpness-aware minimisation on Fashion-MNIST (benchmarks/results/fashion-mnist.md, "late sharpness-aware
# minimisation"). First a plain run of MODEL for EPOCHS epochs with the `fashion-mnist` preset (the control); then,
# from its checkpoint after SAM_START - 1 epochs, one continuation per radius in RHOS that takes SAM steps
# (`--sam-rho R --sam-start-epoch SAM_START`) for the remaining epochs. A continuation is what one run with those
# flags would do (same checkpoint, same RNG states); its row's train time is the plain part's plus its own. The runs
# go one after another, each alone on the GPU, so their times count. Each command does what fits in BUDGET seconds
# and stops at an epoch end; repeat it on the same (warm) machine until every row is written:
#
#   MODEL=vmamba_nano EPOCHS=200 SAM_START=151 RHOS="0.05 0.2" BUDGET=570 bash benchmarks/fashion_mnist_sam.sh
#
# Results: $W/<name>/results.md (one row each: plain, sam<rho>), logs and eval JSONs beside them.
set -u
source "$(dirname "$0")/fashion_mnist_env.sh"
MODEL=${MODEL:-vmamba_nano}; EPOCHS=${EPOCHS:-200}; SAM_START=${SAM_START:-151}; RHOS=${RHOS:-"0.05 0.2"}
BUDGET=${BUDGET:-570}; R=${R:-build/sam-runs}; W=${W:-build/sam-out}; TRAIN_ARGS=${TRAIN_ARGS:-"--eval-every 10"}
COMPILE=${COMPILE-reduce-overhead}; DRIVER_ARGS=${DRIVER_ARGS:-}  # COMPILE= DRIVER_ARGS=--smoke: a CPU check
MIN_LEFT=${MIN_LEFT:-150}  # seconds a stage needs to be worth starting (a compilation and a few epochs)
mkdir -p "$W"

finished() { [ -f "$W/$1/results.json" ] && grep -q "\"model_name\": \"$1\"" "$W/$1/results.json"; }

# train NAME [vssm train flags]: continue (or start) run NAME until it finishes or the budget is spent
train() {
  local name=$1; shift
  local left=$(( BUDGET - SECONDS ))
  if [ "$left" -lt "$MIN_LEFT" ]; then echo "$name: ${left}s left, next command"; exit 75; fi
  local minutes; minutes=$(python3 -c "print(round(($left - 60) / 60, 2))")  # an epoch, the checkpoint, the evals
  echo "== $name: $MODEL $* (${left}s left)"
  python3 benchmarks/fashion_mnist_gpu.py --out "$W/$name" --runs-dir "$R" --data-dir "$VSSM_FASHION_MNIST_DIR" \
    --models "$name" --variant "$name=$MODEL" --epochs "$EPOCHS" --stop-after-minutes "$minutes" \
    ${COMPILE:+--compile-mode "$COMPILE"} $DRIVER_ARGS --tta --train-args "$TRAIN_ARGS --keep-last 1000 $*" \
    >> "$W/$name.driver.log" 2>&1
  local rc=$?
  tail -2 "$W/$name.driver.log"
  if [ $rc -eq 75 ]; then exit 75; fi
  if [ $rc -ne 0 ]; then echo "$name failed (exit $rc): $W/$name.driver.log"; exit $rc; fi
}

finished plain || train plain
fork=$(ls "$R"/plain/checkpoints/ckpt_e$(printf %04d $((SAM_START - 1)))_*.pth 2>/dev/null | head -1)
if [ -z "$fork" ]; then echo "no checkpoint after epoch $((SAM_START - 1)) in $R/plain/checkpoints"; exit 1; fi
for rho in $RHOS; do
  name=sam${rho//./}
  if finished "$name"; then continue; fi
  if [ -z "$(ls "$R/$name/checkpoints" 2>/dev/null)" ]; then
    mkdir -p "$R/$name/checkpoints" && cp "$fork" "$R/$name/checkpoints/"
  fi
  train "$name" --sam-rho "$rho" --sam-start-epoch "$SAM_START"
done
for f in "$W"/*/results.md; do tail -n +3 "$f" | grep '^|' | tail -1; done
