"""EMA teachers: BYOL's momentum schedule, the update, refused structures."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_core.ema import ema_update, frozen_copy, momentum_schedule


@pytest.mark.parametrize("base", [0.9, 0.99, 0.996])
def test_momentum_schedule_is_byols_cosine(base: float) -> None:
    total = 100
    for step in (0, 1, 25, 50, 99, 100, 150):
        k = min(step, total)
        want = 1 - (1 - base) * (math.cos(math.pi * k / total) + 1) / 2
        assert momentum_schedule(base, step, total) == pytest.approx(want)
    assert momentum_schedule(base, 0, total) == pytest.approx(base)
    assert momentum_schedule(base, total, total) == pytest.approx(1.0)
    assert momentum_schedule(base, 5, 0) == base


def test_ema_update_mixes_parameters_and_copies_buffers() -> None:
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    teacher = frozen_copy(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    before = [p.detach().clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student.train()(torch.randn(8, 4))  # moves the batch-norm statistics
    ema_update(teacher, student, 0.9)
    for t, b, s in zip(teacher.parameters(), before, student.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers(), strict=True):
        assert torch.equal(t_buf, s_buf)


def test_ema_update_refuses_different_structures() -> None:
    with pytest.raises(ValueError, match="different parameters"):
        ema_update(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)), 0.5)
