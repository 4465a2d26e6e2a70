"""Bandwidth of the plain Triton selective scan at VMamba-T stage-1 shapes against a device-to-device copy (issue 3).

Shape: B=128, K=4, D=96, L=3136, N=1 (``selective_scan``'s layout (B, K*D, L)). Bytes counted once: u and delta
read, y written, B and C read (the forward); the backward reads u, delta, B, C, dy and writes du, ddelta, dB, dC
(its chunk-state pass re-reads u, delta, B). Checks the kernel against the torch backend on fresh random inputs
first (forward and gradients, odd L), then times the shipped launch config and, with ``--sweep``, its neighbours;
``--variants`` also times variants of the code for an A/B in one process (same launch configs): ``strided``, the
positions addressed like a 2-D map's (FLAT off: the code before the FLAT path), ``masked``, every chunk masked
(EVEN_L off); ``--fused`` adds the fused SS2D op (bf16 channels_last maps, forward and backward) at the same shape.

    PYTHONPATH=. python3 benchmarks/scan_bandwidth_gpu.py --sweep all --variants strided,masked --fused --json $OUT/scan_bandwidth.json
"""
from __future__ import annotations

import argparse
import itertools
import json

import torch
from eager_ab_gpu import variant  # the scan variants: strided, masked, fp32_dz, bwd_z_gemm
from gpu_check import copy_bandwidth, time_cuda

from vssm.ops import selective_scan, triton_ops

DEV = "cuda"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def inputs(batch: int, K: int, D: int, N: int, L: int, dtype: torch.dtype, requires_grad: bool = False):
    g = dict(device=DEV, dtype=dtype)
    t = dict(
        u=torch.randn(batch, K * D, L, **g),
        delta=torch.randn(batch, K * D, L, **g) * 0.5,
        A=-torch.rand(K * D, N, device=DEV) - 0.5,
        B=torch.randn(batch, K, N, L, **g),
        C=torch.randn(batch, K, N, L, **g),
        D=torch.randn(K * D, device=DEV),
        delta_bias=torch.rand(K * D, device=DEV) - 1,
    )
    for v in t.values():
        v.requires_grad_(requires_grad)
    return t


