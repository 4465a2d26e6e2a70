"""Build the train / eval loaders of a run from its configuration: Fashion-MNIST as device tensors, or an
ImageFolder tree with timm's ``create_transform``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from .fashion_mnist import FASHION_MNIST_CLASSES, read_fashion_mnist
from .imagefolder import DataError, ImageFolderLoader, image_folder_classes, image_folder_dataset
from .rand_augment import RandAugmentPolicy
from .tensor_loader import TensorAugment, TensorEvalLoader, TensorTrainLoader

__all__ = ["DataInfo", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "data_info", "eval_part", "build_train_loader",
           "build_eval_loader"]

FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
_SUBSET_SEED = 20240607  # subsets are the same whatever the run's seed
_HOLDOUT_SEED = 20261124  # so is the held-out validation set, and it is drawn apart from the subsets


@dataclass
class DataInfo:
    name: str
    num_classes: int
    in_chans: int
    img_size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    classes: Sequence[str] = field(default_factory=tuple)
    crop_pct: Optional[float] = None
    interpolation: str = "bicubic"


def _is_fmnist(cfg) -> bool:
    from ..train.config import is_fashion_mnist

    return is_fashion_mnist(cfg["data"])


def _subset(n: int, k: Optional[int]) -> Optional[torch.Tensor]:
    if not k or k >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(_SUBSET_SEED))[:k].sort().values


def _indices(n: int, part: str, cfg: Dict[str, Any]) -> Optional[torch.Tensor]:
    """Which of a split's ``n`` images a run reads (``None``: all of them, in order).

    ``part`` "train": the training split less the ``val_holdout`` images held out of it, then ``train_subset`` of
    the rest; "holdout": the held-out images, then ``val_subset`` of them; "val": ``val_subset`` of the val split.
    """
    subset = cfg.get("train_subset" if part == "train" else "val_subset")
    holdout = int(cfg.get("val_holdout") or 0)
    if part == "val" or not holdout:
        return _subset(n, subset)
    if holdout >= n:
        raise DataError(f"--val-holdout {holdout} holds out every one of the {n} training images; hold out fewer "
                        f"(e.g. a tenth: --val-holdout {n // 10})")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(_HOLDOUT_SEED))
    index = (order[holdout:] if part == "train" else order[:holdout]).sort().values
    chosen = _subset(len(index), subset)
    return index if chosen is None else index[chosen]


def eval_part(cfg: Dict[str, Any]) -> str:
    """What a run evaluates on: "holdout" (``val_holdout`` images held out of the training split) or "val"."""
    return "holdout" if cfg.get("val_holdout") else "val"


def data_info(cfg: Dict[str, Any], model: Optional[torch.nn.Module] = None) -> DataInfo:
    """Number of classes, channels, input size and normalisation of the configured data."""
    if _is_fmnist(cfg):
        in_chans = cfg.get("in_chans") or 1
        mean = FASHION_MNIST_MEAN * in_chans
        std = FASHION_MNIST_STD * in_chans
        return DataInfo("fashion-mnist", 10, in_chans, cfg.get("img_size") or 28, mean, std, FASHION_MNIST_CLASSES)
    from .imagefolder import check_image_folder

    if cfg.get("_split", "train") == "train":
        if eval_part(cfg) == "val":
            check_image_folder(cfg["data"], "val")  # fail before any work if the validation half is missing
        classes = image_folder_classes(cfg["data"], "train")
    else:
        classes = image_folder_classes(cfg["data"], "val")
    in_chans = cfg.get("in_chans") or 3
    if in_chans != 3:
        raise DataError("ImageFolder data is read as RGB; --in-chans must be 3")
    img_size, mean, std, crop_pct, interp = cfg.get("img_size"), None, None, cfg.get("crop_pct"), cfg.get("interpolation")
    if model is not None:
        from timm.data import resolve_data_config

        resolved = resolve_data_config({}, model=model)
        img_size = img_size or resolved["input_size"][-1]
        mean, std = resolved["mean"], resolved["std"]
        crop_pct = crop_pct or resolved.get("crop_pct")
        interp = interp or resolved.get("interpolation")
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return DataInfo(
        cfg["data"], len(classes), 3, img_size or 224, tuple(mean or IMAGENET_DEFAULT_MEAN),
        tuple(std or IMAGENET_DEFAULT_STD), classes, crop_pct or 0.875, interp or "bicubic",
    )


def _fmnist_tensors(part: str, device: torch.device, cfg: Dict[str, Any]):
    images, labels = read_fashion_mnist("test" if part == "val" else "train")
    images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    index = _indices(len(images), part, cfg)
    if index is not None:
        images, labels = images[index], labels[index]
    return images.to(device), labels.to(device)


def build_train_loader(cfg: Dict[str, Any], info: DataInfo, dist, device: torch.device):
    if _is_fmnist(cfg):
        images, labels = _fmnist_tensors("train", device, cfg)
        augment = TensorAugment(
            translate=int(cfg.get("translate") or 0), hflip=float(cfg.get("hflip") or 0),
            reprob=float(cfg.get("reprob") or 0), remode=cfg.get("remode") or "pixel",
            rand_augment=RandAugmentPolicy.parse(cfg["auto_augment"]) if cfg.get("auto_augment") else None,
            compile_rand_augment=bool(cfg.get("compile")) and device.type == "cuda",
        )
        return TensorTrainLoader(
            images, labels, cfg["batch_size"], info.img_size, info.in_chans, info.mean, info.std, augment,
            seed=cfg["seed"], rank=dist.rank, world_size=dist.world_size, fit=cfg.get("fit", "auto"),
            limit_batches=cfg.get("limit_train_batches"),
        )
    from timm.data import create_transform

    transform = create_transform(
        input_size=(3, info.img_size, info.img_size),
        is_training=True,
        scale=tuple(cfg["scale"]),
        ratio=tuple(cfg["ratio"]),
        hflip=float(cfg.get("hflip") or 0),
        vflip=0.0,
        color_jitter=float(cfg.get("color_jitter") or 0) or None,
        auto_augment=cfg.get("auto_augment"),
        interpolation=cfg.get("interpolation") or "bicubic",
        mean=info.mean,
        std=info.std,
        re_prob=float(cfg.get("reprob") or 0),
        re_mode=cfg.get("remode") or "pixel",
        re_count=int(cfg.get("recount") or 1),
    )
    dataset = image_folder_dataset(cfg["data"], "train", transform)
    index = _indices(len(dataset), "train", cfg)
    if index is not None:
        dataset = torch.utils.data.Subset(dataset, index.tolist())
    return ImageFolderLoader(
        dataset, cfg["batch_size"], device, train=True, seed=cfg["seed"], rank=dist.rank,
        world_size=dist.world_size, workers=cfg.get("workers", 4), limit_batches=cfg.get("limit_train_batches"),
    )


def build_eval_loader(cfg: Dict[str, Any], info: DataInfo, dist, device: torch.device):
    """The images a run evaluates on: the val split (Fashion-MNIST's test set), or with ``val_holdout`` the images
    held out of the training split, so that choosing the best epoch leaves the val split unseen."""
    batch = cfg.get("eval_batch_size") or 2 * cfg.get("batch_size", 128)
    part = eval_part(cfg)
    if _is_fmnist(cfg):
        images, labels = _fmnist_tensors(part, device, cfg)
        return TensorEvalLoader(
            images, labels, batch, info.img_size, info.in_chans, info.mean, info.std, rank=dist.rank,
            world_size=dist.world_size, fit=cfg.get("fit", "auto"), limit_batches=cfg.get("limit_val_batches"),
        )
    from timm.data import create_transform

    transform = create_transform(
        input_size=(3, info.img_size, info.img_size), is_training=False, interpolation=info.interpolation,
        mean=info.mean, std=info.std, crop_pct=info.crop_pct,
    )
    dataset = image_folder_dataset(cfg["data"], "train" if part == "holdout" else "val", transform)
    index = _indices(len(dataset), part, cfg)
    if index is not None:
        dataset = torch.utils.data.Subset(dataset, index.tolist())
    return ImageFolderLoader(
        dataset, batch, device, train=False, seed=cfg["seed"], rank=dist.rank, world_size=dist.world_size,
        workers=cfg.get("workers", 4), limit_batches=cfg.get("limit_val_batches"),
    )
