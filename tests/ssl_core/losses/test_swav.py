"""Sinkhorn-Knopp and the SwAV loss, each against its paper's formula written out with explicit loops, plus
their properties and argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_core.losses import (
    SwAVLoss,
    sinkhorn_knopp,
)
from tests.ssl_core.losses.helpers import assert_values_and_grads, randn


def sinkhorn_reference(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp on nested lists of Python floats: exp(s/ε) as a (K, B) matrix of total mass 1,
    then alternately rows to 1/K and columns to 1/B, finally columns to 1, transposed to (B, K)."""
    b, k = scores.shape
    s = scores.detach().double().tolist()
    q = [[math.exp(s[col][row] / epsilon) for col in range(b)] for row in range(k)]
    total = sum(sum(row) for row in q)
    q = [[x / total for x in row] for row in q]
    for _ in range(iterations):
        for row in range(k):
            row_sum = sum(q[row])
            q[row] = [x / row_sum / k for x in q[row]]
        for col in range(b):
            col_sum = sum(q[row][col] for row in range(k))
            for row in range(k):
                q[row][col] = q[row][col] / col_sum / b
    return torch.tensor([[q[row][col] * b for row in range(k)] for col in range(b)], dtype=torch.float64)


def _scores(b: int, k: int, seed: int = 0, grad: bool = False) -> torch.Tensor:
    """Cosine scores: normalised features times normalised prototypes, as SwAV feeds them."""
    features = torch.nn.functional.normalize(randn(b, 8, seed=seed), dim=1)
    prototypes = torch.nn.functional.normalize(randn(k, 8, seed=seed + 1000), dim=1)
    return (features @ prototypes.T).requires_grad_(grad)


@pytest.mark.parametrize("iterations", [1, 3, 10])
@pytest.mark.parametrize("epsilon", [0.05, 0.5])
@pytest.mark.parametrize(("b", "k"), [(1, 1), (6, 4), (4, 9)])
def test_sinkhorn_matches_reference(b: int, k: int, epsilon: float, iterations: int) -> None:
    scores = _scores(b, k, seed=b + k)
    codes = sinkhorn_knopp(scores, epsilon, iterations)
    assert codes.shape == (b, k)
    assert codes.dtype == torch.float64
    torch.testing.assert_close(codes, sinkhorn_reference(scores, epsilon, iterations), rtol=1e-10, atol=1e-12)
    assert sinkhorn_knopp(scores.float(), epsilon, iterations).dtype == torch.float32


@pytest.mark.parametrize(("b", "k"), [(32, 4), (24, 8), (16, 16)])
def test_sinkhorn_marginals(b: int, k: int) -> None:
    scores = _scores(b, k, seed=3)
    for iterations in (1, 3, 50):
        codes = sinkhorn_knopp(scores, 0.05, iterations)
        torch.testing.assert_close(codes.sum(dim=1), torch.ones(b, dtype=torch.float64))  # exact by construction
        assert (codes >= 0).all()
    # With enough iterations every prototype gets an equal share B/K of the mass; more iterations, closer.
    errors = [(sinkhorn_knopp(scores, 0.05, n).sum(dim=0) - b / k).abs().max().item() for n in (3, 50, 200)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] < 0.05 * b / k
    assert errors[2] < 1e-3 * b / k


def test_sinkhorn_is_equivariant_to_batch_and_prototype_order() -> None:
    scores = _scores(12, 5, seed=4)
    rows = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    cols = torch.randperm(5, generator=torch.Generator().manual_seed(1))
    codes = sinkhorn_knopp(scores)
    torch.testing.assert_close(sinkhorn_knopp(scores[rows]), codes[rows])
    torch.testing.assert_close(sinkhorn_knopp(scores[:, cols]), codes[:, cols])


def test_sinkhorn_is_stable_for_large_scores_and_ignores_per_prototype_shifts() -> None:
    scores = _scores(10, 6, seed=5)
    codes = sinkhorn_knopp(scores)
    # exp(1000 / 0.05) overflows: without the max subtraction this would be NaN.
    torch.testing.assert_close(sinkhorn_knopp(scores + 1000.0), codes)
    shifts = torch.linspace(-30.0, 30.0, 6, dtype=torch.float64)
    torch.testing.assert_close(sinkhorn_knopp(scores + shifts), codes)
    sharp = sinkhorn_knopp(100.0 * scores, epsilon=0.05, iterations=3)
    assert torch.isfinite(sharp).all()
    torch.testing.assert_close(sharp.sum(dim=1), torch.ones(10, dtype=torch.float64))


def test_sinkhorn_tracks_no_gradient() -> None:
    scores = _scores(6, 3, grad=True)
    assert not sinkhorn_knopp(scores).requires_grad


