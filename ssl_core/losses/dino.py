"""DINO: self-distillation of a centred, sharpened momentum teacher into a multi-crop student."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DINOLoss(nn.Module):
    """Self-distillation loss of DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
    Transformers", eq. 1-4 and Algorithm 1).

        L = mean over pairs (i, v ≠ i) of -1/B Σ_b Σ_k softmax((t_i - c) / τ_t)[b, k] log softmax(s_v / τ_s)[b, k],

    student crops global first, in the teacher's order. ``forward`` only reads the centre c (buffer ``center``
    (1, K)); :meth:`update_center` moves it.

    Args:
        output_dim: K; teacher_temperature: τ_t > 0 (0.04); student_temperature: τ_s > 0 (0.1);
        center_momentum: m in [0, 1] (0.9).

    Shapes:
        ``forward(student_out, teacher_out, teacher_temperature=None)``: V and G tensors (B, K),
        1 ≤ G ≤ V, V ≥ 2; returns a scalar.

    Raises:
        ValueError: if a hyper-parameter is out of range, the crops are not all (B, K) with one B ≥ 1 and
        K = ``output_dim``, or G is 0, above V, or leaves no (teacher, student) pair.

    Example:
        >>> DINOLoss(64)([torch.randn(8, 64)] * 6, [torch.randn(8, 64)] * 2).shape
        torch.Size([])
    """

    center: torch.Tensor

    def __init__(
        self,
        output_dim: int,
        teacher_temperature: float = 0.04,
        student_temperature: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if output_dim < 1:
            raise ValueError(f"output_dim must be positive, got {output_dim}")
        if not teacher_temperature > 0:
            raise ValueError(f"teacher_temperature must be positive, got {teacher_temperature}")
        if not student_temperature > 0:
            raise ValueError(f"student_temperature must be positive, got {student_temperature}")
        if not 0 <= center_momentum <= 1:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.output_dim = int(output_dim)
        self.teacher_temperature = float(teacher_temperature)
        self.student_temperature = float(student_temperature)
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(1, self.output_dim))

    def _check_crops(self, crops: Sequence[torch.Tensor], name: str, batch: int | None = None) -> int:
        if len(crops) == 0:
            raise ValueError(f"{name} must hold at least one crop")
        for v, crop in enumerate(crops):
            if crop.dim() != 2 or crop.shape[1] != self.output_dim or crop.shape[0] == 0:
                raise ValueError(
                    f"expected {name}[{v}] of shape (B, {self.output_dim}) with B ≥ 1, got {tuple(crop.shape)}"
                )
            batch = crop.shape[0] if batch is None else batch
            if crop.shape[0] != batch:
                raise ValueError(f"all crops must have the same batch size {batch}, {name}[{v}] has {crop.shape[0]}")
        return batch if batch is not None else 0

    def forward(
        self,
        student_out: Sequence[torch.Tensor],
        teacher_out: Sequence[torch.Tensor],
        teacher_temperature: float | None = None,
    ) -> torch.Tensor:
        tau_t = self.teacher_temperature if teacher_temperature is None else float(teacher_temperature)
        if not tau_t > 0:
            raise ValueError(f"teacher_temperature must be positive, got {teacher_temperature}")
        batch = self._check_crops(teacher_out, "teacher_out")
        self._check_crops(student_out, "student_out", batch)
        if len(teacher_out) > len(student_out):
            raise ValueError(
                f"the global crops must also go through the student: got {len(teacher_out)} teacher "
                f"crops and only {len(student_out)} student crops"
            )
        if len(student_out) < 2:
            raise ValueError("DINO needs a (teacher, student) pair of different crops: got one crop only")
        with torch.autocast(teacher_out[0].device.type, enabled=False):
            center = self.center.to(teacher_out[0].device)
            targets = [F.softmax((t.detach().float() - center) / tau_t, dim=1) for t in teacher_out]
            log_p = [F.log_softmax(s.float() / self.student_temperature, dim=1) for s in student_out]
            total = log_p[0].new_zeros(())
            pairs = 0
            for i, target in enumerate(targets):
                for v, student in enumerate(log_p):
                    if v != i:
                        total = total - (target * student).sum(dim=1).mean()
                        pairs += 1
            return total / pairs

    @torch.no_grad()
    def update_center(self, teacher_out: Sequence[torch.Tensor]) -> None:
        """c ← m·c + (1 - m)·(mean over crops and batch of the teacher outputs): once per step, after the loss."""
        self._check_crops(teacher_out, "teacher_out")
        with torch.autocast(teacher_out[0].device.type, enabled=False):
            batch_center = torch.cat([t.detach().float() for t in teacher_out]).mean(dim=0, keepdim=True)
            m = self.center_momentum
            self.center.mul_(m).add_(batch_center.to(self.center.device), alpha=1 - m)

    def extra_repr(self) -> str:
        return (
            f"output_dim={self.output_dim}, teacher_temperature={self.teacher_temperature}, "
            f"student_temperature={self.student_temperature}, center_momentum={self.center_momentum}"
        )
