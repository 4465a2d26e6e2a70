"""VMamba: the hierarchical visual state-space model (spec/vmamba.md).

The constructor takes the official ``VSSM`` keyword arguments with their official names and defaults, so any
official configuration builds (``vssm.build_official("vmamba", **kwargs)``) and its checkpoint loads strictly.
The nine released ImageNet-1k classifiers are registered with timm under their official names.

Layout: ``norm_layer="ln"`` runs channel-last (B, H, W, C), ``"ln2d"`` channel-first (B, C, H, W), like the
official code; the weights are the same in both. ``forward_features`` returns the last stage in the model's
layout; ``forward_intermediates`` returns (B, C, H, W) maps by default.
"""
from __future__ import annotations

import functools
import re
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models._features import feature_take_indices
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .._registry import register_family, register_vssm_model
from ..layers.common import (
    ConvBlock,
    Permute,
    downsample_conv,
    downsample_v1,
    make_norm,
    patch_embed_v1,
    patch_embed_v2,
)
from ..layers.vss_block import VSSBlock

__all__ = ["VSSM", "checkpoint_filter_fn"]

# Official VSSM arguments that have no effect on any released model (swallowed by **kwargs upstream too).
_IGNORED_OFFICIAL_KWARGS = {"ssm_rank_ratio", "ssm_simple_init"}


