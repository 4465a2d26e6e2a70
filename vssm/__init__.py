"""vssm: visual state space models (VMamba, Vim, MSVMamba) in pure PyTorch, equal to the official code."""
from . import models  # noqa: F401  (registers the models with timm)
from ._registry import build_official, list_families, list_models
from .checkpoint import CheckpointError, load_checkpoint
from .cuda_graphs import enable_cuda_graphs
from .factory import create_model
from .ops import cross_merge, cross_scan, selective_scan

__version__ = "0.1.0"

__all__ = [
    "build_official",
    "create_model",
    "cross_merge",
    "cross_scan",
    "enable_cuda_graphs",
    "list_families",
    "list_models",
    "load_checkpoint",
    "CheckpointError",
    "selective_scan",
]
