"""Trained models: reading, downloading and embedding images with them."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from api.core.artifacts import ArtifactStore
from api.core.models import Model
from api.core.settings import Settings
from api.services.lookup import get_owned, list_owned
from api.serving import ServingCache, decode_request_image


def get_model(session: Session, *, tenant_id: str, model_id: str) -> Model:
    return get_owned(session, Model, "model", tenant_id=tenant_id, resource_id=model_id)


def list_models(session: Session, *, tenant_id: str, after: str | None, limit: int) -> dict[str, object]:
    return list_owned(session, Model, tenant_id=tenant_id, after=after, limit=limit)


def model_file(session: Session, *, tenant_id: str, model_id: str, store: ArtifactStore) -> Path:
    """The stored encoder file of one of the tenant's models."""
    return store.model_path(get_model(session, tenant_id=tenant_id, model_id=model_id).id)


def embed(
    *, model: Model, images: list[bytes], field: str, settings: Settings, store: ArtifactStore, cache: ServingCache
) -> dict[str, object]:
    """L2-normalised embeddings of ``images`` (named ``field[i]`` in errors) as the response body. Raises
    ``Problem`` for an unreadable image or a non-finite embedding."""
    decoded = [
        decode_request_image(data, f"{field}[{i}]", settings.max_request_image_bytes, settings.max_image_pixels)
        for i, data in enumerate(images)
    ]
    vectors = cache.embed(cache.embedder(model.id, store.model_path(model.id)), decoded)
    return {
        "data": [{"index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
        "dim": int(vectors.shape[1]),
        "model_id": model.id,
    }
