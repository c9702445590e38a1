"""Knowledge distillation of a trained encoder (the teacher, frozen) into a smaller student backbone, as a
``Distiller`` the training loop runs like any method: the student matches the teacher's embedding, its
similarities to a queue of teacher embeddings (SEED), or a classifier teacher's softened class probabilities."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ssl_core.augment import ViewConfig
from ssl_core.backbones import Backbone, BackboneCost
from ssl_core.ema import frozen_copy
from ssl_core.evaluate import KnnProtocol, PatchGrid, can_evaluate, embed_images, knn_accuracy
from ssl_core.heads import MLPHead
from ssl_core.linear_probe import linear_probe
from ssl_core.losses.distill import EmbeddingDistillationLoss, LogitDistillationLoss, SimilarityDistillationLoss
from ssl_core.losses.info_nce import FeatureQueue
from ssl_core.methods.base import DataInfo, MethodParams, OptimizerDefaults, Recipe, SSLMethod, StepOutput
from ssl_core.params import param

Objective = Literal["embedding", "similarity", "logits"]
#: Settings that only some objectives take: a spec that sets one for another objective is refused.
OBJECTIVE_FIELDS: dict[str, tuple[Objective, ...]] = {
    "form": ("embedding",),
    "queue_size": ("similarity",),
    "student_temperature": ("similarity",),
    "teacher_temperature": ("similarity",),
    "temperature": ("logits",),
    "soft_weight": ("logits",),
}


@dataclass(frozen=True, kw_only=True)
class DistillParams(MethodParams):
    objective: Objective = param(
        "embedding",
        description="embedding: match the teacher's normalised embedding; similarity: match its similarity "
        "distribution over a queue of teacher embeddings (SEED); logits: match a classifier teacher's soft targets",
    )
    form: Literal["cosine", "mse"] = param("cosine", description="embedding: 1 - cosine or mean squared error")
    queue_size: int = param(
        4096, ge=1, le=65_536, description="similarity: teacher embeddings kept in the queue (at most the dataset)"
    )
    student_temperature: float = param(0.07, gt=0, le=10, description="similarity: the student's softmax temperature")
    teacher_temperature: float = param(1e-4, gt=0, le=10, description="similarity: the teacher's softmax temperature")
    temperature: float = param(4.0, gt=0, le=100, description="logits: T of the soft targets")
    soft_weight: float = param(0.9, ge=0, le=1, description="logits: λ, the soft term's share (1 - λ: labels' CE)")


class Distiller(SSLMethod[DistillParams]):
    """Trains ``backbone`` (the student) towards a frozen copy of ``teacher``; both see the same augmented view.
    ``embedding`` and ``similarity`` pass the student's features through an MLP to the teacher's dimension;
    ``logits`` puts a linear head on the student and needs the teacher's ``teacher_head`` and ``labels`` (per
    dataset position, in the teacher's class order, -1 where an image has none)."""

    recipe = Recipe(
        OptimizerDefaults("sgd", 0.1, 5e-4, why="the usual SGD recipe for convolutional students"),
        by_family={"vit": OptimizerDefaults("adamw", 5e-4, 0.05, clip_grad_norm=3.0, why="DeiT's AdamW recipe")},
    )
    category = "distillation"
    summary = "a small student trained towards a frozen teacher's embeddings or class probabilities"
    labels: torch.Tensor

    def __init__(
        self,
        backbone: Backbone,
        params: DistillParams,
        image_size: int,
        data: DataInfo,
        *,
        teacher: Backbone,
        teacher_grid: PatchGrid | None = None,
        teacher_head: nn.Linear | None = None,
        labels: torch.Tensor | None = None,
    ) -> None:
        super().__init__(backbone, params, image_size, data)
        self.teacher = frozen_copy(teacher).eval()
        self.teacher_grid = teacher_grid
        if params.objective == "logits":
            if teacher_head is None or labels is None:
                raise ValueError("the logits objective needs a classifier teacher and the images' labels")
            self.teacher_head: nn.Linear | None = frozen_copy(teacher_head).eval()
            self.head: nn.Module = nn.Linear(backbone.dim, teacher_head.out_features)
            self.register_buffer("labels", labels.long())
            self.logit_loss = LogitDistillationLoss(params.temperature, params.soft_weight)
            self.view_configs = (ViewConfig(image_size, crop_scale=(0.5, 1.0), jitter_p=0.0, grayscale_p=0.0),)
        else:
            self.teacher_head = None
            self.head = MLPHead(backbone.dim, max(backbone.dim, 512), teacher.dim)
            self.embedding_loss = EmbeddingDistillationLoss(params.form)
            self.similarity_loss = SimilarityDistillationLoss(params.student_temperature, params.teacher_temperature)
            size = min(params.queue_size, data.num_images) if data.num_images else params.queue_size
            self.queue = FeatureQueue(max(1, size), teacher.dim)
            self.view_configs = (ViewConfig(image_size),)
        self.pending: torch.Tensor | None = None

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()  # batch-norm statistics stay the teacher's
        if self.teacher_head is not None:
            self.teacher_head.eval()
        return self

    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.teacher_grid is not None:
                return self.teacher_grid.features(self.teacher, x)
            return self.teacher.features(x)

    def training_step(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
    ) -> StepOutput:
        (view,) = self.views(images, generator)
        target = self.teacher_features(view)
        student = self.head(self.backbone.features(view))
        if self.params.objective == "logits":
            assert self.teacher_head is not None
            with torch.no_grad():
                teacher_logits = self.teacher_head(target)
            labels = self.labels[indices]
            loss = self.logit_loss(student, teacher_logits, labels)
            agree = (student.argmax(dim=1) == teacher_logits.argmax(dim=1)).float().mean()
            return StepOutput(loss, {"teacher_agreement": float(agree)})
        if self.params.objective == "similarity":
            loss = self.similarity_loss(student, target, self.queue.negatives())
            self.pending = target.detach().float()
            return StepOutput(loss, {"queue_filled": float(self.queue.filled)})
        return StepOutput(self.embedding_loss(student, target))

    def on_step_end(self, step: int, total_steps: int) -> None:
        if self.pending is not None:
            self.queue.enqueue(nn.functional.normalize(self.pending, dim=1))
            self.pending = None

    def classifier_head(self) -> nn.Linear | None:
        """The student's linear head when it learned the teacher's classes (``logits``), else None."""
        return self.head if isinstance(self.head, nn.Linear) else None


