"""Shared pieces of the analysis tools: building a model (vssm or timm) with or without a checkpoint, reading
images with the model's own normalisation, writing figures with matplotlib's Agg backend."""
from __future__ import annotations

import inspect
import os
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

__all__ = [
    "checkpoint_info",
    "checkpoint_model_kwargs",
    "create_analysis_model",
    "model_input_size",
    "model_mean_std",
    "load_images",
    "image_files",
    "pyplot",
    "save_figure",
    "parse_size",
    "feature_map_fn",
    "model_label",
    "add_model_kwargs_argument",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_SIZE_KWARG_CACHE = {}


def add_model_kwargs_argument(parser) -> None:
    """``--model-kwargs JSON``: extra keyword arguments of the model constructor (e.g. a reduced configuration)."""
    import json

    parser.add_argument("--model-kwargs", type=json.loads, default={}, metavar="JSON",
                        help='extra model constructor arguments, e.g. \'{"depths": [1, 1, 2, 1], "dims": 32}\'')


def parse_size(values: Optional[Sequence[int]]) -> Optional[Tuple[int, int]]:
    """``[S]`` -> (S, S), ``[H, W]`` -> (H, W), None -> None."""
    if values is None:
        return None
    values = [int(v) for v in values]
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise ValueError(f"a size is S or H W, got {values}")


def _checkpoint_shapes(path: str, classifier: Optional[str], first_conv: Optional[str]) -> dict:
    """num_classes and in_chans of the model a checkpoint was trained as (read from its head and stem)."""
    from ..checkpoint import extract_state_dict, read_checkpoint

    state = extract_state_dict(read_checkpoint(path))
    out = {}
    if classifier and f"{classifier}.weight" in state:
        out["num_classes"] = int(state[f"{classifier}.weight"].shape[0])
    elif classifier and not any(k.startswith(classifier + ".") for k in state):
        out["num_classes"] = 0
    if first_conv and f"{first_conv}.weight" in state and state[f"{first_conv}.weight"].dim() == 4:
        out["in_chans"] = int(state[f"{first_conv}.weight"].shape[1])
    return out


def _accepts_img_size(name: str) -> bool:
    """Whether ``timm.create_model(name, img_size=...)`` is meaningful (ViT, Swin, ...; not vssm / CNNs)."""
    if name not in _SIZE_KWARG_CACHE:
        import timm

        from .._registry import family_of

        ok = False
        if family_of(name) is None:
            try:
                with torch.device("meta"):
                    model = timm.create_model(name)
                ok = "img_size" in inspect.signature(type(model).__init__).parameters
            except Exception:  # noqa: BLE001 - any failure means "do not pass it"
                ok = False
        _SIZE_KWARG_CACHE[name] = ok
    return _SIZE_KWARG_CACHE[name]


def checkpoint_info(path: str) -> dict:
    """What a vssm training checkpoint / exported ``model.safetensors`` records about its model and data (model
    name, model_kwargs, num_classes, in_chans, img_size, mean, std, ...); {} for official or foreign files."""
    try:
        from ..train.checkpointing import checkpoint_metadata
    except ImportError:  # the training package is optional here
        return {}
    try:
        return checkpoint_metadata(path) or {}
    except Exception:  # noqa: BLE001 - unreadable here: load_checkpoint will say why
        return {}


def checkpoint_model_kwargs(name: str, checkpoint: str, info: Optional[dict] = None) -> dict:
    """The constructor arguments ``name`` needs for ``checkpoint``: the model_kwargs / num_classes / in_chans a vssm
    checkpoint records, else num_classes and in_chans read from the head and stem weights."""
    import timm

    info = checkpoint_info(checkpoint) if info is None else info
    recorded = dict(info.get("model_kwargs") or {})
    for field_name in ("num_classes", "in_chans"):
        if info.get(field_name) is not None:
            recorded[field_name] = info[field_name]
    with torch.device("meta"):
        probe = timm.create_model(name, **recorded)
    cfg = getattr(probe, "pretrained_cfg", {}) or {}
    return {**_checkpoint_shapes(checkpoint, cfg.get("classifier"), cfg.get("first_conv")), **recorded}


def create_analysis_model(
    name: str,
    checkpoint: Optional[str] = None,
    img_size: Optional[Tuple[int, int]] = None,
    device: str = "cpu",
    meta: bool = False,
    **kwargs,
) -> nn.Module:
    """A vssm or timm model in eval mode.

    ``checkpoint``: loaded strictly with :func:`vssm.load_checkpoint`. The model is built the way the checkpoint
    needs: num_classes and in_chans from its head and stem, and, for vssm training checkpoints / exported weights,
    the recorded model_kwargs (the EMA weights when the run kept them); their recorded normalisation and input size
    go into ``model.pretrained_cfg`` so the tools feed images the way the model was trained.
    ``img_size``: passed to timm models whose size is fixed at construction (ViT, Swin), so they run at that size.
    ``meta``: build on the meta device (no memory, no initialisation), for shape-only work such as FLOP counting.
    """
    import contextlib

    from ..factory import create_model

    info = checkpoint_info(checkpoint) if checkpoint is not None else {}
    key = ("model_ema" if info.get("has_ema") else "model") if info.get("kind") == "training" else "auto"
    if checkpoint is not None:
        kwargs = {**checkpoint_model_kwargs(name, checkpoint, info), **kwargs}
    if img_size is not None and _accepts_img_size(name):
        kwargs.setdefault("img_size", tuple(img_size))
    with torch.device("meta") if meta else contextlib.nullcontext():
        model = create_model(name, checkpoint=checkpoint, checkpoint_key=key, **kwargs)
    if info:
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        if info.get("mean") and info.get("std"):
            cfg["mean"], cfg["std"] = tuple(info["mean"]), tuple(info["std"])
        if info.get("img_size"):
            size = info["img_size"]
            size = (size, size) if isinstance(size, int) else tuple(size)
            cfg["input_size"] = (int(info.get("in_chans") or 3),) + tuple(size)
        model.pretrained_cfg = cfg
    return model.to(device).eval() if not meta else model.eval()


def model_input_size(model: nn.Module) -> Tuple[int, int, int]:
    """(C, H, W) from the model's pretrained_cfg (timm convention), else (in_chans or 3, 224, 224)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = tuple(cfg.get("input_size", (3, 224, 224)))
    in_chans = _first_conv_in_channels(model)
    return (in_chans or size[0], size[1], size[2])


def _first_conv_in_channels(model: nn.Module) -> Optional[int]:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return None


def model_mean_std(model: nn.Module) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """The normalisation the model was trained with (its pretrained_cfg; ImageNet's for every vssm model)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN)), tuple(cfg.get("std", IMAGENET_DEFAULT_STD))


def model_label(name: str, checkpoint: Optional[str]) -> str:
    return f"{name}\n({os.path.basename(checkpoint)})" if checkpoint else f"{name}\n(random init)"


def image_files(path: str) -> List[str]:
    """Image files under ``path`` (a file, or a folder searched recursively, e.g. an ImageFolder tree), sorted."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no image file or folder at {path}")
    files = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        files.extend(os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {path}")
    return files


def _transform(size: Tuple[int, int], mean, std, in_chans: int):
    from torchvision import transforms as T

    resize = T.Resize(min(size), interpolation=T.InterpolationMode.BICUBIC)
    return T.Compose(
        [
            resize,
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(mean[:in_chans] if len(mean) >= in_chans else mean * in_chans,
                        std[:in_chans] if len(std) >= in_chans else std * in_chans),
        ]
    )


def load_images(
    data: str,
    count: int,
    size: Tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    in_chans: int = 3,
    seed: int = 0,
    shuffle: bool = True,
) -> Iterator[Tuple[Tensor, Tensor]]:
    """Yield ``count`` (normalised image (1, C, H, W), displayable image (H, W, 3) in [0, 1]) pairs.

    ``data``: "fashion-mnist" (the test split; grey images replicated to ``in_chans``), an image file, or a folder
    of images (searched recursively). Images are resized (bicubic, shorter side) and centre-cropped to ``size``,
    then normalised with ``mean`` / ``std``: pass the model's own (:func:`model_mean_std`), e.g. ImageNet's.
    ``shuffle`` draws a seeded random subset, like the official ERF tool's RandomSampler.
    """
    from PIL import Image

    transform = _transform(size, tuple(mean), tuple(std), in_chans)
    mode = "L" if in_chans == 1 else "RGB"
    generator = torch.Generator().manual_seed(seed)
    if data.lower().replace("_", "-") in ("fashion-mnist", "fashionmnist"):
        from ..data import read_fashion_mnist

        images, _ = read_fashion_mnist("test")
        order = torch.randperm(len(images), generator=generator) if shuffle else torch.arange(len(images))
        pil = (Image.fromarray(images[int(i)]).convert(mode) for i in order[:count])
    else:
        files = image_files(data)
        order = torch.randperm(len(files), generator=generator) if shuffle else torch.arange(len(files))
        pil = (Image.open(files[int(i)]).convert(mode) for i in order[:count])
    from torchvision import transforms as T

    show = T.Compose([T.Resize(min(size), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor()])
    for image in pil:
        shown = show(image.convert("RGB")).permute(1, 2, 0).clamp(0, 1)
        yield transform(image).unsqueeze(0), shown


def feature_map_fn(model: nn.Module):
    """x -> the last stage's feature map (B, C, h, w), before the classifier's norm, for vssm and timm models.

    Uses ``forward_intermediates`` (timm's API, which vssm models follow) when present: it returns NCHW maps for
    hierarchical models and reshapes ViT tokens (without the class token) to a grid. Otherwise falls back to
    ``forward_features`` and accepts (B, C, h, w) maps or channel-last maps of known width.
    """
    if hasattr(model, "forward_intermediates"):

        def fn(x: Tensor) -> Tensor:
            try:
                out = model.forward_intermediates(x, indices=1, intermediates_only=True, norm=False)
            except TypeError:
                out = model.forward_intermediates(x, indices=1, intermediates_only=True)
            return out[-1]

        return fn
    num_features = getattr(model, "num_features", None)

    def fallback(x: Tensor) -> Tensor:
        out = model.forward_features(x)
        if out.dim() != 4:
            raise ValueError(f"{type(model).__name__}.forward_features returned {tuple(out.shape)}, not a 2-D map")
        if num_features is not None and out.shape[-1] == num_features and out.shape[1] != num_features:
            out = out.permute(0, 3, 1, 2)
        return out

    return fallback


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (works without a display)."""
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str, dpi: int = 100) -> str:
    """Write ``fig`` as a PNG (parent folders created) and close it; returns the path."""
    plt = pyplot()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return path