class VSSM(nn.Module):
    """VMamba backbone + classifier with the official constructor arguments (spec §1.1 for their meaning).

    vssm arguments beyond the official ones: ``channel_first`` (run in the other layout than ``norm_layer``
    implies: same weights, same function), ``global_pool`` ("avg" or ""), ``scan_backend`` (see
    :func:`vssm.ops.selective_scan`), ``conv_stages`` (a hybrid: the first N stages are made of
    :class:`vssm.layers.ConvBlock` instead of the family's block; channel-first only).
    """

    def __init__(
        self,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (2, 2, 9, 2),
        dims: Union[int, Sequence[int]] = (96, 192, 384, 768),
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
        drop_path_rate: float = 0.1,
        patch_norm: bool = True,
        norm_layer: str = "ln",
        downsample_version: str = "v2",
        patchembed_version: str = "v1",
        use_checkpoint: bool = False,
        posembed: bool = False,
        imgsize: int = 224,
        channel_first: Optional[bool] = None,
        global_pool: str = "avg",
        scan_backend: str = "auto",
        conv_stages: int = 0,
        **kwargs,
    ):
        super().__init__()
        norm_kind = str(norm_layer).lower()
        if norm_kind not in ("ln", "ln2d", "bn"):
            raise ValueError(f"norm_layer must be 'ln' (channel-last), 'ln2d' or 'bn' (channel-first), got {norm_layer!r}")
        native_channel_first = norm_kind != "ln"
        self.channel_first = native_channel_first if channel_first is None else bool(channel_first)
        if norm_kind == "bn" and not self.channel_first:
            raise ValueError("norm_layer='bn' (BatchNorm2d) needs the channel-first layout")
        if isinstance(dims, int):
            dims = [dims * 2**i for i in range(len(depths))]
        self.dims = list(dims)
        self.num_layers = len(depths)
        if not 0 <= conv_stages < self.num_layers:
            raise ValueError(
                f"conv_stages must be in [0, {self.num_layers - 1}] for {self.num_layers} stages (at least the last "
                f"stage keeps the family's blocks), got {conv_stages}"
            )
        if conv_stages and not self.channel_first:
            raise ValueError(
                "conv_stages needs the channel-first layout: pass norm_layer='ln2d' or channel_first=True"
            )
        make_block = self._block_factory(forward_type, ssm_ratio, ssm_init, native_channel_first, kwargs)
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.dims[-1]
        self.global_pool = global_pool
        self.grad_checkpointing = use_checkpoint
        norm = make_norm(self.channel_first, "bn" if norm_kind == "bn" else "ln")

        embed = {"v1": patch_embed_v1, "v2": patch_embed_v2}.get(patchembed_version)
        if embed is None:
            raise ValueError(f"patchembed_version must be 'v1' or 'v2', got {patchembed_version!r}")
        self.patch_embed = embed(in_chans, self.dims[0], patch_size, self.channel_first, patch_norm)
        self.pos_embed = None
        if posembed:
            grid = imgsize // patch_size
            self.pos_embed = nn.Parameter(torch.zeros(1, self.dims[0], grid, grid))
            trunc_normal_(self.pos_embed, std=0.02)

        if downsample_version not in ("v1", "v2", "v3", "none"):
            raise ValueError(f"downsample_version must be 'v1', 'v2', 'v3' or 'none', got {downsample_version!r}")
        drop_rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        self.feature_info = []
        for i in range(self.num_layers):
            stage_rates = drop_rates[sum(depths[:i]) : sum(depths[: i + 1])]
            blocks = [ConvBlock(self.dims[i], rate) for rate in stage_rates] if i < conv_stages else [
                make_block(
                    hidden_dim=self.dims[i],
                    drop_path=rate,
                    norm_layer=norm,
                    channel_first=self.channel_first,
                    ssm_d_state=ssm_d_state,
                    ssm_ratio=ssm_ratio,
                    ssm_dt_rank=ssm_dt_rank,
                    ssm_act_layer=ssm_act_layer,
                    ssm_conv=ssm_conv,
                    ssm_conv_bias=ssm_conv_bias,
                    ssm_drop_rate=ssm_drop_rate,
                    mlp_ratio=mlp_ratio,
                    mlp_act_layer=mlp_act_layer,
                    mlp_drop_rate=mlp_drop_rate,
                    gmlp=gmlp,
                    scan_backend=scan_backend,
                )
                for rate in stage_rates
            ]
            last = i == self.num_layers - 1
            if last or downsample_version == "none":
                downsample = nn.Identity()
            elif downsample_version == "v1":
                downsample = downsample_v1(self.dims[i], self.dims[i + 1], self.channel_first)
            else:
                kernel = 2 if downsample_version == "v2" else 3
                downsample = downsample_conv(self.dims[i], self.dims[i + 1], self.channel_first, kernel)
            self.layers.append(nn.Sequential(OrderedDict(blocks=nn.Sequential(*blocks), downsample=downsample)))
            self.feature_info.append(dict(num_chs=self.dims[i], reduction=patch_size * 2**i, module=f"layers.{i}"))

        self.classifier = nn.Sequential(
            OrderedDict(
                norm=norm(self.num_features),
                permute=nn.Identity() if self.channel_first else Permute(0, 3, 1, 2),
                avgpool=nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity(),
                flatten=nn.Flatten(1) if global_pool else nn.Identity(),
                head=nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity(),
            )
        )
        self.apply(self._init_weights)

    def _block_factory(
        self, forward_type: str, ssm_ratio: float, ssm_init: str, native_channel_first: bool, extra: dict
    ) -> Callable[..., nn.Module]:
        """Check the constructor's remaining keyword arguments ``extra`` and return the block constructor, called with
        the arguments every block shares (the hook through which MSVSSM builds its blocks into this skeleton)."""
        unknown = set(extra) - _IGNORED_OFFICIAL_KWARGS
        if unknown:
            raise TypeError(f"VSSM got unexpected keyword arguments {sorted(unknown)}")
        return functools.partial(VSSBlock, forward_type=forward_type, ssm_init=ssm_init)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # spec §5: Linear (incl. Linear2d) trunc-normal 0.02 / bias 0, LayerNorm 1 / 0; convs keep PyTorch's init,
        # the SSM parameters keep SS2D's own init.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ---- timm model API ----------------------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """pos_embed and the SSM's A_logs, Ds and dt biases (Mamba's convention); norms and biases are excluded
        by the optimizer factory already."""
        names = {name for name, _ in self.named_parameters() if name.rsplit(".", 1)[-1] in ("A_logs", "Ds", "dt_projs_bias")}
        if self.pos_embed is not None:
            names.add("pos_embed")
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^patch_embed|^pos_embed",
            blocks=r"^layers\.(\d+)" if coarse else [(r"^layers\.(\d+)\.downsample", (0,)), (r"^layers\.(\d+)\.blocks\.(\d+)", None)],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("", "avg"):
                raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
            self.global_pool = global_pool
            self.classifier.avgpool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
            self.classifier.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        device = self.classifier.norm.weight.device if hasattr(self.classifier.norm, "weight") else None
        self.classifier.head = (
            nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()
        )

    def _stage_blocks(self, stage: nn.Module, x: Tensor) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            for block in stage.blocks:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return stage.blocks(x)

    def _embed(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.patch_embed[0].in_channels:
            raise ValueError(
                f"{type(self).__name__} expects images (B, {self.patch_embed[0].in_channels}, H, W), "
                f"got shape {tuple(x.shape)}"
            )
        if self.channel_first:
            # NHWC memory: 1x1 convs (cuDNN, oneDNN) and LayerNorm2d run on contiguous channels and the GPU scan's
            # loads coalesce; NCHW made the CPU forward ~7x slower
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            size = x.shape[2:] if self.channel_first else x.shape[1:3]
            pos = self.pos_embed
            if tuple(pos.shape[2:]) != tuple(size):
                pos = F.interpolate(pos, size=tuple(size), mode="bicubic", align_corners=False)
            x = x + (pos if self.channel_first else pos.permute(0, 2, 3, 1))
        return x

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> last stage (B, H/32, W/32, C) channel-last or (B, C, H/32, W/32) channel-first."""
        x = self._embed(x)
        for stage in self.layers:
            x = stage.downsample(self._stage_blocks(stage, x))
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        c = self.classifier
        x = c.flatten(c.avgpool(c.permute(c.norm(x))))
        return x if pre_logits else c.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Stage outputs before downsampling (what the official detection backbone emits), strides 4..32.

        ``norm`` applies the classifier's norm to the last stage's output.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.layers), indices)
        stages = self.layers[: max_index + 1] if stop_early else self.layers
        x = self._embed(x)
        intermediates = []
        for i, stage in enumerate(stages):
            x = self._stage_blocks(stage, x)
            if i in take:
                feat = self.classifier.norm(x) if norm and i == self.num_layers - 1 else x
                if self.channel_first and output_fmt == "NHWC":
                    feat = feat.permute(0, 2, 3, 1)
                elif not self.channel_first and output_fmt == "NCHW":
                    feat = feat.permute(0, 3, 1, 2)
                intermediates.append(feat.contiguous())
            x = stage.downsample(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        take, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[: max_index + 1]
        self.layers[-1].downsample = nn.Identity()
        if prune_norm:
            self.classifier.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take


_OLD_V0_RENAMES = (
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.0."),
    (re.compile(r"^patch_embed\.norm\."), "patch_embed.2."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.ln_1\."), r"\1.norm."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.self_attention\."), r"\1.op."),
    (re.compile(r"^norm\."), "classifier.norm."),
    (re.compile(r"^head\."), "classifier.head."),
)
# The single-file vmamba.py stores the v1 downsample as Sequential(PatchMerge, LN, Linear) and the per-direction
# projections as grouped Linear modules.
_ONE_FILE_RENAMES = (
    (re.compile(r"^(layers\.\d+\.downsample)\.1\."), r"\1.norm."),
    (re.compile(r"^(layers\.\d+\.downsample)\.2\."), r"\1.reduction."),
    (re.compile(r"\.op\.x_proj\.weight$"), ".op.x_proj_weight"),
    (re.compile(r"\.op\.dt_projs\.weight$"), ".op.dt_projs_weight"),
)


