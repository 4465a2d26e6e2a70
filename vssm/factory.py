"""create_model: timm's factory plus vssm's checkpoint loader; import_model_module: models of the user's own."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Optional

import timm
import torch.nn as nn

from .checkpoint import load_checkpoint
from .cuda_graphs import enable_cuda_graphs

__all__ = ["create_model", "import_model_module"]


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


def import_model_module(spec: str) -> None:
    """Import ``spec``, a dotted module name (``my_pkg.models``) or a ``.py`` file, so that the models it registers
    with timm's ``@register_model`` can be created by name (``vssm train --model-module``). A file is executed once
    per process however often it is named."""
    if spec.endswith(".py") or os.sep in spec:
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
            raise ValueError(f"model module {spec!r}: no such file; give the path of a .py file that registers "
                             f"its models with timm's @register_model, or a dotted module name on PYTHONPATH")
        # the file's path names its module, so a second call (resume, eval in the same process) is a no-op
        name = "vssm_model_module_" + "".join(c if c.isalnum() else "_" for c in path)
        if name in sys.modules:
            return
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return
    try:
        importlib.import_module(spec)
    except ModuleNotFoundError as err:
        if err.name == spec or spec.startswith(f"{err.name}."):
            raise ValueError(f"model module {spec!r} not found: put its package on PYTHONPATH, or give the path "
                             f"of its .py file") from err
        raise
