from __future__ import annotations

import os
from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from api.core import jobs as job_states
from api.core.embeddings import FORMATS as EMBEDDING_FORMATS
from api.core.models import Job
from api.deps import PageLimit, SessionDep, SettingsDep, StoreDep, TenantId
from api.fastpath import poll
from api.json_body import read_json
from api.openapi import JOB_SPEC_BODY, problem, problems
from api.schemas import MAX_EVENT_ID, Cursor, EventPage, JobOut, Page
from api.services import embeddings as embeddings_service
from api.services import jobs as service
from api.services.jobs import MAX_IDEMPOTENCY_KEY

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    responses={**problems(400, 403, 413, 422), **problem(409, "The dataset is not ready")},
    openapi_extra=JOB_SPEC_BODY,
)
async def submit_job(
    request: Request,
    response: Response,
    session: SessionDep,
    tenant_id: TenantId,
    settings: SettingsDep,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", json_schema_extra={"minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY}),
    ] = None,
) -> Job:
    """Submit a ``pretrain``, ``distill``, ``index``, ``evaluate`` or ``embed`` job. The body is
    ``{"kind": ..., ...spec}``."""
    body = await read_json(request, empty=None)
    job, created = await run_in_threadpool(  # database and broker calls stay off the event loop
        partial(
            service.submit_job,
            session,
            tenant_id=tenant_id,
            body=body,
            idempotency_key=idempotency_key,
            settings=settings,
            celery=request.app.state.celery,
        )
    )
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created:
        response.status_code = 200
    return job


@router.get(
    "",
    response_model=Page[JobOut],
    responses={304: {"description": "The page has not changed since the ETag sent in If-None-Match"}, **problems(422)},
)
def list_jobs(
    session: SessionDep,
    tenant_id: TenantId,
    status: job_states.Status | None = None,
    kind: job_states.Kind | None = None,
    dataset_id: Annotated[str | None, Query(max_length=32, description="only the jobs of this dataset")] = None,
    model_id: Annotated[
        str | None,
        Query(
            max_length=32,
            description="only the jobs that read this model (model_id, teacher_model_id or init_model_id)",
        ),
    ] = None,
    after: Cursor = None,
    limit: PageLimit = 50,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The tenant's jobs, newest first, with an ``ETag`` of the page; ``If-None-Match`` with it answers 304 (no
    body) until a job on the page changes or the page holds other jobs."""
    page = service.list_jobs(
        session,
        tenant_id=tenant_id,
        after=after,
        limit=limit,
        status=status,
        kind=kind,
        dataset_id=dataset_id,
        model_id=model_id,
    )
    code, etag, body = service.job_page_response(page, if_none_match=if_none_match)
    media_type = None if body is None else "application/json"
    return Response(body, status_code=code, media_type=media_type, headers={"ETag": etag})


@router.get(
    "/{job_id}",
    response_model=JobOut,
    responses={304: {"description": "The job has not changed since the ETag sent in If-None-Match"}, **problems(404)},
)
async def get_job(
    job_id: str,
    request: Request,
    tenant_id: TenantId,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The job, with an ``ETag`` of its version; ``If-None-Match`` with it answers 304 (no body) until it changes.
    In the app, ``api.fastpath`` answers this request before FastAPI's routing, the same way."""
    status, etag, body = await poll(request.app.state, tenant_id=tenant_id, job_id=job_id, if_none_match=if_none_match)
    media_type = None if body is None else "application/json"
    return Response(body, status_code=status, media_type=media_type, headers={"ETag": etag})


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobOut,
    responses={**problems(403, 404), **problem(409, "The job has already ended")},
)
def cancel_job(job_id: str, session: SessionDep, tenant_id: TenantId) -> Job:
    """Cancel: a queued job ends ``cancelled`` at once; a running one goes ``cancelling`` and stops within
    one training step."""
    return service.cancel_job(session, tenant_id=tenant_id, job_id=job_id)


