"""The selective scan as an attention-like matrix, and activation maps; the ``vssm attnmap`` command
(spec/vmamba.md §7.2; the seed's eq. 16-19).

For one direction k of an SS2D layer and one channel e (sequence positions i, j in scan order; N = d_state):

    Δ_t      = softplus(δ_t + bias_e)                          the layer's own step sizes
    S_i      = Σ_{t ≤ i} Δ_t                                    cumulative step
    w_n(i,j) = exp(A_{e,n} · (S_i − S_j))  for j ≤ i, else 0     decay from j to i (= Π_{t=j+1..i} exp(Δ_t A_{e,n}))
    M_e[i,j] = Σ_n C_n[i] · w_n(i,j) · B_n[j]                   Q = C, K = B, decays w
    y_e[i]   = Σ_j M_e[i,j] · V_e[j] + D_e · u_e[i],   V_e = Δ·u

which is exactly the scan's output. The exponent is a *difference* of cumulative sums, never a ratio of
exp(+cumsum) products, so nothing overflows: A ≤ 0 and S_i ≥ S_j make every factor ≤ 1. The matrix is built in
float64 and checked against the scan output the layer really produced (captured during its forward).

Modes (what the official tool calls them): ``CwBw`` (the matrix above, default), ``CwBdtw`` (M·Δ_j: the kernel on
u itself), ``CB`` (C·B, no decay), ``CBdt``, ``ww`` (decays only, Σ_n w_n). The shown matrix is the mean over the
layer's channels. The activation map of a query pixel is its row, moved from scan order to pixel order with
:func:`vssm.ops.scan_index_maps` (any H x W, not only square maps); "all" sums the four directions' maps.

Differences from the official tool, on purpose: images are normalised with the model's own statistics (ImageNet
mean/std for every VMamba model; the official tool used mean 0.5 / std 0.25); non-square maps work; the rollout
normalises each row by its own sum (the official code divides column j by row j's sum).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..ops.scan_orders import scan_index_maps
from ..ops.selective_scan import register_backend, selective_scan
from .common import (
    add_model_kwargs_argument,
    create_analysis_model,
    load_images,
    model_input_size,
    model_mean_std,
    pyplot,
    save_figure,
)

__all__ = [
    "ScanCall",
    "capture_scans",
    "scan_matrix_rows",
    "scan_matrix",
    "direction_maps",
    "rollout",
    "find_ss2d",
    "add_arguments",
    "main",
]

MODES = ("CwBw", "CwBdtw", "CB", "CBdt", "ww")
_SOFTPLUS_THRESHOLD = 20.0  # torch's softplus default and the official kernel's
_BUDGET = 1 << 23  # float64 elements of one (channels, rows, L) temporary
MAX_FULL_LENGTH = 4096  # full L x L matrices up to this sequence length (64 x 64 maps)


# --- capturing the scan of a layer --------------------------------------------------------------------------------


@dataclass
class ScanCall:
    """The arguments and output of one selective-scan call (batch element kept), plus the map it came from."""

    u: Tensor
    delta: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    D: Optional[Tensor]
    delta_bias: Optional[Tensor]
    delta_softplus: bool
    y: Tensor
    height: int = 0
    width: int = 0
    order: str = "cross2d"

    @property
    def groups(self) -> int:
        return self.B.shape[1]

    @property
    def length(self) -> int:
        return self.u.shape[-1]


_CAPTURE_BACKEND = "analysis-capture"
_ACTIVE: List[Tuple[List[ScanCall], str, dict]] = []


def _capture_backend(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype):
    calls, backend, meta = _ACTIVE[-1]
    y = selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype, backend=backend)
    keep = lambda t: None if t is None else t.detach().clone()  # noqa: E731
    calls.append(
        ScanCall(keep(u), keep(delta), keep(A), keep(B), keep(C), keep(D), keep(delta_bias), bool(delta_softplus),
                 keep(y), meta.get("height", 0), meta.get("width", 0), meta.get("order", "cross2d"))
    )
    return y


register_backend(_CAPTURE_BACKEND, _capture_backend)


@contextlib.contextmanager
def capture_scans(layers: Sequence[nn.Module]) -> Iterator[Dict[nn.Module, List[ScanCall]]]:
    """Record every selective scan that ``layers`` (SS2D modules, or any module with a ``scan_backend`` attribute)
    run inside the block: ``with capture_scans([ss2d]) as calls: model(x)``, then ``calls[ss2d]``.

    It works through the public backend registry: each layer's ``scan_backend`` is switched to a recording backend
    that calls the layer's own backend and keeps copies of the arguments and the output. Nothing else changes.
    """
    records: Dict[nn.Module, List[ScanCall]] = {}
    saved: Dict[nn.Module, str] = {}
    handles = []
    for layer in layers:
        if not hasattr(layer, "scan_backend"):
            raise TypeError(f"{type(layer).__name__} has no scan_backend attribute; it does not run a selective scan")
        records[layer] = []
        saved[layer] = layer.scan_backend
        meta: dict = {"order": getattr(getattr(layer, "variant", None), "scan_order", "cross2d")}

        def pre_hook(module, args, layer=layer, meta=meta):
            x = args[0]
            if getattr(module, "channel_first", False):
                meta["height"], meta["width"] = x.shape[2], x.shape[3]
            else:
                meta["height"], meta["width"] = x.shape[1], x.shape[2]
            _ACTIVE.append((records[layer], saved[layer], meta))

        def post_hook(module, args, output):
            _ACTIVE.pop()

        handles.append(layer.register_forward_pre_hook(pre_hook))
        handles.append(layer.register_forward_hook(post_hook))
        layer.scan_backend = _CAPTURE_BACKEND
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()
        for layer, backend in saved.items():
            layer.scan_backend = backend


# --- the attention-like matrix --------------------------------------------------------------------------------------


@dataclass
class MatrixRows:
    """Rows of the channel-mean matrix of one direction, and how well the matrix reproduces the scan output."""

    rows: Tensor  # (R, L) float64, mean over the group's channels
    row_index: Tensor  # (R,) scan positions
    max_abs_error: float  # max |M V + D u - y| over the group's channels and the rows
    max_abs_y: float


def scan_matrix_rows(
    call: ScanCall,
    group: int,
    rows: Optional[Tensor] = None,
    batch: int = 0,
    mode: str = "CwBw",
    budget: int = _BUDGET,
) -> MatrixRows:
    """Rows ``rows`` (scan positions; default all) of the attention-like matrix of group (direction) ``group``,
    averaged over its channels, in float64, with the reconstruction error of the scan output on those rows."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    f64 = torch.float64
    groups, length = call.groups, call.length
    size = call.u.shape[1] // groups
    ch = slice(group * size, (group + 1) * size)
    u = call.u[batch, ch].to(f64)
    dt = call.delta[batch, ch].to(f64)
    if call.delta_bias is not None:
        dt = dt + call.delta_bias[ch].to(f64)[:, None]
    if call.delta_softplus:
        dt = F.softplus(dt, threshold=_SOFTPLUS_THRESHOLD)
    a = call.A[ch].to(f64)  # (size, N)
    b = call.B[batch, group].to(f64)  # (N, L)
    c = call.C[batch, group].to(f64)
    d = call.D[ch].to(f64) if call.D is not None else torch.zeros(size, dtype=f64)
    y = call.y[batch, ch].to(f64)
    s = torch.cumsum(dt, dim=-1)  # (size, L)
    row_index = torch.arange(length) if rows is None else torch.as_tensor(rows).long().view(-1)
    causal = torch.arange(length)[None, :] <= row_index[:, None]  # (R, L)
    v = dt * u  # (size, L)

    total = torch.zeros(len(row_index), length, dtype=f64)
    max_err = 0.0
    n_state = a.shape[1]
    chunk = max(1, budget // max(1, len(row_index) * length))
    decayed = mode in ("CwBw", "CwBdtw", "ww")
    for c0 in range(0, size, chunk):
        cs = slice(c0, min(size, c0 + chunk))
        gap = (s[cs, row_index, None] - s[cs, None, :]).clamp_(min=0)  # (c, R, L): S_i - S_j >= 0 where j <= i
        exact = None  # the CwBw matrix: y_i = sum_j M_ij (dt_j u_j) + D u_i
        shown = None  # the matrix of the requested mode
        for n in range(n_state):
            qk = c[n, row_index, None] * b[n, None, :]  # (R, L) C_i B_j
            w = torch.mul(gap, a[cs, n, None, None]).exp_()  # decays, all <= 1 for A <= 0
            if mode == "ww":
                shown = w.clone() if shown is None else shown.add_(w)
            w.mul_(qk)
            exact = w if exact is None else exact.add_(w)
            if mode in ("CB", "CBdt"):
                shown = qk.expand_as(gap).clone() if shown is None else shown.add_(qk)
        exact.mul_(causal)
        y_hat = torch.einsum("crl,cl->cr", exact, v[cs]).addcmul_(d[cs, None], u[cs][:, row_index])
        max_err = max(max_err, float((y_hat - y[cs][:, row_index]).abs().max()))
        if decayed and mode != "ww":
            shown = exact
        else:
            shown.mul_(causal)
        if mode in ("CwBdtw", "CBdt"):
            shown = shown.mul_(dt[cs, None, :])
        total += shown.sum(0)
    return MatrixRows(total / size, row_index, max_err, float(y[:, row_index].abs().max()))


def scan_matrix(call: ScanCall, group: int, batch: int = 0, mode: str = "CwBw") -> MatrixRows:
    """The full (L, L) channel-mean matrix of one direction, in scan order (lower triangular)."""
    if call.length > MAX_FULL_LENGTH:
        raise ValueError(
            f"the full matrix of a {call.length}-long sequence is too large; use a smaller image or a later stage "
            f"(full matrices up to L = {MAX_FULL_LENGTH}); activation maps of single queries work at any size"
        )
    return scan_matrix_rows(call, group, None, batch, mode)


def _inverse(index: Tensor) -> Tensor:
    inv = torch.empty_like(index)
    inv[index] = torch.arange(len(index))
    return inv


def direction_maps(
    call: ScanCall, query: Tuple[int, int], batch: int = 0, mode: str = "CwBw"
) -> Tuple[List[np.ndarray], List[float]]:
    """Activation map (H, W) of the query pixel (row, col) for every direction of an SS2D scan, in pixel order, and
    each direction's relative reconstruction error of the scan output (on the query's row)."""
    h, w = call.height, call.width
    if h * w != call.length:
        raise ValueError(f"scan length {call.length} does not match the {h}x{w} map")
    maps = scan_index_maps(call.order, h, w)  # sequence_k[i] = pixel maps[k, i]
    qy, qx = query
    if not (0 <= qy < h and 0 <= qx < w):
        raise ValueError(f"query ({qy}, {qx}) is outside the {h}x{w} feature map")
    pixel = qy * w + qx
    out, errors = [], []
    for k in range(call.groups):
        inv = _inverse(maps[k])
        result = scan_matrix_rows(call, k, inv[pixel : pixel + 1], batch, mode)
        row = result.rows[0]  # over scan positions j
        out.append(row[inv].view(h, w).numpy())  # pixel p gets the entry of its scan position
        errors.append(result.max_abs_error / max(result.max_abs_y, 1e-30))
    return out, errors


def pixel_matrix(call: ScanCall, group: int, batch: int = 0, mode: str = "CwBw") -> Tuple[np.ndarray, np.ndarray, float]:
    """(scan-order matrix, the same in pixel (row-major) order, relative reconstruction error) of one direction."""
    result = scan_matrix(call, group, batch, mode)
    inv = _inverse(scan_index_maps(call.order, call.height, call.width)[group])
    scan_order = result.rows
    pixel_order = scan_order[inv][:, inv]
    return scan_order.numpy(), pixel_order.numpy(), result.max_abs_error / max(result.max_abs_y, 1e-30)


def rollout(matrices: Sequence[np.ndarray], query: int) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema) of a query over blocks given in forward order (pixel-order L x L
    matrices): each |A| is made row-stochastic (every row divided by **its own** sum), mixed with the identity,
    P = (A + I) / 2, and the products are chained. Returns the query's row of P_n ... P_1 (L,)."""
    vec = None
    for a in reversed(list(matrices)):
        a = np.abs(np.asarray(a, dtype=np.float64))
        sums = a.sum(axis=-1, keepdims=True)
        a = np.divide(a, sums, out=np.zeros_like(a), where=sums > 0)
        p = 0.5 * (a + np.eye(a.shape[0]))
        vec = p[query].copy() if vec is None else vec @ p
    return vec


