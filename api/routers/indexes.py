from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.core.models import VectorIndex
from api.core.problems import field_error, invalid, validation_errors
from api.deps import PageLimit, SessionDep, SettingsDep, StoreDep, TenantId
from api.json_body import read_json
from api.schemas import Cursor, IndexOut, Page, SearchOut, SearchQuery
from api.services import indexes as service

router = APIRouter(prefix="/v1/indexes", tags=["indexes"])


@router.get("", response_model=Page[IndexOut])
def list_indexes(
    session: SessionDep, tenant_id: TenantId, after: Cursor = None, limit: PageLimit = 50
) -> dict[str, object]:
    return service.list_indexes(session, tenant_id=tenant_id, after=after, limit=limit)


@router.get("/{index_id}", response_model=IndexOut)
def read_index(index_id: str, session: SessionDep, tenant_id: TenantId) -> VectorIndex:
    return service.get_index(session, tenant_id=tenant_id, index_id=index_id)


async def _query(request: Request) -> SearchQuery:
    """The search query from multipart (``image`` file, ``k``) or a JSON ``SearchQuery``."""
    ctype = request.headers.get("content-type", "")
    body: Any
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=2)
        image = form.get("image")
        if not isinstance(image, UploadFile):
            raise field_error("image", "send the query image as the multipart file field 'image'")
        body = {"image": await image.read(), "k": form.get("k")}
    elif ctype.startswith("application/json"):
        body = await read_json(request)
    else:
        raise field_error(
            "Content-Type",
            "must be multipart/form-data (image) or application/json",
            status=415,
            code="unsupported_media_type",
        )
    try:
        return SearchQuery.model_validate(body)
    except ValidationError as exc:
        raise invalid(validation_errors(exc.errors(include_url=False))) from None


@router.post("/{index_id}/search", response_model=SearchOut)
async def search(
    index_id: str, request: Request, session: SessionDep, tenant_id: TenantId, settings: SettingsDep, store: StoreDep
) -> dict[str, object]:
    """The k nearest items by cosine similarity. Searching by ``item`` leaves the item itself out."""
    row = service.get_index(session, tenant_id=tenant_id, index_id=index_id)
    query = await _query(request)
    return await run_in_threadpool(
        partial(service.search, row=row, query=query, settings=settings, store=store, cache=request.app.state.serving)
    )
