"""Small building blocks shared by the VMamba-family models: layout helpers, norms, MLPs, stems, downsamplers.

Every model runs in one of two layouts, fixed at construction: channel-last (B, H, W, C) with nn.Linear
projections and nn.LayerNorm, or channel-first (B, C, H, W) with 1x1-conv projections (:class:`Linear2d`, whose
weight stays 2-D) and :class:`LayerNorm2d`. Parameter names and shapes are identical in both, so one checkpoint
loads into either.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor

from ..ops.act_linear import act_linear
from ..ops.layer_norm import autocast_enabled, layer_norm_last_dim

__all__ = [
    "Permute",
    "Linear2d",
    "PointwiseConv2d",
    "DepthwiseConv2d",
    "pointwise_linear",
    "LayerNorm",
    "LayerNorm2d",
    "Mlp",
    "GatedMlp",
    "PatchMerging2D",
    "ConvBlock",
    "make_norm",
    "make_linear",
    "make_act",
    "patch_embed_v1",
    "patch_embed_v2",
    "downsample_v1",
    "downsample_conv",
]

LN_EPS = 1e-5  # every LayerNorm of the official models


class Permute(nn.Module):
    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(*self.dims)

    def extra_repr(self) -> str:
        return ", ".join(map(str, self.dims))


class Linear2d(nn.Linear):
    """A per-pixel linear map on (B, C, H, W) maps; the weight stays 2-D (out, in) like nn.Linear's.

    On a channels_last map in reduced precision (autocast, or a bf16 / fp16 model) it runs as the GEMM over the
    channels of the (B, H, W, C) view with the bias in the GEMM's epilogue: cuDNN's 1x1 convolution adds it in an
    fp32 broadcast kernel that took 15% of vmamba_tiny_s1l8's bf16 GPU time on an H100. (A bare GEMM and a separate
    bias add cost more host time per call: 78 vs 63 us, benchmarks/host_overhead_gpu.py.) fp32 keeps the
    convolution, which PyTorch lets cuDNN run in TF32 by default (the GEMM would run in full fp32).
    """

    @staticmethod
    def runs_as_gemm(x: Tensor) -> bool:
        """Whether the map x takes the GEMM path (over its (B, H, W, C) view) rather than the 1x1 convolution."""
        return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and (
            x.dtype in (torch.bfloat16, torch.float16) or autocast_enabled(x.device)
        )

    def forward(self, x: Tensor) -> Tensor:
        return pointwise_linear(x, self.weight, self.bias)


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution whose weight keeps nn.Conv2d's (out, in, 1, 1) shape, as official checkpoints store it
    (MSVMamba's ConvFFN), computed like :class:`Linear2d`. In msvmambav3_nano's compiled bf16 training step on an
    H100 the cuDNN 1x1 convolutions took 4.6 of 27.8 ms of GPU time; the GEMMs make the step 1.3% faster
    (benchmarks/pointwise_ab_gpu.py)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return pointwise_linear(x, self.weight.flatten(1), self.bias)


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise k x k convolution with 'same' padding ((k - 1) // 2), parameters as nn.Conv2d's.

    On a CPU, a map smaller than the kernel (the 2x2 last stage of a 28 px input) sends the padded convolution's
    weight gradient down a slow oneDNN path: 3.4 ms instead of 0.35 for vmamba_femto's last 3x3 (batch 64,
    192 channels, 2 threads). Padding the map first and convolving without padding gives the same result on the
    fast path. This holds for channel-last maps at kernels 3-7 and for contiguous (B, C, H, W) maps at 3x3 only
    (at 5x5 and 7x7 the explicit padding was slower there), so only those take it."""

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, bias: bool = True):
        super().__init__(channels, channels, kernel_size, stride, (kernel_size - 1) // 2, groups=channels, bias=bias)

    def pads_explicitly(self, x: Tensor) -> bool:
        """Whether the map x (B, C, H, W) is padded before the convolution (see the class docstring)."""
        kernel = self.kernel_size[0]
        return (
            x.device.type == "cpu"
            and min(x.shape[-2:]) < kernel
            and (kernel == 3 or x.is_contiguous(memory_format=torch.channels_last))
        )

    def forward(self, x: Tensor) -> Tensor:
        if not self.pads_explicitly(x):
            return super().forward(x)
        pad = self.padding[0]
        return F.conv2d(F.pad(x, (pad, pad, pad, pad)), self.weight, self.bias, self.stride, 0, 1, self.groups)


def pointwise_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """The per-pixel linear map ``weight`` (out, in) of a (B, in, H, W) map -> (B, out, H, W): the GEMM over the
    channels where :meth:`Linear2d.runs_as_gemm` says so, else the 1x1 convolution."""
    if Linear2d.runs_as_gemm(x):
        return F.linear(x.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)
    return F.conv2d(x, weight[:, :, None, None], bias)


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the last dim, eps 1e-5 like the official models; a Triton kernel on CUDA.

    ``autocast_output``: set on norms whose only consumer is a projection, so under autocast they write the
    autocast dtype directly (the projection would cast to it anyway).
    """

    autocast_output = False

    def __init__(self, num_channels: int, eps: float = LN_EPS):
        super().__init__(num_channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return layer_norm_last_dim(x, self.weight, self.bias, self.eps, self.autocast_output)


class LayerNorm2d(LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map (fast when the map is channels_last in memory)."""

    def forward(self, x: Tensor) -> Tensor:
        y = layer_norm_last_dim(x.permute(0, 2, 3, 1), self.weight, self.bias, self.eps, self.autocast_output)
        return y.permute(0, 3, 1, 2)


def make_norm(channel_first: bool, kind: str = "ln") -> Type[nn.Module]:
    """The norm class of a layout: "ln" (LayerNorm over channels) or "bn" (BatchNorm2d, channel-first only)."""
    if kind == "bn":
        if not channel_first:
            raise ValueError("norm 'bn' (BatchNorm2d) needs the channel-first layout")
        return nn.BatchNorm2d
    return LayerNorm2d if channel_first else LayerNorm


def make_linear(channel_first: bool) -> Type[nn.Linear]:
    return Linear2d if channel_first else nn.Linear


_ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}


