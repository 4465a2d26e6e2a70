#!/usr/bin/env bash
# Knowledge distillation on Fashion-MNIST within the benchmark's 14.5 minutes (benchmarks/results/fashion-mnist.md,
# "Distillation from a WRN-40-4 teacher"): the teacher, WRN-40-4 at 28 px (its native size), trains TEACHER_MIN
# minutes from scratch; then the preset's msvmambav3_nano trains STUDENT_MIN minutes at 64 px with `vssm train
# --teacher` on the teacher's EMA weights, TEACHER_MIN + STUDENT_MIN = 14.5. Both are timed by --time-budget, the
# student's budget counting the teacher's forward passes. The student needs two device commands (each under 10
# minutes): the first stops it after STOP minutes (exit 75), the second, on the same warm machine, finishes it; the
# teacher is trained once.
#
#   STOP=3.5 SEED=0 bash benchmarks/fashion_mnist_distill.sh; SEED=0 bash benchmarks/fashion_mnist_distill.sh
#   SMOKE=1 R=/tmp/d O=/tmp/o bash benchmarks/fashion_mnist_distill.sh   # a CPU check of the script (tiny runs)
set -u
source "$(dirname "$0")/fashion_mnist_env.sh"
SEED=${SEED:-0}; TEACHER_MIN=${TEACHER_MIN:-3}; STUDENT_MIN=${STUDENT_MIN:-11.5}; STOP=${STOP:-8.6}
WEIGHT=${WEIGHT:-0.5}; TEMPERATURE=${TEMPERATURE:-2}
R=${R:-build/distill}; O=${O:-${OUT:-build/distill-out}}
DRIVER=(python3 benchmarks/fashion_mnist_gpu.py --runs-dir "$R" --data-dir "$VSSM_FASHION_MNIST_DIR" --tta)
if [ -n "${SMOKE:-}" ]; then DRIVER+=(--smoke); else DRIVER+=(--compile-mode reduce-overhead); fi

if [ ! -f "$R/teacher/model.safetensors" ]; then
  "${DRIVER[@]}" --out "$O/teacher" --models teacher --variant teacher=wrn40_4 --img-size 28 --epochs 1000 \
    --train-args "--eval-every 20 --time-budget $TEACHER_MIN --seed $SEED"
  rc=$?; [ $rc -ne 0 ] && exit $rc
fi
"${DRIVER[@]}" --out "$O/student" --models student --variant student=msvmambav3_nano --img-size 64 --epochs 1000 \
  --stop-after-minutes "$STOP" --train-args "--eval-every 10 --time-budget $STUDENT_MIN --seed $SEED \
--teacher $R/teacher/model.safetensors --distill-weight $WEIGHT --distill-temperature $TEMPERATURE"
