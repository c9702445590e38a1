"""Structured logs: one JSON object per line carrying the request, tenant and job a line belongs to (set in
context variables by the request middleware, authentication and the job runner)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The ids of the request or job being served. A dict, mutated in place, so that an id bound in a dependency
#: (run on a worker thread with a copy of the context) is seen by the endpoint and by the middleware's logs.
_ids: ContextVar[dict[str, str] | None] = ContextVar("jaga_log_ids", default=None)
FIELDS = ("request_id", "tenant_id", "job_id")
# A client's own request id is kept when it is short and plain; anything else is replaced.
CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
REQUEST_ID_HEADER = "X-Request-ID"


class RequestIds:
    """Unique request ids, 32 hex digits like a UUID's: a random prefix per process and a counter. Ids need to be
    unique, not secret, and one read of the OS's randomness per request costs more than the rest of the id."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def new(self) -> str:
        if os.getpid() != self._pid:  # a forked child must not repeat its parent's ids
            self.__init__()  # type: ignore[misc]
        return f"{self._prefix}{next(self._counter):016x}"


new_request_id = RequestIds().new


def current() -> dict[str, str]:
    """The bound ids, request first, then tenant, then job."""
    held = _ids.get() or {}
    return {name: held[name] for name in FIELDS if name in held}


def bind(**ids: str) -> None:
    """Add ids to the current request's or job's (``start`` begins a new set)."""
    held = _ids.get()
    if held is None:
        _ids.set(dict(ids))
    else:
        held.update(ids)


def start(**ids: str) -> Token[dict[str, str] | None]:
    """Begin a new set of ids (a request, a job); ``end`` with the returned token."""
    return _ids.set(dict(ids))


def end(token: Token[dict[str, str] | None]) -> None:
    _ids.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(current())
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class ContextFormatter(logging.Formatter):
    """Human-readable lines, with the ids appended where there are any."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = " ".join(f"{name}={value}" for name, value in current().items())
        return f"{text} [{ids}]" if ids else text


def configure(fmt: Literal["json", "text"], level: int = logging.INFO) -> None:
    """One handler on the root logger; uvicorn's and Celery's loggers propagate to it."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(ContextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per plugin on every start otherwise


class RequestId:
    """ASGI middleware: a request id per request (the client's ``X-Request-ID`` when plain, else a new one), in
    the context for logs and error bodies and echoed in the response's ``X-Request-ID``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        rid = given if CLIENT_REQUEST_ID.fullmatch(given) else new_request_id()
        token = start(request_id=rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            end(token)
