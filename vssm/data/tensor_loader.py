"""Small datasets held as one tensor on the training device (Fashion-MNIST), with batched augmentation there.

Per-image PIL pipelines cost more than the model on 28 px images; here a whole split lives as uint8 on the device
(47 MB for Fashion-MNIST) and every batch is gathered, resized / padded, augmented and normalised with a few
tensor ops. Random choices come from generators seeded by ``(seed, epoch, step)`` and are drawn for the whole
*global* batch, then each rank takes its slice, so:

- a run resumed at any step sees exactly the batches and augmentations of an uninterrupted run;
- N processes with per-process batch B see the same images and augmentations as one process with batch N*B.

Augmentations (all optional): random translation (pad-and-crop by up to ``translate`` pixels), horizontal flip,
RandAugment (:mod:`vssm.data.rand_augment`, at the stored resolution after the shifts and flips, as timm runs it
after the crop and flip), random erasing (timm's definition: area 2-33 %, aspect 0.3-3.3, filled with per-pixel
normal noise, zeros or a per-image random value). Mixup / CutMix are applied afterwards by the engine (timm's
``Mixup``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .rand_augment import RandAugmentPolicy

__all__ = ["TensorAugment", "TensorTrainLoader", "TensorEvalLoader", "fit_images", "mix_seed"]


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 over the values): distinct for distinct tuples."""
    state = 0x9E3779B97F4A7C15
    mask = (1 << 64) - 1
    for v in values:
        state = (state ^ (int(v) & mask)) & mask
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        state = z ^ (z >> 31)
    return state & ((1 << 63) - 1)