def test_sinkhorn_refuses_bad_arguments() -> None:
    for shape in [(8,), (0, 4), (4, 0), (2, 3, 4)]:
        with pytest.raises(ValueError, match=r"\(B, K\)"):
            sinkhorn_knopp(torch.randn(shape))
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn_knopp(torch.randn(4, 3), epsilon=0.0)
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn_knopp(torch.randn(4, 3), iterations=0)


def swav_reference(
    scores: list[torch.Tensor],
    n_global: int,
    temperature: float,
    epsilon: float,
    iterations: int,
    queue: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """SwAV eq. 1-2 with multi-crop: for each global crop i its codes (no gradient), predicted by every
    other crop v with p = exp(s/τ) / Σ exp(s/τ); cross-entropy -Σ_k q log p averaged over samples and pairs.
    With a queue, the codes are the batch's rows of Sinkhorn on the batch's and the queue's scores."""
    b, k = scores[0].shape
    terms = []
    for i in range(n_global):
        rows = scores[i] if queue is None else torch.cat([scores[i].detach(), queue[i]])
        codes = sinkhorn_reference(rows, epsilon, iterations)[:b]
        for v, crop in enumerate(scores):
            if v == i:
                continue
            total = crop.new_zeros(())
            for row in range(b):
                denominator = sum(torch.exp(crop[row, c] / temperature) for c in range(k))
                for c in range(k):
                    p = torch.exp(crop[row, c] / temperature) / denominator
                    total = total - codes[row, c] * torch.log(p)
            terms.append(total / b)
    return torch.stack(terms).mean()


@pytest.mark.parametrize(("temperature", "epsilon", "iterations"), [(0.1, 0.05, 3), (0.5, 0.2, 1)])
@pytest.mark.parametrize(("n_crops", "n_global"), [(2, 2), (2, 1), (4, 2), (5, 1)])
def test_swav_matches_reference_value_and_gradients(
    n_crops: int, n_global: int, temperature: float, epsilon: float, iterations: int
) -> None:
    scores = [_scores(4, 5, seed=20 + v, grad=True) for v in range(n_crops)]
    loss = SwAVLoss(temperature, epsilon, iterations)(scores, n_global)
    assert_values_and_grads(loss, swav_reference(scores, n_global, temperature, epsilon, iterations), scores)


@pytest.mark.parametrize(("n_crops", "n_global"), [(2, 2), (4, 2), (3, 1)])
def test_swav_with_a_queue_matches_reference(n_crops: int, n_global: int) -> None:
    scores = [_scores(4, 5, seed=40 + v, grad=True) for v in range(n_crops)]
    queue = [_scores(6, 5, seed=50 + i).double() for i in range(n_global)]
    loss = SwAVLoss(0.1, 0.05, 3)(scores, n_global, queue_scores=queue)
    assert_values_and_grads(loss, swav_reference(scores, n_global, 0.1, 0.05, 3, queue), scores)
    without = SwAVLoss(0.1, 0.05, 3)(scores, n_global)
    assert not torch.allclose(loss, without)  # the queue changes the codes
    with pytest.raises(ValueError, match="queue_scores"):
        SwAVLoss()(scores, n_global, queue_scores=[torch.randn(6, 4)] * n_global)


def test_swav_codes_carry_no_gradient() -> None:
    """With one global and one local crop, the global crop only provides codes: no gradient reaches it."""
    scores = [_scores(4, 5, seed=30, grad=True), _scores(4, 5, seed=31, grad=True)]
    loss = SwAVLoss()(scores, n_global=1)
    grad_global, grad_local = torch.autograd.grad(loss, scores, allow_unused=True)
    assert grad_global is None or not grad_global.any()
    assert grad_local is not None
    assert grad_local.abs().sum() > 0


def test_swav_refuses_bad_arguments() -> None:
    for kwargs, match in [
        (dict(temperature=0.0), "temperature"),
        (dict(epsilon=-1.0), "epsilon"),
        (dict(sinkhorn_iterations=0), "sinkhorn_iterations"),
    ]:
        with pytest.raises(ValueError, match=match):
            SwAVLoss(**kwargs)  # type: ignore[arg-type]
    loss = SwAVLoss()
    with pytest.raises(ValueError, match="at least 2 crops"):
        loss([torch.randn(4, 3)], n_global=1)
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        loss([torch.randn(4), torch.randn(4)], n_global=1)
    with pytest.raises(ValueError, match="same shape"):
        loss([torch.randn(4, 3), torch.randn(4, 5)], n_global=1)
    for n_global in (0, 3):
        with pytest.raises(ValueError, match="n_global"):
            loss([torch.randn(4, 3), torch.randn(4, 3)], n_global=n_global)
