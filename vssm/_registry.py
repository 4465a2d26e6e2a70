"""Which model names and official families vssm provides.

Model names are registered with timm (so ``timm.create_model`` finds them after ``import vssm``) and recorded
here with their family, so the loader can say which released model a checkpoint belongs to. Families map the
official constructors (``VSSM`` of VMamba, ``VisionMamba`` of Vim, ...) to vssm builders that take the official
keyword arguments verbatim.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch.nn as nn
from timm.models import register_model

__all__ = ["register_vssm_model", "register_family", "list_models", "list_families", "build_official", "family_of"]

_MODELS: Dict[str, str] = {}
_FAMILIES: Dict[str, Callable[..., nn.Module]] = {}


def register_vssm_model(family: str) -> Callable:
    """Decorator: register a model function with timm and record it under ``family``."""

    def wrap(fn: Callable) -> Callable:
        _MODELS[fn.__name__] = family
        return register_model(fn)

    return wrap


def register_family(name: str, builder: Callable[..., nn.Module]) -> None:
    _FAMILIES[name] = builder


def list_models(family: Optional[str] = None) -> List[str]:
    """Names of the models vssm registers, optionally of one family ("vmamba", "vim", "msvmamba", ...)."""
    return sorted(name for name, fam in _MODELS.items() if family is None or fam == family)


def list_families() -> List[str]:
    return sorted(_FAMILIES)


def family_of(name: str) -> Optional[str]:
    return _MODELS.get(name)


def build_official(family: str, **kwargs) -> nn.Module:
    """Build a model from the official constructor's own keyword arguments (as stored in the fixtures' JSON).

    ``build_official("vmamba", dims=96, depths=[2, 2, 8, 2], forward_type="v05_noz", ...)`` equals the official
    ``VSSM(**kwargs)``: same function, same state_dict keys and shapes.
    """
    if family not in _FAMILIES:
        raise ValueError(f"unknown model family {family!r}; available: {', '.join(list_families()) or 'none'}")
    return _FAMILIES[family](**kwargs)
