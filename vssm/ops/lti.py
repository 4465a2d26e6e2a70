"""Linear time-invariant SSMs (the background of the selective scan, seed eq. 1-3).

A continuous system h'(t) = A h(t) + B x(t), y(t) = C h(t) is discretised with step Δ by zero-order hold:
    Ā = exp(ΔA),  B̄ = (ΔA)^{-1} (exp(ΔA) - I) ΔB.
Because Ā, B̄, C do not depend on t, the recurrence h_t = Ā h_{t-1} + B̄ x_t, y_t = C h_t is a causal
convolution y = x * K̄ with the kernel K̄ = (C B̄, C Ā B̄, ..., C Ā^{L-1} B̄).
(The selective scan makes Δ, B, C input-dependent, which is what breaks the convolution view.)
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

__all__ = ["zoh_discretize", "lti_kernel", "lti_convolve", "lti_recurrence"]


def _check_system(A: Tensor, B: Tensor, C: Tensor) -> int:
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square (N, N) matrix, got shape {tuple(A.shape)}")
    n = A.shape[0]
    if tuple(B.shape) != (n,) or tuple(C.shape) != (n,):
        raise ValueError(f"B and C must have shape ({n},), got {tuple(B.shape)} and {tuple(C.shape)}")
    return n


def zoh_discretize(A: Tensor, B: Tensor, delta: float) -> Tuple[Tensor, Tensor]:
    """Zero-order-hold discretisation: (Ā (N, N), B̄ (N,)) for A (N, N), B (N,) and step Δ > 0.
    ΔA must be invertible (the formula divides by it)."""
    n = _check_system(A, B, B)
    if delta <= 0:
        raise ValueError(f"delta must be positive, got {delta}")
    dA = delta * A
    A_bar = torch.linalg.matrix_exp(dA)
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    B_bar = torch.linalg.solve(dA, (A_bar - eye) @ (delta * B))
    return A_bar, B_bar


def lti_kernel(A: Tensor, B: Tensor, C: Tensor, delta: float, length: int) -> Tensor:
    """K̄ (length,) = (C B̄, C Ā B̄, ..., C Ā^{length-1} B̄) for the ZOH-discretised system."""
    _check_system(A, B, C)
    A_bar, B_bar = zoh_discretize(A, B, delta)
    taps = []
    v = B_bar
    for _ in range(length):
        taps.append(C @ v)
        v = A_bar @ v
    return torch.stack(taps)


def lti_convolve(x: Tensor, kernel: Tensor) -> Tensor:
    """Causal convolution along the last dim: y_t = sum_{k<=t} kernel_k x_{t-k}. x (..., L), kernel (L,)."""
    length = x.shape[-1]
    if kernel.shape != (length,):
        raise ValueError(f"kernel must have shape ({length},) to match x's length, got {tuple(kernel.shape)}")
    n_fft = 2 * length  # zero-padding to 2L turns the circular FFT convolution into a linear one
    y = torch.fft.irfft(torch.fft.rfft(x, n=n_fft) * torch.fft.rfft(kernel, n=n_fft), n=n_fft)
    return y[..., :length]


def lti_recurrence(x: Tensor, A: Tensor, B: Tensor, C: Tensor, delta: float) -> Tensor:
    """The same system run as a recurrence: h_t = Ā h_{t-1} + B̄ x_t, y_t = C h_t. x (..., L)."""
    _check_system(A, B, C)
    A_bar, B_bar = zoh_discretize(A, B, delta)
    h = x.new_zeros(x.shape[:-1] + (A.shape[0],))
    ys = []
    for t in range(x.shape[-1]):
        h = h @ A_bar.T + x[..., t, None] * B_bar
        ys.append(h @ C)
    return torch.stack(ys, dim=-1)
