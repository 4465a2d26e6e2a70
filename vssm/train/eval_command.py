"""`vssm eval`: top-1 / top-5 accuracy and loss of a checkpoint on the validation split.

Reads vssm training checkpoints (``OUTPUT/checkpoints/*.pth``), vssm's exported ``model.safetensors`` (both
carry the model name, classes, channels, input size and normalisation, so ``--model`` may be left out) and
official checkpoints (``--model`` required; loaded strictly through :func:`vssm.load_checkpoint`). Prints the
official log's progress lines and a final ``* Acc@1 x Acc@5 y`` line; ``--json`` writes
``{"acc1", "acc5", "loss", "n_images", ...}``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, Optional

from ..checkpoint import CheckpointError
from .config import TTA_MODES

__all__ = ["add_arguments", "main", "run_eval"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="model name (default: the one recorded in a vssm checkpoint; required for official files)")
    parser.add_argument("--checkpoint", required=True, help="checkpoint file (.pth / .safetensors; vssm or official)")
    parser.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder tree (uses val/)")
    parser.add_argument("--img-size", type=int, default=None, help="input size (default: the checkpoint's / model's)")
    parser.add_argument("--json", default=None, help="write the metrics here as JSON")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size per process")
    parser.add_argument("--weights", default="auto", choices=["auto", "model", "ema"],
                        help="which weights of a training checkpoint: auto (EMA when the run used EMA, as its summary), "
                             "model or ema")
    parser.add_argument("--checkpoint-key", default=None,
                        help="entry of the checkpoint dict to load (overrides --weights), e.g. model_ema")
    parser.add_argument("--model-kwargs", type=json.loads, default=None, help="JSON dict of model constructor arguments")
    parser.add_argument("--model-module", default=None, metavar="MODULE",
                        help="import this module (dotted name or .py file) for a model it registers with timm "
                        "(default: the one the training run recorded)")
    parser.add_argument("--in-chans", type=int, default=None)
    parser.add_argument("--num-classes", type=int, default=None, help="default: the number of classes of the data")
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"])
    parser.add_argument("--crop-pct", type=float, default=None, help="ImageFolder centre-crop fraction")
    parser.add_argument("--interpolation", default=None, help="ImageFolder resize interpolation")
    parser.add_argument("--fit", default=None, choices=["auto", "pad", "resize"], help="Fashion-MNIST: pad or resize")
    parser.add_argument("--val-subset", type=int, default=None, help="evaluate on this many images only")
    parser.add_argument("--limit-val-batches", type=int, default=None)
    parser.add_argument("--workers", type=int, default=4, help="data loader workers (ImageFolder)")
    parser.add_argument("--tta", default="none", choices=list(TTA_MODES),
                        help="test-time augmentation: hflip scores each image by the mean of the class probabilities "
                        "of the image and its mirror image (two forward passes)")
    parser.add_argument("--print-freq", type=int, default=10, help="batches between progress lines (0: none)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)


def run_eval(
    checkpoint: str,
    model_name: Optional[str] = None,
    data: str = "fashion-mnist",
    img_size: Optional[int] = None,
    batch_size: int = 256,
    weights: str = "auto",
    checkpoint_key: Optional[str] = None,
    model_kwargs: Optional[Dict[str, Any]] = None,
    in_chans: Optional[int] = None,
    num_classes: Optional[int] = None,
    amp: str = "auto",
    crop_pct: Optional[float] = None,
    interpolation: Optional[str] = None,
    fit: Optional[str] = None,
    val_subset: Optional[int] = None,
    limit_val_batches: Optional[int] = None,
    workers: int = 4,
    print_freq: int = 10,
    device: str = "auto",
    threads: Optional[int] = None,
    json_path: Optional[str] = None,
    tta: str = "none",
    model_module: Optional[str] = None,
) -> Dict[str, Any]:
    """Evaluate a checkpoint; returns (and optionally writes as JSON) the metrics."""
    from ..checkpoint import load_checkpoint
    from ..data.build import build_eval_loader, data_info
    from .checkpointing import atomic_write, checkpoint_metadata, weights_key
    from .config import is_fashion_mnist
    from .distributed import cleanup_distributed, setup_distributed
    from .engine import Logger, UsageError, amp_dtype, build_model, evaluate

    meta = checkpoint_metadata(checkpoint)
    model_name = model_name or meta.get("model")
    if not model_name:
        raise UsageError(f"{checkpoint} does not say which model it holds; pass --model NAME")
    key = checkpoint_key or weights_key(meta, weights)
    cfg = {
        "data": "fashion-mnist" if is_fashion_mnist(data) else data,
        "img_size": img_size or meta.get("img_size"),
        "in_chans": in_chans or meta.get("in_chans"),
        "fit": fit or meta.get("fit") or "auto",
        "crop_pct": crop_pct or meta.get("crop_pct"),
        "interpolation": interpolation or meta.get("interpolation"),
        "batch_size": batch_size,
        "eval_batch_size": batch_size,
        "val_subset": val_subset,
        "limit_val_batches": limit_val_batches,
        "workers": workers,
        "seed": 0,
        "_split": "val",
    }
    dist = setup_distributed(device, threads)
    log = Logger(dist)
    try:
        info = data_info(cfg)
        classes = num_classes or meta.get("num_classes") or info.num_classes
        kwargs = dict(meta.get("model_kwargs") or {}, **(model_kwargs or {}))
        model = build_model(model_name, classes, info.in_chans, cfg["img_size"], model_kwargs=kwargs,
                            model_module=model_module or meta.get("model_module"))
        if not is_fashion_mnist(data):
            info = data_info(cfg, model)
        if classes != info.num_classes:
            log(f"note: the model has {classes} classes, the data {info.num_classes}; labels are used as they are")
        load_checkpoint(model, checkpoint, key=key)
        model.to(dist.device)
        loader = build_eval_loader(cfg, info, dist, dist.device)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"vssm eval: {model_name} ({n_params / 1e6:.2f}M params) from {checkpoint} [{key}] on {info.name} val "
            f"({loader.num_samples} images, {info.img_size}px), {dist.world_size} process(es) on {dist.device}")
        t0 = time.perf_counter()
        metrics = evaluate(model, loader, dist.device, dist, amp_dtype(amp, dist.device), log=log,
                           print_freq=print_freq, tta=tta)
        seconds = time.perf_counter() - t0
        log(f" * Acc@1 {metrics['acc1']:.3f} Acc@5 {metrics['acc5']:.3f}" + (f" (tta {tta})" if tta != "none" else ""))
        result = dict(metrics, tta=tta, model=model_name, checkpoint=os.path.abspath(checkpoint), weights=key,
                      data=info.name, img_size=info.img_size, seconds=seconds)
        if json_path and dist.is_main:
            atomic_write(json_path, json.dumps(result, indent=2).encode())
            log(f"metrics written to {json_path}")
        return result
    finally:
        cleanup_distributed(dist)


def main(args: argparse.Namespace) -> int:
    from ..data.imagefolder import DataError
    from .engine import UsageError

    try:
        run_eval(
            args.checkpoint, args.model, args.data, args.img_size, args.batch_size, args.weights, args.checkpoint_key,
            args.model_kwargs, args.in_chans, args.num_classes, args.amp, args.crop_pct, args.interpolation,
            args.fit, args.val_subset, args.limit_val_batches, args.workers, args.print_freq, args.device,
            args.threads, args.json, args.tta, args.model_module,
        )
    except (DataError, CheckpointError, FileNotFoundError, NotADirectoryError, UsageError) as err:
        print(f"vssm eval: error: {err}", file=sys.stderr)
        return 2
    return 0
