"""NegativeCosineSimilarity, BarlowTwinsLoss and VICRegLoss against their papers' equations written out
element by element, plus their invariances, ideal values, mixed-precision behaviour and argument checks."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import pytest
import torch
from torch import nn

from ssl_core.losses import BarlowTwinsLoss, NegativeCosineSimilarity, VICRegLoss

SHAPES = [(2, 1), (2, 5), (3, 4), (8, 16), (16, 3)]


# ---------------------------------------------------------------------------------------------------------------
# References: each written independently of the module, with explicit loops over samples and dimensions.
# ---------------------------------------------------------------------------------------------------------------


def negative_cosine_reference(p: torch.Tensor, z: torch.Tensor, form: str) -> torch.Tensor:
    """SimSiam eq. 1, D(p, z) = -p/||p|| · z/||z||, or BYOL eq. 2, ||p̄ - z̄||², averaged over the pairs."""
    b = p.shape[0]
    total = p.new_zeros(())
    for i in range(b):
        cos = torch.dot(p[i], z[i]) / (torch.sqrt(torch.dot(p[i], p[i])) * torch.sqrt(torch.dot(z[i], z[i])))
        total = total + (2 - 2 * cos if form == "byol" else -cos)
    return total / b


def barlow_twins_reference(z0: torch.Tensor, z1: torch.Tensor, lambda_offdiag: float,
                           eps: float = 1e-5) -> torch.Tensor:
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
            total = total + ((1 - c_ij) ** 2 if i == j else lambda_offdiag * c_ij ** 2)
    return total


def vicreg_reference(z0: torch.Tensor, z1: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
                     cov_weight: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg eqs. 1-6 with the two branches' variance terms added (not averaged):
    λ s(Z, Z') + μ [v(Z) + v(Z')] + ν [c(Z) + c(Z')]."""
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
    return sim_weight * s + var_weight * (v(z0) + v(z1)) + cov_weight * (c(z0) + c(z1))


