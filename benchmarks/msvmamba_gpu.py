"""MSVMamba on the GPU: logits vs the CPU, and throughput / peak memory next to VMamba and Swin-T.

    python benchmarks/msvmamba_gpu.py --out benchmarks/results      # on a CUDA GPU, about 4-5 minutes on an H100
    python benchmarks/msvmamba_gpu.py --quick --out /tmp/msv-quick   # a tiny smoke run of every code path (CPU ok)

(a) msvmamba_tiny (generation 1, MSVMamba-T) with random weights (every parameter perturbed off its init value) on
    a random batch: logits on the GPU vs on the CPU, fp32 with TF32 off; max abs difference and the logit scale.
(b) msvmamba_tiny and msvmambav3_tiny_224 next to vmamba_tiny_s1l8 (VMamba-T), vanilla_vmamba_tiny (VMambav1-T, the
    poster's baseline) and timm swin_tiny_patch4_window7_224, in one process on one GPU: inference fp32, inference
    under bf16 autocast, training (forward + cross-entropy + backward under fp16 autocast, no optimizer step),
    images/s and peak allocated memory. Protocol of shared/anchors/README.md: batch 128 at 224², 50 warm-up + 30
    timed iterations, cudnn.benchmark on, TF32 matmul off, peak = max_memory_allocated over the timed loop. A
    measurement that would not fit its share of --budget-s runs fewer iterations (never fewer than 3 + 3); the
    iterations actually run are in the table and the JSON. Out-of-memory is caught and reported.

The MSVMamba poster claims MSVMamba-T 1092 img/s and 4533 MB vs VMambav1-T 603 img/s and 6639 MB (GPU, batch,
mode and generation not stated; spec/msvmamba.md §1c): the table gives both ratios for our implementation.

Writes msvmamba-<date>.md and msvmamba-<date>.json under --out and prints the markdown.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import timm  # noqa: E402

import vssm  # noqa: E402,F401  (registers the models)
from vssm import benchmark  # noqa: E402
from vssm.ops import available_backends  # noqa: E402

MODELS = [  # (label, timm name, budget weight)
    ("MSVMamba-T (gen 1)", "msvmamba_tiny", 1.0),
    ("MSVMambav3-T", "msvmambav3_tiny_224", 1.0),
    ("VMamba-T [s1l8]", "vmamba_tiny_s1l8", 1.0),
    ("VMambav1-T (vanilla)", "vanilla_vmamba_tiny", 1.5),
    ("Swin-T (timm)", "swin_tiny_patch4_window7_224", 0.7),
]
MODES = benchmark.MODES  # "fp32", "bf16" (inference), "train_fp16"
BASELINES = ("vanilla_vmamba_tiny", "swin_tiny_patch4_window7_224")
POSTER = {"msvmamba": {"img_s": 1092, "peak_MB": 4533}, "vanilla_vmamba_tiny": {"img_s": 603, "peak_MB": 6639}}


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@torch.no_grad()
def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its initial value (A_logs = 0, Ds = 1, ... would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        big = name.rsplit(".", 1)[-1] in ("A_logs", "Ds", "dt_projs_bias", "bias")
        p.add_((torch.randn(p.shape, generator=g) * (0.3 if big else 0.02)).to(p.device, p.dtype))


def gpu_vs_cpu(device: torch.device, size: int, batch: int, name: str = "msvmamba_tiny") -> dict:
    """(a): the same function on the CPU and on ``device``, fp32, TF32 off."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    _perturb(model, seed=1)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2))
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            cpu = model(x)
            model.to(device)
            dev = model(x.to(device)).cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    diff = (dev - cpu).abs().max().item()
    scale = cpu.abs().max().item()
    del model
    _free()
    return {"model": name, "img_size": size, "batch": batch, "max_abs_diff": diff, "max_abs_logit": scale,
            "rel_to_scale": diff / max(scale, 1e-12), "device": str(device)}


