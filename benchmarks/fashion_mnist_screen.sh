#!/usr/bin/env bash
# Screens on Fashion-MNIST: several runs of about vmamba_nano's size trained side by side on one GPU with the
# `fashion-mnist` preset for a short schedule (benchmarks/results/fashion-mnist.md, "Architecture screen"). SCREEN
# picks the list: `arch` (default) changes the model's shape, `batch` the batch size (lr scaled by the square root of
# the batch ratio, EMA decay kept at the same horizon in epochs), `opt` the optimizer (msvmambav3_nano with SGD,
# Nesterov momentum 0.9 and weight decay 5e-4 at five learning rates, unscaled by the batch), `reg` the
# regularisation of msvmambav3_nano (weight decay 0.2, stochastic depth 0.3, shifts of up to 4 px), `lr` AdamW's peak
# learning rate for msvmambav3_nano (half and twice the preset's 2e-3; batch 512, so no scaling), `hybrid` the
# MSVMambav3 block behind one or two stages of dense 3x3 conv blocks at the full 28x28 resolution, `wrn` the WRN-40-4
# layout (28x28 and 14x14 conv groups of 6 blocks, widths 64 and 128) with MSVMambav3 blocks as its 7x7 group, beside
# msvmambav3_nano on a 30x30 token grid (patch 2 at 28 px). An entry is
# NAME=MODEL[:JSON kwargs][|vssm train flags]; the flags after `|` are appended to --train-args. The runs share the
# GPU, so their speeds are not comparable; their accuracies are. Each run stops at the first epoch end after STOP
# minutes; repeat the same command on the same (warm) machine until every run has finished.
#
#   EPOCHS=72 STOP=8 bash benchmarks/fashion_mnist_screen.sh                 # all variants of the arch screen
#   ONLY="ctrl msv3" bash benchmarks/fashion_mnist_screen.sh                 # continue two of them only
#   SCREEN=batch EPOCHS=72 STOP=8.3 bash benchmarks/fashion_mnist_screen.sh  # the batch screen (b256, b128)
#   SCREEN=opt bash benchmarks/fashion_mnist_screen.sh                       # the optimizer screen (SGD, lr 0.025-0.4)
#   SCREEN=reg bash benchmarks/fashion_mnist_screen.sh                       # the regularisation screen
#   SCREEN=lr bash benchmarks/fashion_mnist_screen.sh                        # AdamW's learning rate (1e-3, 4e-3)
#   SCREEN=hybrid bash benchmarks/fashion_mnist_screen.sh                    # conv stages at 28x28 (conv_stages)
#   SCREEN=wrn bash benchmarks/fashion_mnist_screen.sh                       # the WRN's layout, the 30x30 token grid
#   GPU_TESTS=1 bash ...                                                     # also run `pytest -m gpu` meanwhile
#   COMPILE= DRIVER_ARGS=--smoke R=/tmp/r W=/tmp/w bash ...                  # a CPU check of the script (tiny runs)
#
# Results: $W/<name>/results.md (table row after the last epoch), $R/<name>/log.jsonl (every epoch), R defaulting to
# build/screen-runs; with $OUT set, the logs are packed into $OUT/screen.tgz.
set -u
source "$(dirname "$0")/fashion_mnist_env.sh"
EPOCHS=${EPOCHS:-72}; STOP=${STOP:-8}; ONLY=${ONLY:-}; W=${W:-build/screen-out}; R=${R:-build/screen-runs}
SCREEN=${SCREEN:-arch}; COMPILE=${COMPILE-reduce-overhead}; DRIVER_ARGS=${DRIVER_ARGS:-}
mkdir -p "$W"
case "$SCREEN" in
  arch) VARIANTS=(
    'ctrl=vmamba_nano'
    'msv3=msvmambav3_tiny_224:{"dims":[96,192,384],"depths":[2,4,4]}'  # = msvmambav3_nano
    'd266=vmamba_nano:{"dims":[80,160,320],"depths":[2,6,6]}'
    'd444=vmamba_nano:{"depths":[4,4,4]}'
  ) ;;
  batch) VARIANTS=(  # the control (batch 512, lr 2e-3, EMA 0.999) is the arch screen's ctrl
    'b256=vmamba_nano|--batch-size 256 --lr 2.828e-3 --ema-decay 0.9995'  # effective lr 1.414e-3 (lr_base_batch 512)
    'b128=vmamba_nano|--batch-size 128 --lr 4e-3 --ema-decay 0.99975'     # effective lr 1e-3
  ) ;;
  opt) SGD='msvmambav3_nano|--opt sgd --momentum 0.9 --weight-decay 5e-4 --lr-base-batch 0'
    VARIANTS=(  # the control (AdamW 2e-3, weight decay 0.05) is the arch screen's msv3
    "sgd025=$SGD --lr 0.025" "sgd05=$SGD --lr 0.05" "sgd1=$SGD --lr 0.1" "sgd2=$SGD --lr 0.2" "sgd4=$SGD --lr 0.4"
  ) ;;
  reg) VARIANTS=(  # the control (weight decay 0.05, drop path 0.2, translate 3) is the arch screen's msv3
    'wd02=msvmambav3_nano|--weight-decay 0.2' 'dp03=msvmambav3_nano|--drop-path 0.3'
    'tr4=msvmambav3_nano|--translate 4'
  ) ;;
  lr) VARIANTS=(  # the control (AdamW 2e-3) is the arch screen's msv3
    'lr1e3=msvmambav3_nano|--lr 1e-3' 'lr4e3=msvmambav3_nano|--lr 4e-3'
  ) ;;
  hybrid) H=msvmambav3_tiny_224; T='"conv_stages"'; P='"patch_size":1'
    VARIANTS=(  # the control (msvmambav3_nano at 64 px) is the arch and lr screens' msv3; these run at 28 px
    "hyb1=$H:{\"dims\":[48,96,192,384],\"depths\":[3,2,4,4],$T:1,$P}|--img-size 28"
    "hyb1w=$H:{\"dims\":[64,96,192,384],\"depths\":[4,2,4,4],$T:1,$P}|--img-size 28"
    "hyb2=$H:{\"dims\":[64,128,256,384],\"depths\":[3,3,4,2],$T:2,$P}|--img-size 28"
  ) ;;
  wrn) H=msvmambav3_tiny_224; W3='"conv_stages":2,"patch_size":1,"dims":[64,128,256]'
    VARIANTS=(  # the controls are msvmambav3_nano at 64 px (arch screen's msv3) and WRN-40-4 at 72 epochs
    'p2=msvmambav3_nano:{"patch_size":2}|--img-size 28'
    "wrn666=$H:{$W3,\"depths\":[6,6,6]}|--img-size 28"
    "wrn668=$H:{$W3,\"depths\":[6,6,8]}|--img-size 28"
  ) ;;
  *) echo "SCREEN must be arch, batch, opt, reg, lr, hybrid or wrn, got '$SCREEN'"; exit 2 ;;
