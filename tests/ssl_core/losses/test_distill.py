"""The distillation losses against their formulas written out with explicit loops, the teacher's side getting no
gradient, and argument checks."""

from __future__ import annotations

from typing import Literal

import pytest
import torch

from ssl_core.losses import EmbeddingDistillationLoss, LogitDistillationLoss, SimilarityDistillationLoss
from tests.ssl_core.losses.helpers import SHAPES, assert_matches_reference, correlated_pair, randn, unit


def embedding_reference(s: torch.Tensor, t: torch.Tensor, form: str) -> torch.Tensor:
    total = s.new_zeros(())
    for i in range(len(s)):
        target = unit(t[i])
        if form == "cosine":
            total = total + 1 - torch.dot(s[i], target) / torch.sqrt(torch.dot(s[i], s[i]))
        else:
            total = total + sum((s[i, j] - target[j]) ** 2 for j in range(s.shape[1])) / s.shape[1]
    return total / len(s)


@pytest.mark.parametrize("form", ["cosine", "mse"])
@pytest.mark.parametrize(("b", "d"), SHAPES)
def test_embedding_distillation_matches_reference(b: int, d: int, form: Literal["cosine", "mse"]) -> None:
    s, t = correlated_pair(b, d, seed=b + d)
    loss = EmbeddingDistillationLoss(form)(s, t)
    assert_matches_reference(loss, embedding_reference(s, t.detach(), form), (s,))


def seed_reference(s: torch.Tensor, t: torch.Tensor, queue: torch.Tensor, ts: float, tt: float) -> torch.Tensor:
    """SEED eq. 2-4: p_j = exp(z·d_j / τ) / Σ_k exp(z·d_k / τ) over D⁺ = [t_i, queue], cross-entropy of p^S
    to p^T."""
    total = s.new_zeros(())
    for i in range(len(s)):
        bank = [unit(t[i])] + [unit(q) for q in queue]
        zs, zt = unit(s[i]), unit(t[i])
        student = [torch.dot(zs, d) / ts for d in bank]
        teacher = [torch.dot(zt, d) / tt for d in bank]
        s_norm = torch.logsumexp(torch.stack(student), 0)
        t_norm = torch.logsumexp(torch.stack(teacher), 0)
        for j in range(len(bank)):
            total = total - torch.exp(teacher[j] - t_norm) * (student[j] - s_norm)
    return total / len(s)


@pytest.mark.parametrize(("b", "d", "k"), [(1, 3, 0), (2, 5, 4), (8, 16, 12), (3, 4, 1)])
@pytest.mark.parametrize(("ts", "tt"), [(0.2, 0.1), (0.07, 0.05)])
def test_similarity_distillation_matches_reference(b: int, d: int, k: int, ts: float, tt: float) -> None:
    s, t = correlated_pair(b, d, seed=b * 10 + d)
    queue = randn(k, d, seed=k + 1)
    loss = SimilarityDistillationLoss(ts, tt)(s, t, queue)
    assert_matches_reference(loss, seed_reference(s, t.detach(), queue, ts, tt), (s,))


def test_similarity_distillation_with_the_sharp_default_teacher_is_contrastive_on_the_own_embedding() -> None:
    """At τ_T = 1e-4 the teacher's distribution is one-hot on the sample's own embedding (similarity 1, the
    queue's lower): the loss is the student's InfoNCE with the teacher embedding as the positive."""
    s, t = correlated_pair(6, 8, seed=3)
    queue = randn(10, 8, seed=4)
    loss = SimilarityDistillationLoss()(s, t, queue)
    zs, zt, zq = (torch.nn.functional.normalize(v.detach(), dim=1) for v in (s, t, queue))
    logits = torch.cat([(zs * zt).sum(1, keepdim=True), zs @ zq.T], 1) / 0.07
    expected = torch.nn.functional.cross_entropy(logits, torch.zeros(6, dtype=torch.long))
    torch.testing.assert_close(loss.double(), expected, rtol=1e-4, atol=1e-4)