def compare_encoders(
    encoders: dict[str, tuple[Backbone, PatchGrid | None, BackboneCost]],
    images: np.ndarray,
    labels: np.ndarray | None,
    image_size: int,
    device: torch.device,
    protocol: KnnProtocol | None = None,
    throughput_images: int = 1024,
) -> dict[str, dict[str, Any]]:
    """Each named encoder's parameters, FLOPs per image, embedding throughput (images/s over up to
    ``throughput_images`` images at batch 256, after a warm-up batch) and, with labels, kNN and linear-probe
    accuracy on one seeded split of the labelled images (the probe's penalty chosen on a tenth of the bank)."""
    protocol = protocol or KnnProtocol()
    split = protocol.split(labels) if labels is not None and can_evaluate(labels) else None
    sample = images[: min(len(images), throughput_images)]
    report: dict[str, dict[str, Any]] = {}
    for name, (backbone, patches, cost) in encoders.items():
        embed_images(backbone, sample[:64], image_size, device, patches=patches)  # warm-up
        tick = time.perf_counter()
        embed_images(backbone, sample, image_size, device, patches=patches)
        entry: dict[str, Any] = {
            "parameters": cost.parameters,
            "flops_per_image": cost.flops,
            "embedding_dim": cost.dim,
            "embedding_images_per_second": round(len(sample) / (time.perf_counter() - tick), 1),
        }
        if split is not None and labels is not None:
            bank, queries = split
            bank_x = embed_images(backbone, images[bank], image_size, device, patches=patches)
            query_x = embed_images(backbone, images[queries], image_size, device, patches=patches)
            entry["knn_accuracy"] = round(
                knn_accuracy(bank_x, labels[bank], query_x, labels[queries], protocol.k, protocol.temperature), 4
            )
            entry["linear_probe_accuracy"] = round(_probe_accuracy(bank_x, labels[bank], query_x, labels[queries]), 4)
        report[name] = entry
    return report


def _probe_accuracy(train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor, test_y: np.ndarray) -> float:
    order = np.random.default_rng(0).permutation(len(train_x))
    n_val = max(1, len(order) // 10)
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    y = torch.from_numpy(train_y).long()
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    probe = linear_probe(train_x[train], y[train], train_x[val], y[val], num_classes)
    with torch.no_grad():
        predicted = probe.head(test_x.float()).argmax(dim=1).numpy()
    return float((predicted == test_y).mean())
