"""GPU check of the Triton path, in one command (fresh random inputs each run):

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out $OUT [--skip-throughput] [--profile]

1. the fused SS2D op and the plain Triton scan against the torch backend in float64 at VMamba-T shapes, forward and
   every gradient, fp32 and bf16 inputs;
2. vmamba_tiny_s1l8 logits and gradients, Triton vs torch backend; the golden fixtures on the GPU;
3. bandwidth of the plain scan kernel at stage-1 shapes against a device-to-device copy;
4. (optional) a profile of vmamba_tiny_s1l8 inference and training; throughput next to Swin-T and ConvNeXt-T.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import vssm  # noqa: E402
from vssm import benchmark  # noqa: E402
from vssm.ops import selective_scan  # noqa: E402
from vssm.ops.ss2d_scan import ss2d_scan  # noqa: E402
from vssm.ops.triton_ops import cross_selective_scan  # noqa: E402

DEV = torch.device("cuda")
_START = time.perf_counter()


def elapsed() -> str:
    return f"{time.perf_counter() - _START:6.1f}s"


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def composition(u, xw, dtw, dtb, A_logs, Ds, order="cross2d"):
    """SS2D's portable path (cross_scan + projections + torch scan + cross_merge): the reference."""
    return ss2d_scan(u, xw, dtw, dtb, A_logs, Ds, order, backend="torch")


def fused(u, xw, dtw, dtb, A_logs, Ds, order="cross2d"):
    return ss2d_scan(u, xw.to(u.dtype), dtw, dtb, A_logs, Ds, order, backend="triton")


def grads_of(fn, leaves, dout):
    leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
    y = fn(*leaves)
    y.backward(dout.to(y.dtype))
    return y.detach(), [t.grad for t in leaves]


def check_fused(report, limit_shapes=None):
    shapes = [  # (B, E, H, W, N, R): s1l8 stage 1 and 3, v0 stage 1 (N=16), a non-square odd map
        (8, 96, 56, 56, 1, 6), (4, 64, 33, 47, 1, 4), (8, 384, 14, 14, 1, 24), (2, 192, 56, 56, 16, 6),
    ][:limit_shapes]
    g = torch.Generator(device=DEV).manual_seed(int(time.time()))
    for B, E, H, W, N, R in shapes:
        K = 4
        u = torch.randn(B, E, H, W, device=DEV, generator=g).contiguous(memory_format=torch.channels_last)
        params = [
            0.3 * torch.randn(K, R + 2 * N, E, device=DEV, generator=g) / E**0.5 * 4,
            torch.randn(K, E, R, device=DEV, generator=g) / R**0.5,
            torch.rand(K, E, device=DEV, generator=g) * 2 - 3,
            torch.log(torch.arange(1, N + 1.0, device=DEV)).expand(K * E, N) + 0.5 * torch.randn(K * E, N, device=DEV, generator=g),
            torch.randn(K * E, device=DEV, generator=g),
        ]
        dout = torch.randn(B, E, H, W, device=DEV, generator=g)
        for dtype in (torch.float32, torch.bfloat16):
            # reference in float64 on the same (rounded) inputs: what is left is the kernel's own error
            rounded = [u.to(dtype), params[0].to(dtype)] + params[1:]
            ref_y, ref_g = grads_of(composition, [t.double() for t in rounded], dout.double())
            y, gr = grads_of(lambda u_, xw, *p: fused(u_.to(dtype), xw.to(dtype), *p), [u] + params, dout)
            errs = {"y": rel(y, ref_y)}
            errs.update({name: rel(a, b) for name, a, b in zip(("du", "dx_proj", "ddt_w", "ddt_b", "dA_logs", "dD"), gr, ref_g)})
            limit = 1e-5 if dtype == torch.float32 else 1e-2
            ok = all(e < limit for e in errs.values())
            report.append({"check": "fused_ss2d", "shape": [B, E, H, W, N, R], "dtype": str(dtype), "limit": limit,
                           "ok": ok, **{k: float(f"{v:.3g}") for k, v in errs.items()}})
            print(f"[{elapsed()}] fused {B}x{E}x{H}x{W} N={N} {str(dtype):15s} {'OK ' if ok else 'BAD'} " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()), flush=True)


