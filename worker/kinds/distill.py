"""Distill: train a small student backbone towards a trained model (the teacher), compare the two, save the
student as a model (a classifier when it learned the teacher's classes)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from api.core.specs import DistillSpec, spec_from_json
from ssl_core.backbones import backbone_cost
from ssl_core.data import ImageArray
from ssl_core.device import resolve_device
from ssl_core.distill import Distiller, compare_encoders
from ssl_core.encoder import EncoderInfo, load_classifier, load_encoder
from ssl_core.evaluate import describe_embedding
from ssl_core.methods.base import DataInfo
from ssl_core.train import initial_backbone, resolve_optimizer
from worker.context import JobContext, JobFailed, Outcome
from worker.kinds.pretrain import train_method


def teacher_labels(data: ImageArray, teacher_classes: list[str]) -> np.ndarray:
    """The dataset's labels as the teacher's class indices, by name; -1 for unlabelled images and classes the
    teacher does not know."""
    index = {name: i for i, name in enumerate(teacher_classes)}
    mapping = np.array([index.get(name, -1) for name in data.classes] + [-1], dtype=np.int64)
    if data.labels is None:
        return np.full(len(data), -1, dtype=np.int64)
    return mapping[np.where(data.labels >= 0, data.labels, len(data.classes))]


def run_distill(ctx: JobContext) -> Outcome:
    spec = spec_from_json(ctx.job.spec)
    assert isinstance(spec, DistillSpec)
    ctx.update(phase="loading")
    data = ctx.load_dataset(spec.dataset_id)
    if len(data) < 2:
        raise JobFailed("dataset_too_small", "distillation needs at least 2 images")
    teacher_row = ctx.owned_model(spec.teacher_model_id)
    device = resolve_device(ctx.settings.device)
    path = ctx.store.model_path(teacher_row.id)
    head, classes, labels = None, None, None
    if spec.objective == "logits":
        classifier, info, classes = load_classifier(path, device)
        teacher, head = classifier.backbone, classifier.head
        labels = teacher_labels(data, classes)
    else:
        teacher, info = load_encoder(path, device)
    channels = int(data.images.shape[1])
    if info.channels != channels:
        raise JobFailed(
            "unsuitable_dataset", f"the teacher takes {info.channels}-channel images; the dataset's have {channels}"
        )
    cfg = spec.train_config()
    student = initial_backbone(cfg)
    params = spec.distill_params()
    method = Distiller(
        student,
        params,
        cfg.image_size,
        DataInfo(len(data), channels),
        teacher=teacher,
        teacher_grid=info.patch_grid,
        teacher_head=head,
        labels=None if labels is None else torch.from_numpy(labels),
    )
    method.optimizer_settings = resolve_optimizer(cfg, method.optimizer_settings)
    started = time.monotonic()
    metrics = train_method(ctx, method, data.images, data.labels, cfg, device)
    ctx.update(phase="comparing", progress=0.92)
    student = method.encoder()
    student_cost = backbone_cost(cfg.backbone, cfg.stem, cfg.image_size, cfg.patch_size)
    teacher_cost = backbone_cost(info.backbone, info.stem, info.image_size, info.patch_size)  # type: ignore[arg-type]
    comparison = compare_encoders(
        {"teacher": (method.teacher, info.patch_grid, teacher_cost), "student": (student, None, student_cost)},
        data.images,
        data.labels,
        cfg.image_size,
        device,
    )
    comparison["student_over_teacher"] = _ratios(comparison["student"], comparison["teacher"])
    metrics["comparison"] = comparison
    metrics["comparison_protocol"] = (
        "kNN (k=20, T=0.1, cosine) and a linear probe (L-BFGS logistic regression, penalty chosen on a tenth of the "
        "bank) on one seeded split of the dataset's labelled images (20% queries, at most 2,000); throughput: "
        f"embedding up to 1,024 images at batch 256 on {device.type}, this worker, after a warm-up batch"
    )
    ctx.event("metrics", {"comparison": comparison})
    ctx.update(phase="saving", progress=0.98)
    student_info = EncoderInfo(
        method="distill",
        backbone=cfg.backbone,
        stem=cfg.stem,
        image_size=cfg.image_size,
        channels=channels,
        stored_size=(int(data.images.shape[2]), int(data.images.shape[3])),
        embedding_dim=student.dim,
        patch_size=getattr(student, "patch_size", None),
    )
    metrics["embedding"] = describe_embedding(None)
    metrics["wall_seconds"] = round(time.monotonic() - started, 1)
    step = {"kind": "distill", "method": f"distill:{spec.objective}", "teacher_model_id": teacher_row.id}
    model, directory = ctx.save_model(
        student,
        student_info,
        dataset_id=spec.dataset_id,
        metrics=metrics,
        head=method.classifier_head(),
        classes=classes,
        lineage_step=step,
    )
    return Outcome(result={"model_id": model.id, "metrics": metrics}, rows=[model], artifacts=[directory])


def _ratios(student: dict[str, Any], teacher: dict[str, Any]) -> dict[str, float]:
    """The student's figure over the teacher's for each figure both have."""
    keys = ("parameters", "flops_per_image", "embedding_images_per_second", "knn_accuracy", "linear_probe_accuracy")
    return {k: round(student[k] / teacher[k], 4) for k in keys if k in student and k in teacher and teacher[k]}
