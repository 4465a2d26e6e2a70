"""Seeds of the Fashion-MNIST runs side by side: each model's mean and spread, and how far the first model is ahead
of each other one relative to the seeds' noise.

Reads the ``results.json`` files written by ``benchmarks/fashion_mnist_gpu.py`` (one per run; a file may hold several
models) and groups their rows by model. For every metric (top-1 of the EMA weights, and with flip TTA) it prints the
seeds, their mean and sample standard deviation, and, for every model after the first, the first model's lead with
the standard error of that difference (Welch: sqrt(s1^2/n1 + s2^2/n2)) and how many of the seed pairs the first
model wins. With one seed a model has no standard deviation, and its lead has no standard error ("-").

    python3 benchmarks/seed_table.py DIR/{model,model-seed1,peer,peer-seed1}/results.json --first model

A model and seed that appear twice (two recipes of one seed) stop it with an error: name the runs to compare.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from typing import Dict, List, Optional, Sequence

METRICS = (("acc1", "top-1 EMA (%)"), ("acc1_hflip", "flip TTA (%)"))


def _seed(train_args: str) -> int:
    """The ``--seed`` in a run's train args (0, the preset's, when absent)."""
    found = re.search(r"--seed[ =](\d+)", train_args or "")
    return int(found.group(1)) if found else 0


def _row_seed(row: dict, plan: dict, path: str) -> int:
    """The seed of one row: from each call's command where the row keeps them (a run resumed in a later call may
    have been given other train args), else from the plan's train args (results files before the commands were
    kept: those of the last call)."""
    seeds = {_seed(command) for command in row.get("commands") or []}
    if len(seeds) > 1:
        raise SystemExit(f"seed_table: {row['model_name']} in {path} trained with seeds {sorted(seeds)} in its "
                         "calls, so it is no one seed's run; rerun it with one --seed")
    return seeds.pop() if seeds else _seed(plan.get("train_args", ""))


def load_runs(paths: Sequence[str]) -> Dict[str, Dict[int, dict]]:
    """``{model: {seed: row}}`` from the results files, in the order the models first appear."""
    runs: Dict[str, Dict[int, dict]] = {}
    for path in paths:
        try:
            with open(path) as f:
                results = json.load(f)
            plan, rows = results["plan"], results["rows"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SystemExit(f"seed_table: {path} is not a results.json of benchmarks/fashion_mnist_gpu.py ({err})")
        for row in rows:
            seed = _row_seed(row, plan, path)
            seeds = runs.setdefault(row["model_name"], {})
            if seed in seeds:
                raise SystemExit(f"seed_table: {row['model_name']} seed {seed} appears twice (again in {path}); "
                                 "pass each run's results.json once")
            seeds[seed] = row
    return runs


def _sd(values: List[float]) -> Optional[float]:
    return statistics.stdev(values) if len(values) > 1 else None


def lead(first: List[float], other: List[float]) -> dict:
    """The first model's lead over another on one metric: difference of means, its standard error (None when a
    model has a single seed), and the seed pairs the first model wins."""
    sd1, sd2 = _sd(first), _sd(other)
    se = math.sqrt(sd1 ** 2 / len(first) + sd2 ** 2 / len(other)) if sd1 is not None and sd2 is not None else None
    return dict(diff=statistics.mean(first) - statistics.mean(other), se=se,
                wins=sum(a > b for a in first for b in other), pairs=len(first) * len(other))


def _fmt(x: Optional[float], spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(runs: Dict[str, Dict[int, dict]]) -> str:
    """The markdown tables: per model its seeds, mean and sd; then the first model's lead over the others."""
    lines = []
    models = list(runs)
    for key, label in METRICS:
        seeds = {m: [s for s in sorted(runs[m]) if runs[m][s].get(key) is not None] for m in models}
        values = {m: [runs[m][s][key] for s in seeds[m]] for m in models}
        lines += [f"{label}", "", "| model | seeds | values | mean | sd |", "|---|---|---|---|---|"]
        for m in models:
            if values[m]:
                lines.append(f"| {m} | {' / '.join(str(s) for s in seeds[m])} | "
                             f"{' / '.join(f'{v:.2f}' for v in values[m])} | {statistics.mean(values[m]):.3f} | "
                             f"{_fmt(_sd(values[m]), '.3f')} |")
        first = models[0]
        if len(models) > 1 and values[first]:
            lines += ["", f"| {first} ahead of | by | standard error | lead / se | seed pairs won |",
                      "|---|---|---|---|---|"]
            for m in models[1:]:
                if values[m]:
                    d = lead(values[first], values[m])
                    ratio = d["diff"] / d["se"] if d["se"] else None
                    lines.append(f"| {m} | {d['diff']:+.3f} | {_fmt(d['se'], '.3f')} | {_fmt(ratio, '.1f')} | "
                                 f"{d['wins']} of {d['pairs']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="results.json files of benchmarks/fashion_mnist_gpu.py")
    parser.add_argument("--first", help="the model whose lead is shown (default: the first one read)")
    args = parser.parse_args(argv)
    runs = load_runs(args.results)
    if args.first:
        if args.first not in runs:
            raise SystemExit(f"seed_table: --first {args.first} is not among the models read: {', '.join(runs)}")
        runs = {args.first: runs[args.first], **{m: r for m, r in runs.items() if m != args.first}}
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