def _pair(b: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float64 leaves; z1 is correlated with z0 and the columns have spreads from 0.3 to 2 so that VICReg's
    variance hinge is active on some dimensions and not on others."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.linspace(0.3, 2.0, d, dtype=torch.float64)
    z0 = torch.randn(b, d, generator=g, dtype=torch.float64) * spread
    z1 = 0.6 * z0 + 0.8 * torch.randn(b, d, generator=g, dtype=torch.float64) * spread
    return z0.requires_grad_(), z1.requires_grad_()


def _decorrelated(b: int, d: int, std: float, seed: int = 0) -> torch.Tensor:
    """(B, D), B > D, with zero-mean, mutually orthogonal columns of (unbiased) standard deviation ``std``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(x - x.mean(dim=0))  # columns stay zero-mean: combinations of centred columns
    return q * std * math.sqrt(b - 1)


def _assert_matches(loss: torch.Tensor, expected: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> None:
    """Value and gradients of the float32 module output against the float64 reference."""
    assert loss.dtype == torch.float32 and loss.shape == ()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(loss, inputs)
    expected_grads = torch.autograd.grad(expected, inputs)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# NegativeCosineSimilarity
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["simsiam", "byol"])
@pytest.mark.parametrize("b, d", SHAPES + [(1, 7)])
def test_negative_cosine_matches_reference_value_and_gradients(b: int, d: int,
                                                              form: Literal["simsiam", "byol"]) -> None:
    p, z = _pair(b, d, seed=b * 100 + d)
    loss = NegativeCosineSimilarity(form)(p, z)
    # The reference treats z as a constant: only p's gradient is compared.
    _assert_matches(loss, negative_cosine_reference(p, z.detach(), form), (p,))


def test_negative_cosine_target_gets_no_gradient() -> None:
    p, z = _pair(8, 16)
    for loss in (NegativeCosineSimilarity("simsiam"), NegativeCosineSimilarity("byol")):
        loss(p, z).backward()
        assert z.grad is None
        assert p.grad is not None and p.grad.abs().sum() > 0
        p.grad = None
    p, z = _pair(8, 16)
    (grad_z,) = torch.autograd.grad(NegativeCosineSimilarity()(p, z), (z,), allow_unused=True)
    assert grad_z is None


def test_negative_cosine_byol_form_is_two_plus_twice_simsiam() -> None:
    p, z = _pair(8, 16)
    simsiam = NegativeCosineSimilarity("simsiam")(p, z)
    byol = NegativeCosineSimilarity("byol")(p, z)
    torch.testing.assert_close(byol, 2 + 2 * simsiam)


@pytest.mark.parametrize("b, d", [(1, 3), (8, 16)])
def test_negative_cosine_is_minus_one_for_aligned_pairs(b: int, d: int) -> None:
    p, _ = _pair(b, d)
    scale = torch.linspace(0.1, 10.0, b, dtype=torch.float64).unsqueeze(1)
    for z in (p.detach().clone(), scale * p.detach()):
        assert NegativeCosineSimilarity("simsiam")(p, z).item() == pytest.approx(-1.0, abs=1e-6)
        assert NegativeCosineSimilarity("byol")(p, z).item() == pytest.approx(0.0, abs=1e-6)
    # ... which is the minimum: anti-aligned pairs give the maximum, random ones lie between.
    assert NegativeCosineSimilarity()(p, -p).item() == pytest.approx(1.0, abs=1e-6)
    assert NegativeCosineSimilarity("byol")(p, -p).item() == pytest.approx(4.0, abs=1e-5)
    _, z = _pair(b, d, seed=5)
    assert -1.0 < NegativeCosineSimilarity()(p, z).item() < 1.0


def test_negative_cosine_invariant_to_pair_order_and_per_row_scale() -> None:
    p, z = _pair(8, 16)
    loss = NegativeCosineSimilarity()
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss(p[perm], z[perm]), loss(p, z))
    per_row = torch.linspace(0.5, 3.0, 8, dtype=torch.float64).unsqueeze(1)
    torch.testing.assert_close(loss(per_row * p, z), loss(p, z))
    torch.testing.assert_close(loss(p, 7.0 * per_row * z), loss(p, z))


def test_negative_cosine_zero_row_has_zero_cosine() -> None:
    p = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    z = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    loss = NegativeCosineSimilarity()(p, z)
    assert loss.item() == pytest.approx(-0.5)
    assert torch.isfinite(torch.autograd.grad(NegativeCosineSimilarity()(p.requires_grad_(), z), p)[0]).all()


def test_negative_cosine_refuses_unknown_form() -> None:
    with pytest.raises(ValueError, match="form"):
        NegativeCosineSimilarity("simclr")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# BarlowTwinsLoss
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lambda_offdiag", [0.0, 5e-3, 1.0])
@pytest.mark.parametrize("b, d", SHAPES)
def test_barlow_twins_matches_reference_value_and_gradients(b: int, d: int, lambda_offdiag: float) -> None:
    z0, z1 = _pair(b, d, seed=b * 100 + d)
    loss = BarlowTwinsLoss(lambda_offdiag)(z0, z1)
    _assert_matches(loss, barlow_twins_reference(z0, z1, lambda_offdiag), (z0, z1))


@pytest.mark.parametrize("b, d", [(2, 5), (8, 16)])
def test_barlow_twins_symmetric_in_the_two_views(b: int, d: int) -> None:
    z0, z1 = _pair(b, d)
    loss = BarlowTwinsLoss(0.5)
    torch.testing.assert_close(loss(z0, z1), loss(z1, z0))


def test_barlow_twins_invariant_to_pair_order_and_per_dimension_affine_maps() -> None:
    z0, z1 = _pair(8, 16)
    loss = BarlowTwinsLoss(0.5)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss(z0[perm], z1[perm]), loss(z0, z1))
    scale = torch.linspace(0.5, 3.0, 16, dtype=torch.float64)
    shift = torch.linspace(-4.0, 4.0, 16, dtype=torch.float64)
    torch.testing.assert_close(loss(scale * z0 + shift, z1 - shift), loss(z0, z1), rtol=1e-4, atol=1e-4)


def test_barlow_twins_is_zero_for_equal_views_with_decorrelated_dimensions() -> None:
    z = _decorrelated(32, 8, std=1.0)
    for lambda_offdiag in (5e-3, 1.0):
        assert BarlowTwinsLoss(lambda_offdiag)(z, z.clone()).item() == pytest.approx(0.0, abs=1e-6)
    # Equal views with correlated dimensions pay only the off-diagonal term; unrelated views pay more.
    z0, z1 = _pair(8, 16)
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


# ---------------------------------------------------------------------------------------------------------------
# VICRegLoss
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (1.0, 0.0, 3.0), (0.0, 2.0, 0.0)])
@pytest.mark.parametrize("b, d", SHAPES)
def test_vicreg_matches_reference_value_and_gradients(b: int, d: int, weights: tuple[float, float, float]) -> None:
    z0, z1 = _pair(b, d, seed=b * 100 + d)
    loss = VICRegLoss(*weights)(z0, z1)
    _assert_matches(loss, vicreg_reference(z0, z1, *weights), (z0, z1))


@pytest.mark.parametrize("b, d", [(2, 5), (8, 16)])
def test_vicreg_symmetric_in_the_two_views(b: int, d: int) -> None:
    z0, z1 = _pair(b, d)
    loss = VICRegLoss()
    torch.testing.assert_close(loss(z0, z1), loss(z1, z0))


def test_vicreg_invariant_to_pair_order_and_common_shift() -> None:
    z0, z1 = _pair(8, 16)
    loss = VICRegLoss()
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss(z0[perm], z1[perm]), loss(z0, z1))
    shift = torch.linspace(-4.0, 4.0, 16, dtype=torch.float64)
    torch.testing.assert_close(loss(z0 + shift, z1 + shift), loss(z0, z1), rtol=1e-5, atol=1e-4)


def test_vicreg_is_zero_for_equal_views_with_wide_decorrelated_dimensions() -> None:
    z = _decorrelated(32, 8, std=2.0)
    assert VICRegLoss()(z, z.clone()).item() == pytest.approx(0.0, abs=1e-5)
    # Each term is non-negative, and any of them can be made positive alone.
    z0, z1 = _pair(8, 16)
    assert VICRegLoss(1.0, 0.0, 0.0)(z, z + 0.1).item() == pytest.approx(0.01, rel=1e-5)
    halved = VICRegLoss(0.0, 1.0, 0.0)(0.25 * z, 0.25 * z)  # std 0.5 on every dimension of both branches
    assert halved.item() == pytest.approx(2 * (1 - math.sqrt(0.25 + 1e-4)), rel=1e-5)
    assert VICRegLoss(0.0, 0.0, 1.0)(z0, z0.clone()) > 0


def test_vicreg_collapse_costs_both_variance_terms_added() -> None:
    """Constant embeddings: invariance and covariance vanish and each branch's variance term is 1 - sqrt(eps);
    the two are added (eq. 6), not averaged as in the official code, so the loss is 25·2·(1 - 0.01) = 49.5."""
    z0 = torch.ones(8, 6, requires_grad=True)
    loss = VICRegLoss()(z0, torch.ones(8, 6))
    assert loss.item() == pytest.approx(49.5, rel=1e-6)
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


# ---------------------------------------------------------------------------------------------------------------
# Shared behaviour: mixed precision and shape checks.
# ---------------------------------------------------------------------------------------------------------------

LOSSES = [
    pytest.param(lambda: NegativeCosineSimilarity("simsiam"), id="simsiam"),
    pytest.param(lambda: NegativeCosineSimilarity("byol"), id="byol"),
    pytest.param(lambda: BarlowTwinsLoss(5e-3), id="barlow_twins"),
    pytest.param(lambda: VICRegLoss(), id="vicreg"),
]


@pytest.mark.parametrize("make_loss", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bf16_autocast_computes_the_loss_in_float32(make_loss: Callable[[], nn.Module], dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(64, 128, generator=g)
    z1 = z0 + 0.5 * torch.randn(64, 128, generator=g)
    loss = make_loss()
    x0, x1 = z0.to(dtype), z1.to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(x0, x1)
    assert mixed.dtype == torch.float32
    # Same result as float32 on the same (possibly bf16-rounded) values ...
    torch.testing.assert_close(mixed, loss(x0.float(), x1.float()), rtol=1e-5, atol=1e-5)
    # ... and close to float32 on the unrounded values: only the inputs' rounding differs.
    torch.testing.assert_close(mixed, loss(z0, z1), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("make_loss", LOSSES)
@pytest.mark.parametrize("shape0, shape1", [
    ((4, 8), (4, 9)),  # dimensions differ
    ((4, 8), (5, 8)),  # batch sizes differ
    ((4, 8, 2), (4, 8, 2)),  # not 2-D
    ((8,), (8,)),  # not 2-D
])
def test_refuses_bad_shapes(make_loss: Callable[[], nn.Module], shape0: tuple[int, ...],
                            shape1: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="equal shape"):
        make_loss()(torch.randn(shape0), torch.randn(shape1))


@pytest.mark.parametrize("make_loss, b, message", [
    pytest.param(lambda: NegativeCosineSimilarity(), 0, "at least 1 pair", id="negative_cosine"),
    pytest.param(lambda: BarlowTwinsLoss(), 1, "at least 2 samples", id="barlow_twins"),
    pytest.param(lambda: VICRegLoss(), 1, "at least 2 samples", id="vicreg"),
])
def test_refuses_too_small_batches(make_loss: Callable[[], nn.Module], b: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_loss()(torch.randn(b, 8), torch.randn(b, 8))
