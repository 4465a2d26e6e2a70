"""Time the fused SS2D scan op per stage of vmamba_tiny_s1l8 at batch 128 (bf16 inputs): the training forward (it
keeps the chunk-start states), and the backward (with its chunk-state pass where the forward kept none), for
variants of the launcher side by side (the dt projection in the kernels or as GEMMs, backward launch configs, kept
or recomputed states); or run each stage once for a profiler (ncu):

    PYTHONPATH=. python3 benchmarks/scan_stages_gpu.py [--stages 1,2,3,4] [--batch 128] [--variants shipped,fwd_gemm,bwd_z_gemm]
    ncu --clock-control none --kernel-name regex:_scan_ ... python3 benchmarks/scan_stages_gpu.py --once --stages 1
"""
from __future__ import annotations

import argparse

import torch

from vssm.ops import triton_ops

# (E, H, W, R) of vmamba_tiny_s1l8's stages at 224 px
STAGES = {1: (96, 56, 56, 6), 2: (192, 28, 28, 12), 3: (384, 14, 14, 24), 4: (768, 7, 7, 48)}
# launcher settings: DT_GEMM_MIN_RANK / BWD_DT_GEMM_MIN_RANK (the forward's / backward's dt projection in-kernel
# below it, a GEMM from it on), and overrides of the backward launch config (N == 1)
VARIANTS = {
    "shipped": {},
    "fwd_fused": dict(gemm=1 << 30),
    "fwd_gemm": dict(gemm=0),
    "bwd16x2": dict(bwd=dict(num_warps=2)),
    "bwd16x1s2": dict(bwd=dict(NUM_STAGES=2)),
    "bwd16x4": dict(bwd=dict(num_warps=4)),
    "bwd_z_gemm": dict(bwd_gemm=0),  # the backward reads z from a GEMM at every rank (before Update 7)
    "recompute_states": dict(keep=False),  # the backward recomputes the chunk-start states (before Update 8)
}


def apply(variant: str, shipped: tuple) -> None:
    """Set the launcher's module-level knobs to a variant (from the shipped values)."""
    spec = VARIANTS[variant]
    triton_ops.DT_GEMM_MIN_RANK = spec.get("gemm", shipped[0])
    triton_ops.CONFIGS[True, True] = dict(shipped[1], **spec.get("bwd", {}))
    triton_ops.BWD_DT_GEMM_MIN_RANK = spec.get("bwd_gemm", shipped[2])
    triton_ops.KEEP_STATES = spec.get("keep", shipped[3])


BLOCKS = {1: 2, 2: 2, 3: 8, 4: 2}  # vmamba_tiny_s1l8's depths


def inputs(batch: int, stage: int, K: int = 4, dev: str = "cuda"):
    """Fresh random operands of the fused op, in the layout SS2D passes them (channels_last maps)."""
    E, H, W, R = STAGES[stage]
    cl = dict(memory_format=torch.channels_last)
    u = torch.randn(batch, E, H, W, device=dev, dtype=torch.bfloat16).contiguous(**cl)
    x_dbl = torch.randn(batch, K * (R + 2), H, W, device=dev, dtype=torch.bfloat16).contiguous(**cl)
    dtw = torch.randn(K, E, R, device=dev) * R ** -0.5
    dtb = torch.rand(K, E, device=dev) - 2
    A = -torch.rand(K * E, 1, device=dev) - 0.5
    Dv = torch.randn(K * E, device=dev)
    dy = torch.randn(batch, E, H, W, device=dev).contiguous(**cl)
    return u, x_dbl, dtw, dtb, A, Dv, dy


def run(batch: int, stage: int):
    """(forward, backward) of the op as autograd runs them; the backward uses the last forward's kept states."""
    u, x_dbl, dtw, dtb, A, Dv, dy = inputs(batch, stage)
    kept = {}

    def forward():
        y, kept["states"] = triton_ops._cross_forward(u, x_dbl, dtw, dtb, A, Dv, "cross2d", keep_states=True)
        return y

    def backward():
        states = kept["states"] if kept["states"] is not None else triton_ops._no_states(u)
        return torch.ops.vssm.cross_selective_scan_backward(dy, u, x_dbl, dtw, dtb, A, Dv, states, "cross2d")

    return forward, backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="1,2,3,4")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--variants", default="shipped", help=f"comma-separated, of {sorted(VARIANTS)}")
    parser.add_argument("--once", action="store_true", help="one forward and one backward per stage (for ncu)")
    args = parser.parse_args()
    import triton.testing

    shipped = (triton_ops.DT_GEMM_MIN_RANK, dict(triton_ops.CONFIGS[True, True]), triton_ops.BWD_DT_GEMM_MIN_RANK,
               triton_ops.KEEP_STATES)
    variants = args.variants.split(",")
    stages = [int(s) for s in args.stages.split(",")]
    times = {}
    for stage in stages:
        forward, backward = run(args.batch, stage)
        first = None
        for variant in variants:
            apply(variant, shipped)
            if args.once:
                forward(), backward()
                torch.cuda.synchronize()
                continue
            outs = [forward()] + list(backward())
            if first is None:
                first = outs
            diff = max(rel(a, b) for a, b in zip(outs, first))  # against the first variant: same function
            fwd_ms = triton.testing.do_bench(forward, warmup=25, rep=200)
            bwd_ms = triton.testing.do_bench(backward, warmup=25, rep=200)
            times[stage, variant] = fwd_ms, bwd_ms
            print(f"stage {stage} {variant:16s}: forward {fwd_ms:.3f} ms, backward {bwd_ms:.3f} ms, "
                  f"max rel diff to {variants[0]} {diff:.1e}", flush=True)
    if times:
        print("| stage (E, H x W, R) | " + " | ".join(f"{v} fwd / bwd ms" for v in variants) + " |")
        print("|---" * (len(variants) + 1) + "|")
        for stage in stages + ["sum"]:
            label = "s1l8 blocks (2-2-8-2)" if stage == "sum" else "{} ({}, {}x{}, {})".format(stage, *STAGES[stage])
            cells = []
            for v in variants:
                if stage == "sum":
                    f = sum(BLOCKS[s] * times[s, v][0] for s in stages)
                    b = sum(BLOCKS[s] * times[s, v][1] for s in stages)
                else:
                    f, b = times[stage, v]
                cells.append(f"{f:.3f} / {b:.3f}")
            print(f"| {label} | " + " | ".join(cells) + " |")


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


if __name__ == "__main__":
    main()
