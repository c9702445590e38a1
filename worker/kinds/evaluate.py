"""Evaluate: measure an encoder on a labelled dataset (kNN, linear probe, fine-tuning) or train the supervised
baseline; ``linear``, ``finetune`` and ``supervised`` save a classifier model that serves predictions."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from api.core.models import Model
from api.core.specs import EvaluateSpec, spec_from_json
from ssl_core.config import TrainConfig
from ssl_core.data import match_channels, read_rows, take_rows
from ssl_core.device import resolve_device
from ssl_core.encoder import EncoderInfo, load_encoder
from ssl_core.evaluate import classification_metrics, describe_embedding, embed_images, knn_classification
from ssl_core.finetune import Classifier, CurvePoint, FinetuneCallbacks, finetune, predict_logits, stages
from ssl_core.linear_probe import linear_probe
from ssl_core.splits import SplitError, Splits, make_splits
from ssl_core.train import initial_backbone
from worker.context import JobContext, JobFailed, Outcome


class Evaluation:
    """What every protocol works on: the encoder to evaluate, the labelled images and their splits."""

    def __init__(self, ctx: JobContext, spec: EvaluateSpec) -> None:
        self.ctx = ctx
        self.spec = spec
        self.device = resolve_device(ctx.settings.device)
        data = ctx.load_dataset(spec.dataset_id)
        if data.labels is None or len(np.unique(data.labels[data.labels >= 0])) < 2:
            raise JobFailed("unlabelled_dataset", f"dataset {spec.dataset_id} needs labels of at least 2 classes")
        self.data = data
        self.classes = list(data.classes)
        self.source: Model | None = None
        if spec.model_id is not None:
            self.source = ctx.owned_model(spec.model_id)
            self.backbone, self.info = load_encoder(ctx.store.model_path(self.source.id), self.device)
        else:
            cfg = TrainConfig(backbone=spec.backbone, stem=spec.stem, image_size=spec.image_size, seed=spec.seed)
            self.backbone = initial_backbone(cfg).to(self.device)
            self.info = EncoderInfo(
                method="supervised",
                backbone=spec.backbone,
                stem=spec.stem,
                image_size=spec.image_size,
                channels=int(data.images.shape[1]),
                stored_size=(int(data.images.shape[2]), int(data.images.shape[3])),
                embedding_dim=self.backbone.dim,
                patch_size=getattr(self.backbone, "patch_size", None),
            )
        self.test_dataset_id = spec.test_dataset_id or spec.dataset_id
        if spec.test_dataset_id is None:
            self.test_images, test_labels = data.images, data.labels
        else:
            self.test_images, test_labels = self._test_set(spec.test_dataset_id)
        try:
            self.splits: Splits = make_splits(
                data.labels,
                len(self.classes),
                spec.split_plan(),
                spec.dataset_id,
                self.classes,
                test_labels=test_labels if spec.test_dataset_id else None,
                test_key=spec.test_dataset_id,
            )
        except SplitError as exc:
            raise JobFailed("unsuitable_dataset", str(exc)) from None
        self.test_labels = test_labels[self.splits.test]

    def _test_set(self, dataset_id: str) -> tuple[np.ndarray, np.ndarray]:
        """The test dataset's images and its labels mapped to the training classes (-1: unlabelled)."""
        test = self.ctx.load_dataset(dataset_id)
        if test.labels is None:
            raise JobFailed("unlabelled_dataset", f"test dataset {dataset_id} has no labels")
        unknown = sorted(set(test.classes) - set(self.classes))
        if unknown:
            raise JobFailed("class_mismatch", f"test classes not in the training dataset: {', '.join(unknown[:10])}")
        if test.images.shape[1] != self.data.images.shape[1]:
            raise JobFailed("channel_mismatch", "the test dataset's channels differ from the training dataset's")
        index = {name: i for i, name in enumerate(self.classes)}
        mapping = np.array([index[name] for name in test.classes] + [-1], dtype=np.int64)
        return test.images, mapping[test.labels]

    def images(self, which: str) -> np.ndarray:
        """The (channel-matched) images of one split, in a memory-mapped temporary file."""
        source = self.test_images if which == "test" else self.data.images
        return take_rows(source, getattr(self.splits, which), self.info.channels)

    def labels(self, which: str) -> np.ndarray:
        if which == "test":
            return self.test_labels
        assert self.data.labels is not None
        return self.data.labels[getattr(self.splits, which)]

    def features(self, which: str) -> torch.Tensor:
        """Frozen features of a split's images, from the model's cache of its datasets' features."""
        if which == "test":
            cached = self._cached_features(self.test_dataset_id, self.test_images)
        else:
            cached = self._cached_features(self.spec.dataset_id, self.data.images)
        return torch.from_numpy(np.asarray(cached[getattr(self.splits, which)]))

    def _cached_features(self, dataset_id: str, images: np.ndarray) -> np.ndarray:
        """Features of every image of a dataset, extracted once per model and dataset."""
        assert self.source is not None
        path = self.ctx.store.features_path(self.source.id, dataset_id)
        if path.exists():
            cached: np.ndarray = np.load(path, mmap_mode="r")
            if cached.shape[0] == len(images):
                return cached
        self.ctx.update(phase="extracting features")
        parts = []
        for start in range(0, len(images), 4096):
            self.ctx.raise_if_stopped()
            chunk = match_channels(read_rows(images, start, start + 4096), self.info.channels)
            batch = embed_images(
                self.backbone, chunk, self.info.image_size, self.device, patches=self.info.patch_grid, normalize=False
            )
            parts.append(batch.numpy())
        features = np.concatenate(parts).astype(np.float32)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, features)
        os.replace(tmp, path)  # concurrent evaluations of the same pair write the same array
        return features

    def protocol(self) -> dict[str, Any]:
        out: dict[str, Any] = {"protocol": self.spec.protocol, **self.spec.split_plan().describe()}
        out["splits"] = self.splits.describe()
        out["test_dataset_id"] = self.spec.test_dataset_id
        out["image_size"] = self.info.image_size
        out["transform"] = "resize to image_size, normalise (no augmentation)"
        out["embedding"] = describe_embedding(self.info.patch_grid)
        return out


