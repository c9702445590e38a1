"""Health, readiness and Prometheus metrics: no API key (metrics behind a token when one is set)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.core import workers
from api.core.problems import Problem
from api.errors import problem_response
from api.openapi import problem, problems

router = APIRouter(tags=["ops"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


def _check_broker(request: Request) -> None:
    conn = request.app.state.celery.connection_for_write()
    try:
        conn.ensure_connection(max_retries=1, timeout=2)
    finally:
        conn.release()


@router.get("/readyz", responses=problems(503))
def readyz(request: Request) -> JSONResponse:
    """Ready when the database and the broker answer and, where ``JAGA_READY_REQUIRES_WORKER`` is set (as
    ``jaga serve`` sets it for its own worker), a worker has been heard from; else 503 naming what is missing."""
    settings = request.app.state.settings
    checks: dict[str, str] = {}
    alive: int | None = None
    try:
        with request.app.state.sessionmaker() as session:
            session.execute(text("SELECT 1"))
            alive = workers.count_alive(
                session, within_seconds=settings.worker_silent_seconds, queue=settings.queue_name
            )
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        _check_broker(request)
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = f"unreachable: {type(exc).__name__}"
    down = [name for name, state in checks.items() if state != "ok"]
    if alive is not None:
        checks["workers"] = f"{alive} alive"
        if alive == 0 and settings.ready_requires_worker:
            down.append("workers")
    if down:
        detail = f"not ready: {', '.join(down)}"
        return problem_response(Problem(503, "not_ready", detail, extensions={"checks": checks}), request)
    return JSONResponse({"status": "ready", "checks": checks})


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses=problem(401, "JAGA_METRICS_TOKEN is set, and the request does not send it"),
)
def metrics(request: Request, authorization: Annotated[str | None, Header()] = None) -> Response:
    """Prometheus metrics, summed over all tenants (no tenant names or ids). With ``JAGA_METRICS_TOKEN`` set,
    only for ``Authorization: Bearer <token>``."""
    token = request.app.state.settings.metrics_token
    scheme, _, sent = (authorization or "").partition(" ")
    if token and not (scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(), token.encode())):
        raise Problem(
            401,
            "unauthorized",
            "metrics need 'Authorization: Bearer <JAGA_METRICS_TOKEN>'",
            headers={"WWW-Authenticate": 'Bearer realm="jaga-metrics"'},
        )
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
