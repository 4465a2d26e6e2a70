"""CPU: the cpu scan backend's two kernels, vectorised along positions (`scan_rows`) or across channels
(`scan_groups`), side by side; and whole models with the dispatch rule (`across_channels`) against rows only.

    PYTHONPATH=. python benchmarks/scan_layout_cpu.py [--threads 2] [--rounds 20] [--calls 3] [--json out.json]

1. The scan forward and backward (the wrappers of vssm/ops/cpu_ops.py, fp32) at the shapes of vssm's models, each
   forced through one kernel, then the other.
2. `vmamba_femto`'s training step as `make demo` runs it (batch 64, 28 px, 1 channel, AdamW), and the forward of
   `vanilla_vmamba_tiny` (d_state 16) and `vmamba_tiny_s1l8` (d_state 1) on one 224 px image: rows only against
   the rule.
Each case alternates the two ways round by round (a round: ``--calls`` calls) so that a noisy host slows both alike;
the medians of the rounds are reported. `vmamba_tiny_s1l8`, whose every scan the rule leaves to `scan_rows`, is the
control: both ways run the same code there.
"""
from __future__ import annotations

import argparse
import statistics

import torch
# benchmarks/ is on sys.path when run as a script
from ab_cpu import parse_timing_args, print_setup, seconds_per_call, write_rows
from scan_cpu import scan_inputs, training_step

import vssm
from vssm.ops import cpu_ops

KERNELS = cpu_ops._kernels()
RULE = KERNELS.across_channels
WAYS = {"rows": lambda *shape: False, "groups": lambda *shape: True, "rule": RULE}

# (batch, D per group, L, N): vmamba_femto's stages at 28 px (the demo), vmamba_tiny_s1l8's four stages and
# vanilla_vmamba_tiny's first and last at 224 px, with batches that keep each call at a few ms.
SCAN_SHAPES = [(64, 48, 49, 1), (64, 96, 16, 1), (64, 192, 4, 1), (1, 96, 3136, 1), (2, 192, 784, 1),
               (4, 384, 196, 1), (8, 768, 49, 1), (8, 384, 49, 1), (8, 768, 16, 1), (1, 192, 3136, 16),
               (2, 1536, 49, 16)]


def scan_case(batch: int, dim: int, length: int, n_state: int):
    """Forward and forward + backward of the cpu backend's wrappers at one shape (K = 4)."""
    u, delta, A, B, C, D, bias = scan_inputs(batch, K=4, D=dim, N=n_state, L=length)
    dout = torch.randn_like(u)

    def forward():
        cpu_ops.selective_scan_cpu_fwd(u, delta, A, B, C, D, bias, True, None)

    def forward_backward():
        forward()
        cpu_ops.selective_scan_cpu_bwd(dout, u, delta, A, B, C, D, bias, True)

    return forward, forward_backward


def inference(name: str):
    model = vssm.create_model(name).eval()
    x = torch.randn(1, 3, 224, 224)

    def forward():
        with torch.inference_mode():
            model(x)

    return forward


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = parse_timing_args(p, rounds=20, calls=3)

    cases = []  # (what, function, the two ways compared, the kernel the rule picks)
    for batch, dim, length, n_state in SCAN_SHAPES:
        forward, forward_backward = scan_case(batch, dim, length, n_state)
        label = f"scan B={batch} D={dim} L={length} N={n_state}"
        picks = "groups" if RULE(length, n_state, dim) else "rows"
        cases += [(f"{label}, forward (rows / groups)", forward, ("rows", "groups"), picks),
                  (f"{label}, forward + backward (rows / groups)", forward_backward, ("rows", "groups"), picks)]
    femto = vssm.create_model("vmamba_femto", in_chans=1, num_classes=10)
    cases.append(("vmamba_femto training step (batch 64, 28 px, AdamW; rows only / the rule)",
                  training_step(femto, torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))), ("rows", "rule"),
                  "groups at every stage"))
    for name in ("vanilla_vmamba_tiny", "vmamba_tiny_s1l8"):
        cases.append((f"{name} forward (1 x 3 x 224 x 224; rows only / the rule)", inference(name), ("rows", "rule"),
                       "rows at every stage (the control)" if name == "vmamba_tiny_s1l8" else "groups at every stage"))

    times = {what: {way: [] for way in ways} for what, _, ways, _ in cases}
    for what, fn, ways, _ in cases:
        for _ in range(args.rounds):
            for way in ways:
                KERNELS.across_channels = WAYS[way]
                times[what][way].append(seconds_per_call(fn, args.calls) * 1e3)
    KERNELS.across_channels = RULE

    print_setup(args)
    print("| what | the rule picks | before (ms) | after (ms) | speed-up |")
    print("|---|---|---|---|---|")
    rows = []
    for what, _, (before, after), picks in cases:
        old, new = statistics.median(times[what][before]), statistics.median(times[what][after])
        print(f"| {what} | {picks} | {old:.2f} | {new:.2f} | {old / new:.2f}x |")
        rows.append(dict(what=what, compared=[before, after], picks=picks, before_ms=old, after_ms=new,
                         rounds=times[what]))
    write_rows(args, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
