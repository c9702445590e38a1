"""Vector indexes: reading them and kNN search."""

from __future__ import annotations

import numpy as np
from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.core.artifacts import ArtifactStore
from api.core.knn_index import KnnIndex, SearchHit
from api.core.models import VectorIndex
from api.core.problems import Problem, field_error, invalid, validation_errors
from api.core.settings import Settings
from api.schemas import BatchSearchQuery, SearchQuery
from api.services.lookup import get_owned, list_owned
from api.serving import ServingCache, fit_request_image, fit_request_images
from ssl_core.encoder import Embedder


def get_index(session: Session, *, tenant_id: str, index_id: str) -> VectorIndex:
    return get_owned(session, VectorIndex, "index", tenant_id=tenant_id, resource_id=index_id)


def list_indexes(
    session: Session, *, tenant_id: str, after: str | None, limit: int, model_id: str | None = None
) -> dict[str, object]:
    """A page of the tenant's indexes, newest first; ``model_id`` keeps those of one model."""
    return list_owned(session, VectorIndex, tenant_id=tenant_id, after=after, limit=limit, model_id=model_id)


def delete_index(session: Session, *, tenant_id: str, index_id: str, store: ArtifactStore, cache: ServingCache) -> None:
    """Delete one of the tenant's indexes and its files. Raises ``Problem`` (404)."""
    index = get_index(session, tenant_id=tenant_id, index_id=index_id)
    session.delete(index)
    session.commit()
    store.remove_index(index.id)
    cache.indexes.forget(index.id)


def _embedder(row: VectorIndex, store: ArtifactStore, cache: ServingCache, field: str) -> Embedder:
    """The model that embeds query images for the index; 409 naming ``field`` once that model was deleted."""
    if not store.has_model(row.model_id):
        reason = f"model {row.model_id}, which embeds this index's query images, has been deleted"
        raise Problem(
            409,
            "model_deleted",
            f"{field}: {reason}; search by vector or item",
            errors=[{"field": field, "reason": reason}],
        )
    return cache.embedder(row.model_id, store.model_path(row.model_id))


def search_query(body: object) -> SearchQuery:
    """A search request's body (JSON, or the multipart fields) as a ``SearchQuery``; a JSON image is decoded from
    base64 here. Raises ``Problem`` (422) naming every bad field."""
    try:
        return SearchQuery.model_validate(body)
    except ValidationError as exc:
        raise invalid(validation_errors(exc.errors(include_url=False))) from None


def search(
    *, row: VectorIndex, body: object, settings: Settings, store: ArtifactStore, cache: ServingCache
) -> dict[str, object]:
    """The k nearest items by cosine similarity for a search request's body (``search_query``), as the response
    body. Raises ``Problem`` (422) for a bad query, a vector of the wrong length, an item number past the index's
    end, or an unreadable image."""
    query = search_query(body)
    index = cache.index(row.id, store.index_dir(row.id))
    exclude = None
    if query.vector is not None:
        if len(query.vector) != index.dim:
            raise field_error("vector", f"must be a list of {index.dim} numbers")
        vector = np.asarray(query.vector, dtype=np.float32)
    elif query.item is not None:
        if query.item >= len(index):
            raise field_error("item", f"must be an item number from 0 to {len(index) - 1}")
        vector, exclude = index.vector(query.item), query.item
    else:
        assert query.image is not None  # SearchQuery requires one of the three
        embedder = _embedder(row, store, cache, "image")
        image = fit_request_image(
            query.image,
            "image",
            embedder,
            max_bytes=settings.max_request_image_bytes,
            max_pixels=settings.max_image_pixels,
        )
        vector = cache.embed(embedder, image[None])[0]
    hits = index.search(vector, query.k, exclude=exclude)
    return {"index_id": row.id, "k": query.k, "results": _results(index, hits)}


def _results(index: KnnIndex, hits: list[SearchHit]) -> list[dict[str, object]]:
    return [
        {"item": h.item, "score": round(h.score, 6), "label": index.labels[h.item], "filename": index.filenames[h.item]}
        for h in hits
    ]


def batch_search_query(body: object, settings: Settings) -> BatchSearchQuery:
    """A batch search's body as a ``BatchSearchQuery``. Raises ``Problem`` (422) naming every bad field; too
    many images are refused before any is decoded."""
    limit = settings.max_images_per_request
    images = body.get("images") if isinstance(body, dict) else None
    if isinstance(images, list) and len(images) > limit:
        raise field_error("images", f"at most {limit} images per request")
    try:
        return BatchSearchQuery.model_validate(body)
    except ValidationError as exc:
        raise invalid(validation_errors(exc.errors(include_url=False))) from None


def batch_search(
    *, row: VectorIndex, body: object, settings: Settings, store: ArtifactStore, cache: ServingCache
) -> dict[str, object]:
    """The k nearest items of every query in a batch search's body (``batch_search_query``), searched in one
    FAISS call, as the response body. Raises ``Problem`` (422) naming the first bad vector, item or image."""
    query = batch_search_query(body, settings)
    index = cache.index(row.id, store.index_dir(row.id))
    exclude: list[int | None] | None = None
    if query.vectors is not None:
        for i, vector in enumerate(query.vectors):
            if len(vector) != index.dim:
                raise field_error(f"vectors.{i}", f"must be a list of {index.dim} numbers")
        vectors = np.asarray(query.vectors, dtype=np.float32)
    elif query.items is not None:
        for i, item in enumerate(query.items):
            if item >= len(index):
                raise field_error(f"items.{i}", f"must be an item number from 0 to {len(index) - 1}")
        vectors = np.stack([index.vector(item) for item in query.items])
        exclude = list(query.items)
    else:
        assert query.images is not None  # BatchSearchQuery requires one of the three
        embedder = _embedder(row, store, cache, "images")
        fitted = fit_request_images(
            query.images,
            "images",
            embedder,
            max_bytes=settings.max_request_image_bytes,
            max_pixels=settings.max_image_pixels,
        )
        vectors = cache.embed(embedder, fitted)
    hit_lists = index.search_many(vectors, query.k, exclude)
    data = [{"index": i, "results": _results(index, hits)} for i, hits in enumerate(hit_lists)]
    return {"index_id": row.id, "k": query.k, "data": data}
