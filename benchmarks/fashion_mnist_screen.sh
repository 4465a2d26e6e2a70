#!/usr/bin/env bash
# Architecture screen on Fashion-MNIST: several model shapes of about vmamba_nano's size trained side by side on one
# GPU with the `fashion-mnist` preset for a short schedule (benchmarks/results/fashion-mnist.md, "Architecture screen").
# The runs share the GPU, so their speeds are not comparable; their accuracies are. Each run stops at the first epoch
# end after STOP minutes; repeat the same command on the same (warm) machine until every run has finished.
#
#   EPOCHS=72 STOP=8 bash benchmarks/fashion_mnist_screen.sh                 # all variants
#   ONLY="ctrl msv3" bash benchmarks/fashion_mnist_screen.sh                 # continue two of them only
#   GPU_TESTS=1 bash ...                                                     # also run `pytest -m gpu` meanwhile
#
# Results: $W/<name>/results.md (table row after the last epoch), build/screen-runs/<name>/log.jsonl (every epoch).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-.}
export VSSM_FASHION_MNIST_DIR=${VSSM_FASHION_MNIST_DIR:-$PWD/build/fashion-mnist}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/build/inductor}
EPOCHS=${EPOCHS:-72}; STOP=${STOP:-8}; ONLY=${ONLY:-}; W=${W:-build/screen-out}
mkdir -p "$W"
VARIANTS=(
  'ctrl=vmamba_nano'
  'msv3=msvmambav3_tiny_224:{"dims":[96,192,384],"depths":[2,4,4]}'  # = msvmambav3_nano
  'd266=vmamba_nano:{"dims":[80,160,320],"depths":[2,6,6]}'
  'd444=vmamba_nano:{"depths":[4,4,4]}'
)
for v in "${VARIANTS[@]}"; do
  n=${v%%=*}
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $n "* ]]; then continue; fi
  python3 benchmarks/fashion_mnist_gpu.py --out "$W/$n" --runs-dir build/screen-runs \
    --data-dir "$VSSM_FASHION_MNIST_DIR" --models "$n" --variant "$v" --epochs "$EPOCHS" \
    --stop-after-minutes "$STOP" --compile-mode reduce-overhead --train-args "--eval-every 8" \
    > "$W/$n.driver.log" 2>&1 &
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
  grep -h '"type": "epoch"' "build/screen-runs/$n/log.jsonl" 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    if r.get("val_acc1") is not None:
        print(r["epoch"], r.get("ema_val_acc1"), r["val_acc1"], round(r["train_loss"], 4), int(r["img_per_s"]))' | tail -10
  tail -3 "$W/$n.driver.log"
done
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/screen.tgz" "$W" build/screen-runs/*/log.jsonl build/screen-runs/*/summary.json \
    build/screen-runs/*/eval*.json 2>/dev/null
fi
