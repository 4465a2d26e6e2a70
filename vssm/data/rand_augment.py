"""RandAugment on batches of device tensors, with the meaning timm gives a ``rand-...`` policy string.

timm's RandAugment (``--auto-augment rand-m9-mstd0.5-inc1``) runs PIL operations image by image, which would cost
far more than a small model's step on 28 px images. Here every image of a batch draws its own operations and
magnitudes, and each operation runs once over the whole batch: the images that did not draw it keep their pixels
(``torch.where``), so a batch never waits for the GPU.

What carries over from timm, per image and per layer: one of the 15 operations drawn uniformly (with replacement
across layers), applied with probability ``p``, at magnitude ``m`` (out of 10) plus Gaussian noise of std ``mstd``
(uniform in [0, m] when ``mstd`` > 100), clipped to [0, ``mmax``]; the same magnitude-to-argument maps, random signs
and PIL semantics (uint8 levels after every operation, PIL's rounding, equalisation and sharpening). What differs:
geometric operations sample bilinearly and fill with black, the background of Fashion-MNIST and of the shifts, where
timm picks bilinear or bicubic at random and fills with the dataset mean.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2.functional import equalize_image

__all__ = ["RandAugmentPolicy", "rand_augment_ops", "op_argument", "apply_op", "affine_map", "LEVELS"]

LEVELS = 10.0  # magnitudes are out of 10, as in timm

_PLAIN_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
              "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_INCREASING_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                   "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                   "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def rand_augment_ops(increasing: bool) -> List[str]:
    """timm's RandAugment operation list (``inc1``: the variants whose severity grows with the magnitude)."""
    return list(_INCREASING_OPS if increasing else _PLAIN_OPS)


@dataclass(frozen=True)
class RandAugmentPolicy:
    magnitude: float = LEVELS
    num_layers: int = 2
    prob: float = 0.5
    magnitude_std: float = 0.0
    magnitude_max: Optional[float] = None
    increasing: bool = False

    @property
    def ops(self) -> List[str]:
        return rand_augment_ops(self.increasing)

    @classmethod
    def parse(cls, policy: str) -> "RandAugmentPolicy":
        """``rand`` followed by dash-separated ``m<int>``, ``n<int>``, ``p<float>``, ``mstd<float>``, ``mmax<int>``,
        ``inc<0|1>`` in any order (timm's defaults: m10, n2, p0.5, mstd0, inc0)."""
        sections = policy.split("-")
        if sections[0] != "rand":
            raise ValueError(
                f"--auto-augment {policy!r}: Fashion-MNIST's tensor loader runs RandAugment policies only "
                f"('rand-m9-mstd0.5-inc1' and the like); AutoAugment, AugMix and 3-Augment policies need an "
                f"ImageFolder tree (timm's per-image transforms), or use 'none'")
        kwargs: Dict[str, object] = {}
        for section in sections[1:]:
            match = re.fullmatch(r"(mstd|mmax|inc|m|n|p)(\d+(?:\.\d*)?)", section)
            if match is None:
                raise ValueError(
                    f"--auto-augment {policy!r}: cannot read {section!r}; a RandAugment policy is 'rand' followed "
                    f"by m<magnitude>, n<layers>, p<probability>, mstd<std>, mmax<max>, inc<0|1>, e.g. "
                    f"'rand-m9-mstd0.5-inc1' (timm's transform sets 't...' are ImageFolder-only)")
            key, value = match.groups()
            number = float(value)
            if key == "mstd":
                kwargs["magnitude_std"] = math.inf if number > 100 else number
            elif key == "mmax":
                kwargs["magnitude_max"] = float(int(number))
            elif key == "inc":
                kwargs["increasing"] = bool(int(number))
            elif key == "m":
                kwargs["magnitude"] = float(int(number))
            elif key == "n":
                kwargs["num_layers"] = int(number)
            else:
                kwargs["prob"] = number
        result = cls(**kwargs)
        if not 0.0 <= result.prob <= 1.0:
            raise ValueError(f"--auto-augment {policy!r}: p is a probability in [0, 1], got {result.prob:g}")
        return result

    def draw(self, n: int, generator: torch.Generator, device: torch.device) -> Dict[str, Tensor]:
        """Per image and layer: the operation (index into :attr:`ops`), whether it applies, its magnitude (noise
        added and clipped) and its sign. A fixed number of draws, whatever the outcome."""
        u = torch.rand((n, self.num_layers, 4), generator=generator, device=device)
        noise = torch.randn((n, self.num_layers), generator=generator, device=device)
        count = len(self.ops)
        if self.magnitude_std == math.inf:
            magnitude = u[..., 3] * self.magnitude
        else:
            magnitude = self.magnitude + self.magnitude_std * noise
        return {
            "ra_op": (u[..., 0] * count).long().clamp_(max=count - 1),
            "ra_apply": u[..., 1] < self.prob,
            "ra_sign": torch.where(u[..., 2] > 0.5, -1.0, 1.0),
            "ra_magnitude": magnitude.clamp(0.0, self.magnitude_max or LEVELS),
        }

    def apply(self, x: Tensor, params: Dict[str, Tensor]) -> Tensor:
        """``x``: (B, C, H, W) in [0, 1] on the uint8 grid -> the same, each image through its own layers.

        Every image goes through one resampling per layer (the identity map where it drew no geometric operation,
        which returns its pixels exactly) and every pixel operation runs on the whole batch: hundreds of small
        tensor operations per batch, whatever its size. On a GPU, fuse them with ``torch.compile`` (as
        ``TensorAugment(compile_rand_augment=True)`` and ``vssm train --compile`` do): eager, their launches cost
        a small model about a quarter of its training speed."""
        ops = self.ops
        levels = x.mul(255).round_()
        for layer in range(self.num_layers):
            op = torch.where(params["ra_apply"][:, layer], params["ra_op"][:, layer], -1)  # -1: no operation
            sign, magnitude = params["ra_sign"][:, layer], params["ra_magnitude"][:, layer]
            every = torch.stack([op_argument(name, magnitude, sign) for name in ops], dim=1)
            arg = every.gather(1, op.clamp(min=0)[:, None])[:, 0]
            out = _warp(levels, affine_map(op, arg, ops, levels.shape[-2:]))
            for k, name in enumerate(ops):
                if name not in _GEOMETRIC:
                    out = torch.where((op == k)[:, None, None, None], apply_op(name, levels, arg), out)
            levels = out
        return levels.div_(255)


