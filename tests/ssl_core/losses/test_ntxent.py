"""NTXentLoss against SimCLR's eq. 1 written out view by view, plus its invariances and argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_core.losses import NTXentLoss


def ntxent_reference(z0: torch.Tensor, z1: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR eq. 1 with explicit sums: ℓ(i, j) = -log(exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ)), averaged over all
    2B views, where view i's positive j is the other view of the same image."""
    b = z0.shape[0]
    views = [z0[i] for i in range(b)] + [z1[i] for i in range(b)]
    views = [v / v.norm() for v in views]
    total = z0.new_zeros(())
    for i in range(2 * b):
        positive = (i + b) % (2 * b)
        denominator = z0.new_zeros(())
        for k in range(2 * b):
            if k != i:
                denominator = denominator + torch.exp(torch.dot(views[i], views[k]) / temperature)
        numerator = torch.exp(torch.dot(views[i], views[positive]) / temperature)
        total = total - torch.log(numerator / denominator)
    return total / (2 * b)


def _pair(b: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(b, d, generator=g, dtype=torch.float64)
    z1 = torch.randn(b, d, generator=g, dtype=torch.float64)
    return z0.requires_grad_(), z1.requires_grad_()


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("d", [3, 16])
@pytest.mark.parametrize("b", [2, 3, 8])
def test_matches_reference_value_and_gradients(b: int, d: int, temperature: float) -> None:
    z0, z1 = _pair(b, d, seed=b * 100 + d)
    loss = NTXentLoss(temperature)(z0, z1)
    expected = ntxent_reference(z0, z1, temperature)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)

    grads = torch.autograd.grad(loss, (z0, z1))
    expected_grads = torch.autograd.grad(expected, (z0, z1))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_correlated_views_give_lower_loss_than_unrelated_ones(temperature: float) -> None:
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(8, 32, generator=g)
    loss = NTXentLoss(temperature)
    close = loss(z0, z0 + 0.05 * torch.randn(8, 32, generator=g))
    unrelated = loss(z0, torch.randn(8, 32, generator=g))
    assert close < unrelated


@pytest.mark.parametrize("b", [2, 8])
def test_symmetric_in_the_two_views(b: int) -> None:
    z0, z1 = _pair(b, 16)
    loss = NTXentLoss(0.3)
    torch.testing.assert_close(loss(z0, z1), loss(z1, z0))


def test_invariant_to_permuting_pairs() -> None:
    z0, z1 = _pair(8, 16)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    loss = NTXentLoss(0.3)
    torch.testing.assert_close(loss(z0[perm], z1[perm]), loss(z0, z1))


@pytest.mark.parametrize(("scale0", "scale1"), [(2.0, 2.0), (0.01, 50.0)])
def test_invariant_to_positive_scaling(scale0: float, scale1: float) -> None:
    z0, z1 = _pair(8, 16)
    per_row = torch.linspace(0.5, 3.0, 8, dtype=torch.float64).unsqueeze(1)
    loss = NTXentLoss(0.3)
    torch.testing.assert_close(loss(scale0 * z0, scale1 * z1), loss(z0, z1))
    torch.testing.assert_close(loss(per_row * z0, z1), loss(z0, z1))


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("b", [2, 3, 8])
def test_aligned_pairs_with_orthogonal_negatives(b: int, temperature: float) -> None:
    """Both views equal a basis vector: the positive has similarity 1, the 2B-2 negatives 0."""
    z = torch.eye(b, 16)
    loss = NTXentLoss(temperature)(z, z.clone())
    expected = -math.log(math.exp(1 / temperature) / (math.exp(1 / temperature) + 2 * b - 2))
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)  # float32 log-softmax
    z0, z1 = _pair(b, 16)
    assert loss < NTXentLoss(temperature)(z0, z1)


def test_bf16_autocast_computes_the_loss_in_float32() -> None:
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(64, 128, generator=g)
    z1 = z0 + 0.5 * torch.randn(64, 128, generator=g)
    loss = NTXentLoss(0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(z0, z1)
    torch.testing.assert_close(mixed, loss(z0, z1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, -0.5, float("nan")])
def test_refuses_non_positive_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature)
