"""FLOP formulas of vssm's custom ops for PyTorch's own counter, ``torch.utils.flop_counter.FlopCounterMode``.

A custom op is opaque to the counter: without a formula it counts zero. Importing this module (``import vssm`` does)
registers the formula of ``torch.ops.vssm.selective_scan``, so ``FlopCounterMode`` counts the scan wherever it runs.

Conventions. ``FlopCounterMode`` counts one multiply-add as **2** FLOPs (``mm`` of (m, k) x (k, n) = 2·m·k·n). The
official VMamba numbers come from fvcore, which counts one multiply-add as **1** "flop" (i.e. MACs). The selective
scan formula the official code used (Albert Gu, state-spaces/mamba issue #110, spec/vmamba.md §6.1) is written in
fvcore's unit::

    scan MACs = 9 · batch · L · (K·D) · N   (+ batch · L · (K·D) for the D skip)

The formulas registered here return FLOPs in the counter's own unit, i.e. 2 × that, so they add up consistently
with its matmul / conv counts; :mod:`vssm.analysis.flops` divides the total by 2 to report the official convention.

The fused SS2D op ``torch.ops.vssm.cross_selective_scan`` (cross-scan + dt projection + scan + merge, the Triton
path) is registered too, counting what the unfused path counts (the dt projection as its matmul would). Any other
fused op registers the same formula with :func:`register_scan_flops`, giving a function that reads the scan's
sizes (:class:`ScanSize`) from the op's arguments.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula

__all__ = [
    "ScanSize",
    "selective_scan_macs",
    "register_scan_flops",
    "register_op_flops",
    "FLOPS_PER_MAC",
]

FLOPS_PER_MAC = 2  # torch.utils.flop_counter's unit; fvcore (the official tool) counts 1


class ScanSize(NamedTuple):
    """Sizes of one selective scan: ``channels`` = K·D (all directions), ``d_state`` = N."""

    batch: int
    channels: int
    length: int
    d_state: int
    with_d: bool = True  # the D·u skip term
    with_z: bool = False  # a fused z gate (mamba's selective_scan_fn with z)
    dt_rank: int = 0  # a dt projection (R -> D per channel) fused into the kernel: B·L·(K·D)·R more MACs


def selective_scan_macs(size: ScanSize) -> int:
    """Multiply-accumulates of one scan in the official convention (fvcore, mamba issue #110):
    9·B·L·(K·D)·N, plus B·L·(K·D) for the D skip and again for a fused z gate, plus B·L·(K·D)·R for a fused dt
    projection (which the unfused code runs, and fvcore counts, as a separate matmul / grouped conv)."""
    b, c, length, n = size.batch, size.channels, size.length, size.d_state
    macs = 9 * b * length * c * n
    if size.with_d:
        macs += b * c * length
    if size.with_z:
        macs += b * c * length
    macs += b * c * length * size.dt_rank
    return macs


def register_op_flops(op: Any, formula: Callable[..., int], get_raw: bool = False, replace: bool = False) -> bool:
    """Register ``formula`` (returning FLOPs in FlopCounterMode's unit, 2 per multiply-add) for ``op``.

    ``op`` is an ``OpOverloadPacket`` (``torch.ops.ns.name``) or a Triton ``JITFunction``. The formula receives the
    op's arguments with tensors replaced by their shapes (``get_raw=True``: the tensors themselves) and an
    ``out_shape`` keyword. Registering an op twice is a no-op unless ``replace``. Returns whether it registered.
    """
    if op in flop_registry:
        if not replace:
            return False
        del flop_registry[op]
    register_flop_formula(op, get_raw=get_raw)(formula)
    return True


def register_scan_flops(op: Any, sizes: Callable[..., ScanSize], replace: bool = False) -> bool:
    """Count ``op`` as a selective scan: ``sizes(*arg_shapes, **kwargs)`` reads a :class:`ScanSize` from the op's
    arguments (tensors given as shapes). Use it for every kernel that computes a selective scan, so the counts of
    all backends agree."""

    def formula(*args, out_shape=None, **kwargs) -> int:
        return FLOPS_PER_MAC * selective_scan_macs(sizes(*args, **kwargs))

    return register_op_flops(op, formula, replace=replace)


def _vssm_scan_sizes(
    u: torch.Size,
    delta: torch.Size,
    A: torch.Size,
    B: torch.Size,
    C: torch.Size,
    D: Optional[torch.Size] = None,
    *rest,
    **kwargs,
) -> ScanSize:
    batch, channels, length = u
    return ScanSize(batch, channels, length, A[1], with_d=D is not None)


# torch.ops.vssm.selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype); the import makes sure
# the op is defined.
from . import selective_scan as _selective_scan  # noqa: E402,F401

def _cross_scan_sizes(u, x_dbl, dt_weight, dt_bias, A, D, order, *rest, **kwargs) -> ScanSize:
    """torch.ops.vssm.cross_selective_scan(u (B, E, H, W), x_dbl, dt_weight (K, E, R), dt_bias, A (K*E, N), D, order):
    the SS2D core fused with the cross-scan, the dt projection and the merge; counted as the unfused path is."""
    batch, _, height, width = u
    k, e, r = dt_weight
    return ScanSize(batch, k * e, height * width, A[1], with_d=D is not None, dt_rank=r)


register_scan_flops(torch.ops.vssm.selective_scan, _vssm_scan_sizes)
try:  # the fused SS2D op (defined with or without triton installed)
    from . import triton_ops as _triton_ops  # noqa: F401
except ImportError:  # pragma: no cover - an install without the Triton launchers
    _triton_ops = None
if hasattr(torch.ops.vssm, "cross_selective_scan"):
    register_scan_flops(torch.ops.vssm.cross_selective_scan, _cross_scan_sizes)