# --- softmax attention of timm peers (Swin windows, ViT) ------------------------------------------------------------


def _softmax_probs(attn: nn.Module, x: Tensor, mask: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Head-mean attention probabilities (B_, N, N) of a timm Attention / WindowAttention on its input, and the
    module output rebuilt from them (to check them against the real output)."""
    b_, n, _ = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(b_, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    if hasattr(attn, "_get_rel_pos_bias"):
        logits = logits + attn._get_rel_pos_bias()
    if mask is not None:
        windows = mask.shape[0]
        logits = (logits.view(b_ // windows, windows, heads, n, n) + mask[None, :, None]).view(b_, heads, n, n)
    probs = logits.softmax(-1)
    out = (probs @ v).transpose(1, 2).reshape(b_, n, -1)
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(x).sigmoid()
    if hasattr(attn, "norm"):
        out = attn.norm(out)
    return probs.mean(1), attn.proj(out)


@contextlib.contextmanager
def _capture_attention(attn: nn.Module) -> Iterator[dict]:
    store: dict = {}

    def pre(module, args, kwargs):
        store["x"] = args[0].detach()
        mask = kwargs.get("mask", args[1] if len(args) > 1 else None)
        store["mask"] = mask.detach() if isinstance(mask, Tensor) else None

    def post(module, args, kwargs, output):
        store["out"] = output.detach()

    handles = [attn.register_forward_pre_hook(pre, with_kwargs=True), attn.register_forward_hook(post, with_kwargs=True)]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def _swin_pixel_matrix(block: nn.Module, probs: Tensor, height: int, width: int) -> np.ndarray:
    """Scatter Swin's per-window probabilities (nW, N, N) of batch element 0 into a pixel-order (L, L) matrix,
    undoing the cyclic shift and dropping padded positions."""
    wh, ww = block.window_size
    sh, sw = block.shift_size
    hp, wp = -(-height // wh) * wh, -(-width // ww) * ww
    windows = (hp // wh) * (wp // ww)
    probs = probs[:windows]
    # shifted (padded) grid coordinates of every window slot -> original pixel, -1 for padding
    ys = torch.arange(hp).view(hp // wh, wh)
    xs = torch.arange(wp).view(wp // ww, ww)
    slot_y = ys[:, None, :, None].expand(hp // wh, wp // ww, wh, ww).reshape(windows, wh * ww)
    slot_x = xs[None, :, None, :].expand(hp // wh, wp // ww, wh, ww).reshape(windows, wh * ww)
    valid = (slot_y < height) & (slot_x < width)
    pixel = ((slot_y + sh) % height) * width + (slot_x + sw) % width
    pixel = torch.where(valid, pixel, torch.full_like(pixel, -1))
    mat = torch.zeros(height * width, height * width, dtype=torch.float64)
    for wdx in range(windows):
        p = pixel[wdx]
        keep = p >= 0
        mat[p[keep][:, None], p[keep][None, :]] = probs[wdx][keep][:, keep].double()
    return mat.numpy()


# --- locating layers -------------------------------------------------------------------------------------------------


def find_ss2d(model: nn.Module, stage: int, block: int) -> nn.Module:
    """The SS2D of ``model.layers[stage].blocks[block]`` (VMamba-style hierarchical models)."""
    try:
        blk = model.layers[stage].blocks[block]
    except (AttributeError, IndexError, TypeError) as err:
        raise ValueError(f"{type(model).__name__} has no layers[{stage}].blocks[{block}]") from err
    layer = getattr(blk, "op", None)
    if layer is None or not hasattr(layer, "scan_backend"):
        raise ValueError(f"layers[{stage}].blocks[{block}] has no SS2D (`op`) to analyse")
    return layer


def _find_attention(model: nn.Module, stage: int, block: int) -> Tuple[nn.Module, nn.Module, str]:
    """(block, attention module, kind) of a timm Swin (layers[stage].blocks[block]) or ViT (blocks[block])."""
    layers = getattr(model, "layers", None)
    if layers is not None:
        try:
            blk = layers[stage].blocks[block]
        except (IndexError, AttributeError, TypeError) as err:
            raise ValueError(f"{type(model).__name__} has no layers[{stage}].blocks[{block}]") from err
        if hasattr(blk, "attn") and hasattr(blk, "window_size"):
            return blk, blk.attn, "swin"
    blocks = getattr(model, "blocks", None)
    if blocks is not None and block < len(blocks) and hasattr(blocks[block], "attn"):
        return blocks[block], blocks[block].attn, "vit"
    raise ValueError(f"don't know where the attention of {type(model).__name__} is (supported: VMamba SS2D, timm "
                     f"Swin, timm ViT / DeiT)")


# --- command line ------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="vmamba_tiny_s1l8", help="a VMamba model, or a timm Swin / ViT")
    add_model_kwargs_argument(parser)
    parser.add_argument("--checkpoint", default=None, help="official or vssm checkpoint (default: random init)")
    parser.add_argument("--image", default="fashion-mnist",
                        help="an image file, or 'fashion-mnist' (a test image; pick it with --index)")
    parser.add_argument("--index", type=int, default=0, help="which Fashion-MNIST test image")
    parser.add_argument("--size", type=int, nargs="+", default=[512], help="input size S or H W (official: 512)")
    parser.add_argument("--stage", type=int, default=2, help="stage index (official: 2)")
    parser.add_argument("--block", type=int, default=1, help="block index within the stage (official: 1)")
    parser.add_argument("--direction", type=int, default=0, help="scan direction of the full-matrix figure (0-3)")
    parser.add_argument("--query", type=float, nargs=2, default=None, metavar=("Y", "X"),
                        help="query position: feature-map cell (integers) or fractions of the height / width "
                             "(e.g. 0.5 0.5); default the centre")
    parser.add_argument("--mode", choices=MODES, default="CwBw",
                        help="CwBw: Q=C, K=B with decays, V=Δu (default); CwBdtw: the kernel on u; CB; CBdt; ww")
    parser.add_argument("--display", choices=DISPLAYS, default="signed",
                        help="signed: diverging colours centred at 0, clipped at the 99th percentile of |m| (default); "
                             "minmax: min-max normalised like the official figures")
    parser.add_argument("--rollout", action="store_true", help="also the attention rollout over the stage's blocks "
                                                                 "up to --block")
    parser.add_argument("--out", default="attnmap", help="output folder")


def _query_cell(query: Optional[Sequence[float]], height: int, width: int) -> Tuple[int, int]:
    if query is None:
        return height // 2, width // 2
    qy, qx = query
    if float(qy).is_integer() and float(qx).is_integer():
        return int(qy), int(qx)
    return min(height - 1, int(qy * height)), min(width - 1, int(qx * width))


def _load_image(args, model) -> Tuple[Tensor, Tensor]:
    size = tuple(args.size) * (2 if len(args.size) == 1 else 1)
    mean, std = model_mean_std(model)
    in_chans = model_input_size(model)[0]
    if args.image.lower().replace("_", "-") in ("fashion-mnist", "fashionmnist"):
        images = load_images("fashion-mnist", args.index + 1, size, mean, std, in_chans, shuffle=False)
        for _ in range(args.index):
            next(images)
        return next(images)
    return next(load_images(args.image, 1, size, mean, std, in_chans, shuffle=False))


def _norm01(m: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (the official ``_norm``)."""
    lo, hi = float(np.min(m)), float(np.max(m))
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


DISPLAYS = ("signed", "minmax")


def _show(ax, data: np.ndarray, display: str, **kwargs):
    """``minmax``: (m - min) / (max - min) with 'jet' (the official look); ``signed``: a diverging map centred at 0,
    limits +-(99th percentile of |m|) so a few large entries (the query's own term) do not hide the rest."""
    if display == "minmax":
        return ax.imshow(_norm01(data), cmap="jet", vmin=0, vmax=1, interpolation="nearest", **kwargs)
    limit = float(np.percentile(np.abs(data), 99)) or float(np.abs(data).max()) or 1.0
    return ax.imshow(data, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest", **kwargs)


def _draw_query(ax, qy: int, qx: int, image_h: int, image_w: int, height: int, width: int) -> None:
    from matplotlib.patches import Rectangle

    sy, sx = image_h / height, image_w / width
    ax.add_patch(Rectangle((qx * sx - 0.5, qy * sy - 0.5), sx, sy, fill=False, edgecolor="red", linewidth=1.5))


def _panel_figure(image: Tensor, panels: List[Tuple[str, np.ndarray]], query: Tuple[int, int], title: str, path: str,
                  display: str = "signed"):
    plt = pyplot()
    n = len(panels) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.0), squeeze=False)
    img = image.numpy()
    ih, iw = img.shape[:2]
    axes[0][0].imshow(img)
    axes[0][0].set_title("input + query", fontsize=8)
    for ax, (label, data) in zip(axes[0][1:], panels):
        h, w = data.shape
        ax.imshow(img, alpha=0.35)
        _show(ax, data, display, alpha=0.7, extent=(-0.5, iw - 0.5, ih - 0.5, -0.5))
        ax.set_title(label, fontsize=8)
    for ax in axes[0]:
        data_h, data_w = panels[0][1].shape
        _draw_query(ax, query[0], query[1], ih, iw, data_h, data_w)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=8)
    return save_figure(fig, path)


