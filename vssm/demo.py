"""`vssm demo` (what `make demo` runs): train a small VMamba on Fashion-MNIST on this machine, evaluate it, and
say where the checkpoint, weights, log and plot are.

It is ``vssm train --preset fashion-mnist-cpu`` (``vmamba_femto``) followed by ``vssm eval`` of the exported
weights. The training fits the machine: it runs with ``--time-budget`` (``--minutes``, evaluations included), so it
measures its own speed as it goes and takes as many steps as fit (at most ``--max-epochs`` epochs; the last epoch
may be partial), with the cosine schedule fitted to them: a slow machine still finishes in time and a fast one gets
a better model. ``--epochs N`` fixes the count instead (no budget).
"""
from __future__ import annotations

import argparse
import os
import time

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default=os.path.join("runs", "demo"), help="output folder (default runs/demo)")
    parser.add_argument("--model", default=None, help="model (default: the fashion-mnist-cpu preset's)")
    parser.add_argument("--epochs", type=int, default=None, help="fix the number of epochs (default: fit --minutes)")
    parser.add_argument("--minutes", type=float, default=7.5,
                        help="training time (evaluations included) to fit the epochs into (default 7.5)")
    parser.add_argument("--max-epochs", type=int, default=6)
    parser.add_argument("--train-subset", type=int, default=None, help="train on this many images only")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output instead of starting afresh")
    parser.add_argument("--progress", default="auto", choices=["auto", "bar", "log", "none"])


def main(args: argparse.Namespace) -> int:
    import sys

    import torch

    from .checkpoint import CheckpointError
    from .data.imagefolder import DataError
    from .train.config import DEFAULTS, PRESETS
    from .train.distributed import setup_distributed
    from .train.engine import UsageError, train
    from .train.eval_command import run_eval

    start = time.perf_counter()
    cfg = dict(DEFAULTS, **PRESETS["fashion-mnist-cpu"])
    given = {"output": args.output, "device": args.device, "progress": args.progress}
    for key in ("model", "train_subset", "threads"):
        if getattr(args, key) is not None:
            given[key] = getattr(args, key)
    given["resume" if args.resume else "overwrite"] = "auto" if args.resume else True
    cfg.update(given)
    cfg["preset"] = "fashion-mnist-cpu"
    info = setup_distributed(args.device, args.threads)
    where = f"GPU {torch.cuda.get_device_name(info.device)}" if info.device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    if args.epochs:
        cfg["epochs"] = args.epochs
    elif not args.resume:
        cfg["epochs"], cfg["time_budget"] = args.max_epochs, args.minutes
        given["time_budget"] = args.minutes
    given["epochs"] = cfg["epochs"]
    if cfg.get("time_budget"):
        print(f"vssm demo: training {cfg['model']} on Fashion-MNIST for {args.minutes:g} minutes ({where}): the run "
              f"measures its speed as it goes and fits its steps (at most {args.max_epochs} epochs) and its "
              f"learning-rate schedule to the time", flush=True)
    else:
        print(f"vssm demo: training {cfg['model']} on Fashion-MNIST for {cfg['epochs']} epochs ({where})", flush=True)
    try:
        summary = train(cfg, given)
        print("\nvssm demo: evaluating the exported weights on the 10,000 test images", flush=True)
        metrics = run_eval(summary["weights"], data="fashion-mnist", batch_size=500, print_freq=5,
                           device=args.device, threads=args.threads,
                           json_path=os.path.join(args.output, "eval.json"))
    except (DataError, CheckpointError, FileNotFoundError, UsageError) as err:
        print(f"vssm demo: error: {err}", file=sys.stderr)
        return 2
    minutes = (time.perf_counter() - start) / 60
    out = summary["output"]
    epochs = summary["time_budget"]["epochs"] if summary.get("time_budget") else summary["epochs"]
    print(f"""
vssm demo finished in {minutes:.1f} min: {summary['model']} ({summary['params'] / 1e6:.2f}M params), {epochs:g} epochs, Fashion-MNIST test top-1 {metrics['acc1']:.2f}%, top-5 {metrics['acc5']:.2f}%
  checkpoint (resumable)  {summary['checkpoint']}
  weights (safetensors)   {summary['weights']}
  curves                  {summary['plot']}
  log (JSON lines)        {summary['log']}
  eval metrics            {os.path.join(args.output, 'eval.json')}
  TensorBoard             tensorboard --logdir {os.path.join(out, 'tensorboard')}
  evaluate again          vssm eval --checkpoint {summary['weights']} --data fashion-mnist""")
    return 0
