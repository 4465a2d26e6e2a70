"""The VSS block: pre-norm residual SS2D, then (v2 / v2v) a pre-norm residual MLP."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn
from timm.layers import DropPath
from torch import Tensor

from .common import GatedMlp, Mlp, make_act
from .ss2d import SS2D

__all__ = ["VSSBlock"]


class VSSBlock(nn.Module):
    """x + DropPath(SS2D(norm(x))), then x + DropPath(MLP(norm2(x))) when mlp_ratio > 0.

    One DropPath module serves both residuals (two independent draws), as in the official block.
    ``post_norm`` moves each norm after its branch instead.
    """

    def __init__(
        self,
        hidden_dim: int,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        channel_first: bool = False,
        ssm_d_state: int = 16,
        ssm_ratio: float = 2.0,
        ssm_dt_rank="auto",
        ssm_act_layer="silu",
        ssm_conv: int = 3,
        ssm_conv_bias: bool = True,
        ssm_drop_rate: float = 0.0,
        ssm_init: str = "v0",
        forward_type: str = "v2",
        mlp_ratio: float = 4.0,
        mlp_act_layer="gelu",
        mlp_drop_rate: float = 0.0,
        gmlp: bool = False,
        post_norm: bool = False,
        scan_backend: str = "auto",
    ):
        super().__init__()
        self.ssm_branch = ssm_ratio > 0
        self.mlp_branch = mlp_ratio > 0
        self.post_norm = post_norm
        if self.ssm_branch:
            self.norm = norm_layer(hidden_dim)
            self.op = SS2D(
                d_model=hidden_dim,
                d_state=ssm_d_state,
                ssm_ratio=ssm_ratio,
                dt_rank=ssm_dt_rank,
                act_layer=make_act(ssm_act_layer),
                d_conv=ssm_conv,
                conv_bias=ssm_conv_bias,
                dropout=ssm_drop_rate,
                initialize=ssm_init,
                forward_type=forward_type,
                channel_first=channel_first,
                scan_backend=scan_backend,
            )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if self.mlp_branch:
            self.norm2 = norm_layer(hidden_dim)
            mlp = GatedMlp if gmlp else Mlp
            self.mlp = mlp(
                hidden_dim,
                int(hidden_dim * mlp_ratio),
                act_layer=make_act(mlp_act_layer),
                drop=mlp_drop_rate,
                channel_first=channel_first,
            )

        for norm in (getattr(self, "norm", None), getattr(self, "norm2", None)):
            if norm is not None and not post_norm:
                norm.autocast_output = True  # pre-norms feed only their branch's first projection

    def _residual(self, x: Tensor, norm: nn.Module, branch: nn.Module) -> Tensor:
        if self.post_norm:
            return x + self.drop_path(norm(branch(x)))
        return x + self.drop_path(branch(norm(x)))

    def forward(self, x: Tensor) -> Tensor:
        if self.ssm_branch:
            x = self._residual(x, self.norm, self.op)
        if self.mlp_branch:
            x = self._residual(x, self.norm2, self.mlp)
        return x
