"""Host time per step of eager bf16 inference or fp16 training, and where it goes (cProfile), for vssm and timm
models. GPU only.

At a small batch the GPU work of a step is short, so the time to enqueue it is the host's cost; vssm's eager
bf16 inference and training are bound by it at the protocol's sizes (benchmarks/results/gpu-2026-11-22.md). The
protocol's step (vssm.benchmark.make_step); in training, cProfile sees the forward only (autograd runs the
backward on its own thread).

    PYTHONPATH=. python3 benchmarks/host_profile_gpu.py --models vmamba_tiny_s1l8 swin_tiny_patch4_window7_224 \
        --batch 8 [--mode train_fp16] [--rows 0]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch

import vssm
from vssm.benchmark import make_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vmamba_tiny_s1l8", "swin_tiny_patch4_window7_224"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--mode", default="bf16", choices=["bf16", "train_fp16"])
    ap.add_argument("--rows", type=int, default=25, help="functions listed per model, by own time (0: no cProfile)")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    for name in args.models:
        model = vssm.create_model(name).cuda()
        step, grad = make_step(model, args.mode, batch=args.batch)
        with grad:
            for _ in range(20):
                step()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(50):
                step()
            enqueue = (time.perf_counter() - start) / 50
            torch.cuda.synchronize()
            wall = (time.perf_counter() - start) / 50
            print(f"{name}: {args.mode}, batch {args.batch}, enqueue {enqueue * 1e3:.2f} ms per step, "
                  f"wall {wall * 1e3:.2f} ms", flush=True)
            if not args.rows:
                continue
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(20):
                step()
            profiler.disable()
            torch.cuda.synchronize()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.rows)
        print(f"cProfile of 20 steps (profiled, so slower):\n{text.getvalue()}")


if __name__ == "__main__":
    main()
