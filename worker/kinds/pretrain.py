"""Pretrain: train an encoder with a self-supervised method, evaluate it, save it as a model."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from api.core.models import Model
from api.core.specs import PretrainSpec, spec_from_json
from ssl_core.backbones import Backbone
from ssl_core.config import TrainConfig
from ssl_core.continual import Preserving
from ssl_core.data import ImageArray
from ssl_core.device import resolve_device
from ssl_core.encoder import EncoderInfo, load_encoder
from ssl_core.evaluate import (
    KnnProtocol,
    PatchGrid,
    can_evaluate,
    describe_embedding,
    embed_images,
    evaluate_knn,
    pixel_features,
)
from ssl_core.methods.base import DataInfo, SSLMethod
from ssl_core.monitor import RepresentationCollapsed, RepresentationMonitor, RepresentationStats
from ssl_core.train import Callbacks, CheckpointMismatch, Progress, Trainer, build_method, initial_backbone
from worker.context import JobContext, JobFailed, Outcome, StopReason


class JobCallbacks(Callbacks):
    """Reports training to the job row (throttled) and its event log (once per epoch)."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx

    def on_step(self, p: Progress) -> None:
        self.ctx.update(
            force=False,
            phase="training",
            progress=round(0.9 * p.fraction, 4),
            step=p.step,
            total_steps=p.total_steps,
            epoch=p.epoch,
            loss=p.loss,
            eta_seconds=p.eta_seconds,
        )

    def on_epoch_end(self, epoch: int, p: Progress) -> None:
        self.ctx.event(
            "metrics",
            {
                "epoch": epoch,
                "step": p.step,
                "loss": round(p.loss, 5),
                "lr": p.lr,
                "images_per_second": round(p.images_per_second, 1),
                "skipped_steps": p.skipped_steps,
            },
        )

    def on_representation(self, stats: RepresentationStats) -> None:
        self.ctx.event("metrics", stats.as_event())
        if stats.status != "ok":
            self.ctx.event(
                "warning", {"epoch": stats.epoch, "code": f"representation_{stats.status}", "message": stats.reason}
            )

    def may_write_checkpoint(self) -> bool:
        return self.ctx.holds_lease()

    def stop_requested(self) -> StopReason | None:
        return self.ctx.stop_requested()


def knn_report(
    ctx: JobContext,
    spec: PretrainSpec,
    data: ImageArray,
    backbone: Backbone,
    device: torch.device,
    patches: PatchGrid | None = None,
    start: Backbone | None = None,
) -> dict[str, Any]:
    """kNN accuracy of the trained encoder, a randomly initialised one (both embedding images as the method
    does: whole, or by ``patches``), the encoder it ``start``ed from (continued pretraining) and raw pixels, same
    protocol."""
    assert data.labels is not None
    protocol = KnnProtocol()
    bank, queries = protocol.split(data.labels)
    subset = sorted(set(bank.tolist()) | set(queries.tolist()))
    images, labels = data.images[subset], data.labels[subset]
    size = spec.image_size
    trained = evaluate_knn(embed_images(backbone, images, size, device, patches=patches), labels, protocol)
    ctx.raise_if_stopped()
    random_backbone = initial_backbone(spec.train_config()).to(device)
    random_init = evaluate_knn(embed_images(random_backbone, images, size, device, patches=patches), labels, protocol)
    ctx.raise_if_stopped()  # between passes over up to 12,000 images: a stop request, and a sign of life
    pixels = evaluate_knn(pixel_features(images, size), labels, protocol)
    before = {}
    if start is not None:
        ctx.raise_if_stopped()
        accuracy = evaluate_knn(embed_images(start, images, size, device, patches=patches), labels, protocol)
        before["knn_accuracy_init_model"] = round(accuracy, 4)
    return {
        "knn_accuracy": round(trained, 4),
        "knn_accuracy_random_init": round(random_init, 4),
        **before,
        "knn_accuracy_raw_pixels": round(pixels, 4),
        "knn_protocol": protocol.describe(len(bank), len(queries), size, patches),
    }


def starting_encoder(ctx: JobContext, spec: PretrainSpec, channels: int) -> tuple[Model | None, Backbone | None]:
    """The model a continued pretraining starts from and its encoder, in training mode (None, None for a fresh
    start). A resumed attempt builds it too: its checkpoint then overwrites the weights."""
    if spec.init_model_id is None:
        return None, None
    parent = ctx.owned_model(spec.init_model_id)
    backbone, info = load_encoder(ctx.store.model_path(parent.id), torch.device("cpu"))
    if (info.backbone, info.stem) != (spec.backbone, spec.stem) or info.channels != channels:
        raise JobFailed(
            "unsuitable_model",
            f"model {parent.id} is a {info.backbone} ({info.stem} stem) on {info.channels}-channel images; "
            f"this job trains a {spec.backbone} ({spec.stem} stem) on {channels}-channel images",
        )
    return parent, backbone.train()