def _knn(ev: Evaluation) -> tuple[dict[str, Any], dict[str, Any], None]:
    spec = ev.spec
    ev.ctx.update(phase="embedding", progress=0.1)
    bank = torch.cat([ev.features("train"), ev.features("val")])
    bank_labels = np.concatenate([ev.labels("train"), ev.labels("val")])
    queries = ev.features("test")
    ev.ctx.update(phase="scoring", progress=0.8)
    metrics = knn_classification(bank, bank_labels, queries, ev.test_labels, ev.classes, spec.k, spec.temperature)
    settings = {
        "classifier": "weighted kNN, cosine similarity of L2-normalised features, votes exp(sim/T)",
        "k": spec.k,
        "temperature": spec.temperature,
        "bank": "the labelled training and validation images",
    }
    return settings, metrics, None


def _linear(ev: Evaluation) -> tuple[dict[str, Any], dict[str, Any], Classifier]:
    ev.ctx.update(phase="extracting features", progress=0.1)
    train_x, val_x, test_x = ev.features("train"), ev.features("val"), ev.features("test")
    ev.ctx.update(phase="fitting", progress=0.5)

    def report(wd: float, acc: float) -> None:
        ev.ctx.raise_if_stopped()
        ev.ctx.event("metrics", {"weight_decay": wd, "val_accuracy": round(acc, 4)})

    train_y = torch.from_numpy(ev.labels("train")).long()
    val_y = torch.from_numpy(ev.labels("val")).long()
    probe = linear_probe(train_x, train_y, val_x, val_y, len(ev.classes), on_fit=report)
    with torch.no_grad():
        scores = probe.head(test_x.float())
    classifier = Classifier(ev.backbone, len(ev.classes), ev.info.patch_grid)
    classifier.head.load_state_dict(probe.head.state_dict())
    return probe.describe(), classification_metrics(scores, ev.test_labels, ev.classes), classifier


