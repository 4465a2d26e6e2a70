#!/usr/bin/env python
"""Cost of saving the backward's chunk-start states in the fused SS2D forward, per VMamba-T stage (GPU only).

    PYTHONPATH=. python benchmarks/scan_states_gpu.py
"""
import torch

from benchmarks.gpu_check import time_cuda

STAGES = [(96, 56, 6), (192, 28, 12), (384, 14, 24), (768, 7, 48)]  # (E, H = W, dt rank) of vmamba_tiny_s1l8


def main() -> None:
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for dtype in (torch.float16, torch.bfloat16):
        for E, H, R in STAGES:
            B, K = 128, 4
            cl = torch.channels_last
            u = torch.randn(B, E, H, H, device="cuda", dtype=dtype).contiguous(memory_format=cl)
            x_dbl = torch.randn(B, K * (R + 2), H, H, device="cuda", dtype=dtype).contiguous(memory_format=cl)
            args = (u, x_dbl, torch.randn(K, E, R, device="cuda") * 0.3, torch.rand(K, E, device="cuda") - 2,
                    -torch.rand(K * E, 1, device="cuda") - 0.5, torch.randn(K * E, device="cuda"))
            op = torch.ops.vssm.cross_selective_scan
            plain = time_cuda(lambda: op(*args, "cross2d", False), iters=20, warmup=3) * 1e3
            saving = time_cuda(lambda: op(*args, "cross2d", True), iters=20, warmup=3) * 1e3
            print(f"{str(dtype):15s} E={E:4d} {H}x{H}: forward {plain:.3f} ms, with chunk states {saving:.3f} ms")


if __name__ == "__main__":
    main()
