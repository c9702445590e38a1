"""The queue and the workers, as the dashboard's ops panel shows them, and the tenant's quotas and usage: behind an
API key (read scope)."""

from __future__ import annotations

from functools import partial

from celery import Celery
from fastapi import APIRouter, Request

from api.core.queue import queue_depth
from api.deps import CurrentKey, SessionDep, SettingsDep, TenantId, rate_limit_of
from api.schemas import QueueOut, UsageOut
from api.services import dashboard, quotas

router = APIRouter(prefix="/v1", tags=["ops"])


def _depth(celery: Celery, queue: str) -> int:
    """``queue_depth``, raising within about 2 s where the broker does not answer (kombu would retry for longer)."""
    with celery.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
    return queue_depth(celery, queue)


@router.get("/ops/queue", response_model=QueueOut)
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


@router.get("/usage", response_model=UsageOut)
def read_usage(key: CurrentKey, session: SessionDep, settings: SettingsDep) -> dict[str, object]:
    """The caller's tenant's quotas and usage (what a 413 or 429 ``quota_exceeded`` counts), and this key's rate
    limit."""
    usage = quotas.tenant_usage(session, tenant_id=key.tenant_id, settings=settings)
    return {**usage, "rate_limit_per_minute": rate_limit_of(key, settings)}
