"""Vim's building blocks (spec/vim.md §3-§6): the bidirectional Mamba mixer, the causal depthwise conv1d, RMSNorm
with the residual stream in fp32, and the "Add -> Norm -> Mixer" block.

The mixer computes the function of the official *fast* path (``mamba_inner_fn_no_out_proj`` twice, spec §4):

    xz = in_proj(h);  x, z = split(xz)                                  shared by both directions
    forward:   o_f = scan(SiLU(conv1d(x)),         x_proj,   dt_proj,   A,   D)   * SiLU(z)
    backward:  o_b = flip(scan(SiLU(conv1d_b(flip(x))), x_proj_b, dt_proj_b, A_b, D_b)) * SiLU(z)
    out = out_proj((o_f + o_b) / 2)                                     ("div2"; the sum without if_divide_out)

Both directions run in one selective-scan call with K = 2 groups: the forward sequence and the flipped one are
stacked along the channels, and the per-direction weights are stacked to match. The official slow path
(``use_fast_path=False``) is forward-only, a different function; it is not reproduced.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor

from ..ops.selective_scan import selective_scan

__all__ = ["RMSNorm", "BiMamba", "VimBlock", "add_norm", "causal_conv1d"]


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32, returned in x's dtype; no bias (the official
    ``mamba_ssm`` RMSNorm registers none)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def add_norm(
    hidden: Tensor, residual: Optional[Tensor], norm: nn.Module, residual_in_fp32: bool = True
) -> Tuple[Tensor, Tensor]:
    """The math of the official fused add + norm: residual' = hidden + residual (in fp32), normalised in fp32.

    Returns (norm(residual') in hidden's dtype, residual' kept in fp32 or in hidden's dtype). ``residual=None``
    (the first block) starts the stream from ``hidden`` itself.
    """
    total = hidden.float() if residual is None else hidden.float() + residual.float()
    normed = norm(total).to(hidden.dtype)
    return normed, total if residual_in_fp32 else total.to(hidden.dtype)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """Depthwise causal conv: out[c, t] = bias[c] + sum_k weight[c, 0, k] * x[c, t - K + 1 + k] (zeros before t=0).

    x (B, C, L), weight (C, 1, K); equals ``causal_conv1d_fn`` of the official code (without its SiLU).
    """
    return F.conv1d(F.pad(x, (weight.shape[-1] - 1, 0)), weight, bias, groups=x.shape[1])


class BiMamba(nn.Module):
    """Vim's mixer: the official ``Mamba`` module of ``mamba-1p1p1`` with ``bimamba_type`` "v2" (the released
    models) or "none" (plain, forward-only Mamba). Input and output (B, L, d_model).

    Parameters (official names): A_log (E, N), D (E), [A_b_log, D_b], in_proj (2E, d_model), conv1d (E, 1, K),
    x_proj (R+2N, E), dt_proj (E, R) + bias, [conv1d_b, x_proj_b, dt_proj_b], out_proj (d_model, E).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank="auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_fast_path: bool = True,
        layer_idx: Optional[int] = None,
        bimamba_type: str = "v2",
        if_divide_out: bool = True,
        init_layer_scale: Optional[float] = None,
        scan_backend: str = "auto",
    ):
        super().__init__()
        if bimamba_type not in ("v2", "none"):
            raise NotImplementedError(
                f"bimamba_type {bimamba_type!r} is not supported: vssm implements 'v2' (every released Vim model) "
                f"and 'none' (forward-only Mamba); 'v1' (and if_bimamba=True) has no released weights"
            )
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        # use_fast_path only chose the official kernels; vssm always computes the fast path's function.
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = e = int(expand * d_model)
        self.dt_rank = r = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.layer_idx = layer_idx
        self.bimamba_type = bimamba_type
        self.if_divide_out = if_divide_out
        self.scan_backend = scan_backend
        self.directions = 2 if bimamba_type == "v2" else 1

        # Direct parameters lead the official state_dict in this order: [gamma], A_log, D, [A_b_log, D_b].
        if init_layer_scale is not None:
            self.gamma = nn.Parameter(torch.full((d_model,), float(init_layer_scale)))
        else:
            self.gamma = None
        a_init = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).expand(e, d_state).contiguous()
        self.A_log = nn.Parameter(a_init.clone())
        self.D = nn.Parameter(torch.ones(e))
        if self.directions == 2:
            self.A_b_log = nn.Parameter(a_init.clone())
            self.D_b = nn.Parameter(torch.ones(e))

        self.in_proj = nn.Linear(d_model, 2 * e, bias=bias)
        self.conv1d = nn.Conv1d(e, e, d_conv, groups=e, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(e, r + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(r, e, bias=True)
        if self.directions == 2:
            self.conv1d_b = nn.Conv1d(e, e, d_conv, groups=e, padding=d_conv - 1, bias=conv_bias)
            self.x_proj_b = nn.Linear(e, r + 2 * d_state, bias=False)
            self.dt_proj_b = nn.Linear(r, e, bias=True)
        self.out_proj = nn.Linear(e, d_model, bias=bias)
        self._init_dt(dt_min, dt_max, dt_init, dt_scale, dt_init_floor)

    @torch.no_grad()
    def _init_dt(self, dt_min, dt_max, dt_init, dt_scale, dt_init_floor) -> None:
        """Mamba's dt initialisation for the forward direction only (spec §6: dt_proj_b keeps the default Linear
        init, and its bias is zeroed by the model's init, since it is not marked ``_no_reinit``)."""
        std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        bias = self.dt_proj.bias
        dt = torch.exp(torch.rand_like(bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        bias._no_reinit = True

    def _stacked(self):
        """Per-direction weights stacked along a leading K axis (K = 1 or 2)."""
        names = [("conv1d", "x_proj", "dt_proj", "A_log", "D")]
        if self.directions == 2:
            names.append(("conv1d_b", "x_proj_b", "dt_proj_b", "A_b_log", "D_b"))
        mods = [[getattr(self, n) for n in group] for group in names]
        conv_w = torch.cat([m[0].weight for m in mods])
        conv_b = torch.cat([m[0].bias for m in mods]) if mods[0][0].bias is not None else None
        x_w = torch.stack([m[1].weight for m in mods])  # (K, R+2N, E)
        dt_w = torch.stack([m[2].weight for m in mods])  # (K, E, R)
        dt_b = torch.cat([m[2].bias for m in mods])
        a = -torch.exp(torch.cat([m[3] for m in mods]).float())
        d = torch.cat([m[4] for m in mods])
        return conv_w, conv_b, x_w, dt_w, dt_b, a, d

    def forward(self, hidden: Tensor) -> Tensor:
        batch, length, _ = hidden.shape
        k, e, n = self.directions, self.d_inner, self.d_state
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (B, E, L) each
        conv_w, conv_b, x_w, dt_w, dt_b, a, d = self._stacked()
        xs = torch.cat([x, x.flip(-1)], dim=1) if k == 2 else x  # the backward direction reads flip(x)
        u = F.silu(causal_conv1d(xs, conv_w, conv_b))  # (B, K*E, L)
        x_dbl = torch.matmul(x_w, u.view(batch, k, e, length))  # (B, K, R+2N, L)
        dts, bs, cs = torch.split(x_dbl, [self.dt_rank, n, n], dim=2)
        dts = torch.matmul(dt_w, dts)  # (B, K, E, L)
        y = selective_scan(
            u,
            dts.reshape(batch, k * e, length),
            a,
            bs.contiguous(),
            cs.contiguous(),
            d.float(),
            dt_b.float(),
            delta_softplus=True,
            backend=self.scan_backend,
        )
        if k == 2:
            y = y.view(batch, 2, e, length)
            y = y[:, 0] + y[:, 1].flip(-1)
            if self.if_divide_out:
                y = y * 0.5
        y = y * F.silu(z)  # the same gate for both directions: (o_f + o_b) = (y_f + y_b) * SiLU(z)
        out = self.out_proj(y.transpose(1, 2))
        return out * self.gamma if self.gamma is not None else out


class VimBlock(nn.Module):
    """The official ``Block``: Add -> Norm -> Mixer. ``forward(hidden, residual)`` returns (mixer output, residual).

    The residual stream is ``residual + DropPath(hidden)`` (kept in fp32 with ``residual_in_fp32``); the first
    block gets ``residual=None`` and starts the stream from its input.
    """

    def __init__(self, dim: int, mixer: nn.Module, norm: nn.Module, drop_path: float = 0.0, residual_in_fp32: bool = True):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.mixer = mixer
        self.norm = norm
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, hidden: Tensor, residual: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        if residual is not None:
            hidden = self.drop_path(hidden)
        normed, residual = add_norm(hidden, residual, self.norm, self.residual_in_fp32)
        return self.mixer(normed), residual
