#!/usr/bin/env python
"""Fashion-MNIST from scratch on one GPU: a vssm model next to timm peers, same recipe, same epochs.

Every model is trained by ``vssm train --preset fashion-mnist`` (the same augmentation, optimiser, schedule, EMA,
image size and number of epochs for all) and its exported EMA weights are evaluated by ``vssm eval`` on the
10,000 test images. Rows accumulate in ``OUT/results.json`` and ``OUT/results.md``, so the comparison can be
split over several commands (the device allows ~9 minutes per command):

    # 1) the vssm model: measures its speed, fixes the epoch count for everyone in OUT/plan.json, trains it,
    #    then a short fp16-AMP run that must have no NaN/inf
    python benchmarks/fashion_mnist_gpu.py --out OUT --models vmamba_nano --budget-minutes 5 --fp16-check
    # 2) and 3) the peers, with the epochs of OUT/plan.json
    python benchmarks/fashion_mnist_gpu.py --out OUT --models resnet18,convnext_atto
    python benchmarks/fashion_mnist_gpu.py --out OUT --models swin_nano

``--epochs N`` fixes the epochs directly instead. ``--smoke`` runs everything tiny (CPU validation).

``--compile-mode reduce-overhead`` trains every model under ``torch.compile`` with CUDA graphs (``vssm train --compile
--compile-mode reduce-overhead``; ``--compile`` alone is the default mode), which doubles vmamba_nano's speed on an
H100 (its eager step is host-bound). The probe then reports the steady speed (its first log window, which holds the
compilation, is left out) and the compilation time, which the epoch budget subtracts. ``--train-args "..."`` appends
more ``vssm train`` flags to every training command, the probe's included, e.g. ``--eval-every 5`` so that the
per-epoch evaluation does not eat a quarter of a compiled epoch (the last epoch is always evaluated):

    python benchmarks/fashion_mnist_gpu.py --out OUT --models vmamba_nano --budget-minutes 7.5 \
        --compile-mode reduce-overhead --train-args "--eval-every 5"
    python benchmarks/fashion_mnist_gpu.py --out OUT2 --models resnet18,convnext_atto --epochs E \
        --compile-mode reduce-overhead --train-args "--eval-every 5"

A run longer than one device command (10 minutes) is split with ``--stop-after-minutes M --runs-dir DIR --epochs E``:
each command continues the run in DIR (``vssm train --resume auto``) and stops at the first epoch end after M
minutes, this script then exits with code 75; repeat the same command (on the same warm machine: the checkpoint
lives in DIR) until it evaluates the model and writes the row:

    python benchmarks/fashion_mnist_gpu.py --out $OUT/long --runs-dir build/fm-runs --models vmamba_nano \
        --epochs 300 --stop-after-minutes 8 --compile-mode reduce-overhead --train-args "--eval-every 10"

``--tta`` also evaluates each model with flip test-time augmentation (``vssm eval --tta hflip``): an extra column.

The img/s of a row is the mean over the epochs after the first (the first holds the compilation; its time is in
the row's ``first_epoch_s``); the train time is the whole run's, compilation included.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional

from vssm.benchmark import write_json_atomic
from vssm.train.checkpointing import atomic_write
from vssm.train.engine import STOPPED_EXIT_CODE

# name in the table -> (model, model kwargs as a function of the image size)
def _swin_kwargs(img: int) -> dict:
    """timm's SwinTransformer at the vssm model's size (6.9M params): embed 48, depths 2-2-6-2, with 16x16 tokens in
    the first stage like vmamba_nano at 64 px, and windows of 8 (4 at 32 px)."""
    patch = max(1, img // 16)
    return dict(patch_size=patch, window_size=4 if img <= 32 else 8, embed_dim=48, depths=[2, 2, 6, 2],
                num_heads=[3, 6, 12, 24])


VSSM_FAMILIES = ("vmamba", "vanilla_vmamba", "msvmamba", "vim")  # the table lists vssm's rows first

MODELS = {
    "vmamba_nano": ("vmamba_nano", lambda img: {}),
    "msvmambav3_nano": ("msvmambav3_nano", lambda img: {}),
    "vmamba_femto": ("vmamba_femto", lambda img: {}),
    "resnet18": ("resnet18", lambda img: {}),
    "convnext_atto": ("convnext_atto", lambda img: {}),
    "swin_nano": ("swin_tiny_patch4_window7_224", _swin_kwargs),
    "wrn40_4": ("wrn40_4", lambda img: {}),
}
# models that timm lacks (the WRN peer), registered by a module of ours (`vssm train --model-module`)
MODEL_MODULES = {"wrn40_4": os.path.join(os.path.dirname(os.path.abspath(__file__)), "wide_resnet.py")}


class Stopped(Exception):
    """A training command stopped by --stop-after-minutes (exit code 75)."""


def run(cmd: List[str], log_path: str, timeout: Optional[float] = None, allow_stop: bool = False) -> float:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            if not line.startswith("Train:"):
                sys.stdout.write(line)
        proc.wait(timeout=timeout)
    if allow_stop and proc.returncode == STOPPED_EXIT_CODE:
        raise Stopped()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}); see {log_path}")
    return time.perf_counter() - t0


def parse_variant(spec: str):
    """``NAME=MODEL[:JSON]`` -> (name, model, constructor kwargs)."""
    name, sep, rest = spec.partition("=")
    model, _, kwargs = rest.partition(":")
    if not (sep and name and model):
        raise SystemExit(f"--variant must be NAME=MODEL[:JSON], got {spec!r}")
    try:
        kwargs = json.loads(kwargs) if kwargs else {}
    except json.JSONDecodeError as e:
        raise SystemExit(f"--variant {name}: the constructor arguments are not JSON ({e})")
    if not isinstance(kwargs, dict):
        raise SystemExit(f"--variant {name}: the constructor arguments must be a JSON object, got {kwargs!r}")
    return name, model, kwargs


def train_cmd(args, name: str, out_dir: str, epochs: int, extra: List[str], resumable: bool = False) -> List[str]:
    """The `vssm train` command of one model; ``resumable`` (with --stop-after-minutes): continue the run in
    out_dir if there is one and stop at the time limit, instead of starting afresh."""
    model, kwargs = MODELS[name]
    start = ["--overwrite"]
    if resumable and args.stop_after_minutes is not None:
        start = ["--resume", "auto", "--stop-after-minutes", f"{args.stop_after_minutes:g}"]
    cmd = [sys.executable, "-m", "vssm", "train", "--preset", args.preset, "--model", model,
           "--epochs", str(epochs), "--img-size", str(args.img_size), "--output", out_dir, *start,
           "--progress", "log", "--log-interval", "100", "--amp", args.amp]
    kw = kwargs(args.img_size)
    if model in MODEL_MODULES:
        cmd += ["--model-module", MODEL_MODULES[model]]
    if kw:
        cmd += ["--model-kwargs", json.dumps(kw)]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if compile_mode(args):
        cmd += ["--compile", "--compile-mode", compile_mode(args)]
    if args.smoke:
        cmd += ["--train-subset", "512", "--val-subset", "256", "--batch-size", "64", "--no-tensorboard"]
    return cmd + shlex.split(args.train_args) + extra


def record_call(run_dir: str, command: str, continues: bool) -> List[str]:
    """Every call's command of the run in ``run_dir``, this one last. A run stopped by --stop-after-minutes finishes
    in a later call, maybe with other --train-args and a new --out, so the list lives beside the run's checkpoints;
    a call that does not continue the run (no checkpoint yet, or --overwrite) starts it afresh."""
    path = os.path.join(run_dir, "benchmark-calls.json")
    calls = []
    if continues and os.path.isdir(os.path.join(run_dir, "checkpoints")) and os.path.exists(path):
        with open(path) as f:
            calls = json.load(f)
    calls.append(command)
    os.makedirs(run_dir, exist_ok=True)
    write_json_atomic(path, calls)
    return calls


def compile_mode(args) -> Optional[str]:
    """The torch.compile mode of every training run, or None for eager (--compile alone: the default mode)."""
    return args.compile_mode or ("default" if args.compile else None)


def train_arg(args, flag: str, default: int) -> int:
    """The integer value of ``flag`` in --train-args (its last one, as `vssm train` reads it), else ``default``."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(flag, type=int, default=default, dest="value")
    return p.parse_known_args(shlex.split(args.train_args))[0].value


