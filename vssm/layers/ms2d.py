"""MSVMamba's layers: the multi-scale 2D selective scan (MS2D), the SE block, the ConvFFN and the MSVMamba block
(spec/msvmamba.md §3-§6).

MS2D, both released generations::

    in_proj -> [split z, SiLU(z)] -> x
        full res: SiLU(conv2d 3x3 (x))              -> row-major scan, length H*W          (one parameter slot)
        low res:  SiLU(conv2d_b1 7x7 stride 2 (x))  -> [row_rev | col | col_rev] of the h x w map, concatenated,
                                                       length 3*h*w, scanned ONCE (state carries over the parts)
    un-scan; low res: sum of the three parts, upsampled to H x W; y = y_full + up(y_low)
    -> SE -> [* z] -> out_proj

The two generations compute different functions (spec §12.1):

=====================  ===============================  ===============================================
                       generation 1 (master)            generation 3 ("MSVMambav3", v2 branch)
=====================  ===============================  ===============================================
slot 0 / slot 1        low res / full res               full res / low res
out_norm               LayerNorm on each branch's scan  LayerNorm over channels after the merge
                       output, before the merge
upsampling             bilinear (align_corners=False)   nearest (legacy: src = floor(dst * h / H))
gate z                 yes                              ``vms``: yes, ``vms_noz``: no
scan inputs            cast to fp32                     autocast dtype (fp32 output)
=====================  ===============================  ===============================================

Every scan runs through :func:`vssm.ops.selective_scan`; the orders come from :mod:`vssm.ops.ms_scan`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor

from ..ops.ms_scan import MS_FULL_RES, MS_LOW_RES, direction_merge, direction_scan
from ..ops.selective_scan import selective_scan
from ..ops.layer_norm import autocast_enabled
from .common import LN_EPS, DepthwiseConv2d, GatedMlp, Mlp, PointwiseConv2d, make_act, make_linear, make_norm

__all__ = ["MS2D", "MS2DVariant", "ms2d_variant", "SEModule", "ConvFFN", "MSVSSBlock"]

K_SLOTS = 2  # one parameter slot for the full-resolution scan, one for the concatenated low-resolution scans


@dataclass(frozen=True)
class MS2DVariant:
    """What distinguishes the two released MS2D generations (see the module docstring)."""

    generation: int
    gated: bool
    low_res_slot: int
    norm_per_branch: bool
    upsample: str
    force_fp32: bool

    @property
    def full_res_slot(self) -> int:
        return 1 - self.low_res_slot


def ms2d_variant(generation: int, gated: Optional[bool] = None) -> MS2DVariant:
    """The MS2D function of a generation: 1 (master: Nano / Micro / Tiny) or 3 (v2 branch: MSVMambav3).

    ``gated`` only matters for generation 3 (``forward_type="vms"`` True, ``"vms_noz"`` False); generation 1 is
    always gated.
    """
    if generation == 1:
        if gated is False:
            raise ValueError("MS2D generation 1 always has the SiLU(z) gate")
        return MS2DVariant(1, gated=True, low_res_slot=0, norm_per_branch=True, upsample="bilinear", force_fp32=True)
    if generation == 3:
        return MS2DVariant(
            3, gated=bool(gated), low_res_slot=1, norm_per_branch=False, upsample="nearest", force_fp32=False
        )
    raise ValueError(f"MSVMamba generation must be 1 (master branch) or 3 (v2 branch, MSVMambav3), got {generation!r}")


class SEModule(nn.Module):
    """Squeeze-and-excitation: y * sigmoid(fc2(relu(fc1(mean_HW(y))))), no biases. Keys fc.0, fc.2."""

    def __init__(self, channels: int, reduction: int = 8, channel_first: bool = True):
        super().__init__()
        self.channel_first = channel_first
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            nn.ReLU(),
            nn.Linear(channels // reduction, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.channel_first:
            return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]
        return x * self.fc(x.mean(dim=(1, 2)))[:, None, None, :]


class ConvFFN(nn.Module):
    """linear1 (1x1 conv C -> eC) -> dropout -> t + dwc(t) (3x3 depthwise) -> GELU -> linear2 (1x1 conv eC -> C)
    -> dropout, on (B, C, H, W). Keys linear1, linear2, dwc (their official order)."""

    def __init__(self, channels: int, expansion: int = 2, drop: float = 0.0):
        super().__init__()
        hidden = channels * expansion
        self.linear1 = PointwiseConv2d(channels, hidden)
        self.drop1 = nn.Dropout(drop)
        self.act = nn.GELU()
        self.linear2 = PointwiseConv2d(hidden, channels)
        self.drop2 = nn.Dropout(drop)
        self.dwc = DepthwiseConv2d(hidden, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop1(self.linear1(x))
        x = self.act(x + self.dwc(x))
        return self.drop2(self.linear2(x))


class MS2D(nn.Module):
    """The multi-scale 2D selective-scan mixer. Input and output (B, H, W, C) channel-last or (B, C, H, W)
    channel-first; the function depends only on ``generation`` (and ``gated``), never on the layout.

    Parameters (official names; K = 2 slots, E = d_inner, R = dt_rank, N = d_state): x_proj_weight (K, R+2N, E),
    dt_projs_weight (K, E, R), dt_projs_bias (K, E), A_logs (K*E, N), Ds (K*E), out_norm, se, in_proj, conv2d
    (3x3 depthwise), conv2d_b1 (7x7 depthwise, stride 2), out_proj. Slot k uses rows k*E..(k+1)*E of A_logs / Ds.
    """

    def __init__(
        self,
        d_model: int = 96,
        d_state: int = 1,
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
        generation: int = 3,
        gated: Optional[bool] = None,
        add_se: bool = True,
        se_reduction: int = 8,
        channel_first: bool = True,
        scan_backend: str = "auto",
    ):
        super().__init__()
        if d_conv < 2:
            raise ValueError(f"MS2D needs the depthwise conv (d_conv >= 2), got d_conv={d_conv}")
        self.variant = variant = ms2d_variant(generation, gated)
        self.channel_first = channel_first
        self.scan_backend = scan_backend
        self.d_inner = d_inner = int(ssm_ratio * d_model)
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        linear = make_linear(channel_first)
        act_layer = make_act(act_layer)

        # Direct parameters lead the official state_dict, in this order.
        k, e, r, n = K_SLOTS, d_inner, self.dt_rank, d_state
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, e))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, e, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, e))
        self.A_logs = nn.Parameter(torch.empty(k * e, n))
        self.Ds = nn.Parameter(torch.empty(k * e))

        # generation 1 normalises the scan outputs token-wise (always nn.LayerNorm); generation 3 the merged map
        if variant.norm_per_branch:
            self.out_norm = nn.LayerNorm(d_inner, eps=LN_EPS)
        else:
            self.out_norm = make_norm(channel_first)(d_inner)
        self.se = SEModule(d_inner, se_reduction, channel_first) if add_se else None
        d_proj = d_inner * (2 if variant.gated else 1)

        def conv(kernel: int, stride: int) -> DepthwiseConv2d:
            return DepthwiseConv2d(d_inner, kernel, stride, bias=conv_bias)

        if generation == 1:  # module order = official state_dict order
            self.in_proj = linear(d_model, d_proj, bias=bias)
            self.conv2d = conv(d_conv, 1)
            self.conv2d_b1 = conv(7, 2)
        else:
            self.conv2d_b1 = conv(7, 2)
            self.in_proj = linear(d_model, d_proj, bias=bias)
            self.conv2d = conv(d_conv, 1)
        self.act = act_layer()
        self.out_act = nn.Identity()
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
        """The official initialisation (spec §7): "v0" is Mamba's (A = -1..-N, log-uniform dt, D = 1), independently
        per slot; "v1" / "v2" are VMamba's simple variants and "simple" generation 1's ``ssm_simple_init``."""
        from .ss2d import SS2D  # the same SSM initialisation as VMamba's SS2D, on MS2D's K = 2 slots

        if initialize == "simple":
            self.x_proj_weight.uniform_(-(self.d_inner**-0.5), self.d_inner**-0.5)
            self.Ds.fill_(1.0)
            self.A_logs.normal_()
            self.dt_projs_weight.normal_()
            self.dt_projs_bias.normal_()
            return
        SS2D.reset_ssm_parameters(self, initialize, dt_min, dt_max, dt_init, dt_scale, dt_init_floor)

    def scan_slot(self, u: Tensor, slot: int) -> Tensor:
        """Selective scan of the sequences u (B, E, L) with the parameters of ``slot``; float32 (B, E, L) (float64
        for float64 inputs)."""
        e, r, n = self.d_inner, self.dt_rank, self.d_state
        rows = slice(slot * e, (slot + 1) * e)
        x_dbl = torch.matmul(self.x_proj_weight[slot], u)  # (B, R+2N, L)
        dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=1)
        dts = torch.matmul(self.dt_projs_weight[slot], dts)  # (B, E, L)
        acc = torch.float64 if u.dtype == torch.float64 else torch.float32  # the official fp32; fp64 stays fp64
        if self.variant.force_fp32:
            u, dts, Bs, Cs = u.to(acc), dts.to(acc), Bs.to(acc), Cs.to(acc)
        return selective_scan(
            u.contiguous(),
            dts.contiguous(),
            -torch.exp(self.A_logs[rows].to(acc)),
            Bs.unsqueeze(1).contiguous(),
            Cs.unsqueeze(1).contiguous(),
            self.Ds[rows].to(acc),
            self.dt_projs_bias[slot].to(acc),
            delta_softplus=True,
            out_dtype=acc,
            backend=self.scan_backend,
        )

    def _branch_norm(self, y: Tensor) -> Tensor:
        """Generation 1: out_norm over the channels of each token of a scanned sequence (B, E, L)."""
        if not autocast_enabled(y.device):
            y = y.to(self.out_norm.weight.dtype)
        return self.out_norm(y.transpose(1, 2)).transpose(1, 2)

    def ssm(self, x: Tensor, x_low: Tensor) -> Tensor:
        """The multi-scale scan core. x: full-resolution (B, E, H, W), x_low: (B, E, h, w) -> merged float32
        (B, E, H, W) (generation 1: already normalised per branch)."""
        v = self.variant
        height, width = x.shape[2:]
        h, w = x_low.shape[2:]
        y_full = self.scan_slot(direction_scan(x, MS_FULL_RES), v.full_res_slot)
        y_low = self.scan_slot(direction_scan(x_low, MS_LOW_RES), v.low_res_slot)
        if v.norm_per_branch:
            y_full, y_low = self._branch_norm(y_full), self._branch_norm(y_low)
        y_full = direction_merge(y_full, height, width, MS_FULL_RES)
        y_low = direction_merge(y_low, h, w, MS_LOW_RES)
        if v.upsample == "bilinear":
            y_low = F.interpolate(y_low, size=(height, width), mode="bilinear", align_corners=False)
        else:
            y_low = F.interpolate(y_low, size=(height, width), mode="nearest")
        return y_full + y_low

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            layout = "(B, C, H, W)" if self.channel_first else "(B, H, W, C)"
            raise ValueError(f"MS2D expects a 4-D map {layout}, got shape {tuple(x.shape)}")
        channel_dim = 1 if self.channel_first else -1
        x = self.in_proj(x)
        z = None
        if self.variant.gated:
            x, z = x.chunk(2, dim=channel_dim)
            z = self.act(z)
        if not self.channel_first:
            x = x.permute(0, 3, 1, 2).contiguous()  # as the official code; CPU depthwise convs want NCHW
        x_full = self.act(self.conv2d(x))
        x_low = self.act(self.conv2d_b1(x))  # taps in_proj's output, not the 3x3 conv's
        y = self.ssm(x_full, x_low)
        if not self.channel_first:
            y = y.permute(0, 2, 3, 1)
        if not self.variant.norm_per_branch:
            if not autocast_enabled(y.device):
                y = y.to(x.dtype)  # a model cast to bf16/fp16 normalises in its own dtype; autocast keeps fp32 here
            y = self.out_norm(y)
        y = y.to(x_full.dtype)
        if self.se is not None:
            y = self.se(y)
        y = self.out_act(y)
        if z is not None:
            y = y * z
        return self.dropout(self.out_proj(y))


class MSVSSBlock(nn.Module):
    """The MSVMamba block: x + DropPath(MS2D(norm(x))), then the ConvFFN branch:

    - pre-norm ``x + DropPath(ConvFFN(norm2(x)))`` (generation 1; generation 3 built channel-last), or
    - post-norm ``x + DropPath(norm2(ConvFFN(x)))`` (generation 3 with ``norm_layer="ln2d"``: the released models).

    Without the ConvFFN an optional pre-norm MLP (VMamba's) takes its place. One DropPath module serves both
    residuals, as in the official block.
    """

    def __init__(
        self,
        hidden_dim: int,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        channel_first: bool = False,
        generation: int = 3,
        gated: Optional[bool] = None,
        ssm_d_state: int = 1,
        ssm_ratio: float = 2.0,
        ssm_dt_rank="auto",
        ssm_act_layer="silu",
        ssm_conv: int = 3,
        ssm_conv_bias: bool = True,
        ssm_drop_rate: float = 0.0,
        ssm_init: str = "v0",
        add_se: bool = True,
        convffn: bool = True,
        ffn_ratio: int = 2,
        ffn_drop: float = 0.0,
        ffn_post_norm: bool = False,
        mlp_ratio: float = 0.0,
        mlp_act_layer="gelu",
        mlp_drop_rate: float = 0.0,
        gmlp: bool = False,
        scan_backend: str = "auto",
    ):
        super().__init__()
        self.channel_first = channel_first
        self.ffn_post_norm = ffn_post_norm
        self.norm = norm_layer(hidden_dim)
        self.op = MS2D(
            d_model=hidden_dim,
            d_state=ssm_d_state,
            ssm_ratio=ssm_ratio,
            dt_rank=ssm_dt_rank,
            act_layer=make_act(ssm_act_layer),
            d_conv=ssm_conv,
            conv_bias=ssm_conv_bias,
            dropout=ssm_drop_rate,
            initialize=ssm_init,
            generation=generation,
            gated=gated,
            add_se=add_se,
            channel_first=channel_first,
            scan_backend=scan_backend,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.convFFN = self.mlp = None
        if convffn:
            self.convFFN = ConvFFN(hidden_dim, expansion=int(ffn_ratio), drop=ffn_drop)
            self.norm2 = norm_layer(hidden_dim)
        elif mlp_ratio > 0:
            self.norm2 = norm_layer(hidden_dim)
            mlp = GatedMlp if gmlp else Mlp
            self.mlp = mlp(
                hidden_dim,
                int(hidden_dim * mlp_ratio),
                act_layer=make_act(mlp_act_layer),
                drop=mlp_drop_rate,
                channel_first=channel_first,
            )

    def _ffn(self, x: Tensor) -> Tensor:
        if self.channel_first:
            return self.convFFN(x)
        return self.convFFN(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        if self.convFFN is not None:
            if self.ffn_post_norm:
                x = x + self.drop_path(self.norm2(self._ffn(x)))
            else:
                x = x + self.drop_path(self._ffn(self.norm2(x)))
        elif self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x