def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: VSSM) -> Dict[str, Tensor]:
    """Map an official VMamba state_dict onto ``model``: legacy v0 names (spec §4.3), the single-file script's
    names, 4-D (out, in, 1, 1) weights of 1x1 projections, and a pos_embed of another grid size."""
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    targets = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _OLD_V0_RENAMES:
            key = pattern.sub(repl, key)
        for pattern, repl in _ONE_FILE_RENAMES:
            renamed = pattern.sub(repl, key)
            if renamed != key and renamed in targets and key not in targets:
                key = renamed
        target = targets.get(key)
        if target is not None and value.shape != target.shape and value.numel() == target.numel():
            if value.dim() == 4 and target.dim() == 2 or key.endswith(("x_proj_weight", "dt_projs_weight")):
                value = value.reshape(target.shape)
        if key == "pos_embed" and target is not None and value.shape != target.shape:
            value = F.interpolate(value.float(), size=target.shape[2:], mode="bicubic", align_corners=False)
        out[key] = value
    return out


VSSM.checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)
register_family("vmamba", VSSM)

_RELEASES = "https://github.com/MzeroMiko/VMamba/releases/download/"


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.0",
        "classifier": "classifier.head",
        "license": "mit",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "vanilla_vmamba_tiny.in1k": _cfg(_RELEASES + "%23v0cls/vssmtiny_dp01_ckpt_epoch_292.pth"),
        "vanilla_vmamba_small.in1k": _cfg(_RELEASES + "%23v0cls/vssmsmall_dp03_ckpt_epoch_238.pth"),
        "vanilla_vmamba_base.in1k": _cfg(_RELEASES + "%23v0cls/vssmbase_dp06_ckpt_epoch_241.pth"),
        "vmamba_tiny_s2l5.in1k": _cfg(_RELEASES + "%23v2cls/vssm_tiny_0230_ckpt_epoch_262.pth"),
        "vmamba_small_s2l15.in1k": _cfg(_RELEASES + "%23v2cls/vssm_small_0229_ckpt_epoch_222.pth"),
        "vmamba_base_s2l15.in1k": _cfg(_RELEASES + "%23v2cls/vssm_base_0229_ckpt_epoch_237.pth"),
        "vmamba_tiny_s1l8.in1k": _cfg(_RELEASES + "%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth"),
        "vmamba_small_s1l20.in1k": _cfg(_RELEASES + "%23v2cls/vssm1_small_0229s_ckpt_epoch_240.pth"),
        "vmamba_base_s1l20.in1k": _cfg(_RELEASES + "%23v2cls/vssm1_base_0229s_ckpt_epoch_225.pth"),
    }
)


