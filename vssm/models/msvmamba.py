"""MSVMamba: multi-scale VMamba (spec/msvmamba.md), both released code generations.

- generation 1 (branch ``master``, arXiv v1): MSVMamba Nano / Micro / Tiny. Channel-last, gated MS2D with a
  per-branch LayerNorm and bilinear upsampling, SE on 2C, pre-norm ConvFFN x2, patch-merging downsampling.
- generation 3 (branch ``v2``, "MSVMambav3"): Tiny / Small (``vms_noz``, no gate) and Base (``vms``, gated).
  Channel-first, LayerNorm after the merge, nearest upsampling, SE on C, post-norm ConvFFN x4, conv stem and
  conv downsampling.

The constructor takes the official ``VSSM`` keyword arguments of either branch with their official names (the
``constructor_args`` of the fixtures), so ``vssm.build_official("msvmamba", **kwargs)`` builds the official
function and its checkpoints load strictly. The generation is told apart as the official code does: the v2
branch's ``forward_type`` is ``"vms"`` / ``"vms_noz"``; the master branch switches to its multi-scale scan through
``sscore_type="multiscale_4scan_12"``. ``generation=1 | 3`` (a vssm argument) says it explicitly.

The six released ImageNet-1k classifiers are registered with timm under the fixtures' names. The network is a
:class:`vssm.models.vmamba.VSSM` in structure (stem, ``layers[i]`` = blocks + downsample, classifier) and
inherits its timm API (``forward_features``, ``forward_head``, ``forward_intermediates``, ``reset_classifier``,
``set_grad_checkpointing``, ...); only the blocks differ.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs

from .._registry import register_family, register_vssm_model
from ..layers.ms2d import MSVSSBlock
from .vmamba import VSSM, checkpoint_filter_fn

__all__ = ["MSVSSM", "build_msvmamba", "checkpoint_filter_fn", "detect_generation"]

_GEN1_SSCORE = "multiscale_4scan_12"
_GEN3_FORWARD_TYPES = {"vms": True, "vms_noz": False}  # forward_type -> gated

# Official **kwargs of the master branch's VSSM that must keep their released value (their other values select
# code paths no released model uses); the released values are the config.py defaults.
_GEN1_FIXED = {
    "recurrent": False,
    "inter_block_ssm": False,
    "grid_size": 0,
    "multiscale_ratio": [],
    "multiscale_ksize": [],
    "continous_patch": False,
    "adaptive_merge": False,
    "add_conv": True,
    "b1_seq": False,
    "ms_fusion": None,
    "lpu": False,
    "sep_norm": False,
}
# Official **kwargs that have no effect on these models: gen 1 reads UP_SAMPLE under another key, so `up_sample`
# never acts (spec §12.6), b1_ratio only with b1_seq; gen 3 ignores the gen-1 names (its detection configs pass
# them) and pre_norm / num_heads / axis_stage / ssm_rank_ratio (used by forward types vssm does not provide).
_GEN1_IGNORED = {"up_sample", "b1_ratio", "ssm_rank_ratio", "ssm_simple_init", "current_layer"}
_GEN3_IGNORED = {
    "pre_norm",
    "num_heads",
    "axis_stage",
    "ssm_rank_ratio",
    "sscore_type",
    "ms_stage",
    "ms_split",
    "ffn_dropout",
    "input_resolution",
}
_GEN1_KWARGS = set(_GEN1_FIXED) | _GEN1_IGNORED | {"sscore_type", "ms_stage", "ms_split", "add_se", "convFFN",
                                                    "ffn_dropout"}
_GEN3_KWARGS = _GEN3_IGNORED | {"add_se", "convffn", "conv_ffn_ratio", "full_res_index"}


def detect_generation(forward_type: str = "v2", **kwargs) -> int:
    """1 or 3: which MSVMamba code generation a set of official ``VSSM`` keyword arguments belongs to."""
    explicit = kwargs.get("generation")
    if explicit is not None:
        if explicit not in (1, 3):
            raise ValueError(f"generation must be 1 (master branch) or 3 (v2 branch, MSVMambav3), got {explicit!r}")
        return explicit
    if forward_type in _GEN3_FORWARD_TYPES:
        return 3
    if kwargs.get("sscore_type") == _GEN1_SSCORE:
        return 1
    raise ValueError(
        "cannot tell which MSVMamba generation these arguments describe: the v2 branch (MSVMambav3) uses "
        f"forward_type='vms' or 'vms_noz' (got {forward_type!r}); the master branch (MSVMamba Nano/Micro/Tiny) "
        f"needs sscore_type={_GEN1_SSCORE!r} (got {kwargs.get('sscore_type')!r}). Or pass generation=1 or 3."
    )


class MSVSSM(VSSM):
    """MSVMamba backbone + classifier, from the official ``VSSM`` keyword arguments of either generation.

    The skeleton (stem, stages, downsampling, head, timm API) is :class:`VSSM`'s; the blocks are
    :class:`MSVSSBlock`. vssm arguments beyond the official ones: ``generation`` (1 or 3; detected from the
    arguments when None), and VSSM's ``channel_first``, ``global_pool``, ``scan_backend``.
    """

    def __init__(self, *, generation: Optional[int] = None, **kwargs):
        super().__init__(generation=generation, **kwargs)

    def _block_factory(
        self, forward_type: str, ssm_ratio: float, ssm_init: str, native_channel_first: bool, extra: dict
    ) -> Callable[..., nn.Module]:
        gen = self.generation = detect_generation(forward_type, **extra)
        known = _GEN1_KWARGS if gen == 1 else _GEN3_KWARGS
        unknown = set(extra) - known - {"generation"}
        if unknown:
            raise TypeError(f"MSVSSM (generation {gen}) got unexpected keyword arguments {sorted(unknown)}")
        block_args = self._block_options(gen, forward_type, ssm_ratio, extra)
        block_args.setdefault("ssm_init", ssm_init)
        # Generation 3's official block post-normalises the ConvFFN branch only in its channel-first code path.
        block_args["ffn_post_norm"] = gen == 3 and native_channel_first
        return functools.partial(MSVSSBlock, **block_args)

    def _block_options(self, gen: int, forward_type: str, ssm_ratio: float, kwargs: dict) -> dict:
        """Check the generation-specific official arguments and turn them into MSVSSBlock options."""
        if gen == 1:
            for name, released in _GEN1_FIXED.items():
                value = kwargs.get(name, released)
                if (list(value) if isinstance(value, (list, tuple)) else value) != released:
                    raise ValueError(
                        f"MSVMamba generation 1: {name}={value!r} selects a code path no released model uses; "
                        f"vssm implements {name}={released!r} only"
                    )
            if kwargs.get("sscore_type", _GEN1_SSCORE) != _GEN1_SSCORE:
                raise ValueError(
                    f"MSVMamba generation 1 needs sscore_type={_GEN1_SSCORE!r}, got {kwargs['sscore_type']!r}"
                )
            ms_stage = list(kwargs.get("ms_stage", range(self.num_layers)))
            if sorted(ms_stage) != list(range(self.num_layers)):
                raise ValueError(
                    f"MSVMamba generation 1: ms_stage={ms_stage} leaves stages without the multi-scale scan; vssm "
                    f"implements the released ms_stage={list(range(self.num_layers))} only"
                )
            if list(kwargs.get("ms_split", [1, 3])) != [1, 3]:
                raise ValueError(f"MSVMamba generation 1 implements ms_split=[1, 3] only, got {kwargs['ms_split']!r}")
            rank_ratio = kwargs.get("ssm_rank_ratio", 2.0)
            if 0 < rank_ratio < ssm_ratio:
                raise ValueError(
                    f"MSVMamba generation 1: ssm_rank_ratio={rank_ratio} < ssm_ratio={ssm_ratio} selects the low-rank "
                    f"path no released model uses"
                )
            for suffix in ("nozact", "softmax", "sigmoid"):
                if forward_type.endswith(suffix):
                    raise ValueError(f"MSVMamba generation 1: forward_type postfix {suffix!r} is not supported")
            return dict(
                generation=1,
                gated=True,
                add_se=bool(kwargs.get("add_se", False)),
                convffn=bool(kwargs.get("convFFN", False)),
                ffn_ratio=2,
                ffn_drop=float(kwargs.get("ffn_dropout", 0.2)),
                ssm_init="simple" if kwargs.get("ssm_simple_init", False) else "v0",
            )
        if kwargs.get("full_res_index", 1) != 1:
            raise ValueError(
                f"MSVMambav3: full_res_index={kwargs['full_res_index']!r} is not supported (the released models use 1, "
                f"the row-major scan at full resolution; the official code for 3 and 4 is broken)"
            )
        return dict(
            generation=3,
            gated=_GEN3_FORWARD_TYPES[forward_type],
            add_se=bool(kwargs.get("add_se", False)),
            convffn=bool(kwargs.get("convffn", False)),
            ffn_ratio=int(kwargs.get("conv_ffn_ratio", 2)),
            ffn_drop=0.0,
        )


    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str, key: str = "auto") -> None:
        """Load an official file strictly with vssm's loader (timm's ``custom_load`` hook, used by
        ``pretrained=True``: timm's own loader refuses the pickled yacs config in the official files). ``key="auto"``
        takes the file's ``model`` entry, else ``model_ema``. A model built with another number of classes keeps
        its own head and takes everything else from the file."""
        from ..checkpoint import load_checkpoint

        own_head, classes = self.classifier.head, getattr(self, "pretrained_cfg", {}).get("num_classes", 1000)
        if not (isinstance(own_head, nn.Linear) and own_head.out_features == classes):
            device = self.patch_embed[0].weight.device
            self.classifier.head = nn.Linear(self.num_features, classes, device=device)
        try:
            load_checkpoint(self, checkpoint_path, key=key)
        finally:
            self.classifier.head = own_head


# The official checkpoints use VMamba's key names (and its legacy renames, inherited by both MSVMamba branches).
MSVSSM.checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)


def build_msvmamba(**kwargs) -> MSVSSM:
    """``vssm.build_official("msvmamba", **kwargs)``: the official ``VSSM(**kwargs)`` of either branch."""
    return MSVSSM(**kwargs)


register_family("msvmamba", build_msvmamba)

_HF = "YuhengSSS/MSVMamba"


def _cfg(**kwargs) -> dict:
    # custom_load "hf": timm fetches the file (hub, url or pretrained_cfg_overlay=dict(file=...)) and calls
    # MSVSSM.load_pretrained, i.e. vssm's strict loader.
    return {
        "url": "",
        "custom_load": "hf",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.0",
        "classifier": "classifier.head",
        **kwargs,
    }


# Generation-1 weights are in the Google-Drive folders linked from the official README (no direct URL): download
# them and pass the file, e.g. vssm.create_model("msvmamba_tiny", checkpoint="vssm_tiny_ms_e300.pth").
default_cfgs = generate_default_cfgs(
    {
        "msvmamba_nano.in1k": _cfg(),
        "msvmamba_micro.in1k": _cfg(),
        "msvmamba_tiny.in1k": _cfg(),
        "msvmambav3_tiny_224.in1k": _cfg(hf_hub_id=_HF, hf_hub_filename="msvmambav3_tiny_224.pth"),
        "msvmambav3_small_224.in1k": _cfg(hf_hub_id=_HF, hf_hub_filename="msvmambav3_small_224.pth"),
        "msvmambav3_base_224.in1k": _cfg(hf_hub_id=_HF, hf_hub_filename="msvmambav3_base_224.pth"),
        "msvmambav3_nano.untrained": _cfg(input_size=(3, 64, 64), pool_size=(4, 4), crop_pct=1.0, num_classes=10),
    }
)


def _create(variant: str, pretrained: bool, config: dict, kwargs: dict) -> MSVSSM:
    return build_model_with_cfg(
        MSVSSM,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **dict(config, **kwargs),
    )


# Released configurations: exactly the keyword arguments the official build_vssm_model passes to VSSM
# (fixtures/keys/*.json 'constructor_args'), minus the ones with no effect.
_GEN1 = dict(
    ssm_d_state=1, ssm_ratio=2.0, ssm_rank_ratio=2.0, ssm_dt_rank="auto", ssm_act_layer="silu", ssm_conv=3,
    ssm_conv_bias=True, forward_type="v2", mlp_ratio=0.0, norm_layer="ln", downsample_version="v1",
    patchembed_version="v1", sscore_type=_GEN1_SSCORE, add_se=True, convFFN=True, ffn_dropout=0.0,
    ms_stage=[0, 1, 2, 3], ms_split=[1, 3],
)
_GEN3 = dict(
    ssm_d_state=1, ssm_ratio=1.0, ssm_dt_rank="auto", ssm_act_layer="silu", ssm_conv=3, ssm_conv_bias=True,
    ssm_init="v0", mlp_ratio=4.0, norm_layer="ln2d", downsample_version="v3", patchembed_version="v2",
    add_se=True, convffn=True, conv_ffn_ratio=4, full_res_index=1,
)


@register_vssm_model("msvmamba")
def msvmamba_nano(pretrained: bool = False, **kwargs) -> MSVSSM:
    """MSVMamba-N (generation 1), 6.9M params, 0.9 GFLOPs, 77.3% ImageNet-1k top-1."""
    return _create("msvmamba_nano", pretrained, dict(_GEN1, dims=48, depths=[1, 2, 5, 2], drop_path_rate=0.2), kwargs)


@register_vssm_model("msvmamba")
def msvmamba_micro(pretrained: bool = False, **kwargs) -> MSVSSM:
    """MSVMamba-M (generation 1), 11.9M params, 1.5 GFLOPs, 79.8%."""
    return _create("msvmamba_micro", pretrained, dict(_GEN1, dims=64, depths=[1, 2, 5, 2], drop_path_rate=0.2), kwargs)


@register_vssm_model("msvmamba")
def msvmamba_tiny(pretrained: bool = False, **kwargs) -> MSVSSM:
    """MSVMamba-T (generation 1), 33.0M params, 4.6 GFLOPs, 82.8%."""
    return _create("msvmamba_tiny", pretrained, dict(_GEN1, dims=96, depths=[1, 2, 9, 2], drop_path_rate=0.2), kwargs)


@register_vssm_model("msvmamba")
def msvmambav3_tiny_224(pretrained: bool = False, **kwargs) -> MSVSSM:
    """MSVMambav3-T (generation 3, vms_noz), 32.3M params, 5.0 GFLOPs, 83.0%."""
    config = dict(_GEN3, forward_type="vms_noz", dims=96, depths=[2, 2, 9, 2], drop_path_rate=0.2)
    return _create("msvmambav3_tiny_224", pretrained, config, kwargs)


@register_vssm_model("msvmamba")
def msvmambav3_small_224(pretrained: bool = False, **kwargs) -> MSVSSM:
    """MSVMambav3-S (generation 3, vms_noz), 50.2M params, 8.8 GFLOPs, 84.1%."""
    config = dict(_GEN3, forward_type="vms_noz", dims=96, depths=[2, 3, 20, 2], drop_path_rate=0.4)
    return _create("msvmambav3_small_224", pretrained, config, kwargs)


@register_vssm_model("msvmamba")
def msvmambav3_base_224(pretrained: bool = False, **kwargs) -> MSVSSM:
    """MSVMambav3-B (generation 3, vms: gated), 90.6M params, 16.3 GFLOPs, 84.4%."""
    config = dict(_GEN3, forward_type="vms", dims=128, depths=[2, 4, 18, 2], drop_path_rate=0.5)
    return _create("msvmambav3_base_224", pretrained, config, kwargs)


# vssm addition (NOT an official release, no weights): the generation-3 block at vmamba_nano's size, for small images.
# Chosen by measurement (benchmarks/results/fashion-mnist.md): on Fashion-MNIST at 64 px it beat vmamba_nano and two
# deeper vmamba_nano shapes at the same parameter count; train it with `vssm train`.
@register_vssm_model("msvmamba")
def msvmambav3_nano(pretrained: bool = False, **kwargs) -> MSVSSM:
    """vssm addition (not an official release): the MSVMambav3 block (multi-scale scan, SE, ConvFFN; vms_noz) with
    vmamba_nano's shape: dims 96-192-384, depths 2-4-4, v2 patch-4 stem, three stages; 9.1M params. For 32-64 px
    inputs (the Fashion-MNIST benchmark's model)."""
    config = dict(_GEN3, forward_type="vms_noz", dims=[96, 192, 384], depths=[2, 4, 4], drop_path_rate=0.2)
    return _create("msvmambav3_nano", pretrained, config, kwargs)
