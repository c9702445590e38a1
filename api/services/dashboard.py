"""What the dashboard reads beyond the resources themselves: a dataset item's image, a model's embeddings in two
dimensions, and the queue with the workers that hold leases."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import torch
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.core.artifacts import ArtifactStore
from api.core.images import stored_to_pil
from api.core.models import Dataset, Job, Model, Worker, utcnow
from api.core.problems import field_error
from api.services.lookup import find_owned, get_owned
from api.serving import ServingCache
from ssl_core.data import ImageArray

#: The longest side of an item's thumbnail; smaller stored images are sent at their stored size.
THUMBNAIL_SIDE = 128
#: The most embeddings one map projects.
MAX_MAP_POINTS = 2000
DEFAULT_MAP_POINTS = 500
#: Items a map embeds at once.
MAP_CHUNK = 256


def _ready(session: Session, tenant_id: str, dataset_id: str, field: str | None = None) -> Dataset:
    """The tenant's dataset, ready: a 404 for an unknown one (or, with ``field``, a 422 naming it), a 409 for one
    still ingesting or failed."""
    if field is None:
        dataset = get_owned(session, Dataset, "dataset", tenant_id=tenant_id, resource_id=dataset_id)
    else:
        found = find_owned(session, Dataset, "dataset", tenant_id=tenant_id, resource_id=dataset_id)
        if found is None:
            raise field_error(field, f"no dataset {dataset_id!r}")
        dataset = found
    if dataset.status != "ready":
        raise field_error(
            field or "dataset_id",
            f"dataset {dataset.id} is {dataset.status}, not ready",
            status=409,
            code="dataset_not_ready",
        )
    return dataset


def _stored(store: ArtifactStore, dataset: Dataset) -> ImageArray:
    """The dataset's decoded images (memory-mapped), or a 409 when its files are gone: deleted since its row was
    read."""
    try:
        return ImageArray.load(store.dataset_dir(dataset.id))
    except FileNotFoundError:
        raise field_error(
            "dataset_id", f"dataset {dataset.id}'s stored images are gone", status=409, code="dataset_unavailable"
        ) from None


def item_image(session: Session, *, tenant_id: str, dataset_id: str, item: int, store: ArtifactStore) -> bytes:
    """Item ``item`` of a ready dataset as a PNG, its longest side at most ``THUMBNAIL_SIDE`` pixels. Raises a 404
    for an unknown dataset, a 409 for one not ready, a 422 naming ``item`` past its end."""
    dataset = _ready(session, tenant_id, dataset_id)
    if not 0 <= item < dataset.num_images:
        raise field_error("item", f"must be an item number from 0 to {dataset.num_images - 1}")
    data = _stored(store, dataset)
    pixels = np.ascontiguousarray(data.images[item])  # (C, H, W) uint8, one row read from the memory map
    image = stored_to_pil(pixels)
    if max(image.size) > THUMBNAIL_SIDE:
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def map_plan(session: Session, *, tenant_id: str, model_id: str, dataset_id: str | None) -> tuple[Model, Dataset]:
    """The model and the ready dataset a map of its embeddings draws (the model's own dataset by default). Raises
    a 404 for an unknown model, a 422 naming ``dataset_id`` for an unknown dataset or one whose images have other
    channels than the model's, a 409 for one not ready."""
    model = get_owned(session, Model, "model", tenant_id=tenant_id, resource_id=model_id)
    dataset = _ready(session, tenant_id, dataset_id or model.dataset_id, field="dataset_id")
    channels = (dataset.image_shape or [3])[0]
    if model.channels is not None and model.channels != channels:
        raise field_error(
            "dataset_id", f"its images have {channels} channels; model {model.id} takes {model.channels}-channel images"
        )
    return model, dataset


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """(N, D) → (N, 2): the projection on the first two principal components, and the fraction of the variance
    each explains (zeros where there is none, e.g. one point)."""
    x = torch.from_numpy(np.asarray(vectors, dtype=np.float64))
    x = x - x.mean(dim=0, keepdim=True)
    _, singular, vh = torch.linalg.svd(x, full_matrices=False)
    components = vh[:2]
    points = x @ components.T
    if points.shape[1] < 2:  # one dimension only
        points = torch.cat([points, torch.zeros(points.shape[0], 2 - points.shape[1], dtype=points.dtype)], dim=1)
    variance = singular**2
    total = float(variance.sum())
    explained = [float(v) / total if total > 0 else 0.0 for v in variance[:2].tolist()]
    explained += [0.0] * (2 - len(explained))
    return points.numpy(), explained


def embedding_map(
    *, model: Model, dataset: Dataset, limit: int, store: ArtifactStore, cache: ServingCache
) -> dict[str, object]:
    """Up to ``limit`` of the dataset's items, evenly spaced, embedded by the model and projected on their first
    two principal components, with their labels. Runs the model: call it on the serving pool."""
    data = _stored(store, dataset)
    n = len(data)
    items = np.unique(np.linspace(0, n - 1, num=min(limit, n)).round().astype(np.int64)) if n else np.zeros(0, int)
    path = store.model_path(model.id)
    embedder = cache.predictor(model.id, path) if model.type == "classifier" else cache.embedder(model.id, path)
    if len(items):
        # A chunk of pixels at a time: 2000 items stored at 224 px would be 300 MB at once.
        vectors = np.concatenate(
            [
                cache.embed(embedder, np.ascontiguousarray(data.images[items[start : start + MAP_CHUNK]]))
                for start in range(0, len(items), MAP_CHUNK)
            ]
        )
        points, explained = pca_2d(vectors)
    else:
        points, explained = np.zeros((0, 2)), [0.0, 0.0]
    label_of: Callable[[int], str | None] = (
        (lambda i: data.classes[int(data.labels[i])] if data.labels[i] >= 0 else None)  # type: ignore[index]
        if data.labels is not None
        else (lambda i: None)
    )
    return {
        "model_id": model.id,
        "dataset_id": dataset.id,
        "method": "pca",
        "explained_variance": [round(v, 6) for v in explained],
        "points": [
            {"item": int(i), "x": round(float(p[0]), 6), "y": round(float(p[1]), 6), "label": label_of(int(i))}
            for i, p in zip(items.tolist(), points, strict=True)
        ],
    }


def queue_overview(
    session: Session, *, tenant_id: str, queue: str, depth: Callable[[], int], within_seconds: float
) -> dict[str, Any]:
    """The tenant's jobs by status, the messages waiting in the broker's queue (None when it does not answer)
    and the workers heard from in the last ``within_seconds``, each with the job whose lease it holds when that
    job is the tenant's (another tenant's job shows only as ``busy``)."""
    rows = session.execute(
        select(Job.status, func.count()).where(Job.tenant_id == tenant_id, Job.kind != "ingest").group_by(Job.status)
    ).all()
    counts = {status: 0 for status in ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")}
    counts.update({status: int(count) for status, count in rows})
    try:
        waiting: int | None = depth()
    except Exception:  # noqa: BLE001 - an unreachable broker is shown, not an error
        waiting = None
    cutoff = utcnow() - timedelta(seconds=within_seconds)
    workers = list(
        session.scalars(
            select(Worker).where(Worker.queue == queue, Worker.last_seen_at >= cutoff).order_by(Worker.started_at)
        )
    )
    busy = [w.job_id for w in workers if w.job_id]
    own = (
        {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(busy), Job.tenant_id == tenant_id))}
        if busy
        else {}
    )
    return {
        "queue": queue,
        "queue_depth": waiting,
        "jobs": counts,
        "workers": [
            {
                "id": w.id,
                "hostname": w.hostname,
                "pid": w.pid,
                "started_at": w.started_at,
                "last_seen_at": w.last_seen_at,
                "busy": w.job_id is not None,
                "job_id": w.job_id if w.job_id in own else None,
                "job_kind": own[w.job_id].kind if w.job_id in own else None,
                "job_status": own[w.job_id].status if w.job_id in own else None,
            }
            for w in workers
        ],
    }
