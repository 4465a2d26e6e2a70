#!/usr/bin/env python
"""Is the fused SS2D forward bound by its cross-merge atomics? (GPU only.)

Times the fused op at VMamba-T's three first stage shapes (batch 128, bf16 inputs) two ways: as shipped, the 4
directions adding into one fp32 map with atomic adds, and with each direction stored to its own slice of a
(B, 4, H, W, E) buffer (fp32 or bf16) that a torch sum merges afterwards. Prints the times and the relative error
of the split variants against the shipped one.

    PYTHONPATH=. python benchmarks/scan_merge_gpu.py
"""
from __future__ import annotations

from typing import Callable

import torch

from gpu_check import time_cuda  # benchmarks/ is on sys.path when this file runs as a script
from vssm.ops import triton_ops


def time_ms(fn: Callable[[], object]) -> float:
    return time_cuda(fn, iters=20, warmup=3) * 1e3


def main() -> None:
    dev = "cuda"
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for batch, E, H, W in ((128, 96, 56, 56), (128, 192, 28, 28), (128, 384, 14, 14)):
        K, R = 4, 6
        u = torch.randn(batch, E, H, W, device=dev, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        x_dbl = torch.randn(batch, K * (R + 2), H, W, device=dev, dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last)
        dtw = torch.randn(K, E, R, device=dev) * 0.3
        dtb = torch.rand(K, E, device=dev) - 2
        A = -torch.rand(K * E, 1, device=dev) - 0.5
        Dv = torch.randn(K * E, device=dev)
        op, _ = triton_ops._cross_scan_op(u, x_dbl, dtw, dtb, A, Dv, "cross2d", dt_gemm=False)

        def merged() -> torch.Tensor:
            y = torch.zeros_like(u, dtype=torch.float32)
            triton_ops._forward(op, y, triton_ops._map(y))
            return y

        def split(dtype: torch.dtype) -> Callable[[], torch.Tensor]:
            def run() -> torch.Tensor:
                y4 = torch.empty(batch, K, H, W, E, device=dev, dtype=dtype)
                sb, sk, sh, sw, sd = y4.stride()
                op.merge = False
                triton_ops._forward(op, y4, (sb, sk, sd, sh, sw))
                op.merge = True
                return y4.sum(1, dtype=torch.float32).permute(0, 3, 1, 2)
            return run

        ref = merged()
        errs = {dt: ((split(dt)() - ref).abs().max() / ref.abs().max()).item() for dt in (torch.float32, torch.bfloat16)}
        print(f"B{batch} E{E} {H}x{W}: atomic merge {time_ms(merged):.3f} ms | split fp32 + sum "
              f"{time_ms(split(torch.float32)):.3f} ms (rel err {errs[torch.float32]:.1e}) | split bf16 + sum "
              f"{time_ms(split(torch.bfloat16)):.3f} ms (rel err {errs[torch.bfloat16]:.1e})", flush=True)


if __name__ == "__main__":
    main()