def _matrix_figure(mats: List[Tuple[str, np.ndarray]], title: str, path: str, display: str = "signed"):
    plt = pyplot()
    fig, axes = plt.subplots(1, len(mats), figsize=(3.6 * len(mats), 3.8), squeeze=False)
    for ax, (label, m) in zip(axes[0], mats):
        _show(ax, m, display)
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("source j", fontsize=8)
        ax.set_ylabel("output i", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=8)
    return save_figure(fig, path)


def main(args: argparse.Namespace) -> int:
    size = tuple(args.size) * (2 if len(args.size) == 1 else 1)
    model = create_analysis_model(args.model, checkpoint=args.checkpoint, img_size=size, **args.model_kwargs)
    x, shown = _load_image(args, model)
    os.makedirs(args.out, exist_ok=True)
    summary: dict = {"model": args.model, "checkpoint": args.checkpoint, "image": args.image, "input": list(x.shape[1:]),
                     "stage": args.stage, "block": args.block, "mode": args.mode,
                     "normalisation": {"mean": list(model_mean_std(model)[0]), "std": list(model_mean_std(model)[1])}}
    try:
        layer = find_ss2d(model, args.stage, args.block)
    except ValueError:
        layer = None
    if layer is not None:
        return _main_ssm(args, model, layer, x, shown, summary)
    try:
        blk, attn, kind = _find_attention(model, args.stage, args.block)
    except ValueError as err:
        print(f"vssm attnmap: {err}", file=sys.stderr)
        return 2
    return _main_softmax(args, model, blk, attn, kind, x, shown, summary)


