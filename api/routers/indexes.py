from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.core.models import VectorIndex
from api.core.problems import field_error, unsupported_media_type
from api.core.settings import Settings
from api.deps import PageLimit, SessionDep, SettingsDep, StoreDep, TenantId
from api.json_body import read_json
from api.openapi import BATCH_SEARCH_BODY, SEARCH_BODY, problem, problems
from api.schemas import BatchSearchOut, Cursor, IndexOut, Page, SearchOut
from api.services import indexes as service

router = APIRouter(prefix="/v1/indexes", tags=["indexes"])
MODEL_DELETED = "A query by image, and the model that embeds the index's images has been deleted"


@router.get("", response_model=Page[IndexOut], responses=problems(422))
def list_indexes(
    session: SessionDep,
    tenant_id: TenantId,
    model_id: Annotated[str | None, Query(max_length=32, description="only the indexes of this model")] = None,
    after: Cursor = None,
    limit: PageLimit = 50,
) -> dict[str, object]:
    """The tenant's indexes, newest first."""
    return service.list_indexes(session, tenant_id=tenant_id, after=after, limit=limit, model_id=model_id)


@router.get("/{index_id}", response_model=IndexOut, responses=problems(404))
def read_index(index_id: str, session: SessionDep, tenant_id: TenantId) -> VectorIndex:
    return service.get_index(session, tenant_id=tenant_id, index_id=index_id)


@router.delete("/{index_id}", status_code=204, responses=problems(403, 404))
def delete_index(
    index_id: str, request: Request, session: SessionDep, tenant_id: TenantId, store: StoreDep
) -> Response:
    """Delete the index and its files."""
    service.delete_index(session, tenant_id=tenant_id, index_id=index_id, store=store, cache=request.app.state.serving)
    return Response(status_code=204)


async def _query_body(request: Request, settings: Settings) -> object:
    """The search query as sent: the multipart fields (``image`` file, ``k``) or the JSON body, validated later."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=2)
        image = form.get("image")
        if not isinstance(image, UploadFile):
            raise field_error("image", "send the query image as the multipart file field 'image'")
        return {"image": await image.read(settings.max_request_image_bytes + 1), "k": form.get("k")}
    if ctype.startswith("application/json"):
        return await read_json(request)
    raise unsupported_media_type("multipart/form-data (image) or application/json")


@router.post(
    "/{index_id}/search",
    response_model=SearchOut,
    responses={**problems(400, 404, 413, 415, 422, 503), **problem(409, MODEL_DELETED)},
    openapi_extra=SEARCH_BODY,
)
async def search(
    index_id: str, request: Request, session: SessionDep, tenant_id: TenantId, settings: SettingsDep, store: StoreDep
) -> dict[str, object]:
    """The k nearest items by cosine similarity: ``SearchQuery`` as JSON, or multipart ``image`` and ``k``.
    Searching by ``item`` leaves the item itself out."""
    row = await run_in_threadpool(partial(service.get_index, session, tenant_id=tenant_id, index_id=index_id))
    cache = request.app.state.serving
    async with cache.admit():
        body = await _query_body(request, settings)
        return await cache.run(  # base64, image decoding and the model on the bounded serving pool
            partial(service.search, row=row, body=body, settings=settings, store=store, cache=cache)
        )


async def _batch_query_body(request: Request, settings: Settings) -> object:
    """The batch query as sent: the multipart fields (``images`` files, repeated; ``k``) or the JSON body."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        limit = settings.max_images_per_request
        form = await request.form(max_files=limit + 1)
        files = [f for f in form.getlist("images") if isinstance(f, UploadFile)]
        if not files:
            raise field_error("images", "send the query images in the repeatable multipart file field 'images'")
        if len(files) > limit:
            raise field_error("images", f"at most {limit} images per request")
        return {"images": [await f.read(settings.max_request_image_bytes + 1) for f in files], "k": form.get("k")}
    if ctype.startswith("application/json"):
        return await read_json(request)
    raise unsupported_media_type("multipart/form-data (images) or application/json")


@router.post(
    "/{index_id}/search/batch",
    response_model=BatchSearchOut,
    responses={**problems(400, 404, 413, 415, 422, 503), **problem(409, MODEL_DELETED)},
    openapi_extra=BATCH_SEARCH_BODY,
)
async def batch_search(
    index_id: str, request: Request, session: SessionDep, tenant_id: TenantId, settings: SettingsDep, store: StoreDep
) -> dict[str, object]:
    """The k nearest items of each of many queries, in request order: ``BatchSearchQuery`` as JSON (``vectors``,
    ``items`` or ``images``), or multipart ``images`` (repeated) and ``k``."""
    row = await run_in_threadpool(partial(service.get_index, session, tenant_id=tenant_id, index_id=index_id))
    cache = request.app.state.serving
    async with cache.admit():
        body = await _batch_query_body(request, settings)
        return await cache.run(  # base64, image decoding, the model and FAISS on the bounded serving pool
            partial(service.batch_search, row=row, body=body, settings=settings, store=store, cache=cache)
        )