def make_act(name) -> Callable[[], nn.Module]:
    """An activation class from its official config name ("silu", "gelu", "relu", "sigmoid") or a class."""
    if isinstance(name, str):
        if name.lower() not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}")
        return _ACTIVATIONS[name.lower()]
    return name


class Mlp(nn.Module):
    """fc1 -> act -> drop -> fc2 -> drop, in either layout.

    Without dropout between act and fc2, act + fc2 run as :func:`~vssm.ops.act_linear.act_linear`, which keeps
    only fc1's output for the backward (not also act's): vmamba_tiny_s1l8's training peak memory at batch 128 fell
    from 9353 to 7829 MB on an H100, at no measured cost in speed.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        drop: float = 0.0,
        channel_first: bool = False,
    ):
        super().__init__()
        linear = make_linear(channel_first)
        self.fc1 = linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        if self.drop.p > 0 and self.training:
            return self.drop(self.fc2(self.drop(self.act(h))))
        if not isinstance(self.fc2, Linear2d):
            return self.drop(act_linear(h, self.act, self.fc2.weight, self.fc2.bias))
        if Linear2d.runs_as_gemm(h):
            y = act_linear(h.permute(0, 2, 3, 1), self.act, self.fc2.weight, self.fc2.bias)
            return self.drop(y.permute(0, 3, 1, 2))
        return self.drop(self.fc2(self.act(h)))


class GatedMlp(nn.Module):
    """fc1 to 2*hidden, split into (x, z), fc2(x * act(z)) (the official "gmlp" option)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        drop: float = 0.0,
        channel_first: bool = False,
    ):
        super().__init__()
        linear = make_linear(channel_first)
        self.channel_dim = 1 if channel_first else -1
        self.fc1 = linear(in_features, 2 * hidden_features)
        self.act = act_layer()
        self.fc2 = linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        x, z = self.fc1(x).chunk(2, dim=self.channel_dim)
        return self.drop(self.fc2(self.drop(x * self.act(z))))


