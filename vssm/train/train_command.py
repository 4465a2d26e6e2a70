"""`vssm train`: train any vssm or timm model on Fashion-MNIST (default) or an ImageFolder tree.

One process: ``vssm train ...``; several GPUs (or CPU processes): ``torchrun --nproc_per_node=N -m vssm train ...``.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..checkpoint import CheckpointError
from ..data.imagefolder import DataError
from .config import DEFAULTS, add_train_arguments, resolve_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from .engine import STOPPED_EXIT_CODE, UsageError, train

    try:
        cfg = resolve_config(args)
    except ValueError as err:
        print(f"vssm train: error: {err}", file=sys.stderr)
        return 2
    given = {k: v for k, v in vars(args).items() if k in DEFAULTS}
    if args.print_config:
        print(json.dumps(cfg, indent=2, sort_keys=True))
        return 0
    try:
        summary = train(cfg, given)
    except (DataError, CheckpointError, FileNotFoundError, NotADirectoryError, UsageError) as err:
        print(f"vssm train: error: {err}", file=sys.stderr)
        return 2
    return STOPPED_EXIT_CODE if summary.get("stopped") else 0
