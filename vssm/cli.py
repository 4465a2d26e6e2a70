"""The ``vssm`` command. Each sub-command lives in its own module and exposes ``add_arguments(parser)`` and
``main(args) -> int``; this file only lists them."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# sub-command -> (module, one-line help)
COMMANDS = {
    "demo": ("vssm.demo", "train a small VMamba on Fashion-MNIST on this machine, evaluate it, show the outputs"),
    "train": ("vssm.train.train_command", "train a vssm or timm model (Fashion-MNIST or an ImageFolder tree; torchrun: DDP)"),
    "eval": ("vssm.train.eval_command", "evaluate a checkpoint (vssm or official): top-1, top-5, loss, JSON"),
    "benchmark": ("vssm.benchmark", "GPU throughput and memory of vssm and timm models side by side (paper protocol)"),
    "flops": ("vssm.analysis.flops", "parameters and GFLOPs (official convention) of any vssm / timm model"),
    "erf": ("vssm.analysis.erf", "effective receptive field heat map(s), several models side by side"),
    "attnmap": ("vssm.analysis.attnmap", "SS2D selective scan as an attention matrix; activation maps of a query"),
    "scale": ("vssm.analysis.scale", "FLOPs (GPU: throughput, memory; with data: accuracy) against input size"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vssm", description="Visual state space models: VMamba, Vim, MSVMamba.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(importlib.import_module(args._module).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