def _finetune(ev: Evaluation) -> tuple[dict[str, Any], dict[str, Any], Classifier]:
    spec = ev.spec
    cfg = spec.finetune_config(ev.info.image_size)
    if cfg.strategy == "partial" and cfg.trainable_blocks > len(stages(ev.backbone)):
        raise JobFailed("unsuitable_model", f"{ev.info.backbone} has {len(stages(ev.backbone))} stages to fine-tune")
    classifier = Classifier(ev.backbone, len(ev.classes), ev.info.patch_grid)
    assert ev.data.labels is not None
    ctx = ev.ctx

    def on_epoch(point: CurvePoint) -> None:
        ctx.event("metrics", point.as_event())

    def on_step(step: int, total: int) -> None:
        ctx.update(force=False, phase="training", step=step, total_steps=total, progress=round(0.9 * step / total, 4))

    ctx.update(phase="training", progress=0.0)
    result = finetune(
        classifier,
        ev.data.images,
        ev.data.labels,
        ev.splits.train,
        ev.splits.val,
        cfg,
        ev.device,
        FinetuneCallbacks(on_epoch=on_epoch, on_step=on_step, stop_requested=ctx.stop_requested),
        channels=ev.info.channels,
    )
    ctx.update(phase="testing", progress=0.92, step=result.steps, total_steps=result.steps, epoch=result.epochs)
    logits = predict_logits(classifier, ev.images("test"), ev.info.image_size, ev.device)
    settings = {
        **cfg.describe(),
        "epochs_run": result.epochs,
        "steps": result.steps,
        "best_epoch": result.best_epoch,
        "best_val_accuracy": None if result.best_val_accuracy is None else round(result.best_val_accuracy, 4),
        "stopped_early": result.stopped_early,
        "train_seconds": round(result.seconds, 1),
        "precision": result.precision,
        "precision_reason": result.precision_reason,
    }
    if spec.protocol == "supervised":
        settings.update(backbone=spec.backbone, stem=spec.stem, init=f"random (seed {spec.seed})")
    return settings, classification_metrics(logits, ev.test_labels, ev.classes), classifier


PROTOCOLS = {"knn": _knn, "linear": _linear, "finetune": _finetune, "supervised": _finetune}


def run_evaluate(ctx: JobContext) -> Outcome:
    spec = spec_from_json(ctx.job.spec)
    assert isinstance(spec, EvaluateSpec)
    ctx.update(phase="loading")
    started = time.monotonic()
    ev = Evaluation(ctx, spec)
    ctx.event("message", {"message": "splits", **ev.splits.describe()})
    settings, metrics, classifier = PROTOCOLS[spec.protocol](ev)
    protocol = {**ev.protocol(), **settings}
    result: dict[str, Any] = {
        "protocol": protocol,
        "subset_id": ev.splits.subset_id,
        "source_model_id": spec.model_id,
        "classes": ev.classes,
        **metrics,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    summary: dict[str, Any] = {k: result[k] for k in ("top1", "top5") if k in result}
    ctx.event("metrics", {"test": summary})
    if classifier is None:
        return Outcome(result={**result, "model_id": None})
    ctx.update(phase="saving", progress=0.97)
    model_metrics: dict[str, Any] = {**summary, "protocol": protocol, "subset_id": ev.splits.subset_id}
    row, directory = ctx.save_model(
        classifier.backbone,
        ev.info,
        dataset_id=spec.dataset_id,
        metrics=model_metrics,
        head=classifier.head,
        classes=ev.classes,
        source_model_id=spec.model_id,
        parent=ev.source,
        lineage_step={"kind": spec.protocol, "method": spec.protocol},
    )
    return Outcome(result={**result, "model_id": row.id}, rows=[row], artifacts=[directory])
