"""Direction scans concatenated into one sequence: the scan orders of MSVMamba's multi-scale 2D scan (MS2D).

:func:`cross_scan` stacks the four SS2D directions as K separate sequences. MSVMamba instead *concatenates* several
directions of one map into a single sequence that is scanned once with one parameter slot, so the SSM state runs
on from the end of one direction into the next (spec/msvmamba.md §3.2). These helpers unroll a map along a tuple
of directions, concatenated, and fold such a sequence back (the adjoint: each part un-scanned, the parts summed).

Directions (pixel (i, j) of an H x W map; row-major p = i*W + j, column-major q = j*H + i), the same four as
``cross_scan(order="cross2d")``:

- ``"row"``: row-major, s = p;            ``"row_rev"``: row-major reversed, s = HW-1-p;
- ``"col"``: column-major, s = q;         ``"col_rev"``: column-major reversed, s = HW-1-q.

MSVMamba scans ``MS_FULL_RES = ("row",)`` on the full-resolution map and ``MS_LOW_RES = ("row_rev", "col",
"col_rev")`` (length 3*h*w) on the downsampled one. Layouts as in :mod:`vssm.ops.scan_orders`: channel-first maps
(B, C, H, W) unroll to (B, C, n*L); channel-last maps (B, H, W, C) to (B, n*L, C).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor

from .scan_orders import scan_index_maps

__all__ = ["DIRECTIONS", "MS_FULL_RES", "MS_LOW_RES", "direction_scan", "direction_merge", "direction_index_map"]

# name -> (column-major?, reversed?); same order as cross_scan's "cross2d" directions 0..3
DIRECTIONS = {"row": (False, False), "col": (True, False), "row_rev": (False, True), "col_rev": (True, True)}
MS_FULL_RES: Tuple[str, ...] = ("row",)
MS_LOW_RES: Tuple[str, ...] = ("row_rev", "col", "col_rev")


def _check_directions(directions: Sequence[str], fn: str) -> None:
    if isinstance(directions, str) or not directions:
        raise ValueError(f"{fn}: directions must be a non-empty sequence of names from {sorted(DIRECTIONS)}")
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad:
        raise ValueError(f"{fn}: unknown direction(s) {bad}; expected names from {sorted(DIRECTIONS)}")


def direction_scan(x: Tensor, directions: Sequence[str], channel_last: bool = False) -> Tensor:
    """Unroll a map along each of ``directions`` and concatenate them into one sequence.

    (B, C, H, W) -> (B, C, n*H*W), or with ``channel_last`` (B, H, W, C) -> (B, n*H*W, C); n = len(directions).
    """
    _check_directions(directions, "direction_scan")
    if x.dim() != 4:
        layout = "(B, H, W, C)" if channel_last else "(B, C, H, W)"
        raise ValueError(f"direction_scan: expected a 4-D feature map {layout}, got shape {tuple(x.shape)}")
    s = 1 if channel_last else 2  # first spatial dim; the sequence dim after flattening
    row = x.flatten(s, s + 1)
    col = x.transpose(s, s + 1).flatten(s, s + 1) if any(DIRECTIONS[d][0] for d in directions) else None
    parts = []
    for name in directions:
        column_major, reverse = DIRECTIONS[name]
        seq = col if column_major else row
        parts.append(seq.flip(s) if reverse else seq)
    return torch.cat(parts, dim=s) if len(parts) > 1 else parts[0].contiguous()


def direction_merge(
    y: Tensor, height: int, width: int, directions: Sequence[str], channel_last: bool = False
) -> Tensor:
    """Fold a concatenated direction sequence back onto the map and sum the parts (adjoint of :func:`direction_scan`).

    (B, C, n*H*W) -> (B, C, H, W), or with ``channel_last`` (B, n*H*W, C) -> (B, H, W, C).
    """
    _check_directions(directions, "direction_merge")
    s = 1 if channel_last else 2
    length = height * width
    if y.dim() != 3 or y.shape[s] != len(directions) * length:
        layout = "(B, n*L, C)" if channel_last else "(B, C, n*L)"
        raise ValueError(
            f"direction_merge: expected {layout} with n*L = {len(directions)}*{height}*{width} = "
            f"{len(directions) * length}, got {tuple(y.shape)}"
        )
    # Sum the parts that share an unrolling first, so each transpose / unflatten happens once.
    by_layout = {False: None, True: None}
    for part, name in zip(y.split(length, dim=s), directions):
        column_major, reverse = DIRECTIONS[name]
        part = part.flip(s) if reverse else part
        by_layout[column_major] = part if by_layout[column_major] is None else by_layout[column_major] + part
    out = None
    if by_layout[False] is not None:
        out = by_layout[False].unflatten(s, (height, width))
    if by_layout[True] is not None:
        col = by_layout[True].unflatten(s, (width, height)).transpose(s, s + 1)
        out = col if out is None else out + col
    return out


def direction_index_map(directions: Sequence[str], height: int, width: int) -> Tensor:
    """(n*L,) long tensor with ``sequence[s] = x_flat_rowmajor[map[s]]``: the slow reference for
    :func:`direction_scan` (built from :func:`scan_index_maps`' cross2d maps)."""
    _check_directions(directions, "direction_index_map")
    maps = scan_index_maps("cross2d", height, width)  # row, col, row_rev, col_rev
    index = {name: k for k, name in enumerate(DIRECTIONS)}
    return torch.cat([maps[index[name]] for name in directions])
