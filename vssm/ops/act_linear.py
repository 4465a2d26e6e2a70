"""``linear(act(h))`` that keeps only h for the backward: the second half of an MLP with half its saved memory.

Autograd keeps both the activation's input h (for the activation's backward) and its output (for the weight
gradient of the projection after it): two (..., hidden) tensors per MLP, each 4x the block width in VMamba, the
largest activations a VSS block saves. Here the backward recomputes act(h) from h, one pointwise pass, so only h is
kept. The GEMMs and casts are autocast's: the projection runs in the autocast dtype (or h's dtype without autocast)
and its gradients come back in the parameters' dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["act_linear", "recomputable_act"]


def recomputable_act(act: nn.Module) -> Optional[str]:
    """The name under which :func:`act_linear` recomputes this activation module, or None if it cannot."""
    if type(act) is nn.GELU:
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    if type(act) is nn.SiLU:
        return "silu"
    return None  # ReLU's autograd keeps only its output, which the projection keeps too: nothing to save


def _act(name: str, h: Tensor) -> Tensor:
    if name == "gelu":
        return F.gelu(h)
    if name == "gelu_tanh":
        return F.gelu(h, approximate="tanh")
    return F.silu(h)


def _act_backward(name: str, grad: Tensor, h: Tensor) -> Tensor:
    if name in ("gelu", "gelu_tanh"):
        return torch.ops.aten.gelu_backward(grad, h, approximate="tanh" if name == "gelu_tanh" else "none")
    return torch.ops.aten.silu_backward(grad, h)


class _ActLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Optional[Tensor], name: str) -> Tensor:
        out = F.linear(_act(name, h), weight, bias)  # under the caller's autocast, like the plain composition
        ctx.save_for_backward(h, weight)
        ctx.name = name
        ctx.compute_dtype = out.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        h, weight = ctx.saved_tensors
        dtype = ctx.compute_dtype
        grad_out = grad_out.to(dtype)
        grad_h = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_h = _act_backward(ctx.name, (grad_out @ weight.to(dtype)).to(h.dtype), h)
        if ctx.needs_input_grad[1]:
            g = _act(ctx.name, h).to(dtype)
            grad_w = (grad_out.reshape(-1, grad_out.shape[-1]).t() @ g.reshape(-1, g.shape[-1])).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0).to(ctx.bias_dtype)
        return grad_h, grad_w, grad_b, None


def act_linear(h: Tensor, act: nn.Module, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``F.linear(act(h), weight, bias)`` over the last dim of h (..., hidden) -> (..., out).

    When autograd records the call and ``act`` is GELU or SiLU, the backward recomputes act(h) instead of
    keeping it; otherwise this is the plain composition.
    """
    name = recomputable_act(act)
    if name is None or not (torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)):
        return F.linear(act(h), weight, bias)
    return _ActLinear.apply(h, weight, bias, name)