def _build(name: str, size: int) -> torch.nn.Module:
    if name.startswith("swin") and size != 224:  # timm's Swin fixes its input size; vssm models take any size
        return timm.create_model(name, img_size=size)
    return timm.create_model(name)


def measure(name: str, mode: str, size: int, batch: int, device: torch.device, warmup: int, iters: int,
            budget_s: float, min_iters: tuple = (3, 3)) -> dict:
    """Images/s and peak allocated memory of one model in one mode with vssm.benchmark.measure (the anchors'
    protocol). A first short run (2 warm-up + 1 timed) times one iteration; the measurement then runs fewer
    iterations if its share of the budget needs it (never fewer than ``min_iters`` = (warm-up, timed) in all;
    a model far too slow for its share keeps just the probe)."""
    row = {"model": name, "mode": mode, "img_size": size, "batch": batch}
    model = None
    try:
        torch.manual_seed(0)
        model = _build(name, size).to(device)
        row["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
        probe = benchmark.measure(model, mode, batch, size, warmup=2, iters=1, device=str(device))
        t_step = batch / probe["img_s"]
        if t_step * sum(min_iters) > 2 * budget_s:
            result, n_warm, n_timed = probe, 0, 0
            row.update(img_s=probe["img_s"], peak_MB=probe["peak_mb"], warmup=2, iters=1)
        else:
            n_warm = max(0, max(min_iters[0], min(warmup, int(0.35 * budget_s / t_step))) - 3)  # the probe warms too
            n_timed = max(min_iters[1], min(iters, int(0.65 * budget_s / t_step)))
            result = benchmark.measure(model, mode, batch, size, warmup=n_warm, iters=n_timed, device=str(device))
            row.update(img_s=result["img_s"], peak_MB=result["peak_mb"], warmup=n_warm + 3, iters=n_timed)
        row["reduced"] = row["warmup"] < warmup or row["iters"] < iters
    except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
        if not _is_oom(err):
            raise
        row.update(oom=True, error=str(err).splitlines()[0][:200])
    finally:
        del model
        _free()
    return row


def _fmt(v, spec: str = ".0f") -> str:
    if v is not None and spec == ".0f" and abs(v) < 100:
        spec = ".3g"
    return "—" if v is None else format(v, spec)


def _ratio(a, b, spec: str = ".2f") -> str:
    return "—" if not a or not b else format(a / b, spec) + "x"


def markdown(result: dict) -> str:
    env, check = result["environment"], result["gpu_vs_cpu"]
    rows = result["rows"]

    def find(model, mode):
        return next((r for r in rows if r["model"] == model and r["mode"] == mode and not r.get("oom")), None)

    lines = [
        f"# MSVMamba vs VMamba and Swin-T on {env['device_name']} — {result['date']}",
        "",
        f"Command: `{result['command']}`  ",
        f"vssm {env['vssm_commit']}, PyTorch {env['torch']}, timm {env['timm']}, scan backends: {env['scan_backends']}"
        f" (`auto` picks the last registered backend that accepts the input), Python {env['python']}.",
        "",
        f"## (a) {check['model']} logits on the GPU vs the CPU (fp32, TF32 off, random perturbed weights)",
        "",
        f"img {check['img_size']}², batch {check['batch']}: max |GPU − CPU| = {check['max_abs_diff']:.3g} "
        f"(max |logit| {check['max_abs_logit']:.3g}, relative {check['rel_to_scale']:.2g}).",
        "",
        f"## (b) Throughput and peak memory, {result['img_size']}², batch {result['batch']}",
        "",
        "Protocol: shared/anchors/README.md (cudnn.benchmark on, TF32 matmul off; inference under no_grad; training ="
        " forward + cross-entropy + backward under fp16 autocast, no optimizer step; peak = max_memory_allocated over"
        " the timed loop). 'iters' = warm-up + timed iterations actually run; fewer than 50 + 30 means the"
        " measurement was cut to fit the time budget.",
        "",
        "| model | params (M) | mode | img/s | peak MB | iters | speed vs VMambav1-T | memory vs VMambav1-T |"
        " speed vs Swin-T | memory vs Swin-T |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, name, _ in MODELS:
        for mode in MODES:
            r = next((r for r in rows if r["model"] == name and r["mode"] == mode), None)
            if r is None:
                continue
            if r.get("oom"):
                lines.append(f"| {label} | — | {mode} | OOM | OOM | — | — | — | — | — |")
                continue
            v1, swin = (find(b, mode) for b in BASELINES)
            cells = []
            for base in (v1, swin):
                cells += [_ratio(r["img_s"], base and base["img_s"]),
                          _ratio(r.get("peak_MB"), base and base.get("peak_MB"))]
            lines.append(f"| {label} | {r['params_M']:.1f} | {mode} | {_fmt(r['img_s'])} | {_fmt(r.get('peak_MB'))} | "
                         f"{r['warmup']}+{r['iters']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Poster claim (MSVMamba-T vs VMambav1-T, protocol unknown): 1092 vs 603 img/s (1.81x) and 4533 vs 6639 MB"
        " (0.68x). Compare the `speed / memory vs VMambav1-T` columns of the MSVMamba rows.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results", help="folder for msvmamba-<date>.md / .json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 px, batch 1, 2+1 iterations")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--budget-s", type=float, default=210.0, help="time budget of part (b) in seconds")
    parser.add_argument("--models", nargs="*", default=None, help="subset of timm names (default: all five)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA GPU is available (use --quick --device cpu for a smoke run)")
    if args.quick:
        args.batch, args.img_size, args.budget_s = 1, 64, 10.0
    warmup, iters = (2, 1) if args.quick else (50, 30)
    min_iters = (2, 1) if args.quick else (3, 3)
    models = [m for m in MODELS if args.models is None or m[1] in args.models]
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    start = time.perf_counter()

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    env = {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
        "vssm_commit": commit, "scan_backends": ", ".join(available_backends()),
    }
    print(f"device: {env['device_name']}; scan backends: {env['scan_backends']}", flush=True)

    check = gpu_vs_cpu(device, size=args.img_size, batch=2)
    print(f"(a) {check['model']} GPU vs CPU: max abs diff {check['max_abs_diff']:.3g} "
          f"(logit scale {check['max_abs_logit']:.3g})", flush=True)

    plan = [(name, mode, weight) for _, name, weight in models for mode in MODES]
    deadline = time.perf_counter() + args.budget_s
    rows = []
    for i, (name, mode, weight) in enumerate(plan):
        left = max(deadline - time.perf_counter(), 1.0)
        share = left * weight / sum(p[2] for p in plan[i:])
        row = measure(name, mode, args.img_size, args.batch, device, warmup, iters, share, min_iters)
        rows.append(row)
        status = "OOM" if row.get("oom") else (f"{row['img_s']:.1f} img/s, peak {_fmt(row.get('peak_MB'))} MB, "
                                               f"{row['warmup']}+{row['iters']} iters")
        print(f"  {name} {mode}: {status}", flush=True)

    date = datetime.date.today().isoformat()
    result = {
        "date": date, "command": " ".join([Path(sys.executable).name] + sys.argv), "environment": env,
        "protocol": {"warmup": warmup, "iters": iters, "budget_s": args.budget_s, "cudnn_benchmark": True,
                     "tf32_matmul": False, "quick": args.quick},
        "img_size": args.img_size, "batch": args.batch, "gpu_vs_cpu": check, "rows": rows, "poster": POSTER,
        "wall_s": time.perf_counter() - start,
    }
    text = markdown(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"msvmamba-{date}" + ("-quick" if args.quick else "")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(text)
    print(text)
    print(f"wrote {out / stem}.md and .json in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
