"""The linear probe: multinomial logistic regression on frozen, standardised features, fitted to convergence with
full-batch L-BFGS; the L2 penalty is chosen on the validation split, then the probe is refitted on training and
validation images together (the protocol of Kornblith et al. 2019, "Do Better ImageNet Models Transfer Better?")."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: L2 penalties tried on the validation split (on the mean cross-entropy of standardised features).
WEIGHT_DECAYS = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
#: The penalty used when there is no validation split to choose one.
DEFAULT_WEIGHT_DECAY = 1e-4


def probe_objective(
    weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, weight_decay: float
) -> torch.Tensor:
    """Mean cross-entropy of ``x @ weight.T + bias`` plus ``weight_decay / 2 · ‖weight‖²`` (bias not penalised)."""
    return F.cross_entropy(x @ weight.T + bias, y) + 0.5 * weight_decay * weight.pow(2).sum()


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int = 300
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise ``probe_objective`` from zero weights (it is convex, so the start only matters for speed) →
    (weight (C, D), bias (C,)), in float64."""
    x = x.double()
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
        history_size=20, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = probe_objective(weight, bias, x, y, weight_decay)
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


@dataclass(frozen=True)
class Standardizer:
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor) -> Standardizer:
        x = x.double()
        return cls(x.mean(dim=0), x.std(dim=0, unbiased=False).clamp(min=1e-6))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() - self.mean) / self.std


@dataclass
class ProbeResult:
    head: nn.Linear  # on raw features: the standardisation is folded in
    weight_decay: float
    val_accuracy: dict[str, float]  # per penalty tried
    chosen_by: str

    def describe(self) -> dict[str, Any]:
        return {
            "classifier": "multinomial logistic regression on frozen features, standardised with the "
            "training features' mean and std",
            "solver": "full-batch L-BFGS (strong Wolfe line search) from zero weights",
            "weight_decay": self.weight_decay,
            "weight_decay_chosen_by": self.chosen_by,
            "val_accuracy_by_weight_decay": self.val_accuracy,
        }


def folded_head(weight: torch.Tensor, bias: torch.Tensor, standardizer: Standardizer) -> nn.Linear:
    """A linear layer on raw features equal to (weight, bias) on standardised ones:
    W (x − μ)/σ + b = (W/σ) x + (b − W μ/σ)."""
    w = weight / standardizer.std
    b = bias - w @ standardizer.mean
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(w.float())
        head.bias.copy_(b.float())
    return head


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    on_fit: Callable[[float, float], None] = lambda wd, acc: None,
) -> ProbeResult:
    """Choose the penalty with the best validation accuracy (ties: the larger penalty), then refit on training and
    validation features together. Features are (N, D), labels (N,) int64; ``on_fit(weight_decay, val_accuracy)``
    reports each candidate."""
    scores: dict[str, float] = {}
    if len(val_x):
        standardizer = Standardizer.fit(train_x)
        xs, xv = standardizer(train_x), standardizer(val_x)
        best: tuple[float, float] | None = None
        for wd in weight_decays:
            weight, bias = fit_logistic(xs, train_y, num_classes, wd)
            acc = float(((xv @ weight.T + bias).argmax(dim=1) == val_y).double().mean())
            scores[str(wd)] = round(acc, 4)
            on_fit(wd, acc)
            if best is None or (acc, wd) >= best:
                best = (acc, wd)
        assert best is not None
        chosen, chosen_by = best[1], "best validation accuracy"
    else:
        chosen, chosen_by = DEFAULT_WEIGHT_DECAY, "default (no validation split)"
    all_x, all_y = torch.cat([train_x, val_x]), torch.cat([train_y, val_y])
    standardizer = Standardizer.fit(all_x)
    weight, bias = fit_logistic(standardizer(all_x), all_y, num_classes, chosen)
    return ProbeResult(folded_head(weight, bias, standardizer), chosen, scores, chosen_by)