def check_plain(report):
    g = torch.Generator(device=DEV).manual_seed(int(time.time()) + 1)
    for batch, K, D, N, L in [(8, 4, 96, 1, 3136), (2, 2, 384, 16, 197), (4, 1, 64, 1, 1001)]:
        ch = K * D
        inputs = [
            torch.randn(batch, ch, L, device=DEV, generator=g), 0.5 * torch.randn(batch, ch, L, device=DEV, generator=g),
            -torch.exp(0.5 * torch.randn(ch, N, device=DEV, generator=g)), torch.randn(batch, K, N, L, device=DEV, generator=g),
            torch.randn(batch, K, N, L, device=DEV, generator=g), torch.randn(ch, device=DEV, generator=g),
            torch.rand(ch, device=DEV, generator=g) * 2.5 - 2,
        ]
        dout = torch.randn(batch, ch, L, device=DEV, generator=g)
        for dtype in (torch.float32, torch.bfloat16):
            rounded = [t.to(dtype).double() if i in (0, 1, 3, 4) else t.double() for i, t in enumerate(inputs)]
            ref_y, ref_g = grads_of(lambda *a: selective_scan(*a, backend="torch"), rounded, dout.double())
            def tri(u, dl, A, B_, C_, D_, bias):
                return selective_scan(u.to(dtype), dl.to(dtype), A, B_.to(dtype), C_.to(dtype), D_, bias,
                                      out_dtype=torch.float32, backend="triton")
            y, gr = grads_of(tri, inputs, dout)
            errs = {"y": rel(y, ref_y)}
            errs.update({n: rel(a, b) for n, a, b in zip(("du", "ddelta", "dA", "dB", "dC", "dD", "dbias"), gr, ref_g)})
            limit = 1e-5 if dtype == torch.float32 else 1e-2
            ok = all(e < limit for e in errs.values())
            report.append({"check": "plain_scan", "shape": [batch, K, D, N, L], "dtype": str(dtype), "limit": limit, "ok": ok,
                           **{k: float(f"{v:.3g}") for k, v in errs.items()}})
            print(f"[{elapsed()}] plain b{batch} K{K} D{D} N{N} L{L} {str(dtype):15s} {'OK ' if ok else 'BAD'} " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))


def check_models(report):
    torch.manual_seed(int(time.time()) + 2)
    ref = vssm.create_model("vmamba_tiny_s1l8", scan_backend="torch", drop_path_rate=0.0).to(DEV)
    tri = vssm.create_model("vmamba_tiny_s1l8", scan_backend="triton", drop_path_rate=0.0).to(DEV)
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 224, 224, device=DEV)
    out = []
    for model in (ref, tri):
        model.zero_grad()
        y = model(x)
        y.square().mean().backward()
        out.append((y.detach(), {k: p.grad for k, p in model.named_parameters()}))
    logits_err = rel(out[1][0], out[0][0])
    grad_err = max(rel(out[1][1][k], out[0][1][k]) for k in out[0][1])
    ok = logits_err < 1e-4 and grad_err < 1e-3
    report.append({"check": "vmamba_tiny_s1l8 triton vs torch", "logits_rel": logits_err, "max_grad_rel": grad_err, "ok": ok})
    print(f"[{elapsed()}] vmamba_tiny_s1l8 triton vs torch backend: logits {logits_err:.1e}, worst param grad {grad_err:.1e} {'OK' if ok else 'BAD'}")

    from conftest import load_fixture, split_fixture

    for name in ("vmamba_v0_reduced", "vmamba_v2_s2_reduced", "vmamba_v2v_s1_reduced"):
        meta, tensors = load_fixture(name)
        sd, outs = split_fixture(tensors)
        model = vssm.build_official("vmamba", **meta["constructor_args"]).to(DEV).eval()
        model.load_state_dict(sd)
        with torch.no_grad():
            logits = model(outs["__input__"].to(DEV)).cpu()
        err = (logits - outs["__logits__"]).abs().max().item()
        ok = err <= meta["tolerance"]["atol"]
        report.append({"check": f"fixture {name} on GPU", "max_abs": err, "atol": meta["tolerance"]["atol"], "ok": ok})
        print(f"[{elapsed()}] fixture {name} on GPU: max|diff| {err:.1e} (atol {meta['tolerance']['atol']}) {'OK' if ok else 'BAD'}")