def check(report: list) -> bool:
    """Triton vs torch backend, fp32, forward and every gradient, on shapes that are not the benchmark's."""
    ok_all = True
    for batch, K, D, N, L in ((2, 4, 24, 1, 1001), (3, 2, 40, 1, 257), (2, 4, 16, 16, 333)):
        ins = inputs(batch, K, D, N, L, torch.float32, requires_grad=True)
        dy = torch.randn(batch, K * D, L, device=DEV)
        outs = {}
        for backend in ("torch", "triton"):
            y = selective_scan(**ins, delta_softplus=True, backend=backend)
            grads = torch.autograd.grad(y, list(ins.values()), dy)
            outs[backend] = (y, grads)
        errs = [rel(outs["triton"][0], outs["torch"][0])]
        errs += [rel(a, b) for a, b in zip(outs["triton"][1], outs["torch"][1])]
        ok = max(errs) < 1e-5
        ok_all &= ok
        print(f"check B={batch} K={K} D={D} N={N} L={L}: max rel err {max(errs):.1e} {'OK' if ok else 'BAD'}", flush=True)
        report.append({"check": (batch, K, D, N, L), "rel_errs": errs, "ok": ok})
    return ok_all


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", choices=("forward", "backward", "all"), help="also time neighbouring launch configs")
    ap.add_argument("--variants", default="", help="comma-separated variants of eager_ab_gpu.py to time next to "
                    "the shipped code, e.g. strided (positions addressed as a 2-D map's: FLAT off), masked (every "
                    "chunk masked: EVEN_L off), fp32_dz, bwd_z_gemm")
    ap.add_argument("--fused", action="store_true", help="also time the fused SS2D op (bf16) at the same shape")
    ap.add_argument("--json", help="write all numbers here")
    ap.add_argument("--iters", type=int, default=20, help="timed forward calls (the backward: a quarter)")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    report: list = []
    check(report)

    copy_bw = copy_bandwidth()
    print(f"device-to-device copy: {copy_bw:.0f} GB/s", flush=True)

    batch, K, D, N, L = 128, 4, 96, 1, 3136
    shipped = {key: dict(cfg) for key, cfg in triton_ops.FLAT_CONFIGS.items()}
    rows = []

    def run(dtype, label, backward, cfg=None, fused=False):
        triton_ops.FLAT_CONFIGS.update({k: dict(v) for k, v in shipped.items()})
        if cfg is not None:
            key = backward, dtype.itemsize < 4
            triton_ops.FLAT_CONFIGS[key] = dict(shipped[key], **cfg)
        size = dtype.itemsize
        if fused:  # the SS2D op at the same stage-1 shape, channels_last bf16 maps as in the model
            H = W = 56
            g = dict(device=DEV, dtype=dtype)
            u = torch.randn(batch, D, H, W, **g).contiguous(memory_format=torch.channels_last)
            x_dbl = torch.randn(batch, K * 8, H, W, **g).contiguous(memory_format=torch.channels_last)
            dtw, dtb = torch.randn(K, D, 6, device=DEV) * 0.3, torch.rand(K, D, device=DEV) - 2
            A, Dv = -torch.rand(K * D, N, device=DEV) - 0.5, torch.randn(K * D, device=DEV)
            dy = torch.randn(batch, D, H, W, device=DEV).contiguous(memory_format=torch.channels_last)
            if backward:
                fn = lambda: torch.ops.vssm.cross_selective_scan_backward(  # noqa: E731
                    dy, u, x_dbl, dtw, dtb, A, Dv, triton_ops._no_states(u), "cross2d")  # with its state pass
            else:
                fn = lambda: triton_ops.cross_selective_scan(u, x_dbl, dtw, dtb, A, Dv)  # noqa: E731
            nbytes = (u.numel() + x_dbl.numel()) * size + u.numel() * 4  # its minimal bytes: u, x_dbl in, y out
        elif backward:
            ins = inputs(batch, K, D, N, L, dtype)
            dy = torch.randn(batch, K * D, L, device=DEV, dtype=dtype)
            fn = lambda: triton_ops.selective_scan_triton_bwd(  # noqa: E731
                dy, ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], ins["D"], ins["delta_bias"], True)
            nbytes = 3 * ins["u"].numel() * size + 2 * ins["B"].numel() * size  # u, delta, dy read
            nbytes += 2 * ins["u"].numel() * 4 + 2 * ins["B"].numel() * 4  # du, ddelta, dB, dC written (fp32)
        else:
            ins = inputs(batch, K, D, N, L, dtype)
            fn = lambda: selective_scan(**ins, delta_softplus=True, backend="triton")  # noqa: E731
            nbytes = (3 * ins["u"].numel() + 2 * ins["B"].numel()) * size
        with variant("shipped" if label == "sweep" else label):
            secs = time_cuda(fn, iters=max(1, args.iters // 4) if backward else args.iters)
        row = {"kernel": ("fused SS2D " if fused else "") + ("backward" if backward else "forward"),
               "dtype": str(dtype).replace("torch.", ""), "variant": label,
               "cfg": triton_ops.FLAT_CONFIGS[backward, dtype.itemsize < 4], "ms": secs * 1e3,
               "GB_s": nbytes / secs / 1e9, "of_copy": nbytes / secs / 1e9 / copy_bw}
        rows.append(row)
        print(f"{row['kernel']:8s} {row['dtype']:8s} {label:10s} {row['ms']:7.3f} ms {row['GB_s']:6.0f} GB/s "
              f"{100 * row['of_copy']:3.0f}% of copy  {row['cfg'] if not fused else ''}", flush=True)
        return secs

    variants = ["shipped"] + [v for v in args.variants.split(",") if v]
    for dtype in (torch.float32, torch.bfloat16):
        for backward in (False, True):
            for label in variants:
                run(dtype, label, backward)
    if args.fused:
        for backward in (False, True):
            for label in variants:
                run(torch.bfloat16, label, backward, fused=True)
    if args.sweep:
        fwd = [dict(BLOCK_L=bl, BLOCK_D=bd, num_warps=nw, NUM_STAGES=ns)
               for bl, bd, nw, ns in itertools.product((64, 128), (4, 8, 16), (1, 2, 4), (1, 2, 3))]
        bwd = [dict(BLOCK_L=bl, BLOCK_D=bd, num_warps=nw, NUM_STAGES=ns)
               for bl, bd, nw, ns in itertools.product((32, 64), (4, 8), (1, 2), (1, 2))]
        for backward, configs in [(b, c) for b, c in ((False, fwd), (True, bwd))
                                  if args.sweep in ("all", ("backward" if b else "forward"))]:
            for dtype in (torch.float32, torch.bfloat16):
                for cfg in configs:
                    run(dtype, "sweep", backward, cfg)
    print("\n| kernel | dtype | variant | config | ms | GB/s | of copy |\n|---|---|---|---|---|---|---|")
    for key in ("forward", "backward", "fused SS2D forward", "fused SS2D backward"):
        for dtype in ("float32", "bfloat16"):
            sel = [r for r in rows if r["kernel"] == key and r["dtype"] == dtype]
            if not sel:
                continue
            best = min(sel, key=lambda r: r["ms"])
            for r in [r for r in sel if r["variant"] != "sweep"] + ([dict(best, variant="best")] if args.sweep else []):
                cfg = {k: r["cfg"][k] for k in ("BLOCK_L", "BLOCK_D", "num_warps", "NUM_STAGES")}
                print(f"| {key} | {dtype} | {r['variant']} | {cfg} | {r['ms']:.3f} | {r['GB_s']:.0f} | "
                      f"{100 * r['of_copy']:.0f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "copy_GB_s": copy_bw, "rows": rows,
                       "checks": report}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