def op_argument(name: str, magnitude: Tensor, sign: Tensor) -> Tensor:
    """timm's magnitude-to-argument map of operation ``name``, per image: degrees, shear factor, fraction of the
    image, bits kept, threshold, added level or enhancement factor (0 where the operation takes none)."""
    level = magnitude / LEVELS
    if name == "Rotate":
        return level * 30.0 * sign
    if name in ("ShearX", "ShearY"):
        return level * 0.3 * sign
    if name in ("TranslateXRel", "TranslateYRel"):
        return level * 0.45 * sign
    if name == "Posterize":
        return (level * 4).floor()
    if name == "PosterizeIncreasing":
        return 4 - (level * 4).floor()
    if name == "Solarize":
        return (level * 256).floor().clamp(max=256)
    if name == "SolarizeIncreasing":
        return 256 - (level * 256).floor().clamp(max=256)
    if name == "SolarizeAdd":
        return (level * 110).floor().clamp(max=128)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return level * 1.8 + 0.1
    if name.endswith("Increasing"):  # the four enhancements
        return (1.0 + level * 0.9 * sign).clamp(min=0.1)
    return torch.zeros_like(magnitude)


def apply_op(name: str, levels: Tensor, arg: Tensor) -> Tensor:
    """One non-geometric operation on (B, C, H, W) uint8 levels held as float, with per-image ``arg`` (B,)."""
    a = arg[:, None, None, None]
    if name == "AutoContrast":
        lo = levels.amin(dim=(-2, -1), keepdim=True)
        hi = levels.amax(dim=(-2, -1), keepdim=True)
        # PIL's lookup table, int(level * scale + offset) in double precision, so that exact levels land where PIL's
        # do; a division, since torch computes 255.0 / t as 255.0 * (1 / t) and rounds twice
        scale = torch.full_like(hi, 255.0, dtype=torch.float64).div_((hi - lo).clamp(min=1.0))
        stretched = (levels.double() * scale - lo * scale).floor().clamp(0, 255).to(levels.dtype)
        return torch.where(hi > lo, stretched, levels)
    if name == "Equalize":  # torchvision's batched kernel follows PIL's lookup table
        return equalize_image(levels.to(torch.uint8)).to(levels.dtype)
    if name == "Invert":
        return 255.0 - levels
    if name.startswith("Posterize"):
        bits = a.clamp(0, 8)
        step = torch.pow(2.0, 8 - bits)
        return levels - torch.remainder(levels, step)
    if name.startswith("Solarize") and name != "SolarizeAdd":
        return torch.where(levels >= a, 255.0 - levels, levels)
    if name == "SolarizeAdd":
        return torch.where(levels < 128, (levels + a).clamp(max=255), levels)
    # ImageEnhance: blend a degenerate image towards / past the input; PIL truncates the blended levels
    if name.startswith("Color"):
        if levels.shape[1] == 1:
            return levels
        degenerate = _grey(levels).expand_as(levels)
    elif name.startswith("Contrast"):
        mean = _grey(levels).mean(dim=(-3, -2, -1), keepdim=True)
        degenerate = (mean + 0.5).floor().expand_as(levels)
    elif name.startswith("Brightness"):
        degenerate = torch.zeros_like(levels)
    elif name.startswith("Sharpness"):
        degenerate = _smooth(levels)
    else:
        raise ValueError(f"unknown RandAugment operation {name!r}")
    return (degenerate + a * (levels - degenerate)).clamp(0, 255).add_(1e-3).floor_()


