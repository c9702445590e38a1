from __future__ import annotations

import json
import math
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.core.models import VectorIndex
from api.core.problems import field_error
from api.deps import SessionDep, SettingsDep, StoreDep, TenantId
from api.schemas import IndexOut, Page, SearchOut
from api.services.lookup import get_owned, list_owned
from api.serving import decode_base64, decode_request_image

router = APIRouter(prefix="/v1/indexes", tags=["indexes"])
MAX_K = 1000


def get_index_row(session: Session, tenant_id: str, index_id: str) -> VectorIndex:
    return get_owned(session, VectorIndex, "index", tenant_id=tenant_id, resource_id=index_id)


@router.get("", response_model=Page[IndexOut])
def list_indexes(session: SessionDep, tenant_id: TenantId, after: str | None = None,
                 limit: Annotated[int, Query()] = 50) -> dict[str, object]:
    return list_owned(session, VectorIndex, tenant_id=tenant_id, after=after, limit=limit)


@router.get("/{index_id}", response_model=IndexOut)
def read_index(index_id: str, session: SessionDep, tenant_id: TenantId) -> VectorIndex:
    return get_index_row(session, tenant_id, index_id)


def _parse_k(value: object) -> int:
    if value is None:
        return 10
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise field_error("k", f"must be an integer from 1 to {MAX_K}")
    try:
        k = int(value)
    except ValueError:
        raise field_error("k", f"must be an integer from 1 to {MAX_K}") from None
    if not 1 <= k <= MAX_K:
        raise field_error("k", f"must be an integer from 1 to {MAX_K}")
    return k


async def _query(request: Request) -> dict[str, Any]:
    """The search query from multipart (``image`` file, ``k``) or JSON (one of vector, image, item; k)."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=2)
        image = form.get("image")
        if not isinstance(image, UploadFile):
            raise field_error("image", "send the query image as the multipart file field 'image'")
        return {"image": await image.read(), "k": form.get("k")}
    if ctype.startswith("application/json"):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise field_error("body", "is not valid JSON", status=400, code="malformed_json") from None
        if not isinstance(body, dict):
            raise field_error("body", "must be a JSON object")
        unknown = set(body) - {"vector", "image", "item", "k"}
        if unknown:
            raise field_error(sorted(unknown)[0], "unknown field")
        given = [f for f in ("vector", "image", "item") if body.get(f) is not None]
        if len(given) != 1:
            raise field_error("body", "give exactly one of 'vector', 'image' or 'item'")
        if "image" in given:
            body["image"] = decode_base64(body["image"], "image")
        return body
    raise field_error("Content-Type", "must be multipart/form-data (image) or application/json",
                      status=415, code="unsupported_media_type")


@router.post("/{index_id}/search", response_model=SearchOut)
async def search(index_id: str, request: Request, session: SessionDep, tenant_id: TenantId,
                 settings: SettingsDep, store: StoreDep) -> dict[str, object]:
    """The k nearest items by cosine similarity. Searching by ``item`` leaves the item itself out."""
    row = get_index_row(session, tenant_id, index_id)
    query = await _query(request)
    k = _parse_k(query.get("k"))
    cache = request.app.state.serving
    index = await run_in_threadpool(cache.index, row.id, store.index_dir(row.id))
    exclude = None
    if query.get("vector") is not None:
        vec = query["vector"]
        if (not isinstance(vec, list) or len(vec) != index.dim
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in vec)):
            raise field_error("vector", f"must be a list of {index.dim} numbers")
        vector = np.asarray(vec, dtype=np.float32)
        if not np.isfinite(vector).all() or not np.any(vector) or any(math.isinf(v) for v in vec):
            raise field_error("vector", "must be finite and not all zero")
    elif query.get("item") is not None:
        item = query["item"]
        if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < len(index):
            raise field_error("item", f"must be an item number from 0 to {len(index) - 1}")
        vector, exclude = index.vector(item), item
    else:
        image = decode_request_image(query["image"], "image", settings.max_request_image_bytes,
                                     settings.max_image_pixels)
        embedder = await run_in_threadpool(cache.embedder, row.model_id, store.model_path(row.model_id))
        vector = (await run_in_threadpool(cache.embed, embedder, [image]))[0]
    hits = index.search(vector, k, exclude=exclude)
    return {"index_id": row.id, "k": k, "results": [
        {"item": h.item, "score": round(h.score, 6), "label": index.labels[h.item],
         "filename": index.filenames[h.item]} for h in hits]}
