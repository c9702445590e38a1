"""BarlowTwinsLoss against the paper's formula written out with explicit loops, plus its properties and
argument checks."""

from __future__ import annotations

import pytest
import torch

from ssl_core.losses import BarlowTwinsLoss
from tests.ssl_core.losses.helpers import SHAPES, assert_matches_reference, correlated_pair, decorrelated


def barlow_twins_reference(
    z0: torch.Tensor, z1: torch.Tensor, lambda_offdiag: float, eps: float = 1e-5
) -> torch.Tensor:
    """Barlow Twins eq. 1: standardise each column with its biased variance (+ eps), C_ij = Σ_b a_bi a'_bj / B,
    L = Σ_i (1 - C_ii)² + λ Σ_{i≠j} C_ij²."""
    n, d = z0.shape

    def standardised_columns(z: torch.Tensor) -> list[torch.Tensor]:
        columns = []
        for j in range(d):
            col = z[:, j]
            mean = sum((col[k] for k in range(n)), z.new_zeros(())) / n
            var = sum(((col[k] - mean) ** 2 for k in range(n)), z.new_zeros(())) / n
            columns.append((col - mean) / torch.sqrt(var + eps))
        return columns

    a, b = standardised_columns(z0), standardised_columns(z1)
    total = z0.new_zeros(())
    for i in range(d):
        for j in range(d):
            c_ij = torch.dot(a[i], b[j]) / n
            total = total + ((1 - c_ij) ** 2 if i == j else lambda_offdiag * c_ij**2)
    return total


@pytest.mark.parametrize("lambda_offdiag", [0.0, 5e-3, 1.0])
@pytest.mark.parametrize(("b", "d"), SHAPES)
def test_barlow_twins_matches_reference_value_and_gradients(b: int, d: int, lambda_offdiag: float) -> None:
    z0, z1 = correlated_pair(b, d, seed=b * 100 + d)
    loss = BarlowTwinsLoss(lambda_offdiag)(z0, z1)
    assert_matches_reference(loss, barlow_twins_reference(z0, z1, lambda_offdiag), (z0, z1))


@pytest.mark.parametrize(("b", "d"), [(2, 5), (8, 16)])
def test_barlow_twins_symmetric_in_the_two_views(b: int, d: int) -> None:
    z0, z1 = correlated_pair(b, d)
    loss = BarlowTwinsLoss(0.5)
    torch.testing.assert_close(loss(z0, z1), loss(z1, z0))


def test_barlow_twins_invariant_to_pair_order_and_per_dimension_affine_maps() -> None:
    z0, z1 = correlated_pair(8, 16)
    loss = BarlowTwinsLoss(0.5)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss(z0[perm], z1[perm]), loss(z0, z1))
    scale = torch.linspace(0.5, 3.0, 16, dtype=torch.float64)
    shift = torch.linspace(-4.0, 4.0, 16, dtype=torch.float64)
    torch.testing.assert_close(loss(scale * z0 + shift, z1 - shift), loss(z0, z1), rtol=1e-4, atol=1e-4)


def test_barlow_twins_is_zero_for_equal_views_with_decorrelated_dimensions() -> None:
    z = decorrelated(32, 8, std=1.0)
    for lambda_offdiag in (5e-3, 1.0):
        assert BarlowTwinsLoss(lambda_offdiag)(z, z.clone()).item() == pytest.approx(0.0, abs=1e-6)
    # Equal views with correlated dimensions pay only the off-diagonal term; unrelated views pay more.
    z0, z1 = correlated_pair(8, 16)
    assert BarlowTwinsLoss(0.0)(z0, z0.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert 0 < BarlowTwinsLoss(5e-3)(z0, z0.clone()) < BarlowTwinsLoss(5e-3)(z0, z1)


def test_barlow_twins_collapsed_embeddings_cost_d_with_finite_gradients() -> None:
    z0 = torch.ones(8, 6, requires_grad=True)
    z1 = torch.full((8, 6), 3.0, requires_grad=True)
    loss = BarlowTwinsLoss()(z0, z1)
    assert loss.item() == pytest.approx(6.0)
    grads = torch.autograd.grad(loss, (z0, z1))
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("lambda_offdiag", [-1e-3, float("nan"), float("inf")])
def test_barlow_twins_refuses_bad_lambda(lambda_offdiag: float) -> None:
    with pytest.raises(ValueError, match="lambda_offdiag"):
        BarlowTwinsLoss(lambda_offdiag)


@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan")])
def test_barlow_twins_refuses_bad_eps(eps: float) -> None:
    with pytest.raises(ValueError, match="eps"):
        BarlowTwinsLoss(eps=eps)