def fit_images(x: Tensor, size: int, mode: str = "auto") -> Tensor:
    """(B, C, h, w) float in [0, 1] -> (B, C, size, size): zero-pad (centred) when ``mode`` is "pad" (or "auto" and
    the image is at most 8 px smaller), bilinear resize otherwise."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if mode == "auto":
        mode = "pad" if 0 <= size - max(h, w) <= 8 else "resize"
    if mode == "pad":
        if size < max(h, w):
            raise ValueError(f"cannot pad {h}x{w} images to {size}x{size}; use resize")
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(x, (left, size - w - left, top, size - h - top))
    if mode != "resize":
        raise ValueError(f"image fit mode must be 'auto', 'pad' or 'resize', got {mode!r}")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < max(h, w))


@dataclass
class TensorAugment:
    """Batched train-time augmentation on (B, C, H, W) tensors; parameters drawn for a global batch."""

    translate: int = 0  # max shift in pixels of the stored images (pad-and-crop with zero padding)
    hflip: float = 0.0  # probability of a horizontal flip
    reprob: float = 0.0  # random erasing probability
    remode: str = "pixel"  # "pixel" (per-pixel normal), "rand" (per-image normal), "const" (zeros)
    re_min_area: float = 0.02
    re_max_area: float = 1 / 3
    re_min_aspect: float = 0.3
    rand_augment: Optional[RandAugmentPolicy] = None
    # fuse the RandAugment pass with torch.compile: eager, its hundreds of small operations per batch cost a small
    # model about a quarter of its GPU throughput (msvmambav3_nano on an H100, benchmarks/results/fashion-mnist.md)
    compile_rand_augment: bool = False

    def __post_init__(self) -> None:
        self._rand_augment_fn = None
        if self.rand_augment is not None:
            self._rand_augment_fn = (torch.compile(self.rand_augment.apply, dynamic=False)
                                     if self.compile_rand_augment else self.rand_augment.apply)

    @property
    def active(self) -> bool:
        return self.translate > 0 or self.hflip > 0 or self.reprob > 0 or self.rand_augment is not None

    def draw(self, n: int, size: int, generator: torch.Generator, device: torch.device) -> dict:
        """Random parameters for ``n`` images of ``size`` x ``size`` (uniform draws, fixed count per call)."""
        u = torch.rand((n, 8), generator=generator, device=device, dtype=torch.float32)
        p = {}
        if self.translate > 0:
            span = 2 * self.translate + 1
            p["dy"] = (u[:, 0] * span).long().clamp_(max=span - 1) - self.translate
            p["dx"] = (u[:, 1] * span).long().clamp_(max=span - 1) - self.translate
        if self.hflip > 0:
            p["flip"] = u[:, 2] < self.hflip
        if self.reprob > 0:
            area = size * size * (self.re_min_area + u[:, 4] * (self.re_max_area - self.re_min_area))
            log_lo, log_hi = math.log(self.re_min_aspect), math.log(1 / self.re_min_aspect)
            aspect = torch.exp(log_lo + u[:, 5] * (log_hi - log_lo))
            h = torch.sqrt(area * aspect).round().long().clamp_(1, size - 1)
            w = torch.sqrt(area / aspect).round().long().clamp_(1, size - 1)
            p["erase"] = u[:, 3] < self.reprob
            p["top"] = torch.minimum((u[:, 6] * (size - h + 1).float()).long(), size - h)
            p["left"] = torch.minimum((u[:, 7] * (size - w + 1).float()).long(), size - w)
            p["eh"], p["ew"] = h, w
        if self.rand_augment is not None:
            p.update(self.rand_augment.draw(n, generator, device))
        return p

    def apply_before_resize(self, x: Tensor, p: dict) -> Tensor:
        """Shift, flip and RandAugment images ``x`` in [0, 1] (before normalisation: borders fill with black)."""
        n, c, h, w = x.shape
        if "dy" in p:
            t = self.translate
            padded = F.pad(x, (t, t, t, t))
            rows = (torch.arange(h, device=x.device)[None, :] + t - p["dy"][:, None]).clamp_(0, h + 2 * t - 1)
            cols = (torch.arange(w, device=x.device)[None, :] + t - p["dx"][:, None]).clamp_(0, w + 2 * t - 1)
            index = torch.arange(n, device=x.device)[:, None, None]
            x = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if "flip" in p:
            x = torch.where(p["flip"][:, None, None, None], x.flip(-1), x)
        if self._rand_augment_fn is not None:
            x = self._rand_augment_fn(x, p)
        return x

    def apply_erase(self, x: Tensor, p: dict, generator: torch.Generator, part: Optional[slice] = None,
                    global_batch: Optional[int] = None) -> Tensor:
        """Random erasing on normalised images (timm's order). Random fills are drawn from ``generator`` for
        ``global_batch`` images and rows ``part`` taken, so they are the same whatever the number of processes."""
        n, c, h, w = x.shape
        if "erase" in p:
            ys = torch.arange(h, device=x.device)[None, :]
            xs = torch.arange(w, device=x.device)[None, :]
            in_rows = (ys >= p["top"][:, None]) & (ys < (p["top"] + p["eh"])[:, None])
            in_cols = (xs >= p["left"][:, None]) & (xs < (p["left"] + p["ew"])[:, None])
            mask = (in_rows[:, :, None] & in_cols[:, None, :] & p["erase"][:, None, None])[:, None]
            total, part = (global_batch or n), (part or slice(0, n))
            if self.remode == "pixel":
                fill = torch.randn((total, c, h, w), generator=generator, device=x.device, dtype=x.dtype)[part]
            elif self.remode == "rand":
                fill = torch.randn((total, c, 1, 1), generator=generator, device=x.device, dtype=x.dtype)[part]
                fill = fill.expand_as(x)
            else:
                fill = torch.zeros((), device=x.device, dtype=x.dtype)
            x = torch.where(mask, fill, x)
        return x


class _TensorSplit:
    def __init__(self, images: Tensor, labels: Tensor, img_size: int, in_chans: int, mean, std, fit: str):
        if images.dim() == 3:
            images = images[:, None]
        if images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8 (N, [C,] H, W), got {images.dtype}")
        self.images, self.labels = images, labels
        self.img_size, self.in_chans, self.fit = img_size, in_chans, fit
        mean = tuple(mean) * in_chans if len(mean) == 1 else tuple(mean)
        std = tuple(std) * in_chans if len(std) == 1 else tuple(std)
        if len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(f"normalisation mean / std have {len(mean)} / {len(std)} values for {in_chans} input "
                             f"channels; give one value or one per channel")
        # built once on the data's device: a tensor made from a list per batch is a blocking copy to the GPU, a
        # stream sync that would stall every training step until the previous one has finished
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).to(images.device)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1).to(images.device)

    def _prepare(self, index: Tensor, before_resize=None) -> Tuple[Tensor, Tensor]:
        x = self.images[index].float().div_(255)
        if before_resize is not None:  # at the stored resolution: shifts are in pixels of the original images
            x = before_resize(x)
        x = fit_images(x, self.img_size, self.fit)
        if x.shape[1] != self.in_chans:
            if x.shape[1] != 1:
                raise ValueError(f"cannot turn {x.shape[1]}-channel images into {self.in_chans} channels")
            x = x.expand(-1, self.in_chans, -1, -1)
        return (x - self.mean) / self.std, self.labels[index]


class TensorTrainLoader(_TensorSplit):
    """Shuffled, augmented training batches of one rank (drop_last: every step has a full global batch).

    ``batch_size`` is per process; the global batch is ``batch_size * world_size``. Iterate with
    :meth:`iter_epoch` (``start_step`` skips batches without computing them, for a resume mid-epoch).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        img_size: int,
        in_chans: int,
        mean,
        std,
        augment: Optional[TensorAugment] = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        fit: str = "auto",
        limit_batches: Optional[int] = None,
    ):
        super().__init__(images, labels, img_size, in_chans, mean, std, fit)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.global_batch = batch_size * world_size
        self.augment = augment or TensorAugment()
        if len(images) < self.global_batch:
            raise ValueError(
                f"the training set has {len(images)} images, fewer than one global batch of {self.global_batch} "
                f"({batch_size} per process x {world_size} processes); lower --batch-size"
            )
        steps = len(images) // self.global_batch
        self.steps = min(steps, limit_batches) if limit_batches else steps
        self.num_samples = len(images)

    def __len__(self) -> int:
        return self.steps

    def iter_epoch(self, epoch: int, start_step: int = 0) -> Iterator[Tuple[Tensor, Tensor]]:
        device = self.images.device
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))
        order = order.to(device)
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for step in range(start_step, self.steps):
            index = order[step * self.global_batch : (step + 1) * self.global_batch][lo:hi]
            if not self.augment.active:
                yield self._prepare(index)
                continue
            gen = torch.Generator(device=device)
            gen.manual_seed(mix_seed(self.seed, epoch, step, 1))
            params = self.augment.draw(self.global_batch, self.img_size, gen, device)
            params = {k: v[lo:hi] for k, v in params.items()}
            x, y = self._prepare(index, lambda im: self.augment.apply_before_resize(im, params))
            yield self.augment.apply_erase(x, params, gen, slice(lo, hi), self.global_batch), y


class TensorEvalLoader(_TensorSplit):
    """This rank's contiguous share of an evaluation split, in batches, unshuffled and unaugmented."""

    def __init__(
        self, images: Tensor, labels: Tensor, batch_size: int, img_size: int, in_chans: int, mean, std,
        rank: int = 0, world_size: int = 1, fit: str = "auto", limit_batches: Optional[int] = None,
    ):
        super().__init__(images, labels, img_size, in_chans, mean, std, fit)
        n = len(images)
        lo, hi = n * rank // world_size, n * (rank + 1) // world_size
        self.indices = torch.arange(lo, hi, device=images.device)
        self.batch_size = batch_size
        steps = math.ceil(len(self.indices) / batch_size)
        self.steps = min(steps, limit_batches) if limit_batches else steps
        self.num_samples = n

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        for step in range(self.steps):
            yield self._prepare(self.indices[step * self.batch_size : (step + 1) * self.batch_size])
