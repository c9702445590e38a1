"""NegativeCosineSimilarity (SimSiam and BYOL forms) against its formula written out with explicit loops,
plus its properties and argument checks."""

from __future__ import annotations

from typing import Literal

import pytest
import torch

from ssl_core.losses import NegativeCosineSimilarity
from tests.ssl_core.losses.helpers import SHAPES, assert_matches_reference, correlated_pair


def negative_cosine_reference(p: torch.Tensor, z: torch.Tensor, form: str) -> torch.Tensor:
    """SimSiam eq. 1, D(p, z) = -p/||p|| · z/||z||, or BYOL eq. 2, ||p̄ - z̄||², averaged over the pairs."""
    b = p.shape[0]
    total = p.new_zeros(())
    for i in range(b):
        cos = torch.dot(p[i], z[i]) / (torch.sqrt(torch.dot(p[i], p[i])) * torch.sqrt(torch.dot(z[i], z[i])))
        total = total + (2 - 2 * cos if form == "byol" else -cos)
    return total / b


@pytest.mark.parametrize("form", ["simsiam", "byol"])
@pytest.mark.parametrize(("b", "d"), [*SHAPES, (1, 7)])
def test_negative_cosine_matches_reference_value_and_gradients(
    b: int, d: int, form: Literal["simsiam", "byol"]
) -> None:
    p, z = correlated_pair(b, d, seed=b * 100 + d)
    loss = NegativeCosineSimilarity(form)(p, z)
    # The reference treats z as a constant: only p's gradient is compared.
    assert_matches_reference(loss, negative_cosine_reference(p, z.detach(), form), (p,))


def test_negative_cosine_target_gets_no_gradient() -> None:
    p, z = correlated_pair(8, 16)
    for loss in (NegativeCosineSimilarity("simsiam"), NegativeCosineSimilarity("byol")):
        loss(p, z).backward()
        assert z.grad is None
        assert p.grad is not None
        assert p.grad.abs().sum() > 0
        p.grad = None
    p, z = correlated_pair(8, 16)
    (grad_z,) = torch.autograd.grad(NegativeCosineSimilarity()(p, z), (z,), allow_unused=True)
    assert grad_z is None


def test_negative_cosine_byol_form_is_two_plus_twice_simsiam() -> None:
    p, z = correlated_pair(8, 16)
    simsiam = NegativeCosineSimilarity("simsiam")(p, z)
    byol = NegativeCosineSimilarity("byol")(p, z)
    torch.testing.assert_close(byol, 2 + 2 * simsiam)


@pytest.mark.parametrize(("b", "d"), [(1, 3), (8, 16)])
def test_negative_cosine_is_minus_one_for_aligned_pairs(b: int, d: int) -> None:
    p, _ = correlated_pair(b, d)
    scale = torch.linspace(0.1, 10.0, b, dtype=torch.float64).unsqueeze(1)
    for z in (p.detach().clone(), scale * p.detach()):
        assert NegativeCosineSimilarity("simsiam")(p, z).item() == pytest.approx(-1.0, abs=1e-6)
        assert NegativeCosineSimilarity("byol")(p, z).item() == pytest.approx(0.0, abs=1e-6)
    # ... which is the minimum: anti-aligned pairs give the maximum, random ones lie between.
    assert NegativeCosineSimilarity()(p, -p).item() == pytest.approx(1.0, abs=1e-6)
    assert NegativeCosineSimilarity("byol")(p, -p).item() == pytest.approx(4.0, abs=1e-5)
    _, z = correlated_pair(b, d, seed=5)
    assert -1.0 < NegativeCosineSimilarity()(p, z).item() < 1.0


def test_negative_cosine_invariant_to_pair_order_and_per_row_scale() -> None:
    p, z = correlated_pair(8, 16)
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
