from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Request, Response, UploadFile
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State

from api.core.models import ApiKey, Dataset
from api.deps import PageLimit, SessionDep, SettingsDep, StoreDep, TenantId
from api.openapi import problem, problems
from api.schemas import Cursor, DatasetOut, LeaderboardOut, Page
from api.services import dashboard
from api.services import datasets as service
from api.services.leaderboard import leaderboard

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


async def before_upload(state: State, key: ApiKey) -> None:
    """The upload's quota checks that need no body, run before it is read (``api.gate.AuthorizeFirst``)."""
    await run_in_threadpool(
        service.refuse_upload_early, state.sessionmaker, tenant_id=key.tenant_id, settings=state.settings
    )


@router.post("", status_code=202, response_model=DatasetOut, responses=problems(400, 403, 413, 422))
def upload_dataset(
    request: Request,
    response: Response,
    session: SessionDep,
    tenant_id: TenantId,
    settings: SettingsDep,
    store: StoreDep,
    file: Annotated[UploadFile, File(description="zip, tar, tar.gz or npz of images")],
    name: Annotated[str, Form(max_length=200)],
) -> Dataset:
    """Upload images; they are checked now and decoded by an ingest job (see ``ingest_job_id``)."""
    dataset = service.create_dataset(
        session,
        tenant_id=tenant_id,
        name=name,
        filename=file.filename or "",
        source=file.file,
        settings=settings,
        store=store,
        celery=request.app.state.celery,
    )
    response.headers["Location"] = f"/v1/datasets/{dataset.id}"
    return dataset


@router.get("", response_model=Page[DatasetOut], responses=problems(422))
def list_datasets(
    session: SessionDep, tenant_id: TenantId, after: Cursor = None, limit: PageLimit = 50
) -> dict[str, object]:
    return service.list_datasets(session, tenant_id=tenant_id, after=after, limit=limit)


@router.get("/{dataset_id}", response_model=DatasetOut, responses=problems(404))
def get_dataset(dataset_id: str, session: SessionDep, tenant_id: TenantId) -> Dataset:
    return service.get_dataset(session, tenant_id=tenant_id, dataset_id=dataset_id)


@router.get("/{dataset_id}/leaderboard", response_model=LeaderboardOut, responses=problems(404))
def get_leaderboard(dataset_id: str, session: SessionDep, tenant_id: TenantId) -> dict[str, object]:
    """The dataset's succeeded evaluations by protocol and subset of images, best top-1 first, each group beside
    the supervised baseline trained on the same images."""
    return leaderboard(session, tenant_id=tenant_id, dataset_id=dataset_id)


@router.get(
    "/{dataset_id}/items/{item}/image",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        **problems(404, 422),
        **problem(409, "The dataset is not ready"),
    },
)
def item_image(
    dataset_id: str,
    item: Annotated[int, Path(ge=0, le=2**31 - 1)],
    session: SessionDep,
    tenant_id: TenantId,
    store: StoreDep,
) -> Response:
    """Item ``item`` of the dataset (numbered as search results and the ``/map`` of a model number them) as a PNG
    of its stored pixels, its longest side at most 128 pixels."""
    png = dashboard.item_image(session, tenant_id=tenant_id, dataset_id=dataset_id, item=item, store=store)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.delete(
    "/{dataset_id}",
    status_code=204,
    responses={**problems(403, 404), **problem(409, "An active job uses the dataset; cancel it first")},
)
def delete_dataset(dataset_id: str, session: SessionDep, tenant_id: TenantId, store: StoreDep) -> Response:
    service.delete_dataset(session, tenant_id=tenant_id, dataset_id=dataset_id, store=store)
    return Response(status_code=204)
