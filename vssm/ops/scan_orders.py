"""Scan orders: how a 2-D feature map is unrolled into K 1-D sequences for the selective scan, and how the K
scanned sequences are folded back (the adjoint: a plain sum over directions).

Orders (spec/vmamba.md §2.6, §2.8; pixel (h, w), p = h*W + w row-major, q = w*H + h column-major, L = H*W):

- ``cross2d`` (SS2D, K=4): row-major, column-major, reversed row-major, reversed column-major.
- ``unidi`` (ablation, K=4): four row-major copies.
- ``bidi`` (ablation, K=4): row-major, row-major, reversed row-major, reversed row-major.
- ``cascade`` (ablation, K=2 per pass): each row (``axis="rows"``) or each column (``axis="cols"``) is its own
  sequence, scanned forward and reversed; see :func:`cascade_scan`.

Layouts: channel-first maps (B, C, H, W) unroll to (B, K, C, L); channel-last maps (B, H, W, C) unroll to
(B, L, K, C). :func:`scan_index_maps` gives the index maps themselves (the slow reference the tests use).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

__all__ = ["SCAN_ORDERS", "cross_scan", "cross_merge", "scan_index_maps", "cascade_scan", "cascade_merge"]

# Per order, per direction k: (column-major?, reversed?).
_DIRECTIONS = {
    "cross2d": ((False, False), (True, False), (False, True), (True, True)),
    "unidi": ((False, False),) * 4,
    "bidi": ((False, False), (False, False), (False, True), (False, True)),
}
SCAN_ORDERS: Tuple[str, ...] = tuple(_DIRECTIONS)


def _check_order(order: str) -> None:
    if order not in _DIRECTIONS:
        raise ValueError(f"unknown scan order {order!r}; expected one of {SCAN_ORDERS} (cascade: use cascade_scan)")


def _check_map(x: Tensor, channel_last: bool, fn: str) -> None:
    if x.dim() != 4:
        layout = "(B, H, W, C)" if channel_last else "(B, C, H, W)"
        raise ValueError(f"{fn}: expected a 4-D feature map {layout}, got shape {tuple(x.shape)}")


def cross_scan(x: Tensor, order: str = "cross2d", channel_last: bool = False) -> Tensor:
    """Unroll a map into K = 4 sequences.

    (B, C, H, W) -> (B, 4, C, L), or with ``channel_last`` (B, H, W, C) -> (B, L, 4, C).
    """
    _check_order(order)
    _check_map(x, channel_last, "cross_scan")
    s = 1 if channel_last else 2  # first spatial dim; the sequence dim after flattening
    row = x.flatten(s, s + 1)
    col = x.transpose(s, s + 1).flatten(s, s + 1)
    seqs = []
    for column_major, reverse in _DIRECTIONS[order]:
        seq = col if column_major else row
        seqs.append(seq.flip(s) if reverse else seq)
    return torch.stack(seqs, dim=2 if channel_last else 1)


def cross_merge(ys: Tensor, height: int, width: int, order: str = "cross2d", channel_last: bool = False) -> Tensor:
    """Fold K = 4 scanned sequences back onto the map and sum them (the adjoint of :func:`cross_scan`).

    (B, 4, C, L) -> (B, C, H, W), or with ``channel_last`` (B, L, 4, C) -> (B, H, W, C).
    """
    _check_order(order)
    k_dim, s = (2, 1) if channel_last else (1, 2)  # s: the sequence dim once k is removed
    if ys.dim() != 4 or ys.shape[k_dim] != 4 or ys.shape[s if channel_last else 3] != height * width:
        layout = "(B, L, 4, C)" if channel_last else "(B, 4, C, L)"
        raise ValueError(
            f"cross_merge: expected {layout} with L = {height}*{width} = {height * width}, got {tuple(ys.shape)}"
        )
    # Sum the sequences that share an unrolling first, so each transpose / unflatten happens once.
    by_layout = {False: None, True: None}
    for y, (column_major, reverse) in zip(ys.unbind(k_dim), _DIRECTIONS[order]):
        y = y.flip(s) if reverse else y
        by_layout[column_major] = y if by_layout[column_major] is None else by_layout[column_major] + y
    out = by_layout[False].unflatten(s, (height, width))
    if by_layout[True] is not None:
        out = out + by_layout[True].unflatten(s, (width, height)).transpose(s, s + 1)
    return out


def scan_index_maps(order: str, height: int, width: int) -> Tensor:
    """(K, L) long tensor with ``sequence_k[i] = x_flat_rowmajor[maps[k, i]]``; the reference for cross_scan."""
    _check_order(order)
    p = torch.arange(height * width)
    q = torch.arange(height * width).view(height, width).t().reshape(-1)  # q-th element = pixel w*H+h -> h*W+w
    if order == "cross2d":
        maps = (p, q, p.flip(0), q.flip(0))
    elif order == "unidi":
        maps = (p, p, p, p)
    else:
        maps = (p, p, p.flip(0), p.flip(0))
    return torch.stack(maps)


def cascade_scan(x: Tensor, axis: str = "rows", channel_last: bool = False) -> Tensor:
    """Unroll every row (or column) as its own sequence, forward and reversed (K = 2).

    (B, C, H, W) -> rows: (B*H, 2, C, W), cols: (B*W, 2, C, H); with ``channel_last`` the input is (B, H, W, C)
    and the output (B*H, W, 2, C) or (B*W, H, 2, C).
    """
    _check_map(x, channel_last, "cascade_scan")
    if axis not in ("rows", "cols"):
        raise ValueError(f"cascade_scan: axis must be 'rows' or 'cols', got {axis!r}")
    if channel_last:
        x = x.permute(0, 3, 1, 2)
    if axis == "cols":
        x = x.transpose(2, 3)
    seqs = x.permute(0, 2, 1, 3).flatten(0, 1)  # (B*H, C, W)
    out = torch.stack((seqs, seqs.flip(-1)), dim=1)  # (B*H, 2, C, W)
    return out.permute(0, 3, 1, 2) if channel_last else out


def cascade_merge(ys: Tensor, batch: int, axis: str = "rows", channel_last: bool = False) -> Tensor:
    """Inverse of :func:`cascade_scan`: sum the forward and reversed scans back onto the map (B, C, H, W)
    (channel-last: (B, H, W, C))."""
    if axis not in ("rows", "cols"):
        raise ValueError(f"cascade_merge: axis must be 'rows' or 'cols', got {axis!r}")
    if channel_last:
        ys = ys.permute(0, 2, 3, 1)  # (B*H, 2, C, W)
    if ys.dim() != 4 or ys.shape[1] != 2 or ys.shape[0] % batch:
        raise ValueError(f"cascade_merge: expected (batch*lines, 2, C, length) scans, got {tuple(ys.shape)}")
    y = ys[:, 0] + ys[:, 1].flip(-1)  # (B*H, C, W)
    y = y.unflatten(0, (batch, -1)).permute(0, 2, 1, 3)  # (B, C, H, W)
    if axis == "cols":
        y = y.transpose(2, 3)
    return y.permute(0, 2, 3, 1) if channel_last else y