def _main_ssm(args, model, layer, x, shown, summary) -> int:
    stage_layers = [find_ss2d(model, args.stage, b) for b in range(args.block + 1)] if args.rollout else [layer]
    with torch.no_grad(), capture_scans(stage_layers) as records:
        model(x)
    from ..layers.ss2d import SS2D

    call = records[layer][0]
    if not isinstance(layer, SS2D) or call.order not in ("cross2d", "unidi", "bidi") or len(records[layer]) != 1:
        print(f"vssm attnmap: {type(layer).__name__} (scan order {call.order!r}, {len(records[layer])} scan call(s)) is "
              f"not a single 2-D unrolling this tool can map back; supported: VMamba's SS2D with the cross2d, unidi "
              f"or bidi orders", file=sys.stderr)
        return 2
    h, w = call.height, call.width
    qy, qx = _query_cell(args.query, h, w)
    maps, errors = direction_maps(call, (qy, qx), mode=args.mode)
    summary.update({"feature_map": [h, w], "query": [qy, qx], "d_state": int(call.A.shape[1]),
                    "channels_per_direction": int(call.u.shape[1] // call.groups),
                    "relative_error_per_direction": errors})
    panels = [(f"direction {k}", m) for k, m in enumerate(maps)] + [("all (sum)", np.sum(maps, axis=0))]
    if args.rollout and h * w > MAX_FULL_LENGTH:
        print(f"vssm attnmap: no rollout: it needs full {h * w}x{h * w} matrices (at most L = {MAX_FULL_LENGTH}); "
              f"use a smaller image or a later stage", file=sys.stderr)
    if args.rollout and h * w <= MAX_FULL_LENGTH:
        mats = []
        for blk_layer in stage_layers:
            c = records[blk_layer][0]
            mats.append(sum(pixel_matrix(c, k, mode=args.mode)[1] for k in range(c.groups)))
        panels.append((f"rollout blocks 0-{args.block}", rollout(mats, qy * w + qx).reshape(h, w)))
    name = f"{args.model} stage {args.stage} block {args.block}"
    _panel_figure(shown, panels, (qy, qx), f"{name}: activation of query ({qy}, {qx}) on the {h}x{w} map, mode "
                  f"{args.mode}, display {args.display}", os.path.join(args.out, "activation.png"), args.display)
    files = ["activation.png"]
    if h * w <= MAX_FULL_LENGTH:
        k = args.direction
        total, errs, scan_m = None, [], None
        for j in range(call.groups):
            scan_j, pix, e = pixel_matrix(call, j, mode=args.mode)
            scan_m = scan_j if j == k else scan_m
            errs.append(e)
            total = pix if total is None else total + pix
        _matrix_figure([(f"direction {k}, scan order (causal)", scan_m), ("4 directions summed, pixel order", total)],
                       f"{name}: {args.mode} matrix, channel mean; max |MV + Du - y| / max |y| = {max(errs):.1e}",
                       os.path.join(args.out, f"matrix_k{k}.png"), args.display)
        files.append(f"matrix_k{k}.png")
        summary["matrix_relative_error"] = max(errs)
    summary["files"] = files
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    worst = max(errors)
    print(f"{name}: feature map {h}x{w}, query ({qy}, {qx}); the matrix reproduces the scan output to a relative "
          f"{worst:.1e}; wrote {', '.join(os.path.join(args.out, f) for f in files)}")
    return 0


def _main_softmax(args, model, blk, attn, kind, x, shown, summary) -> int:
    with torch.no_grad(), _capture_attention(attn) as store:
        model(x)
    with torch.no_grad():
        probs, rebuilt = _softmax_probs(attn, store["x"], store.get("mask"))
    err = float((rebuilt - store["out"]).abs().max() / store["out"].abs().max().clamp_min(1e-30))
    if kind == "swin":
        h, w = blk.input_resolution if not getattr(blk, "dynamic_mask", False) else (None, None)
        if h is None:
            raise ValueError("Swin with a dynamic mask is not supported; build it for the image size")
        matrix = _swin_pixel_matrix(blk, probs, h, w)
        label = f"window attention (window {blk.window_size}, shift {blk.shift_size})"
    else:
        prefix = getattr(model, "num_prefix_tokens", 1)
        grid = model.patch_embed.grid_size if hasattr(model.patch_embed, "grid_size") else None
        h, w = grid if grid is not None else (int((probs.shape[-1] - prefix) ** 0.5),) * 2
        matrix = probs[0, prefix:, prefix:].double().numpy()
        label = "global attention (patch tokens)"
    qy, qx = _query_cell(args.query, h, w)
    activation = matrix[qy * w + qx].reshape(h, w)
    summary.update({"feature_map": [h, w], "query": [qy, qx], "kind": kind, "relative_error": err})
    name = f"{args.model} " + (f"stage {args.stage} block {args.block}" if kind == "swin" else f"block {args.block}")
    _panel_figure(shown, [(label, activation)], (qy, qx),
                  f"{name}: softmax attention of query ({qy}, {qx}), head mean, display {args.display}",
                  os.path.join(args.out, "activation.png"), args.display)
    files = ["activation.png"]
    if h * w <= MAX_FULL_LENGTH:
        _matrix_figure([("pixel order", matrix)], f"{name}: attention matrix, head mean (rebuilt output error "
                       f"{err:.1e})", os.path.join(args.out, "matrix.png"), args.display)
        files.append("matrix.png")
    summary["files"] = files
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"{name}: {h}x{w} tokens, query ({qy}, {qx}); probabilities rebuild the attention output to a relative "
          f"{err:.1e}; wrote {', '.join(os.path.join(args.out, f) for f in files)}")
    return 0
