"""The DINO loss against its formula written out with explicit loops, the centre, argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_core.losses import (
    DINOLoss,
)
from tests.ssl_core.losses.helpers import assert_values_and_grads, randn


def dino_reference(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    center: torch.Tensor,
    teacher_temperature: float,
    student_temperature: float,
) -> torch.Tensor:
    """DINO eq. 1-4: H(P_t, P_s) = -Σ_k P_t log P_s, P_t = softmax((t - c)/τ_t) as a constant, P_s =
    softmax(s/τ_s), averaged over samples and over all pairs of a teacher crop with a different student crop."""
    b, k = teacher[0].shape
    terms = []
    for i, t in enumerate(teacher):
        t = t.detach().double()
        for v, s in enumerate(student):
            if v == i:
                continue
            total = s.new_zeros(())
            for row in range(b):
                t_den = sum(math.exp((t[row, c].item() - center[c].item()) / teacher_temperature) for c in range(k))
                s_den = sum(torch.exp(s[row, c] / student_temperature) for c in range(k))
                for c in range(k):
                    p_t = math.exp((t[row, c].item() - center[c].item()) / teacher_temperature) / t_den
                    total = total - p_t * torch.log(torch.exp(s[row, c] / student_temperature) / s_den)
            terms.append(total / b)
    return torch.stack(terms).mean()


@pytest.mark.parametrize(("teacher_temperature", "student_temperature"), [(0.04, 0.1), (0.07, 0.2), (1.0, 1.0)])
@pytest.mark.parametrize(("n_student", "n_teacher"), [(2, 2), (2, 1), (5, 2), (3, 1)])
def test_dino_matches_reference_value_and_gradients(
    n_student: int, n_teacher: int, teacher_temperature: float, student_temperature: float
) -> None:
    student = [randn(3, 6, seed=40 + v, grad=True) for v in range(n_student)]
    teacher = [randn(3, 6, seed=50 + i, grad=True) for i in range(n_teacher)]
    loss_fn = DINOLoss(6, teacher_temperature, student_temperature)
    loss_fn.center.copy_(randn(1, 6, seed=60, dtype=torch.float32))
    center = loss_fn.center.flatten().clone()
    loss = loss_fn(student, teacher)
    expected = dino_reference(student, teacher, center, teacher_temperature, student_temperature)
    assert_values_and_grads(loss, expected, student)
    assert all(g is None for g in torch.autograd.grad(loss, teacher, allow_unused=True))


def test_dino_per_call_teacher_temperature() -> None:
    student = [randn(4, 5, seed=v) for v in range(4)]
    teacher = [randn(4, 5, seed=10 + i) for i in range(2)]
    warm = DINOLoss(5, teacher_temperature=0.04).eval()(student, teacher, teacher_temperature=0.07)
    fixed = DINOLoss(5, teacher_temperature=0.07).eval()(student, teacher)
    torch.testing.assert_close(warm, fixed)
    expected = dino_reference(student, teacher, torch.zeros(5), 0.07, 0.1)
    torch.testing.assert_close(warm.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.0, 0.9, 1.0])
def test_dino_loss_reads_the_centre_that_update_center_moves(momentum: float) -> None:
    student = [randn(4, 5, seed=v) for v in range(3)]
    teacher = [randn(4, 5, seed=10 + i) for i in range(2)]
    loss_fn = DINOLoss(5, center_momentum=momentum)
    assert set(loss_fn.state_dict()) == {"center"}
    assert not loss_fn.center.any()

    first = loss_fn(student, teacher)
    torch.testing.assert_close(
        first.double(), dino_reference(student, teacher, torch.zeros(5), 0.04, 0.1), rtol=1e-5, atol=1e-6
    )
    assert not loss_fn.center.any()  # the loss has no side effect
    loss_fn.update_center(teacher)
    rows = [t[row] for t in teacher for row in range(4)]
    batch_mean = torch.tensor([sum(r[c].item() for r in rows) / len(rows) for c in range(5)])
    expected_center = momentum * torch.zeros(5) + (1 - momentum) * batch_mean
    torch.testing.assert_close(loss_fn.center, expected_center.unsqueeze(0))

    second = loss_fn(student, teacher)
    torch.testing.assert_close(
        second.double(), dino_reference(student, teacher, expected_center, 0.04, 0.1), rtol=1e-5, atol=1e-6
    )
    loss_fn.update_center(teacher)
    torch.testing.assert_close(loss_fn.center, (momentum * expected_center + (1 - momentum) * batch_mean)[None])


def test_dino_refuses_bad_arguments() -> None:
    for kwargs, match in [
        (dict(output_dim=0), "output_dim"),
        (dict(output_dim=4, teacher_temperature=0.0), "teacher_temperature"),
        (dict(output_dim=4, student_temperature=-0.1), "student_temperature"),
        (dict(output_dim=4, center_momentum=1.1), "center_momentum"),
    ]:
        with pytest.raises(ValueError, match=match):
            DINOLoss(**kwargs)  # type: ignore[arg-type]
    loss = DINOLoss(4)
    crops = [torch.randn(3, 4) for _ in range(3)]
    with pytest.raises(ValueError, match="teacher_temperature"):
        loss(crops, crops[:2], teacher_temperature=0.0)
    with pytest.raises(ValueError, match="at least one crop"):
        loss(crops, [])
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        loss(crops, [torch.randn(3, 5)])
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        loss([torch.randn(3, 4), torch.randn(3)], crops[:1])
    with pytest.raises(ValueError, match="same batch size"):
        loss([torch.randn(3, 4), torch.randn(2, 4)], crops[:1])
    with pytest.raises(ValueError, match="teacher crops"):
        loss(crops[:2], crops)
    with pytest.raises(ValueError, match="pair"):
        loss(crops[:1], crops[:1])
    assert not loss.center.any()  # refused calls leave the centre alone
