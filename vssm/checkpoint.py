"""Loading official and vssm checkpoints: safely, strictly, with errors that say what is wrong.

Accepted files: ``.safetensors``; PyTorch files holding a bare state_dict or a dict with ``model`` / ``model_ema``
/ ``state_dict`` / ``module`` (official training checkpoints, the official release files, mmdet/mmseg files with
``backbone.`` prefixes, DDP ``module.`` prefixes). Pickles are read with ``weights_only=True``: tensors, containers
and plain values only, plus ``argparse.Namespace`` (the official Vim checkpoints store their training arguments
that way) and yacs ``CfgNode`` configs (official VMamba / MSVMamba training checkpoints), read as plain dicts.
Anything else is refused before it runs.
"""
from __future__ import annotations

import argparse
import functools
import os
import pickle
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional

import torch
import torch.nn as nn
from torch import Tensor

from ._registry import list_models

__all__ = ["CheckpointError", "read_checkpoint", "extract_state_dict", "load_checkpoint", "find_matching_models"]

# The official MSVMamba (and VMamba) training checkpoints pickle their yacs config ('config': CfgNode, a dict
# subclass); it is read as a plain OrderedDict, so yacs is neither needed nor imported and no code of it runs.
SAFE_GLOBALS = [argparse.Namespace, (OrderedDict, "yacs.config.CfgNode")]
_WRAPPER_KEYS = ("model", "model_ema", "state_dict", "module", "ema", "state_dict_ema")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def read_checkpoint(path: str) -> object:
    """Read a checkpoint file (safetensors or a PyTorch pickle, weights only) without interpreting it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint file is empty: {path}")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"cannot read {path} as safetensors ({err}); the file may be truncated") from err
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        msg = str(err)
        if "Weights only load failed" in msg or "Unsupported global" in msg:
            raise CheckpointError(
                f"refused to load {path}: it contains pickled Python objects other than tensors, containers, "
                f"argparse.Namespace and yacs CfgNode, and vssm never runs arbitrary pickled code. If you trust the "
                f"file, re-save its state_dict (torch.save(obj['model'], ...)) with the code that made it. "
                f"Details: {msg.splitlines()[0]}"
            ) from err
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({msg.splitlines()[0]})") from err
    except Exception as err:  # torch.load reports damage as RuntimeError, EOFError, KeyError, ... depending on where
        first = f"{type(err).__name__}: {str(err).splitlines()[0]}" if str(err) else type(err).__name__
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint ({first}); the file is truncated or corrupt "
            f"(download it again) or not a checkpoint"
        ) from err


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def extract_state_dict(obj: object, key: str = "auto") -> Dict[str, Tensor]:
    """The state_dict inside a loaded checkpoint.

    ``key="auto"`` takes ``model``, else ``model_ema``, ``state_dict``, ``module`` (the first present); ``key``
    names one explicitly (e.g. ``"model_ema"`` for the EMA weights of an official training checkpoint).
    """
    if key != "auto":
        if not isinstance(obj, Mapping) or key not in obj:
            found = sorted(obj.keys()) if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"checkpoint has no entry {key!r}; it holds {found}")
        obj = obj[key]
    elif not _is_state_dict(obj) and isinstance(obj, Mapping):
        for candidate in _WRAPPER_KEYS:
            if candidate in obj and isinstance(obj[candidate], Mapping):
                obj = obj[candidate]
                break
    if not _is_state_dict(obj):
        found = sorted(map(str, obj.keys()))[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"no state_dict of tensors found in the checkpoint (it holds {found})")
    state_dict = dict(obj)
    for prefix in ("module.", "backbone."):
        if all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


@functools.lru_cache(maxsize=None)
def _meta_model(name: str) -> nn.Module:
    import timm

    with torch.device("meta"):
        return timm.create_model(name)


def _fits(model: nn.Module, state_dict: Mapping[str, Tensor]) -> bool:
    expected = model.state_dict()
    return set(state_dict) == set(expected) and all(
        tuple(state_dict[k].shape) == tuple(v.shape) for k, v in expected.items()
    )


def _filtered(model: nn.Module, state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    filter_fn = getattr(model, "checkpoint_filter_fn", None)
    return filter_fn(dict(state_dict), model) if filter_fn is not None else dict(state_dict)


def find_matching_models(state_dict: Mapping[str, Tensor]) -> List[str]:
    """Registered vssm models (default configuration) that this state_dict loads into strictly."""
    matches = []
    for name in list_models():
        candidate = _meta_model(name)
        try:
            if _fits(candidate, _filtered(candidate, state_dict)):
                matches.append(name)
        except (RuntimeError, ValueError):  # another family's renames may not apply to this file
            continue
    return matches


def _describe_mismatch(model: nn.Module, state_dict: Mapping[str, Tensor], raw: Mapping[str, Tensor]) -> Optional[str]:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return None

    def listing(title: str, items: List[str]) -> str:
        shown = "\n    ".join(items[:12]) + (f"\n    ... and {len(items) - 12} more" if len(items) > 12 else "")
        return f"  {title} ({len(items)}):\n    {shown}" if items else ""

    parts = [
        listing("missing keys", missing),
        listing("unexpected keys", unexpected),
        listing("mis-shaped keys", shapes),
    ]
    matches = find_matching_models(raw)
    if matches:
        hint = f"  the file fits the registered model(s): {', '.join(matches)}"
    else:
        hint = "  no registered vssm model has exactly these keys and shapes"
    return "\n".join(p for p in parts if p) + "\n" + hint


def load_checkpoint(
    model: nn.Module, path: str, key: str = "auto", strict: bool = True
) -> Dict[str, List[str]]:
    """Load an official or vssm checkpoint into ``model``.

    Unwraps the file (see :func:`extract_state_dict`), applies the model family's renames (legacy v0 names, 4-D
    1x1 weights, ...) and loads strictly: any missing, unexpected or mis-shaped key raises :class:`CheckpointError`
    listing them and naming the registered model the file fits. ``strict=False`` loads what fits and returns
    the lists instead. Returns ``{"missing": [...], "unexpected": [...]}``.
    """
    target = getattr(model, "model", model) if not hasattr(model, "checkpoint_filter_fn") else model
    raw = extract_state_dict(read_checkpoint(path), key)
    state_dict = _filtered(target, raw)
    problem = _describe_mismatch(target, state_dict, raw)
    if problem and strict:
        raise CheckpointError(f"checkpoint {path} does not fit {type(target).__name__}:\n{problem}")
    if not strict:
        expected = target.state_dict()
        state_dict = {k: v for k, v in state_dict.items() if k in expected and v.shape == expected[k].shape}
    result = target.load_state_dict(state_dict, strict=strict)
    return {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}
