"""Effective receptive field (ERF), as the official tool computes it (spec/vmamba.md §7.1, adapted from RepLKNet);
the ``vssm erf`` command.

For each image x (batch 1, fp32, eval mode, gradients on):

    out  = the last stage's feature map (B, C, h, w), before the classifier's norm
    s    = sum_c ReLU(out[0, c, h // 2, w // 2])            (the central output pixel)
    g    = d s / d x                                         (B, C_in, H, W)
    map += sum_{batch, channel} ReLU(g)                      (H, W)

Images whose gradient is not finite are skipped; the sum is averaged over the images used. For display the map is
normalised with the official VMamba rule ``scale="power"``: m ** 0.2, then m / max(m) (VMamba's ``simpnorm``), or
with RepLKNet's ``scale="log"``: log10(m + 1), then / max. The figures state which was used.

The "high-contribution area ratio" (RepLKNet): for thresholds t, the side of the smallest centred square holding
more than t of the (normalised) map's total, and that square's share of the image area.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from .common import (
    add_model_kwargs_argument,
    create_analysis_model,
    feature_map_fn,
    load_images,
    model_input_size,
    model_label,
    model_mean_std,
    pyplot,
    save_figure,
)

__all__ = [
    "ErfResult",
    "effective_receptive_field",
    "normalize_erf",
    "area_ratios",
    "plot_erfs",
    "add_arguments",
    "main",
]

SCALES = ("power", "log")
THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


@dataclass
class ErfResult:
    """The ERF map (sum of ReLU'd input gradients, averaged over images) and how many images it used."""

    grad_map: np.ndarray
    images_used: int
    images_skipped: int = 0
    label: str = ""
    extra: Dict[str, float] = field(default_factory=dict)


def central_point_gradient(feature_fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """sum_{batch, channel} ReLU(d/dx sum_c ReLU(out[:, c, h//2, w//2])) for one batch x (B, C, H, W) -> (H, W)."""
    x = x.detach().clone().requires_grad_(True)
    out = feature_fn(x)
    if out.dim() != 4:
        raise ValueError(f"the feature function must return a (B, C, h, w) map, got {tuple(out.shape)}")
    central = torch.relu(out[:, :, out.shape[2] // 2, out.shape[3] // 2]).sum()
    (grad,) = torch.autograd.grad(central, x, allow_unused=True)
    if grad is None:
        return torch.zeros(x.shape[2:], dtype=torch.float64)
    return torch.relu(grad).sum(dim=(0, 1)).double()


def effective_receptive_field(
    feature_fn: Callable[[Tensor], Tensor],
    images: Iterable[Tensor],
    progress: Optional[Callable[[int], None]] = None,
) -> ErfResult:
    """ERF of ``feature_fn`` (x -> (B, C, h, w)) over ``images`` (an iterable of (1, C, H, W) tensors, already
    normalised). Returns the mean over the images with a finite gradient (the others are skipped, as officially)."""
    total: Optional[Tensor] = None
    used = skipped = 0
    for i, x in enumerate(images):
        grad_map = central_point_gradient(feature_fn, x)
        if not torch.isfinite(grad_map).all():
            skipped += 1
            continue
        total = grad_map if total is None else total + grad_map
        used += 1
        if progress is not None:
            progress(i + 1)
    if total is None:
        raise ValueError("no image gave a finite gradient")
    return ErfResult(grad_map=(total / used).cpu().numpy(), images_used=used, images_skipped=skipped)


def normalize_erf(grad_map: np.ndarray, scale: str = "power") -> np.ndarray:
    """``power``: m**0.2 / max (the official VMamba tool); ``log``: log10(m + 1) / max (RepLKNet)."""
    m = np.asarray(grad_map, dtype=np.float64)
    if scale == "power":
        m = np.power(np.clip(m, 0, None), 0.2)
    elif scale == "log":
        m = np.log10(np.clip(m, 0, None) + 1)
    else:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    peak = m.max()
    return m / peak if peak > 0 else m


def area_ratios(data: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> Dict[float, Optional[Tuple[int, float]]]:
    """RepLKNet's high-contribution area ratio: per threshold t, (side, area share) of the smallest centred square
    around the central pixel holding more than t of the total; None if no square below the full size does."""
    h, w = data.shape
    total = float(data.sum())
    out: Dict[float, Optional[Tuple[int, float]]] = {}
    for t in thresholds:
        out[t] = None
        if total <= 0:
            continue
        for i in range(0, min(h, w) // 2 + 1):
            window = data[max(0, h // 2 - i) : h // 2 + i + 1, max(0, w // 2 - i) : w // 2 + i + 1]
            if window.sum() / total > t:
                side = 2 * i + 1
                out[t] = (side, side * side / (h * w))
                break
    return out


def plot_erfs(results: Sequence[ErfResult], path: str, scale: str = "power", title: Optional[str] = None) -> str:
    """One heat map per result, side by side (cmap RdYlGn like the official figures), written as a PNG."""
    plt = pyplot()
    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 0.6, 3.9), squeeze=False)
    image = None
    for ax, result in zip(axes[0], results):
        data = normalize_erf(result.grad_map, scale)
        image = ax.imshow(data, cmap="RdYlGn", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(result.label, fontsize=9)
        ratio = area_ratios(data, (0.5,))[0.5]
        if ratio is not None:
            ax.set_xlabel(f"half the mass within the central {ratio[0]} px", fontsize=8)
    rule = "m^0.2 / max (official VMamba)" if scale == "power" else "log10(m+1) / max (RepLKNet)"
    fig.suptitle(title or f"effective receptive field, {results[0].grad_map.shape[0]}x{results[0].grad_map.shape[1]} "
                 f"input, {results[0].images_used} images; scale {rule}", fontsize=9)
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, pad=0.02)
    return save_figure(fig, path)


# --- command line ------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", nargs="+", default=["vmamba_tiny_s1l8"],
                        help="one or more vssm / timm models, shown side by side (--model-kwargs applies to all)")
    add_model_kwargs_argument(parser)
    parser.add_argument("--checkpoint", nargs="+", default=None,
                        help="one per model, '-' for random init (default: all random init)")
    parser.add_argument("--labels", nargs="+", default=None, help="panel titles, one per model (default: the "
                                                                  "model name and checkpoint file)")
    parser.add_argument("--data", default="fashion-mnist",
                        help="'fashion-mnist' (test split) or an image file / folder (e.g. ImageNet val)")
    parser.add_argument("--images", type=int, default=50, help="number of images (official: 50)")
    parser.add_argument("--size", type=int, default=1024, help="input size S (S x S; official: 1024)")
    parser.add_argument("--scale", choices=SCALES, default="power",
                        help="power: m^0.2/max (official VMamba, default); log: log10(m+1)/max (RepLKNet)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random image subset and of random init")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--save-npy", action="store_true", help="also write each raw map as OUT_<model>.npy")
    parser.add_argument("--out", default="erf.png", help="PNG file to write")


def main(args: argparse.Namespace) -> int:
    checkpoints = args.checkpoint or ["-"] * len(args.model)
    if len(checkpoints) != len(args.model):
        print("vssm erf: give one --checkpoint per --model ('-' for random init)", file=sys.stderr)
        return 2
    if args.labels is not None and len(args.labels) != len(args.model):
        print("vssm erf: give one --labels entry per --model", file=sys.stderr)
        return 2
    size = (args.size, args.size)
    results: List[ErfResult] = []
    for index, (name, ckpt) in enumerate(zip(args.model, checkpoints)):
        ckpt = None if ckpt in ("-", "none", "") else ckpt
        torch.manual_seed(args.seed)
        model = create_analysis_model(name, checkpoint=ckpt, img_size=size, device=args.device, **args.model_kwargs)
        model.float().eval()
        for p in model.parameters():
            p.requires_grad_(False)
        mean, std = model_mean_std(model)
        in_chans = model_input_size(model)[0]
        images = (x.to(args.device) for x, _ in load_images(args.data, args.images, size, mean, std, in_chans, args.seed))

        def progress(i: int, name=name) -> None:
            print(f"\r{name}: image {i}/{args.images}", end="", file=sys.stderr, flush=True)

        result = effective_receptive_field(feature_map_fn(model), images, progress)
        print(file=sys.stderr)
        result.label = args.labels[index].replace("\\n", "\n") if args.labels else model_label(name, ckpt)
        results.append(result)
        ratios = area_ratios(normalize_erf(result.grad_map, args.scale))
        shown = ", ".join(f"t={t}: " + (f"{r[0]}px ({100 * r[1]:.1f}%)" if r else "-") for t, r in ratios.items())
        print(f"{name}: {result.images_used} images ({result.images_skipped} skipped); high-contribution area {shown}")
        if args.save_npy:
            stem = os.path.splitext(args.out)[0]
            np.save(f"{stem}_{name}.npy", result.grad_map)
    plot_erfs(results, args.out, args.scale)
    print(f"wrote {args.out}")
    return 0
