"""Trained models: reading, downloading, embedding images with them and classifiers' predictions."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core import jobs
from api.core.artifacts import ArtifactStore
from api.core.auth import lock_tenant
from api.core.models import Job, Model
from api.core.problems import Problem, field_error
from api.core.settings import Settings
from api.services.lookup import get_owned, list_owned
from api.serving import ServingCache, fit_request_images
from ssl_core import export
from ssl_core.encoder import load_classifier, load_encoder

log = logging.getLogger(__name__)


def get_model(session: Session, *, tenant_id: str, model_id: str) -> Model:
    return get_owned(session, Model, "model", tenant_id=tenant_id, resource_id=model_id)


def list_models(
    session: Session, *, tenant_id: str, after: str | None, limit: int, type: str | None = None
) -> dict[str, object]:
    return list_owned(session, Model, tenant_id=tenant_id, after=after, limit=limit, type=type)


def delete_model(session: Session, *, tenant_id: str, model_id: str, store: ArtifactStore, cache: ServingCache) -> None:
    """Delete one of the tenant's models with its file, exports and cached features. Raises ``Problem``: 404, or
    409 while an active job uses it. Models trained from it and indexes built with it stay (an index is then
    searched by vector or item)."""
    model = get_model(session, tenant_id=tenant_id, model_id=model_id)
    lock_tenant(session, tenant_id)  # as submissions do: none can start using the model until this commits
    users = session.scalars(
        select(Job.id).where(Job.tenant_id == tenant_id, Job.status.in_(jobs.ACTIVE), jobs.reads_model(model.id))
    ).all()
    if users:
        session.rollback()  # releases the tenant's lock
        raise Problem(
            409, "model_in_use", f"model {model.id} is used by active jobs ({', '.join(users)}); cancel them first"
        )
    session.delete(model)
    session.commit()
    store.remove_model(model.id)
    cache.forget_model(model.id)


def model_file(session: Session, *, tenant_id: str, model_id: str, store: ArtifactStore) -> Path:
    """The stored file of one of the tenant's models (a classifier's holds its head and class names too)."""
    return store.model_path(get_model(session, tenant_id=tenant_id, model_id=model_id).id)


#: File name endings of each download format.
EXPORT_SUFFIXES: dict[str, str] = {
    "state_dict": ".pt",
    "safetensors": ".safetensors",
    "torchscript": ".torchscript.pt",
    "onnx": ".onnx",
}
#: One build at a time per export file in this process (another process may build it too: the rename is atomic),
#: through a fixed set of locks chosen by the file's path.
_BUILD_LOCKS = tuple(threading.Lock() for _ in range(64))


@dataclass(frozen=True)
class ExportRequest:
    format: export.ExportFormat
    target: export.Target | None  # None: the format holds weights, not a module


@dataclass(frozen=True)
class ExportFile:
    path: Path
    filename: str
    metadata: dict[str, Any]


def export_request(model: Model, *, format: str, target: str | None) -> ExportRequest:
    """Check a download request against the model before anything is built. Raises ``Problem`` (422) naming
    ``format`` or ``target``."""
    if format not in export.FORMATS:
        raise field_error("format", f"unknown format {format!r}; valid: {', '.join(export.FORMATS)}")
    if format not in export.MODULE_FORMATS:
        if target is not None:
            raise field_error(
                "target", f"applies to {' and '.join(export.MODULE_FORMATS)}; {format} holds the whole model's weights"
            )
        return ExportRequest(cast(export.ExportFormat, format), None)
    if target is None:
        default: export.Target = "classifier" if model.type == "classifier" else "embedding"
        return ExportRequest(cast(export.ExportFormat, format), default)
    if target not in export.TARGETS:
        raise field_error("target", f"unknown target {target!r}; valid: {', '.join(export.TARGETS)}")
    if target == "classifier" and model.type != "classifier":
        raise field_error("target", f"model {model.id} is an encoder; only embedding is available")
    return ExportRequest(cast(export.ExportFormat, format), cast(export.Target, target))


def export_file(model: Model, request: ExportRequest, store: ArtifactStore) -> ExportFile:
    """The model in the requested format: built on the first request and kept beside the model file (written to
    a temporary file and renamed, so a half-written export is never served), with its metadata (also kept,
    as a JSON file written before the export). Blocking: run it off the event loop. Raises ``Problem`` (422
    naming ``format``) if the model cannot be exported to that format."""
    base = request.target or "weights"
    path = store.export_path(model.id, base + EXPORT_SUFFIXES[request.format])
    sidecar = store.export_path(model.id, f"{base}.{request.format}.json")
    if request.format == "state_dict":
        path = store.model_path(model.id)
    filename = model.id + ("" if request.target is None else f"-{request.target}") + EXPORT_SUFFIXES[request.format]
    with _build_lock(path):
        if not (path.is_file() and sidecar.is_file()):
            try:
                _build_export(model, request, store, path, sidecar)
            except Exception as exc:
                log.exception("export of %s to %s failed", model.id, request.format)
                reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                raise field_error(
                    "format",
                    f"model {model.id} ({model.backbone}) cannot be exported to {request.format}: {reason}",
                    code="export_failed",
                ) from exc
        metadata = json.loads(sidecar.read_text())
    return ExportFile(path, filename, metadata)


def _build_lock(path: Path) -> threading.Lock:
    return _BUILD_LOCKS[hash(path) % len(_BUILD_LOCKS)]


def _build_export(model: Model, request: ExportRequest, store: ArtifactStore, path: Path, sidecar: Path) -> None:
    cpu = torch.device("cpu")  # exports are built and traced on the CPU: they run anywhere
    source = store.model_path(model.id)
    classifier, classes = None, None
    if model.type == "classifier":
        classifier, info, classes = load_classifier(source, cpu)
        backbone = classifier.backbone
    else:
        backbone, info = load_encoder(source, cpu)
    target = request.target or ("classifier" if classifier is not None else "embedding")
    metadata = export.export_metadata(info, model_id=model.id, format=request.format, target=target, classes=classes)
    export.write_atomically(sidecar, lambda tmp: tmp.write_text(json.dumps(metadata)))
    if request.format == "state_dict":
        return  # the model file itself
    if request.format == "safetensors":
        head = None if classifier is None else classifier.head
        export.write_atomically(path, lambda tmp: export.save_safetensors(tmp, backbone, head, metadata))
        return
    module = export.export_module(backbone, info, target, classifier)
    save = export.save_torchscript if request.format == "torchscript" else export.save_onnx
    export.write_atomically(path, lambda tmp: save(tmp, module, info, metadata))


def fit_images(
    *,
    model: Model,
    images: Sequence[object],
    field: str,
    settings: Settings,
    store: ArtifactStore,
    cache: ServingCache,
) -> np.ndarray:
    """``images`` (bytes, or base64 strings from JSON; named ``field[i]`` in errors) decoded and fitted to what
    the model was trained on: (N, C, H, W) uint8. Loads the model (once per process). Raises ``Problem`` for an
    unreadable image."""
    path = store.model_path(model.id)
    embedder = cache.predictor(model.id, path) if model.type == "classifier" else cache.embedder(model.id, path)
    return fit_request_images(
        images, field, embedder, max_bytes=settings.max_request_image_bytes, max_pixels=settings.max_image_pixels
    )


async def embed(*, model: Model, fitted: np.ndarray, store: ArtifactStore, cache: ServingCache) -> dict[str, object]:
    """L2-normalised embeddings of ``fitted`` images as the response body, computed in a forward pass shared
    with concurrent requests to the model. Raises ``Problem`` for a non-finite embedding."""
    vectors = await cache.embed_batched(model.id, store.model_path(model.id), fitted)
    return {
        "data": [{"index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
        "dim": int(vectors.shape[1]),
        "model_id": model.id,
    }


DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class PredictionQuery:
    """Which classes to answer with (``classes`` None: all) and how many of them per image."""

    top_k: int
    classes: list[str] | None


def prediction_query(model: Model, *, top_k: int | None, classes: list[str] | None) -> PredictionQuery:
    """Check a predictions request against a classifier before any image is read. Raises ``Problem`` (422)
    for an encoder, an unknown class name, or a ``top_k`` above the number of classes asked about."""
    if model.type != "classifier" or not model.classes:
        raise Problem(
            422,
            "not_a_classifier",
            f"model_id: {model.id} is an encoder; run a linear or finetune evaluation of it to get a classifier",
            errors=[{"field": "model_id", "reason": "is an encoder, not a classifier"}],
        )
    if classes:
        classes = list(dict.fromkeys(classes))
        unknown = [c for c in classes if c not in model.classes]
        if unknown:
            raise field_error(
                "classes", f"unknown class {unknown[0]!r}; the model's classes: {', '.join(model.classes)}"
            )
    available = len(classes) if classes else len(model.classes)
    if top_k is None:
        top_k = min(DEFAULT_TOP_K, available)
    elif top_k > available:
        raise field_error("top_k", f"at most {available}, the number of classes to choose from")
    return PredictionQuery(top_k, classes or None)


async def predict(
    *, model: Model, query: PredictionQuery, fitted: np.ndarray, store: ArtifactStore, cache: ServingCache
) -> dict[str, object]:
    """The ``query.top_k`` most probable of ``query.classes`` for each of the ``fitted`` images, best first, as the
    response body, computed in a forward pass shared with concurrent requests to the classifier. Probabilities
    are over all the model's classes, also when only some are asked about. Raises ``Problem`` for non-finite
    output."""
    probabilities = await cache.predict_batched(model.id, store.model_path(model.id), fitted)
    names = list(model.classes or [])  # the row's, written with the file's head: same names, same order
    asked = names if query.classes is None else query.classes
    candidates = np.array(sorted(names.index(c) for c in asked))
    data = []
    for i, row in enumerate(probabilities):
        # Stable on candidates in class order: ties go to the lower class index, as in evaluation.
        best = candidates[np.argsort(-row[candidates], kind="stable")[: query.top_k]]
        data.append({"index": i, "predictions": [{"class": names[c], "probability": float(row[c])} for c in best]})
    return {"data": data, "classes": names, "model_id": model.id}
