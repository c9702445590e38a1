"""VICRegLoss against the paper's eqs. 1-6 written out with explicit loops, plus its properties and argument
checks."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_core.losses import VICRegLoss
from tests.ssl_core.losses.helpers import SHAPES, assert_matches_reference, correlated_pair, decorrelated


def vicreg_reference(
    z0: torch.Tensor,
    z1: torch.Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VICReg eqs. 1-6 as the official code computes them, the two branches' variance terms averaged:
    λ s(Z, Z') + μ [v(Z) + v(Z')] / 2 + ν [c(Z) + c(Z')]."""
    n, d = z0.shape

    def centred_columns(z: torch.Tensor) -> list[torch.Tensor]:
        return [z[:, j] - sum(z[k, j] for k in range(n)) / n for j in range(d)]

    def v(z: torch.Tensor) -> torch.Tensor:
        cols = centred_columns(z)
        variances = [torch.dot(cols[j], cols[j]) / (n - 1) for j in range(d)]
        return sum((torch.clamp(1 - torch.sqrt(variances[j] + eps), min=0) for j in range(d)), z.new_zeros(())) / d

    def c(z: torch.Tensor) -> torch.Tensor:
        cols = centred_columns(z)
        total = z.new_zeros(())
        for i in range(d):
            for j in range(d):
                if i != j:
                    total = total + (torch.dot(cols[i], cols[j]) / (n - 1)) ** 2
        return total / d

    s = sum((z0[k, j] - z1[k, j]) ** 2 for k in range(n) for j in range(d)) / (n * d)
    return sim_weight * s + var_weight * (v(z0) + v(z1)) / 2 + cov_weight * (c(z0) + c(z1))


@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (1.0, 0.0, 3.0), (0.0, 2.0, 0.0)])
@pytest.mark.parametrize(("b", "d"), SHAPES)
def test_vicreg_matches_reference_value_and_gradients(b: int, d: int, weights: tuple[float, float, float]) -> None:
    z0, z1 = correlated_pair(b, d, seed=b * 100 + d)
    loss = VICRegLoss(*weights)(z0, z1)
    assert_matches_reference(loss, vicreg_reference(z0, z1, *weights), (z0, z1))


@pytest.mark.parametrize(("b", "d"), [(2, 5), (8, 16)])
def test_vicreg_symmetric_in_the_two_views(b: int, d: int) -> None:
    z0, z1 = correlated_pair(b, d)
    loss = VICRegLoss()
    torch.testing.assert_close(loss(z0, z1), loss(z1, z0))


def test_vicreg_invariant_to_pair_order_and_common_shift() -> None:
    z0, z1 = correlated_pair(8, 16)
    loss = VICRegLoss()
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss(z0[perm], z1[perm]), loss(z0, z1))
    shift = torch.linspace(-4.0, 4.0, 16, dtype=torch.float64)
    torch.testing.assert_close(loss(z0 + shift, z1 + shift), loss(z0, z1), rtol=1e-5, atol=1e-4)


def test_vicreg_is_zero_for_equal_views_with_wide_decorrelated_dimensions() -> None:
    z = decorrelated(32, 8, std=2.0)
    assert VICRegLoss()(z, z.clone()).item() == pytest.approx(0.0, abs=1e-5)
    # Each term is non-negative, and any of them can be made positive alone.
    z0, _z1 = correlated_pair(8, 16)
    assert VICRegLoss(1.0, 0.0, 0.0)(z, z + 0.1).item() == pytest.approx(0.01, rel=1e-5)
    halved = VICRegLoss(0.0, 1.0, 0.0)(0.25 * z, 0.25 * z)  # std 0.5 on every dimension of both branches
    assert halved.item() == pytest.approx(1 - math.sqrt(0.25 + 1e-4), rel=1e-5)
    assert VICRegLoss(0.0, 0.0, 1.0)(z0, z0.clone()) > 0


def test_vicreg_collapse_costs_the_mean_variance_term() -> None:
    """Constant embeddings: invariance and covariance vanish and each branch's variance term is 1 - sqrt(eps);
    the two are averaged as in the official code, so the loss is 25·(1 - 0.01) = 24.75."""
    z0 = torch.ones(8, 6, requires_grad=True)
    loss = VICRegLoss()(z0, torch.ones(8, 6))
    assert loss.item() == pytest.approx(24.75, rel=1e-6)
    assert torch.isfinite(torch.autograd.grad(loss, z0)[0]).all()


@pytest.mark.parametrize("name", ["sim_weight", "var_weight", "cov_weight"])
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_vicreg_refuses_bad_weights(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        VICRegLoss(**{name: value})


@pytest.mark.parametrize("eps", [0.0, -1e-4, float("nan")])
def test_vicreg_refuses_bad_eps(eps: float) -> None:
    with pytest.raises(ValueError, match="eps"):
        VICRegLoss(eps=eps)
