"""`vssm demo` (what `make demo` runs): train a small VMamba on Fashion-MNIST on this machine, evaluate it, and
say where the checkpoint, weights, log and plot are.

It is ``vssm train --preset fashion-mnist-cpu`` (``vmamba_femto``) followed by ``vssm eval`` of the exported
weights. The training fits the machine: it runs with ``--time-budget`` (``--minutes``), so it measures its own
speed as it goes and takes as many whole epochs (1 to ``--max-epochs``) as fit, with the cosine schedule fitted to
them; a slow machine still finishes in time and a fast one gets a better model. Before it starts, a few timed
training steps estimate the epoch time: where the budget would leave most of an epoch unused, every epoch is
shortened so that whole epochs fill it. ``--epochs N`` fixes the count instead (no budget).
"""
from __future__ import annotations

import argparse
import math
import os
import time

__all__ = ["add_arguments", "main", "estimate_epoch_seconds"]


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


def estimate_epoch_seconds(cfg: dict, device, n_train: int, n_val: int = 10000, steps: int = 10) -> float:
    """Seconds per epoch of ``cfg``'s model on ``device``: the median of a few timed training steps on random data, plus the
    evaluation of the test set (forward only, about a third of a training step per image)."""
    import torch
    import torch.nn.functional as F

    from .train.engine import build_model

    state = torch.get_rng_state()
    model = build_model(cfg["model"], 10, cfg["in_chans"], cfg["img_size"], model_kwargs=cfg.get("model_kwargs"))
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(cfg["batch_size"], cfg["in_chans"], cfg["img_size"], cfg["img_size"], device=device)
    y = torch.randint(0, 10, (cfg["batch_size"],), device=device)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):  # the first steps pay for allocations and kernel selection
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    per_image = sorted(times)[len(times) // 2] / cfg["batch_size"]  # the median: robust to a busy moment
    torch.set_rng_state(state)
    evals = 2 if cfg.get("ema") else 1
    return per_image * (n_train + evals * n_val / 3)


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
        # the budget fits whole epochs as the run goes; when the estimate leaves most of an epoch unused, every
        # epoch is shortened so that whole ones fill the time
        n_train = args.train_subset or 60000
        epoch_s = estimate_epoch_seconds(cfg, info.device, n_train)
        budget = args.minutes * 60 / epoch_s  # in epochs
        expected = max(1, min(args.max_epochs, math.ceil(budget - 0.15)))
        steps = n_train // cfg["batch_size"]
        if budget < expected:
            cfg["limit_train_batches"] = given["limit_train_batches"] = max(1, int(steps * budget / expected))
        used = cfg.get("limit_train_batches") or steps
        cfg["epochs"], cfg["time_budget"] = args.max_epochs, args.minutes
        given["time_budget"] = args.minutes
        print(f"vssm demo: about {epoch_s:.0f} s per epoch here ({where}); {args.minutes:g} minutes of training should "
              f"fit about {expected} epochs of {used} steps ({used * cfg['batch_size']:,} images); the run measures "
              f"its own speed and fits the epochs (at most {args.max_epochs}) to the time", flush=True)
    given["epochs"] = cfg["epochs"]
    if cfg.get("time_budget"):
        print(f"vssm demo: training {cfg['model']} on Fashion-MNIST for {args.minutes:g} minutes ({where})", flush=True)
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
    print(f"""
vssm demo finished in {minutes:.1f} min: {summary['model']} ({summary['params'] / 1e6:.2f}M params), {summary['epochs']} epochs, Fashion-MNIST test top-1 {metrics['acc1']:.2f}%, top-5 {metrics['acc5']:.2f}%
  checkpoint (resumable)  {summary['checkpoint']}
  weights (safetensors)   {summary['weights']}
  curves                  {summary['plot']}
  log (JSON lines)        {summary['log']}
  eval metrics            {os.path.join(args.output, 'eval.json')}
  TensorBoard             tensorboard --logdir {os.path.join(out, 'tensorboard')}
  evaluate again          vssm eval --checkpoint {summary['weights']} --data fashion-mnist""")
    return 0
