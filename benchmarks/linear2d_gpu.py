#!/usr/bin/env python
"""Linear2d as a GEMM (the shipped reduced-precision path) vs as a 1x1 convolution, same process, same GPU.

Measures vmamba models and timm's Swin-T with the benchmark protocol (batch 128, 224², bf16 inference and fp16
training) twice for each vmamba model: with Linear2d as shipped, and with its forward swapped back to
F.conv2d (cuDNN adds the bias in a separate broadcast kernel). Interleaved rounds, so host and clock drift hit
both alike. GPU only.

    PYTHONPATH=. python benchmarks/linear2d_gpu.py --models vmamba_tiny_s1l8 vmamba_small_s2l15 --rounds 2
"""
from __future__ import annotations

import argparse

import timm
import torch
import torch.nn.functional as F

import vssm
from vssm import benchmark
from vssm.layers.common import Linear2d


def conv_forward(self: Linear2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, self.weight[:, :, None, None], self.bias)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vmamba_tiny_s1l8"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--iters", type=int, default=30)
    args = p.parse_args()
    torch.backends.cudnn.benchmark = True
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    shipped = Linear2d.forward
    swin = timm.create_model("swin_tiny_patch4_window7_224").cuda()
    for name in args.models:
        model = vssm.create_model(name).cuda()
        for r in range(args.rounds):
            for mode in ("bf16", "train_fp16"):
                ref = benchmark.measure(swin, mode, warmup=args.warmup, iters=args.iters)["img_s"]
                Linear2d.forward = shipped
                gemm = benchmark.measure(model, mode, warmup=args.warmup, iters=args.iters)["img_s"]
                Linear2d.forward = conv_forward
                conv = benchmark.measure(model, mode, warmup=args.warmup, iters=args.iters)["img_s"]
                Linear2d.forward = shipped
                print(f"round {r} {name} {mode}: Linear2d GEMM {gemm:.0f} img/s ({gemm / ref:.2f}x Swin-T) | "
                      f"1x1 conv {conv:.0f} ({conv / ref:.2f}x) | Swin-T {ref:.0f} | GEMM/conv {gemm / conv:.3f}",
                      flush=True)


if __name__ == "__main__":
    main()