def _grey(levels: Tensor) -> Tensor:
    """PIL's ``convert("L")``: ITU-R 601-2 luma, rounded; a grey image is its own."""
    if levels.shape[1] == 1:
        return levels
    r, g, b = levels.unbind(1)
    return ((r * 299 + g * 587 + b * 114) / 1000).add_(0.5).floor_()[:, None]


def _smooth(levels: Tensor) -> Tensor:
    """PIL's ``ImageFilter.SMOOTH`` (3x3, centre 5, others 1, over 13), rounded; the border keeps its pixels.
    Built from a 3x3 box sum: writing into a kernel tensor element by element would synchronise the GPU."""
    box = F.avg_pool2d(levels, 3, stride=1).mul_(9).round_()
    smooth = (box + 4 * levels[..., 1:-1, 1:-1]).div_(13).add_(0.5).floor_()
    h, w = levels.shape[-2:]
    rows = torch.arange(h, device=levels.device)
    cols = torch.arange(w, device=levels.device)
    inner = ((rows > 0) & (rows < h - 1))[:, None] & ((cols > 0) & (cols < w - 1))[None, :]
    return torch.where(inner, F.pad(smooth, (1, 1, 1, 1)), levels)


def affine_map(op: Tensor, arg: Tensor, ops: Sequence[str], size: Tuple[int, int]) -> Tensor:
    """(B, 2, 3): for each image, its geometric operation ``ops[op]`` at argument ``arg`` as the map from an output
    pixel position to the input position, in pixels with pixel centres at +0.5 (PIL's affine data, ``Image.rotate``
    included); the identity where ``op`` is not a geometric operation (or -1)."""
    h, w = size

    def arg_of(name: str) -> Tensor:
        return torch.where(op == ops.index(name), arg, 0.0)

    angle = torch.deg2rad(arg_of("Rotate"))  # counter-clockwise about the image centre
    cos, sin = torch.cos(angle), torch.sin(angle)
    cx, cy = w / 2.0, h / 2.0
    rows = ((cos, arg_of("ShearX") - sin, cx - cos * cx + sin * cy + arg_of("TranslateXRel") * w),
            (sin + arg_of("ShearY"), cos, cy - sin * cx - cos * cy + arg_of("TranslateYRel") * h))
    return torch.stack([torch.stack(row, dim=1) for row in rows], dim=1)


def _warp(levels: Tensor, inverse: Tensor) -> Tensor:
    """Bilinear resampling of every image through its own inverse map (B, 2, 3)."""
    h, w = levels.shape[-2:]
    (a, b, c), (d, e, f) = inverse[:, 0].unbind(1), inverse[:, 1].unbind(1)
    # the same map in grid_sample's coordinates (-1 and 1 at the outer pixel edges): x_pixel = w * (x_unit + 1) / 2
    theta = torch.stack([
        torch.stack([a, b * h / w, a + b * h / w + 2 * c / w - 1], dim=1),
        torch.stack([d * w / h, e, d * w / h + e + 2 * f / h - 1], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(levels.shape), align_corners=False)
    # as PIL: a sample point outside the image is black, one inside interpolates between the nearest pixels
    inside = (grid.abs() <= 1).all(dim=-1)[:, None]
    out = F.grid_sample(levels, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.where(inside, out.add_(0.5).floor_().clamp_(0, 255), 0.0)
