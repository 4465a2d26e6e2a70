"""Vim on the GPU: logits vs the CPU, and throughput / peak memory next to DeiT (spec/vim.md §8).

    python benchmarks/vim_gpu.py --out benchmarks/results          # on a CUDA GPU, about 5-6 minutes on an H100
    python benchmarks/vim_gpu.py --quick --out /tmp/vim-quick       # a tiny smoke run of every code path (CPU ok)

(a) Vim-S with fresh random weights (every parameter perturbed off its init value) on a random batch: logits
    on the GPU vs on the CPU, fp32 with TF32 off; max abs difference and the logit scale.
(b) Vim-Ti / Vim-S vs timm deit_tiny_patch16_224 / deit_small_patch16_224, in the same process on the same GPU:
    inference fp32, inference under bf16 autocast, training (forward + cross-entropy + backward under fp16
    autocast, no optimizer step), images/s and peak allocated memory. Protocol of shared/anchors/README.md: at 224²
    batch 128, 50 warm-up + 30 timed iterations, cudnn.benchmark on, TF32 matmul off. At 1248² (6084 patches,
    the Vim paper's efficiency point) the same batch for Vim and DeiT (--big-batch, default 8), plus DeiT with
    its attention forced to the non-fused softmax(QK^T)V (what the paper compared against; timm uses fused SDPA).
    A measurement that would not fit its share of --budget-s runs fewer iterations (never fewer than 3 warm-up
    and 3 timed); the iterations actually run are in the table and the JSON. Out-of-memory is caught and
    reported as OOM.

Writes vim-<date>.md and vim-<date>.json under --out and prints the markdown.
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

import vssm  # noqa: E402,F401  (registers the Vim models)
from vssm import benchmark  # noqa: E402
from vssm.ops import available_backends  # noqa: E402

VIM_TI = "vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2"
VIM_S = "vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2"
PAIRS = [("Vim-Ti", VIM_TI, "DeiT-Ti", "deit_tiny_patch16_224"), ("Vim-S", VIM_S, "DeiT-S", "deit_small_patch16_224")]
MODES = benchmark.MODES  # "fp32", "bf16" (inference), "train_fp16"


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@torch.no_grad()
def _perturb(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        big = name.rsplit(".", 1)[-1] in ("A_log", "A_b_log", "D", "D_b", "bias")
        p.add_((torch.randn(p.shape, generator=g) * (0.3 if big else 0.02)).to(p.device, p.dtype))


def gpu_vs_cpu(device: torch.device, size: int, batch: int) -> dict:
    """(a): the same Vim-S function on the CPU and on ``device`` in fp32."""
    torch.manual_seed(0)
    model = timm.create_model(VIM_S, img_size=size).eval()
    _perturb(model, seed=1)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2))
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            t0 = time.perf_counter()
            cpu = model(x)
            cpu_s = time.perf_counter() - t0
            model.to(device)
            dev = model(x.to(device)).cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    diff = (dev - cpu).abs().max().item()
    scale = cpu.abs().max().item()
    del model
    _free()
    return {"model": VIM_S, "img_size": size, "batch": batch, "max_abs_diff": diff, "max_abs_logit": scale,
            "rel_to_scale": diff / max(scale, 1e-12), "cpu_forward_s": cpu_s, "device": str(device)}


def _build(name: str, size: int, device: torch.device, naive_attention: bool = False) -> torch.nn.Module:
    model = timm.create_model(name, img_size=size).to(device)
    if naive_attention:
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False
    return model


def measure(name: str, mode: str, size: int, batch: int, device: torch.device, warmup: int, iters: int,
            budget_s: float, naive_attention: bool = False) -> dict:
    """Images/s and peak allocated memory of one model in one mode (vssm.benchmark.measure, the anchors'
    protocol); a first short run times one iteration and the measurement runs fewer iterations if the budget
    needs it (at least 3 warm-up and 3 timed)."""
    row = {"model": name, "mode": mode, "img_size": size, "batch": batch, "naive_attention": naive_attention}
    model = None
    try:
        torch.manual_seed(0)
        model = _build(name, size, device, naive_attention)
        row["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
        probe = benchmark.measure(model, mode, batch, size, warmup=2, iters=1, device=str(device))
        t_step = batch / probe["img_s"]
        n_warm = max(0, min(warmup, int(0.4 * budget_s / t_step)) - 3)  # the probe's 3 iterations warm up too
        n_timed = max(3, min(iters, int(0.6 * budget_s / t_step)))
        result = benchmark.measure(model, mode, batch, size, warmup=n_warm, iters=n_timed, device=str(device))
        row.update(img_s=result["img_s"], peak_MB=result["peak_mb"], warmup=n_warm + 3, iters=n_timed)
        row["reduced"] = n_warm + 3 < warmup or n_timed < iters
    except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
        if not _is_oom(err):
            raise
        row.update(oom=True, error=str(err).splitlines()[0][:200])
    finally:
        del model
        _free()
    return row


def _fmt(v, spec: str = ".0f") -> str:
    return "—" if v is None else format(v, spec)


def markdown(result: dict) -> str:
    env, check = result["environment"], result["gpu_vs_cpu"]
    lines = [
        f"# Vim vs DeiT on {env['device_name']} — {result['date']}",
        "",
        f"Command: `{result['command']}`  ",
        f"vssm {env['vssm_commit']}, PyTorch {env['torch']}, timm {env['timm']}, scan backends: {env['scan_backends']}"
        f" (`auto` picks the last registered that accepts the input), Python {env['python']}.",
        "",
        "## (a) Vim-S logits on the GPU vs the CPU (fp32, TF32 off, random perturbed weights)",
        "",
        f"img {check['img_size']}², batch {check['batch']}: max |GPU − CPU| = {check['max_abs_diff']:.3g} "
        f"(max |logit| {check['max_abs_logit']:.3g}, relative {check['rel_to_scale']:.2g}).",
        "",
        "## (b) Throughput and peak memory",
        "",
        "Protocol: shared/anchors/README.md (cudnn.benchmark on, TF32 matmul off; inference under no_grad; training ="
        " forward + cross-entropy + backward under fp16 autocast, no optimizer step; peak = max_memory_allocated over"
        " the timed loop). 'iters' = warm-up + timed iterations actually run; fewer than 50 + 30 means the"
        " measurement was cut to fit the time budget.",
        "",
    ]
    rows = result["rows"]

    def find(model, mode, size, naive=False):
        return next((r for r in rows if r["model"] == model and r["mode"] == mode and r["img_size"] == size
                     and r["naive_attention"] == naive), None)

    for size in result["sizes"]:
        batch = next((r["batch"] for r in rows if r["img_size"] == size), None)
        lines += [f"### {size}² (batch {batch})", "",
                  "| model | mode | img/s | peak MB | iters | vs DeiT: speed | vs DeiT: memory saved |",
                  "|---|---|---|---|---|---|---|"]
        for vim_label, vim, deit_label, deit in PAIRS:
            for mode in MODES:
                entries = [(vim_label, find(vim, mode, size), None), (deit_label, find(deit, mode, size), None)]
                naive = find(deit, mode, size, True)
                if naive is not None:
                    entries.append((deit_label + " (non-fused attention)", naive, None))
                vim_row = entries[0][1]
                for label, r, _ in entries:
                    if r is None:
                        continue
                    if r.get("oom"):
                        lines.append(f"| {label} | {mode} | OOM | OOM | — | — | — |")
                        continue
                    speed = saved = "—"
                    if r is not vim_row and vim_row is not None and not vim_row.get("oom"):
                        speed = f"Vim {vim_row['img_s'] / r['img_s']:.2f}x"
                        if r.get("peak_MB") and vim_row.get("peak_MB"):
                            saved = f"{100 * (1 - vim_row['peak_MB'] / r['peak_MB']):.1f}%"
                    elif r is not vim_row and vim_row is not None and vim_row.get("oom"):
                        speed = saved = "Vim OOM"
                    lines.append(f"| {label} | {mode} | {_fmt(r['img_s'], '.1f')} | {_fmt(r.get('peak_MB'))} | "
                                 f"{r['warmup']}+{r['iters']} | {speed} | {saved} |")
        lines.append("")
    lines += [
        "The Vim paper (Fig. 1, Vim-Ti vs DeiT-Ti, batch inference at 1248²) claims 2.8x the speed and 86.8% less GPU"
        " memory; compare the 1248² `fp32` / `bf16` (inference) rows ('memory saved' = 1 − Vim peak / DeiT peak).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results", help="folder for vim-<date>.md / .json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: 32/64 px, batch 2, 1+2 iterations")
    parser.add_argument("--batch", type=int, default=128, help="batch at the small size")
    parser.add_argument("--big-batch", type=int, default=8, help="batch at the large size (same for Vim and DeiT)")
    parser.add_argument("--sizes", type=int, nargs=2, default=(224, 1248), metavar=("SMALL", "LARGE"))
    parser.add_argument("--budget-s", type=float, default=300.0, help="time budget of part (b) in seconds")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA GPU is available (use --quick --device cpu for a smoke run)")
    if args.quick:
        args.sizes, args.batch, args.big_batch, args.budget_s = (32, 64), 2, 2, 60.0
    warmup, iters = (1, 2) if args.quick else (50, 30)
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

    check = gpu_vs_cpu(device, size=args.sizes[0], batch=2)
    print(f"(a) Vim-S GPU vs CPU: max abs diff {check['max_abs_diff']:.3g} (logit scale {check['max_abs_logit']:.3g})",
          flush=True)

    # (b): every (model, mode, size); the budget is shared out over what is left, Vim getting the larger shares.
    plan = []
    for size, batch in zip(args.sizes, (args.batch, args.big_batch)):
        for _, vim, _, deit in PAIRS:
            for mode in MODES:
                plan.append((vim, mode, size, batch, False, 4.0))
                plan.append((deit, mode, size, batch, False, 1.0))
                if size == args.sizes[1] and mode != "train_fp16":  # the paper's point: batch inference
                    plan.append((deit, mode, size, batch, True, 1.0))
    deadline = time.perf_counter() + args.budget_s
    rows = []
    for i, (name, mode, size, batch, naive, weight) in enumerate(plan):
        left = max(deadline - time.perf_counter(), 1.0)
        share = left * weight / sum(p[5] for p in plan[i:])
        row = measure(name, mode, size, batch, device, warmup, iters, share, naive)
        rows.append(row)
        tag = " (non-fused attention)" if naive else ""
        status = "OOM" if row.get("oom") else f"{row['img_s']:.1f} img/s, peak {_fmt(row.get('peak_MB'))} MB, " \
                                               f"{row['warmup']}+{row['iters']} iters"
        print(f"  {name}{tag} {mode} {size}² b{batch}: {status}", flush=True)

    date = datetime.date.today().isoformat()
    result = {
        "date": date, "command": " ".join([Path(sys.executable).name] + sys.argv), "environment": env,
        "protocol": {"warmup": warmup, "iters": iters, "budget_s": args.budget_s, "cudnn_benchmark": True,
                     "tf32_matmul": False, "quick": args.quick},
        "sizes": list(args.sizes), "gpu_vs_cpu": check, "rows": rows,
        "wall_s": time.perf_counter() - start,
    }
    text = markdown(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"vim-{date}" + ("-quick" if args.quick else "")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(text)
    print(text)
    print(f"wrote {out / stem}.md and .json in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
