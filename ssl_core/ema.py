"""Momentum (EMA) teachers: BYOL's target network, MoCo's key encoder, DINO's teacher."""

from __future__ import annotations

import copy
import math
from typing import TypeVar

import torch
from torch import nn


def momentum_schedule(base: float, step: int, total_steps: int, final: float = 1.0) -> float:
    """Cosine increase of the EMA momentum from ``base`` at step 0 to ``final`` at ``total_steps`` (BYOL,
    Grill et al. 2020, §3.2: τ = 1 − (1 − τ_base)(cos(πk/K) + 1)/2; DINO uses the same schedule)."""
    if total_steps <= 0:
        return base
    progress = min(max(step / total_steps, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


M = TypeVar("M", bound=nn.Module)


def frozen_copy(module: M) -> M:
    """A copy of ``module`` that takes no gradients (the teacher starts equal to the student)."""
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher ← momentum · teacher + (1 − momentum) · student for parameters; buffers (batch-norm
    statistics) are copied from the student. Both modules must have the same structure."""
    t_params: list[torch.Tensor] = list(teacher.parameters())
    s_params: list[torch.Tensor] = list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameters")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1 - momentum)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers(), strict=True):
        t_buf.copy_(s_buf)
