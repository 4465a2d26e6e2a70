"""Sharpness-aware minimisation (vssm.train.sam): the perturbed gradient against torch.func, exact restore,
overflowed gradients, misuse."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call, grad

from vssm.train.sam import SharpnessAware


def _model_and_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(7, 11), nn.Tanh(), nn.LayerNorm(11), nn.Linear(11, 5))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    model[2].bias.requires_grad_(False)  # frozen parameters are neither perturbed nor restored
    x = torch.randn(13, 7, generator=g)
    y = torch.randint(0, 5, (13,), generator=g)
    return model, x, y


@pytest.mark.parametrize("seed,rho", [(0, 0.05), (1, 0.5), (2, 2.0)])
def test_gradient_is_taken_at_the_sharpest_point_and_weights_come_back_exactly(seed, rho):
    model, x, y = _model_and_batch(seed)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    w = {n: p.detach().clone() for n, p in model.named_parameters()}

    def loss_of(trainable):
        return nn.functional.cross_entropy(functional_call(model, {**w, **trainable}, (x,)), y)

    # reference: g = dL/dw at w, then dL/dw at w + rho * g / ||g|| (the norm over all trainable parameters together)
    g0 = grad(loss_of)({n: w[n] for n in names})
    norm = torch.sqrt(sum((g0[n].double() ** 2).sum() for n in names))
    sharp = {n: w[n] + rho * g0[n] / norm for n in names}
    expected = grad(loss_of)(sharp)

    sam = SharpnessAware(model.parameters(), rho)
    nn.functional.cross_entropy(model(x), y).backward()
    sam.ascend()
    params = dict(model.named_parameters())
    for n in names:
        torch.testing.assert_close(params[n].detach(), sharp[n], rtol=1e-6, atol=1e-7)
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    sam.restore()
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), w[n]), f"{n} not restored bit for bit"
    for n in names:
        torch.testing.assert_close(params[n].grad, expected[n], rtol=1e-5, atol=1e-6)
    assert model[2].bias.grad is None


def test_overflowed_gradient_stays_non_finite_and_the_weights_come_back():
    """An overflowed fp16 step (inf in a gradient) must reach the GradScaler as non-finite, so it skips the step, and
    the weights must come back from the copy, not from w + e - e (inf - inf)."""
    model, x, y = _model_and_batch(3)
    w = [p.detach().clone() for p in model.parameters()]
    nn.functional.cross_entropy(model(x), y).backward()
    model[0].weight.grad[0, 0] = float("inf")
    sam = SharpnessAware(model.parameters(), 0.05)
    sam.ascend()
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    assert not all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    sam.restore()
    for p, p0 in zip(model.parameters(), w):
        assert torch.equal(p.detach(), p0)


def test_misuse_is_refused():
    model, x, y = _model_and_batch(4)
    for rho in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="rho must be > 0"):
            SharpnessAware(model.parameters(), rho)
    sam = SharpnessAware(model.parameters(), 0.05)
    with pytest.raises(RuntimeError, match="call backward"):
        sam.ascend()
    with pytest.raises(RuntimeError, match="without ascend"):
        sam.restore()
    nn.functional.cross_entropy(model(x), y).backward()
    sam.ascend()
    with pytest.raises(RuntimeError, match="twice"):
        sam.ascend()
