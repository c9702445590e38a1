"""Vector indexes: reading them and kNN search."""

from __future__ import annotations

import numpy as np
from sqlalchemy.orm import Session

from api.core.artifacts import ArtifactStore
from api.core.models import VectorIndex
from api.core.problems import field_error
from api.core.settings import Settings
from api.schemas import SearchQuery
from api.services.lookup import get_owned, list_owned
from api.serving import ServingCache, decode_request_image


def get_index(session: Session, *, tenant_id: str, index_id: str) -> VectorIndex:
    return get_owned(session, VectorIndex, "index", tenant_id=tenant_id, resource_id=index_id)


def list_indexes(session: Session, *, tenant_id: str, after: str | None, limit: int) -> dict[str, object]:
    return list_owned(session, VectorIndex, tenant_id=tenant_id, after=after, limit=limit)


def search(
    *, row: VectorIndex, query: SearchQuery, settings: Settings, store: ArtifactStore, cache: ServingCache
) -> dict[str, object]:
    """The ``query.k`` nearest items by cosine similarity, as the response body. Raises ``Problem`` (422) for a
    vector of the wrong length, an item number past the index's end, or an unreadable image."""
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
        image = decode_request_image(query.image, "image", settings.max_request_image_bytes, settings.max_image_pixels)
        vector = cache.embed(cache.embedder(row.model_id, store.model_path(row.model_id)), [image])[0]
    hits = index.search(vector, query.k, exclude=exclude)
    return {
        "index_id": row.id,
        "k": query.k,
        "results": [
            {
                "item": h.item,
                "score": round(h.score, 6),
                "label": index.labels[h.item],
                "filename": index.filenames[h.item],
            }
            for h in hits
        ],
    }
