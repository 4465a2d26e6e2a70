"""What the CPU A/B benchmarks share (depthwise_conv_cpu.py, scan_layout_cpu.py): their timing flags, the timing of
one round, the header line of the results table and the JSON of the rows."""
from __future__ import annotations

import argparse
import platform
import time
from typing import Callable, List

import torch

from vssm.benchmark import write_json_atomic


def parse_timing_args(p: argparse.ArgumentParser, rounds: int, calls: int) -> argparse.Namespace:
    """Adds the flags every A/B script takes (--threads, --rounds, --calls, --json; rounds and calls default to the
    script's own), parses the command line, and sets the torch threads and seed 0 for the run."""
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--calls", type=int, default=calls, help="calls per timing")
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return args


def seconds_per_call(fn: Callable[[], None], calls: int) -> float:
    """Mean wall time of ``calls`` calls of fn, after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def print_setup(args: argparse.Namespace) -> None:
    """The line above the table: machine, threads, torch and how the medians were taken."""
    print(f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}; medians of {args.rounds} rounds "
          f"of {args.calls} calls\n")


def write_rows(args: argparse.Namespace, rows: List[dict]) -> None:
    """The rows (with every round's times) and the arguments, to ``args.json`` if given, written atomically."""
    if args.json:
        write_json_atomic(args.json, dict(args=vars(args), torch=torch.__version__, rows=rows))
