from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.core.models import Model
from api.core.problems import field_error
from api.deps import SessionDep, SettingsDep, StoreDep, TenantId
from api.schemas import EmbeddingsOut, ModelOut, Page
from api.services.lookup import get_owned, list_owned
from api.serving import decode_base64, decode_request_image

router = APIRouter(prefix="/v1/models", tags=["models"])


def get_model(session: Session, tenant_id: str, model_id: str) -> Model:
    return get_owned(session, Model, "model", tenant_id=tenant_id, resource_id=model_id)


@router.get("", response_model=Page[ModelOut])
def list_models(session: SessionDep, tenant_id: TenantId, after: str | None = None,
                limit: Annotated[int, Query()] = 50) -> dict[str, object]:
    return list_owned(session, Model, tenant_id=tenant_id, after=after, limit=limit)


@router.get("/{model_id}", response_model=ModelOut)
def read_model(model_id: str, session: SessionDep, tenant_id: TenantId) -> Model:
    return get_model(session, tenant_id, model_id)


@router.get("/{model_id}/download")
def download_model(model_id: str, session: SessionDep, tenant_id: TenantId, store: StoreDep,
                   format: str = "state_dict") -> FileResponse:
    """The encoder as a PyTorch file: backbone ``state_dict`` plus the info needed to rebuild the
    evaluation transform (``torch.load(path, weights_only=True)``)."""
    if format != "state_dict":
        raise field_error("format", "must be 'state_dict' (torchscript and onnx are not offered yet)")
    model = get_model(session, tenant_id, model_id)
    return FileResponse(store.model_path(model.id), media_type="application/octet-stream",
                        filename=f"{model.id}.pt")


async def request_images(request: Request, settings: Any) -> list[bytes]:
    """Image bytes from multipart ``files`` (repeatable) or JSON ``{"images": [base64, ...]}``."""
    limit = settings.max_images_per_request
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=limit + 1)
        files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        if not files:
            raise field_error("files", "send at least one image in the repeatable 'files' field")
        if len(files) > limit:
            raise field_error("files", f"at most {limit} images per request")
        return [await f.read(settings.max_request_image_bytes + 1) for f in files]
    if ctype.startswith("application/json"):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise field_error("body", "is not valid JSON", status=400, code="malformed_json") from None
        images = body.get("images") if isinstance(body, dict) else None
        if not isinstance(images, list) or not images:
            raise field_error("images", "must be a non-empty list of base64 strings")
        if len(images) > limit:
            raise field_error("images", f"at most {limit} images per request")
        return [decode_base64(v, f"images[{i}]") for i, v in enumerate(images)]
    raise field_error("Content-Type", "must be multipart/form-data (files) or application/json (images)",
                      status=415, code="unsupported_media_type")


@router.post("/{model_id}/embeddings", response_model=EmbeddingsOut)
async def embed(model_id: str, request: Request, session: SessionDep, tenant_id: TenantId,
                settings: SettingsDep, store: StoreDep) -> dict[str, object]:
    """L2-normalised embeddings, one per image, under the same transform as evaluation."""
    model = get_model(session, tenant_id, model_id)
    raw = await request_images(request, settings)
    is_json = request.headers.get("content-type", "").startswith("application/json")
    images = [decode_request_image(data, f"images[{i}]" if is_json else f"files[{i}]",
                                   settings.max_request_image_bytes, settings.max_image_pixels)
              for i, data in enumerate(raw)]
    cache = request.app.state.serving
    embedder = await run_in_threadpool(cache.embedder, model.id, store.model_path(model.id))
    vectors = await run_in_threadpool(cache.embed, embedder, images)
    return {"data": [{"index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
            "dim": int(vectors.shape[1]), "model_id": model.id}
