"""Vision Mamba (Vim): a plain stack of bidirectional Mamba blocks with a class token in the middle (spec/vim.md).

The constructor takes the official ``VisionMamba`` keyword arguments with their official names and defaults, so
any official configuration builds (``vssm.build_official("vim", **kwargs)``) and its checkpoint loads strictly.
The five released ImageNet-1k classifiers are registered with timm under their official names.

Differences from the official code, on purpose: any input size works (the position embedding is resized,
bicubic, with the class token kept out of the grid), also when loading a checkpoint trained at another size;
``forward_features`` returns the normalised token sequence (B, L, D) and ``forward_head`` reads the class token
out (timm's convention; the official ``forward_features`` returns the read-out feature, which
``forward_head(x, pre_logits=True)`` gives here); unknown keyword arguments raise instead of being swallowed.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, lecun_normal_, resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models._features import feature_take_indices
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .._registry import register_family, register_vssm_model
from ..checkpoint import CheckpointError
from ..layers.bimamba import BiMamba, RMSNorm, VimBlock, add_norm

__all__ = ["VisionMamba", "checkpoint_filter_fn", "resize_pos_embed"]

# Official arguments swallowed by VisionMamba's **kwargs upstream: the base builder's misspelled ``if_devide_out``
# (the default if_divide_out=True applies) and ``drop_block_rate`` that the official main.py passes.
_IGNORED_OFFICIAL_KWARGS = {"if_devide_out", "drop_block_rate"}
# Official options that change the function but have no released weights at HEAD.
_UNSUPPORTED = {
    "if_rope": "RoPE (the legacy January 2024 models)",
    "if_rope_residual": "RoPE on the residual (legacy)",
    "if_bidirectional": "pairs of layers on the flipped sequence",
}


class PatchEmbed(nn.Module):
    """Conv2d(kernel patch_size, stride) then flatten row-major to (B, M, D). Any input size >= patch_size."""

    def __init__(self, img_size=224, patch_size: int = 16, stride: int = 16, in_chans: int = 3, embed_dim: int = 192):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.stride = stride
        self.grid_size = self.grid_for(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=stride)

    def grid_for(self, size: Sequence[int]) -> Tuple[int, int]:
        return tuple((s - p) // self.stride + 1 for s, p in zip(size, self.patch_size))

    def forward(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        x = self.proj(x)
        grid = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), grid


# ---- the position embedding with the class token(s) at their sequence positions ---------------------------------


def _token_positions(layout: str, num_patches: int) -> Tuple[int, ...]:
    """Sequence indices of the class tokens for ``num_patches`` patches: middle M // 2, head 0, double (0, M+1)."""
    return {"middle": (num_patches // 2,), "head": (0,), "double": (0, num_patches + 1), "none": ()}[layout]


def _split_tokens(seq: Tensor, layout: str) -> Tuple[Tensor, Tensor]:
    """(B, L, D) with class tokens at their positions -> (patch tokens (B, M, D), class tokens (B, T, D))."""
    if layout == "none":
        return seq, seq[:, :0]
    if layout == "head":
        return seq[:, 1:], seq[:, :1]
    if layout == "double":
        return seq[:, 1:-1], torch.cat([seq[:, :1], seq[:, -1:]], dim=1)
    p = (seq.shape[1] - 1) // 2  # M // 2 with M = L - 1
    return torch.cat([seq[:, :p], seq[:, p + 1 :]], dim=1), seq[:, p : p + 1]


def _insert_tokens(patches: Tensor, tokens: Tensor, layout: str) -> Tensor:
    """Inverse of :func:`_split_tokens`."""
    if layout == "none":
        return patches
    if layout == "double":
        return torch.cat([tokens[:, :1], patches, tokens[:, 1:]], dim=1)
    p = _token_positions(layout, patches.shape[1])[0]
    return torch.cat([patches[:, :p], tokens, patches[:, p:]], dim=1)


def resize_pos_embed(
    pos_embed: Tensor, old_grid: Sequence[int], new_grid: Sequence[int], layout: str = "middle"
) -> Tensor:
    """Resize a Vim position embedding (1, T + gh*gw, D) from ``old_grid`` to ``new_grid``: the patch part is
    resampled bicubically as a 2-D map (timm's ``resample_abs_pos_embed``), the class-token slots are kept and put
    back at their positions for the new number of patches."""
    grid, tokens = _split_tokens(pos_embed, layout)
    if grid.shape[1] != old_grid[0] * old_grid[1]:
        raise ValueError(f"pos_embed has {grid.shape[1]} patch positions, not the {old_grid[0]}x{old_grid[1]} grid")
    grid = resample_abs_pos_embed(grid, list(new_grid), list(old_grid), num_prefix_tokens=0)
    return _insert_tokens(grid, tokens, layout)


# ---- the network -------------------------------------------------------------------------------------------------


def _init_weights(module: nn.Module, n_layer: int, initializer_range: float = 0.02,
                  rescale_prenorm_residual: bool = True, n_residuals_per_layer: int = 1) -> None:
    """The official ``_init_weights`` (spec §6 step 3): Linear biases -> 0 unless marked ``_no_reinit``; each
    mixer's out_proj re-initialised kaiming-uniform(a=sqrt 5) / sqrt(n_residuals_per_layer * n_layer)."""
    if isinstance(module, nn.Linear) and module.bias is not None and not getattr(module.bias, "_no_reinit", False):
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=initializer_range)
    if rescale_prenorm_residual:
        for name, p in module.named_parameters():
            if name in ("out_proj.weight", "fc2.weight"):
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                with torch.no_grad():
                    p /= math.sqrt(n_residuals_per_layer * n_layer)


class VisionMamba(nn.Module):
    """Vim with the official constructor arguments (spec §2 for their meaning).

    vssm additions: ``in_chans`` (timm's name for ``channels``) and ``scan_backend`` (see
    :func:`vssm.ops.selective_scan`).
    """

    def __init__(
        self,
        img_size: Union[int, Tuple[int, int]] = 224,
        patch_size: int = 16,
        stride: int = 16,
        depth: int = 24,
        embed_dim: int = 192,
        d_state: int = 16,
        channels: int = 3,
        num_classes: int = 1000,
        ssm_cfg: Optional[dict] = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        norm_epsilon: float = 1e-5,
        rms_norm: bool = True,
        initializer_cfg: Optional[dict] = None,
        fused_add_norm: bool = True,
        residual_in_fp32: bool = True,
        device=None,
        dtype=None,
        ft_seq_len=None,
        pt_hw_seq_len: int = 14,
        if_bidirectional: bool = False,
        final_pool_type: str = "none",
        if_abs_pos_embed: bool = True,
        if_rope: bool = False,
        if_rope_residual: bool = False,
        flip_img_sequences_ratio: float = -1.0,
        if_bimamba: bool = False,
        bimamba_type: str = "v2",
        if_cls_token: bool = True,
        if_divide_out: bool = True,
        init_layer_scale: Optional[float] = None,
        use_double_cls_token: bool = False,
        use_middle_cls_token: bool = True,
        in_chans: Optional[int] = None,
        scan_backend: str = "auto",
        **kwargs,
    ):
        super().__init__()
        unknown = set(kwargs) - _IGNORED_OFFICIAL_KWARGS
        if unknown:
            raise TypeError(f"VisionMamba got unexpected keyword arguments {sorted(unknown)}")
        flags = {"if_rope": if_rope, "if_rope_residual": if_rope_residual, "if_bidirectional": if_bidirectional}
        for name, what in _UNSUPPORTED.items():
            if flags[name]:
                raise NotImplementedError(f"VisionMamba: {name}=True ({what}) is not supported; no released model uses it")
        if flip_img_sequences_ratio > 0:
            raise NotImplementedError("VisionMamba: flip_img_sequences_ratio > 0 (random sequence flips) is not supported")
        if if_bimamba:
            bimamba_type = "v1"  # as the official create_block does; BiMamba explains that it is not supported
        if final_pool_type not in ("none", "mean", "max", "all"):
            raise ValueError(f"final_pool_type must be 'none', 'mean', 'max' or 'all', got {final_pool_type!r}")
        if in_chans is not None and channels != 3 and in_chans != channels:
            raise ValueError(f"channels={channels} and in_chans={in_chans} disagree (they are the same argument)")
        in_chans = in_chans if in_chans is not None else channels

        self.residual_in_fp32 = residual_in_fp32
        self.fused_add_norm = fused_add_norm  # same math either way
        self.final_pool_type = final_pool_type
        self.if_abs_pos_embed = if_abs_pos_embed
        self.if_cls_token = if_cls_token
        self.use_double_cls_token = use_double_cls_token
        self.use_middle_cls_token = use_middle_cls_token
        if not if_cls_token:
            self.token_layout = "none"
        elif use_double_cls_token:
            self.token_layout = "double"
        else:
            self.token_layout = "middle" if use_middle_cls_token else "head"
        self.num_tokens = {"none": 0, "double": 2}.get(self.token_layout, 1)
        self.global_pool = "token" if if_cls_token else {"none": "last", "mean": "avg", "max": "max", "all": ""}[final_pool_type]
        self.num_classes = num_classes
        self.d_model = self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.grad_checkpointing = False

        # Parameters directly on the model lead the official state_dict: cls token(s), pos_embed.
        self.patch_embed = PatchEmbed(img_size, patch_size, stride, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        if self.token_layout == "double":
            self.cls_token_head = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.cls_token_tail = nn.Parameter(torch.zeros(1, 1, embed_dim))
        elif self.num_tokens:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_tokens, embed_dim)) if if_abs_pos_embed else None
        self.pos_drop = nn.Dropout(p=drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        # Stochastic depth (spec §3.4): block i drops the incoming output of block i-1 with rate [0] + dpr; the
        # model drops the last block's output with the full rate.
        dpr = [0.0] + torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        norm_cls = partial(RMSNorm, eps=norm_epsilon) if rms_norm else partial(nn.LayerNorm, eps=norm_epsilon)
        mixer_cls = partial(
            BiMamba, d_state=d_state, bimamba_type=bimamba_type, if_divide_out=if_divide_out,
            init_layer_scale=init_layer_scale, scan_backend=scan_backend, **(ssm_cfg or {}),
        )
        self.layers = nn.ModuleList(
            [
                VimBlock(embed_dim, mixer_cls(embed_dim, layer_idx=i), norm_cls(embed_dim), dpr[i], residual_in_fp32)
                for i in range(depth)
            ]
        )
        self.norm_f = norm_cls(embed_dim)
        self.feature_info = [dict(num_chs=embed_dim, reduction=stride, module=f"layers.{i}") for i in range(depth)]

        # Official initialisation (spec §6).
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        for p in (self.pos_embed, getattr(self, "cls_token", None), getattr(self, "cls_token_head", None),
                  getattr(self, "cls_token_tail", None)):
            if p is not None:
                trunc_normal_(p, std=0.02)
        self.apply(partial(_init_weights, n_layer=depth, **(initializer_cfg or {})))
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    # ---- timm model API ----------------------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """The official set: position embedding and class tokens (A_log / A_b_log are decayed, spec §9)."""
        return {"pos_embed", "cls_token", "cls_token_head", "cls_token_tail"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^cls_token|^pos_embed|^patch_embed",
            blocks=[(r"^layers\.(\d+)", None), (r"^norm_f", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New head; ``global_pool``: "token" (the class token(s), needs one), "avg", "last", "max" (head on every
        token, max of the logits) or "" (head on every token)."""
        if global_pool is not None:
            if global_pool not in ("token", "avg", "last", "max", ""):
                raise ValueError(f"global_pool must be 'token', 'avg', 'last', 'max' or '', got {global_pool!r}")
            if global_pool == "token" and not self.num_tokens:
                raise ValueError("global_pool='token' needs a class token (if_cls_token=True)")
            self.global_pool = global_pool
        self.num_classes = num_classes
        device = self.patch_embed.proj.weight.device
        self.head = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str, key: str = "model") -> None:
        """Load an official file strictly (timm's ``custom_load`` hook, used by ``pretrained=True``); a model built
        with another number of classes keeps its own head and takes everything else from the file."""
        from ..checkpoint import load_checkpoint

        own_head, classes = self.head, getattr(self, "pretrained_cfg", {}).get("num_classes", 1000)
        if not (isinstance(own_head, nn.Linear) and own_head.out_features == classes):
            self.head = nn.Linear(self.num_features, classes, device=self.patch_embed.proj.weight.device)
        try:
            load_checkpoint(self, checkpoint_path, key=key)
        finally:
            self.head = own_head

    # ---- forward -----------------------------------------------------------------------------------------------

    def _pos_embed_for(self, grid: Tuple[int, int]) -> Tensor:
        if tuple(grid) == tuple(self.patch_embed.grid_size):
            return self.pos_embed
        return resize_pos_embed(self.pos_embed, self.patch_embed.grid_size, grid, self.token_layout)

    def _embed(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """Images -> (token sequence with class token(s) and position embedding (B, L, D), patch grid)."""
        in_chans, (ph, pw) = self.patch_embed.proj.in_channels, self.patch_embed.patch_size
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != in_chans:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__} expects images (B, {in_chans}, H, W), got {shape}")
        if x.shape[2] < ph or x.shape[3] < pw:
            raise ValueError(f"{type(self).__name__}: images must be at least {ph}x{pw} pixels, got {tuple(x.shape[2:])}")
        x, grid = self.patch_embed(x)
        batch = x.shape[0]
        if self.token_layout == "double":
            tokens = torch.cat([self.cls_token_head, self.cls_token_tail], dim=1)
        elif self.num_tokens:
            tokens = self.cls_token
        else:
            tokens = x[:, :0]
        if self.pos_embed is not None:
            # adding the embedding to the patches and the tokens separately is the official add after insertion
            pos_patches, pos_tokens = _split_tokens(self._pos_embed_for(grid), self.token_layout)
            x = x + pos_patches
            tokens = tokens + pos_tokens
        x = _insert_tokens(x, tokens.expand(batch, -1, -1), self.token_layout)
        return self.pos_drop(x), grid

    def _layer(self, layer: nn.Module, hidden: Tensor, residual: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint(layer, hidden, residual, use_reentrant=False)
        return layer(hidden, residual)

    def _final_norm(self, hidden: Tensor, residual: Optional[Tensor]) -> Tensor:
        return add_norm(self.drop_path(hidden), residual, self.norm_f, self.residual_in_fp32)[0]

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> the normalised token sequence (B, L, D), class token(s) included."""
        hidden, residual = self._embed(x)[0], None
        for layer in self.layers:
            hidden, residual = self._layer(layer, hidden, residual)
        return self._final_norm(hidden, residual)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Read out (the official readout: the class token, or the pooling of ``final_pool_type``), then the head."""
        pool = self.global_pool
        if pool == "token":
            positions = _token_positions(self.token_layout, x.shape[1] - self.num_tokens)
            x = x[:, positions[0]] if len(positions) == 1 else (x[:, positions[0]] + x[:, positions[1]]) / 2
        elif pool == "avg":
            x = x.mean(dim=1)
        elif pool == "last":
            x = x[:, -1]
        if pre_logits:
            return x
        x = self.head(x)
        return x.max(dim=1)[0] if pool == "max" else x

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """The residual stream after the given blocks (residual + mixer output; ``norm`` applies norm_f), class
        token(s) removed: (B, D, gh, gw) for "NCHW", (B, M, D) for "NLC"; ``return_prefix_tokens`` pairs each with
        its class tokens (B, T, D). ``indices``: the last n blocks if an int, all if None (timm's convention)."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.layers), indices)
        hidden, grid = self._embed(x)
        residual, intermediates = None, []
        for i, layer in enumerate(self.layers[: max_index + 1] if stop_early else self.layers):
            hidden, residual = self._layer(layer, hidden, residual)
            if i in take:
                stream = (residual + hidden).to(hidden.dtype)
                intermediates.append(self.norm_f(stream).to(hidden.dtype) if norm else stream)
        outputs = []
        for t in intermediates:
            patches, prefix = _split_tokens(t, self.token_layout)
            if output_fmt == "NCHW":
                patches = patches.reshape(t.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()
            outputs.append((patches, prefix) if return_prefix_tokens else patches)
        if intermediates_only:
            return outputs
        return self._final_norm(hidden, residual), outputs

    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        take, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[: max_index + 1]
        self.feature_info = self.feature_info[: max_index + 1]
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take


def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: VisionMamba) -> Dict[str, Tensor]:
    """Map an official Vim state_dict onto ``model``: unwrap ``{'model': ...}`` and resize a position embedding
    trained at another resolution or stride (bicubic on the patch grid, class-token slot kept, spec §7)."""
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    out = dict(state_dict)
    pos, target = out.get("pos_embed"), getattr(model, "pos_embed", None)
    if (
        isinstance(pos, Tensor) and isinstance(target, Tensor) and pos.dim() == 3 and target.dim() == 3
        and pos.shape[2] == target.shape[2] and pos.shape[1] != target.shape[1]
    ):
        patches = pos.shape[1] - model.num_tokens
        side = math.isqrt(max(patches, 0))
        if side * side != patches:
            raise CheckpointError(
                f"cannot resize the checkpoint's pos_embed {tuple(pos.shape)}: {patches} patch positions (after "
                f"{model.num_tokens} class token(s)) are not a square grid"
            )
        out["pos_embed"] = resize_pos_embed(pos, (side, side), model.patch_embed.grid_size, model.token_layout)
    return out


VisionMamba.checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)
register_family("vim", VisionMamba)


# ---- the released models -----------------------------------------------------------------------------------------


def _cfg(hf_hub_id: str = "", hf_hub_filename: str = "", **kwargs) -> dict:
    # custom_load "hf": timm downloads the file and calls VisionMamba.load_pretrained (vssm's loader), since
    # timm's own loader refuses the pickled argparse.Namespace in the official files.
    return {
        "hf_hub_id": hf_hub_id,
        "hf_hub_filename": hf_hub_filename,
        "custom_load": "hf" if hf_hub_filename else False,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        **kwargs,
    }


_TINY, _SMALL, _BASE = "hustvl/Vim-tiny-midclstok", "hustvl/Vim-small-midclstok", "hustvl/Vim-base-midclstok"
_NAMES = {
    "tiny": "vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
    "tiny_s8": "vim_tiny_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
    "small": "vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
    "small_s8": "vim_small_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2",
    "base": "vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2",
}
default_cfgs = generate_default_cfgs(
    {
        _NAMES["tiny"] + ".in1k": _cfg(_TINY, "vim_t_midclstok_76p1acc.pth"),
        _NAMES["tiny_s8"] + ".in1k": _cfg(_TINY, "vim_t_midclstok_ft_78p3acc.pth"),
        _NAMES["small"] + ".in1k": _cfg(_SMALL, "vim_s_midclstok_80p5acc.pth"),
        _NAMES["small_s8"] + ".in1k": _cfg(_SMALL, "vim_s_midclstok_ft_81p6acc.pth"),
        # The file name of the base release is not known (spec §1): no download, pass the file to load_checkpoint.
        _NAMES["base"] + ".in1k": _cfg(notes=(f"official weights: https://huggingface.co/{_BASE}",)),
    }
)

# The arguments every released builder passes (spec §2, fixtures/keys/vim_*.json 'constructor_args').
_RELEASED = dict(
    patch_size=16, depth=24, d_state=16, rms_norm=True, residual_in_fp32=True, fused_add_norm=True,
    final_pool_type="mean", if_abs_pos_embed=True, if_rope=False, if_rope_residual=False, bimamba_type="v2",
    if_cls_token=True, if_divide_out=True, use_middle_cls_token=True,
)


def _create_vim(variant: str, pretrained: bool, config: dict, kwargs: dict) -> VisionMamba:
    if "channels" in kwargs:  # timm fills in_chans from the pretrained cfg; the official name wins
        kwargs["in_chans"] = kwargs.pop("channels")
    kwargs = dict(config, **kwargs)
    depth = kwargs.get("depth", 24)
    out_indices = tuple(range(depth // 4 - 1, depth, depth // 4)) if depth >= 4 else depth  # (5, 11, 17, 23)
    return build_model_with_cfg(
        VisionMamba, variant, pretrained, feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs
    )


@register_vssm_model("vim")
def vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Ti, 7,148,008 params, 76.1% ImageNet-1k top-1."""
    return _create_vim(_NAMES["tiny"], pretrained, dict(_RELEASED, embed_dim=192), kwargs)


@register_vssm_model("vim")
def vim_tiny_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Ti+ (stride 8, 730 tokens), 7,250,344 params, 78.3%."""
    return _create_vim(_NAMES["tiny_s8"], pretrained, dict(_RELEASED, embed_dim=192, stride=8), kwargs)


@register_vssm_model("vim")
def vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-S, 25,796,584 params, 80.5%."""
    return _create_vim(_NAMES["small"], pretrained, dict(_RELEASED, embed_dim=384), kwargs)


@register_vssm_model("vim")
def vim_small_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-S+ (stride 8, 730 tokens), 26,001,256 params, 81.6%."""
    return _create_vim(_NAMES["small_s8"], pretrained, dict(_RELEASED, embed_dim=384, stride=8), kwargs)


@register_vssm_model("vim")
def vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-B, 97,598,440 params, 81.9%."""
    return _create_vim(_NAMES["base"], pretrained, dict(_RELEASED, embed_dim=768), kwargs)
