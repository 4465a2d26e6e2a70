"""Training and evaluation: ``vssm train`` / ``vssm eval`` (engine, checkpointing, distributed set-up, presets)."""
from .config import DEFAULTS, PRESETS, resolve_config
from .engine import UsageError, build_model, evaluate, train

__all__ = ["DEFAULTS", "PRESETS", "resolve_config", "train", "evaluate", "build_model", "UsageError"]
