"""`vssm benchmark`: throughput and memory of vssm and timm models, side by side in one process.

Protocol (the VMamba paper's analysis tool, plus a bf16 row; ../shared/anchors/README.md): batch 128, 224x224
random normal input, cudnn.benchmark on, TF32 off (PyTorch's default); inference in eval mode under no_grad,
50 warm-up + 30 timed forwards, fp32 (no autocast) and bf16 (autocast); training = forward + cross-entropy +
backward under fp16 autocast, no optimizer step, 50 + 30 iterations; peak memory = max_memory_allocated over the
timed loop (with ``--cuda-graphs``: over warm-up and timed loop, the graphs' capture included). Ratios are to the
first model listed.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import time
from typing import Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

MODES = ("fp32", "bf16", "train_fp16")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def make_step(
    model: torch.nn.Module,
    mode: str,
    batch: int = 128,
    size: int = 224,
    device: str = "cuda",
    num_classes: int = 1000,
) -> Tuple[Callable[[], None], ContextManager]:
    """The protocol's step of one mode on random data, and the grad mode to run it under (sets train / eval)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    dev = torch.device(device)
    x = torch.randn(batch, 3, size, size, device=dev)
    train = mode == "train_fp16"
    model.train(train)
    if train:
        target = torch.randint(0, num_classes, (batch,), device=dev)
        autocast = torch.autocast(dev.type, dtype=torch.float16)
    elif mode == "bf16":
        autocast = torch.autocast(dev.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext()

    def step() -> None:
        with autocast:
            out = model(x)
            if train:
                loss = F.cross_entropy(out.float(), target)
        if train:
            loss.backward()

    return step, contextlib.nullcontext() if train else torch.no_grad()


def measure(
    model: torch.nn.Module,
    mode: str,
    batch: int = 128,
    size: int = 224,
    warmup: int = 50,
    iters: int = 30,
    device: str = "cuda",
    num_classes: int = 1000,
    peak_from_start: bool = False,
) -> Dict[str, Optional[float]]:
    """Images per second and peak memory (MB) of one model in one mode ("fp32", "bf16", "train_fp16").

    The peak is that of the timed loop, or with ``peak_from_start`` of warm-up and timed loop together (CUDA graphs
    allocate their memory once, in the warm-up's capture)."""
    step, grad = make_step(model, mode, batch, size, device, num_classes)
    dev = torch.device(device)
    train = mode == "train_fp16"
    with grad:
        if peak_from_start:
            _sync(dev)
            _peak_reset(dev)
        for _ in range(warmup):
            step()
        _sync(dev)
        if not peak_from_start:
            _peak_reset(dev)
        start = time.perf_counter()
        for _ in range(iters):
            step()
        _sync(dev)
        seconds = time.perf_counter() - start
    if train:
        model.zero_grad(set_to_none=True)
    return {"img_s": iters * batch / seconds, "peak_mb": _peak_mb(dev)}


def build(name: str, compile_model: bool = False, device: str = "cuda", cuda_graphs: bool = False) -> torch.nn.Module:
    import vssm  # noqa: F401  (registers vssm models with timm)
    from vssm import create_model, enable_cuda_graphs

    model = create_model(name).to(device)
    if cuda_graphs:
        enable_cuda_graphs(model)
    return torch.compile(model) if compile_model else model


def run(
    names: Sequence[str],
    modes: Sequence[str] = MODES,
    batch: int = 128,
    size: int = 224,
    warmup: int = 50,
    iters: int = 30,
    compile_model: bool = False,
    device: str = "cuda",
    cuda_graphs: bool = False,
) -> List[dict]:
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = []
    for name in names:
        model = build(name, compile_model, device, cuda_graphs)
        row = {"name": name, "compiled": compile_model, "cuda_graphs": cuda_graphs,
               "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
        for mode in modes:
            try:
                result = measure(model, mode, batch, size, warmup, iters, device, peak_from_start=cuda_graphs)
            except torch.OutOfMemoryError:
                result = {"img_s": None, "peak_mb": None, "error": "out of memory"}
            row.update({f"{mode}_{k}": v for k, v in result.items()})
        rows.append(row)
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def markdown(rows: List[dict], modes: Sequence[str] = MODES) -> str:
    """A table of img/s (and the ratio to the first row) per mode, plus peak memory of the training mode."""
    head = ["model", "params (M)"] + [f"{m} img/s" for m in modes]
    if "train_fp16" in modes:
        head.append("train peak MB")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = rows[0] if rows else {}
    for row in rows:
        label = row["name"] + (" (compiled)" if row.get("compiled") else "")
        cells = [label + (" (CUDA graphs)" if row.get("cuda_graphs") else ""), f"{row['params_M']:.1f}"]
        for m in modes:
            value, ref = row.get(f"{m}_img_s"), first.get(f"{m}_img_s")
            if value is None:
                cells.append(row.get(f"{m}_error", "n/a"))
            else:
                cells.append(f"{value:.0f} ({value / ref:.2f}x)" if ref else f"{value:.0f}")
        if "train_fp16" in modes:
            mem = row.get("train_fp16_peak_mb")
            cells.append(f"{mem:.0f}" if mem is not None else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json_atomic(path: str, obj, indent: int = 1) -> None:
    """JSON written as checkpoints are (temp file, fsync, rename): a crash never leaves half a results file."""
    from .train.checkpointing import atomic_write

    atomic_write(path, json.dumps(obj, indent=indent).encode())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=["vmamba_tiny_s1l8", "swin_tiny_patch4_window7_224"],
                        help="vssm or timm model names; ratios are to the first")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--compile", action="store_true", help="also measure each model under torch.compile")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="also measure each model's training step with vssm.enable_cuda_graphs (vssm and timm "
                             "models alike; inference calls are not graphed, so only train_fp16 is measured)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write the rows as JSON to this file")


def main(args: argparse.Namespace) -> int:
    graph_modes = [m for m in args.modes if m == "train_fp16"]
    if args.cuda_graphs and args.device != "cuda":
        raise SystemExit("--cuda-graphs needs --device cuda")
    if args.cuda_graphs and not graph_modes:
        raise SystemExit("--cuda-graphs measures the training step: add train_fp16 to --modes")
    rows = run(args.models, args.modes, args.batch, args.size, args.warmup, args.iters, False, args.device)
    if args.compile:
        rows += run(args.models, args.modes, args.batch, args.size, args.warmup, args.iters, True, args.device)
    if args.cuda_graphs:
        rows += run(args.models, graph_modes, args.batch, args.size, args.warmup, args.iters, False, args.device,
                    cuda_graphs=True)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device: {device_name}, torch {torch.__version__}, batch {args.batch}, {args.size}x{args.size}")
    print(markdown(rows, args.modes))
    if args.json:
        write_json_atomic(args.json, {"device": device_name, "torch": torch.__version__, "rows": rows})
    return 0
