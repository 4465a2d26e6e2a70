"""LayerNorm over the last (contiguous) dim with Triton kernels in eager mode: many rows per program, fp32
statistics, output written in the dtype the next op consumes.

PyTorch's kernel handles the small channel counts of VMamba (96..768) one row per block, and under autocast
writes fp32 that the following 1x1 conv reads back only to cast it to bf16 / fp16. Here a norm that feeds a
projection (``autocast_output=True``) writes the autocast dtype directly; the numbers equal autocast's fp32 norm
followed by the projection's own cast. When autograd records, a plain ``autograd.Function`` runs the forward and
backward kernels on large inputs (a torch.library custom op's Python autograd cost ~200 us of host time per call
and made eager training host-bound: benchmarks/results/gpu-2026-11-22.md, Updates 5 and 6); below
``GRAD_KERNEL_MIN_ELEMENTS`` PyTorch's op with its C++ autograd runs instead, because there the kernels' GPU saving
is smaller than the Python launch cost they add. Under torch.compile, dispatch modes or on meta tensors PyTorch's
op runs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from typing import Tuple

from .triton_ops import HAS_TRITON, in_traced_context, triton_usable

# Under autograd the kernels run from this many elements on: at batch 128, vmamba_tiny_s1l8's stage-1 and stage-2
# norms (38.5M, 19.3M elements), not stages 3 and 4 (9.6M, 4.8M), which make 3/4 of the calls but less than half
# of the elements (A/B: benchmarks/eager_ab_gpu.py, variants ln_all / ln_native).
GRAD_KERNEL_MIN_ELEMENTS = 1 << 24

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .triton_launch import launch

    @triton.jit(do_not_specialize=["M"])
    def _ln_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, M, C: tl.constexpr, eps,
                       BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, STATS: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_C)
        mask = (rows < M)[:, None] & (cols < C)[None, :]
        offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / C
        xc = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / C + eps)
        w = tl.load(w_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
        y = xc * rstd[:, None] * w[None, :] + b[None, :]
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
        if STATS:  # for the backward
            tl.store(mean_ptr + rows, mean, mask=rows < M)
            tl.store(rstd_ptr + rows, rstd, mask=rows < M)

    @triton.jit(do_not_specialize=["M"])
    def _ln_bwd_kernel(dy_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_ptr, db_ptr, M, C: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_C)
        mask = (rows < M)[:, None] & (cols < C)[None, :]
        offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=rows < M, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=rows < M, other=0.0)
        w = tl.load(w_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        wdy = dy * w[None, :]
        c1 = tl.sum(xhat * wdy, axis=1) / C
        c2 = tl.sum(wdy, axis=1) / C
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        # per-program partial sums of dweight / dbias, summed over programs by the caller
        tl.store(dw_ptr + pid * C + cols, tl.sum(dy * xhat, axis=0), mask=cols < C)
        tl.store(db_ptr + pid * C + cols, tl.sum(dy, axis=0), mask=cols < C)


def _block_m(channels: int) -> int:
    return max(1, min(64, 4096 // triton.next_power_of_2(channels)))


def _ln_forward(x: Tensor, weight: Tensor, bias: Tensor, eps: float, out_dtype: torch.dtype,
                stats: bool = False) -> Tuple[Tensor, ...]:
    """(y,) or, with ``stats``, (y, mean, rstd) for the backward; x contiguous (M, C) in effect."""
    C = x.shape[-1]
    M = x.numel() // C
    y = torch.empty(x.shape, device=x.device, dtype=out_dtype)
    if stats:
        mean = torch.empty(M, device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
    else:  # never written: no allocations on the inference path
        mean = rstd = weight
    block_m = _block_m(C)
    launch(_ln_fwd_kernel, (triton.cdiv(M, block_m),), x, weight, bias, y, mean, rstd, M, C, eps, BLOCK_M=block_m,
           BLOCK_C=triton.next_power_of_2(C), STATS=stats)
    return (y, mean, rstd) if stats else (y,)


def _ln_backward(dy: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    C = x.shape[-1]
    M = x.numel() // C
    block_m = _block_m(C)
    programs = triton.cdiv(M, block_m)
    dx = torch.empty_like(x)
    dw = torch.empty((programs, C), device=x.device, dtype=torch.float32)
    db = torch.empty_like(dw)
    launch(_ln_bwd_kernel, (programs,), dy, x, weight, mean, rstd, dx, dw, db, M, C,
           BLOCK_M=block_m, BLOCK_C=triton.next_power_of_2(C))
    return dx, dw.sum(0).to(weight.dtype), db.sum(0).to(weight.dtype)


class _LayerNormFn(torch.autograd.Function):
    """The kernels under eager autograd; not traceable (torch.compile uses PyTorch's op instead)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float, out_dtype: torch.dtype) -> Tensor:
        y, mean, rstd = _ln_forward(x, weight, bias, eps, out_dtype, stats=True)
        ctx.save_for_backward(x, weight, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = _ln_backward(dy.contiguous(), x, weight, mean, rstd)
        return dx, dw, db, None, None


def autocast_enabled(device: torch.device) -> bool:
    """torch.is_autocast_enabled for a device, False for devices autocast does not know (meta: FLOP counting)."""
    return device.type in ("cuda", "cpu", "xpu", "mps") and torch.is_autocast_enabled(device.type)


def layer_norm_last_dim(
    x: Tensor, weight: Tensor, bias: Tensor, eps: float, autocast_output: bool = False
) -> Tensor:
    """LayerNorm over the last dim of ``x`` (any shape, last dim contiguous).

    ``autocast_output``: under autocast, return the autocast dtype (for a norm whose only consumer is a projection
    that would cast anyway); otherwise fp32 under autocast like PyTorch, or x's dtype without autocast.
    """
    autocast = autocast_enabled(x.device)
    use_kernel = (triton_usable(x) and x.is_cuda and x.is_contiguous() and weight is not None and bias is not None
                  and not in_traced_context(x, weight, bias))
    if not use_kernel:
        y = F.layer_norm(x, x.shape[-1:], weight, bias, eps)
        return y.to(torch.get_autocast_dtype(x.device.type)) if autocast and autocast_output else y
    if autocast:
        out_dtype = torch.get_autocast_dtype(x.device.type) if autocast_output else torch.float32
    else:
        out_dtype = x.dtype
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad)):
        return _ln_forward(x, weight, bias, float(eps), out_dtype)[0]
    if x.numel() >= GRAD_KERNEL_MIN_ELEMENTS:
        return _LayerNormFn.apply(x, weight, bias, float(eps), out_dtype)
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps).to(out_dtype)
