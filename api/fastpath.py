"""The hottest request, ``GET /v1/jobs/{job_id}``, answered in plain ASGI.

Dashboards and clients poll a job many times a second; FastAPI's routing, dependency solving and response
classes cost more than the poll itself (a read of one row). ``PollFastPath`` answers it below the app's own
middlewares (request id, body limit, metrics) with the same authorisation (``api.deps.authorize``), the same
read (``poll``) and the same problem+json errors as the route in ``api.routers.jobs``, which still documents
the request in the OpenAPI schema and serves it where this middleware is not installed."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, State
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from api.core.problems import Problem
from api.deps import authorize
from api.errors import problem_response
from api.services import jobs as service

JOB_PATH = re.compile(r"/v1/jobs/([^/]+)")
ROUTE_PATH = "/v1/jobs/{job_id}"


async def poll(
    state: State, *, tenant_id: str, job_id: str, if_none_match: str | None
) -> tuple[int, str, bytes | None]:
    """``service.poll_job`` on the app's database: inline for SQLite, else on a worker thread."""
    call = partial(
        service.poll_job, state.sessionmaker, tenant_id=tenant_id, job_id=job_id, if_none_match=if_none_match
    )
    # A local SQLite read takes microseconds: less than the trip to a thread, whose contention for the GIL under
    # many polls made the slowest 1 % wait 200 ms. A database across a network is read off the event loop.
    return call() if state.reads_inline else await run_in_threadpool(call)


class PollFastPath:
    """ASGI middleware answering ``GET /v1/jobs/{job_id}``; every other request goes on to ``app``."""

    def __init__(self, app: ASGIApp, state: State, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.state = state  # the FastAPI app's
        # The documented route: on the scope it names the request in metrics and decides the scope a key needs.
        self.route = next(r for r in routes if getattr(r, "path", None) == ROUTE_PATH)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = None
        if scope["type"] == "http" and scope["method"] == "GET":
            path = scope["path"]
            root = scope.get("root_path", "")
            match = JOB_PATH.fullmatch(path[len(root) :] if root and path.startswith(root) else path)
        if match is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        headers = Headers(scope=scope)
        state = self.state
        try:
            key = await authorize(state, headers.get("authorization"), "GET", scope["route"])
            status, etag, body = await poll(
                state, tenant_id=key.tenant_id, job_id=match.group(1), if_none_match=headers.get("if-none-match")
            )
        except Problem as problem:
            await problem_response(problem, Request(scope))(scope, receive, send)
            return
        answer = [(b"etag", etag.encode("latin-1"))]
        if body is not None:
            answer += [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": answer})
        await send({"type": "http.response.body", "body": body or b""})
