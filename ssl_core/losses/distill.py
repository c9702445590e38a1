"""Knowledge-distillation losses: a student matching a frozen teacher's embeddings, its similarity distribution
over a queue of teacher embeddings, or a classifier's softened class probabilities."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.losses.checks import check_pair


class EmbeddingDistillationLoss(nn.Module):
    """The student's (projected) embedding pulled to the teacher's L2-normalised embedding, the teacher a
    constant.

        cosine: 1 - cos(s, t̄),   mse: ||s - t̄||² / D,   averaged over the batch (t̄ = t / ||t||);

    ``cosine`` ignores the student's norm, ``mse`` asks the student for unit vectors too.

    Args:
        form: ``"cosine"`` or ``"mse"``.

    Shapes:
        ``forward(student, teacher)``: (B, D) each; returns a scalar.

    Raises:
        ValueError: if ``form`` is unknown, the shapes differ or are not 2-D, or the batch is empty.
    """

    def __init__(self, form: Literal["cosine", "mse"] = "cosine") -> None:
        super().__init__()
        if form not in ("cosine", "mse"):
            raise ValueError(f"form must be 'cosine' or 'mse', got {form!r}")
        self.form: Literal["cosine", "mse"] = form

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        check_pair(student, teacher, loss="embedding distillation", min_batch=1, unit="pair")
        with torch.autocast(student.device.type, enabled=False):
            s, t = student.float(), F.normalize(teacher.detach().float(), dim=1)
            if self.form == "cosine":
                return (1.0 - (F.normalize(s, dim=1) * t).sum(dim=1)).mean()
            return (s - t).pow(2).mean()


class SimilarityDistillationLoss(nn.Module):
    """SEED (Fang et al. 2021, "SEED: Self-supervised Distillation for Visual Representation", eq. 2-4): over
    the sample's own teacher embedding followed by a queue of K teacher embeddings, the student's softmax of
    similarities (temperature ``student_temperature``) is trained towards the teacher's (temperature
    ``teacher_temperature``) by cross-entropy, averaged over the batch. All vectors are L2-normalised; the
    teacher side is a constant. Defaults as the authors' code: 0.07 and 1e-4 (the teacher's distribution is then
    nearly one-hot unless queue items are close to the sample's own embedding).

    Shapes:
        ``forward(student, teacher, queue)``: (B, D), (B, D) and (K, D), K ≥ 0; returns a scalar.

    Raises:
        ValueError: if a temperature is not positive, the shapes do not agree or the batch is empty.
    """

    def __init__(self, student_temperature: float = 0.07, teacher_temperature: float = 1e-4) -> None:
        super().__init__()
        if student_temperature <= 0 or teacher_temperature <= 0:
            raise ValueError(
                f"temperatures must be positive, got student {student_temperature}, teacher {teacher_temperature}"
            )
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        check_pair(student, teacher, loss="similarity distillation", min_batch=1, unit="pair")
        if queue.dim() != 2 or queue.shape[1] != teacher.shape[1]:
            raise ValueError(f"queue must be (K, {teacher.shape[1]}), got {tuple(queue.shape)}")
        with torch.autocast(student.device.type, enabled=False):
            s = F.normalize(student.float(), dim=1)
            t = F.normalize(teacher.detach().float(), dim=1)
            q = F.normalize(queue.detach().float(), dim=1)
            # Column 0: similarity to the image's own teacher embedding; then one column per queue entry.
            student_logits = torch.cat([(s * t).sum(1, keepdim=True), s @ q.T], 1) / self.student_temperature
            teacher_logits = torch.cat([(t * t).sum(1, keepdim=True), t @ q.T], 1) / self.teacher_temperature
            return -(teacher_logits.softmax(dim=1) * student_logits.log_softmax(dim=1)).sum(dim=1).mean()


class LogitDistillationLoss(nn.Module):
    """Hinton et al. 2015 ("Distilling the Knowledge in a Neural Network", §2): soft targets at temperature T
    and, for the images with labels, cross-entropy on the hard ones,

        T² · λ · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + (1 − λ) · CE(z_s, y),

    the KL averaged over the batch and the cross-entropy over the labelled images (label -1: none; the term
    is 0 without any). T² keeps the soft term's gradients at the scale of the hard one's as T changes.

    Args:
        temperature: T > 0.
        weight: λ in [0, 1], the soft term's share.

    Shapes:
        ``forward(student_logits, teacher_logits, labels)``: (B, C), (B, C) and (B,) int; returns a scalar.

    Raises:
        ValueError: if T or λ is out of range or the shapes do not agree.
    """

    def __init__(self, temperature: float = 4.0, weight: float = 0.9) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {weight}")
        self.temperature = temperature
        self.weight = weight

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_pair(student_logits, teacher_logits, loss="logit distillation", min_batch=1, unit="pair")
        if labels.shape != student_logits.shape[:1]:
            raise ValueError(f"labels must be ({len(student_logits)},), got {tuple(labels.shape)}")
        t = self.temperature
        with torch.autocast(student_logits.device.type, enabled=False):
            log_student = (student_logits.float() / t).log_softmax(dim=1)
            log_teacher = (teacher_logits.detach().float() / t).log_softmax(dim=1)
            soft = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1).mean()
            labelled = labels >= 0
            hard = (
                F.cross_entropy(student_logits.float()[labelled], labels[labelled])
                if bool(labelled.any())
                else student_logits.new_zeros((), dtype=torch.float32)
            )
            return t * t * self.weight * soft + (1.0 - self.weight) * hard