def train_method(
    ctx: JobContext,
    method: SSLMethod[Any],
    images: np.ndarray,
    labels: np.ndarray | None,
    cfg: TrainConfig,
    device: torch.device,
) -> dict[str, Any]:
    """Run the training loop for a job (resuming from its checkpoint where one fits), reporting progress,
    precision and representation statistics; returns the training metrics. Divergence and collapse fail the
    job."""
    monitor = RepresentationMonitor(images, labels, cfg.image_size, device, seed=cfg.seed, patch_grid=method.patch_grid)
    trainer = Trainer(method, images, cfg, device, ctx.store.checkpoint_path(ctx.job_id), JobCallbacks(ctx), monitor)
    try:
        if trainer.load_checkpoint():
            ctx.event("message", {"message": f"resumed from checkpoint at step {trainer.step}"})
    except CheckpointMismatch as exc:
        ctx.event("message", {"message": f"checkpoint not resumed, training from the start: {exc}"})
    choice = trainer.precision_choice
    ctx.event(
        "message",
        {
            "message": f"training in {choice.precision} on {device.type}: {choice.reason}",
            "precision": choice.precision,
            "precision_reason": choice.reason,
        },
    )
    try:
        result = trainer.run()
    except FloatingPointError as exc:
        raise JobFailed("training_diverged", str(exc)) from None
    except RepresentationCollapsed as exc:
        raise JobFailed("representation_collapsed", str(exc)) from None
    # The last throttled progress write may be a second old: record where training really ended.
    ctx.update(
        phase="evaluating",
        progress=0.9,
        loss=result.final_loss,
        eta_seconds=None,
        step=result.steps,
        total_steps=result.steps,
        epoch=int(result.epochs),
    )
    metrics: dict[str, Any] = {
        "final_loss": round(result.final_loss, 5),
        "steps": result.steps,
        "epochs": round(result.epochs, 3),
        "train_seconds": round(result.seconds, 1),
        "images_per_second": round(result.images_per_second, 1),
        "skipped_steps": result.skipped_steps,
        "device": device.type,
        "precision": trainer.precision,
        "precision_reason": trainer.precision_choice.reason,
        "step_profile_seconds": {k: round(v, 2) for k, v in (result.step_profile or {}).items()},
        "embedding": describe_embedding(method.patch_grid),
    }
    return metrics


def run_pretrain(ctx: JobContext) -> Outcome:
    spec = spec_from_json(ctx.job.spec)
    assert isinstance(spec, PretrainSpec)
    ctx.update(phase="loading")
    data = ctx.load_dataset(spec.dataset_id)
    if len(data) < 2:
        raise JobFailed("dataset_too_small", "pretraining needs at least 2 images")
    device = resolve_device(ctx.settings.device)
    cfg = spec.train_config()
    parent, start = starting_encoder(ctx, spec, int(data.images.shape[1]))
    try:
        method = build_method(cfg, spec.params, DataInfo(len(data), int(data.images.shape[1])), backbone=start)
    except ValueError as exc:  # checked at submission too; the dataset is what it is by now
        raise JobFailed("unsuitable_dataset", str(exc)) from None
    if spec.preserve != "none":
        method = Preserving(method, spec.preserve, spec.preserve_weight)
    started = time.monotonic()
    metrics = train_method(ctx, method, data.images, data.labels, cfg, device)
    backbone = method.encoder()
    if can_evaluate(data.labels):
        start = None if parent is None else load_encoder(ctx.store.model_path(parent.id), device)[0]
        metrics.update(knn_report(ctx, spec, data, backbone, device, method.patch_grid, start))
        ctx.event("metrics", {k: v for k, v in metrics.items() if k.startswith("knn_accuracy")})
    else:
        ctx.event("message", {"message": "dataset has no labels: kNN evaluation skipped"})
    ctx.update(phase="saving", progress=0.98)
    info = EncoderInfo(
        method=spec.method,
        backbone=spec.backbone,
        stem=spec.stem,
        image_size=spec.image_size,
        channels=int(data.images.shape[1]),
        stored_size=tuple(data.images.shape[2:]),
        embedding_dim=backbone.dim,
        patch_size=getattr(backbone, "patch_size", None),
        patch_grid=method.patch_grid,
    )
    metrics["wall_seconds"] = round(time.monotonic() - started, 1)
    step = {"kind": "pretrain", "method": spec.method, **({"preserve": spec.preserve} if parent else {})}
    model, directory = ctx.save_model(
        backbone, info, dataset_id=spec.dataset_id, metrics=metrics, parent=parent, lineage_step=step
    )
    return Outcome(result={"model_id": model.id, "metrics": metrics}, rows=[model], artifacts=[directory])
