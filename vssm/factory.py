"""create_model: timm's factory plus vssm's checkpoint loader."""
from __future__ import annotations

from typing import Optional

import timm
import torch.nn as nn

from .checkpoint import load_checkpoint
from .cuda_graphs import enable_cuda_graphs

__all__ = ["create_model"]


def create_model(
    name: str,
    pretrained: bool = False,
    checkpoint: Optional[str] = None,
    checkpoint_key: str = "auto",
    cuda_graphs: bool = False,
    **kwargs,
) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` (vssm and timm models alike), then, if ``checkpoint`` is given, load it
    strictly with :func:`vssm.load_checkpoint` (official files and vssm's own); ``cuda_graphs`` replays training
    steps' trunk as CUDA graphs (:func:`vssm.enable_cuda_graphs`)."""
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"unknown model {name!r}; see vssm.list_models() or timm.list_models()") from err
        raise
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, key=checkpoint_key)
    if cuda_graphs:
        enable_cuda_graphs(model)
    return model
