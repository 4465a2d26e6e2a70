"""Host time of eager bf16 inference per forward, and where it goes (cProfile), for vssm and timm models. GPU only.

At a small batch the GPU work of a forward is short, so the time to enqueue it is the host's cost; vssm's eager
bf16 inference and training are bound by it at the protocol's sizes (benchmarks/results/gpu-2026-11-22.md).

    PYTHONPATH=. python3 benchmarks/host_profile_gpu.py --models vmamba_tiny_s1l8 swin_tiny_patch4_window7_224 --batch 8
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch

import vssm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vmamba_tiny_s1l8", "swin_tiny_patch4_window7_224"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rows", type=int, default=25, help="functions listed per model, by own time")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    for name in args.models:
        model = vssm.create_model(name).cuda().eval()
        x = torch.randn(args.batch, 3, 224, 224, device="cuda")

        def forward():
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                return model(x)

        for _ in range(20):
            forward()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(50):
            forward()
        enqueue = (time.perf_counter() - start) / 50
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / 50
        print(f"{name}: batch {args.batch}, enqueue {enqueue * 1e3:.2f} ms per forward, wall {wall * 1e3:.2f} ms")
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(20):
            forward()
        profiler.disable()
        torch.cuda.synchronize()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.rows)
        print(f"cProfile of 20 forwards (profiled, so slower):\n{text.getvalue()}")


if __name__ == "__main__":
    main()
