#!/usr/bin/env python
"""Eager vs CUDA-graphed training steps (vssm.enable_cuda_graphs), vssm and timm models side by side. GPU only.

1. Correctness on fresh random inputs (batch 16, 224²): three fp32 steps with accumulated gradients, graphed vs
   eager, worst relative error of the logits and of every gradient (relative to its norm); the same between two
   eager copies under fp16 autocast, which is the noise floor that the fp16 comparison is read against.
2. Throughput: the protocol's training step (batch 128, 224², fp16 autocast, forward + cross-entropy + backward, no
   optimizer step: ``vssm.benchmark.make_step``), every model eager and graphed, interleaved rounds in
   one process; the first step's time and peak memory above what was allocated before it (the graphs' warm-up and
   capture are in the graphed model's first step).

    PYTHONPATH=. python benchmarks/cuda_graphs_gpu.py --models swin_tiny_patch4_window7_224 vmamba_tiny_s1l8
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch
import torch.nn.functional as F

from vssm import benchmark, create_model, enable_cuda_graphs


def _step(model, x, target, amp):
    with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
        out = model(x)
        loss = F.cross_entropy(out.float(), target)
    loss.backward()
    return out.detach().float()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def check(name: str, amp, graphed_side: bool, batch: int = 16, steps: int = 3) -> dict:
    """Worst relative differences between an eager model and a graphed (or second eager) copy over ``steps``."""
    torch.manual_seed(0)
    ref = create_model(name, drop_path_rate=0.0).cuda().train()
    other = copy.deepcopy(ref)
    if graphed_side:
        enable_cuda_graphs(other)
    target = torch.randint(0, 1000, (batch,), device="cuda")
    worst_out = 0.0
    for _ in range(steps):
        x = torch.randn(batch, 3, 224, 224, device="cuda")
        worst_out = max(worst_out, _rel(_step(other, x, target, amp), _step(ref, x, target, amp)))
    grads = {n: _rel(q.grad, p.grad) for (n, p), q in zip(ref.named_parameters(), other.parameters())
             if p.grad is not None}
    worst = max(grads, key=grads.get)
    return {"model": name, "amp": str(amp), "graphed": graphed_side, "logits_rel": worst_out,
            "worst_grad_rel": grads[worst], "worst_grad_param": worst,
            "median_grad_rel": sorted(grads.values())[len(grads) // 2]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["swin_tiny_patch4_window7_224", "vmamba_tiny_s1l8"])
    p.add_argument("--check-models", nargs="*", default=["vmamba_tiny_s1l8", "swin_tiny_patch4_window7_224"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--no-tf32-conv", action="store_true", help="cuDNN convolutions in full fp32 (default: TF32)")
    p.add_argument("--json")
    args = p.parse_args()
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = not args.no_tf32_conv
    checks = []
    for name in args.check_models:
        for amp, graphed in ((None, True), (None, False), (torch.float16, True), (torch.float16, False)):
            checks.append(check(name, amp, graphed))
            print(json.dumps(checks[-1]), flush=True)

    if args.rounds == 0:
        args.models = []
    steps, peaks = {}, {}
    for name in args.models:
        for graphed in (False, True):
            step, _ = benchmark.make_step(benchmark.build(name, cuda_graphs=graphed), "train_fp16", args.batch)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            start = time.perf_counter()
            step()
            torch.cuda.synchronize()
            first = time.perf_counter() - start
            steps[(name, graphed)] = step
            peaks[(name, graphed)] = {"first_step_s": first,
                                      "first_step_peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20}
    rates = {k: [] for k in steps}
    for r in range(args.rounds):
        for key, step in steps.items():
            for _ in range(args.warmup):
                step()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.iters):
                step()
            torch.cuda.synchronize()
            rates[key].append(args.iters * args.batch / (time.perf_counter() - start))
            print(f"round {r} {key[0]} {'graphs' if key[1] else 'eager'}: {rates[key][-1]:.0f} img/s", flush=True)
    ref = rates[(args.models[0], False)] if args.models else []
    print(f"\ndevice: {torch.cuda.get_device_name()}, torch {torch.__version__}, batch {args.batch}, fp16 training")
    print("| model | eager img/s (ratio to first eager) | graphed img/s (ratio) | graphed / eager | first step s (eager / graphed) | first step's peak MB above the model (eager / graphed) |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        e, g = rates[(name, False)], rates[(name, True)]
        cell = lambda v: " / ".join(f"{a:.0f} ({a / b:.2f}x)" for a, b in zip(v, ref))
        print(f"| {name} | {cell(e)} | {cell(g)} | {sum(g) / sum(e):.2f}x | "
              f"{peaks[(name, False)]['first_step_s']:.1f} / {peaks[(name, True)]['first_step_s']:.1f} | "
              f"{peaks[(name, False)]['first_step_peak_mb']:.0f} / {peaks[(name, True)]['first_step_peak_mb']:.0f} |")
    print("\n| check | logits rel | worst grad rel (param) | median grad rel |\n|---|---|---|---|")
    for c in checks:
        what = f"{c['model']} {'graphed' if c['graphed'] else 'eager copy'} vs eager, amp {c['amp']}"
        print(f"| {what} | {c['logits_rel']:.1e} | {c['worst_grad_rel']:.1e} ({c['worst_grad_param']}) | "
              f"{c['median_grad_rel']:.1e} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "checks": checks,
                       "rates": {f"{k[0]}|{'graphs' if k[1] else 'eager'}": v for k, v in rates.items()},
                       "first_steps": {f"{k[0]}|{'graphs' if k[1] else 'eager'}": v for k, v in peaks.items()}}, f,
                      indent=1)


if __name__ == "__main__":
    main()