def _to_last(channel_first: bool) -> nn.Module:
    return nn.Identity() if channel_first else Permute(0, 2, 3, 1)


def _to_first(channel_first: bool) -> nn.Module:
    return nn.Identity() if channel_first else Permute(0, 3, 1, 2)


def patch_embed_v1(in_chans: int, dim: int, patch_size: int, channel_first: bool, patch_norm: bool = True):
    """Stem v1: one patch_size x patch_size conv, stride patch_size, then LN. Keys 0 (conv) and 2 (norm)."""
    norm = make_norm(channel_first)
    return nn.Sequential(
        nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size, bias=True),
        _to_last(channel_first),
        norm(dim) if patch_norm else nn.Identity(),
    )


def patch_embed_v2(in_chans: int, dim: int, patch_size: int, channel_first: bool, patch_norm: bool = True):
    """Stem v2: two (patch/2+1)^2 convs of stride patch/2, LN + GELU between, LN after. Keys 0, 2, 5, 7.

    H -> ceil(H / 2) -> ceil(H / 4) for patch 4, so any input size works. ``patch_size=1`` (a vssm addition; the
    official formula gives stride 0 there) makes both convs 3x3 with stride 1: a full-resolution stem.
    """
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    stride = max(patch_size // 2, 1)
    kernel = 3 if patch_size == 1 else stride + 1
    norm = make_norm(channel_first)
    return nn.Sequential(
        nn.Conv2d(in_chans, dim // 2, kernel_size=kernel, stride=stride, padding=1),
        _to_last(channel_first),
        norm(dim // 2) if patch_norm else nn.Identity(),
        _to_first(channel_first),
        nn.GELU(),
        nn.Conv2d(dim // 2, dim, kernel_size=kernel, stride=stride, padding=1),
        _to_last(channel_first),
        norm(dim) if patch_norm else nn.Identity(),
    )


class ConvBlock(nn.Module):
    """The convolutional block of a hybrid model's early stages (vssm addition, ``VSSM(conv_stages=N)``):
    x + DropPath(BN(conv3x3(GELU(BN(conv3x3(x)))))) on (B, C, H, W).

    Dense 3x3 convolutions where the token grid is fine (28x28 for a 28 px image) cost a fraction of a scan there;
    the VSS blocks of the later stages see their features. BatchNorm, as in the residual CNNs whose full-resolution
    stages this takes over.
    """

    def __init__(self, hidden_dim: int, drop_path: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(hidden_dim)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(hidden_dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.norm2(self.conv2(self.act(self.norm1(self.conv1(x))))))


class PatchMerging2D(nn.Module):
    """Downsample v1 (Swin's patch merging): gather each 2x2 cell in the order (0,0), (1,0), (0,1), (1,1),
    LN(4C), Linear(4C -> 2C, no bias). Odd sizes are zero-padded at the bottom / right, in both layouts."""

    def __init__(self, dim: int, out_dim: int, channel_first: bool = False):
        super().__init__()
        self.channel_first = channel_first
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.norm = LayerNorm(4 * dim)
        self.norm.autocast_output = True

    def forward(self, x: Tensor) -> Tensor:
        if self.channel_first:
            x = x.permute(0, 2, 3, 1)
        height, width = x.shape[1:3]
        if height % 2 or width % 2:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        x = self.reduction(self.norm(x))
        return x.permute(0, 3, 1, 2) if self.channel_first else x


def downsample_v1(dim: int, out_dim: int, channel_first: bool) -> nn.Module:
    return PatchMerging2D(dim, out_dim, channel_first)


def downsample_conv(dim: int, out_dim: int, channel_first: bool, kernel_size: int) -> nn.Module:
    """Downsample v2 (kernel 2, stride 2) or v3 (kernel 3, stride 2, padding 1): conv then LN. Keys 1 and 3."""
    return nn.Sequential(
        _to_first(channel_first),
        nn.Conv2d(dim, out_dim, kernel_size=kernel_size, stride=2, padding=kernel_size // 2 if kernel_size == 3 else 0),
        _to_last(channel_first),
        make_norm(channel_first)(out_dim),
    )
