"""Sharpness-aware minimisation (SAM; Foret et al., ICLR 2021) around any optimizer.

SAM takes each step with the gradient of the loss at the worst point of a small ball around the weights,
``w + rho * g / ||g||``, instead of at ``w``: two forward/backward passes per step. It was reported to help
attention-free and ViT-like models trained from scratch on small data more than CNNs (Chen et al., 2022), which is
the regime of vssm's small models on Fashion-MNIST (``vssm train --sam-rho``).

A training step with :class:`SharpnessAware`::

    loss.backward()            # gradient at w
    sam.ascend()               # w <- w + rho * g / ||g||
    optimizer.zero_grad()
    loss_fn(model(x)).backward()   # gradient at the perturbed weights
    sam.restore()              # w back, bit for bit
    optimizer.step()           # the step uses the perturbed gradient at w

Under DistributedDataParallel the first backward's all-reduce gives every process the same perturbation. With a
GradScaler the first gradient may be scaled: ``g / ||g||`` does not depend on the scale. An overflowed first
gradient (inf) makes the perturbed weights and so the second gradient non-finite: the scaler skips that step as it
would have skipped the plain one, and :meth:`restore` puts the weights back from a copy.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["SharpnessAware"]


class SharpnessAware:
    """Moves ``params`` to the sharpest point of a ball of radius ``rho`` (L2, all parameters together) and back."""

    def __init__(self, params: Iterable[Tensor], rho: float):
        if not rho > 0:
            raise ValueError(f"SAM radius rho must be > 0, got {rho}")
        self.params = [p for p in params if p.requires_grad]
        self.rho = float(rho)
        self._saved: Optional[Tuple[List[Tensor], List[Tensor]]] = None

    @torch.no_grad()
    def ascend(self) -> None:
        """``w <- w + rho * g / ||g||`` with the gradients now in ``.grad``; remembers ``w`` for :meth:`restore`."""
        if self._saved is not None:
            raise RuntimeError("SharpnessAware.ascend() called twice without restore()")
        live = [p for p in self.params if p.grad is not None]
        if not live:
            raise RuntimeError("SharpnessAware.ascend() needs gradients: call backward() first")
        grads = [p.grad for p in live]
        norm = torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(grads)]))
        scale = self.rho / (norm + 1e-12)
        self._saved = (live, [p.detach().clone() for p in live])
        torch._foreach_add_(live, torch._foreach_mul(grads, scale))

    @torch.no_grad()
    def restore(self) -> None:
        """Puts back the weights :meth:`ascend` moved (copies: exact, not ``w + e - e``)."""
        if self._saved is None:
            raise RuntimeError("SharpnessAware.restore() called without ascend()")
        live, saved = self._saved
        torch._foreach_copy_(live, saved)
        self._saved = None
