"""Parameters and FLOPs with PyTorch's own counter (``torch.utils.flop_counter.FlopCounterMode``), in the official
VMamba convention; the ``vssm flops`` command.

How the numbers are made (spec/vmamba.md §6.1):

- **Unit.** The official numbers come from fvcore, which counts one multiply-add as one "flop": they are GMACs.
  ``FlopCounterMode`` counts 2 FLOPs per multiply-add. vssm reports the official convention, **GFLOPs = GMACs =
  FlopCounterMode's count / 2**, so its numbers compare directly with the papers' tables (Swin, ConvNeXt, VMamba and
  most vision papers use the same convention).
- **What is counted**, as fvcore counted it: matmuls / linears / einsums (an einsum as the product of all its
  index sizes, also when PyTorch lowers it to an element-wise product), convolutions (the 1x1 "Linear2d"
  projections of the channel-first layout are convolutions, counted the same), the selective scan with the formula
  of mamba issue #110, ``9·B·L·(K·D)·N + B·L·(K·D)`` (registered for ``torch.ops.vssm.selective_scan`` in
  :mod:`vssm.ops.flops`), the norms (LayerNorm / GroupNorm / InstanceNorm 5 per element with an affine, 4 without;
  BatchNorm in eval 2 / 1), adaptive average pooling (1 per input element) and bilinear / nearest upsampling
  (4 / 1 per output element). Attention (``scaled_dot_product_attention``) is counted by ``FlopCounterMode``'s own
  formula (2 matmuls); fvcore would have missed a fused attention call.
- **What is not counted**, as in fvcore: element-wise ops (SiLU, GELU, softplus, exp, mul, add), softmax, the scan
  permutations (cross-scan / merge), reshapes.

The model is built on the meta device and the forward runs on meta or fake tensors (``FakeTensorMode``): no memory
and no arithmetic, so counting the largest model takes a second or two.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from math import prod
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from ..ops import flops as _scan_flops  # noqa: F401  (registers the scan's formula)
from ..ops.flops import FLOPS_PER_MAC
from .common import add_model_kwargs_argument, create_analysis_model, model_input_size, parse_size

__all__ = ["FlopCount", "count_flops", "count_params", "model_flops", "plot_flops", "OFFICIAL", "add_arguments", "main"]

# The official numbers (spec/vmamba.md §0; analyze/tp.py of the official repo; tests/fixtures/keys/*.json):
# name -> (parameters, GFLOPs at 1x3x224x224 with the head, fvcore convention).
OFFICIAL: Dict[str, Tuple[int, float]] = {
    "vanilla_vmamba_tiny": (22_893_448, 5.62689504),
    "vanilla_vmamba_small": (44_417_416, 11.231522784),
    "vanilla_vmamba_base": (76_254_056, 18.020115136),
    "vmamba_tiny_s2l5": (30_705_832, 4.85774208),
    "vmamba_small_s2l15": (50_147_752, 8.71577472),
    "vmamba_base_s2l15": (88_557_800, 15.358944256),
    "vmamba_tiny_s1l8": (30_249_064, 4.905609984),
    "vmamba_small_s1l20": (49_012_840, 8.612211456),
    "vmamba_base_s1l20": (86_614_504, 15.220859904),
}


@dataclass
class FlopCount:
    """Result of :func:`count_flops`. ``macs`` per op in the official convention (1 multiply-add = 1)."""

    params: int
    input_size: Tuple[int, int, int]
    batch_size: int = 1
    macs_by_op: Dict[str, int] = field(default_factory=dict)

    @property
    def macs(self) -> int:
        return sum(self.macs_by_op.values())

    @property
    def gflops(self) -> float:
        """GFLOPs in the official (fvcore) convention: 1e9 multiply-adds."""
        return self.macs / 1e9

    @property
    def torch_flops(self) -> int:
        """FLOPs in FlopCounterMode's convention (1 multiply-add = 2)."""
        return FLOPS_PER_MAC * self.macs


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters once), as the official tools count them."""
    return sum(p.numel() for p in model.parameters())


# --- the ops fvcore counted that FlopCounterMode does not (its handles for aten::layer_norm & co) ----------------


def _norm_macs(x, weight) -> int:
    return prod(x.shape) * (5 if weight is not None else 4)


def _arg(args, kwargs, index: int, name: str, default=None):
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _layer_norm(args, kwargs, out) -> int:
    return _norm_macs(args[0], _arg(args, kwargs, 2, "weight"))


def _group_norm(args, kwargs, out) -> int:
    return _norm_macs(args[0], _arg(args, kwargs, 2, "weight"))


def _instance_norm(args, kwargs, out) -> int:
    return _norm_macs(args[0], _arg(args, kwargs, 3, "weight"))


def _batch_norm(args, kwargs, out) -> int:
    weight = _arg(args, kwargs, 3, "weight")
    if _arg(args, kwargs, 5, "training", False):
        return _norm_macs(args[0], weight)
    return prod(args[0].shape) * (2 if weight is not None else 1)


def _adaptive_avg_pool(args, kwargs, out) -> int:
    return prod(args[0].shape)


def _interpolate(args, kwargs, out) -> int:
    mode = _arg(args, kwargs, 3, "mode", "nearest")
    per_output = {"nearest": 1, "bilinear": 4}.get(mode, 0)  # fvcore's handles; other modes uncounted
    return per_output * prod(out.shape) if isinstance(out, torch.Tensor) else 0


_FUNCTION_HANDLES = {
    F.layer_norm: ("layer_norm", _layer_norm),
    torch.layer_norm: ("layer_norm", _layer_norm),
    F.group_norm: ("group_norm", _group_norm),
    torch.group_norm: ("group_norm", _group_norm),
    F.instance_norm: ("instance_norm", _instance_norm),
    F.batch_norm: ("batch_norm", _batch_norm),
    torch.batch_norm: ("batch_norm", _batch_norm),
    F.adaptive_avg_pool1d: ("adaptive_avg_pool", _adaptive_avg_pool),
    F.adaptive_avg_pool2d: ("adaptive_avg_pool", _adaptive_avg_pool),
    F.adaptive_avg_pool3d: ("adaptive_avg_pool", _adaptive_avg_pool),
    F.interpolate: ("upsample", _interpolate),
}


def _einsum_macs(equation: str, operands) -> Optional[int]:
    """fvcore's count of a two-operand einsum: the product of the sizes of all its indices (one multiply-add per
    term); None for forms it handled differently (one operand, ellipsis)."""
    if len(operands) != 2 or "..." in equation or "->" not in equation:
        return None
    inputs = equation.replace(" ", "").split("->")[0].split(",")
    sizes: Dict[str, int] = {}
    for letters, operand in zip(inputs, operands):
        if len(letters) != operand.dim():
            return None
        sizes.update(zip(letters, operand.shape))
    return prod(sizes.values())


class _FvcoreExtras(TorchFunctionMode):
    """Counts, at the Python-function level (what fvcore's JIT trace saw), the norms, adaptive average pooling and
    upsampling, in MACs. The mode is disabled while a handled function runs, so nothing is counted twice.

    It also makes every ``torch.einsum`` count as fvcore counted it (all index sizes multiplied): PyTorch lowers an
    einsum whose contracted index has size 1 to an element-wise product, which ``FlopCounterMode`` does not see.
    """

    def __init__(self, counter: Optional[FlopCounterMode] = None):
        super().__init__()
        self.macs: Dict[str, int] = defaultdict(int)
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.einsum and self.counter is not None and args and isinstance(args[0], str):
            operands = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
            before = self.counter.get_total_flops()
            out = func(*args, **kwargs)
            expected = _einsum_macs(args[0], operands)
            if expected is not None:
                seen = (self.counter.get_total_flops() - before) // FLOPS_PER_MAC
                self.macs["linear/matmul"] += expected - seen
            return out
        out = func(*args, **kwargs)
        handle = _FUNCTION_HANDLES.get(func)
        if handle is not None:
            name, fn = handle
            self.macs[name] += int(fn(args, kwargs, out))
        return out


def _op_name(op) -> str:
    name = str(op)
    short = {
        "aten.convolution": "conv",
        "aten.mm": "linear/matmul",
        "aten.addmm": "linear/matmul",
        "aten.bmm": "linear/matmul",
        "aten.baddbmm": "linear/matmul",
        "vssm.selective_scan": "selective_scan",
        "vssm.cross_selective_scan": "selective_scan (fused, incl. dt proj)",
    }
    if "attention" in name:
        return "attention"
    return short.get(name, name)


def count_flops(
    model: nn.Module,
    input_size: Optional[Sequence[int]] = None,
    batch_size: int = 1,
    fake: bool = True,
) -> FlopCount:
    """Parameters and FLOPs (official convention) of one forward of ``model`` on a (batch, C, H, W) input.

    ``input_size`` (C, H, W) defaults to the model's pretrained_cfg. A model on the meta device runs on meta tensors
    (shapes only); if its forward needs a real device type, it gets empty CPU storage (never initialised or read)
    and runs on fake tensors (``FakeTensorMode``, shapes only too). A model with real weights runs on fake tensors
    (``fake=True``) or for real. Forwards whose control flow depends on tensor values fall back to a real forward.
    """
    input_size = tuple(input_size) if input_size is not None else model_input_size(model)
    if len(input_size) == 2:
        input_size = (model_input_size(model)[0],) + tuple(input_size)
    was_training = model.training
    model.eval()
    params = count_params(model)
    counts = None
    on_meta = any(p.is_meta for p in model.parameters()) or any(b.is_meta for b in model.buffers())
    if on_meta:
        # fastest: shape-only meta kernels; a forward that needs a real device type fails here and goes on below
        try:
            counts = _run_counted(model, torch.empty((batch_size,) + tuple(input_size), device="meta"))
        except Exception:  # noqa: BLE001
            counts = None
        if counts is None:
            model = model.to_empty(device="cpu")  # storage only: never initialised, never read
            fake = True
    if counts is None and fake:
        from torch._subclasses.fake_tensor import FakeTensorMode

        try:
            with FakeTensorMode(allow_non_fake_inputs=True):
                x = torch.empty((batch_size,) + tuple(input_size))
                counts = _run_counted(model, x)
        except Exception as err:  # noqa: BLE001 - data-dependent forward: count on real tensors instead
            if not _is_data_dependent(err):
                raise
    if counts is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        counts = _run_counted(model, torch.zeros((batch_size,) + tuple(input_size), device=device))
    model.train(was_training)
    return FlopCount(params=params, input_size=tuple(input_size), batch_size=batch_size, macs_by_op=counts)


def _is_data_dependent(err: Exception) -> bool:
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

    return isinstance(err, (DataDependentOutputException, DynamicOutputShapeException)) or "data-dependent" in str(err)


def _cpu_attention_mapping() -> dict:
    """FlopCounterMode has formulas for the CUDA attention kernels but none for the CPU one, so a CPU (or fake CPU)
    forward would count no attention: give it the same formula."""
    from torch.utils import flop_counter

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    formula = getattr(flop_counter, "sdpa_flop", None)
    formula = getattr(formula, "__wrapped__", formula)  # registered formulas are already shape-wrapped
    return {op: formula} if op is not None and formula is not None and op not in flop_counter.flop_registry else {}


def _run_counted(model: nn.Module, x: torch.Tensor) -> Dict[str, int]:
    counter = FlopCounterMode(display=False, custom_mapping=_cpu_attention_mapping())
    extras = _FvcoreExtras(counter)
    with torch.no_grad(), counter, extras:
        model(x)
    macs: Dict[str, int] = defaultdict(int)
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        macs[_op_name(op)] += flops // FLOPS_PER_MAC
    for name, value in extras.macs.items():
        macs[name] += value
    return dict(macs)


def model_flops(
    name: str,
    size: Optional[Tuple[int, int]] = None,
    batch_size: int = 1,
    in_chans: Optional[int] = None,
    **kwargs,
) -> FlopCount:
    """:func:`count_flops` of a registered (vssm or timm) model built on the meta device. ``size`` (H, W) defaults
    to the model's own input size; timm models with a fixed size (ViT, Swin) are built for ``size``."""
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    model = create_analysis_model(name, img_size=size, meta=True, **kwargs)
    channels, height, width = model_input_size(model)
    if size is not None:
        height, width = size
    return count_flops(model, (channels, height, width), batch_size=batch_size)


# --- command line ------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="vmamba_tiny_s1l8", help="a vssm or timm model name")
    add_model_kwargs_argument(parser)
    parser.add_argument("--size", type=int, nargs="+", metavar="S", help="input size: S or H W (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=None, help="head size (default: the model's, 1000)")
    parser.add_argument("--table", action="store_true", help="all registered vssm models (plus --peers)")
    parser.add_argument("--peers", nargs="*", default=[], help="timm models added to --table")
    parser.add_argument("--json", action="store_true", help='print {"model", "params", "gflops", "input"}')
    parser.add_argument("--breakdown", action="store_true", help="also print the GFLOPs per kind of op")
    parser.add_argument("--out", default=None, metavar="PNG",
                        help="also draw the GFLOPs (stacked by kind of op) and parameters of the models as a PNG")
    parser.epilog = (
        "GFLOPs follow the official convention (fvcore's): one multiply-add counts as one FLOP, i.e. GFLOPs = GMACs "
        "= half of torch.utils.flop_counter's count."
    )


def _row(name: str, result: FlopCount) -> List[str]:
    official = OFFICIAL.get(name) if result.input_size[1:] == (224, 224) and result.batch_size == 1 else None
    ref_params = f"{official[0]:,}" if official else "-"
    ref_flops = f"{official[1]:.3f}" if official else "-"
    diff = f"{100 * (result.gflops / official[1] - 1):+.2f}%" if official else "-"
    return [name, f"{result.params:,}", f"{result.gflops:.3f}", ref_params, ref_flops, diff]


def _print_table(rows: List[List[str]], header: List[str]) -> None:
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


def plot_flops(results: Sequence[Tuple[str, FlopCount]], path: str) -> str:
    """Horizontal bars: GFLOPs per model stacked by kind of op, and parameters (millions)."""
    from .common import pyplot, save_figure

    plt = pyplot()
    names = [n for n, _ in results]
    kinds = sorted({k for _, r in results for k in r.macs_by_op}, key=lambda k: -sum(r.macs_by_op.get(k, 0) for _, r in results))
    height = 0.6 + 0.32 * len(results)
    fig, (ax_f, ax_p) = plt.subplots(1, 2, figsize=(11, height + 1.2), sharey=True,
                                     gridspec_kw={"width_ratios": [3, 1]})
    left = [0.0] * len(results)
    for kind in kinds:
        values = [r.macs_by_op.get(kind, 0) / 1e9 for _, r in results]
        ax_f.barh(names, values, left=left, label=kind)
        left = [a + b for a, b in zip(left, values)]
    for y, total in enumerate(left):
        ax_f.text(total, y, f" {total:.2f}", va="center", fontsize=7)
    c, h, w = results[0][1].input_size
    ax_f.set_xlabel(f"GFLOPs at {c}x{h}x{w} (1 multiply-add = 1 FLOP, the official convention)")
    ax_f.legend(fontsize=7, loc="lower right")
    ax_f.invert_yaxis()
    ax_f.tick_params(axis="y", labelsize=7)
    ax_p.barh(names, [r.params / 1e6 for _, r in results], color="gray")
    ax_p.set_xlabel("parameters (M)")
    return save_figure(fig, path)


def main(args: argparse.Namespace) -> int:
    from .._registry import list_models

    size = parse_size(args.size)
    extra = dict(args.model_kwargs)
    if args.num_classes is not None:
        extra["num_classes"] = args.num_classes
    names = (list_models() + list(args.peers)) if args.table else [args.model]
    results = []
    for name in names:
        try:
            results.append((name, model_flops(name, size, batch_size=args.batch_size, **extra)))
        except ValueError as err:
            print(f"vssm flops: {err}", file=sys.stderr)
            return 2
    if args.out:
        plot_flops(results, args.out)
    if args.json:
        payload = [
            {"model": n, "params": r.params, "gflops": round(r.gflops, 6), "input": list(r.input_size)}
            for n, r in results
        ]
        print(json.dumps(payload if args.table else payload[0]))
        return 0
    header = ["model", "params", "GFLOPs", "official params", "official GFLOPs", "diff"]
    _print_table([_row(n, r) for n, r in results], header)
    c, h, w = results[0][1].input_size
    print(f"\ninput {args.batch_size}x{c}x{h}x{w}; GFLOPs = 1e9 multiply-adds (fvcore's convention, as the official "
          f"tables); torch.utils.flop_counter counts twice that.")
    if args.breakdown:
        for name, r in results:
            parts = ", ".join(f"{op} {macs / 1e9:.4f}" for op, macs in sorted(r.macs_by_op.items(), key=lambda kv: -kv[1]))
            print(f"{name}: {parts}")
    if args.out:
        print(f"wrote {args.out}")
    return 0
