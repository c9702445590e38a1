from __future__ import annotations

import json
from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.core.models import Model
from api.core.problems import field_error, unsupported_media_type
from api.core.settings import Settings
from api.deps import PageLimit, SessionDep, SettingsDep, StoreDep, TenantId
from api.json_body import read_json
from api.openapi import IMAGES_BODY, problem, problems
from api.schemas import MAX_TOP_K, Cursor, EmbeddingsOut, MapOut, ModelOut, Page, PredictionsOut
from api.services import dashboard
from api.services import models as service
from ssl_core import export

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=Page[ModelOut], responses=problems(422))
def list_models(
    session: SessionDep,
    tenant_id: TenantId,
    type: Literal["encoder", "classifier"] | None = None,
    after: Cursor = None,
    limit: PageLimit = 50,
) -> dict[str, object]:
    """The tenant's models, newest first; ``type`` keeps encoders or classifiers only."""
    return service.list_models(session, tenant_id=tenant_id, after=after, limit=limit, type=type)


@router.get("/{model_id}", response_model=ModelOut, responses=problems(404))
def read_model(model_id: str, session: SessionDep, tenant_id: TenantId) -> Model:
    return service.get_model(session, tenant_id=tenant_id, model_id=model_id)


@router.delete(
    "/{model_id}",
    status_code=204,
    responses={**problems(403, 404), **problem(409, "An active job uses the model; cancel it first")},
)
def delete_model(
    model_id: str, request: Request, session: SessionDep, tenant_id: TenantId, store: StoreDep
) -> Response:
    """Delete the model, its file and its cached exports. Models trained from it and indexes built with it stay:
    such an index is searched by vector or item, no longer by image."""
    service.delete_model(session, tenant_id=tenant_id, model_id=model_id, store=store, cache=request.app.state.serving)
    return Response(status_code=204)


@router.get("/{model_id}/map", response_model=MapOut, responses={**problems(404, 422, 503), **problem(409)})
async def embedding_map(
    model_id: str,
    request: Request,
    session: SessionDep,
    tenant_id: TenantId,
    store: StoreDep,
    dataset_id: Annotated[str | None, Query(description="whose items to draw; default: the model's dataset")] = None,
    limit: Annotated[int, Query(ge=1, le=dashboard.MAX_MAP_POINTS)] = dashboard.DEFAULT_MAP_POINTS,
) -> dict[str, object]:
    """Up to ``limit`` of the dataset's items, evenly spaced, embedded by the model and projected on their first
    two principal components (PCA), each with its label: a map of the embeddings."""
    model, dataset = await run_in_threadpool(
        partial(dashboard.map_plan, session, tenant_id=tenant_id, model_id=model_id, dataset_id=dataset_id)
    )
    cache = request.app.state.serving
    async with cache.admit():
        return await cache.run(  # the model on the bounded serving pool
            partial(dashboard.embedding_map, model=model, dataset=dataset, limit=limit, store=store, cache=cache)
        )


@router.get(
    "/{model_id}/download",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            "headers": {
                "X-Jaga-Export": {
                    "description": "the export's metadata as compact JSON (input contract, preprocessing, output), "
                    "as stored in the file, without the class names",
                    "schema": {"type": "string"},
                }
            },
        },
        **problems(404, 422),
    },
)
async def download_model(
    model_id: str,
    request: Request,
    session: SessionDep,
    tenant_id: TenantId,
    store: StoreDep,
    format: Annotated[
        str,
        Query(
            description="state_dict: the PyTorch file (torch.load(path, weights_only=True)); safetensors: the "
            "weights; torchscript, onnx: a module taking float32 (B, C, H, W) images in [0, 1] at the model's "
            "stored size and giving what the service serves",
            json_schema_extra={"enum": list(export.FORMATS)},
        ),
    ] = "state_dict",
    target: Annotated[
        str | None,
        Query(
            description="torchscript and onnx only: embedding (L2-normalised embeddings, as POST .../embeddings) "
            "or classifier (class probabilities, as POST .../predictions; classifiers only). Default: classifier "
            "for a classifier, embedding for an encoder",
            json_schema_extra={"enum": list(export.TARGETS)},
        ),
    ] = None,
) -> FileResponse:
    """The model as a file. ``state_dict``: backbone ``state_dict`` plus the info needed to rebuild the evaluation
    transform (``torch.load(path, weights_only=True)``); a classifier's also holds its linear ``head`` (a
    ``state_dict``) and ``classes``, the class names in the head's output order. ``safetensors``: the same
    weights, keys ``backbone.*`` and (classifiers) ``head.*``. ``torchscript`` (``torch.jit.load``) and ``onnx``
    (dynamic batch axis): the embedding model, or a classifier's probabilities, with resizing, normalisation and
    (embeddings) L2 normalisation inside. Every file carries its metadata (input contract, preprocessing, output,
    classes) as JSON; ``X-Jaga-Export`` repeats it. Exports are built on the first request and kept."""
    model = await run_in_threadpool(partial(service.get_model, session, tenant_id=tenant_id, model_id=model_id))
    wanted = service.export_request(model, format=format, target=target)
    cache = request.app.state.serving
    found = await cache.run(partial(service.export_file, model, wanted, store))  # builds off the event loop
    metadata = {k: v for k, v in found.metadata.items() if k != "classes"}
    return FileResponse(
        found.path,
        media_type="application/octet-stream",
        filename=found.filename,
        headers={"X-Jaga-Export": json.dumps(metadata, separators=(",", ":"))},
    )


