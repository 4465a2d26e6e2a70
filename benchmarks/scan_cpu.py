"""CPU speed of the portable scan and of the full model, side by side in one process.

    PYTHONPATH=. python benchmarks/scan_cpu.py [--threads 2] [--skip-slow-reference] [--demo-only] [--json out.json]

1. selective_scan, the cpu (numba forward) and torch backends vs the sequential reference, forward and
   forward+backward, at VMamba-T stage-1 shapes (B=1 and B=8, K=4, D=96, N=1, L=3136), fp32.
2. vmamba_tiny_s1l8 (scan backend auto = cpu, and torch) vs timm swin_tiny_patch4_window7_224 (and convnext_tiny)
   forward latency at 1x3x224x224.
3. What `make demo` trains: the scan forward and forward+backward (cpu backend) at vmamba_femto's three stage shapes
   for a batch of 64 28-px images (B=64, K=4, N=1; D=48/96/192, L=49/16/4), and its whole training step (forward,
   backward, AdamW). `--demo-only` runs this section alone.
Reported: median of the repeats (the reference forward runs 3 times, its forward+backward, minutes, once).
"""
import argparse
import json
import platform
import statistics
import time

import timm
import torch

import vssm
from vssm.ops import selective_scan


def timed(fn, repeats):
    if repeats > 1:
        fn()  # warm-up (the minutes-long reference runs once)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def scan_inputs(batch, K=4, D=96, N=1, L=3136):
    g = torch.Generator().manual_seed(batch)
    ch = K * D
    return [
        torch.randn(batch, ch, L, generator=g), 0.5 * torch.randn(batch, ch, L, generator=g),
        -torch.exp(0.5 * torch.randn(ch, N, generator=g)), torch.randn(batch, K, N, L, generator=g),
        torch.randn(batch, K, N, L, generator=g), torch.randn(ch, generator=g), torch.rand(ch, generator=g) - 1.5,
    ]


def scan_times(batch, backend, repeats, backward=True, **shape):
    """(forward seconds, forward+backward seconds or None); ``shape``: scan_inputs' K, D, N, L."""
    inputs = scan_inputs(batch, **shape)

    def forward():
        with torch.no_grad():
            selective_scan(*inputs, backend=backend)

    def forward_backward():
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        selective_scan(*leaves, backend=backend).sum().backward()

    return timed(forward, repeats), (timed(forward_backward, repeats) if backward else None)


def model_latency(name, repeats, **kwargs):
    model = vssm.create_model(name, **kwargs).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        return timed(lambda: model(x), repeats)


def training_step(model, x, target):
    """A function running one training step of ``model`` on (x, target): forward, cross-entropy, backward, AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def demo_times(repeats):
    """Section 3: {stage shape: (scan fwd s, scan fwd+bwd s)}, and the training step's seconds."""
    model = vssm.create_model("vmamba_femto", num_classes=10, in_chans=1)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    sizes = []
    hooks = [stage.blocks.register_forward_hook(lambda m, i, o: sizes.append(o.shape[1] * o.shape[2]))
             for stage in model.layers]  # channel-last (B, H, W, C): the tokens each stage scans
    model(x[:1])
    for h in hooks:
        h.remove()
    scans = {}
    for dim, length in zip(model.dims, sizes):
        scans[f"D={dim}, L={length}"] = scan_times(64, "cpu", repeats, D=dim, L=length)
    train_step = training_step(model, x, y)
    for _ in range(3):
        train_step()
    return scans, timed(train_step, 3 * repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--skip-slow-reference", action="store_true", help="skip the reference forward+backward at B=8 (minutes)")
    parser.add_argument("--demo-only", action="store_true", help="only section 3 (the demo's model)")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as vssm train does
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, timm {timm.__version__}")
    scans, step = demo_times(args.repeats)
    print("\n| vmamba_femto scan, B=64, K=4, N=1 | cpu fwd ms | cpu fwd+bwd ms |")
    print("|---|---|---|")
    for shape, (fwd, fwd_bwd) in scans.items():
        print(f"| {shape} | {fwd * 1e3:.2f} | {fwd_bwd * 1e3:.2f} |")
    print(f"| training step (batch 64, 28 px, fwd + bwd + AdamW) | | {step * 1e3:.1f} |")
    demo = {"scan_s": scans, "train_step_s": step, "threads": args.threads}
    if args.demo_only:
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"demo": demo}, f, indent=1)
        return
    rows = []
    print("\n| scan (B, K=4, D=96, N=1, L=3136) | cpu fwd ms | torch fwd ms | reference fwd ms | speed-up cpu / torch "
          "| cpu fwd+bwd ms | torch fwd+bwd ms | reference fwd+bwd ms | speed-up cpu / torch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in (1, 8):
        c_fwd, c_fb = scan_times(batch, "cpu", args.repeats)
        t_fwd, t_fb = scan_times(batch, "torch", args.repeats)
        r_fwd, _ = scan_times(batch, "reference", min(3, args.repeats), backward=False)
        r_fb = None if batch == 8 and args.skip_slow_reference else scan_times(batch, "reference", 1)[1]
        rows.append(dict(batch=batch, cpu_fwd=c_fwd, torch_fwd=t_fwd, ref_fwd=r_fwd, cpu_fwd_bwd=c_fb,
                         torch_fwd_bwd=t_fb, ref_fwd_bwd=r_fb))
        fb = f"{r_fb * 1e3:.0f} | {r_fb / c_fb:.0f}x / {r_fb / t_fb:.0f}x" if r_fb else "skipped | -"
        print(f"| B={batch} | {c_fwd * 1e3:.1f} | {t_fwd * 1e3:.1f} | {r_fwd * 1e3:.0f} | {r_fwd / c_fwd:.0f}x / "
              f"{r_fwd / t_fwd:.0f}x | {c_fb * 1e3:.1f} | {t_fb * 1e3:.1f} | {fb} |")
    print("\n| model, 1x3x224x224 | forward ms (median) | vs swin_tiny |")
    print("|---|---|---|")
    latencies = {}
    for label, name, kwargs in (
        ("swin_tiny_patch4_window7_224", "swin_tiny_patch4_window7_224", {}),
        ("vmamba_tiny_s1l8", "vmamba_tiny_s1l8", {}),
        ("vmamba_tiny_s1l8 (scan_backend=torch)", "vmamba_tiny_s1l8", dict(scan_backend="torch")),
        ("convnext_tiny", "convnext_tiny", {}),
    ):
        latencies[label] = model_latency(name, args.repeats, **kwargs)
    for name, t in latencies.items():
        print(f"| {name} | {t * 1e3:.0f} | {t / latencies['swin_tiny_patch4_window7_224']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"scan": rows, "models_s": latencies, "threads": args.threads, "demo": demo}, f, indent=1)


if __name__ == "__main__":
    main()
