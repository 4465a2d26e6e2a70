"""How FLOPs (and, on a GPU, throughput and memory; with a checkpoint and data, accuracy) scale with the input
resolution, side by side with timm peers: the seed's Fig. 11; the ``vssm scale`` command.

FLOPs are counted as in ``vssm flops`` (official convention, 1 multiply-add = 1 FLOP) on the meta device, so the
FLOPs panel costs seconds on any machine. Throughput and peak memory use :func:`vssm.benchmark.measure` (the
paper's protocol: fp32 inference, warm-up then timed forwards), with the batch halved on out-of-memory. timm models whose size is fixed at construction (Swin, ViT) are built for
each size (``img_size=S``; Swin pads its maps to whole windows, as timm does). Accuracy is the top-1 of the
checkpoint's model on the data, with each image resized (bicubic, shorter side) and centre-cropped to the size.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .common import (
    add_model_kwargs_argument,
    checkpoint_model_kwargs,
    create_analysis_model,
    image_files,
    model_input_size,
    model_mean_std,
    pyplot,
    save_figure,
)
from .flops import model_flops

__all__ = ["ScalePoint", "scale_table", "evaluate_accuracy", "measure_with_backoff", "plot_scaling", "add_arguments",
           "main"]

DEFAULT_SIZES = (224, 288, 384, 512, 640, 768, 1024)


@dataclass
class ScalePoint:
    model: str
    size: int
    params: int
    gflops: float
    images_per_second: Optional[float] = None
    peak_memory_mb: Optional[float] = None
    batch_size: Optional[int] = None
    top1: Optional[float] = None
    extra: Dict[str, float] = field(default_factory=dict)


def scale_table(models: Sequence[str], sizes: Sequence[int], model_kwargs: Optional[Dict[str, dict]] = None
                ) -> List[ScalePoint]:
    """Parameters and GFLOPs of every model at every size (S x S); ``model_kwargs[name]``: constructor arguments."""
    points = []
    for name in models:
        for s in sizes:
            r = model_flops(name, (s, s), **(model_kwargs or {}).get(name, {}))
            points.append(ScalePoint(name, s, r.params, r.gflops))
    return points


def _fashion_mnist_batches(size: int, in_chans: int, mean, std, batch_size: int, limit: Optional[int]):
    from ..data import read_fashion_mnist

    images, labels = read_fashion_mnist("test")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    mean_t = torch.tensor(list(mean)[:in_chans] if len(mean) >= in_chans else list(mean) * in_chans).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std)[:in_chans] if len(std) >= in_chans else list(std) * in_chans).view(1, -1, 1, 1)
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i : i + batch_size]).float().div(255)[:, None]
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        x = x.expand(-1, in_chans, -1, -1)
        yield (x - mean_t) / std_t, torch.from_numpy(labels[i : i + batch_size])


def _folder_batches(root: str, size: int, in_chans: int, mean, std, batch_size: int, limit: Optional[int]):
    from torchvision import datasets
    from torchvision import transforms as T

    transform = T.Compose([
        T.Grayscale(in_chans) if in_chans == 1 else T.Lambda(lambda im: im.convert("RGB")),
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(mean[:in_chans], std[:in_chans]),
    ])
    dataset = datasets.ImageFolder(root, transform=transform)
    if limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=min(4, torch.get_num_threads()))
    yield from loader


def evaluate_accuracy(model, data: str, size: int, batch_size: int = 64, limit: Optional[int] = None,
                      device: str = "cpu") -> float:
    """Top-1 (%) of ``model`` on ``data`` ("fashion-mnist" test split, or an ImageFolder tree such as ImageNet's
    val/) at input size ``size``."""
    mean, std = model_mean_std(model)
    in_chans = model_input_size(model)[0]
    if data.lower().replace("_", "-") in ("fashion-mnist", "fashionmnist"):
        batches = _fashion_mnist_batches(size, in_chans, mean, std, batch_size, limit)
    else:
        image_files(data)  # a clear error if the folder holds no images
        batches = _folder_batches(data, size, in_chans, mean, std, batch_size, limit)
    correct = total = 0
    model = model.to(device).eval()
    with torch.no_grad():
        for x, y in batches:
            pred = model(x.to(device)).argmax(-1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
    return 100.0 * correct / max(total, 1)


def measure_with_backoff(model, size: int, batch_size: int, warmup: int, iters: int, device: str = "cuda"):
    """(img/s, peak MB, batch) of fp32 inference with :func:`vssm.benchmark.measure` (the paper's protocol), halving
    the batch on out-of-memory as the official tool does; None if even batch 1 does not fit."""
    from ..benchmark import measure

    while batch_size >= 1:
        try:
            r = measure(model, "fp32", batch=batch_size, size=size, warmup=warmup, iters=iters, device=device)
            return r["img_s"], r["peak_mb"], batch_size
        except torch.OutOfMemoryError:
            batch_size //= 2
            torch.cuda.empty_cache()
    return None


def plot_scaling(points: Sequence[ScalePoint], path: str, title: str = "") -> str:
    """FLOPs (and throughput, memory, accuracy where measured) against input size, one line per model."""
    plt = pyplot()
    panels = [("gflops", "GFLOPs (1 multiply-add = 1)", True)]
    if any(p.images_per_second is not None for p in points):
        panels += [("images_per_second", "throughput (img/s, fp32)", True), ("peak_memory_mb", "peak memory (MB)", True)]
    if any(p.top1 is not None for p in points):
        panels.append(("top1", "top-1 accuracy (%)", False))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    models = list(dict.fromkeys(p.model for p in points))
    for ax, (key, label, log) in zip(axes[0], panels):
        for name in models:
            pts = [(p.size, getattr(p, key)) for p in points if p.model == name and getattr(p, key) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", label=name)
        ax.set_xlabel("input size (px)")
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


# --- command line ------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", nargs="+", default=["vmamba_tiny_s1l8"], help="vssm (or timm) model(s)")
    add_model_kwargs_argument(parser)
    parser.add_argument("--peers", nargs="*", default=[], help="timm models to compare with, e.g. "
                                                                "swin_tiny_patch4_window7_224 convnext_tiny")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--checkpoint", nargs="+", default=None,
                        help="one per --model ('-' for none): with --data, adds the accuracy panel")
    parser.add_argument("--data", default=None, help="'fashion-mnist' or an ImageFolder tree, for the accuracy panel")
    parser.add_argument("--limit", type=int, default=None, help="evaluate on the first N images only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="throughput / memory / accuracy device; throughput needs a CUDA GPU")
    parser.add_argument("--no-throughput", action="store_true", help="skip throughput / memory even on a GPU")
    parser.add_argument("--batch-size", type=int, default=64, help="throughput batch (halved on OOM) and eval batch")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", default="scale.png", help="PNG to write (a .json with the table is written beside)")


def _print_points(points: Sequence[ScalePoint]) -> None:
    columns = [("model", "model"), ("size", "size"), ("params", "params"), ("gflops", "GFLOPs")]
    if any(p.images_per_second is not None for p in points):
        columns += [("images_per_second", "img/s"), ("peak_memory_mb", "peak MB"), ("batch_size", "batch")]
    if any(p.top1 is not None for p in points):
        columns.append(("top1", "top-1 %"))

    def fmt(key: str, value) -> str:
        if value is None:
            return "-"
        if key == "params":
            return f"{value:,}"
        if isinstance(value, float):
            return f"{value:.2f}" if key != "gflops" else f"{value:.3f}"
        return str(value)

    rows = [[fmt(k, getattr(p, k)) for k, _ in columns] for p in points]
    header = [h for _, h in columns]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |")


def main(args: argparse.Namespace) -> int:
    models = list(args.model) + [p for p in args.peers if p not in args.model]
    checkpoints = args.checkpoint or ["-"] * len(args.model)
    if len(checkpoints) != len(args.model):
        print("vssm scale: give one --checkpoint per --model ('-' for none)", file=sys.stderr)
        return 2
    ckpt_of = {m: (None if c in ("-", "none", "") else c) for m, c in zip(args.model, checkpoints)}
    kwargs_of = lambda name: args.model_kwargs if name in args.model else {}  # noqa: E731
    flops_kwargs = {m: dict(checkpoint_model_kwargs(m, ckpt_of[m]) if ckpt_of[m] else {}, **args.model_kwargs)
                    for m in args.model}
    try:
        points = scale_table(models, args.sizes, flops_kwargs)
    except ValueError as err:
        print(f"vssm scale: {err}", file=sys.stderr)
        return 2
    gpu = str(args.device).startswith("cuda") and torch.cuda.is_available() and not args.no_throughput
    if gpu:
        torch.backends.cudnn.benchmark = True
        for p in points:
            model = create_analysis_model(p.model, checkpoint=ckpt_of.get(p.model), img_size=(p.size, p.size),
                                          device=args.device, **kwargs_of(p.model))
            result = measure_with_backoff(model, p.size, args.batch_size, args.warmup, args.iters, args.device)
            if result is None:
                print(f"{p.model} at {p.size}: out of memory even at batch 1", file=sys.stderr)
            else:
                p.images_per_second, p.peak_memory_mb, p.batch_size = result
            del model
            torch.cuda.empty_cache()
            print(f"{p.model} {p.size}px: {p.images_per_second or 0:.1f} img/s, {p.peak_memory_mb or 0:.0f} MB "
                  f"(batch {p.batch_size})", file=sys.stderr)
    if args.data:
        for p in points:
            ckpt = ckpt_of.get(p.model)
            if ckpt is None:
                continue
            model = create_analysis_model(p.model, checkpoint=ckpt, img_size=(p.size, p.size), device=args.device,
                                          **kwargs_of(p.model))
            p.top1 = evaluate_accuracy(model, args.data, p.size, args.batch_size, args.limit, args.device)
            print(f"{p.model} {p.size}px: top-1 {p.top1:.2f}%", file=sys.stderr)
    _print_points(points)
    device = f"throughput on {torch.cuda.get_device_name()}" if gpu else "no GPU: no throughput / memory"
    plot_scaling(points, args.out, f"resolution scaling ({device})")
    table = args.out.rsplit(".", 1)[0] + ".json"
    with open(table, "w") as f:
        json.dump([asdict(p) for p in points], f, indent=1)
    print(f"wrote {args.out} and {table}")
    return 0
