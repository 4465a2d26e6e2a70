#!/usr/bin/env python
"""A/B of the ConvFFN's 1x1 convolutions (MSVMamba): :class:`PointwiseConv2d`'s GEMM over the channels (shipped)
against cuDNN's 1x1 convolution, in a compiled bf16 training step (forward, backward, AdamW) on random data. Both
variants are built from the same seed in one process and timed in interleaved rounds. GPU only.

    PYTHONPATH=. python benchmarks/pointwise_ab_gpu.py --model msvmambav3_nano --img-size 64 --in-chans 1 --batch 512

Before timing, it checks that the variants agree: logits within bf16 rounding under autocast.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import vssm
from vssm.layers.common import PointwiseConv2d


class _CudnnPointwise(PointwiseConv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias)


def build(args, cudnn: bool) -> Tuple[nn.Module, Callable[[torch.Tensor, torch.Tensor], None]]:
    torch.manual_seed(0)
    model = vssm.create_model(args.model, num_classes=10, in_chans=args.in_chans).cuda().train()
    swapped = 0
    if cudnn:
        for m in model.modules():
            if type(m) is PointwiseConv2d:
                m.__class__ = _CudnnPointwise
                swapped += 1
        if not swapped:
            raise SystemExit(f"{args.model} has no PointwiseConv2d: nothing to compare")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as `vssm train` makes it on CUDA
    compiled = torch.compile(model, mode=args.compile)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(compiled(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return model, step


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="msvmambav3_nano")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--compile", default="reduce-overhead", choices=["default", "reduce-overhead"])
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("pointwise_ab_gpu.py needs a CUDA GPU")

    variants = {"gemm (shipped)": build(args, cudnn=False), "cudnn 1x1 conv": build(args, cudnn=True)}
    x = torch.randn(args.batch, args.in_chans, args.img_size, args.img_size, device="cuda")
    y = torch.randint(0, 10, (args.batch,), device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        a, b = (model.eval()(x[:64]).float() for model, _ in variants.values())
    rel = ((a - b).abs().max() / a.abs().max()).item()
    print(f"logits, gemm vs cudnn under bf16 autocast: max |diff| / max |logit| = {rel:.2e}")
    if rel > 3e-2:
        raise SystemExit("the two variants disagree beyond bf16 rounding")
    for model, _ in variants.values():
        model.train()

    times = {name: [] for name in variants}
    for name, (_, step) in variants.items():
        start = time.perf_counter()
        for _ in range(args.warmup):
            step(x, y)
        torch.cuda.synchronize()
        print(f"{name}: warm-up (compilation) {time.perf_counter() - start:.1f} s", flush=True)
    for _ in range(args.rounds):
        for name, (_, step) in variants.items():
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                step(x, y)
            torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
    base = statistics.median(times["cudnn 1x1 conv"])
    print(f"\n{args.model}, batch {args.batch}, {args.img_size}px, bf16, compile {args.compile}, "
          f"{torch.cuda.get_device_name()}; median of {args.rounds} rounds x {args.steps} steps")
    print("| variant | ms per step | img/s | vs cudnn |\n|---|---|---|---|")
    for name, values in times.items():
        ms = statistics.median(values)
        print(f"| {name} | {ms:.2f} | {args.batch / ms * 1000:.0f} | {base / ms:.3f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