def time_cuda(fn, iters=20, warmup=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def copy_bandwidth() -> float:
    """GB/s of a 1 GiB device-to-device copy, counting the bytes read and written: the ceiling scans are held to."""
    big = torch.empty(2**28, device=DEV)
    dst = torch.empty_like(big)
    return 2 * big.numel() * 4 / time_cuda(lambda: dst.copy_(big)) / 1e9


def bandwidth(report):
    copy_bw = copy_bandwidth()
    batch, K, D, N, L = 128, 4, 96, 1, 3136
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        u = torch.randn(batch, K * D, L, device=DEV, dtype=dtype)
        delta = torch.randn_like(u) * 0.5
        A = -torch.rand(K * D, N, device=DEV) - 0.5
        B = torch.randn(batch, K, N, L, device=DEV, dtype=dtype)
        C = torch.randn_like(B)
        Dv = torch.randn(K * D, device=DEV)
        bias = torch.rand(K * D, device=DEV) - 1
        secs = time_cuda(lambda: selective_scan(u, delta, A, B, C, Dv, bias, out_dtype=dtype, backend="triton"))
        nbytes = (3 * u.numel() + 2 * B.numel()) * u.element_size()  # u, delta read; y written; B, C read
        bw = nbytes / secs / 1e9
        rows.append({"kernel": "plain selective_scan", "dtype": str(dtype), "ms": secs * 1e3, "GB_s": bw, "of_copy": bw / copy_bw})
        # fused SS2D op at the same shape: minimal bytes = u, x_dbl read once, y (fp32) written once
        H = W = 56
        um = torch.randn(batch, D, H, W, device=DEV, dtype=dtype).contiguous(memory_format=torch.channels_last)
        x_dbl = torch.randn(batch, K * 8, H, W, device=DEV, dtype=dtype).contiguous(memory_format=torch.channels_last)
        dtw = torch.randn(K, D, 6, device=DEV) * 0.3
        dtb = torch.rand(K, D, device=DEV) - 2
        secs = time_cuda(lambda: cross_selective_scan(um, x_dbl, dtw, dtb, A, Dv))
        nbytes = um.numel() * um.element_size() + x_dbl.numel() * x_dbl.element_size() + um.numel() * 4
        bw = nbytes / secs / 1e9
        rows.append({"kernel": "fused SS2D (min bytes)", "dtype": str(dtype), "ms": secs * 1e3, "GB_s": bw, "of_copy": bw / copy_bw})
    for r in rows:
        print(f"{r['kernel']:24s} {r['dtype']:15s} {r['ms']:.3f} ms  {r['GB_s']:.0f} GB/s  {100 * r['of_copy']:.0f}% of copy ({copy_bw:.0f} GB/s)")
    report.append({"check": "bandwidth", "copy_GB_s": copy_bw, "rows": rows})


def sweep(report):
    """Launch configs of the fused op at stage-1 shapes (bf16 inputs): forward, then backward; the fastest of each
    is kept for the rest of the run."""
    from vssm.ops import triton_ops

    B, E, H, W, K, R = 128, 96, 56, 56, 4, 6
    u = torch.randn(B, E, H, W, device=DEV, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    x_dbl = torch.randn(B, K * (R + 2), H, W, device=DEV, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    dtw = torch.randn(K, E, R, device=DEV) * 0.3
    dtb = torch.rand(K, E, device=DEV) - 2
    A = -torch.rand(K * E, 1, device=DEV) - 0.5
    Dv = torch.randn(K * E, device=DEV)
    dy = torch.randn(B, E, H, W, device=DEV).contiguous(memory_format=torch.channels_last)
    shipped = triton_ops.CONFIGS[True, False], triton_ops.CONFIGS[True, True]
    forward = [dict(shipped[0], BLOCK_L=bl, BLOCK_D=bd, num_warps=nw)
               for bl, bd, nw in ((64, 32, 2), (32, 32, 1), (32, 32, 2), (16, 32, 1), (64, 32, 4), (32, 64, 2))]
    backward = [dict(shipped[1], BLOCK_L=bl, BLOCK_D=bd, num_warps=nw, NUM_STAGES=ns)
                for bl, bd, nw, ns in ((32, 32, 4, 2), (32, 32, 4, 1), (16, 32, 2, 1), (16, 32, 1, 1), (16, 32, 4, 1),
                                       (32, 32, 2, 1))]
    rows = []
    for is_backward, configs in ((False, forward), (True, backward)):
        timed = []
        for cfg in configs:
            triton_ops.CONFIGS[True, is_backward] = dict(cfg)
            if is_backward:
                ms = 1e3 * time_cuda(lambda: torch.ops.vssm.cross_selective_scan_backward(dy, u, x_dbl, dtw, dtb, A, Dv, triton_ops._no_states(u), "cross2d"), iters=5, warmup=1)
            else:
                ms = 1e3 * time_cuda(lambda: cross_selective_scan(u, x_dbl, dtw, dtb, A, Dv), iters=10, warmup=2)
            timed.append((ms, len(timed)))
            rows.append({"backward": is_backward, "cfg": cfg, "ms": ms})
            print(f"[{elapsed()}] {'bwd' if is_backward else 'fwd'} {cfg}: {ms:.3f} ms", flush=True)
        ms, best = min(timed)
        triton_ops.CONFIGS[True, is_backward] = dict(configs[best])
        print(f"best {'bwd' if is_backward else 'fwd'}: {configs[best]} {ms:.3f} ms")
    report.append({"check": "sweep", "rows": rows, "chosen": {str(k): v for k, v in triton_ops.CONFIGS.items()}})


def profile(out_dir):
    from torch.profiler import ProfilerActivity, profile as torch_profile

    model = vssm.create_model("vmamba_tiny_s1l8").to(DEV)
    for mode in ("bf16", "train_fp16"):
        benchmark.measure(model, mode, warmup=3, iters=2)
        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
            benchmark.measure(model, mode, warmup=0, iters=2)
        table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70)
        with open(os.path.join(out_dir, f"profile_{mode}.txt"), "w") as f:
            f.write(table)
        # the aten ops (with their input shapes) behind the kernels: which op launches each elementwise kernel
        ops = prof.key_averages(group_by_input_shape=True).table(sort_by="cuda_time_total", row_limit=40,
                                                                  max_name_column_width=40, max_shapes_column_width=110)
        with open(os.path.join(out_dir, f"profile_{mode}_ops.txt"), "w") as f:
            f.write(ops)
        print(f"--- profile {mode} (2 iterations) ---")
        print("\n".join(table.splitlines()[:22]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="time launch configs of the fused op first")
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument("--fused-only", type=int, default=None, metavar="N",
                        help="checks: only the first N fused-op shapes (after the sweep's choice)")
    parser.add_argument("--groups", nargs="+", default=[
        "swin_tiny_patch4_window7_224,vmamba_tiny_s1l8,convnext_tiny,vanilla_vmamba_tiny",
        "swin_small_patch4_window7_224,vmamba_small_s2l15,convnext_small",
        "swin_base_patch4_window7_224,vmamba_base_s2l15,convnext_base",
    ], help="comma-separated model lists, one table each, ratios to each list's first model")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    report = []
    if args.sweep:
        sweep(report)
    if not args.skip_checks:
        torch.backends.cudnn.allow_tf32 = False  # exact fp32 for the correctness checks; timings use the defaults
        check_fused(report, args.fused_only)
        if args.fused_only is None:
            check_plain(report)
            check_models(report)
        torch.backends.cudnn.allow_tf32 = True
    bandwidth(report)
    if args.profile:
        profile(args.out)
    if not args.skip_throughput:
        for group in args.groups:
            rows = benchmark.run(group.split(","), warmup=args.warmup, iters=args.iters)
            print(benchmark.markdown(rows), flush=True)
            report.append({"check": "throughput", "rows": rows})
    benchmark.write_json_atomic(os.path.join(args.out, "gpu_check.json"), report)
    bad = [r for r in report if r.get("ok") is False]
    print(f"{len(bad)} failed checks" if bad else "all checks OK")


if __name__ == "__main__":
    main()