def _create_vmamba(variant: str, pretrained: bool = False, **kwargs) -> VSSM:
    return build_model_with_cfg(
        VSSM,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **kwargs,
    )


# Released configurations (spec §0; the official builder functions' arguments, fixtures/keys/*.json).
_V0 = dict(ssm_d_state=16, ssm_ratio=2.0, ssm_dt_rank="auto", ssm_conv=3, ssm_conv_bias=True, forward_type="v0",
           mlp_ratio=0.0, downsample_version="v1", patchembed_version="v1", norm_layer="ln")
_V2 = dict(ssm_d_state=1, ssm_dt_rank="auto", ssm_conv=3, ssm_conv_bias=False, forward_type="v05_noz",
           mlp_ratio=4.0, downsample_version="v3", patchembed_version="v2", norm_layer="ln2d")


def _make(variant: str, pretrained: bool, config: dict, kwargs: dict) -> VSSM:
    return _create_vmamba(variant, pretrained=pretrained, **dict(config, **kwargs))


@register_vssm_model("vmamba")
def vanilla_vmamba_tiny(pretrained: bool = False, **kwargs) -> VSSM:
    """Vanilla VMamba-T (v0), 22.9M params, 5.6 GFLOPs, 82.2% ImageNet-1k top-1."""
    return _make("vanilla_vmamba_tiny", pretrained, dict(_V0, dims=96, depths=[2, 2, 9, 2], drop_path_rate=0.2), kwargs)


@register_vssm_model("vmamba")
def vanilla_vmamba_small(pretrained: bool = False, **kwargs) -> VSSM:
    """Vanilla VMamba-S (v0), 44.4M params, 11.2 GFLOPs, 83.5%."""
    return _make("vanilla_vmamba_small", pretrained, dict(_V0, dims=96, depths=[2, 2, 27, 2], drop_path_rate=0.3), kwargs)


@register_vssm_model("vmamba")
def vanilla_vmamba_base(pretrained: bool = False, **kwargs) -> VSSM:
    """Vanilla VMamba-B (v0), 76.3M params, 18.0 GFLOPs, 83.7%."""
    return _make("vanilla_vmamba_base", pretrained, dict(_V0, dims=128, depths=[2, 2, 27, 2], drop_path_rate=0.6), kwargs)


@register_vssm_model("vmamba")
def vmamba_tiny_s2l5(pretrained: bool = False, **kwargs) -> VSSM:
    """VMamba-T[s2l5] (v2), 30.7M params, 4.9 GFLOPs, 82.5%."""
    return _make("vmamba_tiny_s2l5", pretrained, dict(_V2, ssm_ratio=2.0, dims=96, depths=[2, 2, 5, 2], drop_path_rate=0.2), kwargs)