esac
for v in "${VARIANTS[@]}"; do
  n=${v%%=*}; spec=${v%%|*}; extra=; if [[ $v == *"|"* ]]; then extra=" ${v#*|}"; fi
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $n "* ]]; then continue; fi
  python3 benchmarks/fashion_mnist_gpu.py --out "$W/$n" --runs-dir "$R" \
    --data-dir "$VSSM_FASHION_MNIST_DIR" --models "$n" --variant "$spec" --epochs "$EPOCHS" \
    --stop-after-minutes "$STOP" ${COMPILE:+--compile-mode "$COMPILE"} $DRIVER_ARGS \
    --train-args "--eval-every 8$extra" > "$W/$n.driver.log" 2>&1 &
done
if [ -n "${GPU_TESTS:-}" ]; then
  timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -p no:cacheprovider -m gpu --durations=15 tests/ \
    > "$W/gpu-tests.log" 2>&1
  echo "gpu tests rc=$?" >> "$W/gpu-tests.log"
  tail -25 "$W/gpu-tests.log"
fi
wait
for v in "${VARIANTS[@]}"; do
  n=${v%%=*}
  echo "== $n (epoch, EMA top-1, raw top-1, train loss, img/s)"
  grep -h '"type": "epoch"' "$R/$n/log.jsonl" 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    if r.get("val_acc1") is not None:
        print(r["epoch"], r.get("ema_val_acc1"), r["val_acc1"], round(r["train_loss"], 4), int(r["img_per_s"]))' | tail -10
  tail -3 "$W/$n.driver.log"
done
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/screen.tgz" "$W" "$R"/*/log.jsonl "$R"/*/summary.json "$R"/*/eval*.json 2>/dev/null
fi
