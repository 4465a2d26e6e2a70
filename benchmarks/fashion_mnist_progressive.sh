#!/usr/bin/env bash
# Progressive resizing on Fashion-MNIST (benchmarks/results/fashion-mnist.md, "Progressive resizing"): the preset's
# msvmambav3_nano trains LOW_MIN minutes at 64 px (16x16 tokens), then HIGH_MIN minutes at HIGH px from those weights
# (112 px: 28x28 tokens, the WRN's grid) with a short schedule of its own, LOW_MIN + HIGH_MIN = the benchmark's 14.5.
# The low-resolution phase needs two device commands (each under 10 minutes): run this script again on the same warm
# machine while it exits with 75. The second call finishes it, evaluates its weights at the higher sizes as they are
# (no fine-tuning), then runs the high-resolution phase.
#
#   SEED=0 bash benchmarks/fashion_mnist_progressive.sh          # twice, on one warm machine
#   SMOKE=1 R=/tmp/p O=/tmp/o bash benchmarks/fashion_mnist_progressive.sh   # a CPU check of the script (tiny runs)
set -u
source "$(dirname "$0")/fashion_mnist_env.sh"
SEED=${SEED:-0}; LOW_MIN=${LOW_MIN:-11}; HIGH_MIN=${HIGH_MIN:-3.5}; HIGH=${HIGH:-112}; HIGH_LR=${HIGH_LR:-5e-4}
R=${R:-build/progressive}; O=${O:-${OUT:-build/progressive-out}}
DRIVER=(python3 benchmarks/fashion_mnist_gpu.py --runs-dir "$R" --data-dir "$VSSM_FASHION_MNIST_DIR" --tta)
if [ -n "${SMOKE:-}" ]; then DRIVER+=(--smoke); else DRIVER+=(--compile-mode reduce-overhead); fi

"${DRIVER[@]}" --out "$O/low" --models low --variant low=msvmambav3_nano --img-size 64 --epochs 1000 \
  --stop-after-minutes 8.6 --train-args "--eval-every 10 --time-budget $LOW_MIN --seed $SEED"
rc=$?; [ $rc -ne 0 ] && exit $rc

for size in 80 96 "$HIGH"; do  # the low-resolution weights at higher sizes, as they are
  python3 -m vssm eval --checkpoint "$R/low/model.safetensors" --img-size "$size" --json "$O/low-at-$size.json" \
    --print-freq 0 --batch-size 1000 ${SMOKE:+--val-subset 256} | grep -F "Acc@1"
done
"${DRIVER[@]}" --out "$O/high" --models high --variant high=msvmambav3_nano --img-size "$HIGH" --epochs 1000 \
  --train-args "--eval-every 4 --time-budget $HIGH_MIN --seed $SEED --init-checkpoint $R/low/model.safetensors \
--lr $HIGH_LR --warmup-epochs 1"
