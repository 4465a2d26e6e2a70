"""LayerNorm over the last (contiguous) dim; in eager inference with a Triton kernel: many rows per program, fp32
statistics, output written in the dtype the next op consumes.

PyTorch's kernel handles the small channel counts of VMamba (96..768) one row per block, and under autocast
writes fp32 that the following 1x1 conv reads back only to cast it to bf16 / fp16. Here a norm that feeds a
projection (``autocast_output=True``) writes the autocast dtype directly; the numbers equal autocast's fp32 norm
followed by the projection's own cast. When autograd records, or under torch.compile, PyTorch's op runs instead:
its C++ autograd costs the host far less than a Python custom op's, and eager training is bound by the host
(H100, same-process A/B: vmamba_tiny_s1l8 fp16 training 1233 -> 1417-1428 img/s; benchmarks/results/
gpu-2026-11-22.md, Update 5).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .triton_ops import HAS_TRITON, needs_dispatch, triton_usable

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["M"])
    def _ln_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, C: tl.constexpr, eps,
                       BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
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


def _block_m(channels: int) -> int:
    return max(1, min(64, 4096 // triton.next_power_of_2(channels)))


def _ln_forward(x: Tensor, weight: Tensor, bias: Tensor, eps: float, out_dtype: torch.dtype) -> Tensor:
    C = x.shape[-1]
    M = x.numel() // C
    y = torch.empty(x.shape, device=x.device, dtype=out_dtype)
    block_m = _block_m(C)
    _ln_fwd_kernel[(triton.cdiv(M, block_m),)](x, weight, bias, y, M, C, eps,
                                               BLOCK_M=block_m, BLOCK_C=triton.next_power_of_2(C))
    return y


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
    use_kernel = (triton_usable(x) and x.is_cuda and x.is_contiguous() and weight is not None
                  and not needs_dispatch(x, weight, bias))
    if not use_kernel:
        y = F.layer_norm(x, x.shape[-1:], weight, bias, eps)
        return y.to(torch.get_autocast_dtype(x.device.type)) if autocast and autocast_output else y
    if autocast:
        out_dtype = torch.get_autocast_dtype(x.device.type) if autocast_output else torch.float32
    else:
        out_dtype = x.dtype
    return _ln_forward(x, weight, bias, float(eps), out_dtype)
