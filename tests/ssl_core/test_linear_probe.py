"""The linear probe: its solution is the optimum of the hand-written objective, the folded head equals the probe on
standardised features, and the penalty is the one the validation split prefers."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_core.linear_probe import Standardizer, fit_logistic, folded_head, linear_probe


def _blobs(n: int, d: int, classes: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * 3
    y = torch.arange(n) % classes
    return centres[y] + spread * torch.randn(n, d, generator=g), y


def reference_gradient(
    w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor, wd: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """∂/∂(W, b) of mean cross-entropy + wd/2‖W‖², written out: (softmax − onehot)ᵀx / n + wd·W."""
    n, classes = len(y), w.shape[0]
    rows = []
    for i in range(n):
        logits = [sum(w[c, j] * x[i, j] for j in range(x.shape[1])) + b[c] for c in range(classes)]
        top = max(logits)
        exp = [math.exp(v - top) for v in logits]
        rows.append([e / sum(exp) - (1.0 if c == y[i] else 0.0) for c, e in enumerate(exp)])
    residual = torch.tensor(rows, dtype=torch.float64)
    return residual.T @ x.double() / n + wd * w, residual.mean(dim=0)


@pytest.mark.parametrize("wd", [1e-3, 1e-1])
def test_fit_is_a_stationary_point_of_the_objective(wd: float) -> None:
    x, y = _blobs(30, 4, 3, spread=3.0, seed=1)
    w, b = fit_logistic(x, y, 3, wd)
    grad_w, grad_b = reference_gradient(w, b, x, y, wd)
    assert grad_w.abs().max() < 1e-6
    assert grad_b.abs().max() < 1e-6


def test_folded_head_on_raw_features_equals_the_probe_on_standardised_ones() -> None:
    x, y = _blobs(40, 5, 3, spread=1.0, seed=2)
    x = x * torch.tensor([1.0, 10.0, 0.1, 3.0, 100.0]) + 7
    standardizer = Standardizer.fit(x)
    w, b = fit_logistic(standardizer(x), y, 3, 1e-2)
    head = folded_head(w, b, standardizer)
    expected = standardizer(x) @ w.T + b
    torch.testing.assert_close(head(x).double(), expected, rtol=1e-4, atol=1e-3)


def test_separable_classes_are_learned() -> None:
    x, y = _blobs(60, 8, 4, spread=0.3, seed=3)
    vx, vy = _blobs(40, 8, 4, spread=0.3, seed=3)
    result = linear_probe(x, y, vx[:20], vy[:20], 4)
    assert (result.head(vx[20:]).argmax(dim=1) == vy[20:]).all()


def test_the_penalty_with_the_best_validation_accuracy_is_chosen() -> None:
    x, y = _blobs(40, 20, 2, spread=4.0, seed=4)
    vx, vy = _blobs(40, 20, 2, spread=4.0, seed=5)
    seen: list[tuple[float, float]] = []
    result = linear_probe(x, y, vx, vy, 2, weight_decays=(0.0, 1e-2, 1.0), on_fit=lambda wd, a: seen.append((wd, a)))
    assert [wd for wd, _ in seen] == [0.0, 1e-2, 1.0]
    best = max(acc for _, acc in seen)
    assert result.weight_decay == max(wd for wd, acc in seen if acc == best)  # ties: the stronger penalty
    assert result.val_accuracy == {str(wd): round(acc, 4) for wd, acc in seen}


def test_without_a_validation_split_the_default_penalty_is_used() -> None:
    x, y = _blobs(20, 4, 2, spread=1.0, seed=6)
    result = linear_probe(x, y, x[:0], y[:0], 2)
    assert result.chosen_by.startswith("default")
    assert result.val_accuracy == {}
