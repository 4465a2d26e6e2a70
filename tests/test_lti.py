"""LTI background (seed eq. 1-3): the ZOH kernel K̄ convolved with x equals the recurrence."""
import pytest
import torch

from vssm.ops import lti_convolve, lti_kernel, lti_recurrence, zoh_discretize


def random_system(n, seed):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    A = q @ torch.diag(-torch.rand(n, generator=g, dtype=torch.float64) - 0.1) @ q.T  # stable, non-diagonal
    return A, torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("n,length,delta", [(1, 10, 0.5), (4, 64, 0.1), (8, 129, 1.3)])
def test_convolution_equals_recurrence(n, length, delta):
    A, B, C = random_system(n, seed=n)
    x = torch.randn(3, length, dtype=torch.float64)
    kernel = lti_kernel(A, B, C, delta, length)
    torch.testing.assert_close(lti_convolve(x, kernel), lti_recurrence(x, A, B, C, delta), rtol=1e-10, atol=1e-10)


def test_zoh_scalar_closed_form():
    a, b, delta = -0.7, 1.3, 0.25
    A_bar, B_bar = zoh_discretize(torch.tensor([[a]], dtype=torch.float64), torch.tensor([b], dtype=torch.float64), delta)
    expected_a = torch.exp(torch.tensor(delta * a, dtype=torch.float64))
    torch.testing.assert_close(A_bar[0, 0], expected_a)
    torch.testing.assert_close(B_bar[0], (expected_a - 1) / a * b)  # (ΔA)^-1 (e^{ΔA} - 1) ΔB


def test_bad_arguments():
    with pytest.raises(ValueError, match="square"):
        lti_kernel(torch.randn(2, 3), torch.randn(2), torch.randn(2), 0.1, 4)
    with pytest.raises(ValueError, match="delta must be positive"):
        zoh_discretize(-torch.eye(2), torch.randn(2), 0.0)
    with pytest.raises(ValueError, match="kernel must have shape"):
        lti_convolve(torch.randn(5), torch.randn(4))