@register_vssm_model("vmamba")
def vmamba_small_s2l15(pretrained: bool = False, **kwargs) -> VSSM:
    """VMamba-S[s2l15] (v2), 50.1M params, 8.7 GFLOPs, 83.6%."""
    return _make("vmamba_small_s2l15", pretrained, dict(_V2, ssm_ratio=2.0, dims=96, depths=[2, 2, 15, 2], drop_path_rate=0.3), kwargs)


@register_vssm_model("vmamba")
def vmamba_base_s2l15(pretrained: bool = False, **kwargs) -> VSSM:
    """VMamba-B[s2l15] (v2), 88.6M params, 15.4 GFLOPs, 83.9%."""
    return _make("vmamba_base_s2l15", pretrained, dict(_V2, ssm_ratio=2.0, dims=128, depths=[2, 2, 15, 2], drop_path_rate=0.6), kwargs)


@register_vssm_model("vmamba")
def vmamba_tiny_s1l8(pretrained: bool = False, **kwargs) -> VSSM:
    """VMamba-T[s1l8] (v2v), 30.2M params, 4.9 GFLOPs, 82.6%: the README's VMamba-T."""
    return _make("vmamba_tiny_s1l8", pretrained, dict(_V2, ssm_ratio=1.0, dims=96, depths=[2, 2, 8, 2], drop_path_rate=0.2), kwargs)


@register_vssm_model("vmamba")
def vmamba_small_s1l20(pretrained: bool = False, **kwargs) -> VSSM:
    """VMamba-S[s1l20] (v2v), 49.0M params, 8.6 GFLOPs, 83.3%."""
    return _make("vmamba_small_s1l20", pretrained, dict(_V2, ssm_ratio=1.0, dims=96, depths=[2, 2, 20, 2], drop_path_rate=0.3), kwargs)


@register_vssm_model("vmamba")
def vmamba_base_s1l20(pretrained: bool = False, **kwargs) -> VSSM:
    """VMamba-B[s1l20] (v2v), 86.6M params, 15.2 GFLOPs, 83.8%."""
    return _make("vmamba_base_s1l20", pretrained, dict(_V2, ssm_ratio=1.0, dims=128, depths=[2, 2, 20, 2], drop_path_rate=0.5), kwargs)


# vssm additions: small models for 28-64 px inputs
#
# NOT official VMamba releases: configurations chosen by vssm for small images (Fashion-MNIST, CIFAR-size inputs)
# from measurements (benchmarks/results/fashion-mnist.md). They are the official VSSM with the v2v block
# (d_state 1, ssm_ratio 1, forward_type v05_noz, channel-first), the v2 patch-4 stem and v3 downsampling, in three
# stages instead of four (a 32 px image leaves a 2x2 map after three stages; a fourth would be 1x1). No weights
# are released for them; train them with `vssm train`.
_SMALL = dict(_V2, ssm_ratio=1.0, mlp_ratio=4.0)

default_cfgs.update(
    generate_default_cfgs(
        {
            "vmamba_femto.untrained": _cfg(input_size=(3, 32, 32), pool_size=(2, 2), crop_pct=1.0, num_classes=10),
            "vmamba_nano.untrained": _cfg(input_size=(3, 64, 64), pool_size=(4, 4), crop_pct=1.0, num_classes=10),
        }
    )
)


@register_vssm_model("vmamba")
def vmamba_femto(pretrained: bool = False, **kwargs) -> VSSM:
    """vssm addition (not an official release): dims 48-96-192, one block per stage, patch-4 stem, channel-last
    (faster on CPUs); 0.74M params. For 28-32 px inputs on a CPU (`vssm demo`)."""
    config = dict(_SMALL, dims=[48, 96, 192], depths=[1, 1, 1], norm_layer="ln", drop_path_rate=0.0)
    return _make("vmamba_femto", pretrained, config, kwargs)


@register_vssm_model("vmamba")
def vmamba_nano(pretrained: bool = False, **kwargs) -> VSSM:
    """vssm addition (not an official release): dims 96-192-384, depths 2-4-4, patch-4 stem; 8.9M params.
    For 32-64 px inputs on a GPU (the Fashion-MNIST benchmark)."""
    return _make("vmamba_nano", pretrained, dict(_SMALL, dims=[96, 192, 384], depths=[2, 4, 4], drop_path_rate=0.1), kwargs)
