"""The selective scan on CPU through the numba kernels of vssm/ops/numba_scan.py: availability, argument
conversion and the output buffers."""
from __future__ import annotations

import functools
import importlib
import os
import weakref
from types import ModuleType
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["cpu_kernel_usable", "selective_scan_cpu_fwd", "selective_scan_cpu_bwd"]

# Freed scan outputs kept for reuse, at most this many bytes in all. A fresh multi-MB tensor page-faults on first
# touch (at VMamba-T stage-1 shapes, batch 8: +9.5 ms on a 2-core VM, half the kernel's time); a model calls the
# scan with the same shapes block after block, so a freed output is almost always the next one's buffer.
_POOL_BYTES = 256 << 20


@functools.lru_cache(maxsize=None)
def _kernels() -> Optional[ModuleType]:
    """vssm.ops.numba_scan, imported (and its kernels compiled or loaded from numba's cache) on first use; None
    without numba or with VSSM_DISABLE_NUMBA=1."""
    if os.environ.get("VSSM_DISABLE_NUMBA") == "1":
        return None
    try:
        return importlib.import_module("vssm.ops.numba_scan")
    except ImportError:
        return None


def cpu_kernel_usable(*tensors: Optional[Tensor]) -> bool:
    """Whether the numba kernels serve these inputs: CPU tensors, no float64 (the kernels are fp32), numba
    importable and VSSM_DISABLE_NUMBA unset."""
    present = [t for t in tensors if t is not None]
    if any(t.device.type != "cpu" or t.dtype == torch.float64 for t in present):
        return False
    return _kernels() is not None


class _OutputPool:
    """fp32 buffers handed out as numpy arrays and taken back when the tensor made from them is freed."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.free: Dict[int, List[np.ndarray]] = {}

    def take(self, shape) -> np.ndarray:
        count = int(np.prod(shape))
        try:  # one call, so that two threads cannot both take the last free buffer
            buf = self.free[count].pop()
        except (KeyError, IndexError):
            buf = np.empty(count, np.float32)
        out = buf.reshape(shape)  # a view: the pool hears of its death through the finalizer
        weakref.finalize(out, self._give_back, buf)
        return out

    def _give_back(self, buf: np.ndarray) -> None:
        held = sum(b.nbytes for buffers in self.free.values() for b in buffers)
        if held + buf.nbytes <= self.capacity:
            self.free.setdefault(buf.size, []).append(buf)


_POOL = _OutputPool(_POOL_BYTES)


def _as_f32_array(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).contiguous().numpy()


def selective_scan_cpu_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                           delta_bias: Optional[Tensor], delta_softplus: bool,
                           out_dtype: Optional[torch.dtype]) -> Tensor:
    """The selective scan forward (shapes as in :func:`vssm.ops.selective_scan`, B and C 4-D): y (batch, K*D, L)."""
    kernels = _kernels()
    y = _POOL.take(tuple(u.shape))
    across = kernels.across_channels(u.shape[-1], A.shape[1], u.shape[1] // B.shape[1])
    scan = kernels.scan_groups if across else kernels.scan_rows
    scan(*_kernel_args(kernels, u, delta, A, B, C, D, delta_bias), delta_softplus, y)
    return torch.from_numpy(y).to(out_dtype or u.dtype)


def _kernel_args(kernels: ModuleType, u, delta, A, B, C, D, delta_bias) -> List[np.ndarray]:
    """The scan's inputs as contiguous fp32 arrays (zeros for an absent D / delta_bias); also sets numba's thread
    count to torch's."""
    numba = kernels.numba
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    zeros = torch.zeros(u.shape[1], dtype=torch.float32) if D is None or delta_bias is None else None
    return [_as_f32_array(t) for t in (u, delta, A, B, C, zeros if D is None else D,
                                       zeros if delta_bias is None else delta_bias)]


def selective_scan_cpu_bwd(dout: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool) -> Tuple[Tensor, ...]:
    """Gradients (du, ddelta, dA, dB, dC, dD, ddelta_bias) in the inputs' dtypes; dD / ddelta_bias are fp32 (K*D,)
    when D / delta_bias are None (as the torch backend's)."""
    kernels = _kernels()
    batch, channels, _ = u.shape
    n_state = A.shape[1]
    du, ddelta = (torch.from_numpy(_POOL.take(tuple(u.shape))) for _ in range(2))
    dB, dC = torch.empty(B.shape), torch.empty(B.shape)
    dA = torch.empty(batch, channels, n_state)
    dD, dbias = torch.empty(batch, channels), torch.empty(batch, channels)
    across = kernels.across_channels(u.shape[-1], n_state, channels // B.shape[1])
    backward = kernels.scan_groups_backward if across else kernels.scan_rows_backward
    backward(*_kernel_args(kernels, u, delta, A, B, C, D, delta_bias), delta_softplus,
             _as_f32_array(dout), *(t.numpy() for t in (du, ddelta, dA, dB, dC, dD, dbias)))
    like = lambda t: torch.float32 if t is None else t.dtype  # noqa: E731
    return (du.to(u.dtype), ddelta.to(delta.dtype), dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
            dD.sum(0).to(like(D)), dbias.sum(0).to(like(delta_bias)))