def eval_every(args) -> int:
    """The --eval-every of --train-args (1: vssm train's default, every epoch)."""
    return max(1, train_arg(args, "--eval-every", 1))


def probe(args, name: str) -> Dict[str, float]:
    """Steady-state training speed (img/s), evaluation time and compilation time (s) of a model, from a short run.

    The speed is the best of the 20-step log windows after the first; the first window holds the compilation (and
    the CUDA-graph recording) when compiling, so its excess over the steady time is the compilation time."""
    out = os.path.join(args.out, "probe", name)
    steps = 10 if args.smoke else 80
    window = steps // 4
    run(train_cmd(args, name, out, 1, ["--limit-train-batches", str(steps), "--log-interval", str(window),
                                       "--no-plot", "--no-tensorboard"]),
        os.path.join(args.out, f"probe-{name}.log"))
    with open(os.path.join(out, "log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    steps_log = [r for r in records if r["type"] == "step"]
    speeds = [r["img_per_s"] for r in steps_log]
    epoch = [r for r in records if r["type"] == "epoch"][-1]
    img_per_s = max(speeds[1:] or speeds)
    with open(os.path.join(out, "config.json")) as f:
        first_images = window * json.load(f)["batch_size"]
    compile_s = max(0.0, first_images / speeds[0] - first_images / img_per_s) if compile_mode(args) else 0.0
    return {"img_per_s": img_per_s, "eval_s": epoch.get("eval_time", 0.0), "compile_s": compile_s}


def epochs_in_budget(speed: Dict[str, float], n_train: int, budget_minutes: float, max_epochs: int,
                     every: int = 1):
    """(seconds per epoch, epochs that fit the budget) from a probe; 30 s go to start-up, data and export, and the
    probe's compilation time to compiling the model again. With evaluation every ``every`` epochs an epoch pays a
    share of it (the last epoch's evaluation comes out of the 30 s)."""
    epoch_s = n_train / speed["img_per_s"] + speed["eval_s"] / every  # eval_s: model + EMA on the 10k test images
    budget_s = budget_minutes * 60 - 30 - speed.get("compile_s", 0.0)
    return epoch_s, max(1, min(max_epochs, int(budget_s // epoch_s)))


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


HEADER_KEYS = ("preset", "img_size", "amp", "compile_mode", "train_args", "device", "torch")  # named in results.md


def write_tables(out: str, rows: List[dict], plan: dict) -> None:
    rows = sorted(rows, key=lambda r: (not r["model"].startswith(VSSM_FAMILIES), r["model_name"]))
    write_json_atomic(os.path.join(out, "results.json"), {"plan": plan, "rows": rows}, indent=2)
    n_images = " / ".join(f"{n:,}" for n in sorted({r["n_images"] for r in rows if "n_images" in r}) or [10000])
    lines = [
        f"Fashion-MNIST test top-1 ({n_images} images), trained from scratch with `vssm train --preset {plan['preset']}` "
        f"for {plan['epochs']} epochs{'' if isinstance(plan['epochs'], int) else ' (per row: the epochs column)'} "
        f"at {plan['img_size']}px, amp {plan['amp']}, "
        f"{'torch.compile mode ' + plan['compile_mode'] if plan.get('compile_mode') else 'eager'}"
        f"{', train args `' + plan['train_args'] + '`' if plan.get('train_args') else ''}, "
        f"on {plan.get('device', '?')} (torch {plan.get('torch', '?')}); EMA weights evaluated by `vssm eval`. "
        f"img/s: mean of the epochs after the first; train time and epoch 1 include the compilation.",
        "",
        "| model | params (M) | epochs | train time (min) | train img/s | epoch 1 (s) | top-1 (%) | top-5 (%) | test loss | top-1 raw weights (%) | top-1 flip TTA (%) | non-finite losses |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        first = f"{r['first_epoch_s']:.0f}" if r.get("first_epoch_s") is not None else "?"
        lines.append(
            f"| {r['model_name']} | {r['params'] / 1e6:.2f} | {r['epochs']} | {r['train_time_s'] / 60:.1f} | "
            f"{r['img_per_s']:.0f} | {first} | {r['acc1']:.2f} | {r['acc5']:.2f} | {r['loss']:.4f} | "
            f"{r['acc1_raw']:.2f} | {_pct(r.get('acc1_hflip'))} | {r['nonfinite_losses']} |"
        )
    for r in rows:
        commands = r.get("commands") or [r["command"]]
        lines.append("")
        if len(set(commands)) == 1:
            lines.append(f"`{r['model_name']}`: `{commands[0]}`")
        else:
            lines.append(f"`{r['model_name']}`, in {len(commands)} calls:")
            lines += [f"{i}. `{c}`" for i, c in enumerate(commands, 1)]
    if plan.get("fp16_check"):
        c = plan["fp16_check"]
        lines += ["", f"fp16-AMP check ({c['model']}, {c['epochs']} epochs, GradScaler): non-finite losses "
                      f"{c['nonfinite_losses']}, final top-1 {c['acc1']:.2f}%, all weights finite: {c['weights_finite']}"
                      f" -> {'PASS' if c['passed'] else 'FAIL'}"]
    atomic_write(os.path.join(out, "results.md"), ("\n".join(lines) + "\n").encode())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--models", default="vmamba_nano,resnet18,convnext_atto,swin_nano",
                   help=f"comma-separated, from {sorted(MODELS)} and the --variant names")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=MODEL[:JSON]",
                   help="another entry for --models: a registered model with constructor arguments, e.g. "
                        "'nano444=vmamba_nano:{\"depths\": [4, 4, 4]}' (repeatable)")
    p.add_argument("--preset", default="fashion-mnist")
    p.add_argument("--img-size", type=int, default=64, help="input size for every model (the preset's: 64)")
    p.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"])
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--epochs", type=int, default=None, help="fix the epochs (else OUT/plan.json, else --budget-minutes)")
    p.add_argument("--budget-minutes", type=float, default=5.0,
                   help="training time of the FIRST model of --models; fixes the epochs for all (OUT/plan.json)")
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--compile", action="store_true", help="torch.compile every model (default mode)")
    p.add_argument("--compile-mode", default=None, choices=["default", "reduce-overhead", "max-autotune"],
                   help="torch.compile every model in this mode (reduce-overhead: CUDA graphs); implies --compile")
    p.add_argument("--train-args", default="",
                   help="more `vssm train` flags for every training run, the probe's included (split like a shell "
                        "does), e.g. \"--eval-every 5\"")
    p.add_argument("--fp16-check", action="store_true", help="also a short fp16-AMP run of the first model")
    p.add_argument("--fp16-epochs", type=int, default=3)
    p.add_argument("--tta", action="store_true",
                   help="also evaluate with flip test-time augmentation (vssm eval --tta hflip): an extra column")
    p.add_argument("--probe-only", action="store_true",
                   help="only measure every model's training speed (80 steps) and print the epochs --budget-minutes fits")
    p.add_argument("--smoke", action="store_true", help="tiny data and epochs (validates the script on a CPU)")
    p.add_argument("--runs-dir", default=None,
                   help="where the training runs go (default: OUT); on the device tool a folder of the repo's that git "
                        "ignores survives between calls on the same warm machine, while OUT comes back")
    p.add_argument("--stop-after-minutes", type=float, default=None,
                   help="split a long run over several commands: each training command continues the run in "
                        "RUNS_DIR (--resume auto) and stops at an epoch end after M minutes; this script then exits "
                        "with code 75 and the same command continues")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX .gz files "
                   "(default: $VSSM_FASHION_MNIST_DIR or /usr/share/datasets/fashion-mnist)")
    p.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                   help="only merge the results of earlier --out folders into --out (no training)")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.merge:
        rows, plan, differ = [], {}, set()
        for folder in args.merge:
            data = json.load(open(os.path.join(folder, "results.json")))
            names = {r["model_name"] for r in data["rows"]}
            rows = [r for r in rows if r["model_name"] not in names] + data["rows"]
            for k, v in data["plan"].items():
                if k in plan and plan[k] != v and k in HEADER_KEYS:
                    differ.add(k)
                plan.setdefault(k, v)
            if data["plan"].get("fp16_check"):
                plan["fp16_check"] = data["plan"]["fp16_check"]
        for k in differ:  # the table's header would name one folder's value for all rows
            plan[k] = "(per row: see its command)"
        epochs = {r["epochs"] for r in rows}
        if len(epochs) > 1:
            print(f"warning: the merged rows were trained for different epochs: {sorted(epochs)}")
            plan["epochs"] = "/".join(str(e) for e in sorted(epochs))
        write_tables(args.out, rows, plan)
        print(open(os.path.join(args.out, "results.md")).read())
        return 0
    if args.stop_after_minutes is not None and not args.epochs:
        raise SystemExit("--stop-after-minutes needs --epochs: a later command must train for the same epochs, and "
                         "OUT (with the probe's plan) need not survive between commands")
    # --train-args come after --img-size on the training command, so theirs is the size the models train at
    args.img_size = train_arg(args, "--img-size", args.img_size)
    if args.data_dir:
        os.environ["VSSM_FASHION_MNIST_DIR"] = os.path.abspath(args.data_dir)
    for spec in args.variant:
        name, model, kwargs = parse_variant(spec)
        MODELS[name] = (model, lambda img, kwargs=kwargs: dict(kwargs))
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    for n in names:
        if n not in MODELS:
            raise SystemExit(f"unknown model {n!r}; choose from {sorted(MODELS)}")

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or 'cpu'})"
    if args.probe_only:
        for name in names:
            speed = probe(args, name)
            epoch_s, epochs = epochs_in_budget(speed, 60000, args.budget_minutes, args.max_epochs, eval_every(args))
            print(f"probe {name}: {speed['img_per_s']:.0f} img/s, {epoch_s:.1f} s/epoch, "
                  f"compilation {speed['compile_s']:.0f} s, {epochs} epochs in {args.budget_minutes} min", flush=True)
        return 0
    plan_path = os.path.join(args.out, "plan.json")
    plan = json.load(open(plan_path)) if os.path.exists(plan_path) else {}
    if args.epochs:
        plan.update(epochs=args.epochs, source="--epochs")
    elif "epochs" not in plan:
        speed = probe(args, names[0])
        n_train = 512 if args.smoke else 60000
        epoch_s, epochs = epochs_in_budget(speed, n_train, args.budget_minutes, args.max_epochs, eval_every(args))
        plan.update(epochs=epochs, source=f"probe of {names[0]}: {speed['img_per_s']:.0f} img/s, "
                                          f"{epoch_s:.1f} s/epoch, compilation {speed['compile_s']:.0f} s, "
                                          f"budget {args.budget_minutes} min")
        print(f"plan: {epochs} epochs ({plan['source']})", flush=True)
    if args.smoke:
        plan["epochs"] = min(plan["epochs"], 2)
    plan.update(preset=args.preset, img_size=args.img_size, amp=args.amp, compile_mode=compile_mode(args),
                train_args=args.train_args, device=device, date=datetime.date.today().isoformat(),
                torch=torch.__version__)
    write_json_atomic(plan_path, plan, indent=2)

    results_path = os.path.join(args.out, "results.json")
    rows = json.load(open(results_path))["rows"] if os.path.exists(results_path) else []
    for name in names:
        run_dir = os.path.join(args.runs_dir or args.out, name)
        cmd = train_cmd(args, name, run_dir, plan["epochs"], [], resumable=True)
        shown = " ".join(cmd[2:]).replace(args.runs_dir or args.out, "OUT")
        calls = record_call(run_dir, shown, continues="--resume" in cmd)
        try:
            seconds = run(cmd, os.path.join(args.out, f"{name}.log"), allow_stop=True)
        except Stopped:
            print(f"{name}: stopped by --stop-after-minutes; run this command again to continue it", flush=True)
            return STOPPED_EXIT_CODE
        eval_json = os.path.join(run_dir, "eval.json")
        tta_json = os.path.join(run_dir, "eval-hflip.json")
        for tta, path in [("none", eval_json)] + ([("hflip", tta_json)] if args.tta else []):
            run([sys.executable, "-m", "vssm", "eval", "--checkpoint", os.path.join(run_dir, "model.safetensors"),
                 "--data", "fashion-mnist", "--json", path, "--print-freq", "0", "--amp", args.amp,
                 "--batch-size", "1000", "--tta", tta] + (["--val-subset", "256"] if args.smoke else []),
                os.path.join(args.out, f"{name}.log"))
        summary = json.load(open(os.path.join(run_dir, "summary.json")))
        metrics = json.load(open(eval_json))
        last = summary["history"][-1]
        steady = summary["history"][1:] or summary["history"]  # epoch 1 holds the compilation
        rows = [r for r in rows if r["model_name"] != name]
        rows.append({
            "model_name": name,
            "model": summary["model"],
            "params": summary["params"],
            "epochs": summary.get("time_budget", {}).get("epochs", summary["epochs"]),  # a budget's may be partial
            "train_time_s": summary["train_time_s"],
            "wall_time_s": seconds,
            "img_per_s": sum(r["img_per_s"] for r in steady) / len(steady),
            "first_epoch_s": summary["history"][0]["epoch_time"],
            "acc1": metrics["acc1"],
            "acc5": metrics["acc5"],
            "loss": metrics["loss"],
            "acc1_raw": summary["final_model"]["acc1"],
            "acc1_hflip": json.load(open(tta_json))["acc1"] if args.tta else None,
            "best_acc1": summary["best"]["acc1"],
            "nonfinite_losses": summary["nonfinite_losses"],
            "n_images": metrics["n_images"],
            "command": shown,
            "commands": calls,
            "last_epoch": last,
        })
        write_tables(args.out, rows, plan)

    if args.fp16_check:
        name = names[0]
        run_dir = os.path.join(args.out, f"{name}-fp16")
        epochs = 1 if args.smoke else args.fp16_epochs
        cmd = train_cmd(args, name, run_dir, epochs, [])
        cmd[cmd.index("--amp") + 1] = "fp16"
        run(cmd, os.path.join(args.out, f"{name}-fp16.log"))
        summary = json.load(open(os.path.join(run_dir, "summary.json")))
        finite = summary["weights_finite"]  # vssm train checks the exported weights
        acc1 = summary["final"]["acc1"]
        plan["fp16_check"] = {
            "model": name, "epochs": epochs, "nonfinite_losses": summary["nonfinite_losses"], "acc1": acc1,
            "weights_finite": finite,
            "passed": summary["nonfinite_losses"] == 0 and finite and acc1 is not None and math.isfinite(acc1),
        }
        write_json_atomic(plan_path, plan, indent=2)
        write_tables(args.out, rows, plan)
        print(f"fp16 check: {plan['fp16_check']}")
    print(open(os.path.join(args.out, "results.md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
