"""The queue and the workers, as the dashboard's ops panel shows them: behind an API key (read scope)."""

from __future__ import annotations

from functools import partial

from celery import Celery
from fastapi import APIRouter, Request

from api.core.queue import queue_depth
from api.deps import SessionDep, SettingsDep, TenantId
from api.schemas import QueueOut
from api.services import dashboard

router = APIRouter(prefix="/v1/ops", tags=["ops"])


def _depth(celery: Celery, queue: str) -> int:
    """``queue_depth``, raising within about 2 s where the broker does not answer (kombu would retry for longer)."""
    with celery.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
    return queue_depth(celery, queue)


@router.get("/queue", response_model=QueueOut)
def read_queue(request: Request, session: SessionDep, tenant_id: TenantId, settings: SettingsDep) -> dict[str, object]:
    """The tenant's jobs by status, the messages waiting in the broker's queue, and the live workers with the job
    whose lease each holds (shown only when it is the tenant's)."""
    return dashboard.queue_overview(
        session,
        tenant_id=tenant_id,
        queue=settings.queue_name,
        depth=partial(_depth, request.app.state.celery, settings.queue_name),
        within_seconds=settings.worker_silent_seconds,
    )
