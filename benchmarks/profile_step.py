#!/usr/bin/env python
"""Where one training step of a model spends its time: torch.profiler over a few steps, top ops by device time.

    PYTHONPATH=. python benchmarks/profile_step.py --model vmamba_nano --img-size 64 --in-chans 1 --batch 512 \\
        --amp bf16 [--out DIR]

Forward + backward + AdamW on random data (the optimizer step is included unless ``--no-optimizer``), after
warm-up steps. Prints the step time and the table of ops sorted by self device time (``--sort cpu``: by self CPU
time, for host-bound steps; always CPU time on a CPU); with
``--out`` also writes the full table and a Chrome trace.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

import vssm


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="any vssm or timm model name")
    p.add_argument("--model-kwargs", type=json.loads, default={},
                   help='constructor arguments as JSON, e.g. \'{"patch_size": 2}\'')
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"])
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead"],
                   help="torch.compile the model with this mode (reduce-overhead: CUDA graphs); warm-up includes it")
    p.add_argument("--no-profile", action="store_true", help="only time the steps")
    p.add_argument("--no-optimizer", action="store_true",
                   help="forward + loss + backward only (the speed protocol of benchmarks/gpu_check.py)")
    p.add_argument("--sort", default="device", choices=["device", "cpu"],
                   help="order the table by self device time or by self CPU time (host-bound steps)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not isinstance(args.model_kwargs, dict):
        p.error(f"--model-kwargs must be a JSON object, e.g. '{{\"patch_size\": 2}}', got {args.model_kwargs!r}")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as vssm train does: denormal optimizer states are many times slower
    model = vssm.create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans,
                              **args.model_kwargs).to(device).train()
    # fused on CUDA, as `vssm train` makes it: the foreach default is a chain of small kernels the run does not have
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[args.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    run_model = model if args.compile == "none" else torch.compile(model, mode=args.compile)
    x = torch.randn(args.batch, args.in_chans, args.img_size, args.img_size, device=device)
    y = torch.randint(0, args.num_classes, (args.batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(run_model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if not args.no_optimizer:
            scaler.step(optimizer)
            scaler.update()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warmup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / args.steps
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{args.model}, batch {args.batch}, {args.img_size}px, amp {args.amp}, compile {args.compile}, {name}: "
          f"{seconds * 1000:.1f} ms per step, {args.batch / seconds:.0f} img/s (unprofiled; warm-up "
          f"{warmup_seconds:.1f} s)", flush=True)
    if args.no_profile:
        return 0
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        sync()
    key = "self_cuda_time_total" if device.type == "cuda" and args.sort == "device" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60)
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"profile-{args.model}-{args.sort}.txt"), "w") as f:
            f.write(prof.key_averages().table(sort_by=key, row_limit=200, max_name_column_width=90))
        prof.export_chrome_trace(os.path.join(args.out, f"trace-{args.model}.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
