"""Request body limits, enforced while the body streams in (also for chunked requests without a
Content-Length), so an oversized upload is refused before it fills the disk."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.core.problems import Problem
from api.errors import problem_response


def _too_large(limit: int) -> Problem:
    return Problem(413, "request_too_large", f"request body is larger than {limit} bytes")


class BodySizeLimit:
    """ASGI middleware: ``limit_for(path)`` bytes at most per request body."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await problem_response(_too_large(limit), Request(scope))(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the request handler's parsing, so the Problem handler answers 413.
                    raise _too_large(limit)
            return message

        await self.app(scope, counting_receive, send)