@router.get("/{job_id}/events", response_model=EventPage, responses=problems(404, 422))
def job_events(
    job_id: str,
    session: SessionDep,
    tenant_id: TenantId,
    after: Annotated[int, Query(ge=0, le=MAX_EVENT_ID)] = 0,
    limit: PageLimit = 100,
) -> dict[str, object]:
    """State changes, messages and per-epoch metrics, oldest first; pass ``next_after`` to continue."""
    return service.list_events(session, tenant_id=tenant_id, job_id=job_id, after=after, limit=limit)


@router.get(
    "/{job_id}/metrics",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "One JSON object per line, oldest first: `event_id`, `created_at` and the event's "
            "values (`epoch`, `step`, `loss`, `lr`, … as the job reported them)",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        },
        **problems(404, 422),
    },
)
def job_metrics(
    job_id: str, request: Request, session: SessionDep, tenant_id: TenantId, format: Literal["jsonl"] = "jsonl"
) -> StreamingResponse:
    """Every metrics event of the job as JSON Lines (``application/x-ndjson``), streamed: per epoch (loss, learning
    rate, throughput), the representation monitor's, and evaluations'."""
    service.get_job(session, tenant_id=tenant_id, job_id=job_id)
    session.close()  # the stream reads in sessions of its own
    return StreamingResponse(
        service.metrics_jsonl(request.app.state.sessionmaker, job_id=job_id),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{job_id}-metrics.jsonl"'},
    )


@router.get(
    "/{job_id}/tensorboard",
    response_class=FileResponse,
    responses={
        200: {
            "description": "A gzipped tar of the job's TensorBoard event files, under a folder named after the job",
            "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
        },
        **problems(404),
    },
)
def job_tensorboard(job_id: str, session: SessionDep, tenant_id: TenantId, settings: SettingsDep) -> FileResponse:
    """The TensorBoard logs of a job submitted with ``"integrations": ["tensorboard"]`` (so far, while it runs):
    ``tar xzf`` it and run ``tensorboard --logdir .``."""
    path = service.tensorboard_archive(session, tenant_id=tenant_id, job_id=job_id, settings=settings)
    return FileResponse(
        path,
        media_type="application/gzip",
        filename=f"{job_id}-tensorboard.tar.gz",
        background=BackgroundTask(os.unlink, path),
    )


@router.get(
    "/{job_id}/embeddings",
    response_class=FileResponse,
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
            }
        },
        **problems(404, 422),
        **problem(409, "The embed job has not succeeded"),
    },
)
async def job_embeddings(
    job_id: str,
    session: SessionDep,
    tenant_id: TenantId,
    store: StoreDep,
    format: Annotated[
        str,
        Query(
            description="npy: a structured array, np.load(path, allow_pickle=False), fields item (int64), label "
            "(str, '' when unlabelled), filename (str), embedding (float32, D); parquet: the same columns, "
            "embedding a fixed-size list of float32 (needs the server's parquet extra)",
            json_schema_extra={"enum": list(EMBEDDING_FORMATS)},
        ),
    ] = "npy",
) -> FileResponse:
    """The L2-normalised embeddings of every image of a succeeded embed job's dataset, in dataset order."""
    embeddings_service.check_format(format)
    found = await run_in_threadpool(  # the database read and a first Parquet conversion stay off the event loop
        partial(
            embeddings_service.embeddings_file, session, tenant_id=tenant_id, job_id=job_id, format=format, store=store
        )
    )
    return FileResponse(found.path, media_type=found.media_type, filename=found.filename)


@router.delete(
    "/{job_id}/embeddings",
    status_code=204,
    responses={**problems(403, 404, 422), **problem(409, "The embed job has not succeeded")},
)
def delete_job_embeddings(job_id: str, session: SessionDep, tenant_id: TenantId, store: StoreDep) -> Response:
    """Delete a succeeded embed job's result files; the job stays, and its embeddings answer 404 from now."""
    embeddings_service.delete_embeddings(session, tenant_id=tenant_id, job_id=job_id, store=store)
    return Response(status_code=204)