def hinton_reference(zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, temp: float, lam: float) -> torch.Tensor:
    kl = zs.new_zeros(())
    for i in range(len(zs)):
        ps = [torch.exp(zs[i, c] / temp) for c in range(zs.shape[1])]
        pt = [torch.exp(zt[i, c] / temp) for c in range(zt.shape[1])]
        ss, st = sum(ps), sum(pt)
        for c in range(zs.shape[1]):
            kl = kl + (pt[c] / st) * (torch.log(pt[c] / st) - torch.log(ps[c] / ss))
    kl = kl / len(zs)
    ce, labelled = zs.new_zeros(()), 0
    for i in range(len(zs)):
        if y[i] >= 0:
            ce = ce - (zs[i, y[i]] - torch.log(sum(torch.exp(zs[i, c]) for c in range(zs.shape[1]))))
            labelled += 1
    ce = ce / labelled if labelled else ce
    return temp * temp * lam * kl + (1 - lam) * ce


@pytest.mark.parametrize(("b", "c"), [(1, 2), (4, 3), (8, 10)])
@pytest.mark.parametrize(("temp", "lam"), [(1.0, 0.5), (4.0, 0.9), (2.0, 1.0), (3.0, 0.0)])
def test_logit_distillation_matches_reference(b: int, c: int, temp: float, lam: float) -> None:
    zs, zt = randn(b, c, seed=b, grad=True), randn(b, c, seed=b + 50)
    y = torch.arange(b) % c
    y[::3] = -1  # some images without a label
    loss = LogitDistillationLoss(temp, lam)(zs, zt, y)
    assert_matches_reference(loss, hinton_reference(zs, zt, y, temp, lam), (zs,))


def test_logit_distillation_without_labels_is_the_soft_term_alone() -> None:
    zs, zt = randn(4, 5, seed=1, grad=True), randn(4, 5, seed=2)
    none = torch.full((4,), -1)
    loss = LogitDistillationLoss(2.0, 0.7)(zs, zt, none)
    assert_matches_reference(loss, hinton_reference(zs, zt, none, 2.0, 0.7), (zs,))
    assert LogitDistillationLoss(2.0, 0.0)(zs, zt, none).item() == 0.0


def test_the_teacher_side_gets_no_gradient() -> None:
    s, t = correlated_pair(4, 6)
    queue = randn(5, 6, grad=True)
    losses = [
        EmbeddingDistillationLoss("cosine")(s, t),
        EmbeddingDistillationLoss("mse")(s, t),
        SimilarityDistillationLoss(0.2, 0.1)(s, t, queue),
        LogitDistillationLoss()(s, t, torch.tensor([0, 1, -1, 2])),
    ]
    for loss in losses:
        grad_t, grad_q = torch.autograd.grad(loss, (t, queue), allow_unused=True)
        assert grad_t is None
        assert grad_q is None


def test_matching_the_teacher_exactly_is_the_minimum() -> None:
    _, t = correlated_pair(4, 6)
    t = t.detach()
    assert EmbeddingDistillationLoss("cosine")(3 * t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert EmbeddingDistillationLoss("mse")(torch.nn.functional.normalize(t, dim=1), t).item() == pytest.approx(
        0.0, abs=1e-7
    )
    soft = LogitDistillationLoss(2.0, 1.0)
    assert soft(t, t, torch.full((4,), -1)).item() == pytest.approx(0.0, abs=1e-6)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="form"):
        EmbeddingDistillationLoss("l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperatures must be positive"):
        SimilarityDistillationLoss(0.0)
    with pytest.raises(ValueError, match="temperature must be positive"):
        LogitDistillationLoss(-1.0)
    with pytest.raises(ValueError, match="weight"):
        LogitDistillationLoss(2.0, 1.5)
    s, t = correlated_pair(4, 6)
    with pytest.raises(ValueError, match="equal shape"):
        EmbeddingDistillationLoss()(s, t[:, :5])
    with pytest.raises(ValueError, match="queue must be"):
        SimilarityDistillationLoss()(s, t, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="labels must be"):
        LogitDistillationLoss()(s, t, torch.zeros(3, dtype=torch.long))
