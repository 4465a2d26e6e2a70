"""ImageFolder trees (``root/train/<class>/*.jpg``, ``root/val/<class>/*.jpg``) with timm's transforms.

Shuffling and augmentation are reproducible from ``(seed, epoch, index)`` alone, whatever the number of
loader workers or processes: the batch sampler shuffles globally and gives each rank its slice of every global
batch (as :class:`~vssm.data.tensor_loader.TensorTrainLoader` does), and each sample's random transform runs
under RNGs seeded from its own index and the epoch. A run resumed mid-epoch therefore sees the same remaining
batches as an uninterrupted one.
"""
from __future__ import annotations

import os
import random
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .tensor_loader import mix_seed

__all__ = ["DataError", "check_image_folder", "SeededTransformDataset", "GlobalBatchSampler", "ImageFolderLoader"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A dataset that cannot be found or read."""


def check_image_folder(root: str, split: str) -> str:
    """The path of ``root/split``, checked to be an ImageFolder tree; :class:`DataError` says what is wrong."""
    if not os.path.exists(root):
        raise DataError(
            f"data directory {root!r} does not exist. Pass --data fashion-mnist, or a folder holding train/ and val/ "
            f"with one sub-folder of images per class (the ImageNet layout)"
        )
    if not os.path.isdir(root):
        raise DataError(f"--data {root!r} is a file; it must be a folder holding train/ and val/ (ImageFolder layout)")
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        found = sorted(os.listdir(root))[:8]
        raise DataError(
            f"{root!r} has no {split}/ folder (found {found}); the ImageFolder layout is {root}/{split}/<class>/<image>"
        )
    classes = sorted(d.name for d in os.scandir(path) if d.is_dir())
    if not classes:
        raise DataError(f"{path!r} has no class sub-folders; expected {path}/<class>/<image files>")
    return path


class SeededTransformDataset(Dataset):
    """Indexed by ``(index, epoch)``; the transform of each sample runs with python, numpy and torch RNGs seeded
    from ``(seed, epoch, index)``, and the caller's RNG states are left as they were."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        s = mix_seed(self.seed, epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                random.seed(s)
                np.random.seed(s % (1 << 32))
                torch.manual_seed(s)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class GlobalBatchSampler(Sampler[List[Tuple[int, int]]]):
    """Batches of ``(index, epoch)`` for one rank: a seeded shuffle per epoch cut into global batches of
    ``batch_size * world_size``, each rank taking its slice; incomplete global batches are dropped (training)."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 limit_batches: Optional[int] = None):
        self.n, self.batch_size, self.rank, self.world_size, self.seed = n, batch_size, rank, world_size, seed
        self.global_batch = batch_size * world_size
        if n < self.global_batch:
            raise DataError(
                f"the training set has {n} images, fewer than one global batch of {self.global_batch}; lower --batch-size"
            )
        steps = n // self.global_batch
        self.steps = min(steps, limit_batches) if limit_batches else steps
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start = epoch, start_step

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(mix_seed(self.seed, self.epoch)))
        lo = self.rank * self.batch_size
        for step in range(self.start, self.steps):
            chunk = order[step * self.global_batch + lo : step * self.global_batch + lo + self.batch_size]
            yield [(int(i), self.epoch) for i in chunk]


class _ShardSampler(Sampler[List[int]]):
    """This rank's contiguous share of the dataset, in order, in batches (evaluation: every image exactly once)."""

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int, limit_batches: Optional[int] = None):
        lo, hi = n * rank // world_size, n * (rank + 1) // world_size
        self.batches = [list(range(i, min(i + batch_size, hi))) for i in range(lo, hi, batch_size)]
        if limit_batches:
            self.batches = self.batches[:limit_batches]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class ImageFolderLoader:
    """Train or eval batches of an ImageFolder split on ``device``; same interface as the tensor loaders
    (``len()``, ``iter_epoch(epoch, start_step)`` for training, iteration for evaluation)."""

    def __init__(self, dataset: Dataset, batch_size: int, device: torch.device, train: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1, workers: int = 4, limit_batches: Optional[int] = None):
        self.device, self.train = device, train
        self.num_samples = len(dataset)
        if train:
            self.dataset = SeededTransformDataset(dataset, seed)
            self.sampler = GlobalBatchSampler(len(dataset), batch_size, rank, world_size, seed, limit_batches)
            self.steps = self.sampler.steps
        else:
            self.dataset = dataset
            self.sampler = _ShardSampler(len(dataset), batch_size, rank, world_size, limit_batches)
            self.steps = len(self.sampler)
        self.workers = workers
        self.loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0 and train,
            generator=torch.Generator().manual_seed(seed),  # never draw worker seeds from the global RNG
        )

    def __len__(self) -> int:
        return self.steps

    def _to_device(self, batch) -> Tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def iter_epoch(self, epoch: int, start_step: int = 0):
        self.sampler.set_epoch(epoch, start_step)
        for batch in self.loader:
            yield self._to_device(batch)

    def __iter__(self):
        for batch in self.loader:
            yield self._to_device(batch)


def image_folder_dataset(root: str, split: str, transform) -> Dataset:
    from torchvision.datasets import ImageFolder

    path = check_image_folder(root, split)
    try:
        return ImageFolder(path, transform=transform)
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"cannot read {path!r} as an ImageFolder tree: {err}") from err


def image_folder_classes(root: str, split: str = "train") -> Sequence[str]:
    path = check_image_folder(root, split)
    return sorted(d.name for d in os.scandir(path) if d.is_dir())