async def request_images(request: Request, settings: Settings) -> tuple[str, list[object]]:
    """The images of a request, not yet decoded: bytes from multipart ``files`` (repeatable) or the values of JSON
    ``{"images": [base64, ...]}`` (decoded with the images, off the event loop), with the field that names them in
    errors."""
    limit = settings.max_images_per_request
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=limit + 1)
        files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        if not files:
            raise field_error("files", "send at least one image in the repeatable 'files' field")
        if len(files) > limit:
            raise field_error("files", f"at most {limit} images per request")
        return "files", [await f.read(settings.max_request_image_bytes + 1) for f in files]
    if ctype.startswith("application/json"):
        body = await read_json(request)
        images = body.get("images") if isinstance(body, dict) else None
        if not isinstance(images, list) or not images:
            raise field_error("images", "must be a non-empty list of base64 strings")
        if len(images) > limit:
            raise field_error("images", f"at most {limit} images per request")
        return "images", images
    raise unsupported_media_type("multipart/form-data (files) or application/json (images)")


@router.post(
    "/{model_id}/embeddings",
    response_model=EmbeddingsOut,
    responses=problems(400, 404, 413, 415, 422, 503),
    openapi_extra=IMAGES_BODY,
)
async def embed(
    model_id: str, request: Request, session: SessionDep, tenant_id: TenantId, settings: SettingsDep, store: StoreDep
) -> dict[str, object]:
    """L2-normalised embeddings, one per image, under the same transform as evaluation."""
    model = await run_in_threadpool(partial(service.get_model, session, tenant_id=tenant_id, model_id=model_id))
    cache = request.app.state.serving
    async with cache.admit():
        field, images = await request_images(request, settings)
        fitted = await cache.run(  # decoding on the bounded serving pool, per request: a bad image fails only its own
            partial(
                service.fit_images, model=model, images=images, field=field, settings=settings, store=store, cache=cache
            )
        )
        return await service.embed(model=model, fitted=fitted, store=store, cache=cache)


@router.post(
    "/{model_id}/predictions",
    response_model=PredictionsOut,
    responses=problems(400, 404, 413, 415, 422, 503),
    openapi_extra=IMAGES_BODY,
)
async def predict(
    model_id: str,
    request: Request,
    session: SessionDep,
    tenant_id: TenantId,
    settings: SettingsDep,
    store: StoreDep,
    top_k: Annotated[
        int | None, Query(ge=1, le=MAX_TOP_K, description="default 5, or every class asked about if fewer")
    ] = None,
    classes: Annotated[list[str] | None, Query(description="answer with only these classes (repeatable)")] = None,
) -> dict[str, object]:
    """A classifier's most probable classes per image, best first, under the evaluation transform; images as
    for embeddings. Probabilities are over all the model's classes, also when ``classes`` restricts the answer."""
    model = await run_in_threadpool(partial(service.get_model, session, tenant_id=tenant_id, model_id=model_id))
    query = service.prediction_query(model, top_k=top_k, classes=classes)
    cache = request.app.state.serving
    async with cache.admit():
        field, images = await request_images(request, settings)
        fitted = await cache.run(  # decoding on the bounded serving pool, per request: a bad image fails only its own
            partial(
                service.fit_images, model=model, images=images, field=field, settings=settings, store=store, cache=cache
            )
        )
        return await service.predict(model=model, query=query, fitted=fitted, store=store, cache=cache)
