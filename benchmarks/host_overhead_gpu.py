"""Host time per call of the ops in a VSS block (eager, GPU): where vssm's host-bound steps spend their time.

At batch 8 the GPU work of each op is a few microseconds, so the time to enqueue a call is the host's cost. Each
row: the mean of ``--calls`` calls after a warm-up, timed without synchronising inside the loop (the GPU keeps up),
in microseconds, the best of ``--rounds`` interleaved rounds. Shapes: vmamba_tiny_s1l8's stage 3 (C = E = 384,
14 x 14 map, channels_last, bf16 autocast).

    PYTHONPATH=. python3 benchmarks/host_overhead_gpu.py [--json $OUT/host_overhead.json]
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import timm
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

import vssm
from vssm.ops import layer_norm, triton_launch, triton_ops


@triton.jit
def _noop_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)


def host_us(fn: Callable[[], object], calls: int) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3, help="every case measured once per round; the best is kept")
    ap.add_argument("--json")
    args = ap.parse_args()
    dev = "cuda"
    batch, C, H, W, R = 8, 384, 14, 14, 12
    bf16 = torch.bfloat16
    x = torch.randn(batch, C, H, W, device=dev).to(bf16).contiguous(memory_format=torch.channels_last)
    x32 = x.float().contiguous(memory_format=torch.channels_last)
    rows = x.permute(0, 2, 3, 1)  # (B, H, W, C) view of the channels_last map
    w, b = torch.randn(C, C, device=dev), torch.randn(C, device=dev)
    w16 = w.to(bf16)
    ln_w, ln_b = torch.ones(C, device=dev), torch.zeros(C, device=dev)
    conv_w, conv_b = torch.randn(C, 1, 3, 3, device=dev), torch.randn(C, device=dev)
    K = 4
    x_dbl = torch.randn(batch, K * (R + 2), H, W, device=dev).to(bf16).contiguous(memory_format=torch.channels_last)
    dtw, dtb = torch.randn(K, C, R, device=dev) * 0.1, torch.rand(K, C, device=dev) - 2
    A, Ds = -torch.rand(K * C, 1, device=dev) - 0.5, torch.randn(K * C, device=dev)
    small = torch.zeros(1024, device=dev)
    auto = torch.autocast("cuda", dtype=bf16)
    dy = torch.randn_like(x32).contiguous(memory_format=torch.channels_last)
    scan_args = (x, x_dbl, dtw, dtb, A, Ds)
    kept = triton_ops._cross_forward(*scan_args, "cross2d", keep_states=True)[1]
    # training (fp16 autocast, forward + backward; gradients accumulate as in the protocol): a VSS block of
    # vmamba_tiny_s1l8's stage 3 and its two branches, next to a Swin-T stage-3 block
    vss = vssm.create_model("vmamba_tiny_s1l8").layers[2].blocks[0].to(dev).train()
    vss_last = vssm.create_model("vmamba_tiny_s1l8", channel_first=False).layers[2].blocks[0].to(dev).train()
    swin = timm.create_model("swin_tiny_patch4_window7_224").layers[2].blocks[0].to(dev).train()
    x_train = torch.randn(batch, C, H, W, device=dev).contiguous(memory_format=torch.channels_last).requires_grad_()
    x_swin = torch.randn(batch, H, W, C, device=dev, requires_grad=True)

    def train(fn, inp):
        def run():
            with torch.autocast("cuda", dtype=torch.float16):
                y = fn(inp)
            y.float().sum().backward()
        return run

    def autocast(fn):
        def run():
            with auto:
                return fn()
        return run

    def triton_run(fn):  # the launch without vssm's cache (triton_launch.py)
        def run():
            triton_launch.ENABLED = False
            try:
                return fn()
            finally:
                triton_launch.ENABLED = True
        return run

    cases = {
        "empty autocast region": autocast(lambda: None),
        "x.add_(1) (aten baseline)": lambda: small.add_(1),
        "torch.empty": lambda: torch.empty(batch, C, H, W, device=dev),
        "torch.zeros_like (fp32 map)": lambda: torch.zeros_like(x, dtype=torch.float32),
        "F.linear(x, w fp32) under autocast": autocast(lambda: F.linear(rows, w)),
        "F.linear(x, w bf16) under autocast": autocast(lambda: F.linear(rows, w16)),
        "F.linear(x, w bf16), no autocast": lambda: F.linear(rows, w16),
        "F.linear(x, w, b) under autocast (cuBLASLt bias)": autocast(lambda: F.linear(rows, w, b)),
        "F.linear(x, w) + bias.to(bf16) + add_ under autocast": autocast(lambda: F.linear(rows, w).add_(b.to(bf16))),
        "bias.to(bf16)": lambda: b.to(bf16),
        "depthwise conv2d + bias under autocast": autocast(lambda: F.conv2d(x, conv_w, conv_b, padding=1, groups=C)),
        "F.layer_norm fp32 map": lambda: F.layer_norm(x32.permute(0, 2, 3, 1), (C,), ln_w, ln_b),
        "Triton LayerNorm (vssm, inference)": lambda: layer_norm._ln_forward(
            x32.permute(0, 2, 3, 1), ln_w, ln_b, 1e-5, bf16),
        "Triton launch of a 1-block kernel": lambda: _noop_kernel[(1,)](small, 1024, BLOCK=1024),
        "Triton launch of a 1-block kernel (vssm launch cache)": lambda: triton_launch.launch(
            _noop_kernel, (1,), small, 1024, BLOCK=1024),
        "fused SS2D scan forward (vssm, direct)": lambda: triton_ops._cross_forward(
            x, x_dbl, dtw, dtb, A, Ds, "cross2d"),
        "fused SS2D scan forward (custom op)": lambda: triton_ops._cross_op(x, x_dbl, dtw, dtb, A, Ds, "cross2d", False),
        "fused SS2D scan forward (direct, through JITFunction.run)": triton_run(lambda: triton_ops._cross_forward(
            x, x_dbl, dtw, dtb, A, Ds, "cross2d")),
        "Triton LayerNorm (vssm, inference, through JITFunction.run)": triton_run(lambda: layer_norm._ln_forward(
            x32.permute(0, 2, 3, 1), ln_w, ln_b, 1e-5, bf16)),
        "-torch.exp(A_logs.float())": lambda: -torch.exp(A.float()),
        "fused SS2D scan backward (vssm, direct, kept states)": lambda: triton_ops._cross_backward(
            dy, *scan_args, kept, "cross2d"),
        "training: VSS block fwd + bwd (stage 3)": train(vss, x_train),
        "training: its SS2D branch, norm(x) -> SS2D fwd + bwd": train(lambda t: vss.op(vss.norm(t)), x_train),
        "training: its MLP branch, norm2(x) -> MLP fwd + bwd": train(lambda t: vss.mlp(vss.norm2(t)), x_train),
        "training: the VSS block in the channel-last layout (channel_first=False)": train(vss_last, x_swin),
        "training: Swin-T block fwd + bwd (stage 3)": train(swin, x_swin),
    }
    results = {}
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    for _ in range(args.rounds):  # interleaved: the host's speed drifts within a run
        for name, fn in cases.items():
            results[name] = min(results.get(name, float("inf")), host_us(fn, args.calls))
    for name in cases:
        print(f"{results[name]:8.1f} us  {name}", flush=True)
    for lib in ("cublas", "cublaslt"):
        torch.backends.cuda.preferred_blas_library(lib)
        for name in ("F.linear(x, w bf16), no autocast", "F.linear(x, w, b) under autocast (cuBLASLt bias)"):
            key = f"{name} [preferred_blas_library={lib}]"
            results[key] = host_us(cases[name], args.calls)
            print(f"{results[key]:8.1f} us  {key}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "us_per_call": results}, f, indent=1)


if __name__ == "__main__":
    main()
