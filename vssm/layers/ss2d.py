"""SS2D: the 2-D selective-scan mixer of VMamba (spec/vmamba.md §2.5-2.8).

    in_proj -> [split z] -> depthwise conv -> act -> cross-scan (K=4 directions) -> per-direction x_proj / dt_proj
    -> selective scan -> cross-merge -> out_norm -> [* z] -> out_proj

Every ``forward_type`` of the official SS2D family that has a defined function is accepted; the ones the released
checkpoints use are ``v0`` (vanilla VMamba: gated, d_state 16) and ``v05_noz`` (VMamba v2 / v2v: no gate, d_state 1).
The ``v01``..``v05``, ``v2`` and ``v3`` cores compute the same function and differ only in which kernel the
official code called and whether the scan inputs were cast to fp32 first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..ops.scan_orders import cascade_merge, cascade_scan
from ..ops.ss2d_scan import scan_unrolled, ss2d_scan
from ..ops.layer_norm import autocast_enabled
from .common import LN_EPS, DepthwiseConv2d, LayerNorm2d, Permute, make_act, make_linear, make_norm

__all__ = ["SS2D", "SS2DVariant", "parse_forward_type"]

K_DIRECTIONS = 4

# core name -> (scan order, scan inputs cast to fp32 by the official code)
_CORES = {
    "v0": ("cross2d", True),
    "v0seq": ("cross2d", True),
    "v01": ("cross2d", True),
    "v02": ("cross2d", True),
    "v03": ("cross2d", True),
    "v04": ("cross2d", False),
    "v05": ("cross2d", False),
    "v051d": ("unidi", False),
    "v052d": ("bidi", False),
    "v052dc": ("cascade", False),
    "v2": ("cross2d", True),
    "v3": ("cross2d", False),
}
_OUT_NORMS = ("_onnone", "_ondwconv3", "_oncnorm", "_onsoftmax", "_onsigmoid")


@dataclass(frozen=True)
class SS2DVariant:
    core: str
    scan_order: str
    force_fp32: bool
    gated: bool = True
    z_act: bool = True
    out_act: bool = False
    out_norm: str = "ln"

    @property
    def legacy_layout(self) -> bool:
        """v0 registers out_norm after conv2d (its state_dict order); the v2 family registers it first."""
        return self.core in ("v0", "v0seq")


def parse_forward_type(forward_type: str) -> SS2DVariant:
    """Split an official forward_type string ("v05_noz", "v2_no32_oact", ...) into its options."""
    rest = forward_type
    flags = {}
    tags = ("_no32", "_oact", "_noz", "_nozact") + _OUT_NORMS
    changed = True
    while changed:
        changed = False
        for tag in tags:
            if rest.endswith(tag) and tag not in flags:
                flags[tag] = True
                rest = rest[: -len(tag)]
                changed = True
    if rest not in _CORES:
        raise ValueError(
            f"unsupported SS2D forward_type {forward_type!r}: core {rest!r} is not one of {sorted(_CORES)} "
            f"(optional postfixes: {', '.join(tags)}). The xv*/m0 families have no released weights."
        )
    if rest in ("v0", "v0seq") and flags:
        raise ValueError(f"forward_type {forward_type!r}: 'v0' takes no postfixes")
    scan_order, force_fp32 = _CORES[rest]
    out_norm = next((tag[3:] for tag in _OUT_NORMS if tag in flags), "ln")
    return SS2DVariant(
        core=rest,
        scan_order=scan_order,
        force_fp32=force_fp32 and "_no32" not in flags,
        gated="_noz" not in flags,
        z_act="_nozact" not in flags,
        out_act="_oact" in flags,
        out_norm=out_norm,
    )


class _SoftmaxSpatial(nn.Module):
    """Softmax over the spatial positions of each channel."""

    def __init__(self, channel_first: bool):
        super().__init__()
        self.channel_first = channel_first

    def forward(self, x: Tensor) -> Tensor:
        if self.channel_first:
            return x.flatten(2).softmax(-1).view_as(x)
        return x.flatten(1, 2).softmax(1).view_as(x)


def _make_out_norm(kind: str, dim: int, channel_first: bool) -> nn.Module:
    if kind == "ln":
        return make_norm(channel_first)(dim)
    if kind == "none":
        return nn.Identity()
    if kind == "sigmoid":
        return nn.Sigmoid()
    if kind == "softmax":
        return _SoftmaxSpatial(channel_first)
    to_first = nn.Identity() if channel_first else Permute(0, 3, 1, 2)
    to_last = nn.Identity() if channel_first else Permute(0, 2, 3, 1)
    dwconv = DepthwiseConv2d(dim, 3, bias=False)
    if kind == "dwconv3":
        return nn.Sequential(to_first, dwconv, to_last)
    return nn.Sequential(make_norm(channel_first)(dim), to_first, dwconv, to_last)  # cnorm


class SS2D(nn.Module):
    """The SS2D mixer. Input and output: (B, H, W, C) channel-last or (B, C, H, W) channel-first.

    Parameters (official names; K = 4, E = d_inner, R = dt_rank, N = d_state): x_proj_weight (K, R+2N, E),
    dt_projs_weight (K, E, R), dt_projs_bias (K, E), A_logs (K*E, N), Ds (K*E), in_proj, conv2d, out_norm, out_proj.
    Direction k uses rows k*E..(k+1)*E of A_logs / Ds.
    """

    def __init__(
        self,
        d_model: int = 96,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        dt_rank="auto",
        act_layer: Callable[[], nn.Module] = nn.SiLU,
        d_conv: int = 3,
        conv_bias: bool = True,
        dropout: float = 0.0,
        bias: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        initialize: str = "v0",
        forward_type: str = "v2",
        channel_first: bool = False,
        scan_backend: str = "auto",
    ):
        super().__init__()
        variant = parse_forward_type(forward_type)
        self.variant = variant
        self.channel_first = channel_first
        self.scan_backend = scan_backend
        self.d_inner = d_inner = int(ssm_ratio * d_model)
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        linear = make_linear(channel_first)
        act_layer = make_act(act_layer)

        # Direct parameters first: they lead the state_dict of the official module in this order.
        k, e, r, n = K_DIRECTIONS, d_inner, self.dt_rank, d_state
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, e))
        self.A_logs = nn.Parameter(torch.empty(k * e, n))
        self.Ds = nn.Parameter(torch.empty(k * e))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, e, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, e))

        make_out_norm = lambda: _make_out_norm(variant.out_norm, d_inner, channel_first)  # noqa: E731
        if not variant.legacy_layout:
            self.out_norm = make_out_norm()
        self.in_proj = linear(d_model, d_inner * (2 if variant.gated else 1), bias=bias)
        self.act = act_layer()
        self.conv2d = (
            DepthwiseConv2d(d_inner, d_conv, bias=conv_bias)
            if d_conv > 1
            else nn.Identity()
        )
        if variant.legacy_layout:
            self.out_norm = make_out_norm()
        if variant.out_norm == "ln" and not variant.out_act and not variant.gated:
            self.out_norm.autocast_output = True  # it feeds out_proj directly, which casts anyway
        self.out_act = nn.GELU() if variant.out_act else nn.Identity()
        self.out_proj = linear(d_inner, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.reset_ssm_parameters(initialize, dt_min, dt_max, dt_init, dt_scale, dt_init_floor)

    @torch.no_grad()
    def reset_ssm_parameters(
        self,
        initialize: str = "v0",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
    ) -> None:
        """The official SSM initialisation (spec §5): "v0" is Mamba's (S4D-real A, log-uniform dt); "v1", "v2"
        are the ablation variants."""
        e, r, n = self.d_inner, self.dt_rank, self.d_state
        # x_proj: nn.Linear(E, R+2N)'s default init, independently per direction
        nn.init.uniform_(self.x_proj_weight, -(e**-0.5), e**-0.5)
        self.Ds.fill_(1.0)
        if initialize == "v0":
            std = r**-0.5 * dt_scale
            if dt_init == "constant":
                self.dt_projs_weight.fill_(std)
            elif dt_init == "random":
                nn.init.uniform_(self.dt_projs_weight, -std, std)
            else:
                raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
            dt = torch.exp(
                torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            ).clamp(min=dt_init_floor)
            self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
            self.A_logs.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).expand_as(self.A_logs))
        elif initialize == "v1":
            self.A_logs.normal_()
            self.dt_projs_weight.normal_().mul_(0.1)
            self.dt_projs_bias.normal_().mul_(0.1)
        elif initialize == "v2":
            self.A_logs.zero_()
            self.dt_projs_weight.uniform_().mul_(0.1)
            self.dt_projs_bias.uniform_().mul_(0.1)
        else:
            raise ValueError(f"ssm_init must be 'v0', 'v1' or 'v2', got {initialize!r}")

    def scan_sequences(self, xs: Tensor, directions: slice = slice(None)) -> Tensor:
        """Selective scan of unrolled sequences xs (B, K', E, L) with the parameters of the given directions;
        returns float32 (B, K', E, L)."""
        e = self.d_inner
        rows = slice((directions.start or 0) * e, (directions.stop or K_DIRECTIONS) * e)
        return scan_unrolled(xs, self.x_proj_weight[directions], self.dt_projs_weight[directions],
                             self.dt_projs_bias[directions], self.A_logs[rows], self.Ds[rows],
                             self.variant.force_fp32, self.scan_backend)

    def ssm(self, x: Tensor) -> Tensor:
        """The scan core on the conv output (B, E, H, W); returns the merged (B, E, H, W) in float32."""
        order = self.variant.scan_order
        if order != "cascade":
            return ss2d_scan(x, self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias, self.A_logs, self.Ds,
                             order, self.variant.force_fp32, self.scan_backend)
        # rows (directions 0, 1) then columns (directions 2, 3), each on a channel-normalised map
        batch = x.shape[0]
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), eps=LN_EPS).permute(0, 3, 1, 2)
        y = cascade_merge(self.scan_sequences(cascade_scan(x, "rows"), slice(0, 2)), batch, "rows")
        y = F.layer_norm(y.permute(0, 2, 3, 1), (y.shape[1],), eps=LN_EPS).permute(0, 3, 1, 2)
        return cascade_merge(self.scan_sequences(cascade_scan(y, "cols"), slice(2, 4)), batch, "cols")

    def forward(self, x: Tensor) -> Tensor:
        channel_dim = 1 if self.channel_first else -1
        x = self.in_proj(x)
        if self.variant.gated:
            x, z = x.chunk(2, dim=channel_dim)
            if self.variant.z_act:
                z = self.act(z)
        if not self.channel_first:
            x = x.permute(0, 3, 1, 2)
        x = self.act(self.conv2d(x))
        y = self.ssm(x)
        if not self.channel_first:
            y = y.permute(0, 2, 3, 1)
        if not autocast_enabled(y.device):
            y = y.to(x.dtype)  # a model cast to bf16/fp16 normalises in its own dtype; autocast keeps fp32 here
        y = self.out_act(self.out_norm(y))
        if self.variant.gated:
            y = y * z
        return self.dropout(self.out_proj(y.to(x.dtype)))
